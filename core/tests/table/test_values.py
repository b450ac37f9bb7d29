"""Parsers of table values, per service (docs/table-protocol.md §7)."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st
from mailrider.table.values import (
    AliasTarget,
    Mailaddr,
    RelayHost,
    UserInfo,
    parse_alias_target,
    parse_alias_targets,
    parse_credentials,
    parse_domain,
    parse_mailaddr,
    parse_mailaddrmap,
    parse_netaddr,
    parse_relayhost,
    parse_source,
    parse_userinfo,
    split_list,
)

# --- lists and alias targets ---------------------------------------------------


def test_split_list_strips_and_drops_empty_items() -> None:
    assert split_list(" a ,b,, c ") == ["a", "b", "c"]


def test_split_list_quotes_group_commas() -> None:
    assert split_list('"|/bin/prog a, b", bob') == ["|/bin/prog a, b", "bob"]


def test_split_list_backslash_escapes_special_characters_only() -> None:
    assert split_list(r"a\,b, c\"d, \\e, \user") == ["a,b", 'c"d', "\\e", "\\user"]


def test_split_list_unterminated_quote() -> None:
    with pytest.raises(ValueError, match="unterminated"):
        split_list('"abc, d')


_ITEM = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789._-@/|", min_size=1, max_size=12)


@given(st.lists(_ITEM, min_size=1, max_size=8))
def test_split_list_round_trip(items: list[str]) -> None:
    assert split_list(", ".join(items)) == items


@given(st.lists(st.text(alphabet='ab ,"\\', max_size=6), max_size=5))
def test_split_list_quoted_round_trip(items: list[str]) -> None:
    def quote(s: str) -> str:
        return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'

    expected = [s.strip() for s in items if s.strip()]
    assert split_list(",".join(quote(s) for s in items)) == expected


def test_alias_target_kinds() -> None:
    got = parse_alias_targets(
        'alice, Bob@Example.ORG, /var/mail/log, "|/usr/bin/vacation -a x", '
        ":include:/etc/mail/list, error:550 5.1.1 gone, \\carol"
    )
    assert got == [
        AliasTarget("user", "alice"),
        AliasTarget("address", "Bob@example.org"),
        AliasTarget("file", "/var/mail/log"),
        AliasTarget("pipe", "/usr/bin/vacation -a x"),
        AliasTarget("include", "/etc/mail/list"),
        AliasTarget("error", "gone", code=550, status="5.1.1"),
        AliasTarget("user", "carol", escaped=True),
    ]


def test_error_target_without_status_or_text() -> None:
    assert parse_alias_target("error:421") == AliasTarget(
        "error", "Delivery refused", code=421, status="4.0.0"
    )
    assert parse_alias_target("error:550 no such list") == AliasTarget(
        "error", "no such list", code=550, status="5.0.0"
    )


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "empty alias value"),
        (" , ", "empty alias value"),
        ("error:250 ok", "invalid error target"),
        ("error:55", "invalid error target"),
        ("error:550 4.1.1 mixed", "does not agree"),
        ("|", "empty command"),
        (":include:relative/path", "absolute"),
        ("bad user", "invalid user name"),
        ("@example.org", "invalid address"),
        ("user@", "invalid address"),
        ("\\", "invalid user name"),
        ("us;er", "invalid user name"),
    ],
)
def test_alias_target_errors(value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_alias_targets(value)


# --- userinfo and credentials --------------------------------------------------


def test_userinfo() -> None:
    assert parse_userinfo("carol", "2001:2001:/var/vmail/carol") == UserInfo(
        "carol", 2001, 2001, "/var/vmail/carol"
    )
    # the home is the rest of the value, colons included
    assert parse_userinfo("d", "1:2:/srv/a:b").home == "/srv/a:b"


@pytest.mark.parametrize("value", ["1:2", "x:2:/h", "1:-2:/h", "1:2:relative", ""])
def test_userinfo_errors(value: str) -> None:
    with pytest.raises(ValueError, match="userinfo"):
        parse_userinfo("u", value)


def test_credentials() -> None:
    assert parse_credentials("label", "joe:secret") == ("joe", "secret")
    assert parse_credentials("joe", "$2b$10$hash") == ("joe", "$2b$10$hash")
    assert parse_credentials("x", "a:b:c") == ("a", "b:c")


@pytest.mark.parametrize("value", ["", ":s3cret", "s3cret:", "x:"])
def test_credentials_errors_never_quote_the_value(value: str) -> None:
    with pytest.raises(ValueError) as exc:
        parse_credentials("k", value)
    assert "s3cret" not in str(exc.value)
    assert str(exc.value) in (
        "credentials value is empty",
        "credentials value must be user:password",
    )


# --- addresses -------------------------------------------------------------------


def test_netaddr_forms() -> None:
    assert parse_netaddr("192.0.2.1") == ipaddress.ip_network("192.0.2.1/32")
    assert parse_netaddr("192.0.2.0/24") == ipaddress.ip_network("192.0.2.0/24")
    assert parse_netaddr("[2001:db8::1]") == ipaddress.ip_network("2001:db8::1/128")
    assert parse_netaddr("2001:db8::/32") == ipaddress.ip_network("2001:db8::/32")
    assert parse_netaddr("[2001:db8::]/32") == ipaddress.ip_network("2001:db8::/32")


@pytest.mark.parametrize("value", ["local", "192.0.2.1/24", "300.1.1.1", "mx.example.org", ""])
def test_netaddr_errors(value: str) -> None:
    with pytest.raises(ValueError, match="invalid network address"):
        parse_netaddr(value)


def test_source() -> None:
    assert parse_source("192.0.2.7") == ipaddress.ip_address("192.0.2.7")
    assert parse_source("[2001:db8::7]") == ipaddress.ip_address("2001:db8::7")
    assert parse_source("ipv6:2001:db8::7") == ipaddress.ip_address("2001:db8::7")
    with pytest.raises(ValueError, match="invalid source"):
        parse_source("192.0.2.0/24")


def test_mailaddr() -> None:
    assert parse_mailaddr("Joe") == Mailaddr("joe", "")
    assert parse_mailaddr("@Example.org") == Mailaddr("", "example.org")
    assert parse_mailaddr("joe@*.example.org") == Mailaddr("joe", "*.example.org")
    assert parse_mailaddr("@") == Mailaddr("", "")
    assert str(Mailaddr("", "")) == "@"
    assert str(Mailaddr("a", "b")) == "a@b"
    for bad in ("", "a b@c", "<a@b>", "a@b@c"):
        with pytest.raises(ValueError):
            parse_mailaddr(bad)


def test_mailaddrmap() -> None:
    assert parse_mailaddrmap("joe@example.org, @example.net") == [
        Mailaddr("joe", "example.org"),
        Mailaddr("", "example.net"),
    ]
    with pytest.raises(ValueError, match="empty"):
        parse_mailaddrmap(" , ")


def test_relayhost_forms() -> None:
    assert parse_relayhost("mx.example.org") == RelayHost("smtp", "mx.example.org")
    assert parse_relayhost("smtp+tls://Label@MX.example.org:587") == RelayHost(
        "smtp+tls", "mx.example.org", 587, "Label"
    )
    assert parse_relayhost("smtps://mx.example.org").effective_port == 465
    assert parse_relayhost("smtp+notls://mx:2525").port == 2525
    assert parse_relayhost("lmtp://[2001:db8::1]:24") == RelayHost("lmtp", "[2001:db8::1]", 24)
    assert parse_relayhost("smtp://192.0.2.1").effective_port == 25


def test_relayhost_without_scheme() -> None:
    # smtp:// by default; with a label (credentials), smtp+tls://
    assert parse_relayhost("mx.example.org:2525") == RelayHost("smtp", "mx.example.org", 2525)
    assert parse_relayhost("label@mail.example.org:587") == RelayHost(
        "smtp+tls", "mail.example.org", 587, "label")
    assert parse_relayhost("Label@[2001:db8::1]") == RelayHost(
        "smtp+tls", "[2001:db8::1]", None, "Label")
    assert parse_relayhost("label@mx").effective_port == 25
    with pytest.raises(ValueError, match="invalid relay label"):
        parse_relayhost("bad/label@mx")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("lmtp://mx.example.org", "explicit port"),
        ("ftp://mx", "invalid relay protocol"),
        ("smtp://label@mx", "needs smtp\\+tls"),
        ("smtp+tls://bad label@mx", "invalid relay URL"),
        ("smtp://mx:0", "invalid port"),
        ("smtp://mx:99999", "invalid port"),
        ("smtp://mx:x", "invalid port"),
        ("smtp://[2001:db8::1", "unterminated"),
        ("smtp://[nothex]:25", "invalid IPv6"),
        ("smtp://bad_host!", "invalid relay host"),
        ("", "invalid relay URL"),
    ],
)
def test_relayhost_errors(value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_relayhost(value)


def test_domain() -> None:
    assert parse_domain(" Example.ORG ") == "example.org"
    assert parse_domain("*.example.org") == "*.example.org"
    with pytest.raises(ValueError):
        parse_domain("exa mple.org")
