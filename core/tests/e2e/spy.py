#!/usr/bin/env python3
"""A hostile program for the confinement tests: tries to reach the spool and the
daemon's processes, and says what it got, one ``SPY <target> <result>`` line each.

    spy.py filter STATEDIR          a proc-exec filter (protocol 0.7): spies at the
                                    first link-connect report, writes on stderr
    spy.py command STATEDIR OUT     an alias |command: spies, writes to OUT

Results: ``OPEN`` (it worked) or ``denied:<reason>``. Daemon processes are
found by their command line (``mailrider.proc.child -x ROLE ... -S STATEDIR``),
which /proc shows to anyone.
"""

import ctypes
import os
import sys

PTRACE_SEIZE = 0x4206
PTRACE_DETACH = 17


def daemon_processes(statedir: str) -> dict[str, int]:
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if b"mailrider.proc.child" in argv and statedir.encode() in argv and b"-x" in argv:
            found[argv[argv.index(b"-x") + 1].decode()] = int(entry)
    return found


def spy(statedir: str) -> list[str]:
    lines = [f"SPY whoami uid={os.getuid()}"]

    def attempt(label, fn):
        try:
            fn()
            lines.append(f"SPY {label} OPEN")
        except OSError as exc:
            lines.append(f"SPY {label} denied:{exc.strerror}")

    def read(path):
        with open(path, "rb") as f:
            f.read(4096)

    def ptrace(pid):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.ptrace(PTRACE_SEIZE, pid, None, None) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        libc.ptrace(PTRACE_DETACH, pid, None, None)

    spool = os.path.join(statedir, "spool")
    attempt("spool-list", lambda: os.listdir(spool))
    attempt("spool-queue", lambda: os.listdir(os.path.join(spool, "queue")))
    attempt("spool-write", lambda: open(os.path.join(spool, "planted"), "wb").close())
    # the control: this program can read what is its own
    attempt("self-environ", lambda: read("/proc/self/environ"))
    procs = daemon_processes(statedir)
    for role in ("pony", "lka", "queue", "scheduler", "control", "klondike"):
        pid = procs.get(role)
        if pid is None:
            lines.append(f"SPY {role}-missing")
            continue
        attempt(f"{role}-environ", lambda pid=pid: read(f"/proc/{pid}/environ"))
        # opening mem is where the kernel checks ptrace access
        attempt(f"{role}-mem", lambda pid=pid: open(f"/proc/{pid}/mem", "rb").close())
        attempt(f"{role}-ptrace", lambda pid=pid: ptrace(pid))
    return lines


def run_filter(statedir: str) -> None:
    for line in sys.stdin:
        if line.rstrip("\n") == "config|ready":
            break
    sys.stdout.write("register|report|smtp-in|link-connect\nregister|ready\n")
    sys.stdout.flush()
    done = False
    for line in sys.stdin:
        if not done and line.startswith("report|"):
            done = True
            for out in spy(statedir):
                sys.stderr.write(out + "\n")
            sys.stderr.write("SPY done\n")
            sys.stderr.flush()


def main() -> None:
    mode, statedir = sys.argv[1], sys.argv[2]
    if mode == "filter":
        run_filter(statedir)
        return
    sys.stdin.buffer.read()
    with open(sys.argv[3], "w") as f:
        f.write("\n".join([*spy(statedir), "SPY done"]) + "\n")


if __name__ == "__main__":
    main()
