"""FileTable: the table(5) text format, and update()."""

from __future__ import annotations

import asyncio
import os
import pathlib
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest
from mailrider.errors import ConfigError, TempFail
from mailrider.table.file import FileTable, parse_table_text

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def started(path: pathlib.Path) -> FileTable:
    t = FileTable("t", str(path))
    run(t.start())
    return t


def test_list_format(tmp_path: pathlib.Path) -> None:
    p = tmp_path / "domains"
    p.write_text("# my domains\n\nexample.org\n  *.example.net  \n")
    t = started(p)
    assert not t.is_mapping
    assert run(t.check("domain", "example.org"))
    assert run(t.check("domain", "a.example.net"))
    assert not run(t.check("domain", "example.com"))


@pytest.mark.parametrize("sep", [" ", "\t", ": ", ":", " : ", " \t:\t"])
def test_mapping_separators(tmp_path: pathlib.Path, sep: str) -> None:
    p = tmp_path / "map"
    p.write_text(f"Joe{sep}joe@example.org\nann{sep}x y z \n")
    t = started(p)
    assert t.is_mapping
    assert run(t.lookup("alias", "joe")) == "joe@example.org"
    assert run(t.lookup("alias", "ann")) == "x y z"


def test_aliases_format(tmp_path: pathlib.Path) -> None:
    p = tmp_path / "aliases"
    p.write_text(
        "# aliases\n"
        "root: alice, bob@example.org\n"
        'log: "|/usr/bin/logger -t mail", /var/log/mail.copy\n'
        "list: :include:/etc/mail/list\n"
        "list2 :include:/etc/mail/list2\n"
        "MAILER-DAEMON: postmaster\n"
    )
    t = started(p)
    assert run(t.lookup("alias", "root")) == "alice, bob@example.org"
    assert run(t.lookup("alias", "log")) == '"|/usr/bin/logger -t mail", /var/log/mail.copy'
    assert run(t.lookup("alias", "list")) == ":include:/etc/mail/list"
    assert run(t.lookup("alias", "list2")) == ":include:/etc/mail/list2"
    assert run(t.lookup("alias", "mailer-daemon")) == "postmaster"


def test_credentials_and_hash_values_keep_colons_and_hashes(tmp_path: pathlib.Path) -> None:
    p = tmp_path / "secrets"
    p.write_text("relay joe:pa#ss:word\nuser2 $2b$10$abc\n")
    t = started(p)
    assert run(t.lookup("credentials", "relay")) == "joe:pa#ss:word"
    assert run(t.lookup("credentials", "user2")) == "$2b$10$abc"


def test_ipv6_keys_keep_their_colons(tmp_path: pathlib.Path) -> None:
    p = tmp_path / "names"
    p.write_text(
        "[2001:db8::1] mx6.example.org\n192.0.2.1 mx.example.org\n"
        "2001:db8::2\tmx7.example.org\n[2001:db8::]/32 net\n"
    )
    t = started(p)
    assert run(t.lookup("addrname", "[2001:db8::1]")) == "mx6.example.org"
    assert run(t.lookup("addrname", "192.0.2.1")) == "mx.example.org"
    assert run(t.lookup("addrname", "2001:db8::2")) == "mx7.example.org"
    assert run(t.lookup("addrname", "[2001:db8::]/32")) == "net"


def test_ipv6_list(tmp_path: pathlib.Path) -> None:
    p = tmp_path / "nets"
    p.write_text("2001:db8::/32\n::1\n192.0.2.0/24\n")
    t = started(p)
    assert not t.is_mapping
    assert run(t.check("netaddr", "[2001:db8::5]"))
    assert run(t.check("netaddr", "::1"))
    assert not run(t.check("netaddr", "[2001:db9::5]"))


def test_forced_list_keeps_whole_lines(tmp_path: pathlib.Path) -> None:
    p = tmp_path / "l"
    p.write_text("# @list\nhello world\nsmtp+tls://label@mx:587\n")
    t = started(p)
    assert not t.is_mapping
    assert run(t.check("string", "hello world"))
    assert run(t.fetch("relayhost")) == "hello world"
    assert run(t.fetch("relayhost")) == "smtp+tls://label@mx:587"


def test_regex_list_keeps_case(tmp_path: pathlib.Path) -> None:
    p = tmp_path / "rx"
    p.write_text("^mx\\d+\\.example\\.org$\n")
    t = started(p)
    assert run(t.check("regex", "mx12.example.org"))
    assert not run(t.check("regex", "mxd.example.org"))


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("a 1\nb\n", 2, "has no value"),
        ("a\nb 2\n", 2, "two fields"),
        ("a 1\nA 2\n", 2, "duplicate key"),
        ("x\n\n# c\nx\n", 4, "duplicate key"),
        ("a 1\n# @list\n", 2, "@list"),
        ("a 1\n: b\n", 2, "no key"),
        ("a 1\n::1: localhost\n", 2, "no key"),
    ],
)
def test_format_errors_name_file_and_line(text: str, line: int, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as exc:
        parse_table_text(text, "/etc/mail/t")
    assert (exc.value.file, exc.value.line) == ("/etc/mail/t", line)
    assert str(exc.value).startswith(f"/etc/mail/t:{line}: ")


def test_empty_file_is_an_empty_list() -> None:
    parsed = parse_table_text("# nothing\n\n")
    assert parsed.kind == "list"
    assert parsed.entries == []


def test_update_rereads(tmp_path: pathlib.Path) -> None:
    p = tmp_path / "d"
    p.write_text("example.org\n")
    t = started(p)
    assert not run(t.check("domain", "example.net"))
    p.write_text("example.net\n")
    run(t.update())
    assert run(t.check("domain", "example.net"))
    assert not run(t.check("domain", "example.org"))


def test_update_failure_keeps_old_contents(tmp_path: pathlib.Path) -> None:
    p = tmp_path / "d"
    p.write_text("k v\n")
    t = started(p)
    os.unlink(p)
    with pytest.raises(TempFail, match="cannot read"):
        run(t.update())
    assert run(t.lookup("alias", "k")) == "v"
    p.write_text("k v\nk w\n")
    with pytest.raises(TempFail, match="duplicate"):
        run(t.update())
    assert run(t.lookup("alias", "k")) == "v"
    p.write_bytes(b"k \xff\n")
    with pytest.raises(TempFail, match="UTF-8"):
        run(t.update())
    assert run(t.lookup("alias", "k")) == "v"


def test_start_on_missing_file_is_a_config_error(tmp_path: pathlib.Path) -> None:
    t = FileTable("t", str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="table t: cannot read"):
        run(t.start())


def test_use_before_start_loads_or_tempfails(tmp_path: pathlib.Path) -> None:
    p = tmp_path / "d"
    p.write_text("a b\n")
    assert run(FileTable("t", str(p)).lookup("alias", "a")) == "b"
    with pytest.raises(TempFail):
        run(FileTable("t", str(tmp_path / "none")).check("domain", "a"))
