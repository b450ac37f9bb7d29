#!/usr/bin/env python3
"""Benchmark: the redis and ldap table backends through the daemon's proc client.

    /tmp/mailrider-test-venv-0/bin/python tools/bench/table_redis_ldap.py [--count N]

Needs mailrider, mailrider-table-redis and mailrider-table-ldap installed in
the running interpreter's environment, and redis-server / slapd on PATH (a
backend whose server is missing is skipped). Each backend gets a throwaway
server on loopback (the test suites' helpers), then:

- ``proc``: lookups/s through mailrider.table.proc.ProcTable started on the
  entry point, as lka does, with ``--in-flight`` requests outstanding;
- ``raw 1``: the driver (redis-py / ldap3) called directly, one request at a
  time on one connection;
- ``raw 8``: the driver from 8 threads, 8 connections (what the backend's
  thread pool can use at most).

The ratio column is proc / raw 1: what the protocol, the second process and
the SDK cost (or win, by overlapping requests).
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "extras" / "table-redis" / "tests"))
sys.path.insert(0, str(ROOT / "extras" / "table-ldap" / "tests"))

from mailrider.table.proc import ProcTable, find_backend  # noqa: E402

KEYS = 1000


async def through_proc(backend: str, config: str, service: str, keys: list[str],
                       count: int, in_flight: int) -> float:
    argv, searched = find_backend(backend)
    if argv is None:
        raise SystemExit(f"backend {backend} not installed (searched {searched})")
    table = ProcTable("bench", argv, config, timeout=30)
    await table.start()
    try:
        per = count // in_flight

        async def worker(w: int) -> None:
            for i in range(per):
                value = await table.lookup(service, keys[(w * per + i) % len(keys)])
                assert value is not None

        await asyncio.gather(*(worker(w) for w in range(in_flight)))  # warm up
        start = time.perf_counter()
        await asyncio.gather(*(worker(w) for w in range(in_flight)))
        return per * in_flight / (time.perf_counter() - start)
    finally:
        await table.close()


def raw_rate(make: Callable[[], Callable[[str], object]], keys: list[str], count: int,
             threads: int) -> float:
    per = count // threads
    calls = [make() for _ in range(threads)]
    for c in calls:  # connect and warm up
        c(keys[0])

    def work(t: int) -> None:
        call = calls[t]
        for i in range(per):
            assert call(keys[(t * per + i) % len(keys)]) is not None

    start = time.perf_counter()
    if threads == 1:
        work(0)
    else:
        with concurrent.futures.ThreadPoolExecutor(threads) as pool:
            list(pool.map(work, range(threads)))
    return per * threads / (time.perf_counter() - start)


def bench_redis(args: argparse.Namespace, folder: str) -> list[tuple[str, float, float, float]]:
    import redis
    from redisserver import REDIS_SERVER, RedisServer

    if REDIS_SERVER is None:
        print("redis: skipped (redis-server not installed)")
        return []
    server = RedisServer().start()
    try:
        c = server.client()
        keys = [f"user{i}" for i in range(KEYS)]
        with c.pipeline() as p:
            for k in keys:
                p.set(f"alias:{k}", f"{k}@example.org")
            p.execute()
        config = os.path.join(folder, "redis.conf")
        Path(config).write_text(f"master 127.0.0.1\nmaster_port {server.port}\n")
        proc = asyncio.run(through_proc("redis", config, "alias", keys, args.count,
                                        args.in_flight))

        def make() -> Callable[[str], object]:
            r = redis.Redis(host="127.0.0.1", port=server.port)
            return lambda k: r.get(f"alias:{k}")

        raw1 = raw_rate(make, keys, args.count, 1)
        raw8 = raw_rate(make, keys, args.count, 8)
        return [("redis", proc, raw1, raw8)]
    finally:
        server.cleanup()


def bench_ldap(args: argparse.Namespace, folder: str) -> list[tuple[str, float, float, float]]:
    import ldap3
    from ldap3.utils.conv import escape_filter_chars
    from slapdserver import SERVICE_DN, SERVICE_PW, Slapd, missing

    reason = missing()
    if reason:
        print(f"ldap: skipped ({reason})")
        return []
    n = KEYS // 10
    entries: list[dict[str, list[str] | str]] = [
        {"dn": f"cn=user{i},ou=aliases,dc=example,dc=org", "objectClass": "nisMailAlias",
         "cn": f"user{i}", "rfc822MailMember": f"user{i}@example.org"} for i in range(n)]
    server = Slapd(entries).start()
    try:
        keys = [f"user{i}" for i in range(n)]
        config = os.path.join(folder, "ldap.conf")
        Path(config).write_text(
            f"url {server.url}\nusername {SERVICE_DN}\npassword {SERVICE_PW}\n"
            "basedn dc=example,dc=org\nalias_filter (&(objectClass=nisMailAlias)(cn=%u))\n"
            "alias_attributes rfc822MailMember\n")
        count = args.count // 4
        proc = asyncio.run(through_proc("ldap", config, "alias", keys, count, args.in_flight))

        def make() -> Callable[[str], object]:
            conn = ldap3.Connection(server.url, user=SERVICE_DN, password=SERVICE_PW,
                                    auto_bind=True, auto_escape=False, check_names=False)

            def call(k: str) -> object:
                conn.search("dc=example,dc=org",
                            f"(&(objectClass=nisMailAlias)(cn={escape_filter_chars(k)}))",
                            attributes=["rfc822MailMember"])
                return conn.response[0]["raw_attributes"]["rfc822MailMember"][0]

            return call

        raw1 = raw_rate(make, keys, count, 1)
        raw8 = raw_rate(make, keys, count, 8)
        return [("ldap", proc, raw1, raw8)]
    finally:
        server.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=20000, help="lookups per redis run "
                        "(ldap runs a quarter)")
    parser.add_argument("--in-flight", type=int, default=100)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        os.chmod(folder, 0o755)
        rows += bench_redis(args, folder)
        rows += bench_ldap(args, folder)
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, "
          f"{args.in_flight} lookups in flight through ProcTable")
    print(f"{'backend':8} {'proc lookups/s':>15} {'raw 1 /s':>10} {'raw 8 /s':>10} "
          f"{'proc/raw1':>10}")
    for name, proc, raw1, raw8 in rows:
        print(f"{name:8} {proc:15,.0f} {raw1:10,.0f} {raw8:10,.0f} {proc / raw1:10.2f}")


if __name__ == "__main__":
    main()
