"""Local deliveries, forked by the parent as the user the parent decides.

pony hands over an envelope and the message descriptor; the parent checks
the envelope's grant (:mod:`mailrider.delivery.grant`: lka sealed the fields
it decided), then decides everything that matters from its own knowledge
(:func:`decide`): the action and its method, command and folder from its
configuration; the user, groups and home from the password database, or,
for an action with a ``userbase`` table, from the sealed grant. It never
runs a delivery as uid 0 or with group 0. Then it forks a short-lived child
that switches to that user, performs the delivery with the functions of
:mod:`mailrider.delivery` on the message descriptor, writes its outcome as
JSON to a pipe, and exits. Maildir deliveries of one user that arrive
together share one child and one sync (:class:`Deliveries`). The parent
never blocks on a delivery itself.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import os
import pwd
import signal
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from mailrider import limits, log, paths
from mailrider.config.model import Action, Config
from mailrider.delivery import common as dcommon
from mailrider.delivery import grant
from mailrider.delivery.format import FormatContext, expand_format
from mailrider.delivery.lmtp import deliver_lmtp
from mailrider.delivery.maildir import MaildirBatch
from mailrider.delivery.mbox import deliver_mbox
from mailrider.delivery.mda import deliver_mda
from mailrider.errors import PermFail, TempFail, delivery_outcome
from mailrider.ipc import messages as m
from mailrider.proc import parent_workers
from mailrider.queue import envelope as envmod
from mailrider.queue.envelope import Envelope
from mailrider.ttlcache import TtlCache


class Parent(Protocol):
    """What deliveries need of the parent process (parent.Parent)."""

    config: Config
    #: the key that seals lka's delivery grants
    grant_key: bytes
    deliveries: Deliveries
    #: forked children by pid: the future gets the exit status (reap)
    forks: dict[int, asyncio.Future[int]]

    def reap(self) -> None:
        """Collect the children that have exited."""
        ...


class Forged(TempFail):
    """A delivery request whose grant does not verify: not lka's decision."""

    def __init__(self, text: str) -> None:
        super().__init__(text, 451, "4.7.0")


@dataclass(frozen=True, slots=True)
class Plan:
    """A local delivery as the parent decided it."""

    action: Action
    method: str  # the action's method, or file/pipe for an alias or .forward target
    arg: str | None  # file: the path; pipe: the command (both sealed); else None
    user: str
    home: str
    uid: int | None  # None: the daemon is not root and delivers as itself
    gid: int | None
    groups: tuple[int, ...]


def _groups(name: str, gid: int) -> tuple[int, ...]:
    """The user's groups from the group database, never group 0."""
    try:
        found = os.getgrouplist(name, gid)
    except OSError:
        found = [gid]
    return tuple(g for g in dict.fromkeys(found) if g != 0)


@dataclass(frozen=True, slots=True)
class SystemUser:
    """What the parent read of a user in the password and group databases."""

    uid: int
    gid: int
    home: str
    groups: tuple[int, ...]


def lookup_user(name: str) -> SystemUser | None:
    """The user's entry and groups, read now; None when there is no such user."""
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        return None
    return SystemUser(pw.pw_uid, pw.pw_gid, pw.pw_dir, _groups(pw.pw_name, pw.pw_gid))


