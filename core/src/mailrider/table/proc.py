"""Host side of the stdio table protocol 0.1 (docs/table-protocol.md).

A proc table is an external program: it is found by :func:`find_backend`,
started with one end of a socketpair as both its stdin and stdout, greeted
with the four ``config|`` lines and answers with ``register|`` lines.
:class:`ProcTable` then speaks the request/reply lines of docs/table-protocol.md §3 and §4.

Invariants, where we are deliberately stricter or more robust than OpenSMTPD:

- Requests are pipelined: any number may be in flight; replies are matched to
  requests by id, whatever their order. Ids are unique among requests in flight.
- Every request has a deadline; a request that is not answered in time, that
  is answered with ``error`` or with a malformed reply, raises
  :class:`~mailrider.errors.TempFail`. A bad line is logged, never fatal.
- A key containing CR or LF is never written to the backend.
- A backend that dies or closes the pipe fails every request in flight with
  TempFail, answers TempFail while it is down and is restarted with
  exponential backoff (``TABLE_RESTART_MIN`` doubling up to
  ``TABLE_RESTART_MAX``) and a fresh handshake.
- Writes are batched: all requests issued in one event-loop turn leave in one
  write; replies are split from a bounded buffer (``TABLE_LINE_MAX``).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import logging
import os
import random
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

import mailrider
from mailrider import limits, paths
from mailrider.errors import TempFail
from mailrider.table.base import SERVICES, Table

logger = logging.getLogger("mailrider.table")

#: entry-point group through which installed distributions provide backends
ENTRY_POINT_GROUP = "mailrider.tables"

#: in an argv template, the place of the table name (see :class:`ProcTable`)
TABLE_NAME_ARG = "{tablename}"

PROTOCOL_VERSION = "0.1"

# The launcher for entry-point backends. A Python interpreter needs its real
# argv[0] to find its virtual environment, so the table name cannot go there;
# it is passed as an argument and mailrider.table.sdk.launch() makes it the
# backend's sys.argv[0].
_LAUNCH_CODE = "import sys; from mailrider.table.sdk import launch; sys.exit(launch())"

_OPS = frozenset({"check", "lookup", "fetch", "update"})

_Result = bool | str | None


def find_backend(backend: str) -> tuple[list[str] | None, list[str]]:
    """Find the program of the backend named ``backend``.

    Searched in order: the ``mailrider.tables`` entry points of installed
    distributions (the entry point's name is the backend name, its value
    ``module:function``), then an executable ``table-<backend>`` in each of
    :func:`mailrider.paths.libexec_dirs`, then in OpenSMTPD's own folders
    (:func:`mailrider.paths.opensmtpd_libexec_dirs`), so the C backends an
    administrator installed for OpenSMTPD answer the same ``table`` line
    (they speak the same protocol: docs/table-protocol.md). Returns ``(argv template, places
    searched)``; the template is None when nothing was found. The places are
    meant for the error message.
    """
    searched: list[str] = []
    if (
        not backend
        or backend in (".", "..")
        or any(c in backend for c in ("/", "\0", "|", "\r", "\n"))
    ):
        return None, searched
    searched.append(f"entry point {backend!r} of group {ENTRY_POINT_GROUP}")
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP, name=backend):
        return [sys.executable, "-c", _LAUNCH_CODE, ep.value, TABLE_NAME_ARG], searched
    for folder in (*paths.libexec_dirs(), *paths.opensmtpd_libexec_dirs()):
        path = os.path.join(folder, "table-" + backend)
        searched.append(path)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return [path], searched
    return None, searched


class BackendProcess(Protocol):
    """What :class:`ProcTable` needs of a running backend."""

    @property
    def pid(self) -> int: ...

    @property
    def returncode(self) -> int | None: ...

    async def wait(self) -> int: ...

    def terminate(self) -> None: ...

    def kill(self) -> None: ...


#: starts the backend of a table elsewhere (in mailriderd, the parent starts it
#: as the program user): returns its stdio socket, the read end of its stderr
#: and its pid
Spawner = Callable[[], Awaitable[tuple[socket.socket, int, int]]]


class _RemoteProcess:
    """A backend another process started: its end is the end of its stderr.

    Its exit status is unknown here (reported as -1). terminate() and kill()
    only let go of it: its stdio is closed by then, on which a backend exits,
    and its starter stops whatever is left when the table starts again.
    """

    def __init__(self, pid: int, ended: asyncio.Future[None]) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._ended = ended

    async def wait(self) -> int:
        await asyncio.shield(self._ended)
        self.returncode = -1
        return -1

    def terminate(self) -> None:
        if not self._ended.done():
            self._ended.set_result(None)

    kill = terminate


def backend_command(name: str, argv: list[str], config_path: str | None) -> tuple[str, list[str]]:
    """The executable and argv that start the backend of table ``name``."""
    if TABLE_NAME_ARG in argv:
        args = [name if a == TABLE_NAME_ARG else a for a in argv]
    else:
        args = [name, *argv[1:]]
    if config_path is not None:
        args.append(config_path)
    return argv[0], args


def _timestamp() -> str:
    usec = time.time_ns() // 1000
    return f"{usec // 1_000_000}.{usec % 1_000_000:06d}"


class _Pending:
    __slots__ = ("deadline", "future", "op")

    def __init__(self, op: str, future: asyncio.Future[_Result], deadline: float) -> None:
        self.op = op
        self.future = future
        self.deadline = deadline


class _Wire(asyncio.Protocol):
    """The socket to one backend process: line splitting and batched writes."""

    def __init__(
        self,
        on_line: Callable[[bytes], None],
        on_lost: Callable[[str], None],
        name: str,
    ) -> None:
        self._on_line = on_line
        self._on_lost = on_lost
        self._name = name
        self._buffer = b""
        self._skipping = False
        self._out: list[bytes] = []
        self._transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        if b"\n" not in data:
            self._buffer += data
            if len(self._buffer) > limits.TABLE_LINE_MAX:
                if not self._skipping:
                    logger.warning(
                        "table %s: reply line longer than %d bytes discarded",
                        self._name,
                        limits.TABLE_LINE_MAX,
                    )
                self._skipping = True
                self._buffer = b""
            return
        lines = (self._buffer + data).split(b"\n")
        self._buffer = lines.pop()
        if self._skipping:
            del lines[0]
            self._skipping = False
        on_line = self._on_line
        for line in lines:
            if len(line) > limits.TABLE_LINE_MAX:
                logger.warning("table %s: reply line too long, discarded", self._name)
                continue
            on_line(line)

    def eof_received(self) -> bool | None:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._on_lost("closed the connection")

    def send(self, data: bytes) -> None:
        if not self._out:
            self._loop.call_soon(self._flush)
        self._out.append(data)

    def _flush(self) -> None:
        data = b"".join(self._out)
        self._out.clear()
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


class _StderrLog(asyncio.Protocol):
    """The backend's stderr, logged line by line under the table's name."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._buffer = b""
        self.finished: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.finished.done():
            self.finished.set_result(None)

    def data_received(self, data: bytes) -> None:
        *lines, self._buffer = (self._buffer + data).split(b"\n")
        if len(self._buffer) > limits.TABLE_LINE_MAX:
            lines.append(self._buffer)
            self._buffer = b""
        for line in lines:
            self._log(line)

    def eof_received(self) -> bool | None:
        if self._buffer:
            self._log(self._buffer)
            self._buffer = b""
        return False

    def _log(self, line: bytes) -> None:
        text = line[:1000].decode("utf-8", "replace").rstrip("\r")
        logger.info("table %s: backend: %s", self._name, text)


