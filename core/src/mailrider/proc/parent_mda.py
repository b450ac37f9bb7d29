"""Local deliveries, forked by the parent as the recipient's user.

pony asks; the parent forks a short-lived child that switches to the user's
uid/gid (when the daemon runs as root), performs the delivery with the
functions of :mod:`mailrider.delivery` on the message descriptor pony handed
over, writes one JSON line with the outcome to a pipe, and exits. The parent
never blocks on the delivery itself.
"""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import signal
import stat
from typing import TYPE_CHECKING, Any

from mailrider import log, paths
from mailrider.errors import PermFail, TempFail
from mailrider.ipc import messages as m

if TYPE_CHECKING:
    from mailrider.proc.parent import Parent

_FORWARD_MAX = 64 * 1024


def read_forward(user: str, home: str) -> str | None:
    """The user's ~/.forward if safe: owned by the user or root, not group/world-writable."""
    path = os.path.join(home, ".forward")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        try:
            uid = pwd.getpwnam(user).pw_uid
        except KeyError:
            return None
        if st.st_uid not in (uid, 0) or st.st_mode & 0o022 or not stat.S_ISREG(st.st_mode):
            log.warning("lka", "forward-unsafe", user=user)
            return None
        return os.read(fd, _FORWARD_MAX).decode("utf-8", "replace")
    finally:
        os.close(fd)


def _deliver(config: Any, env: dict[str, str], msg_fd: int) -> tuple[str, str]:
    """Runs in the forked child, as the user. Returns (status, text)."""
    from mailrider.delivery import common as dcommon
    from mailrider.delivery.format import FormatContext, expand_format
    from mailrider.delivery.lmtp import deliver_lmtp
    from mailrider.delivery.maildir import deliver_maildir
    from mailrider.delivery.mbox import deliver_mbox
    from mailrider.delivery.mda import deliver_mda

    method = env.get("mda-method", "")
    arg = env.get("mda-arg") or None
    action = config.actions.get(env.get("dispatcher", ""))
    home = env.get("mda-home", "/")
    user = env.get("mda-user", "")
    sender = env.get("sender", "")
    dest = env.get("dest", "")
    rcpt = env.get("rcpt", dest)
    ctx = FormatContext(sender=sender, rcpt=rcpt, dest=dest,
                        user_name=env.get("mda-local-user") or user, user_dir=home,
                        sub_addr_delim=config.sub_addr_delim)
    extension = env.get("mda-subaddress", "")
    prepend = dcommon.delivery_headers(sender, dest)

    def fmt(template: str) -> str:
        return expand_format(template, ctx)

    # no cwd= for commands: _child has already moved to the home folder, or
    # to / when it does not exist (a system user's /nonexistent)

    if method in ("file", "pipe") and arg is None:
        raise PermFail("alias target without argument", 550, "5.3.0")
    if method == "file":
        deliver_mbox(arg or "", msg_fd, sender=sender, prepend=prepend)
    elif method == "pipe":
        envvars = dcommon.mda_environment(ctx, home=home, user=user, extension=extension)
        deliver_mda(arg or "", msg_fd, env=envvars, prepend=prepend)
    elif action is None:
        raise TempFail(f"no action {env.get('dispatcher')!r} in the configuration")
    elif method == "maildir":
        deliver_maildir(fmt(action.arg or "~/Maildir"), msg_fd, prepend=prepend,
                        junk=action.junk)
    elif method == "mbox":
        deliver_mbox(os.path.join(paths.MAILSPOOL_DIR, user), msg_fd, sender=sender,
                     prepend=prepend)
    elif method == "mda":
        envvars = dcommon.mda_environment(ctx, home=home, user=user, extension=extension)
        deliver_mda(fmt(action.arg or ""), msg_fd, env=envvars, prepend=prepend)
    elif method == "lmtp":
        # lmtp: the final user by default, the original recipient with rcpt-to
        target = rcpt if action.rcpt_to else (env.get("mda-local-user") or user)
        results = deliver_lmtp(action.arg or "", msg_fd, sender=sender, rcpts=[target],
                               lhlo=env.get("smtpname", "localhost"), prepend=prepend)
        if results and results[0] is not None:
            raise results[0]
    else:
        raise PermFail(f"unknown delivery method {method!r}", 550, "5.3.0")
    return "ok", "Delivered"


def _child(config: Any, env: dict[str, str], msg_fd: int, wfd: int) -> None:
    status, text = "tempfail", "delivery failed"
    try:
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        if os.geteuid() == 0:
            uid, gid = int(env["mda-uid"]), int(env["mda-gid"])
            if uid == 0:
                raise PermFail("refusing to deliver as root", 550, "5.7.1")
            user = env.get("mda-user", "")
            os.setgid(gid)
            try:
                os.initgroups(user, gid)
            except OSError:
                os.setgroups([gid])
            os.setuid(uid)
        try:
            os.chdir(env.get("mda-home") or "/")
        except OSError:
            os.chdir("/")
        status, text = _deliver(config, env, msg_fd)
    except PermFail as exc:
        status, text = "permfail", exc.reply()
    except TempFail as exc:
        status, text = "tempfail", exc.reply()
    except Exception as exc:  # the child must always report
        status, text = "tempfail", f"451 4.3.0 delivery error: {type(exc).__name__}: {exc}"
    try:
        os.write(wfd, json.dumps({"status": status, "text": text[:500]}).encode())
    finally:
        os._exit(0)


async def run_delivery(parent: Parent, env: dict[str, str], msg_fd: int) -> m.DeliveryResult:
    loop = asyncio.get_running_loop()
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        os.close(rfd)
        _child(parent.config, env, msg_fd, wfd)
    os.close(wfd)
    done: asyncio.Future[int] = loop.create_future()
    parent.forks[pid] = done
    parent.reap()
    chunks: list[bytes] = []
    readable: asyncio.Event = asyncio.Event()
    loop.add_reader(rfd, readable.set)
    try:
        while True:
            await readable.wait()
            readable.clear()
            try:
                data = os.read(rfd, 65536)
            except BlockingIOError:
                continue
            if not data:
                break
            chunks.append(data)
    finally:
        loop.remove_reader(rfd)
        os.close(rfd)
    await done
    evpid = env.get("evpid", "")
    try:
        res = json.loads(b"".join(chunks))
        return m.DeliveryResult(evpid=evpid, status=str(res["status"]), text=str(res["text"]))
    except (ValueError, KeyError):
        return m.DeliveryResult(evpid=evpid, status="tempfail",
                                text="451 4.3.0 delivery process died")