class UserCache:
    """The parent's own password and group database answers, kept
    :data:`~mailrider.limits.USER_CACHE_TTL` seconds.

    ``getgrouplist`` reads the whole group database (measured: 0.36 ms a
    call under load, most of what the parent spent deciding a delivery), and
    a backlog asks for the same user thousands of times a second. What is
    kept is what the parent itself read, never what a child said; an entry
    is used for at most the TTL (a user removed, or given other groups, is
    seen within that time), a missing user is not kept, and at most
    :data:`~mailrider.limits.USER_CACHE_MAX` users are held.
    """

    def __init__(self, ttl: float = limits.USER_CACHE_TTL, size: int = limits.USER_CACHE_MAX,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._users: TtlCache[str, SystemUser] = TtlCache(ttl, size, clock)

    def __len__(self) -> int:
        return len(self._users)

    @property
    def hits(self) -> int:
        return self._users.hits

    @property
    def misses(self) -> int:
        return self._users.misses

    def get(self, name: str) -> SystemUser | None:
        found, user = self._users.get(name)
        if found:
            return user
        user = lookup_user(name)
        if user is None:
            self._users.discard(name)
            return None
        self._users.put(name, user)
        return user


def decide(config: Config, key: bytes, env: Envelope, *, root: bool,
           users: UserCache | None = None) -> Plan:
    """Who runs ``env``'s delivery and what it does, from the parent's own knowledge.

    Raises :class:`Forged` when the grant does not verify, TempFail when the
    sealed decision no longer fits the configuration or the user database,
    PermFail for a delivery that must never run (as root, group 0). The
    password and group databases are read now, or through ``users`` (the
    parent's own recent answers, :class:`UserCache`).
    """
    # the seal covers the fields as the codec writes them: as lka sealed them
    if not grant.verify(key, envmod.to_fields(env)):
        raise Forged("delivery grant does not verify")
    d = env.delivery
    action = config.actions.get(d.dispatcher)
    if action is None:
        raise TempFail(f"no action {d.dispatcher!r} in the configuration")
    method = d.method
    arg: str | None = None
    if method in ("file", "pipe"):
        arg = d.arg or None
        if arg is None:
            raise PermFail("alias target without argument", 550, "5.3.0")
    elif method != action.method or method not in ("maildir", "mbox", "mda", "lmtp"):
        raise TempFail(f"action {action.name} does not deliver by {method!r} any more")
    name = d.user
    if action.user is not None and name != action.user:
        raise TempFail(f"action {action.name} now delivers as {action.user}, not {name}")
    if not root:
        return Plan(action, method, arg, name, d.home or "/", None, None, ())
    if action.userbase is not None and action.user is None:
        # a virtual user of the action's userbase table: lka's sealed answer
        if d.uid is None or d.gid is None:
            raise TempFail(f"bad uid/gid for {name}")
        uid, gid = d.uid, d.gid
        home = d.home or "/"
        groups: tuple[int, ...] = (gid,)
    elif (sysuser := users.get(name) if users is not None else lookup_user(name)) is not None:
        uid, gid, home, groups = sysuser.uid, sysuser.gid, sysuser.home, sysuser.groups
    else:
        raise TempFail(f"user {name!r} does not exist")
    if uid == 0:
        raise PermFail("refusing to deliver as root", 550, "5.7.1")
    if gid == 0:
        raise PermFail("refusing to deliver with group 0", 550, "5.7.1")
    if uid < 0 or gid < 0:
        raise TempFail(f"bad uid/gid for {name}")
    return Plan(action, method, arg, name, home, uid, gid, groups)


_FORWARD_MAX = 64 * 1024


def _switch_user(uid: int, gid: int, groups: tuple[int, ...]) -> None:
    """In a forked child: become uid/gid with exactly these groups, for good."""
    os.setgroups(list(groups) or [gid])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    if os.geteuid() != uid or os.getegid() != gid or 0 in os.getgroups():
        raise PermissionError("credentials not switched")


def _forward_child(pw: pwd.struct_passwd) -> bytes:
    """In a forked child, as the user: the ``~/.forward`` if it is safe, else b""."""
    _switch_user(pw.pw_uid, pw.pw_gid, _groups(pw.pw_name, pw.pw_gid))
    try:
        fd = os.open(os.path.join(pw.pw_dir, ".forward"),
                     os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY)
    except FileNotFoundError:
        return b""
    except OSError:
        return b"\0unsafe"  # a link, or not the user's to read
    try:
        st = os.fstat(fd)
        # the owner's own regular file, one link (not a hard link to another
        # file), writable by nobody else
        if (not stat.S_ISREG(st.st_mode) or st.st_uid != pw.pw_uid or st.st_nlink != 1
                or st.st_mode & 0o022):
            return b"\0unsafe"
        data = os.read(fd, _FORWARD_MAX)
    finally:
        os.close(fd)
    return b"\1" + data


async def read_forward(parent: Parent, user: str) -> str | None:
    """A system user's ``~/.forward``, read as that user, or None.

    The parent finds the home folder in the password database (not in what
    lka says); a file that is not the user's own regular file with one link,
    or is writable by others, is ignored and logged.
    """
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        return None
    if pw.pw_uid == 0 or not os.path.isabs(pw.pw_dir):
        return None
    try:
        # nothing to fork for when there is no file (the common case)
        os.lstat(os.path.join(pw.pw_dir, ".forward"))
    except OSError:
        return None
    out = await _run_forked(parent, lambda: _forward_child(pw))
    if out is None or not out:
        return None
    if out[:1] != b"\1":
        log.warning("parent", "forward-unsafe", user=user)
        return None
    return out[1:].decode("utf-8", "replace")


async def _run_forked(parent: Parent, fn: Any) -> bytes | None:
    """Run ``fn`` in a forked child; its bytes come back through a pipe.

    None when the child died without answering. The parent's loop never
    waits on the child: the pipe is read as it becomes readable.
    """
    loop = asyncio.get_running_loop()
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        os.close(rfd)
        data = b""
        try:
            signal.set_wakeup_fd(-1)
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD, signal.SIGHUP):
                signal.signal(sig, signal.SIG_DFL)
            data = fn()
            view = memoryview(data)
            while view:
                view = view[os.write(wfd, view):]
        finally:
            os._exit(0)
    os.close(wfd)
    done: asyncio.Future[int] = loop.create_future()
    parent.forks[pid] = done
    parent.reap()
    chunks: list[bytes] = []
    readable: asyncio.Event = asyncio.Event()
    loop.add_reader(rfd, readable.set)
    try:
        while True:
            await readable.wait()
            readable.clear()
            try:
                data = os.read(rfd, 65536)
            except BlockingIOError:
                continue
            if not data:
                break
            chunks.append(data)
    finally:
        loop.remove_reader(rfd)
        os.close(rfd)
    await done
    return b"".join(chunks) if chunks else None


