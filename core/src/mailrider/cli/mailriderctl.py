"""``mailriderctl [-S statedir] [-j] command ...`` — the operator's tool (smtpctl's twin).

The command line follows smtpctl's grammar (:data:`COMMANDS`): a script
written for smtpctl gets the same output, and a command line outside the
grammar the same message on stderr and exit status 255.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from typing import Any

from mailrider import __version__, paths
from mailrider.errors import ConfigError
from mailrider.proc.control import format_queue_line, socket_path

#: smtpctl's grammar (smtpctl(8)), in its order: fixed words and the
#: arguments <evpid> (16 hex digits), <msgid> (8), <routeid> (a number),
#: <str> (any word); <args> takes the rest of the command line as it is
COMMANDS = (
    "discover <evpid>", "discover <msgid>",
    "log brief", "log verbose", "monitor",
    "pause envelope <evpid>", "pause envelope <msgid>", "pause envelope all",
    "pause mda", "pause mta", "pause smtp", "profile <str>",
    "remove <evpid>", "remove <msgid>", "remove all",
    "resume envelope <evpid>", "resume envelope <msgid>", "resume envelope all",
    "resume mda", "resume mta", "resume route", "resume route <routeid>", "resume smtp",
    "schedule <msgid>", "schedule <evpid>", "schedule all",
    "show envelope <evpid>", "show hoststats", "show message <msgid>",
    "show message <evpid>", "show queue", "show queue <msgid>", "show hosts", "show relays",
    "show routes", "show stats", "show status",
    "trace <str>", "unprofile <str>", "untrace <str>", "update table <str>",
    "encrypt", "encrypt <str>", "spf walk",
    "makemap <args>", "newaliases <args>", "sendmail <args>",
)
#: commands run by mailriderctl itself, without the daemon
LOCAL_COMMANDS = ("encrypt", "spf walk", "makemap", "newaliases", "sendmail")
#: exit status of a command line the grammar refuses (smtpctl's -1)
EXIT_BAD_COMMAND = 255
#: what ``trace`` and ``profile`` take (smtpctl's keywords, and ours)
TRACE_KEYWORDS = ("imsg", "io", "smtp", "filters", "mta", "bounce", "scheduler", "lookup",
                  "stat", "rules", "mproc", "expand", "all", "queue", "delivery", "lka")
PROFILE_KEYWORDS = ("imsg", "queue", "all")


class BadCommand(Exception):
    """The command line is not in the grammar; ``lines`` say why, as smtpctl does."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


def _is_hex(word: str, size: int) -> bool:
    return len(word) == size and all(c in "0123456789abcdefABCDEF" for c in word) \
        and int(word, 16) != 0


def _fits(placeholder: str, word: str) -> bool:
    if placeholder == "<evpid>":
        return _is_hex(word, 16)
    if placeholder == "<msgid>":
        return _is_hex(word, 8)
    if placeholder == "<routeid>":
        return word.isdigit() and int(word) > 0
    return placeholder in ("<str>", "<args>")


def _children(prefix: list[str]) -> list[str]:
    """The next word of every command that starts with ``prefix``, in order, once each."""
    out: list[str] = []
    for c in COMMANDS:
        parts = c.split()
        if len(parts) > len(prefix) and parts[:len(prefix)] == prefix \
                and parts[len(prefix)] not in out:
            out.append(parts[len(prefix)])
    return out


def parse_command(words: list[str]) -> list[str]:
    """The command ``words`` names, with abbreviations expanded and ids in lower case.

    As smtpctl's parser: at each word, the first pattern word it fits (a
    fixed word exactly, or an argument of the right shape); else the one
    fixed word it is a prefix of. Raises :class:`BadCommand` with smtpctl's
    message ("possibilities are:" and the choices, or "invalid command") when
    nothing fits, an abbreviation is ambiguous or the command is incomplete.
    """
    path: list[str] = []  # the pattern words matched
    out: list[str] = []
    for i, word in enumerate(words):
        choices = _children(path)
        fit = next((c for c in choices if c == word or (c.startswith("<") and _fits(c, word))),
                   None)
        if fit is None:
            fixed = [c for c in choices if not c.startswith("<") and c.startswith(word) and word]
            if len(fixed) > 1:
                raise BadCommand([f"ambiguous abbreviation: {word}", "possibilities are:",
                                  *(" ".join([*out, c]) for c in fixed)])
            if not fixed:
                raise BadCommand(_possibilities(out, choices))
            fit = fixed[0]
        path.append(fit)
        if fit == "<args>":
            return out + words[i:]
        if fit in ("<evpid>", "<msgid>"):
            out.append(word.lower())
        else:
            out.append(word if fit.startswith("<") else fit)
    if " ".join(path) not in COMMANDS and " ".join([*path, "<args>"]) not in COMMANDS:
        raise BadCommand(_possibilities(out, _children(path)))
    return out


def _possibilities(done: list[str], choices: list[str]) -> list[str]:
    if not choices:
        return ["invalid command"]
    return ["possibilities are:", *(" ".join([*done, c]) for c in choices)]


def usage_text() -> str:
    """``--help``: the synopsis and every command."""
    lines = ["usage: mailriderctl [-j] [-S statedir] command [argument ...]",
             "       mailriderctl --version", "", "commands:"]
    for c in COMMANDS:
        if c.endswith("<args>"):
            c = c.replace("<args>", "[argument ...]")
        lines.append(f"  {c}")
    return "\n".join(lines) + "\n"


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
    if args == ["--version"]:
        # under every name: mailriderctl, mailq, sendmail, makemap, newaliases
        print(f"{prog} {__version__}")
        return 0
    if prog == "sendmail" or prog == "send-mail":
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
            print(usage_text(), end="")
            return 0
        elif opt == "--version":
            print(f"mailriderctl {__version__}")
            return 0
        else:
            print(f"mailriderctl: unknown option {opt}", file=sys.stderr)
            print(usage_text(), end="", file=sys.stderr)
            return 2
    if not args:
        print(usage_text(), end="", file=sys.stderr)
        return 2
    try:
        args = parse_command(args)
    except BadCommand as exc:
        print("\n".join(exc.lines), file=sys.stderr)
        return EXIT_BAD_COMMAND
    if args[0] == "makemap":
        return makemap(args[1:])
    if args[0] == "encrypt":
        return encrypt(args[1:])
    if args == ["spf", "walk"]:
        from mailrider.cli import spfwalk

        return spfwalk.main(sys.stdin, sys.stdout)
    if args[0] in ("trace", "untrace") and args[1] not in TRACE_KEYWORDS:
        print(f"mailriderctl: invalid trace keyword: {args[1]}", file=sys.stderr)
        return 1
    if args[0] in ("profile", "unprofile") and args[1] not in PROFILE_KEYWORDS:
        print(f"mailriderctl: invalid profile keyword: {args[1]}", file=sys.stderr)
        return 1
    if args == ["monitor"]:
        return monitor(statedir)
    if args[0] == "sendmail":
        return sendmail_command(args[1:], statedir)
    if args[0] == "newaliases":
        status = rebuild_aliases(args[1:])
        if status:
            return status
        args = ["update", "table", "aliases"]
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
