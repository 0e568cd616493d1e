"""MQTT 3.1.1 control packets (OASIS standard, 2014): framing, decoding and encoding.

A packet is a fixed header (one byte of type and flags, then the *remaining length*, a
base-128 varint of one to four bytes) and a body of that length.  The decoder reads the
header first: a packet type of 0 or 15, flag bits the spec reserves for the type set
wrongly, a fifth length byte, or a body size that a fixed-size packet cannot have is a
:class:`~gevwire.errors.FrameError` at once; a packet longer than ``max_packet_size``
(fixed header included) is :class:`~gevwire.errors.FrameTooLarge` before its body is
buffered.  Bodies are checked as the spec requires (UTF-8 strings without U+0000,
non-zero packet identifiers, QoS 0-2, reserved bits zero, at least one topic in
SUBSCRIBE / UNSUBSCRIBE, no wildcard in a PUBLISH topic); a violation is a
``FrameError``, after which the connection closes, as the spec asks.

Packets decode to small dataclasses (:class:`Connect`, :class:`Publish`, ...) whose
``type`` is the packet name, so ``gevwire.Router(key="type")`` routes them::

    router = gevwire.Router(key="type")

    @router.on("pingreq")
    def ping(conn, packet):
        return PingResp()

    gevwire.Server(router, codec=mqtt())

``encode`` takes the same objects, a dict with a ``"type"`` key (``{"type": "puback",
"packet_id": 7}``), or ``bytes`` of an already encoded packet (sent as they are, so a
broker can encode a message once for many subscribers).

The bodies are declared with construct below, and CONNECT (rare, with fields that
depend on its flags) is parsed and built by construct itself.  The other packets are cut
with ``struct`` by hand, and the tests hold them to the declarations on valid and
damaged bodies: gevwire's derived ``struct`` decoder covers the PUBLISH declaration, but
it returns a construct ``Container``, whose attribute reads cost about 1 µs each, and a
PUBLISH decoded by hand takes half the time; construct's ``GreedyRange`` (the topic
lists) would also drop a truncated last entry silently.  Whole packets are cut straight
from the connection's read buffer when they arrive whole (``decode_view``).
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable, Collection
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, ClassVar, TypeAlias

import construct as c  # type: ignore[import-untyped]

from gevwire.codec import BaseCodec, CutAheadDecoder, Decoder
from gevwire.errors import EncodeError, FrameError, FrameTooLarge
from gevwire.ringbuffer import RingBuffer

from ._util import as_bytes

if TYPE_CHECKING:
    from hypothesis.strategies import SearchStrategy

__all__ = [
    "CONNECT_BODY",
    "MAX_REMAINING_LENGTH",
    "PACKET_TYPES",
    "SUBACK_FAILURE",
    "ConnAck",
    "Connect",
    "Disconnect",
    "MqttCodec",
    "Packet",
    "PingReq",
    "PingResp",
    "PubAck",
    "PubComp",
    "PubRec",
    "PubRel",
    "Publish",
    "SubAck",
    "Subscribe",
    "UnsubAck",
    "Unsubscribe",
    "Will",
    "mqtt",
    "packet_from_dict",
    "topic_matches",
    "valid_topic_filter",
    "valid_topic_name",
]

Buffer: TypeAlias = bytes | bytearray | memoryview

MAX_REMAINING_LENGTH = 268_435_455
"""The largest remaining length four varint bytes hold (spec 2.2.3)."""

#: SUBACK return code for a refused subscription.
SUBACK_FAILURE = 0x80

# -- declarations ----------------------------------------------------------------------

#: A length-prefixed UTF-8 string (spec 1.5.3).
UTF8 = c.PascalString(c.Int16ub, "utf8")
#: Length-prefixed binary data (spec 1.5.3 framing, used by the will message, password).
BINARY = c.Prefixed(c.Int16ub, c.GreedyBytes)

CONNECT_FLAGS = c.BitStruct(
    "username" / c.Flag,
    "password" / c.Flag,
    "will_retain" / c.Flag,
    "will_qos" / c.BitsInteger(2),
    "will" / c.Flag,
    "clean_session" / c.Flag,
    "reserved" / c.Flag,
)
#: CONNECT's variable header and payload (spec 3.1.2, 3.1.3).
CONNECT_BODY = c.Struct(
    "protocol_name" / UTF8,
    "protocol_level" / c.Int8ub,
    "flags" / CONNECT_FLAGS,
    "keep_alive" / c.Int16ub,
    "client_id" / UTF8,
    "will_topic" / c.If(c.this.flags.will, UTF8),
    "will_message" / c.If(c.this.flags.will, BINARY),
    "username" / c.If(c.this.flags.username, UTF8),
    "password" / c.If(c.this.flags.password, BINARY),
)
#: CONNACK (spec 3.2): acknowledge flags (bit 0: session present), return code.
CONNACK_BODY = c.Struct("ack_flags" / c.Int8ub, "return_code" / c.Int8ub)
#: PUBLISH at QoS 0 (spec 3.3): the topic is read as bytes, then checked as UTF-8.
PUBLISH_BODY_QOS0 = c.Struct("topic" / BINARY, "payload" / c.GreedyBytes)
#: PUBLISH at QoS 1 and 2: a packet identifier follows the topic.
PUBLISH_BODY = c.Struct("topic" / BINARY, "packet_id" / c.Int16ub, "payload" / c.GreedyBytes)
#: PUBACK, PUBREC, PUBREL, PUBCOMP, UNSUBACK.
PACKET_ID_BODY = c.Struct("packet_id" / c.Int16ub)
#: SUBSCRIBE (spec 3.8): topic filters with their requested QoS.
SUBSCRIBE_BODY = c.Struct(
    "packet_id" / c.Int16ub,
    "topics" / c.GreedyRange(c.Struct("topic_filter" / UTF8, "options" / c.Int8ub)),
)
#: SUBACK (spec 3.9): one return code per topic filter.
SUBACK_BODY = c.Struct("packet_id" / c.Int16ub, "return_codes" / c.GreedyBytes)
#: UNSUBSCRIBE (spec 3.10).
UNSUBSCRIBE_BODY = c.Struct("packet_id" / c.Int16ub, "topics" / c.GreedyRange(UTF8))


_U16 = struct.Struct(">H")

# -- packets ---------------------------------------------------------------------------


class Packet:
    """Base of the packet classes: ``packet["field"]`` reads a field (for ``Router``)."""

    __slots__ = ()
    #: The packet's name (``"publish"``): what ``Router(key="type")`` routes on.
    type: ClassVar[str]
    #: The control packet type number of the fixed header (1-14).
    packet_type: ClassVar[int]

    def __getitem__(self, key: str) -> Any:
        try:
            return getattr(self, key)
        except AttributeError:
            raise KeyError(key) from None


@dataclass(slots=True)
class Will:
    """A CONNECT's will: published for the client if it goes away without DISCONNECT."""

    topic: str
    message: bytes = b""
    qos: int = 0
    retain: bool = False


