"""klondike: the only process that ever holds private keys.

It loads every ``pki`` key in :meth:`Klondike.setup` (before the privilege
drop: key files are readable by root only), then answers ``Sign`` requests
from pony with the private operation pony's TLS stack delegates to it (see
:mod:`mailrider.crypto.delegate`). It never touches the network and never
sends key material anywhere; only the results of private operations leave.

DKIM keys (``dkim`` statements) are loaded apart, by name, and serve only
``DkimSign`` requests on the event-loop channel: klondike checks that the
input is a DKIM signing input for that very entry and hashes it itself
(:mod:`mailrider.crypto.dkimkeys`, docs/dkim.md §3); the signing line that
TLS handshakes block on carries ``Sign`` only.

Only the signatures TLS needs are offered (:data:`mailrider.crypto.keys.OPS`);
a request for anything else, or with fields of the wrong type or size, is
refused with an error reply and logged as ``sign-refused``: pony is the least
trusted process, and a key that decrypts on request would hand recorded
sessions to whoever runs code in it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import re
import socket
import threading
from typing import Any, NoReturn

from mailrider import dkim, log
from mailrider.config.model import Dkim
from mailrider.crypto.dkimkeys import DkimKeyStore
from mailrider.crypto.keys import OPS, KeyLoadError, KeyStore, SignError
from mailrider.errors import ConfigError, TempFail
from mailrider.ipc import messages as m
from mailrider.ipc.channel import Channel
from mailrider.ipc.frame import FLAG_ERROR, FLAG_REPLY, HEADER, frame, frame_type
from mailrider.limits import IPC_FRAME_MAX
from mailrider.proc import common

#: the SHA-256 of a SubjectPublicKeyInfo, in hex
_CERT_HASH = re.compile(r"[0-9a-f]{64}")
#: base64 of the largest input: a 16384-bit RSA modulus
_DATA_B64_MAX = 4 * ((16384 // 8 + 2) // 3)


class Klondike(common.Process):
    role = "klondike"
    landlock_fs = True
    landlock_net = True

    def chroot_dir(self) -> str | None:
        # every key is read in setup(); nothing on disk is needed afterwards
        return common.empty_dir(self.opts.statedir)
    keys: KeyStore | None = None
    dkim_keys: DkimKeyStore | None = None

    async def setup(self) -> None:
        self.keys = KeyStore()
        try:
            self.dkim_keys = load_dkim_keys(self.config.dkims)
        except ConfigError as exc:
            log.error(self.role, "key-load-failed", error=exc.message)
            raise
        for name, pki in sorted(self.config.pkis.items()):
            if pki.cert is None or pki.key is None:
                continue
            try:
                cert_hash = self.keys.load(name, pki.cert, pki.key)
            except KeyLoadError as exc:
                log.error(self.role, "key-load-failed", pki=name, error=exc.message)
                raise ConfigError(f"pki {name}: {exc.message}", pki.where.file,
                                  pki.where.line) from None
            log.debug(self.role, "key-loaded", pki=name, hash=cert_hash[:16],
                      backend=self.keys.backend)

    def sign(self, msg: m.Sign) -> m.Signed:
        if self.keys is None:
            raise SignError("no keys loaded")
        op = msg.op if isinstance(msg.op, str) else type(msg.op).__name__
        if op not in OPS:
            self._refuse(op[:32], "operation not offered")
        if not (isinstance(msg.cert_hash, str) and _CERT_HASH.fullmatch(msg.cert_hash)
                and type(msg.padding) is int and isinstance(msg.data_b64, str)
                and len(msg.data_b64) <= _DATA_B64_MAX):
            self._refuse(op, "malformed request")
        try:
            data = base64.b64decode(msg.data_b64, validate=True)
        except (binascii.Error, ValueError):
            self._refuse(op, "malformed request")
        try:
            out = self.keys.sign(msg.cert_hash, msg.op, data, msg.padding)
        except SignError as exc:
            self.count("klondike.sign.errors")
            log.warning(self.role, "sign-failed", op=msg.op, hash=msg.cert_hash[:16],
                        error=exc.text)
            raise
        self.count("klondike.sign")
        return m.Signed(data_b64=base64.b64encode(out).decode("ascii"))

    def dkim_sign(self, msg: m.DkimSign) -> m.Signed:
        store = self.dkim_keys
        name = msg.name if isinstance(msg.name, str) else ""
        if store is None or name not in store:
            self._refuse("dkim", "no dkim key of this name")
        if not (isinstance(msg.data_b64, str)
                and len(msg.data_b64) <= 4 * ((dkim.SIGNING_INPUT_MAX + 2) // 3)):
            self._refuse("dkim", "malformed request")
        try:
            data = base64.b64decode(msg.data_b64, validate=True)
        except (binascii.Error, ValueError):
            self._refuse("dkim", "malformed request")
        try:
            out = store.sign(name, data)
        except SignError as exc:
            # a well-formed pony never sends what the check refuses
            self._refuse("dkim", exc.text)
        self.count("klondike.dkim.sign")
        return m.Signed(data_b64=base64.b64encode(out).decode("ascii"))

    def _refuse(self, op: str, reason: str) -> NoReturn:
        self.count("klondike.sign.errors")
        self.count("klondike.sign.refused")
        log.warning(self.role, "sign-refused", op=op, reason=reason)
        raise SignError(reason)

    def connect(self, fds: dict[str, int]) -> None:
        sign_fd = fds.pop("pony-sign", None)
        super().connect(fds)
        if sign_fd is not None:
            # pony blocks in the middle of a TLS handshake until we answer: serve
            # that line from a plain thread, without an event-loop hop per request
            loop = asyncio.get_running_loop()
            sock = socket.socket(fileno=sign_fd)
            sock.setblocking(True)
            threading.Thread(target=self._serve_signs, args=(sock, loop), daemon=True,
                             name="sign").start()

    def _serve_signs(self, sock: socket.socket, loop: asyncio.AbstractEventLoop) -> None:
        def recv_exact(n: int) -> bytes:
            buf = bytearray()
            while len(buf) < n:
                chunk = sock.recv(n - len(buf))
                if not chunk:
                    raise ConnectionError("pony closed its signing line")
                buf += chunk
            return bytes(buf)

        try:
            while True:
                length, reqid, _flags, nfds = HEADER.unpack(recv_exact(HEADER.size))
                if length > IPC_FRAME_MAX or nfds:
                    raise ConnectionError("bad frame on the signing line")
                flags = FLAG_REPLY
                payload = recv_exact(length)
                if frame_type(payload) != "Sign":
                    # only Sign travels here: anything else is a broken or hostile pony
                    raise ConnectionError("not a Sign request on the signing line")
                try:
                    msg = m.decode(json.loads(payload))
                    if not isinstance(msg, m.Sign):
                        raise SignError("only Sign requests here")
                    reply: Any = self.sign(msg)
                except (TempFail, ValueError, TypeError, KeyError, RecursionError) as exc:
                    flags |= FLAG_ERROR
                    reply = m.Error(text=exc.text if isinstance(exc, TempFail) else "bad request")
                sock.sendall(frame(reply, reqid, flags))
        except (OSError, ConnectionError) as exc:
            if not self.stopping.is_set():
                log.error(self.role, "sign-line-lost", error=str(exc))
                loop.call_soon_threadsafe(self.stopping.set)

    def stats(self) -> dict[str, int]:
        return {
            "klondike.sign": self.counters.get("klondike.sign", 0),
            "klondike.sign.errors": self.counters.get("klondike.sign.errors", 0),
            "klondike.sign.refused": self.counters.get("klondike.sign.refused", 0),
            "klondike.keys": len(self.keys) if self.keys is not None else 0,
            "klondike.dkim.sign": self.counters.get("klondike.dkim.sign", 0),
            "klondike.dkim.keys": len(self.dkim_keys) if self.dkim_keys is not None else 0,
        }

    async def handle(self, chan: Channel, msg: Any, fds: list[int]) -> Any:
        if isinstance(msg, m.Sign) and chan.peer.startswith("pony"):
            return self.sign(msg)
        if isinstance(msg, m.DkimSign) and chan.peer.startswith("pony"):
            return self.dkim_sign(msg)
        if isinstance(msg, m.Control):
            return await self.control(msg)
        raise ValueError(f"klondike: unexpected {m.type_name(msg)} from {chan.peer}")


def load_dkim_keys(entries: dict[str, Dkim]) -> DkimKeyStore:
    """Every ``dkim`` statement's key (klondike at start, and ``-n`` in a
    forked child); :class:`ConfigError` at the statement's line."""
    store = DkimKeyStore()
    for name, entry in sorted(entries.items()):
        try:
            signer = dkim.Signer(name, entry.domain, entry.selector, entry.algorithm,
                                 entry.canonicalization)
            store.load(signer, entry.key)
        except (KeyLoadError, dkim.DkimError) as exc:
            text = exc.message if isinstance(exc, KeyLoadError) else str(exc)
            raise ConfigError(f"dkim {name}: {text}", entry.where.file,
                              entry.where.line) from None
        log.debug("klondike", "dkim-key-loaded", dkim=name, domain=entry.domain,
                  selector=entry.selector, algorithm=entry.algorithm, backend=store.backend)
    return store


PROCESS = Klondike
