"""mbox delivery (mboxrd)."""

from __future__ import annotations

import errno
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mailrider.delivery.mbox import deliver_mbox, from_line, mboxrd_quote
from mailrider.errors import TempFail

from .conftest import SAMPLE, MakeFd

FROM_LINE = re.compile(
    rb"^From (\S+) (Mon|Tue|Wed|Thu|Fri|Sat|Sun) "
    rb"(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) [ 123][0-9] "
    rb"[0-9]{2}:[0-9]{2}:[0-9]{2} [0-9]{4}\n$"
)
PREPEND = b"Return-Path: <bob@example.net>\nDelivered-To: alice@example.org\n"


def _split(data: bytes) -> tuple[bytes, bytes]:
    first, _, rest = data.partition(b"\n")
    return first + b"\n", rest


def test_format_of_one_delivery(tmp_path: Path, make_fd: MakeFd) -> None:
    box = tmp_path / "alice"
    fd = make_fd(SAMPLE)
    pos = os.lseek(fd, 0, os.SEEK_CUR)
    deliver_mbox(str(box), fd, sender="bob@example.net", prepend=PREPEND)
    first, rest = _split(box.read_bytes())
    m = FROM_LINE.match(first)
    assert m and m.group(1) == b"bob@example.net"
    expected = (
        PREPEND
        + SAMPLE.replace(b"\nFrom here", b"\n>From here").replace(
            b"\n>From quoted", b"\n>>From quoted"
        )
        + b"\n"
    )
    assert rest == expected
    assert os.lseek(fd, 0, os.SEEK_CUR) == pos
    assert not (tmp_path / "alice.lock").exists()
    assert os.stat(box).st_mode & 0o777 == 0o600


@pytest.mark.parametrize(
    ("line", "quoted"),
    [
        (b"From me\n", b">From me\n"),
        (b">From me\n", b">>From me\n"),
        (b">>>From me\n", b">>>>From me\n"),
        (b"From\n", b"From\n"),
        (b"From:me\n", b"From:me\n"),
        (b"from me\n", b"from me\n"),
        (b" From me\n", b" From me\n"),
        (b">> From me\n", b">> From me\n"),
    ],
)
def test_mboxrd_quote(line: bytes, quoted: bytes) -> None:
    assert mboxrd_quote(line) == quoted


def test_null_sender_and_unsafe_sender(tmp_path: Path, make_fd: MakeFd) -> None:
    box = tmp_path / "box"
    deliver_mbox(str(box), make_fd(b"a\n"), sender="")
    assert _split(box.read_bytes())[0].startswith(b"From MAILER-DAEMON ")
    assert from_line('"a b"@x', 0).startswith(b'From "a_b"@x ')
    assert FROM_LINE.match(from_line("x\ny@z", 0))


def test_message_without_final_newline(tmp_path: Path, make_fd: MakeFd) -> None:
    box = tmp_path / "box"
    deliver_mbox(str(box), make_fd(b"Subject: x\n\nno newline"), sender="a@b")
    assert box.read_bytes().endswith(b"\n\nno newline\n\n")


def test_two_deliveries_append(tmp_path: Path, make_fd: MakeFd) -> None:
    box = tmp_path / "box"
    deliver_mbox(str(box), make_fd(b"S: 1\n\none\n"), sender="a@b")
    size = box.stat().st_size
    deliver_mbox(str(box), make_fd(b"S: 2\n\ntwo\n"), sender="c@d")
    data = box.read_bytes()
    messages = re.split(rb"(?m)^From \S+ .*\n", data)
    assert messages == [b"", b"S: 1\n\none\n\n", b"S: 2\n\ntwo\n\n"]
    assert data[size:].startswith(b"From c@d ")


@pytest.mark.parametrize(
    ("existing", "glue"),
    [(b"old", b"old\n\n"), (b"old\n", b"old\n\n"), (b"old\n\n", b"old\n\n"), (b"\n", b"\n")],
)
def test_existing_mailbox_gets_separated(
    tmp_path: Path, make_fd: MakeFd, existing: bytes, glue: bytes
) -> None:
    box = tmp_path / "box"
    box.write_bytes(existing)
    os.chmod(box, 0o600)
    deliver_mbox(str(box), make_fd(b"x\n"), sender="a@b")
    data = box.read_bytes()
    assert data.startswith(glue + b"From a@b ")


