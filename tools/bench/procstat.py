"""What a daemon's processes cost, read from /proc (Linux): CPU time and PSS.

A daemon is its root process and every descendant alive at the time of the
reading. CPU time counts each process's own ``utime + stime`` and its
``cutime + cstime`` (the children it has reaped: a delivery that came and went,
an smtpd that exited), so the difference of two readings is what the daemon
spent between them, short-lived processes included, as long as their parent
reaped them. PSS (``/proc/PID/smaps_rollup``) splits each shared page among
the processes that map it, so per-process figures add up to the daemon's
share of memory; it moves with what else runs (the interpreter's pages are
shared with every other Python on the machine), so the private memory (USS:
pages no other process maps) is printed beside it. Reading another user's
smaps needs root.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

_TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses
    return data.rpartition(")")[2].split()


def descendants(root: int) -> list[int]:
    """``root`` and every process below it, alive now."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        fields = _stat(int(name))
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def cpu_seconds(root: int) -> float:
    """CPU seconds the daemon under ``root`` has used so far (see the module docstring)."""
    total = 0
    for pid in descendants(root):
        fields = _stat(pid)
        if fields is not None:
            # fields 14-17 of stat(5), counted from the state (field 3) at index 0
            total += sum(int(x) for x in fields[11:15])
    return total / _TICK


def cpu_seconds_of(pid: int) -> float:
    """CPU seconds of one process and the children it reaped (0 when gone)."""
    fields = _stat(pid)
    return sum(int(x) for x in fields[11:15]) / _TICK if fields is not None else 0.0


@dataclass
class Memory:
    total_kb: int
    processes: list[tuple[str, int]]  # (name, PSS kB), largest first
    private_kb: int = 0  # USS: Private_Clean + Private_Dirty of every process

    def line(self) -> str:
        by_name: dict[str, list[int]] = {}
        for name, kb in self.processes:
            by_name.setdefault(name, []).append(kb)
        parts = []
        for name, kbs in sorted(by_name.items(), key=lambda x: -sum(x[1])):
            n = f"{len(kbs)}x" if len(kbs) > 1 else ""
            parts.append(f"{n}{name}={sum(kbs) / 1024:.1f}")
        return (f"{self.total_kb / 1024:.1f} MB PSS ({self.private_kb / 1024:.1f} MB private) "
                f"in {len(self.processes)} processes ({' '.join(parts)})")


def pss(root: int) -> Memory:
    """The PSS of every process of the daemon under ``root``."""
    procs = []
    private = 0
    for pid in descendants(root):
        try:
            with open(f"/proc/{pid}/comm") as f:
                name = f.read().strip()
            with open(f"/proc/{pid}/smaps_rollup") as f:
                fields = {k: int(v.split()[0]) for k, _, v in
                          (line.partition(":") for line in f) if v.strip()[:1].isdigit()}
        except (OSError, ValueError):
            continue
        procs.append((name, fields.get("Pss", 0)))
        private += fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0)
    procs.sort(key=lambda p: -p[1])
    return Memory(sum(kb for _, kb in procs), procs, private)


def _name(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return "?"


@dataclass
class CpuSnapshot:
    """Per-process CPU of a daemon at one moment: pid -> (name, parent pid,
    own seconds, reaped children's seconds)."""

    procs: dict[int, tuple[str, int, float, float]]


def cpu_snapshot(root: int) -> CpuSnapshot:
    procs: dict[int, tuple[str, int, float, float]] = {}
    for pid in descendants(root):
        fields = _stat(pid)
        if fields is not None:
            own = (int(fields[11]) + int(fields[12])) / _TICK
            reaped = (int(fields[13]) + int(fields[14])) / _TICK
            procs[pid] = (_name(pid), int(fields[1]), own, reaped)
    return CpuSnapshot(procs)


def cpu_by_name(before: CpuSnapshot, after: CpuSnapshot) -> dict[str, float]:
    """CPU seconds between two snapshots by process name (several processes of
    one name add up). A process that ended and was reaped meanwhile is in its
    parent's reaped time, whole: what it had used before the first snapshot is
    taken off again. The reaped time is shown as ``<parent name>+reaped``."""
    out: dict[str, float] = {}
    for pid, (name, _ppid, own, reaped) in after.procs.items():
        b = before.procs.get(pid)
        if b is not None and b[0] != name:
            b = None  # a pid reused, or a title set meanwhile
        out[name] = out.get(name, 0.0) + own - (b[2] if b else 0.0)
        if reaped or (b and b[3]):
            key = f"{name}+reaped"
            out[key] = out.get(key, 0.0) + reaped - (b[3] if b else 0.0)
    for pid, (_name, ppid, own, reaped) in before.procs.items():
        if pid not in after.procs and ppid in after.procs:
            key = f"{after.procs[ppid][0]}+reaped"
            out[key] = out.get(key, 0.0) - own - reaped
    return {k: v for k, v in out.items() if abs(v) >= 0.0005}


def cpu_line(by_name: dict[str, float], messages: int) -> str:
    """``name=ms`` per message, largest first."""
    parts = [f"{k.removeprefix('mailrider:')}={v * 1000 / messages:.2f}"
             for k, v in sorted(by_name.items(), key=lambda x: -x[1])]
    return " ".join(parts)


@dataclass
class MachineCpu:
    """The whole machine's CPU times (``/proc/stat``'s ``cpu`` line), in ticks."""

    busy: int  # user, nice, system, irq, softirq, steal
    iowait: int
    total: int


def machine_cpu() -> MachineCpu | None:
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return MachineCpu(user + nice + system + irq + softirq + steal, iowait,
                      user + nice + system + idle + iowait + irq + softirq + steal)


def machine_share(before: MachineCpu | None,
                  after: MachineCpu | None) -> tuple[float, float] | None:
    """(busy, iowait) fractions of every core between two readings: what the
    daemon, the load client and everything else together left idle."""
    if before is None or after is None or after.total <= before.total:
        return None
    total = after.total - before.total
    return (after.busy - before.busy) / total, (after.iowait - before.iowait) / total
