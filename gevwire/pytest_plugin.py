"""pytest plugin (entry point ``pytest11``): fixtures that run gevwire servers in tests.

- ``gevwire_server(handler, codec=None, **server_kwargs)`` starts a
  :class:`~gevwire.Server` on a free loopback port and returns it; every server a test
  started is stopped after it.
- ``gevwire_client(server_or_address, codec=None, timeout=5.0)`` opens a blocking
  :class:`~gevwire.testing.BlockingClient`; closed after the test.

pytest loads this module in every run of every project that has gevwire installed, so
it imports nothing but pytest at module level (gevwire is imported when a fixture is
used; hypothesis never).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from gevwire.server import Server
    from gevwire.testing import BlockingClient

__all__ = ["gevwire_client", "gevwire_server"]


@pytest.fixture
def gevwire_server() -> Iterator[Callable[..., Server]]:
    """Factory fixture: ``gevwire_server(handler, codec=None, **server_kwargs)`` starts a
    server on ``127.0.0.1`` and a free port (``server.address``); stopped after the test."""
    from gevwire.server import Server

    started: list[Server] = []

    def start(handler: Any, codec: Any = None, **server_kwargs: Any) -> Server:
        server_kwargs.setdefault("address", "127.0.0.1:0")
        server = Server(handler, codec=codec, **server_kwargs)
        started.append(server)
        server.start()
        return server

    yield start
    for server in reversed(started):
        server.stop()


@pytest.fixture
def gevwire_client() -> Iterator[Callable[..., BlockingClient]]:
    """Factory fixture: ``gevwire_client(server_or_address, codec=None, timeout=5.0)``
    connects a blocking :class:`~gevwire.testing.BlockingClient`; closed after the test."""
    from gevwire.testing import BlockingClient

    clients: list[BlockingClient] = []

    def connect(address: Any, codec: Any = None, *, timeout: float = 5.0) -> BlockingClient:
        client = BlockingClient(address, codec, timeout=timeout)
        clients.append(client)
        return client

    yield connect
    for client in clients:
        client.close()
