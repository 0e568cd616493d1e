"""fuzz/: every harness runs (briefly), the runner stops at its time bound, and planted
bugs -- a codec that drops the last byte of a frame split across reads, one that refuses
a frame of exactly max_frame_size, a ring buffer that misreads across its wrap, decoders
that raise the wrong exception, buffer without bound, hang or make no progress, a
WebSocket decoder that decodes each fragment's UTF-8 on its own -- are found, and saved
as regression cases that then replay as failures."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "fuzz"))

from fuzzkit import (  # noqa: E402
    Case,
    CodecTarget,
    HarnessFailure,
    HarnessHang,
    check_case,
    load_cases,
    registry,
    run_hypothesis,
)
from fuzzkit.engines import atheris_available, run_atheris  # noqa: E402
from fuzzkit.ring_target import RingTarget  # noqa: E402
from test_check_codec import (  # noqa: E402
    FaultyCodec,
    NoProgress,
    PlantedCodec,
    PlantedDecoder,
    Unbounded,
    WrongError,
)

from gevwire import Decoder, RingBuffer  # noqa: E402

RUN = [sys.executable, str(ROOT / "fuzz" / "run.py")]
SHIPPED = {"raw", "fixed_length", "length_field", "length_field_discard",
           "length_field_prepender", "line", "line_utf8", "delimiter", "varint",
           "varint_canonical", "construct", "construct_discard", "construct_prefixed",
           "construct_stream", "ringbuffer", "framer", "resp", "resp_commands", "mqtt",
    "websocket"}


# -- every harness, briefly ----------------------------------------------------------------


def test_registry_has_every_shipped_target() -> None:
    assert set(registry()) >= SHIPPED


# Bugs the harnesses found and that are not fixed yet (name -> reason); empty now that
# RESP decodes nulls to NULL_BULK / NULL_ARRAY rather than None.
KNOWN_BUGS: dict[str, str] = {}


def _targets() -> list[Any]:
    return [pytest.param(name, marks=pytest.mark.xfail(reason=KNOWN_BUGS[name], strict=False))
            if name in KNOWN_BUGS else name for name in sorted(registry())]


@pytest.mark.parametrize("name", _targets())
def test_every_target_runs_briefly(name: str, tmp_path: Path) -> None:
    result = run_hypothesis(registry()[name], seconds=2.0, max_examples=12, seed=1,
                            database=None, regressions=tmp_path)
    assert result.failure is None, result.summary()
    assert 1 <= result.examples <= 12
    assert not any(tmp_path.iterdir())  # nothing saved


@pytest.mark.parametrize("name", _targets())
def test_raw_buffers_are_always_cases(name: str) -> None:
    target = registry()[name]

    @settings(max_examples=25, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(st.binary(max_size=300))
    def prop(raw: bytes) -> None:
        case = target.from_bytes(raw)  # every buffer stands for some case ...
        check_case(target, case)  # ... and the shipped code passes it

    prop()


@pytest.mark.parametrize("name", sorted(registry()))
def test_to_bytes_inverts_from_bytes(name: str) -> None:
    target = registry()[name]

    @settings(max_examples=15, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(target.cases())
    def prop(case: Case) -> None:
        plan = {k: v for k, v in case.plan.items() if k != "expect"}
        back = target.from_bytes(target.to_bytes(case))
        assert back.data == case.data and back.plan == plan

    prop()


# -- the runner ------------------------------------------------------------------------------


def _run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([*RUN, *args], capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=ROOT)


def test_a_run_checks_at_least_one_example_however_short_its_time() -> None:
    """A busy machine can spend a small share of time before the first example; the run
    then still checks one (it used to report 0 examples: ``min([47, 0]) > 0``)."""
    result = run_hypothesis(registry()["varint"], seconds=0.0, seed=1, database=None,
                            regressions=None)
    assert result.examples >= 1 and result.failure is None


def test_run_stops_at_its_time_bound(tmp_path: Path) -> None:
    start = time.monotonic()
    done = _run("varint", "ringbuffer", "--minutes", "0.03", "--db", str(tmp_path / "db"),
                "--regressions", str(tmp_path / "reg"))
    elapsed = time.monotonic() - start
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("varint: ") and lines[1].startswith("ringbuffer: ")
    assert all(", 0 failures" in line for line in lines)
    examples = [int(line.split(": ")[1].split()[0]) for line in lines]
    assert min(examples) > 0
    assert 1.8 <= elapsed < 30  # 1.8 s of fuzzing plus start-up, not an open-ended run


def test_run_lists_and_replays() -> None:
    listing = _run("--list")
    assert listing.returncode == 0
    assert {line.split()[0] for line in listing.stdout.splitlines()} == set(registry())
    replay = _run("--replay")
    assert replay.returncode == 0, replay.stdout
    assert ", 0 failing" in replay.stdout


def test_run_refuses_unknown_targets() -> None:
    done = _run("nonesuch", "--seconds", "1")
    assert done.returncode == 2 and "unknown target" in done.stderr


# -- planted bugs ------------------------------------------------------------------------------

def planted(bug: str | None) -> CodecTarget:
    """A 4-byte length + payload codec (test_check_codec's).  ``"split"``: the ring path
    (frames that arrived in pieces) hands a frame on without its last byte; ``"limit"``:
    a frame of exactly max_frame_size is refused, on every path alike, so only the
    valid-stream expectation can tell."""
    return CodecTarget(name="planted",
                       make=lambda limit: PlantedCodec(bug, max_frame_size=max(limit, 4)),
                       messages=st.binary(max_size=32), limit=48)


@pytest.mark.parametrize(("bug", "words"), [
    ("split", "differs"),
    ("limit", "expected [['frame']"),
])
def test_a_planted_bug_is_found_saved_and_replayed(bug: str, words: str,
                                                   tmp_path: Path) -> None:
    regressions = tmp_path / "regressions"
    # No seed: hypothesis keeps a seeded run's failures out of its database.
    result = run_hypothesis(planted(bug), seconds=60, max_examples=3000,
                            database=tmp_path / "db", regressions=regressions)
    assert result.failure is not None and words in result.failure, result.summary()
    assert result.examples < 3000  # found well inside the budget
    assert result.saved is not None and result.saved.parent == regressions / "planted"
    assert result.saved.with_suffix(".json").is_file()
    assert any(p.is_file() for p in (tmp_path / "db").rglob("*"))  # replayed first next time
    [saved] = list(load_cases(regressions))
    assert saved.harness == "planted" and saved.path == result.saved
    if bug == "split":
        assert saved.case.plan["cuts"], "shrunk to a case that needs a split"
    with pytest.raises(HarnessFailure):  # the saved case replays the failure ...
        check_case(planted(bug), saved.case)
    check_case(planted(None), saved.case)  # ... and passes once the bug is fixed


@pytest.mark.parametrize(("fault", "words"), [
    (WrongError, "not a FrameError"),
    (Unbounded, "bytes buffered"),
    (NoProgress, "without consuming bytes"),
], ids=["other exception", "unbounded buffering", "no progress"])
def test_decoder_faults_are_found(fault: Any, words: str) -> None:
    target = CodecTarget(name="faulty",
                         make=lambda limit: FaultyCodec(fault, max_frame_size=max(limit, 4)),
                         messages=st.binary(max_size=32), limit=48)
    result = run_hypothesis(target, seconds=60, max_examples=3000, seed=0, database=None,
                            regressions=None)
    assert result.failure is not None and words in result.failure, result.summary()


class WrapBug(RingBuffer):
    """``peek`` loses the first byte after the wrap-around."""

    def peek(self, n: int) -> tuple[memoryview, memoryview]:
        first, second = super().peek(n)
        return first, second[1:]


def test_a_planted_ring_bug_is_found(tmp_path: Path) -> None:
    target = RingTarget(ring_class=WrapBug, name="ring_planted")
    result = run_hypothesis(target, seconds=60, max_examples=3000, seed=0, database=None,
                            regressions=tmp_path)
    assert result.failure is not None, result.summary()
    [saved] = list(load_cases(tmp_path))
    with pytest.raises(HarnessFailure):
        check_case(target, saved.case)
    check_case(RingTarget(), saved.case)


class Hangs(PlantedDecoder):
    def decode(self, ring: RingBuffer) -> bytes | None:
        while ring.length == 3:
            pass
        return super().decode(ring)


class HangCodec(PlantedCodec):
    def decoder(self) -> Decoder:
        return Hangs(self.max_frame_size, None)


def test_a_hang_is_a_failure() -> None:
    target = CodecTarget(name="hangs", make=lambda limit: HangCodec(max_frame_size=limit),
                         messages=st.binary(max_size=8))
    with pytest.raises(HarnessHang):
        check_case(target, Case(b"\x00\x00\x00\x05abc", {"cuts": [3]}), timeout=0.2)


# -- atheris ---------------------------------------------------------------------------------

PLANTED_MODULE = f'''
import sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
from test_fuzz_harnesses import planted
from fuzzkit import register
register(planted("split"))
'''


@pytest.mark.skipif(atheris_available() is not None, reason="atheris is not installed")
def test_atheris_runs_and_stops(tmp_path: Path) -> None:
    done = _run("varint", "--engine", "atheris", "--seconds", "2", "--corpus",
                str(tmp_path / "corpus"), "--regressions", str(tmp_path / "reg"))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Done" in done.stderr  # libFuzzer's summary at its time bound
    assert any((tmp_path / "corpus" / "varint").iterdir())  # seeded


@pytest.mark.skipif(atheris_available() is not None, reason="atheris is not installed")
def test_atheris_finds_a_planted_bug(tmp_path: Path) -> None:
    module = tmp_path / "planted_targets.py"
    module.write_text(PLANTED_MODULE)
    # From an empty corpus: coverage guidance, not a seed case, finds it (in about a
    # thousand runs, a second or two).
    done = _run("planted", "--module", str(module), "--engine", "atheris", "--seconds",
                "60", "--corpus", str(tmp_path / "corpus"), "--regressions",
                str(tmp_path / "reg"), "--seed", "1", "--no-seeds")
    assert done.returncode not in (0, 2), done.stderr[-2000:]
    assert "saved " in done.stderr
    saved = list(load_cases(tmp_path / "reg"))
    assert saved and saved[0].harness == "planted"
    with pytest.raises(HarnessFailure):
        check_case(planted("split"), saved[0].case)


def test_without_atheris_the_engine_says_why(monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "atheris", None)  # import atheris -> ImportError
    assert "pip install atheris" in (atheris_available() or "")
    assert run_atheris(registry()["varint"], seconds=1) == 2
    assert "skipped varint: atheris is not installed" in capsys.readouterr().err


class PerFragmentUtf8:
    """A planted bug: each fragment of a text message (or piece of a partial frame)
    decoded as UTF-8 on its own, so a character split between two fails as invalid
    text: on whole reads only a fragmented message shows it ("expected"), split reads
    show it on any multi-byte character ("differs")."""

    def decode(self, data: bytes | memoryview, final: bool = False) -> str:
        return bytes(data).decode()


def test_the_websocket_target_sends_fragmented_messages_and_closes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import gevwire.codecs.websocket as ws  # type: ignore[import-not-found,unused-ignore]

    target = registry()["websocket"]
    assert isinstance(target, CodecTarget)
    monkeypatch.setattr(ws, "_Utf8Check", PerFragmentUtf8)
    result = run_hypothesis(target, seconds=60, max_examples=3000, seed=0, database=None,
                            regressions=None)
    assert result.failure is not None, result.summary()
    assert "expected" in result.failure or "differs" in result.failure, result.summary()
