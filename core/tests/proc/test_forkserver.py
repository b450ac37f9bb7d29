"""The start-up server (proc/forkserver.py): it checks every request, refuses
a malformed one without forking, and holds no configuration.

The children it forks, compared with fresh ones under a real daemon, are in
core/tests/e2e/test_e2e_forkserver.py.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from mailrider.config import parse_string
from mailrider.proc import child, common, forkserver
from mailrider.proc.forkserver import RequestError, parse_request

MARKER = "fork-server-must-not-see-" + "b7c1e0"


def _sockets(n: int) -> tuple[list[int], list[socket.socket]]:
    socks = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(n)]
    return [s.fileno() for s in socks], socks


def _good(role: str = "scheduler") -> dict[str, object]:
    return {"role": role, "fds": sorted(forkserver.peer_names(role)),
            "options": ["-S", "/tmp/nowhere", "-d"]}


def test_a_good_request_is_taken() -> None:
    for role in common.ROLES:
        req = _good(role)
        names = list(req["fds"])  # type: ignore[call-overload]
        if role == "pony":
            names += ["listener:0", "listener:3"]
        if role == "control":
            names += ["metrics:0"]
        req["fds"] = names
        fds, socks = _sockets(len(names))
        parsed = parse_request(json.dumps(req).encode(), fds, 0)
        assert parsed.role == role and [n for n, _ in parsed.fds] == names
        assert [fd for _, fd in parsed.fds] == fds
        for s in socks:
            s.close()


BAD: list[tuple[str, object, int | None]] = [
    ("not JSON", b"\xff{", None),
    ("want exactly role, fds and options", {"role": "lka", "fds": []}, None),
    ("want exactly role, fds and options", {**_good(), "env": {}}, None),
    ("unknown role", {**_good(), "role": "parent"}, None),
    ("unknown role", {**_good(), "role": ["lka"]}, None),
    ("fds: want a list of names", {**_good(), "fds": "parent"}, None),
    # one name for each descriptor passed
    ("3 descriptor names for 4 descriptors", _good(), 4),
    ("a descriptor name twice", {**_good(), "fds": ["parent", "parent", "queue"]}, 3),
    # exactly the peers of that role: not another's, none missing
    ("want its peers", {**_good(), "fds": ["parent", "control", "pony"]}, 3),
    ("want its peers", {**_good(), "fds": ["parent", "control"]}, 2),
    # listeners for pony only, metrics for control only, decimal indexes
    ("want its peers", {**_good(), "fds": [*_good()["fds"], "listener:0"]},  # type: ignore[misc]
     4),
    ("want its peers", {**_good("pony"), "fds": [*_good("pony")["fds"],  # type: ignore[misc]
                                                 "listener:x"]}, None),
    ("want its peers", {**_good("pony"), "fds": [*_good("pony")["fds"],  # type: ignore[misc]
                                                 "listener:01"]}, None),
    ("want its peers", {**_good("pony"), "fds": [*_good("pony")["fds"],  # type: ignore[misc]
                                                 "metrics:0"]}, None),
    ("options: want a list of strings", {**_good(), "options": "-S /x"}, None),
    ("options: want a list of strings", {**_good(), "options": ["-S", "/x\0"]}, None),
    ("options: want a list of strings", {**_good(), "options": ["-v"] * 600}, None),
    # what the child would refuse is refused before any fork
    ("options: unknown option '-x'", {**_good(), "options": ["-S", "/x", "-x"]}, None),
    ("options: -S is missing", {**_good(), "options": ["-d"]}, None),
]


@pytest.mark.parametrize(("error", "request_", "nfds"), BAD)
def test_a_malformed_request_is_refused(error: str, request_: object, nfds: int | None) -> None:
    data = request_ if isinstance(request_, bytes) else json.dumps(request_).encode()
    if nfds is None:
        names = request_.get("fds") if isinstance(request_, dict) else None
        nfds = len(names) if isinstance(names, list) else 0
    fds, socks = _sockets(nfds)
    try:
        with pytest.raises(RequestError, match=re.escape(error)):
            parse_request(data, fds, 0)
    finally:
        for s in socks:
            s.close()


def test_a_truncated_request_or_a_descriptor_that_is_no_socket_is_refused() -> None:
    fds, socks = _sockets(3)
    data = json.dumps(_good()).encode()
    for flag in (socket.MSG_TRUNC, socket.MSG_CTRUNC):
        with pytest.raises(RequestError, match="truncated"):
            parse_request(data, fds, flag)
    r, w = os.pipe()
    try:
        with pytest.raises(RequestError, match="not a socket"):
            parse_request(data, [fds[0], fds[1], r], 0)
    finally:
        os.close(r)
        os.close(w)
        for s in socks:
            s.close()


def test_the_descriptor_variables_are_those_the_children_read() -> None:
    from mailrider import metrics

    assert forkserver.METRICS_ENV == metrics.METRICS_ENV
    pony = (pathlib.Path(forkserver.__file__).parent / "pony.py").read_text()
    assert f'os.environ.get("{forkserver.LISTENERS_ENV}"' in pony


def test_the_server_preloads_only_what_every_role_preloads() -> None:
    shared = set(forkserver.shared_modules())
    assert {"asyncio.unix_events", "json", "mailrider.ipc.messages", "mailrider.config.model",
            "mailrider.proc.child", "mailrider.proc.common"} <= shared
    for role in common.ROLES:
        assert shared <= set(child.role_module_names(role)), role
    # no role's own code: each child imports it after the fork
    assert not any(n.startswith(tuple(f"mailrider.proc.{r}" for r in common.ROLES))
                   for n in shared)


# -- a real server -----------------------------------------------------------------


@pytest.fixture
def server() -> Iterator[forkserver.ForkServer]:
    # the test process holds a configuration (with MARKER in it); the server must not
    config = parse_string(f'table t {{ "{MARKER}" = "x" }}\n', file="<test>")
    assert MARKER in repr(config.tables["t"])
    srv = forkserver.ForkServer()
    try:
        yield srv
    finally:
        srv.close()
    assert srv.proc.returncode == 0


def _fds(pid: int) -> list[str]:
    out = []
    for fd in sorted(os.listdir(f"/proc/{pid}/fd"), key=int):
        target = os.readlink(f"/proc/{pid}/fd/{fd}")
        out.append(f"{fd}:{target.partition(':')[0] if target.startswith('socket:') else target}")
    return out


def _ask(srv: forkserver.ForkServer, data: bytes, fds: list[int]) -> dict[str, object]:
    socket.send_fds(srv.sock, [data], fds)
    answer = json.loads(srv.sock.recv(4096))
    assert isinstance(answer, dict)
    return answer


def test_the_server_refuses_malformed_requests_and_keeps_nothing(
        server: forkserver.ForkServer) -> None:
    # the first answer says the server is through its imports
    assert "error" in _ask(server, b"{}", [])
    pid = server.proc.pid
    before = _fds(pid)
    # its standard streams and its socket: nothing else of the parent's
    assert [f.partition(":")[0] for f in before[:3]] == ["0", "1", "2"]
    assert len(before) == 4 and before[3].endswith(":socket")
    for error, request_, nfds in BAD:
        data = request_ if isinstance(request_, bytes) else json.dumps(request_).encode()
        if nfds is None:
            names = request_.get("fds") if isinstance(request_, dict) else None
            nfds = len(names) if isinstance(names, list) else 0
        fds, socks = _sockets(nfds)
        answer = _ask(server, data, fds)
        assert error in str(answer.get("error")), (error, answer)
        assert "pid" not in answer
        for s in socks:
            s.close()
    # a pipe instead of a socket
    r, w = os.pipe()
    fds, socks = _sockets(2)
    answer = _ask(server, json.dumps(_good()).encode(), [*fds, r])
    assert "not a socket" in str(answer.get("error"))
    os.close(r)
    os.close(w)
    for s in socks:
        s.close()
    # every descriptor of the refused requests is closed again, and no child was forked
    assert _fds(pid) == before
    kids = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True,
                          text=True).stdout.split()
    assert kids == []
    assert server.proc.poll() is None


def _memory_holds(pid: int, needle: bytes) -> tuple[bool, int]:
    """Whether ``needle`` is anywhere in the readable memory of ``pid``; and the bytes read."""
    read = 0
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", 0) as mem:
        for line in maps:
            addr, perms = line.split()[:2]
            if "r" not in perms or line.rstrip().endswith(("[vvar]", "[vsyscall]")):
                continue
            start, end = (int(x, 16) for x in addr.split("-"))
            try:
                mem.seek(start)
                chunk = mem.read(end - start)
            except (OSError, OverflowError, ValueError):
                continue
            read += len(chunk)
            if needle in chunk:
                return True, read
    return False, read


@pytest.mark.skipif(os.geteuid() != 0, reason="reads another process's memory")
def test_the_server_holds_no_configuration(server: forkserver.ForkServer) -> None:
    assert "error" in _ask(server, b"{}", [])
    pid = server.proc.pid
    found, read = _memory_holds(pid, MARKER.encode())
    assert not found
    # the scan read the server's memory: its interpreter and modules
    assert read > 5_000_000
    # and it finds the marker where it is: an interpreter given it on stdin
    holder = subprocess.Popen([sys.executable, "-c", "import sys; s = sys.stdin.readline(); "
                               "print('ok', flush=True); sys.stdin.read()"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert holder.stdin is not None and holder.stdout is not None
        holder.stdin.write(MARKER.encode() + b"\n")
        holder.stdin.flush()
        assert holder.stdout.readline() == b"ok\n"
        assert _memory_holds(holder.pid, MARKER.encode())[0]
    finally:
        holder.kill()
        holder.wait()


def test_the_server_exits_when_the_parent_closes_its_socket() -> None:
    srv = forkserver.ForkServer()
    t0 = time.monotonic()
    srv.close()
    assert srv.proc.returncode == 0 and time.monotonic() - t0 < 30


def test_the_server_wants_its_socket() -> None:
    res = subprocess.run([sys.executable, "-m", "mailrider.proc.forkserver"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "usage" in res.stderr
