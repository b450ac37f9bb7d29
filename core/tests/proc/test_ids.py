"""Envelope and message ids are hex of a fixed length everywhere: a path or junk
given to the queue's or the scheduler's handlers is refused, never joined to a
path (issue 13 point 4). The control socket is tested end to end in
e2e/test_e2e_control.py."""

from __future__ import annotations

import asyncio
import os
import pathlib
from typing import Any

import pytest
from mailrider.config.model import Config
from mailrider.control_format import invalid_id
from mailrider.ipc import messages as m
from mailrider.proc.common import Options, spool_dir
from mailrider.proc.queue import Queue
from mailrider.proc.scheduler import Scheduler
from mailrider.queue import envelope as envmod
from mailrider.queue.envelope import Delivery, Envelope
from mailrider.queue.spool import Spool

#: what a hostile peer or a careless operator may pass where an id belongs
JUNK = ["../../etc/passwd", "/etc/passwd", "..", "", "all/../..", "0123456789abcdef/..",
        "0123456789ABCDEF", "0123456789abcde", "0123456789abcdef0", "01234567/", "0123456g",
        "deadbeef\x00", "deadbeef\n", " deadbeef",
        "\uff41\uff42\uff43\uff44\uff45\uff46\uff10\uff11"]  # fullwidth "abcdef01"


class FakeChan:
    peer = "pony"


#: how deep the state folder sits in the test's own folder: every id below that
#: climbs with ".." stays inside it, even if a regression let one through
DEPTH = 10


@pytest.fixture
def victim(tmp_path: pathlib.Path) -> pathlib.Path:
    """A state folder deep in tmp_path, with an etc/passwd beside each of its
    ancestors: what an id made of dots and slashes would reach from the spool."""
    statedir = tmp_path.joinpath(*[f"d{i}" for i in range(DEPTH)], "state")
    for folder in [statedir, *statedir.parents]:
        (folder / "etc").mkdir(parents=True, exist_ok=True)
        (folder / "etc" / "passwd").write_text("root:x:0:0\n")
        if folder == tmp_path:
            break
    return statedir


def _queue(statedir: pathlib.Path) -> Queue:
    q = Queue(Options(statedir=str(statedir)), Config())
    asyncio.run(q.setup())
    # as root the queue runs chrooted in its spool, which it calls "/": not here
    q.spool = Spool(spool_dir(str(statedir)))
    q.spool.setup()
    q.spool_ready.set()  # what run() sets once the spool is purged
    return q


def _targets(statedir: pathlib.Path) -> list[str]:
    """Ids that, joined under spool/ the way the spool joined them before ids
    were checked, land on the victims; never one that could leave tmp_path."""
    top = statedir.parents[DEPTH]
    spool = statedir / "spool"
    wanted = [*JUNK, "../../etc/passwd", "../../../../etc/passwd", "../../../etc/passwd",
              "../../etc", str(statedir / "etc" / "passwd"), str(top / "etc" / "passwd")]
    out = []
    for x in wanted:
        reach = [spool / "queue" / x[:2] / x[:8] / x, spool / "queue" / x[:2] / x,
                 spool / "incoming" / x]
        if all(os.path.normpath(p).startswith(str(top) + os.sep) for p in reach):
            out.append(x)
    assert "../../etc/passwd" in out and str(top / "etc" / "passwd") in out
    return out


def _victims_intact(statedir: pathlib.Path) -> None:
    for folder in [statedir, *statedir.parents[:DEPTH + 1]]:
        assert (folder / "etc" / "passwd").read_text() == "root:x:0:0\n"


@pytest.mark.parametrize("command", ["remove", "show-envelope", "show-message", "discover"])
def test_queue_control_refuses_paths(victim: pathlib.Path, command: str) -> None:
    q = _queue(victim)

    async def ask(args: list[str]) -> Any:
        return await q.control(m.Control(command=command, args=args))

    for ident in _targets(victim):
        reply = asyncio.run(ask([ident]))
        assert isinstance(reply, m.ControlReply), ident
        assert not reply.ok and "invalid" in reply.lines[0], ident
    assert not asyncio.run(ask([])).ok
    assert not asyncio.run(ask(["0123456789abcdef", "../../etc/passwd"])).ok
    _victims_intact(victim)
    assert q.counters.get("queue.envelope.removed", 0) == 0


def test_queue_control_still_serves_real_ids(victim: pathlib.Path) -> None:
    q = _queue(victim)
    evpid = envmod.new_evpid(envmod.new_msgid())
    reply = asyncio.run(q.control(m.Control(command="show-envelope", args=[evpid])))
    assert not reply.ok and reply.lines == ["command failed: no such envelope"]
    reply = asyncio.run(q.control(m.Control(command="remove", args=[evpid])))
    assert reply.ok  # nothing to remove is no error (the scheduler chose it)


def test_queue_rollback_refuses_paths(victim: pathlib.Path) -> None:
    q = _queue(victim)
    os.makedirs(victim / "spool" / "incoming" / "keep")
    for ident in [*_targets(victim), "../../etc", "../incoming", "."]:
        with pytest.raises(ValueError, match="invalid message id"):
            asyncio.run(q.handle(FakeChan(), m.MessageRollback(msgid=ident), []))  # type: ignore[arg-type]
    _victims_intact(victim)
    assert (victim / "spool" / "incoming" / "keep").is_dir()
    assert (victim / "spool" / "incoming").is_dir()


