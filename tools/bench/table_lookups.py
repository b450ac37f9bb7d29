#!/usr/bin/env python3
"""Benchmark: proc-table lookups through ProcTable against the example backend.

    PYTHONPATH=core/src python3 tools/bench/table_lookups.py [--count N] [--in-flight N]

Starts core/tests/table/backends/example.py (the SDK's in-memory map backend)
as ``table-example`` through mailrider.table.proc.ProcTable and measures:

- pipelined throughput: ``--in-flight`` lookups outstanding at once;
- one-at-a-time throughput and latency (p50/p99);
- the same lookup called directly in-process on the backend object, so the
  difference is what the protocol, the socket and the other process add.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BACKENDS = ROOT / "core" / "tests" / "table" / "backends"
sys.path.insert(0, str(BACKENDS))
sys.path.insert(0, str(ROOT / "core" / "src"))

import backendkit  # noqa: E402
from example import MapBackend  # noqa: E402
from mailrider.table.proc import ProcTable, find_backend  # noqa: E402

KEYS = 1000


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


def us(seconds: float) -> str:
    return f"{seconds * 1e6:.1f} us"


async def pipelined(table: ProcTable, count: int, in_flight: int) -> tuple[float, list[float]]:
    per_worker = count // in_flight
    latencies: list[float] = []

    async def worker(w: int) -> None:
        clock = time.perf_counter
        for i in range(per_worker):
            t0 = clock()
            value = await table.lookup("alias", f"user{(w * per_worker + i) % KEYS}")
            latencies.append(clock() - t0)
            assert value is not None

    start = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(in_flight)))
    return per_worker * in_flight / (time.perf_counter() - start), latencies


async def serial(table: ProcTable, count: int) -> tuple[float, list[float]]:
    latencies = []
    clock = time.perf_counter
    start = clock()
    for i in range(count):
        t0 = clock()
        value = await table.lookup("alias", f"user{i % KEYS}")
        latencies.append(clock() - t0)
        assert value is not None
    return count / (clock() - start), latencies


def direct(mapfile: str, count: int) -> list[float]:
    backend = MapBackend("bench", mapfile)
    latencies = []
    clock = time.perf_counter
    for i in range(count):
        t0 = clock()
        value = backend.lookup("alias", f"user{i % KEYS}")
        latencies.append(clock() - t0)
        assert value is not None
    return latencies


async def main_async(args: argparse.Namespace, folder: str) -> None:
    mapfile = os.path.join(folder, "map")
    with open(mapfile, "w") as f:
        for i in range(KEYS):
            f.write(f"user{i} user{i}@example.org\n")
    backendkit.install(folder, "example", "example.py")
    os.environ["MAILRIDER_LIBEXEC"] = folder
    argv, searched = find_backend("example")
    assert argv is not None, searched
    table = ProcTable("bench", argv, mapfile)
    await table.start()
    try:
        await pipelined(table, 2000, 100)  # warm up
        rounds = [await pipelined(table, args.count, args.in_flight) for _ in range(args.rounds)]
        rates = [rate for rate, _ in rounds]
        middle = sorted(range(len(rounds)), key=lambda i: rates[i])[len(rounds) // 2]
        lat_p = rounds[middle][1]
        s_rate, s_lat = await serial(table, args.serial)
    finally:
        await table.close()
    d_lat = direct(mapfile, args.serial)
    d50, d99 = percentile(d_lat, 0.50), percentile(d_lat, 0.99)
    s50, s99 = percentile(s_lat, 0.50), percentile(s_lat, 0.99)
    print(
        f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, backend: example (SDK, "
        f"in-memory map of {KEYS} keys)"
    )
    print(
        f"pipelined, {args.in_flight} in flight: "
        + ", ".join(f"{r:,.0f}" for r in rates)
        + f" lookups/s (median {statistics.median(rates):,.0f}); "
        f"latency p50 {us(percentile(lat_p, 0.5))}, p99 {us(percentile(lat_p, 0.99))}"
    )
    print(f"one at a time: {s_rate:,.0f} lookups/s; latency p50 {us(s50)}, p99 {us(s99)}")
    print(f"direct in-process call: p50 {us(d50)}, p99 {us(d99)}")
    print(f"added per lookup (one at a time vs direct): p50 {us(s50 - d50)}, p99 {us(s99 - d99)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=50_000, help="pipelined lookups per round")
    parser.add_argument("--in-flight", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--serial", type=int, default=5_000, help="one-at-a-time lookups")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        asyncio.run(main_async(args, folder))
    return 0


if __name__ == "__main__":
    sys.exit(main())
