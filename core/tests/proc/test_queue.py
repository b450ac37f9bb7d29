"""The queue process's handlers (proc/queue.py), driven directly with fake
peers (fakepeer.py): commit, local and relayed delivery outcomes, the
bounce path, expiry, and the control commands, on a real spool in a
temporary folder. No daemon is started."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from fakepeer import FakePeer, run, until, wire
from mailrider import limits
from mailrider.config import parse_string
from mailrider.ipc import messages as m
from mailrider.proc import common
from mailrider.proc.queue import Queue
from mailrider.queue import envelope as envmod
from mailrider.queue.envelope import Delivery, Envelope
from mailrider.queue.spool import Spool

CONFIG = """
action "local" mbox
action "out" relay
match from any for domain "x.example" action "local"
match from any for any action "out"
"""
BODY = b"Subject: hi\nFrom: a@b.example\n\nbody\n"


class FakeChan:
    peer = "pony"


class Harness:
    def __init__(self, q: Queue, peers: dict[str, FakePeer]) -> None:
        self.q = q
        self.peers = peers

    def __getattr__(self, name: str) -> FakePeer:
        return self.peers[name]


def serve(tmp_path: Path, body: Callable[[Harness], Awaitable[None]], *,
          answers: dict[str, Any] | None = None) -> None:
    """Run a real Queue on a spool in tmp_path, its peers fake, while ``body`` runs."""

    async def main() -> None:
        q = Queue(common.Options(statedir=str(tmp_path)),
                  parse_string(CONFIG, file="test.conf"))
        await q.setup()
        # as root the queue runs chrooted in its spool ("/"): not here
        q.spool = Spool(common.spool_dir(str(tmp_path)))
        peers = {name: FakePeer(name, (answers or {}).get(name))
                 for name in ("scheduler", "parent", "pony", "lka")}
        q.peers = peers  # type: ignore[assignment]
        task = asyncio.create_task(q.run())
        await until(lambda: os.path.isdir(q.spool.queue), "spool set up")
        try:
            await body(Harness(q, peers))
        finally:
            q.stopping.set()
            await asyncio.wait_for(task, 10)

    run(main())


def results(h: Harness) -> list[m.SchedResult]:
    """Every outcome the scheduler heard, alone (SchedResult) or by batch (SchedResults)."""
    out: list[m.SchedResult] = []
    for msg in h.scheduler.got:
        if isinstance(msg, m.SchedResult):
            out.append(msg)
        elif isinstance(msg, m.SchedResults):
            out.extend(msg.results)
    return out


def envelope(msgid: str, rcpt: str, *, relay: bool = False, **kw: Any) -> Envelope:
    d = Delivery(dispatcher="out" if relay else "local", rcpt=rcpt, dest=rcpt,
                 method="relay" if relay else "mbox", user="" if relay else "nobody",
                 uid=-1 if relay else 65534, gid=-1 if relay else 65534)
    fields: dict[str, Any] = {"type": "mta" if relay else "mda", "sender": "a@b.example",
                              "ctime": int(time.time()), "ttl": 3600, "smtpname": "mx.test"}
    fields.update(kw)
    return Envelope(evpid=envmod.new_evpid(msgid), delivery=d, **fields)


def queued(h: Harness, *envs: Envelope) -> list[Envelope]:
    """A message in the spool with these envelopes (as a commit leaves them)."""
    msgid = envs[0].msgid
    h.q.spool.add_message(msgid, BODY, list(envs))
    return [h.q.spool.load_envelope(e.evpid) for e in envs]


def test_commit_names_and_writes_the_envelopes(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        created, fds = await h.q.handle(FakeChan(), wire(m.MessageCreate()), [])  # type: ignore[arg-type]
        assert isinstance(created, m.MessageCreated) and envmod.is_msgid(created.msgid)
        os.write(fds[0], BODY)
        os.close(fds[0])
        drafts = [dataclasses.replace(envelope("00000000", r), evpid="") for r in ("u@x.example",
                                                                       "v@x.example")]
        commit = wire(m.MessageCommit(msgid=created.msgid, envelopes=drafts))
        reply = await h.q.handle(FakeChan(), commit, [])  # type: ignore[arg-type]
        assert reply == m.Ok(text=created.msgid)
        [ins] = h.scheduler.of(m.SchedInsert)[-1:]
        assert {e.evpid[:8] for e in ins.envelopes} == {created.msgid}
        assert len({e.evpid for e in ins.envelopes}) == 2
        for entry, draft in zip(ins.envelopes, drafts, strict=True):
            on_disk = h.q.spool.load_envelope(entry.evpid)
            # the queue named it; everything else is what pony sent
            assert on_disk == dataclasses.replace(draft, evpid=entry.evpid)
            assert (entry.type, entry.ttl, entry.route) == ("mda", 3600, "")
        # pony may not name an envelope: the codec refuses the frame
        with pytest.raises(ValueError):
            wire(m.MessageCommit(msgid=created.msgid, envelopes=[
                dataclasses.replace(drafts[0], evpid=envmod.new_evpid(created.msgid))]))
        # a message it did not open is refused
        with pytest.raises(Exception, match="unknown message"):
            await h.q.handle(FakeChan(), wire(m.MessageCommit(msgid="deadbeef",  # type: ignore[arg-type]
                                                               envelopes=[])), [])

    serve(tmp_path, body)


def _parent(status: str, text: str) -> Any:
    def answer(msg: Any, fds: list[int]) -> Any:
        assert isinstance(msg, m.ForkDeliveries)
        assert all(isinstance(e, Envelope) for e in msg.envelopes)
        assert len(fds) == len(msg.envelopes)
        assert all(os.pread(fd, 100, 0) == BODY[:100] for fd in fds)
        return m.DeliveryResults(results=[
            m.DeliveryResult(evpid=e.evpid, status=status, text=text) for e in msg.envelopes])

    return answer


def test_a_local_delivery_that_succeeds_is_removed(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        [env] = queued(h, envelope("0000abcd", "u@x.example"))
        await h.q.handle(FakeChan(), wire(m.SchedDue(evpids=[env.evpid])), [])  # type: ignore[arg-type]
        await until(lambda: results(h), "a result")
        [fork] = h.parent.of(m.ForkDeliveries)
        assert fork.envelopes == [env]  # typed, as it is on disk
        assert results(h) == [m.SchedResult(evpid=env.evpid, status="ok")]
        assert not os.path.exists(h.q.spool.msgdir(env.msgid))

    serve(tmp_path, body, answers={"parent": _parent("ok", "Delivered")})


async def _commit(h: Harness, *rcpts: str) -> list[str]:
    """Create and commit a message from pony's side; its evpids."""
    created, fds = await h.q.handle(FakeChan(), wire(m.MessageCreate()), [])  # type: ignore[arg-type]
    os.write(fds[0], BODY)
    os.close(fds[0])
    drafts = [dataclasses.replace(envelope("00000000", r), evpid="") for r in rcpts]
    await h.q.handle(FakeChan(), wire(m.MessageCommit(msgid=created.msgid,  # type: ignore[arg-type]
                                                      envelopes=drafts)), [])
    return [e.evpid for e in h.scheduler.of(m.SchedInsert)[-1].envelopes]


