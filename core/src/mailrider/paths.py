"""Every filesystem default of mailrider, in one place.

Porters patch this module (and only this module) to fit their tree. No
other module may hard-code a system path; a test enforces it.
"""

from __future__ import annotations

import os
import sys

#: the configuration file read when -f is not given
CONFIG_FILE = "/etc/mail/mailrider.conf"

#: the aliases file porters usually point ``table aliases`` at
ALIASES_FILE = "/etc/mail/aliases"

#: the state folder (spool and control socket) when running as root
SPOOL_ROOT = "/var/spool/mailrider"

#: the unprivileged user the children drop to when started as root
USER = "_mailrider"

#: the user the queue process runs as: it alone owns the spool (OpenSMTPD's _smtpq)
QUEUE_USER = "_mailriderq"

#: the user filters, table backends and alias ``|command``/``/file`` deliveries
#: run as when the configuration names none: it can read neither the spool nor
#: any daemon process (docs/security.md)
EXT_USER = "_mailriderx"

#: where OpenSMTPD-style ``table-NAME`` programs are searched
LIBEXEC_DIRS = (
    os.path.join(sys.prefix, "libexec", "mailrider"),
    "/usr/local/libexec/mailrider",
    "/usr/libexec/mailrider",
)

#: PATH given to mda commands
MDA_PATH = "/usr/local/bin:/usr/bin:/bin"

#: the shell used for mda commands and ``|command`` aliases
SHELL = "/bin/sh"

#: the syslog socket
SYSLOG_SOCKET = "/dev/log"

#: file of the system's mail name, when present
MAILNAME_FILE = "/etc/mailname"


def default_statedir() -> str:
    """The state folder: the system spool for root, a per-user folder otherwise.

    The daemon and ``mailriderctl`` both call this, so they find each other
    without flags; ``MAILRIDER_STATEDIR`` overrides it (a program invoked as
    ``sendmail`` cannot be given ``-S``).
    """
    env = os.environ.get("MAILRIDER_STATEDIR")
    if env:
        return os.path.abspath(env)
    if os.geteuid() == 0:
        return SPOOL_ROOT
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    return os.path.join(base, "mailrider")


def libexec_dirs() -> tuple[str, ...]:
    """The backend search path; ``MAILRIDER_LIBEXEC`` (colon-separated) replaces it."""
    env = os.environ.get("MAILRIDER_LIBEXEC")
    if env:
        return tuple(p for p in env.split(":") if p)
    return LIBEXEC_DIRS

#: the system mailbox folder for ``mbox`` deliveries
MAILSPOOL_DIR = "/var/mail"

#: the hosts file: client addresses it names get their name from it, not DNS
HOSTS_FILE = "/etc/hosts"


def hosts_file() -> str:
    """The hosts file; ``MAILRIDER_HOSTS_FILE`` replaces it, for tests whose
    daemons must not depend on the machine's own /etc/hosts."""
    return os.environ.get("MAILRIDER_HOSTS_FILE") or HOSTS_FILE

#: the system resolver configuration (nameservers, search list, options)
RESOLV_CONF = "/etc/resolv.conf"


def resolv_conf() -> str:
    """The resolver configuration for programs without a daemon configuration
    (``mailriderctl spf walk``); ``MAILRIDER_RESOLV_CONF`` replaces it, for tests."""
    return os.environ.get("MAILRIDER_RESOLV_CONF") or RESOLV_CONF

#: the shadow password file, read by the parent for ``auth`` without a table
SHADOW_FILE = "/etc/shadow"

#: the system's crypt(3) library, tried in order (libxcrypt on Linux; "" is the
#: C library itself, where the BSDs keep crypt)
LIBCRYPT_NAMES = ("libcrypt.so.1", "libcrypt.so.2", "libcrypt.so", "")


def fallback_log(statedir: str) -> str:
    """Where a daemon without a syslog socket (:data:`SYSLOG_SOCKET`) logs
    once detached, rather than losing its lines."""
    return os.path.join(statedir, "mailriderd.log")


def control_socket(statedir: str) -> str:
    """The control socket of the daemon whose state folder is ``statedir``."""
    return os.path.join(statedir, "control.sock")
