"""parent_mda.decide: who runs a local delivery and what it runs, from the
parent's own knowledge, only for an envelope lka sealed (rule 1 of
docs/security.md). Pure calls: no fork, no socket (the parent's handlers
over a real channel are in test_parent.py)."""

from __future__ import annotations

import dataclasses
import os
import pwd

import pytest
from mailrider import paths
from mailrider.config import parse_string
from mailrider.delivery import grant
from mailrider.errors import PermFail, TempFail
from mailrider.proc.parent_mda import Forged, decide
from mailrider.queue import envelope as envmod
from mailrider.queue.envelope import Delivery, Envelope

KEY = bytes(range(32))
#: a user that is not root (the tests run as root in CI)
ME = pwd.getpwnam(paths.EXT_USER) if os.geteuid() == 0 else pwd.getpwuid(os.getuid())
CONFIG = f"""
table remote {{ "x" = "y" }}
action "local" maildir "/tmp/%{{user.username}}"
action "prog" mda "/bin/true"
action "as-me" maildir user {ME.pw_name}
action "vu" maildir userbase <remote>
match from any for any action "local"
"""


def sealed(**over: object) -> Envelope:
    """An envelope as lka seals it and the queue reads it back from the spool."""
    d = Delivery(dispatcher="local", rcpt="u@x.example", dest="u@x.example", method="maildir",
                 user=ME.pw_name, uid=ME.pw_uid, gid=ME.pw_gid, home=ME.pw_dir)
    d = dataclasses.replace(d, **over)  # type: ignore[arg-type]
    seal = grant.seal(KEY, {**envmod.delivery_fields(d), "sender": "s@y.example"})
    env = Envelope(evpid="0000abcd00000001", sender="s@y.example",
                   delivery=dataclasses.replace(d, grant=seal))
    return envmod.parse(envmod.serialise(env))


CFG = parse_string(CONFIG, file="test.conf")


def test_a_sealed_envelope_is_decided_from_the_configuration() -> None:
    plan = decide(CFG, KEY, sealed(), root=False)
    assert (plan.action.name, plan.method, plan.arg, plan.user) == (
        "local", "maildir", None, ME.pw_name)
    assert plan.uid is None  # not root: it delivers as itself


@pytest.mark.parametrize("forge", [
    {"user": "root"}, {"uid": 0}, {"gid": 0}, {"home": "/root"}, {"method": "pipe"},
    {"arg": "/bin/sh -c evil"}, {"dispatcher": "prog"}, {"rcpt": "v@x.example"},
    {"dest": "v@x.example"}, {"local_user": "root"}, {"subaddress": "x"}, {"grant": ""},
    {"grant": "0" * 64},
])
def test_a_forged_grant_is_refused(forge: dict[str, object]) -> None:
    env = sealed()
    forged = dataclasses.replace(env, delivery=dataclasses.replace(env.delivery, **forge))  # type: ignore[arg-type]
    with pytest.raises(Forged) as caught:
        decide(CFG, KEY, forged, root=True)
    assert caught.value.reply().startswith("451 4.7.0")
    # the sender and the key are sealed too
    with pytest.raises(Forged):
        decide(CFG, KEY, dataclasses.replace(env, sender="other@y.example"), root=True)
    with pytest.raises(Forged):
        decide(CFG, bytes(32), env, root=True)


def test_fields_outside_the_grant_do_not_matter() -> None:
    env = dataclasses.replace(sealed(), retry=4, errorline="451 4.0.0 x", extra=(("x-new", "1"),))
    assert decide(CFG, KEY, env, root=False).user == ME.pw_name


def test_a_sealed_decision_the_configuration_no_longer_allows() -> None:
    # the action went away, or delivers another way, or as another user now
    with pytest.raises(TempFail, match="no action"):
        decide(CFG, KEY, sealed(dispatcher="gone"), root=False)
    with pytest.raises(TempFail, match="does not deliver by"):
        decide(CFG, KEY, sealed(method="mbox"), root=False)
    with pytest.raises(TempFail, match="now delivers as"):
        decide(CFG, KEY, sealed(dispatcher="as-me", method="maildir", user="someone"),
               root=False)
    with pytest.raises(PermFail, match="without argument"):
        decide(CFG, KEY, sealed(method="pipe", arg=""), root=False)


def test_virtual_users_take_the_sealed_ids_but_never_group_0() -> None:
    plan = decide(CFG, KEY, sealed(dispatcher="vu", user="v", uid=5000, gid=5000,
                                   home="/var/v"), root=True)
    assert (plan.uid, plan.gid, plan.home, plan.groups) == (5000, 5000, "/var/v", (5000,))
    with pytest.raises(PermFail, match="group 0"):
        decide(CFG, KEY, sealed(dispatcher="vu", user="v", uid=5000, gid=0), root=True)
    with pytest.raises(TempFail, match="bad uid/gid"):
        decide(CFG, KEY, sealed(dispatcher="vu", user="v", uid=None, gid=None), root=True)


def test_the_user_cache_keeps_the_parents_own_answers_for_a_bounded_time(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from mailrider.proc import parent_mda

    reads: list[str] = []
    real = parent_mda.lookup_user

    def counting(name: str) -> parent_mda.SystemUser | None:
        reads.append(name)
        return real(name)

    now = [1000.0]
    monkeypatch.setattr(parent_mda, "lookup_user", counting)
    cache = parent_mda.UserCache(ttl=2.0, size=2, clock=lambda: now[0])
    first = cache.get(ME.pw_name)
    assert first is not None and (first.uid, first.gid) == (ME.pw_uid, ME.pw_gid)
    assert cache.get(ME.pw_name) == first and reads == [ME.pw_name]
    now[0] += 2.0  # the TTL is over: read again
    assert cache.get(ME.pw_name) == first and reads == [ME.pw_name] * 2
    # a missing user is never kept
    assert cache.get("no-such-user-here") is None
    assert cache.get("no-such-user-here") is None
    assert reads[2:] == ["no-such-user-here"] * 2
    # bounded: a third user pushes the oldest out
    cache.get("root")
    cache.get("nobody")
    assert len(cache) == 2


def test_decide_through_the_cache_refuses_as_decide_does() -> None:
    from mailrider.proc.parent_mda import UserCache

    cache = UserCache()
    plan = decide(CFG, KEY, sealed(), root=True, users=cache)
    assert (plan.uid, plan.gid, plan.home) == (ME.pw_uid, ME.pw_gid, ME.pw_dir)
    assert plan == decide(CFG, KEY, sealed(), root=True)
    # root from the cache is still root: refused
    root = pwd.getpwnam("root")
    with pytest.raises(PermFail):
        decide(CFG, KEY, sealed(user="root", uid=0, gid=0, home=root.pw_dir), root=True,
               users=cache)
    with pytest.raises(TempFail):
        decide(CFG, KEY, sealed(user="no-such-user-here"), root=True, users=cache)
    # the seal is checked before any lookup, cached or not
    env = sealed()
    with pytest.raises(Forged):
        decide(CFG, bytes(32), env, root=True, users=cache)
