"""pony's mta: delivery of queued envelopes to other mail servers.

queue hands over, in one :class:`~mailrider.ipc.messages.DeliverBatch`, the
envelopes of up to :data:`limits.MTA_BATCH_MESSAGES` messages that share a
route (relay action and recipient domain), with each message's descriptor.
The route is resolved once per batch; each message goes out in one
transaction carrying every recipient (up to :data:`limits.MTA_MAX_RCPT`),
and the messages share at most :data:`limits.MTA_BATCH_LANES` sessions, one
message after the other on each (docs/performance.md, "Relaying"). The
protocol is the sans-I/O :class:`~mailrider.smtp.client.SMTPClient`; this
module owns sockets, TLS, timers and connection reuse.

Where mail goes:

- ``relay host URL``: that host (docs/config.md §8): ``smtp://`` with
  opportunistic STARTTLS, ``smtp+tls://`` STARTTLS required, ``smtps://``
  TLS from the start, ``smtp+notls://`` never TLS, ``lmtp://host:port``.
  Certificates are verified (against the action's ``ca``, else the system
  store) for smtp+tls and smtps and with ``tls``, unless ``tls no-verify``;
  opportunistic TLS is never verified and, when the handshake fails, the
  same host is tried again in clear.
- ``auth <table>``: credentials go only to a peer whose certificate verified.
  With ``auth``, ``smtp://`` requires STARTTLS and verifies like
  ``smtp+tls://``; ``tls no-verify``, ``smtp+notls`` and ``lmtp`` are refused
  (the delivery fails temporarily, saying why), and a handshake that does
  not verify fails the host before AUTH; the client machine checks it once
  more (``auth_needs_verified_tls``).
- otherwise the MX hosts of the recipient domain, which lka resolves
  (lka_dns), on port 25 (``mta port`` for tests), in preference order; with
  ``backup [mx name]`` only hosts preferred to ourselves.
- with ``mta-sts`` (MX routes only), the recipient domain's MTA-STS policy
  (proc/pony_mtasts.py, docs/mta-sts.md): in mode enforce only the policy's
  MX hosts are tried, with STARTTLS required and the certificate verified
  for the MX name; in mode testing a failed strict attempt is logged and
  the host is tried again as without a policy. A host DANE applies to is
  DANE's alone (``_on_host`` puts DANE's profile in place of the strict
  one, and a DANE failure is not a TLS failure, so testing never retries
  it): RFC 8461 §2.

Failure classes (every envelope gets exactly one result):

- the host cannot be used (connection refused, timeout before the
  transaction, TLS failure, a 4xx/5xx greeting, EHLO or AUTH failure): the
  next host is tried; when none is left the envelopes fail temporarily with
  the last error;
- MAIL, RCPT and end-of-data replies decide per recipient: 2xx delivered,
  4xx temporary, 5xx permanent;
- the connection lost or timed out inside the transaction: temporary.

Outgoing bytes come from the spool file (LF endings, dot-unstuffed) through
the client's BodyEncoder, which turns every line end into CRLF and
dot-stuffs, so no bare CR or LF and no early terminator can reach the wire.

An action with ``dkim`` keys signs each message as it leaves: the
``DKIM-Signature`` field, made once per route before any connection
(proc/pony_dkim.py, signed by klondike), goes out in front of the file's
bytes, and the SIZE announced counts it (docs/dkim.md).

An action with ``dane`` has each MX host's TLSA records looked up before
connecting (proc/pony_dane.py, in ``_on_host`` so that every host loop gets
it): where they apply, STARTTLS is mandatory, the peer is checked after the
handshake, and the host is never tried again without DANE (docs/dane.md).

Timeouts are RFC 5321 4.5.3.2's (``limits.SMTP_*_TIMEOUT``); the
environment variable ``MAILRIDER_MTA_TIMEOUT`` (seconds) caps them all,
for tests and benchmarks only.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import ssl
import time
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from mailrider import limits, log, srs
from mailrider.config.model import Action, Config, Where
from mailrider.config.tls import protocol_range
from mailrider.crypto import delegate
from mailrider.errors import ConfigError, TempFail, plain_reason
from mailrider.filter.programs import relay_filters
from mailrider.ipc import messages as m
from mailrider.proc import mta_limit
from mailrider.proc.pony_dane import Dane, DaneFailed, DanePolicy
from mailrider.proc.pony_dkim import DkimSigning
from mailrider.proc.pony_filter import FilterClient, Peer
from mailrider.proc.pony_mta_show import MtaShow, relay_text
from mailrider.proc.pony_mtasts import MtaSts, Plan
from mailrider.proc.pony_tls import SignFn, ca_context, load_pki, tls_summary
from mailrider.queue.envelope import Envelope, msgid_of
from mailrider.smtp import client as sc
from mailrider.smtp.reply import Reply
from mailrider.table.values import RelayHost, parse_credentials, parse_relayhost

StartTLS = Literal["never", "opportunistic", "require"]
#: what makes two client TLS contexts different: (verify, ca, pki, ciphers, protocols)
TlsKey = tuple[bool, str | None, str | None, str | None, str | None]

_READ_MAX = 64 * 1024
_BODY_CHUNK = 256 * 1024
_QUIT_TIMEOUT = 10.0


def _withheld(p: Profile) -> str:
    """What a failed handshake adds to its reply when credentials were to follow."""
    return "; relay credentials not sent" if p.auth is not None else ""


class HostFailed(Exception):
    """This host cannot take the mail now: try the next one."""

    def __init__(self, text: str, *, tls: bool = False) -> None:
        super().__init__(text)
        self.text = text
        self.tls = tls


@dataclass(frozen=True, slots=True)
class Target:
    name: str  # host name (MX or relay host), for SNI, verification and logs
    ip: str
    port: int
    #: the name comes from authenticated DNS (MX and addresses): a TLSA base name
    dnssec: bool = False


@dataclass(frozen=True, slots=True)
class Profile:
    """How to talk to a host: what makes two connections interchangeable."""

    helo: str
    proto: str  # smtp, smtp+tls, smtps, smtp+notls, lmtp
    starttls: StartTLS
    verify: bool
    ca: str | None
    auth: tuple[str, str] | None = field(default=None, repr=False)
    src: str | None = None
    pki: str | None = None
    ciphers: str | None = None
    protocols: str | None = None
    helo_src: str | None = None  # addrname table: HELO name by local address
    #: the relay action whose ``filter`` option gets this session's reports
    filter: str | None = None
    #: ``relay dane`` on an MX route: each host's TLSA records are looked up
    want_dane: bool = False
    #: the host's TLSA records (proc/pony_dane.py); None: no DANE
    dane: DanePolicy | None = None

    def key(self, t: Target) -> tuple[Any, ...]:
        user = self.auth[0] if self.auth else None
        return (t.ip, t.port, t.name, self.helo, self.proto, self.starttls, self.verify,
                self.ca, user, self.src, self.pki, self.ciphers, self.protocols,
                self.helo_src, self.filter, self.want_dane, self.dane)

    @property
    def tls_key(self) -> TlsKey:
        return (self.verify, self.ca if self.verify else None, self.pki, self.ciphers,
                self.protocols)


def _timeout(base: float) -> float:
    cap = os.environ.get("MAILRIDER_MTA_TIMEOUT", "")
    try:
        return min(base, float(cap)) if cap else base
    except ValueError:
        return base


def _stage_timeout(state: sc.ClientState) -> float:
    t = {
        sc.ClientState.GREETING: limits.SMTP_GREETING_TIMEOUT,
        sc.ClientState.TRANSACTION: limits.SMTP_RCPT_TIMEOUT,
        sc.ClientState.BODY: limits.SMTP_DATA_BLOCK_TIMEOUT,
        sc.ClientState.DATA_END: limits.SMTP_DATA_END_TIMEOUT,
        sc.ClientState.QUIT: _QUIT_TIMEOUT,
    }.get(state, limits.SMTP_MAIL_TIMEOUT)
    return _timeout(t)


@dataclass(frozen=True, slots=True)
class _Route:
    """A batch's route, resolved once for all its messages."""

    url: RelayHost | None
    targets: list[Target]
    lim: mta_limit.Limits
    domain: str
    route: str  # action:host, the key of its connection slots
    #: the MTA-STS policy of an MX route with ``mta-sts`` (docs/mta-sts.md)
    plan: Plan | None = None


