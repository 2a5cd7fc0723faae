"""What an operator watches: the progress bar of `run`, `run --live` and `monitor`.

The view is a pure function of a snapshot, so most checks render it to text; the terminal
behaviour (a bar only on a terminal, never with --json; the live view) runs the CLI with its
stderr on a pseudo-terminal.
"""

import csv
import functools
import io
import json
import math
import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from thruster_hil.cli import main
from thruster_hil.live import (
    BAR_CELLS,
    RunDirFollower,
    RunProgress,
    RunWatch,
    bar,
    eta_s,
    render_text,
)
from thruster_hil.stopsignals import as_from_a_terminal

# Slow tier (`-m "not slow"` leaves it out): runs the CLI and the monitor as processes.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONPATH=str(ROOT), COLUMNS="120", LINES="40", TERM="xterm-256color")
ENV.pop("NO_COLOR", None)
ENV.pop("FORCE_COLOR", None)


@functools.cache
def _planned() -> int:
    """The planned cycles of the progress 0.05 m/s burn these tests fly, as run.json records
    them (from the plan, which flies the burn as run --unit sim does)."""
    from thruster_hil.plan import Target, plan_burn

    return max(
        1, math.ceil(plan_burn("progress", Target("delta_v", 0.05))["burn_duration_s"] / 0.5)
    )


def _flown(cycles: int) -> str:
    """The view's count after ``cycles`` cycles of the progress burn: cycles flown of the plan,
    or the cycles flown and the plan when the burn went past it (never over 100 %)."""
    planned = _planned()
    return f" {cycles} of {planned} " if cycles <= planned else f" {cycles}, planned {planned} "


def _strip_ansi(text: str) -> str:
    import re

    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\r", "", text)


def _cli_on_a_terminal(argv, *, stdout_tty=False, until=None, then=None, timeout=120.0):
    """Run the CLI with stderr (and optionally stdout) on a pty; return (rc, stdout, terminal).

    When ``until(text_so_far)`` first holds, ``then(proc)`` runs once (default: send SIGINT)."""
    import fcntl
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    proc = subprocess.Popen(
        [sys.executable, "-m", "thruster_hil.cli", *argv],
        cwd=ROOT,
        env=ENV,
        stdin=subprocess.DEVNULL,
        stderr=slave,
        stdout=slave if stdout_tty else subprocess.PIPE,
        preexec_fn=as_from_a_terminal,
    )
    os.close(slave)
    seen = b""
    interrupted = False
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            r, _, _ = select.select([master], [], [], 0.2)
            if r:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: every writer closed the slave side
                    break
                if not data:
                    break
                seen += data
                if (
                    until is not None
                    and not interrupted
                    and until(_strip_ansi(seen.decode(errors="replace")))
                ):
                    (then or (lambda p: p.send_signal(signal.SIGINT)))(proc)
                    interrupted = True
            elif proc.poll() is not None:
                break
        else:
            pytest.fail(
                f"{argv} did not finish within {timeout} s; the terminal showed:\n"
                + _strip_ansi(seen.decode(errors="replace"))[-3000:]
            )
        out = b"" if stdout_tty else proc.stdout.read()
        rc = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    return rc, out.decode(), _strip_ansi(seen.decode(errors="replace"))


# ---------------------------------------------------------------------------- drawing


