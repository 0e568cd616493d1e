"""The fast codec equals construct: same bytes out, same values (and types) in, same errors.

Each schema gets hand-written hypothesis strategies for valid values (round trip against
`schema.build` / `schema.parse`), and a differential test on arbitrary and mutated bytes:
wherever construct raises, the fast decoder raises `FastDecodeError`, and wherever
construct succeeds, both agree on the value and on where the frame ends.
"""

from __future__ import annotations

import io
import math
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import construct as cs  # type: ignore[import-untyped]
import pytest
from construct import this
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gevwire._fastcodec import (
    MAX_VARINT_BYTES,
    FastCodec,
    FastDecodeError,
    FastEncodeError,
    FrameLengthError,
    analyse,
)

settings.register_profile("fastcodec", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("fastcodec")

# --------------------------------------------------------------------------- schemas

KINDS = {"ping": 1, "pong": 2, "data": 3}
HEADER = cs.Struct(
    "kind" / cs.Enum(cs.Int8ub, **KINDS),
    "flags" / cs.Int8ub,
    "id" / cs.Int16ub,
    "len" / cs.Int32ub,
    "payload" / cs.Bytes(this.len),
)
PREFIXED32 = cs.Prefixed(cs.Int32ub, cs.GreedyBytes)
PREFIXED_VARINT = cs.Prefixed(cs.VarInt, cs.GreedyBytes)
PREFIXED32_INCL = cs.Prefixed(cs.Int32ub, cs.GreedyBytes, includelength=True)
FIXED = cs.Struct(
    "a" / cs.Float64l,
    "b" / cs.Int64sl,
    "f" / cs.Flag,
    cs.Padding(3),
    cs.Const(b"XY"),
    "e" / cs.Enum(cs.Int16ul, red=1, green=2, blue=0xBEEF),
    "h" / cs.Float32b,  # other byte order than the run's: carried as raw bytes
    "half" / cs.Float16l,
    "u24" / cs.Int24ub,
    "s24" / cs.Int24sl,
    "c" / cs.Const(7, cs.Int8ub),
    "pad" / cs.Padding(2, pattern=b"\xff"),
    "n" / cs.Int32un,
    "raw" / cs.Bytes(3),
)
NESTED = cs.Struct(
    "hdr" / cs.Struct("magic" / cs.Const(b"GW"), "ver" / cs.Int8ub, "n" / cs.Int16ub),
    "body" / cs.Bytes(this.hdr.n),
    "crc" / cs.Int32ul,
)
PREFIXED_STRUCT = cs.Prefixed(
    cs.Int16ul,
    cs.Struct("op" / cs.Enum(cs.Int8ub, get=1, put=2), "seq" / cs.Int32ul, "data" / cs.GreedyBytes),
)
PREFIXED_STRUCT_INCL = cs.Prefixed(
    cs.Int16ul, cs.Struct("op" / cs.Int8ub, "data" / cs.GreedyBytes), includelength=True
)
ADJUSTED = cs.Struct("len" / cs.Int16ub, "kind" / cs.Int8ub, "data" / cs.Bytes(this.len - 3))
MIDDLE_PREFIX = cs.Struct(
    "t" / cs.Int8ub, "body" / cs.Prefixed(cs.Int16ub, cs.GreedyBytes), "tail" / cs.Int16ul
)
VARINT_STRUCT = cs.Struct(
    "t" / cs.Int8ub,
    "body" / cs.Prefixed(cs.VarInt, cs.Struct("k" / cs.Int8ub, "v" / cs.GreedyBytes)),
)
TWO_LENGTHS = cs.Struct(
    "a" / cs.Int8ub,
    "b" / cs.Int16ul,
    "x" / cs.Bytes(this.a),
    "y" / cs.Bytes(1 + this.b),
)
SIGNED_INNER = cs.Prefixed(cs.Int8ub, cs.Struct("n" / cs.Int8sb, "d" / cs.Bytes(this.n)))
SIGNED = cs.Struct("n" / cs.Int16sb, "d" / cs.Bytes(this.n + 1))
SIGNED_TWO = cs.Struct("n" / cs.Int8sb, "x" / cs.Bytes(this.n - 1), "y" / cs.Bytes(this.n))
MIXED = cs.Struct(
    "le" / cs.Int32ul,
    "be" / cs.Int32ub,
    "ele" / cs.Enum(cs.Int16ul, one=1),
    "ebe" / cs.Enum(cs.Int16ub, one=1),
    "_hidden" / cs.Int8ub,
    "rest" / cs.GreedyBytes,
)

# --------------------------------------------------------------------------- strategies

payloads = st.binary(max_size=64)
u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFF_FFFF)


