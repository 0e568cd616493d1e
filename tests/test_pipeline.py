"""``FramePipeline`` driven directly, no sockets: the one read → frame → dispatch → write
path every transport uses (epoll, io_uring, ``FrameCutter``, ``HandlerHarness``)."""

from __future__ import annotations

import mmap
import socket
import struct
from typing import Any

import construct as c  # type: ignore[import-untyped]
import pytest
from conftest import ServeFn, peer_closed, recv_until_eof, wait_until

import gevwire
from gevwire import DecoderContractError, FrameError, FrameTooLarge
from gevwire.codecs import length_field, line
from gevwire.codecs.mqtt import MqttCodec, Publish
from gevwire.codecs.resp import RespCodec
from gevwire.codecs.websocket import Opcode, WebSocketCodec
from gevwire.pipeline import _JOIN_MAX, Counters, FramePipeline
from gevwire.ringbuffer import BufferPool, RingBuffer
from gevwire.waiting import WaitingPipeline

pytestmark = [pytest.mark.timeout(60), pytest.mark.io]


class Wire:
    """A transport that records what the pipeline asks of it, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.pipeline: FramePipeline | None = None
        self.write_shut = False

    def _write(self, data: bytes) -> None:
        self.calls.append(("write", data))

    def _write_batch(self, data: bytes) -> None:
        self.calls.append(("batch", data))

    def _close_gracefully(self) -> None:
        self.calls.append(("close", None))
        assert self.pipeline is not None
        self.pipeline.stopped = True

    def _close_now(self) -> None:
        self.calls.append(("abort", None))
        assert self.pipeline is not None
        self.pipeline.stopped = True

    def _refuses_sends(self) -> bool:
        return self.write_shut

    def _partial_frame_started(self) -> None:
        self.calls.append(("partial", None))

    @property
    def sent(self) -> bytes:
        return b"".join(d for kind, d in self.calls if kind in ("write", "batch"))


class Upper(gevwire.Handler):
    """Replies to each line with it in upper case; ``boom`` raises, ``bye`` closes."""

    def __init__(self) -> None:
        self.frames: list[Any] = []
        self.errors: list[BaseException] = []

    def on_message(self, conn: Any, frame: Any) -> Any:
        self.frames.append(frame)
        if frame == b"boom":
            raise ValueError("boom")
        if frame == b"bye":
            conn.close()
            return b"BYE"
        return bytes(frame).upper()

    def on_error(self, conn: Any, error: BaseException) -> None:
        self.errors.append(error)


def make(handler: Any, codec: Any = None, **kwargs: Any) -> tuple[FramePipeline, Wire,
                                                                   Counters]:
    wire = Wire()
    counters = Counters()
    codec = codec if codec is not None else line(max_length=64)

    class Conn:
        pipeline: FramePipeline

        def close(self) -> None:
            wire._close_gracefully()

    conn = Conn()
    pipeline = FramePipeline(conn, handler, codec, wire, counters, **kwargs)
    conn.pipeline = wire.pipeline = pipeline
    return pipeline, wire, counters


def test_a_read_of_one_frame_returns_its_reply_for_the_transport_to_write() -> None:
    pipeline, wire, counters = make(Upper())
    assert pipeline.received(b"ping\n") == b"PING\n"
    assert wire.calls == []
    assert (counters.frames_in, counters.frames_out) == (1, 1)


class Answer(gevwire.Handler):
    """Replies to each frame with what ``reply(frame)`` gives."""

    def __init__(self, reply: Any) -> None:
        self.reply = reply
        self.frames: list[Any] = []
        self.errors: list[BaseException] = []

    def on_message(self, conn: Any, frame: Any) -> Any:
        self.frames.append(frame)
        return self.reply(frame)

    def on_error(self, conn: Any, error: BaseException) -> None:
        self.errors.append(error)


@pytest.mark.parametrize("view_reads", [False, True])
@pytest.mark.parametrize(("reply", "sent"), [
    (lambda f: f, b"abc"),
    (lambda f: bytearray(f) + b"!", b"abc!"),
    (lambda f: "é", "é".encode()),
    (lambda f: None, None),
])
def test_a_raw_read_is_one_frame_and_its_reply_is_encoded_as_raw_codec_says(
        view_reads: bool, reply: Any, sent: bytes | None) -> None:
    handler = Answer(reply)
    pipeline, wire, counters = make(handler, gevwire.RawCodec(), view_reads=view_reads)
    buffer = bytearray(b"abc")
    got = pipeline.received(memoryview(buffer) if view_reads else bytes(buffer))
    buffer[:] = b"xyz"  # (a view read's buffer is reused: the frame is a copy)
    assert handler.frames == [b"abc"] and type(handler.frames[0]) is bytes
    assert got == sent and (got is None or type(got) is bytes)
    assert (counters.frames_in, counters.frames_out) == (1, 0 if sent is None else 1)
    assert wire.calls == []


def test_a_raw_reply_raw_codec_refuses_is_a_handler_error() -> None:
    handler = Answer(lambda f: 42)
    pipeline, _, counters = make(handler, gevwire.RawCodec())
    assert pipeline.received(b"abc") is None
    assert [type(e) for e in handler.errors] == [TypeError]
    assert counters.frames_out == 0


class Shouting(gevwire.RawCodec):
    """A RawCodec whose decoder and encode are its own: both must be used."""

    class Decoder(gevwire.Decoder):
        def decode(self, ring: RingBuffer) -> bytes | None:
            return ring.read_all().lower() if ring.length else None

    def decoder(self) -> gevwire.Decoder:
        return self.Decoder()

    def encode(self, message: Any) -> bytes:
        return super().encode(message).upper()


def test_a_raw_codec_subclass_keeps_its_own_decoder_and_encode() -> None:
    handler = Answer(lambda f: f + b"!")
    pipeline, wire, _ = make(handler, Shouting())
    got = pipeline.received(b"AbC")  # (the generic decoder: its reply leaves as a batch)
    assert (got or b"") + wire.sent == b"ABC!"
    assert handler.frames == [b"abc"]


def test_the_replies_of_a_read_of_many_frames_leave_as_one_batch_in_order() -> None:
    pipeline, wire, counters = make(Upper())
    assert pipeline.received(b"a\nb\nc\n") is None
    assert wire.calls == [("batch", b"A\nB\nC\n")]
    assert (counters.frames_in, counters.frames_out) == (3, 3)


def test_a_partial_frame_waits_in_the_ring_and_its_reply_follows_the_earlier_ones() -> None:
    pipeline, wire, _ = make(Upper())
    assert pipeline.received(b"one\ntw") is None
    assert wire.sent == b"ONE\n"
    assert pipeline.input.length == 2
    assert pipeline.received(b"o\nthree\n") is None  # ring not empty: cut from it
    assert wire.sent == b"ONE\nTWO\nTHREE\n"
    assert pipeline.input.length == 0


def test_a_read_ending_in_a_partial_frame_is_batch_cut_once() -> None:
    """The batch cutter declined the read's tail (a partial frame): the ring takes it
    and ``decode`` alone looks at it, not the batch cutter a second time."""
    calls: list[str] = []

    class Counted(gevwire.Decoder):
        def __init__(self, inner: gevwire.Decoder) -> None:
            self.inner = inner

        def decode(self, ring: RingBuffer) -> Any:
            calls.append("decode")
            return self.inner.decode(ring)

        def decode_view(self, view: memoryview) -> tuple[list[Any], int]:
            calls.append("decode_view")
            return self.inner.decode_view(view)

        def decode_bytes(self, data: bytes) -> tuple[list[Any], int]:
            calls.append("decode_bytes")
            return self.inner.decode_bytes(data)

    class Counting(gevwire.Codec):
        def decoder(self) -> gevwire.Decoder:
            return Counted(super().decoder())

    pipeline, wire, counters = make(Upper(), Counting(c.Prefixed(c.Int32ub, c.GreedyBytes)))
    whole, partial = b"\x00\x00\x00\x02ab", b"\x00\x00\x00\x03c"
    assert pipeline.received(whole + partial) is None
    assert calls == ["decode_bytes", "decode"]
    assert wire.sent == b"\x00\x00\x00\x02AB" and pipeline.input.length == len(partial)
    calls.clear()
    assert pipeline.received(b"de") is None  # the ring holds a partial: cut from it
    assert calls == ["decode_view"]
    assert wire.sent == b"\x00\x00\x00\x02AB\x00\x00\x00\x03CDE"
    assert pipeline.input.length == 0
    assert (counters.frames_in, counters.frames_out) == (2, 2)


def test_view_reads_keep_no_reference_to_the_reused_buffer() -> None:
    pipeline, wire, _ = make(Upper(), view_reads=True)
    buffer = bytearray(b"abc\nde")
    assert pipeline.received(memoryview(buffer)) is None
    buffer[:] = b"XXXXXX"  # the kernel reuses the buffer
    pipeline.received(memoryview(b"f\n"))
    assert wire.sent == b"ABC\nDEF\n"


def test_a_handler_exception_goes_to_on_error_after_the_replies_before_it() -> None:
    handler = Upper()
    pipeline, wire, counters = make(handler)
    pipeline.received(b"a\nboom\nc\n")
    assert [type(e) for e in handler.errors] == [ValueError]
    assert counters.errors == {"ValueError": 1}
    assert wire.calls == [("write", b"A\n")]  # not closed: on_error decided to go on
    assert handler.frames == [b"a", b"boom"]  # the read's later frames are dropped
    assert pipeline.received(b"d\n") == b"D\n"


def test_a_fatal_frame_error_closes_whatever_on_error_decides() -> None:
    handler = Upper()
    pipeline, wire, counters = make(handler)
    pipeline.received(b"ok\n" + b"x" * 100)  # a line past max_length=64
    assert [type(e) for e in handler.errors] == [FrameTooLarge]
    assert wire.calls[0] == ("batch", b"OK\n") or wire.calls[0] == ("write", b"OK\n")
    assert ("close", None) in wire.calls
    assert counters.errors == {"FrameTooLarge": 1}
    pipeline.received(b"later\n")
    assert handler.frames == [b"ok"]  # stopped: nothing after the close


def test_a_non_fatal_frame_error_skips_just_its_frame() -> None:
    from gevwire.codecs import length_field

    handler = Upper()
    codec = length_field(length_field_length=2, initial_bytes_to_strip=2, max_frame_size=6,
                         on_oversize="discard")
    pipeline, wire, _ = make(handler, codec)
    stream = b"\x00\x02ab" + b"\x00\x07toolong" + b"\x00\x02cd"
    pipeline.received(stream)
    assert [type(e) for e in handler.errors] == [FrameTooLarge]
    assert not handler.errors[0].fatal  # type: ignore[attr-defined]
    assert handler.frames == [b"ab", b"cd"]
    assert ("close", None) not in wire.calls


def test_close_in_a_handler_stops_the_frames_after_it() -> None:
    handler = Upper()
    pipeline, wire, _ = make(handler)
    pipeline.received(b"a\nbye\nc\n")
    assert handler.frames == [b"a", b"bye"]
    assert wire.sent == b"A\nBYE\n"


def test_replies_past_high_water_are_written_in_the_middle_of_a_read() -> None:
    pipeline, wire, _ = make(Upper(), high_water=8)
    pipeline.received(b"aaaa\nbbbb\ncccc\n")
    kinds = [kind for kind, _ in wire.calls]
    assert kinds == ["write", "batch"]
    assert wire.sent == b"AAAA\nBBBB\nCCCC\n"


def test_the_partial_frame_deadline_is_armed_once_per_partial_frame() -> None:
    pipeline, wire, counters = make(Upper(), frame_timeout=2.0)
    counters.now = 100.0
    pipeline.received(b"par")
    assert wire.calls == [("partial", None)]
    assert pipeline.frame_time_left(101.5) == pytest.approx(0.5)
    counters.now = 101.0
    pipeline.received(b"tial")  # the same frame, still partial: no new deadline
    assert wire.calls == [("partial", None)]
    pipeline.received(b"\nnext")  # a frame completed, a new one began
    assert wire.calls[-1] == ("partial", None) and pipeline.partial_since == 101.0
    pipeline.received(b"\n")
    assert pipeline.frame_time_left(200.0) is None


class GreedyLiar(gevwire.Decoder):
    """Claims to have used more bytes than it was given."""

    def decode(self, ring: RingBuffer) -> Any:
        return None

    def decode_view(self, view: memoryview) -> tuple[list[Any], int]:
        return [], len(view) + 1


class Repeater(gevwire.Decoder):
    """Returns the same frame forever without consuming a byte."""

    def decode(self, ring: RingBuffer) -> Any:
        return b"again"


class LiarCodec(gevwire.BaseCodec):
    def __init__(self, decoder: type[gevwire.Decoder]) -> None:
        self._decoder = decoder

    def decoder(self) -> gevwire.Decoder:
        return self._decoder()

    def encode(self, message: Any) -> bytes:
        return bytes(message)


@pytest.mark.parametrize("decoder", [GreedyLiar, Repeater])
def test_a_decoder_that_breaks_its_contract_fails_the_connection_instead_of_hanging(
    decoder: type[gevwire.Decoder],
) -> None:
    handler = Upper()
    pipeline, _, counters = make(handler, LiarCodec(decoder))
    pipeline.received(b"abc")
    assert [type(e) for e in handler.errors] == [DecoderContractError]
    assert isinstance(handler.errors[0], RuntimeError)
    assert counters.errors == {"DecoderContractError": 1}


def test_reraise_hands_chosen_errors_to_the_caller() -> None:
    pipeline, _, _ = make(Upper(), reraise=lambda e: not isinstance(e, FrameError))
    with pytest.raises(ValueError, match="boom"):
        pipeline.received(b"boom\n")
    assert not pipeline.dispatching


@pytest.mark.parametrize("decoder", [GreedyLiar, Repeater])
def test_a_server_closes_the_connection_of_a_broken_decoder_and_counts_it(
    serve: ServeFn, decoder: type[gevwire.Decoder]
) -> None:
    class Quiet(gevwire.Handler):
        def on_error(self, conn: gevwire.Connection, error: BaseException) -> None:
            conn.close()

    server = serve(Quiet(), codec=LiarCodec(decoder), loops=1)
    for count in (1, 2):  # the loop lives on: a second connection is served (and closed)
        with socket.create_connection(server.address[:2], timeout=5) as sock:
            sock.sendall(b"abc")
            assert peer_closed(sock)
        assert wait_until(
            lambda n=count: server.stats()["errors"].get("DecoderContractError") == n)


def test_the_shared_empty_pending_list_is_never_appended_to() -> None:
    """Until a read of several frames, a pipeline shares one empty ``pending`` list (an
    idle ping-pong connection then makes none); appending to it would leak replies
    from one connection to every other."""
    from gevwire import pipeline as pipeline_module

    class Sender(Upper):
        def on_message(self, conn: Any, frame: Any) -> Any:
            if frame == b"send":
                conn.pipeline.gather(b"sent\n")  # what Connection.send does in dispatch
            return super().on_message(conn, frame)

    shared = pipeline_module._NO_PENDING
    pipeline, wire, _ = make(Sender())
    assert pipeline.pending is shared
    assert pipeline.received(b"one\n") == b"ONE\n"  # the fast path gathers nothing
    assert pipeline.pending is shared
    pipeline.received(b"a\nsend\n")
    assert pipeline.pending is not shared and pipeline.pending == []
    assert wire.sent == b"A\nsent\nSEND\n"
    pipeline.reset()
    assert pipeline.pending is shared and shared == []


class Parts(gevwire.BaseCodec):
    """Lines; a reply that is a list is sent as its items, each a part (by reference)."""

    def __init__(self) -> None:
        self._line = line(max_length=64)
        self.joined = 0

    def decoder(self) -> Any:
        return self._line.decoder()

    def encode(self, message: Any) -> bytes:
        parts: list[bytes] = []
        self.encode_into(parts, message)
        self.joined += 1
        return b"".join(parts)

    def encode_into(self, parts: list[bytes], message: Any) -> int:
        items = message if isinstance(message, list) else [message]
        parts.extend(items)
        return sum(map(len, items))


class Big(Upper):
    """``big`` replies with 100 references to one 1 KiB value (an MGET's reply)."""

    value = b"v" * 1024

    def on_message(self, conn: Any, frame: Any) -> Any:
        self.frames.append(frame)
        return [self.value] * 100 if frame == b"big" else bytes(frame)


@pytest.mark.parametrize("read", [b"big\n", b"a\nbig\nb\n"])
def test_replies_past_max_output_close_the_connection_before_they_are_joined(
    read: bytes,
) -> None:
    codec = Parts()
    handler = Big()
    pipeline, wire, counters = make(handler, codec, max_output=50_000, high_water=1 << 20)
    assert pipeline.received(read) is None
    assert [type(e) for e in handler.errors] == [gevwire.WriteBufferFull]
    assert "max_write_buffer=50000" in str(handler.errors[0])
    assert ("abort", None) in wire.calls and wire.sent == b""  # the earlier reply too:
    assert pipeline.stopped and not pipeline.pending  # nothing reaches the peer past
    assert codec.joined == 0  # the cap, and nothing was built
    assert counters.errors == {"WriteBufferFull": 1}


def test_replies_within_max_output_are_sent() -> None:
    pipeline, wire, _ = make(Big(), Parts(), max_output=102_401)
    assert pipeline.received(b"big\n") == b"v" * 102_400
    assert pipeline.received(b"a\nbig\n") is None
    assert wire.sent == b"a" + b"v" * 102_400


def test_a_message_encoded_past_max_output_is_refused_by_encode_unjoined() -> None:
    codec = Parts()
    pipeline, _, _ = make(Big(), codec, max_output=1000)
    with pytest.raises(gevwire.WriteBufferFull, match="1024 bytes exceeds"):
        pipeline.encode([b"x" * 512, b"y" * 512])
    assert codec.joined == 0
    assert pipeline.encode(b"z" * 2000) == b"z" * 2000  # bytes: its own size, not measured


def _prefixed() -> gevwire.Codec:
    return gevwire.Codec(c.Prefixed(c.Int32ub, c.GreedyBytes), max_frame_size=8 << 20)


@pytest.mark.parametrize("codec_name", ["construct", "length_field", "resp", "mqtt",
                                        "websocket"])
def test_a_large_partial_frame_gets_the_storage_its_header_announced_at_once(
    codec_name: str,
) -> None:
    """Past 64 KiB of a partial frame the ring is sized by the frame's header (page-
    rounded), not doubled as bytes come: then the bytes after the frame are cut after
    it without growing (or copying) the ring."""
    size = 3 << 20
    body = bytes(range(256)) * (size // 256)
    if codec_name == "construct":
        codec: Any = _prefixed()
        wire, frame = struct.pack(">I", size) + body, body
    elif codec_name == "length_field":
        codec = length_field(max_frame_size=8 << 20, initial_bytes_to_strip=4)
        wire, frame = struct.pack(">I", size) + body, body
    elif codec_name == "resp":
        codec = RespCodec(commands=True, max_frame_size=8 << 20, max_bulk_length=8 << 20)
        wire, frame = b"*1\r\n$%d\r\n" % size + body + b"\r\n", [body]
    elif codec_name == "mqtt":
        codec = MqttCodec(max_packet_size=8 << 20)
        frame = Publish("t", body)
        wire = codec.encode(frame)
    else:
        from websocket_support import frame as ws_frame

        codec = WebSocketCodec(max_message_size=8 << 20, handshake=False)
        wire, frame = ws_frame(Opcode.BINARY, body), body
    frames: list[Any] = []

    class Keep(gevwire.Handler):
        def on_message(self, conn: Any, message: Any) -> None:
            frames.append(message)

    class Counting(BufferPool):
        takes = 0

        def take(self, capacity: int) -> Any:
            Counting.takes += 1
            return super().take(capacity)

    pipeline, _, _ = make(Keep(), codec, input_ring=RingBuffer(pool=Counting()))
    ring = pipeline.input
    step = 1 << 16
    capacities = set()
    for start in range(0, len(wire) - step, step):
        pipeline.received(wire[start:start + step])
        capacities.add(ring.capacity)
    page = mmap.PAGESIZE
    assert ring.capacity == -(-len(wire) // page) * page
    assert max(capacities) == ring.capacity and len(capacities) <= 4  # no doubling
    assert Counting.takes <= 4  # storage taken once for the frame (not again per read)
    next_frame = wire[:100]  # the start of the next frame, after this one
    pipeline.received(wire[ring.length:] + next_frame)
    assert frames == [frame]
    assert ring.length == 100 and ring.capacity <= 4096  # the large storage went back


def test_decoders_announce_nothing_before_the_header_or_past_their_limit() -> None:
    ring = RingBuffer()
    decoder = _prefixed().decoder()
    assert decoder.announced_length(ring) == 0
    ring.write(struct.pack(">I", 100))
    assert decoder.announced_length(ring) == 104
    ring.reset()
    ring.write(struct.pack(">I", 9 << 20))  # over max_frame_size: decode() raises
    assert decoder.announced_length(ring) == 0
    assert line(max_length=64).decoder().announced_length(ring) == 0  # no header


class Header(Upper):
    """``big`` replies with a small header, a payload over the join limit and a trailer
    (parts, as a codec's ``encode_into`` appends a large payload after its header)."""

    payload = b"p" * (_JOIN_MAX + 1)

    def on_message(self, conn: Any, frame: Any) -> Any:
        self.frames.append(frame)
        return [b"<", self.payload, b">"] if frame == b"big" else bytes(frame)


@pytest.mark.parametrize("high_water", [64 << 10, 1 << 30])
def test_a_large_part_is_written_by_itself_never_copied_into_a_join(high_water: int) -> None:
    """Past the high water mark the gathered parts are flushed in the middle of the read
    (``write``); under it they leave at its end (``batch``): either way the small runs
    are joined and the large payload goes out as the very object the codec gave."""
    handler = Header()
    pipeline, wire, _ = make(handler, Parts(), high_water=high_water)
    assert pipeline.received(b"a\nbig\nb\n") is None
    writes = [data for kind, data in wire.calls if kind in ("write", "batch")]
    assert writes in ([b"a<", handler.payload, b">", b"b"], [b"a<", handler.payload, b">b"])
    assert writes[1] is handler.payload
    assert wire.sent == b"a<" + handler.payload + b">b"


def test_a_waiting_pipeline_keeps_a_large_part_out_of_the_join_too() -> None:
    """The replies of a read that a waiting pipeline answers at once (nothing in flight)
    leave as FramePipeline's do: the large payload as the very object the codec gave."""
    handler = Header()
    wire = Wire()

    class Conn:
        loop = None

    pipeline = WaitingPipeline(Conn(), handler, Parts(), wire, Counters(), high_water=1 << 30)
    wire.pipeline = pipeline
    assert pipeline.received(b"a\nbig\nb\n") is None
    writes = [data for kind, data in wire.calls if kind in ("write", "batch")]
    assert writes == [b"a<", handler.payload, b">b"]
    assert writes[1] is handler.payload


def test_replies_under_the_join_limit_still_leave_as_one_write() -> None:
    pipeline, wire, _ = make(Big(), Parts(), high_water=1 << 30)
    assert pipeline.received(b"a\nbig\n") is None
    assert wire.calls == [("batch", b"a" + b"v" * 102_400)]


class Pieces(Upper):
    """Each reply in three parts, ``<`` body ``>``; the body of ``big`` is over the join
    limit."""

    big = b"p" * (_JOIN_MAX + 1)

    def on_message(self, conn: Any, frame: Any) -> Any:
        return [b"<", self.big if frame == b"big" else bytes(frame) * 4, b">"]


def spy_on_write_parts(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the calls of ``FramePipeline._write_parts`` (the split, per-part path)."""
    calls: list[int] = []
    original = FramePipeline._write_parts

    def spy(self: FramePipeline, write: Any) -> None:
        calls.append(len(self.pending))
        original(self, write)

    monkeypatch.setattr(FramePipeline, "_write_parts", spy)
    return calls


def test_a_flush_in_the_middle_of_a_read_joins_small_parts_into_one_write(
        monkeypatch: pytest.MonkeyPatch) -> None:
    split = spy_on_write_parts(monkeypatch)
    pipeline, wire, _ = make(Pieces(), Parts(), high_water=8)  # each reply is past it
    assert pipeline.received(b"abc\nxy\n") is None
    assert wire.calls == [("write", b"<abcabcabcabc>"), ("write", b"<xyxyxyxy>")]
    assert split == []  # one join, one write: the per-part path is not taken


def test_a_flush_in_the_middle_of_a_read_writes_a_large_part_unjoined(
        monkeypatch: pytest.MonkeyPatch) -> None:
    split = spy_on_write_parts(monkeypatch)
    pipeline, wire, _ = make(Pieces(), Parts(), high_water=8)
    assert pipeline.received(b"ab\nbig\n") is None
    assert [kind for kind, _ in wire.calls] == ["write"] * 4
    writes = [data for _, data in wire.calls]
    assert writes[:2] + writes[3:] == [b"<abababab>", b"<", b">"]
    assert writes[2] is Pieces.big  # the payload itself, never copied into a join
    assert split == [3]


class Closer(Header):
    """As :class:`Header`, and ``big`` asks for a graceful close before its reply."""

    def on_message(self, conn: Any, frame: Any) -> Any:
        if frame == b"big":
            conn.close()
        return super().on_message(conn, frame)


def test_a_close_asked_by_the_handler_does_not_cut_its_large_reply() -> None:
    """``close()`` in a handler still sends the reply it returns: all of it, not the
    header of a large one without its payload."""
    handler = Closer()
    pipeline, wire, _ = make(handler, Parts(), high_water=1 << 30)
    assert pipeline.received(b"a\nbig\nb\n") is None
    writes = [data for kind, data in wire.calls if kind == "batch"]
    assert writes == [b"a<", handler.payload, b">"]  # (b: after the close, not dispatched)
    assert writes[1] is handler.payload
    assert ("close", None) in wire.calls


def test_a_connection_closed_under_a_write_gets_no_more_parts() -> None:
    """A write that closes the connection (past the hard cap the transport resets the
    pipeline) ends the parts: nothing is written to a closed connection."""
    handler = Header()
    pipeline, wire, _ = make(handler, Parts(), high_water=1 << 30)

    def write_then_close(data: bytes) -> None:
        wire.calls.append(("batch", data))
        pipeline.release()  # as Connection._close_now does

    wire._write_batch = write_then_close  # type: ignore[method-assign]
    assert pipeline.received(b"a\nbig\nb\n") is None
    assert wire.calls == [("batch", b"a<")]


def test_a_large_reply_of_a_handler_that_closes_reaches_the_peer_whole(
        serve: ServeFn) -> None:
    big = b"p" * (1 << 20)

    class CloseAfter(gevwire.Handler):
        def on_message(self, conn: gevwire.Connection, frame: bytes) -> bytes:
            if frame == b"big":
                conn.close()
                return big
            return frame

    server = serve(CloseAfter(), codec=length_field(initial_bytes_to_strip=4,
                                                    max_frame_size=2 << 20))
    with socket.create_connection(server.address[:2], timeout=10) as sock:
        sock.sendall(struct.pack(">I", 1) + b"a" + struct.pack(">I", 3) + b"big")
        assert recv_until_eof(sock) == (struct.pack(">I", 1) + b"a"
                                        + struct.pack(">I", len(big)) + big)


class Loop:
    """What a waiting pipeline asks of its event loop, no thread behind it."""

    now = 0.0
    frames_waiting = 0
    frames_offloaded = 0
    offload_wait = 0.0


class Hand:
    """An offloader that keeps each coroutine's work for the test to end by hand."""

    def __init__(self) -> None:
        self.works: list[Any] = []

    def run_coroutine(self, loop: Any, coro: Any, work: Any, pipe: Any,
                      timeout: float | None) -> None:
        coro.close()
        self.works.append(work)


class Slow(Header):
    """As :class:`Header`, and ``slow`` waits (its work ends when the test says)."""

    def on_message(self, conn: Any, frame: Any) -> Any:
        if frame == b"slow":
            return self.wait()
        return super().on_message(conn, frame)

    async def wait(self) -> None:
        """(never run: :class:`Hand` ends the work)"""


class WaitingWire(Wire):
    """A :class:`Wire` with what a waiting pipeline asks of its transport besides."""

    def _hold_for_work(self) -> None:
        pass

    def _unhold_for_work(self) -> None:
        pass

    def _work_done(self) -> None:
        self.calls.append(("work done", None))

    def _closed(self) -> None:
        self.calls.append(("closed", None))


def waiting(handler: Any) -> tuple[WaitingPipeline, Wire, Hand]:
    wire, hand = WaitingWire(), Hand()

    class Conn:
        loop = Loop()

        def close(self) -> None:
            wire._close_gracefully()

    pipeline = WaitingPipeline(Conn(), handler, Parts(), wire, Counters(),
                               high_water=1 << 30, offloader=hand)  # type: ignore[arg-type]
    wire.pipeline = pipeline
    return pipeline, wire, hand


def writes_of(wire: Wire) -> list[bytes]:
    return [data for kind, data in wire.calls if kind in ("write", "batch")]


def test_a_large_reply_queued_behind_work_in_flight_leaves_unjoined_in_order() -> None:
    """A reply that waits for the frame ahead of it keeps its parts: when that frame's
    work ends, the small parts around the large payload are joined and the payload goes
    out as the very object the handler gave, all in frame order."""
    handler = Slow()
    pipeline, wire, hand = waiting(handler)
    assert pipeline.received(b"slow\na\nbig\nb\n") is None
    assert writes_of(wire) == []  # all behind the work in flight
    pipeline.work_done(hand.works[0], b"S", None)
    writes = writes_of(wire)
    assert writes == [b"Sa<", handler.payload, b">b"]
    assert writes[1] is handler.payload
    assert pipeline._queued_bytes == 0


def test_a_waiting_handlers_large_reply_leaves_unjoined_with_those_behind_it() -> None:
    """The reply of the work itself, released with the replies queued behind it."""
    handler = Slow()
    pipeline, wire, hand = waiting(handler)
    assert pipeline.received(b"slow\nslow\nb\n") is None
    pipeline.work_done(hand.works[1], b"T", None)  # the second ends first: it waits
    assert writes_of(wire) == []
    pipeline.work_done(hand.works[0], [b"<", handler.payload, b">"], None)
    writes = writes_of(wire)
    assert writes == [b"<", handler.payload, b">Tb"]
    assert writes[1] is handler.payload


def test_small_replies_released_together_leave_in_one_write() -> None:
    pipeline, wire, hand = waiting(Slow())
    assert pipeline.received(b"slow\na\nb\n") is None
    pipeline.work_done(hand.works[0], [b"S", b"s"], None)
    assert wire.calls == [("write", b"Ssab")]


def test_unordered_replies_keep_a_large_part_unjoined_too() -> None:
    handler = Slow()
    pipeline, wire, hand = waiting(handler)
    pipeline._ordered = False
    assert pipeline.received(b"slow\nslow\n") is None
    pipeline.work_done(hand.works[1], [b"<", handler.payload, b">"], None)
    pipeline.work_done(hand.works[0], b"S", None)
    writes = writes_of(wire)
    assert writes == [b"<", handler.payload, b">", b"S"]
    assert writes[1] is handler.payload


def test_a_graceful_close_waits_for_work_and_sends_a_large_reply_whole() -> None:
    """Closing with work in flight: the replies behind it still leave, all of them."""
    handler = Slow()
    pipeline, wire, hand = waiting(handler)
    assert pipeline.received(b"slow\nbig\n") is None
    pipeline.conn.close()
    assert pipeline.stopped
    pipeline.work_done(hand.works[0], b"S", None)
    writes = writes_of(wire)
    assert writes == [b"S<", handler.payload, b">"]
    assert writes[1] is handler.payload
    assert wire.calls[-1] == ("work done", None)  # then the transport closes
