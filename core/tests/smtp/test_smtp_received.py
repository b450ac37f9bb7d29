"""The Received: trace field (RFC 5321 4.4)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mailrider.smtp.received import WITH_PROTOCOLS, received_header, with_protocol

WHEN = 1735689600.0


def test_full_header() -> None:
    h = received_header(helo="client.example.net", rdns="host.example.net", ip="198.51.100.7",
                        by="mx.example.org", with_proto="ESMTPS", queue_id="1f2e3d4c",
                        rcpt="bob@example.org", tls="TLSv1.3:TLS_AES_256_GCM_SHA384:256",
                        when=WHEN)
    text = h.decode()
    lines = text.split("\n\t")
    assert lines[:4] == [
        "Received: from client.example.net (host.example.net [198.51.100.7])",
        "by mx.example.org (mailrider)",
        "with ESMTPS (TLSv1.3:TLS_AES_256_GCM_SHA384:256) id 1f2e3d4c",
        "for <bob@example.org>;",
    ]
    assert re.fullmatch(r"\w{3}, \d{2} \w{3} \d{4} \d\d:\d\d:\d\d [+-]\d{4}\n", lines[4])
    assert text.endswith("\n") and "\r" not in text


def test_minimal_and_ipv6() -> None:
    h = received_header(helo="c", rdns=None, ip="2001:db8::7", by="mx", with_proto="SMTP",
                        queue_id="abc", rcpt=None, tls=None, when=WHEN).decode()
    assert h.startswith("Received: from c (unknown [IPv6:2001:db8::7])\n\tby mx (mailrider)\n"
                        "\twith SMTP id abc;\n\t")
    h = received_header(helo=None, rdns=None, ip=None, by="mx", with_proto="LMTP",
                        queue_id="abc", rcpt=None, tls=None, when=WHEN).decode()
    assert h.startswith("Received: by mx (mailrider)\n\twith LMTP id abc;\n\t")
    h = received_header(helo=None, rdns=None, ip="::ffff:192.0.2.1", by="mx", with_proto="SMTP",
                        queue_id="abc", rcpt=None, tls=None, when=WHEN).decode()
    assert h.startswith("Received: from [192.0.2.1] (unknown [192.0.2.1])")


def test_hostile_tokens_are_neutralised() -> None:
    h = received_header(helo="evil\r\nX-Injected: yes", rdns="a (b) c", ip="not an ip",
                        by="mx", with_proto="ESMTP", queue_id="q1",
                        rcpt="x>\r\nBcc: y@z", tls="v1)\n(x", when=WHEN).decode()
    assert "\r" not in h
    assert "\nX-Injected" not in h and "\nBcc" not in h
    assert h.count("\n") == h.count("\n\t") + 1
    assert "from evil??X-Injected:?yes\n\tby mx" in h


def test_utf8_only_for_utf8_protocols() -> None:
    def make(proto: str) -> bytes:
        return received_header(helo="bücher.example", rdns=None, ip=None, by="mx",
                               with_proto=proto, queue_id="q", rcpt="dörte@x", tls=None,
                               when=WHEN)

    h = make("UTF8SMTP")
    assert "from bücher.example" in h.decode() and "<dörte@x>" in h.decode()
    assert make("ESMTP").isascii()


def test_programming_errors() -> None:
    for proto, qid in [("HTTP", "q"), ("SMTP", "q\n"), ("SMTP", "")]:
        with pytest.raises(ValueError):
            received_header(helo="a", rdns=None, ip=None, by="mx", with_proto=proto,
                            queue_id=qid, rcpt=None, tls=None)


def test_with_protocol() -> None:
    assert with_protocol(esmtp=False, tls=False) == "SMTP"
    assert with_protocol(esmtp=True, tls=False) == "ESMTP"
    assert with_protocol(esmtp=True, tls=True) == "ESMTPS"
    assert with_protocol(esmtp=True, tls=True, auth=True) == "ESMTPSA"
    assert with_protocol(esmtp=True, tls=True, utf8=True) == "UTF8SMTPS"
    assert with_protocol(esmtp=True, tls=False, lmtp=True, utf8=True) == "UTF8LMTP"
    for e in (False, True):
        for t in (False, True):
            for a in (False, True):
                for u in (False, True):
                    for lm in (False, True):
                        assert with_protocol(esmtp=e, tls=t, auth=a, utf8=u, lmtp=lm) in (
                            WITH_PROTOCOLS)


@given(st.text(), st.text(), st.text(), st.text(), st.text(), st.text())
@settings(max_examples=300, deadline=None)
def test_never_breaks_lines(helo: str, rdns: str, ip: str, by: str, rcpt: str, tls: str) -> None:
    h = received_header(helo=helo, rdns=rdns, ip=ip, by=by, with_proto="UTF8SMTPS",
                        queue_id="q1", rcpt=rcpt, tls=tls, when=WHEN)
    assert b"\r" not in h
    assert h.endswith(b"\n") and not h.endswith(b"\n\n")
    body = h[:-1]
    # every LF inside is a fold point followed by TAB
    assert body.count(b"\n") == body.count(b"\n\t") == 4
    assert all(len(line) <= 998 for line in h.split(b"\n"))
    assert not any(c < 32 and c not in (9, 10) for c in h)
