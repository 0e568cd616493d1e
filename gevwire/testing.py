"""Test tools for gevwire protocols and handlers: hypothesis strategies from construct
schemas, a codec conformance suite, a socket-free handler harness and loopback helpers.

- :func:`strategy_for` — a hypothesis strategy of valid values for a construct schema.
- :func:`check_codec` — the framing properties every codec must have, as one call.
- :class:`HandlerHarness` — drive a handler with frames or bytes, no sockets.
- :func:`serve` and :class:`BlockingClient` — a real server on a loopback port, a blocking client.
- :func:`feed` and :class:`FrameCutter` — cut frames from reads exactly as a connection.
- :func:`same_frames` — the equality ``check_codec`` compares frames with.

hypothesis is needed only by the functions that use it (:func:`strategy_for`,
:func:`check_codec`: ``pip install 'gevwire[testing]'``, or they say so), so the
harness, ``serve`` and ``BlockingClient`` work without it.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import socket
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from gevwire._cutter import FrameCutter, feed, feed_reads
from gevwire._testbase import (
    CheckReport,
    CodecCheckFailed,
    UnsupportedConstruct,
    require_hypothesis,
    same_frames,
)
from gevwire.codec import BaseCodec, Decoder, RawCodec
from gevwire.errors import ConnectionClosed, DecoderContractError, FrameError
from gevwire.handler import BlockingCall, handler_waits
from gevwire.pipeline import Counters, DecodeProgress, FramePipeline
from gevwire.server import Server

log = logging.getLogger("gevwire")

if TYPE_CHECKING:
    from hypothesis.strategies import SearchStrategy

__all__ = [
    "BlockingClient",
    "CheckReport",
    "CodecCheckFailed",
    "DecodeProgress",
    "FakeConnection",
    "FrameCutter",
    "HandlerHarness",
    "UnsupportedConstruct",
    "check_codec",
    "feed",
    "same_frames",
    "serve",
    "strategy_for",
]


# -- strategies and the codec suite (hypothesis imported lazily) ---------------------------


def strategy_for(
    schema: Any,
    *,
    overrides: Mapping[str, Any] | None = None,
    max_size: int = 32,
) -> SearchStrategy[Any]:
    """A hypothesis strategy of valid values for a construct ``schema``.

    Values are what ``schema.build`` accepts and ``schema.parse`` returns (``Container``,
    ``ListContainer``, ``EnumIntegerString``; ``Rebuild``, ``Checksum`` and ``Computed``
    fields filled in), so ``parse(build(x)) == x``.  Variable-size parts (``GreedyBytes``,
    strings, ``Bytes(this.n)``) get at most ``max_size`` bytes or characters, arrays at
    most ``max_size // 4`` items: a length field read by a later ``this`` expression is
    drawn first, already capped.  ``Enum`` fields take their named values only; a field a
    ``Switch`` is keyed on takes the keys of its cases.

    Supported: ``Struct``, ``Int*`` / ``Float*`` / ``BytesInteger`` / ``BitsInteger``,
    ``Flag``, ``Enum``, ``FlagsEnum``, ``BitStruct`` / ``Bitwise``, ``Bytes``,
    ``GreedyBytes``, ``Prefixed``, ``PrefixedArray``, ``Array``, ``GreedyRange``,
    ``VarInt``, ``ZigZag``, ``Switch``, ``Const``, ``Checksum``, ``Rebuild``,
    ``Computed``, ``Default``, ``Padded``, ``Padding``, ``CString``, ``PascalString``,
    ``PaddedString``, ``GreedyString``, ``Optional``, ``If`` / ``IfThenElse``, ``Hex``.

    Anything else (lambdas for lengths or counts, computed ``Switch`` keys, ``Pointer``,
    ``Peek``, ``Union``, custom ``Adapter``\\s ...) raises :class:`UnsupportedConstruct`
    naming the field.  ``overrides`` maps dotted field paths (``"header.kind"``; array
    items share their array's path) to a strategy, or to a function of the enclosing
    construct context returning one (``lambda ctx: st.binary(min_size=ctx.length,
    max_size=ctx.length)``); an override replaces that field's whole subtree.
    """
    require_hypothesis()
    from gevwire._strategies import build_strategy

    return build_strategy(schema, overrides, max_size)


def check_codec(
    codec: BaseCodec,
    *,
    messages: SearchStrategy[Any] | None = None,
    frame_of: Callable[[Any], Any] | None = None,
    examples: int = 100,
    max_frames: int = 5,
    limits: bool = True,
    timeout: float = 2.0,
) -> CheckReport:
    """Check the framing properties of ``codec``; raise :class:`CodecCheckFailed` if one
    fails, else return a :class:`CheckReport` of what ran.

    Properties, each tried on ``examples`` hypothesis examples (shrunk on failure):

    - *round trip*: one encoded message decodes to exactly one frame, ``frame_of(m)``
      (the message itself by default); the frame re-encodes to the same bytes;
    - *splits*: a stream of up to ``max_frames`` messages cut at any points (also byte by
      byte) yields the same frames, fed exactly as a connection feeds its decoder;
    - *fast decoder* (``Codec`` with a fast decoder): equal to construct on valid and
      damaged frames;
    - *truncation*: a frame missing any suffix decodes to nothing and raises nothing;
    - *max_frame_size* (``limits``): a frame of exactly ``max_frame_size`` bytes decodes;
    - *garbage*: random bytes, damaged streams and floods of one byte raise only
      :class:`~gevwire.FrameError`, never hang (``timeout`` seconds per feed), and leave
      at most ``max_frame_size + 16`` bytes buffered.

    Messages come from ``messages``; else from ``codec.example_strategy()`` if the codec
    has one; else, for a :class:`~gevwire.Codec`, from ``strategy_for(codec.schema)``.
    ``frame_of`` (or ``codec.example_frame(m)``) says which frame a message reads back as,
    for codecs whose frames are not their messages (a length field kept in the frame).

    With ``limits`` the limit properties run on shallow copies of ``codec`` whose
    ``max_frame_size`` is set to a frame's exact size, so the decoder must take its limit
    from the codec when ``decoder()`` is called (as every gevwire codec does).  A
    ``RawCodec`` has no framing: its frames must concatenate to the stream.

    Call it from a plain test function, not from inside a ``@given`` test.
    """
    require_hypothesis()
    from gevwire._check import run_checks

    return run_checks(codec, messages=messages, frame_of=frame_of, examples=examples,
                      max_frames=max_frames, limits=limits, timeout=timeout)


# -- a handler without sockets -------------------------------------------------------------


class FakeConnection:
    """What a handler sees in :class:`HandlerHarness`: the :class:`~gevwire.Connection`
    API a handler uses (``send``, ``close``, ``abort``, ``shutdown_write``, ``peer_addr``,
    ``context``, ``get`` / ``set``, ``connected``), recording instead of writing.

    There is no event loop: ``conn.loop`` (timers, ``call_soon``) is not available.
    """

    def __init__(self, harness: HandlerHarness, peer_addr: Any) -> None:
        self._harness = harness
        self.peer_addr = peer_addr
        #: Free for the application, as on a real connection.
        self.context: Any = None
        self.values: dict[str, Any] = {}
        self.close_requested = False
        self.aborted = False
        self.write_shut = False

    @property
    def fd(self) -> int:
        """-1: there is no socket."""
        return -1

    @property
    def connected(self) -> bool:
        """True until the connection starts closing."""
        return not self.close_requested and not self._harness.closed

    @property
    def read_buffer_length(self) -> int:
        """Bytes received but not yet cut into a frame."""
        return self._harness.pipeline.input.length

    @property
    def write_buffer_length(self) -> int:
        """Always 0: everything sent is taken at once."""
        return 0

    def get(self, key: str, default: Any = None) -> Any:
        """A value stored with :meth:`set`."""
        return self.values.get(key, default)

    def set(self, key: str, value: Any) -> None:
        """Store a value with the connection."""
        self.values[key] = value

    def send(self, message: Any) -> None:
        """Encode ``message`` with the codec and record it as sent (with the replies of
        the frame being handled, as a connection gathers them).

        Raises :class:`~gevwire.ConnectionClosed` once closing or shut down for writing.
        """
        if self.close_requested or self.write_shut or self._harness.closed:
            raise ConnectionClosed(f"{self!r} is closed for writing")
        pipeline = self._harness.pipeline
        data = pipeline.encode(message)
        if pipeline.dispatching:
            pipeline.gather(data)
        else:
            self._harness._write(data)

    def close(self) -> None:
        """Close after the current call (``on_close`` runs once, then)."""
        self.close_requested = True
        self._harness.pipeline.stopped = True

    def abort(self) -> None:
        """Close at once; recorded in ``aborted``."""
        self.aborted = True
        self.close()

    def shutdown_write(self) -> None:
        """Half-close: later ``send`` calls raise ``ConnectionClosed``."""
        self.write_shut = True

    def __repr__(self) -> str:
        return f"<FakeConnection peer={self.peer_addr!r}>"


class _RecordingCodec:
    """The harness's codec: encodes as the real one, recording each reply and ``send``
    argument with its bytes."""

    def __init__(self, codec: BaseCodec, harness: HandlerHarness) -> None:
        self._codec = codec
        self._harness = harness

    def decoder(self) -> Decoder:
        return self._codec.decoder()

    def encode(self, message: Any) -> bytes:
        data = bytes(self._codec.encode(message))
        harness = self._harness
        harness.sent.append(data)
        harness.replies.append(message)
        harness._new.append(message)
        return data

    def encode_into(self, parts: list[bytes], message: Any) -> int:
        data = self.encode(message)
        parts.append(data)
        return len(data)


class _ObservedHandler:
    """The harness's handler: the user's, with every ``on_error`` recorded."""

    def __init__(self, handler: Any, harness: HandlerHarness) -> None:
        self.on_connect = handler.on_connect
        self.on_message = handler.on_message
        self._on_error = getattr(handler, "on_error", None)
        self._harness = harness
        self._asyncio_loop: asyncio.AbstractEventLoop | None = None
        if handler_waits(handler):  # run what waits to its end, within the call
            self._user_connect = handler.on_connect
            self._user_message = handler.on_message
            self.on_connect = self._connect_settled
            self.on_message = self._message_settled

    def _connect_settled(self, conn: Any) -> None:
        self._settle(self._user_connect(conn))

    def _message_settled(self, conn: Any, frame: Any) -> Any:
        return self._settle(self._user_message(conn, frame))

    def _settle(self, result: Any) -> Any:
        """A coroutine's result (run on the harness's own asyncio loop), a blocking
        route's (called here), or ``result`` itself."""
        if isinstance(result, BlockingCall):
            return result.fn(*result.args)
        if inspect.iscoroutine(result):
            if self._asyncio_loop is None:
                self._asyncio_loop = asyncio.new_event_loop()
            return self._asyncio_loop.run_until_complete(result)
        return result

    def close(self) -> None:
        if self._asyncio_loop is not None:
            self._asyncio_loop.close()
            self._asyncio_loop = None

    def on_error(self, conn: Any, error: BaseException) -> None:
        self._harness.errors.append(error)
        if self._on_error is not None:
            self._on_error(conn, error)
        else:  # as a connection's pipeline does for a handler without on_error
            log.error("closing %r after error", conn, exc_info=error)
            conn.close()


