"""What the test tools share below :mod:`gevwire.testing` (which re-exports it): the
errors and report of the codec checks, and the equality they compare frames with.

A module of its own so that ``testing``, ``_check``, ``_strategies`` and the fuzz tooling
import it, and not each other.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import construct  # type: ignore[import-untyped]

from gevwire.errors import GevwireError

__all__ = ["CheckReport", "CodecCheckFailed", "UnsupportedConstruct", "require_hypothesis",
           "same_frames"]


class UnsupportedConstruct(GevwireError, TypeError):
    """:func:`strategy_for` cannot draw values for part of a schema.

    ``path`` is the dotted field path (``"header.kind"``; ``""`` for the root): pass
    ``overrides={path: strategy}`` to supply values for it.
    """

    def __init__(self, message: str, *, path: str = "") -> None:
        super().__init__(message)
        self.path = path


@dataclass
class CheckReport:
    """What :func:`check_codec` ran: the properties that passed, in order, and the ones
    skipped with the reason."""

    passed: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


class CodecCheckFailed(AssertionError):
    """A codec broke one of :func:`check_codec`'s properties; ``prop`` names which."""

    def __init__(self, message: str, *, prop: str = "") -> None:
        super().__init__(message)
        self.prop = prop


def same_frames(a: Any, b: Any) -> bool:
    """Equal with the same types all the way down (NaN equals NaN; -0.0 is not 0.0)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        ka = [k for k in a if not (isinstance(k, str) and k.startswith("_"))]
        kb = [k for k in b if not (isinstance(k, str) and k.startswith("_"))]
        return ka == kb and all(same_frames(a[k], b[k]) for k in ka)
    if isinstance(a, list):
        return len(a) == len(b) and all(same_frames(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float):
        if math.isnan(a):
            return math.isnan(b)
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    if isinstance(a, construct.EnumIntegerString):
        return str(a) == str(b) and a.intvalue == b.intvalue
    return bool(a == b)


def require_hypothesis() -> None:
    """Raise a ``ModuleNotFoundError`` that says what to install when hypothesis is
    missing (the property-based tools of :mod:`gevwire.testing` need it)."""
    import importlib.util

    if importlib.util.find_spec("hypothesis") is None:
        raise ModuleNotFoundError(
            "gevwire.testing's property-based checks need hypothesis: "
            "pip install 'gevwire[testing]'", name="hypothesis")
