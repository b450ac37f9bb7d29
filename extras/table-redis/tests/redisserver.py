"""Throwaway redis-server processes for the tests (loopback or unix socket only)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

REDIS_SERVER = shutil.which("redis-server")

needs_server = pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server not installed")


@dataclass
class Target:
    host: str
    port: int
    client: redis.Redis
    prefix: str  # every key this run writes starts with it (safe on a shared server)

    def config(self, body: str = "") -> str:
        return f"master {self.host}\nmaster_port {self.port}\n{body}"


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = int(s.getsockname()[1])
    s.close()
    return port


def tls_supported() -> str | None:
    """None if redis-server can serve TLS, else the reason it cannot."""
    if REDIS_SERVER is None:
        return "redis-server not installed"
    res = subprocess.run(
        [REDIS_SERVER, "--port", "0", "--tls-port", str(free_port()), "--tls-cert-file", "/x",
         "--test-memory", "0"], capture_output=True, text=True, timeout=10, check=False)
    out = res.stdout + res.stderr
    if "Bad directive" in out or "not supported" in out.lower():
        return "redis-server was built without TLS support (tls-* directives rejected)"
    return None


def make_certs(folder: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate."""
    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True,
                       timeout=60)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
        "-days", "2", "-subj", "/CN=mailrider test CA")
    (folder / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    (folder / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    for name in ("server", "client"):
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out",
            f"{name}.csr", "-subj", f"/CN={name}")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext")
    for p in folder.iterdir():
        os.chmod(p, 0o644)
    return {n: folder / n for n in ("ca.crt", "server.crt", "server.key", "client.crt",
                                    "client.key")}


class RedisServer:
    """One redis-server in a private folder; ``restart()`` keeps port and socket."""

    def __init__(self, *, password: str | None = None, unix: bool = False,
                 tls: dict[str, Path] | None = None) -> None:
        assert REDIS_SERVER is not None
        self.dir = Path(tempfile.mkdtemp(prefix="mailrider-redis-"))
        os.chmod(self.dir, 0o755)
        self.port = free_port()
        self.password = password
        self.socket = str(self.dir / "redis.sock") if unix else None
        self.tls = tls
        self.proc: subprocess.Popen[bytes] | None = None

    def argv(self) -> list[str]:
        argv = [REDIS_SERVER, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", str(self.dir), "--daemonize", "no", "--loglevel", "warning"]
        if self.tls:
            argv += ["--port", "0", "--tls-port", str(self.port),
                     "--tls-cert-file", str(self.tls["server.crt"]),
                     "--tls-key-file", str(self.tls["server.key"]),
                     "--tls-ca-file", str(self.tls["ca.crt"]), "--tls-auth-clients", "optional"]
        else:
            argv += ["--port", str(self.port)]
        if self.socket:
            argv += ["--unixsocket", self.socket, "--unixsocketperm", "777"]
        if self.password:
            argv += ["--requirepass", self.password]
        return argv

    def client(self) -> redis.Redis:
        if self.tls:
            return redis.Redis(host="127.0.0.1", port=self.port, password=self.password,
                               ssl=True, ssl_ca_certs=str(self.tls["ca.crt"]),
                               socket_timeout=5)
        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password,
                           socket_timeout=5)

    def start(self) -> RedisServer:
        with open(self.dir / "server.log", "ab") as log:
            self.proc = subprocess.Popen(self.argv(), stdout=log, stderr=log)
        deadline = time.monotonic() + 15
        while True:
            try:
                if self.client().ping():
                    return self
            except redis.RedisError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                log_text = (self.dir / "server.log").read_text(errors="replace")
                self.stop()
                raise RuntimeError(f"redis-server did not start:\n{log_text}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
