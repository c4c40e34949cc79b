"""CI runs the real-model tests: .ci/run sets CI, and with CI set a missing model fails
instead of skipping (tests/conftest.py)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from .conftest import _or_skip

RUN = Path(__file__).resolve().parents[1] / ".ci" / "run"


def _missing():
    raise FileNotFoundError("no model here")


def test_ci_run_sets_ci_before_pytest():
    text = RUN.read_text()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    sets = [i for i, ln in enumerate(lines) if re.fullmatch(r"export CI=(true|1)", ln)]
    runs = [i for i, ln in enumerate(lines) if "pytest" in ln]
    assert sets and runs and sets[0] < runs[0], text
    # and the script is valid bash
    assert subprocess.run(["bash", "-n", str(RUN)]).returncode == 0


def test_missing_model_fails_under_ci_and_skips_elsewhere(monkeypatch):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(FileNotFoundError, match="no model here"):
        _or_skip(_missing)
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="default model unavailable: no model here"):
        _or_skip(_missing)
    assert _or_skip(lambda: 7) == 7

