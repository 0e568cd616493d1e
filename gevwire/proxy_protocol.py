"""The PROXY protocol (HAProxy), versions 1 (text) and 2 (binary), sans-I/O.

A load balancer that speaks the PROXY protocol sends one header before any application
byte, carrying the real client's address.  :class:`ProxyHeaderDecoder` cuts it from the
front of a connection's input ring and leaves the bytes after it for the application
codec; :func:`encode_v1` / :func:`encode_v2` build headers (for tests and for proxies).

Implemented from "The PROXY protocol, Versions 1 & 2" (haproxy ``doc/proxy-protocol.txt``,
2020/03/05).  The receiver is strict, as the spec asks ("any sequence which does not
exactly match the protocol must be discarded"), and decides from as few bytes as it can:
a prefix that can no longer become a valid header fails at once, and a header is never
waited for beyond its maximum size (107 bytes for v1, ``max_header`` for v2).
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

import construct as cs  # type: ignore[import-untyped]

from gevwire.errors import EncodeError, FrameError
from gevwire.ringbuffer import RingBuffer

__all__ = [
    "DEFAULT_MAX_HEADER",
    "IPV4_ADDRESSES",
    "IPV6_ADDRESSES",
    "PP2_TYPE_ALPN",
    "PP2_TYPE_AUTHORITY",
    "PP2_TYPE_CRC32C",
    "PP2_TYPE_NETNS",
    "PP2_TYPE_NOOP",
    "PP2_TYPE_SSL",
    "PP2_TYPE_UNIQUE_ID",
    "TLV",
    "UNIX_ADDRESSES",
    "V1_MAX_LINE",
    "V1_PREFIX",
    "V2_FIXED_SIZE",
    "V2_HEADER",
    "V2_SIGNATURE",
    "ProxyHeaderDecoder",
    "ProxyInfo",
    "ProxyProtocolError",
    "crc32c",
    "encode_v1",
    "encode_v2",
]

#: The 12 bytes every v2 header starts with (spec 2.2).
V2_SIGNATURE: Final = b"\r\n\r\n\x00\r\nQUIT\n"
#: Every v1 header starts with these 6 bytes (spec 2.1).
V1_PREFIX: Final = b"PROXY "
#: Longest v1 line, CRLF included ("PROXY UNKNOWN" with two full IPv6 addresses).
V1_MAX_LINE: Final = 107
#: Size of the fixed part of a v2 header: signature, ver_cmd, fam, len.
V2_FIXED_SIZE: Final = 16
#: Default bound on a whole v2 header.  The spec sizes the address block to fit one
#: minimal TCP segment (536 bytes), but TLVs come on top: HAProxy alone may add an SNI
#: (up to 255 bytes), a unique id (128), ALPN and SSL sub-TLVs, and cloud balancers add
#: their own, so a few KiB is the practical bound.
DEFAULT_MAX_HEADER: Final = 4096

# TLV types registered by the spec (2.2); 0xE0-0xEF are for applications.
PP2_TYPE_ALPN: Final = 0x01
PP2_TYPE_AUTHORITY: Final = 0x02
PP2_TYPE_CRC32C: Final = 0x03
PP2_TYPE_NOOP: Final = 0x04
PP2_TYPE_UNIQUE_ID: Final = 0x05
PP2_TYPE_SSL: Final = 0x20
PP2_TYPE_NETNS: Final = 0x30

# -- declarations ----------------------------------------------------------------------
# construct is the declaration (and builds headers in encode_v2); the decoder reads the
# same layouts with ``struct``, which tests prove equal to these.

V2_HEADER = cs.Struct(
    "signature" / cs.Const(V2_SIGNATURE),
    "ver_cmd" / cs.Int8ub,  # high nibble: version (2); low nibble: command
    "fam" / cs.Int8ub,  # high nibble: address family; low nibble: transport protocol
    "len" / cs.Int16ub,  # bytes after these 16: address block, then TLVs
)
IPV4_ADDRESSES = cs.Struct(
    "src_addr" / cs.Bytes(4),
    "dst_addr" / cs.Bytes(4),
    "src_port" / cs.Int16ub,
    "dst_port" / cs.Int16ub,
)
IPV6_ADDRESSES = cs.Struct(
    "src_addr" / cs.Bytes(16),
    "dst_addr" / cs.Bytes(16),
    "src_port" / cs.Int16ub,
    "dst_port" / cs.Int16ub,
)
UNIX_ADDRESSES = cs.Struct(
    "src_addr" / cs.Bytes(108),
    "dst_addr" / cs.Bytes(108),
)
TLV = cs.Struct(
    "type" / cs.Int8ub,
    "length" / cs.Rebuild(cs.Int16ub, cs.len_(cs.this.value)),
    "value" / cs.Bytes(cs.this.length),
)

_V2_HEADER: Final = struct.Struct("!12sBBH")
_IPV4: Final = struct.Struct("!4s4sHH")
_IPV6: Final = struct.Struct("!16s16sHH")
_UNIX: Final = struct.Struct("!108s108s")
_TLV_HEAD: Final = struct.Struct("!BH")

# The fam byte → (family reported, address block size).  These seven values are the
# only valid ones (spec 2.2); the UDP ones fall back to UNSPEC, which the spec allows a
# receiver to do for combinations it does not support: a TCP server has no use for them.
_V2_FAMILIES: Final[dict[int, tuple[str, int]]] = {
    0x00: ("UNKNOWN", 0),
    0x11: ("TCP4", _IPV4.size),
    0x12: ("UNKNOWN", _IPV4.size),  # UDP over IPv4
    0x21: ("TCP6", _IPV6.size),
    0x22: ("UNKNOWN", _IPV6.size),  # UDP over IPv6
    0x31: ("UNIX", _UNIX.size),
    0x32: ("UNKNOWN", _UNIX.size),  # UNIX datagram
}
_V2_FAM_BYTE: Final = {"UNKNOWN": 0x00, "TCP4": 0x11, "TCP6": 0x21, "UNIX": 0x31}
_V2_COMMANDS: Final = ("LOCAL", "PROXY")

_V1_FAMILIES: Final = (b"TCP4", b"TCP6", b"UNKNOWN")
# Longest v1 line (CRLF included) per family; a TCP4 line fits in 56 bytes.
_V1_LINE_MAX: Final = {b"TCP4": 56, b"TCP6": V1_MAX_LINE, b"UNKNOWN": V1_MAX_LINE}
_IPV4_CHARS: Final = b"0123456789."
_IPV6_CHARS: Final = b"0123456789abcdefABCDEF:."


class ProxyProtocolError(FrameError):
    """The bytes before the application's are not a valid PROXY protocol header."""


