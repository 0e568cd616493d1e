"""``Server``: options, listening socket, loop threads and lifecycle (gev's ``Server``)."""

from __future__ import annotations

import abc
import asyncio
import concurrent.futures
import functools
import importlib.util
import logging
import os
import signal
import socket
import ssl as ssl_module
import stat
import threading
import time
import zlib
from collections.abc import Callable
from types import FrameType, TracebackType
from typing import Any

import construct  # type: ignore[import-untyped]

from gevwire._socket_io import ReadinessIO, SocketIO
from gevwire._sys import close as sys_close
from gevwire._sys import set_nodelay
from gevwire._uring.connection import UringIO
from gevwire._uring.listener import UringListener
from gevwire._uring.loop import UringLoop, uring_available
from gevwire.address import parse_address
from gevwire.budget import MemoryBudget
from gevwire.client import open_connection
from gevwire.codec import BaseCodec, Codec, RawCodec
from gevwire.connection import Connection, ConnectionOptions, TLSConnection
from gevwire.handler import handler_waits
from gevwire.listener import Listener
from gevwire.loop import EventLoop
from gevwire.metrics import MetricsServer
from gevwire.router import Router
from gevwire.timers import TimerHandle
from gevwire.tls import TLSSession
from gevwire.waiting import CANCEL_GRACE, DEFAULT_MAX_PENDING, Offloader, default_offloader
from gevwire.workers import Supervisor, WorkerControl, check_workers_supported, reserve_port

__all__ = ["Server", "parse_address"]

log = logging.getLogger("gevwire")

_REQUIRED = ("on_connect", "on_message", "on_close")


_BACKENDS = ("auto", "epoll", "io_uring")


def _resolve_backend(backend: str | None) -> str:
    """The backend to use for ``backend`` (None: ``$GEVWIRE_BACKEND``, else epoll)."""
    name = backend if backend is not None else os.environ.get("GEVWIRE_BACKEND") or "epoll"
    if name not in _BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(_BACKENDS)}, not {name!r}")
    if name == "epoll":
        return name
    ok, reason = uring_available()
    if ok:
        return "io_uring"
    if name == "auto":
        log.debug("io_uring unavailable (%s): using epoll", reason)
        return "epoll"
    raise RuntimeError(f"backend='io_uring' is unavailable here: {reason}")


def _as_codec(codec: Any) -> BaseCodec:
    """``codec`` checked: a codec (anything with ``decoder()`` and ``encode``), or a
    construct schema, wrapped in :class:`~gevwire.Codec`; raises ``TypeError`` at once
    rather than failing on every connection."""
    if codec is None:
        return RawCodec()
    if isinstance(codec, construct.Construct):
        return Codec(codec)
    if isinstance(codec, type) or not callable(getattr(codec, "decoder", None)) or not \
            callable(getattr(codec, "encode", None)):
        raise TypeError(f"codec must be a gevwire codec (BaseCodec, with decoder() and "
                        f"encode()) or a construct schema, not {codec!r}")
    codec.decoder()  # the first connection's decoder, made now: a broken codec fails here
    return codec  # type: ignore[no-any-return]


def _remove_stale_unix_socket(path: str) -> None:
    """Remove a socket file left by an earlier server; never anything but a socket."""
    try:
        if stat.S_ISSOCK(os.stat(path).st_mode):
            os.unlink(path)
    except FileNotFoundError:
        pass


_BALANCERS = frozenset({"round_robin", "least_connections", "source_addr_hash"})


