# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The compiled step (optional; see docs/architecture.md, "The compiled step").

* :func:`span` and :func:`dispatch`: cutting and dispatch for ``Prefixed(<int>,
  GreedyBytes)`` reads.  ``FramePipeline.received`` uses them when this module is built
  and the pipeline's codec, decoder and class allow it (see ``gevwire/pipeline.py``);
  without it the same read goes through the decoder's batch cutter and
  ``FramePipeline.dispatch``, which they must equal in every observable effect
  (tests/test_speedups.py).
* :class:`TLSPath`: a TLS connection's records once its handshake is done: read,
  decrypt, the pipeline, encrypt, write (``TLSConnection`` installs it; the pure path is
  ``ReadinessTLSIO._on_events``, ``TLSConnection._tls_received`` / ``_write`` and
  ``TLSSession.receive`` / ``send``; tests/test_speedups_tls.py compares the two).
"""

from cpython.buffer cimport PyBUF_READ
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.memoryview cimport PyMemoryView_FromMemory
from cpython.list cimport PyList_Append
from libc.errno cimport EAGAIN, EINTR, errno
from libc.stdint cimport int64_t, uint64_t
from libc.string cimport strerror
from posix.unistd cimport read as c_read, write as c_write

cdef extern from "<errno.h>":
    int EWOULDBLOCK

import ssl as _ssl

from gevwire._connstate import ConnState as _ConnState
from gevwire._sys._poller import EV_ERROR, EV_HUP, EV_RDHUP, EV_READ, EV_WRITE
from gevwire.errors import TLSError as _TLSError


cdef inline int64_t _length(const unsigned char* p, int size, bint big, bint signed):
    """The header's integer at ``p``."""
    cdef uint64_t value = 0
    cdef int i
    if big:
        for i in range(size):
            value = (value << 8) | p[i]
    else:
        for i in range(size - 1, -1, -1):
            value = (value << 8) | p[i]
    if signed and size < 8 and value >> (8 * size - 1):
        return <int64_t>value - (<int64_t>1 << (8 * size))
    return <int64_t>value


cdef inline int64_t _payload(const unsigned char* p, Py_ssize_t pos, Py_ssize_t n,
                             int header, bint big, bint signed, int64_t adjust,
                             int64_t most):
    """The payload size of the frame at ``pos``, or -1 when it is not whole and valid
    (incomplete, over ``most``, or negative: ``decode`` says which)."""
    cdef int64_t length
    if n - pos < header:
        return -1
    length = _length(p + pos, header, big, signed) + adjust
    if length < 0 or length > most or length > n - pos - header:
        return -1
    return length


def span(bytes data, int header, bint big, bint signed, int64_t adjust, int64_t most):
    """``(used, cut)``: the bytes of the whole frames at the start of ``data`` and how
    many; ``cut`` is -1 when the first frame is the whole of ``data``."""
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(data)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
    cdef Py_ssize_t pos = 0, cut = 0
    cdef int64_t length
    while True:
        length = _payload(p, pos, n, header, big, signed, adjust, most)
        if length < 0:
            break
        pos += header + length
        cut += 1
        if cut == 1 and pos == n:
            return n, -1
    return pos, cut


def dispatch(bytes data, Py_ssize_t used, object pipe, object on_message, object conn,
             list pending, object encode_into, object pack, int header, bint big,
             bint signed, int64_t adjust, Py_ssize_t high_water):
    """Dispatch the whole frames in ``data[:used]`` (found by :func:`span`) as
    ``FramePipeline.dispatch`` does, gathering replies in ``pending``.

    Returns ``(replies, gathered, error)``: the replies gathered, their bytes since the
    last mid-read flush, and the exception a handler or an encode raised (None when
    none did).  Stops after a frame whose handler closed the connection.
    """
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(data)
    cdef Py_ssize_t pos = 0, start, size
    cdef Py_ssize_t replies = 0, gathered = 0
    cdef int64_t length
    cdef object reply, prefix
    while pos < used:
        length = _length(p + pos, header, big, signed) + adjust
        start = pos + header
        pos = start + length
        try:
            reply = on_message(conn, PyBytes_FromStringAndSize(<char*>p + start, length))
            if reply is not None:
                replies += 1
                if type(reply) is bytes:
                    size = PyBytes_GET_SIZE(reply)
                    try:
                        prefix = pack(size)
                    except Exception:  # (too long for its header: the typed error)
                        gathered += encode_into(pending, reply)
                    else:
                        PyList_Append(pending, prefix)
                        PyList_Append(pending, reply)
                        gathered += header + size
                else:
                    gathered += encode_into(pending, reply)
                if gathered > high_water:
                    gathered = 0
                    pipe.flush_gathered()
        except Exception as exc:
            return replies, gathered, exc
        if pipe.stopped:
            break
    return replies, gathered, None



# -- TLS ---------------------------------------------------------------------------

cdef int _FLUSHING = _ConnState.FLUSHING
cdef int _CLOSED = _ConnState.CLOSED
cdef int _READ_EVENTS = EV_READ | EV_ERROR | EV_HUP | EV_RDHUP
cdef int _EV_WRITE = EV_WRITE
#: Plaintext asked of OpenSSL per read call (tls.py's _READ_SIZE: one record's most).
cdef Py_ssize_t _READ_SIZE = 16 << 10
cdef object _SSLWantRead = _ssl.SSLWantReadError
cdef object _SSLZeroReturn = _ssl.SSLZeroReturnError
cdef object _SSLError = _ssl.SSLError


