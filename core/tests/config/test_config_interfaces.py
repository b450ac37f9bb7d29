"""resolve_listener: addresses to bind, without DNS."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from mailrider.config import Listener, Where, resolve_listener
from mailrider.errors import ConfigError

V4, V6 = socket.AF_INET, socket.AF_INET6


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


def test_localhost(tmp_path: Path) -> None:
    assert resolve_listener(Listener("localhost"), proc_net=fake_proc(tmp_path)) == [
        (V4, "127.0.0.1"), (V6, "::1"),
    ]
    other = tmp_path / "other"
    other.mkdir()
    proc = fake_proc(other, v6_loopback=False)
    assert resolve_listener(Listener("localhost"), proc_net=proc) == [(V4, "127.0.0.1")]


def test_localhost_inet6_without_v6_loopback_is_an_error(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, v6_loopback=False)
    with pytest.raises(ConfigError, match="invalid listen address or interface: localhost"):
        resolve_listener(Listener("localhost", family="inet6"), proc_net=proc)


@pytest.mark.parametrize("name", ["lo", "lo0"])
def test_loopback_interface(name: str) -> None:
    found = resolve_listener(Listener(name))
    assert (V4, "127.0.0.1") in found
    assert all(f in (V4, V6) for f, _ in found)
    assert resolve_listener(Listener(name, family="inet4")) == [(V4, "127.0.0.1")]


def test_all(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path)
    assert resolve_listener(Listener("all"), proc_net=proc) == [(V4, "0.0.0.0"), (V6, "::")]
    assert resolve_listener(Listener("all", family="inet6"), proc_net=proc) == [(V6, "::")]


def test_egress_reads_default_routes(tmp_path: Path) -> None:
    # eth7 does not exist here, so its IPv4 address cannot be read: only the
    # IPv6 addresses from if_inet6 remain; the lo "unreachable" route is ignored
    found = resolve_listener(Listener("egress"), proc_net=fake_proc(tmp_path))
    assert found == [(V6, "2001:db8::5"), (V6, "fe80::5%eth7")]


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
