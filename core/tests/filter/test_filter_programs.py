"""filter/programs.py: the filter programs a start runs, and their check."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from mailrider.config import parse_string
from mailrider.errors import ConfigError
from mailrider.filter.programs import check_programs, filter_command, used_filters

TAIL = 'action "l" maildir\nmatch for local action "l"\n'


def test_used_filters_expands_chains_once() -> None:
    cfg = parse_string('filter a proc-exec "/bin/cat"\nfilter b proc-exec "/bin/cat"\n'
                       'filter unused proc-exec "/nonexistent"\nfilter c chain { a, b }\n'
                       'listen on 127.0.0.1 filter c\nlisten on ::1 filter a\n' + TAIL)
    assert [f.name for f in used_filters(cfg)] == ["a", "b"]
    check_programs(cfg, None)  # the unused filter's missing program is never run


def test_missing_program_at_its_statement(tmp_path: Path) -> None:
    cfg = parse_string(f'\nfilter a proc-exec "{tmp_path}/nope --flag"\n'
                       'listen on 127.0.0.1 filter a\n' + TAIL, file="t.conf")
    with pytest.raises(ConfigError) as info:
        check_programs(cfg, None)
    assert str(info.value) == f"t.conf:2: filter a: program {tmp_path}/nope not found"


def test_bare_name_found_in_libexec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILRIDER_LIBEXEC", str(tmp_path))
    monkeypatch.setenv("MAILRIDER_OPENSMTPD_LIBEXEC", str(tmp_path / "smtpd"))
    cfg = parse_string('proc p "filter-here -v"\nfilter a proc p\n'
                       'listen on 127.0.0.1 filter a\n' + TAIL, file="t.conf")
    with pytest.raises(ConfigError) as info:
        check_programs(cfg, None)
    assert str(info.value) == (f"t.conf:1: proc p: program filter-here not found "
                               f"(looked in: {tmp_path}, {tmp_path / 'smtpd'}, PATH)")
    prog = tmp_path / "filter-here"
    prog.write_text("#!/bin/sh\n")
    os.chmod(prog, 0o755)
    assert filter_command("filter-here -v") == f"{tmp_path}/filter-here -v"
    check_programs(cfg, None)


def test_chrooted_program_is_looked_for_inside_the_chroot(tmp_path: Path) -> None:
    cfg = parse_string(f'filter a proc-exec "/bin/f" chroot "{tmp_path}"\n'
                       'listen on 127.0.0.1 filter a\n' + TAIL, file="t.conf")
    with pytest.raises(ConfigError, match=f"program {tmp_path}/bin/f not found"):
        check_programs(cfg, None)
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "f").write_text("")
    check_programs(cfg, None)
