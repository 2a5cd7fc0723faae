"""Run records: the run directory every `thruster-hil run` writes as it goes."""

import csv
import json

import pytest

from thruster_hil.cli import main
from thruster_hil.stopsignals import as_from_a_terminal

# Slow tier (`-m "not slow"` leaves it out): runs and kills host processes mid-burn.
pytestmark = pytest.mark.slow


def test_a_run_through_the_emulator_leaves_complete_records(tmp_path, capsys):
    out = tmp_path / "run"
    assert (
        main(["run", "--stack", "progress", "--delta-v", "0.05", "--json", "--out", str(out)]) == 0
    )
    printed = json.loads(capsys.readouterr().out)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["achieved_delta_v_mps"] == printed["achieved_delta_v_mps"]
    assert summary["unit_identity"]["unit"] == "emulator"
    assert summary["unit_identity"]["dict_hash"] == summary["dictionary_hash"]
    assert set(summary["config_sha256"]) == {"stack", "station", "vehicle", "dictionary"}
    rows = list(csv.DictReader((out / "telemetry.csv").open()))
    assert len(rows) == summary["cycles"] == summary["records"]["telemetry_rows"]
    assert float(rows[-1]["dv_along_mps"]) == pytest.approx(
        summary["achieved_delta_v_mps"], rel=1e-3
    )
    assert any(int(v) > 0 for k, v in rows[0].items() if k.startswith("exec_ms:"))
    capture = (out / "capture.csv").read_text().splitlines()
    assert capture[0] == "t_ns,dir,hex"
    dirs = {line.split(",")[1] for line in capture[1:]}
    assert dirs == {"rx", "tx"}
    # The capture holds the whole conversation: decoding its rx side through the same codec
    # gives one VALVE_REPORT per cycle (progress has one bank).
    from thruster_hil.firmware_bridge.codec import Decoder

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


@pytest.mark.parametrize("mode,delta_v", [("realtime", "0.05"), ("lockstep", "5")])
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
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "thruster_hil.cli",
            "run",
            "--mode",
            mode,
            "--stack",
            "progress",
            "--delta-v",
            delta_v,
            "--out",
            str(out),
            "--json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=root,
        env=dict(os.environ, PYTHONPATH=str(root)),
        preexec_fn=as_from_a_terminal,
    )
    telemetry = out / "telemetry.csv"
    # Wait for three cycles on disk, however long a busy machine takes to compile the kernels
    # (65 s has been seen): the 15-minute guard only stops a hung run.
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline and proc.poll() is None:
        if telemetry.exists() and len(telemetry.read_text().splitlines()) >= 4:
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()[1]
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["aborted"] and summary["abort_reason"] == "interrupted"
    assert not summary["completed"]
    assert summary["valves_closed"] is True  # the unit acknowledged the final STOP_ALL
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
    assert (
        main(["run", "--unit", "sim", "--stack", stack, "--delta-v", "0.05", "--out", str(out)])
        == 0
    )
    assert main(["report", str(out)]) == 0
    png = (out / "report.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])
    assert 1000 <= width <= 3000 and 600 <= height <= 2000
    page = (out / "report.html").read_text()
    assert "data:image/png;base64," in page and stack in page


def _children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (from /proc)."""
    from pathlib import Path

    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # exited while we looked
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def _running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (exited, not yet reaped)."""
    from pathlib import Path

    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


@pytest.mark.skipif(not __import__("sys").platform.startswith("linux"), reason="reads /proc")
def test_sigkill_mid_burn_leaves_every_flown_cycle_on_disk_and_no_emulator(tmp_path):
    """Killing a realtime run with SIGKILL mid-burn leaves telemetry.csv parseable, with every
    cycle up to the last second; the emulator it started exits with it."""
    import os
    import subprocess
    import sys
    import time
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "thruster_hil.cli",
            "run",
            "--mode",
            "realtime",
            "--stack",
            "progress",
            "--delta-v",
            "0.05",
            "--out",
            str(out),
            "--json",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=root,
        env=dict(os.environ, PYTHONPATH=str(root)),
    )
    telemetry = out / "telemetry.csv"
    t_first = None
    deadline = time.monotonic() + 900  # a guard against a hung run, not a bound on its speed
    try:
        while True:  # poll the file until five cycles are on disk
            assert time.monotonic() < deadline, "no 5 cycles on disk within 15 min"
            assert proc.poll() is None, proc.stderr.read().decode()
            rows = len(telemetry.read_bytes().splitlines()) - 1 if telemetry.exists() else 0
            if rows >= 1 and t_first is None:
                t_first = time.monotonic()  # cycle 0 is on disk: the burn's clock started
            if rows >= 5:
                break
            time.sleep(0.02)
        emulators = [
            p
            for p in _children(proc.pid)
            if b"thruster_hil.firmware_bridge.emulator" in Path(f"/proc/{p}/cmdline").read_bytes()
        ]
        assert len(emulators) == 1
        t_kill = time.monotonic()
        proc.kill()
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    emulator = emulators[0]
    gone = time.monotonic() + 10
    while _running(emulator) and time.monotonic() < gone:
        time.sleep(0.02)  # polling the process table for its exit, bounded
    alive = _running(emulator)
    if alive:
        os.kill(emulator, 9)  # leave nothing behind, then fail
    assert not alive, "the emulator outlived the killed run by 10 s"

    text = telemetry.read_text()
    assert text.endswith("\n")  # no half-written row
    header, *data = list(csv.reader(text.splitlines()))
    assert len(data) >= 5
    assert all(len(row) == len(header) for row in data)
    for row in data:  # every field of every row is a number
        [float(v) for v in row]
    assert [int(r[0]) for r in data] == list(range(len(data)))  # consecutive from cycle 0
    t_last = float(data[-1][1])
    assert [float(r[1]) for r in data] == pytest.approx([0.5 * k for k in range(len(data))])
    elapsed = t_kill - t_first
    assert elapsed - 1.0 <= t_last <= elapsed + 1.0, (t_last, elapsed)
    assert not (out / "summary.json").exists()


