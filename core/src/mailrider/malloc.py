"""The C allocator's thresholds for big, short-lived buffers (glibc).

Every socket read of asyncio's selector transport allocates its full read
size (256 KiB) and shrinks it to what arrived, and a message passes through
buffers of its own size (the DATA reader's spans, the spool writes). glibc
serves any allocation above ``M_MMAP_THRESHOLD`` (128 KiB at start) with a
fresh ``mmap``: each read was an ``mmap``, an ``mremap`` and a ``munmap``,
page faults on every touched page and, in a process with threads, TLB
shootdowns on the other core (measured in pony: about 7 of each per
message, 36 page faults per 100 KB message). glibc raises the threshold by
itself only when it frees an mmapped block larger than the threshold, which
a buffer shrunk below it never is.

:func:`tune` sets the threshold above the largest read, so those buffers
come from the heap and are reused, and the trim threshold so that freeing
them does not give the pages back to the kernel only to fault them in again
on the next read. The memory kept is bounded by ``TRIM_THRESHOLD`` of free
heap per process. Elsewhere (musl's mallopt does nothing, the BSDs have
none) it is a no-op.
"""

from __future__ import annotations

import ctypes
import sys

#: glibc's mallopt(3) parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

#: above asyncio's read size (256 KiB) and a BDAT chunk (limits.BDAT_CHUNK_SIZE)
MMAP_THRESHOLD = 2 * 1024 * 1024
#: free heap kept for the next buffers instead of being trimmed
TRIM_THRESHOLD = 2 * MMAP_THRESHOLD


def tune() -> bool:
    """Set the thresholds of this process; True if the C library took them."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # mallopt returns 1 on success, 0 on error (musl: always 0)
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
                and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
