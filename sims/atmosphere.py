"""Thermospheric density as a function of (height, F10.7, Ap): a table lookup for the plant.

The table ``sims/data/nrlmsis21_density_grid.csv`` holds the globally averaged NRLMSIS 2.1 total
mass density (Emmert et al. 2021, Earth and Space Science 8, e2020EA001321) on a grid of
height (100..1000 km every 10 km) x F10.7 (60..300 sfu, 20 nodes) x Ap (0..400, 14 nodes); its
``#`` header states the exact inputs and the measured interpolation error. F10.7 stands for both
the daily and the 81-day mean flux (the long-term convention, ECSS-E-ST-10-04C clause 7.2.1.2c).
It is regenerated with ``tools/make_atmosphere_table.py`` (needs pymsis); this module never
imports pymsis.

Lookup in two kernels, so the orbit kernels keep their one-dimensional table:

* :func:`log_density_profile` interpolates ``log(rho)`` bilinearly in (F10.7, Ap) at every height
  node, once per run (the activity is constant during a burn or a sustain analysis);
* :func:`density_kg_m3` interpolates that profile linearly in ``log(rho)`` in height, i.e.
  exponentially between nodes with the local scale height; outside the table the nearest
  segment's scale height is extended.

Height: the table's altitude is geodetic (the MSIS input). The orbit plant looks it up with the
height above the WGS 84 ellipsoid to first order in the flattening,
``h = |r| - R_EARTH (1 - f sin^2(phi))`` with phi the geocentric latitude (sims/orbit.py
``_gravity_drag``). At ISS altitude that is within tens of metres of the exact geodetic height;
the spherical altitude ``|r| - R_EARTH`` would instead read up to 13 km too low at the ISS's
highest latitudes (51.6 deg), i.e. densities up to ~25 % too high there.

Named levels (:data:`PRESETS`, docs/atmosphere.md): ``low`` and ``moderate`` are the long-term
values of ECSS-E-ST-10-04C (Table 6-3); ``high`` is a typical solar maximum (the 13-month
smoothed indices at the maximum of an ordinary cycle), not ECSS's high long-term value
(F10.7 250, Ap 45), which is the envelope of the strongest cycles and gives storm-like decay
(choose it with ``--f107 250 --ap 45``). Units: SI (m, kg/m^3); F10.7 in sfu, Ap in its own unit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from thruster_hil.core.jit import inline_kernel, kernel

ACTIVITY_LEVELS = ("low", "moderate", "high")

TABLE_PATH = Path(__file__).resolve().parent / "data" / "nrlmsis21_density_grid.csv"

#: The F10.7 [sfu] and Ap ranges the table covers (and the command line accepts).
F107_MIN_SFU = 60.0
F107_MAX_SFU = 300.0
AP_MIN = 0.0
AP_MAX = 400.0  # the top of the ap scale


@dataclass(frozen=True)
class SolarActivity:
    """The atmosphere's driver: F10.7 [sfu] (daily = 81-day mean) and daily Ap, with the preset
    it came from (or ``"custom"``) and where its numbers come from."""

    name: str
    f107_sfu: float
    ap: float
    source: str = ""

    def describe(self) -> str:
        """One line for people, e.g. ``NRLMSIS 2.1, moderate solar activity: F10.7 140 sfu,
        Ap 15``."""
        level = "custom activity" if self.name == "custom" else f"{self.name} solar activity"
        return f"NRLMSIS 2.1, {level}: F10.7 {self.f107_sfu:g} sfu, Ap {self.ap:g}"


#: The named levels. Every value is a node of the table, so a preset reads the table exactly.
PRESETS: dict[str, SolarActivity] = {
    "low": SolarActivity(
        "low",
        65.0,
        0.0,
        "ECSS-E-ST-10-04C (2008) Table 6-3, low long-term activity (solar minimum)",
    ),
    "moderate": SolarActivity(
        "moderate",
        140.0,
        15.0,
        "ECSS-E-ST-10-04C (2008) Table 6-3, moderate long-term activity (cycle mean)",
    ),
    "high": SolarActivity(
        "high",
        170.0,
        15.0,
        "typical solar maximum: 13-month smoothed F10.7 at the maximum of cycle 23 "
        "(162-170 sfu, IPS Radio and Space Services, observed and predicted solar indices, "
        "2008) and the cycle-mean Ap of ECSS-E-ST-10-04C (15; MSFC 13-month smoothed Ap near "
        "the cycle-24 maximum: 10-13 median, at most ~19 at the 95th percentile)",
    ),
}


def activity(
    name: str | None = None, f107_sfu: float | None = None, ap: float | None = None
) -> SolarActivity:
    """The activity a run uses: the preset ``name`` (default moderate), with ``f107_sfu`` and/or
    ``ap`` replacing its values when given (then named ``"custom"`` unless they equal the
    preset's). Raises ``ValueError`` for an unknown preset or a value outside the table (the
    command line validates first and says so in one line)."""
    base = PRESETS[name or "moderate"] if (name or "moderate") in PRESETS else None
    if base is None:
        raise ValueError(f"activity must be one of {ACTIVITY_LEVELS}, got {name!r}")
    f = base.f107_sfu if f107_sfu is None else float(f107_sfu)
    a = base.ap if ap is None else float(ap)
    if not F107_MIN_SFU <= f <= F107_MAX_SFU:
        raise ValueError(f"F10.7 must be in {F107_MIN_SFU:g}..{F107_MAX_SFU:g} sfu, got {f!r}")
    if not AP_MIN <= a <= AP_MAX:
        raise ValueError(f"Ap must be in {AP_MIN:g}..{AP_MAX:g}, got {a!r}")
    if f == base.f107_sfu and a == base.ap:
        return base
    return SolarActivity("custom", f, a, f"F10.7 and Ap given (from the {base.name} preset)")


@lru_cache(maxsize=1)
def _load_grid() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(f107_sfu (nf,), ap (na,), alt_m (nh,), log_rho (nf, na, nh)) from the CSV, read-only."""
    lines = TABLE_PATH.read_text(encoding="utf-8").splitlines()
    body = [ln for ln in lines if ln.strip() and not ln.startswith("#")]
    names = [c.strip() for c in body[0].split(",")]
    if names != ["f107_sfu", "ap", "altitude_km", "rho_kg_m3"]:
        raise ValueError(f"{TABLE_PATH}: unexpected columns {names}")
    data = np.array([[float(x) for x in ln.split(",")] for ln in body[1:]], dtype=np.float64)
    f107 = np.unique(data[:, 0])
    ap = np.unique(data[:, 1])
    alt_km = np.unique(data[:, 2])
    shape = (f107.size, ap.size, alt_km.size)
    if data.shape[0] != f107.size * ap.size * alt_km.size:
        raise ValueError(f"{TABLE_PATH}: not a full grid")
    expected = np.stack(np.meshgrid(f107, ap, alt_km, indexing="ij"), axis=-1).reshape(-1, 3)
    rho = data[:, 3]
    if not np.array_equal(data[:, :3], expected) or np.any(~(rho > 0.0)):
        raise ValueError(
            f"{TABLE_PATH}: rows must be sorted (F10.7, Ap, altitude) with densities > 0"
        )
    log_rho = np.log(rho).reshape(shape)
    alt_m = alt_km * 1000.0
    for a in (f107, ap, alt_m, log_rho):
        a.setflags(write=False)
    return f107, ap, alt_m, log_rho


