"""In-memory tables: ``table NAME { a, b }`` and ``table NAME { k = v }``.

A table is either a *list* (check looks at the items) or a *mapping* (check
looks at the keys, lookup returns the value). Keys of a mapping are stored
lower-cased because lookup keys arrive lower-cased; list items keep their
spelling (a regex entry must not be altered) and are compared
case-insensitively. :class:`MemoryTable` is shared with the file backend,
which only adds reading the contents from disk.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from mailrider.table.base import SERVICES, Table
from mailrider.table.match import EntryIndex

#: built-in tables never answer ``auth``: the caller falls back to a
#: ``credentials`` lookup and checks the hash itself (docs/table-protocol.md §8)
BUILTIN_SERVICES = frozenset(SERVICES) - {"auth"}


class MemoryTable(Table):
    """A list or mapping held in memory."""

    services = BUILTIN_SERVICES

    def __init__(self, name: str, delim: str = "+") -> None:
        super().__init__(name)
        self.delim = delim
        self._mapping: dict[str, str] | None = None
        self._index = EntryIndex(())
        self._cursor = 0

    @property
    def is_mapping(self) -> bool:
        return self._mapping is not None

    def _set_contents(
        self, items: Iterable[str] | None = None, mapping: Mapping[str, str] | None = None
    ) -> None:
        if mapping is not None:
            lowered = {k.lower(): v for k, v in mapping.items()}
            self._mapping = lowered
            self._index = EntryIndex(lowered, self.delim)
        else:
            self._mapping = None
            self._index = EntryIndex(items or (), self.delim)
        self._cursor = 0

    def __len__(self) -> int:
        return len(self._index)

    async def check(self, service: str, key: str) -> bool:
        if service == "auth":
            return False
        return self._index.check(service, key)

    async def lookup(self, service: str, key: str) -> str | None:
        if self._mapping is None:
            return None
        return self._mapping.get(key.lower() if service != "auth" else key)

    async def fetch(self, service: str) -> str | None:
        entries = self._index.entries
        if not entries:
            return None
        value = entries[self._cursor % len(entries)]
        self._cursor = (self._cursor + 1) % len(entries)
        return value


class StaticTable(MemoryTable):
    """A table given inline in the configuration."""

    def __init__(
        self,
        name: str,
        items: Iterable[str] | None = None,
        mapping: Mapping[str, str] | None = None,
        delim: str = "+",
    ) -> None:
        super().__init__(name, delim)
        self._set_contents(items, mapping)