cdef class TLSPath:
    """One TLS connection's records after its handshake, compiled.

    ``received(data)`` is ``TLSConnection._tls_received(data)``; ``on_events(events)``
    (a readiness loop's callback, after :meth:`read_into`) is
    ``ReadinessTLSIO._on_events(events)``: the same effects in the same order.  The
    steady state runs here (ciphertext read into ``spare``, copied into the session's
    MemoryBIO, decrypted, the plaintext to ``FramePipeline.received``, a reply encrypted
    and written at once); every other case (the session closed, failed or past the
    peer's close_notify, a write event, a paused or closing connection, an empty reply)
    is handed to those Python methods.

    ``incoming``, ``outgoing`` and ``sslobj`` are the session's MemoryBIOs and its
    ``read`` / ``write`` / ``pending`` object (``TLSSession.compiled_parts``).  Records
    are written through ``io.write`` unless :meth:`read_into` was called.
    """

    cdef object conn, io, tls, loop, spare
    cdef object pipe_received, incoming, incoming_write, outgoing, outgoing_read
    cdef object ssl_read, ssl_write, ssl_pending
    cdef int fd
    cdef char* buf
    cdef Py_ssize_t buf_size

    def __init__(self, conn, io, tls, incoming, outgoing, sslobj):
        self.conn = conn
        self.io = io
        self.tls = tls
        self.loop = conn.loop
        self.pipe_received = conn._pipe.received
        self.incoming = incoming
        self.incoming_write = incoming.write
        self.outgoing = outgoing
        self.outgoing_read = outgoing.read
        self.ssl_read = sslobj.read
        self.ssl_write = sslobj.write
        self.ssl_pending = sslobj.pending
        self.fd = io.fd

    def read_into(self, bytearray spare not None):
        """Read the socket here (a readiness loop's ``spare`` buffer: each read is
        copied into the MemoryBIO before anything else runs) and write records to it
        directly: :meth:`on_events` is then the fd's callback."""
        self.spare = spare  # (kept: buf points into it)
        self.buf = PyByteArray_AS_STRING(spare)
        self.buf_size = PyByteArray_GET_SIZE(spare)

    def on_events(self, int events):
        """``ReadinessTLSIO._on_events``: a read event's records, read into ``spare``."""
        cdef object conn = self.conn
        cdef Py_ssize_t n
        cdef int err
        if (events & _EV_WRITE or not events & _READ_EVENTS or self.buf == NULL
                or <int>conn._state >= _FLUSHING or conn._holds):
            self.io._on_events(events)
            return
        n = c_read(self.fd, self.buf, self.buf_size)
        if n > 0:
            loop = self.loop
            loop.bytes_in += n
            conn._last_active = loop.now
            # (the MemoryBIO copies it out before anything else can use spare)
            self.received(PyMemoryView_FromMemory(self.buf, n, PyBUF_READ))
        elif n == 0:
            conn._tls_eof()
        else:
            err = errno
            if err == EAGAIN or err == EINTR or err == EWOULDBLOCK:
                return
            self.io._read_error(OSError(err, strerror(err).decode()))

    def received(self, data):
        """``TLSConnection._tls_received(data)``: ciphertext from the peer."""
        cdef object conn = self.conn
        cdef object tls = self.tls
        cdef object plain = None
        cdef list chunks = None
        if not tls._ready or tls.eof:
            conn._tls_received(data)
            return
        # TLSSession.receive
        self.incoming_write(data)
        try:
            while True:
                chunk = self.ssl_read(_READ_SIZE)
                if not chunk:  # close_notify
                    tls.eof = True
                    break
                if plain is None:
                    plain = chunk
                else:
                    if chunks is None:
                        chunks = [plain]
                    chunks.append(chunk)
                if not self.incoming.pending and not self.ssl_pending():
                    break  # all read: asking again would raise SSLWantReadError
        except _SSLWantRead:
            pass
        except _SSLZeroReturn:
            tls.eof = True
        except _SSLError as exc:
            error = tls._failed(_TLSError, exc)
            error.__cause__ = exc
            conn._tls_failed(error)
            return
        if chunks is not None:
            plain = b"".join(chunks)
        # TLSConnection._tls_received
        if self.outgoing.pending and <int>conn._state != _CLOSED:
            self.io.write(self.outgoing_read())
        if plain is not None and <int>conn._state < _FLUSHING:
            reply = self.pipe_received(plain)
            if reply is not None:
                self.send(reply)
        if tls.eof and <int>conn._state < _FLUSHING:
            conn._on_eof()

    cdef send(self, bytes reply):
        """``TLSConnection._write(reply)``: encrypt, and write the records at once."""
        cdef object conn = self.conn
        cdef object tls = self.tls
        cdef Py_ssize_t size, n
        cdef int err
        if <int>conn._state == _CLOSED:
            return
        if not tls._ready or not reply:
            conn._write(reply)
            return
        try:
            self.ssl_write(reply)
        except _SSLError as exc:
            error = tls._failed(_TLSError, exc)
            error.__cause__ = exc
            if not conn._pipe.stopped:
                conn._tls_failed(error)
            return
        cipher = self.outgoing_read()
        io = self.io
        size = PyBytes_GET_SIZE(cipher)
        if not size:
            return
        if self.buf == NULL or io._deferred is not None or io._output._len:
            io.write(cipher)  # (a completion backend's send; or behind buffered output)
            return
        n = c_write(self.fd, PyBytes_AS_STRING(cipher), size)
        if n == size:
            self.loop.bytes_out += n
        elif n >= 0:
            io._write_rest(cipher, n)
        else:
            err = errno
            io._write_error(cipher, OSError(err, strerror(err).decode()))
