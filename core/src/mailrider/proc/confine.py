"""What a child does to itself once set up: chroot, privilege drop, no_new_privs,
non-dumpable, and Linux Landlock where the kernel has it.

Invariants:

- Every child is non-dumpable (``PR_SET_DUMPABLE`` 0) from its first
  instructions to its exit, and again after the drop (a uid change resets the
  flag to the kernel's ``suid_dumpable``): its ``/proc/<pid>`` files belong to
  root and no process of the same uid can ptrace it or read its memory or
  environment.
- ``no_new_privs`` is set in every child, so nothing it executes can gain
  privileges through a setuid file, and Landlock may be entered without root.
- Chroot and Landlock apply only when the daemon runs as root (chroot needs
  it, and an ordinary user's quickstart keeps its plain layout). What a
  process needs from the disk must be loaded before :func:`confine`:
  :func:`mailrider.proc.child.preload` imports the code, each role's
  ``before_confine`` the rest (TLS stores, libcrypto).
- Landlock is best effort: an older kernel, a kernel without it, or a
  platform that is not Linux leaves the process as the chroot left it, and
  :func:`confine` says what it applied.
"""

from __future__ import annotations

import ctypes
import os
import pwd
import stat
import sys
import threading

from mailrider import log, paths
from mailrider.errors import ConfigError
from mailrider.proc import common

_PR_SET_DUMPABLE = 4
_PR_GET_DUMPABLE = 3
_PR_SET_NO_NEW_PRIVS = 38
_PR_GET_NO_NEW_PRIVS = 39

# Landlock (linux/landlock.h); the syscall numbers are the same on every
# architecture that has them
_SYS_LANDLOCK_CREATE_RULESET = 444
_SYS_LANDLOCK_RESTRICT_SELF = 446
_LANDLOCK_CREATE_RULESET_VERSION = 1
#: filesystem rights each ABI version knows: v1 the first 13 bits, v2 REFER,
#: v3 TRUNCATE, v5 IOCTL_DEV
_FS_RIGHTS = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 5: (1 << 16) - 1}
#: v4: BIND_TCP | CONNECT_TCP
_NET_RIGHTS = 0b11
#: v6: ABSTRACT_UNIX_SOCKET | SIGNAL (neither reaches outside the process's domain)
_SCOPES = 0b11


class _RulesetAttr(ctypes.Structure):
    _fields_ = [
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    ]


def _prctl(option: int, value: int) -> int:
    libc = common.load_libc()
    if libc is None or not sys.platform.startswith("linux"):
        return -1
    try:
        return int(libc.prctl(option, ctypes.c_ulong(value), ctypes.c_ulong(0),
                              ctypes.c_ulong(0), ctypes.c_ulong(0)))
    except AttributeError:
        return -1


def set_nondumpable() -> None:
    """No core dump, no ptrace or ``/proc/<pid>/mem``/``environ`` by the same uid."""
    _prctl(_PR_SET_DUMPABLE, 0)


_PR_SET_CHILD_SUBREAPER = 36


def set_child_subreaper(on: bool) -> bool:
    """Orphaned descendants are re-parented to this process (not init) while
    ``on``: the children the start-up server forks (proc/forkserver.py)."""
    return _prctl(_PR_SET_CHILD_SUBREAPER, 1 if on else 0) == 0


def set_no_new_privs() -> bool:
    return _prctl(_PR_SET_NO_NEW_PRIVS, 1) == 0


def landlock_abi() -> int:
    """The kernel's Landlock ABI version, 0 when it has none (or it is disabled)."""
    libc = common.load_libc()
    if libc is None or not sys.platform.startswith("linux"):
        return 0
    try:
        abi = int(libc.syscall(ctypes.c_long(_SYS_LANDLOCK_CREATE_RULESET), None,
                               ctypes.c_size_t(0),
                               ctypes.c_uint32(_LANDLOCK_CREATE_RULESET_VERSION)))
    except AttributeError:
        return 0
    return max(abi, 0)


