"""``metrics listen on ADDR port N``: loopback only, a port required."""

from __future__ import annotations

import pytest
from mailrider.config import parse_string
from mailrider.errors import ConfigError

TAIL = 'action "l" maildir\nmatch for local action "l"\n'


def test_metrics_listen() -> None:
    cfg = parse_string("metrics listen on 127.0.0.1 port 9100\n"
                       "metrics listen on ::1 port 9100\n"
                       "metrics listen on localhost port 9101\n" + TAIL)
    assert cfg.metrics_listen == [("127.0.0.1", 9100), ("::1", 9100), ("127.0.0.1", 9101)]
    assert parse_string(TAIL).metrics_listen == []


@pytest.mark.parametrize(("line", "message"), [
    ("metrics listen on 192.0.2.1 port 9100",
     "metrics listen on: 192.0.2.1 is not a loopback address"),
    ("metrics listen on 0.0.0.0 port 9100",
     "metrics listen on: 0.0.0.0 is not a loopback address"),
    ("metrics listen on eth0 port 9100",
     "metrics listen on: eth0 is not an IP address or localhost"),
    ("metrics listen on 127.0.0.1", "metrics listen on: a port is required"),
    ("metrics listen on 127.0.0.1 port 99999", "invalid port: 99999"),
    ("metrics on 127.0.0.1 port 1", "syntax error near"),
    ("metrics listen on 127.0.0.1 port 9100 tls", "syntax error near"),
])
def test_metrics_errors(line: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_string("# metrics\n" + line + "\n" + TAIL, file="m.conf")
    assert str(info.value).startswith(f"m.conf:2: {message}")


def test_metrics_twice_is_an_error() -> None:
    with pytest.raises(ConfigError, match="already declared"):
        parse_string("metrics listen on 127.0.0.1 port 9100\n"
                     "metrics listen on 127.0.0.1 port 9100\n" + TAIL)
