"""paths.py: a port's paths.toml is read strictly (docs/ports.md §1)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from mailrider import paths


def test_every_port_key_is_a_constant() -> None:
    for key, is_list in paths.PORT_KEYS.items():
        value = getattr(paths, key.upper())
        assert isinstance(value, tuple) if is_list else isinstance(value, str), key


def test_read_port_file(tmp_path: Path) -> None:
    f = tmp_path / "paths.toml"
    assert paths.read_port_file(str(f)) == {}  # no file: the defaults
    f.write_text('# a port\nconfig_file = "/usr/local/etc/mail/mailrider.conf"\n'
                 'libexec_dirs = ["/usr/local/libexec/mailrider"]\n')
    assert paths.read_port_file(str(f)) == {
        "config_file": "/usr/local/etc/mail/mailrider.conf",
        "libexec_dirs": ("/usr/local/libexec/mailrider",),
    }


@pytest.mark.parametrize(("text", "why"), [
    ('conf_file = "/x"\n', "unknown setting 'conf_file'"),
    ('config_file = ["/x"]\n', "config_file must be a non-empty string"),
    ('config_file = ""\n', "config_file must be a non-empty string"),
    ('libexec_dirs = "/x"\n', "libexec_dirs must be a list of strings"),
    ('libexec_dirs = [1]\n', "libexec_dirs must be a list of strings"),
    ('config_file = /x\n', "Invalid value"),
    (b'config_file = "\xff"\n', "utf-8"),
])
def test_broken_port_file_is_an_error(tmp_path: Path, text: str | bytes, why: str) -> None:
    f = tmp_path / "paths.toml"
    if isinstance(text, bytes):
        f.write_bytes(text)
    else:
        f.write_text(text)
    with pytest.raises(paths.PortFileError, match=why) as info:
        paths.read_port_file(str(f))
    assert str(info.value).startswith(f"{f}: ")


def test_a_package_with_a_port_file(tmp_path: Path) -> None:
    """The file beside paths.py is what the module reads at import."""
    import shutil

    pkg = tmp_path / "mailrider"
    shutil.copytree(Path(paths.__file__).parent, pkg,
                    ignore=shutil.ignore_patterns("__pycache__", "paths.toml"))
    (pkg / "paths.toml").write_text('config_file = "/opt/mr/mailrider.conf"\n'
                                    'opensmtpd_libexec_dirs = []\n')
    code = ("import mailrider.paths as p; "
            "print(p.CONFIG_FILE, p.OPENSMTPD_LIBEXEC_DIRS, p.ALIASES_FILE)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=tmp_path, timeout=60)
    assert res.stdout == "/opt/mr/mailrider.conf () /etc/mail/aliases\n", res.stderr
    (pkg / "paths.toml").write_text('spool = "/var/x"\n')
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=tmp_path, timeout=60)
    assert res.returncode == 1
    assert "PortFileError" in res.stderr and "unknown setting 'spool'" in res.stderr
