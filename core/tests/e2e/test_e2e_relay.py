"""End to end: relaying to other hosts (issue 6).

Two real daemons on loopback (A relays to B, B delivers to a Maildir),
routes through the test DNS server (``resolver nameserver`` + ``mta port``,
so no query ever leaves for the machine's resolver and the MX hosts can
listen on a free port), and scripted remotes (smtp_peer.SmtpPeer) for
STARTTLS + AUTH, 4xx, 5xx, a close in the middle of DATA and a host that
never greets.
"""

from __future__ import annotations

import email
import email.policy
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_util import smtp_send
from harness import Daemon, wait_for
from mailrider.dns import wire
from smtp_peer import Behaviour, DnsThread, SmtpPeer, make_certs, server_context

MSG = (b"From: Alice <alice@local.test>\r\nTo: bob@remote.test\r\nSubject: relay me\r\n"
       b"\r\nfirst line\r\n.leading dot\r\n..two dots\r\n\r\nlast line\r\n")

#: B: delivers remote.test / example.test to Maildirs
CONFIG_B = """\
listen on 127.0.0.1 port {port}
table all {{ "@" = "{user}" }}
action "md" maildir "{mail}/md/%{{rcpt.user}}" virtual <all>
match from any for domain "remote.test" action "md"
match from any for domain "example.test" action "md"
"""

#: A: local senders at local.test, everything else relays
CONFIG_A = """\
resolver nameserver 127.0.0.1 port DNSPORT
resolver timeout 1
resolver attempts 1
mta port MTAPORT
listen on 127.0.0.1 port {port}
table all {{ "@" = "{user}" }}
action "local" maildir "{mail}/md/%{{rcpt.user}}" virtual <all>
action "out" relay host smtp://127.0.0.1:RELAYPORT
action "mx" relay
action "short" relay host smtp://127.0.0.1:RELAYPORT ttl 3s
match from any for domain "local.test" action "local"
match from any for domain "remote.test" action "out"
match from any for domain "short.test" action "short"
match from any for any action "mx"
"""


def config_a(relay_port: int, dns_port: int = 9, mta_port: int = 25, extra: str = "") -> str:
    return extra + (CONFIG_A.replace("RELAYPORT", str(relay_port))
                    .replace("DNSPORT", str(dns_port)).replace("MTAPORT", str(mta_port)))


def log_has(d: Daemon, pattern: str) -> bool:
    return re.search(pattern, d.log()) is not None


def wait_log(d: Daemon, pattern: str, timeout: float = 20) -> None:
    try:
        wait_for(lambda: log_has(d, pattern), timeout)
    except TimeoutError:
        raise AssertionError(f"no {pattern!r} in log:\n{d.log()[-4000:]}") from None


def queue_empty(d: Daemon) -> bool:
    return d.ctl("show", "queue").stdout.strip() == ""


def dsn_parts(raw: bytes) -> tuple[email.message.Message, list[email.message.Message]]:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    assert not msg.defects
    parts = msg.get_payload()
    assert isinstance(parts, list) and len(parts) == 3
    return msg, parts


@pytest.fixture(scope="module")
def b() -> Iterator[Daemon]:
    d = Daemon(CONFIG_B)
    d.start()
    yield d
    d.cleanup()


@pytest.fixture(scope="module")
def dns(b: Daemon) -> Iterator[DnsThread]:
    records = {
        ("example.test", wire.MX): [(10, "mx.example.test")],
        ("mx.example.test", wire.A): ["127.0.0.1"],
        ("mx.example.test", wire.AAAA): [],
        ("nullmx.test", wire.MX): [(0, ".")],
    }
    with DnsThread(records) as t:
        yield t


@pytest.fixture(scope="module")
def a(b: Daemon, dns: DnsThread) -> Iterator[Daemon]:
    d = Daemon(config_a(b.port, dns.port, b.port))
    d.start()
    yield d
    d.cleanup()


