"""The typed results of the Python API (:mod:`thruster_hil.api`).

Each result keeps the numbers a script usually wants as typed fields, the per-cycle time series
as numpy arrays, and the whole JSON object the command line prints with ``--json`` as
``summary`` (or ``data`` for a plan), so nothing the CLI reports is lost.

The time series is taken from the loop as it flies (:class:`SeriesRecorder` is one more
per-cycle sink beside the run records), never read back from telemetry.csv: its columns are the
numbers telemetry.csv writes, before the file rounds them (:func:`thruster_hil.records.
telemetry_numbers` is the one definition of both).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from thruster_hil.config import Stack, StackModel
from thruster_hil.core.errors import UserError
from thruster_hil.plan import Target
from thruster_hil.records import TELEMETRY_FIELDS, run_outcome, telemetry_numbers

#: How a burn ended: the target reached within the attitude limit, ended short of it (or broke
#: the limit), or stopped before its end (unit lost, no thrust left, a tank's reserve, Ctrl-C).
Verdict = Literal["completed", "failed", "aborted"]


def verdict_of(summary: dict) -> tuple[Verdict, str | None]:
    """The verdict of a run summary and its reason (None when completed), by the rule of the
    CLI's exit status: "completed" is exit 0, "failed" and "aborted" are 1 (or 128 + n when a
    signal stopped the run). A burn that did not complete always has a ``failure_reason``.
    The rule is :func:`thruster_hil.records.run_outcome` (report.html judges by it too)."""
    return run_outcome(summary)  # type: ignore[return-value]


class RunRecordsError(UserError):
    """The burn flew, but its run directory could not be written whole (a full disk, the
    directory removed): what the CLI reports in one line with exit status 2. The burn's result
    is still in :attr:`result`."""

    def __init__(self, where: str, message: str, result: BurnResult):
        super().__init__(where, message)
        self.result = result


@dataclass(frozen=True, eq=False)
class Plan:
    """A planned burn (:func:`thruster_hil.api.plan`): what ``thruster-hil plan`` reports.

    Units: m/s, s, kg, km (mean, orbit-averaged altitudes). ``data`` is the JSON object
    ``plan --json`` prints, and what :func:`thruster_hil.api.run` flies.
    """

    stack: str
    target: Target
    delta_v_mps: float
    burn_duration_s: float
    propellant_kg: float
    tank_used_kg: dict[str, float]
    stack_mass_kg: float
    perigee_km_before: float
    apogee_km_before: float
    perigee_km_after: float
    apogee_km_after: float
    mean_altitude_change_km: float
    translation_thrusters: tuple[str, ...]
    thrusters: tuple[str, ...]
    data: dict[str, Any] = field(repr=False)
    #: The keyword arguments :func:`thruster_hil.api.plan` was called with (a Monte-Carlo
    #: campaign's rerun commands repeat them as CLI options).
    request: dict[str, Any] = field(repr=False)
    stack_config: Stack = field(repr=False)
    model: StackModel = field(repr=False)


@dataclass(frozen=True, eq=False)
class TimeSeries:
    """One entry per control cycle flown, as numpy arrays: the columns of telemetry.csv, in its
    units, unrounded. ``commanded_ms`` and ``executed_ms`` have one column per thruster (in
    :attr:`thrusters` order), ``propellant_by_tank_kg`` one per tank (:attr:`tanks`)."""

    thrusters: tuple[str, ...]
    tanks: tuple[str, ...]
    cycle: np.ndarray  # (n,) int64
    t_s: np.ndarray  # (n,) time since ignition [s]
    status: np.ndarray  # (n,) int64 controller status bits (controller/cycle.py STATUS_NAMES)
    dv_along_mps: np.ndarray  # sensed along-track delta-v so far [m/s]
    dv_remaining_mps: np.ndarray  # delta-v still to go [m/s]
    altitude_km: np.ndarray  # osculating geocentric altitude [km]
    attitude_error_deg: np.ndarray  # [deg]
    rate_x_dps: np.ndarray  # body rates omega_BN_B [deg/s]
    rate_y_dps: np.ndarray
    rate_z_dps: np.ndarray
    propellant_kg: np.ndarray  # propellant used so far [kg]
    rtt_ms: np.ndarray  # the link's round trip this cycle [ms]; 0 in-process, nan: no report
    commanded_ms: np.ndarray  # (n, thrusters) int64 on-times the controller commanded [ms]
    executed_ms: np.ndarray  # (n, thrusters) int64 on-times the unit reports executed [ms]
    propellant_by_tank_kg: np.ndarray  # (n, tanks) propellant drawn from each tank so far [kg]

    def __len__(self) -> int:
        return len(self.cycle)

    def columns(self) -> dict[str, np.ndarray]:
        """Every column under its telemetry.csv header name (``cmd_ms:<thruster>``,
        ``exec_ms:<thruster>``, ``propellant_kg:<tank>`` for the per-thruster and per-tank
        ones), in the file's order: e.g. ``pandas.DataFrame(series.columns())``."""
        out = {name: getattr(self, name) for name in TELEMETRY_FIELDS}
        for i, n in enumerate(self.thrusters):
            out[f"cmd_ms:{n}"] = self.commanded_ms[:, i]
        for i, n in enumerate(self.thrusters):
            out[f"exec_ms:{n}"] = self.executed_ms[:, i]
        for i, n in enumerate(self.tanks):
            out[f"propellant_kg:{n}"] = self.propellant_by_tank_kg[:, i]
        return out


