"""The RESP2 codec (``gevwire.codecs.resp``) on byte strings alone.

Frames are cut with ``gevwire.testing.FrameCutter``, which drives ``decode_view`` and
``decode`` exactly as a connection does.  The properties: ``check_codec`` in both modes;
any split of a stream (and any input ring size) gives the same frames, and the command
fast path gives the frames of the general parser; every type, null and nesting decode
and encode as specified; inline commands follow Redis's quoting; every bound is enforced
from the header, before a body is buffered; malformed input is a ``FrameError``; a big
frame arriving in many pieces is parsed in linear time.
"""

from __future__ import annotations

import itertools
import os
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gevwire.codecs.resp import (
    NULL_ARRAY,
    NULL_BULK,
    RawResp,
    RespCodec,
    RespError,
    RespProtocolError,
    RespTooLarge,
    SimpleString,
    _RespDecoder,
    encode_command,
    resp,
)
from gevwire.errors import EncodeError, FrameError, FrameTooLarge
from gevwire.testing import FrameCutter, check_codec

pytestmark = pytest.mark.timeout(120)

#: RESP_EXAMPLES=3000 for a longer search.
PROPERTY = settings(max_examples=int(os.environ.get("RESP_EXAMPLES", "150")), deadline=None,
                    database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def cut(codec: RespCodec, chunks: list[bytes], ring: int = 4096
        ) -> tuple[list[Any], list[BaseException], int]:
    """Frames, errors and bytes left buffered after feeding ``chunks`` as reads."""
    cutter = FrameCutter(codec, ring_capacity=ring, compact_max=0 if ring < 4096 else 8192)
    frames: list[Any] = []
    errors: list[BaseException] = []
    for chunk in chunks:
        got, errs = cutter.push(chunk)
        frames += got
        errors += errs
        if cutter.failed is not None:
            break
    return frames, errors, cutter.buffered


def frames_of(codec: RespCodec, data: bytes, ring: int = 4096) -> list[Any]:
    frames, errors, _ = cut(codec, [data], ring)
    assert not errors, errors
    return frames


def split(data: bytes, points: list[int]) -> list[bytes]:
    marks = sorted({min(max(p, 0), len(data)) for p in points} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(marks) if b > a]


def slow(codec: RespCodec) -> RespCodec:
    """The same codec with the command fast path off (the general parser only)."""

    class Slow(RespCodec):
        def decoder(self) -> _RespDecoder:
            dec = _RespDecoder(self)
            dec._fast = False
            return dec

    copy = Slow(commands=codec.commands)
    copy.__dict__.update(codec.__dict__)
    return copy


# -- check_codec ---------------------------------------------------------------------------


@pytest.mark.parametrize("commands", [False, True], ids=["values", "commands"])
def test_check_codec(commands: bool) -> None:
    report = check_codec(resp(commands=commands), examples=150)
    assert report.passed == ["round trip", "splits", "truncation", "max_frame_size", "garbage"]


# -- values ----------------------------------------------------------------------------------

VALUES = [
    (b"+OK\r\n", SimpleString("OK")),
    (b"-ERR unknown command\r\n", RespError("ERR unknown command")),
    (b":0\r\n", 0),
    (b":-9223372036854775808\r\n", -(1 << 63)),
    (b":9223372036854775807\r\n", (1 << 63) - 1),
    (b"$0\r\n\r\n", b""),
    (b"$5\r\na\r\nb\x00\r\n", b"a\r\nb\x00"),
    (b"$-1\r\n", NULL_BULK),
    (b"*-1\r\n", NULL_ARRAY),
    (b"*0\r\n", []),
    (b"*3\r\n:1\r\n$1\r\nx\r\n*2\r\n+a\r\n*2\r\n$-1\r\n*-1\r\n",
     [1, b"x", [SimpleString("a"), [NULL_BULK, NULL_ARRAY]]]),
]


@pytest.mark.parametrize(("wire", "value"), VALUES)
def test_decodes_every_type_whole_and_byte_by_byte(wire: bytes, value: Any) -> None:
    codec = resp()
    assert frames_of(codec, wire) == [value]
    frames, errors, left = cut(codec, [wire[i : i + 1] for i in range(len(wire))], ring=16)
    assert (frames, errors, left) == ([value], [], 0)
    assert type(frames[0]) is type(value)
    assert codec.encode(value) == wire  # decoded values encode back to the same bytes


def test_encodes_python_values() -> None:
    codec = resp()
    assert codec.encode(b"hi") == b"$2\r\nhi\r\n"
    assert codec.encode(bytearray(b"hi")) == b"$2\r\nhi\r\n"
    assert codec.encode(memoryview(b"hi")) == b"$2\r\nhi\r\n"
    assert codec.encode("é") == b"$2\r\n\xc3\xa9\r\n"
    assert codec.encode(SimpleString("OK")) == b"+OK\r\n"
    assert codec.encode(RespError("ERR no")) == b"-ERR no\r\n"
    assert codec.encode(42) == b":42\r\n"
    assert codec.encode(True) == b":1\r\n"
    assert codec.encode(None) == b"$-1\r\n"
    assert codec.encode(NULL_ARRAY) == b"*-1\r\n"
    assert codec.encode(NULL_BULK) == b"$-1\r\n"
    assert codec.encode([]) == b"*0\r\n"
    assert codec.encode((b"a", [1, None])) == b"*2\r\n$1\r\na\r\n*2\r\n:1\r\n$-1\r\n"
    assert codec.encode(RawResp(b"+PONG\r\n")) == b"+PONG\r\n"
    assert RespError("WRONGTYPE Operation").kind == "WRONGTYPE"


@pytest.mark.parametrize("bad", [SimpleString("a\r\nb"), 1 << 63,
                                 -(1 << 63) - 1, 1.5, {"a": 1}, object(), "\udc80"])
def test_encode_refuses_what_resp2_cannot_carry(bad: Any) -> None:
    with pytest.raises(EncodeError):
        resp().encode(bad)


def test_an_error_reply_with_cr_or_lf_becomes_one_line_as_redis_server_makes_it() -> None:
    # e.g. an error that quotes a client's argument "a\nb": refusing it dropped the client
    assert resp().encode(RespError("ERR value is not an integer: 'a\r\nb'")) == (
        b"-ERR value is not an integer: 'a  b'\r\n")
    assert resp().encode(RespError("x\ny")) == b"-x y\r\n"


def test_encode_command_sends_every_argument_as_a_bulk_string() -> None:
    assert encode_command("SET", b"k", 10, 1.5) == (
        b"*4\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\n10\r\n$3\r\n1.5\r\n")
    assert frames_of(resp(commands=True), encode_command("SET", b"k", 10)) == [
        [b"SET", b"k", b"10"]]


# -- commands mode -------------------------------------------------------------------------


def test_commands_are_lists_of_bytes_and_inline_lines_are_split() -> None:
    stream = (b"PING\r\n" b"\r\n" b"\n" b"set a 'b c'\n" b"  ECHO  \"x\\ty\\x41\"  \r\n"
              b"*0\r\n" b"*-1\r\n" b"*2\r\n$3\r\nGET\r\n$4\r\na\r\nb\r\n" b"$notabulk\r\n")
    expected = [[b"PING"], [b"set", b"a", b"b c"], [b"ECHO", b"x\tyA"],
                [b"GET", b"a\r\nb"], [b"$notabulk"]]
    codec = resp(commands=True)
    assert frames_of(codec, stream) == expected
    assert frames_of(slow(codec), stream) == expected
    for ring in (16, 4096):
        frames, errors, _ = cut(codec, [stream[i : i + 1] for i in range(len(stream))], ring)
        assert (frames, errors) == (expected, [])


@pytest.mark.parametrize("bad", [b"*2\r\n$3\r\nGET\r\n:1\r\n", b"*1\r\n$-1\r\n",
                                 b"*1\r\n*1\r\n$1\r\na\r\n", b"*1\r\n+OK\r\n",
                                 b"ECHO \"unbalanced\r\n", b"ECHO \"a\"b\r\n"])
def test_commands_mode_refuses_what_redis_refuses(bad: bytes) -> None:
    _, errors, _ = cut(resp(commands=True), [bad])
    assert len(errors) == 1 and isinstance(errors[0], RespProtocolError), errors


def test_frames_before_a_bad_frame_are_delivered_first() -> None:
    stream = b"*1\r\n$4\r\nPING\r\n" * 3 + b"*1\r\n:1\r\n" + b"*1\r\n$4\r\nPING\r\n"
    frames, errors, _ = cut(resp(commands=True), [stream])
    assert frames == [[b"PING"]] * 3
    assert len(errors) == 1 and isinstance(errors[0], FrameError) and errors[0].fatal


def test_a_uniform_run_is_checked_argument_by_argument() -> None:
    """Runs of one command shape are checked column by column: a repeated argument with
    one count, any other column one length per argument.  A wrong length in the middle
    of a run (made up for by another, so the run's total is right) still stops there."""
    same = encode_command(b"SET", b"key", b"v")
    other = encode_command(b"SET", b"kez", b"v")  # the same lengths, another key
    frames, errors, _ = cut(resp(commands=True), [same * 5 + other + same * 3])
    assert frames == [[b"SET", b"key", b"v"]] * 5 + [[b"SET", b"kez", b"v"]] + \
        [[b"SET", b"key", b"v"]] * 3 and errors == []
    short = b"*3\r\n$3\r\nSET\r\n$3\r\nke\r\n$1\r\nv\r\n"  # 2 bytes, not 3
    long = b"*3\r\n$3\r\nSET\r\n$3\r\nkeyy\r\n$1\r\nv\r\n"  # 4 bytes, not 3
    frames, errors, _ = cut(resp(commands=True), [same * 4 + short + long + same * 2])
    assert frames == [[b"SET", b"key", b"v"]] * 4
    assert len(errors) == 1 and isinstance(errors[0], FrameError)


# -- any split, fast path = general parser ------------------------------------------------------

ARG = st.one_of(st.binary(max_size=12), st.sampled_from([b"\r\n", b"a\r\nb", b"\r", b"\n"]),
                st.binary(min_size=1000, max_size=1100))
COMMAND = st.lists(ARG, min_size=1, max_size=5)
INLINE = st.lists(st.text("abcXYZ09-_", min_size=1, max_size=6), min_size=1, max_size=3).map(
    lambda words: " ".join(words).encode() + b"\r\n")


@PROPERTY
@given(commands=st.lists(st.one_of(COMMAND, COMMAND, INLINE), min_size=1, max_size=12),
       repeat=st.integers(1, 4), data=st.data())
def test_any_split_gives_the_same_frames_on_both_paths(commands: list[Any], repeat: int,
                                                      data: st.DataObject) -> None:
    parts: list[bytes] = []
    expected: list[list[bytes]] = []
    for command in commands * repeat:  # repeats make uniform runs for the fast path
        if isinstance(command, bytes):
            parts.append(command)
            expected.append(command.split())
        else:
            parts.append(encode_command(*command))
            expected.append(list(command))
    stream = b"".join(parts)
    points = data.draw(st.lists(st.integers(0, len(stream)), max_size=6), label="cuts")
    ring = data.draw(st.sampled_from([16, 64, 4096]), label="ring")
    codec = resp(commands=True)
    for candidate in (codec, slow(codec)):
        frames, errors, left = cut(candidate, split(stream, points), ring)
        assert (errors, left) == ([], 0)
        assert frames == expected


VALUE = st.recursive(
    st.one_of(st.binary(max_size=10), st.none(), st.integers(-(1 << 63), (1 << 63) - 1),
              st.text("ab \t", max_size=5).map(SimpleString),
              st.text("ERR x", max_size=5).map(RespError)),
    lambda inner: st.lists(inner, max_size=4), max_leaves=10)


@PROPERTY
@given(values=st.lists(VALUE, min_size=1, max_size=6), data=st.data())
def test_values_read_back_from_any_split(values: list[Any], data: st.DataObject) -> None:
    codec = resp()
    stream = b"".join(codec.encode(v) for v in values)
    points = data.draw(st.lists(st.integers(0, len(stream)), max_size=8), label="cuts")
    frames, errors, left = cut(codec, split(stream, points),
                               data.draw(st.sampled_from([16, 4096]), label="ring"))
    assert (frames, errors, left) == ([codec.example_frame(v) for v in values], [], 0)


def test_nulls_are_frames_not_the_absence_of_one() -> None:
    """A top-level nil is a frame even when decode() cuts it from a wrapped ring."""
    codec = resp()
    stream = b"$0\r\n\r\n$-1\r\n*-1\r\n$0\r\n\r\n"
    for ring in (16, 4096):
        for chunks in ([stream], split(stream, [1, 7]), [stream[i : i + 1] for i in range(24)]):
            frames, errors, left = cut(codec, chunks, ring)
            assert (frames, errors, left) == ([b"", NULL_BULK, NULL_ARRAY, b""], [], 0)
    assert not NULL_BULK and repr(NULL_ARRAY) == "NULL_ARRAY"


# -- bounds ------------------------------------------------------------------------------------


def test_a_bulk_string_over_the_limit_is_refused_from_its_header() -> None:
    codec = resp(max_bulk_length=1000)
    frames, errors, left = cut(codec, [b"$1001\r\n", b"x" * 100])
    assert frames == [] and len(errors) == 1
    assert isinstance(errors[0], RespTooLarge) and isinstance(errors[0], FrameTooLarge)
    assert errors[0].what == "max_bulk_length" and errors[0].size == 1001
    assert left <= 16  # the body was never buffered
    assert frames_of(codec, b"$1000\r\n" + b"x" * 1000 + b"\r\n") == [b"x" * 1000]


def test_a_frame_over_max_frame_size_is_refused_before_its_body() -> None:
    codec = resp(commands=True, max_frame_size=100)
    head = b"*2\r\n$3\r\nSET\r\n$200\r\n"
    _, errors, left = cut(codec, [head])
    assert len(errors) == 1 and isinstance(errors[0], RespTooLarge)
    assert errors[0].what == "max_frame_size"
    assert left <= len(head)
    # Exactly max_frame_size decodes.
    frame = encode_command(b"SET", b"x" * 80)
    assert len(frame) == 100
    assert frames_of(codec, frame) == [[b"SET", b"x" * 80]]
    _, errors, _ = cut(codec, [encode_command(b"SET", b"x" * 81)])
    assert len(errors) == 1 and isinstance(errors[0], RespTooLarge)


def test_array_length_and_depth_bounds() -> None:
    _, errors, _ = cut(resp(max_array_length=3), [b"*4\r\n"])
    assert isinstance(errors[0], RespTooLarge) and errors[0].what == "max_array_length"
    nested = b"*1\r\n" * 3 + b":1\r\n"
    assert frames_of(resp(max_depth=3), nested) == [[[[1]]]]
    _, errors, _ = cut(resp(max_depth=2), [nested])
    assert isinstance(errors[0], RespProtocolError) and "max_depth" in str(errors[0])


@pytest.mark.parametrize("prefix", [b"", b"+", b"-"])
def test_an_endless_line_is_bounded(prefix: bytes) -> None:
    codec = resp(commands=not prefix, max_inline_length=1000)
    cutter = FrameCutter(codec)
    reads = 0
    for chunk in [prefix] + [b"a" * 100] * 20:
        frames, errors = cutter.push(chunk)
        reads += 1
        assert frames == []
        if errors:
            break
        assert cutter.buffered <= 1000 + 3  # the line so far: never past the bound
    assert len(errors) == 1 and reads == 12  # the read that took it past the bound
    assert isinstance(errors[0], RespTooLarge) and errors[0].what == "max_inline_length"


@pytest.mark.parametrize("bad", [b"!x\r\n", b"$-2\r\n", b"$abc\r\n", b"$ 3\r\nabc\r\n",
                                 b"$3\r\nabcd\r\n", b"*-2\r\n", b"*x\r\n", b":1.5\r\n",
                                 b":99999999999999999999\r\n", b"$" + b"1" * 30 + b"\r\n",
                                 b":" + b"9" * 25])
def test_malformed_input_is_a_frame_error(bad: bytes) -> None:
    for chunks in ([bad], [bad[i : i + 1] for i in range(len(bad))]):
        frames, errors, _ = cut(resp(), chunks)
        assert frames == [] and len(errors) == 1, (chunks, errors)
        assert isinstance(errors[0], RespProtocolError) and errors[0].fatal


# -- linear work -------------------------------------------------------------------------------


def parse_calls(codec: RespCodec, chunks: list[bytes]) -> tuple[list[Any], int, int]:
    """Frames, calls of the general parser, and the bytes those calls were given."""
    calls = [0, 0]
    original = _RespDecoder._parse

    def counted(self: _RespDecoder, data: bytes, *args: Any) -> int:
        calls[0] += 1
        calls[1] += len(data)
        return original(self, data, *args)

    with mock.patch.object(_RespDecoder, "_parse", counted):
        frames, errors, _ = cut(codec, chunks)
    assert not errors
    return frames, calls[0], calls[1]


def test_a_big_bulk_string_in_many_pieces_is_parsed_once() -> None:
    value = bytes(range(256)) * 8192  # 2 MiB
    frame = encode_command(b"SET", b"k", value)
    chunks = [frame[i : i + 1024] for i in range(0, len(frame), 1024)]
    frames, calls, scanned = parse_calls(resp(commands=True), chunks)
    assert frames == [[b"SET", b"k", value]]
    assert calls <= 4 and scanned <= 2 * len(frame)


def test_many_small_elements_in_many_pieces_cost_linear_work() -> None:
    args = [b"MSET"] + [b"%06d" % i for i in range(40000)]
    frame = encode_command(*args)
    chunks = [frame[i : i + 1000] for i in range(0, len(frame), 1000)]
    frames, _, scanned = parse_calls(resp(commands=True), chunks)
    assert frames == [args]
    assert scanned <= 3 * len(frame)  # re-parsing from the frame start would be ~200x


def test_a_line_trickled_byte_by_byte_is_not_rescanned() -> None:
    line = b"SET key " + b"v" * 20000 + b"\r\n"
    chunks = [line[i : i + 1] for i in range(len(line))]
    frames, calls, scanned = parse_calls(resp(commands=True), chunks)
    assert frames == [[b"SET", b"key", b"v" * 20000]]
    assert calls <= 4 and scanned <= 4 * len(line)


@pytest.mark.parametrize("stream", [
    b"$0\r\x00\x00\n\r\n",  # a number line whose CRLF lies past max_frame_size
    b"*1" + b"7" * 9,  # a number line that reaches neither its CRLF nor its length limit
])
def test_a_header_line_past_the_frame_limit_is_too_large_however_it_is_split(
        stream: bytes) -> None:
    """Byte by byte, more than max_frame_size bytes without the line's end is "too
    large"; one read holding the whole line must say the same (fuzzing found it said
    "malformed")."""
    for chunks in ([stream], [stream[i : i + 1] for i in range(len(stream))]):
        cutter = FrameCutter(resp(max_frame_size=6))
        errors: list[BaseException] = []
        for chunk in chunks:
            errors += cutter.push(chunk)[1]
            if errors:
                break
        assert [type(e) for e in errors] == [RespTooLarge], (chunks, errors)


def test_large_values_of_an_array_are_appended_by_reference_not_copied() -> None:
    """An MGET reply of large values: its parts are measured (and a connection can
    refuse them past its cap) before any value is copied into a joined reply."""
    codec = RespCodec()
    big = b"x" * 10_000
    reply = [b"small", big, [big, None], 7]
    parts: list[bytes] = []
    size = codec.encode_into(parts, reply)
    joined = b"".join(parts)
    assert joined == codec.encode(reply) and size == len(joined)
    assert sum(part is big for part in parts) == 2
    small: list[bytes] = []
    assert codec.encode_into(small, [b"a", b"b"]) == len(small[0])  # small: one part
    assert small == [b"*2\r\n$1\r\na\r\n$1\r\nb\r\n"]
