"""gevwire: fast non-blocking TCP servers in the reactor style of Go's gev."""

from gevwire.codec import BaseCodec, Decoder, RawCodec
from gevwire.connection import Connection, ConnectionOptions
from gevwire.errors import (
    ConnectionClosed,
    FrameError,
    FrameTooLarge,
    GevwireError,
    WriteBufferFull,
)
from gevwire.handler import Handler
from gevwire.loop import EventLoop
from gevwire.ringbuffer import BufferPool, RingBuffer
from gevwire.server import Server
from gevwire.timers import TimerHandle

__all__ = [
    "BaseCodec",
    "BufferPool",
    "Connection",
    "ConnectionClosed",
    "ConnectionOptions",
    "Decoder",
    "EventLoop",
    "FrameError",
    "FrameTooLarge",
    "GevwireError",
    "Handler",
    "RawCodec",
    "RingBuffer",
    "Server",
    "TimerHandle",
    "WriteBufferFull",
]

__version__ = "0.1.0"
