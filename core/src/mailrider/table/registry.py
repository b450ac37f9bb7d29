"""Every table of a configuration, by name (docs/config.md §2).

:class:`TableSet` opens one :class:`Table` per ``table`` statement (anonymous
inline tables included, under their generated names) plus the built-in
tables:

- ``localhost`` (netaddr): ``local``, 127.0.0.0/8, ::1 and every address of
  this host's interfaces;
- ``localnames`` (domain): ``localhost``, ``localhost.localdomain``, the
  configured server name, the system host name and its short form, the name
  in the mail-name file, and every interface address as a bare address and
  as a domain literal (``[192.0.2.1]``, ``[ipv6:2001:db8::1]``);
- ``anyhost`` and ``anydestination``: match everything;
- ``getpwnam``: the system users (userinfo).

Nothing here resolves a name through DNS: interface addresses come from the
kernel (a netlink dump on Linux; elsewhere only loopback is known).
A configuration table with a built-in's name replaces the built-in.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import ipaddress
import os
import pwd
import socket
import struct
from collections.abc import Awaitable, Callable, Iterator
from typing import cast

from mailrider import paths
from mailrider.access import program_runnable, user_can
from mailrider.config import model
from mailrider.errors import ConfigError
from mailrider.table.base import Table
from mailrider.table.db import DbTable, open_db_file
from mailrider.table.file import FileTable, read_table_file
from mailrider.table.getpwnam import GetpwnamTable
from mailrider.table.static import StaticTable

#: backends implemented inside mailrider; any other name is a proc table
BUILTIN_BACKENDS = frozenset({"static", "file", "db", "getpwnam"})
BUILTIN_TABLES = ("localhost", "localnames", "anyhost", "anydestination", "getpwnam")

FindBackend = Callable[[str], tuple[list[str] | None, list[str]]]
ProcFactory = Callable[..., Table]
#: for a table name, what starts its backend elsewhere (table.proc.Spawner)
SpawnerFor = Callable[[str], Callable[[], Awaitable[tuple[socket.socket, int, int]]]]


def _proc_api() -> tuple[FindBackend, ProcFactory]:
    # imported lazily: proc tables are optional and live in their own module
    mod = importlib.import_module("mailrider.table.proc")
    return cast(FindBackend, mod.find_backend), cast(ProcFactory, mod.ProcTable)


# --- the host's own addresses and names --------------------------------------


def _netlink_addresses() -> list[str]:
    """Every interface address, from an RTM_GETADDR netlink dump (Linux)."""
    rtm_getaddr, rtm_newaddr, nlmsg_done, nlmsg_error = 22, 20, 3, 2
    ifa_address, ifa_local = 1, 2
    flags = 0x1 | 0x300  # NLM_F_REQUEST | NLM_F_DUMP
    out: list[str] = []
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0) as s:  # type: ignore[attr-defined,unused-ignore]
        s.settimeout(2.0)
        body = struct.pack("=BBBBI", socket.AF_UNSPEC, 0, 0, 0, 0)
        s.sendall(struct.pack("=LHHLL", 16 + len(body), rtm_getaddr, flags, 1, 0) + body)
        done = False
        while not done:
            data = s.recv(65536)
            if not data:
                break
            off = 0
            while off + 16 <= len(data):
                length, mtype, _, _, _ = struct.unpack_from("=LHHLL", data, off)
                if length < 16:
                    return out
                if mtype in (nlmsg_done, nlmsg_error):
                    done = True
                    break
                if mtype == rtm_newaddr:
                    family = data[off + 16]
                    attrs: dict[int, bytes] = {}
                    a = off + 24
                    while a + 4 <= off + length:
                        alen, atype = struct.unpack_from("=HH", data, a)
                        if alen < 4:
                            break
                        attrs[atype] = data[a + 4 : a + alen]
                        a += (alen + 3) & ~3
                    raw = attrs.get(ifa_local) or attrs.get(ifa_address)
                    if family == socket.AF_INET and raw and len(raw) == 4:
                        out.append(str(ipaddress.IPv4Address(raw)))
                    elif family == socket.AF_INET6 and raw and len(raw) == 16:
                        out.append(str(ipaddress.IPv6Address(raw)))
                off += (length + 3) & ~3
    return out


def interface_addresses() -> list[str]:
    """This host's addresses (loopback always included), as plain text."""
    found = ["127.0.0.1", "::1"]
    if hasattr(socket, "AF_NETLINK"):
        with contextlib.suppress(OSError, struct.error, ValueError):
            found += _netlink_addresses()
    return list(dict.fromkeys(found))


