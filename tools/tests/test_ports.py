"""contrib/ holds exactly what tools/ports/generate.py writes, and what it writes is sane."""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools" / "ports"))

import generate  # noqa: E402

CONTRIB = ROOT / "contrib"


def _files(folder: pathlib.Path) -> dict[str, pathlib.Path]:
    return {str(p.relative_to(folder)): p for p in sorted(folder.rglob("*")) if p.is_file()}


def test_contrib_is_up_to_date(tmp_path: pathlib.Path) -> None:
    subprocess.run([sys.executable, str(ROOT / "tools" / "ports" / "generate.py"),
                    "--out", str(tmp_path)], check=True, capture_output=True)
    fresh, committed = _files(tmp_path), _files(CONTRIB)
    assert sorted(fresh) == sorted(committed), (
        "contrib/ is out of date: run python3 tools/ports/generate.py")
    for rel, path in fresh.items():
        assert path.read_bytes() == committed[rel].read_bytes(), (
            f"contrib/{rel} differs: run python3 tools/ports/generate.py")
        assert os.access(path, os.X_OK) == os.access(committed[rel], os.X_OK), rel


def test_every_distribution_has_a_port() -> None:
    names = ["mailrider"] + [
        tomllib.loads(p.read_text())["project"]["name"]
        for p in sorted(ROOT.glob("extras/*/pyproject.toml"))
    ]
    files = generate.render()
    for name in names:
        assert f"openbsd/{name}/Makefile" in files
        assert f"freebsd/{name}/Makefile" in files
        assert f"debian/{name}/debian/control" in files


def test_paths_agree_with_paths_module() -> None:
    from mailrider import paths

    files = generate.render()
    assert paths.USER == generate.USER
    assert paths.QUEUE_USER == generate.QUEUE_USER
    assert paths.EXT_USER == generate.EXT_USER
    assert paths.SPOOL_ROOT == generate.SPOOL
    assert paths.CONFIG_FILE == generate.CONFIG
    assert "/usr/libexec/mailrider" in paths.LIBEXEC_DIRS  # Debian's sys.prefix/libexec
    assert "/usr/local/libexec/mailrider" in paths.LIBEXEC_DIRS  # the BSDs'
    plist = files["openbsd/mailrider/pkg/PLIST"]
    freebsd = files["freebsd/mailrider/Makefile"]
    postinst = files["debian/mailrider/debian/mailrider.postinst"]
    for user in (paths.USER, paths.QUEUE_USER, paths.EXT_USER):
        assert f"@newuser {user}:" in plist and f"@newgroup {user}:" in plist
        assert f"u {user} " in files["debian/mailrider/debian/mailrider.sysusers"]
        assert f" {user}\n" in postinst
        assert user in freebsd.split("USERS=")[1].splitlines()[0]
    assert "@sample ${SYSCONFDIR}" + paths.CONFIG_FILE.removeprefix("/etc") in plist
    service = files["debian/mailrider/debian/mailrider.service"]
    assert f"ReadWritePaths={paths.SPOOL_ROOT}\n" in service
    assert f"u {paths.USER} " in files["debian/mailrider/debian/mailrider.sysusers"]


def test_extras_install_their_backend_in_libexec() -> None:
    files = generate.render()
    for dist in generate.discover():
        if dist.backend is None:
            continue
        program = f"table-{dist.backend}"
        assert f"libexec/mailrider/{program}" in files[f"openbsd/{dist.name}/Makefile"]
        assert f"libexec/mailrider/{program}" in files[f"freebsd/{dist.name}/Makefile"]
        links = files[f"debian/{dist.name}/debian/{dist.name}.links"]
        assert links == f"usr/bin/{dist.name} usr/libexec/mailrider/{program}\n"
        assert "mail/mailrider" in files[f"openbsd/{dist.name}/Makefile"]
        assert "mailrider (>= " in files[f"debian/{dist.name}/debian/control"]


