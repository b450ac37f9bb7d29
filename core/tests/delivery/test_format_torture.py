"""Torture: no peer-controlled value reaches a file path or a shell command
unescaped through a ``%{...}`` expansion unless the template says ``raw``."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from mailrider.delivery.format import SAFE_CHARS, FormatContext, expand_format

PEER_NAMES = ["sender", "sender.user", "sender.domain", "rcpt", "rcpt.user", "rcpt.domain",
              "dest", "dest.user", "dest.domain", "user.username"]
SHELL = set("/;&|$`\\\"'<>()[]{}*?!~#\n\r\t \0%")
evil = st.text(max_size=40) | st.sampled_from([
    "..", "../../etc/passwd", "a/../b", ".hidden", "$(rm -rf /)", "`id`", "a;b|c&d",
    "x\ny", "\u202e", "..\\..", "%2e%2e", ".", "/", "~root"])
addresses = st.builds(lambda u, d: f"{u}@{d}", evil, evil)
modifiers = st.lists(st.sampled_from(["lowercase", "uppercase", "strip"]), max_size=3)
index = st.sampled_from(["", "[0]", "[-1]", "[1:]", "[0:3]", "[:-1]", "[2:-2]"])


def _ctx(sender: str, rcpt: str, dest: str, user: str) -> FormatContext:
    return FormatContext(sender=sender, rcpt=rcpt, dest=dest, user_name=user,
                         user_dir="/home/u")


@settings(max_examples=400, deadline=2000)
@given(addresses, addresses, addresses, evil, st.sampled_from(PEER_NAMES), index, modifiers)
def test_expansion_is_safe_unless_raw(sender: str, rcpt: str, dest: str, user: str, name: str,
                                      idx: str, mods: list[str]) -> None:
    ctx = _ctx(sender, rcpt, dest, user)
    spec = name + idx + (":" + "|".join(mods) if mods else "")
    out = expand_format("%{" + spec + "}", ctx)
    assert set(out) <= SAFE_CHARS | {":"}  # ":" replaces every unsafe character
    assert not (set(out) & SHELL)
    assert not out.startswith(".")  # never "." or ".." as a path component
    assert not out.startswith("-")  # never an option of a command
    path = expand_format("/var/mail/%{" + spec + "}/%{rcpt.domain}/%{rcpt.user}", ctx)
    parts = path.split("/")
    assert len(parts) == 6  # no expansion added a component
    assert ".." not in parts and "." not in parts[3:]


@settings(max_examples=200, deadline=2000)
@given(addresses)
def test_raw_keeps_the_value(rcpt: str) -> None:
    # raw is the administrator's explicit choice: the value is kept as is, except
    # that it never starts with "-"
    ctx = _ctx(rcpt, rcpt, rcpt, "u")
    kept = ":" + rcpt[1:] if rcpt.startswith("-") else rcpt
    assert expand_format("%{rcpt:raw}", ctx) == kept
    assert expand_format("%{sender:raw}", ctx) == kept


@settings(max_examples=300, deadline=2000)
@given(addresses, addresses, evil, st.sampled_from(PEER_NAMES), index, modifiers, st.booleans())
def test_no_value_from_the_peer_starts_with_a_dash(sender: str, rcpt: str, user: str, name: str,
                                                   idx: str, mods: list[str], raw: bool) -> None:
    ctx = _ctx("-" + sender, "-" + rcpt, "--" + rcpt, "-" + user)
    spec = name + idx + (":" + "|".join(mods + ["raw"] * raw) if mods or raw else "")
    out = expand_format("%{" + spec + "}", ctx)
    assert not out.startswith("-")
    assert not expand_format("%{" + spec + "}", ctx, raw_default=True).startswith("-")


@settings(max_examples=300, deadline=2000)
@given(st.text(max_size=60))
def test_bad_templates_raise_only_value_error(template: str) -> None:
    try:
        expand_format(template, _ctx("a@b", "c@d", "e@f", "u"))
    except ValueError:
        pass
