"""Recipient expansion, done by lka at RCPT time (docs/table-protocol.md §8, docs/config.md §8).

:func:`expand` turns one accepted recipient and the action its rule chose
into the list of deliveries the queue will store. The rules:

- an **address** goes through the action's ``virtual`` table when it has
  one (keys ``user+tag@domain``, ``user@domain``, ``user+tag``, ``user``,
  ``@domain``, ``@``; the tag forms only when there is a tag); no entry there
  is "550 5.1.1 Invalid recipient". Without ``virtual`` the lower-cased
  local part becomes a **user name**. A ``relay`` action delivers the
  address as it is;
- a **user name** goes through the ``alias`` table (``user+tag``, then
  ``user``); with no alias entry it must exist in the userbase (the
  ``userbase`` table's ``userinfo``, or the system users); then its
  ``~/.forward`` (when a ``forward`` reader is given) may redirect it; else
  it is delivered. A name met again inside its own expansion, or written
  ``\\name``, is delivered without being expanded again (aliases(5));
- alias targets: user names and addresses are expanded again; ``/path`` and
  ``|command`` are deliveries by the methods ``file`` and ``pipe``;
  ``:include:/path`` reads more targets from a file (not from a .forward);
  ``error:NXX text`` fails the recipient with that reply;
- an address found inside an expansion is routed with ``route`` (lka's rule
  matching: it may pick another action, e.g. a relay) when given; without
  it, a virtual action expands it through its own table, and an alias action
  keeps it only when its domain is in ``<localnames>``.

Deliveries carry ``dest`` = the nearest address above them in the expansion
(the recipient itself, or an address target), as OpenSMTPD's envelope
``dest`` (so ``%{dest.user}`` is the address, ``%{user.username}`` the
user), and are de-duplicated on (dest, method, arg, local user).
Deliveries of a ``user`` action run as that system user; ``/path`` and
``|command`` targets of alias tables run as the action's user, else the
daemon's unprivileged user (the current user when not root); those of a
``.forward`` run as its owner.

Failures are exceptions: a table that cannot answer raises TempFail
(propagated), an unknown user PermFail 550 5.1.1, an expansion deeper than
:data:`EXPAND_DEPTH` PermFail 550 5.4.6, more than
:data:`EXPAND_MAX_DELIVERIES` deliveries or an expansion to nothing PermFail
550 5.2.4.
"""

from __future__ import annotations

import os
import pwd
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from mailrider import log, paths
from mailrider.config.model import Action, Config
from mailrider.errors import PermFail, TempFail
from mailrider.table.base import Table
from mailrider.table.getpwnam import GetpwnamTable
from mailrider.table.registry import TableSet
from mailrider.table.values import AliasTarget, UserInfo, parse_alias_targets, parse_userinfo

#: levels of alias/forward/virtual nesting (OpenSMTPD: EXPAND_DEPTH 10)
EXPAND_DEPTH = 10
#: deliveries one recipient may expand to
EXPAND_MAX_DELIVERIES = 1000
#: nodes one expansion may visit (bounds work on diamond-shaped alias graphs)
EXPAND_MAX_NODES = 10000

ForwardReader = Callable[[str, str], Awaitable[str | None]]
Router = Callable[[str, str], Awaitable[Action | None]]


@dataclass(frozen=True, slots=True)
class Delivery:
    rcpt: str  # the original recipient as given (local@domain)
    dest: str  # the address this delivery came from: the recipient or an address target
    action: str  # action name
    method: str  # the action's method, "file"/"pipe" for alias targets, "relay" for relays
    user: str  # system user the delivery runs as ("" for relay)
    uid: int  # -1 for relay
    gid: int  # -1 for relay
    home: str
    arg: str | None  # file: the path; pipe: the command; else None (the action's arg applies)
    #: the recipient's user name in the userbase (%{user.username}); "" for alias file/pipe
    local_user: str = ""
    #: the sub-address tag stripped from the user name (EXTENSION)
    subaddress: str = ""


def alias_keys(user: str, delim: str) -> list[str]:
    """Keys tried in an alias table for a user name."""
    u = user.lower()
    if delim and delim in u:
        base = u.split(delim, 1)[0]
        return [u, base] if base else [u]
    return [u]


def virtual_keys(local: str, domain: str, delim: str) -> list[str]:
    """Keys tried in a virtual table for an address, in order."""
    u, d = local.lower(), domain.lower()
    users = alias_keys(u, delim)
    return [f"{x}@{d}" for x in users] + users + [f"@{d}", "@"]


def _invalid() -> PermFail:
    return PermFail("Invalid recipient", 550, "5.1.1")


@dataclass(frozen=True, slots=True)
class _Ctx:
    """Where a target list came from."""

    action: Action
    dest: str
    depth: int
    addrs: tuple[str, ...]  # addresses being expanded above (loop guard)
    users: tuple[str, ...]  # user names being expanded above (aliases(5) self-reference)
    owner: UserInfo | None = None  # the .forward owner, for file/pipe targets
    from_forward: bool = False


