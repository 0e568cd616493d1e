"""Every exception gevwire raises on purpose."""

from __future__ import annotations

__all__ = [
    "ConnectionClosed",
    "DecoderContractError",
    "EncodeError",
    "FrameError",
    "FrameTooLarge",
    "GevwireError",
    "HandlerTimeout",
    "MemoryBudgetExceeded",
    "ProxyHeaderTimeout",
    "RoutingError",
    "TLSError",
    "TLSHandshakeError",
    "TLSHandshakeTimeout",
    "WriteBufferFull",
]


class GevwireError(Exception):
    """Base class of gevwire's own errors."""


class ConnectionClosed(GevwireError):
    """The connection is closed (or its writing half is shut down): nothing can be sent."""


class WriteBufferFull(GevwireError):
    """A connection's unsent output passed its hard cap; the connection was closed."""


class HandlerTimeout(GevwireError, TimeoutError):
    """A frame's handler (``async`` or blocking) took longer than ``handler_timeout``:
    a coroutine was cancelled, a thread's late result is dropped.  The default
    ``on_error`` closes the connection (its reply will never come)."""

    def __init__(self, timeout: float) -> None:
        super().__init__(f"handler took longer than handler_timeout={timeout:g}s")
        self.timeout = timeout


class MemoryBudgetExceeded(GevwireError):
    """The server's buffers passed ``buffered_hard_limit``: this connection, among those
    holding the most, was closed (see ``Server(max_buffered_bytes=...)``)."""


class FrameError(GevwireError, ValueError):
    """The peer sent bytes that are not a valid frame for the connection's codec.

    ``fatal`` is True when the stream cannot be resynchronised (the connection is
    closed by the default ``on_error``); False when the codec skipped exactly the bad
    frame and goes on with the next one (e.g. an oversized frame in discard mode).
    """

    fatal: bool = True


class FrameTooLarge(FrameError):
    """A frame's header announced more than the codec's ``max_frame_size``."""

    def __init__(self, size: int, limit: int, *, fatal: bool = True) -> None:
        what = "at least " if size < 0 else ""
        super().__init__(
            f"frame of {what}{abs(size)} bytes exceeds max_frame_size={limit}"
            + ("" if fatal else " (discarded)")
        )
        self.size = size
        self.limit = limit
        self.fatal = fatal


class FrameTimeout(FrameError):
    """A frame was started but not completed within the server's ``frame_timeout``."""

    def __init__(self, timeout: float, buffered: int) -> None:
        super().__init__(
            f"frame incomplete after {timeout:g}s ({buffered} bytes buffered; frame_timeout)"
        )
        self.timeout = timeout
        self.buffered = buffered


class ProxyHeaderTimeout(FrameTimeout):
    """A PROXY protocol header was not complete within ``proxy_timeout`` of the connect
    (a peer that trickles it, or is no proxy at all)."""

    def __init__(self, timeout: float, buffered: int) -> None:
        FrameError.__init__(
            self, f"PROXY header incomplete after {timeout:g}s ({buffered} bytes "
                  "buffered; proxy_timeout)")
        self.timeout = timeout
        self.buffered = buffered


class EncodeError(GevwireError, ValueError):
    """A reply or ``send`` argument cannot be encoded by the connection's codec."""


class DecoderContractError(GevwireError, RuntimeError):
    """A decoder broke its contract: it reported more bytes used than it was given, or
    returned frames forever without consuming bytes.  A bug in the codec, not the peer:
    the connection is closed (through ``on_error``) instead of hanging its loop."""


class RoutingError(GevwireError):
    """A frame reached a :class:`~gevwire.Router` with no handler for its kind."""


class TLSError(GevwireError):
    """TLS failed on a connection: a bad record, MAC or alert from the peer after the
    handshake.  ``reason`` is OpenSSL's (``"DECRYPTION_FAILED_OR_BAD_RECORD_MAC"`` ...);
    the connection is closed (the stream cannot be trusted past it)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"TLS {reason}" + (f" ({detail})" if detail and detail != reason
                                            else ""))
        self.reason = reason


class TLSHandshakeError(TLSError):
    """The TLS handshake failed: the peer is no TLS client (``"WRONG_VERSION_NUMBER"``,
    ``"HTTP_REQUEST"`` for plain HTTP), offers no version or cipher we accept, or a
    certificate failed verification (``"CERTIFICATE_VERIFY_FAILED"``,
    ``"PEER_DID_NOT_RETURN_A_CERTIFICATE"``)."""


class TLSHandshakeTimeout(TLSHandshakeError):
    """The TLS handshake was not done within ``ssl_handshake_timeout`` of the connect."""

    def __init__(self, timeout: float) -> None:
        super().__init__("HANDSHAKE_TIMEOUT", f"not done after {timeout:g}s; "
                                              "ssl_handshake_timeout")
        self.timeout = timeout
