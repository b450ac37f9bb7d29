"""Delivery status notifications (RFC 3464 in an RFC 6522 multipart/report).

One notification covers every recipient of one message that reached the
same state (failed, delayed, delivered, relayed) at about the same time
(the queue groups them, docs/queue.md §6). It has three parts: a
human-readable explanation, a ``message/delivery-status`` part (per-message
fields, then one block per recipient with Final-Recipient,
Original-Recipient, Action, Status, Remote-MTA and Diagnostic-Code), and
the original message: its header section (``text/rfc822-headers``), or the
whole message (``message/rfc822``) for a failure with ``RET=FULL``.

Every field value comes from an envelope, whose values hold no line
breaks (see queue.envelope), or from a remote reply reduced to printable
ASCII, so nothing can add a header line. The result uses LF line ends, as
the spool stores messages.

:func:`wanted` says whether a notification of a kind may be sent for an
envelope: never for the null sender, never for a bounce, never with
``NOTIFY=NEVER``; with an explicit NOTIFY list only for the conditions it
names (RFC 3461 4.1); without one, failures and delays (RFC 3461 4.1
allows either default, OpenSMTPD sends both).
"""

from __future__ import annotations

import email.utils
import os
import re
import time
from dataclasses import dataclass

from mailrider.queue.envelope import Envelope

_UNPRINTABLE = re.compile(r"[^\x20-\x7e]")
_HEADER_MAX = 64 * 1024
#: a whole message returned with RET=FULL is cut at this size (RFC 3461 4.3
#: lets the reporting MTA return less than everything)
FULL_MAX = 1024 * 1024

KINDS = ("failed", "delayed", "delivered", "relayed")
_NOTIFY_OF = {"failed": "FAILURE", "delayed": "DELAY", "delivered": "SUCCESS",
              "relayed": "SUCCESS"}


def _clean(text: str) -> str:
    return _UNPRINTABLE.sub("?", text)[:900]


def wanted(env: Envelope, kind: str) -> bool:
    """May a ``kind`` notification be sent for this envelope?"""
    if not env.sender or env.is_bounce:
        return False
    notify = env.notify
    if "NEVER" in notify:
        return False
    if not notify:
        return kind in ("failed", "delayed")
    return _NOTIFY_OF[kind] in notify


def original_headers(msg_fd: int) -> bytes:
    data = os.pread(msg_fd, _HEADER_MAX, 0)
    end = data.find(b"\n\n")
    if end >= 0:
        return data[: end + 1]
    return data if data.endswith(b"\n") else data + b"\n"


def original_message(msg_fd: int) -> bytes:
    data = os.pread(msg_fd, FULL_MAX, 0)
    return data if data.endswith(b"\n") else data + b"\n"


def status_of(reply: str) -> str:
    m = re.match(r"^[245]\d\d[ -]([245]\.\d{1,3}\.\d{1,3})", reply)
    if m:
        return m.group(1)
    if reply.startswith("2"):
        return "2.0.0"
    return "5.0.0" if reply.startswith("5") else "4.0.0"


@dataclass(frozen=True, slots=True)
class Item:
    """One recipient in a notification."""

    env: Envelope
    reason: str  # the reply or error text
    relay: str = ""  # "host [ip]" of the remote MTA, when one answered


def _duration(seconds: float) -> str:
    s = int(max(0, seconds))
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    mins = s // 60
    parts = [f"{d} day{'s' if d != 1 else ''}"] if d else []
    if h:
        parts.append(f"{h} hour{'s' if h != 1 else ''}")
    if mins and not d:
        parts.append(f"{mins} minute{'s' if mins != 1 else ''}")
    return " ".join(parts) or f"{int(seconds)} seconds"


_INTRO = {
    "failed": "Your message could not be delivered to the following recipient(s):",
    "delayed": "Your message has not been delivered yet to the following recipient(s):",
    "delivered": "Your message was delivered to the following recipient(s):",
    "relayed": ("Your message was relayed to the following recipient(s) by a server "
                "that does not send delivery notifications:"),
}


def build(env: Envelope, reason: str, msg_fd: int, *, kind: str = "failed",
          now: float | None = None) -> bytes:
    """The notification for one envelope (see :func:`build_report`)."""
    full = kind == "failed" and env.dsn_ret.upper() == "FULL"
    original = original_message(msg_fd) if full else original_headers(msg_fd)
    return build_report([Item(env, reason)], original, kind=kind, full=full, now=now)


def build_report(items: list[Item], original: bytes, *, kind: str = "failed",
                 full: bool = False, now: float | None = None) -> bytes:
    """One notification for several recipients of one message.

    ``original`` is the message's header section, or with ``full`` the
    whole message (RET=FULL).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown notification kind {kind!r}")
    now = time.time() if now is None else now
    env = items[0].env
    smtpname = env.smtpname or "localhost"
    boundary = f"{os.urandom(8).hex()}/{smtpname}"
    ctime = float(env.ctime or now)
    arrival = email.utils.formatdate(ctime, localtime=True)
    human = [_INTRO[kind], ""]
    for it in items:
        rcpt = it.env.rcpt or it.env.dest
        human.append(f"    {rcpt}: {_clean(it.reason)}")
    human.append("")
    if kind == "delayed":
        ttl = env.ttl
        human += [f"It has been waiting for {_duration(now - ctime)}; delivery will be tried "
                  f"for another {_duration(ctime + ttl - now)} before it is given up.",
                  "You do not need to send it again.", ""]
    human.append("The whole message is attached below." if full
                 else "The header section of your message is attached below.")
    status = [f"Reporting-MTA: dns; {smtpname}"]
    if env.dsn_envid:
        status.append(f"Original-Envelope-Id: {_clean(env.dsn_envid)}")
    status.append(f"Arrival-Date: {arrival}")
    for it in items:
        e = it.env
        rcpt = e.rcpt or e.dest
        diag = _clean(it.reason)
        status.append("")
        if e.dsn_orcpt:
            otype, _, oaddr = e.dsn_orcpt.partition(";")
            status.append(f"Original-Recipient: {_clean(otype.strip())}; {_clean(oaddr)}")
        status.append(f"Final-Recipient: rfc822; {_clean(e.dest or rcpt)}")
        status.append(f"Action: {kind}")
        status.append(f"Status: {status_of(it.reason)}")
        if it.relay:
            status.append(f"Remote-MTA: dns; {_clean(it.relay.split(' ')[0])}")
        if diag and kind != "delivered":
            status.append(f"Diagnostic-Code: smtp; {diag}")
        if e.last_try and kind in ("failed", "delayed"):
            status.append("Last-Attempt-Date: "
                          + email.utils.formatdate(float(e.last_try), localtime=True))
        if kind == "delayed" and e.ttl:
            status.append("Will-Retry-Until: " + email.utils.formatdate(
                float(e.ctime or ctime) + e.ttl, localtime=True))
    to = env.sender
    lines = [
        f"From: Mail Delivery System <MAILER-DAEMON@{smtpname}>",
        f"To: {to}",
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
        *human,
        "",
        f"--{boundary}",
        "Content-Type: message/delivery-status",
        "",
        *status,
        "",
        f"--{boundary}",
        "Content-Type: message/rfc822" if full else "Content-Type: text/rfc822-headers",
        "",
    ]
    body = ("\n".join(lines) + "\n").encode("utf-8", "replace") + original
    return body + f"\n--{boundary}--\n".encode()
