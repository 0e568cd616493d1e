"""Ready-made codecs, installed as ``gevwire.codecs``."""

from gevwire.codec import RawCodec

__all__ = ["RawCodec", "raw"]


def raw() -> RawCodec:
    """No framing: each read is one frame (gev's ``DefaultProtocol``)."""
    return RawCodec()
