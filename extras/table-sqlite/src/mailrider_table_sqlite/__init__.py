"""mailrider-table-sqlite: a table answered by an SQLite file (OpenSMTPD's table-sqlite).

Config keys: ``dbpath`` plus the SQL query keys of :mod:`mailrider_table_sql`;
the placeholder is ``?``. The file must exist (it is opened read-write but
never created, so a typo cannot make an empty database); ``query_timeout``
is how long a query waits for a lock held by a writer.
"""

from __future__ import annotations

import os
import sqlite3
import sys
import urllib.parse

import sqlalchemy
from mailrider.table.sdk import ConfigFileError, run
from mailrider_table_sql import POOL_SIZE, SQLITE, SQLBackend
from sqlalchemy.engine import Engine
from sqlalchemy.pool import QueuePool

__version__ = "0.1.0"


class SQLiteBackend(SQLBackend):
    dialect = SQLITE
    connection_keys = ("dbpath",)
    required_keys = ("dbpath",)

    def check_connection_config(self, config: dict[str, str], path: str) -> None:
        dbpath = config["dbpath"]
        if not os.path.isfile(dbpath):
            raise ConfigFileError(f"dbpath: no such file: {dbpath}", path)

    def describe(self, config: dict[str, str]) -> str:
        return f"sqlite {config['dbpath']}"

    def create_engine(self, config: dict[str, str], timeout: float) -> Engine:
        uri = "file:" + urllib.parse.quote(os.path.abspath(config["dbpath"])) + "?mode=rw"

        def connect() -> sqlite3.Connection:
            return sqlite3.connect(
                uri, uri=True, timeout=timeout, isolation_level=None, check_same_thread=False
            )

        return sqlalchemy.create_engine(
            "sqlite+pysqlite://",
            creator=connect,
            poolclass=QueuePool,
            isolation_level="AUTOCOMMIT",
            pool_size=POOL_SIZE,
            max_overflow=0,
            pool_timeout=timeout,
            pool_reset_on_return=None,
        )


Backend = SQLiteBackend


def main() -> int:
    return run(SQLiteBackend)


if __name__ == "__main__":
    sys.exit(main())
