"""The parent: starts every child, then only does privileged work on request.

Privileged work: binding listening sockets (done before the children start,
handed down as inherited descriptors), forking each local delivery as the
recipient's user (:mod:`mailrider.proc.parent_mda`), and reading a user's
``~/.forward`` for lka. A child that dies takes the daemon down cleanly: the
parent stops the others and exits non-zero (no half-alive system).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from typing import Any

from mailrider import log
from mailrider.config.model import Config
from mailrider.errors import ConfigError, TempFail
from mailrider.ipc import messages as m
from mailrider.ipc.channel import Channel
from mailrider.proc import common, parent_mda


def bind_listeners(config: Config) -> list[tuple[int, socket.socket]]:
    """Open every listening socket; returns (listener index, socket)."""
    from mailrider.config import resolve_listener

    out: list[tuple[int, socket.socket]] = []
    for i, lst in enumerate(config.listeners):
        if lst.address == "socket":
            continue
        port = lst.port if lst.port is not None else (465 if lst.smtps else 25)
        for family, addr in resolve_listener(lst):
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind((addr, port))
            except OSError as exc:
                sock.close()
                raise ConfigError(f"cannot listen on {addr} port {port}: {exc.strerror}",
                                  lst.where.file, lst.where.line) from exc
            sock.listen(1024)
            sock.set_inheritable(True)
            out.append((i, sock))
    return out


def system_auth(user: str, password: str) -> m.AuthResult:
    """``auth`` without a table: the system's users and their shadow hashes."""
    import pwd

    from mailrider import paths
    from mailrider.crypto.passwords import UnsupportedHash, verify_password

    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        return m.AuthResult("fail")
    stored = pw.pw_passwd
    if stored in ("x", "*", ""):
        try:
            with open(paths.SHADOW_FILE, encoding="utf-8", errors="replace") as f:
                for line in f:
                    name, _, rest = line.partition(":")
                    if name == user:
                        stored = rest.partition(":")[0]
                        break
        except OSError:
            return m.AuthResult("error", "454 4.7.0 Temporary authentication failure")
    if not stored or stored[0] in "!*":
        return m.AuthResult("fail")  # locked or passwordless accounts never log in
    try:
        return m.AuthResult("ok" if verify_password(password, stored) else "fail")
    except UnsupportedHash as exc:
        log.warning("parent", "auth-unsupported-hash", user=user, scheme=exc.scheme)
        return m.AuthResult("error", exc.reply())


