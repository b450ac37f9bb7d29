"""Recipient expansion (lka): aliases, virtual, userbase, .forward, routing, limits."""

from __future__ import annotations

import asyncio
import os
import pathlib
import pwd
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest
from mailrider import paths
from mailrider.config.model import Action, Config, Table
from mailrider.errors import PermFail, TempFail
from mailrider.proc.lka_expand import (
    EXPAND_MAX_DELIVERIES,
    Delivery,
    alias_keys,
    expand,
    virtual_keys,
)
from mailrider.table.base import Table as TableAPI
from mailrider.table.registry import TableSet
from mailrider.table.static import StaticTable

T = TypeVar("T")
ME = pwd.getpwuid(os.getuid())
USERS = {
    "alice": "1001:1001:/home/alice",
    "bob": "1002:1002:/home/bob",
    "carol": "1003:1003:/home/carol",
    "vmail": "2000:2000:/var/vmail",
}


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


@pytest.fixture(autouse=True)
def daemon_user_is_me(monkeypatch: pytest.MonkeyPatch) -> None:
    # alias file/pipe targets run as the external user when we are root
    monkeypatch.setattr(paths, "EXT_USER", ME.pw_name)


def setup(
    *,
    alias: dict[str, str] | None = None,
    virtual: dict[str, str] | None = None,
    users: dict[str, str] | None = USERS,
    **kw: Any,
) -> tuple[Config, TableSet, Action]:
    cfg = Config()
    action = Action("local", kw.pop("method", "maildir"), **kw)
    if alias is not None:
        cfg.tables["aliases"] = Table("aliases", "static", mapping=alias)
        action.alias = "aliases"
    if virtual is not None:
        cfg.tables["vtable"] = Table("vtable", "static", mapping=virtual)
        action.virtual = "vtable"
    if users is not None:
        cfg.tables["users"] = Table("users", "static", mapping=users)
        action.userbase = "users"
    cfg.actions[action.name] = action
    return cfg, TableSet(cfg), action


def go(cfg: Config, ts: TableSet, action: Action, rcpt: str, **kw: Any) -> list[Delivery]:
    local, _, domain = rcpt.rpartition("@")
    return run(expand(cfg, ts, action, local, domain, **kw))


def users_of(ds: list[Delivery]) -> list[str]:
    return [d.local_user or f"{d.method}:{d.arg}" for d in ds]


# --- plain users -------------------------------------------------------------------


def test_system_user() -> None:
    cfg, ts, action = setup(users=None)
    [d] = go(cfg, ts, action, f"{ME.pw_name}@example.org")
    assert d == Delivery(
        rcpt=f"{ME.pw_name}@example.org",
        dest=f"{ME.pw_name}@example.org",
        action="local",
        method="maildir",
        user=ME.pw_name,
        uid=ME.pw_uid,
        gid=ME.pw_gid,
        home=ME.pw_dir,
        arg=None,
        local_user=ME.pw_name,
    )


def test_unknown_user_is_invalid_recipient() -> None:
    cfg, ts, action = setup(users=None)
    with pytest.raises(PermFail) as exc:
        go(cfg, ts, action, "no-such-user-mailrider@example.org")
    assert exc.value.reply() == "550 5.1.1 Invalid recipient"


def test_userbase_case_and_subaddress() -> None:
    cfg, ts, action = setup()
    [d] = go(cfg, ts, action, "Alice+News@Example.ORG")
    assert (d.rcpt, d.dest) == ("Alice+News@Example.ORG", "Alice+News@Example.ORG")
    assert (d.user, d.uid, d.gid, d.home) == ("alice", 1001, 1001, "/home/alice")
    assert (d.local_user, d.subaddress) == ("alice", "news")


def test_other_subaddress_delimiter() -> None:
    cfg, ts, action = setup()
    cfg.sub_addr_delim = "-"
    [d] = go(cfg, ts, action, "alice-news@example.org")
    assert (d.local_user, d.subaddress) == ("alice", "news")


def test_action_user_fixes_the_delivery_user() -> None:
    cfg, ts, action = setup(user=ME.pw_name)
    [d] = go(cfg, ts, action, "bob@example.org")
    assert (d.user, d.uid, d.home) == (ME.pw_name, ME.pw_uid, ME.pw_dir)
    assert d.local_user == "bob"
    # existence still comes from the userbase
    with pytest.raises(PermFail, match="Invalid recipient"):
        go(cfg, ts, action, "nobody@example.org")


