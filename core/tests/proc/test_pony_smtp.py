"""pony_smtp.Session without the daemon: a fake host, scripted lka and queue,
a real client over a socketpair.

Each test runs one event loop; the client writes commands and reads replies
through asyncio streams, the session is the server end of the pair. Waits
are bounded (a bug fails the test instead of hanging it) and nothing is
timed.
"""

from __future__ import annotations

import asyncio
import gc
import os
import pathlib
import socket
import ssl
import sys
import weakref
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import pytest
from mailrider import limits
from mailrider.config.model import Listener
from mailrider.config.parser import parse_string
from mailrider.errors import TempFail
from mailrider.ipc import messages as m
from mailrider.proc.pony_smtp import Session, SessionHost
from mailrider.proc.pony_spool import SpoolFiles
from mailrider.queue.envelope import Delivery, Envelope
from mailrider.smtp.reply import Reply

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "crypto"))
from pki_util import OPENSSL, Pki, make_pki

BOUND = 20.0  # seconds a test may take before it fails (never reached when it works)

Answer = Callable[[Any], Any]


class FakePeer:
    """lka or queue: answers each request with ``answer(msg)``, records all.

    ``answer`` returns the reply object, a ``(reply, fds)`` pair for call(),
    raises TempFail as a dead peer would, or returns an awaitable."""

    def __init__(self, answer: Answer, on_notify: Callable[[Any], None] | None = None) -> None:
        self.answer = answer
        self.on_notify = on_notify
        self.seen: list[Any] = []

    def notify(self, obj: Any, fds: Any = ()) -> None:
        self.seen.append(obj)
        if self.on_notify is not None:
            self.on_notify(obj)

    async def call(self, obj: Any, fds: Any = ()) -> tuple[Any, list[int]]:
        self.seen.append(obj)
        res = self.answer(obj)
        if isinstance(res, Awaitable):
            res = await res
        return res if isinstance(res, tuple) else (res, [])

    async def ask(self, obj: Any, fds: Any = ()) -> Any:
        reply, _ = await self.call(obj, fds)
        return reply

    def of(self, kind: type) -> list[Any]:
        return [x for x in self.seen if isinstance(x, kind)]


@dataclass
class Spool:
    """queue's side: a real file per message, committed or rolled back."""

    folder: str
    files: dict[str, str] = field(default_factory=dict)
    committed: dict[str, list[Envelope]] = field(default_factory=dict)
    rolled_back: list[str] = field(default_factory=list)
    fail_commit: bool = False

    def answer(self, msg: Any) -> Any:
        if isinstance(msg, m.MessageCreate):
            msgid = msg.msgid or f"{len(self.files) + 1:08x}"
            path = os.path.join(self.folder, msgid)
            self.files[msgid] = path
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            return m.MessageCreated(msgid=msgid), [fd]
        if isinstance(msg, m.MessageCommit):
            if self.fail_commit:
                raise TempFail("disk full", 452, "4.3.1")
            self.committed[msg.msgid] = msg.envelopes
            return m.Ok()
        if isinstance(msg, m.MessageRollback):
            self.rolled_back.append(msg.msgid)
            return m.Ok()
        raise AssertionError(f"queue got {msg!r}")

    def text(self, msgid: str) -> bytes:
        with open(self.files[msgid], "rb") as f:
            return f.read()


def lka_accepting(msg: Any) -> Any:
    """lka that accepts every recipient (one local delivery each)."""
    if isinstance(msg, m.RcptCheck):
        return m.RcptResult(True, deliveries=[Delivery(
            dispatcher="local", rcpt=msg.rcpt, dest=msg.rcpt, method="maildir")])
    if isinstance(msg, m.AuthCheck):
        return m.AuthResult("ok" if msg.password == "secret" else "fail")
    raise AssertionError(f"lka got {msg!r}")


