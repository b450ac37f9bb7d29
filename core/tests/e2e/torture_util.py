"""Torture checks against a real daemon, shared by the pytest cases
(test_e2e_torture_*.py, short budgets) and tools/torture/run.py (long ones).

Every check takes a count and a deadline, never loops unbounded, and returns
a :class:`Tally` (attempts, failures, notes) that the runner prints as a row
and a test asserts on.
"""

from __future__ import annotations

import os
import random
import re
import resource
import select
import socket
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from harness import Daemon, wait_for
from mailrider import limits

ROOT = Path(__file__).resolve().parents[3]


@dataclass
class Tally:
    """Attempts and failures of one check."""

    name: str
    attempts: int = 0
    failures: int = 0
    notes: list[str] = field(default_factory=list)
    numbers: dict[str, float] = field(default_factory=dict)

    def record(self, ok: bool, note: str = "") -> None:
        self.attempts += 1
        if not ok:
            self.failures += 1
            if len(self.notes) < 20:
                self.notes.append(note)


# --------------------------------------------------------------- raw SMTP


def recv_until_closed(s: socket.socket, limit: float = 10.0) -> bytes:
    out = b""
    deadline = time.monotonic() + limit
    s.settimeout(limit)
    while time.monotonic() < deadline:
        try:
            chunk = s.recv(65536)
        except (TimeoutError, ConnectionResetError):
            break
        if not chunk:
            break
        out += chunk
    return out


def read_reply(f: object) -> tuple[int, str]:
    lines = []
    while True:
        line = f.readline()  # type: ignore[attr-defined]
        if not line:
            raise ConnectionError("closed")
        text = line.decode(errors="replace").rstrip("\r\n")
        lines.append(text)
        if text[3:4] != "-":
            return int(text[:3]), "\n".join(lines)


