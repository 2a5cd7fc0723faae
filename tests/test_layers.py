"""The house's layers run one way (docs/architecture.md), checked by import-linter.

The contracts live in pyproject.toml ([tool.importlinter]). import-linter finds modules by walking
the root package's directory, and on disk the design card's folders (sims/, controller/,
firmware_bridge/, hw_configs/) sit beside thruster_hil/, mapped into it by setuptools'
package-dir. So the check runs on the installed layout: the tree is copied as a wheel would lay it
out, and lint-imports runs there with the repository's contracts.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def installed_layout(dest: Path) -> Path:
    """Copy the Python sources into ``dest/thruster_hil`` as the wheel installs them."""
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapping = cfg["package-dir"]
    for pkg in cfg["packages"]:
        src = ROOT / mapping.get(pkg, pkg.replace(".", "/"))
        out = dest.joinpath(*pkg.split("."))
        out.mkdir(parents=True, exist_ok=True)
        for f in src.glob("*.py"):
            shutil.copy2(f, out / f.name)
    return dest


def lint(dest: Path, config: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("lint-imports")
    if not exe.exists():
        if os.environ.get("CI") == "true":
            pytest.fail("lint-imports is not installed (the [test] extra installs import-linter)")
        pytest.skip("lint-imports is not installed (pip install -e '.[test]')")
    env = {**os.environ, "PYTHONPATH": str(dest)}
    return subprocess.run(
        [str(exe), str(config), "--no-cache"], cwd=dest, env=env, capture_output=True, text=True
    )


def test_layers_run_one_way(tmp_path: Path) -> None:
    dest = installed_layout(tmp_path / "site")
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
    dest = installed_layout(tmp_path / "site")
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