class FakeHost:
    """What a Session sees of pony (pony_smtp.SessionHost)."""

    def __init__(self, lka: Answer, spool: Spool, config: str = "",
                 notify: Callable[[Any], None] | None = None) -> None:
        self.config = parse_string(config)
        self.hostname = "mx.test"
        self.paused_smtp = False
        self.rdns_lookup = False
        self.session_timeout = 300.0
        self.greeting_delay = 0.0
        self.greeting_delay_all = False
        self.lka = FakePeer(lka, notify)
        self.queue = FakePeer(spool.answer)
        self.spool_files = SpoolFiles(self.queue, self.spawn)
        self.contexts: dict[int, ssl.SSLContext] = {}
        self.counters: dict[str, int] = {}
        self.refuse: str | None = None
        self.opened: list[Session] = []
        self.closed: list[Session] = []
        self.tasks: set[asyncio.Task[None]] = set()
        self.auth_waits: list[float | None] = []
        self.auth_failures: list[str] = []

    def peer(self, name: str) -> FakePeer:
        return {"lka": self.lka, "queue": self.queue}[name]

    def tls_context(self, index: int) -> ssl.SSLContext | None:
        return self.contexts.get(index)

    def count(self, key: str, n: int = 1) -> None:
        self.counters[key] = self.counters.get(key, 0) + n

    def session_refused(self, ip: str, client: str, socket_session: bool) -> str | None:
        return self.refuse

    def session_opened(self, session: Session) -> None:
        self.opened.append(session)

    def session_closed(self, session: Session) -> None:
        self.closed.append(session)

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    def auth_wait(self, client: str) -> float | None:
        return self.auth_waits.pop(0) if self.auth_waits else 0.0

    def auth_failed(self, client: str) -> None:
        self.auth_failures.append(client)


def _typed(host: FakeHost) -> SessionHost:
    return host  # mypy checks that the fake is a SessionHost


class Client:
    """An SMTP client over asyncio streams: one command, one reply."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def reply(self) -> str:
        """The next reply (its lines joined with newlines), or "" at EOF."""
        lines = []
        while True:
            line = await self.reader.readline()
            if not line:
                return "\n".join(lines)
            text = line.decode().rstrip("\r\n")
            lines.append(text)
            if len(text) < 4 or text[3] != "-":
                return "\n".join(lines)

    async def cmd(self, line: str) -> str:
        self.writer.write(line.encode() + b"\r\n")
        await self.writer.drain()
        return await self.reply()

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def closed(self) -> bool:
        return await self.reader.read() == b""


Scenario = Callable[[Client, FakeHost, Spool], Awaitable[None]]


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    """(server end, client end) of a TCP connection on loopback."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    return server, client


@pytest.fixture
def run(tmp_path: pathlib.Path) -> Runner:
    """Run a scenario against one session on a fresh loop; returns the fake
    host and spool for the checks after it."""

    def runner(scenario: Scenario, *, lka: Answer = lka_accepting, config: str = "",
               listener: Listener | None = None, index: int = 0,
               local_user: str | None = None, notify: Callable[[Any], None] | None = None,
               setup: Callable[[FakeHost], None] | None = None) -> tuple[FakeHost, Spool]:
        spool = Spool(str(tmp_path))
        host = FakeHost(lka, spool, config, notify)
        if setup is not None:
            setup(host)
        lst = listener or Listener(address="127.0.0.1", port=25)

        async def main() -> None:
            # the local socket (sendmail) is a socketpair, a client a TCP connection
            server_sock, client_sock = (socket.socketpair() if local_user is not None
                                        else tcp_pair())
            loop = asyncio.get_running_loop()
            await loop.connect_accepted_socket(
                lambda: Session(_typed(host), lst, local_user=local_user, index=index),
                server_sock)
            reader, writer = await asyncio.open_connection(sock=client_sock)
            try:
                await scenario(Client(reader, writer), host, spool)
            finally:
                writer.close()
                for task in list(host.tasks):
                    task.cancel()

        asyncio.run(asyncio.wait_for(main(), BOUND))
        return host, spool

    return runner


Runner = Callable[..., tuple[FakeHost, Spool]]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    if OPENSSL is None:
        pytest.skip("openssl CLI not installed")
    return make_pki(tmp_path_factory.mktemp("pki"), "rsa", "rsa")


def server_context(pki: Pki) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(pki.cert, pki.key)
    return ctx


async def starttls(c: Client) -> None:
    """STARTTLS from the client's side: 220, then the handshake."""
    assert (await c.cmd("STARTTLS")).startswith("220")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    await c.writer.start_tls(ctx)


