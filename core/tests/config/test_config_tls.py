"""TLS settings the parser refuses at their line, as pony would at start."""

from __future__ import annotations

import pathlib
import ssl

import pytest
from mailrider.config import parse_string
from mailrider.errors import ConfigError

PKI = 'pki mx.test cert "/c"\npki mx.test key "/k"\n'  # lines 1-2

BAD = [
    (PKI + 'listen on 127.0.0.1 tls pki mx.test ciphers "NOPE"\n',
     "3: listen ciphers: no usable cipher in 'NOPE'"),
    (PKI + '\nlisten on 127.0.0.1 smtps pki mx.test protocols "sslv9"\n',
     "4: listen protocols: unknown TLS protocol 'sslv9'"),
    (PKI + 'listen on 127.0.0.1 tls pki mx.test protocols "!tlsv1.2"\n',
     "3: listen protocols: no TLS protocol in '!tlsv1.2'"),
    ('smtp ciphers "NOPE"\n', "1: smtp ciphers: no usable cipher in 'NOPE'"),
]


@pytest.mark.parametrize(("text", "expected"), BAD, ids=[e for _, e in BAD])
def test_bad_tls_settings(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_string(text, file="t.conf")
    assert str(info.value) == f"t.conf:{expected}"


def test_good_tls_settings() -> None:
    cfg = parse_string(PKI + 'listen on 127.0.0.1 tls pki mx.test ciphers "HIGH:!aNULL" '
                       'protocols "tlsv1.2,tlsv1.3"\nsmtp ciphers "HIGH"\n', file="t.conf")
    assert (cfg.listeners[0].ciphers, cfg.listeners[0].protocols, cfg.smtp_ciphers) == (
        "HIGH:!aNULL", "tlsv1.2,tlsv1.3", "HIGH")


def test_dhe_group_by_mode_and_key(tmp_path: pathlib.Path) -> None:
    import subprocess

    from mailrider.config.tls import dhe_group, load_dhe

    certs = {}
    for bits in (2048, 3072):
        key, cert = tmp_path / f"{bits}.key", tmp_path / f"{bits}.crt"
        subprocess.run(["openssl", "req", "-x509", "-newkey", f"rsa:{bits}", "-nodes", "-keyout",
                        str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=t"],
                       check=True, capture_output=True)
        certs[bits] = str(cert)
    assert dhe_group(None, certs[2048]) is None
    assert dhe_group("none", certs[2048]) is None
    assert dhe_group("auto", certs[2048]) == "ffdhe2048"
    assert dhe_group("legacy", certs[2048]) == "ffdhe2048"
    assert dhe_group("auto", certs[3072]) == "ffdhe3072"
    assert dhe_group("auto", str(tmp_path / "missing.crt")) == "ffdhe2048"
    for group in ("ffdhe2048", "ffdhe3072"):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        load_dhe(ctx, group)  # the parameters ship with the package and load
