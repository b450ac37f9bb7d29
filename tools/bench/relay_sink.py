#!/usr/bin/env python3
"""Benchmark: relay throughput (accept -> delivered to the next hop), messages/second.

    python3 tools/bench/relay_sink.py [--sessions 20] [--messages 2000] [--size 2k]
                                      [--rounds 1] [--no-postfix] [--timeout 600]
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

Beside each rate: the CPU time of every process of each daemon per relayed
message (tools/bench/procstat.py; for mailrider split by process), the
outgoing connections, and for mailrider the IPC messages per relayed
message by type (``mailriderctl profile imsg``, then ``show stats``).
``--rounds N`` runs both N times, alternating which goes first, and prints
the medians. ``--drain`` adds the relay alone: the N messages are accepted
with relaying held (``mailriderctl pause mta``; Postfix's HOLD), and the
clock, the CPU and the IPC counts run from the release (``resume mta``;
``postsuper -H ALL``) to the sink's 250 for the last one.

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
import shutil
import statistics
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
import procstat  # noqa: E402
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


#: --config: lines put in front of mailrider's configuration
EXTRA_CONFIG = ""


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


def _by_process(root: int) -> dict[str, float]:
    """CPU seconds so far of each process under ``root``, by its role (its title)."""
    out: dict[str, float] = {}
    for pid in procstat.descendants(root):
        try:
            with open(f"/proc/{pid}/comm") as f:
                comm = f.read().strip()
        except OSError:
            continue
        role = comm.partition(":")[2] if pid != root and ":" in comm else "parent"
        one = procstat.cpu_seconds_of(pid)
        out[role] = out.get(role, 0.0) + one
    return out


def run_mailrider(load: smtp_accept.Load, sink: int, n: int, size: int, timeout: float,
                  profile_dir: Path | None = None, drain: bool = False
                  ) -> tuple[float, float, str]:
    """accept -> relayed, or with ``drain`` the relay of a held backlog alone:
    N messages accepted with relaying paused, then the clock (and the CPU and
    IPC counts) from ``resume mta`` to the last 250 of the sink."""
    d = Daemon(EXTRA_CONFIG + CONFIG.replace("SINKPORT", str(sink)))
    if profile_dir is not None:  # cProfile per child, written after the privilege drop
        prof = d.state / "profile"
        prof.mkdir(mode=0o755)
        du = os.stat(d.mail)
        os.chown(prof, du.st_uid, du.st_gid)
        d.env["MAILRIDER_PROFILE"] = str(prof)
    d.start()
    ok = re.compile(r"delivery .* result=\"?Ok\b")
    try:
        assert d.proc is not None
        time.sleep(1.0)  # every child set up
        d.ctl("profile", "imsg")
        if drain:
            d.ctl("pause", "mta")
        ipc0 = smtp_accept.stats(d)
        cpu0 = _by_process(d.proc.pid)
        t0 = time.monotonic()
        smtp_accept.RCPT = RCPT
        load.send(d.port, n, size)
        accepted = time.monotonic() - t0
        if drain:
            time.sleep(1.0)  # the last commits settle
            ipc0 = smtp_accept.stats(d)
            cpu0 = _by_process(d.proc.pid)
            t0 = time.monotonic()
            d.ctl("resume", "mta")

        def count() -> int:
            return sum(1 for line in d.log().splitlines() if ok.search(line))

        if not _wait_count(count, n, timeout):
            raise RuntimeError(f"mailrider relayed {count()}/{n} in time:\n{d.log()[-2000:]}")
        dt = time.monotonic() - t0
        cpu1 = _by_process(d.proc.pid)
        ipc1 = smtp_accept.stats(d)
        conns = d.log().count("mta connected")
        per = {k: (cpu1.get(k, 0.0) - cpu0.get(k, 0.0)) * 1000 / n for k in cpu1}
        cpu_ms = sum(per.values())
        split = " ".join(f"{k}={v:.2f}" for k, v in sorted(per.items(), key=lambda x: -x[1])
                         if v >= 0.005)
        # profile.imsg.<type>.count.<role>: the messages <role> received
        ipc = {f"{k.split('.')[2]}>{k.split('.')[-1]}": ipc1[k] - ipc0.get(k, 0) for k in ipc1
               if k.startswith("profile.imsg.") and ".count" in k}
        ipc_line = " ".join(f"{k}={v / n:.2f}" for k, v in sorted(ipc.items()) if v)
        note = (f"accept {n / accepted:.0f} msg/s, {conns} outgoing connections\n"
                f"             CPU {cpu_ms:.2f} ms/msg ({split})\n"
                f"             IPC per message: {sum(ipc.values()) / n:.2f} ({ipc_line})")
        return n / dt, cpu_ms, note
    finally:
        if profile_dir is not None:
            d.stop()
            profile_dir.mkdir(parents=True, exist_ok=True)
            for p in (d.state / "profile").glob("*.prof"):
                shutil.copy(p, profile_dir / f"relay-{p.name}")
        d.cleanup()


def run_postfix(load: smtp_accept.Load, sink: int, n: int, size: int, timeout: float,
                drain: bool = False) -> tuple[float, float, str]:
    """As run_mailrider; ``drain``: accepted on hold, then ``postsuper -H ALL``."""
    peer = postfix_peer.PostfixPeer(free_port(), hold=drain)
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
        time.sleep(1.0)
        master = peer.master_pid()
        cpu0 = procstat.cpu_seconds(master) if master else 0.0
        t0 = time.monotonic()
        smtp_accept.RCPT = RCPT
        load.send(peer.port, n, size)
        accepted = time.monotonic() - t0
        if drain:
            if not _wait_count(lambda: peer.count_queue("hold"), n, timeout):
                raise RuntimeError(f"postfix held {peer.count_queue('hold')}/{n}")
            time.sleep(1.0)
            cpu0 = procstat.cpu_seconds(master) if master else 0.0
            t0 = time.monotonic()
            # released mail goes to the deferred queue: flush it now, not at
            # the queue manager's next scan
            peer._run("/usr/sbin/postsuper", "-c", str(peer.config), "-H", "ALL")
            peer._run("/usr/sbin/postqueue", "-c", str(peer.config), "-f")

        def count() -> int:
            try:
                return peer.log_path.read_text(errors="replace").count("status=sent")
            except OSError:
                return 0

        if not _wait_count(count, n, timeout):
            raise RuntimeError(f"postfix relayed {count()}/{n} in time:\n{peer.log()}")
        dt = time.monotonic() - t0
        cpu_ms = (procstat.cpu_seconds(master) - cpu0) * 1000 / n if master else 0.0
        conns = _postfix_connections(peer.log_path.read_text(errors="replace"))
        return n / dt, cpu_ms, (f"accept {n / accepted:.0f} msg/s, Postfix {peer.version}, "
                                f"{conns} outgoing connections\n"
                                f"             CPU {cpu_ms:.2f} ms/msg")
    finally:
        peer.cleanup()


def _postfix_connections(log: str) -> int:
    """Outgoing connections: the smtp clients' status=sent lines not marked as
    reused (conn_use=N for the Nth message on a cached connection)."""
    return sum(1 for line in log.splitlines()
               if "status=sent" in line and "conn_use=" not in line)


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
    ap.add_argument("--rounds", type=int, default=1,
                    help="run both N times, alternating which goes first; print medians")
    ap.add_argument("--no-postfix", action="store_true")
    ap.add_argument("--no-e2e", action="store_true", help="the drain figure only")
    ap.add_argument("--config", action="append", default=[], metavar="LINE",
                    help="a line in front of mailrider's configuration "
                         "(e.g. 'scheduler limit max-inflight 500'); repeatable")
    ap.add_argument("--drain", action="store_true",
                    help="also relay a held backlog (accepted with relaying paused/on hold) "
                         "and time the relay alone")
    ap.add_argument("--profile", type=Path, metavar="DIR",
                    help="cProfile every mailrider child into DIR and print pony's and queue's")
    ap.add_argument("--mta-limit", type=int, default=0, metavar="N",
                    help="mta limit max-conn-per-domain N; print the sink's concurrency")
    ap.add_argument("--scheduler-inflight", type=int, default=0, metavar="N",
                    help="scheduler limit max-inflight N; print the sink's concurrency")
    args = ap.parse_args(argv)
    if args.mta_limit or args.scheduler_inflight:
        return run_limits(args)
    global EXTRA_CONFIG
    EXTRA_CONFIG = "".join(line + "\n" for line in args.config)
    if not os.access(SINK, os.X_OK):
        print(f"{SINK} not found: install Postfix's test tools", file=sys.stderr)
        return 2
    size = smtp_accept.parse_size(args.size)
    tool = smtp_accept.smtp_source_path()
    load = smtp_accept.Load(tool, args.sessions, args.timeout)
    sink_port = free_port()
    sink = start_sink(sink_port)
    reason = None if args.no_postfix else postfix_peer.available()
    try:
        print(f"relay to smtp-sink: {args.messages} messages of {args.size}, "
              f"{args.sessions} sessions, load: {load.name}, {args.rounds} round(s), "
              f"load average {os.getloadavg()[0]:.1f}"
              + (f"; mailrider config + {args.config}" if args.config else ""))
        if reason:
            print(f"  postfix    skipped: {reason}")
        figures: dict[tuple[str, bool], list[tuple[float, float]]] = {}
        modes = ([] if args.no_e2e else [False]) + ([True] if args.drain or args.no_e2e else [])
        for i in range(args.rounds):
            order = ["mr", "pf"] if i % 2 == 0 else ["pf", "mr"]
            for drain in modes:
                what = "drain  " if drain else "e2e    "
                for who in order:
                    if who == "mr":
                        rate, cpu, note = run_mailrider(load, sink_port, args.messages, size,
                                                        args.timeout, args.profile, drain)
                        print(f"  {what}mailrider {rate:8.1f} msg/s  ({note})")
                    elif not args.no_postfix and not reason:
                        rate, cpu, note = run_postfix(load, sink_port, args.messages, size,
                                                      args.timeout, drain)
                        print(f"  {what}postfix   {rate:8.1f} msg/s  ({note})")
                    else:
                        continue
                    figures.setdefault((who, drain), []).append((rate, cpu))
                if ("pf", drain) in figures:
                    mr, pf = figures[("mr", drain)][-1][0], figures[("pf", drain)][-1][0]
                    print(f"  round {i + 1} {what.strip()} ratio mailrider/postfix: "
                          f"{mr / pf:.2f} (load average {os.getloadavg()[0]:.1f})")
        for drain in modes:
            mrs, pfs = figures.get(("mr", drain), []), figures.get(("pf", drain), [])
            mr_med = statistics.median(r for r, _ in mrs)
            mr_cpu = statistics.median(c for _, c in mrs)
            line = (f"  {'drain' if drain else 'e2e'} medians of {len(mrs)}: mailrider "
                    f"{mr_med:.1f} msg/s, {mr_cpu:.2f} ms CPU/msg")
            if pfs:
                pf_med = statistics.median(r for r, _ in pfs)
                pf_cpu = statistics.median(c for _, c in pfs)
                line += (f"; postfix {pf_med:.1f} msg/s, {pf_cpu:.2f} ms CPU/msg; "
                         f"ratio {mr_med / pf_med:.2f}, CPU ratio {mr_cpu / pf_cpu:.2f}")
            print(line)
        if args.profile is not None:
            smtp_accept.print_profile(args.profile, 30)
    finally:
        sink.terminate()
        sink.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
