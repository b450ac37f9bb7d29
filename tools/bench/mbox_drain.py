#!/usr/bin/env python3
"""Benchmark: drain of a held backlog into one mbox, forked deliveries against the worker.

    PYTHONPATH=core/src python3 tools/bench/mbox_drain.py [--messages 1000]
        [--sessions 20] [--rounds 2] [--size 1k]

Run as root: an mbox delivery writes ``/var/mail/<user>`` as that user, so the
mailbox is created (owned by the delivery user of core/tests/e2e/harness.py)
for the run and removed afterwards; a run is refused when that mailbox
exists already. Each round starts one mailriderd with ``MAILRIDER_MDA_FORK=1``
(a forked process per mbox delivery, as before the worker took mbox) and one
without (the user's long-lived worker: the messages of a batch appended under
one lock and one fsync), in alternating order; for each: ``pause mda``,
``--messages`` over ``--sessions`` sessions, ``resume mda``, and the time until
the mailbox holds every message. Prints msg/s, CPU per delivered message by
process (tools/bench/procstat.py) and the worker's batch sizes.
"""

from __future__ import annotations

import argparse
import os
import pwd
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "core" / "tests" / "e2e"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
if not any(Path(p, "mailrider").is_dir() for p in sys.path if p):
    sys.path.append(str(ROOT / "core" / "src"))

import procstat  # noqa: E402
import smtp_accept  # noqa: E402
from harness import Daemon  # noqa: E402

CONFIG = """\
# tools/bench/mbox_drain.py: every recipient into the delivery user's mbox
listen on 127.0.0.1 port {port}
table everyone {{ "@" = "{user}" }}
action "mbox" mbox virtual <everyone>
match from any for any action "mbox"
"""
MBOX_DIR = Path("/var/mail")


def count_messages(box: Path) -> int:
    try:
        data = box.read_bytes()
    except FileNotFoundError:
        return 0
    return data.count(b"\n\nFrom ") + (1 if data.startswith(b"From ") else 0)


def one(load: smtp_accept.Load, messages: int, size: int, fork: bool) -> str:
    env = {"MAILRIDER_MDA_FORK": "1"} if fork else {}
    d = Daemon(CONFIG, extra_env=env)
    box = MBOX_DIR / d.user
    if box.exists():
        d.cleanup()
        raise SystemExit(f"{box} exists already; not touching a real mailbox")
    pw = pwd.getpwnam(d.user)
    fd = os.open(box, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.fchown(fd, pw.pw_uid, pw.pw_gid)
    os.close(fd)
    try:
        d.start()
        assert d.proc is not None
        d.ctl("pause", "mda")
        time.sleep(load.settle)
        load.send(d.port, messages, size)
        s0 = smtp_accept.stats(d)
        snap0 = procstat.cpu_snapshot(d.proc.pid)
        t0 = time.monotonic()
        d.ctl("resume", "mda")
        deadline = t0 + load.timeout
        while count_messages(box) < messages:
            if time.monotonic() > deadline:
                return f"{'fork' if fork else 'worker'}: only {count_messages(box)}/{messages}"
            time.sleep(0.02)
        dt = time.monotonic() - t0
        by = procstat.cpu_by_name(snap0, procstat.cpu_snapshot(d.proc.pid))
        s1 = smtp_accept.stats(d)
        batches = s1.get("parent.mda.worker.batches", 0) - s0.get("parent.mda.worker.batches", 0)
        n = s1.get("parent.mda.worker.deliveries", 0) - s0.get("parent.mda.worker.deliveries", 0)
        per_batch = f", {n / batches:.1f} deliveries per worker batch" if batches else ""
        return (f"{'fork' if fork else 'worker'}: {messages / dt:,.0f} msg/s; CPU "
                f"{sum(by.values()) * 1000 / messages:.2f} ms per message "
                f"({procstat.cpu_line(by, messages)}){per_batch}")
    finally:
        d.stop()
        d.cleanup()
        for path in (box, MBOX_DIR / (d.user + ".lock")):
            try:
                path.unlink()
            except FileNotFoundError:
                pass


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=1000)
    ap.add_argument("--sessions", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--size", default="1k")
    ap.add_argument("--timeout", type=float, default=300.0)
    ns = ap.parse_args(argv)
    if os.geteuid() != 0 or not MBOX_DIR.is_dir():
        print("mbox_drain: run as root, with /var/mail", file=sys.stderr)
        return 1
    tool = smtp_accept.smtp_source_path()
    load = smtp_accept.Load(tool, ns.sessions, ns.timeout, 1.0, 0)
    size = smtp_accept.parse_size(ns.size)
    print(f"load tool: {load.name}; {ns.messages} messages of {ns.size}, {ns.sessions} sessions")
    for i in range(ns.rounds):
        for fork in ((True, False) if i % 2 == 0 else (False, True)):
            print(f"round {i + 1}: {one(load, ns.messages, size, fork)}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
