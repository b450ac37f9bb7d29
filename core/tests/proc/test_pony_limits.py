"""pony's session caps: how clients are counted and when a session is refused."""

from __future__ import annotations

from typing import Any

import pytest
from mailrider import limits
from mailrider.config.parser import parse_string
from mailrider.proc.pony import Pony
from mailrider.proc.pony_smtp import client_key


@pytest.mark.parametrize(("ip", "key"), [
    ("192.0.2.7", "192.0.2.7"),
    ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
    ("2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64"),
    ("2001:db8:1:3::1", "2001:db8:1:3::/64"),
    ("::ffff:192.0.2.7", "192.0.2.7"),
    ("::1", "::/64"),
    ("local", "local"),
])
def test_client_key_groups_ipv6_by_64(ip: str, key: str) -> None:
    assert client_key(ip) == key


def _pony(config: str = "") -> Any:
    pony: Any = Pony.__new__(Pony)
    pony.config = parse_string(config)
    pony.sessions = set()
    pony.per_ip = {}
    return pony


def _open(pony: Any, ip: str) -> str | None:
    """What a new session from ``ip`` meets; counted as open when admitted."""
    key = client_key(ip)
    refused: str | None = pony.session_refused(ip, key, False)
    if refused is None:
        pony.sessions.add(object())
        pony.per_ip[key] = pony.per_ip.get(key, 0) + 1
    return refused


def test_defaults() -> None:
    cfg = parse_string("")
    assert (cfg.max_sessions, cfg.max_sessions_per_address, cfg.max_sessions_per_local,
            cfg.max_deliveries) == (limits.MAX_SESSIONS, limits.MAX_SESSIONS_PER_IP,
                                    limits.MAX_SESSIONS_PER_LOCAL, limits.MAX_DELIVERIES)


def test_ipv6_neighbours_share_the_cap_other_networks_do_not() -> None:
    pony = _pony("smtp limit sessions-per-address 3\n")
    for i in range(3):
        assert _open(pony, f"2001:db8:0:1::{i + 1}") is None
    assert _open(pony, "2001:db8:0:1:dead:beef:0:9") == "too-many-sessions"
    assert _open(pony, "2001:db8:0:2::1") is None
    for _ in range(3):
        assert _open(pony, "198.51.100.1") is None
    assert _open(pony, "198.51.100.1") == "too-many-sessions"
    assert _open(pony, "::ffff:198.51.100.1") == "too-many-sessions"


def test_loopback_exempt_by_default_capped_when_configured() -> None:
    pony = _pony("smtp limit sessions-per-address 2\n")
    for _ in range(200):
        assert _open(pony, "127.0.0.1") is None
    for _ in range(10):
        assert _open(pony, "::1") is None
    pony = _pony("smtp limit sessions-per-address 2 sessions-per-local-address 4\n")
    for _ in range(4):
        assert _open(pony, "127.0.0.1") is None
    assert _open(pony, "127.0.0.1") == "too-many-sessions"


def test_global_cap_counts_every_client_but_not_the_local_socket() -> None:
    pony = _pony("smtp limit sessions 5\n")
    for i in range(5):
        assert _open(pony, f"192.0.2.{i + 1}") is None
    assert _open(pony, "192.0.2.99") == "too-many-sessions-total"
    assert _open(pony, "127.0.0.1") == "too-many-sessions-total"
    assert pony.session_refused("local", "local", True) is None


def _auth_pony() -> Any:
    pony: Any = Pony.__new__(Pony)
    pony.auth_failures = {}
    pony.auth_next = {}
    return pony


def test_auth_wait_comes_before_the_check_and_spaces_attempts_per_client() -> None:
    pony = _auth_pony()
    assert pony.auth_wait("192.0.2.1") == 0.0  # no failure yet: checked at once
    pony.auth_failed("192.0.2.1")
    pony.auth_failed("192.0.2.1")
    delay = 2 * limits.AUTH_FAIL_DELAY
    # attempts on many sessions at once each take the next slot
    first, second = pony.auth_wait("192.0.2.1"), pony.auth_wait("192.0.2.1")
    assert first == pytest.approx(delay, abs=0.05)
    assert second == pytest.approx(2 * delay, abs=0.05)
    assert pony.auth_wait("192.0.2.2") == 0.0  # another client is not slowed


def test_auth_wait_past_the_maximum_is_refused_unchecked() -> None:
    pony = _auth_pony()
    client = client_key("2001:db8::1")
    for _ in range(100):
        pony.auth_failed(client)
    waits = [pony.auth_wait(client_key(f"2001:db8::{i}")) for i in range(1, 4)]
    assert waits[0] == pytest.approx(limits.AUTH_FAIL_DELAY_MAX, abs=0.05)
    assert waits[1:] == [None, None]  # same /64: no slot within the maximum
