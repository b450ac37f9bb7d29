"""The daemon's metrics in the Prometheus text exposition format (0.0.4).

What is served (docs/metrics.md §2): every ``show stats`` counter, the queue
by envelope type and state, and histograms of delivery latency (queueing to
the final outcome, by type and outcome). The scheduler keeps the queue states
and histograms; control gathers them with the counters into one
:class:`Snapshot` that ``show stats``, ``mailriderctl monitor`` and the HTTP
endpoint all read.

Invariants:

- Sans-I/O: :func:`render` turns a snapshot into text, :func:`answer` turns
  the bytes of one HTTP request head into the bytes of the response. Sockets
  and timeouts live in proc/control.py.
- The scheduler's answer is data from another process: :func:`snapshot_part`
  accepts only known label values, non-negative integers and well-formed
  histograms, and drops everything else; a label value is never taken
  from the peer as free text.
- A metric name is ``mailrider_`` and the counter's name with every
  character outside ``[a-zA-Z0-9_]`` made ``_``; counters end in
  ``_total``; gauges (:data:`GAUGES`, names ending in ``.current``) do not.
- HTTP: only ``GET`` (and ``HEAD``) of ``/metrics`` (a query string is
  ignored) is 200; another path is 404, another method 405, a malformed or
  oversized head 400. Every response closes the connection.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass, field

from mailrider import limits

#: the environment variable by which the parent gives control the fds of the
#: metrics sockets it bound (comma-separated)
METRICS_ENV = "MAILRIDER_METRICS_FDS"
#: the media type of the text format
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PREFIX = "mailrider_"
#: counters that are levels, not totals
GAUGES = frozenset({"scheduler.envelope", "scheduler.envelope.inflight", "klondike.keys",
                    "uptime"})
#: the label values the scheduler may report
TYPES = ("mda", "mta", "bounce")
STATES = ("pending", "deferred", "inflight", "held", "suspended")
RESULTS = ("ok", "permfail", "expired")

_NAME_CHARS = re.compile(r"[^a-zA-Z0-9_]")
_REQUEST_LINE = re.compile(rb"([A-Z]{1,16}) (\S{1,2048}) HTTP/1\.[01]")


class Histogram:
    """Cumulative counts per bucket of :data:`limits.LATENCY_BUCKETS`."""

    __slots__ = ("count", "counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * len(limits.LATENCY_BUCKETS)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        value = max(0.0, value)
        for i, bound in enumerate(limits.LATENCY_BUCKETS):
            if value <= bound:
                self.counts[i] += 1
        self.sum += value
        self.count += 1

    def as_data(self) -> dict[str, object]:
        return {"buckets": list(self.counts), "sum": self.sum, "count": self.count}

    @classmethod
    def from_data(cls, data: object) -> Histogram | None:
        """The histogram ``data`` describes, or None when it is not one."""
        if not isinstance(data, dict):
            return None
        buckets, total, count = data.get("buckets"), data.get("sum"), data.get("count")
        if (not isinstance(buckets, list) or len(buckets) != len(limits.LATENCY_BUCKETS)
                or not all(type(n) is int and n >= 0 for n in buckets)
                or type(count) is not int or count < 0
                or not isinstance(total, int | float) or isinstance(total, bool)
                or not math.isfinite(total) or total < 0
                or any(a > b for a, b in itertools.pairwise(buckets))
                or (buckets and buckets[-1] > count)):
            return None
        h = cls()
        h.counts, h.sum, h.count = list(buckets), float(total), count
        return h


@dataclass
class Snapshot:
    """Everything served at one moment."""

    uptime: int = 0
    counters: dict[str, int] = field(default_factory=dict)
    #: (type, state) -> envelopes
    queue: dict[tuple[str, str], int] = field(default_factory=dict)
    #: (type, result) -> latency from queueing to that outcome
    latency: dict[tuple[str, str], Histogram] = field(default_factory=dict)


def scheduler_part(queue: dict[tuple[str, str], int],
                   latency: dict[tuple[str, str], Histogram]) -> dict[str, object]:
    """What the scheduler answers to ``metrics`` (JSON-safe)."""
    return {"queue": [[t, s, n] for (t, s), n in sorted(queue.items())],
            "latency": [[t, r, h.as_data()] for (t, r), h in sorted(latency.items())]}


def snapshot_part(data: object, snap: Snapshot) -> None:
    """Fill ``snap``'s queue and latency from the scheduler's answer, keeping
    only what is well formed (module docstring)."""
    if not isinstance(data, dict):
        return
    queue, latency = data.get("queue"), data.get("latency")
    for row in queue if isinstance(queue, list) else []:
        if (isinstance(row, list) and len(row) == 3 and row[0] in TYPES and row[1] in STATES
                and type(row[2]) is int and row[2] >= 0):
            snap.queue[(row[0], row[1])] = row[2]
    for row in latency if isinstance(latency, list) else []:
        if isinstance(row, list) and len(row) == 3 and row[0] in TYPES and row[1] in RESULTS:
            h = Histogram.from_data(row[2])
            if h is not None:
                snap.latency[(row[0], row[1])] = h


def metric_name(counter: str) -> str:
    """``mailrider_smtp_session_total`` for the counter ``smtp.session``."""
    base = PREFIX + _NAME_CHARS.sub("_", counter)
    return base if is_gauge(counter) else base + "_total"


def is_gauge(counter: str) -> bool:
    return counter in GAUGES or counter.endswith(".current")


def _number(v: float) -> str:
    if v == math.inf:
        return "+Inf"
    return repr(float(v)) if isinstance(v, float) else str(v)


def render(snap: Snapshot) -> str:
    """The text exposition of ``snap``."""
    out: list[str] = []

    def family(name: str, kind: str, text: str) -> None:
        out.append(f"# HELP {name} {text}")
        out.append(f"# TYPE {name} {kind}")

    family("mailrider_uptime_seconds", "gauge", "Seconds since the daemon started.")
    out.append(f"mailrider_uptime_seconds {snap.uptime}")
    seen: set[str] = set()
    for key in sorted(snap.counters):
        name = metric_name(key)
        if name in seen or name == "mailrider_uptime":
            continue  # two counters that differ only in punctuation: the first wins
        seen.add(name)
        kind = "gauge" if is_gauge(key) else "counter"
        family(name, kind, f"show stats {key}.")
        out.append(f"{name} {int(snap.counters[key])}")
    family("mailrider_queue_envelopes", "gauge",
           "Envelopes in the queue, by type (mda local, mta relay, bounce) and state.")
    for t in TYPES:
        for s in STATES:
            out.append(f'mailrider_queue_envelopes{{type="{t}",state="{s}"}} '
                       f"{snap.queue.get((t, s), 0)}")
    name = "mailrider_delivery_latency_seconds"
    family(name, "histogram",
           "Seconds from queueing to the final outcome of each envelope, by type and result.")
    for (t, r), h in sorted(snap.latency.items()):
        labels = f'type="{t}",result="{r}"'
        for bound, n in zip(limits.LATENCY_BUCKETS, h.counts, strict=True):
            out.append(f'{name}_bucket{{{labels},le="{_number(bound)}"}} {n}')
        out.append(f'{name}_bucket{{{labels},le="+Inf"}} {h.count}')
        out.append(f"{name}_sum{{{labels}}} {_number(h.sum)}")
        out.append(f"{name}_count{{{labels}}} {h.count}")
    return "\n".join(out) + "\n"


def _response(status: int, reason: str, body: bytes, content_type: str,
              head_only: bool = False, extra: str = "") -> bytes:
    head = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n{extra}Connection: close\r\n\r\n")
    return head.encode("ascii") + (b"" if head_only else body)


def error_response(status: int, reason: str) -> bytes:
    return _response(status, reason, f"{status} {reason}\n".encode("ascii"),
                     "text/plain; charset=utf-8")


def request_target(head: bytes) -> tuple[int, bool]:
    """Check one request head (up to and without the blank line): ``(200,
    head_only)`` for the metrics, else ``(status, False)`` for the error."""
    if len(head) > limits.METRICS_REQUEST_MAX:
        return 400, False
    line = head.split(b"\r\n", 1)[0]
    match = _REQUEST_LINE.fullmatch(line)
    if match is None:
        return 400, False
    method, target = match.group(1), match.group(2)
    if target.split(b"?", 1)[0] != b"/metrics":
        return 404, False
    if method not in (b"GET", b"HEAD"):
        return 405, False
    return 200, method == b"HEAD"


REASONS = {400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
           503: "Service Unavailable"}


def answer(head: bytes, snap: Snapshot | None) -> bytes:
    """The response to the request whose head is ``head``; ``snap`` is what to
    serve (None: the daemon could not gather it, 503)."""
    status, head_only = request_target(head)
    if status == 405:
        return _response(405, REASONS[405], b"405 Method Not Allowed\n",
                         "text/plain; charset=utf-8", extra="Allow: GET, HEAD\r\n")
    if status != 200:
        return error_response(status, REASONS[status])
    if snap is None:
        return error_response(503, REASONS[503])
    return _response(200, "OK", render(snap).encode("utf-8"), CONTENT_TYPE, head_only)
