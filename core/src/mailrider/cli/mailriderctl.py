"""``mailriderctl [-S statedir] [-j] command ...`` — the operator's tool (smtpctl's twin)."""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from typing import Any

from mailrider import __version__, paths
from mailrider.control_format import format_queue_line, invalid_id, socket_path
from mailrider.errors import ConfigError

#: every command, as fixed words; a trailing "*" takes one argument, "[*]" an optional one
COMMANDS = (
    "show queue [*]", "show envelope *", "show message *", "show stats", "show status",
    "schedule *", "remove *", "discover *",
    "pause mda", "pause mta", "pause smtp", "pause envelope *",
    "resume mda", "resume mta", "resume smtp", "resume envelope *",
    "update table *", "log verbose", "log brief", "trace *", "untrace *",
    "profile *", "unprofile *", "monitor", "encrypt [*]", "makemap", "newaliases", "sendmail",
)


def expand_abbreviations(words: list[str]) -> list[str]:
    """Commands may be abbreviated to any unambiguous prefix, as with smtpctl."""
    out: list[str] = []
    for i, word in enumerate(words):
        fixed = set()
        for c in COMMANDS:
            parts = c.split()
            if len(parts) > i and parts[:i] == out[:i] and not parts[i].endswith("*]") \
                    and parts[i] != "*":
                fixed.add(parts[i])
        if word in fixed or not fixed:
            out.append(word)
            continue
        matches = [f for f in fixed if f.startswith(word)]
        if len(matches) == 1:
            out.append(matches[0])
        else:
            out.append(word)
        if out[-1] in ("makemap", "sendmail", "newaliases", "encrypt"):
            return out + words[i + 1:]
    return out


def request(statedir: str, words: list[str], timeout: float = 30.0) -> dict[str, Any]:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(socket_path(statedir))
        s.sendall(json.dumps({"cmd": words}).encode() + b"\n")
        chunks = []
        while True:
            data = s.recv(65536)
            if not data:
                break
            chunks.append(data)
    finally:
        s.close()
    if not chunks:
        raise ConnectionError("no answer from the daemon")
    reply: dict[str, Any] = json.loads(b"".join(chunks))
    return reply


