"""metrics.py: the text exposition (read back by the Prometheus client's own
parser), the checks on the scheduler's data, and the HTTP answers."""

from __future__ import annotations

import pytest
from mailrider import limits, metrics
from mailrider.metrics import Histogram, Snapshot

parser = pytest.importorskip("prometheus_client.parser")


def sample_snapshot() -> Snapshot:
    snap = Snapshot(uptime=42, counters={
        "smtp.session": 7, "smtp.session.current": 2, "smtp.session.protocol-error": 1,
        "scheduler.envelope": 3, "queue.envelope.enqueued": 9, "klondike.keys": 1})
    snap.queue = {("mda", "pending"): 2, ("mta", "deferred"): 1}
    h = Histogram()
    for v in (0.01, 0.3, 4.0, 100000.0, 10 ** 7):
        h.observe(v)
    snap.latency = {("mda", "ok"): h}
    return snap


def families(text: str) -> dict[str, object]:
    return {f.name: f for f in parser.text_string_to_metric_families(text)}


def test_render_parses_as_prometheus_text() -> None:
    fams = families(metrics.render(sample_snapshot()))
    # the client's parser strips a counter's _total from the family name
    assert fams["mailrider_smtp_session"].type == "counter"
    assert fams["mailrider_smtp_session"].samples[0].name == "mailrider_smtp_session_total"
    assert fams["mailrider_smtp_session"].samples[0].value == 7
    assert fams["mailrider_smtp_session_protocol_error"].samples[0].value == 1
    assert fams["mailrider_smtp_session_current"].type == "gauge"
    assert fams["mailrider_scheduler_envelope"].type == "gauge"
    assert fams["mailrider_klondike_keys"].type == "gauge"
    assert fams["mailrider_uptime_seconds"].samples[0].value == 42
    queue = {(s.labels["type"], s.labels["state"]): s.value
             for s in fams["mailrider_queue_envelopes"].samples}
    assert len(queue) == len(metrics.TYPES) * len(metrics.STATES)
    assert queue[("mda", "pending")] == 2 and queue[("mta", "deferred")] == 1
    assert queue[("mta", "inflight")] == 0
    latency = fams["mailrider_delivery_latency_seconds"]
    assert latency.type == "histogram"
    buckets = {s.labels["le"]: s.value for s in latency.samples
               if s.name.endswith("_bucket")}
    assert buckets["0.05"] == 1 and buckets["0.5"] == 2 and buckets["5.0"] == 3
    assert buckets["345600.0"] == 4 and buckets["+Inf"] == 5
    count = next(s for s in latency.samples if s.name.endswith("_count"))
    assert count.value == 5 and count.labels == {"type": "mda", "result": "ok"}


def test_metric_names() -> None:
    assert metrics.metric_name("smtp.session") == "mailrider_smtp_session_total"
    assert metrics.metric_name("smtp.session.current") == "mailrider_smtp_session_current"
    assert metrics.metric_name("profile.imsg.x/y") == "mailrider_profile_imsg_x_y_total"


def test_histogram_from_hostile_data() -> None:
    good = Histogram()
    good.observe(1.0)
    assert Histogram.from_data(good.as_data()) is not None
    n = len(limits.LATENCY_BUCKETS)
    for bad in (None, [], {"buckets": [0] * (n - 1), "sum": 0, "count": 0},
                {"buckets": [1] + [0] * (n - 1), "sum": 1, "count": 1},  # not cumulative
                {"buckets": [2] * n, "sum": 1, "count": 1},  # more than counted
                {"buckets": [0] * n, "sum": -1, "count": 0},
                {"buckets": [0] * n, "sum": float("nan"), "count": 0},
                {"buckets": [0] * n, "sum": True, "count": 0},
                {"buckets": ["0"] * n, "sum": 0, "count": 0},
                {"buckets": [0] * n, "sum": 0, "count": -1}):
        assert Histogram.from_data(bad) is None, bad


def test_scheduler_data_is_filtered() -> None:
    h = Histogram()
    h.observe(0.2)
    data = metrics.scheduler_part({("mda", "pending"): 3}, {("mta", "permfail"): h})
    snap = Snapshot()
    metrics.snapshot_part(data, snap)
    assert snap.queue == {("mda", "pending"): 3}
    assert snap.latency[("mta", "permfail")].count == 1
    hostile = {"queue": [["mda", 'x"} 1\nevil', 1], ["mda", "pending", -1],
                         ["mda", "pending", "3"], "junk", ["mta", "held", 2]],
               "latency": [["mda", "ok", {"buckets": []}], ["bad", "ok", h.as_data()]]}
    snap = Snapshot()
    metrics.snapshot_part(hostile, snap)
    assert snap.queue == {("mta", "held"): 2} and snap.latency == {}
    metrics.snapshot_part("not a dict", snap)
    assert snap.queue == {("mta", "held"): 2}


@pytest.mark.parametrize(("head", "status"), [
    (b"GET /metrics HTTP/1.1\r\nHost: x", 200),
    (b"GET /metrics?x=1 HTTP/1.0", 200),
    (b"HEAD /metrics HTTP/1.1", 200),
    (b"GET / HTTP/1.1", 404),
    (b"GET /metrics/../etc HTTP/1.1", 404),
    (b"POST /metrics HTTP/1.1", 405),
    (b"GET /metrics", 400),
    (b"get /metrics HTTP/1.1", 400),
    (b"GET /metrics HTTP/2.0", 400),
    (b"\x16\x03\x01\x02\x00", 400),
    (b"GET /metrics HTTP/1.1\r\n" + b"X: " + b"a" * limits.METRICS_REQUEST_MAX, 400),
])
def test_request_target(head: bytes, status: int) -> None:
    assert metrics.request_target(head)[0] == status


def test_answers() -> None:
    snap = sample_snapshot()
    ok = metrics.answer(b"GET /metrics HTTP/1.1", snap)
    head, body = ok.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Content-Type: text/plain; version=0.0.4; charset=utf-8" in head
    assert f"Content-Length: {len(body)}".encode() in head
    assert b"Connection: close" in head
    assert body.decode() == metrics.render(snap)
    head_only = metrics.answer(b"HEAD /metrics HTTP/1.1", snap)
    assert head_only == ok[: len(head) + 4]
    assert metrics.answer(b"GET /x HTTP/1.1", snap).startswith(b"HTTP/1.1 404 Not Found\r\n")
    refused = metrics.answer(b"PUT /metrics HTTP/1.1", snap)
    assert refused.startswith(b"HTTP/1.1 405 ") and b"Allow: GET, HEAD\r\n" in refused
    assert metrics.answer(b"GET /metrics HTTP/1.1", None).startswith(b"HTTP/1.1 503 ")
