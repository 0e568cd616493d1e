"""WebSocket (RFC 6455), server side: the HTTP/1.1 upgrade handshake, then frames.

    server = Server(WebSocketHandler(Echo()), codec=websocket(max_message_size=1 << 20))

Three parts, so that the codec stays sans-I/O (it never sees a socket):

- :class:`WebSocketCodec` cuts a connection's bytes into *events*.  Until the handshake,
  an event is an :class:`HttpRequest` (a plain HTTP/1.1 request: keep-alive and
  ``Content-Length`` bodies supported, ``Transfer-Encoding`` refused) or a
  :class:`Handshake` (a valid upgrade request; the decoder switches to frames right
  after it).  Then an event is a whole message, ``str`` for text (UTF-8 validated
  across fragments) and ``bytes`` for binary, or a control frame: :class:`Ping`,
  :class:`Pong`, :class:`Close`.  After a ``Close`` every later byte is ignored.
  ``encode`` sends ``str`` as a text frame, bytes-like as a binary frame, ``Ping`` /
  ``Pong`` / ``Close`` as control frames and :class:`HttpResponse` as HTTP.
- Protocol violations are :class:`~gevwire.errors.FrameError`\\s that carry the
  answer: :class:`WebSocketError` has the close code (1002 protocol error, 1007 bad
  UTF-8, 1009 too big), :class:`HttpError` the HTTP status (400, 426, 431, ...).  They
  are not ``fatal``: the decoder ignores every later byte, so that the handler can
  close without a reset (see :class:`WebSocketError`).
- :class:`WebSocketHandler` is the :class:`~gevwire.Handler` that answers the protocol
  (101 with ``Sec-WebSocket-Accept``, pong for ping, the close echo, a Close frame or an
  HTTP error for a protocol error) and hands the rest to a :class:`WebSocketApp`:
  ``on_request`` (plain HTTP), ``on_upgrade`` / ``on_open``, ``on_message`` (whole
  messages; the return value is sent back as a message), ``on_pong``,
  ``on_close_frame``, ``on_close``, ``on_error``.  :func:`close_websocket` starts a
  close handshake from the server.

permessage-deflate (RFC 7692) is negotiated from the client's offer unless the codec
says ``compression=False`` (:class:`PerMessageDeflate`): the decoder inflates compressed
messages, :class:`WebSocketHandler` compresses what the app sends back.

Limits, each checked before the bytes are buffered: ``max_request_size`` for a request
head plus body (431 / 413), ``max_message_size`` for a message's payload summed over its
fragments, read from each frame header (close 1009) and, for a compressed message,
counted while inflating (a zip bomb stops at the limit), ``max_frame_size`` for one
frame on the wire.  Client frames must be masked; reserved bits other than RSV1 on the
first frame of a compressed message, unknown opcodes, non-minimal or 64-bit lengths
with the top bit set, fragmented or over-125-byte control frames, and continuation out
of place are protocol errors (1002).  The frame header is declared with construct
(:data:`FRAME_HEADER`); the hot path reads the same fields with ``struct`` (proven
equal by the tests) and unmasks payloads with big-integer XORs in 64 KiB blocks.  A
data frame that arrives in pieces is worked on as they come: unmasked in place in the
input ring, its text validated (bad UTF-8 fails as soon as it arrives) and a compressed
one inflated, so only the last piece is left to do when the frame is whole.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import logging
import re
import struct
import zlib
from _codecs import utf_8_decode as _utf_8_decode
from dataclasses import dataclass
from enum import IntEnum
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

import construct  # type: ignore[import-untyped]

from gevwire.codec import BaseCodec, Decoder
from gevwire.errors import ConnectionClosed, EncodeError, FrameError
from gevwire.handler import Handler
from gevwire.ringbuffer import RingBuffer

if TYPE_CHECKING:
    from collections.abc import Callable

    from gevwire.connection import Connection

__all__ = [
    "FRAME_HEADER",
    "Close",
    "CloseCode",
    "EncodedFrame",
    "Handshake",
    "HttpError",
    "HttpRequest",
    "HttpResponse",
    "Opcode",
    "PerMessageDeflate",
    "Ping",
    "Pong",
    "WebSocketApp",
    "WebSocketCodec",
    "WebSocketError",
    "WebSocketHandler",
    "accept_key",
    "close_websocket",
    "encode_frame",
    "parse_extensions",
    "send_message",
    "valid_close_code",
    "websocket",
]

log = logging.getLogger("gevwire")

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class Opcode(IntEnum):
    """Frame opcodes (RFC 6455 §5.2)."""

    CONTINUATION = 0x0
    TEXT = 0x1
    BINARY = 0x2
    CLOSE = 0x8
    PING = 0x9
    PONG = 0xA


class CloseCode(IntEnum):
    """Close status codes (RFC 6455 §7.4.1 and the IANA registry)."""

    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    NO_STATUS = 1005  # never on the wire: a Close frame without a code
    ABNORMAL = 1006  # never on the wire
    INVALID_DATA = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    MANDATORY_EXTENSION = 1010
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013
    BAD_GATEWAY = 1014
    TLS_HANDSHAKE = 1015  # never on the wire


def valid_close_code(code: int) -> bool:
    """True if ``code`` may appear in a Close frame: the registered codes meant for the
    wire, and the ranges for libraries (3000-3999) and applications (4000-4999)."""
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


#: The frame header, declared: the reference the ``struct`` hot path is tested against.
FRAME_HEADER: Any = construct.Struct(
    "bits" / construct.BitStruct(
        "fin" / construct.Flag,
        "rsv" / construct.BitsInteger(3),
        "opcode" / construct.Nibble,
        "masked" / construct.Flag,
        "length7" / construct.BitsInteger(7),
    ),
    "length" / construct.Switch(
        construct.this.bits.length7,
        {126: construct.Int16ub, 127: construct.Int64ub},
        default=construct.Computed(construct.this.bits.length7),
    ),
    "mask_key" / construct.If(construct.this.bits.masked, construct.Bytes(4)),
)

_U16 = struct.Struct("!H")
_U64 = struct.Struct("!Q")
_HEAD2 = struct.Struct("!BB")
_HEAD4 = struct.Struct("!BBH")
_HEAD10 = struct.Struct("!BBQ")
_MAX_HEADER = 14  # 2 + 8-byte length + 4-byte mask key
# Plain ints for the hot path (an IntEnum member costs an attribute lookup).
_CONT, _TEXT, _BINARY, _CLOSE, _PING, _PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


# -- events ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ping:
    """A ping (at most 125 bytes of payload); answered with a pong of the same payload."""

    payload: bytes = b""


@dataclass(frozen=True, slots=True)
class Pong:
    """A pong (at most 125 bytes of payload)."""

    payload: bytes = b""


@dataclass(frozen=True, slots=True)
class Close:
    """A Close frame: ``code`` 1005 (:attr:`CloseCode.NO_STATUS`) is a frame without one."""

    code: int = CloseCode.NORMAL
    reason: str = ""


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """An HTTP/1.x request: header names keep their case, :meth:`header` ignores it."""

    method: str
    target: str
    version: str
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""

    def header(self, name: str, default: str | None = None) -> str | None:
        """The value of header ``name`` (repeated headers joined with ``", "``)."""
        wanted = name.lower()
        values = [v for k, v in self.headers if k.lower() == wanted]
        return ", ".join(values) if values else default

    def tokens(self, name: str) -> list[str]:
        """Header ``name`` as a lower-case comma-separated token list."""
        value = self.header(name) or ""
        return [t.strip().lower() for t in value.split(",") if t.strip()]

    @property
    def path(self) -> str:
        """The target without its query string."""
        return self.target.partition("?")[0]

    @property
    def keep_alive(self) -> bool:
        """HTTP/1.1 unless ``Connection: close``; HTTP/1.0 only with ``keep-alive``."""
        tokens = self.tokens("connection")
        if self.version == "HTTP/1.0":
            return "keep-alive" in tokens
        return "close" not in tokens


@dataclass(frozen=True, slots=True)
class HttpResponse:
    """An HTTP/1.1 response.  ``Content-Length`` is added (except for 1xx, 204, 304), and
    ``Content-Type: content_type`` when there is a body and no such header."""

    status: int = 200
    body: bytes | str = b""
    headers: tuple[tuple[str, str], ...] = ()
    content_type: str = "text/plain; charset=utf-8"
    reason: str = ""

    def with_header(self, name: str, value: str) -> HttpResponse:
        """A copy with one more header."""
        return dataclasses.replace(self, headers=(*self.headers, (name, value)))


@dataclass(frozen=True, slots=True)
class Handshake:
    """A valid WebSocket upgrade request; ``accept`` is its ``Sec-WebSocket-Accept``.

    ``deflate`` is the permessage-deflate agreement the decoder made with the client's
    offer (None: no compression); the decoder inflates the client's compressed messages
    from the next frame on, and :meth:`response` tells the client.
    """

    request: HttpRequest
    accept: str
    deflate: PerMessageDeflate | None = None

    def response(self, protocol: str | None = None) -> HttpResponse:
        """The ``101 Switching Protocols`` reply (with a chosen subprotocol, if any, and
        the agreed ``Sec-WebSocket-Extensions``)."""
        headers: tuple[tuple[str, str], ...] = (
            ("Upgrade", "websocket"), ("Connection", "Upgrade"),
            ("Sec-WebSocket-Accept", self.accept))
        if protocol is not None:
            headers = (*headers, ("Sec-WebSocket-Protocol", protocol))
        if self.deflate is not None:
            headers = (*headers, ("Sec-WebSocket-Extensions", self.deflate.response_value()))
        return HttpResponse(101, headers=headers)


@dataclass(frozen=True, slots=True)
class EncodedFrame:
    """A message already framed (a compressed message, see :class:`PerMessageDeflate`):
    :class:`WebSocketCodec` sends ``data`` as it is."""

    data: bytes


# -- errors --------------------------------------------------------------------------------


class WebSocketError(FrameError):
    """A WebSocket protocol violation: the connection is to be closed with ``code``.

    Not ``fatal``: the decoder ignores every later byte, and :class:`WebSocketHandler`
    sends the Close, half-closes and keeps reading until the peer closes (a lingering
    close: closing a socket with unread input sends a reset, which can destroy the
    Close frame before the peer reads it).  A handler of its own must close.
    """

    fatal = False

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"websocket close {code}: {reason}")
        self.code = code
        self.reason = reason


class HttpError(FrameError):
    """A request that cannot be served: answered with ``status``, then closed as a
    :class:`WebSocketError` is (not ``fatal``: later bytes are ignored)."""

    fatal = False

    def __init__(self, status: int, reason: str,
                 headers: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(f"HTTP {status}: {reason}")
        self.status = status
        self.reason = reason
        self.headers = headers

    def response(self) -> HttpResponse:
        """The reply that tells the client (the connection then closes)."""
        return HttpResponse(self.status, body=self.reason + "\n",
                            headers=(*self.headers, ("Connection", "close")))


def _protocol_error(reason: str) -> WebSocketError:
    return WebSocketError(CloseCode.PROTOCOL_ERROR, reason)


# -- frames ------------------------------------------------------------------------------


def accept_key(key: str) -> str:
    """``Sec-WebSocket-Accept`` for a ``Sec-WebSocket-Key`` (RFC 6455 §4.2.2)."""
    digest = hashlib.sha1(key.encode("ascii") + _GUID).digest()
    return base64.b64encode(digest).decode("ascii")


# Unmasking.  With the ``websocket`` extra installed, websockets' C ``apply_mask`` (a
# SIMD loop) does it: 5.5x the pure-Python path on 16 bytes, 100x on 64 KiB, and a
# 16 MiB payload in 4 ms instead of 25 (measured).  Without it: big-integer XOR
# (int.from_bytes / to_bytes are C loops), in blocks of _MASK_BLOCK bytes past that
# size.  One XOR over a whole 16 MiB payload cost 56 ms (three 16 MiB temporaries,
# none in cache); 64 KiB blocks cost 22 ms: the conversions run in cache and one
# block's mask integer serves every block.
_MASK_BLOCK = 1 << 16
_c_apply_mask: Callable[[Any, bytes], bytes] | None
try:
    from websockets.speedups import apply_mask as _c_apply_mask
except ImportError:
    _c_apply_mask = None
#: In-place unmasking with the C loop goes in chunks of this many bytes (a multiple of
#: 4: the key's phase holds), each copied back while still in cache.
_C_MASK_CHUNK = 1 << 18


def _mask_int(key: bytes, n: int) -> int:
    return int.from_bytes((key * ((n >> 2) + 1))[:n], "little")


def _apply_mask(data: Any, key: bytes) -> bytes:
    """``data`` XOR the repeated 4-byte ``key``: no byte loop."""
    if _c_apply_mask is not None:
        return _c_apply_mask(data, key)
    n = len(data)
    if not n:
        return b""
    if n <= _MASK_BLOCK:  # (_mask_int inlined: a call costs ~5% of a small echo)
        pad = (key * ((n >> 2) + 1))[:n]
        return (int.from_bytes(data, "little") ^ int.from_bytes(pad, "little")).to_bytes(
            n, "little")
    block = _MASK_BLOCK
    mask = _mask_int(key, block)
    from_bytes = int.from_bytes
    view = memoryview(data)
    parts = [(from_bytes(view[i : i + block], "little") ^ mask).to_bytes(block, "little")
             for i in range(0, n - block + 1, block)]
    rest = n % block
    if rest:
        parts.append((from_bytes(view[n - rest :], "little") ^ _mask_int(key, rest))
                     .to_bytes(rest, "little"))
    return b"".join(parts)


def _unmask_in_place(view: memoryview, key: bytes, block_mask: int | None) -> None:
    """XOR writable ``view`` with the repeated ``key`` where it lies (a partly received
    frame in the input ring: each byte is unmasked once, as it arrives);
    ``block_mask`` is ``_mask_int(key, _MASK_BLOCK)`` (kept per frame by the caller;
    None if ``view`` is shorter than a block)."""
    n = len(view)
    c_apply_mask = _c_apply_mask
    if c_apply_mask is not None:
        chunk = _C_MASK_CHUNK
        for i in range(0, n, chunk):
            end = i + chunk if i + chunk < n else n
            view[i:end] = c_apply_mask(view[i:end], key)
        return
    block = _MASK_BLOCK
    from_bytes = int.from_bytes
    for i in range(0, n, block):
        end = i + block
        if end <= n:
            if block_mask is None:
                block_mask = _mask_int(key, block)
            view[i:end] = (from_bytes(view[i:end], "little") ^ block_mask).to_bytes(
                block, "little")
        else:
            view[i:n] = (from_bytes(view[i:n], "little") ^ _mask_int(key, n - i)).to_bytes(
                n - i, "little")


class _Utf8Check:
    """Validates a text message's UTF-8 piece by piece as it arrives, reading each piece
    where it lies (a view into the input ring): only a character cut between two
    pieces (at most 3 bytes) is copied.  ``decode`` raises ``UnicodeDecodeError``."""

    __slots__ = ("_rest",)

    def __init__(self) -> None:
        self._rest = b""  # the start of a character the last piece cut off

    def decode(self, data: Any, final: bool) -> None:
        rest = self._rest
        if rest:
            joined = rest + bytes(data[:3])
            used = _utf_8_decode(joined, "strict", final)[1]
            if used < len(rest):  # still cut off: ``data`` was all in ``joined``
                self._rest = joined
                return
            data = memoryview(data)[used - len(rest) :]
        used = _utf_8_decode(data, "strict", final)[1]
        self._rest = bytes(data[used:]) if used < len(data) else b""


def encode_frame(opcode: int, payload: bytes = b"", *, fin: bool = True, rsv: int = 0,
                 mask_key: bytes | None = None) -> bytes:
    """One frame with the minimal length encoding, masked when ``mask_key`` is given.

    Any frame can be built, valid or not (a client's frames, and tests' bad ones).
    """
    b0 = (0x80 if fin else 0) | (rsv & 7) << 4 | (opcode & 0x0F)
    n = len(payload)
    mask_bit = 0x80 if mask_key is not None else 0
    if n < 126:
        head = _HEAD2.pack(b0, mask_bit | n)
    elif n < 0x10000:
        head = _HEAD4.pack(b0, mask_bit | 126, n)
    else:
        head = _HEAD10.pack(b0, mask_bit | 127, n)
    if mask_key is None:
        return head + payload
    if len(mask_key) != 4:
        raise ValueError("a mask key is 4 bytes")
    return head + mask_key + _apply_mask(payload, mask_key)


def _close_payload(close: Close) -> bytes:
    code = close.code
    if code == CloseCode.NO_STATUS:
        if close.reason:
            raise EncodeError("a Close without a status code cannot carry a reason")
        return b""
    if not valid_close_code(code):
        raise EncodeError(f"close code {code} cannot be sent")
    reason = close.reason.encode()
    if len(reason) > 123:
        raise EncodeError(f"close reason of {len(reason)} bytes exceeds 123")
    return _U16.pack(code) + reason


def _encode_response(response: HttpResponse) -> bytes:
    status = response.status
    if not 100 <= status <= 999:
        raise EncodeError(f"HTTP status {status} is not three digits")
    reason = response.reason
    if not reason:
        try:
            reason = HTTPStatus(status).phrase
        except ValueError:
            reason = ""
    body = response.body.encode() if isinstance(response.body, str) else bytes(response.body)
    lines = [f"HTTP/1.1 {status} {reason}"]
    names = set()
    for name, value in response.headers:
        if not _TOKEN.fullmatch(name) or _BAD_VALUE.search(value):
            raise EncodeError(f"bad response header {name!r}: {value!r}")
        names.add(name.lower())
        lines.append(f"{name}: {value}")
    if status >= 200 and status not in (204, 304) and "content-length" not in names:
        if body and "content-type" not in names:
            lines.append(f"Content-Type: {response.content_type}")
        lines.append(f"Content-Length: {len(body)}")
    try:
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    except UnicodeEncodeError as exc:
        raise EncodeError(f"response head is not latin-1: {exc}") from exc
    return head + body


# -- HTTP request heads --------------------------------------------------------------------

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_BAD_TARGET = re.compile(r"[\x00-\x20\x7f]")
_VERSION = re.compile(r"HTTP/([0-9])\.([0-9])")
_DIGITS = re.compile(r"[0-9]+")


def _parse_head(head: bytes) -> HttpRequest:
    """The request line and headers of ``head`` (without its final blank line)."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3:
        raise HttpError(400, "malformed request line")
    method, target, version = parts
    if not _TOKEN.fullmatch(method) or not target or _BAD_TARGET.search(target):
        raise HttpError(400, "malformed request line")
    match = _VERSION.fullmatch(version)
    if match is None:
        raise HttpError(400, "malformed HTTP version")
    if match.group(1) != "1":
        raise HttpError(505, f"{version} is not supported")
    headers = []
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon or not _TOKEN.fullmatch(name):
            raise HttpError(400, "malformed header line")
        value = value.strip(" \t")
        if _BAD_VALUE.search(value):
            raise HttpError(400, f"control character in header {name}")
        headers.append((name, value))
    return HttpRequest(method, target, version, tuple(headers))


