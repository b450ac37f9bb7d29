"""Transcripts of the SMTP server machine: every command and error path."""

from __future__ import annotations

import dataclasses

import pytest
from mailrider import limits
from mailrider.smtp import events as ev
from mailrider.smtp.address import Address
from mailrider.smtp.reply import Reply
from mailrider.smtp.server import LocalProtocolError, ServerConfig, SMTPServer, State
from smtp_transcript import CONFIG, ENVELOPE, HELLO, Driver, run, with_data


def cfg(**kw: object) -> ServerConfig:
    return dataclasses.replace(CONFIG, **kw)  # type: ignore[arg-type]


def test_greeting() -> None:
    srv = SMTPServer(CONFIG)
    assert srv.greeting() == b"220 mx.example.org ESMTP mailrider\r\n"
    assert srv.state is State.INIT
    assert srv.next_event() is None
    assert srv.data_to_send() == b""


def test_rename_before_the_banner() -> None:
    srv = SMTPServer(CONFIG)
    srv.rename("mx2.example.org")
    assert srv.greeting() == b"220 mx2.example.org ESMTP mailrider\r\n"
    srv.rename("[192.0.2.1]")
    assert srv.greeting().startswith(b"220 [192.0.2.1] ")


@pytest.mark.parametrize("bad", ["", "a b", "mx\r\n250 x", "-mx", "x" * 256, "mx.", "[a b]"])
def test_rename_refuses_what_is_not_a_host_name(bad: str) -> None:
    srv = SMTPServer(CONFIG)
    with pytest.raises(ValueError):
        srv.rename(bad)
    assert srv.greeting() == b"220 mx.example.org ESMTP mailrider\r\n"


def test_ehlo_lists_extensions() -> None:
    d = run(HELLO)
    assert d.events == [ev.Hello("EHLO", "client.example.net")]
    assert d.replies == [
        "250-mx.example.org Hello client.example.net",
        "250-PIPELINING",
        f"250-SIZE {35 * 2**20}",
        "250-8BITMIME",
        "250-ENHANCEDSTATUSCODES",
        "250-SMTPUTF8",
        "250-CHUNKING",
        "250 DSN",
    ]
    assert d.srv.state is State.GREETED
    assert d.srv.helo == "client.example.net"


def test_ehlo_respects_disabled_extensions() -> None:
    d = run(HELLO, cfg(pipelining=False, dsn=False, smtputf8=False, eightbitmime=False,
                       max_message_size=0, starttls=True, chunking=False))
    assert d.replies[1:] == ["250-SIZE", "250-ENHANCEDSTATUSCODES", "250 STARTTLS"]


def test_helo_single_line() -> None:
    d = run(b"helo client.example.net\r\n")
    assert d.events == [ev.Hello("HELO", "client.example.net")]
    assert d.replies == ["250 mx.example.org Hello client.example.net"]
    assert d.srv.with_protocol == "SMTP"


def test_hello_custom_text_and_reject() -> None:
    def policy(srv: SMTPServer, e: ev.Event) -> None:
        if isinstance(e, ev.Hello):
            if e.name == "bad.example":
                srv.reject(550, "5.7.1", "Go away")
            else:
                srv.accept("mx.example.org greets you")

    d = Driver(policy=policy).feed(b"EHLO bad.example\r\nMAIL FROM:<a@b.example>\r\nHELO ok\r\n")
    assert d.replies == ["550 5.7.1 Go away", "503 5.5.1 Send HELO/EHLO first",
                         "250 mx.example.org greets you"]
    assert d.srv.state is State.GREETED


@pytest.mark.parametrize("line", [b"EHLO\r\n", b"EHLO \r\n", b"EHLO a b\r\n", b"HELO a\tb\r\n",
                                  b"EHLO " + b"a" * 256 + b"\r\n"])
def test_hello_syntax(line: bytes) -> None:
    d = run(line)
    assert d.events == []
    assert d.last().startswith("501 5.5.4 Syntax: ")
    assert d.srv.state is State.INIT


