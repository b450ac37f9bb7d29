"""Transcripts of SMTP AUTH (RFC 4954) in the server machine: PLAIN (RFC 4616)
and LOGIN, TLS gating, failure limits, pipelining and chunking."""

from __future__ import annotations

import base64
import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mailrider import limits
from mailrider.smtp import events as ev
from mailrider.smtp.reply import Reply
from mailrider.smtp.server import ServerConfig, SMTPServer, State
from smtp_transcript import CONFIG, HELLO, Driver

# An smtps listener (implicit TLS) with AUTH, and a STARTTLS one.
AUTH_CFG = dataclasses.replace(CONFIG, auth=True, implicit_tls=True)
STARTTLS_CFG = dataclasses.replace(CONFIG, auth=True, starttls=True)
USER, PASSWORD = "alice", "s3cret pass"
MAIL = b"MAIL FROM:<alice@example.net>\r\n"


def cfg(base: ServerConfig = AUTH_CFG, **kw: object) -> ServerConfig:
    return dataclasses.replace(base, **kw)  # type: ignore[arg-type]


def b64(raw: bytes | str) -> bytes:
    return base64.b64encode(raw.encode() if isinstance(raw, str) else raw)


PLAIN_OK = b64(f"\0{USER}\0{PASSWORD}")
PLAIN_BAD = b64(f"\0{USER}\0wrong")


def check_password(srv: SMTPServer, e: ev.Event) -> None:
    """Accept alice/s3cret pass, refuse other credentials, accept the rest."""
    if isinstance(e, ev.Auth):
        if (e.username, e.password) == (USER, PASSWORD):
            srv.accept()
        else:
            srv.reject(535, "5.7.8", "Authentication credentials invalid")
    elif srv.awaiting_answer:
        srv.accept()


def session(config: ServerConfig = AUTH_CFG, policy: object = check_password) -> Driver:
    d = Driver(config, policy)  # type: ignore[arg-type]
    return d.feed(HELLO)


def auths(d: Driver) -> list[ev.Auth]:
    return [e for e in d.events if isinstance(e, ev.Auth)]


# ------------------------------------------------------- advertising, TLS

def test_not_advertised_and_refused_before_tls() -> None:
    d = session(STARTTLS_CFG)
    assert "250 STARTTLS" in d.replies
    assert not any("AUTH" in r for r in d.replies)
    d.feed(b"AUTH PLAIN " + PLAIN_OK + b"\r\nAUTH LOGIN\r\nAUTH FOO\r\n")
    assert d.replies[-3:] == [
        "538 5.7.11 Encryption required for requested authentication mechanism"] * 3
    assert auths(d) == [] and d.srv.auth_user is None
    assert d.srv.state is State.GREETED


def test_advertised_after_starttls() -> None:
    d = session(STARTTLS_CFG).feed(b"STARTTLS\r\n")
    d.srv.tls_started()
    d.feed(HELLO)
    assert d.replies[-2:] == ["250-DSN", "250 AUTH PLAIN LOGIN"]
    assert "250-STARTTLS" not in d.replies[-8:]
    d.feed(b"AUTH PLAIN " + PLAIN_OK + b"\r\n")
    assert d.last() == "235 2.7.0 Authentication successful"
    assert d.srv.auth_user == USER
    assert d.srv.with_protocol == "ESMTPSA"


def test_advertised_with_implicit_tls() -> None:
    d = session()
    assert d.last() == "250 AUTH PLAIN LOGIN"
    d.feed(b"HELP\r\n")
    assert d.last().startswith("214 2.0.0 ") and d.last().endswith(" AUTH")


def test_not_offered_when_disabled() -> None:
    d = session(cfg(auth=False))
    assert not any("AUTH" in r for r in d.replies)
    d.feed(b"AUTH PLAIN " + PLAIN_OK + b"\r\n")
    assert d.last() == "502 5.5.1 Command not implemented"


# ------------------------------------------------------------------ PLAIN

