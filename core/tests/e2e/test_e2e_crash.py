"""Crash test: nothing that got ``250`` is ever lost.

Several sender threads stream messages into a real daemon; at a random
moment the whole daemon (parent and every child) gets ``kill -9``. It is
restarted on the same state folder and port, the spool drains, and every
Maildir is scanned:

- every message acknowledged with 250 is delivered to each recipient that
  was accepted, at least once (duplicates are allowed: a crash between the
  Maildir link and the envelope removal delivers again, and are counted);
- every delivered file parses and its body checksum matches (nothing
  corrupted, nothing truncated), and it sits in a recipient's Maildir;
- the spool keeps no uncommitted leftovers.

The round logic is shared with tools/torture/crash.py, which runs many more
rounds and prints a table.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import smtplib
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from harness import Daemon, wait_for

CRASH_CONFIG = """listen on 127.0.0.1 port {port}
table all {{ "@" = "{user}" }}
action "local" maildir "{mail}/%{{rcpt.user}}" virtual <all>
match from any for local action "local"
"""

USERS = ("ann", "bob", "cy", "dee")
_SUBJECT = re.compile(rb"^Subject: crash (\S+)$", re.M)


def make_message(msgid: str, rng: random.Random, to: list[str]) -> bytes:
    """A message whose body starts with the sha256 of the rest of the body.

    The rest has lines starting with dots (smtplib stuffs them, the daemon
    must unstuff exactly once) and, sometimes, enough bulk to keep DATA busy
    while the daemon is killed.
    """
    lines = [f"id: {msgid}", ".leading dot", "..two dots", ".", "middle"]
    bulk = rng.choice((0, 0, 0, 20, 200, 3000))
    for i in range(bulk):
        lines.append(("." if i % 7 == 0 else "") + f"{msgid} line {i} " + "x" * (i % 61))
    lines.append("last line")
    rest = "".join(line + "\n" for line in lines)
    digest = hashlib.sha256(rest.encode()).hexdigest()
    head = (f"From: <sender@example.org>\nTo: {', '.join(to)}\nSubject: crash {msgid}\n"
            f"Message-ID: <{msgid}@crash.test>\n\nchecksum: {digest}\n")
    return (head + rest).replace("\n", "\r\n").encode()


def check_delivered(data: bytes) -> str:
    """The id of a delivered message; raises ValueError if it is damaged."""
    head, sep, body = data.partition(b"\n\n")
    if not sep:
        raise ValueError("no end of header")
    m = _SUBJECT.search(head)
    if not m:
        raise ValueError("no Subject")
    msgid = m.group(1).decode()
    first, nl, rest = body.partition(b"\n")
    if not nl or not first.startswith(b"checksum: "):
        raise ValueError(f"{msgid}: no checksum line")
    if hashlib.sha256(rest).hexdigest().encode() != first[len(b"checksum: "):]:
        raise ValueError(f"{msgid}: checksum mismatch (corrupt or truncated)")
    if not rest.startswith(f"id: {msgid}\n".encode()) or not rest.endswith(b"\nlast line\n"):
        raise ValueError(f"{msgid}: wrong id or end")
    if b"\r" in data:
        raise ValueError(f"{msgid}: CR on disk")
    return msgid


@dataclass
class Sent:
    """Which recipients of which message ids got 250."""
    acked: dict[str, set[str]] = field(default_factory=dict)
    attempts: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def sender(port: int, prefix: str, seed: int, stop: threading.Event, sent: Sent,
           max_messages: int = 2000, max_seconds: float = 30.0) -> None:
    """Send until told to stop; a failure or disconnect means not acknowledged."""
    rng = random.Random(seed)
    deadline = time.monotonic() + max_seconds
    n = 0
    while not stop.is_set() and n < max_messages and time.monotonic() < deadline:
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as c:
                c.ehlo("crash.test")
                for _ in range(rng.randint(1, 5)):
                    if stop.is_set() or n >= max_messages:
                        break
                    n += 1
                    msgid = f"{prefix}-{n}-{rng.getrandbits(32):08x}"
                    rcpts = rng.sample(USERS, rng.choice((1, 1, 1, 2)))
                    to = [f"{u}@localhost" for u in rcpts]
                    msg = make_message(msgid, rng, to)
                    with sent.lock:
                        sent.attempts += 1
                    refused = c.sendmail("sender@example.org", to, msg)
                    # sendmail returned: the final reply was 250
                    ok = {u for u in rcpts if f"{u}@localhost" not in refused}
                    with sent.lock:
                        sent.acked[msgid] = ok
        except (OSError, smtplib.SMTPException):
            time.sleep(0.02)


def restart(d: Daemon) -> None:
    """start() again on the same state folder, and wait until the queue has recovered.

    The listener may answer before the queue process has purged and reloaded
    the spool (they start in parallel): its log line is the sign.
    """
    before = d.log().count("queue recovered envelopes=")
    d.start()
    wait_for(lambda: d.log().count("queue recovered envelopes=") > before, 30)


def queue_lines(d: Daemon) -> list[str]:
    return [x for x in d.ctl("show", "queue").stdout.splitlines() if x.strip()]


def spool_leftovers(d: Daemon) -> list[str]:
    spool = d.state / "spool"
    return [f"{sub}/{n}" for sub in ("temporary", "incoming")
            for n in os.listdir(spool / sub)]


def wait_drained(d: Daemon, timeout: float = 60.0) -> None:
    try:
        wait_for(lambda: not queue_lines(d), timeout, interval=0.2)
    except TimeoutError:
        raise AssertionError(f"spool not drained: {queue_lines(d)[:5]}\n{d.log()[-3000:]}")


@dataclass
class Scan:
    copies: Counter[tuple[str, str]]  # (user, msgid) -> files
    corrupt: list[str]
    tmp_leftovers: int


def scan_maildirs(mail: Path) -> Scan:
    copies: Counter[tuple[str, str]] = Counter()
    corrupt: list[str] = []
    tmp = 0
    for user_dir in sorted(mail.iterdir()):
        if not user_dir.is_dir():
            continue
        for sub in ("new", "cur"):
            d = user_dir / sub
            if not d.is_dir():
                continue
            for p in d.iterdir():
                try:
                    copies[(user_dir.name, check_delivered(p.read_bytes()))] += 1
                except ValueError as exc:
                    corrupt.append(f"{p}: {exc}")
        if (user_dir / "tmp").is_dir():
            tmp += len(os.listdir(user_dir / "tmp"))
    return Scan(copies, corrupt, tmp)


@dataclass
class RoundResult:
    attempts: int  # messages a client started to send
    unanswered: int  # messages started that got no 250 (in flight at the kill, or refused)
    acked: int  # (message, recipient) pairs acknowledged
    delivered: int  # distinct acknowledged pairs found
    lost: list[str]
    duplicates: int  # extra copies of acknowledged pairs
    corrupt: list[str]
    unacked_delivered: int  # pairs delivered though the client saw no 250
    misdelivered: list[str]
    kill_after: float


#: the daemon under test relays everything to a second one (``sink``), which
#: delivers with CRASH_CONFIG: the kills land in relaying too
RELAY_CONFIG = """listen on 127.0.0.1 port {port}
action "out" relay host smtp://127.0.0.1:SINKPORT
match from any for any action "out"
"""


def crash_round(d: Daemon, rnd: int, rng: random.Random, *, threads: int = 8,
                delay: tuple[float, float] = (0.3, 2.0), sink: Daemon | None = None
                ) -> RoundResult:
    """One round on a running daemon: stream, kill -9, restart, drain, check
    (in ``sink``'s Maildirs when ``d`` relays to it, RELAY_CONFIG)."""
    stop = threading.Event()
    sent = Sent()
    workers = [threading.Thread(target=sender, daemon=True,
                                args=(d.port, f"r{rnd}t{i}", rng.getrandbits(64), stop, sent))
               for i in range(threads)]
    for w in workers:
        w.start()
    kill_after = rng.uniform(*delay)
    time.sleep(kill_after)
    d.kill9()
    stop.set()
    for w in workers:
        w.join(20)
        assert not w.is_alive(), "sender thread stuck"
    restart(d)
    assert not spool_leftovers(d), spool_leftovers(d)
    wait_drained(d)
    if sink is not None:
        wait_drained(sink)
    scan = scan_maildirs((sink or d).mail)
    prefix = f"r{rnd}t"
    with sent.lock:
        acked = {(u, mid) for mid, users in sent.acked.items() for u in users}
        expected_users = {mid: users for mid, users in sent.acked.items()}
        attempts = sent.attempts
        unanswered = sent.attempts - len(sent.acked)
    mine = {k: v for k, v in scan.copies.items() if k[1].startswith(prefix)}
    lost = sorted(f"{u}:{mid}" for u, mid in acked if (u, mid) not in mine)
    dups = sum(n - 1 for k, n in mine.items() if k in acked)
    misdelivered = sorted(f"{u}:{mid}" for u, mid in mine
                          if mid in expected_users and u not in expected_users[mid])
    return RoundResult(attempts=attempts, unanswered=unanswered, acked=len(acked),
                       delivered=len(acked) - len(lost), lost=lost, duplicates=dups,
                       corrupt=scan.corrupt,
                       unacked_delivered=sum(1 for k in mine if k not in acked),
                       misdelivered=misdelivered, kill_after=kill_after)


def test_kill9_during_a_stream_loses_nothing_acknowledged() -> None:
    rng = random.Random()
    seed = rng.getrandbits(32)
    rng.seed(seed)
    d = Daemon(CRASH_CONFIG).start()
    results: list[RoundResult] = []
    try:
        # 3 rounds at least, a 4th only if the machine is fast enough
        budget = time.monotonic() + 25
        for rnd in range(4):
            if rnd >= 3 and time.monotonic() > budget:
                break
            r = crash_round(d, rnd, rng)
            results.append(r)
            ctx = f"seed={seed} round={rnd} kill_after={r.kill_after:.2f}s"
            assert not r.lost, f"{ctx}: acknowledged but lost: {r.lost[:10]}"
            assert not r.corrupt, f"{ctx}: corrupt: {r.corrupt[:10]}"
            assert not r.misdelivered, f"{ctx}: misdelivered: {r.misdelivered[:10]}"
        # the test must have exercised something: mail was acknowledged, and
        # kills landed while transactions were in flight
        assert sum(r.acked for r in results) > 0
        assert sum(r.unanswered for r in results) > 0
    finally:
        total = (sum(r.acked for r in results), sum(r.duplicates for r in results))
        print(f"crash rounds={len(results)} acknowledged={total[0]} duplicates={total[1]}")
        d.cleanup()
