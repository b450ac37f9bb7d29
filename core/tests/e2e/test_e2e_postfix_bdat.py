"""End to end: CHUNKING / BDAT with Postfix as the peer in both directions.

A throwaway Postfix (tools/bench/postfix_peer.py: its own folder, loopback
only, no DNS) relays remote.test to mailrider, and mailrider relays
localhost to it. Towards Postfix both logs must show that BDAT carried the
message: ours (``mta message-out ... method=bdat``) and Postfix's smtpd
disconnect summary (``bdat=1``). The other way Postfix cannot use BDAT: its
CHUNKING support (3.4 and later) is in smtpd only, its smtp(8) client always
sends DATA (Postfix's changelog, 2018-08, "SMTP server support for CHUNKING");
so that test checks that a CHUNKING-offering mailrider takes Postfix's DATA
unharmed, and the BDAT server side is driven by smtplib in test_e2e_bdat.py.
"""

from __future__ import annotations

import re
import smtplib
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import Daemon, free_port, wait_for

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tools" / "bench"))
import postfix_peer

pytestmark = pytest.mark.skipif(postfix_peer.available() is not None,
                                reason=str(postfix_peer.available()))

CONFIG = """\
listen on 127.0.0.1 port {port}
table all {{ "@" = "{user}" }}
action "md" maildir "{mail}/md/%{{rcpt.user}}" virtual <all>
action "pf" relay host smtp://127.0.0.1:PFPORT
match from any for domain "remote.test" action "md"
match from any for domain "localhost" action "pf"
"""

MSG = (b"From: Alice <alice@example.org>\r\nSubject: chunked\r\n\r\n"
       b"first line\r\n.\r\n..two dots\r\n" + b"x" * 200 + b"\r\nlast line\r\n")


@pytest.fixture(scope="module")
def pair() -> Iterator[tuple[Daemon, postfix_peer.PostfixPeer]]:
    pf_port = free_port()
    daemon = Daemon(CONFIG.replace("PFPORT", str(pf_port)))
    peer = postfix_peer.PostfixPeer(pf_port)
    # Postfix's SMTP client for relayhost mail (the bench peer only receives)
    with (peer.config / "master.cf").open("a") as f:
        f.write("smtp      unix  -       -       n       -       -       smtp\n"
                "relay     unix  -       -       n       -       -       smtp\n")
    with (peer.config / "main.cf").open("a") as f:
        f.write(f"relayhost = [127.0.0.1]:{daemon.port}\n"
                "smtp_tls_security_level = none\n")
    try:
        daemon.start()
        peer.start()
        yield daemon, peer
    finally:
        peer.cleanup()
        daemon.cleanup()


def test_postfix_relays_to_us_with_data(pair: tuple[Daemon, postfix_peer.PostfixPeer]) -> None:
    daemon, peer = pair
    with smtplib.SMTP("127.0.0.1", peer.port, timeout=20) as c:
        c.ehlo("client.example")
        assert c.sendmail("alice@example.org", ["bob@remote.test"],
                          MSG.replace(b"Subject", b"To: bob@remote.test\r\nSubject")) == {}
    box = daemon.mail / "md" / "bob" / "new"
    try:
        names = wait_for(lambda: box.is_dir() and sorted(box.iterdir()), 60)
    except TimeoutError:
        raise AssertionError(f"not delivered:\n{peer.log()}\n{daemon.log()[-3000:]}") from None
    assert isinstance(names, list)
    data = names[0].read_bytes()
    assert data.endswith(MSG.split(b"\r\n\r\n", 1)[1].replace(b"\r\n", b"\n"))
    line = next(x for x in daemon.log().splitlines() if "smtp message " in x)
    assert "bdat=yes" not in line, line  # Postfix's client has no BDAT
    assert "Postfix" in data.decode() or "postfix.bench.localhost" in data.decode()


def test_we_relay_to_postfix_with_bdat(pair: tuple[Daemon, postfix_peer.PostfixPeer]) -> None:
    daemon, peer = pair
    with smtplib.SMTP("127.0.0.1", daemon.port, timeout=20) as c:
        c.ehlo("client.example")
        assert c.sendmail("alice@example.org", ["carol@localhost"],
                          MSG.replace(b"Subject", b"To: carol@localhost\r\nSubject")) == {}
    try:
        wait_for(lambda: peer.delivered() >= 1, 60)
    except TimeoutError:
        raise AssertionError(f"not delivered:\n{peer.log()}\n{daemon.log()[-3000:]}") from None
    (name,) = list((peer.maildir / "new").iterdir())
    data = name.read_bytes()
    # Postfix stored what BDAT carried: no dot-stuffing leaked, the "." line kept
    assert b"\nfirst line\n.\n..two dots\n" in data
    assert re.search(r"mta message-out .*method=bdat", daemon.log()), daemon.log()[-3000:]
    # Postfix's smtpd counts the commands of each session at disconnect
    wait_for(lambda: re.search(r"disconnect from .* bdat=1", peer.log()), 20)
