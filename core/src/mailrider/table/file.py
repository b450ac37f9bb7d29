"""``file:`` tables: the OpenSMTPD table(5) text format.

Format, line by line:

- blank lines and lines whose first non-blank character is ``#`` are
  ignored (a ``#`` later in a line is data: passwords and commands may
  contain it); a comment line ``# @list`` makes the file a list whatever
  its lines look like;
- a *mapping* line is a key, then whitespace and/or one ``:``, then the
  value, which is the rest of the line, trimmed (``key value``,
  ``key: value``, ``key:value``); a key that is an IPv6 address or block,
  bare or in brackets (``[2001:db8::1] mx.example.org``), keeps its colons;
- a *list* line is a single item.

The first entry decides the kind: with a value the file is a mapping and
every line must have a value; without one it is a list and no line may have
one (unless ``# @list`` was given, which keeps whole lines as items).
aliases(5) files are mappings whose value is the target list text.

Mapping keys are lower-cased (lookup keys arrive lower-cased); duplicates
are an error. The same parser builds ``db:`` files (:mod:`makemap`).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

from mailrider.errors import ConfigError, TempFail
from mailrider.table.static import MemoryTable

#: a key ends at the first whitespace or colon
_KEY_END = re.compile(r"[\s:]")
#: what a bare IPv6 address or block may look like (checked properly after)
_V6_CHARS = re.compile(r"^[0-9A-Fa-f.]*:[0-9A-Fa-f:.]*(/[0-9]+)?$")


@dataclass(slots=True)
class ParsedTable:
    """The entries of a table file: ``kind`` is "list" or "mapping"."""

    kind: str
    #: (line number, key or item, value or None)
    entries: list[tuple[int, str, str | None]] = field(default_factory=list)

    def items(self) -> list[str]:
        return [key for _, key, _ in self.entries]

    def mapping(self) -> dict[str, str]:
        return {key: value or "" for _, key, value in self.entries}


def _split_line(line: str) -> tuple[str, str | None]:
    """(key, value or None) of one stripped, non-comment line."""
    if line.startswith("["):
        close = line.find("]")
        if close > 0:
            end = close + 1
            while end < len(line) and not line[end].isspace() and line[end] != ":":
                end += 1  # e.g. [2001:db8::]/32
            key, rest = line[:end], line[end:]
            return key, _value_of(rest)
    parts = line.split(None, 1)
    if _V6_CHARS.match(parts[0]) and _is_ipv6(parts[0]):
        return parts[0], _value_of(" " + parts[1]) if len(parts) > 1 else None
    m = _KEY_END.search(line)
    if m is None:
        return line, None
    return line[: m.start()], _value_of(line[m.start() :])


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Network(text, strict=False)
    except ValueError:
        return False
    return True


def _value_of(rest: str) -> str | None:
    """Drop the separator (``:``, or whitespace and an optional ``:``) before a value."""
    if rest.startswith(":"):
        value = rest[1:].strip()
    else:
        value = rest.strip()
        if value.startswith(":") and not value.lower().startswith(":include:"):
            value = value[1:].strip()
    return value or None


def parse_table_text(text: str, path: str = "<table>") -> ParsedTable:
    """Parse table(5) text; errors are ConfigError naming ``path:line``."""
    forced_list = False
    kind: str | None = None
    seen: dict[str, int] = {}
    entries: list[tuple[int, str, str | None]] = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            if line[1:].strip() == "@list":
                if entries and kind == "mapping":
                    raise ConfigError("'# @list' after mapping entries", path, lineno)
                forced_list = True
                kind = "list"
            continue
        if "\0" in line:
            raise ConfigError("NUL byte in table file", path, lineno)
        if forced_list:
            key, value = line, None
        else:
            key, value = _split_line(line)
            if not key:
                raise ConfigError(f"line has no key: {line!r}", path, lineno)
            if kind is None:
                kind = "mapping" if value is not None else "list"
            elif kind == "mapping" and value is None:
                raise ConfigError(f"key {key!r} has no value in a mapping table", path, lineno)
            elif kind == "list" and value is not None:
                raise ConfigError(
                    f"line has two fields in a list table (use '# @list' to keep "
                    f"whole lines): {line!r}",
                    path,
                    lineno,
                )
        if kind == "mapping":
            key = key.lower()
        low = key.lower()
        if low in seen:
            raise ConfigError(f"duplicate key {key!r} (first on line {seen[low]})", path, lineno)
        seen[low] = lineno
        entries.append((lineno, key, value))
    return ParsedTable(kind or "list", entries)


def read_table_file(path: str) -> ParsedTable:
    """Read and parse a table file; OSError and UnicodeError propagate."""
    with open(path, encoding="utf-8", errors="strict") as f:
        text = f.read()
    return parse_table_text(text, path)


class FileTable(MemoryTable):
    """A table(5) text file, read at start() and again on update()."""

    def __init__(self, name: str, path: str, delim: str = "+") -> None:
        super().__init__(name, delim)
        self.path = path
        self._loaded = False

    def _load(self) -> None:
        parsed = read_table_file(self.path)
        if parsed.kind == "mapping":
            self._set_contents(mapping=parsed.mapping())
        else:
            self._set_contents(items=parsed.items())
        self._loaded = True

    async def start(self) -> None:
        """Read the file; an unreadable or malformed file is a ConfigError."""
        try:
            self._load()
        except OSError as exc:
            raise ConfigError(
                f"table {self.name}: cannot read {self.path}: {exc.strerror or exc}"
            ) from None
        except UnicodeError:
            raise ConfigError(f"table {self.name}: {self.path} is not UTF-8 text") from None

    async def update(self) -> None:
        """Re-read the file; on any failure keep the old contents and raise TempFail."""
        try:
            self._load()
        except OSError as exc:
            raise TempFail(
                f"table {self.name}: cannot read {self.path}: {exc.strerror or exc}"
            ) from None
        except UnicodeError:
            raise TempFail(f"table {self.name}: {self.path} is not UTF-8 text") from None
        except ConfigError as exc:
            raise TempFail(f"table {self.name}: {exc}") from None

    def _ensure(self) -> None:
        if not self._loaded:
            try:
                self._load()
            except (OSError, UnicodeError, ConfigError) as exc:
                raise TempFail(f"table {self.name}: cannot load {self.path}: {exc}") from None

    async def check(self, service: str, key: str) -> bool:
        self._ensure()
        return await super().check(service, key)

    async def lookup(self, service: str, key: str) -> str | None:
        self._ensure()
        return await super().lookup(service, key)

    async def fetch(self, service: str) -> str | None:
        self._ensure()
        return await super().fetch(service)
