"""Replays every case saved under fuzz/regressions/: the inputs that once broke a
harness (saved by fuzz/run.py), and the seed cases that pin down framing edges (a
length of exactly max_frame_size, an oversize header, a split inside a header ...).

Each case runs through its harness's whole check (one read vs. the saved split vs.
``decode`` alone, only FrameError, bounded buffering, re-encoding, and the events the
case's ``expect`` names)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "fuzz"))

from fuzzkit import REGRESSIONS, SavedCase, check_case, load_cases, registry  # noqa: E402

CASES = list(load_cases(REGRESSIONS))


def test_the_corpus_is_seeded() -> None:
    harnesses = {saved.harness for saved in CASES}
    assert len(CASES) >= 20
    assert {"length_field", "varint", "line", "construct", "construct_stream", "ringbuffer",
            "framer"} <= harnesses
    for saved in CASES:  # every .bin has its plan, and the note says why it is kept
        assert saved.note and isinstance(saved.case.plan, dict)


@pytest.mark.parametrize("saved", CASES, ids=[f"{s.harness}/{s.path.stem}" for s in CASES])
def test_saved_case_passes(saved: SavedCase) -> None:
    target = registry().get(saved.harness)
    if target is None:
        pytest.fail(f"{saved.path}: no fuzz target {saved.harness!r} is registered")
    check_case(target, saved.case)
