"""asyncio echo server for the benchmarks: ``data_received`` -> ``transport.write(data)``.

Usage: ``python asyncio_echo.py --port N [--uvloop] [--ssl-certfile C --ssl-keyfile K]``
(with the certificate: TLS, asyncio's ``ssl=`` on either loop). Listens on 127.0.0.1
only and exits with status 0 on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import ssl
from collections.abc import Callable
from typing import cast


class EchoProtocol(asyncio.Protocol):
    """Writes every chunk straight back."""

    transport: asyncio.Transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the Transport API without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


async def serve(port: int, context: ssl.SSLContext | None = None) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    server = await loop.create_server(EchoProtocol, "127.0.0.1", port, backlog=1024,
                                      ssl=context)
    await stop.wait()
    # Not ``wait_closed()``: from Python 3.12 on it also waits for open connections.
    server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop's event loop")
    parser.add_argument("--ssl-certfile", help="serve TLS with this certificate chain")
    parser.add_argument("--ssl-keyfile", help="and this private key")
    args = parser.parse_args()
    context = None
    if args.ssl_certfile:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(args.ssl_certfile, args.ssl_keyfile)
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if args.uvloop:
        import uvloop

        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(serve(args.port, context))


if __name__ == "__main__":
    main()
