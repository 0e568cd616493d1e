"""The README's demo: an echo server, and a client that shows it working.

Starts a gevwire echo server on a free loopback port, connects several clients, sends
messages (one of them 1 MiB, written in pieces), pushes a message from another thread
with ``Connection.send``, and checks every byte that comes back.
"""

from __future__ import annotations

import socket
import sys
import threading
import time
from typing import Any

import gevwire


class Echo(gevwire.Handler):
    """Echoes every frame and counts connections."""

    def __init__(self) -> None:
        self.opened = 0
        self.closed = 0
        self._lock = threading.Lock()  # two loop threads update the counts
        self.connections: dict[Any, gevwire.Connection] = {}  # by the client's address

    def on_connect(self, conn: gevwire.Connection) -> None:
        with self._lock:  # also keeps the two loops' lines whole
            self.opened += 1
            self.connections[conn.peer_addr] = conn
            print(f"  server: connection from {conn.peer_addr[0]}:{conn.peer_addr[1]}")

    def on_message(self, conn: gevwire.Connection, frame: Any) -> Any:
        return frame

    def on_close(self, conn: gevwire.Connection) -> None:
        with self._lock:
            self.closed += 1


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    chunks = []
    while size:
        chunk = sock.recv(min(size, 1 << 16))
        if not chunk:
            raise ConnectionError("server closed early")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def main() -> int:
    handler = Echo()
    with gevwire.Server(handler, address="127.0.0.1:0", loops=2) as server:
        host, port = server.address[:2]
        print(f"gevwire echo server listening on {host}:{port} (2 event loops)")

        clients = [socket.create_connection((host, port), timeout=10) for _ in range(4)]
        for i, client in enumerate(clients):
            message = f"hello from client {i}".encode()
            client.sendall(message)
            reply = recv_exactly(client, len(message))
            print(f"  client {i}: sent {message!r}, got {reply!r}")
            assert reply == message

        big = bytes(range(256)) * 4096  # 1 MiB
        start = time.perf_counter()
        sender = threading.Thread(target=clients[0].sendall, args=(big,))
        sender.start()
        echoed = recv_exactly(clients[0], len(big))
        sender.join()
        took = (time.perf_counter() - start) * 1000
        assert echoed == big
        print(f"  client 0: 1 MiB echoed intact in {took:.1f} ms")

        deadline = time.monotonic() + 5
        while len(handler.connections) < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        pushed = b"pushed from another thread"
        # The loops run on_connect in their own order: find client 1's connection by address.
        handler.connections[clients[1].getsockname()].send(pushed)
        got = recv_exactly(clients[1], len(pushed))
        print(f"  client 1: received server push {got!r}")
        assert got == pushed

        for client in clients:
            client.close()
        while handler.closed < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        print(f"  server: {handler.opened} connections opened, {handler.closed} closed")
        assert handler.closed == 4
    print("demo OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
