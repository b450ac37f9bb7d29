"""Entry point of every child process: ``python -m mailrider.proc.child -x ROLE ...``."""

from __future__ import annotations

import asyncio
import gc
import importlib
import os
import pkgutil
import sys
from collections.abc import Callable

import mailrider
from mailrider import log, malloc
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
    try:
        opts = common.child_options(rest)
    except ValueError as exc:
        print(f"mailrider.proc.child: {exc}", file=sys.stderr)
        return 2
    malloc.tune()  # big read buffers from the heap, not mmap (mailrider.malloc)
    common.set_title(role)
    confine.set_nondumpable()
    log.setup(role, foreground=opts.foreground, verbose=opts.verbose > 0)
    try:
        config = common.load_config(opts)
        # the queue key comes from the parent, to the queue only (docs/security.md)
        config.queue_key = None
        module = importlib.import_module(f"mailrider.proc.{role}")
        cls: type[common.Process] = module.PROCESS
        return run_profiled(role, lambda: asyncio.run(_serve(cls, opts, config, fds)))
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


def run_profiled(role: str, run: Callable[[], int]) -> int:
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
#: codecs) that every process must load before the privilege drop: after it,
#: the interpreter's own files are out of reach (the chroot, or a Python
#: installed under a private home folder)
PRELOAD = (
    "concurrent.futures.thread", "encodings.idna", "encodings.ascii", "encodings.latin_1",
    "json", "asyncio.subprocess", "asyncio.unix_events", "ipaddress", "hashlib", "hmac",
    "secrets", "shlex", "ssl", "zlib", "base64",
    # codecs are imported at their first use: an SMTPUTF8 domain is measured as
    # punycode, data may be decoded as UTF-16/32 or with a BOM
    "encodings.punycode", "encodings.utf_8_sig", "encodings.utf_16", "encodings.utf_32",
    "encodings.raw_unicode_escape", "encodings.unicode_escape", "stringprep", "unicodedata",
)

#: the standard library's own lazy imports behind what some roles use
_EMAIL = ("email.utils", "email.message", "email.parser", "email._parseaddr", "email.charset",
          "email.header", "datetime", "calendar")
_TABLES = ("sqlite3", "dbm", "importlib.metadata", "decimal", "uuid", "datetime")

#: what each process imports before it is confined: the mailrider modules its
#: role reaches (a name ending in "." is every module of that package; other
#: names are prefixes of module names, so ``mailrider.proc.pony`` is also
#: ``pony_tls``), then standard-library modules. A process imports what its
#: role uses and no more (docs/performance.md §1);
#: core/tests/proc/test_role_imports.py checks that every import statement a
#: role's code can reach is covered, and that a role leaves out what it must not
#: load (the SMTP server in lka, the spool in pony).
_CHILD = ("mailrider.proc.child", "mailrider.proc.common", "mailrider.proc.confine",
          "mailrider.config.", "mailrider.ipc.", "mailrider.errors", "mailrider.limits",
          "mailrider.log", "mailrider.paths", "mailrider.profile", "mailrider.smtp.reply",
          # config.tls reads a certificate's key size and DH groups for pki ... dhe
          "mailrider.crypto.der", "importlib.resources")
