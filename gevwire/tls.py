"""``TLSSession``: TLS over memory buffers, sans I/O (the standard library's
``ssl.MemoryBIO`` and ``SSLContext.wrap_bio``).

A session never sees a socket (h11's rule, as the frame pipeline): the transport feeds
it the ciphertext it read and writes the ciphertext it is given.

* :meth:`TLSSession.receive` takes ciphertext and returns the plaintext it held; the
  handshake, TLS 1.3 session tickets and key updates are handled on the way.  What the
  session has to send in answer (handshake records, alerts) is then in
  :meth:`TLSSession.outgoing`.
* :meth:`TLSSession.send` takes plaintext and returns its ciphertext (with whatever
  handshake records were waiting before it).  Plaintext sent before the handshake is
  done is held and encrypted once it is.
* :meth:`TLSSession.close` returns a ``close_notify`` alert; a ``close_notify`` from the
  peer sets :attr:`TLSSession.eof`.

Failures are typed: :class:`~gevwire.TLSHandshakeError` while the handshake runs (the
peer is not a TLS client, offers nothing we accept, or its certificate fails), then
:class:`~gevwire.TLSError`; each carries OpenSSL's ``reason`` (``"WRONG_VERSION_NUMBER"``,
``"HTTP_REQUEST"``, ``"CERTIFICATE_VERIFY_FAILED"`` ...).  After a failure the alert
OpenSSL made for the peer, if any, is still in :meth:`TLSSession.outgoing`.
"""

from __future__ import annotations

import ssl
from typing import Any, Literal, overload

from gevwire.errors import TLSError, TLSHandshakeError

__all__ = ["TLSSession"]

#: Plaintext asked for per ``read`` call: one record's most (OpenSSL returns one record's
#: plaintext per call; a larger size would only allocate more for each).
_READ_SIZE = 16 << 10


