#!/usr/bin/env python3
"""Coverage-guided fuzz targets (atheris/libFuzzer) for tools/torture/run.py.

    python3 tools/torture/fuzz_targets.py TARGET [libFuzzer flags, e.g.
        -max_total_time=60 -timeout=2]

TARGET is one of: command (the SMTP server machine on arbitrary bytes),
address (split_path/parse_path/ESMTP parameters), dotstuff (BodyEncoder ->
server DATA round trip), config (config.parse_string), format (delivery
``%{...}`` expansion). Only the documented error types may escape; anything
else, a broken invariant, or an input slower than ``-timeout`` is a finding.
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "core" / "src"))

with atheris.instrument_imports():
    from mailrider.config import parse_string
    from mailrider.delivery.format import SAFE_CHARS, FormatContext, expand_format
    from mailrider.errors import ConfigError
    from mailrider.smtp import events as ev
    from mailrider.smtp.address import (
        AddressError,
        parse_mail_params,
        parse_path,
        parse_rcpt_params,
        split_path,
    )
    from mailrider.smtp.client import BodyEncoder
    from mailrider.smtp.server import ServerConfig, SMTPServer

CFG = ServerConfig(hostname="mx.example.org", starttls=True)


def _drive(srv: SMTPServer, data: bytes) -> list[ev.Event]:
    srv.receive(data)
    seen = []
    while (e := srv.next_event()) is not None:
        seen.append(e)
        if isinstance(e, ev.DataEnd) and e.error is not None:
            srv.reply(e.error)
        elif srv.awaiting_answer:
            srv.accept()
    srv.data_to_send()
    return seen


def command(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    srv = SMTPServer(CFG)
    while fdp.remaining_bytes():
        chunk = fdp.ConsumeBytes(fdp.ConsumeIntInRange(1, 64))
        _drive(srv, chunk)
        assert len(srv._buf) <= CFG.command_line_max + len(chunk)
    _drive(srv, b"")
    assert srv.closed


def address(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    utf8, sender = fdp.ConsumeBool(), fdp.ConsumeBool()
    text = fdp.ConsumeUnicodeNoSurrogates(300)
    try:
        path, rest = split_path(text, sender=sender)
        addr = parse_path(path, utf8, sender=sender, postmaster=not sender)
        if sender:
            parse_mail_params(rest, dsn=True, eightbitmime=True, smtputf8=utf8)
        else:
            parse_rcpt_params(rest, dsn=True, smtputf8=utf8)
    except AddressError:
        return
    if addr is not None:
        s = str(addr)
        assert "\r" not in s and "\n" not in s and "\0" not in s, s


def dotstuff(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    enc = BodyEncoder()
    body = b""
    wire = b""
    while fdp.remaining_bytes():
        chunk = fdp.ConsumeBytes(fdp.ConsumeIntInRange(1, 32))
        body += chunk
        wire += enc.feed(chunk)
    wire += enc.end()
    assert wire.count(b"\r") == wire.count(b"\n") == wire.count(b"\r\n"), wire
    assert wire.find(b"\r\n.\r\n") in (len(wire) - 5, -1), wire
    srv = SMTPServer(ServerConfig(hostname="mx.example.org", max_line_length=0))
    _drive(srv, b"EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\n")
    events = _drive(srv, wire)
    ends = [e for e in events if isinstance(e, ev.DataEnd)]
    assert len(ends) == 1, events
    if b"\0" not in body:
        got = b"".join(e.data for e in events if isinstance(e, ev.DataChunk))
        want = body.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        if want and not want.endswith(b"\n"):
            want += b"\n"
        assert got == want, (got, want)


def config(data: bytes) -> None:
    text = atheris.FuzzedDataProvider(data).ConsumeUnicodeNoSurrogates(2000)
    try:
        parse_string(text)
    except ConfigError:
        pass


def format_(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    value = fdp.ConsumeUnicodeNoSurrogates(40)
    spec = fdp.PickValueInList(["rcpt", "rcpt.user", "rcpt.domain", "sender", "dest.user",
                                "sender.domain", "user.username"])
    spec += fdp.PickValueInList(["", "[0]", "[-1]", "[1:]", "[0:3]", "[:-1]"])
    spec += fdp.PickValueInList(["", ":lowercase", ":strip", ":uppercase|strip"])
    ctx = FormatContext(sender=value, rcpt=value, dest=value, user_name=value,
                        user_dir="/home/u")
    out = expand_format("%{" + spec + "}", ctx)
    assert set(out) <= SAFE_CHARS | {":"} and not out.startswith("."), out
    template = fdp.ConsumeUnicodeNoSurrogates(40)
    try:
        expand_format(template, ctx)
    except ValueError:
        pass


TARGETS = {"command": command, "address": address, "dotstuff": dotstuff, "config": config,
           "format": format_}


def main() -> None:
    target = TARGETS[sys.argv[1]]
    atheris.Setup([sys.argv[0], *sys.argv[2:]], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
