"""mailrider-table-ldap: a table backend answering from an LDAP directory.

The configuration file keeps the keys of OpenSMTPD's table-ldap
(docs/table-protocol.md §10.4) and adds ``auth_filter`` (the ``auth`` service, answered
by binding as the user), ``query_timeout`` and a working ``update``.
Invariants:

- The key (and the table name) is escaped per RFC 4515 before it goes into a
  filter, so no key can change a filter's structure; filters are checked for
  syntax when the config is read.
- A service with a ``*_filter`` needs its ``*_attributes`` with exactly the
  expected number of attributes; anything else is a config error at start
  (OpenSMTPD silently ignores a wrong count). Only services with a filter are
  registered.
- Every LDAP problem (connection, bind, timeout, any result code but
  success) is answered ``error``; only an empty search result is "not found".
  ``auth`` answers "not found" only for an unknown user or a rejected password.
- Connections come from a bounded pool, each used by one thread at a time;
  one that failed is dropped, and a request that failed on a reused
  connection is tried once more on a fresh one (the server restarted).
- ``update`` re-reads the file; the new configuration replaces the running
  one only if it can connect and bind.
- Passwords (bind password, the password half of an ``auth`` key) are never
  logged and never part of an error message.
"""

from __future__ import annotations

import logging
import math
import queue
import ssl
import sys
import threading
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

import ldap3  # type: ignore[import-untyped]
from ldap3.core import exceptions as ldap_exc  # type: ignore[import-untyped]
from ldap3.operation.search import parse_filter  # type: ignore[import-untyped]
from ldap3.utils.conv import escape_filter_chars  # type: ignore[import-untyped]
from mailrider.table.sdk import (
    Backend,
    BackendError,
    ConfigFileError,
    config_line,
    read_config,
    run,
)

__all__ = ["LDAPBackend", "LDAPConfig", "compile_filter", "load_config", "main"]

logger = logging.getLogger("mailrider.table.ldap")

#: services and how many attributes each needs (docs/table-protocol.md §10.4)
ATTRIBUTE_COUNT = {
    "alias": 1,
    "credentials": 2,
    "domain": 1,
    "userinfo": 3,
    "mailaddr": 1,
    "mailaddrmap": 1,
    "netaddr": 1,
}
KNOWN = frozenset(
    {"url", "username", "password", "basedn", "ca_file", "auth_filter", "query_timeout"}
    | {f"{s}_filter" for s in ATTRIBUTE_COUNT}
    | {f"{s}_attributes" for s in ATTRIBUTE_COUNT}
)
DEFAULT_TIMEOUT = 5.0
POOL_SIZE = 8  # the SDK runs 8 handler threads
_SCHEMES = {"ldap": 389, "ldaps": 636, "ldap+tls": 389, "ldapi": 0}


Entry = tuple[str, dict[str, list[bytes]]]  # DN, attribute name (lower case) -> values


def compile_filter(text: str) -> tuple[tuple[str, str], ...]:
    """Split a filter template into ``(kind, text)`` parts: ``lit``, ``key`` or ``table``.

    ``%u`` (and its deprecated synonym ``%s``) is the key, ``%h`` the table
    name, ``%%`` a percent sign; any other ``%`` sequence raises ValueError.
    """
    parts: list[tuple[str, str]] = []
    lit: list[str] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c != "%":
            lit.append(c)
            i += 1
            continue
        nxt = text[i + 1 : i + 2]
        if nxt == "%":
            lit.append("%")
        elif nxt in ("u", "s", "h"):
            if lit:
                parts.append(("lit", "".join(lit)))
                lit = []
            parts.append(("table" if nxt == "h" else "key", ""))
        else:
            raise ValueError(f"unknown sequence %{nxt} (only %u, %h, %%, %s)")
        i += 2
    if lit:
        parts.append(("lit", "".join(lit)))
    return tuple(parts)


def render_filter(parts: tuple[tuple[str, str], ...], key: str, table: str) -> str:
    """The filter for ``key``: key and table name escaped per RFC 4515."""
    out = []
    for kind, text in parts:
        if kind == "lit":
            out.append(text)
        else:
            out.append(escape_filter_chars(key if kind == "key" else table))
    return "".join(out)