def enum_values(labels: dict[str, int], hi: int) -> st.SearchStrategy[Any]:
    """Labels, or raw integers (unknown ones parse to EnumInteger)."""
    return st.one_of(st.sampled_from(sorted(labels)), st.integers(0, hi))


@st.composite
def header_values(draw: st.DrawFn) -> dict[str, Any]:
    payload = draw(payloads)
    return {
        "kind": draw(enum_values(KINDS, 0xFF)),
        "flags": draw(u8),
        "id": draw(u16),
        "len": len(payload),
        "payload": draw(st.one_of(st.just(payload), st.just(bytearray(payload)))),
    }


fixed_values = st.fixed_dictionaries(
    {
        "a": st.floats(),
        "b": st.integers(-(2**63), 2**63 - 1),
        "f": st.one_of(st.booleans(), st.integers(0, 3)),
        "e": enum_values({"red": 1, "green": 2, "blue": 0xBEEF}, 0xFFFF),
        "h": st.floats(width=32),
        "half": st.floats(width=16),
        "u24": st.integers(0, 2**24 - 1),
        "s24": st.integers(-(2**23), 2**23 - 1),
        "n": u32,
        "raw": st.binary(min_size=3, max_size=3),
    },
    optional={"c": st.sampled_from([None, 7]), "pad": st.none()},
)


@st.composite
def nested_values(draw: st.DrawFn) -> dict[str, Any]:
    body = draw(payloads)
    return {"hdr": {"ver": draw(u8), "n": len(body)}, "body": body, "crc": draw(u32)}


prefixed_struct_values = st.fixed_dictionaries(
    {"op": enum_values({"get": 1, "put": 2}, 0xFF), "seq": u32, "data": payloads}
)


@st.composite
def adjusted_values(draw: st.DrawFn) -> dict[str, Any]:
    data = draw(payloads)
    return {"len": len(data) + 3, "kind": draw(u8), "data": data}


@st.composite
def two_length_values(draw: st.DrawFn) -> dict[str, Any]:
    x, y = draw(payloads), draw(st.binary(min_size=1, max_size=64))
    return {"a": len(x), "b": len(y) - 1, "x": x, "y": y}


mixed_values = st.fixed_dictionaries(
    {
        "le": u32,
        "be": u32,
        "ele": enum_values({"one": 1}, 0xFFFF),
        "ebe": enum_values({"one": 1}, 0xFFFF),
        "_hidden": u8,
        "rest": payloads,
    }
)


@dataclass
class Case:
    name: str
    schema: Any
    values: st.SearchStrategy[Any]