class Conn:
    """One connection to one host, and its client machine."""

    def __init__(self, mta: Mta, target: Target, profile: Profile,
                 reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 client: sc.SMTPClient) -> None:
        self.mta = mta
        self.target = target
        self.profile = profile
        self.reader = reader
        self.writer = writer
        self.client = client
        self.mails = 0
        self.idle_timer: asyncio.TimerHandle | None = None
        self.extensions: dict[str, str] = {}
        self.shown_as = ""  # the relay text of show relays, once connected
        self.id = os.urandom(8).hex()  # leads this connection's log lines
        #: mta limit: the slots this connection holds, and its session limits
        self.limit_keys: list[tuple[mta_limit.Key, int, int]] = []
        self.limits = mta_limit.Limits()
        #: transactions that failed on this session; when the last one ended
        self.failures = 0
        self.last_end = 0.0
        #: the name given in EHLO (helo-src may choose it per connection)
        self.helo = profile.helo
        #: smtp-out reports to the relay action's filters (docs/filter-protocol.md §8)
        self.filter: FilterClient | None = None

    def report(self, event: str, params: list[str]) -> None:
        if self.filter is not None:
            self.filter.report(event, params)

    def report_tls(self) -> None:
        info = tls_summary(self.writer.get_extra_info("ssl_object"))
        if info is not None:
            self.report("link-tls", [info[0]])

    @property
    def relay(self) -> str:
        return f"{self.target.name} [{self.target.ip}]"

    async def flush(self) -> None:
        out = self.client.data_to_send()
        if out:
            self.writer.write(out)
            await self.writer.drain()

    async def event(self) -> sc.ClientEvent:
        """The next client event, reading as needed (raises on timeout/IO error)."""
        while True:
            ev = self.client.next_event()
            if ev is not None:
                return ev
            await self.flush()
            # asyncio.timeout, not wait_for: no task per read (3.11)
            async with asyncio.timeout(_stage_timeout(self.client.state)):
                data = await self.reader.read(_READ_MAX)
            self.client.receive(data)

    def close(self) -> None:
        if self.idle_timer is not None:
            self.idle_timer.cancel()
            self.idle_timer = None
        if not self.writer.is_closing():
            self.writer.close()
        if self.shown_as:
            self.mta.show.disconnected(self.shown_as, self.profile.src, self.target.ip,
                                       self.target.name)
            self.shown_as = ""
        if self.filter is not None:  # lka reports link-disconnect and forgets it
            self.filter.end()
            self.filter = None
        if self.limit_keys:
            keys, self.limit_keys = self.limit_keys, []
            self.mta.conn_limiter.release(keys)

    async def quit(self) -> None:
        try:
            self.client.quit()
            while not self.client.closed:
                ev = await self.event()
                if isinstance(ev, sc.Closed):
                    break
            await self.flush()
        except (OSError, TimeoutError, sc.LocalProtocolError):
            pass
        self.close()
        log.event("mta", "disconnected", session=self.id, reason="quit", messages=self.mails)


class MtaHost(Protocol):
    """What the mta needs of the process it runs in (pony.Pony)."""

    config: Config
    #: our name in HELO, when the action names none
    hostname: str
    #: set when the process stops: connections are not kept for reuse
    stopping: asyncio.Event

    @property
    def peers(self) -> Mapping[str, Peer]: ...

    def count(self, key: str, n: int = 1) -> None: ...

    def sign(self, cert_hash: str, op: str, data: bytes, padding: int) -> bytes:
        """A signature with a key that klondike holds (pony_tls.SignFn)."""
        ...

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]: ...


