"""The SQL table backend shared by table-postgres, table-mysql and table-sqlite.

A driver package subclasses :class:`SQLBackend`, names its :class:`Dialect`
and its connection keys and builds the SQLAlchemy engine; everything else —
the query keys of docs/table-protocol.md §10.2, validation, value formats, the
``fetch_source`` cache, retries and ``update`` — lives here.

Invariants:

- Queries run with the lookup key as a bound parameter, never spliced into
  the SQL text (:mod:`mailrider_table_sql.placeholders`).
- Only the services that have a query are registered; a request for another
  one is answered ``error`` by the SDK, and so is an operation the
  configuration cannot answer (``fetch`` without ``fetch_source``).
- Every database failure is answered ``error`` (a temporary failure in the
  daemon), never ``not-found``. A query whose connection turned out to be
  dead is retried once on a fresh connection, so a server restart costs the
  lookups made while it is down, not a backend restart; nothing else is
  retried.
- Every query is executed once with a dummy key when the backend starts and
  on ``update``; a syntax error, a missing table or a wrong number of
  columns stops the start (``file:line: message``) or fails the update,
  which then keeps the running configuration. If the server cannot be
  reached at start, the backend starts anyway, answers ``error`` and
  validates on the first connection that works.
- Passwords never reach a log line or a reply: connection descriptions are
  built without them, driver messages are logged only after any password of
  the configuration has been cut out, and replies carry fixed texts.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import sqlalchemy
from mailrider.table.sdk import Backend, BackendError, ConfigFileError, read_config
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Engine

from mailrider_table_sql.placeholders import PARAM, Dialect, PlaceholderError, rewrite

logger = logging.getLogger("mailrider.table.sql")

#: query key -> (service, number of columns, how rows become a value)
QUERIES: dict[str, tuple[str, int, str]] = {
    "query_alias": ("alias", 1, "list"),
    "query_domain": ("domain", 1, "first"),
    "query_credentials": ("credentials", 2, "first"),
    "query_netaddr": ("netaddr", 1, "first"),
    "query_userinfo": ("userinfo", 3, "first"),
    "query_source": ("source", 1, "first"),
    "query_mailaddr": ("mailaddr", 1, "first"),
    "query_addrname": ("addrname", 1, "first"),
    "query_mailaddrmap": ("mailaddrmap", 1, "list"),
}
FETCH_KEYS = ("fetch_source", "fetch_source_expire", "fetch_source_refresh")
COMMON_KEYS = (*QUERIES, *FETCH_KEYS, "query_timeout")

DEFAULT_FETCH_EXPIRE = 60  # seconds (docs/table-protocol.md §10.2)
DEFAULT_FETCH_REFRESH = 1000  # fetches
DEFAULT_QUERY_TIMEOUT = 5.0  # seconds; below the daemon's TABLE_REQUEST_TIMEOUT (10 s)
POOL_SIZE = 8  # = the SDK's worker threads
POOL_RECYCLE = 3600  # seconds: also outlives server-side idle timeouts (MySQL wait_timeout)
VALIDATION_KEY = "mailrider-validate@invalid"  # dummy key of the start-up check


@dataclass(frozen=True, slots=True)
class Query:
    key: str  # config key, e.g. query_alias
    service: str
    columns: int
    mode: str  # "list", "first" or "fetch"
    statement: sqlalchemy.TextClause


def _config_line(path: str, key: str) -> int:
    """The line of ``key`` in the config file (0 if not found), for error messages."""
    try:
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                stripped = line.strip()
                if stripped.startswith(key) and stripped[len(key) : len(key) + 1] in (
                    " ",
                    "\t",
                    ":",
                ):
                    return lineno
    except (OSError, UnicodeDecodeError):
        pass
    return 0


def _positive(config: dict[str, str], key: str, default: float, path: str) -> float:
    raw = config.get(key)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0 or value != value or value == float("inf"):
        raise ConfigFileError(f"{key}: not a positive number: {raw}", path, _config_line(path, key))
    return value


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", "replace")
    return str(value)


class _Source:
    """The ``fetch_source`` rows, handed out round-robin (docs/table-protocol.md §10.2)."""

    def __init__(self, expire: float, refresh: int) -> None:
        self.expire = expire
        self.refresh = refresh
        self.rows: list[str] = []
        self.loaded = float("-inf")
        self.served = 0
        self.next = 0
        self.lock = threading.Lock()

    def stale(self) -> bool:
        return (
            time.monotonic() - self.loaded >= self.expire
            or self.served >= self.refresh
            or not self.rows
        )

    def load(self, rows: list[str]) -> None:
        self.rows = rows
        self.loaded = time.monotonic()
        self.served = 0
        self.next = 0

    def take(self) -> str | None:
        if not self.rows:
            return None
        value = self.rows[self.next % len(self.rows)]
        self.next = (self.next + 1) % len(self.rows)
        self.served += 1
        return value


class Store:
    """One configuration: its engine and its prepared queries."""

    def __init__(
        self,
        engine: Engine,
        queries: dict[str, Query],
        fetch: Query | None,
        source: _Source,
        secrets: Sequence[str],
        path: str,
        timeout: float,
    ) -> None:
        self.engine = engine
        self.timeout = timeout
        self.queries = queries  # by service
        self.fetch = fetch
        self.source = source
        self.secrets = [s for s in secrets if s]
        self.path = path
        self.validated = False
        self.validate_lock = threading.Lock()

    def services(self) -> tuple[str, ...]:
        names = list(self.queries)
        if self.fetch is not None and "source" not in names:
            names.append("source")
        return tuple(names)

    def scrub(self, message: str) -> str:
        for secret in self.secrets:
            message = message.replace(secret, "********")
        return " ".join(message.split())[:300]

    def describe_error(self, exc: BaseException) -> str:
        inner = getattr(exc, "orig", None) or exc
        lines = str(inner).splitlines()
        return f"{type(inner).__name__}: {self.scrub(lines[0] if lines else '')}"

    # -- running queries ----------------------------------------------------

    def _execute(self, query: Query, key: str | None, rows: str) -> Any:
        params = {} if key is None else {PARAM: key}
        with self.engine.connect() as conn:
            result = conn.execute(query.statement, params)
            if rows == "all":
                return result.fetchall()
            if rows == "one":
                return result.first()
            keys = list(result.keys()) if result.returns_rows else None
            result.close()
            return keys

    def run(self, query: Query, key: str | None, rows: str, *, table: str) -> Any:
        """Execute ``query``; one retry when the connection was found dead."""
        for attempt in (1, 2):
            started = time.monotonic()
            try:
                return self._execute(query, key, rows)
            except sa_exc.DBAPIError as exc:
                # a dead pooled connection fails at once; a query that ran into
                # query_timeout (PyMySQL reports it as a lost connection) is not
                # run again, so a lookup never waits twice the timeout
                quick = time.monotonic() - started < self.timeout / 2
                if exc.connection_invalidated and attempt == 1 and quick:
                    logger.warning(
                        "table %s: connection lost (%s), retrying on a new one",
                        table,
                        self.describe_error(exc),
                    )
                    continue
                logger.error("table %s: %s failed: %s", table, query.key, self.describe_error(exc))
                raise BackendError("database error") from None
            except sa_exc.SQLAlchemyError as exc:
                logger.error("table %s: %s failed: %s", table, query.key, self.describe_error(exc))
                raise BackendError("database error") from None
        raise AssertionError("unreachable")

    def validate(self) -> None:
        """Run every query once with a dummy key; ConfigFileError if one is wrong.

        Connection failures raise :class:`sqlalchemy.exc.SQLAlchemyError`.
        """
        all_queries = list(self.queries.values())
        if self.fetch is not None:
            all_queries.append(self.fetch)
        for query in all_queries:
            line = _config_line(self.path, query.key)
            try:
                keys = self._execute(
                    query, None if query.mode == "fetch" else VALIDATION_KEY, "keys"
                )
            except sa_exc.DBAPIError as exc:
                if exc.connection_invalidated or isinstance(exc, sa_exc.InterfaceError):
                    raise
                if isinstance(exc, sa_exc.OperationalError) and not self.connects():
                    raise
                raise ConfigFileError(
                    f"{query.key}: {self.describe_error(exc)}", self.path, line
                ) from None
            if keys is None:
                raise ConfigFileError(f"{query.key}: the query returns no rows", self.path, line)
            if len(keys) != query.columns:
                raise ConfigFileError(
                    f"{query.key}: the query returns {len(keys)} column"
                    f"{'' if len(keys) == 1 else 's'}, {query.columns} expected",
                    self.path,
                    line,
                )
        self.validated = True

    def connects(self) -> bool:
        """True when a plain connection works, so an OperationalError is the query's."""
        try:
            with self.engine.connect() as conn:
                conn.exec_driver_sql("SELECT 1").close()
        except sa_exc.SQLAlchemyError:
            return False
        return True

    def ensure_valid(self, table: str) -> None:
        if self.validated:
            return
        with self.validate_lock:
            if self.validated:
                return
            try:
                self.validate()
            except ConfigFileError as exc:
                logger.error("table %s: %s", table, exc)
                raise BackendError("invalid query in the configuration") from None
            except sa_exc.SQLAlchemyError as exc:
                logger.error("table %s: database unreachable: %s", table, self.describe_error(exc))
                raise BackendError("database unreachable") from None
            logger.info("table %s: queries validated", table)

    def close(self) -> None:
        self.engine.dispose()


