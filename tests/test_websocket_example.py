"""``examples/websocket_echo.py`` against clients nobody here wrote: the ``websockets``
library, raw sockets for what that library refuses to send, and headless Chromium
loading the example's page.  The example runs as a subprocess on a free loopback port
(``--port 0``, which it prints) and is always killed; every wait is bounded."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator
from typing import Any

import pytest
import websockets.exceptions
from example_process import assert_stops_cleanly, example_server
from websocket_support import RawClient, close_frame, frame, text, upgrade_request
from websockets.sync.client import ClientConnection, connect

from gevwire.codecs.websocket import (
    Opcode,
    WebSocketApp,
    WebSocketHandler,
    close_websocket,
    websocket,
)
from gevwire.testing import serve

pytestmark = [pytest.mark.timeout(120), pytest.mark.io]

MiB = 1 << 20
BROWSER_TIMEOUT = 60.0


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    """One echo server for the module (the tests that break connections break only
    their own)."""
    with example_server("websocket_echo.py", "--quiet") as (proc, port):
        yield port
        assert proc.poll() is None, "the example died during the tests"


def client(port: int, path: str = "/ws", **options: Any) -> ClientConnection:
    return connect(f"ws://127.0.0.1:{port}{path}", open_timeout=10, close_timeout=10,
                   max_size=None, ping_interval=None, proxy=None, **options)


# -- websockets ---------------------------------------------------------------------------


@pytest.mark.parametrize("compression", ["deflate", None])
def test_text_and_binary_echo(port: int, compression: str | None) -> None:
    with client(port, compression=compression) as ws:
        agreed = [type(e).__name__ for e in ws.protocol.extensions]
        assert agreed == (["PerMessageDeflate"] if compression else [])
        for message in ["hello", "", "héllo ✓ 🙂", "x" * 70000]:
            ws.send(message)
            assert ws.recv(timeout=10) == message
        for data in [b"\x00\xff" * 3, bytes(range(256)), b"", bytes(66000)]:
            ws.send(data)
            echoed = ws.recv(timeout=10)
            assert type(echoed) is bytes and echoed == data


def test_1_mib_fragmented_messages(port: int) -> None:
    text_message = "€a" * (MiB // 4)  # 1 MiB of UTF-8: 3 + 1 bytes per pair
    assert len(text_message.encode()) == MiB
    binary_message = os.urandom(MiB)
    with client(port) as ws:
        ws.send(text_message[i : i + 4000] for i in range(0, len(text_message), 4000))
        assert ws.recv(timeout=30) == text_message
        ws.send(binary_message[i : i + 65536] for i in range(0, MiB, 65536))
        assert ws.recv(timeout=30) == binary_message
        ws.send(binary_message)  # and unfragmented, at the limit exactly
        assert ws.recv(timeout=30) == binary_message


@pytest.mark.parametrize("fragmented", [False, True])
def test_a_message_over_the_limit_closes_with_1009(port: int, fragmented: bool) -> None:
    big = bytes(MiB + 1)
    with client(port) as ws:
        with pytest.raises(websockets.exceptions.ConnectionClosedError) as closed:
            ws.send([big[: MiB // 2], big[MiB // 2 :]] if fragmented else big)
            ws.recv(timeout=10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009


def test_ping_gets_a_pong(port: int) -> None:
    with client(port) as ws:
        for payload in (b"", b"are you there?", bytes(125)):
            assert ws.ping(payload).wait(10)
        ws.send("still open")
        assert ws.recv(timeout=10) == "still open"


@pytest.mark.parametrize("code,reason", [(1000, "done"), (1001, ""), (3000, "lib"),
                                         (4999, "app ✓")])
def test_close_codes_are_echoed(port: int, code: int, reason: str) -> None:
    with client(port) as ws:
        ws.send("x")
        assert ws.recv(timeout=10) == "x"
        ws.close(code, reason)
        state = ws.protocol
        assert state.close_rcvd is not None and state.close_rcvd.code == code
        assert state.close_rcvd_then_sent is False  # we started, the server answered


def test_server_initiated_close_handshake() -> None:
    closed: list[Any] = []

    class ClosingApp(WebSocketApp):
        def on_message(self, conn: Any, message: str | bytes) -> Any:
            close_websocket(conn, 4001, "server says bye")
            return None

        def on_close(self, conn: Any) -> None:
            closed.append(conn)

    with serve(WebSocketHandler(ClosingApp()), websocket()) as srv:
        with client(srv.address[1]) as ws:
            ws.send("bye?")
            with pytest.raises(websockets.exceptions.ConnectionClosedError) as exc:
                ws.recv(timeout=10)
        assert exc.value.rcvd is not None
        assert (exc.value.rcvd.code, exc.value.rcvd.reason) == (4001, "server says bye")
        assert exc.value.rcvd_then_sent is True  # the client answered the server's Close
        deadline = time.monotonic() + 10
        while not closed and time.monotonic() < deadline:
            time.sleep(0.01)
        assert closed, "the server did not close the TCP connection after the handshake"


# -- permessage-deflate -------------------------------------------------------------------


@pytest.mark.parametrize("takeover", [True, False])
def test_compressed_echoes_with_and_without_context_takeover(port: int, takeover: bool) -> None:
    """The websockets client's own permessage-deflate, with each direction's context
    kept or reset per message, and both windows limited: what it agreed is what the
    server answered, and every echo inflates to the message."""
    from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory

    factory = ClientPerMessageDeflateFactory(
        server_no_context_takeover=not takeover, client_no_context_takeover=not takeover,
        server_max_window_bits=10, client_max_window_bits=True)
    words = " ".join(f"word{i % 97}" for i in range(20000))  # compressible, ~190 KiB
    with client(port, extensions=[factory], compression=None) as ws:
        [agreed] = ws.protocol.extensions
        assert agreed.remote_no_context_takeover is not takeover  # the server's messages
        assert agreed.local_no_context_takeover is not takeover
        assert agreed.remote_max_window_bits == 10
        for message in [words, words.encode(), words, "", b"", "é✓" * 1000, os.urandom(5000)]:
            ws.send(message)
            assert ws.recv(timeout=10) == message


def test_a_zip_bomb_closes_with_1009_and_the_server_goes_on(port: int) -> None:
    """1 GiB of zeros in ~1 MiB of deflate: the example (1 MiB messages) must stop
    inflating at its limit and close 1009, not allocate the gigabyte."""
    zeros = zlib.compressobj(9, zlib.DEFLATED, -15)
    chunk = zeros.compress(bytes(64 << 20))
    bomb = chunk * 16 + zeros.flush(zlib.Z_SYNC_FLUSH)[:-4]
    assert len(bomb) < 2 * MiB
    with RawClient(port) as raw:
        head = raw.handshake(extensions="permessage-deflate")
        assert b"Sec-WebSocket-Extensions: permessage-deflate" in head.split(b"\r\n")
        raw.send(frame(Opcode.BINARY, bomb, rsv=4))
        code, reason = raw.read_close()
        assert code == 1009, reason
        assert raw.wait_eof()
    with client(port) as ws:  # and the server serves the next client
        ws.send("after the bomb")
        assert ws.recv(timeout=10) == "after the bomb"


def test_bad_utf8_in_a_frame_still_arriving_closes_at_once(port: int) -> None:
    """Autobahn 6.4.3: the frame announces 1000 bytes; after its invalid part the
    client waits, and the server must close 1007 without the rest."""
    payload = "κόσμε".encode() + b"\xf4\x90\x80\x80" + b"x" * 985
    wire = frame(Opcode.TEXT, payload)
    with RawClient(port, timeout=5) as raw:
        raw.handshake()
        raw.send(wire[: len(wire) - 985])  # the header, the text, the bad code point
        assert raw.read_close()[0] == 1007


# -- raw sockets: what a client library will not send -------------------------------------


@pytest.mark.parametrize("bad,code", [
    (frame(Opcode.TEXT, b"unmasked", mask=None), 1002),
    (frame(Opcode.TEXT, b"bad \xff utf-8"), 1007),
    (frame(Opcode.TEXT, "€".encode()[:2], fin=False) + frame(Opcode.CONTINUATION, b"x"), 1007),
    (frame(Opcode.BINARY, b"rsv", rsv=4), 1002),
    (frame(Opcode.PING, b"", fin=False), 1002),
    (close_frame(1005), 1002),
])
def test_protocol_errors_close_with_their_code(port: int, bad: bytes, code: int) -> None:
    with RawClient(port) as raw:
        raw.handshake()
        raw.send(text("first"))
        assert raw.read_frame() == (Opcode.TEXT, True, b"first")
        raw.send(bad + text("never answered"))
        assert raw.read_close()[0] == code
        assert raw.wait_eof(), "the server did not close the TCP connection"


def test_close_without_a_code_is_answered_without_one(port: int) -> None:
    with RawClient(port) as raw:
        raw.handshake()
        raw.send(close_frame())
        assert raw.read_close() == (None, b"")
        assert raw.wait_eof()


@pytest.mark.parametrize("request_bytes,status", [
    (upgrade_request(drop=("Sec-WebSocket-Key",)), b"400"),
    (upgrade_request(extra=(("Sec-WebSocket-Version", "8"),)), b"426"),
    (upgrade_request(method="POST"), b"400"),
    (b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-Pad: " + b"a" * 20000 + b"\r\n\r\n", b"431"),
    (upgrade_request("/elsewhere"), b"404"),
])
def test_bad_handshakes_get_an_http_error_and_close(port: int, request_bytes: bytes,
                                                    status: bytes) -> None:
    with RawClient(port) as raw:
        raw.send(request_bytes)
        assert raw.read_head().split(b" ")[1] == status
        assert raw.wait_eof()


def test_plain_http_serves_the_page_and_404s(port: int) -> None:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/html")
        assert b"new WebSocket(" in response.read()
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/missing", timeout=10)
    assert missing.value.code == 404


def test_example_stops_cleanly_with_a_websocket_open() -> None:
    with example_server("websocket_echo.py", "--quiet") as (proc, port):
        with client(port) as ws:
            ws.send("x")
            assert ws.recv(timeout=10) == "x"
            assert_stops_cleanly(proc, signal.SIGTERM)


# -- headless Chromium -------------------------------------------------------------------


class DevTools:
    """Chromium's DevTools protocol over its own WebSocket (the ``websockets`` client):
    just enough to navigate a tab and read its DOM."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.next_id = 0

    def call(self, method: str, **params: Any) -> Any:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            reply = json.loads(self.ws.recv(timeout=20))
            if reply.get("id") == self.next_id:  # skip events
                assert "error" not in reply, reply
                return reply["result"]

    def evaluate(self, expression: str) -> Any:
        return self.call("Runtime.evaluate", expression=expression,
                         returnByValue=True)["result"].get("value")


