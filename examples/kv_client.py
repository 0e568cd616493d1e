"""Client for examples/kv_server.py: SET / GET / DEL / PING, one at a time and pipelined.

It uses the server's schema (``MESSAGE`` from kv_server.py) through ``gevwire.Codec``
on a plain blocking socket: ``codec.encode(message)`` builds a request, and a decoder
cuts reply frames from a ``RingBuffer`` the socket's bytes are written into (codecs
never touch sockets, so a client can use them too). It prints each request and its
reply, then sends 100 SETs and 100 GETs in one write and matches the replies by id.
Exit status 0 when every reply is the expected one, 1 otherwise, 2 if the server cannot
be reached or stops answering.

Run::

    python examples/kv_server.py --port 1835
    python examples/kv_client.py --port 1835
"""

from __future__ import annotations

import argparse
import signal
import socket
import sys
from types import FrameType
from typing import Any

from kv_server import MESSAGE

import gevwire
from gevwire.ringbuffer import RingBuffer


class KVClient:
    """Request / reply over one connection; ids number the requests."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.codec = gevwire.Codec(MESSAGE)
        self.decoder = self.codec.decoder()
        self.ring = RingBuffer()
        self.next_id = 1

    def request(self, kind: str, key: bytes = b"", value: bytes = b"") -> bytes:
        """The encoded request (and uses up one id)."""
        msg = {"kind": kind, "id": self.next_id, "key": key, "value": value}
        self.next_id += 1
        return self.codec.encode(msg)

    def read_reply(self) -> Any:
        while (frame := self.decoder.decode(self.ring)) is None:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("server closed the connection")
            self.ring.write(chunk)
        return frame

    def call(self, kind: str, key: bytes = b"", value: bytes = b"") -> Any:
        request_id = self.next_id
        self.sock.sendall(self.request(kind, key, value))
        frame = self.read_reply()
        if frame.id != request_id:
            raise ValueError(f"reply to request {frame.id}, expected {request_id}")
        return frame


def describe(kind: str, key: bytes, value: bytes) -> str:
    text = kind.upper() if kind != "delete" else "DEL"
    if key:
        text += f" {key.decode()}"
    if kind == "set":
        text += f"={value.decode()!r}"
    elif value:
        text += f" {value.decode()!r}"
    return text


def run(host: str, port: int, timeout: float) -> int:
    # (kind, key, value, expected reply kind, expected reply value)
    steps: list[tuple[str, bytes, bytes, str, bytes]] = [
        ("ping", b"", b"hello", "pong", b"hello"),
        ("set", b"greeting", b"hello, world", "ok", b""),
        ("get", b"greeting", b"", "value", b"hello, world"),
        ("set", b"greeting", b"bonjour", "ok", b""),
        ("get", b"greeting", b"", "value", b"bonjour"),
        ("get", b"missing", b"", "not_found", b""),
        ("delete", b"greeting", b"", "ok", b""),
        ("delete", b"greeting", b"", "not_found", b""),
        ("get", b"greeting", b"", "not_found", b""),
    ]
    failures = 0
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        print(f"connected to {host}:{port}")
        client = KVClient(sock)
        for kind, key, value, want_kind, want_value in steps:
            frame = client.call(kind, key, value)
            got = str(frame.kind)
            shown = f"{got} {frame.value.decode()!r}" if frame.value else got
            ok = got == want_kind and frame.value == want_value
            if not ok:
                failures += 1
            print(f"{describe(kind, key, value)} -> {shown}" + ("" if ok else "  UNEXPECTED"))

        count = 100
        first_id = client.next_id
        batch = [client.request("set", b"key%d" % i, b"value%d" % i) for i in range(count)]
        batch += [client.request("get", b"key%d" % i) for i in range(count)]
        sock.sendall(b"".join(batch))
        replies = {}
        for _ in range(2 * count):
            frame = client.read_reply()
            replies[frame.id] = frame
        wrong = 0
        for i in range(count):
            set_reply = replies.get(first_id + i)
            get_reply = replies.get(first_id + count + i)
            if set_reply is None or set_reply.kind != "ok":
                wrong += 1
            if get_reply is None or get_reply.kind != "value" or (
                get_reply.value != b"value%d" % i
            ):
                wrong += 1
        print(f"pipelined: {count} SET + {count} GET in one write -> "
              f"{len(replies)} replies, {2 * count - wrong} as expected")
        failures += wrong
    if failures:
        print(f"{failures} unexpected replies")
        return 1
    print("all replies as expected")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1835)
    parser.add_argument("--timeout", type=float, default=5.0, help="per socket operation (5)")
    args = parser.parse_args()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        return run(args.host, args.port, args.timeout)
    except (OSError, ValueError, gevwire.FrameError) as exc:  # timeouts, resets, bad replies
        print(f"error: {exc or type(exc).__name__}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
