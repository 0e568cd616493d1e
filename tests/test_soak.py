"""``fuzz/soak.py`` for a few seconds: its report, and that it fails when it should."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.timeout(120), pytest.mark.io]

SOAK = Path(__file__).resolve().parent.parent / "fuzz" / "soak.py"
REDIS_EXAMPLE = SOAK.parent.parent / "examples" / "redis_server.py"

#: What hostile peers may cause on a server: frame errors (RESP's are subclasses with
#: names of their own), deadlines, the output cap.  Anything else is a finding.
EXPECTED_ERRORS = {"FrameError", "FrameTooLarge", "FrameTimeout", "idle_timeout",
                   "WriteBufferFull", "RespProtocolError", "RespTooLarge",
                   "TLSHandshakeError", "TLSHandshakeTimeout", "TLSError"}  # (target tls)


def soak(tmp_path: Path, *args: str) -> tuple[int, dict[str, Any], str]:
    out = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, str(SOAK), "--json", str(out), *args],
                          capture_output=True, text=True, timeout=100)
    report = json.loads(out.read_text()) if out.exists() else {}
    return proc.returncode, report, proc.stdout + proc.stderr


def test_soak_serves_good_clients_among_hostile_ones(tmp_path: Path) -> None:
    code, report, output = soak(tmp_path, "--seconds", "6", "--hostile", "5")
    assert code == 0, output
    assert report["failures"] == [], output
    targets = report["targets"]
    assert {"echo", "framed"} <= set(targets)
    if REDIS_EXAMPLE.exists():
        assert "resp" in targets, report["unavailable"]
    for name, target in targets.items():
        assert target["alive"], name
        assert target["good_requests"] > 100, (name, target)
        assert target["frames_in"] > 0
        assert set(target["errors"]) <= EXPECTED_ERRORS, (name, target["errors"])
        assert target["unexpected_errors"] == []
        assert target["connections_open"] == 0
        assert target["fds_end"] <= target["fds_start"], (name, target)
        # Bounded memory: a few seconds of hostile peers cost at most a few buffers.
        assert target["rss_end"] - target["rss_start"] < 64 << 20, (name, target)
    # Every hostile behaviour ran, and the servers did their part against each.
    assert set(report["hostile"]) == {"garbage", "oversize", "slowloris", "rst_mid_frame",
                                      "never_reading"}, report["hostile"]
    outcomes = report["outcomes"]
    assert outcomes.get("oversize NOT rejected", 0) == 0
    assert outcomes.get("never-reading kept going", 0) == 0, outcomes
    assert "soak:" in output and "failures: none" in output


@pytest.mark.parametrize("fault", ["wrong-reply", "kill-server"])
def test_soak_fails_on_a_wrong_reply_or_a_dead_server(tmp_path: Path, fault: str) -> None:
    code, report, output = soak(tmp_path, "--seconds", "2", "--targets", "echo",
                                "--hostile", "1", "--inject", fault)
    assert code == 1, output
    expected = "wrong reply" if fault == "wrong-reply" else "the server died"
    assert any(expected in failure for failure in report["failures"]), report["failures"]
