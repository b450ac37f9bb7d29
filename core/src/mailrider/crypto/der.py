"""A minimal DER reader (ITU-T X.690) and PEM unwrapping (RFC 7468).

Enough to read private keys (PKCS#1, PKCS#8, SEC 1) and the public key of a
certificate, nothing more. Invariants: only definite, minimal lengths and
low tag numbers are accepted; every length is checked against the buffer
before it is used; nesting depth is bounded. Any violation is a
:class:`DERError` (a ``ValueError``), never a partial result.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass

_MAX_DEPTH = 16

TAG_INTEGER = 0x02
TAG_BIT_STRING = 0x03
TAG_OCTET_STRING = 0x04
TAG_NULL = 0x05
TAG_OID = 0x06
TAG_SEQUENCE = 0x30

OID_RSA = "1.2.840.113549.1.1.1"
OID_EC = "1.2.840.10045.2.1"
OID_ED25519 = "1.3.101.112"  # RFC 8410
#: named curves we accept, by OID
CURVES = {"1.2.840.10045.3.1.7": "P-256", "1.3.132.0.34": "P-384"}


class DERError(ValueError):
    """Input that is not the DER we expect."""


@dataclass(frozen=True, slots=True)
class Node:
    tag: int
    raw: bytes  # the whole TLV
    content: bytes
    children: tuple[Node, ...] = ()

    @property
    def constructed(self) -> bool:
        return bool(self.tag & 0x20)


def _read_tlv(data: bytes, pos: int) -> tuple[int, int, int]:
    """Return (tag, content start, content end) of the TLV at ``pos``."""
    if pos + 2 > len(data):
        raise DERError("truncated header")
    tag = data[pos]
    if tag & 0x1F == 0x1F:
        raise DERError("high tag numbers are not supported")
    first = data[pos + 1]
    pos += 2
    if first < 0x80:
        length = first
    elif first == 0x80:
        raise DERError("indefinite length is not DER")
    else:
        count = first & 0x7F
        if count > 4 or pos + count > len(data):
            raise DERError("bad length")
        length = int.from_bytes(data[pos : pos + count], "big")
        if length < 0x80 or data[pos] == 0:
            raise DERError("non-minimal length")
        pos += count
    if pos + length > len(data):
        raise DERError("truncated content")
    return tag, pos, pos + length


def _parse(data: bytes, pos: int, depth: int) -> tuple[Node, int]:
    if depth > _MAX_DEPTH:
        raise DERError("nested too deep")
    tag, start, end = _read_tlv(data, pos)
    children: list[Node] = []
    if tag & 0x20:
        at = start
        while at < end:
            child, at = _parse(data[:end], at, depth + 1)
            children.append(child)
    return Node(tag, data[pos:end], data[start:end], tuple(children)), end


def parse(data: bytes) -> Node:
    """Parse exactly one DER element that spans all of ``data``."""
    node, end = _parse(bytes(data), 0, 0)
    if end != len(data):
        raise DERError("trailing bytes")
    return node


def expect(node: Node, tag: int, count: int | None = None) -> Node:
    if node.tag != tag:
        raise DERError(f"expected tag {tag:#x}, got {node.tag:#x}")
    if count is not None and len(node.children) < count:
        raise DERError("too few elements")
    return node


def integer(node: Node) -> int:
    """A non-negative INTEGER (keys hold no negative numbers)."""
    expect(node, TAG_INTEGER)
    c = node.content
    if not c:
        raise DERError("empty integer")
    if len(c) > 1 and c[0] == 0 and c[1] < 0x80:
        raise DERError("non-minimal integer")
    if c[0] & 0x80:
        raise DERError("negative integer")
    return int.from_bytes(c, "big")


def oid(node: Node) -> str:
    expect(node, TAG_OID)
    c = node.content
    if not c or c[-1] & 0x80:
        raise DERError("bad object identifier")
    arcs: list[int] = []
    value = 0
    for i, b in enumerate(c):
        if value == 0 and b == 0x80 and (i == 0 or not c[i - 1] & 0x80):
            raise DERError("non-minimal object identifier")
        value = (value << 7) | (b & 0x7F)
        if not b & 0x80:
            arcs.append(value)
            value = 0
    first = min(arcs[0] // 40, 2)
    return ".".join(str(a) for a in [first, arcs[0] - 40 * first, *arcs[1:]])


def bit_string(node: Node) -> bytes:
    """The bytes of a BIT STRING with no unused bits."""
    expect(node, TAG_BIT_STRING)
    if not node.content or node.content[0] != 0:
        raise DERError("bit string with unused bits")
    return node.content[1:]


# -- PEM ----------------------------------------------------------------------

_PEM = re.compile(
    rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n(.*?)-----END \1-----", re.DOTALL
)


def pem_blocks(text: bytes) -> list[tuple[str, bytes]]:
    """Every PEM block of ``text`` as (label, DER). Encrypted blocks are refused."""
    out: list[tuple[str, bytes]] = []
    for match in _PEM.finditer(text):
        label = match.group(1).decode("ascii")
        body = match.group(2)
        if b"Proc-Type:" in body or b"DEK-Info:" in body or "ENCRYPTED" in label:
            raise DERError(f"encrypted PEM ({label}) is not supported")
        try:
            der = base64.b64decode(b"".join(body.split()), validate=True)
        except binascii.Error:
            raise DERError(f"bad base64 in PEM {label}") from None
        out.append((label, der))
    return out


# -- certificates ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PublicKey:
    """What a certificate says about its key: kind "rsa" (n, e) or "ec" (curve, point)."""

    kind: str
    spki: bytes  # the SubjectPublicKeyInfo DER
    n: int = 0
    e: int = 0
    curve: str = ""
    point: bytes = b""

    @property
    def hash(self) -> str:
        return spki_hash(self.spki)


def spki_hash(spki: bytes) -> str:
    """How keys are indexed: SHA-256 of the SubjectPublicKeyInfo, in hex."""
    return hashlib.sha256(spki).hexdigest()


def public_key(spki: bytes) -> PublicKey:
    """Decode a SubjectPublicKeyInfo (RFC 5280 4.1.2.7) of an RSA or EC key."""
    node = expect(parse(spki), TAG_SEQUENCE, 2)
    alg = expect(node.children[0], TAG_SEQUENCE, 1)
    kind = oid(alg.children[0])
    key = bit_string(node.children[1])
    if kind == OID_RSA:
        rsa = expect(parse(key), TAG_SEQUENCE, 2)
        return PublicKey("rsa", spki, n=integer(rsa.children[0]), e=integer(rsa.children[1]))
    if kind == OID_EC:
        if len(alg.children) < 2:
            raise DERError("EC key without curve")
        curve = CURVES.get(oid(alg.children[1]))
        if curve is None:
            raise DERError("unsupported curve")
        return PublicKey("ec", spki, curve=curve, point=key)
    raise DERError(f"unsupported public key algorithm {kind}")


def certificate_spki(cert_der: bytes) -> bytes:
    """The SubjectPublicKeyInfo TLV of an X.509 certificate (RFC 5280 4.1)."""
    cert = expect(parse(cert_der), TAG_SEQUENCE, 3)
    tbs = expect(cert.children[0], TAG_SEQUENCE, 6)
    fields = tbs.children[1:] if tbs.children[0].tag == 0xA0 else tbs.children
    if len(fields) < 6:
        raise DERError("short tbsCertificate")
    return expect(fields[5], TAG_SEQUENCE).raw


def certificate_key(cert_pem: bytes) -> PublicKey:
    """The public key of the first certificate of a PEM file (the leaf)."""
    for label, der in pem_blocks(cert_pem):
        if label in ("CERTIFICATE", "TRUSTED CERTIFICATE"):
            return public_key(certificate_spki(der))
    raise DERError("no certificate found")