@dataclass(slots=True)
class Connect(Packet):
    """CONNECT: the first packet a client sends."""

    type: ClassVar[str] = "connect"
    packet_type: ClassVar[int] = 1
    client_id: str = ""
    clean_session: bool = True
    keep_alive: int = 60
    will: Will | None = None
    username: str | None = None
    password: bytes | None = None
    protocol_name: str = "MQTT"
    protocol_level: int = 4


@dataclass(slots=True)
class ConnAck(Packet):
    """CONNACK: 0 accepted; 1 bad protocol level, 2 identifier rejected, 3 server
    unavailable, 4 bad user name or password, 5 not authorized."""

    type: ClassVar[str] = "connack"
    packet_type: ClassVar[int] = 2
    return_code: int = 0
    session_present: bool = False


@dataclass(slots=True)
class Publish(Packet):
    """PUBLISH: an application message; ``packet_id`` is set exactly when ``qos > 0``."""

    type: ClassVar[str] = "publish"
    packet_type: ClassVar[int] = 3
    topic: str
    payload: bytes = b""
    qos: int = 0
    retain: bool = False
    dup: bool = False
    packet_id: int | None = None


@dataclass(slots=True)
class PubAck(Packet):
    """PUBACK: acknowledges a QoS 1 PUBLISH."""

    type: ClassVar[str] = "puback"
    packet_type: ClassVar[int] = 4
    packet_id: int


@dataclass(slots=True)
class PubRec(Packet):
    """PUBREC: first reply to a QoS 2 PUBLISH."""

    type: ClassVar[str] = "pubrec"
    packet_type: ClassVar[int] = 5
    packet_id: int


@dataclass(slots=True)
class PubRel(Packet):
    """PUBREL: answers PUBREC."""

    type: ClassVar[str] = "pubrel"
    packet_type: ClassVar[int] = 6
    packet_id: int


@dataclass(slots=True)
class PubComp(Packet):
    """PUBCOMP: ends a QoS 2 exchange."""

    type: ClassVar[str] = "pubcomp"
    packet_type: ClassVar[int] = 7
    packet_id: int


@dataclass(slots=True)
class Subscribe(Packet):
    """SUBSCRIBE: ``(topic filter, requested QoS)`` pairs."""

    type: ClassVar[str] = "subscribe"
    packet_type: ClassVar[int] = 8
    packet_id: int
    topics: tuple[tuple[str, int], ...]


