"""The filter protocol, version 0.7 (docs/filter-protocol.md), as lines.

Pure functions: build the lines we send, parse the lines a filter sends.
Nothing here does I/O. A line a filter sends that does not parse raises
:class:`FilterProtocolError`; the caller decides what that costs (the
sessions it concerns tempfail, nothing crashes).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

VERSION = "0.7"

#: report events a filter may register (smtp-in and smtp-out)
REPORT_EVENTS = frozenset({
    "link-connect", "link-greeting", "link-identify", "link-tls", "link-auth",
    "link-disconnect", "link-reset", "tx-reset", "tx-begin", "tx-mail", "tx-rcpt",
    "tx-envelope", "tx-data", "tx-commit", "tx-rollback", "protocol-client",
    "protocol-server", "filter-report", "filter-response", "timeout",
})

#: filter phases a filter may register (smtp-in only)
FILTER_PHASES = frozenset({
    "connect", "helo", "ehlo", "starttls", "auth", "mail-from", "rcpt-to", "data",
    "data-line", "rset", "quit", "noop", "help", "wiz", "commit",
})

DECISIONS = frozenset({"proceed", "junk", "reject", "disconnect", "rewrite", "report"})

#: filter-response names of phases (docs/filter-protocol.md §3: "connected", "tls")
RESPONSE_PHASE = {"connect": "connected", "starttls": "tls"}


class FilterProtocolError(ValueError):
    """A line from a filter that breaks the protocol."""


def timestamp(now: float | None = None) -> str:
    usec = int((time.time() if now is None else now) * 1_000_000)
    return f"{usec // 1_000_000}.{usec % 1_000_000:06d}"


def _clean(field: str) -> str:
    # a field never carries a line break (it would start a new protocol line)
    return field.replace("\r", " ").replace("\n", " ")


def handshake_lines(*, version: str, subsystems: list[str], admd: str,
                    session_timeout: int = 300) -> list[str]:
    lines = [f"config|smtpd-version|{version}", f"config|protocol|{VERSION}",
             f"config|smtp-session-timeout|{session_timeout}"]
    lines += [f"config|subsystem|{s}" for s in subsystems]
    lines += [f"config|admd|{_clean(admd)}", "config|ready"]
    return lines


def report_line(direction: str, event: str, sid: str, params: list[str],
                now: float | None = None) -> str:
    head = f"report|{VERSION}|{timestamp(now)}|{direction}|{event}|{sid}"
    return head + "".join("|" + _clean(p) for p in params)


def filter_line(phase: str, sid: str, token: str, params: list[str],
                now: float | None = None) -> str:
    head = f"filter|{VERSION}|{timestamp(now)}|smtp-in|{phase}|{sid}|{token}"
    # the parameter field is always present, possibly empty
    return head + "|" + "|".join(_clean(p) for p in params)


@dataclass(frozen=True, slots=True)
class Register:
    kind: str  # "report", "filter" or "ready"
    direction: str = ""
    name: str = ""


@dataclass(frozen=True, slots=True)
class FilterResult:
    sid: str
    token: str
    decision: str
    param: str | None


@dataclass(frozen=True, slots=True)
class DataLine:
    sid: str
    token: str
    line: str


@dataclass(frozen=True, slots=True)
class FilterSentReport:
    sid: str
    message: str


def _hex(text: str, n: int) -> bool:
    return len(text) == n and all(c in "0123456789abcdef" for c in text)


def parse_register(line: str) -> Register:
    parts = line.split("|")
    if parts[0] != "register":
        raise FilterProtocolError(f"expected a register line, got {line[:80]!r}")
    if parts[1:] == ["ready"]:
        return Register("ready")
    if len(parts) != 4:
        raise FilterProtocolError(f"malformed register line {line[:80]!r}")
    _, kind, direction, name = parts
    if kind == "report":
        if direction not in ("smtp-in", "smtp-out") or (name != "*" and
                                                       name not in REPORT_EVENTS):
            raise FilterProtocolError(f"unknown report registration {line[:80]!r}")
    elif kind == "filter":
        if direction != "smtp-in" or name not in FILTER_PHASES:
            raise FilterProtocolError(f"unknown filter registration {line[:80]!r}")
    else:
        raise FilterProtocolError(f"unknown registration {line[:80]!r}")
    return Register(kind, direction, name)


def parse_output(line: str) -> FilterResult | DataLine | FilterSentReport:
    """One line a running filter sends."""
    if line.startswith("filter-result|"):
        parts = line.split("|", 4)
        if len(parts) < 4:
            raise FilterProtocolError(f"malformed filter-result {line[:80]!r}")
        _, sid, token, decision = parts[:4]
        param = parts[4] if len(parts) == 5 else None
        if not (_hex(sid, 16) and _hex(token, 16)):
            raise FilterProtocolError(f"bad session or token in {line[:80]!r}")
        if decision not in DECISIONS:
            raise FilterProtocolError(f"unknown decision {decision[:20]!r}")
        if decision in ("reject", "disconnect", "rewrite", "report") and param is None:
            raise FilterProtocolError(f"decision {decision} needs a parameter")
        return FilterResult(sid, token, decision, param)
    if line.startswith("filter-dataline|"):
        parts = line.split("|", 3)
        if len(parts) != 4 or not (_hex(parts[1], 16) and _hex(parts[2], 16)):
            raise FilterProtocolError(f"malformed filter-dataline {line[:80]!r}")
        return DataLine(parts[1], parts[2], parts[3])
    if line.startswith("report|"):
        # report|<ts>|smtp-in|<sid>|<message> (undocumented; 7.8's own parser is broken)
        parts = line.split("|", 4)
        if len(parts) != 5 or not _hex(parts[3], 16):
            raise FilterProtocolError(f"malformed report {line[:80]!r}")
        return FilterSentReport(parts[3], parts[4])
    raise FilterProtocolError(f"unexpected line {line[:80]!r}")


def valid_reply(text: str, *, first: str = "45") -> bool:
    """A reject/disconnect text must be a syntactically valid SMTP reply (4xx/5xx)."""
    return (len(text) >= 3 and text[0] in first and text[1:3].isdigit()
            and (len(text) == 3 or text[3] in " -"))
