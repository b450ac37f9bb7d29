"""TLS settings of the configuration, as values the ssl module takes.

Shared by the parser (which checks them at ``-n``) and by pony (which builds
its contexts with them): configuration is a layer below the processes.
"""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mailrider.config.model import Listener

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


def dhe_group(mode: str | None, cert_path: str | None) -> str | None:
    """The finite-field group a listener's ``pki ... dhe`` asks for, or None.

    docs/config.md §10: ``none`` (the default, as OpenSMTPD's) leaves the
    server without DH parameters, so no DHE cipher suite is negotiated;
    ``auto`` gives RFC 7919's ffdhe2048, or ffdhe3072 for an RSA key over
    2048 bits (the sizes OpenSSL's automatic choice gives those keys);
    ``legacy`` (1024 bits in libtls) gets the same as ``auto``, because
    OpenSSL 3 refuses DH keys under 2048 bits at its default security level.
    """
    if mode not in ("auto", "legacy"):
        return None
    from mailrider.crypto import der

    bits = 0
    try:
        with open(cert_path or "", "rb") as f:
            key = der.certificate_key(f.read(1 << 20))
    except (OSError, der.DERError):
        key = None  # the pki check reports an unreadable certificate
    if key is not None and key.kind == "rsa":
        bits = key.n.bit_length()
    return "ffdhe3072" if bits > 2048 else "ffdhe2048"


def load_dhe(ctx: ssl.SSLContext, group: str) -> None:
    """Give a server context the DH parameters of ``group`` (shipped beside this module)."""
    from importlib import resources

    with resources.as_file(resources.files(__package__).joinpath(f"{group}.pem")) as path:
        ctx.load_dh_params(str(path))


def needs_tls(lst: Listener) -> bool:
    """Whether a listener needs a certificate (STARTTLS offered or required, or SMTPS)."""
    return lst.tls or lst.tls_require or lst.smtps
