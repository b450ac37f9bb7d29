"""The Sender Rewriting Scheme end to end (docs/config.md §9).

A daemon forwards bob@fwd.test to an outside address through a
``relay ... srs`` action whose host is a local sink recording MAIL FROM:
the sender alice@home.test leaves as an SRS0 address of fwd.test. A bounce
(null sender) to that address is then reverse-rewritten by lka and reaches
alice's mailbox; a tampered one is refused as an unknown recipient. Mail
that is relayed without being forwarded keeps its sender. The key never
shows in the log nor in ``-n``'s output.
"""

from __future__ import annotations

import re
import subprocess
import sys

from e2e_util import smtp_send, wait_files
from harness import Daemon, wait_for
from smtp_peer import SmtpPeer

KEY = "e2e-srs-secret-4711"

CONFIG = """\
srs key "KEY"
srs key backup "old-KEY"
listen on 127.0.0.1 port {port}
table virt {{ "bob@fwd.test" = "carol@outside.test", "@home.test" = "{user}" }}
action "local" maildir "{mail}/md/%{{dest.user}}" virtual <virt>
action "out" relay host smtp://127.0.0.1:PEERPORT srs
match from any for domain "home.test" action "local"
match from any for domain "fwd.test" action "local"
match from any for any action "out"
"""

BOUNCE = (b"From: MAILER-DAEMON@outside.test\r\nTo: whoever\r\nSubject: Undelivered\r\n\r\n"
          b"this is a bounce\r\n")


def test_forward_is_rewritten_and_its_bounce_comes_back() -> None:
    with SmtpPeer() as peer:
        config = CONFIG.replace("PEERPORT", str(peer.port)).replace("KEY", KEY)
        with Daemon(config) as d:
            t = smtp_send(d.port, "alice@home.test", ["bob@fwd.test"])
            assert t.data is not None and t.data[0] == 250, t
            wait_for(lambda: peer.received, timeout=30)
            got = peer.received[0]
            m = re.fullmatch(r"MAIL FROM:<(SRS0=[A-Za-z0-9_-]{4}=[A-Z2-7]{2}="
                             r"home\.test=alice@fwd\.test)>.*", got.mail)
            assert m is not None, got.mail
            srs_address = m.group(1)
            assert got.rcpts and "carol@outside.test" in got.rcpts[0]

            # not forwarded (sent straight to an outside address): kept as is
            t = smtp_send(d.port, "alice@home.test", ["dave@outside.test"])
            assert t.data is not None and t.data[0] == 250, t
            wait_for(lambda: len(peer.received) >= 2, timeout=30)
            assert peer.received[1].mail.startswith("MAIL FROM:<alice@home.test>")

            # the bounce: reverse-rewritten to alice@home.test, then delivered
            t = smtp_send(d.port, "", [srs_address], body=BOUNCE)
            assert t.rcpts[0][0] == 250, t
            assert t.data is not None and t.data[0] == 250, t
            mails = wait_files(d.mail / "md" / "alice" / "new", 1, timeout=30)
            assert b"this is a bounce" in mails[0]

            # a tampered hash, or mail that is not a bounce: not rewritten,
            # so refused as any unknown recipient of fwd.test
            forged = srs_address.replace("=home.test=alice@", "=home.test=mallory@")
            t = smtp_send(d.port, "", [forged], body=BOUNCE)
            assert t.rcpts[0][0] == 550 and "5.1.1" in t.rcpts[0][1], t
            t = smtp_send(d.port, "someone@outside.test", [srs_address])
            assert t.rcpts[0][0] == 550 and "5.1.1" in t.rcpts[0][1], t
            assert "srs-invalid" in d.log()

            assert KEY not in d.log()
            assert d.config_path is not None
            check = subprocess.run([sys.executable, "-m", "mailrider.cli.mailriderd", "-n",
                                    "-v", "-f", str(d.config_path)],
                                   capture_output=True, text=True, timeout=60)
            assert check.returncode == 0, check.stdout + check.stderr
            assert KEY not in check.stdout + check.stderr
