"""Shared fixtures: a queued message behind a file descriptor."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

SAMPLE = (
    b"Received: from client.example (client.example [192.0.2.1])\n"
    b"\tby mx.example.org (mailrider) with ESMTP id 0123abcd\n"
    b"From: Bob <bob@example.net>\n"
    b"To: alice@example.org\n"
    b"Subject: hello\n"
    b"\n"
    b"Hello Alice,\n"
    b"From here on, lines need care.\n"
    b">From quoted already\n"
    b".a line with a leading dot\n"
    b"..two dots\n"
    b".\n"
    b"bye\n"
)

MakeFd = Callable[[bytes], int]


@pytest.fixture
def make_fd(tmp_path: Path) -> Iterator[MakeFd]:
    """Write bytes to a file and return a read-only fd positioned mid-file."""
    fds: list[int] = []
    counter = iter(range(1_000_000))

    def make(data: bytes) -> int:
        path = tmp_path / f"queued-{next(counter)}"
        path.write_bytes(data)
        fd = os.open(path, os.O_RDONLY)
        # Deliveries must not depend on (or move) the file position.
        os.lseek(fd, len(data) // 2, os.SEEK_SET)
        fds.append(fd)
        return fd

    yield make
    for fd in fds:
        os.close(fd)
