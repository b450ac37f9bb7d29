"""log.event: one key=value line per event; with -d written straight to stderr."""

from __future__ import annotations

import logging
import os
import re
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from mailrider import log, paths

LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (\w+)\[(\d+)\]: (.*)$")


@pytest.fixture
def restore() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    log._fast = None
    root.handlers[:] = handlers
    root.setLevel(level)


def test_foreground_lines_match_the_handler_format(restore: None,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    log.setup("pony", foreground=True)
    log.event("smtp", "connected", session="abc", address="192.0.2.1", port=None)
    logging.getLogger("mailrider.table").warning("table line")  # the logging path
    log.event("smtp", "failed-command", command="RCPT", result='550 "no" user\x1b')
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 3
    parsed = [LINE.match(x) for x in lines]
    assert all(parsed), lines
    assert {(m.group(1), m.group(2)) for m in parsed if m} == {("pony", str(os.getpid()))}
    assert [m.group(3) for m in parsed if m] == [
        "abc smtp connected address=192.0.2.1",  # the session id first (OpenSMTPD's)
        "table line",
        'smtp failed-command command=RCPT result="550 \\x22no\\x22 user\\x1b"',
    ]


def test_levels_and_tracing_still_apply(restore: None,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    log.setup("queue", foreground=True, verbose=False)
    log.debug("queue", "hidden")
    log.trace("queue", True)
    log.debug("queue", "shown")
    log.trace("queue", False)
    err = capsys.readouterr().err
    assert "hidden" not in err and "queue shown" in err


def test_syslog_datagrams_match_the_handler(restore: None, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    path = str(tmp_path / "log")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(path)
    server.settimeout(5)
    monkeypatch.setattr(paths, "SYSLOG_SOCKET", path)
    try:
        log.setup("lka", foreground=False)
        assert log._fast is not None
        log.event("lka", "lookup", table="t", result="found")
        logging.getLogger("mailrider.other").info("lka lookup table=t result=found")
        log.warning("lka", "backend-error", table="t")
        fast, handler, warning = (server.recv(4096) for _ in range(3))
    finally:
        server.close()
    pid = os.getpid()
    line = f"<22>mailrider-lka[{pid}]: lka lookup table=t result=found\0".encode()
    assert fast == handler == line
    assert warning == f"<20>mailrider-lka[{pid}]: lka backend-error table=t\0".encode()


def test_quoted_values_and_emit_with_any_key(restore: None,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    log.setup("queue", foreground=True)
    log.emit("mta", "delivery", {"session": "0123456789abcdef", "from": "<a@b>",
                                 "result": log.Quoted("Ok"), "stat": "250 2.0.0 Ok"})
    line = capsys.readouterr().err.splitlines()[0]
    assert line.endswith(': 0123456789abcdef mta delivery from=<a@b> result="Ok" '
                         'stat="250 2.0.0 Ok"')


def test_errors_in_plain_words() -> None:
    import asyncio
    import errno

    from mailrider.errors import plain_reason

    async def refused() -> BaseException:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()  # nothing listens there
        try:
            await asyncio.open_connection("127.0.0.1", port)
        except OSError as exc:
            return exc
        raise AssertionError("connected to a closed port")

    exc = asyncio.run(refused())
    assert "Connect call failed" in str(exc) or "(" in str(exc)  # what asyncio says
    assert plain_reason(exc) == os.strerror(errno.ECONNREFUSED)
    missing = OSError(errno.ENOENT, "No such file or directory", "/var/spool/x")
    assert plain_reason(missing) == "/var/spool/x: No such file or directory"
    assert plain_reason(TimeoutError()) == "timeout"
