"""The PROXY v2 header parser (smtp/proxy.py): bytes in, header or refusal out."""

from __future__ import annotations

import struct

import pytest
from mailrider.smtp import proxy as p

V4 = p.build(("203.0.113.7", 40001), ("192.0.2.1", 25))


def test_ipv4_proxy_header() -> None:
    hdr, n = p.parse(V4 + b"EHLO x\r\n")
    assert n == len(V4) == 16 + 12
    assert hdr == p.ProxyHeader("proxy", ("203.0.113.7", 40001), ("192.0.2.1", 25), [])


def test_ipv6_and_mapped_ipv4() -> None:
    hdr, _ = p.parse(p.build(("2001:db8::5", 1234), ("2001:db8::1", 25)))
    assert hdr is not None and hdr.source == ("2001:db8::5", 1234)
    hdr, _ = p.parse(p.build(("::ffff:198.51.100.9", 1), ("::ffff:192.0.2.1", 25)))
    assert hdr is not None and hdr.source == ("198.51.100.9", 1)


def test_local_command_keeps_the_socket_addresses() -> None:
    hdr, n = p.parse(p.build(None))
    assert hdr is not None and hdr.command == "local" and hdr.source is None and n == 16


def test_unspec_family_is_local() -> None:
    raw = p.SIGNATURE + bytes([0x21, 0x00]) + b"\x00\x00"
    hdr, _ = p.parse(raw)
    assert hdr is not None and hdr.command == "local"


def test_tlvs_are_skipped_and_kept() -> None:
    tlvs = [(0x01, b"smtp"), (0x05, b"unique-id-123"), (0x04, b"")]
    raw = p.build(("203.0.113.7", 5), ("192.0.2.1", 25), tlvs)
    hdr, n = p.parse(raw + b"QUIT\r\n")
    assert hdr is not None and hdr.tlvs == tlvs and n == len(raw)


def test_incomplete_input_asks_for_more_byte_by_byte() -> None:
    for i in range(len(V4)):
        hdr, missing = p.parse(V4[:i])
        assert hdr is None and missing >= 1 and i + missing <= len(V4)
    assert p.parse(V4)[0] is not None


@pytest.mark.parametrize(("raw", "reason"), [
    (b"EHLO client\r\n", "no PROXY protocol v2 signature"),
    (b"\r\n\r\n\x00\r\nQUIX", "no PROXY protocol v2 signature"),
    (b"PROXY TCP4 203.0.113.7 192.0.2.1 40001 25\r\n", "version 1"),
    (b"PRO", "version 1"),
    (p.SIGNATURE + b"\x11", "version 1, not 2"),
    (p.SIGNATURE + b"\x22", "unknown PROXY command 2"),
    (p.SIGNATURE + b"\x21\x11" + struct.pack("!H", 65535), "header length 65535 over"),
    (p.SIGNATURE + b"\x21\x11" + struct.pack("!H", 8) + bytes(8), "too short"),
    (p.SIGNATURE + b"\x21\x41\x00\x00", "unknown address family"),
    (p.SIGNATURE + b"\x21\x12" + struct.pack("!H", 12) + bytes(12), "not TCP"),
    (p.SIGNATURE + b"\x21\x31" + struct.pack("!H", 216) + bytes(216), "AF_UNIX"),
    # a TLV that claims more than the header holds, and a TLV cut short
    (p.SIGNATURE + b"\x21\x11" + struct.pack("!H", 16) + bytes(12) + b"\x01\x00\x09x",
     "TLV longer"),
    (p.SIGNATURE + b"\x21\x11" + struct.pack("!H", 14) + bytes(12) + b"\x01\x00",
     "truncated TLV"),
])
def test_refusals(raw: bytes, reason: str) -> None:
    with pytest.raises(p.ProxyError, match=reason):
        p.parse(raw)


def test_huge_length_is_refused_before_the_body_arrives() -> None:
    # only the fixed part: the length alone is enough to refuse
    with pytest.raises(p.ProxyError, match="over"):
        p.parse(p.SIGNATURE + b"\x21\x11" + struct.pack("!H", p.MAX_LENGTH + 1))
    hdr, missing = p.parse(p.SIGNATURE + b"\x21\x11" + struct.pack("!H", p.MAX_LENGTH))
    assert hdr is None and missing == p.MAX_LENGTH


def test_reader_hands_back_what_followed_the_header() -> None:
    r = p.ProxyReader()
    assert r.feed(V4[:5]) == (None, b"")
    assert r.feed(V4[5:20]) == (None, b"")
    hdr, rest = r.feed(V4[20:] + b"EHLO early\r\n")
    assert hdr is not None and hdr.source == ("203.0.113.7", 40001)
    assert rest == b"EHLO early\r\n"


def test_reader_refuses_at_the_first_wrong_byte() -> None:
    r = p.ProxyReader()
    r.feed(p.SIGNATURE[:3])
    with pytest.raises(p.ProxyError):
        r.feed(b"X")


def test_round_trip_property() -> None:
    from hypothesis import given, settings
    from hypothesis import strategies as st

    v4 = st.ip_addresses(v=4).map(str)
    v6 = st.ip_addresses(v=6).filter(lambda a: a.ipv4_mapped is None).map(str)
    port = st.integers(0, 65535)
    tlv = st.tuples(st.integers(0, 255), st.binary(max_size=40))

    @settings(max_examples=200, deadline=None)
    @given(st.one_of(st.tuples(v4, v4), st.tuples(v6, v6)), port, port,
           st.lists(tlv, max_size=5), st.binary(max_size=20), st.integers(1, 40))
    def check(addrs: tuple[str, str], sp: int, dp: int, tlvs: list[tuple[int, bytes]],
              after: bytes, step: int) -> None:
        raw = p.build((addrs[0], sp), (addrs[1], dp), tlvs)
        r = p.ProxyReader()
        got = None
        data = raw + after
        for i in range(0, len(data), step):
            hdr, rest = r.feed(data[i:i + step])
            if hdr is not None:
                got = hdr
                # what followed the header, from this chunk on
                assert (rest + data[i + step:]) == after
                break
        assert got == p.ProxyHeader("proxy", (addrs[0], sp), (addrs[1], dp), tlvs)

    check()
