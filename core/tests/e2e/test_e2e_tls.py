"""TLS against a real daemon: STARTTLS, smtps, SNI, RSA and ECDSA, TLS 1.2 and
1.3, injection, tls-require — with the private keys only in klondike."""

from __future__ import annotations

import os
import pathlib
import shutil
import smtplib
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from harness import Daemon, wait_for

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "crypto"))
from pki_util import OPENSSL, make_pki
from test_tls_klondike import _needles, _scan

pytestmark = pytest.mark.skipif(OPENSSL is None, reason="openssl CLI not installed")


def role_pid(d: Daemon, role: str) -> int:
    assert d.proc is not None
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            status = pathlib.Path(f"/proc/{entry}/status").read_text()
            cmdline = pathlib.Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        ppid = next(int(x.split()[1]) for x in status.splitlines() if x.startswith("PPid:"))
        if ppid == d.proc.pid and b"-x" in cmdline and cmdline[cmdline.index(b"-x") + 1] == \
                role.encode():
            return int(entry)
    raise LookupError(role)


@pytest.fixture(scope="module")
def d() -> Iterator[Daemon]:
    daemon = Daemon(config="")
    keys = daemon.state / "keys"
    keys.mkdir(mode=0o700)
    rsa = make_pki(keys, "mx", "rsa", cn="mx.test")
    ec = make_pki(keys, "ec", "p256", cn="ec.test")
    daemon.pkis = {"mx.test": rsa, "ec.test": ec}  # type: ignore[attr-defined]
    smtps = daemon.port + 1 if daemon.port < 65000 else daemon.port - 1
    req = smtps + 1 if smtps < 65000 else smtps - 2
    daemon.smtps_port = smtps  # type: ignore[attr-defined]
    daemon.require_port = req  # type: ignore[attr-defined]
    assert daemon.config_path is not None
    daemon.config_path.write_text(
        f'pki mx.test cert "{rsa.cert}"\npki mx.test key "{rsa.key}"\n'
        f'pki ec.test cert "{ec.cert}"\npki ec.test key "{ec.key}"\n'
        f"listen on 127.0.0.1 port {daemon.port} tls pki mx.test pki ec.test\n"
        f"listen on 127.0.0.1 port {smtps} smtps pki mx.test\n"
        f"listen on 127.0.0.1 port {req} tls-require pki mx.test\n"
        f'table all {{ "@" = "{daemon.user}" }}\n'
        f'action "local" maildir "{daemon.mail}/%{{rcpt.user}}" virtual <all>\n'
        'match from any for any action "local"\n')
    daemon.start()
    yield daemon
    daemon.cleanup()


def client_ctx(d: Daemon, name: str, version: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=d.pkis[name].cert)  # type: ignore[attr-defined]
    if version is not None:
        ctx.minimum_version = ctx.maximum_version = version
    return ctx


@pytest.mark.parametrize("name", ["mx.test", "ec.test"])
@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_starttls_verifies_and_delivers(d: Daemon, name: str, version: ssl.TLSVersion) -> None:
    with smtplib.SMTP("127.0.0.1", d.port, timeout=20) as c:
        c._host = name  # the SNI name smtplib sends
        code, _ = c.starttls(context=client_ctx(d, name, version))
        assert code == 220
        assert c.sock.version() == version.name.replace("_", ".").replace("v1.", "v1.")
        user = f"tls{version.name[-1]}{name[:2]}"
        c.sendmail("a@b.example", [f"{user}@localhost"], b"Subject: t\r\n\r\nsecret\r\n")
    got = wait_for(lambda: list((d.mail / user / "new").glob("*"))
                   if (d.mail / user / "new").is_dir() else [])
    data = got[0].read_bytes()
    assert b"with ESMTPS (TLSv1." in data


def test_smtps_and_openssl_s_client(d: Daemon) -> None:
    raw = socket.create_connection(("127.0.0.1", d.smtps_port), timeout=20)  # type: ignore[attr-defined]
    with client_ctx(d, "mx.test").wrap_socket(raw, server_hostname="mx.test") as s:
        assert s.recv(1000).startswith(b"220 ")
        s.sendall(b"EHLO x\r\n")
        time.sleep(0.3)
        reply = s.recv(4000)
        assert reply.startswith(b"250-") and b"STARTTLS" not in reply
    res = subprocess.run(
        [OPENSSL, "s_client", "-starttls", "smtp", "-connect", f"127.0.0.1:{d.port}",
         "-servername", "ec.test", "-CAfile", d.pkis["ec.test"].cert,  # type: ignore[attr-defined]
         "-verify_return_error", "-brief"],
        input=b"QUIT\r\n", capture_output=True, timeout=30)
    out = (res.stdout + res.stderr).decode()
    assert "Verification: OK" in out, out
    assert "CN = ec.test" in out or "ec.test" in out