def landlock(*, deny_fs: bool = True, deny_net: bool) -> int:
    """From now on forbid this process every filesystem access (``deny_fs``), every
    TCP bind and connect (``deny_net``), and signals and abstract unix sockets
    beyond itself.

    Descriptors already open keep working. Returns the ABI version applied, 0
    when the kernel offers none (or nothing it offers was asked for). Needs
    ``no_new_privs`` (or root)."""
    abi = landlock_abi()
    if abi <= 0:
        return 0
    libc = common.load_libc()
    assert libc is not None
    attr = _RulesetAttr()
    size = 8
    if deny_fs:
        attr.handled_access_fs = _FS_RIGHTS[max(v for v in _FS_RIGHTS if v <= abi)]
    if deny_net and abi >= 4:
        attr.handled_access_net = _NET_RIGHTS
        size = 16
    if abi >= 6:
        attr.scoped = _SCOPES
        size = 24
    if not (attr.handled_access_fs or attr.handled_access_net or attr.scoped):
        return 0
    fd = int(libc.syscall(ctypes.c_long(_SYS_LANDLOCK_CREATE_RULESET), ctypes.byref(attr),
                          ctypes.c_size_t(size), ctypes.c_uint32(0)))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"landlock_create_ruleset: {os.strerror(err)}")
    try:
        # no rule is added: nothing that is handled is granted
        if int(libc.syscall(ctypes.c_long(_SYS_LANDLOCK_RESTRICT_SELF), ctypes.c_int(fd),
                            ctypes.c_uint32(0))) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"landlock_restrict_self: {os.strerror(err)}")
    finally:
        os.close(fd)
    return abi


def own_spool(spool: str, qpw: pwd.struct_passwd) -> None:
    """Give the spool (0700) and what is in it to the queue user, who alone may use it.

    The parent calls this at start, before any child runs. A spool of an older
    version belongs to the daemon's shared user: its entries are re-owned,
    deepest first and the folder itself last, so an interrupted start is taken
    up again at the next. Only entries of that user (or already the queue
    user's) change hands, never through a symbolic link: anything else planted
    there (a link to a system file) is left alone and logged.
    """
    st = os.lstat(spool)
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"{spool} is not a folder")
    if (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (qpw.pw_uid, qpw.pw_gid, 0o700):
        return
    previous = {qpw.pw_uid}
    try:
        previous.add(pwd.getpwnam(paths.USER).pw_uid)
    except KeyError:
        pass
    moved = 0
    for folder, dirs, files in os.walk(spool, topdown=False):
        for name in dirs + files:
            path = os.path.join(folder, name)
            est = os.lstat(path)
            if stat.S_ISLNK(est.st_mode) or est.st_uid not in previous:
                log.warning("parent", "spool-foreign-entry", path=path, uid=est.st_uid)
                continue
            os.chown(path, qpw.pw_uid, qpw.pw_gid, follow_symlinks=False)
            moved += 1
    os.chown(spool, qpw.pw_uid, qpw.pw_gid, follow_symlinks=False)
    os.chmod(spool, 0o700)
    log.event("parent", "spool-owned", user=qpw.pw_name, entries=moved)


def make_empty_dir(path: str) -> None:
    """The chroot of pony, scheduler, control and klondike: root's, 0755, empty."""
    os.makedirs(path, mode=0o755, exist_ok=True)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"{path} is not a folder")
    os.chown(path, 0, 0, follow_symlinks=False)
    os.chmod(path, 0o755)  # noqa: S103 - read-only for all: nothing is in it
    if os.listdir(path):
        raise ConfigError(f"{path} must stay empty: it is the chroot of pony, scheduler, "
                          "control and klondike")


def enter_chroot(root: str) -> None:
    os.chroot(root)
    os.chdir("/")


def confine(role: str, pw: pwd.struct_passwd | None, *, chroot: str | None = None,
            landlock_fs: bool = False, deny_net: bool = False) -> None:
    """Chroot (as root), drop to ``pw``, then no_new_privs, non-dumpable, Landlock.

    With ``pw`` None (not started as root) only no_new_privs and the dumpable
    flag are set. Raises OSError when a step that must hold fails."""
    if pw is not None and chroot is not None:
        enter_chroot(chroot)
    common.drop_privileges(pw)
    nnp = set_no_new_privs()
    set_nondumpable()
    applied = 0
    if pw is not None and (landlock_fs or deny_net):
        if not nnp:
            raise OSError("no_new_privs could not be set")
        try:
            applied = landlock(deny_fs=landlock_fs, deny_net=deny_net)
        except OSError as exc:
            # best effort, as on a kernel without it: the chroot still holds
            log.warning(role, "landlock-failed", error=str(exc))
    if threading.active_count() > 1:
        # no_new_privs and Landlock bind the calling thread and its future threads only
        log.warning(role, "confine-threads", threads=threading.active_count())
    log.debug(role, "confined", user=pw.pw_name if pw else None, chroot=chroot if pw else None,
              no_new_privs="yes" if nnp else "no", landlock=applied or None)
