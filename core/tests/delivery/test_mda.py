"""mda delivery: a shell command fed the message."""

from __future__ import annotations

import os
import shlex
import signal
import time
from pathlib import Path

import pytest
from mailrider.delivery.common import mda_environment
from mailrider.delivery.format import FormatContext
from mailrider.delivery.mda import deliver_mda, exit_status_failure
from mailrider.errors import PermFail, TempFail

from .conftest import SAMPLE, MakeFd

CTX = FormatContext(
    sender="bob@example.net",
    rcpt="alice+x@example.org",
    dest="alice+x@example.org",
    user_name="alice",
    user_dir="/home/alice",
)
PREPEND = b"Return-Path: <bob@example.net>\nDelivered-To: alice+x@example.org\n"


def _env(home: str = "/nonexistent") -> dict[str, str]:
    return mda_environment(CTX, home=home, user="alice", extension="x")


def test_cat_to_file_gets_exact_bytes(tmp_path: Path, make_fd: MakeFd) -> None:
    out = tmp_path / "out"
    fd = make_fd(SAMPLE)
    pos = os.lseek(fd, 0, os.SEEK_CUR)
    deliver_mda(f"cat > {shlex.quote(str(out))}", fd, env=_env(), prepend=PREPEND)
    assert out.read_bytes() == PREPEND + SAMPLE
    assert os.lseek(fd, 0, os.SEEK_CUR) == pos


def test_large_message_through_the_pipe(tmp_path: Path, make_fd: MakeFd) -> None:
    out = tmp_path / "out"
    big = b"".join(b"line %07d of the message\n" % i for i in range(100_000))
    deliver_mda(f"cat > {shlex.quote(str(out))}", make_fd(big), env=_env())
    assert out.read_bytes() == big


def test_environment(tmp_path: Path, make_fd: MakeFd) -> None:
    out = tmp_path / "env"
    deliver_mda(f"env > {shlex.quote(str(out))}", make_fd(b"x\n"), env=_env())
    seen = dict(line.split("=", 1) for line in out.read_text().splitlines() if "=" in line)
    for key, value in _env().items():
        assert seen[key] == value
    assert seen["EXTENSION"] == "x"
    assert seen["SENDER"] == "bob@example.net"
    assert seen["RECIPIENT"] == "alice+x@example.org"
    assert seen["SHELL"] == "/bin/sh"


def test_environment_is_exactly_what_is_given(
    tmp_path: Path, make_fd: MakeFd, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAILRIDER_LEAK_CHECK", "secret")
    out = tmp_path / "env"
    deliver_mda(f"env > {shlex.quote(str(out))}", make_fd(b"x\n"), env=_env())
    assert "MAILRIDER_LEAK_CHECK" not in out.read_text()


def test_cwd(tmp_path: Path, make_fd: MakeFd) -> None:
    out = tmp_path / "pwd"
    deliver_mda(f"pwd > {shlex.quote(str(out))}", make_fd(b"x\n"), env=_env(), cwd=str(tmp_path))
    assert out.read_text().strip() == str(tmp_path)


def test_missing_cwd_is_tempfail(tmp_path: Path, make_fd: MakeFd) -> None:
    with pytest.raises(TempFail):
        deliver_mda("true", make_fd(b"x\n"), env=_env(), cwd=str(tmp_path / "nope"))


@pytest.mark.parametrize("command", ["exit 0", "true", "head -c 1 >/dev/null"])
def test_command_reading_little_or_nothing_is_ok(make_fd: MakeFd, command: str) -> None:
    big = b"x" * (4 * 1024 * 1024)  # far more than a pipe buffer
    start = time.monotonic()
    deliver_mda(command, make_fd(big), env=_env())
    assert time.monotonic() - start < 5


@pytest.mark.parametrize("code", [75, 71])
def test_tempfail_statuses(make_fd: MakeFd, code: int) -> None:
    with pytest.raises(TempFail) as info:
        command = f"cat >/dev/null; echo 'try later' >&2; exit {code}"
        deliver_mda(command, make_fd(b"x\n"), env=_env())
    assert (info.value.code, info.value.status) == (451, "4.3.0")
    assert info.value.text == f"mda exited {code}: try later"


@pytest.mark.parametrize("code", [1, 2, 64, 67, 77, 126, 127])
def test_other_statuses_are_permanent(make_fd: MakeFd, code: int) -> None:
    with pytest.raises(PermFail) as info:
        deliver_mda(f"exit {code}", make_fd(b"x\n"), env=_env())
    assert (info.value.code, info.value.status) == (550, "5.2.0")
    assert info.value.text == f"mda exited {code}"


def test_stderr_first_line_sanitised_and_bounded(make_fd: MakeFd) -> None:
    command = (
        "printf 'no such user \\033[1m%s\\nsecond line\\n' $(printf 'y%.0s' $(seq 300)) >&2;"
        " exit 1"
    )
    with pytest.raises(PermFail) as info:
        deliver_mda(command, make_fd(b"x\n"), env=_env())
    text = info.value.text
    assert text.startswith("mda exited 1: no such user ?[1myyy")
    assert "second" not in text and "\033" not in text
    assert len(text) == len("mda exited 1: ") + 200


def test_lots_of_stderr_before_reading_does_not_deadlock(make_fd: MakeFd) -> None:
    command = "head -c 1000000 /dev/zero | tr '\\0' e >&2; cat >/dev/null; exit 3"
    start = time.monotonic()
    with pytest.raises(PermFail) as info:
        deliver_mda(command, make_fd(b"m" * 1_000_000), env=_env(), timeout=20)
    assert time.monotonic() - start < 10
    assert info.value.text == "mda exited 3: " + "e" * 200


def test_killed_by_signal_is_tempfail(make_fd: MakeFd) -> None:
    with pytest.raises(TempFail) as info:
        deliver_mda("kill -TERM $$", make_fd(b"x\n"), env=_env())
    assert info.value.text == "mda killed by signal SIGTERM"


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_timeout_kills_the_process_group(tmp_path: Path, make_fd: MakeFd) -> None:
    pidfile = tmp_path / "pid"
    command = f"sleep 30 & echo $! > {shlex.quote(str(pidfile))}; wait"
    start = time.monotonic()
    with pytest.raises(TempFail) as info:
        deliver_mda(command, make_fd(b"x\n"), env=_env(), timeout=0.5)
    assert time.monotonic() - start < 3
    assert info.value.text == "mda timed out after 0.5s"
    pid = int(pidfile.read_text())
    for _ in range(50):
        if _gone(pid):
            break
        time.sleep(0.05)
    assert _gone(pid)


def test_leftover_holding_pipes_is_not_waited_for(make_fd: MakeFd) -> None:
    start = time.monotonic()
    deliver_mda("sleep 3 & exit 0", make_fd(b"x\n"), env=_env(), timeout=10)
    assert time.monotonic() - start < 2


def test_exit_status_failure_table() -> None:
    assert exit_status_failure(0, b"ignored") is None
    assert isinstance(exit_status_failure(75, b""), TempFail)
    assert isinstance(exit_status_failure(-9, b""), TempFail)
    fail = exit_status_failure(1, b"\n\n  quota exceeded  \nmore")
    assert isinstance(fail, PermFail)
    assert fail.text == "mda exited 1: quota exceeded"


def test_refuses_when_sigchld_is_ignored(make_fd: MakeFd) -> None:
    old = signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    try:
        with pytest.raises(TempFail) as info:
            deliver_mda("exit 1", make_fd(b"x\n"), env=_env())
    finally:
        signal.signal(signal.SIGCHLD, old)
    assert "SIGCHLD" in info.value.text
