"""End to end: a ``proxy-v2`` listener behind a real HAProxy (``send-proxy-v2``).

The test starts its own haproxy (a configuration in a temporary folder,
loopback ports) in front of mailriderd. The client connects from
127.0.0.2; haproxy connects to mailriderd from 127.0.0.1 and sends a
PROXY v2 header naming 127.0.0.2, which must be the session's address: in
``Received:``, in the rule ``match from src <nets>`` (which only 127.0.0.2
passes) and in the logs. A client that talks to the listener directly,
without the header, or with a version 1 header, is closed.
"""

from __future__ import annotations

import os
import shutil
import smtplib
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import Daemon, free_port, wait_for
from mailrider.smtp import proxy

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
pytestmark = pytest.mark.skipif(
    not Path(HAPROXY).exists(),
    reason="haproxy is missing: apt-get -o DPkg::Lock::Timeout=600 install -y haproxy")

CONFIG = """\
table nets {{ 127.0.0.2 }}
table all {{ "@" = "{user}" }}
listen on 127.0.0.1 port {port} proxy-v2
action "in" maildir "{mail}/%{{rcpt.user}}" virtual <all>
match from src <nets> for domain "example.test" action "in"
match from any for domain "example.test" reject
"""

HAPROXY_CFG = """\
defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend fe
    bind 127.0.0.1:{front}
    default_backend be
backend be
    server mr 127.0.0.1:{back} send-proxy-v2
"""


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def start(d: Daemon) -> None:
    """Start without the harness's readiness probe, which sends no PROXY header
    (it would be refused): ready when pony listens and control has its socket."""
    with open(d.log_path, "ab") as logf:
        d.proc = subprocess.Popen(d.argv(), stdout=logf, stderr=logf,
                                  start_new_session=True, env=d.env)
    proc = d.proc

    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"mailriderd exited:\n{d.log()}")
        return "smtp listening" in d.log() and (d.state / "control.sock").exists()

    wait_for(ready, 30)


@pytest.fixture
def daemon() -> Iterator[Daemon]:
    d = Daemon(CONFIG)
    try:
        start(d)
        yield d
    finally:
        d.cleanup()


@pytest.fixture
def front(daemon: Daemon, tmp_path: Path) -> Iterator[int]:
    port = free_port()
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(HAPROXY_CFG.format(front=port, back=daemon.port))
    proc = subprocess.Popen([HAPROXY, "-db", "-f", str(cfg)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        wait_for(lambda: _answers(port) or proc.poll() is not None, 20)
        if proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            raise AssertionError(f"haproxy exited: {err}")
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


MSG = b"From: <a@example.org>\r\nSubject: proxied\r\n\r\nthrough haproxy\r\n"


def test_client_address_from_haproxy_header(daemon: Daemon, front: int) -> None:
    with smtplib.SMTP("127.0.0.1", front, source_address=("127.0.0.2", 0), timeout=30) as c:
        code, _ = c.ehlo("client.example")
        assert code == 250
        refused = c.sendmail("a@example.org", ["ann@example.test"], MSG)
        assert refused == {}
    got = wait_for(lambda: list((daemon.mail / "ann" / "new").glob("*"))
                   if (daemon.mail / "ann" / "new").is_dir() else [], 20)
    data = got[0].read_bytes()  # type: ignore[index]
    received = data.split(b"\n\n", 1)[0]
    assert b"[127.0.0.2]" in received or b"127.0.0.2" in received, received
    assert b"through haproxy" in data
    assert "address=127.0.0.2" in daemon.log()


def test_direct_client_from_another_address_is_not_the_proxied_one(front: int,
                                                                   daemon: Daemon) -> None:
    # the rule's own check: 127.0.0.1 through haproxy is refused by the reject rule
    with smtplib.SMTP("127.0.0.1", front, source_address=("127.0.0.1", 0), timeout=30) as c:
        c.ehlo("client.example")
        with pytest.raises(smtplib.SMTPRecipientsRefused):
            c.sendmail("a@example.org", ["ann@example.test"], MSG)


@pytest.mark.parametrize("first", [
    b"EHLO nobody\r\n",
    b"PROXY TCP4 203.0.113.7 127.0.0.1 4000 25\r\n",
    proxy.SIGNATURE + b"\x21\x11\xff\xff",
])
def test_without_a_valid_header_the_connection_closes(daemon: Daemon, first: bytes) -> None:
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=10) as s:
        s.sendall(first)
        data = b""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        assert not data.startswith(b"220"), data  # never a greeting
    wait_for(lambda: "smtp proxy-refused" in daemon.log(), 10)


def test_local_command_keeps_the_socket_address(daemon: Daemon) -> None:
    with socket.create_connection(("127.0.0.1", daemon.port), timeout=10) as s:
        s.sendall(proxy.build(None))
        assert s.recv(4096).startswith(b"220")


def test_smtps_listener_and_a_connect_filter_behind_haproxy(tmp_path: Path) -> None:
    """proxy-v2 on an smtps listener: the header comes before TLS; a builtin
    filter at connect sees the proxied address (its link-connect source)."""
    import ssl
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "crypto"))
    from pki_util import OPENSSL, make_pki

    if OPENSSL is None:
        pytest.skip("openssl CLI not installed")
    d = Daemon(None)
    keys = d.state / "keys"
    keys.mkdir(mode=0o700)
    pki = make_pki(keys, "mx", "rsa", cn="mx.test")
    d.config_path = d.state / "mailrider.conf"
    d.config_path.write_text(
        f'pki mx.test cert "{pki.cert}"\npki mx.test key "{pki.key}"\n'
        "table nets { 127.0.0.2 }\n"
        'filter "viaproxy" phase connect match !src <nets> disconnect "554 5.7.1 not proxied"\n'
        f"listen on 127.0.0.1 port {d.port} smtps pki mx.test proxy-v2 filter viaproxy\n"
        f'table all {{ "@" = "{d.user}" }}\n'
        f'action "in" maildir "{d.mail}/%{{rcpt.user}}" virtual <all>\n'
        'match from any for domain "example.test" action "in"\n')
    os.chmod(d.config_path, 0o644)
    port = free_port()
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(HAPROXY_CFG.format(front=port, back=d.port))
    hap = subprocess.Popen([HAPROXY, "-db", "-f", str(cfg)], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    try:
        start(d)
        wait_for(lambda: _answers(port), 20)
        ctx = ssl.create_default_context(cafile=pki.cert)
        ctx.check_hostname = False
        with smtplib.SMTP_SSL("127.0.0.1", port, source_address=("127.0.0.2", 0),
                              context=ctx, timeout=30) as c:
            assert c.ehlo("client.example")[0] == 250
            assert c.sendmail("a@example.org", ["bob@example.test"], MSG) == {}
        got = wait_for(lambda: list((d.mail / "bob" / "new").glob("*"))
                       if (d.mail / "bob" / "new").is_dir() else [], 20)
        head = got[0].read_bytes().split(b"\n\n", 1)[0]  # type: ignore[index]
        assert b"127.0.0.2" in head and b"TLS" in head.upper(), head
        # the same path from 127.0.0.1: the filter sees 127.0.0.1 and disconnects
        with pytest.raises(smtplib.SMTPConnectError, match="not proxied"):
            smtplib.SMTP_SSL("127.0.0.1", port, source_address=("127.0.0.1", 0),
                             context=ctx, timeout=30)
        assert len(list((d.mail / "bob" / "new").glob("*"))) == 1
    finally:
        hap.terminate()
        hap.wait(10)
        d.cleanup()
