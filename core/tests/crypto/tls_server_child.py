"""A TLS server whose keys live in klondike (for the TLS and memory tests).

usage: python tls_server_child.py FD SERVERNAME=CERT ...
The first name is the default context; others are chosen by SNI. Prints
"port N", then serves one connection at a time: handshake, then answers
each line with "<version> <cipher> <delegated signatures so far>".
"""

from __future__ import annotations

import socket
import ssl
import sys

from mailrider.crypto import delegate
from mailrider.crypto.signclient import SignClient


def main(fd: int, specs: list[str]) -> None:
    client = SignClient(socket.socket(fileno=fd))
    contexts: dict[str, ssl.SSLContext] = {}
    for spec in specs:
        name, _, cert = spec.partition("=")
        contexts[name] = delegate.delegated_context(cert, client.sign)
        delegate.self_test(contexts[name])
    default = contexts[specs[0].partition("=")[0]]

    def pick(obj: ssl.SSLObject | ssl.SSLSocket, name: str | None, _: ssl.SSLContext) -> None:
        if name in contexts:
            obj.context = contexts[name]

    for ctx in contexts.values():
        ctx.sni_callback = pick
    listener = socket.create_server(("127.0.0.1", 0))
    print("port", listener.getsockname()[1], flush=True)
    while True:
        conn, _ = listener.accept()
        try:
            with default.wrap_socket(conn, server_side=True) as tls:
                f = tls.makefile("rwb")
                for line in f:
                    if line.strip() == b"quit":
                        return
                    cipher = tls.cipher()
                    f.write(f"{tls.version()} {cipher[0] if cipher else '-'} "
                            f"{client.calls}\n".encode())
                    f.flush()
        except (ssl.SSLError, OSError) as exc:
            print("error", exc, file=sys.stderr, flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2:])
