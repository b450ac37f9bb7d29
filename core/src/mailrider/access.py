"""What another user may do with a file, asked as that user.

The daemon checks at ``mailriderd -n`` and at start what its unprivileged
processes and programs will need (a table file lka reads, a backend or
filter program the program user runs): the answer comes from a forked child
that drops to the user, so the kernel walks every folder above the path as
it will for the real process. Root only (elsewhere nobody switches user).
"""

from __future__ import annotations

import os


def user_can(uid: int, gid: int, path: str, mode: int) -> bool:
    """Whether ``uid`` with group ``gid`` and no supplementary groups (as the
    daemon's processes drop) may access ``path`` with ``mode`` (os.R_OK, ...)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child, reported by its exit status
        code = 2
        try:
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            code = 0 if os.access(path, mode) else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 0


def program_runnable(uid: int, gid: int, path: str) -> bool:
    """Whether ``uid``/``gid`` can exec ``path``: execute permission, and for
    a ``#!`` script read permission and an interpreter it can run in turn."""
    if not user_can(uid, gid, path, os.X_OK):
        return False
    try:
        with open(path, "rb") as f:
            head = f.readline(256)
    except OSError:
        return True  # exec reports it; nothing more to learn here
    if not head.startswith(b"#!"):
        return True
    words = head[2:].split()
    interpreter = os.fsdecode(words[0]) if words else ""
    return user_can(uid, gid, path, os.R_OK) and (
        not interpreter or user_can(uid, gid, interpreter, os.X_OK))