@dataclass(frozen=True, slots=True)
class ProxyInfo:
    """What a PROXY header says about the connection it precedes.

    ``source`` is the real client and ``destination`` the address it connected to:
    ``(host, port)`` as ``socket`` gives them for TCP4 / TCP6, a path for UNIX (an
    abstract one starts with ``"\\0"``), None for LOCAL and UNKNOWN (use the socket's own
    addresses then).  ``tlvs`` holds v2's type-length-value extensions in the order sent
    (a repeated type keeps its last value); it is empty for v1.
    """

    version: int
    command: str
    family: str
    source: tuple[str, int] | str | None
    destination: tuple[str, int] | str | None
    tlvs: dict[int, bytes] = field(default_factory=dict)


# -- decoding --------------------------------------------------------------------------


class ProxyHeaderDecoder:
    """Consumes exactly the PROXY header (v1 or v2) from the front of a connection's input.

    ``max_header`` bounds a v2 header (16 + its length field); a v1 line is bounded by the
    spec at 107 bytes.  A header announcing more is rejected from its first 16 bytes.
    """

    __slots__ = ("_max_header",)

    def __init__(self, *, max_header: int = DEFAULT_MAX_HEADER) -> None:
        smallest = V2_FIXED_SIZE + _UNIX.size
        if not smallest <= max_header <= V2_FIXED_SIZE + 0xFFFF:
            raise ValueError(f"max_header must be in [{smallest}, {V2_FIXED_SIZE + 0xFFFF}]")
        self._max_header = max_header

    @property
    def max_header(self) -> int:
        """Largest v2 header accepted, in bytes."""
        return self._max_header

    def decode(self, ring: RingBuffer) -> ProxyInfo | None:
        """Consume the header from ``ring`` and return it; None (nothing consumed) if partial.

        Raise :class:`ProxyProtocolError` as soon as the buffered bytes cannot be the
        start of a valid header; nothing is consumed then either.
        """
        n = ring.length
        if not n:
            return None
        result = self.parse(ring.contiguous(min(n, self._max_header)))
        if result is None:
            return None
        info, used = result
        ring.retrieve(used)
        return info

    def parse(self, data: bytes | bytearray | memoryview) -> tuple[ProxyInfo, int] | None:
        """``(info, header size)`` for the header at the start of ``data``; None if partial.

        The sans-ring form of :meth:`decode`, for bytes straight from a read; the info
        holds copies, never views of ``data``.
        """
        if not len(data):
            return None
        first = data[0]
        if first == 0x0D:
            return self._parse_v2(data)
        if first == 0x50:  # "P"
            return _parse_v1(data)
        raise ProxyProtocolError(f"not a PROXY protocol header: starts with {bytes([first])!r}")

    def _parse_v2(self, data: bytes | bytearray | memoryview) -> tuple[ProxyInfo, int] | None:
        n = len(data)
        head = bytes(data[:V2_FIXED_SIZE])
        k = min(n, len(V2_SIGNATURE))
        if head[:k] != V2_SIGNATURE[:k]:
            raise ProxyProtocolError(f"bad PROXY v2 signature: {head[:k]!r}")
        if n <= 12:
            return None
        ver_cmd = head[12]
        if ver_cmd >> 4 != 2:
            raise ProxyProtocolError(f"unsupported PROXY v2 version {ver_cmd >> 4}")
        if ver_cmd & 0x0F > 1:
            raise ProxyProtocolError(f"unknown PROXY v2 command {ver_cmd & 0x0F:#x}")
        if n == 13:
            return None
        fam = head[13]
        entry = _V2_FAMILIES.get(fam)
        if entry is None:
            raise ProxyProtocolError(f"unknown PROXY v2 family/protocol byte {fam:#04x}")
        if n < V2_FIXED_SIZE:
            return None
        length: int = _V2_HEADER.unpack(head)[3]
        family, block = entry
        if length < block:
            raise ProxyProtocolError(
                f"PROXY v2 length {length} is shorter than the {block}-byte address block"
            )
        total = V2_FIXED_SIZE + length
        if total > self._max_header:
            raise ProxyProtocolError(
                f"PROXY v2 header of {total} bytes exceeds max_header={self._max_header}"
            )
        if n < total:
            return None

        command = _V2_COMMANDS[ver_cmd & 0x0F]
        source: tuple[str, int] | str | None = None
        destination: tuple[str, int] | str | None = None
        if command == "LOCAL":
            # The spec: a LOCAL receiver "must use the real connection endpoints and
            # discard the protocol block including the family which is ignored".
            family = "UNKNOWN"
        elif family == "TCP4":
            src, dst, sport, dport = _IPV4.unpack_from(data, V2_FIXED_SIZE)
            source = (socket.inet_ntoa(src), sport)
            destination = (socket.inet_ntoa(dst), dport)
        elif family == "TCP6":
            src, dst, sport, dport = _IPV6.unpack_from(data, V2_FIXED_SIZE)
            source = (socket.inet_ntop(socket.AF_INET6, src), sport)
            destination = (socket.inet_ntop(socket.AF_INET6, dst), dport)
        elif family == "UNIX":
            src, dst = _UNIX.unpack_from(data, V2_FIXED_SIZE)
            source, destination = _unix_path(src), _unix_path(dst)
        tlvs = _parse_tlvs(data, V2_FIXED_SIZE + block, total)
        return ProxyInfo(2, command, family, source, destination, tlvs), total


