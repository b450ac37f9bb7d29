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
- each delivery is kept as lka's typed :class:`~mailrider.queue.envelope.Delivery`
  (a slotted dataclass), its strings shared across deliveries, so the bound
  is on a few hundred bytes per delivery.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

from mailrider.queue.envelope import Delivery

#: what makes two deliveries the same (besides the dest, compared without case)
_KEY_FIELDS = ("dispatcher", "method", "arg", "user", "local_user")
#: deliveries expanded (duplicates included) per delivery held, at most
EXPANSION_FACTOR = 10
_NAMES = tuple(f.name for f in dataclasses.fields(Delivery))


class Deliveries:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        #: deliveries lka returned for this transaction, duplicates included
        self.expanded = 0
        self._seen: set[tuple[Any, ...]] = set()
        self._strings: dict[str, str] = {}
        #: (index of the recipient that brought it, delivery)
        self._items: list[tuple[int, Delivery]] = []

    def __len__(self) -> int:
        return len(self._items)

    def exhausted(self) -> bool:
        """Has this transaction had all the expansions it may have?"""
        return self.expanded >= self.limit * EXPANSION_FACTOR

    def add(self, rcpt_index: int, deliveries: list[Delivery]) -> bool:
        """Keep the new ones among ``deliveries``; False (nothing kept) past the limit."""
        self.expanded += len(deliveries)  # lka's work, whether kept or not
        if self.expanded > self.limit * EXPANSION_FACTOR:
            return False
        new: list[tuple[tuple[Any, ...], Delivery]] = []
        keys: set[tuple[Any, ...]] = set()
        for d in deliveries:
            if not isinstance(d, Delivery):
                continue
            key = (d.dest.lower(), *(getattr(d, f) for f in _KEY_FIELDS))
            if key in self._seen or key in keys:
                continue
            keys.add(key)
            new.append((key, d))
        if len(self._items) + len(new) > self.limit:
            return False
        for key, d in new:
            self._seen.add(key)
            self._items.append((rcpt_index, Delivery(
                *(self._shared(getattr(d, n)) for n in _NAMES))))
        return True

    def _shared(self, value: Any) -> Any:
        if isinstance(value, str):
            return self._strings.setdefault(value, value)
        return value

    def __iter__(self) -> Iterator[tuple[int, Delivery]]:
        """(recipient index, delivery) in the order they were added."""
        return iter(self._items)
