"""log.event: one key=value line per event; with -d written straight to stderr."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator

import pytest
from mailrider import log

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
        "smtp connected session=abc address=192.0.2.1",
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
