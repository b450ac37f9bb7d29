"""The long-lived maildir worker (proc/mda_worker.py) over its real socket.

The worker runs as a real process on a SOCK_SEQPACKET pair, as the parent
starts it; here without a credential switch (UID -1), which tests of the
daemon as root cover (core/tests/e2e).
"""

from __future__ import annotations

import array
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from mailrider import limits
from mailrider.proc import mda_worker


@pytest.fixture
def worker() -> Iterator[tuple[socket.socket, subprocess.Popen[bytes]]]:
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    proc = subprocess.Popen(
        mda_worker.command(-1, -1, [], theirs.fileno()), pass_fds=[theirs.fileno()],
        stderr=subprocess.PIPE)
    theirs.close()
    mine.settimeout(30)
    yield mine, proc
    mine.close()
    proc.wait(30)
    assert proc.stderr is not None
    proc.stderr.close()


def _message(tmp: Path, name: str, body: bytes) -> int:
    path = tmp / name
    path.write_bytes(body)
    return os.open(path, os.O_RDONLY)


def _send(sock: socket.socket, jobs: list[dict[str, object]] | bytes, fds: list[int]) -> None:
    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())] if fds else []
    data = jobs if isinstance(jobs, bytes) else mda_worker.encode_request(jobs)
    sock.sendmsg([data], anc)


def _answer(sock: socket.socket, count: int) -> list[dict[str, str]]:
    return [{"status": st, "text": tx}
            for st, tx in mda_worker.decode_reply(sock.recv(65536), count)]


def _job(path: Path, **kw: object) -> dict[str, object]:
    return {"path": str(path), "home": "/", "junk": False,
            "prepend": "Return-Path: <a@b.example>\nDelivered-To: u@x.example\n", **kw}


def test_batches_are_delivered_and_synced_before_the_answer(tmp_path: Path, worker) -> None:
    sock, proc = worker
    box = tmp_path / "Maildir"
    for round_ in range(2):  # one worker serves several batches
        fds = [_message(tmp_path, f"m{round_}{i}", f"Subject: {i}\n\nbody {i}\n".encode())
               for i in range(3)]
        _send(sock, [_job(box) for _ in fds], fds)
        for fd in fds:
            os.close(fd)
        answer = _answer(sock, 3)
        assert answer == [{"status": "ok", "text": "Delivered"}] * 3
    files = sorted((box / "new").iterdir())
    assert len(files) == 6 and list((box / "tmp").iterdir()) == []
    data = files[0].read_bytes()
    assert data.startswith(b"Return-Path: <a@b.example>\nDelivered-To: u@x.example\n")
    assert proc.poll() is None


def test_a_failed_delivery_fails_alone(tmp_path: Path, worker) -> None:
    sock, _ = worker
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    fds = [_message(tmp_path, "a", b"Subject: a\n\na\n"),
           _message(tmp_path, "b", b"Subject: b\n\nb\n")]
    _send(sock, [_job(blocker / "Maildir"), _job(tmp_path / "ok")], fds)
    for fd in fds:
        os.close(fd)
    bad, good = _answer(sock, 2)
    assert bad["status"] == "tempfail" and bad["text"].startswith("4")
    assert good == {"status": "ok", "text": "Delivered"}


@pytest.mark.parametrize("jobs", [
    b"not fields",  # no terminating NUL
    b"maildir\0/x\0/\0" b"0\0\0",  # five fields: not a whole delivery
    b"maildir\0/x\0/\0yes\0\0\0",  # junk flag not 0 or 1
    b"mda\0/x\0/\0" b"0\0\0\0",  # not a worker's method
    b"maildir\0\0/\0" b"0\0\0\0",  # no path
    b"mbox\0var/mail/x\0/\0" b"0\0a@b.example\0\0",  # relative mailbox
    b"\0",
])
def test_a_malformed_request_ends_the_worker(tmp_path: Path, worker, jobs: bytes) -> None:
    sock, proc = worker
    fd = _message(tmp_path, "m", b"x\n")
    _send(sock, jobs, [fd])
    os.close(fd)
    assert sock.recv(65536) == b""  # no answer: the channel closes
    assert proc.wait(30) == 1


def test_descriptors_must_match_the_deliveries(tmp_path: Path, worker) -> None:
    sock, proc = worker
    fd = _message(tmp_path, "m", b"x\n")
    _send(sock, [_job(tmp_path / "a"), _job(tmp_path / "b")], [fd])
    os.close(fd)
    assert sock.recv(65536) == b""
    assert proc.wait(30) == 1
    assert not (tmp_path / "a").exists()


def test_too_many_deliveries_in_one_batch(tmp_path: Path, worker) -> None:
    sock, proc = worker
    n = limits.DELIVERY_BATCH_MAX + 1
    fds = [_message(tmp_path, "m", b"x\n") for _ in range(n)]
    _send(sock, [_job(tmp_path / "box") for _ in range(n)], fds)
    for fd in fds:
        os.close(fd)
    assert sock.recv(65536) == b""
    assert proc.wait(30) == 1


def test_the_worker_ends_when_the_parent_closes(worker) -> None:
    sock, proc = worker
    sock.shutdown(socket.SHUT_RDWR)
    assert proc.wait(30) == 0