CASES = [
    Case("header", HEADER, header_values()),
    Case("prefixed32", PREFIXED32, payloads),
    Case("prefixed_varint", PREFIXED_VARINT, st.binary(max_size=300)),
    Case("prefixed32_incl", PREFIXED32_INCL, payloads),  # a length that counts itself
    Case("prefixed16s", cs.Prefixed(cs.Int16sl, cs.GreedyBytes), payloads),  # signed
    Case("prefixed24", cs.Prefixed(cs.Int24ub, cs.GreedyBytes), payloads),  # not a struct
    Case("fixed", FIXED, fixed_values),
    Case("nested", NESTED, nested_values()),
    Case("prefixed_struct", PREFIXED_STRUCT, prefixed_struct_values),
    Case(
        "prefixed_struct_incl",
        PREFIXED_STRUCT_INCL,
        st.fixed_dictionaries({"op": u8, "data": payloads}),
    ),
    Case("adjusted", ADJUSTED, adjusted_values()),
    Case(
        "middle_prefix",
        MIDDLE_PREFIX,
        st.fixed_dictionaries({"t": u8, "body": payloads, "tail": u16}),
    ),
    Case(
        "varint_struct",
        VARINT_STRUCT,
        st.fixed_dictionaries(
            {"t": u8, "body": st.fixed_dictionaries({"k": u8, "v": st.binary(max_size=200)})}
        ),
    ),
    Case("two_lengths", TWO_LENGTHS, two_length_values()),
    Case("mixed", MIXED, mixed_values),
    Case(
        "signed_inner",
        SIGNED_INNER,
        st.binary(max_size=127).map(lambda d: {"n": len(d), "d": d}),
    ),
    Case(
        "signed_two",
        SIGNED_TWO,
        st.integers(1, 40).map(lambda n: {"n": n, "x": b"x" * (n - 1), "y": b"y" * n}),
    ),
    Case("signed", SIGNED, payloads.filter(bool).map(lambda d: {"n": len(d) - 1, "d": d})),
    Case("int32sb", cs.Int32sb, st.integers(-(2**31), 2**31 - 1)),
    Case("flag", cs.Flag, st.booleans()),
    Case("enum", cs.Enum(cs.Int16sb, lo=-5, hi=5), enum_values({"lo": -5, "hi": 5}, 0x7FFF)),
    Case("bytes5", cs.Bytes(5), st.binary(min_size=5, max_size=5)),
    Case("padding", cs.Padding(3), st.none()),
    Case("greedy", cs.GreedyBytes, payloads),
    Case("renamed", "top" / cs.Int16ul, u16),
]
CASE_IDS = [c.name for c in CASES]

# Frame-length expectations: header bytes needed before the length is known.
HEADER_SIZES = {
    "header": (8, 8),
    "prefixed32": (4, 4),
    "prefixed32_incl": (4, 4),
    "prefixed16s": (2, 2),
    "prefixed24": (3, 3),
    "prefixed_varint": (1, MAX_VARINT_BYTES),
    "fixed": (0, 0),
    "nested": (5, 5),
    "prefixed_struct": (2, 2),
    "prefixed_struct_incl": (2, 2),
    "adjusted": (2, 2),
    "middle_prefix": (3, 3),
    "varint_struct": (2, 1 + MAX_VARINT_BYTES),
    "two_lengths": (3, 3),
    "signed_inner": (1, 1),
    "signed": (2, 2),
    "signed_two": (1, 1),
}
NO_LAYOUT = {"mixed", "greedy"}

# --------------------------------------------------------------------------- equality


def same(a: Any, b: Any) -> bool:
    """Equal and of the same types all the way down (NaN equals NaN, -0.0 is not 0.0).

    construct's Struct results carry an `_io` entry (its BytesIO stream); ours do not.
    """
    if type(a) is not type(b):
        return False
    if isinstance(a, cs.Container):
        ka = [k for k in a if k != "_io"]
        kb = [k for k in b if k != "_io"]
        return ka == kb and all(same(a[k], b[k]) for k in ka)
    if isinstance(a, float):
        if math.isnan(a):
            return math.isnan(b)
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    if isinstance(a, cs.EnumIntegerString):
        return str(a) == str(b) and a.intvalue == b.intvalue
    return bool(a == b)


def fast_of(schema: Any) -> FastCodec:
    fast = analyse(schema)
    assert fast is not None
    return fast