def test_plain_initial_response() -> None:
    d = session().feed(b"AUTH PLAIN " + PLAIN_OK + b"\r\n")
    assert auths(d) == [ev.Auth("PLAIN", USER, PASSWORD)]
    assert d.last() == "235 2.7.0 Authentication successful"
    assert d.srv.auth_user == USER and d.srv.state is State.GREETED


def test_plain_continuation() -> None:
    d = session().feed(b"AUTH PLAIN\r\n")
    assert d.last() == "334 " and d.out.endswith(b"334 \r\n")
    assert d.srv.state.value == "auth" and auths(d) == []
    d.feed(PLAIN_OK + b"\r\n")
    assert auths(d) == [ev.Auth("PLAIN", USER, PASSWORD)]
    assert d.last() == "235 2.7.0 Authentication successful"
    assert d.srv.state is State.GREETED


def test_plain_mechanism_is_case_insensitive() -> None:
    d = session().feed(b"auth plain " + PLAIN_OK + b"\r\n")
    assert auths(d)[0].mechanism == "PLAIN"


def test_plain_authzid_equal_to_authcid() -> None:
    d = session().feed(b"AUTH PLAIN " + b64(f"{USER}\0{USER}\0{PASSWORD}") + b"\r\n")
    assert auths(d) == [ev.Auth("PLAIN", USER, PASSWORD)]
    assert d.last().startswith("235 ")


def test_plain_utf8_credentials() -> None:
    d = session().feed(b"AUTH PLAIN " + b64("\0jörg@bücher.example\0pässwörd ✓") + b"\r\n")
    assert auths(d) == [ev.Auth("PLAIN", "jörg@bücher.example", "pässwörd ✓")]


@pytest.mark.parametrize(
    "message",
    [
        b"",  # "=": empty initial response
        f"{USER}\0{PASSWORD}".encode(),  # one NUL
        f"\0{USER}\0{PASSWORD}\0".encode(),  # three NULs
        f"\0\0{PASSWORD}".encode(),  # empty authcid
        f"\0{USER}\0".encode(),  # empty password
        f"bob\0{USER}\0{PASSWORD}".encode(),  # authzid other than authcid
        f"\0al\x01ice\0{PASSWORD}".encode(),  # control character
        f"\0{USER}\0pass\x7f".encode(),  # DEL
        "\0alice\0pass\u0085".encode(),  # C1 control
        b"\0\xffalice\0pass",  # not UTF-8
        b"\xff\0alice\0pass",  # authzid not UTF-8
    ],
)
def test_plain_malformed_message_fails_without_event(message: bytes) -> None:
    arg = b"=" if not message else b64(message)
    d = session().feed(b"AUTH PLAIN " + arg + b"\r\n")
    assert auths(d) == []
    assert d.last() == "535 5.7.8 Authentication credentials invalid"
    d = session().feed(b"AUTH PLAIN\r\n" + b64(message) + b"\r\n")
    assert auths(d) == []
    assert d.replies[-2:] == ["334 ", "535 5.7.8 Authentication credentials invalid"]
    assert d.srv.state is State.GREETED and d.srv.auth_user is None


def test_wrong_password() -> None:
    d = session().feed(b"AUTH PLAIN " + PLAIN_BAD + b"\r\n")
    assert auths(d) == [ev.Auth("PLAIN", USER, "wrong")]
    assert d.last() == "535 5.7.8 Authentication credentials invalid"
    assert d.srv.auth_user is None and d.srv.with_protocol == "ESMTPS"
    d.feed(b"AUTH PLAIN " + PLAIN_OK + b"\r\n")  # a later attempt may succeed
    assert d.last().startswith("235 ") and d.srv.auth_user == USER


# ------------------------------------------------------------------ LOGIN

def test_login_two_challenges() -> None:
    d = session().feed(b"AUTH LOGIN\r\n")
    assert d.last() == "334 VXNlcm5hbWU6"
    assert base64.b64decode("VXNlcm5hbWU6") == b"Username:"
    d.feed(b64(USER) + b"\r\n")
    assert d.last() == "334 UGFzc3dvcmQ6"
    assert base64.b64decode("UGFzc3dvcmQ6") == b"Password:"
    assert auths(d) == [] and d.srv.state.value == "auth"
    d.feed(b64(PASSWORD) + b"\r\n")
    assert auths(d) == [ev.Auth("LOGIN", USER, PASSWORD)]
    assert d.last() == "235 2.7.0 Authentication successful"
    assert d.srv.auth_user == USER


