"""Queue files at rest: ``queue compression`` and ``queue encryption``.

A queue file (a message body or an envelope) is either plain, as written
before these options existed, or *encoded*: it starts with :data:`MAGIC`, a
format byte and a flags byte, so a spool may mix both kinds and the
configuration only decides how new files are written (docs/queue.md §8).

Encoded layout::

    MAGIC (4) | FORMAT (1) | flags (1) | payload
    payload, when FLAG_AES256GCM:  IV (12) | ciphertext | GCM tag (16)
    the (decrypted) payload, when FLAG_DEFLATE: a zlib stream

Compression is applied first, then encryption (compressing ciphertext gains
nothing). The six header bytes are the GCM additional data, so flags cannot
be flipped without the tag failing. The key is 32 bytes, written as 32
characters in the configuration, as OpenSMTPD takes it (``openssl rand -hex
16`` prints one); AES-256-GCM is OpenSSL's, reached through
:mod:`mailrider.crypto.libcrypto`.

Invariants:

- A plain file never starts with :data:`MAGIC`: a message file starts with
  a header line, an envelope with ``version:``; NUL is neither.
- :meth:`Codec.decode` never returns more than its ``limit`` bytes (a
  corrupt or hostile deflate stream cannot exhaust memory) and raises
  :class:`CodecError` on any damage: a wrong key, a truncated file, a flag it
  does not know. Nothing here logs, and no error message holds the key.
"""

from __future__ import annotations

import ctypes
import os
import zlib
from dataclasses import dataclass, field

MAGIC = b"\x00MRQ"
FORMAT = 1
FLAG_DEFLATE = 0x01
FLAG_AES256GCM = 0x02
_KNOWN_FLAGS = FLAG_DEFLATE | FLAG_AES256GCM
HEADER_SIZE = len(MAGIC) + 2
KEY_SIZE = 32
IV_SIZE = 12
TAG_SIZE = 16
#: the largest queue file decoded (a message is at most max-message-size plus
#: the headers we add; this bounds a decompression bomb well above that)
DECODE_LIMIT = 1 << 30

_EVP_CTRL_GCM_SET_IVLEN = 0x9
_EVP_CTRL_GCM_GET_TAG = 0x10
_EVP_CTRL_GCM_SET_TAG = 0x11


class CodecError(ValueError):
    """A queue file that cannot be decoded (damaged, wrong or missing key)."""


def parse_key(text: str) -> bytes:
    """The 32-byte key from the configuration (or stdin) text; ValueError if not."""
    raw = text.encode("utf-8", "surrogateescape")
    if len(raw) != KEY_SIZE:
        raise ValueError(f"the queue key must be {KEY_SIZE} characters "
                         "(make one with: openssl rand -hex 16)")
    return raw


@dataclass(frozen=True, slots=True)
class Codec:
    """How new queue files are written; reads accept every format."""

    compress: bool = False
    key: bytes | None = field(default=None, repr=False)

    @property
    def active(self) -> bool:
        return self.compress or self.key is not None

    def encode(self, data: bytes) -> bytes:
        if not self.active:
            return data
        flags = 0
        if self.compress:
            data = zlib.compress(data, 6)
            flags |= FLAG_DEFLATE
        if self.key is not None:
            flags |= FLAG_AES256GCM
            header = MAGIC + bytes([FORMAT, flags])
            return header + _seal(self.key, header, data)
        return MAGIC + bytes([FORMAT, flags]) + data

    def decode(self, data: bytes, limit: int = DECODE_LIMIT) -> bytes:
        if not is_encoded(data):
            return data
        if len(data) < HEADER_SIZE:
            raise CodecError("truncated queue file header")
        fmt, flags = data[len(MAGIC)], data[len(MAGIC) + 1]
        if fmt != FORMAT or flags & ~_KNOWN_FLAGS:
            raise CodecError(f"unknown queue file format {fmt}/{flags:#x}")
        header, payload = data[:HEADER_SIZE], data[HEADER_SIZE:]
        if flags & FLAG_AES256GCM:
            if self.key is None:
                raise CodecError("encrypted queue file and no queue encryption key")
            payload = _open(self.key, header, payload)
        if flags & FLAG_DEFLATE:
            payload = _inflate(payload, limit)
        if len(payload) > limit:
            raise CodecError("queue file larger than the decoding limit")
        return payload


def is_encoded(data: bytes) -> bool:
    return data[: len(MAGIC)] == MAGIC