def test_full_transaction() -> None:
    d = run(with_data(b"Subject: hi\r\n\r\nHello\r\n.\r\n"))
    assert d.kinds() == ["Hello", "MailFrom", "RcptTo", "DataStart", "DataChunk", "DataEnd",
                         "Quit", "ConnectionClosed"]
    assert d.replies[-5:] == [
        "250 2.1.0 Ok",
        "250 2.1.5 Destination address valid",
        '354 Enter mail, end with "." on a line by itself',
        "250 2.0.0 1f2e3d4c Message accepted for delivery",
        "221 2.0.0 Bye",
    ]
    assert d.message() == b"Subject: hi\n\nHello\n"
    end = next(e for e in d.events if isinstance(e, ev.DataEnd))
    assert end == ev.DataEnd(size=19, received_count=0, error=None)
    mail = next(e for e in d.events if isinstance(e, ev.MailFrom))
    assert mail.sender == Address("alice", "example.net")
    assert d.srv.closed


def test_null_sender_and_params() -> None:
    d = run(HELLO + b"MAIL FROM:<> SIZE=1000 BODY=8BITMIME RET=HDRS ENVID=a+2Bb\r\n"
            b"RCPT TO:<Bob@Example.ORG> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;bob+40x.example\r\n")
    mail = d.events[1]
    assert isinstance(mail, ev.MailFrom)
    assert mail.sender is None
    assert (mail.params.size, mail.params.body, mail.params.ret, mail.params.envid) == (
        1000, "8BITMIME", "HDRS", "a+b")
    rcpt = d.events[2]
    assert isinstance(rcpt, ev.RcptTo)
    assert rcpt.rcpt == Address("Bob", "Example.ORG")
    assert rcpt.params.notify == {"SUCCESS", "FAILURE"}
    assert rcpt.params.orcpt == "rfc822;bob@x.example"


def test_mail_lenient_space_after_colon() -> None:
    d = run(HELLO + b"mail from: <a@b.example>\r\n")
    assert isinstance(d.events[-1], ev.MailFrom)


def test_smtputf8_transaction() -> None:
    addr = "Dörte@bücher.example".encode()
    d = run(HELLO + b"MAIL FROM:<" + addr + b"> SMTPUTF8\r\nRCPT TO:<" + addr + b">\r\n")
    assert d.codes[-2:] == [250, 250]
    assert d.srv.with_protocol == "UTF8SMTP"
    d = run(HELLO + b"MAIL FROM:<" + addr + b">\r\n")
    assert d.last() == "553 5.6.7 Non-ASCII address requires SMTPUTF8"
    d = run(HELLO + b"MAIL FROM:<a@b.example>\r\nRCPT TO:<" + addr + b">\r\n")
    assert d.last() == "553 5.6.7 Non-ASCII address requires SMTPUTF8"


def test_size_too_big_refused_without_event() -> None:
    d = run(HELLO + b"MAIL FROM:<a@b.example> SIZE=36700161\r\n", cfg(max_message_size=36700160))
    assert d.last() == "552 5.3.4 Message too big"
    assert [type(e) for e in d.events] == [ev.Hello]
    assert d.srv.state is State.GREETED


