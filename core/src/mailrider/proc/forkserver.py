"""The start-up server: one fresh interpreter that forks every child (docs/performance.md §1).

mailriderd starts it (``python -m mailrider.proc.forkserver``) with nothing
but one end of a private ``SOCK_SEQPACKET`` socketpair: no configuration, no
key, no other descriptor. It imports the modules every child imports anyway
(:func:`shared_modules`: asyncio, the IPC, the configuration model...),
freezes them out of the garbage collector's reach (``gc.freeze``), and then
only forks, on the parent's request, one child at a time. The children's
copies of those pages stay shared with each other (copy on write), where
seven fresh interpreters each paid for their own.

A request is one datagram: a JSON object ``{"role", "fds", "options"}`` and
the descriptors it names passed with ``SCM_RIGHTS``. Every field is checked
(:func:`parse_request`): the role, the name of each descriptor (exactly the
peers that role has, listeners for pony only, metrics sockets for control
only), each descriptor being a socket, and the options as the child will
read them. A malformed request is refused with ``{"error": ...}`` and its
descriptors closed. The answer to a good one is ``{"pid": N}``.

The child is forked twice (the middle process exits at once), and the
parent is a child subreaper while it starts them, so each child ends up the
parent's own child, as a fresh one is: the parent reaps and supervises it.
The child then closes every descriptor but its standard streams and those
of the request, names its descriptors as ``mailrider.proc.child`` expects
them (``--fds``, ``MAILRIDER_LISTENERS``, the metrics variable), shows that
command line in ``ps``, and runs :func:`mailrider.proc.child.main`: it reads
the configuration, imports its role's modules and confines itself exactly as
a freshly executed child does.

Trade-off: every child shares the server's address-space layout (one ASLR
draw and one string-hash seed for the six, where fresh interpreters each get
their own). ``MAILRIDER_CHILD_START=exec`` starts each child as a fresh
interpreter instead (OpenSMTPD re-executes its children for that reason).
"""

from __future__ import annotations

import ctypes
import gc
import importlib
import json
import os
import signal
import socket
import stat
import subprocess
import sys
from dataclasses import dataclass

from mailrider.proc import common, confine

#: the environment variable choosing how children start: "fork" (the
#: default: through this server) or "exec" (each a fresh interpreter)
START_ENV = "MAILRIDER_CHILD_START"

#: the variables naming pony's listeners and control's metrics sockets
#: (mailrider.metrics.METRICS_ENV; not imported: no child but control loads it)
LISTENERS_ENV = "MAILRIDER_LISTENERS"
METRICS_ENV = "MAILRIDER_METRICS_FDS"

#: a request's JSON and descriptors at most
MAX_REQUEST = 16384
MAX_FDS = 64
MAX_OPTIONS = 512
#: the server's command line is padded to this many bytes, which a child
#: overwrites with its own command line (what ps shows, what tests look for)
TITLE_ROOM = 4096


class RequestError(ValueError):
    """A request the server refuses."""


@dataclass
class Request:
    role: str
    #: (name, descriptor) in the order passed
    fds: list[tuple[str, int]]
    options: list[str]


def peer_names(role: str) -> set[str]:
    """The channel descriptors a child of ``role`` gets: the parent and its links."""
    names = {"parent"}
    for a, b in common.LINKS:
        if a == role:
            names.add(b)
        elif b == role:
            names.add(a)
    if role == "pony":
        names.add("klondike-sign")
    if role == "klondike":
        names.add("pony-sign")
    return names


def _extra_kind(role: str, name: str) -> str | None:
    """``listener`` or ``metrics`` for a name a role may also get, else None."""
    kind, sep, index = name.partition(":")
    if not sep or not index.isdigit() or len(index) > 5 or index != str(int(index)):
        return None
    if (kind, role) in (("listener", "pony"), ("metrics", "control")):
        return kind
    return None


