"""Format specifiers (docs/config.md §5)."""

from __future__ import annotations

import os.path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from mailrider.delivery.format import SAFE_CHARS, FormatContext, expand_format, strip_tag

CTX = FormatContext(
    sender="Bob.Smith+list@Sender.example",
    rcpt="User+Tag@Example.org",
    dest="alice@example.org",
    user_name="alice",
    user_dir="/home/alice",
    mda="/usr/bin/procmail -d alice",
)
DOMAIN_CTX = FormatContext(
    sender="", rcpt="user@example.org", dest="user@example.org", user_name="u", user_dir="/h"
)
NULL_CTX = FormatContext(
    sender="", rcpt="a@b.example", dest="a@b.example", user_name="a", user_dir="/home/a"
)


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("%{sender}", "Bob.Smith+list@Sender.example"),
        ("%{sender.user}", "Bob.Smith+list"),
        ("%{sender.domain}", "Sender.example"),
        ("%{rcpt}", "User+Tag@Example.org"),
        ("%{rcpt.user}", "User+Tag"),
        ("%{rcpt.domain}", "Example.org"),
        ("%{dest}", "alice@example.org"),
        ("%{dest.user}", "alice"),
        ("%{dest.domain}", "example.org"),
        ("%{user.username}", "alice"),
        ("%{user.directory}", "/home/alice"),
        ("%{mbox.from}", "Bob.Smith+list@Sender.example"),
        ("%{mda}", "/usr/bin/procmail -d alice"),
        ("/var/vmail/%{dest.domain}/%{dest.user}", "/var/vmail/example.org/alice"),
        ("100%% %{dest.user}", "100% alice"),
        ("no specifiers at all", "no specifiers at all"),
        ("", ""),
    ],
)
def test_each_specifier(template: str, expected: str) -> None:
    assert expand_format(template, CTX) == expected


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("%{sender}", ""),
        ("%{sender.user}", ""),
        ("%{sender.domain}", ""),
        ("%{mbox.from}", "MAILER-DAEMON"),
        ("x%{sender}y", "xy"),
    ],
)
def test_null_sender(template: str, expected: str) -> None:
    assert expand_format(template, NULL_CTX) == expected


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        # The examples documented for OpenSMTPD, domain "example.org".
        ("%{rcpt.domain[0]}", "e"),
        ("%{rcpt.domain[1]}", "x"),
        ("%{rcpt.domain[8:]}", "org"),
        ("%{rcpt.domain[-3:]}", "org"),
        ("%{rcpt.domain[0:6]}", "example"),
        ("%{rcpt.domain[0:-4]}", "example"),
        # Ours: the edges.
        ("%{rcpt.domain[-1]}", "g"),
        ("%{rcpt.domain[:2]}", "exa"),
        ("%{rcpt.domain[99]}", ""),
        ("%{rcpt.domain[-99]}", ""),
        ("%{rcpt.domain[5:2]}", ""),
        ("%{rcpt.domain[-99:1]}", "ex"),
        ("%{rcpt.domain[8:99]}", "org"),
        ("%{rcpt.user[0]}/%{rcpt.user}", "u/user"),
    ],
)
def test_substrings(template: str, expected: str) -> None:
    assert expand_format(template, DOMAIN_CTX) == expected


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        # Documented examples, recipient "User+Tag@Example.org".
        ("%{rcpt:lowercase}", "user+tag@example.org"),
        ("%{rcpt:uppercase}", "USER+TAG@EXAMPLE.ORG"),
        ("%{rcpt:strip}", "User@Example.org"),
        ("%{rcpt:lowercase|strip}", "user@example.org"),
        # The ':' chaining form means the same.
        ("%{rcpt:lowercase:strip}", "user@example.org"),
        ("%{rcpt.user:strip|uppercase}", "USER"),
        ("%{rcpt.user:lowercase|strip|raw}", "user"),
        # Modifiers first, then the substring.
        ("%{rcpt.user[0:1]:lowercase}", "us"),
        ("%{rcpt.user[-3:]:strip}", "ser"),
        ("%{rcpt.domain:raw}", "Example.org"),
        ("%{sender.user:strip}", "Bob.Smith"),
    ],
)
def test_modifiers(template: str, expected: str) -> None:
    assert expand_format(template, CTX) == expected


def test_strip_uses_configured_delimiter() -> None:
    ctx = FormatContext(
        sender="", rcpt="a-b+c@x", dest="a-b+c@x", user_name="a", user_dir="/", sub_addr_delim="-"
    )
    assert expand_format("%{rcpt:strip}", ctx) == "a@x"
    assert strip_tag("+tag@x", "+") == "+tag@x"  # no user left to keep
    assert strip_tag("plain", "+") == "plain"


def _ctx_with_user(user: str) -> FormatContext:
    return FormatContext(
        sender=f"{user}@evil.example",
        rcpt=f"{user}@example.org",
        dest="alice@example.org",
        user_name="alice",
        user_dir="/home/alice",
    )


