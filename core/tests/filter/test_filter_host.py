"""The filter host with real filter processes over socketpairs."""

from __future__ import annotations

import asyncio
import os
import pathlib
import secrets
import socket
import subprocess
import sys
from typing import Any

import pytest
from mailrider.config import parse_string
from mailrider.config.model import Filter
from mailrider.filter import protocol as p
from mailrider.filter.host import FilterHost
from mailrider.filter.proc import FilterFailed
from mailrider.table.registry import TableSet

HERE = pathlib.Path(__file__).resolve().parent
SCRIPT = HERE / "testfilter.py"


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def config(filters: str, listen_filter: str) -> Any:
    return parse_string(filters + f"\nlisten on 127.0.0.1 port 2525 filter {listen_filter}\n"
                        'action "a" maildir\nmatch from any for any action "a"\n')


STARTED: list[subprocess.Popen[bytes]] = []


@pytest.fixture(autouse=True)
def _reap_filters() -> Any:
    yield
    while STARTED:
        proc = STARTED.pop()
        proc.kill()
        proc.wait(10)


async def starter(f: Filter) -> tuple[socket.socket, socket.socket | None]:
    io_mine, io_theirs = socket.socketpair()
    err_mine, err_theirs = socket.socketpair()
    STARTED.append(subprocess.Popen(
        ["/bin/sh", "-c", f"exec {f.command}"], stdin=io_theirs.fileno(),
        stdout=io_theirs.fileno(), stderr=err_theirs.fileno(), start_new_session=True))
    io_theirs.close()
    err_theirs.close()
    return io_mine, err_mine


def cmd(modes: str, rec: pathlib.Path) -> str:
    return f'"{sys.executable} {SCRIPT} {modes} {rec}"'


async def host_for(cfg: Any, timeout: float = 5.0) -> FilterHost:
    tables = TableSet(cfg)
    await tables.start()
    host = FilterHost(cfg, tables, starter, version="0.1.0", admd="mx.test", timeout=timeout)
    await host.start()
    return host


def sid() -> str:
    return secrets.token_hex(8)


def test_handshake_sends_config_and_learns_registrations(tmp_path: pathlib.Path) -> None:
    rec = tmp_path / "rec"

    async def main() -> None:
        cfg = config(f"filter f1 proc-exec {cmd('reject-mail', rec)}", "f1")
        host = await host_for(cfg)
        proc = next(iter(host.procs.values()))
        assert proc.phases == {"mail-from", "rcpt-to", "helo", "ehlo", "commit"}
        assert proc.reports == {"*"}
        host.close()

    run(main())
    lines = rec.read_text().splitlines()
    assert lines[:3] == ["config|smtpd-version|0.1.0", "config|protocol|0.7",
                         "config|smtp-session-timeout|300"]
    assert "config|subsystem|smtp-in" in lines and lines[-1] == "config|ready"


def test_reject_proceed_and_reports(tmp_path: pathlib.Path) -> None:
    rec = tmp_path / "rec"

    async def main() -> None:
        cfg = config(f"filter f1 proc-exec {cmd('reject-mail', rec)}", "f1")
        host = await host_for(cfg)
        s = sid()
        host.begin(s, 0, rdns="<unknown>", fcrdns="error", src="127.0.0.1",
                   link_src="127.0.0.1:4000", link_dest="127.0.0.1:25")
        d = await host.phase(s, "mail-from", ["spammer@example.org"])
        assert (d.decision, d.param) == ("reject", "550 5.7.1 no spam here")
        d = await host.phase(s, "mail-from", ["alice@example.org"])
        assert d.decision == "proceed"
        host.end(s)
        await asyncio.sleep(0.2)
        host.close()
        text = rec.read_text()
        assert f"|smtp-in|link-connect|{s}|<unknown>|error|127.0.0.1:4000|127.0.0.1:25" in text
        assert f"|smtp-in|mail-from|{s}|" in text
        assert f"filter-response|{s}|rejected" not in text
        assert f"|filter-response|{s}|mail-from|reject|550 5.7.1 no spam here" in text
        assert text.rstrip().endswith(f"|link-disconnect|{s}")

    run(main())


