"""The ``dkim`` statement and the relay option ``dkim`` (docs/dkim.md §2):
what they parse into, and what is refused at ``file:line``."""

from __future__ import annotations

import pytest
from mailrider.config import check_supported, parse_string
from mailrider.config.model import Dkim
from mailrider.errors import ConfigError

DKIM = ('dkim "org" key "/etc/mail/dkim/org.key" selector "s1" domain "Example.ORG"\n'
        'dkim net key "/k2" domain example.net selector s2.2026 algorithm ed25519-sha256 '
        'canonicalization simple/simple\n')  # lines 1-2


def test_dkim_statements_and_relay_option() -> None:
    config = parse_string(DKIM + 'action "out" relay host smtp://10.0.0.1 dkim { "org", net }\n'
                          'action "one" relay dkim org\n', "t.conf")
    org, net = config.dkims["org"], config.dkims["net"]
    assert (org.key, org.selector, org.domain, org.algorithm, org.canonicalization) == (
        "/etc/mail/dkim/org.key", "s1", "example.org", "rsa-sha256", "relaxed/relaxed")
    assert (org.where.file, org.where.line) == ("t.conf", 1)
    assert net == Dkim("net", "/k2", "s2.2026", "example.net", "ed25519-sha256", "simple/simple",
                       where=net.where)
    assert config.actions["out"].relay["dkim"] == ["org", "net"]
    assert config.actions["one"].relay["dkim"] == ["org"]
    check_supported(config)  # supported: nothing refuses it


BAD = [
    ('dkim a key "/k" selector s1\n', "1: dkim 'a' has no domain"),
    ('dkim a selector s1 domain example.org\n', "1: dkim 'a' has no key"),
    ('dkim a key "k.pem" selector s1 domain example.org\n',
     "1: dkim key must be an absolute path: k.pem"),
    ('dkim a key "/k" selector "s 1" domain example.org\n', "1: invalid dkim selector: s 1"),
    ('dkim a key "/k" selector s1 domain "example;org"\n', "1: invalid dkim domain: example;org"),
    ('dkim a key "/k" selector s1 domain localhost\n', "1: invalid dkim domain: localhost"),
    ('dkim a key "/k" selector s1 domain example.org algorithm rsa-sha1\n',
     "1: invalid dkim algorithm: rsa-sha1 (one of rsa-sha256, ed25519-sha256)"),
    ('dkim a key "/k" selector s1 domain example.org canonicalization relaxed\n',
     "1: invalid dkim canonicalization: relaxed (one of relaxed/relaxed, simple/simple, "
     "relaxed/simple, simple/relaxed)"),
    ('dkim a key "/k" key "/j" selector s1 domain example.org\n',
     "1: dkim option 'key' already specified"),
    ('dkim a key "/k" selector s1 domain example.org\ndkim a key "/j" selector s domain x.org\n',
     "2: dkim 'a' already defined"),
    ('dkim a key "/k" selector s1 domain example.org port 25\n', "1: syntax error near 'port'"),
    ('action out relay dkim org\n', "1: no such dkim 'org'"),
    (DKIM + 'action out relay dkim { org, org }\n', "3: dkim 'org' listed twice"),
    (DKIM + 'dkim org2 key "/k" selector s9 domain example.org\n'
     'action out relay dkim { org, org2 }\n',
     "4: relay option 'dkim': two keys for one domain"),
    (DKIM + 'action out relay dkim org dkim net\n', "3: action option 'dkim' already specified"),
    (DKIM + 'action l maildir dkim org\n', "3: syntax error near 'dkim'"),
]


@pytest.mark.parametrize(("text", "expected"), BAD, ids=[e for _, e in BAD])
def test_bad_dkim(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_string(text, "t.conf")
    assert str(info.value) == f"t.conf:{expected}"
