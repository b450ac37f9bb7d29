"""A small cache of answers kept for a few seconds, with a bound on entries.

The parent keeps its password and group database answers this way
(``proc/parent_mda.UserCache``) and lka the parent's ``~/.forward`` answers
(``proc/lka.py``): under load the same few users are asked about thousands
of times a second, and an answer a couple of seconds old is as good as a
fresh one (a user removed, regrouped or given a new ``~/.forward`` is seen
within the TTL). Entries older than the TTL are never used; when the cache
is full the expired entries go first, then the oldest.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class TtlCache(Generic[K, V]):
    def __init__(self, ttl: float, size: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.size = size
        self.clock = clock
        self._entries: dict[K, tuple[float, V]] = {}
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: K) -> tuple[bool, V | None]:
        """(True, value) for an entry younger than the TTL, else (False, None)."""
        found = self._entries.get(key)
        if found is not None and 0 <= self.clock() - found[0] < self.ttl:
            self.hits += 1
            return True, found[1]
        self.misses += 1
        return False, None

    def put(self, key: K, value: V) -> None:
        now = self.clock()
        if len(self._entries) >= self.size and key not in self._entries:
            self._entries = {k: v for k, v in self._entries.items()
                             if 0 <= now - v[0] < self.ttl}
            if len(self._entries) >= self.size:
                self._entries.pop(next(iter(self._entries)))
        self._entries.pop(key, None)  # re-inserted last: the oldest stay first
        self._entries[key] = (now, value)

    def discard(self, key: K) -> None:
        self._entries.pop(key, None)
