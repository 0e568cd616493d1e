"""Client-side helpers for the WebSocket tests: handshake bytes, masked frames, and a raw
socket client that reads the server's frames (for what a real client library refuses to
send: unmasked frames, bad UTF-8, invalid close codes)."""

from __future__ import annotations

import base64
import os
import socket
import struct
import time

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

    def handshake(self, path: str = "/ws") -> None:
        """Upgrade the connection; fails unless the server answers 101."""
        key = base64.b64encode(os.urandom(16)).decode()
        self.send(upgrade_request(path, key=key))
        head = self.read_head()
        assert head.startswith(b"HTTP/1.1 101 "), head

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
