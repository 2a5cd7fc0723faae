"""Operator friction (issue 16): what a new user trips over first, each fixed here.

The parser, the view and the records helpers are checked in-process (fast tier); the checks
that fly a burn are in the slow tier.
"""

import importlib.metadata
import json
import os
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from thruster_hil.cli import build_parser, main
from thruster_hil.core.errors import UserError
from thruster_hil.live import RunProgress, render_text
from thruster_hil.records import LATEST, point_latest, resolve_latest

ROOT = Path(__file__).resolve().parents[1]


def _subparsers():
    import argparse

    parser = build_parser()
    for action in parser._actions:  # argparse keeps subparsers only here
        if isinstance(action, argparse._SubParsersAction):
            return parser, dict(action.choices)
    raise AssertionError("no subcommands")


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("thruster-hil: error: ") and err.count("\n") == 1, err
    return err


# ---------------------------------------------------------------------------- the parser


def test_a_misspelt_option_is_named_not_a_missing_target(capsys):
    """`run --dleta-v 0.4` said "one of the arguments --delta-v ... is required"."""
    assert main(["run", "--dleta-v", "0.4"]) == 2
    err = _one_error_line(capsys)
    assert "run: unrecognized option --dleta-v (did you mean --delta-v?)" in err, err
    assert "required" not in err
    assert main(["plan", "--dleta-v=0.4"]) == 2
    assert "plan: unrecognized option --dleta-v (did you mean --delta-v?)" in _one_error_line(
        capsys
    )
    assert main(["plan", "--delta-v", "1", "--warp"]) == 2
    err = _one_error_line(capsys)
    assert "unrecognized option --warp" in err and "did you mean" not in err
    assert main(["run", "--dleta-v", "1", "--wrap"]) == 2
    assert "unrecognized options --dleta-v (did you mean --delta-v?), --wrap" in (
        _one_error_line(capsys)
    )


def test_the_parser_otherwise_behaves_as_before(capsys):
    """Abbreviations still work, a missing target with no unknown option is still named, and a
    stray positional is still 'unrecognized arguments'."""
    args = build_parser().parse_args(["plan", "--delta", "1"])
    assert args.delta_v == 1.0
    with pytest.raises(UserError, match="one of the arguments --delta-v"):
        build_parser().parse_args(["plan", "--stack", "cygnus"])
    with pytest.raises(UserError, match="unrecognized arguments: extra"):
        build_parser().parse_args(["report", "runs/x", "extra"])
    with pytest.raises(UserError, match=r"--delta-v: expected a decimal number"):
        build_parser().parse_args(["plan", "--delta-v", "fast", "--warp"])


@settings(max_examples=60, deadline=None)
@given(st.from_regex(r"--[a-z][a-z-]{0,20}", fullmatch=True))
def test_any_unknown_option_is_named(option):
    parser, subs = _subparsers()
    known = {s for a in subs["run"]._actions for s in a.option_strings}
    if any(k.startswith(option) for k in known):  # an abbreviation argparse accepts
        return
    with pytest.raises(UserError) as err:
        parser.parse_args(["run", option, "1"])
    assert f"unrecognized option {option}" in str(err.value)


