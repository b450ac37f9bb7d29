"""pony_tls.load_pki: a certificate with its key in klondike, or in pony only when allowed."""

from __future__ import annotations

import ssl
from collections.abc import Iterator

import pytest
from mailrider import limits
from mailrider.config.model import Config, Where
from mailrider.config.model import Pki as ConfigPki
from mailrider.crypto import delegate, keys
from mailrider.errors import ConfigError
from mailrider.proc.pony_tls import load_pki
from pki_util import Pki


@pytest.fixture
def store(pkis: dict[str, Pki]) -> Iterator[keys.KeyStore]:
    s = keys.KeyStore()
    s.load("rsa", pkis["rsa"].cert, pkis["rsa"].key)
    yield s
    s.close()


def setup(pkis: dict[str, Pki], allow: bool) -> tuple[Config, ConfigPki, ssl.SSLContext]:
    config = Config()
    config.key_in_process = allow
    pki = ConfigPki("mx.test", cert=pkis["rsa"].cert, key=pkis["rsa"].key,
                    where=Where("smtpd.conf", 3))
    return config, pki, ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)


def client() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    return ctx


def unavailable(*_args: object) -> None:
    raise delegate.DelegationUnavailable("no libcrypto here")


def test_the_key_is_delegated(pkis: dict[str, Pki], store: keys.KeyStore) -> None:
    config, pki, ctx = setup(pkis, allow=False)
    assert load_pki(ctx, "mx.test", pki, store.sign, config, "smtp") is False
    delegate.memory_handshake(ctx, client())
    assert delegate.key_info(ctx).calls == 1


def test_no_delegation_and_no_permission_is_an_error_at_the_pki_line(
        pkis: dict[str, Pki], store: keys.KeyStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(delegate, "install", unavailable)
    config, pki, ctx = setup(pkis, allow=False)
    with pytest.raises(ConfigError, match="smtp key-in-process") as info:
        load_pki(ctx, "mx.test", pki, store.sign, config, "smtp")
    assert (info.value.file, info.value.line) == ("smtpd.conf", 3)


def test_key_in_process_when_allowed_or_forced(pkis: dict[str, Pki], store: keys.KeyStore,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(delegate, "install", unavailable)
    config, pki, ctx = setup(pkis, allow=True)
    assert load_pki(ctx, "mx.test", pki, store.sign, config, "mta") is True
    delegate.memory_handshake(ctx, client())  # the key is in the context itself
    with pytest.raises(KeyError):
        delegate.key_info(ctx)
    monkeypatch.undo()
    monkeypatch.setenv(limits.KEY_IN_PROCESS_ENV, "force")
    config, pki, ctx = setup(pkis, allow=False)
    assert load_pki(ctx, "mx.test", pki, store.sign, config, "smtp") is True
    with pytest.raises(KeyError):
        delegate.key_info(ctx)


def test_an_unreadable_key_is_an_error_at_the_pki_line(pkis: dict[str, Pki],
                                                       store: keys.KeyStore,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(delegate, "install", unavailable)
    config, pki, ctx = setup(pkis, allow=True)
    pki.key = "/nonexistent/key.pem"
    with pytest.raises(ConfigError, match=r"pki mx\.test") as info:
        load_pki(ctx, "mx.test", pki, store.sign, config, "smtp")
    assert info.value.line == 3


# -- mailriderd -n: which pki need 'smtp key-in-process', and why ---------------

DELEGATION_CONF = """\
pki mx.test cert "{cert}"
pki mx.test key "{key}"
pki relay.test cert "{cert}"
pki relay.test key "{key}"
pki unused.test cert "{cert}"
pki unused.test key "{key}"
{extra}listen on 127.0.0.1 port 2525 tls pki mx.test
action "out" relay host smtp+tls://mx.example.org pki relay.test
match for any action "out"
"""


def delegation_config(pkis: dict[str, Pki], extra: str = "") -> Config:
    from mailrider.config import parse_string

    return parse_string(DELEGATION_CONF.format(cert=pkis["rsa"].cert, key=pkis["rsa"].key,
                                               extra=extra), file="smtpd.conf")


def test_tls_pkis_are_those_tls_uses(pkis: dict[str, Pki]) -> None:
    from mailrider.cli.mailriderd import tls_pkis

    assert tls_pkis(delegation_config(pkis)) == ["mx.test", "relay.test"]


def test_check_delegation(pkis: dict[str, Pki], monkeypatch: pytest.MonkeyPatch) -> None:
    from mailrider.cli.mailriderd import check_delegation

    monkeypatch.delenv(limits.KEY_IN_PROCESS_ENV, raising=False)
    if delegate.unavailable_reason() == "":
        assert check_delegation(delegation_config(pkis)) == ""
    monkeypatch.setattr(delegate, "unavailable_reason", lambda: "LibreSSL 3.4.3 is older")
    with pytest.raises(ConfigError) as info:
        check_delegation(delegation_config(pkis))
    assert (info.value.file, info.value.line) == ("smtpd.conf", 1)
    message = str(info.value)
    assert message.startswith("smtpd.conf:1: pki mx.test: TLS keys cannot stay out of the "
                              "SMTP process here (LibreSSL 3.4.3 is older)")
    assert "dynamically linked OpenSSL" in message and "'smtp key-in-process'" in message
    warning = check_delegation(delegation_config(pkis, "smtp key-in-process\n"))
    assert "pki mx.test, relay.test will be loaded into pony" in warning
    assert "(LibreSSL 3.4.3 is older)" in warning and "unused.test" not in warning
