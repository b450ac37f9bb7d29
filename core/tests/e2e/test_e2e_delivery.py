"""End to end: every local delivery method against a real mailriderd (docs/config.md §8).

One daemon serves the whole module; each method has its own test domain:

- md.test     maildir whose path uses format specifiers
- mda.test    mda command that saves its stdin and its environment
- tmp.test    mda command that exits 75 (EX_TEMPFAIL): the mail stays queued
- lmtp.test   lmtp to a TCP server on 127.0.0.1, rcpt-to
- lmtpu.test  lmtp to a unix socket (RCPT TO = the user name)
- fan.test    virtual table fan-out (team -> alice, bob -> the delivery user)
- alias.test  aliases file with a user, |command, /file and :include:
- mbox.test   /var/mail/<user>
"""

from __future__ import annotations

import os
import pwd
from pathlib import Path

import pytest
from e2e_util import (
    BODY,
    LmtpServer,
    files_in,
    smtp_send,
    split_delivery,
    unstuff_lmtp,
    wait_delivered,
    wait_file,
    wait_files,
)
from harness import Daemon, delivery_user, program_user, wait_for

CONFIG = """\
listen on 127.0.0.1 port {port}
table all {{ "@" = "{user}" }}
table vusers {{ "team@fan.test" = "alice@fan.test, bob@fan.test", "@" = "{user}" }}
table mdausers {{ "tagged@mda.test" = "{user}+box", "@" = "{user}" }}
table aliases file:{state}/aliases
action "md" maildir \\
    "{mail}/md/%{{rcpt.user:lowercase|strip}}@%{{rcpt.domain}}-from-%{{sender.domain}}" \\
    virtual <all>
action "mda" mda \\
    "env > {mail}/mda-env-%{{rcpt.user:strip}} && cat > {mail}/mda-out-%{{rcpt.user:strip}}" \\
    virtual <mdausers>
action "tmp" mda "echo try later >&2; exit 75" virtual <all>
action "lmtp-tcp" lmtp "127.0.0.1:LMTPPORT" rcpt-to virtual <all>
action "lmtp-unix" lmtp "{state}/lmtp.sock" virtual <all>
action "fan" maildir "{mail}/fan/%{{dest.user}}" virtual <vusers>
action "al" maildir "{mail}/al/%{{user.username}}" alias <aliases>
action "mbox" mbox virtual <all>
match from local for domain "md.test" action "md"
match from local for domain "mda.test" action "mda"
match from local for domain "tmp.test" action "tmp"
match from local for domain "lmtp.test" action "lmtp-tcp"
match from local for domain "lmtpu.test" action "lmtp-unix"
match from local for domain "fan.test" action "fan"
match from local for domain "alias.test" action "al"
match from local for domain "mbox.test" action "mbox"
"""

SENDER = "alice@example.org"


class Env:
    def __init__(self) -> None:
        self.lmtp_tcp = LmtpServer()
        port = self.lmtp_tcp.address.rpartition(":")[2]
        self.d = Daemon(CONFIG.replace("LMTPPORT", port))
        # |command and /file targets run as the external user: they write in its folder
        st, ext = self.d.state, self.d.ext
        (st / "aliases").write_text(
            f"team: {self.d.user}, \"|cat > {ext}/al-pipe\", {ext}/al-file, "
            f":include:{st}/al-include\n"
            f"# a comment\nother: {self.d.user}\n")
        (st / "al-include").write_text(f"# included\n{ext}/al-inc-file\n")
        for name in ("aliases", "al-include"):
            os.chmod(st / name, 0o644)
        self.lmtp_unix = LmtpServer(str(st / "lmtp.sock"))
        self.d.start()

    def close(self) -> None:
        self.d.cleanup()
        self.lmtp_tcp.close()
        self.lmtp_unix.close()


@pytest.fixture(scope="module")
def env() -> Env:
    e = Env()
    yield e
    e.close()


def accepted(t: object) -> None:
    rcpts = t.rcpts  # type: ignore[attr-defined]
    assert all(code == 250 for code, _ in rcpts), rcpts
    assert t.data is not None and t.data[0] == 250, t.data  # type: ignore[attr-defined]


def test_maildir_path_with_format_specifiers(env: Env) -> None:
    accepted(smtp_send(env.d.port, SENDER, ["Joe+Tag@md.test"]))
    wait_delivered(env.d, "Joe+Tag@md.test")
    folder = env.d.mail / "md" / "joe@md.test-from-example.org"
    (msg,) = wait_files(folder / "new")
    head, received, body = split_delivery(msg)
    assert head == b"Return-Path: <alice@example.org>\nDelivered-To: Joe+Tag@md.test"
    assert received.startswith(b"Received: from client.example (")
    assert body == BODY
    assert sorted(p.name for p in folder.iterdir()) == ["cur", "new", "tmp"]
    # the delivery ran as the delivery user, not as root
    st = next((folder / "new").iterdir()).stat()
    assert st.st_uid == delivery_user().pw_uid


