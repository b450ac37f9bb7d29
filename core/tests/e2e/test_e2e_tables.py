"""End to end: tables as an operator uses them (issue 3; docs/table-protocol.md,
docs/config.md §2, §8).

One daemon serves the module. Its rules, by recipient domain:

- vmap.test    virtual table in a PROC table (an SDK backend ``table-testmap``
               found through MAILRIDER_LIBEXEC), reloaded by ``update table``;
               keys ``broken*`` make it answer ``error``, ``crash*`` make it exit
- vdb.test     virtual table in a ``db:`` file built with ``mailriderctl makemap``
- static.test  virtual table in an inline static mapping
- srcok.test / srcno.test   ``from src <file table of CIDRs>``
- *.example.org             ``for domain <file table with a wildcard>``
- neg.test     ``!mail-from`` negation (only vip@ may write)
- tag.test     ``match tag`` of the second listener's ``tag INBOUND``
and first of all a ``mail-from <spammers> reject`` rule.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
from e2e_util import delivered, files_in, smtp_send, split_delivery, wait_delivered, wait_files
from harness import Daemon, free_port, wait_for

CONFIG = """\
listen on 127.0.0.1 port {port}
listen on 127.0.0.1 port TAGPORT tag INBOUND
table all {{ "@" = "{user}" }}
table vmap testmap:{state}/vmap.conf
table vdb db:{state}/vdb.db
table st {{ "a@static.test" = "{user}" }}
table nets file:{state}/nets
table othernets file:{state}/othernets
table doms file:{state}/doms
table spammers {{ "spam@bad.test", "@evil.test" }}
action "vmap" maildir "{mail}/vmap/%{{dest.user}}" virtual <vmap>
action "vdb" maildir "{mail}/vdb/%{{dest.user}}" virtual <vdb>
action "st" maildir "{mail}/st/%{{dest.user}}" virtual <st>
action "out" maildir "{mail}/%{{rcpt.domain}}/%{{rcpt.user}}" virtual <all>
match from local mail-from <spammers> for any reject
match from local for domain "vmap.test" action "vmap"
match from local for domain "vdb.test" action "vdb"
match from local for domain "static.test" action "st"
match from src <nets> for domain "srcok.test" action "out"
match from src <othernets> for domain "srcno.test" action "out"
match from local for domain <doms> action "out"
match from local !mail-from "vip@example.org" for domain "neg.test" reject
match from local for domain "neg.test" action "out"
match tag INBOUND for domain "tag.test" action "out"
"""

BACKEND = """\
#!{python}
import os
import sys
import time

from mailrider.table.sdk import Backend, BackendError, run

if os.path.basename(sys.argv[0]) == "slow":  # argv[0] is the table name
    time.sleep(1.5)  # a backend that takes its time to start (a database connect)