def _parse_tlvs(data: bytes | bytearray | memoryview, pos: int, end: int) -> dict[int, bytes]:
    """The TLVs in ``data[pos:end]``; a CRC32C TLV is verified over ``data[:end]``."""
    tlvs: dict[int, bytes] = {}
    crc_at = -1
    while pos < end:
        if pos + _TLV_HEAD.size > end:
            raise ProxyProtocolError(f"truncated PROXY v2 TLV header at offset {pos}")
        kind, size = _TLV_HEAD.unpack_from(data, pos)
        pos += _TLV_HEAD.size
        if pos + size > end:
            raise ProxyProtocolError(
                f"PROXY v2 TLV {kind:#04x} of {size} bytes overruns the header by "
                f"{pos + size - end} bytes"
            )
        if kind == PP2_TYPE_CRC32C:
            if size != 4 or crc_at >= 0:
                raise ProxyProtocolError("PROXY v2 CRC32C TLV must be one 4-byte value")
            crc_at = pos
        tlvs[kind] = bytes(data[pos : pos + size])
        pos += size
    if crc_at >= 0:
        header = bytearray(data[:end])
        expected = int.from_bytes(header[crc_at : crc_at + 4], "big")
        header[crc_at : crc_at + 4] = bytes(4)
        if crc32c(header) != expected:
            raise ProxyProtocolError("PROXY v2 header fails its CRC32C checksum")
    return tlvs