class SQLBackend(Backend):
    """A table answered by SQL queries (docs/table-protocol.md §10.2).

    Subclasses set :attr:`dialect`, :attr:`connection_keys` and
    :attr:`required_keys` and implement :meth:`create_engine` (with
    ``isolation_level="AUTOCOMMIT"`` and a connect and query timeout) and
    :meth:`describe` (the connection without its password, for the log).
    """

    dialect: ClassVar[Dialect]
    connection_keys: ClassVar[tuple[str, ...]] = ()
    required_keys: ClassVar[tuple[str, ...]] = ()

    def __init__(self, table_name: str, config_path: str | None) -> None:
        super().__init__(table_name, config_path)
        if config_path is None:
            raise BackendError(f"usage: mailrider-table-{self.dialect.name} CONFIG")
        self.store = self.load(config_path)
        self.update_lock = threading.Lock()
        try:
            self.store.validate()
        except ConfigFileError:
            self.store.close()
            raise
        except sa_exc.SQLAlchemyError as exc:
            logger.error(
                "table %s: database unreachable at start (%s): answering error until it is",
                table_name,
                self.store.describe_error(exc),
            )
        else:
            logger.info("table %s: connected, queries validated", table_name)

    # -- what subclasses provide --------------------------------------------

    def create_engine(self, config: dict[str, str], timeout: float) -> Engine:
        raise NotImplementedError

    def describe(self, config: dict[str, str]) -> str:
        raise NotImplementedError

    def secrets(self, config: dict[str, str]) -> Iterable[str]:
        """Strings that must never be logged (passwords)."""
        return ()

    def check_connection_config(self, config: dict[str, str], path: str) -> None:
        """Raise ConfigFileError for a bad connection setting."""

    # -- configuration ------------------------------------------------------

    def load(self, path: str) -> Store:
        """Read and check the config file at ``path``; the engine is made, not connected."""
        config = read_config(
            path,
            required=self.required_keys,
            known=(*COMMON_KEYS, *self.connection_keys),
        )
        self.check_connection_config(config, path)
        timeout = _positive(config, "query_timeout", DEFAULT_QUERY_TIMEOUT, path)
        expire = _positive(config, "fetch_source_expire", DEFAULT_FETCH_EXPIRE, path)
        refresh = _positive(config, "fetch_source_refresh", DEFAULT_FETCH_REFRESH, path)
        if refresh != int(refresh):
            raise ConfigFileError(
                "fetch_source_refresh: not an integer",
                path,
                _config_line(path, "fetch_source_refresh"),
            )
        queries: dict[str, Query] = {}
        fetch: Query | None = None
        for key, text in config.items():
            if key in QUERIES or key == "fetch_source":
                line = _config_line(path, key)
                try:
                    rewritten = rewrite(text, self.dialect)
                except PlaceholderError as exc:
                    raise ConfigFileError(f"{key}: {exc}", path, line) from None
                statement = sqlalchemy.text(rewritten.text)
                if key == "fetch_source":
                    if rewritten.placeholders:
                        raise ConfigFileError(f"{key}: the query takes no parameter", path, line)
                    fetch = Query(key, "source", 1, "fetch", statement)
                    continue
                if not rewritten.placeholders:
                    raise ConfigFileError(
                        f"{key}: the query has no placeholder {self.dialect.placeholder}",
                        path,
                        line,
                    )
                service, columns, mode = QUERIES[key]
                queries[service] = Query(key, service, columns, mode, statement)
        if not queries and fetch is None:
            raise ConfigFileError("no query_* or fetch_source key: nothing to serve", path)
        engine = self.create_engine(config, timeout)
        logger.info("table %s: database %s", self.table_name, self.describe(config))
        return Store(
            engine,
            queries,
            fetch,
            _Source(expire, int(refresh)),
            list(self.secrets(config)),
            path,
            timeout,
        )

    def registered(self) -> tuple[str, ...]:
        return self.store.services()

    # -- operations -----------------------------------------------------------

    def _query(self, store: Store, service: str) -> Query:
        query = store.queries.get(service)
        if query is None:
            raise BackendError(f"no query for service {service}")
        store.ensure_valid(self.table_name)
        return query

    def check(self, service: str, key: str) -> bool:
        store = self.store
        query = self._query(store, service)
        return store.run(query, key, "one", table=self.table_name) is not None

    def lookup(self, service: str, key: str) -> str | None:
        store = self.store
        query = self._query(store, service)
        if query.mode == "list":
            rows = store.run(query, key, "all", table=self.table_name)
            values = [v for v in (_text(row[0]) for row in rows) if v]
            return ", ".join(values) if values else None
        row = store.run(query, key, "one", table=self.table_name)
        if row is None:
            return None
        return ":".join(_text(v) for v in row)

    def fetch(self, service: str) -> str | None:
        store = self.store
        if service != "source" or store.fetch is None:
            raise BackendError(f"no fetch query for service {service}")
        store.ensure_valid(self.table_name)
        source = store.source
        with source.lock:
            if source.stale():
                rows = store.run(store.fetch, None, "all", table=self.table_name)
                source.load([v for v in (_text(row[0]) for row in rows) if v])
            return source.take()

    def update(self) -> None:
        assert self.config_path is not None
        with self.update_lock:
            try:
                store = self.load(self.config_path)
            except ConfigFileError as exc:
                logger.error("table %s: update: %s", self.table_name, exc)
                raise BackendError("update failed: bad configuration") from None
            try:
                store.validate()
            except ConfigFileError as exc:
                store.close()
                logger.error("table %s: update: %s", self.table_name, exc)
                raise BackendError("update failed: invalid query") from None
            except sa_exc.SQLAlchemyError as exc:
                store.close()
                logger.error(
                    "table %s: update: database unreachable: %s",
                    self.table_name,
                    store.describe_error(exc),
                )
                raise BackendError("update failed: database unreachable") from None
            old, self.store = self.store, store
            added = set(store.services()) - set(old.services())
            if added:
                logger.warning(
                    "table %s: update: services %s were not registered at start; "
                    "restart the daemon to serve them",
                    self.table_name,
                    ",".join(sorted(added)),
                )
            old.close()
            logger.info("table %s: update: configuration reloaded", self.table_name)


def main_for(cls: type[SQLBackend]) -> Callable[[], int]:
    """A console-script main that serves ``cls``."""

    def main() -> int:
        from mailrider.table.sdk import run

        return run(cls)

    return main