def test_missing_delivery_user_is_temporary() -> None:
    cfg, ts, action = setup(user="no-such-user-mailrider")
    with pytest.raises(TempFail, match="does not exist"):
        go(cfg, ts, action, "bob@example.org")


def test_relay_action_delivers_the_address() -> None:
    cfg, ts, _ = setup()
    relay = Action("out", "relay")
    [d] = go(cfg, ts, relay, "Joe@Remote.example")
    assert (d.method, d.dest, d.action, d.user, d.uid) == (
        "relay",
        "Joe@Remote.example",
        "out",
        "",
        -1,
    )


# --- aliases -----------------------------------------------------------------------------


def test_alias_keys() -> None:
    assert alias_keys("Alice+x", "+") == ["alice+x", "alice"]
    assert alias_keys("alice", "+") == ["alice"]
    assert alias_keys("+x", "+") == ["+x"]
    assert alias_keys("a+b", "") == ["a+b"]


def test_alias_to_several_users_keeps_the_recipient_as_dest() -> None:
    cfg, ts, action = setup(alias={"root": "alice, bob"})
    ds = go(cfg, ts, action, "root@example.org")
    assert users_of(ds) == ["alice", "bob"]
    assert {d.dest for d in ds} == {"root@example.org"}
    assert [d.uid for d in ds] == [1001, 1002]


def test_alias_tag_key_first() -> None:
    cfg, ts, action = setup(alias={"alice+lists": "bob", "alice": "carol"})
    assert users_of(go(cfg, ts, action, "alice+lists@x")) == ["bob"]
    assert users_of(go(cfg, ts, action, "alice+other@x")) == ["carol"]
    assert users_of(go(cfg, ts, action, "alice@x")) == ["carol"]


def test_no_alias_entry_falls_back_to_the_userbase() -> None:
    cfg, ts, action = setup(alias={"root": "alice"})
    assert users_of(go(cfg, ts, action, "bob@x")) == ["bob"]
    with pytest.raises(PermFail, match="Invalid recipient"):
        go(cfg, ts, action, "nobody@x")


def test_recursive_aliases() -> None:
    cfg, ts, action = setup(alias={"a": "b", "b": "c, alice", "c": "bob"})
    assert users_of(go(cfg, ts, action, "a@x")) == ["bob", "alice"]


def test_name_in_its_own_expansion_is_delivered() -> None:
    cfg, ts, action = setup(alias={"alice": "alice, bob"})
    assert users_of(go(cfg, ts, action, "alice@x")) == ["alice", "bob"]


def test_alias_cycle_delivers_the_repeated_name() -> None:
    cfg, ts, action = setup(alias={"alice": "bob", "bob": "alice"})
    assert users_of(go(cfg, ts, action, "alice@x")) == ["alice"]


def test_alias_chain_too_deep() -> None:
    chain = {f"u{i}": f"u{i + 1}" for i in range(20)}
    cfg, ts, action = setup(alias=chain)
    with pytest.raises(PermFail) as exc:
        go(cfg, ts, action, "u0@x")
    assert (exc.value.code, exc.value.status) == (550, "5.4.6")


def test_file_and_pipe_targets_run_as_the_external_user() -> None:
    cfg, ts, action = setup(alias={"log": '/var/log/copy, "|/usr/bin/prog -x, y"'})
    ds = go(cfg, ts, action, "log@x")
    assert [(d.method, d.arg) for d in ds] == [
        ("file", "/var/log/copy"),
        ("pipe", "/usr/bin/prog -x, y"),
    ]
    assert {(d.user, d.uid, d.local_user, d.dest) for d in ds} == {
        (ME.pw_name, ME.pw_uid, "", "log@x")
    }


def test_pipe_target_never_runs_as_the_daemon_user(monkeypatch: pytest.MonkeyPatch) -> None:
    # lka itself runs as the daemon's user once dropped: an alias command must
    # still get the external user, never lka's own uid (which reaches the daemon)
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user nobody")
    monkeypatch.setattr(paths, "USER", ME.pw_name)
    monkeypatch.setattr(paths, "EXT_USER", nobody.pw_name)
    monkeypatch.setattr(os, "geteuid", lambda: ME.pw_uid or 1)
    cfg, ts, action = setup(alias={"log": '"|/usr/bin/prog"'})
    [d] = go(cfg, ts, action, "log@x")
    assert (d.method, d.user, d.uid) == ("pipe", "nobody", nobody.pw_uid)


