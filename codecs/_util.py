"""Helpers shared by the built-in codecs."""

from __future__ import annotations

from typing import Any

from gevwire.errors import EncodeError

__all__ = ["as_bytes"]


def as_bytes(message: Any) -> bytes:
    """``message`` as ``bytes``: bytes-like objects are copied, ``str`` is UTF-8."""
    if type(message) is bytes:
        return message
    if isinstance(message, (bytes, bytearray, memoryview)):
        return bytes(message)
    if isinstance(message, str):
        return message.encode()
    raise EncodeError(f"expected bytes-like or str, not {type(message).__name__}")
