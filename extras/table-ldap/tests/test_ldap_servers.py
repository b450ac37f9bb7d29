"""The backend process against the throwaway slapd: TLS, restarts, logs, the
conformance checker and a real mailriderd."""

from __future__ import annotations

import asyncio
import logging
import os
import smtplib
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import ldap3
import pytest
from mailrider.errors import TempFail
from mailrider.table.proc import ProcTable, find_backend
from mailrider.table.sdk import BackendError
from mailrider_table_ldap import LDAPBackend
from slapdserver import ROOTDN, ROOTPW, Slapd, base_config

Write = Callable[[str], str]
ROOT = Path(__file__).resolve().parents[3]


def proc_table(path: str, name: str = "lt") -> ProcTable:
    argv, searched = find_backend("ldap")
    assert argv is not None, searched
    return ProcTable(name, argv, path, timeout=10, restart_min=0.1)


def test_ldaps_and_starttls(slapd: Slapd, write_config: Write,
                            certs: dict[str, Path] | None) -> None:
    if certs is None or slapd.ldaps_url is None:
        pytest.skip("openssl not available to make test certificates")
    ca = f"ca_file: {certs['ca.crt']}\n"
    starttls = slapd.url.replace("ldap://", "ldap+tls://")
    for url in (slapd.ldaps_url, starttls):
        b = LDAPBackend("t", write_config(base_config(url, ca)))
        assert b.lookup("userinfo", "carol") == "2001:2001:/var/vmail/carol"
        assert b.check("auth", "carol:carol-Pw-1") is True
        assert b.check("auth", "carol:wrong") is False
        # without our CA the server certificate is not trusted: error, not "not found"
        untrusted = LDAPBackend("t", write_config(base_config(url, "query_timeout: 3\n")))
        with pytest.raises(BackendError):
            untrusted.lookup("userinfo", "carol")
        with pytest.raises(BackendError):
            untrusted.check("auth", "carol:carol-Pw-1")


def test_server_restart_during_lookups(slapd: Slapd, write_config: Write) -> None:
    path = write_config(base_config(slapd.url, "query_timeout: 3\n"))

    async def go() -> None:
        t = proc_table(path)
        await t.start()
        try:
            assert t.services >= {"alias", "userinfo", "auth"}
            results = await asyncio.gather(*(t.lookup("alias", "postmaster")
                                             for _ in range(100)))
            assert results == ["carol, dave@example.org"] * 100
            pid = t.pid
            await asyncio.to_thread(slapd.stop)
            outcomes = await asyncio.gather(*(t.lookup("alias", "postmaster")
                                              for _ in range(10)), return_exceptions=True)
            assert all(isinstance(o, TempFail) for o in outcomes), outcomes
            with pytest.raises(TempFail):
                await t.check("auth", "carol:carol-Pw-1")
            await asyncio.to_thread(slapd.start)
            # pooled connections are dead: the first request after the restart succeeds
            assert await t.lookup("alias", "postmaster") == "carol, dave@example.org"
            results = await asyncio.gather(*(t.lookup("userinfo", "carol")
                                             for _ in range(100)))
            assert results == ["2001:2001:/var/vmail/carol"] * 100
            assert await t.check("auth", "carol:carol-Pw-1") is True
            assert t.pid == pid
        finally:
            await t.close()

    asyncio.run(go())


