"""The MQTT 3.1.1 codec on byte strings: conformance (``check_codec``), the fixed
header's limits, the reserved flag bits of every packet type, malformed bodies, and
equality with the construct declarations."""

from __future__ import annotations

import io
import time
from typing import Any

import construct  # type: ignore[import-untyped]
import pytest
from hypothesis import assume, event, given, settings
from hypothesis import strategies as st

import gevwire
from gevwire.codecs import mqtt as m
from gevwire.errors import EncodeError, FrameError, FrameTooLarge
from gevwire.testing import FrameCutter, HandlerHarness, check_codec, feed

CODEC = m.mqtt()

# -- strategies ------------------------------------------------------------------------

#: Every packet type, as the codec offers them to check_codec and fuzz/.
packets = CODEC.example_strategy()
#: Every packet with a body but CONNECT.
bodied = CODEC.example_strategy(
    [k for k in m.PACKET_TYPES
     if k not in ("connect", "pingreq", "pingresp", "disconnect", "auth")])


def decode_one(data: bytes, codec: m.MqttCodec = CODEC) -> Any:
    frames = feed(codec, [data])
    assert len(frames) == 1, frames
    return frames[0]


def errors_of(data: bytes, codec: m.MqttCodec = CODEC) -> tuple[list[Any], list[BaseException]]:
    return FrameCutter(codec).push(data)


# -- conformance -----------------------------------------------------------------------


def test_check_codec_passes() -> None:
    report = check_codec(CODEC, examples=150)  # messages: CODEC.example_strategy()
    assert report.passed == ["round trip", "splits", "truncation", "max_frame_size",
                             "garbage"]


@settings(max_examples=200, deadline=None)
@given(st.lists(packets, min_size=1, max_size=6), st.data())
def test_any_split_yields_the_same_packets(stream: list[m.Packet], data: st.DataObject) -> None:
    encoded = b"".join(CODEC.encode(p) for p in stream)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(encoded)), max_size=8)))
    chunks = [encoded[a:b] for a, b in zip([0, *cuts], [*cuts, len(encoded)], strict=True)]
    assert feed(CODEC, chunks) == stream


# -- known bytes ---------------------------------------------------------------------


