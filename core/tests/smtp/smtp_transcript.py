"""A small transcript driver for the sans-I/O SMTP server: bytes in, replies out."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from mailrider.smtp import events as ev
from mailrider.smtp.server import ServerConfig, SMTPServer

CONFIG = ServerConfig(
    hostname="mx.example.org",
    max_message_size=35 * 2**20,
    max_rcpt=1000,
    max_mails=100,
    max_errors=20,
    dsn=True,
    starttls=False,
    smtputf8=True,
    pipelining=True,
    eightbitmime=True,
)

Policy = Callable[[SMTPServer, ev.Event], None]


def accept_all(srv: SMTPServer, event: ev.Event) -> None:
    """Accept everything; answer a bad message with the machine's error."""
    if isinstance(event, ev.Hello | ev.MailFrom | ev.RcptTo | ev.DataStart | ev.StartTLS):
        srv.accept()
    elif isinstance(event, ev.DataEnd):
        for _ in range(event.replies_due):
            if event.error is not None:
                srv.reply(event.error)
            else:
                srv.accept("2.0.0 1f2e3d4c Message accepted for delivery")


class Driver:
    """Feeds a server and records every event and every byte it sends."""

    def __init__(self, config: ServerConfig = CONFIG, policy: Policy = accept_all) -> None:
        self.srv = SMTPServer(config)
        self.policy = policy
        self.greeting = self.srv.greeting()
        self.out = bytearray()
        self.events: list[ev.Event] = []

    def feed(self, data: bytes) -> Driver:
        self.srv.receive(data)
        while (event := self.srv.next_event()) is not None:
            self.events.append(event)
            self.policy(self.srv, event)
            self.out += self.srv.data_to_send()
        self.out += self.srv.data_to_send()
        return self

    def feed_all(self, chunks: Iterable[bytes]) -> Driver:
        for chunk in chunks:
            self.feed(chunk)
        return self

    @property
    def replies(self) -> list[str]:
        """Reply lines as text, without CRLF."""
        text = bytes(self.out).decode("utf-8")
        assert text == "" or text.endswith("\r\n")
        return text.split("\r\n")[:-1] if text else []

    @property
    def codes(self) -> list[int]:
        """The code of each complete (last-line) reply."""
        return [int(line[:3]) for line in self.replies if line[3:4] == " "]

    def last(self) -> str:
        return self.replies[-1]

    def kinds(self) -> list[str]:
        return [type(e).__name__ for e in merged(self.events)]

    def message(self) -> bytes:
        return b"".join(e.data for e in self.events if isinstance(e, ev.DataChunk))


def merged(events: Iterable[ev.Event]) -> list[ev.Event]:
    """Events with runs of DataChunk joined (chunking is not observable)."""
    out: list[ev.Event] = []
    for e in events:
        if isinstance(e, ev.DataChunk) and out and isinstance(out[-1], ev.DataChunk):
            out[-1] = ev.DataChunk(out[-1].data + e.data)
        else:
            out.append(e)
    return out


def run(data: bytes, config: ServerConfig = CONFIG, policy: Policy = accept_all) -> Driver:
    """Run ``data`` through a fresh server in one read."""
    return Driver(config, policy).feed(data)


HELLO = b"EHLO client.example.net\r\n"
ENVELOPE = HELLO + b"MAIL FROM:<alice@example.net>\r\nRCPT TO:<bob@example.org>\r\n"


def with_data(body: bytes) -> bytes:
    """A full session: envelope, DATA, ``body`` (already wire format), QUIT."""
    return ENVELOPE + b"DATA\r\n" + body + b"QUIT\r\n"
