"""LDAPBackend in process against a throwaway slapd: services, escaping, auth, config."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from mailrider.table.sdk import BackendError, ConfigFileError
from mailrider_table_ldap import (
    ATTRIBUTE_COUNT,
    LDAPBackend,
    compile_filter,
    load_config,
    render_filter,
)
from slapdserver import SERVICE_DN, Slapd, base_config, free_port

Write = Callable[[str], str]

# service -> (key found, expected value, key not found)
CASES = {
    "alias": ("postmaster", "carol, dave@example.org", "nobody"),
    "credentials": ("carol", "carol:$2b$08$carolhash", "nobody"),
    "domain": ("example.org", "example.org", "example.net"),
    "userinfo": ("carol", "2001:2001:/var/vmail/carol", "nobody"),
    "mailaddr": ("dave@example.org", "dave@example.org", "eve@example.org"),
    "mailaddrmap": ("carol", "carol@example.org, c.smith@example.org", "nobody"),
    "netaddr": ("192.0.2.1", "192.0.2.1", "192.0.2.2"),
}


def backend(write_config: Write, text: str, name: str = "t") -> LDAPBackend:
    return LDAPBackend(name, write_config(text))


@pytest.mark.parametrize("service", sorted(ATTRIBUTE_COUNT))
def test_service_found_notfound_error(slapd: Slapd, write_config: Write, service: str) -> None:
    found, value, absent = CASES[service]
    b = backend(write_config, base_config(slapd.url))
    assert b.lookup(service, found) == value
    assert b.check(service, found) is True
    assert b.lookup(service, absent) is None
    assert b.check(service, absent) is False
    # a base that does not exist is an LDAP error (noSuchObject), never "not found"
    bad = backend(write_config, base_config(slapd.url).replace(
        "basedn: dc=example,dc=org", "basedn: ou=missing,dc=example,dc=org"))
    with pytest.raises(BackendError, match="noSuchObject"):
        bad.lookup(service, found)
    with pytest.raises(BackendError, match="noSuchObject"):
        bad.check(service, found)


def test_registered_services_follow_the_filters(slapd: Slapd, write_config: Write) -> None:
    b = backend(write_config, base_config(slapd.url))
    assert set(b.registered()) == {*ATTRIBUTE_COUNT, "auth"}
    only = backend(write_config, f"url {slapd.url}\nbasedn dc=example,dc=org\n"
                                 "domain_filter (associatedDomain=%u)\n"
                                 "domain_attributes associatedDomain\n")
    assert only.registered() == ("domain",)
    assert only.check("domain", "example.org") is True  # anonymous bind


def test_entry_without_the_attributes_is_not_found(slapd: Slapd, write_config: Write) -> None:
    b = backend(write_config, base_config(slapd.url))
    assert b.check("credentials", "dave") is True  # the entry exists...
    assert b.lookup("credentials", "dave") is None  # ...but has no description


# -- escaping ---------------------------------------------------------------------------------

INJECTIONS = ["*", "*)(cn=*", "postmaster)(|(cn=*", "nobody)(objectClass=*", "\\2a",
              "post*", "*)(uid=*", "x\x00y", "(", ")"]


@pytest.mark.parametrize("key", INJECTIONS)
def test_key_cannot_change_the_filter(slapd: Slapd, write_config: Write, key: str) -> None:
    b = backend(write_config, base_config(slapd.url))
    assert b.lookup("alias", key) is None
    assert b.check("alias", key) is False
    assert b.check("userinfo", key) is False
    assert b.check("auth", f"{key}:carol-Pw-1") is False


def test_special_characters_match_literally(slapd: Slapd, write_config: Write) -> None:
    b = backend(write_config, base_config(slapd.url))
    assert b.lookup("alias", "a*b(c)\\") == "special"
    assert b.lookup("alias", "a*b(c)") is None


def test_filter_sequences(slapd: Slapd, write_config: Write) -> None:
    parts = compile_filter("(&(cn=%u)(x=%h)(y=%s)(z=100%%))")
    assert render_filter(parts, "k*", "t(") == "(&(cn=k\\2a)(x=t\\28)(y=k\\2a)(z=100%))"
    for bad in ("(cn=%x)", "(cn=%)", "(cn=%d)"):
        with pytest.raises(ValueError):
            compile_filter(bad)
    # %h is the table name: a table named after the alias answers for every key
    b = backend(write_config, f"url {slapd.url}\nbasedn dc=example,dc=org\n"
                              "alias_filter (cn=%h)\nalias_attributes rfc822MailMember\n",
                name="abuse")
    assert b.lookup("alias", "anything") == "carol"
    s = backend(write_config, f"url {slapd.url}\nbasedn dc=example,dc=org\n"
                              "alias_filter (&(objectClass=nisMailAlias)(cn=%s))\n"
                              "alias_attributes rfc822MailMember\n")
    assert s.lookup("alias", "abuse") == "carol"


# -- auth -------------------------------------------------------------------------------------


def test_auth_binds_as_the_user(slapd: Slapd, write_config: Write) -> None:
    b = backend(write_config, base_config(slapd.url))
    assert b.check("auth", "carol:carol-Pw-1") is True
    assert b.check("auth", "dave:dave-Pw-2") is True
    assert b.check("auth", "carol:dave-Pw-2") is False
    assert b.check("auth", "carol:CAROL-PW-1") is False
    assert b.check("auth", "carol:carol-Pw-1x") is False
    assert b.check("auth", "carol:") is False  # empty password: never an anonymous bind
    assert b.check("auth", "carol") is False
    assert b.check("auth", ":carol-Pw-1") is False
    assert b.check("auth", "nobody:carol-Pw-1") is False
    assert b.check("auth", "twin:twin-pw") is False  # two entries: refused
    assert b.check("auth", "carol:pass:with:colons") is False
    with pytest.raises(BackendError, match="check only"):
        b.lookup("auth", "carol:carol-Pw-1")


def test_auth_error_when_directory_unreachable(write_config: Write) -> None:
    b = backend(write_config, base_config(f"ldap://127.0.0.1:{free_port()}",
                                          "query_timeout 2\n"))
    with pytest.raises(BackendError) as exc:
        b.check("auth", "carol:carol-Pw-1")
    assert "carol-Pw-1" not in str(exc.value)
    with pytest.raises(BackendError):
        b.lookup("alias", "postmaster")


def test_wrong_bind_password_is_error_without_the_password(
    slapd: Slapd, write_config: Write
) -> None:
    b = backend(write_config, base_config(slapd.url).replace("svc-Secret-pw", "Wrong-Bind-7"))
    with pytest.raises(BackendError, match="invalidCredentials") as exc:
        b.lookup("alias", "postmaster")
    assert "Wrong-Bind-7" not in str(exc.value)
    with pytest.raises(BackendError):
        b.check("domain", "example.org")


def test_ldapi_socket(slapd: Slapd, write_config: Write) -> None:
    b = backend(write_config, base_config(slapd.ldapi_url))
    assert b.lookup("userinfo", "carol") == "2001:2001:/var/vmail/carol"
    assert b.check("auth", "carol:carol-Pw-1") is True


# -- configuration ---------------------------------------------------------------------------

GOOD = "url ldap://127.0.0.1\nbasedn dc=example,dc=org\n"


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        (GOOD + "credentials_filter (uid=%u)\ncredentials_attributes uid\n", 4,
         "credentials needs exactly 2 attributes, got 1"),
        (GOOD + "userinfo_filter (uid=%u)\nuserinfo_attributes a, b, c, d\n", 4,
         "userinfo needs exactly 3 attributes, got 4"),
        (GOOD + "alias_filter (cn=%u)\n", 3, "missing required key alias_attributes"),
        (GOOD + "alias_attributes cn\n", 3, "no alias_filter"),
        (GOOD + "alias_filter (cn=%x)\nalias_attributes cn\n", 3, "unknown sequence %x"),
        (GOOD + "alias_filter (cn=%u\nalias_attributes cn\n", 3, "invalid LDAP filter"),
        (GOOD + "alias_filter cn=%u\nalias_attributes cn\n", 3, "invalid LDAP filter"),
        ("url http://x\nbasedn dc=x\nauth_filter (uid=%u)\n", 1, "expected ldap://"),
        ("url ldapi://relative\nbasedn dc=x\nauth_filter (uid=%u)\n", 1, "absolute socket"),
        ("url ldap://h/dc=x\nbasedn dc=x\nauth_filter (uid=%u)\n", 1, "no path"),
        (GOOD + "ca_file /etc/ssl/ca.pem\nauth_filter (uid=%u)\n", 3, "only with ldaps"),
        (GOOD + "username cn=x\nauth_filter (uid=%u)\n", 3, "missing required key password"),
        (GOOD + "query_timeout soon\nauth_filter (uid=%u)\n", 3, "query_timeout"),
        (GOOD + "bogus 1\n", 3, "unknown key bogus"),
        (GOOD + "alias_filter (cn=%u)\nalias_filter (cn=%u)\n", 4, "duplicate key"),
    ],
)
def test_config_errors_name_file_and_line(
    write_config: Write, text: str, line: int, message: str
) -> None:
    path = write_config(text)
    with pytest.raises(ConfigFileError) as exc:
        load_config(path)
    assert str(exc.value).startswith(f"{path}:{line}: "), str(exc.value)
    assert message in str(exc.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("basedn dc=x\nauth_filter (uid=%u)\n", "missing required key url"),
        ("url ldap://h\nauth_filter (uid=%u)\n", "missing required key basedn"),
        (GOOD, "no service configured"),
    ],
)
def test_config_errors_without_line(write_config: Write, text: str, message: str) -> None:
    path = write_config(text)
    with pytest.raises(ConfigFileError, match=message) as exc:
        load_config(path)
    assert str(exc.value).startswith(f"{path}: ")


def test_config_urls_and_password_hidden(write_config: Write) -> None:
    cfg = load_config(write_config(
        "url: ldaps://[::1]:1636\nusername: cn=a\npassword: hidden-Pw\nbasedn: dc=x\n"
        "ca_file: /etc/ssl/ca.pem\nauth_filter: (uid=%u)\n"))
    assert (cfg.scheme, cfg.host, cfg.port) == ("ldaps", "::1", 1636)
    assert "hidden-Pw" not in repr(cfg)
    cfg = load_config(write_config(GOOD.replace("ldap://127.0.0.1", "ldap+tls://ldap.example")
                                   + "auth_filter (uid=%u)\n"))
    assert (cfg.scheme, cfg.host, cfg.port) == ("ldap+tls", "ldap.example", 389)
    cfg = load_config(write_config(GOOD.replace("ldap://127.0.0.1", "ldapi://%2Frun%2Fldapi")
                                   + "auth_filter (uid=%u)\n"))
    assert cfg.socket_path == "/run/ldapi"


# -- update -----------------------------------------------------------------------------------


def test_update_rereads_and_keeps_old_config_on_failure(
    slapd: Slapd, write_config: Write
) -> None:
    path = write_config(base_config(slapd.url))
    b = LDAPBackend("t", path)
    assert b.lookup("alias", "postmaster") == "carol, dave@example.org"
    with open(path, "w") as f:
        f.write(base_config(slapd.url).replace("alias_attributes: rfc822MailMember",
                                               "alias_attributes: cn"))
    b.update()
    assert b.lookup("alias", "postmaster") == "postmaster"
    with open(path, "w") as f:
        f.write(base_config(slapd.url) + "credentials_attributes: uid\n")
    with pytest.raises(BackendError, match="duplicate key credentials_attributes"):
        b.update()
    with open(path, "w") as f:
        f.write(base_config(slapd.url).replace(SERVICE_DN, "cn=nobody,dc=example,dc=org"))
    with pytest.raises(BackendError, match="new configuration not used"):
        b.update()
    assert b.lookup("alias", "postmaster") == "postmaster"
