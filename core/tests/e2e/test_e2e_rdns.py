"""Reverse DNS of clients, against a DNS server the test runs on loopback
(never the machine's resolver) and a hosts file of the test's own (never the
machine's /etc/hosts): Received header, ``from rdns`` rules and the built-in
``fcrdns`` / ``rdns`` filter conditions."""

from __future__ import annotations

import asyncio
import os
import pathlib
import socket
import sys
import threading
from collections.abc import Iterator

import pytest
from harness import Daemon, wait_for

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "dns"))
from dnsserver import DNSServer
from mailrider.dns import wire


class ThreadedDNS:
    """The test DNS server on its own event loop in a thread."""

    def __init__(self, records: dict[tuple[str, int], list[object]]) -> None:
        self.loop = asyncio.new_event_loop()
        self.server = DNSServer(records)  # type: ignore[arg-type]
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(10)

    @property
    def port(self) -> int:
        return self.server.address[1]

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture(scope="module")
def dns() -> Iterator[ThreadedDNS]:
    server = ThreadedDNS({
        ("1.0.0.127.in-addr.arpa", wire.PTR): ["client.rdns.test"],
        ("client.rdns.test", wire.A): ["127.0.0.1"],
        ("2.0.0.127.in-addr.arpa", wire.PTR): ["liar.rdns.test"],
        ("liar.rdns.test", wire.A): ["192.0.2.9"],
    })
    yield server
    server.close()


def session(ip: str, port: int, lines: list[bytes]) -> list[bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=20,
                                  source_address=(ip, 0)) as s:
        f = s.makefile("rb")
        out = [f.readline()]
        for line in lines:
            s.sendall(line)
            while True:
                reply = f.readline()
                out.append(reply)
                if reply[3:4] != b"-":
                    break
    return out


def hosts_env(tmp_path: pathlib.Path, text: str) -> dict[str, str]:
    """A hosts file for the daemon (readable after its privilege drop)."""
    path = tmp_path / "hosts"
    path.write_text(text)
    os.chmod(tmp_path, 0o755)
    os.chmod(path, 0o644)
    return {"MAILRIDER_HOSTS_FILE": str(path)}


def test_rdns_rules_filter_and_received(dns: ThreadedDNS, tmp_path: pathlib.Path) -> None:
    d = Daemon(extra_env=hosts_env(tmp_path, "# names nothing here\n"), config=(
        "resolver nameserver 127.0.0.1 port " + str(dns.port) + "\n"
        "resolver timeout 2\n"
        "table names {{ \"*.rdns.test\" }}\n"
        'filter nofcrdns phase mail-from match !fcrdns reject "550 5.7.25 no FCrDNS"\n'
        "listen on 127.0.0.1 port {port} filter nofcrdns\n"
        'table all {{ "@" = "{user}" }}\n'
        'action "local" maildir "{mail}/%{{rcpt.user}}" virtual <all>\n'
        'match from rdns <names> for any action "local"\n'))
    with d:
        good = session("127.0.0.1", d.port, [
            b"EHLO x\r\n", b"MAIL FROM:<a@b.example>\r\n", b"RCPT TO:<r@localhost>\r\n",
            b"DATA\r\n", b"Subject: rdns\r\n\r\nhi\r\n.\r\n", b"QUIT\r\n"])
        assert good[-2].startswith(b"250 2.0.0"), good
        got = wait_for(lambda: list((d.mail / "r" / "new").glob("*"))
                       if (d.mail / "r" / "new").is_dir() else [])
        assert b"Received: from x (client.rdns.test [127.0.0.1])" in got[0].read_bytes()
        # 127.0.0.2's name does not resolve back to it: FCrDNS fails
        bad = session("127.0.0.2", d.port, [b"EHLO x\r\n", b"MAIL FROM:<a@b.example>\r\n"])
        assert bad[-1].startswith(b"550 5.7.25"), bad
        # no PTR at all: the from-rdns rule does not match
        none = session("127.0.0.3", d.port, [b"EHLO x\r\n"])
        assert none[0].startswith(b"220")
    assert dns.server.count("1.0.0.127.in-addr.arpa") >= 1


def test_loopback_named_by_the_hosts_file_without_dns(dns: ThreadedDNS,
                                                      tmp_path: pathlib.Path) -> None:
    """As OpenSMTPD through the C library: 127.0.0.1 is ``localhost`` from the
    hosts file, so ``!rdns`` does not disconnect it and no query is sent."""
    before = dns.server.count("1.0.0.127.in-addr.arpa")
    d = Daemon(extra_env=hosts_env(tmp_path, "127.0.0.1 localhost\n::1 localhost\n"), config=(
        "resolver nameserver 127.0.0.1 port " + str(dns.port) + "\n"
        "resolver timeout 2\n"
        'filter named phase connect match !rdns disconnect "421 4.7.1 who are you"\n'
        "listen on 127.0.0.1 port {port} filter named\n"
        'table all {{ "@" = "{user}" }}\n'
        'action "local" maildir "{mail}/%{{rcpt.user}}" virtual <all>\n'
        'match from any for any action "local"\n'))
    with d:
        good = session("127.0.0.1", d.port, [
            b"EHLO x\r\n", b"MAIL FROM:<a@b.example>\r\n", b"RCPT TO:<h@localhost>\r\n",
            b"DATA\r\n", b"Subject: hosts\r\n\r\nhi\r\n.\r\n", b"QUIT\r\n"])
        assert good[0].startswith(b"220") and good[-2].startswith(b"250 2.0.0"), good
        got = wait_for(lambda: list((d.mail / "h" / "new").glob("*"))
                       if (d.mail / "h" / "new").is_dir() else [])
        assert b"Received: from x (localhost [127.0.0.1])" in got[0].read_bytes()
        # an address neither the file nor DNS names has no name: disconnected
        none = session("127.0.0.3", d.port, [])
        assert none[0].startswith(b"421 4.7.1 who are you"), none
    assert dns.server.count("1.0.0.127.in-addr.arpa") == before
    assert dns.server.count("3.0.0.127.in-addr.arpa") >= 1
