"""Protobuf messages over the varint codec: a server and a client.

Each frame is one serialized protobuf message behind a base-128 varint length (the
framing of protobuf's ``writeDelimitedTo`` / ``parseDelimitedFrom``).  The message
classes are built at run time from a ``FileDescriptorProto``, so no ``protoc`` and no
generated code are needed; the schema is::

    syntax = "proto3";
    package gevwire.example;
    message Note  { uint64 id = 1; string text = 2; repeated sint32 values = 3; bytes blob = 4; }
    message Reply { uint64 id = 1; string text = 2; sint64 total = 3; uint32 blob_size = 4; }

The server answers each ``Note`` with a ``Reply``: the text upper-cased, the values
summed, the blob's size.

    python examples/protobuf_echo.py                 # server and client in one process
    python examples/protobuf_echo.py serve --port 7070
    python examples/protobuf_echo.py client --port 7070
"""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import sys
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

import gevwire
from gevwire.codecs import VarintCodec, varint
from gevwire.ringbuffer import RingBuffer

_FIELD = descriptor_pb2.FieldDescriptorProto


def _file_descriptor() -> descriptor_pb2.FileDescriptorProto:
    """The schema in the module docstring, as protoc would describe it."""
    proto = descriptor_pb2.FileDescriptorProto(
        name="gevwire_example.proto", package="gevwire.example", syntax="proto3"
    )

    def message(name: str, *fields: tuple[str, int, int, int]) -> None:
        msg = proto.message_type.add(name=name)
        for field_name, number, kind, label in fields:
            msg.field.add(name=field_name, number=number, type=kind, label=label)

    optional, repeated = _FIELD.LABEL_OPTIONAL, _FIELD.LABEL_REPEATED
    message(
        "Note",
        ("id", 1, _FIELD.TYPE_UINT64, optional),
        ("text", 2, _FIELD.TYPE_STRING, optional),
        ("values", 3, _FIELD.TYPE_SINT32, repeated),
        ("blob", 4, _FIELD.TYPE_BYTES, optional),
    )
    message(
        "Reply",
        ("id", 1, _FIELD.TYPE_UINT64, optional),
        ("text", 2, _FIELD.TYPE_STRING, optional),
        ("total", 3, _FIELD.TYPE_SINT64, optional),
        ("blob_size", 4, _FIELD.TYPE_UINT32, optional),
    )
    return proto


def _message_classes() -> tuple[Any, Any]:
    pool = descriptor_pool.DescriptorPool()
    pool.Add(_file_descriptor())
    classes = []
    for name in ("Note", "Reply"):
        descriptor = pool.FindMessageTypeByName(f"gevwire.example.{name}")
        classes.append(message_factory.GetMessageClass(descriptor))
    return classes[0], classes[1]


Note, Reply = _message_classes()


def answer(note: Any) -> Any:
    """The server's reply to one ``Note``."""
    return Reply(
        id=note.id, text=note.text.upper(), total=sum(note.values), blob_size=len(note.blob)
    )


class NoteServer(gevwire.Handler):
    """Parses each frame as a ``Note`` and replies with a serialized ``Reply``.

    A frame that is not a valid ``Note`` raises ``google.protobuf.message.DecodeError``:
    the connection's error hook logs it and closes the connection.
    """

    def on_message(self, conn: gevwire.Connection, frame: Any) -> Any:
        return answer(Note.FromString(frame)).SerializeToString()


def codec() -> VarintCodec:
    """The framing both sides use: messages up to 64 KiB."""
    return varint(max_frame_size=64 << 10)


def exchange(address: tuple[str, int], notes: list[Any], timeout: float = 10.0) -> list[Any]:
    """Send ``notes`` on one connection (pipelined) and return the ``Reply`` to each.

    The client frames its side with the same codec: ``encode`` to send, and a decoder
    fed from ``recv`` (a codec never sees a socket, so it works on either side).
    """
    framing = codec()
    decoder = framing.decoder()
    ring = RingBuffer()
    replies: list[Any] = []
    with socket.create_connection(address, timeout=timeout) as sock:
        sock.sendall(b"".join(framing.encode(note.SerializeToString()) for note in notes))
        while len(replies) < len(notes):
            data = sock.recv(1 << 16)
            if not data:
                raise ConnectionError(f"server closed after {len(replies)} replies")
            ring.write(data)
            while (frame := decoder.decode(ring)) is not None:
                replies.append(Reply.FromString(frame))
    return replies


def sample_notes() -> list[Any]:
    return [
        Note(id=1, text="hello, protobuf", values=[1, 2, 3]),
        Note(id=2, text="négatif", values=[-5, 40_000, -2**31], blob=b"\x00\xff" * 100),
        Note(id=2**64 - 1, text="x" * 5000, blob=bytes(range(256)) * 40),
        Note(),
    ]


def demo() -> int:
    """Run a server and a client in this process; 0 if every reply is right."""
    with gevwire.Server(NoteServer(), address="127.0.0.1:0", codec=codec()) as server:
        notes = sample_notes()
        replies = exchange(server.address[:2], notes)
    ok = True
    for note, reply in zip(notes, replies, strict=True):
        good = reply == answer(note)
        ok &= good
        print(f"note {note.id}: {reply.text[:30]!r} total={reply.total} "
              f"blob_size={reply.blob_size} {'ok' if good else 'WRONG'}")
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", nargs="?", choices=("demo", "serve", "client"), default="demo")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7070)
    args = parser.parse_args()
    if args.mode == "demo":
        return demo()
    if args.mode == "client":
        for reply in exchange((args.host, args.port), sample_notes()):
            print(reply)
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    server = gevwire.Server(NoteServer(), address=f"{args.host}:{args.port}", codec=codec())
    signal.signal(signal.SIGTERM, lambda signum, frame: server.stop())
    server.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
