"""The registered harnesses: one entry a shipped codec configuration, plus the ring
buffer and the framer.

Adding a codec is one entry: a :class:`CodecTarget` with a factory taking a limit, a
small default ``limit`` (so that limits are hit often), a strategy of valid messages,
and, where the codec counts its limit otherwise than in wire bytes, ``limit_of``.  A
codec that offers ``example_strategy()`` (as ``check_codec`` reads it) can use
:func:`codec_target`.  Codecs being written elsewhere register through
:data:`OPTIONAL` once their modules import.
"""

from __future__ import annotations

import importlib
import itertools
import operator
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import construct  # type: ignore[import-untyped]
from construct import this
from hypothesis import strategies as st

from fuzzkit.codec_target import SKIP, CodecTarget, ConstructTarget
from fuzzkit.framer_target import FramerTarget
from fuzzkit.ring_target import RingTarget
from fuzzkit.target import on_load, register
from gevwire import codecs
from gevwire.codec import BaseCodec, Codec
from gevwire.testing import strategy_for

__all__ = ["HEADER", "STREAM_SCHEMA", "codec_target"]

PAYLOADS = st.binary(max_size=64)

#: A schema with a fast (``struct``) decoder and a header layout (``_LayoutDecoder``).
HEADER = construct.Struct(
    "kind" / construct.Enum(construct.Int8ub, ping=1, pong=2, data=3),
    "flags" / construct.Int8ub,
    "id" / construct.Int16ub,
    "length" / construct.Int16ub,
    "payload" / construct.Bytes(this.length),
)
#: A schema with no header layout: parsed by ``_StreamDecoder`` (construct, short reads
#: remembered).
STREAM_SCHEMA = construct.Struct(
    "name" / construct.PascalString(construct.Int8ub, "utf8"),
    "tag" / construct.CString("ascii"),
    "n" / construct.Int16ub,
)


def _payload_size(message: Any, encoded: bytes) -> int:
    return len(message)


def _line_reencode(frame: bytes) -> Any:
    # line() drops a "\r" before "\n": a line that itself ends in "\r" reads back
    # without it (documented), so it cannot round-trip.
    return SKIP if frame.endswith(b"\r") else frame


def codec_target(name: str, make: Callable[[int], BaseCodec], *, limit: int,
                 **options: Any) -> CodecTarget:
    """A :class:`CodecTarget` whose messages come from the codec's own
    ``example_strategy()`` (as :func:`gevwire.testing.check_codec` reads it), or from
    ``strategy_for(codec.schema)`` for a :class:`gevwire.Codec`, and whose frames
    re-encode through ``example_frame``'s inverse only if given ``reencode``."""
    codec = make(limit)
    messages = options.pop("messages", None)
    if messages is None:
        example = getattr(codec, "example_strategy", None)
        if callable(example):
            messages = example()
        elif isinstance(codec, Codec):
            messages = strategy_for(codec.schema, max_size=48)
        else:
            raise TypeError(f"{name}: give messages= (the codec has no example_strategy)")
    if callable(getattr(codec, "example_frame", None)):
        options.setdefault("reencode", None)  # frames are not messages
    return CodecTarget(name=name, make=make, limit=limit, messages=messages, **options)