def test_chain_rewrite_junk_and_builtin(tmp_path: pathlib.Path) -> None:
    r1, r2 = tmp_path / "r1", tmp_path / "r2"

    async def main() -> None:
        cfg = config(
            f"filter a proc-exec {cmd('rewrite-rcpt', r1)}\n"
            f"filter b proc-exec {cmd('junk-mail', r2)}\n"
            'filter nolocal phase rcpt-to match rcpt-to regex "^root@" reject "550 5.7.1 no root"\n'
            "filter c chain { nolocal, a, b }", "c")
        host = await host_for(cfg)
        s = sid()
        host.begin(s, 0, rdns="h", fcrdns="pass", src="10.0.0.1", link_src="x", link_dest="y")
        d = await host.phase(s, "rcpt-to", ["root@example.org"])
        assert (d.decision, d.param) == ("reject", "550 5.7.1 no root")
        d = await host.phase(s, "rcpt-to", ["old@example.org"])
        assert (d.decision, d.param) == ("rewrite", "new@example.org")
        d = await host.phase(s, "mail-from", ["x@example.org"])
        assert d.decision == "junk"
        host.close()

    run(main())


def test_report_decision_is_a_report_then_proceed(tmp_path: pathlib.Path) -> None:
    rec = tmp_path / "rec"

    async def main() -> None:
        cfg = config(f"filter f1 proc-exec {cmd('report-mail', rec)}", "f1")
        host = await host_for(cfg)
        s = sid()
        host.begin(s, 0, rdns="h", fcrdns="pass", src="1.2.3.4", link_src="x", link_dest="y")
        d = await host.phase(s, "mail-from", ["a@b.example"])
        assert (d.decision, d.param) == ("proceed", None)
        await asyncio.sleep(0.2)
        host.close()
        assert f"|filter-report|{s}|proc|" in rec.read_text()

    run(main())


@pytest.mark.parametrize("mode", ["crash-mail", "garbage-mail", "sleep-mail"])
def test_broken_filters_tempfail_and_are_restarted(tmp_path: pathlib.Path, mode: str) -> None:
    rec = tmp_path / "rec"

    async def main() -> None:
        cfg = config(f"filter f1 proc-exec {cmd(mode, rec)}", "f1")
        host = await host_for(cfg, timeout=1.0)
        s = sid()
        host.begin(s, 0, rdns="h", fcrdns="pass", src="1.2.3.4", link_src="x", link_dest="y")
        with pytest.raises(FilterFailed) as info:
            await asyncio.wait_for(host.phase(s, "mail-from", ["a@b.example"]), 10)
        assert info.value.code == 421
        if mode == "crash-mail":
            old = next(iter(host.procs.values()))
            for _ in range(100):
                await asyncio.sleep(0.05)
                if next(iter(host.procs.values())) is not old:
                    break
            new = next(iter(host.procs.values()))
            assert new is not old and new.alive
            d = await host.phase(s, "helo", ["fine"])
            assert d.decision == "proceed"
        host.close()

    run(main())


def test_bad_registration_is_refused(tmp_path: pathlib.Path) -> None:
    async def main() -> None:
        cfg = config(f"filter f1 proc-exec {cmd('bad-register', tmp_path / 'r')}", "f1")
        with pytest.raises(FilterFailed, match="unknown filter registration"):
            await host_for(cfg)

    run(main())


def test_data_lines_through_two_filters(tmp_path: pathlib.Path) -> None:
    async def main() -> None:
        cfg = config(f"filter a proc-exec {cmd('data-header', tmp_path / 'a')}\n"
                     f"filter b proc-exec {cmd('data-upper', tmp_path / 'b')}\n"
                     "filter c chain { a, b }", "c")
        host = await host_for(cfg)
        got: list[str] = []
        done = asyncio.Event()

        def out(sid_: str, lines: list[str], error: str) -> None:
            assert not error
            got.extend(lines)
            if "." in lines:
                done.set()

        host.data_out = out
        s = sid()
        host.begin(s, 0, rdns="h", fcrdns="pass", src="1.2.3.4", link_src="x", link_dest="y")
        assert host.wants_data(s)
        host.data_begin(s)
        host.data_lines(s, ["Subject: hi", "", "body", "..dot", "."])
        await asyncio.wait_for(done.wait(), 10)
        assert got == ["X-FILTERED: YES", "SUBJECT: HI", "", "BODY", "..DOT", "."]
        host.close()

    run(main())


