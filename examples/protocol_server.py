"""A custom binary protocol, declared once: 4-byte big-endian length + payload (gev's
example/protocol).

The frame is declared with construct as ``Prefixed(Int32ub, GreedyBytes)``; gevwire's
``Codec`` cuts frames from the byte stream however they arrive (several in one read, one
across many reads), rejects a length over ``--max-frame-size`` from its header, and hands
``on_message`` the payload as ``bytes``. The reply is a payload too: the codec adds the
length prefix. This server echoes every frame.

Run the server, then the client in another shell::

    python examples/protocol_server.py --port 1834      # --port 0 picks a free port
    python examples/protocol_client.py --port 1834

The server prints ``listening on HOST:PORT`` on stdout once it accepts connections, and
stops cleanly on SIGTERM / SIGINT (exit status 0).
"""

from __future__ import annotations

import argparse
import logging
import signal
from types import FrameType
from typing import Any

import construct as c  # type: ignore[import-untyped]

import gevwire

#: One frame: a 4-byte big-endian length, then that many payload bytes.
FRAME = c.Prefixed(c.Int32ub, c.GreedyBytes)

log = logging.getLogger("protocol_server")


class FrameEcho(gevwire.Handler):
    """Sends each frame's payload back as a frame of its own."""

    def on_connect(self, conn: gevwire.Connection) -> None:
        log.info("connection from %s:%s", *conn.peer_addr[:2])

    def on_message(self, conn: gevwire.Connection, frame: Any) -> Any:
        payload: bytes = frame
        log.info("frame of %d bytes from %s:%s", len(payload), *conn.peer_addr[:2])
        return payload

    def on_close(self, conn: gevwire.Connection) -> None:
        log.info("closed %s:%s", *conn.peer_addr[:2])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1834)
    parser.add_argument("--loops", type=int, default=1)
    parser.add_argument("--max-frame-size", type=int, default=1 << 20)
    parser.add_argument("--quiet", action="store_true", help="log warnings and errors only")
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(name)s %(message)s",
    )

    server = gevwire.Server(
        FrameEcho(),
        address=f"{args.host}:{args.port}",
        loops=args.loops,
        codec=gevwire.Codec(FRAME, max_frame_size=args.max_frame_size),
    )

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("%s: stopping", signal.Signals(signum).name)
        server.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server.start()
    host, port = server.address[:2]
    print(f"listening on {host}:{port}", flush=True)
    server.run()
    log.info("stopped")


if __name__ == "__main__":
    main()
