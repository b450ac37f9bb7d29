"""End to end: ``mta limit`` and ``scheduler limit`` hold against a real
daemon relaying to sinks that count the connections open at once
(docs/config.md §15, docs/queue.md §9).

Each sink holds every transaction open a while before its 250, so
deliveries overlap: without a limit several connections are open at once
(the control domain shows it), with one the sink never sees more.
"""

from __future__ import annotations

import re

from e2e_util import smtp_send
from harness import Daemon, wait_for
from smtp_peer import Behaviour, SmtpPeer

CONFIG = """\
SCHEDULER
mta limit for domain limited.test max-conn-per-domain 2 session-mail-max 1
listen on 127.0.0.1 port {port}
action "lim" relay host smtp://127.0.0.1:LIMPORT
action "free" relay host smtp://127.0.0.1:FREEPORT
match from any for domain "limited.test" action "lim"
match from any for domain "free.test" action "free"
"""

N = 6


def body(i: int) -> bytes:
    return f"From: <a@example.org>\r\nSubject: limit {i}\r\n\r\nmessage {i}\r\n".encode()


def run(scheduler: str, domains: list[str]) -> dict[str, SmtpPeer]:
    peers = {d: SmtpPeer(Behaviour(data_delay=1.0)) for d in ("limited.test", "free.test")}
    config = (CONFIG.replace("SCHEDULER", scheduler)
              .replace("LIMPORT", str(peers["limited.test"].port))
              .replace("FREEPORT", str(peers["free.test"].port)))
    d = Daemon(config)
    try:
        d.start()
        for dom in domains:
            for i in range(N):
                t = smtp_send(d.port, "a@example.org", [f"r{i}@{dom}"], body(i))
                assert t.data is not None and t.data[0] == 250
        for dom in domains:
            wait_for(lambda dom=dom: len(peers[dom].received) == N, 60)  # type: ignore[misc]
        wait_for(lambda: len(re.findall(r"delivery result .*result=Ok", d.log()))
                 == N * len(domains), 30)
    finally:
        d.cleanup()
        for p in peers.values():
            p.close()
    return peers


def test_mta_limit_max_conn_per_domain_holds() -> None:
    peers = run("", ["limited.test", "free.test"])
    assert 1 <= peers["limited.test"].open_peak <= 2, peers["limited.test"].open_peak
    # session-mail-max 1: a connection carries one message, then quits
    assert peers["limited.test"].connections == N
    # the control: the same load on a domain without a limit overlaps more
    assert peers["free.test"].open_peak > 2, peers["free.test"].open_peak


def test_scheduler_limit_max_inflight_holds() -> None:
    peers = run("scheduler limit max-inflight 1 max-schedule 1", ["free.test"])
    assert peers["free.test"].open_peak == 1
