"""The CLI's contract with an operator: JSON with the promised keys, and one-line errors, exit 2."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from thruster_hil.cli import main

# Slow tier (`-m "not slow"` leaves it out): runs the CLI as processes.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]

PLAN_KEYS = {
    "delta_v_mps",
    "burn_duration_s",
    "propellant_kg",
    "stack_mass_kg",
    "perigee_km_before",
    "apogee_km_before",
    "perigee_km_after",
    "apogee_km_after",
    "mean_altitude_change_km",
}


def _run(*argv: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", "thruster_hil.cli", *argv],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
    )


def test_plan_json_has_the_promised_keys(capsys):
    assert main(["plan", "--stack", "dragon-boost-kit", "--raise-perigee-km", "1.6", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert PLAN_KEYS <= out.keys()
    assert out["perigee_km_after"] - out["perigee_km_before"] == pytest.approx(1.6, abs=0.02)


def test_plan_table_is_readable(capsys):
    assert main(["plan", "--stack", "progress", "--delta-v", "0.5"]) == 0
    text = capsys.readouterr().out
    assert "burn duration" in text and "apogee" in text


BAD_ARGS = {
    "no-target": ["plan"],
    "two-targets": ["plan", "--delta-v", "1", "--burn-duration", "10"],
    "negative-dv": ["plan", "--delta-v", "-1"],
    "nan-dv": ["plan", "--delta-v", "nan"],
    "text-dv": ["plan", "--delta-v", "fast"],
    "unknown-stack": ["plan", "--stack", "soyuz", "--delta-v", "1"],
    "missing-file": ["plan", "--stack", "/nonexistent/stack.toml", "--delta-v", "1"],
    "perigee-only": ["plan", "--perigee-km", "410", "--delta-v", "1"],
    "perigee-above-apogee": ["plan", "--perigee-km", "430", "--apogee-km", "410", "--delta-v", "1"],
    "below-current-altitude": ["plan", "--target-mean-altitude-km", "300"],
    "unknown-command": ["fly"],
    "unknown-option": ["plan", "--delta-v", "1", "--warp"],
    "bad-activity": ["plan", "--delta-v", "1", "--solar-activity", "extreme"],
}


@pytest.mark.parametrize("argv", BAD_ARGS.values(), ids=BAD_ARGS.keys())
def test_bad_arguments_give_one_line_and_exit_2(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("thruster-hil: error: ")
    assert err.count("\n") == 1, err
    assert "Traceback" not in err


def test_console_entry_point_in_a_fresh_process():
    """The module entry point behaves as the console script: stdout JSON, exit 0; errors exit 2."""
    good = _run("plan", "--stack", "cygnus", "--delta-v", "0.2", "--json")
    assert good.returncode == 0, good.stderr
    assert PLAN_KEYS <= json.loads(good.stdout).keys()
    bad = _run("plan", "--stack", "cygnus", "--delta-v", "zero")
    assert bad.returncode == 2
    assert bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr


def test_ports_lists_and_marks_the_mega(monkeypatch, capsys):
    """`thruster-hil ports` marks a Mega 2560 by its USB VID:PID and lists the rest plainly."""
    from serial.tools import list_ports, list_ports_common

    def fake(device, vid, pid, desc):
        p = list_ports_common.ListPortInfo(device, skip_link_detection=True)
        p.vid, p.pid, p.description, p.serial_number = vid, pid, desc, "X1"
        return p

    monkeypatch.setattr(
        list_ports,
        "comports",
        lambda: [
            fake("/dev/ttyACM0", 0x2341, 0x0042, "Arduino Mega 2560"),
            fake("/dev/ttyUSB0", 0x0403, 0x6001, "FT232R USB UART"),
        ],
    )
    assert main(["ports", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["ports"]
    assert [(r["device"], r["mega2560"]) for r in rows] == [
        ("/dev/ttyACM0", True),
        ("/dev/ttyUSB0", False),
    ]
    assert main(["ports"]) == 0
    text = capsys.readouterr().out
    assert "2341:0042" in text and "<- Arduino Mega 2560" in text
