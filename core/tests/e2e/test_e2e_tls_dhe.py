"""``pki NAME dhe none|auto|legacy`` on a real daemon (docs/config.md §10).

Three listeners, one pki each: a TLS 1.2 client that offers only a DHE-RSA
cipher suite completes STARTTLS with ``dhe auto`` (2048-bit RFC 7919
parameters for a 2048-bit key) and ``dhe legacy`` (the same, with a warning
at start), and is refused without ``dhe`` (OpenSMTPD's default, none).
"""

from __future__ import annotations

import pathlib
import smtplib
import ssl
import sys
from collections.abc import Iterator

import pytest
from harness import Daemon, free_port

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "crypto"))
from pki_util import OPENSSL, make_pki

pytestmark = pytest.mark.skipif(OPENSSL is None, reason="openssl CLI not installed")

DHE_ONLY = "DHE-RSA-AES128-GCM-SHA256"


@pytest.fixture(scope="module")
def d() -> Iterator[Daemon]:
    daemon = Daemon(config="")
    keys = daemon.state / "keys"
    keys.mkdir(mode=0o700)
    pkis = {n: make_pki(keys, n, "rsa", cn=f"{n}.test") for n in ("auto", "legacy", "none")}
    ports = {"auto": daemon.port, "legacy": free_port(), "none": free_port()}
    daemon.pkis = pkis  # type: ignore[attr-defined]
    daemon.ports = ports  # type: ignore[attr-defined]
    text = ""
    for n, p in pkis.items():
        text += f'pki {n}.test cert "{p.cert}"\npki {n}.test key "{p.key}"\n'
    text += "pki auto.test dhe auto\npki legacy.test dhe legacy\n"
    for n, port in ports.items():
        text += f"listen on 127.0.0.1 port {port} tls pki {n}.test\n"
    text += (f'table all {{ "@" = "{daemon.user}" }}\n'
             f'action "local" maildir "{daemon.mail}/%{{rcpt.user}}" virtual <all>\n'
             'match from any for any action "local"\n')
    assert daemon.config_path is not None
    daemon.config_path.write_text(text)
    daemon.start()
    yield daemon
    daemon.cleanup()


def starttls(d: Daemon, name: str) -> tuple[str, str, int]:
    ctx = ssl.create_default_context(cafile=d.pkis[name].cert)  # type: ignore[attr-defined]
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(DHE_ONLY)
    with smtplib.SMTP("127.0.0.1", d.ports[name], timeout=30) as s:  # type: ignore[attr-defined]
        s.ehlo("client.test")
        s._host = f"{name}.test"  # the name the certificate is checked against
        s.starttls(context=ctx)
        sock = s.sock
        assert isinstance(sock, ssl.SSLSocket)
        cipher = sock.cipher()
        assert cipher is not None
        s.ehlo("client.test")
        code, _ = s.mail("a@example.org")
        assert code == 250
        return cipher


@pytest.mark.parametrize("name", ["auto", "legacy"])
def test_dhe_suites_with_auto_and_legacy(d: Daemon, name: str) -> None:
    assert starttls(d, name)[0] == DHE_ONLY


def test_no_dhe_without_the_option(d: Daemon) -> None:
    with pytest.raises(ssl.SSLError):
        starttls(d, "none")


def test_legacy_is_said_at_start(d: Daemon) -> None:
    assert "dhe-legacy" in d.log() and "pki=legacy.test" in d.log()
