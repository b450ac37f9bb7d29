#!/usr/bin/env python3
"""Benchmark: SMTP messages/second accepted by mailriderd, and end to end to a Maildir.

    python3 tools/bench/smtp_accept.py [--sessions 20] [--messages 2000] [--sizes 1k,100k]
                                       [--no-postfix] [--no-e2e] [--profile]
                                       [--client auto|smtp-source|builtin]
                                       [--rounds N] [--warmup N] [--settle S]

Run from anywhere; it finds the repository from its own path. Needs the
``mailrider`` package importable (an installed venv, or PYTHONPATH=core/src).

For each message size it starts one mailriderd on a free loopback port
(core/tests/e2e/harness.py) with a configuration that maps every recipient
to one Maildir, and measures:

accept
    ``mailriderctl pause mda``, then N messages over S parallel sessions,
    one message per connection (Postfix's ``smtp-source`` without ``-d``).
    Every message waits for its ``250``, which mailrider sends only after
    the message and its envelope are synced, so this is fsynced msg/s.
drain
    ``resume mda``: how fast the paused backlog reaches the Maildir.
e2e
    delivery running: time from the first message sent until the last
    message file appears in ``new/``.

Before the accept window each side gets the same preparation: ``--warmup``
messages (default: as many as measured) sent and delivered (mailrider) or
flushed from the queue (Postfix), then ``sync`` and ``--settle`` seconds of
quiet, so that a previous round's removed spool or a fresh daemon's first
allocations do not fall on one side only.

When Postfix is installed (and we run as root) a throwaway Postfix
(tools/bench/postfix_peer.py) on another loopback port gets the same load
in the same invocation: accept with every message put on hold (no delivery
work behind it), then e2e with virtual(8) delivering to a Maildir. The
ratio is mailrider/Postfix.

The load tool is /usr/sbin/smtp-source when present, else a built-in
asyncio client with the same dialogue (said in the output). Every run is
bounded by ``--timeout``. ``--profile`` runs the daemon's children under
cProfile (MAILRIDER_PROFILE) and prints the top entries of pony and queue.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import pstats
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "core" / "tests" / "e2e"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
if not any(Path(p, "mailrider").is_dir() for p in sys.path if p):
    sys.path.append(str(ROOT / "core" / "src"))

import postfix_peer  # noqa: E402
import procstat  # noqa: E402
from harness import Daemon, free_port  # noqa: E402

SENDER = "from@bench.example"
RCPT = "to@localhost"
BOX = "to"  # the Maildir the recipient's local part names

CONFIG = """\
# tools/bench/smtp_accept.py: every recipient into one Maildir per local part
listen on 127.0.0.1 port {port}
table everyone {{ "@" = "{user}" }}
action "local" maildir "{mail}/%{{rcpt.user:lowercase|strip}}" virtual <everyone>
match from any for any action "local"
"""


def parse_size(text: str) -> int:
    t = text.strip().lower()
    mult = 1
    if t.endswith("k"):
        mult, t = 1024, t[:-1]
    elif t.endswith("m"):
        mult, t = 1024 * 1024, t[:-1]
    return int(float(t) * mult)


def size_label(n: int) -> str:
    if n % (1024 * 1024) == 0:
        return f"{n // (1024 * 1024)}M"
    if n % 1024 == 0:
        return f"{n // 1024}K"
    return str(n)


def count_files(d: Path) -> int:
    try:
        return len(os.listdir(d))
    except FileNotFoundError:
        return 0


def wait_count(d: Path, target: int, timeout: float, poll: float = 0.02) -> float | None:
    """Wait until ``d`` holds ``target`` files; the monotonic time it did, None on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        if count_files(d) >= target:
            return time.monotonic()
        if time.monotonic() > deadline:
            return None
        time.sleep(poll)


# -- load generators ------------------------------------------------------------


class LoadError(RuntimeError):
    pass


def smtp_source_path() -> str | None:
    # MAILRIDER_BENCH_POSTFIX_ROOT first: an unpacked copy that stays put while
    # the machine's package may come and go
    for p in (f"{postfix_peer.ROOT}/usr/sbin/smtp-source" if postfix_peer.ROOT else None,
              shutil.which("smtp-source"), "/usr/sbin/smtp-source"):
        if p and os.access(p, os.X_OK):
            return p
    return None


