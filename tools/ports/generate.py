#!/usr/bin/env python3
"""Write port skeletons for every distribution: OpenBSD, FreeBSD and Debian.

    python3 tools/ports/generate.py [--out contrib]

Reads core/pyproject.toml and every extras/*/pyproject.toml and writes, per
distribution, ``OUT/openbsd/NAME/``, ``OUT/freebsd/NAME/`` and
``OUT/debian/NAME/debian/``. The output depends only on the pyproject files
(and the list of man pages), never on the clock or the machine, so
tools/tests/test_ports.py can check that contrib/ is up to date.

Invariants:

- Paths agree with core/src/mailrider/paths.py: the configuration file is
  /etc/mail/mailrider.conf, the state folder /var/spool/mailrider, the users
  (each with its own group) _mailrider (the daemon's processes), _mailriderq
  (the queue, owner of the spool) and _mailriderx (filters, table backends and
  alias commands), and backends are found in PREFIX/libexec/mailrider,
  where every port installs each extra's program as ``table-NAME`` (a
  symlink to its ``mailrider-table-NAME`` console script).
- flit cannot install data files, so every port installs the man pages from
  the sdist's ``man/`` folder itself.
- Third-party Python requirements map to each system's package through
  DRIVERS; a requirement missing there is an error, not a silent guess.
"""

from __future__ import annotations

import argparse
import pathlib
import re
import sys
import tomllib
from dataclasses import dataclass

ROOT = pathlib.Path(__file__).resolve().parents[2]

USER = "_mailrider"
QUEUE_USER = "_mailriderq"
EXT_USER = "_mailriderx"
SPOOL = "/var/spool/mailrider"
#: every user the daemon needs: (name, comment, home)
USERS = (
    (USER, "mailrider daemon", SPOOL),
    (QUEUE_USER, "mailrider queue", "/nonexistent"),
    (EXT_USER, "mailrider filters and commands", "/nonexistent"),
)
#: OpenBSD and FreeBSD want fixed ids, registered in their ports trees
#: (infrastructure/db/user.list, UIDs/GIDs): claim them before committing a port
BSD_IDS = {USER: 920, QUEUE_USER: 921, EXT_USER: 922}
CONFIG = "/etc/mail/mailrider.conf"
MAINTAINER = "mailrider developers <mailrider@example.org>"
#: Debian's revision of the packages (source format 3.0 (quilt): the upstream
#: tarball is the sdist, named NAME_VERSION.orig.tar.gz beside the tree)
DEBIAN_REVISION = "1"
#: the programs Debian policy 11.6 wants from every mail transport agent, and
#: the traditional /usr/lib/sendmail; mailriderctl acts after the name it is run as
MTA_LINKS = ("usr/sbin/sendmail", "usr/lib/sendmail", "usr/bin/mailq", "usr/bin/newaliases")
#: the Debian changelog date of each version (a fixed value keeps the output stable)
RELEASE_DATES = {"0.1.0": "Wed, 25 Nov 2026 12:00:00 +0000"}
DEFAULT_DATE = "Wed, 25 Nov 2026 12:00:00 +0000"

#: Python requirement -> (OpenBSD port, FreeBSD port, Debian package)
DRIVERS: dict[str, tuple[str, str, str]] = {
    "redis": ("databases/py-redis", "databases/py-redis", "python3-redis"),
    "ldap3": ("net/py-ldap3", "net/py-ldap3", "python3-ldap3"),
    "pymysql": ("databases/py-pymysql", "databases/py-pymysql", "python3-pymysql"),
    "psycopg": ("databases/py-psycopg", "databases/py-psycopg", "python3-psycopg"),
    "sqlalchemy": ("databases/py-sqlalchemy", "databases/py-sqlalchemy20",
                   "python3-sqlalchemy"),
}