def _inflate(data: bytes, limit: int) -> bytes:
    d = zlib.decompressobj()
    try:
        out = d.decompress(data, limit + 1)
    except zlib.error as exc:
        raise CodecError(f"corrupt compressed queue file: {exc}") from None
    if len(out) > limit or d.unconsumed_tail:
        raise CodecError("queue file larger than the decoding limit")
    if not d.eof:
        raise CodecError("truncated compressed queue file")
    return out


def _seal(key: bytes, aad: bytes, data: bytes) -> bytes:
    iv = os.urandom(IV_SIZE)
    body, tag = _gcm(True, key, iv, aad, data, None)
    return iv + body + tag


def _open(key: bytes, aad: bytes, payload: bytes) -> bytes:
    if len(payload) < IV_SIZE + TAG_SIZE:
        raise CodecError("truncated encrypted queue file")
    iv, body, tag = payload[:IV_SIZE], payload[IV_SIZE:-TAG_SIZE], payload[-TAG_SIZE:]
    out, _ = _gcm(False, key, iv, aad, body, tag)
    return out


def _gcm(enc: bool, key: bytes, iv: bytes, aad: bytes, data: bytes,
         tag: bytes | None) -> tuple[bytes, bytes]:
    from mailrider.crypto import libcrypto

    try:
        lib = libcrypto.load()
    except libcrypto.Unavailable as exc:
        raise CodecError(f"queue encryption needs OpenSSL's libcrypto: {exc}") from None
    c = lib.crypto
    ctx = c.EVP_CIPHER_CTX_new()
    if not ctx:
        raise CodecError("EVP_CIPHER_CTX_new failed")
    init = c.EVP_EncryptInit_ex if enc else c.EVP_DecryptInit_ex
    update = c.EVP_EncryptUpdate if enc else c.EVP_DecryptUpdate
    final = c.EVP_EncryptFinal_ex if enc else c.EVP_DecryptFinal_ex
    try:
        n = ctypes.c_int(0)
        if (init(ctx, c.EVP_aes_256_gcm(), None, None, None) != 1
                or c.EVP_CIPHER_CTX_ctrl(ctx, _EVP_CTRL_GCM_SET_IVLEN, IV_SIZE, None) != 1
                or init(ctx, None, None, key, iv) != 1):
            raise CodecError(f"AES-256-GCM setup failed: {lib.errors()}")
        if update(ctx, None, ctypes.byref(n), aad, len(aad)) != 1:
            raise CodecError(f"AES-256-GCM failed: {lib.errors()}")
        out = ctypes.create_string_buffer(len(data) + 32)
        if data and update(ctx, out, ctypes.byref(n), data, len(data)) != 1:
            raise CodecError(f"AES-256-GCM failed: {lib.errors()}")
        size = n.value if data else 0
        if tag is not None:
            tbuf = ctypes.create_string_buffer(tag, TAG_SIZE)
            if c.EVP_CIPHER_CTX_ctrl(ctx, _EVP_CTRL_GCM_SET_TAG, TAG_SIZE, tbuf) != 1:
                raise CodecError("AES-256-GCM: cannot set the tag")
        rest = ctypes.create_string_buffer(32)
        if final(ctx, rest, ctypes.byref(n)) != 1:
            lib.errors()  # drain the queue; the reason is always the same
            raise CodecError("encrypted queue file fails authentication "
                             "(wrong queue key, or the file is damaged)")
        result = out.raw[:size] + rest.raw[: n.value]
        if tag is None:
            tbuf = ctypes.create_string_buffer(TAG_SIZE)
            if c.EVP_CIPHER_CTX_ctrl(ctx, _EVP_CTRL_GCM_GET_TAG, TAG_SIZE, tbuf) != 1:
                raise CodecError("AES-256-GCM: cannot get the tag")
            return result, tbuf.raw
        return result, b""
    finally:
        c.EVP_CIPHER_CTX_free(ctx)


def codec_for(compress: bool, key_text: str | None) -> Codec:
    """The codec for the configuration's ``queue`` options (the key as text)."""
    return Codec(compress, parse_key(key_text) if key_text is not None else None)


def memfd_with(data: bytes, name: str = "message") -> int:
    """A descriptor at offset 0 holding ``data``: a decoded body is handed on
    as a descriptor, like a plain message file (memfd where the system has it,
    else an unlinked temporary file)."""
    try:
        fd = os.memfd_create(name, os.MFD_CLOEXEC)
    except (AttributeError, OSError):
        import tempfile

        with tempfile.TemporaryFile() as f:
            fd = os.dup(f.fileno())
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd
