"""The compatibility corpus: real smtpd.conf files and OpenSMTPD 7.8's verdicts.

The corpus lives in the shared folder (``compat/smtpd-conf``), outside the
project; it is read in place, never copied. Where the shared folder is:
``MAILRIDER_SHARED``, else ``../shared`` beside the repository root.

Rules checked:

- a file OpenSMTPD accepts (as published or after its environment
  adjustment) parses with our grammar;
- a file OpenSMTPD rejects with a ``file:line:`` parse error is rejected by
  us at the same line;
- a file OpenSMTPD rejects for a reason outside the grammar (a missing
  interface, a queue key) parses too: we check those later, elsewhere;
- ``check_supported`` passes, or names a line of the file and a feature of
  ``UNSUPPORTED``. The test id says which, e.g. ``01-...:relay@14``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from mailrider.config import UNSUPPORTED, Config, check_supported, parse_string
from mailrider.errors import ConfigError


def shared_dir() -> Path:
    env = os.environ.get("MAILRIDER_SHARED")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[3] / ".." / "shared"


CORPUS = shared_dir() / "compat" / "smtpd-conf"
NO_CORPUS = f"no compat corpus at {CORPUS} (MAILRIDER_SHARED names the folder holding compat/)"
VERDICTS = CORPUS / "OPENSMTPD-7.8-VERDICTS.md"
_ROW = re.compile(r"^\|\s*(\S+\.conf)\s*\|\s*(\w+)\s*\|(.*?)\|(.*?)\|\s*$")
_PARSE_ERROR = re.compile(r"`[^`:]+\.conf:(\d+): ([^`]*)`")


def verdicts() -> dict[str, tuple[bool, int | None]]:
    """file -> (accepted after adjustment, line of a grammar rejection or None)."""
    out: dict[str, tuple[bool, int | None]] = {}
    for line in VERDICTS.read_text(encoding="utf-8").splitlines():
        m = _ROW.match(line)
        if m is None:
            continue
        name, verdict, error, adjusted = m.groups()
        accepted = verdict == "accepted" or adjusted.strip().startswith("accepted")
        parse_error = _PARSE_ERROR.search(error)
        out[name] = (accepted, int(parse_error.group(1)) if parse_error else None)
    return out


def support_outcome(path: Path) -> str:
    """What check_supported says, for the test id."""
    try:
        check_supported(parse_string(path.read_text(encoding="utf-8"), path.name))
    except ConfigError as e:
        m = re.match(r"'(.+)' is not supported yet", e.message)
        return f"{m.group(1) if m else 'parse-error'}@{e.line}"
    return "supported"


def corpus_params() -> list[object]:
    if not VERDICTS.is_file():
        return [pytest.param(None, id="no-corpus")]
    params: list[object] = []
    for path in sorted(CORPUS.glob("*.conf")):
        params.append(pytest.param(path, id=f"{path.stem}:{support_outcome(path)}"))
    return params


def test_verdicts_cover_the_corpus() -> None:
    if not VERDICTS.is_file():
        pytest.skip(NO_CORPUS)
    table = verdicts()
    assert len(table) == 20
    assert set(table) == {p.name for p in CORPUS.glob("*.conf")}


@pytest.mark.parametrize("path", corpus_params())
def test_grammar_agrees_with_opensmtpd(path: Path | None) -> None:
    if path is None:
        pytest.skip(NO_CORPUS)
    accepted, error_line = verdicts()[path.name]
    text = path.read_text(encoding="utf-8")
    if error_line is not None:
        assert not accepted
        with pytest.raises(ConfigError) as info:
            parse_string(text, path.name)
        assert (info.value.file, info.value.line) == (path.name, error_line)
        return
    config = parse_string(text, path.name)
    assert config.file == path.name
    assert config.matches, "every corpus file has match rules"


@pytest.mark.parametrize("path", corpus_params())
def test_support_check_names_line_and_feature(path: Path | None) -> None:
    if path is None:
        pytest.skip(NO_CORPUS)
    text = path.read_text(encoding="utf-8")
    if verdicts()[path.name][1] is not None:
        pytest.skip("rejected by the grammar, like OpenSMTPD")
    config = parse_string(text, path.name)
    try:
        check_supported(config)
    except ConfigError as e:
        assert e.file == path.name
        assert 1 <= e.line <= len(text.splitlines())
        m = re.fullmatch(r"'(.+)' is not supported yet by mailrider", e.message)
        assert m is not None and m.group(1) in UNSUPPORTED


def test_file_02_rejected_at_line_6() -> None:
    path = CORPUS / "02-KirillPhilatov-Mail_server_setup.conf"
    if not path.is_file():
        pytest.skip(NO_CORPUS)
    with pytest.raises(ConfigError) as info:
        parse_string(path.read_text(encoding="utf-8"), path.name)
    assert str(info.value) == f"{path.name}:6: syntax error near '<'"


def test_corpus_details() -> None:
    """Corners of the corpus parse into what they say."""
    if not CORPUS.is_dir():
        pytest.skip(NO_CORPUS)

    def load(prefix: str) -> Config:
        (path,) = CORPUS.glob(prefix + "-*.conf")
        return parse_string(path.read_text(encoding="utf-8"), path.name)

    c04 = load("04")
    # macros holding several options, filter lists without commas
    tls25 = c04.listeners[0]
    assert (tls25.address, tls25.port, tls25.tls, tls25.auth_optional) == (
        "178.xx.xx.xx", 25, True, True,
    )
    assert tls25.filters == ["check_rdns", "check_fcrdns", "rspamd"]
    c10 = load("10")
    sock = c10.listeners[2]
    assert (sock.address, sock.filters) == ("socket", ["rspamd"])
    c11 = load("11")
    recv = c11.actions["RECV"]
    assert (recv.method, recv.arg, recv.junk) == ("maildir", "~/mail", True)
    c14 = load("14")
    assert c14.listeners[1].port == 465  # port submissions