def _body_length(request: HttpRequest) -> int:
    if request.header("transfer-encoding") is not None:
        raise HttpError(501, "Transfer-Encoding is not supported")
    value = request.header("content-length")
    if value is None:
        return 0
    values = {v.strip() for v in value.split(",")}
    if len(values) != 1 or not _DIGITS.fullmatch(length := values.pop()):
        raise HttpError(400, "malformed Content-Length")
    return int(length)


def _handshake(request: HttpRequest) -> Handshake | None:
    """The handshake if ``request`` asks for a WebSocket upgrade, None if it does not."""
    if "websocket" not in request.tokens("upgrade"):
        return None
    if request.method != "GET":
        raise HttpError(400, "a WebSocket upgrade must be a GET")
    if request.version != "HTTP/1.1":
        raise HttpError(400, "a WebSocket upgrade needs HTTP/1.1")
    if request.header("host") is None:
        raise HttpError(400, "no Host header")
    if "upgrade" not in request.tokens("connection"):
        raise HttpError(400, "Connection header does not include Upgrade")
    if request.header("sec-websocket-version") != "13":
        raise HttpError(426, "only WebSocket version 13 is supported",
                        (("Sec-WebSocket-Version", "13"),))
    key = request.header("sec-websocket-key") or ""
    try:
        raw = binascii.a2b_base64(key.encode("ascii"), strict_mode=True)
    except (binascii.Error, UnicodeEncodeError):
        raw = b""
    if len(raw) != 16:
        raise HttpError(400, "Sec-WebSocket-Key is not 16 bytes in base64")
    if request.body:
        raise HttpError(400, "a WebSocket upgrade has no body")
    return Handshake(request, accept_key(key))