MESSAGE = b"Subject: hi\r\n\r\nhello\r\n..leading dot\r\n.\r\n"


async def transaction(c: Client, rcpts: tuple[str, ...] = ("bob@example.org",)) -> str:
    assert (await c.reply()).startswith("220 mx.test")
    assert (await c.cmd("EHLO client.test")).startswith("250")
    assert (await c.cmd("MAIL FROM:<alice@example.com>")).startswith("250")
    for rcpt in rcpts:
        assert (await c.cmd(f"RCPT TO:<{rcpt}>")).startswith("250")
    assert (await c.cmd("DATA")).startswith("354")
    await c.send(MESSAGE)
    return await c.reply()


# -- the verbs ----------------------------------------------------------------------


def test_a_transaction_is_spooled_and_committed(run: Runner) -> None:
    async def scenario(c: Client, host: FakeHost, spool: Spool) -> None:
        reply = await transaction(c, ("bob@example.org", "carol@example.org"))
        assert reply.startswith("250 2.0.0 ") and "Message accepted" in reply
        assert (await c.cmd("QUIT")).startswith("221")
        assert await c.closed()

    host, spool = run(scenario)
    [(msgid, envelopes)] = spool.committed.items()
    assert [e.rcpt for e in envelopes] == ["bob@example.org", "carol@example.org"]
    assert {e.sender for e in envelopes} == {"alice@example.com"}
    assert {e.helo for e in envelopes} == {"client.test"}
    assert {e.type for e in envelopes} == {"mda"}
    assert {e.evpid for e in envelopes} == {""}  # the queue names them
    text = spool.text(msgid)
    assert text.startswith(b"Received: from client.test (unknown [127.0.0.1])")
    # line ends become LF, the client's dot-stuffing is undone
    assert text.endswith(b"\nSubject: hi\n\nhello\n.leading dot\n")
    assert b"\nDate:" not in text  # relayed to us: no header added
    assert envelopes[0].message_size == len(text)
    assert host.counters["smtp.message"] == 1
    assert len(host.opened) == 1 and host.closed == host.opened
    # none was ready: the session asked for its own at the first RCPT, and
    # the host for the ones the next sessions will take
    assert len(host.queue.of(m.MessageCreate)) == 1 + host.spool_files.want
    assert len(host.spool_files) == host.spool_files.want == 2


def test_a_ready_spool_file_serves_the_next_transaction(run: Runner) -> None:
    taken: list[str] = []

    async def scenario(c: Client, host: FakeHost, spool: Spool) -> None:
        assert (await transaction(c)).startswith("250 2.0.0")
        ready = [msgid for msgid, _ in host.spool_files._ready]
        asked = len(host.queue.of(m.MessageCreate))
        await c.cmd("MAIL FROM:<alice@example.com>")
        assert (await c.cmd("RCPT TO:<bob@example.org>")).startswith("250")
        assert (await c.cmd("DATA")).startswith("354")
        c.writer.write(MESSAGE)
        reply = await c.reply()
        assert reply.startswith("250 2.0.0"), reply
        # the oldest ready file was taken at the RCPT, and only its
        # replacement was asked for
        taken.append(ready[0])
        assert f" {ready[0]} " in reply
        assert len(host.queue.of(m.MessageCreate)) == asked + 1

    host, spool = run(scenario)
    assert host.counters["smtp.spool.asked"] == 1 and host.counters["smtp.spool.ready"] == 1
    assert taken[0] in spool.committed
    assert spool.text(taken[0]).startswith(b"Received: from client.test")
    assert f"id {taken[0]}".encode() in spool.text(taken[0])


def test_local_submission_gets_date_and_message_id(run: Runner) -> None:
    async def scenario(c: Client, host: FakeHost, spool: Spool) -> None:
        assert (await transaction(c)).startswith("250 2.0.0")

    _host, spool = run(scenario, local_user="alice", listener=Listener(address="socket"),
                      index=-1)
    [(msgid, envelopes)] = spool.committed.items()
    text = spool.text(msgid)
    assert b"\nDate: " in text and b"\nMessage-ID: <" in text
    assert envelopes[0].sockaddr == "local"
    assert b"[" not in text.split(b";")[0]  # a local session has no client address


