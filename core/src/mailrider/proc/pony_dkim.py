"""pony's DKIM signing of relayed mail, with the key left in klondike (docs/dkim.md).

A relay action that names ``dkim`` keys gets, for each message it sends, a
``DKIM-Signature`` field to send in front of the spool file's bytes. The
message is read from its descriptor (never changed), hashed by
:mod:`mailrider.dkim`, and klondike signs the signing input by the key's
name (``DkimSign``).

Outcomes: a field; ``b""`` when the message is not to be signed (the action
names no key, no key covers the ``From:`` domain, or the header section is
too large), logged as ``mta dkim-unsigned``; :class:`TempFail` (``451
4.7.0``) when klondike does not sign, so mail never leaves unsigned because
of a fault on our side.
"""

from __future__ import annotations

import asyncio
import base64
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

from mailrider import dkim, log
from mailrider.config.model import Action, Config
from mailrider.errors import TempFail
from mailrider.ipc import messages as m

#: bytes read from the message file at a time
_CHUNK = 256 * 1024
#: larger messages are hashed in a worker thread, off the event loop
_THREAD_OVER = 1024 * 1024

Call = Callable[[m.DkimSign], Awaitable[Any]]
Count = Callable[[str], None]


def _read(fd: int, size: int, hasher: dkim.MessageHasher, header_only: bool) -> None:
    offset = 0
    while offset < size:
        chunk = os.pread(fd, min(_CHUNK, size - offset), offset)
        if not chunk:
            break
        offset += len(chunk)
        hasher.feed(chunk)
        if header_only and hasher.fields is not None:
            return


class DkimSigning:
    """The ``dkim`` entries as pony knows them (no key), and the signing of one message."""

    def __init__(self, config: Config, call: Call, count: Count | None = None) -> None:
        """``count``: the process's counters (``mta.dkim.signed``, ``.unsigned``, ``.failed``)."""
        self.call = call
        self.count: Count = count or (lambda key: None)
        self.signers = {
            name: dkim.Signer(name, d.domain, d.selector, d.algorithm, d.canonicalization)
            for name, d in config.dkims.items()}
        self.signed = 0
        self.unsigned = 0

    def for_action(self, action: Action) -> list[dkim.Signer]:
        names = action.relay.get("dkim")
        if not isinstance(names, list):
            return []
        return [self.signers[n] for n in names if n in self.signers]

    async def field(self, action: Action, fd: int, msgid: str = "") -> bytes:
        """The DKIM-Signature field (with its CRLF) for the message in ``fd``, or b""."""
        signers = self.for_action(action)
        if not signers:
            return b""
        size = os.fstat(fd).st_size
        try:
            probe = dkim.MessageHasher("simple")
            _read(fd, size, probe, True)
            fields = probe.fields if probe.fields is not None else probe.finish()[0]
            signer = dkim.choose(signers, dkim.from_domain(fields))
            if signer is None:
                return self._unsigned(msgid, "no key for the From domain")
            hasher = dkim.MessageHasher(signer.body_canon)
            if size > _THREAD_OVER:
                await asyncio.to_thread(_read, fd, size, hasher, False)
            else:
                _read(fd, size, hasher, False)
            fields, body_hash = hasher.finish()
            prepared = dkim.prepare(signer, fields, body_hash, int(time.time()))
        except dkim.DkimError as exc:
            return self._unsigned(msgid, str(exc))
        except OSError as exc:
            raise TempFail(f"cannot read the message to sign it: {exc.strerror}",
                           451, "4.3.0") from None
        request = m.DkimSign(name=signer.name,
                             data_b64=base64.b64encode(prepared.signing_input).decode("ascii"))
        try:
            reply, fds = await self.call(request)
            for extra in fds:
                os.close(extra)
            if not isinstance(reply, m.Signed):
                raise TempFail(f"unexpected {m.type_name(reply)}")
            signature = base64.b64decode(reply.data_b64, validate=True)
        except (TempFail, ValueError, TypeError) as exc:
            text = exc.text if isinstance(exc, TempFail) else type(exc).__name__
            self.count("mta.dkim.failed")
            log.warning("mta", "dkim-failed", msgid=msgid or None, dkim=signer.name, error=text)
            raise TempFail("DKIM signature unavailable, will retry", 451, "4.7.0") from None
        self.signed += 1
        self.count("mta.dkim.signed")
        log.event("mta", "dkim-signed", msgid=msgid or None, dkim=signer.name,
                  domain=signer.domain, selector=signer.selector)
        return prepared.field(signature)

    def _unsigned(self, msgid: str, reason: str) -> bytes:
        self.unsigned += 1
        self.count("mta.dkim.unsigned")
        log.event("mta", "dkim-unsigned", msgid=msgid or None, reason=reason)
        return b""
