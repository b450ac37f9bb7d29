"""mailrider-table-redis: a table backend answering from Redis.

The configuration file keeps the keys of OpenSMTPD's table-redis
(docs/table-protocol.md §10.3) and adds TLS, unix sockets, ACL user names and a query
timeout. Invariants:

- The lookup key is always exactly one command argument: a ``query_*``
  template is split into arguments when the config is read, and ``%s`` is
  replaced inside an argument afterwards, so no key (spaces, quotes, ``*``)
  can add, remove or split arguments.
- Only a nil reply, an integer 0 (check) or an empty array is "not found";
  every Redis error reply, connection failure, timeout or unexpected reply
  type is answered ``error``.
- Queries go to the master; when it cannot be reached the slave (if any)
  answers, and the master is tried first again after ``_DOWN_FOR`` seconds.
  Connections come from a pool and are re-made after a server restart.
- ``update`` re-reads the file; the new configuration replaces the running
  one only if it can reach a server.
- The password is never logged and never part of an error message.
"""

from __future__ import annotations

import inspect
import logging
import re
import sys
import threading
import time
from dataclasses import dataclass, field

import redis
from mailrider.table.sdk import (
    Backend,
    BackendError,
    ConfigFileError,
    config_line,
    read_config,
    run,
)
from redis.backoff import NoBackoff
from redis.retry import Retry

__all__ = ["RedisBackend", "RedisConfig", "load_config", "main", "split_template"]

logger = logging.getLogger("mailrider.table.redis")

#: services answered, with OpenSMTPD's default queries (mailaddrmap is ours)
SERVICES = (
    "alias",
    "domain",
    "credentials",
    "netaddr",
    "userinfo",
    "source",
    "mailaddr",
    "addrname",
    "mailaddrmap",
)
#: lookup of these services accepts an array reply, joined with this separator
_JOIN = {"alias": ", ", "mailaddrmap": ", ", "credentials": ":", "userinfo": ":"}
_BOOL = {"yes": True, "true": True, "on": True, "1": True,
         "no": False, "false": False, "off": False, "0": False}
KNOWN = frozenset(
    {
        "master", "master_port", "slave", "slave_port", "database", "password", "username",
        "query_timeout", "tls", "tls_ca_file", "tls_cert_file", "tls_key_file", "tls_verify",
    }
    | {f"query_{s}" for s in SERVICES}
)
DEFAULT_TIMEOUT = 5.0
DATABASE_MAX = 256  # as OpenSMTPD's table-redis
POOL_SIZE = 16  # the SDK runs 8 handler threads; room for update's ping
_DOWN_FOR = 2.0  # seconds a failing master is skipped in favour of the slave
# redis-py before 5.0 speaks only RESP2 and has no ``protocol`` argument (a
# Connection built with it raises TypeError); later versions may default to
# RESP3, whose reply types differ, so it is asked for explicitly there.
_HAS_PROTOCOL = tuple(int(n) for n in re.findall(r"\d+", redis.__version__)[:1]) >= (5,)
# get_connection() requires a command name before redis-py 5.3 and deprecates
# one after; the name only chose a connection for cluster clients.
_GET_PARAMS = inspect.signature(redis.BlockingConnectionPool.get_connection).parameters
_NEEDS_COMMAND_NAME = (
    "command_name" in _GET_PARAMS
    and _GET_PARAMS["command_name"].default is inspect.Parameter.empty
)
# disconnect(inuse_connections=False) (redis-py 4.4) spares connections that a
# query of the replaced configuration still uses. Before it, disconnect() cuts
# them under that query (which then fails with AttributeError), so the old pool
# is left to the garbage collector instead: each connection closes when freed.
_CAN_SPARE_INUSE = "inuse_connections" in inspect.signature(
    redis.BlockingConnectionPool.disconnect).parameters
# a unix socket connection takes socket_connect_timeout since redis-py 4.4;
# before, its connect() is bounded by socket_timeout, which is the same value
_UNIX_PARAMS = inspect.signature(redis.UnixDomainSocketConnection.__init__).parameters
_UNIX_CONNECT_TIMEOUT = "socket_connect_timeout" in _UNIX_PARAMS or any(
    p.kind is inspect.Parameter.VAR_KEYWORD for p in _UNIX_PARAMS.values())


