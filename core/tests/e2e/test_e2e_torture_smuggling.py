"""Torture (short budget): SMTP smuggling, BDAT, early talkers and pipelining
past a refused DATA against a real daemon (tools/torture/run.py runs longer)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import torture_util as tu
from harness import Daemon


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    # a longer banner delay than the harness default, so an early talker is
    # always early
    d = Daemon(extra_env={"MAILRIDER_GREETING_DELAY": "0.2"}).start()
    yield d
    d.cleanup()


def test_smuggling_variants_split_anywhere(daemon: Daemon) -> None:
    t = tu.check_smuggling(daemon, daemon.state / "maildir", rounds=2,
                           deadline=time.monotonic() + 40)
    assert t.attempts == 2 * len(tu.SMUGGLING_VARIANTS)
    assert t.failures == 0, t.notes


def test_smuggling_variants_inside_bdat(daemon: Daemon) -> None:
    t = tu.check_bdat(daemon, daemon.state / "maildir")
    assert t.attempts == len(tu.SMUGGLING_VARIANTS) + 3 and t.failures == 0, t.notes


def test_early_talker_refused(daemon: Daemon) -> None:
    t = tu.check_pregreet(daemon, 5, time.monotonic() + 20)
    assert t.attempts == 5 and t.failures == 0, t.notes
    assert "smtp pregreet" in daemon.log()


def test_body_after_refused_data_never_runs(daemon: Daemon) -> None:
    t = tu.check_pipelined_after_refused_data(daemon, 4, time.monotonic() + 20)
    assert t.attempts == 4 and t.failures == 0, t.notes
    assert not (daemon.state / "maildir" / "pipe2").exists()
