"""The runner that closes the loop: plant -> sensors -> controller.step -> unit -> plant.

Each control cycle:
1. the plant's state becomes the sensor vector (ideal sensors: position, velocity, attitude,
   rate, mass, and the accelerometer's delta-v over the last cycle);
2. ``controller.step`` computes the on-times [ms];
3. the unit executes them and reports what it really executed and each thruster's health
   (:class:`IdealUnit` in process for the SIL reference; the serial units of firmware_bridge
   implement the same ``execute``);
4. the valves turn the *executed* on-times into sub-step impulses and the plant integrates the
   cycle with them; the propellant drawn sets each tank's pressure and so the thrust and Isp of
   the next cycle (blowdown tanks; a regulated tank holds its pressure until it is empty).

The burn starts at ignition (half the planned burn before the apsis the plan centres it on), in
the stack's reboost attitude held in LVLH, and ends when the controller reports the target
reached and the last tail-off has been delivered. What the burn did to the orbit is the
difference of mean elements between the burned state and a no-burn twin propagated over the same
time (see :func:`thruster_hil.closedloop.fused.orbit_change`).

The cycle itself lives in :mod:`thruster_hil.closedloop.fused` as two numba kernels around the unit;
with the in-process ideal unit and nobody watching each cycle the whole burn runs in numba there.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from thruster_hil.closedloop.fused import (
    COAST_STEP_S,
    F_QUIET,
    N_SUB,
    O_ACHIEVED_DV,
    O_D_A,
    O_D_APOGEE,
    O_D_PERIGEE,
    O_PROPELLANT,
    O_TRUE_DV,
    OVERRUN_FACTOR,
    PlantCase,
    Sim,
    new_sim,
)
from thruster_hil.closedloop.unit import StepByStep, Unit, UnitReport
from thruster_hil.controller import cycle as cst
from thruster_hil.controller.modulation import T_TRANSLATION
from thruster_hil.core import sections
from thruster_hil.sims.thrusters import HEALTH_FAILED_OFF, HEALTH_NOMINAL

__all__ = [
    "COAST_STEP_S",
    "N_SUB",
    "OVERRUN_FACTOR",
    "Failure",
    "IdealUnit",
    "RunResult",
    "StopBurn",
    "Unit",
    "UnitReport",
    "format_run",
    "run_burn",
]


class StopBurn(Exception):
    """Raised by ``on_cycle`` to stop the burn safely (the unit closed with STOP_ALL, the run
    summarised as aborted); its one-line message is the abort reason, e.g. a run record that
    can no longer be written."""


class IdealUnit(StepByStep):
    """The in-process reference unit: executes every command exactly (already in whole ms),
    clamped to the cycle, and never fires a thruster that has failed."""

    name = "sim"
    errors: tuple = ()

    def __init__(self, n: int, period_ms: int):
        self.period_ms = period_ms
        self.health = np.full(n, HEALTH_NOMINAL, np.int64)
        self._executed = np.zeros(n, np.uint16)

    def fail(self, index: int, code: int = HEALTH_FAILED_OFF) -> None:
        self.health[index] = code

    def execute(self, cycle: int, on_ms: np.ndarray) -> UnitReport:
        np.minimum(on_ms, self.period_ms, out=self._executed)
        self._executed[self.health != HEALTH_NOMINAL] = 0
        return UnitReport(self._executed, self.health)

    #: The in-process unit has no valves of its own: they are closed when the loop stops.
    valves_closed = True
    valves_open: tuple[int, ...] = ()

    def close(self) -> None:
        pass


@dataclass
class Failure:
    """A thruster failure injected into the run: ``name`` fails at ``at_s`` into the burn."""

    name: str
    at_s: float
    code: int = HEALTH_FAILED_OFF
    index: int = -1
    applied_cycle: int | None = None


@dataclass
class RunResult:
    summary: dict
    events: list[dict] = field(default_factory=list)


def run_burn(
    model,
    plan: dict,
    *,
    unit: Unit | None = None,
    failures: list[Failure] | None = None,
    on_cycle: Callable[[int, dict], None] | None = None,
    case: PlantCase | None = None,
    on_loop_end: Callable[[], None] | None = None,
) -> RunResult:
    """Fly the planned burn of ``model`` (a StackModel) in closed loop and summarise it.

    ``unit`` None is the in-process :class:`IdealUnit`; without ``on_cycle`` that burn runs entirely
    in numba (:func:`thruster_hil.closedloop.fused.fly`), otherwise cycle by cycle from here with
    the same kernels (:func:`thruster_hil.closedloop.fused.pre_unit`, the unit,
    :func:`thruster_hil.closedloop.fused.post_unit`). ``case`` (a
    :class:`thruster_hil.closedloop.fused.PlantCase`, e.g. one case of a dispersion campaign)
    perturbs the plant and the sensors while the controller keeps the nominal model. ``on_loop_end``
    is called as soon as the cycles stop, before the unit is closed (the CLI holds its stop signals
    there: a SIGTERM while STOP_ALL is confirmed must not cut the confirmation short).
    """
    period = float(model.control_period_s)
    period_ms = int(round(period * 1000))
    n = len(model.thruster_names)
    names = list(model.thruster_names)
    failures = list(failures or [])
    if case is not None and case.fail_index >= 0:
        failures.append(Failure(names[case.fail_index], float(case.fail_at_s)))
    for f in failures:
        f.index = names.index(f.name)
    sim = new_sim(model, plan, case)
    max_cycles = sim.setup.max_cycles
    # Per-cycle records, preallocated: the loop only writes numbers.
    statuses = np.zeros(max_cycles, np.int64)
    att_err = np.zeros(max_cycles)
    longest = np.zeros(max_cycles, np.int64)
    events: list[dict] = []
    aborted: str | None = None
    late_cycles = 0
    fused = unit is None and on_cycle is None
    unit = unit if unit is not None else IdealUnit(n, period_ms)
    realtime = unit.realtime
    if fused:
        fail_idx = np.array([f.index for f in failures], np.int64)
        fail_at = np.array([f.at_s for f in failures], np.float64)
        fail_code = np.array([f.code for f in failures], np.int64)
        fail_cycle = np.full(len(failures), -1, np.int64)
        wall0 = time.perf_counter()
        k, complete, _plant = sim.fly(
            fail_idx, fail_at, fail_code, fail_cycle, statuses, att_err, longest
        )
        wall = time.perf_counter() - wall0
        if on_loop_end is not None:
            on_loop_end()
        complete_cycle = complete if complete >= 0 else None
        for f, kf in zip(failures, fail_cycle, strict=True):
            if kf >= 0:
                f.applied_cycle = int(kf)
                t = float(kf * period)
                events.append(
                    {"event": "thruster_failed", "thruster": f.name, "t_s": t, "cycle": int(kf)}
                )
                events.append(
                    {
                        "event": "reallocated",
                        "thruster": f.name,
                        "t_s": t,
                        "cycle": int(kf),
                        "health": int(f.code),
                    }
                )
        if complete_cycle is not None:
            events.append(
                {
                    "event": "burn_complete",
                    "t_s": complete_cycle * period,
                    "cycle": complete_cycle,
                    "sensed_dv_mps": None,
                }
            )
        events.sort(key=lambda e: e["cycle"])
        unit.close()
        cycles_per_s = k / wall if wall > 0 and k > 0 else math.nan
    else:
        k, complete_cycle, aborted, late_cycles, wall = _cycle_by_cycle(
            sim,
            unit,
            failures,
            names,
            events,
            statuses,
            att_err,
            longest,
            on_cycle,
            realtime,
            on_loop_end,
        )
        cycles_per_s = (k - 1) / wall if wall > 0 and k > 1 else math.nan
    if aborted is None and sim.ctrl.stopped_tank >= 0:
        aborted = _reserve_stop(model, sim)
    if aborted is not None:
        events.append({"event": "aborted", "cycle": k, "t_s": k * period, "reason": aborted})
    still_open = _listed(unit.valves_open)
    if still_open:  # after the unit's close: what STOP_ALL could not close
        events.append(
            {"event": "valves_open", "cycle": k, "t_s": k * period, "channels": still_open}
        )
    out = sim.finish(k)
    max_err = float(att_err[:k].max()) if k else 0.0
    max_on_ms = int(longest[:k].max()) if k else 0
    bound_violations = int(np.count_nonzero(longest[:k] > period_ms))
    status_counts = {
        name: int(np.count_nonzero(statuses[:k] & bit))
        for bit, name in cst.STATUS_NAMES.items()
        if np.count_nonzero(statuses[:k] & bit)
    }
    achieved = float(out[O_ACHIEVED_DV])
    target = plan["delta_v_mps"]
    summary = {
        "stack": plan["stack"],
        "unit": unit.name,
        "target_delta_v_mps": target,
        "achieved_delta_v_mps": achieved,
        "delta_v_error_pct": 100.0 * (achieved - target) / target,
        "true_delta_v_mps": float(out[O_TRUE_DV]),
        "burn_duration_s": (complete_cycle if complete_cycle is not None else k) * period,
        "planned_burn_duration_s": plan["burn_duration_s"],
        "cycles": k,
        "completed": complete_cycle is not None,
        "aborted": aborted is not None,
        "abort_reason": aborted,
        # Did the unit confirm its final STOP_ALL and report every valve closed? None: could
        # not ask. valves_open: the channels it still reports open (stuck), None if unknown.
        "valves_closed": unit.valves_closed,
        "valves_open": still_open,
        "max_attitude_error_deg": math.degrees(max_err),
        "attitude_limit_deg": math.degrees(model.max_attitude_error_rad),
        "propellant_kg": float(out[O_PROPELLANT]),
        "tank_used_kg": {
            name: round(float(u), 4)
            for name, u in zip(model.tank_names, sim.tank_used, strict=True)
        },
        "propellant_by_tank_kg": {
            name: float(u) for name, u in zip(model.tank_names, sim.tank_used, strict=True)
        },
        "tank_reserve_kg": {
            name: float(r) for name, r in zip(model.tank_names, model.tank_reserve_kg, strict=True)
        },
        # Tanks whose draw reached into their reserve (the controller stops before that).
        "reserve_touched": [
            name
            for name, u, load, r in zip(
                model.tank_names,
                sim.tank_used,
                model.tank_propellant_kg,
                model.tank_reserve_kg,
                strict=True,
            )
            if r > 0.0 and u > load - r
        ],
        "perigee_km_before": plan["perigee_km_before"],
        "apogee_km_before": plan["apogee_km_before"],
        "perigee_km_after": plan["perigee_km_before"] + out[O_D_PERIGEE] / 1e3,
        "apogee_km_after": plan["apogee_km_before"] + out[O_D_APOGEE] / 1e3,
        "mean_altitude_change_km": out[O_D_A] / 1e3,
        "max_on_time_ms": max_on_ms,
        "period_ms": period_ms,
        "on_time_bound_violations": bound_violations,
        "status_cycles": status_counts,
        "failures": [{"thruster": f.name, "at_s": f.at_s} for f in failures],
        "reallocations": [e for e in events if e["event"] == "reallocated"],
        "wall_s": wall,
        "cycles_per_s": cycles_per_s,
    }
    summary["signal"] = next((e["signal"] for e in events if e["event"] == "signal"), None)
    summary["failure_reason"] = (
        None
        if aborted is not None
        else _shortfall(
            summary,
            names,
            np.flatnonzero(sim.ctrl.thr[:, T_TRANSLATION] > 0.5),
            np.where(sim.ctrl.health == HEALTH_FAILED_OFF, HEALTH_FAILED_OFF, sim.true_health),
        )
    )
    if realtime:
        summary["late_cycles"] = late_cycles
    link = unit.stats()
    if link is not None:
        summary["link"] = link
    return RunResult(summary, events)


def _cycle_by_cycle(
    sim: Sim,
    unit: Unit,
    failures,
    names,
    events,
    statuses,
    att_err,
    longest,
    on_cycle,
    realtime,
    on_loop_end=None,
):
    """The loop with the unit in Python between the two halves of each cycle (a serial unit,
    or a run that records every cycle). Returns (cycles, complete cycle, abort reason, late
    cycles, wall time [s] from the end of the first cycle to the end of the last).

    One cycle is before_unit() -> the unit executes -> after_unit(report). In LOCKSTEP the
    unit runs the chain of cycles itself (:meth:`Unit.execute_chain`: a serial unit on its
    link's reader thread, :meth:`thruster_hil.firmware_bridge.link.Link.fire_chain`; an
    in-process unit as a plain loop); in REALTIME the cycles are paced from here and the unit
    executes one per call.
    """
    ctrl = sim.ctrl
    period = sim.setup.period_s
    max_cycles = sim.setup.max_cycles
    true_health = sim.true_health
    on_ms = ctrl.on_ms
    translation_idx = np.flatnonzero(ctrl.thr[:, T_TRANSLATION] > 0.5)
    unit_errors = tuple(unit.errors)
    complete_cycle = None
    aborted = None
    late_cycles = 0
    wall0 = time.perf_counter()
    wall1 = None
    k = 0
    ctrl_health_nominal = not ctrl.health.any()  # what the controller last heard
    no_thrust: str | None = None  # every translation thruster failed off: stop the burn

    def before_unit() -> np.ndarray:
        nonlocal complete_cycle
        t = k * period
        if failures:
            for f in failures:
                if f.applied_cycle is None and t >= f.at_s:
                    f.applied_cycle = k
                    true_health[f.index] = f.code
                    unit.fail(f.index, f.code)
                    events.append(
                        {"event": "thruster_failed", "thruster": f.name, "t_s": t, "cycle": k}
                    )
        statuses[k] = sim.pre(k)
        att_err[k] = ctrl.ctrl[cst.C_ATT_ERR]
        if complete_cycle is None and ctrl.ctrl[cst.C_COMPLETE] > 0.5:
            complete_cycle = k
            events.append(
                {"event": "burn_complete", "t_s": t, "cycle": k, "sensed_dv_mps": ctrl.dv_along_mps}
            )
        return on_ms

    def after_unit(report: UnitReport) -> bool:
        """Integrate cycle k with what the unit executed; True if the burn goes on. A stop
        signal waits for the end (:mod:`thruster_hil.core.sections`): the cycle integrated is the
        cycle recorded and counted."""
        nonlocal k, wall0, wall1, ctrl_health_nominal, no_thrust
        sections.enter()
        try:
            if not (report.all_nominal and ctrl_health_nominal) and (
                report.health.any() or ctrl.health.any()
            ):
                newly_out = (report.health != HEALTH_NOMINAL) & (ctrl.health == HEALTH_NOMINAL)
                for i in np.flatnonzero(newly_out):
                    events.append(
                        {
                            "event": "reallocated",
                            "thruster": names[i],
                            "t_s": k * period,
                            "cycle": k,
                            "health": int(report.health[i]),
                        }
                    )
                ctrl.health[:] = report.health
                ctrl_health_nominal = not ctrl.health.any()
                if (
                    complete_cycle is None
                    and (ctrl.health[translation_idx] == HEALTH_FAILED_OFF).all()
                ):
                    no_thrust = _no_thrust_reason(names, translation_idx)
            longest[k] = on_ms.max()
            flags = sim.post(report.executed_ms)
            if k == 0:
                wall0 = time.perf_counter()  # the first cycle also loads the kernels: not timed
            if on_cycle is not None:
                on_cycle(
                    k,
                    {
                        "t_s": k * period,
                        "status": int(statuses[k]),
                        "ctrl": ctrl,
                        "y": sim.y,
                        "executed_ms": report.executed_ms,
                        "rtt_s": report.rtt_s,
                        "tank_used": sim.tank_used,
                    },
                )
            k += 1
            wall1 = time.perf_counter()
            if no_thrust is not None:
                raise StopBurn(no_thrust)
            if complete_cycle is not None and flags & F_QUIET and not on_ms[translation_idx].any():
                return False
            if ctrl.stopped_tank >= 0 and flags & F_QUIET:
                return False
            return k < max_cycles
        finally:
            sections.leave()

    try:
        if not realtime:
            unit.execute_chain(
                0, before_unit(), lambda report: before_unit() if after_unit(report) else None
            )
        else:
            pace0 = time.monotonic()
            while k < max_cycles:
                # Pace the cycles on the wall clock: cycle k starts k periods after the first.
                due = pace0 + k * period
                lag = time.monotonic() - due
                if lag < 0.0:
                    unit.wait_until(due, k)  # a serial unit keeps its watchdog fed
                    lag = time.monotonic() - due
                elif lag > 0.5 * period:
                    late_cycles += 1
                unit.cycle_started(k, lag)  # the schedule's jitter, in the link statistics
                if not after_unit(unit.execute(k, before_unit())):
                    break
    except unit_errors as exc:
        aborted = f"unit: {exc}"
    except StopBurn as exc:
        aborted = str(exc)
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM / SIGHUP (thruster_hil.stopsignals)
        name = getattr(exc, "signal_name", "SIGINT")
        aborted = "interrupted" if name == "SIGINT" else f"interrupted by {name}"
        events.append({"event": "signal", "signal": name, "cycle": k, "t_s": k * period})
    finally:
        if on_loop_end is not None:
            on_loop_end()
        unit.close()
    # Closing the unit (stopping its process) is not part of the loop's speed.
    return k, complete_cycle, aborted, late_cycles, (wall1 or time.perf_counter()) - wall0


def _no_thrust_reason(names, translation_idx) -> str:
    failed = ", ".join(names[i] for i in translation_idx)
    return (
        f"every translation thruster has failed off ({failed}): no along-track thrust is "
        "possible, the burn cannot reach its target"
    )


def _shortfall(summary: dict, names, translation_idx, health) -> str | None:
    """Why a burn that was not aborted still failed (exit status 1), or None: a valve left open
    (STOP_ALL could not close it, or the unit did not confirm it), the target not reached, no
    thrust possible, the attitude limit broken."""
    if summary.get("valves_open"):
        return (
            f"the unit still reports {_channels(summary['valves_open'])} open after STOP_ALL "
            "(stuck): safe the rig by hand"
        )
    if summary.get("valves_closed") is False:
        return "the unit did not confirm the final STOP_ALL: a valve may be open; safe the rig"
    if summary["max_attitude_error_deg"] > summary["attitude_limit_deg"]:
        return (
            f"the attitude error reached {summary['max_attitude_error_deg']:.4g} deg, over "
            f"the {summary['attitude_limit_deg']:g} deg limit"
        )
    if summary["completed"]:
        return None
    if len(translation_idx) and (health[translation_idx] == HEALTH_FAILED_OFF).all():
        return _no_thrust_reason(names, translation_idx)
    return (
        f"the target was not reached: {summary['achieved_delta_v_mps']:.5f} of "
        f"{summary['target_delta_v_mps']:.5f} m/s after {summary['cycles']} cycles (the "
        "burn's cycle limit)"
    )


def _reserve_stop(model, sim: Sim) -> str:
    """Why the controller stopped the burn: a tank would have reached its reserve."""
    t = sim.ctrl.stopped_tank
    name = model.tank_names[t]
    reserve = float(model.tank_reserve_kg[t])
    left = float(model.tank_propellant_kg[t]) - reserve - float(sim.tank_used[t])
    return (
        f"stopped before tank {name!r} reaches its {reserve:g} kg reserve ({left:.2f} kg "
        f"above it left; the rest of the burn would need more): no reboost spends it"
    )


def _listed(channels) -> list[int] | None:
    return None if channels is None else [int(c) for c in channels]


def _by_tank(s: dict) -> str:
    reserve = s.get("tank_reserve_kg") or {}
    parts = []
    for name, used in (s.get("propellant_by_tank_kg") or {}).items():
        r = reserve.get(name, 0.0)
        note = ""
        if r > 0.0:
            note = (
                " (reserve TOUCHED)"
                if name in s.get("reserve_touched", ())
                else f" (its {r:g} kg reserve untouched)"
            )
        parts.append(f"{name} {used:.2f} kg{note}")
    return ", ".join(parts)


def _channels(channels: list[int]) -> str:
    return ("channel " if len(channels) == 1 else "channels ") + ", ".join(map(str, channels))


def _result_line(s: dict) -> str:
    """How the burn ended, with the reason when it did not end well (exit status 0 only for
    "completed")."""
    if s.get("aborted"):
        return f"ABORTED: {s.get('abort_reason')}"
    if s.get("failure_reason"):
        return f"FAILED: {s['failure_reason']}"
    return "completed" if s.get("completed") else "not completed"


#: Statuses every burn has: the summary does not explain them.
_PLAIN_STATUSES = ("burning", "complete")


def _status_notes(status_cycles: dict) -> list[tuple[str, str]]:
    """One row per unusual status the burn had, saying what it means (the controller's status
    word, docs/controller.md): a count alone ("saturated 118") tells an operator nothing."""
    meaning = {cst.STATUS_NAMES[bit]: text for bit, text in cst.STATUS_MEANINGS.items()}
    rows = [
        ("", f"{name}: {meaning[name]}")
        for name in status_cycles
        if name not in _PLAIN_STATUSES and name in meaning
    ]
    if "saturated" in status_cycles or "infeasible" in status_cycles:
        # Each cycle asks for the delta-v still to go and the attitude error of that moment,
        # so a cycle short of its wrench is not lost: later cycles fly it.
        rows.append(
            ("", "(later cycles fly what those missed; the rows above say how the burn ended)")
        )
    return rows


def format_run(s: dict) -> str:
    """A run summary as a readable table."""
    rows = [
        ("result", _result_line(s)),
        ("stack / unit", f"{s['stack']} / {s['unit']}"),
        (
            "delta-v",
            f"{s['achieved_delta_v_mps']:.5f} of {s['target_delta_v_mps']:.5f} m/s "
            f"({s['delta_v_error_pct']:+.3f} %)",
        ),
        (
            "burn duration",
            f"{s['burn_duration_s']:.1f} s (planned "
            f"{s['planned_burn_duration_s']:.1f} s), {s['cycles']} cycles",
        ),
        (
            "max attitude error",
            f"{s['max_attitude_error_deg']:.4f} deg (limit {s['attitude_limit_deg']:g} deg)",
        ),
        ("propellant", f"{s['propellant_kg']:.2f} kg"),
        ("propellant by tank", _by_tank(s)),
        ("mean perigee", f"{s['perigee_km_before']:.3f} -> {s['perigee_km_after']:.3f} km"),
        ("mean apogee", f"{s['apogee_km_before']:.3f} -> {s['apogee_km_after']:.3f} km"),
        ("status (cycles)", ", ".join(f"{k} {v}" for k, v in s["status_cycles"].items())),
        *_status_notes(s["status_cycles"]),
        ("speed", f"{s['cycles_per_s']:,.0f} cycles/s ({s['wall_s']:.3f} s wall)"),
    ]
    link = s.get("link") or {}
    if link.get("cycle_starts"):
        rows.append(
            (
                "pacing",
                f"cycles started p50 {link['cycle_start_jitter_ms_p50']:.2f}, p99 "
                f"{link['cycle_start_jitter_ms_p99']:.2f}, max "
                f"{link['cycle_start_jitter_ms_max']:.2f} ms after their schedule; "
                f"{link.get('deadline_misses', 0)} deadline misses",
            )
        )
    for r in s["reallocations"]:
        rows.append(
            (
                "reallocated",
                f"{r['thruster']} out at {r['t_s']:.1f} s (cycle "
                f"{r['cycle']}): allocated to the remaining thrusters",
            )
        )
    if s.get("valves_open"):
        rows.append(
            (
                "VALVES OPEN",
                f"the unit still reports {_channels(s['valves_open'])} "
                "open after STOP_ALL (stuck): safe the rig by hand",
            )
        )
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
