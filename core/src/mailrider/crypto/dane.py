"""DANE TLSA records for SMTP (RFC 6698, RFC 7218 names, RFC 7672 §3).

Invariants:

* :func:`parse_tlsa` turns TLSA RDATA into a :class:`Tlsa` or raises
  ``ValueError``; :func:`usable` says whether SMTP may use a record:
  usages DANE-TA(2) and DANE-EE(3) only (PKIX-TA(0) and PKIX-EE(1) are
  unusable for SMTP, RFC 7672 §3.1.3), selectors Cert(0) and SPKI(1),
  matching types Full(0), SHA2-256(1) and SHA2-512(2), and a digest of
  exactly its length (32 or 64 octets). Anything else is unusable and is
  ignored; a set with no usable record is the same as no TLSA at all
  (RFC 7672 §2.2, unusable records).
* :func:`verify` decides from the peer's chain (leaf first, DER) alone:
  a DANE-EE(3) record matches the leaf, with names and dates ignored
  (RFC 7672 §3.1.1); a DANE-TA(2) record matches a certificate of the
  chain above the leaf (or, with ``2 0 0``, is the anchor certificate
  itself), and the leaf must chain to that anchor with valid signatures
  and dates and carry one of the reference names (RFC 7672 §3.1.2,
  §3.2.2): that check is OpenSSL's path validation through
  :mod:`mailrider.crypto.x509chain`; where it cannot be done, a DANE-TA
  record cannot match (never a pass by default).
* Nothing raises on hostile input: a certificate that does not parse
  matches no record.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from mailrider.crypto import der

__all__ = [
    "DANE_EE",
    "DANE_TA",
    "Outcome",
    "Tlsa",
    "matches",
    "parse_tlsa",
    "usable",
    "verify",
]

PKIX_TA, PKIX_EE, DANE_TA, DANE_EE = 0, 1, 2, 3
SEL_CERT, SEL_SPKI = 0, 1
MT_FULL, MT_SHA256, MT_SHA512 = 0, 1, 2
_DIGEST_SIZE = {MT_SHA256: 32, MT_SHA512: 64}
#: the largest certificate or key a Full(0) record may hold (a TLSA RDATA
#: is bounded by its RDLENGTH anyway; certificates beyond this are not ours)
DATA_MAX = 16384


@dataclass(frozen=True, slots=True)
class Tlsa:
    """One TLSA record (RFC 6698 §2.1)."""

    usage: int
    selector: int
    mtype: int
    data: bytes

    def __str__(self) -> str:
        return f"{self.usage} {self.selector} {self.mtype} {self.data.hex()}"


def parse_tlsa(rdata: bytes) -> Tlsa:
    """A TLSA record from its RDATA (RFC 6698 §2.1): three octets, then data."""
    if len(rdata) < 4:
        raise ValueError("TLSA RDATA shorter than four octets")
    if len(rdata) - 3 > DATA_MAX:
        raise ValueError("TLSA association data too long")
    return Tlsa(rdata[0], rdata[1], rdata[2], bytes(rdata[3:]))


def usable(rec: Tlsa) -> bool:
    """Whether SMTP may use ``rec`` (see the module docstring)."""
    if rec.usage not in (DANE_TA, DANE_EE) or rec.selector not in (SEL_CERT, SEL_SPKI):
        return False
    if rec.mtype == MT_FULL:
        return 0 < len(rec.data) <= DATA_MAX
    return _DIGEST_SIZE.get(rec.mtype) == len(rec.data)


def _selected(cert_der: bytes, selector: int) -> bytes | None:
    if selector == SEL_CERT:
        return cert_der
    try:
        return der.certificate_spki(cert_der)
    except ValueError:
        return None


def matches(rec: Tlsa, cert_der: bytes) -> bool:
    """Whether ``rec``'s association data is that of ``cert_der`` (selector and
    matching type applied); usage is not looked at."""
    if not usable(rec):
        return False
    data = _selected(cert_der, rec.selector)
    if data is None:
        return False
    if rec.mtype == MT_SHA256:
        return hashlib.sha256(data).digest() == rec.data
    if rec.mtype == MT_SHA512:
        return hashlib.sha512(data).digest() == rec.data
    return data == rec.data


@dataclass(frozen=True, slots=True)
class Outcome:
    """The verdict on one peer: ``ok``, with the record that matched, or the reason."""

    ok: bool
    reason: str = ""
    record: Tlsa | None = None
    #: the depth in the chain of the certificate that matched (0: the leaf)
    depth: int = -1


#: check_path(leaf, intermediates, anchor, names) -> "" when the leaf chains
#: to the anchor with valid signatures and dates and matches one of names,
#: else why not (crypto/x509chain.py)
PathCheck = Callable[[bytes, Sequence[bytes], bytes, Sequence[str]], str]


def verify(records: Sequence[Tlsa], chain: Sequence[bytes], names: Sequence[str],
           check_path: PathCheck | None) -> Outcome:
    """Authenticate a peer by its TLSA records (RFC 7672 §3); see the module
    docstring. ``chain`` is as the peer sent it, leaf first; ``names`` the
    reference identifiers for DANE-TA (the MX host name, the TLSA base name);
    ``check_path`` None means DANE-TA cannot be checked here."""
    good = [r for r in records if usable(r)]
    if not good:
        return Outcome(False, "no usable TLSA record")
    if not chain:
        return Outcome(False, "no peer certificate")
    leaf = chain[0]
    for rec in good:
        if rec.usage == DANE_EE and matches(rec, leaf):
            return Outcome(True, record=rec, depth=0)
    ta = [r for r in good if r.usage == DANE_TA]
    if not ta:
        return Outcome(False, "no DANE-EE record matches the server certificate")
    if check_path is None:
        return Outcome(False, "DANE-TA cannot be checked here (no certificate path "
                              "validation available)")
    why = "no DANE-TA record matches a certificate of the chain"
    for rec in ta:
        candidates: list[tuple[int, bytes]] = [
            (depth, cert) for depth, cert in enumerate(chain) if depth > 0 and matches(rec, cert)]
        if not candidates and rec.selector == SEL_CERT and rec.mtype == MT_FULL:
            # 2 0 0: the record is the anchor, the server need not send it
            candidates = [(len(chain), rec.data)]
        for depth, anchor in candidates:
            problem = check_path(leaf, list(chain[1:depth]), anchor, names)
            if not problem:
                return Outcome(True, record=rec, depth=depth)
            why = problem
    return Outcome(False, why)
