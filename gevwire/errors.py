"""Every exception gevwire raises on purpose."""

from __future__ import annotations

__all__ = [
    "ConnectionClosed",
    "FrameError",
    "FrameTooLarge",
    "GevwireError",
    "WriteBufferFull",
]


class GevwireError(Exception):
    """Base class of gevwire's own errors."""


class ConnectionClosed(GevwireError):
    """The connection is closed (or its writing half is shut down): nothing can be sent."""


class WriteBufferFull(GevwireError):
    """A connection's unsent output passed its hard cap; the connection was closed."""


class FrameError(GevwireError, ValueError):
    """The peer sent bytes that are not a valid frame for the connection's codec."""


class FrameTooLarge(FrameError):
    """A frame's header announced more than the codec's ``max_frame_size``."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"frame of {size} bytes exceeds max_frame_size={limit}")
        self.size = size
        self.limit = limit
