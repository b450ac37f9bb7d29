"""The IPC messages' codecs (ipc/messages.py): envelopes, deliveries and
records travel typed and are checked as they are decoded, SMTP replies
travel as replies. The envelope codec itself is tested in
queue/test_envelope.py."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from mailrider.ipc import messages as m
from mailrider.queue import envelope as envmod
from mailrider.queue.envelope import Delivery, Envelope
from mailrider.smtp.reply import Reply

#: a relayed bounce as an earlier version wrote it (queue/spool_v1/)
RELAY = Path(__file__).parent.parent / "queue" / "spool_v1" / "1f0c2a7d00000001"


def _new() -> Envelope:
    d = Delivery(dispatcher="local", rcpt="a@x.example", dest="a@x.example",
                 method="mbox", user="a", uid=1000, gid=1000, home="/home/a")
    return Envelope(evpid="0000abcd00000001", delivery=d, sender="b@y.example", ctime=5,
                    ttl=60)


def _wire(msg: object) -> object:
    return m.decode(json.loads(json.dumps(m.encode(msg))))


def test_ipc_messages_carry_typed_envelopes_and_records() -> None:
    env = _new()
    other = dataclasses.replace(env, evpid="0000abcd00000002")
    assert _wire(m.DeliverBatch(envelopes=[env, other])) == m.DeliverBatch(envelopes=[env, other])
    res = m.DeliveryResults(results=[m.DeliveryResult(
        evpid=env.evpid, status="ok", text="250 2.0.0 ok", relay="mx [192.0.2.1]",
        dsn_relayed=True)])
    assert _wire(res) == res
    ins = m.SchedInsert(envelopes=[m.SchedEntry.of(envmod.parse(RELAY.read_bytes()))])
    assert _wire(ins) == ins and ins.envelopes[0].route == "out:example.com"
    rcpt = m.RcptResult(accepted=True, deliveries=[env.delivery])
    assert _wire(rcpt) == rcpt
    assert m.encode(rcpt)["deliveries"][0]["mda-method"] == "mbox"  # the envelope's keys


@pytest.mark.parametrize("payload", [
    {"t": "ForkDelivery", "envelope": {"evpid": "../x"}},
    {"t": "ForkDelivery", "envelope": {"evpid": "0000abcd00000001", "retry": 3}},
    {"t": "DeliverBatch", "envelopes": {"evpid": "0000abcd00000001"}},
    {"t": "SchedInsert", "envelopes": [{"evpid": "../../etc/passwd"}]},
    {"t": "SchedInsert", "envelopes": [{"evpid": "0000abcd00000001", "retry": "3"}]},
    {"t": "SchedInsert", "envelopes": [{"evpid": "0000abcd00000001", "extra": 1}]},
    {"t": "DeliveryResults", "results": [{"evpid": "0000abcd00000001", "x": 1}]},
    {"t": "SchedEntry", "evpid": "0000abcd00000001"},  # a record, not a message
])
def test_ipc_refuses_envelopes_the_codec_refuses(payload: dict[str, object]) -> None:
    with pytest.raises((ValueError, TypeError)):
        m.decode(dict(payload))


def test_a_reply_travels_typed() -> None:
    r = Reply(550, "5.7.1", "Delivery not authorized", ("second line",))
    assert m.REPLY.decode(json.loads(json.dumps(m.REPLY.encode(r)))) == r
    for bad in ([250, "5.7.1", "x", []], [550, "5.7.1", "x"], ["550", "", "x", []],
                [550, "", "x", [1]]):
        with pytest.raises(ValueError):
            m.REPLY.decode(bad)


def test_refusals_travel_as_typed_replies() -> None:
    from mailrider.errors import PermFail, TempFail

    refused = m.RcptResult(accepted=False, reply=Reply(550, "5.1.1", "Invalid recipient"))
    assert _wire(refused) == refused
    assert m.encode(refused)["reply"] == [550, "5.1.1", "Invalid recipient", []]
    assert _wire(m.AuthResult("error")) == m.AuthResult("error", None)
    for bad in ("550 5.1.1 text", [550, "4.1.1", "status of another class", []]):
        with pytest.raises(ValueError):
            m.decode({"t": "RcptResult", "accepted": False, "reply": bad})
    default = Reply(451, "4.3.0", "Temporary failure")
    assert m.reply_of(PermFail("No such user", 550, "5.1.1"), default) == Reply(
        550, "5.1.1", "No such user")
    assert m.reply_of(TempFail("x", 451, "5.0.0"), default) is default  # no such reply
    assert m.reply_of(TempFail("x", 250, "2.0.0"), default) is default  # not a failure


@pytest.mark.parametrize("result", [
    {"evpid": "0000abcd00000001", "status": "delivered"},
    {"evpid": "0000abcd00000001", "status": "ok", "text": 550},
    {"evpid": "0000abcd00000001", "status": "ok", "dsn_relayed": "yes"},
    {"evpid": "../../x", "status": "ok"},
])
def test_delivery_results_are_checked_as_they_arrive(result: dict[str, object]) -> None:
    # the queue removes, bounces or rewrites the envelope on a result
    with pytest.raises(ValueError):
        m.decode({"t": "DeliveryResults", "results": [result]})
    with pytest.raises(ValueError):
        m.decode({"t": "DeliveryResult", **result})