class Parent:
    role = "parent"

    def __init__(self, opts: common.Options, config: Config) -> None:
        self.opts = opts
        self.config = config
        self.children: dict[int, str] = {}
        self.peers: dict[str, Channel] = {}
        self.stopping = asyncio.Event()
        self.exit_code = 0
        self.forks: dict[int, asyncio.Future[int]] = {}
        self.filter_procs: dict[int, subprocess.Popen[bytes]] = {}

    def prepare_statedir(self) -> None:
        os.makedirs(self.opts.statedir, mode=0o711, exist_ok=True)
        os.makedirs(os.path.join(self.opts.statedir, "spool"), mode=0o700, exist_ok=True)
        offline = os.path.join(self.opts.statedir, "offline")
        os.makedirs(offline, exist_ok=True)
        # every local user may drop mail here while the daemon is down, but
        # nobody may list or touch another's files (sticky, no read for others)
        os.chmod(offline, 0o1733 if os.geteuid() == 0 else 0o700)
        pw = common.unprivileged_user()
        if pw is not None:
            os.chown(os.path.join(self.opts.statedir, "spool"), pw.pw_uid, pw.pw_gid)
        if self.config.file == "<built-in>":
            import pwd

            from mailrider.config.default import delivery_user

            maildir = os.path.join(self.opts.statedir, "maildir")
            os.makedirs(maildir, mode=0o700, exist_ok=True)
            du = pwd.getpwnam(delivery_user())
            os.chown(maildir, du.pw_uid, du.pw_gid)

    async def start(self, listeners: list[tuple[int, socket.socket]]) -> None:
        pairs: dict[str, dict[str, int]] = {r: {} for r in common.ROLES}
        keep: list[socket.socket] = []
        for role in common.ROLES:
            mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            theirs.set_inheritable(True)
            keep.append(theirs)
            pairs[role]["parent"] = theirs.fileno()
            chan = Channel(mine, role, self.handle)
            chan.on_close = self._child_channel_closed
            self.peers[role] = chan
        for a, b in common.LINKS:
            sa, sb = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            sa.set_inheritable(True)
            sb.set_inheritable(True)
            keep += [sa, sb]
            pairs[a][b] = sa.fileno()
            pairs[b][a] = sb.fileno()
        # pony's blocking line to klondike for private-key operations (KLONDIKE.md)
        sa, sb = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        sa.set_inheritable(True)
        sb.set_inheritable(True)
        keep += [sa, sb]
        pairs["pony"]["klondike-sign"] = sa.fileno()
        pairs["klondike"]["pony-sign"] = sb.fileno()
        listen_spec = ",".join(f"{i}:{s.fileno()}" for i, s in listeners)
        env = dict(os.environ)
        env["MAILRIDER_LISTENERS"] = listen_spec
        for role in common.ROLES:
            fds = pairs[role]
            inherit = list(fds.values())
            if role == "pony":
                inherit += [s.fileno() for _, s in listeners]
            argv = [sys.executable, "-m", "mailrider.proc.child", "-x", role,
                    "--fds", ",".join(f"{p}={f}" for p, f in fds.items()), *self.opts.argv()]
            proc = subprocess.Popen(argv, pass_fds=inherit, env=env, close_fds=True)
            self.children[proc.pid] = role
        for s in keep:
            s.close()
        for _, s in listeners:
            s.close()

    # -- requests from children -------------------------------------------------

    async def handle(self, chan: Channel, msg: Any, fds: list[int]) -> Any:
        if isinstance(msg, m.ForkDelivery):
            if chan.peer != "pony" or len(fds) != 1:
                raise ValueError("ForkDelivery only from pony with one fd")
            try:
                return await parent_mda.run_delivery(self, msg.envelope, fds[0])
            finally:
                os.close(fds[0])
        if isinstance(msg, m.ForwardOpen):
            if chan.peer != "lka":
                raise ValueError("ForwardOpen only from lka")
            return m.ForwardContent(content=parent_mda.read_forward(msg.user, msg.home))
        if isinstance(msg, m.AuthCheck):
            if chan.peer != "lka":
                raise ValueError("AuthCheck only from lka")
            return await asyncio.to_thread(system_auth, msg.username, msg.password)
        if isinstance(msg, m.FilterStart):
            if chan.peer != "lka":
                raise ValueError("FilterStart only from lka")
            return self.start_filter(msg)
        if isinstance(msg, m.Control):
            return m.ControlReply(lines=[f"parent pid={os.getpid()}"])
        for fd in fds:
            os.close(fd)
        raise ValueError(f"unexpected message {m.type_name(msg)} from {chan.peer}")

    def start_filter(self, msg: m.FilterStart) -> tuple[m.Ok, list[int]]:
        """Run a filter program as its user; lka gets its stdio and stderr sockets."""
        import pwd
        import shlex

        from mailrider import paths

        command = msg.command
        first = shlex.split(command)[0] if command.strip() else ""
        if first and not first.startswith("/"):
            for folder in paths.libexec_dirs():
                if os.access(os.path.join(folder, first), os.X_OK):
                    command = os.path.join(folder, command)
                    break
        user = msg.user
        if user is None:
            upw = common.unprivileged_user()
            user = upw.pw_name if upw is not None else None
        uid: int | None = None
        gid: int | str | None = None
        groups: list[int] | None = None
        if os.geteuid() == 0 and user is not None:
            pw = pwd.getpwnam(user)
            uid, gid, groups = pw.pw_uid, msg.group or pw.pw_gid, []
        chroot = None
        if msg.chroot:
            root = msg.chroot

            def enter_chroot() -> None:  # runs in the child between fork and exec
                os.chroot(root)
                os.chdir("/")

            chroot = enter_chroot
        io_mine, io_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        err_mine, err_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            proc = subprocess.Popen(
                [paths.SHELL, "-c", f"exec {command}"], stdin=io_theirs.fileno(),
                stdout=io_theirs.fileno(), stderr=err_theirs.fileno(), close_fds=True,
                cwd="/", start_new_session=True, user=uid, group=gid, extra_groups=groups,
                preexec_fn=chroot)
        finally:
            io_theirs.close()
            err_theirs.close()
        self.filter_procs[proc.pid] = proc
        log.event("parent", "filter-started", filter=msg.name, pid=proc.pid, user=user)
        # the channel sends these descriptors, then closes them
        return m.Ok(), [io_mine.detach(), err_mine.detach()]

    # -- supervision --------------------------------------------------------------

    def _child_channel_closed(self, chan: Channel) -> None:
        if not self.stopping.is_set():
            log.error("parent", "child-lost", role=chan.peer)
            self.exit_code = 1
            self.stopping.set()

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            code = os.waitstatus_to_exitcode(status)
            fut = self.forks.pop(pid, None)
            if fut is not None:
                if not fut.done():
                    fut.set_result(code)
                continue
            if self.filter_procs.pop(pid, None) is not None:
                log.warning("parent", "filter-exited", pid=pid, status=code)
                continue
            role = self.children.pop(pid, None)
            if role is not None and not self.stopping.is_set():
                log.error("parent", "child-exited", role=role, pid=pid, status=code)
                self.exit_code = 1
                self.stopping.set()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGCHLD, self.reap)
        common.install_stop_signals(self.stopping.set)
        self.reap()
        offline = loop.create_task(self.submit_offline())
        await self.stopping.wait()
        offline.cancel()
        await self.shutdown()
        return self.exit_code

    async def submit_offline(self) -> None:
        """Submit what ``sendmail`` left in the offline queue while we were down."""
        import pwd

        from mailrider import sendmail

        folder = os.path.join(self.opts.statedir, sendmail.OFFLINE)
        try:
            names = sorted(os.listdir(folder))
        except OSError:
            return
        for name in names:
            path = os.path.join(folder, name)
            item = sendmail.read_offline(path)
            if item is None:
                log.warning("parent", "offline-refused", file=name)
                os.unlink(path)
                continue
            uid, sender, rcpts, message = item
            try:
                user = pwd.getpwuid(uid).pw_name
            except KeyError:
                user = str(uid)
            mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                await self.peers["pony"].ask(m.LocalSession(user=user, uid=uid),
                                             [theirs.fileno()])
                theirs.close()
                mine.settimeout(300)
                reply = await asyncio.to_thread(sendmail.submit, mine, sender, rcpts, message)
            except (OSError, sendmail.SubmitError, TempFail) as exc:
                log.warning("parent", "offline-failed", file=name, error=str(exc))
                continue  # kept for the next start
            finally:
                mine.close()
                theirs.close()
            os.unlink(path)
            log.event("parent", "offline-submitted", file=name, user=user, reply=reply[:60])

    async def shutdown(self) -> None:
        for pid in list(self.children):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for _ in range(100):
            self.reap()
            if not self.children:
                break
            await asyncio.sleep(0.05)
        for pid in list(self.children):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for pid in list(self.filter_procs):
            try:
                os.killpg(pid, signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                pass
        for chan in self.peers.values():
            chan.close()
        log.event("parent", "stopped", status=self.exit_code)
