"""examples/protobuf_echo.py: protobuf messages over the varint codec, end to end."""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import gevwire
from gevwire.codecs import encode_varint

pytest.importorskip("google.protobuf")

pytestmark = [pytest.mark.timeout(60), pytest.mark.io]

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "protobuf_echo.py"


@pytest.fixture(scope="module")
def example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("protobuf_echo", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_runtime_message_classes_behave_like_generated_ones(example: ModuleType) -> None:
    note = example.Note(id=7, text="hé", values=[-1, 2], blob=b"\x00")
    data = note.SerializeToString()
    # field 1 varint 7, field 2 "hé", packed sint32 [-1, 2] (zigzag 1, 4), field 4 bytes
    assert data == b"\x08\x07" + b"\x12\x03h\xc3\xa9" + b"\x1a\x02\x01\x04" + b"\x22\x01\x00"
    assert example.Note.FromString(data) == note
    assert example.Note.DESCRIPTOR.full_name == "gevwire.example.Note"


def test_in_process_round_trip(example: ModuleType) -> None:
    notes = example.sample_notes() + [example.Note(id=i, text=str(i), values=[i, -i])
                                      for i in range(200)]
    with gevwire.Server(example.NoteServer(), address="127.0.0.1:0",
                        codec=example.codec()) as server:
        replies = example.exchange(server.address[:2], notes)
    assert len(replies) == len(notes)
    for note, reply in zip(notes, replies, strict=True):
        assert reply.id == note.id
        assert reply.text == note.text.upper()
        assert reply.total == sum(note.values)
        assert reply.blob_size == len(note.blob)


def test_wire_is_varint_length_then_message(example: ModuleType) -> None:
    """A raw client: the bytes on the wire are exactly protobuf's delimited format."""
    note = example.Note(id=3, text="x" * 200)
    body = note.SerializeToString()
    with gevwire.Server(example.NoteServer(), address="127.0.0.1:0",
                        codec=example.codec()) as server, \
            socket.create_connection(server.address[:2], timeout=10) as client:
        client.sendall(encode_varint(len(body)) + body)
        expected = example.answer(note).SerializeToString()
        wire = encode_varint(len(expected)) + expected
        got = b""
        while len(got) < len(wire):
            chunk = client.recv(4096)
            assert chunk, "server closed early"
            got += chunk
        assert got == wire
        # a frame that is not a Note: the handler's DecodeError closes the connection
        client.sendall(b"\x02\xff\xff")
        assert client.recv(100) == b""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def run_example(*args: str, **kwargs: Any) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, str(EXAMPLE), *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kwargs)


def test_demo_mode_runs_server_and_client() -> None:
    proc = run_example("demo")
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert out.count(" ok") == 4 and "WRONG" not in out


def test_server_and_client_as_separate_processes(example: ModuleType) -> None:
    port = free_port()
    server = run_example("serve", "--port", str(port))
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert server.poll() is None, server.communicate()[0]
                assert time.monotonic() < deadline, "server did not start"
                time.sleep(0.05)
        client = run_example("client", "--port", str(port))
        out, _ = client.communicate(timeout=30)
        assert client.returncode == 0, out
        assert 'text: "HELLO, PROTOBUF"' in out and "total: 6" in out
        # and this process's client against that server process
        notes = example.sample_notes()
        replies = example.exchange(("127.0.0.1", port), notes)
        assert replies == [example.answer(n) for n in notes]
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.communicate()
    assert server.returncode == 0
