"""Replay a run from its raw wire capture: ``thruster-hil replay RUN_DIR``.

The capture (capture.csv) is decoded through the same codec as the live link. The recorded
VALVE_REPORTs then stand in for the unit: the same burn is flown again (the controller and the
plant are deterministic) with each cycle's executed on-times and health taken from the unit's
reports of that step, and each cycle's round-trip time recomputed from the capture's host
timestamps exactly as the link measured it (first FIRE of the step out, last report in). The
commanded on-times are checked against the recorded FIREs on the way. The result is written to
telemetry.replay.csv and compared with telemetry.csv.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from thruster_hil.closedloop.runner import Failure, run_burn
from thruster_hil.closedloop.unit import StepByStep, UnitReport
from thruster_hil.config import SOLAR_ACTIVITIES, StackModel, build_stack_model, load_stack
from thruster_hil.core.errors import UserError
from thruster_hil.core.textnum import parse_int, show
from thruster_hil.firmware_bridge.codec import Decoder, Message
from thruster_hil.firmware_bridge.dictionary import CHANNELS_PER_BANK
from thruster_hil.firmware_bridge.linkrules import REALTIME_REPORT_SLACK_MS
from thruster_hil.records import (
    RunRecorder,
    check_record,
    damage,
    read_record,
    refuse_campaign_dir,
    run_directory,
)
from thruster_hil.sims import atmosphere
from thruster_hil.sims.thrusters import HEALTH_FAILED_OFF, HEALTH_NOMINAL, HEALTH_STUCK_OPEN


@dataclass
class _Step:
    first_tx_ns: int | None = None
    reports: dict[int, tuple[int, Message]] = field(default_factory=dict)  # bank -> (t, msg)
    fire_ticks: dict[int, tuple[int, ...]] = field(default_factory=dict)


def decode_capture(path: Path) -> tuple[dict[int, _Step], int, int]:
    """Steps seen in a capture, with the first FIRE time and the reports per bank."""
    steps: dict[int, _Step] = {}
    decoders = {"tx": Decoder(), "rx": Decoder()}
    frames = errors = 0
    try:
        if not path.is_file():  # a directory, a FIFO (read would block)
            raise UserError(str(path), "expected a capture file, got a directory or a special file")
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise UserError(
            str(path), f"expected UTF-8 text, got undecodable bytes ({exc.reason})"
        ) from None
    except OSError as exc:
        raise UserError(str(path), f"cannot read it: {exc.strerror}") from None
    if not lines or lines[0] != "t_ns,dir,hex":
        raise UserError(str(path), "not a thruster-hil capture (expected the header t_ns,dir,hex)")
    for n, line in enumerate(lines[1:], start=2):
        try:
            t_text, direction, hex_text = line.split(",")
            t_ns = parse_int(t_text)
            data = bytes.fromhex(hex_text)
            dec = decoders[direction]
        except (ValueError, KeyError):
            raise UserError(f"{path}:{n}", f"expected t_ns,rx|tx,hex, got {show(line)}") from None
        for item in dec.feed(data):
            if not isinstance(item, Message):
                errors += 1
                continue
            frames += 1
            if item.name == "FIRE" and direction == "tx":
                st = steps.setdefault(item["step"], _Step())
                if st.first_tx_ns is None:
                    st.first_tx_ns = t_ns
                st.fire_ticks[item["bank"]] = item["on_ticks"]
            elif item.name == "VALVE_REPORT" and direction == "rx":
                st = steps.setdefault(item["step"], _Step())
                st.reports.setdefault(item["bank"], (t_ns, item))
    return steps, frames, errors


class ReplayUnit(StepByStep):
    """The runner's unit, answering from the capture."""

    name = "replay"
    errors = (UserError,)
    #: No valves: what the recorded unit closed is in the recorded run's summary.
    valves_closed = None
    valves_open = None

    def __init__(
        self,
        steps: dict[int, _Step],
        n: int,
        cycles: int | None = None,
        report_window_ns: int | None = None,
    ):
        self.steps = steps
        #: REALTIME: a report read this long after its FIRE's write or later missed its
        #: deadline in the live run (the link's rule, on the same stamps), so it is not used.
        self.report_window_ns = report_window_ns
        self.n = n
        self.cycles = cycles  # the recorded run's cycle count: an aborted run ends there
        self.mismatches = 0
        self._executed = np.zeros(n, np.uint16)
        self._health = np.zeros(n, np.int64)

    def execute(self, cycle: int, on_ms: np.ndarray) -> UnitReport:
        if self.cycles is not None and cycle >= self.cycles:
            raise UserError("replay", f"the recorded run ended after {self.cycles} cycles")
        st = self.steps.get(cycle + 1)
        if st is None or (not st.reports and st.first_tx_ns is None):
            raise UserError("replay", f"the capture has no VALVE_REPORT for step {cycle + 1}")
        self._executed[:] = 0
        self._health[:] = HEALTH_NOMINAL
        reports = st.reports
        if self.report_window_ns is not None and st.first_tx_ns is not None:
            end = st.first_tx_ns + self.report_window_ns
            reports = {b: r for b, r in reports.items() if r[0] < end}
        if not reports:
            # A REALTIME FIRE whose every report missed its deadline: the live link flew the
            # cycle with nothing executed and no round-trip time.
            return UnitReport(self._executed, self._health, float("nan"))
        for bank, (_t, msg) in reports.items():
            lo = bank * CHANNELS_PER_BANK
            width = min(self.n - lo, CHANNELS_PER_BANK)
            if width <= 0:
                continue
            self._executed[lo : lo + width] = msg["executed_ticks"][:width]
            for c in range(width):
                if msg["stuck_mask"] >> c & 1:
                    self._health[lo + c] = HEALTH_STUCK_OPEN
                elif msg["failed_mask"] >> c & 1:
                    self._health[lo + c] = HEALTH_FAILED_OFF
            cmd = st.fire_ticks.get(bank)
            if cmd is not None and tuple(int(v) for v in on_ms[lo : lo + width]) != cmd[:width]:
                self.mismatches += 1
        t_last = max(t for t, _m in reports.values())
        # As the link computes it: (last report in - first FIRE out) / 1e6 ms, then s.
        rtt_s = ((t_last - st.first_tx_ns) / 1e6) / 1e3 if st.first_tx_ns is not None else 0.0
        return UnitReport(self._executed, self._health, rtt_s)

    def fail(self, index: int, code: int) -> None:
        """Nothing to inject: the capture's VALVE_REPORTs show the failure as it happened."""

    def close(self) -> None:
        pass