FAST = {c.name: fast_of(c.schema) for c in CASES}


def construct_outcome(schema: Any, data: bytes) -> tuple[bool, Any, int]:
    """(ok, value, bytes consumed) of construct parsing `data` as a stream."""
    stream = io.BytesIO(data)
    try:
        value = schema.parse_stream(stream)
    except cs.ConstructError:
        return False, None, -1
    return True, value, stream.tell()


def varint_too_long(data: bytes, at: int) -> bool:
    """A VarInt at `at` longer than we accept (construct takes any length)."""
    return len(data) > at + MAX_VARINT_BYTES and all(
        b & 0x80 for b in data[at : at + MAX_VARINT_BYTES]
    )


VARINT_AT = {"prefixed_varint": 0, "varint_struct": 1}

# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_round_trip(case: Case) -> None:
    fast = FAST[case.name]

    @given(case.values, st.binary(max_size=8), st.binary(max_size=8))
    def check(value: Any, before: bytes, after: bytes) -> None:
        built = case.schema.build(value)
        assert fast.encode(value) == built
        expected = case.schema.parse(built)
        got = fast.decode(built)
        assert same(got, expected), (got, expected)
        # Any bytes-like input, at an offset, bounded by `end`, gives the same value.
        framed = before + built + after
        for buf in (framed, bytearray(framed), memoryview(framed)):
            assert same(fast.decode(buf, len(before), len(before) + len(built)), expected)
        if fast.fixed_size is not None:
            assert len(built) == fast.fixed_size
        if fast.layout is not None:
            fl = fast.layout.frame_length
            assert fl(built) == len(built)
            assert fl(memoryview(framed), len(before)) == len(built)
            for cut in range(fast.layout.header_size):
                assert fl(built[:cut]) == -1

    check()


def test_enum_strings_are_constructs_own_objects() -> None:
    frame = HEADER.build({"kind": "pong", "flags": 0, "id": 1, "len": 0, "payload": b""})
    got, expected = FAST["header"].decode(frame), HEADER.parse(frame)
    assert type(got.kind) is cs.EnumIntegerString
    assert got.kind is expected.kind
    unknown = FAST["header"].decode(b"\x09" + frame[1:])
    assert type(unknown.kind) is cs.EnumInteger and unknown.kind == 9


def test_layout_header_sizes() -> None:
    for case in CASES:
        layout = FAST[case.name].layout
        if case.name in NO_LAYOUT:
            assert layout is None, case.name
        elif case.name in HEADER_SIZES:
            assert layout is not None
            assert (layout.header_size, layout.max_header_size) == HEADER_SIZES[case.name]


# --------------------------------------------------------------------------- differential


@st.composite
def damaged(draw: st.DrawFn, case: Case) -> bytes:
    """A valid frame, then maybe truncated, bit-flipped or extended; or random bytes."""
    if draw(st.integers(0, 4)) == 0:
        return draw(st.binary(max_size=80))
    data = bytearray(case.schema.build(draw(case.values)))
    for _ in range(draw(st.integers(0, 2))):
        kind = draw(st.sampled_from(["cut", "flip", "grow"]))
        if kind == "cut" and data:
            del data[draw(st.integers(0, len(data) - 1)) :]
        elif kind == "flip" and data:
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif kind == "grow":
            data += draw(st.binary(min_size=1, max_size=8))
    return bytes(data)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_decode_matches_construct_on_any_bytes(case: Case) -> None:
    fast = FAST[case.name]

    @given(damaged(case))
    @settings(max_examples=300)
    def check(data: bytes) -> None:
        if case.name in VARINT_AT and varint_too_long(data, VARINT_AT[case.name]):
            with pytest.raises(FrameLengthError):
                fast.decode(data)
            return
        ok, expected, consumed = construct_outcome(case.schema, data)
        if ok:
            got = fast.decode(data)
            assert same(got, expected), (got, expected)
        else:
            with pytest.raises(FastDecodeError):
                fast.decode(data)
        if fast.layout is None:
            return
        try:
            length = fast.layout.frame_length(data)
        except FrameLengthError:
            assert not ok  # construct refuses the same frame
            return
        if ok:
            assert length == consumed
        if length == -1:
            assert len(data) < fast.layout.max_header_size
        elif length <= len(data):
            # The framer hands exactly the frame over: the outcome must not change.
            assert construct_outcome(case.schema, data[:length])[0] == ok

    check()