def test_relay_host_delivers_exact_bytes(a: Daemon, b: Daemon) -> None:
    t = smtp_send(a.port, "alice@local.test", ["bob@remote.test", "carol@remote.test"], MSG)
    assert t.data is not None and t.data[0] == 250
    msgid = t.data[1].split()[1]
    wait_for(lambda: len(b.maildir("md/bob")) == 1 and len(b.maildir("md/carol")) == 1, 20)
    [got] = b.maildir("md/bob")
    # B's Return-Path/Delivered-To/Received, then A's Received, then the message
    assert got.count(b"\nReceived: ") + got.startswith(b"Received: ") >= 2
    body = got.split(b"\nFrom: Alice", 1)[1]
    assert b"From: Alice" + body == MSG.replace(b"\r\n", b"\n")
    assert got.startswith(b"Return-Path: <alice@local.test>\n")
    # one transaction for both recipients of the message
    wait_log(a, rf"delivery evpid={msgid}\w+ .*(?:to|rcpt)=<carol@remote.test> .*"
                r"relay=.?127.0.0.1 \[127.0.0.1\].? .*result=\"?Ok\b")
    assert len(re.findall(rf"delivery evpid={msgid}\w+ .*result=\"?Ok\b", a.log())) == 2
    assert a.log().count('mta connected relay="127.0.0.1 [127.0.0.1]"') == 1
    # OpenSMTPD's layout: the connection's id leads its lines and its deliveries'
    conn = re.search(rf"([0-9a-f]{{16}}) mta connecting address=smtp://127\.0\.0\.1:{b.port} "
                     r"host=127\.0\.0\.1$", a.log(), re.M)
    assert conn, a.log()
    sid = conn.group(1)
    assert f"{sid} mta connected " in a.log()
    assert len(re.findall(rf"{sid} mta delivery evpid={msgid}\w+ from=<alice@local\.test> "
                          r"to=<(bob|carol)@remote\.test> rcpt=<-> source=\"-\" "
                          r"relay=\"127\.0\.0\.1 \[127\.0\.0\.1\]\" delay=\d+s "
                          r"result=\"Ok\" stat=\"250 ", a.log())) == 2, a.log()
    wait_for(lambda: queue_empty(a), 10)


def test_ctl_shows_hosts_relays_routes(a: Daemon, b: Daemon) -> None:
    """After test_relay_host_delivers_exact_bytes: smtpctl's show hosts|relays|routes."""
    hosts = a.ctl("show", "hosts").stdout.splitlines()
    assert any(re.fullmatch(r"127\.0\.0\.1 127\.0\.0\.1 refcount=\d+ nconn=\d+ "
                            r"lastconn=(\d+[dhms])+", h) for h in hosts), hosts
    relays = a.ctl("show", "relays").stdout.splitlines()
    assert any(r.startswith(f"[relay:127.0.0.1,port={b.port},smtp] refcount=") for r in relays), \
        relays
    routes = a.ctl("show", "routes").stdout.splitlines()
    match = [re.fullmatch(r"(\d+)\. \[\] <-> 127\.0\.0\.1 \(127\.0\.0\.1\) [N-]--- nconn=\d+ "
                          r"nerror=\d+ penalty=\d+ timeout=-", r) for r in routes]
    assert any(match), routes
    route_id = next(m.group(1) for m in match if m)
    assert a.ctl("resume", "route", route_id).stdout == "command succeeded\n"
    assert a.ctl("resume", "route", "999999", check=False).returncode == 1
    assert a.ctl("show", "hoststats").returncode == 0


