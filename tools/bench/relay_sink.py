#!/usr/bin/env python3
"""Benchmark: relay throughput (accept -> delivered to the next hop), messages/second.

    python3 tools/bench/relay_sink.py [--sessions 20] [--messages 2000] [--size 2k]
                                      [--no-postfix] [--timeout 600]
                                      [--mta-limit N] [--scheduler-inflight N]

Run as root from anywhere, with the ``mailrider`` package importable.
Postfix's ``smtp-sink`` (which accepts and discards everything) listens on
a free loopback port. A mailriderd (core/tests/e2e/harness.py) whose every
recipient matches ``action "out" relay host smtp://127.0.0.1:SINK`` gets
N messages over S parallel sessions (``smtp-source``, else the built-in
client of smtp_accept.py); the clock runs from the first message sent
until the daemon logged the sink's 250 for the last one
(``delivery ... result=Ok``), so this is accept + queue + relay.

When Postfix is installed a throwaway instance (tools/bench/postfix_peer.py)
with ``relayhost = [127.0.0.1]:SINK`` gets the same load in the same run,
measured until its log shows ``status=sent`` for every message; the ratio
mailrider/Postfix is printed. No DNS is involved anywhere (IP literals).

With ``--mta-limit N`` and/or ``--scheduler-inflight N`` the run checks
limits instead: the configuration gets ``mta limit max-conn-per-domain N``
and/or ``scheduler limit max-inflight N``, the sink is the Python peer of
the end-to-end tests (core/tests/e2e/smtp_peer.py) holding each end of data
0.2 s so deliveries overlap, and the most connections it saw open at once is
printed with the scheduler's most envelopes in flight (docs/config.md §15,
docs/queue.md §9).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT / "core" / "tests" / "e2e"))
sys.path.insert(0, str(HERE))
if not any(Path(p, "mailrider").is_dir() for p in sys.path if p):
    sys.path.append(str(ROOT / "core" / "src"))

import postfix_peer  # noqa: E402
import smtp_accept  # noqa: E402
from harness import Daemon, free_port, wait_for  # noqa: E402

SINK = "/usr/sbin/smtp-sink"
RCPT = "bench@relay.bench"

CONFIG = """\
resolver nameserver 127.0.0.1 port 9
listen on 127.0.0.1 port {port}
action "out" relay host smtp://127.0.0.1:SINKPORT
match from any for any action "out"
"""


def start_sink(port: int) -> subprocess.Popen[bytes]:
    argv = [SINK, "-u", "nobody", "-m", "500", f"127.0.0.1:{port}", "256"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: _answers(port), 10)
    return proc


def _answers(port: int) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            return s.recv(100).startswith(b"220")
    except OSError:
        return False


def _wait_count(count: Callable[[], int], n: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if count() >= n:
            return True
        time.sleep(0.05)
    return False


def run_mailrider(load: smtp_accept.Load, sink: int, n: int, size: int, timeout: float
                  ) -> tuple[float, str]:
    d = Daemon(CONFIG.replace("SINKPORT", str(sink)))
    d.start()
    ok = re.compile(r"delivery .* result=\"?Ok\b")
    try:
        t0 = time.monotonic()
        smtp_accept.RCPT = RCPT
        load.send(d.port, n, size)
        accepted = time.monotonic() - t0

        def count() -> int:
            return sum(1 for line in d.log().splitlines() if ok.search(line))

        if not _wait_count(count, n, timeout):
            raise RuntimeError(f"mailrider relayed {count()}/{n} in time:\n{d.log()[-2000:]}")
        dt = time.monotonic() - t0
        conns = d.log().count("mta connected")
        return n / dt, f"accept {n / accepted:.0f} msg/s, {conns} outgoing connections"
    finally:
        d.cleanup()


def run_postfix(load: smtp_accept.Load, sink: int, n: int, size: int, timeout: float
                ) -> tuple[float, str]:
    peer = postfix_peer.PostfixPeer(free_port())
    settings = [
        "virtual_mailbox_domains=", "relay_domains=relay.bench",
        f"relayhost=[127.0.0.1]:{sink}", "smtp_connection_cache_on_demand=yes",
        "default_destination_concurrency_limit=20", "smtp_destination_concurrency_limit=20",
    ]
    peer._run(postfix_peer.POSTCONF, "-c", str(peer.config), "-e", *settings)
    # the smtp client transport master.cf lacks in the accept-only peer
    with open(peer.config / "master.cf", "a") as fh:
        fh.write("smtp      unix  -       -       n       -       -       smtp\n"
                 "relay     unix  -       -       n       -       -       smtp\n"
                 "scache    unix  -       -       n       -       1       scache\n"
                 "anvil     unix  -       -       n       -       1       anvil\n")
    peer.start()
    try:
        t0 = time.monotonic()
        smtp_accept.RCPT = RCPT
        load.send(peer.port, n, size)
        accepted = time.monotonic() - t0

        def count() -> int:
            try:
                return peer.log_path.read_text(errors="replace").count("status=sent")
            except OSError:
                return 0

        if not _wait_count(count, n, timeout):
            raise RuntimeError(f"postfix relayed {count()}/{n} in time:\n{peer.log()}")
        dt = time.monotonic() - t0
        return n / dt, f"accept {n / accepted:.0f} msg/s, Postfix {peer.version}"
    finally:
        peer.cleanup()


def run_limits(args: argparse.Namespace) -> int:
    """Relay through the limits and print the concurrency the sink observed."""
    from smtp_peer import Behaviour, SmtpPeer

    extra = ""
    if args.mta_limit:
        extra += f"mta limit max-conn-per-domain {args.mta_limit}\n"
    if args.scheduler_inflight:
        extra += f"scheduler limit max-inflight {args.scheduler_inflight}\n"
    size = smtp_accept.parse_size(args.size)
    load = smtp_accept.Load(smtp_accept.smtp_source_path(), args.sessions, args.timeout)
    with SmtpPeer(Behaviour(data_delay=0.2)) as peer:
        d = Daemon(extra + CONFIG.replace("SINKPORT", str(peer.port)))
        d.start()
        try:
            t0 = time.monotonic()
            smtp_accept.RCPT = RCPT
            load.send(d.port, args.messages, size)
            if not _wait_count(lambda: len(peer.received), args.messages, args.timeout):
                raise RuntimeError(f"the sink got {len(peer.received)}/{args.messages}")
            dt = time.monotonic() - t0
            stats = d.ctl("show", "stats").stdout
            m = re.search(r"scheduler\.envelope\.inflight\.peak\D+(\d+)", stats)
            inflight = m.group(1) if m else "?"
        finally:
            d.cleanup()
    print(f"relay through limits: {extra.strip().replace(chr(10), '; ')}: "
          f"{args.messages} messages in {dt:.1f} s")
    print(f"  sink: {peer.open_peak} connections open at once at most, "
          f"{peer.connections} connections")
    print(f"  scheduler: {inflight} envelopes in flight at most")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=20)
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--size", default="2k")
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--no-postfix", action="store_true")
    ap.add_argument("--mta-limit", type=int, default=0, metavar="N",
                    help="mta limit max-conn-per-domain N; print the sink's concurrency")
    ap.add_argument("--scheduler-inflight", type=int, default=0, metavar="N",
                    help="scheduler limit max-inflight N; print the sink's concurrency")
    args = ap.parse_args(argv)
    if args.mta_limit or args.scheduler_inflight:
        return run_limits(args)
    if not os.access(SINK, os.X_OK):
        print(f"{SINK} not found: install Postfix's test tools", file=sys.stderr)
        return 2
    size = smtp_accept.parse_size(args.size)
    tool = smtp_accept.smtp_source_path()
    load = smtp_accept.Load(tool, args.sessions, args.timeout)
    sink_port = free_port()
    sink = start_sink(sink_port)
    try:
        print(f"relay to smtp-sink: {args.messages} messages of {args.size}, "
              f"{args.sessions} sessions, load: {load.name}")
        mr, note = run_mailrider(load, sink_port, args.messages, size, args.timeout)
        print(f"  mailrider  {mr:8.1f} msg/s accept->relayed  ({note})")
        pf = None
        if not args.no_postfix:
            reason = postfix_peer.available()
            if reason:
                print(f"  postfix    skipped: {reason}")
            else:
                pf, note = run_postfix(load, sink_port, args.messages, size, args.timeout)
                print(f"  postfix    {pf:8.1f} msg/s accept->relayed  ({note})")
        if pf:
            print(f"  ratio mailrider/postfix: {mr / pf:.2f}")
    finally:
        sink.terminate()
        sink.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