def test_rcpt_refused_by_lka_passes_its_reply(run: Runner) -> None:
    def lka(msg: Any) -> Any:
        if isinstance(msg, m.RcptCheck) and msg.rcpt.startswith("nobody"):
            return m.RcptResult(False, reply=Reply(550, "5.1.1",
                                                   "<nobody@example.org>: no such user"))
        return lka_accepting(msg)

    async def scenario(c: Client, host: FakeHost, spool: Spool) -> None:
        await c.reply()
        await c.cmd("EHLO client.test")
        await c.cmd("MAIL FROM:<alice@example.com>")
        assert await c.cmd("RCPT TO:<nobody@example.org>") == \
            "550 5.1.1 <nobody@example.org>: no such user"
        # nothing accepted: DATA is refused by the machine
        assert (await c.cmd("DATA")).startswith("5")

    run(scenario, lka=lka)


def test_lka_down_is_a_temporary_failure(run: Runner) -> None:
    def lka(msg: Any) -> Any:
        raise TempFail("lka lost")

    async def scenario(c: Client, host: FakeHost, spool: Spool) -> None:
        await c.reply()
        await c.cmd("EHLO client.test")
        await c.cmd("MAIL FROM:<alice@example.com>")
        assert await c.cmd("RCPT TO:<bob@example.org>") == \
            "451 4.3.0 Temporary failure, try again later"

    run(scenario, lka=lka)


def test_a_failed_commit_is_4xx_and_the_message_is_not_accepted(run: Runner) -> None:
    async def scenario(c: Client, host: FakeHost, spool: Spool) -> None:
        spool.fail_commit = True
        reply = await transaction(c)
        assert reply.startswith("452 4.3.1"), reply
        # the session goes on
        assert (await c.cmd("RSET")).startswith("250")

    host, spool = run(scenario)
    assert spool.committed == {}
    assert "smtp.message" not in host.counters


def test_rset_gives_the_spool_file_back(run: Runner) -> None:
    async def scenario(c: Client, host: FakeHost, spool: Spool) -> None:
        await c.reply()
        await c.cmd("EHLO client.test")
        # twice: first with a file asked for then, then with one asked for ahead
        for _ in range(2):
            await c.cmd("MAIL FROM:<alice@example.com>")
            await c.cmd("RCPT TO:<bob@example.org>")
            assert (await c.cmd("RSET")).startswith("250")
            assert (await c.cmd("NOOP")).startswith("250")
        await c.cmd("QUIT")
        await c.closed()

    host, spool = run(scenario)
    ready = {msgid for msgid, _ in host.spool_files._ready}
    assert len(ready) == host.spool_files.want  # the taken one was replaced
    assert sorted(spool.rolled_back) == sorted(set(spool.files) - ready)
    assert len(spool.rolled_back) == 2


def test_auth_after_starttls_ok_and_failure_counted(run: Runner, pki: Pki) -> None:
    lst = Listener(address="127.0.0.1", port=587, tls=True, auth_optional=True)

    async def scenario(c: Client, host: FakeHost, spool: Spool) -> None:
        await c.reply()
        assert "AUTH" not in await c.cmd("EHLO client.test")
        await starttls(c)
        assert "AUTH PLAIN LOGIN" in await c.cmd("EHLO client.test")
        # AUTH PLAIN \0alice\0wrong
        assert await c.cmd("AUTH PLAIN AGFsaWNlAHdyb25n") == \
            "535 5.7.8 Authentication credentials invalid"
        # AUTH PLAIN \0alice\0secret
        assert (await c.cmd("AUTH PLAIN AGFsaWNlAHNlY3JldA==")).startswith("235")

    host, _ = run(scenario, listener=lst,
                  setup=lambda h: h.contexts.update({0: server_context(pki)}))
    assert host.auth_failures == ["127.0.0.1"]
    assert host.counters["smtp.auth.ok"] == 1 and host.counters["smtp.auth.fail"] == 1


# -- session limits -------------------------------------------------------------------


