#!/usr/bin/env python3
"""Conformance checker for stdio table backends (protocol 0.1, docs/table-protocol.md).

    check_table.py [--vectors FILE] [--config PATH] [--name NAME]
                   [--timeout S] [--keep-argv0] -- COMMAND [ARG...]

Starts COMMAND as mailriderd (and OpenSMTPD) would -- one socketpair end as
both stdin and stdout, argv[0] = the table name, the config path as last
argument -- and checks it. Prints ``PASS name`` or ``FAIL name: why`` per
check; the exit status is 0 only if every check passed. See README.md.

This speaks the protocol itself, independently of mailrider.table.proc, so
that it checks the backend rather than our client.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import select
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field

SERVICES = (
    "alias",
    "domain",
    "credentials",
    "netaddr",
    "userinfo",
    "source",
    "mailaddr",
    "addrname",
    "mailaddrmap",
    "relayhost",
    "string",
    "regex",
    "auth",
)
EXPECTATIONS = ("found", "not-found", "error", "ok", "any")


@dataclass
class Request:
    check: str  # the name of the check this request belongs to
    op: str
    service: str | None
    key: str | None
    expect: str = "any"  # found, not-found, error, ok, any
    value: str | None = None  # expected value of found, if any
    rid: str = ""
    reply: str | None = None
    problems: list[str] = field(default_factory=list)

    def line(self, name: str) -> str:
        usec = time.time_ns() // 1000
        head = f"table|0.1|{usec // 1_000_000}.{usec % 1_000_000:06d}|{name}|{self.op}|"
        if self.op == "update":
            return f"{head}{self.rid}\n"
        if self.key is None:
            return f"{head}{self.service}|{self.rid}\n"
        return f"{head}{self.service}|{self.rid}|{self.key}\n"


def parse_vectors(path: str) -> list[Request]:
    """Read a vector file; raise ValueError with file:line on a bad line."""
    requests = []
    with open(path, encoding="utf-8") as f:
        for lineno, raw in enumerate(f, 1):
            line = raw.rstrip("\n")
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            left, sep, right = line.rpartition(" -> ")
            if not sep:
                raise ValueError(f"{path}:{lineno}: missing ' -> '")
            expect, _, value = right.strip().partition(" ")
            if expect not in EXPECTATIONS or (value and expect != "found"):
                raise ValueError(f"{path}:{lineno}: bad expectation {right!r}")
            words = left.split(" ", 2)
            op = words[0]
            if op == "update" and len(words) == 1:
                service, key = None, None
            elif op == "fetch" and len(words) == 2:
                service, key = words[1], None
            elif op in ("check", "lookup") and len(words) == 3:
                service, key = words[1], words[2]
            else:
                raise ValueError(f"{path}:{lineno}: bad request {left!r}")
            if service is not None and service not in SERVICES:
                raise ValueError(f"{path}:{lineno}: unknown service {service!r}")
            requests.append(
                Request(f"vector {lineno}: {left}", op, service, key, expect, value or None)
            )
    return requests


def judge(req: Request, reply: str) -> None:
    """Check one reply's syntax (docs/table-protocol.md §4) and its expectation."""
    req.reply = reply
    kind, _, rest = reply.partition("|")
    _rid, sep, status = rest.partition("|")
    if kind != f"{req.op}-result":
        req.problems.append(f"reply type {kind!r}, expected {req.op}-result")
        return
    if not sep:
        req.problems.append(f"no status in {reply!r}")
        return
    got = None
    if status == "error" or status.startswith("error|"):
        got = "error"
    elif req.op == "update":
        got = "ok" if status == "ok" else None
    elif status == "not-found":
        got = "not-found"
    elif req.op == "check":
        got = "found" if status.startswith("found") else None
    elif status.startswith("found|") and len(status) > 6:
        got = "found"
    if got is None:
        req.problems.append(f"invalid status in {reply!r}")
        return
    if req.expect != "any" and got != req.expect:
        req.problems.append(f"expected {req.expect}, got {reply!r}")
    elif req.value is not None and status[6:] != req.value:
        req.problems.append(f"expected value {req.value!r}, got {status[6:]!r}")


