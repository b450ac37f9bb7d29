"""Run-time profiling switches (``mailriderctl profile imsg|queue``).

When ``imsg`` profiling is on, every IPC channel counts the messages it
handles per type and the time spent handling them; the counters appear in
``show stats`` as ``profile.imsg.<type>.count`` and ``.usec``; and every
request a process makes is timed from its sending to its answer, as
``profile.rtt.<type>><peer>.count`` and ``.usec`` (the wait the caller
sees: the peer's queueing and scheduling as well as its work). ``queue``
profiling counts the time spent in spool commits.
"""

from __future__ import annotations

_enabled: set[str] = set()
counters: dict[str, int] = {}


#: what ``profile`` takes; "all" is every one of them
SUBSYSTEMS = ("imsg", "queue")


def enable(what: str, on: bool) -> None:
    names = SUBSYSTEMS if what == "all" else (what,)
    if on:
        _enabled.update(names)
    else:
        _enabled.difference_update(names)


def on(what: str) -> bool:
    return what in _enabled


def add(key: str, usec: int) -> None:
    counters[f"{key}.count"] = counters.get(f"{key}.count", 0) + 1
    counters[f"{key}.usec"] = counters.get(f"{key}.usec", 0) + usec
