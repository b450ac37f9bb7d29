"""mailriderctl against a running daemon with queued mail (smtpctl parity)."""

from __future__ import annotations

import json
import os
import re
import shutil
import smtplib
import socket
import subprocess
import sys
import time

import pytest
from harness import Daemon, wait_for


@pytest.fixture(scope="module")
def d() -> Daemon:
    daemon = Daemon().start()
    daemon.ctl("pause", "mda")
    with smtplib.SMTP("127.0.0.1", daemon.port, timeout=10) as c:
        for i in range(3):
            c.sendmail("sender@example.org", [f"q{i}@localhost"],
                       f"Subject: queued {i}\r\n\r\nbody {i}\r\n".encode())
    yield daemon
    daemon.cleanup()


def queue_lines(d: Daemon) -> list[list[str]]:
    return [line.split("|") for line in d.ctl("show", "queue").stdout.splitlines()]


def test_show_queue_has_the_14_fields(d: Daemon) -> None:
    rows = queue_lines(d)
    assert len(rows) == 3
    for row in rows:
        assert len(row) == 14
        evpid, family, typ, _flags, sender, rcpt, _dest, ctime, expire = row[:9]
        assert re.fullmatch(r"[0-9a-f]{16}", evpid)
        assert (family, typ, sender) == ("inet4", "mda", "sender@example.org")
        assert re.fullmatch(r"q\d@localhost", rcpt)
        assert int(expire) - int(ctime) == 4 * 86400
        assert row[11] in ("pending", "inflight")


def test_show_envelope_and_message(d: Daemon) -> None:
    evpid = queue_lines(d)[0][0]
    env = d.ctl("show", "envelope", evpid).stdout
    assert f"evpid: {evpid}\n" in env and "sender: sender@example.org\n" in env
    # smtpctl's fields first, in its order
    keys = [line.split(": ", 1)[0] for line in env.splitlines()]
    smtpctl = ["version", "dispatcher", "type", "smtpname", "helo", "hostname", "sockaddr",
               "sender", "rcpt", "dest", "ctime", "last-try", "ttl", "retry"]
    assert [k for k in keys if k in smtpctl] == smtpctl, keys
    assert keys.index("retry") < keys.index("evpid")
    msg = d.ctl("show", "message", evpid[:8]).stdout
    assert msg.startswith("Received: ")
    assert re.search(r"\nSubject: queued \d\n\nbody \d\n$", msg)


def test_abbreviations_and_json(d: Daemon) -> None:
    assert d.ctl("sh", "qu").stdout == d.ctl("show", "queue").stdout
    res = d.ctl("-j", "show", "status")
    data = json.loads(res.stdout)
    assert data["ok"] is True and data["lines"][0] == "MDA paused"


def test_pause_resume_envelope_and_schedule(d: Daemon) -> None:
    evpid = queue_lines(d)[0][0]
    assert d.ctl("pause", "envelope", evpid).stdout.strip() == "1 envelope paused"
    # smtpctl: a paused envelope says "suspend" in its flags and stays pending|N
    row = next(r for r in queue_lines(d) if r[0] == evpid)
    assert row[3] == "suspend" and row[11] == "pending" and row[12].isdigit(), row
    assert all(r[3] == "" for r in queue_lines(d) if r[0] != evpid)
    assert d.ctl("resume", "envelope", evpid).stdout.strip() == "1 envelope resumed"
    assert d.ctl("schedule", "all").stdout.strip() == "3 envelopes scheduled"


def test_stats_status_trace_profile_log(d: Daemon) -> None:
    lines = d.ctl("show", "stats").stdout.splitlines()
    assert lines[0].startswith("uptime=") and lines[1].startswith("uptime.human=")
    stats = dict(line.split("=", 1) for line in lines)
    assert re.fullmatch(r"(\d+d)?(\d+h)?(\d+m)?(\d+s)?", stats["uptime.human"])
    assert int(stats["smtp.session"]) >= 1
    assert int(stats["smtp.session.inet4"]) >= 1  # smtpctl's key
    assert int(stats["queue.envelope.enqueued"]) >= 3
    assert int(stats["scheduler.envelope"]) >= 3
    assert d.ctl("pause", "smtp").stdout.strip() == "command succeeded"
    assert d.ctl("show", "status").stdout.splitlines() == ["MDA paused", "MTA running",
                                                          "SMTP paused"]
    d.ctl("resume", "smtp")
    assert d.ctl("trace", "smtp").stdout.strip() == "command succeeded"
    assert d.ctl("untrace", "smtp").stdout.strip() == "command succeeded"
    assert d.ctl("trace", "bogus", check=False).returncode == 1
    assert d.ctl("log", "verbose").stdout.strip() == "command succeeded"
    d.ctl("log", "brief")
    d.ctl("profile", "imsg")
    d.ctl("show", "queue")
    with smtplib.SMTP("127.0.0.1", d.port, timeout=10) as c:  # a refused RCPT: nothing queued
        c.ehlo()
        c.mail("sender@example.org")
        assert c.rcpt("someone@elsewhere.example")[0] >= 500
    stats = d.ctl("show", "stats").stdout
    assert re.search(r"^profile\.imsg\.Control\.usec\.\w+=\d+$", stats, re.M)
    # the requests a process made, timed by the caller: pony asked lka
    assert re.search(r"^profile\.rtt\.RcptCheck>lka\.usec\.pony=\d+$", stats, re.M)
    d.ctl("unprofile", "imsg")
    assert d.ctl("profile", "all").stdout == "command succeeded\n"
    assert d.ctl("unprofile", "all").stdout == "command succeeded\n"


