"""klondike: the only process that will ever hold private keys.

TLS and DKIM come later (see the TLS issue); for now klondike is a real
process with its IPC channels, so the process layout and supervision are
final. It never touches the network.
"""

from __future__ import annotations

from typing import Any

from mailrider.ipc import messages as m
from mailrider.ipc.channel import Channel
from mailrider.proc import common


class Klondike(common.Process):
    role = "klondike"

    def stats(self) -> dict[str, int]:
        return {"klondike.sign": self.counters.get("klondike.sign", 0), **self.counters}

    async def handle(self, chan: Channel, msg: Any, fds: list[int]) -> Any:
        if isinstance(msg, m.Control):
            return await self.control(msg)
        raise ValueError(f"klondike: unexpected {m.type_name(msg)} from {chan.peer}")


PROCESS = Klondike
