"""Burn planning without hardware: ``thruster-hil plan``.

The burn duration comes from the rocket equation on the translation thrusters' along-track thrust
(cant losses included: only the along-track component of each thrust counts, while every newton
of thrust costs propellant). The orbit after the burn comes from propagating the finite burn
through the plant (two-body + J2 + drag, RK4) and, over the same time, the same orbit without the
burn: J2 swings the osculating apsides by kilometres within an orbit, so what the burn changed is
reported as the difference of orbit-averaged (mean) elements between the two propagations, added
to the mean perigee and apogee the operator started from.

Each burn is centred on an apsis: on apogee by default, which raises the perigee and so
circularises the orbit against drag decay (the usual ISS reboost).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from sims import atmosphere, orbit
from sims.constants import G0, MU_EARTH, R_EARTH
from thruster_hil.config import build_stack_model, load_stack
from thruster_hil.errors import UserError

#: Outer propagation step [s]; RK4 sub-steps per step. 1 s keeps the burn edges exact (they are
#: split inside the step anyway) and costs a few ms per propagated orbit.
STEP_S = 1.0
N_SUB = 1
#: Coast before the burn starts [s], so the burn edges never sit on the first sample.
LEAD_S = 60.0
#: Secant corrections of the delta-v so the propagated change, not the two-body estimate,
#: meets an orbit target.
CORRECTIONS = 3
#: How far the propagated change may stay from an orbit target after the corrections.
GOAL_TOLERANCE = 0.01
#: The option each kind of target comes from (what an error about the target names).
TARGET_FLAGS = {"delta_v": "--delta-v", "raise_perigee": "--raise-perigee-km",
                "mean_altitude": "--target-mean-altitude-km", "burn_duration": "--burn-duration"}


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
        return cls(flag, burn, max(h.min_on_time_s for h in thrusters),
                   propellant / burn.mdot_kg_s, propellant, tanks)

    def check(self, t_burn_s: float, slack: float = 1.0) -> None:
        """Refuse a burn longer than the propellant allows or shorter than one pulse (the
        bounds widened by ``slack`` for a burn that is still an estimate)."""
        if not t_burn_s <= self.max_s * slack:
            raise UserError(
                "plan", f"expected a burn the {self.propellant_kg:g} kg of propellant in "
                f"{', '.join(self.tanks)} can feed (at most "
                f"{self.burn.dv_for_duration(self.max_s):.4g} m/s, {self.max_s:.0f} s), got a "
                f"burn of {t_burn_s:.4g} s needing {self.burn.mdot_kg_s * t_burn_s:.4g} kg",
                field=self.flag)
        if not t_burn_s <= MAX_BURN_S * slack:
            raise UserError(
                "plan", f"expected a burn of at most {MAX_BURN_S:g} s (11.6 days), got "
                f"{t_burn_s:.4g} s: the translation thrusters' {self.burn.along_N:.4g} N "
                "along-track are too weak for this target", field=self.flag)
        if not t_burn_s >= self.min_s / slack:
            raise UserError(
                "plan", f"expected a burn at least as long as the translation thrusters' "
                f"minimum on-time ({self.min_s:g} s, {self.burn.dv_for_duration(self.min_s):.3g} "
                f"m/s), got a burn of {t_burn_s:.3g} s", field=self.flag)


def _initial_state(a_m: float, e: float, incl_rad: float, mass_kg: float,
                   seconds_to_apsis: float, apsis: str) -> np.ndarray:
    """Orbit state [r_BN_N, v_BN_N, m] that reaches the chosen apsis after the given time."""
    r, v = orbit.rv_before_apsis(a_m, e, incl_rad, seconds_to_apsis, apsis)
    return np.concatenate([r, v, [mass_kg]])


def _propagate_pair(y0: np.ndarray, burn: _Burn, t_burn_s: float, cd_area_m2: float,
                    table: tuple[np.ndarray, np.ndarray], period_s: float):
    """The burn and its no-burn twin to the end of the burn, then their mean-element change."""
    n_before = int(math.ceil((LEAD_S + t_burn_s) / STEP_S)) + 1
    alt, log_rho = table
    out_burn = np.empty((n_before + 1, 7))
    out_coast = np.empty((n_before + 1, 7))
    orbit.propagate(y0, STEP_S, n_before, N_SUB, LEAD_S, LEAD_S + t_burn_s, burn.force_H_N,
                    burn.mdot_kg_s, cd_area_m2, 1.0, alt, log_rho, out_burn)
    orbit.propagate(y0, STEP_S, n_before, N_SUB, 0.0, 0.0, np.zeros(3), 0.0, cd_area_m2, 1.0,
                    alt, log_rho, out_coast)
    change = orbit.mean_change(out_burn[n_before], out_coast[n_before], period_s, cd_area_m2,
                               table, STEP_S)
    change["propellant_kg"] = y0[6] - out_burn[n_before, 6]
    return change


def plan_burn(stack_ref: str, target: Target, *, perigee_km: float | None = None,
              apogee_km: float | None = None, solar_activity: str | None = None,
              f107_sfu: float | None = None, ap: float | None = None) -> dict:
    """Plan one reboost burn of a stack; returns the JSON-ready summary. The atmosphere is the
    ``solar_activity`` preset (default: the stack's), with ``f107_sfu`` and/or ``ap`` replacing
    its values when given (sims.atmosphere.activity)."""
    stack = load_stack(stack_ref)
    model = build_stack_model(stack)
    station = stack.station
    if perigee_km is None:
        perigee_km, apogee_km = station.perigee_km, station.apogee_km
    if perigee_km > apogee_km:
        raise UserError("plan", f"--perigee-km ({perigee_km:g}) must not exceed --apogee-km "
                        f"({apogee_km:g})")
    if perigee_km < 150.0 or apogee_km > 2000.0:
        raise UserError("plan", "the initial orbit must lie between 150 and 2000 km altitude, "
                        f"got {perigee_km:g} x {apogee_km:g} km")
    try:
        act = atmosphere.activity(solar_activity or stack.solar_activity, f107_sfu, ap)
    except ValueError as exc:
        raise UserError("plan", str(exc)) from None
    table = atmosphere.density_table(act)
    a0, e0 = orbit.a_e_from_apsis_altitudes(perigee_km * 1e3, apogee_km * 1e3)
    incl = math.radians(station.inclination_deg)
    period = orbit.period_s(a0, MU_EARTH)
    mass0 = model.mass_kg
    # Perfect attitude hold: the translation set's force is fixed in LVLH.
    force_H = model.dcm_BH.T @ model.translation_force_B
    burn = _Burn(force_H_N=np.ascontiguousarray(force_H, dtype=np.float64),
                 along_N=float(model.along_track_thrust_N),
                 mdot_kg_s=float(model.translation_mass_flow_kg_s), mass_kg=mass0)
    cd_area = model.drag_coefficient * model.drag_area_m2
    apsis = "apogee"
    limits = _BurnLimits.of(stack, burn, TARGET_FLAGS[target.kind])

    # Two-body estimate of the delta-v from vis-viva at the apsis, then secant corrections on
    # the propagated mean-element change for orbit targets.
    r_apsis = a0 * (1.0 + e0)
    v_apsis = math.sqrt(MU_EARTH * (2.0 / r_apsis - 1.0 / a0))

    def vis_viva_dv(a_new: float) -> float:
        return math.sqrt(MU_EARTH * (2.0 / r_apsis - 1.0 / a_new)) - v_apsis

    if target.kind == "delta_v":
        dv, goal_key, goal = target.value, None, None
    elif target.kind == "burn_duration":
        limits.check(target.value)
        dv, goal_key, goal = burn.dv_for_duration(target.value), None, None
    elif target.kind == "raise_perigee":
        goal_key, goal = "d_perigee_m", target.value * 1e3
        dv = vis_viva_dv(a0 + goal / 2.0)
    elif target.kind == "mean_altitude":
        goal_key, goal = "d_a_m", target.value * 1e3 + R_EARTH - a0
        if goal <= 0.0:
            raise UserError("plan", f"--target-mean-altitude-km {target.value:g} is not above the "
                            f"current mean altitude {(a0 - R_EARTH) / 1e3:.1f} km: a reboost "
                            "only raises the orbit")
        dv = vis_viva_dv(a0 + goal)
    else:  # pragma: no cover - the CLI only builds the kinds above
        raise ValueError(target.kind)

    def run(dv_mps: float):
        t_burn = burn.duration_for_dv(dv_mps)
        # An orbit target's delta-v is an estimate until the corrections: only a burn far
        # outside what the thrusters can do is refused before it is propagated.
        limits.check(t_burn, slack=1.0 if goal_key is None else 2.0)
        y0 = _initial_state(a0, e0, incl, mass0, LEAD_S + t_burn / 2.0, apsis)
        return t_burn, _propagate_pair(y0, burn, t_burn, cd_area, table, period)

    t_burn, change = run(dv)
    if goal_key is not None:
        prev_dv, prev_got = 0.0, 0.0
        for _ in range(CORRECTIONS):
            got = change[goal_key]
            if abs(got - goal) <= 1e-4 * abs(goal):
                break
            slope = (got - prev_got) / (dv - prev_dv) if dv != prev_dv else 0.0
            if not math.isfinite(slope) or slope <= 0.0:
                break  # the change stopped growing with the delta-v: refused below
            prev_dv, prev_got = dv, got
            dv = dv + (goal - got) / slope
            t_burn, change = run(dv)
        miss = change[goal_key] - goal
        if not abs(miss) <= GOAL_TOLERANCE * abs(goal):
            # Never hand out a plan that misses its target: say so instead.
            raise UserError("plan", f"expected a target one burn centred on {apsis} reaches, got "
                            f"{change[goal_key] / 1e3:.4g} km of the {goal / 1e3:.4g} km asked "
                            f"for after {CORRECTIONS} corrections (at {dv:.4g} m/s, a "
                            f"{t_burn:.0f} s burn)", field=TARGET_FLAGS[target.kind])
        limits.check(t_burn)

    force_total = float(np.linalg.norm(burn.force_H_N))
    thrust_sum = float(np.sum(model.thrust_N[model.translation_idx]))
    return {
        "stack": stack.path.stem,
        "stack_name": stack.name,
        "vehicle": stack.vehicle.name,
        "port": stack.port,
        "solar_activity": solar_activity or stack.solar_activity,
        "f107_sfu": act.f107_sfu,
        "ap": act.ap,
        "delta_v_mps": dv,
        "burn_duration_s": t_burn,
        "propellant_kg": burn.mass_kg * (1.0 - math.exp(-dv / burn.c_eff_mps)),
        "stack_mass_kg": mass0,
        "inclination_deg": station.inclination_deg,
        "perigee_km_before": perigee_km,
        "apogee_km_before": apogee_km,
        "perigee_km_after": perigee_km + change["d_perigee_m"] / 1e3,
        "apogee_km_after": apogee_km + change["d_apogee_m"] / 1e3,
        "mean_altitude_change_km": change["d_a_m"] / 1e3,
        "burn_centre": apsis,
        "burn_start_s_before_centre": t_burn / 2.0,
        "along_track_thrust_N": burn.along_N,
        "thrust_sum_N": thrust_sum,
        "cant_loss_pct": 100.0 * (1.0 - burn.along_N / thrust_sum),
        "off_axis_thrust_N": math.sqrt(max(force_total**2 - burn.along_N**2, 0.0)),
        "effective_isp_s": burn.c_eff_mps / G0,
        "translation_thrusters": list(stack.translation_thrusters),
        "elements": "mean (orbit-averaged); change = burn minus no-burn propagation",
    }


def format_plan(p: dict) -> str:
    """The plan as a readable table."""
    rows = [
        ("stack", f"{p['stack']}: {p['stack_name']} ({p['vehicle']} at {p['port']})"),
        ("translation thrusters", ", ".join(p["translation_thrusters"])),
        ("stack mass", f"{p['stack_mass_kg']:,.0f} kg"),
        ("along-track thrust", f"{p['along_track_thrust_N']:.1f} N of {p['thrust_sum_N']:.1f} N "
                               f"(cant loss {p['cant_loss_pct']:.2f} %)"),
        ("effective Isp", f"{p['effective_isp_s']:.1f} s"),
        ("delta-v", f"{p['delta_v_mps']:.4f} m/s"),
        ("burn duration", f"{p['burn_duration_s']:.1f} s"),
        ("burn centred on", f"{p['burn_centre']} (ignition {p['burn_start_s_before_centre']:.1f} s "
                            f"before {p['burn_centre']})"),
        ("propellant", f"{p['propellant_kg']:.2f} kg"),
        ("mean perigee", f"{p['perigee_km_before']:.3f} -> {p['perigee_km_after']:.3f} km"),
        ("mean apogee", f"{p['apogee_km_before']:.3f} -> {p['apogee_km_after']:.3f} km"),
        ("mean altitude change", f"{p['mean_altitude_change_km']:+.3f} km"),
        ("atmosphere", atmosphere.plan_activity(p).describe()),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)

