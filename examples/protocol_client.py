"""Client for examples/protocol_server.py: 4-byte big-endian length + payload frames.

It frames by hand with ``struct`` (so it checks the wire format independently of
gevwire) and sends: one frame; three frames in one write; an empty frame; a 64 KiB frame
split across several writes (the first split inside the 4-byte header). It prints every
frame that comes back, checks that each equals what was sent, in order, and exits 0 on
success (1 on a mismatch, 2 if the server cannot be reached or stops answering).

Run::

    python examples/protocol_server.py --port 1834
    python examples/protocol_client.py --port 1834
"""

from __future__ import annotations

import argparse
import itertools
import signal
import socket
import struct
import sys
import time
from types import FrameType

PREFIX = struct.Struct(">I")


def frame(payload: bytes) -> bytes:
    """The bytes of one frame on the wire."""
    return PREFIX.pack(len(payload)) + payload


class FrameReader:
    """Cuts frames from a blocking socket (its timeout bounds every ``recv``)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = bytearray()

    def read(self) -> bytes:
        while True:
            if len(self.buffer) >= PREFIX.size:
                (length,) = PREFIX.unpack_from(self.buffer)
                end = PREFIX.size + length
                if len(self.buffer) >= end:
                    payload = bytes(self.buffer[PREFIX.size : end])
                    del self.buffer[:end]
                    return payload
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("server closed the connection")
            self.buffer += chunk


def show(payload: bytes) -> str:
    if len(payload) <= 40:
        return repr(payload)
    return f"<{len(payload)} bytes, starting {payload[:12]!r}>"


def run(host: str, port: int, timeout: float) -> int:
    big = bytes(range(256)) * 256  # 64 KiB
    batch = [b"one", b"two", b"three"]
    expected: list[bytes] = [b"hello, gevwire", *batch, b"", big]
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        print(f"connected to {host}:{port}")

        print("send: one frame")
        sock.sendall(frame(expected[0]))
        print("send: three frames in one write")
        sock.sendall(b"".join(frame(p) for p in batch))
        print("send: an empty frame")
        sock.sendall(frame(b""))
        wire = frame(big)
        cuts = [0, 2, 3, 1000, 40000, len(wire)]
        print(f"send: a {len(big)} byte frame in {len(cuts) - 1} writes "
              f"(split after bytes {', '.join(map(str, cuts[1:-1]))})")
        for start, end in itertools.pairwise(cuts):
            sock.sendall(wire[start:end])
            time.sleep(0.02)  # let each piece leave as its own segment

        reader = FrameReader(sock)
        failures = 0
        for i, want in enumerate(expected, 1):
            got = reader.read()
            status = "ok" if got == want else f"MISMATCH (sent {show(want)})"
            if got != want:
                failures += 1
            print(f"reply {i}: {show(got)} {status}")
    if failures:
        print(f"{failures} of {len(expected)} frames came back wrong")
        return 1
    print(f"all {len(expected)} frames echoed")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1834)
    parser.add_argument("--timeout", type=float, default=5.0, help="per socket operation (5)")
    args = parser.parse_args()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        return run(args.host, args.port, args.timeout)
    except OSError as exc:  # includes timeouts and ConnectionError
        print(f"error: {exc or type(exc).__name__}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
