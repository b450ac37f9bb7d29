"""``mailriderd [-dnv] [-f file] [-D macro=value] [-S statedir]``: argv parsing and start-up."""

from __future__ import annotations

import asyncio
import os
import resource
import socket
import sys
from collections.abc import Callable
from functools import partial

from mailrider import limits, log, malloc, paths
from mailrider.config import resolve_listener
from mailrider.config.model import Config
from mailrider.config.relay import check_relay_urls
from mailrider.config.tls import needs_tls
from mailrider.control_format import socket_path
from mailrider.crypto import delegate
from mailrider.crypto.dkimkeys import load_dkim_keys
from mailrider.crypto.keys import KeyStore
from mailrider.errors import ConfigError
from mailrider.filter.programs import check_programs
from mailrider.proc import common
from mailrider.proc.child import preload, run_profiled
from mailrider.proc.parent import Parent, bind_listeners, bind_metrics
from mailrider.table.registry import check_tables


def _running(statedir: str) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(socket_path(statedir))
        return True
    except OSError:
        return False
    finally:
        s.close()


def check(opts: common.Options) -> Config:
    """Everything ``-n`` checks, which start checks too before it forks a
    child: grammar, supported features, TLS settings (parser), tables (files
    read, db files opened, backend programs runnable by the program user),
    filter programs (found, runnable by their user), relay URLs, pki
    certificates and keys and dkim keys (loaded as klondike will), listen
    addresses.
    Returns the configuration."""
    config = common.load_config(opts)
    check_tables(config, reader=common.unprivileged_user(), runner=common.ext_user())
    check_relay_urls(config)
    check_programs(config, common.ext_user())
    for name, pki in config.pkis.items():
        for what, path in (("certificate", pki.cert), ("key", pki.key)):
            if path is None:
                raise ConfigError(f"pki {name}: no {what}", pki.where.file, pki.where.line)
            if not os.access(path, os.R_OK):
                raise ConfigError(f"pki {name}: cannot read {what} {path}", pki.where.file,
                                  pki.where.line)
    _check_keys(config)
    _check_dkim_keys(config)
    _check_queue_key(config)
    check_delegation(config)
    for lst in config.listeners:
        if lst.address != "socket":
            resolve_listener(lst)
    return config


def _check_queue_key(config: Config) -> None:
    """``queue encryption KEY``: the key must be usable (the message never
    repeats the key: it is a secret)."""
    from mailrider.crypto import libcrypto
    from mailrider.queue.codec import parse_key

    if not config.queue_encryption:
        return
    where = config.option_where.get("queue encryption")
    file, line = (where.file, where.line) if where is not None else (config.file, 0)
    if not libcrypto.available():
        raise ConfigError("queue encryption needs OpenSSL's libcrypto: "
                          + libcrypto.unavailable_reason(), file, line)
    if config.queue_key is not None:
        try:
            parse_key(config.queue_key)
        except ValueError as exc:
            raise ConfigError(f"queue encryption: {exc}", file, line) from None


def read_queue_key(config: Config) -> None:
    """``queue encryption`` without a key in the file: read it now, before
    detaching, as OpenSMTPD does (a prompt on a terminal, else one line of
    stdin). Raises ConfigError for a missing or unusable key."""
    from mailrider.queue.codec import parse_key

    if not config.queue_encryption or config.queue_key is not None:
        return
    if sys.stdin is None:
        raise ConfigError("queue encryption: no key in the configuration and no stdin")
    if sys.stdin.isatty():
        import getpass

        key = getpass.getpass("queue key: ")
    else:
        key = sys.stdin.readline(256).rstrip("\r\n")
    try:
        parse_key(key)
    except ValueError as exc:
        raise ConfigError(f"queue encryption: {exc}") from None
    config.queue_key = key


#: what key delegation needs, for the messages of -n (docs/ports.md §4)
DELEGATION_NEEDS = ("CPython with a dynamically linked OpenSSL 1.1.1 or 3.x, or LibreSSL 3.5 "
                    "or later (tested on Linux)")


