"""SMTP AUTH against a real daemon: only inside TLS, PLAIN and LOGIN, $6$/$5$
hashes from the openssl CLI, yescrypt and bcrypt made by the system, senders,
and rules on authenticated users."""

from __future__ import annotations

import base64
import os
import pathlib
import re
import shutil
import smtplib
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from harness import Daemon, free_port, wait_for

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "crypto"))
from pki_util import OPENSSL, make_pki

ROOT = pathlib.Path(__file__).resolve().parents[3]

pytestmark = pytest.mark.skipif(OPENSSL is None, reason="openssl CLI not installed")


def openssl_hash(scheme: str, password: str) -> str:
    return subprocess.run([OPENSSL, "passwd", f"-{scheme}", "-salt", "saltsalt", password],
                          capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture(scope="module")
def d() -> Iterator[Daemon]:
    daemon = Daemon(config="")
    keys = daemon.state / "keys"
    keys.mkdir(mode=0o700)
    rsa = make_pki(keys, "mx", "rsa", cn="mx.test")
    daemon.cafile = rsa.cert  # type: ignore[attr-defined]
    creds = daemon.state / "creds"
    creds.write_text(f"alice {openssl_hash('6', 'wonder land')}\n"
                     f"bob {openssl_hash('5', 'builder')}\n")
    senders = daemon.state / "senders"
    senders.write_text("alice alice@example.org, @alice.example\n")
    for f in (creds, senders):
        os.chmod(f, 0o644)
    assert daemon.config_path is not None
    daemon.config_path.write_text(
        f'pki mx.test cert "{rsa.cert}"\npki mx.test key "{rsa.key}"\n'
        f"table creds file:{creds}\ntable sendmap file:{senders}\n"
        f"listen on 127.0.0.1 port {daemon.port} tls pki mx.test auth <creds> "
        "senders <sendmap> received-auth\n"
        f'table all {{ "@" = "{daemon.user}" }}\n'
        f'action "local" maildir "{daemon.mail}/%{{rcpt.user}}" virtual <all>\n'
        'match from any auth for any action "local"\n'
        'match from any for any reject\n')
    daemon.start()
    yield daemon
    daemon.cleanup()


def tls_client(d: Daemon) -> smtplib.SMTP:
    c = smtplib.SMTP("127.0.0.1", d.port, timeout=30)
    c._host = "mx.test"
    c.ehlo()
    assert "auth" not in c.esmtp_features  # never advertised in clear text
    c.starttls(context=ssl.create_default_context(cafile=d.cafile))  # type: ignore[attr-defined]
    c.ehlo()
    return c


def test_auth_before_tls_is_refused(d: Daemon) -> None:
    with socket.create_connection(("127.0.0.1", d.port), timeout=20) as s:
        f = s.makefile("rb")
        f.readline()
        s.sendall(b"EHLO x\r\n")
        while (line := f.readline())[3:4] == b"-":
            assert b"AUTH" not in line
        plain = base64.b64encode(b"\0alice\0wonder land")
        s.sendall(b"AUTH PLAIN " + plain + b"\r\n")
        assert f.readline().startswith(b"538 5.7.11")


@pytest.mark.parametrize(("mech", "user", "password"), [
    ("PLAIN", "alice", "wonder land"), ("LOGIN", "alice", "wonder land"),
    ("PLAIN", "bob", "builder"), ("LOGIN", "bob", "builder"),
])
def test_auth_plain_and_login_with_sha_crypt(d: Daemon, mech: str, user: str,
                                             password: str) -> None:
    with tls_client(d) as c:
        assert "PLAIN" in c.esmtp_features["auth"] and "LOGIN" in c.esmtp_features["auth"]
        c.user, c.password = user, password
        code, _ = c.auth(mech, getattr(c, f"auth_{mech.lower()}"),
                         initial_response_ok=mech == "PLAIN")
        assert code == 235
        sender = "alice@example.org" if user == "alice" else "bob@nowhere.example"
        if user == "bob":
            return  # bob has no senders entry: checked in the next test
        c.sendmail(sender, [f"in{mech.lower()}@localhost"], b"Subject: a\r\n\r\nauthd\r\n")
    got = wait_for(lambda: list((d.mail / f"in{mech.lower()}" / "new").glob("*"))
                   if (d.mail / f"in{mech.lower()}" / "new").is_dir() else [])
    data = got[-1].read_bytes()
    assert b"with ESMTPSA" in data
    assert b"(mailrider) (auth=yes user=alice)" in data  # received-auth


def test_wrong_password_and_unknown_user(d: Daemon) -> None:
    with tls_client(d) as c:
        c.user, c.password = "alice", "Wonder Land"  # case matters: never lower-cased
        with pytest.raises(smtplib.SMTPAuthenticationError) as info:
            c.auth("PLAIN", c.auth_plain)
        assert info.value.smtp_code == 535
        c.user = "nobody"
        with pytest.raises(smtplib.SMTPAuthenticationError):
            c.auth("PLAIN", c.auth_plain)
    assert "result=permfail" in d.log()
    assert "Wonder Land" not in d.log()


def test_auth_failures_in_the_form_fail2ban_reads(d: Daemon, tmp_path: pathlib.Path) -> None:
    """After test_wrong_password_and_unknown_user: OpenSMTPD's lines, which
    core/examples/fail2ban/mailrider.conf ties together by the session id."""
    with tls_client(d) as c:
        c.user, c.password = "mallory", "guess"
        with pytest.raises(smtplib.SMTPAuthenticationError):
            c.auth("PLAIN", c.auth_plain)
    wait_for(lambda: "user=mallory result=permfail" in d.log())
    log = d.log()
    failed = re.search(r"^.*\]: ([0-9a-f]{16}) smtp authentication user=mallory "
                       r"result=permfail$", log, re.M)
    assert failed, log
    sid = failed.group(1)
    assert re.search(rf"\]: {sid} smtp connected address=127\.0\.0\.1 host=\S+ port=\d+$",
                     log, re.M)
    assert re.search(rf"\]: {sid} smtp failed-command command=\"AUTH PLAIN \(\.\.\.\)\" "
                     r"result=\"535 5\.7\.8 ", log), log
    f2b = shutil.which("fail2ban-regex")
    common = pathlib.Path("/etc/fail2ban/filter.d/common.conf")
    if f2b is None or not common.is_file():
        pytest.skip("fail2ban is not installed (the lines' form is checked above)")
    # fail2ban reads the filter's "before = common.conf" beside it
    (tmp_path / "filter.d").mkdir()
    shutil.copy(common, tmp_path / "filter.d" / "common.conf")
    shutil.copy(ROOT / "core" / "examples" / "fail2ban" / "mailrider.conf", tmp_path / "filter.d")
    logfile = tmp_path / "mail.log"
    logfile.write_text(log)
    res = subprocess.run([f2b, "-o", "<ip> <F-USER>", str(logfile),
                          str(tmp_path / "filter.d" / "mailrider.conf")],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    found = [line for line in res.stdout.split("\n") if line]
    assert "127.0.0.1 mallory" in found, res.stdout
    # one ban-worthy failure per permfail line, each with its session's address;
    # the successful logins of the tests before count for nothing
    assert len(found) == len(re.findall(r"smtp authentication user=\S+ result=permfail", log)), \
        (res.stdout, log)
    assert all(line.startswith("127.0.0.1 ") for line in found), res.stdout


def test_senders_and_unauthenticated_mail(d: Daemon) -> None:
    with tls_client(d) as c:
        c.login("alice", "wonder land")
        assert c.mail("someone@alice.example")[0] == 250
        c.rset()
        code, msg = c.mail("bob@nowhere.example")
        assert (code, msg[:5]) == (550, b"5.7.1")
    with tls_client(d) as c:
        c.login("bob", "builder")
        assert c.mail("bob@nowhere.example")[0] == 550  # no senders entry at all
    with tls_client(d) as c:
        code, msg = c.mail("x@y.example")
        assert (code, msg[:5]) == (530, b"5.7.0")


def test_failures_close_the_session_after_three(d: Daemon) -> None:
    with tls_client(d) as c:
        c.user, c.password = "alice", "nope"
        started = time.monotonic()
        codes = []
        for _ in range(3):
            try:
                c.auth("PLAIN", c.auth_plain)
            except smtplib.SMTPAuthenticationError as exc:
                codes.append(exc.smtp_code)
            except smtplib.SMTPServerDisconnected:
                codes.append(0)
                break
        assert codes[:2] == [535, 535] and codes[2] in (421, 0)
        assert time.monotonic() - started >= 1.0  # each failure is answered late


def system_hash(method: str, password: str) -> str | None:
    """A hash made by the system: mkpasswd (Debian: whois), else its crypt(3)."""
    mkpasswd = shutil.which("mkpasswd")
    if mkpasswd is not None:
        res = subprocess.run([mkpasswd, "-m", method, "-s"], input=password + "\n",
                             capture_output=True, text=True, timeout=30)
        if res.returncode == 0:
            return res.stdout.strip()
    from mailrider.crypto import syscrypt

    setting = syscrypt.gensalt({"yescrypt": "$y$", "bcrypt": "$2b$"}[method])
    return syscrypt.crypt(password, setting) if setting else None


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("useradd") is None
                    or shutil.which("chpasswd") is None,
                    reason="needs root, useradd and chpasswd for a throwaway system user")
def test_system_user_with_yescrypt_and_table_bcrypt() -> None:
    """``auth`` without a table checks /etc/shadow, where Debian writes yescrypt;
    a table's bcrypt hash goes the same way through lka."""
    yes = system_hash("yescrypt", "snow white")
    bcrypt = system_hash("bcrypt", "seven dwarfs")
    if yes is None or bcrypt is None:
        pytest.skip("the system cannot make yescrypt/bcrypt hashes")
    name = f"mrtest{os.getpid() % 100000}"
    subprocess.run(["useradd", "--no-create-home", "--home-dir", "/nonexistent",
                    "--shell", "/usr/sbin/nologin", name], check=True, timeout=60)
    try:
        subprocess.run(["chpasswd", "-e"], input=f"{name}:{yes}\n", text=True, check=True,
                       timeout=60)
        daemon = Daemon(config="")
        keys = daemon.state / "keys"
        keys.mkdir(mode=0o700)
        rsa = make_pki(keys, "mx", "rsa", cn="mx.test")
        daemon.cafile = rsa.cert  # type: ignore[attr-defined]
        creds = daemon.state / "creds"
        creds.write_text(f"dwarf {bcrypt}\n")
        os.chmod(creds, 0o644)
        table_port = free_port()
        assert daemon.config_path is not None
        daemon.config_path.write_text(
            f'pki mx.test cert "{rsa.cert}"\npki mx.test key "{rsa.key}"\n'
            f"table creds file:{creds}\n"
            f"listen on 127.0.0.1 port {daemon.port} tls pki mx.test auth\n"
            f"listen on 127.0.0.1 port {table_port} tls pki mx.test auth <creds>\n"
            'match from any for any reject\n')
        with daemon as d:
            with tls_client(d) as c:
                assert c.login(name, "snow white")[0] == 235
            with tls_client(d) as c:
                c.user, c.password = name, "snow whitE"
                with pytest.raises(smtplib.SMTPAuthenticationError) as info:
                    c.auth("PLAIN", c.auth_plain)
                assert info.value.smtp_code == 535
            d.port, main_port = table_port, d.port
            try:
                with tls_client(d) as c:
                    assert c.login("dwarf", "seven dwarfs")[0] == 235
            finally:
                d.port = main_port
            assert "unsupported password hash" not in d.log()
            assert "snow white" not in d.log()
    finally:
        subprocess.run(["userdel", name], timeout=60)