def test_bar_fills_in_eighths_and_clips():
    assert bar(0.0) == " " * BAR_CELLS
    assert bar(1.0) == "█" * BAR_CELLS
    assert bar(0.5) == "█" * (BAR_CELLS // 2) + " " * (BAR_CELLS // 2)
    assert bar(1 / (8 * BAR_CELLS)).startswith("▏")  # one eighth of one cell
    assert bar(7.0) == bar(1.0) and bar(-1.0) == bar(0.0)
    assert bar(float("nan")) == bar(None) == " " * BAR_CELLS
    assert all(len(bar(f / 97)) == BAR_CELLS for f in range(98))


SNAP = {
    "title": "dragon-boost-kit via emulator (realtime)",
    "cycle": 49,
    "planned_cycles": 100,
    "t_s": 24.5,
    "wall_s": 25.0,
    "status": 1 | 4,
    "unit": {
        "name": "emulator",
        "mode": "realtime",
        "state": "ARMED",
        "armed": True,
        "tank_kPa": 1650,
    },
    "thrusters": ["trunk-draco-1", "trunk-draco-2", "quad-a-plus-t"],
    "executed_ms": [500, 250, 0],
    "period_ms": 500,
    "dv_mps": 0.01234,
    "target_dv_mps": 0.05,
    "att_err_deg": 6.0,
    "att_limit_deg": 5.0,
    "propellant_kg": 12.345,
    "realtime": True,
    "link": {
        "rtt_ms": 1.25,
        "rtt_ms_p50": 1.5,
        "rtt_ms_p99": 3.75,
        "retries": 2,
        "crc_errors": 7,
        "deadline_misses": 3,
        "frames_sent": 99,
        "frames_received": 98,
        "cycle_start_jitter_ms_p50": 0.08,
        "cycle_start_jitter_ms_p99": 0.61,
        "cycle_start_jitter_ms_max": 71.5,
    },
}


def test_render_shows_every_number_of_the_snapshot():
    text = render_text(SNAP, width=120)
    for expected in (
        "dragon-boost-kit via emulator (realtime)",
        "cycles          50 of 100",
        "50.0 %",
        "t 24.5 s",
        "ETA 0:00:26",
        "state ARMED",
        "armed: yes",
        "tank 1650 kPa",
        "burning, saturated",
        "0.01234 of 0.05000 m/s",
        "24.7 %",
        "6.0000 of 5.0000 deg limit",
        "120.0 %",
        "12.345 kg used",
        "FIRE to report  1.2 ms this cycle (pulses included)",
        "RTT p50 1.50, p99 3.75 ms (PING/PONG)",
        "retries 2",
        "CRC errors 7",
        "deadline misses 3",
        "99 out / 98 in",
        "(of 500 ms)",
        "cycle start     p50 0.08, p99 0.61, max 71.50 ms late",
    ):
        assert expected in text, f"{expected!r} not in\n{text}"
    rows = {
        line.split()[1]: line for line in text.splitlines() if "draco" in line or "quad" in line
    }
    assert "█" * 12 in rows["trunk-draco-1"] and "500 ms" in rows["trunk-draco-1"]
    assert "█" * 6 + " " in rows["trunk-draco-2"] and "250 ms" in rows["trunk-draco-2"]
    assert "█" not in rows["quad-a-plus-t"] and " 0 ms" in rows["quad-a-plus-t"]


def test_the_view_of_18_thrusters_fits_an_80_column_terminal_without_wrapping():
    names = [
        f"quad-{q}-{d}" for q in "abcd" for d in ("plus-t", "minus-t", "plus-x", "minus-x")
    ] + ["trunk-1", "trunk-2"]
    snap = dict(
        SNAP,
        cycle=123456,
        planned_cycles=123456,
        thrusters=names,
        executed_ms=[500] * 18,
        link=dict(SNAP["link"], frames_sent=1234567, frames_received=1234567),
    )
    lines = render_text(snap, width=80).splitlines()
    labels = [ln[2:16].strip() for ln in lines[1:-1]]
    assert "" not in labels[: labels.index("link errors") + 1], "a row wrapped:\n" + "\n".join(
        lines
    )
    # borders, 12 rows (realtime: FIRE to report apart from the RTT, and the cycles' start
    # jitter), the caption, 9 rows of 2
    assert len(lines) == 2 + 12 + 1 + 9


def test_render_without_data_says_so_instead_of_failing():
    text = render_text({"title": "x", "planned_cycles": 10, "unit": {"name": "sim"}})
    assert "waiting for the first cycle" in text
    assert "deadline misses" not in render_text(dict(SNAP, realtime=False))
    assert "cycle start" not in render_text(dict(SNAP, realtime=False))
    assert "in-process unit: no link" in render_text(dict(SNAP, link=None))
    done = render_text(dict(SNAP, finished="aborted: unit: link lost"))
    assert "ABORTED: UNIT: LINK LOST" in done and "ETA" not in done
    assert "no new cycle for 12 s" in render_text(dict(SNAP, quiet_s=12.2))
    assert "no new cycle" not in render_text(dict(SNAP, quiet_s=1.0))


def test_eta_from_the_pace_so_far():
    # 49 cycles after the first took 25 s: 50 more at that pace
    assert eta_s(SNAP) == pytest.approx(50 * 25.0 / 49)
    assert eta_s(dict(SNAP, finished="completed")) is None
    assert eta_s(dict(SNAP, cycle=0)) is None
    assert eta_s({k: v for k, v in SNAP.items() if k != "planned_cycles"}) is None
    assert eta_s(dict(SNAP, cycle=150)) == 0.0


def test_progress_updates_at_most_ten_times_a_second_of_wall_time():
    """10 000 cycles over 10 s of (fake) wall time: 100 updates of the bar, not 10 000."""
    from rich.console import Console

    now = [0.0]
    prog = RunProgress(
        10_000, console=Console(file=io.StringIO()), max_hz=10.0, clock=lambda: now[0]
    )
    for k in range(10_000):
        now[0] = k * 1e-3
        prog.on_cycle(k, {})
    assert 95 <= prog.updates <= 100
    task = prog.progress.tasks[0]
    assert task.total == 10_000 and 9_800 < task.completed < 10_000


def test_run_watch_publishes_the_loop_state_without_the_loop_waiting():
    """RunWatch.on_cycle publishes one tuple, at most publish_hz times a second of wall time;
    finish() publishes the last cycle exactly as the telemetry recorded it."""
    import tempfile

    from thruster_hil.closedloop.runner import run_burn
    from thruster_hil.config import build_stack_model, load_stack
    from thruster_hil.plan import Target, plan_burn
    from thruster_hil.records import RunRecorder

    model = build_stack_model(load_stack("progress"))
    plan = plan_burn("progress", Target("delta_v", 0.05))
    names = list(model.thruster_names)
    kw = dict(
        title="t",
        thrusters=names,
        period_ms=500,
        planned_cycles=84,
        target_dv_mps=0.05,
        att_limit_deg=5.0,
        mass0_kg=model.mass_kg,
    )
    every = RunWatch(publish_hz=1e12, **kw)  # publishes every cycle
    watch = RunWatch(**kw)  # 20 Hz, as in `run --live`
    assert "cycle" not in watch.snapshot()
    with tempfile.TemporaryDirectory() as tmp:
        rec = RunRecorder(Path(tmp) / "run", names, model.mass_kg)
        snaps = []

        def on_cycle(k, info):
            rec.on_cycle(k, info)
            every.on_cycle(k, info)
            watch.on_cycle(k, info)
            if k == 10:
                snaps.append(every.snapshot())

        t0 = time.perf_counter()
        summary = run_burn(model, plan, on_cycle=on_cycle).summary
        wall = time.perf_counter() - t0
        rec.close()
        rows = list(csv.DictReader((Path(tmp) / "run" / "telemetry.csv").open()))
    assert every.published == len(rows) == summary["cycles"]
    assert 1 <= watch.published <= 2 + 20 * wall < len(rows), (watch.published, wall)
    watch.finish("completed")
    snap = watch.snapshot()
    last = rows[-1]
    assert snap["finished"] == "completed"
    assert snap["cycle"] == summary["cycles"] - 1 == int(last["cycle"])
    assert snap["dv_mps"] == pytest.approx(float(last["dv_along_mps"]), abs=1e-9)
    assert snap["propellant_kg"] == pytest.approx(float(last["propellant_kg"]), abs=1e-6)
    assert snap["att_err_deg"] == pytest.approx(float(last["attitude_error_deg"]), abs=1e-6)
    assert snap["executed_ms"] == [int(last[f"exec_ms:{n}"]) for n in names]
    assert snap["unit"]["state"] == "SIM" and snap["link"] is None
    # the snapshot taken at cycle 10 is a copy: later cycles did not change it
    early = rows[10]
    assert snaps[0]["cycle"] == 10
    assert snaps[0]["executed_ms"] == [int(early[f"exec_ms:{n}"]) for n in names]
    assert any(snaps[0]["executed_ms"]) and snaps[0]["executed_ms"] != snap["executed_ms"]


# ---------------------------------------------------------------------------- run


def test_no_progress_bar_when_stderr_is_not_a_terminal(tmp_path, capsys):
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
                str(tmp_path / "run"),
            ]
        )
        == 0
    )
    captured = capsys.readouterr()
    assert captured.err == ""
    assert "run records in" in captured.out


