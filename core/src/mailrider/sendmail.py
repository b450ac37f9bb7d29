"""The sendmail(8) interface: local submission for programs and users.

``mailriderctl sendmail ARGS`` (or the program invoked as ``sendmail``)
reads a message on standard input and hands it to the running daemon over
the control socket, which passes the connection to pony as a local SMTP
session. When the daemon is down the message goes to the offline queue
(``<statedir>/offline``), which the daemon submits at its next start.

This runs in the user's process: it may use the ``email`` package to read
headers for ``-t``, which the daemon itself never does with mail.
"""

from __future__ import annotations

import email.parser
import email.utils
import json
import os
import pwd
import secrets
import socket
import stat as st_mod
import sys
import time
from dataclasses import dataclass, field
from typing import BinaryIO

from mailrider import paths

OFFLINE = "offline"
#: offline files are refused above this size (the daemon's default max-message-size)
OFFLINE_MAX = 35 * 1024 * 1024


class SubmitError(Exception):
    """The daemon refused the message (the SMTP reply is the message)."""


@dataclass
class Options:
    sender: str | None = None
    fullname: str | None = None
    recipients: list[str] = field(default_factory=list)
    from_headers: bool = False  # -t
    ignore_dots: bool = False  # -i / -oi
    verbose: bool = False
    mode: str = "deliver"  # deliver, smtp (-bs), queue (-bp), aliases (-bi)


def parse_args(args: list[str]) -> Options:
    """sendmail(8) flags as users expect them; unknown -o options are ignored."""
    o = Options()
    i = 0
    while i < len(args):
        a = args[i]
        i += 1
        if a == "--":
            o.recipients += args[i:]
            break
        if not a.startswith("-") or a == "-":
            o.recipients.append(a)
            continue
        if a in ("-t",):
            o.from_headers = True
        elif a in ("-i", "-oi"):
            o.ignore_dots = True
        elif a == "-v":
            o.verbose = True
        elif a == "-bs":
            o.mode = "smtp"
        elif a == "-bp":
            o.mode = "queue"
        elif a == "-bi":
            o.mode = "aliases"
        elif a in ("-bm", "-odi", "-odb", "-odq", "-U", "-m", "-n"):
            pass
        elif a.startswith(("-f", "-r", "-F", "-o", "-B", "-N", "-R", "-V", "-X", "-L", "-q")):
            flag, value = a[:2], a[2:]
            if flag in ("-f", "-r", "-F", "-B", "-N", "-R", "-V", "-X", "-L") and not value:
                if i >= len(args):
                    raise ValueError(f"option {flag} needs an argument")
                value = args[i]
                i += 1
            if flag in ("-f", "-r"):
                o.sender = value
            elif flag == "-F":
                o.fullname = value
        else:
            raise ValueError(f"unknown option {a}")
    return o


def read_message(stream: BinaryIO, ignore_dots: bool) -> bytes:
    """Standard input up to EOF, or up to a lone "." line unless -i."""
    lines = []
    for line in stream:
        if not ignore_dots and line.rstrip(b"\r\n") == b".":
            break
        lines.append(line.rstrip(b"\r\n") + b"\n")
    return b"".join(lines)


def header_recipients(message: bytes) -> tuple[list[str], bytes]:
    """-t: To, Cc and Bcc addresses; Bcc lines are removed from the message."""
    head, sep, body = message.partition(b"\n\n")
    msg = email.parser.BytesHeaderParser().parsebytes(head + b"\n\n")
    values = []
    for name in ("To", "Cc", "Bcc"):
        values += [str(v) for v in msg.get_all(name, [])]
    rcpts = [addr for _, addr in email.utils.getaddresses(values) if addr]
    kept: list[bytes] = []
    skipping = False
    for line in head.split(b"\n"):
        if line[:1] in (b" ", b"\t"):
            if not skipping:
                kept.append(line)
            continue
        skipping = line.lower().startswith(b"bcc:")
        if not skipping:
            kept.append(line)
    return rcpts, b"\n".join(kept) + sep + body


