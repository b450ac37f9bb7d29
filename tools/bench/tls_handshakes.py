#!/usr/bin/env python3
"""Benchmark: TLS handshakes/second with the private key in klondike vs in-process.

    python3 tools/bench/tls_handshakes.py [--seconds 3] [--clients 4] [--workers 4]
                                          [--kinds rsa,ec] [--versions 1.3,1.2]

Needs the ``mailrider`` package importable (PYTHONPATH=core/src) and the
openssl CLI (for the throwaway RSA-2048 and P-256 certificates).

For every key kind and TLS version, in the same invocation, it starts:

in-process
    a server child that loads the key itself (``SSLContext.load_cert_chain``);
delegated
    a klondike child (the real :class:`mailrider.proc.klondike.Klondike`)
    holding the key, and a server child whose context comes from
    :func:`mailrider.crypto.delegate.delegated_context` with a
    :class:`~mailrider.crypto.signclient.SignClient` over a socketpair.

Each server accepts on loopback and hands connections to ``--workers``
threads (as blocking handshakes); ``--clients`` threads in this process
make full handshakes (no resumption) verifying the certificate, for
``--seconds`` after a short warm-up, split into ``--rounds`` windows that
alternate between the two servers (both running) so that noise from other
load on the box falls on both alike. Printed: handshakes/s of each, the
ratio delegated/in-process (target >= 0.8), and the mean latency of one
sign round trip measured directly on the SignClient.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import pathlib
import queue
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time

HERE = pathlib.Path(__file__).resolve()


# -- child roles -------------------------------------------------------------------


def run_klondike(fd: int, cert: str, key: str) -> None:
    from mailrider.config.model import Config, Pki
    from mailrider.proc import common
    from mailrider.proc.klondike import Klondike

    async def main() -> None:
        config = Config()
        config.pkis["bench"] = Pki("bench", cert=cert, key=key)
        proc = Klondike(common.Options(statedir="/nonexistent"), config)
        await proc.setup()
        proc.connect({"pony-sign": fd})
        print("ready", flush=True)
        await proc.run()

    asyncio.run(main())


def run_server(mode: str, cert: str, key: str, fd: int, workers: int) -> None:
    ctx: ssl.SSLContext
    if mode == "delegated":
        from mailrider.crypto import delegate
        from mailrider.crypto.signclient import SignClient

        client = SignClient(socket.socket(fileno=fd))
        ctx = delegate.delegated_context(cert, client.sign)
        delegate.self_test(ctx)
        # sign latency, measured before serving
        info = delegate.key_info(ctx)
        op = "rsa_priv_enc" if info.kind == "rsa" else "ecdsa_sign"
        data = b"\x02" * 32
        if info.kind == "rsa":
            # what TLS hands a raw RSA signature, and all klondike will sign raw
            from mailrider.crypto import der, rsa

            with open(cert, "rb") as f:
                bits = der.certificate_key(f.read()).n.bit_length()
            data = rsa.pss_encode(hashlib.sha256(b"bench").digest(), bits, b"\x01" * 32)
        t0 = time.perf_counter()
        n = 0
        while time.perf_counter() - t0 < 0.5:
            client.sign(info.cert_hash, op, data, 3 if info.kind == "rsa" else 0)
            n += 1
        latency = (time.perf_counter() - t0) / n
    else:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(cert, key)
        latency = 0.0
    ctx.options |= ssl.OP_NO_TICKET  # every handshake is a full one
    ctx.num_tickets = 0
    listener = socket.create_server(("127.0.0.1", 0), backlog=128)
    work: queue.Queue[socket.socket] = queue.Queue()

    def worker() -> None:
        while True:
            conn = work.get()
            try:
                with ctx.wrap_socket(conn, server_side=True) as tls:
                    tls.recv(1)
            except (OSError, ssl.SSLError):
                pass

    for _ in range(workers):
        threading.Thread(target=worker, daemon=True).start()
    print("port", listener.getsockname()[1], f"{latency * 1000:.3f}", flush=True)
    while True:
        conn, _ = listener.accept()
        work.put(conn)


# -- the driver --------------------------------------------------------------------


def _env() -> dict[str, str]:
    import mailrider

    src = str(pathlib.Path(mailrider.__file__).resolve().parents[1])
    return {**os.environ, "PYTHONPATH": src}


def _make_cert(folder: pathlib.Path, kind: str) -> tuple[str, str]:
    key, cert = folder / f"{kind}.key", folder / f"{kind}.crt"
    newkey = ["-newkey", "rsa:2048"] if kind == "rsa" else [
        "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]
    subprocess.run(["openssl", "req", "-x509", *newkey, "-nodes", "-keyout", str(key),
                    "-out", str(cert), "-days", "2", "-subj", "/CN=bench.test",
                    "-addext", "subjectAltName=DNS:bench.test"], check=True,
                   capture_output=True)
    os.chmod(key, 0o600)
    return str(cert), str(key)


def _start(mode: str, cert: str, key: str, workers: int) -> tuple[list[subprocess.Popen[bytes]],
                                                                   int, float]:
    procs: list[subprocess.Popen[bytes]] = []
    fd = -1
    pass_fds: list[int] = []
    if mode == "delegated":
        a, b = socket.socketpair()
        k = subprocess.Popen([sys.executable, str(HERE), "_klondike", str(a.fileno()), cert, key],
                             pass_fds=[a.fileno()], stdout=subprocess.PIPE, env=_env())
        procs.append(k)
        assert k.stdout is not None and k.stdout.readline().strip() == b"ready"
        a.close()
        fd = b.fileno()
        pass_fds = [fd]
    s = subprocess.Popen([sys.executable, str(HERE), "_serve", mode, cert, key, str(fd),
                          str(workers)], pass_fds=pass_fds, stdout=subprocess.PIPE, env=_env())
    procs.append(s)
    if mode == "delegated":
        b.close()
    assert s.stdout is not None
    line = s.stdout.readline().split()
    if not line or line[0] != b"port":
        raise SystemExit(f"server did not start ({mode})")
    return procs, int(line[1]), float(line[2])


def _measure(port: int, cert: str, version: ssl.TLSVersion, clients: int,
             seconds: float) -> float:
    ctx = ssl.create_default_context(cafile=cert)
    ctx.minimum_version = ctx.maximum_version = version
    stop = threading.Event()
    counting = threading.Event()
    counts = [0] * clients
    errors = [0] * clients

    def client(i: int) -> None:
        while not stop.is_set():
            try:
                with socket.create_connection(("127.0.0.1", port)) as raw, \
                        ctx.wrap_socket(raw, server_hostname="bench.test") as tls:
                    tls.sendall(b"x")
                if counting.is_set():
                    counts[i] += 1
            except (OSError, ssl.SSLError):
                errors[i] += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    time.sleep(min(0.2, seconds / 4))
    counting.set()
    t0 = time.perf_counter()
    time.sleep(seconds)
    done = sum(counts)
    elapsed = time.perf_counter() - t0
    stop.set()
    for t in threads:
        t.join()
    if sum(errors):
        print(f"  ({sum(errors)} failed handshakes)")
    return done / elapsed


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "_klondike":
        run_klondike(int(sys.argv[2]), sys.argv[3], sys.argv[4])
        return 0
    if len(sys.argv) > 1 and sys.argv[1] == "_serve":
        run_server(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), int(sys.argv[6]))
        return 0
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--rounds", type=int, default=6, help="alternating windows per run")
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--kinds", default="rsa,ec")
    p.add_argument("--versions", default="1.3,1.2")
    args = p.parse_args()
    versions = {"1.3": ssl.TLSVersion.TLSv1_3, "1.2": ssl.TLSVersion.TLSv1_2}
    print(f"{ssl.OPENSSL_VERSION}, {os.cpu_count()} cpus, {args.clients} clients, "
          f"{args.workers} server threads, {args.seconds:g} s per run")
    print(f"{'key':5} {'tls':4} {'in-process/s':>13} {'delegated/s':>12} {'ratio':>6} "
          f"{'sign rtt ms':>12}")
    worst = None
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.kinds.split(","):
            cert, key = _make_cert(pathlib.Path(tmp), kind)
            for vname in args.versions.split(","):
                started = {mode: _start(mode, cert, key, args.workers)
                           for mode in ("inprocess", "delegated")}
                rates = {"inprocess": 0.0, "delegated": 0.0}
                rtt = started["delegated"][2]
                try:
                    # alternate short windows so drift on a shared box hits both alike
                    for _ in range(args.rounds):
                        for mode, (_, port, _) in started.items():
                            rates[mode] += _measure(port, cert, versions[vname], args.clients,
                                                    args.seconds / args.rounds) / args.rounds
                finally:
                    for procs, _, _ in started.values():
                        for proc in reversed(procs):
                            proc.kill()
                            proc.wait()
                ratio = rates["delegated"] / rates["inprocess"] if rates["inprocess"] else 0.0
                worst = ratio if worst is None else min(worst, ratio)
                print(f"{kind:5} {vname:4} {rates['inprocess']:13.1f} {rates['delegated']:12.1f} "
                      f"{ratio:6.2f} {rtt:12.3f}")
    print(f"worst ratio delegated/in-process: {worst:.2f} (target >= 0.80)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
