"""The envelope and its one codec (queue/envelope.py): files written by
earlier versions load and are rewritten byte for byte, lka's seal still
verifies after the round trip, the codec refuses what is not an envelope,
and IPC messages carry the same typed envelopes.

The files in spool_v1/ were written by the dictionary-based writer this
module replaced (serialise() of mailrider before the typed envelope), for an
envelope as lka and pony built it: a local delivery after two failed tries
and a "delayed" notice, and a relayed bounce with a key from a newer version.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import pytest
from mailrider.delivery import grant
from mailrider.ipc import messages as m
from mailrider.queue import envelope as envmod
from mailrider.queue.envelope import Delivery, Envelope
from mailrider.queue.spool import Spool

OLD = Path(__file__).parent / "spool_v1"
LOCAL = "1f0c2a7d5e41b9e3"
RELAY = "1f0c2a7d00000001"
#: the grant key the files were sealed with
KEY = bytes(range(32))


def _old(evpid: str) -> bytes:
    return (OLD / evpid).read_bytes()


def test_an_old_local_envelope_loads_typed() -> None:
    env = envmod.parse(_old(LOCAL))
    assert env.evpid == LOCAL and env.msgid == "1f0c2a7d" and env.type == "mda"
    d = env.delivery
    assert (d.dispatcher, d.method, d.user, d.uid, d.gid, d.home) == (
        "local", "maildir", "bob", 1000, 1000, "/home/bob")
    assert (d.rcpt, d.dest, d.local_user, d.subaddress, d.arg) == (
        "Bob+tag@example.org", "bob@example.org", "bob", "tag", "")
    assert (env.ctime, env.retry, env.ttl, env.last_try, env.last_bounce) == (
        1765000000, 2, 345600, 1765000400, 1765000400)
    assert env.dsn_notify == ("DELAY", "FAILURE") and env.notify == {"DELAY", "FAILURE"}
    assert (env.dsn_ret, env.dsn_envid, env.dsn_orcpt) == (
        "HDRS", "QQ314159", "rfc822;Bob+tag@example.org")
    assert env.errorline == "451 4.2.0 Mailbox busy"
    assert env.message_size == 1234 and env.message_sha256 == "ab" * 32
    assert env.sockaddr == "192.0.2.7" and env.hostname == "<unknown>"
    assert env.tag == "" and env.flags == () and env.extra == ()
    assert env.route == "" and not env.is_bounce


def test_an_old_relayed_bounce_keeps_its_unknown_key() -> None:
    env = envmod.parse(_old(RELAY))
    assert env.type == "mta" and env.is_bounce and env.flags == ("bounce",)
    assert env.sender == "" and env.bounce_type == "failed"
    assert env.delivery.relayed and (env.delivery.uid, env.delivery.gid) == (-1, -1)
    assert env.route == "out:example.com"
    assert env.extra == (("x-future-key", "kept as is"),)
    # a change keeps it too: a newer daemon's envelopes survive a downgrade
    later = dataclasses.replace(env, retry=1, errorline="421 4.4.2 Timeout")
    assert b"x-future-key: kept as is\n" in envmod.serialise(later)


@pytest.mark.parametrize("evpid", [LOCAL, RELAY])
def test_old_files_are_rewritten_byte_for_byte(evpid: str) -> None:
    assert envmod.serialise(envmod.parse(_old(evpid))) == _old(evpid)


@pytest.mark.parametrize("evpid", [LOCAL, RELAY])
def test_lka_seal_still_verifies_after_the_round_trip(evpid: str) -> None:
    env = envmod.parse(_old(evpid))
    assert grant.verify(KEY, envmod.to_fields(env))
    # and through the IPC codec, as the parent gets it
    back = m.decode(json.loads(json.dumps(m.encode(m.ForkDelivery(envelope=env)))))
    assert back.envelope == env and grant.verify(KEY, envmod.to_fields(back.envelope))
    # any sealed field changed: no longer lka's decision
    for forged in (dataclasses.replace(env, sender="x@evil.example"),
                   dataclasses.replace(env, delivery=dataclasses.replace(env.delivery,
                                                                         user="root"))):
        assert not grant.verify(KEY, envmod.to_fields(forged))


def test_an_old_spool_is_walked(tmp_path: Path) -> None:
    """A spool folder as the old queue left it: its envelopes load, and the
    queue's own later writes keep the format."""
    sp = Spool(str(tmp_path))
    sp.setup()
    mdir = Path(sp.msgdir("1f0c2a7d"))
    mdir.mkdir(parents=True)
    (mdir / "message").write_bytes(b"Subject: old\n\nbody\n")
    for evpid in (LOCAL, RELAY):
        shutil.copy(OLD / evpid, mdir / evpid)
    [(msgid, envs)] = list(sp.walk())
    assert msgid == "1f0c2a7d"
    assert sorted(e.evpid for e in envs) == sorted([LOCAL, RELAY])
    env = sp.load_envelope(LOCAL)
    sp.update_envelope(dataclasses.replace(env, retry=3))
    text = (mdir / LOCAL).read_bytes()
    assert text == _old(LOCAL).replace(b"retry: 2\n", b"retry: 3\n")
    assert not any(name.endswith(".tmp") for name in os.listdir(mdir))


