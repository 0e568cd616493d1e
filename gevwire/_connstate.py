"""A connection's states (:class:`ConnState`), shared by the connection and its
backend's I/O object (see :mod:`gevwire.connection`)."""

from __future__ import annotations

import enum
import threading

__all__ = ["ConnState"]


class ConnState(enum.IntEnum):
    """Where a connection is in its life (``conn.state``), in the order it goes.

    Each state may go to any later one, never back; only a connection's loop thread
    moves it, except ``shutdown_write`` from another thread (OPEN → WRITE_SHUTTING,
    under a lock that every move out of OPEN takes).  Reading from the peer goes on
    up to WRITE_SHUT; ``send`` works only while OPEN.
    """

    #: Reading and writing.
    OPEN = 0
    #: ``shutdown_write()`` was asked: FIN once every queued byte is written.
    WRITE_SHUTTING = 1
    #: FIN sent; reading goes on until the peer's EOF.
    WRITE_SHUT = 2
    #: Closing: reading stopped, unsent output draining (at most ``close_timeout``).
    FLUSHING = 3
    #: FIN sent after the last reply while the peer was still sending: its bytes are
    #: discarded until its EOF (at most ``linger_timeout``), so no RST destroys replies.
    LINGERING = 4
    #: The fd is closed and ``on_close`` has run.
    CLOSED = 5

    def __str__(self) -> str:
        return self.name.lower().replace("_", "-")


_OPEN = ConnState.OPEN
_WRITE_SHUTTING = ConnState.WRITE_SHUTTING
_WRITE_SHUT = ConnState.WRITE_SHUT
_FLUSHING = ConnState.FLUSHING
_LINGERING = ConnState.LINGERING
_CLOSED = ConnState.CLOSED
# Taken by every move out of OPEN: shutdown_write() may make one from any thread.
_STATE_LOCK = threading.Lock()
