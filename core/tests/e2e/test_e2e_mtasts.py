"""End to end: MTA-STS (RFC 8461) for outgoing mail (docs/mta-sts.md).

Everything on loopback: the test DNS server serves the MX, A and
``_mta-sts`` TXT records; a threaded HTTPS server with a certificate from
the test's own CA serves the policies (``MAILRIDER_MTA_STS_PORT`` points
pony at it); scripted SMTP peers (smtp_peer.SmtpPeer) are the MX hosts, one
on 127.0.0.1 with a certificate for its MX names from the same CA, one on
127.0.0.2 whose certificate comes from a CA the daemon does not know, one on
127.0.0.3 without STARTTLS. The
relay action says ``mta-sts ca testca``, so the policy fetch and the MX
certificates are checked against the test CA and never against the system
store.
"""

from __future__ import annotations

import http.server
import re
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_util import smtp_send
from harness import Daemon, wait_for
from mailrider.dns import wire
from mailrider.dns.wire import name_key
from smtp_peer import Behaviour, DnsThread, SmtpPeer, make_certs, server_context

MSG = b"From: <alice@local.test>\r\nSubject: sts\r\n\r\nhello\r\n"

CONFIG = """\
resolver nameserver 127.0.0.1 port {dns}
resolver timeout 1
resolver attempts 1
mta port {mta}
ca testca cert "{ca}"
listen on 127.0.0.1 port {{port}}
action "sts" relay mta-sts ca testca
match from any for any action "sts"
"""

POLICY = "version: STSv1\nmode: {mode}\nmx: {mx}\nmax_age: 86400\n"

#: domain -> (mode, mx pattern, the MX host's address)
DOMAINS = {
    "good.test": ("enforce", "mx.good.test", "127.0.0.1"),
    "wild.test": ("enforce", "*.wild.test", "127.0.0.1"),
    "mismatch.test": ("enforce", "other.mismatch.test", "127.0.0.1"),
    "badcert.test": ("enforce", "mx.badcert.test", "127.0.0.2"),
    "testing.test": ("testing", "mx.testing.test", "127.0.0.2"),
    "testmx.test": ("testing", "elsewhere.testmx.test", "127.0.0.1"),
    "cached.test": ("enforce", "mx.cached.test", "127.0.0.1"),
    "notls.test": ("enforce", "mx.notls.test", "127.0.0.3"),
    # the policy host answers with a redirect (to a policy that would refuse the MX)
    "redirect.test": ("enforce", "nowhere.redirect.test", "127.0.0.1"),
}


def _openssl(folder: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=folder)


def issue(folder: Path, name: str, sans: list[str]) -> tuple[Path, Path]:
    """A certificate for ``sans`` signed by the CA of make_certs in ``folder``."""
    _openssl(folder, "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={sans[0]}",
             "-keyout", f"{name}.key", "-out", f"{name}.csr")
    (folder / f"{name}.cnf").write_text("subjectAltName=" + ",".join(f"DNS:{s}" for s in sans)
                                         + "\n")
    _openssl(folder, "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-days", "2", "-out", f"{name}.pem", "-extfile", f"{name}.cnf")
    return folder / f"{name}.pem", folder / f"{name}.key"


class PolicyServer:
    """HTTPS on 127.0.0.1: ``/.well-known/mta-sts.txt`` by Host header."""

    def __init__(self, cert: Path, key: Path) -> None:
        self.policies: dict[str, str] = {}
        self.failing: set[str] = set()
        self.redirects: set[str] = set()
        self.requests: list[tuple[str, str]] = []  # (host, path)
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                host = (self.headers.get("Host") or "").rsplit(":", 1)[0]
                outer.requests.append((host, self.path))
                domain = host.removeprefix("mta-sts.")
                body = outer.policies.get(domain)
                if domain in outer.redirects:
                    self.send_response(301)
                    self.send_header("Location", "https://mta-sts.good.test" + self.path)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if self.path != "/.well-known/mta-sts.txt" or body is None \
                        or domain in outer.failing:
                    self.send_error(503 if domain in outer.failing else 404)
                    return
                data = body.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(cert), str(key))
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def log_has(d: Daemon, pattern: str) -> bool:
    return re.search(pattern, d.log()) is not None


def wait_log(d: Daemon, pattern: str, timeout: float = 20) -> None:
    try:
        wait_for(lambda: log_has(d, pattern), timeout)
    except TimeoutError:
        raise AssertionError(f"no {pattern!r} in log:\n{d.log()[-4000:]}") from None


