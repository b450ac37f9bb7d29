"""The DANE TLSA matcher (crypto/dane.py) and the DANE-TA path check
(crypto/x509chain.py), on certificates the openssl CLI made (dane_util)."""

from __future__ import annotations

import pathlib

import pytest
from dane_util import OPENSSL, DanePki, make_dane_pki, rdata, tlsa
from mailrider.crypto import dane, x509chain
from mailrider.crypto.dane import Tlsa

pytestmark = pytest.mark.skipif(OPENSSL is None, reason="openssl CLI not installed")
NAME = "mx.dane.test"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[pathlib.Path, DanePki]:
    d = tmp_path_factory.mktemp("dane")
    return d, make_dane_pki(d, NAME)


def check() -> dane.PathCheck:
    if not x509chain.available():
        pytest.skip("no libcrypto binding: DANE-TA cannot be checked here")
    return x509chain.check_path


@pytest.mark.parametrize("selector", [0, 1])
@pytest.mark.parametrize("mtype", [0, 1, 2])
def test_dane_ee_every_selector_and_matching_type(
        pki: tuple[pathlib.Path, DanePki], selector: int, mtype: int) -> None:
    d, p = pki
    rec = dane.parse_tlsa(rdata(3, selector, mtype, tlsa(d, p.ee, selector, mtype)))
    assert dane.usable(rec)
    # DANE-EE: names are ignored (the ee certificate names another host)
    out = dane.verify([rec], [p.ee.der], [NAME], None)
    assert out.ok and out.depth == 0 and out.record == rec
    # another certificate does not match
    out = dane.verify([rec], [p.leaf.der, p.inter.der], [NAME], None)
    assert not out.ok and "DANE-EE" in out.reason
    # one flipped octet of the association data
    bad = Tlsa(3, selector, mtype, rec.data[:-1] + bytes([rec.data[-1] ^ 1]))
    assert not dane.verify([bad], [p.ee.der], [NAME], None).ok


@pytest.mark.parametrize("selector", [0, 1])
@pytest.mark.parametrize("mtype", [0, 1, 2])
def test_dane_ta_every_selector_and_matching_type(
        pki: tuple[pathlib.Path, DanePki], selector: int, mtype: int) -> None:
    d, p = pki
    path = check()
    rec = Tlsa(2, selector, mtype, tlsa(d, p.inter, selector, mtype))
    out = dane.verify([rec], [p.leaf.der, p.inter.der], [NAME], path)
    assert out.ok, out.reason
    assert out.depth == 1
    # the same anchor, a leaf for another name: refused on the name
    out = dane.verify([rec], [p.other.der, p.inter.der], [NAME], path)
    assert not out.ok and "mismatch" in out.reason.lower(), out.reason
    # but the name may be one of several reference identifiers
    assert dane.verify([rec], [p.other.der, p.inter.der], [NAME, "other.invalid"], path).ok
    # an anchor the leaf does not chain to (the root is not sent, and the
    # intermediate is not in the record)
    root = Tlsa(2, selector, mtype, tlsa(d, p.ca, selector, mtype))
    out = dane.verify([root], [p.leaf.der, p.inter.der], [NAME], path)
    if selector == 0 and mtype == 0:
        assert out.ok, out.reason  # 2 0 0: the record is the anchor itself
    else:
        assert not out.ok


def test_dane_ta_root_sent_in_the_chain(pki: tuple[pathlib.Path, DanePki]) -> None:
    d, p = pki
    path = check()
    rec = Tlsa(2, 1, 1, tlsa(d, p.ca, 1, 1))
    out = dane.verify([rec], [p.leaf.der, p.inter.der, p.ca.der], [NAME], path)
    assert out.ok and out.depth == 2, out.reason


def test_dane_ta_does_not_match_the_leaf_as_anchor(pki: tuple[pathlib.Path, DanePki]) -> None:
    """A 2 x x record naming the leaf is no trust anchor for it (depth > 0 only)."""
    d, p = pki
    rec = Tlsa(2, 1, 1, tlsa(d, p.ee, 1, 1))
    assert not dane.verify([rec], [p.ee.der], [NAME], check()).ok


