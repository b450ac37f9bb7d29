"""MTA-STS without I/O (mailrider/mtasts.py): the TXT record rules of RFC 8461
§3.1, the policy file of §3.2, the HTTP response rules of §3.3 and MX
matching (§4.1), with good and hostile input."""

from __future__ import annotations

import pytest
from mailrider import limits
from mailrider.ipc import messages as m
from mailrider.mtasts import Policy, PolicyError, parse_policy, policy_from_response, txt_id

GOOD = (b"version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\n"
        b"mx: *.example.net\r\nmx: backupmx.example.com\r\nmax_age: 604800\r\n")


# -- TXT (§3.1) -------------------------------------------------------------------


@pytest.mark.parametrize(("records", "expected"), [
    (["v=STSv1; id=20160831085700Z;"], "20160831085700Z"),
    (["v=STSv1;id=abc"], "abc"),
    (["v=STSv1; id=abc ;"], "abc"),
    (["v=STSv1;\tid=abc;\text1=v.a-l:ue"], "abc"),
    # records that are not STSv1 do not count
    (["v=spf1 -all", "v=STSv1; id=x1", "something else"], "x1"),
    # the first of a repeated field counts
    (["v=STSv1; id=first; id=second"], "first"),
])
def test_txt_good(records: list[str], expected: str) -> None:
    assert txt_id(records) == expected


@pytest.mark.parametrize("records", [
    [],
    ["v=spf1 -all"],
    ["v=STSv1; id=a", "v=STSv1; id=b"],  # two records: no policy
    ["v=STSv1; id=a", "v=STSv1; id=a"],
    ["v=STSv1;"],  # no id
    ["v=STSv1; id="],
    ["v=STSv1; id=" + "a" * 33],  # longer than 32
    ["v=STSv1; id=ab-c"],  # not alphanumeric
    ["v=STSv1; id=a b"],
    ["v=STSv1; idabc"],
    ["v=STSv2; id=abc"],
    ["V=STSv1; id=abc"],  # case matters (v=STSv1 exactly)
    ["v=STSv1; id=abc; ext=a=b"],  # "=" in an extension value
    ["v=STSv1; id=abc; -ext=v"],
    ["v=STSv1; id=abc; ext=\x7f"],
])
def test_txt_hostile(records: list[str]) -> None:
    with pytest.raises(PolicyError):
        txt_id(records)


# -- the policy (§3.2) ---------------------------------------------------------------


def test_policy_good() -> None:
    p = parse_policy(GOOD)
    assert p == Policy("enforce", 604800,
                       ("mail.example.com", "*.example.net", "backupmx.example.com"))


@pytest.mark.parametrize("body", [
    GOOD.replace(b"\r\n", b"\n"),  # LF alone
    GOOD.rstrip(b"\r\n"),  # no final line end
    GOOD + b"\r\n\n",  # blank lines
    b"mode:enforce\nversion:STSv1\nmx:mail.example.com\nmax_age:1\n",
    b"version:  STSv1 \t\nmode: enforce\nmx: MAIL.Example.COM.\nmax_age: 1\nfoo: bar\n",
])
def test_policy_variants(body: bytes) -> None:
    p = parse_policy(body)
    assert p.mode == "enforce" and p.mx[0] == "mail.example.com"


def test_policy_none_needs_no_mx_and_first_field_wins() -> None:
    p = parse_policy(b"version: STSv1\nmode: none\nmode: enforce\nmax_age: 86400\n")
    assert p == Policy("none", 86400, ())


def test_policy_max_age_limit() -> None:
    assert parse_policy(GOOD.replace(b"604800", b"31557600")).max_age == 31557600
    with pytest.raises(PolicyError, match="max_age"):
        parse_policy(GOOD.replace(b"604800", b"31557601"))


