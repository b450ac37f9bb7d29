"""StaticTable (inline tables) and GetpwnamTable (system users)."""

from __future__ import annotations

import asyncio
import os
import pwd
from collections.abc import Coroutine
from typing import Any, TypeVar

from mailrider.table.getpwnam import GetpwnamTable
from mailrider.table.static import BUILTIN_SERVICES, StaticTable

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def test_list_table_checks_items() -> None:
    t = StaticTable("l", items=["Example.org", "*.example.net", "192.0.2.0/24"])
    assert run(t.check("domain", "example.org"))
    assert run(t.check("domain", "mx.example.net"))
    assert not run(t.check("domain", "example.com"))
    assert run(t.check("netaddr", "192.0.2.5"))
    assert run(t.check("string", "example.org"))
    assert not t.is_mapping
    assert len(t) == 3
    # a list has no values
    assert run(t.lookup("domain", "example.org")) is None


def test_mapping_table_checks_keys_and_looks_up_values() -> None:
    t = StaticTable("m", mapping={"Joe": "joe@example.org", "@": "catchall"})
    assert t.is_mapping
    assert run(t.lookup("alias", "joe")) == "joe@example.org"
    assert run(t.lookup("alias", "@")) == "catchall"
    assert run(t.lookup("alias", "nobody")) is None
    assert run(t.check("string", "joe"))
    # values are not keys
    assert not run(t.check("string", "joe@example.org"))


def test_fetch_is_round_robin() -> None:
    t = StaticTable("r", items=["a", "b", "c"])
    assert [run(t.fetch("source")) for _ in range(5)] == ["a", "b", "c", "a", "b"]
    assert run(StaticTable("e").fetch("source")) is None


def test_auth_service_is_never_answered() -> None:
    t = StaticTable("c", mapping={"joe:pw": "x"}, items=None)
    assert "auth" not in t.services
    assert t.services == BUILTIN_SERVICES
    assert not run(t.check("auth", "joe:pw"))


def test_empty_static_table() -> None:
    t = StaticTable("e")
    assert len(t) == 0
    assert not run(t.check("domain", "x"))


def _me() -> pwd.struct_passwd:
    return pwd.getpwuid(os.getuid())


def test_getpwnam_userinfo() -> None:
    me = _me()
    t = GetpwnamTable()
    assert t.name == "getpwnam"
    assert t.services == frozenset({"userinfo"})
    assert run(t.lookup("userinfo", me.pw_name)) == f"{me.pw_uid}:{me.pw_gid}:{me.pw_dir}"
    assert run(t.check("userinfo", me.pw_name))


def test_getpwnam_unknown_user_and_other_services() -> None:
    me = _me()
    t = GetpwnamTable("users")
    assert run(t.lookup("userinfo", "no-such-user-mailrider-x")) is None
    assert not run(t.check("userinfo", "no-such-user-mailrider-x"))
    assert run(t.lookup("userinfo", "")) is None
    assert run(t.lookup("userinfo", "../etc")) is None
    assert run(t.lookup("credentials", me.pw_name)) is None
    assert not run(t.check("domain", me.pw_name))


def test_mapping_from_a_table_written_with_arrows() -> None:
    from mailrider.config import parse_string

    cfg = parse_string('table m { "Joe" => "joe@example.org", "@" => catchall }\n')
    mapping = cfg.tables["m"].mapping
    assert mapping is not None
    t = StaticTable("m", mapping=mapping)
    assert run(t.lookup("alias", "joe")) == "joe@example.org"
    assert run(t.lookup("alias", "@")) == "catchall"
