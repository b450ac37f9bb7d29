#!/usr/bin/env python3
"""Benchmark: relayed messages/second, DKIM-signed through pony+klondike vs unsigned.

    python3 tools/bench/dkim_sign.py [--sessions 20] [--messages 1000] [--size 2k]
                                     [--rounds 1] [--timeout 600]

Run as root from anywhere, with the ``mailrider`` package importable (the
venv of ``tools/test``). Postfix's ``smtp-sink`` accepts and discards on a
free loopback port (without it, a small asyncio sink in a thread does; the
load is ``smtp-source``, else the built-in client of smtp_accept.py). In
the same run, for each round, three mailriderd (core/tests/e2e/harness.py)
relay the same load to it through
``action "out" relay host smtp://127.0.0.1:SINK``: without ``dkim``, with
``dkim`` naming an RSA-2048 key (rsa-sha256) and with an Ed25519 key
(ed25519-sha256), both relaxed/relaxed; the messages' From domain is the
keys' domain, so every message is signed, which the daemon's log confirms
(``mta dkim-signed``, counted). The clock runs from the first message sent
until the daemon logged the sink's 250 for the last one. With ``--rounds``
each round starts with another of the three and the medians are printed
(single runs on a shared machine swing by tens of percent). No DNS is
involved anywhere.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT / "core" / "tests" / "e2e"))
sys.path.insert(0, str(HERE))
if not any(Path(p, "mailrider").is_dir() for p in sys.path if p):
    sys.path.append(str(ROOT / "core" / "src"))

import relay_sink  # noqa: E402
import smtp_accept  # noqa: E402
from harness import Daemon, free_port  # noqa: E402

RCPT = "bench@relay.bench"
DOMAIN = smtp_accept.SENDER.rpartition("@")[2]  # the From domain of every message

CONFIG = """\
resolver nameserver 127.0.0.1 port 9
{dkim}
listen on 127.0.0.1 port {{port}}
action "out" relay host smtp://127.0.0.1:{sink}{use}
match from any for any action "out"
"""


class PySink:
    """A discarding SMTP server in a thread, for machines without smtp-sink."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self.thread.start()
        ready.wait(10)

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(
            asyncio.start_server(self._session, "127.0.0.1", self.port, backlog=256))
        ready.set()
        self.loop.run_forever()
        server.close()

    async def _session(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(b"220 sink ESMTP\r\n")
        try:
            while line := await r.readline():
                verb = line[:4].upper()
                if verb in (b"EHLO", b"HELO"):
                    w.write(b"250-sink\r\n250 PIPELINING\r\n")
                elif verb == b"DATA":
                    w.write(b"354 go\r\n")
                    while (data := await r.readline()) and data != b".\r\n":
                        pass
                    w.write(b"250 2.0.0 discarded\r\n")
                elif verb == b"QUIT":
                    w.write(b"221 bye\r\n")
                    break
                else:
                    w.write(b"250 ok\r\n")
                await w.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        w.close()

    def terminate(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)

    def wait(self, timeout: float) -> None:
        self.thread.join(timeout)


def make_keys(folder: Path) -> dict[str, str]:
    openssl = shutil.which("openssl")
    if openssl is None:
        raise SystemExit("the openssl command is needed to make the keys")
    keys = {"rsa-sha256": folder / "rsa.key", "ed25519-sha256": folder / "ed.key"}
    subprocess.run([openssl, "genpkey", "-algorithm", "RSA", "-pkeyopt",
                    "rsa_keygen_bits:2048", "-out", str(keys["rsa-sha256"])],
                   check=True, capture_output=True)
    subprocess.run([openssl, "genpkey", "-algorithm", "ed25519", "-out",
                    str(keys["ed25519-sha256"])], check=True, capture_output=True)
    for path in keys.values():
        os.chmod(path, 0o600)
    return {alg: str(p) for alg, p in keys.items()}


def config(sink: int, algorithm: str | None, key: str | None) -> str:
    if algorithm is None:
        return CONFIG.format(dkim="", sink=sink, use="")
    line = (f'dkim "bench" key "{key}" selector "s1" domain "{DOMAIN}" '
            f"algorithm {algorithm}")
    return CONFIG.format(dkim=line, sink=sink, use=' dkim "bench"')


def run(load: smtp_accept.Load, conf: str, n: int, size: int,
        timeout: float) -> tuple[float, int]:
    """(messages/s accept -> relayed, messages the log says were signed)."""
    d = Daemon(conf)
    d.start()
    ok = re.compile(r"delivery result .* result=Ok")
    try:
        t0 = time.monotonic()
        smtp_accept.RCPT = RCPT
        load.send(d.port, n, size)

        def count() -> int:
            return sum(1 for line in d.log().splitlines() if ok.search(line))

        if not relay_sink._wait_count(count, n, timeout):
            raise RuntimeError(f"relayed {count()}/{n} in time:\n{d.log()[-2000:]}")
        dt = time.monotonic() - t0
        return n / dt, d.log().count("mta dkim-signed")
    finally:
        d.cleanup()


def step(keys: dict[str, str], n: int, size: int) -> None:
    """The signing step alone: pony's DkimSigning.field() on one spool file, n
    times, against a real klondike process (core/tests/crypto/klondike_child.py)."""
    import base64
    import json
    import socket

    from mailrider.config.model import Action
    from mailrider.config.parser import parse_string
    from mailrider.ipc import messages as m
    from mailrider.ipc.frame import HEADER, frame
    from mailrider.proc.pony_dkim import DkimSigning

    child = ROOT / "core" / "tests" / "crypto" / "klondike_child.py"
    body = smtp_accept._body(size).replace(b"\r\n", b"\n")
    spool = Path(keys["rsa-sha256"]).parent / "message"
    spool.write_bytes(body)
    fd = os.open(spool, os.O_RDONLY)
    a, b = socket.socketpair()
    specs = [f"dkim:{alg}={key},{alg},relaxed/relaxed,{DOMAIN},s1" for alg, key in keys.items()]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(Path(m.__file__).parents[2]), str(child.parent)])}
    proc = subprocess.Popen([sys.executable, str(child), str(a.fileno()), *specs],
                            pass_fds=[a.fileno()], stdout=subprocess.PIPE, env=env)
    a.close()
    ids = iter(range(1, 1 << 30))

    def recv(k: int) -> bytes:
        buf = b""
        while len(buf) < k:
            chunk = b.recv(k - len(buf))
            if not chunk:
                raise RuntimeError("klondike closed the channel")
            buf += chunk
        return buf

    async def call(msg: m.DkimSign) -> tuple[object, list[int]]:
        rid = next(ids)
        b.sendall(frame(msg, rid))
        while True:
            length, got, _flags, _ = HEADER.unpack(recv(HEADER.size))
            reply = m.decode(json.loads(recv(length)))
            if got == rid:
                return reply, []

    try:
        assert proc.stdout is not None
        proc.stdout.readline()
        conf = "\n".join(
            [f'dkim "{alg}" key "{key}" selector s1 domain "{DOMAIN}" algorithm {alg}'
             for alg, key in keys.items()]
            + [f'action "{alg}" relay dkim "{alg}"' for alg in keys])
        config = parse_string(conf + "\n")
        signing = DkimSigning(config, call)
        print(f"signing step alone (hash {size}-byte message + klondike round trip), "
              f"{n} messages:")
        for alg in keys:
            action = config.actions[alg]
            asyncio.run(signing.field(action, fd))  # warm up
            t0 = time.perf_counter()

            async def many(action: Action = action) -> None:
                for _ in range(n):
                    await signing.field(action, fd)

            asyncio.run(many())
            dt = time.perf_counter() - t0
            print(f"  {alg:15s} {n / dt:8.0f} msg/s  {dt / n * 1000:6.2f} ms/msg")
        field = asyncio.run(signing.field(config.actions["rsa-sha256"], fd))
        assert base64.b64decode(field.rpartition(b"b=")[2].replace(b"\r\n\t ", b""))
    finally:
        proc.kill()
        proc.wait()
        b.close()
        os.close(fd)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=20)
    ap.add_argument("--messages", type=int, default=1000)
    ap.add_argument("--size", default="2k")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--step-messages", type=int, default=500,
                    help="messages for the signing step alone (0: skip it)")
    args = ap.parse_args(argv)
    size = smtp_accept.parse_size(args.size)
    load = smtp_accept.Load(smtp_accept.smtp_source_path(), args.sessions, args.timeout)
    folder = Path(tempfile.mkdtemp(prefix="mailrider-dkim-bench-", dir="/tmp"))
    os.chmod(folder, 0o711)
    sink_port = free_port()
    sink: subprocess.Popen[bytes] | PySink
    if os.access(relay_sink.SINK, os.X_OK):
        sink, sink_name = relay_sink.start_sink(sink_port), "smtp-sink"
    else:
        sink, sink_name = PySink(sink_port), "a Python sink (no smtp-sink here)"
    results: dict[str, list[float]] = {"unsigned": [], "rsa-sha256": [], "ed25519-sha256": []}
    try:
        keys = make_keys(folder)
        if args.step_messages:
            step(keys, args.step_messages, size)
        print(f"relay to {sink_name}: {args.messages} messages of {args.size}, "
              f"{args.sessions} sessions, load: {load.name}, {args.rounds} round(s)")
        labels = list(results)
        for r in range(args.rounds):
            # each round starts with another variant: none always runs first
            for label in labels[r % 3:] + labels[:r % 3]:
                alg = None if label == "unsigned" else label
                rate, signed = run(load, config(sink_port, alg, keys.get(label, "")),
                                   args.messages, size, args.timeout)
                want = 0 if alg is None else args.messages
                if signed != want:
                    raise RuntimeError(f"{label}: {signed} messages signed, expected {want}")
                results[label].append(rate)
                print(f"  round {r + 1}  {label:15s} {rate:8.1f} msg/s  ({signed} signed)")
        base = statistics.median(results["unsigned"])
        print("medians:")
        for label, rates in results.items():
            med = statistics.median(rates)
            print(f"  {label:15s} {med:8.1f} msg/s  {med / base:6.2f} x unsigned")
    finally:
        sink.terminate()
        sink.wait(10)
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
