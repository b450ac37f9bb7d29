"""End to end: ``metrics listen on``, scraped over real HTTP and read by the
Prometheus client's parser; ``mailriderctl monitor`` agrees with it."""

from __future__ import annotations

import re
import smtplib
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
from harness import Daemon, free_port, wait_for

parser = pytest.importorskip("prometheus_client.parser")

CONF = """\
listen on 127.0.0.1 port {port}
metrics listen on 127.0.0.1 port %d
table all {{ "@" = "{user}" }}
action "local" maildir "{mail}/%%{{dest.user}}" virtual <all>
match from any for domain "localhost" action "local"
"""


def scrape(port: int) -> dict[str, object]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        assert r.status == 200
        assert r.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        text = r.read().decode()
    return {f.name: f for f in parser.text_string_to_metric_families(text)}


def value(fams: dict[str, object], family: str, sample: str | None = None,
          **labels: str) -> float:
    for s in fams[family].samples:  # type: ignore[attr-defined]
        if (sample is None or s.name == sample) and all(
                s.labels.get(k) == v for k, v in labels.items()):
            return float(s.value)
    raise KeyError((family, sample, labels))


def raw(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


@pytest.fixture(scope="module")
def d() -> Daemon:
    mport = free_port()
    daemon = Daemon(CONF % mport).start()
    daemon.metrics_port = mport  # type: ignore[attr-defined]
    yield daemon
    daemon.cleanup()


def test_counters_queue_and_latency(d: Daemon) -> None:
    mport = d.metrics_port  # type: ignore[attr-defined]
    before = scrape(mport)
    assert value(before, "mailrider_uptime_seconds") >= 0
    sent = 3
    with smtplib.SMTP("127.0.0.1", d.port, timeout=10) as c:
        for i in range(sent):
            c.sendmail("sender@example.org", ["alice@localhost"],
                       f"Subject: m{i}\r\n\r\nbody\r\n".encode())
    wait_for(lambda: len(d.maildir("alice")) == sent, 30)

    def delivered() -> dict[str, object] | None:
        fams = scrape(mport)
        done = value(fams, "mailrider_delivery_latency_seconds",
                     "mailrider_delivery_latency_seconds_count", type="mda", result="ok")
        return fams if done == sent else None

    fams = wait_for(delivered, 30)
    # the counters of show stats, under their Prometheus names
    stats = dict(line.split("=", 1) for line in d.ctl("show", "stats").stdout.split())
    assert value(fams, "mailrider_smtp_message") == int(stats["smtp.message"]) == sent
    assert value(fams, "mailrider_scheduler_delivery_ok") == sent
    assert value(fams, "mailrider_smtp_session") >= 1
    # every envelope delivered: the queue is empty in every state
    for s in fams["mailrider_queue_envelopes"].samples:  # type: ignore[attr-defined]
        assert s.value == 0, s
    # the histogram: every delivery counted once, below +Inf, and a local
    # delivery on loopback is well under an hour
    assert value(fams, "mailrider_delivery_latency_seconds",
                 "mailrider_delivery_latency_seconds_bucket",
                 type="mda", result="ok", le="+Inf") == sent
    assert value(fams, "mailrider_delivery_latency_seconds",
                 "mailrider_delivery_latency_seconds_bucket",
                 type="mda", result="ok", le="3600.0") == sent
    assert value(fams, "mailrider_delivery_latency_seconds",
                 "mailrider_delivery_latency_seconds_sum", type="mda", result="ok") >= 0


def test_queue_states_while_paused(d: Daemon) -> None:
    mport = d.metrics_port  # type: ignore[attr-defined]
    d.ctl("pause", "mda")
    try:
        with smtplib.SMTP("127.0.0.1", d.port, timeout=10) as c:
            c.sendmail("sender@example.org", ["bob@localhost"], b"Subject: x\r\n\r\nx\r\n")

        def held() -> bool:
            fams = scrape(mport)
            return value(fams, "mailrider_queue_envelopes", type="mda", state="held") == 1

        wait_for(held, 30)
    finally:
        d.ctl("resume", "mda")
    wait_for(lambda: len(d.maildir("bob")) == 1, 30)


def test_monitor_reads_the_same_counters(d: Daemon) -> None:
    mport = d.metrics_port  # type: ignore[attr-defined]
    proc = subprocess.Popen([sys.executable, "-m", "mailrider.cli.mailriderctl", "-S",
                             str(d.state), "monitor"], stdout=subprocess.PIPE, text=True,
                            env=d.env)
    time.sleep(1.5)
    proc.terminate()
    out, _ = proc.communicate(timeout=10)
    fams = scrape(mport)
    first = [int(v) for v in out.splitlines()[2].split()]
    # the first row is absolute: deliveries ok (column 7) and bounces (13)
    assert first[6] == value(fams, "mailrider_scheduler_delivery_ok")
    assert re.fullmatch(r"(\s+-?\d+)+", out.splitlines()[2])


def test_http_errors(d: Daemon) -> None:
    mport = d.metrics_port  # type: ignore[attr-defined]
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(f"http://127.0.0.1:{mport}/", timeout=10)
    assert info.value.code == 404
    reply = raw(mport, b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 405 ") and b"Allow: GET, HEAD" in reply
    assert raw(mport, b"\x16\x03\x01\x00\x05hello\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    big = b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 20000 + b"\r\n\r\n"
    assert raw(mport, big).startswith(b"HTTP/1.1 400 ")
    head = raw(mport, b"HEAD /metrics HTTP/1.1\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and head.endswith(b"\r\n\r\n")
    # a client that never finishes its request is dropped, the endpoint lives on
    with socket.create_connection(("127.0.0.1", mport), timeout=10) as s:
        s.sendall(b"GET /metr")
        assert s.recv(100) == b""  # closed after METRICS_REQUEST_TIMEOUT
    assert "mailrider_uptime_seconds" in scrape(mport)


def test_check_and_start_refuse_a_taken_port(d: Daemon) -> None:
    mport = d.metrics_port  # type: ignore[attr-defined]
    other = Daemon(CONF % mport)
    try:
        assert other.config_path is not None
        res = subprocess.run([sys.executable, "-m", "mailrider.cli.mailriderd", "-d", "-S",
                              str(other.state), "-f", str(other.config_path)],
                             capture_output=True, text=True, timeout=60, env=other.env)
        assert res.returncode == 1
        assert res.stderr.strip().splitlines()[-1] == (
            f"{other.config_path}:2: metrics: cannot listen on 127.0.0.1 port {mport}: "
            "Address already in use")
    finally:
        other.cleanup()
