"""What every mailrider process shares: its context, start-up and privilege drop.

Children run ``mailrider.proc.child`` with the role and the descriptor
numbers of their socketpairs, forked by the start-up server (a fresh
interpreter that never held the parent's memory: proc/forkserver.py) or, with
``MAILRIDER_CHILD_START=exec``, each as a fresh interpreter; never by a bare
fork of the parent. Each child re-reads the configuration, as OpenSMTPD's
processes do.
"""

from __future__ import annotations

import asyncio
import ctypes
import grp
import os
import pwd
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass, field

from mailrider import __version__, log, paths, profile
from mailrider.config import check_supported, parse_file, parse_string
from mailrider.config.default import default_config_text
from mailrider.config.model import Config
from mailrider.errors import ConfigError
from mailrider.ipc import messages as m
from mailrider.ipc import policy
from mailrider.ipc.channel import Channel, Handler

ROLES = ("control", "lka", "queue", "scheduler", "pony", "klondike")

#: which processes have a socketpair between them (besides parent <-> every child)
LINKS = (
    ("control", "lka"), ("control", "queue"), ("control", "scheduler"),
    ("control", "pony"), ("control", "klondike"),
    ("pony", "lka"), ("pony", "queue"), ("pony", "klondike"),
    ("queue", "lka"), ("queue", "scheduler"),
)


@dataclass
class Options:
    """mailriderd's command line, shared by the parent and every child."""

    config_file: str | None = None  # None: paths.CONFIG_FILE if it exists, else built-in
    macros: dict[str, str] = field(default_factory=dict)
    statedir: str = ""
    foreground: bool = False
    verbose: int = 0
    check_only: bool = False
    #: subsystems paused from the start (-P, as OpenSMTPD's smtpd -P): mda, mta, smtp
    paused: list[str] = field(default_factory=list)

    def argv(self) -> list[str]:
        out = ["-S", self.statedir]
        if self.config_file is not None:
            out += ["-f", self.config_file]
        for k, v in self.macros.items():
            out += ["-D", f"{k}={v}"]
        if self.foreground:
            out.append("-d")
        out += ["-v"] * self.verbose
        for system in self.paused:
            out += ["-P", system]
        return out


#: what -P may pause at start; mailriderctl resume ... lets it go
PAUSABLE = ("mda", "mta", "smtp")


def parse_options(argv: list[str], prog: str = "mailriderd") -> Options:
    import argparse

    p = argparse.ArgumentParser(prog=prog, description="the mailrider mail transfer agent")
    p.add_argument("-d", action="store_true", help="stay in the foreground, log to stderr")
    p.add_argument("-n", action="store_true", help="check the configuration and exit")
    p.add_argument("-v", action="count", default=0, help="verbose logging")
    p.add_argument("-f", metavar="file", help="configuration file")
    p.add_argument("-D", metavar="macro=value", action="append", default=[],
                   help="define a macro, overriding the configuration file")
    p.add_argument("-S", metavar="statedir", help="state folder (spool, control socket)")
    p.add_argument("-P", metavar="system", action="append", default=[], choices=PAUSABLE,
                   help="start with this subsystem paused (mda, mta or smtp); may be repeated")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    ns = p.parse_args(argv)
    macros: dict[str, str] = {}
    for item in ns.D:
        name, sep, value = item.partition("=")
        if not sep or not name:
            p.error(f"-D wants macro=value, got {item!r}")
        macros[name] = value
    return Options(
        config_file=ns.f,
        macros=macros,
        statedir=os.path.abspath(ns.S) if ns.S else paths.default_statedir(),
        foreground=ns.d,
        verbose=ns.v,
        check_only=ns.n,
        paused=list(dict.fromkeys(ns.P)),
    )


