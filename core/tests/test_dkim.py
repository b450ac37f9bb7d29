"""mailrider.dkim: canonicalisation (RFC 6376 3.4), h= and oversigning, the
field, klondike's input check; signatures checked by dkimpy, an independent
verifier, for rsa-sha256 and ed25519-sha256 in every canonicalisation."""

from __future__ import annotations

import base64
import hashlib
import os
import pathlib
import sys
from collections.abc import Iterator

import pytest
from mailrider import dkim
from mailrider.crypto import libcrypto
from mailrider.crypto.dkimkeys import DkimKeyStore

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "crypto"))

from dkim_util import make_key, verify

#: RFC 6376 3.4.5's example, with LF line ends as the spool keeps them
EXAMPLE = b"A: X\nB : Y\t\n\tZ  \n\n C \nD \t E\n\n\n"

MSG = (b"Received: from client by us\n"
       b'From: "Doe, Jane" <jane@Example.ORG>\n'
       b"To: bob@remote.test,\n  carol@remote.test\n"
       b"Subject:  hello   world \t\n"
       b"Date: Mon, 7 Dec 2026 16:00:00 +0000\n"
       b"Message-ID: <1@example.org>\n"
       b"X-Not-Signed: 1\n"
       b"\n"
       b"first  line \t\n"
       b".leading dot\n"
       b"\n"
       b"  indented\n"
       b"\n\n\n")


def hash_message(data: bytes, body_canon: str, step: int = 0) -> tuple[list[bytes], bytes]:
    h = dkim.MessageHasher(body_canon)
    if step:
        for i in range(0, len(data), step):
            h.feed(data[i:i + step])
    else:
        h.feed(data)
    return h.finish()


# -- canonicalisation ------------------------------------------------------------


def test_rfc6376_example_relaxed() -> None:
    fields, bh = hash_message(EXAMPLE, "relaxed")
    assert [dkim.canon_header(f, "relaxed") for f in fields] == [b"a:X\r\n", b"b:Y Z\r\n"]
    assert bh == hashlib.sha256(b" C\r\nD E\r\n").digest()


def test_rfc6376_example_simple() -> None:
    fields, bh = hash_message(EXAMPLE, "simple")
    assert [dkim.canon_header(f, "simple") for f in fields] == [b"A: X\r\n",
                                                                b"B : Y\t\r\n\tZ  \r\n"]
    assert bh == hashlib.sha256(b" C \r\nD \t E\r\n").digest()


@pytest.mark.parametrize("method", ["simple", "relaxed"])
def test_any_split_and_any_line_end_hash_alike(method: str) -> None:
    want = hash_message(MSG, method)
    for step in (1, 2, 3, 7, 64):
        assert hash_message(MSG, method, step) == want
    crlf = MSG.replace(b"\n", b"\r\n")
    assert hash_message(crlf, method, 1) == want
    assert hash_message(crlf, method, 5) == want
    # a lone CR ends a line on the wire too (smtp/client.py BodyEncoder)
    assert hash_message(MSG.replace(b"\n", b"\r"), method, 3) == want


def test_empty_body_and_unterminated_last_line() -> None:
    assert hash_message(b"From: a@b.example\n\n", "simple")[1] == \
        hashlib.sha256(b"\r\n").digest()
    assert hash_message(b"From: a@b.example\n\n", "relaxed")[1] == hashlib.sha256(b"").digest()
    assert hash_message(b"From: a@b.example\n\n \t\n\n", "relaxed")[1] == \
        hashlib.sha256(b"").digest()
    # no empty line: all header, empty body
    fields, bh = hash_message(b"From: a@b.example\nSubject: x", "simple")
    assert fields == [b"From: a@b.example\r\n", b"Subject: x\r\n"]
    assert bh == hashlib.sha256(b"\r\n").digest()
    assert hash_message(b"From: a@b.example\n\nlast", "simple")[1] == \
        hashlib.sha256(b"last\r\n").digest()


