"""The parent's request handlers, played against by a hostile queue, pony and lka.

A real :class:`Parent` serves one end of a socketpair with its real policy
row; the test holds the other end and speaks the real IPC, as a pony or an
lka that an attacker controls would. Every forged delivery is refused and
logged and runs nothing; a genuine grant (sealed with the key, as lka seals)
runs, which shows the test would see a command that ran.
"""

from __future__ import annotations

import array
import asyncio
import json
import logging
import os
import pwd
import signal
import socket
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from mailrider import paths
from mailrider.config import parse_string
from mailrider.delivery import grant
from mailrider.ipc import messages as m
from mailrider.ipc import policy
from mailrider.ipc.channel import Channel, RemoteError
from mailrider.ipc.frame import HEADER
from mailrider.proc import common
from mailrider.proc.parent import Parent
from mailrider.queue import envelope as envmod
from mailrider.queue.envelope import Envelope

KEY = bytes(range(32))


def program_user() -> pwd.struct_passwd:
    return pwd.getpwnam(paths.EXT_USER) if os.geteuid() == 0 else pwd.getpwuid(os.geteuid())


CONFIG = """
table aliases {{ "hook" = "|/bin/true" }}
table remote {{ "x" = "y" }}
filter "f" proc-exec "/bin/cat"
action "local" maildir "{box}/%{{user.username}}" alias <aliases>
action "prog" mda "/bin/true"
match from any for any action "local"
"""


def make_parent(box: Path) -> Parent:
    cfg = parse_string(CONFIG.format(box=box), file="test.conf")
    parent = Parent(common.Options(statedir=str(box)), cfg)
    parent.grant_key = KEY
    return parent


Talk = Callable[[str, Any, list[int]], Awaitable[Any]]


