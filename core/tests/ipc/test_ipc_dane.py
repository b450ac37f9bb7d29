"""The DANE fields lka sends pony (MxResult.authentic and hosts, TlsaResult):
checked as they are decoded, so a hostile lka cannot hand pony a value the
mta would misread (docs/dane.md §2)."""

from __future__ import annotations

from typing import Any

import pytest
from mailrider.ipc import messages as m
from mailrider.ipc.policy import accepts


def roundtrip(obj: Any) -> Any:
    return m.decode(m.encode(obj))


def test_mx_result_round_trip() -> None:
    res = m.MxResult("ok", hosts=[[10, "mx.test", ["192.0.2.1", "2001:db8::1"], True]],
                     authentic=True)
    assert roundtrip(res) == res


@pytest.mark.parametrize("hosts", [
    [[10, "mx.test", ["192.0.2.1"]]],  # no authentic flag
    [[10, "mx.test", ["192.0.2.1"], 1]],  # 1 is not True
    [[10, "mx.test", ["192.0.2.1"], "yes"]],
    [[70000, "mx.test", ["192.0.2.1"], False]],
    [[True, "mx.test", ["192.0.2.1"], False]],
    [[10, "", ["192.0.2.1"], False]],
    [[10, "mx\r\n.test", ["192.0.2.1"], False]],
    [[10, "mx.test", ["not-an-ip"], False]],
    [[10, "mx.test", "192.0.2.1", False]],
    [[10, "mx.test", ["192.0.2.1"] * 65, False]],
    [[10, "mx.test", [], False]] * 65,
    "mx.test",
])
def test_hostile_mx_hosts_are_refused(hosts: Any) -> None:
    data = {"t": "MxResult", "status": "ok", "hosts": hosts}
    with pytest.raises(ValueError):
        m.decode(data)


@pytest.mark.parametrize("authentic", [1, "true", None, [True]])
def test_authentic_must_be_a_boolean(authentic: Any) -> None:
    for name in ("MxResult", "TlsaResult"):
        with pytest.raises(ValueError):
            m.decode({"t": name, "status": "ok", "authentic": authentic})


def test_tlsa_result_round_trip() -> None:
    res = m.TlsaResult("ok", records=["030101" + "ab" * 32], authentic=True)
    assert roundtrip(res) == res


@pytest.mark.parametrize("records", [
    ["03010"],  # odd length
    ["030101AB" + "ab" * 31],  # upper case
    ["0301"],  # shorter than a record
    ["zz0101" + "ab" * 32],
    [3],
    ["030101" + "ab" * 32] * 33,
    ["030101" + "ab" * 20000],
    "030101",
])
def test_hostile_tlsa_records_are_refused(records: Any) -> None:
    with pytest.raises(ValueError):
        m.decode({"t": "TlsaResult", "status": "ok", "records": records})


def test_only_pony_asks_lka_for_tlsa_and_only_lka_answers() -> None:
    assert "TlsaLookup" in accepts("lka", "pony")
    assert "TlsaResult" in accepts("pony", "lka")
    for receiver, sender in (("lka", "queue"), ("lka", "control"), ("queue", "pony"),
                             ("parent", "pony"), ("pony", "queue")):
        assert "TlsaLookup" not in accepts(receiver, sender)
        assert "TlsaResult" not in accepts(receiver, sender)