class Checker:
    def __init__(
        self, command: list[str], name: str, config: str | None, timeout: float, keep_argv0: bool
    ) -> None:
        self.name = name
        self.timeout = timeout
        self.failed = False
        self.buffer = b""
        executable = shutil.which(command[0]) or command[0]
        argv = list(command) if keep_argv0 else [name, *command[1:]]
        if config is not None:
            argv.append(config)
        self.sock, theirs = socket.socketpair()
        try:
            self.proc = subprocess.Popen(
                argv,
                executable=executable,
                stdin=theirs.fileno(),
                stdout=theirs.fileno(),
                close_fds=True,
            )
        finally:
            theirs.close()

    def report(self, check: str, problems: list[str]) -> None:
        if problems:
            self.failed = True
            print(f"FAIL {check}: {'; '.join(problems)}", flush=True)
        else:
            print(f"PASS {check}", flush=True)

    def send(self, text: str) -> str | None:
        """Send; return the problem if the backend is gone."""
        try:
            self.sock.sendall(text.encode("utf-8", "surrogateescape"))
        except OSError as exc:
            return f"cannot send: {exc.strerror or exc}"
        return None

    def readline(self, deadline: float) -> str | None:
        """One line, or None on EOF or at the deadline."""
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.sock], [], [], left)[0]:
                return None
            try:
                data = self.sock.recv(65536)
            except OSError:
                return None
            if not data:
                return None
            self.buffer += data
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line.decode("utf-8", "surrogateescape")

    def handshake(self) -> list[str] | None:
        problem = self.send(
            f"config|smtpd-version|conformance\nconfig|protocol|0.1\n"
            f"config|tablename|{self.name}\nconfig|ready\n"
        )
        if problem:
            self.report("handshake", [problem])
            return None
        services: list[str] = []
        deadline = time.monotonic() + self.timeout
        while True:
            line = self.readline(deadline)
            if line is None:
                self.report("handshake", ["no register|ready (EOF or timeout)"])
                return None
            if line == "register|ready":
                break
            if not line.startswith("register|"):
                self.report("handshake", [f"unexpected line {line!r}"])
                return None
            service = line[9:]
            if service not in SERVICES:
                self.report("handshake", [f"unknown service {service!r}"])
                return None
            if service in services:
                self.report("handshake", [f"service {service!r} registered twice"])
                return None
            services.append(service)
        if not services:
            self.report("handshake", ["no service registered"])
            return None
        self.report("handshake", [])
        return services

    def exchange(self, requests: list[Request]) -> list[str]:
        """Send every request, then read every reply; return pipelining problems."""
        used: set[str] = set()
        for req in requests:
            while not req.rid or req.rid in used:
                req.rid = f"{random.getrandbits(32):08x}"
            used.add(req.rid)
        problem = self.send("".join(req.line(self.name) for req in requests))
        waiting = {req.rid: req for req in requests}
        problems = [problem] if problem else []
        deadline = time.monotonic() + self.timeout
        while waiting:
            line = self.readline(deadline)
            if line is None:
                break
            rid = line.split("|", 2)[1] if "|" in line else ""
            answered = waiting.pop(rid, None)
            if answered is None:
                what = "duplicate reply" if rid in used else "reply with unknown id"
                problems.append(f"{what}: {line[:80]!r}")
                continue
            judge(answered, line)
        for req in waiting.values():
            req.problems.append("no reply (EOF or timeout)")
        if waiting:
            problems.append(f"{len(waiting)} of {len(requests)} requests unanswered")
        return problems

    def finish(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)
        try:
            self.proc.wait(self.timeout)
            self.report("exit-on-eof", [])
        except subprocess.TimeoutExpired:
            self.report("exit-on-eof", [f"still running {self.timeout:g}s after EOF"])
            self.proc.kill()
            self.proc.wait()
        self.sock.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vectors", help="file of requests and expected replies")
    parser.add_argument("--config", help="config path given to the backend as argv[1]")
    parser.add_argument("--name", default="conformance", help="table name (argv[0])")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds per phase")
    parser.add_argument(
        "--keep-argv0",
        action="store_true",
        help="keep COMMAND's argv[0] (for interpreters: python3 x.py)",
    )
    parser.add_argument("command", nargs="+", help="the backend command")
    args = parser.parse_args(argv)
    try:
        vectors = parse_vectors(args.vectors) if args.vectors else []
    except (OSError, ValueError) as exc:
        print(f"check_table: {exc}", file=sys.stderr)
        return 2
    try:
        checker = Checker(args.command, args.name, args.config, args.timeout, args.keep_argv0)
    except OSError as exc:
        print(f"FAIL start: {exc}")
        return 1
    try:
        services = checker.handshake()
        if services is None:
            return 1
        first = services[0]
        missing = [s for s in SERVICES if s not in services]
        fetchable = next((s for s in ("source", "relayhost") if s in services), first)
        extra = [
            Request("update", "update", None, None),
            Request("fetch", "fetch", fetchable, None),
            Request("key-with-pipe", "lookup", first, "conformance|key|with|pipes"),
            Request("check", "check", first, "conformance-check"),
        ]
        if missing:
            extra.append(
                Request("unregistered-service", "lookup", missing[0], "conformance", "error")
            )
        batch = vectors + extra
        pipelining = checker.exchange(batch)
        for req in batch:
            checker.report(req.check, req.problems)
        checker.report("pipelining", pipelining)
        after = Request("alive-after-batch", "lookup", first, "conformance-after")
        checker.exchange([after])
        checker.report(after.check, after.problems)
        checker.finish()
    finally:
        if checker.proc.poll() is None:
            checker.proc.kill()
            checker.proc.wait()
    return 1 if checker.failed else 0


if __name__ == "__main__":
    sys.exit(main())