def run_smtp_source(tool: str, port: int, sessions: int, messages: int, size: int,
                    timeout: float) -> float:
    """Send with smtp-source; returns elapsed seconds. Every message waits for its 250."""
    argv = [tool, "-s", str(sessions), "-m", str(messages), "-l", str(size),
            "-f", SENDER, "-t", RCPT, "-M", "bench.localhost", f"127.0.0.1:{port}"]
    t0 = time.monotonic()
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise LoadError(f"smtp-source did not finish in {timeout:.0f}s") from exc
    dt = time.monotonic() - t0
    if res.returncode != 0:
        raise LoadError(f"smtp-source exited {res.returncode}: {res.stderr.strip()[-400:]}")
    return dt


def _body(size: int) -> bytes:
    head = (f"From: <{SENDER}>\r\nTo: <{RCPT}>\r\nSubject: bench\r\n"
            "Message-ID: <bench@bench.localhost>\r\n\r\n").encode()
    line = b"x" * 78 + b"\r\n"
    n, rest = divmod(size, len(line))
    return head + line * n + b"x" * max(rest - 2, 0) + (b"\r\n" if rest else b"")


async def _session(port: int, body: bytes, timeout: float) -> None:
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)

    async def expect(code: bytes) -> None:
        while True:
            line = await asyncio.wait_for(reader.readline(), timeout)
            if not line:
                raise LoadError("connection closed")
            if not line.startswith(code):
                raise LoadError(f"unexpected reply {line!r}")
            if line[3:4] != b"-":
                return

    try:
        await expect(b"220")
        writer.write(b"EHLO bench.localhost\r\n")
        await expect(b"250")
        writer.write(f"MAIL FROM:<{SENDER}>\r\n".encode())
        await expect(b"250")
        writer.write(f"RCPT TO:<{RCPT}>\r\n".encode())
        await expect(b"250")
        writer.write(b"DATA\r\n")
        await expect(b"354")
        writer.write(body + b".\r\n")
        await expect(b"250")
        writer.write(b"QUIT\r\n")
        await expect(b"221")
    finally:
        writer.close()


async def _builtin(port: int, sessions: int, messages: int, size: int, timeout: float) -> None:
    body = _body(size)
    left = [messages]

    async def worker() -> None:
        while left[0] > 0:
            left[0] -= 1
            await _session(port, body, timeout)

    await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(sessions))), timeout)


def run_builtin(port: int, sessions: int, messages: int, size: int, timeout: float) -> float:
    t0 = time.monotonic()
    try:
        asyncio.run(_builtin(port, sessions, messages, size, timeout))
    except TimeoutError as exc:
        raise LoadError(f"built-in client did not finish in {timeout:.0f}s") from exc
    except OSError as exc:
        raise LoadError(f"built-in client: {exc}") from exc
    return time.monotonic() - t0


@dataclass
class Load:
    tool: str | None  # path of smtp-source, or None for the built-in client
    sessions: int
    timeout: float
    settle: float = 2.0  # seconds of quiet before each measured accept window
    warmup: int = 0  # messages sent (and delivered or flushed) first; 0: as many as measured

    @property
    def name(self) -> str:
        return "smtp-source" if self.tool else "built-in asyncio client"

    def send(self, port: int, messages: int, size: int) -> float:
        if self.tool:
            return run_smtp_source(self.tool, port, self.sessions, messages, size, self.timeout)
        return run_builtin(port, self.sessions, messages, size, self.timeout)


# -- results ------------------------------------------------------------------------


@dataclass
class Result:
    accept: float | None = None  # msg/s, delivery paused / held
    drain: float | None = None  # msg/s, paused backlog to Maildir
    e2e: float | None = None  # msg/s, first send to last file
    e2e_accept: float | None = None  # msg/s accepted while delivering
    notes: list[str] = field(default_factory=list)
    stats: dict[str, int] = field(default_factory=dict)
    cpu_ms: float | None = None  # CPU ms of every process of the daemon per e2e message
    mem_idle: procstat.Memory | None = None  # PSS after start, before any mail
    mem_load: procstat.Memory | None = None  # the largest PSS seen during the e2e run
    ipc: dict[str, int] = field(default_factory=dict)  # IPC messages handled in e2e, by type
    drain_cpu_ms: float | None = None  # CPU ms of every process per drained message
    cpu_by: dict[str, float] = field(default_factory=dict)  # e2e CPU s by process name
    drain_cpu_by: dict[str, float] = field(default_factory=dict)  # drain CPU s by name
    drain_stats: dict[str, int] = field(default_factory=dict)  # counters over the drain
    e2e_stats: dict[str, int] = field(default_factory=dict)  # the same over the e2e run
    refused: int | None = None  # sessions refused by a session cap (``smtp refused`` logged)
    commit: tuple[int, int] | None = None  # e2e commit batches and their total µs
    rtt: dict[str, tuple[int, int]] = field(default_factory=dict)  # e2e requests: n, µs
    machine: tuple[float, float] | None = None  # the machine's busy, iowait share in e2e