class Mta:
    """Outgoing deliveries of one pony."""

    def __init__(self, pony: MtaHost) -> None:
        self.pony = pony
        self.config = pony.config
        self.slots = asyncio.Semaphore(limits.MTA_MAX_CONNECTIONS)
        self.route_slots: dict[str, asyncio.Semaphore] = {}
        self.idle: dict[tuple[Any, ...], list[Conn]] = {}
        #: mta limit (proc/mta_limit.py): open connections per host, route...
        self.conn_limiter = mta_limit.ConnLimiter()
        #: client certificates sign through pony's klondike channel
        self.sign: SignFn = pony.sign
        # built before the privilege drop: CA files, certificates and the
        # system store may be unreadable after it
        self.contexts: dict[TlsKey, ssl.SSLContext] = {}
        #: pki name -> a server context with the same delegated key, for the
        #: self-test (run at first use: klondike is not connected yet here)
        self.pki_test: dict[str, ssl.SSLContext] = {}
        self.pki_tested: set[str] = set()
        self.in_process = False
        #: DKIM signatures of relayed mail, through pony's klondike channel
        self.dkim = DkimSigning(self.config, self._dkim_call, self.pony.count)
        self.show = MtaShow()
        #: MTA-STS policies (docs/mta-sts.md); their TLS contexts are built here too
        self.sts = MtaSts(self.config, self._lka_ask)
        self.contexts[(False, None, None, None, None)] = self._build(
            (False, None, None, None, None), Where())
        for action in self.config.actions.values():
            if action.method != "relay":
                continue
            for verify in (True, False):
                key = self._action_tls(action, verify)
                if key not in self.contexts:
                    self.contexts[key] = self._build(key, action.where)
        #: DANE (docs/dane.md): TLSA records through lka, the check after STARTTLS
        self.dane = Dane(lambda msg: self.pony.peers["lka"].ask(msg), self.pony.count)

    async def _lka_ask(self, msg: Any) -> Any:
        return await self.pony.peers["lka"].ask(msg)

    async def _dkim_call(self, msg: m.DkimSign) -> tuple[Any, list[int]]:
        chan = self.pony.peers.get("klondike")
        if chan is None:
            raise TempFail("no channel to klondike")
        return await chan.call(msg)

    def control(self, msg: m.Control) -> m.ControlReply | None:
        """``show hosts|relays|routes|hoststats`` and ``resume route``; None: not ours."""
        if msg.command in ("show-hosts", "show-relays", "show-routes", "show-hoststats"):
            return m.ControlReply(lines=self.show.lines(msg.command[5:]))
        if msg.command == "resume-route":
            arg = msg.args[0] if msg.args else "0"
            if not arg.isdigit() or len(arg) > 19:
                return m.ControlReply(ok=False, lines=["command failed: invalid route id"])
            n = self.show.resume(int(arg))
            return m.ControlReply(ok=n > 0 or arg == "0",
                                  lines=["command succeeded" if n or arg == "0"
                                         else "command failed: no such route"])
        return None

    # -- TLS contexts --------------------------------------------------------------

    def _action_tls(self, action: Action, verify: bool) -> TlsKey:
        relay = action.relay
        ca, pki = relay.get("ca"), relay.get("pki")
        ciphers = relay.get("ciphers") or self.config.smtp_ciphers
        protocols = relay.get("protocols")
        return (verify, ca if isinstance(ca, str) and verify else None,
                pki if isinstance(pki, str) else None,
                ciphers if isinstance(ciphers, str) else None,
                protocols if isinstance(protocols, str) else None)

    def _build(self, key: TlsKey, where: Where) -> ssl.SSLContext:
        """One client context (docs/config.md §8: ``ca``, ``pki``, ``ciphers``, ``protocols``)."""
        verify, ca_name, pki_name, ciphers, protocols = key
        ctx = ca_context(self.config, ca_name)
        if not verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        try:
            if protocols is not None:
                ctx.minimum_version, ctx.maximum_version = protocol_range(protocols)
            if ciphers:
                ctx.set_ciphers(ciphers)
        except (ValueError, ssl.SSLError) as exc:
            raise ConfigError(f"relay TLS: {exc}", where.file, where.line) from None
        if pki_name is not None:
            self._client_cert(ctx, pki_name, where)
        return ctx

    def _client_cert(self, ctx: ssl.SSLContext, name: str, where: Where) -> None:
        """``relay pki``: the certificate, with its key left in klondike (docs/processes.md §5);
        in pony only with ``smtp key-in-process`` (or MAILRIDER_KEY_IN_PROCESS=force,
        benchmarks and tests only), as for listeners (pony_tls)."""
        pki = self.config.pkis.get(name)
        if pki is None or pki.cert is None or pki.key is None:
            raise ConfigError(f"pki {name}: certificate and key are both required",
                              where.file, where.line)
        if load_pki(ctx, name, pki, self.sign, self.config, "mta"):
            self.in_process = True
        elif name not in self.pki_test:
            try:
                self.pki_test[name] = delegate.delegated_context(pki.cert, self.sign)
            except (delegate.DelegationUnavailable, OSError, ssl.SSLError) as exc:
                raise ConfigError(f"pki {name}: {exc}", pki.where.file,
                                  pki.where.line) from None

    def _context(self, p: Profile) -> ssl.SSLContext:
        if p.pki is not None and p.pki in self.pki_test and p.pki not in self.pki_tested:
            self._self_test(p.pki)
        ctx = self.contexts.get(p.tls_key)
        if ctx is None:  # not built at start (cannot happen for a configured action)
            ctx = self.contexts[p.tls_key] = self._build(p.tls_key, Where())
        return ctx

    def _self_test(self, name: str) -> None:
        """The self-test of docs/processes.md §5 for a client certificate, at its
        first use: a TLS 1.2 and 1.3 handshake signed through klondike with the same key."""
        try:
            delegate.self_test(self.pki_test[name])
        except delegate.DelegationUnavailable as exc:
            log.error("mta", "tls-self-test-failed", pki=name, error=str(exc))
            raise HostFailed(f"421 4.7.0 Client certificate {name} unusable: "
                             "key delegation self-test failed") from None
        self.pki_tested.add(name)
        log.event("mta", "tls-client-ready", pki=name, delegated="yes")

    # -- entry point -------------------------------------------------------------

    async def deliver(self, msg: m.DeliverBatch, fds: list[int]) -> m.DeliveryResults:
        """A batch: the envelopes of up to ``MTA_BATCH_MESSAGES`` messages of one
        route, ``fds[i]`` the i-th message's file (messages in the order their
        first envelope comes). The route is resolved once; the messages go out
        over at most ``MTA_BATCH_LANES`` sessions side by side, each lane sending
        its messages one after the other on the connection it keeps
        (docs/performance.md, "Relaying")."""
        envs = list(msg.envelopes)
        if not envs:
            return m.DeliveryResults(results=[])
        messages: dict[str, list[Envelope]] = {}
        for e in envs:
            messages.setdefault(e.msgid, []).append(e)
        route = envs[0].route
        action = self.config.actions.get(envs[0].dispatcher)
        if action is None or action.method != "relay" or not fds:
            return _all(envs, "tempfail", "451 4.3.0 No relay action for this envelope")
        if len(messages) != len(fds) or len(fds) > limits.MTA_BATCH_MESSAGES or \
                not route or any(e.route != route for e in envs):
            # the queue never sends this: one route, one descriptor per message
            log.warning("mta", "bad-batch", messages=len(messages), fds=len(fds))
            return _all(envs, "tempfail", "451 4.3.0 Bad delivery batch")
        results: list[m.DeliveryResult] = []
        rt: _Route | tuple[str, str]
        try:
            rt = await self._route(action, envs[0])
        except TempFail as exc:
            rt = "tempfail", exc.reply()
        except Exception as exc:  # never leave the queue without an answer
            log.error("mta", "internal-error",
                      error=f"{type(exc).__name__}: {plain_reason(exc)}")
            rt = "tempfail", "451 4.3.0 Internal error"
        domain = envs[0].dest.rpartition("@")[2].lower()
        if not isinstance(rt, _Route):
            status, text = rt
            self.show.result(domain, text)
            return _all(envs, status, text)
        todo = list(zip(messages.values(), fds, strict=True))
        todo.reverse()  # popped from the end: in the queue's order

        async def lane() -> None:
            while todo:
                menvs, fd = todo.pop()
                got = await self._message(action, rt, menvs, fd)
                failed = next((r.text for r in got if r.status != "ok"), None)
                self.show.result(domain, failed)
                results.extend(got)

        lanes = min(len(todo), limits.MTA_BATCH_LANES)
        if lanes == 1:
            await lane()
        else:
            await asyncio.gather(*(lane() for _ in range(lanes)))
        return m.DeliveryResults(results=results)

    async def _route(self, action: Action, first: Envelope
                     ) -> _Route | tuple[str, str]:
        """Where a route's mail goes: its relay URL, hosts and limits, or the
        (status, reply) every envelope gets; TempFail from a table."""
        domain = first.dest.rpartition("@")[2].lower()
        url: RelayHost | None = None
        text = await self._relay_url(action, domain)
        if text is not None:
            try:
                url = parse_relayhost(text)
            except ValueError as exc:
                return "tempfail", f"451 4.3.0 {exc}"
        targets, err = await self._targets(action, url, domain)
        if err is not None:
            return err
        plan: Plan | None = None
        if url is None and action.relay.get("mta_sts"):
            # MTA-STS (docs/mta-sts.md): only the policy's MX hosts, once per batch
            plan = await self.sts.plan(action, domain)
            names, refusal = plan.select(list(dict.fromkeys(t.name for t in targets)))
            if refusal is not None:
                return "tempfail", refusal
            targets = [t for t in targets if t.name in names]
        lim = mta_limit.limits_for(self.config, domain)
        if lim.family is not None:
            targets = [t for t in targets if (":" in t.ip) == (lim.family == 6)]
            if not targets:
                return "tempfail", f"451 4.4.4 No IPv{lim.family} address to relay to (mta limit)"
        # the relay text of show relays, for the sessions of this batch's tasks
        self.show.relay_of_task.set(relay_text(
            url.host if url else domain, url.port if url else None,
            url.proto if url else "smtp",
            str(action.relay["auth"]) if action.relay.get("auth") else None,
            f"{plan.mode}:{plan.id}" if plan is not None and plan.mode else None))
        return _Route(url, targets, lim, domain, f"{action.name}:{url.host if url else domain}",
                      plan)

    async def _message(self, action: Action, rt: _Route, envs: list[Envelope],
                       fd: int) -> list[m.DeliveryResult]:
        """One message of a batch: one transaction per ``MTA_MAX_RCPT`` recipients."""
        results: list[m.DeliveryResult] = []
        for i in range(0, len(envs), limits.MTA_MAX_RCPT):
            chunk = envs[i:i + limits.MTA_MAX_RCPT]
            try:
                results += await self._deliver(action, rt, chunk, fd)
            except TempFail as exc:
                results += _all(chunk, "tempfail", exc.reply()).results
            except Exception as exc:  # never leave the queue without an answer
                log.error("mta", "internal-error",
                          error=f"{type(exc).__name__}: {plain_reason(exc)}")
                results += _all(chunk, "tempfail", "451 4.3.0 Internal error").results
        return results

    async def _deliver(self, action: Action, rt: _Route, envs: list[Envelope],
                       fd: int) -> list[m.DeliveryResult]:
        profile = await self._profile(action, rt.url, envs[0])
        sem = self.route_slots.setdefault(rt.route,
                                          asyncio.Semaphore(limits.MTA_MAX_CONN_PER_ROUTE))
        # signed once per message, before any connection: klondike's refusal defers
        head = await self.dkim.field(action, fd, msgid_of(envs[0].evpid))
        last = "451 4.4.1 No host could be reached"
        where = (rt.lim, rt.domain, rt.route)
        plan = rt.plan
        async with self.slots, sem:
            for target in rt.targets[:limits.MTA_MAX_HOSTS]:
                if plan is None or not plan.strict(target.name):
                    try:
                        return await self._try_host(target, profile, envs, fd, where, head)
                    except HostFailed as exc:
                        last = exc.text
                    continue
                # MTA-STS: STARTTLS required, certificate verified for the MX name
                strict = dataclasses.replace(profile, starttls="require", verify=True)
                try:
                    return await self._try_host(target, strict, envs, fd, where, head)
                except HostFailed as exc:
                    last = exc.text
                    if not exc.tls:
                        continue
                    plan.failed(target.name, target.ip, exc.text)
                    if plan.mode != "testing":
                        continue
                try:  # testing: delivered as without a policy
                    return await self._try_host(target, profile, envs, fd, where, head)
                except HostFailed as exc:
                    last = exc.text
        res = _all(envs, "tempfail", last if last[:1] == "4" else _as_temp(last)).results
        return res

    async def _try_host(self, target: Target, profile: Profile, envs: list[Envelope], fd: int,
                        where: tuple[mta_limit.Limits, str, str], head: bytes
                        ) -> list[m.DeliveryResult]:
        """One host, again in clear when opportunistic TLS failed; HostFailed
        (logged, and shown by ``show hosts``) with the last error."""
        try:
            return await self._on_host(target, profile, envs, fd, where, head)
        except HostFailed as exc:
            self.show.failed(profile.src, target.ip, target.name, exc.text)
            log.event("mta", "host-failed", relay=f"{target.name} [{target.ip}]",
                      port=target.port, error=exc.text)
            if not (exc.tls and profile.starttls == "opportunistic"):
                raise
        # RFC 3207 4.1: opportunistic TLS may fall back to clear
        clear = dataclasses.replace(profile, starttls="never", verify=False, ca=None)
        return await self._on_host(target, clear, envs, fd, where, head)

    # -- routing and options ------------------------------------------------------

    async def _relay_url(self, action: Action, domain: str) -> str | None:
        """The relay URL: ``host URL``, one of ``host <t>`` (fetch/relayhost,
        round-robin) or ``domain <t>``'s value for the recipient domain
        (lookup/relayhost); None: the MX hosts of the domain.

        As OpenSMTPD (mta.c mta_on_smarthost): a table with no answer, a
        domain missing from the table included, is a temporary failure
        ("Cannot retrieve smarthost"), and so is a table fault (TempFail).
        """
        relay = action.relay
        host = relay.get("host")
        if isinstance(host, str):
            return host
        table = relay.get("host_table")
        key = ""
        if not isinstance(table, str):
            table = relay.get("domain")
            if not isinstance(table, str):
                return None
            key = domain
        reply = await self.pony.peers["lka"].ask(
            m.MtaLookup(service="relayhost", table=table, key=key))
        if not isinstance(reply, m.Ok) or not reply.text:
            log.warning("mta", "no-smarthost", table=table, domain=key or None)
            raise TempFail("Cannot retrieve smarthost", 451, "4.3.0")
        return reply.text

    async def _profile(self, action: Action, url: RelayHost | None,
                       env: Envelope) -> Profile:
        relay = action.relay
        helo = str(relay.get("helo") or env.smtpname or self.pony.hostname)
        proto = url.proto if url else "smtp"
        tls_flag = bool(relay.get("tls"))
        noverify = bool(relay.get("tls_noverify"))
        starttls: StartTLS = "opportunistic"
        verify = False
        if proto == "smtp+tls" or (proto == "smtp" and tls_flag):
            starttls, verify = "require", not noverify
        elif proto == "smtps":
            starttls, verify = "never", not noverify
        elif proto == "smtp+notls":
            starttls = "never"
        ca = relay.get("ca")
        auth: tuple[str, str] | None = None
        table = relay.get("auth")
        if isinstance(table, str):
            label = url.label if url and url.label else ""
            if not label:
                raise TempFail("relay auth needs a label in the relay URL", 451, "4.7.0")
            reply = await self.pony.peers["lka"].ask(
                m.MtaLookup(service="credentials", table=table, key=label))
            if not isinstance(reply, m.Ok):
                raise TempFail(f"no credentials for relay label {label}", 451, "4.7.0")
            try:
                auth = parse_credentials(label, reply.text)
            except ValueError:
                raise TempFail(f"bad credentials for relay label {label}", 451,
                               "4.7.0") from None
            if noverify or proto in ("smtp+notls", "lmtp"):
                why = "tls no-verify" if noverify else f"{proto} has no TLS"
                log.warning("mta", "auth-refused", action=action.name, reason=why)
                raise TempFail(f"Relay credentials are only sent to a verified TLS peer "
                               f"({why})", 451, "4.7.0")
            # never over opportunistic, unverified TLS, and never in clear
            starttls = "require" if starttls == "opportunistic" else starttls
            verify = True
        src: str | None = None
        srct = relay.get("src")
        if isinstance(srct, str):
            reply = await self.pony.peers["lka"].ask(
                m.MtaLookup(service="source", table=srct))
            if isinstance(reply, m.Ok) and reply.text:
                src = reply.text.strip("[]")
        _, _, pki, ciphers, protocols = self._action_tls(action, verify)
        helo_src = relay.get("helo_src")
        return Profile(helo, proto, starttls, verify, ca if isinstance(ca, str) else None,
                       auth, src, pki, ciphers, protocols,
                       helo_src if isinstance(helo_src, str) else None,
                       action.name if relay_filters(self.config, action) else None,
                       want_dane=bool(relay.get("dane")) and url is None)

    async def _helo_from_src(self, p: Profile, writer: asyncio.StreamWriter) -> str:
        """``helo-src <t>``: the HELO name of the connection's local address
        (lookup/addrname; IPv4 dotted, IPv6 in brackets). With ``src`` the
        address is that source and a name must exist (OpenSMTPD: "Failed to
        retrieve helo string", a temporary failure); without ``src`` (where
        OpenSMTPD never asks) a missing name means the default HELO."""
        assert p.helo_src is not None
        sockname = writer.get_extra_info("sockname")
        local = str(sockname[0]) if isinstance(sockname, tuple) and sockname else ""
        key = f"[{local}]" if ":" in local else local
        try:
            reply = await self.pony.peers["lka"].ask(
                m.MtaLookup(service="addrname", table=p.helo_src, key=key))
        except TempFail as exc:
            raise HostFailed(f"421 4.3.0 Failed to retrieve helo string: {exc.text}") from None
        if isinstance(reply, m.Ok) and reply.text:
            return reply.text.strip()
        if p.src is not None:
            raise HostFailed(f"421 4.3.0 Failed to retrieve helo string for {key}")
        return p.helo

    async def _targets(self, action: Action, url: RelayHost | None, domain: str
                       ) -> tuple[list[Target], tuple[str, str] | None]:
        relay = action.relay
        if url is not None:
            reply = await self.pony.peers["lka"].ask(m.MxResolve(host=url.host.strip("[]")))
            port = url.effective_port
        else:
            reply = await self.pony.peers["lka"].ask(m.MxResolve(domain=domain))
            port = self.config.mta_port
        if not isinstance(reply, m.MxResult):
            return [], ("tempfail", "451 4.3.0 Bad reply from lka")
        if reply.status != "ok":
            return [], (reply.status, reply.text)
        # the decoder checked each host: [preference, name, [ip, ...], authentic]
        hosts = [(int(h[0]), str(h[1]), [str(a) for a in h[2]]) for h in reply.hosts]
        secure = {str(h[1]) for h in reply.hosts if reply.authentic and h[3] is True}
        if relay.get("backup") and url is None:
            me = str(relay.get("backup_mx") or self.pony.hostname).lower().rstrip(".")
            mine = [p for p, n, _ in hosts if n.lower().rstrip(".") == me]
            if mine:
                hosts = [h for h in hosts if h[0] < min(mine)]
            if not hosts:
                return [], ("tempfail", "451 4.4.4 We are the best MX: no host to relay to")
        targets = [Target(name, ip, port, name in secure) for _, name, ips in hosts for ip in ips]
        return targets, None

    # -- one host -----------------------------------------------------------------

    async def _dane_profile(self, profile: Profile, target: Target) -> Profile:
        """``relay dane``: the profile for this MX host (docs/dane.md §3). DANE
        takes the place of the action's certificate checks and of any other
        policy's (MTA-STS): TLSA records, not a CA, authenticate the host
        (RFC 7672 §2.2, RFC 8461 §2). HostFailed when the lookup failed."""
        try:
            policy = await self.dane.policy(target.name, target.dnssec)
        except DaneFailed as exc:
            raise HostFailed(exc.text) from None
        if policy is None:
            return profile
        return dataclasses.replace(profile, starttls="require", verify=False, ca=None,
                                   dane=policy)

    async def _on_host(self, target: Target, profile: Profile, envs: list[Envelope],
                       fd: int, where: tuple[mta_limit.Limits, str, str],
                       head: bytes = b"") -> list[m.DeliveryResult]:
        if profile.want_dane and profile.dane is None:
            profile = await self._dane_profile(profile, target)
            if profile.dane is not None:
                try:
                    return await self._on_host(target, profile, envs, fd, where, head)
                except HostFailed as exc:
                    # a host DANE applies to is never tried again without it (in
                    # clear, or under another policy): the failure is not a TLS one
                    raise HostFailed(exc.text) from None
        conn = self._take_idle(profile.key(target))
        if conn is not None:
            wait = conn.last_end + (conn.limits.session_transaction_delay or 0) - \
                asyncio.get_running_loop().time()
            if wait > 0:  # mta limit session-transaction-delay
                await asyncio.sleep(wait)
            try:
                return await self._transaction(conn, envs, fd, head)
            except HostFailed:
                pass  # the idle connection went stale: a fresh one
        lim, domain, route = where
        keys = mta_limit.keys_for(lim, domain=domain, relay=route, host=target.ip,
                                  source=profile.src or "")
        limiter = self.conn_limiter
        while keys:
            blocked, wait = limiter.check(keys)
            if blocked is None and wait <= 0:
                limiter.take(keys)
                break
            if blocked is None:
                await asyncio.sleep(wait)
                continue
            conn = self._take_idle(profile.key(target))
            if conn is not None:  # a connection freed up for our host: reuse it
                try:
                    return await self._transaction(conn, envs, fd, head)
                except HostFailed:
                    continue
            self._close_idle_holding(blocked)
            await limiter.changed()
        try:
            conn = await self._connect(target, profile)
        except BaseException:
            self.conn_limiter.release(keys)
            raise
        conn.limit_keys, conn.limits = keys, lim
        return await self._transaction(conn, envs, fd, head)

    def _close_idle_holding(self, key: mta_limit.Key) -> None:
        """mta limit: make room by quitting one idle connection that holds
        ``key`` (its slot is freed when it closes, which wakes the waiter)."""
        for pool in self.idle.values():
            for conn in pool:
                if any(k == key for k, _, _ in conn.limit_keys):
                    pool.remove(conn)
                    if conn.idle_timer is not None:
                        conn.idle_timer.cancel()
                        conn.idle_timer = None
                    self._spawn(conn.quit())
                    return

    def _take_idle(self, key: tuple[Any, ...]) -> Conn | None:
        pool = self.idle.get(key)
        while pool:
            conn = pool.pop()
            if conn.idle_timer is not None:
                conn.idle_timer.cancel()
                conn.idle_timer = None
            if conn.reader.at_eof() or conn.writer.is_closing() or \
                    conn.client.state is not sc.ClientState.READY:
                conn.close()
                continue
            return conn
        return None

    def _park(self, conn: Conn) -> None:
        mail_max = conn.limits.session_mail_max or limits.MTA_SESSION_MAIL_MAX
        conn.last_end = asyncio.get_running_loop().time()
        max_failures = conn.limits.max_failures_per_session
        if conn.client.state is not sc.ClientState.READY or \
                conn.mails >= mail_max or self.pony.stopping.is_set() or \
                (max_failures is not None and conn.failures >= max_failures):
            self._spawn(conn.quit())
            return
        key = conn.profile.key(conn.target)
        pool = self.idle.setdefault(key, [])
        pool.append(conn)

        def expire() -> None:
            if conn in pool:
                pool.remove(conn)
                self._spawn(conn.quit())

        keepalive = conn.limits.session_keepalive
        conn.idle_timer = asyncio.get_running_loop().call_later(
            limits.MTA_SESSION_KEEPALIVE if keepalive is None else keepalive, expire)
        if conn.limit_keys:
            self.conn_limiter.notify()  # a session waiting on a limit may take it

    def _spawn(self, coro: Any) -> None:
        self.pony.spawn(coro)

    def close_idle(self) -> None:
        for pool in self.idle.values():
            for conn in pool:
                conn.close()
        self.idle.clear()

    async def _connect(self, target: Target, p: Profile) -> Conn:
        implicit = p.proto == "smtps"
        sid = os.urandom(8).hex()
        scheme = {"smtp": "smtp+tls" if p.starttls == "require" else "smtp"}.get(p.proto, p.proto)
        log.event("mta", "connecting", session=sid,
                  address=f"{scheme}://{target.ip}:{target.port}", host=target.name)
        ctx = self._context(p) if implicit else None
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(
                target.ip, target.port, ssl=ctx,
                server_hostname=target.name if ctx is not None else None,
                local_addr=(p.src, 0) if p.src else None,
                limit=limits.SMTP_REPLY_LINE_MAX * 4), _timeout(limits.MTA_CONNECT_TIMEOUT))
        except ssl.SSLError as exc:
            raise HostFailed(f"421 4.7.0 TLS handshake failed: {exc.reason or exc}"
                             f"{_withheld(p)}") from None
        except (OSError, TimeoutError) as exc:
            raise HostFailed(f"421 4.4.1 Connection to {target.name} port {target.port} failed: "
                             f"{plain_reason(exc)}") from None
        self.pony.count("mta.session")
        helo = p.helo
        try:
            if p.helo_src is not None:
                helo = await self._helo_from_src(p, writer)
            client = sc.SMTPClient(sc.ClientConfig(
                helo_name=helo, lmtp=p.proto == "lmtp", want_starttls=p.starttls,
                auth=p.auth, auth_needs_verified_tls=True, implicit_tls=implicit,
                implicit_tls_verified=ctx is not None and ctx.verify_mode == ssl.CERT_REQUIRED))
        except (HostFailed, ValueError) as exc:
            writer.close()
            if isinstance(exc, HostFailed):
                raise
            raise HostFailed(f"421 4.3.0 Bad HELO name {helo!r} from helo-src") from None
        conn = Conn(self, target, p, reader, writer, client)
        conn.id = sid
        conn.helo = helo
        conn.shown_as = self.show.connected(self.show.relay_of_task.get(), p.src, target.ip,
                                            target.name)
        log.event("mta", "connected", session=sid, relay=conn.relay, port=target.port,
                  tls="yes" if implicit else None)
        if p.filter is not None:
            self._filter_begin(conn, p.filter)
        try:
            await self._setup(conn)
        except HostFailed:
            conn.close()
            raise
        return conn

    def _filter_begin(self, conn: Conn, action: str) -> None:
        """The session's filter client, and link-connect (lka reports it)."""
        def noop() -> None:
            pass

        def addr(info: object) -> str:
            if not isinstance(info, tuple) or len(info) < 2:
                return "local"
            return f"[{info[0]}]:{info[1]}" if ":" in str(info[0]) else f"{info[0]}:{info[1]}"

        conn.filter = FilterClient(os.urandom(8).hex(), self.pony.peers["lka"], self.pony.spawn,
                                   write=lambda data: None, pause=noop, resume=noop,
                                   subsystem="mta")
        conn.filter.begin_out(action, conn.target.name,
                              addr(conn.writer.get_extra_info("sockname")),
                              addr(conn.writer.get_extra_info("peername")))
        if conn.profile.proto == "smtps":
            conn.report_tls()

    async def _setup(self, conn: Conn) -> None:
        """Greeting, EHLO, STARTTLS, AUTH: until Ready, or HostFailed."""
        while True:
            try:
                ev = await conn.event()
            except TimeoutError:
                raise HostFailed(f"421 4.4.2 Timeout from {conn.relay}") from None
            except OSError as exc:
                raise HostFailed(f"421 4.4.1 Connection to {conn.relay} lost: "
                                 f"{exc.strerror or exc}") from None
            if isinstance(ev, sc.Greeting):
                conn.report("link-greeting", [ev.text.split(" ", 1)[0]])
                continue
            if isinstance(ev, sc.AuthResult):
                user = conn.profile.auth[0] if conn.profile.auth else ""
                conn.report("link-auth", ["pass" if ev.ok else "fail", user])
                continue
            if isinstance(ev, sc.Ready):
                conn.extensions = ev.extensions
                conn.report("link-identify", [conn.client.hello_verb, conn.helo])
                return
            if isinstance(ev, sc.StartTLSReady):
                await conn.flush()
                ctx = self._context(conn.profile)
                try:
                    await asyncio.wait_for(conn.writer.start_tls(
                        ctx, server_hostname=conn.target.name),
                        _timeout(limits.TLS_HANDSHAKE_TIMEOUT))
                except (ssl.SSLError, OSError, TimeoutError) as exc:
                    reason = getattr(exc, "reason", None) or str(exc) or "timeout"
                    raise HostFailed(f"421 4.7.0 TLS handshake with {conn.relay} failed: "
                                     f"{reason}{_withheld(conn.profile)}", tls=True) from None
                if conn.profile.dane is not None:
                    reason = self.dane.verify(conn.profile.dane,
                                              conn.writer.get_extra_info("ssl_object"),
                                              conn.id, conn.relay)
                    if reason:
                        raise HostFailed(f"421 4.7.5 DANE authentication of {conn.relay} "
                                         f"failed: {reason}")
                conn.client.tls_established(verified=ctx.verify_mode == ssl.CERT_REQUIRED)
                conn.report_tls()
                continue
            if isinstance(ev, sc.Failed):
                # STARTTLS required but not offered or refused: a TLS failure
                raise HostFailed(_reply_text(ev.reply), tls=ev.stage == "starttls")
            if isinstance(ev, sc.Closed):
                raise HostFailed(f"421 4.4.2 Connection closed by {conn.relay}")

    async def _transaction(self, conn: Conn, envs: list[Envelope],
                           fd: int, head: bytes = b"") -> list[m.DeliveryResult]:
        """One transaction; ``head`` (a DKIM-Signature field, CRLF) goes before the file."""
        first = envs[0]
        relay = self._relay_of(first)
        sender = str(relay.get("mail_from") or first.sender)
        if relay.get("srs") and self.config.srs_key:
            # docs/config.md §9: forwarded mail leaves with our SRS address
            sender = srs.forward_sender(sender, first.rcpt, first.dest, self.config.srs_key,
                                        time.time())
        rcpts: list[tuple[str, sc.RcptDSN]] = []
        by_rcpt: dict[str, list[Envelope]] = {}
        for e in envs:
            dest = e.dest
            if dest not in by_rcpt:
                notify = frozenset(x for x in ",".join(e.dsn_notify).upper().split(",") if x)
                rcpts.append((dest, sc.RcptDSN(notify, e.dsn_orcpt or None)))
            by_rcpt.setdefault(dest, []).append(e)
        size = os.fstat(fd).st_size
        ret = first.dsn_ret.upper()
        smtputf8 = not (sender.isascii() and all(r.isascii() for r, _ in rcpts))
        # the first chunk is read once: checked for 8-bit bytes here, sent below
        lead = os.pread(fd, min(_BODY_CHUNK, size), 0) if size else b""
        body_8bit = not (lead.isascii() and _is_ascii(fd, size, len(lead)))
        done: dict[str, tuple[str, str]] = {}  # dest -> (status, text)
        started = False
        msgid = msgid_of(first.evpid)
        tx = _TxReports(conn, msgid)
        try:
            conn.client.start_transaction(
                sender, rcpts, size + len(head), body_8bit, smtputf8,
                dsn_ret="FULL" if ret == "FULL" else ("HDRS" if ret == "HDRS" else None),
                envid=first.dsn_envid or None)
        except sc.LocalProtocolError as exc:
            self._park(conn)
            return _all(envs, "permfail", f"554 5.6.0 Cannot send: {exc}").results
        dsn_relayed = False
        try:
            while True:
                ev = await conn.event()
                if isinstance(ev, sc.MailResult):
                    started = True
                    tx.mail(sender)
                elif isinstance(ev, sc.RcptResult):
                    if ev.reply.code >= 400:
                        done[ev.rcpt] = (_status(ev.reply), _reply_text(ev.reply))
                    tx.rcpt(ev.rcpt, _status(ev.reply), by_rcpt.get(ev.rcpt, []))
                elif isinstance(ev, sc.DataReady):
                    tx.data("ok")
                    # BDAT (RFC 3030) when the peer offers CHUNKING: smtp/client.py
                    log.event("mta", "message-out", session=conn.id, relay=conn.relay,
                              msgid=msgid, size=size,
                              method="bdat" if conn.client.chunking else "data")
                    if head:
                        conn.client.send_body(head)
                    offset = 0
                    chunk = lead
                    while offset < size:
                        if offset:
                            chunk = os.pread(fd, min(_BODY_CHUNK, size - offset), offset)
                        if not chunk:
                            break
                        offset += len(chunk)
                        conn.client.send_body(chunk)
                        if offset < size:  # the last chunk leaves with the end
                            await conn.flush()
                    # one write for the (last) body chunk and its end: a
                    # message that fits a chunk costs one send, not two
                    conn.client.end_body()
                    await conn.flush()
                elif isinstance(ev, sc.TransactionResult):
                    dsn_relayed = ev.dsn_relayed
                    st, text = _status(ev.reply), _reply_text(ev.reply)
                    if ev.rcpt is not None:  # LMTP: one reply per recipient
                        done[ev.rcpt] = (st, text)
                        if conn.client.state is not sc.ClientState.READY:
                            continue
                    for dest, _ in rcpts:
                        done.setdefault(dest, (st, text))
                    tx.end(size if any(x[0] == "ok" for x in done.values()) else None)
                    break
                elif isinstance(ev, sc.Failed):
                    tx.failed(ev.stage, "tempfail" if ev.temporary or ev.fatal else "permfail")
                    tx.end(None)
                    if ev.fatal and not started:
                        raise HostFailed(_reply_text(ev.reply))
                    text = _reply_text(ev.reply)
                    st = "tempfail" if ev.temporary else "permfail"
                    if ev.fatal:
                        st, text = "tempfail", _as_temp(text)
                    for dest, _ in rcpts:
                        done.setdefault(dest, (st, text))
                    if ev.fatal:
                        conn.close()
                        return self._results(conn, by_rcpt, done, False)
                    break
                elif isinstance(ev, sc.Closed):
                    raise HostFailed(f"421 4.4.2 Connection closed by {conn.relay}")
        except HostFailed:
            tx.end(None)
            conn.close()
            raise
        except (OSError, TimeoutError) as exc:
            tx.end(None)
            conn.close()
            if not started:
                raise HostFailed(f"421 4.4.2 {conn.relay}: "
                                 f"{'timeout' if isinstance(exc, TimeoutError) else exc}"
                                 ) from None
            text = ("421 4.4.2 Timeout" if isinstance(exc, TimeoutError)
                    else f"421 4.4.2 Connection lost: {exc}") + f" ({conn.relay})"
            for dest, _ in rcpts:
                done.setdefault(dest, ("tempfail", text))
            return self._results(conn, by_rcpt, done, False)
        conn.mails += 1
        if any(st != "ok" for st, _ in done.values()):
            conn.failures += 1
        self._park(conn)
        return self._results(conn, by_rcpt, done, dsn_relayed)

    def _relay_of(self, env: Envelope) -> dict[str, object]:
        action = self.config.actions.get(env.dispatcher)
        return action.relay if action is not None else {}

    @staticmethod
    def _results(conn: Conn, by_rcpt: dict[str, list[Envelope]],
                 done: dict[str, tuple[str, str]], dsn_relayed: bool
                 ) -> list[m.DeliveryResult]:
        out: list[m.DeliveryResult] = []
        for dest, envs in by_rcpt.items():
            st, text = done.get(dest, ("tempfail", "451 4.4.2 No reply for this recipient"))
            for e in envs:
                out.append(m.DeliveryResult(evpid=e.evpid, status=st, text=text,
                                            relay=conn.relay, session=conn.id,
                                            dsn_relayed=dsn_relayed and st == "ok"))
        return out


