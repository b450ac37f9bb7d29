"""ProcTable and find_backend against real backend processes (core/tests/table/backends)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from mailrider.errors import TempFail
from mailrider.table import proc
from mailrider.table.proc import TABLE_NAME_ARG, ProcTable, find_backend

BACKENDS = Path(__file__).parent / "backends"
sys.path.insert(0, str(BACKENDS))

import backendkit  # noqa: E402

T = TypeVar("T")


def run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await asyncio.wait_for(coro, 30)

    return asyncio.run(main())


@pytest.fixture
def libexec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    folder = tmp_path / "libexec"
    folder.mkdir()
    for backend, script in (
        ("example", "example.py"),
        ("rogue", "rogue.py"),
        ("noisy", "noisy.py"),
    ):
        backendkit.install(str(folder), backend, script)
    monkeypatch.setenv("MAILRIDER_LIBEXEC", str(folder))
    monkeypatch.setenv("MAILRIDER_OPENSMTPD_LIBEXEC", "-")  # not this machine's programs
    yield folder


@pytest.fixture
def mapfile(tmp_path: Path) -> str:
    path = tmp_path / "map"
    path.write_text("root admin@example.org\nexample.org yes\na|b pipe value\n")
    return str(path)


def table(backend: str, config: str | None, name: str = "t", **kw: Any) -> ProcTable:
    argv, searched = find_backend(backend)
    assert argv is not None, searched
    return ProcTable(name, argv, config, **kw)


def with_table(
    backend: str, config: str | None, body: Callable[[ProcTable], Awaitable[T]], **kw: Any
) -> T:
    async def main() -> T:
        t = table(backend, config, **kw)
        await t.start()
        try:
            return await body(t)
        finally:
            await t.close()

    return run(main())


# -- discovery -------------------------------------------------------------


def test_find_backend_in_libexec(
    libexec: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = tmp_path / "empty"
    other.mkdir()
    monkeypatch.setenv("MAILRIDER_LIBEXEC", f"{other}:{libexec}")
    argv, searched = find_backend("rogue")
    assert argv == [str(libexec / "table-rogue")]
    assert searched[0].startswith("entry point 'rogue'")
    assert searched[1:] == [str(other / "table-rogue"), str(libexec / "table-rogue")]


def test_opensmtpd_folders_come_after_ours(
    libexec: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mapfile: str
) -> None:
    smtpd = tmp_path / "smtpd"
    smtpd.mkdir()
    backendkit.install(str(smtpd), "example", "example.py")
    backendkit.install(str(smtpd), "elsewhere", "example.py")
    monkeypatch.setenv("MAILRIDER_OPENSMTPD_LIBEXEC", f"{tmp_path / 'none'}:{smtpd}")
    # ours wins when both have the program
    assert find_backend("example")[0] == [str(libexec / "table-example")]
    # a program only OpenSMTPD's folder has is found there, after ours were searched
    argv, searched = find_backend("elsewhere")
    assert argv == [str(smtpd / "table-elsewhere")]
    assert searched[1:] == [str(libexec / "table-elsewhere"),
                            str(tmp_path / "none" / "table-elsewhere"),
                            str(smtpd / "table-elsewhere")]

    async def body(t: ProcTable) -> None:
        assert await t.lookup("alias", "root") == "admin@example.org"

    # and it answers, started as OpenSMTPD starts it
    with_table("elsewhere", mapfile, body)


def test_opensmtpd_folders_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    from mailrider import paths

    monkeypatch.delenv("MAILRIDER_OPENSMTPD_LIBEXEC", raising=False)
    assert paths.opensmtpd_libexec_dirs() == ("/usr/local/libexec/smtpd",
                                              "/usr/libexec/opensmtpd")
    monkeypatch.setenv("MAILRIDER_LIBEXEC", "/nonexistent-a")
    _, searched = find_backend("zz-none")
    assert searched[1:] == ["/nonexistent-a/table-zz-none",
                            "/usr/local/libexec/smtpd/table-zz-none",
                            "/usr/libexec/opensmtpd/table-zz-none"]


def test_find_backend_missing_or_not_executable(libexec: Path) -> None:
    argv, searched = find_backend("nosuch")
    assert argv is None
    assert searched[-1] == str(libexec / "table-nosuch")
    plain = libexec / "table-plain"
    plain.write_text("not a program\n")
    assert find_backend("plain")[0] is None
    for bad in ("", "../rogue", "a/b", "x|y"):
        assert find_backend(bad) == (None, [])


def test_find_backend_entry_point(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mapfile: str
) -> None:
    site = tmp_path / "site"
    dist = site / "fakedist-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fakedist\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[mailrider.tables]\nfaketable = fakemod:main\n")
    (site / "fakemod.py").write_text(
        "import json, sys\n"
        "from mailrider.table.sdk import Backend, run\n"
        "class B(Backend):\n"
        "    services = ('alias',)\n"
        "    def lookup(self, service, key):\n"
        "        return json.dumps([sys.argv, self.table_name, self.config_path])\n"
        "def main():\n"
        "    return run(B)\n"
    )
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(site), backendkit.SRC]))
    monkeypatch.setenv("MAILRIDER_LIBEXEC", str(tmp_path / "nothing"))
    argv, searched = find_backend("faketable")
    assert argv is not None and argv[0] == sys.executable
    assert argv[-2:] == ["fakemod:main", TABLE_NAME_ARG]
    assert len(searched) == 1

    async def body(t: ProcTable) -> str | None:
        return await t.lookup("alias", "x")

    async def main() -> str | None:
        t = ProcTable("epname", argv, mapfile)
        await t.start()
        try:
            return await body(t)
        finally:
            await t.close()

    value = run(main())
    assert value is not None
    assert json.loads(value) == [["epname", mapfile], "epname", mapfile]


def test_argv0_is_the_table_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A bare interpreter installed as table-argv0: it sees argv = [table name,
    # config path], runs the config path as its script, and reports its argv.
    folder = tmp_path / "lx"
    folder.mkdir()
    (folder / "table-argv0").symlink_to(os.path.realpath(sys.executable))
    monkeypatch.setenv("MAILRIDER_LIBEXEC", str(folder))
    script = str(BACKENDS / "argv0.py")

    async def main() -> str | None:
        argv, _ = find_backend("argv0")
        assert argv is not None
        t = ProcTable("vusers", argv, script)
        await t.start()
        try:
            return await t.lookup("alias", "who")
        finally:
            await t.close()

    value = run(main())
    assert value is not None
    seen = json.loads(value)
    assert seen["orig_argv0"] == "vusers"
    assert seen["argv"] == [script]
    assert seen["tablename"] == "vusers"


def test_argv_of_a_plain_program(libexec: Path) -> None:
    async def body(t: ProcTable) -> str | None:
        return await t.lookup("alias", "x")

    value = with_table("rogue", "argv", body)
    seen = json.loads(value or "")
    # a shebang script sees its own path as argv[0]; argv[1] is the config path
    assert seen["argv"][1:] == ["argv"]
    assert seen["tablename"] == "t"


# -- handshake ---------------------------------------------------------------


def test_handshake_and_request_lines(libexec: Path) -> None:
    async def body(t: ProcTable) -> list[str]:
        assert t.services == frozenset({"alias", "domain", "source"})
        assert t.running and t.pid is not None
        await t.update()
        await t.fetch("source")
        await t.check("domain", "example.org")
        return ((await t.lookup("alias", "history")) or "").split("\t")

    lines = with_table("rogue", "normal", body, timeout=5)
    assert lines[:4] == [
        "config|smtpd-version|0.1.0",
        "config|protocol|0.1",
        "config|tablename|t",
        "config|ready",
    ]
    ts = r"\d+\.\d{6}"
    rid = r"[0-9a-f]{8}"
    assert re.fullmatch(rf"table\|0\.1\|{ts}\|t\|update\|{rid}", lines[4])
    assert re.fullmatch(rf"table\|0\.1\|{ts}\|t\|fetch\|source\|{rid}", lines[5])
    assert re.fullmatch(rf"table\|0\.1\|{ts}\|t\|check\|domain\|{rid}\|example\.org", lines[6])
    assert re.fullmatch(rf"table\|0\.1\|{ts}\|t\|lookup\|alias\|{rid}\|history", lines[7])


def test_smtpd_version_is_configurable(libexec: Path) -> None:
    async def main() -> str | None:
        t = table("rogue", "normal", smtpd_version="7.8.0-portable")
        await t.start()
        try:
            return await t.lookup("alias", "history")
        finally:
            await t.close()

    assert (run(main()) or "").startswith("config|smtpd-version|7.8.0-portable\t")


@pytest.mark.parametrize(
    ("mode", "why"),
    [
        ("hs-none", "registered no service"),
        ("hs-unknown", "unknown service 'bogus'"),
        ("hs-garbage", "unexpected line in handshake: 'hello'"),
        ("hs-eof", "during the handshake"),
        ("hs-silent", "did not finish the handshake within 0.5s"),
    ],
)
def test_bad_handshake(libexec: Path, mode: str, why: str) -> None:
    async def main() -> None:
        t = table("rogue", mode, handshake_timeout=0.5)
        with pytest.raises(TempFail, match=re.escape(why)):
            await t.start()
        assert not t.running
        with pytest.raises(TempFail, match="not running"):
            await t.lookup("alias", "x")
        await t.close()

    run(main())


def test_death_right_after_the_handshake(libexec: Path) -> None:
    async def main() -> None:
        t = table("rogue", "hs-late-death", restart_min=30)
        try:
            await t.start()
        except TempFail as exc:  # the EOF came with the registration
            assert "after the handshake" in str(exc)
        else:
            deadline = time.monotonic() + 5
            while t.running and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
        assert not t.running
        with pytest.raises(TempFail, match="not running"):
            await t.lookup("alias", "x")
        await t.close()

    run(main())


def test_program_that_cannot_start(tmp_path: Path) -> None:
    async def main() -> None:
        t = ProcTable("t", [str(tmp_path / "missing")], None)
        with pytest.raises(TempFail, match="cannot start"):
            await t.start()

    run(main())


# -- operations ---------------------------------------------------------------


def test_operations_against_the_example(libexec: Path, mapfile: str) -> None:
    async def body(t: ProcTable) -> None:
        assert "alias" in t.services and "userinfo" in t.services
        assert await t.lookup("alias", "root") == "admin@example.org"
        assert await t.lookup("alias", "nobody") is None
        assert await t.check("domain", "example.org") is True
        assert await t.check("domain", "example.com") is False
        assert await t.lookup("alias", "a|b") == "pipe value"
        assert await t.fetch("source") in {"admin@example.org", "yes", "pipe value"}
        Path(mapfile).write_text("root someone@else\n")
        await t.update()
        assert await t.lookup("alias", "root") == "someone@else"
        Path(mapfile).write_text("root\n")  # no value: the update fails, old map kept
        with pytest.raises(TempFail):
            await t.update()
        assert await t.lookup("alias", "root") == "someone@else"

    with_table("example", mapfile, body)


def test_replies_of_each_kind(libexec: Path) -> None:
    async def body(t: ProcTable) -> None:
        assert await t.lookup("alias", "x") == "v:x"
        assert await t.lookup("alias", "absent") is None
        assert await t.check("alias", "x") is True
        assert await t.check("alias", "absent") is False
        assert await t.fetch("source") == "192.0.2.1"
        await t.update()
        for key in ("error", "bare-error", "empty", "wrongop"):
            with pytest.raises(TempFail):
                await t.lookup("alias", key)
        with pytest.raises(TempFail):
            await t.check("alias", "error")
        assert await t.lookup("alias", "still-fine") == "v:still-fine"

    with_table("rogue", "normal", body, timeout=5)


def test_update_error(libexec: Path) -> None:
    async def body(t: ProcTable) -> None:
        with pytest.raises(TempFail, match="backend error"):
            await t.update()

    with_table("rogue", "update-error", body)


def test_unregistered_service(libexec: Path) -> None:
    async def body(t: ProcTable) -> None:
        assert "userinfo" not in t.services
        # sent anyway, as OpenSMTPD does; the backend answers error
        with pytest.raises(TempFail):
            await t.lookup("userinfo", "root")
        with pytest.raises(TempFail):
            await t.fetch("relayhost")
        with pytest.raises(ValueError):
            await t.lookup("nonsense", "root")
        assert await t.lookup("alias", "ok") == "v:ok"

    with_table("rogue", "normal", body)


def test_keys_with_pipe_and_crlf(libexec: Path) -> None:
    async def body(t: ProcTable) -> str:
        assert await t.lookup("alias", "a|b|c") == "v:a|b|c"
        assert await t.lookup("alias", "|") == "v:|"
        for key in ("bad\nkey", "bad\rkey", "bad\r\nkey"):
            with pytest.raises(TempFail, match="CR or LF"):
                await t.lookup("alias", key)
            with pytest.raises(TempFail, match="CR or LF"):
                await t.check("alias", key)
        return (await t.lookup("alias", "history")) or ""

    history = with_table("rogue", "normal", body)
    assert "bad" not in history
    assert "|alias|" in history


# -- concurrency and failures ------------------------------------------------------


def test_pipelined_out_of_order(libexec: Path) -> None:
    async def body(t: ProcTable) -> list[str | None]:
        return await asyncio.gather(*(t.lookup("alias", f"key{i}") for i in range(100)))

    results = with_table("rogue", "reverse", body)
    assert results == [f"v:key{i}" for i in range(100)]


def test_pipelined_against_the_example(libexec: Path, mapfile: str) -> None:
    async def body(t: ProcTable) -> list[object]:
        keys = ["root", "nobody", "a|b"] * 100
        return list(await asyncio.gather(*(t.lookup("alias", k) for k in keys)))

    results = with_table("example", mapfile, body)
    assert results == ["admin@example.org", None, "pipe value"] * 100


def test_slow_request_times_out_others_do_not(libexec: Path) -> None:
    async def body(t: ProcTable) -> None:
        start = time.monotonic()
        slow = asyncio.ensure_future(t.lookup("alias", "slow"))
        fast = await asyncio.gather(*(t.lookup("alias", f"f{i}") for i in range(10)))
        assert fast == [f"v:f{i}" for i in range(10)]
        assert time.monotonic() - start < 0.4
        with pytest.raises(TempFail, match="in time"):
            await slow
        assert 0.5 <= time.monotonic() - start < 3
        assert await t.lookup("alias", "after") == "v:after"
        assert t.running

    with_table("rogue", "normal", body, timeout=0.5)


def test_garbage_line(libexec: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def body(t: ProcTable) -> None:
        others = asyncio.gather(*(t.lookup("alias", f"o{i}") for i in range(5)))
        with pytest.raises(TempFail):
            await t.lookup("alias", "garbage")
        assert await others == [f"v:o{i}" for i in range(5)]
        with pytest.raises(TempFail):  # a reply whose id is not ours
            await t.lookup("alias", "unknownid")
        assert await t.lookup("alias", "fine") == "v:fine"

    with caplog.at_level(logging.WARNING, logger="mailrider.table"):
        with_table("rogue", "normal", body, timeout=0.5)
    text = caplog.text
    assert "this is not a reply" in text
    assert "lookup-result|ffffffff|found|x" in text


def test_backend_dies_and_is_restarted(libexec: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def body(t: ProcTable) -> None:
        first = t.pid
        pending = [asyncio.ensure_future(t.lookup("alias", f"slow{i}")) for i in range(3)]
        await asyncio.sleep(0.05)
        with pytest.raises(TempFail):
            await t.lookup("alias", "die")
        for fut in pending:
            with pytest.raises(TempFail):
                await fut
        assert not t.running
        with pytest.raises(TempFail, match="not running"):
            await t.lookup("alias", "x")
        deadline = time.monotonic() + 10
        while not t.running and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert t.running
        assert t.pid != first
        assert await t.lookup("alias", "back") == "v:back"

    with caplog.at_level(logging.INFO, logger="mailrider.table"):
        with_table("rogue", "normal", body, timeout=5, restart_min=0.1)
    assert "restarting backend in 0.1s" in caplog.text


def test_restart_backoff_doubles(libexec: Path, caplog: pytest.LogCaptureFixture) -> None:
    # the first start works; every restart then fails its handshake
    async def main() -> None:
        t = table("rogue", "normal", restart_min=0.05, restart_max=0.2, handshake_timeout=2)
        await t.start()
        t.config_path = "hs-eof"
        with pytest.raises(TempFail):
            await t.lookup("alias", "die")
        await asyncio.sleep(1.5)
        assert not t.running
        await t.close()

    with caplog.at_level(logging.WARNING, logger="mailrider.table"):
        run(main())
    delays = re.findall(r"restarting backend in ([0-9.]+)s", caplog.text)
    assert delays[:4] == ["0.05", "0.1", "0.2", "0.2"]


def test_close_stops_the_backend(libexec: Path) -> None:
    async def main() -> None:
        t = table("rogue", "normal")
        await t.start()
        pending = asyncio.ensure_future(t.lookup("alias", "slow"))
        await asyncio.sleep(0.05)
        proc_ = t._proc
        await t.close()
        with pytest.raises(TempFail):
            await pending
        assert proc_ is not None and proc_.returncode is not None
        with pytest.raises(TempFail):
            await t.lookup("alias", "x")
        await t.close()  # idempotent

    run(main())


def test_requests_before_start() -> None:
    async def main() -> None:
        t = ProcTable("t", ["/nonexistent"], None)
        with pytest.raises(TempFail, match="not running"):
            await t.lookup("alias", "x")

    run(main())


def test_sdk_backend_stdout_and_threads(libexec: Path) -> None:
    async def body(t: ProcTable) -> None:
        assert t.services == frozenset({"alias", "userinfo"})
        order: list[str] = []

        async def one(key: str) -> None:
            value = await t.lookup("alias", key)
            assert value == f"t:{key}"
            order.append(key)

        async def fetch() -> None:
            assert await t.fetch("userinfo") == "later"
            order.append("fetch")

        await asyncio.gather(one("sleep-1"), fetch(), one("quick"))
        assert order[0] == "quick"
        # the domain service was not registered: error, not a crash
        with pytest.raises(TempFail):
            await t.lookup("domain", "x")
        with pytest.raises(TempFail):  # check not implemented
            await t.check("alias", "x")
        assert await t.lookup("alias", "z") == "t:z"

    with_table("noisy", None, body, timeout=5)


def test_table_name_validation() -> None:
    with pytest.raises(ValueError):
        ProcTable("a|b", ["/bin/true"], None)
    with pytest.raises(ValueError):
        ProcTable("t", [], None)


def test_module_constants() -> None:
    assert proc.ENTRY_POINT_GROUP == "mailrider.tables"
    assert proc.PROTOCOL_VERSION == "0.1"
