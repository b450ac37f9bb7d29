"""Every form of the smtpd.conf grammar (docs/config.md) parses into the model."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from mailrider.config import Condition, Config, Where, check_supported, parse_string
from mailrider.config.parser import parse_duration, parse_port, parse_size
from mailrider.errors import ConfigError


def parse(text: str, **kw: object) -> Config:
    return parse_string(textwrap.dedent(text), "g.conf", **kw)  # type: ignore[arg-type]


# ---- tables ---------------------------------------------------------------


def test_table_forms() -> None:
    cfg = parse(
        """
        table a "/etc/mail/aliases"
        table b file:/etc/mail/b
        table c db:/etc/mail/c.db
        table d mysql:/etc/mail/mysql.conf
        table e { v1, v2 }
        table f { k1 = v1, "k 2" = "v 2" }
        table g getpwnam
        table h static:/etc/h
        table i { x
                  y,
                  z }
        """
    )
    t = cfg.tables
    assert (t["a"].backend, t["a"].path) == ("file", "/etc/mail/aliases")
    assert (t["b"].backend, t["b"].path) == ("file", "/etc/mail/b")
    assert (t["c"].backend, t["c"].path) == ("db", "/etc/mail/c.db")
    assert (t["d"].backend, t["d"].path) == ("mysql", "/etc/mail/mysql.conf")
    assert (t["e"].backend, t["e"].items, t["e"].mapping) == ("static", ["v1", "v2"], None)
    assert t["f"].mapping == {"k1": "v1", "k 2": "v 2"}
    assert t["f"].items is None
    assert (t["g"].backend, t["g"].path) == ("getpwnam", None)
    assert (t["h"].backend, t["h"].path) == ("file", "/etc/h")
    assert t["i"].items == ["x", "y", "z"]
    assert t["i"].where == Where("g.conf", 10)
    assert t["a"].where == Where("g.conf", 2)


def test_anonymous_tables() -> None:
    cfg = parse(
        """
        action "x" maildir virtual { '@' = someone }
        match from src 192.0.2.0/24 for domain { a.example, b.example } action "x"
        match from any for domain "c.example" action "x"
        """
    )
    virtual = cfg.actions["x"].virtual
    assert virtual == "<anon:1>"
    assert cfg.tables[virtual].mapping == {"@": "someone"}
    m1, m2 = cfg.matches
    assert m1.conditions == [
        Condition("from-src", table="<anon:2>"),
        Condition("for-domain", table="<anon:3>"),
    ]
    assert cfg.tables["<anon:2>"].items == ["192.0.2.0/24"]
    assert cfg.tables["<anon:3>"].items == ["a.example", "b.example"]
    # "from any" needs no table: the next anonymous table is number 4
    assert m2.conditions[1] == Condition("for-domain", table="<anon:4>")
    assert cfg.tables["<anon:4>"].items == ["c.example"]
    assert cfg.tables["<anon:4>"].backend == "static"


def test_builtin_tables_need_no_declaration() -> None:
    cfg = parse(
        """
        action "a" mbox userbase <getpwnam>
        match from src <localhost> for domain <localnames> action "a"
        match from src <anyhost> for domain <anydestination> action "a"
        """
    )
    assert cfg.matches[1].conditions[0].table == "anyhost"
    assert cfg.actions["a"].userbase == "getpwnam"


# ---- pki / ca -------------------------------------------------------------


def test_pki_and_ca() -> None:
    cfg = parse(
        """
        pki Mx.Example.org cert "/etc/ssl/mx.pem"
        pki mx.example.org key "/etc/ssl/private/mx.key"
        pki "mx.example.org" dhe auto
        ca myca cert "/etc/ssl/ca.pem"
        """
    )
    pki = cfg.pkis["mx.example.org"]
    assert (pki.cert, pki.key, pki.dhe) == ("/etc/ssl/mx.pem", "/etc/ssl/private/mx.key", "auto")
    assert pki.where.line == 2
    assert cfg.cas["myca"].cert == "/etc/ssl/ca.pem"


# ---- listen on ------------------------------------------------------------

PKI = 'pki h cert "/c"\npki h key "/k"\nca c cert "/ca"\n'


def test_listen_plain_options() -> None:
    cfg = parse(
        """
        listen on lo0
        listen on 0.0.0.0 inet4 port 2525 hostname mx.example tag IN mask-src no-dsn
        listen on eth0 inet6 port submission
        listen on all port smtps
        listen on :: port smtp
        """
    )
    l0, l1, l2, l3, l4 = cfg.listeners
    assert (l0.address, l0.port, l0.family) == ("lo0", None, None)
    assert (l1.family, l1.port, l1.hostname, l1.tag, l1.mask_src, l1.no_dsn) == (
        "inet4", 2525, "mx.example", "IN", True, True,
    )
    assert (l2.family, l2.port) == ("inet6", 587)
    assert l3.port == 465
    assert (l4.address, l4.port) == ("::", 25)
    assert l1.where == Where("g.conf", 3)


def test_listen_tls_auth_options() -> None:
    cfg = parse_string(
        PKI
        + "table creds { u = p }\ntable s { u = 'a@b' }\ntable hn { 192.0.2.1 = mx.example }\n"
        + "filter f1 proc-exec x\nfilter f2 proc-exec y\n"
        + "listen on lo port 587 tls-require verify pki h pki h ca c auth <creds> "
        + "senders <s> masquerade hostnames <hn> received-auth proxy-v2 "
        + 'ciphers "HIGH" protocols "tlsv1.3" filter { f1, f2 }\n'
        + "listen on lo smtps pki H auth-optional filter f1\n"
        + "listen on lo tls pki h auth\n"
    )
    a, b, c = cfg.listeners
    assert (a.tls_require, a.tls_verify, a.pki, a.ca, a.auth, a.auth_table) == (
        True, True, ["h", "h"], "c", True, "creds",
    )
    assert (a.senders, a.masquerade, a.hostnames, a.received_auth, a.proxy_v2) == (
        "s", True, "hn", True, True,
    )
    assert (a.ciphers, a.protocols, a.filters) == ("HIGH", "tlsv1.3", ["f1", "f2"])
    assert (b.smtps, b.auth_optional, b.auth_table, b.filters) == (True, True, None, ["f1"])
    assert b.pki == ["h"]  # pki names are host names: case-insensitive
    assert (c.tls, c.auth, c.auth_table) == (True, True, None)


def test_listen_socket() -> None:
    cfg = parse(
        """
        filter f proc-exec "x"
        listen on socket filter f mask-src no-dsn tag LOCAL
        """
    )
    (sock,) = cfg.listeners
    assert (sock.address, sock.filters, sock.mask_src, sock.no_dsn, sock.tag) == (
        "socket", ["f"], True, True, "LOCAL",
    )


def test_listen_filter_list_without_commas() -> None:
    cfg = parse(
        """
        filter a proc-exec x
        filter b proc-exec y
        listen on lo filter { a
            b }
        """
    )
    assert cfg.listeners[0].filters == ["a", "b"]


# ---- actions ---------------------------------------------------------------


def test_local_actions() -> None:
    cfg = parse(
        """
        table al file:/etc/aliases
        table vu { "@" = vmail }
        table ub { vmail = "1000:1000:/var/vmail" }
        mda wrapper w "/usr/bin/wrap"
        action m1 maildir
        action m2 maildir junk alias <al>
        action m3 maildir "~/Mail/%{rcpt.user}" junk virtual <vu> userbase <ub> user vmail
        action b mbox alias <al> ttl 2h
        action d mda "procmail -f -" wrapper w
        action l lmtp "/run/dovecot/lmtp" rcpt-to virtual <vu>
        action l2 lmtp localhost:24
        action f forward-only alias <al>
        action e expand-only
        """
    )
    a = cfg.actions
    assert (a["m1"].method, a["m1"].arg, a["m1"].junk) == ("maildir", None, False)
    assert (a["m2"].arg, a["m2"].junk, a["m2"].alias) == (None, True, "al")
    m3 = a["m3"]
    assert (m3.arg, m3.junk, m3.virtual, m3.userbase, m3.user) == (
        "~/Mail/%{rcpt.user}", True, "vu", "ub", "vmail",
    )
    assert (a["b"].method, a["b"].ttl) == ("mbox", 7200)
    assert (a["d"].arg, a["d"].wrapper) == ("procmail -f -", "w")
    assert (a["l"].arg, a["l"].rcpt_to, a["l"].virtual) == ("/run/dovecot/lmtp", True, "vu")
    assert (a["l2"].arg, a["l2"].rcpt_to) == ("localhost:24", False)
    assert a["f"].method == "forward-only"
    assert a["e"].method == "expand-only"
    assert cfg.mda_wrappers == {"w": "/usr/bin/wrap"}


def test_relay_actions() -> None:
    cfg = parse_string(
        PKI
        + textwrap.dedent(
            """
            srs key "k"
            table secrets file:/etc/secrets
            table relays { "smtp://a.example" }
            table doms file:/etc/doms
            table srcs { 192.0.2.1 }
            filter f proc-exec x
            action r1 relay
            action r2 relay host smtp+tls://label@relay.example:587 auth <secrets> \\
                mail-from "bounce@example.org" pki h ca c tls no-verify srs \\
                ciphers "HIGH" protocols "tlsv1.2" filter f ttl 1d helo-src <doms>
            action r3 relay backup mx mx2.example helo mx.example src <srcs>
            action r4 relay host <relays>
            action r5 relay backup src 192.0.2.7 tls
            """
        )
    )
    a = cfg.actions
    assert (a["r1"].method, a["r1"].relay) == ("relay", {})
    assert a["r2"].relay == {
        "host": "smtp+tls://label@relay.example:587",
        "auth": "secrets",
        "mail_from": "bounce@example.org",
        "pki": "h",
        "ca": "c",
        "tls": True,
        "tls_noverify": True,
        "srs": True,
        "ciphers": "HIGH",
        "protocols": "tlsv1.2",
        "filter": ["f"],
        "helo_src": "doms",
    }
    assert a["r2"].ttl == 86400
    assert a["r2"].where.line == 12  # 3 lines of PKI, a blank line, 7 more
    assert a["r3"].relay == {
        "backup": True, "backup_mx": "mx2.example", "helo": "mx.example",
        "src": "srcs",
    }
    assert a["r4"].relay == {"host_table": "relays"}
    r5 = a["r5"].relay
    assert r5["backup"] is True and r5["tls"] is True
    assert cfg.tables[str(r5["src"])].items == ["192.0.2.7"]


# ---- match ----------------------------------------------------------------


def test_match_defaults_are_explicit() -> None:
    cfg = parse('action a mbox\nmatch action a\nmatch for any action "a"\nmatch from any reject\n')
    m1, m2, m3 = cfg.matches
    assert m1.conditions == [Condition("from-local"), Condition("for-local")]
    assert (m1.action, m1.reject) == ("a", False)
    assert m2.conditions == [Condition("from-local"), Condition("for-any")]
    assert m3.conditions == [Condition("for-local"), Condition("from-any")]
    assert (m3.action, m3.reject) == (None, True)


def test_match_every_option() -> None:
    cfg = parse(
        """
        table t { x }
        action a mbox
        match from socket for rcpt-to regex <t> action a
        match !from src regex <t> !for domain regex <t> action a
        match from rdns for any action a
        match from rdns regex <t> for any action a
        match from auth for any action a
        match from auth <t> for any action a
        match from mail-from "@example.org" for any action a
        match auth tls helo <t> mail-from regex <t> rcpt-to <t> tag T action a
        match !auth regex <t> !tls !tag regex <t> from local for local reject
        match tag "DKIM_OUT" for any from mail-from <t> action a
        """
    )
    c = [m.conditions for m in cfg.matches]
    assert c[0] == [Condition("from-socket"), Condition("for-rcpt-to", regex=True, table="t")]
    assert c[1] == [
        Condition("from-src", negate=True, regex=True, table="t"),
        Condition("for-domain", negate=True, regex=True, table="t"),
    ]
    assert c[2] == [Condition("from-rdns"), Condition("for-any")]
    assert c[3][0] == Condition("from-rdns", regex=True, table="t")
    assert c[4][0] == Condition("from-auth")
    assert c[5][0] == Condition("from-auth", table="t")
    assert c[6][0].kind == "from-mail-from"
    assert cfg.tables[str(c[6][0].table)].items == ["@example.org"]
    assert c[7] == [
        Condition("from-local"),
        Condition("for-local"),
        Condition("auth"),
        Condition("tls"),
        Condition("helo", table="t"),
        Condition("mail-from", regex=True, table="t"),
        Condition("rcpt-to", table="t"),
        Condition("tag", table=c[7][7].table),
    ]
    assert cfg.tables[str(c[7][7].table)].items == ["T"]
    assert c[8] == [
        Condition("auth", negate=True, regex=True, table="t"),
        Condition("tls", negate=True),
        Condition("tag", negate=True, regex=True, table="t"),
        Condition("from-local"),
        Condition("for-local"),
    ]
    assert cfg.matches[8].reject
    assert [x.kind for x in c[9]] == ["tag", "for-any", "from-mail-from"]
    assert cfg.matches[9].where == Where("g.conf", 13)


# ---- filters ----------------------------------------------------------------


def test_filters_and_procs() -> None:
    cfg = parse(
        """
        proc "p1" "/usr/bin/gawk -f x.awk" user smtpd group smtpd chroot "/var/empty"
        filter "p1" proc "p1"
        filter rspamd proc-exec "filter-rspamd -url http://x" user _rspamd
        filter dyn phase connect match rdns regex { '.*\\.dyn\\..*', '.*\\.dsl\\..*' } \\
            disconnect "550 no residential connections"
        filter nordns phase connect match !rdns !fcrdns junk
        filter bad phase mail-from match mail-from regex <anydestination> src <localhost> \\
            reject "550 go away"
        filter by phase rcpt-to match rcpt-to <localnames> bypass
        filter rw phase helo match helo "x" rewrite "y"
        filter rp phase commit match auth report "seen"
        filter c chain { dyn, nordns
                         rspamd }
        """
    )
    proc = cfg.procs["p1"]
    assert (proc.kind, proc.command, proc.user, proc.group, proc.chroot) == (
        "proc-exec", "/usr/bin/gawk -f x.awk", "smtpd", "smtpd", "/var/empty",
    )
    f = cfg.filters
    assert (f["p1"].kind, f["p1"].command) == ("proc", "p1")
    assert (f["rspamd"].kind, f["rspamd"].command, f["rspamd"].user) == (
        "proc-exec", "filter-rspamd -url http://x", "_rspamd",
    )
    dyn = f["dyn"]
    assert (dyn.kind, dyn.phase, dyn.decision, dyn.decision_arg) == (
        "builtin", "connect", "disconnect", "550 no residential connections",
    )
    assert dyn.conditions == [Condition("rdns", regex=True, table="<anon:1>")]
    assert cfg.tables["<anon:1>"].items == [r".*\.dyn\..*", r".*\.dsl\..*"]
    assert f["nordns"].conditions == [
        Condition("rdns", negate=True), Condition("fcrdns", negate=True),
    ]
    assert (f["nordns"].decision, f["nordns"].decision_arg) == ("junk", None)
    assert f["bad"].conditions == [
        Condition("mail-from", regex=True, table="anydestination"),
        Condition("src", table="localhost"),
    ]
    assert (f["bad"].decision, f["bad"].decision_arg) == ("reject", "550 go away")
    assert f["by"].decision == "bypass"
    assert (f["rw"].decision, f["rw"].decision_arg) == ("rewrite", "y")
    assert (f["rp"].phase, f["rp"].decision, f["rp"].conditions) == (
        "commit", "report", [Condition("auth")],
    )
    assert (f["c"].kind, f["c"].chain) == ("chain", ["dyn", "nordns", "rspamd"])
    assert f["c"].where.line == 13


# ---- global options -----------------------------------------------------------


def test_global_options() -> None:
    cfg = parse(
        """
        admd mx.example.org
        bounce warn-interval 1h, 6h 2d
        queue ttl 3d
        queue compression
        queue encryption 0123456789abcdef
        smtp max-message-size 10M
        smtp limit max-mails 5 max-rcpt 50
        smtp sub-addr-delim "-"
        smtp ciphers "HIGH:!aNULL"
        mta max-deferred 200
        mta limit for domain example.org inet4 max-conn-per-host 5 session-mail-max 3
        mda limit max-session 10 max-session-per-user 2
        scheduler limit max-inflight 100
        srs key "secret1"
        srs key backup "secret0"
        srs ttl 5d
        """
    )
    assert cfg.admd == "mx.example.org"
    assert cfg.bounce_warn_interval == [3600, 6 * 3600, 2 * 86400]
    assert cfg.queue_ttl == 3 * 86400
    assert cfg.queue_compression and cfg.queue_encryption
    assert cfg.queue_key == "0123456789abcdef"
    assert cfg.max_message_size == 10 * 1024 * 1024
    assert (cfg.max_mails, cfg.max_rcpt) == (5, 50)
    assert cfg.sub_addr_delim == "-"
    assert cfg.smtp_ciphers == "HIGH:!aNULL"
    assert cfg.mta_max_deferred == 200
    assert cfg.mda_limits == {"max-session": 10, "max-session-per-user": 2}
    assert (cfg.srs_key, cfg.srs_backup_key, cfg.srs_ttl) == ("secret1", "secret0", 5 * 86400)
    assert [(k, w, where.line) for k, w, where in cfg.other] == [
        (
            "mta limit",
            ["for", "domain", "example.org", "inet4", "max-conn-per-host", "5",
             "session-mail-max", "3"],
            12,
        ),
        ("scheduler limit", ["max-inflight", "100"], 14),
    ]
    ow = {k: v.line for k, v in cfg.option_where.items()}
    assert ow == {
        "admd": 2, "bounce warn-interval": 3, "queue ttl": 4, "queue compression": 5,
        "queue encryption": 6, "smtp max-message-size": 7, "smtp limit": 8,
        "smtp sub-addr-delim": 9, "smtp ciphers": 10, "mta max-deferred": 11,
        "mta limit": 12, "mda limit": 13, "scheduler limit": 14, "srs key": 16, "srs ttl": 17,
    }


def test_defaults_without_global_options() -> None:
    cfg = parse("")
    assert cfg.max_message_size == 35 * 1024 * 1024
    assert cfg.queue_ttl == 4 * 86400
    assert cfg.bounce_warn_interval == [4 * 3600]
    assert cfg.option_where == {}


def test_queue_encryption_without_key() -> None:
    for text in ("queue encryption\n", "queue encryption stdin\n", "queue encryption -\n"):
        cfg = parse(text)
        assert cfg.queue_encryption and cfg.queue_key is None


@pytest.mark.parametrize(
    ("text", "value"),
    [("35M", 35 << 20), ("1024", 1024), ("2k", 2048), ("1G", 1 << 30), ("1.5K", 1536),
     ("10B", 10), ("x", None), ("5Q", None), ("", None)],
)
def test_sizes(text: str, value: int | None) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize(
    ("text", "value"),
    [("30", 30), ("30s", 30), ("5m", 300), ("4h", 14400), ("4d", 345600), ("4w", None),
     ("h", None), ("-1s", None)],
)
def test_durations(text: str, value: int | None) -> None:
    assert parse_duration(text) == value


def test_ports() -> None:
    assert [parse_port(p) for p in ("25", "smtp", "smtps", "submission", "submissions")] == [
        25, 25, 465, 587, 465,
    ]
    assert parse_port("0") is None
    assert parse_port("65536") is None
    assert parse_port("no-such-service-here") is None


def test_file_without_final_newline() -> None:
    cfg = parse_string("action a mbox\nmatch for any action a")
    assert cfg.matches[0].action == "a"


def test_example_configurations_from_protocols() -> None:
    # a Debian-style local relay host, with the grammar's corners
    cfg = parse(
        """
        table aliases file:/etc/aliases
        listen on localhost
        action "local" mbox alias <aliases>
        action "relay" relay
        match for local action "local"
        match from local for any action "relay"
        """
    )
    assert [m.action for m in cfg.matches] == ["local", "relay"]


def test_list_commas_optional_trailing_allowed_never_doubled() -> None:
    cfg = parse("table t { a b, c, }\ntable m { k = v\n  k2 = v2 }\n")
    assert cfg.tables["t"].items == ["a", "b", "c"]
    assert cfg.tables["m"].mapping == {"k": "v", "k2": "v2"}
    with pytest.raises(ConfigError, match=r"^g\.conf:3: syntax error near ','$"):
        parse("filter a proc-exec x\nfilter b proc-exec y\nlisten on lo filter { a,, b }\n")


def test_static_tables_take_arrows_as_opensmtpd() -> None:
    cfg = parse('table m { joe => "joe@example.org", "k 2"=>v2\n  k3 = v3 }\n'
                'action a mbox alias { root => joe }\n')
    assert cfg.tables["m"].mapping == {"joe": "joe@example.org", "k 2": "v2", "k3": "v3"}
    alias = cfg.actions["a"].alias
    assert alias is not None and cfg.tables[alias].mapping == {"root": "joe"}
    with pytest.raises(ConfigError, match=r"^g\.conf:1: table mixes list and mapping entries$"):
        parse("table t { a, b => c }\n")
    # only between a key and a value
    with pytest.raises(ConfigError, match=r"^g\.conf:1: syntax error near '=>'$"):
        parse("table t { => c }\n")


def test_anonymous_names_never_overwrite_user_tables() -> None:
    cfg = parse('table "<anon:1>" { mine }\naction a mbox alias theirs\n')
    assert cfg.tables["<anon:1>"].items == ["mine"]
    assert cfg.actions["a"].alias == "<anon:2>"
    assert cfg.tables["<anon:2>"].items == ["theirs"]


def test_builtin_default_configuration_parses(tmp_path: Path) -> None:
    from mailrider.config.default import default_config_text

    cfg = parse_string(default_config_text(str(tmp_path)), macros={"port": "2600"})
    assert cfg.listeners[0].port == 2600
    check_supported(cfg)


def test_smtp_limit_sessions_and_deliveries() -> None:
    cfg = parse_string("smtp limit sessions 1000 sessions-per-address 20\n"
                       "smtp limit sessions-per-local-address 0 max-deliveries 500 max-rcpt 9\n")
    assert (cfg.max_sessions, cfg.max_sessions_per_address, cfg.max_sessions_per_local,
            cfg.max_deliveries, cfg.max_rcpt) == (1000, 20, 0, 500, 9)
