"""The backend SDK: read_config, and run() driven over a socketpair in a thread."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mailrider import __version__
from mailrider.table.sdk import Backend, BackendError, ConfigFileError, read_config, run

HANDSHAKE = (
    "config|smtpd-version|7.8.0\nconfig|protocol|0.1\nconfig|tablename|vusers\nconfig|ready\n"
)

# -- read_config ---------------------------------------------------------------


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "backend.conf"
    path.write_text(text)
    return str(path)


def test_read_config_syntax(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "# a comment\n"
        "\n"
        "host db1\n"
        "user: smtpd\n"
        "password:  s3 cret  \n"
        "\tdatabase\t\tmail\n"
        "   # indented comment\n"
        "query_alias SELECT a FROM b WHERE c=?\n"
        "url: ldap://host:389\n"
        "odd:value\n",
    )
    assert read_config(path) == {
        "host": "db1",
        "user": "smtpd",
        "password": "s3 cret",
        "database": "mail",
        "query_alias": "SELECT a FROM b WHERE c=?",
        "url": "ldap://host:389",
        # the colon is skipped only when a blank follows (docs/table-protocol.md §10.1)
        "odd": ":value",
    }


@pytest.mark.parametrize(
    ("text", "message", "line"),
    [
        ("host db1\nuser\n", "no value for user", 2),
        ("host db1\nuser:\n", "no value for user", 2),
        ("host a\n\nhost b\n", "duplicate key host", 3),
        (": value\n", "missing key", 1),
    ],
)
def test_read_config_errors(tmp_path: Path, text: str, message: str, line: int) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigFileError) as info:
        read_config(path)
    assert info.value.line == line
    assert info.value.file == path
    assert str(info.value) == f"{path}:{line}: {message}"


def test_read_config_options(tmp_path: Path) -> None:
    path = write(tmp_path, "host a\nhost b\nport 1\n")
    assert read_config(path, allow_duplicates=True) == {"host": "a", "port": "1"}
    with pytest.raises(ConfigFileError, match=r":3: unknown key port$"):
        read_config(path, allow_duplicates=True, known=("host",))
    with pytest.raises(ConfigFileError) as info:
        read_config(path, allow_duplicates=True, required=("host", "dbpath"))
    assert str(info.value) == f"{path}: missing required key dbpath"
    assert read_config(path, allow_duplicates=True, required=("host",), known=("host", "port"))


def test_read_config_unreadable(tmp_path: Path) -> None:
    with pytest.raises(ConfigFileError, match="cannot read"):
        read_config(str(tmp_path / "missing.conf"))
    bad = tmp_path / "bad.conf"
    bad.write_bytes(b"host \xff\n")
    with pytest.raises(ConfigFileError, match="UTF-8"):
        read_config(str(bad))


# -- run() -------------------------------------------------------------------------


class Users(Backend):
    services = ("userinfo", "alias", "source")
    seen: list[tuple[str, str | None]] = []

    def __init__(self, table_name: str, config_path: str | None) -> None:
        super().__init__(table_name, config_path)
        Users.seen.append((table_name, config_path))
        self.updates = 0

    def lookup(self, service: str, key: str) -> str | None:
        if key == "secret-crash":
            raise RuntimeError("password=hunter2")
        if key == "backend-error":
            raise BackendError("database\nunreachable")
        if key == "newline":
            return "a\nb"
        if key == "empty":
            return ""
        if key == "slow-sync":
            time.sleep(0.5)
        if key.startswith("absent"):
            return None
        return f"{service}={key}"

    async def check(self, service: str, key: str) -> bool:
        if key == "slow-async":
            await asyncio.sleep(0.5)
        return key != "absent"

    def update(self) -> None:
        self.updates += 1
        if self.updates > 1:
            raise BackendError("")


class Host:
    """The daemon's end of the socketpair, with run() serving the other end."""

    def __init__(self, factory: type[Backend] = Users, argv: list[str] | None = None) -> None:
        self.sock, theirs = socket.socketpair()
        self.sock.settimeout(5)
        self.buffer = b""
        self.status: list[int] = []

        def serve() -> None:
            self.status.append(
                run(
                    factory,
                    argv=argv or ["table-users", "/etc/users.conf"],
                    stdin=theirs.fileno(),
                    stdout=theirs.fileno(),
                    threads=4,
                )
            )
            theirs.close()

        self.thread = threading.Thread(target=serve, daemon=True)
        self.thread.start()

    def send(self, text: str) -> None:
        self.sock.sendall(text.encode())

    def line(self) -> str:
        while b"\n" not in self.buffer:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError(self.buffer)
            self.buffer += data
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line.decode()

    def lines(self, n: int) -> list[str]:
        return [self.line() for _ in range(n)]

    def request(self, op: str, rest: str) -> str:
        self.send(f"table|0.1|1735689600.000123|vusers|{op}|{rest}\n")
        return self.line()

    def finish(self) -> int:
        self.sock.shutdown(socket.SHUT_WR)
        self.thread.join(5)
        assert not self.thread.is_alive()
        self.sock.close()
        return self.status[0]


