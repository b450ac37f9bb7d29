"""Start a real mailriderd on a free loopback port in a private state folder.

Used by the end-to-end tests and by tools/bench and tools/torture. When the
tests run as root the daemon drops to the unprivileged users (paths.USER,
paths.QUEUE_USER for the queue) and chroots its children, as in production,
so every folder it must reach is made traversable, the mail folder belongs
to the delivery user and the ``ext`` folder to the user filters and alias
commands run as (paths.EXT_USER).
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from mailrider import paths


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return int(port)


def delivery_user() -> pwd.struct_passwd:
    if os.geteuid() == 0:
        return pwd.getpwnam(paths.USER)
    return pwd.getpwuid(os.geteuid())


def queue_user() -> pwd.struct_passwd:
    """Who owns the spool (and runs the queue): what a test writes there must be its."""
    if os.geteuid() == 0:
        return pwd.getpwnam(paths.QUEUE_USER)
    return pwd.getpwuid(os.geteuid())


def program_user() -> pwd.struct_passwd:
    """Who filters, table backends and alias programs run as (paths.EXT_USER under root)."""
    if os.geteuid() == 0:
        return pwd.getpwnam(paths.EXT_USER)
    return pwd.getpwuid(os.geteuid())


def wait_for(pred: Callable[[], object], timeout: float = 20.0, interval: float = 0.05) -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        time.sleep(interval)


class Daemon:
    """One mailriderd under test. ``config`` may use {port}, {mail}, {state}, {user},
    {ext} (a folder writable by filters and alias commands)."""

    def __init__(self, config: str | None = None, *, port: int | None = None,
                 extra_env: dict[str, str] | None = None,
                 extra_args: list[str] | None = None) -> None:
        self.state = Path(tempfile.mkdtemp(prefix="mailrider-test-", dir="/tmp"))
        os.chmod(self.state, 0o711)
        self.mail = self.state / "mail"
        self.mail.mkdir(mode=0o700)
        du = delivery_user()
        self.user = du.pw_name
        os.chown(self.mail, du.pw_uid, du.pw_gid)
        self.ext = self.state / "ext"
        self.ext.mkdir(mode=0o700)
        xu = program_user()
        os.chown(self.ext, xu.pw_uid, xu.pw_gid)
        self.port = port or free_port()
        self.config_path: Path | None = None
        if config is not None:
            self.config_path = self.state / "mailrider.conf"
            self.config_path.write_text(config.format(port=self.port, mail=self.mail,
                                                      state=self.state, user=self.user,
                                                      ext=self.ext))
            os.chmod(self.config_path, 0o644)
        self.log_path = self.state / "daemon.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.env = dict(os.environ)
        # pony's pregreet delay (limits.GREETING_DELAY) spares loopback clients;
        # the torture tests set MAILRIDER_GREETING_DELAY to exercise it here
        self.env.update(extra_env or {})
        self.extra_args = list(extra_args or [])  # more mailriderd options (-P mda)

    def argv(self) -> list[str]:
        argv = [sys.executable, "-m", "mailrider.cli.mailriderd", "-d", "-S", str(self.state)]
        if self.config_path is not None:
            argv += ["-f", str(self.config_path)]
        else:
            argv += ["-D", f"port={self.port}"]
        return argv + self.extra_args

    def start(self, timeout: float = 30.0) -> Daemon:
        # a restart finds the previous daemon's control socket (its control
        # process, chrooted, cannot remove it): ready means a new one is bound
        self._old_control = self._control_inode()
        with open(self.log_path, "ab") as logf:
            self.proc = subprocess.Popen(self.argv(), stdout=logf, stderr=logf,
                                         start_new_session=True, env=self.env)
        wait_for(self._ready, timeout)
        return self

    def _control_inode(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.state / "control.sock")
        except OSError:
            return None
        return st.st_ino, st.st_ctime_ns  # an inode number alone may be reused

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"mailriderd exited {self.proc.returncode}:\n{self.log()}")
        # pony may greet before control has bound its socket: mailriderctl
        # right after start() would find no daemon
        if self._control_inode() in (None, self._old_control):
            return False
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
                # any reply will do: a connect-phase filter may refuse us with a 5xx
                return s.recv(100)[:1] in (b"2", b"4", b"5")
        except OSError:
            return False

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill9()
            return None

    def kill9(self) -> None:
        """kill -9 of the whole daemon: parent and every child at once."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)
        # delivery children of a killed parent may linger briefly
        time.sleep(0.1)

    def ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        res = subprocess.run([sys.executable, "-m", "mailrider.cli.mailriderctl", "-S",
                              str(self.state), *args], capture_output=True, text=True,
                             timeout=60, env=self.env)
        if check and res.returncode != 0:
            raise AssertionError(f"mailriderctl {args} failed: {res.stdout}{res.stderr}")
        return res

    def maildir(self, name: str, sub: str = "new") -> list[bytes]:
        d = self.mail / name / sub
        if not d.is_dir():
            return []
        return [p.read_bytes() for p in sorted(d.iterdir())]

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.state, ignore_errors=True)

    def __enter__(self) -> Daemon:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()