class PeakMemory:
    """Samples the daemon's PSS in a thread while a run lasts; keeps the largest."""

    def __init__(self, root: int, interval: float = 0.5) -> None:
        self.root, self.interval = root, interval
        self.peak: procstat.Memory | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            mem = procstat.pss(self.root)
            if self.peak is None or mem.total_kb > self.peak.total_kb:
                self.peak = mem
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def settle(seconds: float) -> None:
    """Before a measured window, on both sides alike: write back what earlier phases left
    dirty (the previous daemon's spool removed, warm-up deliveries), then let the disk
    go quiet, so that one side's leftovers do not slow the other's syncs."""
    os.sync()
    time.sleep(seconds)


def rate(n: int, seconds: float | None) -> float | None:
    return n / seconds if seconds and seconds > 0 else None


def fmt(v: float | None) -> str:
    return f"{v:,.0f}" if v is not None else "-"


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}" if a is not None and b else "-"


# -- mailrider ------------------------------------------------------------------------


def stats(d: Daemon) -> dict[str, int]:
    res = d.ctl("show", "stats", check=False)
    out: dict[str, int] = {}
    for line in res.stdout.splitlines():
        k, _, v = line.partition("=")
        if v.isdigit():
            out[k] = int(v)
    return out


#: show stats counters read around the drain (the parent's delivery workers)
DRAIN_COUNTERS = ("parent.mda.worker.batches", "parent.mda.worker.deliveries")