def test_version(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    from thruster_hil.firmware_bridge.dictionary import DICT_HASH, PROTO_VERSION

    from thruster_hil import __version__

    assert out.startswith(f"thruster-hil {__version__} (wire protocol {PROTO_VERSION}, ")
    assert f"dictionary 0x{DICT_HASH:08X}" in out and out.count("\n") == 1
    # the package metadata (pyproject.toml) and thruster_hil.__version__ say the same
    assert importlib.metadata.version("thruster-hil") == __version__


def test_a_bare_command_prints_its_usage(capsys):
    """Its usage and every command, in the one line a usage error is (exit status 2)."""
    assert main([]) == 2
    err = _one_error_line(capsys)
    assert "no command: usage: thruster-hil [-h] [--version] COMMAND ..." in err
    _, subs = _subparsers()
    assert f"COMMAND one of {', '.join(subs)};" in err
    assert "'thruster-hil --help'" in err


def test_no_help_text_shows_an_escaped_percent():
    """argparse %-formats an option's help, not a description without %(prog)s: '%%' in a
    description is printed as it is ('0.1/1/5 %% corruption')."""
    parser, subs = _subparsers()
    for name, sub in {"": parser, **subs}.items():
        assert "%%" not in sub.format_help(), name
    assert "0.1/1/5 % corruption" in " ".join(subs["faults"].format_help().split())
    assert "(10 % tolerance, 15 % for Progress)" in " ".join(subs["validate"].format_help().split())


# ---------------------------------------------------------------------------- runs/latest


def test_latest_points_at_the_newest_run_and_is_replaced_atomically(tmp_path):
    runs = tmp_path / "runs"
    a, b = runs / "20250601T120000Z-progress", runs / "20250601T120001Z-progress"
    a.mkdir(parents=True)
    b.mkdir()
    assert point_latest(a) is None
    link = runs / LATEST
    assert link.is_symlink() and os.readlink(link) == a.name  # relative: runs/ can move
    assert point_latest(b) is None
    assert os.readlink(link) == b.name
    assert sorted(p.name for p in runs.iterdir()) == sorted([a.name, b.name, LATEST])  # no .tmp
    assert resolve_latest(link) == b
    assert resolve_latest(a) == a  # not a link: as given
    moved = tmp_path / "moved"
    runs.rename(moved)
    assert (moved / LATEST).resolve() == (moved / b.name).resolve()


def test_a_latest_that_is_not_a_symlink_is_left_alone(tmp_path):
    runs = tmp_path / "runs"
    (runs / LATEST).mkdir(parents=True)
    (runs / LATEST / "mine.txt").write_text("keep")
    run = runs / "20250601T120000Z-progress"
    run.mkdir()
    note = point_latest(run)
    assert note is not None and "not a symlink" in note
    assert (runs / LATEST / "mine.txt").read_text() == "keep"
    assert sorted(p.name for p in runs.iterdir()) == sorted([LATEST, run.name])


def test_the_readme_commands_can_be_copied():
    """No README command names a run directory by its timestamp: they use runs/latest."""
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```sh\n(.*?)```", text, flags=re.S)
    stamp = re.compile(r"runs/\d{8}T\d{6}Z")
    for block in blocks:
        assert not stamp.search(block), block
    joined = "\n".join(blocks)
    for command in ("report", "replay", "monitor"):
        assert f"thruster-hil {command} runs/latest" in joined


# ---------------------------------------------------------------------------- the fault grammar


def _fault_grammar() -> str:
    text = (ROOT / "README.md").read_text()
    return text.split("<!-- fault-grammar:start -->")[1].split("<!-- fault-grammar:end -->")[0]


def test_the_readme_fault_grammar_is_the_parsers():
    """Every fault the parser knows (firmware_bridge/faults.py) is in the README's grammar, both
    link-fault items take a direction, and its example parses."""
    from thruster_hil.firmware_bridge import faults

    section = _fault_grammar()
    items = re.findall(r"^\s*- `([^`]+)`", section, flags=re.M)
    items += re.findall(r", `([a-z]+=[^`]+)`", section)
    documented = {
        k for item in items if item[0].isalpha() for k in re.match(r"[a-z|]+", item)[0].split("|")
    }
    assert documented >= {k.strip() for k in faults._ALL_KEYS.split(",")}
    assert "`drop|corrupt|duplicate[.rx|.tx]=RATE`" in section
    assert "`delay[.rx|.tx]=RATE:DURATION`" in section
    example = re.search(r"Example: `([^`]+)`", section).group(1)
    spec = faults.parse_faults(example)
    kinds = {f.text.split("=")[0].split("@")[0] for f in spec.schedule}
    assert kinds == {"stall", "stuck", "clear", "pressure", "cut"}
    assert spec.rates["rx"]["drop"] == 0.01 and spec.delay_us["tx"] == 30_000
    # the emulate --help names every fault too
    _, subs = _subparsers()
    helptext = " ".join(subs["emulate"].format_help().split())
    for key in faults._ALL_KEYS.split(","):
        assert key.strip() in helptext


# ---------------------------------------------------------------------------- replay on a campaign


def _campaign_dir(tmp_path) -> Path:
    """A Monte-Carlo campaign directory as `montecarlo` writes it (the files replay sees)."""
    out = tmp_path / "20250601T120000Z-dragon-boost-kit-montecarlo"
    out.mkdir()
    (out / "cases.csv").write_text("case,case_seed,passed\n0,123,True\n")
    (out / "summary.json").write_text(
        json.dumps(
            {
                "stack": "dragon-boost-kit",
                "cases": 1,
                "dispersions": {"file": "hw_configs/dispersions/default.toml"},
            }
        )
    )
    return out


def test_replay_on_a_campaign_directory_says_what_it_is(tmp_path, capsys):
    out = _campaign_dir(tmp_path)
    assert main(["replay", str(out)]) == 2
    err = _one_error_line(capsys)
    assert "a Monte-Carlo campaign directory (cases.csv), not a run" in err
    assert "older version" not in err
    assert "directory of a 'thruster-hil run' through a serial unit" in err
    assert (
        "'thruster-hil run --unit sim --stack dragon-boost-kit TARGET --dispersions "
        "hw_configs/dispersions/default.toml --case-seed K' (TARGET the campaign's, K from "
        "cases.csv; summary.json's failures give each failed case's whole command)"
    ) in err
    assert main(["monitor", str(out), "--once"]) == 2
    assert "a Monte-Carlo campaign directory" in _one_error_line(capsys)


# ---------------------------------------------------------------------------- the live view


def _count_and_percent(text: str) -> tuple[int, int, float]:
    """(cycles flown, the whole they are a share of, the percentage) of the view's cycles row."""
    m = re.search(r"cycles\s+(\d+)(?: of (\d+)|, planned \d+)\D*([\d.]+) %", text)
    assert m, text
    flown = int(m.group(1))
    return flown, int(m.group(2) or flown), float(m.group(3))


def test_the_cycle_count_after_a_burn_longer_than_planned():
    """497 cycles flown (cycles 0..496) of 496 planned showed "496 of 496 100.2 %"."""
    snap = {"title": "t", "cycle": 496, "planned_cycles": 496, "finished": "completed"}
    text = render_text(snap, width=80)
    assert _count_and_percent(text) == (497, 497, 100.0)
    assert "497, planned 496" in text and "COMPLETED" in text.splitlines()[1]  # no wrap at 80
    text = render_text({"title": "t", "cycle": 0, "planned_cycles": 496})
    assert _count_and_percent(text)[:2] == (1, 496) and "planned" not in text
    assert "ETA" not in render_text(dict(snap, finished=None))  # past the plan: no ETA to give
    # a run that ended before its first cycle still says how it ended
    text = render_text({"title": "t", "planned_cycles": 69, "finished": "aborted: unit: gone"})
    assert "no cycle flown  ABORTED: UNIT: GONE" in text and "waiting" not in text


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 10**6), st.integers(1, 10**6))
def test_the_count_is_what_was_flown_and_never_over_100_percent(k, planned):
    flown, whole, pct = _count_and_percent(
        render_text({"title": "t", "cycle": k, "planned_cycles": planned})
    )
    assert flown == k + 1 and whole == max(planned, k + 1)
    assert pct <= 100.0 and pct == pytest.approx(100 * flown / whole, abs=0.051)


