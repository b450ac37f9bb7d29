"""Filters against a real daemon: proc-exec filters (protocol 0.7) and built-in ones."""

from __future__ import annotations

import os
import pathlib
import shutil
import smtplib
import socket
import sys

import pytest
from harness import Daemon, program_user, wait_for

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "filter" / "testfilter.py"


def filter_cmd(d: Daemon, modes: str, name: str) -> str:
    """The test filter copied where the program user can run it, recording to the state dir."""
    script = d.state / f"{name}.py"
    shutil.copy(SCRIPT, script)
    os.chmod(script, 0o755)
    rec = d.state / f"{name}.rec"
    rec.touch()
    pu = program_user()
    os.chown(rec, pu.pw_uid, pu.pw_gid)
    return f'"{sys.executable} {script} {modes} {rec}"'


def make(filters: str, chain: str) -> Daemon:
    d = Daemon(config="")
    d.config_path.write_text(
        filters.replace("{", "{{").replace("}", "}}").format() + "\n"
        f"listen on 127.0.0.1 port {d.port} filter {chain}\n"
        f'table all {{ "@" = "{d.user}" }}\n'
        f'action "local" maildir "{d.mail}/%{{rcpt.user}}" virtual <all>\n'
        "match from any for any action \"local\"\n")
    return d


def session(port: int, lines: list[bytes]) -> list[str]:
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        f = s.makefile("rb")
        replies = []

        def read() -> None:
            while True:
                line = f.readline().decode()
                replies.append(line.rstrip("\r\n"))
                if len(line) < 4 or line[3] != "-":
                    return

        read()
        for line in lines:
            s.sendall(line)
            read()
    return replies


def test_proc_filter_reject_data_rewrite_and_reports(tmp_path: pathlib.Path) -> None:
    d = make("", "f")
    cmd1 = filter_cmd(d, "reject-mail,data-header", "f1")
    cmd2 = filter_cmd(d, "data-upper", "f2")
    text = d.config_path.read_text()
    d.config_path.write_text(f"filter f1 proc-exec {cmd1}\nfilter f2 proc-exec {cmd2}\n"
                             "filter f chain { f1, f2 }\n" + text)
    with d:
        replies = session(d.port, [b"EHLO client.example\r\n", b"MAIL FROM:<spam@x.example>\r\n",
                                   b"MAIL FROM:<plain@x.example>\r\n",
                                   b"MAIL FROM:<later@x.example>\r\n", b"QUIT\r\n"])
        assert "550 5.7.1 no spam here" in replies
        # the filter's reply reaches the client unchanged, as OpenSMTPD sends it:
        # no enhanced status code is made up when the filter gave none
        assert "550 no plain mail here" in replies, replies
        assert "451 4.7.1 not now" in replies, replies
        with smtplib.SMTP("127.0.0.1", d.port, timeout=20) as c:
            c.sendmail("ok@x.example", ["bob@localhost"],
                       b"Subject: hello\r\n\r\nsecret body\r\n.dot line\r\n")
        got = wait_for(lambda: list((d.mail / "bob" / "new").glob("*"))
                       if (d.mail / "bob" / "new").is_dir() else [])
        data = got[0].read_bytes()
        # f1 adds a header before the first line; f2 upper-cases everything after it
        assert b"\nX-FILTERED: YES\nRECEIVED: " in data
        assert data.endswith(b"\nSUBJECT: HELLO\n\nSECRET BODY\n.DOT LINE\n")
        events = [line.split("|")[4] for line in (d.state / "f1.rec").read_text().splitlines()
                  if line.startswith("report|")]
        # one full session, in order (filter-response lines may interleave)
        seq = [e for e in events if e != "filter-response"]
        start = len(seq) - 1 - seq[::-1].index("link-connect")
        assert seq[start:] == ["link-connect", "link-greeting", "link-identify", "tx-begin",
                               "tx-mail", "tx-rcpt", "tx-data", "tx-commit", "tx-reset",
                               "link-disconnect"]


@pytest.mark.parametrize(("phase", "cond", "commands", "expect"), [
    ("connect", "src <nets>", [], "554 5.7.1 go away"),
    ("ehlo", 'helo regex "^bad"', [b"EHLO bad.example\r\n"], "554 5.7.1 go away"),
    ("mail-from", "mail-from <spammers>", [b"EHLO x\r\n", b"MAIL FROM:<evil@spam.example>\r\n"],
     "554 5.7.1 go away"),
    ("rcpt-to", 'rcpt-to regex "^postmaster@"',
     [b"EHLO x\r\n", b"MAIL FROM:<a@b.example>\r\n", b"RCPT TO:<postmaster@localhost>\r\n"],
     "554 5.7.1 go away"),
    ("data", "src <nets>", [b"EHLO x\r\n", b"MAIL FROM:<a@b.example>\r\n",
                            b"RCPT TO:<u@localhost>\r\n", b"DATA\r\n"], "554 5.7.1 go away"),
    ("commit", "src <nets>", [b"EHLO x\r\n", b"MAIL FROM:<a@b.example>\r\n",
                              b"RCPT TO:<u@localhost>\r\n", b"DATA\r\n",
                              b"Subject: x\r\n\r\nbody\r\n.\r\n"], "554 5.7.1 go away"),
])
def test_builtin_reject_at_each_phase(phase: str, cond: str, commands: list[bytes],
                                      expect: str) -> None:
    d = make("table nets { 127.0.0.0/8 }\ntable spammers { \"@spam.example\" }\n"
             f'filter b phase {phase} match {cond} reject "554 5.7.1 go away"', "b")
    with d:
        replies = session(d.port, commands)
        assert replies[-1] == expect, replies
        if phase == "commit":
            assert not (d.mail / "u").exists()


def test_crashing_filter_gets_421_and_is_restarted() -> None:
    d = make("", "f")
    d.config_path.write_text(f"filter f proc-exec {filter_cmd(d, 'crash-mail', 'c')}\n"
                             + d.config_path.read_text())
    with d:
        replies = session(d.port, [b"EHLO x\r\n", b"MAIL FROM:<a@b.example>\r\n"])
        assert replies[-1].startswith("421 "), replies
        wait_for(lambda: d.log().count("filter started") >= 2, timeout=30)
        replies = session(d.port, [b"EHLO x\r\n", b"NOOP\r\n"])
        assert replies[-1].startswith("250"), replies
        assert d.proc is not None and d.proc.poll() is None
