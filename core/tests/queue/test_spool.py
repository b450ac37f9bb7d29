"""The spool: commit, recovery after a crash, purge of uncommitted data."""

from __future__ import annotations

import dataclasses
import os

import pytest
from mailrider.queue import envelope as envmod
from mailrider.queue.envelope import Delivery, Envelope
from mailrider.queue.spool import PendingCommit, Spool


def _env(msgid: str, rcpt: str) -> Envelope:
    return Envelope(evpid=envmod.new_evpid(msgid), type="mda", sender="a@b.example", ctime=1,
                    delivery=Delivery(dispatcher="", rcpt=rcpt, dest=rcpt, method=""))


@pytest.mark.parametrize("use_syncfs", [True, False])
def test_commit_then_walk(tmp_path: os.PathLike[str], use_syncfs: bool) -> None:
    sp = Spool(str(tmp_path), use_syncfs=use_syncfs)
    sp.setup()
    items = []
    for i in range(5):
        msgid, fd = sp.create()
        os.write(fd, f"Subject: {i}\n\nbody {i}\n".encode())
        os.close(fd)
        items.append(PendingCommit(msgid, [_env(msgid, f"u{i}@x.example"),
                                           _env(msgid, f"v{i}@x.example")]))
    sp.commit_batch(items)
    assert all(i.error is None for i in items)
    found = dict(sp.walk())
    assert set(found) == {i.msgid for i in items}
    for item in items:
        assert {e.rcpt for e in found[item.msgid]} == {e.rcpt for e in item.envelopes}
        fd = sp.open_message(item.msgid)
        assert os.read(fd, 100).startswith(b"Subject: ")
        os.close(fd)
    assert os.listdir(sp.incoming) == [] and os.listdir(sp.temporary) == []


def test_uncommitted_is_purged_and_committed_survives(tmp_path: os.PathLike[str]) -> None:
    sp = Spool(str(tmp_path))
    sp.setup()
    keep, fd = sp.create()
    os.write(fd, b"x\n")
    os.close(fd)
    sp.commit_batch([PendingCommit(keep, [_env(keep, "a@x.example")])])
    _lost, fd = sp.create()  # DATA started, never committed: no 250 was sent
    os.write(fd, b"partial")
    os.close(fd)
    half = os.path.join(sp.incoming, "deadbeef")  # a commit interrupted mid-way
    os.mkdir(half)
    _unused, fd = sp.create()  # asked for ahead by pony, never written
    os.close(fd)
    staged, fd = sp.create()  # envelopes staged beside an empty body
    os.close(fd)
    open(os.path.join(sp.incoming, staged, staged + "00000001"), "wb").close()
    sp2 = Spool(str(tmp_path))
    sp2.setup()
    # all gone; the unused file is not counted as a message
    assert sp2.purge_uncommitted() == 3
    assert os.listdir(sp2.incoming) == []
    assert [mid for mid, _ in sp2.walk()] == [keep]
    assert os.listdir(sp2.purge) == []


def test_remove_last_envelope_removes_message(tmp_path: os.PathLike[str]) -> None:
    sp = Spool(str(tmp_path))
    sp.setup()
    msgid, fd = sp.create()
    os.close(fd)
    e1, e2 = _env(msgid, "a@x.example"), _env(msgid, "b@x.example")
    sp.commit_batch([PendingCommit(msgid, [e1, e2])])
    sp.remove_envelope(e1.evpid)
    assert os.path.isdir(sp.msgdir(msgid))
    e2 = dataclasses.replace(e2, retry=3)
    sp.update_envelope(e2)
    assert sp.load_envelope(e2.evpid).retry == 3
    sp.remove_envelope(e2.evpid)
    assert not os.path.exists(sp.msgdir(msgid))


def test_a_bucket_removed_by_hand_is_made_again(tmp_path: os.PathLike[str]) -> None:
    # the queue/<HH> folders are made once and remembered: one removed while
    # the queue runs does not make the next commit into it fail
    sp = Spool(str(tmp_path))
    sp.setup()
    first, fd = sp.create()
    os.close(fd)
    sp.commit_batch([PendingCommit(first, [e := _env(first, "a@x.example")])])
    sp.remove_envelopes([e.evpid])
    bucket = os.path.dirname(sp.msgdir(first))
    os.rmdir(bucket)
    again, fd = sp.create(first[:2] + "000001")
    os.close(fd)
    item = PendingCommit(again, [_env(again, "a@x.example")])
    sp.commit_batch([item])
    assert item.error is None
    assert [mid for mid, _ in sp.walk()] == [again]