def test_login_initial_response_is_the_username() -> None:
    d = session().feed(b"AUTH LOGIN " + b64(USER) + b"\r\n")
    assert d.last() == "334 UGFzc3dvcmQ6"
    d.feed(b64(PASSWORD) + b"\r\n")
    assert auths(d) == [ev.Auth("LOGIN", USER, PASSWORD)]
    assert d.last().startswith("235 ")


@pytest.mark.parametrize(
    "script",
    [
        b"AUTH LOGIN =\r\n",  # empty user name
        b"AUTH LOGIN\r\n\r\n",
        b"AUTH LOGIN\r\n" + b64("al\tice") + b"\r\n",
        b"AUTH LOGIN\r\n" + b64(b"\xc3") + b"\r\n",
        b"AUTH LOGIN\r\n" + b64(USER) + b"\r\n\r\n",  # empty password
        b"AUTH LOGIN\r\n" + b64(USER) + b"\r\n" + b64("pw\n") + b"\r\n",
    ],
)
def test_login_bad_credentials_fail_without_event(script: bytes) -> None:
    d = session().feed(script)
    assert auths(d) == []
    assert d.last() == "535 5.7.8 Authentication credentials invalid"
    assert d.srv.state is State.GREETED


# ------------------------------------------------ cancel, decoding, lines

@pytest.mark.parametrize(
    "script",
    [
        b"AUTH PLAIN\r\n*\r\n",
        b"AUTH LOGIN\r\n*\r\n",
        b"AUTH LOGIN\r\n" + b64(USER) + b"\r\n*\r\n",
        b"AUTH LOGIN " + b64(USER) + b"\r\n*\r\n",
    ],
)
def test_cancel(script: bytes) -> None:
    d = session().feed(script)
    assert d.last() == "501 5.0.0 Authentication cancelled"
    assert auths(d) == [] and d.srv.state is State.GREETED
    d.feed(b"AUTH PLAIN " + PLAIN_OK + b"\r\n")  # not a failed attempt; AUTH again
    assert d.last().startswith("235 ")


@pytest.mark.parametrize(
    "response",
    [
        b"!!!!",
        b"AGFsaWNl AHMzY3JldA==",  # embedded space
        b"AGFsaWNlAHMzY3JldA",  # padding missing
        b"AGFsaWNlAHMzY3JldA===",  # too much padding
        b"AGFsaWNlAHMzY3JldB==",  # non-zero pad bits (not canonical)
        b"AGFs=aWNl",  # padding inside
        "AGFsaWNl\u00e9".encode(),  # outside the alphabet
        b"=",  # "=" is only for an initial response
    ],
)
def test_bad_base64(response: bytes) -> None:
    d = session().feed(b"AUTH PLAIN\r\n" + response + b"\r\n")
    assert d.replies[-2:] == ["334 ", "501 5.5.2 Cannot decode response"]
    assert auths(d) == [] and d.srv.state is State.GREETED
    if response != b"=":
        d.feed(b"AUTH PLAIN " + response + b"\r\n")
        assert d.last() in ("501 5.5.2 Cannot decode response",
                            "501 5.5.4 Syntax: AUTH mechanism [initial-response]")
        assert auths(d) == []


def test_exchange_lines_are_not_commands() -> None:
    d = session().feed(b"AUTH LOGIN\r\nMAIL FROM:<a@b.example>\r\nQUIT\r\n")
    assert d.replies[-3:] == ["334 VXNlcm5hbWU6", "501 5.5.2 Cannot decode response",
                              "221 2.0.0 Bye"]
    assert [type(e) for e in d.events] == [ev.Hello, ev.Quit, ev.ConnectionClosed]
    d = session().feed(b"AUTH PLAIN\r\nQUIT\r\n")  # "QUIT" is valid base64
    assert d.last() == "535 5.7.8 Authentication credentials invalid"
    assert not d.srv.closed and ev.Quit() not in d.events