def serve(box: Path, peer: str, body: Callable[[Parent, Channel], Awaitable[None]]) -> None:
    """Run ``body`` with a channel that is ``peer`` to a real parent."""

    async def main() -> None:
        parent = make_parent(box)
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGCHLD, parent.reap)
        mine, theirs = socket.socketpair()
        served = Channel(mine, peer, parent.handle, policy.accepts("parent", peer))
        attacker = Channel(theirs, "parent")  # sends whatever it likes
        try:
            await body(parent, attacker)
        finally:
            loop.remove_signal_handler(signal.SIGCHLD)
            attacker.close()
            served.close()
            for pid in list(parent.programs):
                try:
                    os.killpg(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass

    asyncio.run(main())


def genuine_fields(box: Path, marker: Path, **over: str) -> dict[str, str]:
    """The keys of an envelope for an alias |command, sealed as lka seals it."""
    pu = program_user()
    env = {
        "evpid": "0123456789abcdef", "dispatcher": "local", "sender": "a@example.org",
        "rcpt": "hook@localhost", "dest": "hook@localhost", "mda-method": "pipe",
        "mda-arg": f"/bin/sh -c 'id -u > {marker}'", "mda-user": pu.pw_name,
        "mda-uid": str(pu.pw_uid), "mda-gid": str(pu.pw_gid), "mda-home": "/",
        "mda-local-user": "", "mda-subaddress": "",
    }
    env.update(over)
    env[grant.KEY] = grant.seal(KEY, env)
    return env


def genuine(box: Path, marker: Path, **over: str) -> Envelope:
    """That envelope, as the queue reads it from the spool."""
    return envmod.from_fields(genuine_fields(box, marker, **over))


async def deliver(chan: Channel, env: Envelope) -> m.DeliveryResult:
    with tempfile.TemporaryFile() as f:
        f.write(b"Subject: x\n\nbody\n")
        f.flush()
        reply = await chan.ask(m.ForkDelivery(envelope=env), [f.fileno()])
    assert isinstance(reply, m.DeliveryResult)
    return reply


def test_several_deliveries_in_one_request(box: Path) -> None:
    marks = [box / "ran1", box / "ran2"]

    async def body(parent: Parent, queue: Channel) -> None:
        envs = [genuine(box, mark, evpid=f"012345678{i}abcdef") for i, mark in enumerate(marks)]
        # a third whose command was changed after lka sealed it
        forged = genuine_fields(box, box / "forged", evpid="0123456789abcde9")
        forged["mda-arg"] = f"/bin/sh -c 'id -u > {box / 'other'}'"
        envs.append(envmod.from_fields(forged))
        with tempfile.TemporaryFile() as f:
            f.write(b"Subject: x\n\nbody\n")
            f.flush()
            fds = [f.fileno()] * 3
            reply = await queue.ask(m.ForkDeliveries(envelopes=envs), fds)
            assert isinstance(reply, m.DeliveryResults)
            by = {r.evpid: r for r in reply.results}
            assert [by[e.evpid].status for e in envs] == ["ok", "ok", "tempfail"]
            assert by[envs[2].evpid].text.startswith("451 4.7.0")
            # one descriptor per envelope, no more, no less: refused whole
            with pytest.raises(RemoteError):
                await queue.ask(m.ForkDeliveries(envelopes=envs[:2]), [f.fileno()])

    serve(box, "queue", body)
    for mark in marks:
        assert mark.read_text().strip() == str(program_user().pw_uid)
    assert not (box / "other").exists() and not (box / "forged").exists()


@pytest.fixture
def box() -> Path:
    d = Path(tempfile.mkdtemp(prefix="mailrider-parent-", dir="/tmp"))
    os.chmod(d, 0o777)  # the delivery user writes its marker here
    return d


def test_genuine_grant_runs(box: Path) -> None:
    marker = box / "ran"

    async def body(parent: Parent, queue: Channel) -> None:
        res = await deliver(queue, genuine(box, marker))
        assert res.status == "ok", res.text

    serve(box, "queue", body)
    # it ran, as the program user and not as root
    assert marker.read_text().strip() == str(program_user().pw_uid)


@pytest.mark.parametrize("forge", [
    "unsealed", "wrong-key", "other-user", "gid-0", "uid-0", "other-command", "other-sender",
    "other-action",
])
def test_forged_deliveries_are_refused_and_logged(
        box: Path, forge: str, caplog: pytest.LogCaptureFixture) -> None:
    marker = box / "ran"
    env = genuine_fields(box, marker)
    if forge == "unsealed":
        del env[grant.KEY]
    elif forge == "wrong-key":
        env[grant.KEY] = grant.seal(bytes(32), env)
    elif forge == "other-user":
        env["mda-user"] = "nobody"
    elif forge == "gid-0":
        env["mda-gid"] = "0"
    elif forge == "uid-0":
        env.update({"mda-user": "root", "mda-uid": "0"})
    elif forge == "other-command":
        env["mda-arg"] = f"/bin/sh -c 'id > {marker}'"
    elif forge == "other-sender":
        env["sender"] = "-oQ/tmp/evil@example.org"
    elif forge == "other-action":
        env.update({"dispatcher": "prog", "mda-method": "mda"})

    async def body(parent: Parent, queue: Channel) -> None:
        res = await deliver(queue, envmod.from_fields(env))
        assert res.status == "tempfail"
        assert res.text.startswith("451 4.7.0")

    with caplog.at_level(logging.INFO):
        serve(box, "queue", body)
    assert not marker.exists()
    assert "forged-delivery" in caplog.text


@pytest.mark.parametrize("bad", [
    {"mda-user": ["root"]}, {str(i): "x" for i in range(1000)}, {"mda-arg": "x" * 100000},
    {"evpid": "../../etc/passwd"}, {"mda-uid": "0x0"},
])
def test_malformed_envelopes_never_reach_a_delivery(
        box: Path, bad: dict[str, object], caplog: pytest.LogCaptureFixture) -> None:
    """An envelope the codec refuses is a broken frame: the parent drops the
    queue's channel (as for any protocol violation) and runs nothing."""
    marker = box / "ran"
    fields: dict[str, object] = {**genuine_fields(box, marker), **bad}

    async def body(parent: Parent, queue: Channel) -> None:
        payload = json.dumps({"t": "ForkDelivery", "envelope": fields}).encode()
        with tempfile.TemporaryFile() as f:
            queue.sock.sendmsg([HEADER.pack(len(payload), 1, 0, 1) + payload], [
                (socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [f.fileno()]))])
        for _ in range(200):  # bounded: the parent closes its end at once
            if queue.closed:
                break
            await asyncio.sleep(0.01)
        assert queue.closed
        assert not parent.forks

    with caplog.at_level(logging.INFO):
        serve(box, "queue", body)
    assert "bad-frame" in caplog.text
    assert not marker.exists()