def test_queue_drops_bad_ids_from_the_scheduler(victim: pathlib.Path) -> None:
    q = _queue(victim)
    dispatched: list[list[str]] = []
    q._dispatch = dispatched.append  # type: ignore[method-assign]
    asyncio.run(q.handle(FakeChan(), m.SchedDue(evpids=["../../etc/passwd", "0" * 16]), []))  # type: ignore[arg-type]
    assert dispatched == [["0" * 16]]


def test_spool_paths_refuse_bad_ids(victim: pathlib.Path) -> None:
    sp = _queue(victim).spool
    for ident in _targets(victim):
        for fn in (sp.msgdir, sp.message_path, sp.envelope_path, sp.remove_envelope,
                   sp.load_envelope, sp.open_message, sp.rollback):
            with pytest.raises(ValueError):
                fn(ident)
    # an envelope cannot even hold such an id: the codec refuses to write it
    bad = Envelope(evpid="../../../../etc/passwd",
                   delivery=Delivery(dispatcher="", rcpt="x", dest="x", method=""))
    with pytest.raises(ValueError):
        sp.update_envelope(bad)
    _victims_intact(victim)
    # a msgid where an evpid belongs, and the reverse, are refused as well
    with pytest.raises(ValueError):
        sp.envelope_path("deadbeef")
    with pytest.raises(ValueError):
        sp.msgdir("deadbeefdeadbeef")


def _scheduler() -> Scheduler:
    s = Scheduler(Options(statedir="/nonexistent"), Config())

    async def setup() -> None:
        await s.setup()
    asyncio.run(setup())
    return s


@pytest.mark.parametrize("command", ["schedule", "remove", "pause-envelope", "resume-envelope"])
def test_scheduler_refuses_bad_targets(command: str) -> None:
    s = _scheduler()
    evpid = envmod.new_evpid(envmod.new_msgid())
    s.insert(m.SchedEntry(evpid=evpid, type="mda"), 0.0)
    for ident in JUNK:
        reply = s.command(m.Control(command=command, args=[ident]))
        assert reply is not None and not reply.ok and reply.lines == ["command failed: invalid id"]
    reply = s.command(m.Control(command=command, args=[evpid, "all"]))
    assert reply is not None and not reply.ok
    assert evpid in s.entries and not s.entries[evpid].suspended
    # the real forms still work
    for target in (evpid, evpid[:8], "all"):
        reply = s.command(m.Control(command=command, args=[target]))
        assert reply is not None and reply.ok
        if command == "remove":
            assert reply.data["evpids"] == [evpid]
            break


def test_scheduler_inserts_with_bad_ids_never_arrive() -> None:
    # the IPC codec refuses a scheduler entry with a bad id: the frame is refused
    for bad in [{"evpid": "../../etc/passwd"}, {"evpid": 12}, {"type": "mda"},
                "0123456789abcdef"]:
        with pytest.raises((ValueError, TypeError)):
            m.decode({"t": "SchedInsert", "envelopes": [bad]})
        if isinstance(bad, dict):
            with pytest.raises((ValueError, TypeError)):
                m.SchedEntry(**bad)  # type: ignore[arg-type]
    s = _scheduler()
    good = envmod.new_evpid(envmod.new_msgid())
    msg = m.decode({"t": "SchedInsert", "envelopes": [{"evpid": good}]})
    reply = asyncio.run(s.handle(FakeChan(), msg, []))  # type: ignore[arg-type]
    assert isinstance(reply, m.Ok) and reply.text == "1"
    assert list(s.entries) == [good]


@pytest.mark.parametrize(("words", "bad"), [
    (["remove", "../../etc/passwd"], "../../etc/passwd"),
    (["schedule", "/etc/passwd"], "/etc/passwd"),
    (["discover", "all"], "all"),
    (["show", "envelope", "deadbeef"], "deadbeef"),  # a message id is no envelope id
    (["show", "message", "all"], "all"),
    (["pause", "envelope", ".."], ".."),
    (["resume", "envelope", "DEADBEEF"], "DEADBEEF"),
    (["remove", "all"], None), (["schedule", "deadbeef"], None),
    (["show", "envelope", "deadbeefdeadbeef"], None), (["show", "message", "deadbeef"], None),
    (["pause", "envelope", "all"], None), (["show", "queue", "../x"], None),
    (["remove"], None), (["remove", "a", "b"], None),  # unknown commands, said so elsewhere
])
def test_control_checks_ids_before_asking_anyone(words: list[str], bad: str | None) -> None:
    assert invalid_id(words) == bad


def test_is_target() -> None:
    assert envmod.is_target("all") and not envmod.is_target("all", all_ok=False)
    assert envmod.is_target("deadbeef") and envmod.is_target("deadbeef00000001")
    for junk in [*JUNK, None, 12, ["deadbeef"]]:
        assert not envmod.is_target(junk) and not envmod.is_msgid(junk) \
            and not envmod.is_evpid(junk)