def bench_mailrider(load: Load, messages: int, size: int, *, e2e: bool, profile_dir: Path | None,
                    extra_config: tuple[str, ...] = ()) -> Result:
    env: dict[str, str] = {}
    res = Result()
    d = Daemon(CONFIG + "".join(f"{line}\n" for line in extra_config), extra_env=env)
    if profile_dir is not None:
        # written by the children after their privilege drop
        prof = d.state / "profile"
        prof.mkdir(mode=0o755)
        du = os.stat(d.mail)
        os.chown(prof, du.st_uid, du.st_gid)
        d.env["MAILRIDER_PROFILE"] = str(prof)
    box = d.mail / BOX / "new"
    try:
        d.start()
        assert d.proc is not None
        time.sleep(1.0)  # idle: every child is set up
        res.mem_idle = procstat.pss(d.proc.pid)
        warm = load.warmup or messages
        load.send(d.port, warm, size)
        if wait_count(box, warm, load.timeout) is None:
            res.notes.append("warm-up messages not delivered in time")
        d.ctl("pause", "mda")
        settle(load.settle)
        before = stats(d)
        dt = load.send(d.port, messages, size)
        res.accept = rate(messages, dt)
        after = stats(d)
        res.stats = {k: after.get(k, 0) - before.get(k, 0)
                     for k in ("queue.commit.batches", "queue.commit.messages",
                               "smtp.spool.ready", "smtp.spool.asked")}
        base = count_files(box)
        dstats0 = stats(d)
        snap0 = procstat.cpu_snapshot(d.proc.pid)
        t0 = time.monotonic()
        d.ctl("resume", "mda")
        t1 = wait_count(box, warm + messages, load.timeout)
        snap1 = procstat.cpu_snapshot(d.proc.pid)
        if t1 is None:
            res.notes.append(f"drain: {count_files(box) - base}/{messages} delivered in time")
        else:
            res.drain = rate(messages, t1 - t0)
            res.drain_cpu_by = procstat.cpu_by_name(snap0, snap1)
            res.drain_cpu_ms = sum(res.drain_cpu_by.values()) * 1000 / messages
        dstats1 = stats(d)
        res.drain_stats = {k: dstats1.get(k, 0) - dstats0.get(k, 0) for k in DRAIN_COUNTERS}
        if e2e:
            target = count_files(box) + messages
            d.ctl("profile", "imsg")  # every child counts the IPC messages it handles
            d.ctl("profile", "queue")  # and the queue the time of its commit batches
            ipc0 = stats(d)
            cpu0 = procstat.cpu_seconds(d.proc.pid)
            snap0 = procstat.cpu_snapshot(d.proc.pid)
            machine0 = procstat.machine_cpu()
            with PeakMemory(d.proc.pid) as peak:
                t0 = time.monotonic()
                dt = load.send(d.port, messages, size)
                res.e2e_accept = rate(messages, dt)
                t1 = wait_count(box, target, load.timeout)
            res.machine = procstat.machine_share(machine0, procstat.machine_cpu())
            cpu = procstat.cpu_seconds(d.proc.pid) - cpu0
            res.cpu_by = procstat.cpu_by_name(snap0, procstat.cpu_snapshot(d.proc.pid))
            res.mem_load = peak.peak
            if t1 is None:
                res.notes.append("e2e: not every message delivered in time")
            else:
                res.e2e = rate(messages, t1 - t0)
                res.cpu_ms = cpu * 1000 / messages
            ipc1 = stats(d)
            res.ipc = {k: ipc1[k] - ipc0.get(k, 0) for k in ipc1
                       if k.startswith("profile.imsg.") and ".count" in k}
            res.e2e_stats = {k: ipc1.get(k, 0) - ipc0.get(k, 0) for k in DRAIN_COUNTERS}
            for k in ipc1:
                if k.startswith("profile.rtt.") and ".count." in k:
                    name = k[len("profile.rtt."):].replace(".count.", " from ")
                    usec = k.replace(".count.", ".usec.")
                    res.rtt[name] = (ipc1[k] - ipc0.get(k, 0),
                                     ipc1.get(usec, 0) - ipc0.get(usec, 0))
            res.commit = (ipc1.get("profile.queue.commit.count", 0)
                          - ipc0.get("profile.queue.commit.count", 0),
                          ipc1.get("profile.queue.commit.usec", 0)
                          - ipc0.get("profile.queue.commit.usec", 0))
    except LoadError as exc:
        res.notes.append(f"mailrider: {exc}")
    finally:
        d.stop()
        # a session cap must not refuse the benchmark's sessions (500 from
        # loopback are admitted by default: docs/resource-bounds.md)
        res.refused = sum(1 for line in d.log().splitlines()
                          if " smtp refused " in line and " reason=" in line)
        if profile_dir is not None:
            profile_dir.mkdir(parents=True, exist_ok=True)
            for p in (d.state / "profile").glob("*.prof"):
                shutil.copy(p, profile_dir / f"{size_label(size)}-{p.name}")
        if res.notes:
            res.notes.append("daemon log tail:\n" + d.log()[-1500:])
        d.cleanup()
    return res


# -- postfix ---------------------------------------------------------------------------


def bench_postfix(load: Load, messages: int, size: int, *, e2e: bool) -> Result:
    res = Result()
    try:
        peer = postfix_peer.PostfixPeer(free_port(), hold=True)
    except postfix_peer.PostfixError as exc:
        res.notes.append(f"Postfix not run: {exc}")
        return res
    try:
        peer.start()
        time.sleep(1.0)
        master = peer.master_pid()
        if master is not None:
            res.mem_idle = procstat.pss(master)
        warm = load.warmup or messages
        load.send(peer.port, warm, size)
        peer.flush()
        settle(load.settle)
        dt = load.send(peer.port, messages, size)
        res.accept = rate(messages, dt)
        held = peer.count_queue("hold")
        if held < messages:
            res.notes.append(f"Postfix: only {held}/{messages} on hold")
        peer.flush()
        if e2e:
            peer.set_hold(False)
            load.send(peer.port, warm, size)  # respawn smtpd after the reload
            if wait_count(peer.maildir / "new", warm, load.timeout) is None:
                res.notes.append("Postfix: warm-up messages not delivered in time")
            target = peer.delivered() + messages
            master = peer.master_pid()
            cpu0 = procstat.cpu_seconds(master) if master else 0.0
            snap0 = procstat.cpu_snapshot(master) if master else None
            machine0 = procstat.machine_cpu()
            with PeakMemory(master or os.getpid()) as peak:
                t0 = time.monotonic()
                dt = load.send(peer.port, messages, size)
                res.e2e_accept = rate(messages, dt)
                t1 = wait_count(peer.maildir / "new", target, load.timeout)
            res.machine = procstat.machine_share(machine0, procstat.machine_cpu())
            if master is not None:
                res.mem_load = peak.peak
            if t1 is None:
                res.notes.append("Postfix e2e: not every message delivered in time")
            else:
                res.e2e = rate(messages, t1 - t0)
                if master is not None:
                    res.cpu_ms = (procstat.cpu_seconds(master) - cpu0) * 1000 / messages
                    if snap0 is not None:
                        res.cpu_by = procstat.cpu_by_name(snap0, procstat.cpu_snapshot(master))
    except (postfix_peer.PostfixError, LoadError, subprocess.SubprocessError) as exc:
        res.notes.append(f"Postfix: {exc}")
    finally:
        peer.cleanup()
    return res


