"""Format specifiers of delivery templates (docs/config.md §5).

A template such as ``~/Maildir/%{rcpt.user:lowercase|strip}`` is expanded
right before a delivery. Grammar of one specifier::

    %{ name [ "[" index "]" ] [ ":" modifier ( ("|" | ":") modifier )* ] }
    index    = int | [int] ":" [int]
    modifier = lowercase | uppercase | strip | raw

``%%`` is a literal percent; ``~`` or ``~/`` at the very start of a template
is the user's home directory. Anything else after ``%`` is a syntax error.

Invariants:

- Every error in a template (unknown name or modifier, bad syntax) raises
  :class:`ValueError`, whatever the context, so a config check with a dummy
  context finds every mistake a real delivery would.
- Unless ``raw``, an expanded value holds only ASCII letters, digits and
  ``-_.+@=,``; any other character (``/``, blanks, shell metacharacters,
  controls, non-ASCII) becomes ``:``, and a leading ``.`` becomes ``:`` as
  well. A recipient therefore can neither climb directories (no ``/``, and
  no expansion can begin a ``..`` component) nor inject shell syntax.
- A value from the peer never starts with ``-``, even with ``raw``: a
  leading ``-`` becomes ``:``, so an address such as ``-oProxyCommand=x@dom``
  cannot become an option of the command it lands in (``mda "prog
  %{sender}"``). ``raw`` lifts the character filter, never this rule; the
  administrator's ``%{user.directory}`` and ``%{mda}`` are exempt. (OpenSMTPD
  keeps ``-`` in its safe set and relies on the MDA; we choose to refuse it
  the first position instead, which costs only addresses that start with a
  dash.)
- ``%{user.directory}`` and ``%{mda}`` come from the administrator (the
  userbase and the action), not from the peer, and are paths or commands by
  nature: they are inserted unsanitised, as the ``~`` prefix is.
- Substrings follow the documented OpenSMTPD examples: ``[n]`` is one
  character (negative counts from the end); in ``[a:b]`` a non-negative
  ``b`` is inclusive while a negative ``b`` is exclusive, so for
  ``example.org`` both ``[0:6]`` and ``[0:-4]`` give ``example``. Offsets
  past either end are clamped (an empty or shorter value, never an error,
  since that could only be found at delivery time).
- Modifiers apply in the order written, before the substring is taken, and
  sanitisation comes last.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass

__all__ = ["SAFE_CHARS", "FormatContext", "expand_format", "split_address", "strip_tag"]

#: characters an expansion keeps unless ``raw``
SAFE_CHARS = frozenset(string.ascii_letters + string.digits + "-_.+@=,")

#: the replacement for an unsafe character
UNSAFE_REPLACEMENT = ":"

# Values that come from the administrator, never from the SMTP peer.
_TRUSTED = frozenset({"user.directory", "mda"})

_NAMES = frozenset(
    {
        "sender",
        "sender.user",
        "sender.domain",
        "rcpt",
        "rcpt.user",
        "rcpt.domain",
        "dest",
        "dest.user",
        "dest.domain",
        "user.username",
        "user.directory",
        "mbox.from",
        "mda",
    }
)

_MODIFIERS = frozenset({"lowercase", "uppercase", "strip", "raw"})

_SPEC = re.compile(
    r"""
    (?P<name>[a-z]+(?:\.[a-z]+)?)
    (?:\[(?P<index>[^\]]*)\])?
    (?::(?P<mods>[a-z]+(?:[|:][a-z]+)*))?
    \Z
    """,
    re.VERBOSE,
)
_INT = re.compile(r"-?[0-9]{1,9}\Z")


@dataclass(frozen=True, slots=True)
class FormatContext:
    """What a template may refer to, for one envelope."""

    sender: str  # "" for the null sender, else local@domain
    rcpt: str  # original recipient local@domain
    dest: str  # expanded destination local@domain
    user_name: str  # %{user.username}
    user_dir: str  # %{user.directory}
    mda: str = ""  # %{mda}, only for wrappers
    sub_addr_delim: str = "+"


def split_address(address: str) -> tuple[str, str]:
    """``local@domain`` -> ``(local, domain)``; the last ``@`` separates."""
    local, at, domain = address.rpartition("@")
    if not at:
        return address, ""
    return local, domain


def strip_tag(value: str, delim: str) -> str:
    """Drop the sub-address tag: ``user+tag@dom`` -> ``user@dom``, ``user+tag`` -> ``user``."""
    if not delim:
        return value
    local, at, domain = value.rpartition("@")
    if not at:
        local, domain = value, ""
    head, sep, _tag = local.partition(delim)
    # A local part that *starts* with the delimiter has no user to keep.
    if not sep or not head:
        return value
    return head + at + domain


def _value(name: str, ctx: FormatContext) -> str:
    if name == "mbox.from":
        return ctx.sender or "MAILER-DAEMON"
    if name == "user.username":
        return ctx.user_name
    if name == "user.directory":
        return ctx.user_dir
    if name == "mda":
        return ctx.mda
    base, _, part = name.partition(".")
    address = {"sender": ctx.sender, "rcpt": ctx.rcpt, "dest": ctx.dest}[base]
    if not part:
        return address
    local, domain = split_address(address)
    return local if part == "user" else domain


def _parse_int(text: str, spec: str) -> int:
    if not _INT.match(text):
        raise ValueError(f"bad substring offset in %{{{spec}}}")
    return int(text)


def _substring(value: str, index: str, spec: str) -> str:
    n = len(value)
    if ":" not in index:
        i = _parse_int(index, spec)
        if i < 0:
            i += n
        return value[i] if 0 <= i < n else ""
    first, _, last = index.partition(":")
    begin = _parse_int(first, spec) if first else 0
    if begin < 0:
        begin = max(begin + n, 0)
    if last:
        end = _parse_int(last, spec)
        # Non-negative end is inclusive, negative end exclusive (see module doc).
        end = end + n if end < 0 else end + 1
    else:
        end = n
    return value[begin:end]


def sanitize(value: str) -> str:
    """Replace what is unsafe in a path or shell word, and a leading dot, by ``:``."""
    out = "".join(c if c in SAFE_CHARS else UNSAFE_REPLACEMENT for c in value)
    if out.startswith("."):
        out = UNSAFE_REPLACEMENT + out[1:]
    return out


def _expand_one(spec: str, ctx: FormatContext, raw_default: bool) -> str:
    m = _SPEC.match(spec)
    if m is None:
        raise ValueError(f"bad format specifier %{{{spec}}}")
    name = m.group("name")
    if name not in _NAMES:
        raise ValueError(f"unknown format specifier %{{{name}}}")
    mods = re.split(r"[|:]", m.group("mods")) if m.group("mods") else []
    for mod in mods:
        if mod not in _MODIFIERS:
            raise ValueError(f"unknown modifier {mod!r} in %{{{spec}}}")
    index = m.group("index")
    # Validate the offsets even when the value is empty (config check).
    value = _value(name, ctx)
    raw = raw_default or name in _TRUSTED
    for mod in mods:
        if mod == "lowercase":
            value = value.lower()
        elif mod == "uppercase":
            value = value.upper()
        elif mod == "strip":
            value = strip_tag(value, ctx.sub_addr_delim)
        else:
            raw = True
    if index is not None:
        value = _substring(value, index, spec)
    if not raw:
        value = sanitize(value)
    if name not in _TRUSTED and value.startswith("-"):
        # never an option of the command it lands in, raw or not (module doc)
        value = UNSAFE_REPLACEMENT + value[1:]
    return value


def expand_format(template: str, ctx: FormatContext, *, raw_default: bool = False) -> str:
    """Expand every specifier of ``template`` for ``ctx``; ValueError on a bad template."""
    out: list[str] = []
    pos = 0
    if template.startswith("~"):
        if len(template) > 1 and template[1] != "/":
            raise ValueError("only '~' or '~/' may start a template (no ~user)")
        out.append(ctx.user_dir.rstrip("/") if len(template) > 1 else ctx.user_dir)
        pos = 1
    n = len(template)
    while pos < n:
        pct = template.find("%", pos)
        if pct < 0:
            out.append(template[pos:])
            break
        out.append(template[pos:pct])
        if pct + 1 >= n:
            raise ValueError("template ends with a lone '%'")
        nxt = template[pct + 1]
        if nxt == "%":
            out.append("%")
            pos = pct + 2
            continue
        if nxt != "{":
            raise ValueError(f"'%' must be followed by '{{' or '%', not {nxt!r}")
        close = template.find("}", pct + 2)
        if close < 0:
            raise ValueError("unterminated format specifier")
        out.append(_expand_one(template[pct + 2 : close], ctx, raw_default))
        pos = close + 1
    return "".join(out)
