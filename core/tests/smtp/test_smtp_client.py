"""The sans-I/O SMTP client: transcripts, the body encoder, and the client
paired with the server machine in memory."""

from __future__ import annotations

import base64
import re
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mailrider import limits
from mailrider.smtp import client as cl
from mailrider.smtp import events as ev
from mailrider.smtp.client import (
    AuthResult,
    BodyEncoder,
    ClientConfig,
    ClientEvent,
    ClientState,
    Closed,
    DataReady,
    Failed,
    Greeting,
    LocalProtocolError,
    MailResult,
    RcptDSN,
    RcptResult,
    Ready,
    SMTPClient,
    StartTLSReady,
    TransactionResult,
)
from mailrider.smtp.server import ServerConfig, SMTPServer

CFG = ClientConfig(helo_name="relay.example.net")
NO = RcptDSN()
EHLO_FULL = (
    b"250-mx.example.org Hello\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250-8BITMIME\r\n"
    b"250-ENHANCEDSTATUSCODES\r\n250-SMTPUTF8\r\n250 DSN\r\n"
)
EHLO_BARE = b"250-mx.example.org Hello\r\n250 ENHANCEDSTATUSCODES\r\n"


class C:
    """A client fed with server bytes; records events and what it sent."""

    def __init__(self, config: ClientConfig = CFG) -> None:
        self.c = SMTPClient(config)
        self.events: list[ClientEvent] = []
        self.sent = bytearray()

    def feed(self, data: bytes) -> C:
        self.c.receive(data)
        self.pump()
        return self

    def pump(self) -> None:
        while (e := self.c.next_event()) is not None:
            self.events.append(e)
        self.sent += self.c.data_to_send()

    def take(self) -> bytes:
        self.pump()
        out = bytes(self.sent)
        self.sent.clear()
        return out

    def kinds(self) -> list[str]:
        self.pump()
        return [type(e).__name__ for e in self.events]

    def last(self) -> ClientEvent:
        self.pump()
        return self.events[-1]


def ready(ehlo: bytes = EHLO_FULL, config: ClientConfig = CFG) -> C:
    c = C(config).feed(b"220 mx.example.org ESMTP\r\n")
    assert c.take() == b"EHLO relay.example.net\r\n"
    c.feed(ehlo)
    assert isinstance(c.last(), Ready)
    c.take()
    c.events.clear()
    return c


def test_timeout_constants() -> None:
    assert (cl.GREETING_TIMEOUT, cl.MAIL_TIMEOUT, cl.RCPT_TIMEOUT) == (300.0, 300.0, 300.0)
    assert (cl.DATA_INIT_TIMEOUT, cl.DATA_BLOCK_TIMEOUT, cl.DATA_END_TIMEOUT) == (
        120.0,
        180.0,
        600.0,
    )
    assert limits.SMTP_DATA_END_TIMEOUT == 600.0


# ------------------------------------------------------------- happy paths