register(CodecTarget(
    name="raw", about="RawCodec: frames concatenate to the stream",
    make=lambda limit: codecs.raw(), messages=st.binary(min_size=1, max_size=64),
    framing=False, reencode=None, bounded=False,
))
register(CodecTarget(
    name="fixed_length", about="fixed_length(4) (the limit a case pins is the size)",
    make=codecs.fixed_length, limit=4, fits=operator.eq,
    messages=st.binary(min_size=4, max_size=4),
))
register(CodecTarget(
    name="length_field", about="2-byte length, stripped; on_oversize='close'",
    make=lambda limit: codecs.length_field(length_field_length=2, initial_bytes_to_strip=2,
                                           max_frame_size=max(limit, 2)),
    messages=PAYLOADS,
))
register(CodecTarget(
    name="length_field_discard",
    about="a byte before a 2-byte length, all stripped; discard mode, reported late",
    limit=40,
    make=lambda limit: codecs.length_field(length_field_offset=1, length_field_length=2,
                                           initial_bytes_to_strip=3,
                                           max_frame_size=max(limit, 3),
                                           on_oversize="discard", fail_fast=False),
    messages=st.binary(min_size=1, max_size=48),
    reencode=lambda frame: b"\x07" + frame,
))
register(CodecTarget(
    name="length_field_prepender",
    about="LengthFieldPrepender(3, little, counting itself) into the matching decoder",
    make=lambda limit: codecs.length_field(byte_order="little", length_field_length=3,
                                           length_adjustment=-3, initial_bytes_to_strip=3,
                                           max_frame_size=max(limit, 3)),
    messages=PAYLOADS,
    encoder=lambda codec: codecs.length_field_prepender(
        3, byte_order="little", length_includes_length_field=True).encode,
))
register(CodecTarget(
    name="line", about="line(b'\\n') with \\r stripping, max_length 48",
    make=lambda limit: codecs.line(max_length=limit), limit=48,
    messages=PAYLOADS.filter(lambda b: b"\n" not in b and not b.endswith(b"\r")),
    limit_of=_payload_size, reencode=_line_reencode,
))
register(CodecTarget(
    name="line_utf8", about="line(b'\\r\\n', encoding='utf-8'): frames are str",
    make=lambda limit: codecs.line(b"\r\n", max_length=limit, encoding="utf-8"), limit=48,
    messages=st.text(alphabet="ab\r\n\0é€", max_size=24).filter(lambda s: "\r\n" not in s),
    limit_of=lambda message, encoded: len(encoded) - 2,
))
register(CodecTarget(
    name="delimiter", about="delimiter([b'\\0', b'\\r\\n', b'\\n']): overlapping delimiters",
    make=lambda limit: codecs.delimiter([b"\0", b"\r\n", b"\n"],
                                        max_length=limit), limit=48,
    messages=PAYLOADS.filter(lambda b: b"\0" not in b and b"\n" not in b),
    limit_of=_payload_size,
))
register(CodecTarget(
    name="varint", about="varint(): non-canonical prefixes accepted",
    make=lambda limit: codecs.varint(max_frame_size=limit), limit=100,
    messages=st.binary(max_size=140), limit_of=_payload_size,
))
register(CodecTarget(
    name="varint_canonical", about="varint(canonical=True)",
    make=lambda limit: codecs.varint(max_frame_size=limit, canonical=True), limit=100,
    messages=st.binary(max_size=140), limit_of=_payload_size,
))
register(ConstructTarget(
    name="construct", about="Codec(Struct header + Bytes(this.length)): fast decoder",
    make=lambda limit: Codec(HEADER, max_frame_size=limit), limit=80,
    messages=strategy_for(HEADER, max_size=48),
))
register(ConstructTarget(
    name="construct_discard", about="the same schema, on_oversize='discard'",
    make=lambda limit: Codec(HEADER, max_frame_size=limit, on_oversize="discard"), limit=40,
    messages=strategy_for(HEADER, max_size=48),
))
register(ConstructTarget(
    name="construct_prefixed", about="Codec(Prefixed(Int16ub, GreedyBytes)): bytes frames",
    make=lambda limit: Codec(construct.Prefixed(construct.Int16ub, construct.GreedyBytes),
                             max_frame_size=limit),
    messages=PAYLOADS,
))
register(ConstructTarget(
    name="construct_stream",
    about="Codec(PascalString, CString, Int16ub): the generic _StreamDecoder path",
    make=lambda limit: Codec(STREAM_SCHEMA, max_frame_size=limit), limit=48,
    messages=strategy_for(STREAM_SCHEMA, max_size=24),
))
register(RingTarget())
register(FramerTarget())