def raw_session(port: int, payload: Iterable[bytes], *, wait_banner: bool = True,
                timeout: float = 10.0) -> bytes:
    """Connect, (read the banner), send each piece, half-close, read all replies."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        banner = b""
        if wait_banner:
            banner = s.recv(1000)
        for piece in payload:
            s.sendall(piece)
        try:
            s.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        return banner + recv_until_closed(s, timeout)


def messages_logged(d: Daemon) -> int:
    return d.log().count("smtp message ")


def maildir_count(root: Path) -> int:
    return sum(1 for p in root.glob("*/new/*") if p.is_file())


# ------------------------------------------------------------- smuggling

#: malformed end-of-data marks (SMTP smuggling, CVE-2023-51764/5/6 and kin);
#: none holds a real CRLF "." CRLF, so the message runs on to the real end
SMUGGLING_VARIANTS: tuple[bytes, ...] = (
    b"\n.\n", b"\n.\r\n", b"\r.\r", b"\r\n.\n", b"\r\r\n.\r\r\n", b"\r.\r\n", b"\r\n.\r",
    b"\n.\r", b"\r\n.\r\r\n", b"\r\n\x00.\r\n", b"\r\n.\x00\r\n", b"\r\x00\n.\r\x00\n",
    b"\n..\n", b"\r\n \r\n.\n", b"\r\n.\n\r\n", b"\r\n\r.\r\n",
)
SMUGGLED = (b"MAIL FROM:<evil@example.org>\r\nRCPT TO:<smug2@localhost>\r\nDATA\r\n"
            b"Subject: smuggled\r\n\r\nx\r\n.\r\n")


def _split(data: bytes, rng: random.Random, pieces: int) -> list[bytes]:
    cuts = sorted(rng.sample(range(1, len(data)), min(pieces, len(data) - 1)))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


def check_smuggling(d: Daemon, maildir: Path, rounds: int, deadline: float,
                    seed: int = 0) -> Tally:
    """Each variant, sent whole then split at random points: at most the first
    message is accepted, never the smuggled one."""
    t = Tally("smuggling: bad end-of-data")
    rng = random.Random(seed)
    for rnd in range(rounds):
        for bad in SMUGGLING_VARIANTS:
            if time.monotonic() > deadline:
                return t
            before = messages_logged(d)
            data = (b"EHLO x\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<smug@localhost>\r\n"
                    b"DATA\r\n")
            body = b"Subject: one\r\n\r\nbody" + bad + SMUGGLED + b"QUIT\r\n"
            pieces = [data, body] if rnd == 0 else [data, *_split(body, rng, 1 + rnd % 6)]
            out = raw_session(d.port, pieces)
            accepted = out.count(b"Message accepted")
            after = messages_logged(d)
            ok = (accepted == 0 and after == before
                  and not (maildir / "smug2").exists() and b"554 5.6.0" in out)
            t.record(ok, f"variant={bad!r} round={rnd} accepted={accepted} "
                         f"logged={after - before} out={out[-200:]!r}")
    return t


def check_bdat(d: Daemon, maildir: Path) -> Tally:
    """CHUNKING is offered; each smuggling variant inside a BDAT chunk gets
    the same 554 5.6.0 as inside DATA; CRLF "." CRLF inside a chunk is plain
    content (one message); a chunk refused for want of a transaction is read
    and dropped, its command-like content never run."""
    t = Tally("smuggling: BDAT")
    out = raw_session(d.port, [b"EHLO x\r\n", b"QUIT\r\n"])
    t.record(b"CHUNKING" in out, f"EHLO does not offer CHUNKING: {out!r}")
    env = b"EHLO x\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<smug@localhost>\r\n"
    for bad in (*SMUGGLING_VARIANTS, b"\r\n.\r\n"):
        before = messages_logged(d)
        chunk = b"Subject: one\r\n\r\nbody" + bad + SMUGGLED
        half = len(chunk) // 2
        out = raw_session(d.port, [env, b"BDAT %d\r\n" % half + chunk[:half],
                                   b"BDAT %d LAST\r\n" % (len(chunk) - half) + chunk[half:],
                                   b"QUIT\r\n"])
        after = messages_logged(d)
        if bad == b"\r\n.\r\n":
            ok = out.count(b"Message accepted") == 1 and after == before + 1
        else:
            ok = b"554 5.6.0" in out and b"Message accepted" not in out and after == before
        t.record(ok and not (maildir / "smug2").exists(),
                 f"variant={bad!r} logged={after - before} out={out[-200:]!r}")
    before = messages_logged(d)
    inside = env + b"BDAT 5 LAST\r\nhello"
    out = raw_session(d.port, [b"EHLO x\r\n", b"BDAT %d LAST\r\n" % len(inside) + inside,
                               b"QUIT\r\n"])
    t.record(b"503 5.5.1" in out and b"250 2.1.5" not in out and messages_logged(d) == before,
             f"chunk without a transaction ran: {out!r}")
    return t


# --------------------------------------------------- pipelining / pregreet


def check_pregreet(d: Daemon, attempts: int, deadline: float) -> Tally:
    """Clients that speak before the banner get 554 5.7.1 and no session."""
    t = Tally("pregreet: early talker refused")
    for _ in range(attempts):
        if time.monotonic() > deadline:
            break
        before = messages_logged(d)
        out = raw_session(d.port, [b"EHLO x\r\nMAIL FROM:<a@example.org>\r\n"
                                   b"RCPT TO:<early@localhost>\r\nDATA\r\nSubject: e\r\n\r\n"
                                   b"x\r\n.\r\nQUIT\r\n"], wait_banner=False)
        ok = out.startswith(b"554 5.7.1") and b"220" not in out and b"250" not in out
        t.record(ok and messages_logged(d) == before, f"early talker got {out[:200]!r}")
    return t


def check_pipelined_after_refused_data(d: Daemon, attempts: int, deadline: float) -> Tally:
    """A message pipelined after a DATA that is refused is never executed."""
    t = Tally("pipelining: body after refused DATA")
    for i in range(attempts):
        if time.monotonic() > deadline:
            break
        before = messages_logged(d)
        bad_rcpt = b"<victim@example.net>" if i % 2 == 0 else b"<no-such-domain@invalid.test>"
        payload = (b"EHLO x\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:" + bad_rcpt + b"\r\n"
                   b"DATA\r\n" + SMUGGLED.replace(b"smug2", b"pipe2") + b"QUIT\r\n")
        out = raw_session(d.port, [payload])
        ok = (b"Message accepted" not in out and messages_logged(d) == before
              and b"354" not in out)
        t.record(ok, f"out={out!r}")
    return t


# ------------------------------------------------------------ open relay

RELAY_PROBES = (
    "user%victim.test@{ours}", '"user@victim.test"@{ours}', "@{ours}:user@victim.test",
    "user@[127.0.0.1]", "user@[192.0.2.1]", "user@[IPv6:::1]", "victim.test!user@{ours}",
    "user@victim.test", "user@VICTIM.TEST", "USER@Victim.Test.", "user@victim.test.",
    "user@{ours}.", "user@{OURS}", "user@xn--bcher-kva.example", "user@bücher.example",
    "user@victim.test@{ours}", "<user@victim.test>@{ours}", "user@{ours}@victim.test",
    "user@victim.test%{ours}", "@victim.test:user@{ours}", "user@{ours}.victim.test",
    "user@victim.test\\@{ours}", "user@[{ours}]", "user@victim.test.{ours}",
)


def relay_probes(ours: str) -> list[str]:
    return [p.format(ours=ours, OURS=ours.upper()) for p in RELAY_PROBES]


def check_relay(d: Daemon, ours: str, name: str) -> Tally:
    """Every probe is refused, or accepted only for a local delivery: with MDA
    paused, ``show queue`` must list nothing but ``mda`` envelopes."""
    t = Tally(f"open relay: {name}")
    d.ctl("pause", "mda")
    accepted = 0
    try:
        for probe in relay_probes(ours):
            utf8 = not probe.isascii()
            mail = b"MAIL FROM:<a@example.org>" + (b" SMTPUTF8" if utf8 else b"") + b"\r\n"
            out = raw_session(d.port, [b"EHLO x\r\n", mail,
                                       b"RCPT TO:<" + probe.encode() + b">\r\n",
                                       b"DATA\r\n"])
            codes = re.findall(rb"^(\d{3})[ ]", out, re.M)
            # 220, EHLO 250, MAIL, RCPT, DATA ...
            rcpt = codes[3] if len(codes) > 3 else b"???"
            if rcpt[:1] == b"2":
                accepted += 1
                raw_session(d.port, [b"EHLO x\r\n", mail,
                                     b"RCPT TO:<" + probe.encode() + b">\r\n",
                                     b"DATA\r\n", b"Subject: relay probe\r\n\r\nx\r\n.\r\n",
                                     b"QUIT\r\n"])
            t.record(rcpt[:1] in (b"2", b"4", b"5"), f"{probe}: no RCPT reply: {out!r}")
        lines = d.ctl("show", "queue").stdout.splitlines()
        for line in lines:
            fields = line.split("|")
            t.record(len(fields) > 6 and fields[2] == "mda",
                     f"{name}: non-local envelope queued: {line}")
    finally:
        d.ctl("resume", "mda")
    t.numbers["accepted-local"] = accepted
    t.numbers["relayed"] = t.failures
    return t


def example_config(path: Path, tmp: Path) -> str:
    """An example configuration made runnable here: loopback port, tables and
    paths moved under ``tmp``, delivery programs harmless. Returns a template
    for :class:`Daemon` (``{port}`` etc. left in, other braces doubled)."""
    text = path.read_text()
    text = text.replace("{", "{{").replace("}", "}}")
    text = re.sub(r"^listen on \S+ port \d+", "listen on 127.0.0.1 port {port}", text, flags=re.M)
    files = {
        "/etc/mail/domains": "example.org\nexample.net\n",
        "/etc/mail/users": "alice@example.org {user}\n",
        "/etc/mail/virtuals": "alice@example.org {user}\n@example.net {user}\n",
        "/etc/mail/aliases": "root: {user}\n",
    }
    for src, content in files.items():
        if src in text:
            dst = tmp / Path(src).name
            dst.write_text(content.replace("{user}", "__USER__"))
            os.chmod(dst, 0o644)
            text = text.replace(src, str(dst))
    text = text.replace("/var/vmail", "{mail}").replace("~/Maildir", "{mail}/%{{rcpt.user}}")
    text = text.replace("/run/dovecot/lmtp", str(tmp / "no-lmtp.sock"))
    text = text.replace("/usr/bin/procmail -f %{{sender}}", "/bin/true")
    text = text.replace(" junk alias <aliases>", " virtual <aliases>")
    return text


def fix_users(tmp: Path, user: str) -> None:
    for p in tmp.iterdir():
        if p.is_file() and p.suffix == "":
            p.write_text(p.read_text().replace("__USER__", user))


# ---------------------------------------------------------- process info


def pony_pid(d: Daemon) -> int:
    assert d.proc is not None
    pgid = os.getpgid(d.proc.pid)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().strip() == "mailrider:pony" and \
                    os.getpgid(int(entry.name)) == pgid:
                return int(entry.name)
        except (OSError, ProcessLookupError):
            continue
    raise LookupError("pony not found")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def nofile_limits(pid: int) -> tuple[int, int]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    return 0, 0


def raise_own_nofile(want: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, want)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# ------------------------------------------------------------ resources


def source_address(i: int, per_ip: int) -> str:
    """The i-th client's loopback address: ``per_ip`` clients per address."""
    n = i // per_ip
    return f"127.{10 + n // 250}.{n % 250 + 1}.{1 + (n % 7)}"