def child_options(argv: list[str]) -> Options:
    """A child's options, exactly as :meth:`Options.argv` wrote them (no argparse
    in the children: a process imports what its role uses)."""
    opts = Options()
    args = iter(argv)
    for arg in args:
        if arg in ("-S", "-f", "-D", "-P"):
            value = next(args, None)
            if value is None:
                raise ValueError(f"{arg} wants a value")
            if arg == "-S":
                opts.statedir = os.path.abspath(value)
            elif arg == "-f":
                opts.config_file = value
            elif arg == "-P":
                if value not in PAUSABLE:
                    raise ValueError(f"-P wants one of {', '.join(PAUSABLE)}, got {value!r}")
                opts.paused.append(value)
            else:
                name, sep, macro = value.partition("=")
                if not sep or not name:
                    raise ValueError(f"-D wants macro=value, got {value!r}")
                opts.macros[name] = macro
        elif arg == "-d":
            opts.foreground = True
        elif arg == "-v":
            opts.verbose += 1
        else:
            raise ValueError(f"unknown option {arg!r}")
    if not opts.statedir:
        raise ValueError("-S is missing")
    return opts


def load_config(opts: Options) -> Config:
    """Parse the configuration the options name (or the built-in one) and check it."""
    if opts.config_file is None and not os.path.exists(paths.CONFIG_FILE):
        cfg = parse_string(default_config_text(opts.statedir), file="<built-in>",
                           macros=opts.macros)
    else:
        cfg = parse_file(opts.config_file or paths.CONFIG_FILE, macros=opts.macros)
    check_supported(cfg)
    return cfg


_LIBC: ctypes.CDLL | None = None


def load_libc() -> ctypes.CDLL | None:
    """The C library, loaded once (before any chroot: finding it reads the disk)."""
    global _LIBC
    if _LIBC is None:
        try:
            # the running program's own symbols, the C library among them: no
            # ctypes.util.find_library (it runs ldconfig, and costs half a megabyte)
            _LIBC = ctypes.CDLL(None, use_errno=True)
        except OSError:
            return None
    return _LIBC


def set_title(role: str) -> None:
    """Name the process after its role (what ``ps -e`` and ``top`` show)."""
    title = f"mailrider:{role}"[:15].encode()
    libc = load_libc()
    if libc is None:
        return
    try:
        pr_set_name = 15
        libc.prctl(pr_set_name, ctypes.c_char_p(title), 0, 0, 0)
    except AttributeError:
        pass


def unprivileged_user() -> pwd.struct_passwd | None:
    """The user children drop to, or None when not running as root."""
    if os.geteuid() != 0:
        return None
    return system_user(paths.USER)


def missing_user(name: str) -> str:
    """The error for a system user the daemon needs, with the command that makes it."""
    return (f"user {name} does not exist; create it: useradd --system --no-create-home "
            f"--home-dir /nonexistent --shell /usr/sbin/nologin {name}")


def system_user(name: str) -> pwd.struct_passwd:
    """One of the daemon's own users; ConfigError saying how to create it when missing."""
    try:
        return pwd.getpwnam(name)
    except KeyError:
        raise ConfigError(missing_user(name)) from None


def queue_user() -> pwd.struct_passwd | None:
    """The user the queue drops to (it alone owns the spool), or None when not root."""
    if os.geteuid() != 0:
        return None
    return system_user(paths.QUEUE_USER)


def role_user(role: str) -> pwd.struct_passwd | None:
    """The user the child ``role`` drops to (None when not running as root)."""
    return queue_user() if role == "queue" else unprivileged_user()