@dataclass(slots=True)
class SubAck(Packet):
    """SUBACK: the granted QoS per filter, or 0x80 (failure)."""

    type: ClassVar[str] = "suback"
    packet_type: ClassVar[int] = 9
    packet_id: int
    return_codes: tuple[int, ...]


@dataclass(slots=True)
class Unsubscribe(Packet):
    """UNSUBSCRIBE: topic filters to drop."""

    type: ClassVar[str] = "unsubscribe"
    packet_type: ClassVar[int] = 10
    packet_id: int
    topics: tuple[str, ...]


@dataclass(slots=True)
class UnsubAck(Packet):
    """UNSUBACK."""

    type: ClassVar[str] = "unsuback"
    packet_type: ClassVar[int] = 11
    packet_id: int


@dataclass(slots=True)
class PingReq(Packet):
    """PINGREQ: keep-alive from the client."""

    type: ClassVar[str] = "pingreq"
    packet_type: ClassVar[int] = 12


@dataclass(slots=True)
class PingResp(Packet):
    """PINGRESP."""

    type: ClassVar[str] = "pingresp"
    packet_type: ClassVar[int] = 13


@dataclass(slots=True)
class Disconnect(Packet):
    """DISCONNECT: the client closes cleanly (its will is discarded)."""

    type: ClassVar[str] = "disconnect"
    packet_type: ClassVar[int] = 14


#: Packet classes by name (``"publish"``) — also how dict messages are encoded.
PACKET_TYPES: dict[str, type[Packet]] = {
    cls.type: cls
    for cls in (Connect, ConnAck, Publish, PubAck, PubRec, PubRel, PubComp, Subscribe,
                SubAck, Unsubscribe, UnsubAck, PingReq, PingResp, Disconnect)
}

# -- topics ----------------------------------------------------------------------------


def valid_topic_name(topic: str) -> bool:
    """A PUBLISH topic: 1-65535 UTF-8 bytes, no ``+`` / ``#`` wildcard, no U+0000."""
    return (
        bool(topic)
        and "+" not in topic
        and "#" not in topic
        and "\x00" not in topic
        and len(topic.encode("utf-8", "surrogatepass")) <= 0xFFFF
    )


def valid_topic_filter(topic_filter: str) -> bool:
    """A SUBSCRIBE filter (spec 4.7.1): ``+`` fills a whole level, ``#`` is alone in the
    last level, at least one character, no U+0000."""
    if not topic_filter or "\x00" in topic_filter:
        return False
    levels = topic_filter.split("/")
    last = len(levels) - 1
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != last):
            return False
        if "+" in level and level != "+":
            return False
    return True


def topic_matches(topic_filter: str, topic: str) -> bool:
    """True when the (valid) filter matches the topic name (spec 4.7): ``+`` one level,
    ``#`` this level and all below, and wildcards at the first level never match topics
    that start with ``$``."""
    f_levels = topic_filter.split("/")
    t_levels = topic.split("/")
    if topic.startswith("$") and f_levels[0] in ("+", "#"):
        return False
    for i, level in enumerate(f_levels):
        if level == "#":
            return True
        if i >= len(t_levels) or (level != "+" and level != t_levels[i]):
            return False
    return len(f_levels) == len(t_levels)


# -- decoding --------------------------------------------------------------------------


def _utf8(raw: bytes, what: str) -> str:
    try:
        text = raw.decode("utf-8")  # strict: refuses surrogates and overlong forms
    except UnicodeDecodeError as exc:
        raise FrameError(f"{what} is not valid UTF-8") from exc
    if "\x00" in text:
        raise FrameError(f"{what} contains U+0000")
    return text


def _packet_id(value: int, what: str) -> int:
    if not value:
        raise FrameError(f"{what} has packet identifier 0")
    return value


_Parse: TypeAlias = Callable[[Buffer, int, int, int], Packet]


def _parse_connect(data: Buffer, start: int, end: int, flags: int) -> Packet:
    stream = io.BytesIO(bytes(data[start:end]))
    try:
        body = CONNECT_BODY.parse_stream(stream)
    except (c.ConstructError, UnicodeDecodeError) as exc:
        raise FrameError(f"malformed CONNECT: {type(exc).__name__}") from exc
    if stream.tell() != end - start:
        raise FrameError("CONNECT has bytes after its payload")
    f = body.flags
    if f.reserved:
        raise FrameError("CONNECT reserved flag is set")
    if f.will_qos == 3:
        raise FrameError("CONNECT will QoS is 3")
    if not f.will and (f.will_qos or f.will_retain):
        raise FrameError("CONNECT will QoS / retain set without a will")
    if f.password and not f.username:
        raise FrameError("CONNECT password flag set without a user name")
    for name in ("protocol_name", "client_id", "will_topic", "username"):
        value = body[name]
        if value is not None and "\x00" in value:
            raise FrameError(f"CONNECT {name} contains U+0000")
    will = None
    if f.will:
        if not valid_topic_name(body.will_topic):
            raise FrameError(f"CONNECT will topic {body.will_topic!r} is not a topic name")
        will = Will(body.will_topic, body.will_message, f.will_qos, f.will_retain)
    return Connect(body.client_id, f.clean_session, body.keep_alive, will, body.username,
                   body.password, body.protocol_name, body.protocol_level)