def test_known_packets_from_the_wire() -> None:
    # What mosquitto_pub sends: CONNECT, no client id, clean session, keep-alive 60.
    connect = decode_one(b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00")
    assert connect == m.Connect("", True, 60)
    assert decode_one(b"\x20\x02\x01\x00") == m.ConnAck(0, session_present=True)
    assert decode_one(b"\x32\x09\x00\x03a/b\x00\x07hi") == m.Publish(
        "a/b", b"hi", qos=1, packet_id=7)
    assert decode_one(b"\x3b\x09\x00\x03a/b\x00\x07hi") == m.Publish(
        "a/b", b"hi", qos=1, retain=True, dup=True, packet_id=7)
    assert decode_one(b"\x82\x08\x00\x01\x00\x03a/#\x01") == m.Subscribe(1, (("a/#", 1),))
    assert decode_one(b"\x90\x04\x00\x01\x01\x80") == m.SubAck(1, (1, 0x80))
    assert decode_one(b"\xa2\x07\x00\x02\x00\x03a/+") == m.Unsubscribe(2, ("a/+",))
    assert decode_one(b"\xc0\x00") == m.PingReq()
    assert decode_one(b"\xe0\x00") == m.Disconnect()
    assert CODEC.encode(m.PingResp()) == b"\xd0\x00"
    assert CODEC.encode(m.PubRel(5)) == b"\x62\x02\x00\x05"
    assert CODEC.encode(m.ConnAck(5)) == b"\x20\x02\x00\x05"


@pytest.mark.parametrize(("size", "header"), [
    (0, b"\x30\x00"), (127, b"\x30\x7f"), (128, b"\x30\x80\x01"),
    (16_383, b"\x30\xff\x7f"), (16_384, b"\x30\x80\x80\x01"),
    (2_097_151, b"\x30\xff\xff\x7f"), (2_097_152, b"\x30\x80\x80\x80\x01"),
    (268_435_455, b"\x30\xff\xff\xff\x7f"),
])
def test_remaining_length_encoding_matches_the_spec_table(size: int, header: bytes) -> None:
    assert m._fixed_header(0x30, size) == header
    big = m.MqttCodec(max_packet_size=m.MAX_REMAINING_LENGTH + 5)
    if size:  # (an empty PUBLISH is malformed)
        cutter = FrameCutter(big)
        assert cutter.push(header) == ([], [])  # a whole header, waiting for the body
    assert m._frame_size(header, 0, len(header), big.max_frame_size) == (
        len(header) + size, len(header))


def test_publish_across_the_two_byte_length_boundary_round_trips() -> None:
    for size in (120, 121, 122, 16_370, 16_380):  # remaining length 127/128, 16383/16384
        packet = m.Publish("t", b"x" * size)
        assert decode_one(CODEC.encode(packet)) == packet


def test_a_fifth_remaining_length_byte_is_a_frame_error() -> None:
    frames, errors = errors_of(b"\x30\xff\xff\xff\xff")
    assert frames == [] and len(errors) == 1 and isinstance(errors[0], FrameError)
    assert "longer than 4 bytes" in str(errors[0])
    # Known from the 4th byte's continuation bit: no need to wait for the 5th.
    _, errors = errors_of(b"\x30\x80\x80\x80\x80")
    assert errors and "longer than 4 bytes" in str(errors[0])


def test_oversized_packet_is_refused_from_its_header_before_buffering() -> None:
    codec = m.mqtt(max_packet_size=1000)
    cutter = FrameCutter(codec)
    frames, errors = cutter.push(b"\x30\xe6\x07")  # 3 + 998 bytes = 1001
    assert frames == [] and len(errors) == 1
    assert isinstance(errors[0], FrameTooLarge) and errors[0].size == 1001
    assert errors[0].fatal and cutter.buffered <= 3
    exact = m.Publish("t", b"x" * (1000 - 3 - 3))  # header 3 + topic 3 + payload
    assert len(codec.encode(exact)) == 1000
    assert feed(codec, [codec.encode(exact)]) == [exact]
    assert codec.max_packet_size == 1000


def test_limits_are_validated() -> None:
    with pytest.raises(ValueError):
        m.mqtt(max_packet_size=1)
    with pytest.raises(ValueError):
        m.mqtt(max_packet_size=m.MAX_REMAINING_LENGTH + 6)
    with pytest.raises(EncodeError):
        m._fixed_header(0x30, m.MAX_REMAINING_LENGTH + 1)


# -- reserved flag bits (spec 2.2.2) ---------------------------------------------------

# The flags each packet type must carry, written from the spec's table 2.2.
SPEC_FLAGS = {1: 0, 2: 0, 4: 0, 5: 0, 6: 2, 7: 0, 8: 2, 9: 0, 10: 2, 11: 0, 12: 0, 13: 0,
              14: 0}
FIXED_REMAINING = {2: 2, 4: 2, 5: 2, 6: 2, 7: 2, 11: 2, 12: 0, 13: 0, 14: 0}


def _spec_allows(first: int) -> bool:
    kind, flags = first >> 4, first & 0xF
    if kind == 3:
        qos, dup = (flags >> 1) & 3, flags & 8
        return qos != 3 and not (qos == 0 and dup)
    return SPEC_FLAGS.get(kind) == flags


@pytest.mark.parametrize("first", range(256))
def test_reserved_flags_are_checked_for_every_first_byte(first: int) -> None:
    remaining = FIXED_REMAINING.get(first >> 4, 10)
    # The header alone: a valid one waits for its body (or is a whole 0-length packet).
    frames, errors = errors_of(bytes((first, remaining)))
    if _spec_allows(first):
        assert errors == []
        assert len(frames) == (1 if remaining == 0 else 0)
    else:
        assert frames == [] and len(errors) == 1 and isinstance(errors[0], FrameError)


@pytest.mark.parametrize("data", [b"\xc0\x01\x00", b"\xe0\x02\x00\x00", b"\x40\x03\x00\x01\x00",
                                  b"\x20\x01\x00", b"\x62\x00"])
def test_fixed_size_packets_with_another_length_are_refused(data: bytes) -> None:
    _, errors = errors_of(data[:2])
    assert errors and isinstance(errors[0], FrameError)


# -- malformed bodies ------------------------------------------------------------------


def _connect_body(flags: int, *, tail: bytes = b"", client_id: bytes = b"\x00\x01c") -> bytes:
    body = b"\x00\x04MQTT\x04" + bytes((flags,)) + b"\x00\x3c" + client_id + tail
    return m._fixed_header(0x10, len(body)) + body


MALFORMED = {
    "connect reserved flag": _connect_body(0x03),
    "connect will QoS 3": _connect_body(0x1E, tail=b"\x00\x01t\x00\x00"),
    "connect will retain without will": _connect_body(0x22),
    "connect will QoS without will": _connect_body(0x0A),
    "connect password without user name": _connect_body(0x42, tail=b"\x00\x01p"),
    "connect trailing bytes": _connect_body(0x02, tail=b"\x00"),
    "connect truncated payload": _connect_body(0x82),  # user name flag, no user name
    "connect bad UTF-8 client id": _connect_body(0x02, client_id=b"\x00\x02\xc3\x28"),
    "connect surrogate client id": _connect_body(0x02, client_id=b"\x00\x03\xed\xa0\x80"),
    "connect NUL in client id": _connect_body(0x02, client_id=b"\x00\x01\x00"),
    "connect will topic with wildcard": _connect_body(0x06, tail=b"\x00\x01#\x00\x00"),
    "connack reserved bits": b"\x20\x02\x02\x00",
    "publish empty topic": b"\x30\x02\x00\x00",
    "publish wildcard topic +": b"\x30\x05\x00\x03a/+",
    "publish wildcard topic #": b"\x30\x03\x00\x01#",
    "publish NUL in topic": b"\x30\x03\x00\x01\x00",
    "publish bad UTF-8 topic": b"\x30\x03\x00\x01\xff",
    "publish topic longer than packet": b"\x30\x03\x00\x05a",
    "publish packet id 0": b"\x32\x05\x00\x01a\x00\x00",
    "publish QoS 1 without packet id": b"\x32\x04\x00\x01a\x00",
    "puback packet id 0": b"\x40\x02\x00\x00",
    "subscribe no topics": b"\x82\x02\x00\x01",
    "subscribe packet id 0": b"\x82\x06\x00\x00\x00\x01a\x00",
    "subscribe QoS 3": b"\x82\x06\x00\x01\x00\x01a\x03",
    "subscribe reserved option bits": b"\x82\x06\x00\x01\x00\x01a\x41",
    "subscribe missing QoS byte": b"\x82\x05\x00\x01\x00\x01a",
    "subscribe truncated filter": b"\x82\x05\x00\x01\x00\x05a",
    "subscribe bad UTF-8": b"\x82\x06\x00\x01\x00\x01\xfe\x00",
    "suback no codes": b"\x90\x02\x00\x01",
    "suback bad code": b"\x90\x03\x00\x01\x03",
    "unsubscribe no topics": b"\xa2\x02\x00\x01",
    "unsubscribe truncated": b"\xa2\x04\x00\x01\x00\x09",
    "reserved type 0": b"\x00\x00",
    "reserved type 15": b"\xf0\x00",
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_packets_are_frame_errors(name: str) -> None:
    data = MALFORMED[name]
    for chunks in ([data], [data[i : i + 1] for i in range(len(data))]):
        cutter = FrameCutter(CODEC)
        frames: list[Any] = []
        errors: list[BaseException] = []
        for chunk in chunks:
            got, errs = cutter.push(chunk)
            frames += got
            errors += errs
        assert frames == [], name
        assert len(errors) == 1 and isinstance(errors[0], FrameError), (name, errors)
        assert errors[0].fatal


def test_packets_before_a_malformed_one_are_still_cut() -> None:
    data = CODEC.encode(m.PingReq()) + CODEC.encode(m.PubAck(3)) + b"\x30\x03\x00\x01#"
    frames, errors = errors_of(data)
    assert frames == [m.PingReq(), m.PubAck(3)]
    assert len(errors) == 1 and isinstance(errors[0], FrameError)


# -- equal to construct ----------------------------------------------------------------


def _body(data: bytes) -> bytes:
    _, header = m._frame_size(data, 0, len(data), 1 << 30)
    body: bytes = data[header:]
    return body


@settings(max_examples=300, deadline=None)
@given(packets)
def test_bodies_match_the_construct_declarations(packet: m.Packet) -> None:
    body = _body(CODEC.encode(packet))
    if isinstance(packet, m.Connect):
        parsed = m.CONNECT_BODY.parse(body)
        assert (parsed.client_id, parsed.keep_alive, parsed.flags.clean_session,
                parsed.username, parsed.password, parsed.protocol_name,
                parsed.protocol_level) == (
            packet.client_id, packet.keep_alive, packet.clean_session, packet.username,
            packet.password, packet.protocol_name, packet.protocol_level)
        will = packet.will
        assert parsed.will_topic == (will.topic if will else None)
        assert parsed.will_message == (will.message if will else None)
        assert parsed.flags.will_qos == (will.qos if will else 0)
    elif isinstance(packet, m.Publish):
        schema = m.PUBLISH_BODY if packet.qos else m.PUBLISH_BODY_QOS0
        parsed = schema.parse(body)
        assert parsed.topic == packet.topic.encode() and parsed.payload == packet.payload
        assert parsed.get("packet_id") == packet.packet_id
        assert schema.build(parsed) == body
    elif isinstance(packet, m.Subscribe):
        parsed = m.SUBSCRIBE_BODY.parse(body)
        assert parsed.packet_id == packet.packet_id
        assert [(t.topic_filter, t.options) for t in parsed.topics] == list(packet.topics)
        assert m.SUBSCRIBE_BODY.build(parsed) == body
    elif isinstance(packet, m.Unsubscribe):
        parsed = m.UNSUBSCRIBE_BODY.parse(body)
        assert (parsed.packet_id, tuple(parsed.topics)) == (packet.packet_id, packet.topics)
        assert m.UNSUBSCRIBE_BODY.build(parsed) == body
    elif isinstance(packet, m.SubAck):
        parsed = m.SUBACK_BODY.parse(body)
        assert (parsed.packet_id, tuple(parsed.return_codes)) == (packet.packet_id,
                                                                  packet.return_codes)
    elif isinstance(packet, m.ConnAck):
        parsed = m.CONNACK_BODY.parse(body)
        assert (parsed.ack_flags, parsed.return_code) == (int(packet.session_present),
                                                          packet.return_code)
    elif hasattr(packet, "packet_id"):
        assert m.PACKET_ID_BODY.parse(body).packet_id == packet.packet_id
    else:
        assert body == b""


def _reference(first: int, body: bytes) -> Any:
    """What the construct declarations plus the spec's extra rules make of ``body``:
    the packet, or None where the spec calls it malformed."""
    kind, flags = first >> 4, first & 0xF
    schema = {2: m.CONNACK_BODY, 8: m.SUBSCRIBE_BODY, 9: m.SUBACK_BODY,
              10: m.UNSUBSCRIBE_BODY}.get(kind, m.PACKET_ID_BODY)
    if kind == 3:
        schema = m.PUBLISH_BODY if flags & 6 else m.PUBLISH_BODY_QOS0
    stream = io.BytesIO(body)
    try:
        v = schema.parse_stream(stream)
    except (construct.ConstructError, UnicodeDecodeError):
        return None
    if stream.tell() != len(body) or v.get("packet_id", 1) == 0:
        return None  # (GreedyRange stops quietly before a truncated entry)
    if kind == 2:
        return m.ConnAck(v.return_code, True) if v.ack_flags == 1 else (
            m.ConnAck(v.return_code, False) if v.ack_flags == 0 else None)
    if kind == 3:
        try:
            topic = v.topic.decode()
        except UnicodeDecodeError:
            return None
        if not m.valid_topic_name(topic):
            return None
        return m.Publish(topic, v.payload, (flags >> 1) & 3, bool(flags & 1), bool(flags & 8),
                         v.get("packet_id"))
    if kind == 8:
        topics = tuple((t.topic_filter, t.options) for t in v.topics)
        if not topics or any(o > 2 or "\x00" in f for f, o in topics):
            return None
        return m.Subscribe(v.packet_id, topics)
    if kind == 9:
        codes = tuple(v.return_codes)
        ok = codes and all(code in (0, 1, 2, 0x80) for code in codes)
        return m.SubAck(v.packet_id, codes) if ok else None
    if kind == 10:
        names = tuple(v.topics)
        ok = names and not any("\x00" in t for t in names)
        return m.Unsubscribe(v.packet_id, names) if ok else None
    return m.PACKET_TYPES[{4: "puback", 5: "pubrec", 6: "pubrel", 7: "pubcomp",
                           11: "unsuback"}[kind]](v.packet_id)


@settings(max_examples=600, deadline=None)
@given(bodied, st.data())
def test_hand_cut_bodies_agree_with_construct_on_damaged_input(packet: m.Packet,
                                                               data: st.DataObject) -> None:
    encoded = CODEC.encode(packet)
    first = encoded[0]
    body = bytearray(_body(encoded))
    for _ in range(data.draw(st.integers(0, 3), label="damage")):
        kind = data.draw(st.sampled_from(["cut", "flip", "grow", "set"]))
        i = data.draw(st.integers(0, max(0, len(body) - 1)))
        if kind == "cut":
            del body[i:]
        elif kind == "grow":
            body[i:i] = data.draw(st.binary(min_size=1, max_size=4))
        elif body:
            body[i] = body[i] ^ (1 << data.draw(st.integers(0, 7))) if kind == "flip" else \
                data.draw(st.sampled_from([0x00, 0x23, 0x2B, 0x7F, 0x80, 0xFF]))
    fixed = FIXED_REMAINING.get(first >> 4)
    assume(fixed is None or len(body) == fixed)  # other sizes fail at the header
    frames, errors = errors_of(m._fixed_header(first, len(body)) + bytes(body))
    expected = _reference(first, bytes(body))
    event("malformed" if expected is None else "valid")
    if expected is None:
        assert frames == [] and len(errors) == 1 and isinstance(errors[0], FrameError)
    else:
        assert (frames, errors) == ([expected], [])


# -- encoding --------------------------------------------------------------------------


def test_dicts_and_encoded_bytes_are_encoded() -> None:
    as_dict = CODEC.encode({"type": "publish", "topic": "a/b", "payload": b"x", "qos": 1,
                            "packet_id": 9})
    assert as_dict == CODEC.encode(m.Publish("a/b", b"x", 1, packet_id=9))
    assert CODEC.encode({"type": "subscribe", "packet_id": 1, "topics": [["a", 1]]}) == \
        CODEC.encode(m.Subscribe(1, (("a", 1),)))
    connect = {"type": "connect", "client_id": "c", "will": {"topic": "w", "message": b"m"}}
    assert decode_one(CODEC.encode(connect)) == m.Connect("c", will=m.Will("w", b"m"))
    raw = CODEC.encode(m.PingReq())
    assert CODEC.encode(raw) == raw


@pytest.mark.parametrize("message", [
    m.Publish("a/+", b""), m.Publish("", b""), m.Publish("a", b"", qos=1),
    m.Publish("a", b"", qos=0, packet_id=3), m.Publish("a", b"", qos=3, packet_id=1),
    m.Publish("a", b"", qos=0, dup=True), m.PubAck(0), m.PubAck(70000),
    m.Subscribe(1, ()), m.SubAck(1, (3,)), m.Unsubscribe(1, ()),
    m.Connect("c", password=b"p"), m.Connect("c", will=m.Will("a/#")),
    m.Connect("c\x00"), {"type": "nope"}, {"type": "puback", "bogus": 1}, 42,
])
def test_invalid_messages_are_encode_errors(message: Any) -> None:
    with pytest.raises(EncodeError):
        CODEC.encode(message)


# -- routing and topics ----------------------------------------------------------------


def test_router_routes_decoded_packets_by_type() -> None:
    router = gevwire.Router(key="type")
    seen: list[str] = []

    @router.on("pingreq")
    def ping(conn: Any, packet: m.PingReq) -> m.PingResp:
        seen.append(packet["type"])
        return m.PingResp()

    @router.on("publish")
    def publish(conn: Any, packet: m.Publish) -> m.PubAck | None:
        seen.append(packet.topic)
        return m.PubAck(packet.packet_id) if packet.packet_id else None

    harness = HandlerHarness(router, CODEC)
    stream = CODEC.encode(m.PingReq()) + CODEC.encode(m.Publish("t", b"", 1, packet_id=4))
    assert harness.feed(stream) == [m.PingResp(), m.PubAck(4)]
    assert harness.output == b"\xd0\x00\x40\x02\x00\x04"
    assert seen == ["pingreq", "t"]
    with pytest.raises(KeyError):
        m.PingReq()["topic"]


@pytest.mark.parametrize(("topic_filter", "valid"), [
    ("a/b", True), ("#", True), ("+", True), ("a/+/c", True), ("a/#", True), ("+/+", True),
    ("/", True), ("a//b", True), ("$SYS/#", True),
    ("", False), ("a/#/b", False), ("a#", False), ("a/b#", False), ("a+", False),
    ("a/+b", False), ("##", False), ("a\x00", False),
])
def test_topic_filter_validation(topic_filter: str, valid: bool) -> None:
    assert m.valid_topic_filter(topic_filter) is valid


@pytest.mark.parametrize(("topic_filter", "topic", "matches"), [
    ("a/b", "a/b", True), ("a/b", "a/c", False), ("a/+", "a/b", True),
    ("a/+", "a/b/c", False), ("a/+", "a", False), ("a/#", "a", True),
    ("a/#", "a/b/c", True), ("#", "a/b", True), ("+/+", "/x", True), ("+", "/x", False),
    ("a/+/c", "a//c", True), ("#", "$SYS/x", False), ("+/x", "$SYS/x", False),
    ("$SYS/#", "$SYS/x", True), ("a/b", "a/b/", False),
])
def test_topic_matching(topic_filter: str, topic: str, matches: bool) -> None:
    assert m.topic_matches(topic_filter, topic) is matches


# -- MQTT 5.0 --------------------------------------------------------------------------

CODEC5 = m.mqtt(protocol_level=5)
#: Every MQTT 5.0 packet type, with properties and reason codes.
packets5 = CODEC5.example_strategy()
CONNECT5 = m.Connect("c", protocol_level=5, properties={"session_expiry_interval": 30})


def test_check_codec_passes_on_mqtt5_packets() -> None:
    report = check_codec(CODEC5, examples=200)
    assert report.passed == ["round trip", "splits", "truncation", "max_frame_size",
                             "garbage"]


@settings(max_examples=150, deadline=None)
@given(st.lists(packets5, min_size=1, max_size=6), st.data())
def test_a_level_5_connect_switches_the_connection_to_mqtt5(stream: list[m.Packet],
                                                            data: st.DataObject) -> None:
    """The default codec serves every version on one port: what follows a level-5
    CONNECT is read as MQTT 5.0, on any split of the stream."""
    stream = [CONNECT5, *(p for p in stream if not isinstance(p, m.Connect))]
    encoded = b"".join(CODEC.encode(p) for p in stream)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(encoded)), max_size=8)))
    chunks = [encoded[a:b] for a, b in zip([0, *cuts], [*cuts, len(encoded)], strict=True)]
    assert feed(CODEC, chunks) == stream