class TLSSession:
    """One TLS connection's state, server side or client side (see the module docstring).

    ``context`` is the :class:`ssl.SSLContext` (its ``sni_callback``, ALPN protocols,
    certificates and verification apply as for a socket); a client gives
    ``server_hostname`` for SNI and host name checking.
    """

    __slots__ = ("_held", "_incoming", "_obj", "_outgoing", "_ready", "_rec_have", "_rec_head",
                 "_rec_need", "closed", "eof", "failed", "handshake_done", "track_records")

    def __init__(
        self,
        context: ssl.SSLContext,
        *,
        server_side: bool,
        server_hostname: str | None = None,
    ) -> None:
        if server_side:
            _record_sni(context)
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._obj: ssl.SSLObject | _Released = context.wrap_bio(
            self._incoming, self._outgoing, server_side=server_side,
            server_hostname=server_hostname)
        #: True once the handshake has completed.
        self.handshake_done = False
        #: True once the peer's stream ended: its ``close_notify`` (a clean end), or the
        #: transport's EOF, which the transport may set here (then nothing is read after).
        self.eof = False
        #: True once :meth:`close` made our ``close_notify``: nothing more can be sent.
        self.closed = False
        #: True once a :class:`~gevwire.TLSError` was raised: the session is unusable.
        self.failed = False
        self._ready = False  # handshake done, neither closed nor failed: send's fast path
        self._held: list[bytes] | None = None  # plaintext sent before the handshake ended
        #: Follow the record boundaries of what is received, for :attr:`buffered`.
        self.track_records = False
        self._rec_head = b""  # a record header's first bytes, while it is incomplete
        self._rec_need = 0  # the current record's size, header included (0: at a boundary)
        self._rec_have = 0  # of it, bytes received

    # -- ciphertext in -----------------------------------------------------------------

    def start(self) -> bytes:
        """Begin the handshake; returns what to send first (a client's ClientHello; a
        server has nothing to say until the peer speaks)."""
        self._handshake()
        return self.outgoing()

    def receive(self, data: bytes | memoryview) -> bytes:
        """Feed ciphertext read from the peer (copied in: a view may be reused after);
        return the plaintext it completed
        (``b""`` when it held none yet).  Raises :class:`~gevwire.TLSHandshakeError`
        or :class:`~gevwire.TLSError`; check :meth:`outgoing` after every call."""
        if self.failed or self.eof:  # (after the peer's end nothing is read)
            return b""
        if data:
            self._incoming.write(data)
            if self.track_records:
                self._track(data)
        if not self.handshake_done and not self._handshake():
            return b""
        obj = self._obj
        incoming = self._incoming
        chunks: list[bytes] = []
        try:
            while True:
                chunk = obj.read(_READ_SIZE)
                if not chunk:  # (the standard library's SSLObject: close_notify)
                    self.eof = True
                    break
                chunks.append(chunk)
                if not incoming.pending and not obj.pending():
                    break  # all read: asking again would raise SSLWantReadError (~1 µs)
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLZeroReturnError:
            self.eof = True
        except ssl.SSLError as exc:
            raise self._failed(TLSError, exc) from exc
        if not chunks:
            return b""
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _handshake(self) -> bool:
        """Advance the handshake; True once it is done (held plaintext then encrypted)."""
        try:
            self._obj.do_handshake()
        except ssl.SSLWantReadError:
            return False
        except ssl.SSLError as exc:
            raise self._failed(TLSHandshakeError, exc) from exc
        self.handshake_done = True
        self._ready = not (self.closed or self.failed)
        held = self._held
        if held is not None:
            self._held = None
            self._write(b"".join(held))
        return True

    def _track(self, data: bytes | memoryview) -> None:
        """Move the record boundary over ``data`` (a few steps per read: a record is up
        to 16 KiB; OpenSSL keeps a partial record inside, where it cannot be asked)."""
        pos, size = 0, len(data)
        head, need, have = self._rec_head, self._rec_need, self._rec_have
        while pos < size:
            if not need:
                take = min(5 - len(head), size - pos)
                head += data[pos:pos + take]
                pos += take
                if len(head) == 5:
                    need, have, head = 5 + (head[3] << 8 | head[4]), 5, b""
                continue
            take = min(need - have, size - pos)
            have += take
            pos += take
            if have == need:
                need = have = 0
        self._rec_head, self._rec_need, self._rec_have = head, need, have

    @property
    def buffered(self) -> int:
        """Bytes of a record received only in part (with :attr:`track_records`; else 0)."""
        return self._rec_have or len(self._rec_head)

    # -- ciphertext out ----------------------------------------------------------------

    def outgoing(self) -> bytes:
        """Ciphertext waiting to be sent (handshake records, tickets, alerts), or b""."""
        out = self._outgoing
        return out.read() if out.pending else b""

    def send(self, data: bytes) -> bytes:
        """Encrypt ``data``; returns every byte to send now, after anything waiting.

        Before the handshake is done the plaintext is held (and ``b""`` or handshake
        records returned); it leaves encrypted, in order, once the handshake ends.
        """
        if self._ready and data:  # (the common case, kept short)
            try:
                self._obj.write(data)
            except ssl.SSLError as exc:
                raise self._failed(TLSError, exc) from exc
            return self._outgoing.read()
        if self.failed or self.closed:
            raise TLSError("SESSION_CLOSED", "the TLS session is closed or failed")
        if not self.handshake_done:
            if self._held is None:
                self._held = []
            self._held.append(data)
        else:
            self._write(data)
        return self.outgoing()

    def _write(self, data: bytes) -> None:
        if self.failed or self.closed:
            raise TLSError("SESSION_CLOSED", "the TLS session is closed or failed")
        if not data:
            return
        try:
            self._obj.write(data)
        except ssl.SSLError as exc:
            raise self._failed(TLSError, exc) from exc

    def _failed(self, kind: type[TLSError], exc: ssl.SSLError) -> TLSError:
        self.failed = True
        self._ready = False
        return _error(kind, exc)

    def close(self) -> bytes:
        """Our ``close_notify`` (after the held plaintext, if the handshake is done),
        or b"" when there is nothing to close cleanly: the handshake never ended, the
        session failed, or it was closed already."""
        if not self.handshake_done or self.failed or self.closed:
            return b""
        self.closed = True
        self._ready = False
        try:
            self._obj.unwrap()
        except ssl.SSLWantReadError:
            pass  # sent ours; the peer's may follow (not waited for)
        except ssl.SSLError:
            pass  # the session is broken: there is no clean end to send
        return self.outgoing()

    def release(self) -> None:
        """Free OpenSSL's state for this connection (it is closed): what was negotiated
        stays readable, nothing more can be sent or received.

        A connection object may live on until the cyclic garbage collector finds it;
        OpenSSL's part (~20 KiB) should not wait for that: a peer failing handshakes
        by the thousand would otherwise hold megabytes until a full collection."""
        obj = self._obj
        if isinstance(obj, _Released):
            return
        self._obj = _Released(obj, self.handshake_done)
        self._ready = False
        self.closed = True
        self.eof = True

    def compiled_parts(self) -> tuple[ssl.MemoryBIO, ssl.MemoryBIO, Any]:
        """For the compiled step (``gevwire._speedups.TLSPath``): the incoming and
        outgoing MemoryBIOs, and the object whose ``read`` / ``write`` / ``pending``
        move the records: the ``SSLObject``'s own C object where the standard library
        has one (its Python wrapper adds a call level), else the ``SSLObject``."""
        obj = self._obj
        return self._incoming, self._outgoing, getattr(obj, "_sslobj", obj)

    # -- what was negotiated -----------------------------------------------------------

    @property
    def alpn_protocol(self) -> str | None:
        """The protocol chosen by ALPN, or None."""
        return self._obj.selected_alpn_protocol()

    @property
    def server_hostname(self) -> str | None:
        """The host name in SNI: the one a client sent (server side), or the one given
        (client side); None without SNI."""
        obj = self._obj
        if obj.server_side:
            name: str | None = getattr(obj, "_gevwire_sni", None)
            return name
        return obj.server_hostname

    @property
    def peer_certificate(self) -> dict[str, Any] | None:
        """The peer's certificate as ``SSLSocket.getpeercert()`` gives it (verified
        certificates only: a server sees the client's with ``CERT_REQUIRED`` or
        ``CERT_OPTIONAL``), or None."""
        if not self.handshake_done:
            return None
        try:
            cert = self._obj.getpeercert()
        except ValueError:  # (OpenSSL's state after a failure)
            return None
        return cert or None

    @property
    def peer_certificate_der(self) -> bytes | None:
        """The peer's certificate in DER form (present even when not verified), or None."""
        if not self.handshake_done:
            return None
        try:
            return self._obj.getpeercert(binary_form=True)
        except ValueError:
            return None

    @property
    def tls_version(self) -> str | None:
        """``"TLSv1.3"``, ``"TLSv1.2"`` ..., once the handshake is done."""
        return self._obj.version() if self.handshake_done else None

    @property
    def cipher(self) -> tuple[str, str, int] | None:
        """``(name, protocol, secret bits)`` of the cipher in use, once negotiated."""
        return self._obj.cipher() if self.handshake_done else None


