"""``tls-require verify ... ca <ca>`` against a real daemon: a client with a
certificate signed by the configured CA completes STARTTLS and sends; a
client with no certificate, or one from another CA, is refused and nothing
is delivered."""

from __future__ import annotations

import os
import pathlib
import smtplib
import ssl
import sys
from collections.abc import Iterator

import pytest
from harness import Daemon, wait_for

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "crypto"))
from pki_util import OPENSSL, Pki, make_pki, openssl

pytestmark = pytest.mark.skipif(OPENSSL is None, reason="openssl CLI not installed")

_CA_EXT = ["-addext", "basicConstraints=critical,CA:TRUE",
           "-addext", "keyUsage=critical,keyCertSign,cRLSign"]


def make_ca(folder: pathlib.Path, name: str) -> Pki:
    key, cert = folder / f"{name}.key", folder / f"{name}.crt"
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
            "-out", str(cert), "-days", "2", "-subj", f"/CN={name} test CA", *_CA_EXT)
    os.chmod(key, 0o600)
    return Pki(name, str(cert), str(key))


def make_client(folder: pathlib.Path, name: str, ca: Pki) -> Pki:
    key, csr, cert = folder / f"{name}.key", folder / f"{name}.csr", folder / f"{name}.crt"
    ext = folder / f"{name}.ext"
    ext.write_text("basicConstraints=critical,CA:FALSE\n"
                   "keyUsage=critical,digitalSignature,keyEncipherment\n"
                   "extendedKeyUsage=clientAuth\n"
                   "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n")
    openssl("req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
            "-out", str(csr), "-subj", f"/CN={name}")
    openssl("x509", "-req", "-in", str(csr), "-CA", ca.cert, "-CAkey", ca.key,
            "-CAcreateserial", "-out", str(cert), "-days", "2", "-extfile", str(ext))
    os.chmod(key, 0o600)
    return Pki(name, str(cert), str(key))


@pytest.fixture(scope="module")
def d() -> Iterator[Daemon]:
    daemon = Daemon(config="")
    keys = daemon.state / "keys"
    keys.mkdir(mode=0o700)
    rsa = make_pki(keys, "mx", "rsa", cn="mx.test")
    ca = make_ca(keys, "clientca")
    other = make_ca(keys, "otherca")
    os.chmod(ca.cert, 0o644)
    daemon.cafile = rsa.cert  # type: ignore[attr-defined]
    daemon.good = make_client(keys, "good-client", ca)  # type: ignore[attr-defined]
    daemon.stranger = make_client(keys, "stranger", other)  # type: ignore[attr-defined]
    assert daemon.config_path is not None
    daemon.config_path.write_text(
        f'pki mx.test cert "{rsa.cert}"\npki mx.test key "{rsa.key}"\n'
        f'ca clientca cert "{ca.cert}"\n'
        f"listen on 127.0.0.1 port {daemon.port} tls-require verify pki mx.test "
        "ca clientca\n"
        f'table all {{ "@" = "{daemon.user}" }}\n'
        f'action "local" maildir "{daemon.mail}/%{{rcpt.user}}" virtual <all>\n'
        'match from any for any action "local"\n')
    daemon.start()
    yield daemon
    daemon.cleanup()


def client_ctx(d: Daemon, cert: Pki | None, version: ssl.TLSVersion | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=d.cafile)  # type: ignore[attr-defined]
    if version is not None:
        ctx.minimum_version = ctx.maximum_version = version
    if cert is not None:
        ctx.load_cert_chain(cert.cert, cert.key)
    return ctx


def try_send(d: Daemon, cert: Pki | None, box: str,
             version: ssl.TLSVersion | None = None) -> None:
    with smtplib.SMTP("127.0.0.1", d.port, timeout=20) as c:
        c._host = "mx.test"
        code, _ = c.starttls(context=client_ctx(d, cert, version))
        assert code == 220
        c.ehlo()
        c.sendmail("a@b.example", [f"{box}@localhost"], b"Subject: v\r\n\r\nverified\r\n")


VERSIONS = [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3]


@pytest.mark.parametrize("version", VERSIONS, ids=["tls12", "tls13"])
def test_signed_client_certificate_is_accepted(d: Daemon, version: ssl.TLSVersion) -> None:
    box = f"good{version.name[-1]}"
    try_send(d, d.good, box, version)  # type: ignore[attr-defined]
    got = wait_for(lambda: d.maildir(box))
    assert isinstance(got, list) and len(got) == 1
    assert b"with ESMTPS (TLSv1." in got[0] and b"verified" in got[0]


@pytest.mark.parametrize("version", VERSIONS, ids=["tls12", "tls13"])
@pytest.mark.parametrize("who", ["none", "stranger"])
def test_client_without_a_signed_certificate_is_refused(d: Daemon, who: str,
                                                         version: ssl.TLSVersion) -> None:
    before = d.log().count("smtp tls-failed ")
    cert = None if who == "none" else d.stranger  # type: ignore[attr-defined]
    box = f"bad{who}{version.name[-1]}"
    # TLS 1.2 fails in the handshake; with TLS 1.3 the client may finish its
    # side first and learn of the refusal at its next read
    with pytest.raises((ssl.SSLError, smtplib.SMTPServerDisconnected, ConnectionError)):
        try_send(d, cert, box, version)
    wait_for(lambda: d.log().count("smtp tls-failed ") > before)
    reason = "PEER_DID_NOT_RETURN_A_CERTIFICATE" if cert is None else "CERTIFICATE_VERIFY_FAILED"
    assert reason in d.log().split("smtp tls-failed ")[-1]
    assert d.maildir(box) == []
    with smtplib.SMTP("127.0.0.1", d.port, timeout=20) as c:  # no way around it in clear
        c.ehlo()
        code, msg = c.mail("a@b.example")
        assert (code, msg[:5]) == (530, b"5.7.0")