# -- permessage-deflate (RFC 7692) --------------------------------------------------------

_EXT_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_EXT_ITEM = re.compile(
    rf'[ \t]*({_EXT_TOKEN})[ \t]*(?:=[ \t]*({_EXT_TOKEN}|"(?:[^"\\]|\\.)*")[ \t]*)?([;,]|$)')
_WINDOW_BITS = re.compile(r"[1-9][0-9]?")  # no leading zeros (RFC 7692 7.1.2)
_TAIL = b"\x00\x00\xff\xff"  # the end of a sync flush: stripped by senders (7.2.1)


def parse_extensions(value: str) -> list[tuple[str, list[tuple[str, str | None]]]]:
    """A ``Sec-WebSocket-Extensions`` value as ``[(name, [(param, value or None)])]``,
    names and parameters lower-cased, quoted values unquoted.  Raises ``ValueError``
    for a value that does not follow RFC 6455's grammar."""
    result: list[tuple[str, list[tuple[str, str | None]]]] = []
    pos, n = 0, len(value)
    params: list[tuple[str, str | None]] | None = None
    while pos < n:
        match = _EXT_ITEM.match(value, pos)
        if match is None or match.end() == pos:
            raise ValueError(f"malformed extension list at {pos}: {value!r}")
        token, argument, sep = match.groups()
        if params is None:  # an extension's name
            if argument is not None:
                raise ValueError(f"extension name with a value: {value!r}")
            params = []
            result.append((token.lower(), params))
        else:
            if argument is not None and argument.startswith('"'):
                argument = re.sub(r"\\(.)", r"\1", argument[1:-1])
                if not re.fullmatch(_EXT_TOKEN, argument):
                    raise ValueError(f"quoted parameter value is not a token: {value!r}")
            params.append((token.lower(), argument))
        if sep != ";":
            params = None
        pos = match.end()
    if params is not None and value.rstrip().endswith(";"):
        raise ValueError(f"extension list ends with ';': {value!r}")
    return result


