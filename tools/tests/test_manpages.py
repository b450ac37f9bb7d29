"""Every option, command and configuration keyword is documented in its man page.

The lists come from the code itself (mailriderd's argparse parser, the control
process's dispatcher, the parser's KEYWORDS and support.UNSUPPORTED), so a new
option without documentation fails here. Every page is also run through
``mandoc -Tlint -W warning`` when mandoc is installed.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import pathlib
import re
import shutil
import subprocess
from unittest import mock

import pytest
from mailrider.cli import mailriderctl
from mailrider.config import parser as config_parser
from mailrider.config import support
from mailrider.proc import common, control

ROOT = pathlib.Path(__file__).resolve().parents[2]
MAN = ROOT / "core" / "man"
CORE_PAGES = ("mailriderd.8", "mailriderctl.8", "mailrider.conf.5", "mailrider-tables.5")
EXTRAS = sorted(p.parent for p in ROOT.glob("extras/*/pyproject.toml"))

#: a macro name: it ends a run of Cm/Ic/Fl words
_MACRO = re.compile(r"[A-Z][a-z][a-z]?\Z|%[A-Z]\Z")
#: delimiters that mdoc passes through without ending a run
_DELIMS = frozenset("|,.;:()[]")


def _words(line: str) -> list[str]:
    """The arguments of one mdoc line, with quoted arguments kept whole."""
    return [a if b == "" else b for a, b in re.findall(r'([^\s"]+)|"([^"]*)"', line)]


def documented(page: pathlib.Path | str, macros: tuple[str, ...]) -> list[str]:
    """The runs of words given to any of ``macros`` in ``page`` (a path or mdoc text).

    ``.It Cm show queue Op Ar msgid`` gives ``"show queue"``; ``.Fl d`` gives
    ``"-d"`` for ``Fl``.
    """
    runs: list[str] = []
    text = page.read_text() if isinstance(page, pathlib.Path) else page
    for line in text.splitlines():
        if not line.startswith(".") or line.startswith(".\\\""):
            continue
        words = _words(line[1:])
        current: list[str] | None = None
        prefix = ""
        for word in words:
            if word in macros:
                if current:
                    runs.append(" ".join(current))
                current, prefix = [], "-" if word == "Fl" else ""
            elif _MACRO.match(word) or word == "Ns":
                if current:
                    runs.append(" ".join(current))
                current = None
            elif current is not None and word not in _DELIMS:
                current.append(prefix + word.replace("\\&", "").replace("\\-", "-"))
        if current:
            runs.append(" ".join(current))
    return runs


def _covered(phrase: str, runs: list[str]) -> bool:
    return any(f" {phrase} " in f" {run} " for run in runs)


# -- what the code knows ----------------------------------------------------


def mailriderd_options() -> list[str]:
    """The option strings of ``mailriderd``'s parser, read from parse_options itself."""
    seen: list[argparse.ArgumentParser] = []

    def capture(self: argparse.ArgumentParser, *args: object, **kwargs: object) -> None:
        seen.append(self)
        raise SystemExit(0)

    with mock.patch.object(argparse.ArgumentParser, "parse_args", capture), \
            pytest.raises(SystemExit):
        common.parse_options([])
    assert len(seen) == 1
    return [s for action in seen[0]._actions for s in action.option_strings
            if s not in ("-h", "--help")]


def _compared_strings(func: object) -> list[str]:
    """String constants compared (``==``, ``in``) in the body of ``func``."""
    tree = ast.parse(_dedent(inspect.getsource(func)))  # type: ignore[arg-type]
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            for side in (node.left, *node.comparators):
                for sub in ast.walk(side):
                    if isinstance(sub, ast.Constant) and isinstance(sub.value, str):
                        found.append(sub.value)
    return found


def _dedent(source: str) -> str:
    lines = source.splitlines()
    indent = len(lines[0]) - len(lines[0].lstrip())
    return "\n".join(line[indent:] for line in lines)


def mailriderctl_commands() -> list[str]:
    """The commands: mailriderctl's table of commands (its fixed words), the words
    the control process dispatches on, and mailriderctl's local commands."""
    found = set(_compared_strings(control.Control._dispatch))
    for command in getattr(mailriderctl, "COMMANDS", ()):
        # arguments (<evpid>, <str>...) and the id "all" are the page's Ar words
        words = [w for w in command.split() if "*" not in w and not w.startswith("<")]
        found.add(" ".join(words[:-1] if words[-1:] == ["all"] else words))
    found.update(getattr(mailriderctl, "LOCAL_COMMANDS", ()))
    return sorted(w for w in found if w and not w.startswith("-"))


def mailriderctl_options() -> list[str]:
    source = inspect.getsource(mailriderctl.run)
    return sorted(set(re.findall(r'opt == "(-[a-zA-Z]|--[a-z-]+)"', source)))


# -- the tests ---------------------------------------------------------------


def test_extractors_find_what_we_know() -> None:
    # guards against a parser change making the checks below vacuous
    assert {"-d", "-n", "-v", "-f", "-D", "-S"} <= set(mailriderd_options())
    assert {"show queue", "update table", "mda", "log verbose"} <= set(mailriderctl_commands())
    assert {"-S", "-j", "--version"} <= set(mailriderctl_options())
    assert {"listen", "match", "action", "table"} <= config_parser.KEYWORDS
    runs = documented(MAN / "mailriderctl.8", ("Cm",))
    assert "show queue" in runs and "pause mda" in runs


