"""contrib/ holds exactly what tools/ports/generate.py writes, and what it writes is sane."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import tomllib

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
