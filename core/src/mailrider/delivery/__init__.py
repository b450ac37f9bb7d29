"""Local delivery: maildir, mbox, mda pipe and LMTP.

Everything here runs in a process that already runs as the recipient (a
child the parent forked, or its long-lived delivery worker); it is
synchronous and blocking. Each method reads the queued message through a
file descriptor it neither moves nor closes, and reports failure by raising
(or, for LMTP, returning per recipient) :class:`~mailrider.errors.TempFail` or
:class:`~mailrider.errors.PermFail` with the reply they imply.

The package imports none of its modules: each user imports the one it
needs, so that the long-lived delivery worker loads maildir and mbox and
not the mda and LMTP machinery (docs/performance.md §4).
"""