def _unix_path(raw: bytes) -> str:
    """A NUL-padded ``sun_path`` as a str (abstract names keep their leading NUL)."""
    if raw[:1] == b"\0":
        name = raw[1:].rstrip(b"\0")
        return "\0" + os.fsdecode(name) if name else ""
    return os.fsdecode(raw.split(b"\0", 1)[0])


def _parse_v1(data: bytes | bytearray | memoryview) -> tuple[ProxyInfo, int] | None:
    window = bytes(data[:V1_MAX_LINE])
    k = min(len(window), len(V1_PREFIX))
    if window[:k] != V1_PREFIX[:k]:
        raise ProxyProtocolError(f"not a PROXY protocol header: starts with {window[:k]!r}")
    end = window.find(b"\r\n")
    if end >= 0:
        return _parse_v1_line(window[:end]), end + 2
    if len(window) >= V1_MAX_LINE:
        raise ProxyProtocolError(f"PROXY v1 line has no CRLF in its first {V1_MAX_LINE} bytes")
    if k == len(V1_PREFIX):
        _check_v1_partial(window)
    return None


def _parse_v1_line(line: bytes) -> ProxyInfo:
    """A whole v1 line without its CRLF (it starts with ``PROXY ``)."""
    rest = line[len(V1_PREFIX) :]
    if rest[:7] == b"UNKNOWN" and (len(rest) == 7 or rest[7] == 0x20):
        # "the receiver must ignore anything presented before the CRLF is found"
        return ProxyInfo(1, "PROXY", "UNKNOWN", None, None, {})
    fields = rest.split(b" ")
    if len(fields) != 5:
        raise ProxyProtocolError(f"PROXY v1 line needs 5 fields after PROXY: {line!r}")
    fam, src, dst, sport, dport = fields
    parse_address = _v1_address_parser(fam)
    return ProxyInfo(
        1,
        "PROXY",
        fam.decode("ascii"),
        (parse_address(src), _parse_port(sport)),
        (parse_address(dst), _parse_port(dport)),
        {},
    )


def _v1_address_parser(fam: bytes) -> Callable[[bytes], str]:
    if fam == b"TCP4":
        return _parse_ipv4_text
    if fam == b"TCP6":
        return _parse_ipv6_text
    raise ProxyProtocolError(f"unknown PROXY v1 protocol {fam[:16]!r}")


def _check_v1_partial(window: bytes) -> None:
    """Raise if ``window`` (a v1 line without its CRLF yet) can never become valid."""
    if window[-1] == 0x0D:
        # Only the LF is missing: the line must already be whole and valid.
        _parse_v1_line(window[:-1])
        return
    fam, space, tail = window[len(V1_PREFIX) :].partition(b" ")
    if not space:
        if not any(name.startswith(fam) for name in _V1_FAMILIES):
            raise ProxyProtocolError(f"unknown PROXY v1 protocol {fam[:16]!r}")
        return
    if fam == b"UNKNOWN":
        return
    parse_address = _v1_address_parser(fam)
    if len(window) + 2 > _V1_LINE_MAX[fam]:
        raise ProxyProtocolError(f"PROXY v1 {fam.decode()} line too long: {window!r}")
    fields = tail.split(b" ")
    if len(fields) > 4:
        raise ProxyProtocolError(f"PROXY v1 line has too many fields: {window!r}")
    *whole, last = fields
    for i, value in enumerate(whole):
        if i < 2:
            parse_address(value)
        else:
            _parse_port(value)
    if len(whole) >= 2:
        ok = not last or _maybe_number(last, 0xFFFF)
    elif fam == b"TCP4":
        *octets, tail = last.split(b".")
        ok = len(octets) < 4 and all(_maybe_number(o, 255) for o in octets)
        ok = ok and (not tail or _maybe_number(tail, 255))
    else:
        ok = len(last) <= 45 and not last.translate(None, _IPV6_CHARS)
    if not ok:
        raise ProxyProtocolError(f"bad PROXY v1 field {last!r} in {window!r}")


