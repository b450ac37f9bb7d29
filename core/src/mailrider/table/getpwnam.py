"""``<getpwnam>``: the system's users, as a ``userinfo`` table.

``lookup(userinfo, name)`` answers ``uid:gid:home`` from the password
database; ``check(userinfo, name)`` says whether the user exists. Every
other service is "not found". The keys arrive lower-cased, so a system user
with capitals in its name cannot receive mail (as in OpenSMTPD).
"""

from __future__ import annotations

import pwd

from mailrider.table.base import Table


class GetpwnamTable(Table):
    services = frozenset({"userinfo"})

    def __init__(self, name: str = "getpwnam") -> None:
        super().__init__(name)

    @staticmethod
    def _entry(key: str) -> pwd.struct_passwd | None:
        if not key or "\0" in key or "/" in key:
            return None
        try:
            return pwd.getpwnam(key)
        except KeyError:
            return None

    async def check(self, service: str, key: str) -> bool:
        return service == "userinfo" and self._entry(key) is not None

    async def lookup(self, service: str, key: str) -> str | None:
        if service != "userinfo":
            return None
        pw = self._entry(key)
        if pw is None:
            return None
        return f"{pw.pw_uid}:{pw.pw_gid}:{pw.pw_dir}"