def _deflate_bound(n: int) -> int:
    """Most bytes deflate makes of ``n`` (zlib's deflateBound for any window and memory
    level: incompressible data in fixed codes or small stored blocks grows by up to
    about 13%): the wire limit of a compressed message of at most ``n`` bytes."""
    return n + (n >> 3) + (n >> 7) + 64


class PerMessageDeflate:
    """permessage-deflate (RFC 7692) as agreed with one client, and the compressor of
    the server's messages to it.

    The decoder that negotiated it inflates the client's messages (its inflater lives
    in the decoder); :class:`WebSocketHandler` compresses what the app sends back with
    :meth:`encode` (on the connection's loop only: a zlib stream is not thread-safe).
    ``server_max_window_bits`` is the window the server compresses with (8: the server
    sends its messages uncompressed, since zlib cannot make a raw 256-byte-window
    stream), ``client_max_window_bits`` the window of the client's messages; the
    ``*_no_context_takeover`` flags mean that the direction's compression starts afresh
    for each message, so no zlib state stays between messages.
    """

    __slots__ = ("_compressor", "_declared_client_bits", "_declared_server_bits",
                 "client_max_window_bits", "client_no_context_takeover", "level",
                 "mem_level", "server_max_window_bits", "server_no_context_takeover")

    def __init__(self, *, server_max_window_bits: int = 15, client_max_window_bits: int = 15,
                 server_no_context_takeover: bool = False,
                 client_no_context_takeover: bool = False, level: int = 6,
                 mem_level: int = 8, declare_server_bits: bool = False,
                 declare_client_bits: bool = False) -> None:
        self.server_max_window_bits = server_max_window_bits
        self.client_max_window_bits = client_max_window_bits
        self.server_no_context_takeover = server_no_context_takeover
        self.client_no_context_takeover = client_no_context_takeover
        self.level = level
        self.mem_level = mem_level
        self._declared_server_bits = declare_server_bits
        self._declared_client_bits = declare_client_bits
        self._compressor: Any = None

    def response_value(self) -> str:
        """The ``Sec-WebSocket-Extensions`` value that accepts the client's offer."""
        parts = ["permessage-deflate"]
        if self.server_no_context_takeover:
            parts.append("server_no_context_takeover")
        if self.client_no_context_takeover:
            parts.append("client_no_context_takeover")
        if self._declared_server_bits:
            parts.append(f"server_max_window_bits={self.server_max_window_bits}")
        if self._declared_client_bits:
            parts.append(f"client_max_window_bits={self.client_max_window_bits}")
        return "; ".join(parts)

    def compress(self, data: bytes) -> bytes:
        """One message's payload compressed (the sync flush's tail stripped, RFC 7692
        7.2.1); the compressor is kept for the next message unless
        ``server_no_context_takeover``."""
        compressor = self._compressor
        if compressor is None:
            compressor = zlib.compressobj(self.level, zlib.DEFLATED,
                                          -self.server_max_window_bits, self.mem_level)
        out: bytes = compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)
        self._compressor = None if self.server_no_context_takeover else compressor
        return out[:-4]  # always _TAIL after a sync flush

    def encode(self, message: Any) -> Any:
        """``message`` as the connection sends it: a ``str`` or bytes-like message
        compressed into an :class:`EncodedFrame`; anything else (control frames,
        HTTP), and every message when the server's window is 8 bits, unchanged."""
        kind = type(message)
        if kind is str:
            opcode, data = _TEXT, message.encode()
        elif kind is bytes or kind is bytearray or kind is memoryview:
            opcode, data = _BINARY, bytes(message)
        else:
            return message
        if self.server_max_window_bits < 9:
            return message
        return EncodedFrame(encode_frame(opcode, self.compress(data), rsv=4))

    def close(self) -> None:
        """Free the compressor (the connection closed)."""
        self._compressor = None

    def __repr__(self) -> str:
        return f"PerMessageDeflate({self.response_value()!r})"


def _negotiate(offers: str, codec: WebSocketCodec) -> PerMessageDeflate | None:
    """The agreement on the first acceptable ``permessage-deflate`` offer in
    ``offers`` (a ``Sec-WebSocket-Extensions`` value), None if there is none: an offer
    with an unknown or repeated parameter, or a bad value, is declined (RFC 7692 5)."""
    try:
        extensions = parse_extensions(offers)
    except ValueError:
        return None  # declined: the handshake goes on without extensions
    for name, params in extensions:
        if name != "permessage-deflate":
            continue
        seen = dict(params)
        if len(seen) != len(params) or not all(_param_ok(p, v) for p, v in params):
            continue  # declined: the next offer may do
        server_bits = codec.server_max_window_bits
        declare_server = "server_max_window_bits" in seen
        if declare_server:
            server_bits = min(server_bits, int(seen["server_max_window_bits"] or 15))
        client_bits = 15
        declare_client = False
        if "client_max_window_bits" in seen:  # the client can limit its window
            offered = seen["client_max_window_bits"]
            client_bits = min(codec.client_max_window_bits,
                              int(offered) if offered is not None else 15)
            declare_client = offered is not None or client_bits < 15
        return PerMessageDeflate(
            server_max_window_bits=server_bits, client_max_window_bits=client_bits,
            server_no_context_takeover=codec.server_no_context_takeover
            or "server_no_context_takeover" in seen,
            client_no_context_takeover=codec.client_no_context_takeover
            or "client_no_context_takeover" in seen,
            level=codec.compression_level, mem_level=codec.compression_mem_level,
            declare_server_bits=declare_server, declare_client_bits=declare_client)
    return None


def _param_ok(param: str, value: str | None) -> bool:
    """A permessage-deflate offer's parameter is known and its value well-formed."""
    if param in ("server_no_context_takeover", "client_no_context_takeover"):
        return value is None
    if param == "client_max_window_bits" and value is None:
        return True  # "I can limit my window: tell me to what"
    if param in ("server_max_window_bits", "client_max_window_bits"):
        return value is not None and bool(_WINDOW_BITS.fullmatch(value)) \
            and 8 <= int(value) <= 15
    return False


# -- the decoder -------------------------------------------------------------------------

_HTTP, _FRAMES, _CLOSED = 0, 1, 2
_PROGRESS_FROM = 32 << 10  # a partial binary frame is unmasked as it comes past this
_MAX_INFLATE = 1 << 62  # zlib's max_length is a Py_ssize_t
_NOTHING: Any = object()  # a frame consumed that yields no event (a non-final fragment)