def _literal(addr: str) -> list[str]:
    if ":" in addr:
        return [addr, f"[{addr}]", f"[ipv6:{addr}]"]
    return [addr, f"[{addr}]"]


def local_names(config: model.Config, addresses: list[str]) -> list[str]:
    names = ["localhost", "localhost.localdomain"]
    host = socket.gethostname().lower()
    if config.hostname:
        names.append(config.hostname.lower())
    if host:
        names += [host, host.split(".", 1)[0]]
    with contextlib.suppress(OSError, UnicodeError):
        with open(paths.MAILNAME_FILE, encoding="utf-8") as f:
            mailname = f.readline().strip().lower()
        if mailname:
            names += [mailname, mailname.split(".", 1)[0]]
    for addr in addresses:
        names += _literal(addr)
    return list(dict.fromkeys(n for n in names if n))


class AnyTable(StaticTable):
    """A table whose check is true for every key (``anyhost``, ``anydestination``)."""

    async def check(self, service: str, key: str) -> bool:
        return service != "auth"


# --- opening tables -------------------------------------------------------------


def open_table(t: model.Table, delim: str = "+", spawner_for: SpawnerFor | None = None) -> Table:
    """The backend object for one ``table`` statement (not started yet).

    ``delim`` is the sub-address delimiter built-in tables ignore when
    matching mailaddr entries (``smtp sub-addr-delim``); ``spawner_for``, when
    given, starts proc backends elsewhere (mailriderd's parent) instead of as
    children of this process.
    """
    backend = t.backend
    if backend == "static":
        return StaticTable(t.name, items=t.items, mapping=t.mapping, delim=delim)
    if backend == "file" or backend.startswith("/"):
        path = t.path if backend == "file" else backend
        if not path:
            raise ConfigError(f"table {t.name}: file backend needs a path", *_where(t))
        return FileTable(t.name, path, delim)
    if backend == "db":
        if not t.path:
            raise ConfigError(f"table {t.name}: db backend needs a path", *_where(t))
        return DbTable(t.name, t.path, delim)
    if backend == "getpwnam":
        return GetpwnamTable(t.name)
    find_backend, proc_table = _proc_api()
    argv, searched = find_backend(backend)
    if argv is None:
        raise _not_found(t, searched)
    if spawner_for is None:
        return proc_table(t.name, argv, t.path)
    return proc_table(t.name, argv, t.path, spawner=spawner_for(t.name))


def _where(t: model.Table) -> tuple[str, int]:
    return t.where.file, t.where.line


def _not_found(t: model.Table, searched: list[str]) -> ConfigError:
    return ConfigError(
        f"table {t.name}: backend '{t.backend}' not found (looked in: {', '.join(searched)})",
        *_where(t),
    )


def validate_backends(config: model.Config) -> None:
    """Raise ConfigError for the first proc table whose backend cannot be found."""
    for t in config.tables.values():
        if t.backend in BUILTIN_BACKENDS or t.backend.startswith("/"):
            continue
        find_backend, _ = _proc_api()
        argv, searched = find_backend(t.backend)
        if argv is None:
            raise _not_found(t, searched)


def _check_readable(t: model.Table, path: str, reader: pwd.struct_passwd | None) -> None:
    if reader is None or not os.path.exists(path):
        return
    if not user_can(reader.pw_uid, reader.pw_gid, path, os.R_OK):
        raise ConfigError(f"table {t.name}: user {reader.pw_name} cannot read {path}",
                          *_where(t))


def _check_file_table(t: model.Table, path: str, reader: pwd.struct_passwd | None) -> None:
    _check_readable(t, path, reader)
    try:
        read_table_file(path)  # a bad line is reported at its own file:line
    except OSError as exc:
        raise ConfigError(f"table {t.name}: cannot read {path}: {exc.strerror or exc}",
                          *_where(t)) from None
    except UnicodeError:
        raise ConfigError(f"table {t.name}: {path} is not UTF-8 text", *_where(t)) from None