def density_grid() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The whole table: ``(f107_sfu (nf,), ap (na,), alt_m (nh,), log_rho (nf, na, nh))``,
    float64, read-only (the parsed CSV is cached); axes strictly increasing; log_rho is
    ``ln(kg/m^3)``. The arguments :func:`log_density_profile` takes."""
    return _load_grid()


def density_table_for(f107_sfu: float, ap: float) -> tuple[np.ndarray, np.ndarray]:
    """Height profile at one activity: ``(alt_m (nh,), log_rho (nh,))``, fresh float64 arrays
    for :func:`density_kg_m3` and the orbit kernels. Values outside the table are clamped to
    its edges by the kernel; :func:`activity` refuses them first."""
    f107, ap_nodes, alt_m, log_rho = _load_grid()
    out = np.empty(alt_m.size)
    log_density_profile(float(f107_sfu), float(ap), f107, ap_nodes, log_rho, out)
    return alt_m.copy(), out


def density_table(level: str | SolarActivity) -> tuple[np.ndarray, np.ndarray]:
    """Height profile ``(alt_m, log_rho)`` of a named level (``ACTIVITY_LEVELS``) or of a
    :class:`SolarActivity`. Raises ``ValueError`` for an unknown name."""
    act = level if isinstance(level, SolarActivity) else activity(level)
    return density_table_for(act.f107_sfu, act.ap)


def plan_activity(plan: dict) -> SolarActivity:
    """The activity a plan (``thruster-hil plan``'s summary) was made with: its ``f107_sfu`` and
    ``ap`` where present, else its ``solar_activity`` preset (plans written before the free
    atmosphere carry only the preset)."""
    return activity(plan.get("solar_activity"), plan.get("f107_sfu"), plan.get("ap"))


@kernel
def _segment(x, nodes):
    """Index i of the segment [nodes[i], nodes[i + 1]] that holds x: 0 below the first node (and
    for NaN), n - 2 above the last. nodes strictly increasing, at least 2. Binary search."""
    n = nodes.shape[0]
    if not x > nodes[0]:
        return 0
    if x >= nodes[n - 1]:
        return n - 2
    lo = 0
    hi = n - 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if nodes[mid] <= x:
            lo = mid
        else:
            hi = mid
    return lo


@inline_kernel
def _segment_near(x, nodes):
    """:func:`_segment` for nodes that are close to evenly spaced (the height grid): start at the
    segment an even grid would give and step to the one that holds x. The segment with
    nodes[i] <= x < nodes[i + 1] is unique, so the answer is the binary search's, in a step or
    two instead of seven (the orbit kernels look the density up four times per RK4 step)."""
    n = nodes.shape[0]
    if not x > nodes[0]:
        return 0
    if x >= nodes[n - 1]:
        return n - 2
    # The guess multiplies by the nodes per metre (a division of table values only, off the
    # dependency chain of x): any guess gives the same segment, the loops below correct it.
    i = int((x - nodes[0]) * ((n - 1) / (nodes[n - 1] - nodes[0])))
    if i > n - 2:
        i = n - 2
    if i < 0:
        i = 0
    while i > 0 and nodes[i] > x:
        i -= 1
    while i < n - 2 and nodes[i + 1] <= x:
        i += 1
    return i


@kernel
def _bracket(x, nodes):
    """(i, w): x lies between nodes[i] and nodes[i + 1] with weight w in [0, 1] on nodes[i + 1];
    clamped to the end nodes (NaN: the first node)."""
    i = _segment(x, nodes)
    if not x > nodes[0]:
        return i, 0.0
    if x >= nodes[nodes.shape[0] - 1]:
        return i, 1.0
    return i, (x - nodes[i]) / (nodes[i + 1] - nodes[i])


@kernel
def log_density_profile(f107_sfu, ap, grid_f107, grid_ap, grid_log_rho, out_log_rho):
    """Fill ``out_log_rho`` (nh,) with ln(rho [kg/m^3]) at every height node for one activity.

    Bilinear in (F10.7 [sfu], Ap) on ``grid_log_rho`` (nf, na, nh): exact at the nodes,
    continuous everywhere, clamped to the grid's edges outside it (and at the first node for
    NaN). Never raises; writes nothing else. Inputs from :func:`density_grid`.
    """
    i, wf = _bracket(f107_sfu, grid_f107)
    j, wa = _bracket(ap, grid_ap)
    w00 = (1.0 - wf) * (1.0 - wa)
    w10 = wf * (1.0 - wa)
    w01 = (1.0 - wf) * wa
    w11 = wf * wa
    for k in range(out_log_rho.shape[0]):
        out_log_rho[k] = (
            w00 * grid_log_rho[i, j, k]
            + w10 * grid_log_rho[i + 1, j, k]
            + w01 * grid_log_rho[i, j + 1, k]
            + w11 * grid_log_rho[i + 1, j + 1, k]
        )


@inline_kernel
def density_kg_m3(alt_m, table_alt_m, table_log_rho):
    """Mass density [kg/m^3] at altitude ``alt_m`` [m] from a ``density_table`` pair.

    Log-linear interpolation between nodes (exact at nodes, continuous everywhere). Below the first
    node the first segment's scale height is extended downwards, above the last node the last
    segment's scale height is extended upwards. Never raises; for finite input the result is
    finite and non-negative (it underflows to 0.0 only for absurd altitudes, thousands of km above
    the table). A NaN altitude gives NaN. Binary search, O(log n).
    """
    n = table_alt_m.shape[0]
    if n == 0:
        return 0.0
    if n == 1:
        return math.exp(table_log_rho[0])
    i = _segment_near(alt_m, table_alt_m)
    h0 = table_alt_m[i]
    slope = (table_log_rho[i + 1] - table_log_rho[i]) / (table_alt_m[i + 1] - h0)
    log_rho = table_log_rho[i] + slope * (alt_m - h0)
    # Clamp the exponent so that extrapolation far below the table cannot overflow to inf.
    if log_rho > 700.0:
        log_rho = 700.0
    return math.exp(log_rho)


@kernel
def log_density_slopes(table_alt_m, table_log_rho):
    """Each segment's slope of ln(rho) [1/m], (n - 1,): the division :func:`density_kg_m3`
    makes at every lookup, made once per table (the same operands, so the same quotient)."""
    n = table_alt_m.shape[0]
    out = np.empty(max(n - 1, 0))
    for i in range(n - 1):
        out[i] = (table_log_rho[i + 1] - table_log_rho[i]) / (table_alt_m[i + 1] - table_alt_m[i])
    return out


@inline_kernel
def density_sloped_kg_m3(alt_m, table_alt_m, table_log_rho, table_slope):
    """:func:`density_kg_m3` with the segments' slopes from :func:`log_density_slopes`: the
    same number, bit for bit, without a division on the orbit integrator's dependency chain."""
    n = table_alt_m.shape[0]
    if n == 0:
        return 0.0
    if n == 1:
        return math.exp(table_log_rho[0])
    i = _segment_near(alt_m, table_alt_m)
    log_rho = table_log_rho[i] + table_slope[i] * (alt_m - table_alt_m[i])
    if log_rho > 700.0:
        log_rho = 700.0
    return math.exp(log_rho)