def split_template(template: str) -> tuple[tuple[str, bool], ...]:
    """Split a command template into ``(argument, has_key)`` pairs.

    Arguments are separated by blanks (as hiredis formats a command); in each
    argument ``%s`` stands for the key and ``%%`` for a percent sign. The
    substitution happens per argument, so the key is never split. Raises
    ValueError for another ``%`` sequence or an empty template.
    """
    words = template.split()
    if not words:
        raise ValueError("empty command")
    out = []
    for word in words:
        has_key = False
        i = 0
        while True:
            i = word.find("%", i)
            if i < 0:
                break
            nxt = word[i + 1 : i + 2]
            if nxt == "s":
                has_key = True
            elif nxt != "%":
                raise ValueError(f"unknown sequence %{nxt} in command (only %s and %%)")
            i += 2
        out.append((word, has_key))
    return tuple(out)


def expand(template: tuple[tuple[str, bool], ...], key: str) -> list[str]:
    """The command's arguments with the key substituted (one argument per word)."""
    args = []
    for word, has_key in template:
        if "%" in word:
            parts = word.split("%%")
            if has_key:
                parts = [p.replace("%s", key) for p in parts]
            word = "%".join(parts)
        args.append(word)
    return args


@dataclass(frozen=True)
class Endpoint:
    """One server: a host and port, or a unix socket path."""

    role: str
    host: str
    port: int
    path: str | None

    def __str__(self) -> str:
        where = f"unix:{self.path}" if self.path else f"{self.host}:{self.port}"
        return f"{self.role} {where}"


@dataclass(frozen=True)
class RedisConfig:
    master: Endpoint
    slave: Endpoint | None
    database: int
    username: str | None
    password: str | None = field(repr=False)
    timeout: float
    tls: bool
    tls_ca_file: str | None
    tls_cert_file: str | None
    tls_key_file: str | None
    tls_verify: bool
    queries: dict[str, tuple[tuple[str, bool], ...]]


def _endpoint(
    role: str, values: dict[str, str], default_port: int, path: str
) -> Endpoint | None:
    host = values.get(role)
    port_text = values.get(f"{role}_port")
    if host is None:
        if role == "slave":
            if port_text is not None:
                raise ConfigFileError(
                    "slave_port without slave", path, config_line(path, "slave_port")
                )
            return None
        host = "127.0.0.1"
    if host.startswith("unix:"):
        sock = host[5:]
        if not sock.startswith("/"):
            raise ConfigFileError(
                f"{role}: unix socket path must be absolute", path, config_line(path, role)
            )
        return Endpoint(role, "", 0, sock)
    port = default_port
    if port_text is not None:
        try:
            port = int(port_text, 10)
        except ValueError:
            port = -1
        if not 1 <= port <= 65535:
            raise ConfigFileError(
                f"{role}_port: not a port number (1-65535): {port_text!r}",
                path,
                config_line(path, f"{role}_port"),
            )
    return Endpoint(role, host, port, None)


