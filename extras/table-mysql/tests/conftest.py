"""A throwaway MariaDB (or $MAILRIDER_TEST_MYSQL=host:port:user:password) for these tests."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parents[2] / "table-sql" / "tests"))
sys.path.insert(0, str(HERE.parents[3] / "core" / "tests" / "e2e"))

import pymysql  # noqa: E402
import sqlservers  # noqa: E402
import sqlsuite  # noqa: E402
from mailrider_table_mysql import MySQLBackend  # noqa: E402


class MySQLDatabase(sqlsuite.Database):
    name = "mysql"
    placeholder = "?"
    backend_cls = MySQLBackend
    slow_query = "SELECT target FROM aliases WHERE source = ? AND SLEEP(3) = 0"

    def __init__(self, server: sqlservers.MariaDB) -> None:
        self.server = server
        self.dbname = sqlservers.unique_name("mrtest")
        self.user = sqlservers.unique_name("mrreader")
        self.password = "pw-" + uuid.uuid4().hex
        self.admin(
            f"CREATE DATABASE {self.dbname} CHARACTER SET utf8mb4",
            f"CREATE USER '{self.user}'@'%' IDENTIFIED BY '{self.password}'",
            f"GRANT SELECT ON {self.dbname}.* TO '{self.user}'@'%'",
        )
        self.execute(*sqlsuite.SCHEMA)
        self.restartable = server.restartable

    def connect(self, database: str | None = None) -> pymysql.connections.Connection:
        return pymysql.connect(
            host=self.server.host,
            port=self.server.port,
            user=self.server.user,
            password=self.server.password,
            database=database,
            autocommit=True,
        )

    def admin(self, *statements: str, database: str | None = None) -> None:
        conn = self.connect(database)
        try:
            with conn.cursor() as cur:
                for sql in statements:
                    cur.execute(sql)
        finally:
            conn.close()

    def execute(self, *statements: str) -> None:
        # standard SQL quoting ('' inside strings, no backslash escapes) as the suite writes it
        self.admin(
            "SET SESSION sql_mode = CONCAT(@@sql_mode, ',NO_BACKSLASH_ESCAPES')",
            *statements,
            database=self.dbname,
        )

    def connection_lines(self) -> list[str]:
        return [
            f"host {self.server.host}",
            f"port {self.server.port}",
            f"username {self.user}",
            f"password {self.password}",
            f"database {self.dbname}",
        ]

    def stop_server(self) -> None:
        self.server.stop_server()

    def start_server(self) -> None:
        self.server.start_server()

    def drop(self) -> None:
        self.admin(
            f"DROP DATABASE IF EXISTS {self.dbname}", f"DROP USER IF EXISTS '{self.user}'@'%'"
        )


@pytest.fixture(scope="session")
def db() -> Iterator[MySQLDatabase]:
    server = sqlservers.MariaDB()
    try:
        server.start()
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        if os.environ.get("CI"):  # CI must not pass by skipping the database tests
            raise
        pytest.skip(f"no MariaDB/MySQL server: {exc}")
    try:
        database = MySQLDatabase(server)
        yield database
        database.drop()
    finally:
        server.stop()
