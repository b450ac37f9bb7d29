"""A blocking client for klondike's ``Sign`` requests, callable from OpenSSL callbacks.

It speaks the frame format of :mod:`mailrider.ipc.channel` (same header,
same JSON messages) over a socket of its own: the callback runs inside a
handshake, so it cannot wait for the event loop; it sends one request and
reads until the reply with its request id arrives.

Invariants: one request at a time (a lock); a reply carrying descriptors,
an oversized frame, a timeout or a closed peer breaks the client for good
(the stream position is then unknown) and every later call fails at once;
a client made before ``fork()`` refuses to work in the child.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import threading

from mailrider.errors import TempFail
from mailrider.ipc import messages
from mailrider.ipc.frame import FLAG_ERROR, FLAG_REPLY, HEADER, frame
from mailrider.limits import IPC_FRAME_MAX

#: how long a handshake waits for klondike before failing
SIGN_TIMEOUT = 10.0


class SignFailed(TempFail):
    """klondike refused or could not be reached."""


class SignClient:
    def __init__(self, sock: socket.socket, timeout: float = SIGN_TIMEOUT) -> None:
        self._sock = sock
        self._sock.settimeout(timeout)
        self._lock = threading.Lock()
        self._next_id = 1
        self._pid = os.getpid()
        self._broken = ""
        self.calls = 0
        self.failures = 0

    def _recv_exact(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self._sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("klondike closed the channel")
            buf += chunk
        return bytes(buf)

    def _exchange(self, msg: messages.Sign) -> messages.Signed:
        reqid = self._next_id
        self._next_id = (self._next_id + 1) & 0xFFFFFFFF or 1
        self._sock.sendall(frame(msg, reqid))
        while True:
            length, rid, flags, nfds = HEADER.unpack(self._recv_exact(HEADER.size))
            if length > IPC_FRAME_MAX or nfds:
                raise ConnectionError("unexpected frame from klondike")
            body = self._recv_exact(length)
            if not flags & FLAG_REPLY or rid != reqid:
                continue  # not ours (klondike sends no notices on this socket)
            reply = messages.decode(json.loads(body))
            if flags & FLAG_ERROR:
                text = reply.text if isinstance(reply, messages.Error) else "remote error"
                raise SignFailed(f"klondike: {text}")
            if not isinstance(reply, messages.Signed):
                raise ConnectionError(f"unexpected {messages.type_name(reply)} from klondike")
            return reply

    def sign(self, cert_hash: str, op: str, data: bytes, padding: int) -> bytes:
        """One private operation by klondike (the ``sign`` of :mod:`delegate`)."""
        with self._lock:
            if os.getpid() != self._pid:
                raise SignFailed("sign client used across fork(); make one per process")
            if self._broken:
                raise SignFailed(f"sign channel unusable: {self._broken}")
            msg = messages.Sign(cert_hash=cert_hash, op=op,
                                data_b64=base64.b64encode(data).decode("ascii"),
                                padding=padding)
            try:
                reply = self._exchange(msg)
            except SignFailed:
                self.failures += 1
                raise
            except (OSError, ValueError, TypeError, KeyError) as exc:
                self.failures += 1
                self._broken = type(exc).__name__
                raise SignFailed(f"sign channel broken: {self._broken}") from None
            self.calls += 1
            return base64.b64decode(reply.data_b64, validate=True)

    def close(self) -> None:
        with self._lock:
            self._broken = self._broken or "closed"
            self._sock.close()
