"""The PROXY protocol header decoder and encoders (``gevwire.proxy_protocol``).

Sans-I/O, on byte strings and rings alone: the spec's examples and hand-written v2
headers; encode → decode round trips; any split of header + payload fed to a ring yields
the same info and leaves exactly the payload; malformed headers (a table, and hypothesis
mutations of valid ones) raise ``ProxyProtocolError`` and nothing else; garbage fails
within the first bytes that rule a header out; the ``struct`` layouts the decoder reads
equal the ``construct`` declarations.
"""

from __future__ import annotations

import itertools
import os
import socket
import struct

import construct as cs  # type: ignore[import-untyped]
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from gevwire.errors import EncodeError, FrameError
from gevwire.proxy_protocol import (
    DEFAULT_MAX_HEADER,
    IPV4_ADDRESSES,
    IPV6_ADDRESSES,
    TLV,
    UNIX_ADDRESSES,
    V1_MAX_LINE,
    V2_HEADER,
    V2_SIGNATURE,
    ProxyHeaderDecoder,
    ProxyInfo,
    ProxyProtocolError,
    crc32c,
    encode_v1,
    encode_v2,
)
from gevwire.ringbuffer import RingBuffer

pytestmark = pytest.mark.timeout(120)

SIG = V2_SIGNATURE
FAST = settings(deadline=None, max_examples=200, suppress_health_check=[HealthCheck.too_slow])


def parse(data: bytes, **kwargs: int) -> tuple[ProxyInfo, int] | None:
    return ProxyHeaderDecoder(**kwargs).parse(data)


def v2(ver_cmd: int, fam: int, body: bytes, length: int | None = None) -> bytes:
    """A v2 header by hand (``length`` overrides the length field)."""
    n = len(body) if length is None else length
    return SIG + bytes([ver_cmd, fam]) + n.to_bytes(2, "big") + body


def tlv(kind: int, value: bytes) -> bytes:
    return bytes([kind]) + len(value).to_bytes(2, "big") + value


def feed(
    chunks: list[bytes], *, offset: int = 0, capacity: int = 64
) -> tuple[list[ProxyInfo | None], RingBuffer]:
    """Write ``chunks`` one by one into a ring, calling ``decode`` after each (until found).

    ``offset`` junk bytes are written first and retrieved after the first chunk, so the
    ring's read position is not at the start of its storage (headers may wrap).
    """
    decoder = ProxyHeaderDecoder()
    ring = RingBuffer(capacity, compact_max=0)
    results: list[ProxyInfo | None] = []
    ring.write(b"j" * offset)
    found = False
    for i, chunk in enumerate(chunks):
        ring.write(chunk)
        if i == 0:
            ring.retrieve(offset)
        if found:
            continue
        before = ring.to_bytes()
        info = decoder.decode(ring)
        if info is None:
            assert ring.to_bytes() == before  # nothing consumed while incomplete
        results.append(info)
        found = info is not None
    return results, ring


# -- the spec's examples ------------------------------------------------------------------


def test_spec_v1_example_before_http() -> None:
    data = (
        b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"
        b"GET / HTTP/1.1\r\nHost: 192.168.0.11\r\n\r\n"
    )
    ring = RingBuffer()
    ring.write(data)
    info = ProxyHeaderDecoder().decode(ring)
    assert info == ProxyInfo(1, "PROXY", "TCP4", ("192.168.0.1", 56324), ("192.168.0.11", 443))
    assert ring.to_bytes() == b"GET / HTTP/1.1\r\nHost: 192.168.0.11\r\n\r\n"


FFFF6 = ":".join(["ffff"] * 8)


@pytest.mark.parametrize(
    ("line", "size", "family"),
    [
        (b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n", 56, "TCP4"),
        (f"PROXY TCP6 {FFFF6} {FFFF6} 65535 65535\r\n".encode(), 104, "TCP6"),
        (b"PROXY UNKNOWN\r\n", 15, "UNKNOWN"),
        (f"PROXY UNKNOWN {FFFF6} {FFFF6} 65535 65535\r\n".encode(), 107, "UNKNOWN"),
    ],
)
def test_spec_v1_longest_lines(line: bytes, size: int, family: str) -> None:
    assert len(line) == size
    result = parse(line + b"payload")
    assert result is not None
    info, used = result
    assert used == size
    assert (info.version, info.command, info.family) == (1, "PROXY", family)
    if family == "TCP6":
        assert info.source == ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535)
    if family == "UNKNOWN":
        assert info.source is None and info.destination is None


