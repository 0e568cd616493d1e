"""An in-memory key-value server: one construct schema, several message kinds, a Router.

Every message, request or reply, is one frame::

    MESSAGE = Prefixed(Int32ub, Struct(
        "kind"  / Enum(Int8ub, get=1, set=2, delete=3, ping=4,
                       value=0x81, ok=0x82, not_found=0x83, pong=0x84, error=0xFF),
        "id"    / Int32ub,                        # chosen by the client, copied to the reply
        "key"   / Prefixed(Int16ub, GreedyBytes), # binary-safe key (UTF-8 by convention)
        "value" / GreedyBytes,                    # the rest of the frame
    ))

Requests and their replies:

- ``get key`` → ``value`` (the value) or ``not_found``
- ``set key value`` → ``ok``
- ``delete key`` → ``ok`` if the key existed, else ``not_found``
- ``ping value`` → ``pong`` with the same value
- anything else → ``error`` with a message in ``value``

``gevwire.Router(key="kind")`` dispatches each frame by its kind; each handler returns
the reply as a dict, which the codec encodes. Keys and values are ``bytes`` (like Redis
keys), which also keeps the schema on gevwire's fast ``struct`` decoder. Each server
process has its own dict; with ``--loops`` above 1, handlers run in several threads,
and single dict operations are atomic in CPython.

Run the server, then the client in another shell::

    python examples/kv_server.py --port 1835          # --port 0 picks a free port
    python examples/kv_client.py --port 1835

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

KIND = c.Enum(
    c.Int8ub,
    get=1,
    set=2,
    delete=3,
    ping=4,
    value=0x81,
    ok=0x82,
    not_found=0x83,
    pong=0x84,
    error=0xFF,
)

MESSAGE = c.Prefixed(
    c.Int32ub,
    c.Struct(
        "kind" / KIND,
        "id" / c.Int32ub,
        "key" / c.Prefixed(c.Int16ub, c.GreedyBytes),
        "value" / c.GreedyBytes,
    ),
)

log = logging.getLogger("kv_server")


def reply(kind: str, request: Any, value: bytes = b"") -> dict[str, Any]:
    """A reply to ``request``: same id and key."""
    return {"kind": kind, "id": request.id, "key": request.key, "value": value}


def make_router(store: dict[bytes, bytes]) -> gevwire.Router:
    """The request handlers, over ``store``."""
    router = gevwire.Router(key="kind")

    @router.on("get")
    def get(conn: gevwire.Connection, msg: Any) -> dict[str, Any]:
        value = store.get(msg.key)
        if value is None:
            return reply("not_found", msg)
        return reply("value", msg, value)

    @router.on("set")
    def set_(conn: gevwire.Connection, msg: Any) -> dict[str, Any]:
        store[msg.key] = msg.value
        return reply("ok", msg)

    @router.on("delete")
    def delete(conn: gevwire.Connection, msg: Any) -> dict[str, Any]:
        if store.pop(msg.key, None) is None:
            return reply("not_found", msg)
        return reply("ok", msg)

    @router.on("ping")
    def ping(conn: gevwire.Connection, msg: Any) -> dict[str, Any]:
        return reply("pong", msg, msg.value)

    @router.default
    def unexpected(conn: gevwire.Connection, msg: Any) -> dict[str, Any]:
        return reply("error", msg, f"unexpected message kind {msg.kind!s}".encode())

    @router.on_connect
    def connected(conn: gevwire.Connection) -> None:
        log.info("connection from %s:%s", *conn.peer_addr[:2])

    @router.on_close
    def closed(conn: gevwire.Connection) -> None:
        log.info("closed %s:%s (%d keys stored)", *conn.peer_addr[:2], len(store))

    return router


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1835)
    parser.add_argument("--loops", type=int, default=1)
    parser.add_argument("--max-frame-size", type=int, default=1 << 20)
    parser.add_argument("--quiet", action="store_true", help="log warnings and errors only")
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(name)s %(message)s",
    )

    store: dict[bytes, bytes] = {}
    server = gevwire.Server(
        make_router(store),
        address=f"{args.host}:{args.port}",
        loops=args.loops,
        codec=gevwire.Codec(MESSAGE, max_frame_size=args.max_frame_size),
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
    log.info("stopped with %d keys", len(store))


if __name__ == "__main__":
    main()