def _maybe_number(text: bytes, limit: int) -> bool:
    """True if ``text`` is a decimal number in [0, ``limit``] without leading zeros."""
    return (
        0 < len(text) <= 5
        and text.isdigit()
        and (text[0] != 0x30 or len(text) == 1)
        and int(text) <= limit
    )


def _parse_ipv4_text(text: bytes) -> str:
    """Four decimal numbers 0-255 without leading zeros, as the spec demands."""
    parts = text.split(b".")
    if len(parts) != 4 or not all(
        0 < len(p) <= 3 and p.isdigit() and (p[0] != 0x30 or len(p) == 1) and int(p) <= 255
        for p in parts
    ):
        raise ProxyProtocolError(f"bad PROXY v1 IPv4 address {text!r}")
    return text.decode("ascii")


def _parse_ipv6_text(text: bytes) -> str:
    """An IPv6 address in any standard text form, returned as ``socket`` would show it.

    The spec's "series of sets of 4 hexadecimal digits" is read as the standard forms
    (``inet_ntop`` drops leading zeros, and HAProxy parses with ``inet_pton``); a zone
    (``%eth0``) is not an address and is refused.
    """
    if not text or text.translate(None, _IPV6_CHARS):
        raise ProxyProtocolError(f"bad PROXY v1 IPv6 address {text!r}")
    try:
        packed = ipaddress.IPv6Address(text.decode("ascii")).packed
    except ValueError:
        raise ProxyProtocolError(f"bad PROXY v1 IPv6 address {text!r}") from None
    return socket.inet_ntop(socket.AF_INET6, packed)


def _parse_port(text: bytes) -> int:
    if not (0 < len(text) <= 5 and text.isdigit()) or (text[0] == 0x30 and len(text) > 1):
        raise ProxyProtocolError(f"bad PROXY v1 port {text!r}")
    port = int(text)
    if port > 0xFFFF:
        raise ProxyProtocolError(f"PROXY v1 port {port} out of range")
    return port


# -- CRC32C (spec 2.2.3, RFC 4960 appendix B) ------------------------------------------


def _crc32c_table() -> tuple[int, ...]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return tuple(table)


_CRC32C_TABLE: Final = _crc32c_table()


def crc32c(data: bytes | bytearray | memoryview) -> int:
    """CRC-32C (Castagnoli) of ``data``.

    A byte-at-a-time loop: it runs only for headers that carry a CRC32C TLV, once per
    connection, over at most ``max_header`` bytes.
    """
    table = _CRC32C_TABLE
    crc = 0xFFFFFFFF
    for byte in bytes(data):
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


# -- encoding --------------------------------------------------------------------------


def encode_v1(info: ProxyInfo) -> bytes:
    """The v1 text line for ``info`` (``info.version`` is not looked at).

    v1 has no LOCAL command, no UNIX family and no TLVs: those raise
    :class:`~gevwire.errors.EncodeError`, as does an invalid address or port.
    """
    if info.command != "PROXY":
        raise EncodeError(f"PROXY v1 has no {info.command!r} command (send family UNKNOWN)")
    if info.tlvs:
        raise EncodeError("PROXY v1 cannot carry TLVs")
    if info.family == "UNKNOWN":
        _require_no_addresses(info)
        return b"PROXY UNKNOWN\r\n"
    if info.family == "TCP4":
        text = _ipv4_text
    elif info.family == "TCP6":
        text = _ipv6_text
    else:
        raise EncodeError(f"PROXY v1 has no family {info.family!r}")
    src_host, src_port = _endpoint(info.source)
    dst_host, dst_port = _endpoint(info.destination)
    line = f"PROXY {info.family} {text(src_host)} {text(dst_host)} {src_port} {dst_port}\r\n"
    return line.encode("ascii")