def test_v1_tcp6_forms_are_normalised_like_socket() -> None:
    info, _ = parse(b"PROXY TCP6 0:0:0:0:0:0:0:1 ::FFFF:10.0.0.1 1 0\r\n") or (None, 0)
    assert info == ProxyInfo(1, "PROXY", "TCP6", ("::1", 1), ("::ffff:10.0.0.1", 0))


def test_spec_v2_signature_and_struct() -> None:
    assert SIG == b"\x0d\x0a\x0d\x0a\x00\x0d\x0a\x51\x55\x49\x54\x0a"
    assert V2_HEADER.sizeof() == 16
    assert (IPV4_ADDRESSES.sizeof(), IPV6_ADDRESSES.sizeof(), UNIX_ADDRESSES.sizeof()) == (
        12,
        36,
        216,
    )


def test_v2_proxy_tcp4() -> None:
    body = bytes([192, 168, 0, 1, 192, 168, 0, 11]) + struct.pack("!HH", 56324, 443)
    data = v2(0x21, 0x11, body) + b"GET /"
    assert parse(data) == (
        ProxyInfo(2, "PROXY", "TCP4", ("192.168.0.1", 56324), ("192.168.0.11", 443)),
        28,
    )


def test_v2_proxy_tcp6_with_tlvs() -> None:
    src = socket.inet_pton(socket.AF_INET6, "2001:db8::1")
    dst = socket.inet_pton(socket.AF_INET6, "::1")
    tlvs = tlv(0x01, b"h2") + tlv(0x02, b"example.com") + tlv(0x05, b"id-1") + tlv(0xE0, b"")
    data = v2(0x21, 0x21, src + dst + struct.pack("!HH", 1, 2) + tlvs)
    info = ProxyInfo(
        2,
        "PROXY",
        "TCP6",
        ("2001:db8::1", 1),
        ("::1", 2),
        {0x01: b"h2", 0x02: b"example.com", 0x05: b"id-1", 0xE0: b""},
    )
    assert parse(data) == (info, len(data))
    assert encode_v2(info) == data


def test_v2_proxy_unix() -> None:
    body = b"/run/app.sock".ljust(108, b"\0") + b"\0abstract".ljust(108, b"\0")
    data = v2(0x21, 0x31, body)
    info = ProxyInfo(2, "PROXY", "UNIX", "/run/app.sock", "\0abstract")
    assert parse(data) == (info, 232)
    assert encode_v2(info) == data


def test_v2_unix_path_stops_at_first_nul_and_unnamed_is_empty() -> None:
    body = b"/a\0garbage".ljust(108, b"\0") + bytes(108)
    info, _ = parse(v2(0x21, 0x31, body)) or (None, 0)
    assert info is not None and (info.source, info.destination) == ("/a", "")


@pytest.mark.parametrize("fam", [0x00, 0x11, 0x21, 0x31, 0x12])
def test_v2_local_ignores_family_and_addresses(fam: int) -> None:
    block = {0x00: 0, 0x11: 12, 0x21: 36, 0x31: 216, 0x12: 12}[fam]
    data = v2(0x20, fam, b"\x7f" * block + tlv(0x05, b"check"))
    assert parse(data) == (ProxyInfo(2, "LOCAL", "UNKNOWN", None, None, {5: b"check"}), len(data))


def test_v2_local_minimal() -> None:
    data = SIG + b"\x20\x00\x00\x00"
    assert parse(data + b"x") == (ProxyInfo(2, "LOCAL", "UNKNOWN", None, None), 16)
    assert encode_v2(ProxyInfo(2, "LOCAL", "UNKNOWN", None, None)) == data


@pytest.mark.parametrize(("fam", "block"), [(0x12, 12), (0x22, 36), (0x32, 216), (0x00, 0)])
def test_v2_unsupported_transports_fall_back_to_unspec(fam: int, block: int) -> None:
    data = v2(0x21, fam, b"\x01" * block + tlv(0x04, b"pad"))
    assert parse(data) == (ProxyInfo(2, "PROXY", "UNKNOWN", None, None, {4: b"pad"}), len(data))


