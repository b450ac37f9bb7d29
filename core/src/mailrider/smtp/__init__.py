"""mailrider.smtp: sans-I/O SMTP machines, replies, paths and trace fields.

Nothing in this package performs I/O: the process modules own sockets, timers and TLS.
Import the pieces from their modules (``smtp.reply``, ``smtp.server``, ...): this
package imports nothing itself, so a process that needs only replies (every
process, through ``ipc.messages``) does not load the server (docs/performance.md §1).
"""
