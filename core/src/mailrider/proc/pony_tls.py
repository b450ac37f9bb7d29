"""TLS contexts of pony's listeners, with the private keys left in klondike.

Each pki a listener uses gets its own ``ssl.SSLContext`` built by
:func:`mailrider.crypto.delegate.delegated_context`: the context holds the
certificate chain and a key object with public parts only, whose private
operations are round trips to klondike (KLONDIKE.md). A listener with
several pki picks one by the client's SNI name. Every context passes a
TLS 1.2 and 1.3 self-test at start. When delegation is unavailable pony
refuses to start, unless ``smtp key-in-process`` allows it to load the key
itself, which is logged as a warning at every start.

Benchmarks and tests only: ``MAILRIDER_KEY_IN_PROCESS=force`` in pony's
environment (:data:`mailrider.limits.KEY_IN_PROCESS_ENV`) skips delegation
and takes that same in-process path, with the same warning, whatever the
configuration says; tools/bench/tls_daemon.py uses it to compare one daemon
with itself. pony reads the key file only here, in ``setup()`` before the
privilege drop, so root-only keys still load. Never set it in production.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Callable

from mailrider import limits, log
from mailrider.config.model import Config, Listener
from mailrider.errors import ConfigError

SignFn = Callable[[str, str, bytes, int], bytes]

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


def needs_tls(lst: Listener) -> bool:
    return lst.tls or lst.tls_require or lst.smtps


class ListenerTLS:
    """The contexts of every listener that offers TLS."""

    def __init__(self, config: Config, sign: SignFn) -> None:
        self.config = config
        self.sign = sign
        self.contexts: dict[int, ssl.SSLContext] = {}
        self.by_name: dict[int, dict[str, ssl.SSLContext]] = {}
        self.delegated: list[ssl.SSLContext] = []
        self.in_process = False

    def build(self) -> None:
        """Build every context (before the privilege drop: certificates may be root-only)."""
        for i, lst in enumerate(self.config.listeners):
            if not needs_tls(lst):
                continue
            names = lst.pki or list(self.config.pkis)
            if not names:
                raise ConfigError("listener offers TLS but no pki is declared",
                                  lst.where.file, lst.where.line)
            ctxs = {name: self._context(lst, name) for name in names}
            default = ctxs[names[0]]
            if len(ctxs) > 1:
                default.sni_callback = self._sni(ctxs)
            self.contexts[i] = default
            self.by_name[i] = ctxs

    @staticmethod
    def _sni(ctxs: dict[str, ssl.SSLContext]) -> Callable[[ssl.SSLObject, str | None,
                                                            ssl.SSLContext], None]:
        lowered = {k.lower(): v for k, v in ctxs.items()}

        def pick(obj: ssl.SSLObject, name: str | None, ctx: ssl.SSLContext) -> None:
            chosen = lowered.get((name or "").lower().rstrip("."))
            if chosen is not None:
                obj.context = chosen

        return pick

    def _context(self, lst: Listener, name: str) -> ssl.SSLContext:
        from mailrider.crypto import delegate

        pki = self.config.pkis.get(name)
        if pki is None or pki.cert is None or pki.key is None:
            raise ConfigError(f"pki {name}: certificate and key are both required",
                              lst.where.file, lst.where.line)
        try:
            lo, hi = protocol_range(lst.protocols)
        except ValueError as exc:
            raise ConfigError(str(exc), lst.where.file, lst.where.line) from None
        ciphers = lst.ciphers or self.config.smtp_ciphers
        forced = os.environ.get(limits.KEY_IN_PROCESS_ENV, "") == "force"
        try:
            if forced:
                raise delegate.DelegationUnavailable(
                    f"{limits.KEY_IN_PROCESS_ENV}=force (benchmarks/tests only)")
            ctx = delegate.delegated_context(pki.cert, self.sign, minimum_version=lo,
                                             maximum_version=hi, ciphers=ciphers)
            self.delegated.append(ctx)
        except delegate.DelegationUnavailable as exc:
            if not (self.config.key_in_process or forced):
                raise ConfigError(f"pki {name}: key delegation to klondike is unavailable "
                                  f"({exc}); 'smtp key-in-process' would allow pony to hold "
                                  "the key", pki.where.file, pki.where.line) from None
            log.warning("smtp", "key-in-process", pki=name, reason=str(exc))
            self.in_process = True
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.minimum_version, ctx.maximum_version = lo, hi
            if ciphers:
                ctx.set_ciphers(ciphers)
            ctx.load_cert_chain(pki.cert, pki.key)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"pki {name}: {exc}", pki.where.file, pki.where.line) from None
        if lst.tls_verify:
            ctx.verify_mode = ssl.CERT_REQUIRED
            ca = self.config.cas.get(lst.ca) if lst.ca else None
            if ca is not None and ca.cert:
                ctx.load_verify_locations(ca.cert)
            else:
                ctx.load_default_certs(ssl.Purpose.CLIENT_AUTH)
        return ctx

    def self_test(self) -> None:
        """KLONDIKE.md step 6 for every delegated context; raises on failure."""
        from mailrider.crypto import delegate

        for ctx in self.delegated:
            mode = ctx.verify_mode
            # a verify listener would want a client certificate: test the key
            # delegation without it, then ask for certificates again
            ctx.verify_mode = ssl.CERT_NONE
            try:
                delegate.self_test(ctx)
            except delegate.DelegationUnavailable as exc:
                raise ConfigError(f"TLS self-test failed: {exc}") from None
            finally:
                ctx.verify_mode = mode
        if self.delegated:
            log.event("smtp", "tls-ready", contexts=len(self.delegated), delegated="yes")


def tls_summary(obj: object) -> tuple[str, str] | None:
    """("TLSv1.3:TLS_AES_256_GCM_SHA384:256", "version=… cipher=… bits=…") of a session."""
    if not isinstance(obj, ssl.SSLObject | ssl.SSLSocket):
        return None
    version = obj.version() or "?"
    cipher = obj.cipher()
    name, bits = (cipher[0], cipher[2]) if cipher else ("?", 0)
    return f"{version}:{name}:{bits}", f"version={version} cipher={name} bits={bits}"