class Server:
    """A TCP server: a listener and ``loops`` event-loop threads running ``handler``.

    ``handler`` has ``on_connect(conn)``, ``on_message(conn, frame)`` and
    ``on_close(conn)`` (and optionally ``on_error(conn, exc)``), e.g. a
    :class:`~gevwire.Handler` subclass.  ``codec`` cuts frames and encodes replies
    (default: :class:`~gevwire.codec.RawCodec`, bytes as they come); a construct schema
    is wrapped in :class:`~gevwire.Codec`, and anything else that is not a codec is a
    ``TypeError`` here.  A connection that cannot be set up (a codec's ``decoder()``
    failing) is closed at once, its error counted in ``stats()`` and logged once per
    cause.

    With ``loops=1`` accepting and all I/O share one thread; with more, a separate
    accept loop hands each connection to an I/O loop chosen by ``load_balance``:
    ``"round_robin"`` (default), ``"least_connections"``, ``"source_addr_hash"`` (one
    client address always lands on the same loop), or a callable
    ``(loops, peer_addr) -> index``.

    Limits: ``idle_timeout`` closes connections with nothing read or written for that
    many seconds; ``frame_timeout`` fails a frame not completed that many seconds after
    its first bytes (slowloris; see :class:`~gevwire.connection.ConnectionOptions`);
    ``max_connections`` accepts and at once closes connections over the
    limit (counted in ``stats()["connections_refused"]``); the write-buffer limits are
    described in :class:`~gevwire.connection.ConnectionOptions`.  Those are per
    connection; ``max_buffered_bytes`` bounds the storage every connection's input and
    output buffers hold together (off by default; suggested for servers facing the
    internet): above it reading pauses on the connections holding the most, and above
    ``buffered_hard_limit`` (default 1.5 times it) they are closed, largest first, with
    :class:`~gevwire.MemoryBudgetExceeded` (see :mod:`gevwire.budget`).

    ``proxy_protocol=True``: every connection starts with a PROXY protocol v1 or v2
    header (from HAProxy, a cloud load balancer ...); ``conn.peer_addr`` is then the
    original client's address, ``conn.proxy_info`` the whole header, and a malformed
    header closes the connection.  ``on_connect`` runs once the header is read; a header
    not complete ``proxy_timeout`` seconds after the connect (default 10) is a
    :class:`~gevwire.ProxyHeaderTimeout` for ``on_error``.

    ``ssl=ssl.SSLContext`` serves TLS (a context made with
    ``ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)`` and ``load_cert_chain``;
    its ALPN protocols, ``sni_callback`` and client-certificate verification apply):
    handlers and codecs see plaintext, ``on_connect`` runs once the handshake is done
    (after the PROXY header, if any), and ``conn.alpn_protocol``, ``server_hostname``,
    ``peer_certificate``, ``tls_version``, ``cipher`` say what was negotiated.  A
    handshake not done within ``ssl_handshake_timeout`` seconds (default 10) is a
    :class:`~gevwire.TLSHandshakeTimeout`, a failed one a
    :class:`~gevwire.TLSHandshakeError` (both counted in ``stats()["errors"]`` by class
    name, and the connection closed); ``close()`` sends ``close_notify`` after the
    replies and waits up to ``ssl_shutdown_timeout`` (default 10) for the peer's.  See
    :class:`~gevwire.connection.TLSConnection` for what the buffer limits count.

    ``workers=N`` (Linux, macOS, BSD) forks N processes, each a whole server with its own
    ``SO_REUSEPORT`` listener on the same port and ``loops`` loops; the kernel spreads
    connections over them, and this process only supervises (see
    :mod:`gevwire.workers`): it restarts crashed workers with back-off, kills and
    restarts a worker whose loops stop answering for ``worker_timeout`` seconds (default
    30; a loop stuck in a handler; None: never), and ``stop()`` stops them all
    gracefully.  Each worker has its own copy of ``handler`` (forked, not
    shared): handler state is per process.  In this process ``address`` is the reserved
    port, ``stats()`` the supervisor's view, and there are no loops (no ``run_after``):
    ``on_start(server)`` runs in every worker once it serves (without workers: in this
    process, at the end of :meth:`start`), the place for per-process timers
    (``server.run_every``) and state.

    Handlers that wait (``async def`` ones, and those marked :func:`gevwire.blocking`
    or routed with ``blocking=True``; see :mod:`gevwire.waiting`) run off the loop
    threads: coroutines on ``asyncio_loop`` (default: an asyncio loop of the process,
    in its own thread), blocking calls on ``executor`` (default: a bounded thread pool
    of the process).  Replies leave in frame order (``ordered_replies=False``: as they
    are ready); at most ``max_pending_per_connection`` frames (default 100) are in
    flight per connection, reading pausing at the cap (they run concurrently: 1 runs
    a connection's frames one at a time); ``handler_timeout`` seconds
    bound each frame's work (:class:`~gevwire.HandlerTimeout`; default: no limit).
    Synchronous handlers keep the direct path, with nothing of this on it.

    ``metrics_address="host:port"`` serves ``stats()`` as Prometheus text at
    ``/metrics`` (needs ``prometheus_client``: ``pip install 'gevwire[metrics]'``); with
    workers, worker ``i`` serves its own on ``port + i`` (scrape each).

    ``backend``: ``"epoll"`` (readiness: one ``read`` and one ``write`` foreign call per
    message), ``"io_uring"`` (completions: multishot accept and recv, one
    ``io_uring_enter`` per loop turn for every connection; raises when the kernel refuses
    it) or ``"auto"`` (io_uring where available, else epoll).  Default: the
    ``GEVWIRE_BACKEND`` environment variable, else ``"epoll"``.  ``server.backend`` is the
    one chosen.
    """

    def __init__(
        self,
        handler: Any,
        *,
        address: str = "127.0.0.1:1833",
        loops: int = 1,
        reuse_port: bool = False,
        codec: BaseCodec | None = None,
        backlog: int = 1024,
        write_high_water: int = 1 << 20,
        write_low_water: int = 256 << 10,
        max_write_buffer: int = 64 << 20,
        close_timeout: float = 10.0,
        linger_timeout: float = 2.0,
        tcp_nodelay: bool = True,
        idle_timeout: float | None = None,
        frame_timeout: float | None = None,
        max_connections: int | None = None,
        max_buffered_bytes: int | None = None,
        buffered_hard_limit: int | None = None,
        load_balance: str | Callable[[list[EventLoop], Any], int] = "round_robin",
        proxy_protocol: bool = False,
        proxy_timeout: float = 10.0,
        ssl: ssl_module.SSLContext | None = None,
        ssl_handshake_timeout: float = 10.0,
        ssl_shutdown_timeout: float = 10.0,
        workers: int = 1,
        worker_timeout: float | None = 30.0,
        metrics_address: str | None = None,
        backend: str | None = None,
        on_start: Callable[[Server], None] | None = None,
        asyncio_loop: asyncio.AbstractEventLoop | None = None,
        executor: concurrent.futures.Executor | None = None,
        max_pending_per_connection: int = DEFAULT_MAX_PENDING,
        handler_timeout: float | None = None,
        ordered_replies: bool = True,
    ) -> None:
        missing = [name for name in _REQUIRED if not callable(getattr(handler, name, None))]
        if missing:
            raise TypeError(f"handler lacks {', '.join(missing)} (subclass gevwire.Handler)")
        if loops < 1:
            raise ValueError("loops must be at least 1")
        if workers < 1:
            raise ValueError("workers must be at least 1")
        if worker_timeout is not None and not worker_timeout > 0:
            raise ValueError(f"worker_timeout must be positive or None, not {worker_timeout}")
        if max_connections is not None and max_connections < 0:
            raise ValueError("max_connections must be >= 0 (or None for no limit)")
        if not callable(load_balance) and load_balance not in _BALANCERS:
            raise ValueError(f"load_balance must be a callable or one of {sorted(_BALANCERS)}")
        self.handler = handler
        self.codec: BaseCodec = _as_codec(codec)
        if isinstance(handler, Router) and isinstance(self.codec, Codec):
            handler.check_schema(self.codec.schema)  # its kinds against the frames' Enum
        self.options = ConnectionOptions(
            write_high_water=write_high_water,
            write_low_water=write_low_water,
            max_write_buffer=max_write_buffer,
            close_timeout=close_timeout,
            linger_timeout=linger_timeout,
            tcp_nodelay=tcp_nodelay,
            idle_timeout=idle_timeout,
            frame_timeout=frame_timeout,
            proxy_protocol=proxy_protocol,
            proxy_timeout=proxy_timeout,
            max_pending_per_connection=max_pending_per_connection,
            handler_timeout=handler_timeout,
            ordered_replies=ordered_replies,
            offloader=(Offloader(asyncio_loop, executor)
                       if asyncio_loop is not None or executor is not None else None),
            ssl_handshake_timeout=ssl_handshake_timeout,
            ssl_shutdown_timeout=ssl_shutdown_timeout,
        )
        if ssl is not None and not isinstance(ssl, ssl_module.SSLContext):
            raise TypeError(f"ssl must be an ssl.SSLContext, not {ssl!r}")
        #: The TLS context every accepted connection is served with (None: plain TCP).
        self.ssl = ssl
        self.max_connections = max_connections
        # The budget's limits, checked here; each process's loops get a budget of their own
        # made from them (see _InProcess).
        if max_buffered_bytes is None:
            if buffered_hard_limit is not None:
                raise ValueError("buffered_hard_limit needs max_buffered_bytes")
            self._budget_limits: MemoryBudget | None = None
        else:
            self._budget_limits = MemoryBudget(max_buffered_bytes, buffered_hard_limit)
        self._balance = load_balance
        self._family, self._bind_address = parse_address(address)
        if workers > 1:
            check_workers_supported()
            if asyncio_loop is not None or executor is not None:
                raise ValueError("asyncio_loop and executor cannot cross a fork: with "
                                 "workers > 1 each worker makes its own")
            if self._family == socket.AF_UNIX:
                raise ValueError("workers > 1 needs a TCP address (SO_REUSEPORT)")
        self._on_start = on_start
        #: The I/O backend in use: ``"epoll"`` or ``"io_uring"``.
        self.backend = _resolve_backend(backend)
        self._metrics_bind: tuple[str, int] | None = None
        if metrics_address is not None:
            metrics_family, metrics_bind = parse_address(metrics_address)
            if metrics_family == socket.AF_UNIX:
                raise ValueError("metrics_address must be host:port")
            if importlib.util.find_spec("prometheus_client") is None:
                raise RuntimeError("metrics_address needs prometheus_client: "
                                   "pip install 'gevwire[metrics]'")
            self._metrics_bind = (metrics_bind[0], metrics_bind[1])
        self._loop_count = loops
        self._backlog = backlog
        # How this server runs, chosen once: the public methods below delegate to it.
        # With workers, the parent supervises and each forked worker's copy of this
        # object is served by an _InProcess of its own (see _WorkerProcesses).
        self._runner: _Runner
        if workers > 1:
            self._runner = _WorkerProcesses(self, workers, worker_timeout)
        else:
            # Loops exist from the start, so timers can be scheduled before start().
            self._runner = _InProcess(self, self._bind_address, reuse_port=reuse_port,
                                      metrics_bind=self._metrics_bind)

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> Server:
        """Bind, start the loop threads, and return once the server is accepting.

        With ``workers``: fork them, return once every one is accepting, and supervise
        them from a background thread.
        """
        self._runner.start()
        return self

    def run(self) -> None:
        """Start (if needed) and block until :meth:`stop` is called, or a stop signal.

        In the main thread, ``SIGTERM`` (what Docker and systemd send) and ``SIGINT``
        (Ctrl-C) left at their defaults stop the server gracefully while this runs, as
        :meth:`stop` does: replies in flight are flushed and ``on_close`` runs for every
        connection; the previous handlers are put back when it returns.  With
        ``workers``, a server not yet started supervises them in the calling thread
        (then this process has no other thread when it forks a restart).
        """
        self._runner.run()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting, flush and close every connection, and join the loop threads.

        Unsent output gets up to ``timeout`` seconds; what is left then is dropped.
        Safe from any thread (from a loop thread it returns at once and stops in the
        background) and more than once.  With ``workers``, every worker stops so, and a
        worker still running ``timeout`` + 1 s later ends (its own timer; the supervisor
        kills it a second later still).
        """
        self._runner.stop(timeout)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the server has stopped; False on timeout."""
        return self._runner.wait(timeout)

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- timers ------------------------------------------------------------------------

    def run_after(self, delay: float, callback: Callable[..., Any], *args: Any) -> TimerHandle:
        """Call ``callback(*args)`` once after ``delay`` seconds, on the first I/O loop.

        Callable from any thread, before or after :meth:`start`; ``cancel()`` the handle
        to stop it.  Per-connection timers: ``conn.loop.run_after``.
        """
        return self._runner.first_loop().run_after(delay, callback, *args)

    def run_every(
        self, interval: float, callback: Callable[..., Any], *args: Any
    ) -> TimerHandle:
        """Call ``callback(*args)`` every ``interval`` seconds on the first I/O loop."""
        return self._runner.first_loop().run_every(interval, callback, *args)

    # -- outbound connections ----------------------------------------------------------

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
        """Open an outbound connection served by one of this server's loops.

        ``address`` as for the server (``host:port``, ``[v6]:port``, ``unix:/path``).
        The connection gets ``handler`` and ``codec`` (default: the server's), the
        server's connection limits, and the loop with the fewest connections; it counts
        in ``connections`` and is closed by :meth:`stop` like an accepted one.  Blocks
        for the TCP connect only (up to ``timeout``); raises ``OSError`` if it fails.
        ``ssl`` / ``server_hostname``: dial over TLS, as :meth:`gevwire.Client.connect`
        (the server's own ``ssl`` is for accepted connections and is not used here).
        """
        return self._runner.dial(
            address, handler if handler is not None else self.handler,
            codec if codec is not None else self.codec, timeout=timeout, ssl=ssl,
            server_hostname=server_hostname,
        )

    # -- information -------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Counters and gauges of the whole server (a snapshot; safe from any thread).

        ``connections_open``, ``connections_total`` (accepted), ``connections_refused``
        (over ``max_connections``), ``accept_backoffs`` (times accepting paused for lack
        of fds), ``frames_in`` / ``frames_out``, ``bytes_in`` /
        ``bytes_out``, ``errors`` (count by kind: exception class name, or
        ``idle_timeout``), ``tls_failures`` (the TLS ones again, by OpenSSL's reason:
        ``HTTP_REQUEST``, ``HANDSHAKE_TIMEOUT``, ``CERTIFICATE_VERIFY_FAILED`` ...),
        ``loop_turns``, ``loop_busy_seconds`` (time spent handling rather than
        waiting), ``frames_waiting`` (frames whose ``async`` or blocking handler runs
        now), ``frames_offloaded`` (so handed off in all) and ``offload_wait_seconds``
        (the time those that ended took), and the same per loop under ``loops``.  With
        ``max_buffered_bytes``, also ``buffered_bytes`` (the last sample),
        ``budget_pauses`` and ``budget_closes`` (connections paused and closed by it).

        With ``workers``, in the parent: ``{"workers": N, "pids": [...], "restarts":
        [...]}`` (live worker pids; restarts per worker slot).  Traffic is counted in
        each worker, by its own ``stats()``.
        """
        return self._runner.stats()

    @property
    def metrics_address(self) -> tuple[str, int] | None:
        """Where ``/metrics`` is served (the bound port), or None without metrics."""
        return self._runner.metrics_address

    @property
    def address(self) -> Any:
        """The bound address: ``(host, port)`` for IPv4, ``(host, port, flow, scope)``
        for IPv6 (so port 0 shows the port the kernel chose), the path for Unix.  With
        ``workers``: the reserved address every worker listens on."""
        return self._runner.address

    @property
    def port(self) -> int:
        """The bound TCP port."""
        return int(self.address[1])

    @property
    def loops(self) -> list[EventLoop]:
        """The I/O loops."""
        return self._runner.loops()

    @property
    def connection_count(self) -> int:
        """Connections open now."""
        return self._runner.connection_count()

    def connections(self) -> list[Connection]:
        """A snapshot of the open connections (safe from any thread)."""
        return self._runner.connections()


# -- how a server runs -------------------------------------------------------------------


class _Runner(abc.ABC):
    """How a :class:`Server` runs: what its lifecycle and information calls delegate to.

    ``Server.__init__`` picks one: :class:`_InProcess` (loops and threads in this
    process) or :class:`_WorkerProcesses` (a supervisor of forked workers, each served
    by an ``_InProcess`` of its own).  Either starts once: new → running (→ stopping)
    → stopped.
    """

    def __init__(self) -> None:
        self._state = "new"
        self._lock = threading.RLock()  # (re-entered by _begin and _end in _supervise)
        self._stopped = threading.Event()

    def _begin(self) -> None:
        """new → running; ``RuntimeError`` if it was started (or stopped) before."""
        with self._lock:
            if self._state != "new":
                raise RuntimeError(f"server is {self._state_now()}; a server starts once")
            self._state = "running"

    def _state_now(self) -> str:
        return self._state

    def _end(self) -> None:
        with self._lock:
            self._state = "stopped"
        self._stopped.set()

    @abc.abstractmethod
    def start(self) -> None:
        """Serve, and return once serving (see :meth:`Server.start`)."""

    @abc.abstractmethod
    def run(self) -> None:
        """Start if new, and block until stopped (see :meth:`Server.run`)."""

    @abc.abstractmethod
    def stop(self, timeout: float) -> None:
        """Stop serving (see :meth:`Server.stop`)."""

    def wait(self, timeout: float | None) -> bool:
        """Block until stopped; False on timeout."""
        return self._stopped.wait(timeout)

    @abc.abstractmethod
    def stats(self) -> dict[str, Any]:
        """See :meth:`Server.stats`."""

    @abc.abstractmethod
    def first_loop(self) -> EventLoop:
        """The loop that runs the server's timers."""

    def _bound_address(self) -> Any:
        """The address served, or None before it is bound."""
        return None

    @property
    def address(self) -> Any:
        address = self._bound_address()
        if address is None:
            raise RuntimeError("server is not listening")
        return address

    @property
    def metrics_address(self) -> tuple[str, int] | None:
        return None

    def loops(self) -> list[EventLoop]:
        return []

    def connection_count(self) -> int:
        return 0

    def connections(self) -> list[Connection]:
        return []

    def dial(self, address: str, handler: Any, codec: BaseCodec, *, timeout: float,
             ssl: ssl_module.SSLContext | None, server_hostname: str | None) -> Connection:
        """An outbound connection on a loop of this process (see :meth:`Server.connect`)."""
        raise RuntimeError("connect() needs a started server (in a worker, with workers)")


