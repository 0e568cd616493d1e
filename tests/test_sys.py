"""The syscall layer (``gevwire._sys``) against real fds: socketpairs, pipes, loopback TCP.

Nothing here goes through the event loop: each test drives the foreign functions, the
acceptor, the waker and the pollers directly and checks what the kernel did.

The poller tests are one conformance suite (:class:`TestPollerConformance`) parametrised
over poller factories, so the same assertions run against epoll on Linux and kqueue on
macOS / BSD; where the two kernels legitimately differ the test says so and only checks
the common ground (or the backend-specific fact, named as such).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import select
import signal
import socket
import struct
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from gevwire._sys import (
    BYTES_OFFSET,
    EAGAIN,
    EV_ERROR,
    EV_HUP,
    EV_RDHUP,
    EV_READ,
    EV_WRITE,
    IOVEC,
    Acceptor,
    Iovecs,
    Poller,
    UnsupportedPlatformError,
    Waker,
    address_of,
    alloc,
    bytes_address,
    check,
    close,
    get_errno,
    new_poller,
    os_error,
    parse_sockaddr,
    peer_closed,
    pointer,
    raw_read,
    raw_readv,
    raw_writev,
    set_nodelay,
    shutdown,
    writev,
)
from gevwire._sys._kqueue import kevent_layout

LINUX = sys.platform.startswith("linux")
WOULD_BLOCK = (errno.EAGAIN, errno.EWOULDBLOCK)

pytestmark = pytest.mark.timeout(30)


# Reading and writing with the stdlib, in _sys's return convention (bytes moved, 0 at
# EOF, -EAGAIN when the socket has nothing or no room): the checks of the syscalls
# below read back and fill sockets with these.


def read_into(fd: int, buffer: bytearray) -> int:
    if not buffer:
        return 0
    return readv_into(fd, [buffer])


def readv_into(fd: int, buffers: list[bytearray]) -> int:
    try:
        return os.readv(fd, buffers)
    except BlockingIOError:
        return -EAGAIN


def write(fd: int, data: bytes) -> int:
    try:
        return os.write(fd, data)
    except BlockingIOError:
        return -EAGAIN


# -- helpers ---------------------------------------------------------------------------


def wait_readable(fd: int, timeout: float = 5.0) -> None:
    """Block (bounded) until ``fd`` is readable as seen by the stdlib's ``select``."""
    readable, _, _ = select.select([fd], [], [], timeout)
    assert readable, f"fd {fd} not readable within {timeout} s"


def closed_fd() -> int:
    """An fd number that is certainly not open right now."""
    r, w = os.pipe()
    os.close(r)
    os.close(w)
    return r


def fill_socket(fd: int) -> int:
    """Write until the kernel refuses with -EAGAIN; return the bytes it took."""
    chunk = b"\xab" * 65536
    total = 0
    for _ in range(10_000):  # bounded: socket buffers are a few MiB at most
        n = write(fd, chunk)
        if n == -EAGAIN:
            return total
        assert n > 0
        total += n
    raise AssertionError("socket never filled up")


def socket_at(fd_number: int, sock: socket.socket) -> socket.socket:
    """Move ``sock`` to exactly ``fd_number`` (which must be free) and return it."""
    with pytest.raises(OSError):
        os.fstat(fd_number)  # free: nothing of ours gets clobbered by dup2
    os.dup2(sock.fileno(), fd_number, inheritable=False)
    sock.close()
    moved = socket.socket(fileno=fd_number)
    assert moved.fileno() == fd_number
    return moved


class Sockets:
    """Creates sockets and closes every one of them at teardown."""

    def __init__(self) -> None:
        self.opened: list[socket.socket] = []

    def track(self, *socks: socket.socket) -> None:
        self.opened.extend(socks)

    def pair(self) -> tuple[socket.socket, socket.socket]:
        """A non-blocking AF_UNIX stream socketpair."""
        a, b = socket.socketpair()
        for s in (a, b):
            s.setblocking(False)
        self.track(a, b)
        return a, b

    def tcp_pair(self) -> tuple[socket.socket, socket.socket]:
        """``(server_side, client_side)`` over 127.0.0.1, both non-blocking."""
        with socket.create_server(("127.0.0.1", 0)) as listener:
            client = socket.create_connection(listener.getsockname(), timeout=5)
            server, _ = listener.accept()
        for s in (server, client):
            s.setblocking(False)
        self.track(server, client)
        return server, client

    def listener(
        self, family: socket.AddressFamily = socket.AF_INET, host: str = "127.0.0.1"
    ) -> socket.socket:
        sock = socket.socket(family, socket.SOCK_STREAM)
        self.track(sock)
        sock.bind((host, 0))
        sock.listen(16)
        sock.setblocking(False)
        return sock

    def close_all(self) -> None:
        for s in self.opened:
            s.close()


@pytest.fixture
def socks() -> Iterator[Sockets]:
    tracker = Sockets()
    yield tracker
    tracker.close_all()


def reset_by_peer(sock: socket.socket, peer: socket.socket) -> None:
    """Make ``peer`` close with RST (SO_LINGER 0 and unread data) and wait for it."""
    sock.send(b"unread by the peer")
    wait_readable(peer.fileno())
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    peer.close()
    wait_readable(sock.fileno())


# -- errno → OSError -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("err", "cls"),
    [
        (errno.ECONNRESET, ConnectionResetError),
        (errno.EPIPE, BrokenPipeError),
        (errno.ECONNREFUSED, ConnectionRefusedError),
        (errno.ECONNABORTED, ConnectionAbortedError),
        (errno.EAGAIN, BlockingIOError),
        (errno.EINTR, InterruptedError),
        (errno.ENOENT, FileNotFoundError),
        (errno.ETIMEDOUT, TimeoutError),
    ],
)
def test_os_error_maps_errno_to_subclass(err: int, cls: type[OSError]) -> None:
    exc = os_error(err, "readv")
    assert type(exc) is cls
    assert exc.errno == err
    assert exc.strerror == f"readv: {os.strerror(err)}"