class _WebSocketDecoder(Decoder):
    """One connection's handshake, then frames; see the module docstring."""

    __slots__ = ("_block_masks", "_codec", "_compressed", "_deflate", "_done", "_error",
                 "_inflated", "_inflater", "_key", "_max_frame", "_max_message", "_max_request",
                 "_max_wire", "_message", "_opcode", "_partial", "_pending", "_phase",
                 "_scanned", "_size", "_utf8")

    def __init__(self, codec: WebSocketCodec) -> None:
        self._codec = codec
        self._phase = _HTTP if codec.handshake else _FRAMES
        self._max_request = codec.max_request_size
        self._max_message = codec.max_message_size
        self._max_wire = _deflate_bound(codec.max_message_size)  # a compressed message
        self._max_frame = codec.max_frame_size
        self._scanned = 0  # request head bytes known to hold no blank line
        self._pending: tuple[HttpRequest, int, int] | None = None  # head read, body due
        self._deflate: PerMessageDeflate | None = None  # agreed in the handshake
        # The message in progress: its opcode (0: none), payload, payload bytes on the
        # wire.  One bytearray, not a list of parts: memory tracks the payload bytes
        # however the peer splits it (a message sent as empty or 1-byte fragments would
        # cost ~40 bytes of list entry and object per fragment, uncounted by
        # max_message_size).
        self._opcode = 0
        self._message = bytearray()
        self._size = 0
        self._utf8: _Utf8Check | None = None
        self._compressed = False  # the message in progress is compressed (RSV1)
        self._inflater: Any = None  # zlib decompressobj; None between messages if the
        self._inflated = 0  # client does not take context over; inflated bytes so far
        # The frame at the ring's start, partly received and partly processed: its
        # (header size, payload length, first byte), mask key, and the payload bytes
        # already unmasked in place (and validated or inflated).
        self._partial: tuple[int, int, int] | None = None
        self._key = b""
        # _mask_int(_key rotated by 0-3 bytes, _MASK_BLOCK), made when first needed
        self._block_masks: list[int | None] | None = None
        self._done = 0
        # An error decode_view met; decode raises it, in stream order.  After any error
        # the phase is _CLOSED: every later byte is ignored.
        self._error: FrameError | None = None

    # -- HTTP ----------------------------------------------------------------------------

    def _decode_http(self, ring: RingBuffer) -> Any | None:
        n = ring._len
        if self._pending is None:
            limit = self._max_request
            stop = n if n < limit else limit
            start = self._scanned - 3
            end = ring.find(b"\r\n\r\n", start if start > 0 else 0, stop)
            if end < 0:
                if stop >= limit:
                    raise HttpError(431, f"request head exceeds {limit} bytes")
                self._scanned = stop
                return None
            self._scanned = 0
            request = _parse_head(ring.contiguous(end).tobytes())
            body = _body_length(request)
            if end + 4 + body > limit:
                raise HttpError(413, f"request exceeds {limit} bytes")
            self._pending = (request, end + 4, body)
        request, head_size, body = self._pending
        if n < head_size + body:
            return None
        self._pending = None
        ring.retrieve(head_size)
        if body:
            request = dataclasses.replace(request, body=ring.read(body))
        handshake = _handshake(request)
        if handshake is None:
            return request
        self._phase = _FRAMES
        codec = self._codec
        offers = request.header("sec-websocket-extensions")
        if codec.compression and offers is not None:
            deflate = _negotiate(offers, codec)
            if deflate is not None:
                self._deflate = deflate
                handshake = dataclasses.replace(handshake, deflate=deflate)
        return handshake

    # -- frames ----------------------------------------------------------------------------

    def _header(self, buf: Any, pos: int, avail: int) -> tuple[int, int, int] | None:
        """``(header size, payload length, first byte)`` of the frame at ``buf[pos]``,
        None while the header is incomplete; raises for a header no frame may have."""
        if avail < 2:
            return None
        b0 = buf[pos]
        b1 = buf[pos + 1]
        if b0 & 0x70:
            self._reserved_bits(b0)
        if not b1 & 0x80:
            raise _protocol_error("client frame not masked")
        opcode = b0 & 0x0F
        length = b1 & 0x7F
        if opcode & 0x08:
            if opcode > _PONG:
                raise _protocol_error(f"unknown opcode {opcode}")
            if not b0 & 0x80:
                raise _protocol_error("fragmented control frame")
            if length > 125:
                raise _protocol_error("control frame over 125 bytes")
            header = 6
        else:
            if opcode == _CONT:
                if not self._opcode:
                    raise _protocol_error("continuation frame without a message")
            elif opcode > _BINARY:
                raise _protocol_error(f"unknown opcode {opcode}")
            elif self._opcode:
                raise _protocol_error("new message inside a fragmented one")
            if length < 126:
                header = 6
            elif length == 126:
                if avail < 4:
                    return None
                length = _U16.unpack_from(buf, pos + 2)[0]
                if length < 126:
                    raise _protocol_error("non-minimal 16-bit length")
                header = 8
            else:
                if avail < 10:
                    return None
                length = _U64.unpack_from(buf, pos + 2)[0]
                if length >> 63:
                    raise _protocol_error("64-bit length with the top bit set")
                if length < 0x10000:
                    raise _protocol_error("non-minimal 64-bit length")
                header = 14
            if self._size + length > self._max_message:
                self._wire_limit(b0, length)
        if header + length > self._max_frame:
            raise WebSocketError(CloseCode.MESSAGE_TOO_BIG,
                                 f"frame exceeds {self._max_frame} bytes")
        if avail < header:
            return None
        return header, length, b0

    def _reserved_bits(self, b0: int) -> None:
        """Raise unless RSV1 alone marks the first frame of a compressed message."""
        if b0 & 0x70 != 0x40 or self._deflate is None:
            raise _protocol_error("reserved bits set, no extension negotiated for them")
        opcode = b0 & 0x0F
        if opcode == _CONT:
            raise _protocol_error("RSV1 on a continuation frame")
        if opcode & 0x08:
            raise _protocol_error("RSV1 on a control frame")

    def _wire_limit(self, b0: int, length: int) -> None:
        """A message past ``max_message_size`` on the wire: too big, unless it is
        compressed (then its inflated size is what counts, checked while inflating;
        on the wire it may take what deflate can make of that size)."""
        opcode = b0 & 0x0F
        compressed = b0 & 0x40 if opcode else self._compressed
        if not compressed or self._size + length > self._max_wire:
            raise WebSocketError(CloseCode.MESSAGE_TOO_BIG,
                                 f"message exceeds {self._max_message} bytes")

    def _begin(self, b0: int) -> None:
        """The first frame of a data message (whole or not) starts it."""
        opcode = b0 & 0x0F
        self._opcode = opcode
        if opcode == _TEXT:
            self._utf8 = _Utf8Check()
        if b0 & 0x40:
            self._compressed = True
            self._inflated = 0

    def _event(self, b0: int, buf: Any, start: int, length: int) -> Any:
        """The event of the whole frame whose payload is ``buf[start:start + length]``
        (its mask key is the 4 bytes before)."""
        payload = _apply_mask(buf[start : start + length], bytes(buf[start - 4 : start]))
        opcode = b0 & 0x0F
        if b0 & 0xC0 == 0x80 and not self._opcode:  # a whole uncompressed message
            if opcode == _TEXT:
                try:
                    return payload.decode()
                except UnicodeDecodeError:
                    raise WebSocketError(CloseCode.INVALID_DATA, "text is not UTF-8") from None
            if opcode == _BINARY:
                return payload
            return self._control(opcode, payload)
        if opcode & 0x08:  # a control frame between fragments
            return self._control(opcode, payload)
        if opcode:  # the first fragment
            self._begin(b0)
        self._size += length
        self._take(payload)
        if not b0 & 0x80:
            return _NOTHING
        return self._finish()

    def _take(self, payload: Any) -> None:
        """A piece of the message's payload (unmasked): inflated, validated, kept."""
        if self._compressed:
            payload = self._inflate(payload)
        utf8 = self._utf8
        if utf8 is not None:
            try:  # incremental: bad UTF-8 fails at its piece, not at the message's end
                utf8.decode(payload, False)
            except UnicodeDecodeError:
                raise WebSocketError(CloseCode.INVALID_DATA, "text is not UTF-8") from None
        self._message += payload

    def _finish(self) -> Any:
        """The message whose last frame has been taken."""
        if self._compressed:
            self._take(_TAIL)
            deflate = self._deflate
            if self._inflater.eof or deflate is None or deflate.client_no_context_takeover:
                self._inflater = None  # the next message starts afresh: no state kept
            self._compressed = False
        utf8 = self._utf8
        if utf8 is not None:
            try:
                utf8.decode(b"", True)  # a character cut off at the end
            except UnicodeDecodeError:
                raise WebSocketError(CloseCode.INVALID_DATA, "text is not UTF-8") from None
        data = self._message
        # (Checked above, piece by piece: this decode cannot fail.)
        message: Any = data.decode() if utf8 is not None else bytes(data)
        self._message = bytearray()
        self._opcode = 0
        self._size = 0
        self._utf8 = None
        return message

    def _inflate(self, data: Any) -> bytes:
        """``data`` inflated, never past what ``max_message_size`` leaves for the
        message: a zip bomb stops at the limit with 1009, not after the allocation."""
        inflater = self._inflater
        if inflater is None:
            assert self._deflate is not None  # (RSV1 is refused without it)
            # zlib refuses to inflate with a 256-byte window what it deflates with 512
            # for 8: a window of 9 bits inflates both.
            inflater = self._inflater = zlib.decompressobj(
                -max(9, self._deflate.client_max_window_bits))
        budget = self._max_message - self._inflated
        try:
            out: bytes = inflater.decompress(data, min(budget + 1, _MAX_INFLATE))
        except zlib.error:
            raise WebSocketError(CloseCode.INVALID_DATA, "invalid compressed data") from None
        if len(out) > budget:
            raise WebSocketError(CloseCode.MESSAGE_TOO_BIG,
                                 f"inflated message exceeds {self._max_message} bytes")
        self._inflated += len(out)
        return out

    def _control(self, opcode: int, payload: bytes) -> Any:
        if opcode == _PING:
            return Ping(payload)
        if opcode == _PONG:
            return Pong(payload)
        self._phase = _CLOSED
        self._release()
        if not payload:
            return Close(CloseCode.NO_STATUS)
        if len(payload) == 1:
            raise _protocol_error("close payload of one byte")
        code = _U16.unpack_from(payload)[0]
        if not valid_close_code(code):
            raise _protocol_error(f"invalid close code {code}")
        try:
            reason = payload[2:].decode()
        except UnicodeDecodeError:
            raise WebSocketError(CloseCode.INVALID_DATA, "close reason is not UTF-8") \
                from None
        return Close(code, reason)

    def _release(self) -> None:
        """Nothing more is decoded: drop the message in progress and the zlib state."""
        self._message = bytearray()
        self._utf8 = None
        self._inflater = None
        self._partial = None
        self._block_masks = None

    # -- a frame that arrives in pieces ------------------------------------------------------

    def _progress(self, ring: RingBuffer, header: int, length: int, b0: int) -> None:
        """Unmask, in place in the ring, the payload bytes of the partial frame at the
        ring's start that arrived since the last call, and validate (text) or inflate
        (compressed) them: invalid UTF-8 fails as soon as it arrives, not when the
        frame is whole, and each byte is unmasked once, while the rest is on its way."""
        if self._partial is None:
            first, second = ring.peek(header)
            head = bytes(first) + bytes(second) if second else bytes(first)
            self._key = head[-4:]
            self._block_masks = None
            self._done = 0
            self._partial = (header, length, b0)
            if b0 & 0x0F:
                self._begin(b0)
        start = header + self._done
        end = min(ring._len, header + length)
        if end <= start:
            return
        first, second = ring.peek(end)
        cut = len(first)
        pieces = []
        if start < cut:
            pieces.append(first[start : min(end, cut)])
        if end > cut:
            pieces.append(second[max(start - cut, 0) : end - cut])
        for piece in pieces:
            phase = self._done & 3
            key = self._key[phase:] + self._key[:phase]
            block_mask = None
            if len(piece) >= _MASK_BLOCK:  # one per phase, made when first needed
                masks = self._block_masks
                if masks is None:
                    masks = self._block_masks = [None, None, None, None]
                block_mask = masks[phase]
                if block_mask is None:
                    block_mask = masks[phase] = _mask_int(key, _MASK_BLOCK)
            _unmask_in_place(piece, key, block_mask)
            self._done += len(piece)
            if self._compressed or self._utf8 is not None:
                self._take_partial(piece)

    def _take_partial(self, piece: memoryview) -> None:
        if self._compressed:
            self._take(piece)  # inflated: the compressed bytes are not needed again
        else:
            try:  # validated; the bytes stay in the ring until the frame is whole
                self._utf8.decode(piece, False)  # type: ignore[union-attr]
            except UnicodeDecodeError:
                raise WebSocketError(CloseCode.INVALID_DATA, "text is not UTF-8") from None

    def _partial_event(self, ring: RingBuffer, header: int, length: int, b0: int) -> Any:
        """The event of the partial frame, now whole in ``ring``."""
        self._progress(ring, header, length, b0)
        self._partial = None
        self._block_masks = None
        self._size += length
        if not self._compressed:
            payload = ring.contiguous(header + length)[header:]
            utf8 = self._utf8
            if b0 & 0x80 and not self._message:  # a whole message: straight from the ring
                if utf8 is not None:
                    try:
                        utf8.decode(b"", True)
                    except UnicodeDecodeError:
                        raise WebSocketError(CloseCode.INVALID_DATA,
                                             "text is not UTF-8") from None
                    message: Any = str(payload, "utf-8")
                else:
                    message = payload.tobytes()
                self._opcode = 0
                self._size = 0
                self._utf8 = None
                return message
            self._message += payload  # (validated piece by piece already)
        if not b0 & 0x80:
            return _NOTHING
        return self._finish()

    # -- the Decoder interface -------------------------------------------------------------

    def announced_length(self, ring: RingBuffer) -> int:
        n = ring._len
        if self._phase != _FRAMES or self._error is not None or n < 2:
            return 0
        partial = self._partial
        if partial is not None:
            total = partial[0] + partial[1]
            return total if total > n else 0
        head = ring.contiguous(min(n, 14))
        try:
            parsed = self._header(head, 0, len(head))
        except FrameError:
            return 0  # decode() reports it
        if parsed is None:
            return 0
        total = parsed[0] + parsed[1]
        return total if total > n else 0

    def decode(self, ring: RingBuffer) -> Any | None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        try:
            return self._decode(ring)
        except FrameError:
            self._phase = _CLOSED
            self._release()
            raise

    def _decode(self, ring: RingBuffer) -> Any | None:
        while ring._len:
            phase = self._phase
            if phase != _FRAMES:
                if phase == _HTTP:
                    return self._decode_http(ring)
                ring.retrieve_all()  # after a Close nothing more is read
                return None
            n = ring._len
            partial = self._partial
            if partial is None:
                first, second = ring.peek(_MAX_HEADER)
                head = bytes(first) + bytes(second) if second else first
                found = self._header(head, 0, n)
                if found is None:
                    return None
                header, length, b0 = found
            else:
                header, length, b0 = partial
            size = header + length
            if n < size:
                # A data frame partly here: work on its payload as it comes when it is
                # text (to fail fast) or compressed, or when much has come.
                if not b0 & 0x08 and n > header and (
                        partial is not None or b0 & 0x40 or self._compressed
                        or n - header >= _PROGRESS_FROM
                        or (b0 & 0x0F == _TEXT) or self._utf8 is not None):
                    self._progress(ring, header, length, b0)
                return None
            if partial is not None:
                event = self._partial_event(ring, header, length, b0)
            else:
                event = self._event(b0, ring.contiguous(size), header, length)
            ring.retrieve(size)
            if event is not _NOTHING:
                return event
        return None

    def decode_view(self, view: memoryview) -> tuple[list[Any], int]:
        if self._phase != _FRAMES or self._error is not None or self._partial is not None:
            return [], 0  # (a partial frame is decode()'s: its start is unmasked)
        frames: list[Any] = []
        pos = 0
        n = len(view)
        header_of = self._header
        event_of = self._event
        try:
            while True:
                found = header_of(view, pos, n - pos)
                if found is None:
                    break
                header, length, b0 = found
                end = pos + header + length
                if end > n:
                    break
                event = event_of(b0, view, pos + header, length)
                pos = end
                if event is not _NOTHING:
                    frames.append(event)
                    if self._phase == _CLOSED:
                        return frames, n  # nothing after a Close is read
        except WebSocketError as exc:
            self._error = exc  # decode() raises it after the frames before it
            self._phase = _CLOSED
            self._release()
        return frames, pos