def test_rc_scripts_match_a_python_daemon() -> None:
    files = generate.render()
    rc = files["openbsd/mailrider/pkg/mailriderd.rc"]
    assert 'daemon="${LOCALBASE}/bin/mailriderd"' in rc
    # ps shows "<interpreter> <script> <flags>" for a console script
    assert 'pexp="${MODPY_BIN} ${daemon}${daemon_flags:+ ${daemon_flags}}"' in rc
    fb = files["freebsd/mailrider/files/mailriderd.in"]
    assert 'command_interpreter="%%PYTHON_CMD%%"' in fb
    assert "PYTHON_CMD=${PYTHON_CMD}" in files["freebsd/mailrider/Makefile"]


def test_man_pages_are_installed_by_every_port() -> None:
    files = generate.render()
    for dist in generate.discover():
        for page in dist.man_pages:
            base = page.rsplit("/", 1)[1]
            assert base in files[f"openbsd/{dist.name}/Makefile"], (dist.name, page)
            assert base in files[f"freebsd/{dist.name}/Makefile"], (dist.name, page)
            assert page in files[f"debian/{dist.name}/debian/{dist.name}.manpages"]


def test_unknown_requirement_is_an_error(tmp_path: pathlib.Path) -> None:
    (tmp_path / "core").mkdir()
    (tmp_path / "core/pyproject.toml").write_text(
        '[project]\nname = "mailrider"\nversion = "1"\ndescription = "x"\n'
        'dependencies = ["left-pad>=1"]\n')
    try:
        generate.discover(tmp_path)
    except SystemExit as exc:
        assert "left-pad" in str(exc)
    else:
        raise AssertionError("an unmapped requirement was accepted")


def test_debian_core_package_is_a_mail_transport_agent() -> None:
    """It takes Postfix's place: the virtual package, the programs of policy 11.6, a conffile."""
    from mailrider import paths
    from mailrider.config import parse_string

    files = generate.render()
    deb = "debian/mailrider/debian/"
    control = files[deb + "control"]
    for field in ("Provides", "Conflicts", "Replaces"):
        assert f"\n{field}: mail-transport-agent\n" in control, field
    links = dict(line.split(" ", 1)[::-1] for line in files[deb + "mailrider.links"].splitlines())
    for program in ("usr/sbin/sendmail", "usr/bin/mailq", "usr/bin/newaliases"):
        assert links[program] == "usr/bin/mailriderctl", program
    # mailriderctl acts after the name it is run as: those names must stay the ones it knows
    ctl = (ROOT / "core/src/mailrider/cli/mailriderctl.py").read_text()
    for name in ("sendmail", "mailq", "newaliases"):
        assert f'prog == "{name}"' in ctl, name
    # the configuration is installed where the daemon reads it, and the service uses it
    rules = files[deb + "rules"]
    assert f"debian/conf/mailrider.conf debian/mailrider{paths.CONFIG_FILE}\n" in rules
    service = files[deb + "mailrider.service"]
    assert f"\nExecStartPre=/usr/bin/mailriderd -n -f {paths.CONFIG_FILE}\n" in service
    assert f"\nExecStart=/usr/bin/mailriderd -d -f {paths.CONFIG_FILE}\n" in service
    cfg = parse_string(files[deb + "conf/mailrider.conf"], file="mailrider.conf")
    assert [(lst.address, lst.port) for lst in cfg.listeners] == [("localhost", 25)]
    moved = parse_string(files[deb + "conf/mailrider.conf"], macros={"port": "2525"})
    assert [lst.port for lst in moved.listeners] == [2525]  # debian_check.sh relies on it
    # compat 13 runs dh_installsysusers only through its sequence
    assert "debhelper-compat (= 13)" in control
    assert "dh-sequence-installsysusers" in control
    assert deb + "mailrider.sysusers" in files


def test_debian_packages_need_the_python_the_code_needs() -> None:
    files = generate.render()
    for dist in generate.discover():
        spec = tomllib.loads((dist.folder / "pyproject.toml").read_text())["project"][
            "requires-python"]
        assert spec == f">={dist.python}"
        control = files[f"debian/{dist.name}/debian/control"]
        assert f"python3 (>= {dist.python})" in control
        assert "Provides: mail-transport-agent" not in control or dist.is_core