def test_os_error_without_subclass_is_plain_oserror() -> None:
    exc = os_error(errno.EBADF)
    assert type(exc) is OSError
    assert exc.errno == errno.EBADF
    assert exc.strerror == os.strerror(errno.EBADF)


def test_check_passes_non_error_results_through() -> None:
    assert check(0) == 0
    assert check(7, "read") == 7
    assert check(-2) == -2  # only -1 means "see errno"


def test_check_raises_for_the_errno_of_the_last_call() -> None:
    _, _, ptr = alloc(8)
    result = raw_read(closed_fd(), ptr, 8)
    assert result == -1
    with pytest.raises(OSError) as info:
        check(result, "read")
    assert type(info.value) is OSError
    assert info.value.errno == errno.EBADF
    assert "read" in str(info.value)


# -- read / write / readv / writev -----------------------------------------------------


def test_writev_gathers_in_order(socks: Sockets) -> None:
    a, b = socks.pair()
    assert writev(a.fileno(), [b"ab", b"", b"cdef", b"g"]) == 7
    assert b.recv(64) == b"abcdefg"


def test_vectored_calls_with_no_buffers_return_zero(socks: Sockets) -> None:
    """Like readv(2) / writev(2) with iovcnt 0 (regression: alloc(0) raised ValueError)."""
    a, b = socks.pair()
    assert writev(a.fileno(), []) == 0
    b.send(b"x")
    assert readv_into(a.fileno(), []) == 0


def test_write_empty_is_zero(socks: Sockets) -> None:
    a, b = socks.pair()
    assert write(a.fileno(), b"") == 0
    assert writev(a.fileno(), [b""]) == 0
    assert read_into(b.fileno(), bytearray(4)) == -EAGAIN


def test_write_to_closed_peer_raises_broken_pipe(socks: Sockets) -> None:
    a, b = socks.pair()
    b.close()
    with pytest.raises(BrokenPipeError):
        write(a.fileno(), b"x")
    with pytest.raises(BrokenPipeError):
        writev(a.fileno(), [b"x", b"y"])


def test_read_of_reset_connection_raises_connection_reset(socks: Sockets) -> None:
    a, b = socks.tcp_pair()
    reset_by_peer(a, b)
    with pytest.raises(ConnectionResetError) as info:
        read_into(a.fileno(), bytearray(64))
    assert info.value.errno == errno.ECONNRESET


def test_readv_of_reset_connection_raises_connection_reset(socks: Sockets) -> None:
    a, b = socks.tcp_pair()
    reset_by_peer(a, b)
    with pytest.raises(ConnectionResetError):
        readv_into(a.fileno(), [bytearray(8), bytearray(8)])


@pytest.mark.parametrize(
    "call",
    [
        lambda fd: read_into(fd, bytearray(8)),
        lambda fd: readv_into(fd, [bytearray(8)]),
        lambda fd: write(fd, b"x"),
        lambda fd: writev(fd, [b"x"]),
        close,
        lambda fd: shutdown(fd, socket.SHUT_RDWR),
    ],
    ids=["read_into", "readv_into", "write", "writev", "close", "shutdown"],
)
def test_calls_on_closed_fd_raise_ebadf(call: Callable[[int], object]) -> None:
    with pytest.raises(OSError) as info:
        call(closed_fd())
    assert type(info.value) is OSError
    assert info.value.errno == errno.EBADF


def test_close_closes_the_fd() -> None:
    r, w = os.pipe()
    close(w)
    with pytest.raises(OSError) as info:
        os.fstat(w)
    assert info.value.errno == errno.EBADF
    assert os.read(r, 1) == b""  # the write end really is gone
    os.close(r)


def test_shutdown_write_sends_eof_and_keeps_reading(socks: Sockets) -> None:
    a, b = socks.pair()
    shutdown(a.fileno(), socket.SHUT_WR)
    assert read_into(b.fileno(), bytearray(4)) == 0
    b.send(b"back")
    assert read_into(a.fileno(), bytearray(8)) == 4


def test_shutdown_of_non_socket_raises() -> None:
    r, w = os.pipe()
    try:
        with pytest.raises(OSError) as info:
            shutdown(r, socket.SHUT_RDWR)
        assert info.value.errno == errno.ENOTSOCK
    finally:
        os.close(r)
        os.close(w)


# -- raw hot-path calls ----------------------------------------------------------------


def test_raw_read_on_empty_socket_is_minus_one_with_eagain(socks: Sockets) -> None:
    _, b = socks.pair()
    _, _, ptr = alloc(64)
    assert raw_read(b.fileno(), ptr, 64) == -1
    assert get_errno() in WOULD_BLOCK


def test_raw_readv_with_iovecs_from_alloc(socks: Sockets) -> None:
    a, b = socks.pair()
    first, addr1, _ = alloc(3)
    second, addr2, _ = alloc(8)
    iov = Iovecs(2)
    iov.formats[2].pack_into(iov.buffer, 0, addr1, 3, addr2, 8)
    assert raw_readv(b.fileno(), iov.ptr, 2) == -1
    assert get_errno() in WOULD_BLOCK
    a.send(b"scatter")
    assert raw_readv(b.fileno(), iov.ptr, 2) == 7
    assert first == b"sca"
    assert second == b"tter\0\0\0\0"
    # Fewer entries than the array holds: only the first iovec is used.
    a.send(b"xyz!")
    assert raw_readv(b.fileno(), iov.ptr, 1) == 3
    assert first == b"xyz"
    assert b.recv(8) == b"!"


