"""Restart recovery: what was committed survives kill -9, what was not is cleaned up.

Also the two outcomes of a failed delivery: a temporary failure is retried
(and its retry count survives a restart), a permanent one is bounced to the
sender, except when the sender is null.
"""

from __future__ import annotations

import email
import email.policy
import os
import re
import smtplib
import socket
import time
from pathlib import Path

import pytest
from harness import Daemon, queue_user, wait_for
from mailrider.queue import envelope as envmod
from test_e2e_crash import queue_lines, restart, spool_leftovers, wait_drained

CONFIG = """listen on 127.0.0.1 port {port}
table all {{ "@" = "{user}" }}
action "local" maildir "{mail}/%{{rcpt.user}}" virtual <all>
action "fail" mda "/bin/sh -c 'exit 1'" virtual <all>
action "flaky" mda "{state}/flaky.sh" virtual <all>
match from any for rcpt-to "fail@localhost" action "fail"
match from any for rcpt-to "flaky@localhost" action "flaky"
match from any for local action "local"
"""

# exits 75 (EX_TEMPFAIL) the first time, delivers into the mail folder afterwards
FLAKY = """#!/bin/sh
n=$(/bin/cat "{mail}/flaky.count" 2>/dev/null || echo 0)
n=$((n + 1))
echo "$n" > "{mail}/flaky.count"
if [ "$n" -lt 2 ]; then echo "not yet, attempt $n" >&2; exit 75; fi
/bin/cat > "{mail}/flaky.delivered"
"""

_FIELD_SPLIT = re.compile(r"(?<!\\)\|")


@pytest.fixture
def daemon() -> Daemon:
    d = Daemon(CONFIG)
    script = d.state / "flaky.sh"
    script.write_text(FLAKY.format(mail=d.mail))
    os.chmod(script, 0o755)
    d.start()
    wait_for(lambda: "queue recovered envelopes=" in d.log())
    yield d
    d.cleanup()


def send(d: Daemon, sender: str, rcpt: str, subject: str, body: str = "body\r\n") -> str:
    """One message; returns the msgid from the 250 reply."""
    with smtplib.SMTP("127.0.0.1", d.port, timeout=10) as c:
        c.ehlo("client.test")
        c.mail(sender)
        code, text = c.rcpt(rcpt)
        assert code == 250, (code, text)
        code, text = c.data(f"Subject: {subject}\r\n\r\n{body}".encode())
    assert code == 250, (code, text)
    m = re.match(rb"2\.0\.0 ([0-9a-f]{8}) ", text)
    assert m, text
    return m.group(1).decode()


def fields(line: str) -> list[str]:
    return _FIELD_SPLIT.split(line)


def subjects(d: Daemon, user: str) -> list[str]:
    out = []
    for data in d.maildir(user):
        m = re.search(rb"^Subject: (.*)$", data, re.M)
        out.append(m.group(1).decode() if m else "")
    return out


def test_kill9_in_the_middle_of_data_leaves_nothing(daemon: Daemon) -> None:
    d = daemon
    marker = b"half-sent-marker-7c1e"
    with socket.create_connection(("127.0.0.1", d.port), timeout=10) as s:
        f = s.makefile("rb")
        assert f.readline().startswith(b"220")
        s.sendall(b"HELO client.test\r\n")
        assert f.readline().startswith(b"250")
        s.sendall(b"MAIL FROM:<a@example.org>\r\n")
        assert f.readline().startswith(b"250")
        s.sendall(b"RCPT TO:<half@localhost>\r\n")
        assert f.readline().startswith(b"250")
        s.sendall(b"DATA\r\n")
        assert f.readline().startswith(b"354")
        s.sendall(b"Subject: half\r\n\r\n" + (marker + b" line\r\n") * 2000)
        incoming = d.state / "spool" / "incoming"
        # the body has reached the spool's file being received: kill mid-message
        wait_for(lambda: any(marker in (p / "message").read_bytes()
                             for p in incoming.iterdir()))
        d.kill9()
    restart(d)
    assert "purged-uncommitted count=1" in d.log()
    assert spool_leftovers(d) == []
    assert os.listdir(d.state / "spool" / "purge") == []
    assert queue_lines(d) == []
    # something later still gets through; the half message never does
    send(d, "a@example.org", "half@localhost", "after")
    wait_for(lambda: subjects(d, "half"))
    time.sleep(0.5)
    assert subjects(d, "half") == ["after"]


