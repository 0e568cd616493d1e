"""gev's example/maxconnection: refuse connections over a limit from on_connect.

    python examples/maxconnection.py --port 1833 --max 2

The handler counts open connections; one over the limit gets a short notice and a
``shutdown_write`` (FIN after the notice is written), then the server closes it when
the client closes its side.  (``Server(max_connections=N)`` does the same without a
notice: it accepts and closes at once.)
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from typing import Any

import gevwire


class LimitedEcho(gevwire.Handler):
    """Echoes for up to ``limit`` clients at a time; refuses the rest politely."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open = 0
        self._lock = threading.Lock()  # on_connect / on_close may run on several loops

    def on_connect(self, conn: gevwire.Connection) -> None:
        with self._lock:
            if self.open >= self.limit:
                conn.set("refused", True)
            else:
                self.open += 1
        if conn.get("refused"):
            conn.send(b"server busy: too many connections\n")
            conn.shutdown_write()

    def on_message(self, conn: gevwire.Connection, frame: Any) -> Any:
        if conn.get("refused"):
            return None
        return frame

    def on_close(self, conn: gevwire.Connection) -> None:
        if not conn.get("refused"):
            with self._lock:
                self.open -= 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=1833)
    parser.add_argument("--loops", type=int, default=1)
    parser.add_argument("--max", type=int, default=2, help="connections served at once")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    server = gevwire.Server(LimitedEcho(args.max), address=f"127.0.0.1:{args.port}",
                            loops=args.loops)
    signal.signal(signal.SIGTERM, lambda *_: server.stop())
    signal.signal(signal.SIGINT, lambda *_: server.stop())
    server.start()
    logging.info("listening on %s:%d", *server.address[:2])
    server.run()


if __name__ == "__main__":
    main()
