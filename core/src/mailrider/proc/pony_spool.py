"""What pony's SMTP session writes to the queue: the message bytes into its
spool file, the header section's end (hygiene and From: masquerading), and
the envelopes of one transaction (docs/processes.md §4, docs/queue.md).

Pure helpers without a session: :class:`~mailrider.proc.pony_smtp.Session`
keeps the state (the spool descriptor, the digest, the counters) and logs.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable
from typing import Any

from mailrider.config.model import Config
from mailrider.queue.envelope import Delivery, Envelope
from mailrider.smtp.hygiene import HeaderHygiene
from mailrider.smtp.masquerade import FromRewriter


def write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` to the spool file ``fd``; OSError as os.write raises it."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def header_tail(hygiene: HeaderHygiene | None, masq: FromRewriter | None) -> bytes:
    """The bytes the header hygiene and the From: rewriter still hold at the
    end of the message, the hygiene's through the rewriter."""
    tail = hygiene.finish() if hygiene is not None else b""
    if masq is None:
        return tail
    return masq.feed(tail) + masq.finish()


@dataclasses.dataclass(frozen=True, slots=True)
class Transaction:
    """What one SMTP transaction knows when its message is complete."""

    tag: str
    smtpname: str
    helo: str
    sockaddr: str
    sender: str
    mail_params: Any
    rcpts: list[tuple[str, Any]]
    size: int
    digest: str


def build_envelopes(config: Config, tx: Transaction,
                    deliveries: Iterable[tuple[int, Delivery]], now: int) -> list[Envelope]:
    """One envelope per delivery lka decided, built once (the queue names them).

    Each delivery keeps the recipient as the client wrote it, its action's
    ``ttl`` (else the queue's) and the DSN parameters of MAIL and its RCPT.
    """
    out: list[Envelope] = []
    params = tx.mail_params
    for index, d in deliveries:
        rcpt, rparams = tx.rcpts[index]
        action = config.actions.get(d.dispatcher)
        ttl = action.ttl if action is not None and action.ttl else config.queue_ttl
        out.append(Envelope(
            evpid="", delivery=d if d.rcpt == rcpt else dataclasses.replace(d, rcpt=rcpt),
            type="mta" if d.relayed else "mda", tag=tx.tag,
            smtpname=tx.smtpname, helo=tx.helo, hostname="<unknown>",
            sockaddr=tx.sockaddr, sender=tx.sender, ctime=now, retry=0, ttl=ttl,
            dsn_notify=tuple(sorted(getattr(rparams, "notify", None) or ())),
            dsn_orcpt=getattr(rparams, "orcpt", None) or "",
            dsn_ret=getattr(params, "ret", None) or "",
            dsn_envid=getattr(params, "envid", None) or "",
            message_size=tx.size, message_sha256=tx.digest))
    return out