# -- output ----------------------------------------------------------------------------


def table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for n, r in enumerate(rows):
        lines.append("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in
                               enumerate(zip(r, widths, strict=True))))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def report(size: int, sessions: int, messages: int, mr: Result, pf: Result | None) -> str:
    rows = [["figure (msg/s)", "sessions", "messages", "mailrider", "postfix", "ratio"]]

    def row(name: str, a: float | None, b: float | None) -> None:
        rows.append([name, str(sessions), str(messages), fmt(a),
                     fmt(b) if pf is not None else "-", ratio(a, b) if pf is not None else "-"])

    row("accepted, fsynced (delivery held)", mr.accept, pf.accept if pf else None)
    row("accepted while delivering", mr.e2e_accept, pf.e2e_accept if pf else None)
    row("end to end to Maildir", mr.e2e, pf.e2e if pf else None)
    rows.append(["drain of held backlog", str(sessions), str(messages), fmt(mr.drain), "-", "-"])
    out = [f"== {size_label(size)} messages ==", table(rows)]
    b, n = mr.stats.get("queue.commit.batches", 0), mr.stats.get("queue.commit.messages", 0)
    if b:
        out.append(f"mailrider group commit (accept run): queue.commit.batches={b} "
                   f"queue.commit.messages={n} ({n / b:.1f} messages/batch)")
    ready, asked = mr.stats.get("smtp.spool.ready", 0), mr.stats.get("smtp.spool.asked", 0)
    if ready or asked:
        # pony's spool files asked for ahead (docs/performance.md §9)
        out.append(f"mailrider spool files at the first RCPT (accept run): {ready} ready, "
                   f"{asked} asked for then")
    if mr.cpu_ms is not None or (pf is not None and pf.cpu_ms is not None):
        cpf = pf.cpu_ms if pf is not None else None
        out.append("server CPU per delivered message (e2e, every process of the daemon): "
                   f"mailrider {_ms(mr.cpu_ms)}, Postfix {_ms(cpf)}, ratio {ratio(mr.cpu_ms, cpf)}")
        # CPU per message times messages per second: the share of the machine
        # each daemon got. On a shared, oversubscribed machine the scheduler
        # shares the cores per runnable thread, so a daemon of many processes
        # gets more of them: a throughput ratio below its CPU-cost ratio is
        # that share, not the work per message (docs/performance.md §6)
        out.append("cores used during e2e (CPU per message x msg/s): "
                   f"mailrider {_cores(mr)}, Postfix {_cores(pf)}")
        # the whole machine meanwhile (the load client and anything else
        # included): a daemon that leaves cores idle while the other keeps
        # them busy is waiting, not working
        out.append("machine during e2e (all cores, client included): "
                   f"mailrider run {_share(mr)}, Postfix run {_share(pf)}")
    for label, res in (("mailrider", mr), ("Postfix", pf)):
        if res is not None and res.cpu_by:
            out.append(f"{label} CPU ms per e2e message by process: "
                       f"{procstat.cpu_line(res.cpu_by, messages)}")
    if mr.drain_cpu_by:
        out.append(f"mailrider CPU per drained message: {_ms(mr.drain_cpu_ms)}; by process: "
                   f"{procstat.cpu_line(mr.drain_cpu_by, messages)}")
    for what, counted in (("drain", mr.drain_stats), ("e2e", mr.e2e_stats)):
        batches = counted.get("parent.mda.worker.batches", 0)
        if batches:
            n = counted.get("parent.mda.worker.deliveries", 0)
            out.append(f"mailrider deliveries per worker batch ({what}): {n / batches:.1f} "
                       f"({n} in {batches} batches)")
    for label, res in (("mailrider", mr), ("Postfix", pf)):
        if res is None:
            continue
        if res.mem_idle is not None:
            out.append(f"{label} memory idle: {res.mem_idle.line()}")
        if res.mem_load is not None:
            out.append(f"{label} memory peak under {sessions} sessions: {res.mem_load.line()}")
    if mr.ipc and mr.e2e:
        total = sum(mr.ipc.values())
        by_type: dict[str, int] = {}
        for k, v in mr.ipc.items():
            # profile.imsg.<Type>.count.<role>
            name = k.removeprefix("profile.imsg.").replace(".count", "")
            by_type[name] = by_type.get(name, 0) + v
        top = ", ".join(f"{k}={v / messages:.2f}" for k, v in
                        sorted(by_type.items(), key=lambda x: -x[1])[:8])
        out.append(f"mailrider IPC messages handled by the children per e2e message: "
                   f"{total / messages:.2f} ({top})")
    if mr.rtt:
        # what each request waited for its answer, seen by the caller (where a
        # session's time goes between its commands: the peer's work, its queue
        # and the scheduler's latency)
        waits = ", ".join(f"{k} {u / n / 1000:.2f} ms" for k, (n, u) in
                          sorted(mr.rtt.items(), key=lambda x: -x[1][1]) if n)
        out.append(f"mailrider requests' round trips during e2e (mean): {waits}")
    if mr.commit is not None and mr.commit[0]:
        n, usec = mr.commit
        out.append(f"mailrider commit batches during e2e: {n}, {usec / n / 1000:.1f} ms each "
                   "(stage, rename, syncfs; profile.queue.commit)")
    if mr.refused is not None:
        out.append(f"mailrider sessions refused (smtp refused in its log): {mr.refused}")
    for note in mr.notes + (pf.notes if pf else []):
        out.append(f"note: {note}")
    return "\n".join(out)