def check_concurrent_sessions(d: Daemon, count: int, deadline: float,
                              per_ip: int = 40) -> Tally:
    """Hold ``count`` sessions open at once, each greeted with 220; measure
    pony's RSS per session and check its descriptor limit."""
    t = Tally(f"load: {count} concurrent sessions")
    raise_own_nofile(count + 200)
    pid = pony_pid(d)
    soft, hard = nofile_limits(pid)
    t.numbers["pony-nofile-soft"] = soft
    t.record(soft == hard or soft >= count + 100, f"pony nofile soft={soft} hard={hard}")
    base = rss_kib(pid)
    socks: list[socket.socket] = []
    greeted = 0
    try:
        for i in range(count):
            if time.monotonic() > deadline:
                break
            s = socket.socket()
            s.bind((source_address(i, per_ip), 0))
            s.settimeout(10)
            try:
                s.connect(("127.0.0.1", d.port))
            except OSError as exc:
                s.close()
                t.record(False, f"connect {i}: {exc}")
                continue
            socks.append(s)
        pending = {s.fileno(): s for s in socks}
        banners: dict[int, bytes] = {}
        poller = select.poll()
        for fd in pending:
            poller.register(fd, select.POLLIN)
        end = max(deadline, time.monotonic() + 30)
        while pending and time.monotonic() < end:
            for fd, _ in poller.poll(1000):
                s = pending.pop(fd, None)
                poller.unregister(fd)
                if s is not None:
                    try:
                        banners[fd] = s.recv(200)
                    except OSError:
                        banners[fd] = b""
        greeted = sum(1 for b in banners.values() if b.startswith(b"220 "))
        others = sorted({b[:40] for b in banners.values() if not b.startswith(b"220")})
        t.record(greeted == count, f"{greeted}/{count} greeted with 220; others: {others}")
        peak = rss_kib(pid)
        t.numbers["sessions"] = greeted
        t.numbers["pony-rss-base-kib"] = base
        t.numbers["pony-rss-kib"] = peak
        t.numbers["rss-per-session-kib"] = round((peak - base) / max(greeted, 1), 2)
        stats = d.ctl("show", "stats").stdout
        m = re.search(r"^smtp.session.current=(\d+)$", stats, re.M)
        cur = int(m.group(1)) if m else -1
        t.numbers["pony-current"] = cur
        t.record(cur >= greeted, f"pony counts {cur} sessions, {greeted} greeted")
    finally:
        for s in socks:
            s.close()
    return t