#: What the replayed burn reads from summary.json's plan (thruster_hil.closedloop.fused /
#: thruster_hil.closedloop.runner).
PLAN_NUMBERS = (
    "delta_v_mps",
    "burn_duration_s",
    "perigee_km_before",
    "apogee_km_before",
    "inclination_deg",
)
PLAN_STRINGS = ("stack", "burn_centre", "solar_activity")


def _check_summary(summary: dict, where: Path) -> list[Failure]:
    """The parts of summary.json a replay flies from, checked (one-line UserError naming the
    field); returns the thruster failures to replay."""
    if "plan" not in summary:
        raise UserError(str(where), "has no 'plan': written by an older version")
    check_record(
        summary, where, strings=("stack_path",), tables=("plan",), required=("stack_path",)
    )
    plan = summary["plan"]
    if not isinstance(plan, dict):
        raise UserError(str(where), f"expected an object, got {type(plan).__name__}", field="plan")
    fields = (*PLAN_NUMBERS, *PLAN_STRINGS)
    check_record(plan, where, numbers=PLAN_NUMBERS, strings=PLAN_STRINGS, required=fields)
    for key, choices in (
        ("burn_centre", ("apogee", "perigee")),
        ("solar_activity", SOLAR_ACTIVITIES),
    ):
        if plan[key] not in choices:
            raise UserError(
                str(where),
                f"expected one of {', '.join(choices)}, got {show(plan[key])}",
                field=f"plan.{key}",
            )
    check_record(plan, where, numbers=("f107_sfu", "ap"))  # optional: the free atmosphere
    for key, lo, hi in (
        ("f107_sfu", atmosphere.F107_MIN_SFU, atmosphere.F107_MAX_SFU),
        ("ap", atmosphere.AP_MIN, atmosphere.AP_MAX),
    ):
        if plan.get(key) is not None and not lo <= plan[key] <= hi:
            raise UserError(
                str(where), f"expected {lo:g}..{hi:g}, got {plan[key]:g}", field=f"plan.{key}"
            )
    if not 150.0 <= plan["perigee_km_before"] <= plan["apogee_km_before"] <= 2000.0:
        raise UserError(
            str(where),
            "expected 150 <= perigee <= apogee <= 2000 km, got "
            f"{plan['perigee_km_before']:g} x {plan['apogee_km_before']:g} km",
            field="plan.perigee_km_before",
        )
    if not 0.0 < plan["burn_duration_s"] <= 1e6 or not plan["delta_v_mps"] > 0.0:
        raise UserError(
            str(where),
            "expected a burn of 0 to 1e6 s and a delta-v > 0, got "
            f"{plan['burn_duration_s']:g} s and {plan['delta_v_mps']:g} m/s",
            field="plan.burn_duration_s",
        )
    failures = summary.get("failures") or []
    if not isinstance(failures, list):
        raise UserError(
            str(where), f"expected a list, got {type(failures).__name__}", field="failures"
        )
    out = []
    for i, f in enumerate(failures):
        ok = (
            isinstance(f, dict)
            and isinstance(f.get("thruster"), str)
            and not isinstance(f.get("at_s"), bool)
            and isinstance(f.get("at_s"), int | float)
            and math.isfinite(f["at_s"])
            and f["at_s"] >= 0.0
        )
        if not ok:
            raise UserError(
                str(where),
                f'expected {{"thruster": NAME, "at_s": SECONDS >= 0}}, got {show(str(f))}',
                field=f"failures[{i}]",
            )
        out.append(Failure(f["thruster"], float(f["at_s"])))
    return out