def test_each_connection_keeps_its_own_version() -> None:
    v5 = FrameCutter(CODEC)
    v3 = FrameCutter(CODEC)
    publish5 = m.Publish("t", b"x", properties={"content_type": "text/plain"})
    assert v5.push(CODEC.encode(CONNECT5) + CODEC.encode(publish5)) == (
        [CONNECT5, publish5], [])
    assert v3.push(CODEC.encode(m.Connect("c")) + CODEC.encode(m.Publish("t", b"x"))) == (
        [m.Connect("c"), m.Publish("t", b"x")], [])
    # The same bytes mean another thing by version: 3.1.1 reads the property length as
    # payload, so the version really is per connection.
    assert v3.push(b"\x30\x04\x00\x01t\x00") == ([m.Publish("t", b"\x00")], [])
    assert v5.push(b"\x30\x04\x00\x01t\x00") == ([m.Publish("t", b"", properties={})], [])


def test_mqtt5_packets_from_the_wire() -> None:
    """Bytes laid out by hand from the MQTT 5.0 spec (3.1.2, 3.2.2, 3.3.2, 3.4.2 ...)."""
    connect = (b"\x10\x10\x00\x04MQTT\x05\x02\x00\x3c"  # level 5, clean start, 60 s
               b"\x03\x21\x00\x14"  # properties: receive maximum 20
               b"\x00\x00")  # empty client id
    assert decode_one(connect) == m.Connect("", True, 60, protocol_level=5,
                                            properties={"receive_maximum": 20})
    frames = feed(CODEC, [connect,
                          b"\x30\x0a\x00\x01t\x05\x02\x00\x00\x00\x05h",
                          b"\x40\x02\x00\x07", b"\x40\x03\x00\x07\x10",
                          b"\x40\x04\x00\x07\x10\x00", b"\xe0\x00", b"\xe0\x01\x04",
                          b"\xf0\x02\x18\x00"])
    assert frames[1:] == [
        m.Publish("t", b"h", properties={"message_expiry_interval": 5}),
        m.PubAck(7), m.PubAck(7, 0x10), m.PubAck(7, 0x10, {}), m.Disconnect(),
        m.Disconnect(0x04), m.Auth(0x18, {})]
    assert CODEC.encode(m.SubAck(1, (0, 0x87), {})) == b"\x90\x05\x00\x01\x00\x00\x87"
    assert CODEC.encode(m.UnsubAck(1, (0x11,), {})) == b"\xb0\x04\x00\x01\x00\x11"
    assert CODEC.encode(m.ConnAck(0x8C, properties={})) == b"\x20\x03\x00\x8c\x00"
    assert CODEC.encode(m.Subscribe(2, (("a", 0x2E),), {})) == \
        b"\x82\x07\x00\x02\x00\x00\x01a\x2e"


