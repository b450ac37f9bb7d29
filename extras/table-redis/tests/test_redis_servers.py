"""The backend process against its own throwaway servers: auth, unix socket, TLS,
failover, restarts, timeouts, the conformance checker and a real mailriderd."""

from __future__ import annotations

import asyncio
import logging
import os
import smtplib
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from mailrider.errors import TempFail
from mailrider.table.proc import ProcTable, find_backend
from mailrider.table.sdk import BackendError
from mailrider_table_redis import RedisBackend
from redisserver import (
    RedisServer,
    Target,
    free_port,
    make_certs,
    needs_server,
    tls_supported,
)
from tlsproxy import TLSProxy

Write = Callable[[str], str]
ROOT = Path(__file__).resolve().parents[3]
PASSWORD = "pw-Zq8-never-in-logs"


def proc_table(path: str, name: str = "rt") -> ProcTable:
    argv, searched = find_backend("redis")
    assert argv is not None, searched
    return ProcTable(name, argv, path, timeout=10, restart_min=0.1)


@pytest.fixture
def server() -> Iterator[RedisServer]:
    if tls_supported() == "redis-server not installed":
        pytest.skip("redis-server not installed")
    s = RedisServer().start()
    yield s
    s.cleanup()


# -- authentication -----------------------------------------------------------------------


@needs_server
def test_password_and_acl_user(write_config: Write, caplog: pytest.LogCaptureFixture) -> None:
    s = RedisServer(password=PASSWORD).start()
    try:
        c = s.client()
        c.set("alias:root", "admin")
        c.execute_command("ACL", "SETUSER", "mailrider", "on", ">acl-pw-secret", "~alias:*",
                          "+get")
        base = f"master_port {s.port}\n"
        ok = RedisBackend("t", write_config(base + f"password {PASSWORD}\n"))
        assert ok.lookup("alias", "root") == "admin"
        acl = RedisBackend("t", write_config(base + "username mailrider\n"
                                             "password acl-pw-secret\n"))
        assert acl.lookup("alias", "root") == "admin"
        with pytest.raises(BackendError, match="no permissions"):  # ACL: GET only
            acl.check("domain", "x")
        none = RedisBackend("t", write_config(base))
        with pytest.raises(BackendError, match=r"NOAUTH|Authentication required"):
            none.lookup("alias", "root")
        # through the daemon's client: wrong password is a temporary error, and the
        # password (right or wrong) never reaches the log
        caplog.set_level(logging.DEBUG)
        wrong = write_config(base + "password wrong-Secret-42\n")

        async def go() -> None:
            t = proc_table(wrong)
            await t.start()
            try:
                with pytest.raises(TempFail):
                    await t.lookup("alias", "root")
                with pytest.raises(TempFail):
                    await t.check("alias", "root")
            finally:
                await t.close()

        asyncio.run(go())
        assert "wrong-Secret-42" not in caplog.text
        assert PASSWORD not in caplog.text
        assert "rt" in caplog.text  # the backend's stderr was captured
    finally:
        s.cleanup()


# -- unix socket --------------------------------------------------------------------------


@needs_server
def test_unix_socket(write_config: Write) -> None:
    s = RedisServer(unix=True).start()
    try:
        s.client().set("userinfo:carol", "2001:2001:/var/vmail/carol")
        b = RedisBackend("t", write_config(f"master unix:{s.socket}\ndatabase 0\n"))
        assert b.lookup("userinfo", "carol") == "2001:2001:/var/vmail/carol"
        assert b.lookup("userinfo", "dave") is None
    finally:
        s.cleanup()


@needs_server
def test_database_select(write_config: Write, server: RedisServer) -> None:
    c = server.client()
    c.execute_command("SELECT", "3")
    c.set("alias:x", "in-db-3")  # the client is pooled: SELECT is per connection
    c.connection_pool.disconnect()
    b0 = RedisBackend("t", write_config(f"master_port {server.port}\n"))
    b3 = RedisBackend("t", write_config(f"master_port {server.port}\ndatabase 3\n"))
    assert b3.lookup("alias", "x") == "in-db-3"
    assert b0.lookup("alias", "x") is None


# -- TLS -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certs() -> Iterator[dict[str, Path]]:
    with tempfile.TemporaryDirectory() as d:
        os.chmod(d, 0o755)
        yield make_certs(Path(d))


