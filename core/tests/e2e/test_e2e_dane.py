"""End to end: DANE for outgoing mail (``action ... relay dane``, docs/dane.md).

One daemon relays through MX hosts that the test DNS server (on loopback,
setting the AD bit like a validating resolver, except for the names it is
told are unsigned) points at scripted SMTP peers on 127.0.0.2-4, all on the
``mta port``:

- 127.0.0.2 offers STARTTLS with a self-signed certificate (DANE-EE);
- 127.0.0.3 offers STARTTLS with a leaf for ``mx.dane.test`` under a test
  intermediate CA, sending leaf + intermediate (DANE-TA);
- 127.0.0.4 offers no STARTTLS;
- 127.0.0.5 offers STARTTLS but only TLS 1.1, which the client refuses (a
  handshake that fails).

No query reaches the machine's resolver and nothing leaves loopback.
"""

from __future__ import annotations

import pathlib
import re
import ssl
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from e2e_util import smtp_send
from harness import Daemon, wait_for
from mailrider.dns import wire
from smtp_peer import Behaviour, DnsThread, SmtpPeer, server_context

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "crypto"))
from dane_util import OPENSSL, DanePki, make_dane_pki, rdata, tlsa

pytestmark = pytest.mark.skipif(OPENSSL is None, reason="openssl CLI not installed")

MSG = b"From: alice@local.test\r\nSubject: dane\r\n\r\nhello\r\n"

CONFIG = """\
resolver nameserver 127.0.0.1 port DNSPORT
resolver timeout 1
resolver attempts 1
mta port MTAPORT
listen on 127.0.0.1 port {port}
table all {{ "@" = "{user}" }}
action "local" maildir "{mail}/md/%{{rcpt.user}}" virtual <all>
action "out" relay dane
action "plain" relay
match from any for domain "local.test" action "local"
match from any for domain "plain.test" action "plain"
match from any for any action "out"
"""


@dataclass
class Net:
    d: Daemon
    dns: DnsThread
    ee: SmtpPeer
    ta: SmtpPeer
    clear: SmtpPeer
    broken: SmtpPeer