def test_bare_lf_in_exchange() -> None:
    d = session().feed(b"AUTH PLAIN\r\n" + PLAIN_OK + b"\n")
    assert d.last() == "500 5.5.2 Bare LF or CR in command"
    assert auths(d) == [] and d.srv.state is State.GREETED


def test_exchange_line_limit() -> None:
    limit = limits.AUTH_LINE_MAX
    assert limit - 2 == 12288  # RFC 4954 4
    assert limit > limits.COMMAND_LINE_MAX
    # The longest response that fits: a 9213-octet password is 12288 base64 octets.
    password = "p" * (9216 - len(USER) - 2)
    fits = b64(f"\0{USER}\0{password}")
    assert len(fits) + 2 == limit
    d = session(policy=lambda srv, e: srv.accept() if srv.awaiting_answer else None)
    d.feed(b"AUTH PLAIN\r\n" + fits + b"\r\n")
    assert auths(d) == [ev.Auth("PLAIN", USER, password)]
    assert d.last().startswith("235 ")
    # One octet more: 500 5.5.6; the rest of the line is skipped, never stored.
    d = session().feed(b"AUTH PLAIN\r\n")
    for _ in range(20):
        d.feed(b"A" * 1000)
        assert len(d.srv._buf) <= limit
    d.feed(b"AAAA\r\nNOOP\r\n")
    assert d.replies[-3:] == ["334 ", "500 5.5.6 Authentication Exchange line is too long",
                              "250 2.0.0 Ok"]
    assert auths(d) == [] and d.srv.state is State.GREETED


def test_configured_line_limit() -> None:
    d = session(cfg(auth_line_max=64)).feed(b"AUTH PLAIN\r\n" + b"A" * 64 + b"\r\nNOOP\r\n")
    assert d.replies[-2:] == ["500 5.5.6 Authentication Exchange line is too long",
                              "250 2.0.0 Ok"]


def test_eof_in_exchange() -> None:
    d = session().feed(b"AUTH LOGIN\r\n" + b64(USER)[:3])
    d.feed(b"")
    assert d.kinds()[-1] == "ConnectionClosed" and d.srv.closed
    assert auths(d) == []


# ------------------------------------------------------- sequence, syntax

@pytest.mark.parametrize(
    ("script", "reply"),
    [
        (b"AUTH PLAIN\r\n", "503 5.5.1 Send EHLO first"),
        (b"HELO client.example.net\r\nAUTH PLAIN\r\n", "503 5.5.1 Send EHLO first"),
        (HELLO + MAIL + b"AUTH PLAIN " + PLAIN_OK + b"\r\n",
         "503 5.5.1 AUTH not allowed in a transaction"),
        (HELLO + MAIL + b"RCPT TO:<bob@example.org>\r\nAUTH PLAIN\r\n",
         "503 5.5.1 AUTH not allowed in a transaction"),
        (HELLO + b"AUTH\r\n", "501 5.5.4 Syntax: AUTH mechanism [initial-response]"),
        (HELLO + b"AUTH PLAIN \r\n", "501 5.5.4 Syntax: AUTH mechanism [initial-response]"),
        (HELLO + b"AUTH PLAIN a b\r\n", "501 5.5.4 Syntax: AUTH mechanism [initial-response]"),
        (HELLO + b"AUTH CRAM-MD5\r\n", "504 5.5.4 Unrecognized authentication type"),
        (HELLO + b"AUTH PLAINX " + PLAIN_OK + b"\r\n",
         "504 5.5.4 Unrecognized authentication type"),
        (HELLO + b"AUTH PLAIN " + PLAIN_OK + b"\r\nAUTH PLAIN " + PLAIN_OK + b"\r\n",
         "503 5.5.1 Already authenticated"),
        (HELLO + b"AUTH PLAIN " + PLAIN_OK + b"\r\nAUTH LOGIN\r\n",
         "503 5.5.1 Already authenticated"),
    ],
)
def test_sequence_and_syntax(script: bytes, reply: str) -> None:
    d = Driver(AUTH_CFG, check_password).feed(script)
    assert d.last() == reply
    assert len(auths(d)) == (1 if "Already" in reply else 0)
    assert not d.srv.closed