def _pending(s: socket.socket) -> bytes:
    """What is left to read on a socket whose peer is gone (no wait)."""
    out = b""
    s.setblocking(False)
    try:
        while chunk := s.recv(1000):
            out += chunk
    except OSError:
        pass
    return out


def check_slowloris(d: Daemon, clients: int, timeout: float, deadline: float) -> Tally:
    """Clients trickling one byte per interval are cut off after about
    ``timeout`` seconds (RFC 5321 4.5.3.2.7) with 421 4.4.2, though every
    byte arrives well within the timeout."""
    t = Tally(f"slowloris: {clients} clients, 1 byte/{timeout / 3:.1f}s")
    socks = []
    for i in range(clients):
        s = socket.socket()
        s.bind((source_address(i, 40), 0))
        s.connect(("127.0.0.1", d.port))
        s.settimeout(10)
        s.recv(200)
        socks.append(s)
    text = b"EHLO slow.example.org\r\n"
    start = time.monotonic()
    closed_at: dict[int, float] = {}
    got: dict[int, bytes] = {i: b"" for i in range(clients)}
    step = timeout / 3
    k = 0
    limit = min(deadline, start + timeout * 4 + 10)
    while len(closed_at) < clients and time.monotonic() < limit:
        for i, s in enumerate(socks):
            if i in closed_at:
                continue
            try:
                s.send(text[k % (len(text) - 2): k % (len(text) - 2) + 1])
            except OSError:
                # the server closed while our byte was on its way (its close
                # then resets): what it sent before is still ours to read
                got[i] += _pending(s)
                closed_at[i] = time.monotonic() - start
                continue
            r, _, _ = select.select([s], [], [], 0)
            if r:
                data = s.recv(1000)
                got[i] += data
                if not data or b"421" in got[i]:
                    closed_at[i] = time.monotonic() - start
        k += 1
        time.sleep(step)
    for i, s in enumerate(socks):
        ok = i in closed_at and b"421 4.4.2" in got[i] and closed_at[i] < timeout * 2 + 2
        t.record(ok, f"client {i}: closed_at={closed_at.get(i)} got={got[i]!r}")
        s.close()
    if closed_at:
        t.numbers["max-seconds-to-cut"] = round(max(closed_at.values()), 2)
    return t


