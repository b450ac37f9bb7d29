#!/usr/bin/env python3
"""Benchmark: a restart with a large queue (issue 15: 100,000 envelopes).

    python3 tools/bench/restart.py [--envelopes 100000] [--per-message 1]
                                   [--unclean] [--timeout 300] [--keep]

Fills the spool of a fresh state folder with ``--envelopes`` envelopes
(``--per-message`` recipients per message) directly with the project's own
spool writer (``mailrider.queue.spool.Spool.commit_batch``, the code that
commits accepted mail), not over SMTP, and seals each one's delivery grant
as lka would. Then it starts mailriderd with local delivery held
(``mailriderd -P mda``), so nothing leaves the queue, and prints

- seconds until SMTP answers (a greeting on the listening port), and
- seconds until the scheduler has every envelope back
  (``scheduler.envelope`` of ``mailriderctl show stats``),

both counted from the moment the daemon is started. The targets are 10 s
and 30 s. By default the spool was stopped cleanly (the queue's clean
mark is present, as after ``mailriderctl stop``); ``--unclean`` removes the
mark, as after a crash, so recovery also checks every body against the
size and SHA-256 its envelopes record (docs/queue.md).

Also printed: the daemon's PSS with the queue loaded, and the time the
filling took. Run as root (the daemon drops privileges; the spool is given to
the queue user). Everything lives in a private folder under ``/tmp``,
removed at the end unless ``--keep``.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "core" / "tests" / "e2e"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
if not any(Path(p, "mailrider").is_dir() for p in sys.path if p):
    sys.path.append(str(ROOT / "core" / "src"))

import procstat  # noqa: E402
from harness import Daemon, queue_user  # noqa: E402
from mailrider.delivery import grant  # noqa: E402
from mailrider.queue import envelope as envmod  # noqa: E402
from mailrider.queue.spool import PendingCommit, Spool, body_digest  # noqa: E402

CONFIG = """\
# tools/bench/restart.py: every recipient into one Maildir per local part
listen on 127.0.0.1 port {port}
table everyone {{ "@" = "{user}" }}
action "local" maildir "{mail}/%{{rcpt.user:lowercase|strip}}" virtual <everyone>
match from any for any action "local"
"""

#: messages written per commit (one sync each)
BATCH = 2000


def body(i: int) -> bytes:
    return (f"Received: from bench.localhost\r\nFrom: <from@bench.example>\r\n"
            f"To: <to@localhost>\r\nSubject: restart bench {i}\r\n"
            f"Message-ID: <{i}@bench.localhost>\r\n\r\n").encode() + b"x" * 900 + b"\r\n"


def fill(d: Daemon, envelopes: int, per_message: int) -> float:
    """Write the envelopes into ``d``'s spool; returns the seconds it took."""
    key = grant.load_or_create(str(d.state))
    spool_dir = d.state / "spool"
    spool = Spool(str(spool_dir))
    spool.setup()
    du = os.stat(d.mail)
    now = int(time.time())
    t0 = time.monotonic()
    made = 0
    msg = 0
    while made < envelopes:
        items = []
        while made < envelopes and len(items) < BATCH:
            n = min(per_message, envelopes - made)
            while True:
                msgid = envmod.new_msgid()
                if not os.path.exists(spool.msgdir(msgid)) and \
                        not os.path.exists(os.path.join(spool.incoming, msgid)):
                    break
            data = body(msg)
            os.mkdir(os.path.join(spool.incoming, msgid), 0o700)
            with open(os.path.join(spool.incoming, msgid, "message"), "wb") as f:
                f.write(data)
            envs = []
            for r in range(n):
                rcpt = f"to{r}@localhost"
                env = {
                    "version": envmod.VERSION, "evpid": envmod.new_evpid(msgid), "type": "mda",
                    "dispatcher": "local", "smtpname": "bench.localhost",
                    "helo": "bench.localhost", "hostname": "<unknown>",
                    "sockaddr": "127.0.0.1", "sender": "from@bench.example", "rcpt": rcpt,
                    "dest": rcpt, "ctime": str(now), "retry": "0", "ttl": "345600",
                    "mda-method": "maildir", "mda-user": d.user, "mda-uid": str(du.st_uid),
                    "mda-gid": str(du.st_gid), "mda-home": "/nonexistent",
                    "message-size": str(len(data)), "message-sha256": body_digest(data),
                    "mda-local-user": d.user,
                }
                env["mda-grant"] = grant.seal(key, env)
                envs.append(envmod.from_fields(env))
            items.append(PendingCommit(msgid, envs))
            made += n
            msg += 1
        spool.commit_batch(items)
        bad = [i for i in items if i.error is not None]
        if bad:
            raise RuntimeError(f"commit failed: {bad[0].error}")
    spool.mark_clean()
    qu = queue_user()
    for dirpath, _dirnames, filenames in os.walk(spool_dir):
        os.chown(dirpath, qu.pw_uid, qu.pw_gid)
        for name in filenames:
            os.chown(os.path.join(dirpath, name), qu.pw_uid, qu.pw_gid)
    os.sync()
    return time.monotonic() - t0


