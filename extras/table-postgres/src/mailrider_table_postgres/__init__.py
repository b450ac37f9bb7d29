"""mailrider-table-postgres: a table answered by PostgreSQL (OpenSMTPD's table-postgres).

Config keys: ``conninfo`` (a libpq connection string or URI) plus the SQL
query keys of :mod:`mailrider_table_sql`; the placeholder is ``$1``.
Connections use psycopg 3 in autocommit mode; ``query_timeout`` becomes the
session's ``statement_timeout``.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable

import psycopg
import sqlalchemy
from mailrider.table.sdk import ConfigFileError, run
from mailrider_table_sql import POOL_RECYCLE, POOL_SIZE, POSTGRES, SQLBackend
from psycopg import conninfo as pg_conninfo
from sqlalchemy.engine import Engine

__version__ = "0.1.0"

CONNECT_TIMEOUT = 5  # seconds, unless conninfo sets connect_timeout


def _parse(conninfo: str) -> dict[str, str]:
    try:
        return {k: str(v) for k, v in pg_conninfo.conninfo_to_dict(conninfo).items()}
    except psycopg.Error:
        # psycopg's message quotes the string, which may hold the password
        raise ValueError("not a valid libpq connection string") from None


class PostgresBackend(SQLBackend):
    dialect = POSTGRES
    connection_keys = ("conninfo",)
    required_keys = ("conninfo",)

    def check_connection_config(self, config: dict[str, str], path: str) -> None:
        try:
            _parse(config["conninfo"])
        except ValueError as exc:
            raise ConfigFileError(f"conninfo: {exc}", path) from None

    def describe(self, config: dict[str, str]) -> str:
        params = _parse(config["conninfo"])
        shown = " ".join(
            f"{k}={params[k]}"
            for k in ("host", "hostaddr", "port", "dbname", "user")
            if k in params
        )
        return f"postgres {shown or '(libpq defaults)'}"

    def secrets(self, config: dict[str, str]) -> Iterable[str]:
        return [p for p in (_parse(config["conninfo"]).get("password"),) if p]

    def create_engine(self, config: dict[str, str], timeout: float) -> Engine:
        conninfo = config["conninfo"]
        extra: dict[str, str | int] = {}
        if "connect_timeout" not in _parse(conninfo):
            extra["connect_timeout"] = CONNECT_TIMEOUT
        statement_timeout = str(max(1, int(timeout * 1000)))

        def connect() -> psycopg.Connection[tuple[object, ...]]:
            conn = psycopg.connect(conninfo, autocommit=True, **extra)  # type: ignore[arg-type]
            try:
                conn.execute(
                    "SELECT set_config('statement_timeout', %s, false)", [statement_timeout]
                )
            except BaseException:
                conn.close()
                raise
            return conn

        return sqlalchemy.create_engine(
            "postgresql+psycopg://",
            creator=connect,
            isolation_level="AUTOCOMMIT",
            pool_size=POOL_SIZE,
            max_overflow=0,
            pool_timeout=timeout,
            pool_recycle=POOL_RECYCLE,
            pool_pre_ping=False,
            pool_reset_on_return=None,
        )


Backend = PostgresBackend


def main() -> int:
    return run(PostgresBackend)


if __name__ == "__main__":
    sys.exit(main())