def replay_run(
    run_dir: str | Path, *, watch: Callable[[StackModel], Callable[[int, dict], None]] | None = None
) -> dict:
    """Replay RUN_DIR (see the module docstring) and say whether it reproduced telemetry.csv.
    ``watch(model)``, when given, returns one more per-cycle sink of the replayed burn (the
    Python API keeps the replayed time series with it)."""
    run = run_directory(
        run_dir, "no summary.json: not a run directory (or the run was killed before its end)"
    )
    refuse_campaign_dir(run, "replay")
    summary = read_record(run / "summary.json")
    if summary is None:
        if not (run / "run.json").exists() and not (run / "telemetry.csv").exists():
            raise UserError(str(run), "no summary.json: not a run directory")
        raise UserError(str(run), "cannot replay it: " + "; ".join(damage(run)))
    failures = _check_summary(summary, run / "summary.json")
    capture = run / "capture.csv"
    if not capture.exists():
        raise UserError(str(run), "no capture.csv: only runs through a serial unit can be replayed")
    broken = damage(run)
    if broken:
        raise UserError(str(run), "cannot replay it: " + "; ".join(broken))
    steps, frames, errors = decode_capture(capture)
    if not any(st.reports for st in steps.values()):
        raise UserError(
            str(capture),
            f"has no VALVE_REPORT to replay ({frames} frames decoded, {errors} undecodable)",
        )
    model = build_stack_model(load_stack(summary["stack_path"]))
    names = list(model.thruster_names)
    for f in failures:
        if f.name not in names:
            raise UserError(
                str(run / "summary.json"),
                f"expected a thruster of {model.name}, got {show(f.name)}",
                field="failures",
            )
    run_info = read_record(run / "run.json") or {}
    window = None
    if run_info.get("mode") == "realtime":
        window = (int(summary["period_ms"]) + REALTIME_REPORT_SLACK_MS) * 1_000_000
    unit = ReplayUnit(
        steps, len(names), summary["cycles"] if summary.get("aborted") else None, window
    )
    out = run / "telemetry.replay.csv"
    if out.exists():
        out.unlink()
    tmp_dir = run / ".replay"
    recorder = RunRecorder(tmp_dir, names, model.mass_kg, model.tank_names)
    on_cycle = recorder.on_cycle
    if watch is not None:
        record, extra = recorder.on_cycle, watch(model)

        def on_cycle(k: int, info: dict) -> None:
            record(k, info)
            extra(k, info)

    try:
        result = run_burn(model, summary["plan"], unit=unit, failures=failures, on_cycle=on_cycle)
    finally:
        recorder.close()
    (tmp_dir / "telemetry.csv").replace(out)
    tmp_dir.rmdir()
    recorded = run / "telemetry.csv"
    identical = out.read_bytes() == recorded.read_bytes()
    return {
        "run_dir": str(run),
        "cycles": result.summary["cycles"],
        "frames_decoded": frames,
        "decode_errors": errors,
        "command_mismatches": unit.mismatches,
        "recorded": str(recorded),
        "replayed": str(out),
        "identical": identical,
    }