#: The float columns telemetry_numbers() returns, in its order (TELEMETRY_FIELDS[3:]).
_NUMBERS = TELEMETRY_FIELDS[3:]


class SeriesRecorder:
    """A per-cycle sink (``on_cycle(k, info)``, as the runner calls it) that keeps every cycle
    in preallocated arrays, doubled when full; :meth:`series` hands them out trimmed."""

    def __init__(
        self, thrusters: tuple[str, ...], tanks: tuple[str, ...], mass0_kg: float, capacity: int
    ):
        self.thrusters, self.tanks = tuple(thrusters), tuple(tanks)
        self._mass0 = float(mass0_kg)
        self.n = 0
        self._alloc(max(16, int(capacity)))

    def _alloc(self, cap: int) -> None:
        old = None if self.n == 0 else self._arrays()
        self._t = np.zeros(cap)
        self._status = np.zeros(cap, np.int64)
        self._numbers = np.zeros((cap, len(_NUMBERS)))
        self._cmd = np.zeros((cap, len(self.thrusters)), np.int64)
        self._exe = np.zeros((cap, len(self.thrusters)), np.int64)
        self._tank = np.zeros((cap, len(self.tanks)))
        if old is not None:
            for new, kept in zip(self._arrays(), old, strict=True):
                new[: self.n] = kept[: self.n]

    def _arrays(self) -> tuple[np.ndarray, ...]:
        return self._t, self._status, self._numbers, self._cmd, self._exe, self._tank

    def on_cycle(self, k: int, info: dict) -> None:
        if k >= len(self._t):
            self._alloc(2 * len(self._t))
        self._t[k] = info["t_s"]
        self._status[k] = info["status"]
        self._numbers[k] = telemetry_numbers(info, self._mass0)
        self._cmd[k] = info["ctrl"].on_ms
        self._exe[k] = info["executed_ms"]
        if self.tanks:
            self._tank[k] = info["tank_used"]
        self.n = k + 1

    def series(self) -> TimeSeries:
        n = self.n
        numbers = {name: self._numbers[:n, i].copy() for i, name in enumerate(_NUMBERS)}
        return TimeSeries(
            thrusters=self.thrusters,
            tanks=self.tanks,
            cycle=np.arange(n, dtype=np.int64),
            t_s=self._t[:n].copy(),
            status=self._status[:n].copy(),
            commanded_ms=self._cmd[:n].copy(),
            executed_ms=self._exe[:n].copy(),
            propellant_by_tank_kg=self._tank[:n].copy(),
            **numbers,
        )