@dataclass
class Dist:
    name: str  # distribution name: mailrider, mailrider-table-redis
    version: str
    summary: str
    folder: pathlib.Path
    scripts: list[str]
    local_deps: list[str]  # other distributions of this tree
    drivers: list[str]  # keys of DRIVERS
    man_pages: list[str]  # paths relative to the distribution folder
    python: str = ""  # the minimum Python version from requires-python ("3.11")

    @property
    def is_core(self) -> bool:
        return self.name == "mailrider"

    @property
    def backend(self) -> str | None:
        """``redis`` for mailrider-table-redis if it has a program, else None."""
        prefix = "mailrider-table-"
        if self.name.startswith(prefix) and self.name in self.scripts:
            return self.name[len(prefix):]
        return None

    @property
    def sdist_name(self) -> str:
        # PEP 625 (flit_core >= 3.9): the normalised name with underscores
        return re.sub(r"[-_.]+", "_", self.name).lower()

    @property
    def comment(self) -> str:
        """A one-line summary that fits the ports' COMMENT rules (short, no article)."""
        if self.is_core:
            return "privilege-separated MTA in the manner of OpenSMTPD"
        return self.summary.split(" (")[0]


def _req_name(req: str) -> str:
    return re.split(r"[\s\[<>=!~;]", req, maxsplit=1)[0].lower()


def load(folder: pathlib.Path, local_names: set[str]) -> Dist:
    meta = tomllib.loads((folder / "pyproject.toml").read_text())["project"]
    local: list[str] = []
    drivers: list[str] = []
    for req in meta.get("dependencies", []):
        name = _req_name(req)
        if name in local_names:
            local.append(name)
        elif name in DRIVERS:
            drivers.append(name)
        else:
            raise SystemExit(f"{folder.name}: no port known for requirement {req!r}; "
                             "add it to DRIVERS in tools/ports/generate.py")
    man = sorted(str(p.relative_to(folder)) for p in (folder / "man").glob("*.[1-8]"))
    return Dist(
        name=meta["name"],
        version=meta["version"],
        summary=meta["description"],
        folder=folder,
        scripts=sorted(meta.get("scripts", {})),
        local_deps=local,
        drivers=drivers,
        man_pages=man,
        python=_min_python(meta.get("requires-python", "")),
    )


def _min_python(spec: str) -> str:
    """``3.11`` from ``>=3.11`` (the only form the pyproject files use)."""
    match = re.fullmatch(r"\s*>=\s*([0-9]+(?:\.[0-9]+)*)\s*", spec)
    return match.group(1) if match else ""


def discover(root: pathlib.Path = ROOT) -> list[Dist]:
    folders = [root / "core", *sorted(p.parent for p in root.glob("extras/*/pyproject.toml"))]
    names = {tomllib.loads((f / "pyproject.toml").read_text())["project"]["name"]
             for f in folders}
    return [load(f, names) for f in folders]


def _sections(dist: Dist) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for page in dist.man_pages:
        out.setdefault(page.rsplit(".", 1)[1], []).append(page)
    return out


# -- OpenBSD ------------------------------------------------------------------


