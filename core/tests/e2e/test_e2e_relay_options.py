"""End to end: the relay action's routing and TLS options.

- ``pki``: a remote that requires a client certificate (signed by the test
  CA) gets the relayed message and sees our certificate's subject; the key
  stays in klondike (delegated signing), or in pony only when forced.
  Without ``pki`` the same remote's handshake fails: a temporary failure,
  the envelope stays queued, nothing bounces.
- ``protocols`` / ``ciphers``: what the remote negotiates.
- ``host <table>`` (fetch/relayhost) and ``domain <table>`` (lookup/relayhost
  by recipient domain); a domain missing from the table and a table that
  fails are temporary failures (OpenSMTPD mta.c: "Cannot retrieve smarthost").
- ``helo-src <table>``: the HELO name of the local address (lookup/addrname).

Every relay URL is an IP literal: no test here asks a DNS resolver.
"""

from __future__ import annotations

import os
import re
import shutil
import ssl
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_util import smtp_send
from harness import Daemon, wait_for
from smtp_peer import Behaviour, SmtpPeer, make_certs

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None,
                                reason="openssl CLI not installed")

MSG = b"From: alice@local.test\r\nTo: bob@remote.test\r\nSubject: options\r\n\r\nhello\r\n"

CONFIG = """\
listen on 127.0.0.1 port {port}
table all {{ "@" = "{user}" }}
action "local" maildir "{mail}/md/%{{rcpt.user}}" virtual <all>
EXTRA
match from any for domain "local.test" action "local"
match from any for any action "out"
"""


def conf(extra: str) -> str:
    return CONFIG.replace("EXTRA", extra)


def log_has(d: Daemon, pattern: str) -> bool:
    return re.search(pattern, d.log()) is not None


def wait_log(d: Daemon, pattern: str, timeout: float = 20) -> None:
    try:
        wait_for(lambda: log_has(d, pattern), timeout)
    except TimeoutError:
        raise AssertionError(f"no {pattern!r} in log:\n{d.log()[-4000:]}") from None


def send(d: Daemon, rcpt: str) -> None:
    t = smtp_send(d.port, "alice@local.test", [rcpt], MSG)
    assert t.data is not None and t.data[0] == 250


