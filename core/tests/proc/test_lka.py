"""lka's request handlers (proc/lka.py), driven directly: the rule answer
for a recipient (typed deliveries, sealed for the parent), refusals, and the
grant key's arrival. No daemon, no DNS: the rules below look nothing up."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from fakepeer import run, wire
from mailrider.config import parse_string
from mailrider.delivery import grant
from mailrider.ipc import messages as m
from mailrider.proc import common
from mailrider.proc.lka import NO_RULE, REJECTED, Lka
from mailrider.queue import envelope as envmod

KEY = bytes(range(32))
CONFIG = """
table users {{ "alice" = "1001:1001:/home/alice", "bob" = "1002:1002:/home/bob" }}
table aliases {{ "team" = "alice, bob, carol@far.example", "hook" = "|/bin/true" }}
action "local" maildir "{box}/%{{user.username}}" alias <aliases> userbase <users>
action "out" relay
match from any for domain "spam.example" reject
match from any for domain "x.example" action "local"
match from any for domain "far.example" action "out"
match from local for any action "out"
"""


class Chan:
    def __init__(self, peer: str) -> None:
        self.peer = peer


async def _lka(box: Path) -> Lka:
    lka = Lka(common.Options(statedir=str(box)), parse_string(CONFIG.format(box=box),
                                                              file="test.conf"))
    await lka.setup()
    lka.privileged = False  # no ~/.forward through a parent here
    await lka.tables.start()
    lka.ready.set()
    assert await lka.handle(Chan("parent"), wire(m.GrantKey(key=KEY.hex())), []) is None  # type: ignore[arg-type]
    return lka


def _check(session: dict[str, Any], sender: str, rcpt: str) -> Any:
    return wire(m.RcptCheck(session=session, sender=sender, rcpt=rcpt))


REMOTE = {"ip": "192.0.2.7", "helo": "client.example"}
LOCAL = {"ip": "local", "local_socket": True, "helo": "localhost"}


def test_a_recipient_expands_to_sealed_typed_deliveries(tmp_path: Path) -> None:
    async def main() -> None:
        lka = await _lka(tmp_path)
        try:
            res = wire(await lka.handle(Chan("pony"), _check(REMOTE, "s@y.example",  # type: ignore[arg-type]
                                                                 "team@x.example"), []))
        finally:
            await lka.tables.close()
        assert isinstance(res, m.RcptResult) and res.accepted
        assert len(res.deliveries) == 3
        alice, bob, carol = sorted(res.deliveries, key=lambda d: (d.relayed, d.user))
        assert (alice.dispatcher, alice.method, alice.user, alice.uid, alice.gid,
                alice.home, alice.rcpt, alice.dest) == (
            "local", "maildir", "alice", 1001, 1001, "/home/alice", "team@x.example",
            "team@x.example")
        assert (bob.user, bob.uid) == ("bob", 1002)
        # an address of the list that the rules relay is routed as a RCPT would be
        assert carol.relayed and carol.dispatcher == "out" and carol.dest == "carol@far.example"
        for d in res.deliveries:
            # the seal covers what lka decided and the sender, as the envelope codec writes them
            sealed = {**envmod.delivery_fields(d), "sender": "s@y.example"}
            assert grant.verify(KEY, sealed)
            assert not grant.verify(KEY, {**sealed, "sender": "other@y.example"})
            assert not grant.verify(KEY, {**sealed, "mda-user": "root"})

    run(main())


@pytest.mark.parametrize("session,rcpt,reply", [
    (REMOTE, "x@spam.example", REJECTED),
    (REMOTE, "x@other.example", NO_RULE),  # relaying elsewhere is for local senders only
])
def test_refusals_carry_the_rule_reply(tmp_path: Path, session: dict[str, Any], rcpt: str,
                                       reply: str) -> None:
    async def main() -> Any:
        lka = await _lka(tmp_path)
        try:
            return await lka.handle(Chan("pony"), _check(session, "s@y.example", rcpt), [])  # type: ignore[arg-type]
        finally:
            await lka.tables.close()

    res = wire(run(main()))
    assert res == m.RcptResult(accepted=False, reply=reply)


def test_an_unknown_user_is_a_permanent_refusal(tmp_path: Path) -> None:
    async def main() -> Any:
        lka = await _lka(tmp_path)
        try:
            return await lka.handle(Chan("pony"), _check(REMOTE, "", "nobody@x.example"), [])  # type: ignore[arg-type]
        finally:
            await lka.tables.close()

    res = run(main())
    assert not res.accepted and (res.reply.code, res.reply.status) == (550, "5.1.1")


def test_a_local_sender_relays(tmp_path: Path) -> None:
    async def main() -> Any:
        lka = await _lka(tmp_path)
        try:
            return await lka.handle(Chan("pony"), _check(LOCAL, "", "x@Other.example"), [])  # type: ignore[arg-type]
        finally:
            await lka.tables.close()

    res = run(main())
    [d] = res.deliveries
    assert res.accepted and d.relayed and (d.uid, d.gid) == (-1, -1)
    env = envmod.Envelope(evpid="0000abcd00000001", delivery=d, type="mta")
    assert env.route == "out:other.example"


def test_a_second_grant_key_is_refused(tmp_path: Path) -> None:
    async def main() -> None:
        lka = await _lka(tmp_path)
        try:
            with pytest.raises(ValueError, match="second grant key"):
                await lka.handle(Chan("parent"), m.GrantKey(key=bytes(32).hex()), [])  # type: ignore[arg-type]
            assert lka.grant_key == KEY
        finally:
            await lka.tables.close()

    asyncio.run(main())


def test_forward_answers_are_shared_and_kept_briefly(tmp_path: Path) -> None:
    # hundreds of RCPTs for one user at once ask the parent once; the answer
    # (here: no .forward) is kept FORWARD_CACHE_TTL seconds; a failed
    # question is not kept
    from mailrider import limits

    now = [1000.0]
    asks: list[str] = []
    fail = [False]

    class Parent:
        async def ask(self, msg: Any) -> Any:
            asks.append(msg.user)
            await asyncio.sleep(0.01)
            if fail[0]:
                raise ConnectionError("parent gone")
            return m.ForwardContent(content="bob" if msg.user == "alice" else None)

    async def main() -> None:
        lka = await _lka(tmp_path)
        try:
            lka.peers = {"parent": Parent()}  # type: ignore[dict-item]
            lka._forwards.clock = lambda: now[0]
            got = await asyncio.gather(*(lka._forward("alice", "/") for _ in range(300)))
            assert got == ["bob"] * 300 and asks == ["alice"]
            assert await lka._forward("carol", "/") is None and asks == ["alice", "carol"]
            assert await lka._forward("carol", "/") is None and len(asks) == 2
            now[0] += limits.FORWARD_CACHE_TTL  # too old: asked again
            fail[0] = True
            with pytest.raises(ConnectionError):
                await lka._forward("alice", "/")
            fail[0] = False
            assert await lka._forward("alice", "/") == "bob"
            assert asks == ["alice", "carol", "alice", "alice"]
        finally:
            await lka.tables.close()

    run(main())


def test_a_burst_of_recipients_is_expanded_a_bounded_number_at_a_time(tmp_path: Path) -> None:
    # 300 RCPTs from pony at once, the first .forward answer slow to come: at
    # most LKA_RCPT_CONCURRENCY expansions are open, the rest wait as their
    # requests; each still gets its own accepted answer
    import socket

    from mailrider import limits
    from mailrider.ipc.channel import Channel

    release = asyncio.Event()
    open_now = 0
    most = 0

    class Parent:
        async def ask(self, msg: Any) -> Any:
            await release.wait()
            return m.ForwardContent(content=None)

    async def main() -> None:
        nonlocal open_now, most
        lka = await _lka(tmp_path)
        lka.privileged = True
        real_forward = lka._forward

        async def counting(user: str, home: str) -> str | None:
            nonlocal open_now, most
            open_now += 1
            most = max(most, open_now)
            try:
                return await real_forward(user, home)
            finally:
                open_now -= 1

        lka._forward = counting  # type: ignore[method-assign]
        mine, theirs = socket.socketpair()
        try:
            lka.connect({"pony": theirs.detach()})
            lka.peers["parent"] = Parent()  # type: ignore[assignment]
            pony = Channel(mine, "lka")
            asks = [asyncio.ensure_future(pony.ask(
                m.RcptCheck(session=REMOTE, sender="s@far.example", rcpt=f"alice+{i}@x.example")))
                for i in range(300)]
            for _ in range(100):
                await asyncio.sleep(0.005)
                if lka.rcpt_gate.waiting == 300 - limits.LKA_RCPT_CONCURRENCY:
                    break
            assert most == limits.LKA_RCPT_CONCURRENCY
            assert lka.rcpt_gate.waiting == 300 - limits.LKA_RCPT_CONCURRENCY
            release.set()
            got = await asyncio.gather(*asks)
            assert all(r.accepted and [d.rcpt for d in r.deliveries] == [f"alice+{i}@x.example"]
                       for i, r in enumerate(got))
            assert most == limits.LKA_RCPT_CONCURRENCY and open_now == 0
            assert lka.stats()["lka.rcpt.waiting.peak"] == 300 - limits.LKA_RCPT_CONCURRENCY
            pony.close()
        finally:
            for chan in lka.peers.values():
                if isinstance(chan, Channel):
                    chan.close()
            await lka.tables.close()

    run(main())
