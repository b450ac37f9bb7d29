"""``syncfs(2)`` through ctypes, where the C library has it (Linux).

One sync of a whole filesystem flushes every file written to it so far,
with one journal commit: the queue's group commit and batched maildir
deliveries rely on it. Elsewhere :data:`SYNCFS` is None and callers fsync
each file and folder instead.
"""

from __future__ import annotations

import ctypes

#: ``typing.TYPE_CHECKING`` without importing typing (nor collections): this
#: module is loaded by the delivery worker, which imports as little as it can
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable


def _load() -> Callable[[int], int] | None:
    try:
        fn = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


#: syncfs(fd) -> 0, or -1 with errno set; None where there is none
SYNCFS = _load()