def test_mda_gets_the_exact_message_and_environment(env: Env) -> None:
    accepted(smtp_send(env.d.port, SENDER, ["joe+ext@mda.test"]))
    wait_delivered(env.d, "joe+ext@mda.test")
    out = wait_file(env.d.mail / "mda-out-joe")
    head, _received, body = split_delivery(out)
    assert head == b"Return-Path: <alice@example.org>\nDelivered-To: joe+ext@mda.test"
    assert body == BODY
    envtext = wait_file(env.d.mail / "mda-env-joe").decode()
    environ = dict(line.split("=", 1) for line in envtext.splitlines() if "=" in line)
    pw = pwd.getpwnam(env.d.user)
    assert environ["SENDER"] == SENDER
    assert environ["RECIPIENT"] == "joe+ext@mda.test"
    assert environ["ORIGINAL_RECIPIENT"] == "joe+ext@mda.test"
    assert environ["LOCAL"] == "joe+ext"
    assert environ["DOMAIN"] == "mda.test"
    # as in OpenSMTPD, EXTENSION is the tag of the final user name, and the
    # virtual table mapped joe+ext@ to the plain user name
    assert environ["EXTENSION"] == ""
    assert environ["USER"] == env.d.user
    assert environ["LOGNAME"] == env.d.user
    assert environ["HOME"] == pw.pw_dir
    assert environ["SHELL"] == "/bin/sh"
    assert environ["PATH"] == "/usr/local/bin:/usr/bin:/bin"
    assert env.d.maildir("mda-out-joe") == []  # sanity: a file, not a Maildir


def test_mda_extension_comes_from_the_user_name(env: Env) -> None:
    accepted(smtp_send(env.d.port, "", ["tagged@mda.test"]))
    wait_delivered(env.d, "tagged@mda.test")
    envtext = wait_file(env.d.mail / "mda-env-tagged").decode()
    environ = dict(line.split("=", 1) for line in envtext.splitlines() if "=" in line)
    assert environ["EXTENSION"] == "box"
    assert environ["USER"] == env.d.user
    assert environ["SENDER"] == ""  # the null sender
    head = split_delivery(wait_file(env.d.mail / "mda-out-tagged"))[0]
    assert head == b"Return-Path: <>\nDelivered-To: tagged@mda.test"


def test_mda_exit_75_stays_queued_with_its_error(env: Env) -> None:
    t = smtp_send(env.d.port, SENDER, ["later@tmp.test"])
    accepted(t)
    msgid = t.data[1].split()[1]  # type: ignore[index]

    def queued() -> list[list[str]]:
        out = env.d.ctl("show", "queue").stdout.splitlines()
        rows = [line.split("|") for line in out if line.startswith(msgid)]
        return rows if rows and rows[0][-1] else []

    (row,) = wait_for(queued)  # type: ignore[misc]
    assert len(row) == 14, row
    evpid, family, kind, _flags, sender, rcpt, dest = row[:7]
    assert evpid.startswith(msgid) and len(evpid) == 16
    assert (family, kind, sender, rcpt, dest) == ("inet4", "mda", SENDER, "later@tmp.test",
                                                    "later@tmp.test")
    assert row[11] in ("pending", "inflight")
    assert row[13].startswith("451 4.3.0 mda exited 75"), row[13]
    assert "try later" in row[13]
    assert int(row[10]) >= 1  # retry count
    # not bounced, not delivered: the envelope is still there, and no bounce was made
    assert not any("bounce" in line for line in env.d.ctl("show", "queue").stdout.splitlines()
                   if line.startswith(msgid))


def test_lmtp_over_tcp_with_rcpt_to(env: Env) -> None:
    accepted(smtp_send(env.d.port, SENDER, ["Carol@lmtp.test"]))
    wait_delivered(env.d, "Carol@lmtp.test")
    (tx,) = wait_for(lambda: env.lmtp_tcp.transactions)  # type: ignore[misc]
    assert tx.mail_from == SENDER
    assert tx.rcpts == ["Carol@lmtp.test"]
    assert tx.lhlo
    assert b"\r\n.leading dot\r\n" not in tx.data  # dot-stuffed on the wire
    assert b"\r\n..leading dot\r\n" in tx.data
    assert b"\n" not in tx.data.replace(b"\r\n", b"")
    head, _received, body = split_delivery(unstuff_lmtp(tx.data))
    assert head == b"Return-Path: <alice@example.org>\nDelivered-To: Carol@lmtp.test"
    assert body == BODY