def test_mx_route_through_test_dns(a: Daemon, b: Daemon, dns: DnsThread) -> None:
    t = smtp_send(a.port, "alice@local.test", ["dave@example.test"], MSG)
    assert t.data is not None and t.data[0] == 250
    wait_for(lambda: len(b.maildir("md/dave")) == 1, 20)
    wait_log(a, r"delivery .*(?:to|rcpt)=<dave@example.test> .*relay=.?mx.example.test "
                r"\[127.0.0.1\].? .*result=\"?Ok\b")
    assert dns.server is not None and dns.server.count("example.test", wire.MX) >= 1


def test_null_mx_bounces_with_556(a: Daemon) -> None:
    t = smtp_send(a.port, "alice@local.test", ["nobody@nullmx.test"], MSG)
    assert t.data is not None and t.data[0] == 250
    wait_log(a, r"delivery .*(?:to|rcpt)=<nobody@nullmx.test> .*result=\"?PermFail\"? "
                r"stat=\"?556 5.1.10")
    wait_for(lambda: a.maildir("md/alice"), 20)
    raw = a.maildir("md/alice")[-1]
    msg, parts = dsn_parts(raw)
    assert msg["Subject"] == "Delivery status notification: failed"
    blocks = parts[1].get_payload()
    assert blocks[1]["Status"] == "5.1.10"
    assert blocks[1]["Final-Recipient"] == "rfc822; nobody@nullmx.test"


def test_null_sender_relays_and_never_bounces(a: Daemon, b: Daemon) -> None:
    t = smtp_send(a.port, "", ["nullsender@remote.test"], MSG)
    assert t.data is not None and t.data[0] == 250
    wait_for(lambda: b.maildir("md/nullsender"), 20)
    assert b.maildir("md/nullsender")[0].startswith(b"Return-Path: <>\n")
    t = smtp_send(a.port, "", ["gone@nullmx.test"], MSG)
    msgid = t.data[1].split()[1] if t.data else ""
    wait_log(a, rf"bounce null-sender-dropped evpid={msgid}")


# --- scripted remotes -----------------------------------------------------------


@pytest.fixture()
def peer_a(request: pytest.FixtureRequest) -> Iterator[tuple[SmtpPeer, Daemon]]:
    behaviour: Behaviour = request.param
    with SmtpPeer(behaviour) as peer:
        d = Daemon(config_a(peer.port), extra_env={"MAILRIDER_MTA_TIMEOUT": "3"})
        d.start()
        try:
            yield peer, d
        finally:
            d.cleanup()


def _flaky() -> Behaviour:
    calls = {"n": 0}

    def rcpt(line: str) -> str:
        calls["n"] += 1
        return "451 4.7.1 Greylisted, come back later" if calls["n"] == 1 else "250 2.1.5 Ok"

    return Behaviour(rcpt=rcpt)


@pytest.mark.parametrize("peer_a", [_flaky()], indirect=True)
def test_4xx_then_2xx_after_schedule(peer_a: tuple[SmtpPeer, Daemon]) -> None:
    peer, d = peer_a
    t = smtp_send(d.port, "alice@local.test", ["grey@remote.test"], MSG)
    assert t.data is not None and t.data[0] == 250
    wait_log(d, r"delivery .*(?:to|rcpt)=<grey@remote.test> .*result=\"?TempFail\"? "
                r"stat=\"?451 4.7.1 Greylisted")
    assert not peer.received
    show = d.ctl("show", "queue").stdout
    assert "grey@remote.test" in show
    d.ctl("schedule", "all")
    wait_for(lambda: peer.received, 20)
    wait_log(d, r"delivery .*(?:to|rcpt)=<grey@remote.test> .*result=\"?Ok\b")
    assert peer.received[0].rcpts == ["RCPT TO:<grey@remote.test>"]
    wait_for(lambda: queue_empty(d), 10)


@pytest.mark.parametrize("peer_a", [Behaviour(
    rcpt=lambda line: "550 5.1.1 <x> User unknown in virtual mailbox table"
    if "nobody" in line else "250 2.1.5 Ok")], indirect=True)