def test_passwords_never_logged(slapd: Slapd, write_config: Write,
                                caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    path = write_config(base_config(slapd.url).replace("svc-Secret-pw", "Bad-Bind-Pw-9"))
    good = write_config(base_config(slapd.url))

    async def go() -> None:
        for p in (path, good):
            t = proc_table(p)
            await t.start()
            try:
                if p == path:  # the service bind fails: every request is an error
                    with pytest.raises(TempFail):
                        await t.lookup("alias", "postmaster")
                    with pytest.raises(TempFail):
                        await t.check("auth", "carol:Wrong-User-Pw-3")
                if p == good:
                    assert await t.check("auth", "carol:Wrong-User-Pw-3") is False
                    assert await t.check("auth", "carol:carol-Pw-1") is True
                    await t.update()
            finally:
                await t.close()

    asyncio.run(go())
    for secret in ("Bad-Bind-Pw-9", "svc-Secret-pw", "Wrong-User-Pw-3", "carol-Pw-1"):
        assert secret not in caplog.text
    assert "invalidCredentials" in caplog.text  # the failure itself is logged


def test_conformance_checker(slapd: Slapd, write_config: Write) -> None:
    checker = ROOT / "tools" / "conformance" / "check_table.py"
    if not checker.exists():
        pytest.skip("tools/conformance not available (not run from the repository)")
    path = write_config(base_config(slapd.url))
    program = Path(sys.executable).parent / "mailrider-table-ldap"
    res = subprocess.run(
        [sys.executable, str(checker), "--vectors", str(Path(__file__).parent / "ldap.vectors"),
         "--config", path, "--name", "vldap", "--", str(program)],
        capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "FAIL" not in res.stdout
    assert res.stdout.count("PASS vector") >= 15


def table_ready(port: int) -> bool:
    # lka answers RCPT before its proc tables finish their handshake ("backend not
    # running", 451); wait for the table rather than race it
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
        s.ehlo("probe.example")
        s.mail("probe@example.net")
        code, text = s.rcpt("probe@example.org")
    return not (code == 451 and b"not running" in text)


def test_e2e_virtual_user_and_alias_only_in_ldap(slapd: Slapd) -> None:
    sys.path.insert(0, str(ROOT / "core" / "tests" / "e2e"))
    try:
        from harness import Daemon, delivery_user, wait_for
    except ImportError:
        pytest.skip("core/tests/e2e/harness.py not available")
    conf = (
        "listen on 127.0.0.1 port {port}\n"
        "table vusers ldap:{state}/ldap.conf\n"
        'action "vmail" maildir "{mail}/%{{user.username}}" virtual <vusers> '
        "userbase <vusers>\n"
        'match from any for domain <vusers> action "vmail"\n'
    )
    d = Daemon(conf)
    du = delivery_user()
    admin = ldap3.Connection(slapd.url, user=ROOTDN, password=ROOTPW, auto_bind=True)
    vdn = "uid=vmailer,ou=people,dc=example,dc=org"
    aliases = {"vmailer@example.org": "vmailer", "info@example.org": "vmailer@example.org"}
    try:
        assert admin.add(vdn, ["inetOrgPerson", "posixAccount"], {
            "uid": "vmailer", "cn": "V", "sn": "M", "uidNumber": str(du.pw_uid),
            "gidNumber": str(du.pw_gid), "homeDirectory": f"{d.mail}/vmailer"}), admin.result
        for cn, target in aliases.items():
            assert admin.add(f"cn={cn},ou=aliases,dc=example,dc=org", ["nisMailAlias"],
                             {"cn": cn, "rfc822MailMember": target}), admin.result
        (d.state / "ldap.conf").write_text(
            f"url: {slapd.url}\nbasedn: dc=example,dc=org\n"
            "alias_filter: (&(objectClass=nisMailAlias)(cn=%u))\n"
            "alias_attributes: rfc822MailMember\n"
            "domain_filter: (associatedDomain=%u)\ndomain_attributes: associatedDomain\n"
            "userinfo_filter: (&(objectClass=posixAccount)(uid=%u))\n"
            "userinfo_attributes: uidNumber, gidNumber, homeDirectory\n")
        os.chmod(d.state / "ldap.conf", 0o644)
        d.start()
        wait_for(lambda: table_ready(d.port), 30)
        with smtplib.SMTP("127.0.0.1", d.port, timeout=30) as s:
            s.ehlo("client.example")
            assert s.sendmail("alice@example.net", ["vmailer@example.org"],
                              b"Subject: direct\r\n\r\nto vmailer\r\n") == {}
            assert s.sendmail("alice@example.net", ["info@example.org"],
                              b"Subject: via alias\r\n\r\nto info\r\n") == {}
            s.mail("alice@example.net")
            assert s.rcpt("nobody@example.org")[0] == 550
            s.rset()
            s.mail("alice@example.net")
            assert s.rcpt("vmailer@example.net")[0] == 550  # domain not in LDAP
        msgs = wait_for(lambda: len(d.maildir("vmailer")) == 2 and d.maildir("vmailer"), 30)
        bodies = b"".join(msgs)
        assert b"Subject: direct" in bodies and b"Subject: via alias" in bodies
        assert b"for <info@example.org>" in bodies
    except BaseException:
        print(d.log())
        raise
    finally:
        admin.delete(vdn)
        for cn in aliases:
            admin.delete(f"cn={cn},ou=aliases,dc=example,dc=org")
        admin.unbind()
        d.cleanup()
