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
