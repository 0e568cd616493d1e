"""``Handler``: the callbacks a server calls for each connection (gev's ``Handler``)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from gevwire.errors import FrameError, MemoryBudgetExceeded, TLSError, WriteBufferFull

if TYPE_CHECKING:
    from gevwire.connection import Connection

__all__ = ["Handler"]

log = logging.getLogger("gevwire")

# Closes the peer brought about: a warning line each, no traceback.
_PEER_ERRORS = (FrameError, WriteBufferFull, MemoryBudgetExceeded, TLSError)


class Handler:
    """Subclass and override what you need; every callback runs on the connection's loop.

    Callbacks must not block: a loop serves all of its connections in one thread.
    """

    def on_connect(self, conn: Connection) -> None:
        """A connection was accepted."""

    def on_message(self, conn: Connection, frame: Any) -> Any:
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
