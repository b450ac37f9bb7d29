"""The queue-file codec (queue compression, queue encryption): formats,
damage, bounds, the spool reading mixed files (docs/queue.md §8)."""

from __future__ import annotations

import dataclasses
import os
import zlib
from pathlib import Path

import pytest
from mailrider.crypto import libcrypto
from mailrider.queue import codec as c
from mailrider.queue import envelope as envmod
from mailrider.queue.envelope import Delivery, Envelope
from mailrider.queue.spool import PendingCommit, Spool, body_digest

KEY = c.parse_key("0123456789abcdef0123456789abcdef")
BODY = b"Received: from x\r\nSubject: secret\r\n\r\nMARKER-7f3a body line\r\n" * 50

needs_ssl = pytest.mark.skipif(not libcrypto.available(), reason=libcrypto.unavailable_reason())


def test_plain_passes_through() -> None:
    assert c.Codec().encode(BODY) == BODY
    assert c.Codec(True, KEY).decode(BODY) == BODY  # mixed spools: plain files still read


def test_compressed_is_marked_and_smaller() -> None:
    data = c.Codec(compress=True).encode(BODY)
    assert data[:6] == c.MAGIC + bytes([c.FORMAT, c.FLAG_DEFLATE])
    assert len(data) < len(BODY) // 5
    assert c.Codec().decode(data) == BODY  # no key needed to read it


@needs_ssl
@pytest.mark.parametrize("compress", [False, True])
def test_encrypted_round_trip_without_plaintext(compress: bool) -> None:
    data = c.Codec(compress, KEY).encode(BODY)
    assert b"MARKER" not in data and b"secret" not in data
    assert data[5] & c.FLAG_AES256GCM
    assert c.Codec(False, KEY).decode(data) == BODY
    assert c.Codec(True, KEY).encode(BODY) != c.Codec(True, KEY).encode(BODY)  # fresh IV


@needs_ssl
def test_aes_256_gcm_known_answer() -> None:
    # NIST GCM test case 14: AES-256, zero key, zero IV, one zero block
    out, tag = c._gcm(True, bytes(32), bytes(12), b"", bytes(16), None)
    assert out.hex() == "cea7403d4d606b6e074ec5d3baf39d18"
    assert tag.hex() == "d0d1c8a799996bf0265b98b5d48ab919"


@needs_ssl
def test_wrong_key_missing_key_and_tampering_are_refused() -> None:
    data = c.Codec(False, KEY).encode(BODY)
    with pytest.raises(c.CodecError, match="authentication"):
        c.Codec(False, c.parse_key("f" * 32)).decode(data)
    with pytest.raises(c.CodecError, match="no queue encryption key"):
        c.Codec().decode(data)
    flipped = bytearray(data)
    flipped[40] ^= 1
    with pytest.raises(c.CodecError):
        c.Codec(False, KEY).decode(bytes(flipped))
    # the header is authenticated: clearing the flag bits is caught too
    header_changed = data[:5] + bytes([c.FLAG_AES256GCM | c.FLAG_DEFLATE]) + data[6:]
    with pytest.raises(c.CodecError):
        c.Codec(False, KEY).decode(header_changed)
    with pytest.raises(c.CodecError, match="truncated"):
        c.Codec(False, KEY).decode(data[:20])


def test_damaged_and_oversized_compressed_files() -> None:
    with pytest.raises(c.CodecError, match="unknown"):
        c.Codec().decode(c.MAGIC + bytes([9, 1]) + b"x")
    with pytest.raises(c.CodecError, match="unknown"):
        c.Codec().decode(c.MAGIC + bytes([c.FORMAT, 0x80]) + b"x")
    with pytest.raises(c.CodecError, match="corrupt"):
        c.Codec().decode(c.MAGIC + bytes([c.FORMAT, c.FLAG_DEFLATE]) + b"not zlib")
    whole = c.Codec(compress=True).encode(BODY)
    with pytest.raises(c.CodecError, match="truncated"):
        c.Codec().decode(whole[:-8])
    bomb = c.MAGIC + bytes([c.FORMAT, c.FLAG_DEFLATE]) + zlib.compress(bytes(10 << 20))
    with pytest.raises(c.CodecError, match="limit"):
        c.Codec().decode(bomb, limit=1 << 20)


