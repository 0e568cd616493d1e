"""Client-side helpers for the WebSocket tests: handshake bytes, masked frames, and a raw
socket client that reads the server's frames (for what a real client library refuses to
send: unmasked frames, bad UTF-8, invalid close codes)."""

from __future__ import annotations

import base64
import os
import socket
import struct
import time
import zlib
from typing import Any

from gevwire.codecs.websocket import Opcode, encode_frame

MASK = b"\x37\xfa\x21\x3d"
KEY = "dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455's example; its accept is below
ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def upgrade_request(path: str = "/ws", *, key: str = KEY, drop: tuple[str, ...] = (),
                    extra: tuple[tuple[str, str], ...] = (), method: str = "GET",
                    version: str = "HTTP/1.1") -> bytes:
    """An upgrade request; ``drop`` leaves out headers by name, ``extra`` replaces or
    adds them."""
    headers = {"Host": "127.0.0.1", "Upgrade": "websocket", "Connection": "Upgrade",
               "Sec-WebSocket-Key": key, "Sec-WebSocket-Version": "13"}
    for name in drop:
        del headers[name]
    headers.update(dict(extra))
    lines = [f"{method} {path} {version}", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def frame(opcode: int, payload: bytes = b"", *, fin: bool = True, rsv: int = 0,
          mask: bytes | None = MASK) -> bytes:
    """A client frame: masked unless ``mask`` is None."""
    return encode_frame(opcode, payload, fin=fin, rsv=rsv, mask_key=mask)


def text(message: str) -> bytes:
    return frame(Opcode.TEXT, message.encode())


def close_frame(code: int | None = None, reason: bytes = b"") -> bytes:
    payload = b"" if code is None else struct.pack("!H", code) + reason
    return frame(Opcode.CLOSE, payload)


class RawClient:
    """A blocking socket that speaks just enough WebSocket to test a server's answers."""

    def __init__(self, port: int, *, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buffer = b""

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        try:
            chunk = self.sock.recv(1 << 16)
        except ConnectionResetError:
            chunk = b""
        self.buffer += chunk
        return bool(chunk)

    def read_head(self) -> bytes:
        """An HTTP response head (through its blank line)."""
        while b"\r\n\r\n" not in self.buffer:
            if not self._fill():
                raise ConnectionError(f"EOF inside a response head: {self.buffer!r}")
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        return head

    def handshake(self, path: str = "/ws", *, extensions: str | None = None) -> bytes:
        """Upgrade the connection (offering ``extensions``); fails unless the server
        answers 101; returns the response head."""
        key = base64.b64encode(os.urandom(16)).decode()
        extra = () if extensions is None else (("Sec-WebSocket-Extensions", extensions),)
        self.send(upgrade_request(path, key=key, extra=extra))
        head = self.read_head()
        assert head.startswith(b"HTTP/1.1 101 "), head
        return head

    def read_frame(self) -> tuple[int, bool, bytes]:
        """The next server frame: ``(opcode, fin, payload)``; server frames are unmasked."""
        while True:
            parsed = self._parse()
            if parsed is not None:
                return parsed
            if not self._fill():
                raise ConnectionError("EOF before a whole frame")

    def _parse(self) -> tuple[int, bool, bytes] | None:
        buf = self.buffer
        if len(buf) < 2:
            return None
        assert not buf[1] & 0x80, "a server frame is masked"
        length, pos = buf[1] & 0x7F, 2
        if length == 126:
            if len(buf) < 4:
                return None
            (length,), pos = struct.unpack_from("!H", buf, 2), 4
        elif length == 127:
            if len(buf) < 10:
                return None
            (length,), pos = struct.unpack_from("!Q", buf, 2), 10
        if len(buf) < pos + length:
            return None
        self.buffer = buf[pos + length :]
        return buf[0] & 0x0F, bool(buf[0] & 0x80), buf[pos : pos + length]

    def read_close(self) -> tuple[int | None, bytes]:
        """Skip to the server's Close frame: ``(code or None, reason)``."""
        while True:
            opcode, _fin, payload = self.read_frame()
            if opcode == Opcode.CLOSE:
                code = struct.unpack("!H", payload[:2])[0] if payload else None
                return code, payload[2:]

    def wait_eof(self, timeout: float = 10.0) -> bool:
        """True once the server closed the TCP connection (within ``timeout``)."""
        deadline = time.monotonic() + timeout
        self.sock.settimeout(timeout)
        while time.monotonic() < deadline:
            try:
                if not self._fill():
                    return True
            except TimeoutError:
                return False
        return False


class ClientDeflate:
    """A client's side of permessage-deflate (RFC 7692), written from the RFC for the
    tests: compresses messages into masked frames (RSV1 on the first), inflates the
    server's compressed payloads."""

    def __init__(self, *, window_bits: int = 15, no_context_takeover: bool = False,
                 server_window_bits: int = 15, server_no_context_takeover: bool = False
                 ) -> None:
        self.window_bits = window_bits
        self.no_context_takeover = no_context_takeover
        self.server_window_bits = server_window_bits
        self.server_no_context_takeover = server_no_context_takeover
        self._compressor: Any = None
        self._inflater: Any = None

    def compress(self, data: bytes) -> bytes:
        if self._compressor is None or self.no_context_takeover:
            self._compressor = zlib.compressobj(6, zlib.DEFLATED, -self.window_bits)
        out = self._compressor.compress(data) + self._compressor.flush(zlib.Z_SYNC_FLUSH)
        assert out.endswith(b"\x00\x00\xff\xff")
        return out[:-4]

    def frames(self, message: str | bytes, cuts: tuple[int, ...] = (),
               mask: bytes = MASK) -> bytes:
        """``message`` compressed, then cut at ``cuts`` (offsets into the compressed
        payload) into masked frames."""
        opcode = Opcode.TEXT if isinstance(message, str) else Opcode.BINARY
        payload = self.compress(message.encode() if isinstance(message, str) else message)
        bounds = [0, *sorted(c for c in cuts if c <= len(payload)), len(payload)]
        out = b""
        for i in range(len(bounds) - 1):
            out += encode_frame(opcode if i == 0 else Opcode.CONTINUATION,
                                payload[bounds[i] : bounds[i + 1]],
                                fin=i == len(bounds) - 2, rsv=4 if i == 0 else 0,
                                mask_key=mask)
        return out

    def inflate(self, payload: bytes) -> bytes:
        if self._inflater is None or self.server_no_context_takeover:
            self._inflater = zlib.decompressobj(-self.server_window_bits)
        data: bytes = self._inflater.decompress(payload + b"\x00\x00\xff\xff")
        return data


def server_frames(data: bytes) -> list[tuple[int, int, bytes]]:
    """Unmasked server frames in ``data``: ``[(first byte, payload)]`` as
    ``(opcode, rsv, payload)``."""
    out = []
    pos = 0
    while pos < len(data):
        b0, b1 = data[pos], data[pos + 1]
        assert not b1 & 0x80
        length, pos = b1 & 0x7F, pos + 2
        if length == 126:
            (length,), pos = struct.unpack_from("!H", data, pos), pos + 2
        elif length == 127:
            (length,), pos = struct.unpack_from("!Q", data, pos), pos + 8
        out.append((b0 & 0x0F, b0 >> 4 & 7, data[pos : pos + length]))
        pos += length
    return out
