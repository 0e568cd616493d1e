from __future__ import annotations

from typing import Any

import gevwire

router = gevwire.Router(key="kind")


@router.on("query")
def on_query(frame: Any) -> Any:  # no conn
    return frame


class Echo(gevwire.Handler[bytes]):
    def on_message(self, frame: bytes) -> bytes:  # no conn
        return frame


lines: gevwire.Router[bytes] = gevwire.Router(key="kind")


@lines.on("n")
def number(conn: gevwire.Connection, frame: int) -> int:  # frames are bytes
    return frame
