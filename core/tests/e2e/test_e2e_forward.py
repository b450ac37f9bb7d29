"""``~/.forward`` under root, end to end: read by the parent as its owner.

A throwaway system user with a home folder gets a ``.forward`` that pipes the
mail to a command; the command runs as that user. Then the file is replaced
by a hard link to a root-only file: the mail is delivered to the user's
mailbox as if there were no ``.forward``, and the secret never reaches the
client or the log.
"""

from __future__ import annotations

import os
import pwd
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from e2e_util import smtp_send
from harness import Daemon, wait_for
from mailrider import limits

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: a system user")

CONFIG = """\
listen on 127.0.0.1 port {port}
action "local" maildir "%{{user.directory}}/Maildir"
match from any for domain "fwd.test" action "local"
"""


def test_forward_is_followed_as_its_owner_and_unsafe_ones_ignored() -> None:
    name = f"mrfwd{os.getpid() % 100000}"
    root = Path(tempfile.mkdtemp(prefix="mailrider-fwd-", dir="/tmp"))
    os.chmod(root, 0o755)
    home = root / name
    home.mkdir()
    subprocess.run(["useradd", "--no-create-home", "--home-dir", str(home), "--shell",
                    "/usr/sbin/nologin", name], check=True)
    try:
        pw = pwd.getpwnam(name)
        os.chown(home, pw.pw_uid, pw.pw_gid)
        os.chmod(home, 0o755)
        fwd = home / ".forward"
        got = home / "got"
        fwd.write_text(f'"|/bin/sh -c \\"id -u > {got}.uid; cat > {got}\\""\n')
        os.chown(fwd, pw.pw_uid, pw.pw_gid)
        os.chmod(fwd, 0o644)
        with Daemon(CONFIG) as d:
            t = smtp_send(d.port, "a@example.org", [f"{name}@fwd.test"])
            assert t.data is not None and t.data[0] == 250, t
            wait_for(lambda: got.exists() and got.stat().st_size > 0, timeout=30)
            assert b"Subject:" in got.read_bytes()
            assert Path(f"{got}.uid").read_text().strip() == str(pw.pw_uid)
            # a hard link to a root-only file: ignored, the mail goes to the mailbox
            secret = root / "secret"
            secret.write_text("root:$6$verysecret:19000::::::\n")
            os.chmod(secret, 0o600)
            fwd.unlink()
            os.link(secret, fwd)
            # lka keeps the parent's answer about a .forward FORWARD_CACHE_TTL seconds
            time.sleep(limits.FORWARD_CACHE_TTL + 0.2)
            t = smtp_send(d.port, "a@example.org", [f"{name}@fwd.test"])
            assert t.data is not None and t.data[0] == 250, t
            new = home / "Maildir" / "new"
            wait_for(lambda: new.is_dir() and any(new.iterdir()), timeout=30)
            assert "verysecret" not in d.log()
            assert "forward-unsafe" in d.log()
    finally:
        subprocess.run(["userdel", name], check=False)
