"""pony_filter.filter_reply: a filter's reject/disconnect text as the client sees it."""

from __future__ import annotations

import pytest
from mailrider.proc.pony_filter import filter_reply


@pytest.mark.parametrize(("param", "wire"), [
    ("550 no plain mail here", b"550 no plain mail here\r\n"),  # no 5.0.0 made up
    ("550 5.7.1 no spam here", b"550 5.7.1 no spam here\r\n"),
    ("451 4.7.1 not now", b"451 4.7.1 not now\r\n"),
    ("554 4.7.1 mismatched class kept as text", b"554 4.7.1 mismatched class kept as text\r\n"),
    ("421 go away", b"421 go away\r\n"),
    # not a 4xx/5xx reply: OpenSMTPD's fallback
    ("250 fine", b"421 Internal server error\r\n"),
    ("55x nope", b"421 Internal server error\r\n"),
    ("550", b"421 Internal server error\r\n"),
    ("550-multi", b"421 Internal server error\r\n"),
    ("", b"421 Internal server error\r\n"),
    (None, b"421 Internal server error\r\n"),
    ("550 evil\r\n250 injected", b"550 evil  250 injected\r\n"),  # one line only
])
def test_filter_reply_passes_through(param: str | None, wire: bytes) -> None:
    assert filter_reply(param).to_bytes() == wire