@pytest.fixture(scope="module")
def certs() -> Iterator[Path]:
    """ca.pem/ca.key, server.pem/.key for 127.0.0.1, client.pem/.key signed by the CA."""
    folder = Path(tempfile.mkdtemp(prefix="mailrider-relay-tls-", dir="/tmp"))
    make_certs(folder)

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=folder)

    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/O=mailrider tests/CN=relay client",
        "-keyout", "client.key", "-out", "client.csr")
    (folder / "client.cnf").write_text("basicConstraints=critical,CA:FALSE\n"
                                       "extendedKeyUsage=clientAuth,serverAuth\n")
    run("x509", "-req", "-in", "client.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "2", "-out", "client.pem", "-extfile", "client.cnf")
    os.chmod(folder / "client.pem", 0o644)
    os.chmod(folder / "client.key", 0o600)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def demanding_peer(folder: Path) -> SmtpPeer:
    """A STARTTLS remote that requires a client certificate signed by the test CA."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(folder / "server.pem"), str(folder / "server.key"))
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(str(folder / "ca.pem"))
    return SmtpPeer(Behaviour(tls=ctx))


def tls_conf(folder: Path, port: int, options: str) -> str:
    return conf(f'pki relay.client cert "{folder}/client.pem"\n'
                f'pki relay.client key "{folder}/client.key"\n'
                f'ca testca cert "{folder}/ca.pem"\n'
                f'action "out" relay host smtp+tls://127.0.0.1:{port} ca testca {options}\n')


def subject(cert: dict[str, object] | None) -> dict[str, str]:
    assert cert is not None
    rdns = cert["subject"]
    assert isinstance(rdns, tuple)
    return {k: v for rdn in rdns for k, v in rdn}


# -- pki, protocols, ciphers ----------------------------------------------------------


def test_relay_pki_presents_a_delegated_client_certificate(certs: Path) -> None:
    with demanding_peer(certs) as peer, Daemon(tls_conf(certs, peer.port, "pki relay.client")) as d:
        send(d, "bob@remote.test")
        wait_for(lambda: peer.received, 20)
        r = peer.received[0]
        assert r.tls
        assert subject(r.peer_cert) == {"organizationName": "mailrider tests",
                                        "commonName": "relay client"}
        assert r.data.endswith(b"hello\r\n")
        wait_log(d, r"mta tls-client-ready pki=relay.client delegated=yes")
        assert "key-in-process" not in d.log()


def test_relay_pki_protocols_and_ciphers(certs: Path) -> None:
    options = 'pki relay.client protocols "tlsv1.2" ciphers "ECDHE-RSA-AES128-GCM-SHA256"'
    with demanding_peer(certs) as peer, Daemon(tls_conf(certs, peer.port, options)) as d:
        send(d, "bob@remote.test")
        wait_for(lambda: peer.received, 20)
        r = peer.received[0]
        assert subject(r.peer_cert)["commonName"] == "relay client"
        assert r.tls_version == "TLSv1.2"
        assert r.cipher == "ECDHE-RSA-AES128-GCM-SHA256"


def test_relay_pki_key_in_process_when_forced(certs: Path) -> None:
    with demanding_peer(certs) as peer, \
            Daemon(tls_conf(certs, peer.port, "pki relay.client"),
                   extra_env={"MAILRIDER_KEY_IN_PROCESS": "force"}) as d:
        send(d, "bob@remote.test")
        wait_for(lambda: peer.received, 20)
        assert subject(peer.received[0].peer_cert)["commonName"] == "relay client"
        assert log_has(d, r"mta key-in-process pki=relay.client")


def test_without_pki_the_handshake_fails_and_mail_is_deferred(certs: Path) -> None:
    with demanding_peer(certs) as peer, Daemon(tls_conf(certs, peer.port, "")) as d:
        send(d, "bob@remote.test")
        wait_log(d, r"delivery .*(?:to|rcpt)=<bob@remote.test> .*result=\"?TempFail\"?")
        assert not peer.received
        assert peer.tls_errors, "the remote never saw a handshake"
        assert d.ctl("show", "queue").stdout.strip() != ""  # deferred, not bounced
        assert not log_has(d, r"result=\"?PermFail\"?")


# -- host <table>, domain <table> ------------------------------------------------------


def test_relay_host_table_fetches_a_relay_url() -> None:
    with SmtpPeer() as peer:
        extra = (f'table relays {{{{ "smtp+notls://127.0.0.1:{peer.port}" }}}}\n'
                 'action "out" relay host <relays>\n')
        with Daemon(conf(extra)) as d:
            send(d, "bob@remote.test")
            wait_for(lambda: peer.received, 20)
            assert peer.received[0].rcpts[0].startswith("RCPT TO:<bob@remote.test>")
            assert not peer.received[0].tls


def test_relay_domain_table_routes_by_domain_and_defers_unknown_domains() -> None:
    with SmtpPeer() as one, SmtpPeer() as two:
        extra = (f'table routes {{{{ "remote.test" = "smtp+notls://127.0.0.1:{one.port}", '
                 f'"other.test" = "127.0.0.1:{two.port}" }}}}\n'
                 'action "out" relay domain <routes>\n')
        with Daemon(conf(extra)) as d:
            send(d, "bob@remote.test")
            send(d, "carol@other.test")
            send(d, "dave@unknown.test")
            wait_for(lambda: one.received and two.received, 20)
            assert one.received[0].rcpts[0].startswith("RCPT TO:<bob@remote.test>")
            assert two.received[0].rcpts[0].startswith("RCPT TO:<carol@other.test>")
            wait_log(d, r"delivery .*(?:to|rcpt)=<dave@unknown.test> .*result=\"?TempFail\"? "
                        r".*Cannot retrieve smarthost")
            assert not log_has(d, r"(?:to|rcpt)=<dave@unknown.test> .*result=\"?PermFail\"?")
            assert "unknown.test" in d.ctl("show", "queue").stdout
            assert len(one.received) == len(two.received) == 1


FAILING = '''#!{python}
import sys
from mailrider.table.sdk import Backend, BackendError, run


class Down(Backend):
    services = ("relayhost", "addrname")

    def lookup(self, service, key):
        raise BackendError("backend down")


sys.exit(run(Down))
'''


@pytest.fixture
def failing_backend() -> Iterator[Path]:
    libexec = Path(tempfile.mkdtemp(prefix="mailrider-libexec-", dir="/tmp"))
    os.chmod(libexec, 0o755)
    prog = libexec / "table-down"
    prog.write_text(FAILING.format(python=sys.executable))
    os.chmod(prog, 0o755)
    yield libexec
    shutil.rmtree(libexec, ignore_errors=True)


def test_a_failing_domain_table_is_a_temporary_failure(failing_backend: Path) -> None:
    extra = 'table routes down:/nonexistent.conf\naction "out" relay domain <routes>\n'
    with Daemon(conf(extra), extra_env={"MAILRIDER_LIBEXEC": str(failing_backend)}) as d:
        send(d, "bob@remote.test")
        wait_log(d, r"delivery .*(?:to|rcpt)=<bob@remote.test> .*result=\"?TempFail\"?")
        assert not log_has(d, r"result=\"?PermFail\"?")


# -- helo-src <table> ------------------------------------------------------------------


def test_relay_helo_src_names_the_source_address() -> None:
    with SmtpPeer() as peer:
        extra = ('table helos {{ "127.0.0.1" = "helo.from.table" }}\n'
                 f'action "out" relay host smtp+notls://127.0.0.1:{peer.port} src 127.0.0.1 '
                 'helo-src <helos>\n')
        with Daemon(conf(extra)) as d:
            send(d, "bob@remote.test")
            wait_for(lambda: peer.received, 20)
            assert peer.received[0].helo == "helo.from.table"


def test_relay_helo_src_without_a_name_for_the_source_is_deferred() -> None:
    with SmtpPeer() as peer:
        extra = ('table helos {{ "192.0.2.1" = "elsewhere.test" }}\n'
                 f'action "out" relay host smtp+notls://127.0.0.1:{peer.port} src 127.0.0.1 '
                 'helo-src <helos>\n')
        with Daemon(conf(extra)) as d:
            send(d, "bob@remote.test")
            wait_log(d, r"delivery .*(?:to|rcpt)=<bob@remote.test> .*result=\"?TempFail\"? "
                        r".*Failed to retrieve helo string")
            assert not peer.received


def test_a_failing_helo_src_table_is_a_temporary_failure(failing_backend: Path) -> None:
    with SmtpPeer() as peer:
        extra = ('table helos down:/nonexistent.conf\n'
                 f'action "out" relay host smtp+notls://127.0.0.1:{peer.port} '
                 'helo-src <helos>\n')
        with Daemon(conf(extra), extra_env={"MAILRIDER_LIBEXEC": str(failing_backend)}) as d:
            send(d, "bob@remote.test")
            wait_log(d, r"delivery .*(?:to|rcpt)=<bob@remote.test> .*result=\"?TempFail\"? "
                        r".*Failed to retrieve helo string")
            assert not peer.received
