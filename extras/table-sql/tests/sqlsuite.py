"""The behaviour every SQL backend must have, run against each real server.

A backend's tests subclass :class:`Suite` (``class TestPostgres(Suite)``) and
their conftest.py provides a session fixture ``db`` (a :class:`Database`).
Everything here talks to a real server through the real driver.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pwd
import shutil
import smtplib
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from mailrider.errors import TempFail
from mailrider.table.proc import ProcTable, find_backend
from mailrider.table.sdk import BackendError, ConfigFileError

ROOT = Path(__file__).resolve().parents[3]
CHECKER = ROOT / "tools" / "conformance" / "check_table.py"

SCHEMA = [
    "CREATE TABLE aliases (source VARCHAR(255), target VARCHAR(255))",
    "CREATE TABLE domains (name VARCHAR(255))",
    "CREATE TABLE users (login VARCHAR(255), pwhash VARCHAR(255), uid INTEGER, gid INTEGER, "
    "home VARCHAR(255))",
    "CREATE TABLE netaddrs (addr VARCHAR(64))",
    "CREATE TABLE sources (addr VARCHAR(64))",
    "CREATE TABLE mailaddrs (addr VARCHAR(255))",
    "CREATE TABLE addrnames (addr VARCHAR(64), name VARCHAR(255))",
    "CREATE TABLE sendermap (login VARCHAR(255), address VARCHAR(255))",
    "INSERT INTO aliases VALUES ('root', 'admin@example.org'), ('root', 'ops@example.org'), "
    "('postmaster', 'root'), ('x'' or ''2''=''2', 'injected@example.org'), "
    "('a|b', 'pipe@example.org')",
    "INSERT INTO domains VALUES ('example.org')",
    "INSERT INTO users VALUES ('carol', '$2b$08$hash', 2001, 2002, '/var/vmail/carol')",
    "INSERT INTO netaddrs VALUES ('192.0.2.1')",
    "INSERT INTO sources VALUES ('192.0.2.10'), ('192.0.2.11')",
    "INSERT INTO mailaddrs VALUES ('carol@example.org')",
    "INSERT INTO addrnames VALUES ('192.0.2.1', 'mx.example.org')",
    "INSERT INTO sendermap VALUES ('carol', 'carol@example.org'), ('carol', 'c@example.org')",
]


def queries(p: str) -> dict[str, str]:
    return {
        "query_alias": f"SELECT target FROM aliases WHERE source = {p} ORDER BY target",
        "query_domain": f"SELECT name FROM domains WHERE name = {p}",
        "query_credentials": f"SELECT login, pwhash FROM users WHERE login = {p}",
        "query_netaddr": f"SELECT addr FROM netaddrs WHERE addr = {p}",
        "query_userinfo": f"SELECT uid, gid, home FROM users WHERE login = {p}",
        "query_source": f"SELECT addr FROM sources WHERE addr = {p}",
        "query_mailaddr": f"SELECT addr FROM mailaddrs WHERE addr = {p}",
        "query_addrname": f"SELECT name FROM addrnames WHERE addr = {p}",
        "query_mailaddrmap": f"SELECT address FROM sendermap WHERE login = {p} ORDER BY address",
        "fetch_source": "SELECT addr FROM sources ORDER BY addr",
    }


FOUND = [
    ("alias", "root", "admin@example.org, ops@example.org"),
    ("domain", "example.org", "example.org"),
    ("credentials", "carol", "carol:$2b$08$hash"),
    ("netaddr", "192.0.2.1", "192.0.2.1"),
    ("userinfo", "carol", "2001:2002:/var/vmail/carol"),
    ("source", "192.0.2.10", "192.0.2.10"),
    ("mailaddr", "carol@example.org", "carol@example.org"),
    ("addrname", "192.0.2.1", "mx.example.org"),
    ("mailaddrmap", "carol", "c@example.org, carol@example.org"),
]


class Database:
    """What a backend's conftest provides: one test database on a real server."""

    name = ""  # backend name, e.g. "postgres"
    placeholder = "?"
    password = ""  # of the user in connection_lines(); must never be logged
    backend_cls: Any = None
    slow_query = ""  # a query_alias that takes ~3 s; "" = not testable

    def execute(self, *statements: str) -> None:
        raise NotImplementedError

    def connection_lines(self) -> list[str]:
        raise NotImplementedError

    restartable = False

    def stop_server(self) -> None:
        raise NotImplementedError

    def start_server(self) -> None:
        raise NotImplementedError