def wrapped(config: Config, action: Action, command: str, ctx: FormatContext) -> str:
    """The command line to run: ``command``, or the action's ``mda wrapper`` around it.

    As OpenSMTPD: the wrapper's command has its format specifiers expanded,
    ``%{mda}`` being the (expanded) command. Both come from the parent's own
    configuration, by the action's name the grant sealed, never from the
    envelope (docs/security.md, rule 1; docs/config.md §11).
    """
    if action.wrapper is None:
        return command
    template = config.mda_wrappers.get(action.wrapper)
    if template is None:  # the parser refuses an undeclared wrapper
        raise TempFail(f"no mda wrapper {action.wrapper!r}", 451, "4.3.0")
    return expand_format(template, dataclasses.replace(ctx, mda=command))


def _deliver(config: Config, plan: Plan, env: Envelope, msg_fd: int,
             batch: MaildirBatch) -> tuple[str, str] | int:
    """Runs in the forked child, as the user. Returns (status, text), or for a
    maildir delivery (added to ``batch``) its index there: done at commit."""
    method, arg, action = plan.method, plan.arg, plan.action
    home, user = plan.home, plan.user
    sender = env.sender
    dest = env.dest
    rcpt = env.rcpt or dest
    ctx = FormatContext(sender=sender, rcpt=rcpt, dest=dest,
                        user_name=env.delivery.local_user or user, user_dir=home,
                        sub_addr_delim=config.sub_addr_delim)
    extension = env.delivery.subaddress
    prepend = dcommon.delivery_headers(sender, dest)

    def fmt(template: str) -> str:
        return expand_format(template, ctx)

    # no cwd= for commands: _child has already moved to the home folder, or
    # to / when it does not exist (a system user's /nonexistent)

    if method == "file":
        deliver_mbox(arg or "", msg_fd, sender=sender, prepend=prepend)
    elif method == "pipe":
        envvars = dcommon.mda_environment(ctx, home=home, user=user, extension=extension)
        deliver_mda(wrapped(config, action, arg or "", ctx), msg_fd, env=envvars,
                    prepend=prepend)
    elif method == "maildir":
        return batch.add(fmt(action.arg or "~/Maildir"), msg_fd, prepend=prepend,
                         junk=action.junk)
    elif method == "mbox":
        deliver_mbox(os.path.join(paths.MAILSPOOL_DIR, user), msg_fd, sender=sender,
                     prepend=prepend)
    elif method == "mda":
        envvars = dcommon.mda_environment(ctx, home=home, user=user, extension=extension)
        deliver_mda(wrapped(config, action, fmt(action.arg or ""), ctx), msg_fd, env=envvars,
                    prepend=prepend)
    elif method == "lmtp":
        # lmtp: the final user by default, the original recipient with rcpt-to
        target = rcpt if action.rcpt_to else (env.delivery.local_user or user)
        results = deliver_lmtp(action.arg or "", msg_fd, sender=sender, rcpts=[target],
                               lhlo=env.smtpname or "localhost", prepend=prepend)
        if results and results[0] is not None:
            raise results[0]
    else:  # pragma: no cover - decide() admits no other method
        raise PermFail(f"unknown delivery method {method!r}", 550, "5.3.0")
    return "ok", "Delivered"


