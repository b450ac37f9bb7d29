"""The offline queue reader: every entry a local user can leave in the folder
is read safely or refused, never followed, never read past its checked size."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from mailrider import sendmail
from mailrider.sendmail import OfflineRefused, read_offline


def _good(folder: Path, name: str = "good", body: bytes = b"Subject: s\n\nhello\n") -> Path:
    p = folder / name
    p.write_bytes(json.dumps({"sender": "me@example.org", "rcpts": ["you@localhost"]}).encode()
                  + b"\n" + body)
    return p


def test_good_entry_read_by_descriptor_and_by_path(tmp_path: Path) -> None:
    _good(tmp_path)
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        uid, sender, rcpts, message = read_offline(fd, "good")
    finally:
        os.close(fd)
    assert (uid, sender, rcpts, message) == (os.getuid(), "me@example.org", ["you@localhost"],
                                             b"Subject: s\n\nhello\n")
    assert read_offline(str(tmp_path), "good")[3] == message


def _refused(folder: Path, name: str, **kw: int) -> str:
    with pytest.raises(OfflineRefused) as info:
        read_offline(str(folder), name, **kw)
    return str(info.value)


def test_symlink_to_a_secret_is_not_followed(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text('{"sender": "a@b", "rcpts": ["c@d"]}\nthe secret\n')
    os.symlink(secret, tmp_path / "link")
    assert _refused(tmp_path, "link") == "not a regular file"


def test_hard_link_refused(tmp_path: Path) -> None:
    good = _good(tmp_path)
    os.link(good, tmp_path / "again")
    assert _refused(tmp_path, "again") == "more than one link"


def test_fifo_directory_and_missing_refused_without_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "dir").mkdir()
    assert _refused(tmp_path, "fifo") == "not a regular file"
    assert _refused(tmp_path, "dir") == "not a regular file"
    _refused(tmp_path, "missing")
    assert _refused(tmp_path, "../good") == "bad name"


def test_size_checked_before_reading(tmp_path: Path) -> None:
    p = _good(tmp_path, body=b"x" * 5000)
    assert _refused(tmp_path, "good", max_size=4096) == "too large"
    with open(p, "r+b") as f:  # a sparse file far above the real bound
        f.truncate(sendmail.OFFLINE_MAX + 1)
    assert _refused(tmp_path, "good") == "too large"


@pytest.mark.parametrize("head", [b"not json", b"[" * 100000, b'{"sender": "a@b"}',
                                  b'{"sender": "a@b", "rcpts": []}',
                                  b'{"sender": "a@b>", "rcpts": ["c@d"]}'])
def test_bad_headers_refused(tmp_path: Path, head: bytes) -> None:
    (tmp_path / "bad").write_bytes(head + b"\nbody\n")
    _refused(tmp_path, "bad")