def test_held_dotlock_times_out(tmp_path: Path, make_fd: MakeFd) -> None:
    box = tmp_path / "box"
    box.write_bytes(b"")
    os.chmod(box, 0o600)
    lock = tmp_path / "box.lock"
    lock.write_bytes(b"12345\n")
    start = time.monotonic()
    with pytest.raises(TempFail) as info:
        deliver_mbox(str(box), make_fd(b"x\n"), sender="a@b", timeout=0.3)
    elapsed = time.monotonic() - start
    assert 0.25 <= elapsed < 2.0
    assert (info.value.code, info.value.status, info.value.text) == (450, "4.2.0", "mailbox locked")
    assert box.read_bytes() == b""
    assert lock.read_bytes() == b"12345\n"  # not ours: left alone


def test_stale_dotlock_is_broken(tmp_path: Path, make_fd: MakeFd) -> None:
    box = tmp_path / "box"
    lock = tmp_path / "box.lock"
    lock.write_bytes(b"")
    old = time.time() - 3600
    os.utime(lock, (old, old))
    deliver_mbox(str(box), make_fd(b"x\n"), sender="a@b", timeout=1.0)
    assert box.read_bytes().endswith(b"\nx\n\n")
    assert not lock.exists()


def test_dotlock_released_while_waiting(tmp_path: Path, make_fd: MakeFd) -> None:
    import threading

    box = tmp_path / "box"
    lock = tmp_path / "box.lock"
    lock.write_bytes(b"")
    timer = threading.Timer(0.2, lock.unlink)
    timer.start()
    try:
        deliver_mbox(str(box), make_fd(b"x\n"), sender="a@b", timeout=5.0)
    finally:
        timer.join()
    assert box.read_bytes().endswith(b"\nx\n\n")


def test_fcntl_lock_held_by_another_process(tmp_path: Path, make_fd: MakeFd) -> None:
    box = tmp_path / "box"
    box.write_bytes(b"")
    os.chmod(box, 0o600)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time\n"
            "fd = os.open(sys.argv[1], os.O_RDWR)\n"
            "fcntl.lockf(fd, fcntl.LOCK_EX)\n"
            "print('locked', flush=True)\n"
            "time.sleep(30)\n",
            str(box),
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == b"locked\n"
        with pytest.raises(TempFail) as info:
            deliver_mbox(str(box), make_fd(b"x\n"), sender="a@b", timeout=0.3)
        assert info.value.code == 450
    finally:
        holder.kill()
        holder.wait()
        assert holder.stdout is not None
        holder.stdout.close()
    assert box.read_bytes() == b""
    assert not (tmp_path / "box.lock").exists()
    deliver_mbox(str(box), make_fd(b"x\n"), sender="a@b", timeout=1.0)
    assert box.read_bytes().endswith(b"\nx\n\n")


@pytest.mark.parametrize(("err", "code"), [(errno.ENOSPC, 452), (errno.EIO, 451)])
def test_write_error_truncates_back(
    tmp_path: Path, make_fd: MakeFd, monkeypatch: pytest.MonkeyPatch, err: int, code: int
) -> None:
    box = tmp_path / "box"
    deliver_mbox(str(box), make_fd(b"first\n"), sender="a@b")
    before = box.read_bytes()
    real_write = os.write
    calls = {"n": 0}

    def failing_write(fd: int, data: bytes) -> int:
        if os.path.samestat(os.fstat(fd), os.stat(box)):
            calls["n"] += 1
            if calls["n"] > 1:
                raise OSError(err, os.strerror(err))
            return real_write(fd, bytes(data)[:100])  # a partial write first
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", failing_write)
    with pytest.raises(TempFail) as info:
        deliver_mbox(str(box), make_fd(SAMPLE * 10), sender="c@d")
    assert info.value.code == code
    assert calls["n"] == 2
    assert box.read_bytes() == before
    assert not (tmp_path / "box.lock").exists()


def test_symlinked_mailbox_refused(tmp_path: Path, make_fd: MakeFd) -> None:
    target = tmp_path / "victim"
    target.write_bytes(b"precious\n")
    box = tmp_path / "box"
    box.symlink_to(target)
    with pytest.raises(TempFail):
        deliver_mbox(str(box), make_fd(b"x\n"), sender="a@b")
    assert target.read_bytes() == b"precious\n"


def test_directory_mailbox_refused(tmp_path: Path, make_fd: MakeFd) -> None:
    (tmp_path / "box").mkdir()
    with pytest.raises(TempFail) as info:
        deliver_mbox(str(tmp_path / "box"), make_fd(b"x\n"), sender="a@b")
    assert info.value.code == 451


def _unquote(data: bytes) -> bytes:
    return re.sub(rb"(?m)^>(>*From )", rb"\1", data)