def test_paused_smtp_turns_sessions_away(run: Runner) -> None:
    async def scenario(c: Client, host: FakeHost, spool: Spool) -> None:
        assert await c.reply() == "421 4.3.2 Service paused, try again later"
        assert await c.closed()

    def pause(host: FakeHost) -> None:
        host.paused_smtp = True

    host, _ = run(scenario, setup=pause)
    assert host.opened == []


@pytest.mark.parametrize(("reason", "reply"), [
    ("too-many-sessions", "421 4.7.0 Too many connections from your address"),
    ("too-many-sessions-total", "421 4.7.0 Too many connections, try again later"),
])
def test_refused_sessions(run: Runner, reason: str, reply: str) -> None:
    async def scenario(c: Client, host: FakeHost, spool: Spool) -> None:
        assert await c.reply() == reply
        assert await c.closed()

    def refuse(host: FakeHost) -> None:
        host.refuse = reason

    host, _ = run(scenario, setup=refuse)
    assert host.opened == []


def test_talking_before_the_greeting_ends_the_session(run: Runner) -> None:
    async def scenario(c: Client, host: FakeHost, spool: Spool) -> None:
        await c.send(b"EHLO spammer.test\r\n")
        assert await c.reply() == "554 5.7.1 Protocol error: talking before the greeting"
        assert await c.closed()

    def delay(host: FakeHost) -> None:
        # the banner waits (long: the client always speaks first here)
        host.greeting_delay, host.greeting_delay_all = 600.0, True

    host, _ = run(scenario, setup=delay)
    assert host.counters["smtp.pregreet"] == 1


def test_idle_session_times_out(run: Runner) -> None:
    async def scenario(c: Client, host: FakeHost, spool: Spool) -> None:
        assert (await c.reply()).startswith("220")
        assert await c.reply() == "421 4.4.2 Timeout, closing connection"
        assert await c.closed()

    def short(host: FakeHost) -> None:
        host.session_timeout = 0.05

    run(scenario, setup=short)


def test_deliveries_per_transaction_are_bounded(run: Runner) -> None:
    def lka(msg: Any) -> Any:
        if isinstance(msg, m.RcptCheck):  # an alias of three deliveries
            return m.RcptResult(True, deliveries=[
                Delivery(dispatcher="local", rcpt=msg.rcpt, dest=f"{msg.rcpt}-{i}",
                         method="maildir")
                for i in range(3)])
        return lka_accepting(msg)

    async def scenario(c: Client, host: FakeHost, spool: Spool) -> None:
        await c.reply()
        await c.cmd("EHLO client.test")
        await c.cmd("MAIL FROM:<alice@example.com>")
        assert (await c.cmd("RCPT TO:<list1@example.org>")).startswith("250")
        assert await c.cmd("RCPT TO:<list2@example.org>") == "452 4.5.3 Too many recipients"
        # the same recipient again costs nothing more
        assert (await c.cmd("RCPT TO:<list1@example.org>")).startswith("250")

    run(scenario, lka=lka, config="smtp limit max-deliveries 4\n")


def test_throttled_auth_is_refused_unchecked(run: Runner, pki: Pki) -> None:
    lst = Listener(address="127.0.0.1", port=587, tls=True, auth_optional=True)

    async def scenario(c: Client, host: FakeHost, spool: Spool) -> None:
        await c.reply()
        await c.cmd("EHLO client.test")
        await starttls(c)
        await c.cmd("EHLO client.test")
        assert await c.cmd("AUTH PLAIN AGFsaWNlAHNlY3JldA==") == \
            "454 4.7.0 Too many authentication attempts, try again later"

    def throttle(host: FakeHost) -> None:
        host.auth_waits = [None]
        host.contexts[0] = server_context(pki)

    saved = limits.AUTH_FAIL_DELAY_MAX
    limits.AUTH_FAIL_DELAY_MAX = 0.0  # the refusal's own wait
    try:
        host, _ = run(scenario, listener=lst, setup=throttle)
    finally:
        limits.AUTH_FAIL_DELAY_MAX = saved
    assert host.lka.of(m.AuthCheck) == []  # the password was never checked
    assert host.counters["smtp.auth.throttled"] == 1


# -- STARTTLS refusals ------------------------------------------------------------------


