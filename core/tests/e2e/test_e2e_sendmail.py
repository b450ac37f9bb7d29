"""The sendmail interface: submission through the control socket, -t, and the
offline queue while the daemon is down."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
from harness import Daemon, delivery_user, wait_for


def sendmail(d: Daemon, args: list[str], message: bytes, *, user: str | None = None
             ) -> subprocess.CompletedProcess[bytes]:
    argv = [sys.executable, "-m", "mailrider.cli.mailriderctl", "-S", str(d.state),
            "sendmail", *args]
    if user is not None:
        argv = ["runuser", "-u", user, "--", *argv]
    return subprocess.run(argv, input=message, capture_output=True, timeout=60, env=d.env)


def delivered(d: Daemon, name: str) -> list[bytes]:
    folder = d.state / "maildir" / name / "new"
    return [p.read_bytes() for p in folder.glob("*")] if folder.is_dir() else []


def test_sendmail_t_reads_recipients_and_drops_bcc() -> None:
    with Daemon() as d:
        msg = (b"To: Ann <ann@localhost>\nCc: cy@localhost\nBcc: hidden@localhost\n"
               b"Subject: t\n\nbody\n.\nmore\n")
        res = sendmail(d, ["-t", "-i", "-f", "me@example.org"], msg)
        assert res.returncode == 0, res.stderr
        for name in ("ann", "cy", "hidden"):
            got = wait_for(lambda n=name: delivered(d, n))
            assert len(got) == 1
            data = got[0]
            assert b"Return-Path: <me@example.org>" in data
            assert b"Bcc:" not in data and b"hidden@localhost" not in data.split(b"\n\n")[1]
            assert data.endswith(b"\nbody\n.\nmore\n")
            assert b"\nDate: " in data and b"\nMessage-ID: <" in data


def test_lone_dot_ends_input_without_i() -> None:
    with Daemon() as d:
        res = sendmail(d, ["dot@localhost"], b"Subject: d\n\nbefore\n.\nafter\n")
        assert res.returncode == 0, res.stderr
        got = wait_for(lambda: delivered(d, "dot"))
        assert got[0].endswith(b"before\n")


def test_offline_queue_is_submitted_at_next_start() -> None:
    d = Daemon()
    try:
        d.start()
        d.stop()
        res = sendmail(d, ["later@localhost"], b"Subject: offline\n\nqueued while down\n")
        assert res.returncode == 0, res.stderr
        assert len(os.listdir(d.state / "offline")) == 1
        d.start()
        got = wait_for(lambda: delivered(d, "later"))
        assert got[0].endswith(b"queued while down\n")
        wait_for(lambda: os.listdir(d.state / "offline") == [])
    finally:
        d.cleanup()


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("runuser") is None,
                    reason="needs root to act as another local user")
def test_ordinary_user_may_submit_but_not_control() -> None:
    user = delivery_user().pw_name
    probe = subprocess.run(["runuser", "-u", user, "--", sys.executable, "-c", "1"],
                           capture_output=True, timeout=30)
    if probe.returncode != 0:
        pytest.skip("this interpreter is not runnable by the unprivileged user")
    with Daemon() as d:
        res = sendmail(d, ["fromuser@localhost"], b"Subject: u\n\nhi\n", user=user)
        assert res.returncode == 0, res.stderr
        got = wait_for(lambda: delivered(d, "fromuser"))
        assert f"Return-Path: <{user}@".encode() in got[0]
        ctl = subprocess.run(["runuser", "-u", user, "--", sys.executable, "-m",
                              "mailrider.cli.mailriderctl", "-S", str(d.state), "show", "queue"],
                             capture_output=True, text=True, timeout=60)
        if ctl.returncode == 0:
            # the daemon itself runs its children as this user: it owns the queue
            assert user == "_mailrider" or ctl.stdout == ""
        else:
            assert "need root privileges" in ctl.stdout + ctl.stderr


def test_hostile_offline_entries_skipped_good_ones_submitted() -> None:
    """What a local user can leave in offline/ while the daemon is down: a
    symlink to a secret, a FIFO, a directory, a huge file, a hard link. None
    blocks the start or leaks; both good entries (sorted around them) arrive."""
    d = Daemon()
    try:
        d.start()
        d.stop()
        offline = d.state / "offline"
        for rcpt in ("first", "last"):
            res = sendmail(d, [f"{rcpt}@localhost"], f"Subject: {rcpt}\n\nok\n".encode())
            assert res.returncode == 0, res.stderr
        first, last = sorted(os.listdir(offline))
        os.rename(offline / first, offline / "0-first")
        os.rename(offline / last, offline / "9-last")
        secret = d.state / "secret"
        secret.write_bytes(b'{"sender": "x@localhost", "rcpts": ["thief@localhost"]}\n'
                           b"Subject: s\n\nTOP-SECRET\n")
        os.symlink("/etc/shadow", offline / "1-shadow")
        os.symlink(secret, offline / "2-secret")
        os.mkfifo(offline / "3-fifo")
        (offline / "4-dir").mkdir()
        with open(offline / "5-huge", "wb") as f:
            f.write(b'{"sender": "x@localhost", "rcpts": ["huge@localhost"]}\n')
            f.truncate(1 << 40)  # sparse: a terabyte on paper
        os.link(secret, offline / "6-hardlink")
        d.start()
        for name in ("first", "last"):
            got = wait_for(lambda n=name: delivered(d, n))
            assert got[0].endswith(b"\nok\n")
        wait_for(lambda: sorted(os.listdir(offline)) == ["4-dir"])
        log = d.log()
        for name in ("1-shadow", "2-secret", "3-fifo", "4-dir", "5-huge", "6-hardlink"):
            assert f"offline-refused file={name}" in log
        assert not delivered(d, "thief") and not delivered(d, "huge")
        assert "TOP-SECRET" not in log and secret.exists()
    finally:
        d.cleanup()
