#!/usr/bin/env python3
"""Benchmark: SQL table backends through the daemon's proc client vs the raw drivers.

    /tmp/mailrider-test-venv-0/bin/python tools/bench/table_sql.py [--count N] [--in-flight N]
        [--backends postgres,mysql,sqlite]

Needs the core and extras/table-{sql,postgres,mysql,sqlite} installed in the
interpreter's environment. Starts throwaway PostgreSQL and MariaDB servers
(extras/table-sql/tests/sqlservers.py; MAILRIDER_TEST_POSTGRES_CONNINFO and
MAILRIDER_TEST_MYSQL select running ones) and an SQLite file, fills a table
of ``--keys`` aliases and measures, per backend:

- ``proc``: lookups/s through mailrider.table.proc.ProcTable, the backend
  started from its entry point as the daemon starts it, ``--in-flight``
  lookups outstanding at once;
- ``direct``: lookups/s calling the backend object in-process, one at a time
  (SQLAlchemy and our code, no protocol);
- ``raw``: lookups/s of the bare driver on one connection, one at a time,
  same query (what a serial C backend does); and ``raw x8``: the driver on 8
  connections in 8 threads, the concurrency the backend itself uses.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import os
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "extras" / "table-sql" / "tests"))

import sqlservers  # noqa: E402
from mailrider.table.proc import ProcTable, find_backend  # noqa: E402

QUERY = "SELECT target FROM bench WHERE source = {p}"


def rate(count: int, fn: Callable[[int], object]) -> float:
    start = time.perf_counter()
    for i in range(count):
        fn(i)
    return count / (time.perf_counter() - start)


def threaded_rate(count: int, threads: int, make: Callable[[], Callable[[int], object]]) -> float:
    fns = [make() for _ in range(threads)]
    per = count // threads
    barrier = threading.Barrier(threads + 1)

    def work(fn: Callable[[int], object]) -> None:
        barrier.wait()
        for i in range(per):
            fn(i)

    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        futures = [pool.submit(work, fn) for fn in fns]
        barrier.wait()
        start = time.perf_counter()
        for f in futures:
            f.result()
        return per * threads / (time.perf_counter() - start)


async def proc_rate(name: str, config: str, count: int, in_flight: int, keys: int) -> float:
    argv, searched = find_backend(name)
    if argv is None:
        raise SystemExit(f"backend {name} not installed: searched {searched}")
    table = ProcTable("bench", argv, config)
    await table.start()
    try:

        async def run(total: int) -> float:
            per = total // in_flight

            async def worker(w: int) -> None:
                for i in range(per):
                    value = await table.lookup("alias", f"user{(w * per + i) % keys}")
                    assert value is not None

            start = time.perf_counter()
            await asyncio.gather(*(worker(w) for w in range(in_flight)))
            return per * in_flight / (time.perf_counter() - start)

        await run(min(count, 2000))  # warm up: pool filled, statements cached
        return await run(count)
    finally:
        await table.close()


def fill(execute: Callable[[str], Any], keys: int) -> None:
    execute("CREATE TABLE bench (source VARCHAR(64) PRIMARY KEY, target VARCHAR(255))")
    for start in range(0, keys, 500):
        values = ", ".join(
            f"('user{i}', 'user{i}@example.org')" for i in range(start, min(keys, start + 500))
        )
        execute(f"INSERT INTO bench VALUES {values}")


def setup_postgres(
    folder: Path, keys: int, cleanup: list[Callable[[], None]]
) -> tuple[str, Callable[[], Callable[[int], object]], Any]:
    import psycopg
    from mailrider_table_postgres import PostgresBackend

    server = sqlservers.Postgres().start()
    cleanup.append(server.stop)
    dbname = sqlservers.unique_name("mrbench")
    with psycopg.connect(server.conninfo, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {dbname}")
    conninfo = psycopg.conninfo.make_conninfo(server.conninfo, dbname=dbname)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        fill(conn.execute, keys)
    config = folder / "pg.conf"
    config.write_text(f"conninfo {conninfo}\nquery_alias {QUERY.format(p='$1')}\n")

    def raw() -> Callable[[int], object]:
        conn = psycopg.connect(conninfo, autocommit=True)
        cleanup.append(conn.close)
        sql = QUERY.format(p="%s")
        return lambda i: conn.execute(sql, (f"user{i % keys}",)).fetchall()

    return str(config), raw, PostgresBackend


def setup_mysql(
    folder: Path, keys: int, cleanup: list[Callable[[], None]]
) -> tuple[str, Callable[[], Callable[[int], object]], Any]:
    import pymysql
    from mailrider_table_mysql import MySQLBackend

    server = sqlservers.MariaDB().start()
    cleanup.append(server.stop)
    dbname = sqlservers.unique_name("mrbench")
    args = dict(
        host=server.host,
        port=server.port,
        user=server.user,
        password=server.password,
        autocommit=True,
    )
    conn = pymysql.connect(**args)
    with conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE {dbname}")
        cur.execute(f"USE {dbname}")
        fill(cur.execute, keys)
    conn.close()
    config = folder / "my.conf"
    config.write_text(
        f"host {server.host}\nport {server.port}\nusername {server.user}\n"
        + (f"password {server.password}\n" if server.password else "")
        + f"database {dbname}\nquery_alias {QUERY.format(p='?')}\n"
    )

    def raw() -> Callable[[int], object]:
        c = pymysql.connect(database=dbname, **args)
        cleanup.append(c.close)
        cur = c.cursor()
        sql = QUERY.format(p="%s")

        def one(i: int) -> object:
            cur.execute(sql, (f"user{i % keys}",))
            return cur.fetchall()

        return one

    return str(config), raw, MySQLBackend


def setup_sqlite(
    folder: Path, keys: int, cleanup: list[Callable[[], None]]
) -> tuple[str, Callable[[], Callable[[int], object]], Any]:
    from mailrider_table_sqlite import SQLiteBackend

    path = folder / "bench.db"
    conn = sqlite3.connect(path, isolation_level=None)
    fill(conn.execute, keys)
    conn.close()
    config = folder / "sqlite.conf"
    config.write_text(f"dbpath {path}\nquery_alias {QUERY.format(p='?')}\n")

    def raw() -> Callable[[int], object]:
        c = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        cleanup.append(c.close)
        sql = QUERY.format(p="?")
        return lambda i: c.execute(sql, (f"user{i % keys}",)).fetchall()

    return str(config), raw, SQLiteBackend


SETUPS = {"postgres": setup_postgres, "mysql": setup_mysql, "sqlite": setup_sqlite}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--in-flight", type=int, default=100)
    parser.add_argument("--keys", type=int, default=1000)
    parser.add_argument("--backends", default="postgres,mysql,sqlite")
    args = parser.parse_args()
    rows = []
    for name in args.backends.split(","):
        folder = Path(tempfile.mkdtemp(prefix="mailrider-bench-"))
        cleanup: list[Callable[[], None]] = []
        try:
            config, raw, backend_cls = SETUPS[name](folder, args.keys, cleanup)
            proc = asyncio.run(proc_rate(name, config, args.count, args.in_flight, args.keys))
            backend = backend_cls("bench", config)
            lookup, keys = backend.lookup, args.keys
            direct = rate(args.count // 4, lambda i, f=lookup, k=keys: f("alias", f"user{i % k}"))
            backend.store.close()
            raw1 = rate(args.count // 4, raw())
            raw8 = threaded_rate(args.count // 2, 8, raw)
            rows.append((name, proc, direct, raw1, raw8))
        finally:
            for fn in reversed(cleanup):
                try:
                    fn()
                except Exception:
                    pass
            shutil.rmtree(folder, ignore_errors=True)
    print(
        f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, {args.keys} keys, "
        f"proc: {args.in_flight} in flight, {args.count} lookups"
    )
    header = ("backend", "proc/s", "direct/s", "raw/s", "raw x8/s", "proc/raw", "proc/raw x8")
    print("{:<9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>11}".format(*header))
    for name, proc, direct, raw1, raw8 in rows:
        print(
            f"{name:<9} {proc:>9,.0f} {direct:>9,.0f} {raw1:>9,.0f} {raw8:>9,.0f} "
            f"{proc / raw1:>9.2f} {proc / raw8:>11.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
