"""control's command dispatch (proc/control.py), driven directly with fake
peers (fakepeer.py): which process each mailriderctl command asks, what it
makes of the answers, and that a bad id reaches nobody. The control socket
itself is tested end to end in e2e/test_e2e_control.py."""

from __future__ import annotations

from typing import Any

import pytest
from fakepeer import FakePeer, run
from mailrider.config.model import Config
from mailrider.ipc import messages as m
from mailrider.proc import common
from mailrider.proc.control import CHILDREN, Control
from mailrider.queue import envelope as envmod
from mailrider.queue.envelope import Delivery, Envelope

E1, E2 = "0000abcd00000001", "0000abcd00000002"


def control(answers: dict[str, Any]) -> tuple[Control, dict[str, FakePeer]]:
    c = Control(common.Options(statedir="/nonexistent"), Config())
    c.started = 0.0
    peers = {name: FakePeer(name, answers.get(name)) for name in (*CHILDREN, "parent")}
    c.peers = peers  # type: ignore[assignment]
    return c, peers


def commands(peer: FakePeer) -> list[tuple[str, list[str]]]:
    return [(x.command, x.args) for x in peer.of(m.Control)]


def test_remove_asks_the_scheduler_then_the_queue_for_each_envelope() -> None:
    def scheduler(msg: m.Control, fds: list[int]) -> m.ControlReply:
        # envelopes in flight are not the scheduler's to give up: only these two
        return m.ControlReply(data={"evpids": [E1, E2]})

    c, peers = control({"scheduler": scheduler})
    reply = run(c.dispatch(["remove", "0000abcd"]))
    assert reply.lines == ["2 envelopes removed"]
    assert commands(peers["scheduler"]) == [("remove", ["0000abcd"])]
    assert commands(peers["queue"]) == [("remove", [E1]), ("remove", [E2])]


@pytest.mark.parametrize("words", [
    ["remove", "../../etc/passwd"], ["schedule", "DEADBEEF"], ["show", "envelope", "0000abcd"],
    ["pause", "envelope", "x"], ["discover", "all"], ["show", "message", "/etc/passwd"],
])
def test_a_bad_id_reaches_no_process(words: list[str]) -> None:
    c, peers = control({})
    reply = run(c.dispatch(words))
    assert not reply.ok and reply.lines == ["command failed: invalid id"]
    assert all(p.got == [] for p in peers.values())


@pytest.mark.parametrize("words,peer,command,args", [
    (["schedule", "all"], "scheduler", "schedule", ["all"]),
    (["show", "envelope", E1], "queue", "show-envelope", [E1]),
    (["pause", "mta"], "scheduler", "pause-mta", []),
    (["resume", "mda"], "scheduler", "resume-mda", []),
    (["pause", "envelope", E1], "scheduler", "pause-envelope", [E1]),
    (["discover", "0000abcd"], "queue", "discover", ["0000abcd"]),
])
def test_commands_go_to_the_process_that_owns_them(
        words: list[str], peer: str, command: str, args: list[str]) -> None:
    c, peers = control({})
    run(c.dispatch(words))
    assert commands(peers[peer]) == [(command, args)]
    assert all(p.got == [] for name, p in peers.items() if name != peer)


def _env(evpid: str, **kw: Any) -> Envelope:
    d = Delivery(dispatcher="out", rcpt="u@y.example", dest="u@y.example", method="relay")
    return Envelope(evpid=evpid, delivery=d, type="mta", sender="s@x.example",
                    sockaddr="192.0.2.7", ctime=1000, ttl=60, **kw)


def test_show_queue_reads_typed_envelopes_from_the_queue() -> None:
    rows = [envmod.to_fields(_env(E1, retry=2, last_try=1100, errorline="451 a|b")),
            envmod.to_fields(_env(E2, flags=("bounce",))),
            {"evpid": "../x", "rcpt": "junk"}]  # not an envelope: left out

    def queue(msg: m.Control, fds: list[int]) -> m.ControlReply:
        return m.ControlReply(data={"envelopes": rows})

    def scheduler(msg: m.Control, fds: list[int]) -> m.ControlReply:
        return m.ControlReply(data={"runstate": {E1: ["pending", 30]}})

    c, _ = control({"queue": queue, "scheduler": scheduler})
    reply = run(c.dispatch(["show", "queue"]))
    assert reply.lines == [
        f"{E1}|inet4|mta||s@x.example|u@y.example|u@y.example|1000|1060|1100|2|pending|30|"
        "451 a\\|b",
        f"{E2}|inet4|mta|bounce|s@x.example|u@y.example|u@y.example|1000|1060|0|0|pending|0|",
    ]
    assert reply.data["envelopes"] == rows[:2]
    only = run(c.dispatch(["show", "queue", E2]))
    assert [line.split("|")[0] for line in only.lines] == [E2]