def test_v2_repeated_tlv_keeps_last_value() -> None:
    data = v2(0x20, 0x00, tlv(0x04, b"a") + tlv(0x04, b"bb"))
    assert parse(data) == (ProxyInfo(2, "LOCAL", "UNKNOWN", None, None, {4: b"bb"}), len(data))


# -- CRC32C ------------------------------------------------------------------------------


def test_crc32c_known_values() -> None:
    assert crc32c(b"123456789") == 0xE3069283  # the check value of CRC-32C
    assert crc32c(b"") == 0
    assert crc32c(bytes(32)) == 0x8A9136AA  # RFC 3720 B.4: 32 bytes of zeros


def test_v2_crc32c_is_filled_in_and_verified() -> None:
    info = ProxyInfo(2, "PROXY", "TCP4", ("10.0.0.1", 1), ("10.0.0.2", 2), {3: b"", 5: b"u"})
    data = encode_v2(info)
    result = parse(data)
    assert result is not None
    decoded, used = result
    assert used == len(data)
    crc = decoded.tlvs[3]
    zeroed = data.replace(crc, bytes(4))
    assert int.from_bytes(crc, "big") == crc32c(zeroed)
    assert encode_v2(decoded) == data  # a decoded header re-encodes identically
    crc_type_at = 16 + 12
    for i in range(16, len(data)):  # any changed byte after the fixed part is caught...
        if i == crc_type_at:
            continue  # ...but the CRC TLV's own type: then there is no checksum to check
        bad = bytearray(data)
        bad[i] ^= 0x40
        with pytest.raises(ProxyProtocolError):
            parse(bytes(bad))


def test_v2_crc32c_tlv_must_be_four_bytes_once() -> None:
    with pytest.raises(ProxyProtocolError, match="CRC32C"):
        parse(v2(0x20, 0x00, tlv(3, b"\0\0\0")))
    with pytest.raises(ProxyProtocolError, match="CRC32C"):
        parse(v2(0x20, 0x00, tlv(3, bytes(4)) + tlv(3, bytes(4))))


# -- struct layouts equal the construct declarations -------------------------------------

LAYOUTS = [
    (V2_HEADER, "!12sBBH", ["signature", "ver_cmd", "fam", "len"]),
    (IPV4_ADDRESSES, "!4s4sHH", ["src_addr", "dst_addr", "src_port", "dst_port"]),
    (IPV6_ADDRESSES, "!16s16sHH", ["src_addr", "dst_addr", "src_port", "dst_port"]),
    (UNIX_ADDRESSES, "!108s108s", ["src_addr", "dst_addr"]),
]


@pytest.mark.parametrize(("schema", "fmt", "names"), LAYOUTS)
@FAST
@given(data=st.data())
def test_struct_layout_equals_construct(
    schema: cs.Construct, fmt: str, names: list[str], data: st.DataObject
) -> None:
    layout = struct.Struct(fmt)
    assert layout.size == schema.sizeof()
    raw = data.draw(st.binary(min_size=layout.size, max_size=layout.size))
    if schema is V2_HEADER:
        raw = SIG + raw[12:]
    parsed = schema.parse(raw)
    values = layout.unpack(raw)
    assert [parsed[name] for name in names] == list(values)
    assert schema.build(dict(zip(names, values, strict=True))) == raw


def test_decoder_reads_the_same_layouts() -> None:
    """The decoder's private structs are the ones checked above."""
    from gevwire import proxy_protocol as pp

    assert [s.format for s in (pp._V2_HEADER, pp._IPV4, pp._IPV6, pp._UNIX)] == [
        fmt for _, fmt, _ in LAYOUTS
    ]
    assert pp._TLV_HEAD.format == "!BH"


@FAST
@given(kind=st.integers(0, 255), value=st.binary(max_size=600))
def test_tlv_declaration_matches_wire_format(kind: int, value: bytes) -> None:
    built = TLV.build({"type": kind, "value": value})
    assert built == tlv(kind, value)
    assert TLV.parse(built).value == value


# -- round trips ---------------------------------------------------------------------------