class _InProcess(_Runner):
    """A server of this process: a listener on ``address`` and the server's loops, each
    in a thread (without workers; and in each worker, for the reserved port)."""

    def __init__(self, server: Server, address: Any, *, reuse_port: bool,
                 metrics_bind: tuple[str, int] | None) -> None:
        super().__init__()
        self._server = server
        self._bind_address = address
        self._reuse_port = reuse_port
        self._metrics_bind = metrics_bind
        self._metrics: MetricsServer | None = None
        self._sock: socket.socket | None = None
        self._listener: Listener | UringListener | None = None
        count = server._loop_count
        loop_class = UringLoop if server.backend == "io_uring" else EventLoop
        self._loops: list[EventLoop] = [loop_class(f"gevwire-loop-{i}") for i in range(count)]
        self._accept_loop = self._loops[0] if count == 1 else loop_class("gevwire-accept")
        self._connections: dict[EventLoop, set[Connection]] = {lp: set() for lp in self._loops}
        self._assigned = [0] * count
        limits = server._budget_limits
        self._budget: MemoryBudget | None = None
        if limits is not None:  # this process's, for these loops
            budget = self._budget = MemoryBudget(limits.soft, limits.hard,
                                                 interval=limits.interval)
            for loop in self._loops:
                budget.attach(loop, functools.partial(self._connections_of, loop))
        self._threads: list[threading.Thread] = []
        self._next_loop = 0
        # Written by the accept thread only; closes are counted per loop (loop.connections_
        # closed), so no counter has two writers.
        self._accepted = 0
        self._refused = 0
        self._nodelay = False
        self._pings: dict[str, list[bool]] = {}  # a worker's heartbeat: see loops_answer
        self._accept_errors: set[str] = set()  # causes already logged (see _add_connection)

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        self._begin()
        server = self._server
        try:
            if handler_waits(server.handler):  # started now, not by the first frame
                (server.options.offloader or default_offloader()).start()
            self._sock = self._bind()
            self._nodelay = server.options.tcp_nodelay and server._family != socket.AF_UNIX
            all_loops = self._all_loops()
            if isinstance(self._accept_loop, UringLoop):
                self._listener = UringListener(self._accept_loop, self._sock, self._on_accept)
            else:
                self._listener = Listener(self._accept_loop, self._sock, self._on_accept)
            ready = [threading.Event() for _ in all_loops]
            self._accept_loop.call_soon(self._listener.start)
            for loop, event in zip(all_loops, ready, strict=True):
                loop.call_soon(event.set)
                thread = threading.Thread(target=self._run_loop, args=(loop,), name=loop.name,
                                          daemon=True)
                self._threads.append(thread)
                thread.start()
            for event in ready:
                if not event.wait(10):
                    raise RuntimeError("event loop did not start")
            if self._metrics_bind is not None:
                self._metrics = MetricsServer(self.stats, *self._metrics_bind)
                log.info("gevwire metrics on http://%s:%d/metrics", *self._metrics.address)
        except BaseException:
            self.stop()
            raise
        log.info("gevwire listening on %s with %d loop(s)", self.address, len(self._loops))
        if server._on_start is not None:
            try:
                server._on_start(server)
            except BaseException:
                self.stop()
                raise

    def run(self) -> None:
        if self._state == "new":
            self.start()
        signalled: list[int] = []
        previous: dict[signal.Signals, Any] = {}
        if threading.current_thread() is threading.main_thread():
            def on_signal(signum: int, frame: FrameType | None) -> None:
                signalled.append(signum)  # (the stop itself runs below, not in a handler)

            for signum in (signal.SIGTERM, signal.SIGINT):
                if signal.getsignal(signum) in (signal.SIG_DFL, signal.default_int_handler):
                    previous[signum] = signal.signal(signum, on_signal)
        try:
            while not self._stopped.wait(0.1):
                if signalled:
                    log.info("%s: stopping", signal.Signals(signalled[0]).name)
                    self.stop()
        except KeyboardInterrupt:
            self.stop()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def stop(self, timeout: float = 5.0) -> None:
        with self._lock:
            if self._state in ("stopping", "stopped"):
                return
            self._state = "stopping"
        if any(loop.in_loop_thread() for loop in self._all_loops()):
            threading.Thread(target=self._shutdown, args=(timeout,), daemon=True).start()
        else:
            self._shutdown(timeout)

    def loops_answer(self) -> bool:
        """True if every loop ran the task posted to it at the previous call (a loop
        stuck in a handler has not): a worker's heartbeat.  Posts the next tasks."""
        answered = True
        pings = self._pings
        for loop in self._all_loops():
            box = pings.get(loop.name)
            if box is not None and not box[0]:
                answered = False  # still pending: not posted again
                continue
            box = pings[loop.name] = [False]
            loop.call_soon(box.__setitem__, 0, True)
        return answered

    # -- information -------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        per_loop = []
        for loop in self._loops:
            per_loop.append({
                "name": loop.name,
                "connections_open": len(self._connections[loop]),
                "frames_in": loop.frames_in,
                "frames_out": loop.frames_out,
                "bytes_in": loop.bytes_in,
                "bytes_out": loop.bytes_out,
                "turns": loop.turn_count,
                "busy_seconds": loop.busy_time,
                "frames_waiting": loop.frames_waiting,
                "frames_offloaded": loop.frames_offloaded,
                "offload_wait_seconds": loop.offload_wait,
            })
        errors: dict[str, int] = {}
        tls_failures: dict[str, int] = {}
        for loop in self._loops:
            for kind, count in list(loop.errors.items()):
                errors[kind] = errors.get(kind, 0) + count
            for reason, count in list(loop.tls_failures.items()):
                tls_failures[reason] = tls_failures.get(reason, 0) + count
        return {
            "connections_open": self.connection_count(),
            "connections_total": self._accepted,
            "connections_refused": self._refused,
            "accept_backoffs": self._listener.backoffs if self._listener is not None else 0,
            "frames_in": sum(d["frames_in"] for d in per_loop),
            "frames_out": sum(d["frames_out"] for d in per_loop),
            "bytes_in": sum(d["bytes_in"] for d in per_loop),
            "bytes_out": sum(d["bytes_out"] for d in per_loop),
            "errors": errors,
            "tls_failures": tls_failures,
            "loop_turns": sum(d["turns"] for d in per_loop),
            "loop_busy_seconds": sum(d["busy_seconds"] for d in per_loop),
            "frames_waiting": sum(d["frames_waiting"] for d in per_loop),
            "frames_offloaded": sum(d["frames_offloaded"] for d in per_loop),
            "offload_wait_seconds": sum(d["offload_wait_seconds"] for d in per_loop),
            "loops": per_loop,
            **self._budget_stats(),
        }

    def _budget_stats(self) -> dict[str, int]:
        budget = self._budget
        if budget is None:
            return {}
        return {"buffered_bytes": budget.total, "budget_pauses": budget.pauses,
                "budget_closes": budget.closes}

    @property
    def metrics_address(self) -> tuple[str, int] | None:
        return self._metrics.address if self._metrics is not None else None

    def _bound_address(self) -> Any:
        return self._sock.getsockname() if self._sock is not None else None

    def first_loop(self) -> EventLoop:
        return self._loops[0]

    def loops(self) -> list[EventLoop]:
        return list(self._loops)

    def connection_count(self) -> int:
        return sum(len(conns) for conns in self._connections.values())

    def connections(self) -> list[Connection]:
        out: list[Connection] = []
        for conns in list(self._connections.values()):
            out.extend(list(conns))
        return out

    def dial(self, address: str, handler: Any, codec: BaseCodec, *, timeout: float,
             ssl: ssl_module.SSLContext | None, server_hostname: str | None) -> Connection:
        if self._state != "running":
            return super().dial(address, handler, codec, timeout=timeout, ssl=ssl,
                                server_hostname=server_hostname)
        connections = self._connections
        loop = min(self._loops, key=lambda candidate: len(connections[candidate]))
        return open_connection(
            loop, address, handler, codec, self._server.options, timeout=timeout,
            on_closed=self._connection_closed, on_start=connections[loop].add,
            ssl=ssl, server_hostname=server_hostname,
        )

    # -- internals ---------------------------------------------------------------------

    def _connections_of(self, loop: EventLoop) -> list[Connection]:
        return list(self._connections[loop])

    def _bind(self) -> socket.socket:
        family = self._server._family
        if family == socket.AF_UNIX:
            _remove_stale_unix_socket(self._bind_address)
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            if family != socket.AF_UNIX:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if self._reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.bind(self._bind_address)
            sock.listen(self._server._backlog)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock

    def _all_loops(self) -> list[EventLoop]:
        if self._accept_loop in self._loops:
            return list(self._loops)
        return [self._accept_loop, *self._loops]

    def _run_loop(self, loop: EventLoop) -> None:
        try:
            loop.run()
        except BaseException:
            log.exception("%s crashed", loop.name)

    def _on_accept(self, fd: int, peer: Any) -> None:
        """A new fd from the listener (accept loop thread).

        Over ``max_connections`` the connection is accepted and closed at once rather
        than left in the kernel's backlog: the peer learns immediately, and the backlog
        keeps draining so that clients arriving once capacity frees up are not stuck
        behind a queue of refused ones.
        """
        limit = self._server.max_connections
        if limit is not None:
            closed = sum(loop.connections_closed for loop in self._loops)
            if self._accepted - closed >= limit:
                self._refused += 1
                sys_close(fd)
                return
        self._accepted += 1
        if self._nodelay:
            set_nodelay(fd)
        loops = self._loops
        index = self._pick_loop(peer)
        self._assigned[index] += 1
        loop = loops[index]
        if loop is self._accept_loop:
            self._add_connection(loop, fd, peer)
        else:
            loop.call_soon(self._add_connection, loop, fd, peer)

    def _pick_loop(self, peer: Any) -> int:
        count = len(self._loops)
        if count == 1:
            return 0
        balance = self._server._balance
        if balance == "round_robin":
            index = self._next_loop
            self._next_loop = (index + 1) % count
            return index
        if balance == "least_connections":
            loops = self._loops
            open_ = [self._assigned[i] - loops[i].connections_closed for i in range(count)]
            return open_.index(min(open_))
        if balance == "source_addr_hash":
            host = peer[0] if isinstance(peer, tuple) else peer
            return zlib.crc32(str(host).encode()) % count
        assert callable(balance)
        index = balance(self.loops(), peer)
        if not isinstance(index, int) or not 0 <= index < count:
            raise ValueError(f"load_balance returned {index!r}, not a loop index")
        return index

    def _add_connection(self, loop: EventLoop, fd: int, peer: Any) -> None:
        if self._state != "running":
            sys_close(fd)
            loop.connections_closed += 1
            return
        server = self._server
        # PROXY headers are read by readiness (on io_uring, on the loop's epoll).
        io: type[SocketIO] = ReadinessIO
        if isinstance(loop, UringLoop) and not server.options.proxy_protocol:
            io = UringIO
        try:
            if server.ssl is None:
                conn = Connection(loop, fd, peer, server.handler, server.codec,
                                  server.options, self._connection_closed, io=io)
            else:
                conn = TLSConnection(loop, fd, peer, server.handler, server.codec,
                                     server.options, self._connection_closed, io=io,
                                     tls=TLSSession(server.ssl, server_side=True))
        except Exception as exc:  # (a codec whose decoder() fails, say): refused, counted
            sys_close(fd)
            loop.connections_closed += 1
            kind = type(exc).__name__
            loop.errors[kind] = loop.errors.get(kind, 0) + 1
            cause = f"{kind}: {exc}"
            if cause not in self._accept_errors:  # once per cause, not per connection
                self._accept_errors.add(cause)
                log.error("cannot set up connections (%s); refusing them", cause,
                          exc_info=exc)
            return
        self._connections[loop].add(conn)
        conn.start()

    def _connection_closed(self, conn: Connection) -> None:
        self._connections[conn.loop].discard(conn)

    def _shutdown(self, timeout: float) -> None:
        if self._metrics is not None:
            self._metrics.close()
        listener = self._listener
        if listener is not None and self._accept_loop is not None:
            if self._accept_loop.running:
                done = threading.Event()

                def close_listener() -> None:
                    listener.close()
                    done.set()

                self._accept_loop.call_soon(close_listener)
                done.wait(timeout)
            else:
                listener.sock.close()
        elif self._sock is not None:
            self._sock.close()
        for loop in self._loops:
            if loop.running:
                loop.call_soon(self._close_all, loop, False)
        deadline = time.monotonic() + timeout
        while self.connection_count() and time.monotonic() < deadline:
            time.sleep(0.005)
        for loop in self._loops:
            if loop.running:
                loop.call_soon(self._close_all, loop, True)
        # Closed connections whose cancelled coroutines still unwind run on_close when
        # they have ended (at most CANCEL_GRACE later): the loops run until then.
        deadline = time.monotonic() + CANCEL_GRACE + 0.5
        while self.connection_count() and time.monotonic() < deadline:
            time.sleep(0.005)
        loops = self._all_loops()
        for loop in loops:
            loop.stop()
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(timeout + 5)
        for loop in loops:
            if not loop.running:
                loop.run_queued()  # connections handed over but never started: close them
                for conn in list(self._connections.get(loop, ())):
                    conn._close_now()
                loop.close()
        if self._server._family == socket.AF_UNIX and self._sock is not None:
            _remove_stale_unix_socket(self._bind_address)
        self._end()

    def _close_all(self, loop: EventLoop, now: bool) -> None:
        for conn in list(self._connections[loop]):
            if now:
                conn._close_now()
            else:
                conn._close_gracefully()