def test_raw_writev_with_iovecs_until_eagain(socks: Sockets) -> None:
    a, b = socks.pair()
    one, addr1, _ = alloc(4)
    two, addr2, _ = alloc(65536)
    one[:] = b"head"
    two[:] = b"\xcd" * len(two)
    iov = Iovecs(3)
    iov.formats[3].pack_into(iov.buffer, 0, addr1, 4, 0, 0, addr2, 6)
    assert raw_writev(a.fileno(), iov.ptr, 3) == 10
    assert b.recv(64) == b"head" + b"\xcd" * 6
    iov.formats[1].pack_into(iov.buffer, 0, addr2, len(two))
    total = 0
    for _ in range(10_000):
        n = raw_writev(a.fileno(), iov.ptr, 1)
        if n == -1:
            assert get_errno() in WOULD_BLOCK
            break
        total += n
    else:
        raise AssertionError("raw_writev never returned -1 on a full socket")
    assert total > 0


def test_iovecs_layout() -> None:
    pointer_size = struct.calcsize("P")
    assert pointer_size * 2 == IOVEC.size
    iov = Iovecs(5)
    assert iov.count == 5
    assert len(iov.buffer) == 5 * IOVEC.size
    assert len(iov.formats) == 6
    assert [f.size for f in iov.formats] == [k * IOVEC.size for k in range(6)]
    iov.formats[2].pack_into(iov.buffer, 0, 0x1234, 5, 2**40, 7)
    assert IOVEC.unpack_from(iov.buffer, 0) == (0x1234, 5)
    assert IOVEC.unpack_from(iov.buffer, IOVEC.size) == (2**40, 7)


def test_get_errno_survives_python_work_in_between(socks: Sockets) -> None:
    _, b = socks.pair()
    _, _, ptr = alloc(8)
    assert raw_read(b.fileno(), ptr, 8) == -1
    os.stat(".")  # a Python-level syscall that succeeds (and may set errno) in between
    try:
        os.stat("/nonexistent/gevwire")
    except FileNotFoundError:
        pass
    assert get_errno() in WOULD_BLOCK


# -- addresses -------------------------------------------------------------------------


def test_address_of_matches_where_raw_read_writes(socks: Sockets) -> None:
    a, b = socks.pair()
    buffer, address, ptr = alloc(32)
    assert address_of(buffer) == address
    a.send(b"abcdef")
    assert raw_read(b.fileno(), pointer(address + 10), 4) == 4
    assert buffer[10:14] == b"abcd"
    assert buffer[:10] == bytes(10)
    assert buffer[14:] == bytes(18)
    assert raw_read(b.fileno(), ptr, 32) == 2
    assert buffer[:2] == b"ef"


def test_address_of_a_plain_bytearray_and_readv_into_it(socks: Sockets) -> None:
    a, b = socks.pair()
    buffer = bytearray(b"." * 12)
    address = address_of(buffer)
    assert address_of(buffer) == address  # stable while not resized
    iov = Iovecs(2)
    iov.formats[2].pack_into(iov.buffer, 0, address + 8, 4, address, 2)
    a.send(b"123456")
    assert raw_readv(b.fileno(), iov.ptr, 2) == 6
    assert buffer == b"56......1234"


def test_address_of_leaves_the_bytearray_resizable() -> None:
    buffer = bytearray(b"abc")
    address_of(buffer)
    buffer.extend(b"def")  # would raise BufferError if an export were left behind
    assert buffer == b"abcdef"


def test_address_of_empty_buffer_raises() -> None:
    with pytest.raises(ValueError):
        address_of(bytearray())


def test_alloc_returns_zeroed_buffer_and_matching_pointer() -> None:
    buffer, address, ptr = alloc(100)
    assert buffer == bytes(100)
    assert ptr.value == address
    assert address_of(buffer) == address


@pytest.mark.parametrize("data", [b"x", b"gevwire", bytes(range(256)) * 40,
                                  b"\0" * 100_000], ids=["1", "7", "10240", "100000"])
def test_bytes_address_is_where_the_bytes_data_lies(data: bytes) -> None:
    assert BYTES_OFFSET > 0  # CPython: ob_sval, after the object's header
    address = bytes_address(data)
    assert address == id(data) + BYTES_OFFSET
    assert ctypes.string_at(address, len(data)) == data
    half = len(data) // 2
    assert ctypes.string_at(address + half, len(data) - half) == data[half:]


def test_bytes_address_is_what_the_kernel_reads(socks: Sockets) -> None:
    a, b = socks.pair()
    data = b"0123456789abcdef"
    iov = Iovecs(2)
    iov.formats[2].pack_into(iov.buffer, 0, bytes_address(data) + 10, 6,
                             bytes_address(data), 4)
    assert raw_writev(a.fileno(), iov.ptr, 2) == 10
    assert b.recv(100) == b"abcdef0123"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="io_uring is Linux only")
def test_io_uring_uses_the_one_bytes_address() -> None:
    from gevwire._sys import _uring

    assert _uring.bytes_address is bytes_address
    assert _uring.BYTES_OFFSET == BYTES_OFFSET


# -- Acceptor / parse_sockaddr ---------------------------------------------------------


def check_accepted_fd(fd: int) -> None:
    assert fd >= 0
    assert not os.get_blocking(fd)
    assert fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
    assert not os.get_inheritable(fd)


def test_accept_with_nothing_pending_returns_minus_eagain(socks: Sockets) -> None:
    listener = socks.listener()
    assert Acceptor(listener.fileno()).accept() == (-EAGAIN, None)


def test_accept_ipv4(socks: Sockets) -> None:
    listener = socks.listener()
    acceptor = Acceptor(listener.fileno())
    client = socket.create_connection(listener.getsockname(), timeout=5)
    socks.track(client)
    wait_readable(listener.fileno())
    fd, peer = acceptor.accept()
    check_accepted_fd(fd)
    accepted = socket.socket(fileno=fd)
    socks.track(accepted)
    assert peer == client.getsockname()
    assert accepted.getpeername() == client.getsockname()
    client.send(b"ping")
    wait_readable(fd)
    buffer = bytearray(8)
    assert read_into(fd, buffer) == 4
    assert buffer[:4] == b"ping"
    assert acceptor.accept() == (-EAGAIN, None)


