"""Errors the SMTP machines (server and client) raise to their application."""

from __future__ import annotations

from mailrider.errors import MailriderError


class LocalProtocolError(MailriderError):
    """The application used the machine wrongly (e.g. answered no question)."""