@pytest.mark.parametrize("body", [
    b"",
    GOOD.replace(b"STSv1", b"STSv2"),
    GOOD.replace(b"version: STSv1\r\n", b""),
    GOOD.replace(b"enforce", b"Enforce"),
    GOOD.replace(b"enforce", b"reject"),
    GOOD.replace(b"max_age: 604800\r\n", b""),
    GOOD.replace(b"604800", b"-1"),
    GOOD.replace(b"604800", b"12345678901"),
    GOOD.replace(b"604800", b"1e6"),
    GOOD.replace(b"604800", b"\xd9\xa1"),  # an Arabic-Indic digit (not ASCII)
    b"version: STSv1\nmode: testing\nmax_age: 10\n",  # no mx
    GOOD.replace(b"mail.example.com", b"*.*.example.com"),
    GOOD.replace(b"mail.example.com", b"mail.*.com"),
    GOOD.replace(b"mail.example.com", b"com"),  # a single label
    GOOD.replace(b"mail.example.com", b"-bad.example.com"),
    GOOD.replace(b"mail.example.com", b"m\xc3\xa4il.example.com"),  # not ASCII
    GOOD.replace(b"mail.example.com", b"mail.example.com extra"),
    GOOD + b"no colon here\n",
    GOOD + b"mx:\n",
    GOOD + b"bad name: x\n",
    GOOD + b"x: \x00\n",
    b"version: STSv1\nmode: enforce\nmax_age: 1\n" + b"mx: a.example.com\n" * 65,
    GOOD + b"x-pad: " + b"a" * limits.MTA_STS_BODY_MAX + b"\n",
])
def test_policy_hostile(body: bytes) -> None:
    with pytest.raises(PolicyError):
        parse_policy(body)


# -- MX matching (§4.1) ----------------------------------------------------------------


@pytest.mark.parametrize(("host", "ok"), [
    ("mail.example.com", True),
    ("MAIL.EXAMPLE.COM.", True),
    ("example.com", False),
    ("x.mail.example.com", False),
    ("mx1.example.net", True),
    ("example.net", False),
    ("a.b.example.net", False),  # the wildcard is one label only
    (".example.net", False),
    ("mx1.example.net.evil.test", False),
    ("mx1example.net", False),
])
def test_mx_matching(host: str, ok: bool) -> None:
    assert parse_policy(GOOD).matches(host) is ok


# -- the HTTP response (§3.3) -------------------------------------------------------------


def _resp(body: bytes, status: str = "200 OK", ctype: str = "text/plain",
          extra: str = "", length: bool = True) -> bytes:
    head = f"HTTP/1.1 {status}\r\n"
    if ctype:
        head += f"Content-Type: {ctype}\r\n"
    if length:
        head += f"Content-Length: {len(body)}\r\n"
    return (head + extra + "\r\n").encode() + body


def test_response_good() -> None:
    assert policy_from_response(_resp(GOOD)).mode == "enforce"
    assert policy_from_response(_resp(GOOD, ctype="text/plain; charset=utf-8")).mx
    assert policy_from_response(_resp(GOOD, length=False)).max_age == 604800
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(GOOD), GOOD)
    assert policy_from_response(_resp(chunked, length=False,
                                      extra="Transfer-Encoding: chunked\r\n")).mx


@pytest.mark.parametrize(("raw", "why"), [
    (_resp(GOOD, status="301 Moved Permanently",
           extra="Location: https://evil.test/.well-known/mta-sts.txt\r\n"), "status 301"),
    (_resp(GOOD, status="404 Not Found"), "status 404"),
    (_resp(GOOD, status="204 No Content"), "status 204"),
    (_resp(GOOD, ctype="text/html"), "Content-Type"),
    (_resp(GOOD, ctype=""), "Content-Type"),
    (_resp(GOOD, extra=f"Content-Length: {limits.MTA_STS_BODY_MAX + 1}\r\n", length=False),
     "too large"),
    (_resp(GOOD)[:-10], "truncated|Incomplete"),
    (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"ffff\r\nversion: STSv1\r\n", "bad HTTP|Incomplete"),
    (b"garbage\r\n\r\n", "bad HTTP"),
    (b"", "bad HTTP"),
    (b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 200 + b"\r\n", "bad HTTP"),  # > 100 headers
])
def test_response_hostile(raw: bytes, why: str) -> None:
    with pytest.raises(PolicyError, match=why):
        policy_from_response(raw)


# -- the IPC messages are checked as they are decoded ---------------------------------


def test_ipc_messages_bounded() -> None:
    ok = m.decode(m.encode(m.StsTxtResult("ok", ["v=STSv1; id=1"])))
    assert ok.records == ["v=STSv1; id=1"]
    for bad in ({"t": "StsTxtResult", "status": "maybe", "records": []},
                {"t": "StsTxtResult", "status": "ok", "records": ["x"] * 17},
                {"t": "StsTxtResult", "status": "ok", "records": ["x" * 4097]},
                {"t": "StsTxtResult", "status": "ok", "records": [1]},
                {"t": "StsTxtResult", "status": "ok", "records": ["v=STSv1; id=\u00e9"]},
                {"t": "StsTxt", "domain": ""},
                {"t": "StsTxt", "domain": "a" * 254},
                {"t": "StsTxt", "domain": 5}):
        with pytest.raises((ValueError, TypeError)):
            m.decode(dict(bad))
