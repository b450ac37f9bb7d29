"""mailrider.config: the ``smtpd.conf`` grammar, its model and its checks.

``parse_file``/``parse_string`` read a configuration into a :class:`Config`
(syntax and cross-reference errors raise ``ConfigError`` with file:line);
``check_supported`` refuses features this version cannot run yet;
``resolve_listener`` turns a ``listen on`` argument into addresses to bind.
"""

from __future__ import annotations

from mailrider.config.interfaces import resolve_listener
from mailrider.config.model import (
    Action,
    Ca,
    Condition,
    Config,
    Filter,
    Listener,
    Match,
    Pki,
    Table,
    Where,
)
from mailrider.config.parser import BUILTIN_TABLES, KEYWORDS, parse_file, parse_string
from mailrider.config.support import UNSUPPORTED, check_supported

__all__ = [
    "BUILTIN_TABLES",
    "KEYWORDS",
    "UNSUPPORTED",
    "Action",
    "Ca",
    "Condition",
    "Config",
    "Filter",
    "Listener",
    "Match",
    "Pki",
    "Table",
    "Where",
    "check_supported",
    "parse_file",
    "parse_string",
    "resolve_listener",
]