def test_lmtp_over_unix_socket_to_the_user(env: Env) -> None:
    accepted(smtp_send(env.d.port, SENDER, ["dave@lmtpu.test"]))
    wait_delivered(env.d, "dave@lmtpu.test")
    (tx,) = wait_for(lambda: env.lmtp_unix.transactions)  # type: ignore[misc]
    assert tx.mail_from == SENDER
    # without rcpt-to the LMTP recipient is the user name (%{user.username})
    assert tx.rcpts == [env.d.user]
    _head, _received, body = split_delivery(unstuff_lmtp(tx.data))
    assert body == BODY


def test_virtual_fan_out(env: Env) -> None:
    accepted(smtp_send(env.d.port, SENDER, ["team@fan.test"]))
    wait_delivered(env.d, "team@fan.test", 2)
    for name in ("alice", "bob"):
        (msg,) = wait_files(env.d.mail / "fan" / name / "new")
        head, _received, body = split_delivery(msg)
        assert head == (b"Return-Path: <alice@example.org>\nDelivered-To: " + name.encode()
                        + b"@fan.test")
        assert body == BODY
    assert sorted(os.listdir(env.d.mail / "fan")) == ["alice", "bob"]
    # an address with no entry of its own falls to "@"
    accepted(smtp_send(env.d.port, SENDER, ["zed@fan.test"]))
    wait_delivered(env.d, "zed@fan.test")
    wait_files(env.d.mail / "fan" / "zed" / "new")


def test_aliases_file_user_pipe_file_and_include(env: Env) -> None:
    mail, ext = env.d.mail, env.d.ext
    accepted(smtp_send(env.d.port, SENDER, ["team@alias.test"]))
    wait_delivered(env.d, "team@alias.test", 4)
    (msg,) = wait_files(mail / "al" / env.d.user / "new")
    assert split_delivery(msg)[2] == BODY
    piped = wait_file(ext / "al-pipe")
    # no action user: the command ran as the external user, not a daemon user
    assert (ext / "al-pipe").stat().st_uid == program_user().pw_uid
    assert split_delivery(piped)[0] == (b"Return-Path: <alice@example.org>\n"
                                        b"Delivered-To: team@alias.test")
    assert split_delivery(piped)[2] == BODY
    for name in ("al-file", "al-inc-file"):
        data = wait_file(ext / name)
        assert (ext / name).stat().st_uid == program_user().pw_uid
        first, _, rest = data.partition(b"\n")
        assert first.startswith(b"From alice@example.org "), first
        assert rest.startswith(b"Return-Path: <alice@example.org>\n")
        # mboxrd: the body line starting with "From " is quoted
        assert b"\n>From the start\n" in rest
        assert rest.endswith(b"last line\n\n")
    # every target got exactly one copy
    assert len(files_in(mail / "al" / env.d.user / "new")) == 1
    assert (ext / "al-file").read_bytes().count(b"\nSubject: e2e\n") == 1


def test_alias_unknown_user_is_refused(env: Env) -> None:
    t = smtp_send(env.d.port, SENDER, ["nobody-here-xyz@alias.test"])
    assert t.rcpts[0][0] == 550 and t.rcpts[0][1].startswith("5.1.1"), t.rcpts


MBOX_DIR = Path("/var/mail")


def test_mbox_delivery(env: Env) -> None:
    if os.geteuid() != 0:
        pytest.skip("mbox writes /var/mail/<user>: only root can prepare that mailbox")
    box = MBOX_DIR / env.d.user
    if not MBOX_DIR.is_dir():
        pytest.skip(f"{MBOX_DIR} does not exist")
    if box.exists():
        pytest.skip(f"{box} exists already; not touching a real mailbox")
    pw = pwd.getpwnam(env.d.user)
    fd = os.open(box, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchown(fd, pw.pw_uid, pw.pw_gid)
        os.close(fd)
        accepted(smtp_send(env.d.port, SENDER, ["mbox@mbox.test"]))
        wait_delivered(env.d, "mbox@mbox.test")
        data = wait_file(box)
        first, _, rest = data.partition(b"\n")
        assert first.startswith(b"From alice@example.org ")
        head, _received, body = split_delivery(rest)
        assert head == b"Return-Path: <alice@example.org>\nDelivered-To: mbox@mbox.test"
        assert body == BODY.replace(b"\nFrom the start", b"\n>From the start") + b"\n"
    finally:
        box.unlink()
        lock = MBOX_DIR / (env.d.user + ".lock")
        if lock.exists():
            lock.unlink()
