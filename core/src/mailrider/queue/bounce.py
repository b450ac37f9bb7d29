"""Bounce messages: a minimal RFC 3464 delivery status notification.

The report has the three parts RFC 3462/6522 ``multipart/report`` asks for:
a human-readable explanation, a ``message/delivery-status`` part, and the
original message's header section. Every field value comes from the
envelope, whose values hold no line breaks (see queue.envelope), and the
diagnostic text is reduced to printable ASCII.
"""

from __future__ import annotations

import email.utils
import os
import re
import time

from mailrider.queue.envelope import Envelope

_UNPRINTABLE = re.compile(r"[^\x20-\x7e]")
_HEADER_MAX = 64 * 1024


def _clean(text: str) -> str:
    return _UNPRINTABLE.sub("?", text)[:900]


def original_headers(msg_fd: int) -> bytes:
    data = os.pread(msg_fd, _HEADER_MAX, 0)
    end = data.find(b"\n\n")
    if end >= 0:
        return data[: end + 1]
    return data if data.endswith(b"\n") else data + b"\n"


def status_of(reply: str) -> str:
    m = re.match(r"^[245]\d\d[ -]([245]\.\d{1,3}\.\d{1,3})", reply)
    if m:
        return m.group(1)
    return "5.0.0" if reply.startswith("5") else "4.0.0"


def build(env: Envelope, reason: str, msg_fd: int, *, kind: str = "failed",
          now: float | None = None) -> bytes:
    """The bounce for one envelope, with LF line endings as the spool stores messages."""
    now = time.time() if now is None else now
    smtpname = env.get("smtpname") or "localhost"
    boundary = f"{os.urandom(8).hex()}/{smtpname}"
    rcpt = env.get("rcpt") or env.get("dest", "")
    diag = _clean(reason)
    arrival = email.utils.formatdate(float(env.get("ctime", now)), localtime=True)
    headers = original_headers(msg_fd)
    lines = [
        f"From: Mail Delivery System <MAILER-DAEMON@{smtpname}>",
        f"To: {env.get('sender', '')}",
        f"Subject: Delivery status notification: {kind}",
        f"Date: {email.utils.formatdate(now, localtime=True)}",
        f"Message-ID: <{os.urandom(8).hex()}@{smtpname}>",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"',
        "",
        "This is a MIME-encapsulated message.",
        "",
        f"--{boundary}",
        "Content-Type: text/plain; charset=us-ascii",
        "",
        f"Your message to {rcpt} could not be delivered by {smtpname}.",
        "",
        f"    {rcpt}: {diag}",
        "",
        "The header section of your message is attached below.",
        "",
        f"--{boundary}",
        "Content-Type: message/delivery-status",
        "",
        f"Reporting-MTA: dns; {smtpname}",
        f"Arrival-Date: {arrival}",
        "",
        f"Final-Recipient: rfc822; {env.get('dest', rcpt)}",
        *( [f"Original-Recipient: {env['dsn-orcpt']}"] if env.get("dsn-orcpt") else [] ),
        f"Action: {kind}",
        f"Status: {status_of(reason)}",
        f"Diagnostic-Code: smtp; {diag}",
        "",
        f"--{boundary}",
        "Content-Type: text/rfc822-headers",
        "",
    ]
    body = ("\n".join(lines) + "\n").encode("utf-8", "replace") + headers
    return body + f"\n--{boundary}--\n".encode()
