"""mailrider.srs against vectors worked out from OpenSMTPD's format.

The expected hashes were computed outside Python, with
``printf %s "KEY" "TEXT" | openssl sha1 -binary | base64``, the first four
characters kept and ``/+`` written ``_-`` (docs/config.md §9).
"""

from __future__ import annotations

import pytest
from mailrider import srs

KEY = "s3cret"
DAY = 86400
#: day 1000 (timestamp "7I") and day 616 (timestamp "TI"), an hour in
T1000 = 1000 * DAY + 3600
T616 = 616 * DAY + 3600

SRS0 = "SRS0=ZOzh=7I=example.org=alice@fwd.test"
SRS1 = "SRS1=bYzo=fwd.test==ZOzh=7I=example.org=alice@second.test"


def test_timestamp_is_days_modulo_1024() -> None:
    assert srs.timestamp(T1000) == 1000
    assert srs.timestamp(T1000 + 1024 * DAY) == 1000
    assert srs.timestamp(0) == 0


def test_encode_srs0_vector() -> None:
    assert srs.encode("alice@example.org", "fwd.test", KEY, T1000) == SRS0
    assert srs.encode("alice@example.org", "fwd.test", KEY, T616) == \
        "SRS0=sYPg=TI=example.org=alice@fwd.test"


def test_encode_srs0_sender_again_gives_srs1() -> None:
    assert srs.encode(SRS0, "second.test", KEY, T1000) == SRS1


def test_encode_srs1_sender_keeps_the_first_hop() -> None:
    assert srs.encode(SRS1, "third.test", KEY, T1000) == \
        "SRS1=in8o=fwd.test==ZOzh=7I=example.org=alice@third.test"


@pytest.mark.parametrize("sender", ["x" * 300 + "@a.test", "SRS1=ab@x.test",
                                    "SRS0=" + "y" * 300 + "@b.test"])
def test_encode_leaves_what_it_cannot_rewrite(sender: str) -> None:
    # too long, or an SRS1 address without room for its hash
    assert srs.encode(sender, "fwd.test", KEY, T1000) == sender


def test_decode_srs0_round_trip() -> None:
    assert srs.decode(SRS0, [KEY], 4, T1000) == "alice@example.org"
    # the prefix is matched without regard to case, the hash with it
    assert srs.decode("srs0=ZOzh=7I=example.org=alice@fwd.test", [KEY], 4, T1000) == \
        "alice@example.org"
    assert srs.decode("SRS0=zozh=7I=example.org=alice@fwd.test", [KEY], 4, T1000) is None


def test_decode_srs1_gives_the_srs0_address_of_the_first_hop() -> None:
    assert srs.decode(SRS1, [KEY], 4, T1000) == "SRS0=ZOzh=7I=example.org=alice@fwd.test"


def test_decode_checks_the_hash_and_accepts_the_backup_key() -> None:
    old = "SRS0=_cM5=TI=example.org=alice@fwd.test"
    assert srs.decode(old, [KEY], 4, T616) is None
    assert srs.decode(old, [KEY, "old-key"], 4, T616) == "alice@example.org"
    tampered = SRS0.replace("alice", "mallory")
    assert srs.decode(tampered, [KEY], 4, T1000) is None


def test_decode_ttl_in_days() -> None:
    assert srs.decode(SRS0, [KEY], 4, T1000 + 4 * DAY) == "alice@example.org"
    assert srs.decode(SRS0, [KEY], 4, T1000 + 5 * DAY) is None
    assert srs.decode(SRS0, [KEY], 10, T1000 + 5 * DAY) == "alice@example.org"
    # one day ahead is tolerated (the other host's clock), two are not
    assert srs.decode(SRS0, [KEY], 4, T1000 - DAY) == "alice@example.org"
    assert srs.decode(SRS0, [KEY], 4, T1000 - 2 * DAY) is None
    # the srs1 form checks the inner timestamp as well
    assert srs.decode(SRS1, [KEY], 4, T1000 + 5 * DAY) is None


def test_decode_ttl_wraps_at_1024_days() -> None:
    # written on day 1022, read on day 1025 (timestamp 1): three days old
    written = srs.encode("bob@example.org", "fwd.test", KEY, 1022 * DAY)
    assert srs.decode(written, [KEY], 4, 1025 * DAY) == "bob@example.org"
    assert srs.decode(written, [KEY], 2, 1025 * DAY) is None


@pytest.mark.parametrize("rcpt", [
    "alice@fwd.test", "SRS0=", "SRS0=ZOzh", "SRS0=ZOzh=", "SRS0=ZOzh=7I",
    "SRS2=ZOzh=7I=example.org=alice@fwd.test", "SRS1=abcd=nohop@fwd.test",
])
def test_decode_refuses_malformed(rcpt: str) -> None:
    assert srs.decode(rcpt, [KEY], 4, T1000) is None


def test_decode_needs_the_separator_after_the_domain() -> None:
    # a valid hash over text without "domain=local" is still refused
    tail = "7I=nodomainpart@fwd.test"
    forged = f"SRS0={srs._hash(KEY, tail)}={tail}"
    assert srs.decode(forged, [KEY], 4, T1000) is None


def test_empty_key_never_verifies() -> None:
    assert srs.decode(SRS0, ["", ""], 4, T1000) is None


def test_is_srs() -> None:
    assert srs.is_srs("SRS0=x") and srs.is_srs("srs1=x")
    assert not srs.is_srs("SRS2=x") and not srs.is_srs("srs")