@needs_server
def test_tls_through_a_tls_relay(write_config: Write, server: RedisServer,
                                 certs: dict[str, Path]) -> None:
    server.client().set("domain:example.org", "example.org")
    proxy = TLSProxy(server.port, certs)
    mutual = TLSProxy(server.port, certs, require_client_cert=True)
    try:
        base = f"master 127.0.0.1\nmaster_port {proxy.port}\ntls yes\nquery_timeout 3\n"
        good = RedisBackend("t", write_config(base + f"tls_ca_file {certs['ca.crt']}\n"))
        assert good.lookup("domain", "example.org") == "example.org"
        assert good.check("domain", "example.net") is False
        # the system CAs do not know our test CA
        unverified = RedisBackend("t", write_config(base))
        with pytest.raises(BackendError, match=r"redis unavailable.*(certificate|SSL)"):
            unverified.lookup("domain", "example.org")
        relaxed = RedisBackend("t", write_config(base + "tls_verify no\n"))
        assert relaxed.lookup("domain", "example.org") == "example.org"
        # plain Redis protocol to a TLS port is an error, not "not found"
        plain = RedisBackend("t", write_config(
            f"master_port {proxy.port}\nquery_timeout 1\n"))
        with pytest.raises(BackendError):
            plain.lookup("domain", "example.org")
        mbase = base.replace(str(proxy.port), str(mutual.port))
        anon = RedisBackend("t", write_config(mbase + f"tls_ca_file {certs['ca.crt']}\n"))
        with pytest.raises(BackendError):
            anon.lookup("domain", "example.org")
        client = RedisBackend("t", write_config(
            mbase + f"tls_ca_file {certs['ca.crt']}\ntls_cert_file {certs['client.crt']}\n"
            f"tls_key_file {certs['client.key']}\n"))
        assert client.lookup("domain", "example.org") == "example.org"
    finally:
        proxy.close()
        mutual.close()


def test_tls_native_redis(write_config: Write, certs: dict[str, Path]) -> None:
    reason = tls_supported()
    if reason:
        pytest.skip(reason)
    s = RedisServer(tls=certs).start()
    try:
        s.client().set("alias:root", "admin")
        b = RedisBackend("t", write_config(
            f"master_port {s.port}\ntls yes\ntls_ca_file {certs['ca.crt']}\n"))
        assert b.lookup("alias", "root") == "admin"
    finally:
        s.cleanup()


# -- master / slave --------------------------------------------------------------------------


@needs_server
def test_master_down_slave_answers_then_master_again(write_config: Write) -> None:
    master = RedisServer().start()
    slave = RedisServer().start()
    try:
        master.client().set("alias:who", "master")
        slave.client().set("alias:who", "slave")
        b = RedisBackend("t", write_config(
            f"master 127.0.0.1\nmaster_port {master.port}\nslave 127.0.0.1\n"
            f"slave_port {slave.port}\nquery_timeout 2\n"))
        assert b.lookup("alias", "who") == "master"
        master.stop()
        assert b.lookup("alias", "who") == "slave"
        assert b.check("alias", "who") is True
        slave.stop()
        with pytest.raises(BackendError, match="redis unavailable"):
            b.lookup("alias", "who")
        slave.start()
        slave.client().set("alias:who", "slave")
        master.start()
        master.client().set("alias:who", "master")
        deadline = time.monotonic() + 10  # the master is retried after a short pause
        seen = []
        while time.monotonic() < deadline:
            seen.append(b.lookup("alias", "who"))
            if seen[-1] == "master":
                break
            time.sleep(0.2)
        assert seen[-1] == "master", seen
        assert set(seen) <= {"master", "slave"}
    finally:
        master.cleanup()
        slave.cleanup()


@needs_server
def test_unreachable_master_without_slave_is_error(write_config: Write) -> None:
    b = RedisBackend("t", write_config(f"master_port {free_port()}\n"))
    with pytest.raises(BackendError, match=r"redis unavailable: master 127\.0\.0\.1"):
        b.lookup("alias", "x")
    with pytest.raises(BackendError):
        b.check("alias", "x")


def test_query_timeout_on_a_silent_server(write_config: Write) -> None:
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)  # accepts (kernel backlog), never answers
    try:
        b = RedisBackend("t", write_config(
            f"master_port {silent.getsockname()[1]}\nquery_timeout 0.5\n"))
        start = time.monotonic()
        with pytest.raises(BackendError, match="redis unavailable"):
            b.lookup("alias", "x")
        assert time.monotonic() - start < 3
    finally:
        silent.close()


# -- restart of the server under a running backend process -----------------------------------


@needs_server
def test_server_restart_during_lookups(write_config: Write, server: RedisServer) -> None:
    path = write_config(f"master_port {server.port}\nquery_timeout 2\n")

    async def go() -> None:
        t = proc_table(path)
        await t.start()
        try:
            server.client().set("alias:k", "v")
            results = await asyncio.gather(*(t.lookup("alias", "k") for _ in range(200)))
            assert results == ["v"] * 200
            pid = t.pid
            await asyncio.to_thread(server.stop)
            outcomes = await asyncio.gather(*(t.lookup("alias", "k") for _ in range(20)),
                                            return_exceptions=True)
            assert all(isinstance(o, TempFail) for o in outcomes), outcomes
            await asyncio.to_thread(server.start)
            server.client().set("alias:k", "v")  # no persistence: data again
            # the very first lookup after the restart succeeds (stale pool connections)
            assert await t.lookup("alias", "k") == "v"
            results = await asyncio.gather(*(t.lookup("alias", "k") for _ in range(200)))
            assert results == ["v"] * 200
            assert t.pid == pid  # same backend process throughout
        finally:
            await t.close()

    asyncio.run(go())


