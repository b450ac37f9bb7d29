"""Children forked by the start-up server end up exactly as confined as fresh
ones (docs/performance.md §1, proc/forkserver.py).

Two daemons with the same configuration, one starting its children through
the start-up server (the default), one as fresh interpreters
(``MAILRIDER_CHILD_START=exec``). For each role, what /proc shows of the
child must be the same in both: users, groups, capabilities, no_new_privs,
signals, rlimits, root and working folder, process group and session, the
kinds of its descriptors, its owner (non-dumpable) and its parent. Both
deliver mail. The start-up server is gone once the children run, and the
forked children do share one address-space layout (the trade-off of
performance.md §1) where fresh ones do not.
"""

from __future__ import annotations

import os
import pathlib
import smtplib
from collections import Counter
from collections.abc import Iterator

import pytest
from harness import Daemon, wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0,
                                reason="the daemon drops and chroots its children under root")

ROLES = ("control", "lka", "queue", "scheduler", "pony", "klondike")
CONFIG = """\
listen on 127.0.0.1 port {port}
action "local" maildir "{mail}/%{{user.username}}" virtual {{ "@" = "{user}" }}
match from any for domain "example.test" action "local"
"""
#: /proc/PID/status lines that must be the same for a role in both daemons
STATUS_KEYS = ("Uid", "Gid", "Groups", "NoNewPrivs", "Seccomp", "CapInh", "CapPrm", "CapEff",
               "CapBnd", "CapAmb", "SigBlk", "SigIgn", "SigCgt", "Umask", "Threads")
MSG = b"From: a@example.org\r\nTo: b@example.test\r\nSubject: forked\r\n\r\nhello\r\n"


def _status(pid: int) -> dict[str, str]:
    out = {}
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        out[key] = value.strip()
    return out


def _children(root: int) -> dict[int, str]:
    """pid -> comm of every direct child of ``root``."""
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if int(_status(int(entry))["PPid"]) == root:
                    out[int(entry)] = pathlib.Path(f"/proc/{entry}/comm").read_text().strip()
            except (OSError, KeyError):
                continue
    return out


def _roles(d: Daemon) -> dict[str, int]:
    assert d.proc is not None
    found = {}
    for pid in _children(d.proc.pid):
        try:
            argv = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"mailrider.proc.child" in argv and b"-x" in argv:
            found[argv[argv.index(b"-x") + 1].decode()] = pid
    return found if set(found) == set(ROLES) else {}


def _fd_kinds(pid: int, state: pathlib.Path) -> Counter[str]:
    kinds: Counter[str] = Counter()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        kind = target.partition(":")[0] if target.startswith(("socket:", "pipe:")) else target
        kinds[kind.replace(str(state), "STATE")] += 1
    return kinds


def _libc_base(pid: int) -> str:
    for line in pathlib.Path(f"/proc/{pid}/maps").read_text().splitlines():
        if "libc.so" in line or "libc-" in line:
            return line.split("-")[0]
    return ""


def describe(d: Daemon, pid: int) -> dict[str, object]:
    """What a child's confinement looks like from /proc, with the state folder
    and the daemon's own pid taken out."""
    assert d.proc is not None
    st = _status(pid)
    stat_fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    pgrp, session = int(stat_fields[2]), int(stat_fields[3])
    info: dict[str, object] = {k: st[k] for k in STATUS_KEYS if k in st}
    info["parent"] = int(st["PPid"]) == d.proc.pid
    info["pgrp-session"] = (pgrp == os.getpgid(d.proc.pid), session == os.getsid(d.proc.pid))
    info["root"] = os.readlink(f"/proc/{pid}/root").replace(str(d.state), "STATE")
    info["cwd"] = os.readlink(f"/proc/{pid}/cwd").replace(str(d.state), "STATE")
    info["limits"] = pathlib.Path(f"/proc/{pid}/limits").read_text()
    info["proc-owner"] = os.stat(f"/proc/{pid}/environ").st_uid  # 0: non-dumpable
    info["fds"] = dict(_fd_kinds(pid, d.state))
    return info


def _start(env: dict[str, str]) -> Daemon:
    d = Daemon(CONFIG, extra_env=env).start()
    procs = wait_for(lambda: _roles(d))
    assert isinstance(procs, dict)
    # every child is through its set-up once none is root any more
    wait_for(lambda: all(_status(p)["Uid"].split()[0] != "0" for p in procs.values()))
    return d


@pytest.fixture(scope="module")
def daemons() -> Iterator[tuple[Daemon, Daemon]]:
    forked = _start({"MAILRIDER_CHILD_START": "fork"})
    try:
        fresh = _start({"MAILRIDER_CHILD_START": "exec"})
        try:
            yield forked, fresh
        finally:
            fresh.cleanup()
    finally:
        forked.cleanup()


def _settled(d: Daemon, pid: int) -> dict[str, object]:
    # a child may still be opening its last descriptors right after its set-up
    last: list[dict[str, object]] = []

    def same_twice() -> bool:
        now = describe(d, pid)
        ok = bool(last) and last[-1] == now
        last.append(now)
        return ok

    wait_for(same_twice, interval=0.3)
    return last[-1]


@pytest.mark.parametrize("role", ROLES)
def test_a_forked_child_is_confined_as_a_fresh_one(daemons: tuple[Daemon, Daemon],
                                                    role: str) -> None:
    forked, fresh = daemons
    a = _settled(forked, _roles(forked)[role])
    b = _settled(fresh, _roles(fresh)[role])
    assert a == b
    assert a["parent"] is True and a["proc-owner"] == 0
    assert a["Uid"] != "0\t0\t0\t0" and a["CapEff"] == "0000000000000000"


def test_the_server_is_gone_and_the_children_were_forked(
        daemons: tuple[Daemon, Daemon]) -> None:
    forked, fresh = daemons
    for d in daemons:
        assert d.proc is not None
        # the parent's children: the six and nothing else (no start-up server left)
        assert sorted(_children(d.proc.pid)) == sorted(_roles(d).values())
    assert "started" in forked.log()
    # forked from one interpreter: one layout for the six (performance.md §1)
    bases = {_libc_base(p) for p in _roles(forked).values()}
    assert len(bases) == 1 and "" not in bases
    if pathlib.Path("/proc/sys/kernel/randomize_va_space").read_text().strip() != "0":
        assert len({_libc_base(p) for p in _roles(fresh).values()}) > 1


def test_forked_children_deliver(daemons: tuple[Daemon, Daemon]) -> None:
    for d in daemons:
        with smtplib.SMTP("127.0.0.1", d.port, timeout=20) as c:
            assert c.sendmail("a@example.org", ["b@example.test"], MSG) == {}
        box = d.mail / d.user / "new"
        files = wait_for(lambda box=box: box.is_dir() and os.listdir(box))
        assert isinstance(files, list) and len(files) == 1
        assert b"hello" in (box / files[0]).read_bytes()
