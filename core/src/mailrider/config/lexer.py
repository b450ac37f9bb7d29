"""Tokenizer for ``smtpd.conf`` (docs/config.md §1).

Invariants:

- Every token carries the file and the line on which it *starts*; a ``\\``
  at the end of a line joins the next line but still counts it, so line
  numbers after a continuation stay exact.
- ``#`` starts a comment to the end of the line (outside quotes); like
  OpenSMTPD, a comment ending in ``\\`` swallows the next line too.
- Strings are quoted with ``"`` or ``'``; inside, a backslash escapes the
  quote character, a blank, or a newline (continuation); any other
  backslash is kept, so regular expressions such as ``'.*\\.dyn\\..*'``
  arrive unchanged. A bare newline inside quotes is dropped, as OpenSMTPD
  does, and the string goes on.
- An unquoted word starts with an ASCII letter, digit, ``_`` or ``:`` (so
  ``::`` and ``file:/path`` are words) and goes on over letters, digits and
  punctuation other than ``( ) { } < > ! = # ,``. Any other character is a
  token of its own, which the grammar then refuses -- hence "arguments not
  starting with a letter or digit must be quoted".
- ``$name`` at the start of a token expands the macro *and re-tokenizes
  its value* (so a macro may hold several words, even ``{ ... }``); the
  expanded tokens get the line of the ``$``. Values are not expanded again.
  Macros are looked up lazily, when the token is produced, so a macro is
  usable on the lines after its definition and not before.
- Newlines are tokens (statements end at a newline); the parser skips
  them inside ``{ }`` lists.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from mailrider.errors import ConfigError

#: token kinds besides the punctuation characters themselves
WORD = "word"  # unquoted word: may be a keyword
STRING = "string"  # quoted string: never a keyword
NL = "nl"
EOF = "eof"
#: "=>", written between a key and its value in a static table
ARROW = "=>"
#: single-character tokens the grammar knows
PUNCT = frozenset("{},=<>!")
#: characters that end an unquoted word (besides blanks and newlines)
_WORD_STOP = frozenset("(){}<>!=#,")
_ASCII_ALNUM = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
_MACRO_CHARS = _ASCII_ALNUM | {"_"}


@dataclass(frozen=True, slots=True)
class Token:
    kind: str  # WORD, STRING, NL, EOF, or the punctuation character itself
    value: str
    file: str
    line: int

    def describe(self) -> str:
        """How an error message names this token."""
        if self.kind == NL:
            return "end of line"
        if self.kind == EOF:
            return "end of file"
        return f"'{self.value}'"


def _word_char(c: str) -> bool:
    if c in _ASCII_ALNUM:
        return True
    # ASCII punctuation only: C's ispunct() in the "C" locale
    return c.isascii() and c.isprintable() and not c.isspace() and c not in _WORD_STOP


class Lexer:
    """Turns one file's text into tokens; ``macro`` resolves ``$name``."""

    def __init__(
        self,
        text: str,
        file: str,
        macro: Callable[[str], str | None],
        *,
        line: int = 1,
        expanding: bool = False,
    ) -> None:
        self._text = text
        self._pos = 0
        self.file = file
        self.line = line
        self._macro = macro
        # a macro value is never expanded again (no recursion, as OpenSMTPD)
        self._expanding = expanding

    def _error(self, message: str, line: int | None = None) -> ConfigError:
        return ConfigError(message, self.file, self.line if line is None else line)

    def _peek(self) -> str:
        """The next character, after swallowing backslash-newline pairs."""
        text = self._text
        while text.startswith("\\\n", self._pos) or text.startswith("\\\r\n", self._pos):
            self._pos += 2 if text[self._pos + 1] == "\n" else 3
            self.line += 1
        return text[self._pos] if self._pos < len(text) else ""

    def _take(self) -> str:
        c = self._peek()
        if c:
            self._pos += 1
        return c

    def tokens(self) -> Iterator[Token]:
        while True:
            c = self._peek()
            while c in (" ", "\t", "\r", "\f", "\v"):
                self._pos += 1
                c = self._peek()
            line = self.line
            if c == "":
                return
            if c == "#":
                # the comment runs to the newline, which stays a token; as in
                # OpenSMTPD a trailing backslash continues a comment too
                while (c := self._peek()) not in ("", "\n"):
                    self._pos += 1
                continue
            if c == "\n":
                self._pos += 1
                self.line += 1
                yield Token(NL, "\n", self.file, line)
                continue
            if c == "$" and not self._expanding:
                yield from self._expand(line)
                continue
            if c in ('"', "'"):
                self._pos += 1
                yield Token(STRING, self._quoted(c, line), self.file, line)
                continue
            if c in _ASCII_ALNUM or c in "_:":
                yield Token(WORD, self._word(), self.file, line)
                continue
            if c == "\0":
                raise self._error("NUL character in configuration")
            self._pos += 1
            if c == "=" and self._peek() == ">":
                # OpenSMTPD's ARROW: a table's key and value, as "="
                self._pos += 1
                yield Token(ARROW, "=>", self.file, line)
                continue
            # punctuation the grammar knows, or a stray character that the
            # parser will report as a syntax error near it
            yield Token(c, c, self.file, line)

    def _word(self) -> str:
        out: list[str] = []
        while True:
            c = self._peek()
            if not c or not _word_char(c):
                return "".join(out)
            out.append(c)
            self._pos += 1

    def _quoted(self, quote: str, start: int) -> str:
        out: list[str] = []
        text = self._text
        while True:
            if self._pos >= len(text):
                raise self._error("unterminated quoted string", start)
            c = text[self._pos]
            self._pos += 1
            if c == "\n":
                self.line += 1
                continue
            if c == "\0":
                raise self._error("NUL character in quoted string")
            if c == quote:
                return "".join(out)
            if c == "\\" and self._pos < len(text):
                nxt = text[self._pos]
                if nxt == "\n":
                    self._pos += 1
                    self.line += 1
                    continue
                if nxt == quote or nxt in " \t":
                    self._pos += 1
                    out.append(nxt)
                    continue
            out.append(c)

    def _expand(self, line: int) -> Iterator[Token]:
        self._pos += 1  # the "$"
        start = self._pos
        while self._pos < len(self._text) and self._text[self._pos] in _MACRO_CHARS:
            self._pos += 1
        name = self._text[start : self._pos]
        value = self._macro(name) if name else None
        if value is None:
            raise self._error(f"macro '{name}' not defined", line)
        sub = Lexer(value, self.file, self._macro, line=line, expanding=True)
        for tok in sub.tokens():
            # a value spanning lines still reports the line of the "$"
            yield Token(tok.kind, tok.value, self.file, line)