class World:
    def __init__(self, d: Daemon, dns: DnsThread, https: PolicyServer, good: SmtpPeer,
                 bad: SmtpPeer, clear: SmtpPeer) -> None:
        self.d, self.dns, self.https, self.good, self.bad = d, dns, https, good, bad
        self.clear = clear

    def received_for(self, peer: SmtpPeer, rcpt: str) -> list[bool]:
        """TLS flag of each transaction ``peer`` accepted for ``rcpt``."""
        return [r.tls for r in peer.received if any(rcpt in x for x in r.rcpts)]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    folder = tmp_path_factory.mktemp("mtasts")
    ca, _, _ = make_certs(folder)
    web_cert, web_key = issue(folder, "web", [f"mta-sts.{d}" for d in DOMAINS])
    mx_cert, mx_key = issue(folder, "mx", [f"mx.{d}" for d in DOMAINS] + ["rogue.cached.test"])
    other = folder / "other"
    other.mkdir()
    _, bad_cert, bad_key = make_certs(other)  # from a CA the daemon does not know
    https = PolicyServer(web_cert, web_key)
    for domain, (mode, mx, _) in DOMAINS.items():
        https.policies[domain] = POLICY.format(mode=mode, mx=mx)
    https.redirects.add("redirect.test")
    records: dict[tuple[str, int], list[wire.RData]] = {}
    for i, (domain, (_, _, ip)) in enumerate(DOMAINS.items()):
        records[(domain, wire.MX)] = [(10, f"mx.{domain}")]
        records[(f"mx.{domain}", wire.A)] = [ip]
        records[(f"mta-sts.{domain}", wire.A)] = ["127.0.0.1"]
        records[(f"_mta-sts.{domain}", wire.TXT)] = [
            (b"v=STSv1; id=", f"v{i}".encode() + b";"), (b"v=spf1 -all",)]
    records[("rogue.cached.test", wire.A)] = ["127.0.0.1"]
    good = SmtpPeer(Behaviour(tls=server_context(mx_cert, mx_key)), host="127.0.0.1")
    bad = SmtpPeer(Behaviour(tls=server_context(bad_cert, bad_key)), host="127.0.0.2",
                   port=good.port)
    clear = SmtpPeer(Behaviour(), host="127.0.0.3", port=good.port)
    try:
        with DnsThread(records) as dns:
            assert dns.server is not None
            for key in (("cached.test", wire.MX), ("_mta-sts.cached.test", wire.TXT)):
                dns.server.ttls[(name_key(key[0]), key[1])] = 0  # changes are seen at once
            conf = CONFIG.format(dns=dns.port, mta=good.port, ca=ca)
            with Daemon(conf, extra_env={"MAILRIDER_MTA_STS_PORT": str(https.port),
                                         "MAILRIDER_MTA_TIMEOUT": "5"}) as d:
                yield World(d, dns, https, good, bad, clear)
    finally:
        good.close()
        bad.close()
        clear.close()
        https.close()


def send(w: World, rcpt: str) -> None:
    t = smtp_send(w.d.port, "alice@local.test", [rcpt], MSG)
    assert t.data is not None and t.data[0] == 250


def test_enforce_valid_delivers_over_verified_tls(world: World) -> None:
    send(world, "a@good.test")
    wait_log(world.d, r"delivery .*to=<a@good\.test> .*relay=.?mx\.good\.test .*result=\"?Ok")
    assert world.received_for(world.good, "a@good.test") == [True]
    assert ("mta-sts.good.test", "/.well-known/mta-sts.txt") in world.https.requests
    wait_log(world.d, r"mta mta-sts-policy domain=good\.test id=v0 mode=enforce "
                      r"max-age=86400 mx=mx\.good\.test ms=\d+")
    fetch_ms = re.search(r"mta-sts-policy domain=good\.test .* ms=(\d+)", world.d.log())
    assert fetch_ms is not None
    print(f"policy fetch through the daemon: {fetch_ms.group(1)} ms")
    relays = world.d.ctl("show", "relays").stdout.splitlines()
    assert any(r.startswith("[relay:good.test,smtp,mta-sts=enforce:v0] refcount=")
               for r in relays), relays


def test_enforce_wildcard_pattern(world: World) -> None:
    send(world, "w@wild.test")
    wait_log(world.d, r"delivery .*to=<w@wild\.test> .*result=\"?Ok")
    assert world.received_for(world.good, "w@wild.test") == [True]


