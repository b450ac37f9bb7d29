"""``listen on ... hostnames <table>``: the server's name by local address (docs/config.md §13).

Three listeners on one port, on 127.0.0.1, 127.0.0.2 and 127.0.0.3, share a
table that names the first two and gives the third a value that is not a
host name. A client greeted on each address sees that address's name in
the banner and the EHLO reply, and its mail's Received header says ``by``
it; the third keeps the default name (the listener's ``hostname``), and the
bad value is logged.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from e2e_util import wait_files
from harness import Daemon

CONFIG = """\
table names {{ "127.0.0.1" = "one.test", "127.0.0.2" = "two.test", \
"127.0.0.3" = "bad name" }}
listen on 127.0.0.1 port {port} hostnames <names>
listen on 127.0.0.2 port {port} hostnames <names>
listen on 127.0.0.3 port {port} hostname default.test hostnames <names>
table all {{ "@" = "{user}" }}
action "local" maildir "{mail}/%{{rcpt.user}}" virtual <all>
match from any for any action "local"
"""


def _reply(f: object) -> str:
    lines = []
    while True:
        line = f.readline().decode()  # type: ignore[attr-defined]
        lines.append(line)
        if line[3:4] != "-":
            return "".join(lines)


def session(address: str, port: int, user: str) -> tuple[str, str]:
    with socket.create_connection((address, port), timeout=30) as s:
        f = s.makefile("rb")
        banner = _reply(f)
        s.sendall(b"EHLO client.test\r\n")
        ehlo = _reply(f)
        for cmd in ("MAIL FROM:<a@example.org>", f"RCPT TO:<{user}@x.test>", "DATA"):
            s.sendall(cmd.encode() + b"\r\n")
            assert _reply(f)[:1] in ("2", "3")
        s.sendall(b"Subject: names\r\n\r\nhello\r\n.\r\n")
        assert _reply(f).startswith("250")
        s.sendall(b"QUIT\r\n")
        return banner, ehlo


@pytest.fixture(scope="module")
def d() -> Iterator[Daemon]:
    with Daemon(CONFIG) as daemon:
        yield daemon


@pytest.mark.parametrize(("address", "name"), [("127.0.0.1", "one.test"),
                                               ("127.0.0.2", "two.test"),
                                               ("127.0.0.3", "default.test")])
def test_name_by_local_address(d: Daemon, address: str, name: str) -> None:
    user = "u" + address.rsplit(".", 1)[1]
    banner, ehlo = session(address, d.port, user)
    assert banner.startswith(f"220 {name} "), banner
    assert ehlo.startswith(f"250-{name} "), ehlo
    mail = wait_files(d.mail / user / "new", 1, timeout=30)[0]
    assert f"by {name} ".encode() in mail, mail[:400]


def test_a_bad_name_in_the_table_is_logged(d: Daemon) -> None:
    session("127.0.0.3", d.port, "u3b")
    assert "hostname-invalid" in d.log()
