"""pony: the deliveries of one SMTP transaction, bounded and de-duplicated.

Each accepted RCPT brings the deliveries lka expanded it to (aliases, virtual
tables, forwards). They are kept until the commit turns them into envelopes,
so an attacker sending many recipients to a large alias would otherwise make
pony hold recipients x members dictionaries. Invariants:

- a delivery equal to one already in the transaction (same address, action,
  method, argument and users, as lka's own de-duplication within a
  recipient) is dropped: the first recipient that brought it keeps it;
- at most ``limit`` deliveries are held; a recipient whose new deliveries do
  not fit is refused whole (none of them is kept);
- lka's work is bounded too: once the recipients of the transaction brought
  ``EXPANSION_FACTOR`` times ``limit`` deliveries, duplicates included,
  further recipients are refused (1000 RCPTs naming sub-addresses of one
  large list would otherwise cost lka a million expansions);
- each delivery is stored as a tuple of values beside a shared tuple of
  field names, its strings shared across deliveries, so the bound is on a
  few hundred bytes per delivery rather than on a dictionary each.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

#: the fields that make two deliveries the same (a dest compared without case)
_KEY_FIELDS = ("dispatcher", "mda-method", "mda-arg", "mda-user", "mda-local-user")
#: deliveries expanded (duplicates included) per delivery held, at most
EXPANSION_FACTOR = 10


class Deliveries:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        #: deliveries lka returned for this transaction, duplicates included
        self.expanded = 0
        self._seen: set[tuple[Any, ...]] = set()
        self._schemas: dict[tuple[str, ...], tuple[str, ...]] = {}
        self._strings: dict[str, str] = {}
        #: (index of the recipient that brought it, field names, values)
        self._items: list[tuple[int, tuple[str, ...], tuple[Any, ...]]] = []

    def __len__(self) -> int:
        return len(self._items)

    def exhausted(self) -> bool:
        """Has this transaction had all the expansions it may have?"""
        return self.expanded >= self.limit * EXPANSION_FACTOR

    def add(self, rcpt_index: int, deliveries: list[dict[str, Any]]) -> bool:
        """Keep the new ones among ``deliveries``; False (nothing kept) past the limit."""
        self.expanded += len(deliveries)  # lka's work, whether kept or not
        if self.expanded > self.limit * EXPANSION_FACTOR:
            return False
        new: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
        keys: set[tuple[Any, ...]] = set()
        for d in deliveries:
            if not isinstance(d, dict):
                continue
            key = (str(d.get("dest", "")).lower(), *(d.get(f) for f in _KEY_FIELDS))
            if key in self._seen or key in keys:
                continue
            keys.add(key)
            new.append((key, d))
        if len(self._items) + len(new) > self.limit:
            return False
        for key, d in new:
            self._seen.add(key)
            names = tuple(d)
            schema = self._schemas.setdefault(names, names)
            values = tuple(self._shared(d[n]) for n in schema)
            self._items.append((rcpt_index, schema, values))
        return True

    def _shared(self, value: Any) -> Any:
        if isinstance(value, str):
            return self._strings.setdefault(value, value)
        return value

    def __iter__(self) -> Iterator[tuple[int, dict[str, Any]]]:
        """(recipient index, delivery) in the order they were added."""
        for index, names, values in self._items:
            yield index, dict(zip(names, values, strict=True))
