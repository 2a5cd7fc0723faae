"""README.md keeps the two commands that work on a fresh machine, and CI runs the test one."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _sh_blocks(text: str) -> list[str]:
    return [b.strip() for b in re.findall(r"```sh\n(.*?)```", text, flags=re.S)]


def test_readme_has_the_two_commands():
    blocks = _sh_blocks((ROOT / "README.md").read_text())
    assert any("thruster-hil run" in b and "pip install" in b for b in blocks)
    assert any("pytest" in b and "pip install" in b for b in blocks)


def test_ci_runs_exactly_the_readme_test_command():
    blocks = _sh_blocks((ROOT / "README.md").read_text())
    test_cmd = next(b for b in blocks if "pytest" in b)
    ci_lines = [ln.strip() for ln in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert test_cmd in ci_lines


def test_the_main_job_runs_on_the_built_in_emulator(capsys, tmp_path):
    """The README's main job (without its set-up part) flies the burn through the emulator."""
    from thruster_hil.cli import main

    blocks = _sh_blocks((ROOT / "README.md").read_text())
    job = next(b for b in blocks if "thruster-hil run" in b).split("&& thruster-hil ")[-1]
    assert main(job.split() + ["--json", "--out", str(tmp_path / "run")]) == 0
    import json

    out = json.loads(capsys.readouterr().out)
    assert out["unit"] == "emulator" and out["completed"] and not out["aborted"]