class _Expander:
    def __init__(
        self,
        config: Config,
        tables: TableSet,
        rcpt: str,
        forward: ForwardReader | None,
        route: Router | None,
    ) -> None:
        self.config = config
        self.tables = tables
        self.rcpt = rcpt
        self.forward = forward
        self.route = route
        self.delim = config.sub_addr_delim
        self.deliveries: list[Delivery] = []
        self._seen: set[tuple[str, str, str | None, str]] = set()
        self._nodes = 0

    # --- bookkeeping -----------------------------------------------------------

    def _step(self, depth: int) -> None:
        if depth > EXPAND_DEPTH:
            raise PermFail("Alias expansion too deep (loop?)", 550, "5.4.6")
        self._nodes += 1
        if self._nodes > EXPAND_MAX_NODES:
            raise PermFail("Mailing list expansion problem: too many aliases", 550, "5.2.4")

    def _add(self, d: Delivery) -> None:
        key = (d.dest.lower(), d.method, d.arg, d.local_user)
        if key in self._seen:
            return
        if len(self.deliveries) >= EXPAND_MAX_DELIVERIES:
            raise PermFail("Mailing list expansion problem: too many deliveries", 550, "5.2.4")
        self._seen.add(key)
        self.deliveries.append(d)

    def _table(self, name: str) -> Table:
        try:
            return self.tables.get(name)
        except KeyError:
            if name == "getpwnam":
                return GetpwnamTable()
            raise TempFail(f"table {name} is not defined") from None

    async def _targets(self, table_name: str, key_list: list[str]) -> list[AliasTarget] | None:
        table = self._table(table_name)
        for key in key_list:
            value = await table.lookup("alias", key)
            if value is None:
                continue
            try:
                return parse_alias_targets(value)
            except ValueError as exc:
                raise TempFail(f"table {table_name}: invalid alias for {key!r}: {exc}") from None
        return None

    async def _userinfo(self, action: Action, user: str) -> UserInfo | None:
        name = action.userbase or "getpwnam"
        value = await self._table(name).lookup("userinfo", user)
        if value is None:
            return None
        try:
            return parse_userinfo(user, value)
        except ValueError as exc:
            raise TempFail(f"table {name}: invalid userinfo for {user!r}: {exc}") from None

    @staticmethod
    def _system_user(name: str) -> UserInfo:
        try:
            pw = pwd.getpwnam(name)
        except KeyError:
            raise TempFail(f"delivery user '{name}' does not exist") from None
        return UserInfo(pw.pw_name, pw.pw_uid, pw.pw_gid, pw.pw_dir)

    def _daemon_user(self) -> UserInfo:
        # alias |command and /file targets with no action user: under root never
        # a daemon process's user (lka itself runs as one once dropped), which
        # could reach the spool or the daemon's memory, but the external user
        pw = pwd.getpwuid(os.getuid())
        if os.geteuid() == 0 or pw.pw_name in (paths.USER, paths.QUEUE_USER):
            return self._system_user(paths.EXT_USER)
        return UserInfo(pw.pw_name, pw.pw_uid, pw.pw_gid, pw.pw_dir)

    # --- nodes -----------------------------------------------------------------

    async def address(
        self, action: Action, local: str, domain: str, depth: int, addrs: tuple[str, ...]
    ) -> None:
        self._step(depth)
        dest = f"{local}@{domain}"
        low = dest.lower()
        if low in addrs:
            return  # already being expanded above: nothing new here
        addrs = (*addrs, low)
        if action.method == "relay":
            self._add(Delivery(self.rcpt, dest, action.name, "relay", "", -1, -1, "", None))
            return
        if action.virtual:
            keys = virtual_keys(local, domain, self.delim)
            targets = await self._targets(action.virtual, keys)
            if targets is None:
                raise _invalid()
            ctx = _Ctx(action, dest, depth, addrs, ())
            for target in targets:
                await self.target(target, ctx)
            return
        await self.user(action, local.lower(), dest, depth + 1, addrs, (), same=False)

    async def user(
        self,
        action: Action,
        name: str,
        dest: str,
        depth: int,
        addrs: tuple[str, ...],
        users: tuple[str, ...],
        *,
        same: bool,
    ) -> None:
        self._step(depth)
        name = name.lower()
        if not same and action.alias:
            targets = await self._targets(action.alias, alias_keys(name, self.delim))
            if targets is not None:
                ctx = _Ctx(action, dest, depth, addrs, (*users, name))
                for target in targets:
                    await self.target(target, ctx)
                return
        base, _, tag = name.partition(self.delim) if self.delim else (name, "", "")
        if not base:
            base, tag = name, ""
        info = await self._userinfo(action, base)
        if info is None:
            raise _invalid()
        if not same and self.forward is not None and action.user in (None, base):
            content = await self.forward(base, info.home)
            targets = _forward_targets(base, content)
            if targets:
                ctx = _Ctx(action, dest, depth, addrs, (*users, name, base), info, True)
                for target in targets:
                    await self.target(target, ctx)
                return
        if action.method == "forward-only":
            raise TempFail(f"no forwarding for {base} on a forward-only action", 451, "4.2.4")
        if action.method == "expand-only":
            raise PermFail("Mailing list expansion problem: nothing to expand", 550, "5.2.4")
        runner = self._system_user(action.user) if action.user else info
        self._add(
            Delivery(
                self.rcpt,
                dest,
                action.name,
                action.method,
                runner.name,
                runner.uid,
                runner.gid,
                runner.home,
                None,
                local_user=base,
                subaddress=tag,
            )
        )

    async def target(self, t: AliasTarget, ctx: _Ctx) -> None:
        depth = ctx.depth + 1
        action = ctx.action
        if t.kind == "user":
            same = t.escaped or t.value.lower() in ctx.users
            await self.user(action, t.value, ctx.dest, depth, ctx.addrs, ctx.users, same=same)
        elif t.kind == "address":
            local, _, domain = t.value.rpartition("@")
            await self.address(
                await self._route(action, local, domain), local, domain, depth, ctx.addrs
            )
        elif t.kind in ("file", "pipe"):
            self._step(depth)
            if action.method == "forward-only":
                raise TempFail(f"{t.kind} target on a forward-only action", 451, "4.2.4")
            if action.user:
                runner = self._system_user(action.user)
            elif ctx.owner is not None:
                runner = ctx.owner
            else:
                runner = self._daemon_user()
            owner = ctx.owner.name if ctx.owner is not None else ""
            self._add(
                Delivery(
                    self.rcpt,
                    ctx.dest,
                    action.name,
                    t.kind,
                    runner.name,
                    runner.uid,
                    runner.gid,
                    runner.home,
                    t.value,
                    local_user=owner,
                )
            )
        elif t.kind == "include":
            self._step(depth)
            if ctx.from_forward:
                raise PermFail(":include: is not allowed in a .forward file", 550, "5.2.4")
            inner = _Ctx(action, ctx.dest, depth, ctx.addrs, ctx.users, ctx.owner, False)
            for target in _read_include(t.value):
                await self.target(target, inner)
        elif t.kind == "error":
            cls = TempFail if t.code < 500 else PermFail
            raise cls(t.value, t.code, t.status)
        else:  # pragma: no cover - parse_alias_target knows no other kind
            raise TempFail(f"unknown alias target kind {t.kind!r}")

    async def _route(self, action: Action, local: str, domain: str) -> Action:
        if self.route is not None:
            routed = await self.route(local, domain)
            if routed is None:
                raise _invalid()
            return routed
        if action.virtual:
            return action
        if "localnames" in self.tables and await self.tables.get("localnames").check(
            "domain", domain.lower()
        ):
            return action
        raise _invalid()