def check_per_ip_cap(d: Daemon, cap: int, ip: str = "127.0.0.1") -> Tally:
    t = Tally(f"limits: {cap} sessions per IP")
    socks = []
    try:
        for _ in range(cap):
            s = socket.socket()
            s.bind((ip, 0))
            s.connect(("127.0.0.1", d.port))
            s.settimeout(10)
            socks.append(s)
        banners = [s.recv(200) for s in socks]
        t.record(all(b.startswith(b"220 ") for b in banners),
                 f"first {cap} not all greeted: {set(b[:30] for b in banners)}")
        extra = socket.socket()
        extra.bind((ip, 0))
        extra.connect(("127.0.0.1", d.port))
        out = recv_until_closed(extra, 10)
        extra.close()
        t.record(out.startswith(b"421 4.7.0"), f"session {cap + 1} got {out!r}")
        other = socket.create_connection(("127.0.0.1", d.port), timeout=10,
                                         source_address=("127.0.0.99", 0))
        t.record(other.recv(200).startswith(b"220 "), "another address refused")
        other.close()
        socks.pop().close()

        def again() -> bool:
            with socket.create_connection(("127.0.0.1", d.port), timeout=10,
                                          source_address=(ip, 0)) as s:
                return s.recv(200).startswith(b"220 ")

        t.record(bool(wait_for(again, 10)), "no room after a session closed")
    finally:
        for s in socks:
            s.close()
    return t


def check_caps(d: Daemon, max_rcpt: int, max_mails: int) -> Tally:
    """Recipient, message, error and command caps answered with their codes."""
    t = Tally("limits: rcpt/mail/error/command caps")
    rcpts = b"".join(b"RCPT TO:<r%d@localhost>\r\n" % i for i in range(max_rcpt + 1))
    out = raw_session(d.port, [b"EHLO x\r\nMAIL FROM:<a@example.org>\r\n" + rcpts + b"QUIT\r\n"])
    t.record(out.count(b"250 2.1.5") == max_rcpt and b"452 4.5.3" in out,
             f"max-rcpt: {out[-300:]!r}")
    mails = b"".join(b"MAIL FROM:<a@example.org>\r\nRSET\r\n" for _ in range(max_mails + 1))
    out = raw_session(d.port, [b"EHLO x\r\n" + mails + b"QUIT\r\n"])
    t.record(out.count(b"250 2.1.0") == max_mails and b"452 4.7.0" in out,
             f"max-mails: {out[-300:]!r}")
    out = raw_session(d.port, [b"EHLO x\r\n" + b"BOGUS\r\n" * 30])
    t.record(out.count(b"500 5.5.1") == 19 and out.rstrip().endswith(b"Too many errors")
             and b"421 4.7.0" in out, f"max-errors: {out[-300:]!r}")
    out = raw_session(d.port, [b"EHLO x\r\n" + b"NOOP\r\n" * 10050], timeout=30)
    t.record(b"421 4.7.0" in out and b"Too many commands" in out
             and out.count(b"250 2.0.0 Ok") < 10000, f"max-commands: {out[-200:]!r}")
    return t


def check_big_message(d: Daemon, size: int, limit: int) -> Tally:
    """A ``size``-byte message over max-message-size ``limit`` is refused with
    552 5.3.4 after its end, and pony's RSS does not grow with it."""
    t = Tally(f"limits: {size // 2**20} MiB over max-message-size")
    pid = pony_pid(d)
    base = rss_kib(pid)
    peak = base
    line = b"x" * 996 + b"\r\n"
    with socket.create_connection(("127.0.0.1", d.port), timeout=60) as s:
        f = s.makefile("rb")
        read_reply(f)
        for cmd in (b"EHLO x", b"MAIL FROM:<a@example.org>", b"RCPT TO:<big@localhost>",
                    b"DATA"):
            s.sendall(cmd + b"\r\n")
            code, _ = read_reply(f)
        t.record(code == 354, f"DATA got {code}")
        block = b"Subject: big\r\n\r\n" + line * 1024
        sent = 0
        while sent < size:
            s.sendall(block)
            sent += len(block)
            block = line * 1024
            if sent % (8 * 2**20) < len(block):
                peak = max(peak, rss_kib(pid))
        s.sendall(b".\r\n")
        code, text = read_reply(f)
        peak = max(peak, rss_kib(pid))
    t.record(code == 552 and "5.3.4" in text, f"end of data got {code} {text}")
    t.numbers["pony-rss-growth-kib"] = peak - base
    t.record(peak - base < 32 * 1024, f"pony RSS grew {peak - base} KiB for {size} bytes")
    return t