def test_the_progress_bar_grows_its_total_past_the_plan():
    import io

    from rich.console import Console

    now = [0.0]
    prog = RunProgress(496, console=Console(file=io.StringIO()), clock=lambda: now[0])
    for k in range(497):
        now[0] += 1.0
        prog.on_cycle(k, {})
    task = prog.progress.tasks[0]
    assert task.completed == 497 and task.total == 497


def _link_snap(realtime: bool) -> dict:
    return {
        "title": "t",
        "realtime": realtime,
        "unit": {"name": "emulator", "mode": "realtime" if realtime else "lockstep"},
        "link": {"rtt_ms": 495.3, "rtt_ms_p50": 1.5, "rtt_ms_p99": 3.75, "retries": 0},
    }


def test_realtime_view_shows_the_pulse_time_apart_from_the_rtt():
    """A REALTIME FIRE is reported when its pulses end: 495 ms is not a round trip."""
    text = render_text(_link_snap(realtime=True))
    assert "FIRE to report  495.3 ms this cycle (pulses included)" in text
    assert "RTT p50 1.50, p99 3.75 ms (PING/PONG)" in text
    assert "RTT 495" not in text
    text = render_text(_link_snap(realtime=False))  # lockstep: FIRE -> report is a round trip
    assert "RTT 495.30 ms (link p50 1.50, p99 3.75 ms)" in text
    assert "FIRE to report" not in text


def test_monitor_of_a_realtime_run_keeps_fire_times_out_of_the_rtt(tmp_path):
    """monitor RUN_DIR: telemetry's rtt_ms of a realtime run is FIRE -> report (pulses
    included): not made into the RTT percentiles when status.json has none."""
    from thruster_hil.live import RunDirFollower

    run = tmp_path / "run"
    run.mkdir()
    (run / "telemetry.csv").write_text(
        "cycle,t_s,status,dv_along_mps,dv_remaining_mps,altitude_km,attitude_error_deg,"
        "rate_x_dps,rate_y_dps,rate_z_dps,propellant_kg,rtt_ms,cmd_ms:a,exec_ms:a\n"
        "0,0.000,1,0.001,0.1,415.0,0.01,0,0,0,0.1,495.0,495,495\n"
    )
    (run / "run.json").write_text(
        json.dumps({"title": "T", "unit": "emulator", "mode": "realtime", "serial": True})
    )
    snap = RunDirFollower(run).poll()
    assert snap["link"]["rtt_ms"] == 495.0 and snap["link"]["rtt_ms_p50"] is None
    text = render_text(snap)
    assert "FIRE to report  495.0 ms" in text and "RTT p50 -, p99 - ms" in text


# ---------------------------------------------------------------------------- statuses explained


