"""gevwire: fast non-blocking TCP servers in the reactor style of Go's gev."""

from typing import Any

from gevwire.client import Client
from gevwire.codec import BaseCodec, Codec, Decoder, RawCodec
from gevwire.connection import Connection, ConnectionOptions
from gevwire.errors import (
    ConnectionClosed,
    DecoderContractError,
    EncodeError,
    FrameError,
    FrameTimeout,
    FrameTooLarge,
    GevwireError,
    HandlerTimeout,
    MemoryBudgetExceeded,
    ProxyHeaderTimeout,
    RoutingError,
    TLSError,
    TLSHandshakeError,
    TLSHandshakeTimeout,
    WriteBufferFull,
)
from gevwire.handler import Handler, blocking
from gevwire.loop import EventLoop
from gevwire.ringbuffer import BufferPool, RingBuffer
from gevwire.router import Router
from gevwire.server import Server
from gevwire.timers import TimerHandle
from gevwire.tls import TLSSession
from gevwire.waiting import Offloader

__all__ = [
    "BaseCodec",
    "BufferPool",
    "Client",
    "Codec",
    "Connection",
    "ConnectionClosed",
    "ConnectionOptions",
    "Decoder",
    "DecoderContractError",
    "EncodeError",
    "EventLoop",
    "FrameError",
    "FrameTimeout",
    "FrameTooLarge",
    "GevwireError",
    "Handler",
    "HandlerTimeout",
    "MemoryBudgetExceeded",
    "Offloader",
    "ProxyHeaderTimeout",
    "RawCodec",
    "RingBuffer",
    "Router",
    "RoutingError",
    "Server",
    "TLSError",
    "TLSHandshakeError",
    "TLSHandshakeTimeout",
    "TLSSession",
    "TimerHandle",
    "WriteBufferFull",
    "blocking",
]

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # ``gevwire.codecs`` after a bare ``import gevwire`` (as the README writes it), without
    # importing every codec when gevwire is imported.
    if name == "codecs":
        import importlib

        return importlib.import_module("gevwire.codecs")
    raise AttributeError(f"module 'gevwire' has no attribute {name!r}")
