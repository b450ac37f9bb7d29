"""Confinement helpers: users, the spool's owner, the empty chroot, prctl flags, Landlock."""

from __future__ import annotations

import os
import pathlib
import pwd
import socket
import stat
import subprocess
import sys
import textwrap

import pytest
from mailrider import paths
from mailrider.errors import ConfigError
from mailrider.proc import common, confine


def run_child(code: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter: the flags it sets must not touch this one."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=60)


def test_missing_user_error_names_the_useradd_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    for attr, fn in (("USER", common.unprivileged_user), ("QUEUE_USER", common.queue_user),
                     ("EXT_USER", common.ext_user)):
        monkeypatch.setattr(paths, attr, "no-such-user-mr13")
        with pytest.raises(ConfigError) as exc:
            fn()
        assert ("useradd --system --no-create-home --home-dir /nonexistent "
                "--shell /usr/sbin/nologin no-such-user-mr13") in str(exc.value)


def test_users_are_none_when_not_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 4321)
    monkeypatch.setattr(paths, "EXT_USER", "no-such-user-mr13")
    assert common.ext_user() is None
    assert common.role_user("queue") is None
    assert common.role_user("pony") is None


def test_role_user_gives_the_queue_its_own_user(monkeypatch: pytest.MonkeyPatch) -> None:
    me = pwd.getpwuid(os.getuid())
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(paths, "USER", "root")
    monkeypatch.setattr(paths, "QUEUE_USER", me.pw_name)
    queue = common.role_user("queue")
    assert queue is not None and queue.pw_name == me.pw_name
    for role in ("pony", "lka", "control", "scheduler", "klondike"):
        pw = common.role_user(role)
        assert pw is not None and pw.pw_name == "root"


def test_children_become_non_dumpable_with_no_new_privs() -> None:
    res = run_child("""
        import ctypes
        from mailrider.proc import confine
        libc = ctypes.CDLL(None)
        assert libc.prctl(3, 0, 0, 0, 0) == 1   # PR_GET_DUMPABLE: dumpable at first
        confine.confine("test", None)
        print(libc.prctl(3, 0, 0, 0, 0), libc.prctl(39, 0, 0, 0, 0))
    """)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["0", "1"]


@pytest.mark.skipif(confine.landlock_abi() == 0, reason="the kernel has no Landlock")
def test_landlock_forbids_the_filesystem_and_tcp(tmp_path: pathlib.Path) -> None:
    secret = tmp_path / "file"
    secret.write_text("x")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    res = run_child(f"""
        import os, socket
        from mailrider.proc import confine
        kept = os.open({str(secret)!r}, os.O_RDONLY)
        assert confine.set_no_new_privs()
        abi = confine.landlock(deny_net=True)
        print("abi", abi)
        print("kept", os.read(kept, 1).decode())
        for label, fn in (("open", lambda: open({str(secret)!r}).read()),
                          ("list", lambda: os.listdir({str(tmp_path)!r})),
                          ("create", lambda: open({str(tmp_path / "new")!r}, "w").close()),
                          ("tcp", lambda: socket.create_connection(("127.0.0.1", {port}), 5))):
            try:
                fn()
                print(label, "allowed")
            except PermissionError:
                print(label, "denied")
    """)
    listener.close()
    assert res.returncode == 0, res.stderr
    lines = dict(line.split(" ", 1) for line in res.stdout.splitlines())
    abi = int(lines.pop("abi"))
    assert abi >= 1
    assert lines.pop("kept") == "x"  # what was open before stays usable
    assert lines.pop("open") == lines.pop("list") == lines.pop("create") == "denied"
    # TCP rules exist from ABI 4 on
    assert lines.pop("tcp") == ("denied" if abi >= 4 else "allowed")
    assert not (tmp_path / "new").exists()


def _exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


@pytest.mark.skipif(os.geteuid() != 0 or not (_exists(paths.USER) and _exists(paths.QUEUE_USER)),
                    reason="needs root and the daemon's users")
def test_old_spool_is_reowned_but_nothing_planted_in_it(tmp_path: pathlib.Path) -> None:
    old = pwd.getpwnam(paths.USER)
    queue = pwd.getpwnam(paths.QUEUE_USER)
    outside = tmp_path / "shadow"
    outside.write_text("root's")
    spool = tmp_path / "spool"
    (spool / "queue" / "ab" / "abcdef01").mkdir(parents=True)
    (spool / "queue" / "ab" / "abcdef01" / "message").write_text("body")
    (spool / "queue" / "ab" / "abcdef01" / "abcdef0112345678").write_text("envelope")
    (spool / "queue" / "ab" / "link").symlink_to(outside)
    (spool / "rootfile").write_text("root's too")
    for path in [spool, *spool.rglob("*")]:
        if path.name not in ("link", "rootfile"):
            os.chown(path, old.pw_uid, old.pw_gid)
            os.chmod(path, 0o700)
    confine.own_spool(str(spool), queue)
    top = os.lstat(spool)
    assert (top.st_uid, top.st_gid, stat.S_IMODE(top.st_mode)) == (queue.pw_uid, queue.pw_gid,
                                                                   0o700)
    for path in spool.rglob("*"):
        st = os.lstat(path)
        if path.name in ("link", "rootfile"):
            assert st.st_uid == 0, path  # planted: left alone
        else:
            assert (st.st_uid, st.st_gid) == (queue.pw_uid, queue.pw_gid), path
    assert os.stat(outside).st_uid == 0  # the link was not followed


@pytest.mark.skipif(os.geteuid() != 0, reason="makes a root-owned folder")
def test_empty_dir_is_made_root_owned_and_must_stay_empty(tmp_path: pathlib.Path) -> None:
    empty = tmp_path / "empty"
    confine.make_empty_dir(str(empty))
    st = os.lstat(empty)
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o755)
    os.chmod(empty, 0o777)
    confine.make_empty_dir(str(empty))  # again at the next start: fixed, fine
    assert stat.S_IMODE(os.lstat(empty).st_mode) == 0o755
    (empty / "dropped").write_text("x")
    with pytest.raises(ConfigError, match="must stay empty"):
        confine.make_empty_dir(str(empty))
    link = tmp_path / "link"
    link.symlink_to(tmp_path)
    with pytest.raises(ConfigError, match="not a folder"):
        confine.make_empty_dir(str(link))
