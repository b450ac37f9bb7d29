"""End to end: several relayed messages per outgoing session
(docs/performance.md, "Relaying").

Messages queued while relaying is paused (``mailriderctl pause mta``) are due
together when it resumes: the queue hands pony the messages of one route in
one batch, and pony sends them over at most ``MTA_BATCH_LANES`` sessions,
one message after the other on each. The sink (smtp_peer.SmtpPeer) records
which connection carried each message. A temporary failure of one recipient
or one message leaves the others delivered and itself queued; ``mta limit``
still bounds the sessions.
"""

from __future__ import annotations

import re
from collections import Counter

from e2e_util import smtp_send
from harness import Daemon, wait_for
from mailrider import limits
from smtp_peer import Behaviour, SmtpPeer

CONFIG = """\
EXTRA
listen on 127.0.0.1 port {port}
action "out" relay host smtp://127.0.0.1:PEERPORT
match from any for any action "out"
"""


def body(i: int) -> bytes:
    return f"From: <a@example.org>\r\nSubject: batch {i}\r\n\r\nmessage {i}\r\n".encode()


def queue_paused(d: Daemon, rcpts: list[list[str]]) -> None:
    """Queue one message per recipient list with relaying paused, then resume."""
    d.ctl("pause", "mta")
    for i, rs in enumerate(rcpts):
        t = smtp_send(d.port, "a@example.org", rs, body(i))
        assert t.data is not None and t.data[0] == 250, t
    d.ctl("resume", "mta")


def results(d: Daemon | str, result: str) -> list[str]:
    log = d if isinstance(d, str) else d.log()
    return re.findall(rf"mta delivery .*to=<([^>]+)> .*result=\"{result}\"", log)


def test_messages_of_one_route_share_sessions() -> None:
    n = 8
    with SmtpPeer() as peer:
        d = Daemon(CONFIG.replace("EXTRA", "").replace("PEERPORT", str(peer.port)))
        try:
            d.start()
            queue_paused(d, [[f"r{i}@far.test"] for i in range(n)])
            wait_for(lambda: len(results(d, "Ok")) == n, 60)
        finally:
            d.cleanup()
    assert sorted(r.rcpts[0] for r in peer.received) == sorted(
        f"RCPT TO:<r{i}@far.test>" for i in range(n))
    per_conn = Counter(r.conn for r in peer.received)
    # one batch: at most MTA_BATCH_LANES sessions, so some carried several
    # messages one after the other (before: one connection per message)
    assert peer.connections <= limits.MTA_BATCH_LANES < n, per_conn
    assert max(per_conn.values()) >= 2, per_conn
    for conn, count in per_conn.items():
        assert sorted(r.nth for r in peer.received if r.conn == conn) == list(
            range(1, count + 1))


def test_a_4xx_on_one_recipient_or_message_loses_no_other() -> None:
    def rcpt(line: str) -> str:
        return "451 4.7.1 Greylisted" if "grey" in line else "250 2.1.5 Ok"

    def data(msg: bytes) -> str:
        return "452 4.3.1 Out of room" if b"Subject: batch 2\r\n" in msg else "250 2.0.0 Ok"

    with SmtpPeer(Behaviour(rcpt=rcpt, data_reply=data)) as peer:
        d = Daemon(CONFIG.replace("EXTRA", "").replace("PEERPORT", str(peer.port)))
        try:
            d.start()
            queue_paused(d, [["a@far.test"], ["grey@far.test"], ["b@far.test"],
                             ["c@far.test", "grey2@far.test"], ["e@far.test"],
                             ["f@far.test"]])
            wait_for(lambda: len(results(d, "Ok")) == 4 and len(set(results(d, "TempFail"))) == 3,
                     60)
            queued = d.ctl("show", "queue").stdout
            log = d.log()
        finally:
            d.cleanup()
    assert sorted(results(log, "Ok")) == ["a@far.test", "c@far.test", "e@far.test", "f@far.test"]
    # (a success on the route retries the deferred ones at once: scheduler._release)
    assert set(results(log, "TempFail")) == {"b@far.test", "grey2@far.test", "grey@far.test"}
    # what failed temporarily waits in the queue for its retry; nothing else does
    for rcpt in ("grey@far.test", "b@far.test", "grey2@far.test"):
        assert f"|{rcpt}|" in queued, queued
    for rcpt in ("a@far.test", "c@far.test", "e@far.test", "f@far.test"):
        assert f"|{rcpt}|" not in queued, queued
    assert re.search(r"to=<b@far\.test> .*stat=\"?452 4\.3\.1 Out of room", log)
    # the failures did not cost the sessions: fewer connections than messages
    assert peer.connections < 6


def test_mta_limits_hold_within_a_batch() -> None:
    n = 7
    extra = "mta limit max-conn-per-domain 1 session-mail-max 2"
    with SmtpPeer() as peer:
        d = Daemon(CONFIG.replace("EXTRA", extra).replace("PEERPORT", str(peer.port)))
        try:
            d.start()
            queue_paused(d, [[f"r{i}@far.test"] for i in range(n)])
            wait_for(lambda: len(results(d, "Ok")) == n, 60)
        finally:
            d.cleanup()
    per_conn = Counter(r.conn for r in peer.received)
    assert peer.open_peak == 1  # max-conn-per-domain 1, whatever the lanes
    assert max(per_conn.values()) == 2, per_conn  # session-mail-max 2
    assert peer.connections == (n + 1) // 2, per_conn
