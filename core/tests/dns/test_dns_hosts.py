"""HostsFile: names of client addresses from a hosts file, as the C library
reads it, and the resolver's FCrDNS answered from it without DNS traffic."""

from __future__ import annotations

import asyncio
import os
import pathlib

import pytest
from dnsserver import DNSServer
from mailrider import limits
from mailrider.dns import wire
from mailrider.dns.hosts import HostsFile
from mailrider.dns.resolver import Resolver, ResolverConfig

HOSTS = """\
# a comment line
127.0.0.1\tlocalhost
127.0.1.1 box.example.test box   # trailing comment
::1 localhost ip6-localhost ip6-loopback
192.0.2.10 first.test alias.test
192.0.2.10 second.test
192.0.2.20 FIRST.test.
not-an-address name.test
192.0.2.30
fe80::1%eth0 linklocal.test
"""


@pytest.fixture
def hosts(tmp_path: pathlib.Path) -> HostsFile:
    path = tmp_path / "hosts"
    path.write_text(HOSTS)
    return HostsFile(str(path)).load()


def test_first_name_of_first_line(hosts: HostsFile) -> None:
    assert hosts.name_of("127.0.0.1") == "localhost"
    assert hosts.name_of("127.0.1.1") == "box.example.test"
    assert hosts.name_of("::1") == "localhost"
    assert hosts.name_of("0:0::1") == "localhost"  # compared as addresses
    assert hosts.name_of("::ffff:127.0.0.1") == "localhost"
    assert hosts.name_of("192.0.2.10") == "first.test"  # the first line wins
    assert hosts.name_of("fe80::1") == "linklocal.test"
    assert hosts.name_of("192.0.2.30") is None  # an address without a name
    assert hosts.name_of("192.0.2.99") is None
    assert hosts.name_of("not an ip") is None


def test_addresses_of_names_and_aliases(hosts: HostsFile) -> None:
    assert hosts.addresses("localhost") == ["127.0.0.1", "::1"]
    assert hosts.addresses("Box") == ["127.0.1.1"]
    assert hosts.addresses("first.test.") == ["192.0.2.10", "192.0.2.20"]
    assert hosts.addresses("name.test") == []


def test_fcrdns_from_the_file(hosts: HostsFile) -> None:
    assert hosts.fcrdns("127.0.0.1") == ("localhost", "pass")
    assert hosts.fcrdns("::1") == ("localhost", "pass")
    assert hosts.fcrdns("192.0.2.99") is None


def test_reread_when_changed_and_missing_file(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "hosts"
    h = HostsFile(str(path))
    assert h.name_of("127.0.0.1") is None  # no file: names nothing
    path.write_text("127.0.0.1 one.test\n")
    assert h.name_of("127.0.0.1") == "one.test"
    path.write_text("127.0.0.1 two.test other\n")
    os.utime(path, ns=(1, 1))  # a different stamp even within one clock tick
    assert h.name_of("127.0.0.1") == "two.test"
    path.unlink()
    assert h.name_of("127.0.0.1") is None


def test_reading_is_bounded(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "HOSTS_FILE_MAX", 64)
    path = tmp_path / "hosts"
    path.write_text("127.0.0.1 near.test\n" + "#" * 100 + "\n127.0.0.2 far.test\n")
    h = HostsFile(str(path))
    assert h.name_of("127.0.0.1") == "near.test"
    assert h.name_of("127.0.0.2") is None


def test_resolver_asks_no_dns_for_addresses_the_file_names(hosts: HostsFile) -> None:
    zone = {("1.0.0.127.in-addr.arpa", wire.PTR): ["dns-name.test"],
            ("dns-name.test", wire.A): ["127.0.0.1"],
            ("99.2.0.192.in-addr.arpa", wire.PTR): ["other.test"],
            ("other.test", wire.A): ["192.0.2.99"]}

    async def main() -> tuple[list[object], int, int]:
        async with DNSServer(zone) as srv:  # type: ignore[arg-type]
            cfg = ResolverConfig(nameservers=[srv.address], timeout=0.3, attempts=1)
            r = Resolver(cfg, hosts=hosts)
            got: list[object] = [await r.fcrdns("127.0.0.1"), await r.fcrdns("::1"),
                                 await r.fcrdns("192.0.2.99")]
            plain = Resolver(cfg)  # without a hosts file: DNS, as before
            got.append(await plain.fcrdns("127.0.0.1"))
            return got, srv.count("1.0.0.127.in-addr.arpa"), srv.count("99.2.0.192.in-addr.arpa")

    got, local_queries, other_queries = asyncio.run(main())
    assert got == [("localhost", "pass"), ("localhost", "pass"), ("other.test", "pass"),
                   ("dns-name.test", "pass")]
    assert local_queries == 1  # only the resolver without the file asked
    assert other_queries == 1  # an address the file does not name goes to DNS


def test_out_of_reach_keeps_what_was_read(tmp_path: pathlib.Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "hosts"
    path.write_text("127.0.0.1 kept.test\n")
    h = HostsFile(str(path)).load()  # as lka does before its privilege drop

    def denied(*args: object, **kw: object) -> object:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "stat", denied)
    assert h.name_of("127.0.0.1") == "kept.test"
