"""Whether the optional compiled step, ``gevwire._speedups``, is in use.

It is an optional extension (Cython): without a C compiler at install time the pure
path serves alone, and ``GEVWIRE_PURE_PYTHON=1`` turns it off, to compare or to test
the pure path.  Each user checks for the function or class it needs.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

__all__ = ["speedups"]

#: The module, or None when it is not built or turned off.
speedups: Any
try:
    if os.environ.get("GEVWIRE_PURE_PYTHON"):
        raise ImportError("GEVWIRE_PURE_PYTHON is set")
    speedups = importlib.import_module("gevwire._speedups")
except ImportError:
    speedups = None
