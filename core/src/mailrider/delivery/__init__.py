"""Local delivery: maildir, mbox, mda pipe and LMTP.

Everything here runs in a short-lived child that the parent forked and that
already runs as the recipient; it is synchronous and blocking. Each method
reads the queued message through a file descriptor it neither moves nor
closes, and reports failure by raising (or, for LMTP, returning per
recipient) :class:`~mailrider.errors.TempFail` or
:class:`~mailrider.errors.PermFail` with the reply they imply.
"""

from __future__ import annotations

from mailrider.delivery.common import Message, delivery_headers, mda_environment
from mailrider.delivery.format import FormatContext, expand_format
from mailrider.delivery.lmtp import deliver_lmtp
from mailrider.delivery.maildir import deliver_maildir
from mailrider.delivery.mbox import deliver_mbox
from mailrider.delivery.mda import deliver_mda

__all__ = [
    "FormatContext",
    "Message",
    "deliver_lmtp",
    "deliver_maildir",
    "deliver_mbox",
    "deliver_mda",
    "delivery_headers",
    "expand_format",
    "mda_environment",
]