def _parse_connack(data: Buffer, start: int, end: int, flags: int) -> Packet:
    ack_flags, return_code = data[start], data[start + 1]  # length checked: 2
    if ack_flags > 1:
        raise FrameError("CONNACK reserved flag bits are set")
    return ConnAck(return_code, ack_flags == 1)


def _parse_publish(data: Buffer, start: int, end: int, flags: int) -> Packet:
    if end - start < 2:
        raise FrameError("PUBLISH without a topic")
    topic_end = start + 2 + _U16.unpack_from(data, start)[0]
    qos = (flags >> 1) & 3
    if qos:
        if topic_end + 2 > end:
            raise FrameError("PUBLISH truncated before its packet identifier")
        packet_id: int | None = _packet_id(_U16.unpack_from(data, topic_end)[0], "PUBLISH")
        payload_start = topic_end + 2
    else:
        if topic_end > end:
            raise FrameError("PUBLISH topic longer than the packet")
        packet_id = None
        payload_start = topic_end
    try:
        topic = str(data[start + 2 : topic_end], "utf-8")
    except UnicodeDecodeError as exc:
        raise FrameError("PUBLISH topic is not valid UTF-8") from exc
    if not topic or "+" in topic or "#" in topic or "\x00" in topic:
        raise FrameError(f"PUBLISH topic {topic!r} is empty or has a wildcard or U+0000")
    return Publish(topic, bytes(data[payload_start:end]), qos, flags & 1 == 1, flags & 8 == 8,
                   packet_id)


def _id_parser(cls: Any) -> _Parse:
    name = cls.type.upper()
    unpack_from = _U16.unpack_from

    def parse(data: Buffer, start: int, end: int, flags: int) -> Packet:
        packet: Packet = cls(_packet_id(unpack_from(data, start)[0], name))
        return packet

    return parse


def _read_utf8(data: Buffer, pos: int, end: int, what: str) -> tuple[str, int]:
    if pos + 2 > end:
        raise FrameError(f"{what}: truncated string length")
    (size,) = _U16.unpack_from(data, pos)
    pos += 2
    if pos + size > end:
        raise FrameError(f"{what}: string of {size} bytes, {end - pos} left")
    return _utf8(bytes(data[pos : pos + size]), what), pos + size


def _filters(data: Buffer, pos: int, end: int, what: str, with_qos: bool) -> list[Any]:
    """The topic filters of a SUBSCRIBE (``(filter, QoS byte)`` pairs) or UNSUBSCRIBE
    body: one loop, each distinct filter decoded once (a packet may repeat one 100,000s
    of times; this is a packet's whole cost, so it is kept tight)."""
    body = bytes(data[pos:end])
    n = len(body)
    i = 0
    out: list[Any] = []
    append = out.append
    decoded: dict[bytes, str] = {}
    while i < n:
        if i + 2 > n:
            raise FrameError(f"{what}: truncated string length")
        size = (body[i] << 8) | body[i + 1]
        i += 2
        stop = i + size
        if stop > n:
            raise FrameError(f"{what}: string of {size} bytes, {n - i} left")
        raw = body[i:stop]
        text = decoded.get(raw)
        if text is None:
            text = decoded[raw] = _utf8(raw, what)
        if with_qos:
            if stop >= n:
                raise FrameError(f"{what} without its QoS byte")
            options = body[stop]
            if options > 2:
                raise FrameError(f"SUBSCRIBE requested QoS byte {options:#04x}")
            append((text, options))
            i = stop + 1
        else:
            append(text)
            i = stop
    return out


def _parse_subscribe(data: Buffer, start: int, end: int, flags: int) -> Packet:
    if end - start < 2:
        raise FrameError("SUBSCRIBE without a packet identifier")
    packet_id = _packet_id(_U16.unpack_from(data, start)[0], "SUBSCRIBE")
    topics = _filters(data, start + 2, end, "SUBSCRIBE topic filter", True)
    if not topics:
        raise FrameError("SUBSCRIBE with no topic filter")
    return Subscribe(packet_id, tuple(topics))


def _parse_suback(data: Buffer, start: int, end: int, flags: int) -> Packet:
    if end - start < 3:
        raise FrameError("SUBACK without a packet identifier and return codes")
    packet_id = _packet_id(_U16.unpack_from(data, start)[0], "SUBACK")
    codes = tuple(bytes(data[start + 2 : end]))
    for code in codes:
        if code > 2 and code != SUBACK_FAILURE:
            raise FrameError(f"SUBACK return code {code:#04x}")
    return SubAck(packet_id, codes)


def _parse_unsubscribe(data: Buffer, start: int, end: int, flags: int) -> Packet:
    if end - start < 2:
        raise FrameError("UNSUBSCRIBE without a packet identifier")
    packet_id = _packet_id(_U16.unpack_from(data, start)[0], "UNSUBSCRIBE")
    topics = _filters(data, start + 2, end, "UNSUBSCRIBE topic filter", False)
    if not topics:
        raise FrameError("UNSUBSCRIBE with no topic filter")
    return Unsubscribe(packet_id, tuple(topics))


def _singleton(packet: Packet) -> _Parse:
    def parse(data: Buffer, start: int, end: int, flags: int) -> Packet:
        return packet

    return parse


_PINGREQ, _PINGRESP, _DISCONNECT = PingReq(), PingResp(), Disconnect()

# By packet type: the parser, the fixed-header flags the spec requires (None: PUBLISH's
# own flags) and the remaining length a fixed-size packet must have (-1: any).
_TYPES: dict[int, tuple[_Parse, int | None, int]] = {
    1: (_parse_connect, 0, -1),
    2: (_parse_connack, 0, 2),
    3: (_parse_publish, None, -1),
    4: (_id_parser(PubAck), 0, 2),
    5: (_id_parser(PubRec), 0, 2),
    6: (_id_parser(PubRel), 2, 2),
    7: (_id_parser(PubComp), 0, 2),
    8: (_parse_subscribe, 2, -1),
    9: (_parse_suback, 0, -1),
    10: (_parse_unsubscribe, 2, -1),
    11: (_id_parser(UnsubAck), 0, 2),
    12: (_singleton(_PINGREQ), 0, 0),
    13: (_singleton(_PINGRESP), 0, 0),
    14: (_singleton(_DISCONNECT), 0, 0),
}


def _first_byte_table() -> tuple[list[_Parse | None], list[int]]:
    """Parser and exact remaining length (-1: any) for each possible first byte; None
    for a first byte no valid packet starts with."""
    parsers: list[_Parse | None] = [None] * 256
    exact = [-1] * 256
    for first in range(256):
        kind, flags = first >> 4, first & 0x0F
        entry = _TYPES.get(kind)
        if entry is None:
            continue
        parse, required, size = entry
        if required is None:  # PUBLISH: QoS 3 is malformed, and so is DUP at QoS 0
            qos = (flags >> 1) & 3
            if qos == 3 or (qos == 0 and flags & 8):
                continue
        elif flags != required:
            continue
        parsers[first] = parse
        exact[first] = size
    return parsers, exact


_PARSERS, _EXACT = _first_byte_table()


def _bad_first_byte(first: int) -> FrameError:
    kind, flags = first >> 4, first & 0x0F
    if kind not in _TYPES:
        return FrameError(f"reserved control packet type {kind}")
    if kind == 3:
        return FrameError(f"PUBLISH flags {flags:#06b}: QoS 3, or DUP set at QoS 0")
    return FrameError(f"packet type {kind} with reserved flags {flags:#06b}")


def _frame_size(buf: Buffer, pos: int, end: int, limit: int) -> tuple[int, int]:
    """``(packet size, fixed header size)`` of the packet at ``buf[pos:end]``, or
    ``(-1, 0)`` until its fixed header is whole.  Raises for a malformed header or a
    packet over ``limit`` bytes."""
    first = buf[pos]
    if _PARSERS[first] is None:
        raise _bad_first_byte(first)
    remaining = 0
    shift = 0
    i = pos + 1
    while True:
        if i >= end:
            return -1, 0
        b = buf[i]
        i += 1
        remaining |= (b & 0x7F) << shift
        if b < 0x80:
            break
        shift += 7
        if shift == 28:
            raise FrameError("remaining length longer than 4 bytes")
    header = i - pos
    exact = _EXACT[first]
    if exact >= 0 and remaining != exact:
        raise FrameError(f"packet type {first >> 4} with remaining length {remaining}, "
                         f"not {exact}")
    total = header + remaining
    if total > limit:
        raise FrameTooLarge(total, limit)
    return total, header


