"""lka: tables, rule matching and recipient expansion.

pony asks, for each RCPT, which rule matches and what the recipient expands
to; the answer is the list of deliveries that become envelopes at commit.
Every table failure becomes a 4xx reply for that recipient.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

from mailrider import __version__, limits, log, paths, srs
from mailrider.config.model import Action, Filter
from mailrider.crypto.passwords import UnsupportedHash, verify_password
from mailrider.delivery import grant
from mailrider.dns.hosts import HostsFile
from mailrider.dns.resolver import Resolver
from mailrider.errors import PermFail, TempFail, plain_reason
from mailrider.filter.host import FilterHost
from mailrider.filter.proc import FilterFailed
from mailrider.filter.programs import used_filters
from mailrider.ipc import messages as m
from mailrider.ipc.channel import Channel, Gate
from mailrider.proc import common, lka_dns, lka_rules
from mailrider.proc.lka_dns import resolver_config
from mailrider.proc.lka_expand import expand
from mailrider.proc.workers import WorkerPool
from mailrider.queue import envelope as envmod
from mailrider.smtp.reply import Reply
from mailrider.table.base import normalise_key
from mailrider.table.match import match_mailaddr
from mailrider.table.registry import TableSet
from mailrider.table.usage import table_uses
from mailrider.table.values import parse_credentials, parse_mailaddrmap
from mailrider.ttlcache import TtlCache

NO_RULE = Reply(550, "5.7.1", "Delivery not authorized, message refused")
REJECTED = Reply(550, "5.7.1", "Recipient rejected by policy")
TEMPORARY = Reply(451, "4.3.0", "Temporary failure")
AUTH_TEMPORARY = Reply(454, "4.7.0", "Temporary authentication failure")


def _internal(env: lka_rules.Envelope) -> lka_rules.Envelope:
    """An address we made (an expansion's target, a decoded SRS address).

    As OpenSMTPD's EF_INTERNAL envelopes: ``from`` conditions see the local
    source (``from local`` holds), not the client's address or name.
    """
    return dataclasses.replace(env, ip="local", rdns="")


class Lka(common.Process):
    role = "lka"

    async def setup(self) -> None:
        # as root the parent starts table backends, as the program user: not
        # as lka's own user, which pony shares (docs/security.md)
        #: started as root: the parent starts table backends and reads .forward
        #: files (decided here, before the privilege drop)
        self.privileged = common.unprivileged_user() is not None
        spawner = self._table_spawner if self.privileged else None
        self.tables = TableSet(self.config, spawner)
        # before the privilege drop: resolv.conf may be unreadable after it
        rconf = resolver_config(self.config)
        self.resolver = Resolver(rconf, hosts=HostsFile(paths.hosts_file()).load())
        #: the AD bit of the resolver's answers is believed (docs/dane.md §2)
        self.ad_trusted = lka_dns.ad_trusted(self.config, rconf)
        self.filters: FilterHost | None = None
        self.auth_pool = WorkerPool(limits.AUTH_WORKERS, limits.AUTH_PENDING_MAX, "lka-auth")
        #: set once tables and filters are up: requests wait for it (as OpenSMTPD's
        #: lka serves nobody before every filter registered)
        self.ready = asyncio.Event()
        #: seals delivery grants; the parent sends it first thing
        self.grant_key: bytes | None = None
        self.key_set = asyncio.Event()
        #: the parent's ~/.forward answers, kept briefly (docs/performance.md
        #: §1, "Sessions under load"), and the questions on their way
        self._forwards: TtlCache[str, str | None] = TtlCache(
            limits.FORWARD_CACHE_TTL, limits.FORWARD_CACHE_MAX)
        self._forward_asks: dict[str, asyncio.Future[str | None]] = {}
        #: recipient checks expanded at once, over pony's and the queue's channels:
        #: under a burst the rest wait as their requests, not as expansions
        #: (several kB of frames each) all waiting on the same answer
        self.rcpt_gate = Gate(limits.LKA_RCPT_CONCURRENCY, (m.RcptCheck,))

    def connect(self, fds: dict[str, int]) -> None:
        super().connect(fds)
        for chan in self.peers.values():
            chan.gate = self.rcpt_gate

    def stats(self) -> dict[str, int]:
        out = super().stats()
        out["lka.rcpt.waiting.peak"] = self.rcpt_gate.waiting_peak
        return out

    async def run(self) -> None:
        await self.tables.start()
        log.debug("lka", "ready", tables=len(self.config.tables))
        if not self._check_services():
            self.stopping.set()
            self.ready.set()
            return
        if used_filters(self.config):  # on a listener or a relay action
            self.filters = FilterHost(
                self.config, self.tables, self._start_filter, version=__version__,
                admd=self.config.admd or socket.gethostname() or "localhost")
            self.filters.data_out = self._filter_data_out
            try:
                await self.filters.start()
            except TempFail as exc:
                # as OpenSMTPD: no serving until every filter registered
                log.error("lka", "filter-start-failed", error=exc.text)
                self.stopping.set()
        self.ready.set()
        try:
            await self.stopping.wait()
        finally:
            if self.filters is not None:
                self.filters.close()
            self.auth_pool.close()
            await self.tables.close()

    async def peer_lookup(self, msg: m.PeerLookup) -> m.PeerInfo:
        """FCrDNS of a client (RFC 8601 2.7.3 style: PTR, then the name's addresses)."""
        try:
            name, verdict = await self.resolver.fcrdns(msg.ip)
        except Exception as exc:  # a lookup must never take lka down
            log.warning("lka", "rdns-failed", ip=msg.ip, error=plain_reason(exc)[:200])
            return m.PeerInfo(rdns="", fcrdns="error")
        return m.PeerInfo(rdns=name or "", fcrdns=verdict)

    def _check_services(self) -> bool:
        """A table used for a service its backend did not register is an error."""
        ok = True
        for name, services, where in table_uses(self.config):
            try:
                table = self.tables.get(name)
            except KeyError:
                continue
            if not any(svc in table.services for svc in services):
                log.error("lka", "config-error",
                          error=f"{where}: table {name} does not provide the "
                                f"{services[0]} service (it registered: "
                                f"{', '.join(sorted(table.services)) or 'nothing'})")
                ok = False
        return ok

    async def _start_filter(self, f: Filter) -> tuple[socket.socket, socket.socket | None]:
        # by name: the parent reads the command, user and chroot in its own configuration
        kind = "proc" if self.config.procs.get(f.name) is f else "filter"
        _, fds = await self.peers["parent"].call(m.FilterStart(name=f"{kind}:{f.name}"))
        if len(fds) != 2:
            for fd in fds:
                os.close(fd)
            raise TempFail(f"filter {f.name} could not be started")
        return socket.socket(fileno=fds[0]), socket.socket(fileno=fds[1])

    def _table_spawner(self, name: str) -> Callable[[], Awaitable[tuple[socket.socket, int, int]]]:
        async def spawn() -> tuple[socket.socket, int, int]:
            reply, fds = await self.peers["parent"].call(m.TableStart(name=name))
            if len(fds) != 2 or not isinstance(reply, m.Ok) or not reply.text.isdigit():
                for fd in fds:
                    os.close(fd)
                raise TempFail(f"table {name}: the parent could not start its backend")
            return socket.socket(fileno=fds[0]), fds[1], int(reply.text)

        return spawn

    def _filter_data_out(self, sid: str, lines: list[str], error: str) -> None:
        self.peers["pony"].notify(m.FilterData(sid=sid, lines=lines, error=error))

    async def filter_message(self, msg: Any) -> Any:
        host = self.filters
        if host is None:
            if isinstance(msg, m.FilterDataBegin):
                return m.Ok(text="no")
            return m.FilterDecision() if isinstance(msg, m.FilterBegin | m.FilterPhase) \
                else None
        if isinstance(msg, m.FilterBegin) and msg.relay:
            host.begin_out(msg.sid, msg.relay, rdns=msg.rdns, fcrdns=msg.fcrdns,
                           link_src=msg.link_src, link_dest=msg.link_dest)
            return None
        if isinstance(msg, m.FilterBegin):
            host.begin(msg.sid, msg.listener, rdns=msg.rdns, fcrdns=msg.fcrdns, src=msg.src,
                       link_src=msg.link_src, link_dest=msg.link_dest)
            params = [msg.rdns or "<unknown>", msg.src]
            d = await host.phase(msg.sid, "connect", params)
            return m.FilterDecision(decision=d.decision, param=d.param)
        if isinstance(msg, m.FilterPhase):
            d = await host.phase(msg.sid, msg.phase, list(msg.params))
            return m.FilterDecision(decision=d.decision, param=d.param)
        if isinstance(msg, m.FilterReport):
            host.report(msg.sid, msg.event, list(msg.params))
            return None
        if isinstance(msg, m.FilterDataBegin):
            if not host.wants_data(msg.sid):
                return m.Ok(text="no")
            host.data_begin(msg.sid)
            return m.Ok(text="yes")
        if isinstance(msg, m.FilterData):
            host.data_lines(msg.sid, list(msg.lines))
            # the reply (when pony asked) waits until the filters read them:
            # pony's window of unanswered lines is what lka holds per session
            try:
                await host.data_drain(msg.sid)
            except FilterFailed as exc:
                self._filter_data_out(msg.sid, [], "421 4.3.0 " + exc.text)
            return None
        if isinstance(msg, m.FilterEnd):
            host.end(msg.sid)
            return None
        raise ValueError("not a filter message")

    async def _forward(self, user: str, home: str) -> str | None:
        """The user's ``~/.forward`` as the parent read it (None: none to use).

        The parent finds the home folder itself: ``home`` may come from a
        table. Its answer is kept FORWARD_CACHE_TTL seconds, and the
        recipients of one user expanded meanwhile wait for the same question:
        under load hundreds of RCPTs for one user otherwise each held their
        expansion open across a round trip to the parent.
        """
        found, content = self._forwards.get(user)
        if found:
            return content
        pending = self._forward_asks.get(user)
        if pending is None:
            pending = asyncio.ensure_future(self._ask_forward(user))
            self._forward_asks[user] = pending
        return await asyncio.shield(pending)

    async def _ask_forward(self, user: str) -> str | None:
        try:
            reply = await self.peers["parent"].ask(m.ForwardOpen(user=user))
        finally:
            self._forward_asks.pop(user, None)
        content = reply.content if isinstance(reply, m.ForwardContent) else None
        self._forwards.put(user, content)  # an error is not kept: asked again
        return content

    def _srs_reverse(self, sender: str, rcpt: str) -> str:
        """A bounce to an SRS address of ours goes to the address it stands for.

        As OpenSMTPD: only for the null sender; an address that does not
        verify (hash, age) is logged and kept, and the rules refuse it as
        any unknown recipient (docs/config.md §9).
        """
        cfg = self.config
        if cfg.srs_key is None or sender or not srs.is_srs(rcpt):
            return rcpt
        keys = [cfg.srs_key] + ([cfg.srs_backup_key] if cfg.srs_backup_key else [])
        decoded = srs.decode(rcpt, keys, cfg.srs_ttl // srs.DAY, time.time())
        if decoded is None:
            log.warning("lka", "srs-invalid", rcpt=rcpt)
            return rcpt
        log.event("lka", "srs-reversed", rcpt=rcpt, dest=decoded)
        return decoded

    async def rcpt(self, msg: m.RcptCheck) -> m.RcptResult:
        s = msg.session
        rcpt = self._srs_reverse(msg.sender, msg.rcpt)
        env = lka_rules.Envelope(
            ip=str(s.get("ip", "")), local_socket=bool(s.get("local_socket")),
            helo=str(s.get("helo", "")), tag=str(s.get("tag", "")), sender=msg.sender,
            rcpt=rcpt, auth_user=str(s.get("auth", "")), tls=bool(s.get("tls")),
            rdns=str(s.get("rdns", "")),
        )
        if rcpt != msg.rcpt:
            env = _internal(env)
        self.count("lka.rcpt")
        try:
            rule = await lka_rules.match_rule(self.config, self.tables, env)
            if rule is None:
                log.event("lka", "rule-none", rcpt=rcpt, sender=msg.sender, ip=env.ip)
                return m.RcptResult(accepted=False, reply=NO_RULE)
            if rule.reject or rule.action is None:
                return m.RcptResult(accepted=False, reply=REJECTED)
            action = self.config.actions[rule.action]
            local, _, domain = rcpt.rpartition("@")
            forward = self._forward if self.privileged else None

            async def route(rlocal: str, rdomain: str) -> Action | None:
                # an address inside an expansion goes where the rules send it
                # (e.g. a relay for a remote domain), as if it were a RCPT
                # made by us (docs/config.md §8)
                inner = dataclasses.replace(_internal(env), rcpt=f"{rlocal}@{rdomain}")
                found = await lka_rules.match_rule(self.config, self.tables, inner)
                if found is None or found.reject or found.action is None:
                    return None
                return self.config.actions[found.action]

            deliveries = await expand(self.config, self.tables, action, local, domain,
                                      forward=forward, route=route)
            if rcpt != msg.rcpt:
                # as OpenSMTPD: the recipient stays the one given, the
                # destination is the address the SRS one stood for
                deliveries = [dataclasses.replace(d, rcpt=msg.rcpt) for d in deliveries]
        except PermFail as exc:
            return m.RcptResult(accepted=False, reply=m.reply_of(exc, TEMPORARY))
        except TempFail as exc:
            log.warning("lka", "tempfail", rcpt=msg.rcpt, error=exc.text)
            return m.RcptResult(accepted=False, reply=m.reply_of(exc, TEMPORARY)
                                if exc.code < 500 else TEMPORARY)
        key = self.grant_key
        if key is None:  # pragma: no cover - the parent sends it before anything else
            return m.RcptResult(accepted=False, reply=TEMPORARY)
        out: list[envmod.Delivery] = []
        for d in deliveries:
            decided = envmod.Delivery(
                dispatcher=d.action, rcpt=d.rcpt, dest=d.dest, method=d.method,
                arg=d.arg or "", user=d.user, uid=d.uid, gid=d.gid, home=d.home,
                local_user=d.local_user, subaddress=d.subaddress)
            # sealed for the parent, bound to this sender (delivery/grant.py), over
            # the fields as the envelope codec writes them
            seal = grant.seal(key, {**envmod.delivery_fields(decided), "sender": msg.sender})
            out.append(dataclasses.replace(decided, grant=seal))
        return m.RcptResult(accepted=True, deliveries=out)

    async def handle(self, chan: Channel, msg: Any, fds: list[int]) -> Any:
        if isinstance(msg, m.GrantKey):
            # from the parent only (ipc/policy.py), and only once
            if self.grant_key is not None:
                raise ValueError("a second grant key")
            key = bytes.fromhex(msg.key)
            if len(key) != grant.KEY_SIZE:
                raise ValueError("grant key of the wrong size")
            self.grant_key = key
            self.key_set.set()
            return None
        if not self.ready.is_set():
            await self.ready.wait()
        if not self.key_set.is_set():
            await self.key_set.wait()
        if isinstance(msg, m.RcptCheck):
            return await self.rcpt(msg)
        if isinstance(msg, m.PeerLookup):
            return await self.peer_lookup(msg)
        if isinstance(msg, m.MxResolve):
            return await lka_dns.resolve(self.resolver, msg, self.ad_trusted)
        if isinstance(msg, m.TlsaLookup):
            return await lka_dns.tlsa(self.resolver, msg, self.config.mta_port, self.ad_trusted)
        if isinstance(msg, m.StsTxt):
            return await lka_dns.sts_txt(self.resolver, msg)
        if isinstance(msg, m.MtaLookup):
            return await self.mta_lookup(msg)
        if isinstance(msg, m.FilterBegin | m.FilterPhase | m.FilterReport | m.FilterDataBegin
                      | m.FilterData | m.FilterEnd):
            return await self.filter_message(msg)
        if isinstance(msg, m.AuthCheck):
            return await self.auth(msg)
        if isinstance(msg, m.SendersCheck):
            return await self.senders(msg)
        if isinstance(msg, m.Control):
            return await self.control(msg)
        raise ValueError(f"lka: unexpected {m.type_name(msg)} from {chan.peer}")

    async def auth(self, msg: m.AuthCheck) -> m.AuthResult:
        """A login: the table's ``auth`` service when it has one, else its
        credentials (user:hash) checked here; system users through the parent."""
        self.count("lka.auth")
        user = msg.username
        try:
            if msg.table is None:
                res = await self.peers["parent"].ask(msg)
                return res if isinstance(res, m.AuthResult) else m.AuthResult("error")
            table = self.tables.get(msg.table)
            if "auth" in table.services:
                ok = await table.check("auth", normalise_key("auth", f"{user}:{msg.password}"))
                return m.AuthResult("ok" if ok else "fail")
            value = await table.lookup("credentials", normalise_key("credentials", user))
            if value is None:
                return m.AuthResult("fail")
            _, stored = parse_credentials(user, value)
            # hundreds of thousands of hash rounds: in the bounded pool, never
            # on the loop that serves every other session's requests
            ok = await self.auth_pool.run(verify_password, msg.password, stored)
            return m.AuthResult("ok" if ok else "fail")
        except UnsupportedHash as exc:
            log.warning("lka", "auth-unsupported-hash", user=user, scheme=exc.scheme)
            return m.AuthResult("error", m.reply_of(exc, AUTH_TEMPORARY))
        except (TempFail, ValueError) as exc:
            log.warning("lka", "auth-error", user=user, error=str(exc)[:200])
            return m.AuthResult("error", AUTH_TEMPORARY)

    async def senders(self, msg: m.SendersCheck) -> m.Ok:
        """``senders <t>``: the mailaddrmap of the user must cover MAIL FROM."""
        table = self.tables.get(msg.table)
        value = await table.lookup("mailaddrmap", normalise_key("mailaddrmap", msg.username))
        if value is None:
            return m.Ok(text="no")
        patterns = parse_mailaddrmap(value)
        ok = any(match_mailaddr(p, msg.sender.lower(), self.config.sub_addr_delim)
                 for p in patterns)
        return m.Ok(text="yes" if ok else "no")

    async def mta_lookup(self, msg: m.MtaLookup) -> m.Ok | m.Error:
        """A relay option's value from its table (the secret is never logged)."""
        if msg.service not in ("credentials", "source", "relayhost", "addrname"):
            return m.Error(text=f"unknown service {msg.service}")
        try:
            table = self.tables.get(msg.table)
        except KeyError:
            # a table the configuration names is always declared: a fault
            raise TempFail(f"no such table: {msg.table}") from None
        if msg.service == "source" or (msg.service == "relayhost" and not msg.key):
            value = await table.fetch(msg.service)
        else:
            value = await table.lookup(msg.service, normalise_key(msg.service, msg.key))
        return m.Error(text="not found") if value is None else m.Ok(text=value)

    async def control(self, msg: m.Control) -> m.ControlReply:
        if msg.command == "update-table":
            name = msg.args[0] if msg.args else ""
            try:
                table = self.tables.get(name)
            except KeyError:
                return m.ControlReply(ok=False, lines=[f"command failed: no such table: {name}"])
            try:
                await table.update()
            except TempFail as exc:
                return m.ControlReply(ok=False, lines=[f"command failed: {exc.text}"])
            log.event("lka", "table-updated", table=name)
            return m.ControlReply(lines=["command succeeded"])
        return await super().control(msg)


PROCESS = Lka
