"""TLS settings of the configuration, as values the ssl module takes.

Shared by the parser (which checks them at ``-n``) and by pony (which builds
its contexts with them): configuration is a layer below the processes.
"""

from __future__ import annotations

import ssl

_VERSIONS = {
    "tlsv1.0": ssl.TLSVersion.TLSv1, "tlsv1.1": ssl.TLSVersion.TLSv1_1,
    "tlsv1.2": ssl.TLSVersion.TLSv1_2, "tlsv1.3": ssl.TLSVersion.TLSv1_3,
}


def protocol_range(spec: str | None) -> tuple[ssl.TLSVersion, ssl.TLSVersion]:
    """libtls-style ``protocols`` ("secure", "default", "all", "tlsv1.2,tlsv1.3", "legacy")."""
    if spec is None or spec.lower() in ("secure", "default"):
        return ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.MAXIMUM_SUPPORTED
    if spec.lower() in ("all", "legacy"):
        return ssl.TLSVersion.TLSv1, ssl.TLSVersion.MAXIMUM_SUPPORTED
    chosen = []
    for word in spec.replace(":", ",").split(","):
        word = word.strip().lower()
        if word.startswith("!"):
            continue
        if word not in _VERSIONS:
            raise ValueError(f"unknown TLS protocol {word!r}")
        chosen.append(_VERSIONS[word])
    if not chosen:
        raise ValueError(f"no TLS protocol in {spec!r}")
    return min(chosen), max(chosen)


def check_ciphers(spec: str) -> None:
    """Raise ValueError when OpenSSL selects no cipher from ``spec``, as
    ``SSLContext.set_ciphers`` does when pony and the relay client build
    their contexts at start."""
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).set_ciphers(spec)
    except ssl.SSLError:
        raise ValueError(f"no usable cipher in {spec!r}") from None