def test_debian_source_format_fits_the_version() -> None:
    """A native package has no Debian revision; 3.0 (quilt) has one (and an orig tarball)."""
    files = generate.render()
    for dist in generate.discover():
        deb = f"debian/{dist.name}/debian/"
        version = files[deb + "changelog"].split("(", 1)[1].split(")", 1)[0]
        fmt = files[deb + "source/format"].strip()
        assert fmt in ("3.0 (native)", "3.0 (quilt)")
        assert ("-" in version) == (fmt == "3.0 (quilt)"), (dist.name, version, fmt)
        assert version.split("-")[0] == dist.version


# -- paths.py per port (docs/ports.md §1) ---------------------------------------

#: the make variables the recipes use, as each ports tree defines them
PORT_VARS = {
    "openbsd": {"PREFIX": "/usr/local", "TRUEPREFIX": "/usr/local", "LOCALBASE": "/usr/local",
                "SYSCONFDIR": "/etc"},
    "freebsd": {"PREFIX": "/usr/local", "SED": "sed"},
}
#: what mailrider.paths must say once each port's recipe has run
PORT_EXPECTED = {
    "openbsd": {"CONFIG_FILE": "/etc/mail/mailrider.conf", "ALIASES_FILE": "/etc/mail/aliases",
                "MAILNAME_FILE": "/etc/mail/mailname", "SHADOW_FILE": "/etc/master.passwd",
                "SYSLOG_SOCKET": "/dev/log"},
    "freebsd": {"CONFIG_FILE": "/usr/local/etc/mail/mailrider.conf",
                "ALIASES_FILE": "/etc/mail/aliases",
                "MAILNAME_FILE": "/usr/local/etc/mail/mailname",
                "SHADOW_FILE": "/etc/master.passwd", "SYSLOG_SOCKET": "/var/run/log"},
}
#: OpenBSD's SUBST_CMD (pkg_subst) in copy mode: ${VAR} replaced from the environment
PKG_SUBST = """\
import os, re, sys
assert sys.argv[1] == "-c", sys.argv
text = open(sys.argv[2]).read()
open(sys.argv[3], "w").write(re.sub(r"\\$\\{(\\w+)\\}", lambda m: os.environ[m.group(1)], text))
"""


def _recipe(makefile: str, target: str) -> list[str]:
    lines = makefile.splitlines()
    start = lines.index(f"{target}:") + 1
    out = []
    for line in lines[start:]:
        if not line.startswith("\t"):
            break
        out.append(line[1:])
    return out


def _expand(line: str, variables: dict[str, str]) -> str:
    # an unknown variable is a KeyError: the recipe uses something not emulated here
    return re.sub(r"\$\{(\w+)\}", lambda m: variables[m.group(1)], line)


def _apply_port(system: str, tmp_path: pathlib.Path) -> pathlib.Path:
    """Run the core port's recipe that writes paths.toml over a copy of core/ (the
    sdist's layout); returns the copy."""
    wrksrc = tmp_path / system / "wrksrc"
    shutil.copytree(ROOT / "core", wrksrc,
                    ignore=shutil.ignore_patterns("tests", "__pycache__", "*.egg-info", "build",
                                                  "dist", "paths.toml"))
    port = CONTRIB / system / "mailrider"
    variables = dict(PORT_VARS[system], WRKSRC=str(wrksrc), FILESDIR=str(port / "files"))
    subst = tmp_path / "pkg_subst.py"
    subst.write_text(PKG_SUBST)
    variables["SUBST_CMD"] = f"{sys.executable} {subst}"
    target = "pre-configure" if system == "openbsd" else "post-patch"
    recipe = _recipe((port / "Makefile").read_text(), target)
    assert recipe, f"{system}: no {target} target writes paths.toml"
    for line in recipe:
        subprocess.run(["sh", "-ec", _expand(line, variables)], check=True,
                       env=dict(os.environ, **PORT_VARS[system]), timeout=60)
    assert (wrksrc / "src/mailrider/paths.toml").is_file()
    return wrksrc


def _paths_of(src: pathlib.Path) -> dict[str, str]:
    names = sorted({name for expected in PORT_EXPECTED.values() for name in expected})
    code = ("import json, mailrider.paths as p; "
            f"print(json.dumps({{n: getattr(p, n) for n in {names!r}}}))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(src)), cwd=src, timeout=60,
                         check=True)
    result: dict[str, str] = json.loads(res.stdout)
    return result


