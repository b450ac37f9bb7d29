"""A tiny, deterministic backend for the transcripts of core/tests/table/transcripts.

lookup alias: root -> admin@example.org, broken -> error with a message,
crash -> an exception (answered "internal error"), anything else not found;
check domain: example.org is found; fetch source: 192.0.2.1, 192.0.2.2 in
turn; update: ok. Everything runs on the loop, so replies keep the order of
the requests.
"""

from __future__ import annotations

import itertools
import sys

from mailrider.table.sdk import Backend, BackendError, run


class TranscriptBackend(Backend):
    services = ("alias", "domain", "source")
    blocking = False

    def __init__(self, table_name: str, config_path: str | None) -> None:
        super().__init__(table_name, config_path)
        self.sources = itertools.cycle(["192.0.2.1", "192.0.2.2"])

    def check(self, service: str, key: str) -> bool:
        return key == "example.org"

    def lookup(self, service: str, key: str) -> str | None:
        if key == "broken":
            raise BackendError("database is down")
        if key == "crash":
            raise RuntimeError("password=hunter2")
        return "admin@example.org" if key == "root" else None

    def fetch(self, service: str) -> str | None:
        return next(self.sources)

    def update(self) -> None:
        return None


if __name__ == "__main__":
    sys.exit(run(TranscriptBackend))