def test_lmtp_auth() -> None:
    d = Driver(cfg(lmtp=True), check_password)
    d.feed(b"LHLO client\r\nAUTH PLAIN " + PLAIN_OK + b"\r\n")
    assert d.last().startswith("235 ")
    assert d.srv.with_protocol == "LMTPSA"


# ----------------------------------------------------------- app answers

def test_custom_success_text() -> None:
    def policy(srv: SMTPServer, e: ev.Event) -> None:
        if isinstance(e, ev.Auth):
            srv.accept("2.7.0 Welcome, alice")
        elif srv.awaiting_answer:
            srv.accept()

    d = session(policy=policy).feed(b"AUTH PLAIN " + PLAIN_OK + b"\r\n")
    assert d.last() == "235 2.7.0 Welcome, alice"


def test_failure_limit_closes_with_421() -> None:
    d = session().feed(b"AUTH PLAIN " + PLAIN_BAD + b"\r\n"
                       + b"AUTH LOGIN\r\n" + b64(USER) + b"\r\n" + b64("nope") + b"\r\n"
                       + b"AUTH PLAIN " + PLAIN_BAD + b"\r\nNOOP\r\n")
    assert d.replies[-5:] == [
        "535 5.7.8 Authentication credentials invalid",
        "334 VXNlcm5hbWU6",
        "334 UGFzc3dvcmQ6",
        "535 5.7.8 Authentication credentials invalid",
        "421 4.7.0 mx.example.org Too many authentication failures",
    ]
    assert d.kinds()[-1] == "ConnectionClosed" and d.srv.closed
    assert len(auths(d)) == 3


def test_machine_side_failures_count_too() -> None:
    d = session(cfg(auth_max_failures=2)).feed(
        b"AUTH PLAIN =\r\nAUTH PLAIN " + b64(f"bob\0{USER}\0{PASSWORD}") + b"\r\n")
    assert d.replies[-2:] == ["535 5.7.8 Authentication credentials invalid",
                              "421 4.7.0 mx.example.org Too many authentication failures"]
    assert auths(d) == [] and d.srv.closed


def test_cancel_and_decode_errors_are_not_failures() -> None:
    d = session(cfg(auth_max_failures=1)).feed(
        b"AUTH PLAIN\r\n*\r\nAUTH PLAIN !\r\nAUTH LOGIN\r\n*\r\nNOOP\r\n")
    assert d.last() == "250 2.0.0 Ok" and not d.srv.closed


def test_no_failure_limit() -> None:
    d = session(cfg(auth_max_failures=0)).feed((b"AUTH PLAIN " + PLAIN_BAD + b"\r\n") * 10)
    assert d.codes[-10:] == [535] * 10 and not d.srv.closed


def test_temporary_failure_does_not_count() -> None:
    calls: list[ev.Auth] = []

    def policy(srv: SMTPServer, e: ev.Event) -> None:
        if isinstance(e, ev.Auth):
            calls.append(e)
            if len(calls) <= 4:
                srv.reject(454, "4.7.0", "Temporary authentication failure")
            else:
                check_password(srv, e)
        elif srv.awaiting_answer:
            srv.accept()

    d = session(policy=policy).feed((b"AUTH PLAIN " + PLAIN_BAD + b"\r\n") * 6)
    assert d.codes[-6:] == [454, 454, 454, 454, 535, 535]
    assert not d.srv.closed
    d.feed(b"AUTH PLAIN " + PLAIN_OK + b"\r\n")
    assert d.last().startswith("235 ")


def test_app_421_closes() -> None:
    def policy(srv: SMTPServer, e: ev.Event) -> None:
        if isinstance(e, ev.Auth):
            srv.reply(Reply(421, "4.3.2", "mx.example.org Shutting down"))
        elif srv.awaiting_answer:
            srv.accept()

    d = session(policy=policy).feed(b"AUTH PLAIN " + PLAIN_OK + b"\r\nNOOP\r\n")
    assert d.last() == "421 4.3.2 mx.example.org Shutting down"
    assert d.kinds()[-1] == "ConnectionClosed" and d.srv.auth_user is None