# --------------------------------------------------------------------------- errors


def test_const_mismatch() -> None:
    fast = FAST["nested"]
    frame = NESTED.build({"hdr": {"ver": 1, "n": 0}, "body": b"", "crc": 0})
    with pytest.raises(cs.ConstError):
        NESTED.parse(b"GX" + frame[2:])
    with pytest.raises(FastDecodeError):
        fast.decode(b"GX" + frame[2:])
    with pytest.raises(FastEncodeError):
        fast.encode({"hdr": {"magic": b"XX", "ver": 1, "n": 0}, "body": b"", "crc": 0})


def test_oversized_varint() -> None:
    fast = FAST["prefixed_varint"]
    assert fast.layout is not None
    fl = fast.layout.frame_length
    ten = b"\xff" * 9 + b"\x01"  # 10 bytes: the longest accepted
    assert fl(ten) == 10 + (2**63 - 1 + 2**63)  # 64 bits of ones: 2**64 - 1
    assert fl(b"\xff" * 9) == -1  # could still end at the 10th byte
    with pytest.raises(FrameLengthError):
        fl(b"\x80" * 10 + b"\x00")
    with pytest.raises(FrameLengthError):
        fast.decode(b"\x80" * 10 + b"\x00")
    assert fl(b"\x80\x00") == 2  # non-canonical, but construct accepts it too
    assert fast.decode(b"\x80\x00") == PREFIXED_VARINT.parse(b"\x80\x00") == b""


def test_impossible_lengths() -> None:
    signed = cs.Struct("n" / cs.Int16sb, "d" / cs.Bytes(this.n))
    fast = fast_of(signed)
    assert fast.layout is not None
    with pytest.raises(FrameLengthError):
        fast.layout.frame_length(b"\xff\xfe")
    with pytest.raises(FastDecodeError):
        fast.decode(b"\xff\xfe")
    two = FAST["signed_two"]
    assert two.layout is not None
    for first in (b"\x00", b"\xff"):
        with pytest.raises(FrameLengthError):
            two.layout.frame_length(first)
        with pytest.raises(FastDecodeError):
            two.decode(first + b"y" * 10)
    incl = FAST["prefixed_struct_incl"]
    assert incl.layout is not None
    with pytest.raises(FrameLengthError):
        incl.layout.frame_length(b"\x01\x00")  # says 1, but the prefix alone is 2
    adjusted = FAST["adjusted"]
    assert adjusted.layout is not None
    with pytest.raises(FrameLengthError):
        adjusted.layout.frame_length(b"\x00\x02")


def test_truncated_frames() -> None:
    frame = HEADER.build({"kind": 1, "flags": 0, "id": 0, "len": 4, "payload": b"abcd"})
    fast = FAST["header"]
    for cut in range(len(frame)):
        with pytest.raises(FastDecodeError):
            fast.decode(frame[:cut])
        with pytest.raises(FastDecodeError):
            fast.decode(frame, 0, cut)


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ({"kind": "nope", "flags": 0, "id": 0, "len": 0, "payload": b""}, "unknown label"),
        ({"kind": 1, "flags": 0, "id": 0, "len": 2, "payload": b"abc"}, "length mismatch"),
        ({"kind": 1, "flags": 0, "id": 0, "len": 4, "payload": b"abc"}, "short payload"),
        ({"kind": 1, "flags": 0, "id": 0, "len": 2, "payload": 2**16}, "int too big"),
        ({"kind": 1, "flags": 256, "id": 0, "len": 0, "payload": b""}, "out of range"),
        ({"kind": 1, "flags": 0, "id": 0, "len": 0}, "missing field"),
        ({"kind": 1, "flags": 0, "id": 0, "len": 1, "payload": "x"}, "str payload"),
        (b"not a dict", "not a dict"),
    ],
)
def test_encode_errors(value: Any, why: str) -> None:
    with pytest.raises(Exception):  # noqa: B017 - construct raises assorted types
        HEADER.build(value)
    with pytest.raises(FastEncodeError):
        FAST["header"].encode(value)


