"""access.py: what another user may do with a file, asked as that user."""

from __future__ import annotations

import os
import pwd
import shutil
import tempfile
from pathlib import Path

import pytest
from mailrider import access, paths

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="switching user needs root")


def _user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(paths.EXT_USER)
    except KeyError:
        pytest.skip(f"no user {paths.EXT_USER}")


def test_a_closed_folder_above_the_file_is_seen() -> None:
    pw = _user()
    top = Path(tempfile.mkdtemp(prefix="mailrider-access-", dir="/tmp"))
    try:
        prog = top / "inner" / "prog"
        prog.parent.mkdir()
        prog.write_bytes(b"\x7fELF not really\n")
        os.chmod(prog, 0o755)
        os.chmod(prog.parent, 0o755)
        os.chmod(top, 0o755)
        assert access.user_can(pw.pw_uid, pw.pw_gid, str(prog), os.X_OK)
        assert access.program_runnable(pw.pw_uid, pw.pw_gid, str(prog))
        os.chmod(prog.parent, 0o700)  # the file's own mode is fine; its folder is not
        assert not access.user_can(pw.pw_uid, pw.pw_gid, str(prog), os.R_OK)
        assert not access.program_runnable(pw.pw_uid, pw.pw_gid, str(prog))
        # root, for comparison, may
        assert access.user_can(0, 0, str(prog), os.X_OK)
    finally:
        shutil.rmtree(top)


def test_a_script_must_be_readable_and_its_interpreter_runnable() -> None:
    pw = _user()
    top = Path(tempfile.mkdtemp(prefix="mailrider-access-", dir="/tmp"))
    try:
        os.chmod(top, 0o755)
        script = top / "script"
        script.write_text("#!/bin/sh\nexit 0\n")
        os.chmod(script, 0o711)  # executable, unreadable: sh could not read it
        assert access.user_can(pw.pw_uid, pw.pw_gid, str(script), os.X_OK)
        assert not access.program_runnable(pw.pw_uid, pw.pw_gid, str(script))
        os.chmod(script, 0o755)
        assert access.program_runnable(pw.pw_uid, pw.pw_gid, str(script))
        script.write_text(f"#!{top}/no-such-interpreter\n")
        assert not access.program_runnable(pw.pw_uid, pw.pw_gid, str(script))
    finally:
        shutil.rmtree(top)