#: the delivery methods a user's long-lived worker performs (the others fork)
WORKER_METHODS = frozenset({"maildir", "mbox"})


def worker_job(config: Config, plan: Plan, env: Envelope) -> dict[str, object]:
    """What a delivery worker needs for one maildir or mbox delivery, decided
    here as :func:`_deliver` decides it for a forked one: the folder from the
    action's template, the mailbox from the mail spool and the user's name;
    ValueError for a template that does not expand."""
    prepend = dcommon.delivery_headers(env.sender, env.dest).decode("utf-8", "surrogateescape")
    if plan.method == "mbox":
        return {"method": "mbox", "path": os.path.join(paths.MAILSPOOL_DIR, plan.user),
                "home": plan.home, "junk": False, "sender": env.sender, "prepend": prepend}
    ctx = FormatContext(sender=env.sender, rcpt=env.rcpt or env.dest, dest=env.dest,
                        user_name=env.delivery.local_user or plan.user, user_dir=plan.home,
                        sub_addr_delim=config.sub_addr_delim)
    return {"method": "maildir", "path": expand_format(plan.action.arg or "~/Maildir", ctx),
            "home": plan.home, "junk": bool(plan.action.junk), "prepend": prepend}


def _batch_child(config: Config, jobs: list[_Job]) -> bytes:
    """In a forked child: every job of one user, maildirs synced together.

    Writes a JSON list of {status, text}, one per job, in order.
    """
    results: list[tuple[str, str]] = [("tempfail", "451 4.3.0 delivery failed")] * len(jobs)
    try:
        first = jobs[0].plan
        if first.uid is not None and first.gid is not None:
            _switch_user(first.uid, first.gid, first.groups)
        batch = MaildirBatch()
        pending: dict[int, int] = {}
        for i, job in enumerate(jobs):
            try:
                try:
                    os.chdir(job.plan.home or "/")
                except OSError:
                    os.chdir("/")
                done = _deliver(config, job.plan, job.env, job.fd, batch)
                if isinstance(done, int):
                    pending[i] = done
                else:
                    results[i] = done
            except Exception as exc:  # each job must report
                results[i] = delivery_outcome(exc)
        committed = batch.commit()
        for i, index in pending.items():
            final = committed[index]
            results[i] = ("ok", "Delivered") if isinstance(final, str) else delivery_outcome(final)
    except Exception as exc:  # the credentials could not be taken: every job fails
        results = [delivery_outcome(exc)] * len(jobs)
    return json.dumps([{"status": st, "text": tx[:500]} for st, tx in results]).encode()


@dataclass(slots=True)
class _Job:
    plan: Plan
    env: Envelope
    fd: int
    done: asyncio.Future[m.DeliveryResult]