def test_half_committed_message_in_incoming_is_purged() -> None:
    """A crash between staging (incoming/) and the rename into queue/: no 250 was sent."""
    d = Daemon(CONFIG)
    try:
        d.start()
        wait_for(lambda: "queue recovered envelopes=" in d.log())
        d.stop()
        spool = d.state / "spool"
        msgid = envmod.new_msgid()
        idir = spool / "incoming" / msgid
        idir.mkdir(mode=0o700)
        (idir / "message").write_bytes(b"Subject: staged\n\nnever acknowledged\n")
        env = {"version": envmod.VERSION, "evpid": envmod.new_evpid(msgid), "type": "mda",
               "dispatcher": "local", "sender": "a@example.org", "rcpt": "staged@localhost",
               "dest": "staged@localhost", "ctime": str(int(time.time())), "retry": "0",
               "ttl": "3600"}
        (idir / env["evpid"]).write_bytes(envmod.serialise(envmod.from_fields(env)))
        # a spool written before bodies moved into incoming/ (no longer written)
        (spool / "temporary" / envmod.new_msgid()).write_bytes(b"Subject: t\n\npartial")
        qu = queue_user()
        for p in (idir, *idir.iterdir(), *(spool / "temporary").iterdir()):
            os.chown(p, qu.pw_uid, qu.pw_gid)
        restart(d)
        assert "purged-uncommitted count=2" in d.log()
        assert spool_leftovers(d) == []
        assert os.listdir(spool / "purge") == []
        assert queue_lines(d) == []
        send(d, "a@example.org", "staged@localhost", "real")
        wait_for(lambda: subjects(d, "staged"))
        time.sleep(0.5)
        assert subjects(d, "staged") == ["real"]
    finally:
        d.cleanup()


def test_committed_undelivered_mail_survives_kill9(daemon: Daemon) -> None:
    d = daemon
    n = 6
    assert d.ctl("pause", "mda").stdout.strip() == "command succeeded"
    assert d.ctl("show", "status").stdout.splitlines()[0] == "MDA paused"
    ids = [send(d, "keeper@example.org", "keep@localhost", f"keep {i}") for i in range(n)]
    lines = queue_lines(d)
    assert len(lines) == n, lines
    for line in lines:
        f = fields(line)
        assert len(f) == 14, line
        evpid, family, typ, _flags, sender, rcpt, dest, ctime, expire, _last, retry = f[:11]
        assert re.fullmatch(r"[0-9a-f]{16}", evpid) and evpid[:8] in ids
        assert (family, typ, sender, rcpt, dest, retry) == (
            "inet4", "mda", "keeper@example.org", "keep@localhost", "keep@localhost", "0")
        assert int(expire) > int(ctime) > time.time() - 60
    assert sorted(fields(x)[0][:8] for x in lines) == sorted(ids)
    time.sleep(0.3)
    assert d.maildir("keep") == []
    d.kill9()
    # mailriderctl reads the spool itself while the daemon is down
    offline = queue_lines(d)
    assert sorted(fields(x)[0] for x in offline) == sorted(fields(x)[0] for x in lines)
    assert all(fields(x)[11] == "offline" for x in offline)
    restart(d)
    assert f"queue recovered envelopes={n}" in d.log()
    # the pause was not persisted: delivery resumes by itself
    wait_drained(d, 30)
    wait_for(lambda: len(d.maildir("keep")) >= n)
    assert sorted(subjects(d, "keep")) == sorted(f"keep {i}" for i in range(n))
    for msgid in ids:
        assert re.search(rf"delivery evpid={msgid}[0-9a-f]{{8}} .*result=\"?Ok\b", d.log())


