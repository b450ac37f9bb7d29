"""Every filesystem default of mailrider, in one place.

No other module may hard-code a system path. A port changes these values
without patching code: its Makefile writes ``paths.toml`` beside this module
before the build (docs/ports.md §1), a TOML file whose keys are the
lower-case names of the constants below (``config_file = "..."``; the
tuples are lists of strings). The file is read once, at import; an unknown
key or a value of the wrong type is a packaging error that stops every
program at once (:class:`PortFileError`), never a silently ignored line.
"""

from __future__ import annotations

import os
import sys

#: the port's settings file (absent in a plain ``pip install``)
PORT_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "paths.toml")

#: the settings a port may change: lower-case constant name -> is a list
PORT_KEYS: dict[str, bool] = {
    "config_file": False, "aliases_file": False, "spool_root": False,
    "libexec_dirs": True, "opensmtpd_libexec_dirs": True, "mda_path": False,
    "shell": False, "syslog_socket": False, "mailname_file": False,
    "mailspool_dir": False, "hosts_file": False, "resolv_conf": False,
    "shadow_file": False, "libcrypt_names": True, "route_program": False,
}


class PortFileError(RuntimeError):
    """The port's ``paths.toml`` is broken; ``str()`` names the file and key."""


def read_port_file(path: str) -> dict[str, str | tuple[str, ...]]:
    """The settings of the port file at ``path``; {} when there is none."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return {}
    import tomllib  # only where a port wrote the file: programs start faster without it

    try:
        table = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise PortFileError(f"{path}: {exc}") from None
    out: dict[str, str | tuple[str, ...]] = {}
    for key, value in table.items():
        if key not in PORT_KEYS:
            raise PortFileError(f"{path}: unknown setting {key!r}")
        if PORT_KEYS[key]:
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise PortFileError(f"{path}: {key} must be a list of strings")
            out[key] = tuple(value)
        elif isinstance(value, str) and value:
            out[key] = value
        else:
            raise PortFileError(f"{path}: {key} must be a non-empty string")
    return out


_PORT = read_port_file(PORT_FILE)


def _text(key: str, default: str) -> str:
    value = _PORT.get(key, default)
    assert isinstance(value, str)
    return value


def _list(key: str, default: tuple[str, ...]) -> tuple[str, ...]:
    value = _PORT.get(key, default)
    assert isinstance(value, tuple)
    return value


#: the configuration file read when -f is not given
CONFIG_FILE = _text("config_file", "/etc/mail/mailrider.conf")

#: the aliases file porters usually point ``table aliases`` at
ALIASES_FILE = _text("aliases_file", "/etc/mail/aliases")

#: the state folder (spool and control socket) when running as root
SPOOL_ROOT = _text("spool_root", "/var/spool/mailrider")

#: the unprivileged user the children drop to when started as root
USER = "_mailrider"

#: the user the queue process runs as: it alone owns the spool (OpenSMTPD's _smtpq)
QUEUE_USER = "_mailriderq"

#: the user filters, table backends and alias ``|command``/``/file`` deliveries
#: run as when the configuration names none: it can read neither the spool nor
#: any daemon process (docs/security.md)
EXT_USER = "_mailriderx"

#: where OpenSMTPD-style ``table-NAME`` programs are searched
LIBEXEC_DIRS = _list("libexec_dirs", (
    os.path.join(sys.prefix, "libexec", "mailrider"),
    "/usr/local/libexec/mailrider",
    "/usr/libexec/mailrider",
))

#: OpenSMTPD's own libexec folders (its table-NAME and filter programs),
#: searched after ours: OpenBSD's and FreeBSD's packages, then Debian's
OPENSMTPD_LIBEXEC_DIRS = _list("opensmtpd_libexec_dirs", (
    "/usr/local/libexec/smtpd",
    "/usr/libexec/opensmtpd",
))

#: PATH given to mda commands
MDA_PATH = _text("mda_path", "/usr/local/bin:/usr/bin:/bin")

#: the shell used for mda commands and ``|command`` aliases
SHELL = _text("shell", "/bin/sh")

#: the syslog socket
SYSLOG_SOCKET = _text("syslog_socket", "/dev/log")

#: file of the system's mail name, when present
MAILNAME_FILE = _text("mailname_file", "/etc/mailname")


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


def opensmtpd_libexec_dirs() -> tuple[str, ...]:
    """OpenSMTPD's folders, searched after :func:`libexec_dirs`;
    ``MAILRIDER_OPENSMTPD_LIBEXEC`` (colon-separated) replaces them, and
    ``-`` there means none (tests that must not see the machine's programs)."""
    env = os.environ.get("MAILRIDER_OPENSMTPD_LIBEXEC")
    if env:
        return tuple(p for p in env.split(":") if p and p != "-")
    return OPENSMTPD_LIBEXEC_DIRS

#: the system mailbox folder for ``mbox`` deliveries
MAILSPOOL_DIR = _text("mailspool_dir", "/var/mail")

#: the hosts file: client addresses it names get their name from it, not DNS
HOSTS_FILE = _text("hosts_file", "/etc/hosts")


def hosts_file() -> str:
    """The hosts file; ``MAILRIDER_HOSTS_FILE`` replaces it, for tests whose
    daemons must not depend on the machine's own /etc/hosts."""
    return os.environ.get("MAILRIDER_HOSTS_FILE") or HOSTS_FILE

#: the system resolver configuration (nameservers, search list, options)
RESOLV_CONF = _text("resolv_conf", "/etc/resolv.conf")


def resolv_conf() -> str:
    """The resolver configuration for programs without a daemon configuration
    (``mailriderctl spf walk``); ``MAILRIDER_RESOLV_CONF`` replaces it, for tests."""
    return os.environ.get("MAILRIDER_RESOLV_CONF") or RESOLV_CONF

#: the shadow password file, read by the parent for ``auth`` without a table
SHADOW_FILE = _text("shadow_file", "/etc/shadow")

#: route(8), asked for the default routes' interfaces (``listen on egress``)
#: where Linux's /proc/net/route does not exist
ROUTE_PROGRAM = _text("route_program", "/sbin/route")

#: the system's crypt(3) library, tried in order (libxcrypt on Linux; "" is the
#: C library itself, where the BSDs keep crypt)
LIBCRYPT_NAMES = _list("libcrypt_names", ("libcrypt.so.1", "libcrypt.so.2", "libcrypt.so", ""))


def fallback_log(statedir: str) -> str:
    """Where a daemon without a syslog socket (:data:`SYSLOG_SOCKET`) logs
    once detached, rather than losing its lines."""
    return os.path.join(statedir, "mailriderd.log")


def control_socket(statedir: str) -> str:
    """The control socket of the daemon whose state folder is ``statedir``."""
    return os.path.join(statedir, "control.sock")