def test_file_target_with_action_user() -> None:
    cfg, ts, action = setup(alias={"log": "/var/log/copy"}, user=ME.pw_name)
    [d] = go(cfg, ts, action, "log@x")
    assert (d.method, d.user, d.uid) == ("file", ME.pw_name, ME.pw_uid)


def test_include(tmp_path: pathlib.Path) -> None:
    lst = tmp_path / "list"
    lst.write_text("# members\nalice\n\nbob, /tmp/archive\n")
    cfg, ts, action = setup(alias={"list": f":include:{lst}"})
    assert users_of(go(cfg, ts, action, "list@x")) == ["alice", "bob", "file:/tmp/archive"]


def test_include_errors(tmp_path: pathlib.Path) -> None:
    cfg, ts, action = setup(alias={"list": f":include:{tmp_path}/missing"})
    with pytest.raises(TempFail, match="cannot read include file"):
        go(cfg, ts, action, "list@x")
    bad = tmp_path / "bad"
    bad.write_text("alice\nbad user\n")
    cfg, ts, action = setup(alias={"list": f":include:{bad}"})
    with pytest.raises(TempFail, match=f"{bad}:2:"):
        go(cfg, ts, action, "list@x")


def test_error_targets() -> None:
    cfg, ts, action = setup(alias={"gone": "error:550 5.1.6 moved away", "later": "error:451 busy"})
    with pytest.raises(PermFail) as perm:
        go(cfg, ts, action, "gone@x")
    assert perm.value.reply() == "550 5.1.6 moved away"
    with pytest.raises(TempFail) as temp:
        go(cfg, ts, action, "later@x")
    assert temp.value.reply() == "451 4.0.0 busy"


def test_deliveries_are_deduplicated() -> None:
    cfg, ts, action = setup(alias={"l": "alice, alice, bob, /tmp/x, /tmp/x, m", "m": "bob"})
    assert users_of(go(cfg, ts, action, "l@x")) == ["alice", "bob", "file:/tmp/x"]


def test_too_many_deliveries() -> None:
    users = {f"u{i}": f"{5000 + i}:100:/home/u{i}" for i in range(EXPAND_MAX_DELIVERIES + 1)}
    cfg, ts, action = setup(alias={"all": ", ".join(users)}, users=users)
    with pytest.raises(PermFail) as exc:
        go(cfg, ts, action, "all@x")
    assert (exc.value.code, exc.value.status) == (550, "5.2.4")


def test_bad_table_values_are_temporary() -> None:
    cfg, ts, action = setup(alias={"x": "bad user name"})
    with pytest.raises(TempFail, match="invalid alias"):
        go(cfg, ts, action, "x@y")
    cfg, ts, action = setup(users={"alice": "not-userinfo"})
    with pytest.raises(TempFail, match="invalid userinfo"):
        go(cfg, ts, action, "alice@y")


class Broken(TableAPI):
    async def check(self, service: str, key: str) -> bool:
        raise TempFail("backend down")

    async def lookup(self, service: str, key: str) -> str | None:
        raise TempFail("backend down")


def test_table_tempfail_propagates() -> None:
    cfg, ts, action = setup(alias={})
    ts.add(Broken("aliases"))
    with pytest.raises(TempFail, match="backend down"):
        go(cfg, ts, action, "alice@x")
    cfg, ts, action = setup()
    ts.add(Broken("users"))
    with pytest.raises(TempFail, match="backend down"):
        go(cfg, ts, action, "alice@x")


def test_undefined_table_is_temporary() -> None:
    cfg, ts, action = setup()
    action.alias = "nope"
    with pytest.raises(TempFail, match="table nope is not defined"):
        go(cfg, ts, action, "alice@x")


# --- addresses inside expansions -------------------------------------------------------------


def test_address_target_is_routed() -> None:
    cfg, ts, action = setup(alias={"root": "alice, Admin@Remote.example"})
    relay = Action("out", "relay")
    asked: list[tuple[str, str]] = []

    async def route(local: str, domain: str) -> Action | None:
        asked.append((local, domain))
        return relay

    ds = go(cfg, ts, action, "root@x", route=route)
    assert asked == [("Admin", "remote.example")]
    assert [(d.method, d.dest, d.action) for d in ds] == [
        ("maildir", "root@x", "local"),
        ("relay", "Admin@remote.example", "out"),
    ]