def _cores(res: Result | None) -> str:
    if res is None or res.cpu_ms is None or res.e2e is None:
        return "-"
    return f"{res.cpu_ms * res.e2e / 1000:.2f}"


def _share(res: Result | None) -> str:
    if res is None or res.machine is None:
        return "-"
    busy, iowait = res.machine
    return f"{busy:.0%} busy, {iowait:.0%} iowait"


def _ms(v: float | None) -> str:
    return f"{v:.2f} ms" if v is not None else "-"


def median_summary(size: int, accepts: list[tuple[float | None, float | None]],
                   label: str = "accepted", unit: str = "msg/s") -> str:
    """The medians of one figure over alternating rounds, and of their ratios."""
    import statistics

    def show(v: float | None) -> str:
        return f"{v:.2f}" if unit == "ms" and v is not None else fmt(v)

    mine = [a for a, _ in accepts if a]
    theirs = [b for _, b in accepts if b]
    ratios = [a / b for a, b in accepts if a and b]
    parts = [f"{size_label(size)} {label} over {len(accepts)} rounds: mailrider median "
             f"{show(statistics.median(mine) if mine else None)} {unit}"]
    if theirs:
        parts.append(f"Postfix median {show(statistics.median(theirs))} {unit}")
        parts.append(f"median ratio {statistics.median(ratios):.2f} "
                     f"(per round: {', '.join(f'{r:.2f}' for r in ratios)})")
    return "; ".join(parts)


#: the figures whose medians --rounds prints: (label, Result attribute, unit)
MEDIANS = (("accepted", "accept", "msg/s"),
           ("accepted while delivering", "e2e_accept", "msg/s"),
           ("end to end", "e2e", "msg/s"),
           ("drain", "drain", "msg/s"),
           ("CPU per delivered message", "cpu_ms", "ms"),
           ("CPU per drained message", "drain_cpu_ms", "ms"))