def test_accept_several_pending(socks: Sockets) -> None:
    listener = socks.listener()
    acceptor = Acceptor(listener.fileno())
    clients = [socket.create_connection(listener.getsockname(), timeout=5) for _ in range(3)]
    socks.track(*clients)
    peers: list[tuple[str, int]] = []
    deadline = time.monotonic() + 5
    while len(peers) < 3 and time.monotonic() < deadline:
        fd, peer = acceptor.accept()
        if fd == -EAGAIN:
            time.sleep(0.005)
            continue
        check_accepted_fd(fd)
        socks.track(socket.socket(fileno=fd))
        peers.append(peer)
    assert sorted(peers) == sorted(c.getsockname() for c in clients)


def ipv6_loopback_available() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not ipv6_loopback_available(), reason="cannot bind ::1 here")
def test_accept_ipv6(socks: Sockets) -> None:
    listener = socks.listener(socket.AF_INET6, "::1")
    acceptor = Acceptor(listener.fileno())
    client = socket.create_connection(listener.getsockname()[:2], timeout=5)
    socks.track(client)
    wait_readable(listener.fileno())
    fd, peer = acceptor.accept()
    check_accepted_fd(fd)
    socks.track(socket.socket(fileno=fd))
    assert peer == client.getsockname()
    assert peer[0] == "::1"
    assert len(peer) == 4


def test_accept_unix_reports_the_bound_client_path(socks: Sockets) -> None:
    with tempfile.TemporaryDirectory(prefix="gw") as directory:
        server_path = os.path.join(directory, "s.sock")
        client_path = os.path.join(directory, "c.sock")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        socks.track(listener)
        listener.bind(server_path)
        listener.listen(4)
        listener.setblocking(False)
        acceptor = Acceptor(listener.fileno())

        bound = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        socks.track(bound)
        bound.bind(client_path)
        bound.connect(server_path)
        fd, peer = acceptor.accept()
        check_accepted_fd(fd)
        socks.track(socket.socket(fileno=fd))
        assert peer == client_path

        unbound = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        socks.track(unbound)
        unbound.connect(server_path)
        fd, peer = acceptor.accept()
        check_accepted_fd(fd)
        accepted = socket.socket(fileno=fd)
        socks.track(accepted)
        assert peer == accepted.getpeername() == ""


@pytest.mark.skipif(not LINUX, reason="abstract unix sockets are Linux-only")
def test_accept_unix_abstract_peer(socks: Sockets) -> None:
    """Abstract names come back as bytes with the leading NUL, as the socket module does.

    Regression: the address used to be cut at its leading NUL and reported as ''.
    """
    name = f"\0gevwire-test-{os.getpid()}"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    socks.track(listener)
    listener.bind(name + "-server")
    listener.listen(4)
    listener.setblocking(False)
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    socks.track(client)
    client.bind(name + "-client")
    client.connect(name + "-server")
    fd, peer = Acceptor(listener.fileno()).accept()
    accepted = socket.socket(fileno=fd)
    socks.track(accepted)
    assert peer == accepted.getpeername() == (name + "-client").encode()


def test_accept_errors_are_values(socks: Sockets) -> None:
    not_listening = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    socks.track(not_listening)
    assert Acceptor(not_listening.fileno()).accept() == (-errno.EINVAL, None)
    assert Acceptor(closed_fd()).accept() == (-errno.EBADF, None)


def sockaddr(family: int, body: bytes) -> bytes:
    """A native ``struct sockaddr`` header (BSDs lead with a length byte) plus ``body``."""
    head = struct.pack("=H", family) if LINUX else struct.pack("=BB", 2 + len(body), family)
    return (head + body).ljust(128, b"\0")


def test_parse_sockaddr_inet() -> None:
    data = sockaddr(socket.AF_INET, struct.pack("!H", 8080) + bytes([127, 0, 0, 1]))
    assert parse_sockaddr(data, 16) == ("127.0.0.1", 8080)


def test_parse_sockaddr_inet6() -> None:
    body = (
        struct.pack("!HI", 443, 0x12345)
        + socket.inet_pton(socket.AF_INET6, "fe80::1")
        + struct.pack("=I", 3)
    )
    assert parse_sockaddr(sockaddr(socket.AF_INET6, body), 28) == ("fe80::1", 443, 0x12345, 3)


def test_parse_sockaddr_unix() -> None:
    path = b"/tmp/gevwire.sock"
    with_nul = sockaddr(socket.AF_UNIX, path + b"\0garbage")
    assert parse_sockaddr(with_nul, 2 + len(path) + 1) == "/tmp/gevwire.sock"
    # The kernel may leave out the terminating NUL: the length alone bounds the path.
    without_nul = sockaddr(socket.AF_UNIX, path + b"garbage")
    assert parse_sockaddr(without_nul, 2 + len(path)) == "/tmp/gevwire.sock"
    assert parse_sockaddr(sockaddr(socket.AF_UNIX, b""), 2) == ""  # unbound peer
    non_ascii = "/tmp/gw-\u00e9.sock"
    encoded = os.fsencode(non_ascii)
    data = sockaddr(socket.AF_UNIX, encoded + b"\0")
    assert parse_sockaddr(data, 2 + len(encoded) + 1) == non_ascii


def test_parse_sockaddr_unknown_family_is_none() -> None:
    assert parse_sockaddr(sockaddr(255, b"\1\2\3\4"), 8) is None


# -- set_nodelay -----------------------------------------------------------------------


def test_set_nodelay(socks: Sockets) -> None:
    a, _ = socks.tcp_pair()
    a.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 0)
    assert a.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0
    set_nodelay(a.fileno())
    assert a.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


def test_set_nodelay_ignores_non_tcp_fds(socks: Sockets) -> None:
    a, _ = socks.pair()
    set_nodelay(a.fileno())  # AF_UNIX: the error is ignored
    set_nodelay(closed_fd())


