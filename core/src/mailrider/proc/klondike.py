"""klondike: the only process that ever holds private keys.

It loads every ``pki`` key in :meth:`Klondike.setup` (before the privilege
drop: key files are readable by root only), then answers ``Sign`` requests
from pony with the private operation pony's TLS stack delegates to it (see
:mod:`mailrider.crypto.delegate`). It never touches the network and never
sends key material anywhere; only the results of private operations leave.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from mailrider import log
from mailrider.crypto.keys import KeyLoadError, KeyStore, SignError
from mailrider.ipc import messages as m
from mailrider.ipc.channel import Channel
from mailrider.proc import common


class Klondike(common.Process):
    role = "klondike"
    keys: KeyStore | None = None

    async def setup(self) -> None:
        self.keys = KeyStore()
        for name, pki in sorted(self.config.pkis.items()):
            if pki.cert is None or pki.key is None:
                continue
            try:
                cert_hash = self.keys.load(name, pki.cert, pki.key)
            except KeyLoadError as exc:
                log.error(self.role, "key-load-failed", pki=name, error=exc.message)
                raise
            log.debug(self.role, "key-loaded", pki=name, hash=cert_hash[:16],
                      backend=self.keys.backend)

    def sign(self, msg: m.Sign) -> m.Signed:
        if self.keys is None:
            raise SignError("no keys loaded")
        try:
            data = base64.b64decode(msg.data_b64, validate=True)
        except (binascii.Error, ValueError):
            self.count("klondike.sign.errors")
            raise SignError("bad request") from None
        try:
            out = self.keys.sign(msg.cert_hash, msg.op, data, msg.padding)
        except SignError as exc:
            self.count("klondike.sign.errors")
            log.warning(self.role, "sign-failed", op=msg.op, hash=msg.cert_hash[:16],
                        error=exc.text)
            raise
        self.count("klondike.sign")
        return m.Signed(data_b64=base64.b64encode(out).decode("ascii"))

    def stats(self) -> dict[str, int]:
        return {
            "klondike.sign": self.counters.get("klondike.sign", 0),
            "klondike.sign.errors": self.counters.get("klondike.sign.errors", 0),
            "klondike.keys": len(self.keys) if self.keys is not None else 0,
        }

    async def handle(self, chan: Channel, msg: Any, fds: list[int]) -> Any:
        if isinstance(msg, m.Sign) and chan.peer.startswith("pony"):
            return self.sign(msg)
        if isinstance(msg, m.Control):
            return await self.control(msg)
        raise ValueError(f"klondike: unexpected {m.type_name(msg)} from {chan.peer}")


PROCESS = Klondike
