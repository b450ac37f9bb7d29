"""``mda wrapper NAME "command"`` and the action option ``wrapper NAME`` end to end.

The wrapper is a script that logs its arguments and then runs the second,
the ``%{mda}`` it was given (quoted in the wrapper's command, which the
shell runs): the mda command's output lands where it should
and the log shows the wrapper ran, as the delivery user, around it. A second
action without the option runs its command unwrapped. The wrapper's command
comes from the parent's configuration by the action's name
(docs/config.md §11).
"""

from __future__ import annotations

import os

from e2e_util import smtp_send, wait_file
from harness import Daemon, delivery_user

CONFIG = """\
mda wrapper "logged" "{state}/wrap.sh %{{rcpt.user}} '%{{mda}}'"
listen on 127.0.0.1 port {port}
table all {{ "@" = "{user}" }}
action "wrapped" mda "cat > {mail}/out-%{{rcpt.user}}" virtual <all> wrapper "logged"
action "plain" mda "cat > {mail}/plain-%{{rcpt.user}}" virtual <all>
match from local for domain "w.test" action "wrapped"
match from local for domain "p.test" action "plain"
"""

WRAPPER = """\
#!/bin/sh
# log who and what, then run the mda command given after the first argument
echo "wrapped rcpt=$1 uid=$(id -u) mda=$2" >> "{mail}/wrap.log"
exec /bin/sh -c "$2"
"""


def test_wrapper_runs_around_the_mda_command() -> None:
    d = Daemon(CONFIG)
    script = d.state / "wrap.sh"
    script.write_text(WRAPPER.format(mail=d.mail))
    os.chmod(script, 0o755)
    with d:
        t = smtp_send(d.port, "a@example.org", ["joe@w.test"])
        assert t.data is not None and t.data[0] == 250, t
        out = wait_file(d.mail / "out-joe", timeout=30)
        assert b"Subject: e2e" in out
        log = (d.mail / "wrap.log").read_text()
        uid = delivery_user().pw_uid
        assert f"wrapped rcpt=joe uid={uid} mda=cat > {d.mail}/out-joe" in log

        t = smtp_send(d.port, "a@example.org", ["ann@p.test"])
        assert t.data is not None and t.data[0] == 250, t
        assert b"Subject: e2e" in wait_file(d.mail / "plain-ann", timeout=30)
        assert "rcpt=ann" not in (d.mail / "wrap.log").read_text()
