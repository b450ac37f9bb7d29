"""Relay action options: what is refused at ``file:line``, and that the
routing and TLS options are no longer refused as unsupported."""

from __future__ import annotations

import pytest
from mailrider.config import UNSUPPORTED, check_supported, parse_string
from mailrider.errors import ConfigError

PKI = 'pki c.test cert "/c"\npki c.test key "/k"\n'  # lines 1-2
FLT = 'filter f proc-exec "/bin/cat"\nfilter g proc-exec "/bin/cat"\n'  # lines 1-2

BAD = [
    ("action a relay host smtp://x dane\n",
     "1: relay option 'dane' needs MX relaying: not with 'host' or 'domain'"),
    ('table r { "a" = "smtp://x" }\naction a relay dane domain <r>\n',
     "2: relay option 'dane' needs MX relaying: not with 'host' or 'domain'"),
    ("action a relay dane dane\n", "1: action option 'dane' already specified"),
    ("resolver trust-ad yes\n", "1: "),
    ('table r { "a" = "smtp://x" }\naction a relay host smtp://x domain <r>\n',
     "2: relay options 'host' and 'domain' are mutually exclusive"),
    ('table l { "smtp://x" }\ntable r { "a" = "smtp://x" }\n'
     'action a relay host <l> domain <r>\n',
     "3: relay options 'host' and 'domain' are mutually exclusive"),
    ('table r { "a" = "smtp://x" }\naction a relay domain <r> backup\n',
     "2: relay options 'backup' and 'domain' are mutually exclusive"),
    ("table c { lbl = \"u:p\" }\naction a relay auth <c>\n",
     "2: relay option 'auth' requires 'host'"),
    ('table l { "a.test", "b.test" }\naction a relay domain <l>\n',
     "2: relay option 'domain' needs a mapping table (key = value), not a list"),
    ("action a relay domain a.test\n",
     "1: relay option 'domain' needs a mapping table (key = value), not a list"),
    ('table r { "a" = "smtp://x" }\naction a relay host <r>\n',
     "2: relay option 'host' needs a list table, not a mapping"),
    ('table h { "127.0.0.1" }\naction a relay helo-src <h>\n',
     "2: relay option 'helo-src' needs a mapping table (key = value), not a list"),
    ('action a relay protocols "tlsv9"\n', "1: relay protocols: unknown TLS protocol 'tlsv9'"),
    ('action a relay ciphers "NO-SUCH-CIPHER"\n',
     "1: relay ciphers: no usable cipher in 'NO-SUCH-CIPHER'"),
    (PKI + "action a relay pki other.test\n", "3: no such pki 'other.test'"),
    ('action a relay helo x.test helo-src { "127.0.0.1" = "y.test" }\n',
     "1: relay options 'helo' and 'helo-src' are mutually exclusive"),
    (FLT + "action a relay filter f filter f\n",
     "3: action option 'filter' already specified"),
    (FLT + "action a relay filter { f nope }\n", "3: no such filter 'nope'"),
    (FLT + "filter c chain { f }\naction a relay filter { c }\n",
     "4: filter chains cannot be nested: 'c'"),
    (FLT + "action a relay filter { f f }\n", "3: filter 'f' listed twice"),
]