@pytest.fixture
def host() -> Iterator[Host]:
    Users.seen.clear()
    h = Host()
    h.send(HANDSHAKE)
    assert h.lines(4) == [
        "register|userinfo",
        "register|alias",
        "register|source",
        "register|ready",
    ]
    yield h
    assert h.finish() == 0


def test_handshake_uses_tablename_and_config_path(host: Host) -> None:
    assert Users.seen == [("vusers", "/etc/users.conf")]


def test_lookup_check_update(host: Host) -> None:
    assert host.request("lookup", "userinfo|0a1b2c3d|carol") == (
        "lookup-result|0a1b2c3d|found|userinfo=carol"
    )
    assert host.request("lookup", "alias|00000001|absent") == "lookup-result|00000001|not-found"
    assert host.request("check", "alias|00000002|x") == "check-result|00000002|found"
    assert host.request("check", "alias|00000003|absent") == "check-result|00000003|not-found"
    assert host.request("update", "00c0ffee") == "update-result|00c0ffee|ok"
    assert host.request("update", "00c0ffef") == "update-result|00c0ffef|error"


def test_key_with_pipe_is_the_last_field(host: Host) -> None:
    assert host.request("lookup", "alias|0000000a|a|b||c") == (
        "lookup-result|0000000a|found|alias=a|b||c"
    )


def test_errors(host: Host) -> None:
    assert host.request("lookup", "domain|00000001|x") == (
        "lookup-result|00000001|error|unsupported service"
    )
    assert host.request("fetch", "source|00000002") == (
        "fetch-result|00000002|error|unsupported operation"
    )
    assert host.request("fetch", "relayhost|00000003") == (
        "fetch-result|00000003|error|unsupported service"
    )
    reply = host.request("lookup", "alias|00000004|secret-crash")
    assert reply == "lookup-result|00000004|error|internal error"
    assert host.request("lookup", "alias|00000005|backend-error") == (
        "lookup-result|00000005|error|database unreachable"
    )
    assert host.request("lookup", "alias|00000006|newline") == (
        "lookup-result|00000006|error|invalid value"
    )
    assert host.request("lookup", "alias|00000007|empty") == (
        "lookup-result|00000007|error|invalid value"
    )
    assert host.request("frobnicate", "alias|00000008|x") == (
        "frobnicate-result|00000008|error|unsupported operation"
    )
    # a malformed line has no id to answer: it is skipped, the next one is served
    host.send("garbage\n")
    assert host.request("lookup", "alias|00000009|x") == "lookup-result|00000009|found|alias=x"


def test_slow_handlers_do_not_block_others(host: Host) -> None:
    host.send(
        "table|0.1|1.000000|vusers|lookup|alias|00000001|slow-sync\n"
        "table|0.1|1.000000|vusers|check|alias|00000002|slow-async\n"
        "table|0.1|1.000000|vusers|lookup|alias|00000003|quick\n"
    )
    start = time.monotonic()
    first = host.line()
    assert first == "lookup-result|00000003|found|alias=quick"
    assert time.monotonic() - start < 0.4
    rest = sorted(host.lines(2))
    assert rest == ["check-result|00000002|found", "lookup-result|00000001|found|alias=slow-sync"]


