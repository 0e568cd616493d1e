"""MQTT control packets: 3.1, 3.1.1 (OASIS 2014) and 5.0 (OASIS 2019): framing,
decoding and encoding.

One codec serves every version on one port: each connection's decoder reads the
3.1.1 forms until a CONNECT says protocol level 5, and MQTT 5.0 after it (a client
that sent a level-5 CONNECT uses ``mqtt(protocol_level=5)``).  A packet object
carries its own form: one whose ``properties`` is a dict (maybe empty) is encoded
as MQTT 5.0, with its reason code; one whose ``properties`` is None in the 3.1.1
form (PUBACK & co., and DISCONNECT, are the same bytes in both when their reason
code is 0).  Properties are a dict by name (:data:`PROPERTIES`: ``{"topic_alias": 3,
"user_property": (("k", "v"),)}``).  An unknown property identifier, one the packet
type may not carry, or a value of the wrong size is a ``FrameError`` (Malformed
Packet, 0x81); a property that may appear once given twice, a value out of its range
(a zero Receive Maximum or Topic Alias, a flag byte over 1), an invalid reason code:
:class:`MqttProtocolError` (Protocol Error; its ``reason_code`` is 0x82), so a
server can name the reason in the DISCONNECT it sends before closing.

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
    "NO_LOCAL",
    "PACKET_TYPES",
    "PROPERTIES",
    "REASON_CODES",
    "RETAIN_AS_PUBLISHED",
    "RETAIN_HANDLING_SHIFT",
    "SUBACK_FAILURE",
    "WILL_PROPERTIES",
    "Auth",
    "ConnAck",
    "Connect",
    "Disconnect",
    "EncodedProperties",
    "MqttCodec",
    "MqttProtocolError",
    "Packet",
    "PingReq",
    "PingResp",
    "Properties",
    "PropertySpec",
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
    "encode_properties",
    "mqtt",
    "packet_from_dict",
    "topic_matches",
    "valid_topic_filter",
    "valid_topic_name",
]

Buffer: TypeAlias = bytes | bytearray | memoryview
#: MQTT 5.0 properties by name (see :data:`PROPERTIES`): ``{"message_expiry_interval":
#: 60, "user_property": (("k", "v"),)}``.  ``user_property`` (pairs) and
#: ``subscription_identifier`` (ints) may repeat, so their values are tuples.
Properties: TypeAlias = dict[str, Any]

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
_U32 = struct.Struct(">I")

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
    #: MQTT 5.0 will properties (``will_delay_interval``, ``message_expiry_interval``,
    #: ...); None in MQTT 3.1.1.
    properties: Properties | None = None


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
    #: MQTT 5.0 (``protocol_level`` 5) CONNECT properties; None before 5.0.  A level-5
    #: CONNECT encodes None as no properties and decodes to a dict.
    properties: Properties | None = None


@dataclass(slots=True)
class ConnAck(Packet):
    """CONNACK: 0 accepted; 1 bad protocol level, 2 identifier rejected, 3 server
    unavailable, 4 bad user name or password, 5 not authorized.  In MQTT 5.0
    (``properties`` not None) ``return_code`` is the Connect Reason Code (0x80 and up:
    refused)."""

    type: ClassVar[str] = "connack"
    packet_type: ClassVar[int] = 2
    return_code: int = 0
    session_present: bool = False
    properties: Properties | None = None


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
    #: MQTT 5.0 properties (a dict, maybe empty, or :class:`EncodedProperties`); None:
    #: the MQTT 3.1.1 form.  In 5.0 the topic may be empty when a ``topic_alias``
    #: property stands for it.
    properties: Properties | EncodedProperties | None = None


@dataclass(slots=True)
class PubAck(Packet):
    """PUBACK: acknowledges a QoS 1 PUBLISH."""

    type: ClassVar[str] = "puback"
    packet_type: ClassVar[int] = 4
    packet_id: int
    #: MQTT 5.0 reason code (0: success; 0x80 and up: refused).
    reason_code: int = 0
    properties: Properties | None = None


@dataclass(slots=True)
class PubRec(Packet):
    """PUBREC: first reply to a QoS 2 PUBLISH."""

    type: ClassVar[str] = "pubrec"
    packet_type: ClassVar[int] = 5
    packet_id: int
    reason_code: int = 0
    properties: Properties | None = None


@dataclass(slots=True)
class PubRel(Packet):
    """PUBREL: answers PUBREC."""

    type: ClassVar[str] = "pubrel"
    packet_type: ClassVar[int] = 6
    packet_id: int
    reason_code: int = 0
    properties: Properties | None = None


@dataclass(slots=True)
class PubComp(Packet):
    """PUBCOMP: ends a QoS 2 exchange."""

    type: ClassVar[str] = "pubcomp"
    packet_type: ClassVar[int] = 7
    packet_id: int
    reason_code: int = 0
    properties: Properties | None = None


@dataclass(slots=True)
class Subscribe(Packet):
    """SUBSCRIBE: ``(topic filter, requested QoS)`` pairs; in MQTT 5.0 the second item
    is the whole Subscription Options byte (QoS in bits 0-1, then :data:`NO_LOCAL`,
    :data:`RETAIN_AS_PUBLISHED` and the Retain Handling in bits 4-5)."""

    type: ClassVar[str] = "subscribe"
    packet_type: ClassVar[int] = 8
    packet_id: int
    topics: tuple[tuple[str, int], ...]
    properties: Properties | None = None


@dataclass(slots=True)
class SubAck(Packet):
    """SUBACK: the granted QoS per filter, or 0x80 (failure); in MQTT 5.0 a reason code
    per filter (0-2 granted, 0x80 and up refused)."""

    type: ClassVar[str] = "suback"
    packet_type: ClassVar[int] = 9
    packet_id: int
    return_codes: tuple[int, ...]
    properties: Properties | None = None


@dataclass(slots=True)
class Unsubscribe(Packet):
    """UNSUBSCRIBE: topic filters to drop."""

    type: ClassVar[str] = "unsubscribe"
    packet_type: ClassVar[int] = 10
    packet_id: int
    topics: tuple[str, ...]
    properties: Properties | None = None


@dataclass(slots=True)
class UnsubAck(Packet):
    """UNSUBACK; in MQTT 5.0 (``properties`` not None) a reason code per filter (0:
    success, 0x11: no subscription existed, 0x80 and up: refused)."""

    type: ClassVar[str] = "unsuback"
    packet_type: ClassVar[int] = 11
    packet_id: int
    reason_codes: tuple[int, ...] = ()
    properties: Properties | None = None


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
    """DISCONNECT: the client closes cleanly (its will is discarded, unless an MQTT 5.0
    client sends reason code 0x04); in MQTT 5.0 either side may send it, with a reason."""

    type: ClassVar[str] = "disconnect"
    packet_type: ClassVar[int] = 14
    reason_code: int = 0
    properties: Properties | None = None


@dataclass(slots=True)
class Auth(Packet):
    """AUTH (MQTT 5.0 only): extended authentication; reason code 0 success, 0x18
    continue authentication, 0x19 re-authenticate."""

    type: ClassVar[str] = "auth"
    packet_type: ClassVar[int] = 15
    reason_code: int = 0
    properties: Properties | None = None


#: Packet classes by name (``"publish"``) — also how dict messages are encoded.
PACKET_TYPES: dict[str, type[Packet]] = {
    cls.type: cls
    for cls in (Connect, ConnAck, Publish, PubAck, PubRec, PubRel, PubComp, Subscribe,
                SubAck, Unsubscribe, UnsubAck, PingReq, PingResp, Disconnect, Auth)
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


# -- MQTT 5.0 properties (spec 2.2.2) --------------------------------------------------


class MqttProtocolError(FrameError):
    """A well-formed MQTT 5.0 packet that breaks a rule of the protocol (a property that
    may appear once given twice, a zero Receive Maximum, ...): the spec's reason code
    0x82 Protocol Error, where other :class:`~gevwire.errors.FrameError` s are 0x81
    Malformed Packet.  Either closes the connection."""

    reason_code = 0x82


#: Properties of a will (a pseudo packet type for :data:`PROPERTIES`).
WILL_PROPERTIES = 0
#: Subscription Options bits (MQTT 5.0, spec 3.8.3.1) beside the QoS in bits 0-1.
NO_LOCAL = 0x04
RETAIN_AS_PUBLISHED = 0x08
#: Retain Handling is ``(options >> 4) & 3``: 0 send retained messages at subscribe,
#: 1 only for a new subscription, 2 never.
RETAIN_HANDLING_SHIFT = 4

# Property value types (spec 2.2.2.2).
_BYTE, _TWO, _FOUR, _VARINT, _STRING, _PAIR, _BINARY = range(7)
_ALL = frozenset(range(16))


@dataclass(frozen=True, slots=True)
class PropertySpec:
    """One MQTT 5.0 property: its identifier, name, value type, the packet types that may
    carry it (:data:`WILL_PROPERTIES` for a will) and whether it may repeat."""

    identifier: int
    name: str
    kind: int
    packets: frozenset[int]
    repeats: bool = False
    #: A zero value is a protocol error (Receive Maximum, Topic Alias, ...).
    nonzero: bool = False
    #: A byte that must be 0 or 1.
    boolean: bool = False


def _spec(identifier: int, name: str, kind: int, packets: Collection[int], **kw: bool
          ) -> PropertySpec:
    return PropertySpec(identifier, name, kind, frozenset(packets), **kw)


_W = WILL_PROPERTIES
#: Every MQTT 5.0 property, by identifier.
PROPERTIES: dict[int, PropertySpec] = {p.identifier: p for p in (
    _spec(0x01, "payload_format_indicator", _BYTE, (3, _W), boolean=True),
    _spec(0x02, "message_expiry_interval", _FOUR, (3, _W)),
    _spec(0x03, "content_type", _STRING, (3, _W)),
    _spec(0x08, "response_topic", _STRING, (3, _W)),
    _spec(0x09, "correlation_data", _BINARY, (3, _W)),
    _spec(0x0B, "subscription_identifier", _VARINT, (3, 8), repeats=True, nonzero=True),
    _spec(0x11, "session_expiry_interval", _FOUR, (1, 2, 14)),
    _spec(0x12, "assigned_client_identifier", _STRING, (2,)),
    _spec(0x13, "server_keep_alive", _TWO, (2,)),
    _spec(0x15, "authentication_method", _STRING, (1, 2, 15)),
    _spec(0x16, "authentication_data", _BINARY, (1, 2, 15)),
    _spec(0x17, "request_problem_information", _BYTE, (1,), boolean=True),
    _spec(0x18, "will_delay_interval", _FOUR, (_W,)),
    _spec(0x19, "request_response_information", _BYTE, (1,), boolean=True),
    _spec(0x1A, "response_information", _STRING, (2,)),
    _spec(0x1C, "server_reference", _STRING, (2, 14)),
    _spec(0x1F, "reason_string", _STRING, (2, 4, 5, 6, 7, 9, 11, 14, 15)),
    _spec(0x21, "receive_maximum", _TWO, (1, 2), nonzero=True),
    _spec(0x22, "topic_alias_maximum", _TWO, (1, 2)),
    _spec(0x23, "topic_alias", _TWO, (3,), nonzero=True),
    _spec(0x24, "maximum_qos", _BYTE, (2,), boolean=True),
    _spec(0x25, "retain_available", _BYTE, (2,), boolean=True),
    _spec(0x26, "user_property", _PAIR, _ALL | {_W}, repeats=True),
    _spec(0x27, "maximum_packet_size", _FOUR, (1, 2), nonzero=True),
    _spec(0x28, "wildcard_subscription_available", _BYTE, (2,), boolean=True),
    _spec(0x29, "subscription_identifier_available", _BYTE, (2,), boolean=True),
    _spec(0x2A, "shared_subscription_available", _BYTE, (2,), boolean=True),
)}
_BY_NAME = {p.name: p for p in PROPERTIES.values()}
_PACKET_NAMES = {1: "CONNECT", 2: "CONNACK", 3: "PUBLISH", 4: "PUBACK", 5: "PUBREC",
                 6: "PUBREL", 7: "PUBCOMP", 8: "SUBSCRIBE", 9: "SUBACK", 10: "UNSUBSCRIBE",
                 11: "UNSUBACK", 14: "DISCONNECT", 15: "AUTH", _W: "will"}
_MAX_VARINT = MAX_REMAINING_LENGTH


def _read_varint(data: Buffer, pos: int, end: int, what: str) -> tuple[int, int]:
    """A variable byte integer (spec 1.5.5) at ``data[pos:end]``: its value and the
    position after it."""
    value = 0
    shift = 0
    while True:
        if pos >= end:
            raise FrameError(f"{what}: truncated variable byte integer")
        b = data[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos
        shift += 7
        if shift == 28:
            raise FrameError(f"{what}: variable byte integer longer than 4 bytes")


def _varint(value: int) -> bytes:
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _read_binary(data: Buffer, pos: int, end: int, what: str) -> tuple[bytes, int]:
    if pos + 2 > end:
        raise FrameError(f"{what}: truncated length")
    (size,) = _U16.unpack_from(data, pos)
    pos += 2
    if pos + size > end:
        raise FrameError(f"{what}: {size} bytes announced, {end - pos} left")
    return bytes(data[pos : pos + size]), pos + size


def _read_properties(data: Buffer, pos: int, end: int, packet: int
                     ) -> tuple[Properties, int]:
    """The property list at ``data[pos:end]`` of a packet of type ``packet``: the
    properties and the position after them.  An unknown identifier, one the packet may
    not carry, or a value of the wrong size is a malformed packet; a property that may
    appear once given twice, or a value out of its range, a protocol error."""
    where = _PACKET_NAMES[packet]
    size, pos = _read_varint(data, pos, end, f"{where} property length")
    stop = pos + size
    if stop > end:
        raise FrameError(f"{where}: properties of {size} bytes, {end - pos} left")
    props: Properties = {}
    repeated: dict[str, list[Any]] | None = None  # built as lists: a tuple per item is O(n²)
    while pos < stop:
        ident = data[pos]
        spec = PROPERTIES.get(ident)
        if spec is None or packet not in spec.packets:
            raise FrameError(f"{where}: property identifier {ident:#04x} is unknown or "
                             f"not allowed here")
        pos += 1
        name = spec.name
        kind = spec.kind
        value: Any
        if kind == _BYTE:
            if pos >= stop:
                raise FrameError(f"{where}: {name} truncated")
            value = data[pos]
            pos += 1
        elif kind == _TWO:
            if pos + 2 > stop:
                raise FrameError(f"{where}: {name} truncated")
            (value,) = _U16.unpack_from(data, pos)
            pos += 2
        elif kind == _FOUR:
            if pos + 4 > stop:
                raise FrameError(f"{where}: {name} truncated")
            (value,) = _U32.unpack_from(data, pos)
            pos += 4
        elif kind == _VARINT:
            value, pos = _read_varint(data, pos, stop, f"{where} {name}")
        elif kind == _STRING:
            value, pos = _read_utf8(data, pos, stop, f"{where} {name}")
        elif kind == _BINARY:
            value, pos = _read_binary(data, pos, stop, f"{where} {name}")
        else:
            key, pos = _read_utf8(data, pos, stop, f"{where} {name}")
            text, pos = _read_utf8(data, pos, stop, f"{where} {name}")
            value = (key, text)
        if spec.boolean and value > 1:
            raise MqttProtocolError(f"{where}: {name} is {value}, not 0 or 1")
        if spec.nonzero and not value:
            raise MqttProtocolError(f"{where}: {name} is 0")
        if spec.repeats:
            if repeated is None:
                repeated = {}
            items = repeated.get(name)
            if items is None:
                items = repeated[name] = []
                props[name] = ()  # its place in the order
            items.append(value)
        elif name in props:
            raise MqttProtocolError(f"{where}: {name} given twice")
        else:
            props[name] = value
    if repeated is not None:
        for name, items in repeated.items():
            props[name] = tuple(items)
        if packet == 8 and len(props.get("subscription_identifier", ())) > 1:
            raise MqttProtocolError("SUBSCRIBE: subscription_identifier given twice")
    return props, pos


def _encode_value(spec: PropertySpec, value: Any, where: str) -> bytes:
    kind = spec.kind
    name = spec.name
    if kind == _STRING:
        if not isinstance(value, str):
            raise EncodeError(f"{where} property {name} must be a str, not {value!r}")
        return _string(value, f"{where} {name}")
    if kind == _BINARY:
        raw = as_bytes(value)
        if len(raw) > 0xFFFF:
            raise EncodeError(f"{where} property {name} is over 65535 bytes")
        return _U16.pack(len(raw)) + raw
    if kind == _PAIR:
        try:
            key, text = value
        except (TypeError, ValueError):
            raise EncodeError(f"{where} {name} {value!r} is not a (name, value) pair") \
                from None
        if not isinstance(key, str) or not isinstance(text, str):
            raise EncodeError(f"{where} {name} {value!r} is not a pair of str")
        return _string(key, f"{where} {name}") + _string(text, f"{where} {name}")
    top = {_BYTE: 0xFF, _TWO: 0xFFFF, _FOUR: 0xFFFF_FFFF, _VARINT: _MAX_VARINT}[kind]
    if not isinstance(value, int) or not 0 <= value <= top:
        raise EncodeError(f"{where} property {name} {value!r} is not an int in 0..{top}")
    if (spec.boolean and value > 1) or (spec.nonzero and not value):
        raise EncodeError(f"{where} property {name} {value!r} is out of its range")
    value = int(value)
    if kind == _BYTE:
        return bytes((value,))
    if kind == _TWO:
        return _U16.pack(value)
    if kind == _FOUR:
        return _U32.pack(value)
    return _varint(value)


class EncodedProperties(bytes):
    """MQTT 5.0 properties encoded once (see :func:`encode_properties`): given as a
    packet's ``properties``, they are written as they are, so a message forwarded to
    many clients does not have its properties encoded again for each.  ``names``: the
    properties it holds; ``packet``: the packet type they were checked for."""

    names: frozenset[str]
    packet: int


def encode_properties(props: Properties, packet: int, *,
                      base: EncodedProperties | None = None) -> EncodedProperties:
    """``props`` encoded for a packet of type ``packet`` (``Publish.packet_type``...),
    after those of ``base`` if given (a property that may appear once must not be in
    both)::

        forwarded = encode_properties({"user_property": pairs}, Publish.packet_type)
        for alias in (1, 2):  # per client: only the topic alias is encoded
            Publish("", payload, properties=encode_properties(
                {"topic_alias": alias}, Publish.packet_type, base=forwarded))
    """
    if not isinstance(props, dict):
        raise EncodeError(f"properties must be a dict, not {type(props).__name__}")
    body = _property_list(props, packet)
    names = frozenset(props)
    if base is not None:
        if base.packet != packet:
            raise EncodeError(f"properties for {_PACKET_NAMES[base.packet]} given for "
                              f"{_PACKET_NAMES[packet]}")
        twice = {name for name in base.names & names if not _BY_NAME[name].repeats}
        if twice:
            raise EncodeError(f"properties {sorted(twice)} given twice")
        body = bytes(base) + body
        names |= base.names
    out = EncodedProperties(body)
    out.names = names
    out.packet = packet
    return out


def _encode_properties(props: Properties | EncodedProperties | None, packet: int
                       ) -> bytes:
    """The property list (its length first) of ``props`` for a packet of type
    ``packet``; None is an empty list."""
    if props is None:
        return b"\x00"
    if isinstance(props, EncodedProperties):
        if props.packet != packet:
            raise EncodeError(f"properties encoded for {_PACKET_NAMES[props.packet]} "
                              f"given to {_PACKET_NAMES[packet]}")
        return _varint(len(props)) + props
    if not isinstance(props, dict):
        raise EncodeError(f"properties must be a dict, not {type(props).__name__}")
    if not props:
        return b"\x00"
    body = _property_list(props, packet)
    return _varint(len(body)) + body


def _property_list(props: Properties, packet: int) -> bytes:
    """The encoded properties, without their length."""
    where = _PACKET_NAMES[packet]
    parts: list[bytes] = []
    for name, value in props.items():
        spec = _BY_NAME.get(name)
        if spec is None or packet not in spec.packets:
            raise EncodeError(f"{where} cannot carry a property {name!r}")
        head = bytes((spec.identifier,))
        if spec.repeats:
            if isinstance(value, (str, bytes)) or not isinstance(value, Collection):
                raise EncodeError(f"{where} property {name} must be a tuple of values")
            if packet == 8 and len(value) > 1:
                raise EncodeError("SUBSCRIBE carries one subscription_identifier at most")
            for item in value:
                parts.append(head + _encode_value(spec, item, where))
        else:
            parts.append(head + _encode_value(spec, value, where))
    return b"".join(parts)


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
    level = -1
    if end - start > 2:  # the protocol level says which body follows
        level_at = start + 2 + _U16.unpack_from(data, start)[0]
        if level_at < end:
            level = data[level_at]
        if level == 5:
            return _parse_connect5(data, start, end)
    try:
        return _parse_connect4(data, start, end)
    except FrameError:
        if level in (-1, 3, 4):
            raise
        # A level this codec does not know: the rest may be laid out otherwise, so what
        # the fixed part says is returned, for the server to answer with the CONNACK
        # 0x01 (unacceptable protocol level) that MQTT 3.1.1 requires (3.1.2-2).
        name, pos = _read_utf8(data, start, end, "CONNECT protocol name")
        if pos + 4 > end:
            raise
        return Connect("", data[pos + 1] & 2 == 2, _U16.unpack_from(data, pos + 2)[0],
                       protocol_name=name, protocol_level=level)


def _parse_connect4(data: Buffer, start: int, end: int) -> Packet:
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


def _filters(data: Buffer, pos: int, end: int, what: str, with_qos: bool, *,
             v5: bool = False) -> list[Any]:
    """The topic filters of a SUBSCRIBE (``(filter, QoS byte)`` pairs; with ``v5``,
    ``(filter, Subscription Options)``) or UNSUBSCRIBE body: one loop, each distinct
    filter decoded once (a packet may repeat one 100,000s of times; this is a packet's
    whole cost, so it is kept tight)."""
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
            if options > 2 and not (v5 and _valid_options(options)):
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


# -- MQTT 5.0 bodies (spec 3.x.2, 3.x.3 of MQTT 5.0) -----------------------------------

#: The reason codes each MQTT 5.0 packet may carry.
REASON_CODES: dict[int, frozenset[int]] = {
    2: frozenset({0x00, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8A,
                  0x8C, 0x90, 0x95, 0x97, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9F}),
    4: frozenset({0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99}),
    5: frozenset({0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99}),
    6: frozenset({0x00, 0x92}),
    7: frozenset({0x00, 0x92}),
    9: frozenset({0x00, 0x01, 0x02, 0x80, 0x83, 0x87, 0x8F, 0x91, 0x97, 0x9E, 0xA1, 0xA2}),
    11: frozenset({0x00, 0x11, 0x80, 0x83, 0x87, 0x8F, 0x91}),
    14: frozenset({0x00, 0x04, 0x80, 0x81, 0x82, 0x83, 0x87, 0x89, 0x8B, 0x8D, 0x8E, 0x8F,
                   0x90, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9A, 0x9B, 0x9C, 0x9D,
                   0x9E, 0x9F, 0xA0, 0xA1, 0xA2}),
    15: frozenset({0x00, 0x18, 0x19}),
}


def _reason(code: int, packet: int) -> int:
    if code not in REASON_CODES[packet]:
        raise MqttProtocolError(f"{_PACKET_NAMES[packet]} reason code {code:#04x}")
    return code


def _valid_options(options: int) -> bool:
    """An MQTT 5.0 Subscription Options byte: QoS 0-2, Retain Handling 0-2, bits 6-7 0."""
    return options < 0x40 and options & 3 != 3 and options & 0x30 != 0x30


def _parse_connect5(data: Buffer, start: int, end: int) -> Connect:
    name, pos = _read_utf8(data, start, end, "CONNECT protocol name")
    if pos + 4 > end:
        raise FrameError("CONNECT truncated in its variable header")
    level, flags = data[pos], data[pos + 1]
    (keep_alive,) = _U16.unpack_from(data, pos + 2)
    if flags & 0x01:
        raise FrameError("CONNECT reserved flag is set")
    has_will = flags & 0x04
    will_qos = (flags >> 3) & 3
    will_retain = flags & 0x20 == 0x20
    if will_qos == 3:
        raise FrameError("CONNECT will QoS is 3")
    if not has_will and (will_qos or will_retain):
        raise FrameError("CONNECT will QoS / retain set without a will")
    props, pos = _read_properties(data, pos + 4, end, 1)
    if "authentication_data" in props and "authentication_method" not in props:
        raise MqttProtocolError("CONNECT authentication_data without a method")
    client_id, pos = _read_utf8(data, pos, end, "CONNECT client id")
    will = None
    if has_will:
        will_props, pos = _read_properties(data, pos, end, WILL_PROPERTIES)
        topic, pos = _read_utf8(data, pos, end, "CONNECT will topic")
        if not valid_topic_name(topic):
            raise FrameError(f"CONNECT will topic {topic!r} is not a topic name")
        message, pos = _read_binary(data, pos, end, "CONNECT will payload")
        will = Will(topic, message, will_qos, will_retain, will_props)
    username = password = None
    if flags & 0x80:
        username, pos = _read_utf8(data, pos, end, "CONNECT user name")
    if flags & 0x40:
        password, pos = _read_binary(data, pos, end, "CONNECT password")
    if pos != end:
        raise FrameError("CONNECT has bytes after its payload")
    return Connect(client_id, flags & 0x02 == 0x02, keep_alive, will, username, password,
                   name, level, props)


def _end_of(props_end: int, end: int, what: str) -> None:
    if props_end != end:
        raise FrameError(f"{what} has bytes after its properties")


def _parse_connack5(data: Buffer, start: int, end: int, flags: int) -> Packet:
    if end - start < 3:
        raise FrameError("CONNACK shorter than its flags, reason code and properties")
    ack_flags, code = data[start], data[start + 1]
    if ack_flags > 1:
        raise FrameError("CONNACK reserved flag bits are set")
    _reason(code, 2)
    if ack_flags and code:
        raise MqttProtocolError("CONNACK refusing with session present set")
    props, pos = _read_properties(data, start + 2, end, 2)
    _end_of(pos, end, "CONNACK")
    return ConnAck(code, ack_flags == 1, props)


def _parse_publish5(data: Buffer, start: int, end: int, flags: int) -> Packet:
    if end - start < 2:
        raise FrameError("PUBLISH without a topic")
    pos = start + 2 + _U16.unpack_from(data, start)[0]
    topic_end = pos
    qos = (flags >> 1) & 3
    packet_id: int | None = None
    if qos:
        if pos + 2 > end:
            raise FrameError("PUBLISH truncated before its packet identifier")
        packet_id = _packet_id(_U16.unpack_from(data, pos)[0], "PUBLISH")
        pos += 2
    if pos >= end:
        raise FrameError("PUBLISH truncated before its properties")
    try:
        topic = str(data[start + 2 : topic_end], "utf-8")
    except UnicodeDecodeError as exc:
        raise FrameError("PUBLISH topic is not valid UTF-8") from exc
    if "+" in topic or "#" in topic or "\x00" in topic:
        raise FrameError(f"PUBLISH topic {topic!r} has a wildcard or U+0000")
    if data[pos] == 0:  # no properties: most messages
        props: Properties = {}
        pos += 1
    else:
        props, pos = _read_properties(data, pos, end, 3)
    if not topic and "topic_alias" not in props:
        raise MqttProtocolError("PUBLISH with an empty topic and no topic_alias")
    return Publish(topic, bytes(data[pos:end]), qos, flags & 1 == 1, flags & 8 == 8,
                   packet_id, props)


def _ack5_parser(cls: Any) -> _Parse:
    """PUBACK / PUBREC / PUBREL / PUBCOMP: the reason code and properties may be left
    out (remaining length 2 or 3)."""
    kind: int = cls.packet_type
    name = cls.type.upper()

    def parse(data: Buffer, start: int, end: int, flags: int) -> Packet:
        size = end - start
        if size < 2:
            raise FrameError(f"{name} without a packet identifier")
        packet_id = _packet_id(_U16.unpack_from(data, start)[0], name)
        if size == 2:
            packet: Packet = cls(packet_id)
            return packet
        code = _reason(data[start + 2], kind)
        if size == 3:
            packet = cls(packet_id, code)
            return packet
        props, pos = _read_properties(data, start + 3, end, kind)
        _end_of(pos, end, name)
        packet = cls(packet_id, code, props)
        return packet

    return parse


def _parse_subscribe5(data: Buffer, start: int, end: int, flags: int) -> Packet:
    if end - start < 2:
        raise FrameError("SUBSCRIBE without a packet identifier")
    packet_id = _packet_id(_U16.unpack_from(data, start)[0], "SUBSCRIBE")
    props, pos = _read_properties(data, start + 2, end, 8)
    topics = _filters(data, pos, end, "SUBSCRIBE topic filter", True, v5=True)
    if not topics:
        raise MqttProtocolError("SUBSCRIBE with no topic filter")
    return Subscribe(packet_id, tuple(topics), props)


def _codes5(data: Buffer, pos: int, end: int, kind: int) -> tuple[int, ...]:
    codes = tuple(bytes(data[pos:end]))
    if not codes:
        raise MqttProtocolError(f"{_PACKET_NAMES[kind]} without reason codes")
    allowed = REASON_CODES[kind]
    for code in codes:
        if code not in allowed:
            raise MqttProtocolError(f"{_PACKET_NAMES[kind]} reason code {code:#04x}")
    return codes


def _parse_suback5(data: Buffer, start: int, end: int, flags: int) -> Packet:
    if end - start < 3:
        raise FrameError("SUBACK without a packet identifier, properties and codes")
    packet_id = _packet_id(_U16.unpack_from(data, start)[0], "SUBACK")
    props, pos = _read_properties(data, start + 2, end, 9)
    return SubAck(packet_id, _codes5(data, pos, end, 9), props)


def _parse_unsubscribe5(data: Buffer, start: int, end: int, flags: int) -> Packet:
    if end - start < 2:
        raise FrameError("UNSUBSCRIBE without a packet identifier")
    packet_id = _packet_id(_U16.unpack_from(data, start)[0], "UNSUBSCRIBE")
    props, pos = _read_properties(data, start + 2, end, 10)
    topics = _filters(data, pos, end, "UNSUBSCRIBE topic filter", False)
    if not topics:
        raise MqttProtocolError("UNSUBSCRIBE with no topic filter")
    return Unsubscribe(packet_id, tuple(topics), props)


def _parse_unsuback5(data: Buffer, start: int, end: int, flags: int) -> Packet:
    if end - start < 3:
        raise FrameError("UNSUBACK without a packet identifier, properties and codes")
    packet_id = _packet_id(_U16.unpack_from(data, start)[0], "UNSUBACK")
    props, pos = _read_properties(data, start + 2, end, 11)
    return UnsubAck(packet_id, _codes5(data, pos, end, 11), props)


def _reason_parser(cls: Any) -> _Parse:
    """DISCONNECT / AUTH: the reason code and properties may be left out."""
    kind: int = cls.packet_type

    def parse(data: Buffer, start: int, end: int, flags: int) -> Packet:
        packet: Packet
        if end == start:
            packet = cls()
            return packet
        code = _reason(data[start], kind)
        if end - start == 1:
            packet = cls(code)
            return packet
        props, pos = _read_properties(data, start + 1, end, kind)
        _end_of(pos, end, cls.type.upper())
        packet = cls(code, props)
        return packet

    return parse


_PINGREQ, _PINGRESP = PingReq(), PingResp()


def _disconnect(data: Buffer, start: int, end: int, flags: int) -> Packet:
    return Disconnect()

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
    14: (_disconnect, 0, 0),
}
#: The same for MQTT 5.0 (after a level-5 CONNECT, or from ``mqtt(protocol_level=5)``).
_TYPES5: dict[int, tuple[_Parse, int | None, int]] = {
    1: (_parse_connect, 0, -1),
    2: (_parse_connack5, 0, -1),
    3: (_parse_publish5, None, -1),
    4: (_ack5_parser(PubAck), 0, -1),
    5: (_ack5_parser(PubRec), 0, -1),
    6: (_ack5_parser(PubRel), 2, -1),
    7: (_ack5_parser(PubComp), 0, -1),
    8: (_parse_subscribe5, 2, -1),
    9: (_parse_suback5, 0, -1),
    10: (_parse_unsubscribe5, 2, -1),
    11: (_parse_unsuback5, 0, -1),
    12: (_singleton(_PINGREQ), 0, 0),
    13: (_singleton(_PINGRESP), 0, 0),
    14: (_reason_parser(Disconnect), 0, -1),
    15: (_reason_parser(Auth), 0, -1),
}


def _first_byte_table(types: dict[int, tuple[_Parse, int | None, int]]
                      ) -> tuple[list[_Parse | None], list[int]]:
    """Parser and exact remaining length (-1: any) for each possible first byte; None
    for a first byte no valid packet starts with."""
    parsers: list[_Parse | None] = [None] * 256
    exact = [-1] * 256
    for first in range(256):
        kind, flags = first >> 4, first & 0x0F
        entry = types.get(kind)
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


_PARSERS, _EXACT = _first_byte_table(_TYPES)
_PARSERS5, _EXACT5 = _first_byte_table(_TYPES5)


def _bad_first_byte(first: int, v5: bool) -> FrameError:
    kind, flags = first >> 4, first & 0x0F
    if kind not in (_TYPES5 if v5 else _TYPES):
        return FrameError(f"reserved control packet type {kind}")
    if kind == 3:
        return FrameError(f"PUBLISH flags {flags:#06b}: QoS 3, or DUP set at QoS 0")
    return FrameError(f"packet type {kind} with reserved flags {flags:#06b}")


def _frame_size(buf: Buffer, pos: int, end: int, limit: int,
                parsers: list[_Parse | None] = _PARSERS, exacts: list[int] = _EXACT
                ) -> tuple[int, int]:
    """``(packet size, fixed header size)`` of the packet at ``buf[pos:end]``, or
    ``(-1, 0)`` until its fixed header is whole.  Raises for a malformed header or a
    packet over ``limit`` bytes.  ``parsers`` / ``exacts``: the protocol version's
    tables (MQTT 3.1.1 by default)."""
    first = buf[pos]
    if parsers[first] is None:
        raise _bad_first_byte(first, parsers is _PARSERS5)
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
    exact = exacts[first]
    if exact >= 0 and remaining != exact:
        raise FrameError(f"packet type {first >> 4} with remaining length {remaining}, "
                         f"not {exact}")
    total = header + remaining
    if total > limit:
        raise FrameTooLarge(total, limit)
    return total, header


class _MqttDecoder(CutAheadDecoder):
    """One connection's decoder: it starts at the codec's protocol level, and each
    CONNECT it decodes sets the level of the packets after it (5: MQTT 5.0, any other:
    the 3.1.1 forms, which 3.1 shares)."""

    __slots__ = ("_exacts", "_limit", "_parsers")

    def __init__(self, limit: int, v5: bool) -> None:
        super().__init__()
        self._limit = limit
        self._parsers, self._exacts = (_PARSERS5, _EXACT5) if v5 else (_PARSERS, _EXACT)

    @property
    def protocol_level(self) -> int:
        """5 for MQTT 5.0 packets, 4 for the 3.1 / 3.1.1 forms."""
        return 5 if self._parsers is _PARSERS5 else 4

    def _parse(self, data: Buffer, pos: int, header: int, total: int) -> Packet:
        first = data[pos]
        parse = self._parsers[first]
        assert parse is not None  # checked by _frame_size
        packet = parse(data, pos + header, pos + total, first & 0x0F)
        if first == 0x10:  # CONNECT: the version of what follows
            if packet.protocol_level == 5:  # type: ignore[attr-defined]
                self._parsers, self._exacts = _PARSERS5, _EXACT5
            else:
                self._parsers, self._exacts = _PARSERS, _EXACT
        return packet

    def decode_one(self, ring: RingBuffer) -> Packet | None:
        n = ring.length
        if n < 2:
            return None
        first, second = ring.peek(5)
        head = bytes(first) + bytes(second) if len(second) else first
        total, header = _frame_size(head, 0, len(head), self._limit, self._parsers,
                                    self._exacts)
        if total < 0 or n < total:
            return None
        packet = self._parse(ring.contiguous(total), 0, header, total)
        ring.retrieve(total)
        return packet

    def announced_length(self, ring: RingBuffer) -> int:
        n = ring.length
        if self._ahead or n < 2:
            return 0
        first, second = ring.peek(5)
        head = bytes(first) + bytes(second) if len(second) else first
        try:
            total, _ = _frame_size(head, 0, len(head), self._limit, self._parsers,
                                   self._exacts)
        except FrameError:
            return 0  # decode() reports it
        return total if total > n else 0

    def cut_view(self, view: memoryview) -> tuple[list[Any], int]:
        frames: list[Any] = []
        pos = 0
        end = len(view)
        limit = self._limit
        parse = self._parse
        try:
            while end - pos >= 2:
                total, header = _frame_size(view, pos, end, limit, self._parsers,
                                            self._exacts)
                if total < 0 or end - pos < total:
                    break
                frames.append(parse(view, pos, header, total))
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
    props = p.properties
    aliased = not topic and props is not None and "topic_alias" in (  # MQTT 5.0
        props.names if isinstance(props, EncodedProperties) else props)
    if not (0 < len(topic) <= 0xFFFF or aliased) or b"+" in topic or b"#" in topic \
            or b"\0" in topic:
        raise EncodeError(f"PUBLISH topic {p.topic!r} is not a valid topic name")
    payload = as_bytes(p.payload)
    if qos:
        head = _U16.pack(len(topic)) + topic + _U16.pack(_check_id(p.packet_id))
    else:
        if p.packet_id is not None or p.dup:
            raise EncodeError("a QoS 0 PUBLISH has no packet identifier and no DUP flag")
        head = _U16.pack(len(topic)) + topic
    if props is not None:
        head += _encode_properties(props, 3)
    first = 0x30 | (8 if p.dup else 0) | (qos << 1) | (1 if p.retain else 0)
    return _fixed_header(first, len(head) + len(payload)) + head + payload


def _encode_connect(p: Connect) -> bytes:
    will = p.will
    if p.protocol_level == 5:
        return _encode_connect5(p)
    if p.properties is not None or (will is not None and will.properties is not None):
        raise EncodeError("properties need protocol_level 5 (MQTT 5.0)")
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


def _encode_connect5(p: Connect) -> bytes:
    will = p.will
    flags = (0x80 if p.username is not None else 0) | (0x40 if p.password is not None else 0)
    if p.clean_session:
        flags |= 0x02
    parts = [_string(p.protocol_name, "protocol name"), b"", _U16.pack(p.keep_alive),
             _encode_properties(p.properties, 1), _string(p.client_id, "client id")]
    if will is not None:
        flags |= 0x04 | (_qos(will.qos, "will") << 3) | (0x20 if will.retain else 0)
        if not valid_topic_name(will.topic):
            raise EncodeError(f"will topic {will.topic!r} is not a valid topic name")
        message = as_bytes(will.message)
        if len(message) > 0xFFFF:
            raise EncodeError("a will payload is at most 65535 bytes")
        parts += [_encode_properties(will.properties, WILL_PROPERTIES),
                  _string(will.topic, "will topic"), _U16.pack(len(message)), message]
    parts[1] = bytes((5, flags))
    if p.username is not None:
        parts.append(_string(p.username, "user name"))
    if p.password is not None:
        password = as_bytes(p.password)
        if len(password) > 0xFFFF:
            raise EncodeError("a password is at most 65535 bytes")
        parts += [_U16.pack(len(password)), password]
    body = b"".join(parts)
    return _fixed_header(0x10, len(body)) + body


def _code(code: Any, kind: int) -> int:
    """A reason code MQTT 5.0 allows in a packet of type ``kind``."""
    if type(code) is not int or code not in REASON_CODES[kind]:
        raise EncodeError(f"{_PACKET_NAMES[kind]} reason code {code!r}")
    return code


def _encode_connack(p: ConnAck) -> bytes:
    if p.properties is not None:
        code = _code(p.return_code, 2)
        if code and p.session_present:
            raise EncodeError("a refusing CONNACK has session_present False")
        body = bytes((1 if p.session_present else 0, code)) + \
            _encode_properties(p.properties, 2)
        return _fixed_header(0x20, len(body)) + body
    if type(p.return_code) is not int or not 0 <= p.return_code <= 0xFF:
        raise EncodeError(f"CONNACK return code {p.return_code!r}")
    return bytes((0x20, 2, 1 if p.session_present else 0, p.return_code))


def _encode_subscribe(p: Subscribe) -> bytes:
    if not p.topics:
        raise EncodeError("SUBSCRIBE needs at least one topic filter")
    parts = [_U16.pack(_check_id(p.packet_id))]
    v5 = p.properties is not None
    if v5:
        parts.append(_encode_properties(p.properties, 8))
    for topic_filter, qos in p.topics:
        parts.append(_string(topic_filter, "topic filter"))
        if v5:
            if type(qos) is not int or not _valid_options(qos):
                raise EncodeError(f"subscription options {qos!r}")
            parts.append(bytes((qos,)))
        else:
            parts.append(bytes((_qos(qos, "requested"),)))
    body = b"".join(parts)
    return _fixed_header(0x82, len(body)) + body


def _encode_suback(p: SubAck) -> bytes:
    if not p.return_codes:
        raise EncodeError("SUBACK needs at least one return code")
    if p.properties is not None:
        body = _U16.pack(_check_id(p.packet_id)) + _encode_properties(p.properties, 9) + \
            bytes(_code(code, 9) for code in p.return_codes)
        return _fixed_header(0x90, len(body)) + body
    for code in p.return_codes:
        if code not in (0, 1, 2, SUBACK_FAILURE):
            raise EncodeError(f"SUBACK return code {code!r}")
    body = _U16.pack(_check_id(p.packet_id)) + bytes(p.return_codes)
    return _fixed_header(0x90, len(body)) + body


def _encode_unsubscribe(p: Unsubscribe) -> bytes:
    if not p.topics:
        raise EncodeError("UNSUBSCRIBE needs at least one topic filter")
    props = b"" if p.properties is None else _encode_properties(p.properties, 10)
    body = _U16.pack(_check_id(p.packet_id)) + props + b"".join(
        _string(t, "topic filter") for t in p.topics)
    return _fixed_header(0xA2, len(body)) + body


def _encode_unsuback(p: UnsubAck) -> bytes:
    head = _U16.pack(_check_id(p.packet_id))
    if p.properties is None:
        if p.reason_codes:
            raise EncodeError("UNSUBACK reason codes need properties (MQTT 5.0): {} or more")
        return b"\xb0\x02" + head
    if not p.reason_codes:
        raise EncodeError("an MQTT 5.0 UNSUBACK needs a reason code per topic filter")
    body = head + _encode_properties(p.properties, 11) + \
        bytes(_code(code, 11) for code in p.reason_codes)
    return _fixed_header(0xB0, len(body)) + body


def _id_encoder(first: int) -> Callable[[Any], bytes]:
    """PUBACK, PUBREC, PUBREL, PUBCOMP: the 3.1.1 form, or MQTT 5.0's with what its
    reason code and properties need (both left out when 0 and None)."""
    kind = first >> 4

    def encode(p: Any) -> bytes:
        head = _U16.pack(_check_id(p.packet_id))
        props, code = p.properties, p.reason_code
        if props is None:
            if code == 0 and type(code) is int:
                return bytes((first, 2)) + head
            return bytes((first, 3)) + head + bytes((_code(code, kind),))
        body = head + bytes((_code(code, kind),)) + _encode_properties(props, kind)
        return _fixed_header(first, len(body)) + body

    return encode


def _reason_encoder(first: int) -> Callable[[Any], bytes]:
    """DISCONNECT and AUTH: empty, or a reason code, or a reason code and properties."""
    kind = first >> 4

    def encode(p: Any) -> bytes:
        props, code = p.properties, p.reason_code
        if props is None:
            if code == 0 and type(code) is int:
                return bytes((first, 0))
            return bytes((first, 1, _code(code, kind)))
        body = bytes((_code(code, kind),)) + _encode_properties(props, kind)
        return _fixed_header(first, len(body)) + body

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
    UnsubAck: _encode_unsuback,
    PingReq: _constant(b"\xc0\x00"),
    PingResp: _constant(b"\xd0\x00"),
    Disconnect: _reason_encoder(0xE0),
    Auth: _reason_encoder(0xF0),
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
    for key in ("topics", "return_codes", "reason_codes"):
        if isinstance(values.get(key), list):
            values[key] = tuple(tuple(t) if isinstance(t, list) else t for t in values[key])
    try:
        return cls(**values)
    except TypeError as exc:
        raise EncodeError(f"cannot make a {cls.__name__} of {message!r}: {exc}") from exc


class MqttCodec(BaseCodec):
    """MQTT 3.1, 3.1.1 and 5.0 packets; see the module docstring.

    ``max_packet_size`` bounds a whole packet, fixed header included (the codec's
    ``max_frame_size``); at most :data:`MAX_REMAINING_LENGTH` plus the 5-byte header.
    ``protocol_level``: the version a connection's decoder starts with (4: 3.1.1, 5:
    MQTT 5.0, as a client that sent a level-5 CONNECT needs); every CONNECT decoded sets
    it for the packets after it, so a server needs only the default.
    """

    def __init__(self, *, max_packet_size: int = 1 << 20, protocol_level: int = 4) -> None:
        if not 2 <= max_packet_size <= MAX_REMAINING_LENGTH + 5:
            raise ValueError(f"max_packet_size must be in 2..{MAX_REMAINING_LENGTH + 5}")
        if protocol_level not in (3, 4, 5):
            raise ValueError("protocol_level must be 3, 4 or 5")
        self.max_frame_size = max_packet_size
        self.protocol_level = protocol_level

    @property
    def max_packet_size(self) -> int:
        """The largest packet accepted (the same as ``max_frame_size``)."""
        return self.max_frame_size

    def decoder(self) -> Decoder:
        return _MqttDecoder(self.max_frame_size, self.protocol_level == 5)

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
        level = f", protocol_level={self.protocol_level}" if self.protocol_level != 4 else ""
        return f"MqttCodec(max_packet_size={self.max_frame_size}{level})"

    # -- for gevwire.testing.check_codec and fuzz/ ---------------------------------------

    def example_strategy(self, kinds: Collection[str] | None = None) -> SearchStrategy[Packet]:
        """A hypothesis strategy of valid packets (of the types named in ``kinds``, by
        default every type of the codec's protocol version), equal to what they decode
        back to: MQTT 5.0 ones, with properties, for ``protocol_level=5``."""
        if self.protocol_level == 5:
            return _packet_strategy5(kinds)
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
                       draw(st.integers(0, 255).filter(lambda level: level != 5)))

    by_kind: dict[str, SearchStrategy[Any]] = {
        "connect": connects(),
        "connack": st.builds(ConnAck, st.integers(0, 5), st.booleans()),
        "unsuback": st.builds(UnsubAck, ids),
        "publish": publishes(),
        "subscribe": st.builds(Subscribe, ids, st.lists(st.tuples(filters, qos), min_size=1,
                                                        max_size=4).map(tuple)),
        "suback": st.builds(SubAck, ids, st.lists(st.sampled_from([0, 1, 2, SUBACK_FAILURE]),
                                                  min_size=1, max_size=6).map(tuple)),
        "unsubscribe": st.builds(Unsubscribe, ids,
                                 st.lists(filters, min_size=1, max_size=4).map(tuple)),
        **{cls.type: st.builds(cls, ids)
           for cls in (PubAck, PubRec, PubRel, PubComp)},
        **{cls.type: st.builds(cls) for cls in (PingReq, PingResp, Disconnect)},
    }
    chosen = list(by_kind) if kinds is None else list(kinds)
    unknown = set(chosen) - set(by_kind)
    if unknown:
        raise ValueError(f"unknown packet types {sorted(unknown)}")
    return st.one_of([by_kind[kind] for kind in chosen])


def mqtt(*, max_packet_size: int = 1 << 20, protocol_level: int = 4) -> MqttCodec:
    """MQTT packets, each at most ``max_packet_size`` bytes: 3.1 / 3.1.1, and 5.0 on a
    connection whose CONNECT says level 5 (or from the start, ``protocol_level=5``).

        gevwire.Server(broker, codec=mqtt(max_packet_size=256 << 10))
    """
    return MqttCodec(max_packet_size=max_packet_size, protocol_level=protocol_level)


def _properties_strategy(packet: int) -> SearchStrategy[Properties]:
    """Dicts of the properties a packet of type ``packet`` may carry, valid values."""
    from hypothesis import strategies as st

    text = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"),
                   max_size=8)
    values: dict[int, SearchStrategy[Any]] = {
        _BYTE: st.integers(0, 255), _TWO: st.integers(0, 0xFFFF),
        _FOUR: st.integers(0, 0xFFFF_FFFF), _VARINT: st.integers(1, _MAX_VARINT),
        _STRING: text, _PAIR: st.tuples(text, text), _BINARY: st.binary(max_size=8),
    }
    optional: dict[str, SearchStrategy[Any]] = {}
    for spec in PROPERTIES.values():
        if packet not in spec.packets or spec.name == "topic_alias":
            continue
        value = values[spec.kind]
        if spec.boolean:
            value = st.integers(0, 1)
        elif spec.nonzero:
            value = value.filter(bool)
        if spec.repeats:
            most = 1 if packet == 8 else 3
            value = st.lists(value, min_size=1, max_size=most).map(tuple)
        optional[spec.name] = value
    if not optional:
        return st.just({})

    @st.composite
    def draw_properties(draw: st.DrawFn) -> Properties:
        chosen = draw(st.lists(st.sampled_from(sorted(optional)), max_size=4, unique=True))
        return {name: draw(optional[name]) for name in chosen}

    return draw_properties()


def _packet_strategy5(kinds: Collection[str] | None) -> SearchStrategy[Packet]:
    """MQTT 5.0 packets: every field and property in its valid range."""
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
    options = st.integers(0, 0x3F).filter(_valid_options)

    def props(packet: int) -> SearchStrategy[Properties]:
        return _properties_strategy(packet)

    @st.composite
    def publishes(draw: st.DrawFn) -> Publish:
        level = draw(qos)
        properties = draw(props(3))
        topic = draw(names)
        if draw(st.booleans()):  # a topic alias, with or without the topic
            properties["topic_alias"] = draw(st.integers(1, 0xFFFF))
            topic = draw(st.just("") | st.just(topic))
        return Publish(topic, draw(payloads), level, draw(st.booleans()),
                       draw(st.booleans()) if level else False,
                       draw(ids) if level else None, properties)

    @st.composite
    def connects(draw: st.DrawFn) -> Connect:
        will = draw(st.none() | st.builds(Will, names, st.binary(max_size=16), qos,
                                          st.booleans(), props(WILL_PROPERTIES)))
        properties = draw(props(1))
        if "authentication_data" in properties:
            properties.setdefault("authentication_method", "m")
        return Connect(draw(text), draw(st.booleans()), draw(st.integers(0, 0xFFFF)), will,
                       draw(st.none() | text), draw(st.none() | st.binary(max_size=16)),
                       draw(st.sampled_from(["MQTT"]) | text), 5, properties)

    @st.composite
    def connacks(draw: st.DrawFn) -> ConnAck:
        code = draw(st.sampled_from(sorted(REASON_CODES[2])))
        return ConnAck(code, not code and draw(st.booleans()), draw(props(2)))

    def acks(cls: Any) -> SearchStrategy[Packet]:
        kind = cls.packet_type
        codes = st.sampled_from(sorted(REASON_CODES[kind]))
        return st.one_of(st.builds(cls, ids), st.builds(cls, ids, codes),
                         st.builds(cls, ids, codes, props(kind)))

    def reasons(cls: Any) -> SearchStrategy[Packet]:
        kind = cls.packet_type
        codes = st.sampled_from(sorted(REASON_CODES[kind]))
        return st.one_of(st.builds(cls), st.builds(cls, codes),
                         st.builds(cls, codes, props(kind)))

    def code_lists(kind: int) -> SearchStrategy[tuple[int, ...]]:
        return st.lists(st.sampled_from(sorted(REASON_CODES[kind])), min_size=1,
                        max_size=6).map(tuple)

    by_kind: dict[str, SearchStrategy[Any]] = {
        "connect": connects(),
        "connack": connacks(),
        "publish": publishes(),
        "subscribe": st.builds(Subscribe, ids, st.lists(st.tuples(filters, options),
                                                        min_size=1, max_size=4).map(tuple),
                               props(8)),
        "suback": st.builds(SubAck, ids, code_lists(9), props(9)),
        "unsubscribe": st.builds(Unsubscribe, ids,
                                 st.lists(filters, min_size=1, max_size=4).map(tuple),
                                 props(10)),
        "unsuback": st.builds(UnsubAck, ids, code_lists(11), props(11)),
        **{cls.type: acks(cls) for cls in (PubAck, PubRec, PubRel, PubComp)},
        **{cls.type: st.builds(cls) for cls in (PingReq, PingResp)},
        **{cls.type: reasons(cls) for cls in (Disconnect, Auth)},
    }
    chosen = list(by_kind) if kinds is None else list(kinds)
    unknown = set(chosen) - set(by_kind)
    if unknown:
        raise ValueError(f"unknown packet types {sorted(unknown)}")
    return st.one_of([by_kind[kind] for kind in chosen])
