"""Example table backend: an in-memory map loaded from a ``key value`` file.

Run as ``table-example /path/to/map``. Every registered service answers from
the same map: check = key present, lookup = its value, fetch = the values in
turn, update = re-read the file.
"""

from __future__ import annotations

import itertools
import sys

from mailrider.table.sdk import Backend, BackendError, read_config, run


class MapBackend(Backend):
    services = ("alias", "domain", "credentials", "userinfo", "mailaddr", "source")
    blocking = False  # dictionary look-ups never block: run them on the loop

    def __init__(self, table_name: str, config_path: str | None) -> None:
        super().__init__(table_name, config_path)
        self.update()

    def update(self) -> None:
        if self.config_path is None:
            raise BackendError("no map file given")
        self.map = read_config(self.config_path)
        self.values = itertools.cycle(sorted(self.map.values()))

    def check(self, service: str, key: str) -> bool:
        return key in self.map

    def lookup(self, service: str, key: str) -> str | None:
        return self.map.get(key)

    def fetch(self, service: str) -> str | None:
        return next(self.values, None)


if __name__ == "__main__":
    sys.exit(run(MapBackend))