ports = st.integers(0, 0xFFFF)
ipv4 = st.binary(min_size=4, max_size=4).map(socket.inet_ntoa)
ipv6 = st.binary(min_size=16, max_size=16).map(lambda b: socket.inet_ntop(socket.AF_INET6, b))
unix_paths = st.one_of(
    st.binary(max_size=108).filter(lambda b: b"\0" not in b).map(os.fsdecode),
    st.binary(min_size=1, max_size=107)
    .filter(lambda b: not b.endswith(b"\0"))
    .map(lambda b: "\0" + os.fsdecode(b)),
)
tlv_maps = st.dictionaries(
    st.integers(0, 255).filter(lambda t: t != 3), st.binary(max_size=300), max_size=6
)


@st.composite
def v1_infos(draw: st.DrawFn) -> ProxyInfo:
    family = draw(st.sampled_from(["TCP4", "TCP6", "UNKNOWN"]))
    if family == "UNKNOWN":
        return ProxyInfo(1, "PROXY", family, None, None)
    hosts = ipv4 if family == "TCP4" else ipv6
    return ProxyInfo(1, "PROXY", family, (draw(hosts), draw(ports)), (draw(hosts), draw(ports)))


@st.composite
def v2_infos(draw: st.DrawFn) -> ProxyInfo:
    tlvs = draw(tlv_maps)
    family = draw(st.sampled_from(["LOCAL", "TCP4", "TCP6", "UNIX", "UNKNOWN"]))
    if family == "LOCAL":
        return ProxyInfo(2, "LOCAL", "UNKNOWN", None, None, tlvs)
    if family == "UNKNOWN":
        return ProxyInfo(2, "PROXY", family, None, None, tlvs)
    if family == "UNIX":
        return ProxyInfo(2, "PROXY", family, draw(unix_paths), draw(unix_paths), tlvs)
    hosts = ipv4 if family == "TCP4" else ipv6
    src, dst = (draw(hosts), draw(ports)), (draw(hosts), draw(ports))
    return ProxyInfo(2, "PROXY", family, src, dst, tlvs)


def encode(info: ProxyInfo) -> bytes:
    return encode_v1(info) if info.version == 1 else encode_v2(info)


@FAST
@given(info=st.one_of(v1_infos(), v2_infos()), payload=st.binary(max_size=64))
def test_encode_then_decode_round_trip(info: ProxyInfo, payload: bytes) -> None:
    header = encode(info)
    assert parse(header + payload) == (info, len(header))
    if info.version == 1:
        assert len(header) <= V1_MAX_LINE


@FAST
@given(info=v2_infos(), crc_first=st.booleans())
def test_v2_round_trip_with_checksum(info: ProxyInfo, crc_first: bool) -> None:
    tlvs = {3: b"", **info.tlvs} if crc_first else {**info.tlvs, 3: b"????"}
    header = encode_v2(ProxyInfo(2, info.command, info.family, info.source, info.destination, tlvs))
    result = parse(header)
    assert result is not None
    decoded, used = result
    assert used == len(header)
    assert {k: v for k, v in decoded.tlvs.items() if k != 3} == info.tlvs
    assert list(decoded.tlvs) == list(tlvs)
    assert encode_v2(decoded) == header


@st.composite
def splits(draw: st.DrawFn, data: bytes) -> list[bytes]:
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=12)))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


@FAST
@given(
    info=st.one_of(v1_infos(), v2_infos()),
    payload=st.binary(max_size=200),
    offset=st.integers(0, 600),
    data=st.data(),
)
def test_any_split_yields_the_same_info_and_leaves_the_payload(
    info: ProxyInfo, payload: bytes, offset: int, data: st.DataObject
) -> None:
    header = encode(info)
    chunks = data.draw(splits(header + payload))
    results, ring = feed(chunks, offset=offset)
    assert results[-1] == info
    assert all(r is None for r in results[:-1])
    assert ring.to_bytes() == payload


@pytest.mark.parametrize(
    "header",
    [
        b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n",
        b"PROXY TCP6 ::ffff:1.2.3.4 2001:db8::ff 0 65535\r\n",
        b"PROXY UNKNOWN junk \r ignored\n here\r\n",
        b"PROXY UNKNOWN\r\n",
        encode_v2(ProxyInfo(2, "PROXY", "UNIX", "/s", "\0x", {3: b"", 0xEE: b"v" * 40})),
    ],
)
def test_every_strict_prefix_waits(header: bytes) -> None:
    decoder = ProxyHeaderDecoder()
    for i in range(len(header)):
        assert decoder.parse(header[:i]) is None, header[:i]
    assert decoder.parse(header) is not None


# -- malformed headers ---------------------------------------------------------------------

