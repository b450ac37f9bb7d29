"""A throwaway PostgreSQL (or $MAILRIDER_TEST_POSTGRES_CONNINFO) for these tests."""

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

import psycopg  # noqa: E402
import sqlservers  # noqa: E402
import sqlsuite  # noqa: E402
from mailrider_table_postgres import PostgresBackend  # noqa: E402


class PostgresDatabase(sqlsuite.Database):
    name = "postgres"
    placeholder = "$1"
    backend_cls = PostgresBackend
    slow_query = "SELECT target FROM aliases, pg_sleep(3) WHERE source = $1"

    def __init__(self, server: sqlservers.Postgres) -> None:
        self.server = server
        self.dbname = sqlservers.unique_name("mrtest")
        self.role = sqlservers.unique_name("mrreader")
        self.password = "pw-" + uuid.uuid4().hex
        with psycopg.connect(server.conninfo, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {self.dbname}")
            conn.execute(f"CREATE ROLE {self.role} LOGIN PASSWORD '{self.password}'")
        self.admin = psycopg.conninfo.make_conninfo(server.conninfo, dbname=self.dbname)
        self.execute(
            *sqlsuite.SCHEMA,
            f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {self.role}",
            f"ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO {self.role}",
        )
        self.restartable = server.restartable

    def execute(self, *statements: str) -> None:
        with psycopg.connect(self.admin, autocommit=True) as conn:
            for sql in statements:
                conn.execute(sql.replace("%", "%%"))

    def connection_lines(self) -> list[str]:
        params = psycopg.conninfo.conninfo_to_dict(self.admin)
        host, port = params.get("host", "127.0.0.1"), params.get("port", "5432")
        return [
            f"conninfo host={host} port={port} dbname={self.dbname} user={self.role} "
            f"password='{self.password}'"
        ]

    def stop_server(self) -> None:
        self.server.stop_server()

    def start_server(self) -> None:
        self.server.start_server()

    def drop(self) -> None:
        with psycopg.connect(self.server.conninfo, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {self.dbname} WITH (FORCE)")
            conn.execute(f"DROP ROLE IF EXISTS {self.role}")


@pytest.fixture(scope="session")
def db() -> Iterator[PostgresDatabase]:
    server = sqlservers.Postgres()
    try:
        server.start()
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        if os.environ.get("CI"):  # CI must not pass by skipping the database tests
            raise
        pytest.skip(f"no PostgreSQL server: {exc}")
    try:
        database = PostgresDatabase(server)
        yield database
        database.drop()
    finally:
        server.stop()
