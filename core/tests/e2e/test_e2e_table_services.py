"""A table used for a service its backend did not register stops the daemon
at start, with the table, the service and the line."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

from harness import Daemon

BACKEND = '''#!{python}
import sys
from mailrider.table.sdk import Backend, run


class DomainsOnly(Backend):
    services = ("domain",)

    def check(self, service, key):
        return key == "example.org"


sys.exit(run(DomainsOnly))
'''


def test_unregistered_service_is_a_startup_error() -> None:
    libexec = Path(tempfile.mkdtemp(prefix="mailrider-libexec-", dir="/tmp"))
    try:
        os.chmod(libexec, 0o755)
        prog = libexec / "table-domonly"
        prog.write_text(BACKEND.format(python=sys.executable))
        os.chmod(prog, 0o755)
        d = Daemon(config="listen on 127.0.0.1 port {port}\n"
                          "table doms domonly:/nonexistent.conf\n"
                          'action "local" maildir "{mail}/%{{rcpt.user}}" virtual <doms>\n'
                          'match from any for domain <doms> action "local"\n',
                   extra_env={"MAILRIDER_LIBEXEC": str(libexec)})
        try:
            try:
                d.start(timeout=30)  # pony may greet before lka has checked the tables
            except RuntimeError:
                pass
            assert d.proc is not None
            assert d.proc.wait(30) == 1
            text = d.log()
            assert f"{d.config_path}:3: table doms does not provide the alias service" in text
            assert "registered: domain" in text
        finally:
            d.cleanup()
    finally:
        shutil.rmtree(libexec, ignore_errors=True)
