"""Regenerate sims/data/nrlmsis21_density.csv from NRLMSIS 2.1 (via pymsis).

Usage (needs the optional ``tools`` extra, ``pip install -e .[tools]``)::

    python tools/make_atmosphere_table.py [--out sims/data/nrlmsis21_density.csv]

What it computes, per solar-activity level and altitude: the total mass density of NRLMSIS 2.1
(Emmert et al. 2021, Earth and Space Science 8, e2020EA001321) averaged over a global
latitude/longitude grid at one fixed epoch. Averaging over longitude at a fixed UT is averaging over
local time (day/night bulge); averaging over latitude uses cos(latitude) area weights. The result is
a globally averaged, altitude-only profile for the orbit plant; it has no diurnal, latitudinal or
seasonal structure by design.

F10.7, F10.7a and Ap are always passed explicitly, so pymsis never looks for (or downloads) a
space-weather file. The runtime (sims/atmosphere.py) only reads the CSV and never imports pymsis.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

# Solar and geomagnetic activity levels, long term, after ECSS-E-ST-10-04C (Space environment,
# 15 November 2008): Table 6-3 (low / moderate / high long-term activity), used for both the daily
# and the 81-day F10.7 as clause 7.2.1.2c prescribes for analyses longer than one week. The
# numbers are the ones commonly quoted from that table; the table text itself was not re-read when
# this script was written -- check them against the standard before relying on them.
ACTIVITY_INPUTS = {
    "low": {"f107": 65.0, "f107a": 65.0, "ap": 0.0},
    "moderate": {"f107": 140.0, "f107a": 140.0, "ap": 15.0},
    "high": {"f107": 250.0, "f107a": 250.0, "ap": 45.0},
}
ACTIVITY_ORDER = ("low", "moderate", "high")

EPOCH = np.datetime64("2024-03-20T12:00:00")  # near the March 2024 equinox, UT 12:00
ALT_KM = np.arange(100.0, 1000.0 + 0.5, 10.0)  # 100 .. 1000 km every 10 km
LAT_DEG = np.arange(-87.5, 87.5 + 0.1, 5.0)  # cell centres, 36 bands
LON_DEG = np.arange(0.0, 360.0, 15.0)  # 24 longitudes = 24 local times at fixed UT

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "sims" / "data" / "nrlmsis21_density.csv"


def global_mean_density(f107: float, f107a: float, ap: float) -> np.ndarray:
    """Area-weighted global mean NRLMSIS 2.1 total mass density [kg/m^3] at each ``ALT_KM``."""
    import pymsis  # only here: the tools extra

    aps = np.full((1, 7), ap)  # daily Ap; the 3-hour entries only matter in storm-time mode
    out = pymsis.calculate(
        np.array([EPOCH]),
        LON_DEG,
        LAT_DEG,
        ALT_KM,
        f107s=np.array([f107]),
        f107as=np.array([f107a]),
        aps=aps,
        version=2.1,
    )
    rho = out[0, :, :, :, pymsis.Variable.MASS_DENSITY]  # (lon, lat, alt)
    if not np.all(np.isfinite(rho)) or np.any(rho <= 0.0):
        raise RuntimeError("pymsis returned a non-finite or non-positive density")
    w_lat = np.cos(np.radians(LAT_DEG))
    w = np.broadcast_to(w_lat[None, :, None], rho.shape)
    return np.sum(rho * w, axis=(0, 1)) / np.sum(w, axis=(0, 1))


def build_table() -> np.ndarray:
    """(n_alt, 4) array: altitude_km, then density for low, moderate, high activity."""
    cols = [ALT_KM]
    for name in ACTIVITY_ORDER:
        cols.append(global_mean_density(**ACTIVITY_INPUTS[name]))
    return np.column_stack(cols)


def header_lines() -> list[str]:
    import pymsis

    inputs = "; ".join(
        f"{n}: F10.7={v['f107']:g}, F10.7a={v['f107a']:g}, Ap={v['ap']:g}"
        for n, v in ((n, ACTIVITY_INPUTS[n]) for n in ACTIVITY_ORDER)
    )
    return [
        "# Globally averaged thermospheric total mass density by solar activity level.",
        "# Source: NRLMSIS 2.1 (Emmert et al. 2021, Earth and Space Science 8, e2020EA001321),",
        f"#   evaluated with pymsis {pymsis.__version__} (version=2.1, default switches)"
        " by tools/make_atmosphere_table.py.",
        "# Activity inputs: long-term levels after ECSS-E-ST-10-04C (Space environment, 2008),",
        "#   Table 6-3, long-term values used for daily and 81-day F10.7 (clause 7.2.1.2c);",
        "#   values as commonly quoted from that table, not re-read from the standard here.",
        "#   F10.7 and F10.7a in sfu, daily Ap; all 7 MSIS ap entries set to the daily Ap;",
        "#   passed explicitly, so no space-weather file is read or downloaded:",
        f"#   {inputs}",
        "# Note: ECSS-E-ST-10-04C itself prescribes JB-2006 for total density above 120 km;",
        "#   this table uses NRLMSIS 2.1 by project choice.",
        f"# Epoch: {EPOCH} UTC (near the March 2024 equinox).",
        f"# Averaging: latitudes {LAT_DEG[0]:g}..{LAT_DEG[-1]:g} deg every 5 deg, weighted by"
        " cos(lat);",
        f"#   longitudes {LON_DEG[0]:g}..{LON_DEG[-1]:g} deg every 15 deg (= 24 local times),"
        " equal weights.",
        "# Altitude: geodetic (WGS 84) altitude of the MSIS input; sims/atmosphere.py looks it up",
        "#   with spherical altitude |r| - R_EARTH (an approximation, documented there).",
        "# Units: altitude_km in km; densities in kg/m^3.",
    ]


def write_csv(path: Path, table: np.ndarray) -> None:
    lines = header_lines()
    lines.append("altitude_km,low_kg_m3,moderate_kg_m3,high_kg_m3")
    for row in table:
        lines.append(f"{row[0]:.1f},{row[1]:.6e},{row[2]:.6e},{row[3]:.6e}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output CSV path")
    args = parser.parse_args(argv)
    table = build_table()
    write_csv(args.out, table)
    print(f"wrote {args.out} ({table.shape[0]} altitudes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
