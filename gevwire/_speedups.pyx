# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Compiled cutting and dispatch for ``Prefixed(<int>, GreedyBytes)`` reads (optional).

``FramePipeline.received`` uses these when this module is built and the pipeline's
codec, decoder and class allow it (see ``gevwire/pipeline.py``); without it the same
read goes through the decoder's batch cutter and ``FramePipeline.dispatch``, which they
must equal in every observable effect (tests/test_speedups.py).
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.list cimport PyList_Append
from libc.stdint cimport int64_t, uint64_t


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