def _devtools_port(profile: str, proc: subprocess.Popen[bytes], log: Any) -> int:
    """The port Chromium wrote to ``DevToolsActivePort`` (it picks one for port 0)."""
    path = os.path.join(profile, "DevToolsActivePort")
    deadline = time.monotonic() + BROWSER_TIMEOUT
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with open(path) as f:
                first = f.readline().strip()
            if first:
                return int(first)
        except FileNotFoundError:
            pass
        time.sleep(0.05)
    log.seek(0)
    raise AssertionError(f"Chromium did not start its DevTools endpoint (status "
                         f"{proc.poll()}):\n{log.read().decode(errors='replace')[-3000:]}")


def load_echo_page(chromium: str, url: str, message: str,
                   *flags: str) -> tuple[str | None, str | None]:
    """Load the example's page at ``url`` in headless Chromium (with ``flags``) and
    wait until its title says ``message`` was echoed; the title and the page's log.

    The DOM is read back over DevTools, polled in real time (``--dump-dom
    --virtual-time-budget`` can dump before the echo arrives on a loaded machine)."""
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as profile, \
            tempfile.TemporaryFile() as log:
        # Its own process group: the browser's helper processes are stopped with it
        # before the profile directory is removed.
        proc = subprocess.Popen(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--no-first-run", "--remote-debugging-address=127.0.0.1",
             "--remote-debugging-port=0", f"--user-data-dir={profile}", *flags,
             "about:blank"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        title = shown = None
        try:
            devtools_port = _devtools_port(profile, proc, log)
            with urllib.request.urlopen(f"http://127.0.0.1:{devtools_port}/json/list",
                                        timeout=10) as listing:
                targets = json.load(listing)
            page = next(t for t in targets if t["type"] == "page")
            with connect(page["webSocketDebuggerUrl"], open_timeout=10, max_size=None,
                         ping_interval=None, proxy=None) as ws:
                tab = DevTools(ws)
                tab.call("Page.navigate", url=url)
                deadline = time.monotonic() + BROWSER_TIMEOUT
                while time.monotonic() < deadline:
                    title = tab.evaluate("document.title")
                    shown = tab.evaluate("document.getElementById('log')?.textContent")
                    if title == f"echo: {message}":
                        break
                    time.sleep(0.1)
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(15)
    return title, shown


@pytest.mark.timeout(1000)  # the first run installs the Debian package
def test_chromium_page_connects_sends_and_shows_the_echo(port: int) -> None:
    """The page's script opens a WebSocket to the example, sends a text and a binary
    message, checks both echoes and closes; the DOM is read back over DevTools (polled
    in real time: ``--dump-dom --virtual-time-budget`` can dump before the echo arrives
    on a loaded machine)."""
    from system_packages import require_program

    chromium = require_program("chromium", package="chromium")
    message = f"gevwire-{os.getpid()}"
    title, shown = load_echo_page(chromium, f"http://127.0.0.1:{port}/?msg={message}",
                                  message)
    assert title == f"echo: {message}", f"page log: {shown!r}"
    assert shown is not None and shown.splitlines() == [
        "open (permessage-deflate)", f"text: {message}",
        f"binary: same {len('binary:' + message)} bytes", "closed 1000 clean"]
