"""Torture: a slow data-line filter and a big message (issue #13, point 5).

lka feeds message lines to the filter; when the filter does not read, the
lines used to pile up in lka (240 MB of mail left lka at 291 MB). Now lka
answers each batch of lines only once the filter has read it and pony stops
reading the client while a window of lines is unanswered, so lka holds a
bounded amount per session, and nothing is left once the session is gone.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torture_util as tu
from harness import Daemon, wait_for

#: a data-line filter that stops reading for STALL seconds at the first
#: line of every message, then echoes lines back
FILTER = r'''
import sys, time
STALL = float(sys.argv[1])
for line in sys.stdin:
    if line.rstrip("\n") == "config|ready":
        break
sys.stdout.write("register|filter|smtp-in|data-line\nregister|ready\n")
sys.stdout.flush()
stalled = set()
for line in sys.stdin:
    f = line.rstrip("\n").split("|")
    if f[0] != "filter" or f[4] != "data-line":
        continue
    if f[5] not in stalled:
        stalled.add(f[5])
        time.sleep(STALL)
    sys.stdout.write("filter-dataline|%s|%s|%s\n" % (f[5], f[6], "|".join(f[7:])))
    sys.stdout.flush()
'''
STALL = 8.0
SIZE = 30 * 2**20
LINE = b"y" * 78 + b"\r\n"


def lka_pid(d: Daemon) -> int:
    assert d.proc is not None
    pgid = os.getpgid(d.proc.pid)
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and (entry / "comm").read_text().strip() == "mailrider:lka" \
                    and os.getpgid(int(entry.name)) == pgid:
                return int(entry.name)
        except (OSError, ProcessLookupError):
            continue
    raise LookupError("lka not found")


@pytest.fixture(scope="module")
def d() -> Iterator[Daemon]:
    daemon = Daemon(config="")
    script = daemon.state / "slowfilter.py"
    script.write_text(FILTER)
    os.chmod(script, 0o755)
    assert daemon.config_path is not None
    daemon.config_path.write_text(
        f'filter slow proc-exec "{sys.executable} {script} {STALL}"\n'
        f"listen on 127.0.0.1 port {daemon.port} filter slow\n"
        f'table all {{ "@" = "{daemon.user}" }}\n'
        f'action "local" maildir "{daemon.mail}/%{{rcpt.user}}" virtual <all>\n'
        'match from any for local action "local"\n')
    daemon.start()
    yield daemon
    daemon.cleanup()


def _big_sender(port: int, sent: list[int], sock_out: list[socket.socket]) -> None:
    s = socket.create_connection(("127.0.0.1", port), timeout=60)
    sock_out.append(s)
    f = s.makefile("rb")
    try:
        f.readline()
        s.sendall(b"EHLO x\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<big@localhost>\r\nDATA\r\n")
        for _ in range(7):  # EHLO (multi-line) replies then MAIL, RCPT, DATA
            line = f.readline()
            if line.startswith(b"354"):
                break
        chunk = LINE * 800
        while sent[0] < SIZE:
            s.sendall(chunk)
            sent[0] += len(chunk)
    except OSError:
        pass  # the test cuts the connection


def test_slow_filter_big_message_lka_stays_small_and_lets_go(d: Daemon) -> None:
    lka = lka_pid(d)
    base = tu.rss_kib(lka)
    sent = [0]
    socks: list[socket.socket] = []
    t = threading.Thread(target=_big_sender, args=(d.port, sent, socks), daemon=True)
    t.start()
    time.sleep(STALL / 2)  # the filter is stalled on the first line
    during = tu.rss_kib(lka)
    sent_during = sent[0]
    # the client is cut mid-message while the filter still stalls
    socks[0].shutdown(socket.SHUT_RDWR)
    socks[0].close()
    t.join(30)
    wait_for(lambda: "smtp disconnected" in d.log(), 20)
    time.sleep(STALL)  # the filter wakes and reads what it was given
    after = tu.rss_kib(lka)
    print(f"stalled filter: client sent {sent_during / 2**20:.1f} MiB of {SIZE / 2**20:.0f};"
          f" lka RSS {base} -> {during} KiB while stalled, {after} KiB after the session")
    # pony stopped reading: the window plus socket buffers, not the whole message
    assert sent_during < 16 * 2**20
    assert during - base < 32 * 1024
    assert after - base < 32 * 1024
    # what the filter returns for the session gone is dropped quietly
    assert "stray-dataline" not in d.log()
    # the filter and lka still serve the next message
    with socket.create_connection(("127.0.0.1", d.port), timeout=60) as s:
        f = s.makefile("rb")
        f.readline()
        s.sendall(b"EHLO x\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<small@localhost>\r\n"
                  b"DATA\r\n")
        while not f.readline().startswith(b"354"):
            pass
        s.sendall(b"Subject: s\r\n\r\nsmall\r\n.\r\n")
        assert f.readline().startswith(b"250 2.0.0")
