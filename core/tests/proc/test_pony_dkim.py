"""pony's DKIM step (proc/pony_dkim.py): the field for a spool file, chosen by
the From domain, signed through a stand-in for klondike's channel that uses
klondike's own key store; dkimpy verifies what would go on the wire."""

from __future__ import annotations

import asyncio
import base64
import os
import pathlib
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from mailrider import dkim
from mailrider.config import parse_string
from mailrider.crypto.dkimkeys import DkimKeyStore
from mailrider.errors import TempFail
from mailrider.ipc import messages as m
from mailrider.proc.pony_dkim import DkimSigning

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "crypto"))

from dkim_util import make_key, verify

MSG = (b"Received: from client by us\nFrom: Jane <jane@mail.example.org>\n"
       b"To: bob@remote.test\nSubject: hi\n\nbody  text\n.dot\n")


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, DkimKeyStore, dict]]:
    d = tmp_path_factory.mktemp("ponydkim")
    rsa_key, ed_key = make_key(d, "r", "rsa"), make_key(d, "e", "ed25519")
    config = parse_string(
        f'dkim org key "{rsa_key}" selector s1 domain example.org\n'
        f'dkim net key "{ed_key}" selector s2 domain example.net algorithm ed25519-sha256 '
        'canonicalization simple/simple\n'
        'action out relay dkim { org, net }\naction plain relay\n', "t.conf")
    store = DkimKeyStore()
    records = {}
    for name, entry in config.dkims.items():
        signer = dkim.Signer(name, entry.domain, entry.selector, entry.algorithm,
                             entry.canonicalization)
        store.load(signer, entry.key)
        records[f"{entry.selector}._domainkey.{entry.domain}."] = store.dns_record(name)
    yield config, store, records
    store.close()


def _fd(tmp_path: pathlib.Path, data: bytes) -> int:
    path = tmp_path / "msg"
    path.write_bytes(data)
    return os.open(path, os.O_RDONLY)


def _klondike(store: DkimKeyStore, asked: list[str]) -> Any:
    async def call(msg: m.DkimSign) -> tuple[Any, list[int]]:
        asked.append(msg.name)
        sig = store.sign(msg.name, base64.b64decode(msg.data_b64))
        return m.Signed(data_b64=base64.b64encode(sig).decode()), []
    return call


@pytest.mark.parametrize(("sender", "name"), [
    (b"jane@mail.example.org", "org"), (b"Joe <joe@example.net>", "net")])
def test_field_verifies_in_front_of_the_message(setup: Any, tmp_path: pathlib.Path,
                                                sender: bytes, name: str) -> None:
    config, store, records = setup
    asked: list[str] = []
    signing = DkimSigning(config, _klondike(store, asked))
    data = MSG.replace(b"Jane <jane@mail.example.org>", sender)
    fd = _fd(tmp_path, data)
    try:
        field = asyncio.run(signing.field(config.actions["out"], fd, "0123"))
    finally:
        os.close(fd)
    assert asked == [name]
    assert field.startswith(b"DKIM-Signature: v=1;") and field.endswith(b"\r\n")
    assert verify(field + data.replace(b"\n", b"\r\n"), records)
    assert signing.signed == 1


@pytest.mark.parametrize("data", [
    MSG.replace(b"jane@mail.example.org", b"jane@example.com"),  # no key for the domain
    MSG.replace(b"From: Jane <jane@mail.example.org>\n", b""),  # no From
    MSG.replace(b"From:", b"From: a@example.org\nFrom:"),  # two
])
def test_unsigned_when_no_key_fits(setup: Any, tmp_path: pathlib.Path, data: bytes) -> None:
    config, store, _ = setup
    asked: list[str] = []
    signing = DkimSigning(config, _klondike(store, asked))
    fd = _fd(tmp_path, data)
    try:
        assert asyncio.run(signing.field(config.actions["out"], fd)) == b""
        assert asyncio.run(signing.field(config.actions["plain"], fd)) == b""
    finally:
        os.close(fd)
    assert asked == [] and signing.unsigned == 1


def test_klondike_failure_defers(setup: Any, tmp_path: pathlib.Path) -> None:
    config, _, _ = setup

    async def refuse(msg: m.DkimSign) -> tuple[Any, list[int]]:
        raise TempFail("klondike: no")

    async def wrong(msg: m.DkimSign) -> tuple[Any, list[int]]:
        return m.Ok(), []

    fd = _fd(tmp_path, MSG)
    try:
        for call in (refuse, wrong):
            with pytest.raises(TempFail) as info:
                asyncio.run(DkimSigning(config, call).field(config.actions["out"], fd))
            assert info.value.reply().startswith("451 4.7.0")
    finally:
        os.close(fd)


def test_large_message_hashes_off_the_loop(setup: Any, tmp_path: pathlib.Path) -> None:
    config, store, records = setup
    data = MSG + b"0123456789 abcdef \t\n" * 100_000  # 2 MB
    fd = _fd(tmp_path, data)
    try:
        field = asyncio.run(DkimSigning(config, _klondike(store, [])).field(
            config.actions["out"], fd))
    finally:
        os.close(fd)
    assert verify(field + data.replace(b"\n", b"\r\n"), records)