@pytest.mark.slow
def test_the_default_run_flies_on_a_machine_that_has_compiled_nothing(tmp_path):
    """The README's main job with an empty numba cache (a fresh machine): compiling the cycle
    takes seconds, and it must happen before the unit is armed, or the unit's link watchdog
    expires and it refuses the first FIRE. The run completes its whole burn."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(root), NUMBA_CACHE_DIR=str(tmp_path / "numba-cache"))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "thruster_hil.cli",
            "run",
            "--stack",
            "dragon-boost-kit",
            "--raise-perigee-km",
            "1.6",
            "--out",
            str(out),
            "--json",
        ],
        capture_output=True,
        text=True,
        cwd=root,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr + proc.stdout
    summary = json.loads(proc.stdout)
    assert summary["completed"] and not summary["aborted"]
    assert abs(summary["delta_v_error_pct"]) < 0.5
    assert any((tmp_path / "numba-cache").rglob("*.nbi"))  # it really compiled into the new cache


@pytest.mark.parametrize("late_ns, used", [(-1, True), (0, False)])
def test_replay_leaves_out_a_realtime_report_the_live_link_counted_late(late_ns, used):
    """A REALTIME report read at its FIRE's write + period + slack or later missed its deadline
    in the live run (the session's rule, on the same stamps the capture keeps), so the replay
    flies that bank as the live link did: nothing executed."""
    import numpy as np
    from thruster_hil.firmware_bridge import codec
    from thruster_hil.firmware_bridge.linkrules import REALTIME_REPORT_SLACK_MS

    from thruster_hil.replay import ReplayUnit, _Step

    fields = {
        f.name: 0
        for f in codec.MESSAGES["VALVE_REPORT"].fields
        if f.name not in ("step", "bank", "executed_ticks")
    }
    frame = codec.encode("VALVE_REPORT", 1, 0, **fields, step=1, bank=0, executed_ticks=[7] * 16)
    (msg,) = codec.Decoder().feed(frame)
    window = (500 + REALTIME_REPORT_SLACK_MS) * 1_000_000
    t0 = 10**12
    st = _Step(first_tx_ns=t0, reports={0: (t0 + window + late_ns, msg)}, fire_ticks={})
    unit = ReplayUnit({1: st}, 4, report_window_ns=window)
    rep = unit.execute(0, np.array([7, 7, 7, 7]))
    assert list(rep.executed_ms) == ([7] * 4 if used else [0] * 4)
