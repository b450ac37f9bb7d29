#!/usr/bin/env python3
"""Benchmark: what MTA-STS costs a delivery, fetched and cached (docs/mta-sts.md).

    PYTHONPATH=core/src python3 tools/bench/mtasts_fetch.py [--fetches 50] [--lookups 2000]

Needs the openssl CLI (a throwaway CA and a certificate for the policy host).
Runs pony's :class:`mailrider.proc.pony_mtasts.MtaSts` in this process
against a loopback HTTPS policy server (a thread, http.server). lka's
answers (the TXT record, the policy host's address) come from a stand-in
lka: a forked process answering over a socketpair with mailrider's own IPC
channel (ipc/channel.py), as pony asks the real one; only lka's DNS cache
lookup is left out.

fetch
    ``plan()`` with an empty cache: TXT, TCP connect, TLS handshake with
    certificate verification, GET, response and policy parsing;
cached
    ``plan()`` with the policy cached: TXT, id comparison.

Printed: median and 95th percentile in milliseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import http.server
import os
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from mailrider.config import parse_string
from mailrider.ipc import messages as m
from mailrider.ipc.channel import Channel
from mailrider.ipc.policy import accepts
from mailrider.proc import pony_mtasts

POLICY = b"version: STSv1\nmode: enforce\nmx: mx.bench.test\nmax_age: 86400\n"


def certs(folder: Path) -> tuple[Path, Path, Path]:
    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=folder)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=bench CA", "-days", "1",
        "-keyout", "ca.key", "-out", "ca.pem", "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=keyCertSign")
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=mta-sts.bench.test",
        "-keyout", "web.key", "-out", "web.csr")
    (folder / "ext.cnf").write_text("subjectAltName=DNS:mta-sts.bench.test\n")
    run("x509", "-req", "-in", "web.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "1", "-out", "web.pem", "-extfile", "ext.cnf")
    return folder / "ca.pem", folder / "web.pem", folder / "web.key"


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(POLICY)))
        self.end_headers()
        self.wfile.write(POLICY)

    def log_message(self, *args: object) -> None:
        pass


async def lka_answer(chan: Channel, msg: Any, fds: list[int]) -> Any:
    if isinstance(msg, m.StsTxt):
        return m.StsTxtResult("ok", ["v=STSv1; id=bench1;"])
    if isinstance(msg, m.MxResolve):
        return m.MxResult("ok", hosts=[[0, msg.host, ["127.0.0.1"], False]])
    raise ValueError(msg)


async def lka_serve(sock: socket.socket) -> None:
    """The stand-in lka: answers until pony's end closes."""
    done = asyncio.get_running_loop().create_future()
    chan = Channel(sock, "pony", lka_answer, accepts("lka", "pony"))
    chan.on_close = lambda _c: done.done() or done.set_result(None)
    await done


def ms(values: list[float]) -> str:
    q = statistics.quantiles(values, n=20)[-1] if len(values) >= 2 else values[0]
    return f"median {statistics.median(values) * 1000:.3f} ms, p95 {q * 1000:.3f} ms"


async def bench(ca: Path, sock: socket.socket, fetches: int, lookups: int) -> None:
    conf = parse_string(f'ca bench cert "{ca}"\naction a relay mta-sts ca bench\n'
                        "match from any for any action a\n", "bench.conf")
    lka = Channel(sock, "lka", None, accepts("pony", "lka"))
    sts = pony_mtasts.MtaSts(conf, lka.ask)
    action = conf.actions["a"]
    fetch_t: list[float] = []
    for _ in range(fetches):
        sts.cache.clear()
        t0 = time.perf_counter()
        plan = await sts.plan(action, "bench.test")
        fetch_t.append(time.perf_counter() - t0)
        assert plan.mode == "enforce", plan
    cached_t: list[float] = []
    for _ in range(lookups):
        t0 = time.perf_counter()
        plan = await sts.plan(action, "bench.test")
        cached_t.append(time.perf_counter() - t0)
        assert plan.mode == "enforce", plan
    print(f"fetch  ({fetches}): {ms(fetch_t)}")
    print(f"cached ({lookups}): {ms(cached_t)}")
    lka.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fetches", type=int, default=50)
    ap.add_argument("--lookups", type=int, default=2000)
    args = ap.parse_args()
    mine, theirs = socket.socketpair()
    pid = os.fork()  # before any thread
    if pid == 0:  # the stand-in lka
        mine.close()
        asyncio.run(lka_serve(theirs))
        os._exit(0)
    theirs.close()
    with tempfile.TemporaryDirectory(prefix="mtasts-bench-") as tmp:
        ca, cert, key = certs(Path(tmp))
        httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(cert), str(key))
        httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        os.environ[pony_mtasts.PORT_ENV] = str(httpd.server_address[1])
        try:
            asyncio.run(bench(ca, mine, args.fetches, args.lookups))
        finally:
            httpd.shutdown()
            httpd.server_close()
            mine.close()
            os.waitpid(pid, 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