class _WorkerProcesses(_Runner):
    """A server of ``count`` forked worker processes (``workers=N``): this process
    reserves the port and supervises (:class:`~gevwire.workers.Supervisor`); no loop
    runs here.  Each worker serves through an :class:`_InProcess` made after the fork."""

    def __init__(self, server: Server, count: int, worker_timeout: float | None) -> None:
        super().__init__()
        self._server = server
        self._count = count
        self._worker_timeout = worker_timeout
        self._supervisor: Supervisor | None = None
        self._address: Any = None  # the reserved address the workers bind

    def _supervise(self) -> Supervisor:
        """Reserve the port and make the supervisor of the workers."""
        server = self._server
        # Under the lock: a stop() from another thread finds the server either not
        # started or with its supervisor, never in between (and so never missed).
        with self._lock:
            self._begin()
            try:
                reservation = reserve_port(server._family, server._bind_address)
            except BaseException:
                self._end()
                raise
            self._address = reservation.getsockname()
            self._supervisor = Supervisor(self._serve_in_worker, self._count,
                                          reservation=reservation,
                                          worker_timeout=self._worker_timeout)
        log.info("gevwire starting %d workers of %d loop(s) on %s", self._count,
                 server._loop_count, self._address)
        return self._supervisor

    def _serve_in_worker(self, control: WorkerControl) -> None:
        """A worker process, just forked: this copy of the server is served by loops of
        its own on the reserved port until told to stop, then stops gracefully.  (Made
        here, after the fork: a parent's poller, waker, lock or event would be shared
        with the child, or held by a thread the fork did not copy.)"""
        server = self._server
        metrics_bind = server._metrics_bind
        if metrics_bind is not None and metrics_bind[1]:
            metrics_bind = (metrics_bind[0], metrics_bind[1] + control.index)
        runner = _InProcess(server, self._address, reuse_port=True, metrics_bind=metrics_bind)
        server._runner = runner  # what on_start and the handlers see in this process
        runner.start()
        control.ready()
        # The stop is bounded by the deadline wait_for_stop arms when it returns: a loop
        # stuck in a handler cannot keep this process alive past it.
        runner.stop(control.wait_for_stop(runner.loops_answer))
        runner.wait(None)

    def start(self) -> None:
        self._supervise().start()

    def run(self) -> None:
        with self._lock:  # (a stop() that comes first leaves nothing to run)
            supervisor = self._supervise() if self._state == "new" else self._supervisor
        if supervisor is not None:
            supervisor.run()

    def stop(self, timeout: float) -> None:
        with self._lock:
            if self._state == "new":  # never started: nothing to stop
                self._state = "stopped"
                self._stopped.set()
        if self._supervisor is not None:
            self._supervisor.stop(timeout)

    def wait(self, timeout: float | None) -> bool:
        if self._supervisor is not None:
            return self._supervisor.wait(timeout)
        return super().wait(timeout)

    def _state_now(self) -> str:
        return "stopped" if self.wait(0) else self._state

    def stats(self) -> dict[str, Any]:
        if self._supervisor is not None:
            return self._supervisor.stats()
        return {"workers": self._count, "pids": [], "restarts": [0] * self._count}

    def _bound_address(self) -> Any:
        return self._address

    def first_loop(self) -> EventLoop:
        raise RuntimeError("with workers > 1 the loops live in the worker processes; "
                           "schedule timers there (Server(on_start=...) or "
                           "conn.loop.run_after)")