# -- Waker -----------------------------------------------------------------------------


@pytest.fixture(params=["native", "pipe"])
def waker(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Waker]:
    """A Waker on the platform's mechanism (eventfd on Linux) and on the pipe fallback."""
    if request.param == "pipe":
        monkeypatch.setattr("gevwire._sys._waker._eventfd", None)
    w = Waker()
    yield w
    w.close()


@pytest.fixture
def poller() -> Iterator[Poller]:
    p = new_poller(64)
    yield p
    p.close()


def test_waker_wake_and_drain(waker: Waker, poller: Poller) -> None:
    poller.register(waker.fileno(), 5, EV_READ)
    assert poller.poll(0) == []
    waker.wake()
    assert poller.poll(0) == [(EV_READ, 5)]
    assert poller.poll(0) == [(EV_READ, 5)]  # level-triggered until drained
    waker.drain()
    assert poller.poll(0) == []


def test_waker_many_wakes_then_one_drain(waker: Waker, poller: Poller) -> None:
    poller.register(waker.fileno(), 5, EV_READ)
    for _ in range(20_000):  # more than a pipe holds (64 KiB / 8 bytes): wake must not raise
        waker.wake()
    assert poller.poll(0) == [(EV_READ, 5)]
    waker.drain()
    assert poller.poll(0) == []
    waker.wake()
    assert poller.poll(0) == [(EV_READ, 5)]


def test_waker_drain_when_not_woken_is_harmless(waker: Waker, poller: Poller) -> None:
    poller.register(waker.fileno(), 5, EV_READ)
    waker.drain()
    waker.drain()
    assert poller.poll(0) == []


def test_waker_fds_are_nonblocking_and_cloexec(waker: Waker) -> None:
    fd = waker.fileno()
    assert not os.get_blocking(fd)
    assert not os.get_inheritable(fd)


@pytest.mark.timeout(10)
def test_wake_from_another_thread_wakes_a_blocked_poll(waker: Waker, poller: Poller) -> None:
    poller.register(waker.fileno(), 9, EV_READ)

    def wake_later() -> None:
        time.sleep(0.1)
        waker.wake()

    thread = threading.Thread(target=wake_later, daemon=True)
    start = time.monotonic()
    thread.start()
    events = poller.poll(-1)  # must release the GIL, or the other thread never runs
    elapsed = time.monotonic() - start
    thread.join(5)
    assert events == [(EV_READ, 9)]
    assert 0.05 <= elapsed < 5


def test_waker_close_releases_the_fd() -> None:
    w = Waker()
    fd = w.fileno()
    w.close()
    with pytest.raises(OSError) as info:
        os.fstat(fd)
    assert info.value.errno == errno.EBADF


def closed_waker_with_fd_reused(socks: Sockets) -> tuple[Waker, socket.socket, socket.socket]:
    """A closed Waker whose old fd number now belongs to a fresh socket (and its peer)."""
    w = Waker()
    number = w.fileno()
    mine, peer = socket.socketpair()  # before the close, so neither takes the number
    socks.track(peer)
    w.close()
    mine = socket_at(number, mine)
    socks.track(mine)
    peer.setblocking(False)
    return w, mine, peer


def test_waker_wake_after_close_touches_no_reused_fd(socks: Sockets) -> None:
    """Regression: a late wake() (EventLoop.stop after close) wrote into a reused fd."""
    w, _, peer = closed_waker_with_fd_reused(socks)
    w.wake()
    with pytest.raises(BlockingIOError):
        peer.recv(64)


def test_waker_second_close_touches_no_reused_fd(socks: Sockets) -> None:
    """Regression: a second close() closed whatever then owned the old fd number."""
    w, mine, _ = closed_waker_with_fd_reused(socks)
    w.close()
    try:
        os.fstat(mine.fileno())  # still open?
    except OSError:
        mine.detach()  # the Waker closed it: keep teardown from closing it again
        raise


# -- kevent_layout (a pure function: runs everywhere) -----------------------------------


@pytest.mark.parametrize(
    ("system", "release", "size"),
    [
        ("darwin", "23.4.0", 32),
        ("openbsd7", "7.5", 32),
        ("dragonfly6", "6.4-RELEASE", 32),
        ("freebsd11", "11.4-RELEASE", 32),
        ("freebsd12", "12.0-RELEASE", 64),
        ("freebsd13", "13.2-RELEASE-p4", 64),
        ("freebsd14", "14.1-STABLE", 64),
    ],
)
def test_kevent_layout(system: str, release: str, size: int) -> None:
    layout = kevent_layout(system, release)
    assert layout.size == size
    # ident, filter, flags, fflags, data, udata (+ ext[4]) round-trip through the layout.
    values = (7, -1, 0x4001, 0, -5, 2**63 - 1) + ((0, 1, 2, 3) if size == 64 else ())
    assert layout.unpack(layout.pack(*values)) == values


@pytest.mark.parametrize("system", ["netbsd10", "sunos5", "linux"])
def test_kevent_layout_unknown_systems_raise(system: str) -> None:
    with pytest.raises(OSError):
        kevent_layout(system, "10.0")


# -- platform selection -----------------------------------------------------------------


def test_new_poller_picks_the_platform_backend() -> None:
    p = new_poller(4)
    try:
        if LINUX:
            from gevwire._sys._epoll import EpollPoller

            assert isinstance(p, EpollPoller)
        else:
            from gevwire._sys._kqueue import KqueuePoller

            assert isinstance(p, KqueuePoller)
    finally:
        p.close()


def test_new_poller_unsupported_platform(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "sunos5")
    with pytest.raises(UnsupportedPlatformError) as info:
        new_poller()
    assert isinstance(info.value, OSError)
    assert "sunos5" in str(info.value)


# -- poller conformance suite ------------------------------------------------------------

PollerFactory = Callable[[int], Poller]


def _epoll(max_events: int) -> Poller:
    from gevwire._sys._epoll import EpollPoller

    return EpollPoller(max_events)