def _new() -> Envelope:
    d = Delivery(dispatcher="local", rcpt="a@x.example", dest="a@x.example",
                 method="mbox", user="a", uid=1000, gid=1000, home="/home/a")
    return Envelope(evpid="0000abcd00000001", delivery=d, sender="b@y.example", ctime=5,
                    ttl=60)


def test_a_new_envelope_round_trips() -> None:
    env = _new()
    assert envmod.parse(envmod.serialise(env)) == env
    data = envmod.serialise(env).decode()
    assert data.startswith("version: 1\nevpid: 0000abcd00000001\ntype: mda\n")
    assert "mda-arg" not in data and "last-try" not in data  # empty: not written


@pytest.mark.parametrize("data", [
    b"version: 99\nevpid: 0000abcd00000001\n",
    b"evpid: 0000abcd00000001\n",  # a file names its version
    b"version: 1\nevpid: ../../etc/passwd\n",
    b"version: 1\nevpid: 0000ABCD00000001\n",
    b"version: 1\n",
    b"version: 1\nevpid: 0000abcd00000001\nretry: 01\n",  # not canonical
    b"version: 1\nevpid: 0000abcd00000001\nctime: -5\n",
    b"version: 1\nevpid: 0000abcd00000001\nmda-uid: 1_000\n",
    b"version: 1\nevpid: 0000abcd00000001\nttl: \xd9\xa1\n",  # an Arabic-Indic digit
    b"version: 1\nevpid: 0000abcd00000001\nno colon here\n",
])
def test_the_codec_refuses_what_is_not_an_envelope(data: bytes) -> None:
    with pytest.raises(ValueError):
        envmod.parse(data)


def test_values_never_hold_a_line_break() -> None:
    env = _new()
    evil = dataclasses.replace(env, sender="a@x.example\nmda-user: root")
    with pytest.raises(ValueError, match="line break"):
        envmod.serialise(evil)
    with pytest.raises(ValueError):
        envmod.serialise(dataclasses.replace(env, extra=(("x-k", "a\rb"),)))
    with pytest.raises(ValueError):
        envmod.serialise(dataclasses.replace(env, extra=(("mda-user", "root"),)))  # a known key


@pytest.mark.parametrize("fields", [
    {"evpid": "0000abcd00000001", "mda-user": ["root"]},
    {"evpid": "0000abcd00000001", **{f"k{i}": "x" for i in range(100)}},
    {"evpid": "0000abcd00000001", "mda-arg": "x" * 100000},
    {"evpid": "0000abcd00000001", 1: "x"},
    ["evpid", "0000abcd00000001"],
])
def test_fields_from_a_peer_are_bounded_strings(fields: object) -> None:
    with pytest.raises(ValueError):
        envmod.from_fields(fields)  # type: ignore[arg-type]


def test_a_draft_names_no_evpid() -> None:
    fields = envmod.to_fields(_new())
    with pytest.raises(ValueError):
        envmod.from_fields(fields, draft=True)
    del fields["evpid"]
    draft = envmod.from_fields(fields, draft=True)
    assert draft.evpid == "" and draft.delivery == _new().delivery
    with pytest.raises(ValueError):
        envmod.from_fields(fields)  # a stored envelope must have one


def test_envelopes_read_share_their_common_text_but_the_pool_stays_bounded() -> None:
    # hundreds of envelopes in memory at once (the queue's loaded for delivery,
    # the parent's decoded) hold one copy of a value they share; the pool that
    # finds it holds at most _POOL_MAX values of bounded length
    def fields(i: int, sender: str) -> dict[str, str]:
        return {"version": envmod.VERSION, "evpid": f"{i:016x}", "dispatcher": "local",
                "rcpt": "to@example.org", "dest": "to@example.org", "mda-method": "maildir",
                "mda-user": "to", "mda-home": "/home/to", "type": "mda",
                "hostname": "client.example", "sender": sender, "ctime": "1700000000"}

    envmod._pool.clear()
    a, b = (envmod.from_fields(json.loads(json.dumps(fields(i, "s@example.net"))))
            for i in (1, 2))
    assert a.sender == b.sender and a.sender is b.sender
    assert a.delivery.home is b.delivery.home and a.hostname is b.hostname
    assert a.evpid is not b.evpid  # never shared: unique to each
    for i in range(3 * envmod._POOL_MAX):
        env = envmod.from_fields(fields(i, f"s{i}@example.net"))
        assert env.sender == f"s{i}@example.net"
        assert len(envmod._pool) <= envmod._POOL_MAX
    long = "x" * (envmod._POOL_VALUE_MAX + 1) + "@example.net"
    assert envmod.from_fields(fields(9, long)).sender == long and long not in envmod._pool
    assert "s@example.net" not in envmod._pool  # emptied when full, not grown
