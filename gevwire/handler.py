"""``Handler``: the callbacks a server calls for each connection (gev's ``Handler``)."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from gevwire._typing import FrameT
from gevwire.errors import (
    FrameError,
    HandlerTimeout,
    MemoryBudgetExceeded,
    TLSError,
    WriteBufferFull,
)

if TYPE_CHECKING:
    from gevwire.connection import Connection

__all__ = ["BlockingCall", "Handler", "blocking", "handler_waits", "is_blocking"]

log = logging.getLogger("gevwire")

# Closes the peer brought about (and handler timeouts): a warning line each, no
# traceback (it would show only where the waiting was cut).
_PEER_ERRORS = (FrameError, WriteBufferFull, MemoryBudgetExceeded, TLSError, HandlerTimeout)


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


_BLOCKING_MARK = "__gevwire_blocking__"
F = TypeVar("F", bound=Callable[..., Any])


def blocking(fn: F) -> F:
    """Mark ``fn`` (an ``on_message``, a route) as blocking: it runs on the server's
    thread pool, never on a loop thread.  Returns ``fn`` itself, so it decorates
    functions and methods alike::

        class Reports(gevwire.Handler):
            @gevwire.blocking
            def on_message(self, conn, frame):
                return render_report(frame)   # takes a second; the loop goes on
    """
    setattr(fn, _BLOCKING_MARK, True)
    return fn


def is_blocking(fn: Any) -> bool:
    """True if ``fn`` was marked by :func:`blocking`."""
    return bool(getattr(fn, _BLOCKING_MARK, False))


def handler_waits(handler: Any) -> bool:
    """True if ``handler`` has a callback that waits (a coroutine function or a
    :func:`blocking` one): its connections then run those off the loop thread (see
    :mod:`gevwire.waiting`)."""
    may_wait = getattr(handler, "may_wait", None)  # a Router knows its routes
    if isinstance(may_wait, bool):
        return may_wait
    on_message = getattr(handler, "on_message", None)
    return (inspect.iscoroutinefunction(on_message) or is_blocking(on_message)
            or inspect.iscoroutinefunction(getattr(handler, "on_connect", None)))


class BlockingCall:
    """What a blocking route returns instead of running on the loop thread (see
    :meth:`gevwire.Router.on`): the call for the pipeline to make on the thread pool."""

    __slots__ = ("args", "fn")

    def __init__(self, fn: Callable[..., Any], *args: Any) -> None:
        self.fn = fn
        self.args = args
