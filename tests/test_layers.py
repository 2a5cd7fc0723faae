"""The house's layers run one way (docs/architecture.md), checked by import-linter.

The contracts live in pyproject.toml ([tool.importlinter]). import-linter finds modules by walking
the root package's directory, and on disk the design card's folders (sims/, controller/,
firmware_bridge/, hw_configs/) sit beside thruster_hil/, mapped into it by setuptools'
package-dir. So the check runs on the installed layout: the tree is copied as a wheel would lay it
out, and lint-imports runs there with the repository's contracts.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import lint_layers  # noqa: E402  (tools/ is scripts, not a package)

ROOT = Path(__file__).resolve().parents[1]


def lint(dest: Path, config: Path) -> subprocess.CompletedProcess:
    if lint_layers.lint_imports_exe() is None:
        if os.environ.get("CI") == "true":
            pytest.fail("lint-imports is not installed (the [test] extra installs import-linter)")
        pytest.skip("lint-imports is not installed (pip install -e '.[test]')")
    return lint_layers.lint(dest, config)


def test_the_tool_an_engineer_runs_by_hand_passes() -> None:
    """tools/lint_layers.py, what docs/architecture.md tells an engineer to run."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "lint_layers.py")], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 kept, 0 broken" in proc.stdout


def test_layers_run_one_way(tmp_path: Path) -> None:
    dest = lint_layers.installed_layout(tmp_path / "site")
    proc = lint(dest, ROOT / "pyproject.toml")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 kept, 0 broken" in proc.stdout


@pytest.mark.parametrize(
    "module, line",
    [
        ("controller/cycle.py", "from thruster_hil.sims import plant"),  # controller -> sims
        ("sims/plant.py", "from thruster_hil.closedloop import runner"),  # plant -> loop
        ("firmware_bridge/codec.py", "from thruster_hil import records"),  # wire -> tools
        (
            "firmware_bridge/link.py",
            "from thruster_hil.sims.thrusters import VS_OPEN",
        ),  # wire -> sims
        ("thruster_hil/core/frames.py", "from thruster_hil.controller import cycle"),  # core -> up
        ("thruster_hil/closedloop/runner.py", "from thruster_hil import config"),  # loop -> tools
    ],
)
def test_an_upward_import_breaks_the_contract(tmp_path: Path, module: str, line: str) -> None:
    """The check can fail: each upward import the review named, planted, is reported."""
    dest = lint_layers.installed_layout(tmp_path / "site")
    top, _, rest = module.partition("/")
    target = (
        dest / "thruster_hil" / rest
        if top == "thruster_hil"
        else dest / "thruster_hil" / top / rest
    )
    target.write_text(target.read_text() + "\n" + line + "  # planted\n")
    proc = lint(dest, ROOT / "pyproject.toml")
    assert proc.returncode != 0, proc.stdout
    assert "0 kept, 1 broken" in proc.stdout
