"""proc/pony_spool.py: spool writes, the header section's end, envelope building."""

from __future__ import annotations

import asyncio
import os
import types
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any

import pytest
from mailrider import limits
from mailrider.config import parse_string
from mailrider.errors import TempFail
from mailrider.ipc import messages as m
from mailrider.proc import pony_spool
from mailrider.queue.envelope import Delivery
from mailrider.smtp.hygiene import HeaderHygiene
from mailrider.smtp.masquerade import FromRewriter

CONFIG = """\
action out relay
action box mbox ttl 2d
match from any for domain example.org action box
match from any for any action out
"""


def test_write_all_writes_everything(tmp_path: Path) -> None:
    data = b"x" * 300_000  # more than one pipe buffer's worth on a regular file
    fd = os.open(tmp_path / "spool", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        pony_spool.write_all(fd, data)
    finally:
        os.close(fd)
    assert (tmp_path / "spool").read_bytes() == data


def test_write_all_raises_oserror() -> None:
    r, w = os.pipe()
    os.close(w)
    try:
        try:
            pony_spool.write_all(r, b"data")  # the read end: EBADF
        except OSError:
            pass
        else:
            raise AssertionError("no OSError")
    finally:
        os.close(r)


def test_header_tail_without_rewriters() -> None:
    assert pony_spool.header_tail(None, None) == b""


def test_header_tail_flushes_hygiene_then_masquerade() -> None:
    masq = FromRewriter("user@example.org", 64 * 1024)
    hygiene = HeaderHygiene("mx.example.org", True)
    # the rewriter holds the header section until its end
    assert masq.feed(hygiene.feed(b"From: Someone <someone@else.test>\r\n")) == b""
    tail = pony_spool.header_tail(hygiene, masq)
    assert tail.startswith(b"From: Someone <user@example.org>")
    assert b"Message-ID: <" in tail  # added by the hygiene, passed through the rewriter
    assert masq.rewritten == 1


def test_build_envelopes() -> None:
    config = parse_string(CONFIG, "t.conf")
    local = Delivery(dispatcher="box", rcpt="bob@example.org", dest="bob@example.org",
                     method="mbox", user="bob")
    relayed = Delivery(dispatcher="out", rcpt="carol@else.test", dest="carol@else.test",
                       method="relay")
    tx = pony_spool.Transaction(
        tag="in", smtpname="mx.example.org", helo="client.test", sockaddr="192.0.2.7",
        sender="alice@else.test",
        mail_params=types.SimpleNamespace(ret="HDRS", envid="e1"),
        rcpts=[("Bob@example.org", types.SimpleNamespace(notify=("SUCCESS", "FAILURE"),
                                                         orcpt="rfc822;bob@example.org")),
               ("carol@else.test", None)],
        size=123, digest="ab" * 32)
    envs = pony_spool.build_envelopes(config, tx, [(0, local), (1, relayed)], now=1000)
    assert [e.type for e in envs] == ["mda", "mta"]
    bob, carol = envs
    assert bob.delivery.rcpt == "Bob@example.org"  # as the client wrote it
    assert bob.delivery.user == "bob"
    assert carol.delivery is relayed
    assert bob.ttl == 2 * 86400
    assert carol.ttl == config.queue_ttl
    assert bob.dsn_notify == ("FAILURE", "SUCCESS")
    assert bob.dsn_orcpt == "rfc822;bob@example.org"
    assert carol.dsn_notify == () and carol.dsn_orcpt == ""
    assert (bob.dsn_ret, bob.dsn_envid) == ("HDRS", "e1")
    for e in envs:
        assert (e.evpid, e.tag, e.smtpname, e.helo, e.hostname) == (
            "", "in", "mx.example.org", "client.test", "<unknown>")
        assert (e.sockaddr, e.sender, e.ctime, e.retry) == ("192.0.2.7", "alice@else.test",
                                                          1000, 0)
        assert (e.message_size, e.message_sha256) == (123, "ab" * 32)


# -- SpoolFiles: spool files asked for ahead ------------------------------------------


class Queue:
    """The queue's side of MessageCreate: a real file each, or a failure."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.asked = 0
        self.fail: Exception | None = None
        self.wrong = False
        self.rolled_back: list[str] = []

    async def call(self, obj: Any, fds: Sequence[int] = ()) -> tuple[Any, list[int]]:
        assert isinstance(obj, m.MessageCreate) and obj.msgid == ""
        self.asked += 1
        if self.fail is not None:
            raise self.fail
        fd = os.open(self.folder / f"{self.asked:08x}", os.O_WRONLY | os.O_CREAT, 0o600)
        if self.wrong:  # a reply of the wrong type, with its descriptor
            return m.Ok(), [fd]
        return m.MessageCreated(msgid=f"{self.asked:08x}"), [fd]

    def notify(self, obj: Any, fds: Sequence[int] = ()) -> None:
        raise AssertionError(obj)

    async def ask(self, obj: Any, fds: Sequence[int] = ()) -> Any:
        assert isinstance(obj, m.MessageRollback)
        self.rolled_back.append(obj.msgid)
        return m.Ok()


def _pool(queue: Queue, size: int, idle: float = 60.0
          ) -> tuple[pony_spool.SpoolFiles, set[asyncio.Task[None]]]:
    tasks: set[asyncio.Task[None]] = set()

    def spawn(coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro)
        tasks.add(task)
        return task

    return pony_spool.SpoolFiles(queue, spawn, size, idle), tasks


def _close(pool: pony_spool.SpoolFiles) -> None:
    """The test's end: the ready files' descriptors closed (pony's close at exit)."""
    while pool._ready:
        os.close(pool._ready.popleft()[1])


def test_spool_files_are_asked_for_ahead_and_replaced(tmp_path: Path) -> None:
    async def main() -> None:
        queue = Queue(tmp_path)
        pool, tasks = _pool(queue, 4)
        assert pool.take() is None  # nothing ready yet: two asked for
        await asyncio.gather(*tasks)
        assert queue.asked == 2 and len(pool) == 2 and pool.want == 2
        # in the order they came, each replaced as it is taken
        msgid, fd = pool.take() or ("", -1)
        assert msgid == "00000001"
        os.write(fd, b"x")
        os.close(fd)
        assert (tmp_path / "00000001").read_bytes() == b"x"
        await asyncio.gather(*tasks)
        assert queue.asked == 3 and len(pool) == 2
        # taking nothing asks for nothing
        await asyncio.sleep(0)
        assert queue.asked == 3
        # a burst that empties it doubles what is kept, up to the size
        for _ in range(3):
            pool.take()
        assert pool.want == 4
        await asyncio.gather(*tasks)
        assert len(pool) == 4 and queue.asked == 3 + 4
        pool.take()
        pool.take()
        pool.take()
        pool.take()
        pool.take()  # found none: at most the size still
        assert pool.want == 4
        await asyncio.gather(*tasks)
        _close(pool)

    asyncio.run(main())


def test_spool_files_kept_idle_are_given_back(tmp_path: Path) -> None:
    async def main() -> None:
        queue = Queue(tmp_path)
        pool, tasks = _pool(queue, 4, idle=0.2)
        before = set(os.listdir("/proc/self/fd"))
        for _ in range(3):
            pool.take()
        await asyncio.gather(*tasks)
        assert len(pool) == 4
        # taken from now and then, they stay
        for _ in range(3):
            await asyncio.sleep(0.1)
            taken = pool.take()
            assert taken is not None
            os.close(taken[1])
        await asyncio.gather(*tasks)
        assert len(pool) == 4 and queue.rolled_back == []
        ready = [msgid for msgid, _ in pool._ready]
        # not taken for longer than idle: all given back, and it starts at one again
        await asyncio.sleep(0.35)
        await asyncio.gather(*tasks)
        assert len(pool) == 0 and pool.want == 1
        assert sorted(queue.rolled_back) == sorted(ready)
        assert set(os.listdir("/proc/self/fd")) == before

    asyncio.run(main())


def test_a_queue_failure_stops_the_asking_for_a_while(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(pony_spool.time, "monotonic", lambda: now[0])

    async def main() -> None:
        queue = Queue(tmp_path)
        queue.fail = TempFail("disk full", 452, "4.3.1")
        pool, tasks = _pool(queue, 4)
        assert pool.take() is None
        await asyncio.gather(*tasks)
        assert queue.asked == 2 and len(pool) == 0
        # sessions meanwhile ask for theirs themselves: no new asks here
        for _ in range(10):
            assert pool.take() is None
        await asyncio.gather(*tasks)
        assert queue.asked == 2
        # once the pause is over, and the queue well again, it fills up
        queue.fail = None
        now[0] += limits.SPOOL_FILES_RETRY + 0.1
        assert pool.take() is None
        await asyncio.gather(*tasks)
        assert len(pool) == 4
        _close(pool)

    asyncio.run(main())


def test_a_wrong_answer_is_closed_and_not_kept(tmp_path: Path) -> None:
    async def main() -> None:
        queue = Queue(tmp_path)
        queue.wrong = True
        pool, tasks = _pool(queue, 2)
        before = set(os.listdir("/proc/self/fd"))
        assert pool.take() is None
        await asyncio.gather(*tasks)
        assert len(pool) == 0
        assert set(os.listdir("/proc/self/fd")) == before  # descriptors closed
        assert pool.take() is None  # and no asking again at once
        await asyncio.gather(*tasks)
        assert queue.asked == 2

    asyncio.run(main())
