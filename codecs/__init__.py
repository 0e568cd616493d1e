"""Ready-made codecs, installed as ``gevwire.codecs``.

- :func:`raw`: no framing, each read is one frame.
- :func:`fixed_length`: frames of exactly ``n`` bytes.
- :func:`length_field`: netty's ``LengthFieldBasedFrameDecoder`` with its prepender.
- :func:`line`, :func:`delimiter`: delimited frames (netty's line and delimiter decoders).
- :func:`varint`: protobuf-style varint length prefix.
- :mod:`~gevwire.codecs.mqtt` (:class:`MqttCodec`): MQTT 3.1.1 control packets.
- :mod:`~gevwire.codecs.resp` (:class:`RespCodec`): RESP2 (Redis) values, or server
  commands (``resp(commands=True)``).
- :mod:`~gevwire.codecs.websocket` (:class:`WebSocketCodec`): RFC 6455, server side
  (serve with ``websocket.WebSocketHandler``).
"""

from gevwire.codec import RawCodec

from .fixed import FixedLengthCodec, fixed_length
from .length_field import (
    LengthFieldCodec,
    LengthFieldPrepender,
    length_field,
    length_field_prepender,
)
from .line import DelimiterCodec, delimiter, line
from .mqtt import MqttCodec
from .resp import RespCodec
from .varint import VarintCodec, encode_varint, varint
from .websocket import WebSocketCodec

__all__ = [
    "DelimiterCodec",
    "FixedLengthCodec",
    "LengthFieldCodec",
    "LengthFieldPrepender",
    "MqttCodec",
    "RawCodec",
    "RespCodec",
    "VarintCodec",
    "WebSocketCodec",
    "delimiter",
    "encode_varint",
    "fixed_length",
    "length_field",
    "length_field_prepender",
    "line",
    "raw",
    "varint",
]


def raw() -> RawCodec:
    """No framing: each read is one frame (gev's ``DefaultProtocol``)."""
    return RawCodec()