def print_profile(profile_dir: Path, top: int) -> None:
    for path in sorted(profile_dir.glob("*.prof")):
        label = path.stem
        if not label.endswith(("-pony", "-queue", "-parent")):
            continue
        buf = io.StringIO()
        st = pstats.Stats(str(path), stream=buf)
        st.sort_stats("cumulative").print_stats(top)
        print(f"\n== profile {label} (cumulative, top {top}) ==")
        print(buf.getvalue().split("Ordered by:", 1)[-1].strip())
        buf = io.StringIO()
        st = pstats.Stats(str(path), stream=buf)
        st.sort_stats("tottime").print_stats(15)
        print(f"\n== profile {label} (own time, top 15) ==")
        print(buf.getvalue().split("Ordered by:", 1)[-1].strip())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=20)
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--sizes", default="1k,100k", help="comma-separated, e.g. 1k,100k")
    ap.add_argument("--no-postfix", action="store_true", help="mailrider figures only")
    ap.add_argument("--no-e2e", action="store_true", help="accept figures only")
    ap.add_argument("--profile", action="store_true",
                    help="cProfile the daemon's children; print pony and queue")
    ap.add_argument("--profile-dir", default="", help="keep the .prof files here")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--config", action="append", default=[], metavar="LINE",
                    help="a line added to mailrider's configuration (repeatable), "
                         "e.g. 'scheduler limit max-inflight 200'")
    ap.add_argument("--client", choices=("auto", "smtp-source", "builtin"), default="auto")
    ap.add_argument("--timeout", type=float, default=300.0, help="per run, seconds")
    ap.add_argument("--warmup", type=int, default=0,
                    help="messages sent before measuring, on both sides (0: --messages)")
    ap.add_argument("--settle", type=float, default=2.0,
                    help="sync, then seconds of quiet before each measured accept window")
    ap.add_argument("--rounds", type=int, default=1,
                    help="alternate mailrider and Postfix this many times per size and "
                         "print the medians (a shared machine is noisy)")
    ns = ap.parse_args(argv)
    if ns.sessions < 1 or ns.messages < 1:
        ap.error("--sessions and --messages must be positive")
    sizes = [parse_size(s) for s in ns.sizes.split(",") if s.strip()]

    tool = None if ns.client == "builtin" else smtp_source_path()
    if ns.client == "smtp-source" and tool is None:
        print("smtp-source not found", file=sys.stderr)
        return 2
    load = Load(tool, ns.sessions, ns.timeout, ns.settle, ns.warmup)
    print(f"load tool: {load.name}" + ("" if tool else " (smtp-source not found)"))
    print(f"python: {sys.executable} {sys.version.split()[0]}; cpus: {os.cpu_count()}")
    pf_reason = "--no-postfix" if ns.no_postfix else postfix_peer.available()
    if pf_reason is None:
        print(f"peer: Postfix {postfix_peer._version()} on another loopback port, same load")
    else:
        print(f"peer: none ({pf_reason})")

    profile_dir: Path | None = None
    tmp_prof = False
    if ns.profile:
        if ns.profile_dir:
            profile_dir = Path(ns.profile_dir).resolve()
        else:
            import tempfile
            profile_dir = Path(tempfile.mkdtemp(prefix="mailrider-bench-prof-", dir="/tmp"))
            tmp_prof = True
        print("profiling: mailrider's children run under cProfile (figures are slower)")

    status = 0
    for size in sizes:
        rounds: list[tuple[Result, Result | None]] = []
        for _ in range(max(1, ns.rounds)):
            mr = bench_mailrider(load, ns.messages, size, e2e=not ns.no_e2e,
                                 profile_dir=profile_dir, extra_config=tuple(ns.config))
            pf = None
            if pf_reason is None:
                pf = bench_postfix(load, ns.messages, size, e2e=not ns.no_e2e)
            print()
            print(report(size, ns.sessions, ns.messages, mr, pf), flush=True)
            if mr.accept is None:
                status = 1
            rounds.append((mr, pf))
        if ns.rounds > 1:
            for label, attr, unit in MEDIANS:
                pairs = [(getattr(a, attr), getattr(b, attr) if b is not None else None)
                         for a, b in rounds]
                print(median_summary(size, pairs, label, unit), flush=True)
    if profile_dir is not None:
        print_profile(profile_dir, ns.top)
        if tmp_prof:
            shutil.rmtree(profile_dir, ignore_errors=True)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
