"""SDK backend that prints to stdout and is slow on some keys, for tests.

``print`` must not reach the protocol stream; ``sleep-*`` keys take a second
in a thread, ``async-*`` keys a second on the event loop.
"""

from __future__ import annotations

import asyncio
import sys
import time

from mailrider.table.sdk import Backend, run


class Noisy(Backend):
    services = ("alias", "userinfo")

    def lookup(self, service: str, key: str) -> str | None:
        print("noise on stdout", key)
        if key.startswith("sleep-"):
            time.sleep(1.0)
        return f"{self.table_name}:{key}"

    async def fetch(self, service: str) -> str | None:
        await asyncio.sleep(1.0)
        return "later"


if __name__ == "__main__":
    sys.exit(run(Noisy))