@pytest.mark.parametrize(
    ("user", "expected"),
    [
        ("a/../b", "a:..:b"),
        ("../x", ":.:x"),
        ("..", ":."),
        (".hidden", ":hidden"),
        ("$(rm -rf ~)", "::rm:-rf:::"),
        ('"a b;c|d`e"', ":a:b:c:d:e:"),
        ("tab\there", "tab:here"),
        ("new\nline", "new:line"),
        ("café", "caf:"),
        ("ok-_.+=,", "ok-_.+=,"),
    ],
)
def test_unsafe_characters_replaced(user: str, expected: str) -> None:
    assert expand_format("%{rcpt.user}", _ctx_with_user(user)) == expected


def test_raw_keeps_everything() -> None:
    ctx = _ctx_with_user("../a b")
    assert expand_format("%{rcpt.user:raw}", ctx) == "../a b"
    assert expand_format("%{rcpt.user}", ctx, raw_default=True) == "../a b"
    assert expand_format("%{rcpt.user:lowercase}", ctx, raw_default=True) == "../a b"


@pytest.mark.parametrize(
    ("template", "user", "expected"),
    [
        ("%{rcpt.user}", "-oProxyCommand=x", ":oProxyCommand=x"),
        ("%{rcpt.user:raw}", "-f/etc/passwd", ":f/etc/passwd"),
        ("%{sender}", "--help", ":-help@evil.example"),
        ("%{rcpt.user:lowercase|strip}", "-X+tag", ":x"),
        # a dash that only the substring brings to the front
        ("%{rcpt.user[1:]}", "a-rf", ":rf"),
        ("%{rcpt.user[-2:]:raw}", "ab-c", ":c"),
        # inside a value, or in the template itself, a dash stays
        ("%{rcpt.user}", "a-b", "a-b"),
        ("-f %{rcpt.user}", "bob", "-f bob"),
        ("--to=%{rcpt.user}", "-x", "--to=:x"),
    ],
)
def test_leading_dash_neutralised(template: str, user: str, expected: str) -> None:
    assert expand_format(template, _ctx_with_user(user)) == expected


def test_leading_dash_neutralised_with_raw_default_but_not_in_trusted_values() -> None:
    ctx = FormatContext(sender="-s@x", rcpt="-r@x", dest="-d@x", user_name="-u",
                        user_dir="-home", mda="-mda")
    assert expand_format("prog %{sender} %{rcpt} %{dest} %{user.username}", ctx,
                         raw_default=True) == "prog :s@x :r@x :d@x :u"
    assert expand_format("%{user.directory} %{mda}", ctx) == "-home -mda"


def test_leading_dot_neutralised_after_substring() -> None:
    ctx = _ctx_with_user("a..b")
    # The substring starts with a dot: it must not survive at the front.
    assert expand_format("%{rcpt.user[1:]}", ctx) == ":.b"
    assert expand_format("/m/.%{rcpt.user[1:2]}", ctx) == "/m/.:."


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("~", "/home/alice"),
        ("~/Maildir", "/home/alice/Maildir"),
        ("~/Maildir/%{dest.user}", "/home/alice/Maildir/alice"),
        ("/x/~/y", "/x/~/y"),  # only at the start
    ],
)
def test_home(template: str, expected: str) -> None:
    assert expand_format(template, CTX) == expected


@pytest.mark.parametrize(
    "template",
    [
        "%{nope}",
        "%{rcpt.nope}",
        "%{user}",
        "%{rcpt.user.x}",
        "%{RCPT}",
        "%{}",
        "%{rcpt",
        "%{rcpt:bogus}",
        "%{rcpt:}",
        "%{rcpt:lowercase|}",
        "%{rcpt:lowercase||strip}",
        "%{rcpt[x]}",
        "%{rcpt[]}",
        "%{rcpt[1:2:3]}",
        "%{rcpt[1}",
        "%{rcpt[1]x}",
        "%{ rcpt}",
        "%x",
        "trailing %",
        "%",
        "~bob/Maildir",
    ],
)
def test_bad_templates_raise(template: str) -> None:
    with pytest.raises(ValueError):
        expand_format(template, CTX)
    # The config check uses a dummy, empty context: it must find them too.
    with pytest.raises(ValueError):
        expand_format(template, FormatContext("", "", "", "", ""))


addresses = st.text(min_size=0, max_size=40)


@given(user=addresses, domain=addresses)
def test_no_escape_from_base_directory(user: str, domain: str) -> None:
    ctx = FormatContext(
        sender=f"{user}@{domain}",
        rcpt=f"{user}@{domain}",
        dest=f"{user}@{domain}",
        user_name="u",
        user_dir="/home/u",
    )
    for template in (
        "/base/%{rcpt.user}",
        "/base/%{rcpt.domain}/%{rcpt.user}",
        "/base/%{sender.user}%{rcpt.user[1:]}",
        "/base/.%{dest.user:lowercase|strip}",
    ):
        out = expand_format(template, ctx)
        assert ".." not in out.split("/")
        assert (os.path.normpath(out) + "/").startswith("/base/")
        assert set(out) <= SAFE_CHARS | {":", "/"}
