"""DbTable: makemap-built databases, matching, update, and speed at 1,000,000 keys."""

from __future__ import annotations

import asyncio
import os
import pathlib
import sqlite3
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest
from mailrider.errors import ConfigError, TempFail
from mailrider.table.db import DbTable
from mailrider.table.makemap import makemap

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def build(tmp_path: pathlib.Path, text: str, kind: str = "map", name: str = "src") -> str:
    src = tmp_path / name
    src.write_text(text)
    makemap(str(src), kind=kind)
    return str(src) + ".db"


def test_map_lookup_and_check(tmp_path: pathlib.Path) -> None:
    t = DbTable("d", build(tmp_path, "Joe joe@example.org\n@example.org catchall\n"))
    run(t.start())
    assert t.kind == "map"
    assert run(t.lookup("alias", "joe")) == "joe@example.org"
    assert run(t.lookup("alias", "JOE")) == "joe@example.org"
    assert run(t.lookup("alias", "@example.org")) == "catchall"
    assert run(t.lookup("alias", "ann")) is None
    assert run(t.check("string", "joe"))
    assert not run(t.check("string", "ann"))
    assert not run(t.check("auth", "joe:x"))
    assert "auth" not in t.services
    run(t.close())


def test_set_matching_per_service(tmp_path: pathlib.Path) -> None:
    text = (
        "example.org\n*.example.net\n192.0.2.0/24\n198.51.100.7\n[2001:db8::1]\n"
        "2001:db8:1::/48\nlocal\njoe\n@example.com\nann@*.example.info\n"
    )
    t = DbTable("s", build(tmp_path, text, "set"))
    run(t.start())
    assert run(t.lookup("domain", "example.org")) is None  # a set has no values

    def check(service: str, key: str) -> bool:
        return run(t.check(service, key))

    assert check("domain", "example.org")
    assert check("domain", "mx.example.net")
    assert not check("domain", "example.net")
    assert check("netaddr", "192.0.2.9")
    assert check("netaddr", "198.51.100.7")
    assert not check("netaddr", "198.51.100.8")
    assert check("netaddr", "[2001:db8::1]")
    assert check("netaddr", "2001:db8::1")
    assert check("netaddr", "[2001:db8:1::42]")
    assert check("netaddr", "local")
    assert not check("netaddr", "rdns.example.org")
    assert check("mailaddr", "joe+tag@anywhere.org")
    assert check("mailaddr", "x@example.com")
    assert check("mailaddr", "ann@mx.example.info")
    assert not check("mailaddr", "bob@mx.example.info")
    assert not check("mailaddr", "x@example.net")


def test_regex_set_keeps_case_of_patterns(tmp_path: pathlib.Path) -> None:
    t = DbTable("r", build(tmp_path, "^mx\\d+\\.\n", "set"))
    run(t.start())
    assert run(t.check("regex", "mx1.example.org"))
    assert not run(t.check("regex", "mxd.example.org"))


def test_fetch_round_robin(tmp_path: pathlib.Path) -> None:
    t = DbTable("f", build(tmp_path, "# @list\n192.0.2.2\n192.0.2.1\n", "set"))
    run(t.start())
    got = [run(t.fetch("source")) for _ in range(3)]
    assert got == ["192.0.2.1", "192.0.2.2", "192.0.2.1"]
    empty = DbTable("e", build(tmp_path, "", "set", name="empty"))
    assert run(empty.fetch("source")) is None


def test_opened_read_only(tmp_path: pathlib.Path) -> None:
    t = DbTable("d", build(tmp_path, "a 1\n"))
    run(t.start())
    db = t._get()
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        db.conn.execute("INSERT INTO map VALUES ('b', '2')")


def test_update_reopens_and_keeps_old_on_failure(tmp_path: pathlib.Path) -> None:
    path = build(tmp_path, "a 1\n")
    t = DbTable("d", path)
    run(t.start())
    build(tmp_path, "a 2\nb 3\n")
    assert run(t.lookup("alias", "a")) == "1"  # still the old file until update
    run(t.update())
    assert run(t.lookup("alias", "a")) == "2"
    assert run(t.lookup("alias", "b")) == "3"
    junk = tmp_path / "junk"
    junk.write_text("not a database at all, just text" * 100)
    os.replace(junk, path)  # replaced as makemap does: by rename
    with pytest.raises(TempFail, match="cannot reopen"):
        run(t.update())
    assert run(t.lookup("alias", "b")) == "3"


def test_bad_files_at_start(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ConfigError, match="cannot open db"):
        run(DbTable("d", str(tmp_path / "missing.db")).start())
    other = tmp_path / "other.db"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT)")
    conn.execute("INSERT INTO meta VALUES ('format', '99')")
    conn.commit()
    conn.close()
    with pytest.raises(ConfigError, match="unsupported db format"):
        run(DbTable("d", str(other)).start())
    with pytest.raises(TempFail):
        run(DbTable("d", str(tmp_path / "missing.db")).lookup("alias", "a"))


def test_path_with_special_characters(tmp_path: pathlib.Path) -> None:
    folder = tmp_path / "a dir?#%"
    folder.mkdir()
    t = DbTable("d", build(folder, "k v\n"))
    run(t.start())
    assert run(t.lookup("alias", "k")) == "v"


def test_one_million_keys_answer_in_well_under_a_millisecond(tmp_path: pathlib.Path) -> None:
    n = 1_000_000
    src = tmp_path / "big"
    src.write_text("".join(f"user{i}@example.org {i}:{i}:/home/u{i}\n" for i in range(n)))
    assert makemap(str(src)) == n
    t = DbTable("big", str(src) + ".db")
    run(t.start())

    async def probe() -> tuple[float, float]:
        keys = [f"user{(i * 7919) % n}@example.org" for i in range(1000)]
        start = time.perf_counter()
        for i, key in enumerate(keys):
            k = (i * 7919) % n
            assert await t.lookup("userinfo", key) == f"{k}:{k}:/home/u{k}"
        hits = (time.perf_counter() - start) / len(keys)
        start = time.perf_counter()
        for i in range(1000):
            assert await t.lookup("userinfo", f"nobody{i}@example.org") is None
        misses = (time.perf_counter() - start) / 1000
        return hits, misses

    hits, misses = run(probe())
    assert hits < 0.001, f"mean lookup {hits * 1e6:.1f} us"
    assert misses < 0.001, f"mean miss {misses * 1e6:.1f} us"
    assert run(t.check("mailaddr", "user999999@example.org"))
    run(t.close())
