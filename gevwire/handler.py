"""``Handler``: the callbacks a server calls for each connection (gev's ``Handler``)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, Generic

from gevwire._typing import FrameT
from gevwire.errors import FrameError, HandlerTimeout, MemoryBudgetExceeded, WriteBufferFull

if TYPE_CHECKING:
    from gevwire.connection import Connection

__all__ = ["Handler"]

log = logging.getLogger("gevwire")

# Closes the peer brought about (and handler timeouts): a warning line each, no
# traceback (it would show only where the waiting was cut).
_PEER_ERRORS = (FrameError, WriteBufferFull, MemoryBudgetExceeded, HandlerTimeout)


class Handler(Generic[FrameT]):
    """Subclass and override what you need; every callback runs on the connection's loop.

    Generic in the frames it takes: ``class Echo(gevwire.Handler[bytes])`` has type
    checkers hold its ``on_message`` to ``(conn, frame: bytes)`` (unparameterised, the
    frame is ``Any``).

    Callbacks must not block: a loop serves all of its connections in one thread.  A
    handler that waits declares it: ``async def on_message`` (and ``on_connect``) run on
    an asyncio loop, an ``on_message`` marked :func:`gevwire.blocking` on a thread pool
    (see :mod:`gevwire.waiting`); replies still leave in frame order.
    """

    def on_connect(self, conn: Connection) -> Awaitable[None] | None:
        """A connection was accepted (an ``async def`` one: frames wait until it ends)."""

    def on_message(self, conn: Connection, frame: FrameT) -> Any:
        """A whole frame arrived; a non-None return value is encoded and sent back."""
        return None

    def on_close(self, conn: Connection) -> None:
        """The connection closed (called exactly once, after the fd is closed)."""

    def on_writable_changed(self, conn: Connection, writable: bool) -> None:
        """Unsent output passed ``write_high_water`` (``writable`` False: reading from
        the peer pauses too) or drained again (True), as asyncio's ``pause_writing`` /
        ``resume_writing``: a handler that streams large replies stops producing
        between the two.  Nothing is lost by ignoring it: ``max_write_buffer`` still
        bounds what is queued."""

    def on_error(self, conn: Connection, error: BaseException) -> None:
        """A frame was malformed or a callback raised: log it and close the connection.

        A non-fatal :class:`~gevwire.FrameError` (the codec skipped just that frame) is
        logged as a warning and the connection stays open.  What the peer caused (bad
        frames, output past ``max_write_buffer`` because it does not read, the server's
        memory budget) is a one-line warning; anything else is logged with its
        traceback.
        """
        if isinstance(error, _PEER_ERRORS) and getattr(error, "fatal", True):
            log.warning("closing %r: %s", conn, error)  # the peer's fault: no traceback
            conn.close()
        elif getattr(error, "fatal", True):
            log.error("closing %r after error", conn, exc_info=error)
            conn.close()
        else:
            log.warning("%r: %s", conn, error)