def test_key_must_be_32_characters() -> None:
    with pytest.raises(ValueError, match="32 characters"):
        c.parse_key("abc")
    assert c.parse_key("x" * 32) == b"x" * 32


def _commit(sp: Spool, body: bytes, rcpt: str) -> tuple[str, str]:
    msgid, fd = sp.create()
    os.write(fd, body)
    os.close(fd)
    env = Envelope(evpid=envmod.new_evpid(msgid), sender="a@b.example", ctime=1,
                   delivery=Delivery(dispatcher="", rcpt=rcpt, dest=rcpt, method=""),
                   message_size=len(body), message_sha256=body_digest(body))
    item = PendingCommit(msgid, [env])
    sp.commit_batch([item])
    assert item.error is None
    return msgid, env.evpid


def _all_bytes(root: Path) -> bytes:
    return b"".join(p.read_bytes() for p in root.rglob("*") if p.is_file())


@needs_ssl
def test_spool_mixed_formats_read_back(tmp_path: Path) -> None:
    plain = Spool(str(tmp_path), use_syncfs=False)
    plain.setup()
    m1, e1 = _commit(plain, BODY, "old@example.org")
    enc = Spool(str(tmp_path), use_syncfs=False, codec=c.Codec(True, KEY))
    enc.setup()
    m2, e2 = _commit(enc, BODY.replace(b"MARKER", b"SECOND"), "new@example.org")
    raw2 = Path(enc.message_path(m2)).read_bytes()
    assert c.is_encoded(raw2) and b"SECOND" not in raw2
    assert b"new@example.org" not in Path(enc.envelope_path(e2)).read_bytes()
    # every reader gets plain bytes, whatever the file's format
    for msgid, want in ((m1, b"MARKER"), (m2, b"SECOND")):
        fd = enc.open_message(msgid)
        with os.fdopen(fd, "rb") as f:
            assert want in f.read()
    assert enc.load_envelope(e2).rcpt == "new@example.org"
    env = dataclasses.replace(enc.load_envelope(e1), retry=1)
    enc.update_envelope(env)  # rewritten in the configured format
    assert b"old@example.org" not in Path(enc.envelope_path(e1)).read_bytes()
    # recovery after an unclean stop checks decoded bodies against their digest
    found = {msgid: envs for msgid, envs in enc.walk(verify=True)}
    assert set(found) == {m1, m2}
    assert b"SECOND" not in _all_bytes(tmp_path / "queue")


@needs_ssl
def test_spool_keeps_what_it_cannot_decode(tmp_path: Path) -> None:
    enc = Spool(str(tmp_path), use_syncfs=False, codec=c.Codec(False, KEY))
    enc.setup()
    msgid, _ = _commit(enc, BODY, "a@example.org")
    keyless = Spool(str(tmp_path), use_syncfs=False)
    assert list(keyless.walk(verify=True)) == []
    assert os.path.isdir(enc.msgdir(msgid))  # not deleted: the right key brings it back
    with pytest.raises(OSError, match="cannot decode"):
        keyless.open_message(msgid)
    assert [m for m, _ in enc.walk(verify=True)] == [msgid]


@needs_ssl
def test_damaged_encrypted_body_is_discarded_after_unclean_stop(tmp_path: Path) -> None:
    enc = Spool(str(tmp_path), use_syncfs=False, codec=c.Codec(False, KEY))
    enc.setup()
    msgid, _ = _commit(enc, BODY, "a@example.org")
    path = Path(enc.message_path(msgid))
    path.write_bytes(path.read_bytes()[:-30])  # as a crash before the sync may leave it
    assert list(enc.walk(verify=True)) == []