def test_progress_bar_on_a_terminal_but_not_with_json(tmp_path):
    from thruster_hil.plan import Target, plan_burn

    rc, out, term = _cli_on_a_terminal(
        [
            "run",
            "--unit",
            "sim",
            "--stack",
            "progress",
            "--delta-v",
            "0.5",
            "--out",
            str(tmp_path / "a"),
        ]
    )
    assert rc == 0, term
    planned = math.ceil(plan_burn("progress", Target("delta_v", 0.5))["burn_duration_s"] / 0.5)
    assert "cycles" in term and "ETA" in term and f"/{planned}" in term
    assert "run records in" in out
    rc, out, term = _cli_on_a_terminal(
        [
            "run",
            "--unit",
            "sim",
            "--stack",
            "progress",
            "--delta-v",
            "0.5",
            "--json",
            "--out",
            str(tmp_path / "b"),
        ]
    )
    assert rc == 0, term
    assert term.strip() == ""
    assert json.loads(out)["completed"]


def test_live_view_of_a_run_through_the_emulator(tmp_path):
    rc, out, term = _cli_on_a_terminal(
        [
            "run",
            "--live",
            "--stack",
            "progress",
            "--delta-v",
            "0.05",
            "--out",
            str(tmp_path / "run"),
        ]
    )
    assert rc == 0, term
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    final = term[term.rindex("thruster-hil · progress via emulator (lockstep)") :]
    for expected in (
        "COMPLETED",
        _flown(summary["cycles"]),
        f"{summary['achieved_delta_v_mps']:.5f} of 0.05000 m/s",
        "deg limit",
        f"{summary['propellant_kg']:.3f} kg used",
        "armed: no",
        "RTT",
        f"retries {summary['link']['retries']}",
        "dpo-aft-1",
        "dpo-roll-4",
        "(of 500 ms)",
    ):
        assert expected in final, f"{expected!r} not in\n{final}"
    assert "Traceback" not in term
    assert "run records in" in out


