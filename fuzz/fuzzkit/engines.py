"""The two engines that drive a :class:`~fuzzkit.target.Target`.

- :func:`run_hypothesis`: property-based, with a database (failing examples are replayed
  first on the next run), stopping at a time bound; a failure is shrunk to a minimal
  case, saved to the regression store, and reported.
- :func:`run_atheris`: coverage-guided (libFuzzer through atheris) on raw buffers that
  :meth:`Target.from_bytes` reads as cases; a crashing case is saved the same way.
"""

from __future__ import annotations

import gc
import os
import sys
import time
import traceback
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fuzzkit.case import REGRESSIONS, Case, load_cases, save_case
from fuzzkit.target import HarnessHang, Target, time_limit

__all__ = ["CORPUS", "DATABASE", "INSTRUMENT", "RunResult", "atheris_available", "run_atheris",
           "run_hypothesis"]

HERE = Path(__file__).resolve().parent.parent
#: hypothesis' example database for long runs (gitignored).
DATABASE = HERE / ".hypothesis-db"
#: atheris' working corpora, one folder a target (gitignored).
CORPUS = HERE / ".atheris-corpus"
#: Modules whose coverage atheris traces by default: framing, codecs, buffers.
INSTRUMENT = ("gevwire.codec", "gevwire._fastcodec", "gevwire.ringbuffer",
              "gevwire.testing", "gevwire.errors")


@dataclass
class RunResult:
    """What one run of one target did."""

    target: str
    examples: int = 0
    seconds: float = 0.0
    failure: str | None = None
    saved: Path | None = None

    def summary(self) -> str:
        rate = self.examples / self.seconds if self.seconds else 0.0
        head = (f"{self.target}: {self.examples} examples in {self.seconds:.1f} s "
                f"({rate:.0f}/s), {'1 failure' if self.failure else '0 failures'}")
        if self.failure:
            head += f"\n  {self.failure}"
            if self.saved:
                head += f"\n  saved {self.saved} (replayed by tests/test_fuzz_regressions.py)"
        return head


def _describe(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) < 2000 else text[:2000] + " ..."


def run_hypothesis(
    target: Target,
    *,
    seconds: float,
    seed: int | None = None,
    database: Path | None = DATABASE,
    regressions: Path | None = REGRESSIONS,
    max_examples: int | None = None,
    batch: int = 200,
    timeout: float = 5.0,
    verbose: bool = False,
) -> RunResult:
    """Run ``target``'s property until ``seconds`` pass (or ``max_examples`` are run, or
    it fails).  ``seed`` makes the run repeatable (hypothesis then leaves its database
    alone, so a seeded run's failure is not replayed by the next run); each case
    must finish within ``timeout`` seconds.  The first failure is shrunk, saved under
    ``regressions`` (unless None) and returned in the result.
    """
    from hypothesis import HealthCheck, Phase, Verbosity, given, settings
    from hypothesis import seed as use_seed
    from hypothesis.database import DirectoryBasedExampleDatabase

    result = RunResult(target.name)
    start = time.monotonic()
    end = start + seconds
    db = DirectoryBasedExampleDatabase(str(database)) if database is not None else None
    failing: list[tuple[Case, BaseException]] = []
    strategy = target.cases()

    def body(case: Case) -> None:
        # (At least one example, however short the time: a busy machine can spend a
        # small budget before the first one, and a run that checked nothing says so.)
        if not failing and result.examples and (time.monotonic() >= end or (
                max_examples is not None and result.examples >= max_examples)):
            return  # out of budget: let hypothesis finish its batch cheaply
        result.examples += 1
        try:
            with time_limit(timeout):
                target.check(case)
        except BaseException as exc:
            failing.append((case, exc))
            raise

    # One database key a target, not one for the shared body.
    body._hypothesis_internal_add_digest = target.name.encode()  # type: ignore[attr-defined]
    config = settings(
        max_examples=batch,
        database=db,
        deadline=None,
        derandomize=False,
        report_multiple_bugs=False,
        # No explain phase: it re-runs the shrunk case hundreds of times to annotate
        # hypothesis' report, which this runner replaces with its own.
        phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
        suppress_health_check=list(HealthCheck),
        verbosity=Verbosity.normal if verbose else Verbosity.quiet,
    )
    round_ = 0
    while (not result.examples or time.monotonic() < end) and (
            max_examples is None or result.examples < max_examples):
        size = batch if max_examples is None else min(batch, max_examples - result.examples)
        test = settings(config, max_examples=size)(given(strategy)(body))
        if seed is not None:
            test = use_seed(seed + round_)(test)
        round_ += 1
        try:
            test()
        except BaseException as exc:
            if not failing or isinstance(exc, KeyboardInterrupt):
                raise
            case, error = failing[-1]  # the last failure is hypothesis' final, shrunk one
            result.failure = f"{_describe(error)}\n  case: {case!r}"
            if isinstance(error, HarnessHang):
                result.failure += f" (took over {timeout} s)"
            if regressions is not None:
                result.saved = save_case(case, target.name, root=regressions,
                                         note=_describe(error).splitlines()[0][:500])
            break
    result.seconds = time.monotonic() - start
    return result