def zone(pki: DanePki, folder: pathlib.Path, port: int) -> dict[tuple[str, int], list[object]]:
    ee311 = rdata(3, 1, 1, tlsa(folder, pki.ee, 1, 1))
    ta211 = rdata(2, 1, 1, tlsa(folder, pki.inter, 1, 1))
    wrong = rdata(3, 1, 1, b"\x5a" * 32)
    z: dict[tuple[str, int], list[object]] = {}

    def mx(domain: str, host: str, ip: str, *records: bytes) -> None:
        z[(domain, wire.MX)] = [(10, host)]
        z[(host, wire.A)] = [ip]
        if records:
            z[(f"_{port}._tcp.{host}", wire.TLSA)] = list(records)

    mx("ee.test", "mx.ee.test", "127.0.0.2", ee311)
    mx("mismatch.test", "mx.mismatch.test", "127.0.0.2", wrong)
    mx("insecure.test", "mx.insecure.test", "127.0.0.2", wrong)  # the TLSA is unsigned
    mx("unsignedmx.test", "mx.unsignedmx.test", "127.0.0.2", wrong)  # the MX is unsigned
    mx("notls.test", "mx.notls.test", "127.0.0.4", ee311)
    mx("none.test", "mx.none.test", "127.0.0.4")  # no TLSA: opportunistic, in clear
    mx("ta.test", "mx.dane.test", "127.0.0.3", ta211)
    mx("taname.test", "mx.taname.test", "127.0.0.3", ta211)  # the leaf names mx.dane.test
    mx("servfail.test", "mx.servfail.test", "127.0.0.2", ee311)
    mx("unusable.test", "mx.unusable.test", "127.0.0.2",
       rdata(1, 1, 1, tlsa(folder, pki.ee, 1, 1)))  # PKIX-EE: unusable for SMTP
    mx("unusableclear.test", "mx.unusableclear.test", "127.0.0.4", rdata(0, 0, 1, b"\x01" * 32))
    mx("plain.test", "mx.plain.test", "127.0.0.2", wrong)  # an action without dane
    mx("broken.test", "mx.broken.test", "127.0.0.5", ee311)
    mx("brokennodane.test", "mx.brokennodane.test", "127.0.0.5")
    return z


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    folder = tmp_path_factory.mktemp("dane-pki")
    pki = make_dane_pki(folder, "mx.dane.test")
    ee = SmtpPeer(Behaviour(tls=server_context(pki.ee.pem, pki.ee.key)), host="127.0.0.2")
    ta = SmtpPeer(Behaviour(tls=server_context(pki.leaf_chain, pki.leaf.key)),
                  host="127.0.0.3", port=ee.port)
    clear = SmtpPeer(Behaviour(), host="127.0.0.4", port=ee.port)
    old_tls = server_context(pki.ee.pem, pki.ee.key)
    with warnings.catch_warnings():  # TLS 1.1 is deprecated: that is the point
        warnings.simplefilter("ignore", DeprecationWarning)
        old_tls.minimum_version = old_tls.maximum_version = ssl.TLSVersion.TLSv1_1
    broken = SmtpPeer(Behaviour(tls=old_tls), host="127.0.0.5", port=ee.port)
    try:
        with DnsThread(zone(pki, folder, ee.port), ad=True,  # type: ignore[arg-type]
                       unsigned={f"_{ee.port}._tcp.mx.insecure.test", "unsignedmx.test"}) as dns:
            assert dns.server is not None
            dns.server.behave(f"_{ee.port}._tcp.mx.servfail.test", "servfail")
            conf = CONFIG.replace("DNSPORT", str(dns.port)).replace("MTAPORT", str(ee.port))
            with Daemon(conf, extra_env={"MAILRIDER_MTA_TIMEOUT": "5"}) as d:
                yield Net(d, dns, ee, ta, clear, broken)
    finally:
        for peer in (ee, ta, clear, broken):
            peer.close()


def rcpts_of(peer: SmtpPeer) -> list[str]:
    return [r for t in peer.received for r in t.rcpts]


def received_by(peer: SmtpPeer, rcpt: str) -> list[bool]:
    """The TLS flag of each transaction ``peer`` accepted for ``rcpt``."""
    return [t.tls for t in peer.received if any(rcpt in r for r in t.rcpts)]


def outcome(d: Daemon, rcpt: str) -> str:
    """The first delivery line of ``rcpt`` in the log."""
    pattern = rf"^.* delivery .*to=<{re.escape(rcpt)}> .*$"

    def found() -> bool:
        return re.search(pattern, d.log(), re.M) is not None

    try:
        wait_for(found, 30)
    except TimeoutError:
        raise AssertionError(f"no delivery of {rcpt} in log:\n{d.log()[-4000:]}") from None
    m = re.search(pattern, d.log(), re.M)
    assert m is not None
    return m.group(0)


def send(net: Net, rcpt: str) -> str:
    t = smtp_send(net.d.port, "alice@local.test", [rcpt], MSG)
    assert t.data is not None and t.data[0] == 250
    return outcome(net.d, rcpt)


def test_dane_ee_match_is_delivered_over_tls(net: Net) -> None:
    line = send(net, "bob@ee.test")
    assert 'result="Ok"' in line, line
    assert received_by(net.ee, "bob@ee.test") == [True]
    assert re.search(r"mta dane relay=\"mx\.ee\.test \[127\.0\.0\.2\]\" dane=pass "
                     r"tlsa=\"3 1 1\" depth=0", net.d.log()), net.d.log()[-3000:]


def test_dane_ee_mismatch_is_deferred_not_delivered(net: Net) -> None:
    line = send(net, "bob@mismatch.test")
    assert 'result="TempFail"' in line and "421 4.7.5 DANE authentication" in line, line
    assert not received_by(net.ee, "bob@mismatch.test")
    assert re.search(r"mta dane relay=\"mx\.mismatch\.test \[127\.0\.0\.2\]\" dane=fail "
                     r"reason=\"no DANE-EE record matches", net.d.log()), net.d.log()[-3000:]