# ---------------------------------------------------------------------------- monitor RUN_DIR


def test_follower_reads_only_complete_rows_and_picks_up_the_rest(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    tel = run / "telemetry.csv"
    header = (
        "cycle,t_s,status,dv_along_mps,dv_remaining_mps,altitude_km,attitude_error_deg,"
        "rate_x_dps,rate_y_dps,rate_z_dps,propellant_kg,rtt_ms,cmd_ms:a,cmd_ms:b,"
        "exec_ms:a,exec_ms:b\n"
    )

    def row(k):
        return (
            f"{k},{k * 0.5:.3f},1,{k * 0.001:.9f},0.1,415.0,0.01,0,0,0,{k * 0.1:.6f},0.5,5,6,7,8\n"
        )

    tel.write_text(header + row(0) + row(1)[:20])  # the run is writing row 1
    (run / "run.json").write_text(
        json.dumps(
            {
                "title": "T",
                "unit": "emulator",
                "mode": "lockstep",
                "planned_cycles": 10,
                "period_ms": 500,
                "target_delta_v_mps": 0.01,
                "attitude_limit_deg": 5.0,
                "serial": True,
            }
        )
    )
    f = RunDirFollower(run)
    snap = f.poll()
    assert f.rows == 1 and snap["cycle"] == 0 and not f.finished
    assert snap["thrusters"] == ["a", "b"] and snap["executed_ms"] == [7, 8]
    with tel.open("a") as fh:
        fh.write(row(1)[20:] + row(2))
    snap = f.poll()
    assert f.rows == 3 and snap["cycle"] == 2 and snap["propellant_kg"] == pytest.approx(0.2)
    assert snap["link"]["rtt_ms"] == 0.5 and snap["unit"]["name"] == "emulator"
    (run / "status.json").write_text(
        json.dumps({"link": {"retries": 4, "crc_errors": 1, "unit_state": 3, "armed": True}})
    )
    snap = f.poll()
    assert snap["link"]["retries"] == 4 and snap["unit"]["state"] == "ARMED"
    os.utime(tel, (time.time() - 60, time.time() - 60))  # as if the run had been killed
    assert f.poll()["quiet_s"] == pytest.approx(60, abs=5)
    (run / "summary.json").write_text(json.dumps({"completed": True, "aborted": False}))
    snap = f.poll()
    assert f.finished and snap["finished"] == "completed" and "quiet_s" not in snap
    assert "COMPLETED" in render_text(snap)


def test_monitor_once_shows_a_finished_emulator_run(tmp_path, capsys):
    out = tmp_path / "run"
    assert (
        main(["run", "--stack", "progress", "--delta-v", "0.05", "--json", "--out", str(out)]) == 0
    )
    summary = json.loads(capsys.readouterr().out)
    start = json.loads((out / "run.json").read_text())
    assert start["planned_cycles"] == _planned() and start["unit"] == "emulator"
    assert start["target_delta_v_mps"] == summary["target_delta_v_mps"]
    status = json.loads((out / "status.json").read_text())  # last rewritten at the end
    assert status["link"]["frames_sent"] == summary["link"]["frames_sent"] > summary["cycles"]
    assert main(["monitor", str(out), "--once"]) == 0
    text = capsys.readouterr().out
    for expected in (
        "progress via emulator (lockstep)",
        "COMPLETED",
        _flown(summary["cycles"]),
        f"{summary['achieved_delta_v_mps']:.5f} of 0.05000 m/s",
        f"{summary['link']['frames_sent']} out / ",
    ):
        assert expected in text, f"{expected!r} not in\n{text}"


def test_monitor_exits_as_the_run_did(tmp_path, capsys):
    """monitor's exit status is the run's: 0 completed, 1 aborted, 130 interrupted."""
    out = tmp_path / "run"
    assert main(["run", "--stack", "progress", "--delta-v", "0.05", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["monitor", str(out), "--once"]) == 0
    summary_path = out / "summary.json"
    summary = json.loads(summary_path.read_text())
    for reason, status in (("unit: no reply to FIRE", 1), ("interrupted", 130)):
        summary_path.write_text(
            json.dumps(dict(summary, aborted=True, completed=False, abort_reason=reason))
        )
        assert main(["monitor", str(out), "--once"]) == status
    capsys.readouterr()


def test_monitor_follows_a_run_and_exits_when_its_summary_appears(tmp_path):
    out = tmp_path / "run"
    assert (
        main(
            ["run", "--unit", "sim", "--stack", "progress", "--delta-v", "0.05", "--out", str(out)]
        )
        == 0
    )
    # Replay the finished run's files into a fresh directory as a run would write them.
    live = tmp_path / "live"
    live.mkdir()
    (live / "run.json").write_text((out / "run.json").read_text())
    lines = (out / "telemetry.csv").read_text().splitlines(keepends=True)
    (live / "telemetry.csv").write_text("".join(lines[:3]))
    proc = subprocess.Popen(
        [sys.executable, "-m", "thruster_hil.cli", "monitor", str(live)],
        cwd=ROOT,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(timeout=1.0)  # no summary yet: it keeps following
        with (live / "telemetry.csv").open("a") as f:
            f.write("".join(lines[3:]))
        (live / "summary.json").write_text((out / "summary.json").read_text())
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr
    assert stderr == ""
    last = lines[-1].split(",")
    assert _flown(int(last[0]) + 1) in stdout and "COMPLETED" in stdout


def test_monitor_ctrl_c_exits_130_without_a_traceback(tmp_path):
    out = tmp_path / "run"
    assert (
        main(
            ["run", "--unit", "sim", "--stack", "progress", "--delta-v", "0.05", "--out", str(out)]
        )
        == 0
    )
    (out / "summary.json").unlink()  # as if the run were still flying
    rc, _, term = _cli_on_a_terminal(
        ["monitor", str(out)],
        stdout_tty=True,
        until=lambda text: f"{_planned()} " in text,
        timeout=60,
    )
    assert rc == 130, term
    assert "Traceback" not in term
    assert term.rstrip().endswith("thruster-hil: interrupted")


# ---------------------------------------------------------------------------- monitor --port


def test_monitor_port_shows_the_unit_housekeeping_and_never_arms_it(capsys):
    from thruster_hil.firmware_bridge.emulator import EmulatorProcess
    from thruster_hil.firmware_bridge.link import Link

    with EmulatorProcess(channels=20) as emu:
        assert main(["monitor", "--port", emu.port, "--once"]) == 0
        text = capsys.readouterr().out
        # nothing wrapped at 80 columns: a line without a label is one of the two that have none
        unlabelled = [ln[17:].strip() for ln in text.splitlines()[1:-1] if not ln[2:16].strip()]
        assert [u.split()[0] for u in unlabelled] == ["█", "UART"], text
        for expected in (
            "firmware 0x0100",
            "20 channels",
            "state SAFE",
            "armed: no",
            "tank ",
            "kPa",
            "HK ",
            "RTT",
            "retries 0",
            "CRC errors 0",
            "valves 0",
            "ch 16..19",
            "frames in",
            "session errors 0",
        ):
            assert expected in text, f"{expected!r} not in\n{text}"
        # A port a run holds (opened exclusively) is refused in one line.
        with Link(emu.port) as held:
            held.open()
            assert main(["monitor", "--port", emu.port, "--once"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "in use" in err


def test_monitor_port_follows_the_unit_until_its_link_goes_down():
    """Without --once, monitor --port keeps drawing the unit's HK; when the unit goes away (the
    emulator stops and its pty with it) it says so in one line and exits 1."""
    from thruster_hil.firmware_bridge.emulator import EmulatorProcess

    with EmulatorProcess() as emu:
        rc, _, term = _cli_on_a_terminal(
            ["monitor", "--port", emu.port],
            stdout_tty=True,
            until=lambda text: "last HK" in text,
            then=lambda proc: emu.stop(),
            timeout=60,
        )
    assert rc == 1, term
    assert "state SAFE" in term and "armed: no" in term and "Traceback" not in term
    assert term.rstrip().splitlines()[-1] == f"thruster-hil: error: {emu.port}: the link went down"


@pytest.mark.parametrize(
    "argv",
    [
        ["monitor"],
        ["monitor", "x", "--port", "loop://"],
        ["monitor", "/nonexistent/run"],
        ["monitor", "/"],
        ["monitor", "{garbage}", "--once"],
        ["monitor", "{not_numbers}", "--once"],
    ],
)
def test_monitor_bad_arguments_are_one_line(argv, capsys, tmp_path):
    for name, text in (
        ("garbage", "hello\nworld\n"),
        ("not_numbers", "cycle,t_s,rtt_ms\nzero,0.0,0.1\n"),
    ):
        (tmp_path / name).mkdir()
        (tmp_path / name / "telemetry.csv").write_text(text)
    argv = [
        a.format(garbage=tmp_path / "garbage", not_numbers=tmp_path / "not_numbers") for a in argv
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("thruster-hil: error: ") and err.count("\n") == 1, err
