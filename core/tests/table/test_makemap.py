"""makemap: compiling table(5) text into the db: format."""

from __future__ import annotations

import os
import pathlib
import sqlite3
import stat

import pytest
from mailrider.errors import ConfigError
from mailrider.table.makemap import makemap


def rows(db: pathlib.Path, table: str = "map") -> dict[str, str | None]:
    conn = sqlite3.connect(db)
    try:
        if table == "wild":
            return {k: None for (k,) in conn.execute("SELECT key FROM wild")}
        key = "name" if table == "meta" else "key"
        return dict(conn.execute(f"SELECT {key}, value FROM {table}").fetchall())
    finally:
        conn.close()


def test_map_default_output_and_lowercase_keys(tmp_path: pathlib.Path) -> None:
    src = tmp_path / "secrets"
    src.write_text("# creds\nRelay joe:Secret\nother: x y\n")
    assert makemap(str(src)) == 2
    db = tmp_path / "secrets.db"
    assert rows(db) == {"relay": "joe:Secret", "other": "x y"}
    meta = rows(db, "meta")
    assert meta["format"] == "1"
    assert meta["type"] == "map"
    assert meta["count"] == "2"
    assert meta["source"] == str(src)


def test_set_keeps_the_entry_text_and_lists_patterns(tmp_path: pathlib.Path) -> None:
    src = tmp_path / "nets"
    src.write_text("192.0.2.0/24\nExample.ORG\n*.example.net\n^Mx\\d$\n")
    out = tmp_path / "out.db"
    assert makemap(str(src), str(out), "set") == 4
    assert rows(out) == {
        "192.0.2.0/24": "192.0.2.0/24",
        "example.org": "Example.ORG",
        "*.example.net": "*.example.net",
        "^mx\\d$": "^Mx\\d$",
    }
    assert set(rows(out, "wild")) == {"192.0.2.0/24", "*.example.net"}
    assert rows(out, "meta")["type"] == "set"


def test_set_from_a_mapping_uses_keys(tmp_path: pathlib.Path) -> None:
    src = tmp_path / "m"
    src.write_text("a 1\nb 2\n")
    assert makemap(str(src), kind="set") == 2
    assert set(rows(tmp_path / "m.db")) == {"a", "b"}


def test_aliases_are_validated_with_file_and_line(tmp_path: pathlib.Path) -> None:
    src = tmp_path / "aliases"
    src.write_text("root: alice\n\nbad: error:299 nope\n")
    with pytest.raises(ConfigError) as exc:
        makemap(str(src), kind="aliases")
    assert exc.value.file == str(src)
    assert exc.value.line == 3
    assert "alias 'bad'" in exc.value.message
    assert not (tmp_path / "aliases.db").exists()
    assert os.listdir(tmp_path) == ["aliases"]  # no temporary file left


def test_aliases_ok(tmp_path: pathlib.Path) -> None:
    src = tmp_path / "aliases"
    src.write_text('root: alice, "|/bin/cat", /tmp/x, :include:/etc/l\n')
    assert makemap(str(src), kind="aliases") == 1
    assert rows(tmp_path / "aliases.db", "meta")["type"] == "aliases"


def test_map_needs_values(tmp_path: pathlib.Path) -> None:
    src = tmp_path / "l"
    src.write_text("\nonly-keys\nhere\n")
    with pytest.raises(ConfigError, match="has no value") as exc:
        makemap(str(src))
    assert exc.value.line == 2


def test_parse_errors_and_bad_arguments(tmp_path: pathlib.Path) -> None:
    src = tmp_path / "dup"
    src.write_text("a 1\nA 2\n")
    with pytest.raises(ConfigError, match="duplicate") as exc:
        makemap(str(src))
    assert str(exc.value).startswith(f"{src}:2: ")
    with pytest.raises(ConfigError, match="unknown type"):
        makemap(str(src), kind="hash")
    with pytest.raises(ConfigError, match="cannot read"):
        makemap(str(tmp_path / "missing"))


def test_output_replaces_atomically_and_keeps_source_mode(tmp_path: pathlib.Path) -> None:
    src = tmp_path / "secrets"
    src.write_text("a 1\n")
    os.chmod(src, 0o640)
    out = tmp_path / "secrets.db"
    out.write_text("old junk")
    inode = out.stat().st_ino
    assert makemap(str(src)) == 1
    assert out.stat().st_ino != inode  # a new file renamed over the old one
    assert stat.S_IMODE(out.stat().st_mode) == 0o640
    assert rows(out) == {"a": "1"}
    assert sorted(os.listdir(tmp_path)) == ["secrets", "secrets.db"]


def test_empty_source_gives_an_empty_db(tmp_path: pathlib.Path) -> None:
    src = tmp_path / "e"
    src.write_text("# nothing\n")
    assert makemap(str(src)) == 0
    assert rows(tmp_path / "e.db") == {}
