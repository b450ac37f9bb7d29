"""IPC between mailrider processes: framed JSON messages with fd passing."""

from mailrider.ipc.channel import Channel, ChannelClosed, RemoteError

__all__ = ["Channel", "ChannelClosed", "RemoteError"]