@dataclass(frozen=True)
class LDAPConfig:
    url: str
    scheme: str
    host: str
    port: int
    socket_path: str | None
    username: str | None
    password: str | None = field(repr=False)
    basedn: str
    ca_file: str | None
    timeout: float
    filters: dict[str, tuple[tuple[str, str], ...]]
    attributes: dict[str, tuple[str, ...]]

    def services(self) -> tuple[str, ...]:
        return tuple(self.filters)


def _parse_url(url: str) -> tuple[str, str, int, str | None]:
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in _SCHEMES:
        raise ValueError("expected ldap://, ldaps://, ldap+tls:// or ldapi://")
    if scheme == "ldapi":
        # the socket path is %2F-encoded in the host part (RFC 4516 style)
        host = rest.split("/", 1)[0]
        path = unquote(host)
        if not path.startswith("/"):
            raise ValueError("ldapi:// needs an encoded absolute socket path, "
                             "e.g. ldapi://%2Frun%2Fslapd%2Fldapi")
        return scheme, "", 0, path
    parts = urlsplit("ldap://" + rest)
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError("no path, query or fragment allowed (use basedn)")
    try:
        port = parts.port or _SCHEMES[scheme]
    except ValueError:
        raise ValueError("bad port") from None
    if not parts.hostname:
        raise ValueError("missing host")
    return scheme, parts.hostname, port, None


def load_config(path: str) -> LDAPConfig:
    """Read and validate a table-ldap config file; raises ConfigFileError."""
    values = read_config(path, required=("url", "basedn"), known=KNOWN)

    def err(key: str, message: str) -> ConfigFileError:
        return ConfigFileError(f"{key}: {message}", path, config_line(path, key))

    try:
        scheme, host, port, socket_path = _parse_url(values["url"])
    except ValueError as exc:
        raise err("url", str(exc)) from None
    if "ca_file" in values:
        if scheme not in ("ldaps", "ldap+tls"):
            raise err("ca_file", "only with ldaps:// or ldap+tls://")
        if not values["ca_file"].startswith("/"):
            raise err("ca_file", "path must be absolute")
    if ("username" in values) != ("password" in values):
        given = "username" if "username" in values else "password"
        other = "password" if given == "username" else "username"
        raise err(given, f"missing required key {other}")
    timeout = DEFAULT_TIMEOUT
    if "query_timeout" in values:
        try:
            timeout = float(values["query_timeout"])
        except ValueError:
            timeout = -1.0
        if not 0 < timeout <= 3600:
            raise err("query_timeout", "expected seconds (0 < n <= 3600), not "
                                       f"{values['query_timeout']!r}")
    filters: dict[str, tuple[tuple[str, str], ...]] = {}
    attributes: dict[str, tuple[str, ...]] = {}
    for service in (*ATTRIBUTE_COUNT, "auth"):
        fkey = f"{service}_filter"
        akey = f"{service}_attributes"
        if fkey not in values:
            if akey in values:
                raise err(akey, f"no {fkey}")
            continue
        try:
            parts = compile_filter(values[fkey])
            parse_filter(render_filter(parts, "key", "table"), None, False, False, None, False)
        except ValueError as exc:
            raise err(fkey, str(exc)) from None
        except ldap_exc.LDAPInvalidFilterError:
            raise err(fkey, f"invalid LDAP filter {values[fkey]!r}") from None
        filters[service] = parts
        if service == "auth":
            continue
        want = ATTRIBUTE_COUNT[service]
        if akey not in values:
            raise err(fkey, f"missing required key {akey} ({want} attribute"
                            f"{'s' if want > 1 else ''})")
        attrs = tuple(a.strip() for a in values[akey].split(","))
        if len(attrs) != want or not all(attrs):
            raise err(akey, f"{service} needs exactly {want} attribute"
                            f"{'s' if want > 1 else ''}, got {len(attrs)}: {values[akey]!r}")
        attributes[service] = attrs
    if not filters:
        raise ConfigFileError("no service configured (no *_filter key)", path)
    return LDAPConfig(
        url=values["url"],
        scheme=scheme,
        host=host,
        port=port,
        socket_path=socket_path,
        username=values.get("username"),
        password=values.get("password"),
        basedn=values["basedn"],
        ca_file=values.get("ca_file"),
        timeout=timeout,
        filters=filters,
        attributes=attributes,
    )