def test_5xx_bounces_with_remote_text(peer_a: tuple[SmtpPeer, Daemon]) -> None:
    peer, d = peer_a
    t = smtp_send(d.port, "alice@local.test",
                  ["nobody@remote.test", "nobody2@remote.test", "fine@remote.test"], MSG)
    assert t.data is not None and t.data[0] == 250
    wait_for(lambda: d.maildir("md/alice"), 20)
    time.sleep(1.5)  # a second notification would be flushed by now
    [raw] = d.maildir("md/alice")
    msg, parts = dsn_parts(raw)
    assert msg["To"] == "alice@local.test"
    assert [p.get_content_type() for p in parts] == [
        "text/plain", "message/delivery-status", "text/rfc822-headers"]
    text = parts[0].get_content()
    assert "nobody@remote.test" in text and "nobody2@remote.test" in text
    assert "fine@remote.test" not in text
    blocks = parts[1].get_payload()
    assert len(blocks) == 3  # per-message fields, then both failed recipients
    assert blocks[0]["Reporting-MTA"].startswith("dns; ")
    assert blocks[0]["Arrival-Date"]
    finals = sorted(b["Final-Recipient"] for b in blocks[1:])
    assert finals == ["rfc822; nobody2@remote.test", "rfc822; nobody@remote.test"]
    for blk in blocks[1:]:
        assert blk["Action"] == "failed"
        assert blk["Status"] == "5.1.1"
        assert blk["Remote-MTA"] == "dns; 127.0.0.1"
        assert blk["Diagnostic-Code"] == (
            "smtp; 550 5.1.1 <x> User unknown in virtual mailbox table")
    assert "Subject: relay me" in parts[2].get_payload()
    # the good recipient got the message, once
    assert len(peer.received) == 1 and peer.received[0].rcpts == ["RCPT TO:<fine@remote.test>"]
    wait_for(lambda: queue_empty(d), 10)


@pytest.mark.parametrize("peer_a", [Behaviour(close_in_data=True)], indirect=True)
def test_close_in_data_is_temporary(peer_a: tuple[SmtpPeer, Daemon]) -> None:
    peer, d = peer_a
    t = smtp_send(d.port, "alice@local.test", ["cut@remote.test"], MSG)
    assert t.data is not None and t.data[0] == 250
    wait_log(d, r"delivery .*(?:to|rcpt)=<cut@remote.test> .*result=\"?TempFail\"?")
    assert "cut@remote.test" in d.ctl("show", "queue").stdout
    assert not peer.received
    assert not d.maildir("md/alice")


@pytest.mark.parametrize("peer_a", [Behaviour(rcpt=lambda line: "452 4.2.2 Mailbox full")],
                         indirect=True)
def test_expiry_with_short_ttl_bounces(peer_a: tuple[SmtpPeer, Daemon]) -> None:
    _peer, d = peer_a
    t = smtp_send(d.port, "alice@local.test", ["full@short.test"], MSG)
    assert t.data is not None and t.data[0] == 250
    wait_log(d, r"delivery .*(?:to|rcpt)=<full@short.test> .*result=\"?TempFail\"?")
    wait_log(d, r"relay: Expire for \S+ .*to=<full@short.test>,", 20)
    wait_for(lambda: d.maildir("md/alice"), 20)
    [raw] = d.maildir("md/alice")
    msg, parts = dsn_parts(raw)
    assert msg["Subject"] == "Delivery status notification: failed"
    blk = parts[1].get_payload()[1]
    assert blk["Status"] == "5.4.7"
    assert "452 4.2.2 Mailbox full" in blk["Diagnostic-Code"]
    wait_for(lambda: queue_empty(d), 10)


@pytest.mark.parametrize("peer_a", [Behaviour(rcpt=lambda line: "250 2.1.5 Ok", dsn=False)],
                         indirect=True)
