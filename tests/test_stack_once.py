"""A stack is loaded and validated once per command (issue 15, deliverable 6): the CLI loads it
at its edge and passes the stack and its model down to the plan, the run and the records."""

from __future__ import annotations

import json

import pytest

from thruster_hil import config
from thruster_hil.cli import main

# Slow tier (`-m "not slow"` leaves it out): runs whole commands (plan, run).
pytestmark = pytest.mark.slow


@pytest.fixture
def counted(monkeypatch):
    """Counts of stack files read (``config._read_toml`` of a stacks/ TOML, what every
    ``load_stack`` starts with, whatever name it was imported under) and of stack models built
    (``config.StackModel``, what every ``build_stack_model`` ends with)."""
    counts = {"stack_reads": 0, "models": 0}
    read_toml = config._read_toml
    stack_model = config.StackModel

    def reading(path, where):
        if path.parent.name == "stacks":
            counts["stack_reads"] += 1
        return read_toml(path, where)

    def building(*args, **kwargs):
        counts["models"] += 1
        return stack_model(*args, **kwargs)

    monkeypatch.setattr(config, "_read_toml", reading)
    monkeypatch.setattr(config, "StackModel", building)
    return counts


def test_plan_loads_the_stack_once(counted, capsys):
    assert main(["plan", "--stack", "cygnus", "--delta-v", "0.2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["stack"] == "cygnus"
    assert counted == {"stack_reads": 1, "models": 1}


def test_run_loads_the_stack_once(counted, tmp_path, capsys):
    out = tmp_path / "run"
    assert (
        main(
            [
                "run",
                "--unit",
                "sim",
                "--stack",
                "progress",
                "--delta-v",
                "0.05",
                "--out",
                str(out),
                "--json",
            ]
        )
        == 0
    )
    summary = json.loads(capsys.readouterr().out)
    assert summary["completed"]
    # The records still name the stack's files (from the one loaded stack).
    assert summary["stack_path"].endswith("progress.toml")
    recorded = json.loads((out / "summary.json").read_text())
    assert set(recorded["config_sha256"]) >= {"stack", "station", "vehicle"}
    assert counted == {"stack_reads": 1, "models": 1}


def test_a_failed_run_loads_the_stack_once_too(counted, tmp_path, capsys):
    """The path that writes what summary it can for a run that never flew uses the same stack."""
    out = tmp_path / "run"
    code = main(
        [
            "run",
            "--unit",
            "sim",
            "--stack",
            "progress",
            "--delta-v",
            "0.05",
            "--fail-thruster",
            "no-such-thruster@1",
            "--out",
            str(out),
        ]
    )
    assert code == 2
    assert "no-such-thruster" in capsys.readouterr().err
    assert counted == {"stack_reads": 1, "models": 1}


def test_sustain_loads_the_stack_once(counted, capsys):
    """sustain plans many reboosts (one per trip of the floor) from the one loaded stack."""
    assert main(["sustain", "--stack", "cygnus", "--days", "120", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["stack"] == "cygnus"
    assert counted == {"stack_reads": 1, "models": 1}
