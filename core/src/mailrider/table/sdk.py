"""Backend side of the stdio table protocol 0.1: the SDK for table authors.

A backend subclasses :class:`Backend`, overrides the operations it supports
and calls :func:`run`::

    class Users(Backend):
        services = ("userinfo",)

        def __init__(self, table_name: str, config_path: str | None) -> None:
            super().__init__(table_name, config_path)
            if config_path is None:
                raise BackendError("usage: table-users CONFIG")
            self.config = read_config(config_path, required=("dbpath",))

        async def lookup(self, service: str, key: str) -> str | None:
            ...

    if __name__ == "__main__":
        sys.exit(run(Users))

Invariants of :func:`run`:

- stdout carries only protocol lines: when it runs on the real stdout, the
  protocol gets a private copy of the descriptor and ``sys.stdout`` (and fd 1)
  are pointed at stderr, so a stray ``print`` cannot corrupt the stream.
- Requests are dispatched concurrently: ``async def`` handlers run as tasks
  on the event loop, plain handlers in a thread pool (or inline when the class
  says ``blocking = False``), so one slow lookup does not hold up the others.
  Replies are written as they complete, so their order may differ from the
  requests', and all replies of one event-loop turn leave in one write.
- Every request with an id gets exactly one reply. Unsupported services and
  operations, exceptions, values that are empty or contain CR/LF are answered
  ``error``; only a :class:`BackendError`'s own message is sent, never the
  text of another exception (it could hold a secret).
- The table name is the one of the handshake (``config|tablename|``), which
  holds even when ``argv[0]`` is not the table name (interpreters, shebang
  scripts); the config path is ``argv[1]``.
- The command line is the daemon's (the program name, then at most a config
  path): ``--help`` and ``--version`` answer and exit 0 before any protocol
  I/O; any other option, or a second argument, exits 2 with the usage.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import importlib.metadata
import inspect
import logging
import os
import socket
import stat
import sys
from collections.abc import Awaitable, Callable, Iterable
from typing import IO, ClassVar

from mailrider import __version__, limits
from mailrider.errors import ConfigError
from mailrider.table import protocol
from mailrider.table.base import SERVICES
from mailrider.table.protocol import OPS, PROTOCOL_VERSION, LineSplitter, ProtocolError

__all__ = [
    "PROTOCOL_VERSION",
    "Backend",
    "BackendError",
    "ConfigFileError",
    "command_line",
    "config_line",
    "launch",
    "read_config",
    "run",
]

logger = logging.getLogger("mailrider.table.sdk")
_ERROR_MAX = 200


class BackendError(Exception):
    """A failure whose message is safe to send to the daemon (``error|message``)."""


class ConfigFileError(ConfigError):
    """A problem in a backend's config file; ``str()`` is ``file:line: message``."""

    def __str__(self) -> str:
        if self.file and self.line:
            return f"{self.file}:{self.line}: {self.message}"
        if self.file:
            return f"{self.file}: {self.message}"
        return self.message


class Backend:
    """Base of a table backend.

    Subclass and override any of ``check(service, key) -> bool | None``,
    ``lookup(service, key) -> str | None``, ``fetch(service) -> str | None``,
    ``update() -> None``. Return None (or False for check) for "not found";
    raise :class:`BackendError` (or any exception) for a temporary error.
    Methods may be plain or ``async def``. Operations not overridden are
    answered ``error|unsupported operation``.

    ``services`` are the services registered in the handshake; override
    :meth:`registered` to decide them at run time (e.g. from the config).
    Set ``blocking = False`` when the plain methods never block (in-memory
    data): they then run on the event loop instead of in a thread.
    """

    services: ClassVar[tuple[str, ...]] = ()
    blocking: ClassVar[bool] = True

    def __init__(self, table_name: str, config_path: str | None) -> None:
        self.table_name = table_name
        self.config_path = config_path

    def registered(self) -> tuple[str, ...]:
        """The services to register; by default the class's ``services``."""
        return tuple(self.services)

    def check(self, service: str, key: str) -> bool | Awaitable[bool | None] | None:
        raise NotImplementedError

    def lookup(self, service: str, key: str) -> str | Awaitable[str | None] | None:
        raise NotImplementedError

    def fetch(self, service: str) -> str | Awaitable[str | None] | None:
        raise NotImplementedError

    def update(self) -> Awaitable[None] | None:
        raise NotImplementedError