def test_starttls_not_offered_without_a_context(run: Runner) -> None:
    lst = Listener(address="127.0.0.1", port=25, tls=True)

    async def scenario(c: Client, host: FakeHost, spool: Spool) -> None:
        await c.reply()
        assert "STARTTLS" not in await c.cmd("EHLO client.test")
        assert (await c.cmd("STARTTLS")).startswith("5")

    run(scenario, listener=lst)


def _context() -> ssl.SSLContext:
    # never handshakes in these tests: a server context without a certificate
    return ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)


def test_starttls_context_gone_is_454(run: Runner) -> None:
    lst = Listener(address="127.0.0.1", port=25, tls=True)

    async def scenario(c: Client, host: FakeHost, spool: Spool) -> None:
        await c.reply()
        assert "STARTTLS" in await c.cmd("EHLO client.test")
        host.contexts.clear()
        assert await c.cmd("STARTTLS") == "454 4.7.0 TLS not available"
        assert (await c.cmd("NOOP")).startswith("250")

    run(scenario, listener=lst, setup=lambda h: h.contexts.update({0: _context()}))


def test_commands_pipelined_after_starttls_end_the_session(run: Runner) -> None:
    lst = Listener(address="127.0.0.1", port=25, tls=True)

    async def scenario(c: Client, host: FakeHost, spool: Spool) -> None:
        await c.reply()
        await c.cmd("EHLO client.test")
        await c.send(b"STARTTLS\r\nMAIL FROM:<smuggled@example.com>\r\n")
        reply = await c.reply()
        assert reply.startswith("421"), reply
        assert await c.closed()

    _host, spool = run(scenario, listener=lst, setup=lambda h: h.contexts.update({0: _context()}))
    assert spool.files == {}


def test_cleartext_after_the_220_ends_the_session(run: Runner) -> None:
    lst = Listener(address="127.0.0.1", port=25, tls=True)

    async def scenario(c: Client, host: FakeHost, spool: Spool) -> None:
        await c.reply()
        await c.cmd("EHLO client.test")
        assert (await c.cmd("STARTTLS")).startswith("220")
        # not a TLS ClientHello: commands in clear after the 220
        reply = await c.cmd("MAIL FROM:<smuggled@example.com>")
        assert reply.startswith("421") or reply == "", reply
        assert await c.closed()

    _host, spool = run(scenario, listener=lst, setup=lambda h: h.contexts.update({0: _context()}))
    assert spool.files == {}


# -- filters: decisions as pony_filter returns them, applied by the session -----------


class Filters:
    """lka with filters: a decision per phase, and a data-line filter that
    adds a header (or fails) and gives the message back."""

    def __init__(self, decisions: dict[str, m.FilterDecision] | None = None,
                 data: bool = False, data_error: str = "", down: bool = False) -> None:
        self.decisions = decisions or {}
        self.data, self.data_error, self.down = data, data_error, down
        self.session: Session | None = None
        self.lines: list[str] = []
        self.reports: list[tuple[str, list[str]]] = []

    def answer(self, msg: Any) -> Any:
        if self.down and isinstance(msg, m.FilterPhase | m.FilterBegin):
            raise TempFail("lka lost")
        if isinstance(msg, m.FilterBegin):
            return self.decisions.get("connect", m.FilterDecision())
        if isinstance(msg, m.FilterPhase):
            return self.decisions.get(msg.phase, m.FilterDecision())
        if isinstance(msg, m.FilterDataBegin):
            return m.Ok("yes" if self.data else "no")
        if isinstance(msg, m.FilterData):
            self.notified(msg)
            return m.Ok()
        return lka_accepting(msg)

    def notified(self, msg: Any) -> None:
        if isinstance(msg, m.FilterReport):
            self.reports.append((msg.event, list(msg.params)))
        if not isinstance(msg, m.FilterData):
            return
        self.lines += msg.lines
        if "." not in msg.lines:
            return
        assert self.session is not None
        out, error = ["X-Filtered: yes", *self.lines], self.data_error
        self.lines = []
        asyncio.get_running_loop().call_soon(self.session.filter_output, out, error)

    def events(self) -> list[str]:
        return [e for e, _ in self.reports]


FILTERED = Listener(address="127.0.0.1", port=25, filters=["f"])


