"""Length-prefixed echo server: the framed-echo benchmark target.

Each frame is a 4-byte big-endian length followed by that many payload bytes, declared
as ``Prefixed(Int32ub, GreedyBytes)``. The codec cuts frames and hands the handler the
payload (``bytes``); the handler returns it, and the codec adds the prefix again.

Run::

    python examples/framed_echo.py --port 1833          # --port 0 picks a free port

It prints ``listening on HOST:PORT`` on stdout once it accepts, and stops cleanly on
SIGTERM / SIGINT (exit status 0).
"""

from __future__ import annotations

import argparse
import logging
import signal
from types import FrameType
from typing import Any

import construct as c  # type: ignore[import-untyped]

import gevwire

FRAME = c.Prefixed(c.Int32ub, c.GreedyBytes)


class FramedEcho(gevwire.Handler):
    """Returns each payload; the codec frames the reply."""

    def on_message(self, conn: gevwire.Connection, frame: Any) -> Any:
        return frame


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1833)
    parser.add_argument("--loops", type=int, default=1)
    parser.add_argument("--max-frame-size", type=int, default=1 << 20)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")

    server = gevwire.Server(
        FramedEcho(),
        address=f"{args.host}:{args.port}",
        loops=args.loops,
        codec=gevwire.Codec(FRAME, max_frame_size=args.max_frame_size),
    )

    def on_signal(signum: int, frame: FrameType | None) -> None:
        server.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server.start()
    host, port = server.address[:2]
    print(f"listening on {host}:{port}", flush=True)
    server.run()


if __name__ == "__main__":
    main()
