#!/usr/bin/env python3
"""A throwaway Postfix instance on a loopback port, for benchmarks.

    python3 tools/bench/postfix_peer.py [--port N] [--hold]   # start, wait for Enter, stop

Everything lives in one private folder under /tmp: its own config_directory
(main.cf + a minimal master.cf without chroot), queue_directory,
data_directory and mail folder; nothing of the machine's own Postfix
(/etc/postfix, /var/spool/postfix) is written to. The instance

- listens on 127.0.0.1:PORT only and never looks anything up in DNS
  (``smtpd_peername_lookup = no``, ``disable_dns_lookups = yes``,
  ``smtp_dns_support_level = disabled``);
- accepts every recipient @localhost (a virtual mailbox domain) and delivers
  all of them into one Maildir, ``<folder>/mail/bench/new``, with virtual(8),
  as the uid/gid given (``nobody`` by default);
- with ``hold=True`` puts every accepted message on the hold queue instead
  (``check_recipient_access static:HOLD``), so the accept rate is measured
  without any delivery work behind it -- the counterpart of
  ``mailriderctl pause mda``. :meth:`PostfixPeer.set_hold` switches at run
  time (postconf -e + postfix reload).

Postfix must be started as root (master(8) drops to ``mail_owner``).
:meth:`PostfixPeer.stop` always stops it; use it as a context manager.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

#: an unpacked Postfix package (``dpkg -x postfix_*.deb DIR``) to use instead of
#: an installed one, e.g. where another MTA's package replaced Postfix; its
#: libraries are found through LD_LIBRARY_PATH, set here for every program
#: the benchmark runs (smtp-source too) and passed on by master(8)
ROOT = os.environ.get("MAILRIDER_BENCH_POSTFIX_ROOT", "").rstrip("/")
if ROOT:
    os.environ["LD_LIBRARY_PATH"] = ":".join(
        p for p in (f"{ROOT}/usr/lib/postfix", os.environ.get("LD_LIBRARY_PATH", "")) if p)
POSTFIX = f"{ROOT}/usr/sbin/postfix"
POSTCONF = f"{ROOT}/usr/sbin/postconf"
DAEMON_DIR_CANDIDATES = tuple(f"{ROOT}{d}" for d in (
    "/usr/lib/postfix/sbin", "/usr/libexec/postfix", "/usr/lib/postfix"))

# service type private unpriv chroot wakeup maxproc command
MASTER_CF = """\
{listen} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


class PostfixError(RuntimeError):
    """The peer could not be set up or started; the message says why."""


def available() -> str | None:
    """None when a Postfix peer can be run here, else the reason it cannot."""
    if not os.path.exists(POSTFIX) or not os.path.exists(POSTCONF):
        return f"{POSTFIX} not installed"
    if os.geteuid() != 0:
        return "Postfix must be started as root"
    try:
        pwd.getpwnam("postfix")
    except KeyError:
        return "no 'postfix' user"
    if _daemon_directory() is None:
        return "Postfix daemon directory not found"
    return None


