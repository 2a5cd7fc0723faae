"""Run records: the run directory every `thruster-hil run` writes as it goes."""

import csv
import json

import pytest

from thruster_hil.cli import main


def test_a_run_through_the_emulator_leaves_complete_records(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "--stack", "progress", "--delta-v", "0.05", "--json", "--out",
                 str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["achieved_delta_v_mps"] == printed["achieved_delta_v_mps"]
    assert summary["unit_identity"]["unit"] == "emulator"
    assert summary["unit_identity"]["dict_hash"] == summary["dictionary_hash"]
    assert set(summary["config_sha256"]) == {"stack", "station", "vehicle", "dictionary"}
    rows = list(csv.DictReader((out / "telemetry.csv").open()))
    assert len(rows) == summary["cycles"] == summary["records"]["telemetry_rows"]
    assert float(rows[-1]["dv_along_mps"]) == pytest.approx(summary["achieved_delta_v_mps"],
                                                            rel=1e-3)
    assert any(int(v) > 0 for k, v in rows[0].items() if k.startswith("exec_ms:"))
    capture = (out / "capture.csv").read_text().splitlines()
    assert capture[0] == "t_ns,dir,hex"
    dirs = {line.split(",")[1] for line in capture[1:]}
    assert dirs == {"rx", "tx"}
    # The capture holds the whole conversation: decoding its rx side through the same codec
    # gives one VALVE_REPORT per cycle (progress has one bank).
    from firmware_bridge.codec import Decoder

    dec = Decoder()
    got = []
    for line in capture[1:]:
        _t, direction, hexdata = line.split(",")
        if direction == "rx":
            got += dec.feed(bytes.fromhex(hexdata))
    assert sum(m.name == "VALVE_REPORT" for m in got) == summary["cycles"]


def test_an_existing_run_directory_is_never_overwritten(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    assert main(["run", "--unit", "sim", "--delta-v", "0.05", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--out" in err
    assert (out / "keep.txt").read_text() == "precious"


@pytest.mark.parametrize("mode,delta_v", [("realtime", "0.05"), ("lockstep", "30")])
def test_ctrl_c_stops_the_burn_and_still_writes_the_summary(tmp_path, mode, delta_v):
    """SIGINT during a burn: STOP_ALL, exit 130, summary.json with "aborted": true, and the
    telemetry holds every cycle flown. Realtime: the control thread is pacing; lockstep: the
    cycles run on the link's reader thread while the control thread waits (fire_chain)."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "thruster_hil.cli", "run", "--mode",
                             mode, "--stack", "progress", "--delta-v", delta_v, "--out",
                             str(out), "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=root, env=dict(os.environ, PYTHONPATH=str(root)))
    telemetry = out / "telemetry.csv"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # wait for three cycles on disk
        if telemetry.exists() and len(telemetry.read_text().splitlines()) >= 4:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["aborted"] and summary["abort_reason"] == "interrupted"
    assert not summary["completed"]
    rows = list(csv.DictReader(telemetry.open()))
    assert len(rows) == summary["cycles"] >= 3


@pytest.mark.parametrize("faults", [None, "corrupt=0.05,drop=0.02,seed=5"])
def test_replay_reproduces_the_telemetry_exactly(tmp_path, capsys, faults):
    """The raw capture, re-decoded through the codec, flies the same burn again: the replayed
    telemetry.csv is byte-identical to the recorded one (also with corrupted and dropped frames,
    where the link retransmitted)."""
    out = tmp_path / "run"
    argv = ["run", "--stack", "dragon-boost-kit", "--delta-v", "0.05", "--out", str(out)]
    if faults:
        argv += ["--faults", faults]
    assert main(argv) == 0
    capsys.readouterr()
    assert main(["replay", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["identical"] and result["command_mismatches"] == 0
    assert (out / "telemetry.replay.csv").read_bytes() == (out / "telemetry.csv").read_bytes()
    if faults:  # the run met the faults: retransmissions and/or undecodable frames
        summary = json.loads((out / "summary.json").read_text())
        assert summary["link"]["retries"] + result["decode_errors"] > 0


def test_replay_of_a_directory_that_is_not_a_run_is_one_line(tmp_path, capsys):
    assert main(["replay", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "summary.json" in err


@pytest.mark.parametrize("stack", ["dragon-boost-kit", "cygnus", "progress"])
def test_report_renders_a_png_of_sensible_size_for_each_stack(tmp_path, capsys, stack):
    import struct

    out = tmp_path / "run"
    assert main(["run", "--unit", "sim", "--stack", stack, "--delta-v", "0.05", "--out",
                 str(out)]) == 0
    assert main(["report", str(out)]) == 0
    png = (out / "report.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])
    assert 1000 <= width <= 3000 and 600 <= height <= 2000
    page = (out / "report.html").read_text()
    assert "data:image/png;base64," in page and stack in page