class _Directory:
    """One configuration: its ldap3 Server and a pool of bound connections."""

    def __init__(self, cfg: LDAPConfig, table: str) -> None:
        self.cfg = cfg
        self.table = table
        self.idle: queue.LifoQueue[ldap3.Connection] = queue.LifoQueue()
        self.slots = threading.BoundedSemaphore(POOL_SIZE)

    # connections

    def _server(self) -> ldap3.Server:
        # a fresh Server per connection: ldap3 remembers an address that failed as
        # unusable, which would outlive a restart of the directory
        cfg = self.cfg
        if cfg.socket_path:
            return ldap3.Server(f"ldapi://{cfg.url.split('://', 1)[1].split('/')[0]}",
                                get_info=ldap3.NONE, connect_timeout=cfg.timeout)
        tls = None
        if cfg.scheme in ("ldaps", "ldap+tls"):
            tls = ldap3.Tls(validate=ssl.CERT_REQUIRED, ca_certs_file=cfg.ca_file)
        return ldap3.Server(cfg.host, port=cfg.port, use_ssl=cfg.scheme == "ldaps", tls=tls,
                            get_info=ldap3.NONE, connect_timeout=cfg.timeout)

    def _safe(self, text: str) -> str:
        if self.cfg.password:
            text = text.replace(self.cfg.password, "***")
        return " ".join(text.split())[:160]

    def connect(self, user: str | None, password: str | None) -> ldap3.Connection:
        """A connection, opened, StartTLS'd if asked and bound; raises on failure."""
        conn = ldap3.Connection(
            self._server(), user=user, password=password, auto_bind=ldap3.AUTO_BIND_NONE,
            # ldap3 packs the receive timeout as a C integer
            receive_timeout=max(1, math.ceil(self.cfg.timeout)), raise_exceptions=False,
            auto_escape=False, auto_encode=False, read_only=True, client_strategy=ldap3.SYNC,
            check_names=False, return_empty_attributes=False,
        )
        try:
            conn.open()
            if self.cfg.scheme == "ldap+tls" and not conn.start_tls():
                raise BackendError(f"ldap: StartTLS failed: {conn.result.get('description')}")
            return conn
        except BaseException:
            conn.unbind()
            raise

    def _acquire(self) -> tuple[ldap3.Connection, bool]:
        if not self.slots.acquire(timeout=self.cfg.timeout):
            raise BackendError("ldap: no connection available in time")
        try:
            return self.idle.get_nowait(), True
        except queue.Empty:
            pass
        try:
            conn = self.connect(self.cfg.username, self.cfg.password)
            if self.cfg.username is not None and not conn.bind():
                desc = conn.result.get("description", "bind failed")
                conn.unbind()
                raise BackendError(f"ldap: bind as service user failed: {desc}")
            return conn, False
        except ldap_exc.LDAPException as exc:
            self.slots.release()
            raise BackendError(f"ldap: {self._safe(str(exc) or type(exc).__name__)}") from None
        except BaseException:
            self.slots.release()
            raise

    def _release(self, conn: ldap3.Connection, ok: bool) -> None:
        if ok:
            self.idle.put(conn)
        else:
            try:
                conn.unbind()
            except Exception:  # noqa: S110 - a broken connection may fail to close
                pass
        self.slots.release()

    def close(self) -> None:
        while True:
            try:
                conn = self.idle.get_nowait()
            except queue.Empty:
                return
            try:
                conn.unbind()
            except Exception:  # noqa: S110
                pass

    # searches

    def search(self, filt: str, attributes: tuple[str, ...]) -> list[Entry]:
        """Entries matching ``filt`` (subtree of basedn): DN, attribute (lower) -> values."""
        for attempt in (1, 2):
            conn, reused = self._acquire()
            ok = False
            try:
                conn.search(self.cfg.basedn, filt, search_scope=ldap3.SUBTREE,
                            attributes=list(attributes) or ldap3.NO_ATTRIBUTES)
                result = conn.result or {}
                code = result.get("result")
                if code != 0:
                    ok = code is not None and 0 < code < 80  # a server answer: keep it
                    raise BackendError(f"ldap: search failed: {result.get('description')} "
                                       f"({code})")
                ok = True
                entries = []
                for item in conn.response or ():
                    if item.get("type") != "searchResEntry":
                        continue
                    raw = item.get("raw_attributes") or {}
                    attrs = {k.lower(): list(v) for k, v in raw.items()}
                    entries.append((str(item.get("dn", "")), attrs))
                return entries
            except ldap_exc.LDAPException as exc:
                why = self._safe(str(exc) or type(exc).__name__)
                if attempt == 1 and reused:
                    logger.info("table %s: reconnecting after: %s", self.table, why)
                    continue
                raise BackendError(f"ldap: {why}") from None
            finally:
                self._release(conn, ok)
        raise AssertionError("unreachable")

    def probe(self) -> None:
        """Raise BackendError unless a connection can be made and bound."""
        conn, _ = self._acquire()
        self._release(conn, True)

    def authenticate(self, dn: str, password: str) -> bool:
        """Bind as ``dn``; False for invalid credentials, BackendError for other failures."""
        try:
            conn = self.connect(dn, password)
        except ldap_exc.LDAPException as exc:
            raise BackendError(f"ldap: {self._safe(str(exc) or type(exc).__name__)}") from None
        try:
            if conn.bind():
                return True
            result = conn.result or {}
            if result.get("result") == 49:  # invalidCredentials
                return False
            raise BackendError(f"ldap: bind failed: {result.get('description')}")
        except ldap_exc.LDAPException as exc:
            raise BackendError(f"ldap: {type(exc).__name__}") from None
        finally:
            try:
                conn.unbind()
            except Exception:  # noqa: S110
                pass


