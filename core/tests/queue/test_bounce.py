"""Delivery status notifications (queue/bounce.py): RFC 3464 parts, NOTIFY rules."""

from __future__ import annotations

import email
import email.policy

from mailrider.queue import bounce
from mailrider.queue import envelope as envmod
from mailrider.queue.envelope import Envelope


def E(fields: dict[str, str]) -> Envelope:
    """An envelope from its keys, through the codec (as the spool reads it)."""
    return envmod.from_fields(fields)


FIELDS = {"evpid": "0123456789abcdef", "type": "mta", "sender": "alice@local.test",
       "rcpt": "bob@remote.test", "dest": "bob@remote.test", "smtpname": "mx.local.test",
       "ctime": "1700000000", "ttl": "345600", "dsn-orcpt": "rfc822;Bob@Remote.test",
       "dsn-envid": "abc", "last-try": "1700000400"}
ENV = E(FIELDS)
HEADERS = b"Received: from x\nSubject: hello\nFrom: alice@local.test\n"
FULL = HEADERS + b"\nbody line\n"


def parse(raw: bytes) -> tuple[email.message.Message, list[email.message.Message]]:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert not msg.defects
    parts = msg.get_payload()
    assert isinstance(parts, list)
    return msg, parts


def test_failed_report_for_two_recipients() -> None:
    other = E(dict(FIELDS, evpid="0123456789abcdee", rcpt="carol@remote.test",
                 dest="carol@remote.test", **{"dsn-orcpt": ""}))
    raw = bounce.build_report([
        bounce.Item(ENV, "550 5.1.1 <bob@remote.test>: User unknown", "mx.remote.test [192.0.2.1]"),
        bounce.Item(other, "552 5.2.2 Mailbox full", "mx.remote.test [192.0.2.1]"),
    ], HEADERS, kind="failed", now=1700001000)
    assert b"\r" not in raw
    msg, parts = parse(raw)
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    assert msg["Subject"] == "Delivery status notification: failed"
    assert msg["From"] == "Mail Delivery System <MAILER-DAEMON@mx.local.test>"
    assert [p.get_content_type() for p in parts] == [
        "text/plain", "message/delivery-status", "text/rfc822-headers"]
    human = parts[0].get_content()
    assert "bob@remote.test: 550 5.1.1 <bob@remote.test>: User unknown" in human
    blocks = parts[1].get_payload()
    assert len(blocks) == 3
    assert blocks[0]["Reporting-MTA"] == "dns; mx.local.test"
    assert blocks[0]["Original-Envelope-Id"] == "abc"
    assert blocks[0]["Arrival-Date"]
    b1, b2 = blocks[1], blocks[2]
    assert b1["Original-Recipient"] == "rfc822; Bob@Remote.test"
    assert b1["Final-Recipient"] == "rfc822; bob@remote.test"
    assert (b1["Action"], b1["Status"]) == ("failed", "5.1.1")
    assert b1["Remote-MTA"] == "dns; mx.remote.test"
    assert b1["Diagnostic-Code"] == "smtp; 550 5.1.1 <bob@remote.test>: User unknown"
    assert b2["Original-Recipient"] is None and b2["Status"] == "5.2.2"
    assert parts[2].get_payload() == HEADERS.decode()


def test_ret_full_attaches_the_message() -> None:
    import tempfile

    with tempfile.TemporaryFile() as fh:
        fh.write(FULL)
        fh.flush()
        raw = bounce.build(E(dict(FIELDS, **{"dsn-ret": "FULL"})), "554 5.0.0 no", fh.fileno())
    _, parts = parse(raw)
    assert parts[2].get_content_type() == "message/rfc822"
    inner = parts[2].get_payload()[0]
    assert inner["Subject"] == "hello" and "body line" in inner.get_content()


def test_delay_warning_says_how_long_it_keeps_trying() -> None:
    raw = bounce.build_report([bounce.Item(ENV, "451 4.7.1 Greylisted")], HEADERS,
                              kind="delayed", now=1700000000 + 4 * 3600)
    msg, parts = parse(raw)
    assert msg["Subject"] == "Delivery status notification: delayed"
    human = parts[0].get_content()
    assert "waiting for 4 hours" in human and "another 3 days 20 hours" in human
    blk = parts[1].get_payload()[1]
    assert (blk["Action"], blk["Status"]) == ("delayed", "4.7.1")
    assert blk["Will-Retry-Until"]


def test_success_kinds() -> None:
    for kind in ("delivered", "relayed"):
        _, parts = parse(bounce.build_report([bounce.Item(ENV, "250 2.0.0 Ok")], HEADERS,
                                             kind=kind))
        blk = parts[1].get_payload()[1]
        assert (blk["Action"], blk["Status"]) == (kind, "2.0.0")


def test_hostile_reply_text_cannot_add_lines() -> None:
    raw = bounce.build_report([bounce.Item(ENV, "550 5.0.0 x\r\nX-Injected: yes")], HEADERS)
    _, parts = parse(raw)
    assert "X-Injected" not in [k for blk in parts[1].get_payload() for k in blk.keys()]


def test_notify_rules() -> None:
    w = bounce.wanted
    assert w(ENV, "failed") and w(ENV, "delayed")
    assert not w(ENV, "delivered") and not w(ENV, "relayed")
    never = E(dict(FIELDS, **{"dsn-notify": "NEVER"}))
    assert not any(w(never, k) for k in bounce.KINDS)
    success = E(dict(FIELDS, **{"dsn-notify": "SUCCESS"}))
    assert w(success, "delivered") and w(success, "relayed") and not w(success, "failed")
    failure = E(dict(FIELDS, **{"dsn-notify": "FAILURE,DELAY"}))
    assert w(failure, "failed") and w(failure, "delayed") and not w(failure, "relayed")
    assert not w(E(dict(FIELDS, sender="")), "failed")
    assert not w(E(dict(FIELDS, flags="bounce")), "failed")
    assert not w(E(dict(FIELDS, type="bounce")), "failed")