def test_routed_to_a_local_action_expands_there() -> None:
    cfg, ts, action = setup(alias={"root": "bob@other.example"})

    async def route(local: str, domain: str) -> Action | None:
        return action

    [d] = go(cfg, ts, action, "root@x", route=route)
    assert (d.local_user, d.dest) == ("bob", "bob@other.example")


def test_rejected_route_is_invalid_recipient() -> None:
    cfg, ts, action = setup(alias={"root": "bob@other.example"})

    async def route(local: str, domain: str) -> Action | None:
        return None

    with pytest.raises(PermFail, match="Invalid recipient"):
        go(cfg, ts, action, "root@x", route=route)


def test_address_target_without_route_needs_a_local_domain() -> None:
    cfg, ts, action = setup(alias={"root": "bob@localhost", "ext": "bob@remote.example"})
    [d] = go(cfg, ts, action, "root@x")
    assert (d.local_user, d.dest) == ("bob", "bob@localhost")
    with pytest.raises(PermFail, match="Invalid recipient"):
        go(cfg, ts, action, "ext@x")


# --- virtual ---------------------------------------------------------------------------------


def test_virtual_keys() -> None:
    assert virtual_keys("User+Tag", "Example.ORG", "+") == [
        "user+tag@example.org",
        "user@example.org",
        "user+tag",
        "user",
        "@example.org",
        "@",
    ]
    assert virtual_keys("user", "d", "+") == ["user@d", "user", "@d", "@"]


class Recording(StaticTable):
    def __init__(self, name: str, mapping: dict[str, str]) -> None:
        super().__init__(name, mapping=mapping)
        self.keys: list[str] = []

    async def lookup(self, service: str, key: str) -> str | None:
        assert service == "alias"
        self.keys.append(key)
        return await super().lookup(service, key)


def test_virtual_lookup_order_and_no_entry() -> None:
    cfg, ts, action = setup(virtual={})
    rec = Recording("vtable", {})
    ts.add(rec)
    with pytest.raises(PermFail) as exc:
        go(cfg, ts, action, "a+t@d.example")
    assert exc.value.reply() == "550 5.1.1 Invalid recipient"
    assert rec.keys == virtual_keys("a+t", "d.example", "+")


@pytest.mark.parametrize(
    ("present", "expected"),
    [
        (["a+t@d", "a@d", "a+t", "a", "@d", "@"], "alice"),
        (["a@d", "a+t", "a", "@d", "@"], "bob"),
        (["a+t", "a", "@d", "@"], "carol"),
        (["a", "@d", "@"], "vmail"),
        (["@d", "@"], "bob"),
        (["@"], "alice"),
    ],
)
def test_virtual_first_key_found_wins(present: list[str], expected: str) -> None:
    targets = {
        "a+t@d": "alice",
        "a@d": "bob",
        "a+t": "carol",
        "a": "vmail",
        "@d": "bob",
        "@": "alice",
    }
    cfg, ts, action = setup(virtual={k: targets[k] for k in present})
    [d] = go(cfg, ts, action, "a+t@d")
    assert d.local_user == expected
    assert d.dest == "a+t@d"


def test_virtual_address_targets_recurse_and_set_dest() -> None:
    cfg, ts, action = setup(
        virtual={
            "info@example.org": "sales@example.org, alice",
            "sales@example.org": "bob@example.org",
            "bob@example.org": "vmail",
        }
    )
    ds = go(cfg, ts, action, "info@example.org")
    assert [(d.local_user, d.dest) for d in ds] == [
        ("vmail", "bob@example.org"),
        ("alice", "info@example.org"),
    ]


def test_virtual_address_without_entry_is_invalid() -> None:
    cfg, ts, action = setup(virtual={"info@example.org": "nobody@example.org"})
    with pytest.raises(PermFail) as exc:
        go(cfg, ts, action, "info@example.org")
    assert exc.value.reply() == "550 5.1.1 Invalid recipient"


def test_virtual_catchall_to_a_single_system_user() -> None:
    cfg, ts, action = setup(virtual={"@": ME.pw_name}, users=None)
    [d] = go(cfg, ts, action, "anyone@anywhere.example")
    assert (d.user, d.uid, d.dest) == (ME.pw_name, ME.pw_uid, "anyone@anywhere.example")