def test_tempfail_is_retried_and_survives_restart(daemon: Daemon) -> None:
    d = daemon
    msgid = send(d, "someone@localhost", "flaky@localhost", "flaky one", "flaky body\r\n")
    count = d.mail / "flaky.count"
    wait_for(lambda: count.exists() and count.read_text().strip() == "1")

    def retried() -> list[str] | None:
        lines = queue_lines(d)
        if len(lines) == 1 and fields(lines[0])[10] == "1":
            return fields(lines[0])
        return None

    f = wait_for(retried)
    assert isinstance(f, list)
    assert f[0].startswith(msgid)
    assert int(f[9]) >= int(f[7])  # last try is after creation
    assert "4.3.0" in f[13] and "not yet, attempt 1" in f[13], f[13]
    assert re.search(rf"delivery evpid={msgid}[0-9a-f]{{8}} .*result=\"?TempFail\"?", d.log())
    assert not (d.mail / "flaky.delivered").exists()
    # the retry count is on disk: a restart keeps it
    d.kill9()
    restart(d)
    lines = queue_lines(d)
    assert len(lines) == 1 and fields(lines[0])[10] == "1", lines
    assert count.read_text().strip() == "1"
    # the scheduler's next try is ctime + 10 s x n^2 away; force it now (again
    # if the first request came before the queue had handed the envelope over)
    def forced() -> bool:
        if (d.mail / "flaky.delivered").exists():
            return True
        d.ctl("schedule", "all")
        return False

    wait_for(forced, 8, interval=0.5)
    wait_drained(d, 15)
    assert count.read_text().strip() == "2"
    delivered = (d.mail / "flaky.delivered").read_bytes()
    assert b"Subject: flaky one\n" in delivered and delivered.endswith(b"\nflaky body\n")
    assert re.search(rf"delivery evpid={msgid}[0-9a-f]{{8}} .*result=\"?Ok\b", d.log())


def test_permanent_failure_bounces_to_a_local_sender(daemon: Daemon) -> None:
    d = daemon
    msgid = send(d, "someone@localhost", "fail@localhost", "doomed 42", "doomed body\r\n")
    wait_for(lambda: d.maildir("someone"), 20)
    wait_drained(d, 20)
    [raw] = d.maildir("someone")
    assert raw.startswith(b"Return-Path: <>\n")
    assert b"\nContent-Type: multipart/report; report-type=delivery-status" in raw
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    assert msg["Subject"] == "Delivery status notification: failed"
    assert msg["To"] == "someone@localhost"
    assert not msg.defects
    parts = msg.get_payload()
    assert isinstance(parts, list)
    assert [p.get_content_type() for p in parts] == [
        "text/plain", "message/delivery-status", "text/rfc822-headers"]
    assert "fail@localhost" in parts[0].get_content()
    # the delivery-status part: per-message fields, then one per-recipient block
    blocks = parts[1].get_payload()
    assert isinstance(blocks, list) and len(blocks) == 2
    assert blocks[0]["Reporting-MTA"].startswith("dns; ")
    assert blocks[1]["Final-Recipient"] == "rfc822; fail@localhost"
    assert blocks[1]["Action"] == "failed"
    assert re.fullmatch(r"5\.\d+\.\d+", blocks[1]["Status"])
    headers = parts[2].get_payload()
    assert isinstance(headers, str)
    assert "Subject: doomed 42" in headers and "doomed body" not in headers
    assert re.search(rf"delivery evpid={msgid}[0-9a-f]{{8}} .*result=\"?PermFail\"?", d.log())
    assert f"bounce queued evpid={msgid}" in d.log()


def test_permanent_failure_of_a_null_sender_message_is_not_bounced(daemon: Daemon) -> None:
    d = daemon
    msgid = send(d, "", "fail@localhost", "null sender")
    wait_for(lambda: re.search(rf"bounce null-sender-dropped evpid={msgid}", d.log()), 20)
    wait_drained(d, 20)
    assert "bounce queued" not in d.log()
    assert [p.name for p in Path(d.mail).iterdir() if p.is_dir()] == []
