"""End to end: DANE and MTA-STS on one action (``relay dane mta-sts``).

RFC 8461 §2: MTA-STS never overrides DANE. The MX host on 127.0.0.2 shows a
self-signed certificate that no CA vouches for (a PKIX check, as MTA-STS
makes, fails on it) and that DANE-EE TLSA records authenticate:

- ``both.test``: an MTA-STS policy in mode enforce that names the MX, and a
  matching TLSA record: DANE takes the host, the mail goes out over TLS,
  and MTA-STS logs no failure for it;
- ``bothbad.test``: an MTA-STS policy in mode testing, and a TLSA record
  that does not match: the DANE failure defers the mail, and mode testing
  does not retry the host without a policy.

Loopback only: the test DNS server (with the AD bit), a policy server over
HTTPS (test_e2e_mtasts.PolicyServer) and scripted SMTP peers.
"""

from __future__ import annotations

import pathlib
import re
import sys
import time
from collections.abc import Iterator

import pytest
from e2e_util import smtp_send
from harness import Daemon, wait_for
from mailrider.dns import wire
from smtp_peer import Behaviour, DnsThread, SmtpPeer, make_certs, server_context
from test_e2e_mtasts import PolicyServer, issue

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "crypto"))
from dane_util import OPENSSL, make_dane_pki, rdata, tlsa

pytestmark = pytest.mark.skipif(OPENSSL is None, reason="openssl CLI not installed")

MSG = b"From: <alice@local.test>\r\nSubject: both\r\n\r\nhello\r\n"

CONFIG = """\
resolver nameserver 127.0.0.1 port {dns}
resolver timeout 1
resolver attempts 1
mta port {mta}
ca testca cert "{ca}"
listen on 127.0.0.1 port {{port}}
action "out" relay dane mta-sts ca testca
match from any for any action "out"
"""


def wait_log(d: Daemon, pattern: str, timeout: float = 20) -> None:
    try:
        wait_for(lambda: re.search(pattern, d.log()), timeout)
    except TimeoutError:
        raise AssertionError(f"no {pattern!r} in log:\n{d.log()[-4000:]}") from None


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Daemon, SmtpPeer]]:
    folder = tmp_path_factory.mktemp("tls-policy")
    (folder / "dane").mkdir()
    pki = make_dane_pki(folder / "dane")
    web = folder / "web"
    web.mkdir()
    ca, _, _ = make_certs(web)
    web_cert, web_key = issue(web, "web", ["mta-sts.both.test", "mta-sts.bothbad.test"])
    https = PolicyServer(web_cert, web_key)
    https.policies["both.test"] = "version: STSv1\nmode: enforce\nmx: mx.both.test\nmax_age: 600\n"
    https.policies["bothbad.test"] = ("version: STSv1\nmode: testing\nmx: mx.bothbad.test\n"
                                      "max_age: 600\n")
    peer = SmtpPeer(Behaviour(tls=server_context(pki.ee.pem, pki.ee.key)), host="127.0.0.2")
    good = rdata(3, 1, 1, tlsa(folder / "dane", pki.ee, 1, 1))
    wrong = rdata(3, 1, 1, b"\x5a" * 32)
    records: dict[tuple[str, int], list[object]] = {}
    for domain, tlsa_rr, policy_id in (("both.test", good, "b1"), ("bothbad.test", wrong, "b2")):
        records[(domain, wire.MX)] = [(10, f"mx.{domain}")]
        records[(f"mx.{domain}", wire.A)] = ["127.0.0.2"]
        records[(f"_{peer.port}._tcp.mx.{domain}", wire.TLSA)] = [tlsa_rr]
        records[(f"mta-sts.{domain}", wire.A)] = ["127.0.0.1"]
        records[(f"_mta-sts.{domain}", wire.TXT)] = [(f"v=STSv1; id={policy_id}".encode(),)]
    try:
        with DnsThread(records, ad=True) as dns:  # type: ignore[arg-type]
            conf = CONFIG.format(dns=dns.port, mta=peer.port, ca=ca)
            with Daemon(conf, extra_env={"MAILRIDER_MTA_STS_PORT": str(https.port),
                                         "MAILRIDER_MTA_TIMEOUT": "5"}) as d:
                yield d, peer
    finally:
        peer.close()
        https.close()


def test_dane_authenticated_host_is_not_judged_by_mta_sts(
        world: tuple[Daemon, SmtpPeer]) -> None:
    d, peer = world
    t = smtp_send(d.port, "alice@local.test", ["a@both.test"], MSG)
    assert t.data is not None and t.data[0] == 250
    wait_log(d, r"delivery .*to=<a@both\.test> .*result=\"?Ok")
    wait_log(d, r"mta mta-sts-policy domain=both\.test id=b1 mode=enforce")
    assert [r.tls for r in peer.received if any("a@both.test" in x for x in r.rcpts)] == [True]
    assert "mta-sts-check" not in d.log()


def test_dane_failure_is_not_retried_by_mta_sts_testing(
        world: tuple[Daemon, SmtpPeer]) -> None:
    d, peer = world
    t = smtp_send(d.port, "alice@local.test", ["b@bothbad.test"], MSG)
    assert t.data is not None and t.data[0] == 250
    wait_log(d, r"delivery .*to=<b@bothbad\.test> .*result=\"?TempFail.*4\.7\.5 DANE")
    wait_log(d, r"mta mta-sts-policy domain=bothbad\.test id=b2 mode=testing")
    time.sleep(0.5)
    assert not any(any("b@bothbad.test" in x for x in r.rcpts) for r in peer.received)
    assert "domain=bothbad.test id=b2 host=mx.bothbad.test address=127.0.0.2 " \
           "result=tls-failed" not in d.log()
