"""check_supported: the first use of an unsupported feature, by line."""

from __future__ import annotations

import pytest
from mailrider.config import UNSUPPORTED, Config, Listener, Where, check_supported, parse_string
from mailrider.config.support import unsupported_uses
from mailrider.errors import ConfigError

PKI = 'pki h cert "/c"\npki h key "/k"\n'

SUPPORTED = """\
table aliases file:/etc/mail/aliases
table vusers { "@" = vmail }
table doms { example.org }
table nets { 192.0.2.0/24 }
listen on 127.0.0.1 port 2525 hostname mx.example tag IN mask-src no-dsn
listen on socket mask-src tag LOCAL
listen on 127.0.0.2 port 2525 hostnames { "127.0.0.2" = mx2.example }
action "md" maildir "~/Maildir" junk alias <aliases> ttl 1d
action "mb" mbox alias <aliases>
action "mda" mda "/usr/bin/deliver" virtual <vusers> userbase <getpwnam> user vmail
action "lm" lmtp "/run/lmtp" rcpt-to virtual <vusers>
action "fw" forward-only alias <aliases>
action "ex" expand-only
match from any for domain <doms> action "md"
match from socket for any action "mb"
match from src <nets> for rcpt-to "a@example.org" action "mda"
match from mail-from "@example.org" for local action "lm"
match tag IN helo mx.example mail-from "x@y" rcpt-to "z@w" action "fw"
match !for domain regex <doms> reject
smtp max-message-size 10M
smtp limit max-mails 10 max-rcpt 100
smtp sub-addr-delim "-"
queue ttl 2d
bounce warn-interval 1h
admd mx.example
mda limit max-session 5
mta max-deferred 10
queue compression
queue encryption 0123456789abcdef0123456789abcdef
mta limit max-conn-per-host 3
mta limit for domain example.org inet4 max-conn-per-domain 2 session-mail-max 5
scheduler limit max-inflight 3 max-schedule 2
srs key "k1"
srs key backup "k0"
srs ttl 2d
action "fwd" relay host smtp://relay.example srs
mda wrapper "w" "/usr/bin/wrap %{mda}"
action "wrapped" mda "/usr/bin/deliver" wrapper "w"
"""


def test_supported_subset_passes() -> None:
    check_supported(parse_string(SUPPORTED))


FIRST_USE: list[tuple[str, int, str]] = [
    # every OpenSMTPD 7.8 feature is supported: a feature put back in
    # UNSUPPORTED is refused at its first use (see the tests below)
]


@pytest.mark.parametrize(("text", "line", "feature"), FIRST_USE, ids=[c[2] for c in FIRST_USE])
def test_first_unsupported_use(text: str, line: int, feature: str) -> None:
    assert feature in UNSUPPORTED
    with pytest.raises(ConfigError) as info:
        check_supported(parse_string(text, "s.conf"))
    assert str(info.value) == f"s.conf:{line}: '{feature}' is not supported yet by mailrider"


def test_listener_features_in_a_fixed_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(UNSUPPORTED, "hostnames", "x")
    monkeypatch.setitem(UNSUPPORTED, "proxy-v2", "y")
    cfg = parse_string(
        PKI + "table c { u = p }\nlisten on lo port 587 tls-require pki h auth <c> "
        "senders <c> masquerade hostnames <c> proxy-v2\n"
    )
    uses = unsupported_uses(cfg)
    assert [f for w, f in uses if w.line == 4] == ["hostnames", "proxy-v2"]


def test_masquerade_is_supported() -> None:
    assert "masquerade" not in UNSUPPORTED
    check_supported(parse_string(
        PKI + "table s { u = a@b }\nlisten on lo tls pki h auth senders <s> masquerade\n"))


def test_removing_an_entry_supports_the_feature(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = parse_string("queue compression\n")
    monkeypatch.setitem(UNSUPPORTED, "queue compression", "compressed queue files")
    with pytest.raises(ConfigError, match="'queue compression' is not supported"):
        check_supported(cfg)
    monkeypatch.delitem(UNSUPPORTED, "queue compression")
    check_supported(cfg)


def test_hand_built_config_without_seq_sorts_by_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(UNSUPPORTED, "proxy-v2", "PROXY protocol v2 on a listener")
    cfg = Config()
    cfg.listeners.append(Listener("lo", proxy_v2=True, where=Where("x.conf", 9)))
    cfg.listeners.append(Listener("lo", proxy_v2=True, where=Where("x.conf", 4)))
    with pytest.raises(ConfigError, match=r"^x\.conf:4: 'proxy-v2' is not"):
        check_supported(cfg)


def test_unsupported_table_is_data() -> None:
    assert all(isinstance(k, str) and isinstance(v, str) and v for k, v in UNSUPPORTED.items())
