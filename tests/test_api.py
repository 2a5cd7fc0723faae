"""The Python API (docs/api.md, issue 16 item 3): each call gives the CLI's numbers as typed
results, the time series is telemetry.csv's, errors are exceptions with the CLI's one line, a
burn that misses its target is a result, and the example in docs/api.md runs."""

from __future__ import annotations

import csv
import dataclasses
import errno
import inspect
import json
import math
import os
import re
import shutil
import tempfile
import typing
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from thruster_hil import api
from thruster_hil.api.results import verdict_of
from thruster_hil.cli import _run_status, main
from thruster_hil.plan import Target

ROOT = Path(__file__).resolve().parents[1]
STACK = "dragon-boost-kit"
DV = 0.05  # m/s: a short burn (about 60 cycles)
#: What differs between two flights of the same burn: the wall clock and where it was written.
VOLATILE = {"wall_s", "cycles_per_s", "cases_per_s", "run_dir", "out_dir"}


@pytest.fixture(scope="module")
def plan() -> api.Plan:
    return api.plan(STACK, delta_v_mps=DV)


def _stable(summary: dict) -> dict:
    return {k: v for k, v in json.loads(json.dumps(summary)).items() if k not in VOLATILE}


def assert_series_is_the_file(series: api.TimeSeries, path: Path) -> None:
    """Every column of telemetry.csv, row by row: the integer columns exactly, the others to
    the rounding of the file's own cells (half a unit in the last decimal written)."""
    with open(path, newline="", encoding="utf-8") as f:
        header, *rows = list(csv.reader(f))
    cols = series.columns()
    assert list(cols) == header
    assert len(series) == len(rows) > 0
    np.testing.assert_array_equal(series.cycle, np.arange(len(rows)))
    for j, name in enumerate(header):
        cells = [r[j] for r in rows]
        got = cols[name]
        assert got.shape == (len(rows),), name
        if name in ("cycle", "status") or name.startswith(("cmd_ms:", "exec_ms:")):
            assert got.dtype.kind == "i", name
            np.testing.assert_array_equal(got, [int(c) for c in cells], err_msg=name)
            continue
        written = np.array([float(c) for c in cells])
        decimals = np.array([len(c.partition(".")[2]) for c in cells])
        assert (decimals > 0).all(), name
        tol = 0.5 * 10.0**-decimals * (1 + 1e-9) + 1e-12 * np.abs(written)
        bad = ~(np.abs(got - written) <= tol) & ~(np.isnan(got) & np.isnan(written))
        assert not bad.any(), (name, got[bad][:3], written[bad][:3])


# ---- plan and run against the CLI -----------------------------------------------------------


