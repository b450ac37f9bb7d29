"""Maildir delivery."""

from __future__ import annotations

import errno
import os
import re
import stat
from pathlib import Path

import pytest
from mailrider.delivery.maildir import deliver_maildir, folder_path, unique_name
from mailrider.errors import TempFail

from .conftest import SAMPLE, MakeFd

PREPEND = b"Return-Path: <bob@example.net>\nDelivered-To: alice@example.org\n"
SPAM = b"Received: by x\nX-Spam: Yes\nSubject: buy\n\nnow\n"
NAME = re.compile(r"^[0-9]+\.M[0-9]+P[0-9]+Q[0-9]+\.[^/:]+$")


def _listing(d: Path) -> list[str]:
    return sorted(os.listdir(d))


def test_delivers_exact_bytes_into_new(tmp_path: Path, make_fd: MakeFd) -> None:
    md = tmp_path / "Maildir"
    fd = make_fd(SAMPLE)
    pos = os.lseek(fd, 0, os.SEEK_CUR)
    final = deliver_maildir(str(md), fd, prepend=PREPEND)
    assert os.path.dirname(final) == str(md / "new")
    assert NAME.match(os.path.basename(final))
    assert Path(final).read_bytes() == PREPEND + SAMPLE
    assert _listing(md / "tmp") == []
    assert _listing(md / "cur") == []
    assert _listing(md / "new") == [os.path.basename(final)]
    assert os.lseek(fd, 0, os.SEEK_CUR) == pos
    for sub in ("", "tmp", "new", "cur"):
        assert stat.S_IMODE(os.stat(md / sub).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(final).st_mode) == 0o600


def test_creates_missing_parents(tmp_path: Path, make_fd: MakeFd) -> None:
    md = tmp_path / "a" / "b" / "Maildir"
    final = deliver_maildir(str(md), make_fd(b"x\n"))
    assert Path(final).read_bytes() == b"x\n"


def test_existing_maildir_modes_kept(tmp_path: Path, make_fd: MakeFd) -> None:
    md = tmp_path / "Maildir"
    for sub in ("", "tmp", "new", "cur"):
        (md / sub).mkdir(mode=0o750, exist_ok=True)
        os.chmod(md / sub, 0o750)
    deliver_maildir(str(md), make_fd(b"x\n"))
    assert stat.S_IMODE(os.stat(md / "new").st_mode) == 0o750


def test_two_deliveries_two_files(tmp_path: Path, make_fd: MakeFd) -> None:
    md = tmp_path / "Maildir"
    a = deliver_maildir(str(md), make_fd(b"one\n"))
    b = deliver_maildir(str(md), make_fd(b"two\n"))
    assert a != b
    assert {Path(a).read_bytes(), Path(b).read_bytes()} == {b"one\n", b"two\n"}


def test_unique_names_differ_and_are_well_formed() -> None:
    names = {unique_name() for _ in range(1000)}
    assert len(names) == 1000
    assert all(NAME.match(n) for n in names)


def test_hostname_is_escaped(monkeypatch: pytest.MonkeyPatch) -> None:
    from mailrider.delivery import maildir

    monkeypatch.setattr(maildir, "_nodename", lambda: "we/ird:host")
    assert unique_name().endswith(".we\\057ird\\072host")


def test_empty_message(tmp_path: Path, make_fd: MakeFd) -> None:
    final = deliver_maildir(str(tmp_path / "M"), make_fd(b""), prepend=PREPEND)
    assert Path(final).read_bytes() == PREPEND


def test_junk_routes_spam_to_junk_folder(tmp_path: Path, make_fd: MakeFd) -> None:
    md = tmp_path / "Maildir"
    final = deliver_maildir(str(md), make_fd(SPAM), junk=True)
    assert os.path.dirname(final) == str(md / ".Junk" / "new")
    assert Path(final).read_bytes() == SPAM
    assert (md / ".Junk" / "maildirfolder").is_file()
    for sub in ("tmp", "new", "cur"):
        assert (md / sub).is_dir()  # the inbox exists too (Maildir++)
    assert _listing(md / "new") == []


def test_junk_leaves_ham_in_inbox(tmp_path: Path, make_fd: MakeFd) -> None:
    md = tmp_path / "Maildir"
    final = deliver_maildir(str(md), make_fd(SAMPLE), junk=True)
    assert os.path.dirname(final) == str(md / "new")
    assert not (md / ".Junk").exists()


def test_spam_without_junk_option_stays_in_inbox(tmp_path: Path, make_fd: MakeFd) -> None:
    md = tmp_path / "Maildir"
    final = deliver_maildir(str(md), make_fd(SPAM))
    assert os.path.dirname(final) == str(md / "new")


def test_junk_header_in_body_does_not_count(tmp_path: Path, make_fd: MakeFd) -> None:
    md = tmp_path / "Maildir"
    final = deliver_maildir(str(md), make_fd(b"Subject: x\n\nX-Spam: Yes\n"), junk=True)
    assert os.path.dirname(final) == str(md / "new")


def test_folder(tmp_path: Path, make_fd: MakeFd) -> None:
    md = tmp_path / "Maildir"
    final = deliver_maildir(str(md), make_fd(b"x\n"), folder="Lists.dev")
    assert os.path.dirname(final) == str(md / ".Lists.dev" / "new")
    # junk wins over the folder for spam
    final = deliver_maildir(str(md), make_fd(SPAM), folder="Lists.dev", junk=True)
    assert os.path.dirname(final) == str(md / ".Junk" / "new")