def test_sealed_but_root_is_still_refused(box: Path) -> None:
    from mailrider.errors import PermFail
    from mailrider.proc.parent_mda import decide

    cfg = parse_string(CONFIG.format(box=box) + 'action "vu" maildir userbase <remote>\n',
                       file="test.conf")
    root = os.geteuid() == 0
    env = genuine(box, box / "ran", **{"mda-user": "root", "mda-uid": "0", "mda-gid": "0"})
    if root:
        with pytest.raises(PermFail, match="as root"):
            decide(cfg, KEY, env, root=True)
    # a virtual user whose table says gid 0: sealed by lka, refused all the same
    env = genuine(box, box / "ran", **{"dispatcher": "vu", "mda-method": "maildir",
                                       "mda-arg": "", "mda-user": "v", "mda-uid": "5000",
                                       "mda-gid": "0"})
    with pytest.raises(PermFail, match="group 0"):
        decide(cfg, KEY, env, root=True)


def test_system_user_credentials_come_from_the_password_database(box: Path) -> None:
    from mailrider.proc.parent_mda import decide

    cfg = parse_string(CONFIG.format(box=box), file="test.conf")
    pu = program_user()
    # lka sealed a wrong gid for a system user: the parent uses the database's
    env = genuine(box, box / "ran", **{"mda-gid": str(pu.pw_gid + 4242)})
    plan = decide(cfg, KEY, env, root=True)
    assert (plan.uid, plan.gid) == (pu.pw_uid, pu.pw_gid)
    assert 0 not in plan.groups
    # the method's command comes from the configuration, never from the envelope
    env = genuine(box, box / "ran", **{"dispatcher": "prog", "mda-method": "mda",
                                       "mda-arg": "/bin/sh -c evil"})
    plan = decide(cfg, KEY, env, root=True)
    assert plan.arg is None and plan.action.arg == "/bin/true"


def test_pony_may_not_start_filters_or_deliver(box: Path) -> None:
    marker = box / "ran"

    async def body(parent: Parent, pony: Channel) -> None:
        # pony asks the parent for nothing: even a genuine grant closes the channel
        with pytest.raises(Exception):
            await deliver(pony, genuine(box, marker))
        assert pony.closed
        assert not parent.programs

    serve(box, "pony", body)


