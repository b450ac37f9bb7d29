#!/usr/bin/env python3
"""Benchmark: TLS handshakes/second through a real pony, key in klondike vs in pony.

    python3 tools/bench/tls_daemon.py [--seconds 4] [--clients 4] [--rounds 6]
                                      [--kinds rsa,ec] [--versions 1.3,1.2]

Needs ``mailrider`` importable (PYTHONPATH=core/src, or an installed core)
and the openssl CLI (throwaway RSA-2048 and P-256 certificates). Run as root
the daemons drop their children to ``_mailrider`` as in production.

Two ``mailriderd`` are started (core/tests/e2e/harness.py) with the same
configuration: pki ``rsa.test`` (RSA-2048) and ``ec.test`` (P-256), a
STARTTLS listener with both and an smtps listener with both:

delegated
    the normal daemon: pony's contexts sign through klondike;
in-process
    the same with ``MAILRIDER_KEY_IN_PROCESS=force`` in its environment
    (benchmarks/tests only, mailrider/limits.py): pony loads the keys itself.

For every key kind and TLS version, ``--clients`` threads make full
handshakes on the smtps listeners (a fresh connection each, no session
resumption: tickets off on the client, no session reused), with SNI picking
the pki and the certificate verified, and read the 220 banner so that pony
has finished its side. ``--seconds`` per row are split into ``--rounds``
windows alternating between the two daemons (both running all along), so
noise on a shared box falls on both alike. Printed per row: handshakes/s of
each, the ratio delegated/in-process (target >= 0.8), and the klondike.sign
counter of each daemon (``mailriderctl show stats``) over the row: it grows
on the delegated daemon and stays 0 on the in-process one.

tools/bench/tls_handshakes.py measures the same at library level, without
the daemon.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "core" / "tests" / "e2e"))
if not any(Path(p, "mailrider").is_dir() for p in sys.path if p):
    sys.path.append(str(ROOT / "core" / "src"))

from harness import Daemon, free_port  # noqa: E402
from mailrider import limits  # noqa: E402

NAMES = {"rsa": "rsa.test", "ec": "ec.test"}
VERSIONS = {"1.3": ssl.TLSVersion.TLSv1_3, "1.2": ssl.TLSVersion.TLSv1_2}
MODES = ("delegated", "in-process")

CONFIG = """\
# tools/bench/tls_daemon.py: the same for both daemons but the smtps port
pki rsa.test cert "{keys}/rsa.crt"
pki rsa.test key "{keys}/rsa.key"
pki ec.test cert "{keys}/ec.crt"
pki ec.test key "{keys}/ec.key"
listen on 127.0.0.1 port {{port}} tls pki rsa.test pki ec.test
listen on 127.0.0.1 port {smtps} smtps pki rsa.test pki ec.test
action "local" maildir
match from any for local action "local"
"""


def make_cert(folder: Path, kind: str) -> None:
    key, cert, cn = folder / f"{kind}.key", folder / f"{kind}.crt", NAMES[kind]
    newkey = ["-newkey", "rsa:2048"] if kind == "rsa" else [
        "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]
    subprocess.run(["openssl", "req", "-x509", *newkey, "-nodes", "-keyout", str(key),
                    "-out", str(cert), "-days", "2", "-subj", f"/CN={cn}",
                    "-addext", f"subjectAltName=DNS:{cn}"], check=True, capture_output=True)
    os.chmod(key, 0o600)  # root-only when run as root: pony/klondike read it before the drop


def start(mode: str, keys: Path) -> Daemon:
    smtps = free_port()
    env = {limits.KEY_IN_PROCESS_ENV: "force"} if mode == "in-process" else {}
    d = Daemon(config=CONFIG.format(keys=keys, smtps=smtps), extra_env=env)
    d.smtps_port = smtps  # type: ignore[attr-defined]
    try:
        d.start()
    except BaseException:
        d.cleanup()
        raise
    return d


def sign_count(d: Daemon) -> int:
    out = d.ctl("show", "stats").stdout
    if "klondike.sign=" not in out:
        return 0
    return int(out.split("klondike.sign=")[1].split()[0])


def measure(port: int, name: str, cafile: str, version: ssl.TLSVersion, clients: int,
            seconds: float) -> tuple[float, int]:
    """Full handshakes/s over ``seconds`` (after a short warm-up), and the failures."""
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.minimum_version = ctx.maximum_version = version
    ctx.options |= ssl.OP_NO_TICKET  # no resumption: every handshake is a full one
    stop = threading.Event()
    counting = threading.Event()
    counts = [0] * clients
    errors = [0] * clients

    def client(i: int) -> None:
        while not stop.is_set():
            try:
                raw = socket.create_connection(("127.0.0.1", port), timeout=10)
                # close with a reset: tens of thousands of TIME_WAIT sockets would use up
                # the ephemeral ports (and collide with ports other tests pick)
                raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                with raw, ctx.wrap_socket(raw, server_hostname=name) as tls:
                    if not tls.recv(100).startswith(b"220"):
                        raise OSError("no 220 banner")
                if counting.is_set():
                    counts[i] += 1
            except (OSError, ssl.SSLError):
                errors[i] += 1
                time.sleep(0.01)

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
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
        t.join(15)
    return done / elapsed, sum(errors)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    p.add_argument("--seconds", type=float, default=4.0, help="measured seconds per row")
    p.add_argument("--rounds", type=int, default=6, help="alternating windows per row")
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--kinds", default="rsa,ec")
    p.add_argument("--versions", default="1.3,1.2")
    args = p.parse_args()
    if shutil.which("openssl") is None:
        print("openssl CLI not installed", file=sys.stderr)
        return 2
    if not 1 <= args.clients <= limits.MAX_SESSIONS_PER_IP:
        p.error(f"--clients must be 1..{limits.MAX_SESSIONS_PER_IP}")
    print(f"{ssl.OPENSSL_VERSION}, {os.cpu_count()} cpus, {args.clients} clients, "
          f"{args.seconds:g} s per row in {args.rounds} alternating windows, smtps, "
          "full handshakes")
    worst: float | None = None
    daemons: dict[str, Daemon] = {}
    with tempfile.TemporaryDirectory(prefix="mailrider-bench-tls-") as tmp:
        keys = Path(tmp)
        os.chmod(keys, 0o711)
        for kind in NAMES:
            make_cert(keys, kind)
        try:
            for mode in MODES:
                daemons[mode] = start(mode, keys)
            warned = {mode: "key-in-process" in d.log() for mode, d in daemons.items()}
            print(f"key-in-process warning logged: delegated={warned['delegated']} "
                  f"in-process={warned['in-process']}")
            totals = {mode: sign_count(d) for mode, d in daemons.items()}
            print(f"{'key':4} {'tls':4} {'in-process/s':>13} {'delegated/s':>12} {'ratio':>6} "
                  f"{'sign(deleg)':>12} {'sign(in-proc)':>14} {'fail':>5}")
            for kind in args.kinds.split(","):
                name, cafile = NAMES[kind], str(keys / f"{kind}.crt")
                for vname in args.versions.split(","):
                    rates = dict.fromkeys(MODES, 0.0)
                    fails = 0
                    before = {mode: sign_count(d) for mode, d in daemons.items()}
                    for _ in range(args.rounds):
                        for mode, d in daemons.items():
                            rate, failed = measure(d.smtps_port,  # type: ignore[attr-defined]
                                                   name, cafile, VERSIONS[vname], args.clients,
                                                   args.seconds / args.rounds)
                            rates[mode] += rate / args.rounds
                            fails += failed
                    signs = {mode: sign_count(d) - before[mode] for mode, d in daemons.items()}
                    ratio = (rates["delegated"] / rates["in-process"]
                             if rates["in-process"] else 0.0)
                    worst = ratio if worst is None else min(worst, ratio)
                    print(f"{kind:4} {vname:4} {rates['in-process']:13.1f} "
                          f"{rates['delegated']:12.1f} {ratio:6.2f} {signs['delegated']:12d} "
                          f"{signs['in-process']:14d} {fails:5d}", flush=True)
            totals = {mode: sign_count(d) - totals[mode] for mode, d in daemons.items()}
        finally:
            for d in daemons.values():
                d.cleanup()
    print(f"klondike.sign total: delegated={totals['delegated']} "
          f"in-process={totals['in-process']}")
    print(f"worst ratio delegated/in-process: {worst or 0.0:.2f} (target >= 0.80)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