def test_never_root() -> None:
    # refused before any credential is touched (decide refuses these too)
    for uid, gid, groups in ((0, 100, [100]), (1000, 0, [1000]), (1000, 1000, [1000, 0])):
        with pytest.raises(PermissionError):
            mda_worker.switch_user(uid, gid, groups)


@pytest.mark.skipif(os.geteuid() != 0, reason="switches credentials: needs root")
def test_a_delivery_for_other_credentials_is_refused(tmp_path: Path) -> None:
    # started for one user (as the parent starts it, with the credentials on
    # its command line), it takes them before reading a request: a delivery
    # into another user's private folder fails and leaves nothing there
    import pwd

    from mailrider import paths

    pw = pwd.getpwnam(paths.EXT_USER)
    # pytest's tmp_path sits under a folder only root may cross
    top = Path(tempfile.mkdtemp(prefix="mailrider-test-worker-"))
    os.chmod(top, 0o755)
    theirs_dir = top / "root-only"
    theirs_dir.mkdir(mode=0o700)
    own = top / "own"
    own.mkdir(mode=0o700)
    os.chown(own, pw.pw_uid, pw.pw_gid)
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    proc = subprocess.Popen(
        mda_worker.command(pw.pw_uid, pw.pw_gid, [pw.pw_gid], theirs.fileno()),
        pass_fds=[theirs.fileno()], stderr=subprocess.PIPE)
    theirs.close()
    mine.settimeout(30)
    try:
        fds = [_message(tmp_path, "a", b"Subject: a\n\na\n"),
               _message(tmp_path, "b", b"Subject: b\n\nb\n")]
        _send(mine, [_job(theirs_dir / "Maildir"), _job(own / "Maildir")], fds)
        for fd in fds:
            os.close(fd)
        refused, delivered = _answer(mine, 2)
        assert refused["status"] == "tempfail" and refused["text"].startswith("4")
        assert list(theirs_dir.iterdir()) == []
        assert delivered == {"status": "ok", "text": "Delivered"}
        (done,) = (own / "Maildir" / "new").iterdir()
        assert done.stat().st_uid == pw.pw_uid
    finally:
        mine.close()
        proc.wait(30)
        assert proc.stderr is not None
        proc.stderr.close()
        shutil.rmtree(top, ignore_errors=True)


def test_mbox_deliveries_share_one_lock_and_sync_with_the_maildir_ones(tmp_path: Path,
                                                                       worker) -> None:
    sock, proc = worker
    box, mbox = tmp_path / "Maildir", tmp_path / "mbox"
    fds = [_message(tmp_path, f"m{i}", f"Subject: {i}\n\nFrom body {i}\n".encode())
           for i in range(4)]
    jobs = [_job(box),
            {**_job(mbox), "method": "mbox", "sender": "a@b.example"},
            {**_job(mbox), "method": "mbox", "sender": ""},
            {**_job(tmp_path / "missing" / "mbox"), "method": "mbox", "sender": "c@d.example"}]
    _send(sock, jobs, fds)
    for fd in fds:
        os.close(fd)
    answer = _answer(sock, 4)
    assert answer[:3] == [{"status": "ok", "text": "Delivered"}] * 3
    assert answer[3]["status"] == "tempfail" and answer[3]["text"].startswith("4")
    assert len(list((box / "new").iterdir())) == 1
    data = mbox.read_bytes()
    assert data.startswith(b"From a@b.example ")
    assert b"\nFrom MAILER-DAEMON " in data and data.count(b"\nSubject: ") == 2
    assert b"\n>From body 1\n" in data and b"\n>From body 2\n" in data
    assert data.count(b"Return-Path: <a@b.example>\n") == 2
    assert proc.poll() is None


def test_the_wire_format_round_trips_and_refuses_a_nul() -> None:
    jobs: list[dict[str, object]] = [
        {"method": "maildir", "path": "/h/u/Maildir", "home": "/h/u", "junk": True,
         "prepend": "Return-Path: <a@b>\nDelivered-To: u@x\n"},
        {"method": "mbox", "path": "/var/mail/u", "home": "/h/u", "junk": False,
         "sender": "", "prepend": "R: \u00e9\n"}]
    got = mda_worker.decode_request(mda_worker.encode_request(jobs), 2)
    assert [g["path"] for g in got] == ["/h/u/Maildir", "/var/mail/u"]
    assert [g["junk"] for g in got] == ["1", "0"] and got[1]["prepend"] == "R: \u00e9\n"
    assert got[0]["sender"] == "" and got[1]["method"] == "mbox"
    with pytest.raises(ValueError):
        mda_worker.encode_request([{**jobs[0], "path": "/a\0/b"}])
    with pytest.raises(ValueError):
        mda_worker.decode_request(mda_worker.encode_request(jobs), 1)  # descriptors


@pytest.mark.parametrize("reply", [
    b"", b"ok\0", b"ok\0Delivered", b"done\0Delivered\0",
    b"ok\0Delivered\0ok\0Delivered\0",  # two answers for one delivery
])
def test_the_parent_refuses_a_malformed_answer(reply: bytes) -> None:
    with pytest.raises(ValueError):
        mda_worker.decode_reply(reply, 1)
    good = b"tempfail\x00451 4.3.0 x\x00"
    assert mda_worker.decode_reply(good, 1) == [("tempfail", "451 4.3.0 x")]