def test_lka_starts_configured_filters_only(box: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def body(parent: Parent, lka: Channel) -> None:
        for name in ("filter:nope", "filter:/bin/sh", "proc:f", "f", "table:remote"):
            with pytest.raises(RemoteError):
                await lka.ask(m.FilterStart(name=name))
        assert not parent.programs
        reply, fds = await lka.call(m.FilterStart(name="filter:f"))
        assert isinstance(reply, m.Ok) and len(fds) == 2
        [(key, proc)] = parent.programs.values()
        assert key == "filter:f"
        if os.geteuid() == 0:
            # run as the program user, never root, never group 0
            status = Path(f"/proc/{proc.pid}/status").read_text()
            uid_line = next(x for x in status.splitlines() if x.startswith("Uid:"))
            assert uid_line.split()[1] == str(program_user().pw_uid)
        for fd in fds:
            os.close(fd)

    with caplog.at_level(logging.INFO):
        serve(box, "lka", body)
    assert "filter-refused" in caplog.text


def test_lka_starts_proc_tables_only(box: Path) -> None:
    async def body(parent: Parent, lka: Channel) -> None:
        for name in ("aliases", "nope", "../../bin/sh"):
            with pytest.raises(RemoteError):
                await lka.ask(m.TableStart(name=name))
        assert not parent.programs

    serve(box, "lka", body)


def test_forward_is_read_from_the_password_database_home(box: Path) -> None:
    async def body(parent: Parent, lka: Channel) -> None:
        # no such user, root, and a user without the file: nothing, nothing read as root
        for user in ("no-such-user-here", "root", program_user().pw_name):
            reply = await lka.ask(m.ForwardOpen(user=user))
            assert isinstance(reply, m.ForwardContent) and reply.content is None

    serve(box, "lka", body)


@pytest.mark.skipif(os.geteuid() != 0, reason="reads as another user: needs root")
def test_forward_is_read_as_its_owner(box: Path, caplog: pytest.LogCaptureFixture) -> None:
    import subprocess

    name = f"mrfwd{os.getpid() % 100000}"
    home = box / "home"
    home.mkdir()
    subprocess.run(["useradd", "--no-create-home", "--home-dir", str(home), "--shell",
                    "/usr/sbin/nologin", name], check=True)
    try:
        pw = pwd.getpwnam(name)
        os.chown(home, pw.pw_uid, pw.pw_gid)
        os.chmod(home, 0o700)
        fwd = home / ".forward"
        secret = box / "secret"
        secret.write_text("root:$6$secret:19000::::::\n")
        os.chmod(secret, 0o600)
        mine = home / "mine"

        def own(text: str, mode: int = 0o600, at: Path = fwd) -> None:
            at.write_text(text)
            os.chown(at, pw.pw_uid, pw.pw_gid)
            os.chmod(at, mode)

        async def ask(lka: Channel) -> str | None:
            reply = await lka.ask(m.ForwardOpen(user=name))
            assert isinstance(reply, m.ForwardContent)
            return reply.content

        async def body(parent: Parent, lka: Channel) -> None:
            own("bob@example.org\n")
            assert await ask(lka) == "bob@example.org\n"
            fwd.unlink()
            os.link(secret, fwd)  # a hard link to a root-only file
            assert await ask(lka) is None
            fwd.unlink()
            own("x\n", at=mine)
            fwd.symlink_to(mine)  # a symbolic link, even to the user's own file
            assert await ask(lka) is None
            fwd.unlink()
            own("bob@example.org\n", mode=0o620)  # writable by the group
            assert await ask(lka) is None
            fwd.unlink()
            os.mkfifo(fwd)  # would block a reader that waited for a writer
            os.chown(fwd, pw.pw_uid, pw.pw_gid)
            assert await ask(lka) is None

        with caplog.at_level(logging.INFO):
            serve(box, "lka", body)
        assert "secret" not in caplog.text
        assert caplog.text.count("forward-unsafe") >= 2
    finally:
        subprocess.run(["userdel", name], check=False)


def test_maildir_deliveries_of_one_user_share_one_process(box: Path) -> None:
    mail = box / "mail"
    mail.mkdir()
    os.chmod(mail, 0o777)
    pu = program_user()
    action = f'action "box" maildir "{mail}/%{{user.username}}" user {pu.pw_name}\n'

    def env(i: int) -> Envelope:
        e = {"evpid": f"{i:016x}", "dispatcher": "box", "sender": "a@example.org",
             "rcpt": f"u{i}@localhost", "dest": f"u{i}@localhost", "mda-method": "maildir",
             "mda-arg": "", "mda-user": pu.pw_name, "mda-uid": str(pu.pw_uid),
             "mda-gid": str(pu.pw_gid), "mda-home": "/", "mda-local-user": "same",
             "mda-subaddress": ""}
        e[grant.KEY] = grant.seal(KEY, e)
        return envmod.from_fields(e)

    async def main() -> None:
        cfg = parse_string(CONFIG.format(box=box) + action, file="test.conf")
        parent = Parent(common.Options(statedir=str(box)), cfg)
        parent.grant_key = KEY
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGCHLD, parent.reap)
        mine, theirs = socket.socketpair()
        served = Channel(mine, "queue", parent.handle, policy.accepts("parent", "queue"))
        queue = Channel(theirs, "parent")
        try:
            results = await asyncio.gather(*(deliver(queue, env(i)) for i in range(5)))
        finally:
            loop.remove_signal_handler(signal.SIGCHLD)
            queue.close()
            served.close()
        assert [r.status for r in results] == ["ok"] * 5, results

    asyncio.run(main())
    files = list((mail / "same" / "new").iterdir())
    assert len(files) == 5
    # maildir names carry the writer's pid: one process wrote them all
    assert len({f.name.split("P")[1].split("Q")[0] for f in files}) == 1