# ------------------------------------------------------------ MAIL gating

def test_auth_required() -> None:
    d = session(cfg(auth_required=True)).feed(MAIL)
    assert d.last() == "530 5.7.0 Authentication required"
    assert d.srv.state is State.GREETED
    d.feed(b"AUTH PLAIN " + PLAIN_BAD + b"\r\n" + MAIL)
    assert d.last() == "530 5.7.0 Authentication required"
    d.feed(b"AUTH PLAIN " + PLAIN_OK + b"\r\n" + MAIL)
    assert d.replies[-2:] == ["235 2.7.0 Authentication successful", "250 2.1.0 Ok"]
    assert [type(e) for e in d.events][-2:] == [ev.Auth, ev.MailFrom]


def test_auth_required_without_tls() -> None:
    d = session(cfg(STARTTLS_CFG, auth_required=True)).feed(MAIL)
    assert d.last() == "530 5.7.0 Authentication required"


def test_tls_required() -> None:
    config = cfg(STARTTLS_CFG, auth=False, tls_required=True)
    d = session(config).feed(MAIL)
    assert d.last() == "530 5.7.0 Must issue a STARTTLS command first"
    d.feed(b"STARTTLS\r\n")
    assert d.last() == "220 2.0.0 Ready to start TLS"
    d.srv.tls_started()
    d.feed(HELLO + MAIL)
    assert d.last() == "250 2.1.0 Ok"
    assert d.srv.with_protocol == "ESMTPS"


def test_tls_and_auth_required() -> None:
    config = cfg(STARTTLS_CFG, tls_required=True, auth_required=True)
    d = session(config).feed(MAIL)
    assert d.last() == "530 5.7.0 Must issue a STARTTLS command first"
    d.feed(b"STARTTLS\r\n")
    d.srv.tls_started()
    d.feed(HELLO + MAIL)
    assert d.last() == "530 5.7.0 Authentication required"
    d.feed(b"AUTH LOGIN " + b64(USER) + b"\r\n" + b64(PASSWORD) + b"\r\n" + MAIL)
    assert d.replies[-3:] == ["334 UGFzc3dvcmQ6", "235 2.7.0 Authentication successful",
                              "250 2.1.0 Ok"]


def test_tls_required_with_implicit_tls() -> None:
    d = session(cfg(tls_required=True)).feed(MAIL)
    assert d.last() == "250 2.1.0 Ok"


# ------------------------------------------------------ session behaviour

def test_rset_and_ehlo_keep_authentication() -> None:
    d = session().feed(b"AUTH PLAIN " + PLAIN_OK + b"\r\n" + MAIL + b"RSET\r\n")
    assert d.last() == "250 2.0.0 Reset state" and d.srv.auth_user == USER
    d.feed(HELLO)
    assert d.srv.auth_user == USER
    assert d.srv.with_protocol == "ESMTPSA"
    d.feed(b"AUTH PLAIN " + PLAIN_OK + b"\r\n")
    assert d.last() == "503 5.5.1 Already authenticated"


def test_protocol_names() -> None:
    d = session()
    assert d.srv.with_protocol == "ESMTPS"
    d.feed(b"AUTH PLAIN " + PLAIN_OK + b"\r\n")
    assert d.srv.with_protocol == "ESMTPSA"
    d.feed(b"MAIL FROM:<a@b.example> SMTPUTF8\r\n")
    assert d.srv.with_protocol == "UTF8SMTPSA"


