"""Relay URLs that can be checked when the configuration is read.

The relay process (proc/pony_mta.py) parses a relay URL when it delivers;
those written in the configuration, literally or in a static table, are
checked here at ``-n`` and at start (docs/config.md).
"""

from __future__ import annotations

from mailrider.config.model import Action, Config
from mailrider.errors import ConfigError
from mailrider.table.values import parse_relayhost


def static_relay_urls(config: Config, action: Action) -> list[str]:
    """The relay URLs of ``action`` known before the first mail (literal, static tables)."""
    relay = action.relay
    if isinstance(relay.get("host"), str):
        return [str(relay["host"])]
    name = relay.get("host_table") or relay.get("domain")
    table = config.tables.get(name) if isinstance(name, str) else None
    if table is None or table.backend != "static":
        return []
    return list(table.items or []) + list((table.mapping or {}).values())


def check_relay_urls(config: Config) -> None:
    """Refuse, at the action's ``file:line``, a relay URL that can be known bad now.

    OpenSMTPD parses smarthosts only when it delivers (a bad one tempfails
    every mail, forever); we refuse them at ``-n`` and at start instead,
    e.g. OpenSMTPD 5's ``tls+auth://``, which 7.x no longer knows.
    """
    for action in config.actions.values():
        if action.method != "relay":
            continue
        for url in static_relay_urls(config, action):
            try:
                parse_relayhost(url)
            except ValueError as exc:
                raise ConfigError(f"action {action.name}: relay host {url!r}: {exc}",
                                  action.where.file, action.where.line) from None