def _text(value: bytes) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise BackendError("ldap: attribute value is not UTF-8") from None


class LDAPBackend(Backend):
    """The table: services as configured, ``auth`` by binding as the user."""

    def __init__(self, table_name: str, config_path: str | None) -> None:
        super().__init__(table_name, config_path)
        if config_path is None:
            raise BackendError("usage: mailrider-table-ldap CONFIG")
        self.path = config_path
        self.directory = _Directory(load_config(config_path), table_name)
        self._services = self.directory.cfg.services()
        self._update_lock = threading.Lock()
        try:
            self.directory.probe()
        except (BackendError, ldap_exc.LDAPException) as exc:
            # not fatal: requests answer error until the directory is back
            logger.warning("table %s: %s", table_name, exc)

    def registered(self) -> tuple[str, ...]:
        return self._services

    def _search(self, directory: _Directory, service: str, key: str,
                attributes: tuple[str, ...]) -> list[Entry]:
        parts = directory.cfg.filters.get(service)
        if parts is None:
            raise BackendError(f"service {service} not configured")
        return directory.search(render_filter(parts, key, self.table_name), attributes)

    def check(self, service: str, key: str) -> bool:
        directory = self.directory
        if service == "auth":
            return self._auth(directory, key)
        return bool(self._search(directory, service, key, ()))

    def lookup(self, service: str, key: str) -> str | None:
        directory = self.directory
        if service == "auth":
            raise BackendError("auth supports check only")
        attrs = directory.cfg.attributes[service]
        entries = self._search(directory, service, key, attrs)
        names = [a.lower() for a in attrs]
        if service in ("alias", "mailaddrmap"):
            values = [_text(v) for _, e in entries for v in e.get(names[0], ())]
            return ", ".join(v for v in values if v) or None
        for _, entry in entries:
            firsts = [entry.get(n, [b""])[0] for n in names]
            if all(firsts):
                return ":".join(_text(v) for v in firsts)
        return None

    def _auth(self, directory: _Directory, key: str) -> bool:
        user, sep, password = key.partition(":")
        if not sep or not user or not password:
            return False  # an empty password would be an anonymous bind: never valid
        dns = [dn for dn, _ in self._search(directory, "auth", user, ())]
        if len(dns) != 1:
            if len(dns) > 1:
                logger.warning("table %s: auth: %d entries match one user, refused",
                               self.table_name, len(dns))
            return False
        return directory.authenticate(dns[0], password)

    def update(self) -> None:
        with self._update_lock:
            try:
                new = _Directory(load_config(self.path), self.table_name)
            except ConfigFileError as exc:
                raise BackendError(f"update: {exc}") from None
            try:
                new.probe()
            except (BackendError, ldap_exc.LDAPException) as exc:
                new.close()
                raise BackendError(f"update: new configuration not used: {exc}") from None
            missing = set(new.cfg.services()) - set(self._services)
            if missing:
                logger.warning("table %s: update: services %s need a restart to be "
                               "registered", self.table_name, ", ".join(sorted(missing)))
            old, self.directory = self.directory, new
            old.close()
            logger.info("table %s: configuration re-read", self.table_name)


def main() -> int:
    """Console script ``mailrider-table-ldap``: argv[1] is the config path."""
    return run(LDAPBackend)


if __name__ == "__main__":
    sys.exit(main())
