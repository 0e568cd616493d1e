"""asyncio RESP server whose parsing is hiredis's C reader: the baseline of
``redis_bench.py``.

Usage: ``python asyncio_resp_hiredis.py --port N [--uvloop]``. Listens on 127.0.0.1 only
and exits with status 0 on SIGTERM or SIGINT.

Only the framing differs from ``examples/redis_server.py``: commands run on the same
``RedisStore`` and replies are encoded by the same RESP encoder, so the benchmark
compares gevwire's loop and Python RESP parser against asyncio and hiredis.  Each
``data_received`` feeds hiredis's ``Reader``, runs every whole command it yields and
sends all the replies with one ``transport.write``.  hiredis parses replies, not inline
commands, so lines that do not start with ``*`` (redis-benchmark's PING_INLINE) are
split here, the way Redis does.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any, cast

import hiredis

from gevwire.codecs.resp import RespCodec, RespError

REPO = Path(__file__).resolve().parent.parent.parent
MAX_INLINE = 64 << 10


def _load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "redis_server", REPO / "examples" / "redis_server.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["redis_server"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


example = _load_example()
STORE = example.RedisStore()
EXECUTE: Callable[[Any, list[bytes]], Any] = STORE.execute
ENCODE = RespCodec(commands=True).encode


class RespProtocol(asyncio.Protocol):
    """One connection: hiredis cuts commands, the store runs them."""

    transport: asyncio.Transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the Transport API without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        self.reader = hiredis.Reader()
        self.context = STORE.new_session()  # what the store's commands read (CLIENT ...)
        self.closing = False  # QUIT: close once this read's replies are written
        self.inline = b""  # an incomplete inline line

    def close(self) -> None:
        """The store's QUIT: close after the replies of this read."""
        self.closing = True

    def data_received(self, data: bytes) -> None:
        out: list[bytes] = []
        append = out.append
        try:
            if self.inline or (data[:1] != b"*" and not self.reader.has_data()):
                data = self._inline_commands(self.inline + data, out)
            if data:
                reader = self.reader
                reader.feed(data)
                while (command := reader.gets()) is not False:
                    if type(command) is not list or not command:
                        raise hiredis.ProtocolError("expected an array of bulk strings")
                    append(ENCODE(EXECUTE(self, command)))
                    if self.closing:
                        break
        except hiredis.ProtocolError as exc:
            append(ENCODE(RespError(f"ERR Protocol error: {exc}")))
            self.transport.write(b"".join(out))
            self.transport.close()
            return
        if out:
            self.transport.write(b"".join(out))
        if self.closing:
            self.transport.close()

    def _inline_commands(self, data: bytes, out: list[bytes]) -> bytes:
        """Run the inline commands at the start of ``data``; return the rest (from the
        first ``*``), keeping an incomplete line for the next read."""
        pos = 0
        while pos < len(data) and data[pos] != 42:  # not "*"
            end = data.find(b"\n", pos)
            if end < 0:
                if len(data) - pos > MAX_INLINE:
                    raise hiredis.ProtocolError("too big inline request")
                self.inline = data[pos:]
                return b""
            args = data[pos:end].split()
            if args:
                out.append(ENCODE(EXECUTE(self, args)))
                if self.closing:
                    return b""
            pos = end + 1
        self.inline = b""
        return data[pos:]


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    server = await loop.create_server(RespProtocol, "127.0.0.1", port, backlog=1024)

    async def expire() -> None:
        while True:
            await asyncio.sleep(0.1)
            STORE.expire_due()

    expiry = asyncio.ensure_future(expire())
    await stop.wait()
    expiry.cancel()
    server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop's event loop")
    args = parser.parse_args()
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if args.uvloop:
        import uvloop

        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(serve(args.port))


if __name__ == "__main__":
    main()