# -- the codec ---------------------------------------------------------------------------


class WebSocketCodec(BaseCodec):
    """Server-side WebSocket framing after an HTTP/1.1 handshake; see the module docstring.

    ``max_message_size``: largest message payload (fragments summed; for a compressed
    message, inflated), checked from each frame header, and while inflating (close
    1009).  ``max_frame_size``: largest frame on the wire (default: the largest message,
    or what deflate can make of it when compression is on, plus the largest header).
    ``max_request_size``: largest HTTP request head plus body (431 / 413).
    ``handshake=False``: the stream starts with frames (the upgrade happened elsewhere;
    nothing is negotiated, so nothing is compressed).

    permessage-deflate (RFC 7692), accepted on the client's first acceptable offer
    unless ``compression=False``: ``compression_level`` (0-9, zlib's) and
    ``compression_mem_level`` (1-9) for the server's messages; ``server_max_window_bits``
    (9-15), the largest window the server compresses with (a client's lower
    ``server_max_window_bits`` wins); ``client_max_window_bits`` (9-15), the window the
    server asks of clients whose offer lets it choose; ``server_no_context_takeover`` /
    ``client_no_context_takeover`` agree to start each message's compression afresh in
    that direction (also agreed when the client asks).  Memory per connection (zlib's
    figures): compressing takes ``2 ** (server_max_window_bits + 2) + 2 **
    (compression_mem_level + 9)`` bytes + about 7 KiB (39 KiB with the defaults 12 and
    5; 263 KiB with 15 and 8), inflating ``2 ** client_max_window_bits`` + about 7 KiB
    (39 KiB for 15 bits: a client that cannot limit its window gets 15).  Both are taken at the
    first compressed message; with no context takeover in a direction they are freed
    after every message, so an idle connection holds none.
    """

    def __init__(self, *, max_message_size: int = 1 << 20, max_frame_size: int | None = None,
                 max_request_size: int = 16 << 10, handshake: bool = True,
                 compression: bool = True, compression_level: int = 6,
                 compression_mem_level: int = 5, server_max_window_bits: int = 12,
                 client_max_window_bits: int = 15, server_no_context_takeover: bool = False,
                 client_no_context_takeover: bool = False) -> None:
        if max_message_size < 0:
            raise ValueError("max_message_size must be >= 0")
        if max_request_size < 16:
            raise ValueError("max_request_size must be at least 16")
        if not 0 <= compression_level <= 9:
            raise ValueError("compression_level must be 0-9")
        if not 1 <= compression_mem_level <= 9:
            raise ValueError("compression_mem_level must be 1-9")
        for name, bits in (("server_max_window_bits", server_max_window_bits),
                           ("client_max_window_bits", client_max_window_bits)):
            if not 9 <= bits <= 15:
                raise ValueError(f"{name} must be 9-15")
        self.max_message_size = max_message_size
        wire = _deflate_bound(max_message_size) if compression and handshake \
            else max_message_size
        self.max_frame_size = wire + _MAX_HEADER if max_frame_size is None else max_frame_size
        if self.max_frame_size < _MAX_HEADER - 8:
            raise ValueError("max_frame_size must hold at least an empty frame (6 bytes)")
        self.max_request_size = max_request_size
        self.handshake = handshake
        self.compression = compression
        self.compression_level = compression_level
        self.compression_mem_level = compression_mem_level
        self.server_max_window_bits = server_max_window_bits
        self.client_max_window_bits = client_max_window_bits
        self.server_no_context_takeover = server_no_context_takeover
        self.client_no_context_takeover = client_no_context_takeover

    def decoder(self) -> Decoder:
        return _WebSocketDecoder(self)

    def encode_into(self, parts: list[bytes], message: Any) -> int:
        kind = type(message)
        if kind is str:
            payload = message.encode()
            b0 = 0x81  # FIN, text
        elif kind is bytes:
            payload = message
            b0 = 0x82  # FIN, binary
        else:
            data = self.encode(message)
            parts.append(data)
            return len(data)
        n = len(payload)
        if n < 126:
            data = _HEAD2.pack(b0, n) + payload
        elif n < 0x10000:
            data = _HEAD4.pack(b0, 126, n) + payload
        else:  # header and payload as two parts: a large payload is never copied
            parts.append(_HEAD10.pack(b0, 127, n))
            parts.append(payload)
            return n + 10
        parts.append(data)
        return len(data)

    def encode(self, message: Any) -> bytes:
        kind = type(message)
        if kind is str:
            return encode_frame(Opcode.TEXT, message.encode())
        if kind is bytes:
            return encode_frame(Opcode.BINARY, message)
        if kind is EncodedFrame:
            return bytes(message.data)
        if kind is bytearray or kind is memoryview:
            return encode_frame(Opcode.BINARY, bytes(message))
        if kind is Ping or kind is Pong:
            payload = bytes(message.payload)
            if len(payload) > 125:
                raise EncodeError(f"control frame payload of {len(payload)} bytes exceeds 125")
            return encode_frame(Opcode.PING if kind is Ping else Opcode.PONG, payload)
        if kind is Close:
            return encode_frame(Opcode.CLOSE, _close_payload(message))
        if kind is HttpResponse:
            return _encode_response(message)
        raise EncodeError(
            f"a WebSocket connection sends str, bytes, Ping, Pong, Close, EncodedFrame or "
            f"HttpResponse, not {kind.__name__}")

    def __repr__(self) -> str:
        return (f"WebSocketCodec(max_message_size={self.max_message_size}, "
                f"max_frame_size={self.max_frame_size}, "
                f"max_request_size={self.max_request_size}, handshake={self.handshake}, "
                f"compression={self.compression})")


