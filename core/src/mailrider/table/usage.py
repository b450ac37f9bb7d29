"""Which service each configuration item asks of which table (docs/table-protocol.md §8).

Used at start: a proc backend registers the services it answers, and a table
used for a service its backend did not register is an error that names the
table, the service and the line — found before the first mail, not at it.
"""

from __future__ import annotations

from mailrider.config.model import Condition, Config, Where

_CONDITION_SERVICE = {
    "from-src": "netaddr", "for-domain": "domain", "from-mail-from": "mailaddr",
    "mail-from": "mailaddr", "for-rcpt-to": "mailaddr", "rcpt-to": "mailaddr",
    "tag": "string", "helo": "domain",
    # built-in filter conditions
    "src": "netaddr", "rdns": "domain", "from-rdns": "domain",
}


def _condition(c: Condition) -> str | None:
    if c.table is None:
        return None
    if c.regex:
        return "regex"
    return _CONDITION_SERVICE.get(c.kind)


def table_uses(config: Config) -> list[tuple[str, tuple[str, ...], Where]]:
    """(table, acceptable services, place) for every table reference in ``config``."""
    uses: list[tuple[str, tuple[str, ...], Where]] = []
    for lst in config.listeners:
        if lst.auth_table:
            uses.append((lst.auth_table, ("credentials", "auth"), lst.where))
        if lst.senders:
            uses.append((lst.senders, ("mailaddrmap",), lst.where))
        if lst.hostnames:
            uses.append((lst.hostnames, ("addrname",), lst.where))
    for action in config.actions.values():
        for name in (action.alias, action.virtual):
            if name:
                uses.append((name, ("alias",), action.where))
        if action.userbase:
            uses.append((action.userbase, ("userinfo",), action.where))
        for key, rservice in (("host_table", "relayhost"), ("domain", "relayhost"),
                             ("auth", "credentials"), ("helo_src", "addrname")):
            value = action.relay.get(key)
            if isinstance(value, str) and value in config.tables:
                uses.append((value, (rservice,), action.where))
        src = action.relay.get("src")
        if isinstance(src, str) and src in config.tables:
            uses.append((src, ("source",), action.where))
    places = [(m.conditions, m.where) for m in config.matches]
    places += [(f.conditions, f.where) for f in config.filters.values()]
    for conditions, where in places:
        for c in conditions:
            cservice = _condition(c)
            if cservice is not None and c.table is not None:
                uses.append((c.table, (cservice,), where))
    return uses