class HandlerHarness:
    """Runs a handler against a :class:`FakeConnection`, no sockets or threads, through
    the :class:`~gevwire.pipeline.FramePipeline` that serves a real connection.

    ``on_connect`` runs at once.  :meth:`feed` hands bytes to the codec's decoder as a
    connection would (each call is one read), :meth:`deliver` hands a frame straight to
    ``on_message``; both return the replies that call produced.  Replies (returned values
    and ``send`` arguments, in order) collect in ``replies`` and are encoded with the
    codec, so an unencodable reply fails as it would on a server; their bytes collect in
    ``sent`` (one ``bytes`` each) and ``output``.  ``replies`` and the lists the calls
    return hold what the handler gave (a dict, say); :meth:`decoded_replies` what a
    client decodes from the bytes (the codec's frames: construct ``Container``\\s).
    Once the handler closes, later frames are not dispatched and ``on_close`` runs
    (once) at the end of that call.

    Handlers that wait run to their end within the call that gave them a frame, in
    frame order: an ``async def`` one on an asyncio loop of the harness's own, a
    blocking one on the calling thread (a test sees the replies a client would get,
    with none of the timing).

    With ``raise_errors`` (the default) an exception from a handler callback or the
    codec propagates to the test; only :class:`~gevwire.FrameError`\\s go to the
    handler's ``on_error``, as on a server.  With ``raise_errors=False`` every error goes
    to ``on_error`` as on a server (the default hook logs and closes); ``errors`` lists
    them either way.  A decoder that breaks its contract always raises
    :class:`~gevwire.DecoderContractError`.

        harness = HandlerHarness(MyHandler(), Codec(SCHEMA))
        assert harness.deliver({"kind": "ping", "id": 7}) == [{"kind": "pong", "id": 7}]
    """

    def __init__(
        self,
        handler: Any,
        codec: BaseCodec | None = None,
        *,
        peer_addr: Any = ("127.0.0.1", 40000),
        raise_errors: bool = True,
    ) -> None:
        self.handler = handler
        self.codec: BaseCodec = codec if codec is not None else RawCodec()
        self.raise_errors = raise_errors
        self.conn = FakeConnection(self, peer_addr)
        #: Every reply and ``send`` argument, in order.
        self.replies: list[Any] = []
        #: The encoded replies, one ``bytes`` each.
        self.sent: list[bytes] = []
        #: Errors reported to ``on_error``.
        self.errors: list[BaseException] = []
        #: True once ``on_close`` has run.
        self.closed = False
        self._new: list[Any] = []
        self._written: list[bytes] = []
        #: The pipeline a connection would frame and dispatch with (this harness is
        #: its transport).
        self._observed = _ObservedHandler(handler, self)
        self.pipeline = FramePipeline(
            self.conn, self._observed, _RecordingCodec(self.codec, self),
            self, Counters(), reraise=self._reraise)
        self._call(self.pipeline.connected)

    @property
    def output(self) -> bytes:
        """Every byte sent to the peer so far."""
        return b"".join(self._written)

    def decoded_replies(self) -> list[Any]:
        """Every reply so far as a client using the same codec receives it: ``output``
        cut and parsed by a new decoder (construct ``Container``\\s where ``replies``
        holds the dicts a handler returned)."""
        return feed(self.codec, [self.output])

    def deliver(self, frame: Any) -> list[Any]:
        """Hand one decoded frame to ``on_message``; the replies it produced."""
        return self._call(lambda: self.pipeline.dispatch([frame]))

    def feed(self, data: bytes) -> list[Any]:
        """One read of raw bytes through the codec's decoder; the replies produced."""
        return self._call(lambda: self._read(data))

    def feed_message(self, message: Any) -> list[Any]:
        """``feed(codec.encode(message))``: what a client sending ``message`` causes."""
        return self.feed(self.codec.encode(message))

    def disconnect(self) -> None:
        """The peer went away: ``on_close`` runs (once)."""
        self.conn.close_requested = True
        self._call(lambda: None)

    # The pipeline's transport.

    def _write(self, data: bytes) -> None:
        if not self.closed:
            self._written.append(data)

    _write_batch = _write

    def _close_gracefully(self) -> None:
        self.conn.close()

    def _close_now(self) -> None:
        self.conn.abort()

    def _refuses_sends(self) -> bool:
        return self.conn.close_requested or self.conn.write_shut

    def _partial_frame_started(self) -> None:
        pass

    def _read(self, data: bytes) -> None:
        for _ in feed_reads(self.pipeline, data, False, self._write):
            pass

    def _reraise(self, error: BaseException) -> bool:
        if isinstance(error, DecoderContractError):
            return True
        if self.raise_errors and not isinstance(error, FrameError):
            self.errors.append(error)
            return True
        return False

    def _call(self, action: Callable[[], None]) -> list[Any]:
        self._new = []
        if not self.closed:
            try:
                if not self.conn.close_requested:
                    action()
            finally:
                if self.conn.close_requested and not self.closed:
                    self.closed = True
                    self.pipeline.reset()
                    self._observed.close()
                    self.handler.on_close(self.conn)
        return self._new


