"""The built-in configuration used when no config file exists and -f is not given.

It needs no root and no file: listen on 127.0.0.1 on an unprivileged port
(macro ``port``, default 2525, ``-D port=N`` changes it), accept mail for
the local names from local clients, and deliver every local recipient to a
Maildir under ``<statedir>/maildir/<recipient>``, as the user running the
daemon.
"""

from __future__ import annotations

import os
import pwd

from mailrider import paths

DEFAULT_PORT = 2525


def _q(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def delivery_user() -> str:
    """Who receives the built-in configuration's mail: the unprivileged user under root."""
    if os.geteuid() == 0:
        return paths.USER
    return pwd.getpwuid(os.geteuid()).pw_name


def default_config_text(statedir: str) -> str:
    user = delivery_user()
    maildir = os.path.join(statedir, "maildir", "%{rcpt.user:lowercase|strip}")
    return (
        "# mailrider built-in default configuration\n"
        f'port = "{DEFAULT_PORT}"\n'
        "listen on 127.0.0.1 port $port\n"
        f"table everyone {{ \"@\" = {_q(user)} }}\n"
        f"action \"local\" maildir {_q(maildir)} virtual <everyone>\n"
        "match from local for local action \"local\"\n"
    )
