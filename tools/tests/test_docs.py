"""The repository stands alone: code and documentation cite docs/, and every
``docs/PAGE.md §N`` citation names a page and a section that exist."""

from __future__ import annotations

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
#: where citations live: sources, tests, man pages, READMEs, tools, ports
TREES = ("core", "extras", "tools", "contrib")
SUFFIXES = {".py", ".md", ".5", ".8", ".sh", ".txt", ".toml", ""}
#: documents outside the repository that someone who clones it does not have
OUTSIDE = re.compile("|".join([
    r"PROTOCOLS" + r"\.md", r"KLONDIKE" + r"\.md", r"ARCHITECTURE" + r"(\.md|:)",
    r"STYLE" + r"(\.md| rule)", r"/work/" + r"shared",
]))
CITATION = re.compile(r"(?:docs/)?([a-z-]+\.md) §(\d+(?:\.\d+)?)")


def _files() -> list[pathlib.Path]:
    out = [ROOT / "README.md", ROOT / "CHANGELOG.md", ROOT / "noxfile.py"]
    for tree in TREES:
        for path in sorted((ROOT / tree).rglob("*")):
            if path.is_file() and path.suffix in SUFFIXES and "__pycache__" not in path.parts \
                    and path != pathlib.Path(__file__).resolve():
                out.append(path)
    return out


def _sections(page: pathlib.Path) -> set[str]:
    found = set()
    for line in page.read_text(encoding="utf-8").splitlines():
        m = re.match(r"#{2,3} (\d+(?:\.\d+)?)\.? ", line)
        if m:
            found.add(m.group(1))
    return found


def test_nothing_cites_documents_outside_the_repository() -> None:
    bad = []
    for path in _files():
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        for n, line in enumerate(text.splitlines(), 1):
            if OUTSIDE.search(line):
                bad.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not bad, "\n".join(bad)


def test_citations_name_existing_sections() -> None:
    cited = 0
    bad = []
    for path in _files() + sorted(DOCS.glob("*.md")):
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        for m in CITATION.finditer(text):
            cited += 1
            page = DOCS / m.group(1)
            if not page.is_file():
                bad.append(f"{path.relative_to(ROOT)}: {m.group(0)}: no such page")
            elif m.group(2) not in _sections(page):
                bad.append(f"{path.relative_to(ROOT)}: {m.group(0)}: no such section")
    assert cited > 40, "the citation pattern no longer matches the code's citations"
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("page", ["processes.md", "queue.md", "table-protocol.md",
                                  "filter-protocol.md", "config.md"])
def test_index_lists_page(page: str) -> None:
    assert (DOCS / page).is_file()
    assert f"({page})" in (DOCS / "README.md").read_text(encoding="utf-8")


def test_section_parser_finds_sections() -> None:
    assert {"1", "5", "10", "10.3"} <= _sections(DOCS / "table-protocol.md")
