"""mailriderctl's command line against smtpctl's grammar and messages.

The expected outputs are smtpctl's (OpenSMTPD 7.8, usr.sbin/smtpd/parser.c
and smtpctl.c): on a command outside the grammar, "possibilities are:"
followed by the choices at the word that failed (or "invalid command" past
a complete command) on stderr, and exit status 255.
"""

from __future__ import annotations

import pytest
from mailrider.cli import mailriderctl as ctl
from mailrider.log import duration_text
from mailrider.proc import control
from mailrider.proc.pony_mta_show import MtaShow, relay_text

EVPID = "0123456789abcdef"


@pytest.mark.parametrize(("words", "expected"), [
    (["sh", "q"], ["show", "queue"]),
    (["show", "envelope", EVPID.upper()], ["show", "envelope", EVPID]),
    (["sch", "all"], ["schedule", "all"]),
    (["sched", EVPID[:8]], ["schedule", EVPID[:8]]),
    (["pa", "env", EVPID], ["pause", "envelope", EVPID]),
    (["res", "ro", "12"], ["resume", "route", "12"]),
    (["res", "ro"], ["resume", "route"]),
    (["sh", "hosts"], ["show", "hosts"]),
    (["sh", "hoststats"], ["show", "hoststats"]),
    (["spf", "w"], ["spf", "walk"]),
    (["prof", "all"], ["profile", "all"]),
    (["makemap", "-t", "aliases", "x"], ["makemap", "-t", "aliases", "x"]),
    (["sendmail", "-t"], ["sendmail", "-t"]),
    (["newaliases"], ["newaliases"]),  # <args> may be empty
    (["sendmail"], ["sendmail"]),
    (["encrypt"], ["encrypt"]),
    (["up", "t", "aliases"], ["update", "table", "aliases"]),
])
def test_commands_parse(words: list[str], expected: list[str]) -> None:
    assert ctl.parse_command(words) == expected


def _fails(capsys: pytest.CaptureFixture[str], *words: str) -> str:
    assert ctl.main(["-S", "/nonexistent", *words]) == 255
    out, err = capsys.readouterr()
    assert out == ""
    return err


def test_bad_envelope_id(capsys: pytest.CaptureFixture[str]) -> None:
    assert _fails(capsys, "show", "envelope", "../../etc/passwd") == \
        "possibilities are:\nshow envelope <evpid>\n"
    assert _fails(capsys, "show", "envelope", "0" * 16) == \
        "possibilities are:\nshow envelope <evpid>\n"  # smtpctl: id 0 is no id


def test_bad_schedule_id_lists_the_choices(capsys: pytest.CaptureFixture[str]) -> None:
    assert _fails(capsys, "schedule", "xyz") == \
        "possibilities are:\nschedule <msgid>\nschedule <evpid>\nschedule all\n"


def test_unknown_command(capsys: pytest.CaptureFixture[str]) -> None:
    err = _fails(capsys, "frobnicate")
    lines = err.splitlines()
    assert lines[0] == "possibilities are:"
    assert {"discover", "show", "pause", "resume", "spf", "monitor"} <= set(lines[1:])


def test_incomplete_and_overlong(capsys: pytest.CaptureFixture[str]) -> None:
    assert _fails(capsys, "pause") == \
        "possibilities are:\npause envelope\npause mda\npause mta\npause smtp\n"
    assert _fails(capsys, "show", "status", "now") == "invalid command\n"


def test_ambiguous_abbreviation_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    err = _fails(capsys, "s")
    assert err == ("ambiguous abbreviation: s\npossibilities are:\n"
                   "schedule\nshow\nspf\nsendmail\n")
    assert _fails(capsys, "show", "host") == ("ambiguous abbreviation: host\n"
                                              "possibilities are:\nshow hoststats\n"
                                              "show hosts\n")


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert ctl.main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ctl.COMMANDS:
        assert command.replace("<args>", "[argument ...]") in out


def test_bad_trace_and_profile_keywords(capsys: pytest.CaptureFixture[str]) -> None:
    assert ctl.main(["-S", "/nonexistent", "trace", "bogus"]) == 1
    assert "invalid trace keyword: bogus" in capsys.readouterr().err
    assert ctl.main(["-S", "/nonexistent", "profile", "bogus"]) == 1
    assert "invalid profile keyword: bogus" in capsys.readouterr().err