def _kqueue(max_events: int) -> Poller:
    from gevwire._sys._kqueue import KqueuePoller

    return KqueuePoller(max_events)


BACKENDS = [
    pytest.param(
        ("epoll", _epoll),
        id="epoll",
        marks=pytest.mark.skipif(not LINUX, reason="epoll exists only on Linux"),
    ),
    pytest.param(
        ("kqueue", _kqueue),
        id="kqueue",
        marks=pytest.mark.skipif(
            LINUX, reason="kqueue does not exist on Linux; this entry runs on macOS / BSD"
        ),
    ),
]


class Backend:
    """A poller factory that closes every poller it made."""

    def __init__(self, name: str, factory: PollerFactory) -> None:
        self.name = name
        self.factory = factory
        self.made: list[Poller] = []

    def __call__(self, max_events: int = 64) -> Poller:
        p = self.factory(max_events)
        self.made.append(p)
        return p


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    name, factory = request.param
    made = Backend(name, factory)
    yield made
    for p in made.made:
        p.close()


def merged(events: list[tuple[int, int]]) -> dict[int, int]:
    """token → OR of its masks (kqueue reports read and write of one fd separately)."""
    out: dict[int, int] = {}
    for mask, token in events:
        out[token] = out.get(token, 0) | mask
    return out


