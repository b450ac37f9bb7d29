"""Reply serialisation (RFC 5321 4.2, RFC 2034)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from mailrider.smtp.reply import REPLY_LINE_MAX, Reply, split_status


def test_single_line() -> None:
    assert Reply(250, "2.1.0", "Ok").to_bytes() == b"250 2.1.0 Ok\r\n"
    assert Reply(354, "", "Go ahead").to_bytes() == b"354 Go ahead\r\n"
    assert str(Reply(550, "5.1.1", "No such user")) == "550 5.1.1 No such user"


def test_multi_line_repeats_status() -> None:
    r = Reply(214, "2.0.0", "first", ("second", "third"))
    assert r.to_bytes() == b"214-2.0.0 first\r\n214-2.0.0 second\r\n214 2.0.0 third\r\n"


def test_validation() -> None:
    for code, status in [(199, ""), (600, ""), (250, "5.0.0"), (550, "5.0"), (550, "5.01.0"),
                         (550, "x.y.z"), (550, "5.1000.0")]:
        with pytest.raises(ValueError):
            Reply(code, status, "x")


def test_split_status() -> None:
    assert split_status("2.0.0 queued as X") == ("2.0.0", "queued as X")
    assert split_status("queued") == ("", "queued")
    assert split_status("2.0.0") == ("2.0.0", "")
    assert split_status("9.9.9 nope") == ("", "9.9.9 nope")


@given(st.text(), st.lists(st.text(), max_size=3))
def test_no_injection_and_line_limit(text: str, more: list[str]) -> None:
    r = Reply(550, "5.7.1", text, tuple(more))
    out = r.to_bytes()
    lines = out.split(b"\r\n")
    assert lines[-1] == b""
    assert len(lines) - 1 == 1 + len(more)
    for n, line in enumerate(lines[:-1]):
        assert b"\r" not in line and b"\n" not in line
        assert len(line) + 2 <= REPLY_LINE_MAX
        sep = b"-" if n < len(more) else b" "
        assert line.startswith(b"550" + sep + b"5.7.1 ")
    out.decode("utf-8")  # truncation never splits a character
