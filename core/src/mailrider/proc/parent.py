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
import pwd
import signal
import socket
import stat
import subprocess
import sys
from collections.abc import Callable
from typing import Any

from mailrider import limits, log, metrics, paths, sendmail
from mailrider.config import resolve_listener
from mailrider.config.default import delivery_user
from mailrider.config.model import Config, Filter, Where
from mailrider.crypto.passwords import UnsupportedHash, verify_password
from mailrider.delivery import grant
from mailrider.errors import ConfigError, TempFail
from mailrider.filter.programs import filter_command, filter_credentials
from mailrider.ipc import messages as m
from mailrider.ipc import policy
from mailrider.ipc.channel import Channel
from mailrider.proc import common, confine, forkserver, parent_mda
from mailrider.proc.forkserver import ForkServer, ForkServerError
from mailrider.proc.workers import WorkerPool
from mailrider.smtp.reply import Reply
from mailrider.table.proc import backend_command, find_backend
from mailrider.table.registry import BUILTIN_BACKENDS


def bind_listeners(config: Config) -> list[tuple[int, socket.socket]]:
    """Open every listening socket; returns (listener index, socket)."""
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
            sock.listen(limits.LISTEN_BACKLOG)
            sock.set_inheritable(True)
            out.append((i, sock))
    return out


def bind_metrics(config: Config) -> list[socket.socket]:
    """The sockets of ``metrics listen on`` (loopback only, checked by the
    parser); control serves them (docs/metrics.md §3)."""
    out: list[socket.socket] = []
    where = config.option_where.get("metrics listen", Where())
    for addr, port in config.metrics_listen:
        family = socket.AF_INET6 if ":" in addr else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((addr, port))
        except OSError as exc:
            sock.close()
            for s in out:
                s.close()
            raise ConfigError(f"metrics: cannot listen on {addr} port {port}: {exc.strerror}",
                              where.file, where.line) from exc
        sock.listen(16)
        sock.set_inheritable(True)
        out.append(sock)
    return out


_AUTH_TEMPORARY = Reply(454, "4.7.0", "Temporary authentication failure")


