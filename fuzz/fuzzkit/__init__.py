"""gevwire's fuzz harnesses (``fuzz/``, not installed): see ``fuzz/README.md``.

``python fuzz/run.py --list`` lists the targets; :func:`registry` returns them.
"""

from fuzzkit.case import REGRESSIONS, Case, SavedCase, load_cases, save_case, split
from fuzzkit.codec_target import SKIP, CodecTarget, ConstructTarget
from fuzzkit.engines import RunResult, atheris_available, run_atheris, run_hypothesis
from fuzzkit.target import (
    HarnessFailure,
    HarnessHang,
    Target,
    check_case,
    get,
    on_load,
    register,
    registry,
)

__all__ = [
    "REGRESSIONS",
    "SKIP",
    "Case",
    "CodecTarget",
    "ConstructTarget",
    "HarnessFailure",
    "HarnessHang",
    "RunResult",
    "SavedCase",
    "Target",
    "atheris_available",
    "check_case",
    "get",
    "load_cases",
    "on_load",
    "register",
    "registry",
    "run_atheris",
    "run_hypothesis",
    "save_case",
    "split",
]
