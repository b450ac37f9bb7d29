"""mailrider.smtp: sans-I/O SMTP machines, replies, paths and trace fields.

Nothing in this package performs I/O: the process modules own sockets, timers and TLS.
"""

from mailrider.smtp import events
from mailrider.smtp.address import (
    Address,
    AddressError,
    MailParams,
    RcptParams,
    normalise_domain,
    parse_mail_params,
    parse_path,
    parse_rcpt_params,
    xtext_decode,
    xtext_encode,
)
from mailrider.smtp.received import received_header, with_protocol
from mailrider.smtp.reply import Reply
from mailrider.smtp.server import LocalProtocolError, ServerConfig, SMTPServer, State

__all__ = [
    "Address",
    "AddressError",
    "LocalProtocolError",
    "MailParams",
    "RcptParams",
    "Reply",
    "SMTPServer",
    "ServerConfig",
    "State",
    "events",
    "normalise_domain",
    "parse_mail_params",
    "parse_path",
    "parse_rcpt_params",
    "received_header",
    "with_protocol",
    "xtext_decode",
    "xtext_encode",
]
