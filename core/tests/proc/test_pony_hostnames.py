"""pony_smtp: ``hostnames <t>``, the session's name by its local address (docs/config.md §13).

Uses test_pony_smtp's fake host and runner: lka is scripted, the client
real, over a loopback TCP connection (local address 127.0.0.1).
"""

from __future__ import annotations

from typing import Any

import pytest
import test_pony_smtp as base
from mailrider.config.model import Listener
from mailrider.errors import TempFail
from mailrider.ipc import messages as m
from test_pony_smtp import Client, FakeHost, Runner, Spool, lka_accepting

run = base.run  # the runner fixture

LISTENER = Listener(address="127.0.0.1", port=25, hostnames="names")


def lka_naming(name: str | None, fail: bool = False) -> Any:
    def answer(msg: Any) -> Any:
        if isinstance(msg, m.MtaLookup):
            if fail:
                raise TempFail("table down", 451, "4.3.0")
            return m.Ok(text=name) if name is not None else m.Error(text="not found")
        return lka_accepting(msg)

    return answer


@pytest.mark.parametrize(("name", "fail", "expected"), [
    ("named.test", False, "named.test"),
    (None, False, "mx.test"),  # no entry: the default name
    (None, True, "mx.test"),  # the table cannot answer: the default, and the session goes on
    ("bad name\r\n250 x", False, "mx.test"),  # not a host name: refused
])
def test_name_by_local_address(run: Runner, name: str | None, fail: bool,
                               expected: str) -> None:
    async def scenario(c: Client, host: FakeHost, spool: Spool) -> None:
        assert (await c.reply()).startswith(f"220 {expected} ")
        assert (await c.cmd("EHLO client.test")).startswith(f"250-{expected} ")
        assert (await c.cmd("MAIL FROM:<a@example.org>")).startswith("250")

    host, _ = run(scenario, lka=lka_naming(name, fail), listener=LISTENER)
    asked = host.lka.of(m.MtaLookup)
    assert [(q.service, q.table, q.key) for q in asked] == [("addrname", "names", "127.0.0.1")]


def test_without_hostnames_lka_is_not_asked(run: Runner) -> None:
    async def scenario(c: Client, host: FakeHost, spool: Spool) -> None:
        assert (await c.reply()).startswith("220 mx.test ")

    host, _ = run(scenario, lka=lka_naming("named.test"))
    assert host.lka.of(m.MtaLookup) == []
