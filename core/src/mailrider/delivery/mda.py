"""mda delivery: pipe the message into a shell command (docs/config.md §5).

The command runs as ``/bin/sh -c command`` (``paths.SHELL``) with exactly
the environment given, the message on stdin, stdout on ``/dev/null`` and
stderr captured to explain a failure.

Invariants:

- Exit 0 is delivered; 71 (EX_OSERR) and 75 (EX_TEMPFAIL) are temporary
  (451 4.3.0); any other exit status is permanent (550 5.2.0); death by a
  signal or a timeout is temporary, since the mail may well be deliverable
  once the cause is gone.
- The command is a session leader: on timeout its whole process group is
  killed, so nothing it started outlives the delivery budget.
- A command may stop reading early (EPIPE): that is not an error, its exit
  status decides.
- stdin writing and stderr reading are multiplexed, so a command that
  writes much to stderr before reading its input cannot deadlock us; at most
  :data:`limits.MDA_STDERR_MAX` bytes are kept, the rest is drained and
  dropped. Only its first line, sanitised, to 200 characters, reaches the
  failure text.
- SIGCHLD must not be ignored in the calling process (the exit status would
  be lost); we refuse with a temporary failure rather than guess. SIGPIPE
  should be ignored, as the Python runtime does by default.
- When the command exits, leftovers that still hold its pipes (a daemon it
  spawned) are not waited for.
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import time
from collections.abc import Iterator

from mailrider import limits, paths
from mailrider.delivery.common import sanitize_text
from mailrider.delivery.message import Message, os_failure
from mailrider.errors import PermFail, TempFail

__all__ = ["EX_OSERR", "EX_TEMPFAIL", "deliver_mda", "exit_status_failure"]

#: sysexits(3) statuses the MDA contract treats as temporary
EX_OSERR = 71
EX_TEMPFAIL = 75

# How often a running command is checked for having exited while its pipes
# stay open (only matters when something it spawned keeps them).
_EXIT_POLL = 0.25


class _Timeout(Exception):
    pass


def exit_status_failure(returncode: int, stderr: bytes) -> TempFail | PermFail | None:
    """The failure a command's ``returncode`` (as subprocess gives it) means."""
    if returncode == 0:
        return None
    text = sanitize_text(stderr.decode("utf-8", "replace"))
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = str(-returncode)
        return TempFail(f"mda killed by signal {name}", 451, "4.3.0")
    what = f"mda exited {returncode}" + (f": {text}" if text else "")
    if returncode in (EX_OSERR, EX_TEMPFAIL):
        return TempFail(what, 451, "4.3.0")
    return PermFail(what, 550, "5.2.0")


def _chunks(msg: Message, prepend: bytes) -> Iterator[bytes]:
    if prepend:
        yield prepend
    yield from msg.iter_chunks()


def _drain(fd: int, buf: bytearray) -> None:
    while True:
        try:
            data = os.read(fd, 65536)
        except (BlockingIOError, InterruptedError):
            return
        if not data:
            return
        _keep(buf, data)


def _keep(buf: bytearray, data: bytes) -> None:
    room = limits.MDA_STDERR_MAX - len(buf)
    if room > 0:
        buf += data[:room]


def _pump(proc: subprocess.Popen[bytes], msg: Message, prepend: bytes, deadline: float) -> bytes:
    """Feed stdin, collect stderr, until both are done or the command has exited."""
    assert proc.stdin is not None and proc.stderr is not None
    stdin_fd = proc.stdin.fileno()
    stderr_fd = proc.stderr.fileno()
    os.set_blocking(stdin_fd, False)
    os.set_blocking(stderr_fd, False)
    errbuf = bytearray()
    chunks = _chunks(msg, prepend)
    pending = memoryview(b"")
    writing = reading = True

    with selectors.DefaultSelector() as sel:
        sel.register(stdin_fd, selectors.EVENT_WRITE)
        sel.register(stderr_fd, selectors.EVENT_READ)

        def stop_writing() -> None:
            nonlocal writing
            writing = False
            sel.unregister(stdin_fd)
            _close_quietly(proc.stdin)

        while writing or reading:
            if writing and not pending:
                nxt = next(chunks, None)
                if nxt is None:
                    stop_writing()
                    continue
                pending = memoryview(nxt)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _Timeout
            if proc.poll() is not None:
                if reading:
                    _drain(stderr_fd, errbuf)
                break
            for key, _ in sel.select(min(remaining, _EXIT_POLL)):
                if key.fd == stdin_fd and writing:
                    try:
                        n = os.write(stdin_fd, pending)
                    except (BlockingIOError, InterruptedError):
                        continue
                    except BrokenPipeError:
                        stop_writing()  # it stopped reading; its status decides
                        continue
                    pending = pending[n:]
                elif key.fd == stderr_fd and reading:
                    try:
                        data = os.read(stderr_fd, 65536)
                    except (BlockingIOError, InterruptedError):
                        continue
                    if data:
                        _keep(errbuf, data)
                    else:
                        reading = False
                        sel.unregister(stderr_fd)
    return bytes(errbuf)


def _close_quietly(f: object) -> None:
    close = getattr(f, "close", None)
    if close is None:
        return
    try:
        close()
    except OSError:
        pass


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def deliver_mda(
    command: str,
    msg_fd: int,
    *,
    env: dict[str, str],
    prepend: bytes = b"",
    timeout: float = limits.MDA_TIMEOUT,
    cwd: str | None = None,
) -> None:
    """Run ``command`` with ``prepend`` + the message on stdin; raise on failure."""
    if signal.getsignal(signal.SIGCHLD) == signal.SIG_IGN:
        # Children would be reaped by the kernel and every exit status read
        # as 0: a failed delivery would count as delivered.
        raise TempFail("mda: SIGCHLD is ignored, exit status unavailable", 451, "4.3.0")
    msg = Message(msg_fd)
    deadline = time.monotonic() + timeout
    try:
        proc = subprocess.Popen(
            [paths.SHELL, "-c", command],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
            cwd=cwd,
            close_fds=True,
            start_new_session=True,
        )
    except OSError as exc:
        raise os_failure(exc, "mda") from exc
    try:
        try:
            stderr = _pump(proc, msg, prepend, deadline)
            proc.wait(timeout=max(deadline - time.monotonic(), 0.0))
        except (_Timeout, subprocess.TimeoutExpired):
            _kill_group(proc)
            proc.wait()
            raise TempFail(f"mda timed out after {timeout:g}s", 451, "4.3.0") from None
        except OSError as exc:
            _kill_group(proc)
            proc.wait()
            raise os_failure(exc, "mda") from exc
    finally:
        _close_quietly(proc.stdin)
        _close_quietly(proc.stderr)
    failure = exit_status_failure(proc.returncode, stderr)
    if failure is not None:
        raise failure
