"""Raw echo server: every byte received is sent back (the benchmark target).

    python examples/echo.py --port 1833 --loops 1
    python examples/echo.py --port 1833 --workers 4   # 4 processes sharing the port
"""

from __future__ import annotations

import argparse
import logging
import signal
from typing import Any

import gevwire
from gevwire.cli import add_ssl_arguments, ssl_server_options


class Echo(gevwire.Handler):
    """Returns each frame; with the raw codec a frame is whatever one read brought."""

    def on_message(self, conn: gevwire.Connection, frame: Any) -> Any:
        return frame


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1833)
    parser.add_argument("--loops", type=int, default=1)
    parser.add_argument("--workers", type=int, default=1,
                        help="processes, each with its own SO_REUSEPORT listener")
    parser.add_argument("--reuse-port", action="store_true")
    add_ssl_arguments(parser)  # --ssl-certfile, --ssl-keyfile ... (as uvicorn's)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s [%(process)d] %(message)s")

    server = gevwire.Server(
        Echo(), address=f"{args.host}:{args.port}", loops=args.loops, workers=args.workers,
        reuse_port=args.reuse_port, **ssl_server_options(parser, args),
    )

    def on_signal(signum: int, frame: Any) -> None:
        server.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server.run()


if __name__ == "__main__":
    main()
