"""When an envelope is tried next: OpenSMTPD's retry schedule (docs/queue.md §5).

Attempt n of an envelope created at ``ctime`` is due at ``ctime + base * n * n``
(base: the queue's retry interval); an attempt that comes late skips the
slots that have passed. Shared by the scheduler, which keeps the times, and
the queue, which warns about delayed mail.
"""

from __future__ import annotations


def next_attempt(ctime: float, retry: int, base: int, now: float) -> float:
    """The first slot after ``now`` from retry ``retry`` on."""
    n = max(retry, 1)
    while ctime + base * n * n <= now:
        n += 1
    return ctime + base * n * n
