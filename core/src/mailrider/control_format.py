"""The control protocol's pure helpers, shared by the control process
(proc/control.py) and mailriderctl, which must not import a process module
(docs/processes.md): the control socket's path, the id check of commands
that take one, and the ``show queue`` line.
"""

from __future__ import annotations

import functools

from mailrider import paths
from mailrider.queue import envelope as envmod
from mailrider.queue.envelope import Envelope


def socket_path(statedir: str) -> str:
    """The control socket of the daemon whose state folder is ``statedir``."""
    return paths.control_socket(statedir)


def invalid_id(words: list[str]) -> str | None:
    """The id argument of ``words`` when that command takes one and it is not
    valid, else None: ``show envelope`` takes an envelope id; ``show message``
    and ``discover`` an envelope or message id; ``schedule``, ``remove`` and
    ``pause``/``resume envelope`` those or "all"."""
    if words[:2] == ["show", "envelope"]:
        args, check = words[2:], envmod.is_evpid
    elif words[:2] == ["show", "message"]:
        args, check = words[2:], functools.partial(envmod.is_target, all_ok=False)
    elif words[:2] in (["pause", "envelope"], ["resume", "envelope"]):
        args, check = words[2:], envmod.is_target
    elif words[:1] == ["discover"]:
        args, check = words[1:], functools.partial(envmod.is_target, all_ok=False)
    elif words[:1] in (["schedule"], ["remove"]):
        args, check = words[1:], envmod.is_target
    else:
        return None
    if len(args) != 1 or check(args[0]):
        return None  # a missing or extra argument is an unknown command
    return args[0]


def format_queue_line(env: Envelope, runstate: str, delay: str) -> str:
    """One ``show queue`` line: the 14 fields of smtpctl (mailriderctl(8))."""
    sockaddr = env.sockaddr
    family = "local" if sockaddr in ("", "local") else ("inet6" if ":" in sockaddr else "inet4")
    ctime, ttl = env.ctime, env.ttl
    flags = ",".join(env.flags)
    error = env.errorline.replace("|", "\\|")
    fields = [
        env.evpid, family, env.type, flags, env.sender, env.rcpt, env.dest, str(ctime),
        str(ctime + ttl), str(env.last_try or 0), str(env.retry), runstate, delay, error,
    ]
    return "|".join(fields)