def _parse(data: Buffer, pos: int, header: int, total: int) -> Packet:
    first = data[pos]
    parse = _PARSERS[first]
    assert parse is not None  # checked by _frame_size
    return parse(data, pos + header, pos + total, first & 0x0F)


class _MqttDecoder(CutAheadDecoder):
    __slots__ = ("_limit",)

    def __init__(self, limit: int) -> None:
        super().__init__()
        self._limit = limit

    def decode_one(self, ring: RingBuffer) -> Packet | None:
        n = ring.length
        if n < 2:
            return None
        first, second = ring.peek(5)
        head = bytes(first) + bytes(second) if len(second) else first
        total, header = _frame_size(head, 0, len(head), self._limit)
        if total < 0 or n < total:
            return None
        packet = _parse(ring.contiguous(total), 0, header, total)
        ring.retrieve(total)
        return packet

    def announced_length(self, ring: RingBuffer) -> int:
        n = ring.length
        if self._ahead or n < 2:
            return 0
        first, second = ring.peek(5)
        head = bytes(first) + bytes(second) if len(second) else first
        try:
            total, _ = _frame_size(head, 0, len(head), self._limit)
        except FrameError:
            return 0  # decode() reports it
        return total if total > n else 0

    def cut_view(self, view: memoryview) -> tuple[list[Any], int]:
        frames: list[Any] = []
        pos = 0
        end = len(view)
        limit = self._limit
        try:
            while end - pos >= 2:
                total, header = _frame_size(view, pos, end, limit)
                if total < 0 or end - pos < total:
                    break
                frames.append(_parse(view, pos, header, total))
                pos += total
        except FrameError:
            pass  # decode() meets the same bytes next and reports the error in order
        return frames, pos


# -- encoding --------------------------------------------------------------------------


def _fixed_header(first: int, remaining: int) -> bytes:
    if remaining < 0x80:
        return bytes((first, remaining))
    if remaining > MAX_REMAINING_LENGTH:
        raise EncodeError(f"remaining length {remaining} exceeds {MAX_REMAINING_LENGTH}")
    out = bytearray((first,))
    while remaining >= 0x80:
        out.append((remaining & 0x7F) | 0x80)
        remaining >>= 7
    out.append(remaining)
    return bytes(out)


def _check_id(packet_id: Any) -> int:
    if type(packet_id) is not int or not 0 < packet_id <= 0xFFFF:
        raise EncodeError(f"packet identifier {packet_id!r} is not in 1..65535")
    return packet_id


def _string(text: str, what: str) -> bytes:
    raw = text.encode("utf-8")
    if len(raw) > 0xFFFF or "\x00" in text:
        raise EncodeError(f"{what} is over 65535 bytes or contains U+0000")
    return _U16.pack(len(raw)) + raw


def _qos(value: Any, what: str) -> int:
    if type(value) is not int or not 0 <= value <= 2:
        raise EncodeError(f"{what} QoS {value!r} is not 0, 1 or 2")
    return value


def _encode_publish(p: Publish) -> bytes:
    qos = _qos(p.qos, "PUBLISH")
    topic = p.topic.encode("utf-8")  # UnicodeEncodeError for a surrogate: EncodeError
    if not 0 < len(topic) <= 0xFFFF or b"+" in topic or b"#" in topic or b"\0" in topic:
        raise EncodeError(f"PUBLISH topic {p.topic!r} is not a valid topic name")
    payload = as_bytes(p.payload)
    if qos:
        head = _U16.pack(len(topic)) + topic + _U16.pack(_check_id(p.packet_id))
    else:
        if p.packet_id is not None or p.dup:
            raise EncodeError("a QoS 0 PUBLISH has no packet identifier and no DUP flag")
        head = _U16.pack(len(topic)) + topic
    first = 0x30 | (8 if p.dup else 0) | (qos << 1) | (1 if p.retain else 0)
    return _fixed_header(first, len(head) + len(payload)) + head + payload


def _encode_connect(p: Connect) -> bytes:
    will = p.will
    if p.password is not None and p.username is None:
        raise EncodeError("CONNECT with a password needs a user name (spec 3.1.2-22)")
    if will is not None:
        _qos(will.qos, "will")
        if not valid_topic_name(will.topic):
            raise EncodeError(f"will topic {will.topic!r} is not a valid topic name")
    for text in (p.protocol_name, p.client_id, p.username):
        if text is not None and "\x00" in text:
            raise EncodeError("CONNECT strings must not contain U+0000")
    value = {
        "protocol_name": p.protocol_name,
        "protocol_level": p.protocol_level,
        "flags": {
            "username": p.username is not None,
            "password": p.password is not None,
            "will_retain": bool(will and will.retain),
            "will_qos": will.qos if will else 0,
            "will": will is not None,
            "clean_session": bool(p.clean_session),
            "reserved": False,
        },
        "keep_alive": p.keep_alive,
        "client_id": p.client_id,
        "will_topic": will.topic if will else None,
        "will_message": as_bytes(will.message) if will else None,
        "username": p.username,
        "password": None if p.password is None else as_bytes(p.password),
    }
    try:
        body: bytes = CONNECT_BODY.build(value)
    except (c.ConstructError, ValueError, TypeError, UnicodeEncodeError) as exc:
        raise EncodeError(f"cannot encode {p!r}: {exc}") from exc
    return _fixed_header(0x10, len(body)) + body


