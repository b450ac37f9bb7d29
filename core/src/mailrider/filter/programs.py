"""The programs of proc filters: which ones a start runs, how their command
is found, and what ``mailriderd -n`` (and the start, before it forks) checks
of them (docs/config.md §3).

The parent runs a filter's command through ``/bin/sh -c "exec COMMAND"``,
as the filter's ``user`` (``group``), or the program user when none is
named, inside its ``chroot`` when one is given; a first word that is not a
path is looked for in our libexec folders first, then in OpenSMTPD's, then
on ``PATH``.
"""

from __future__ import annotations

import grp
import os
import pwd
import shlex
import shutil

from mailrider import paths
from mailrider.access import program_runnable
from mailrider.config.model import Action, Config, Filter
from mailrider.errors import ConfigError


def relay_filters(config: Config, action: Action) -> list[str]:
    """The filter names of a relay action's ``filter`` option (docs/filter-protocol.md §8)."""
    names = action.relay.get("filter") if action.method == "relay" else None
    return [str(n) for n in names] if isinstance(names, list) else []


def expand_chain(config: Config, names: list[str]) -> list[Filter]:
    """The filters ``names`` stand for, chains flattened, in order."""
    out: list[Filter] = []
    for n in names:
        f = config.filters[n]
        out.extend(config.filters[c] for c in f.chain) if f.kind == "chain" else out.append(f)
    return out


def filter_subsystems(config: Config) -> dict[str, set[str]]:
    """Filter name -> where it is used: ``smtp-in`` (a listener's chain),
    ``smtp-out`` (a relay action's), both (the handshake says so)."""
    out: dict[str, set[str]] = {}
    for lst in config.listeners:
        for f in expand_chain(config, lst.filters):
            out.setdefault(f.name, set()).add("smtp-in")
    for action in config.actions.values():
        for f in expand_chain(config, relay_filters(config, action)):
            out.setdefault(f.name, set()).add("smtp-out")
    return out


def used_filters(config: Config) -> list[Filter]:
    """The filters the listeners and relay actions use, chains expanded,
    each once, in order."""
    names: list[str] = []
    for lst in config.listeners:
        for n in lst.filters:
            if n not in names:
                names.append(n)
    for action in config.actions.values():
        for n in relay_filters(config, action):
            if n not in names:
                names.append(n)
    out: list[Filter] = []
    for f in expand_chain(config, names):
        if f not in out:
            out.append(f)
    return out


def filter_command(command: str) -> str:
    """``command`` with its first word made a path when a libexec folder has
    it: ours first, then OpenSMTPD's (its filter-* programs live there)."""
    first = shlex.split(command)[0] if command.strip() else ""
    if first and not first.startswith("/"):
        for folder in (*paths.libexec_dirs(), *paths.opensmtpd_libexec_dirs()):
            if os.access(os.path.join(folder, first), os.X_OK):
                return os.path.join(folder, command)
    return command


def filter_credentials(f: Filter, default_user: pwd.struct_passwd | None
                       ) -> tuple[pwd.struct_passwd | None, int | None]:
    """Who the parent runs ``f``'s program as: its ``user`` (else
    ``default_user``, the program user) and gid (its ``group``, else the
    user's). ``(None, None)`` when ``default_user`` is None: not root, no
    switch. ValueError names a user or group that does not exist, or root."""
    if default_user is None:
        return None, None
    pw, gid = default_user, default_user.pw_gid
    if f.user is not None:
        try:
            pw = pwd.getpwnam(f.user)
        except KeyError:
            raise ValueError(f"user {f.user} does not exist") from None
        gid = pw.pw_gid
    if f.group is not None:
        try:
            gid = grp.getgrnam(f.group).gr_gid
        except KeyError:
            raise ValueError(f"group {f.group} does not exist") from None
    if pw.pw_uid == 0 or gid == 0:
        raise ValueError("a filter never runs as root or group 0")
    return pw, gid


class _Program:
    """One program to check, with the statement that names its command."""

    def __init__(self, f: Filter, what: str) -> None:
        self.f = f
        self.what = what  # "filter" (proc-exec) or "proc"

    def err(self, message: str) -> ConfigError:
        f = self.f
        return ConfigError(f"{self.what} {f.name}: {message}", f.where.file, f.where.line)

    def path(self) -> str:
        """The program's path as seen from outside its chroot ("" when unknown)."""
        f = self.f
        try:
            words = shlex.split(filter_command(f.command or ""))
        except ValueError as exc:
            raise self.err(f"cannot parse the command: {exc}") from None
        if not words:
            raise self.err("empty command")
        first = words[0]
        if f.chroot:
            return os.path.join(f.chroot, first.lstrip("/")) if first.startswith("/") else ""
        if first.startswith("/"):
            return first
        return shutil.which(first) or ""


def _programs(config: Config) -> list[_Program]:
    out: list[_Program] = []
    for used in used_filters(config):
        if used.kind == "proc" and used.command is not None:
            proc = config.procs.get(used.command)
            if proc is not None:
                out.append(_Program(proc, "proc"))
        elif used.kind == "proc-exec":
            out.append(_Program(used, "filter"))
    return out


def check_programs(config: Config, default_user: pwd.struct_passwd | None) -> None:
    """Raise ConfigError, at the statement naming the command, for the first
    program a start would fail to run: a ``user`` or ``group`` that does not
    exist, a program not found, or (``default_user`` given: running as root)
    one its user cannot execute. ``default_user`` is the program user."""
    for prog in _programs(config):
        f = prog.f
        try:
            pw, gid = filter_credentials(f, default_user)
        except ValueError as exc:
            raise prog.err(str(exc)) from None
        program = prog.path()
        if not program:
            if f.chroot:
                continue  # a command found through PATH inside a chroot: not checked
            first = shlex.split(f.command or "")[0]
            folders = (*paths.libexec_dirs(), *paths.opensmtpd_libexec_dirs())
            raise prog.err(f"program {first} not found (looked in: "
                           f"{', '.join(folders)}, PATH)")
        if not os.path.exists(program):
            raise prog.err(f"program {program} not found")
        if pw is not None and gid is not None and not program_runnable(pw.pw_uid, gid, program):
            raise prog.err(f"user {pw.pw_name} cannot run the program {program} (check the "
                           f"mode of the file and of every folder above it)")
