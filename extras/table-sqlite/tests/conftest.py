"""An SQLite file with the shared SQL suite's data, readable by the daemon's user."""

from __future__ import annotations

import os
import shutil
import sqlite3
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parents[2] / "table-sql" / "tests"))
sys.path.insert(0, str(HERE.parents[3] / "core" / "tests" / "e2e"))

import sqlsuite  # noqa: E402
from mailrider_table_sqlite import SQLiteBackend  # noqa: E402


class SQLiteDatabase(sqlsuite.Database):
    name = "sqlite"
    placeholder = "?"
    backend_cls = SQLiteBackend

    def __init__(self, folder: Path) -> None:
        self.path = folder / "mail.db"
        self.execute(*sqlsuite.SCHEMA)
        os.chmod(self.path, 0o644)

    def execute(self, *statements: str) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None)
        try:
            for sql in statements:
                conn.execute(sql)
        finally:
            conn.close()

    def connection_lines(self) -> list[str]:
        return [f"dbpath {self.path}"]


@pytest.fixture(scope="session")
def db() -> Iterator[SQLiteDatabase]:
    folder = Path(tempfile.mkdtemp(prefix="mailrider-sqlite-", dir="/tmp"))
    os.chmod(folder, 0o755)  # the daemon's backend runs as _mailrider under root
    try:
        yield SQLiteDatabase(folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
