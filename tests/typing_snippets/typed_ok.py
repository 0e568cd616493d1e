from __future__ import annotations

from typing import Any

import gevwire


class Echo(gevwire.Handler[bytes]):
    def on_message(self, conn: gevwire.Connection, frame: bytes) -> bytes:
        return frame


class Loose(gevwire.Handler):
    def on_message(self, conn: gevwire.Connection, frame: Any) -> Any:
        return frame


router = gevwire.Router(key="kind")


@router.on("ping")
def ping(conn: gevwire.Connection, frame: Any) -> dict[str, Any]:
    return {"kind": "pong"}


@router.on("query")
async def query(conn: gevwire.Connection, frame: Any) -> None:
    conn.send(b"x")


lines: gevwire.Router[bytes] = gevwire.Router(key=lambda frame: frame[:1])


@lines.on(b"a", blocking=True)
def a_line(conn: gevwire.Connection, frame: bytes) -> bytes:
    return frame


codec: gevwire.BaseCodec[bytes] = gevwire.RawCodec()
server = gevwire.Server(Echo(), codec=codec)