def parse_request(data: bytes, fds: list[int], flags: int) -> Request:
    """Check one request (the datagram, its descriptors, recvmsg's flags);
    RequestError saying why when it is refused."""
    if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
        raise RequestError("truncated request")
    try:
        obj = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise RequestError("not JSON") from None
    if not isinstance(obj, dict) or set(obj) != {"role", "fds", "options"}:
        raise RequestError("want exactly role, fds and options")
    role, names, options = obj["role"], obj["fds"], obj["options"]
    if not isinstance(role, str) or role not in common.ROLES:
        raise RequestError("unknown role")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise RequestError("fds: want a list of names")
    if len(names) != len(fds):
        raise RequestError(f"{len(names)} descriptor names for {len(fds)} descriptors")
    if len(set(names)) != len(names):
        raise RequestError("a descriptor name twice")
    peers = {n for n in names if _extra_kind(role, n) is None}
    if peers != peer_names(role):
        raise RequestError(f"descriptors of {role}: want its peers, got {sorted(peers)[:20]}")
    if (not isinstance(options, list) or len(options) > MAX_OPTIONS
            or not all(isinstance(o, str) and "\0" not in o for o in options)):
        raise RequestError("options: want a list of strings")
    try:
        common.child_options(options)
    except ValueError as exc:
        raise RequestError(f"options: {exc}") from None
    for fd in fds:
        if not stat.S_ISSOCK(os.fstat(fd).st_mode):
            raise RequestError("a descriptor is not a socket")
    return Request(role, list(zip(names, fds, strict=True)), options)


def shared_modules() -> list[str]:
    """What every child imports before it is confined: the common part of
    the role preloads (:data:`mailrider.proc.child.ROLE_MODULES`)."""
    from mailrider.proc import child

    lists = [child.role_module_names(role) for role in common.ROLES]
    common_set = set(lists[0]).intersection(*lists[1:])
    return [name for name in lists[0] if name in common_set]


def preload_shared() -> None:
    """Import :func:`shared_modules` (what the server holds for its children)."""
    for name in shared_modules():
        try:
            importlib.import_module(name)
        except ImportError:
            pass  # the child's own preload says so, in the log


# -- the server -------------------------------------------------------------------


@dataclass
class Start:
    """What the forked child runs once it is out of the server's loop."""

    request: Request
    server_sock: socket.socket


def _fork_child(req: Request, sock: socket.socket) -> int | Start:
    """Fork the child twice over (it is re-parented to the parent, the
    subreaper); in the server, its pid; in the child, what it runs."""
    rfd, wfd = os.pipe()
    middle = os.fork()
    if middle == 0:
        # the middle process: fork the child, say its pid, exit whatever happened
        pid = -1
        try:
            os.close(rfd)
            pid = os.fork()
            if pid:
                try:
                    os.write(wfd, str(pid).encode())
                except OSError:
                    os.kill(pid, signal.SIGKILL)  # never a child the parent does not know
                    raise
        finally:
            if pid != 0:
                os._exit(0 if pid > 0 else 1)
        os.close(wfd)
        return Start(req, sock)
    os.close(wfd)
    try:
        with os.fdopen(rfd, "rb") as f:
            text = f.read(32)
    finally:
        os.waitpid(middle, 0)
    if not text.isdigit():
        raise OSError("the fork failed")
    return int(text)


def _reply(sock: socket.socket, obj: dict[str, object]) -> bool:
    """Answer the parent; False when it is gone (the server then exits)."""
    try:
        sock.send(json.dumps(obj).encode())
    except OSError:
        return False
    return True


def serve(sock: socket.socket) -> Start | None:
    """Fork on request until the parent closes the socket (None); in a
    forked child, returns what that child runs."""
    while True:
        try:
            data, fds, flags, _ = socket.recv_fds(sock, MAX_REQUEST, MAX_FDS)
        except OSError:
            return None
        if not data and not fds:
            return None  # the parent closed its end
        try:
            req = parse_request(data, fds, flags)
            result = _fork_child(req, sock)
        except (RequestError, OSError) as exc:
            for fd in fds:
                os.close(fd)
            if not _reply(sock, {"error": str(exc)[:200]}):
                return None
            continue
        if isinstance(result, Start):
            return result
        for fd in fds:
            os.close(fd)
        if not _reply(sock, {"pid": result}):
            return None  # the child finds its peers gone and exits


def _close_other_fds(keep: set[int]) -> None:
    """Close every descriptor but ``keep``: a child holds its own and no more."""
    try:
        open_fds = [int(x) for x in os.listdir("/proc/self/fd")]
    except OSError:
        open_fds = list(range(3, os.sysconf("SC_OPEN_MAX")))
    for fd in open_fds:
        if fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass


