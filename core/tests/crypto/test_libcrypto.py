"""crypto/libcrypto.py: which library ``_ssl`` uses, and the names its
functions go by (OpenSSL 3, 1.1.1, LibreSSL), decided from data."""

from __future__ import annotations

import os
import ssl

import pytest
from mailrider.crypto import libcrypto
from mailrider.crypto.libcrypto import Flavour, Unavailable, flavour, resolve_symbols

#: what each library exports of the functions that have alternatives
OPENSSL3 = {("crypto", "OpenSSL_version_num"), ("ssl", "SSL_CTX_get_options"),
            ("ssl", "SSL_CTX_ctrl")}
LIBRESSL = {("crypto", "OpenSSL_version_num"), ("ssl", "SSL_CTX_ctrl")}
OPENSSL10 = {("crypto", "SSLeay"), ("ssl", "SSL_CTX_ctrl")}


def exports(names: set[tuple[str, str]]) -> libcrypto.Callable[[str, str], bool]:
    return lambda library, name: (library, name) in names


def test_flavour() -> None:
    assert flavour("OpenSSL 3.0.11 19 Sep 2023") == Flavour("OpenSSL", (3, 0, 11))
    assert flavour("OpenSSL 1.1.1w  11 Sep 2023") == Flavour("OpenSSL", (1, 1, 1))
    assert flavour("LibreSSL 3.8.2") == Flavour("LibreSSL", (3, 8, 2))
    assert flavour("BoringSSL") == Flavour("BoringSSL", ())


def test_supported_libraries() -> None:
    reason = libcrypto.unsupported_reason
    assert reason(Flavour("OpenSSL", (3, 0, 11)), 0x300000B0) == ""
    assert reason(Flavour("OpenSSL", (3, 2, 0)), 0x30200000) == ""
    assert reason(Flavour("OpenSSL", (1, 1, 1)), 0x1010117F) == ""
    assert "untested" in reason(Flavour("OpenSSL", (1, 0, 2)), 0x100020FF)
    assert "untested" in reason(Flavour("OpenSSL", (4, 0, 0)), 0x40000000)
    # LibreSSL always says 0x20000000: its version is read from the text
    assert reason(Flavour("LibreSSL", (3, 8, 2)), 0x20000000) == ""
    assert reason(Flavour("LibreSSL", (4, 0, 0)), 0x20000000) == ""
    assert "older than 3.5.0" in reason(Flavour("LibreSSL", (3, 4, 3)), 0x20000000)
    assert "untested" in reason(Flavour("BoringSSL", ()), 0x1010107F)


def test_resolve_symbols() -> None:
    assert resolve_symbols(exports(OPENSSL3)) == {
        "version": "OpenSSL_version_num", "ctx_options": "SSL_CTX_get_options"}
    # LibreSSL: SSL_CTX_get_options is a macro over SSL_CTX_ctrl
    assert resolve_symbols(exports(LIBRESSL)) == {
        "version": "OpenSSL_version_num", "ctx_options": "SSL_CTX_ctrl"}
    assert resolve_symbols(exports(OPENSSL10)) == {
        "version": "SSLeay", "ctx_options": "SSL_CTX_ctrl"}
    # the names are looked for in the right library
    with pytest.raises(Unavailable,
                       match="libcrypto exports neither OpenSSL_version_num or SSLeay"):
        resolve_symbols(exports({("ssl", "OpenSSL_version_num"), ("ssl", "SSL_CTX_ctrl")}))
    with pytest.raises(Unavailable, match="libssl exports neither SSL_CTX_get_options"):
        resolve_symbols(exports({("crypto", "OpenSSL_version_num")}))


def test_split_libraries() -> None:
    loaded = ["", "/usr/bin/python3.11", "/lib/x86_64-linux-gnu/libssl.so.3",
              "/lib/x86_64-linux-gnu/libcrypto.so.3", "/usr/lib/libssl.so.58.0",
              "/usr/lib/libcrypto.so.55.1", "/usr/lib/libssl3.so", "/lib/libcrypto.so",
              "/opt/libcrypto.so.3.bak"]
    ssl_paths, crypto_paths = libcrypto.split_libraries(loaded)
    assert ssl_paths == {"/lib/x86_64-linux-gnu/libssl.so.3", "/usr/lib/libssl.so.58.0"}
    assert crypto_paths == {"/lib/x86_64-linux-gnu/libcrypto.so.3",
                            "/usr/lib/libcrypto.so.55.1", "/lib/libcrypto.so"}


def test_dl_iterate_phdr_agrees_with_proc_maps() -> None:
    import _ssl  # noqa: F401

    objects, maps = libcrypto.loaded_objects(), libcrypto.maps_objects()
    if objects is None or maps is None:
        pytest.skip("needs both dl_iterate_phdr and /proc/self/maps")

    def real(found: tuple[set[str], set[str]]) -> list[set[str]]:
        return [{os.path.realpath(p) for p in paths} for paths in found]

    # the same files (a merged /usr names them through two folders)
    assert real(libcrypto.split_libraries(objects)) == real(libcrypto.split_libraries(maps))


class FakeSSL:
    """A libssl whose SSL_CTX_get_options is a macro (LibreSSL)."""

    def __init__(self) -> None:
        self.calls: list[tuple[object, ...]] = []

    def SSL_CTX_ctrl(self, *args: object) -> int:
        self.calls.append(args)
        return -2  # a long with every high bit set: options are unsigned


def test_options_through_the_macros_function() -> None:
    fake = FakeSSL()
    lib = libcrypto.LibCrypto(None, fake, "", "", 0x20000000,  # type: ignore[arg-type]
                              {"version": "OpenSSL_version_num", "ctx_options": "SSL_CTX_ctrl"})
    assert lib.ctx_options(1234) == 0xFFFFFFFFFFFFFFFE
    assert fake.calls == [(1234, libcrypto.SSL_CTRL_OPTIONS, 0, None)]


def test_binding_on_this_machine() -> None:
    if not libcrypto.available():
        pytest.skip(libcrypto.unavailable_reason())
    lib = libcrypto.load()
    assert lib.version == ssl.OPENSSL_VERSION_NUMBER
    assert set(lib.names) == set(libcrypto.ALTERNATIVES)
    if flavour(ssl.OPENSSL_VERSION).name == "OpenSSL":
        assert lib.names == {"version": "OpenSSL_version_num",
                             "ctx_options": "SSL_CTX_get_options"}
    else:
        assert lib.names["ctx_options"] == "SSL_CTX_ctrl"
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    from mailrider.crypto import delegate

    ptr = delegate.ssl_ctx_pointer(ctx)
    assert lib.ctx_options(ptr) == int(ctx.options)
