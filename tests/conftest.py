"""Shared pytest options and hooks.

- ``--unit-url URL``: the propulsion unit the conformance suite talks to (default: the emulator).
- ``--busy N``: run the session beside N CPU-bound processes (tools/busy.py), as a loaded CI
  machine does (``python -m pytest -m campaign --busy 2``; .ci/run loads the emulator's
  campaign rows that way).
  They start before the first test and stop after the last.
- When the environment says ``CI=true``, a test that skips because a tool it needs is missing
  FAILS instead: CI must install every tool (.ci/run), so a skip there would hide an untested
  tier. A tool-missing skip is one whose reason names it so (see :data:`TOOL_MISSING`), or an
  ``importorskip`` of a module that is not installed. Other skips (a platform, a hardware URL
  not given) stay skips.
"""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: Skip reasons that mean "a tool or package this test needs is not installed".
TOOL_MISSING = re.compile(
    r"not installed|not found|missing|cannot link|apt-get install|pip install|"
    r"could not import|no module named",
    re.IGNORECASE,
)

_busy = pytest.StashKey[object]()


def pytest_addoption(parser):
    group = parser.getgroup("thruster-hil")
    group.addoption(
        "--unit-url",
        default=None,
        metavar="URL",
        help="port URL of the unit for the conformance suite (a device path, a pty "
        "path, hwgrep://...); default: start the pty emulator",
    )
    group.addoption(
        "--busy",
        default=0,
        type=_busy_count,
        metavar="N",
        help="run the tests beside N CPU-bound processes (tools/busy.py), as on a "
        "loaded machine; default 0",
    )


def _busy_count(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = -1
    if n < 0:
        raise pytest.UsageError(f"--busy: expected a whole number >= 0, got {text!r}")
    return n


def _load_busy_tool():
    spec = importlib.util.spec_from_file_location(
        "thruster_hil_busy_tool", ROOT / "tools" / "busy.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pytest_configure(config):
    n = config.getoption("--busy", 0)
    if n:
        busy = _load_busy_tool().Busy(n).start()
        config.stash[_busy] = busy


def pytest_unconfigure(config):
    busy = config.stash.get(_busy, None)
    if busy is not None:
        busy.stop()


def pytest_report_header(config):
    busy = config.stash.get(_busy, None)
    lines = []
    if busy is not None:
        lines.append(
            f"busy: {busy.n} CPU-bound processes beside the tests "
            f"(pids {', '.join(map(str, busy.pids))})"
        )
    if ci_strict():
        lines.append("CI=true: a test that skips for a missing tool fails")
    return lines


def ci_strict() -> bool:
    return os.environ.get("CI") == "true"


def tool_missing(reason: str) -> bool:
    """Whether a skip reason says a tool (or package) the test needs is missing."""
    return bool(TOOL_MISSING.search(reason))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not (report.skipped and ci_strict()) or hasattr(report, "wasxfail"):
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    if tool_missing(reason):
        report.outcome = "failed"
        report.longrepr = (
            f"CI=true and a tool this test needs is missing, so it fails rather "
            f"than skip (.ci/run must install it): {reason}"
        )


@pytest.fixture(scope="session")
def busy(request):
    """The session's busy processes (tools/busy.py ``Busy``), or None without ``--busy``."""
    return request.config.stash.get(_busy, None)


@pytest.fixture(scope="session")
def unit_url(request):
    url = request.config.getoption("--unit-url")
    if url:
        yield url
        return
    from thruster_hil.firmware_bridge.emulator import EmulatorProcess

    with EmulatorProcess() as emu:
        yield emu.port