# -- config files ----------------------------------------------------------


def _config_key(line: str) -> str:
    """The key of a stripped, non-comment config line (it ends at a blank or colon)."""
    for i, c in enumerate(line):
        if c in " \t:":
            return line[:i]
    return line


def config_line(path: str, key: str) -> int:
    """The line where ``key`` is set in the config file ``path`` (0 when it is not),
    for ``file:line`` errors found after :func:`read_config`."""
    try:
        with open(path, encoding="utf-8") as f:
            for n, raw in enumerate(f, 1):
                line = raw.strip(" \t\r\n\f\v")
                if line and not line.startswith("#") and _config_key(line) == key:
                    return n
    except (OSError, UnicodeDecodeError):
        pass
    return 0


def read_config(
    path: str,
    *,
    required: Iterable[str] = (),
    known: Iterable[str] | None = None,
    allow_duplicates: bool = False,
) -> dict[str, str]:
    """Read a backend config file in the common syntax of docs/table-protocol.md §10.1.

    One ``key value`` per line; the key ends at the first space, tab or
    colon; then blanks, and a colon followed by a blank (or the end of the
    line), are skipped, so ``host db1``, ``host: db1`` and ``host:  db1`` are
    equal. Blank lines and lines starting with ``#`` are ignored. A key
    without a value is an error, so is a duplicate key (unless
    ``allow_duplicates``; the first value is kept), an unknown key when
    ``known`` is given, and a missing ``required`` key. Errors raise
    :class:`ConfigFileError`.
    """
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise ConfigFileError(f"cannot read: {exc.strerror or exc}", path) from None
    except UnicodeDecodeError:
        raise ConfigFileError("not valid UTF-8", path) from None
    known_set = None if known is None else frozenset(known)
    values: dict[str, str] = {}
    lineno = 0
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip(" \t\r\f\v")
        if not line or line.startswith("#"):
            continue
        key = _config_key(line)
        rest = line[len(key):].lstrip(" \t")
        if rest.startswith(":") and (len(rest) == 1 or rest[1] in " \t"):
            rest = rest[1:].lstrip(" \t")
        if not key:
            raise ConfigFileError("missing key", path, lineno)
        if not rest:
            raise ConfigFileError(f"no value for {key}", path, lineno)
        if known_set is not None and key not in known_set:
            raise ConfigFileError(f"unknown key {key}", path, lineno)
        if key in values:
            if not allow_duplicates:
                raise ConfigFileError(f"duplicate key {key}", path, lineno)
            continue
        values[key] = rest
    for key in required:
        if key not in values:
            raise ConfigFileError(f"missing required key {key}", path)
    return values


# -- the protocol loop -----------------------------------------------------


def _clean(message: str) -> str:
    return " ".join(message.split())[:_ERROR_MAX]


