#!/usr/bin/env python3
"""What DANE costs per outgoing connection, on loopback (docs/dane.md §5).

    PYTHONPATH=core/src python3 tools/bench/dane.py [--lookups 500] [--checks 2000]

1. **TLSA lookup, as pony makes it**: a ``TlsaLookup`` over a real IPC
   channel (a socketpair, both ends in this process) to lka's handler
   (``proc/lka_dns.tlsa``), whose resolver asks the test DNS server on
   127.0.0.1: uncached (the resolver's cache flushed before each lookup: a
   UDP round trip to the server) and cached (the answer from lka's cache).
2. **Verification after the handshake**: extracting the peer's chain from a
   real ``SSLObject`` (an in-memory TLS 1.3 handshake), then ``3 1 1``
   (SHA-256 of the leaf's SPKI, a DER walk) and ``2 1 1`` (the intermediate
   matched, then OpenSSL's path validation to it with the host name).
3. For scale: the in-memory TLS handshake itself (client and server both
   in this process).

Each figure is the median of its runs, in microseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import ssl
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "core" / "tests" / "dns"))
sys.path.insert(0, str(ROOT / "core" / "tests" / "crypto"))
if not any(Path(p, "mailrider").is_dir() for p in sys.path if p):
    sys.path.append(str(ROOT / "core" / "src"))

from dane_util import make_dane_pki, rdata, tlsa  # noqa: E402
from dnsserver import DNSServer  # noqa: E402
from mailrider.crypto import dane, x509chain  # noqa: E402
from mailrider.dns import wire  # noqa: E402
from mailrider.dns.resolver import Resolver, ResolverConfig  # noqa: E402
from mailrider.ipc import messages as m  # noqa: E402
from mailrider.ipc.channel import Channel  # noqa: E402
from mailrider.ipc.policy import accepts  # noqa: E402
from mailrider.proc import lka_dns  # noqa: E402

HOST = "mx.dane.test"


def us(samples: list[float]) -> str:
    return f"{statistics.median(samples) * 1e6:8.1f} us"


async def lookups(n: int, records: list[bytes]) -> tuple[list[float], list[float]]:
    async with DNSServer({(f"_25._tcp.{HOST}", wire.TLSA): records}, ad=True) as srv:  # type: ignore[dict-item]
        resolver = Resolver(ResolverConfig(nameservers=[srv.address], timeout=2, attempts=1))

        async def handler(chan: Channel, msg: object, fds: list[int]) -> object:
            assert isinstance(msg, m.TlsaLookup)
            return await lka_dns.tlsa(resolver, msg, 25, True)

        a, b = socket.socketpair()
        lka = Channel(a, "pony", handler, accepts("lka", "pony"))
        pony = Channel(b, "lka", None, accepts("pony", "lka"))
        uncached: list[float] = []
        cached: list[float] = []
        for _ in range(n):
            resolver.flush_cache()
            t0 = time.perf_counter()
            reply = await pony.ask(m.TlsaLookup(host=HOST))
            uncached.append(time.perf_counter() - t0)
            assert isinstance(reply, m.TlsaResult) and reply.status == "ok" and reply.authentic
            t0 = time.perf_counter()
            reply = await pony.ask(m.TlsaLookup(host=HOST))
            cached.append(time.perf_counter() - t0)
            assert reply.records
        lka.close()
        pony.close()
        return uncached, cached


def handshake(server_ctx: ssl.SSLContext) -> tuple[ssl.SSLObject, float]:
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.check_hostname = False
    client_ctx.verify_mode = ssl.CERT_NONE
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname=HOST)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    t0 = time.perf_counter()
    done_c = done_s = False
    while not (done_c and done_s):
        for obj, done in ((client, done_c), (server, done_s)):
            if done:
                continue
            try:
                obj.do_handshake()
                if obj is client:
                    done_c = True
                else:
                    done_s = True
            except ssl.SSLWantReadError:
                pass
        if c_out.pending:
            s_in.write(c_out.read())
        if s_out.pending:
            c_in.write(s_out.read())
    return client, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lookups", type=int, default=500)
    ap.add_argument("--checks", type=int, default=2000)
    args = ap.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="dane-bench-"))
    pki = make_dane_pki(folder, HOST)
    ee311 = dane.Tlsa(3, 1, 1, tlsa(folder, pki.ee, 1, 1))
    ta211 = dane.Tlsa(2, 1, 1, tlsa(folder, pki.inter, 1, 1))
    uncached, cached = asyncio.run(lookups(args.lookups, [rdata(3, 1, 1, ee311.data)]))
    print(f"TLSA lookup pony->lka->DNS, uncached  {us(uncached)}  ({args.lookups} runs)")
    print(f"TLSA lookup pony->lka, lka cache hit  {us(cached)}  ({args.lookups} runs)")

    ee_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ee_ctx.load_cert_chain(str(pki.ee.pem), str(pki.ee.key))
    ta_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ta_ctx.load_cert_chain(str(pki.leaf_chain), str(pki.leaf.key))
    path = x509chain.check_path if x509chain.available() else None
    hs: list[float] = []
    for label, ctx, rec in (("3 1 1 (DANE-EE)", ee_ctx, ee311), ("2 1 1 (DANE-TA)", ta_ctx, ta211)):
        obj, took = handshake(ctx)
        hs.append(took)
        runs: list[float] = []
        for _ in range(args.checks):
            t0 = time.perf_counter()
            chain = x509chain.peer_chain(obj)
            out = dane.verify([rec], chain, [HOST], path)
            runs.append(time.perf_counter() - t0)
            assert out.ok, out.reason
        print(f"verify {label}, chain extraction included {us(runs)}  ({args.checks} runs)")
    for _ in range(20):
        hs.append(handshake(ee_ctx)[1])
    print(f"for scale: in-memory TLS handshake      {us(hs)}  ({len(hs)} runs)")


if __name__ == "__main__":
    main()