def openbsd(dist: Dist) -> dict[str, str]:
    files: dict[str, str] = {}
    deps = [f"mail/{d}" for d in dist.local_deps] + [DRIVERS[d][0] for d in dist.drivers]
    lines = [
        f"COMMENT =\t\t{dist.comment}",
        "",
        f"MODPY_DISTV =\t\t{dist.version}",
        f"DISTNAME =\t\t{dist.sdist_name}-${{MODPY_DISTV}}",
        f"PKGNAME =\t\t{dist.name}-${{MODPY_DISTV}}",
        "",
        "CATEGORIES =\t\tmail",
        "",
        "# ISC",
        "PERMIT_PACKAGE =\tYes",
        "",
        "MODULES =\t\tlang/python",
        "MODPY_PI =\t\tYes",
        "MODPY_PYBUILD =\t\tflit_core",
        "",
    ]
    if deps:
        lines.append("RUN_DEPENDS =\t\t" + " \\\n\t\t\t".join(deps))
        lines.append("")
    if dist.is_core:
        lines += [
            "# the sdist's own tests need only pytest; end-to-end tests bind loopback ports",
            "TEST_DEPENDS =\t\tdevel/py-test",
            "",
        ]
    else:
        lines += ["# the tests need a running server of the backend's kind", "NO_TEST =\t\tYes", ""]
    lines.append("# flit installs no data files: man pages (and examples) come from the sdist")
    lines.append("post-install:")
    for section, pages in _sections(dist).items():
        lines.append(f"\t${{INSTALL_DATA_DIR}} ${{PREFIX}}/man/man{section}")
        for page in pages:
            lines.append(f"\t${{INSTALL_MAN}} ${{WRKSRC}}/{page} ${{PREFIX}}/man/man{section}/")
    if dist.is_core:
        lines += [
            "\t${INSTALL_DATA_DIR} ${PREFIX}/share/examples/mailrider",
            "\t${INSTALL_DATA} ${WRKSRC}/examples/*.conf ${PREFIX}/share/examples/mailrider/",
            "\t${INSTALL_DATA} ${WRKSRC}/examples/local-maildir.conf \\",
            "\t\t${PREFIX}/share/examples/mailrider/mailrider.conf",
            "\t${INSTALL_DATA_DIR} ${PREFIX}/libexec/mailrider",
        ]
    if dist.backend:
        lines += [
            "\t${INSTALL_DATA_DIR} ${PREFIX}/libexec/mailrider",
            f"\tln -sf ${{TRUEPREFIX}}/bin/{dist.name} ${{PREFIX}}/libexec/mailrider/"
            f"table-{dist.backend}",
        ]
    lines += ["", ".include <bsd.port.mk>", ""]
    files["Makefile"] = "\n".join(lines)
    files["pkg/DESCR"] = _descr(dist) + "\n"
    if dist.is_core:
        files["pkg/PLIST"] = (
            "".join(f"@newgroup {name}:{BSD_IDS[name]}\n" for name, _, _ in USERS)
            + "".join(f"@newuser {name}:{BSD_IDS[name]}:{name}::{comment}:"
                      f"{home if home == SPOOL else '/var/empty'}:/sbin/nologin\n"
                      for name, comment, home in USERS)
            + "@rcscript ${RCDIR}/mailriderd\n"
            "@comment the rest comes from `make update-plist`; keep the lines below\n"
            "share/examples/mailrider/\n"
            "share/examples/mailrider/mailrider.conf\n"
            "@sample ${SYSCONFDIR}/mail/mailrider.conf\n"
        )
        files["pkg/mailriderd.rc"] = OPENBSD_RC
        files["pkg/README"] = OPENBSD_README
    return files


OPENBSD_RC = """#!/bin/ksh

daemon="${LOCALBASE}/bin/mailriderd"

. /etc/rc.d/rc.subr

# mailriderd is a Python console script: ps shows the interpreter, then the
# script, then the flags. Its children are "python -m mailrider.proc.child",
# which this pattern does not match, so only the parent is signalled (it
# stops its children itself).
pexp="${MODPY_BIN} ${daemon}${daemon_flags:+ ${daemon_flags}}"

# SIGHUP is ignored: reload means restart
rc_reload=NO

rc_cmd $1
"""

OPENBSD_README = f"""\
+-------------------------------------------------------------------------------
| Running ${{PKGSTEM}} on OpenBSD
+-------------------------------------------------------------------------------

The daemon starts as root, binds its ports and runs every other process as
the {USER} user, except the queue ({QUEUE_USER}, the only owner of the
spool); filters and alias commands run as {EXT_USER} unless the
configuration names a user. Its state folder (queue and control socket) is
{SPOOL}; it is created at the first start.

Configuration
=============
A sample configuration was installed as ${{SYSCONFDIR}}/mail/mailrider.conf.
Check it with:

    # mailriderd -n

Other examples are in ${{PREFIX}}/share/examples/mailrider/.

Replacing smtpd(8)
==================
mailriderd and the base system's smtpd(8) both want port 25. To use
mailrider instead:

    # rcctl stop smtpd
    # rcctl disable smtpd
    # rcctl enable mailriderd
    # rcctl start mailriderd

Table backends
==============
Backends (mailrider-table-*) are found as ${{PREFIX}}/libexec/mailrider/table-NAME,
like OpenSMTPD's table-* programs, and through Python entry points.
"""