def test_unauthenticated_tlsa_is_ignored_delivered_opportunistically(net: Net) -> None:
    line = send(net, "bob@insecure.test")
    assert 'result="Ok"' in line, line
    assert received_by(net.ee, "bob@insecure.test") == [True]


def test_unauthenticated_mx_means_no_dane(net: Net) -> None:
    line = send(net, "bob@unsignedmx.test")
    assert 'result="Ok"' in line, line
    assert received_by(net.ee, "bob@unsignedmx.test") == [True]
    # the TLSA records of an MX name from unsigned DNS are not even asked for
    assert net.dns.server is not None
    assert net.dns.server.count(f"_{net.ee.port}._tcp.mx.unsignedmx.test") == 0


def test_dane_without_starttls_is_deferred(net: Net) -> None:
    line = send(net, "bob@notls.test")
    assert 'result="TempFail"' in line and "TLS required but not offered" in line, line
    assert not received_by(net.clear, "bob@notls.test")


def test_no_tlsa_records_keeps_opportunistic_tls(net: Net) -> None:
    line = send(net, "bob@none.test")
    assert 'result="Ok"' in line, line
    assert received_by(net.clear, "bob@none.test") == [False]


def test_dane_ta_chain_to_the_intermediate_is_delivered(net: Net) -> None:
    line = send(net, "bob@ta.test")
    assert 'result="Ok"' in line, line
    assert received_by(net.ta, "bob@ta.test") == [True]
    assert re.search(r"mta dane relay=\"mx\.dane\.test \[127\.0\.0\.3\]\" dane=pass "
                     r"tlsa=\"2 1 1\" depth=1", net.d.log()), net.d.log()[-3000:]


def test_dane_ta_name_mismatch_is_deferred(net: Net) -> None:
    line = send(net, "bob@taname.test")
    assert 'result="TempFail"' in line and "4.7.5" in line, line
    assert not received_by(net.ta, "bob@taname.test")
    assert re.search(r"mta dane relay=\"mx\.taname\.test \[127\.0\.0\.3\]\" dane=fail "
                     r"reason=\"[^\"]*[Hh]ostname mismatch", net.d.log()), net.d.log()[-3000:]


def test_tlsa_lookup_failure_makes_the_host_unusable(net: Net) -> None:
    line = send(net, "bob@servfail.test")
    assert 'result="TempFail"' in line and "TLSA lookup for mx.servfail.test failed" in line, \
        line
    assert not received_by(net.ee, "bob@servfail.test")


def test_only_unusable_records_require_tls_without_authentication(net: Net) -> None:
    line = send(net, "bob@unusable.test")
    assert 'result="Ok"' in line, line
    assert received_by(net.ee, "bob@unusable.test") == [True]
    line = send(net, "bob@unusableclear.test")
    assert 'result="TempFail"' in line and "TLS required but not offered" in line, line
    assert not received_by(net.clear, "bob@unusableclear.test")


def test_action_without_dane_ignores_tlsa(net: Net) -> None:
    line = send(net, "bob@plain.test")
    assert 'result="Ok"' in line, line
    assert received_by(net.ee, "bob@plain.test") == [True]
    assert net.dns.server is not None
    assert net.dns.server.count(f"_{net.ee.port}._tcp.mx.plain.test") == 0


def test_failed_handshake_under_dane_is_never_retried_in_clear(net: Net) -> None:
    # without DANE, opportunistic TLS that fails is tried again in clear (RFC 3207 4.1)
    line = send(net, "bob@brokennodane.test")
    assert 'result="Ok"' in line, line
    assert received_by(net.broken, "bob@brokennodane.test") == [False]
    # with DANE, never
    line = send(net, "bob@broken.test")
    assert 'result="TempFail"' in line and "TLS handshake" in line, line
    assert not received_by(net.broken, "bob@broken.test")