@pytest.mark.parametrize("option", mailriderd_options())
def test_mailriderd_option_documented(option: str) -> None:
    runs = documented(MAN / "mailriderd.8", ("Fl",))
    assert option in runs, f"{option} is not documented with .Fl in mailriderd.8"


@pytest.mark.parametrize("option", mailriderctl_options())
def test_mailriderctl_option_documented(option: str) -> None:
    runs = documented(MAN / "mailriderctl.8", ("Fl",))
    assert option in runs, f"{option} is not documented with .Fl in mailriderctl.8"


@pytest.mark.parametrize("command", mailriderctl_commands())
def test_mailriderctl_command_documented(command: str) -> None:
    runs = documented(MAN / "mailriderctl.8", ("Cm",))
    assert _covered(command, runs), f"{command!r} is not documented with .Cm in mailriderctl.8"


@pytest.mark.parametrize("keyword", sorted(config_parser.KEYWORDS))
def test_config_keyword_documented(keyword: str) -> None:
    runs = documented(MAN / "mailrider.conf.5", ("Cm", "Ic"))
    assert _covered(keyword, runs), f"{keyword!r} is not documented in mailrider.conf.5"


def _section(page: pathlib.Path, name: str) -> str:
    text = page.read_text()
    start = text.index(f".Sh {name}\n")
    end = text.find("\n.Sh ", start + 1)
    return text[start:end if end != -1 else None]


def listed_unsupported() -> list[str]:
    """The features the UNSUPPORTED FEATURES section of mailrider.conf.5 names,
    one per item of its ``.It Cm a , b`` lines."""
    out: list[str] = []
    for line in _section(MAN / "mailrider.conf.5", "UNSUPPORTED FEATURES").splitlines():
        if line.startswith(".It "):
            words = [w for w in _words(line[4:]) if not _MACRO.match(w)]
            out += [" ".join(p.split()) for p in " ".join(words).split(",") if p.strip()]
    return out


def support_features() -> set[str]:
    """Every feature name config/support.py can report (the vocabulary of
    features_used and its tables), read from its source."""
    tree = ast.parse(inspect.getsource(support))
    names: set[str] = set(support.UNSUPPORTED)
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id.endswith("_FEATURES") for t in node.targets) \
                and isinstance(node.value, ast.Dict):
            names.update(v.value for v in node.value.values
                         if isinstance(v, ast.Constant) and isinstance(v.value, str))
        if isinstance(node, ast.FunctionDef) and node.name == "features_used":
            for sub in ast.walk(node):
                if isinstance(sub, ast.Tuple):
                    names.update(e.value for e in sub.elts
                                 if isinstance(e, ast.Constant) and isinstance(e.value, str))
    return names


# the man page says what the parser does, in both directions, whatever
# support.UNSUPPORTED holds when the test runs (features leave it as they land)
@pytest.mark.parametrize("feature", sorted(support.UNSUPPORTED))
def test_unsupported_feature_listed(feature: str) -> None:
    assert feature in listed_unsupported(), f"{feature!r} is missing from UNSUPPORTED FEATURES"


def test_listed_unsupported_features_are_unsupported() -> None:
    listed = listed_unsupported()
    section = _section(MAN / "mailrider.conf.5", "UNSUPPORTED FEATURES")
    if support.UNSUPPORTED:
        assert listed, "the UNSUPPORTED FEATURES section lists nothing (extractor broken?)"
    else:  # nothing to list: the page says so, and lists nothing
        assert section.split("\n", 1)[1].startswith("None:"), section
        assert ".It " not in section
    extra = [f for f in listed if f not in support.UNSUPPORTED]
    assert not extra, f"documented as unsupported but supported by the parser: {extra}"


def test_supported_features_documented_outside_unsupported() -> None:
    features = support_features()
    assert {"pki", "relay", "filter", "relay helo-src"} <= features  # the extractor works
    text = (MAN / "mailrider.conf.5").read_text()
    unsupported_section = _section(MAN / "mailrider.conf.5", "UNSUPPORTED FEATURES")
    runs = documented(text.replace(unsupported_section, ""), ("Cm", "Ic"))
    missing = [f for f in sorted(features - set(support.UNSUPPORTED))
               if not all(_covered(word, runs) for word in f.split())]
    assert not missing, f"supported features not described in mailrider.conf.5: {missing}"


def test_every_program_has_a_page() -> None:
    for page in CORE_PAGES:
        assert (MAN / page).is_file(), page
    for dist in EXTRAS:
        page = dist / "man" / f"mailrider-{dist.name}.5"
        assert page.is_file(), f"{dist.name} has no man page {page.relative_to(ROOT)}"


def test_core_sdist_ships_man_pages() -> None:
    import tomllib

    meta = tomllib.loads((ROOT / "core" / "pyproject.toml").read_text())
    assert "man/" in meta["tool"]["flit"]["sdist"]["include"]


def _all_pages() -> list[pathlib.Path]:
    return [MAN / p for p in CORE_PAGES] + sorted(ROOT.glob("extras/*/man/*.[1-8]"))


@pytest.mark.parametrize("page", _all_pages(), ids=lambda p: p.name)
def test_mandoc_lint(page: pathlib.Path) -> None:
    mandoc = shutil.which("mandoc")
    if mandoc is None:
        pytest.skip("mandoc is not installed")
    res = subprocess.run([mandoc, "-Tlint", "-W", "warning", str(page)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and not res.stdout.strip(), res.stdout + res.stderr