@pytest.mark.slow
def test_plan_is_the_cli_plan(plan, capsys):
    assert main(["plan", "--stack", STACK, "--delta-v", repr(DV), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(plan.data))
    assert plan.delta_v_mps == plan.data["delta_v_mps"] == DV
    assert plan.target == Target("delta_v", DV)
    assert plan.thrusters[: len(plan.translation_thrusters)] == plan.translation_thrusters
    assert plan.perigee_km_after > plan.perigee_km_before


@pytest.mark.slow
def test_run_sim_is_the_cli_run(plan, tmp_path, capsys):
    """`run --unit sim` and api.run: the same summary and the same telemetry.csv, to the byte;
    the series is that file's columns."""
    cli_dir, api_dir = tmp_path / "cli", tmp_path / "api"
    argv = ["run", "--unit", "sim", "--stack", STACK, "--delta-v", repr(DV)]
    assert main([*argv, "--out", str(cli_dir), "--json"]) == 0
    cli = json.loads(capsys.readouterr().out)
    r = api.run(plan, out=api_dir)
    assert (api_dir / "telemetry.csv").read_bytes() == (cli_dir / "telemetry.csv").read_bytes()
    assert _stable(r.summary) == _stable(cli)
    assert r.verdict == "completed" and r.passed and r.reason is None
    assert _run_status(r.summary) == 0
    assert r.run_dir == api_dir and r.unit == "sim" and r.link is None
    assert r.cycles == len(r.series) == json.loads((api_dir / "summary.json").read_text())["cycles"]
    assert r.achieved_delta_v_mps == cli["achieved_delta_v_mps"]
    # The last row is the last commanded cycle; the burn's numbers add that cycle's tail-off.
    assert r.series.dv_along_mps[-1] == pytest.approx(r.achieved_delta_v_mps, rel=0.01)
    assert r.series.propellant_kg[-1] == pytest.approx(r.propellant_kg, rel=1e-12)
    by_tank = dict(zip(r.series.tanks, r.series.propellant_by_tank_kg[-1], strict=True))
    assert by_tank == pytest.approx(r.propellant_by_tank_kg, rel=1e-12)
    assert_series_is_the_file(r.series, api_dir / "telemetry.csv")


@pytest.mark.slow
def test_a_run_without_out_writes_nothing_and_flies_the_same(plan, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with_dir = api.run(plan, out="run")
    bare = api.run(plan)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    assert bare.run_dir is None and "run_dir" not in bare.summary
    assert _stable(bare.summary) == _stable(with_dir.summary)
    for name, col in with_dir.series.columns().items():
        np.testing.assert_array_equal(bare.series.columns()[name], col, err_msg=name)


@pytest.mark.slow
def test_the_series_grows_past_its_first_capacity(plan, tmp_path, monkeypatch):
    from thruster_hil.api import burns, results

    class Small(results.SeriesRecorder):
        def __init__(self, thrusters, tanks, mass0_kg, capacity):
            super().__init__(thrusters, tanks, mass0_kg, 16)

    monkeypatch.setattr(burns, "SeriesRecorder", Small)
    r = api.run(plan, out=tmp_path / "run")
    assert len(r.series) == r.cycles > 32  # grown twice
    assert_series_is_the_file(r.series, tmp_path / "run" / "telemetry.csv")


# ---- any unit; replay -------------------------------------------------------------------------


@pytest.mark.slow
def test_an_emulator_run_replays_to_the_same_series(plan, tmp_path):
    run_dir = tmp_path / "hil"
    r = api.run(plan, unit="emulator", out=run_dir)
    assert r.verdict == "completed" and r.unit == "emulator" and r.valves_closed is True
    assert r.link["frames_received"] > 0 and (r.series.rtt_ms > 0).all()
    assert (r.series.executed_ms <= r.series.commanded_ms).all()
    assert_series_is_the_file(r.series, run_dir / "telemetry.csv")
    again = api.replay(run_dir)
    assert again.identical and again.cycles == r.cycles and again.command_mismatches == 0
    assert again.replayed == run_dir / "telemetry.replay.csv" and again.decode_errors == 0
    for name, col in r.series.columns().items():
        np.testing.assert_array_equal(again.series.columns()[name], col, err_msg=name)


@pytest.mark.slow
def test_the_board_firmware_under_qemu(plan, tmp_path):
    """The firmware tier (QEMU's timing is not faithful: no timing assertion)."""
    missing = [t for t in ("make", "avr-gcc", "qemu-system-avr") if shutil.which(t) is None]
    if missing and os.environ.get("CI"):
        pytest.fail(f"CI must install {', '.join(missing)} (.ci/run)")
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (qemu-system-misc gcc-avr avr-libc)")
    r = api.run(plan, unit="qemu", out=tmp_path / "qemu")
    assert r.verdict == "completed", r.reason
    assert r.unit == "qemu" and r.link["crc_errors"] == 0 and len(r.series) == r.cycles
    assert_series_is_the_file(r.series, tmp_path / "qemu" / "telemetry.csv")
    assert api.replay(r.run_dir).identical


@pytest.mark.slow
def test_a_unit_on_a_port_url(plan):
    from thruster_hil.closedloop.hil import start_unit_process

    process = start_unit_process("emulator")
    try:
        r = api.run(plan, port=process.port)
    finally:
        process.stop()
    assert r.unit == process.port and r.verdict == "completed" and r.valves_closed is True
    assert r.run_dir is None and len(r.series) == r.cycles


@pytest.mark.slow
def test_a_burn_without_thrust_is_a_result_not_an_exception(plan):
    r = api.run(plan, fail_thrusters={name: 0.0 for name in plan.translation_thrusters})
    assert r.verdict == "aborted" and not r.passed
    assert "every translation thruster has failed off" in r.reason
    assert _run_status(r.summary) == 1  # what the CLI exits with
    n = len(plan.translation_thrusters)
    assert len(r.series) == r.cycles and not r.series.executed_ms[:, :n].any()


@pytest.mark.slow
def test_ctrl_c_during_the_burn_is_an_aborted_result(plan, tmp_path, monkeypatch):
    """KeyboardInterrupt (a notebook's interrupt) stops the burn as the CLI's Ctrl-C does: the
    cycles flown are kept, the verdict says aborted, summary.json is written."""
    from thruster_hil.closedloop import runner

    keep = runner.IdealUnit.execute

    def execute(self, cycle, on_ms):
        if cycle == 5:
            raise KeyboardInterrupt
        return keep(self, cycle, on_ms)

    monkeypatch.setattr(runner.IdealUnit, "execute", execute)
    r = api.run(plan, out=tmp_path / "run")
    assert (r.verdict, r.reason, r.cycles, len(r.series)) == ("aborted", "interrupted", 5, 5)
    assert _run_status(r.summary) == 130
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["signal"] == "SIGINT"
    assert_series_is_the_file(r.series, tmp_path / "run" / "telemetry.csv")


@pytest.mark.slow
def test_records_that_cannot_be_written_raise_with_the_result(plan, tmp_path, monkeypatch):
    from thruster_hil.records import RecordError, RunRecorder

    def finish(self, summary, meta):
        self.close()
        raise RecordError(self.dir / "summary.json", OSError(errno.ENOSPC, "No space left"))

    monkeypatch.setattr(RunRecorder, "finish", finish)
    with pytest.raises(api.RunRecordsError) as caught:
        api.run(plan, out=tmp_path / "run")
    assert isinstance(caught.value, api.UserError)
    assert "summary.json" in str(caught.value) and "No space left" in str(caught.value)
    assert caught.value.result.verdict == "completed"


# ---- Monte-Carlo --------------------------------------------------------------------------------


@pytest.mark.slow
def test_montecarlo_is_the_cli_campaign_and_each_case_reruns(plan, tmp_path, capsys):
    argv = ["montecarlo", "--stack", STACK, "--delta-v", repr(DV), "--cases", "6", "--seed", "3"]
    main([*argv, "--out", str(tmp_path / "cli"), "--json"])
    cli = json.loads(capsys.readouterr().out)
    mc = api.montecarlo(plan, 6, seed=3, out=tmp_path / "api")
    assert (tmp_path / "api" / "cases.csv").read_bytes() == (
        tmp_path / "cli" / "cases.csv"
    ).read_bytes()
    assert _stable(mc.summary) == _stable(cli)
    o = mc.outcomes
    assert len(o) == mc.cases == 6 and mc.passed + mc.failed == 6
    assert mc.passed == int(o.passed.sum()) and mc.all_passed == (mc.failed == 0)
    with open(tmp_path / "api" / "cases.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["case_seed"]) for r in rows] == o.case_seed.tolist()
    assert [float(r["true_delta_v_mps"]) for r in rows] == o.true_delta_v_mps.tolist()
    assert [bool(int(r["passed"])) for r in rows] == o.passed.tolist()
    k = 4
    one = api.run(plan, dispersions="default", case_seed=int(o.case_seed[k]))
    assert one.true_delta_v_mps == o.true_delta_v_mps[k]
    assert one.summary["case_seed"] == o.case_seed[k]
    assert (one.verdict == "completed") == bool(o.completed[k])


# ---- errors ---------------------------------------------------------------------------------


def test_a_bad_stack_name_is_a_config_error_with_the_cli_line(capsys):
    with pytest.raises(api.ConfigError) as caught:
        api.plan("soyuz", delta_v_mps=0.1)
    line = str(caught.value)
    assert "soyuz" in line and "dragon-boost-kit" in line and "\n" not in line
    assert isinstance(caught.value, api.UserError)
    assert main(["plan", "--stack", "soyuz", "--delta-v", "0.1"]) == 2
    assert capsys.readouterr().err == f"thruster-hil: error: {line}\n"


BAD_CALLS = {
    "no target": lambda: api.plan(STACK),
    "two targets": lambda: api.plan(STACK, delta_v_mps=0.1, burn_duration_s=10.0),
    "negative target": lambda: api.plan(STACK, delta_v_mps=-1.0),
    "nan target": lambda: api.plan(STACK, raise_perigee_km=math.nan),
    "bool target": lambda: api.plan(STACK, delta_v_mps=True),
    "text target": lambda: api.plan(STACK, delta_v_mps="fast"),
    "perigee only": lambda: api.plan(STACK, delta_v_mps=0.1, perigee_km=410.0),
    "infinite apogee": lambda: api.plan(STACK, delta_v_mps=0.1, perigee_km=410, apogee_km=math.inf),
    "unknown activity": lambda: api.plan(STACK, delta_v_mps=0.1, solar_activity="extreme"),
    "f107 out of range": lambda: api.plan(STACK, delta_v_mps=0.1, f107_sfu=1e6),
    "stack not a name": lambda: api.plan(42, delta_v_mps=0.1),
    "missing stack file": lambda: api.plan("/nonexistent/stack.toml", delta_v_mps=0.1),
    "run without a plan": lambda: api.run({"delta_v_mps": 0.1}),
    "montecarlo without a plan": lambda: api.montecarlo(None, 3),
    "replay of nothing": lambda: api.replay("/nonexistent/run"),
}


@pytest.mark.parametrize("call", BAD_CALLS.values(), ids=BAD_CALLS.keys())
def test_bad_input_raises_one_line(call):
    with pytest.raises(api.UserError) as caught:
        call()
    assert str(caught.value) and "\n" not in str(caught.value)


BAD_RUNS = {
    "unknown unit": lambda p, d: api.run(p, unit="emulater"),
    "unit and port": lambda p, d: api.run(p, unit="sim", port="loop://"),
    "faults on sim": lambda p, d: api.run(p, faults="drop=0.1"),
    "realtime sim": lambda p, d: api.run(p, mode="realtime"),
    "unknown mode": lambda p, d: api.run(p, unit="emulator", mode="fast"),
    "bad fault spec": lambda p, d: api.run(p, unit="emulator", faults="explode=1"),
    "faults on qemu": lambda p, d: api.run(p, unit="qemu", faults="drop=0.1"),
    "unknown thruster": lambda p, d: api.run(p, fail_thrusters={"Z9": 1.0}),
    "negative failure time": lambda p, d: api.run(p, fail_thrusters={p.thrusters[0]: -1.0}),
    "failures as a list": lambda p, d: api.run(p, fail_thrusters=[(p.thrusters[0], 1.0)]),
    "case without dispersions": lambda p, d: api.run(p, case_seed=1),
    "case on the emulator": lambda p, d: api.run(
        p, unit="emulator", dispersions="default", case_seed=1
    ),
    "case and case_seed": lambda p, d: api.run(p, dispersions="default", case=1, case_seed=2),
    "negative case seed": lambda p, d: api.run(p, dispersions="default", case_seed=-1),
    "unknown dispersions": lambda p, d: api.run(p, dispersions="nope", case_seed=1),
    "run directory not empty": lambda p, d: api.run(p, out=d),
    "no cases": lambda p, d: api.montecarlo(p, 0),
    "threads and scheduler": lambda p, d: api.montecarlo(p, 3, threads=1, scheduler="tcp://x:1"),
    "montecarlo out not empty": lambda p, d: api.montecarlo(p, 3, out=d),
    "replay of a directory without a plan": lambda p, d: api.replay(d),
}


@pytest.mark.slow  # (the plan fixture flies the burn)
@pytest.mark.parametrize("call", BAD_RUNS.values(), ids=BAD_RUNS.keys())
def test_bad_run_input_raises_one_line_before_anything_flies(call, plan, tmp_path):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "summary.json").write_text("{}")
    with pytest.raises(api.UserError) as caught:
        call(plan, taken)
    assert str(caught.value) and "\n" not in str(caught.value)
    assert sorted(p.name for p in taken.iterdir()) == ["summary.json"]  # nothing written


# ---- verdicts, names, types -------------------------------------------------------------------


@given(
    aborted=st.booleans(),
    completed=st.booleans(),
    failure=st.none() | st.text(min_size=1),
    signal=st.sampled_from([None, "SIGINT", "SIGTERM", "SIGHUP"]),
    abort_reason=st.sampled_from([None, "interrupted", "unit: the link went down"]),
)
def test_the_verdict_is_the_cli_exit_status(aborted, completed, failure, signal, abort_reason):
    summary = {
        "aborted": aborted,
        "completed": completed,
        "failure_reason": None if aborted else failure,
        "abort_reason": abort_reason if aborted else None,
        "signal": signal if aborted else None,
    }
    verdict, reason = verdict_of(summary)
    assert (verdict == "completed") == (_run_status(summary) == 0)
    assert (verdict == "aborted") == aborted
    assert reason == {"completed": None, "failed": failure, "aborted": abort_reason}[verdict]


def test_the_public_names_are_exported_typed_and_documented():
    doc = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    assert sorted(api.__all__) == sorted(set(api.__all__))
    for name in api.__all__:
        obj = getattr(api, name)
        assert re.search(rf"\b{name}\b", doc), f"docs/api.md does not mention {name}"
        if inspect.isfunction(obj):
            assert f"api.{name}(" in doc
            hints = typing.get_type_hints(obj)
            assert "return" in hints, name
        elif isinstance(obj, type) and dataclasses.is_dataclass(obj):
            hints = typing.get_type_hints(obj)
            assert {f.name for f in dataclasses.fields(obj)} <= hints.keys(), name
    for cls in (api.ConfigError, api.RecordError, api.RunRecordsError):
        assert issubclass(cls, api.UserError)


# ---- the example in docs/api.md ---------------------------------------------------------------


@pytest.mark.slow
def test_the_example_in_the_docs_runs(tmp_path, monkeypatch, capsys):
    """Every python block of docs/api.md, in order, in one namespace, as a reader runs them."""
    doc = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", doc, flags=re.S)
    assert len(blocks) >= 5
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the example's mkdtemp goes here
    namespace: dict = {"__name__": "docs_api_example"}
    for i, block in enumerate(blocks):
        exec(compile(block, f"docs/api.md python block {i + 1}", "exec"), namespace)
    out = capsys.readouterr().out
    assert "plan: 0.0500 m/s" in out and "completed" in out
    assert "aborted - every translation thruster has failed off" in out
    assert "refused: soyuz" in out and "replayed" in out and "of 8 passed" in out
    (work,) = tmp_path.glob("thruster-hil-api-*")
    assert (work / "burn.png").stat().st_size > 0
    assert (work / "sim" / "summary.json").exists() and (work / "emulator" / "capture.csv").exists()


@pytest.mark.slow
def test_the_readme_api_example_runs(capsys):
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    (block,) = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    exec(compile(block, "README.md python block", "exec"), {"__name__": "readme_example"})
    assert capsys.readouterr().out.startswith("completed ")