TCP4_BODY = bytes(8) + struct.pack("!HH", 1, 2)

BAD: list[tuple[str, bytes]] = [
    # v1: prefix and family
    ("http", b"GET / HTTP/1.1\r\n\r\n"),
    ("lowercase prefix", b"proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n"),
    ("no space after PROXY", b"PROXYTCP4 1.2.3.4 5.6.7.8 1 2\r\n"),
    ("two spaces after PROXY", b"PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n"),
    ("unknown family", b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n"),
    ("lowercase family", b"PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n"),
    ("UNIX in v1", b"PROXY UNIX /a /b\r\n"),
    ("UNKNOWN glued to junk", b"PROXY UNKNOWNX\r\n"),
    ("empty line", b"PROXY \r\n"),
    # v1: fields
    ("missing port", b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n"),
    ("extra field", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n"),
    ("double space", b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n"),
    ("trailing space", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n"),
    ("tab", b"PROXY TCP4 1.2.3.4\t5.6.7.8 1 2\r\n"),
    ("port over 65535", b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n"),
    ("port leading zero", b"PROXY TCP4 1.2.3.4 5.6.7.8 080 2\r\n"),
    ("port sign", b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n"),
    ("port too many digits", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 000001\r\n"),
    ("port not ascii digit", "PROXY TCP4 1.2.3.4 5.6.7.8 \u0661 2\r\n".encode()),
    ("octet over 255", b"PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n"),
    ("octet leading zero", b"PROXY TCP4 1.2.3.04 5.6.7.8 1 2\r\n"),
    ("three octets", b"PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n"),
    ("five octets", b"PROXY TCP4 1.2.3.4.5 5.6.7.8 1 2\r\n"),
    ("empty octet", b"PROXY TCP4 1..3.4 5.6.7.8 1 2\r\n"),
    ("IPv6 in TCP4", b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n"),
    ("IPv4 in TCP6", b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n"),
    ("IPv6 zone", b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n"),
    ("IPv6 nine groups", b"PROXY TCP6 1:2:3:4:5:6:7:8:9 ::1 1 2\r\n"),
    ("IPv6 two double colons", b"PROXY TCP6 1::2::3 ::1 1 2\r\n"),
    ("IPv6 five hex digits", b"PROXY TCP6 12345::1 ::1 1 2\r\n"),
    ("IPv6 brackets", b"PROXY TCP6 [::1] ::1 1 2\r\n"),
    # v1: line ends
    ("lone LF", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\nGET"),
    ("lone CR", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rGET"),
    ("LF CR", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n\r"),
    ("no CRLF in 107 bytes", b"PROXY UNKNOWN " + b"x" * 93 + b"\r\n"),
    ("TCP4 line too long", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2" + b"0" * 30),
    # v2: fixed header
    ("bad signature", SIG[:7] + b"q" + SIG[8:] + b"\x21\x11\x00\x0c" + TCP4_BODY),
    ("version 1 nibble", v2(0x11, 0x11, TCP4_BODY)),
    ("version 3 nibble", v2(0x31, 0x11, TCP4_BODY)),
    ("version 0 nibble", v2(0x01, 0x11, TCP4_BODY)),
    ("command 2", v2(0x22, 0x11, TCP4_BODY)),
    ("command 15", v2(0x2F, 0x11, TCP4_BODY)),
    ("family 4", v2(0x21, 0x41, TCP4_BODY)),
    ("protocol 3", v2(0x21, 0x13, TCP4_BODY)),
    ("UNSPEC family with STREAM", v2(0x21, 0x01, TCP4_BODY)),
    ("INET with UNSPEC protocol", v2(0x21, 0x10, TCP4_BODY)),
    ("LOCAL with bad family", v2(0x20, 0xFF, b"")),
    # v2: lengths
    ("TCP4 length 11", v2(0x21, 0x11, TCP4_BODY[:11])),
    ("TCP6 length 12", v2(0x21, 0x21, TCP4_BODY)),
    ("UNIX length 215", v2(0x21, 0x31, bytes(215))),
    ("LOCAL TCP4 length 0", v2(0x20, 0x11, b"")),
    ("too long", v2(0x21, 0x11, b"", length=DEFAULT_MAX_HEADER)),
    ("longest length field", v2(0x21, 0x00, b"", length=0xFFFF)),
    # v2: TLVs
    ("one byte after addresses", v2(0x21, 0x11, TCP4_BODY + b"\x01")),
    ("two bytes after addresses", v2(0x21, 0x11, TCP4_BODY + b"\x01\x00")),
    ("TLV overruns", v2(0x21, 0x11, TCP4_BODY + tlv(1, b"abc")[:-1])),
    ("TLV overruns by a lot", v2(0x20, 0x00, b"\x05\xff\xff")),
    ("second TLV truncated", v2(0x20, 0x00, tlv(1, b"a") + b"\x02\x00\x05ab")),
    ("CRC mismatch", v2(0x20, 0x00, tlv(3, b"\0\0\0\1"))),
]


@pytest.mark.parametrize(("why", "data"), BAD, ids=[why for why, _ in BAD])
def test_malformed_header_is_rejected(why: str, data: bytes) -> None:
    decoder = ProxyHeaderDecoder()
    with pytest.raises(ProxyProtocolError):
        decoder.parse(data + b"payload after the header")
    ring = RingBuffer()
    ring.write(data)
    with pytest.raises(ProxyProtocolError):
        decoder.decode(ring)
    assert ring.to_bytes() == data  # nothing consumed
    # Fed byte by byte it fails too, and never waits past the whole bad header.
    raised_at = None
    for i in range(1, len(data) + 1):
        try:
            decoder.parse(data[:i])
        except ProxyProtocolError:
            raised_at = i
            break
    assert raised_at is not None, why


def test_error_is_a_fatal_frame_error() -> None:
    with pytest.raises(FrameError) as info:
        parse(b"x")
    assert isinstance(info.value, ProxyProtocolError)
    assert info.value.fatal
    assert isinstance(info.value, ValueError)


# -- failing fast ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "fails_at"),
    [
        (b"GET / HTTP/1.1\r\n", 1),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 1),  # TLS ClientHello
        (b"SSH-2.0-OpenSSH_9.2\r\n", 1),
        (b"*1\r\n$4\r\nPING\r\n", 1),  # RESP
        (b"\r\nGET / HTTP/1.1\r\n", 3),
        (b"\r\n\r\nGET / HTTP/1.1\r\n", 5),
        (b"PRI * HTTP/2.0\r\n", 3),
        (b"PROXZ TCP4", 5),
        (b"PROXY TCP7 1.2.3.4", 10),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 01 ", 29),
        (b"PROXY TCP4 1.2.3.4 01", 21),
        (b"PROXY TCP4 300", 14),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX", 32),
        (SIG + b"\x11", 13),
        (SIG + b"\x23", 13),
        (SIG + b"\x21\x14", 14),
        (SIG + b"\x21\x21\x00\x23", 16),  # TCP6 block needs 36
        (SIG + b"\x21\x11\x10\x00", 16),  # 4112 bytes > max_header
    ],
)
def test_garbage_fails_fast(data: bytes, fails_at: int) -> None:
    decoder = ProxyHeaderDecoder()
    for i in range(fails_at):
        assert decoder.parse(data[:i]) is None, data[:i]
    with pytest.raises(ProxyProtocolError):
        decoder.parse(data[:fails_at])


@FAST
@given(first=st.integers(0, 255).filter(lambda b: b not in b"P\r"), rest=st.binary(max_size=40))
def test_anything_not_starting_like_a_header_fails_at_the_first_byte(
    first: int, rest: bytes
) -> None:
    with pytest.raises(ProxyProtocolError):
        parse(bytes([first]))
    with pytest.raises(ProxyProtocolError):
        parse(bytes([first]) + rest)


@FAST
@given(data=st.binary(max_size=300))
@example(data=SIG + b"\x21\x11\x00")
@example(data=b"PROXY UNKNOWN")
def test_arbitrary_bytes_only_raise_proxy_protocol_error(data: bytes) -> None:
    decoder = ProxyHeaderDecoder()
    try:
        result = decoder.parse(data)
    except ProxyProtocolError:
        return
    if result is None:
        # Waiting only while the bytes may still start a header within the bounds.
        assert len(data) < DEFAULT_MAX_HEADER
        assert data.startswith(SIG[: len(data)]) or data.startswith(b"PROXY "[: len(data)])
        if data[:1] == b"P":
            assert len(data) < V1_MAX_LINE and b"\r\n" not in data
    else:
        assert 0 < result[1] <= len(data)


def mutate(data: bytes, kind: int, at: int, value: int) -> bytes:
    at %= len(data) + 1
    if kind == 0 and at < len(data):  # replace a byte
        return data[:at] + bytes([value]) + data[at + 1 :]
    if kind == 1 and at < len(data):  # delete a byte
        return data[:at] + data[at + 1 :]
    if kind == 2:  # insert a byte
        return data[:at] + bytes([value]) + data[at:]
    if kind == 3:  # flip a bit
        if at == len(data):
            return data
        return data[:at] + bytes([data[at] ^ (1 << (value % 8))]) + data[at + 1 :]
    return data[:at]  # truncate


@settings(deadline=None, max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(
    info=st.one_of(v1_infos(), v2_infos()),
    crc=st.booleans(),
    mutations=st.lists(
        st.tuples(st.integers(0, 4), st.integers(0, 1 << 16), st.integers(0, 255)),
        min_size=1,
        max_size=3,
    ),
    payload=st.binary(max_size=20),
)
def test_mutated_headers_only_raise_proxy_protocol_error(
    info: ProxyInfo, crc: bool, mutations: list[tuple[int, int, int]], payload: bytes
) -> None:
    if crc and info.version == 2:
        info = ProxyInfo(2, info.command, info.family, info.source, info.destination, {3: b""})
    data = encode(info)
    for kind, at, value in mutations:
        data = mutate(data, kind, at, value)
    assume(data)
    stream = data + payload
    decoder = ProxyHeaderDecoder()
    try:
        whole = decoder.parse(stream)
    except ProxyProtocolError:
        whole = None
        failed = True
    else:
        failed = False
        if whole is not None:
            assert 0 < whole[1] <= len(stream)
    # Byte by byte, the decoder agrees with the one-shot parse.
    ring = RingBuffer(16, compact_max=0)
    got: ProxyInfo | None = None
    for i in range(len(stream)):
        ring.write(stream[i : i + 1])
        try:
            got = decoder.decode(ring)
        except ProxyProtocolError:
            assert failed
            return
        if got is not None:
            ring.write(stream[i + 1 :])
            break
    assert not failed
    if whole is not None:
        assert got == whole[0]
        assert ring.to_bytes() == stream[whole[1] :]
    else:
        assert got is None


# -- bounds and options -------------------------------------------------------------------


def test_max_header_option() -> None:
    big = encode_v2(ProxyInfo(2, "LOCAL", "UNKNOWN", None, None, {0xE0: b"x" * 1000}))
    assert parse(big) is not None
    with pytest.raises(ProxyProtocolError, match="max_header"):
        parse(big[:16], max_header=1000)  # rejected from the fixed header alone
    huge = encode_v2(ProxyInfo(2, "LOCAL", "UNKNOWN", None, None, {0xE0: b"x" * 0xFFF0}))
    assert parse(huge, max_header=16 + 0xFFFF) is not None
    assert ProxyHeaderDecoder().max_header == DEFAULT_MAX_HEADER
    for bad in (0, 231, 16 + 0x10000):
        with pytest.raises(ValueError):
            ProxyHeaderDecoder(max_header=bad)


def test_ring_holds_no_more_than_needed_while_waiting() -> None:
    """A header announcing more than max_header fails before its body is buffered."""
    ring = RingBuffer(64)
    ring.write(SIG + b"\x21\x11\xff\xff")
    with pytest.raises(ProxyProtocolError):
        ProxyHeaderDecoder().decode(ring)


def test_decode_on_an_empty_ring_and_a_wrapped_ring() -> None:
    decoder = ProxyHeaderDecoder()
    assert decoder.decode(RingBuffer()) is None
    header = encode_v2(ProxyInfo(2, "PROXY", "TCP6", ("::1", 1), ("::2", 2), {1: b"h2"}))
    ring = RingBuffer(64, compact_max=0)
    ring.write(b"j" * 60)
    ring.retrieve(50)  # read position 50 of 64: the header will wrap
    ring.write(header[:10])
    ring.retrieve(10)
    assert ring.length == 10
    ring.write(header[10:] + b"rest")
    assert decoder.decode(ring) == ProxyInfo(2, "PROXY", "TCP6", ("::1", 1), ("::2", 2), {1: b"h2"})
    assert ring.to_bytes() == b"rest"


# -- encoding errors ----------------------------------------------------------------------

GOOD4 = ProxyInfo(1, "PROXY", "TCP4", ("1.2.3.4", 1), ("5.6.7.8", 2))


@pytest.mark.parametrize(
    "info",
    [
        ProxyInfo(1, "LOCAL", "UNKNOWN", None, None),
        ProxyInfo(1, "PROXY", "UNIX", "/a", "/b"),
        ProxyInfo(1, "PROXY", "TCP4", ("1.2.3.4", 1), ("5.6.7.8", 2), {1: b"x"}),
        ProxyInfo(1, "PROXY", "UNKNOWN", ("1.2.3.4", 1), None),
        ProxyInfo(1, "PROXY", "TCP4", ("::1", 1), ("5.6.7.8", 2)),
        ProxyInfo(1, "PROXY", "TCP6", ("1.2.3.4", 1), ("::1", 2)),
        ProxyInfo(1, "PROXY", "TCP6", ("fe80::1%eth0", 1), ("::1", 2)),
        ProxyInfo(1, "PROXY", "TCP4", ("1.2.3.4", 65536), ("5.6.7.8", 2)),
        ProxyInfo(1, "PROXY", "TCP4", ("1.2.3.4", -1), ("5.6.7.8", 2)),
        ProxyInfo(1, "PROXY", "TCP4", ("1.2.3.4", True), ("5.6.7.8", 2)),
        ProxyInfo(1, "PROXY", "TCP4", "1.2.3.4", ("5.6.7.8", 2)),
        ProxyInfo(1, "PROXY", "TCP4", ("1.2.3.4", 1, 0, 0), ("5.6.7.8", 2)),  # type: ignore[arg-type]
        ProxyInfo(1, "PROXY", "TCP5", ("1.2.3.4", 1), ("5.6.7.8", 2)),
    ],
)
def test_encode_v1_rejects(info: ProxyInfo) -> None:
    with pytest.raises(EncodeError):
        encode_v1(info)


@pytest.mark.parametrize(
    "info",
    [
        ProxyInfo(2, "LOCAL", "TCP4", ("1.2.3.4", 1), ("5.6.7.8", 2)),
        ProxyInfo(2, "LOCAL", "UNKNOWN", ("1.2.3.4", 1), None),
        ProxyInfo(2, "HELLO", "UNKNOWN", None, None),
        ProxyInfo(2, "PROXY", "UDP4", None, None),
        ProxyInfo(2, "PROXY", "UNIX", "/" + "a" * 108, "/b"),
        ProxyInfo(2, "PROXY", "UNIX", "/a\0b", "/b"),
        ProxyInfo(2, "PROXY", "UNIX", "\0", "/b"),
        ProxyInfo(2, "PROXY", "UNIX", "\0a\0", "/b"),
        ProxyInfo(2, "PROXY", "UNIX", ("1.2.3.4", 1), "/b"),
        ProxyInfo(2, "PROXY", "TCP6", ("::1", 70000), ("::1", 2)),
        ProxyInfo(2, "LOCAL", "UNKNOWN", None, None, {256: b""}),
        ProxyInfo(2, "LOCAL", "UNKNOWN", None, None, {1: b"x" * 0x10000}),
        ProxyInfo(2, "LOCAL", "UNKNOWN", None, None, {1: "text"}),  # type: ignore[dict-item]
        ProxyInfo(2, "LOCAL", "UNKNOWN", None, None, {1: b"x" * 40000, 2: b"y" * 40000}),
    ],
)
def test_encode_v2_rejects(info: ProxyInfo) -> None:
    with pytest.raises(EncodeError):
        encode_v2(info)


def test_encoders_ignore_the_version_field() -> None:
    assert encode_v1(GOOD4) == b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n"
    as_v2 = ProxyInfo(2, "PROXY", "TCP4", GOOD4.source, GOOD4.destination)
    assert encode_v2(GOOD4) == encode_v2(as_v2)
    assert parse(encode_v2(GOOD4)) == (as_v2, 28)


def test_feed_helper_sanity() -> None:
    chunks = [b"PROXY UNKNOWN", b"\r", b"\nab", b"c"]
    results, ring = feed(chunks, offset=10)
    assert results == [None, None, ProxyInfo(1, "PROXY", "UNKNOWN", None, None)]
    assert ring.to_bytes() == b"abc"