class _TxReports:
    """The tx-* reports of one outgoing transaction (smtp-out), as OpenSMTPD
    sends them: tx-begin and tx-mail once MAIL is accepted, tx-envelope and
    tx-rcpt per recipient, tx-data, then tx-commit (or tx-rollback) and
    tx-reset. Nothing when the session has no filter."""

    def __init__(self, conn: Conn, msgid: str) -> None:
        self.conn, self.msgid = conn, msgid
        self.begun = False

    def mail(self, sender: str) -> None:
        self.begun = True
        self.conn.report("tx-begin", [self.msgid])
        self.conn.report("tx-mail", [self.msgid, "ok", sender])

    def rcpt(self, rcpt: str, status: str, envs: list[Envelope]) -> None:
        for e in envs:
            self.conn.report("tx-envelope", [self.msgid, e.evpid])
        self.conn.report("tx-rcpt", [self.msgid, status, rcpt])

    def data(self, status: str) -> None:
        self.conn.report("tx-data", [self.msgid, status])

    def failed(self, stage: sc.Stage, status: str) -> None:
        if stage == "data":
            self.data(status)

    def end(self, size: int | None) -> None:
        """The transaction is over: committed (``size`` bytes) or not (None)."""
        if not self.begun:
            return
        self.begun = False
        if size is not None:
            self.conn.report("tx-commit", [self.msgid, str(size)])
        else:
            self.conn.report("tx-rollback", [self.msgid])
        self.conn.report("tx-reset", [self.msgid])


def _all(envs: list[Envelope], status: str, text: str) -> m.DeliveryResults:
    return m.DeliveryResults(results=[
        m.DeliveryResult(evpid=e.evpid, status=status, text=text) for e in envs])


def _status(reply: Reply) -> str:
    if reply.code < 400:
        return "ok"
    return "tempfail" if reply.code < 500 else "permfail"


def _reply_text(reply: Reply) -> str:
    text = " ".join((reply.text, *reply.lines)).strip()
    if reply.status:
        return f"{reply.code} {reply.status} {text}"
    return f"{reply.code} {text}"


def _as_temp(text: str) -> str:
    """A session-level error as a temporary one (the host, not the mail, failed)."""
    if text[:1] == "5":
        return "451 4.0.0 " + text
    return text


def _is_ascii(fd: int, size: int, offset: int = 0) -> bool:
    """Are the file's bytes from ``offset`` to ``size`` all ASCII?"""
    while offset < size:
        chunk = os.pread(fd, min(_BODY_CHUNK, size - offset), offset)
        if not chunk:
            break
        if not chunk.isascii():
            return False
        offset += len(chunk)
    return True