def _is_header_line(line: bytes) -> bool:
    name, colon, _ = line.partition(b":")
    return bool(colon) and bool(name) and all(33 <= c <= 126 and c != 58 for c in name)


def complete_headers(message: bytes, sender: str, fullname: str | None) -> bytes:
    """Add From:, Date: and Message-ID: when the message lacks them."""
    head, sep, body = message.partition(b"\n\n")
    if not sep:
        head, body = message.rstrip(b"\n"), b""
    if head and not _is_header_line(head.split(b"\n", 1)[0]):
        head, body = b"", message
    lines = head.split(b"\n") if head else []
    names = {ln.split(b":", 1)[0].strip().lower() for ln in lines if _is_header_line(ln)}
    extra = []
    if b"from" not in names:
        extra.append(f"From: {email.utils.formataddr((fullname or '', sender))}")
    if b"date" not in names:
        extra.append(f"Date: {email.utils.formatdate(localtime=True)}")
    if b"message-id" not in names:
        domain = sender.rpartition("@")[2] or "localhost"
        extra.append(f"Message-ID: <{secrets.token_hex(12)}@{domain}>")
    lines += [e.encode("utf-8", "replace") for e in extra]
    return b"\n".join(lines) + b"\n\n" + body


def _reply(f: BinaryIO) -> tuple[int, str]:
    lines = []
    while True:
        line = f.readline(4096)
        if not line:
            raise SubmitError("connection closed by the daemon")
        lines.append(line.decode("utf-8", "replace").rstrip("\r\n"))
        if len(line) < 4 or line[3:4] != b"-":
            break
    try:
        return int(lines[-1][:3]), "\n".join(lines)
    except ValueError:
        raise SubmitError(f"bad reply: {lines[-1]!r}") from None


def submit(sock: socket.socket, sender: str, rcpts: list[str], message: bytes) -> str:
    """Speak SMTP on a local session: returns the final reply; raises SubmitError."""
    f = sock.makefile("rb")

    def cmd(line: str, ok: tuple[int, ...] = (250,)) -> str:
        sock.sendall(line.encode("utf-8", "surrogateescape") + b"\r\n")
        code, text = _reply(f)
        if code not in ok:
            raise SubmitError(text)
        return text

    code, text = _reply(f)
    if code != 220:
        raise SubmitError(text)
    cmd("EHLO localhost")
    cmd(f"MAIL FROM:<{sender}>")
    for r in rcpts:
        cmd(f"RCPT TO:<{r}>")
    cmd("DATA", (354,))
    out = bytearray()
    for line in message.split(b"\n")[:-1] if message.endswith(b"\n") else message.split(b"\n"):
        if line.startswith(b"."):
            out += b"."
        out += line.rstrip(b"\r") + b"\r\n"
    out += b".\r\n"
    sock.sendall(out)
    code, text = _reply(f)
    if code != 250:
        raise SubmitError(text)
    try:
        cmd("QUIT", (221,))
    except SubmitError:
        pass
    return text


def connect_local(statedir: str) -> socket.socket:
    """A local SMTP session through the control socket."""

    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(300)
    s.connect(paths.control_socket(statedir))
    s.sendall(json.dumps({"cmd": ["enqueue"]}).encode() + b"\n")
    return s


def write_offline(statedir: str, sender: str, rcpts: list[str], message: bytes) -> str:
    """Queue the message for the daemon's next start."""
    folder = os.path.join(statedir, OFFLINE)
    name = f"{int(time.time())}.{secrets.token_hex(8)}"
    path = os.path.join(folder, name)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        header = json.dumps({"sender": sender, "rcpts": rcpts}).encode() + b"\n"
        os.write(fd, header + message)
        os.fsync(fd)
    finally:
        os.close(fd)
    return path


class OfflineRefused(Exception):
    """An entry of the offline queue that is not a message we may read (the reason)."""


