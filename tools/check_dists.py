"""Check built distributions: core has no Requires-Dist, every extra depends on
the matching core version, sdists carry tests, LICENSE and (core) examples.

Usage: python tools/check_dists.py DIST_FOLDER
"""

from __future__ import annotations

import email.parser
import sys
import tarfile
import zipfile
from pathlib import Path


def wheel_metadata(path: Path) -> email.message.Message:
    with zipfile.ZipFile(path) as z:
        name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        return email.parser.Parser().parsestr(z.read(name).decode())


def main(folder: str) -> int:
    out = Path(folder)
    errors: list[str] = []
    wheels = sorted(out.glob("*.whl"))
    core = [w for w in wheels if w.name.startswith("mailrider-")]
    if len(core) != 1:
        errors.append(f"expected one core wheel, found {[w.name for w in core]}")
        return _report(errors)
    core_meta = wheel_metadata(core[0])
    version = core_meta["Version"]
    if core_meta.get_all("Requires-Dist"):
        errors.append(f"core has Requires-Dist: {core_meta.get_all('Requires-Dist')}")
    for w in wheels:
        meta = wheel_metadata(w)
        if meta["Name"] == "mailrider":
            continue
        if meta["Version"] != version:
            errors.append(f"{meta['Name']} version {meta['Version']} != core {version}")
        reqs = meta.get_all("Requires-Dist") or []
        if f"mailrider=={version}" not in [r.replace(" ", "") for r in reqs]:
            errors.append(f"{meta['Name']} does not require mailrider=={version}: {reqs}")
    for sdist in sorted(out.glob("*.tar.gz")):
        with tarfile.open(sdist) as t:
            names = t.getnames()
        root = names[0].split("/")[0]
        for needed in ("LICENSE", "tests/", "man/"):
            if not any(n == f"{root}/{needed.rstrip('/')}" or n.startswith(f"{root}/{needed}")
                       for n in names):
                errors.append(f"{sdist.name} lacks {needed}")
        if sdist.name.startswith("mailrider-0") and not any("/examples/" in n for n in names):
            errors.append(f"{sdist.name} lacks examples/")
    return _report(errors)


def _report(errors: list[str]) -> int:
    for e in errors:
        print(f"FAIL {e}")
    if not errors:
        print("distributions OK")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