def test_starttls_injection_is_not_executed(d: Daemon) -> None:
    before = d.log().count("smtp message ")
    with socket.create_connection(("127.0.0.1", d.port), timeout=20) as s:
        s.recv(1000)
        s.sendall(b"EHLO x\r\n")
        time.sleep(0.3)
        s.recv(4000)
        s.sendall(b"STARTTLS\r\nMAIL FROM:<evil@x.example>\r\nRCPT TO:<inj@localhost>\r\n")
        out = b""
        s.settimeout(10)
        try:
            while chunk := s.recv(4000):
                out += chunk
        except (ConnectionError, TimeoutError, OSError):
            pass
    assert b"250 2.1.0" not in out and b"250 2.1.5" not in out, out
    assert d.log().count("smtp message ") == before


def _talk(d: Daemon, *sends: bytes, wait_first: bool = False) -> bytes:
    """EHLO, then ``sends``; everything the server says until it closes."""
    with socket.create_connection(("127.0.0.1", d.port), timeout=20) as s:
        s.settimeout(20)
        s.recv(1000)
        s.sendall(b"EHLO x\r\n")
        out = b""
        while not out.endswith(b"250 STARTTLS\r\n"):
            out += s.recv(4000)
        out = b""
        for i, chunk in enumerate(sends):
            if i and wait_first:
                while b"\r\n" not in out:  # the answer to the first send, then in clear
                    out += s.recv(4000)
            s.sendall(chunk)
        try:
            while chunk := s.recv(4000):
                out += chunk
        except ConnectionResetError:
            pass  # unread bytes of ours: the 421 before it was read already
    return out


def test_pipelining_after_starttls_or_refused_data_gets_421(d: Daemon) -> None:
    before = d.log().count("smtp protocol-error ")
    evil = b"MAIL FROM:<evil@x.example>\r\nRCPT TO:<inj@localhost>\r\nDATA\r\n"
    # in the same packet as STARTTLS: no 220 at all
    out = _talk(d, b"STARTTLS\r\n" + evil)
    assert out.startswith(b"421 4.7.0 ") and out.endswith(b" Protocol violation\r\n"), out
    # after our 220, in clear instead of a handshake
    out = _talk(d, b"STARTTLS\r\n", evil, wait_first=True)
    assert out.startswith(b"220 2.0.0 Ready to start TLS\r\n421 4.7.0 "), out
    # behind a DATA refused for want of a recipient: the body is never run
    out = _talk(d, b"MAIL FROM:<a@example.org>\r\nDATA\r\n" + evil + b"Subject: x\r\n")
    assert out.startswith(b"250 2.1.0 Ok\r\n503 5.5.1 Need RCPT command\r\n421 4.7.0 "), out
    assert b"354" not in out
    wait_for(lambda: d.log().count("smtp protocol-error ") >= before + 3)
    log = d.log()
    assert "Traceback" not in log and "internal-error" not in log
    assert d.maildir("inj") == []