def test_protocol_parsing_is_strict() -> None:
    with pytest.raises(p.FilterProtocolError):
        p.parse_output("filter-result|zz|00|proceed")
    with pytest.raises(p.FilterProtocolError):
        p.parse_output("filter-result|0123456789abcdef|0123456789abcdef|maybe")
    with pytest.raises(p.FilterProtocolError):
        p.parse_output("filter-result|0123456789abcdef|0123456789abcdef|reject")
    r = p.parse_output("filter-result|0123456789abcdef|0123456789abcdef|reject|550 no|pipes")
    assert isinstance(r, p.FilterResult) and r.param == "550 no|pipes"
    assert p.report_line("smtp-in", "link-disconnect", "ab" * 8, [], now=1.5) == \
        f"report|0.7|1.500000|smtp-in|link-disconnect|{'ab' * 8}"
    assert p.filter_line("data", "ab" * 8, "cd" * 8, [], now=2.0).endswith("|")
    assert p.valid_reply("550 5.7.1 x") and not p.valid_reply("250 ok")
    assert not p.valid_reply("55x")
    assert os.access(SCRIPT, os.X_OK)


def test_relay_filter_session_reports_smtp_out_only(tmp_path: pathlib.Path) -> None:
    rec = tmp_path / "rec"

    async def main() -> None:
        cfg = parse_string(f"filter rf proc-exec {cmd('reject-mail,smtp-out', rec)}\n"
                           "listen on 127.0.0.1 port 2525\n"
                           'action "out" relay host smtp://127.0.0.1:2526 filter rf\n'
                           'match from any for any action "out"\n')
        host = await host_for(cfg)
        proc = next(iter(host.procs.values()))
        assert proc.registered["smtp-out"] == {"*"}
        s = sid()
        assert host.begin_out(s, "out", rdns="mx.example.org", fcrdns="pass",
                              link_src="127.0.0.1:40000", link_dest="127.0.0.1:2526")
        # an unknown action, a sid in use: nothing
        assert host.begin_out(sid(), "nope", rdns="", fcrdns="pass", link_src="",
                              link_dest="") is None
        assert host.begin_out(s, "out", rdns="", fcrdns="pass", link_src="",
                              link_dest="") is None
        host.report(s, "tx-begin", ["0badc0de"])
        # an outgoing session is never asked anything, whatever a hostile pony sends
        d = await host.phase(s, "mail-from", ["spammer@example.org"])
        assert d.decision == "proceed"
        assert not host.wants_data(s)
        host.end(s)
        await asyncio.sleep(0.2)
        host.close()

    run(main())
    lines = rec.read_text().splitlines()
    assert "config|subsystem|smtp-out" in lines and "config|subsystem|smtp-in" not in lines
    reports = [ln.split("|") for ln in lines if ln.startswith("report|")]
    assert [r[3] for r in reports] == ["smtp-out"] * 3
    assert [r[4] for r in reports] == ["link-connect", "tx-begin", "link-disconnect"]
    assert reports[0][6:] == ["mx.example.org", "pass", "127.0.0.1:40000", "127.0.0.1:2526"]
    assert not any(ln.startswith("filter|") for ln in lines)


def test_filter_on_listener_and_relay_is_told_both(tmp_path: pathlib.Path) -> None:
    rec = tmp_path / "rec"

    async def main() -> None:
        cfg = parse_string(f"filter f proc-exec {cmd('smtp-out', rec)}\n"
                           "filter c chain { f }\n"
                           "listen on 127.0.0.1 port 2525 filter f\n"
                           'action "out" relay filter c\n'
                           'match from any for any action "out"\n')
        host = await host_for(cfg)
        s_in, s_out = sid(), sid()
        host.begin(s_in, 0, rdns="h", fcrdns="pass", src="10.0.0.1", link_src="10.0.0.1:1",
                   link_dest="127.0.0.1:2525")
        host.begin_out(s_out, "out", rdns="mx", fcrdns="pass", link_src="a", link_dest="b")
        await asyncio.sleep(0.2)
        host.close()

    run(main())
    lines = rec.read_text().splitlines()
    assert "config|subsystem|smtp-in" in lines and "config|subsystem|smtp-out" in lines
    connects = [ln.split("|")[3] for ln in lines if "|link-connect|" in ln]
    assert connects == ["smtp-in", "smtp-out"]
