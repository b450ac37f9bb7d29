"""The table protocol codec (mailrider.table.protocol), and the plain-text
transcripts of transcripts/ run against it and against a real backend."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from mailrider import limits
from mailrider.table import protocol
from mailrider.table.protocol import LineSplitter, ProtocolError, Request, Result

HERE = Path(__file__).parent
TRANSCRIPTS = sorted((HERE / "transcripts").glob("*.txt"))
BACKEND = HERE / "backends" / "transcript.py"


@dataclass
class Line:
    direction: str  # ">" daemon to backend, "<" backend to daemon
    text: str
    refused: str | None = None


@dataclass
class Transcript:
    lines: list[Line] = field(default_factory=list)
    status: int = 0
    codec_only: bool = False


def _expand(text: str) -> str:
    return re.sub(r"\{(.)\*(\d+)\}", lambda m: m.group(1) * int(m.group(2)), text)


def load(path: Path) -> Transcript:
    t = Transcript()
    for n, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not raw or raw.startswith("#"):
            continue
        if raw == "codec-only":
            t.codec_only = True
        elif raw.startswith("exit "):
            t.status = int(raw[5:])
        elif raw[:2] in ("> ", "< "):
            t.lines.append(Line(raw[0], _expand(raw[2:])))
        elif raw.startswith("! ") and t.lines and t.lines[-1].refused is None:
            t.lines[-1].refused = raw[2:]
        else:
            raise AssertionError(f"{path.name}:{n}: bad transcript line")
    return t


def _ids(paths: list[Path]) -> list[str]:
    return [p.stem for p in paths]


def test_transcripts_present() -> None:
    names = {p.stem for p in TRANSCRIPTS}
    for needed in ("lookup-found", "lookup-not-found", "lookup-failed", "check", "fetch",
                   "update", "malformed-requests", "overlong", "wrong-version", "bad-replies"):
        assert needed in names


def _decode_sent(line: str, config: dict[str, str], state: list[str]) -> str:
    """Parse one daemon line as the backend's side does; return its canonical form."""
    if state[0] == "handshake":
        item = protocol.parse_config(line)
        if item is None:
            protocol.check_version(config.get("protocol"))
            state[0] = "requests"
            return protocol.CONFIG_READY
        config[item[0]] = item[1]
        return f"config|{item[0]}|{item[1]}"
    req = protocol.parse_request(line)
    return protocol.format_request(
        req.table, req.op, req.rid, req.service, req.key, req.timestamp
    ).rstrip("\n")


def _decode_received(line: str, state: list[str]) -> str:
    """Parse one backend line as the daemon's side does; return its canonical form."""
    if state[0] == "registering":
        service = protocol.parse_register(line)
        if service is None:
            state[0] = "replies"
            return protocol.REGISTER_READY
        return f"register|{service}"
    return protocol.format_result(protocol.parse_result(line)).rstrip("\n")


@pytest.mark.parametrize("path", TRANSCRIPTS, ids=_ids(TRANSCRIPTS))
def test_transcript_codec(path: Path) -> None:
    t = load(path)
    # the byte stream of each side, cut by the splitter in small reads
    for direction in "><":
        lines = [x for x in t.lines if x.direction == direction]
        stream = b"".join(x.text.encode() + b"\n" for x in lines)
        splitter = LineSplitter()
        got: list[bytes] = []
        dropped = 0
        for i in range(0, len(stream), 4096):
            cut, n = splitter.feed(stream[i : i + 4096])
            got += cut
            dropped += n
        long = [x for x in lines if len(x.text.encode()) > limits.TABLE_LINE_MAX]
        assert got == [x.text.encode() for x in lines if x not in long]
        assert dropped == len(long)
        assert all(x.refused == "too long" for x in long)
    config: dict[str, str] = {}
    sent_state, received_state = ["handshake"], ["registering"]
    for x in t.lines:
        if x.refused == "too long":
            continue
        if x.refused is not None:
            with pytest.raises(ProtocolError) as info:
                if x.direction == ">":
                    _decode_sent(x.text, config, sent_state)
                else:
                    _decode_received(x.text, received_state)
            assert x.refused in str(info.value), (x.text, str(info.value))
        elif x.direction == ">":
            assert _decode_sent(x.text, config, sent_state) == x.text
        else:
            assert _decode_received(x.text, received_state) == x.text