def _error(kind: type[TLSError], exc: ssl.SSLError) -> TLSError:
    """``exc`` as gevwire's typed error, with OpenSSL's reason."""
    reason = getattr(exc, "reason", None) or type(exc).__name__
    if isinstance(exc, ssl.SSLEOFError):
        reason = "UNEXPECTED_EOF"
    verify = getattr(exc, "verify_message", None)
    detail = f"{reason}: {verify}" if verify else str(exc)
    return kind(reason, detail)


class _RecordSNI:
    """A context's ``sni_callback`` that notes the name on the ``SSLObject`` (the
    standard library tells a server the client's SNI only there), then calls the
    application's own callback, if it set one."""

    __slots__ = ("callback",)

    def __init__(self, callback: Any) -> None:
        self.callback = callback

    def __call__(self, obj: Any, name: str | None, context: ssl.SSLContext) -> Any:
        obj._gevwire_sni = name
        if self.callback is not None:
            return self.callback(obj, name, context)
        return None


def _record_sni(context: ssl.SSLContext) -> None:
    """Make ``context`` record SNI (once; an application callback set later is wrapped
    again at the next session)."""
    if not isinstance(context.sni_callback, _RecordSNI):
        context.sni_callback = _RecordSNI(context.sni_callback)


class _Released:
    """What a released session keeps of its ``SSLObject``: the negotiated values.  Any
    I/O on it is an ``ssl.SSLError`` (a :class:`~gevwire.TLSError` to the caller)."""

    __slots__ = ("_alpn", "_cert", "_cert_der", "_cipher", "_gevwire_sni", "_version",
                 "server_hostname", "server_side")

    def __init__(self, obj: ssl.SSLObject, handshake_done: bool) -> None:
        self.server_side = obj.server_side
        self.server_hostname = obj.server_hostname
        self._gevwire_sni: str | None = getattr(obj, "_gevwire_sni", None)
        self._alpn = self._version = self._cipher = self._cert = self._cert_der = None
        if not handshake_done:
            return
        try:  # (a session that failed after its handshake may refuse some of these)
            self._alpn = obj.selected_alpn_protocol()
            self._version = obj.version()
            self._cipher = obj.cipher()
            self._cert = obj.getpeercert()
            self._cert_der = obj.getpeercert(binary_form=True)
        except (ValueError, ssl.SSLError):
            pass

    def selected_alpn_protocol(self) -> str | None:
        return self._alpn

    def version(self) -> str | None:
        return self._version

    def cipher(self) -> tuple[str, str, int] | None:
        return self._cipher

    @overload
    def getpeercert(self, binary_form: Literal[False] = ...) -> Any: ...

    @overload
    def getpeercert(self, binary_form: Literal[True]) -> bytes | None: ...

    def getpeercert(self, binary_form: bool = False) -> Any:
        return self._cert_der if binary_form else self._cert

    def pending(self) -> int:
        return 0

    def _closed(self, *args: Any) -> Any:
        raise ssl.SSLError("the TLS session was released (its connection is closed)")

    read = write = do_handshake = unwrap = _closed
