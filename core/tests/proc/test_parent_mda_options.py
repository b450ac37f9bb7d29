"""parent_mda: the command line an ``mda wrapper`` makes (docs/config.md §11)."""

from __future__ import annotations

import pytest
from mailrider.config import parse_string
from mailrider.delivery.format import FormatContext
from mailrider.errors import TempFail
from mailrider.proc.parent_mda import wrapped

CTX = FormatContext(sender="a@example.org", rcpt="Joe+tag@w.test", dest="joe@w.test",
                    user_name="joe", user_dir="/home/joe")


def test_wrapper_expands_around_the_command() -> None:
    cfg = parse_string('mda wrapper w "/usr/bin/wrap -u %{rcpt.user} -- %{mda}"\n'
                       'action a mda "deliver %{dest.user}" wrapper w\n'
                       'action b mda "deliver"\n')
    # %{mda} is the administrator's command, inserted as it is (not sanitised)
    assert wrapped(cfg, cfg.actions["a"], "deliver 'x y' > /tmp/f", CTX) == \
        "/usr/bin/wrap -u Joe+tag -- deliver 'x y' > /tmp/f"
    assert wrapped(cfg, cfg.actions["b"], "deliver", CTX) == "deliver"


def test_the_wrapper_comes_from_the_configuration_only() -> None:
    cfg = parse_string('mda wrapper w "wrap %{mda}"\naction a mda "x" wrapper w\n')
    action = cfg.actions["a"]
    cfg.mda_wrappers.clear()  # e.g. a configuration changed under the action
    with pytest.raises(TempFail):
        wrapped(cfg, action, "x", CTX)


def test_peer_values_in_the_wrapper_are_sanitised() -> None:
    cfg = parse_string('mda wrapper w "wrap %{sender} %{mda}"\naction a mda "x" wrapper w\n')
    ctx = FormatContext(sender="-o;rm@example.org", rcpt="a@b", dest="a@b", user_name="a",
                        user_dir="/")
    assert wrapped(cfg, cfg.actions["a"], "x", ctx) == "wrap :o:rm@example.org x"