def poll_for(p: Poller, token: int, bits: int, timeout: float = 5.0) -> int:
    """Poll until ``token`` is reported with all of ``bits``; return its merged mask."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        mask = merged(p.poll(50)).get(token, 0)
        if mask & bits == bits:
            return mask
    raise AssertionError(f"token {token} not reported with {bits:#x} within {timeout} s")


class TestPollerConformance:
    """What every :class:`~gevwire._sys.Poller` must do, written once for all backends."""

    def test_idle_fd_reports_nothing(self, backend: Backend, socks: Sockets) -> None:
        p = backend()
        a, _ = socks.pair()
        p.register(a.fileno(), 1, EV_READ)
        assert p.poll(0) == []

    def test_read_event_reports_token_not_fd(self, backend: Backend, socks: Sockets) -> None:
        p = backend()
        a, b = socks.pair()
        token = a.fileno() + 1000
        p.register(a.fileno(), token, EV_READ)
        b.send(b"data")
        assert p.poll(1000) == [(EV_READ, token)]
        assert p.poll(0) == [(EV_READ, token)]  # level-triggered: still unread
        assert read_into(a.fileno(), bytearray(16)) == 4
        assert p.poll(0) == []

    def test_read_event_wakes_a_waiting_poll(self, backend: Backend, socks: Sockets) -> None:
        p = backend()
        a, b = socks.tcp_pair()
        p.register(a.fileno(), 3, EV_READ)
        timer = threading.Timer(0.05, b.send, args=(b"late",))
        start = time.monotonic()
        timer.start()
        try:
            events = p.poll(5000)
        finally:
            timer.join()
        assert events == [(EV_READ, 3)]
        assert time.monotonic() - start < 4

    @pytest.mark.parametrize("token", [0, 1, 2**31, 2**32 + 1, 2**40, 2**63 - 1])
    def test_large_tokens_round_trip(self, backend: Backend, socks: Sockets, token: int) -> None:
        p = backend()
        a, b = socks.pair()
        p.register(a.fileno(), token, EV_READ)
        b.send(b"x")
        assert p.poll(1000) == [(EV_READ, token)]

    def test_many_fds_distinct_tokens(self, backend: Backend, socks: Sockets) -> None:
        p = backend()
        pairs = [socks.pair() for _ in range(10)]
        for i, (a, _) in enumerate(pairs):
            p.register(a.fileno(), 2**40 + i, EV_READ)
        for i in (1, 4, 7):
            pairs[i][1].send(b"x")
        assert sorted(p.poll(1000)) == [(EV_READ, 2**40 + i) for i in (1, 4, 7)]

    def test_write_event_on_writable_socket(self, backend: Backend, socks: Sockets) -> None:
        p = backend()
        a, _ = socks.pair()
        p.register(a.fileno(), 4, EV_WRITE)
        assert p.poll(0) == [(EV_WRITE, 4)]

    def test_write_event_stops_when_full_and_returns(
        self, backend: Backend, socks: Sockets
    ) -> None:
        p = backend()
        a, b = socks.tcp_pair()
        p.register(a.fileno(), 4, EV_WRITE)
        fill_socket(a.fileno())
        assert p.poll(0) == []
        while True:  # drain the peer until the sender is writable again
            try:
                if not b.recv(1 << 20):
                    break
            except BlockingIOError:
                if merged(p.poll(20)).get(4, 0) & EV_WRITE:
                    break
        assert merged(p.poll(1000)).get(4, 0) & EV_WRITE

    def test_read_and_write_interest_together(self, backend: Backend, socks: Sockets) -> None:
        p = backend()
        a, b = socks.pair()
        p.register(a.fileno(), 6, EV_READ | EV_WRITE)
        assert merged(p.poll(0)) == {6: EV_WRITE}
        b.send(b"x")
        assert merged(p.poll(1000)) == {6: EV_READ | EV_WRITE}

    def test_modify_to_zero_silences_and_back(self, backend: Backend, socks: Sockets) -> None:
        p = backend()
        a, b = socks.pair()
        b.send(b"pending")
        p.register(a.fileno(), 7, EV_READ | EV_WRITE)
        assert merged(p.poll(0)) == {7: EV_READ | EV_WRITE}
        p.modify(a.fileno(), 7, 0)
        assert p.poll(0) == []
        assert p.poll(20) == []
        p.modify(a.fileno(), 7, EV_READ)
        assert p.poll(0) == [(EV_READ, 7)]

    def test_modify_switches_direction_and_token(self, backend: Backend, socks: Sockets) -> None:
        p = backend()
        a, b = socks.pair()
        b.send(b"pending")
        p.register(a.fileno(), 7, EV_READ)
        assert p.poll(0) == [(EV_READ, 7)]
        p.modify(a.fileno(), 8, EV_WRITE)
        assert p.poll(0) == [(EV_WRITE, 8)]
        p.modify(a.fileno(), 2**40, EV_READ)
        assert p.poll(0) == [(EV_READ, 2**40)]

    def test_unregister_stops_events_and_allows_reregister(
        self, backend: Backend, socks: Sockets
    ) -> None:
        p = backend()
        a, b = socks.pair()
        b.send(b"pending")
        p.register(a.fileno(), 1, EV_READ | EV_WRITE)
        assert p.poll(0)
        p.unregister(a.fileno())
        assert p.poll(0) == []
        p.register(a.fileno(), 2, EV_READ)
        assert p.poll(0) == [(EV_READ, 2)]

    def test_unregister_of_closed_or_unknown_fd_does_not_raise(
        self, backend: Backend, socks: Sockets
    ) -> None:
        p = backend()
        a, _ = socks.pair()
        p.register(a.fileno(), 1, EV_READ)
        fd = a.fileno()
        a.close()
        p.unregister(fd)  # closed: the kernel already forgot it
        p.unregister(fd)  # twice
        p.unregister(closed_fd())  # never registered
        assert p.poll(0) == []

    def test_unregister_of_open_but_unregistered_fd_does_not_raise(
        self, backend: Backend, socks: Sockets
    ) -> None:
        p = backend()
        a, _ = socks.pair()
        p.unregister(a.fileno())
        assert p.poll(0) == []

    def test_peer_half_close_reports_read_and_rdhup(
        self, backend: Backend, socks: Sockets
    ) -> None:
        p = backend()
        a, b = socks.tcp_pair()
        p.register(a.fileno(), 11, EV_READ)
        b.send(b"tail")
        b.shutdown(socket.SHUT_WR)
        mask = poll_for(p, 11, EV_READ | EV_RDHUP)
        if backend.name == "epoll":
            assert mask == EV_READ | EV_RDHUP  # half-close only: no EPOLLHUP yet
        buffer = bytearray(16)
        assert read_into(a.fileno(), buffer) == 4
        assert buffer[:4] == b"tail"
        assert read_into(a.fileno(), buffer) == 0
        # The other direction still works after the peer's half-close.
        assert write(a.fileno(), b"reply") == 5
        wait_readable(b.fileno())
        assert b.recv(16) == b"reply"

    def test_both_directions_closed_reports_hup(self, backend: Backend, socks: Sockets) -> None:
        p = backend()
        a, b = socks.tcp_pair()
        p.register(a.fileno(), 12, EV_READ)
        b.shutdown(socket.SHUT_WR)
        poll_for(p, 12, EV_READ | EV_RDHUP)
        a.shutdown(socket.SHUT_WR)
        if backend.name == "epoll":
            mask = poll_for(p, 12, EV_HUP)
            assert mask == EV_READ | EV_RDHUP | EV_HUP
        else:  # kqueue has no HUP: EOF on the read filter is all it says
            assert poll_for(p, 12, EV_READ | EV_RDHUP)

    def test_unix_peer_close_reports_read_and_rdhup(
        self, backend: Backend, socks: Sockets
    ) -> None:
        p = backend()
        a, b = socks.pair()
        p.register(a.fileno(), 13, EV_READ)
        b.close()
        mask = poll_for(p, 13, EV_READ | EV_RDHUP)
        if backend.name == "epoll":
            assert mask & EV_HUP  # AF_UNIX: a closed peer shuts both directions
        assert read_into(a.fileno(), bytearray(4)) == 0

    def test_peer_reset(self, backend: Backend, socks: Sockets) -> None:
        p = backend()
        a, b = socks.tcp_pair()
        p.register(a.fileno(), 14, EV_READ | EV_WRITE)
        reset_by_peer(a, b)
        mask = merged(p.poll(1000)).get(14, 0)
        if backend.name == "epoll":
            assert mask & (EV_ERROR | EV_HUP) == EV_ERROR | EV_HUP
        else:
            assert mask & (EV_READ | EV_ERROR)
        with pytest.raises(ConnectionResetError):
            read_into(a.fileno(), bytearray(8))

    def test_poll_timeout(self, backend: Backend, socks: Sockets) -> None:
        p = backend()
        a, _ = socks.pair()
        p.register(a.fileno(), 1, EV_READ)
        start = time.monotonic()
        assert p.poll(0) == []
        assert time.monotonic() - start < 0.05
        start = time.monotonic()
        assert p.poll(150) == []
        elapsed = time.monotonic() - start
        assert 0.14 <= elapsed < 2.0

    def test_poll_with_nothing_registered_times_out(self, backend: Backend) -> None:
        p = backend()
        start = time.monotonic()
        assert p.poll(50) == []
        assert 0.045 <= time.monotonic() - start < 2.0

    def test_poll_reports_at_most_max_events_then_the_rest(
        self, backend: Backend, socks: Sockets
    ) -> None:
        p = backend(3)
        pairs = [socks.pair() for _ in range(7)]
        for i, (a, b) in enumerate(pairs):
            p.register(a.fileno(), 100 + i, EV_READ)
            b.send(b"x")
        seen: set[int] = set()
        for _ in range(3):  # ceil(7 / 3) turns: every ready fd gets its turn
            batch = p.poll(0)
            assert len(batch) == 3
            assert all(mask == EV_READ for mask, _ in batch)
            assert len({token for _, token in batch}) == 3
            seen.update(token for _, token in batch)
        assert seen == {100 + i for i in range(7)}

    @pytest.mark.parametrize("unregister_first", [True, False])
    def test_fd_reused_within_a_batch_is_told_apart_by_token(
        self, backend: Backend, socks: Sockets, unregister_first: bool
    ) -> None:
        """fd A (token 1) is closed and the kernel hands its number to a new socket.

        The loop registers every connection with a fresh token.  An event for A already
        in the batch carries token 1, which the loop no longer knows, so it cannot reach
        the new connection (token 2), and the poller never reports token 1 again.
        """
        p = backend()
        a, a_peer = socks.pair()
        number = a.fileno()
        p.register(number, 1, EV_READ)
        a_peer.send(b"for the old connection")
        batch = p.poll(1000)
        assert batch == [(EV_READ, 1)]

        if unregister_first:
            p.unregister(number)
        fresh, fresh_peer = socket.socketpair()  # before the close: neither takes the number
        socks.track(fresh_peer)
        a.close()
        fresh = socket_at(number, fresh)
        socks.track(fresh)
        fresh.setblocking(False)
        p.register(number, 2, EV_READ)

        # The loop looks tokens up, not fds: the stale entry still in ``batch`` finds no one.
        connections = {2: "the new connection"}
        assert [connections.get(token) for _, token in batch] == [None]
        assert p.poll(0) == []
        fresh_peer.send(b"for the new connection")
        for _ in range(5):
            assert p.poll(100) == [(EV_READ, 2)]
        assert fresh.recv(64) == b"for the new connection"

    def test_fd_reused_while_description_lives_on_elsewhere(
        self, backend: Backend, socks: Sockets
    ) -> None:
        """Unregister-before-close holds even when a ``dup`` keeps the old socket open."""
        p = backend()
        a, a_peer = socks.pair()
        number = a.fileno()
        p.register(number, 1, EV_READ)
        survivor = socket.socket(fileno=os.dup(number))
        socks.track(survivor)
        p.unregister(number)
        fresh, fresh_peer = socket.socketpair()  # before the close: neither takes the number
        socks.track(fresh_peer)
        a.close()
        fresh = socket_at(number, fresh)
        socks.track(fresh)
        p.register(number, 2, EV_READ)
        a_peer.send(b"old")
        fresh_peer.send(b"new")
        time.sleep(0.01)
        assert p.poll(100) == [(EV_READ, 2)]

    def test_interrupted_poll_returns_empty(self, backend: Backend, socks: Sockets) -> None:
        if threading.current_thread() is not threading.main_thread():
            pytest.skip("signals are delivered to the main thread only")
        p = backend()
        a, _ = socks.pair()
        p.register(a.fileno(), 1, EV_READ)
        fired: list[int] = []
        main = threading.main_thread().ident
        assert main is not None
        # SIGUSR1 aimed at this thread (SIGALRM belongs to pytest-timeout).
        old = signal.signal(signal.SIGUSR1, lambda signum, frame: fired.append(signum))
        timer = threading.Timer(0.1, signal.pthread_kill, args=(main, signal.SIGUSR1))
        try:
            start = time.monotonic()
            timer.start()
            events = p.poll(5000)
            elapsed = time.monotonic() - start
        finally:
            timer.cancel()
            timer.join()
            signal.signal(signal.SIGUSR1, old)
        assert events == []
        assert fired == [signal.SIGUSR1]
        assert 0.05 <= elapsed < 4

    def test_close_is_idempotent_and_releases_the_fd(self, backend: Backend) -> None:
        p = backend()
        fd = p.fileno()  # type: ignore[attr-defined]
        assert not os.get_inheritable(fd)
        p.close()
        with pytest.raises(OSError):
            os.fstat(fd)
        p.close()


# -- epoll-specific facts the loop relies on (or must guard against) ---------------------


@pytest.mark.skipif(not LINUX, reason="epoll only")
def test_epoll_reports_hup_even_with_no_interest(socks: Sockets) -> None:
    """``modify(fd, token, 0)`` cannot silence EPOLLHUP / EPOLLERR: epoll always reports them.

    A connection with no interest left (reads paused, nothing to write) whose peer goes
    away is therefore still reported, every turn, until it is unregistered.
    """
    p = _epoll(8)
    try:
        a, b = socks.tcp_pair()
        p.register(a.fileno(), 21, 0)
        b.shutdown(socket.SHUT_WR)
        a.shutdown(socket.SHUT_WR)
        time.sleep(0.02)
        assert p.poll(100) == [(EV_HUP, 21)]
        assert p.poll(0) == [(EV_HUP, 21)]
        p.unregister(a.fileno())
        assert p.poll(0) == []
    finally:
        p.close()


@pytest.mark.skipif(not LINUX, reason="epoll only")
def test_epoll_quirk_close_without_unregister_while_duplicated(socks: Sockets) -> None:
    """Why every fd is unregistered before ``close``: epoll watches the description.

    Closing a number whose description is still open elsewhere (a ``dup``, a forked child)
    leaves the registration alive, still reporting the old token.
    """
    p = _epoll(8)
    try:
        a, a_peer = socks.pair()
        p.register(a.fileno(), 1, EV_READ)
        survivor = socket.socket(fileno=os.dup(a.fileno()))
        socks.track(survivor)
        a.close()
        a_peer.send(b"x")
        assert p.poll(100) == [(EV_READ, 1)]  # the dead number's token keeps coming
    finally:
        p.close()


def test_peer_closed_peeks_without_consuming() -> None:
    a, b = socket.socketpair()
    with a, b:
        a.setblocking(False)
        assert not peer_closed(a.fileno())  # open, nothing to read
        b.sendall(b"data")
        assert not peer_closed(a.fileno())  # open, data waiting ...
        assert a.recv(16) == b"data"  # ... and still there
        b.close()
        assert peer_closed(a.fileno())  # EOF
    if not hasattr(select, "POLLRDHUP"):
        return  # (macOS, BSD: the recv peek sees the EOF once the bytes are read)
    c, d = socket.socketpair()
    with c, d:
        d.sendall(b"last words")
        d.close()
        assert peer_closed(c.fileno())  # gone, though its last bytes are unread ...
        assert c.recv(64) == b"last words"  # ... and still there
        assert peer_closed(c.fileno())
