"""The README's first command runs ``examples/demo.py``: it must finish, and say so."""

from __future__ import annotations

import subprocess
import sys

import pytest
from example_process import EXAMPLES, REPO, example_env

pytestmark = pytest.mark.io


def test_demo_runs_to_demo_ok() -> None:
    for _ in range(3):  # on_connect order across two loops varies: run it a few times
        done = subprocess.run([sys.executable, str(EXAMPLES / "demo.py")], cwd=REPO,
                              env=example_env(), capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "client 1: received server push" in done.stdout
        assert done.stdout.rstrip().endswith("demo OK")