class Deliveries:
    """The parent's local deliveries, batched per user.

    Maildir deliveries for the same credentials go together to that user's
    long-lived worker (:mod:`mailrider.proc.parent_workers`), one batch at a
    time, and share its syncs, at most
    :data:`~mailrider.limits.DELIVERY_BATCH_MAX` each; with
    ``MAILRIDER_MDA_FORK=1`` they share a forked process instead.
    Batches form by themselves under load: while
    :data:`~mailrider.limits.DELIVERY_BATCHES_PER_USER` processes of a user
    are running, that user's new deliveries wait for one to end, then go
    together; an idle daemon delivers at once. Other methods run a process
    each, in parallel: a slow ``mda`` command must not hold up the others.
    ``mda limit max-session`` caps the delivery processes running at once,
    ``max-session-per-user`` those of one user (docs/config.md §12); a
    delivery over either waits for a process to end.
    """

    def __init__(self, parent: Parent) -> None:
        self.parent = parent
        self._waiting: dict[tuple[object, ...], list[_Job]] = {}
        self._running: dict[tuple[object, ...], int] = {}
        self._flushing = False
        self._tasks: set[asyncio.Task[None]] = set()
        self.workers = parent_workers.Workers(parent)
        self._use_workers = parent_workers.enabled()
        #: delivery processes running, in all and by user (``mda limit``)
        self.sessions = 0
        self.user_sessions: dict[str, int] = {}
        #: for show stats (``parent.*``): batches and deliveries by worker or fork
        self.counters: dict[str, int] = {}
        #: the password and group databases' recent answers (decide)
        self.users = UserCache()

    def count(self, key: str, n: int = 1) -> None:
        self.counters[key] = self.counters.get(key, 0) + n

    def stats(self) -> dict[str, int]:
        return {**self.counters, "parent.user.cache.hits": self.users.hits,
                "parent.user.cache.misses": self.users.misses}

    def _session_allowed(self, user: str) -> bool:
        """``mda limit max-session`` and ``max-session-per-user`` (docs/config.md §12)."""
        caps = self.parent.config.mda_limits
        return (self.sessions < caps.get("max-session", limits.MDA_MAX_SESSIONS)
                and self.user_sessions.get(user, 0)
                < caps.get("max-session-per-user", limits.MDA_MAX_SESSIONS_PER_USER))

    def submit(self, plan: Plan, env: Envelope, fd: int) -> asyncio.Future[m.DeliveryResult]:
        loop = asyncio.get_running_loop()
        job = _Job(plan, env, fd, loop.create_future())
        if plan.method == "maildir" or (self._use_workers and plan.method in WORKER_METHODS):
            # one user's deliveries that share a process (and its syncs)
            key: tuple[object, ...] = (plan.uid, plan.gid, plan.groups)
        else:
            key = (id(job),)
        self._waiting.setdefault(key, []).append(job)
        if not self._flushing:
            # every delivery that arrives in this turn of the loop can join
            self._flushing = True
            loop.call_soon(self._flush)
        return job.done

    def _flush(self) -> None:
        self._flushing = False
        for key in list(self._waiting):
            self._start(key)

    def _start(self, key: tuple[object, ...]) -> None:
        size = limits.DELIVERY_BATCH_MAX
        # a user's worker takes one batch at a time; forks run side by side
        cap = 1 if self._use_workers and self._batched(key) else limits.DELIVERY_BATCHES_PER_USER
        while self._waiting.get(key) and self._running.get(key, 0) < cap:
            jobs = self._waiting[key]
            user = jobs[0].plan.user
            if not self._session_allowed(user):
                return  # started when a delivery process ends (_done)
            batch, rest = jobs[:size], jobs[size:]
            if rest:
                self._waiting[key] = rest
            else:
                del self._waiting[key]
            self._running[key] = self._running.get(key, 0) + 1
            self.sessions += 1
            self.user_sessions[user] = self.user_sessions.get(user, 0) + 1
            task = asyncio.get_running_loop().create_task(self._run(batch))
            self._tasks.add(task)
            task.add_done_callback(functools.partial(self._done, key, user))

    def _done(self, key: tuple[object, ...], user: str, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        left = self._running[key] - 1
        if left:
            self._running[key] = left
        else:
            del self._running[key]
        self.sessions -= 1
        if self.user_sessions[user] > 1:
            self.user_sessions[user] -= 1
        else:
            del self.user_sessions[user]
        self._start(key)
        if self._waiting:
            # a place under the mda limits: deliveries of other keys, oldest
            # key first (dicts keep insertion order)
            self._flush()

    @staticmethod
    def _batched(key: tuple[object, ...]) -> bool:
        return len(key) == 3  # (uid, gid, groups): see submit

    async def _run_worker(self, jobs: list[_Job]) -> list[Any]:
        """Maildir and mbox deliveries of one user's credentials, through that
        user's worker."""
        answers: list[Any] = [None] * len(jobs)
        payload: list[dict[str, object]] = []
        fds: list[int] = []
        where: list[int] = []
        for i, job in enumerate(jobs):
            try:
                payload.append(worker_job(self.parent.config, job.plan, job.env))
            except ValueError as exc:  # the template: as the forked delivery reports it
                st, tx = delivery_outcome(exc)
                answers[i] = {"status": st, "text": tx}
                continue
            fds.append(job.fd)
            where.append(i)
        if payload:
            self.count("parent.mda.worker.batches")
            self.count("parent.mda.worker.deliveries", len(payload))
            first = jobs[0].plan
            got = await self.workers.deliver((first.uid, first.gid, first.groups), payload, fds)
            if got is not None:  # else the worker failed: every answer stays unknown
                for i, res in zip(where, got, strict=True):
                    answers[i] = res
        return answers

    async def _run(self, jobs: list[_Job]) -> None:
        config = self.parent.config
        answers: list[Any]
        try:
            if self._use_workers and all(j.plan.method in WORKER_METHODS for j in jobs):
                answers = await self._run_worker(jobs)
            else:
                self.count("parent.mda.fork.batches")
                self.count("parent.mda.fork.deliveries", len(jobs))
                out = await _run_forked(self.parent, lambda: _batch_child(config, jobs))
                answers = json.loads(out or b"")
            if not isinstance(answers, list) or len(answers) != len(jobs):
                raise ValueError("short answer")
        except (OSError, ValueError):
            answers = [None] * len(jobs)
        for job, res in zip(jobs, answers, strict=True):
            evpid = job.env.evpid
            try:
                result = m.DeliveryResult(evpid=evpid, status=str(res["status"]),
                                          text=str(res["text"]))
            except (TypeError, KeyError, ValueError):
                result = m.DeliveryResult(evpid=evpid, status="tempfail",
                                          text="451 4.3.0 delivery process died")
            if not job.done.done():
                job.done.set_result(result)


async def run_deliveries(parent: Parent, envs: list[Envelope],
                         fds: list[int]) -> m.DeliveryResults:
    """Several local deliveries the queue asked for at once (ForkDeliveries):
    each checked and decided alone (:func:`run_delivery`), side by side, so
    that one user's join one batch. One descriptor per envelope, at most
    FORK_DELIVERIES_MAX envelopes, else the request is refused (the caller
    closes the descriptors)."""
    if not 0 < len(envs) <= limits.FORK_DELIVERIES_MAX or len(fds) != len(envs):
        raise ValueError("ForkDeliveries: one descriptor per envelope, "
                         f"at most {limits.FORK_DELIVERIES_MAX}")
    got = await asyncio.gather(
        *(run_delivery(parent, env, fd) for env, fd in zip(envs, fds, strict=True)),
        return_exceptions=True)
    results: list[m.DeliveryResult] = []
    for env, res in zip(envs, got, strict=True):
        if not isinstance(res, m.DeliveryResult):
            log.error("parent", "delivery-failed", evpid=env.evpid, error=str(res))
            res = m.DeliveryResult(evpid=env.evpid, status="tempfail",
                                   text="451 4.3.0 delivery failed")
        results.append(res)
    return m.DeliveryResults(results=results)


async def run_delivery(parent: Parent, env: Envelope, msg_fd: int) -> m.DeliveryResult:
    """One local delivery the queue asked for: decided, then forked. The IPC
    codec checked the envelope's shape (:mod:`mailrider.queue.envelope`);
    :func:`decide` checks lka's seal."""
    evpid = env.evpid
    try:
        plan = decide(parent.config, parent.grant_key, env, root=os.geteuid() == 0,
                      users=parent.deliveries.users)
    except Forged as exc:
        # the queue (or whoever wrote the envelope) asked for what lka never decided
        log.error("parent", "forged-delivery", evpid=evpid, error=exc.text,
                  user=env.delivery.user[:64], method=env.delivery.method[:16])
        return m.DeliveryResult(evpid=evpid, status="tempfail", text=exc.reply())
    except PermFail as exc:
        log.warning("parent", "delivery-refused", evpid=evpid, error=exc.text)
        return m.DeliveryResult(evpid=evpid, status="permfail", text=exc.reply())
    except TempFail as exc:
        log.warning("parent", "delivery-refused", evpid=evpid, error=exc.text)
        return m.DeliveryResult(evpid=evpid, status="tempfail", text=exc.reply())
    return await parent.deliveries.submit(plan, env, msg_fd)