def _descr(dist: Dist) -> str:
    if dist.is_core:
        return (
            "mailrider is a mail transfer agent written in Python in the manner of\n"
            "OpenSMTPD: privilege-separated processes, the smtpd.conf grammar and\n"
            "smtpctl's commands. It accepts mail over SMTP and delivers it locally\n"
            "to Maildir, mbox, LMTP or a program. It needs only the standard library."
        )
    if dist.backend is None:
        return (
            f"{dist.name} holds code that several mailrider table backends share;\n"
            "it is installed as their dependency."
        )
    return (
        f"The {dist.backend} backend lets mailrider answer the tables of its\n"
        "configuration (aliases, domains, users, credentials...) from an external\n"
        "source. Its configuration file keeps the keys of the OpenSMTPD backend\n"
        "of the same name, so existing files work unchanged."
    )


# -- FreeBSD ------------------------------------------------------------------


def freebsd(dist: Dist) -> dict[str, str]:
    files: dict[str, str] = {}
    lines = [
        f"PORTNAME=\t{dist.name}",
        f"DISTVERSION=\t{dist.version}",
        "CATEGORIES=\tmail python",
        "MASTER_SITES=\tPYPI",
    ]
    if dist.sdist_name != dist.name:
        lines.append(f"DISTNAME=\t{dist.sdist_name}-${{DISTVERSION}}")
    lines += [
        "",
        "MAINTAINER=\tports@FreeBSD.org",
        f"COMMENT=\t{dist.comment[0].upper() + dist.comment[1:]}",
        "",
        "LICENSE=\tISC",
        "",
        "BUILD_DEPENDS=\t${PYTHON_PKGNAMEPREFIX}flit-core>=3.12:devel/py-flit-core@${PY_FLAVOR}",
    ]
    runs = [f"{d}>={dist.version}:mail/{d}" for d in dist.local_deps]
    runs += [f"${{PYTHON_PKGNAMEPREFIX}}{DRIVERS[d][1].split('/py-')[1]}>0:{DRIVERS[d][1]}"
             "@${PY_FLAVOR}" for d in dist.drivers]
    if runs:
        lines.append("RUN_DEPENDS=\t" + " \\\n\t\t".join(runs))
    lines += [
        "",
        "USES=\t\tpython",
        "USE_PYTHON=\tautoplist pep517",
        "NO_ARCH=\tyes",
    ]
    if dist.is_core:
        lines += [
            "",
            "USE_RC_SUBR=\tmailriderd",
            "SUB_LIST=\tPYTHON_CMD=${PYTHON_CMD}",
            "",
            f"USERS=\t\t{' '.join(name for name, _, _ in USERS)}",
            f"GROUPS=\t\t{' '.join(name for name, _, _ in USERS)}",
        ]
    plist = []
    for section, pages in _sections(dist).items():
        plist += [f"share/man/man{section}/{p.rsplit('/', 1)[1]}.gz" for p in pages]
    if dist.is_core:
        plist.append("\"@sample etc/mail/mailrider.conf.sample\"")
    if dist.backend:
        plist.append(f"libexec/mailrider/table-{dist.backend}")
    lines += ["", "PLIST_FILES=\t" + " \\\n\t\t".join(plist)]
    if dist.is_core:
        lines += ["PORTEXAMPLES=\t*.conf", "OPTIONS_DEFINE=\tEXAMPLES"]
    lines += ["", "# flit installs no data files: man pages (and examples) come from the sdist",
              "post-install:"]
    for section, pages in _sections(dist).items():
        for page in pages:
            lines.append(f"\t${{INSTALL_MAN}} ${{WRKSRC}}/{page} "
                         f"${{STAGEDIR}}${{PREFIX}}/share/man/man{section}/")
    if dist.is_core:
        lines += [
            "\t${MKDIR} ${STAGEDIR}${PREFIX}/etc/mail",
            "\t${INSTALL_DATA} ${WRKSRC}/examples/local-maildir.conf \\",
            "\t\t${STAGEDIR}${PREFIX}/etc/mail/mailrider.conf.sample",
            "",
            "post-install-EXAMPLES-on:",
            "\t${MKDIR} ${STAGEDIR}${EXAMPLESDIR}",
            "\t${INSTALL_DATA} ${WRKSRC}/examples/*.conf ${STAGEDIR}${EXAMPLESDIR}/",
        ]
    if dist.backend:
        lines += [
            "\t${MKDIR} ${STAGEDIR}${PREFIX}/libexec/mailrider",
            f"\t${{RLN}} ${{STAGEDIR}}${{PREFIX}}/bin/{dist.name} "
            f"${{STAGEDIR}}${{PREFIX}}/libexec/mailrider/table-{dist.backend}",
        ]
    lines += ["", ".include <bsd.port.mk>", ""]
    files["Makefile"] = "\n".join(lines)
    files["pkg-descr"] = _descr(dist) + "\n"
    if dist.is_core:
        files["files/mailriderd.in"] = FREEBSD_RC
        files["pkg-message"] = FREEBSD_MESSAGE
    return files


