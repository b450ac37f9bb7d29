"""The Sender Rewriting Scheme end to end (docs/config.md §9).

A daemon forwards bob@fwd.test to carol@outside.test through a
``relay ... srs`` action whose host is a local sink recording MAIL FROM.
Relaying is allowed only from "our network" (``from src { local,
127.0.0.1 }``), as in a real configuration; clients from 127.0.0.2 play the
internet.

- alice@home.test (a local mailbox) writes to bob: the mail leaves as
  ``SRS0=HHHH=TT=home.test=alice@fwd.test``; the bounce to that address
  (null sender) is reverse-rewritten by lka and reaches alice's mailbox.
- xavier@external.test writes to bob from the internet: the forward is
  relayed (an expansion's target is ours, as OpenSMTPD's EF_INTERNAL), and
  the bounce, from the internet too, is relayed back to xavier.
- mail relayed without being forwarded keeps its sender; a tampered SRS
  address, or one in mail that is not a bounce, is refused as any unknown
  recipient (550 5.1.1).
- The key never shows in the log nor in ``-n``'s output.
"""

from __future__ import annotations

import re
import subprocess
import sys

from e2e_util import smtp_send, wait_files
from harness import Daemon, wait_for
from smtp_peer import SmtpPeer

KEY = "e2e-srs-secret-4711"
INTERNET = "127.0.0.2"

CONFIG = """\
srs key "KEY"
srs key backup "old-KEY"
listen on 127.0.0.1 port {port}
table virt {{ "bob@fwd.test" = "carol@outside.test", "@home.test" = "{user}" }}
table mynet {{ "local", "127.0.0.1" }}
action "local" maildir "{mail}/md/%{{dest.user}}" virtual <virt>
action "out" relay host smtp://127.0.0.1:PEERPORT srs
match from any for domain "home.test" action "local"
match from any for domain "fwd.test" action "local"
match from src <mynet> for any action "out"
"""

BOUNCE = (b"From: MAILER-DAEMON@outside.test\r\nTo: whoever\r\nSubject: Undelivered\r\n\r\n"
          b"this is a bounce\r\n")
_SRS0 = r"SRS0=[A-Za-z0-9_-]{4}=[A-Z2-7]{2}="


def _srs_sender(mail_line: str, domain: str, user: str) -> str:
    m = re.fullmatch(rf"MAIL FROM:<({_SRS0}{re.escape(domain)}={user}@fwd\.test)>.*",
                     mail_line)
    assert m is not None, mail_line
    return m.group(1)


def test_forward_is_rewritten_and_its_bounce_comes_back() -> None:
    with SmtpPeer() as peer:
        config = CONFIG.replace("PEERPORT", str(peer.port)).replace("KEY", KEY)
        with Daemon(config) as d:
            t = smtp_send(d.port, "alice@home.test", ["bob@fwd.test"])
            assert t.data is not None and t.data[0] == 250, t
            wait_for(lambda: peer.received, timeout=30)
            got = peer.received[0]
            srs_alice = _srs_sender(got.mail, "home.test", "alice")
            assert got.rcpts and "carol@outside.test" in got.rcpts[0]

            # not forwarded (sent straight to an outside address): kept as is
            t = smtp_send(d.port, "alice@home.test", ["dave@outside.test"])
            assert t.data is not None and t.data[0] == 250, t
            wait_for(lambda: len(peer.received) >= 2, timeout=30)
            assert peer.received[1].mail.startswith("MAIL FROM:<alice@home.test>")

            # the bounce: reverse-rewritten to alice@home.test, then delivered
            t = smtp_send(d.port, "", [srs_alice], body=BOUNCE, source=INTERNET)
            assert t.rcpts[0][0] == 250, t
            assert t.data is not None and t.data[0] == 250, t
            mails = wait_files(d.mail / "md" / "alice" / "new", 1, timeout=30)
            assert b"this is a bounce" in mails[0]

            # from the internet: forwarded, and the bounce relayed back
            t = smtp_send(d.port, "xavier@external.test", ["bob@fwd.test"], source=INTERNET)
            assert t.data is not None and t.data[0] == 250, t
            wait_for(lambda: len(peer.received) >= 3, timeout=30)
            srs_xavier = _srs_sender(peer.received[2].mail, "external.test", "xavier")
            # the internet may not relay through us otherwise
            t = smtp_send(d.port, "xavier@external.test", ["y@outside.test"], source=INTERNET)
            assert t.rcpts[0][0] == 550, t
            t = smtp_send(d.port, "", [srs_xavier], body=BOUNCE, source=INTERNET)
            assert t.data is not None and t.data[0] == 250, t
            wait_for(lambda: len(peer.received) >= 4, timeout=30)
            back = peer.received[3]
            assert back.mail.startswith("MAIL FROM:<>"), back.mail
            assert "xavier@external.test" in back.rcpts[0]

            # a tampered hash, or mail that is not a bounce: not rewritten,
            # so refused as any unknown recipient of fwd.test
            forged = srs_alice.replace("=home.test=alice@", "=home.test=mallory@")
            t = smtp_send(d.port, "", [forged], body=BOUNCE)
            assert t.rcpts[0][0] == 550 and "5.1.1" in t.rcpts[0][1], t
            t = smtp_send(d.port, "someone@outside.test", [srs_alice])
            assert t.rcpts[0][0] == 550 and "5.1.1" in t.rcpts[0][1], t
            assert "srs-invalid" in d.log()

            assert KEY not in d.log()
            assert d.config_path is not None
            check = subprocess.run([sys.executable, "-m", "mailrider.cli.mailriderd", "-n",
                                    "-v", "-f", str(d.config_path)],
                                   capture_output=True, text=True, timeout=60)
            assert check.returncode == 0, check.stdout + check.stderr
            assert KEY not in check.stdout + check.stderr
