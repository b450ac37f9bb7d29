"""Paths (RFC 5321 4.1.2), ESMTP parameters and xtext (RFC 3461 4)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mailrider.smtp.address import (
    Address,
    AddressError,
    normalise_domain,
    parse_esmtp_params,
    parse_mail_params,
    parse_path,
    parse_rcpt_params,
    split_path,
    xtext_decode,
    xtext_encode,
)

VALID = [
    ("<user@example.org>", False, Address("user", "example.org")),
    ("<first.last+tag@sub.example.org>", False, Address("first.last+tag", "sub.example.org")),
    ("<!#$%&'*+-/=?^_`{|}~@x.example>", False, Address("!#$%&'*+-/=?^_`{|}~", "x.example")),
    ('<"john doe"@example.org>', False, Address("john doe", "example.org")),
    ('<"a\\"b\\\\c"@example.org>', False, Address('a"b\\c', "example.org")),
    ('<"a>b"@example.org>', False, Address("a>b", "example.org")),
    ('<"plain"@example.org>', False, Address("plain", "example.org")),
    ("<u@[192.0.2.1]>", False, Address("u", "[192.0.2.1]")),
    ("<u@[IPv6:2001:db8::1]>", False, Address("u", "[IPv6:2001:db8::1]")),
    ("<u@[ipv6:2001:DB8::1]>", False, Address("u", "[ipv6:2001:DB8::1]")),
    ("<@relay.example,@hop2.example:user@example.org>", False, Address("user", "example.org")),
    ("<u@localhost>", False, Address("u", "localhost")),
    ("<u@a-b.c0.example>", False, Address("u", "a-b.c0.example")),
    ("<u@" + "a" * 63 + ".example>", False, Address("u", "a" * 63 + ".example")),
    ("<" + "l" * 64 + "@x.example>", False, Address("l" * 64, "x.example")),
    ("<δοκιμή@παράδειγμα.δοκιμή>", True, Address("δοκιμή", "παράδειγμα.δοκιμή")),
    ('<"ü x"@bücher.example>', True, Address("ü x", "bücher.example")),
]


@pytest.mark.parametrize(("path", "utf8", "want"), VALID)
def test_valid(path: str, utf8: bool, want: Address) -> None:
    got = parse_path(path, utf8)
    assert got == want
    assert got is not None
    # str() gives a path body that parses back to the same address
    assert parse_path(f"<{got}>", utf8) == got


INVALID = [
    ("user@example.org", "501 5.1.3 Address must be enclosed in <>"),
    ("<user@example.org", "501 5.1.3 Address must be enclosed in <>"),
    ("<user>", "501 5.1.3 Address needs a domain"),
    ("<user@>", "501 5.1.3 Bad address syntax"),
    ("<@example.org>", "501 5.1.3 Bad source route"),
    ("<.user@example.org>", "501 5.1.3 Bad local part syntax"),
    ("<user.@example.org>", "501 5.1.3 Bad local part syntax"),
    ("<us..er@example.org>", "501 5.1.3 Bad local part syntax"),
    ("<us er@example.org>", "501 5.1.3 Bad local part syntax"),
    ("<a(b)@example.org>", "501 5.1.3 Bad local part syntax"),
    ('<"unterminated@example.org>', "501 5.1.3 Unterminated quoted string"),
    ("<user@example.org.>", "501 5.1.2 Trailing dot in domain name"),
    ("<user@-bad.example>", "501 5.1.2 Bad domain name syntax"),
    ("<user@bad-.example>", "501 5.1.2 Bad domain name syntax"),
    ("<user@ex_ample.org>", "501 5.1.2 Bad domain name syntax"),
    ("<user@a..b>", "501 5.1.2 Bad domain name syntax"),
    ("<user@" + "a" * 64 + ".example>", "501 5.1.2 Bad domain name syntax"),
    ("<user@[192.0.2.256]>", "501 5.1.2 Bad address literal"),
    ("<user@[010.0.0.1]>", "501 5.1.2 Bad address literal"),
    ("<user@[IPv6:zz::1]>", "501 5.1.2 Bad address literal"),
    ("<user@[tag:foo]>", "501 5.1.2 Bad address literal"),
    ("<user@[192.0.2.1>", "501 5.1.2 Bad address literal"),
    ("<@a.example:user@b.example:>", "501 5.1.2 Bad domain name syntax"),
    ("<a@b@c.example>", "501 5.1.2 Bad domain name syntax"),
    ("<" + "l" * 65 + "@x.example>", "501 5.1.3 Local part too long"),
    ("<u@" + ("a" * 60 + ".") * 5 + "example>", "501 5.1.3 Path too long"),
    ("<u\x01@x.example>", "501 5.1.3 Control character in address"),
    ('<"a\x7f"@x.example>', "501 5.1.3 Control character in address"),
    ("<δοκιμή@example.org>", "553 5.6.7 Non-ASCII address requires SMTPUTF8"),
    ("<user@bücher.example>", "553 5.6.7 Non-ASCII address requires SMTPUTF8"),
    ('<"ü"@x.example>', "553 5.6.7 Non-ASCII address requires SMTPUTF8"),
]


@pytest.mark.parametrize(("path", "reply"), INVALID)
def test_invalid(path: str, reply: str) -> None:
    with pytest.raises(AddressError) as exc:
        parse_path(path, False)
    assert str(exc.value.reply) == reply


def test_sender_status_codes() -> None:
    with pytest.raises(AddressError) as exc:
        parse_path("<a b@x.example>", False, sender=True)
    assert exc.value.reply.status == "5.1.7"
    with pytest.raises(AddressError) as exc:
        parse_path("<ab@x.example.>", False, sender=True)
    assert exc.value.reply.status == "5.1.8"


def test_null_and_postmaster() -> None:
    assert parse_path("<>", False) is None
    pm = parse_path("<Postmaster>", False, postmaster=True)
    assert pm == Address("Postmaster", "") and pm.is_postmaster and str(pm) == "Postmaster"
    with pytest.raises(AddressError):
        parse_path("<postmaster>", False)
    with pytest.raises(AddressError):
        parse_path('<"postmaster">', False, postmaster=True)


def test_str_quotes_when_needed() -> None:
    assert str(Address("a b", "x.example")) == '"a b"@x.example'
    assert str(Address('q"\\', "x.example")) == '"q\\"\\\\"@x.example'
    assert str(Address(".a", "x.example")) == '".a"@x.example'
    assert str(Address("a.b", "x.example")) == "a.b@x.example"


def test_normalise_domain() -> None:
    assert normalise_domain("Example.ORG") == "example.org"
    assert Address("u", "EXAMPLE.org").domain_key == "example.org"
    assert normalise_domain("[IPv6:2001:DB8:0::1]") == "[IPv6:2001:db8::1]"
    assert normalise_domain("[192.0.2.1]") == "[192.0.2.1]"


def test_split_path() -> None:
    assert split_path('<"a> b"@x.example>  SIZE=10 BODY=7BIT') == (
        '<"a> b"@x.example>', "SIZE=10 BODY=7BIT")
    assert split_path("<>") == ("<>", "")
    with pytest.raises(AddressError):
        split_path("<a@b.example>X=1")


ATOM = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789!#$%&'*+-/=?^_`{|}~", min_size=1,
               max_size=8)
LOCAL = st.one_of(
    st.lists(ATOM, min_size=1, max_size=4).map(".".join),
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=20),
).filter(lambda s: 0 < len(s.encode()) <= 40)
LABEL = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
DOMAIN = st.lists(LABEL, min_size=1, max_size=4).map(".".join)


@given(LOCAL, DOMAIN)
@settings(max_examples=300, deadline=None)
def test_address_round_trip(local: str, domain: str) -> None:
    addr = Address(local, domain)
    text = f"<{addr}>"
    if len(text) > 256 or len(str(addr).split("@")[0]) > 64:
        return
    assert parse_path(text, False) == addr


@given(st.text(max_size=200))
@settings(max_examples=300, deadline=None)
def test_parse_path_never_crashes_and_results_are_clean(text: str) -> None:
    for candidate in (text, f"<{text}>"):
        try:
            addr = parse_path(candidate, True, postmaster=True)
        except AddressError as exc:
            assert exc.reply.code in (501, 553)
            continue
        if addr is not None:
            assert not any(ord(c) < 32 or 127 <= ord(c) < 160 for c in str(addr))


# ------------------------------------------------------------------- xtext

def test_xtext() -> None:
    assert xtext_decode("bob+40x.example") == "bob@x.example"
    assert xtext_decode("a+2Bb+3Dc") == "a+b=c"
    assert xtext_decode("a+2bb") == "a+b"  # lower-case hex tolerated
    assert xtext_encode("a+b=c d") == "a+2Bb+3Dc+20d"
    for bad in ("a+", "a+4", "a+GG", "a=b", "a b", "+0D+0A", "+00", "+FF"):
        with pytest.raises(AddressError):
            xtext_decode(bad)


@given(st.text(alphabet=st.characters(min_codepoint=32, blacklist_categories=("Cs", "Cc"))))
def test_xtext_round_trip(text: str) -> None:
    encoded = xtext_encode(text)
    assert all(33 <= ord(c) <= 126 for c in encoded)
    assert xtext_decode(encoded) == text


# -------------------------------------------------------------- parameters

def test_esmtp_params() -> None:
    assert parse_esmtp_params("size=10  BODY=8BITMIME SMTPUTF8") == {
        "SIZE": "10", "BODY": "8BITMIME", "SMTPUTF8": None}
    for bad in ("SIZE=1 size=2", "-X=1", "X=", "X=a=b", "X=\x01", "X=ü"):
        with pytest.raises(AddressError) as exc:
            parse_esmtp_params(bad)
        assert exc.value.reply.code == 501


ALL = {"dsn": True, "eightbitmime": True, "smtputf8": True}


def test_mail_params() -> None:
    p = parse_mail_params("SIZE=123 BODY=7bit SMTPUTF8 RET=full ENVID=QQ+2B1", **ALL)
    assert (p.size, p.body, p.smtputf8, p.ret, p.envid) == (123, "7BIT", True, "FULL", "QQ+1")
    assert p.raw["ENVID"] == "QQ+2B1"
    assert parse_mail_params("", **ALL) == parse_mail_params("", **ALL)
    for text, reply in [
        ("SIZE=-1", "501 5.5.4 Bad SIZE parameter"),
        ("SIZE=" + "9" * 21, "501 5.5.4 Bad SIZE parameter"),
        ("BODY=BINARYMIME", "501 5.5.4 Bad BODY parameter"),
        ("SMTPUTF8=yes", "501 5.5.4 SMTPUTF8 takes no value"),
        ("RET=ALL", "501 5.5.4 Bad RET parameter"),
        ("ENVID", "501 5.5.4 Bad ENVID parameter"),
        ("ENVID=" + "a" * 101, "501 5.5.4 ENVID too long"),
        ("AUTH=<>", "555 5.5.4 Unsupported parameter AUTH"),
    ]:
        with pytest.raises(AddressError) as exc:
            parse_mail_params(text, **ALL)
        assert str(exc.value.reply) == reply
    for text in ("RET=FULL", "ENVID=x", "BODY=8BITMIME", "SMTPUTF8"):
        with pytest.raises(AddressError) as exc:
            parse_mail_params(text, dsn=False, eightbitmime=False, smtputf8=False)
        assert exc.value.reply.code == 555


def test_rcpt_params() -> None:
    p = parse_rcpt_params("NOTIFY=never ORCPT=rfc822;a+2Bb@x.example", dsn=True)
    assert p.notify == {"NEVER"} and p.orcpt == "rfc822;a+b@x.example"
    assert parse_rcpt_params("NOTIFY=DELAY,SUCCESS", dsn=True).notify == {"DELAY", "SUCCESS"}
    for text in ("NOTIFY=NEVER,SUCCESS", "NOTIFY=", "NOTIFY=SOMETIMES", "NOTIFY=DELAY,DELAY",
                 "ORCPT=bob@x.example", "ORCPT=;bob", "ORCPT=rfc822;", "ORCPT=rfc822;a+0Ab"):
        with pytest.raises(AddressError) as exc:
            parse_rcpt_params(text, dsn=True)
        assert exc.value.reply.code == 501, text
    with pytest.raises(AddressError) as exc:
        parse_rcpt_params("NOTIFY=NEVER", dsn=False)
    assert str(exc.value.reply) == "555 5.5.4 Unsupported parameter NOTIFY"
