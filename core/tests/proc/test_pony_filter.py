"""pony_filter: the filter client's decisions, its dot-stuffing and its backpressure,
with a fake lka (no daemon, no sockets)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from mailrider import limits
from mailrider.errors import TempFail
from mailrider.ipc import messages as m
from mailrider.proc.pony_filter import FILTER_FAILED, FilterClient, Peer, stuff, unstuff

BOUND = 20.0


class Lka:
    """Answers with ``answer(msg)``; FilterData requests wait for ``release``."""

    def __init__(self, answer: Callable[[Any], Any] = lambda msg: m.Ok()) -> None:
        self.answer = answer
        self.seen: list[Any] = []
        self.release = asyncio.Event()
        self.hold_data = False

    def notify(self, obj: Any, fds: Any = ()) -> None:
        self.seen.append(obj)

    async def call(self, obj: Any, fds: Any = ()) -> tuple[Any, list[int]]:
        return await self.ask(obj), []

    async def ask(self, obj: Any, fds: Any = ()) -> Any:
        self.seen.append(obj)
        if isinstance(obj, m.FilterData) and self.hold_data:
            await self.release.wait()
        return self.answer(obj)


class Harness:
    def __init__(self, lka: Lka) -> None:
        self.lka = lka
        self.written = bytearray()
        self.events: list[str] = []
        self.tasks: set[asyncio.Task[None]] = set()
        peer: Peer = lka  # mypy checks the fake is a Peer
        self.client = FilterClient("sid1", peer, self.spawn, write=self.written.extend,
                                   pause=lambda: self.events.append("pause"),
                                   resume=lambda: self.events.append("resume"))

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    def data_lines(self) -> list[str]:
        return [ln for x in self.lka.seen if isinstance(x, m.FilterData) for ln in x.lines]


def arun(main: Callable[[], Awaitable[None]]) -> None:
    async def bounded() -> None:
        await asyncio.wait_for(main(), BOUND)
    asyncio.run(bounded())


async def settle(h: Harness) -> None:
    """Until every request spawned so far has been answered."""
    while h.tasks:
        await asyncio.gather(*list(h.tasks))
        # the tasks' done callbacks (which empty h.tasks) run on the next turn;
        # Python 3.13's gather of finished tasks does not yield to the loop
        await asyncio.sleep(0)


# -- decisions ------------------------------------------------------------------------


@pytest.mark.parametrize("decision", [
    m.FilterDecision(),
    m.FilterDecision("reject", "550 no"),
    m.FilterDecision("rewrite", "new@example.org"),
    m.FilterDecision("junk"),
])
def test_phase_returns_the_filters_decision(decision: m.FilterDecision) -> None:
    async def main() -> None:
        h = Harness(Lka(lambda msg: decision))
        assert await h.client.phase("mail-from", ["a@example.org"]) == decision
        [asked] = h.lka.seen
        assert asked == m.FilterPhase(sid="sid1", phase="mail-from", params=["a@example.org"])
    arun(main)


@pytest.mark.parametrize("answer", [m.Ok(), None, "proceed"])
def test_phase_answer_that_is_no_decision_disconnects(answer: Any) -> None:
    async def main() -> None:
        h = Harness(Lka(lambda msg: answer))
        assert await h.client.phase("rcpt-to", ["b@example.org"]) == \
            m.FilterDecision("disconnect", FILTER_FAILED)
    arun(main)


def test_lka_down_is_a_disconnect_with_a_4xx() -> None:
    def down(msg: Any) -> Any:
        raise TempFail("lka lost")

    async def main() -> None:
        h = Harness(Lka(down))
        expected = m.FilterDecision("disconnect", FILTER_FAILED)
        assert await h.client.phase("helo", ["x"]) == expected
        assert await h.client.begin(0, "<unknown>", "error", "1.2.3.4", "1.2.3.4:5",
                                    "127.0.0.1:25") == expected
        assert FILTER_FAILED.startswith("421 ")
    arun(main)


def test_begin_without_a_decision_proceeds() -> None:
    async def main() -> None:
        h = Harness(Lka(lambda msg: m.Ok()))
        d = await h.client.begin(2, "mx.example.org", "pass", "[::1]", "[::1]:1025", "local")
        assert d.decision == "proceed"
        [asked] = h.lka.seen
        assert isinstance(asked, m.FilterBegin) and asked.listener == 2
        assert asked.src == "[::1]" and asked.rdns == "mx.example.org"
    arun(main)


def test_reports_and_end_are_notifications() -> None:
    async def main() -> None:
        h = Harness(Lka())
        h.client.report("tx-begin", ["abc"])
        h.client.end()
        assert h.lka.seen == [m.FilterReport(sid="sid1", event="tx-begin", params=["abc"]),
                              m.FilterEnd(sid="sid1")]
    arun(main)


# -- message lines ----------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "wire"), [
    ([b"hello"], ["hello"]),
    ([b".", b"..", b".x"], ["..", "...", "..x"]),
    ([b"", b"caf\xc3\xa9", b"\xff\xfe"], ["", "caf\u00e9", "\udcff\udcfe"]),
])
def test_stuffing(raw: list[bytes], wire: list[str]) -> None:
    assert stuff(raw) == wire
    assert unstuff([*wire, "."]) == (b"".join(x + b"\n" for x in raw), True)


@given(st.lists(st.binary().filter(lambda b: b"\n" not in b), max_size=20))
def test_stuffing_round_trips(raw: list[bytes]) -> None:
    data, ended = unstuff([*stuff(raw), ".", "after the end"])
    assert ended and data == b"".join(x + b"\n" for x in raw)


def test_unstuff_without_the_end() -> None:
    assert unstuff(["a", "..b"]) == (b"a\n.b\n", False)


def test_data_passes_through_and_ends_at_the_dot() -> None:
    async def main() -> None:
        h = Harness(Lka(lambda msg: m.Ok("yes") if isinstance(msg, m.FilterDataBegin)
                        else m.Ok()))
        assert await h.client.data_begin(b"Received: x\n\tby y\n")
        h.client.chunk(b"Subject: a\n\nbo")
        h.client.chunk(b"dy\n.dot\nno newline at end")
        await settle(h)
        end = asyncio.get_running_loop().create_task(h.client.data_end())
        await asyncio.sleep(0)  # data_end runs up to its wait
        await settle(h)
        lines = h.data_lines()
        assert lines == ["Received: x", "\tby y", "Subject: a", "", "body", "..dot",
                         "no newline at end", "."]
        # the filters give it back (here: unchanged, in two answers)
        h.client.output(lines[:3], "")
        assert not end.done()
        h.client.output(lines[3:], "")
        assert await end is None
        assert bytes(h.written) == (b"Received: x\n\tby y\nSubject: a\n\nbody\n.dot\n"
                                    b"no newline at end\n")
        h.client.output(["late"], "")  # after the end: ignored
        assert b"late" not in h.written
    arun(main)


def test_no_data_line_filter() -> None:
    async def main() -> None:
        h = Harness(Lka(lambda msg: m.Ok("no")))
        assert not await h.client.data_begin(b"Received: x\n")
        assert h.data_lines() == []
        h.client.output(["stray"], "")  # no message under way: ignored
        assert h.written == b""
    arun(main)


def test_filter_error_ends_the_message() -> None:
    async def main() -> None:
        h = Harness(Lka(lambda msg: m.Ok("yes")))
        await h.client.data_begin(b"Received: x\n")
        h.client.chunk(b"line\n")
        end = asyncio.get_running_loop().create_task(h.client.data_end())
        await asyncio.sleep(0)  # data_end runs up to its wait
        await settle(h)
        h.client.output([], "filter exited")
        assert await end == "filter exited"
    arun(main)


def test_lka_failing_a_data_request_fails_the_message() -> None:
    def answer(msg: Any) -> Any:
        if isinstance(msg, m.FilterData):
            raise TempFail("lka lost")
        return m.Ok("yes")

    async def main() -> None:
        h = Harness(Lka(answer))
        await h.client.data_begin(b"Received: x\n")
        h.client.chunk(b"line\n")
        assert await h.client.data_end() == "lka lost"
    arun(main)


def test_backpressure_pauses_and_resumes_reading() -> None:
    async def main() -> None:
        lka = Lka(lambda msg: m.Ok("yes"))
        lka.hold_data = True
        h = Harness(lka)
        await h.client.data_begin(b"Received: x\n")
        line = b"x" * 1000 + b"\n"
        n = limits.FILTER_DATA_WINDOW // len(line) + 2
        for _ in range(n):
            h.client.chunk(line)
        assert h.events == ["pause"]  # once, above the window
        assert h.client.inflight > limits.FILTER_DATA_WINDOW
        lka.release.set()
        await settle(h)
        assert h.events == ["pause", "resume"] and h.client.inflight == 0
    arun(main)


def test_a_line_longer_than_the_window_goes_in_pieces() -> None:
    async def main() -> None:
        h = Harness(Lka(lambda msg: m.Ok("yes")))
        await h.client.data_begin(b"Received: x\n")
        h.client.chunk(b"y" * (limits.FILTER_DATA_WINDOW + 10))
        await settle(h)
        # passed on without waiting for a newline that may never come
        assert h.data_lines()[-1] == "y" * (limits.FILTER_DATA_WINDOW + 10)
        assert h.client.line == b""
    arun(main)
