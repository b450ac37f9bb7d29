"""resolve_listener: addresses to bind, without DNS."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from mailrider.config import Listener, Where, resolve_listener
from mailrider.config.interfaces import (
    egress_interfaces,
    machine_table,
    proc_net_table,
    route_get_interface,
)
from mailrider.errors import ConfigError

V4, V6 = socket.AF_INET, socket.AF_INET6

#: a machine with a loopback and one Ethernet interface of several addresses
TABLE = {
    "lo": [(V4, "127.0.0.1"), (V6, "::1")],
    "eth7": [(V4, "192.0.2.5"), (V4, "192.0.2.6"), (V6, "2001:db8::5"), (V6, "fe80::5%eth7")],
    "dummy0": [],
}


def fake_proc(tmp_path: Path, *, v6_loopback: bool = True) -> str:
    proc = tmp_path / "net"
    proc.mkdir()
    lines = ["20010db8000000000000000000000005 02 40 00 80     eth7",
             "fe800000000000000000000000000005 02 40 20 80     eth7"]
    if v6_loopback:
        lines.append("00000000000000000000000000000001 01 80 10 80       lo")
    (proc / "if_inet6").write_text("\n".join(lines) + "\n")
    (proc / "route").write_text(
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
        "eth7\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n"
        "eth7\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n"
    )
    (proc / "ipv6_route").write_text(
        "00000000000000000000000000000000 00 00000000000000000000000000000000 00 "
        "fe800000000000000000000000000001 00000400 00000001 00000000 00000003 eth7\n"
        "00000000000000000000000000000000 00 00000000000000000000000000000000 00 "
        "00000000000000000000000000000000 ffffffff 00000001 00000000 00200200 lo\n"
    )
    return str(proc)


def test_ip_literals() -> None:
    assert resolve_listener(Listener("127.0.0.1")) == [(V4, "127.0.0.1")]
    assert resolve_listener(Listener("::1")) == [(V6, "::1")]
    assert resolve_listener(Listener("[2001:db8::1]")) == [(V6, "2001:db8::1")]
    assert resolve_listener(Listener("0.0.0.0")) == [(V4, "0.0.0.0")]


def test_localhost() -> None:
    assert resolve_listener(Listener("localhost"), interfaces=TABLE) == [
        (V4, "127.0.0.1"), (V6, "::1"),
    ]
    no_v6 = {"lo": [(V4, "127.0.0.1")]}
    assert resolve_listener(Listener("localhost"), interfaces=no_v6) == [(V4, "127.0.0.1")]


def test_localhost_inet6_without_v6_loopback_is_an_error() -> None:
    with pytest.raises(ConfigError, match="invalid listen address or interface: localhost"):
        resolve_listener(Listener("localhost", family="inet6"),
                         interfaces={"lo": [(V4, "127.0.0.1")]})


def test_interface_gives_every_address() -> None:
    assert resolve_listener(Listener("eth7"), interfaces=TABLE) == TABLE["eth7"]
    assert resolve_listener(Listener("eth7", family="inet6"), interfaces=TABLE) == [
        (V6, "2001:db8::5"), (V6, "fe80::5%eth7")]
    with pytest.raises(ConfigError, match="interface: dummy0"):
        resolve_listener(Listener("dummy0"), interfaces=TABLE)


@pytest.mark.parametrize("name", ["lo", "lo0"])
def test_loopback_interface(name: str) -> None:
    found = resolve_listener(Listener(name))
    assert (V4, "127.0.0.1") in found
    assert all(f in (V4, V6) for f, _ in found)
    assert resolve_listener(Listener(name, family="inet4")) == [(V4, "127.0.0.1")]


def test_all(tmp_path: Path) -> None:
    assert resolve_listener(Listener("all"), interfaces=TABLE) == [(V4, "0.0.0.0"), (V6, "::")]
    assert resolve_listener(Listener("all", family="inet6"), interfaces=TABLE) == [(V6, "::")]
    assert resolve_listener(Listener("all"), interfaces={"lo": [(V4, "127.0.0.1")]}) == [
        (V4, "0.0.0.0")]


def test_egress_reads_default_routes(tmp_path: Path) -> None:
    # the lo "unreachable" IPv6 default route is no egress
    proc = fake_proc(tmp_path)
    assert egress_interfaces(proc) == ["eth7"]
    found = resolve_listener(Listener("egress"), proc_net=proc, interfaces=TABLE)
    assert found == TABLE["eth7"]


def test_egress_without_addresses_is_an_error(tmp_path: Path) -> None:
    listener = Listener("egress", where=Where("x.conf", 3))
    with pytest.raises(ConfigError,
                       match=r"x\.conf:3: invalid listen address or interface: egress"):
        resolve_listener(listener, proc_net=fake_proc(tmp_path), interfaces={"lo": []})


def test_proc_net_fallback_table(tmp_path: Path) -> None:
    # without getifaddrs: if_inet6 gives the IPv6 addresses of each interface
    table = proc_net_table(fake_proc(tmp_path))
    assert table["eth7"] == [(V6, "2001:db8::5"), (V6, "fe80::5%eth7")]
    assert (V6, "::1") in table["lo"]
    assert (V4, "127.0.0.1") in table["lo"]  # the real loopback's, through SIOCGIFADDR


def test_machine_table_has_the_loopback() -> None:
    table = machine_table()
    loopback = table.get("lo", table.get("lo0"))
    assert loopback is not None and (V4, "127.0.0.1") in loopback


FREEBSD_ROUTE_GET = """\
   route to: default
destination: default
       mask: default
    gateway: 192.0.2.1
        fib: 0
  interface: vtnet0
      flags: <UP,GATEWAY,DONE,STATIC>
 recvpipe  sendpipe  ssthresh  rtt,msec    mtu        weight    expire
       0         0         0         0      1500         1         0
"""


def test_route_get_output() -> None:
    assert route_get_interface(FREEBSD_ROUTE_GET) == "vtnet0"
    assert route_get_interface("route: writing to routing socket: No such process\n") is None
    assert route_get_interface("   route to: default\n  interface: \n") is None


def test_egress_on_this_machine_is_consistent() -> None:
    try:
        found = resolve_listener(Listener("egress"))
    except ConfigError as e:
        assert "egress" in str(e)
    else:
        assert found and all(f in (V4, V6) for f, _ in found)


def test_hosts_file(tmp_path: Path) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text("# comment\n192.0.2.9  mx.example mx  # trailing\n2001:db8::9 MX.example\n")
    found = resolve_listener(Listener("mx.example"), hosts_file=str(hosts))
    assert found == [(V4, "192.0.2.9"), (V6, "2001:db8::9")]
    found = resolve_listener(Listener("mx", family="inet4"), hosts_file=str(hosts))
    assert found == [(V4, "192.0.2.9")]


def test_unknown_name_is_an_error(tmp_path: Path) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n")
    listener = Listener("bogus-iface0", where=Where("x.conf", 7))
    with pytest.raises(ConfigError) as info:
        resolve_listener(listener, hosts_file=str(hosts))
    assert str(info.value) == "x.conf:7: invalid listen address or interface: bogus-iface0"


def test_family_mismatch_with_literal() -> None:
    with pytest.raises(ConfigError, match=r"invalid listen address or interface: 127\.0\.0\.1"):
        resolve_listener(Listener("127.0.0.1", family="inet6"))


def test_socket_listener_binds_nothing() -> None:
    assert resolve_listener(Listener("socket")) == []