def test_many_requests_pipelined(host: Host) -> None:
    host.send("".join(f"table|0.1|1.000000|vusers|lookup|alias|{i:08x}|k{i}\n" for i in range(500)))
    replies = host.lines(500)
    assert sorted(replies) == sorted(f"lookup-result|{i:08x}|found|alias=k{i}" for i in range(500))


class Broken(Backend):
    services = ("alias",)

    def __init__(self, table_name: str, config_path: str | None) -> None:
        super().__init__(table_name, config_path)
        read_config(config_path or "/nonexistent")


class Bogus(Backend):
    services = ("alias", "bogus")


class Dynamic(Backend):
    services = ()

    def registered(self) -> tuple[str, ...]:
        return ("domain",)

    async def check(self, service: str, key: str) -> bool:
        return True


def test_factory_failure_exits_1(tmp_path: Path) -> None:
    h = Host(Broken, argv=["x", str(tmp_path / "missing.conf")])
    h.send(HANDSHAKE)
    with pytest.raises(EOFError):
        h.line()
    assert h.finish() == 1


def test_unknown_service_exits_1() -> None:
    h = Host(Bogus)
    h.send(HANDSHAKE)
    with pytest.raises(EOFError):
        h.line()
    assert h.finish() == 1


def test_wrong_protocol_exits_1() -> None:
    h = Host()
    h.send(HANDSHAKE.replace("protocol|0.1", "protocol|9.9"))
    with pytest.raises(EOFError):
        h.line()
    assert h.finish() == 1


def test_registered_at_run_time() -> None:
    h = Host(Dynamic)
    h.send(HANDSHAKE)
    assert h.lines(2) == ["register|domain", "register|ready"]
    assert h.request("check", "domain|00000001|x") == "check-result|00000001|found"
    assert h.request("lookup", "domain|00000002|x") == (
        "lookup-result|00000002|error|unsupported operation"
    )
    assert h.finish() == 0


def test_backends_make_themselves_non_dumpable() -> None:
    """A backend's memory and environment hold database passwords: no other
    process of its user may read them (PR_GET_DUMPABLE reads 0 afterwards)."""
    import ctypes
    import os
    import sys

    if not sys.platform.startswith("linux"):
        pytest.skip("prctl is Linux's")
    from mailrider.table import sdk

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        libc = ctypes.CDLL(None)
        # run() in the tests above made this (pytest's) process non-dumpable
        # already, and a fork inherits that: start from dumpable
        libc.prctl(4, 1, 0, 0, 0)  # PR_SET_DUMPABLE, 1
        before = libc.prctl(3, 0, 0, 0, 0)
        sdk._not_dumpable()
        after = libc.prctl(3, 0, 0, 0, 0)
        os.write(w, f"{before},{after}".encode())
        os._exit(0)
    os.close(w)
    got = os.read(r, 100).decode()
    os.close(r)
    os.waitpid(pid, 0)
    assert got == "1,0"


# -- the command line ----------------------------------------------------------------


class NeverBuilt(Backend):
    services = ("domain",)

    def __init__(self, table_name: str, config_path: str | None) -> None:
        raise AssertionError("an option must be answered before the protocol starts")


def _run_options(args: list[str]) -> int:
    # stdin/stdout are a socketpair end nobody writes to: if run() went on to
    # the protocol it would read EOF and return 1, never 0 or 2
    mine, theirs = socket.socketpair()
    mine.close()
    try:
        return run(NeverBuilt, argv=["/usr/bin/mailrider-table-x", *args],
                   stdin=theirs.fileno(), stdout=theirs.fileno())
    finally:
        theirs.close()


@pytest.mark.parametrize("option", ["--help", "-h"])
def test_help_answers_without_reading_stdin(option: str,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert _run_options([option]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: mailrider-table-x [CONFIG]\n")


def test_version_is_the_core_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert _run_options(["--version"]) == 0
    assert capsys.readouterr().out == f"mailrider-table-x {__version__}\n"


@pytest.mark.parametrize(("args", "message"), [
    (["--verbose"], "unknown option --verbose"),
    (["-x"], "unknown option -x"),
    (["/etc/a.conf", "--help"], "unknown option --help"),
    (["/etc/a.conf", "/etc/b.conf"], "too many arguments"),
])
def test_other_arguments_are_refused(args: list[str], message: str,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert _run_options(args) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"mailrider-table-x: {message}\nusage: ")
