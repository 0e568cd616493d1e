"""``gevwire._sys._uring`` against real fds: each opcode, multishot accept and recv, the
provided-buffer ring, cancellation, errors as negative results, and the availability
check.  Skipped with the reason where io_uring is unavailable."""

from __future__ import annotations

import errno
import os
import socket
import time
from collections.abc import Iterator

import pytest

from gevwire._sys import _uring, address_of
from gevwire._sys._uring import CQE_F_BUFFER, CQE_F_MORE, BufferRing, Ring

AVAILABLE, REASON = _uring.availability()
pytestmark = pytest.mark.skipif(not AVAILABLE, reason=f"io_uring unavailable: {REASON}")


@pytest.fixture
def ring() -> Iterator[Ring]:
    r = Ring(64, cq_entries=256)
    r.enable()
    yield r
    r.close()


def reap(ring: Ring, count: int, timeout: float = 5.0) -> list[tuple[int, int, int]]:
    """Enter until ``count`` completions have arrived (bounded by ``timeout``)."""
    got: list[tuple[int, int, int]] = []
    deadline = time.monotonic() + timeout
    while len(got) < count:
        left = deadline - time.monotonic()
        assert left > 0, f"only {got} of {count} completions"
        result = ring.enter(1, int(left * 1000) + 1)
        assert result >= 0 or result in (-errno.ETIME, -errno.EINTR), result
        got += ring.completions()
    return got


def test_availability_is_cached_and_explains_itself() -> None:
    ok, reason = _uring.availability()
    assert ok is AVAILABLE
    assert (reason == "") is ok


def test_availability_reports_a_reason_when_disabled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GEVWIRE_NO_URING", "1")
    try:
        ok, reason = _uring.availability(refresh=True)
        assert not ok and "GEVWIRE_NO_URING" in reason
    finally:
        monkeypatch.delenv("GEVWIRE_NO_URING")
        assert _uring.availability(refresh=True) == (True, "")


def test_old_kernel_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_uring, "_kernel_version", lambda: (5, 10))
    try:
        ok, reason = _uring.availability(refresh=True)
        assert not ok and "older than" in reason
    finally:
        monkeypatch.undo()
        _uring.availability(refresh=True)


def test_setup_refusal_becomes_uring_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_uring, "_sys", lambda *args: -errno.EPERM)
    with pytest.raises(_uring.UringUnavailable, match="EPERM"):
        Ring(8)


def test_probe_lists_every_required_opcode(ring: Ring) -> None:
    supported = ring.probe()
    assert set(_uring.REQUIRED_OPS) <= supported


def test_nop_round_trip_and_batching(ring: Ring) -> None:
    for i in range(10):
        ring.nop(100 + i)
    assert ring.enter(10, 5000) == 10  # ten submissions, one syscall
    got = list(ring.completions())
    assert sorted(ud for ud, _, _ in got) == list(range(100, 110))
    assert all(res == 0 for _, res, _ in got)


def test_more_submissions_than_the_sq_holds_are_submitted_in_turn(ring: Ring) -> None:
    for i in range(ring.sq_entries * 3):
        ring.nop(i)
    got = reap(ring, ring.sq_entries * 3)
    assert sorted(ud for ud, _, _ in got) == list(range(ring.sq_entries * 3))


def test_send_and_recv_into_an_address() -> None:
    a, b = socket.socketpair()
    r = Ring(16)
    r.enable()
    try:
        data = b"hello io_uring"
        r.send(a.fileno(), _uring.bytes_address(data), len(data), 1)
        buf = bytearray(64)
        r.recv(b.fileno(), address_of(buf), len(buf), 2)
        got = dict((ud, res) for ud, res, _ in reap(r, 2))
        assert got == {1: len(data), 2: len(data)}
        assert bytes(buf[: len(data)]) == data
    finally:
        r.close()
        a.close()
        b.close()


def test_bytes_address_points_at_the_bytes() -> None:
    data = bytes(range(256)) * 4
    a, b = socket.socketpair()
    r = Ring(8)
    r.enable()
    try:
        r.send(a.fileno(), _uring.bytes_address(data) + 100, 200, 5)
        assert reap(r, 1)[0][:2] == (5, 200)
        assert b.recv(1000) == data[100:300]
    finally:
        r.close()
        a.close()
        b.close()


def test_writev_gathers(ring: Ring) -> None:
    import struct

    a, b = socket.socketpair()
    try:
        parts = [b"abc", b"defgh"]
        iov = bytearray(32)
        struct.pack_into("=QQQQ", iov, 0, _uring.bytes_address(parts[0]), 3,
                         _uring.bytes_address(parts[1]), 5)
        ring.writev(a.fileno(), address_of(iov), 2, 9)
        assert reap(ring, 1)[0][:2] == (9, 8)
        assert b.recv(100) == b"abcdefgh"
    finally:
        a.close()
        b.close()


def test_errors_are_negative_results(ring: Ring) -> None:
    r_fd, w_fd = os.pipe()
    os.close(r_fd)
    os.close(w_fd)
    ring.send(w_fd, _uring.bytes_address(b"x"), 1, 1)  # a closed fd
    ring.close_fd(w_fd, 2)
    got = dict((ud, res) for ud, res, _ in reap(ring, 2))
    assert got[1] == -errno.EBADF
    assert got[2] == -errno.EBADF


