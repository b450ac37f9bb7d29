"""Torture: recipients that expand to many deliveries (issue #13, point 5).

1000 RCPTs naming a 1000-member list used to leave pony holding a million
delivery records before DATA; now the deliveries of a transaction are
de-duplicated and bounded (smtp limit max-deliveries), past which a RCPT
gets 452 4.5.3.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import pytest
import torture_util as tu
from e2e_util import wait_files
from harness import Daemon

MEMBERS = 1000
LIMIT = 2500
CONFIG = """listen on 127.0.0.1 port {port}
smtp limit max-rcpt 1000 max-deliveries LIMIT
table v file:{state}/virtual
action "local" maildir "{mail}/%{{dest.user}}" virtual <v>
match from any for local action "local"
""".replace("LIMIT", str(LIMIT))


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    d = Daemon(CONFIG)
    lines = [f"list{n}@localhost " + ", ".join(f"m{n}-{i}@localhost" for i in range(MEMBERS))
             for n in range(4)]
    lines.append("small@localhost s0@localhost, s1@localhost, s2@localhost")
    lines.append(f"@ {d.user}")
    (d.state / "virtual").write_text("\n".join(lines) + "\n")
    d.start()
    yield d
    d.cleanup()


def _session(d: Daemon, rcpts: list[str], data: bool = False, timeout: float = 120) -> bytes:
    cmds = b"EHLO x\r\nMAIL FROM:<a@example.org>\r\n"
    cmds += b"".join(b"RCPT TO:<%s>\r\n" % r.encode() for r in rcpts)
    if data:
        cmds += b"DATA\r\nSubject: t\r\n\r\nhello\r\n.\r\n"
    return tu.raw_session(d.port, [cmds + b"QUIT\r\n"], timeout=timeout)


def _lka_rcpts(d: Daemon) -> int:
    m = re.search(r"^lka.rcpt=(\d+)$", d.ctl("show", "stats").stdout, re.M)
    return int(m.group(1)) if m else 0


def test_same_list_1000_times_is_expanded_and_held_once(daemon: Daemon) -> None:
    asked = _lka_rcpts(daemon)
    start = time.monotonic()
    out = _session(daemon, ["list0@localhost"] * 1000)
    print(f"1000 RCPTs of one {MEMBERS}-member list: {time.monotonic() - start:.1f}s")
    assert out.count(b"250 2.1.5") == 1000, out[-300:]
    assert _lka_rcpts(daemon) - asked == 1


def test_list_under_100_names_held_once_pony_stays_small(daemon: Daemon) -> None:
    """list0+1 ... list0+100 all expand to list0's members: pony keeps the
    first thousand deliveries only (before: a record per expansion, about
    1.3 KB each), and once the transaction brought lka ten times the limit
    in expansions (25 lists here) the next RCPTs are refused unexpanded."""
    pid = tu.pony_pid(daemon)
    asked = _lka_rcpts(daemon)
    before = tu.rss_kib(pid)
    start = time.monotonic()
    out = _session(daemon, [f"list0+{i}@localhost" for i in range(100)])
    took = time.monotonic() - start
    after = tu.rss_kib(pid)
    print(f"100 RCPTs x {MEMBERS} members: {took:.1f}s, pony RSS {before} -> {after} KiB")
    budget = 10 * LIMIT // MEMBERS
    assert out.count(b"250 2.1.5") == budget, out[-300:]
    assert out.count(b"452 4.5.3 Too many recipients") == 100 - budget
    assert _lka_rcpts(daemon) - asked == budget
    assert after - before < 10 * 1024


def test_deliveries_past_the_limit_get_452(daemon: Daemon) -> None:
    out = _session(daemon, [f"list{n}@localhost" for n in range(4)] + ["small@localhost"])
    after_mail = out.split(b"250 2.1.0", 1)[1]
    rcpt_codes = [c.decode() for c in re.findall(rb"^(\d{3} \d\.\d\.\d+)", after_mail, re.M)]
    rcpt_codes = rcpt_codes[:5]
    # 1000 + 1000 fit in 2500, the third list does not (refused whole), the
    # small list still fits, the fourth list neither
    assert rcpt_codes == ["250 2.1.5", "250 2.1.5", "452 4.5.3", "452 4.5.3", "250 2.1.5"], out
    assert b"452 4.5.3 Too many recipients" in out
    assert re.search(r'smtp failed-command command="RCPT TO:<list\d@localhost>" '
                     r'result="452 4\.5\.3 Too many recipients" deliveries=\d+', daemon.log())


def test_duplicates_across_recipients_delivered_once(daemon: Daemon) -> None:
    out = _session(daemon, ["small@localhost", "s1@localhost", "small@localhost"], data=True)
    assert b"250 2.0.0" in out, out
    for name in ("s0", "s1", "s2"):
        wait_files(daemon.mail / name / "new", 1)
    time.sleep(1)  # a duplicate would land just after
    assert all(len(list((daemon.mail / n / "new").iterdir())) == 1 for n in ("s0", "s1", "s2"))