@pytest.mark.parametrize(("text", "expected"), BAD, ids=[e for _, e in BAD])
def test_bad_relay_options(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_string(text, "t.conf")
    assert str(info.value).startswith(f"t.conf:{expected}")


GOOD = [
    'table l { "smtp://a.test", "smtp+tls://b.test:587" }\naction a relay host <l>\n',
    'table r { "a.test" = "smtps://x.test", "b.test" = "[2001:db8::1]:2525" }\n'
    "action a relay domain <r>\n",
    'table r { "a.test" = "smtp+tls://lbl@x.test" }\ntable c { lbl = "u:p" }\n'
    "action a relay domain <r> auth <c>\n",
    "table r file:/etc/mail/relays\naction a relay domain <r>\n",
    # as OpenSMTPD's grammar: a bad URL is not a parse error (config/relay.py refuses it)
    "action a relay host tls+auth://lbl@x.test:587\n",
    'action a relay src 192.0.2.1 helo-src { "192.0.2.1" = "mx.test" }\n',
    PKI + 'action a relay host smtp+tls://x.test pki c.test protocols "tlsv1.2,tlsv1.3" '
    'ciphers "HIGH:!aNULL"\n',
]


@pytest.mark.parametrize("text", GOOD)
def test_relay_options_parse_and_are_supported(text: str) -> None:
    check_supported(parse_string(text + "match from any for any action a\n", "t.conf"))


@pytest.mark.parametrize(("option", "names"), [
    ("filter f", ["f"]),
    ('filter "g"', ["g"]),
    ("filter { f g }", ["f", "g"]),
    ("filter { f, g }", ["f", "g"]),
])
def test_relay_filter_is_supported(option: str, names: list[str]) -> None:
    config = parse_string(FLT + f"action a relay host smtp://x.test {option}\n"
                          "match from any for any action a\n", "t.conf")
    check_supported(config)
    assert config.actions["a"].relay["filter"] == names
    assert "relay filter" not in UNSUPPORTED


def test_relay_routing_and_tls_are_supported() -> None:
    for feature in ("relay pki", "relay ciphers", "relay protocols", "relay host table",
                    "relay domain", "relay helo-src"):
        assert feature not in UNSUPPORTED


@pytest.mark.parametrize(("text", "line"), [
    ("action a relay host tls+auth://lbl@x.test:587\n", 1),  # OpenSMTPD 5's scheme
    ('# relays\ntable l { "smtp://a.test", "bogus://b.test" }\naction a relay host <l>\n', 3),
    ('table r { "a.test" = "lmtp://x.test" }\naction a relay domain <r>\n', 2),  # no port
])
def test_check_refuses_a_bad_static_relay_url_at_its_line(text: str, line: int) -> None:
    """Stricter than OpenSMTPD, which tempfails every mail at delivery: -n and start refuse."""
    from mailrider.config.relay import check_relay_urls

    config = parse_string(text + "match from any for any action a\n", "t.conf")
    with pytest.raises(ConfigError) as info:
        check_relay_urls(config)
    assert (info.value.file, info.value.line) == ("t.conf", line)
    assert "relay host" in info.value.message


def test_check_accepts_good_and_dynamic_relay_urls() -> None:
    from mailrider.config.relay import check_relay_urls

    for text in GOOD[:4]:
        check_relay_urls(parse_string(text + "match from any for any action a\n", "t.conf"))


def test_relay_host_label_without_scheme_is_accepted() -> None:
    """``relay host label@host:587 auth <t>`` (no scheme): smtp+tls:// (docs/config.md §8)."""
    from mailrider.config.relay import check_relay_urls, static_relay_urls
    from mailrider.table.values import parse_relayhost

    config = parse_string('table c { lbl = "u:p" }\n'
                          "action a relay host lbl@mail.example.org:587 auth <c>\n"
                          "match from any for any action a\n", "t.conf")
    check_supported(config)
    check_relay_urls(config)
    url = parse_relayhost(static_relay_urls(config, config.actions["a"])[0])
    assert (url.proto, url.host, url.port, url.label) == ("smtp+tls", "mail.example.org", 587,
                                                          "lbl")


def test_dane_and_resolver_trust_ad() -> None:
    c = parse_string("resolver trust-ad\naction out relay dane tls\n"
                     "match from any for any action out\n")
    assert c.resolver_trust_ad
    assert c.actions["out"].relay == {"dane": True, "tls": True}
    check_supported(c)
    c = parse_string("action out relay\nmatch from any for any action out\n")
    assert not c.resolver_trust_ad and "dane" not in c.actions["out"].relay
