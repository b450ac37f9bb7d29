"""The deliveries of one transaction: de-duplicated across recipients, bounded."""

from __future__ import annotations

import dataclasses

from mailrider.proc.pony_deliveries import Deliveries
from mailrider.queue.envelope import Delivery, delivery_from_fields


def _d(dest: str, **kw: str) -> Delivery:
    d = {"dispatcher": "local", "rcpt": "list@example.org", "dest": dest,
         "mda-method": "maildir", "mda-arg": "", "mda-user": "u", "mda-uid": "1000",
         "mda-gid": "1000", "mda-home": "/home/u", "mda-local-user": "u",
         "mda-subaddress": ""}
    d.update(kw)
    return delivery_from_fields(d)


def test_duplicates_across_recipients_kept_once_with_the_first_recipient() -> None:
    ds = Deliveries(100)
    members = [_d(f"m{i}@example.org") for i in range(5)]
    assert ds.add(0, members)
    assert ds.add(1, [_d("M3@Example.org"), _d("m9@example.org"), _d("m9@example.org")])
    assert ds.add(2, members)
    got = list(ds)
    assert len(ds) == 6
    assert [(i, d.dest) for i, d in got] == [(0, f"m{i}@example.org") for i in range(5)] \
        + [(1, "m9@example.org")]
    assert got[0][1] == members[0]


def test_other_method_argument_or_user_is_another_delivery() -> None:
    ds = Deliveries(100)
    assert ds.add(0, [_d("a@x"), _d("a@x", **{"mda-method": "mbox"}),
                      _d("a@x", **{"mda-arg": "/tmp/f", "mda-method": "file"}),
                      _d("a@x", **{"mda-local-user": "v"}), _d("a@x", dispatcher="other")])
    assert len(ds) == 5


def test_a_recipient_past_the_limit_is_refused_whole() -> None:
    ds = Deliveries(10)
    assert ds.add(0, [_d(f"a{i}@x") for i in range(8)])
    assert not ds.add(1, [_d(f"b{i}@x") for i in range(3)])
    assert len(ds) == 8
    assert ds.add(2, [_d("a1@x"), _d("b0@x"), _d("b1@x")])  # 2 new: room for them
    assert len(ds) == 10
    assert not ds.add(3, [_d("c@x")])
    assert ds.add(4, [_d("a5@x")])  # nothing new always fits
    assert {i for i, _ in ds} == {0, 2}


def test_deliveries_travel_unchanged_and_strings_are_shared() -> None:
    ds = Deliveries(100)
    a = _d("a@x", **{"mda-grant": "ab" * 32})
    # decoding already shares common text (envelope.share): a copy made after it
    b = dataclasses.replace(_d("b@x"), home="".join(["/home/", "u"]))
    assert a.home is not b.home
    assert ds.add(0, [a, b])
    (_, got_a), (_, got_b) = list(ds)
    assert got_a == a and got_b == b and got_a.grant == "ab" * 32
    assert got_a.home is got_b.home


def test_expansions_bounded_duplicates_included() -> None:
    ds = Deliveries(3)  # at most 3 held, 30 expanded
    members = [_d(f"m{i}@x") for i in range(3)]
    for i in range(10):
        assert not ds.exhausted()
        assert ds.add(i, members)
    assert len(ds) == 3 and ds.expanded == 30
    assert ds.exhausted()
    assert not ds.add(10, members[:1])
    ds = Deliveries(3)
    assert ds.add(0, [_d(f"m{i}@x") for i in range(2)] * 14)  # 28 expanded, 2 held
    assert not ds.add(1, [_d("m0@x")] * 3)  # 31 > 30: refused though nothing is new
    assert ds.exhausted()  # and the transaction has had its share
    assert not ds.add(2, [_d("n@x")])


def test_refused_recipients_count_as_expansions() -> None:
    ds = Deliveries(2)  # 20 expansions
    assert ds.add(0, [_d("a@x"), _d("b@x")])
    for i in range(6):
        assert not ds.add(i + 1, [_d(f"c{i}@x"), _d(f"d{i}@x"), _d(f"e{i}@x")])
    assert ds.expanded == 20 and ds.exhausted() and len(ds) == 2
