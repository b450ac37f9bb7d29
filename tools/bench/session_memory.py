"""What SMTP sessions held open cost the daemon, per process (PSS).

    PYTHONPATH=core/src python3 tools/bench/session_memory.py [--sessions 500]
        [--start fork|exec]

Starts one ``mailriderd`` with smtp_accept.py's configuration, measures the
PSS of every process idle, then opens ``--sessions`` connections and leaves
each after ``EHLO``, measures, moves each into ``DATA`` with 1 KB of message
(no final dot), measures again, and prints the three totals by process and
pony's cost per session. ``--start`` sets ``MAILRIDER_CHILD_START`` (how the
children start: docs/performance.md §1). Run it as root for the daemon's
usual users and chroots; the sessions come from loopback.
"""

from __future__ import annotations

import argparse
import resource
import socket
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "core" / "tests" / "e2e"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
if not any(Path(p, "mailrider").is_dir() for p in sys.path if p):
    sys.path.append(str(ROOT / "core" / "src"))

import procstat  # noqa: E402
from harness import Daemon  # noqa: E402
from smtp_accept import CONFIG  # noqa: E402


def by_process(root: int) -> dict[str, int]:
    """PSS in kB per process name (the role: ``mailrider:pony``)."""
    out: dict[str, int] = {}
    for name, kb in procstat.pss(root).processes:
        out[name] = out.get(name, 0) + kb
    return out


def reply(sock: socket.socket) -> bytes:
    """One whole SMTP reply (its last line has a space after the code)."""
    data = b""
    while True:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("the daemon closed the session")
        data += chunk
        lines = data.split(b"\r\n")
        if len(lines) > 1 and len(lines[-2]) >= 4 and lines[-2][3:4] == b" ":
            return data


def line(tag: str, mem: dict[str, int]) -> str:
    parts = " ".join(f"{k.partition(':')[2] or k}={v / 1024:.1f}" for k, v in sorted(mem.items()))
    return f"{tag:12} {sum(mem.values()) / 1024:6.1f} MB PSS  ({parts})"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=500)
    ap.add_argument("--start", choices=("fork", "exec"), default="fork")
    ap.add_argument("--settle", type=float, default=2.0, help="seconds before each measure")
    args = ap.parse_args(argv)
    n = args.sessions
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < n + 64:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, n + 64), hard))
    d = Daemon(CONFIG, extra_env={"MAILRIDER_CHILD_START": args.start})
    socks: list[socket.socket] = []
    try:
        d.start()
        assert d.proc is not None
        time.sleep(args.settle)
        idle = by_process(d.proc.pid)
        for _ in range(n):
            s = socket.create_connection(("127.0.0.1", d.port), timeout=30)
            socks.append(s)
            reply(s)
            s.sendall(b"EHLO bench.example\r\n")
            reply(s)
        time.sleep(args.settle)
        ehlo = by_process(d.proc.pid)
        for s in socks:
            for cmd in (b"MAIL FROM:<from@bench.example>", b"RCPT TO:<to@localhost>", b"DATA"):
                s.sendall(cmd + b"\r\n")
                if reply(s)[:1] not in (b"2", b"3"):
                    raise ConnectionError(f"{cmd.decode()} refused")
            s.sendall(b"Subject: held\r\n\r\n" + b"x" * 1000 + b"\r\n")
        time.sleep(args.settle)
        data = by_process(d.proc.pid)
    finally:
        for s in socks:
            s.close()
        d.stop()
        d.cleanup()
    print(f"children started by: {args.start}")
    print(line("idle", idle))
    print(line(f"{n} EHLO", ehlo))
    print(line(f"{n} in DATA", data))
    pony = "mailrider:pony"
    print(f"pony per session: {(ehlo.get(pony, 0) - idle.get(pony, 0)) / n:.1f} kB after EHLO, "
          f"{(data.get(pony, 0) - idle.get(pony, 0)) / n:.1f} kB in DATA; the daemon: "
          f"+{(sum(data.values()) - sum(idle.values())) / 1024:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
