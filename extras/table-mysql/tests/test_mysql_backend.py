"""table-mysql against a real MariaDB server (the shared SQL suite, plus MySQL's own)."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlsuite
from mailrider.table.sdk import BackendError, ConfigFileError
from mailrider_table_mysql import MySQLBackend


class TestMySQL(sqlsuite.Suite):
    pass


def test_backslashes_backticks_and_hash_comments(db: sqlsuite.Database, tmp_path: Path) -> None:
    query = (
        "SELECT `target` FROM aliases WHERE source = ? AND target <> 'it\\'s ?' "
        "AND target <> \"?\" AND target <> 'a\\\\' ORDER BY target # a ? comment"
    )
    b = MySQLBackend(
        "t", str(sqlsuite.write_config(tmp_path / "t.conf", db, extra={"query_alias": query}))
    )
    assert b.lookup("alias", "root") == "admin@example.org, ops@example.org"


def test_wrong_password_is_error_and_not_logged(
    db: sqlsuite.Database, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "t.conf"
    lines = [
        x if not x.startswith("password ") else "password wrong-secret-123"
        for x in db.connection_lines()
    ]
    path.write_text(
        "\n".join(lines) + "\nquery_alias SELECT target FROM aliases WHERE source = ?\n"
    )
    b = MySQLBackend("t", str(path))  # starts: the server may come back with the right user
    with pytest.raises(BackendError, match="database unreachable"):
        b.lookup("alias", "root")
    assert "Access denied" in caplog.text
    assert "wrong-secret-123" not in caplog.text


def test_port_and_socket_are_checked(db: sqlsuite.Database, tmp_path: Path) -> None:
    path = tmp_path / "t.conf"
    path.write_text("port 99999\nquery_alias SELECT target FROM aliases WHERE source = ?\n")
    with pytest.raises(ConfigFileError, match="port: not a port number"):
        MySQLBackend("t", str(path))
    path.write_text("socket rel/sock\nquery_alias SELECT target FROM aliases WHERE source = ?\n")
    with pytest.raises(ConfigFileError, match="socket: not an absolute path"):
        MySQLBackend("t", str(path))
