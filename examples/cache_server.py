"""A cache in front of Redis: handlers that wait, without stalling the loop.

It speaks ``kv_server.py``'s protocol (one construct schema, one frame per message;
``kv_client.py`` works against it) plus one request, ``report``, and keeps its data in
a real Redis server:

- ``get`` / ``set`` / ``delete`` are ``async def`` routes that ``await`` Redis through
  ``redis.asyncio``: they run on gevwire's asyncio loop thread, so while one request
  waits for Redis the loop goes on serving every other connection;
- ``report key-prefix`` counts the keys under a prefix and their bytes with the
  *blocking* ``redis`` client (SCAN + STRLEN): a route registered with
  ``blocking=True``, so it runs on gevwire's thread pool;
- ``ping`` is a plain function: answered on the loop thread at once.

Replies leave in the order the requests came.  ``--max-pending 1`` (the default) also
runs each connection's requests one at a time, as Redis runs a client's commands: a
pipelined ``set`` then ``get`` reads what was set.  A larger cap lets one connection's
requests wait for Redis together (reading pauses at the cap); their replies still leave
in order, but their effects may land in any order.  ``--handler-timeout`` bounds each
request (``HandlerTimeout``: the connection is closed).  Other connections are served
meanwhile either way.

Run a Redis server, then this, then the client::

    redis-server --port 6379 --save ''
    python examples/cache_server.py --port 1836 --redis redis://127.0.0.1:6379/0
    python examples/kv_client.py --port 1836

It prints ``listening on HOST:PORT`` once it accepts, and stops on SIGTERM / SIGINT
after the replies in flight have been sent.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

import construct as c  # type: ignore[import-untyped]
import redis
import redis.asyncio

import gevwire

KIND = c.Enum(
    c.Int8ub,
    get=1,
    set=2,
    delete=3,
    ping=4,
    report=5,
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

log = logging.getLogger("cache_server")


def reply(kind: str, request: Any, value: bytes = b"") -> dict[str, Any]:
    """A reply to ``request``: same id and key."""
    return {"kind": kind, "id": request.id, "key": request.key, "value": value}


def make_router(redis_url: str) -> gevwire.Router:
    """The request handlers, over the Redis server at ``redis_url``."""
    router = gevwire.Router(key="kind")
    # One client each: the asyncio one lives on gevwire's asyncio loop (all coroutines
    # run there); the blocking one is thread-safe (a pool of connections).
    aio = redis.asyncio.Redis.from_url(redis_url)
    blocking = redis.Redis.from_url(redis_url)

    @router.on("get")
    async def get(conn: gevwire.Connection, msg: Any) -> dict[str, Any]:
        value = await aio.get(msg.key)
        if value is None:
            return reply("not_found", msg)
        return reply("value", msg, value if isinstance(value, bytes) else value.encode())

    @router.on("set")
    async def set_(conn: gevwire.Connection, msg: Any) -> dict[str, Any]:
        await aio.set(msg.key, msg.value)
        return reply("ok", msg)

    @router.on("delete")
    async def delete(conn: gevwire.Connection, msg: Any) -> dict[str, Any]:
        if await aio.delete(msg.key):
            return reply("ok", msg)
        return reply("not_found", msg)

    @router.on("report", blocking=True)
    def report(conn: gevwire.Connection, msg: Any) -> dict[str, Any]:
        pattern = msg.key.replace(b"\\", b"\\\\").replace(b"*", b"\\*") + b"*"
        keys = total = 0
        for key in blocking.scan_iter(match=pattern, count=1000):
            keys += 1
            total += int(blocking.strlen(key))
        return reply("value", msg, b"keys=%d bytes=%d" % (keys, total))

    @router.on("ping")
    def ping(conn: gevwire.Connection, msg: Any) -> dict[str, Any]:
        return reply("pong", msg, msg.value)

    @router.default
    def unexpected(conn: gevwire.Connection, msg: Any) -> dict[str, Any]:
        return reply("error", msg, f"unexpected message kind {msg.kind!s}".encode())

    @router.on_error
    def failed(conn: gevwire.Connection, error: BaseException) -> None:
        if isinstance(error, redis.RedisError):  # Redis is down or refused: say so, and
            log.warning("%r: redis: %s", conn, error)  # let the client retry
        gevwire.Handler.on_error(router, conn, error)

    return router


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1836)
    parser.add_argument("--loops", type=int, default=1)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0",
                        help="the Redis server's URL (redis://host:port/db)")
    parser.add_argument("--max-pending", type=int, default=1,
                        help="requests in flight per connection (1: one at a time)")
    parser.add_argument("--handler-timeout", type=float, default=10.0,
                        help="seconds a request may wait for Redis")
    parser.add_argument("--quiet", action="store_true", help="log warnings and errors only")
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(name)s %(message)s",
    )
    server = gevwire.Server(
        make_router(args.redis),
        address=f"{args.host}:{args.port}",
        loops=args.loops,
        codec=gevwire.Codec(MESSAGE),
        max_pending_per_connection=args.max_pending,
        handler_timeout=args.handler_timeout,
    )
    server.start()
    host, port = server.address[:2]
    print(f"listening on {host}:{port}", flush=True)
    server.run()


if __name__ == "__main__":
    main()
