"""The control protocol's pure helpers, shared by the control process
(proc/control.py) and mailriderctl, which must not import a process module
(docs/processes.md): the control socket's path, the id check of commands
that take one, the ``show envelope`` fields and the ``show queue`` line.
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


#: ``show envelope``: smtpctl's fields, in its order (the envelope file of
#: OpenSMTPD); mailrider's own fields follow in the spool's order
ENVELOPE_FIELDS = (
    "version", "dispatcher", "tag", "type", "smtpname", "helo", "hostname", "username",
    "errorline", "sockaddr", "sender", "rcpt", "dest", "ctime", "last-try", "last-bounce",
    "ttl", "retry", "flags", "dsn-notify", "dsn-ret", "dsn-envid", "dsn-orcpt", "esc-class",
    "esc-code", "mda-exec", "mda-subaddress", "mda-user", "bounce-ttl", "bounce-delay",
    "bounce-type",
)


def format_envelope(lines: list[str]) -> list[str]:
    """The ``key: value`` lines of an envelope, smtpctl's fields first in its order."""
    fields: dict[str, str] = {}
    for line in lines:
        key, sep, value = line.partition(": ")
        if sep and key not in fields:
            fields[key] = value
    for key in ("last-try", "retry"):  # smtpctl prints these even when 0
        fields.setdefault(key, "0")
    first = [k for k in ENVELOPE_FIELDS if k in fields]
    rest = [k for k in fields if k not in ENVELOPE_FIELDS]
    return [f"{k}: {fields[k]}" for k in first + rest]


_QUEUE_FLAGS = (("bounce", "bounce"), ("authenticated", "auth"), ("internal", "internal"),
                ("suspend", "suspend"), ("hold", "hold"))


def format_queue_line(env: Envelope, runstate: str, delay: str,
                      more_flags: tuple[str, ...] = ()) -> str:
    """One ``show queue`` line: the 14 fields of smtpctl (mailriderctl(8))."""
    sockaddr = env.sockaddr
    family = "local" if sockaddr in ("", "local") else ("inet6" if ":" in sockaddr else "inet4")
    ctime, ttl = env.ctime, env.ttl
    words = (*env.flags, *more_flags)
    # smtpctl's words and order
    flags = ",".join(short for word, short in _QUEUE_FLAGS if word in words)
    error = env.errorline.replace("|", "\\|")
    fields = [
        env.evpid, family, env.type, flags, env.sender, env.rcpt, env.dest, str(ctime),
        str(ctime + ttl), str(env.last_try or 0), str(env.retry), runstate, delay, error,
    ]
    return "|".join(fields)