FREEBSD_RC = """#!/bin/sh

# PROVIDE: mailriderd mail
# REQUIRE: LOGIN
# KEYWORD: shutdown
#
# Add to /etc/rc.conf to run mailriderd:
#   mailriderd_enable="YES"
#   mailriderd_config="%%PREFIX%%/etc/mail/mailrider.conf"   (the default)
#   mailriderd_flags=""

. /etc/rc.subr

name=mailriderd
rcvar=mailriderd_enable
desc="mailrider mail transfer agent"

load_rc_config $name

: ${mailriderd_enable:="NO"}
: ${mailriderd_config:="%%PREFIX%%/etc/mail/mailrider.conf"}

# mailriderd is a Python script: ps shows "%%PYTHON_CMD%% %%PREFIX%%/bin/mailriderd
# ...". With command_interpreter set, rc.subr looks for exactly that pair (the
# interpreter as procname, the script as its first argument), so neither other
# Python programs nor mailriderd's children ("python -m mailrider.proc.child")
# are taken for the daemon.
command="%%PREFIX%%/bin/mailriderd"
command_interpreter="%%PYTHON_CMD%%"
command_args="-f ${mailriderd_config}"
required_files="${mailriderd_config}"
extra_commands="configtest"
configtest_cmd="${command} -n -f ${mailriderd_config}"
start_precmd="${configtest_cmd}"

run_rc_command "$1"
"""

FREEBSD_MESSAGE = f"""[
{{ type: install
  message: <<EOM
mailriderd runs its processes as the {USER} user, its queue as
{QUEUE_USER}, filters and alias commands as {EXT_USER}; its queue and
control socket are in {SPOOL}.

Copy %%PREFIX%%/etc/mail/mailrider.conf.sample to
%%PREFIX%%/etc/mail/mailrider.conf, edit it, check it with

  # mailriderd -n -f %%PREFIX%%/etc/mail/mailrider.conf

and enable the daemon in /etc/rc.conf:

  mailriderd_enable="YES"

To replace the base system's mailer, see mailer.conf(5).
EOM
}}
]
"""


# -- Debian -------------------------------------------------------------------