def test_a_kept_envelope_removed_by_hand_is_forgotten(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        [evpid] = await _commit(h, "u@x.example")
        before = h.q.spool.load_envelope(evpid)
        assert h.q._fresh_envs[evpid] == before
        await h.q.handle(FakeChan(), wire(m.Control(command="remove", args=[evpid])), [])  # type: ignore[arg-type]
        assert evpid not in h.q._fresh_envs
        await h.q.handle(FakeChan(), wire(m.SchedDue(evpids=[evpid])), [])  # type: ignore[arg-type]
        await until(lambda: h.scheduler.of(m.SchedResult), "a result")
        assert h.scheduler.of(m.SchedResult) == [m.SchedResult(evpid=evpid, status="removed")]
        assert h.parent.of(m.ForkDeliveries) == []

    serve(tmp_path, body, answers={"parent": _parent("ok", "Delivered")})


def test_local_envelopes_due_together_go_to_the_parent_in_one_request(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        envs = queued(h, envelope("0000abcd", "u@x.example"), envelope("0000abcd", "v@x.example"))
        envs += queued(h, envelope("0000abce", "w@x.example"))
        await h.q.handle(FakeChan(), wire(m.SchedDue(evpids=[e.evpid for e in envs])), [])  # type: ignore[arg-type]
        await until(lambda: len(results(h)) == 3, "three results")
        [fork] = h.parent.of(m.ForkDeliveries)
        assert sorted(e.evpid for e in fork.envelopes) == sorted(e.evpid for e in envs)
        assert sorted(r.evpid for r in results(h)) == \
            sorted(e.evpid for e in envs)
        assert all(r.status == "ok" for r in results(h))
        assert not os.path.exists(h.q.spool.msgdir("0000abcd"))
        assert not os.path.exists(h.q.spool.msgdir("0000abce"))

    serve(tmp_path, body, answers={"parent": _parent("ok", "Delivered")})


def test_more_local_envelopes_than_one_frame_carries_go_in_several_requests(
        tmp_path: Path) -> None:
    n = limits.FORK_DELIVERIES_MAX + 4

    async def body(h: Harness) -> None:
        envs = queued(h, *(envelope("0000abcd", f"u{i}@x.example") for i in range(n)))
        await h.q.handle(FakeChan(), wire(m.SchedDue(evpids=[e.evpid for e in envs])), [])  # type: ignore[arg-type]
        await until(lambda: len(results(h)) == n, "every result")
        sizes = sorted(len(f.envelopes) for f in h.parent.of(m.ForkDeliveries))
        assert sizes == [4, limits.FORK_DELIVERIES_MAX]
        assert all(r.status == "ok" for r in results(h))

    def answer(msg: Any, fds: list[int]) -> Any:
        assert len(fds) <= limits.IPC_FDS_MAX  # what one frame carries
        return _parent("ok", "Delivered")(msg, fds)

    serve(tmp_path, body, answers={"parent": answer})


def test_a_failed_request_leaves_no_envelope_in_flight(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        envs = queued(h, envelope("0000abcd", "u@x.example"), envelope("0000abcd", "v@x.example"))
        await h.q.handle(FakeChan(), wire(m.SchedDue(evpids=[e.evpid for e in envs])), [])  # type: ignore[arg-type]
        await until(lambda: len(results(h)) == 2, "two results")
        assert sorted((r.evpid, r.status, r.retry) for r in results(h)) == \
            sorted((e.evpid, "tempfail", 1) for e in envs)
        assert all(h.q.spool.load_envelope(e.evpid).retry == 1 for e in envs)

    def answer(msg: Any, fds: list[int]) -> Any:
        raise ValueError("too many fds in one frame")  # as the channel refuses a frame

    serve(tmp_path, body, answers={"parent": answer})


def test_a_temporary_failure_is_written_back_for_the_scheduler(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        [env] = queued(h, envelope("0000abcd", "u@x.example"))
        await h.q.handle(FakeChan(), wire(m.SchedDue(evpids=[env.evpid])), [])  # type: ignore[arg-type]
        await until(lambda: results(h), "a result")
        assert results(h) == [
            m.SchedResult(evpid=env.evpid, status="tempfail", retry=1)]
        later = h.q.spool.load_envelope(env.evpid)
        assert later.retry == 1 and later.errorline == "452 4.2.2 Mailbox full"
        assert later.last_try is not None and later.last_try >= env.ctime
        assert dataclasses.replace(later, retry=0, errorline="", last_try=None) == env

    serve(tmp_path, body, answers={"parent": _parent("tempfail", "452 4.2.2 Mailbox\nfull")})


def _lka(msg: Any, fds: list[int]) -> m.RcptResult:
    # lka's route for the notification: to the original sender, relayed
    assert isinstance(msg, m.RcptCheck) and msg.sender == ""
    return m.RcptResult(accepted=True, deliveries=[Delivery(
        dispatcher="out", rcpt=msg.rcpt, dest=msg.rcpt, method="relay", uid=-1, gid=-1,
        grant="ab" * 32)])


def test_a_permanent_failure_bounces_to_the_sender(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "BOUNCE_FLUSH_DELAY", 0.0)

    async def body(h: Harness) -> None:
        [env] = queued(h, envelope("0000abcd", "u@x.example"))
        await h.q.handle(FakeChan(), wire(m.SchedDue(evpids=[env.evpid])), [])  # type: ignore[arg-type]
        await until(lambda: h.scheduler.of(m.SchedInsert), "the bounce queued")
        # the removal (reaper thread) and the bounce's queueing (its own
        # thread) end in either order
        await until(lambda: m.SchedResult(evpid=env.evpid, status="permfail")
                    in results(h), "the permfail reported")
        [ask] = h.lka.of(m.RcptCheck)
        assert ask.rcpt == "a@b.example"
        [entry] = h.scheduler.of(m.SchedInsert)[-1].envelopes
        assert (entry.type, entry.route, entry.ttl) == ("mta", "out:b.example",
                                                        limits.BOUNCE_TTL)
        dsn = h.q.spool.load_envelope(entry.evpid)
        assert dsn.is_bounce and dsn.sender == "" and dsn.rcpt == "a@b.example"
        assert dsn.bounce_type == "failed" and dsn.delivery.grant == "ab" * 32
        fd = h.q.spool.open_message(dsn.msgid)
        try:
            report = os.pread(fd, 1 << 16, 0)
        finally:
            os.close(fd)
        assert b"550 5.1.1 No such user" in report and b"Subject: hi" in report
        assert dsn.message_size == os.path.getsize(h.q.spool.message_path(dsn.msgid))

    serve(tmp_path, body, answers={"parent": _parent("permfail", "550 5.1.1 No such user"),
                                   "lka": _lka})


def test_a_bounce_never_bounces(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "BOUNCE_FLUSH_DELAY", 0.0)

    async def body(h: Harness) -> None:
        [env] = queued(h, envelope("0000abcd", "u@x.example", flags=("bounce",)))
        await h.q.handle(FakeChan(), wire(m.SchedDue(evpids=[env.evpid])), [])  # type: ignore[arg-type]
        await until(lambda: results(h), "a result")
        await asyncio.sleep(0.05)
        assert h.lka.got == [] and h.scheduler.of(m.SchedInsert) == []

    serve(tmp_path, body, answers={"parent": _parent("permfail", "550 5.1.1 No such user")})


def test_relay_envelopes_of_one_route_go_in_one_batch(tmp_path: Path) -> None:
    def pony(msg: Any, fds: list[int]) -> m.DeliveryResults:
        assert isinstance(msg, m.DeliverBatch) and len(fds) == 1
        first, second = msg.envelopes
        return m.DeliveryResults(results=[
            m.DeliveryResult(evpid=first.evpid, status="ok", text="250 2.0.0 Ok",
                             relay="mx.y.example [192.0.2.1]", dsn_relayed=True),
            m.DeliveryResult(evpid=second.evpid, status="tempfail",
                             text="451 4.7.1 Greylisted", relay="mx.y.example [192.0.2.1]"),
        ])

    async def body(h: Harness) -> None:
        msgid = "0000abcd"
        envs = queued(h, envelope(msgid, "u@y.example", relay=True),
                      envelope(msgid, "v@y.example", relay=True))
        await h.q.handle(FakeChan(), wire(m.SchedDue(evpids=[e.evpid for e in envs])), [])  # type: ignore[arg-type]
        await until(lambda: len(results(h)) == 2, "two results")
        [batch] = h.pony.of(m.DeliverBatch)
        assert batch.envelopes == envs
        # in any order: the outcomes of a batch run side by side
        order = [e.evpid for e in envs]
        assert sorted(results(h), key=lambda r: order.index(r.evpid)) == [
            m.SchedResult(evpid=envs[0].evpid, status="ok", route="out:y.example"),
            m.SchedResult(evpid=envs[1].evpid, status="tempfail", retry=1)]
        assert h.q.spool.load_envelope(envs[1].evpid).errorline == "451 4.7.1 Greylisted"
        with pytest.raises(FileNotFoundError):
            h.q.spool.load_envelope(envs[0].evpid)

    serve(tmp_path, body, answers={"pony": pony})


def test_messages_of_one_route_go_in_one_batch_with_a_descriptor_each(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "MTA_BATCH_MESSAGES", 3)
    seen: list[tuple[list[str], list[bytes]]] = []

    def pony(msg: Any, fds: list[int]) -> m.DeliveryResults:
        assert isinstance(msg, m.DeliverBatch)
        seen.append(([e.evpid for e in msg.envelopes], [os.pread(fd, 100, 0) for fd in fds]))
        return m.DeliveryResults(results=[
            m.DeliveryResult(evpid=e.evpid, status="ok", text="250 2.0.0 Ok")
            for e in msg.envelopes])

    async def body(h: Harness) -> None:
        envs: list[Envelope] = []
        # four messages to y.example (the second with two recipients), one to z.example
        for i, rcpts in enumerate((["a@y.example"], ["b@y.example", "c@y.example"],
                                   ["d@y.example"], ["e@z.example"], ["f@y.example"])):
            msgid = f"0000ab{i:02x}"
            h.q.spool.add_message(msgid, BODY + f"{i}\n".encode(),
                                  [envelope(msgid, r, relay=True) for r in rcpts])
            envs += [env for _, got in h.q.spool.walk() for env in got
                     if env.msgid == msgid]
        await h.q.handle(FakeChan(), wire(m.SchedDue(evpids=[e.evpid for e in envs])), [])  # type: ignore[arg-type]
        await until(lambda: len(results(h)) == 6, "six results")
        assert {r.status for r in results(h)} == {"ok"}
        by_msg = {e.evpid: e.msgid for e in envs}
        batches = sorted(([by_msg[x] for x in evpids], files) for evpids, files in seen)
        # y.example: at most three messages a batch, each message's envelopes
        # together, one descriptor per message in the order of its envelopes
        assert [b[0] for b in batches] == [
            ["0000ab00", "0000ab01", "0000ab01", "0000ab02"], ["0000ab03"], ["0000ab04"]]
        for msgids, files in batches:
            assert files == [BODY + f"{int(x[-2:], 16)}\n".encode()
                             for x in dict.fromkeys(msgids)]

    serve(tmp_path, body, answers={"pony": pony})


def test_an_expired_envelope_bounces_with_its_last_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "BOUNCE_FLUSH_DELAY", 0.0)

    async def body(h: Harness) -> None:
        [env] = queued(h, envelope("0000abcd", "u@x.example", retry=5,
                                   errorline="421 4.4.2 Timeout"))
        await h.q.handle(FakeChan(), wire(m.SchedDue(evpids=[env.evpid], expire=True)), [])  # type: ignore[arg-type]
        await until(lambda: h.scheduler.of(m.SchedInsert), "the bounce queued")
        # the expiry is reported once the envelope is removed (the queue's
        # reaper, a worker thread): after the bounce, not with it
        await until(lambda: m.SchedResult(evpid=env.evpid, status="expired") in
                    results(h), "the expiry reported")
        assert h.parent.got == []  # not tried again
        dsn = h.q.spool.load_envelope(h.scheduler.of(m.SchedInsert)[-1].envelopes[0].evpid)
        fd = h.q.spool.open_message(dsn.msgid)
        try:
            assert b"5.4.7 Delivery time expired: 421 4.4.2 Timeout" in os.pread(fd, 1 << 16, 0)
        finally:
            os.close(fd)

    serve(tmp_path, body, answers={"lka": _lka})


def test_control_show_and_remove(tmp_path: Path) -> None:
    async def body(h: Harness) -> None:
        env, other = queued(h, envelope("0000abcd", "u@x.example"),
                            envelope("0000abcd", "v@x.example"))
        shown = await h.q.control(m.Control(command="show-envelope", args=[env.evpid]))
        assert shown.lines == envmod.serialise(env).decode().splitlines()
        rows = (await h.q.control(m.Control(command="show-queue"))).data["envelopes"]
        assert sorted(envmod.from_fields(r).evpid for r in rows) == sorted(
            [env.evpid, other.evpid])
        done = await h.q.control(m.Control(command="remove", args=[env.evpid]))
        assert done.ok and h.q.counters["queue.envelope.removed"] == 1
        assert [e.evpid for _, es in h.q.spool.walk() for e in es] == [other.evpid]
        for bad in ("../../x", env.msgid):
            refused = await h.q.control(m.Control(command="remove", args=[bad]))
            assert not refused.ok
        assert h.q.spool.load_envelope(other.evpid) == other

    serve(tmp_path, body)


def test_recovery_hands_the_scheduler_every_envelope(tmp_path: Path) -> None:
    sp = Spool(common.spool_dir(str(tmp_path)))
    sp.setup()
    envs = [envelope("0000abcd", "u@x.example"), envelope("0000abcd", "v@y.example",
                                                           relay=True, retry=2)]
    sp.add_message("0000abcd", BODY, envs)
    sp.mark_clean()

    async def body(h: Harness) -> None:
        await until(lambda: h.scheduler.of(m.SchedInsert), "recovery")
        [ins] = h.scheduler.of(m.SchedInsert)
        assert sorted(ins.envelopes, key=lambda e: e.evpid) == sorted(
            (m.SchedEntry.of(e) for e in envs), key=lambda e: e.evpid)

    serve(tmp_path, body)


def test_creations_asked_together_share_a_worker_call(tmp_path: Path) -> None:
    """Sessions asking for spool files at once are served by one batch (one
    hand-off to a worker thread); each gets its own folder and descriptor,
    and a request that goes away while its batch runs leaves nothing behind."""

    async def body(h: Harness) -> None:
        before = h.q.stats().get("queue.create.batches", 0)
        # a request whose session goes away before its batch is done
        gone = asyncio.ensure_future(
            h.q.handle(FakeChan(), wire(m.MessageCreate()), []))  # type: ignore[arg-type]
        await asyncio.sleep(0)
        gone.cancel()
        asks = [h.q.handle(FakeChan(), wire(m.MessageCreate()), [])  # type: ignore[arg-type]
                for _ in range(20)]
        answers = await asyncio.gather(*asks)
        batches = h.q.stats()["queue.create.batches"] - before
        assert 1 <= batches < 20, batches
        msgids = set()
        for created, fds in answers:
            assert isinstance(created, m.MessageCreated) and len(fds) == 1
            msgids.add(created.msgid)
            path = Path(h.q.spool.incoming) / created.msgid / "message"
            os.write(fds[0], b"x")
            os.close(fds[0])
            assert path.read_bytes() == b"x"
        assert len(msgids) == 20
        # the cancelled request's file was given back
        await until(lambda: set(os.listdir(h.q.spool.incoming)) == msgids,
                    "cancelled creation rolled back")

    serve(tmp_path, body)


def test_a_commit_batch_reaches_the_scheduler_in_one_insert(tmp_path: Path) -> None:
    """Messages committed together (one sync) are handed to the scheduler in
    one SchedInsert: each envelope once, and only after its commit's sync."""

    async def body(h: Harness) -> None:
        msgids = []
        for _ in range(12):
            created, fds = await h.q.handle(FakeChan(), wire(m.MessageCreate()), [])  # type: ignore[arg-type]
            os.write(fds[0], BODY)
            os.close(fds[0])
            msgids.append(created.msgid)
        before = len(h.scheduler.of(m.SchedInsert))
        draft = dataclasses.replace(envelope("00000000", "u@x.example"), evpid="")
        replies = await asyncio.gather(*[
            h.q.handle(FakeChan(), wire(m.MessageCommit(msgid=i, envelopes=[draft, draft])),  # type: ignore[arg-type]
                       []) for i in msgids])
        assert replies == [m.Ok(text=i) for i in msgids]
        inserts = h.scheduler.of(m.SchedInsert)[before:]
        assert 1 <= len(inserts) < len(msgids), len(inserts)
        evpids = [e.evpid for ins in inserts for e in ins.envelopes]
        assert len(evpids) == len(set(evpids)) == 2 * len(msgids)
        assert {e[:8] for e in evpids} == set(msgids)
        for evpid in evpids:  # on disk, committed, before the scheduler heard of it
            assert os.path.exists(h.q.spool.envelope_path(evpid))

    serve(tmp_path, body)


def test_the_outcomes_of_a_relay_batch_reach_the_scheduler_in_one_message(
        tmp_path: Path) -> None:
    def pony(msg: Any, fds: list[int]) -> m.DeliveryResults:
        return m.DeliveryResults(results=[
            m.DeliveryResult(evpid=e.evpid, status="ok", text="250 2.0.0 Ok")
            for e in msg.envelopes])

    async def body(h: Harness) -> None:
        envs: list[Envelope] = []
        for i in range(3):
            msgid = f"0000cd{i:02x}"
            envs += queued(h, envelope(msgid, f"u{i}@y.example", relay=True))
        await h.q.handle(FakeChan(), wire(m.SchedDue(evpids=[e.evpid for e in envs])), [])  # type: ignore[arg-type]
        await until(lambda: len(results(h)) == 3, "three results")
        assert h.scheduler.of(m.SchedResult) == []
        [one] = h.scheduler.of(m.SchedResults)
        assert sorted(r.evpid for r in one.results) == sorted(e.evpid for e in envs)
        assert {(r.status, r.route) for r in one.results} == {("ok", "out:y.example")}

    serve(tmp_path, body, answers={"pony": pony})


def test_a_committed_envelope_is_handed_out_as_the_spool_holds_it_without_reading_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    batches: list[m.DeliverBatch] = []

    def pony(msg: Any, fds: list[int]) -> m.DeliveryResults:
        batches.append(msg)
        return m.DeliveryResults(results=[
            m.DeliveryResult(evpid=e.evpid, status="tempfail", text="451 4.7.1 Later")
            for e in msg.envelopes])

    async def body(h: Harness) -> None:
        created, fds = await h.q.handle(FakeChan(), wire(m.MessageCreate()), [])  # type: ignore[arg-type]
        os.write(fds[0], BODY)
        os.close(fds[0])
        drafts = [dataclasses.replace(envelope("00000000", r, relay=True, dsn_notify=("SUCCESS",)),
                                      evpid="") for r in ("u@y.example", "v@y.example")]
        await h.q.handle(FakeChan(), wire(m.MessageCommit(  # type: ignore[arg-type]
            msgid=created.msgid, envelopes=drafts)), [])
        [ins] = h.scheduler.of(m.SchedInsert)
        evpids = [e.evpid for e in ins.envelopes]
        on_disk = [h.q.spool.load_envelope(x) for x in evpids]
        reads: list[str] = []
        real = h.q.spool.load_envelope

        def counted(evpid: str) -> Envelope:
            reads.append(evpid)
            return real(evpid)

        monkeypatch.setattr(h.q.spool, "load_envelope", counted)
        await h.q.handle(FakeChan(), wire(m.SchedDue(evpids=evpids)), [])  # type: ignore[arg-type]
        await until(lambda: len(results(h)) == 2, "two results")
        assert reads == []  # the first dispatch reads no envelope file
        assert batches[0].envelopes == on_disk  # the same envelopes as from the spool
        assert h.q._fresh_envs == {}
        # the retry is read back: what the spool holds now (retry 1, its error)
        await h.q.handle(FakeChan(), wire(m.SchedDue(evpids=evpids[:1])), [])  # type: ignore[arg-type]
        await until(lambda: len(results(h)) == 3, "the retry's result")
        assert reads == evpids[:1]
        assert batches[1].envelopes[0].retry == 1
        assert batches[1].envelopes[0].errorline == "451 4.7.1 Later"

    serve(tmp_path, body, answers={"pony": pony})


def test_the_envelopes_kept_for_their_first_dispatch_are_bounded(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mailrider.proc.queue as qmod

    monkeypatch.setattr(qmod, "FRESH_ENVELOPES_MAX", 3)

    async def body(h: Harness) -> None:
        for _ in range(5):
            created, fds = await h.q.handle(FakeChan(), wire(m.MessageCreate()), [])  # type: ignore[arg-type]
            os.write(fds[0], BODY)
            os.close(fds[0])
            await h.q.handle(FakeChan(), wire(m.MessageCommit(  # type: ignore[arg-type]
                msgid=created.msgid, envelopes=[dataclasses.replace(
                    envelope("00000000", "u@y.example", relay=True), evpid="")])), [])
        inserted = [e.evpid for ins in h.scheduler.of(m.SchedInsert) for e in ins.envelopes]
        assert list(h.q._fresh_envs) == inserted[-3:]  # the newest three

    serve(tmp_path, body)