lines = st.lists(
    st.sampled_from([b"From x", b">From x", b">>From ", b"From", b"text", b"", b".", b" From"]),
    max_size=20,
)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=50)
@given(body=lines)
def test_mboxrd_round_trip(tmp_path: Path, make_fd: MakeFd, body: list[bytes]) -> None:
    box = tmp_path / "rt"
    if box.exists():
        box.unlink()
    message = b"Subject: t\n\n" + b"".join(line + b"\n" for line in body)
    deliver_mbox(str(box), make_fd(message), sender="a@b")
    first, rest = _split(box.read_bytes())
    assert FROM_LINE.match(first)
    assert rest.endswith(b"\n\n")
    # No line inside the message may read as a separator...
    assert not re.search(rb"(?m)^From ", rest)
    # ...and undoing the quoting gives the message back.
    assert _unquote(rest[:-1]) == message


def test_no_dotlock_permission_falls_back_to_fcntl(
    tmp_path: Path, make_fd: MakeFd, monkeypatch: pytest.MonkeyPatch
) -> None:
    box = tmp_path / "box"
    real_open = os.open

    def no_lock_files(path: str, flags: int, mode: int = 0o777) -> int:
        if str(path).endswith(".lock"):
            raise PermissionError(errno.EACCES, "Permission denied")
        return real_open(path, flags, mode)

    monkeypatch.setattr(os, "open", no_lock_files)
    deliver_mbox(str(box), make_fd(b"x\n"), sender="a@b", timeout=1.0)
    assert box.read_bytes().endswith(b"\nx\n\n")


def test_large_message_exact(tmp_path: Path, make_fd: MakeFd) -> None:
    box = tmp_path / "box"
    body = b"".join(b"From line %06d\n" % i for i in range(20_000))
    message = b"Subject: big\n\n" + body
    deliver_mbox(str(box), make_fd(message), sender="a@b", prepend=PREPEND)
    first, rest = _split(box.read_bytes())
    assert FROM_LINE.match(first)
    assert rest == PREPEND + b"Subject: big\n\n" + body.replace(b"From line", b">From line") + b"\n"


def test_a_batch_is_appended_in_order_under_one_lock(tmp_path: Path, make_fd: MakeFd) -> None:
    from mailrider.delivery.mbox import MboxItem, deliver_mbox_batch

    box = tmp_path / "box"
    deliver_mbox(str(box), make_fd(b"S: 0\n\nzero\n"), sender="z@y")
    items = [MboxItem(make_fd(f"S: {i}\n\nFrom here {i}\n".encode()), f"s{i}@x", PREPEND)
             for i in (1, 2, 3)]
    assert deliver_mbox_batch(str(box), items) == [None, None, None]
    data = box.read_bytes()
    messages = re.split(rb"(?m)^From \S+ .*\n", data)
    assert messages[0] == b"" and messages[1] == b"S: 0\n\nzero\n\n"
    assert messages[2:] == [PREPEND + f"S: {i}\n\n>From here {i}\n\n".encode() for i in (1, 2, 3)]
    assert [line.split()[1] for line in data.splitlines() if line.startswith(b"From ")] == \
        [b"z@y", b"s1@x", b"s2@x", b"s3@x"]
    assert not (tmp_path / "box.lock").exists()


def test_a_failed_message_of_a_batch_is_cut_out_alone(tmp_path: Path, make_fd: MakeFd) -> None:
    from mailrider.delivery.mbox import MboxItem, deliver_mbox_batch

    box = tmp_path / "box"
    unreadable = os.open(tmp_path, os.O_RDONLY)  # a folder: reading it fails (EISDIR)
    try:
        got = deliver_mbox_batch(str(box), [
            MboxItem(make_fd(b"S: 1\n\none\n"), "a@b"),
            MboxItem(unreadable, "c@d"),
            MboxItem(make_fd(b"S: 3\n\nthree\n"), "e@f"),
        ])
    finally:
        os.close(unreadable)
    assert got[0] is None and got[2] is None
    assert isinstance(got[1], TempFail) and got[1].reply().startswith("4")
    messages = re.split(rb"(?m)^From \S+ .*\n", box.read_bytes())
    assert messages == [b"", b"S: 1\n\none\n\n", b"S: 3\n\nthree\n\n"]


def test_a_batch_into_a_mailbox_that_is_not_the_users_fails_whole(tmp_path: Path,
                                                                  make_fd: MakeFd) -> None:
    from mailrider.delivery.mbox import MboxItem, deliver_mbox_batch

    target = tmp_path / "elsewhere"
    target.write_bytes(b"")
    box = tmp_path / "box"
    box.symlink_to(target)  # planted: never followed
    got = deliver_mbox_batch(str(box), [MboxItem(make_fd(b"x\n"), "a@b"),
                                        MboxItem(make_fd(b"y\n"), "a@b")])
    assert all(isinstance(f, TempFail) for f in got)
    assert target.read_bytes() == b""