def read_offline(folder: int | str, name: str,
                 max_size: int = OFFLINE_MAX) -> tuple[int, str, list[str], bytes]:
    """Read one offline file safely: (owner uid, sender, recipients, message).

    The folder is writable by every local user, so an entry may be anything:
    a symlink to a secret, a hard link, a FIFO, a device, a directory, a file
    that keeps growing. The entry must be a regular file with one link (by
    ``lstat``, then by ``fstat`` of the descriptor opened without following
    links and without blocking, the same inode both times); at most the size
    checked is read, and a file that grew since is refused. ``folder`` is a
    descriptor of the folder (or its path). Raises :class:`OfflineRefused`.
    """
    if "/" in name or name in ("", ".", ".."):
        raise OfflineRefused("bad name")
    dir_fd = folder if isinstance(folder, int) else None
    path = name if dir_fd is not None else os.path.join(str(folder), name)
    try:
        before = os.stat(path, dir_fd=dir_fd, follow_symlinks=False)
    except OSError as exc:
        raise OfflineRefused(exc.strerror or "stat failed") from None
    if not st_mod.S_ISREG(before.st_mode):
        raise OfflineRefused("not a regular file")
    if before.st_nlink != 1:
        raise OfflineRefused("more than one link")
    if before.st_size > max_size:
        raise OfflineRefused("too large")
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, dir_fd=dir_fd)
    except OSError as exc:
        raise OfflineRefused(exc.strerror or "open failed") from None
    try:
        st = os.fstat(fd)
        if (st.st_ino, st.st_dev) != (before.st_ino, before.st_dev) \
                or not st_mod.S_ISREG(st.st_mode) or st.st_nlink != 1 \
                or st.st_size > max_size:
            raise OfflineRefused("changed while opened")
        data = bytearray()
        while len(data) < st.st_size:
            chunk = os.read(fd, min(1 << 20, st.st_size - len(data)))
            if not chunk:
                break
            data += chunk
        if len(data) != st.st_size or os.read(fd, 1):
            raise OfflineRefused("changed while read")
    except OSError as exc:
        raise OfflineRefused(exc.strerror or "read failed") from None
    finally:
        os.close(fd)
    head, _, message = bytes(data).partition(b"\n")
    try:
        meta = json.loads(head)
        sender = str(meta["sender"])
        rcpts = [str(r) for r in meta["rcpts"]]
    except (ValueError, KeyError, TypeError, RecursionError):
        raise OfflineRefused("bad header") from None
    if not rcpts or any(c in x for x in [sender, *rcpts] for c in "\r\n<>"):
        raise OfflineRefused("bad addresses")
    return st.st_uid, sender, rcpts, message


def main(args: list[str], statedir: str) -> int:
    try:
        o = parse_args(args)
    except ValueError as exc:
        print(f"sendmail: {exc}", file=sys.stderr)
        return 64  # EX_USAGE
    if o.mode in ("queue", "aliases", "smtp"):
        return -1  # the caller maps these to mailq / newaliases / a raw session
    user = pwd.getpwuid(os.getuid()).pw_name
    sender = o.sender if o.sender is not None else f"{user}@{socket.gethostname() or 'localhost'}"
    message = read_message(sys.stdin.buffer, o.ignore_dots)
    rcpts = list(o.recipients)
    if o.from_headers:
        found, message = header_recipients(message)
        rcpts += found
    if not rcpts:
        print("sendmail: no recipients", file=sys.stderr)
        return 64
    message = complete_headers(message, sender, o.fullname)
    try:
        sock = connect_local(statedir)
    except OSError:
        try:
            path = write_offline(statedir, sender, rcpts, message)
        except OSError as exc:
            print(f"sendmail: daemon not running and offline queue unusable: {exc}",
                  file=sys.stderr)
            return 75  # EX_TEMPFAIL
        if o.verbose:
            print(f"sendmail: daemon not running, queued offline as {path}", file=sys.stderr)
        return 0
    try:
        text = submit(sock, sender, rcpts, message)
    except (SubmitError, OSError) as exc:
        print(f"sendmail: {exc}", file=sys.stderr)
        return 75
    finally:
        sock.close()
    if o.verbose:
        print(text, file=sys.stderr)
    return 0
