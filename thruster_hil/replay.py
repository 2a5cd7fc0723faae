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

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from firmware_bridge.codec import Decoder, Message
from firmware_bridge.dictionary import CHANNELS_PER_BANK
from sims.runner import Failure, UnitReport, run_burn
from sims.thrusters import HEALTH_FAILED_OFF, HEALTH_NOMINAL, HEALTH_STUCK_OPEN
from thruster_hil.config import build_stack_model, load_stack
from thruster_hil.errors import UserError
from thruster_hil.records import RunRecorder


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
    lines = path.read_text(encoding="utf-8").splitlines()
    if not lines or lines[0] != "t_ns,dir,hex":
        raise UserError(str(path), "not a thruster-hil capture (expected the header t_ns,dir,hex)")
    for n, line in enumerate(lines[1:], start=2):
        try:
            t_text, direction, hex_text = line.split(",")
            t_ns = int(t_text)
            data = bytes.fromhex(hex_text)
            dec = decoders[direction]
        except (ValueError, KeyError):
            raise UserError(f"{path}:{n}", f"expected t_ns,rx|tx,hex, got {line[:60]!r}") from None
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


class ReplayUnit:
    """The runner's unit, answering from the capture."""

    name = "replay"
    realtime = False
    errors = (UserError,)

    def __init__(self, steps: dict[int, _Step], n: int, cycles: int | None = None):
        self.steps = steps
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
        if not st.reports:
            # A REALTIME FIRE whose every report missed its deadline: the live link flew the
            # cycle with nothing executed and no round-trip time.
            return UnitReport(self._executed, self._health, float("nan"))
        for bank, (_t, msg) in st.reports.items():
            lo = bank * CHANNELS_PER_BANK
            width = min(self.n - lo, CHANNELS_PER_BANK)
            if width <= 0:
                continue
            self._executed[lo:lo + width] = msg["executed_ticks"][:width]
            for c in range(width):
                if msg["stuck_mask"] >> c & 1:
                    self._health[lo + c] = HEALTH_STUCK_OPEN
                elif msg["failed_mask"] >> c & 1:
                    self._health[lo + c] = HEALTH_FAILED_OFF
            cmd = st.fire_ticks.get(bank)
            if cmd is not None and tuple(int(v) for v in on_ms[lo:lo + width]) != cmd[:width]:
                self.mismatches += 1
        t_last = max(t for t, _m in st.reports.values())
        # As the link computes it: (last report in - first FIRE out) / 1e6 ms, then s.
        rtt_s = ((t_last - st.first_tx_ns) / 1e6) / 1e3 if st.first_tx_ns is not None else 0.0
        return UnitReport(self._executed, self._health, rtt_s)

    def close(self) -> None:
        pass


def replay_run(run_dir: str | Path) -> dict:
    run = Path(run_dir)
    try:
        summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(str(run), "no summary.json: not a run directory (or the run was "
                        "killed before its end)") from None
    except json.JSONDecodeError as exc:
        raise UserError(str(run / "summary.json"), f"not valid JSON: {exc}") from None
    if "plan" not in summary:
        raise UserError(str(run / "summary.json"), "has no 'plan': written by an older version")
    capture = run / "capture.csv"
    if not capture.exists():
        raise UserError(str(run), "no capture.csv: only runs through a serial unit can be "
                        "replayed")
    steps, frames, errors = decode_capture(capture)
    model = build_stack_model(load_stack(summary["stack_path"]))
    names = list(model.thruster_names)
    unit = ReplayUnit(steps, len(names), summary["cycles"] if summary.get("aborted") else None)
    out = run / "telemetry.replay.csv"
    if out.exists():
        out.unlink()
    tmp_dir = run / ".replay"
    recorder = RunRecorder(tmp_dir, names, model.mass_kg)
    failures = [Failure(f["thruster"], f["at_s"]) for f in summary.get("failures", [])]
    try:
        result = run_burn(model, summary["plan"], unit=unit, failures=failures,
                          on_cycle=recorder.on_cycle)
    finally:
        recorder.close()
    (tmp_dir / "telemetry.csv").replace(out)
    tmp_dir.rmdir()
    recorded = run / "telemetry.csv"
    identical = out.read_bytes() == recorded.read_bytes()
    return {"run_dir": str(run), "cycles": result.summary["cycles"], "frames_decoded": frames,
            "decode_errors": errors, "command_mismatches": unit.mismatches,
            "recorded": str(recorded), "replayed": str(out), "identical": identical}