def atheris_available() -> str | None:
    """None if atheris imports, else why not."""
    try:
        import atheris  # type: ignore[import-untyped,unused-ignore]  # noqa: F401
    except ImportError as exc:
        return (f"atheris is not installed ({exc}); `pip install atheris` (a wheel exists "
                "for CPython 3.11 on x86-64 Linux; elsewhere it needs clang and libFuzzer)")
    return None


def run_atheris(
    target: Target,
    *,
    seconds: float,
    seed: int | None = None,
    regressions: Path | None = REGRESSIONS,
    corpus: Path = CORPUS,
    timeout: float = 5.0,
    extra_args: list[str] | None = None,
    instrument: tuple[str, ...] = INSTRUMENT,
    seeds: bool = True,
) -> int:
    """Fuzz ``target`` with atheris for ``seconds``; libFuzzer ends the process, so this
    does not return (run it in a process of its own, as ``fuzz/run.py`` does).

    The corpus folder is seeded (unless ``seeds`` is false) with the target's saved
    regression cases and a few cases from its hypothesis strategy; a case that crashes
    is saved under ``regressions`` before libFuzzer reports it (and writes its own
    ``crash-*`` file under the corpus folder).  Returns 2 (without fuzzing) if atheris
    is unavailable.

    Coverage is traced in the modules named by ``instrument`` (prefixes of module names:
    by default :data:`INSTRUMENT`, the code a harness reaches; add ``"construct"`` to
    trace construct's interpreter too).  Each function costs about 7 ms to instrument:
    atheris' ``instrument_all`` (every loaded function, hypothesis included) takes over
    a minute to start here.
    """
    why = atheris_available()
    if why is not None:
        print(f"skipped {target.name}: {why}", file=sys.stderr)
        return 2
    import atheris  # type: ignore[import-untyped,unused-ignore]

    folder = corpus / target.name
    folder.mkdir(parents=True, exist_ok=True)
    if seeds:
        _seed_corpus(target, folder, regressions)

    def test_one(raw: bytes) -> None:
        case = target.from_bytes(raw)
        try:
            target.check(case)
        except BaseException as exc:
            if regressions is not None:
                path = save_case(case, target.name, root=regressions,
                                 note=_describe(exc).splitlines()[0][:500])
                print(f"\n{target.name}: {_describe(exc)}\n  case: {case!r}\n  saved {path}",
                      file=sys.stderr)
            traceback.print_exc()
            raise

    args = [sys.argv[0], f"-max_total_time={max(1, int(seconds))}",
            f"-timeout={max(1, int(timeout))}", f"-artifact_prefix={folder}{os.sep}",
            "-print_final_stats=1"]
    if seed is not None:
        args.append(f"-seed={seed}")
    args += [*(extra_args or []), str(folder)]
    _instrument(atheris, instrument)
    atheris.Setup(args, test_one)
    atheris.Fuzz()
    return 0  # not reached: libFuzzer exits


def _instrument(atheris: Any, prefixes: tuple[str, ...]) -> None:
    """Add atheris' coverage tracing to every loaded function of the named modules
    (functions nested in them are traced too, as their code objects are patched)."""
    count = 0
    for obj in gc.get_objects():
        if isinstance(obj, types.FunctionType) and str(obj.__module__).startswith(prefixes):
            try:
                atheris.instrument_func(obj)
                count += 1
            except Exception as exc:  # a function atheris cannot patch: untraced
                print(f"not instrumented: {obj.__qualname__}: {exc}", file=sys.stderr)
    print(f"INFO: instrumented {count} functions of {', '.join(prefixes)}", file=sys.stderr)


def _seed_corpus(target: Target, folder: Path, regressions: Path | None) -> None:
    seeds: list[bytes] = []
    if regressions is not None:
        seeds += [target.to_bytes(saved.case) for saved in load_cases(regressions, target.name)]
    seeds += _examples(target, 8)
    for raw in seeds:
        name = folder / f"seed-{Case(raw).digest()}"
        if not name.exists():
            name.write_bytes(raw)


def _examples(target: Target, count: int) -> list[bytes]:
    """A few buffers for cases drawn from the target's strategy."""
    from hypothesis import HealthCheck, given, settings

    out: list[bytes] = []

    @settings(max_examples=count, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(target.cases())
    def collect(case: Any) -> None:
        out.append(target.to_bytes(case))

    collect()
    return out
