#!/usr/bin/env python3
"""Torture: kill -9 the whole daemon at random moments, many times over.

    PYTHONPATH=core/src python3 tools/torture/crash.py [--rounds 50] [--threads 8]
        [--min-delay 0.3] [--max-delay 2.0] [--seed N] [--max-seconds 1800] [--relay]

Each round streams messages from ``--threads`` SMTP clients into one daemon,
kills the daemon's whole process group after a random delay, restarts it on
the same state folder and port, waits until the spool is empty and checks
every Maildir (see core/tests/e2e/test_e2e_crash.py, whose round logic this
reuses). Prints one row per round and a total; exits 1 if anything
acknowledged was lost, corrupted or misdelivered.

Columns: ``sent`` messages a client started, ``no-250`` of those that got
no final 250 (in flight at the kill); ``acked``, ``delivered``, ``lost``,
``dups`` and ``unacked-dlv`` count (message, recipient) pairs: acknowledged,
found in the recipient's Maildir, missing, extra copies (a crash after the
Maildir link but before the envelope was removed), and delivered though the
client never saw the 250 (the reply was lost in the kill); ``corrupt``
counts delivered files whose body checksum does not match. With ``--relay``
the daemon killed relays everything to a second daemon (never killed) that
delivers, so the kills land in relaying sessions and batches too, and the
second daemon's Maildirs are checked. Run it as root (the
daemon drops to _mailrider, as in production) or as an ordinary user.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "core" / "tests" / "e2e"))
sys.path.insert(0, str(ROOT / "core" / "src"))

from harness import Daemon  # noqa: E402
from test_e2e_crash import CRASH_CONFIG, RELAY_CONFIG, RoundResult, crash_round  # noqa: E402

COLUMNS = ("round", "kill@s", "sent", "no-250", "acked", "delivered", "lost", "dups",
           "corrupt", "unacked-dlv")


def row(cells: list[object]) -> str:
    return " ".join(f"{c!s:>11}" for c in cells)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=50)
    p.add_argument("--threads", type=int, default=8)
    p.add_argument("--min-delay", type=float, default=0.3)
    p.add_argument("--max-delay", type=float, default=2.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--max-seconds", type=float, default=1800.0,
                   help="stop starting new rounds after this long")
    p.add_argument("--keep", action="store_true", help="keep the state folder")
    p.add_argument("--relay", action="store_true",
                   help="kill a daemon that relays to a second one, which delivers")
    ns = p.parse_args()
    seed = ns.seed if ns.seed is not None else random.SystemRandom().getrandbits(32)
    rng = random.Random(seed)
    sink = Daemon(CRASH_CONFIG).start() if ns.relay else None
    d = Daemon(RELAY_CONFIG.replace("SINKPORT", str(sink.port)) if sink else CRASH_CONFIG).start()
    print(f"seed={seed} state={d.state} port={d.port}"
          + (f" relaying to {sink.port}" if sink else ""))
    print(row(list(COLUMNS)))
    results: list[RoundResult] = []
    failed = False
    deadline = time.monotonic() + ns.max_seconds
    try:
        for rnd in range(ns.rounds):
            if time.monotonic() > deadline:
                print(f"time budget spent after {rnd} rounds")
                break
            r = crash_round(d, rnd, rng, threads=ns.threads, delay=(ns.min_delay, ns.max_delay),
                            sink=sink)
            results.append(r)
            print(row([rnd, f"{r.kill_after:.2f}", r.attempts, r.unanswered, r.acked,
                       r.delivered, len(r.lost), r.duplicates, len(r.corrupt),
                       r.unacked_delivered]), flush=True)
            for what, items in (("LOST", r.lost), ("CORRUPT", r.corrupt),
                                ("MISDELIVERED", r.misdelivered)):
                for item in items[:20]:
                    print(f"  {what} {item}")
                failed = failed or bool(items)
    finally:
        for one in (d, sink):
            if one is None:
                continue
            if ns.keep:
                one.stop()
            else:
                one.cleanup()
    print(row(["total", "", sum(r.attempts for r in results),
               sum(r.unanswered for r in results), sum(r.acked for r in results),
               sum(r.delivered for r in results), sum(len(r.lost) for r in results),
               sum(r.duplicates for r in results), sum(len(r.corrupt) for r in results),
               sum(r.unacked_delivered for r in results)]))
    print("FAIL" if failed else "OK: nothing acknowledged was lost or corrupted")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
