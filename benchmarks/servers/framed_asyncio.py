"""Length-prefixed echo on asyncio with hand-written framing (the framed baseline).

Each frame is a 4-byte big-endian length + payload. ``data_received`` cuts every whole
frame with ``struct.unpack_from``, slices the payload out as ``bytes`` (what a handler
would get), re-adds the prefix, and sends all replies of that call in one
``transport.write``. Bytes of an incomplete frame wait in a ``bytearray``. When that
buffer is empty, frames are cut straight from the received ``bytes`` (no copy into the
buffer), the obvious shortcut a careful hand-written protocol takes. A length over 1 MiB
closes the connection (the same limit as gevwire's default ``max_frame_size``).

``--await trivial|sleep0``: each frame's reply comes from a task that awaits first (the
"awaiting" benchmark's baseline).

Usage: ``python framed_asyncio.py --port N [--uvloop] [--await MODE]``. Listens on
127.0.0.1 only and exits with status 0 on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import struct
from collections.abc import Callable
from typing import cast

MAX_FRAME = 1 << 20
_PREFIX = struct.Struct(">I")


class FramedEchoProtocol(asyncio.Protocol):
    """Echoes each length-prefixed frame, all replies of one read in one write."""

    transport: asyncio.Transport

    def __init__(self) -> None:
        self.buffer = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the Transport API without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        buf = self.buffer
        if buf:
            buf += data
            src: bytes | bytearray = buf
        else:
            src = data
        unpack_from = _PREFIX.unpack_from
        pack = _PREFIX.pack
        replies: list[bytes] = []
        pos = 0
        n = len(src)
        with memoryview(src) as view:  # released before the bytearray is resized
            while n - pos >= 4:
                (length,) = unpack_from(view, pos)
                if length > MAX_FRAME:
                    self.transport.close()
                    return
                end = pos + 4 + length
                if end > n:
                    break
                payload = view[pos + 4 : end].tobytes()  # the frame a handler would get
                replies.append(pack(len(payload)))
                replies.append(payload)
                pos = end
        if src is buf:
            del buf[:pos]
        elif pos < n:
            buf += memoryview(data)[pos:]
        if replies:
            self.transport.write(b"".join(replies))


async def _trivial(payload: bytes) -> bytes:
    return payload


class AwaitingEchoProtocol(FramedEchoProtocol):
    """``--await``: each frame's reply comes from a task (``create_task`` per frame, as
    an asyncio server whose handler awaits does it), written when the task ends."""

    sleep0 = False

    def data_received(self, data: bytes) -> None:
        buf = self.buffer
        if buf:
            buf += data
            src: bytes | bytearray = buf
        else:
            src = data
        unpack_from = _PREFIX.unpack_from
        create_task = asyncio.get_running_loop().create_task
        pos = 0
        n = len(src)
        with memoryview(src) as view:
            while n - pos >= 4:
                (length,) = unpack_from(view, pos)
                if length > MAX_FRAME:
                    self.transport.close()
                    return
                end = pos + 4 + length
                if end > n:
                    break
                create_task(self.answer(view[pos + 4 : end].tobytes()))
                pos = end
        if src is buf:
            del buf[:pos]
        elif pos < n:
            buf += memoryview(data)[pos:]

    async def answer(self, payload: bytes) -> None:
        if self.sleep0:
            await asyncio.sleep(0)
        else:
            payload = await _trivial(payload)
        self.transport.write(_PREFIX.pack(len(payload)) + payload)


class Sleep0EchoProtocol(AwaitingEchoProtocol):
    sleep0 = True


async def serve(port: int, mode: str = "none") -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    protocol = {"none": FramedEchoProtocol, "trivial": AwaitingEchoProtocol,
                "sleep0": Sleep0EchoProtocol}[mode]
    server = await loop.create_server(protocol, "127.0.0.1", port, backlog=1024)
    await stop.wait()
    # Not ``wait_closed()``: from Python 3.12 on it also waits for open connections.
    server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop's event loop")
    parser.add_argument("--await", dest="mode", choices=("none", "trivial", "sleep0"),
                        default="none", help="reply from a task per frame that awaits")
    args = parser.parse_args()
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if args.uvloop:
        import uvloop

        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(serve(args.port, args.mode))


if __name__ == "__main__":
    main()
