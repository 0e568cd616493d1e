"""The frame type variable of codecs, decoders, handlers and routers.

It defaults to ``Any`` for type checkers (PEP 696): ``Router(key="kind")`` and
``class Echo(gevwire.Handler)`` stay valid under ``mypy --strict``, while
``Handler[bytes]`` / ``Router[Message]`` check every handler's frame type.  At run
time it is a plain ``TypeVar`` (defaults are for type checkers only; Python 3.11 and
3.12 have no ``default=``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from typing_extensions import TypeVar

    FrameT = TypeVar("FrameT", default=Any)
else:
    from typing import TypeVar

    FrameT = TypeVar("FrameT")

__all__ = ["FrameT"]