class TestMap(Backend):
    services = ("alias",)
    blocking = False

    def __init__(self, table_name, config_path):
        super().__init__(table_name, config_path)
        self.load()

    def load(self):
        entries = {{}}
        with open(self.config_path, encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if line and not line.startswith("#"):
                    key, _, value = line.partition(" ")
                    entries[key.lower()] = value.strip()
        self.entries = entries
        print(f"testmap {{self.table_name}} loaded {{len(entries)}} entries",
              file=sys.stderr, flush=True)

    def lookup(self, service, key):
        if key.startswith("broken"):
            raise BackendError("database unreachable")
        if key.startswith("crash"):
            os._exit(3)
        return self.entries.get(key)

    def update(self):
        self.load()


if __name__ == "__main__":
    sys.exit(run(TestMap))
"""

SENDER = "alice@example.org"


class Env:
    def __init__(self) -> None:
        self.libexec = Path(tempfile.mkdtemp(prefix="mailrider-libexec-", dir="/tmp"))
        os.chmod(self.libexec, 0o755)
        prog = self.libexec / "table-testmap"
        prog.write_text(BACKEND.format(python=sys.executable))
        os.chmod(prog, 0o755)
        self.tag_port = free_port()
        self.d = Daemon(CONFIG.replace("TAGPORT", str(self.tag_port)),
                        extra_env={"MAILRIDER_LIBEXEC": str(self.libexec)})
        st, user = self.d.state, self.d.user
        self.write("vmap.conf", f"list@vmap.test alice@vmap.test, bob@vmap.test\n@ {user}\n")
        self.write("vdb", f"# virtual users\nsales@vdb.test  carol@vdb.test,dave@vdb.test\n"
                          f"@vdb.test {user}\n")
        self.write("nets", "# the loopback block\n10.0.0.0/8\n127.0.0.0/8\n")
        self.write("othernets", "192.0.2.0/24\n2001:db8::/32\n")
        self.write("doms", "*.example.org\n")
        res = self.d.ctl("makemap", "-o", str(st / "vdb.db"), str(st / "vdb"))
        assert res.returncode == 0, res.stderr
        self.makemap_stderr = res.stderr
        os.chmod(st / "vdb.db", 0o644)
        self.d.start()

    def write(self, name: str, text: str) -> None:
        path = self.d.state / name
        path.write_text(text)
        os.chmod(path, 0o644)

    def close(self) -> None:
        self.d.cleanup()
        shutil.rmtree(self.libexec, ignore_errors=True)


@pytest.fixture(scope="module")
def env() -> Env:
    e = Env()
    yield e
    e.close()


def codes(t: object) -> list[int]:
    return [code for code, _ in t.rcpts]  # type: ignore[attr-defined]


def test_proc_table_virtual_expands_the_alias(env: Env) -> None:
    t = smtp_send(env.d.port, SENDER, ["list@vmap.test"])
    assert codes(t) == [250] and t.data is not None and t.data[0] == 250
    wait_delivered(env.d, "list@vmap.test", 2)
    for name in ("alice", "bob"):
        (msg,) = wait_files(env.d.mail / "vmap" / name / "new")
        assert split_delivery(msg)[0] == (b"Return-Path: <alice@example.org>\nDelivered-To: "
                                          + name.encode() + b"@vmap.test")
    assert sorted(os.listdir(env.d.mail / "vmap")) == ["alice", "bob"]
    # the backend was found in MAILRIDER_LIBEXEC and started as the table "vmap"
    assert "testmap vmap loaded 2 entries" in env.d.log()


def test_update_table_reloads_the_proc_backend(env: Env) -> None:
    env.write("vmap.conf", f"list@vmap.test carol@vmap.test\n@ {env.d.user}\n")
    res = env.d.ctl("update", "table", "vmap")
    assert res.stdout == "command succeeded\n"
    assert res.returncode == 0
    wait_for(lambda: env.d.log().count("testmap vmap loaded") >= 2)
    assert "testmap vmap loaded 1 entries" not in env.d.log()  # the @ line is an entry too
    assert env.d.log().count("testmap vmap loaded 2 entries") == 2
    before = delivered(env.d, "list@vmap.test")
    t = smtp_send(env.d.port, SENDER, ["list@vmap.test"])
    assert codes(t) == [250]
    wait_delivered(env.d, "list@vmap.test", before + 1)
    (msg,) = wait_files(env.d.mail / "vmap" / "carol" / "new")
    assert b"Delivered-To: carol@vmap.test\n" in msg
    # the old targets got nothing more
    assert len(files_in(env.d.mail / "vmap" / "alice" / "new")) == 1


def test_update_of_an_unknown_table_fails(env: Env) -> None:
    res = env.d.ctl("update", "table", "nosuch", check=False)
    assert res.returncode == 1
    assert res.stdout.startswith("command failed")
    assert "nosuch" in res.stdout


def test_backend_error_is_451_and_nothing_is_lost(env: Env) -> None:
    t = smtp_send(env.d.port, SENDER, ["broken@vmap.test", "ok@static.test", "a@static.test"])
    (c1, r1), (c2, _), (c3, _) = t.rcpts
    assert c1 == 451 and r1.startswith("4."), t.rcpts
    assert c2 == 550  # no such entry in the static table: permanent
    assert c3 == 250
    assert t.data is not None and t.data[0] == 250
    wait_delivered(env.d, "a@static.test")
    (msg,) = wait_files(env.d.mail / "st" / "a" / "new")
    assert b"Delivered-To: a@static.test\n" in msg
    assert not (env.d.mail / "vmap" / "broken").exists()


def test_backend_that_dies_gives_451_then_comes_back(env: Env) -> None:
    t = smtp_send(env.d.port, SENDER, ["crash@vmap.test"])
    assert codes(t) == [451], t.rcpts
    assert t.rcpts[0][1].startswith("4.")
    # restarted with a fresh handshake; mail to the table works again
    wait_for(lambda: env.d.log().count("testmap vmap loaded") >= 3)
    before = delivered(env.d, "list@vmap.test")
    t = smtp_send(env.d.port, SENDER, ["list@vmap.test"])
    assert codes(t) == [250], t.rcpts
    wait_delivered(env.d, "list@vmap.test", before + 1)
    # the daemon as a whole stayed up
    assert env.d.proc is not None and env.d.proc.poll() is None
    assert env.d.ctl("show", "status").stdout.splitlines()[0] == "MDA running"


def test_db_table_built_with_makemap(env: Env) -> None:
    assert "vdb.db: 2 keys" in env.makemap_stderr
    t = smtp_send(env.d.port, SENDER, ["sales@vdb.test", "Eve@vdb.test"])
    assert codes(t) == [250, 250]
    wait_delivered(env.d, "sales@vdb.test", 2)
    wait_delivered(env.d, "Eve@vdb.test")
    assert sorted(os.listdir(env.d.mail / "vdb")) == ["Eve", "carol", "dave"]
    (msg,) = wait_files(env.d.mail / "vdb" / "carol" / "new")
    assert b"Delivered-To: carol@vdb.test\n" in msg


def test_static_table(env: Env) -> None:
    t = smtp_send(env.d.port, SENDER, ["A@static.test", "b@static.test"])
    assert codes(t) == [250, 550]
    assert t.rcpts[1][1].startswith("5.1.1")


def test_from_src_with_a_file_table_of_cidrs(env: Env) -> None:
    t = smtp_send(env.d.port, SENDER, ["x@srcok.test", "y@srcno.test"])
    assert codes(t) == [250, 550]
    wait_delivered(env.d, "x@srcok.test")
    assert len(wait_files(env.d.mail / "srcok.test" / "x" / "new")) == 1


def test_for_domain_wildcard(env: Env) -> None:
    t = smtp_send(env.d.port, SENDER, ["u@a.example.org", "u@deep.b.Example.ORG",
                                       "u@example.net", "u@a.example.org.evil.test"])
    assert codes(t) == [250, 250, 550, 550]
    wait_delivered(env.d, "u@a.example.org")
    assert len(wait_files(env.d.mail / "a.example.org" / "u" / "new")) == 1


@pytest.mark.parametrize("sender", ["spam@bad.test", "SPAM@bad.test", "anyone@evil.test"])
def test_mail_from_reject_rule(env: Env, sender: str) -> None:
    t = smtp_send(env.d.port, sender, ["a@static.test"])
    assert t.rcpts == [(550, "5.7.1 Recipient rejected by policy")]
    assert t.data is None


def test_negated_condition(env: Env) -> None:
    t = smtp_send(env.d.port, "vip@example.org", ["n@neg.test"])
    assert codes(t) == [250]
    t = smtp_send(env.d.port, "other@example.org", ["n@neg.test"])
    assert t.rcpts == [(550, "5.7.1 Recipient rejected by policy")]
    wait_delivered(env.d, "n@neg.test")
    assert len(files_in(env.d.mail / "neg.test" / "n" / "new")) == 1


def test_listener_tag(env: Env) -> None:
    untagged = smtp_send(env.d.port, SENDER, ["t@tag.test"])
    assert codes(untagged) == [550]
    tagged = smtp_send(env.tag_port, SENDER, ["t@tag.test"])
    assert codes(tagged) == [250]
    wait_delivered(env.d, "t@tag.test")
    assert len(wait_files(env.d.mail / "tag.test" / "t" / "new")) == 1



def test_rcpt_while_a_proc_table_is_still_starting_waits_for_it() -> None:
    """Regression: lka answered 451 'backend not running' until the handshake was done."""
    libexec = Path(tempfile.mkdtemp(prefix="mailrider-libexec-", dir="/tmp"))
    try:
        os.chmod(libexec, 0o755)
        prog = libexec / "table-testmap"
        prog.write_text(BACKEND.format(python=sys.executable))
        os.chmod(prog, 0o755)
        d = Daemon("listen on 127.0.0.1 port {port}\n"
                   "table slow testmap:{state}/slow.conf\n"
                   'action "x" maildir "{mail}/%{{dest.user}}" virtual <slow>\n'
                   'match from local for domain "slow.test" action "x"\n',
                   extra_env={"MAILRIDER_LIBEXEC": str(libexec)})
        (d.state / "slow.conf").write_text(f"@ {d.user}\n")
        os.chmod(d.state / "slow.conf", 0o644)
        with d:
            t = smtp_send(d.port, SENDER, ["first@slow.test"])
            assert codes(t) == [250], t.rcpts
            assert "loaded 1 entries" in d.log()
            wait_delivered(d, "first@slow.test")
            assert len(wait_files(d.mail / "first" / "new")) == 1
    finally:
        shutil.rmtree(libexec, ignore_errors=True)