def load_config(path: str) -> RedisConfig:
    """Read and validate a table-redis config file; raises ConfigFileError."""
    values = read_config(path, known=KNOWN)

    def err(key: str, message: str) -> ConfigFileError:
        return ConfigFileError(f"{key}: {message}", path, config_line(path, key))

    def boolean(key: str, default: bool) -> bool:
        if key not in values:
            return default
        value = _BOOL.get(values[key].lower())
        if value is None:
            raise err(key, f"expected yes or no, not {values[key]!r}")
        return value

    master = _endpoint("master", values, 6379, path)
    assert master is not None
    slave = _endpoint("slave", values, 6380, path)
    database = 0
    if "database" in values:
        try:
            database = int(values["database"], 10)
        except ValueError:
            database = -1
        if not 0 <= database <= DATABASE_MAX:
            raise err("database", f"not a database number (0-{DATABASE_MAX}): "
                                  f"{values['database']!r}")
    timeout = DEFAULT_TIMEOUT
    if "query_timeout" in values:
        try:
            timeout = float(values["query_timeout"])
        except ValueError:
            timeout = -1.0
        if not 0 < timeout <= 3600:
            raise err("query_timeout", "expected seconds (0 < n <= 3600), not "
                                       f"{values['query_timeout']!r}")
    tls = boolean("tls", False)
    tls_keys = ("tls_ca_file", "tls_cert_file", "tls_key_file", "tls_verify")
    if not tls:
        for key in tls_keys:
            if key in values:
                raise err(key, "needs tls yes")
    if tls and any(e.path for e in (master, slave) if e is not None):
        raise err("tls", "TLS over a unix socket is not supported")
    if ("tls_cert_file" in values) != ("tls_key_file" in values):
        given = "tls_cert_file" if "tls_cert_file" in values else "tls_key_file"
        other = "tls_key_file" if given == "tls_cert_file" else "tls_cert_file"
        raise err(given, f"missing required key {other}")
    for key in ("tls_ca_file", "tls_cert_file", "tls_key_file"):
        if key in values and not values[key].startswith("/"):
            raise err(key, "path must be absolute")
    queries = {}
    for service in SERVICES:
        key = f"query_{service}"
        try:
            queries[service] = split_template(values.get(key, f"GET {service}:%s"))
        except ValueError as exc:
            raise err(key, str(exc)) from None
    return RedisConfig(
        master=master,
        slave=slave,
        database=database,
        username=values.get("username"),
        password=values.get("password"),
        timeout=timeout,
        tls=tls,
        tls_ca_file=values.get("tls_ca_file"),
        tls_cert_file=values.get("tls_cert_file"),
        tls_key_file=values.get("tls_key_file"),
        tls_verify=boolean("tls_verify", True),
        queries=queries,
    )


class _Server:
    """A connection pool to one endpoint, and whether it failed recently."""

    def __init__(self, endpoint: Endpoint, cfg: RedisConfig) -> None:
        self.endpoint = endpoint
        self.down_until = 0.0
        kwargs: dict[str, object] = {
            "db": cfg.database,
            "username": cfg.username,
            "password": cfg.password,
            "socket_timeout": cfg.timeout,
            "socket_connect_timeout": cfg.timeout,
            "retry": Retry(NoBackoff(), 0),
        }
        if _HAS_PROTOCOL:
            kwargs["protocol"] = 2
        cls: type[redis.Connection] | type[redis.UnixDomainSocketConnection]
        if endpoint.path:
            cls = redis.UnixDomainSocketConnection
            kwargs["path"] = endpoint.path
            if not _UNIX_CONNECT_TIMEOUT:
                del kwargs["socket_connect_timeout"]
        else:
            kwargs["host"] = endpoint.host
            kwargs["port"] = endpoint.port
            cls = redis.Connection
            if cfg.tls:
                cls = redis.SSLConnection
                kwargs.update(
                    ssl_ca_certs=cfg.tls_ca_file,
                    ssl_certfile=cfg.tls_cert_file,
                    ssl_keyfile=cfg.tls_key_file,
                    ssl_cert_reqs="required" if cfg.tls_verify else "none",
                    ssl_check_hostname=cfg.tls_verify,
                )
        self.pool = redis.BlockingConnectionPool(  # type: ignore[no-untyped-call]
            connection_class=cls, max_connections=POOL_SIZE, timeout=cfg.timeout, **kwargs
        )

    def execute(self, args: list[str]) -> object:
        # One retry when a pooled connection turns out dead (server restart);
        # a timeout is not retried, it already cost the whole budget.
        for attempt in (1, 2):
            conn = (
                self.pool.get_connection(args[0])  # type: ignore[no-untyped-call]
                if _NEEDS_COMMAND_NAME
                else self.pool.get_connection()  # type: ignore[no-untyped-call]
            )
            try:
                conn.send_command(*args)
                return conn.read_response()
            except redis.ResponseError:
                raise
            except redis.TimeoutError:
                conn.disconnect()
                raise
            except (redis.ConnectionError, OSError):
                conn.disconnect()
                if attempt == 2:
                    raise
            finally:
                self.pool.release(conn)  # type: ignore[no-untyped-call]
        raise AssertionError("unreachable")

    def close(self) -> None:
        if _CAN_SPARE_INUSE:
            self.pool.disconnect(inuse_connections=False)


