"""Outbound connections: ``Client`` and the dialing that ``Server.connect`` shares.

gev has no dialer (gev #136); gnet's ``Dialer`` dials and then enrols the connection in
an event loop.  Here too the TCP (or Unix) connect is blocking, bounded by a timeout,
and the connected fd is handed to a loop, where it is an ordinary
:class:`~gevwire.connection.Connection`: same handler callbacks, codec, limits.
"""

from __future__ import annotations

import queue
import socket
import ssl as ssl_module
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any

from gevwire._sys import set_nodelay
from gevwire.address import parse_address
from gevwire.codec import BaseCodec, RawCodec
from gevwire.connection import Connection, ConnectionOptions, TLSConnection
from gevwire.errors import ConnectionClosed
from gevwire.handler import Handler
from gevwire.loop import EventLoop
from gevwire.tls import TLSSession

__all__ = ["Client", "open_connection"]

_CLOSED = object()


def _dial(address: str, timeout: float) -> tuple[socket.socket, bool]:
    """Connect; return the socket and whether it is TCP."""
    family, target = parse_address(address)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(target)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock, family != socket.AF_UNIX


def open_connection(
    loop: EventLoop,
    address: str,
    handler: Any,
    codec: BaseCodec,
    options: ConnectionOptions,
    *,
    timeout: float = 10.0,
    on_closed: Callable[[Connection], None] | None = None,
    on_start: Callable[[Connection], None] | None = None,
    ssl: ssl_module.SSLContext | None = None,
    server_hostname: str | None = None,
) -> Connection:
    """Connect to ``address`` and run the connection on ``loop``.

    Blocks for the connect only (up to ``timeout``); ``on_connect`` then runs on the
    loop.  The connection can be used (``send``) at once: what is sent before the loop
    has registered it is queued behind the registration.

    ``ssl``: speak TLS with this context (``ssl.create_default_context()`` verifies the
    server against the system's CAs); ``server_hostname`` is sent as SNI and checked
    against the certificate (default: the host of ``address``).  ``on_connect`` runs once
    the handshake is done; what is sent before is encrypted and sent after it.
    """
    tls: TLSSession | None = None
    if ssl is not None:
        if not isinstance(ssl, ssl_module.SSLContext):
            raise TypeError(f"ssl must be an ssl.SSLContext, not {ssl!r}")
        if server_hostname is None:
            family, target = parse_address(address)
            if family != socket.AF_UNIX:
                server_hostname = str(target[0])
        # Before the connect: a context that cannot be used (check_hostname without a
        # host name) fails here, with no socket to clean up.
        tls = TLSSession(ssl, server_side=False, server_hostname=server_hostname)
    sock, tcp = _dial(address, timeout)
    peer = sock.getpeername()
    fd = sock.detach()
    if tcp and options.tcp_nodelay:
        set_nodelay(fd)
    conn = (Connection(loop, fd, peer, handler, codec, options, on_closed) if tls is None
            else TLSConnection(loop, fd, peer, handler, codec, options, on_closed, tls=tls))

    def start() -> None:
        if on_start is not None:
            on_start(conn)
        conn.start()

    loop.run_in_loop(start)
    return conn


class _Inbox(Handler):
    """The default client handler: frames wait in a queue per connection."""

    def on_connect(self, conn: Connection) -> None:
        if not isinstance(conn.context, queue.Queue):
            conn.context = queue.Queue()

    def on_message(self, conn: Connection, frame: Any) -> Any:
        conn.context.put(frame)
        return None

    def on_close(self, conn: Connection) -> None:
        if isinstance(conn.context, queue.Queue):
            conn.context.put(_CLOSED)


class Client:
    """Outbound connections served by an event loop thread of their own.

    With the default handler, frames are queued and read with :meth:`receive`::

        with gevwire.Client(codec=my_codec) as client:
            conn = client.connect("127.0.0.1:1833")
            conn.send({"kind": "ping", "id": 1})
            reply = client.receive(conn, timeout=5)

    Give a ``handler`` for the same callbacks a server's connections get.
    """

    def __init__(
        self,
        handler: Any = None,
        codec: BaseCodec | None = None,
        *,
        name: str = "gevwire-client",
        **options: Any,
    ) -> None:
        self.handler = handler if handler is not None else _Inbox()
        self.codec = codec if codec is not None else RawCodec()
        self.options = ConnectionOptions(**options)
        self.loop = EventLoop(name)
        self._connections: set[Connection] = set()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def _ensure_running(self) -> None:
        with self._lock:
            if self._thread is None:
                ready = threading.Event()
                self.loop.call_soon(ready.set)
                self._thread = threading.Thread(target=self.loop.run, name=self.loop.name,
                                                daemon=True)
                self._thread.start()
                ready.wait(10)

    def connect(
        self,
        address: str,
        *,
        handler: Any = None,
        codec: BaseCodec | None = None,
        timeout: float = 10.0,
        ssl: ssl_module.SSLContext | None = None,
        server_hostname: str | None = None,
    ) -> Connection:
        """Connect to ``address`` (``host:port``, ``[v6]:port``, ``unix:/path``); with
        ``ssl``, over TLS (``server_hostname``: SNI and the name the certificate must
        hold; default the host of ``address``).  A TLS connection's ``on_connect`` (and
        its first frames) come once the handshake is done; a failed handshake closes it
        (:meth:`receive` then raises :class:`ConnectionClosed`)."""
        self._ensure_running()
        inbox_handler = handler if handler is not None else self.handler
        conn = open_connection(
            self.loop,
            address,
            inbox_handler,
            codec if codec is not None else self.codec,
            self.options,
            timeout=timeout,
            on_closed=self._connections.discard,
            on_start=self._connections.add,
            ssl=ssl,
            server_hostname=server_hostname,
        )
        if isinstance(inbox_handler, _Inbox) and not isinstance(conn.context, queue.Queue):
            conn.context = queue.Queue()  # ready before the loop runs on_connect
        return conn

    def receive(self, conn: Connection, timeout: float | None = 10.0) -> Any:
        """The next frame from ``conn`` (default handler only).

        Raises ``TimeoutError`` after ``timeout`` seconds and :class:`ConnectionClosed`
        once the connection has closed and every frame before that was received.
        """
        inbox = conn.context
        if not isinstance(inbox, queue.Queue):
            raise TypeError("receive() needs the Client's default handler")
        try:
            frame = inbox.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"no frame from {conn!r} within {timeout}s") from None
        if frame is _CLOSED:
            inbox.put(_CLOSED)  # later calls see it too
            raise ConnectionClosed(f"{conn!r} is closed")
        return frame

    @property
    def connections(self) -> list[Connection]:
        """The open connections."""
        return list(self._connections)

    def close(self, timeout: float = 5.0) -> None:
        """Close every connection and stop the loop thread."""
        thread = self._thread
        if thread is not None and thread.is_alive():
            done = threading.Event()

            def close_all() -> None:
                for conn in list(self._connections):
                    conn._close_now()
                done.set()

            self.loop.call_soon(close_all)
            done.wait(timeout)
            self.loop.stop()
            thread.join(timeout)
        if not self.loop.running:
            self.loop.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
