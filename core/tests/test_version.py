"""``--version`` of the installed programs: one line, the name and mailrider.__version__."""

from __future__ import annotations

import importlib.metadata
import pathlib
import shutil
import subprocess
import sys

import pytest
from mailrider import __version__
from mailrider.cli import mailriderctl
from mailrider.proc import common


def test_installed_metadata_is_the_module_version() -> None:
    assert importlib.metadata.version("mailrider") == __version__


def test_mailriderd_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        common.parse_options(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out == f"mailriderd {__version__}\n"


def test_mailriderctl_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert mailriderctl.main(["--version"]) == 0
    assert capsys.readouterr().out == f"mailriderctl {__version__}\n"


@pytest.mark.parametrize("program", ["mailriderd", "mailriderctl"])
def test_console_script_version(program: str) -> None:
    # the scripts installed beside this interpreter, else the ones on PATH
    path = pathlib.Path(sys.executable).parent / program
    found = str(path) if path.exists() else shutil.which(program)
    if found is None:
        pytest.skip(f"{program} is not installed")
    res = subprocess.run([found, "--version"], capture_output=True, text=True, timeout=60,
                         stdin=subprocess.DEVNULL)
    assert (res.returncode, res.stdout, res.stderr) == (0, f"{program} {__version__}\n", "")


def test_mailriderctl_into_a_closed_pipe_has_no_traceback() -> None:
    import subprocess
    import sys

    # many lines into a reader that reads none: the write fails with EPIPE
    r = subprocess.run(
        f"{sys.executable} -c 'import sys; sys.argv=[\"mailriderctl\", \"--help\"]; "
        "from mailrider.cli.mailriderctl import main; import builtins; "
        "p = builtins.print; builtins.print = lambda *a, **k: [p(*a, **k) for _ in range(20000)]; "
        "sys.exit(main())' | true", shell=True, capture_output=True, text=True, timeout=60)
    assert "Traceback" not in r.stderr, r.stderr


@pytest.mark.parametrize("name", ["sendmail", "mailq", "makemap", "newaliases"])
def test_version_under_every_name(name: str, tmp_path: pathlib.Path) -> None:
    # ports install mailriderctl under these names too (mailriderctl(8))
    link = tmp_path / name
    link.write_text(f"#!{sys.executable}\nfrom mailrider.cli.mailriderctl import main\n"
                    "import sys\nsys.exit(main())\n")
    link.chmod(0o755)
    res = subprocess.run([str(link), "--version"], capture_output=True, text=True, timeout=60,
                         stdin=subprocess.DEVNULL)
    assert (res.returncode, res.stdout, res.stderr) == (0, f"{name} {__version__}\n", "")


def test_every_table_program_answers_help_and_version() -> None:
    # extras/*: console scripts beside this interpreter (those installed)
    found = sorted(pathlib.Path(sys.executable).parent.glob("mailrider-table-*"))
    if not found:
        pytest.skip("no table program is installed")
    for path in found:
        for opt, want in (("--version", f"{path.name} "), ("--help", "usage: ")):
            res = subprocess.run([str(path), opt], capture_output=True, text=True, timeout=60,
                                 stdin=subprocess.DEVNULL)
            assert res.returncode == 0 and res.stdout.startswith(want), (path, opt, res)