@pytest.mark.parametrize("path", TRANSCRIPTS, ids=_ids(TRANSCRIPTS))
def test_transcript_backend(path: Path) -> None:
    t = load(path)
    sent = b"".join(x.text.encode() + b"\n" for x in t.lines if x.direction == ">")
    expected = b"".join(
        x.text.encode() + b"\n"
        for x in t.lines
        if x.direction == "<" and not t.codec_only
    )
    if t.codec_only:
        expected = b"".join(
            x.text.encode() + b"\n" for x in t.lines if x.direction == "<"
        ).split(protocol.REGISTER_READY.encode() + b"\n")[0] + b"register|ready\n"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.run(
        [sys.executable, str(BACKEND)],
        input=sent,
        capture_output=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert proc.stdout == expected, proc.stderr.decode(errors="replace")
    assert proc.returncode == t.status, proc.stderr.decode(errors="replace")
    assert b"hunter2" not in proc.stdout + proc.stderr


# -- the codec's functions, one by one ---------------------------------------


def test_request_round_trip() -> None:
    line = protocol.format_request("t", "lookup", "0000abcd", "alias", "a|b", "1.000001")
    assert line == "table|0.1|1.000001|t|lookup|alias|0000abcd|a|b\n"
    assert protocol.parse_request(line[:-1]) == Request(
        "t", "lookup", "0000abcd", "alias", "a|b", "1.000001"
    )


def test_request_timestamp_format() -> None:
    line = protocol.format_request("t", "update", "00000001")
    stamp = line.split("|")[2]
    assert re.fullmatch(r"[0-9]+\.[0-9]{6}", stamp)


@pytest.mark.parametrize(
    ("op", "service", "rid", "key"),
    [
        ("lookup", "alias", "00000001", "a\nb"),
        ("lookup", "alias", "00000001", "a\rb"),
        ("lookup", "alias", "00000001", None),
        ("fetch", None, "00000001", None),
        ("check", "al|ias", "00000001", "k"),
        ("frobnicate", "alias", "00000001", "k"),
    ],
)
def test_format_request_refuses(op: str, service: str | None, rid: str, key: str | None) -> None:
    with pytest.raises(ValueError):
        protocol.format_request("t", op, rid, service, key, "1.000000")


def test_parse_request_owes_reply() -> None:
    with pytest.raises(ProtocolError) as info:
        protocol.parse_request("table|0.1|1.0|t|delete|alias|00000001|k")
    assert (info.value.op, info.value.rid) == ("delete", "00000001")
    with pytest.raises(ProtocolError) as info:
        protocol.parse_request("table|0.1|1.0|t|check|alias|00000002")
    assert (info.value.op, info.value.rid) == ("check", "00000002")
    with pytest.raises(ProtocolError) as info:
        protocol.parse_request("table|0.1|1.0|t|update|")
    assert info.value.rid is None


def test_results() -> None:
    assert protocol.parse_result("check-result|1|found") == Result("check", "1", "found")
    found = Result("lookup", "1", "found", "v|w")
    assert protocol.parse_result("lookup-result|1|found|v|w") == found
    assert protocol.parse_result("fetch-result|1|not-found") == Result("fetch", "1", "not-found")
    assert protocol.parse_result("update-result|1|ok") == Result("update", "1", "ok")
    assert protocol.parse_result("update-result|1|error|x") == Result("update", "1", "error", "x")
    with pytest.raises(ProtocolError) as info:
        protocol.parse_result("lookup-result|00000007|found|a\rb")
    assert info.value.rid == "00000007"
    with pytest.raises(ProtocolError):
        protocol.parse_result("update-result|1|not-found")
    with pytest.raises(ValueError):
        protocol.format_found("lookup", "1", "")
    with pytest.raises(ValueError):
        protocol.format_found("lookup", "1", "a\nb")


def test_handshake_lines() -> None:
    assert protocol.config_lines("9.9", "t") == (
        "config|smtpd-version|9.9\nconfig|protocol|0.1\nconfig|tablename|t\nconfig|ready\n"
    )
    assert protocol.register_lines(["alias", "domain"]) == (
        "register|alias\nregister|domain\nregister|ready\n"
    )
    with pytest.raises(ProtocolError, match="unknown service 'bogus'"):
        protocol.parse_register("register|bogus")
    with pytest.raises(ProtocolError):
        protocol.check_version(None)
    protocol.check_version("0.1")


def test_splitter_bounds_the_buffer() -> None:
    s = LineSplitter(limit=10)
    assert s.feed(b"abc") == ([], 0)
    assert s.feed(b"defghijkl") == ([], 1)  # 12 bytes without a newline
    assert s.feed(b"xyz") == ([], 0)  # still the same line: not counted twice
    assert s.feed(b"\nok\n") == ([b"ok"], 0)
    assert s.feed(b"12345678901\nfine\n") == ([b"fine"], 1)
    assert s.feed(b"a\n" + b"b" * 20) == ([b"a"], 1)
    assert s.feed(b"b\nc\n") == ([b"c"], 0)


def test_both_ends_share_the_version() -> None:
    from mailrider.table import proc, sdk

    assert proc.PROTOCOL_VERSION is sdk.PROTOCOL_VERSION is protocol.PROTOCOL_VERSION