def test_header_section_is_bounded() -> None:
    huge = b"From: a@b.example\n" + b"X-Big: " + b"x" * 900 + b"\n" * 1
    with pytest.raises(dkim.DkimError, match="too large"):
        hash_message(huge * (dkim.HEADER_MAX // 900 + 2) + b"\nbody\n", "relaxed", 4096)


# -- h=, the From domain, the key -------------------------------------------------


def test_signed_names_oversign_from_and_skip_others() -> None:
    fields, _ = hash_message(MSG, "relaxed")
    names = dkim.signed_names(fields)
    assert names == ["from", "from", "subject", "date", "to"]
    assert "received" not in names and "x-not-signed" not in names
    fields2, _ = hash_message(b"From: a@b.example\nTo: x@y.example\nTo: z@y.example\n\n",
                              "relaxed")
    assert dkim.signed_names(fields2) == ["from", "from", "to", "to"]


@pytest.mark.parametrize(("value", "domain"), [
    (b'"Doe, Jane" <jane@Example.ORG>', "example.org"),
    (b"jane@sub.example.org", "sub.example.org"),
    (b"Jane (comment, here) <jane@example.org>", "example.org"),
    (b"a@example.org, b@example.net", None),
    (b"<a@example.org> <b@example.org>", None),
    (b"undisclosed", None),
])
def test_from_domain(value: bytes, domain: str | None) -> None:
    assert dkim.from_domain([b"From: " + value + b"\r\n"]) == domain


def test_from_domain_needs_exactly_one_from() -> None:
    assert dkim.from_domain([]) is None
    assert dkim.from_domain([b"From: a@x.example\r\n", b"From: b@x.example\r\n"]) is None


def test_choose_exact_then_closest_parent() -> None:
    org = dkim.Signer("org", "example.org", "s1")
    sub = dkim.Signer("sub", "mail.example.org", "s1")
    net = dkim.Signer("net", "example.net", "s1")
    assert dkim.choose([org, sub, net], "example.org") is org
    assert dkim.choose([org, sub, net], "a.mail.example.org") is sub
    assert dkim.choose([org, sub, net], "other.example.org") is org
    assert dkim.choose([org, sub, net], "example.com") is None
    assert dkim.choose([org], "notexample.org") is None


@pytest.mark.parametrize("bad", [
    {"domain": "bad domain"}, {"domain": "x;y.example"}, {"selector": "s1;t=1"},
    {"selector": "a\r\nb"}, {"algorithm": "rsa-sha1"}, {"canonicalization": "none"},
])
def test_signer_refuses_what_could_break_the_field(bad: dict[str, str]) -> None:
    args = {"domain": "example.org", "selector": "s1", "algorithm": "rsa-sha256",
            "canonicalization": "relaxed/relaxed"} | bad
    with pytest.raises(dkim.DkimError):
        dkim.Signer("k", **args)


# -- signatures, checked by dkimpy ------------------------------------------------


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DkimKeyStore, dict]]:
    d = tmp_path_factory.mktemp("dkim")
    s = DkimKeyStore()
    records = {}
    rsa_key = make_key(d, "rsa", "rsa")
    ed_key = make_key(d, "ed", "ed25519") if libcrypto.available() else None
    for alg, key in (("rsa-sha256", rsa_key), ("ed25519-sha256", ed_key)):
        if key is None:
            continue
        for canon in dkim.CANONICALIZATIONS:
            name = f"{alg}-{canon}"
            selector = f"{alg.split('-')[0]}{dkim.CANONICALIZATIONS.index(canon)}"
            s.load(dkim.Signer(name, "example.org", selector, alg, canon), key)
            records[f"{selector}._domainkey.example.org."] = s.dns_record(name)
    yield s, records
    s.close()


def sign(store: DkimKeyStore, name: str, message: bytes, when: int = 1796659200) -> bytes:
    signer = store.signer(name)
    fields, bh = hash_message(message, signer.body_canon, 13)
    prepared = dkim.prepare(signer, fields, bh, when)
    return prepared.field(store.sign(name, prepared.signing_input)) + \
        message.replace(b"\n", b"\r\n")


@pytest.mark.parametrize("canon", dkim.CANONICALIZATIONS)
@pytest.mark.parametrize("alg", dkim.ALGORITHMS)
def test_dkimpy_verifies_our_signature(store: tuple[DkimKeyStore, dict], alg: str,
                                       canon: str) -> None:
    s, records = store
    name = f"{alg}-{canon}"
    if name not in s:
        pytest.skip("ed25519 needs libcrypto")
    signed = sign(s, name, MSG)
    assert verify(signed, records)
    tags, bh_ok, _ = dkim.verification_input(signed)
    assert bh_ok and tags["d"] == "example.org" and tags["a"] == alg and tags["c"] == canon
    # what each canonicalisation forgives, and what breaks any signature
    if canon.endswith("/relaxed"):
        assert verify(signed.replace(b"first  line", b"first line"), records)
    assert not verify(signed.replace(b"first  line", b"first  lime"), records)
    if canon.startswith("relaxed/"):
        assert verify(signed.replace(b"Subject:  hello", b"subject: hello"), records)
    assert not verify(signed.replace(b"hello   world", b"hullo   world"), records)
    # From is oversigned: a second From added later breaks the signature
    assert not verify(signed.replace(b"Received:", b"From: mallory@evil.example\r\nReceived:"),
                      records)
    # an unsigned field may be added
    assert verify(signed.replace(b"X-Not-Signed: 1", b"X-Not-Signed: 2"), records)


def test_long_header_list_folds_and_verifies(store: tuple[DkimKeyStore, dict]) -> None:
    s, records = store
    many = b"".join(b"To: rcpt%d@remote.test\n" % i for i in range(30))
    msg = b"From: a@example.org\nReply-To: b@example.org\nCc: c@x.test\n" + many + b"\nhi\n"
    signed = sign(s, "rsa-sha256-simple/simple", msg)
    field = signed.split(b"\r\n\r\n")[0].split(b"\r\nFrom:")[0]
    assert all(len(line) <= 78 for line in field.split(b"\r\n"))
    assert verify(signed, records)


