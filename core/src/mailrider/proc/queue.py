"""queue: the spool. Creates message files, commits them durably, hands
envelopes to pony for delivery, records outcomes, and makes bounces.

Commits are batched (group commit): while one batch is being synced, the
next fills up, so many sessions share one sync instead of waiting in line.
The removal of finished envelopes and the closing of their message
descriptors are batched the same way (:meth:`Queue._reaper`): one worker
thread call for all that finished while the previous one ran, and the
scheduler hears of a delivery only once its envelope is gone.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
from dataclasses import dataclass, field
from typing import Any

from mailrider import limits, log, profile
from mailrider.errors import TempFail, plain_reason
from mailrider.ipc import messages as m
from mailrider.ipc.channel import Channel
from mailrider.proc import common
from mailrider.queue import bounce
from mailrider.queue import envelope as envmod
from mailrider.queue.codec import Codec, parse_key
from mailrider.queue.envelope import Envelope
from mailrider.queue.schedule import next_attempt
from mailrider.queue.spool import PendingCommit, Spool

#: spool buckets read side by side at start (docs/performance.md §3)
RECOVERY_READERS = 4
#: a batch smaller than this waits COMMIT_GATHER_DELAY seconds for company
COMMIT_GATHER_MIN = 8
COMMIT_GATHER_DELAY = 0.001
#: envelopes per SchedInsert sent to the scheduler (a commit batch's, the recovery's)
SCHED_INSERT_MAX = 1000
#: committed envelopes kept in memory until their first dispatch, at most
#: (the oldest go first: those are read back from the spool when due)
FRESH_ENVELOPES_MAX = 512


class Queue(common.Process):
    role = "queue"

    #: the spool is all it touches once chrooted; it never opens a TCP connection
    landlock_net = True

    def chroot_dir(self) -> str | None:
        return common.spool_dir(self.opts.statedir)

    def before_confine(self) -> None:
        if self.config.queue_encryption:
            from mailrider.crypto import libcrypto

            # found through /proc/self/maps, out of reach once chrooted
            try:
                libcrypto.load()
            except libcrypto.Unavailable as exc:
                log.error("queue", "libcrypto-unavailable", error=str(exc))

    async def setup(self) -> None:
        # chrooted (under root), the spool is the queue's whole filesystem: "/"
        root = "/" if common.confining() else common.spool_dir(self.opts.statedir)
        self.spool = Spool(root, codec=Codec(self.config.queue_compression))
        #: set once the codec is complete (with ``queue encryption``: when the
        #: parent's QueueKey arrived, its first frame)
        self.codec_ready = asyncio.Event()
        if not self.config.queue_encryption:
            self.codec_ready.set()
        #: set once the spool is set up and purged: requests wait for it (a
        #: message created before the purge would be purged with the rest)
        self.spool_ready = asyncio.Event()
        self._batch: list[tuple[PendingCommit, asyncio.Future[None]]] = []
        self._wake = asyncio.Event()
        self._closing = False
        self._open: set[str] = set()
        #: notifications being gathered: (msgid, kind, sender) -> Pending
        self._dsn: dict[tuple[str, str, str], _PendingDSN] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        #: while the spool is read at start: messages committed meanwhile
        self._fresh: set[str] | None = None
        #: envelopes to remove, descriptors to close: the reaper's next batch
        self._removals: list[tuple[str, asyncio.Future[None]]] = []
        self._closes: list[int] = []
        self._reap_wake = asyncio.Event()
        #: spool files asked for (MessageCreate): the creator's next batch
        self._creates: list[tuple[str, asyncio.Future[tuple[str, int]]]] = []
        self._create_wake = asyncio.Event()
        #: envelopes just committed, by id, until the scheduler hands them out:
        #: most are due at once, and reading back what was written a moment
        #: ago (open, read, parse) was a cost per envelope on the event loop
        self._fresh_envs: dict[str, Envelope] = {}

    async def run(self) -> None:
        # after the privilege drop: the spool belongs to the queue user
        self.spool.setup()
        await self.codec_ready.wait()
        purged = self.spool.purge_uncommitted()
        self.spool_ready.set()
        if purged:
            log.event("queue", "purged-uncommitted", count=purged)
        clean = self.spool.take_clean_mark()
        committer = asyncio.create_task(self._committer())
        reaper = asyncio.create_task(self._reaper())
        creator = asyncio.create_task(self._creator())
        self._fresh = set()  # from now on, before the walk's first step
        recovery = asyncio.create_task(self._recover(verify=not clean))
        try:
            await self.stopping.wait()
        finally:
            recovery.cancel()
            # let the batch being synced finish, then say the spool is consistent
            self._closing = True
            self._wake.set()
            self._reap_wake.set()
            self._create_wake.set()
            try:
                await asyncio.wait_for(creator, 30)
                await asyncio.wait_for(reaper, 30)
                await asyncio.wait_for(committer, 30)
                await asyncio.to_thread(self.spool.mark_clean)
            except (TimeoutError, OSError) as exc:
                committer.cancel()
                log.warning("queue", "unclean-stop", error=str(exc))

    async def _recover(self, verify: bool) -> None:
        """Hand every queued envelope to the scheduler, reading the spool's
        buckets in worker threads, RECOVERY_READERS at a time, while the loop
        serves commits: a large queue on a cold cache is mostly waiting on the
        disk, and new mail must not wait for it. A message committed meanwhile
        is the commit's to schedule: the walk skips it (``_fresh``)."""
        loop = asyncio.get_running_loop()
        n = 0
        envs: list[m.SchedEntry] = []
        try:
            buckets = iter(await asyncio.to_thread(self.spool.buckets))
            running: set[asyncio.Future[list[tuple[str, list[Envelope]]]]] = set()

            def more() -> None:
                bucket = next(buckets, None)
                if bucket is not None:
                    running.add(loop.run_in_executor(None, self.spool.walk_bucket, bucket,
                                                     verify))

            for _ in range(RECOVERY_READERS):
                more()
            while running:
                done, running = await asyncio.wait(running,
                                                   return_when=asyncio.FIRST_COMPLETED)
                for fut in done:
                    more()
                    for msgid, found in fut.result():
                        if self._fresh is not None and msgid in self._fresh:
                            continue
                        for env in found:
                            envs.append(m.SchedEntry.of(env))
                            n += 1
                    if len(envs) >= SCHED_INSERT_MAX:
                        self.peers["scheduler"].notify(m.SchedInsert(envelopes=envs))
                        envs = []
            if envs:
                self.peers["scheduler"].notify(m.SchedInsert(envelopes=envs))
            log.event("queue", "recovered", envelopes=n)
        except OSError as exc:
            log.error("queue", "recovery-failed", envelopes=n, error=str(exc))
        finally:
            self._fresh = None

    # -- group commit ------------------------------------------------------------

    async def _committer(self) -> None:
        while True:
            if not self._batch:
                if self._closing:
                    return
                await self._wake.wait()
            self._wake.clear()
            if len(self._batch) < COMMIT_GATHER_MIN and not self._closing:
                # one sync per batch is the cost: give commits already on their
                # way a moment to join this one (group commit)
                await asyncio.sleep(COMMIT_GATHER_DELAY)
            batch, self._batch = self._batch, []
            if not batch:
                continue
            items = [b[0] for b in batch]
            started = time.perf_counter()
            try:
                await asyncio.to_thread(self.spool.commit_batch, items)
            except Exception as exc:  # never leave a session hanging
                for item in items:
                    item.error = item.error or TempFail(f"commit failed: {exc}")
            # the scheduler hears of the whole batch in one message (one wakeup)
            # and the envelopes are kept for their first dispatch
            entries: list[m.SchedEntry] = []
            fresh = self._fresh_envs
            for item in items:
                if item.error is None:
                    for e in item.envelopes:
                        fresh[e.evpid] = e
                        entries.append(m.SchedEntry.of(e))
            while len(fresh) > FRESH_ENVELOPES_MAX:
                del fresh[next(iter(fresh))]
            for i in range(0, len(entries), SCHED_INSERT_MAX):
                self.peers["scheduler"].notify(
                    m.SchedInsert(envelopes=entries[i:i + SCHED_INSERT_MAX]))
            for item, fut in batch:
                if fut.done():
                    continue
                if item.error is not None:
                    fut.set_exception(item.error)
                else:
                    fut.set_result(None)
            if profile.on("queue"):
                profile.add("profile.queue.commit", int((time.perf_counter() - started) * 1e6))
            self.count("queue.commit.batches")
            self.count("queue.commit.messages", len(items))

    async def commit(self, msg: m.MessageCommit) -> m.Ok:
        await self.codec_ready.wait()
        if msg.msgid not in self._open:
            raise TempFail("unknown message")
        if self._fresh is not None:
            self._fresh.add(msg.msgid)  # its envelopes are scheduled below, not by the walk
        # the queue names each envelope: pony's come without an id
        envs = [dataclasses.replace(draft, evpid=envmod.new_evpid(msg.msgid))
                for draft in msg.envelopes]
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._batch.append((PendingCommit(msg.msgid, envs), fut))
        self._wake.set()
        try:
            await fut  # the committer told the scheduler
        finally:
            self._open.discard(msg.msgid)
        self.count("queue.envelope.enqueued", len(envs))
        session = msg.session if envmod.is_evpid(msg.session) else None
        for env in envs:
            # OpenSMTPD's line, under the session that received the message
            log.emit("smtp", "envelope", {"session": session, "evpid": env.evpid,
                                          "from": _addr(env.sender), "to": _addr(env.rcpt)})
        return m.Ok(text=msg.msgid)

    # -- creation, batched ---------------------------------------------------------------

    def _create(self, wanted: str) -> asyncio.Future[tuple[str, int]]:
        """A new spool file (msgid, write fd), made by the creator's next batch."""
        fut: asyncio.Future[tuple[str, int]] = asyncio.get_running_loop().create_future()
        self._creates.append((wanted, fut))
        self._create_wake.set()
        return fut

    async def _creator(self) -> None:
        """Make the spool files asked for while the previous batch was made, in
        one worker thread call: a creation can wait on the journal while a
        commit syncs, so never on the loop, and one hand-off per message was
        a GIL round trip per message (docs/performance.md §6)."""
        while True:
            if not self._creates:
                if self._closing:
                    return
                await self._create_wake.wait()
                self._create_wake.clear()
                continue
            batch, self._creates = self._creates, []
            results: list[tuple[str, int] | TempFail]
            try:
                results = await asyncio.to_thread(self.spool.create_many,
                                                  [w for w, _ in batch])
            except Exception as exc:  # never leave a session waiting
                results = [TempFail(f"cannot create a message: {exc}")] * len(batch)
            for (_, fut), res in zip(batch, results, strict=True):
                if isinstance(res, TempFail):
                    if not fut.done():
                        fut.set_exception(res)
                elif fut.done():
                    # the session's request went away meanwhile: nothing holds it
                    os.close(res[1])
                    self.spool.rollback(res[0])
                else:
                    fut.set_result(res)
            self.count("queue.create.batches")
            self.count("queue.create.messages", len(batch))

    # -- removal, batched -----------------------------------------------------------

    def _remove(self, evpid: str) -> asyncio.Future[None]:
        """Remove a finished envelope (and its message after the last one);
        done once the reaper's batch that holds it ran."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._removals.append((evpid, fut))
        self._reap_wake.set()
        return fut

    def _close_later(self, fd: int) -> None:
        """Close a message descriptor off the loop: once its message is removed,
        the last close frees the file, which waits on the journal while a commit
        syncs (measured: 200 us a close on the loop, under load)."""
        self._closes.append(fd)
        self._reap_wake.set()

    async def _reaper(self) -> None:
        while True:
            if not self._removals and not self._closes:
                if self._closing:
                    return
                await self._reap_wake.wait()
                self._reap_wake.clear()
                continue
            removals, self._removals = self._removals, []
            closes, self._closes = self._closes, []
            try:
                errors = await asyncio.to_thread(self._reap, [e for e, _ in removals], closes)
            except Exception as exc:  # never leave a delivery waiting
                errors = [exc] * len(removals)
            for (_, fut), err in zip(removals, errors, strict=True):
                if fut.done():
                    continue
                if err is None:
                    fut.set_result(None)
                else:
                    fut.set_exception(err)
            if removals:
                self.count("queue.remove.batches")
                self.count("queue.remove.envelopes", len(removals))

    def _reap(self, evpids: list[str], fds: list[int]) -> list[Exception | None]:
        """In the worker thread: unlink, then close (the last close frees the file)."""
        errors = self.spool.remove_envelopes(evpids)
        for fd in fds:
            try:
                os.close(fd)
            except OSError:
                pass
        return errors

    # -- delivery ------------------------------------------------------------------

    async def deliver_local(self, envs: list[Envelope]) -> None:
        """Local envelopes due together, in one ForkDeliveries to the parent
        (at most FORK_DELIVERIES_MAX): one request and one answer for them
        all instead of one each; their outcomes are recorded side by side,
        so that their removals share one batch of the reaper."""
        opened: list[tuple[Envelope, int]] = []
        outcomes: list[Any] = []
        try:
            for env in envs:
                try:
                    fd = self.spool.open_message(env.msgid)
                except OSError as exc:
                    log.error("queue", "load-failed", evpid=env.evpid, error=plain_reason(exc))
                    self.peers["scheduler"].notify(
                        m.SchedResult(evpid=env.evpid, status="removed"))
                    continue
                opened.append((env, fd))
            asked = [(env, fd) for env, fd in opened if env.type in ("mda", "bounce")]
            for env, fd in opened:
                if env.type not in ("mda", "bounce"):
                    outcomes.append(self._outcome(env, m.DeliveryResult(
                        evpid=env.evpid, status="tempfail",
                        text="451 4.3.0 no transport for this envelope"), fd))
            if asked:
                self.count("mda.envelope", len(asked))
                try:
                    # straight to the parent, which checks lka's seals and
                    # hands the deliveries to the users' workers
                    reply = await self.peers["parent"].ask(
                        m.ForkDeliveries(envelopes=[env for env, _ in asked]),
                        [fd for _, fd in asked])
                    got = reply.results if isinstance(reply, m.DeliveryResults) else []
                except TempFail as exc:
                    got = [m.DeliveryResult(evpid=env.evpid, status="tempfail", text=exc.reply())
                           for env, _ in asked]
                except (OSError, ValueError) as exc:  # never leave an envelope in flight
                    log.error("queue", "delivery-request-failed", error=plain_reason(exc))
                    got = []
                by_evpid = {r.evpid: r for r in got}
                for env, fd in asked:
                    res = by_evpid.get(env.evpid) or m.DeliveryResult(
                        evpid=env.evpid, status="tempfail",
                        text="451 4.3.0 No result for this envelope")
                    outcomes.append(self._outcome(env, res, fd))
            self._tell_scheduler(list(await asyncio.gather(*outcomes)))
        finally:
            for _, fd in opened:
                self._close_later(fd)

    async def deliver_mta(self, envs: list[Envelope]) -> None:
        """Relay envelopes of one route, of at most ``MTA_BATCH_MESSAGES``
        messages: one DeliverBatch with each message's descriptor, in the
        order of the messages' first envelopes (pony sends each message in one
        transaction, several messages per session)."""
        messages: dict[str, list[Envelope]] = {}
        for env in envs:
            messages.setdefault(env.msgid, []).append(env)
        fds: dict[str, int] = {}
        try:
            for msgid, menvs in messages.items():
                try:
                    fds[msgid] = self.spool.open_message(msgid)
                except OSError as exc:
                    log.error("queue", "load-failed", msgid=msgid, error=plain_reason(exc))
                    for env in menvs:
                        self.peers["scheduler"].notify(
                            m.SchedResult(evpid=env.evpid, status="removed"))
            if not fds:
                return
            batch = [e for e in envs if e.msgid in fds]
            try:
                reply = await self.peers["pony"].ask(m.DeliverBatch(envelopes=batch),
                                                     list(fds.values()))
                got = reply.results if isinstance(reply, m.DeliveryResults) else []
            except TempFail as exc:
                got = [m.DeliveryResult(evpid=e.evpid, status="tempfail", text=exc.reply())
                       for e in batch]
            by_evpid = {r.evpid: r for r in got}
            # side by side: the reaper removes the delivered ones in one batch
            self._tell_scheduler(list(await asyncio.gather(*(self._outcome(
                env, by_evpid.get(env.evpid) or m.DeliveryResult(
                    evpid=env.evpid, status="tempfail",
                    text="451 4.3.0 No result for this envelope"),
                fds[env.msgid]) for env in batch))))
        finally:
            for fd in fds.values():
                self._close_later(fd)

    # removal runs in a thread (the reaper): an unlink waits on the journal
    # while a commit syncs, which must not stall the event loop (and commits)
    async def _outcome(self, env: Envelope, res: m.DeliveryResult, fd: int) -> m.SchedResult:
        """Record one outcome (removal, bounce, or the retry written back) and
        return what the scheduler is to hear: the caller sends the results of
        its whole batch in one :class:`~mailrider.ipc.messages.SchedResults`."""
        evpid, relay = env.evpid, res.relay
        delay = int(time.time()) - env.ctime
        log_delivery(env, res.status, res.text, relay, delay, res.session)
        if res.status == "ok":
            if env.type == "mta":
                if not res.dsn_relayed and bounce.wanted(env, "relayed"):
                    self._notify(env, res.text, fd, "relayed", relay)
            elif bounce.wanted(env, "delivered"):
                self._notify(env, res.text, fd, "delivered", relay)
            await self._remove(evpid)
            self.count("scheduler.delivery.ok")
            self.count("queue.envelope.dequeued")
            return m.SchedResult(evpid=evpid, status="ok", route=env.route)
        if res.status == "permfail":
            await self._bounce(env, res.text, fd, relay)
            await self._remove(evpid)
            self.count("scheduler.delivery.permfail")
            self.count("queue.envelope.dequeued")
            return m.SchedResult(evpid=evpid, status="permfail")
        retry = env.retry + 1
        env = dataclasses.replace(
            env, retry=retry, last_try=int(time.time()),
            errorline=res.text[:300].replace("\n", " ").replace("\r", " "))
        env = self._maybe_warn(env, res.text, fd, relay, retry)
        try:
            self.spool.update_envelope(env)
        except OSError as exc:
            log.error("queue", "update-failed", evpid=evpid, error=exc.strerror)
        self.count("scheduler.delivery.tempfail")
        return m.SchedResult(evpid=evpid, status="tempfail", retry=retry)

    def _tell_scheduler(self, results: list[m.SchedResult]) -> None:
        """The outcomes of one batch, in one message: one wakeup of the
        scheduler per batch instead of one per envelope."""
        for i in range(0, len(results), SCHED_INSERT_MAX):
            self.peers["scheduler"].notify(
                m.SchedResults(results=results[i:i + SCHED_INSERT_MAX]))

    async def expire(self, evpid: str) -> None:
        self._fresh_envs.pop(evpid, None)
        try:
            env = self.spool.load_envelope(evpid)
            fd = self.spool.open_message(evpid[:8])
        except (OSError, ValueError):
            self.peers["scheduler"].notify(m.SchedResult(evpid=evpid, status="removed"))
            return
        try:
            text = env.errorline or "Envelope expired"
            log_queue(env, "Expire", "Envelope expired")
            await self._bounce(env, f"554 5.4.7 Delivery time expired: {text}", fd)
        finally:
            os.close(fd)
        await self._remove(evpid)
        self.count("scheduler.delivery.expired")
        self.count("queue.envelope.dequeued")
        self.peers["scheduler"].notify(m.SchedResult(evpid=evpid, status="expired"))

    def _maybe_warn(self, env: Envelope, reason: str, fd: int, relay: str,
                    retry: int) -> Envelope:
        """A "delayed" notification when the next try falls after a warn-interval
        not yet reported (docs/queue.md §6); ``last-bounce`` remembers it: the
        envelope to write back is returned."""
        if not self.config.bounce_warn_interval or not bounce.wanted(env, "delayed"):
            return env
        ctime = env.ctime
        ttl = env.ttl or self.config.queue_ttl
        now = time.time()
        base = limits.RETRY_BASE_MTA if env.type == "mta" else limits.RETRY_BASE_MDA
        nxt = next_attempt(ctime, retry, base, now)
        if nxt >= ctime + ttl:
            return env  # it expires first: the failure notification will say it
        last = env.last_bounce or 0
        due = [w for w in sorted(self.config.bounce_warn_interval)
               if nxt >= ctime + w and last < ctime + w]
        if not due:
            return env
        env = dataclasses.replace(env, last_bounce=int(now))
        self._notify(env, reason, fd, "delayed", relay)
        return env

    async def _bounce(self, env: Envelope, reason: str, fd: int, relay: str = "") -> None:
        evpid = env.evpid
        if not env.sender:
            log.event("bounce", "null-sender-dropped", evpid=evpid)
            return
        if env.is_bounce:
            log.event("bounce", "double-bounce-dropped", evpid=evpid)
            return
        if not bounce.wanted(env, "failed"):
            log.event("bounce", "not-requested", evpid=evpid)
            return
        self._notify(env, reason, fd, "failed", relay)

    def _notify(self, env: Envelope, reason: str, fd: int, kind: str, relay: str) -> None:
        """Add a recipient to the notification of its message (sent ~1 s after
        the last addition, docs/queue.md §6). The original is read now: the
        message file goes away with its last envelope."""
        key = (env.msgid, kind, env.sender)
        pending = self._dsn.get(key)
        if pending is None:
            full = kind == "failed" and env.dsn_ret.upper() == "FULL"
            try:
                original = (bounce.original_message(fd) if full
                            else bounce.original_headers(fd))
            except OSError as exc:
                log.error("bounce", "read-failed", evpid=env.evpid, error=exc.strerror)
                return
            pending = self._dsn[key] = _PendingDSN(original, full)
        pending.items.append(bounce.Item(env, reason, relay))
        if pending.timer is not None:
            pending.timer.cancel()
        pending.timer = asyncio.get_running_loop().call_later(
            limits.BOUNCE_FLUSH_DELAY, self._flush_dsn, key)

    def _flush_dsn(self, key: tuple[str, str, str]) -> None:
        pending = self._dsn.pop(key, None)
        if pending is None:
            return
        task = asyncio.get_running_loop().create_task(
            self._send_dsn(pending.items, pending.original, key[1], pending.full))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send_dsn(self, items: list[bounce.Item], original: bytes, kind: str,
                        full: bool) -> None:
        env = items[0].env
        sender = env.sender
        evpid = env.evpid
        try:
            res = await self.peers["lka"].ask(m.RcptCheck(
                session={"ip": "local", "local_socket": True, "helo": env.smtpname},
                sender="", rcpt=sender))
        except TempFail as exc:
            log.error("bounce", "route-failed", evpid=evpid, error=exc.text)
            return
        if not isinstance(res, m.RcptResult) or not res.accepted:
            log.event("bounce", "no-route", evpid=evpid, to=sender,
                      reason=str(res.reply or "") if isinstance(res, m.RcptResult) else "")
            return
        body = bounce.build_report(items, original, kind=kind, full=full)
        msgid = envmod.new_msgid()
        now = int(time.time())
        envs = [Envelope(
            evpid=envmod.new_evpid(msgid), delivery=dataclasses.replace(d, rcpt=sender),
            type="mta" if d.relayed else "bounce", sender="", ctime=now, retry=0,
            ttl=limits.BOUNCE_TTL, smtpname=env.smtpname, flags=("bounce",),
            bounce_type=kind) for d in res.deliveries]
        try:
            await asyncio.to_thread(self.spool.add_message, msgid, body, envs)
        except (OSError, TempFail) as exc:
            log.error("bounce", "enqueue-failed", evpid=evpid, error=str(exc))
            return
        log.event("bounce", "queued", evpid=evpid, msgid=msgid, to=sender, kind=kind,
                  rcpts=len(items))
        self.count("queue.bounce")
        self.peers["scheduler"].notify(
            m.SchedInsert(envelopes=[m.SchedEntry.of(e) for e in envs]))

    # -- requests -------------------------------------------------------------------

    async def handle(self, chan: Channel, msg: Any, fds: list[int]) -> Any:
        for fd in fds:
            os.close(fd)
        if isinstance(msg, m.QueueKey):
            # from the parent only (ipc/policy.py), once, and only when configured
            if not self.config.queue_encryption or self.codec_ready.is_set():
                raise ValueError("unexpected queue key")
            self.spool.codec = Codec(self.config.queue_compression, parse_key(msg.key))
            self.codec_ready.set()
            return None
        if not self.spool_ready.is_set():
            await self.spool_ready.wait()
        if isinstance(msg, m.MessageCreate):
            # a file creation can wait on the journal while a commit syncs:
            # never on the event loop, which answers every other session
            msgid, fd = await self._create(msg.msgid)
            self._open.add(msgid)
            return m.MessageCreated(msgid=msgid), [fd]
        if isinstance(msg, m.MessageCommit):
            return await self.commit(msg)
        if isinstance(msg, m.MessageRollback):
            if not envmod.is_msgid(msg.msgid):
                log.warning("queue", "invalid-id", peer=chan.peer, request="rollback")
                raise ValueError("invalid message id")
            self._open.discard(msg.msgid)
            self.spool.rollback(msg.msgid)
            return m.Ok()
        if isinstance(msg, m.SchedDue):
            evpids = [e for e in msg.evpids if envmod.is_evpid(e)]
            if msg.expire:
                for evpid in evpids:
                    self._spawn(self.expire(evpid))
            else:
                self._dispatch(evpids)
            return None
        if isinstance(msg, m.Control):
            return await self.control(msg)
        raise ValueError(f"queue: unexpected {m.type_name(msg)} from {chan.peer}")

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _dispatch(self, evpids: list[str]) -> None:
        """Local envelopes together (ForkDeliveries, at most
        ``FORK_DELIVERIES_MAX`` a request); relay envelopes grouped by route,
        each message's envelopes together, up to ``MTA_BATCH_MESSAGES``
        messages a batch: each message goes to each host in one transaction,
        and the messages of a route share pony's sessions."""
        routes: dict[str, dict[str, list[Envelope]]] = {}
        local: list[Envelope] = []
        fresh = self._fresh_envs
        for evpid in evpids:
            try:
                # as committed, when it is due for the first time (what the
                # spool holds until this attempt's outcome is written)
                env = fresh.pop(evpid, None) or self.spool.load_envelope(evpid)
            except (OSError, ValueError) as exc:
                log.error("queue", "load-failed", evpid=evpid, error=plain_reason(exc))
                self.peers["scheduler"].notify(m.SchedResult(evpid=evpid, status="removed"))
                continue
            if env.type != "mta":
                local.append(env)
                continue
            routes.setdefault(env.route, {}).setdefault(env.msgid, []).append(env)
        step = limits.FORK_DELIVERIES_MAX
        for i in range(0, len(local), step):
            self._spawn(self.deliver_local(local[i:i + step]))
        for messages in routes.values():
            groups = list(messages.values())
            for i in range(0, len(groups), limits.MTA_BATCH_MESSAGES):
                self._spawn(self.deliver_mta(
                    [e for g in groups[i:i + limits.MTA_BATCH_MESSAGES] for e in g]))

    async def control(self, msg: m.Control) -> m.ControlReply:
        if msg.command == "show-queue":
            rows: list[dict[str, str]] = []
            for _msgid, envs in self.spool.walk():
                rows.extend(envmod.to_fields(e) for e in envs)
            return m.ControlReply(data={"envelopes": rows})
        if msg.command in ("show-envelope", "remove"):
            evpid = msg.args[0] if len(msg.args) == 1 else ""
            if not envmod.is_evpid(evpid):
                log.warning("queue", "invalid-id", request=msg.command)
                return m.ControlReply(ok=False, lines=["command failed: invalid envelope id"])
        if msg.command == "show-envelope":
            try:
                env = self.spool.load_envelope(evpid)
            except (OSError, ValueError):
                return m.ControlReply(ok=False, lines=["command failed: no such envelope"])
            return m.ControlReply(lines=envmod.serialise(env).decode().splitlines())
        if msg.command == "remove":
            try:
                log_queue(self.spool.load_envelope(evpid), "Remove", "Removed by administrator")
            except (OSError, ValueError):
                pass
            self._fresh_envs.pop(evpid, None)
            self.spool.remove_envelope(evpid)
            self.count("queue.envelope.removed")
            self.count("queue.envelope.dequeued")
            return m.ControlReply()
        if msg.command == "show-message":
            ident = msg.args[0] if len(msg.args) == 1 else ""
            if not envmod.is_target(ident, all_ok=False):
                return m.ControlReply(ok=False, lines=["command failed: invalid id"])
            try:
                fd = self.spool.open_message(ident[:8])
            except OSError:
                return m.ControlReply(ok=False, lines=["command failed: no such message"])
            return m.ControlReply(), [fd]  # type: ignore[return-value]
        if msg.command == "discover":
            ident = msg.args[0] if len(msg.args) == 1 else ""
            if not envmod.is_target(ident, all_ok=False):
                return m.ControlReply(ok=False, lines=["command failed: invalid id"])
            found = await self._discover(ident)
            return m.ControlReply(lines=[
                f"{found} envelope{'s' if found != 1 else ''} discovered"])
        return await super().control(msg)

    async def _discover(self, ident: str) -> int:
        """Hand the scheduler envelopes copied into the queue by hand."""
        if not envmod.is_target(ident, all_ok=False):
            return 0
        mdir = self.spool.msgdir(ident[:8])
        try:
            names = os.listdir(mdir)
        except OSError:
            return 0
        envs = []
        for name in names:
            if not envmod.is_evpid(name) or not name.startswith(ident):
                continue
            try:
                envs.append(m.SchedEntry.of(self.spool.load_envelope(name)))
            except (OSError, ValueError):
                continue
        if not envs:
            return 0
        reply = await self.peers["scheduler"].ask(m.SchedInsert(envelopes=envs, discover=True))
        return int(reply.text) if isinstance(reply, m.Ok) and reply.text.isdigit() else 0