def _daemon_directory() -> str | None:
    try:
        out = subprocess.run([POSTCONF, "-dh", "daemon_directory"], capture_output=True,
                             text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        out = ""
    for d in (out, *DAEMON_DIR_CANDIDATES):
        if d and os.path.exists(os.path.join(d, "master")):
            return d
    return None


def _version() -> str:
    out = subprocess.run([POSTCONF, "-dh", "mail_version"], capture_output=True, text=True,
                         timeout=10).stdout.strip()
    return out or "unknown"


class PostfixPeer:
    def __init__(self, port: int, *, hold: bool = False, user: str = "nobody") -> None:
        reason = available()
        if reason:
            raise PostfixError(reason)
        self.port = port
        self.version = _version()
        self.dir = Path(tempfile.mkdtemp(prefix="mailrider-bench-postfix-", dir="/tmp"))
        os.chmod(self.dir, 0o755)
        self.config = self.dir / "etc"
        self.spool = self.dir / "spool"
        self.data = self.dir / "data"
        self.mailbase = self.dir / "mail"
        self.maildir = self.mailbase / "bench"
        self.log_path = self.dir / "maillog"
        self.running = False
        pw = pwd.getpwnam(user)
        self.uid, self.gid = pw.pw_uid, pw.pw_gid
        self._write_config(hold)

    # -- setup -------------------------------------------------------------------

    def _write_config(self, hold: bool) -> None:
        for d in (self.config, self.spool):
            d.mkdir(mode=0o755)
        self.data.mkdir(mode=0o700)
        pf = pwd.getpwnam("postfix")
        os.chown(self.data, pf.pw_uid, pf.pw_gid)
        self.mailbase.mkdir(mode=0o755)
        os.chown(self.mailbase, self.uid, self.gid)
        # the log file is written by postlogd as the mail owner
        self.log_path.touch(0o644)
        os.chown(self.log_path, pf.pw_uid, pf.pw_gid)
        daemon_dir = _daemon_directory()
        settings = {
            "compatibility_level": "3.6",
            "config_directory": str(self.config),
            "queue_directory": str(self.spool),
            "data_directory": str(self.data),
            "daemon_directory": str(daemon_dir),
            "command_directory": f"{ROOT}/usr/sbin",
            "meta_directory": f"{ROOT}/etc/postfix",
            "shlib_directory": (f"{ROOT}/usr/lib/postfix" if ROOT else
                                _postconf_default("shlib_directory") or "no"),
            "mail_owner": "postfix",
            **({"import_environment": "MAIL_CONFIG MAIL_DEBUG MAIL_LOGTAG TZ LANG=C "
                                      "LD_LIBRARY_PATH"} if ROOT else {}),
            "setgid_group": "postdrop",
            "maillog_file_prefixes": str(self.dir),
            "maillog_file": str(self.log_path),
            "myhostname": "postfix.bench.localhost",
            "mydomain": "bench.localhost",
            "myorigin": "$myhostname",
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "mydestination": "",
            "relay_domains": "",
            "local_recipient_maps": "",
            "alias_maps": "",
            "alias_database": "",
            "biff": "no",
            # no DNS of any kind: the machine's resolver is off limits
            "smtpd_peername_lookup": "no",
            "disable_dns_lookups": "yes",
            "smtp_dns_support_level": "disabled",
            "lmtp_dns_support_level": "disabled",
            "smtp_host_lookup": "native",
            "smtpd_client_restrictions": "",
            "smtpd_helo_restrictions": "",
            "smtpd_sender_restrictions": "",
            "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
            "smtpd_recipient_restrictions": self._recipient_restrictions(hold),
            "smtpd_client_connection_rate_limit": "0",
            "smtpd_client_message_rate_limit": "0",
            "smtpd_client_recipient_rate_limit": "0",
            "smtpd_client_connection_count_limit": "0",
            "smtpd_tls_security_level": "none",
            "smtp_tls_security_level": "none",
            "message_size_limit": str(64 * 1024 * 1024),
            "virtual_mailbox_domains": "localhost",
            "virtual_mailbox_base": str(self.mailbase),
            "virtual_mailbox_maps": "static:bench/",
            "virtual_uid_maps": f"static:{self.uid}",
            "virtual_gid_maps": f"static:{self.gid}",
            "virtual_minimum_uid": str(min(self.uid, 100)),
            "virtual_mailbox_limit": "0",
            "default_destination_concurrency_limit": "20",
            "virtual_destination_concurrency_limit": "20",
            "default_process_limit": "200",
            "queue_run_delay": "1s",
            "minimal_backoff_time": "1s",
            "maximal_backoff_time": "2s",
        }
        main_cf = "".join(f"{k} = {v}\n" for k, v in settings.items())
        (self.config / "main.cf").write_text("# throwaway benchmark instance\n" + main_cf)
        (self.config / "master.cf").write_text(
            MASTER_CF.format(listen=f"127.0.0.1:{self.port}"))

    @staticmethod
    def _recipient_restrictions(hold: bool) -> str:
        base = "permit_mynetworks, reject_unauth_destination"
        return f"check_recipient_access static:HOLD, {base}" if hold else base

    def _run(self, *argv: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ, MAIL_CONFIG=str(self.config))
        return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                              env=env)

    # -- life cycle ------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> PostfixPeer:
        res = self._run(POSTFIX, "-c", str(self.config), "set-permissions")
        if res.returncode != 0:
            # set-permissions also fixes optional files (man pages, samples) the
            # distribution may not ship; only the queue matters, made below
            pass
        res = self._run(POSTFIX, "-c", str(self.config), "check")
        if res.returncode != 0:
            raise PostfixError("postfix check failed: "
                               f"{(res.stdout + res.stderr).strip()}\n{self.log()}")
        res = self._run(POSTFIX, "-c", str(self.config), "start")
        if res.returncode != 0:
            raise PostfixError(f"postfix start failed: {(res.stdout + res.stderr).strip()}")
        self.running = True
        deadline = time.monotonic() + timeout
        while not self._ready():
            if time.monotonic() > deadline:
                self.stop()
                raise PostfixError(f"postfix did not answer on port {self.port}:\n{self.log()}")
            time.sleep(0.1)
        return self

    def _ready(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
                return s.recv(100).startswith(b"220")
        except OSError:
            return False

    def set_hold(self, hold: bool) -> None:
        """Switch the hold restriction and reload; new sessions see it."""
        res = self._run(POSTCONF, "-c", str(self.config), "-e",
                        f"smtpd_recipient_restrictions={self._recipient_restrictions(hold)}")
        if res.returncode != 0:
            raise PostfixError(f"postconf failed: {res.stderr.strip()}")
        if self.running:
            self._run(POSTFIX, "-c", str(self.config), "reload")
            # reload is asynchronous: master restarts idle smtpd processes
            time.sleep(1.0)

    def flush(self) -> None:
        """Drop every queued message (between runs)."""
        self._run(f"{ROOT}/usr/sbin/postsuper", "-c", str(self.config), "-d", "ALL")
        self._run(f"{ROOT}/usr/sbin/postsuper", "-c", str(self.config), "-d", "ALL", "hold")

    def count_queue(self, queue: str) -> int:
        n = 0
        root = self.spool / queue
        for _dirpath, _dirs, files in os.walk(root):
            n += len(files)
        return n

    def delivered(self) -> int:
        try:
            return len(os.listdir(self.maildir / "new"))
        except FileNotFoundError:
            return 0

    def clear_maildir(self) -> None:
        new = self.maildir / "new"
        if new.is_dir():
            for name in os.listdir(new):
                try:
                    os.unlink(new / name)
                except FileNotFoundError:
                    pass

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def master_pid(self) -> int | None:
        """master(8)'s pid (every other Postfix process is its child), or None."""
        try:
            return int((self.spool / "pid" / "master.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def stop(self) -> None:
        if self.running:
            self._run(POSTFIX, "-c", str(self.config), "stop")
            self.running = False
            # master waits for its children; give it a moment before removing files
            deadline = time.monotonic() + 10
            pidfile = self.spool / "pid" / "master.pid"
            while pidfile.exists() and time.monotonic() < deadline:
                time.sleep(0.1)

    def cleanup(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> PostfixPeer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


def _postconf_default(name: str) -> str:
    try:
        return subprocess.run([POSTCONF, "-dh", name], capture_output=True, text=True,
                              timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def main() -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--hold", action="store_true")
    ns = ap.parse_args()
    port = ns.port
    if not port:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
    try:
        peer = PostfixPeer(port, hold=ns.hold).start()
    except PostfixError as exc:
        print(f"postfix peer: {exc}")
        return 1
    try:
        print(f"Postfix {peer.version} on 127.0.0.1:{port}, folder {peer.dir}; Enter stops it")
        try:
            input()
        except EOFError:
            pass
    finally:
        peer.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