class ProcTable(Table):
    """A table answered by an external program over the stdio protocol.

    ``argv`` is an argv template as returned by :func:`find_backend`:
    ``argv[0]`` is the program executed. If the template contains
    :data:`TABLE_NAME_ARG`, that entry is replaced by the table name and
    ``argv`` is otherwise used as is (wrappers such as the Python launcher,
    which need their real argv[0]); if not, the program sees ``argv[0]`` = the
    table name, as OpenSMTPD starts ``table-*`` programs. ``config_path``, when
    given, is appended as the last argument (``argv[1]`` for a plain program).
    """

    def __init__(
        self,
        name: str,
        argv: list[str],
        config_path: str | None,
        *,
        timeout: float = limits.TABLE_REQUEST_TIMEOUT,
        smtpd_version: str = mailrider.__version__,
        handshake_timeout: float = limits.TABLE_HANDSHAKE_TIMEOUT,
        restart_min: float = limits.TABLE_RESTART_MIN,
        restart_max: float = limits.TABLE_RESTART_MAX,
        spawner: Spawner | None = None,
    ) -> None:
        super().__init__(name)
        #: None: start the backend here, as a child of this process
        self.spawner = spawner
        if not name or any(c in name for c in "|\r\n\0"):
            raise ValueError(f"invalid table name {name!r}")
        if not argv:
            raise ValueError("empty argv template")
        self.argv = list(argv)
        self.config_path = config_path
        self.timeout = timeout
        self.smtpd_version = smtpd_version
        self.handshake_timeout = handshake_timeout
        self.restart_min = restart_min
        self.restart_max = restart_max
        self.services = frozenset()
        self._state = "new"  # new, up, down, closed
        self._pending: dict[str, _Pending] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._proc: BackendProcess | None = None
        self._wire: _Wire | None = None
        self._generation = 0
        self._handshake: asyncio.Future[frozenset[str]] | None = None
        self._registering: set[str] = set()
        self._early_loss: str | None = None
        self._started_at = 0.0
        self._delay = restart_min
        self._tasks: set[asyncio.Task[None]] = set()
        self._stderr: dict[
            BackendProcess, tuple[asyncio.ReadTransport, _StderrLog]
        ] = {}
        self._restarter: asyncio.Task[None] | None = None
        # set while start() runs: requests that arrive meanwhile (lka serves
        # as soon as it runs) wait for the first handshake instead of failing
        self._starting: asyncio.Future[None] | None = None
        self._rng = random.Random()
        self._prefix = f"table|{PROTOCOL_VERSION}|"

    # -- life cycle -------------------------------------------------------

    def _command(self) -> tuple[str, list[str]]:
        return backend_command(self.name, self.argv, self.config_path)

    @property
    def running(self) -> bool:
        """True while the backend is up and answering requests."""
        return self._state == "up"

    @property
    def pid(self) -> int | None:
        """The process id of the current backend, if any."""
        return None if self._proc is None else self._proc.pid

    async def start(self) -> None:
        """Start the backend and complete the handshake; TempFail if it cannot."""
        if self._state != "new":
            raise RuntimeError(f"table {self.name}: already started")
        self._starting = asyncio.get_running_loop().create_future()
        try:
            await self._spawn()
            self._state = "up"
        finally:
            self._starting.set_result(None)

    async def close(self) -> None:
        """Stop the backend: close its pipe, let it exit, then terminate it."""
        if self._state == "closed":
            return
        self._state = "closed"
        if self._restarter is not None:
            self._restarter.cancel()
        self._fail_all(TempFail(f"table {self.name}: closed"))
        if self._wire is not None:
            self._wire.close()
        if self._proc is not None:
            await self._reap(self._proc, grace=2.0)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._restarter is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._restarter

    async def _spawn_here(self) -> tuple[socket.socket, int, asyncio.subprocess.Process]:
        executable, args = self._command()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        err_read, err_write = os.pipe()
        try:
            proc = await asyncio.create_subprocess_exec(
                *args,
                executable=executable,
                stdin=theirs.fileno(),
                stdout=theirs.fileno(),
                stderr=err_write,
                close_fds=True,
            )
        except OSError as exc:
            ours.close()
            os.close(err_read)
            raise TempFail(
                f"table {self.name}: cannot start {executable}: {exc.strerror or exc}"
            ) from exc
        finally:
            theirs.close()
            os.close(err_write)
        return ours, err_read, proc

    async def _spawn(self) -> None:
        loop = asyncio.get_running_loop()
        self._generation += 1
        generation = self._generation
        proc: BackendProcess
        if self.spawner is not None:
            ours, err_read, pid = await self.spawner()
        else:
            ours, err_read, local = await self._spawn_here()
        # stderr: our own pipe, so that close() can close it (asyncio's would
        # outlive the loop when a grandchild keeps it open)
        log = _StderrLog(self.name)
        stderr, _ = await loop.connect_read_pipe(
            lambda: log, os.fdopen(err_read, "rb", buffering=0)
        )
        proc = local if self.spawner is None else _RemoteProcess(pid, log.finished)
        self._proc = proc
        self._stderr[proc] = (stderr, log)
        self._handshake = loop.create_future()
        self._registering = set()
        self._early_loss = None

        def on_line(line: bytes) -> None:
            if generation == self._generation:
                self._on_line(line)

        def on_lost(why: str) -> None:
            self._lost(generation, why)

        wire = _Wire(on_line, on_lost, self.name)
        self._wire = wire
        await loop.create_unix_connection(lambda: wire, sock=ours)
        self._track(self._watch(proc, generation))
        wire.send(
            (
                f"config|smtpd-version|{self.smtpd_version}\n"
                f"config|protocol|{PROTOCOL_VERSION}\n"
                f"config|tablename|{self.name}\n"
                "config|ready\n"
            ).encode()
        )
        try:
            services = await asyncio.wait_for(self._handshake, self.handshake_timeout)
            if self._early_loss is not None:
                raise TempFail(f"table {self.name}: backend {self._early_loss} after the handshake")
        except (TimeoutError, TempFail) as exc:
            self._generation += 1
            wire.close()
            await self._reap(proc, grace=0.0)
            if isinstance(exc, TempFail):
                raise
            raise TempFail(
                f"table {self.name}: backend did not finish the handshake within "
                f"{self.handshake_timeout:g}s"
            ) from None
        finally:
            self._handshake = None
        self.services = services
        self._started_at = loop.time()
        logger.info(
            "table %s: backend pid %d ready, services=%s",
            self.name,
            proc.pid,
            ",".join(sorted(self.services)),
        )

    def _track(self, coro: object) -> None:
        assert asyncio.iscoroutine(coro)
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _watch(self, proc: BackendProcess, generation: int) -> None:
        status = await proc.wait()
        self._lost(generation, f"exited with status {status}")

    async def _reap(self, proc: BackendProcess, *, grace: float) -> None:
        if proc.returncode is None and grace > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), grace)
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 2.0)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        # let the last stderr lines (a traceback, say) in, then close the pipe
        stderr = self._stderr.pop(proc, None)
        if stderr is not None:
            transport, log = stderr
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(log.finished), 0.5)
            transport.close()

    def _lost(self, generation: int, why: str) -> None:
        if generation != self._generation:
            return
        if self._handshake is not None and not self._handshake.done():
            self._handshake.set_exception(
                TempFail(f"table {self.name}: backend {why} during the handshake")
            )
            return
        if self._state != "up":
            # between the end of the handshake and the table going up
            self._early_loss = why
            return
        self._state = "down"
        self._generation += 1
        logger.error(
            "table %s: backend %s; %d request(s) failed", self.name, why, len(self._pending)
        )
        self._fail_all(TempFail(f"table {self.name}: backend {why}"))
        if self._wire is not None:
            self._wire.close()
        loop = asyncio.get_running_loop()
        if loop.time() - self._started_at >= self.restart_max:
            self._delay = self.restart_min
        self._restarter = loop.create_task(self._restart(self._proc))

    async def _restart(self, old: BackendProcess | None) -> None:
        if old is not None:
            await self._reap(old, grace=1.0)
            logger.info("table %s: old backend exited with status %s", self.name, old.returncode)
        while self._state == "down":
            delay = self._delay
            self._delay = min(delay * 2, self.restart_max)
            logger.warning("table %s: restarting backend in %gs", self.name, delay)
            await asyncio.sleep(delay)
            if self._state != "down":
                return
            try:
                await self._spawn()
            except TempFail as exc:
                logger.error("%s", exc)
                continue
            self._state = "up"

    # -- reading ----------------------------------------------------------

    def _on_line(self, raw: bytes) -> None:
        line = raw.decode("utf-8", "surrogateescape")
        if self._handshake is not None:
            self._on_handshake_line(line, self._handshake)
        else:
            self._on_reply(line)

    def _on_handshake_line(self, line: str, fut: asyncio.Future[frozenset[str]]) -> None:
        if fut.done():
            logger.warning("table %s: line after failed handshake: %.80r", self.name, line)
            return
        if line == "register|ready":
            if not self._registering:
                fut.set_exception(TempFail(f"table {self.name}: backend registered no service"))
            else:
                fut.set_result(frozenset(self._registering))
                self._handshake = None
        elif line.startswith("register|"):
            service = line[len("register|") :]
            if service not in SERVICES:
                fut.set_exception(
                    TempFail(f"table {self.name}: backend registered unknown service {service!r}")
                )
            else:
                self._registering.add(service)
        else:
            fut.set_exception(
                TempFail(f"table {self.name}: unexpected line in handshake: {line[:80]!r}")
            )

    def _on_reply(self, line: str) -> None:
        kind, _, rest = line.partition("|")
        rid, sep, status = rest.partition("|")
        entry = self._pending.pop(rid, None)
        if entry is None:
            logger.warning("table %s: reply for no request in flight: %.80r", self.name, line)
            return
        try:
            if not sep or kind != entry.op + "-result":
                raise ValueError(f"expected {entry.op}-result")
            result = self._parse_status(entry.op, status)
        except ValueError as exc:
            logger.warning("table %s: invalid reply (%s): %.80r", self.name, exc, line)
            result = TempFail(f"table {self.name}: invalid reply from backend")
        if not entry.future.done():
            if isinstance(result, TempFail):
                entry.future.set_exception(result)
            else:
                entry.future.set_result(result)

    def _parse_status(self, op: str, status: str) -> _Result | TempFail:
        if status == "error" or status.startswith("error|"):
            message = status[6:]
            logger.warning("table %s: %s failed: %s", self.name, op, message or "(no message)")
            return TempFail(f"table {self.name}: backend error")
        if "\r" in status:
            raise ValueError("CR in reply")
        if op == "update":
            if status == "ok":
                return None
        elif status == "not-found":
            return False if op == "check" else None
        elif op == "check":
            if status.startswith("found"):
                return True
        elif status.startswith("found|") and len(status) > 6:
            return status[6:]
        raise ValueError("bad status")

    # -- requests ---------------------------------------------------------

    def _fail_all(self, exc: TempFail) -> None:
        pending, self._pending = self._pending, {}
        for entry in pending.values():
            if not entry.future.done():
                entry.future.set_exception(exc)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _arm(self) -> None:
        if self._timer is None and self._pending:
            first = next(iter(self._pending.values()))
            self._timer = asyncio.get_running_loop().call_at(first.deadline, self._expire)

    def _expire(self) -> None:
        self._timer = None
        now = asyncio.get_running_loop().time() + 0.001
        pending = self._pending
        while pending:
            rid = next(iter(pending))
            entry = pending[rid]
            if entry.deadline > now:
                break
            del pending[rid]
            if not entry.future.done():
                logger.warning(
                    "table %s: %s request %s not answered within %gs",
                    self.name,
                    entry.op,
                    rid,
                    self.timeout,
                )
                entry.future.set_exception(
                    TempFail(f"table {self.name}: backend did not answer in time")
                )
        self._arm()

    async def _request(self, op: str, service: str | None, key: str | None) -> _Result:
        if self._state == "new" and self._starting is not None:
            await asyncio.shield(self._starting)  # bounded by the handshake timeout
        if self._state != "up" or self._wire is None:
            raise TempFail(f"table {self.name}: backend not running")
        if service is not None and service not in SERVICES:
            raise ValueError(f"unknown table service {service!r}")
        if key is not None and ("\r" in key or "\n" in key):
            raise TempFail(f"table {self.name}: key contains CR or LF")
        pending = self._pending
        rid = f"{self._rng.getrandbits(32):08x}"
        while rid in pending:
            rid = f"{self._rng.getrandbits(32):08x}"
        head = f"{self._prefix}{_timestamp()}|{self.name}|{op}|"
        if op == "update":
            line = f"{head}{rid}\n"
        elif key is None:
            line = f"{head}{service}|{rid}\n"
        else:
            line = f"{head}{service}|{rid}|{key}\n"
        try:
            data = line.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            raise TempFail(f"table {self.name}: key cannot be encoded") from None
        loop = asyncio.get_running_loop()
        future: asyncio.Future[_Result] = loop.create_future()
        entry = _Pending(op, future, loop.time() + self.timeout)
        pending[rid] = entry
        if self._timer is None:
            self._arm()
        self._wire.send(data)
        try:
            return await future
        finally:
            if self._pending.get(rid) is entry:
                del self._pending[rid]

    async def check(self, service: str, key: str) -> bool:
        return await self._request("check", service, key) is True

    async def lookup(self, service: str, key: str) -> str | None:
        result = await self._request("lookup", service, key)
        return result if isinstance(result, str) else None

    async def fetch(self, service: str) -> str | None:
        result = await self._request("fetch", service, None)
        return result if isinstance(result, str) else None

    async def update(self) -> None:
        await self._request("update", None, None)