# -- codecs that may not be there: registered once their module imports ---------------


def _resp_targets(module: Any) -> None:
    register(codec_target("resp", lambda limit: module.resp(max_frame_size=limit), limit=200,
                          about="resp(): any RESP2 value (the codec's example_strategy)"))
    # Whether an over-long malformed frame is "too large" or "malformed" depends on how
    # much of it has arrived: both are fatal, either is right.
    register(codec_target("resp_commands",
                          lambda limit: module.resp(commands=True, max_frame_size=limit),
                          limit=200, about="resp(commands=True): arrays and inline commands",
                          same_errors=False))


def _mqtt_targets(module: Any) -> None:
    register(codec_target("mqtt", lambda limit: module.mqtt(max_packet_size=max(limit, 2)),
                          limit=300, about="mqtt(): MQTT 3.1.1 packets"))
    register(codec_target("mqtt5", lambda limit: module.mqtt(max_packet_size=max(limit, 2),
                                                             protocol_level=5),
                          limit=300, about="mqtt(protocol_level=5): MQTT 5.0 packets, "
                                           "properties and reason codes"))


#: The RFC 6455 example masking key: client frames must be masked.
_MASK = bytes.fromhex("37fa213d")


@dataclass(frozen=True)
class Fragmented:
    """A text or binary WebSocket message sent as several frames: its payload cut at
    ``cuts`` (byte offsets, so a UTF-8 character may be split), with a ping between the
    first two fragments when ``ping`` is not None.  It reads back as the whole message,
    after the ping."""

    message: str | bytes
    cuts: tuple[int, ...]
    ping: bytes | None = None


def _fragmented(draw: Any) -> Fragmented:
    message = draw(st.one_of(st.text(max_size=30), st.binary(max_size=60)))
    size = len(message.encode() if isinstance(message, str) else message)
    cuts = draw(st.lists(st.integers(0, size), min_size=1, max_size=4))
    ping = draw(st.none() | st.binary(max_size=10))
    return Fragmented(message, tuple(sorted(cuts)), ping)


#: Close codes a peer may send (RFC 6455 7.4: 1000-1003, 1007-1011, 3000-4999).
_CLOSE_CODES = st.one_of(st.sampled_from([1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010,
                                          1011]), st.integers(3000, 4999))


