"""RedisBackend in process against a real Redis: reply types, services, injection, config."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from mailrider.table.sdk import BackendError, ConfigFileError
from mailrider_table_redis import (
    SERVICES,
    RedisBackend,
    expand,
    load_config,
    split_template,
)
from redisserver import Target

Write = Callable[[str], str]


def backend(write_config: Write, text: str) -> RedisBackend:
    return RedisBackend("t", write_config(text))


# -- per service with the default templates (GET <service>:%s) ----------------------------


@pytest.mark.parametrize("service", SERVICES)
def test_default_template_found_notfound_error(
    target: Target, write_config: Write, service: str
) -> None:
    c, p = target.client, target.prefix
    value = {"credentials": "bob:$2b$08$hash", "userinfo": "1000:1000:/home/bob",
             "netaddr": "192.0.2.0/24", "source": "192.0.2.1"}.get(service, "value-" + service)
    c.set(f"{service}:{p}found", value)
    c.rpush(f"{service}:{p}wrongtype", "x")
    b = backend(write_config, target.config())
    assert b.lookup(service, f"{p}found") == value
    assert b.check(service, f"{p}found") is True
    assert b.lookup(service, f"{p}absent") is None
    assert b.check(service, f"{p}absent") is False
    with pytest.raises(BackendError, match="WRONGTYPE"):
        b.lookup(service, f"{p}wrongtype")
    with pytest.raises(BackendError, match="WRONGTYPE"):
        b.check(service, f"{p}wrongtype")


# -- reply-type rules of docs/table-protocol.md §10.3 ---------------------------------------


def test_check_integer_reply_is_its_truth(target: Target, write_config: Write) -> None:
    p = target.prefix
    target.client.sadd(f"{p}domains", "example.org")
    b = backend(write_config, target.config(f"query_domain SISMEMBER {p}domains %s\n"))
    assert b.check("domain", "example.org") is True
    assert b.check("domain", "example.net") is False
    # lookup of domain accepts only a string reply
    with pytest.raises(BackendError, match="int"):
        b.lookup("domain", "example.org")


def test_arrays_join_per_service(target: Target, write_config: Write) -> None:
    c, p = target.client, target.prefix
    c.rpush(f"{p}alias:team", "alice", "bob@example.org", "|/usr/bin/vacation")
    c.hset(f"{p}user:bob", mapping={"name": "bob", "hash": "$2b$x", "uid": "1001",
                                    "gid": "1001", "home": "/home/bob"})
    c.hset(f"{p}user:half", mapping={"name": "half"})
    c.sadd(f"{p}senders:bob", "bob@example.org")
    b = backend(write_config, target.config(
        f"query_alias LRANGE {p}alias:%s 0 -1\n"
        f"query_credentials HMGET {p}user:%s name hash\n"
        f"query_userinfo HMGET {p}user:%s uid gid home\n"
        f"query_mailaddrmap SMEMBERS {p}senders:%s\n"
        f"query_mailaddr LRANGE {p}alias:%s 0 -1\n"))
    assert b.lookup("alias", "team") == "alice, bob@example.org, |/usr/bin/vacation"
    assert b.lookup("alias", "nobody") is None  # empty array
    assert b.check("alias", "team") is True
    assert b.check("alias", "nobody") is False
    assert b.lookup("credentials", "bob") == "bob:$2b$x"
    assert b.lookup("userinfo", "bob") == "1001:1001:/home/bob"
    assert b.lookup("credentials", "nobody") is None  # HMGET of no hash: all nil
    with pytest.raises(BackendError, match="incomplete"):
        b.lookup("credentials", "half")
    assert b.lookup("mailaddrmap", "bob") == "bob@example.org"
    with pytest.raises(BackendError, match="list"):  # mailaddr: string only
        b.lookup("mailaddr", "team")


def test_error_reply_is_error_not_notfound(target: Target, write_config: Write) -> None:
    b = backend(write_config, target.config("query_alias NOSUCHCOMMAND %s\n"
                                            "query_domain GET\n"))
    with pytest.raises(BackendError, match="unknown command"):
        b.lookup("alias", "x")
    with pytest.raises(BackendError, match="wrong number of arguments"):
        b.check("domain", "x")


# -- the key is one argument --------------------------------------------------------------

INJECTION_KEYS = ["x' OR '1'='1", "a b", '"quoted"', "*", "a*", "  lead", "%s%%", "x\ty",
                  "k|pipe", "\\", "alias:*"]


@pytest.mark.parametrize("key", INJECTION_KEYS)
def test_key_is_one_argument(target: Target, write_config: Write, key: str) -> None:
    c, p = target.client, target.prefix
    c.hset(f"{p}h", key, "value of " + key)
    c.set(f"alias:{p}{key}", "alias of " + key)
    c.set(f"alias:{p}other", "must not leak")
    b = backend(write_config, target.config(f"query_domain HGET {p}h %s\n"))
    # HGET takes exactly two arguments: a split key would be an arity error
    assert b.lookup("domain", key) == "value of " + key
    assert b.lookup("alias", p + key) == "alias of " + key
    assert b.lookup("domain", key + " extra") is None


def test_template_split_before_substitution() -> None:
    t = split_template("HGET  users:%s\tfield%%  %%s")
    assert expand(t, "a b %s") == ["HGET", "users:a b %s", "field%", "%s"]
    assert expand(split_template("GET %s%s"), "k") == ["GET", "kk"]
    for bad in ("", "   ", "GET %d", "GET x%"):
        with pytest.raises(ValueError):
            split_template(bad)


# -- configuration ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("master 127.0.0.1\nbogus 1\n", 2, "unknown key bogus"),
        ("# c\n\ndatabase 300\n", 3, "database: not a database number"),
        ("database: -1\n", 1, "database"),
        ("master_port 70000\n", 1, "master_port: not a port number"),
        ("slave_port 6381\n", 1, "slave_port without slave"),
        ("master unix:relative.sock\n", 1, "must be absolute"),
        ("query_alias GET %d\n", 1, "query_alias: unknown sequence %d"),
        ("query_timeout 0\n", 1, "query_timeout"),
        ("tls_ca_file /etc/ssl/ca.pem\n", 1, "needs tls yes"),
        ("tls yes\ntls_cert_file /c.pem\n", 2, "missing required key tls_key_file"),
        ("tls maybe\n", 1, "expected yes or no"),
        ("tls yes\nmaster unix:/run/redis.sock\n", 1, "TLS over a unix socket"),
        ("password\n", 1, "no value for password"),
        ("password a\npassword b\n", 2, "duplicate key password"),
    ],
)
def test_config_errors_name_file_and_line(
    write_config: Write, text: str, line: int, message: str
) -> None:
    path = write_config(text)
    with pytest.raises(ConfigFileError) as exc:
        load_config(path)
    assert str(exc.value).startswith(f"{path}:{line}: ")
    assert message in str(exc.value)


def test_config_error_never_shows_the_password(write_config: Write) -> None:
    path = write_config("password s3cr3t-value\ndatabase x\n")
    with pytest.raises(ConfigFileError) as exc:
        load_config(path)
    assert "s3cr3t" not in str(exc.value)
    cfg = load_config(write_config("password s3cr3t-value\n"))
    assert "s3cr3t" not in repr(cfg)


def test_config_syntax_variants(write_config: Write) -> None:
    cfg = load_config(write_config(
        "master: 192.0.2.1\nmaster_port:  7000\nslave unix:/run/r.sock\ndatabase 3\n"
        "query_alias: SMEMBERS a:%s\n"))
    assert (cfg.master.host, cfg.master.port, cfg.database) == ("192.0.2.1", 7000, 3)
    assert cfg.slave is not None and cfg.slave.path == "/run/r.sock"
    assert expand(cfg.queries["alias"], "k") == ["SMEMBERS", "a:k"]
    assert expand(cfg.queries["source"], "k") == ["GET", "source:k"]
    assert load_config(write_config("# only a comment\n")).master.port == 6379


def test_no_config_path_is_an_error() -> None:
    with pytest.raises(BackendError, match="usage"):
        RedisBackend("t", None)


# -- update ------------------------------------------------------------------------------------


def test_update_rereads_and_keeps_old_config_on_failure(
    target: Target, write_config: Write
) -> None:
    c, p = target.client, target.prefix
    c.set(f"{p}one:k", "one")
    c.set(f"{p}two:k", "two")
    path = write_config(target.config(f"query_alias GET {p}one:%s\n"))
    b = RedisBackend("t", path)
    assert b.lookup("alias", "k") == "one"
    with open(path, "w") as f:
        f.write(target.config(f"query_alias GET {p}two:%s\n"))
    b.update()
    assert b.lookup("alias", "k") == "two"
    with open(path, "w") as f:
        f.write(target.config("bogus_key 1\n"))
    with pytest.raises(BackendError, match="unknown key bogus_key"):
        b.update()
    assert b.lookup("alias", "k") == "two"
    with open(path, "w") as f:  # nothing listens on port 1 of loopback
        f.write(f"master 127.0.0.1\nmaster_port 1\nquery_alias GET {p}one:%s\n")
    with pytest.raises(BackendError, match="new configuration not used"):
        b.update()
    assert b.lookup("alias", "k") == "two"