def _encode_connack(p: ConnAck) -> bytes:
    if type(p.return_code) is not int or not 0 <= p.return_code <= 0xFF:
        raise EncodeError(f"CONNACK return code {p.return_code!r}")
    return bytes((0x20, 2, 1 if p.session_present else 0, p.return_code))


def _encode_subscribe(p: Subscribe) -> bytes:
    if not p.topics:
        raise EncodeError("SUBSCRIBE needs at least one topic filter")
    parts = [_U16.pack(_check_id(p.packet_id))]
    for topic_filter, qos in p.topics:
        parts.append(_string(topic_filter, "topic filter"))
        parts.append(bytes((_qos(qos, "requested"),)))
    body = b"".join(parts)
    return _fixed_header(0x82, len(body)) + body


def _encode_suback(p: SubAck) -> bytes:
    if not p.return_codes:
        raise EncodeError("SUBACK needs at least one return code")
    for code in p.return_codes:
        if code not in (0, 1, 2, SUBACK_FAILURE):
            raise EncodeError(f"SUBACK return code {code!r}")
    body = _U16.pack(_check_id(p.packet_id)) + bytes(p.return_codes)
    return _fixed_header(0x90, len(body)) + body


def _encode_unsubscribe(p: Unsubscribe) -> bytes:
    if not p.topics:
        raise EncodeError("UNSUBSCRIBE needs at least one topic filter")
    body = _U16.pack(_check_id(p.packet_id)) + b"".join(
        _string(t, "topic filter") for t in p.topics)
    return _fixed_header(0xA2, len(body)) + body


def _id_encoder(first: int) -> Callable[[Any], bytes]:
    def encode(p: Any) -> bytes:
        return bytes((first, 2)) + _U16.pack(_check_id(p.packet_id))

    return encode


def _constant(data: bytes) -> Callable[[Any], bytes]:
    return lambda p: data


_ENCODERS: dict[type[Packet], Callable[[Any], bytes]] = {
    Connect: _encode_connect,
    ConnAck: _encode_connack,
    Publish: _encode_publish,
    PubAck: _id_encoder(0x40),
    PubRec: _id_encoder(0x50),
    PubRel: _id_encoder(0x62),
    PubComp: _id_encoder(0x70),
    Subscribe: _encode_subscribe,
    SubAck: _encode_suback,
    Unsubscribe: _encode_unsubscribe,
    UnsubAck: _id_encoder(0xB0),
    PingReq: _constant(b"\xc0\x00"),
    PingResp: _constant(b"\xd0\x00"),
    Disconnect: _constant(b"\xe0\x00"),
}


def packet_from_dict(message: dict[str, Any]) -> Packet:
    """The packet a dict describes: ``{"type": "publish", "topic": "a/b", ...}``; nested
    ``will`` dicts become :class:`Will`, lists become tuples."""
    try:
        cls = PACKET_TYPES[message["type"]]
    except (KeyError, TypeError):
        raise EncodeError(f"no packet type in {message!r}") from None
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    values = {k: v for k, v in message.items() if k != "type"}
    unknown = set(values) - names
    if unknown:
        raise EncodeError(f"{cls.__name__} has no field(s) {sorted(unknown)}")
    if isinstance(values.get("will"), dict):
        values["will"] = Will(**values["will"])
    for key in ("topics", "return_codes"):
        if isinstance(values.get(key), list):
            values[key] = tuple(tuple(t) if isinstance(t, list) else t for t in values[key])
    try:
        return cls(**values)
    except TypeError as exc:
        raise EncodeError(f"cannot make a {cls.__name__} of {message!r}: {exc}") from exc


