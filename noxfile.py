"""nox sessions: one per distribution, plus lint, types and build.

Every distribution is installed non-editable into a fresh environment, so
what is tested is what users install. Extras are discovered from
``extras/*/pyproject.toml``; an extra that depends on another local
distribution (mailrider-table-sql) gets it installed from the tree.
"""

from __future__ import annotations

import pathlib
import tomllib

import nox

ROOT = pathlib.Path(__file__).parent
EXTRAS = sorted(p.parent for p in ROOT.glob("extras/*/pyproject.toml"))
LOCAL = {tomllib.loads((p / "pyproject.toml").read_text())["project"]["name"]: p
         for p in [ROOT / "core", *EXTRAS]}

nox.options.sessions = ["core", *[p.name for p in EXTRAS], "lint", "types", "build"]
nox.options.reuse_existing_virtualenvs = True

#: the development tools at the exact versions of tools/dev-requirements.txt
PINS = {
    line.split("==")[0].lower(): line
    for line in (ROOT / "tools" / "dev-requirements.txt").read_text().splitlines()
    if line.strip() and not line.startswith("#")
}
TEST_DEPS = [PINS["pytest"], PINS["hypothesis"]]


def _local_requirements(dist: pathlib.Path) -> list[str]:
    """The distribution and every local distribution it needs, as paths."""
    seen: list[pathlib.Path] = []

    def visit(p: pathlib.Path) -> None:
        if p in seen:
            return
        meta = tomllib.loads((p / "pyproject.toml").read_text())["project"]
        for req in meta.get("dependencies", []):
            name = req.split("=")[0].split("<")[0].split(">")[0].split("[")[0].strip()
            if name in LOCAL:
                visit(LOCAL[name])
        seen.append(p)

    visit(dist)
    return [str(p) for p in seen]


@nox.session
def core(session: nox.Session) -> None:
    session.install(*TEST_DEPS)
    session.install(str(ROOT / "core"))
    session.run("pytest", "-p", "no:cacheprovider", "core/tests", "tools/tests", *session.posargs)


def _extra_session(dist: pathlib.Path) -> None:
    @nox.session(name=dist.name)
    def run(session: nox.Session) -> None:
        session.install(*TEST_DEPS)
        reqs = _local_requirements(dist)
        # the distribution itself (last) with its optional dependencies
        meta = tomllib.loads((dist / "pyproject.toml").read_text())["project"]
        optional = ",".join(meta.get("optional-dependencies", {}))
        if optional:
            reqs[-1] += f"[{optional}]"
        session.install(*reqs)
        session.run("pytest", "-p", "no:cacheprovider", str(dist / "tests"), *session.posargs)


for _dist in EXTRAS:
    _extra_session(_dist)


@nox.session
def lint(session: nox.Session) -> None:
    session.install(PINS["ruff"])
    session.run("ruff", "check", "core", "extras", "tools", "noxfile.py")


@nox.session
def types(session: nox.Session) -> None:
    session.install(PINS["mypy"])
    session.run("mypy", "--strict", "core/src/mailrider", env={"MYPYPATH": "core/src"})


@nox.session
def build(session: nox.Session) -> None:
    """sdist + wheel of every distribution into dist/, then check them."""
    session.install(PINS["build"], PINS["twine"])
    out = ROOT / "dist"
    out.mkdir(exist_ok=True)
    for p in [ROOT / "core", *EXTRAS]:
        session.run("python", "-m", "build", "--sdist", "--wheel", "--outdir", str(out), str(p))
    session.run("twine", "check", "--strict", *[str(f) for f in sorted(out.iterdir())])
    session.run("python", str(ROOT / "tools" / "check_dists.py"), str(out))


@nox.session
def torture(session: nox.Session) -> None:
    """tools/torture/run.py: every torture part against a real daemon, 300 s each."""
    session.install(*TEST_DEPS, "atheris")
    session.install(str(ROOT / "core"))
    session.run("python", "tools/torture/run.py", "--budget", "300", *session.posargs)
