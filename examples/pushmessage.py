"""gev's example/pushmessage: the server pushes to every client on a timer.

    python examples/pushmessage.py --port 1833 --every 1

``run_every`` runs on a loop thread and ``send``s to each connected client; clients
may also talk, and are echoed.
"""

from __future__ import annotations

import argparse
import logging
import signal
import time
from typing import Any

import gevwire


class Push(gevwire.Handler):
    """Keeps the set of connected clients for the timer to push to."""

    def __init__(self) -> None:
        self.clients: set[gevwire.Connection] = set()
        self.pushed = 0

    def on_connect(self, conn: gevwire.Connection) -> None:
        self.clients.add(conn)

    def on_message(self, conn: gevwire.Connection, frame: Any) -> Any:
        return frame

    def on_close(self, conn: gevwire.Connection) -> None:
        self.clients.discard(conn)

    def push(self) -> None:
        """Send the time to every client (runs on the server's first loop)."""
        message = f"server time {time.strftime('%H:%M:%S')}\n".encode()
        for conn in list(self.clients):
            try:
                conn.send(message)
                self.pushed += 1
            except gevwire.ConnectionClosed:
                self.clients.discard(conn)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=1833)
    parser.add_argument("--every", type=float, default=1.0, help="seconds between pushes")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    handler = Push()
    # loops=1: the timer and every connection share one thread, so the set needs no lock
    server = gevwire.Server(handler, address=f"127.0.0.1:{args.port}", loops=1)
    server.run_every(args.every, handler.push)
    signal.signal(signal.SIGTERM, lambda *_: server.stop())
    signal.signal(signal.SIGINT, lambda *_: server.stop())
    server.start()
    logging.info("listening on %s:%d", *server.address[:2])
    server.run()


if __name__ == "__main__":
    main()
