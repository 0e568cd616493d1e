"""Address strings: ``host:port``, ``:port``, ``[v6]:port``, ``unix:/path``."""

from __future__ import annotations

import socket
from typing import Any

__all__ = ["parse_address"]


def parse_address(address: str) -> tuple[int, Any]:
    """Family and socket address of ``"host:port"``, ``":port"`` (every interface),
    ``"[v6]:port"`` or ``"unix:/path/to/socket"``."""
    if address.startswith("unix:"):
        path = address[len("unix:"):]
        if not path:
            raise ValueError(f"bad address {address!r}: expected unix:/path")
        return socket.AF_UNIX, path
    if address.startswith("["):
        host, sep, port = address[1:].partition("]:")
        if not sep:
            raise ValueError(f"bad address {address!r}: expected [host]:port")
        return socket.AF_INET6, (host, _port(port, address))
    host, sep, port = address.rpartition(":")
    if not sep:
        raise ValueError(f"bad address {address!r}: expected host:port")
    if ":" in host:
        raise ValueError(f"bad address {address!r}: write IPv6 hosts as [host]:port")
    return socket.AF_INET, (host or "0.0.0.0", _port(port, address))


def _port(text: str, address: str) -> int:
    if not (text.isascii() and text.isdigit()):
        raise ValueError(f"bad port in address {address!r}")
    port = int(text)
    if not 0 <= port <= 65535:
        raise ValueError(f"port out of range in address {address!r}")
    return port
