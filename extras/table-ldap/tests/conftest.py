"""Fixtures: one throwaway slapd (with TLS when openssl is there) and config files."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from slapdserver import Slapd, make_certs, missing

REASON = missing()
HERE = Path(__file__).parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # the whole suite needs a throwaway slapd: skip it, saying why, when there is none
    if REASON:
        for item in items:
            if HERE in Path(str(item.path)).parents:
                item.add_marker(pytest.mark.skip(reason=REASON))


PEOPLE = "ou=people,dc=example,dc=org"

ENTRIES: list[dict[str, list[str] | str]] = [
    {"dn": f"uid=carol,{PEOPLE}", "objectClass": ["inetOrgPerson", "posixAccount"],
     "uid": "carol", "cn": "Carol", "sn": "Smith", "uidNumber": "2001", "gidNumber": "2001",
     "homeDirectory": "/var/vmail/carol", "userPassword": "carol-Pw-1",
     "mail": ["carol@example.org", "c.smith@example.org"], "description": "$2b$08$carolhash"},
    {"dn": f"uid=dave,{PEOPLE}", "objectClass": ["inetOrgPerson", "posixAccount"],
     "uid": "dave", "cn": "Dave", "sn": "Jones", "uidNumber": "2002", "gidNumber": "2002",
     "homeDirectory": "/var/vmail/dave", "userPassword": "dave-Pw-2",
     "mail": "dave@example.org"},
    # two entries for one uid: auth must refuse rather than pick one
    {"dn": f"cn=twin1,{PEOPLE}", "objectClass": "inetOrgPerson", "cn": "twin1", "sn": "T",
     "uid": "twin", "userPassword": "twin-pw"},
    {"dn": f"cn=twin2,{PEOPLE}", "objectClass": "inetOrgPerson", "cn": "twin2", "sn": "T",
     "uid": "twin", "userPassword": "twin-pw"},
    {"dn": "cn=postmaster,ou=aliases,dc=example,dc=org", "objectClass": "nisMailAlias",
     "cn": "postmaster", "rfc822MailMember": ["carol", "dave@example.org"]},
    {"dn": "cn=abuse,ou=aliases,dc=example,dc=org", "objectClass": "nisMailAlias",
     "cn": "abuse", "rfc822MailMember": "carol"},
    {"dn": "cn=a*b(c)\\5c,ou=aliases,dc=example,dc=org", "objectClass": "nisMailAlias",
     "cn": "a*b(c)\\", "rfc822MailMember": "special"},
    {"dn": "associatedDomain=example.org,ou=domains,dc=example,dc=org",
     "objectClass": ["domainRelatedObject", "organizationalUnit"], "ou": "d1",
     "associatedDomain": "example.org"},
    {"dn": "cn=relay,ou=hosts,dc=example,dc=org", "objectClass": ["device", "ipHost"],
     "cn": "relay", "ipHostNumber": "192.0.2.1"},
]


@pytest.fixture(scope="session")
def certs() -> Iterator[dict[str, Path] | None]:
    if shutil.which("openssl") is None:
        yield None
        return
    with tempfile.TemporaryDirectory() as d:
        os.chmod(d, 0o755)
        yield make_certs(Path(d))


@pytest.fixture(scope="session")
def slapd(certs: dict[str, Path] | None) -> Iterator[Slapd]:
    s = Slapd(ENTRIES, certs).start()
    yield s
    s.cleanup()


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[[str], str]:
    os.chmod(tmp_path, 0o755)
    counter = iter(range(1000))

    def write(text: str) -> str:
        path = tmp_path / f"ldap-{next(counter)}.conf"
        path.write_text(text)
        os.chmod(path, 0o644)
        return str(path)

    return write
