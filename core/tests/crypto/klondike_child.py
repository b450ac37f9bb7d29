"""Run the real klondike process class on one socketpair end (for the TLS tests).

usage: python klondike_child.py FD NAME=CERT:KEY ... [dkim:NAME=KEY,ALG,CANON,DOMAIN,SELECTOR ...]
Prints "ready <backend>" once the keys are loaded.
"""

from __future__ import annotations

import asyncio
import sys

from mailrider import log
from mailrider.config.model import Config, Dkim, Pki
from mailrider.proc import common
from mailrider.proc.klondike import Klondike


async def main(fd: int, specs: list[str]) -> None:
    config = Config()
    for spec in specs:
        if spec.startswith("dkim:"):
            name, _, rest = spec[5:].partition("=")
            key, alg, canon, domain, selector = rest.split(",")
            config.dkims[name] = Dkim(name, key, selector, domain, alg, canon)
            continue
        name, _, paths = spec.partition("=")
        cert, _, key = paths.partition(":")
        config.pkis[name] = Pki(name, cert=cert, key=key)
    proc = Klondike(common.Options(statedir="/nonexistent"), config)
    await proc.setup()
    proc.connect({"pony": fd})
    assert proc.keys is not None
    print("ready", proc.keys.backend, flush=True)
    await proc.run()


if __name__ == "__main__":
    log.setup("klondike", foreground=True)
    asyncio.run(main(int(sys.argv[1]), sys.argv[2:]))