def ext_user() -> pwd.struct_passwd | None:
    """The user filters, table backends and alias programs run as when the
    configuration names none (paths.EXT_USER), or None when not root."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(paths.EXT_USER)
    except KeyError:
        raise ConfigError(missing_user(paths.EXT_USER)) from None


def drop_privileges(pw: pwd.struct_passwd | None) -> None:
    if pw is None:
        return
    os.setgroups([])
    os.setgid(pw.pw_gid)
    os.setuid(pw.pw_uid)
    if os.geteuid() == 0 or os.getegid() == 0:
        raise OSError("still root after dropping privileges")


def confining() -> bool:
    """Whether children chroot (and Landlock) themselves: only when started as root."""
    return os.geteuid() == 0


def empty_dir(statedir: str) -> str:
    """The empty, root-owned folder pony, scheduler and control are chrooted to."""
    return os.path.join(statedir, "empty")


def spool_dir(statedir: str) -> str:
    """The spool: the queue user's alone, and the queue's root once chrooted."""
    return os.path.join(statedir, "spool")


def group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


class Process:
    """A running child: its channels to peers and its role's handlers."""

    role = "?"

    def __init__(self, opts: Options, config: Config) -> None:
        self.opts = opts
        self.config = config
        self.peers: dict[str, Channel] = {}
        self.stopping = asyncio.Event()
        self.counters: dict[str, int] = {}

    def count(self, key: str, n: int = 1) -> None:
        self.counters[key] = self.counters.get(key, 0) + n

    def connect(self, fds: dict[str, int]) -> None:
        for peer, fd in fds.items():
            sock = socket.socket(fileno=fd)
            chan = Channel(sock, peer, self.handler_for(peer), policy.accepts(self.role, peer))
            chan.on_close = self._peer_closed
            self.peers[peer] = chan

    def stats(self) -> dict[str, int]:
        """This process's counters for ``show stats`` and ``monitor``."""
        return dict(self.counters)

    def _stats(self) -> dict[str, int]:
        out = self.stats()
        for k, v in profile.counters.items():
            out[f"{k}.{self.role}" if k.startswith(("profile.imsg", "profile.rtt")) else k] = v
        return out

    async def control(self, msg: m.Control) -> m.ControlReply:
        """Commands every process understands; roles extend this."""
        if msg.command == "stats":
            return m.ControlReply(data={"counters": self._stats()})
        if msg.command in ("profile", "unprofile"):
            for what in msg.args:
                profile.enable(what, msg.command == "profile")
            return m.ControlReply(lines=["command succeeded"])
        if msg.command in ("trace", "untrace"):
            for sub in msg.args:
                log.trace(sub, msg.command == "trace")
            return m.ControlReply(lines=["command succeeded"])
        if msg.command in ("log-verbose", "log-brief"):
            log.set_verbose(msg.command == "log-verbose")
            return m.ControlReply(lines=["command succeeded"])
        return m.ControlReply(ok=False, lines=[f"{self.role}: unknown command {msg.command}"])

    def handler_for(self, peer: str) -> Handler | None:
        return self.handle

    async def handle(self, chan: Channel, msg: object, fds: list[int]) -> object:
        raise NotImplementedError

    def _peer_closed(self, chan: Channel) -> None:
        if not self.stopping.is_set():
            log.error(self.role, "peer-lost", peer=chan.peer)
            self.stopping.set()

    #: under root, Landlock forbids this role every filesystem access once
    #: confined (landlock_fs), every TCP bind and connect (landlock_net)
    landlock_fs = False
    landlock_net = False

    def chroot_dir(self) -> str | None:
        """Where this role is chrooted once set up, when started as root."""
        return None

    def before_confine(self) -> None:
        """Load what is read lazily and is out of reach once confined (as root only)."""

    async def setup(self) -> None:
        """Work done before privileges are dropped (open files, read keys)."""

    async def run(self) -> None:
        """Serve until a peer is lost or SIGTERM arrives."""
        await self.stopping.wait()

    async def teardown(self) -> None:
        """Clean up before exit."""


def install_stop_signals(stop: Callable[[], None]) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
    # mailriderd(8) SIGNALS: SIGHUP reloads nothing (restart to apply a new
    # configuration); a stray SIGUSR1/SIGUSR2 must not end a process uncleanly
    for sig in (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, signal.SIG_IGN)