class MqttCodec(BaseCodec):
    """MQTT 3.1.1 packets; see the module docstring.

    ``max_packet_size`` bounds a whole packet, fixed header included (the codec's
    ``max_frame_size``); at most :data:`MAX_REMAINING_LENGTH` plus the 5-byte header.
    """

    def __init__(self, *, max_packet_size: int = 1 << 20) -> None:
        if not 2 <= max_packet_size <= MAX_REMAINING_LENGTH + 5:
            raise ValueError(f"max_packet_size must be in 2..{MAX_REMAINING_LENGTH + 5}")
        self.max_frame_size = max_packet_size

    @property
    def max_packet_size(self) -> int:
        """The largest packet accepted (the same as ``max_frame_size``)."""
        return self.max_frame_size

    def decoder(self) -> Decoder:
        return _MqttDecoder(self.max_frame_size)

    def encode(self, message: Any) -> bytes:
        encoder = _ENCODERS.get(type(message))
        if encoder is None:
            if isinstance(message, dict):
                message = packet_from_dict(message)
                encoder = _ENCODERS[type(message)]
            elif isinstance(message, (bytes, bytearray, memoryview)):
                return bytes(message)  # an already encoded packet
            else:
                raise EncodeError(f"cannot encode {type(message).__name__} as MQTT")
        try:
            return encoder(message)
        except EncodeError:
            raise
        except (struct.error, ValueError, TypeError, AttributeError, OverflowError) as exc:
            raise EncodeError(f"cannot encode {message!r}: {exc}") from exc

    def __repr__(self) -> str:
        return f"MqttCodec(max_packet_size={self.max_frame_size})"

    # -- for gevwire.testing.check_codec and fuzz/ ---------------------------------------

    def example_strategy(self, kinds: Collection[str] | None = None) -> SearchStrategy[Packet]:
        """A hypothesis strategy of valid packets (of the types named in ``kinds``, by
        default every type), equal to what they decode back to."""
        return _packet_strategy(kinds)


def _packet_strategy(kinds: Collection[str] | None) -> SearchStrategy[Packet]:
    from hypothesis import strategies as st

    text = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"),
                   max_size=24)
    level = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00/+#"),
                    max_size=4)
    names = st.lists(level, min_size=1, max_size=4).map("/".join).filter(bool)
    filters = st.builds(
        lambda levels, multi: "/".join([*levels, "#"] if multi else levels),
        st.lists(st.one_of(level, st.just("+")), max_size=4), st.booleans(),
    ).filter(bool)
    ids = st.integers(1, 0xFFFF)
    qos = st.integers(0, 2)
    payloads = st.one_of(st.binary(max_size=32), st.binary(min_size=100, max_size=400))

    @st.composite
    def publishes(draw: st.DrawFn) -> Publish:
        level = draw(qos)
        return Publish(draw(names), draw(payloads), level, draw(st.booleans()),
                       draw(st.booleans()) if level else False,
                       draw(ids) if level else None)

    @st.composite
    def connects(draw: st.DrawFn) -> Connect:
        will = draw(st.none() | st.builds(Will, names, st.binary(max_size=16), qos,
                                          st.booleans()))
        username = draw(st.none() | text)
        password = draw(st.none() | st.binary(max_size=16)) if username is not None else None
        return Connect(draw(text), draw(st.booleans()), draw(st.integers(0, 0xFFFF)), will,
                       username, password, draw(st.sampled_from(["MQTT", "MQIsdp"]) | text),
                       draw(st.integers(0, 255)))

    by_kind: dict[str, SearchStrategy[Any]] = {
        "connect": connects(),
        "connack": st.builds(ConnAck, st.integers(0, 5), st.booleans()),
        "publish": publishes(),
        "subscribe": st.builds(Subscribe, ids, st.lists(st.tuples(filters, qos), min_size=1,
                                                        max_size=4).map(tuple)),
        "suback": st.builds(SubAck, ids, st.lists(st.sampled_from([0, 1, 2, SUBACK_FAILURE]),
                                                  min_size=1, max_size=6).map(tuple)),
        "unsubscribe": st.builds(Unsubscribe, ids,
                                 st.lists(filters, min_size=1, max_size=4).map(tuple)),
        **{cls.type: st.builds(cls, ids)
           for cls in (PubAck, PubRec, PubRel, PubComp, UnsubAck)},
        **{cls.type: st.builds(cls) for cls in (PingReq, PingResp, Disconnect)},
    }
    chosen = list(by_kind) if kinds is None else list(kinds)
    unknown = set(chosen) - set(by_kind)
    if unknown:
        raise ValueError(f"unknown packet types {sorted(unknown)}")
    return st.one_of([by_kind[kind] for kind in chosen])


def mqtt(*, max_packet_size: int = 1 << 20) -> MqttCodec:
    """MQTT 3.1.1 packets, each at most ``max_packet_size`` bytes.

        gevwire.Server(broker, codec=mqtt(max_packet_size=256 << 10))
    """
    return MqttCodec(max_packet_size=max_packet_size)
