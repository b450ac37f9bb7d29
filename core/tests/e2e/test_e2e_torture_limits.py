"""Torture (short budget): resource limits of a real daemon under load."""

from __future__ import annotations

import resource
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torture_util as tu
from harness import Daemon

LIMITS_CONFIG = """listen on 127.0.0.1 port {port}
smtp max-message-size 5M
smtp limit max-rcpt 5 max-mails 3
{local_cap}table all {{ "@" = "{user}" }}
action "local" maildir "{mail}/%{{rcpt.user}}" virtual <all>
match from any for local action "local"
"""
TIMEOUT = 3.0
#: loopback clients are exempt from the per-address cap unless configured:
#: ``daemon`` caps them as any other address, ``load_daemon`` keeps the default
LOCAL_CAP = 50


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    config = LIMITS_CONFIG.replace(
        "{local_cap}", f"smtp limit sessions-per-local-address {LOCAL_CAP}\n")
    d = Daemon(config, extra_env={"MAILRIDER_SESSION_TIMEOUT": str(TIMEOUT)}).start()
    yield d
    d.cleanup()


@pytest.fixture(scope="module")
def load_daemon() -> Iterator[Daemon]:
    # the real session timeout: 5000 connections take longer than TIMEOUT;
    # started with a low descriptor limit, which mailriderd must raise itself
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))
    try:
        d = Daemon(LIMITS_CONFIG.replace("{local_cap}", "")).start()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    yield d
    d.cleanup()


def test_caps_answered_with_their_codes(daemon: Daemon) -> None:
    t = tu.check_caps(daemon, max_rcpt=5, max_mails=3)
    assert t.attempts == 4 and t.failures == 0, t.notes


def test_sessions_per_ip_capped(daemon: Daemon) -> None:
    t = tu.check_per_ip_cap(daemon, LOCAL_CAP, ip="127.0.0.7")
    assert t.attempts == 4 and t.failures == 0, t.notes
    assert "reason=too-many-sessions" in daemon.log()


def test_200_loopback_sessions_served_by_default(load_daemon: Daemon) -> None:
    """A local web application opening 200 connections from 127.0.0.1 is
    served: loopback clients are exempt from the per-address cap by default."""
    socks = []
    try:
        for _ in range(200):
            s = socket.create_connection(("127.0.0.1", load_daemon.port), timeout=10,
                                         source_address=("127.0.0.1", 0))
            socks.append(s)
        banners = [s.recv(200) for s in socks]
        refused = [b for b in banners if not b.startswith(b"220 ")]
        assert not refused, refused[:3]
    finally:
        for s in socks:
            s.close()


@pytest.mark.skipif(shutil.which("ss") is None, reason="ss (iproute2) is not installed")
def test_listener_keeps_its_backlog_once_pony_serves(load_daemon: Daemon) -> None:
    """The SMTP listener queues ``LISTEN_BACKLOG`` connections, as the parent
    asked: asyncio's ``create_server`` listens again (100 by default), and a
    burst of hundreds of clients past that had its SYNs dropped and retried
    a second later. ``ss`` shows a listener's backlog as its Send-Q."""
    from mailrider import limits

    out = subprocess.run(["ss", "-Hltn", f"sport = :{load_daemon.port}"],
                         capture_output=True, text=True, check=True).stdout.split()
    assert out[:1] == ["LISTEN"], out
    expected = min(limits.LISTEN_BACKLOG,
                   int(Path("/proc/sys/net/core/somaxconn").read_text()))
    assert int(out[2]) == expected, out


def test_global_session_cap() -> None:
    """smtp limit sessions: past it every client, loopback too, gets 421."""
    config = LIMITS_CONFIG.replace("{local_cap}", "smtp limit sessions 5\n")
    with Daemon(config) as d:
        socks = [socket.create_connection(("127.0.0.1", d.port), timeout=10,
                                          source_address=(f"127.0.5.{i + 1}", 0))
                 for i in range(5)]
        try:
            assert all(s.recv(200).startswith(b"220 ") for s in socks)
            extra = socket.create_connection(("127.0.0.1", d.port), timeout=10,
                                             source_address=("127.0.5.99", 0))
            out = tu.recv_until_closed(extra, 10)
            extra.close()
            assert out.startswith(b"421 4.7.0"), out
        finally:
            for s in socks:
                s.close()
        assert "reason=too-many-sessions-total" in d.log()


def test_slowloris_timed_out(daemon: Daemon) -> None:
    t = tu.check_slowloris(daemon, clients=5, timeout=TIMEOUT, deadline=time.monotonic() + 30)
    assert t.attempts == 5 and t.failures == 0, t.notes
    # cut after the timeout, not at the first byte
    assert TIMEOUT - 0.5 <= t.numbers["max-seconds-to-cut"] <= 2 * TIMEOUT + 2


def test_5000_concurrent_sessions(load_daemon: Daemon) -> None:
    t = tu.check_concurrent_sessions(load_daemon, 5000, time.monotonic() + 90)
    print(t.numbers)
    assert t.failures == 0, t.notes
    assert t.numbers["sessions"] == 5000
    # the daemon took its hard descriptor limit (mailriderd _raise_nofile)
    assert t.numbers["pony-nofile-soft"] > 5000
    assert t.numbers["rss-per-session-kib"] < 64


def test_50mb_over_max_message_size_not_buffered(load_daemon: Daemon) -> None:
    t = tu.check_big_message(load_daemon, 50 * 2**20, 5 * 2**20)
    print(t.numbers)
    assert t.attempts == 3 and t.failures == 0, t.notes