def test_pipelined_mail_waits_for_auth_answer() -> None:
    srv = SMTPServer(cfg(auth_required=True))
    srv.receive(HELLO)
    srv.next_event()
    srv.accept()
    srv.data_to_send()
    srv.receive(b"AUTH PLAIN " + PLAIN_OK + b"\r\n" + MAIL + b"RCPT TO:<bob@example.org>\r\n")
    assert srv.next_event() == ev.Auth("PLAIN", USER, PASSWORD)
    assert srv.awaiting_answer
    assert srv.next_event() is None  # MAIL is not parsed before the answer
    assert srv.data_to_send() == b""
    srv.accept()
    assert srv.data_to_send() == b"235 2.7.0 Authentication successful\r\n"
    assert isinstance(srv.next_event(), ev.MailFrom)
    srv.accept()
    assert isinstance(srv.next_event(), ev.RcptTo)
    srv.accept()
    assert srv.data_to_send() == b"250 2.1.0 Ok\r\n250 2.1.5 Destination address valid\r\n"


def test_pipelined_mail_after_refused_auth() -> None:
    d = session(cfg(auth_required=True)).feed(b"AUTH PLAIN " + PLAIN_BAD + b"\r\n" + MAIL)
    assert d.replies[-2:] == ["535 5.7.8 Authentication credentials invalid",
                              "530 5.7.0 Authentication required"]
    assert not any(isinstance(e, ev.MailFrom) for e in d.events)


def test_pipelined_continuation() -> None:
    d = session(cfg(auth_required=True)).feed(
        b"AUTH LOGIN\r\n" + b64(USER) + b"\r\n" + b64(PASSWORD) + b"\r\n" + MAIL)
    assert d.replies[-4:] == ["334 VXNlcm5hbWU6", "334 UGFzc3dvcmQ6",
                              "235 2.7.0 Authentication successful", "250 2.1.0 Ok"]


def test_secrets_stay_out_of_replies_and_reprs() -> None:
    secret = "Hunter2-ZZQ"
    script = (b"AUTH PLAIN " + b64(f"\0{USER}\0{secret}") + b"\r\n"
              + b"AUTH LOGIN\r\n" + b64(USER) + b"\r\n" + b64(secret) + b"\r\n"
              + b"AUTH PLAIN\r\n" + b64(f"\0{USER}\0{secret}\x01") + b"\r\n")
    d = session(cfg(auth_max_failures=10)).feed(script)
    assert len(auths(d)) == 2
    out = bytes(d.out)
    for leak in (secret.encode(), b64(secret), b64(f"\0{USER}\0{secret}")):
        assert leak not in out
    for e in d.events:
        assert secret not in repr(e) and secret not in str(e)
    assert "password" not in repr(auths(d)[0])
    assert repr(auths(d)[0]) == "Auth(mechanism='PLAIN', username='alice')"


# -------------------------------------------------------------- property

SCRIPT = (
    HELLO
    + b"AUTH LOGIN\r\n*\r\n"
    + b"AUTH PLAIN !!\r\n"
    + b"AUTH PLAIN\r\n" + PLAIN_BAD + b"\r\n"
    + b"AUTH PLAIN\r\n" + b"A" * 200 + b"\r\n"
    + b"AUTH LOGIN " + b64(USER) + b"\r\n" + b64(PASSWORD) + b"\r\n"
    + MAIL
    + b"RCPT TO:<bob@example.org>\r\nDATA\r\nhello\r\n.\r\nQUIT\r\n"
)
SMALL_LINES = cfg(auth_line_max=128, auth_required=True)


@given(st.lists(st.integers(min_value=0, max_value=len(SCRIPT)), max_size=30))
@settings(max_examples=300, deadline=None)
def test_any_chunking_gives_the_same_session(cuts: list[int]) -> None:
    whole = Driver(SMALL_LINES, check_password).feed(SCRIPT)
    points = sorted(set(cuts))
    chunks = [SCRIPT[a:b] for a, b in zip([0, *points], [*points, len(SCRIPT)], strict=True)]
    split = Driver(SMALL_LINES, check_password).feed_all(c for c in chunks if c)
    assert bytes(split.out) == bytes(whole.out)
    assert split.kinds() == whole.kinds()
    assert auths(split) == auths(whole)
    assert whole.replies[-1] == "221 2.0.0 Bye"
    assert "500 5.5.6 Authentication Exchange line is too long" in whole.replies
    assert auths(whole)[-1] == ev.Auth("LOGIN", USER, PASSWORD)