def _websocket_targets(module: Any) -> None:
    opcode = module.Opcode

    def payload(message: Any) -> bytes:
        if isinstance(message, str):
            return message.encode()
        if isinstance(message, module.Close):  # a decoded Close, re-encoded
            if message.code == module.CloseCode.NO_STATUS:
                return b""
            return int(message.code).to_bytes(2, "big") + str(message.reason).encode()
        return bytes(message if isinstance(message, bytes) else message.payload)

    def client_encoder(codec: BaseCodec, compress: bool = False) -> Callable[[Any], bytes]:
        """Masked frames as a client sends them; ``compress``: data messages deflated
        on their own (no context takeover), RSV1 on their first frame."""
        kinds = {str: opcode.TEXT, bytes: opcode.BINARY, module.Ping: opcode.PING,
                 module.Pong: opcode.PONG, module.Close: opcode.CLOSE}

        def deflate(data: bytes) -> bytes:
            compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
            return (compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH))[:-4]

        def encode(message: Any) -> bytes:  # what a client sends: masked frames
            if isinstance(message, Fragmented):
                data = payload(message.message)
                if compress:
                    data = deflate(data)
                bounds = [0, *(min(c, len(data)) for c in message.cuts), len(data)]
                frames = []
                for i, (start, end) in enumerate(itertools.pairwise(bounds)):
                    frames.append(module.encode_frame(
                        kinds[type(message.message)] if i == 0 else opcode.CONTINUATION,
                        data[start:end], fin=i == len(bounds) - 2,
                        rsv=4 if compress and i == 0 else 0, mask_key=_MASK))
                    if i == 0 and message.ping is not None:
                        frames.append(module.encode_frame(opcode.PING, message.ping,
                                                          mask_key=_MASK))
                return b"".join(frames)
            if compress and isinstance(message, (str, bytes)):
                return bytes(module.encode_frame(kinds[type(message)],
                                                 deflate(payload(message)), rsv=4,
                                                 mask_key=_MASK))
            return bytes(module.encode_frame(kinds[type(message)], payload(message),
                                             mask_key=_MASK))

        return encode

    class Deflating(module.WebSocketCodec):  # type: ignore[misc]
        """Frames only, with permessage-deflate agreed beforehand (as a handshake with
        ``client_no_context_takeover`` would): each decoder gets its own agreement."""

        def decoder(self) -> Any:
            decoder = super().decoder()
            decoder._deflate = module.PerMessageDeflate(client_no_context_takeover=True)
            return decoder

    def deflating(limit: int) -> BaseCodec:
        # On the wire a compressed message may take what deflate makes of the limit.
        wire = limit + (limit >> 3) + (limit >> 7) + 64 + 14
        codec: BaseCodec = Deflating(max_message_size=limit, handshake=False,
                                     max_frame_size=wire)
        return codec

    def limit_of(message: Any, encoded: bytes) -> int:
        if isinstance(message, Fragmented):  # the whole message counts, and the ping
            return max(len(payload(message.message)), len(message.ping or b""))
        return len(payload(message))

    control = st.binary(max_size=20)
    reason = st.text(st.characters(exclude_categories=["Cs"]), max_size=20)
    register(CodecTarget(
        name="websocket",
        about="WebSocket frames after the handshake, masked as a client sends them: "
              "messages whole or fragmented, pings, pongs and closes",
        make=lambda limit: module.WebSocketCodec(max_message_size=limit, handshake=False),
        limit=64,
        messages=st.one_of(st.text(max_size=40), st.binary(max_size=80),
                           st.builds(module.Ping, control), st.builds(module.Pong, control),
                           st.composite(_fragmented)(),
                           st.builds(module.Close, _CLOSE_CODES, reason),
                           st.just(module.Close(module.CloseCode.NO_STATUS, ""))),
        encoder=client_encoder,
        limit_of=limit_of,
        frames_of=lambda message: 2 if isinstance(message, Fragmented) and message.ping
        is not None else 1,
        ends_stream=lambda message: isinstance(message, module.Close),
    ))
    register(CodecTarget(
        name="websocket_deflate",
        about="WebSocket frames with permessage-deflate agreed: compressed messages whole "
              "or fragmented, pings, pongs and closes; the limit counts inflated bytes",
        make=deflating,
        limit=64,
        messages=st.one_of(st.text(max_size=40), st.binary(max_size=80),
                           st.text(alphabet="ab", min_size=60, max_size=400),
                           st.builds(module.Ping, control), st.composite(_fragmented)(),
                           st.builds(module.Close, _CLOSE_CODES, reason)),
        encoder=lambda codec: client_encoder(codec, compress=True),
        limit_of=limit_of,
        frames_of=lambda message: 2 if isinstance(message, Fragmented) and message.ping
        is not None else 1,
        ends_stream=lambda message: isinstance(message, module.Close),
    ))


#: Codecs being written as ``codecs/<module>.py``: module -> the function that registers
#: their targets once the module imports (see :func:`_optional_codecs`).
OPTIONAL: dict[str, Callable[[Any], None]] = {
    "resp": _resp_targets,
    "mqtt": _mqtt_targets,
    "websocket": _websocket_targets,
}


@on_load
def _optional_codecs() -> None:
    for module_name, add in OPTIONAL.items():
        add(importlib.import_module(f"gevwire.codecs.{module_name}"))  # shipped: must import
