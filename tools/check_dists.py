"""Check built distributions: core has no Requires-Dist, every extra depends on
the matching core version, every wheel's METADATA carries the licence (SPDX
expression and the file), the classifiers and project URLs, a description
without links relative to the repository, and ``py.typed``; sdists carry
tests, LICENSE and (core) examples.

Usage: python tools/check_dists.py DIST_FOLDER
"""

from __future__ import annotations

import email.parser
import re
import sys
import tarfile
import zipfile
from pathlib import Path

LICENSE = "ISC"
#: classifiers every distribution declares
CLASSIFIERS = (
    "Programming Language :: Python :: 3 :: Only",
    "Topic :: Communications :: Email :: Mail Transport Agents",
    "Typing :: Typed",
)
#: project URLs every distribution declares
URLS = ("Homepage", "Documentation", "Source", "Changelog")


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
        errors.extend(f"{w.name}: {e}" for e in metadata_problems(w, meta))
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


def metadata_problems(wheel: Path, meta: email.message.Message) -> list[str]:
    """What a wheel's METADATA (and file list) lacks for an index page that stands alone."""
    found: list[str] = []
    if meta["License-Expression"] != LICENSE:
        found.append(f"License-Expression is {meta['License-Expression']!r}, want {LICENSE!r}")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
    license_files = meta.get_all("License-File") or []
    if "LICENSE" not in license_files:
        found.append(f"License-File lacks LICENSE: {license_files}")
    elif not any(n.endswith(".dist-info/licenses/LICENSE") for n in names):
        found.append("no .dist-info/licenses/LICENSE in the wheel")
    classifiers = meta.get_all("Classifier") or []
    for c in CLASSIFIERS:
        if c not in classifiers:
            found.append(f"classifier missing: {c}")
    if not any(re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c) for c in classifiers):
        found.append("no Programming Language :: Python :: 3.X classifier")
    if any(c.startswith("License ::") for c in classifiers):
        found.append("a License :: classifier beside the SPDX expression")
    if not any(n.endswith("/py.typed") for n in names):
        found.append("Typing :: Typed without a py.typed file")
    urls = [u.split(",", 1)[0].strip() for u in meta.get_all("Project-URL") or []]
    for label in URLS:
        if label not in urls:
            found.append(f"Project-URL missing: {label}")
    description = meta.get_payload()
    if not isinstance(description, str) or len(description.strip()) < 200:
        found.append("no description (README) to show on the index")
    elif re.search(r"\]\((?!https?://|#)", description):
        found.append("the description links to a relative path, dead on an index page")
    return found


def _report(errors: list[str]) -> int:
    for e in errors:
        print(f"FAIL {e}")
    if not errors:
        print("distributions OK")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
