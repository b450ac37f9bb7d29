"""``mta limit`` and ``scheduler limit`` as parsed (docs/config.md §15, docs/queue.md §9)."""

from __future__ import annotations

import pytest
from mailrider.config import parse_string
from mailrider.errors import ConfigError
from mailrider.proc.mta_limit import keys_for, limits_for


def test_mta_limits_default_and_per_domain() -> None:
    cfg = parse_string(
        "mta limit max-conn-per-host 4 conn-delay-relay 2\n"
        "mta limit for domain Example.ORG inet6 max-conn-per-host 1 session-keepalive 3\n"
        "mta limit session-mail-max 7\n")
    assert cfg.mta_limits == {
        "": {"max-conn-per-host": 4, "conn-delay-relay": 2, "session-mail-max": 7},
        "example.org": {"family": 6, "max-conn-per-host": 1, "session-keepalive": 3},
    }
    other = limits_for(cfg, "other.test")
    assert other.max_conn == {"host": 4} and other.conn_delay == {"relay": 2}
    assert other.family is None and other.session_mail_max == 7
    ex = limits_for(cfg, "EXAMPLE.org")
    assert ex.max_conn == {"host": 1} and ex.family == 6 and ex.session_keepalive == 3
    keys = keys_for(ex, domain="example.org", relay="out:example.org", host="192.0.2.1",
                    source="")
    assert keys == [(("host", "192.0.2.1"), 1, 0), (("relay", "out:example.org"), 0, 2)]


@pytest.mark.parametrize(("text", "message"), [
    ("mta limit max-conn-per-planet 3\n", "invalid mta limit keyword: max-conn-per-planet"),
    ("mta limit max-conn-per-host\n", "syntax error"),
    ("scheduler limit max-inflight 0\n", "max-inflight must be at least 1"),
    ("scheduler limit max-flight 3\n", "invalid scheduler limit keyword"),
])
def test_bad_limits_are_refused_with_the_line(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        parse_string("# first\n" + text, "l.conf")
    assert str(info.value).startswith("l.conf:2: ")