def debian(dist: Dist, all_dists: list[Dist]) -> dict[str, str]:
    files: dict[str, str] = {}
    pkg = dist.name
    deb_deps = [f"{d} (>= {dist.version})" for d in dist.local_deps]
    deb_deps += [DRIVERS[d][2] for d in dist.drivers]
    if dist.python:
        deb_deps.insert(0, f"python3 (>= {dist.python})")
    build_deps = [
        "debhelper-compat (= 13)",
        # compat 13 runs dh_installsysusers only when asked (compat 14 does by default)
        *(["dh-sequence-installsysusers"] if dist.is_core else []),
        "dh-python",
        "pybuild-plugin-pyproject",
        "python3-all",
        "flit",
    ]
    control = [
        f"Source: {pkg}",
        "Section: mail",
        "Priority: optional",
        f"Maintainer: {MAINTAINER}",
        "Build-Depends: " + ",\n               ".join(build_deps),
        "Standards-Version: 4.6.2",
        "Rules-Requires-Root: no",
        "",
        f"Package: {pkg}",
        "Architecture: all",
        "Depends: " + ",\n         ".join(["${misc:Depends}", "${python3:Depends}", *deb_deps]),
    ]
    if dist.is_core:
        # a mail server: it takes the place of Postfix, Exim... (policy 7.6.2)
        control += [
            "Provides: mail-transport-agent",
            "Conflicts: mail-transport-agent",
            "Replaces: mail-transport-agent",
        ]
    control += [f"Description: {dist.comment}"]
    control += [" " + (line or ".") for line in _descr(dist).splitlines()]
    files["control"] = "\n".join(control) + "\n"

    rules = [
        "#!/usr/bin/make -f",
        "",
        "# the test suites run in the project's CI (nox); end-to-end and backend tests",
        "# need loopback ports or a database server that a build chroot lacks",
        "export PYBUILD_DISABLE=test",
        "",
        "%:",
        "\tdh $@ --with python3 --buildsystem=pybuild",
        "",
        "# bookworm's flit_core (3.8) reads neither an SPDX licence expression nor",
        "# license-files (flit_core 3.12): give it the older table form; the",
        "# licence travels in debian/copyright. The upstream file is put back on",
        "# clean, so that dpkg-source sees no change outside debian/",
        "UPSTREAM_PYPROJECT = debian/pyproject.toml.upstream",
        "execute_before_dh_auto_configure:",
        "\t[ -f $(UPSTREAM_PYPROJECT) ] || cp -p pyproject.toml $(UPSTREAM_PYPROJECT)",
        "\tsed -i -e 's/^license = \"\\(.*\\)\"$$/license = {text = \"\\1\"}/' \\",
        "\t    -e '/^license-files = /d' -e 's/flit_core>=3.12/flit_core>=3.4/' pyproject.toml",
        "",
        "execute_after_dh_clean:",
        "\t[ ! -f $(UPSTREAM_PYPROJECT) ] || mv $(UPSTREAM_PYPROJECT) pyproject.toml",
        "",
    ]
    if dist.is_core:
        rules += [
            "# the configuration is a conffile: dpkg keeps the admin's changes on upgrade",
            "execute_after_dh_auto_install:",
            f"\tinstall -D -m 0644 debian/conf/mailrider.conf debian/{pkg}{CONFIG}",
            "",
        ]
    files["rules"] = "\n".join(rules)
    version = f"{dist.version}-{DEBIAN_REVISION}"
    files["changelog"] = (
        f"{pkg} ({version}) unstable; urgency=medium\n\n"
        f"  * Release {dist.version}.\n\n"
        f" -- {MAINTAINER}  {RELEASE_DATES.get(dist.version, DEFAULT_DATE)}\n"
    )
    files["copyright"] = (
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n"
        f"Upstream-Name: {pkg}\n\n"
        "Files: *\n"
        "Copyright: 2026 mailrider developers\n"
        "License: ISC\n\n"
        "License: ISC\n"
        " Permission to use, copy, modify, and distribute this software for any\n"
        " purpose with or without fee is hereby granted, provided that the above\n"
        " copyright notice and this permission notice appear in all copies.\n"
        " .\n"
        " THE SOFTWARE IS PROVIDED \"AS IS\" AND THE AUTHOR DISCLAIMS ALL WARRANTIES\n"
        " WITH REGARD TO THIS SOFTWARE INCLUDING ALL IMPLIED WARRANTIES OF\n"
        " MERCHANTABILITY AND FITNESS. IN NO EVENT SHALL THE AUTHOR BE LIABLE FOR\n"
        " ANY SPECIAL, DIRECT, INDIRECT, OR CONSEQUENTIAL DAMAGES OR ANY DAMAGES\n"
        " WHATSOEVER RESULTING FROM LOSS OF USE, DATA OR PROFITS, WHETHER IN AN\n"
        " ACTION OF CONTRACT, NEGLIGENCE OR OTHER TORTIOUS ACTION, ARISING OUT OF\n"
        " OR IN CONNECTION WITH THE USE OR PERFORMANCE OF THIS SOFTWARE.\n"
    )
    files["source/format"] = "3.0 (quilt)\n"
    if dist.man_pages:
        files[f"{pkg}.manpages"] = "".join(f"{p}\n" for p in dist.man_pages)
    # dh_python3 maps requirements to packages: our distributions are not
    # python3-* packages, and Debian's drivers may be older than PyPI's
    # minimum (bookworm: redis 4.3), so no version is derived from them
    overrides = [f"{d.name} {d.name}" for d in all_dists]
    overrides += [f"{d} {DRIVERS[d][2]}" for d in sorted(DRIVERS)]
    files["py3dist-overrides"] = "\n".join(overrides) + "\n"
    if dist.backend:
        files[f"{pkg}.links"] = (
            f"usr/bin/{dist.name} usr/libexec/mailrider/table-{dist.backend}\n"
        )
    if dist.is_core:
        links = [f"usr/bin/mailriderctl {link}" for link in MTA_LINKS]
        if "man/mailriderctl.8" in dist.man_pages:
            links += [f"usr/share/man/man8/mailriderctl.8.gz usr/share/man/man8/{name}.8.gz"
                      for name in ("sendmail", "mailq", "newaliases")]
        files[f"{pkg}.links"] = "".join(f"{line}\n" for line in links)
        files["conf/mailrider.conf"] = DEBIAN_CONFIG
        files[f"{pkg}.examples"] = "examples/*.conf\n"
        files[f"{pkg}.dirs"] = "usr/libexec/mailrider\n"
        files[f"{pkg}.service"] = DEBIAN_SERVICE
        files[f"{pkg}.sysusers"] = "".join(
            f"u {name} - \"{comment}\" {home} /usr/sbin/nologin\n"
            for name, comment, home in USERS)
        files[f"{pkg}.tmpfiles"] = (
            f"# the daemon makes spool/ (0700, {QUEUE_USER}), empty/ and the rest itself\n"
            f"d {SPOOL} 0711 root root -\n"
        )
        files[f"{pkg}.postinst"] = DEBIAN_POSTINST
        files[f"{pkg}.postrm"] = DEBIAN_POSTRM
    return files


