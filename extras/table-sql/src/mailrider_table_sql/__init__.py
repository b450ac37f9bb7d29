"""Common logic of mailrider's SQL table backends (PostgreSQL, MySQL/MariaDB, SQLite).

See :mod:`mailrider_table_sql.backend` for the behaviour and
:mod:`mailrider_table_sql.placeholders` for the query rewrite.
"""

from mailrider_table_sql.backend import (
    COMMON_KEYS,
    DEFAULT_QUERY_TIMEOUT,
    POOL_RECYCLE,
    POOL_SIZE,
    QUERIES,
    SQLBackend,
    main_for,
)
from mailrider_table_sql.placeholders import MYSQL, POSTGRES, SQLITE, Dialect, rewrite

__version__ = "0.1.0"

__all__ = [
    "COMMON_KEYS",
    "DEFAULT_QUERY_TIMEOUT",
    "MYSQL",
    "POOL_RECYCLE",
    "POOL_SIZE",
    "POSTGRES",
    "QUERIES",
    "SQLITE",
    "Dialect",
    "SQLBackend",
    "main_for",
    "rewrite",
]