@pytest.mark.parametrize(
    ("script", "reply"),
    [
        (b"MAIL FROM:<a@b.example>\r\n", "503 5.5.1 Send HELO/EHLO first"),
        (HELLO + b"RCPT TO:<a@b.example>\r\n", "503 5.5.1 Need MAIL command"),
        (HELLO + b"DATA\r\n", "503 5.5.1 Need MAIL command"),
        (HELLO + b"MAIL FROM:<a@b.example>\r\nDATA\r\n", "503 5.5.1 Need RCPT command"),
        (HELLO + b"MAIL FROM:<a@b.example>\r\nMAIL FROM:<a@b.example>\r\n",
         "503 5.5.1 Nested MAIL command"),
        (ENVELOPE + b"MAIL FROM:<a@b.example>\r\n", "503 5.5.1 Nested MAIL command"),
        (b"FOO\r\n", "500 5.5.1 Command unrecognized"),
        (b"\r\n", "500 5.5.1 Command unrecognized"),
        (b"LHLO x\r\n", "500 5.5.1 Command unrecognized"),
        (b"BDAT 10 LAST\r\n", "503 5.5.1 Send EHLO first"),
        (b"AUTH PLAIN\r\n", "502 5.5.1 Command not implemented"),
        (b"STARTTLS\r\n", "502 5.5.1 Command not implemented"),
        (HELLO + b"MAIL TO:<a@b.example>\r\n", "501 5.5.4 Syntax: MAIL FROM:<address>"),
        (HELLO + b"MAIL FROM:a@b.example\r\n", "501 5.1.7 Address must be enclosed in <>"),
        (HELLO + b"MAIL FROM:<a@b.example>SIZE=1\r\n", "501 5.5.4 Syntax error after address"),
        (HELLO + b"MAIL FROM:<a@b.example> FOO=1\r\n", "555 5.5.4 Unsupported parameter FOO"),
        (HELLO + b"MAIL FROM:<a@b.example> SIZE=x\r\n", "501 5.5.4 Bad SIZE parameter"),
        (HELLO + b"MAIL FROM:<a@b.example.> \r\n", "501 5.1.8 Trailing dot in domain name"),
        (HELLO + b"MAIL FROM:<a@b.example>\r\nRCPT FROM:<a@b.example>\r\n",
         "501 5.5.4 Syntax: RCPT TO:<address>"),
        (HELLO + b"MAIL FROM:<a@b.example>\r\nRCPT TO:<>\r\n",
         "501 5.1.3 Null recipient not allowed"),
        (HELLO + b"MAIL FROM:<a@b.example>\r\nRCPT TO:<a@b.example> NOTIFY=NEVER,DELAY\r\n",
         "501 5.5.4 Bad NOTIFY parameter"),
        (ENVELOPE + b"DATA now\r\n", "501 5.5.4 Syntax: DATA"),
        (b"RSET x\r\n", "501 5.5.4 Syntax: RSET"),
        (b"QUIT now\r\n", "501 5.5.4 Syntax: QUIT"),
        (b"NOOP\n", "500 5.5.2 Bare LF or CR in command"),
        (b"NOOP\rRSET\r\n", "500 5.5.2 Bare LF or CR in command"),
        (b"NO\x00OP\r\n", "500 5.5.2 NUL byte in command"),
        (b"NOOP \xff\r\n", "500 5.5.2 Invalid UTF-8 in command"),
    ],
)
def test_error_paths(script: bytes, reply: str) -> None:
    d = run(script)
    assert d.last() == reply
    assert not d.srv.closed


