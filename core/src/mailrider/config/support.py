"""Which parts of the grammar this version of mailrider can run.

The parser accepts the whole OpenSMTPD grammar, so a configuration written
for OpenSMTPD is understood; :func:`check_supported` then refuses, with the
file and line, the first use of a feature mailrider cannot honour yet,
rather than silently ignoring it (a listener without its TLS, an action
that never relays would lose or expose mail).

Invariants:

- :data:`UNSUPPORTED` is the only list of unsupported features: supporting
  one means deleting its entry (and nothing else here, as long as the
  detection below stays).
- The error is raised at the first use in parse order (lowest line within a
  file), with the message ``'<feature>' is not supported yet by mailrider``
  where ``<feature>`` is a key of :data:`UNSUPPORTED`.
"""

from __future__ import annotations

from mailrider.config.model import Config, Where
from mailrider.errors import ConfigError

#: feature (as written in the configuration) -> what it is
UNSUPPORTED: dict[str, str] = {
}

#: global options, by their key in ``Config.option_where``, that belong to
#: a feature (every "srs ..." statement is the "srs" feature)
_OPTION_FEATURES = {
    "queue compression": "queue compression",
    "queue encryption": "queue encryption",
    "srs key": "srs",
    "srs ttl": "srs",
    "mda wrapper": "mda wrapper",
    "mta limit": "mta limit",
    "scheduler limit": "scheduler limit",
    "smtp ciphers": "smtp ciphers",
}

#: relay options (keys of ``Action.relay``) that belong to a feature
_RELAY_FEATURES = {
    "srs": "relay srs",
    "helo_src": "relay helo-src",
    "pki": "relay pki",
    "ciphers": "relay ciphers",
    "protocols": "relay protocols",
    "filter": "relay filter",
    "host_table": "relay host table",
    "domain": "relay domain",
    "dkim": "relay dkim",
}

_CONDITION_FEATURES = {
    "auth": "match auth",
    "from-auth": "from auth",
    "tls": "match tls",
    "from-rdns": "from rdns",
}


def features_used(config: Config) -> list[tuple[Where, str]]:
    """Every (place, feature) use in ``config`` of a feature that may be unsupported."""
    uses: list[tuple[Where, str]] = []
    uses += [(pki.where, "pki") for pki in config.pkis.values()]
    uses += [(ca.where, "ca") for ca in config.cas.values()]
    uses += [(d.where, "dkim") for d in config.dkims.values()]
    for listener in config.listeners:
        flags = [
            ("tls", listener.tls),
            ("tls-require", listener.tls_require),
            ("smtps", listener.smtps),
            ("pki", bool(listener.pki)),
            ("ca", listener.ca is not None),
            ("ciphers", listener.ciphers is not None),
            ("protocols", listener.protocols is not None),
            ("auth", listener.auth),
            ("auth-optional", listener.auth_optional),
            ("senders", listener.senders is not None),
            ("masquerade", listener.masquerade),
            ("received-auth", listener.received_auth),
            ("hostnames", listener.hostnames is not None),
            ("proxy-v2", listener.proxy_v2),
            ("filter", bool(listener.filters)),
        ]
        uses += [(listener.where, name) for name, used in flags if used]
    for action in config.actions.values():
        if action.method == "relay":
            uses.append((action.where, "relay"))
            for opt, relay_feature in _RELAY_FEATURES.items():
                if opt in action.relay:
                    uses.append((action.where, relay_feature))
        if action.wrapper is not None:
            uses.append((action.where, "wrapper"))
    for match in config.matches:
        for cond in match.conditions:
            feature = _CONDITION_FEATURES.get(cond.kind)
            if feature is not None:
                uses.append((match.where, feature))
    uses += [(f.where, "proc") for f in config.procs.values()]
    uses += [(f.where, "filter") for f in config.filters.values()]
    for f in config.filters.values():
        for cond in f.conditions:
            if cond.kind in ("rdns", "fcrdns"):
                uses.append((f.where, "filter rdns"))
            elif cond.kind == "auth":
                uses.append((f.where, "filter auth"))
    for option, where in config.option_where.items():
        if option in _OPTION_FEATURES:
            uses.append((where, _OPTION_FEATURES[option]))
    for keyword, _words, where in config.other:
        if keyword in _OPTION_FEATURES:
            uses.append((where, _OPTION_FEATURES[keyword]))
    return uses


def unsupported_uses(config: Config) -> list[tuple[Where, str]]:
    """The uses of unsupported features, first (in parse order) first."""
    uses = [(w, f) for w, f in features_used(config) if f in UNSUPPORTED]
    # stable sort: within one statement, the order above (TLS before auth...)
    uses.sort(key=lambda u: (u[0].seq, u[0].line))
    return uses


def check_supported(config: Config) -> None:
    """Raise :class:`ConfigError` at the first use of an unsupported feature."""
    uses = unsupported_uses(config)
    if uses:
        where, feature = uses[0]
        raise ConfigError(f"'{feature}' is not supported yet by mailrider", where.file, where.line)
