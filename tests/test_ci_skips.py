"""tests/conftest.py: with CI=true a test whose tool is missing fails instead of skipping, and
``--busy N`` runs a session beside N CPU-bound processes (tools/busy.py).

Each case runs a small test file in a pytest session of its own (pytester) with this
repository's conftest.py, so what is checked is the hook CI runs with.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

# Slow tier (`-m "not slow"` leaves it out): runs pytest sessions in subprocesses.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]

SKIPS = """
import shutil, sys
import pytest

def test_tool_missing():
    pytest.skip("frobnicate-cc not installed (apt-get install -y frobnicate)")

def test_linker_missing():
    pytest.skip("clang cannot link -fsanitize=fuzzer (apt-get install -y libclang-rt-14-dev)")

def test_module_missing():
    pytest.importorskip("a_module_that_is_not_there_13")

@pytest.mark.skipif(True, reason="qemu-system-avr missing")
def test_skipif_tool_missing():
    pass

@pytest.mark.skipif(True, reason="reads /proc")
def test_platform_skip():
    pass

def test_no_board_url():
    pytest.skip("no --unit-url given: this check needs a board")

def test_passes():
    pass
"""


def _our_conftest() -> str:
    """This repository's conftest.py, to run in another directory (tools/ found from here)."""
    text = (ROOT / "tests" / "conftest.py").read_text(encoding="utf-8")
    line = "ROOT = Path(__file__).resolve().parents[1]"
    assert line in text
    return text.replace(line, f"ROOT = Path({str(ROOT)!r})")


@pytest.fixture
def session(pytester):
    pytester.makeconftest(_our_conftest())
    pytester.makepyfile(test_skips=SKIPS)
    return pytester


@pytest.mark.parametrize("ci", [None, "false", "1"])
def test_outside_ci_a_missing_tool_is_a_skip(session, monkeypatch, ci):
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    result = session.runpytest("-ra", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, skipped=6)


def test_with_ci_true_a_missing_tool_fails_and_other_skips_stay(session, monkeypatch):
    monkeypatch.setenv("CI", "true")
    result = session.runpytest("-ra", "-p", "no:cacheprovider")
    outcomes = result.parseoutcomes()
    # The four tool-missing tests fail (the skipif one at setup, reported as an error).
    assert outcomes.get("failed", 0) + outcomes.get("errors", outcomes.get("error", 0)) == 4
    assert outcomes["skipped"] == 2 and outcomes["passed"] == 1
    out = result.stdout.str()
    for name in (
        "test_tool_missing",
        "test_linker_missing",
        "test_module_missing",
        "test_skipif_tool_missing",
    ):
        assert name in out
    assert "frobnicate-cc not installed" in out and ".ci/run must install it" in out
    assert "CI=true: a test that skips for a missing tool fails" in out


def test_tool_missing_reasons():
    spec = importlib.util.spec_from_file_location(
        "_conftest_under_test", ROOT / "tests" / "conftest.py"
    )
    conftest = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conftest)
    for reason in (
        "make, avr-gcc not installed (apt-get install -y gcc make)",
        "QEMU rows not run: qemu-system-avr or avr-gcc missing",
        "could not import 'distributed': No module named 'distributed'",
    ):
        assert conftest.tool_missing(reason), reason
    for reason in (
        "reads /proc",
        "no --unit-url given",
        "thruster_hil.sims.orbit.dcm_HN not written yet",
    ):
        assert not conftest.tool_missing(reason), reason


def test_busy_runs_the_session_beside_busy_processes(pytester, monkeypatch):
    """--busy 2: two more processes run while the tests do, and none is left after."""
    monkeypatch.delenv("CI", raising=False)
    pytester.makeconftest(_our_conftest())
    pytester.makepyfile(
        test_load="""
import os, json, pathlib

def test_children(busy):
    pathlib.Path("pids.json").write_text(json.dumps(busy.pids))
    assert busy.running() == 2
"""
    )
    result = pytester.runpytest_subprocess("--busy", "2", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    assert "busy: 2 CPU-bound processes beside the tests" in result.stdout.str()
    import json

    for pid in json.loads((pytester.path / "pids.json").read_text()):
        assert not Path(f"/proc/{pid}").exists() or _zombie(pid), f"busy process {pid} left"
    bad = pytester.runpytest_subprocess("--busy", "-1")
    assert bad.ret == pytest.ExitCode.USAGE_ERROR
    assert "--busy: expected a whole number >= 0, got '-1'" in bad.stderr.str()


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] == "Z"
    except OSError:
        return True
