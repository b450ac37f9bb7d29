"""``mda limit max-session N`` and ``max-session-per-user N`` end to end (docs/config.md §12).

The mda command is a script that counts, under flock(1), how many copies of
itself run at once and records every count it sees, then sleeps a little so
that deliveries overlap when nothing stops them (the default limits, 50 and
7, let them). Six deliveries, all for the one delivery user: with either
limit at 1, every one is delivered and none ever ran beside another.
"""

from __future__ import annotations

import os

import pytest
from e2e_util import smtp_send
from harness import Daemon, wait_for

CONFIG = """\
mda limit LIMIT
listen on 127.0.0.1 port {port}
table users {{ "u1@l.test" = "{user}", "u2@l.test" = "{user}" }}
action "count" mda "{state}/count.sh %{{rcpt.user}}" virtual <users>
match from local for domain "l.test" action "count"
"""

SCRIPT = """\
#!/bin/sh
m="{mail}"
count() {{ ( flock 9; n=$(cat "$m/running" 2>/dev/null || echo 0); n=$((n $1 1));
            echo $n > "$m/running"; [ "$1" = + ] && echo $n >> "$m/seen" ) 9>"$m/lock"; }}
count +
sleep 0.3
cat > "$m/out-$1-$$"
count -
"""


@pytest.mark.parametrize("limit", ["max-session 1", "max-session 5 max-session-per-user 1"])
def test_mda_sessions_stay_under_the_limit(limit: str) -> None:
    d = Daemon(CONFIG.replace("LIMIT", limit))
    script = d.state / "count.sh"
    script.write_text(SCRIPT.format(mail=d.mail))
    os.chmod(script, 0o755)
    with d:
        for _ in range(3):
            t = smtp_send(d.port, "a@example.org", ["u1@l.test", "u2@l.test"])
            assert t.data is not None and t.data[0] == 250, t
        wait_for(lambda: len(list(d.mail.glob("out-*"))) == 6, timeout=60)
        seen = [int(x) for x in (d.mail / "seen").read_text().split()]
        assert len(seen) == 6
        assert max(seen) == 1, seen