def test_monitor_prints_header_and_rows(d: Daemon) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "mailrider.cli.mailriderctl", "-S",
                             str(d.state), "monitor"], stdout=subprocess.PIPE, text=True,
                            env=d.env)
    time.sleep(2.5)
    proc.terminate()
    out, _ = proc.communicate(timeout=10)
    lines = out.splitlines()
    assert "curr conn disc" in lines[1]
    assert len(lines) >= 4
    assert all(re.fullmatch(r"(\s+-?\d+)+", row) for row in lines[2:])


def test_discover_envelope_copied_by_hand(d: Daemon) -> None:
    evpid = queue_lines(d)[0][0]
    mdir = d.state / "spool" / "queue" / evpid[:2] / evpid[:8]
    new = evpid[:8] + "0badc0de"
    text = (mdir / evpid).read_text().replace(evpid, new)
    (mdir / new).write_text(text)
    st = os.stat(mdir / evpid)
    os.chown(mdir / new, st.st_uid, st.st_gid)
    assert d.ctl("discover", evpid[:8]).stdout.strip() == "1 envelope discovered"
    assert any(r[0] == new for r in queue_lines(d))


def _raw(d: Daemon, words: list[str]) -> dict[str, object]:
    """One request on the control socket itself, past mailriderctl's own checks."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(30)
        s.connect(str(d.state / "control.sock"))
        s.sendall(json.dumps({"cmd": words}).encode() + b"\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    reply = json.loads(data)
    assert isinstance(reply, dict)
    return reply


def test_paths_as_ids_are_refused(d: Daemon) -> None:
    victim = d.state / "victim"
    victim.write_text("precious\n")
    before = d.ctl("show", "queue").stdout
    for ident in ["../../etc/passwd", str(victim), "../victim", "../../../victim", "..", "all/..",
                  queue_lines(d)[0][0] + "/../../../../victim"]:
        for words in (["remove", ident], ["schedule", ident], ["show", "envelope", ident],
                      ["show", "message", ident], ["discover", ident],
                      ["pause", "envelope", ident], ["resume", "envelope", ident]):
            reply = _raw(d, words)
            assert reply["ok"] is False and reply["lines"] == ["command failed: invalid id"], \
                (words, reply)
            res = d.ctl(*words, check=False)
            # smtpctl's answer to an argument that is no id: the choices, 255
            assert res.returncode == 255 and not res.stdout
            assert res.stderr.startswith("possibilities are:\n"), res.stderr
    assert victim.read_text() == "precious\n"
    assert d.ctl("show", "queue").stdout == before
    assert "invalid-id" in d.log()


def test_remove_and_resume_delivers_the_rest(d: Daemon) -> None:
    rows = queue_lines(d)
    victim = rows[0][0]
    assert d.ctl("remove", victim).stdout.strip() == "1 envelope removed"
    assert victim not in d.ctl("show", "queue").stdout
    d.ctl("resume", "mda")
    wait_for(lambda: d.ctl("show", "queue").stdout == "", timeout=30)
    names = {p.name for p in (d.state / "maildir").iterdir()}
    assert len(names) >= 2


def test_not_running() -> None:
    d = Daemon()
    try:
        res = d.ctl("show", "status", check=False)
        assert res.returncode == 1
        assert "doesn't seem to be running" in res.stderr
        assert d.ctl("show", "queue").stdout == ""  # read from the spool directly
    finally:
        shutil.rmtree(d.state, ignore_errors=True)


def test_P_starts_the_daemon_with_subsystems_paused() -> None:
    # mailriderd -P (OpenSMTPD's smtpd -P): paused from the start, until resumed
    config = ('listen on 127.0.0.1 port {port}\ntable everyone {{ "@" = "{user}" }}\n'
              'action "l" maildir "{mail}/box" virtual <everyone>\n'
              'match from any for any action "l"\n')
    with Daemon(config, extra_args=["-P", "mda", "-P", "smtp"]) as daemon:
        assert daemon.ctl("show", "status").stdout.splitlines() == [
            "MDA paused", "MTA running", "SMTP paused"]
        with socket.create_connection(("127.0.0.1", daemon.port), timeout=10) as s:
            assert s.recv(100).startswith(b"421 4.3.2")
        daemon.ctl("resume", "smtp")
        with smtplib.SMTP("127.0.0.1", daemon.port, timeout=10) as c:
            c.sendmail("sender@example.org", ["held@localhost"], b"Subject: held\r\n\r\nx\r\n")
        time.sleep(0.5)  # a running mda would have taken it by now; held, it stays
        assert len(queue_lines(daemon)) == 1
        daemon.ctl("resume", "mda")
        wait_for(lambda: daemon.ctl("show", "queue").stdout.strip() == "")
        assert len(daemon.maildir("box")) == 1