def _catch(filters: Filters) -> Callable[[FakeHost], None]:
    def setup(host: FakeHost) -> None:
        real = host.session_opened

        def opened(session: Session) -> None:
            filters.session = session
            real(session)

        host.session_opened = opened  # type: ignore[method-assign]
    return setup


def test_filters_proceed_and_the_data_line_filter_rewrites(run: Runner) -> None:
    filters = Filters(data=True)

    async def scenario(c: Client, host: FakeHost, spool: Spool) -> None:
        assert (await transaction(c)).startswith("250 2.0.0")
        await c.cmd("QUIT")
        await c.closed()

    host, spool = run(scenario, lka=filters.answer, notify=filters.notified, listener=FILTERED,
                      setup=_catch(filters))
    [(msgid, _)] = spool.committed.items()
    text = spool.text(msgid)
    assert text.startswith(b"X-Filtered: yes\nReceived: from client.test")
    assert text.endswith(b"\nhello\n.leading dot\n")
    assert filters.events() == ["link-greeting", "link-identify", "tx-begin", "tx-mail",
                                "tx-rcpt", "tx-data", "tx-commit", "tx-reset"]
    # the transaction id the filters saw is the message id
    assert filters.reports[2] == ("tx-begin", [msgid])
    # lines reached the filters dot-stuffed (docs/filter-protocol.md)
    sent = [ln for msg in host.lka.of(m.FilterData) for ln in msg.lines]
    assert "..leading dot" in sent and sent[-1] == "."
    assert host.lka.of(m.FilterEnd) != []


def test_a_filtered_session_asks_for_its_own_spool_file(run: Runner,
                                                       tmp_path: pathlib.Path) -> None:
    """Its filters know the transaction by the id chosen at MAIL: the spool
    file is asked for under that id, never taken from the ready ones."""
    filters = Filters()
    ready = os.open(tmp_path / "ready", os.O_WRONLY | os.O_CREAT, 0o600)

    def setup(host: FakeHost) -> None:
        _catch(filters)(host)
        host.spool_files._ready.append(("abcdef01", ready))

    async def scenario(c: Client, host: FakeHost, spool: Spool) -> None:
        assert (await transaction(c)).startswith("250 2.0.0")

    host, spool = run(scenario, lka=filters.answer, notify=filters.notified, listener=FILTERED,
                      setup=setup)
    [(msgid, _)] = spool.committed.items()
    assert filters.reports[2] == ("tx-begin", [msgid])
    assert [x.msgid for x in host.queue.of(m.MessageCreate)] == [msgid]
    assert list(host.spool_files._ready) == [("abcdef01", ready)]
    os.close(ready)


def test_filter_reject_reply_passes_unchanged(run: Runner) -> None:
    filters = Filters({"mail-from": m.FilterDecision("reject", "550 no plain mail here")})

    async def scenario(c: Client, host: FakeHost, spool: Spool) -> None:
        await c.reply()
        await c.cmd("EHLO client.test")
        assert await c.cmd("MAIL FROM:<alice@example.com>") == "550 no plain mail here"
        assert (await c.cmd("NOOP")).startswith("250")  # the session goes on

    run(scenario, lka=filters.answer, notify=filters.notified,
        listener=FILTERED)


def test_filter_disconnect_at_rcpt(run: Runner) -> None:
    filters = Filters({"rcpt-to": m.FilterDecision("disconnect", "421 4.7.0 go away")})

    async def scenario(c: Client, host: FakeHost, spool: Spool) -> None:
        await c.reply()
        await c.cmd("EHLO client.test")
        await c.cmd("MAIL FROM:<alice@example.com>")
        assert await c.cmd("RCPT TO:<bob@example.org>") == "421 4.7.0 go away"
        assert await c.closed()

    run(scenario, lka=filters.answer, notify=filters.notified,
        listener=FILTERED)
    assert ("tx-rcpt", [filters.reports[2][1][0], "permfail", "bob@example.org"]) \
        in filters.reports