_DELIVERY = ("mailrider.delivery.", "mailrider.syncfs")
ROLE_MODULES: dict[str, tuple[str, ...]] = {
    "control": (*_CHILD, "mailrider.proc.control", "mailrider.queue.envelope"),
    "lka": (*_CHILD, *_DELIVERY, *_TABLES,
            "mailrider.proc.lka", "mailrider.proc.workers", "mailrider.access",
            "mailrider.crypto.passwords", "mailrider.crypto.shacrypt",
            "mailrider.crypto.syscrypt", "mailrider.dns.", "mailrider.filter.",
            "mailrider.table.base", "mailrider.table.db", "mailrider.table.file",
            "mailrider.table.getpwnam", "mailrider.table.match", "mailrider.table.proc",
            "mailrider.table.registry", "mailrider.table.static", "mailrider.table.usage",
            "mailrider.table.values"),
    # queue encryption: AES-256-GCM through libcrypto (queue/codec.py)
    "queue": (*_CHILD, *_EMAIL, "mailrider.proc.queue", "mailrider.queue.", "mailrider.syncfs",
              "mailrider.crypto.libcrypto"),
    "scheduler": (*_CHILD, "mailrider.proc.scheduler", "mailrider.queue.envelope",
                  "mailrider.queue.schedule"),
    "pony": (*_CHILD, *_EMAIL,
             "mailrider.proc.pony", "mailrider.smtp.", "mailrider.queue.envelope",
             "mailrider.crypto.delegate", "mailrider.crypto.der", "mailrider.crypto.libcrypto",
             "mailrider.crypto.signclient", "mailrider.table.values",
             # DANE (docs/dane.md): TLSA matching and DANE-TA path checks
             "mailrider.crypto.dane", "mailrider.crypto.x509chain",
             # MTA-STS (proc/pony_mtasts.py): the policy parser and the HTTPS fetch
             "mailrider.mtasts", "http.client"),
    # mailriderd: its checks (those of -n) and the programs; the deliveries
    # and ~/.forward reads it forks as other users. Not the children's code:
    # they are forked by the start-up server or start as fresh interpreters
    # (test_role_imports.py checks that every import mailriderd reaches is here)
    "parent": (*_CHILD, *_DELIVERY, *_EMAIL, *_TABLES,
               # getpass: the queue key read at start (queue encryption)
               "argparse", "getpass", "mailrider.cli.mailriderd", "mailrider.proc.parent",
               "mailrider.proc.workers",
               "mailrider.access", "mailrider.crypto.", "mailrider.filter.programs",
               "mailrider.queue.envelope", "mailrider.queue.codec", "mailrider.sendmail",
               "mailrider.table.base", "mailrider.table.db",
               "mailrider.table.getpwnam",
               "mailrider.table.match", "mailrider.table.proc", "mailrider.table.registry",
               "mailrider.table.static", "mailrider.table.values"),
    "klondike": (*_CHILD, "mailrider.proc.klondike", "mailrider.crypto.der",
                 "mailrider.crypto.keys", "mailrider.crypto.libcrypto", "mailrider.crypto.rsa"),
}


def role_module_names(role: str) -> list[str]:
    """Every module :func:`preload` imports for ``role``, in order."""
    if role == "all":
        wanted: tuple[str, ...] = ("mailrider.", *_EMAIL, *_TABLES)
    else:
        wanted = ROLE_MODULES[role]
    names = list(PRELOAD) + [w for w in wanted if not w.startswith("mailrider")]
    prefixes = tuple(w for w in wanted if w.startswith("mailrider"))
    # pkgutil.walk_packages would import every package to list it
    todo = [("mailrider.", list(mailrider.__path__))]
    while todo:
        prefix, path = todo.pop(0)
        for info in pkgutil.iter_modules(path, prefix):
            name = info.name
            if name.startswith("mailrider.__main__") or (
                    name.startswith("mailrider.cli") and role != "parent"):
                continue
            if any(name == p.rstrip(".") or name.startswith(p) for p in prefixes):
                names.append(name)
            if info.ispkg:
                todo.append((name + ".", [os.path.join(path[0], name.rpartition(".")[2])]))
    return names


def preload(role: str = "all") -> None:
    """Import what ``role`` uses (see :data:`ROLE_MODULES`), from the mailrider
    package and the lazily used standard library; ``all``: every module."""
    for name in role_module_names(role):
        try:
            importlib.import_module(name)
        except ImportError as exc:
            if name.startswith("mailrider."):
                log.warning("child", "preload-failed", module=name, error=str(exc))


async def _serve(cls: type[common.Process], opts: common.Options, config: object,
                 fds: dict[str, int]) -> int:
    proc = cls(opts, config)  # type: ignore[arg-type]
    await proc.setup()
    pw = common.role_user(proc.role)
    if pw is not None:
        preload(proc.role)
        proc.before_confine()
    confine.confine(proc.role, pw, chroot=proc.chroot_dir(), landlock_fs=proc.landlock_fs,
                    deny_net=proc.landlock_net)
    proc.connect(fds)
    common.install_stop_signals(proc.stopping.set)
    # what the set-up left (modules, configuration) lives as long as the process:
    # out of the collector's reach, a full collection only walks what came after
    # it, and never writes to the pages shared with the start-up server's other
    # children (docs/performance.md §1)
    gc.collect()
    gc.freeze()
    log.debug(proc.role, "started", pid=os.getpid())
    try:
        await proc.run()
    finally:
        await proc.teardown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
