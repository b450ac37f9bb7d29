"""The IPC frame, shared by every end that speaks it (ipc/channel.py and the
blocking signing line of crypto/signclient.py and proc/klondike.py).

Layout (network byte order)::

    u32 length   payload length in bytes (<= limits.IPC_FRAME_MAX)
    u32 reqid    0 for a one-way notice, else the id a reply echoes
    u8  flags    FLAG_REPLY, FLAG_ERROR
    u8  nfds     file descriptors that travel with this frame
    payload      UTF-8 JSON object {"t": <message type>, ...fields}

The message type is the payload's first member, so a receiver can refuse a
type before it decodes anything else (:func:`frame_type`).
"""

from __future__ import annotations

import json
import re
import struct
from typing import Any

from mailrider.ipc import messages

HEADER = struct.Struct("!IIBB")
FLAG_REPLY = 1
FLAG_ERROR = 2

_TYPE_FIRST = re.compile(rb'\{\s*"t"\s*:\s*"([A-Za-z0-9]{1,64})"')


def frame_type(payload: bytes) -> str | None:
    """The message type a payload names first, or None when it names none."""
    found = _TYPE_FIRST.match(payload, 0, 128)
    return found.group(1).decode("ascii") if found else None


def payload(obj: Any) -> bytes:
    """The payload of one message (its type first)."""
    return json.dumps(messages.encode(obj), separators=(",", ":")).encode()


def frame(obj: Any, reqid: int, flags: int = 0, nfds: int = 0) -> bytes:
    """Header and payload of one message."""
    data = payload(obj)
    return HEADER.pack(len(data), reqid, flags, nfds) + data
