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
time (see :func:`sims.orbit.mean_change`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from controller import cycle as cst
from controller.build import Controller, build_controller
from sims import atmosphere, orbit, plant
from sims.attitude import dcm_from_q, lvlh_attitude_q, lvlh_rate_B
from sims.constants import MU_EARTH
from sims.thrusters import (
    HEALTH_FAILED_OFF,
    HEALTH_NOMINAL,
    VS_EDGE_T,
    VS_THRUST,
    feed_update,
    valve_cycle,
    valve_state_at_rest,
)

#: RK4 sub-steps per control cycle (0.1 s at the 0.5 s control period).
N_SUB = 5
#: Step of the orbit-only propagations that measure the burn's effect [s].
COAST_STEP_S = 1.0
#: Cycles allowed beyond the planned burn before the run is declared overdue.
OVERRUN_FACTOR = 3.0


@dataclass
class UnitReport:
    """What a unit executed in one cycle: on-times [ms] and per-thruster health codes."""

    executed_ms: np.ndarray
    health: np.ndarray
    rtt_s: float = 0.0


class IdealUnit:
    """The in-process reference unit: executes every command exactly (already in whole ms),
    clamped to the cycle, and never fires a thruster that has failed."""

    name = "sim"
    realtime = False
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


def _sensors(ctrl: Controller, y: np.ndarray, sensed: np.ndarray) -> None:
    s = ctrl.sens
    s[cst.S_R:cst.S_R + 3] = y[plant.R:plant.R + 3]
    s[cst.S_V:cst.S_V + 3] = y[plant.V:plant.V + 3]
    s[cst.S_Q:cst.S_Q + 4] = y[plant.Q:plant.Q + 4]
    s[cst.S_W:cst.S_W + 3] = y[plant.W:plant.W + 3]
    s[cst.S_MASS] = y[plant.M]
    s[cst.S_DV:cst.S_DV + 3] = sensed[0:3]


def run_burn(model, plan: dict, *, unit=None, failures: list[Failure] | None = None,
             on_cycle: Callable[[int, dict], None] | None = None) -> RunResult:
    """Fly the planned burn of ``model`` (a StackModel) in closed loop and summarise it."""
    period = float(model.control_period_s)
    period_ms = int(round(period * 1000))
    n = len(model.thruster_names)
    ctrl = build_controller(model, plan["delta_v_mps"])
    unit = unit if unit is not None else IdealUnit(n, period_ms)
    failures = list(failures or [])
    names = list(model.thruster_names)
    for f in failures:
        f.index = names.index(f.name)

    # Ignition state: half the planned burn before the apsis, in the reboost attitude.
    a0, e0 = orbit.a_e_from_apsis_altitudes(plan["perigee_km_before"] * 1e3,
                                            plan["apogee_km_before"] * 1e3)
    incl = math.radians(plan["inclination_deg"])
    r0, v0 = orbit.rv_before_apsis(a0, e0, incl, plan["burn_duration_s"] / 2.0,
                                   plan["burn_centre"])
    q0 = np.empty(4)
    lvlh_attitude_q(r0, v0, np.ascontiguousarray(model.dcm_BH), q0)
    dcm = np.empty((3, 3))
    dcm_from_q(q0, dcm)
    w0 = np.empty(3)
    lvlh_rate_B(r0, v0, dcm, w0)
    y = plant.initial_state(r0, v0, q0, w0, model.mass_kg)
    y_start = y.copy()

    table = atmosphere.density_table(plan["solar_activity"])
    cd_area = model.drag_coefficient * model.drag_area_m2
    inertia = np.ascontiguousarray(model.I_B)
    inertia_inv = np.linalg.inv(inertia)
    u_T_B = np.ascontiguousarray(model.u_T_B)
    r_TC_B = np.ascontiguousarray(model.r_TC_B)
    isp_ref = np.ascontiguousarray(model.isp_s, dtype=np.float64)
    thrust_ref = np.ascontiguousarray(model.thrust_N, dtype=np.float64)
    isp = isp_ref.copy()  # present Isp and thrust: they follow the feed pressure
    thrust = thrust_ref.copy()
    feed = (np.ascontiguousarray(model.tank_idx, dtype=np.int64),
            np.ascontiguousarray(model.tank_propellant_kg, dtype=np.float64),
            np.ascontiguousarray(model.tank_blowdown, dtype=np.bool_),
            np.ascontiguousarray(model.tank_pressure_Pa, dtype=np.float64),
            np.ascontiguousarray(model.tank_gas_volume_m3, dtype=np.float64),
            np.ascontiguousarray(model.tank_propellant_density_kg_m3, dtype=np.float64),
            np.ascontiguousarray(model.tank_polytropic_n, dtype=np.float64), thrust_ref, isp_ref,
            np.ascontiguousarray(model.thrust_exponent, dtype=np.float64),
            np.ascontiguousarray(model.isp_exponent, dtype=np.float64))
    tank_used = np.zeros(len(model.tank_names))
    t_od = np.ascontiguousarray(model.open_delay_s, dtype=np.float64)
    t_cd = np.ascontiguousarray(model.close_delay_s, dtype=np.float64)
    tau_r = np.ascontiguousarray(model.rise_time_s, dtype=np.float64)
    tau_t = np.ascontiguousarray(model.tail_off_s, dtype=np.float64)
    true_health = np.full(n, HEALTH_NOMINAL, np.int64)
    valves = valve_state_at_rest(n)
    impulse = np.zeros((N_SUB, n))
    on_s = np.zeros(n)
    sensed = np.zeros(plant.SENSED_LEN)
    work = np.empty(plant.PLANT_WORK_LEN)
    cmg = np.zeros(3)
    budget = float(model.cmg_torque_budget_Nm)

    max_cycles = int(math.ceil(OVERRUN_FACTOR * plan["burn_duration_s"] / period)) + 40
    # Per-cycle records, preallocated: the loop only writes numbers.
    statuses = np.zeros(max_cycles, np.int64)
    att_err = np.zeros(max_cycles)
    longest = np.zeros(max_cycles, np.int64)
    ctrl_state = ctrl.ctrl
    on_ms = ctrl.on_ms
    complete_cycle = None
    events: list[dict] = []
    translation_idx = np.asarray(model.translation_idx)
    unit_errors = tuple(getattr(unit, "errors", ()))
    realtime = bool(getattr(unit, "realtime", False))
    aborted: str | None = None
    late_cycles = 0
    wall0 = time.perf_counter()
    k = 0
    pace0 = time.monotonic()

    # One cycle is before_unit() -> the unit executes -> after_unit(report). A serial unit in
    # LOCKSTEP runs the chain on its reader thread (execute_chain); every other unit is
    # called once per cycle here.
    def before_unit() -> np.ndarray:
        nonlocal complete_cycle
        t = k * period
        if failures:
            for f in failures:
                if f.applied_cycle is None and t >= f.at_s:
                    f.applied_cycle = k
                    true_health[f.index] = f.code
                    if hasattr(unit, "fail"):
                        unit.fail(f.index, f.code)
                    events.append({"event": "thruster_failed", "thruster": f.name,
                                   "t_s": t, "cycle": k})
        _sensors(ctrl, y, sensed)
        sensed[:] = 0.0
        status = ctrl.step()
        statuses[k] = status
        att_err[k] = ctrl_state[cst.C_ATT_ERR]
        if complete_cycle is None and ctrl_state[cst.C_COMPLETE] > 0.5:
            complete_cycle = k
            events.append({"event": "burn_complete", "t_s": t, "cycle": k,
                           "sensed_dv_mps": ctrl.dv_along_mps})
        return on_ms

    def after_unit(report: UnitReport) -> bool:
        """Integrate cycle k with what the unit executed; True if the burn goes on."""
        nonlocal k, wall0
        t = k * period
        if report.health.any() or ctrl.health.any():
            newly_out = (report.health != HEALTH_NOMINAL) & (ctrl.health == HEALTH_NOMINAL)
            for i in np.flatnonzero(newly_out):
                events.append({"event": "reallocated", "thruster": names[i], "t_s": t,
                               "cycle": k, "health": int(report.health[i])})
            ctrl.health[:] = report.health
        longest[k] = on_ms.max()
        np.multiply(report.executed_ms, 1e-3, out=on_s)
        valve_cycle(on_s, true_health, thrust, t_od, t_cd, tau_r, tau_t, period, valves,
                    impulse)
        if budget > 0.0:
            cmg[:] = ctrl.qp[cst.Q_X, n:n + 3] * budget
        plant.plant_cycle(y, period, impulse, u_T_B, r_TC_B, isp, cmg, inertia, inertia_inv,
                          cd_area, 1.0, 1.0, table[0], table[1], work, y, sensed)
        feed_update(impulse, isp, *feed, tank_used, thrust, isp)
        if k == 0:
            wall0 = time.perf_counter()  # the first cycle also loads the kernels: not timed
        if on_cycle is not None:
            on_cycle(k, {"t_s": t, "status": int(statuses[k]), "ctrl": ctrl, "y": y,
                         "executed_ms": report.executed_ms, "rtt_s": report.rtt_s})
        k += 1
        if complete_cycle is not None:
            quiet = (np.all(valves[:, VS_THRUST] < 1e-9 * thrust)
                     and np.all(np.isnan(valves[:, VS_EDGE_T])))
            if quiet and not on_ms[translation_idx].any():
                return False
        return k < max_cycles

    def next_cycle(report: UnitReport) -> np.ndarray | None:
        return before_unit() if after_unit(report) else None

    wall1 = None
    try:
        if not realtime and hasattr(unit, "execute_chain"):
            unit.execute_chain(k, before_unit(), next_cycle)
        else:
            while k < max_cycles:
                if realtime:
                    # Pace the cycles on the wall clock: cycle k starts k periods after the
                    # first.
                    due = pace0 + k * period
                    lag = time.monotonic() - due
                    if lag < 0.0:
                        unit.wait_until(due, k)  # a serial unit keeps its watchdog fed
                    elif lag > 0.5 * period:
                        late_cycles += 1
                if not after_unit(unit.execute(k, before_unit())):
                    break
        wall1 = time.perf_counter()
    except unit_errors as exc:
        aborted = f"unit: {exc}"
    except KeyboardInterrupt:
        aborted = "interrupted"
    finally:
        unit.close()
    if aborted is not None:
        events.append({"event": "aborted", "cycle": k, "t_s": k * period, "reason": aborted})
    # Closing the unit (stopping its process) is not part of the loop's speed.
    wall = (wall1 if wall1 is not None else time.perf_counter()) - wall0
    max_err = float(att_err[:k].max()) if k else 0.0
    max_on_ms = int(longest[:k].max()) if k else 0
    bound_violations = int(np.count_nonzero(longest[:k] > period_ms))
    status_counts = {name: int(np.count_nonzero(statuses[:k] & bit))
                     for bit, name in cst.STATUS_NAMES.items()
                     if np.count_nonzero(statuses[:k] & bit)}
    # The last cycle's accelerometer increment (the tail) still belongs to the burn.
    _sensors(ctrl, y, sensed)
    x_b = ctrl.ctrl[cst.C_XH_B:cst.C_XH_B + 3]
    achieved = ctrl.dv_along_mps + float(sensed[0:3] @ x_b)

    # Orbit after: burned state vs a no-burn twin over the same time, mean elements.
    elapsed = k * period
    n_coast = max(1, int(round(elapsed / COAST_STEP_S)))
    coast = np.empty((n_coast + 1, 7))
    y7 = np.concatenate([y_start[0:6], [y_start[plant.M]]])
    orbit.propagate(y7, elapsed / n_coast, n_coast, 1, 0.0, 0.0, np.zeros(3), 0.0, cd_area, 1.0,
                    table[0], table[1], coast)
    period_orbit = orbit.period_s(a0, MU_EARTH)
    y_burn7 = np.concatenate([y[0:6], [y[plant.M]]])
    change = orbit.mean_change(y_burn7, coast[-1], period_orbit, cd_area, table, COAST_STEP_S)
    target = plan["delta_v_mps"]
    summary = {
        "stack": plan["stack"],
        "unit": getattr(unit, "name", type(unit).__name__),
        "target_delta_v_mps": target,
        "achieved_delta_v_mps": achieved,
        "delta_v_error_pct": 100.0 * (achieved - target) / target,
        "burn_duration_s": (complete_cycle if complete_cycle is not None else k) * period,
        "planned_burn_duration_s": plan["burn_duration_s"],
        "cycles": k,
        "completed": complete_cycle is not None,
        "aborted": aborted is not None,
        "abort_reason": aborted,
        "max_attitude_error_deg": math.degrees(max_err),
        "attitude_limit_deg": math.degrees(model.max_attitude_error_rad),
        "propellant_kg": float(y_start[plant.M] - y[plant.M]),
        "tank_used_kg": {name: round(float(u), 4) for name, u in zip(model.tank_names, tank_used,
                                                                       strict=True)},
        "perigee_km_before": plan["perigee_km_before"],
        "apogee_km_before": plan["apogee_km_before"],
        "perigee_km_after": plan["perigee_km_before"] + change["d_perigee_m"] / 1e3,
        "apogee_km_after": plan["apogee_km_before"] + change["d_apogee_m"] / 1e3,
        "mean_altitude_change_km": change["d_a_m"] / 1e3,
        "max_on_time_ms": max_on_ms,
        "period_ms": period_ms,
        "on_time_bound_violations": bound_violations,
        "status_cycles": status_counts,
        "failures": [{"thruster": f.name, "at_s": f.at_s} for f in failures],
        "reallocations": [e for e in events if e["event"] == "reallocated"],
        "wall_s": wall,
        "cycles_per_s": (k - 1) / wall if wall > 0 and k > 1 else math.nan,
    }
    if realtime:
        summary["late_cycles"] = late_cycles
    if hasattr(unit, "stats"):
        summary["link"] = unit.stats()
    return RunResult(summary, events)


def format_run(s: dict) -> str:
    """A run summary as a readable table."""
    rows = [
        ("stack / unit", f"{s['stack']} / {s['unit']}"),
        ("delta-v", f"{s['achieved_delta_v_mps']:.5f} of {s['target_delta_v_mps']:.5f} m/s "
                    f"({s['delta_v_error_pct']:+.3f} %)"),
        ("burn duration", f"{s['burn_duration_s']:.1f} s (planned "
                          f"{s['planned_burn_duration_s']:.1f} s), {s['cycles']} cycles"),
        ("max attitude error", f"{s['max_attitude_error_deg']:.4f} deg (limit "
                               f"{s['attitude_limit_deg']:g} deg)"),
        ("propellant", f"{s['propellant_kg']:.2f} kg"),
        ("mean perigee", f"{s['perigee_km_before']:.3f} -> {s['perigee_km_after']:.3f} km"),
        ("mean apogee", f"{s['apogee_km_before']:.3f} -> {s['apogee_km_after']:.3f} km"),
        ("status (cycles)", ", ".join(f"{k} {v}" for k, v in s["status_cycles"].items())),
        ("speed", f"{s['cycles_per_s']:,.0f} cycles/s ({s['wall_s']:.3f} s wall)"),
    ]
    for r in s["reallocations"]:
        rows.append(("reallocated", f"{r['thruster']} out at {r['t_s']:.1f} s (cycle "
                                    f"{r['cycle']}): allocated to the remaining thrusters"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