def test_a_message_folder_goes_even_without_its_message(tmp_path: os.PathLike[str]) -> None:
    sp = Spool(str(tmp_path))
    sp.setup()
    msgid, fd = sp.create()
    os.close(fd)
    e = _env(msgid, "a@x.example")
    sp.commit_batch([PendingCommit(msgid, [e])])
    os.unlink(sp.message_path(msgid))
    assert sp.remove_envelopes([e.evpid]) == [None]
    assert not os.path.exists(sp.msgdir(msgid))


def test_remove_envelopes_in_one_batch(tmp_path: os.PathLike[str]) -> None:
    # the queue's reaper removes what finished together in one call: each
    # message folder goes with its last envelope, a partly done one stays
    sp = Spool(str(tmp_path))
    sp.setup()
    items = []
    for i in range(3):
        msgid, fd = sp.create()
        os.write(fd, b"x\n")
        os.close(fd)
        items.append(PendingCommit(msgid, [_env(msgid, f"a{i}@x.example"),
                                           _env(msgid, f"b{i}@x.example")]))
    sp.commit_batch(items)
    whole, half, untouched = items
    gone = [e.evpid for e in whole.envelopes] + [half.envelopes[0].evpid]
    again = whole.envelopes[0].evpid  # already removed: not an error
    errors = sp.remove_envelopes([*gone, again, "not-an-id"])
    assert errors[:4] == [None] * 4 and isinstance(errors[4], ValueError)
    assert not os.path.exists(sp.msgdir(whole.msgid))
    assert [e.evpid for e in dict(sp.walk())[half.msgid]] == [half.envelopes[1].evpid]
    assert len(dict(sp.walk())[untouched.msgid]) == 2


def test_envelope_refuses_line_breaks() -> None:
    env = _env("0000abcd", "a@x.example")
    env = dataclasses.replace(env, sender="a@x.example\nrcpt: evil@y.example")
    with pytest.raises(ValueError):
        envmod.serialise(env)


def test_envelope_round_trip_and_version_check() -> None:
    env = _env("0000abcd", "a@x.example")
    env = dataclasses.replace(env, extra=(("custom-key", "kept"),))
    assert envmod.parse(envmod.serialise(env)) == env
    with pytest.raises(ValueError):
        envmod.parse(b"version: 99\nevpid: 0000abcd00000001\n")


def test_full_disk_is_a_temporary_failure(tmp_path: os.PathLike[str]) -> None:
    import errno

    from mailrider.queue.spool import _spool_error

    err = _spool_error(OSError(errno.ENOSPC, "No space left on device"))
    assert (err.code, err.status) == (452, "4.3.1")


def test_recovery_after_unclean_stop_discards_bodies_not_on_disk(
        tmp_path: os.PathLike[str]) -> None:
    from mailrider.queue.spool import body_digest

    sp = Spool(str(tmp_path))
    sp.setup()
    items = []
    for body in (b"Subject: kept\n\nfine\n", b"Subject: lost\n\nnever synced\n"):
        msgid, fd = sp.create()
        os.write(fd, body)
        os.close(fd)
        env = _env(msgid, "a@x.example")
        env = dataclasses.replace(env, message_size=len(body), message_sha256=body_digest(body))
        items.append(PendingCommit(msgid, [env]))
    sp.commit_batch(items)
    # what a crash before the sync can leave: the rename landed, the data did not
    with open(sp.message_path(items[1].msgid), "r+b") as f:
        f.truncate(0)
    assert not sp.take_clean_mark()
    assert [mid for mid, _ in sp.walk(verify=True)] == [items[0].msgid]
    assert not os.path.exists(sp.msgdir(items[1].msgid))


def test_clean_mark_round_trip(tmp_path: os.PathLike[str]) -> None:
    sp = Spool(str(tmp_path))
    sp.setup()
    assert sp.take_clean_mark() is False
    sp.mark_clean()
    assert sp.take_clean_mark() is True
    assert sp.take_clean_mark() is False