def _check_db_table(t: model.Table, path: str, reader: pwd.struct_passwd | None) -> None:
    _check_readable(t, path, reader)
    try:
        db = open_db_file(t.name, path)
    except ConfigError as exc:
        raise ConfigError(exc.message, *_where(t)) from None
    db.conn.close()


def check_tables(config: model.Config, reader: pwd.struct_passwd | None = None,
                 runner: pwd.struct_passwd | None = None) -> None:
    """Everything about the tables that start would find wrong, as ConfigError
    at the ``table`` statement (``mailriderd -n`` and the start run it):

    - ``file:`` tables are read and parsed, ``db:`` files opened (a Berkeley
      DB file from OpenSMTPD's makemap is named as such), both readable by
      ``reader``, the user lka reads them as (None: not running as root);
    - proc backends are found, and ``runner``, the user they run as, can
      execute their program.
    """
    for t in config.tables.values():
        if t.backend == "file" or t.backend.startswith("/"):
            path = t.path if t.backend == "file" else t.backend
            if not path:
                raise ConfigError(f"table {t.name}: file backend needs a path", *_where(t))
            _check_file_table(t, path, reader)
            continue
        if t.backend == "db":
            if not t.path:
                raise ConfigError(f"table {t.name}: db backend needs a path", *_where(t))
            _check_db_table(t, t.path, reader)
            continue
        if t.backend in BUILTIN_BACKENDS:
            continue
        find_backend, _ = _proc_api()
        argv, searched = find_backend(t.backend)
        if argv is None:
            raise _not_found(t, searched)
        if runner is not None and not program_runnable(runner.pw_uid, runner.pw_gid, argv[0]):
            raise ConfigError(
                f"table {t.name}: user {runner.pw_name} cannot run the backend program "
                f"{argv[0]} (check the mode of the file and of every folder above it)",
                *_where(t))


class TableSet:
    """The tables of one configuration, plus the built-ins."""

    def __init__(self, config: model.Config, spawner_for: SpawnerFor | None = None) -> None:
        self.config = config
        addresses = interface_addresses()
        self._tables: dict[str, Table] = {
            "localhost": StaticTable("localhost", ["local", "127.0.0.0/8", "::1", *addresses]),
            "localnames": StaticTable("localnames", local_names(config, addresses)),
            "anyhost": AnyTable("anyhost", ["local", "0.0.0.0/0", "::/0"]),
            "anydestination": AnyTable("anydestination", ["*"]),
            "getpwnam": GetpwnamTable("getpwnam"),
        }
        for name, t in config.tables.items():
            self._tables[name] = open_table(t, config.sub_addr_delim, spawner_for)

    def get(self, name: str) -> Table:
        """The table called ``name``; KeyError when there is none."""
        return self._tables[name]

    def add(self, table: Table) -> None:
        """Register (or replace) a table under its own name."""
        self._tables[table.name] = table

    def __contains__(self, name: object) -> bool:
        return name in self._tables

    def __iter__(self) -> Iterator[str]:
        return iter(self._tables)

    def __len__(self) -> int:
        return len(self._tables)

    async def start(self) -> None:
        """Start every table; if one fails, close the others and re-raise its
        error (a ConfigError names the ``table`` statement's file and line)."""
        tables = list(self._tables.values())
        results = await asyncio.gather(*(t.start() for t in tables), return_exceptions=True)
        errors = [(t, r) for t, r in zip(tables, results, strict=True)
                  if isinstance(r, BaseException)]
        if errors:
            await self.close()
            table, exc = errors[0]
            statement = self.config.tables.get(table.name)
            if isinstance(exc, ConfigError) and not exc.file and statement is not None:
                raise ConfigError(exc.message, *_where(statement)) from None
            raise exc

    async def close(self) -> None:
        tables = list(self._tables.values())
        await asyncio.gather(*(t.close() for t in tables), return_exceptions=True)

    async def update(self, name: str) -> None:
        """``mailriderctl update table NAME``: KeyError if unknown, TempFail on failure."""
        await self._tables[name].update()
