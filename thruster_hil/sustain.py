"""Could a visiting vehicle keep the station up? ``thruster-hil sustain``.

A year (or any span) of drag decay and the reboosts that hold the station's mean altitude above a
floor, flown by one stack's real burn capability:

* Decay between burns: the orbit-averaged (mean-element) drag decay of sims/decay.py, with the
  stack's ballistic coefficient (Cd A / m, constant: the stack's mass with a full kit) and the
  NRLMSIS 2.1 atmosphere at the chosen F10.7 and Ap (constant over the span). It agrees with the
  full two-body + J2 + drag propagation to ~1.2 % over three days (tests/test_decay.py).
* A reboost when the mean altitude reaches a trigger just above the floor: the trigger leaves
  room for the decay during the wait for apogee (one orbit at most), the burn and one coast step,
  so the floor is never crossed. The burn is ``thruster-hil plan``'s: a burn centred on apogee
  that raises the mean altitude back to the ceiling (propagated, secant-corrected), with the
  stack's translation thrusters, Isp and mass. A burn the kit's propellant cannot feed is cut to
  what one kit's propellant can (a burn of the whole kit).
* Kits: each burn draws on one kit (the translation thrusters' tanks: Dragon's trunk boost kit,
  Cygnus's or Progress's reboost propellant). A burn that needs more than the current kit has
  left goes on a fresh kit; what the old one still held is reported as stranded.

:func:`decay_validation` compares the 30-day decay at the three activity presets with the
published ISS decay rates (../shared/research/reboost_calibration.md, Decay section) for
docs/atmosphere.md and ``thruster-hil validate``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from thruster_hil.config import build_stack_model, load_stack
from thruster_hil.core.constants import DAY_S, R_EARTH
from thruster_hil.core.errors import UserError
from thruster_hil.plan import Target, plan_stack
from thruster_hil.sims import atmosphere, decay, orbit

#: Coast step of the mean-element integration [s]: decay changes over days, RK4 at 1 h is
#: exact to a micrometre over 100 days at 250 sfu / Ap 45 (against 15-minute steps).
STEP_S = 3600.0
#: The default floor below the ceiling [km]: ISS reboosts raise the mean altitude by 1.5-5 km
#: (../shared/research/reboost_calibration.md, C2-C6).
DEFAULT_BAND_KM = 5.0
#: Accepted floor / ceiling [km]: below 200 km the station re-enters within days; the table
#: and the plan stop at 1000 / 2000 km.
MIN_FLOOR_KM = 200.0
MAX_CEILING_KM = 1000.0
MAX_DAYS = 3650.0
#: A burn cut to a whole kit uses this fraction of the kit (the plan refuses a burn longer
#: than the propellant allows, to the second).
KIT_CUT = 0.995


@dataclass(frozen=True)
class _Setup:
    stack: object
    model: object
    act: atmosphere.SolarActivity
    table: tuple[np.ndarray, np.ndarray]
    bc_m2_kg: float
    incl_rad: float
    half_spread_km: float  # half the station's mean apogee - perigee, kept through each burn
    kit_kg: float
    mdot_kg_s: float
    kit_tanks: tuple[str, ...]  # the translation thrusters' tanks: what a kit is

    def kit_draw(self, plan: dict) -> float:
        """What a planned burn draws from the kit [kg] (the translation tanks; the attitude
        thrusters' tanks are not the kit)."""
        return float(sum(plan["tank_used_kg"].get(t, 0.0) for t in self.kit_tanks))


def _setup(
    stack_ref: str, solar_activity: str | None, f107_sfu: float | None, ap: float | None
) -> _Setup:
    stack = load_stack(stack_ref)
    model = build_stack_model(stack)
    try:
        act = atmosphere.activity(solar_activity or stack.solar_activity, f107_sfu, ap)
    except ValueError as exc:
        raise UserError("sustain", str(exc)) from None
    tanks = {stack.vehicle.thrusters[n].tank for n in stack.translation_thrusters}
    kit = float(sum(stack.vehicle.tanks[k].propellant_kg for k in tanks))
    st = stack.station
    return _Setup(
        stack,
        model,
        act,
        atmosphere.density_table(act),
        model.drag_coefficient * model.drag_area_m2 / model.mass_kg,
        math.radians(st.inclination_deg),
        0.5 * (st.apogee_km - st.perigee_km),
        kit,
        float(model.translation_mass_flow_kg_s),
        tuple(sorted(tanks)),
    )


def _rate_m_s(s: _Setup, alt_km: float) -> float:
    """Mean-altitude decay rate [m/s] (positive) at a mean altitude."""
    return -decay.mean_decay_rate(R_EARTH + alt_km * 1e3, s.incl_rad, s.bc_m2_kg, *s.table)


def _plan(s: _Setup, from_km: float, ceiling_km: float) -> tuple[dict, bool]:
    """The reboost from a mean altitude back to the ceiling; or, if one kit cannot feed that, a
    burn of the whole kit. Returns (the plan, whether it is the whole-kit burn)."""
    kw = {
        "perigee_km": from_km - s.half_spread_km,
        "apogee_km": from_km + s.half_spread_km,
        "solar_activity": s.act.name if s.act.name != "custom" else None,
        "f107_sfu": s.act.f107_sfu,
        "ap": s.act.ap,
    }
    try:
        to_ceiling = plan_stack(s.stack, Target("mean_altitude", ceiling_km), model=s.model, **kw)
        if s.kit_draw(to_ceiling) <= KIT_CUT * s.kit_kg:
            return to_ceiling, False
    except UserError:
        pass  # more than the tanks hold, or a raise one burn cannot reach: a whole kit then
    whole_kit = Target("burn_duration", KIT_CUT * s.kit_kg / s.mdot_kg_s)
    return plan_stack(s.stack, whole_kit, model=s.model, **kw), True


def sustain(
    stack_ref: str,
    days: float = 365.0,
    *,
    floor_km: float | None = None,
    ceiling_km: float | None = None,
    solar_activity: str | None = None,
    f107_sfu: float | None = None,
    ap: float | None = None,
) -> dict:
    """Schedule the reboosts that keep the mean altitude above ``floor_km`` for ``days``.

    Starts at the ceiling (default: the station's mean altitude from its config; floor default
    ``DEFAULT_BAND_KM`` below it). Returns the JSON-ready result; ``result["timeline"]`` holds
    (day, mean altitude km) samples for the plot and is left out of the printed JSON.
    """
    s = _setup(stack_ref, solar_activity, f107_sfu, ap)
    st = s.stack.station
    if ceiling_km is None:
        ceiling_km = 0.5 * (st.perigee_km + st.apogee_km)
    if floor_km is None:
        floor_km = ceiling_km - DEFAULT_BAND_KM
    if not 0.0 < days <= MAX_DAYS:
        raise UserError(
            "sustain", f"expected 0 < days <= {MAX_DAYS:g}, got {days:g}", field="--days"
        )
    if not MIN_FLOOR_KM <= floor_km < ceiling_km <= MAX_CEILING_KM:
        raise UserError(
            "sustain",
            f"expected {MIN_FLOOR_KM:g} <= floor < ceiling <= "
            f"{MAX_CEILING_KM:g} km, got floor {floor_km:g} km and ceiling "
            f"{ceiling_km:g} km",
            field="--floor-km",
        )
    if ceiling_km - s.half_spread_km < 150.0:  # plan's lowest perigee
        raise UserError(
            "sustain",
            f"the ceiling {ceiling_km:g} km is too low for the station's orbit",
            field="--ceiling-km",
        )

    period_s = orbit.period_s(R_EARTH + floor_km * 1e3)
    # The trigger: the floor plus the decay while waiting for apogee (<= one orbit), during the
    # half of the burn before apogee and over one coast step (the crossing is found per step).
    burn, _ = _plan(s, floor_km, ceiling_km)
    wait_s = period_s + 0.5 * burn["burn_duration_s"]
    trigger_km = floor_km + _rate_m_s(s, floor_km) * 1.05 * (wait_s + STEP_S) / 1e3
    if trigger_km >= ceiling_km:
        raise UserError(
            "sustain",
            f"the band {floor_km:g}-{ceiling_km:g} km is narrower than "
            f"the decay during one reboost ({(trigger_km - floor_km) * 1e3:.0f} m)",
            field="--floor-km",
        )
    burn, whole_kit = _plan(s, trigger_km, ceiling_km)
    gain_km = burn["mean_altitude_change_km"]
    if not gain_km > 0.0:
        raise UserError("sustain", f"{s.stack.name} cannot raise the orbit at {trigger_km:.1f} km")

    total_s = days * DAY_S
    n_total = int(math.ceil(total_s / STEP_S))
    buf = np.empty(n_total + 1)
    t_s, a_m = [0.0], [R_EARTH + ceiling_km * 1e3]
    reboosts: list[dict] = []
    kit_left, kits, stranded = s.kit_kg, 1, 0.0
    a_trigger = R_EARTH + trigger_km * 1e3
    wait = np.empty(2)
    while True:
        steps_left = int((total_s - t_s[-1]) / STEP_S)
        if steps_left <= 0:
            if total_s - t_s[-1] > 1e-6:  # the last part-step to the end of the span
                decay.coast(
                    a_m[-1], s.incl_rad, s.bc_m2_kg, *s.table, total_s - t_s[-1], -1.0, wait
                )
                t_s.append(total_s)
                a_m.append(wait[1])
            break
        n = decay.coast(
            a_m[-1], s.incl_rad, s.bc_m2_kg, *s.table, STEP_S, a_trigger, buf[: steps_left + 1]
        )
        t0 = t_s[-1]
        t_s.extend(t0 + STEP_S * np.arange(1, n))
        a_m.extend(buf[1:n])
        if a_m[-1] > a_trigger:
            continue  # the span ends before the next reboost: its last part-step
        # Wait for apogee (worst case: a whole orbit) and burn: the decay goes on meanwhile.
        decay.coast(a_m[-1], s.incl_rad, s.bc_m2_kg, *s.table, wait_s, -1.0, wait)
        t_burn = t_s[-1] + wait_s
        if t_burn > total_s:  # the span ends while waiting: coast to its end
            decay.coast(a_m[-1], s.incl_rad, s.bc_m2_kg, *s.table, total_s - t_s[-1], -1.0, wait)
            t_s.append(total_s)
            a_m.append(wait[1])
            break
        if s.kit_draw(burn) > kit_left + 1e-9:
            stranded += kit_left
            kit_left, kits = s.kit_kg, kits + 1
        kit_left -= s.kit_draw(burn)
        before_km = (wait[1] - R_EARTH) / 1e3
        t_s += [t_burn, t_burn]
        a_m += [wait[1], wait[1] + gain_km * 1e3]
        reboosts.append(
            {
                "day": t_burn / DAY_S,
                "mean_altitude_before_km": before_km,
                "mean_altitude_after_km": before_km + gain_km,
                "kit": kits,
            }
        )

    alt_km = (np.asarray(a_m) - R_EARTH) / 1e3
    used = len(reboosts) * burn["propellant_kg"]
    per_year = 365.25 / days
    return {
        "stack": burn["stack"],
        "stack_name": burn["stack_name"],
        "vehicle": burn["vehicle"],
        "days": days,
        "solar_activity": s.act.name,
        "f107_sfu": s.act.f107_sfu,
        "ap": s.act.ap,
        "atmosphere": s.act.describe(),
        "floor_km": floor_km,
        "ceiling_km": ceiling_km,
        "trigger_km": trigger_km,
        "decay_m_per_day_at_ceiling": _rate_m_s(s, ceiling_km) * DAY_S,
        "decay_m_per_day_at_floor": _rate_m_s(s, floor_km) * DAY_S,
        "stack_mass_kg": s.model.mass_kg,
        "ballistic_coefficient_m2_kg": s.bc_m2_kg,
        "burn": {
            **{
                k: burn[k]
                for k in (
                    "delta_v_mps",
                    "burn_duration_s",
                    "propellant_kg",
                    "mean_altitude_change_km",
                    "tank_used_kg",
                )
            },
            "kit_propellant_kg": s.kit_draw(burn),
        },
        "burn_is_whole_kit": whole_kit,
        "burns": len(reboosts),
        "burns_per_year": len(reboosts) * per_year,
        "propellant_kg": used,
        "propellant_per_year_kg": used * per_year,
        "kit_propellant_kg": s.kit_kg,
        "kits": kits if reboosts else 0,
        "kits_per_year": len(reboosts) * s.kit_draw(burn) / s.kit_kg * per_year,
        "stranded_propellant_kg": stranded,
        "min_mean_altitude_km": float(np.min(alt_km)),
        "end_mean_altitude_km": float(alt_km[-1]),
        "reboosts": reboosts,
        "model": "mean-element drag decay (sims/decay.py) between burns planned as 'thruster-hil "
        "plan' plans them (finite burn centred on apogee, propagated)",
        "timeline": {
            "day": (np.asarray(t_s) / DAY_S).tolist(),
            "mean_altitude_km": alt_km.tolist(),
        },
    }


def format_sustain(r: dict) -> str:
    """The result as a readable table."""
    b = r["burn"]
    rows = [
        ("stack", f"{r['stack']}: {r['stack_name']} ({r['vehicle']})"),
        ("atmosphere", r["atmosphere"]),
        ("span", f"{r['days']:g} days"),
        (
            "band",
            f"mean altitude {r['floor_km']:.1f} (floor) to {r['ceiling_km']:.1f} km "
            f"(ceiling); reboost at {r['trigger_km']:.2f} km",
        ),
        (
            "decay",
            f"{r['decay_m_per_day_at_ceiling']:.0f} m/day at the ceiling, "
            f"{r['decay_m_per_day_at_floor']:.0f} m/day at the floor",
        ),
        (
            "each reboost",
            f"{b['delta_v_mps']:.3f} m/s, {b['burn_duration_s']:.0f} s, "
            f"{b['propellant_kg']:.1f} kg, +{b['mean_altitude_change_km']:.2f} km"
            + (" (a whole kit)" if r["burn_is_whole_kit"] else ""),
        ),
        ("reboosts", f"{r['burns']} ({r['burns_per_year']:.1f} per year)"),
        (
            "propellant",
            f"{r['propellant_kg']:.0f} kg ({r['propellant_per_year_kg']:.0f} kg per year)",
        ),
        (
            "kits",
            f"{r['kits']} of {r['kit_propellant_kg']:.0f} kg "
            f"({r['kits_per_year']:.2f} kits' propellant per year; "
            f"{r['stranded_propellant_kg']:.0f} kg left in replaced kits)",
        ),
        ("lowest mean altitude", f"{r['min_mean_altitude_km']:.3f} km"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def plot_sustain(r: dict, path: str | Path) -> Path:
    """Mean altitude over the span with the floor, the ceiling and each reboost, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(path)
    fig, ax = plt.subplots(figsize=(10, 4.5), dpi=100, constrained_layout=True)
    tl = r["timeline"]
    ax.plot(tl["day"], tl["mean_altitude_km"], color="tab:blue", lw=1.2, label="mean altitude")
    ax.axhline(r["floor_km"], color="tab:red", ls="--", lw=1, label="floor")
    ax.axhline(r["ceiling_km"], color="tab:green", ls="--", lw=1, label="ceiling")
    if r["reboosts"]:
        ax.plot(
            [x["day"] for x in r["reboosts"]],
            [x["mean_altitude_after_km"] for x in r["reboosts"]],
            "^",
            color="tab:orange",
            ms=5,
            label=f"reboost ({r['burns']})",
        )
    ax.set_xlabel("day")
    ax.set_ylabel("mean altitude [km]")
    ax.set_title(
        f"{r['stack_name']}: {r['burns']} reboosts, {r['propellant_kg']:.0f} kg, "
        f"{r['kits_per_year']:.2f} kits/year; {r['atmosphere']}",
        fontsize=9,
    )
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8, framealpha=0.9)
    try:
        fig.savefig(out)
    except OSError as exc:
        raise UserError(
            "sustain", f"cannot write {out}: {exc.strerror or exc}", field="--plot"
        ) from None
    finally:
        plt.close(fig)
    return out


#: Published ISS decay rates (../shared/research/reboost_calibration.md, Decay section):
#: (preset, mean altitude [km] the rate was reported at, low, high [m/day], source).
PUBLISHED_DECAY = (
    ("low", 345.0, 80.0, 120.0, "~100 m/day at 340-350 km at the 2008 solar minimum (ESA)"),
    (
        "moderate",
        415.0,
        50.0,
        150.0,
        "50-100 m/day (ESA, 2011); ~150 m/day average (Russian MCC, 2004, ~360-400 km); "
        "~70 m/day at ~410 km (2023)",
    ),
    (
        "high",
        417.0,
        100.0,
        300.0,
        "~125 m/day at ~417 km between Progress MS-24's reboosts of 2023-10-19 and 2023-11-10, "
        "near the cycle-25 maximum; ~300 m/day in magnetic storms (Russian MCC, 2004)",
    ),
)


def decay_validation(days: float = 30.0, stack_ref: str = "dragon-boost-kit") -> list[dict]:
    """The 30-day decay at the low, moderate and high presets against the published rates.

    One row per preset: activity, F10.7 [sfu], Ap, the altitude the published rate refers to
    [km], the predicted mean decay over ``days`` from there [m/day] (mean-element model with the
    stack's ballistic coefficient), the published range [m/day], whether the prediction lies in
    it, and the source. Takes ~0.1 s after numba's cache is warm.
    """
    rows = []
    for name, alt_km, lo, hi, source in PUBLISHED_DECAY:
        s = _setup(stack_ref, name, None, None)
        n = int(math.ceil(days * DAY_S / STEP_S))
        buf = np.empty(n + 1)
        a0 = R_EARTH + alt_km * 1e3
        decay.coast(a0, s.incl_rad, s.bc_m2_kg, *s.table, STEP_S, -1.0, buf)
        m_per_day = (a0 - buf[n]) / (n * STEP_S / DAY_S)
        rows.append(
            {
                "activity": name,
                "f107_sfu": s.act.f107_sfu,
                "ap": s.act.ap,
                "altitude_km": alt_km,
                "predicted_m_per_day": m_per_day,
                "published_m_per_day": (lo, hi),
                "within": lo <= m_per_day <= hi,
                "source": source,
            }
        )
    return rows


def decay_validation_markdown(rows: list[dict]) -> str:
    """The rows of :func:`decay_validation` as a Markdown table."""
    out = [
        "| activity | F10.7 [sfu] | Ap | mean altitude [km] | predicted, 30-day mean "
        "[m/day] | published [m/day] | within | source |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lo, hi = r["published_m_per_day"]
        out.append(
            f"| {r['activity']} | {r['f107_sfu']:g} | {r['ap']:g} | "
            f"{r['altitude_km']:g} | {r['predicted_m_per_day']:.0f} | {lo:g}-{hi:g} | "
            f"{'yes' if r['within'] else 'no'} | {r['source']} |"
        )
    return "\n".join(out)