def set_cmdline(args: list[str]) -> None:
    """Write ``args`` over this process's command line (``/proc/self/cmdline``,
    what ``ps`` shows), within the room the server's own command line left."""
    try:
        with open("/proc/self/stat", "rb") as f:
            fields = f.read().rpartition(b")")[2].split()
        start, end = int(fields[45]), int(fields[46])  # arg_start, arg_end (proc(5))
    except (OSError, IndexError, ValueError):
        return
    room = end - start
    if room <= 1:
        return
    text = b"\0".join(a.encode("utf-8", "surrogateescape") for a in args)[:room - 1]
    ctypes.memmove(start, text.ljust(room, b"\0"), room)


def run_child(start: Start) -> int:
    """In a forked child: take the request's descriptors as a fresh child's
    and run :func:`mailrider.proc.child.main`."""
    from mailrider.proc import child

    req = start.request
    start.server_sock.close()
    _close_other_fds({0, 1, 2} | {fd for _, fd in req.fds})
    peers = [(n, fd) for n, fd in req.fds if _extra_kind(req.role, n) is None]
    listeners = [(n.partition(":")[2], fd) for n, fd in req.fds if n.startswith("listener:")]
    metric = [str(fd) for n, fd in req.fds if n.startswith("metrics:")]
    os.environ[LISTENERS_ENV] = ",".join(f"{i}:{fd}" for i, fd in listeners)
    os.environ[METRICS_ENV] = ",".join(metric)
    argv = ["-x", req.role, "--fds", ",".join(f"{n}={fd}" for n, fd in peers), *req.options]
    sys.argv = [sys.argv[0], *argv]
    set_cmdline([sys.executable, "-m", "mailrider.proc.child", *argv])
    return child.main(argv)


def main() -> int:
    if len(sys.argv) != 3 or not sys.argv[1].isdigit():
        print("usage: python -m mailrider.proc.forkserver FD PADDING", file=sys.stderr)
        return 2
    sock = socket.socket(fileno=int(sys.argv[1]))
    if sock.type != socket.SOCK_SEQPACKET:
        print("mailrider.proc.forkserver: not a SOCK_SEQPACKET socket", file=sys.stderr)
        return 2
    common.set_title("fork")
    confine.set_nondumpable()
    preload_shared()
    gc.collect()
    gc.freeze()  # what the children share is never touched by their collections
    start = serve(sock)
    if start is None:
        return 0
    return run_child(start)


# -- the parent's side --------------------------------------------------------------


class ForkServerError(OSError):
    """The server could not start a child (or is gone)."""


class ForkServer:
    """The parent's handle on the start-up server, used while it starts the children."""

    def __init__(self) -> None:
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock = mine
        # the server imports before it answers; a hung one fails the start over to exec
        self.sock.settimeout(60)
        env = dict(os.environ)
        env.pop(LISTENERS_ENV, None)
        env.pop(METRICS_ENV, None)
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mailrider.proc.forkserver", str(theirs.fileno()),
                 "." * TITLE_ROOM], pass_fds=[theirs.fileno()], close_fds=True, env=env)
        except OSError:
            mine.close()
            raise
        finally:
            theirs.close()

    def spawn(self, role: str, fds: list[tuple[str, int]], options: list[str]) -> int:
        """Have the server fork a child of ``role`` with these named descriptors;
        its pid (the parent's child once the server answered)."""
        data = json.dumps({"role": role, "fds": [n for n, _ in fds],
                           "options": options}).encode()
        try:
            socket.send_fds(self.sock, [data], [fd for _, fd in fds])
            answer = self.sock.recv(4096)
        except OSError as exc:
            raise ForkServerError(f"fork server: {exc}") from None
        try:
            obj = json.loads(answer.decode())
        except (UnicodeDecodeError, ValueError):
            obj = None
        if not isinstance(obj, dict):
            raise ForkServerError("fork server: no answer")
        pid = obj.get("pid")
        if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 1:
            raise ForkServerError(f"fork server: {str(obj.get('error', 'bad answer'))[:200]}")
        return pid

    def close(self) -> None:
        """Let the server go: it exits when its socket closes."""
        self.sock.close()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def wanted() -> bool:
    """Whether children start through the server (Linux, not
    ``MAILRIDER_CHILD_START=exec``)."""
    return os.environ.get(START_ENV, "fork") != "exec" and sys.platform.startswith("linux")


if __name__ == "__main__":
    sys.exit(main())
