"""The tree stays lint-clean and formatted: `ruff check` (pyproject [tool.ruff.lint]) and
`ruff format --check` over the repository, as the house issue left it (issue 15, deliverable 7).
ruff comes with the test extra, so a missing ruff fails here like any missing dependency."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _ruff(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ruff", *args], cwd=ROOT, capture_output=True, text=True
    )


def test_ruff_check_is_clean():
    proc = _ruff("check", "--no-cache", ".")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


def test_ruff_format_leaves_the_tree_as_it_is():
    proc = _ruff("format", "--check", "--no-cache", ".")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


def test_the_check_can_fail(tmp_path):
    """A planted unused import and an unformatted line are both found."""
    bad = tmp_path / "bad.py"
    bad.write_text("import os\nx=1\n")
    assert _ruff("check", "--no-cache", "--isolated", str(bad)).returncode == 1
    assert _ruff("format", "--check", "--no-cache", "--isolated", str(bad)).returncode == 1