def test_multishot_recv_with_buffer_ring_and_recycle(ring: Ring) -> None:
    a, b = socket.socketpair()
    bufs = BufferRing(ring, group=3, count=4, size=64)
    try:
        ring.recv_multishot(b.fileno(), 3, 42)
        seen = []
        for i in range(12):  # three times the buffer count: only works if recycled
            a.send(b"message %d" % i)
            ud, res, flags = reap(ring, 1)[0]
            assert ud == 42 and flags & CQE_F_BUFFER and flags & CQE_F_MORE
            bid = flags >> 16
            start = bid * bufs.size
            seen.append(bytes(bufs.view[start: start + res]))
            bufs.recycle(bid)
        assert seen == [b"message %d" % i for i in range(12)]
        a.close()  # EOF: res 0 and the multishot ends (no F_MORE)
        ud, res, flags = reap(ring, 1)[0]
        assert (ud, res) == (42, 0) and not flags & CQE_F_MORE
    finally:
        b.close()
        bufs.close()


def test_buffer_ring_exhaustion_ends_multishot_with_enobufs(ring: Ring) -> None:
    a, b = socket.socketpair()
    bufs = BufferRing(ring, group=1, count=2, size=16)
    try:
        ring.recv_multishot(b.fileno(), 1, 7)
        results = []
        for _i in range(3):
            a.send(b"x" * 8)
            results += reap(ring, 1)
            time.sleep(0.01)
        assert [res for _, res, _ in results[:2]] == [8, 8]
        ud, res, flags = results[2]
        assert res == -errno.ENOBUFS and not flags & CQE_F_MORE
        for _, _, flags in results[:2]:
            bufs.recycle(flags >> 16)
        ring.recv_multishot(b.fileno(), 1, 8)  # re-armed: the waiting bytes arrive
        ud, res, flags = reap(ring, 1)[0]
        assert ud == 8 and res == 8
    finally:
        a.close()
        b.close()
        bufs.close()


def test_multishot_accept_on_a_loopback_listener(ring: Ring) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    clients = []
    try:
        ring.accept_multishot(listener.fileno(), 11,
                              socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        for _ in range(3):
            clients.append(socket.create_connection(listener.getsockname()))
        got = reap(ring, 3)
        for ud, fd, flags in got:
            assert ud == 11 and fd >= 0 and flags & CQE_F_MORE
            assert not os.get_blocking(fd)
            accepted = socket.socket(fileno=fd)
            assert accepted.getpeername() in [c.getsockname() for c in clients]
            accepted.close()
        ring.cancel(11, 12)
        got = dict((ud, res) for ud, res, _ in reap(ring, 2))
        assert got == {11: -errno.ECANCELED, 12: 0}
    finally:
        for c in clients:
            c.close()
        listener.close()


def test_cancel_a_pending_recv_and_a_missing_one(ring: Ring) -> None:
    a, b = socket.socketpair()
    try:
        buf = bytearray(16)
        ring.recv(b.fileno(), address_of(buf), 16, 1)
        ring.enter(0)
        ring.cancel(1, 2)
        ring.cancel(999, 3)
        got = dict((ud, res) for ud, res, _ in reap(ring, 3))
        assert got == {1: -errno.ECANCELED, 2: 0, 3: -errno.ENOENT}
    finally:
        a.close()
        b.close()


def test_poll_add_on_an_eventfd(ring: Ring) -> None:
    efd = os.eventfd(0, os.EFD_NONBLOCK)
    try:
        ring.poll_add(efd, 0x001, 5, multishot=True)  # POLLIN
        ring.enter(0)
        assert list(ring.completions()) == []
        os.eventfd_write(efd, 1)
        ud, res, flags = reap(ring, 1)[0]
        assert ud == 5 and res & 0x001 and flags & CQE_F_MORE
        os.eventfd_read(efd)
        os.eventfd_write(efd, 1)
        assert reap(ring, 1)[0][0] == 5
        ring.cancel(5, 6)
        reap(ring, 2)
    finally:
        os.close(efd)


def test_shutdown_and_close(ring: Ring) -> None:
    a, b = socket.socketpair()
    try:
        ring.shutdown(a.fileno(), socket.SHUT_WR, 1)
        assert reap(ring, 1)[0][:2] == (1, 0)
        assert b.recv(10) == b""  # FIN
        fd = a.detach()
        ring.close_fd(fd, 2)
        assert reap(ring, 1)[0][:2] == (2, 0)
        with pytest.raises(OSError):
            os.fstat(fd)
    finally:
        b.close()


def test_timeout_and_enter_timeout(ring: Ring) -> None:
    start = time.monotonic()
    assert ring.enter(1, 50) == -errno.ETIME  # nothing to complete: the wait times out
    assert 0.04 <= time.monotonic() - start < 2
    ring.timeout(0.05, 4)
    ud, res, _ = reap(ring, 1)[0]
    assert ud == 4 and res == -errno.ETIME