@pytest.mark.parametrize("raw", [b"ab", b"abcd", "abc", 2**24, memoryview(b"abc")])
def test_fixed_bytes_must_fit(raw: Any) -> None:
    # struct's "3s" would pad or truncate silently; Bytes(3) refuses.
    schema = cs.Struct("raw" / cs.Bytes(3))
    with pytest.raises((cs.ConstructError, ValueError)):
        schema.build({"raw": raw})
    with pytest.raises(FastEncodeError):
        fast_of(schema).encode({"raw": raw})


def test_fixed_bytes_from_int_and_bytearray() -> None:
    schema = cs.Struct("raw" / cs.Bytes(3), "rest" / cs.GreedyBytes)
    fast = fast_of(schema)
    for value in ({"raw": 0x616263, "rest": b""}, {"raw": bytearray(b"abc"), "rest": b"z"}):
        assert fast.encode(value) == schema.build(value)


def test_unnamed_fields_are_parsed_and_dropped() -> None:
    schema = cs.Struct(cs.Int8ub, "x" / cs.Int8ub, cs.Const(b"!"), cs.Bytes(this.x))
    fast = fast_of(schema)
    data = b"\x07\x02!ab"
    assert same(fast.decode(data), schema.parse(data))
    assert list(fast.decode(data)) == ["x"]
    with pytest.raises(FastDecodeError):
        fast.decode(b"\x07\x02?ab")


def test_named_padding_is_none() -> None:
    schema = cs.Struct("p" / cs.Padding(2), "x" / cs.Int8ub)
    fast = fast_of(schema)
    assert same(fast.decode(b"\x01\x02\x03"), schema.parse(b"\x01\x02\x03"))
    assert fast.encode({"x": 3}) == schema.build({"x": 3}) == b"\x00\x00\x03"


# --------------------------------------------------------------------------- unsupported

UNSUPPORTED: list[tuple[str, Callable[[], Any]]] = [
    ("switch", lambda: cs.Struct("k" / cs.Int8ub, "v" / cs.Switch(this.k, {1: cs.Int8ub}))),
    ("cstring", lambda: cs.Struct("s" / cs.CString("utf8"))),
    ("lambda length", lambda: cs.Struct("n" / cs.Int8ub, "d" / cs.Bytes(lambda ctx: ctx.n))),
    ("later field", lambda: cs.Struct("d" / cs.Bytes(this.n), "n" / cs.Int8ub)),
    ("enum length", lambda: cs.Struct("n" / cs.Enum(cs.Int8ub, a=1), "d" / cs.Bytes(this.n))),
    ("indexed length", lambda: cs.Struct("r" / cs.Bytes(2), "d" / cs.Bytes(this.r[0]))),
    ("mul length", lambda: cs.Struct("n" / cs.Int8ub, "d" / cs.Bytes(this.n * 2))),
    (
        "parent length",
        lambda: cs.Struct("n" / cs.Int8ub, "s" / cs.Struct("d" / cs.Bytes(this._.n))),
    ),
    ("array", lambda: cs.Array(3, cs.Int8ub)),
    ("bitstruct", lambda: cs.BitStruct("a" / cs.Flag, "b" / cs.BitsInteger(7))),
    ("varint field", lambda: cs.Struct("n" / cs.VarInt)),
    ("varint includelength", lambda: cs.Prefixed(cs.VarInt, cs.GreedyBytes, includelength=True)),
    ("float prefix", lambda: cs.Prefixed(cs.Float32b, cs.GreedyBytes)),
    ("duplicate names", lambda: cs.Struct("a" / cs.Int8ub, "a" / cs.Int8ub)),
    ("parsed hook", lambda: cs.Struct("a" / cs.Int8ub * (lambda obj, ctx: None))),
    ("padded field", lambda: cs.Padded(4, cs.Int8ub)),
    ("computed", lambda: cs.Struct("a" / cs.Computed(1))),
    ("optional", lambda: cs.Optional(cs.Int8ub)),
    ("prefixed array", lambda: cs.PrefixedArray(cs.Int8ub, cs.Int8ub)),
    ("subclass", lambda: type("MyBytes", (cs.Bytes,), {})(3)),
    ("const too big", lambda: cs.Struct(cs.Const(300, cs.BytesInteger(1)))),
    ("const wrong type", lambda: cs.Const(b"ab", cs.Int16ub)),
]