def greets(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            return s.recv(100)[:3] == b"220"
    except OSError:
        return False


def scheduled(d: Daemon) -> int:
    try:
        res = d.ctl("show", "stats", check=False)
    except subprocess.TimeoutExpired:
        return 0
    for line in res.stdout.splitlines():
        k, _, v = line.partition("=")
        if k == "scheduler.envelope" and v.isdigit():
            return int(v)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--envelopes", type=int, default=100_000)
    ap.add_argument("--per-message", type=int, default=1, help="recipients per message")
    ap.add_argument("--unclean", action="store_true",
                    help="no clean mark: recovery verifies every body, as after a crash")
    ap.add_argument("--timeout", type=float, default=300.0)
    ap.add_argument("--keep", action="store_true", help="keep the state folder")
    ns = ap.parse_args(argv)
    if ns.envelopes < 1 or ns.per_message < 1:
        ap.error("--envelopes and --per-message must be positive")
    d = Daemon(CONFIG, extra_args=["-P", "mda"])
    try:
        print(f"python: {sys.executable} {sys.version.split()[0]}; cpus: {os.cpu_count()}")
        took = fill(d, ns.envelopes, ns.per_message)
        if ns.unclean:
            os.unlink(d.state / "spool" / "clean")
        print(f"spool: {ns.envelopes:,} envelopes in "
              f"{-(-ns.envelopes // ns.per_message):,} messages, written in {took:.1f}s; "
              f"{'unclean' if ns.unclean else 'clean'} stop before the start")
        with open(d.log_path, "ab") as logf:
            t0 = time.monotonic()
            d.proc = subprocess.Popen(d.argv(), stdout=logf, stderr=logf,
                                      start_new_session=True, env=d.env)
        t_smtp = t_sched = None
        deadline = t0 + ns.timeout
        last = 0
        while time.monotonic() < deadline and (t_smtp is None or t_sched is None):
            if d.proc.poll() is not None:
                print(f"mailriderd exited {d.proc.returncode}:\n{d.log()[-2000:]}")
                return 1
            if t_smtp is None and greets(d.port):
                t_smtp = time.monotonic() - t0
                print(f"SMTP answers after {t_smtp:.2f}s (target 10s)", flush=True)
            if t_sched is None and (d.state / "control.sock").exists():
                last = scheduled(d)
                if last >= ns.envelopes:
                    t_sched = time.monotonic() - t0
                    print(f"scheduler has all {last:,} envelopes after {t_sched:.2f}s "
                          "(target 30s)", flush=True)
            time.sleep(0.05)
        if t_smtp is None:
            print(f"SMTP did not answer in {ns.timeout:.0f}s")
        if t_sched is None:
            print(f"scheduler had {last:,}/{ns.envelopes:,} envelopes after {ns.timeout:.0f}s")
        print(f"mailrider memory with the queue loaded: {procstat.pss(d.proc.pid).line()}")
        return 0 if t_smtp is not None and t_sched is not None else 1
    finally:
        if ns.keep:
            d.stop()
            print(f"kept: {d.state}")
        else:
            d.cleanup()


if __name__ == "__main__":
    raise SystemExit(main())