def tls_pkis(config: Config) -> list[str]:
    """The pki whose keys pony's TLS uses: those of listeners offering TLS
    (their ``pki``, else every pki) and of ``relay pki``."""
    names: list[str] = []
    for lst in config.listeners:
        if needs_tls(lst):
            names += lst.pki or list(config.pkis)
    for action in config.actions.values():
        pki = action.relay.get("pki")
        if isinstance(pki, str):
            names.append(pki)
    return [n for n in dict.fromkeys(names) if n in config.pkis]


def check_delegation(config: Config) -> str:
    """Whether TLS keys can stay in klondike here (processes.md §5). When they
    cannot, the pki that need them are a ConfigError unless ``smtp
    key-in-process`` (or the tests' MAILRIDER_KEY_IN_PROCESS=force) lets pony
    load them; then the warning -n prints is returned ("" otherwise)."""
    names = tls_pkis(config)
    if not names:
        return ""
    forced = os.environ.get(limits.KEY_IN_PROCESS_ENV, "") == "force"
    reason = (f"{limits.KEY_IN_PROCESS_ENV}=force (benchmarks/tests only)" if forced
              else delegate.unavailable_reason())
    if not reason:
        return ""
    if not (config.key_in_process or forced):
        pki = config.pkis[names[0]]
        raise ConfigError(f"pki {names[0]}: TLS keys cannot stay out of the SMTP process "
                          f"here ({reason}); that needs {DELEGATION_NEEDS}. "
                          "'smtp key-in-process' lets pony load them instead",
                          pki.where.file, pki.where.line)
    return (f"mailriderd: warning: the keys of pki {', '.join(names)} will be loaded into "
            f"pony, the SMTP process ('smtp key-in-process'): delegation to klondike is "
            f"unavailable here ({reason}); it needs {DELEGATION_NEEDS}")


def _check_keys(config: Config) -> None:
    """Load every pki's certificate and key as klondike will at start, in a
    forked child: the checking process (at start the parent, which forks
    deliveries later) never holds key bytes (processes.md §5)."""
    for name, pki in sorted(config.pkis.items()):
        cert, key = pki.cert, pki.key
        if cert is None or key is None:
            continue
        error = _in_child(partial(_load_key, name, cert, key))
        if error is not None:
            raise ConfigError(f"pki {name}: {error}", pki.where.file, pki.where.line)


def _check_dkim_keys(config: Config) -> None:
    """Load the ``dkim`` keys as klondike will, in a forked child (docs/dkim.md §2):
    an unreadable key, or one of another kind than its algorithm, is refused
    at the statement's line."""
    for name, entry in sorted(config.dkims.items()):
        error = _in_child(partial(_load_dkim_key, config, name))
        if error is not None:
            if not error.startswith(f"dkim {name}: "):
                error = f"dkim {name}: {error}"
            raise ConfigError(error, entry.where.file, entry.where.line)


def _load_dkim_key(config: Config, name: str) -> None:
    load_dkim_keys({name: config.dkims[name]})


def _load_key(name: str, cert: str, key: str) -> None:
    KeyStore().load(name, cert, key)


def _in_child(run: Callable[[], object]) -> str | None:
    """Run ``run`` in a forked child; its ConfigError's message (or another
    error's text), or None when it succeeded."""
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child, reported through the pipe
        os.close(rfd)
        code = 1
        try:
            try:
                run()
                code = 0
            except ConfigError as exc:
                os.write(wfd, exc.message.encode("utf-8", "replace")[:4096])
            except Exception as exc:  # reported as one line, never a traceback
                os.write(wfd, str(exc).encode("utf-8", "replace")[:4096])
        finally:
            os._exit(code)
    os.close(wfd)
    with os.fdopen(rfd, "rb") as f:
        text = f.read(8192).decode("utf-8", "replace")
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) == 0:
        return None
    return text or "the check failed"