@pytest.mark.parametrize(("why", "make"), UNSUPPORTED, ids=[u[0] for u in UNSUPPORTED])
def test_unsupported_gives_none(why: str, make: Callable[[], Any]) -> None:
    assert analyse(make()) is None


def test_struct_pack_mixed_byte_orders() -> None:
    raw = struct.pack("<L", 1) + struct.pack(">L", 2) + b"\x01\x00\x00\x01" + b"\x05tail"
    assert same(FAST["mixed"].decode(raw), MIXED.parse(raw))


# --------------------------------------------------------------------------- cut


@pytest.mark.parametrize("case", [c for c in CASES if FAST[c.name].cut is not None],
                         ids=[c.name for c in CASES if FAST[c.name].cut is not None])
def test_cut_equals_decoding_frame_by_frame(case: Case) -> None:
    """`cut` decodes a whole read in one loop: the same frames as `decode` one by one,
    stopping before an incomplete frame or one over the limit."""
    fast = FAST[case.name]
    cut = fast.cut
    assert cut is not None

    @given(st.lists(case.values, min_size=1, max_size=6), st.integers(0, 40))
    def check(values: list[Any], keep_of_last: int) -> None:
        built = [case.schema.build(v) for v in values]
        expected = [case.schema.parse(b) for b in built]
        whole = b"".join(built)
        frames, used = cut(memoryview(whole), 1 << 30)
        assert used == len(whole)
        assert len(frames) == len(expected)
        assert all(same(g, e) for g, e in zip(frames, expected, strict=True))
        # The last frame cut short: every frame before it, and not a byte of it.
        partial = whole[: len(whole) - len(built[-1]) + min(keep_of_last, len(built[-1]) - 1)]
        frames, used = cut(memoryview(partial), 1 << 30)
        assert used == len(whole) - len(built[-1]) and len(frames) == len(built) - 1
        # A limit below the largest frame: it stops before the first frame over it.
        limit = max(map(len, built)) - 1
        first_over = next(i for i, b in enumerate(built) if len(b) > limit)
        frames, used = cut(memoryview(whole), limit)
        assert len(frames) == first_over and used == sum(map(len, built[:first_over]))

    check()


def test_cut_reads_large_frames_straight_from_the_view() -> None:
    cut = FAST["header"].cut
    assert cut is not None
    payloads = [bytes([i]) * size for i, size in enumerate((5000, 3, 70000))]
    whole = b"".join(HEADER.build({"kind": "data", "flags": 0, "id": i, "len": len(p),
                                   "payload": p}) for i, p in enumerate(payloads))
    frames, used = cut(memoryview(whole), 1 << 20)
    assert used == len(whole) and [f.payload for f in frames] == payloads
    assert all(type(f.payload) is bytes for f in frames)