def test_virtual_loop_expands_to_nothing() -> None:
    cfg, ts, action = setup(virtual={"a@d": "b@d", "b@d": "a@d"})
    with pytest.raises(PermFail) as exc:
        go(cfg, ts, action, "a@d")
    assert (exc.value.code, exc.value.status) == (550, "5.2.4")


# --- .forward ----------------------------------------------------------------------------


def forwards(files: dict[str, str | None]) -> tuple[list[tuple[str, str]], Any]:
    asked: list[tuple[str, str]] = []

    async def forward(user: str, home: str) -> str | None:
        asked.append((user, home))
        return files.get(user)

    return asked, forward


def test_forward_redirects_a_user() -> None:
    cfg, ts, action = setup()
    asked, fwd = forwards({"alice": "# my forward\nbob, \\alice\n\n|/usr/bin/filter\n"})
    ds = go(cfg, ts, action, "alice@x", forward=fwd)
    assert ("alice", "/home/alice") in asked
    assert [(d.method, d.local_user, d.arg) for d in ds] == [
        ("maildir", "bob", None),
        ("maildir", "alice", None),
        ("pipe", "alice", "/usr/bin/filter"),
    ]
    pipe = ds[2]
    # commands from a .forward run as its owner
    assert (pipe.user, pipe.uid, pipe.gid, pipe.home, pipe.local_user) == (
        "alice",
        1001,
        1001,
        "/home/alice",
        "alice",
    )


def test_forward_own_name_is_delivered_not_reread() -> None:
    cfg, ts, action = setup()
    asked, fwd = forwards({"alice": "alice, bob", "bob": "carol"})
    assert users_of(go(cfg, ts, action, "alice@x", forward=fwd)) == ["alice", "carol"]
    assert [u for u, _ in asked] == ["alice", "bob", "carol"]


def test_no_or_empty_forward_delivers() -> None:
    cfg, ts, action = setup()
    _, fwd = forwards({"alice": "# only comments\n\n"})
    assert users_of(go(cfg, ts, action, "alice@x", forward=fwd)) == ["alice"]
    assert users_of(go(cfg, ts, action, "bob@x", forward=fwd)) == ["bob"]


def test_forward_is_skipped_for_another_delivery_user() -> None:
    cfg, ts, action = setup(user=ME.pw_name)
    asked, fwd = forwards({"alice": "bob"})
    assert users_of(go(cfg, ts, action, "alice@x", forward=fwd)) == ["alice"]
    assert asked == []


def test_forward_errors() -> None:
    cfg, ts, action = setup()
    _, fwd = forwards({"alice": "bob\nbad user\n"})
    with pytest.raises(TempFail, match=r"invalid \.forward of alice$") as exc:
        go(cfg, ts, action, "alice@x", forward=fwd)
    # the reply the client gets says nothing of the file's content
    assert "bad user" not in exc.value.reply()
    _, fwd = forwards({"alice": ":include:/etc/passwd"})
    with pytest.raises(PermFail, match="not allowed"):
        go(cfg, ts, action, "alice@x", forward=fwd)


def test_forward_only_and_expand_only() -> None:
    cfg, ts, action = setup(method="forward-only")
    _, fwd = forwards({"bob": "/tmp/bob-file"})
    with pytest.raises(TempFail):
        go(cfg, ts, action, "alice@x", forward=fwd)
    with pytest.raises(TempFail, match="forward-only"):
        go(cfg, ts, action, "bob@x", forward=fwd)
    cfg, ts, action = setup(method="expand-only")
    with pytest.raises(PermFail) as exc:
        go(cfg, ts, action, "alice@x", forward=fwd)
    assert exc.value.status == "5.2.4"
    [d] = go(cfg, ts, action, "bob@x", forward=fwd)
    assert (d.method, d.arg, d.user) == ("file", "/tmp/bob-file", "bob")


def test_forward_address_is_routed() -> None:
    cfg, ts, action = setup()
    _, fwd = forwards({"alice": "alice@elsewhere.example"})
    relay = Action("out", "relay")

    async def route(local: str, domain: str) -> Action | None:
        return relay

    [d] = go(cfg, ts, action, "alice@x", forward=fwd, route=route)
    assert (d.method, d.dest) == ("relay", "alice@elsewhere.example")