@pytest.mark.parametrize("bad", ["../x", "a/b", ".hidden", "a..b", "a.", "x\0"])
def test_bad_folder_names(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ValueError):
        folder_path(str(tmp_path), bad)


def test_path_that_is_a_file_is_tempfail(tmp_path: Path, make_fd: MakeFd) -> None:
    md = tmp_path / "Maildir"
    md.write_bytes(b"not a dir")
    with pytest.raises(TempFail) as info:
        deliver_maildir(str(md), make_fd(b"x\n"))
    assert (info.value.code, info.value.status) == (451, "4.3.0")
    assert md.read_bytes() == b"not a dir"


def test_subdir_that_is_a_file_is_tempfail(tmp_path: Path, make_fd: MakeFd) -> None:
    md = tmp_path / "Maildir"
    md.mkdir()
    (md / "new").write_bytes(b"")
    with pytest.raises(TempFail):
        deliver_maildir(str(md), make_fd(b"x\n"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores permissions")
def test_permission_denied_is_tempfail(tmp_path: Path, make_fd: MakeFd) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(TempFail) as info:
        deliver_maildir(str(locked / "Maildir"), make_fd(b"x\n"))
    assert info.value.status == "4.3.0"


@pytest.mark.parametrize(
    ("err", "code", "status"),
    [(errno.ENOSPC, 452, "4.2.2"), (errno.EDQUOT, 452, "4.2.2"), (errno.EIO, 451, "4.3.0")],
)
def test_write_errors_leave_nothing(
    tmp_path: Path,
    make_fd: MakeFd,
    monkeypatch: pytest.MonkeyPatch,
    err: int,
    code: int,
    status: str,
) -> None:
    md = tmp_path / "Maildir"
    real_fsync = os.fsync

    def failing_fsync(fd: int) -> None:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(err, os.strerror(err))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(TempFail) as info:
        deliver_maildir(str(md), make_fd(SAMPLE))
    assert (info.value.code, info.value.status) == (code, status)
    assert _listing(md / "tmp") == []
    assert _listing(md / "new") == []


def test_failed_directory_sync_takes_the_message_back(
    tmp_path: Path, make_fd: MakeFd, monkeypatch: pytest.MonkeyPatch
) -> None:
    md = tmp_path / "Maildir"
    deliver_maildir(str(md), make_fd(b"first\n"))  # creates the folders
    real_fsync = os.fsync

    def failing_fsync(fd: int) -> None:
        if os.path.samestat(os.fstat(fd), os.stat(md / "new")):
            raise OSError(errno.EIO, "Input/output error")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(TempFail):
        deliver_maildir(str(md), make_fd(b"second\n"))
    assert [(md / "new" / n).read_bytes() for n in _listing(md / "new")] == [b"first\n"]
    assert _listing(md / "tmp") == []


def test_no_hard_links_falls_back_to_rename(
    tmp_path: Path, make_fd: MakeFd, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_link(src: str, dst: str) -> None:
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_link)
    md = tmp_path / "Maildir"
    final = deliver_maildir(str(md), make_fd(b"x\n"))
    assert Path(final).read_bytes() == b"x\n"
    assert _listing(md / "tmp") == []


def test_batch_delivers_every_message_with_two_syncs(
        tmp_path: Path, make_fd: MakeFd, monkeypatch: pytest.MonkeyPatch) -> None:
    from mailrider.delivery import maildir

    synced: list[str] = []
    real = maildir.MaildirBatch._sync
    monkeypatch.setattr(maildir.MaildirBatch, "_sync",
                        lambda self, paths: (synced.append(paths[0]), real(self, paths)))
    batch = maildir.MaildirBatch()
    boxes = [tmp_path / "a", tmp_path / "b", tmp_path / "a"]
    for i, box in enumerate(boxes):
        assert batch.add(str(box), make_fd(b"Subject: %d\n\nbody\n" % i), prepend=b"X: y\n") == i
    # nothing is visible before the commit
    assert not list((tmp_path / "a" / "new").iterdir())
    done = batch.commit()
    assert all(isinstance(p, str) for p in done)
    assert [Path(str(p)).read_bytes() for p in done] == [
        b"X: y\nSubject: %d\n\nbody\n" % i for i in range(3)]
    assert len(list((tmp_path / "a" / "new").iterdir())) == 2
    assert not list((tmp_path / "a" / "tmp").iterdir())
    assert len(synced) == 2  # one before the links, one after, for all three
    assert batch.commit() == []


def test_batch_failure_of_one_leaves_the_others(tmp_path: Path, make_fd: MakeFd) -> None:
    from mailrider.delivery.maildir import MaildirBatch

    batch = MaildirBatch()
    batch.add(str(tmp_path / "good"), make_fd(SAMPLE))
    batch.add(str(tmp_path / "bad"), make_fd(SAMPLE))
    # new/ of the second disappears before the commit: its message cannot be linked
    (tmp_path / "bad" / "new").rmdir()
    good, bad = batch.commit()
    assert isinstance(good, str) and Path(good).read_bytes() == SAMPLE
    assert isinstance(bad, TempFail)
    assert not list((tmp_path / "bad" / "tmp").iterdir())  # nothing left behind
    (tmp_path / "ro").mkdir(mode=0o500)
    if os.geteuid() != 0:
        with pytest.raises(TempFail):
            batch.add(str(tmp_path / "ro" / "box"), make_fd(SAMPLE))