class _Server(asyncio.Protocol):
    """Reads the host's lines, dispatches requests, batches replies."""

    def __init__(
        self,
        factory: Callable[[str, str | None], Backend],
        config_path: str | None,
        fallback_name: str,
        pool: concurrent.futures.ThreadPoolExecutor,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.factory = factory
        self.config_path = config_path
        self.name = fallback_name
        self.pool = pool
        self.config: dict[str, str] = {}
        self.backend: Backend | None = None
        self.registered: frozenset[str] = frozenset()
        self.handlers: dict[str, Callable[..., object]] = {}
        self.asynchronous: dict[str, bool] = {}
        self.done: asyncio.Future[int] = self.loop.create_future()
        self.lines = LineSplitter()
        self.out: list[bytes] = []
        self.writer: asyncio.WriteTransport | None = None
        self.reader: asyncio.ReadTransport | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    # transport plumbing

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.ReadTransport)
        self.reader = transport
        if isinstance(transport, asyncio.WriteTransport):
            self.writer = transport  # a socket: one transport both ways

    def pause_writing(self) -> None:
        if self.reader is not None:
            self.reader.pause_reading()

    def resume_writing(self) -> None:
        if self.reader is not None:
            self.reader.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.finish(0)

    def eof_received(self) -> bool | None:
        return False

    def finish(self, status: int) -> None:
        if not self.done.done():
            self.done.set_result(status)

    def send(self, line: str) -> None:
        if not self.out:
            self.loop.call_soon(self.flush)
        self.out.append(line.encode("utf-8", "surrogateescape"))

    def flush(self) -> None:
        if self.writer is None:
            return
        data = b"".join(self.out)
        self.out.clear()
        if not self.writer.is_closing():
            self.writer.write(data)

    def data_received(self, data: bytes) -> None:
        lines, dropped = self.lines.feed(data)
        if dropped:
            logger.error(
                "table %s: %d request line(s) longer than %d bytes discarded",
                self.name,
                dropped,
                limits.TABLE_LINE_MAX,
            )
        for raw in lines:
            line = raw.decode("utf-8", "surrogateescape")
            if self.backend is None:
                self.on_config(line)
                if self.done.done():
                    return
            else:
                self.on_request(line)

    # handshake

    def on_config(self, line: str) -> None:
        try:
            item = protocol.parse_config(line)
        except ProtocolError:
            logger.error("table %s: unexpected line in handshake: %.80r", self.name, line)
            self.finish(1)
            return
        if item is None:
            self.start_backend()
            return
        key, value = item
        self.config[key] = value
        if key == "tablename":
            self.name = value

    def start_backend(self) -> None:
        try:
            protocol.check_version(self.config.get("protocol"))
        except ProtocolError as exc:
            logger.error("table %s: %s", self.name, exc)
            self.finish(1)
            return
        try:
            backend = self.factory(self.name, self.config_path)
            services = backend.registered()
        except (ConfigError, BackendError) as exc:
            logger.error("table %s: %s", self.name, exc)
            self.finish(1)
            return
        except Exception as exc:
            logger.error("table %s: cannot start: %s", self.name, type(exc).__name__)
            self.finish(1)
            return
        bad = [s for s in services if s not in SERVICES]
        if bad or not services:
            logger.error("table %s: cannot register services %r", self.name, bad or "(none)")
            self.finish(1)
            return
        self.registered = frozenset(services)
        for op in OPS:
            method = getattr(backend, op)
            if getattr(type(backend), op) is getattr(Backend, op):
                continue
            self.handlers[op] = method
            self.asynchronous[op] = inspect.iscoroutinefunction(method)
        self.backend = backend
        self.send(protocol.register_lines(services))

    # requests

    def on_request(self, line: str) -> None:
        try:
            request = protocol.parse_request(line)
        except ProtocolError as exc:
            if exc.op is None:
                logger.error("table %s: %s: %.80r", self.name, exc, line)
                return
            if exc.op in OPS:
                logger.error("table %s: %s: %.80r", self.name, exc, line)
                reply = "malformed request"
            else:
                logger.error("table %s: unsupported operation %.40r", self.name, exc.op)
                reply = "unsupported operation"
            if exc.rid:
                self.send(protocol.format_error(exc.op, exc.rid, reply))
            return
        op, rid, service, key = request.op, request.rid, request.service, request.key
        if service is not None and service not in self.registered:
            self.send(protocol.format_error(op, rid, "unsupported service"))
            return
        method = self.handlers.get(op)
        if method is None:
            self.send(protocol.format_error(op, rid, "unsupported operation"))
            return
        args: tuple[str, ...]
        if op == "update":
            args = ()
        elif key is None:
            args = (service or "",)
        else:
            args = (service or "", key)
        if self.asynchronous[op]:
            self.spawn(op, rid, method, args)
        elif self.backend is not None and self.backend.blocking:
            future = self.loop.run_in_executor(self.pool, method, *args)
            future.add_done_callback(functools.partial(self.on_done, op, rid))
        else:
            try:
                result = method(*args)
            except Exception as exc:
                self.send(self.error(op, rid, exc))
                return
            self.complete(op, rid, result)

    def spawn(
        self, op: str, rid: str, method: Callable[..., object], args: tuple[str, ...]
    ) -> None:
        task = self.loop.create_task(self.run_async(op, rid, method, args))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def run_async(
        self, op: str, rid: str, method: Callable[..., object], args: tuple[str, ...]
    ) -> None:
        try:
            result = method(*args)
            while inspect.isawaitable(result):
                result = await result
        except Exception as exc:
            self.send(self.error(op, rid, exc))
            return
        self.send(self.format(op, rid, result))

    def on_done(self, op: str, rid: str, future: asyncio.Future[object]) -> None:
        if future.cancelled():
            return
        exc = future.exception()
        if isinstance(exc, Exception):
            self.send(self.error(op, rid, exc))
        elif exc is None:
            self.complete(op, rid, future.result())

    def complete(self, op: str, rid: str, result: object) -> None:
        if inspect.isawaitable(result):
            self.spawn(op, rid, lambda: result, ())
        else:
            self.send(self.format(op, rid, result))

    def format(self, op: str, rid: str, result: object) -> str:
        if op == "update":
            return protocol.format_ok(rid)
        if op == "check":
            if result:
                return protocol.format_found(op, rid)
            return protocol.format_not_found(op, rid)
        if result is None:
            return protocol.format_not_found(op, rid)
        if not isinstance(result, str) or not result:
            logger.error(
                "table %s: %s returned %s, not a string",
                self.name,
                op,
                "an empty string" if result == "" else type(result).__name__,
            )
            return protocol.format_error(op, rid, "invalid value")
        if "\r" in result or "\n" in result:
            logger.error("table %s: %s value contains CR or LF", self.name, op)
            return protocol.format_error(op, rid, "invalid value")
        return protocol.format_found(op, rid, result)

    def error(self, op: str, rid: str, exc: Exception) -> str:
        if isinstance(exc, BackendError):
            message = _clean(str(exc))
            logger.warning("table %s: %s failed: %s", self.name, op, message)
        else:
            message = "internal error"
            logger.error("table %s: %s failed: %s", self.name, op, type(exc).__name__)
        return protocol.format_error(op, rid, message)