# ----------------------------------------------------------- disk faults


def can_mount() -> bool:
    return os.geteuid() == 0 and Path("/proc/self/mountinfo").exists()


def mount_tmpfs(where: Path, size: str) -> None:
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs",
                    str(where)], check=True, capture_output=True, timeout=30)


def umount(where: Path) -> None:
    subprocess.run(["umount", "-l", str(where)], capture_output=True, timeout=30)


def send_one(port: int, rcpt: str, body: bytes) -> tuple[int, str]:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        f = s.makefile("rb")
        read_reply(f)
        code = 0
        text = ""
        for cmd in (b"EHLO x", b"MAIL FROM:<a@example.org>", b"RCPT TO:<" + rcpt.encode() + b">",
                    b"DATA"):
            s.sendall(cmd + b"\r\n")
            code, text = read_reply(f)
            if code >= 400:
                return code, text
        s.sendall(body + b"\r\n.\r\n")
        code, text = read_reply(f)
        s.sendall(b"QUIT\r\n")
        return code, text


def check_disk_faults(d: Daemon, spool: Path, maildir: Path) -> Tally:
    """The spool (a small tmpfs) fills up, then turns read-only; the daemon
    answers 4xx, loses nothing it acknowledged, and recovers."""
    t = Tally("disk: full and read-only spool")
    body = b"Subject: disk\r\n\r\n" + (b"y" * 70 + b"\r\n") * 200
    acked = 0
    for i in range(3):
        code, text = send_one(d.port, f"disk{i}@localhost", body)
        t.record(code == 250, f"before fill: {code} {text}")
        acked += code == 250
    # wait for the deliveries so the spool holds only the filler afterwards
    wait_for(lambda: maildir_count(maildir) >= acked, 30)
    filler = spool / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    try:
        os.truncate(filler, max(os.path.getsize(filler) - 8192, 0))
    except OSError:
        pass
    big = b"Subject: full\r\n\r\n" + (b"z" * 70 + b"\r\n") * 3000
    code, text = send_one(d.port, "full@localhost", big)
    t.record(400 <= code < 500, f"full spool answered {code} {text}")
    t.numbers["full-spool-code"] = code
    filler.unlink()
    code, text = send_one(d.port, "after-full@localhost", body)
    t.record(code == 250, f"after freeing space: {code} {text}")
    acked += code == 250
    # no spool file open for writing, or the remount is refused: pony gives
    # back the files it asked for ahead once no session took one for a while
    wait_for(lambda: os.listdir(spool / "incoming") == [], limits.SPOOL_FILES_IDLE + 10)
    subprocess.run(["mount", "-o", "remount,ro", str(spool)], check=True, capture_output=True,
                   timeout=30)
    try:
        code, text = send_one(d.port, "ro@localhost", body)
        t.record(400 <= code < 500, f"read-only spool answered {code} {text}")
        t.numbers["ro-spool-code"] = code
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(spool)], check=True,
                       capture_output=True, timeout=30)
    ok = False
    for _ in range(20):  # the queue may need a moment to see the spool writable again
        code, text = send_one(d.port, "after-ro@localhost", body)
        if code == 250:
            ok = True
            break
        time.sleep(0.5)
    t.record(ok, f"after remount rw: {code} {text}")
    acked += ok
    try:
        wait_for(lambda: maildir_count(maildir) >= acked, 30)
    except TimeoutError:
        pass
    delivered = maildir_count(maildir)
    t.numbers["acked"] = acked
    t.numbers["delivered"] = delivered
    t.record(delivered == acked, f"acknowledged {acked}, delivered {delivered}")
    t.record(not list(maildir.glob("full/new/*")) and not list(maildir.glob("ro/new/*")),
             "a refused message was delivered")
    return t