def test_duration_text_is_smtpctls() -> None:
    assert [duration_text(t) for t in (0, 5, 60, 3661, 86400 + 7, -90)] == \
        ["0s", "5s", "1m", "1h1m1s", "1d7s", "-1m30s"]


def test_show_envelope_in_smtpctl_order() -> None:
    lines = ["version: 1", f"evpid: {EVPID}", "type: mda", "dispatcher: local",
             "smtpname: mx.test", "helo: client", "hostname: client.test",
             "sockaddr: 127.0.0.1", "sender: a@b", "rcpt: c@d", "dest: c@d", "ctime: 1",
             "last-try: 0", "retry: 0", "ttl: 345600", "flags: authenticated",
             "errorline: 421 x", "mda-method: maildir"]
    keys = [line.split(":")[0] for line in control.format_envelope(lines)]
    assert keys == ["version", "dispatcher", "type", "smtpname", "helo", "hostname",
                    "errorline", "sockaddr", "sender", "rcpt", "dest", "ctime", "last-try",
                    "ttl", "retry", "flags", "evpid", "mda-method"]


def test_queue_line_flags_in_smtpctl_words() -> None:
    from mailrider.queue.envelope import Delivery, Envelope

    env = Envelope(evpid=EVPID, delivery=Delivery(dispatcher="out", rcpt="c@d", dest="c@d",
                                                  method="relay"),
                   type="mta", sockaddr="192.0.2.1", sender="a@b", ctime=100, ttl=50,
                   flags=("authenticated", "bounce"))
    fields = control.format_queue_line(env, "pending", "30", ("suspend",)).split("|")
    assert fields[:4] == [EVPID, "inet4", "mta", "bounce,auth,suspend"]
    assert fields[7:9] == ["100", "150"] and fields[11:13] == ["pending", "30"]


def test_monitor_rows_align_under_the_header() -> None:
    header = control.MONITOR_HEADER[1]
    row = control.monitor_row([1, 22, 333, 4444, 5, 6, 7, 8, 9, 10, 11, 12, 13])
    assert len(row) == len(header)
    # every number ends where its column's name ends
    ends = [i for i in range(len(header)) if header[i] != " " and
            (i + 1 == len(header) or header[i + 1] == " ")]
    assert [i for i in range(len(row)) if row[i] != " " and
            (i + 1 == len(row) or row[i + 1] == " ")] == ends


def test_mta_show_lines() -> None:
    show = MtaShow()
    relay = relay_text("example.org", None, "smtp")
    assert relay == "[relay:example.org,smtp]"
    used = show.connected(relay, None, "192.0.2.7", "mx.example.org")
    show.failed(None, "192.0.2.8", "mx2.example.org", "421 4.4.1 refused")
    show.result("example.org", "421 4.4.1 refused")
    hosts = show.lines("hosts")
    assert hosts[0].startswith("192.0.2.7 mx.example.org refcount=1 nconn=1 lastconn=")
    assert show.lines("relays")[0].startswith(
        "[relay:example.org,smtp] refcount=1 ntask=0 nconn=1 lastconn=")
    routes = show.lines("routes")
    assert routes[0] == ("1. [] <-> 192.0.2.7 (mx.example.org) ---- nconn=1 nerror=0 "
                         "penalty=0 timeout=-")
    assert routes[1] == ("2. [] <-> 192.0.2.8 (mx2.example.org) ---- nconn=0 nerror=1 "
                         "penalty=1 timeout=-")
    (stat,) = show.lines("hoststats")
    domain, when, error = stat.split("|")
    assert (domain, error) == ("example.org", "421 4.4.1 refused") and when.isdigit()
    assert show.resume(2) == 1
    assert show.lines("routes")[1].startswith("2. [] <-> 192.0.2.8 (mx2.example.org) N--- "
                                              "nconn=0 nerror=0 penalty=0")
    show.disconnected(used, None, "192.0.2.7", "mx.example.org")
    assert " nconn=0 " in show.lines("hosts")[0]
    show.result("example.org", None)
    assert show.lines("hoststats") == []