DEBIAN_SERVICE = f"""[Unit]
Description=mailrider mail transfer agent
Documentation=man:mailriderd(8) man:mailrider.conf(5) man:mailriderctl(8)
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
ExecStartPre=/usr/bin/mailriderd -n -f {CONFIG}
ExecStart=/usr/bin/mailriderd -d -f {CONFIG}
Restart=on-failure

# Hardening. The parent stays root and keeps only the capabilities it uses:
#   CAP_NET_BIND_SERVICE  listen on port 25
#   CAP_SETUID/SETGID     drop its children to {USER}, run deliveries as
#                         the recipient (setgroups needs CAP_SETGID)
#   CAP_CHOWN/CAP_FOWNER  give the spool and Maildirs to their owners
#   CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH
#                         open users' files (~/.forward, mailboxes) for them
#   CAP_KILL              stop children and deliveries running as other users
#   CAP_SYS_CHROOT        chroot children where possible
# NoNewPrivileges does not hinder setuid()/setgid() by a root process; it only
# stops gaining privileges through execve() of setuid/setgid or file-capability
# programs. A delivery command that relies on one (a setgid mail locker, a
# setgid procmail) then runs without it: override in a drop-in if you need it.
# (several CapabilityBoundingSet= lines add up)
CapabilityBoundingSet=CAP_NET_BIND_SERVICE CAP_SETUID CAP_SETGID CAP_CHOWN CAP_FOWNER
CapabilityBoundingSet=CAP_DAC_OVERRIDE CAP_DAC_READ_SEARCH CAP_KILL CAP_SYS_CHROOT
NoNewPrivileges=yes
# The whole tree is read-only except the spool and where mail is delivered.
# Deliveries go to users' homes (~/Maildir) and /var/mail; add the folders your
# actions write to (e.g. /var/vmail) with `systemctl edit mailrider`.
ProtectSystem=strict
ReadWritePaths={SPOOL}
ReadWritePaths=-/var/mail -/home -/root
PrivateTmp=yes
PrivateDevices=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
SystemCallArchitectures=native

[Install]
WantedBy=multi-user.target
"""

DEBIAN_CONFIG = f"""\
# {CONFIG}: the configuration of mailrider, see mailrider.conf(5).
# Check it with `mailriderd -n` after a change, then restart the daemon
# (`systemctl restart mailrider`).
#
# As installed: accept mail from this machine only (port 25 on the loopback,
# and /usr/sbin/sendmail) for its own names, and deliver it to ~/Maildir of
# the local user it is for, after the aliases of /etc/aliases (a text file:
# `newaliases` re-reads it). Other examples: /usr/share/doc/mailrider/examples/.

# `mailriderd -D port=N` listens on port N instead
port = "25"

table aliases file:/etc/aliases

listen on localhost port $port

action "local" maildir "~/Maildir" alias <aliases>

match from local for local action "local"
"""

