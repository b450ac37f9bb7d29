"""Torture: the configuration parser on arbitrary text raises only
ConfigError, within a deadline (hypothesis; tools/torture/run.py adds a
coverage-guided run)."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mailrider.config import parse_string
from mailrider.errors import ConfigError

WORDS = ["listen", "on", "127.0.0.1", "port", "25", "table", "t", "file:/nonexistent",
         "action", '"a"', "maildir", "mda", "lmtp", "relay", "match", "from", "any", "for",
         "local", "domain", "<t>", "{", "}", ",", "=", '"x"', "smtp", "limit", "max-rcpt",
         "max-message-size", "10M", "filter", "proc-exec", "pki", "tls", "include",
         '"/nonexistent"', "$m", "m", "\\\n", "#", "\n", "!", "reject", "virtual", "alias",
         "hostname", "tag", "srs", "queue", "ttl", "4d", "-1", "99999999999999999999", "%{rcpt}"]
config_text = (st.lists(st.sampled_from(WORDS), max_size=40).map(" ".join)
               | st.text(max_size=400))


@settings(max_examples=400, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(config_text)
def test_parse_string_raises_only_config_error(text: str) -> None:
    try:
        cfg = parse_string(text)
    except ConfigError as exc:
        assert str(exc)
        return
    assert cfg.file == "<string>"
