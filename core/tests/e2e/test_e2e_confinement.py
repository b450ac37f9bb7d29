"""Users and confinement under root, tested as an attacker would (issue #13, 2 and 3).

One daemon serves the module. It runs a hostile filter and has an alias whose
``|command`` is the same hostile program (spy.py): both try to list, read and
write the spool and to read the environment and memory of, or ptrace, every
daemon process; every attempt must be refused. Beside that, each child's
/proc entry must show the user, chroot and flags it promises.
"""

from __future__ import annotations

import os
import pathlib
import pwd
import re
import shutil
import socket
import stat
import sys
from collections.abc import Iterator

import pytest
from e2e_util import smtp_send
from harness import Daemon, program_user, wait_for
from mailrider import paths

pytestmark = pytest.mark.skipif(os.geteuid() != 0,
                                reason="the daemon drops and chroots its children under root")

SPY = pathlib.Path(__file__).resolve().parent / "spy.py"
ROLES = ("control", "lka", "queue", "scheduler", "pony", "klondike")
#: where each child is chrooted, relative to the state folder ("" = not chrooted)
CHROOTS = {"control": "empty", "lka": "", "queue": "spool", "scheduler": "empty",
           "pony": "empty", "klondike": "empty"}

CONFIG = """\
filter "spy" proc-exec "{python} {state}/spy.py filter {state}"
listen on 127.0.0.1 port {port} filter "spy"
table all {{ "@" = "{user}" }}
table aliases file:{state}/aliases
action "al" maildir "{mail}/%{{user.username}}" alias <aliases>
action "hold" mda "exit 75" virtual <all>
match from any for domain "alias.test" action "al"
match from any for domain "hold.test" action "hold"
"""

SPY_LINE = re.compile(r"SPY ([^\s\"]+)(?: ([^\s\"]+))?")


@pytest.fixture(scope="module")
def d() -> Iterator[Daemon]:
    daemon = Daemon(config=CONFIG.replace("{python}", sys.executable))
    shutil.copy(SPY, daemon.state / "spy.py")
    os.chmod(daemon.state / "spy.py", 0o755)
    (daemon.state / "aliases").write_text(
        f'spy: "|{sys.executable} {daemon.state}/spy.py command {daemon.state} '
        f'{daemon.ext}/spy.out"\n')
    os.chmod(daemon.state / "aliases", 0o644)
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.cleanup()


def status(pid: int | str, task: str = "") -> dict[str, str]:
    path = f"/proc/{pid}/task/{task}/status" if task else f"/proc/{pid}/status"
    out = {}
    for line in pathlib.Path(path).read_text().splitlines():
        key, _, value = line.partition(":")
        out[key] = value.strip()
    return out