def _forward_targets(user: str, content: str | None) -> list[AliasTarget]:
    if not content:
        return []
    targets: list[AliasTarget] = []
    for lineno, raw in enumerate(content.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            targets += parse_alias_targets(line)
        except ValueError as exc:
            # logged for the admin; the client learns nothing of the file
            log.warning("lka", "forward-invalid", user=user, line=lineno, error=str(exc)[:200])
            raise TempFail(f"invalid .forward of {user}") from None
    return targets


def _read_include(path: str) -> list[AliasTarget]:
    try:
        with open(path, encoding="utf-8") as f:
            content = f.read()
    except (OSError, UnicodeError) as exc:
        raise TempFail(f"cannot read include file {path}: {exc}") from None
    targets: list[AliasTarget] = []
    for lineno, raw in enumerate(content.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            targets += parse_alias_targets(line)
        except ValueError as exc:
            raise TempFail(f"{path}:{lineno}: {exc}") from None
    return targets


async def expand(
    config: Config,
    tables: TableSet,
    action: Action,
    local: str,
    domain: str,
    *,
    forward: ForwardReader | None = None,
    route: Router | None = None,
) -> list[Delivery]:
    """Expand the recipient ``local@domain`` matched to ``action`` into deliveries.

    ``forward(user, home)`` returns the user's ``~/.forward`` text or None
    (pass it only when the daemon can read users' files). ``route(local,
    domain)`` returns the action the rules choose for an address found inside
    an expansion, or None when the rules reject it.
    """
    ex = _Expander(config, tables, f"{local}@{domain}", forward, route)
    await ex.address(action, local, domain, 0, ())
    if not ex.deliveries:
        raise PermFail("Mailing list expansion problem: no deliveries", 550, "5.2.4")
    return ex.deliveries
