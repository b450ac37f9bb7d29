"""mailrider-table-mysql: a table answered by MariaDB or MySQL (OpenSMTPD's table-mysql).

Config keys: ``host``, ``username``, ``password``, ``database`` (as
OpenSMTPD), ``port`` and ``socket`` (ours), plus the SQL query keys of
:mod:`mailrider_table_sql`; the placeholder is ``?``. Connections use PyMySQL
in autocommit mode with ``utf8mb4``; ``query_timeout`` becomes PyMySQL's
``read_timeout`` and ``write_timeout``.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

import pymysql  # type: ignore[import-untyped]
import sqlalchemy
from mailrider.table.sdk import ConfigFileError, run
from mailrider_table_sql import MYSQL, POOL_RECYCLE, POOL_SIZE, SQLBackend
from sqlalchemy.engine import Engine

__version__ = "0.1.0"

CONNECT_TIMEOUT = 5  # seconds


class MySQLBackend(SQLBackend):
    dialect = MYSQL
    connection_keys = ("host", "username", "password", "database", "port", "socket")
    required_keys = ()

    def check_connection_config(self, config: dict[str, str], path: str) -> None:
        port = config.get("port")
        if port is not None and not (port.isdigit() and 0 < int(port) < 65536):
            raise ConfigFileError(f"port: not a port number: {port}", path)
        if "socket" in config and not config["socket"].startswith("/"):
            raise ConfigFileError("socket: not an absolute path", path)

    def describe(self, config: dict[str, str]) -> str:
        where = config.get("socket") or (
            f"{config.get('host', 'localhost')}:{config.get('port', '3306')}"
        )
        return (
            f"mysql {where} database={config.get('database', '(none)')} "
            f"user={config.get('username', '(default)')}"
        )

    def secrets(self, config: dict[str, str]) -> Iterable[str]:
        return [p for p in (config.get("password"),) if p]

    def create_engine(self, config: dict[str, str], timeout: float) -> Engine:
        args: dict[str, Any] = {
            "host": config.get("host", "localhost"),
            "port": int(config.get("port", "3306")),
            "charset": "utf8mb4",
            "autocommit": True,
            "connect_timeout": CONNECT_TIMEOUT,
            "read_timeout": timeout,
            "write_timeout": timeout,
        }
        for ours, theirs in (
            ("username", "user"),
            ("password", "password"),
            ("database", "database"),
            ("socket", "unix_socket"),
        ):
            if ours in config:
                args[theirs] = config[ours]

        def connect() -> pymysql.connections.Connection[Any]:
            return pymysql.connect(**args)

        return sqlalchemy.create_engine(
            "mysql+pymysql://",
            creator=connect,
            isolation_level="AUTOCOMMIT",
            pool_size=POOL_SIZE,
            max_overflow=0,
            pool_timeout=timeout,
            pool_recycle=POOL_RECYCLE,
            pool_pre_ping=False,
            pool_reset_on_return=None,
        )


Backend = MySQLBackend


def main() -> int:
    return run(MySQLBackend)


if __name__ == "__main__":
    sys.exit(main())
