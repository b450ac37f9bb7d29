"""pony's DANE decisions (proc/pony_dane.py) on what lka answers, a hostile
lka included: only authenticated, well-formed, usable records turn DANE on,
a failed lookup makes the host unusable, and anything unexpected is a 4xx."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from mailrider.crypto.dane import Tlsa
from mailrider.ipc import messages as m
from mailrider.proc.pony_dane import Dane, DaneFailed, DanePolicy

EE = "030101" + "ab" * 32


def decide(reply: Any, authenticated: bool = True) -> tuple[DanePolicy | None, list[Any]]:
    asked: list[Any] = []
    counts: list[str] = []

    async def ask(msg: Any) -> Any:
        asked.append(msg)
        return reply

    async def run() -> DanePolicy | None:
        return await Dane(ask, counts.append).policy("MX.Example.test.", authenticated)

    return asyncio.run(run()), asked


def test_authenticated_usable_records_turn_dane_on() -> None:
    policy, asked = decide(m.TlsaResult("ok", records=[EE], authentic=True))
    assert asked == [m.TlsaLookup(host="MX.Example.test.")]
    assert policy == DanePolicy("mx.example.test", (Tlsa(3, 1, 1, b"\xab" * 32),))


def test_unauthenticated_records_or_none_mean_no_dane() -> None:
    assert decide(m.TlsaResult("ok", records=[EE], authentic=False))[0] is None
    assert decide(m.TlsaResult("none", authentic=True))[0] is None
    assert decide(m.TlsaResult("none"))[0] is None


def test_an_unauthenticated_mx_name_is_never_looked_up() -> None:
    policy, asked = decide(m.TlsaResult("ok", records=[EE], authentic=True),
                           authenticated=False)
    assert policy is None and asked == []


def test_only_unusable_records_require_tls_without_authentication() -> None:
    # PKIX-EE, an unknown selector, a short digest: none usable
    recs = ["010101" + "ab" * 32, "030501" + "ab" * 32, "030101" + "ab" * 31]
    policy, _ = decide(m.TlsaResult("ok", records=recs, authentic=True))
    assert policy == DanePolicy("mx.example.test", ())
    # a usable record among them is kept, alone
    policy, _ = decide(m.TlsaResult("ok", records=[*recs, EE], authentic=True))
    assert policy is not None and policy.records == (Tlsa(3, 1, 1, b"\xab" * 32),)


@pytest.mark.parametrize("reply", [
    m.TlsaResult("tempfail", text="SERVFAIL"),
    m.TlsaResult("maybe", records=[EE], authentic=True),  # a status lka never sends
    m.Ok(text="yes"),
    None,
])
def test_failures_and_unexpected_replies_make_the_host_unusable(reply: Any) -> None:
    with pytest.raises(DaneFailed) as info:
        decide(reply)
    assert info.value.text[:1] == "4"