def _paho_name(name: str) -> str:
    """paho-mqtt's attribute for a property (by its identifier: "MaximumQoS")."""
    from paho.mqtt.properties import Properties

    ident = m._BY_NAME[name].identifier
    return next(key.replace(" ", "") for key, value in Properties(1).names.items()
                if value == ident)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([1, 2, 3, 4, 8, 9, 11, 14, 15]), st.data())
def test_properties_agree_with_paho_mqtt(packet: int, data: st.DataObject) -> None:
    """paho-mqtt's property packer (nobody here wrote it) reads what we write and we
    read what it writes, for every property of every packet type."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    props = data.draw(m._properties_strategy(packet))
    # paho refuses a Maximum Packet Size over 268435455 (no packet can be larger); the
    # spec's four-byte integer allows it.
    assume(props.get("maximum_packet_size", 1) <= m.MAX_REMAINING_LENGTH)
    ours = m._encode_properties(props, packet)
    theirs = Properties(packet)
    for name, value in props.items():
        for item in (value if m._BY_NAME[name].repeats else (value,)):
            setattr(theirs, _paho_name(name), item)
    assert m._read_properties(theirs.pack(), 0, len(theirs.pack()), packet) == (
        props, len(theirs.pack()))
    back, used = Properties(packet).unpack(ours)
    assert used == len(ours)
    for name, value in props.items():
        got = getattr(back, _paho_name(name))
        assert (tuple(got) if m._BY_NAME[name].repeats else got) == value
    assert packet != PacketTypes.PUBLISH or "topic_alias" not in props


def _publish5(props: bytes) -> bytes:
    body = b"\x00\x01t" + props + b"payload"
    return m._fixed_header(0x30, len(body)) + body


MALFORMED5 = {
    # (bytes after a level-5 CONNECT, the reason code the spec names)
    "duplicate message expiry": (_publish5(b"\x0a\x02\x00\x00\x00\x01\x02\x00\x00\x00\x02"),
                                 0x82),
    "duplicate topic alias": (_publish5(b"\x06\x23\x00\x01\x23\x00\x02"), 0x82),
    "unknown property 0x7f": (_publish5(b"\x02\x7f\x00"), 0x81),
    "unknown property 0x00": (_publish5(b"\x02\x00\x00"), 0x81),
    "property of another packet": (_publish5(b"\x03\x21\x00\x01"), 0x81),
    "property truncated": (_publish5(b"\x03\x02\x00\x00"), 0x81),
    "property length past the packet": (_publish5(b"\x7f"), 0x81),
    "payload format 2": (_publish5(b"\x02\x01\x02"), 0x82),
    "topic alias 0": (_publish5(b"\x03\x23\x00\x00"), 0x82),
    "empty topic without alias": (b"\x30\x03\x00\x00\x00", 0x82),
    "bad UTF-8 content type": (_publish5(b"\x04\x03\x00\x01\xff"), 0x81),
    "subscription identifier 0": (_publish5(b"\x02\x0b\x00"), 0x82),
    "two subscription identifiers in SUBSCRIBE":
        (b"\x82\x0b\x00\x01\x04\x0b\x01\x0b\x02\x00\x01a\x00", 0x82),
    "subscribe retain handling 3": (b"\x82\x07\x00\x01\x00\x00\x01a\x30", 0x81),
    "subscribe reserved option bits": (b"\x82\x07\x00\x01\x00\x00\x01a\x40", 0x81),
    "puback reason code 0x01": (b"\x40\x03\x00\x01\x01", 0x82),
    "pubrel reason code 0x10": (b"\x62\x03\x00\x01\x10", 0x82),
    "puback bytes after properties": (b"\x40\x05\x00\x01\x00\x00\x00", 0x81),
    "disconnect reason code 0x05": (b"\xe0\x01\x05", 0x82),
    "auth reserved flags": (b"\xf1\x00", 0x81),
    "suback without codes": (b"\x90\x03\x00\x01\x00", 0x82),
    "receive maximum 0": (b"\x20\x06\x00\x00\x03\x21\x00\x00", 0x82),
    "session present with a refusal": (b"\x20\x03\x01\x80\x00", 0x82),
}


@pytest.mark.parametrize("name", sorted(MALFORMED5))
def test_malformed_mqtt5_packets_are_frame_errors_with_the_spec_reason(name: str) -> None:
    data, reason = MALFORMED5[name]
    for chunks in ([data], [data[i : i + 1] for i in range(len(data))]):
        cutter = FrameCutter(CODEC5)
        frames: list[Any] = []
        errors: list[BaseException] = []
        for chunk in chunks:
            got, errs = cutter.push(chunk)
            frames += got
            errors += errs
        assert frames == [], name
        assert len(errors) == 1 and isinstance(errors[0], FrameError), (name, errors)
        assert getattr(errors[0], "reason_code", 0x81) == reason, (name, errors[0])


def test_auth_is_mqtt5_only() -> None:
    assert errors_of(b"\xf0\x00")[1]  # 3.1.1: a reserved packet type
    assert FrameCutter(CODEC5).push(b"\xf0\x00") == ([m.Auth()], [])


def test_mqtt5_connect_password_without_user_name_is_allowed() -> None:
    packet = m.Connect("c", password=b"secret", protocol_level=5, properties={})
    assert decode_one(CODEC.encode(packet)) == packet


def test_announced_length_of_a_large_mqtt5_publish() -> None:
    decoder = CODEC5.decoder()
    data = CODEC5.encode(m.Publish("t", b"x" * 100_000, properties={"user_property":
                                                                       (("k", "v"),)}))
    ring = gevwire.RingBuffer(64)
    ring.write(data[:40])
    assert decoder.announced_length(ring) == len(data)
    assert decoder.decode(ring) is None


@pytest.mark.parametrize("message", [
    m.Connect("c", properties={}),  # properties need level 5
    m.Connect("c", will=m.Will("w", properties={})),
    m.Publish("t", properties={"receive_maximum": 1}),  # not a PUBLISH property
    m.Publish("t", properties={"bogus": 1}),
    m.Publish("t", properties={"topic_alias": 0}),
    m.Publish("t", properties={"payload_format_indicator": 2}),
    m.Publish("t", properties={"message_expiry_interval": 1 << 32}),
    m.Publish("t", properties={"user_property": ("k", "v")}),  # one pair, not a tuple
    m.Publish("", properties={}),  # an empty topic needs a topic alias
    m.Subscribe(1, (("a", 3),), {}), m.Subscribe(1, (("a", 0x30),), {}),
    m.Subscribe(1, (("a", 0),), {"subscription_identifier": (1, 2)}),
    m.PubAck(1, 0x05), m.PubRel(1, 0x10, {}), m.Disconnect(0x05), m.Auth(0x01),
    m.UnsubAck(1, (0x11,)), m.UnsubAck(1, (), {}), m.ConnAck(0x80, True, {}),
    m.SubAck(1, (0x03,), {}),
])
def test_invalid_mqtt5_messages_are_encode_errors(message: Any) -> None:
    with pytest.raises(EncodeError):
        CODEC.encode(message)


def test_protocol_level_is_validated() -> None:
    with pytest.raises(ValueError):
        m.mqtt(protocol_level=6)
    assert repr(CODEC5) == "MqttCodec(max_packet_size=1048576, protocol_level=5)"


def test_a_connect_of_an_unknown_level_decodes_to_what_its_fixed_part_says() -> None:
    """So a server can answer it with CONNACK 0x01, as MQTT 3.1.1 requires (3.1.2-2),
    whatever the rest of a future version's CONNECT holds."""
    body = b"\x00\x04MQTT\x06\x02\x00\x3c\x07\x11\x00\x00\x00\x10\x00\x00\x01c"
    packet = decode_one(m._fixed_header(0x10, len(body)) + body)
    assert packet == m.Connect("", True, 60, protocol_name="MQTT", protocol_level=6)
    body4 = b"\x00\x04MQTT\x04\x02\x00\x3c\x07\x11\x00\x00\x00\x10\x00\x00\x01c"
    assert errors_of(m._fixed_header(0x10, len(body4)) + body4)[1]  # level 4: malformed