def children(d: Daemon) -> dict[str, int]:
    assert d.proc is not None
    found: dict[str, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            ppid = int(status(entry)["PPid"])
            argv = pathlib.Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except (OSError, KeyError):
            continue
        if ppid == d.proc.pid and b"-x" in argv:
            found[argv[argv.index(b"-x") + 1].decode()] = int(entry)
    return found


def descendants(root: int) -> list[int]:
    """Every process below ``root`` (children, deliveries, filters, backends)."""
    parent: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                parent[int(entry)] = int(status(entry)["PPid"])
            except (OSError, KeyError):
                continue
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        out += kids
        todo += kids
    return out


def spy_results(lines: list[str]) -> dict[str, str]:
    out = {}
    for line in lines:
        match = SPY_LINE.search(line)
        if match:
            out[match.group(1)] = match.group(2) or ""
    return out


def check_spy(res: dict[str, str], uid: int | None = None) -> None:
    whoami = res.pop("whoami")
    assert whoami != "uid=0", "the hostile program runs as root"
    if uid is not None:
        assert whoami == f"uid={uid}"
    # the method works: it can read what is its own
    assert res.pop("self-environ") == "OPEN"
    res.pop("done")
    want = {"spool-list", "spool-queue", "spool-write"} | {
        f"{role}-{what}" for role in ROLES for what in ("environ", "mem", "ptrace")}
    assert set(res) == want, set(res) ^ want
    opened = {k: v for k, v in res.items() if not v.startswith("denied:")}
    assert not opened, opened


def test_each_child_runs_as_its_user_in_its_chroot_without_privileges(d: Daemon) -> None:
    procs = wait_for(lambda: (lambda c: c if len(c) == len(ROLES) else None)(children(d)))
    assert isinstance(procs, dict) and set(procs) == set(ROLES)
    # pony may listen before a slower child is through its set-up
    wait_for(lambda: all(status(pid)["Uid"].split()[0] != "0" for pid in procs.values()))
    daemon = pwd.getpwnam(paths.USER).pw_uid
    queue = pwd.getpwnam(paths.QUEUE_USER).pw_uid
    for role, pid in procs.items():
        st = status(pid)
        want = queue if role == "queue" else daemon
        assert st["Uid"].split() == [str(want)] * 4, (role, st["Uid"])
        assert st["Gid"].split() == [str(pwd.getpwuid(want).pw_gid)] * 4, (role, st["Gid"])
        assert st["Groups"] == "", (role, st["Groups"])
        assert st["CapEff"] == "0" * 16 and st["CapPrm"] == "0" * 16, role
        for task in os.listdir(f"/proc/{pid}/task"):
            assert status(pid, task)["NoNewPrivs"] == "1", (role, task)
        root = os.readlink(f"/proc/{pid}/root")
        want_root = str(d.state / CHROOTS[role]) if CHROOTS[role] else "/"
        assert root == want_root, (role, root)
        # non-dumpable: its /proc files belong to root, not to its own uid
        assert os.stat(f"/proc/{pid}/environ").st_uid == 0, role
        assert os.stat(f"/proc/{pid}/mem").st_uid == 0, role
    empty = os.lstat(d.state / "empty")
    assert stat.S_ISDIR(empty.st_mode) and empty.st_uid == 0
    assert stat.S_IMODE(empty.st_mode) == 0o755
    assert os.listdir(d.state / "empty") == []


def test_spool_belongs_to_the_queue_user_alone(d: Daemon) -> None:
    t = smtp_send(d.port, "alice@example.org", ["held@hold.test"])
    assert t.rcpts[0][0] == 250 and t.data is not None and t.data[0] == 250
    spool = d.state / "spool"
    # the message stays queued (its mda says "try later")
    wait_for(lambda: any((spool / "queue").rglob("message")))
    queue = pwd.getpwnam(paths.QUEUE_USER).pw_uid
    top = os.lstat(spool)
    assert (top.st_uid, stat.S_IMODE(top.st_mode)) == (queue, 0o700)
    entries = 0
    for path in spool.rglob("*"):
        st = os.lstat(path)
        entries += 1
        assert st.st_uid == queue, path
        assert not stat.S_ISLNK(st.st_mode), path
        assert st.st_mode & 0o077 == 0, (path, oct(st.st_mode))
    assert entries >= 3
    # nothing else of this daemon runs as the queue user
    assert d.proc is not None
    procs = children(d)
    for pid in descendants(d.proc.pid):
        try:
            uids = status(pid)["Uid"].split()
        except OSError:
            continue
        if str(queue) in uids:
            assert pid == procs["queue"], (pid, uids)


def test_hostile_filter_reaches_neither_spool_nor_daemon_processes(d: Daemon) -> None:
    # a connection makes the filter act (its first link-connect report)
    with socket.create_connection(("127.0.0.1", d.port), timeout=20) as s:
        s.recv(512)
        s.sendall(b"QUIT\r\n")
        s.recv(512)
    wait_for(lambda: "SPY done" in d.log(), timeout=30)
    lines = [ln for ln in d.log().splitlines() if "filter=spy" in ln and "SPY" in ln]
    check_spy(spy_results(lines), uid=program_user().pw_uid)
    assert not (d.state / "spool" / "planted").exists()


def test_hostile_alias_command_reaches_neither_spool_nor_daemon_processes(d: Daemon) -> None:
    t = smtp_send(d.port, "alice@example.org", ["spy@alias.test"])
    assert t.rcpts[0][0] == 250 and t.data is not None and t.data[0] == 250
    out = d.ext / "spy.out"
    wait_for(lambda: out.exists() and "SPY done" in out.read_text(), timeout=30)
    check_spy(spy_results(out.read_text().splitlines()), uid=program_user().pw_uid)
