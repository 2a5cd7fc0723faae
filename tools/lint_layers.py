"""Check the one-way layers by hand: `python tools/lint_layers.py` (exit 0 when kept).

import-linter finds modules by walking the root package's directory, but on disk the design
card's folders (sims/, controller/, firmware_bridge/, hw_configs/) sit beside thruster_hil/ and
setuptools' package-dir maps them in. So a bare `lint-imports` at the repository root cannot see
them ("module thruster_hil.hw_configs does not exist"). This lays the Python sources out in a
temporary directory as a wheel installs them and runs `lint-imports` there with the repository's
contracts (pyproject.toml [tool.importlinter]); tests/test_layers.py runs the same.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def installed_layout(dest: Path, root: Path = ROOT) -> Path:
    """Copy the Python sources of ``root`` into ``dest/thruster_hil`` as the wheel lays them out."""
    cfg = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapping = cfg["package-dir"]
    for pkg in cfg["packages"]:
        src = root / mapping.get(pkg, pkg.replace(".", "/"))
        out = dest.joinpath(*pkg.split("."))
        out.mkdir(parents=True, exist_ok=True)
        for f in src.glob("*.py"):
            shutil.copy2(f, out / f.name)
    return dest


def lint_imports_exe() -> Path | None:
    """The lint-imports beside this interpreter (the [test] extra installs import-linter)."""
    exe = Path(sys.executable).with_name("lint-imports")
    return exe if exe.exists() else None


def lint(dest: Path, config: Path = ROOT / "pyproject.toml") -> subprocess.CompletedProcess:
    """Run lint-imports on the layout in ``dest`` (its stdout and stderr captured)."""
    exe = lint_imports_exe()
    if exe is None:
        raise FileNotFoundError("lint-imports is not installed (pip install -e '.[test]')")
    env = {**os.environ, "PYTHONPATH": str(dest)}
    return subprocess.run(
        [str(exe), str(config), "--no-cache"], cwd=dest, env=env, capture_output=True, text=True
    )


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args(argv)
    try:
        with tempfile.TemporaryDirectory(prefix="lint-layers-") as tmp:
            proc = lint(installed_layout(Path(tmp)))
    except FileNotFoundError as exc:
        print(f"lint_layers: error: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(proc.stdout)
    sys.stderr.write(proc.stderr)
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