class _State:
    """Everything one configuration needs; replaced as a whole by update."""

    def __init__(self, cfg: RedisConfig) -> None:
        self.cfg = cfg
        self.servers = [_Server(cfg.master, cfg)]
        if cfg.slave is not None:
            self.servers.append(_Server(cfg.slave, cfg))

    def close(self) -> None:
        for server in self.servers:
            server.close()

    def safe(self, text: str) -> str:
        if self.cfg.password:
            text = text.replace(self.cfg.password, "***")
        return " ".join(text.split())[:160]

    def query(self, args: list[str]) -> object:
        now = time.monotonic()
        # failing servers last, so the master is skipped only while it fails
        order = sorted(self.servers, key=lambda s: s.down_until > now)
        problems = []
        for server in order:
            try:
                reply = server.execute(args)
            except redis.ResponseError as exc:
                server.down_until = 0.0
                raise BackendError(f"redis: {self.safe(str(exc))}") from None
            except (redis.RedisError, OSError) as exc:
                server.down_until = time.monotonic() + _DOWN_FOR
                why = self.safe(str(exc) or type(exc).__name__)
                logger.warning("redis %s: %s", server.endpoint, why)
                problems.append(f"{server.endpoint}: {why}")
                continue
            server.down_until = 0.0
            return reply
        raise BackendError("redis unavailable: " + "; ".join(problems))

    def ping(self) -> None:
        """Raise BackendError unless some server answers (an error reply counts:
        an ACL user may lack the PING permission)."""
        problems = []
        for server in self.servers:
            try:
                server.execute(["PING"])
                return
            except redis.ResponseError:
                return
            except (redis.RedisError, OSError) as exc:
                problems.append(f"{server.endpoint}: {self.safe(str(exc) or type(exc).__name__)}")
        raise BackendError("redis unavailable: " + "; ".join(problems))


def _text(value: object) -> str:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise BackendError("redis: value is not UTF-8") from None
    if isinstance(value, int):
        return str(value)
    raise BackendError(f"redis: unexpected {type(value).__name__} in reply")


class RedisBackend(Backend):
    """The table: check/lookup per docs/table-protocol.md §10.3, update re-reads the config."""

    services = SERVICES

    def __init__(self, table_name: str, config_path: str | None) -> None:
        super().__init__(table_name, config_path)
        if config_path is None:
            raise BackendError("usage: mailrider-table-redis CONFIG")
        self.path = config_path
        self.state = _State(load_config(config_path))
        self._update_lock = threading.Lock()
        try:
            self.state.ping()
        except BackendError as exc:
            # not fatal: lookups answer error until the server is back
            logger.warning("table %s: %s", table_name, exc)

    def check(self, service: str, key: str) -> bool | None:
        state = self.state
        reply = state.query(expand(state.cfg.queries[service], key))
        if reply is None:
            return False
        if isinstance(reply, int):  # SISMEMBER, EXISTS, ...
            return reply != 0
        if isinstance(reply, bytes):
            return True
        if isinstance(reply, list):
            return bool(reply)
        raise BackendError(f"redis: unexpected {type(reply).__name__} reply")

    def lookup(self, service: str, key: str) -> str | None:
        state = self.state
        reply = state.query(expand(state.cfg.queries[service], key))
        if reply is None:
            return None
        if isinstance(reply, bytes):
            return _text(reply) or None
        sep = _JOIN.get(service)
        if isinstance(reply, list) and sep is not None:
            items = [None if v is None else _text(v) for v in reply]
            if sep == ":" and None in items:
                # HMGET of a missing hash gives all nils; some nils is bad data
                if all(v is None for v in items):
                    return None
                raise BackendError(f"redis: incomplete {service} entry")
            present = [v for v in items if v]
            return sep.join(present) if present else None
        raise BackendError(f"redis: {service} lookup got an {type(reply).__name__} reply")

    def update(self) -> None:
        with self._update_lock:
            try:
                new = _State(load_config(self.path))
            except ConfigFileError as exc:
                raise BackendError(f"update: {exc}") from None
            try:
                new.ping()
            except BackendError as exc:
                new.close()
                raise BackendError(f"update: new configuration not used: {exc}") from None
            old, self.state = self.state, new
            old.close()
            logger.info("table %s: configuration re-read", self.table_name)


def main() -> int:
    """Console script ``mailrider-table-redis``: argv[1] is the config path."""
    return run(RedisBackend)


if __name__ == "__main__":
    sys.exit(main())
