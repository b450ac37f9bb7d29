"""Throwaway PostgreSQL and MariaDB servers for the SQL backends' tests.

Imported by path from the conftest.py of table-postgres and table-mysql.
Each server runs on a free loopback port in a private temporary folder and
is stopped (and the folder removed) by :meth:`stop`. When the tests run as
root, PostgreSQL runs as the ``postgres`` user (initdb refuses root) and
MariaDB as root (``--user=root``).

Instead of a throwaway server the tests can use a running one:
``MAILRIDER_TEST_POSTGRES_CONNINFO`` (a libpq string of a superuser) and
``MAILRIDER_TEST_MYSQL=host:port:user:password`` (a user that may create
databases and users). The restart tests are skipped then.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

PG_BIN_DIRS = [
    "/usr/lib/postgresql/15/bin",
    "/usr/lib/postgresql/16/bin",
    "/usr/lib/postgresql/17/bin",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def pg_bin(name: str) -> str | None:
    for d in PG_BIN_DIRS:
        path = os.path.join(d, name)
        if os.access(path, os.X_OK):
            return path
    return shutil.which(name)


def unique_name(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


class Postgres:
    """A PostgreSQL server; :attr:`conninfo` is a superuser's connection string."""

    def __init__(self) -> None:
        self.external = os.environ.get("MAILRIDER_TEST_POSTGRES_CONNINFO")
        self.folder: Path | None = None
        self.port = 0
        self.as_user: list[str] = []

    @property
    def conninfo(self) -> str:
        if self.external:
            return self.external
        return f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres"

    def start(self) -> Postgres:
        if self.external:
            return self
        initdb, pg_ctl = pg_bin("initdb"), pg_bin("pg_ctl")
        if initdb is None or pg_ctl is None:
            raise RuntimeError("PostgreSQL's initdb/pg_ctl not found")
        self.folder = Path(tempfile.mkdtemp(prefix="mailrider-pg-", dir="/tmp"))
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(self.folder, pw.pw_uid, pw.pw_gid)
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self.pg_ctl = pg_ctl
        self.port = free_port()
        subprocess.run(
            [
                *self.as_user,
                initdb,
                "-D",
                str(self.folder / "data"),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C",
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
        self._pg_ctl_start()
        return self

    def _pg_ctl_start(self) -> None:
        assert self.folder is not None
        opts = (
            f"-c listen_addresses=127.0.0.1 -c port={self.port} "
            f"-c unix_socket_directories={self.folder} -c fsync=off "
            f"-c full_page_writes=off -c synchronous_commit=off"
        )
        subprocess.run(
            [
                *self.as_user,
                self.pg_ctl,
                "-D",
                str(self.folder / "data"),
                "-l",
                str(self.folder / "log"),
                "-o",
                opts,
                "-w",
                "-t",
                "60",
                "start",
            ],
            check=True,
            capture_output=True,
            timeout=90,
        )
        wait_port(self.port, 30)

    def stop_server(self) -> None:
        """Stop the server (fast shutdown: sessions are cut), keep its data."""
        assert self.folder is not None
        subprocess.run(
            [
                *self.as_user,
                self.pg_ctl,
                "-D",
                str(self.folder / "data"),
                "-m",
                "fast",
                "-w",
                "-t",
                "60",
                "stop",
            ],
            check=True,
            capture_output=True,
            timeout=90,
        )

    def start_server(self) -> None:
        self._pg_ctl_start()

    @property
    def restartable(self) -> bool:
        return not self.external

    def stop(self) -> None:
        if self.external or self.folder is None:
            return
        subprocess.run(
            [
                *self.as_user,
                self.pg_ctl,
                "-D",
                str(self.folder / "data"),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
            capture_output=True,
            timeout=90,
        )
        shutil.rmtree(self.folder, ignore_errors=True)
        self.folder = None


def _find(*names: str) -> str | None:
    for name in names:
        for d in ("/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"):
            path = os.path.join(d, name)
            if os.access(path, os.X_OK):
                return path
        found = shutil.which(name)
        if found:
            return found
    return None


class MariaDB:
    """A MariaDB (or MySQL) server; root over the socket, clients over TCP."""

    def __init__(self) -> None:
        self.external = os.environ.get("MAILRIDER_TEST_MYSQL")
        self.folder: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.host = "127.0.0.1"
        self.port = 0
        self.user = "root"
        self.password = ""
        if self.external:
            host, port, user, password = self.external.split(":", 3)
            self.host, self.port, self.user, self.password = host, int(port), user, password

    def start(self) -> MariaDB:
        if self.external:
            return self
        install, server = (
            _find("mariadb-install-db", "mysql_install_db"),
            _find("mariadbd", "mysqld"),
        )
        if install is None or server is None:
            raise RuntimeError("mariadb-install-db/mariadbd not found")
        self.server = server
        self.folder = Path(tempfile.mkdtemp(prefix="mailrider-my-", dir="/tmp"))
        self.port = free_port()
        user = "root" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
        self.run_user = user
        subprocess.run(
            [
                install,
                "--no-defaults",
                f"--datadir={self.folder / 'data'}",
                f"--user={user}",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ],
            check=True,
            capture_output=True,
            timeout=180,
        )
        self.start_server()
        return self

    def start_server(self) -> None:
        assert self.folder is not None
        logf = open(self.folder / "log", "ab")
        self.proc = subprocess.Popen(
            [
                self.server,
                "--no-defaults",
                f"--datadir={self.folder / 'data'}",
                f"--port={self.port}",
                "--bind-address=127.0.0.1",
                f"--socket={self.folder / 'sock'}",
                f"--pid-file={self.folder / 'pid'}",
                f"--user={self.run_user}",
                "--skip-name-resolve",
                "--innodb-flush-log-at-trx-commit=0",
                "--skip-log-bin",
            ],
            stdout=logf,
            stderr=logf,
            start_new_session=True,
        )
        logf.close()
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError("mariadbd exited:\n" + (self.folder / "log").read_text()[-2000:])
            try:
                wait_port(self.port, 0.5)
                break
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise

    def stop_server(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    @property
    def restartable(self) -> bool:
        return not self.external

    def stop(self) -> None:
        if self.external or self.folder is None:
            return
        self.stop_server()
        shutil.rmtree(self.folder, ignore_errors=True)
        self.folder = None