def test_the_status_table_in_the_docs_is_the_codes():
    """docs/controller.md's status table and the meanings the run summary prints agree."""
    from thruster_hil.controller import cycle as cst

    text = (ROOT / "docs" / "controller.md").read_text()
    rows = re.findall(r"^\| (\d+) \| (\w+) \| (.+?) \|$", text, flags=re.M)
    assert {(1 << int(bit), name, meaning) for bit, name, meaning in rows} == {
        (bit, cst.STATUS_NAMES[bit], meaning) for bit, meaning in cst.STATUS_MEANINGS.items()
    }


def test_the_summary_says_what_an_unusual_status_means():
    from thruster_hil.closedloop.runner import _status_notes

    rows = _status_notes({"burning": 2736, "complete": 1, "saturated": 118, "infeasible": 118})
    notes = {text.split(":")[0]: text for _, text in rows[:-1]}
    assert set(notes) == {"saturated", "infeasible"}
    assert "later cycles fly what those missed" in rows[-1][1]
    assert "the wanted push and torque not fully met" in notes["saturated"]
    assert "missed by more than 10 %" in notes["infeasible"]
    assert _status_notes({"burning": 496, "complete": 1}) == []


@pytest.mark.slow  # flies a burn (the in-process unit)
def test_a_run_with_saturated_cycles_explains_them(tmp_path, capsys):
    """docs/controller.md's example: a Progress 0.5 m/s burn saturates in its first cycles and
    still ends on target; the summary says what the counts mean."""
    argv = ["run", "--unit", "sim", "--stack", "progress", "--delta-v", "0.5"]
    assert main([*argv, "--out", str(tmp_path / "run")]) == 0
    text = capsys.readouterr().out
    status = text[text.index("status (cycles)") :].splitlines()
    assert "saturated" in status[0] and "infeasible" in status[0]
    assert status[1].strip().startswith("saturated: a thruster or gimbal at its limit")
    assert status[2].strip().startswith("infeasible: the wanted push and torque missed")
    assert "later cycles fly what those missed" in status[3]
    assert text.startswith("result              completed")


@pytest.mark.slow  # flies burns through the emulator
def test_run_points_runs_latest_and_the_commands_take_it(tmp_path, monkeypatch, capsys):
    from thruster_hil import records

    monkeypatch.chdir(tmp_path)  # the default run directory is runs/... under the cwd
    names = iter(["20250601T120000Z-progress", "20250601T120001Z-progress"])
    monkeypatch.setattr(
        records, "default_run_dir", lambda stack, root="runs": Path(root) / next(names)
    )
    argv = ["run", "--stack", "progress", "--delta-v", "0.05"]
    assert main(argv) == 0
    assert os.readlink("runs/latest") == "20250601T120000Z-progress"
    assert main(argv) == 0
    assert capsys.readouterr().out.splitlines()[-1] == (
        "run records in runs/20250601T120001Z-progress"
    )
    assert os.readlink("runs/latest") == "20250601T120001Z-progress"
    assert main(["replay", "runs/latest"]) == 0
    out = capsys.readouterr().out
    assert "runs/20250601T120001Z-progress/telemetry.replay.csv is identical" in out
    assert main(["monitor", "runs/latest", "--once"]) == 0
    assert "COMPLETED" in capsys.readouterr().out
    assert main(["report", "runs/latest"]) == 0
    assert "runs/20250601T120001Z-progress/report.png" in capsys.readouterr().out
    # a run with --out leaves runs/latest where it was
    assert main([*argv, "--unit", "sim", "--out", "elsewhere"]) == 0
    assert os.readlink("runs/latest") == "20250601T120001Z-progress"


@pytest.mark.slow  # flies a burn through the emulator
def test_the_summary_of_an_aborted_run_says_aborted_and_why(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["run", "--stack", "progress", "--delta-v", "0.05", "--faults", "cut@step20"]
    assert main([*argv, "--out", str(out)]) == 1
    text = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["aborted"] and summary["abort_reason"]
    assert text.splitlines()[0] == f"result              ABORTED: {summary['abort_reason']}"
    assert main(["monitor", str(out), "--once"]) == 1
    assert "ABORTED: " in capsys.readouterr().out


@pytest.mark.slow  # flies a small campaign
def test_replay_on_a_real_campaign_directory(tmp_path, capsys):
    out = tmp_path / "mc"
    argv = ["montecarlo", "--stack", "progress", "--delta-v", "0.05", "--cases", "2"]
    main([*argv, "--out", str(out)])
    capsys.readouterr()
    assert main(["replay", str(out)]) == 2
    err = _one_error_line(capsys)
    assert f"{out}: a Monte-Carlo campaign directory (cases.csv), not a run" in err
    assert "--stack progress TARGET --dispersions " in err