@pytest.mark.parametrize("system", ["openbsd", "freebsd"])
def test_bsd_ports_set_their_paths(system: str, tmp_path: pathlib.Path) -> None:
    wrksrc = _apply_port(system, tmp_path)
    found = _paths_of(wrksrc / "src")
    assert found == PORT_EXPECTED[system]
    # the port's other files agree with what the daemon now reads
    config = PORT_EXPECTED[system]["CONFIG_FILE"]
    if system == "openbsd":
        plist = (CONTRIB / "openbsd/mailrider/pkg/PLIST").read_text()
        assert "@sample " + _expand("${SYSCONFDIR}/mail/mailrider.conf",
                                    PORT_VARS["openbsd"]) == "@sample " + config
        assert "@sample ${SYSCONFDIR}/mail/mailrider.conf\n" in plist
    else:
        rc = (CONTRIB / "freebsd/mailrider/files/mailriderd.in").read_text()
        assert rc.replace("%%PREFIX%%", "/usr/local").count(
            f'mailriderd_config:="{config}"') == 1
        makefile = (CONTRIB / "freebsd/mailrider/Makefile").read_text()
        assert "${STAGEDIR}${PREFIX}/etc/mail/mailrider.conf.sample" in makefile
    # the plain tree (pip, Debian) keeps the defaults
    assert _paths_of(ROOT / "core" / "src")["CONFIG_FILE"] == "/etc/mail/mailrider.conf"


@pytest.mark.skipif(importlib.util.find_spec("build") is None, reason="build not installed")
def test_port_paths_file_travels_in_the_wheel(tmp_path: pathlib.Path) -> None:
    """flit puts every file of the package into the wheel: paths.toml too."""
    wrksrc = _apply_port("freebsd", tmp_path)
    out = tmp_path / "dist"
    res = subprocess.run([sys.executable, "-m", "build", "--wheel", "--outdir", str(out),
                          str(wrksrc)], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    (wheel,) = out.glob("*.whl")
    with zipfile.ZipFile(wheel) as z:
        z.extractall(tmp_path / "installed")
        assert "mailrider/paths.toml" in z.namelist()
    assert _paths_of(tmp_path / "installed") == PORT_EXPECTED["freebsd"]


def test_every_core_port_says_what_key_delegation_needs() -> None:
    """docs/ports.md §4: each port's notes name the requirement and the way out."""
    files = generate.render()
    for note in ("openbsd/mailrider/pkg/README", "freebsd/mailrider/pkg-message",
                 "debian/mailrider/debian/README.Debian"):
        text = " ".join(files[note].split())
        assert "smtp key-in-process" in text, note
        assert "OpenSSL 1.1.1 or 3.x, or LibreSSL 3.5 or later" in text, note
        assert "mailriderd -n" in text, note
    # the same requirement as the daemon's own message
    from mailrider.cli.mailriderd import DELEGATION_NEEDS

    assert DELEGATION_NEEDS.startswith("CPython with a dynamically linked OpenSSL 1.1.1 or 3.x, "
                                       "or LibreSSL 3.5 or later")
    from mailrider.crypto import libcrypto

    assert libcrypto.LIBRESSL_MIN == (3, 5, 0)


def test_debian_drivers_carry_the_codes_lower_bound() -> None:
    """A driver too old for the code refuses to install rather than failing at
    start: bookworm's SQLAlchemy 1.4 cannot run the postgres backend (2.0)."""
    files = generate.render()
    for dist in generate.discover():
        control = files[f"debian/{dist.name}/debian/control"]
        for driver in dist.drivers:
            low = dist.driver_min[driver]
            assert f"{generate.DRIVERS[driver][2]} (>= {low})" in control, (dist.name, driver)
    postgres = files["debian/mailrider-table-postgres/debian/control"]
    assert "python3-sqlalchemy (>= 2.0)" in postgres
    assert "python3-sqlalchemy (>= 1.4.46)" in files["debian/mailrider-table-sql/debian/control"]
