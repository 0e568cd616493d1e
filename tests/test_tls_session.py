"""``TLSSession`` without sockets: two sessions wired back to back through byte strings."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tls_support import Certs, make_certs

from gevwire import TLSError, TLSHandshakeError, TLSSession


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(Path(tmp_path_factory.mktemp("certs")))


def pair(certs: Certs, *, server_ctx: ssl.SSLContext | None = None,
         client_ctx: ssl.SSLContext | None = None,
         hostname: str | None = "localhost") -> tuple[TLSSession, TLSSession]:
    server = TLSSession(server_ctx or certs.server_context(), server_side=True)
    client = TLSSession(client_ctx or certs.client_context(), server_side=False,
                        server_hostname=hostname)
    return server, client


def shuttle(server: TLSSession, client: TLSSession, first: bytes = b"",
            rounds: int = 6) -> tuple[bytes, bytes]:
    """Move ciphertext both ways until neither side has more; returns the plaintext
    (server received, client received)."""
    to_server, got_server, got_client = first, [], []
    to_client = b""
    for _ in range(rounds):
        got_server.append(server.receive(to_server))
        to_client += server.outgoing()
        got_client.append(client.receive(to_client))
        to_client = b""
        to_server = client.outgoing()
        if not to_server and not server._outgoing.pending:
            break
    return b"".join(got_server), b"".join(got_client)


def handshake(server: TLSSession, client: TLSSession) -> None:
    shuttle(server, client, client.start())
    assert server.handshake_done and client.handshake_done


def test_handshake_and_data_both_ways(certs: Certs) -> None:
    server, client = pair(certs)
    assert server.tls_version is None and server.cipher is None
    handshake(server, client)
    assert server.tls_version == client.tls_version == "TLSv1.3"
    assert server.cipher is not None and server.cipher[0] == client.cipher[0]  # type: ignore[index]
    assert server.receive(client.send(b"hello")) == b"hello"
    assert client.receive(server.send(b"world")) == b"world"
    assert server.peer_certificate is None  # no client certificate asked for
    assert client.peer_certificate is not None
    assert ("DNS", "localhost") in client.peer_certificate["subjectAltName"]


def test_receive_copies_a_view_that_is_reused_after(certs: Certs) -> None:
    # The io_uring transport hands receive() a view of a provided buffer, which the
    # kernel refills once it goes back: the session must have copied what it needs,
    # a record's tail as well as whole records.
    server, client = pair(certs)
    handshake(server, client)
    server.track_records = True
    stream = client.send(b"a" * 3000) + client.send(b"b" * 100)
    buffer = bytearray(stream)
    cut = len(stream) - 40
    got = server.receive(memoryview(buffer)[:cut])
    buffer[:cut] = b"\0" * cut
    assert got == b"a" * 3000 and server.buffered == 100 + 22 - 40
    tail = memoryview(bytearray(stream[cut:]))
    got = server.receive(tail)
    tail[:] = b"\0" * len(tail)
    assert got == b"b" * 100 and server.buffered == 0
    assert server.receive(client.send(b"c")) == b"c"


def test_alpn_and_sni(certs: Certs) -> None:
    seen: list[str | None] = []
    server_ctx = certs.server_context(alpn=["h2", "redis"])
    server_ctx.sni_callback = lambda obj, name, ctx: seen.append(name)  # the app's own
    server, client = pair(certs, server_ctx=server_ctx,
                          client_ctx=certs.client_context(alpn=["redis"]))
    handshake(server, client)
    assert server.alpn_protocol == client.alpn_protocol == "redis"
    assert server.server_hostname == "localhost"  # what the client sent
    assert client.server_hostname == "localhost"
    assert seen == ["localhost"]  # the application's sni_callback still ran


def test_no_sni_is_none(certs: Certs) -> None:
    ctx = certs.client_context()
    ctx.check_hostname = False
    server, client = pair(certs, client_ctx=ctx, hostname=None)
    handshake(server, client)
    assert server.server_hostname is None
    assert server.alpn_protocol is None


def test_tls12(certs: Certs) -> None:
    server, client = pair(certs, client_ctx=certs.client_context(
        maximum=ssl.TLSVersion.TLSv1_2))
    handshake(server, client)
    assert server.tls_version == "TLSv1.2"
    assert client.receive(server.send(b"x" * 40000)) == b"x" * 40000


def test_mutual_tls_peer_certificate(certs: Certs) -> None:
    server, client = pair(certs, server_ctx=certs.server_context(
        client_certs=ssl.CERT_REQUIRED), client_ctx=certs.client_context(with_cert=True))
    handshake(server, client)
    cert = server.peer_certificate
    assert cert is not None
    subject = dict(item[0] for item in cert["subject"])
    assert subject["commonName"] == "test client"
    assert server.peer_certificate_der is not None


def test_mutual_tls_without_client_certificate_fails(certs: Certs) -> None:
    server, client = pair(certs, server_ctx=certs.server_context(
        client_certs=ssl.CERT_REQUIRED))
    with pytest.raises(TLSHandshakeError) as info:
        shuttle(server, client, client.start())
    assert info.value.reason in {"PEER_DID_NOT_RETURN_A_CERTIFICATE", "CERTIFICATE_REQUIRED"}
    # The alert for the client is still there to send, and the client learns of it.
    alert = server.outgoing()
    assert alert
    with pytest.raises(TLSError):
        client.receive(alert)


def test_untrusted_server_certificate(certs: Certs, tmp_path: Path) -> None:
    other = make_certs(tmp_path)  # another CA: the client trusts only that one
    server, client = pair(certs, client_ctx=other.client_context())
    with pytest.raises(TLSHandshakeError) as info:
        shuttle(server, client, client.start())
    assert info.value.reason == "CERTIFICATE_VERIFY_FAILED"
    assert "certificate" in str(info.value)


@pytest.mark.parametrize(("data", "reasons"), [
    (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", {"HTTP_REQUEST"}),
    (b"\x00" * 64, {"WRONG_VERSION_NUMBER", "UNEXPECTED_MESSAGE", "RECORD_LAYER_FAILURE"}),
    (b"\x16\x03\x01\x00\x05\x01\x00\x00\x01\x00", {"LENGTH_MISMATCH", "BAD_PACKET_LENGTH",
                                                   "RECORD_LAYER_FAILURE", "LENGTH_TOO_SHORT"}),
])
def test_not_a_client_hello(certs: Certs, data: bytes, reasons: set[str]) -> None:
    server = TLSSession(certs.server_context(), server_side=True)
    with pytest.raises(TLSHandshakeError) as info:
        server.receive(data)
    assert info.value.reason in reasons, info.value


def test_plaintext_sent_before_the_handshake_is_held_in_order(certs: Certs) -> None:
    server, client = pair(certs)
    hello = client.start()
    assert server.send(b"early-1") == b""  # held: no keys yet
    assert server.send(b"early-2") == b""
    _, to_client = shuttle(server, client, hello)
    assert to_client == b"early-1early-2"
    assert client.receive(server.send(b"-late")) == b"-late"


def test_close_notify_is_eof(certs: Certs) -> None:
    server, client = pair(certs)
    handshake(server, client)
    notify = client.close()
    assert notify
    assert server.receive(notify) == b""
    assert server.eof
    assert server.receive(b"") == b""


def test_data_then_close_notify_in_one_read(certs: Certs) -> None:
    server, client = pair(certs)
    handshake(server, client)
    data = client.send(b"bye") + client.close()
    assert server.receive(data) == b"bye"
    assert server.eof


def test_close_before_handshake_sends_nothing(certs: Certs) -> None:
    server, _ = pair(certs)
    assert server.close() == b""


def test_tampered_record_after_handshake_is_tls_error(certs: Certs) -> None:
    server, client = pair(certs)
    handshake(server, client)
    record = bytearray(client.send(b"secret"))
    record[-1] ^= 1
    with pytest.raises(TLSError) as info:
        server.receive(bytes(record))
    assert not isinstance(info.value, TLSHandshakeError)


def test_truncated_record_waits(certs: Certs) -> None:
    server, client = pair(certs)
    handshake(server, client)
    record = client.send(b"x" * 1000)
    assert server.receive(record[:-1]) == b""
    assert server.receive(record[-1:]) == b"x" * 1000


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(messages=st.lists(st.binary(min_size=1, max_size=3000), min_size=1, max_size=8),
       cuts=st.lists(st.integers(min_value=1, max_value=700), max_size=40))
def test_any_split_of_the_stream_gives_the_same_plaintext(
        certs: Certs, messages: list[bytes], cuts: list[int]) -> None:
    """However the ciphertext is cut into reads (handshake included), the plaintext that
    comes out is the plaintext that went in, in order."""
    server, client = pair(certs)
    stream = client.start()
    # The client's data is held until its handshake ends; the server's answer flows back.
    for message in messages:
        client.send(message)
    got: list[bytes] = []
    pos = 0
    cut_iter = iter(cuts)
    for _ in range(200):
        if pos >= len(stream):
            more = client.receive(server.outgoing())
            assert more == b""
            stream += client.outgoing()
            if pos >= len(stream):
                break
        step = min(next(cut_iter, len(stream)), len(stream) - pos)
        got.append(server.receive(stream[pos:pos + step]))
        pos += step
    assert b"".join(got) == b"".join(messages)


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sizes=st.lists(st.integers(min_value=1, max_value=40000), min_size=1, max_size=4),
       cut=st.integers(min_value=0, max_value=1 << 30))
def test_buffered_is_the_part_of_a_record_received(
        certs: Certs, sizes: list[int], cut: int) -> None:
    server, client = pair(certs)
    handshake(server, client)
    server.track_records = True
    stream = b"".join(client.send(b"x" * size) for size in sizes)
    cut %= len(stream) + 1
    got = server.receive(stream[:cut])
    # Walk the records by hand: what is past the last whole record is buffered.
    pos = 0
    while pos + 5 <= cut and pos + 5 + int.from_bytes(stream[pos + 3:pos + 5], "big") <= cut:
        pos += 5 + int.from_bytes(stream[pos + 3:pos + 5], "big")
    assert server.buffered == cut - pos
    got += server.receive(stream[cut:])
    assert server.buffered == 0
    assert got == b"x" * sum(sizes)


def test_release_frees_openssl_but_keeps_what_was_negotiated(certs: Certs) -> None:
    server, client = pair(certs, server_ctx=certs.server_context(
        alpn=["x"], client_certs=ssl.CERT_REQUIRED), client_ctx=certs.client_context(
        alpn=["x"], with_cert=True))
    handshake(server, client)
    before = (server.alpn_protocol, server.server_hostname, server.peer_certificate,
              server.peer_certificate_der, server.tls_version, server.cipher)
    server.release()
    server.release()  # (idempotent)
    after = (server.alpn_protocol, server.server_hostname, server.peer_certificate,
             server.peer_certificate_der, server.tls_version, server.cipher)
    assert after == before and before[0] == "x" and before[2] is not None
    assert server.closed and server.eof
    assert server.receive(client.send(b"late")) == b""
    with pytest.raises(TLSError):
        server.send(b"late")
    assert server.close() == b""
    assert not any(isinstance(v, ssl.SSLObject) for v in (server._obj,))


def test_release_before_the_handshake(certs: Certs) -> None:
    server = TLSSession(certs.server_context(), server_side=True)
    server.release()
    assert (server.tls_version, server.cipher, server.peer_certificate) == (None, None, None)
    assert server.receive(b"\x16\x03\x01") == b""