# -- what klondike signs ----------------------------------------------------------


def _input(signer: dkim.Signer, message: bytes = MSG) -> bytes:
    fields, bh = hash_message(message, signer.body_canon)
    return dkim.prepare(signer, fields, bh, 1796659200).signing_input


SIGNER = dkim.Signer("k", "example.org", "s1")


def test_check_accepts_what_prepare_makes() -> None:
    for canon in dkim.CANONICALIZATIONS:
        signer = dkim.Signer("k", "example.org", "s1", "rsa-sha256", canon)
        dkim.check_signing_input(_input(signer), signer)


@pytest.mark.parametrize(("change", "why"), [
    (lambda d: d.replace(b"d=example.org", b"d=example.net"), "d="),
    (lambda d: d.replace(b"s=s1", b"s=s2"), "s="),
    (lambda d: d.replace(b"a=rsa-sha256", b"a=ed25519-sha256"), "a="),
    (lambda d: d.replace(b"c=relaxed/relaxed", b"c=simple/simple"), "c="),
    (lambda d: d + b"AAAA", "b= must be last and empty"),
    (lambda d: d.replace(b"h=from:from", b"h=to"), "h="),
    (lambda d: b"x-evil:1\r\n" + d, "do not follow h="),
    (lambda d: d.replace(b"subject:hello world", b"Subject:  hello"), "canonicalised"),
    (lambda d: d.rpartition(b"dkim-signature:")[0], "does not end"),
    (lambda d: d + bytes(range(128, 200)), "ASCII"),
    (lambda d: d.replace(b"bh=", b"bh=AAAA"), "bh="),
    (lambda d: d.replace(b"v=1;", b"v=1; l=0;"), "tag l= is not one we sign"),
    (lambda d: d.replace(b"v=1;", b"v=1; i=@example.org;"), "tag i= is not one we sign"),
    (lambda d: d.replace(b"t=1796659200", b"t=soon"), "t= is not a time"),
])
def test_check_refuses_anything_else(change: object, why: str) -> None:
    data = _input(SIGNER)
    assert callable(change)
    with pytest.raises(dkim.DkimError, match=why):
        dkim.check_signing_input(change(data), SIGNER)


def test_check_refuses_oversize_input() -> None:
    with pytest.raises(dkim.DkimError, match="too large"):
        dkim.check_signing_input(b"a" * (dkim.SIGNING_INPUT_MAX + 1), SIGNER)


def test_store_refuses_what_the_check_refuses(store: tuple[DkimKeyStore, dict]) -> None:
    from mailrider.crypto.keys import SignError

    s, _ = store
    name = "rsa-sha256-relaxed/relaxed"
    signer = s.signer(name)
    good = _input(signer)
    assert len(s.sign(name, good)) == 256
    with pytest.raises(SignError, match="not a DKIM signing input"):
        s.sign(name, good.replace(b"d=example.org", b"d=evil.example"))
    # a TLS-style DigestInfo is no DKIM input
    digest_info = bytes.fromhex("3031300d060960864801650304020105000420") + bytes(32)
    with pytest.raises(SignError):
        s.sign(name, digest_info)
    with pytest.raises(SignError, match="no dkim key"):
        s.sign("nope", good)


def test_prepare_never_writes_message_bytes_into_the_field() -> None:
    evil = b"From: a@example.org\nSubject: x\r\n\tb=; d=evil.example\n\nbody\n"
    fields, bh = hash_message(evil, "relaxed")
    prepared = dkim.prepare(SIGNER, fields, bh, 1)
    assert b"evil" not in prepared.field_prefix.encode()
    assert base64.b64decode(dkim.parse_tags(prepared.field_prefix.encode().partition(b":")[2])
                            ["bh"]) == bh


def test_dns_record_shapes(store: tuple[DkimKeyStore, dict]) -> None:
    s, _ = store
    assert s.dns_record("rsa-sha256-relaxed/relaxed").startswith("v=DKIM1; k=rsa; p=MII")
    if "ed25519-sha256-relaxed/relaxed" in s:
        rec = s.dns_record("ed25519-sha256-relaxed/relaxed")
        assert rec.startswith("v=DKIM1; k=ed25519; p=")
        assert len(base64.b64decode(rec.rpartition("p=")[2])) == 32


def test_pure_python_rsa_signs_like_libcrypto(tmp_path: pathlib.Path) -> None:
    if not libcrypto.available():
        pytest.skip("needs libcrypto to compare")
    key = make_key(tmp_path, "r", "rsa")
    signer = dkim.Signer("k", "example.org", "s1")
    py, lc = DkimKeyStore("python"), DkimKeyStore("libcrypto")
    py.load(signer, key)
    lc.load(signer, key)
    data = _input(signer)
    # PKCS#1 v1.5 is deterministic: both backends give the same bytes
    assert py.sign("k", data) == lc.sign("k", data)
    assert py.dns_record("k") == lc.dns_record("k")
    lc.close()
