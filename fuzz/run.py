#!/usr/bin/env python3
"""Fuzz gevwire's codecs, ring buffer and framer.

    python fuzz/run.py --list
    python fuzz/run.py length_field --minutes 10          # hypothesis, with a database
    python fuzz/run.py all --minutes 30                   # the time is shared out
    python fuzz/run.py varint --engine atheris --minutes 5   # coverage-guided
    python fuzz/run.py --replay                           # the saved regression cases

A failure is shrunk, saved under fuzz/regressions/<target>/ (replayed by the normal test
suite, tests/test_fuzz_regressions.py) and reported; the exit status is 1.
``--module`` imports a module (a dotted name or a .py path) that registers more targets
with ``fuzzkit.register`` -- your own codecs, say.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from fuzzkit import (  # noqa: E402  (after the path set-up above)
    REGRESSIONS,
    check_case,
    load_cases,
    registry,
    run_atheris,
    run_hypothesis,
)
from fuzzkit.engines import CORPUS, DATABASE, INSTRUMENT, atheris_available  # noqa: E402


def _import(spec: str) -> None:
    if spec.endswith(".py"):
        path = Path(spec).resolve()
        loader = importlib.util.spec_from_file_location(path.stem, path)
        if loader is None or loader.loader is None:
            raise SystemExit(f"cannot import {spec}")
        module = importlib.util.module_from_spec(loader)
        sys.modules[path.stem] = module
        loader.loader.exec_module(module)
    else:
        importlib.import_module(spec)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fuzz/run.py", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("targets", nargs="*", metavar="TARGET",
                        help="target names, or 'all' (see --list)")
    parser.add_argument("--list", action="store_true", help="list the targets and exit")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--minutes", type=float, help="time bound (default: 1 minute)")
    budget.add_argument("--seconds", type=float, help="time bound in seconds")
    parser.add_argument("--max-examples", type=int,
                        help="stop a target after this many examples (hypothesis)")
    parser.add_argument("--seed", type=int,
                        help="repeatable run (hypothesis then neither reads nor writes its "
                             "database)")
    parser.add_argument("--engine", choices=("hypothesis", "atheris"), default="hypothesis")
    parser.add_argument("--timeout", type=float, default=5.0,
                        help="seconds one case may take before it counts as a hang")
    parser.add_argument("--db", type=Path, default=DATABASE,
                        help=f"hypothesis database (default {DATABASE})")
    parser.add_argument("--no-db", action="store_true", help="no hypothesis database")
    parser.add_argument("--regressions", type=Path, default=REGRESSIONS,
                        help=f"where failing cases are saved (default {REGRESSIONS})")
    parser.add_argument("--corpus", type=Path, default=CORPUS,
                        help=f"atheris corpora (default {CORPUS})")
    parser.add_argument("--instrument", action="append", default=[],
                        help="atheris: trace coverage in modules with this name prefix "
                             "too (always: " + ", ".join(INSTRUMENT) + ")")
    parser.add_argument("--no-seeds", action="store_true",
                        help="atheris: start from an empty corpus (no seed cases)")
    parser.add_argument("--module", action="append", default=[],
                        help="import this module first (it registers more targets)")
    parser.add_argument("--replay", action="store_true",
                        help="check the saved regression cases and exit")
    parser.add_argument("--verbose", action="store_true", help="hypothesis' own reports")
    return parser


def _replay(regressions: Path, names: list[str] | None) -> int:
    targets = registry()
    failed = 0
    count = 0
    for saved in load_cases(regressions):
        if names and saved.harness not in names:
            continue
        target = targets.get(saved.harness)
        if target is None:
            print(f"{saved.path}: no target {saved.harness!r} (not registered here)")
            continue
        count += 1
        try:
            check_case(target, saved.case)
        except Exception as exc:
            failed += 1
            print(f"FAIL {saved.path}: {type(exc).__name__}: {exc}")
    print(f"{count} regression cases, {failed} failing")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    for spec in args.module:
        _import(spec)
    targets = registry()
    if args.list:
        width = max(map(len, targets))
        for name, target in targets.items():
            print(f"{name:<{width}}  {target.about}")
        return 0
    names = list(targets) if args.targets == ["all"] else args.targets
    if args.replay:
        return _replay(args.regressions, names or None)
    if not names:
        _parser().error("name a target, or 'all' (--list shows them)")
    unknown = [n for n in names if n not in targets]
    if unknown:
        _parser().error(f"unknown target(s) {', '.join(unknown)}; known: {', '.join(targets)}")
    total = args.seconds if args.seconds is not None else 60 * (args.minutes or 1.0)
    share = total / len(names)

    if args.engine == "atheris":
        why = atheris_available()
        if why is not None:
            print(f"skipped: {why}", file=sys.stderr)
            return 2
        if len(names) == 1:
            return run_atheris(targets[names[0]], seconds=share, seed=args.seed,
                               regressions=args.regressions, corpus=args.corpus,
                               timeout=args.timeout,
                               instrument=(*INSTRUMENT, *args.instrument),
                               seeds=not args.no_seeds)
        # libFuzzer ends its process: one process a target.
        status = 0
        for name in names:
            cmd = [sys.executable, __file__, name, "--engine", "atheris",
                   "--seconds", str(share), "--timeout", str(args.timeout),
                   "--regressions", str(args.regressions), "--corpus", str(args.corpus)]
            cmd += [f"--module={m}" for m in args.module]
            cmd += [f"--instrument={m}" for m in args.instrument]
            cmd += ["--no-seeds"] if args.no_seeds else []
            if args.seed is not None:
                cmd += ["--seed", str(args.seed)]
            code = subprocess.call(cmd)
            print(f"{name}: atheris exited with {code}")
            status = status or code
        return status

    status = 0
    started = time.monotonic()
    for i, name in enumerate(names):
        # Time a target leaves unused goes to the ones after it.
        left = total - (time.monotonic() - started)
        seconds = left / (len(names) - i)
        result = run_hypothesis(
            targets[name], seconds=seconds, seed=args.seed,
            database=None if args.no_db else args.db, regressions=args.regressions,
            max_examples=args.max_examples, timeout=args.timeout, verbose=args.verbose)
        print(result.summary(), flush=True)
        if result.failure:
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
