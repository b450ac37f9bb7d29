"""Entry point of every child process: ``python -m mailrider.proc.child -x ROLE ...``."""

from __future__ import annotations

import asyncio
import importlib
import os
import pkgutil
import sys
from collections.abc import Callable

import mailrider
from mailrider import log
from mailrider.errors import ConfigError
from mailrider.proc import common, confine


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 4 or args[0] != "-x" or args[2] != "--fds":
        print("usage: python -m mailrider.proc.child -x ROLE --fds peer=fd,... OPTIONS",
              file=sys.stderr)
        return 2
    role, fdspec, rest = args[1], args[3], args[4:]
    if role not in common.ROLES:
        print(f"unknown role {role}", file=sys.stderr)
        return 2
    fds = {p: int(f) for p, f in (x.split("=") for x in fdspec.split(",") if x)}
    opts = common.parse_options(rest)
    common.set_title(role)
    confine.set_nondumpable()
    log.setup(role, foreground=opts.foreground, verbose=opts.verbose > 0)
    try:
        config = common.load_config(opts)
        # the queue key comes from the parent, to the queue only (docs/security.md)
        config.queue_key = None
        module = importlib.import_module(f"mailrider.proc.{role}")
        cls: type[common.Process] = module.PROCESS
        return _run_profiled(role, lambda: asyncio.run(_serve(cls, opts, config, fds)))
    except ConfigError as exc:
        config_error(role, opts, exc)
        return 1
    except KeyboardInterrupt:
        return 0


def config_error(role: str, opts: common.Options, exc: ConfigError) -> None:
    """A configuration error at start: the one line ``file:line: message``
    (as ``mailriderd -n`` prints it) on the terminal in the foreground, else
    in the log; never a traceback."""
    if opts.foreground:
        print(exc, file=sys.stderr, flush=True)
    else:
        log.error(role, "config-error", error=str(exc))


def _run_profiled(role: str, run: Callable[[], int]) -> int:
    """Run ``run``; under MAILRIDER_PROFILE=DIR with cProfile, dumped to DIR/<role>.prof.

    For benchmarks (tools/bench). The file is opened before the privilege drop
    and the chroot, which would put DIR out of reach. Only the main thread is
    profiled (work handed to asyncio.to_thread shows up as loop waiting).
    """
    outdir = os.environ.get("MAILRIDER_PROFILE", "")
    if not outdir:
        return run()
    import cProfile
    import marshal

    try:
        out = open(os.path.join(outdir, f"{role}.prof"), "wb")
    except OSError as exc:
        log.warning(role, "profile-dump-failed", error=str(exc))
        return run()
    prof = cProfile.Profile()
    prof.enable()
    try:
        return run()
    finally:
        prof.disable()
        try:
            with out:
                prof.create_stats()
                marshal.dump(prof.stats, out)
        except OSError as exc:
            log.warning(role, "profile-dump-failed", error=str(exc))


#: standard-library modules imported lazily at run time (by asyncio, sockets,
#: sqlite, email, codecs) that must be loaded before the privilege drop: after
#: it, the interpreter's own files are out of reach (the chroot, or a Python
#: installed under a private home folder)
PRELOAD = (
    "concurrent.futures.thread", "encodings.idna", "encodings.ascii", "encodings.latin_1",
    "email.utils", "email.message", "email.parser", "sqlite3", "importlib.metadata",
    "json", "asyncio.subprocess", "asyncio.unix_events", "ipaddress", "hashlib", "hmac",
    "secrets", "shlex", "ssl", "zlib", "base64", "uuid", "decimal", "dbm",
    # codecs are imported at their first use: an SMTPUTF8 domain is measured as
    # punycode, data may be decoded as UTF-16/32 or with a BOM
    "encodings.punycode", "encodings.utf_8_sig", "encodings.utf_16", "encodings.utf_32",
    "encodings.raw_unicode_escape", "encodings.unicode_escape", "stringprep", "unicodedata",
    "email._parseaddr", "email.charset", "email.header", "datetime", "calendar",
)


def preload() -> None:
    """Import every mailrider module and the lazily used standard library."""
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    for info in pkgutil.walk_packages(mailrider.__path__, "mailrider."):
        if info.name.startswith(("mailrider.cli", "mailrider.__main__")):
            continue
        try:
            importlib.import_module(info.name)
        except ImportError as exc:
            log.warning("child", "preload-failed", module=info.name, error=str(exc))


async def _serve(cls: type[common.Process], opts: common.Options, config: object,
                 fds: dict[str, int]) -> int:
    proc = cls(opts, config)  # type: ignore[arg-type]
    await proc.setup()
    pw = common.role_user(proc.role)
    if pw is not None:
        preload()
        proc.before_confine()
    confine.confine(proc.role, pw, chroot=proc.chroot_dir(), landlock_fs=proc.landlock_fs,
                    deny_net=proc.landlock_net)
    proc.connect(fds)
    common.install_stop_signals(proc.stopping.set)
    log.debug(proc.role, "started", pid=os.getpid())
    try:
        await proc.run()
    finally:
        await proc.teardown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