def _daemonize(logfile: str | None = None) -> None:
    """Detach; stdout and stderr go to ``logfile`` when given (every process
    inherits them: log.setup writes to stderr without a syslog socket), else
    to /dev/null."""
    out = os.open(logfile, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640) \
        if logfile else None
    if os.fork():
        os._exit(0)
    os.setsid()
    if os.fork():
        os._exit(0)
    fd = os.open(os.devnull, os.O_RDWR)
    os.dup2(fd, 0)
    for target in (1, 2):
        os.dup2(out if out is not None else fd, target)
    for extra in (fd, out):
        if extra is not None and extra > 2:
            os.close(extra)


def _fallback_log(opts: common.Options) -> str | None:
    """Daemon mode without a syslog socket: the file to log to, said on stderr
    before detaching (once detached, stderr is gone)."""
    if opts.foreground or os.path.exists(paths.SYSLOG_SOCKET):
        return None
    path = paths.fallback_log(opts.statedir)
    print(f"mailriderd: no syslog socket at {paths.SYSLOG_SOCKET}: logging to {path}",
          file=sys.stderr)
    return path


def main(argv: list[str] | None = None) -> int:
    opts = common.parse_options(list(sys.argv[1:] if argv is None else argv))
    if opts.check_only:
        try:
            config = check(opts)
        except ConfigError as exc:
            print(exc, file=sys.stderr)
            return 1
        warning = check_delegation(config)
        if warning:
            print(warning, file=sys.stderr)
        if config.file == "<built-in>":
            print(f"configuration OK (the built-in configuration: there is no {paths.CONFIG_FILE})")
        else:
            print("configuration OK")
        return 0
    malloc.tune()  # big read buffers from the heap, not mmap (mailrider.malloc)
    log.setup("parent", foreground=opts.foreground, verbose=opts.verbose > 0)
    try:
        config = check(opts)  # what -n refuses never gets as far as a child
        read_queue_key(config)
        if _running(opts.statedir):
            print(f"mailriderd: already running (control socket in {opts.statedir})",
                  file=sys.stderr)
            return 1
        parent = Parent(opts, config)
        parent.prepare_statedir()
        listeners = bind_listeners(config)
        metrics_socks = bind_metrics(config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"mailriderd: {exc}", file=sys.stderr)
        return 1
    addrs = ", ".join(f"{s.getsockname()[0]}:{s.getsockname()[1]}" for _, s in listeners)
    print(f"mailriderd: state folder {opts.statedir}", file=sys.stderr)
    print(f"mailriderd: listening on {addrs or 'nothing'}", file=sys.stderr)
    if opts.config_file is None and config.file == "<built-in>":
        print(f"mailriderd: built-in configuration: mail for <user>@localhost is delivered to "
              f"{os.path.join(opts.statedir, 'maildir', '<user>')}", file=sys.stderr)
    _raise_nofile()
    if os.geteuid() == 0:
        # deliveries are forked from the parent and switch to the recipient's
        # user: everything they import must already be loaded (the interpreter's
        # files may be unreadable to that user, e.g. a venv under /root)
        preload("parent")
    if not opts.foreground:
        try:
            _daemonize(_fallback_log(opts))
        except OSError as exc:
            print(f"mailriderd: cannot open the log file {exc.filename}: {exc.strerror}",
                  file=sys.stderr)
            return 1
    common.set_title("parent")

    async def _main() -> int:
        await parent.start(listeners, metrics_socks)
        log.event("parent", "started", pid=os.getpid(), statedir=opts.statedir, listen=addrs)
        return await parent.run()

    try:
        # MAILRIDER_PROFILE (benchmarks): the parent's event loop too
        return run_profiled("parent", lambda: asyncio.run(_main()))
    except KeyboardInterrupt:
        return 0


def _raise_nofile() -> None:
    """Every SMTP session holds a descriptor: take the hard limit for the
    soft one, as OpenSMTPD does at start; the children inherit it."""
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY or hard > soft:
            # RLIM_INFINITY is refused for RLIMIT_NOFILE on Linux: cap it
            target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            log.event("parent", "nofile-raised", soft=soft, new=target)
    except (OSError, ValueError) as exc:
        log.warning("parent", "nofile-raise-failed", error=str(exc))


if __name__ == "__main__":
    sys.exit(main())