def test_pipelined_transaction() -> None:
    c = C().feed(b"220 mx.example.org ESMTP\r\n")
    assert c.kinds() == ["Greeting"] and c.events[0] == Greeting(220, "mx.example.org ESMTP")
    assert c.take() == b"EHLO relay.example.net\r\n"
    c.feed(EHLO_FULL)
    ready_ev = c.last()
    assert isinstance(ready_ev, Ready)
    assert ready_ev.extensions["SIZE"] == "1000" and "PIPELINING" in ready_ev.extensions
    assert c.c.state is ClientState.READY
    c.take()
    c.c.start_transaction(
        "alice@example.net", [("bob@example.org", NO), ("carol@example.org", NO)], 100, False,
        False,
    )
    # RFC 2920: one batch
    assert c.take() == (
        b"MAIL FROM:<alice@example.net> SIZE=100\r\nRCPT TO:<bob@example.org>\r\n"
        b"RCPT TO:<carol@example.org>\r\nDATA\r\n"
    )
    c.feed(b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n550 5.1.1 No such user\r\n354 Go ahead\r\n")
    assert c.kinds()[-4:] == ["MailResult", "RcptResult", "RcptResult", "DataReady"]
    r1, r2 = c.events[-3], c.events[-2]
    assert isinstance(r1, RcptResult) and r1.rcpt == "bob@example.org" and r1.reply.code == 250
    assert isinstance(r2, RcptResult) and r2.reply.status == "5.1.1"
    assert r2.reply.text == "No such user"
    c.c.send_body(b"Subject: hi\n\n.hidden\nbye")
    c.c.end_body()
    assert c.take() == b"Subject: hi\r\n\r\n..hidden\r\nbye\r\n.\r\n"
    c.feed(b"250 2.0.0 queued as 1234\r\n")
    res = c.last()
    assert isinstance(res, TransactionResult) and res.reply.code == 250 and res.rcpt is None
    assert res.dsn_relayed is True
    c.c.quit()
    assert c.take() == b"QUIT\r\n"
    c.feed(b"221 2.0.0 Bye\r\n")
    assert c.kinds()[-1] == "Closed" and c.c.closed


def test_unpipelined_transaction_goes_step_by_step() -> None:
    c = ready(EHLO_BARE)
    c.c.start_transaction("a@x.net", [("b@y.org", NO), ("c@y.org", NO)], 10, False, False)
    assert c.take() == b"MAIL FROM:<a@x.net>\r\n"  # no SIZE advertised: no SIZE=
    c.feed(b"250 ok\r\n")
    assert c.take() == b"RCPT TO:<b@y.org>\r\n"
    c.feed(b"451 4.3.0 later\r\n")
    assert c.take() == b"RCPT TO:<c@y.org>\r\n"
    c.feed(b"250 ok\r\n")
    assert c.take() == b"DATA\r\n"
    c.feed(b"354 go\r\n")
    assert isinstance(c.last(), DataReady)
    c.c.end_body()
    assert c.take() == b".\r\n"
    c.feed(b"250 ok\r\n")
    assert isinstance(c.last(), TransactionResult) and c.c.state is ClientState.READY
    assert c.last().dsn_relayed is False  # type: ignore[union-attr]


def test_replies_fed_byte_by_byte() -> None:
    c = C()
    for b in b"220-mx\r\n220 hi\r\n":
        c.feed(bytes([b]))
    assert c.kinds() == ["Greeting"] and c.take() == b"EHLO relay.example.net\r\n"
    for b in EHLO_FULL:
        c.feed(bytes([b]))
    assert c.kinds() == ["Greeting", "Ready"]


def test_null_sender_and_quoted_local_part() -> None:
    c = ready(EHLO_BARE)
    c.c.start_transaction("", [('"john doe"@y.org', NO)], 10, False, False)
    assert c.take() == b"MAIL FROM:<>\r\n"
    c.feed(b"250 ok\r\n")
    assert c.take() == b'RCPT TO:<"john doe"@y.org>\r\n'


# ----------------------------------------------------------- HELO, greeting


def test_helo_fallback_on_5xx_ehlo() -> None:
    c = C().feed(b"220 old\r\n")
    c.take()
    c.feed(b"500 what?\r\n")
    assert c.take() == b"HELO relay.example.net\r\n"
    c.feed(b"250 old.example\r\n")
    assert c.last() == Ready({})


def test_helo_refused_too() -> None:
    c = C().feed(b"220 old\r\n")
    c.feed(b"502 no\r\n")
    c.take()
    c.feed(b"501 no either\r\n")
    f = c.last()
    assert isinstance(f, Failed) and f.fatal and not f.temporary and f.stage == "helo"
    assert c.take() == b"QUIT\r\n"
    c.feed(b"221 bye\r\n")
    assert isinstance(c.last(), Closed)


def test_ehlo_4xx_is_temporary_and_fatal() -> None:
    c = C().feed(b"220 x\r\n")
    c.take()
    c.feed(b"450 4.3.2 busy\r\n")
    f = c.last()
    assert isinstance(f, Failed) and f.temporary and f.fatal and f.stage == "helo"
    assert c.take() == b"QUIT\r\n"


def test_greeting_554_then_quit() -> None:
    c = C().feed(b"554 5.7.1 go away\r\n")
    f = c.last()
    assert isinstance(f, Failed) and not f.temporary and f.stage == "greeting" and f.fatal
    assert c.take() == b"QUIT\r\n"
    c.feed(b"221 bye\r\n")
    assert c.kinds() == ["Failed", "Closed"]


def test_421_anywhere_closes_without_quit() -> None:
    c = C().feed(b"421 4.3.2 shutting down\r\n")
    assert c.kinds() == ["Failed", "Closed"] and c.take() == b""
    c = ready()
    c.c.start_transaction("a@x.net", [("b@y.org", NO)], 10, False, False)
    c.take()
    c.feed(b"250 ok\r\n421 4.7.0 bye\r\n")
    f = c.events[-2]
    assert isinstance(f, Failed) and f.temporary and f.stage == "rcpt" and f.fatal
    assert isinstance(c.last(), Closed) and c.take() == b""


def test_eof_mid_session_and_after_quit() -> None:
    c = ready()
    c.feed(b"")
    f = c.events[0]
    assert isinstance(f, Failed) and f.temporary and f.fatal and f.reply.code == 421
    assert c.kinds() == ["Failed", "Closed"]
    c2 = ready()
    c2.c.quit()
    c2.feed(b"")
    assert c2.kinds() == ["Closed"]
    c2.feed(b"250 late\r\n")  # ignored after the end
    assert c2.kinds() == ["Closed"]


def test_quit_answers_and_earlier_replies_are_drained() -> None:
    c = ready()
    c.c.start_transaction("a@x.net", [("b@y.org", NO)], 10, False, False)
    c.c.quit()
    assert c.take().endswith(b"DATA\r\nQUIT\r\n")
    c.feed(b"250 ok\r\n250 ok\r\n354 go\r\n")
    assert c.kinds() == []  # nothing for a transaction the app abandoned
    c.feed(b"221 bye\r\n")
    assert c.kinds() == ["Closed"]


def test_quit_in_body_closes_at_once() -> None:
    c = ready()
    c.c.start_transaction("a@x.net", [("b@y.org", NO)], 10, False, False)
    c.feed(b"250 ok\r\n250 ok\r\n354 go\r\n")
    c.take()
    c.c.send_body(b"half a mess")
    c.c.quit()
    assert c.take() == b"half a mess"  # no QUIT inside the message
    assert isinstance(c.last(), Closed)


# ------------------------------------------------------------------ STARTTLS

EHLO_TLS = b"250-mx\r\n250-PIPELINING\r\n250-STARTTLS\r\n250 AUTH PLAIN LOGIN\r\n"


def to_starttls(config: ClientConfig = CFG) -> C:
    c = C(config).feed(b"220 mx\r\n")
    c.take()
    c.feed(EHLO_TLS)
    assert c.take() == b"STARTTLS\r\n"
    return c


def test_starttls_then_ehlo_again() -> None:
    c = to_starttls()
    c.feed(b"220 2.0.0 ready\r\n")
    assert isinstance(c.last(), StartTLSReady) and c.c.state is ClientState.TLS
    with pytest.raises(LocalProtocolError):
        c.c.start_transaction("a@x.net", [("b@y.org", NO)], 1, False, False)
    c.c.tls_established()
    assert c.c.tls and c.take() == b"EHLO relay.example.net\r\n"
    assert c.c.extensions == {}  # forgotten (RFC 3207 4.2)
    c.feed(b"250-mx\r\n250 PIPELINING\r\n")
    assert c.last() == Ready({"PIPELINING": ""})


def test_starttls_response_injection_is_refused() -> None:
    c = to_starttls()
    c.feed(b"220 ready\r\n250 injected\r\n")
    assert c.kinds()[-2:] == ["Failed", "Closed"]
    f = c.events[-2]
    assert isinstance(f, Failed) and f.temporary and "TLS handshake" in f.reply.text
    c2 = to_starttls()
    c2.feed(b"220 ready\r\n")
    c2.feed(b"250 late injection\r\n")
    assert c2.kinds()[-2:] == ["Failed", "Closed"]


def test_starttls_refused_opportunistic_goes_on_in_clear() -> None:
    c = to_starttls()
    c.feed(b"454 4.7.0 TLS not available\r\n")
    assert isinstance(c.last(), Ready) and not c.c.tls


def test_starttls_refused_when_required() -> None:
    c = to_starttls(ClientConfig("relay.example.net", want_starttls="require"))
    c.feed(b"454 4.7.0 TLS not available\r\n")
    f = c.last()
    assert isinstance(f, Failed) and f.temporary and f.fatal and f.stage == "starttls"
    assert c.take() == b"QUIT\r\n"


def test_tls_required_but_not_offered() -> None:
    c = C(ClientConfig("relay.example.net", want_starttls="require")).feed(b"220 x\r\n")
    c.take()
    c.feed(EHLO_FULL)
    f = c.last()
    assert isinstance(f, Failed) and f.temporary and f.fatal and f.stage == "starttls"
    assert f.reply.text == "TLS required but not offered"
    assert c.take() == b"QUIT\r\n"


def test_tls_required_after_helo_fallback() -> None:
    c = C(ClientConfig("relay.example.net", want_starttls="require")).feed(b"220 x\r\n")
    c.feed(b"500 no\r\n")
    c.feed(b"250 ok\r\n")
    assert isinstance(c.last(), Failed)


def test_starttls_never() -> None:
    c = C(ClientConfig("relay.example.net", want_starttls="never")).feed(b"220 x\r\n")
    c.take()
    c.feed(EHLO_TLS)
    assert isinstance(c.last(), Ready) and c.take() == b""


def test_implicit_tls_does_not_starttls() -> None:
    c = C(ClientConfig("relay.example.net", implicit_tls=True)).feed(b"220 x\r\n")
    c.take()
    c.feed(EHLO_TLS)
    assert isinstance(c.last(), Ready) and c.c.tls


# ---------------------------------------------------------------------- AUTH

AUTH_CFG = ClientConfig("relay.example.net", auth=("user", "s3cr3t"))


def after_tls(config: ClientConfig, ehlo: bytes) -> C:
    c = to_starttls(config)
    c.feed(b"220 ready\r\n")
    c.c.tls_established()
    c.take()
    c.feed(ehlo)
    return c


VERIFIED_AUTH_CFG = ClientConfig("relay.example.net", auth=("user", "s3cr3t"),
                                 auth_needs_verified_tls=True)


@pytest.mark.parametrize("verified", [False, True])
def test_auth_waits_for_a_verified_peer(verified: bool) -> None:
    c = to_starttls(VERIFIED_AUTH_CFG)
    c.feed(b"220 ready\r\n")
    c.c.tls_established(verified=verified)
    assert c.take() == b"EHLO relay.example.net\r\n"
    c.feed(b"250-mx\r\n250 AUTH LOGIN PLAIN\r\n")
    sent = c.take()
    if verified:
        assert sent.startswith(b"AUTH PLAIN ")
        return
    assert b"AUTH" not in sent and b"s3cr3t" not in sent
    f = c.last()
    assert isinstance(f, Failed) and f.temporary
    assert f.reply.text == ("Refusing to authenticate to a TLS peer whose certificate "
                            "was not verified")


@pytest.mark.parametrize("verified", [False, True])
def test_auth_over_implicit_tls_needs_it_verified(verified: bool) -> None:
    cfg = ClientConfig("relay.example.net", auth=("user", "s3cr3t"),
                       auth_needs_verified_tls=True, implicit_tls=True,
                       implicit_tls_verified=verified)
    c = C(cfg).feed(b"220 mx\r\n")
    c.take()
    c.feed(b"250-mx\r\n250 AUTH PLAIN\r\n")
    assert c.take().startswith(b"AUTH PLAIN ") == verified
    assert isinstance(c.last(), Failed) != verified


def test_auth_plain_after_tls() -> None:
    c = after_tls(AUTH_CFG, b"250-mx\r\n250 AUTH LOGIN PLAIN\r\n")
    line = c.take()
    assert line.startswith(b"AUTH PLAIN ") and line.endswith(b"\r\n")
    assert base64.b64decode(line[11:-2]) == b"\0user\0s3cr3t"
    c.feed(b"235 2.7.0 Authentication successful\r\n")
    assert c.kinds()[-2:] == ["AuthResult", "Ready"]
    res = c.events[-2]
    assert isinstance(res, AuthResult) and res.ok


def test_auth_login() -> None:
    c = after_tls(AUTH_CFG, b"250-mx\r\n250 AUTH LOGIN\r\n")
    assert c.take() == b"AUTH LOGIN\r\n"
    c.feed(b"334 VXNlcm5hbWU6\r\n")
    assert c.take() == base64.b64encode(b"user") + b"\r\n"
    c.feed(b"334 UGFzc3dvcmQ6\r\n")
    assert c.take() == base64.b64encode(b"s3cr3t") + b"\r\n"
    c.feed(b"235 ok\r\n")
    assert isinstance(c.last(), Ready)


def test_auth_failure_is_fatal() -> None:
    c = after_tls(AUTH_CFG, b"250-mx\r\n250 AUTH PLAIN\r\n")
    c.take()
    c.feed(b"535 5.7.8 Authentication credentials invalid\r\n")
    res, f = c.events[-2:]
    assert isinstance(res, AuthResult) and not res.ok
    assert isinstance(f, Failed) and not f.temporary and f.fatal and f.stage == "auth"
    assert c.take() == b"QUIT\r\n"
    assert all("s3cr3t" not in repr(e) for e in c.events)
    assert "s3cr3t" not in repr(AUTH_CFG)


def test_auth_unexpected_challenge_cancelled() -> None:
    c = after_tls(AUTH_CFG, b"250-mx\r\n250 AUTH PLAIN\r\n")
    c.take()
    c.feed(b"334 \r\n")
    assert c.take() == b"*\r\nQUIT\r\n"
    assert isinstance(c.last(), Failed)


def test_auth_not_in_clear() -> None:
    c = C(AUTH_CFG).feed(b"220 x\r\n")
    c.take()
    c.feed(b"250-mx\r\n250 AUTH PLAIN\r\n")
    f = c.last()
    assert isinstance(f, Failed) and f.stage == "auth" and f.fatal and f.temporary
    assert c.take() == b"QUIT\r\n"  # nothing secret was sent
    plain = ClientConfig("relay.example.net", auth=("u", "p"), allow_plain_auth=True)
    c2 = C(plain).feed(b"220 x\r\n")
    c2.take()
    c2.feed(b"250-mx\r\n250 AUTH PLAIN\r\n")
    assert c2.take().startswith(b"AUTH PLAIN ")


def test_auth_no_mechanism() -> None:
    c = after_tls(AUTH_CFG, b"250-mx\r\n250 AUTH CRAM-MD5\r\n")
    f = c.last()
    assert isinstance(f, Failed) and f.stage == "auth" and "mechanism" in f.reply.text


# --------------------------------------------------- refusals before MAIL


def test_size_refused_before_mail() -> None:
    c = ready()
    c.c.start_transaction("a@x.net", [("b@y.org", NO)], 1001, False, False)
    f = c.last()
    assert isinstance(f, Failed) and (f.reply.code, f.reply.status) == (552, "5.3.4")
    assert not f.temporary and not f.fatal and c.take() == b""
    assert c.c.state is ClientState.READY


def test_size_zero_means_no_limit() -> None:
    c = ready(b"250-mx\r\n250 SIZE 0\r\n")
    c.c.start_transaction("a@x.net", [("b@y.org", NO)], 10**9, False, False)
    assert c.take() == b"MAIL FROM:<a@x.net> SIZE=1000000000\r\n"


def test_8bit_needs_8bitmime() -> None:
    c = ready(EHLO_BARE)
    c.c.start_transaction("a@x.net", [("b@y.org", NO)], 10, True, False)
    f = c.last()
    assert isinstance(f, Failed) and (f.reply.code, f.reply.status) == (554, "5.6.3")
    assert f.reply.text == "8-bit content not supported" and not f.temporary
    assert c.take() == b""
    c2 = ready()
    c2.c.start_transaction("a@x.net", [("b@y.org", NO)], 10, True, False)
    assert c2.take().startswith(b"MAIL FROM:<a@x.net> SIZE=10 BODY=8BITMIME\r\n")


def test_smtputf8_needed() -> None:
    c = ready(b"250-mx\r\n250 8BITMIME\r\n")
    c.c.start_transaction("\u00e9@x.net", [("b@y.org", NO)], 10, True, True)
    f = c.last()
    assert isinstance(f, Failed) and (f.reply.code, f.reply.status) == (553, "5.6.7")
    c2 = ready()
    c2.c.start_transaction("\u00e9@x.net", [("b@y.org", NO)], 10, True, True)
    assert c2.take().startswith(
        "MAIL FROM:<\u00e9@x.net> SIZE=10 BODY=8BITMIME SMTPUTF8\r\n".encode()
    )


# ----------------------------------------------------------------------- DSN


def test_dsn_parameters_when_offered() -> None:
    c = ready()
    dsn = RcptDSN(frozenset({"failure", "DELAY"}), "rfc822;bob+x=y@example.org")
    c.c.start_transaction(
        "a@x.net", [("b@y.org", dsn)], 10, False, False, dsn_ret="HDRS", envid="id 1"
    )
    assert c.take() == (
        b"MAIL FROM:<a@x.net> SIZE=10 RET=HDRS ENVID=id+201\r\n"
        b"RCPT TO:<b@y.org> NOTIFY=DELAY,FAILURE ORCPT=rfc822;bob+2Bx+3Dy@example.org\r\n"
        b"DATA\r\n"
    )
    assert c.c.dsn_passed


def test_no_dsn_parameters_without_dsn() -> None:
    c = ready(b"250-mx\r\n250 PIPELINING\r\n")
    dsn = RcptDSN(frozenset({"SUCCESS"}), "rfc822;b@y.org")
    c.c.start_transaction("a@x.net", [("b@y.org", dsn)], 10, False, False, "FULL", "e1")
    assert c.take() == b"MAIL FROM:<a@x.net>\r\nRCPT TO:<b@y.org>\r\nDATA\r\n"
    assert not c.c.dsn_passed
    c.feed(b"250 ok\r\n250 ok\r\n354 go\r\n")
    c.c.end_body()
    c.feed(b"250 ok\r\n")
    res = c.last()
    assert isinstance(res, TransactionResult) and res.dsn_relayed is False


def test_dsn_not_wanted() -> None:
    c = ready(config=ClientConfig("relay.example.net", want_dsn=False))
    c.c.start_transaction("a@x.net", [("b@y.org", RcptDSN(frozenset({"NEVER"})))], 1, False,
                          False)
    assert b"NOTIFY" not in c.take()


def test_bad_dsn_values_refused() -> None:
    c = ready()
    with pytest.raises(LocalProtocolError):
        c.c.start_transaction("a@x.net", [("b@y.org", RcptDSN(frozenset({"NEVER", "DELAY"})))],
                              1, False, False)


# ------------------------------------------------------ transaction failures


def test_all_recipients_refused_pipelined() -> None:
    c = ready()
    c.c.start_transaction("a@x.net", [("b@y.org", NO)], 10, False, False)
    c.take()
    c.feed(b"250 ok\r\n550 5.1.1 unknown\r\n554 5.5.1 No valid recipients\r\n")
    f = c.last()
    assert isinstance(f, Failed) and f.stage == "rcpt" and f.reply.status == "5.1.1"
    assert not f.fatal and c.take() == b"RSET\r\n"
    assert c.c.state is ClientState.READY
    c.feed(b"250 reset\r\n")
    c.c.start_transaction("a@x.net", [("c@y.org", NO)], 10, False, False)
    assert c.take().startswith(b"MAIL FROM")


def test_all_recipients_refused_but_server_says_354() -> None:
    c = ready()
    c.c.start_transaction("a@x.net", [("b@y.org", NO)], 10, False, False)
    c.take()
    c.feed(b"250 ok\r\n550 5.1.1 unknown\r\n354 go on\r\n")
    assert c.take() == b".\r\nRSET\r\n"  # RFC 2920 3.1: an empty message, then RSET
    f = c.last()
    assert isinstance(f, Failed) and f.stage == "rcpt"
    c.feed(b"554 no recipients\r\n250 reset\r\n")
    assert c.kinds().count("Failed") == 1 and c.c.state is ClientState.READY


def test_mail_refused_pipelined() -> None:
    c = ready()
    c.c.start_transaction("a@x.net", [("b@y.org", NO)], 10, False, False)
    c.take()
    c.feed(b"451 4.3.0 try later\r\n503 5.5.1 need MAIL\r\n503 5.5.1 need MAIL\r\n")
    assert c.kinds() == ["MailResult", "RcptResult", "Failed"]
    f = c.last()
    assert isinstance(f, Failed) and f.stage == "mail" and f.temporary and not f.fatal
    assert c.take() == b""  # no transaction is open: no RSET


def test_mail_refused_unpipelined() -> None:
    c = ready(EHLO_BARE)
    c.c.start_transaction("a@x.net", [("b@y.org", NO)], 10, False, False)
    c.take()
    c.feed(b"553 5.1.8 bad sender\r\n")
    assert c.kinds() == ["MailResult", "Failed"] and c.take() == b""


def test_all_recipients_refused_unpipelined() -> None:
    c = ready(EHLO_BARE)
    c.c.start_transaction("a@x.net", [("b@y.org", NO)], 10, False, False)
    c.feed(b"250 ok\r\n")
    c.take()
    c.feed(b"450 4.2.0 busy\r\n")
    f = c.last()
    assert isinstance(f, Failed) and f.stage == "rcpt" and f.temporary
    assert c.take() == b"RSET\r\n"


def test_data_refused() -> None:
    c = ready()
    c.c.start_transaction("a@x.net", [("b@y.org", NO)], 10, False, False)
    c.feed(b"250 ok\r\n250 ok\r\n451 4.3.0 no DATA now\r\n")
    f = c.last()
    assert isinstance(f, Failed) and f.stage == "data" and f.temporary
    assert c.take().endswith(b"RSET\r\n")


def test_message_refused_is_a_result() -> None:
    c = ready()
    c.c.start_transaction("a@x.net", [("b@y.org", NO)], 10, False, False)
    c.feed(b"250 ok\r\n250 ok\r\n354 go\r\n")
    c.c.send_body(b"x\n")
    c.c.end_body()
    c.feed(b"554 5.7.1 spam\r\n")
    res = c.last()
    assert isinstance(res, TransactionResult) and res.reply.is_permanent
    assert c.c.state is ClientState.READY


# ---------------------------------------------------------------------- LMTP


def test_lmtp_one_result_per_accepted_recipient() -> None:
    c = C(ClientConfig("relay.example.net", lmtp=True)).feed(b"220 lmtp\r\n")
    assert c.take() == b"LHLO relay.example.net\r\n"
    c.feed(b"250-lmtp\r\n250 PIPELINING\r\n")
    c.c.start_transaction("a@x.net", [("b@y", NO), ("c@y", NO), ("d@y", NO)], 1, False, False)
    c.take()
    c.feed(b"250 ok\r\n250 ok\r\n550 no\r\n250 ok\r\n354 go\r\n")
    c.c.end_body()
    c.take()
    c.feed(b"250 2.0.0 b done\r\n")
    assert c.c.state.value == "data-end"
    c.feed(b"452 4.2.2 d over quota\r\n")
    results = [e for e in c.events if isinstance(e, TransactionResult)]
    assert [(r.rcpt, r.reply.code) for r in results] == [("b@y", 250), ("d@y", 452)]
    assert c.c.state is ClientState.READY


def test_lmtp_no_helo_fallback() -> None:
    c = C(ClientConfig("relay.example.net", lmtp=True)).feed(b"220 lmtp\r\n")
    c.feed(b"500 unknown\r\n")
    assert isinstance(c.last(), Failed) and c.take().endswith(b"QUIT\r\n")


# ------------------------------------------------------------ bad replies


@pytest.mark.parametrize(
    "bad",
    [
        b"25 short\r\n",
        b"2500 long code\r\n",
        b"250OK\r\n",
        b"650 bad class\r\n",
        b"290 bad second digit\r\n",
        b"hello\r\n",
        b"250-first\r\n251 changed code\r\n",
        b"220 " + b"x" * limits.SMTP_REPLY_LINE_MAX,
        b"220-x\r\n" * (limits.SMTP_REPLY_LINES_MAX + 1),
    ],
)
def test_malformed_reply_is_protocol_failure(bad: bytes) -> None:
    c = C().feed(bad)
    assert c.kinds() == ["Failed", "Closed"]
    f = c.events[0]
    assert isinstance(f, Failed) and f.temporary and f.fatal
    assert f.reply.text.startswith("Protocol error") and c.take() == b""


def test_unsolicited_reply_is_protocol_failure() -> None:
    c = ready()
    c.feed(b"250 surprise\r\n")
    assert c.kinds() == ["Failed", "Closed"]


def test_multiline_reply_status_stripped_and_lf_tolerated() -> None:
    c = ready()
    c.c.start_transaction("a@x.net", [("b@y.org", NO)], 10, False, False)
    c.feed(b"250 ok\n550-5.1.1 first\r\n550-5.1.1 second\r\n550 5.1.1 third\r\n")
    r = c.last()
    assert isinstance(r, RcptResult)
    assert (r.reply.status, r.reply.text, r.reply.lines) == ("5.1.1", "first", ("second", "third"))


def test_reply_text_with_mismatched_status_kept_as_text() -> None:
    c = ready()
    c.c.start_transaction("a@x.net", [("b@y.org", NO)], 10, False, False)
    c.feed(b"250 5.0.0 odd\r\n")
    r = c.last()
    assert isinstance(r, MailResult) and r.reply.status == "" and r.reply.text == "5.0.0 odd"


# ------------------------------------------------------- misuse, injection


def test_calls_out_of_state() -> None:
    c = C()
    with pytest.raises(LocalProtocolError):
        c.c.start_transaction("a@x.net", [("b@y.org", NO)], 1, False, False)
    with pytest.raises(LocalProtocolError):
        c.c.send_body(b"x")
    with pytest.raises(LocalProtocolError):
        c.c.tls_established()
    c2 = ready()
    with pytest.raises(LocalProtocolError):
        c2.c.end_body()
    with pytest.raises(LocalProtocolError):
        c2.c.start_transaction("a@x.net", [], 1, False, False)


@pytest.mark.parametrize(
    "sender,rcpt",
    [
        ("a@x.net\r\nRCPT TO:<evil@x>", "b@y.org"),
        ("a@x.net", "b@y.org>\r\nDATA"),
        ("a@x.net", "b@y.org> NOTIFY=NEVER"),
        ("a@x.net", ""),
        ("\u00e9@x.net", "b@y.org"),  # non-ASCII without SMTPUTF8
    ],
)
def test_command_injection_refused(sender: str, rcpt: str) -> None:
    c = ready()
    with pytest.raises(LocalProtocolError):
        c.c.start_transaction(sender, [(rcpt, NO)], 1, False, False)
    assert c.take() == b""


def test_envid_with_control_character_refused() -> None:
    c = ready()
    with pytest.raises(LocalProtocolError):
        c.c.start_transaction("a@x.net", [("b@y.org", NO)], 1, False, False, envid="a\r\nb")


def test_bad_helo_name() -> None:
    with pytest.raises(ValueError):
        ClientConfig("bad name")
    with pytest.raises(ValueError):
        ClientConfig("x\r\nMAIL")


# --------------------------------------------------------------- body encoder


def encode(body: bytes, cuts: list[int] | None = None) -> bytes:
    enc = BodyEncoder()
    out = b""
    pos = 0
    for cut in sorted(cuts or []):
        out += enc.feed(body[pos:cut])
        pos = cut
    return out + enc.feed(body[pos:]) + enc.end()


def unstuff(wire: bytes) -> bytes:
    assert wire.endswith(b".\r\n")
    lines = wire[:-3].split(b"\r\n")
    assert lines[-1] == b""
    return b"".join((ln[1:] if ln.startswith(b".") else ln) + b"\r\n" for ln in lines[:-1])


def normalise(body: bytes) -> bytes:
    out = re.sub(rb"\r\n|\r|\n", b"\r\n", body)
    return out if not out or out.endswith(b"\r\n") else out + b"\r\n"


@pytest.mark.parametrize(
    "body,wire",
    [
        (b"", b".\r\n"),
        (b".", b"..\r\n.\r\n"),
        (b"a\n.\nb", b"a\r\n..\r\n" b"b\r\n.\r\n"),
        (b"a\r\n.\r\n", b"a\r\n..\r\n.\r\n"),
        (b"x\r.\rMAIL FROM:<e>\n", b"x\r\n..\r\nMAIL FROM:<e>\r\n.\r\n"),
        (b"\n\n", b"\r\n\r\n.\r\n"),
        (b"..x\n", b"...x\r\n.\r\n"),
        (b"end\r", b"end\r\n.\r\n"),
    ],
)
def test_body_encoder_cases(body: bytes, wire: bytes) -> None:
    assert encode(body) == wire
    # the same whatever the chunking
    for i in range(len(body) + 1):
        assert encode(body, [i]) == wire


def test_body_encoder_misuse() -> None:
    enc = BodyEncoder()
    enc.end()
    with pytest.raises(LocalProtocolError):
        enc.feed(b"x")
    with pytest.raises(LocalProtocolError):
        enc.end()


_body = st.lists(
    st.sampled_from([b"\r", b"\n", b".", b"a", b"\r\n", b"\r\n.\r\n", b"\x00", b"\xff"]),
    max_size=40,
).map(b"".join) | st.binary(max_size=200)


@settings(max_examples=1000, deadline=None)
@given(_body, st.lists(st.integers(0, 200), max_size=5))
def test_body_encoder_properties(body: bytes, cuts: list[int]) -> None:
    wire = encode(body, [min(c, len(body)) for c in cuts])
    # the same bytes however the input was chunked
    assert wire == encode(body)
    # every CR is followed by LF and every LF preceded by CR
    assert wire.count(b"\r") == wire.count(b"\n") == wire.count(b"\r\n")
    # the only end-of-data mark is the terminator
    assert wire.endswith(b"\r\n.\r\n") or wire == b".\r\n"
    assert (b"\r\n" + wire).find(b"\r\n.\r\n") == len(wire) - 3
    # every line starting with "." (other than the terminator) is stuffed
    lines = wire.split(b"\r\n")[:-2]
    assert all(ln.startswith(b"..") for ln in lines if ln.startswith(b"."))
    # unstuffing gives the input back with normalised line ends
    assert unstuff(wire) == normalise(body)


# -------------------------------------------------- paired with the server


ServerPolicy = Callable[[SMTPServer, ev.Event], None]


def accept_all(srv: SMTPServer, event: ev.Event) -> None:
    if isinstance(event, ev.Hello | ev.MailFrom | ev.DataStart | ev.StartTLS):
        srv.accept()
    elif isinstance(event, ev.RcptTo):
        if event.rcpt.local == "nobody":
            srv.reject(550, "5.1.1", "No such user")
        else:
            srv.accept()
    elif isinstance(event, ev.DataEnd):
        for _ in range(event.replies_due):
            if event.error is not None:
                srv.reply(event.error)
            else:
                srv.accept("2.0.0 queued")


class Pair:
    """A client and a server joined in memory."""

    def __init__(
        self,
        ccfg: ClientConfig = CFG,
        scfg: ServerConfig | None = None,
        policy: ServerPolicy = accept_all,
    ) -> None:
        self.srv = SMTPServer(scfg or ServerConfig(hostname="mx.example.org"))
        self.cli = SMTPClient(ccfg)
        self.policy = policy
        self.cevents: list[ClientEvent] = []
        self.sevents: list[ev.Event] = []
        self.c2s = bytearray()  # everything the client sent
        self.cli.receive(self.srv.greeting())
        self.run()

    def run(self) -> None:
        for _ in range(1000):
            moved = False
            while (e := self.cli.next_event()) is not None:
                self.cevents.append(e)
                moved = True
                if isinstance(e, StartTLSReady):
                    self.srv.tls_started()
                    self.cli.tls_established()
            out = self.cli.data_to_send()
            if out:
                self.c2s += out
                self.srv.receive(out)
                moved = True
            while (se := self.srv.next_event()) is not None:
                self.sevents.append(se)
                self.policy(self.srv, se)
                moved = True
            back = self.srv.data_to_send()
            if back:
                self.cli.receive(back)
                moved = True
            if not moved:
                return
        raise AssertionError("the pair never settled")

    def message(self) -> bytes:
        return b"".join(e.data for e in self.sevents if isinstance(e, ev.DataChunk))

    def send(self, body: bytes, rcpts: tuple[str, ...] = ("bob@example.org",)) -> None:
        self.cli.start_transaction(
            "alice@example.net", [(r, NO) for r in rcpts], len(body), False, False
        )
        self.run()
        if self.cli.state is ClientState.BODY:
            self.cli.send_body(body)
            self.cli.end_body()
            self.run()


def test_pair_full_pipelined_transaction() -> None:
    p = Pair(scfg=ServerConfig(hostname="mx.example.org", chunking=False))  # DATA
    assert isinstance(p.cevents[-1], Ready) and "PIPELINING" in p.cevents[-1].extensions
    p.send(b"Subject: t\n\nhello\n", ("bob@example.org", "nobody@example.org", "c@example.org"))
    # the whole envelope went in one write
    assert b"MAIL FROM:<alice@example.net> SIZE=18\r\nRCPT TO:<bob@example.org>\r\n" in p.c2s
    assert p.c2s.endswith(b"\r\n.\r\n")
    kinds = [type(e).__name__ for e in p.cevents]
    assert kinds == [
        "Greeting", "Ready", "MailResult", "RcptResult", "RcptResult", "RcptResult",
        "DataReady", "TransactionResult",
    ]
    refused = [e for e in p.cevents if isinstance(e, RcptResult) and e.reply.code != 250]
    assert [(e.rcpt, e.reply.status) for e in refused] == [("nobody@example.org", "5.1.1")]
    res = p.cevents[-1]
    assert isinstance(res, TransactionResult) and res.reply.code == 250 and res.dsn_relayed
    assert p.message() == b"Subject: t\n\nhello\n"
    p.cli.quit()
    p.run()
    assert isinstance(p.cevents[-1], Closed) and p.srv.closed


@pytest.mark.parametrize(
    "body",
    [
        b".\n..\n...\n",
        b"a\r\n.\r\nMAIL FROM:<evil@x>\r\n",
        b"smuggle\n.\r\nRCPT TO:<x@y>\n",
        b"bare\rCR and bare\nLF\r\n",
        b"no newline at the end.",
        b"\n.",
        b"",
    ],
)
@pytest.mark.parametrize("chunking", [False, True])
def test_pair_tricky_bodies_round_trip(body: bytes, chunking: bool) -> None:
    p = Pair(scfg=ServerConfig(hostname="mx.example.org", chunking=chunking))
    p.send(body)
    assert (b"BDAT " in p.c2s) is chunking
    res = p.cevents[-1]
    assert isinstance(res, TransactionResult) and res.reply.code == 250
    assert p.message() == normalise(body).replace(b"\r\n", b"\n")
    # one message only: nothing in the body was taken for a command
    assert sum(isinstance(e, ev.MailFrom) for e in p.sevents) == 1
    assert sum(isinstance(e, ev.DataEnd) for e in p.sevents) == 1


def test_pair_recipients_all_refused_then_next_transaction() -> None:
    p = Pair()
    p.send(b"x\n", ("nobody@example.org",))
    f = p.cevents[-1]
    assert isinstance(f, Failed) and f.stage == "rcpt" and not f.fatal
    assert p.cli.state is ClientState.READY
    p.send(b"second\n")
    assert isinstance(p.cevents[-1], TransactionResult) and p.message() == b"second\n"


def test_pair_without_pipelining_and_size_limit() -> None:
    p = Pair(scfg=ServerConfig(hostname="mx", pipelining=False, max_message_size=100))
    p.send(b"x" * 150 + b"\n")
    f = p.cevents[-1]
    assert isinstance(f, Failed) and f.reply.status == "5.3.4"
    assert not any(isinstance(e, ev.MailFrom) for e in p.sevents)  # refused before MAIL
    p.send(b"small\n")
    assert isinstance(p.cevents[-1], TransactionResult) and p.message() == b"small\n"


def test_pair_starttls_and_dsn() -> None:
    p = Pair(scfg=ServerConfig(hostname="mx", starttls=True))
    kinds = [type(e).__name__ for e in p.cevents]
    assert kinds == ["Greeting", "StartTLSReady", "Ready"]
    assert p.cli.tls and p.srv.tls
    p.cli.start_transaction(
        "alice@example.net",
        [("bob@example.org", RcptDSN(frozenset({"SUCCESS"}), "rfc822;bob@example.org"))],
        5, False, False, "HDRS", "env-1",
    )
    p.run()
    mail = next(e for e in p.sevents if isinstance(e, ev.MailFrom))
    rcpt = next(e for e in p.sevents if isinstance(e, ev.RcptTo))
    assert (mail.params.ret, mail.params.envid) == ("HDRS", "env-1")
    assert rcpt.params.notify == frozenset({"SUCCESS"})
    assert rcpt.params.orcpt == "rfc822;bob@example.org"


def test_pair_8bit_and_smtputf8() -> None:
    p = Pair()
    p.cli.start_transaction(
        "j\u00f6rg@example.net", [("b@example.org", NO)], 5, True, True
    )
    p.run()
    mail = next(e for e in p.sevents if isinstance(e, ev.MailFrom))
    assert mail.params.smtputf8 and mail.params.body == "8BITMIME"
    p.cli.send_body("caf\u00e9\n".encode())
    p.cli.end_body()
    p.run()
    assert p.message() == "caf\u00e9\n".encode()


def test_pair_lmtp() -> None:
    p = Pair(
        ClientConfig("relay.example.net", lmtp=True),
        ServerConfig(hostname="lmtp", lmtp=True),
    )
    p.send(b"hi\n", ("a@example.org", "nobody@example.org", "b@example.org"))
    results = [e for e in p.cevents if isinstance(e, TransactionResult)]
    assert [(r.rcpt, r.reply.code) for r in results] == [
        ("a@example.org", 250),
        ("b@example.org", 250),
    ]
    assert p.cli.state is ClientState.READY


def test_pair_helo_only_server_refuses_ehlo() -> None:
    def no_ehlo(srv: SMTPServer, event: ev.Event) -> None:
        if isinstance(event, ev.Hello) and event.verb == "EHLO":
            srv.reject(502, "5.5.1", "EHLO not implemented")
        else:
            accept_all(srv, event)

    p = Pair(policy=no_ehlo)
    assert p.cevents[-1] == Ready({})
    p.send(b"plain\n")
    assert p.message() == b"plain\n"
    # no SIZE/BODY parameters to a HELO server
    assert b"MAIL FROM:<alice@example.net>\r\n" in p.c2s
