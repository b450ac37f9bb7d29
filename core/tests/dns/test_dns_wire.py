"""DNS wire format: round trips, compression, and hostile input."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mailrider.dns import wire
from mailrider.dns.wire import RR, DNSFormatError, Header, Message, Question, SOAData


def _msg(*answers: RR, authority: tuple[RR, ...] = ()) -> Message:
    return Message(
        Header(0x1234, qr=True, aa=True, ra=True),
        (Question("example.org", wire.MX),),
        answers,
        authority,
    )


def test_round_trip_every_type_with_compression() -> None:
    soa = SOAData("ns1.example.org", "hostmaster.example.org", 2024, 3600, 600, 86400, 300)
    msg = _msg(
        RR("example.org", wire.MX, 1, 300, (10, "mx1.example.org")),
        RR("example.org", wire.MX, 1, 300, (20, "mx2.example.org")),
        RR("mx1.example.org", wire.A, 1, 60, "192.0.2.1"),
        RR("mx1.example.org", wire.AAAA, 1, 60, "2001:db8::1"),
        RR("www.example.org", wire.CNAME, 1, 60, "example.org"),
        RR("1.2.0.192.in-addr.arpa", wire.PTR, 1, 60, "mx1.example.org"),
        RR("example.org", wire.TXT, 1, 60, (b"v=spf1 -all", b"", b"\x00\xff")),
        RR("example.org", wire.NS, 1, 60, "ns1.example.org"),
        RR("example.org", 99, 1, 60, b"\x01\x02"),
        authority=(RR("example.org", wire.SOA, 1, 900, soa),),
    )
    data = wire.encode_message(msg)
    plain = wire.encode_message(msg, compress=False)
    assert len(data) < len(plain)  # compression happened
    assert wire.decode_message(data) == msg
    assert wire.decode_message(plain) == msg


def test_header_flags_round_trip() -> None:
    h = Header(7, qr=True, opcode=0, aa=True, tc=True, rd=False, ra=True, ad=True, cd=True, rcode=3)
    got = wire.decode_message(wire.encode_message(Message(h))).header
    assert got == h


def test_query_has_edns_opt_and_ad() -> None:
    q = wire.decode_message(wire.encode_query(99, "Example.ORG", wire.A, edns_payload=1232))
    assert q.header.id == 99 and q.header.rd and q.header.ad and not q.header.qr
    assert q.questions == (Question("Example.ORG", wire.A),)
    (opt,) = q.additional
    assert opt.rtype == wire.OPT and opt.rclass == 1232 and opt.name == "."


def test_null_mx_root_name() -> None:
    data = wire.encode_message(_msg(RR("example.org", wire.MX, 1, 60, (0, "."))))
    assert wire.decode_message(data).answers[0].data == (0, ".")


def test_odd_octets_in_labels_are_escaped() -> None:
    # A PTR name with a CR, a space and a dot inside a label.
    raw = b"\x06a\r b.c\x03org\x00"
    msg = _msg(RR("x.org", wire.PTR, 1, 60, b""))
    data = bytearray(wire.encode_message(msg, compress=False))
    # replace the empty RDATA with our name
    data[-2:] = struct.pack("!H", len(raw))
    data += raw
    name = wire.decode_message(bytes(data)).answers[0].data
    assert name == "a\\013\\032b\\.c.org"
    assert name.isprintable() and "\r" not in name
    # and it encodes back to the same octets
    assert wire.encode_name(name) == raw


def test_name_key() -> None:
    assert wire.name_key("MX.Example.ORG.") == "mx.example.org"
    assert wire.name_key(".") == wire.name_key("") == "."


def test_encode_rejects_bad_names() -> None:
    with pytest.raises(DNSFormatError):
        wire.encode_name("a" * 64 + ".org")
    with pytest.raises(DNSFormatError):
        wire.encode_name(".".join(["abcdefghi"] * 30))
    with pytest.raises(DNSFormatError):
        wire.encode_name("a..b")


def _header(an: int = 1, qd: int = 0) -> bytes:
    return struct.pack("!HHHHHH", 1, 0x8180, qd, an, 0, 0)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00" * 11,
        # pointer to itself
        _header() + b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 1, 0),
        # two pointers pointing at each other
        _header() + b"\x01a\xc0\x0e\xc0\x0c" + struct.pack("!HHIH", 1, 1, 1, 0),
        # pointer forward / out of bounds
        _header() + b"\xc0\x20" + struct.pack("!HHIH", 1, 1, 1, 0),
        _header() + b"\xff\xff" + struct.pack("!HHIH", 1, 1, 1, 0),
        # label running past the end
        _header() + b"\x3fabc",
        # reserved label types 0x40, 0x80
        _header() + b"\x41a\x00" + struct.pack("!HHIH", 1, 1, 1, 0),
        _header() + b"\x81a\x00" + struct.pack("!HHIH", 1, 1, 1, 0),
        # RDLENGTH past the end
        _header() + b"\x00" + struct.pack("!HHIH", 1, 1, 1, 9) + b"\x01",
        # A record with 3 octets; AAAA with 4
        _header() + b"\x00" + struct.pack("!HHIH", 1, 1, 1, 3) + b"\x01\x02\x03",
        _header() + b"\x00" + struct.pack("!HHIH", 28, 1, 1, 4) + b"\x01\x02\x03\x04",
        # MX whose name escapes its RDATA
        _header() + b"\x00" + struct.pack("!HHIH", 15, 1, 1, 4) + b"\x00\x0a\x03abc\x00",
        # TXT whose string length exceeds RDATA
        _header() + b"\x00" + struct.pack("!HHIH", 16, 1, 1, 2) + b"\x05a",
        # SOA cut short
        _header() + b"\x00" + struct.pack("!HHIH", 6, 1, 1, 4) + b"\x00\x00\x00\x01",
        # more RRs announced than present
        _header(an=3) + b"\x00" + struct.pack("!HHIH", 1, 1, 1, 4) + b"\x01\x02\x03\x04",
        # question cut short
        _header(an=0, qd=1) + b"\x03org\x00\x00",
        # name longer than 255 octets via a chain of backward pointers
        _header(an=0, qd=2) + (b"\x3f" + b"a" * 63) * 3 + b"\x00\x00\x01\x00\x01"
        + b"\x3f" + b"b" * 63 + b"\xc0\x0c\x00\x01\x00\x01",
    ],
)
def test_malformed_raises_typed_error(data: bytes) -> None:
    with pytest.raises(DNSFormatError):
        wire.decode_message(data)


def test_ttl_with_top_bit_is_zero() -> None:
    data = _header() + b"\x00" + struct.pack("!HHIH", 1, 1, 0x80000001, 4) + b"\x01\x02\x03\x04"
    assert wire.decode_message(data).answers[0].ttl == 0


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes_only_raise_typed_error(data: bytes) -> None:
    try:
        msg = wire.decode_message(data)
    except DNSFormatError:
        return
    # what decodes re-encodes without crashing the decoder again
    assert isinstance(msg, Message)


@settings(max_examples=1000, deadline=None)
@given(st.binary(min_size=1, max_size=300), st.integers(0, 11))
def test_mutated_valid_message_only_raises_typed_error(noise: bytes, at: int) -> None:
    base = wire.encode_message(
        _msg(
            RR("example.org", wire.MX, 1, 300, (10, "mx1.example.org")),
            RR("mx1.example.org", wire.A, 1, 60, "192.0.2.1"),
        )
    )
    pos = 12 + at * 3 % (len(base) - 12)
    mutated = base[:pos] + noise + base[pos + len(noise) :]
    try:
        wire.decode_message(mutated)
    except DNSFormatError:
        pass
