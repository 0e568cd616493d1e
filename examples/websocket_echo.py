"""WebSocket echo server: every message comes back as it was sent (text or binary).

    python examples/websocket_echo.py --port 8765      # --port 0 picks a free port

``GET /`` serves a small page whose script opens ``ws://<same host>/ws`` (``wss://`` when
served over TLS with ``--ssl-certfile``), sends a text
message (``?msg=...``, default ``hello``) and then a binary one, and shows what came
back: ``<pre id="log">`` gets one line per step (the first names the extensions the
browser agreed to: ``open (permessage-deflate)``) and ``document.title`` becomes
``echo: <text>`` once both echoes are in and the socket closed cleanly.  Any WebSocket
client works on ``/ws`` (``python -m websockets ws://127.0.0.1:8765/ws``).

Messages are compressed (permessage-deflate) with clients that offer it, unless
``--no-compression``.  Autobahn|Testsuite's fuzzingclient runs against this server in
``tests/test_autobahn.py``.

The server prints ``listening on HOST:PORT`` on stdout once it accepts connections, and
stops cleanly on SIGTERM / SIGINT (exit status 0).
"""

from __future__ import annotations

import argparse
import logging
import signal
from types import FrameType
from typing import Any

import gevwire
from gevwire.cli import add_ssl_arguments, ssl_server_options
from gevwire.codecs.websocket import (
    HttpRequest,
    HttpResponse,
    WebSocketApp,
    WebSocketHandler,
    websocket,
)

log = logging.getLogger("websocket_echo")

PAGE = """<!doctype html>
<html>
<head><meta charset="utf-8"><title>connecting</title></head>
<body>
<h1>gevwire WebSocket echo</h1>
<pre id="log"></pre>
<script>
const out = document.getElementById("log");
const show = (line) => { out.textContent += line + "\\n"; };
const text = new URLSearchParams(location.search).get("msg") || "hello";
const bytes = new TextEncoder().encode("binary:" + text);
let echoedText = null;
const scheme = location.protocol === "https:" ? "wss://" : "ws://";  // (TLS: --ssl-*)
const ws = new WebSocket(scheme + location.host + "/ws");
ws.binaryType = "arraybuffer";
ws.onopen = () => {
  show("open" + (ws.extensions ? " (" + ws.extensions + ")" : ""));
  ws.send(text);
};
ws.onmessage = (event) => {
  if (typeof event.data === "string") {
    echoedText = event.data;
    show("text: " + event.data);
    ws.send(bytes);
  } else {
    const got = new Uint8Array(event.data);
    const same = got.length === bytes.length && got.every((b, i) => b === bytes[i]);
    show("binary: " + (same ? "same " + got.length + " bytes" : "DIFFERENT"));
    ws.close(1000, "done");
  }
};
ws.onerror = () => show("error");
ws.onclose = (event) => {
  show("closed " + event.code + (event.wasClean ? " clean" : " unclean"));
  if (echoedText !== null && event.wasClean) { document.title = "echo: " + echoedText; }
};
</script>
</body>
</html>
"""


class Echo(WebSocketApp):
    """Echoes messages on ``/ws``; serves the page on ``/``."""

    def on_request(self, conn: gevwire.Connection, request: HttpRequest) -> HttpResponse | None:
        if request.path == "/" and request.method in ("GET", "HEAD"):  # HEAD: no body
            return HttpResponse(200, PAGE, content_type="text/html; charset=utf-8")
        return None  # 404

    def on_upgrade(self, conn: gevwire.Connection, request: HttpRequest) -> HttpResponse | None:
        if request.path != "/ws":
            return HttpResponse(404, "no WebSocket here: use /ws\n")
        return None

    def on_open(self, conn: gevwire.Connection, request: HttpRequest) -> Any:
        log.info("websocket open from %s:%s", *conn.peer_addr[:2])
        return None

    def on_message(self, conn: gevwire.Connection, message: str | bytes) -> Any:
        return message

    def on_close_frame(self, conn: gevwire.Connection, code: int, reason: str) -> None:
        log.info("close %d %r from %s:%s", code, reason, *conn.peer_addr[:2])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--loops", type=int, default=1)
    parser.add_argument("--max-message-size", type=int, default=1 << 20)
    parser.add_argument("--no-compression", action="store_true",
                        help="refuse permessage-deflate offers")
    parser.add_argument("--quiet", action="store_true", help="log warnings and errors only")
    add_ssl_arguments(parser)  # --ssl-certfile, --ssl-keyfile ... (wss://, https://)
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(name)s %(message)s",
    )

    server = gevwire.Server(
        WebSocketHandler(Echo()),
        address=f"{args.host}:{args.port}",
        loops=args.loops,
        codec=websocket(max_message_size=args.max_message_size,
                        compression=not args.no_compression),
        **ssl_server_options(parser, args),
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