@pytest.mark.parametrize("then_close", [False, True])
def test_ehlo_in_the_same_flight_as_the_handshake_end(d: Daemon, then_close: bool) -> None:
    # a TLS 1.3 client may send its first command with its Finished (and even
    # its close_notify and EOF, as `openssl s_client <file` does): pony gets
    # them before its STARTTLS step has told the machine TLS is up
    ctx = client_ctx(d, "mx.test", ssl.TLSVersion.TLSv1_3)
    with socket.create_connection(("127.0.0.1", d.port), timeout=20) as s:
        s.settimeout(20)
        out = s.recv(1000)
        s.sendall(b"EHLO x\r\n")
        while not out.endswith(b"250 STARTTLS\r\n"):
            out += s.recv(4000)
        s.sendall(b"STARTTLS\r\n")
        while not out.endswith(b"220 2.0.0 Ready to start TLS\r\n"):
            out += s.recv(4000)
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = ctx.wrap_bio(incoming, outgoing, server_hostname="mx.test")
        for _ in range(20):
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                s.sendall(outgoing.read())
                incoming.write(s.recv(65536))
        tls.write(b"EHLO y\r\n")
        if then_close:
            with pytest.raises(ssl.SSLWantReadError):
                tls.unwrap()  # queues our close_notify
            s.sendall(outgoing.read())  # Finished, EHLO, close_notify
            s.shutdown(socket.SHUT_WR)
            wait_for(lambda: f"{s.getsockname()[1]}" in d.log()
                     and "disconnected" in d.log().split(f"port={s.getsockname()[1]}")[-1])
            assert "internal-error" not in d.log()
            return
        s.sendall(outgoing.read())  # the client's Finished and EHLO in one write
        text = b""
        while b"\r\n250 " not in b"\r\n" + text:
            data = s.recv(65536)
            assert data, text
            incoming.write(data)
            try:
                text += tls.read(65536)
            except ssl.SSLWantReadError:
                pass
        assert text.startswith(b"250-") and b"STARTTLS" not in text, text
    assert "internal-error" not in d.log()


def test_tls_require_refuses_mail_before_starttls(d: Daemon) -> None:
    with smtplib.SMTP("127.0.0.1", d.require_port, timeout=20) as c:  # type: ignore[attr-defined]
        c.ehlo()
        code, msg = c.mail("a@b.example")
        assert (code, msg[:5]) == (530, b"5.7.0")
        c._host = "mx.test"
        c.starttls(context=client_ctx(d, "mx.test"))
        c.ehlo()
        assert c.mail("a@b.example")[0] == 250


def test_private_keys_absent_from_pony_present_in_klondike(d: Daemon) -> None:
    for name in ("mx.test", "ec.test"):
        with smtplib.SMTP("127.0.0.1", d.port, timeout=20) as c:
            c._host = name
            c.starttls(context=client_ctx(d, name))
    pony, klondike = role_pid(d, "pony"), role_pid(d, "klondike")
    for name, pki in d.pkis.items():  # type: ignore[attr-defined]
        needles = _needles(pki)
        assert _scan(pony, needles) == set(), f"{name}: pony holds key material"
        secret = {"d limbs", "d python int", "ec scalar limbs", "ec scalar big-endian",
                  "ec scalar python int"}
        assert _scan(klondike, needles) & secret, f"{name}: the scan found nothing in klondike"
    stats = d.ctl("show", "stats").stdout
    assert int(stats.split("klondike.sign=")[1].split()[0]) >= 2


def test_klondike_death_takes_the_daemon_down_cleanly(tmp_path: pathlib.Path) -> None:
    daemon = Daemon(config="")
    try:
        keys = daemon.state / "keys"
        keys.mkdir(mode=0o700)
        rsa = make_pki(keys, "mx", "rsa", cn="mx.test")
        assert daemon.config_path is not None
        daemon.config_path.write_text(
            f'pki mx.test cert "{rsa.cert}"\npki mx.test key "{rsa.key}"\n'
            f"listen on 127.0.0.1 port {daemon.port} tls pki mx.test\n"
            'action "local" maildir\nmatch from any for local action "local"\n')
        daemon.start()
        os.kill(role_pid(daemon, "klondike"), 9)
        assert daemon.proc is not None
        assert daemon.proc.wait(30) == 1
        assert "child-lost" in daemon.log() or "child-exited" in daemon.log()
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", daemon.port), timeout=2).close()
    finally:
        daemon.cleanup()


def test_world_readable_key_is_refused(tmp_path: pathlib.Path) -> None:
    daemon = Daemon(config="")
    try:
        rsa = make_pki(daemon.state, "mx", "rsa", cn="mx.test")
        os.chmod(rsa.key, 0o644)
        assert daemon.config_path is not None
        daemon.config_path.write_text(
            f'pki mx.test cert "{rsa.cert}"\npki mx.test key "{rsa.key}"\n'
            f"listen on 127.0.0.1 port {daemon.port} tls pki mx.test\n"
            'action "local" maildir\nmatch from any for local action "local"\n')
        with pytest.raises(RuntimeError, match="insecure permissions"):
            daemon.start(timeout=30)
    finally:
        shutil.rmtree(daemon.state, ignore_errors=True)
