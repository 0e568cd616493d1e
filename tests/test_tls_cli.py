"""``python -m gevwire run`` with uvicorn's TLS flags (and their GEVWIRE_* variables)."""

from __future__ import annotations

import argparse
import socket
import ssl
from pathlib import Path

import pytest
from test_workers import ServerProcess
from tls_support import Certs, make_certs

from gevwire.cli import CliError, build_parser, main, ssl_context_from, ssl_server_options

pytestmark = [pytest.mark.timeout(60), pytest.mark.io]

APP = '''
import gevwire

class Upper(gevwire.Handler):
    def on_connect(self, conn):
        conn.context = (conn.tls_version or "plain").encode()

    def on_message(self, conn, frame):
        return conn.context + b" " + bytes(frame).upper()
'''
LISTENING = r"\[(\d+)\] gevwire listening on \('127\.0\.0\.1', (\d+)\)"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(Path(tmp_path_factory.mktemp("certs")))


def _ask(port: int, ctx: ssl.SSLContext, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname="localhost") as sock:
        sock.sendall(data)
        return sock.recv(100)


@pytest.mark.parametrize("from_env", [False, True])
def test_run_serves_tls_with_mutual_certificates(tmp_path: Path, certs: Certs,
                                                from_env: bool,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "tlsapp.py").write_text(APP)
    options = {"ssl-certfile": certs.server_cert_file, "ssl-keyfile": certs.server_key_file,
               "ssl-ca-certs": certs.ca_file, "ssl-cert-reqs": "2"}
    args = ["-m", "gevwire", "run", "tlsapp:Upper", "--address", "127.0.0.1:0"]
    for name, value in options.items():
        if from_env:  # (the child inherits them)
            monkeypatch.setenv("GEVWIRE_" + name.replace("-", "_").upper(), str(value))
        else:
            args += [f"--{name}", str(value)]
    run = ServerProcess(args, cwd=tmp_path)
    try:
        port = int(run.wait_for(LISTENING)[0][2])
        assert _ask(port, certs.client_context(with_cert=True), b"hi") == b"TLSv1.3 HI"
        with pytest.raises((ssl.SSLError, ConnectionError)):  # no client certificate
            _ask(port, certs.client_context(), b"hi")
        assert run.stop() == 0, run.output
    finally:
        run.close()


def _args(*argv: str) -> argparse.Namespace:
    parser, _ = build_parser()
    return parser.parse_args(["run", "m:h", *argv])


def test_ssl_context_from_the_flags(certs: Certs) -> None:
    assert ssl_context_from(_args()) is None
    ctx = ssl_context_from(_args("--ssl-certfile", str(certs.server_cert_file),
                                 "--ssl-keyfile", str(certs.server_key_file),
                                 "--ssl-ca-certs", str(certs.ca_file),
                                 "--ssl-cert-reqs", "optional", "--ssl-alpn", "mqtt, h2"))
    assert ctx is not None and ctx.verify_mode == ssl.CERT_OPTIONAL
    assert _args("--ssl-handshake-timeout", "2.5").ssl_handshake_timeout == 2.5
    assert _args("--ssl-shutdown-timeout", "0").ssl_shutdown_timeout == 0.0
    options = ssl_server_options(build_parser()[1], _args(
        "--ssl-certfile", str(certs.server_cert_file), "--ssl-keyfile",
        str(certs.server_key_file), "--ssl-shutdown-timeout", "1.5"))
    assert options["ssl_shutdown_timeout"] == 1.5  # what the examples pass to Server


@pytest.mark.parametrize(("argv", "message"), [
    (["--ssl-keyfile", "k.pem"], "--ssl-keyfile needs --ssl-certfile"),
    (["--ssl-cert-reqs", "2"], "--ssl-cert-reqs needs --ssl-certfile"),
    (["--ssl-certfile", "/nonexistent.pem"], "cannot load the TLS certificate"),
])
def test_unusable_tls_flags_are_clear_errors(argv: list[str], message: str) -> None:
    with pytest.raises(CliError, match=message):
        ssl_context_from(_args(*argv))


def test_mutual_tls_needs_a_ca(certs: Certs, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "gevwire:Handler", "--ssl-certfile", str(certs.server_cert_file),
              "--ssl-keyfile", str(certs.server_key_file), "--ssl-cert-reqs", "2"])
    assert exit_info.value.code == 2
    assert "needs --ssl-ca-certs" in capsys.readouterr().err


def test_a_bad_cert_reqs_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        _args("--ssl-cert-reqs", "always")
    assert "0 / none, 1 / optional or 2 / required" in capsys.readouterr().err
