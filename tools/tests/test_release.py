"""tools/release.py: version consistency and tag names, on the real tree and on fakes."""

from __future__ import annotations

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))

import release  # noqa: E402


def _tree(tmp: pathlib.Path, core: str = "0.2.0", extra: str = "0.2.0", pin: str = "0.2.0",
          core_init: str = "0.2.0", extra_init: str | None = "0.2.0",
          changelog: str = "0.2.0") -> pathlib.Path:
    (tmp / "core/src/mailrider").mkdir(parents=True)
    (tmp / "core/pyproject.toml").write_text(
        f'[project]\nname = "mailrider"\nversion = "{core}"\ndependencies = []\n')
    (tmp / "core/src/mailrider/__init__.py").write_text(f'"""x"""\n\n__version__ = "{core_init}"\n')
    extra_dir = tmp / "extras/table-demo"
    (extra_dir / "src/mailrider_table_demo").mkdir(parents=True)
    (extra_dir / "pyproject.toml").write_text(
        f'[project]\nname = "mailrider-table-demo"\nversion = "{extra}"\n'
        f'dependencies = ["mailrider=={pin}", "redis>=6"]\n'
        '[tool.flit.module]\nname = "mailrider_table_demo"\n')
    init = "" if extra_init is None else f'__version__ = "{extra_init}"\n'
    (extra_dir / "src/mailrider_table_demo/__init__.py").write_text(init)
    (tmp / "CHANGELOG.md").write_text(f"# Changelog\n\n## Unreleased\n\n## {changelog}\n\n- x\n")
    return tmp


def test_consistent_fake_tree(tmp_path: pathlib.Path) -> None:
    root = _tree(tmp_path)
    assert release.problems(root) == []
    assert release.tags(root) == ["mailrider-v0.2.0", "mailrider-table-demo-v0.2.0"]


def test_extra_without_version_in_init_is_fine(tmp_path: pathlib.Path) -> None:
    assert release.problems(_tree(tmp_path, extra_init=None)) == []


def test_each_mismatch_is_reported(tmp_path: pathlib.Path) -> None:
    cases = {
        "extra": ("table-demo/pyproject.toml", "version 0.1.9"),
        "pin": ("table-demo/pyproject.toml", "requires 'mailrider==0.1.9'"),
        "core_init": ("mailrider/__init__.py", "__version__ 0.1.9"),
        "extra_init": ("mailrider_table_demo/__init__.py", "__version__ 0.1.9"),
        "changelog": ("CHANGELOG.md", "newest version 0.1.9"),
    }
    for field, (where, what) in cases.items():
        root = tmp_path / field
        root.mkdir()
        found = release.problems(_tree(root, **{field: "0.1.9"}))
        assert len(found) == 1, (field, found)
        assert where in found[0] and what in found[0], (field, found)


def test_check_exit_status(tmp_path: pathlib.Path) -> None:
    good = _tree(tmp_path / "good")
    bad = _tree(tmp_path / "bad", pin="0.1.0")
    script = str(ROOT / "tools" / "release.py")
    ok = subprocess.run([sys.executable, script, "check", "--root", str(good)],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    ko = subprocess.run([sys.executable, script, "check", "--root", str(bad)],
                        capture_output=True, text=True)
    assert ko.returncode == 1 and "FAIL" in ko.stdout


def test_real_tree_is_consistent() -> None:
    assert release.problems(ROOT) == []


def test_real_tags_cover_every_distribution() -> None:
    out = subprocess.run([sys.executable, str(ROOT / "tools" / "release.py"), "tags"],
                         capture_output=True, text=True, check=True).stdout.split()
    version = release.distributions(ROOT)[0].version
    assert out[0] == f"mailrider-v{version}"
    extras = sorted(p.parent.name for p in ROOT.glob("extras/*/pyproject.toml"))
    assert out[1:] == [f"mailrider-{name}-v{version}" for name in extras]