# -- loopback servers and clients ----------------------------------------------------------


@contextmanager
def serve(handler: Any, codec: BaseCodec | None = None, **server_kwargs: Any) -> Iterator[Server]:
    """Run ``Server(handler, codec=codec, **server_kwargs)`` for the ``with`` block.

    Binds ``127.0.0.1`` on a free port unless ``address`` is given; yields the running
    server (``server.address``) and stops it afterwards.
    """
    server_kwargs.setdefault("address", "127.0.0.1:0")
    server = Server(handler, codec=codec, **server_kwargs)
    server.start()
    try:
        yield server
    finally:
        server.stop()


class BlockingClient:
    """A blocking client for tests: ``send`` encodes with a codec, ``recv`` decodes the
    next frame with the codec's decoder, fed exactly as a server connection feeds it.

    ``address`` is a ``(host, port)`` tuple or a running :class:`~gevwire.Server` (whose
    codec is then the default).  Every operation waits at most ``timeout`` seconds and
    raises ``TimeoutError`` after that.

        with serve(Echo(), codec) as server, BlockingClient(server) as client:
            client.send(b"ping")
            assert client.recv() == b"ping"
    """

    def __init__(self, address: Any, codec: BaseCodec | None = None, *,
                 timeout: float = 5.0) -> None:
        if isinstance(address, Server):
            codec = codec if codec is not None else address.codec
            address = address.address
        self.codec: BaseCodec = codec if codec is not None else RawCodec()
        self.timeout = timeout
        self.sock = socket.create_connection((address[0], address[1]), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.cutter = FrameCutter(self.codec)
        self._frames: deque[Any] = deque()
        self.eof = False

    def send(self, message: Any) -> None:
        """Encode ``message`` with the codec and send all of it."""
        self.sock.sendall(self.codec.encode(message))

    def send_bytes(self, data: bytes) -> None:
        """Send raw bytes."""
        self.sock.sendall(data)

    def recv(self, timeout: float | None = None) -> Any:
        """The next frame from the server.

        Raises ``TimeoutError``, :class:`~gevwire.ConnectionClosed` if the server closed
        first, or the decoder's :class:`~gevwire.FrameError`.
        """
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while not self._frames:
            if self.eof:
                raise ConnectionClosed("the server closed the connection")
            self._read(deadline)
        return self._frames.popleft()

    def request(self, message: Any, timeout: float | None = None) -> Any:
        """``send(message)`` then ``recv()``."""
        self.send(message)
        return self.recv(timeout)

    def wait_closed(self, timeout: float | None = None) -> bool:
        """Read until the server closes (frames read meanwhile stay queued for
        :meth:`recv`); False if it did not close within the timeout."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        try:
            while not self.eof:
                self._read(deadline)
        except TimeoutError:
            return False
        return True

    def _read(self, deadline: float) -> None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("no frame from the server in time")
        self.sock.settimeout(left)
        try:
            data = self.sock.recv(1 << 16)
        except ConnectionResetError:
            data = b""
        if not data:
            self.eof = True
            return
        frames, errors = self.cutter.push(data)
        self._frames.extend(frames)
        if errors:
            raise errors[0]

    def shutdown_write(self) -> None:
        """Half-close: the server sees EOF, and may still reply."""
        self.sock.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()

    def __enter__(self) -> BlockingClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