def websocket(*, max_message_size: int = 1 << 20, max_request_size: int = 16 << 10,
              compression: bool = True, compression_level: int = 6,
              compression_mem_level: int = 5, server_max_window_bits: int = 12,
              client_max_window_bits: int = 15, server_no_context_takeover: bool = False,
              client_no_context_takeover: bool = False) -> WebSocketCodec:
    """Server-side WebSocket (RFC 6455) behind an HTTP/1.1 handshake, with
    permessage-deflate (RFC 7692) unless ``compression=False``; serve it with
    :class:`WebSocketHandler`.  The arguments are :class:`WebSocketCodec`'s.

        Server(WebSocketHandler(app), codec=websocket(max_message_size=4 << 20))
    """
    return WebSocketCodec(
        max_message_size=max_message_size, max_request_size=max_request_size,
        compression=compression, compression_level=compression_level,
        compression_mem_level=compression_mem_level,
        server_max_window_bits=server_max_window_bits,
        client_max_window_bits=client_max_window_bits,
        server_no_context_takeover=server_no_context_takeover,
        client_no_context_takeover=client_no_context_takeover)


# -- the handler side --------------------------------------------------------------------

# conn.values[_STATE]: None (HTTP), _OPEN, the PerMessageDeflate agreed (open, and
# compressing: one lookup per message finds both), or _CLOSING.
_STATE = "gevwire.websocket"
_OPEN, _CLOSING = "open", "closing"
_DEFLATE = "gevwire.websocket.deflate"  # conn.values key: the PerMessageDeflate, to free