def system_auth(user: str, password: str) -> m.AuthResult:
    """``auth`` without a table: the system's users and their shadow hashes."""
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
            return m.AuthResult("error", _AUTH_TEMPORARY)
    if not stored or stored[0] in "!*":
        return m.AuthResult("fail")  # locked or passwordless accounts never log in
    try:
        return m.AuthResult("ok" if verify_password(password, stored) else "fail")
    except UnsupportedHash as exc:
        log.warning("parent", "auth-unsupported-hash", user=user, scheme=exc.scheme)
        return m.AuthResult("error", m.reply_of(exc, _AUTH_TEMPORARY))


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
        #: programs started for lka: pid -> (filter:NAME, proc:NAME or table:NAME, process)
        self.programs: dict[int, tuple[str, subprocess.Popen[bytes]]] = {}
        #: seals delivery grants (delivery/grant.py), read in prepare_statedir
        self.grant_key = b""
        self.deliveries = parent_mda.Deliveries(self)
        #: system_auth (shadow hashes) runs here, bounded, off the event loop
        self.auth_pool = WorkerPool(limits.AUTH_WORKERS, limits.AUTH_PENDING_MAX, "parent-auth")

    def prepare_statedir(self) -> None:
        os.makedirs(self.opts.statedir, mode=0o711, exist_ok=True)
        self.grant_key = grant.load_or_create(self.opts.statedir)
        spool = common.spool_dir(self.opts.statedir)
        os.makedirs(spool, mode=0o700, exist_ok=True)
        offline = os.path.join(self.opts.statedir, "offline")
        os.makedirs(offline, exist_ok=True)
        # every local user may drop mail here while the daemon is down, but
        # nobody may list or touch another's files (sticky, no read for others)
        os.chmod(offline, 0o1733 if os.geteuid() == 0 else 0o700)
        qpw = common.queue_user()
        if qpw is not None:
            common.unprivileged_user()  # a missing user stops the start here, by name
            common.ext_user()
            confine.own_spool(spool, qpw)
            confine.make_empty_dir(common.empty_dir(self.opts.statedir))
        if self.config.file == "<built-in>":
            maildir = os.path.join(self.opts.statedir, "maildir")
            os.makedirs(maildir, mode=0o700, exist_ok=True)
            du = pwd.getpwnam(delivery_user())
            os.chown(maildir, du.pw_uid, du.pw_gid)

    async def start(self, listeners: list[tuple[int, socket.socket]],
                    metrics_socks: list[socket.socket] | None = None) -> None:
        metrics_socks = metrics_socks or []
        pairs: dict[str, dict[str, int]] = {r: {} for r in common.ROLES}
        keep: list[socket.socket] = []
        for role in common.ROLES:
            mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            theirs.set_inheritable(True)
            keep.append(theirs)
            pairs[role]["parent"] = theirs.fileno()
            chan = Channel(mine, role, self.handle, policy.accepts("parent", role))
            chan.on_close = self._child_channel_closed
            self.peers[role] = chan
        # lka seals delivery grants with it (delivery/grant.py): the first frame it gets
        self.peers["lka"].notify(m.GrantKey(key=self.grant_key.hex()))
        if self.config.queue_encryption:
            # the queue alone holds the queue key (docs/security.md): handed
            # over first, then forgotten here
            self.peers["queue"].notify(m.QueueKey(key=self.config.queue_key or ""))
            self.config.queue_key = None
        for a, b in common.LINKS:
            sa, sb = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            sa.set_inheritable(True)
            sb.set_inheritable(True)
            keep += [sa, sb]
            pairs[a][b] = sa.fileno()
            pairs[b][a] = sb.fileno()
        # pony's blocking line to klondike for private-key operations (docs/processes.md §5)
        sa, sb = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        sa.set_inheritable(True)
        sb.set_inheritable(True)
        keep += [sa, sb]
        pairs["pony"]["klondike-sign"] = sa.fileno()
        pairs["klondike"]["pony-sign"] = sb.fileno()
        listen_spec = ",".join(f"{i}:{s.fileno()}" for i, s in listeners)
        env = dict(os.environ)
        env["MAILRIDER_LISTENERS"] = listen_spec
        env[metrics.METRICS_ENV] = ",".join(str(s.fileno()) for s in metrics_socks)
        server = self._fork_server()
        try:
            for role in common.ROLES:
                fds = pairs[role]
                named = list(fds.items())
                if role == "pony":
                    named += [(f"listener:{i}", s.fileno()) for i, s in listeners]
                if role == "control":
                    named += [(f"metrics:{i}", s.fileno()) for i, s in enumerate(metrics_socks)]
                if server is not None:
                    try:
                        self.children[server.spawn(role, named, self.opts.argv())] = role
                        continue
                    except ForkServerError as exc:
                        # the fresh start below still works: say so, and use it
                        log.warning("parent", "fork-server-failed", role=role, error=str(exc))
                        server.close()
                        server = None
                argv = [sys.executable, "-m", "mailrider.proc.child", "-x", role,
                        "--fds", ",".join(f"{p}={f}" for p, f in fds.items()),
                        *self.opts.argv()]
                proc = subprocess.Popen(argv, pass_fds=[fd for _, fd in named], env=env,
                                        close_fds=True)
                self.children[proc.pid] = role
        finally:
            if server is not None:
                server.close()
                confine.set_child_subreaper(False)
        for s in keep:
            s.close()
        for _, s in listeners:
            s.close()
        for s in metrics_socks:
            s.close()

    def _fork_server(self) -> ForkServer | None:
        """The start-up server the children are forked from (docs/performance.md
        §1), or None: children start as fresh interpreters
        (``MAILRIDER_CHILD_START=exec``, not Linux, or the server failed)."""
        if not forkserver.wanted():
            return None
        # a child forked by the server is re-parented to us, not to init
        if not confine.set_child_subreaper(True):
            log.warning("parent", "fork-server-failed", error="no child subreaper")
            return None
        try:
            return ForkServer()
        except OSError as exc:
            confine.set_child_subreaper(False)
            log.warning("parent", "fork-server-failed", error=str(exc))
            return None

    # -- requests from children -------------------------------------------------

    async def handle(self, chan: Channel, msg: Any, fds: list[int]) -> Any:
        # the channel let through only what chan.peer may send (ipc/policy.py);
        # every request is still checked here against the parent's own knowledge
        if isinstance(msg, m.ForkDelivery) and chan.peer == "queue":
            if len(fds) != 1:
                for fd in fds:
                    os.close(fd)
                raise ValueError("ForkDelivery without exactly one descriptor")
            try:
                return await parent_mda.run_delivery(self, msg.envelope, fds[0])
            finally:
                os.close(fds[0])
        if isinstance(msg, m.ForkDeliveries) and chan.peer == "queue":
            try:
                return await parent_mda.run_deliveries(self, msg.envelopes, fds)
            finally:
                for fd in fds:
                    os.close(fd)
        for fd in fds:
            os.close(fd)
        if isinstance(msg, m.ForwardOpen) and chan.peer == "lka":
            return m.ForwardContent(content=await parent_mda.read_forward(self, msg.user))
        if isinstance(msg, m.AuthCheck) and chan.peer == "lka":
            return await self.auth_pool.run(system_auth, msg.username, msg.password)
        if isinstance(msg, m.FilterStart) and chan.peer == "lka":
            return self.start_filter(msg.name)
        if isinstance(msg, m.TableStart) and chan.peer == "lka":
            return self.start_table(msg.name)
        if isinstance(msg, m.Control) and chan.peer == "control":
            if msg.command == "stats":  # show stats: the local deliveries' counters
                return m.ControlReply(data={"counters": self.deliveries.stats()})
            return m.ControlReply(lines=[f"parent pid={os.getpid()}"])
        raise ValueError(f"unexpected message {m.type_name(msg)} from {chan.peer}")

    def _configured_filter(self, key: str) -> Filter:
        """The proc-exec filter or ``proc`` that ``filter:NAME``/``proc:NAME`` names."""
        kind, _, name = key.partition(":")
        found = (self.config.procs.get(name) if kind == "proc"
                 else self.config.filters.get(name) if kind == "filter" else None)
        if found is None or found.kind != "proc-exec" or not found.command:
            log.error("parent", "filter-refused", filter=key[:80], error="not a configured program")
            raise ValueError("no such filter program in the configuration")
        return found

    def start_filter(self, key: str) -> tuple[m.Ok, list[int]]:
        """Run a configured filter program as its user (the program user when
        the configuration names none); lka gets its stdio and stderr sockets.
        A program already running under this name is stopped first: lka asks
        again only after losing it."""
        f = self._configured_filter(key)
        command = filter_command(f.command or "")
        try:
            pw, gid = filter_credentials(f, common.ext_user())
        except ValueError as exc:
            log.error("parent", "filter-refused", filter=key, error=str(exc))
            raise
        chroot = None
        if f.chroot:
            root = f.chroot

            def enter_chroot() -> None:  # runs in the child between fork and exec
                os.chroot(root)
                os.chdir("/")

            chroot = enter_chroot
        pid, fds = self._launch(key, [paths.SHELL, "-c", f"exec {command}"], None,
                                uid=pw.pw_uid if pw is not None else None, gid=gid,
                                groups=[] if pw is not None else None, preexec=chroot)
        log.event("parent", "filter-started", filter=f.name, pid=pid,
                  user=pw.pw_name if pw is not None else f.user)
        return m.Ok(), fds

    def start_table(self, name: str) -> tuple[m.Ok, list[int]]:
        """Run the backend program of a configured proc table as the program
        user; lka gets its stdio socket and stderr, the reply its pid."""
        t = self.config.tables.get(name)
        if t is None or t.backend in BUILTIN_BACKENDS or t.backend.startswith("/"):
            log.error("parent", "table-refused", table=name[:80], error="not a proc table")
            raise ValueError("no such proc table in the configuration")
        argv, _ = find_backend(t.backend)
        if argv is None:
            raise TempFail(f"table {name}: backend {t.backend} not found")
        executable, args = backend_command(t.name, argv, t.path)
        pw = common.ext_user()
        key = f"table:{name}"
        pid, fds = self._launch(key, args, executable,
                                uid=pw.pw_uid if pw is not None else None,
                                gid=pw.pw_gid if pw is not None else None,
                                groups=[] if pw is not None else None)
        log.event("parent", "table-started", table=name, pid=pid,
                  user=pw.pw_name if pw is not None else "")
        return m.Ok(text=str(pid)), fds

    def _launch(self, key: str, args: list[str], executable: str | None, *, uid: int | None,
                gid: int | None, groups: list[int] | None,
                preexec: Callable[[], None] | None = None) -> tuple[int, list[int]]:
        """Start a program for lka (a filter, a table backend) in its own session.

        One program runs per key: one still running under this key is
        stopped first, since lka asks again only once it lost the first.
        Returns its pid and the descriptors lka gets: its stdio and its
        stderr (the channel sends them, then closes them).
        """
        for old_key, old in list(self.programs.values()):
            if old_key == key:
                try:
                    os.killpg(old.pid, signal.SIGTERM)
                except (ProcessLookupError, PermissionError):
                    pass
        io_mine, io_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        err_mine, err_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            proc = subprocess.Popen(
                args, executable=executable, stdin=io_theirs.fileno(),
                stdout=io_theirs.fileno(), stderr=err_theirs.fileno(), close_fds=True,
                cwd="/", start_new_session=True, user=uid, group=gid, extra_groups=groups,
                preexec_fn=preexec)
        except OSError as exc:
            io_mine.close()
            err_mine.close()
            raise TempFail(f"{key}: cannot start {executable or args[0]}: {exc.strerror}") \
                from None
        finally:
            io_theirs.close()
            err_theirs.close()
        self.programs[proc.pid] = (key, proc)
        return proc.pid, [io_mine.detach(), err_mine.detach()]

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
            program = self.programs.pop(pid, None)
            if program is not None:
                log.warning("parent", "program-exited", program=program[0], pid=pid, status=code)
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
        """Submit what ``sendmail`` left in the offline queue while we were down.

        Every local user may write in that folder, so each entry is read off
        the event loop with the checks of :func:`sendmail.read_offline` (no
        link followed, regular file of one link, at most the size checked);
        an entry refused is removed unless it is a directory (left, logged),
        and one entry never stops the others.
        """
        folder = os.path.join(self.opts.statedir, sendmail.OFFLINE)
        try:
            dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return
        try:
            names = sorted(os.listdir(dir_fd))
            for name in names:
                await self._submit_offline_one(dir_fd, name)
        except OSError as exc:
            log.warning("parent", "offline-failed", error=exc.strerror)
        finally:
            os.close(dir_fd)

    async def _submit_offline_one(self, dir_fd: int, name: str) -> None:
        try:
            item = await asyncio.to_thread(sendmail.read_offline, dir_fd, name)
        except sendmail.OfflineRefused as exc:
            log.warning("parent", "offline-refused", file=name, reason=str(exc))
            try:
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                if not stat.S_ISDIR(st.st_mode):
                    os.unlink(name, dir_fd=dir_fd)
            except OSError:
                pass
            return
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
            return  # kept for the next start
        finally:
            mine.close()
            theirs.close()
        try:
            os.unlink(name, dir_fd=dir_fd)
        except OSError:
            pass
        log.event("parent", "offline-submitted", file=name, user=user, reply=reply[:60])

    async def shutdown(self) -> None:
        # control, chrooted, cannot remove its own socket
        try:
            os.unlink(paths.control_socket(self.opts.statedir))
        except OSError:
            pass
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
        self.deliveries.workers.close()
        for pid in list(self.programs):
            try:
                os.killpg(pid, signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                pass
        for chan in self.peers.values():
            chan.close()
        log.event("parent", "stopped", status=self.exit_code)