def test_dane_ta_without_path_check_never_passes(pki: tuple[pathlib.Path, DanePki]) -> None:
    d, p = pki
    rec = Tlsa(2, 1, 1, tlsa(d, p.inter, 1, 1))
    out = dane.verify([rec], [p.leaf.der, p.inter.der], [NAME], None)
    assert not out.ok and "cannot be checked" in out.reason


def test_any_usable_record_of_the_set_may_match(pki: tuple[pathlib.Path, DanePki]) -> None:
    d, p = pki
    wrong = Tlsa(3, 1, 1, b"\x00" * 32)
    right = Tlsa(3, 1, 1, tlsa(d, p.ee, 1, 1))
    out = dane.verify([wrong, right], [p.ee.der], [NAME], None)
    assert out.ok and out.record == right


@pytest.mark.parametrize("rec,why", [
    (Tlsa(0, 1, 1, b"\x01" * 32), "PKIX-TA is unusable for SMTP"),
    (Tlsa(1, 1, 1, b"\x01" * 32), "PKIX-EE is unusable for SMTP"),
    (Tlsa(4, 1, 1, b"\x01" * 32), "unknown usage"),
    (Tlsa(255, 1, 1, b"\x01" * 32), "private usage"),
    (Tlsa(3, 2, 1, b"\x01" * 32), "unknown selector"),
    (Tlsa(3, 1, 3, b"\x01" * 32), "unknown matching type"),
    (Tlsa(3, 1, 1, b"\x01" * 31), "SHA-256 digest too short"),
    (Tlsa(3, 1, 1, b"\x01" * 33), "SHA-256 digest too long"),
    (Tlsa(3, 1, 2, b"\x01" * 32), "SHA-512 digest of SHA-256 length"),
    (Tlsa(3, 0, 0, b""), "empty full data"),
])
def test_hostile_records_are_unusable(pki: tuple[pathlib.Path, DanePki], rec: Tlsa,
                                      why: str) -> None:
    _, p = pki
    assert not dane.usable(rec), why
    out = dane.verify([rec], [p.ee.der], [NAME], None)
    assert not out.ok and out.reason == "no usable TLSA record", why


def test_unusable_record_with_right_digest_still_never_matches(
        pki: tuple[pathlib.Path, DanePki]) -> None:
    """PKIX-EE(1) naming the very certificate: SMTP ignores it (RFC 7672 §3.1.3)."""
    d, p = pki
    rec = Tlsa(1, 1, 1, tlsa(d, p.ee, 1, 1))
    assert not dane.matches(rec, p.ee.der)
    assert not dane.verify([rec], [p.ee.der], [NAME], None).ok


@pytest.mark.parametrize("raw", [b"", b"\x03", b"\x03\x01\x01", bytes([3, 1, 1]) + b"x" * 20000])
def test_parse_refuses_short_and_huge_rdata(raw: bytes) -> None:
    with pytest.raises(ValueError):
        dane.parse_tlsa(raw)


def test_parse_round_trip() -> None:
    rec = dane.parse_tlsa(bytes([3, 1, 1]) + bytes(range(32)))
    assert (rec.usage, rec.selector, rec.mtype, rec.data) == (3, 1, 1, bytes(range(32)))
    assert str(rec) == "3 1 1 " + bytes(range(32)).hex()


@pytest.mark.parametrize("cert", [b"", b"\x30\x03\x02\x01\x01", b"\xff" * 40])
def test_garbage_certificates_match_nothing(pki: tuple[pathlib.Path, DanePki],
                                            cert: bytes) -> None:
    d, p = pki
    for rec in (Tlsa(3, 1, 1, tlsa(d, p.ee, 1, 1)), Tlsa(3, 1, 0, b"\x30\x00"),
                Tlsa(2, 1, 1, tlsa(d, p.inter, 1, 1))):
        out = dane.verify([rec], [cert, cert], [NAME], check())
        assert not out.ok


def test_path_check_refuses_garbage_and_long_chains(pki: tuple[pathlib.Path, DanePki]) -> None:
    _, p = pki
    path = check()
    assert path(b"junk", [], p.inter.der, [NAME]) == "a certificate of the chain does not parse"
    assert path(p.leaf.der, [p.inter.der] * 11, p.ca.der, [NAME]) == \
        "certificate chain too long"
    assert path(p.leaf.der, [], p.inter.der, [NAME]) == ""