DEBIAN_POSTINST = f"""#!/bin/sh
set -e

# the sysusers file (/usr/lib/sysusers.d/mailrider.conf, applied by the
# snippet below) describes the users; they are also made here first, so that
# neither a root without systemd-sysusers nor the service started below lacks them
if [ "$1" = "configure" ]; then
\tgetent passwd {USER} >/dev/null || useradd --system --user-group \\
\t\t--home-dir {SPOOL} --no-create-home --shell /usr/sbin/nologin \\
\t\t--comment "mailrider daemon" {USER}
\tgetent passwd {QUEUE_USER} >/dev/null || useradd --system --user-group \\
\t\t--home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin \\
\t\t--comment "mailrider queue" {QUEUE_USER}
\tgetent passwd {EXT_USER} >/dev/null || useradd --system --user-group \\
\t\t--home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin \\
\t\t--comment "mailrider filters and commands" {EXT_USER}
\t# the packaged configuration reads the system's aliases, as Debian's MTAs
\t# do: make the file when no other MTA left one (never replace it)
\tif [ ! -e /etc/aliases ]; then
\t\tprintf 'postmaster: root\\n' > /etc/aliases
\tfi
fi

#DEBHELPER#

exit 0
"""

DEBIAN_POSTRM = f"""#!/bin/sh
set -e

# the queue belongs to the package: purge removes it with the mail in it
if [ "$1" = "purge" ]; then
\trm -rf {SPOOL}
fi

#DEBHELPER#

exit 0
"""


# -- output -------------------------------------------------------------------


def render(root: pathlib.Path = ROOT) -> dict[str, str]:
    """Every file, by path relative to the output folder."""
    dists = discover(root)
    out: dict[str, str] = {}
    for dist in dists:
        for name, text in openbsd(dist).items():
            out[f"openbsd/{dist.name}/{name}"] = text
        for name, text in freebsd(dist).items():
            out[f"freebsd/{dist.name}/{name}"] = text
        for name, text in debian(dist, dists).items():
            out[f"debian/{dist.name}/debian/{name}"] = text
    out["README.md"] = CONTRIB_README
    return out


EXECUTABLE = re.compile(r"(pkg/mailriderd\.rc|files/mailriderd\.in|debian/rules"
                        r"|debian/[^/]+\.(postinst|postrm))\Z")

CONTRIB_README = """# Port skeletons

Generated by `python3 tools/ports/generate.py` from the pyproject.toml files:
do not edit by hand, change the generator (tools/tests/test_ports.py fails when
this folder is out of date).

- `openbsd/NAME/`: a port for `/usr/ports/mail/NAME` (MODPY_PYBUILD=flit_core).
  Claim a free uid/gid in infrastructure/db/user.list, then run
  `make makesum update-plist` to complete pkg/PLIST.
- `freebsd/NAME/`: a port for `/usr/ports/mail/NAME` (USE_PYTHON=pep517).
  Register `_mailrider`, `_mailriderq` and `_mailriderx` in UIDs and GIDs;
  run `make makesum`.
- `debian/NAME/debian/`: source format 3.0 (quilt). Put the sdist beside the
  tree as `NAME_VERSION.orig.tar.gz`, copy this folder into the unpacked sdist
  and run `dpkg-buildpackage -us -uc`; tools/ports/debian_check.sh does so and
  tests the packages. The core package is the system's mail transport agent
  (it replaces Postfix or Exim, provides /usr/sbin/sendmail, mailq and
  newaliases) and installs /etc/mail/mailrider.conf as a conffile.

flit cannot install data files, so each port installs the man pages (and the
core's examples) from the sdist's `man/` and `examples/` folders. Every extra's
program is also installed as `libexec/mailrider/table-NAME`, where mailriderd
(and OpenSMTPD) look for table backends.
"""


def write(out_dir: pathlib.Path, files: dict[str, str]) -> None:
    for rel, text in sorted(files.items()):
        path = out_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        path.chmod(0o755 if EXECUTABLE.search(rel) else 0o644)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(ROOT / "contrib"), help="output folder (default contrib)")
    ns = p.parse_args(argv)
    files = render()
    write(pathlib.Path(ns.out), files)
    print(f"{len(files)} files written to {ns.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
