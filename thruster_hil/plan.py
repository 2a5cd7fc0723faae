"""Burn planning without hardware: ``thruster-hil plan``.

A plan is the burn ``run --unit sim`` flies: the same controller, plant and ideal unit
(:func:`thruster_hil.closedloop.runner.run_burn`), from the same ignition state at the same time, so
the plan's burn duration, propellant and orbit after are the run's (issue 14: plan = run). The
rocket equation on the translation thrusters' along-track thrust (cant losses included: only the
along-track component of each thrust counts, while every newton of thrust costs propellant) only
gives the first estimate and the limits a target is refused against before anything is flown.

The orbit after: J2 swings the osculating apsides by kilometres within an orbit, so what the burn
changed is the difference of orbit-averaged (mean) elements between the flown burn and a no-burn
twin over the same time (:func:`thruster_hil.closedloop.fused.orbit_change`), added to the mean
perigee and apogee the operator started from.

Each burn is centred on an apsis: on apogee by default, which raises the perigee and so
circularises the orbit against drag decay (the usual ISS reboost). Ignition is half the planned
burn duration before the apsis, on the two-body orbit of the given mean apsides, in the plan as in
the run.

Targets. A delta-v is the controller's target. A burn duration, a perigee raise or a mean
altitude is met by secant corrections of that delta-v on the flown burn (the flown duration, the
flown mean-element change). Then the ignition is made consistent: the planned duration is the
duration flown from the ignition it sets (a fixed point, reached in one or two flights because
the duration hardly depends on where the burn starts).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from thruster_hil.config import Stack, StackModel, build_stack_model, load_stack
from thruster_hil.core.constants import G0, MU_EARTH, R_EARTH
from thruster_hil.core.errors import UserError

#: Secant corrections of the delta-v so the flown change, not the two-body estimate, meets an
#: orbit target (and the flown duration a duration target).
CORRECTIONS = 4
#: How far the flown change may stay from an orbit target after the corrections.
GOAL_TOLERANCE = 0.01
#: Flights that make the ignition time consistent with the flown duration (a fixed point).
IGNITION_FLIGHTS = 3
#: The option each kind of target comes from (what an error about the target names).
TARGET_FLAGS = {
    "delta_v": "--delta-v",
    "raise_perigee": "--raise-perigee-km",
    "mean_altitude": "--target-mean-altitude-km",
    "burn_duration": "--burn-duration",
}
#: What the plan's numbers are (the --json "model" field).
MODEL = "closed loop: controller + plant + ideal unit, as run --unit sim"


@dataclass(frozen=True)
class Target:
    """What the operator asked for: kind is delta_v [m/s], raise_perigee [km],
    mean_altitude [km] or burn_duration [s]."""

    kind: str
    value: float


@dataclass(frozen=True)
class _Burn:
    force_H_N: np.ndarray  # translation force fixed in LVLH (perfect attitude hold) [N]
    along_N: float  # its along-track component [N]
    mdot_kg_s: float  # propellant flow of the translation set [kg/s]
    mass_kg: float  # stack mass at ignition [kg]

    @property
    def c_eff_mps(self) -> float:
        """Effective along-track exhaust velocity [m/s]: F_along / mdot."""
        return self.along_N / self.mdot_kg_s

    def duration_for_dv(self, dv_mps: float) -> float:
        """Rocket equation: burn time [s] for an along-track delta-v [m/s]."""
        m_used = self.mass_kg * (1.0 - math.exp(-dv_mps / self.c_eff_mps))
        return m_used / self.mdot_kg_s

    def dv_for_duration(self, t_s: float) -> float:
        m_end = self.mass_kg - self.mdot_kg_s * t_s
        if m_end <= 0.0:
            raise UserError("plan", f"a burn of {t_s:g} s would use more than the stack's mass")
        return self.c_eff_mps * math.log(self.mass_kg / m_end)


#: The longest burn a plan accepts [s] (what replay accepts too): a config whose thrust makes a
#: burn longer than this (1e-300 N passed the config check) is refused here, not crashed on.
MAX_BURN_S = 1e6


@dataclass(frozen=True)
class _BurnLimits:
    """The shortest and the longest burn the translation thrusters can make: their minimum
    on-time, and the propellant in the tanks they draw from."""

    flag: str
    burn: _Burn
    min_s: float
    max_s: float
    propellant_kg: float
    tanks: tuple[str, ...]

    @classmethod
    def of(cls, stack, burn: _Burn, flag: str) -> _BurnLimits:
        thrusters = [stack.vehicle.thrusters[n] for n in stack.translation_thrusters]
        tanks = tuple(sorted({h.tank for h in thrusters}))
        propellant = float(sum(stack.vehicle.tanks[k].propellant_kg for k in tanks))
        return cls(
            flag,
            burn,
            max(h.min_on_time_s for h in thrusters),
            propellant / burn.mdot_kg_s,
            propellant,
            tanks,
        )

    def check(self, t_burn_s: float, slack: float = 1.0) -> None:
        """Refuse a burn longer than the propellant allows or shorter than one pulse (the
        bounds widened by ``slack`` for a burn that is still an estimate)."""
        if not t_burn_s <= self.max_s * slack:
            raise UserError(
                "plan",
                f"expected a burn the {self.propellant_kg:g} kg of propellant in "
                f"{', '.join(self.tanks)} can feed (at most "
                f"{self.burn.dv_for_duration(self.max_s):.4g} m/s, {self.max_s:.0f} s), got a "
                f"burn of {t_burn_s:.4g} s needing {self.burn.mdot_kg_s * t_burn_s:.4g} kg",
                field=self.flag,
            )
        if not t_burn_s <= MAX_BURN_S * slack:
            raise UserError(
                "plan",
                f"expected a burn of at most {MAX_BURN_S:g} s (11.6 days), got "
                f"{t_burn_s:.4g} s: the translation thrusters' {self.burn.along_N:.4g} N "
                "along-track are too weak for this target",
                field=self.flag,
            )
        if not t_burn_s >= self.min_s / slack:
            raise UserError(
                "plan",
                f"expected a burn at least as long as the translation thrusters' "
                f"minimum on-time ({self.min_s:g} s, {self.burn.dv_for_duration(self.min_s):.3g} "
                f"m/s), got a burn of {t_burn_s:.3g} s",
                field=self.flag,
            )


def plan_burn(
    stack_ref: str,
    target: Target,
    *,
    perigee_km: float | None = None,
    apogee_km: float | None = None,
    solar_activity: str | None = None,
    f107_sfu: float | None = None,
    ap: float | None = None,
) -> dict:
    """Plan one reboost burn of a stack; returns the JSON-ready summary. The atmosphere is the
    ``solar_activity`` preset (default: the stack's), with ``f107_sfu`` and/or ``ap`` replacing
    its values when given (thruster_hil.sims.atmosphere.activity)."""
    return plan_stack(
        load_stack(stack_ref),
        target,
        perigee_km=perigee_km,
        apogee_km=apogee_km,
        solar_activity=solar_activity,
        f107_sfu=f107_sfu,
        ap=ap,
    )


def plan_stack(
    stack: Stack,
    target: Target,
    *,
    perigee_km: float | None = None,
    apogee_km: float | None = None,
    solar_activity: str | None = None,
    f107_sfu: float | None = None,
    ap: float | None = None,
    model: StackModel | None = None,
) -> dict:
    """:func:`plan_burn` of a loaded (possibly modified) stack; ``model`` is its
    ``build_stack_model(stack)`` when the caller has it already (built here otherwise)."""
    from thruster_hil.sims import atmosphere, orbit

    if model is None:
        model = build_stack_model(stack)
    station = stack.station
    if perigee_km is None:
        perigee_km, apogee_km = station.perigee_km, station.apogee_km
    if perigee_km > apogee_km:
        raise UserError(
            "plan", f"--perigee-km ({perigee_km:g}) must not exceed --apogee-km ({apogee_km:g})"
        )
    if perigee_km < 150.0 or apogee_km > 2000.0:
        raise UserError(
            "plan",
            "the initial orbit must lie between 150 and 2000 km altitude, "
            f"got {perigee_km:g} x {apogee_km:g} km",
        )
    activity = solar_activity or stack.solar_activity
    try:
        act = atmosphere.activity(activity, f107_sfu, ap)
    except ValueError as exc:
        raise UserError("plan", str(exc)) from None
    a0, e0 = orbit.a_e_from_apsis_altitudes(perigee_km * 1e3, apogee_km * 1e3)
    mass0 = model.mass_kg
    # The nominal translation set's force, fixed in LVLH (perfect attitude hold): the estimate.
    force_H = model.dcm_BH.T @ model.translation_force_B
    burn = _Burn(
        force_H_N=np.ascontiguousarray(force_H, dtype=np.float64),
        along_N=float(model.along_track_thrust_N),
        mdot_kg_s=float(model.translation_mass_flow_kg_s),
        mass_kg=mass0,
    )
    apsis = "apogee"
    flag = TARGET_FLAGS[target.kind]
    limits = _BurnLimits.of(stack, burn, flag)

    # Two-body estimate of the delta-v from vis-viva at the apsis.
    r_apsis = a0 * (1.0 + e0)
    v_apsis = math.sqrt(MU_EARTH * (2.0 / r_apsis - 1.0 / a0))

    def vis_viva_dv(a_new: float) -> float:
        return math.sqrt(MU_EARTH * (2.0 / r_apsis - 1.0 / a_new)) - v_apsis

    if target.kind == "delta_v":
        dv, goal_key, goal = target.value, None, None
    elif target.kind == "burn_duration":
        limits.check(target.value)
        dv, goal_key, goal = burn.dv_for_duration(target.value), "burn_duration_s", target.value
    elif target.kind == "raise_perigee":
        goal_key, goal = "d_perigee_m", target.value * 1e3
        dv = vis_viva_dv(a0 + goal / 2.0)
    elif target.kind == "mean_altitude":
        goal_key, goal = "d_a_m", target.value * 1e3 + R_EARTH - a0
        if goal <= 0.0:
            raise UserError(
                "plan",
                f"--target-mean-altitude-km {target.value:g} is not above the "
                f"current mean altitude {(a0 - R_EARTH) / 1e3:.1f} km: a reboost "
                "only raises the orbit",
            )
        dv = vis_viva_dv(a0 + goal)
    else:  # pragma: no cover - the CLI only builds the kinds above
        raise ValueError(target.kind)

    base = {
        "stack": stack.path.stem,
        "solar_activity": activity,
        "f107_sfu": act.f107_sfu,
        "ap": act.ap,
        "inclination_deg": station.inclination_deg,
        "perigee_km_before": perigee_km,
        "apogee_km_before": apogee_km,
        "burn_centre": apsis,
    }
    # An estimate is refused only far outside what the thrusters can do before it is flown; the
    # flown plan is held to the limits exactly at the end.
    limits.check(burn.duration_for_dv(dv), slack=1.0 if target.kind == "delta_v" else 2.0)
    fixed_ignition = target.value if target.kind == "burn_duration" else None
    t_ign = fixed_ignition if fixed_ignition is not None else burn.duration_for_dv(dv)
    flight = _Flight(model, base, limits, flag)
    got = flight.fly(dv, t_ign)
    if goal_key is not None:
        prev_dv, prev_got = 0.0, 0.0
        for _ in range(CORRECTIONS):
            value = got[goal_key]
            if _met(goal_key, value, goal, model.control_period_s, 1e-4):
                break
            slope = (value - prev_got) / (dv - prev_dv) if dv != prev_dv else 0.0
            if not math.isfinite(slope) or slope <= 0.0:
                break  # the change stopped growing with the delta-v: refused below
            prev_dv, prev_got = dv, value
            new_dv = dv + (goal - value) / slope
            if not new_dv > 0.0:
                break
            if fixed_ignition is None:  # the next ignition: this flight's duration, scaled
                t_ign = got["burn_duration_s"] * new_dv / dv
            limits.check(burn.duration_for_dv(new_dv), slack=2.0)
            dv = new_dv
            got = flight.fly(dv, t_ign)
        if not _met(goal_key, got[goal_key], goal, model.control_period_s, GOAL_TOLERANCE):
            # Never hand out a plan that misses its target: say so instead.
            unit, scale = ("s", 1.0) if goal_key == "burn_duration_s" else ("km", 1e-3)
            raise UserError(
                "plan",
                f"expected a target one burn centred on {apsis} reaches, got "
                f"{got[goal_key] * scale:.4g} {unit} of the {goal * scale:.4g} "
                f"{unit} asked for after {CORRECTIONS} corrections (at {dv:.4g} m/s, "
                f"a {got['burn_duration_s']:.0f} s burn)",
                field=flag,
            )
    if fixed_ignition is None:
        # Ignition half the planned duration before the apsis: plan the duration flown from it.
        for _ in range(IGNITION_FLIGHTS):
            if got["burn_duration_s"] == t_ign:
                break
            t_ign = got["burn_duration_s"]
            got = flight.fly(dv, t_ign)
    limits.check(t_ign)

    force_total = float(np.linalg.norm(burn.force_H_N))
    thrust_sum = float(np.sum(model.thrust_N[model.translation_idx]))
    return {
        "stack": stack.path.stem,
        "stack_name": stack.name,
        "vehicle": stack.vehicle.name,
        "port": stack.port,
        "solar_activity": activity,
        "f107_sfu": act.f107_sfu,
        "ap": act.ap,
        "delta_v_mps": dv,
        "burn_duration_s": t_ign,
        "propellant_kg": float(got["propellant_kg"]),
        "stack_mass_kg": mass0,
        "inclination_deg": station.inclination_deg,
        "perigee_km_before": perigee_km,
        "apogee_km_before": apogee_km,
        "perigee_km_after": float(got["perigee_km_after"]),
        "apogee_km_after": float(got["apogee_km_after"]),
        "mean_altitude_change_km": float(got["mean_altitude_change_km"]),
        "burn_centre": apsis,
        "burn_start_s_before_centre": t_ign / 2.0,
        "along_track_thrust_N": burn.along_N,
        "thrust_sum_N": thrust_sum,
        "cant_loss_pct": 100.0 * (1.0 - burn.along_N / thrust_sum),
        "off_axis_thrust_N": math.sqrt(max(force_total**2 - burn.along_N**2, 0.0)),
        "effective_isp_s": burn.c_eff_mps / G0,
        "translation_thrusters": list(stack.translation_thrusters),
        "elements": "mean (orbit-averaged); change = burn minus no-burn propagation",
        "model": MODEL,
        "flown_burn_duration_s": got["burn_duration_s"],
        "tank_used_kg": got["tank_used_kg"],
        "true_delta_v_mps": float(got["true_delta_v_mps"]),
    }


def _met(key: str, value: float, goal: float, period_s: float, rel: float) -> bool:
    """A flown value meets its goal: a duration to within one control cycle (it is flown in
    whole cycles), an orbit change to ``rel`` of the goal."""
    if key == "burn_duration_s":
        return abs(value - goal) <= period_s
    return abs(value - goal) <= rel * abs(goal)


class _Flight:
    """Flies the plan's burn as ``run --unit sim`` does and returns what the run would report
    (its summary, with the mean-element changes in metres)."""

    def __init__(self, model, base: dict, limits: _BurnLimits, flag: str):
        self.model, self.base, self.limits, self.flag = model, base, limits, flag

    def fly(self, dv_mps: float, t_ignition_s: float) -> dict:
        from thruster_hil.closedloop.runner import run_burn

        plan = dict(self.base, delta_v_mps=dv_mps, burn_duration_s=t_ignition_s)
        s = run_burn(self.model, plan).summary
        if not s["completed"]:
            raise UserError(
                "plan",
                f"expected a burn the closed loop completes, got "
                f"{s['achieved_delta_v_mps']:.4g} of {dv_mps:.4g} m/s after "
                f"{s['burn_duration_s']:.0f} s (tanks {', '.join(self.limits.tanks)}: "
                f"{self.limits.propellant_kg:g} kg)",
                field=self.flag,
            )
        s["d_a_m"] = 1e3 * s["mean_altitude_change_km"]
        s["d_perigee_m"] = 1e3 * (s["perigee_km_after"] - s["perigee_km_before"])
        return s


def format_plan(p: dict) -> str:
    """The plan as a readable table."""
    rows = [
        ("stack", f"{p['stack']}: {p['stack_name']} ({p['vehicle']} at {p['port']})"),
        ("translation thrusters", ", ".join(p["translation_thrusters"])),
        ("stack mass", f"{p['stack_mass_kg']:,.0f} kg"),
        (
            "along-track thrust",
            f"{p['along_track_thrust_N']:.1f} N of {p['thrust_sum_N']:.1f} N "
            f"(cant loss {p['cant_loss_pct']:.2f} %)",
        ),
        ("effective Isp", f"{p['effective_isp_s']:.1f} s"),
        ("delta-v", f"{p['delta_v_mps']:.4f} m/s"),
        ("burn duration", f"{p['burn_duration_s']:.1f} s"),
        (
            "burn centred on",
            f"{p['burn_centre']} (ignition {p['burn_start_s_before_centre']:.1f} s "
            f"before {p['burn_centre']})",
        ),
        (
            "propellant",
            f"{p['propellant_kg']:.2f} kg ("
            + ", ".join(f"{k} {v:.2f} kg" for k, v in p["tank_used_kg"].items())
            + ")",
        ),
        ("mean perigee", f"{p['perigee_km_before']:.3f} -> {p['perigee_km_after']:.3f} km"),
        ("mean apogee", f"{p['apogee_km_before']:.3f} -> {p['apogee_km_after']:.3f} km"),
        ("mean altitude change", f"{p['mean_altitude_change_km']:+.3f} km"),
        ("atmosphere", _atmosphere_line(p)),
        ("flown", p["model"]),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def _atmosphere_line(p: dict) -> str:
    from thruster_hil.sims import atmosphere

    return atmosphere.plan_activity(p).describe()