@needs_server
def test_update_through_the_protocol(write_config: Write, server: RedisServer) -> None:
    server.client().set("alias:k", "old")
    server.client().set("new:k", "new")
    path = write_config(f"master_port {server.port}\n")

    async def go() -> None:
        t = proc_table(path)
        await t.start()
        try:
            assert await t.lookup("alias", "k") == "old"
            Path(path).write_text(f"master_port {server.port}\nquery_alias GET new:%s\n")
            await t.update()
            assert await t.lookup("alias", "k") == "new"
            Path(path).write_text("no_such_key 1\n")
            with pytest.raises(TempFail):
                await t.update()
            assert await t.lookup("alias", "k") == "new"
        finally:
            await t.close()

    asyncio.run(go())


# -- conformance checker -----------------------------------------------------------------------


def test_conformance_checker(target: Target, write_config: Write) -> None:
    checker = ROOT / "tools" / "conformance" / "check_table.py"
    if not checker.exists():
        pytest.skip("tools/conformance not available (not run from the repository)")
    c, p = target.client, target.prefix
    c.set(f"{p}alias:root", "admin@example.org")
    c.set(f"{p}alias:a b", "spaced")
    c.set(f"{p}alias:a|b", "pipe value")
    c.sadd(f"{p}domains", "example.org")
    c.hset(f"{p}user:bob", mapping={"name": "bob", "hash": "$2b$08$hash", "uid": "1001",
                                    "gid": "1001", "home": "/home/bob"})
    c.rpush(f"{p}netaddr:wrongtype", "x")
    c.sadd(f"{p}senders:bob", "bob@example.org")
    path = write_config(target.config(
        f"query_alias GET {p}alias:%s\nquery_domain SISMEMBER {p}domains %s\n"
        f"query_credentials HMGET {p}user:%s name hash\n"
        f"query_userinfo HMGET {p}user:%s uid gid home\n"
        f"query_netaddr GET {p}netaddr:%s\nquery_mailaddrmap SMEMBERS {p}senders:%s\n"))
    program = Path(sys.executable).parent / "mailrider-table-redis"
    res = subprocess.run(
        [sys.executable, str(checker), "--vectors", str(Path(__file__).parent / "redis.vectors"),
         "--config", path, "--name", "vredis", "--", str(program)],
        capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "FAIL" not in res.stdout
    assert res.stdout.count("PASS vector") >= 14


# -- a real mailriderd ---------------------------------------------------------------------------


def table_ready(port: int) -> bool:
    # lka answers RCPT before its proc tables finish their handshake ("backend not
    # running", 451); wait for the table rather than race it
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
        s.ehlo("probe.example")
        s.mail("probe@example.net")
        code, text = s.rcpt("probe@example.org")
    return not (code == 451 and b"not running" in text)


def test_e2e_virtual_user_and_alias_only_in_redis(target: Target) -> None:
    sys.path.insert(0, str(ROOT / "core" / "tests" / "e2e"))
    try:
        from harness import Daemon, delivery_user, wait_for
    except ImportError:
        pytest.skip("core/tests/e2e/harness.py not available")
    p = target.prefix
    conf = (
        "listen on 127.0.0.1 port {port}\n"
        "table vusers redis:{state}/redis.conf\n"
        'action "vmail" maildir "{mail}/%{{user.username}}" virtual <vusers> userbase <vusers>\n'
        'match from any for domain <vusers> action "vmail"\n'
    )
    d = Daemon(conf)
    try:
        (d.state / "redis.conf").write_text(target.config(
            f"query_alias GET {p}alias:%s\nquery_domain SISMEMBER {p}domains %s\n"
            f"query_userinfo GET {p}userinfo:%s\n"))
        os.chmod(d.state / "redis.conf", 0o644)
        du = delivery_user()
        c = target.client
        c.sadd(f"{p}domains", "example.org")
        c.set(f"{p}alias:carol@example.org", "carol")
        c.set(f"{p}alias:postmaster@example.org", "carol@example.org")
        c.set(f"{p}userinfo:carol", f"{du.pw_uid}:{du.pw_gid}:{d.mail}/carol")
        d.start()
        wait_for(lambda: table_ready(d.port), 30)
        with smtplib.SMTP("127.0.0.1", d.port, timeout=30) as s:
            s.ehlo("client.example")
            refused = s.sendmail("alice@example.net", ["carol@example.org"],
                                 b"Subject: direct\r\n\r\nto carol\r\n")
            assert refused == {}
            refused = s.sendmail("alice@example.net", ["postmaster@example.org"],
                                 b"Subject: via alias\r\n\r\nto postmaster\r\n")
            assert refused == {}
            s.mail("alice@example.net")
            code, _ = s.rcpt("nobody@example.org")
            assert code == 550
            s.rset()
            s.mail("alice@example.net")
            code, _ = s.rcpt("carol@example.net")  # domain not in Redis
            assert code == 550
            s.rset()
        msgs = wait_for(lambda: len(d.maildir("carol")) == 2 and d.maildir("carol"), 30)
        bodies = b"".join(msgs)
        assert b"Subject: direct" in bodies and b"Subject: via alias" in bodies
        assert b"for <postmaster@example.org>" in bodies  # reached carol via the alias
    except BaseException:
        print(d.log())
        raise
    finally:
        d.cleanup()
