"""The table API every backend implements (docs/table-protocol.md §3-8).

A table answers four operations for a *service*:

- ``check(service, key)``: is the key in the table (True/False);
- ``lookup(service, key)``: the value for the key, or None;
- ``fetch(service)``: the next element, round-robin (source, relayhost), or None;
- ``update()``: reload.

"Not found" is a normal result (False/None). A table that cannot answer
(backend down, timeout, garbage reply) raises :class:`mailrider.errors.TempFail`,
which becomes an SMTP 4xx, never a 5xx. Keys arrive already normalised by the
caller (see :func:`normalise_key`).
"""

from __future__ import annotations

import abc

from mailrider.errors import TempFail
from mailrider.limits import TABLE_KEY_MAX

#: every service name of the protocol, with OpenSMTPD's bit values
SERVICES: dict[str, int] = {
    "alias": 0x001,
    "domain": 0x002,
    "credentials": 0x004,
    "netaddr": 0x008,
    "userinfo": 0x010,
    "source": 0x020,
    "mailaddr": 0x040,
    "addrname": 0x080,
    "mailaddrmap": 0x100,
    "relayhost": 0x200,
    "string": 0x400,
    "regex": 0x800,
    "auth": 0x1000,
}


def normalise_key(service: str, key: str) -> str:
    """Lower-case a key as OpenSMTPD does, except the password half of ``auth``.

    Raises TempFail for keys that can never be sent (CR/LF, too long).
    """
    if "\r" in key or "\n" in key:
        raise TempFail("table key contains CR or LF")
    if len(key.encode("utf-8", "surrogateescape")) > TABLE_KEY_MAX:
        raise TempFail("table key too long")
    if service == "auth":
        user, sep, password = key.partition(":")
        return user.lower() + sep + password
    return key.lower()


class Table(abc.ABC):
    """One declared table. Subclasses: static, file, db, getpwnam, proc."""

    def __init__(self, name: str) -> None:
        self.name = name

    #: the services this table can answer; proc tables fill it from ``register|``
    services: frozenset[str] = frozenset(SERVICES)

    async def start(self) -> None:  # noqa: B027
        """Open files, start processes. Called once in lka before serving."""

    async def close(self) -> None:  # noqa: B027
        """Release what start() acquired."""

    @abc.abstractmethod
    async def check(self, service: str, key: str) -> bool: ...

    @abc.abstractmethod
    async def lookup(self, service: str, key: str) -> str | None: ...

    async def fetch(self, service: str) -> str | None:
        raise TempFail(f"table {self.name}: fetch not supported")

    async def update(self) -> None:  # noqa: B027
        """Reload; the default has nothing to reload."""