def test_enforce_mx_not_in_policy_is_deferred(world: World) -> None:
    send(world, "m@mismatch.test")
    wait_log(world.d, r"delivery .*to=<m@mismatch\.test> .*result=\"?TempFail.*451 4\.7\.5 "
                      r"MTA-STS policy of mismatch\.test")
    wait_log(world.d, r"mta mta-sts-check mta-sts=enforce domain=mismatch\.test id=v2 "
                      r"host=mx\.mismatch\.test result=mx-mismatch")
    time.sleep(0.5)
    assert world.received_for(world.good, "m@mismatch.test") == []
    assert "m@mismatch.test" in world.d.ctl("show", "queue").stdout


def test_enforce_bad_certificate_is_deferred(world: World) -> None:
    before = world.bad.connections
    send(world, "b@badcert.test")
    wait_log(world.d, r"delivery .*to=<b@badcert\.test> .*result=\"?TempFail.*TLS handshake")
    wait_log(world.d, r"mta-sts-check mta-sts=enforce domain=badcert\.test .*"
                      r"result=tls-failed")
    time.sleep(0.5)
    assert world.bad.connections > before  # it was tried, with TLS required
    assert world.received_for(world.bad, "b@badcert.test") == []  # and never in clear
    assert not any(c.upper().startswith("MAIL") for c in world.bad.commands)


def test_enforce_without_starttls_is_deferred(world: World) -> None:
    send(world, "n@notls.test")
    wait_log(world.d, r"delivery .*to=<n@notls\.test> .*result=\"?TempFail")
    wait_log(world.d, r"mta-sts-check mta-sts=enforce domain=notls\.test id=v7 "
                      r"host=mx\.notls\.test address=127\.0\.0\.3 result=tls-failed")
    time.sleep(0.5)
    assert world.clear.connections >= 1
    assert not any(c.upper().startswith("MAIL") for c in world.clear.commands)
    assert world.clear.received == []


def test_testing_mode_delivers_and_logs(world: World) -> None:
    send(world, "t@testing.test")
    wait_log(world.d, r"delivery .*to=<t@testing\.test> .*result=\"?Ok")
    wait_log(world.d, r"mta-sts-check mta-sts=testing domain=testing\.test id=v4 "
                      r"host=mx\.testing\.test address=127\.0\.0\.2 result=tls-failed")
    assert world.received_for(world.bad, "t@testing.test") == [True]  # unverified TLS


def test_testing_mode_mx_mismatch_delivers_and_logs(world: World) -> None:
    send(world, "x@testmx.test")
    wait_log(world.d, r"delivery .*to=<x@testmx\.test> .*result=\"?Ok")
    wait_log(world.d, r"mta-sts-check mta-sts=testing domain=testmx\.test id=v5 "
                      r"host=mx\.testmx\.test result=mx-mismatch")


def test_fetch_failure_keeps_the_cached_policy(world: World) -> None:
    send(world, "c1@cached.test")
    wait_log(world.d, r"delivery .*to=<c1@cached\.test> .*result=\"?Ok")
    fetches = len(world.https.requests)
    # a new id (so a fetch), the policy host failing, and an MX the cached policy
    # does not name: the cached policy still applies
    srv = world.dns.server
    assert srv is not None
    srv.records[(name_key("_mta-sts.cached.test"), wire.TXT)] = [(b"v=STSv1; id=v99;",)]
    srv.records[(name_key("cached.test"), wire.MX)] = [(10, "rogue.cached.test")]
    world.https.failing.add("cached.test")
    send(world, "c2@cached.test")
    wait_log(world.d, r"mta mta-sts-fetch-failed domain=cached\.test id=v99 .*cached=v6")
    wait_log(world.d, r"delivery .*to=<c2@cached\.test> .*result=\"?TempFail.*4\.7\.5 "
                      r"MTA-STS policy of cached\.test \(enforce, id v6\)")
    assert len(world.https.requests) == fetches + 1
    assert world.received_for(world.good, "c2@cached.test") == []


def test_redirect_is_not_followed_and_means_no_policy(world: World) -> None:
    send(world, "r@redirect.test")
    wait_log(world.d, r"mta mta-sts-fetch-failed domain=redirect\.test id=v8 "
                      r"error=\"HTTP status 301\" cached=none")
    wait_log(world.d, r"delivery .*to=<r@redirect\.test> .*result=\"?Ok")
    assert [h for h, _ in world.https.requests].count("mta-sts.redirect.test") == 1
    assert world.received_for(world.good, "r@redirect.test") == [True]  # opportunistic


def test_one_fetch_per_policy_id(world: World) -> None:
    send(world, "again@good.test")
    wait_log(world.d, r"delivery .*to=<again@good\.test> .*result=\"?Ok")
    assert [h for h, _ in world.https.requests].count("mta-sts.good.test") == 1