class _Writer(asyncio.BaseProtocol):
    def __init__(self, server: _Server) -> None:
        self.server = server

    def pause_writing(self) -> None:
        self.server.pause_writing()

    def resume_writing(self) -> None:
        self.server.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.finish(0)


def _fd(stream: int | IO[bytes]) -> int:
    return stream if isinstance(stream, int) else stream.fileno()


def _same_socket(a: int, b: int) -> bool:
    sa, sb = os.fstat(a), os.fstat(b)
    return stat.S_ISSOCK(sa.st_mode) and (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


async def _serve(
    factory: Callable[[str, str | None], Backend],
    config_path: str | None,
    name: str,
    in_fd: int,
    out_fd: int,
    threads: int,
) -> int:
    loop = asyncio.get_running_loop()
    with concurrent.futures.ThreadPoolExecutor(
        max_workers=max(1, threads), thread_name_prefix="table"
    ) as pool:
        server = _Server(factory, config_path, name, pool)
        reader: asyncio.BaseTransport
        writer: asyncio.BaseTransport
        if _same_socket(in_fd, out_fd):
            # docs/table-protocol.md §1: one socketpair end is both stdin and stdout. Pipe
            # transports would take the peer's requests for a hang-up.
            os.close(out_fd)
            sock = socket.socket(fileno=in_fd)
            reader, _ = await loop.create_unix_connection(lambda: server, sock=sock)
            writer = reader
        else:
            writer, _ = await loop.connect_write_pipe(
                lambda: _Writer(server), os.fdopen(out_fd, "wb", buffering=0)
            )
            assert isinstance(writer, asyncio.WriteTransport)
            server.writer = writer
            reader, _ = await loop.connect_read_pipe(
                lambda: server, os.fdopen(in_fd, "rb", buffering=0)
            )
        try:
            status = await server.done
        finally:
            server.flush()
            for task in list(server.tasks):
                task.cancel()
            reader.close()
            writer.close()
            pool.shutdown(wait=False, cancel_futures=True)
    return status


def _not_dumpable() -> None:
    """Keep other processes of this user out of our memory and environment
    (database passwords): no ptrace, no /proc/<pid>/mem or environ. Linux only."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE, 0
    except (OSError, AttributeError):
        pass


USAGE = """\
usage: {prog} [CONFIG]
       {prog} --help | --version

A mailrider table backend. mailriderd starts it for each table line that
names it ("table NAME BACKEND:/absolute/config/path") and speaks the stdio
table protocol 0.1 with it over stdin and stdout; CONFIG is that path.
"""


def command_line(prog: str, args: list[str]) -> int | None:
    """Answer ``--help``/``--version``; None when ``args`` are the daemon's (a path or nothing).

    Returns the exit status when the program must stop: 0 after help or the
    version, 2 (usage on stderr) for an unknown option or extra arguments.
    """
    if not args or (len(args) == 1 and not args[0].startswith("-")):
        return None
    if args == ["--help"] or args == ["-h"]:
        print(USAGE.format(prog=prog), end="")
        return 0
    if args == ["--version"]:
        print(f"{prog} {__version__}")
        return 0
    bad = next((a for a in args if a.startswith("-")), None)
    problem = f"unknown option {bad}" if bad is not None else "too many arguments"
    print(f"{prog}: {problem}\n" + USAGE.format(prog=prog), end="", file=sys.stderr)
    return 2


def run(
    backend_factory: Callable[[str, str | None], Backend],
    *,
    argv: list[str] | None = None,
    stdin: int | IO[bytes] | None = None,
    stdout: int | IO[bytes] | None = None,
    threads: int = 8,
) -> int:
    """Serve the table protocol until the daemon closes the pipe; return the exit status.

    ``argv`` defaults to ``sys.argv`` (``argv[1]`` = config path, if any; see
    :func:`command_line` for the options); ``stdin``/``stdout`` (file
    descriptors or binary files) default to the process's own. The backend is
    built with ``backend_factory(table name, config path)`` once the handshake
    is read; if that raises, the error is logged and 1 returned. Logs go to
    stderr.
    """
    argv = sys.argv if argv is None else argv
    name = os.path.basename(argv[0]) if argv else "table"
    status = command_line(name, list(argv[1:]))
    if status is not None:
        return status
    _not_dumpable()
    config_path = argv[1] if len(argv) > 1 else None
    if not logging.getLogger().handlers:
        logging.basicConfig(
            stream=sys.stderr, level=logging.INFO, format="%(levelname)s: %(message)s"
        )
    in_fd = os.dup(0 if stdin is None else _fd(stdin))
    if os.isatty(in_fd):
        # a person ran it by hand: say why nothing happens
        print(f"{name}: waiting for the table protocol on stdin (mailriderd starts this "
              "program; --help)", file=sys.stderr)
    if stdout is None:
        # the protocol keeps a private fd 1; stray writes go to stderr instead
        out_fd = os.dup(1)
        sys.stdout.flush()
        os.dup2(2, 1)
        sys.stdout = sys.stderr
    else:
        out_fd = os.dup(_fd(stdout))
    try:
        return asyncio.run(_serve(backend_factory, config_path, name, in_fd, out_fd, threads))
    except KeyboardInterrupt:
        return 1


def launch(args: list[str] | None = None) -> int:
    """Start an entry-point backend: ``args`` = [``module:attr``, table name, config?].

    Used by :func:`mailrider.table.proc.find_backend`'s launcher. The object
    named is a :class:`Backend` subclass (served with :func:`run`) or a
    function returning the exit status. The backend sees ``sys.argv`` =
    [table name, config path].
    """
    args = sys.argv[1:] if args is None else args
    if len(args) < 2:
        print("usage: launch module:attr tablename [config]", file=sys.stderr)
        return 2
    target = args[0]
    sys.argv = list(args[1:])
    obj = importlib.metadata.EntryPoint(name=args[1], value=target, group="mailrider.tables").load()
    if isinstance(obj, type) and issubclass(obj, Backend):
        return run(obj)
    status = obj()
    return status if isinstance(status, int) else 0