def test_properties_encoded_once_are_written_as_they_are() -> None:
    pairs = tuple((f"k{i}", "v") for i in range(50))
    shared = m.encode_properties({"user_property": pairs, "content_type": "t"}, 3)
    assert shared.names == {"user_property", "content_type"}
    plain = m.Publish("a", b"x", 1, packet_id=5,
                      properties={"user_property": pairs, "content_type": "t"})
    once = m.Publish("a", b"x", 1, packet_id=5, properties=shared)
    assert CODEC.encode(once) == CODEC.encode(plain)
    aliased = m.encode_properties({"topic_alias": 2, "user_property": (("z", "z"),)}, 3,
                                  base=shared)
    got = decode_one(CODEC5.encode(m.Publish("", b"x", properties=aliased)), CODEC5)
    assert got.properties == {"user_property": (*pairs, ("z", "z")), "content_type": "t",
                              "topic_alias": 2}
    with pytest.raises(EncodeError):
        m.encode_properties({"content_type": "again"}, 3, base=shared)  # once only
    with pytest.raises(EncodeError):
        m.encode_properties({}, 4, base=shared)  # another packet type
    with pytest.raises(EncodeError):
        CODEC.encode(m.PubAck(1, 0, shared))  # encoded for PUBLISH
    with pytest.raises(EncodeError):
        m.encode_properties({"receive_maximum": 1}, 3)


def test_many_user_properties_decode_in_linear_time() -> None:
    """A 256 KiB PUBLISH of 20,000 user properties: each repeat appended, not a new
    tuple per item (which took 3.9 s for 30,000)."""
    pairs = tuple((f"k{i}", "v") for i in range(20_000))
    data = CODEC5.encode(m.Publish("t", b"", properties={"user_property": pairs}))
    assert len(data) < 256 << 10
    started = time.perf_counter()
    assert decode_one(data, CODEC5).properties["user_property"] == pairs
    assert time.perf_counter() - started < 1.0  # ~60 ms here
