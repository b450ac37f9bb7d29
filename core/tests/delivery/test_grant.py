"""Delivery grants: the seal lka puts on what it decided, and the key file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from mailrider.delivery import grant

KEY = b"k" * 32
ENV = {"dispatcher": "local", "sender": "a@b", "rcpt": "c@d", "dest": "c@d",
       "mda-method": "pipe", "mda-arg": "/bin/true", "mda-user": "u", "mda-uid": "1000",
       "mda-gid": "1000", "mda-home": "/home/u"}


def sealed(**over: str) -> dict[str, str]:
    env = dict(ENV, **over)
    env[grant.KEY] = grant.seal(KEY, env)
    return env


def test_seal_verifies_and_covers_every_field() -> None:
    env = sealed()
    assert grant.verify(KEY, env)
    for name in grant.FIELDS:
        changed = dict(env)
        changed[name] = changed.get(name, "") + "x"
        assert not grant.verify(KEY, changed), name
    assert not grant.verify(b"j" * 32, env)
    # fields outside the seal may change (the queue's retry count, say)
    assert grant.verify(KEY, dict(env, retry="3", evpid="0123456789abcdef"))


def test_field_boundaries_are_unambiguous() -> None:
    # moving text from one field to the next must change the seal
    a = grant.seal(KEY, dict(ENV, **{"mda-user": "ab", "mda-uid": "1"}))
    b = grant.seal(KEY, dict(ENV, **{"mda-user": "a", "mda-uid": "b1"}))
    assert a != b
    assert grant.seal(KEY, dict(ENV, **{"mda-subaddress": ""})) == grant.seal(KEY, ENV)


@pytest.mark.parametrize("bad", [None, "", "0" * 63, "g" * 64, 5])
def test_missing_or_malformed_seals_fail(bad: object) -> None:
    env: dict[str, object] = dict(ENV)
    if bad is not None:
        env[grant.KEY] = bad
    assert not grant.verify(KEY, env)


def test_key_file_is_made_once_private_and_kept(tmp_path: Path) -> None:
    key = grant.load_or_create(str(tmp_path))
    path = tmp_path / grant.KEY_FILE
    assert len(key) == grant.KEY_SIZE
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert grant.load_or_create(str(tmp_path)) == key  # a restart keeps the key
    os.chmod(path, 0o644)
    with pytest.raises(PermissionError):
        grant.load_or_create(str(tmp_path))
    os.chmod(path, 0o600)
    path.write_bytes(b"short")
    with pytest.raises(ValueError):
        grant.load_or_create(str(tmp_path))
    path.unlink()
    os.symlink("/etc/hostname", path)
    with pytest.raises(OSError):
        grant.load_or_create(str(tmp_path))