def encode_v2(info: ProxyInfo) -> bytes:
    """The v2 binary header for ``info`` (``info.version`` is not looked at).

    TLVs are written in ``info.tlvs`` order.  A CRC32C TLV (type 3) is filled in with the
    header's checksum, whatever value it was given.  LOCAL headers must have family
    UNKNOWN and no addresses.  Invalid input raises :class:`~gevwire.errors.EncodeError`.
    """
    if info.command not in _V2_COMMANDS:
        raise EncodeError(f"unknown PROXY command {info.command!r}")
    fam = _V2_FAM_BYTE.get(info.family)
    if fam is None:
        raise EncodeError(f"unknown PROXY family {info.family!r}")
    if info.command == "LOCAL" and info.family != "UNKNOWN":
        raise EncodeError("a LOCAL header carries no addresses: use family UNKNOWN")
    addresses = b""
    if info.family == "UNKNOWN":
        _require_no_addresses(info)
    elif info.family == "UNIX":
        addresses = UNIX_ADDRESSES.build(
            {"src_addr": _unix_packed(info.source), "dst_addr": _unix_packed(info.destination)}
        )
    else:
        packed = _ipv4_packed if info.family == "TCP4" else _ipv6_packed
        block = IPV4_ADDRESSES if info.family == "TCP4" else IPV6_ADDRESSES
        src_host, src_port = _endpoint(info.source)
        dst_host, dst_port = _endpoint(info.destination)
        addresses = block.build(
            {
                "src_addr": packed(src_host),
                "dst_addr": packed(dst_host),
                "src_port": src_port,
                "dst_port": dst_port,
            }
        )

    tlvs: list[bytes] = []
    offset = V2_FIXED_SIZE + len(addresses)
    crc_at = -1
    for kind, value in info.tlvs.items():
        if not (isinstance(kind, int) and 0 <= kind <= 0xFF):
            raise EncodeError(f"TLV type {kind!r} is not a byte")
        if not isinstance(value, bytes | bytearray | memoryview) or len(value) > 0xFFFF:
            raise EncodeError(f"TLV {kind:#04x} value must be at most 65535 bytes")
        if kind == PP2_TYPE_CRC32C:
            value, crc_at = bytes(4), offset + _TLV_HEAD.size
        tlvs.append(TLV.build({"type": kind, "value": bytes(value)}))
        offset += _TLV_HEAD.size + len(value)
    length = offset - V2_FIXED_SIZE
    if length > 0xFFFF:
        raise EncodeError(f"PROXY v2 header of {offset} bytes is too long")
    ver_cmd = 0x20 | _V2_COMMANDS.index(info.command)
    header = V2_HEADER.build({"ver_cmd": ver_cmd, "fam": fam, "len": length})
    out = b"".join([header, addresses, *tlvs])
    if crc_at >= 0:
        out = out[:crc_at] + crc32c(out).to_bytes(4, "big") + out[crc_at + 4 :]
    return out


def _require_no_addresses(info: ProxyInfo) -> None:
    if info.source is not None or info.destination is not None:
        raise EncodeError(f"{info.command} {info.family} header carries no addresses")


def _endpoint(value: object) -> tuple[str, int]:
    if not (
        isinstance(value, tuple)
        and len(value) == 2
        and isinstance(value[0], str)
        and type(value[1]) is int
        and 0 <= value[1] <= 0xFFFF
    ):
        raise EncodeError(f"expected (host, port) with a port in [0, 65535], got {value!r}")
    return value[0], value[1]


def _ipv4_packed(host: str) -> bytes:
    try:
        return ipaddress.IPv4Address(host).packed
    except ValueError:
        raise EncodeError(f"not an IPv4 address: {host!r}") from None


def _ipv4_text(host: str) -> str:
    return socket.inet_ntoa(_ipv4_packed(host))


def _ipv6_text(host: str) -> str:
    return socket.inet_ntop(socket.AF_INET6, _ipv6_packed(host))


def _ipv6_packed(host: str) -> bytes:
    try:
        address = ipaddress.IPv6Address(host)
    except ValueError:
        raise EncodeError(f"not an IPv6 address: {host!r}") from None
    if address.scope_id is not None:
        raise EncodeError(f"PROXY headers carry no IPv6 zone: {host!r}")
    return address.packed


def _unix_packed(path: object) -> bytes:
    """``path`` as the 108 bytes of a ``sun_path`` (NUL-padded by construct's Bytes)."""
    if not isinstance(path, str):
        raise EncodeError(f"a UNIX address is a path string, got {path!r}")
    raw = os.fsencode(path)
    abstract = raw[:1] == b"\0"
    if (
        len(raw) > _UNIX.size // 2
        or (abstract and raw.endswith(b"\0"))
        or (not abstract and b"\0" in raw)
    ):
        raise EncodeError(f"UNIX path does not fit a 108-byte sun_path: {path!r}")
    return raw.ljust(_UNIX.size // 2, b"\0")
