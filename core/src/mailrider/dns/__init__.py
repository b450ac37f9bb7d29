"""mailrider.dns: an asynchronous stub resolver and the DNS wire format.

:mod:`wire` is pure (bytes in, messages out); :mod:`resolver` owns the
sockets.  Nothing here reads /etc/resolv.conf unless
:func:`load_resolv_conf` is called.
"""

from mailrider.dns.resolver import (
    Answer,
    DNSError,
    DNSTempError,
    NullMX,
    NXDomain,
    Resolver,
    ResolverConfig,
    load_resolv_conf,
)
from mailrider.dns.wire import DNSFormatError

__all__ = [
    "Answer",
    "DNSError",
    "DNSFormatError",
    "DNSTempError",
    "NXDomain",
    "NullMX",
    "Resolver",
    "ResolverConfig",
    "load_resolv_conf",
]
