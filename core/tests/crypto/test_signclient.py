"""SignClient against the real klondike process class, over a socketpair."""

from __future__ import annotations

import asyncio
import base64
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from mailrider.config.model import Config
from mailrider.config.model import Pki as ConfigPki
from mailrider.crypto import delegate, libcrypto
from mailrider.crypto.signclient import SignClient, SignFailed
from mailrider.errors import ConfigError
from mailrider.ipc import messages as m
from mailrider.ipc.channel import Channel
from mailrider.proc import common
from mailrider.proc.klondike import Klondike
from pki_util import Pki


class Running:
    def __init__(self, proc: Klondike, loop: asyncio.AbstractEventLoop, sock: socket.socket,
                 control: Channel) -> None:
        self.proc, self.loop, self.sock, self.control = proc, loop, sock, control

    def ask(self, msg: object) -> object:
        return asyncio.run_coroutine_threadsafe(self.control.ask(msg), self.loop).result(10)


def _config(pkis: dict[str, Pki], names: list[str]) -> Config:
    config = Config()
    for n in names:
        config.pkis[n] = ConfigPki(n, cert=pkis[n].cert, key=pkis[n].key)
    config.pkis["nokey"] = ConfigPki("nokey", cert=pkis["rsa"].cert)  # client-only: skipped
    return config


@pytest.fixture
def klondike(pkis: dict[str, Pki]) -> Iterator[Running]:
    names = ["rsa", "p256"] if libcrypto.available() else ["rsa"]
    proc = Klondike(common.Options(statedir="/nonexistent"), _config(pkis, names))
    loop = asyncio.new_event_loop()
    pony_end, klondike_end = socket.socketpair()
    ctl_a, ctl_b = socket.socketpair()
    ready = threading.Event()
    holder: dict[str, Channel] = {}

    def run() -> None:
        asyncio.set_event_loop(loop)

        async def main() -> None:
            await proc.setup()
            proc.connect({"pony": klondike_end.detach(), "control": ctl_b.detach()})
            holder["control"] = Channel(ctl_a, "klondike")
            ready.set()
            await proc.stopping.wait()

        loop.run_until_complete(main())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(10)
    yield Running(proc, loop, pony_end, holder["control"])
    loop.call_soon_threadsafe(proc.stopping.set)
    thread.join(10)
    pony_end.close()


def test_sign_round_trip_and_stats(klondike: Running) -> None:
    keystore = klondike.proc.keys
    assert keystore is not None and set(keystore.names) == {"rsa", "p256"} & set(
        klondike.proc.config.pkis)
    client = SignClient(klondike.sock)
    h = keystore.names["rsa"]
    block = b"\x00" + b"\x17" * 255
    sig = client.sign(h, "rsa_priv_enc", block, 3)
    assert sig == keystore.sign(h, "rsa_priv_enc", block, 3)
    with pytest.raises(SignFailed, match="no key for this certificate"):
        client.sign("0" * 64, "rsa_priv_enc", block, 3)
    assert client.sign(h, "rsa_priv_enc", block, 3) == sig  # still in step after an error
    reply = klondike.ask(m.Control(command="stats"))
    assert isinstance(reply, m.ControlReply)
    counters = reply.data["counters"]
    assert counters["klondike.sign"] == 2
    assert counters["klondike.sign.errors"] == 1
    assert counters["klondike.keys"] == len(keystore)
    assert client.calls == 2 and client.failures == 1


def test_only_pony_may_ask_for_signatures(klondike: Running) -> None:
    keystore = klondike.proc.keys
    assert keystore is not None
    msg = m.Sign(cert_hash=keystore.names["rsa"], op="rsa_priv_enc",
                 data_b64=base64.b64encode(b"\x00" * 256).decode(), padding=3)
    # Sign from control is outside klondike's policy row: the channel is closed
    # before the frame is decoded, and klondike stops (the daemon goes down)
    asyncio.run_coroutine_threadsafe(klondike.control.ask(msg), klondike.loop)
    deadline = time.monotonic() + 10
    while not klondike.proc.stopping.is_set() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert klondike.proc.stopping.is_set()
    assert klondike.proc.peers["control"].closed
    assert klondike.proc.counters.get("klondike.sign", 0) == 0


@pytest.mark.skipif(not libcrypto.available(), reason=libcrypto.unavailable_reason())
def test_delegated_contexts_over_the_client(klondike: Running, pkis: dict[str, Pki]) -> None:
    client = SignClient(klondike.sock)
    for name in ("rsa", "p256"):
        ctx = delegate.delegated_context(pkis[name].cert, client.sign)
        assert delegate.self_test(ctx) == ["TLSv1_2", "TLSv1_3"]
    assert client.calls == 4


def test_threads_share_one_client(klondike: Running) -> None:
    keystore = klondike.proc.keys
    assert keystore is not None
    client = SignClient(klondike.sock)
    h = keystore.names["rsa"]
    blocks = [bytes([0, i]) + b"\x01" * 254 for i in range(8)]
    results: dict[int, bytes] = {}

    def work(i: int) -> None:
        results[i] = client.sign(h, "rsa_priv_enc", blocks[i], 3)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(results[i] == keystore.sign(h, "rsa_priv_enc", blocks[i], 3) for i in range(8))


def test_a_dead_klondike_breaks_the_client_for_good() -> None:
    a, b = socket.socketpair()
    b.close()
    client = SignClient(a)
    with pytest.raises(SignFailed, match="broken"):
        client.sign("x" * 64, "rsa_priv_enc", b"", 3)
    with pytest.raises(SignFailed, match="unusable"):
        client.sign("x" * 64, "rsa_priv_enc", b"", 3)


def test_a_bad_key_stops_klondike(pkis: dict[str, Pki]) -> None:
    config = Config()
    config.pkis["bad"] = ConfigPki("bad", cert=pkis["other"].cert, key=pkis["rsa"].key)
    proc = Klondike(common.Options(statedir="/nonexistent"), config)
    with pytest.raises(ConfigError, match="does not match"):
        asyncio.run(proc.setup())