def monitor(statedir: str) -> int:
    """Print the daemon's counters every second until interrupted."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(socket_path(statedir))
    except OSError:
        print("mailriderd doesn't seem to be running", file=sys.stderr)
        return 1
    s.sendall(json.dumps({"cmd": ["monitor"]}).encode() + b"\n")
    f = s.makefile("rb")
    try:
        for raw in f:
            reply = json.loads(raw)
            for line in reply.get("lines", []):
                print(line, flush=True)
            if not reply.get("ok"):
                return 1
    except KeyboardInterrupt:
        pass
    finally:
        s.close()
    return 0


def encrypt(args: list[str]) -> int:
    """Print a SHA-512-crypt hash of the argument, or of each line of stdin."""
    try:
        from mailrider.crypto.shacrypt import hash_password
    except ImportError:
        print("encrypt: not available in this build", file=sys.stderr)
        return 1
    if args:
        print(hash_password(args[0]))
        return 0
    for line in sys.stdin:
        print(hash_password(line.rstrip("\n")))
    return 0


def offline_queue(statedir: str) -> list[str]:
    """``show queue`` while the daemon is down: read the spool directly."""
    from mailrider.queue.spool import Spool

    spool = Spool(os.path.join(statedir, "spool"), use_syncfs=False)
    if not os.path.isdir(spool.queue):
        return []
    lines = []
    for _msgid, envs in spool.walk():
        for env in envs:
            lines.append(format_queue_line(env, "offline", ""))
    return lines


def makemap(args: list[str]) -> int:
    from mailrider.table.makemap import makemap as build

    p = argparse.ArgumentParser(prog="mailriderctl makemap")
    p.add_argument("-t", dest="kind", choices=["aliases", "set", "map"], default="map")
    p.add_argument("-o", dest="output")
    p.add_argument("file")
    ns = p.parse_args(args)
    try:
        n = build(ns.file, ns.output, ns.kind)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"makemap: {exc}", file=sys.stderr)
        return 1
    print(f"{ns.output or ns.file + '.db'}: {n} keys", file=sys.stderr)
    return 0


def rebuild_aliases(args: list[str]) -> int:
    """newaliases: when the ``aliases`` table is a ``db:`` index, rebuild it from
    its text source (the same path without ``.db``) before the daemon reloads it."""
    from mailrider.config import parse_file
    from mailrider.table.makemap import makemap as build

    config_file = args[1] if args[:1] == ["-f"] and len(args) > 1 else paths.CONFIG_FILE
    if not os.path.exists(config_file):
        return 0
    try:
        table = parse_file(config_file).tables.get("aliases")
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    if table is None or table.backend != "db" or not table.path:
        return 0
    source = table.path[:-3] if table.path.endswith(".db") else table.path
    try:
        n = build(source, table.path, "aliases")
    except (ConfigError, OSError) as exc:
        print(f"newaliases: {exc}", file=sys.stderr)
        return 1
    print(f"{table.path}: {n} aliases", file=sys.stderr)
    return 0


def sendmail_command(args: list[str], statedir: str) -> int:
    from mailrider import sendmail

    status = sendmail.main(args, statedir)
    if status != -1:
        return status
    mode = sendmail.parse_args(args).mode
    if mode == "queue":
        return main(["-S", statedir, "show", "queue"])
    if mode == "aliases":
        return main(["-S", statedir, "update", "table", "aliases"])
    return smtp_on_stdio(statedir)


def smtp_on_stdio(statedir: str) -> int:
    """sendmail -bs: relay a raw SMTP session between stdin/stdout and the daemon."""
    import selectors

    from mailrider.sendmail import connect_local

    try:
        sock = connect_local(statedir)
    except OSError:
        print("421 4.3.2 mailriderd is not running\r", flush=True)
        return 75
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ)
    sel.register(sys.stdin.buffer, selectors.EVENT_READ)
    out = sys.stdout.buffer
    try:
        while True:
            for key, _ in sel.select():
                if key.fileobj is sock:
                    data = sock.recv(65536)
                    if not data:
                        return 0
                    out.write(data)
                    out.flush()
                else:
                    data = os.read(sys.stdin.fileno(), 65536)
                    if not data:
                        sock.shutdown(socket.SHUT_WR)
                        sel.unregister(sys.stdin.buffer)
                    else:
                        sock.sendall(data)
    finally:
        sock.close()


def main(argv: list[str] | None = None) -> int:
    try:
        return run(argv)
    except BrokenPipeError:
        # the reader went away (`mailriderctl show queue | head`): no traceback;
        # stdout points nowhere so that the interpreter's final flush is quiet
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def run(argv: list[str] | None = None) -> int:
    """mailriderctl itself (main() adds the quiet end on a closed pipe)."""
    args = list(sys.argv[1:] if argv is None else argv)
    prog = os.path.basename(sys.argv[0]) if argv is None else "mailriderctl"
    if prog == "sendmail":
        args = ["sendmail", *args]
    elif prog == "mailq":
        args = ["show", "queue", *args]
    elif prog == "makemap":
        return makemap(args)
    elif prog == "newaliases":
        args = ["newaliases", *args]
    statedir = paths.default_statedir()
    as_json = False
    while args and args[0].startswith("-"):
        opt = args.pop(0)
        if opt == "-S" and args:
            statedir = os.path.abspath(args.pop(0))
        elif opt == "-j":
            as_json = True
        elif opt in ("-h", "--help"):
            print(f"usage: mailriderctl [-S statedir] [-j] command [args ...]\n\n{__doc__}")
            return 0
        elif opt == "--version":
            print(f"mailriderctl {__version__}")
            return 0
        else:
            print(f"mailriderctl: unknown option {opt}", file=sys.stderr)
            return 2
    if not args:
        print("usage: mailriderctl [-S statedir] [-j] command [args ...]", file=sys.stderr)
        return 2
    args = expand_abbreviations(args)
    if args[0] == "makemap":
        return makemap(args[1:])
    if args[0] == "encrypt":
        return encrypt(args[1:])
    if args == ["monitor"]:
        return monitor(statedir)
    if args[0] == "sendmail":
        return sendmail_command(args[1:], statedir)
    if args[0] == "newaliases":
        status = rebuild_aliases(args[1:])
        if status:
            return status
        args = ["update", "table", "aliases"]
    bad = invalid_id(args)
    if bad is not None:
        print(f"mailriderctl: invalid id: {bad!r}", file=sys.stderr)
        return 1
    try:
        reply = request(statedir, args)
    except OSError:
        if args[:2] == ["show", "queue"]:
            for line in offline_queue(statedir):
                print(line)
            return 0
        print("mailriderd doesn't seem to be running", file=sys.stderr)
        return 1
    if as_json:
        print(json.dumps(reply, indent=2, sort_keys=True))
    elif args[:2] == ["show", "message"] and reply.get("ok"):
        sys.stdout.write("".join(f"{line}\n" for line in reply.get("lines", [])))
    else:
        for line in reply.get("lines", []):
            print(line)
    return 0 if reply.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
