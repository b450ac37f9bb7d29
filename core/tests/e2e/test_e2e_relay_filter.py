"""``relay ... filter``: the outgoing sessions of a relay action report to its
filters (smtp-out), with a real filter program and a relay to a local sink."""

from __future__ import annotations

import pathlib

from e2e_util import smtp_send
from harness import Daemon, wait_for
from smtp_peer import Behaviour, SmtpPeer, make_certs, server_context
from test_e2e_filters import filter_cmd

MSG = b"From: alice@local.test\r\nSubject: out\r\n\r\nbody\r\n"


def _config(d: Daemon, peer_port: int, filter_option: str, filters: str) -> None:
    d.config_path.write_text(
        filters
        + f"listen on 127.0.0.1 port {d.port}\n"
        + f"action \"out\" relay host smtp://127.0.0.1:{peer_port} {filter_option}\n"
        + "match from any for domain \"remote.test\" action \"out\"\n")


def _reports(rec: pathlib.Path, direction: str) -> list[list[str]]:
    return [line.split("|") for line in rec.read_text().splitlines()
            if line.startswith("report|0.7|") and line.split("|")[3] == direction]


def test_relay_filter_gets_smtp_out_reports() -> None:
    with SmtpPeer(Behaviour(rcpt=lambda line: "550 5.1.1 no such user" if "nobody" in line
                            else "250 2.1.5 Ok")) as peer:
        d = Daemon(config="", extra_env={"MAILRIDER_MTA_TIMEOUT": "5"})
        cmd = filter_cmd(d, "smtp-out", "rf")
        _config(d, peer.port, 'filter "rf"', f"filter rf proc-exec {cmd}\n")
        with d:
            t = smtp_send(d.port, "alice@local.test", ["bob@remote.test", "nobody@remote.test"],
                          MSG)
            assert t.data is not None and t.data[0] == 250
            wait_for(lambda: peer.received)
            rec = d.state / "rf.rec"
            # the session ends (link-disconnect) when the connection is closed:
            # wait for the transaction's end instead
            wait_for(lambda: any(r[4] == "tx-reset" for r in _reports(rec, "smtp-out")))
            lines = rec.read_text().splitlines()
            assert "config|subsystem|smtp-out" in lines
            assert "config|subsystem|smtp-in" not in lines  # used on no listener
            out = _reports(rec, "smtp-out")
            assert _reports(rec, "smtp-in") == []
            events = [r[4] for r in out]
            assert events[:3] == ["link-connect", "link-greeting", "link-identify"]
            assert events[3:] == ["tx-begin", "tx-mail", "tx-envelope", "tx-rcpt",
                                  "tx-envelope", "tx-rcpt", "tx-data", "tx-commit",
                                  "tx-reset"], events
            sid = out[0][5]
            assert len(sid) == 16 and all(r[5] == sid for r in out)
            connect = out[0][6:]
            assert connect[0] == "127.0.0.1" and connect[1] == "pass"
            assert connect[3] == f"127.0.0.1:{peer.port}"
            assert out[1][6:] == ["peer.test"]  # the name in the peer's banner
            assert out[2][6] == "EHLO"
            msgid = out[3][6]
            assert len(msgid) == 8
            rcpts = {r[8]: r[7] for r in out if r[4] == "tx-rcpt"}
            assert rcpts == {"bob@remote.test": "ok", "nobody@remote.test": "permfail"}
            envelopes = [r[7] for r in out if r[4] == "tx-envelope"]
            assert all(e.startswith(msgid) and len(e) == 16 for e in envelopes)
            size = int(next(r[7] for r in out if r[4] == "tx-commit"))
            assert size > len(MSG) - 10  # the spooled message (LF ends, trace header)


def test_relay_filter_chain_in_braces_and_smtp_in_unchanged() -> None:
    with SmtpPeer(Behaviour()) as peer:
        d = Daemon(config="", extra_env={"MAILRIDER_MTA_TIMEOUT": "5"})
        cmd_a = filter_cmd(d, "smtp-out", "fa")
        cmd_b = filter_cmd(d, "smtp-out", "fb")
        d.config_path.write_text(
            f"filter fa proc-exec {cmd_a}\nfilter fb proc-exec {cmd_b}\n"
            f"listen on 127.0.0.1 port {d.port} filter fb\n"
            f"action \"out\" relay host smtp://127.0.0.1:{peer.port} filter {{ fa fb }}\n"
            "match from any for domain \"remote.test\" action \"out\"\n")
        with d:
            t = smtp_send(d.port, "alice@local.test", ["bob@remote.test"], MSG)
            assert t.data is not None and t.data[0] == 250
            for name in ("fa", "fb"):
                rec = d.state / f"{name}.rec"
                wait_for(lambda rec=rec: any(r[4] == "tx-commit"
                                             for r in _reports(rec, "smtp-out")))
            # fb is on the listener too: it was told both, and saw both directions
            fb = (d.state / "fb.rec").read_text().splitlines()
            assert "config|subsystem|smtp-in" in fb and "config|subsystem|smtp-out" in fb
            assert any(r[4] == "tx-commit" for r in _reports(d.state / "fb.rec", "smtp-in"))
            fa = (d.state / "fa.rec").read_text().splitlines()
            assert "config|subsystem|smtp-in" not in fa
            assert _reports(d.state / "fa.rec", "smtp-in") == []
            assert len(peer.received) == 1


def test_relay_filter_reports_tls_and_auth(tmp_path: pathlib.Path) -> None:
    ca, cert, key = make_certs(tmp_path)
    with SmtpPeer(Behaviour(tls=server_context(cert, key), auth=("joe", "s3cret"))) as peer:
        d = Daemon(config="", extra_env={"MAILRIDER_MTA_TIMEOUT": "5"})
        cmd = filter_cmd(d, "smtp-out", "rf")
        _config(d, peer.port, 'filter "rf"',
                f"filter rf proc-exec {cmd}\n"
                f'ca testca cert "{ca}"\ntable creds {{ "lbl" = "joe:s3cret" }}\n')
        d.config_path.write_text(d.config_path.read_text().replace(
            f"relay host smtp://127.0.0.1:{peer.port}",
            f"relay host smtp+tls://lbl@127.0.0.1:{peer.port} auth <creds> ca testca"))
        with d:
            t = smtp_send(d.port, "alice@local.test", ["bob@remote.test"], MSG)
            assert t.data is not None and t.data[0] == 250
            wait_for(lambda: peer.received)
            rec = d.state / "rf.rec"
            wait_for(lambda: any(r[4] == "tx-reset" for r in _reports(rec, "smtp-out")))
            out = _reports(rec, "smtp-out")
            events = [r[4] for r in out]
            assert events[:5] == ["link-connect", "link-greeting", "link-tls", "link-auth",
                                  "link-identify"], events
            version, cipher, bits = out[2][6].split(":")
            assert version.startswith("TLSv1.") and cipher and int(bits) >= 128
            assert out[3][6:] == ["pass", "joe"]
            assert "s3cret" not in rec.read_text()
