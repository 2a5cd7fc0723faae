"""README.md keeps the two commands that work on a fresh machine, and CI runs the test one."""

import re
from pathlib import Path

import pytest

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


@pytest.mark.slow  # flies the default burn over the emulator (compiles the fused loop)
def test_the_main_job_runs_on_the_built_in_emulator(capsys, tmp_path):
    """The README's main job (without its set-up part) flies the burn through the emulator."""
    from thruster_hil.cli import main

    blocks = _sh_blocks((ROOT / "README.md").read_text())
    job = next(b for b in blocks if "thruster-hil run" in b).split("&& thruster-hil ")[-1]
    assert main(job.split() + ["--json", "--out", str(tmp_path / "run")]) == 0
    import json

    out = json.loads(capsys.readouterr().out)
    assert out["unit"] == "emulator" and out["completed"] and not out["aborted"]


def test_cli_reference_is_generated_from_the_parser():
    """README's CLI reference is exactly what the parser prints (with this interpreter's
    argparse), so it cannot drift from the commands."""
    import sys

    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import make_cli_reference as ref
    finally:
        sys.path.remove(str(ROOT / "tools"))
    text = (ROOT / "README.md").read_text()
    assert ref.current_section(text), "README.md lost its cli-reference markers"
    assert ref.matches(ref.current_section(text), ref.render_reference()), (
        "README.md's CLI reference differs from the parser: run python tools/make_cli_reference.py"
    )
    # Under Python 3.11/3.12 the match is exact: one changed space fails it.
    assert not ref.matches(
        ref.current_section(text).replace("  -h, --help", " -h, --help", 1),
        ref.render_reference(),
        version=(3, 11),
    )
    for name in ("plan", "run", "replay", "report", "monitor", "emulate", "ports", "selftest"):
        assert f"### `thruster-hil {name}`" in text


def test_every_thruster_hil_command_in_the_readme_parses():
    """Each `thruster-hil ...` command the README shows is accepted by the parser."""
    import shlex

    from thruster_hil.cli import build_parser
    from thruster_hil.core.errors import UserError

    commands = []
    for block in _sh_blocks((ROOT / "README.md").read_text()):
        for line in block.splitlines():
            for part in line.split("&&"):
                argv = shlex.split(part, comments=True)
                if argv and argv[0] == "thruster-hil":
                    commands.append(argv[1:])
    assert {argv[0] for argv in commands} >= {
        "run",
        "report",
        "replay",
        "monitor",
        "ports",
        "selftest",
    }
    for argv in commands:
        try:
            build_parser().parse_args(argv)
        except UserError as exc:
            raise AssertionError(f"README: thruster-hil {' '.join(argv)}: {exc}") from None


@pytest.mark.slow  # flies a burn and renders its report
def test_the_walk_through_from_run_to_report(capsys, tmp_path, monkeypatch):
    """The newcomer's path: the main job prints where its run directory is on its last line,
    and `report` on that directory writes report.png."""
    from thruster_hil.cli import main

    monkeypatch.chdir(tmp_path)  # the default run directory is runs/... under the cwd
    blocks = _sh_blocks((ROOT / "README.md").read_text())
    job = next(b for b in blocks if "thruster-hil run" in b).split("&& thruster-hil ")[-1]
    assert main(job.split()) == 0
    last = capsys.readouterr().out.splitlines()[-1]
    assert last.startswith("run records in runs/") and last.endswith("-dragon-boost-kit")
    run_dir = last.removeprefix("run records in ")
    assert main(["report", run_dir]) == 0
    assert (tmp_path / run_dir / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
