"""Matching semantics of built-in tables on check (docs/table-protocol.md §6)."""

from __future__ import annotations

import pytest
from mailrider.errors import TempFail
from mailrider.table.match import (
    EntryIndex,
    address_of,
    glob_match,
    mailaddr_candidates,
    match_domain,
    match_mailaddr,
    match_netaddr,
    match_regex,
    netaddr_candidates,
)
from mailrider.table.values import Mailaddr, parse_mailaddr


@pytest.mark.parametrize(
    ("pattern", "name", "expected"),
    [
        ("example.org", "example.org", True),
        ("Example.ORG", "example.org", True),
        ("example.org", "www.example.org", False),
        ("*.example.org", "www.example.org", True),
        ("*.example.org", "a.b.example.org", True),
        ("*.example.org", "example.org", False),
        ("*.example.org", "badexample.org", False),
        ("*", "anything.at.all", True),
        ("mx*.example.org", "mx1.example.org", True),
        ("mx*.example.org", "www.example.org", False),
        ("a.b", "axb", False),  # dots are literal, not regex wildcards
    ],
)
def test_domain(pattern: str, name: str, expected: bool) -> None:
    assert match_domain(pattern, name) is expected
    assert glob_match(pattern, name) is expected


@pytest.mark.parametrize(
    ("pattern", "key", "expected"),
    [
        ("192.0.2.1", "192.0.2.1", True),
        ("192.0.2.1", "192.0.2.2", False),
        ("192.0.2.0/24", "192.0.2.200", True),
        ("192.0.2.0/24", "192.0.3.1", False),
        ("192.0.2.9/24", "192.0.2.1", True),  # host bits ignored, as OpenSMTPD masks
        ("0.0.0.0/0", "203.0.113.5", True),
        ("2001:db8::/32", "[2001:db8::5]", True),
        ("[2001:db8::1]", "[2001:db8::1]", True),
        ("2001:db8::1", "[2001:db8::1]", True),
        ("[2001:db8::1]", "2001:db8::1", True),
        ("::/0", "192.0.2.1", False),  # families never mix
        ("0.0.0.0/0", "[2001:db8::1]", False),
        ("192.0.2.0/24", "[::ffff:192.0.2.4]", True),  # v4-mapped counts as v4
        ("local", "local", True),
        ("local", "127.0.0.1", False),
        ("127.0.0.0/8", "local", False),
        ("mail.example.org", "mail.example.org", True),  # rdns keys: exact
        ("garbage", "192.0.2.1", False),
    ],
)
def test_netaddr(pattern: str, key: str, expected: bool) -> None:
    assert match_netaddr(pattern, key) is expected


def test_address_of() -> None:
    assert str(address_of("[IPv6:2001:db8::1]")) == "2001:db8::1"
    assert address_of("local") is None


@pytest.mark.parametrize(
    ("pattern", "address", "expected"),
    [
        ("joe", "joe@example.org", True),
        ("joe", "joe@other.net", True),
        ("joe", "joey@example.org", False),
        ("joe", "joe+list@example.org", True),  # tag ignored...
        ("joe+list", "joe+list@example.org", True),  # ...unless the entry has one
        ("joe+list", "joe@example.org", False),
        ("joe+list", "joe+other@example.org", False),
        ("@example.org", "anyone@example.org", True),
        ("@example.org", "anyone@example.net", False),
        ("joe@example.org", "joe@example.org", True),
        ("joe@example.org", "joe@example.net", False),
        ("joe@*.example.org", "joe@mx.example.org", True),
        ("@*", "x@y", True),
        ("@", "x@y", True),
        ("Joe@Example.org", "joe@example.org", True),
    ],
)
def test_mailaddr(pattern: str, address: str, expected: bool) -> None:
    assert match_mailaddr(parse_mailaddr(pattern), address) is expected


def test_mailaddr_other_delimiter() -> None:
    assert match_mailaddr(Mailaddr("joe", ""), "joe-list@x", delim="-")
    assert not match_mailaddr(Mailaddr("joe", ""), "joe+list@x", delim="-")


def test_regex_is_searched_case_insensitively() -> None:
    assert match_regex(r"example\.(org|net)$", "mx.example.net")
    assert match_regex("^MX", "mx.example.org")
    assert not match_regex(r"^example\.org$", "mx.example.org")


def test_invalid_regex_is_a_temporary_failure() -> None:
    with pytest.raises(TempFail, match="invalid regular expression"):
        match_regex("(unclosed", "x")


def test_candidates() -> None:
    assert mailaddr_candidates("joe+x@example.org") == [
        "joe+x@example.org",
        "joe+x",
        "joe@example.org",
        "joe",
        "@example.org",
        "@",
    ]
    assert "[2001:db8::1]" in netaddr_candidates("2001:db8::1")
    assert "2001:db8::1" in netaddr_candidates("[2001:db8::1]")
    assert netaddr_candidates("local") == ["local"]


def test_entry_index_per_service() -> None:
    idx = EntryIndex(
        ["*.example.org", "example.net", "192.0.2.0/24", "local", "joe", "@example.com"]
    )
    assert len(idx) == 6
    assert idx.check("domain", "mx.example.org")
    assert idx.check("domain", "example.net")
    assert not idx.check("domain", "example.org")
    assert idx.check("netaddr", "192.0.2.77")
    assert idx.check("netaddr", "local")
    assert not idx.check("netaddr", "198.51.100.1")
    assert not idx.check("netaddr", "unknown.host")
    assert idx.check("mailaddr", "joe+tag@anywhere.net")
    assert idx.check("mailaddr", "someone@example.com")
    assert not idx.check("mailaddr", "someone@example.net")
    rx = EntryIndex([r"^ab+c$", r"\.Example\.org$"])
    assert rx.check("regex", "abbbc")
    assert rx.check("regex", "mx.example.org")
    assert not rx.check("regex", "ac")
    with pytest.raises(TempFail):
        idx.check("regex", "anything")  # "*.example.org" is not a regex
    assert idx.check("string", "joe")
    assert idx.check("string", "JOE")
    assert not idx.check("string", "jo")
    assert "example.net" in idx
    assert "nothere" not in idx


def test_entry_index_wildcard_mailaddr_and_bad_entries() -> None:
    idx = EntryIndex(["@*.example.org", "bad entry@x", "a@b@c"])
    assert idx.check("mailaddr", "x@mx.example.org")
    assert not idx.check("mailaddr", "x@example.org")
    assert not idx.check("mailaddr", "bad entry@x")
    assert not idx.check("mailaddr", "c@d")
