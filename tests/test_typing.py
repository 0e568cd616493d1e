"""Typed frames: ``mypy --strict`` on user code catches a handler with the wrong
signature (no ``conn``, or the wrong frame type), and accepts the usual shapes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import construct as c  # type: ignore[import-untyped]
import pytest

import gevwire
from gevwire.testing import HandlerHarness

REPO = Path(__file__).resolve().parent.parent
SNIPPETS = Path(__file__).resolve().parent / "typing_snippets"

pytest.importorskip("mypy")


def mypy_strict(path: Path, cache: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, MYPYPATH=str(REPO))  # the checkout's gevwire, with py.typed
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-error-summary",
         "--cache-dir", str(cache), str(path)],
        cwd=path.parent, env=env, capture_output=True, text=True, timeout=240)


def test_well_typed_handlers_and_routes_pass(tmp_path: Path) -> None:
    result = mypy_strict(SNIPPETS / "typed_ok.py", tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_wrong_handler_signatures_are_type_errors(tmp_path: Path) -> None:
    result = mypy_strict(SNIPPETS / "typed_wrong.py", tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    errors = {int(m[1]): m[2] for m in re.finditer(r"typed_wrong\.py:(\d+): error: (.*)",
                                                    result.stdout)}
    source = (SNIPPETS / "typed_wrong.py").read_text().splitlines()
    expected = {n + 1 for n, text in enumerate(source) if "# no conn" in text
                or "# frames are bytes" in text}
    # Each wrong definition is reported on its own line (a decorated one on its
    # decorator's line, just above it).
    reported = {n for n in errors} | {n + 1 for n in errors}
    assert expected <= reported, result.stdout
    assert len(errors) == 3, result.stdout


def test_harness_gives_handler_values_and_what_a_client_decodes() -> None:
    message = c.Prefixed(c.Int8ub, c.Struct("kind" / c.Enum(c.Int8ub, ping=1, pong=2),
                                            "id" / c.Int16ub))
    router: gevwire.Router[object] = gevwire.Router(key="kind")

    @router.on("ping")
    def ping(conn: gevwire.Connection, frame: object) -> dict[str, object]:
        return {"kind": "pong", "id": 7}

    harness = HandlerHarness(router, gevwire.Codec(message))
    assert harness.feed_message({"kind": "ping", "id": 7}) == [{"kind": "pong", "id": 7}]
    (decoded,) = harness.decoded_replies()
    assert isinstance(decoded, c.Container)  # what a client gets, not the dict
    assert (decoded.kind, decoded.id) == ("pong", 7)