def write_config(
    path: Path, db: Database, extra: dict[str, str] | None = None, only: list[str] | None = None
) -> Path:
    q = queries(db.placeholder)
    if only is not None:
        q = {k: v for k, v in q.items() if k in only}
    q.update(extra or {})
    lines = ["# written by the tests", *db.connection_lines(), ""]
    lines += [f"{k} {v}" for k, v in q.items()]
    path.write_text("\n".join(lines) + "\n")
    os.chmod(path, 0o644)
    return path


def script(db: Database) -> str:
    path = shutil.which(f"mailrider-table-{db.name}", path=os.path.dirname(sys.executable))
    assert path, f"mailrider-table-{db.name} is not installed next to {sys.executable}"
    return path


class Suite:
    """Tests shared by every SQL backend; ``db`` comes from the backend's conftest."""

    def backend(self, db: Database, tmp_path: Path, **kw: Any) -> Any:
        return db.backend_cls("t", str(write_config(tmp_path / "t.conf", db, **kw)))

    # -- every service -----------------------------------------------------

    @pytest.mark.parametrize(("service", "key", "value"), FOUND)
    def test_lookup_found(
        self, db: Database, tmp_path: Path, service: str, key: str, value: str
    ) -> None:
        b = self.backend(db, tmp_path)
        assert b.lookup(service, key) == value
        assert b.check(service, key) is True

    @pytest.mark.parametrize("service", [s for s, _, _ in FOUND])
    def test_lookup_not_found(self, db: Database, tmp_path: Path, service: str) -> None:
        b = self.backend(db, tmp_path)
        assert b.lookup(service, "nobody-here") is None
        assert b.check(service, "nobody-here") is False

    def test_registers_only_services_with_a_query(self, db: Database, tmp_path: Path) -> None:
        b = self.backend(db, tmp_path, only=["query_alias", "query_userinfo"])
        assert sorted(b.registered()) == ["alias", "userinfo"]
        with pytest.raises(BackendError, match="no query"):
            b.lookup("domain", "example.org")
        with pytest.raises(BackendError, match="no fetch"):
            b.fetch("source")
        full = self.backend(db, tmp_path)
        assert sorted(full.registered()) == sorted(s for s, _, _ in FOUND)

    def test_fetch_source_round_robin_and_refresh(self, db: Database, tmp_path: Path) -> None:
        b = self.backend(db, tmp_path, extra={"fetch_source_refresh": "3"})
        assert [b.fetch("source") for _ in range(3)] == ["192.0.2.10", "192.0.2.11", "192.0.2.10"]
        db.execute("INSERT INTO sources VALUES ('192.0.2.12')")
        try:
            # refreshed after 3 fetches: the new row shows up, the walk starts over
            assert [b.fetch("source") for _ in range(3)] == [
                "192.0.2.10",
                "192.0.2.11",
                "192.0.2.12",
            ]
        finally:
            db.execute("DELETE FROM sources WHERE addr = '192.0.2.12'")

    def test_fetch_source_expire(self, db: Database, tmp_path: Path) -> None:
        b = self.backend(db, tmp_path, extra={"fetch_source_expire": "0.3"})
        assert b.fetch("source") == "192.0.2.10"
        db.execute("DELETE FROM sources WHERE addr = '192.0.2.11'")
        try:
            assert b.fetch("source") == "192.0.2.11"  # cached
            time.sleep(0.4)
            assert b.fetch("source") == "192.0.2.10"
            assert b.fetch("source") == "192.0.2.10"  # only one row left
        finally:
            db.execute("INSERT INTO sources VALUES ('192.0.2.11')")

    # -- keys are data -------------------------------------------------------

    @pytest.mark.parametrize(
        "key",
        [
            "x' OR '1'='1",
            'x" OR "1"="1',
            "root'--",
            "?",
            "$1",
            ":key",
            "%",
            "root; DROP TABLE aliases",
        ],
    )
    def test_key_is_only_a_key(self, db: Database, tmp_path: Path, key: str) -> None:
        b = self.backend(db, tmp_path)
        assert b.lookup("alias", key) is None
        assert b.check("domain", key) is False
        assert b.lookup("alias", "root") == "admin@example.org, ops@example.org"

    def test_key_equal_to_an_injection_string_matches_itself(
        self, db: Database, tmp_path: Path
    ) -> None:
        b = self.backend(db, tmp_path)
        assert b.lookup("alias", "x' or '2'='2") == "injected@example.org"
        assert b.lookup("alias", "a|b") == "pipe@example.org"

    def test_placeholder_characters_in_literals_are_text(
        self, db: Database, tmp_path: Path
    ) -> None:
        p = db.placeholder
        query = (
            f"SELECT target FROM aliases WHERE source = {p} "
            f"AND target <> '{p}:x %s %' /* {p} :y */ ORDER BY target"
        )
        b = self.backend(db, tmp_path, extra={"query_alias": query})
        assert b.lookup("alias", "root") == "admin@example.org, ops@example.org"
        assert b.lookup("alias", "nobody") is None

    # -- errors ----------------------------------------------------------------

    def test_database_error_is_error_not_not_found(self, db: Database, tmp_path: Path) -> None:
        table = "gone_" + uuid.uuid4().hex[:8]
        db.execute(
            f"CREATE TABLE {table} (k VARCHAR(64), v VARCHAR(64))",
            f"INSERT INTO {table} VALUES ('k', 'v')",
        )
        p = db.placeholder
        b = self.backend(
            db,
            tmp_path,
            extra={
                "query_alias": f"SELECT v FROM {table} WHERE k = {p}",
                "query_domain": f"SELECT v FROM {table} WHERE k = {p}",
            },
        )
        assert b.lookup("alias", "k") == "v"
        db.execute(f"DROP TABLE {table}")
        with pytest.raises(BackendError, match="database error"):
            b.lookup("alias", "k")
        with pytest.raises(BackendError, match="database error"):
            b.check("domain", "k")
        assert b.lookup("userinfo", "carol") == "2001:2002:/var/vmail/carol"

    @pytest.mark.parametrize(
        ("key", "query", "message"),
        [
            (
                "query_userinfo",
                "SELECT uid, gid FROM users WHERE login = {p}",
                "query_userinfo: the query returns 2 columns, 3 expected",
            ),
            (
                "query_alias",
                "SELECT target, source FROM aliases WHERE source = {p}",
                "query_alias: the query returns 2 columns, 1 expected",
            ),
            ("query_domain", "SELEKT name FROM domains WHERE name = {p}", "query_domain: "),
            ("query_domain", "SELECT name FROM no_such_table WHERE name = {p}", "query_domain: "),
            (
                "query_domain",
                "SELECT name FROM domains",
                "query_domain: the query has no placeholder",
            ),
            (
                "fetch_source",
                "SELECT addr FROM sources WHERE addr = {p}",
                "fetch_source: the query takes no parameter",
            ),
            (
                "query_domain",
                "SELECT name FROM domains WHERE name = {p} AND name <> 'x",
                "query_domain: unterminated ' quote",
            ),
        ],
    )
    def test_bad_query_stops_the_start(
        self, db: Database, tmp_path: Path, key: str, query: str, message: str
    ) -> None:
        path = write_config(tmp_path / "t.conf", db, extra={key: query.format(p=db.placeholder)})
        line = next(
            i for i, x in enumerate(path.read_text().splitlines(), 1) if x.startswith(key + " ")
        )
        with pytest.raises(ConfigFileError) as info:
            db.backend_cls("t", str(path))
        assert str(info.value).startswith(f"{path}:{line}: {message}")

    def test_config_file_errors(self, db: Database, tmp_path: Path) -> None:
        path = tmp_path / "t.conf"
        path.write_text(
            "\n".join(db.connection_lines())
            + f"\nquery_domian SELECT 1 WHERE 1 = {db.placeholder}\n"
        )
        with pytest.raises(ConfigFileError) as info:
            db.backend_cls("t", str(path))
        n = len(db.connection_lines()) + 1
        assert str(info.value) == f"{path}:{n}: unknown key query_domian"
        path.write_text("\n".join(db.connection_lines()) + "\n")
        with pytest.raises(ConfigFileError, match="nothing to serve"):
            db.backend_cls("t", str(path))
        path.write_text(
            "\n".join(db.connection_lines())
            + "\nquery_timeout -1\n"
            + f"query_domain {queries(db.placeholder)['query_domain']}\n"
        )
        with pytest.raises(ConfigFileError, match="query_timeout: not a positive number"):
            db.backend_cls("t", str(path))
        with pytest.raises(BackendError, match="usage"):
            db.backend_cls("t", None)

    def test_query_timeout(self, db: Database, tmp_path: Path) -> None:
        if not db.slow_query:
            pytest.skip("no slow query for this database")
        b = self.backend(db, tmp_path, extra={"query_timeout": "1", "query_alias": db.slow_query})
        t0 = time.monotonic()
        with pytest.raises(BackendError, match="database error"):
            b.lookup("alias", "root")
        assert time.monotonic() - t0 < 2.5  # one timeout: a timed-out query is not retried
        assert b.lookup("domain", "example.org") == "example.org"

    # -- update --------------------------------------------------------------

    def test_update_swaps_only_a_good_config(self, db: Database, tmp_path: Path) -> None:
        path = write_config(tmp_path / "t.conf", db)
        b = db.backend_cls("t", str(path))
        p = db.placeholder
        write_config(
            path,
            db,
            extra={
                "query_alias": f"SELECT 'new-' || target FROM aliases WHERE source = {p}"
                if db.name != "mysql"
                else f"SELECT CONCAT('new-', target) FROM aliases WHERE source = {p}"
            },
        )
        b.update()
        assert b.lookup("alias", "postmaster") == "new-root"
        for bad in (
            {"query_alias": f"SELECT target, source FROM aliases WHERE source = {p}"},
            {"bogus_key": "1"},
            {"query_alias": f"SELECT target FROM nope WHERE source = {p}"},
        ):
            write_config(path, db, extra=bad)
            with pytest.raises(BackendError, match="update failed"):
                b.update()
            assert b.lookup("alias", "postmaster") == "new-root"

    # -- secrets -----------------------------------------------------------------

    def test_password_never_logged(
        self, db: Database, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        if not db.password:
            pytest.skip("no password")
        caplog.set_level(logging.DEBUG)
        b = self.backend(db, tmp_path)
        assert b.lookup("alias", "root") == "admin@example.org, ops@example.org"
        path = write_config(
            tmp_path / "u.conf",
            db,
            extra={"query_netaddr": f"SELECT x FROM absent WHERE y = {db.placeholder}"},
        )
        with pytest.raises(ConfigFileError):
            db.backend_cls("t", str(path))
        assert caplog.records
        assert db.password not in caplog.text

    # -- through the protocol ------------------------------------------------

    def test_conformance_checker(self, db: Database, tmp_path: Path) -> None:
        config = write_config(tmp_path / "t.conf", db)
        vectors = Path(__file__).parent / "sql.vectors"
        res = subprocess.run(
            [
                sys.executable,
                str(CHECKER),
                "--vectors",
                str(vectors),
                "--config",
                str(config),
                "--timeout",
                "15",
                "--",
                script(db),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert res.returncode == 0, res.stdout + res.stderr
        assert "FAIL" not in res.stdout
        assert res.stdout.count("PASS") >= 20

    def test_server_restart_without_backend_restart(self, db: Database, tmp_path: Path) -> None:
        if not db.restartable:
            pytest.skip("server is not ours to restart")
        config = write_config(tmp_path / "t.conf", db)
        argv, searched = find_backend(db.name)
        assert argv is not None, searched  # found through the entry point
        assert argv[0] == sys.executable

        async def scenario() -> None:
            table = ProcTable("users", argv, str(config), restart_min=0.1)
            await table.start()
            try:
                pid = table.pid
                got = await asyncio.gather(*(table.lookup("userinfo", "carol") for _ in range(20)))
                assert got == ["2001:2002:/var/vmail/carol"] * 20
                await asyncio.to_thread(db.stop_server)
                for _ in range(3):
                    with pytest.raises(TempFail):
                        await table.lookup("userinfo", "carol")
                    with pytest.raises(TempFail):
                        await table.check("domain", "example.org")
                await asyncio.to_thread(db.start_server)
                got = await asyncio.gather(*(table.lookup("userinfo", "carol") for _ in range(20)))
                assert got == ["2001:2002:/var/vmail/carol"] * 20
                assert await table.check("domain", "example.org") is True
                assert await table.lookup("alias", "nobody") is None
                assert table.pid == pid and table.running
            finally:
                await table.close()

        asyncio.run(scenario())

    def test_e2e_daemon_delivers_to_database_users(self, db: Database, tmp_path: Path) -> None:
        from harness import Daemon, wait_for  # core/tests/e2e, on sys.path via conftest

        d = Daemon(
            textwrap.dedent(f"""\
            table vusers {db.name}:{{state}}/sql.conf
            listen on 127.0.0.1 port {{port}}
            action "local" maildir "{{mail}}/%{{{{dest.user}}}}" virtual <vusers>
            match from any for domain "virt.example" action "local"
            """)
        )
        try:
            user = d.user
            tag = uuid.uuid4().hex[:8]
            db.execute(
                f"INSERT INTO aliases VALUES ('vu{tag}@virt.example', '{user}'), "
                f"('list{tag}@virt.example', 'vu{tag}@virt.example')"
            )
            p = db.placeholder
            write_config(
                d.state / "sql.conf",
                db,
                only=["query_alias"],
                extra={"query_alias": f"SELECT target FROM aliases WHERE source = {p}"},
            )
            d.start()
            # the backend's handshake is done before the first RCPT (a core
            # whose lka answered RCPT before its tables were up said 451 here)
            wait_for(lambda: "table vusers: backend pid" in d.log(), timeout=30)
            with smtplib.SMTP("127.0.0.1", d.port, timeout=30) as c:
                c.ehlo("client.example")
                refused = c.sendmail(
                    "a@example.org",
                    [f"vu{tag}@virt.example"],
                    b"Subject: user\r\n\r\nto the user\r\n",
                )
                assert refused == {}
                refused = c.sendmail(
                    "a@example.org",
                    [f"list{tag}@virt.example"],
                    b"Subject: alias\r\n\r\nto the alias\r\n",
                )
                assert refused == {}
                c.mail("a@example.org")
                code, _ = c.rcpt(f"nobody{tag}@virt.example")
                assert 500 <= code < 600
                c.rset()
            # %{dest.user} is the recipient address's user part; the alias's
            # mail follows it to the user's address (OpenSMTPD's envelope dest)
            box = f"vu{tag}"
            wait_for(lambda: len(d.maildir(box)) == 2, timeout=30)
            bodies = b"".join(d.maildir(box))
            assert (d.mail / box / "new").stat().st_uid == pwd.getpwnam(user).pw_uid
            assert b"to the user" in bodies and b"to the alias" in bodies
            log = d.log()
            assert "table vusers" in log
            if db.password:
                assert db.password not in log
        except BaseException:
            print(d.log()[-6000:])
            raise
        finally:
            d.cleanup()
            db.execute(f"DELETE FROM aliases WHERE source LIKE '%{tag}@virt.example'")