def test_notify_success_gives_relayed_dsn(peer_a: tuple[SmtpPeer, Daemon]) -> None:
    peer, d = peer_a
    with __import__("socket").create_connection(("127.0.0.1", d.port), timeout=10) as s:
        f = s.makefile("rb")

        def cmd(line: bytes) -> bytes:
            s.sendall(line + b"\r\n")
            while True:
                r = f.readline()
                if r[3:4] != b"-":
                    return r

        f.readline()
        assert cmd(b"EHLO c.test").startswith(b"250")
        assert cmd(b"MAIL FROM:<alice@local.test> RET=HDRS ENVID=env42").startswith(b"250")
        assert cmd(b"RCPT TO:<ok@remote.test> NOTIFY=SUCCESS,FAILURE "
                   b"ORCPT=rfc822;ok@remote.test").startswith(b"250")
        assert cmd(b"DATA").startswith(b"354")
        assert cmd(MSG + b".").startswith(b"250")
        cmd(b"QUIT")
    wait_for(lambda: peer.received, 20)
    wait_for(lambda: d.maildir("md/alice"), 20)
    msg, parts = dsn_parts(d.maildir("md/alice")[0])
    assert msg["Subject"] == "Delivery status notification: relayed"
    blocks = parts[1].get_payload()
    assert blocks[0]["Original-Envelope-Id"] == "env42"
    assert blocks[1]["Action"] == "relayed"
    assert blocks[1]["Original-Recipient"] == "rfc822; ok@remote.test"
    assert blocks[1]["Status"].startswith("2.")


def test_notify_passed_on_when_next_hop_has_dsn() -> None:
    with SmtpPeer(Behaviour(dsn=True)) as peer:
        with Daemon(config_a(peer.port)) as d:
            import socket as so
            with so.create_connection(("127.0.0.1", d.port), timeout=10) as s:
                f = s.makefile("rb")

                def cmd(line: bytes) -> bytes:
                    s.sendall(line + b"\r\n")
                    while True:
                        r = f.readline()
                        if r[3:4] != b"-":
                            return r

                f.readline()
                cmd(b"EHLO c.test")
                assert cmd(b"MAIL FROM:<alice@local.test> RET=FULL ENVID=e1").startswith(b"250")
                assert cmd(b"RCPT TO:<ok@remote.test> NOTIFY=SUCCESS").startswith(b"250")
                assert cmd(b"DATA").startswith(b"354")
                assert cmd(MSG + b".").startswith(b"250")
            wait_for(lambda: peer.received, 20)
            r = peer.received[0]
            assert "RET=FULL" in r.mail and "ENVID=e1" in r.mail
            assert r.rcpts[0].startswith("RCPT TO:<ok@remote.test> NOTIFY=SUCCESS")
            time.sleep(1.5)
            assert not d.maildir("md/alice")  # the next hop reports, not us


def test_starttls_auth_plain_smarthost(tmp_path: Path) -> None:
    ca, cert, key = make_certs(tmp_path)
    with SmtpPeer(Behaviour(tls=server_context(cert, key), auth=("joe", "s3cret"))) as peer:
        extra = f'ca testca cert "{ca}"\ntable creds {{{{ "lbl" = "joe:s3cret" }}}}\n'
        conf = config_a(peer.port, extra=extra).replace(
            "relay host smtp://127.0.0.1:RELAYPORT".replace("RELAYPORT", str(peer.port)),
            f"relay host smtp+tls://lbl@127.0.0.1:{peer.port} auth <creds> ca testca", 1)
        with Daemon(conf) as d:
            t = smtp_send(d.port, "alice@local.test", ["sec@remote.test"], MSG)
            assert t.data is not None and t.data[0] == 250
            wait_for(lambda: peer.received, 20)
            r = peer.received[0]
            assert r.tls and r.auth == "joe"
            assert r.data.endswith(b"\r\n..leading dot\r\n...two dots\r\n\r\nlast line\r\n")
            assert "s3cret" not in d.log()