@dataclass(frozen=True, eq=False)
class BurnResult:
    """A flown burn (:func:`thruster_hil.api.run`): its verdict, its main numbers, its time
    series and the whole ``run --json`` summary.

    A burn that misses its target is a result, not an exception: ``verdict`` says how it ended
    and ``reason`` why (None when completed); ``passed`` is the CLI's exit status 0.
    """

    verdict: Verdict
    reason: str | None
    stack: str
    unit: str
    target_delta_v_mps: float
    achieved_delta_v_mps: float
    delta_v_error_pct: float
    true_delta_v_mps: float
    burn_duration_s: float
    planned_burn_duration_s: float
    cycles: int
    max_attitude_error_deg: float
    attitude_limit_deg: float
    propellant_kg: float
    propellant_by_tank_kg: dict[str, float]
    perigee_km_before: float
    perigee_km_after: float
    apogee_km_before: float
    apogee_km_after: float
    mean_altitude_change_km: float
    #: Did the unit confirm every valve closed after its final STOP_ALL (None: could not ask)?
    valves_closed: bool | None
    #: The link's counters (frames, CRC errors, retries, RTT percentiles); None in-process.
    link: dict[str, Any] | None
    events: list[dict[str, Any]] = field(repr=False)
    series: TimeSeries = field(repr=False)
    #: The run directory (None: run without ``out``, nothing written).
    run_dir: Path | None = None
    summary: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def passed(self) -> bool:
        return self.verdict == "completed"

    @classmethod
    def of(
        cls, summary: dict, events: list[dict], series: TimeSeries, run_dir: Path | None
    ) -> BurnResult:
        verdict, reason = verdict_of(summary)
        keys = (
            "stack",
            "unit",
            "target_delta_v_mps",
            "achieved_delta_v_mps",
            "delta_v_error_pct",
            "true_delta_v_mps",
            "burn_duration_s",
            "planned_burn_duration_s",
            "cycles",
            "max_attitude_error_deg",
            "attitude_limit_deg",
            "propellant_kg",
            "propellant_by_tank_kg",
            "perigee_km_before",
            "perigee_km_after",
            "apogee_km_before",
            "apogee_km_after",
            "mean_altitude_change_km",
            "valves_closed",
        )
        return cls(
            verdict=verdict,
            reason=reason,
            link=summary.get("link"),
            events=list(events),
            series=series,
            run_dir=run_dir,
            summary=summary,
            **{k: _plain(summary[k]) for k in keys},
        )


def _plain(value):
    """A numpy scalar as the Python number it holds (the summary mixes both)."""
    return value.item() if isinstance(value, np.generic) else value


@dataclass(frozen=True, eq=False)
class ReplayResult:
    """A replayed run (:func:`thruster_hil.api.replay`): whether the capture reproduced
    telemetry.csv byte for byte, and the replayed burn's time series."""

    run_dir: Path
    identical: bool
    cycles: int
    frames_decoded: int
    decode_errors: int
    command_mismatches: int  # cycles whose recomputed commands differ from the recorded FIREs
    recorded: Path  # telemetry.csv
    replayed: Path  # telemetry.replay.csv
    series: TimeSeries = field(repr=False)


@dataclass(frozen=True, eq=False)
class CaseOutcomes:
    """The outcome of every Monte-Carlo case, one array entry per case (cases.csv's outcome
    columns; thruster_hil.montecarlo.OUTCOME_FIELDS)."""

    case_seed: np.ndarray  # (n,) int64 seed that reruns the case alone
    true_delta_v_mps: np.ndarray
    delta_v_error_pct: np.ndarray
    sensed_delta_v_mps: np.ndarray
    burn_duration_s: np.ndarray
    cycles: np.ndarray  # int64
    completed: np.ndarray  # bool
    max_attitude_error_deg: np.ndarray
    propellant_kg: np.ndarray
    perigee_km_after: np.ndarray
    apogee_km_after: np.ndarray
    mean_altitude_change_km: np.ndarray
    max_on_time_ms: np.ndarray  # int64
    on_time_bound_violations: np.ndarray  # int64
    failure_cycle: np.ndarray  # int64, -1: no thruster failure in the case
    passed: np.ndarray  # bool
    fail_reasons: tuple[str, ...]  # ";"-joined reasons per case, "" when it passed

    def __len__(self) -> int:
        return len(self.case_seed)


@dataclass(frozen=True, eq=False)
class MonteCarloResult:
    """A Monte-Carlo campaign (:func:`thruster_hil.api.montecarlo`): pass counts, statistics,
    the failing cases with the command that reruns each, and every case's outcome as arrays.
    ``summary`` is the ``montecarlo --json`` object (summary.json)."""

    stack: str
    cases: int
    seed: int
    passed: int
    failed: int
    pass_rate: float
    thruster_failures_injected: int
    stats: dict[str, dict[str, float]] = field(repr=False)
    failures: list[dict[str, Any]] = field(repr=False)
    outcomes: CaseOutcomes = field(repr=False)
    out_dir: Path | None = None
    summary: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def all_passed(self) -> bool:
        """The CLI's exit status 0: every case met its pass criteria."""
        return self.failed == 0
