"""TableSet: opening configured tables, the built-in tables, backend validation."""

from __future__ import annotations

import asyncio
import ipaddress
import pathlib
import socket
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest
from mailrider import paths
from mailrider.config.model import Config, Table, Where
from mailrider.errors import ConfigError
from mailrider.table import registry
from mailrider.table.base import Table as TableAPI
from mailrider.table.db import DbTable
from mailrider.table.file import FileTable
from mailrider.table.getpwnam import GetpwnamTable
from mailrider.table.makemap import makemap
from mailrider.table.registry import (
    TableSet,
    interface_addresses,
    local_names,
    open_table,
    validate_backends,
)
from mailrider.table.static import StaticTable

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


class FakeProc(TableAPI):
    def __init__(self, name: str, argv: list[str], config_path: str | None) -> None:
        super().__init__(name)
        self.argv = argv
        self.config_path = config_path

    async def check(self, service: str, key: str) -> bool:
        return True

    async def lookup(self, service: str, key: str) -> str | None:
        return None


@pytest.fixture
def fake_proc(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Replace the proc module: only backend "known" exists."""
    asked: list[str] = []

    def find_backend(backend: str) -> tuple[list[str] | None, list[str]]:
        asked.append(backend)
        if backend == "known":
            return ["/opt/libexec/table-known"], ["/opt/libexec"]
        return None, ["/opt/libexec/table-" + backend, "/usr/libexec/mailrider/table-" + backend]

    monkeypatch.setattr(registry, "_proc_api", lambda: (find_backend, FakeProc))
    return asked


def config_with(*tables: Table) -> Config:
    return Config(tables={t.name: t for t in tables})


def test_open_table_dispatch(tmp_path: pathlib.Path, fake_proc: list[str]) -> None:
    src = tmp_path / "m"
    src.write_text("a b\n")
    makemap(str(src))
    assert isinstance(open_table(Table("s", "static", items=["x"])), StaticTable)
    f = open_table(Table("f", "file", path=str(src)))
    assert isinstance(f, FileTable) and f.path == str(src)
    bare = open_table(Table("b", str(src)))
    assert isinstance(bare, FileTable) and bare.path == str(src)
    d = open_table(Table("d", "db", path=str(src) + ".db"))
    assert isinstance(d, DbTable)
    assert isinstance(open_table(Table("g", "getpwnam")), GetpwnamTable)
    p = open_table(Table("p", "known", path="/etc/mail/known.conf"))
    assert isinstance(p, FakeProc)
    assert (p.name, p.argv, p.config_path) == (
        "p",
        ["/opt/libexec/table-known"],
        "/etc/mail/known.conf",
    )
    assert fake_proc == ["known"]


def test_open_table_errors(fake_proc: list[str]) -> None:
    where = Where("/etc/mail/mailrider.conf", 7)
    with pytest.raises(ConfigError) as exc:
        open_table(Table("users", "postgres", path="/etc/mail/pg.conf", where=where))
    assert str(exc.value) == (
        "/etc/mail/mailrider.conf:7: table users: backend 'postgres' not found "
        "(looked in: /opt/libexec/table-postgres, /usr/libexec/mailrider/table-postgres)"
    )
    with pytest.raises(ConfigError, match="needs a path"):
        open_table(Table("f", "file"))
    with pytest.raises(ConfigError, match="needs a path"):
        open_table(Table("d", "db"))


def test_validate_backends(fake_proc: list[str]) -> None:
    ok = config_with(
        Table("a", "static", items=["x"]), Table("b", "known"), Table("c", "file", path="/x")
    )
    validate_backends(ok)
    assert fake_proc == ["known"]
    bad = config_with(Table("a", "known"), Table("z", "redis", where=Where("f.conf", 3)))
    with pytest.raises(ConfigError, match="table z: backend 'redis' not found") as exc:
        validate_backends(bad)
    assert (exc.value.file, exc.value.line) == ("f.conf", 3)


def test_table_set_get_and_builtins(tmp_path: pathlib.Path) -> None:
    src = tmp_path / "aliases"
    src.write_text("root: alice\n")
    cfg = config_with(
        Table("aliases", "file", path=str(src)),
        Table("<anon:1>", "static", mapping={"@": "vmail"}),
    )
    ts = TableSet(cfg)
    for name in ("localhost", "localnames", "anyhost", "anydestination", "getpwnam"):
        assert name in ts
    assert "aliases" in ts and "<anon:1>" in ts
    assert len(ts) == 7
    assert set(ts) >= {"aliases", "getpwnam"}
    with pytest.raises(KeyError):
        ts.get("nope")

    async def go() -> None:
        await ts.start()
        assert await ts.get("aliases").lookup("alias", "root") == "alice"
        assert await ts.get("<anon:1>").lookup("alias", "@") == "vmail"
        src.write_text("root: bob\n")
        await ts.update("aliases")
        assert await ts.get("aliases").lookup("alias", "root") == "bob"
        await ts.close()

    run(go())


def test_add_replaces_a_table() -> None:
    ts = TableSet(Config())
    ts.add(StaticTable("extra", items=["a"]))
    assert run(ts.get("extra").check("string", "a"))
    ts.add(StaticTable("localhost", items=["10.0.0.1"]))
    assert run(ts.get("localhost").check("netaddr", "10.0.0.1"))


def test_start_failure_is_raised(tmp_path: pathlib.Path) -> None:
    ts = TableSet(config_with(Table("missing", "file", path=str(tmp_path / "none"))))
    with pytest.raises(ConfigError, match="table missing: cannot read"):
        run(ts.start())


def test_localhost_table() -> None:
    t = TableSet(Config()).get("localhost")

    async def go() -> None:
        assert await t.check("netaddr", "local")
        assert await t.check("netaddr", "127.0.0.1")
        assert await t.check("netaddr", "127.3.4.5")
        assert await t.check("netaddr", "[::1]")
        assert await t.check("netaddr", "::1")
        assert not await t.check("netaddr", "192.0.2.123")
        assert not await t.check("netaddr", "8.8.8.8")
        for addr in interface_addresses():
            key = f"[{addr}]" if ":" in addr else addr
            assert await t.check("netaddr", key)

    run(go())


def test_interface_addresses_are_addresses() -> None:
    addrs = interface_addresses()
    assert addrs[:2] == ["127.0.0.1", "::1"]
    assert len(addrs) == len(set(addrs))
    for a in addrs:
        ipaddress.ip_address(a)


def test_localnames_table() -> None:
    cfg = Config(hostname="MX.Example.ORG")
    t = TableSet(cfg).get("localnames")
    host = socket.gethostname().lower()

    async def go() -> None:
        for name in (
            "localhost",
            "localhost.localdomain",
            "mx.example.org",
            host,
            host.split(".")[0],
            "[127.0.0.1]",
            "127.0.0.1",
            "[ipv6:::1]",
            "[::1]",
        ):
            assert await t.check("domain", name), name
        assert not await t.check("domain", "example.org")
        assert not await t.check("domain", "other.example.net")

    run(go())


def test_local_names_reads_the_mailname_file(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mailname = tmp_path / "mailname"
    mailname.write_text("Mail.Example.NET\n")
    monkeypatch.setattr(paths, "MAILNAME_FILE", str(mailname))
    names = local_names(Config(), ["192.0.2.1", "2001:db8::1"])
    assert "mail.example.net" in names and "mail" in names
    assert "[192.0.2.1]" in names and "[ipv6:2001:db8::1]" in names
    monkeypatch.setattr(paths, "MAILNAME_FILE", str(tmp_path / "absent"))
    assert "mail.example.net" not in local_names(Config(), [])


def test_any_tables_match_everything() -> None:
    ts = TableSet(Config())

    async def go() -> None:
        assert await ts.get("anyhost").check("netaddr", "203.0.113.9")
        assert await ts.get("anyhost").check("netaddr", "local")
        assert await ts.get("anyhost").check("netaddr", "some.rdns.name")
        assert await ts.get("anydestination").check("domain", "example.org")
        assert await ts.get("anydestination").check("mailaddr", "a@b")
        assert not await ts.get("anyhost").check("auth", "user:pw")

    run(go())


def test_getpwnam_builtin_knows_the_current_user() -> None:
    import os
    import pwd

    me = pwd.getpwuid(os.getuid())
    t = TableSet(Config()).get("getpwnam")
    assert run(t.lookup("userinfo", me.pw_name)) == f"{me.pw_uid}:{me.pw_gid}:{me.pw_dir}"


def test_configured_sub_address_delimiter_reaches_the_tables() -> None:
    cfg = config_with(Table("senders", "static", items=["joe@example.org"]))
    cfg.sub_addr_delim = "-"
    t = TableSet(cfg).get("senders")
    assert run(t.check("mailaddr", "joe-list@example.org"))
    assert not run(t.check("mailaddr", "joe+list@example.org"))


# --- check_tables: what -n and the start find wrong with tables ----------------


def _config(*tables: Table) -> Config:
    cfg = Config()
    for t in tables:
        cfg.tables[t.name] = t
    return cfg


def test_check_tables_missing_file_is_named_at_the_table(tmp_path: pathlib.Path) -> None:
    where = Where("/etc/mail/mailrider.conf", 4)
    cfg = _config(Table("aliases", "file", path=str(tmp_path / "none"), where=where))
    with pytest.raises(ConfigError) as info:
        registry.check_tables(cfg)
    assert str(info.value) == (f"/etc/mail/mailrider.conf:4: table aliases: cannot read "
                               f"{tmp_path}/none: No such file or directory")


def test_check_tables_berkeley_db(tmp_path: pathlib.Path) -> None:
    from mailrider.table.db import is_berkeley_db

    where = Where("/etc/mail/mailrider.conf", 2)
    db = tmp_path / "virtuals.db"
    # DB 1.85 (OpenBSD's libc): the btree magic first, in big-endian order
    db.write_bytes((0x00053162).to_bytes(4, "big") + bytes(508))
    assert is_berkeley_db(str(db))
    with pytest.raises(ConfigError) as info:
        registry.check_tables(_config(Table("v", "db", path=str(db), where=where)))
    assert str(info.value).startswith(
        f"/etc/mail/mailrider.conf:2: table v: {db} is a Berkeley DB file (OpenSMTPD's makemap); "
        f"rebuild it from its text source: mailriderctl makemap -o {db} {tmp_path}/virtuals ")
    # the same error when lka opens it, at the table's line (TableSet.start)
    with pytest.raises(ConfigError) as started:
        run(TableSet(_config(Table("v", "db", path=str(db), where=where))).start())
    assert str(started.value) == str(info.value)
    # not every unreadable db file is a Berkeley one
    other = tmp_path / "garbage.db"
    other.write_bytes(b"\x00" * 512)
    assert not is_berkeley_db(str(other))
    with pytest.raises(ConfigError) as info:
        registry.check_tables(_config(Table("g", "db", path=str(other), where=where)))
    assert "cannot open db" in str(info.value)


def test_check_tables_accepts_good_tables(tmp_path: pathlib.Path) -> None:
    src = tmp_path / "aliases"
    src.write_text("root: admin\n")
    makemap(str(src))
    registry.check_tables(_config(Table("a", "file", path=str(src)),
                                  Table("d", "db", path=str(src) + ".db")))
