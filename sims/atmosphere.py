"""Thermospheric density by solar-activity level: a table lookup for the orbit plant.

The table ``sims/data/nrlmsis21_density.csv`` holds the globally averaged NRLMSIS 2.1 total mass
density (Emmert et al. 2021, Earth and Space Science 8, e2020EA001321) for 100..1000 km every 10 km
at three long-term solar/geomagnetic activity levels after ECSS-E-ST-10-04C (low, moderate, high);
its ``#`` header states the exact inputs. It is regenerated with ``tools/make_atmosphere_table.py``
(needs pymsis); this module never imports pymsis.

The table altitude is geodetic; the orbit plant looks it up with the height above the WGS 84
ellipsoid to first order in the flattening, ``|r| - R_EARTH (1 - f sin^2(phi))`` (phi geocentric
latitude), which is within tens of metres of the geodetic height at ISS altitude. Using the
spherical altitude instead would read up to 13 km too low at the ISS's highest latitudes.

Interpolation is linear in ``log(rho)``, i.e. exponential between nodes with the local scale
height; outside the table the nearest segment's scale height is extended. Units: SI (m, kg/m^3).
"""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

import numpy as np

from sims._jit import kernel

ACTIVITY_LEVELS = ("low", "moderate", "high")

TABLE_PATH = Path(__file__).resolve().parent / "data" / "nrlmsis21_density.csv"


@lru_cache(maxsize=1)
def _load_table() -> tuple[np.ndarray, np.ndarray]:
    """(alt_m (n,), rho_kg_m3 (n, 3)) from the CSV, columns in ``ACTIVITY_LEVELS`` order."""
    lines = [
        line for line in TABLE_PATH.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    names = [c.strip() for c in lines[0].split(",")]
    expected = ["altitude_km"] + [f"{a}_kg_m3" for a in ACTIVITY_LEVELS]
    if names != expected:
        raise ValueError(f"{TABLE_PATH}: columns must be {expected}, got {names}")
    data = np.array([[float(x) for x in line.split(",")] for line in lines[1:]], dtype=np.float64)
    alt_m = np.ascontiguousarray(data[:, 0] * 1000.0)
    rho = np.ascontiguousarray(data[:, 1:])
    if np.any(np.diff(alt_m) <= 0.0) or np.any(~(rho > 0.0)):
        raise ValueError(f"{TABLE_PATH}: altitudes must increase and densities be positive")
    alt_m.setflags(write=False)
    rho.setflags(write=False)
    return alt_m, rho


def density_table(activity: str) -> tuple[np.ndarray, np.ndarray]:
    """Density table for one activity level.

    Returns ``(alt_m, log_rho)``: float64 arrays, altitude [m] strictly increasing and the natural
    log of the density [ln(kg/m^3)]. Fresh copies each call (the parsed CSV is cached), so callers
    may keep or modify them. Raises ``ValueError`` for an activity not in ``ACTIVITY_LEVELS``
    (the config layer validates before this is reached).
    """
    if activity not in ACTIVITY_LEVELS:
        raise ValueError(f"activity must be one of {ACTIVITY_LEVELS}, got {activity!r}")
    alt_m, rho = _load_table()
    col = ACTIVITY_LEVELS.index(activity)
    return alt_m.copy(), np.log(rho[:, col])


@kernel
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
    if alt_m <= table_alt_m[0]:
        i = 0
    elif alt_m >= table_alt_m[n - 1]:
        i = n - 2
    else:
        lo = 0
        hi = n - 1
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if table_alt_m[mid] <= alt_m:
                lo = mid
            else:
                hi = mid
        i = lo
    h0 = table_alt_m[i]
    slope = (table_log_rho[i + 1] - table_log_rho[i]) / (table_alt_m[i + 1] - h0)
    log_rho = table_log_rho[i] + slope * (alt_m - h0)
    # Clamp the exponent so that extrapolation far below the table cannot overflow to inf.
    if log_rho > 700.0:
        log_rho = 700.0
    return math.exp(log_rho)