@dataclass(slots=True)
class _PendingDSN:
    original: bytes
    full: bool
    items: list[bounce.Item] = field(default_factory=list)
    timer: asyncio.TimerHandle | None = None


def _addr(value: str | None) -> str:
    return f"<{value or ''}>"


def log_delivery(env: Envelope, status: str, text: str, relay: str, delay: int,
                 session: str = "") -> None:
    """OpenSMTPD's ``mta delivery`` / ``mda delivery`` line for one outcome
    (docs/logging.md), under the id of the mta connection that carried it
    (``session``, checked) or else the envelope's own."""
    result = {"ok": "Ok", "tempfail": "TempFail", "permfail": "PermFail"}.get(status, status)
    rcpt = env.rcpt if env.rcpt != env.dest else None
    lead = session if envmod.is_evpid(session) else env.evpid
    fields: dict[str, object] = {"session": lead, "evpid": env.evpid,
                                 "from": _addr(env.sender), "to": _addr(env.dest)}
    if env.type == "mta":
        fields.update(rcpt=_addr(rcpt or "-"), source=log.Quoted("-"),
                      relay=log.Quoted(relay or "-"), delay=log.duration_text(delay),
                      result=log.Quoted(result), stat=log.Quoted(text))
        log.emit("mta", "delivery", fields)
    else:
        fields.update(rcpt=_addr(rcpt) if rcpt else None, user=env.delivery.user or None,
                      delay=log.duration_text(delay), result=result, stat=text)
        log.emit("mda", "delivery", fields)


def log_queue(env: Envelope, what: str, stat: str) -> None:
    """OpenSMTPD's line for an envelope the queue ends itself (expired, removed):
    ``delivery: Expire for EVPID: from=<...>, to=<...>, rcpt=<...>, delay=..., stat=...``."""
    rcpt = env.rcpt if env.rcpt != env.dest else "-"
    delay = int(time.time()) - env.ctime
    kind = "relay" if env.type == "mta" else "delivery"
    log.emit(f"{kind}:", f"{what} for {env.evpid}:",
             {"from": f"<{env.sender}>,", "to": f"<{env.dest}>,", "rcpt": f"<{rcpt}>,",
              "delay": f"{log.duration_text(delay)},", "stat": stat})


PROCESS = Queue
