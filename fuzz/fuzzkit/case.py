"""One fuzz input, and the regression store that keeps the ones that broke something.

A :class:`Case` is bytes plus a *plan*: a small JSON-able dict that says how the bytes
are delivered (where a stream is split into reads, the input ring's size, a codec's
limit) or what is done with them (a ring buffer's operations).  A case that made a
harness fail is saved as two files under ``<root>/<harness>/``:

- ``<digest>.bin``: the bytes, raw (open them in a hex editor);
- ``<digest>.json``: ``{"plan": ..., "note": ...}``: how they were split, and why the
  case is kept (the failure it caused, or the edge it pins down for a seed case).

``tests/test_fuzz_regressions.py`` replays every saved case in the normal test suite.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["REGRESSIONS", "Case", "SavedCase", "load_cases", "save_case", "split"]

#: The regression corpus in the repository.
REGRESSIONS = Path(__file__).resolve().parent.parent / "regressions"


@dataclass(frozen=True)
class Case:
    """Bytes and the plan that says how a harness uses them."""

    data: bytes
    plan: Mapping[str, Any] = field(default_factory=dict)

    def digest(self) -> str:
        """A name for the case: 16 hex digits of SHA-256 over the bytes and the plan."""
        hasher = hashlib.sha256(self.data)
        hasher.update(json.dumps(self.plan, sort_keys=True).encode())
        return hasher.hexdigest()[:16]

    def __repr__(self) -> str:
        data = self.data if len(self.data) <= 80 else self.data[:80] + b"..."
        return f"Case(data={data!r} ({len(self.data)} bytes), plan={dict(self.plan)!r})"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))  # hypothesis' reports: the short form


@dataclass(frozen=True)
class SavedCase:
    """A case read back from the regression store."""

    harness: str
    path: Path
    case: Case
    note: str


def save_case(case: Case, harness: str, *, root: Path = REGRESSIONS, note: str = "") -> Path:
    """Write ``case`` under ``root/harness/``; returns the ``.bin`` path.

    Saving the same case again rewrites the same two files.
    """
    folder = root / harness
    folder.mkdir(parents=True, exist_ok=True)
    name = case.digest()
    (folder / f"{name}.json").write_text(
        json.dumps({"plan": dict(case.plan), "note": note}, indent=1, sort_keys=True) + "\n"
    )
    path = folder / f"{name}.bin"
    path.write_bytes(case.data)
    return path


def load_cases(root: Path = REGRESSIONS, harness: str | None = None) -> Iterator[SavedCase]:
    """Every saved case under ``root`` (or only ``harness``'s), in a stable order."""
    if not root.is_dir():
        return
    folders = [root / harness] if harness else sorted(p for p in root.iterdir() if p.is_dir())
    for folder in folders:
        for path in sorted(folder.glob("*.bin")):
            meta = json.loads(path.with_suffix(".json").read_text())
            yield SavedCase(folder.name, path, Case(path.read_bytes(), meta["plan"]),
                            str(meta.get("note", "")))


def split(data: bytes, cuts: Sequence[int]) -> list[bytes]:
    """``data`` cut at ``cuts`` (clamped, sorted, deduplicated): the reads, none empty."""
    points = sorted({min(max(0, c), len(data)) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a]