def _auth_conf(peer_port: int, url: str, options: str = "", ca: Path | None = None) -> str:
    extra = 'table creds {{ "lbl" = "joe:s3cret" }}\n'
    if ca is not None:
        extra = f'ca testca cert "{ca}"\n' + extra
    return config_a(peer_port, extra=extra).replace(
        f"relay host smtp://127.0.0.1:{peer_port}",
        f"relay host {url.format(port=peer_port)} auth <creds>{options}", 1)


@pytest.mark.parametrize(("url", "options", "reply"), [
    ("smtp+tls://lbl@127.0.0.1:{port}", "", r"TLS handshake .*failed.*relay credentials not sent"),
    # what used to send the password over TLS that nobody checked
    ("smtp+tls://lbl@127.0.0.1:{port}", " tls no-verify",
     r"451 4\.7\.0 Relay credentials are only sent to a verified TLS peer \(tls no-verify\)"),
])
def test_auth_never_goes_to_an_unverified_peer(tmp_path: Path, url: str, options: str,
                                               reply: str) -> None:
    _ca, cert, key = make_certs(tmp_path)  # a CA the daemon is not told about
    with SmtpPeer(Behaviour(tls=server_context(cert, key), auth=("joe", "s3cret"))) as peer:
        with Daemon(_auth_conf(peer.port, url, options)) as d:
            smtp_send(d.port, "alice@local.test", ["sec@remote.test"], MSG)
            wait_log(d, r"delivery .*(?:to|rcpt)=<sec@remote\.test> .*result=\"?TempFail\"? .*"
                     + reply)
            time.sleep(0.5)
            assert not any(c.upper().startswith("AUTH") for c in peer.commands), peer.commands
            assert not any(c.upper().startswith("MAIL") for c in peer.commands)  # no clear retry
            assert not peer.received
            assert "s3cret" not in d.log()


def test_unverifiable_certificate_is_a_temporary_failure(tmp_path: Path) -> None:
    _ca, cert, key = make_certs(tmp_path)
    with SmtpPeer(Behaviour(tls=server_context(cert, key))) as peer:
        conf = config_a(peer.port).replace(
            f"relay host smtp://127.0.0.1:{peer.port}",
            f"relay host smtp+tls://127.0.0.1:{peer.port}", 1)
        with Daemon(conf) as d:
            smtp_send(d.port, "alice@local.test", ["v@remote.test"], MSG)
            wait_log(d, r"delivery .*(?:to|rcpt)=<v@remote.test> .*result=\"?TempFail\"? "
                        r".*TLS handshake")
            assert not peer.received


def test_silent_host_times_out_then_next_mx() -> None:
    silent = SmtpPeer(Behaviour(greet=False), host="127.0.0.2")
    good = SmtpPeer(Behaviour(), host="127.0.0.3", port=silent.port)
    records = {
        ("multi.test", wire.MX): [(10, "slow.multi.test"), (20, "good.multi.test")],
        ("slow.multi.test", wire.A): ["127.0.0.2"],
        ("good.multi.test", wire.A): ["127.0.0.3"],
    }
    try:
        with DnsThread(records) as dns:
            with Daemon(config_a(1, dns.port, silent.port),
                        extra_env={"MAILRIDER_MTA_TIMEOUT": "2"}) as d:
                t = smtp_send(d.port, "alice@local.test", ["x@multi.test"], MSG)
                assert t.data is not None and t.data[0] == 250
                wait_for(lambda: good.received, 30)
                wait_log(d, r"mta host-failed relay=.?slow.multi.test \[127.0.0.2\].? .*Timeout")
                wait_log(d, r"delivery .*(?:to|rcpt)=<x@multi.test> .*"
                            r"relay=.?good.multi.test \[127.0.0.3\].? .*result=\"?Ok\b")
                assert silent.connections == 1
    finally:
        silent.close()
        good.close()