def test_filter_rewrites_helo_and_sender(run: Runner) -> None:
    filters = Filters({"ehlo": m.FilterDecision("rewrite", "rewritten.test"),
                       "mail-from": m.FilterDecision("rewrite", "bounce@example.net")})

    async def scenario(c: Client, host: FakeHost, spool: Spool) -> None:
        assert (await transaction(c)).startswith("250 2.0.0")

    _, spool = run(scenario, lka=filters.answer, notify=filters.notified,
        listener=FILTERED)
    [envelopes] = spool.committed.values()
    assert envelopes[0].helo == "rewritten.test"
    assert envelopes[0].sender == "bounce@example.net"


def test_filter_rewrite_to_a_bad_address_is_refused(run: Runner) -> None:
    filters = Filters({"mail-from": m.FilterDecision("rewrite", "not an address")})

    async def scenario(c: Client, host: FakeHost, spool: Spool) -> None:
        await c.reply()
        await c.cmd("EHLO client.test")
        assert (await c.cmd("MAIL FROM:<alice@example.com>"))[:1] == "5"

    run(scenario, lka=filters.answer, notify=filters.notified,
        listener=FILTERED)


def test_filter_junk_at_connect_marks_the_message(run: Runner) -> None:
    filters = Filters({"connect": m.FilterDecision("junk")})

    async def scenario(c: Client, host: FakeHost, spool: Spool) -> None:
        assert (await transaction(c)).startswith("250 2.0.0")

    _, spool = run(scenario, lka=filters.answer, notify=filters.notified,
        listener=FILTERED)
    [msgid] = spool.committed
    assert spool.text(msgid).startswith(b"X-Spam: Yes\nReceived: ")


def test_filter_reject_at_connect_gets_no_banner(run: Runner) -> None:
    filters = Filters({"connect": m.FilterDecision("reject", "554 5.7.1 not you")})

    async def scenario(c: Client, host: FakeHost, spool: Spool) -> None:
        assert await c.reply() == "554 5.7.1 not you"
        assert await c.closed()

    run(scenario, lka=filters.answer, notify=filters.notified,
        listener=FILTERED)


def test_filters_unreachable_is_a_421(run: Runner) -> None:
    filters = Filters(down=True)

    async def scenario(c: Client, host: FakeHost, spool: Spool) -> None:
        assert await c.reply() == "421 4.3.0 Temporary failure in filter"
        assert await c.closed()

    run(scenario, lka=filters.answer, notify=filters.notified,
        listener=FILTERED)


def test_data_line_filter_failure_rolls_back(run: Runner) -> None:
    filters = Filters(data=True, data_error="filter crashed")

    async def scenario(c: Client, host: FakeHost, spool: Spool) -> None:
        assert await transaction(c) == "421 4.3.0 Temporary failure in filter"
        assert await c.closed()

    _, spool = run(scenario, lka=filters.answer, notify=filters.notified, listener=FILTERED,
                   setup=_catch(filters))
    assert spool.committed == {}
    assert spool.rolled_back == list(spool.files)


def test_filter_reject_at_commit_rolls_back(run: Runner) -> None:
    filters = Filters({"commit": m.FilterDecision("reject", "554 5.7.1 not this one")})

    async def scenario(c: Client, host: FakeHost, spool: Spool) -> None:
        assert await transaction(c) == "554 5.7.1 not this one"
        assert (await c.cmd("NOOP")).startswith("250")  # the session goes on

    _, spool = run(scenario, lka=filters.answer, notify=filters.notified, listener=FILTERED)
    assert spool.committed == {}
    assert spool.rolled_back == list(spool.files)


def test_a_closed_session_is_freed_without_the_garbage_collector(run: Runner) -> None:
    # every session used to sit in a reference cycle (its filter client held its
    # methods) that only a full collection freed: under 500 sessions, thousands
    # of closed ones piled up (docs/performance.md §1)
    refs: list[weakref.ref[Session]] = []

    async def scenario(c: Client, host: FakeHost, spool: Spool) -> None:
        assert (await transaction(c)).startswith("250")
        assert (await c.cmd("QUIT")).startswith("221")
        assert await c.closed()
        for _ in range(100):
            if host.closed:
                break
            await asyncio.sleep(0.01)
        refs.append(weakref.ref(host.closed[0]))
        host.opened.clear()
        host.closed.clear()

    gc.collect()
    gc.disable()
    try:
        run(scenario)
        assert refs and refs[0]() is None
    finally:
        gc.enable()