def test_sequence_errors_leave_no_event() -> None:
    d = run(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<a@b.example>\r\nDATA\r\n")
    assert d.events == []
    assert d.codes == [503, 503, 503]


def test_data_after_rejected_recipients() -> None:
    def policy(srv: SMTPServer, e: ev.Event) -> None:
        if isinstance(e, ev.RcptTo):
            srv.reject(550, "5.1.1", "No such user")
        elif srv.awaiting_answer:
            srv.accept()

    # RFC 2920 3.1: the message was sent without waiting for 354; its lines
    # are never read as commands (torture: pipelining after a refused DATA)
    d = Driver(policy=policy).feed(ENVELOPE + b"DATA\r\nSubject: x\r\n.\r\n")
    assert d.replies[-3:] == [
        "550 5.1.1 No such user",
        "554 5.5.1 No valid recipients",
        "421 4.7.0 mx.example.org Protocol violation",
    ]
    assert not any(isinstance(e, ev.DataStart) for e in d.events)
    assert d.srv.closed


def test_data_start_rejected_stays_in_transaction() -> None:
    calls: list[ev.Event] = []

    def policy(srv: SMTPServer, e: ev.Event) -> None:
        if isinstance(e, ev.DataStart) and not calls:
            calls.append(e)
            srv.reject(451, "4.3.0", "Queue unavailable")
        else:
            srv.accept()

    d = Driver(policy=policy).feed(ENVELOPE + b"DATA\r\n")
    assert d.last() == "451 4.3.0 Queue unavailable"
    assert d.srv.state is State.RCPT
    d.feed(b"DATA\r\n")
    assert d.last().startswith("354 ")
    assert d.srv.state.value == "data"


def test_noop_help_vrfy_expn() -> None:
    d = run(b"NOOP\r\nnoop hello\r\nHELP\r\nVRFY bob\r\nEXPN staff\r\n")
    assert d.events == []
    assert d.replies[:2] == ["250 2.0.0 Ok", "250 2.0.0 Ok"]
    assert d.replies[2].startswith("214 2.0.0 ")
    assert d.replies[3:] == ["502 5.5.1 VRFY disabled", "502 5.5.1 EXPN disabled"]
    d = run(b"VRFY bob\r\nVRFY\r\n", cfg(vrfy=True))
    assert d.replies[0].startswith("252 2.5.2 Cannot VRFY user")
    assert d.replies[1] == "501 5.5.4 Syntax: VRFY address"


def test_rset_emits_reset_only_in_transaction() -> None:
    d = run(HELLO + b"RSET\r\nMAIL FROM:<a@b.example>\r\nRSET\r\nRCPT TO:<c@d.example>\r\n")
    assert d.kinds() == ["Hello", "MailFrom", "Reset"]
    assert d.replies[-4:] == ["250 2.0.0 Reset state", "250 2.1.0 Ok",
                              "250 2.0.0 Reset state", "503 5.5.1 Need MAIL command"]
    assert d.srv.state is State.GREETED


def test_ehlo_in_transaction_resets_first() -> None:
    d = run(ENVELOPE + HELLO)
    assert d.kinds() == ["Hello", "MailFrom", "RcptTo", "Reset", "Hello"]
    assert d.srv.state is State.GREETED
    d.feed(b"RCPT TO:<x@y.example>\r\n")
    assert d.last() == "503 5.5.1 Need MAIL command"


def test_quit_closes_with_connection_closed_last() -> None:
    d = run(b"QUIT\r\nNOOP\r\n")
    assert d.kinds() == ["Quit", "ConnectionClosed"]
    assert d.replies == ["221 2.0.0 Bye"]
    assert d.srv.closed
    d.feed(b"NOOP\r\n")
    assert d.replies == ["221 2.0.0 Bye"]


def test_eof() -> None:
    d = run(HELLO + b"MAIL FROM:<a@b.example>\r\nRCPT TO:<partial")
    d.feed(b"")
    assert d.kinds()[-1] == "ConnectionClosed"
    assert d.kinds().count("ConnectionClosed") == 1
    assert d.srv.closed


def test_eof_in_data() -> None:
    d = run(ENVELOPE + b"DATA\r\nSubject: x\r\n")
    d.feed(b"")
    assert d.kinds() == ["Hello", "MailFrom", "RcptTo", "DataStart", "DataChunk",
                         "ConnectionClosed"]


def test_eof_waits_for_pending_answer() -> None:
    srv = SMTPServer(CONFIG)
    srv.receive(HELLO + b"NOOP\r\n")
    srv.receive(b"")
    assert srv.next_event() == ev.Hello("EHLO", "client.example.net")
    assert srv.next_event() is None
    srv.accept()
    assert srv.next_event() == ev.ConnectionClosed()
    assert srv.data_to_send().endswith(b"250 DSN\r\n250 2.0.0 Ok\r\n")
    assert srv.next_event() is None


def test_too_many_errors_closes() -> None:
    d = run(b"FOO\r\n" * 25, cfg(max_errors=3))
    assert d.replies == ["500 5.5.1 Command unrecognized"] * 2 + [
        "421 4.7.0 mx.example.org Too many errors"]
    assert d.kinds() == ["ConnectionClosed"]
    assert d.srv.closed


def test_too_many_commands_closes() -> None:
    d = run(b"NOOP\r\n" * 10, cfg(max_commands=5))
    assert d.replies == ["250 2.0.0 Ok"] * 5 + ["421 4.7.0 mx.example.org Too many commands"]
    assert d.srv.closed


def test_too_many_recipients() -> None:
    d = run(HELLO + b"MAIL FROM:<a@b.example>\r\n" + b"RCPT TO:<c@d.example>\r\n" * 3,
            cfg(max_rcpt=2))
    assert d.replies[-3:] == ["250 2.1.5 Destination address valid"] * 2 + [
        "452 4.5.3 Too many recipients"]
    assert d.kinds().count("RcptTo") == 2


def test_too_many_messages() -> None:
    one = b"MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\nx\r\n.\r\n"
    d = run(HELLO + one * 2 + b"MAIL FROM:<a@b.example>\r\n", cfg(max_mails=2))
    assert d.last() == "452 4.7.0 Too many messages in this session"
    assert d.kinds().count("MailFrom") == 2


def test_command_line_limits() -> None:
    limit = limits.COMMAND_LINE_MAX
    ok = b"NOOP " + b"x" * (limit - 7) + b"\r\n"
    assert len(ok) == limit
    d = run(ok)
    assert d.replies == ["250 2.0.0 Ok"]
    d = run(b"NOOP " + b"x" * (limit - 6) + b"\r\nNOOP\r\n")
    assert d.replies == ["500 5.5.2 Line too long", "250 2.0.0 Ok"]


def test_long_line_is_never_buffered() -> None:
    d = Driver()
    d.feed(b"NOOP ")
    for _ in range(100):
        d.feed(b"y" * 1000)
        assert len(d.srv._buf) <= limits.COMMAND_LINE_MAX
    d.feed(b"yyy\r")
    d.feed(b"\nNOOP\r\n")
    assert d.replies == ["500 5.5.2 Line too long", "250 2.0.0 Ok"]


def test_partial_line_scan_resumes() -> None:
    d = Driver()
    for byte in b"EHLO client.example.net\r\n":
        d.feed(bytes([byte]))
    assert d.events == [ev.Hello("EHLO", "client.example.net")]


def test_pipelining_replies_in_order_and_waits_for_answers() -> None:
    srv = SMTPServer(CONFIG)
    srv.receive(ENVELOPE + b"RCPT TO:<c@d.example>\r\nDATA\r\nMAIL FROM:<no@x.example>\r\n")
    seen = []
    while (e := srv.next_event()) is not None:
        seen.append(e)
        assert srv.next_event() is None  # nothing parsed before the answer
        srv.accept()
        if isinstance(e, ev.DataStart):
            break
    assert [type(e) for e in seen] == [ev.Hello, ev.MailFrom, ev.RcptTo, ev.RcptTo,
                                       ev.DataStart]
    assert srv.state is State.DATA
    # the MAIL pipelined after DATA is message content, not a command
    assert srv.next_event() == ev.DataChunk(b"MAIL FROM:<no@x.example>")


def test_bytes_after_end_of_data_are_the_next_command() -> None:
    d = run(ENVELOPE + b"DATA\r\na\r\n.\r\nMAIL FROM:<c@d.example>\r\nRCPT TO:<e@f.example>\r\n")
    assert d.kinds() == ["Hello", "MailFrom", "RcptTo", "DataStart", "DataChunk", "DataEnd",
                         "MailFrom", "RcptTo"]
    assert d.message() == b"a\n"


def test_answer_misuse() -> None:
    srv = SMTPServer(CONFIG)
    with pytest.raises(LocalProtocolError):
        srv.accept()
    srv.receive(HELLO)
    srv.next_event()
    with pytest.raises(LocalProtocolError):
        srv.reply(Reply(250, "2.0.0", "ok"))
    with pytest.raises(ValueError, match="status"):
        srv.reject(550, "4.0.0", "mismatch")
    srv.accept()
    with pytest.raises(LocalProtocolError):
        srv.tls_started()


def test_reject_421_closes() -> None:
    def policy(srv: SMTPServer, e: ev.Event) -> None:
        if isinstance(e, ev.MailFrom):
            srv.reject(421, "4.3.2", "mx.example.org Shutting down")
        elif srv.awaiting_answer:
            srv.accept()

    d = Driver(policy=policy).feed(HELLO + b"MAIL FROM:<a@b.example>\r\nNOOP\r\n")
    assert d.last() == "421 4.3.2 mx.example.org Shutting down"
    assert d.kinds()[-1] == "ConnectionClosed"


def test_app_close_on_timeout() -> None:
    d = run(HELLO)
    d.srv.close(Reply(421, "4.4.2", "mx.example.org Timeout"))
    assert d.srv.next_event() == ev.ConnectionClosed()
    assert d.srv.data_to_send() == b"421 4.4.2 mx.example.org Timeout\r\n"
    assert d.srv.closed


def test_data_end_accept_with_error_is_refused() -> None:
    srv = SMTPServer(CONFIG)
    srv.receive(ENVELOPE + b"DATA\r\na\x00b\r\n.\r\n")
    while not isinstance(e := srv.next_event(), ev.DataEnd):
        if not isinstance(e, ev.DataChunk):
            srv.accept()
    assert e.error == Reply(554, "5.6.0", "NUL byte in message")
    with pytest.raises(LocalProtocolError):
        srv.accept()
    srv.reply(e.error)
    assert srv.data_to_send().endswith(b"554 5.6.0 NUL byte in message\r\n")
    assert srv.state is State.GREETED


# ----------------------------------------------------------------- STARTTLS

TLS_CFG = dataclasses.replace(CONFIG, starttls=True)


def test_starttls() -> None:
    d = Driver(TLS_CFG).feed(HELLO + b"STARTTLS\r\n")
    assert d.events[-1] == ev.StartTLS()
    assert d.last() == "220 2.0.0 Ready to start TLS"
    assert d.srv.state is State.TLS
    d.srv.tls_started()
    assert d.srv.tls and d.srv.state.value == "init" and d.srv.helo is None
    d.feed(b"MAIL FROM:<a@b.example>\r\n")
    assert d.last() == "503 5.5.1 Send HELO/EHLO first"
    d.feed(HELLO)
    assert "250-STARTTLS" not in d.replies[-8:] and d.last() == "250 DSN"
    d.feed(b"STARTTLS\r\n")
    assert d.last() == "503 5.5.1 TLS already active"
    assert d.srv.with_protocol == "ESMTPS"


@pytest.mark.parametrize("tail", [b"MAIL FROM:<evil@x.example>\r\n", b"x"])
def test_starttls_injection_same_packet(tail: bytes) -> None:
    d = Driver(TLS_CFG).feed(HELLO + b"STARTTLS\r\n" + tail)
    assert d.kinds()[-2:] == ["ProtocolError", "ConnectionClosed"]
    assert "StartTLS" not in d.kinds() and "MailFrom" not in d.kinds()
    assert d.last().startswith("421 4.7.0")


def test_starttls_injection_before_answer() -> None:
    srv = SMTPServer(TLS_CFG)
    srv.receive(HELLO)
    srv.next_event()
    srv.accept()
    srv.receive(b"STARTTLS\r\n")
    assert srv.next_event() == ev.StartTLS()
    srv.receive(b"MAIL FROM:<evil@x.example>\r\n")
    srv.accept()
    assert isinstance(srv.next_event(), ev.ProtocolError)
    assert srv.next_event() == ev.ConnectionClosed()
    assert b"220 2.0.0" not in srv.data_to_send()


def test_starttls_data_before_handshake() -> None:
    d = Driver(TLS_CFG).feed(HELLO + b"STARTTLS\r\n")
    d.feed(b"MAIL FROM:<evil@x.example>\r\n")
    assert d.kinds()[-2:] == ["ProtocolError", "ConnectionClosed"]


def test_cleartext_seen_by_the_io_layer_after_220() -> None:
    # pony peeks at the first byte after its 220: not a TLS record -> this call
    d = Driver(TLS_CFG).feed(HELLO + b"STARTTLS\r\n")
    assert d.last() == "220 2.0.0 Ready to start TLS"
    d.srv.cleartext_after_starttls()
    assert d.srv.next_event() == ev.ProtocolError("data received before the TLS handshake")
    assert d.srv.next_event() == ev.ConnectionClosed()
    assert d.srv.data_to_send() == b"421 4.7.0 mx.example.org Protocol violation\r\n"
    assert d.srv.closed
    with pytest.raises(LocalProtocolError):
        Driver(TLS_CFG).feed(HELLO).srv.cleartext_after_starttls()


def test_bytes_held_while_an_answer_is_awaited_are_counted() -> None:
    srv = SMTPServer(TLS_CFG)
    srv.receive(HELLO)
    assert srv.next_event() is not None and srv.buffered == 0
    srv.receive(b"MAIL FROM:<a@b.example>\r\nNOOP\r\n")
    assert srv.next_event() is None  # the HELLO still awaits its answer
    assert srv.buffered == len(b"MAIL FROM:<a@b.example>\r\nNOOP\r\n")
    srv.accept()
    assert isinstance(srv.next_event(), ev.MailFrom)
    assert srv.buffered == len(b"NOOP\r\n")


@pytest.mark.parametrize("refuse", ["rcpt", "data"])
def test_body_read_while_an_answer_was_awaited_closes_after_refused_data(refuse: str) -> None:
    # pony keeps reading while lka or queue answers: the body a client pipelined
    # behind DATA is in the buffer by the time DATA is refused
    srv = SMTPServer(CONFIG)
    srv.receive(HELLO)
    srv.next_event()
    srv.accept()
    srv.receive(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\n")
    srv.next_event()
    srv.accept()
    assert isinstance(srv.next_event(), ev.RcptTo)
    srv.receive(b"MAIL FROM:<evil@x.example>\r\nRCPT TO:<v@y.example>\r\n")
    if refuse == "rcpt":
        srv.reject(550, "5.7.1", "no")
    else:
        srv.accept()
        assert srv.next_event() == ev.DataStart()
        srv.reject(451, "4.3.0", "Queue unavailable")
    assert isinstance(srv.next_event(), ev.ProtocolError)
    assert srv.next_event() == ev.ConnectionClosed()
    assert srv.next_event() is None
    assert srv.data_to_send().endswith(b"421 4.7.0 mx.example.org Protocol violation\r\n")


def test_starttls_sequence() -> None:
    d = Driver(TLS_CFG).feed(b"STARTTLS\r\n" + HELLO + b"STARTTLS now\r\n"
                             b"MAIL FROM:<a@b.example>\r\nSTARTTLS\r\n")
    assert d.codes == [503, 250, 501, 250, 503]
    assert d.replies[-1] == "503 5.5.1 STARTTLS not allowed in a transaction"


def test_starttls_rejected() -> None:
    def policy(srv: SMTPServer, e: ev.Event) -> None:
        if isinstance(e, ev.StartTLS):
            srv.reject(454, "4.7.0", "TLS not available")
        else:
            srv.accept()

    d = Driver(TLS_CFG, policy).feed(HELLO + b"STARTTLS\r\n")
    assert d.last() == "454 4.7.0 TLS not available"
    assert d.srv.state is State.GREETED and not d.srv.tls


# --------------------------------------------------------------------- LMTP

def test_lmtp_one_reply_per_recipient() -> None:
    replies = iter([None, Reply(452, "4.2.2", "Mailbox full"), None])

    def policy(srv: SMTPServer, e: ev.Event) -> None:
        if isinstance(e, ev.DataEnd):
            assert e.replies_due == 3
            for r in replies:
                if r is None:
                    srv.accept()
                else:
                    srv.reply(r)
        elif srv.awaiting_answer:
            srv.accept()

    d = Driver(cfg(lmtp=True, banner="LMTP mailrider"), policy)
    assert d.greeting == b"220 mx.example.org LMTP mailrider\r\n"
    d.feed(b"EHLO x\r\nLHLO client\r\nMAIL FROM:<a@b.example>\r\n"
           + b"RCPT TO:<c@d.example>\r\n" * 3 + b"DATA\r\nhi\r\n.\r\nNOOP\r\n")
    assert d.replies[0] == "500 5.5.1 Command unrecognized"
    assert d.replies[-4:] == [
        "250 2.0.0 Message accepted for delivery",
        "452 4.2.2 Mailbox full",
        "250 2.0.0 Message accepted for delivery",
        "250 2.0.0 Ok",
    ]
    assert d.srv.with_protocol == "LMTP"
