"""Length-prefixed echo whose handler awaits before replying (the "awaiting" benchmark).

The handler is an ``async def``: gevwire runs it on its asyncio loop thread and sends
the reply in frame order.  ``--await trivial`` awaits a coroutine that returns at once;
``--await sleep0`` awaits ``asyncio.sleep(0)`` (one trip through the asyncio loop).

Usage: ``python awaiting_gevwire.py --port N --await trivial|sleep0``.  Listens on
127.0.0.1 only and exits with status 0 on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from types import FrameType
from typing import Any

import construct as c  # type: ignore[import-untyped]

import gevwire

FRAME = c.Prefixed(c.Int32ub, c.GreedyBytes)


async def trivial(frame: bytes) -> bytes:
    return frame


class AwaitTrivial(gevwire.Handler):
    async def on_message(self, conn: gevwire.Connection, frame: Any) -> Any:
        return await trivial(frame)


class AwaitSleep0(gevwire.Handler):
    async def on_message(self, conn: gevwire.Connection, frame: Any) -> Any:
        await asyncio.sleep(0)
        return frame


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--await", dest="mode", choices=("trivial", "sleep0"),
                        required=True)
    args = parser.parse_args()
    handler = AwaitTrivial() if args.mode == "trivial" else AwaitSleep0()
    server = gevwire.Server(handler, address=f"127.0.0.1:{args.port}",
                            codec=gevwire.Codec(FRAME, max_frame_size=1 << 20))

    def on_signal(signum: int, frame: FrameType | None) -> None:
        server.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server.run()


if __name__ == "__main__":
    main()