def _is_open(state: Any) -> bool:
    return state is _OPEN or type(state) is PerMessageDeflate


def send_message(conn: Connection, message: Any) -> None:
    """Send ``message`` (``str``: text, bytes-like: binary) compressed when the
    connection agreed on permessage-deflate; on the connection's loop only (the
    compressor is the connection's).  ``conn.send`` sends it uncompressed, which is
    always allowed and works from any thread."""
    state = conn.values.get(_STATE)
    if type(state) is PerMessageDeflate:
        message = state.encode(message)
    conn.send(message)


class WebSocketApp:
    """A WebSocket application, served by :class:`WebSocketHandler`; override what you
    need.  Every method runs on the connection's loop and must not block."""

    def on_connect(self, conn: Connection) -> None:
        """A TCP connection was accepted (before any HTTP)."""

    def on_request(self, conn: Connection, request: HttpRequest) -> HttpResponse | None:
        """A plain HTTP request (no upgrade); None answers 404."""
        return None

    def on_upgrade(self, conn: Connection, request: HttpRequest) -> HttpResponse | None:
        """A valid upgrade request: None accepts it, a response refuses it (then close)."""
        return None

    def on_open(self, conn: Connection, request: HttpRequest) -> Any:
        """The 101 has been sent; a non-None return value is sent as a message."""
        return None

    def on_message(self, conn: Connection, message: str | bytes) -> Any:
        """A whole message; a non-None return value is sent back (str: text, bytes:
        binary)."""
        return None

    def on_pong(self, conn: Connection, payload: bytes) -> None:
        """A pong arrived (pings are answered for you)."""

    def on_close_frame(self, conn: Connection, code: int, reason: str) -> None:
        """The peer's Close frame (the echo is sent and the connection closed for you)."""

    def on_close(self, conn: Connection) -> None:
        """The TCP connection closed."""

    def on_error(self, conn: Connection, error: BaseException) -> None:
        """A protocol error or an exception, which the handler answers and closes the
        connection for: log it."""
        if isinstance(error, FrameError):
            log.info("closing %r: %s", conn, error)  # the peer's fault: no traceback
        else:
            log.error("closing %r after error", conn, exc_info=error)


class WebSocketHandler(Handler):
    """Answers the protocol events of :class:`WebSocketCodec` and hands the rest to
    ``app`` (see :class:`WebSocketApp`).

    Ping → pong; peer's Close → the same code echoed, then close; a
    :class:`WebSocketError` → a Close with its code, an :class:`HttpError` → its HTTP
    response, then a lingering close: half-close, ignore what still arrives, close when
    the peer does or after ``close_timeout`` seconds.  An exception in ``app`` → Close
    1011 (HTTP 500 before the handshake), then close.  Once the server has started a
    close (:func:`close_websocket`), messages are dropped until the peer's Close.
    """

    def __init__(self, app: WebSocketApp, *, close_timeout: float = 5.0) -> None:
        self.app = app
        self.close_timeout = close_timeout

    def on_connect(self, conn: Connection) -> None:
        self.app.on_connect(conn)

    def on_message(self, conn: Connection, frame: Any) -> Any:
        kind = type(frame)
        if kind is str or kind is bytes:
            state = conn.values.get(_STATE)
            if state is _CLOSING:
                return None  # our Close is out: no data either way
            reply = self.app.on_message(conn, frame)
            if state is _OPEN or reply is None or state is None:
                return reply
            return state.encode(reply)  # (the PerMessageDeflate agreed)
        if kind is Ping:
            return None if conn.values.get(_STATE) is _CLOSING else Pong(frame.payload)
        if kind is Pong:
            self.app.on_pong(conn, frame.payload)
            return None
        if kind is Close:
            return self._peer_closed(conn, frame)
        if kind is Handshake:
            return self._upgrade(conn, frame)
        if kind is HttpRequest:
            response = self.app.on_request(conn, frame)
            if response is None:
                response = HttpResponse(404, "not found\n")
            if frame.method == "HEAD":  # the headers of the GET, no body
                body = response.body
                size = len(body.encode() if isinstance(body, str) else body)
                response = dataclasses.replace(response, body=b"").with_header(
                    "Content-Length", str(size))
            if not frame.keep_alive:
                conn.send(response.with_header("Connection", "close"))
                conn.close()
                return None
            return response
        raise TypeError(f"WebSocketHandler got {kind.__name__}: serve it with WebSocketCodec")

    def _upgrade(self, conn: Connection, handshake: Handshake) -> Any:
        refusal = self.app.on_upgrade(conn, handshake.request)
        if refusal is not None:
            conn.send(refusal.with_header("Connection", "close"))
            conn.close()
            return None
        conn.send(handshake.response())
        deflate = handshake.deflate
        if deflate is None:
            conn.values[_STATE] = _OPEN
            return self.app.on_open(conn, handshake.request)
        conn.values[_STATE] = conn.values[_DEFLATE] = deflate
        reply = self.app.on_open(conn, handshake.request)
        return None if reply is None else deflate.encode(reply)

    def _peer_closed(self, conn: Connection, close: Close) -> None:
        state = conn.values.get(_STATE)
        conn.values[_STATE] = _CLOSING
        try:
            self.app.on_close_frame(conn, close.code, close.reason)
        finally:
            if state is not _CLOSING:  # the peer started: echo its code (none for 1005)
                conn.send(Close(close.code))
            conn.close()

    def on_close(self, conn: Connection) -> None:
        deflate = conn.values.pop(_DEFLATE, None)
        if deflate is not None:
            deflate.close()  # its zlib stream goes now, not with the connection object
        self.app.on_close(conn)

    def on_error(self, conn: Connection, error: BaseException) -> None:
        state = conn.values.get(_STATE)
        conn.values[_STATE] = _CLOSING
        protocol = isinstance(error, (WebSocketError, HttpError))
        try:
            if isinstance(error, WebSocketError):
                if state is not _CLOSING:
                    conn.send(Close(error.code, error.reason[:120]))  # ASCII reasons
            elif isinstance(error, HttpError):
                conn.send(error.response())
            elif _is_open(state):
                code = (CloseCode.POLICY_VIOLATION if isinstance(error, FrameError)
                        else CloseCode.INTERNAL_ERROR)
                conn.send(Close(code))
            elif state is None and not isinstance(error, FrameError):
                conn.send(HttpResponse(500, "internal error\n", (("Connection", "close"),)))
        except ConnectionClosed:
            pass
        try:
            self.app.on_error(conn, error)
        finally:
            if protocol:
                self._linger(conn)
            else:
                conn.close()

    def _linger(self, conn: Connection) -> None:
        """Close without a reset: FIN once the reply is out, then close when the peer
        does (its EOF) or after ``close_timeout``; the decoder ignores input meanwhile."""
        conn.shutdown_write()
        loop = getattr(conn, "loop", None)  # a test harness's connection has none
        if loop is None:
            conn.close()
        else:
            loop.run_after(self.close_timeout, conn.close)


def close_websocket(conn: Connection, code: int = CloseCode.NORMAL, reason: str = "", *,
                    timeout: float = 5.0) -> None:
    """Start the close handshake from the server: send a Close, drop messages until the
    peer's Close, then close (or after ``timeout`` seconds without it).  Loop thread
    only; does nothing unless the WebSocket is open."""
    if not _is_open(conn.values.get(_STATE)):
        return
    conn.values[_STATE] = _CLOSING
    conn.send(Close(code, reason))
    loop = getattr(conn, "loop", None)  # a test harness's connection has none
    if loop is not None:
        loop.run_after(timeout, conn.close)
