"""Certificates for the TLS tests, made per run by ``trustme`` (no key is committed)."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import pytest

trustme = pytest.importorskip("trustme")


@dataclass
class Certs:
    """A throwaway CA, a server certificate for localhost / 127.0.0.1, a client one, and
    the same as PEM files (for openssl, redis-cli, mosquitto, curl)."""

    ca: trustme.CA
    server: trustme.LeafCert
    client: trustme.LeafCert
    ca_file: Path
    server_cert_file: Path
    server_key_file: Path
    client_cert_file: Path
    client_key_file: Path

    def server_context(self, *, alpn: list[str] | None = None,
                       client_certs: ssl.VerifyMode = ssl.CERT_NONE,
                       maximum: ssl.TLSVersion | None = None) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.server.configure_cert(ctx)
        if alpn:
            ctx.set_alpn_protocols(alpn)
        if client_certs != ssl.CERT_NONE:
            self.ca.configure_trust(ctx)
            ctx.verify_mode = client_certs
        if maximum is not None:
            ctx.maximum_version = maximum
        return ctx

    def client_context(self, *, alpn: list[str] | None = None, with_cert: bool = False,
                       maximum: ssl.TLSVersion | None = None) -> ssl.SSLContext:
        ctx = ssl.create_default_context()
        self.ca.configure_trust(ctx)
        if alpn:
            ctx.set_alpn_protocols(alpn)
        if with_cert:
            self.client.configure_cert(ctx)
        if maximum is not None:
            ctx.maximum_version = maximum
        return ctx


def make_certs(directory: Path) -> Certs:
    ca = trustme.CA()
    server = ca.issue_cert("localhost", "127.0.0.1", "::1")
    client = ca.issue_cert("client@example.org", common_name="test client")
    paths = {name: directory / f"{name}.pem" for name in
             ("ca", "server_cert", "server_key", "client_cert", "client_key")}
    ca.cert_pem.write_to_path(str(paths["ca"]))
    server.private_key_pem.write_to_path(str(paths["server_key"]))
    for blob in server.cert_chain_pems:
        blob.write_to_path(str(paths["server_cert"]), append=True)
    client.private_key_pem.write_to_path(str(paths["client_key"]))
    for blob in client.cert_chain_pems:
        blob.write_to_path(str(paths["client_cert"]), append=True)
    return Certs(ca, server, client, paths["ca"], paths["server_cert"], paths["server_key"],
                 paths["client_cert"], paths["client_key"])
