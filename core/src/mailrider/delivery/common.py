"""What every local delivery method shares.

The header lines a delivery prepends, the environment of an mda command and
the text of a failure. The queued message itself is read through
:mod:`mailrider.delivery.message`: it has LF line endings, is dot-unstuffed
and starts with our Received header (docs/queue.md §3); the bytes are never
decoded.
"""

from __future__ import annotations

from mailrider import paths
from mailrider.delivery.format import FormatContext, split_address

__all__ = ["delivery_headers", "extension_of", "mda_environment", "sanitize_text"]


def sanitize_text(text: str, limit: int = 200) -> str:
    """A one-line, printable, bounded rendering of ``text`` for a reply or log."""
    line = text.strip().split("\n", 1)[0].strip()
    clean = "".join(c if c.isprintable() else "?" for c in line)
    return clean[:limit]


def _header_value(value: str) -> bytes:
    # No CR, LF, NUL or other control may reach a header line.
    return "".join(c for c in value if c.isprintable()).encode("utf-8", "replace")


def delivery_headers(sender: str, dest: str) -> bytes:
    """``Return-Path`` and ``Delivered-To`` lines to prepend to a local delivery."""
    return (
        b"Return-Path: <"
        + _header_value(sender).replace(b"<", b"").replace(b">", b"")
        + b">\nDelivered-To: "
        + _header_value(dest)
        + b"\n"
    )


def extension_of(user: str, delim: str = "+") -> str:
    """The sub-address tag of a local part: ``user+tag`` -> ``tag`` ("" if none)."""
    if not delim:
        return ""
    head, sep, tag = user.partition(delim)
    return tag if sep and head else ""


def _env_value(value: str) -> str:
    # NUL cannot be in an environment string; controls have no business there.
    return "".join(c for c in value if c.isprintable())


def mda_environment(
    ctx: FormatContext, *, home: str, user: str, extension: str
) -> dict[str, str]:
    """The environment of an mda command (docs/config.md §5, the mda contract).

    ``RECIPIENT`` is the expanded destination, ``ORIGINAL_RECIPIENT`` the
    address as received; ``LOCAL`` and ``DOMAIN`` are the two halves of the
    destination; ``SENDER`` is empty for the null sender.
    """
    local, domain = split_address(ctx.dest)
    env = {
        "DOMAIN": domain,
        "EXTENSION": extension,
        "HOME": home,
        "LOCAL": local,
        "LOGNAME": user,
        "ORIGINAL_RECIPIENT": ctx.rcpt,
        "PATH": paths.MDA_PATH,
        "RECIPIENT": ctx.dest,
        "SENDER": ctx.sender,
        "SHELL": paths.SHELL,
        "USER": user,
    }
    return {k: _env_value(v) for k, v in env.items()}
