#!/usr/bin/env python3
"""The server side of a TLS echo without sockets: microseconds per message that
``gevwire.TLSSession`` spends decrypting a record and encrypting its echo.

A client session makes the records beforehand; the timed loop is only the server's
``receive`` then ``send`` of each, so what it measures is gevwire's own path into and
out of OpenSSL (the Python calls, the MemoryBIO copies, the allocations), with nothing
of the kernel's.  Best of ``--repeat`` runs: the least disturbed by other processes.

    python benchmarks/tls_session.py --sizes 64,1024,4096
"""

from __future__ import annotations

import argparse
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from gevwire.tls import TLSSession


def make_contexts(directory: str) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context with a fresh ECDSA P-256 certificate, and a client one that
    does not check it (TLS 1.3, as ``run_echo.py --tls``)."""
    key, cert = Path(directory, "key.pem"), Path(directory, "cert.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
         "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-subj", "/CN=localhost", "-days", "1"],
        check=True, capture_output=True)  # fmt: skip
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert, key)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    for ctx in (server, client):
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    return server, client


def pair(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> tuple[TLSSession, TLSSession]:
    """Two sessions with their handshake done (and the tickets read)."""
    server = TLSSession(server_ctx, server_side=True)
    client = TLSSession(client_ctx, server_side=False, server_hostname="localhost")
    to_server = client.start()
    for _ in range(10):
        server.receive(to_server)
        to_client = server.outgoing()
        client.receive(to_client)
        to_server = client.outgoing()
        if server.handshake_done and client.handshake_done and not to_server:
            break
    if not (server.handshake_done and client.handshake_done):
        raise SystemExit("the handshake did not finish")
    server.receive(client.send(b"x"))
    client.receive(server.send(b"y"))
    return server, client


def measure(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, size: int,
            count: int, repeat: int) -> float:
    """Best µs per message of the server's receive + send, over ``repeat`` runs."""
    best = float("inf")
    payload = bytes(range(256)) * (size // 256) + b"z" * (size % 256)
    for _ in range(repeat):
        server, client = pair(server_ctx, client_ctx)
        receive, send = server.receive, server.send
        if client.receive(send(receive(client.send(payload)))) != payload:
            raise SystemExit("the echo came back wrong")
        records = [client.send(payload) for _ in range(count)]
        start = time.perf_counter()
        for record in records:
            send(receive(record))
        elapsed = time.perf_counter() - start
        best = min(best, elapsed * 1e6 / count)
    return best


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="64,1024,4096", help="plaintext sizes (64,1024,4096)")
    p.add_argument("--count", type=int, default=20000, help="messages per run (20000)")
    p.add_argument("--repeat", type=int, default=7, help="runs, best kept (7)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="gevwire-tls-session-") as directory:
        server_ctx, client_ctx = make_contexts(directory)
        for size in (int(s) for s in args.sizes.split(",")):
            us = measure(server_ctx, client_ctx, size, args.count, args.repeat)
            print(f"{size:6d} B: {us:6.2f} µs per message (receive + send)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
