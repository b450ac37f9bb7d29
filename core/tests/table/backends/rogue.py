"""A raw (SDK-free) table backend that misbehaves on request, for tests.

Mode = argv[1] (or the argument of :func:`serve`). Handshake modes:
``hs-none`` (no service), ``hs-unknown`` (unknown service), ``hs-garbage``
(a non-register line), ``hs-eof`` (exits), ``hs-silent`` (never answers),
``hs-late-death`` (registers, then exits at once). Other modes serve
alias/domain/source; ``reverse`` answers each batch of requests read in
reverse order, ``argv`` answers lookups with its argv as JSON,
``update-error`` fails updates, ``sloppy`` answers everything with a
value-less ``lookup-result`` and ignores unregistered services.

Keys steer single requests: ``slow*`` is never answered, ``die`` exits,
``garbage`` gets a garbage line, ``wrongop`` a reply of the wrong type,
``unknownid`` a reply with another id, ``empty`` an empty found value,
``error`` an error with a message, ``bare-error`` a bare error, ``absent*``
not-found, ``history`` returns every line received so far (handshake
included), tab-separated; any other key is found with value ``v:<key>``.
"""

from __future__ import annotations

import json
import os
import sys
import time

SERVICES = ("alias", "domain", "source")


def _write(data: str) -> None:
    os.write(1, data.encode("utf-8", "surrogateescape"))


HISTORY: list[str] = []


def _answer(mode: str, tablename: str, line: str) -> str | None:
    HISTORY.append(line)
    parts = line.split("|", 5)
    op, rest = parts[4], parts[5]
    if mode == "sloppy":
        fields = rest.split("|")
        if op != "update" and fields[0] not in SERVICES:
            return None
        return f"lookup-result|{fields[0] if op == 'update' else fields[1]}|found\n"
    if op == "update":
        status = "error|nope" if mode == "update-error" else "ok"
        return f"update-result|{rest}|{status}\n"
    if op == "fetch":
        service, _, rid = rest.partition("|")
        if service not in SERVICES:
            return f"fetch-result|{rid}|error|unsupported service\n"
        return f"fetch-result|{rid}|found|192.0.2.1\n"
    service, rid, key = rest.split("|", 2)
    if service not in SERVICES:
        return f"{op}-result|{rid}|error|unsupported service\n"
    if key.startswith("slow"):
        return None
    if key == "die":
        os._exit(1)
    if key == "garbage":
        return "this is not a reply\n"
    if key == "wrongop":
        return f"{'check' if op == 'lookup' else 'lookup'}-result|{rid}|found|x\n"
    if key == "unknownid":
        return "lookup-result|ffffffff|found|x\n"
    if key == "empty":
        return f"{op}-result|{rid}|found|\n"
    if key == "error":
        return f"{op}-result|{rid}|error|database unreachable\n"
    if key == "bare-error":
        return f"{op}-result|{rid}|error\n"
    if key == "history" and op == "lookup":
        return f"lookup-result|{rid}|found|{chr(9).join(HISTORY)}\n"
    if key.startswith("absent"):
        return f"{op}-result|{rid}|not-found\n"
    if op == "check":
        return f"check-result|{rid}|found\n"
    if mode == "argv":
        value = json.dumps(
            {"orig_argv0": sys.orig_argv[0], "argv": sys.argv, "tablename": tablename}
        )
        return f"lookup-result|{rid}|found|{value}\n"
    return f"lookup-result|{rid}|found|v:{key}\n"


def serve(mode: str) -> None:
    buffer = b""
    tablename = ""
    while True:
        chunk = os.read(0, 65536)
        if not chunk:
            sys.exit(2)
        buffer += chunk
        if b"config|ready\n" in buffer:
            head, _, buffer = buffer.partition(b"config|ready\n")
            head += b"config|ready\n"
            for line in head.decode().splitlines():
                HISTORY.append(line)
                if line.startswith("config|tablename|"):
                    tablename = line.split("|", 2)[2]
            break
    if mode == "hs-eof":
        sys.exit(3)
    if mode == "hs-silent":
        while os.read(0, 65536):
            pass
        sys.exit(0)
    registration = {
        "hs-none": "register|ready\n",
        "hs-unknown": "register|alias\nregister|bogus\nregister|ready\n",
        "hs-garbage": "register|alias\nhello\nregister|ready\n",
    }.get(mode, "".join(f"register|{s}\n" for s in SERVICES) + "register|ready\n")
    _write(registration)
    if mode == "hs-late-death":
        sys.exit(4)
    while True:
        while b"\n" not in buffer:
            chunk = os.read(0, 65536)
            if not chunk:
                return
            buffer += chunk
        *lines, rest = buffer.split(b"\n")
        buffer = rest
        texts = [raw.decode("utf-8", "surrogateescape") for raw in lines]
        replies = [_answer(mode, tablename, text) for text in texts]
        if mode == "reverse":
            replies.reverse()
            time.sleep(0.001)
        _write("".join(r for r in replies if r is not None))


if __name__ == "__main__":
    serve(sys.argv[1] if len(sys.argv) > 1 else "normal")
