"""Regenerate sims/data/nrlmsis21_density_grid.csv from NRLMSIS 2.1 (via pymsis).

Usage (needs the optional ``tools`` extra, ``pip install -e .[tools]``)::

    python tools/make_atmosphere_table.py [--out sims/data/nrlmsis21_density_grid.csv]

What it computes, for every node of a height x F10.7 x Ap grid: the total mass density of
NRLMSIS 2.1 (Emmert et al. 2021, Earth and Space Science 8, e2020EA001321) averaged over a global
latitude/longitude grid at one fixed epoch. Averaging over longitude at a fixed UT is averaging
over local time (day/night bulge); averaging over latitude uses cos(latitude) area weights. The
result is a globally averaged, height-only profile per (F10.7, Ap) for the orbit plant; it has no
diurnal, latitudinal or seasonal structure by design.

F10.7 is used for both the daily and the 81-day mean value (the long-term convention of
ECSS-E-ST-10-04C clause 7.2.1.2c for analyses longer than a week), and the daily Ap for all seven
MSIS ap entries. Both are always passed explicitly, so pymsis never looks for (or downloads) a
space-weather file. The runtime (sims/atmosphere.py) interpolates log-density bilinearly in
(F10.7, Ap) and log-linearly in height, and never imports pymsis; this script also measures that
interpolation against NRLMSIS at the cell centres and writes the worst error into the header.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

EPOCH = np.datetime64("2024-03-20T12:00:00")  # near the March 2024 equinox, UT 12:00
ALT_KM = np.arange(100.0, 1000.0 + 0.5, 10.0)  # 100 .. 1000 km every 10 km
LAT_DEG = np.arange(-87.5, 87.5 + 0.1, 5.0)  # cell centres, 36 bands
LON_DEG = np.arange(0.0, 360.0, 15.0)  # 24 longitudes = 24 local times at fixed UT
#: F10.7 nodes [sfu]: 60 is below the lowest observed monthly means (quiet Sun ~64-65 sfu), 300
#: the ECSS high short-term daily value; the presets of sims/atmosphere.py are nodes.
F107_SFU = np.array(
    [
        60.0,
        65.0,
        70.0,
        80.0,
        90.0,
        100.0,
        110.0,
        120.0,
        130.0,
        140.0,
        150.0,
        160.0,
        170.0,
        180.0,
        190.0,
        200.0,
        225.0,
        250.0,
        275.0,
        300.0,
    ]
)
#: Ap nodes: the whole Ap scale (0..400), denser where the daily values mostly fall.
AP = np.array(
    [0.0, 4.0, 7.0, 10.0, 15.0, 22.0, 30.0, 45.0, 67.0, 100.0, 150.0, 207.0, 300.0, 400.0]
)
#: Heights [km] at which the interpolation is checked against NRLMSIS at the cell centres.
CHECK_ALT_KM = np.array([300.0, 350.0, 400.0, 450.0, 500.0])

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "sims" / "data" / "nrlmsis21_density_grid.csv"


def global_mean_density(
    f107: float, f107a: float, ap: float, alt_km: np.ndarray = ALT_KM
) -> np.ndarray:
    """Area-weighted global mean NRLMSIS 2.1 total mass density [kg/m^3] at each ``alt_km``."""
    import pymsis  # only here: the tools extra

    aps = np.full((1, 7), ap)  # daily Ap; the 3-hour entries only matter in storm-time mode
    out = pymsis.calculate(
        np.array([EPOCH]),
        LON_DEG,
        LAT_DEG,
        alt_km,
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


def build_grid() -> np.ndarray:
    """(n_f107, n_ap, n_alt) densities [kg/m^3], rounded as the CSV stores them."""
    grid = np.empty((F107_SFU.size, AP.size, ALT_KM.size))
    for i, f in enumerate(F107_SFU):
        for j, a in enumerate(AP):
            grid[i, j] = global_mean_density(f, f, a)
    return np.vectorize(lambda x: float(f"{x:.6e}"))(grid)


def interpolation_error(grid: np.ndarray) -> float:
    """Worst relative error [-] of bilinear log-density interpolation in (F10.7, Ap) at the
    centres of all grid cells, at the ``CHECK_ALT_KM`` heights (which are nodes in height)."""
    k = np.searchsorted(ALT_KM, CHECK_ALT_KM)
    log_grid = np.log(grid[:, :, k])
    worst = 0.0
    for i in range(F107_SFU.size - 1):
        for j in range(AP.size - 1):
            f = 0.5 * (F107_SFU[i] + F107_SFU[i + 1])
            a = 0.5 * (AP[j] + AP[j + 1])
            est = np.exp(
                0.25
                * (
                    log_grid[i, j]
                    + log_grid[i + 1, j]
                    + log_grid[i, j + 1]
                    + log_grid[i + 1, j + 1]
                )
            )
            truth = global_mean_density(f, f, a, CHECK_ALT_KM)
            worst = max(worst, float(np.max(np.abs(est / truth - 1.0))))
    return worst


def header_lines(interp_error: float) -> list[str]:
    import pymsis

    return [
        "# Globally averaged thermospheric total mass density over height x F10.7 x Ap.",
        "# Source: NRLMSIS 2.1 (Emmert et al. 2021, Earth and Space Science 8, e2020EA001321),",
        f"#   evaluated with pymsis {pymsis.__version__} (version=2.1, default switches)"
        " by tools/make_atmosphere_table.py.",
        "# Inputs: F10.7 [sfu] used for both the daily and the 81-day mean value (the long-term",
        "#   convention of ECSS-E-ST-10-04C clause 7.2.1.2c); daily Ap for all 7 MSIS ap entries;",
        "#   passed explicitly, so no space-weather file is read or downloaded.",
        f"#   F10.7 nodes: {', '.join(f'{x:g}' for x in F107_SFU)}",
        f"#   Ap nodes: {', '.join(f'{x:g}' for x in AP)}",
        "# Note: ECSS-E-ST-10-04C itself prescribes JB-2006 for total density above 120 km;",
        "#   this table uses NRLMSIS 2.1 by project choice.",
        f"# Epoch: {EPOCH} UTC (near the March 2024 equinox).",
        f"# Averaging: latitudes {LAT_DEG[0]:g}..{LAT_DEG[-1]:g} deg every 5 deg, weighted by"
        " cos(lat);",
        f"#   longitudes {LON_DEG[0]:g}..{LON_DEG[-1]:g} deg every 15 deg (= 24 local times),"
        " equal weights.",
        "# Altitude: geodetic (WGS 84) altitude of the MSIS input; sims/atmosphere.py looks it up",
        "#   with the height above the WGS 84 ellipsoid to first order in the flattening.",
        "# Interpolation check: bilinear log-density in (F10.7, Ap) at every cell centre, at",
        f"#   {', '.join(f'{x:g}' for x in CHECK_ALT_KM)} km, is within"
        f" {100.0 * interp_error:.2f} % of NRLMSIS 2.1.",
        "# Units: altitude_km in km; f107_sfu in sfu (1e-22 W m^-2 Hz^-1); ap in 2 nT;"
        " rho_kg_m3 in kg/m^3.",
        "# Rows: F10.7 outermost, then Ap, then altitude (all increasing).",
    ]


def write_csv(path: Path, grid: np.ndarray, interp_error: float) -> None:
    lines = header_lines(interp_error)
    lines.append("f107_sfu,ap,altitude_km,rho_kg_m3")
    for i, f in enumerate(F107_SFU):
        for j, a in enumerate(AP):
            for k, h in enumerate(ALT_KM):
                lines.append(f"{f:g},{a:g},{h:.0f},{grid[i, j, k]:.6e}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output CSV path")
    args = parser.parse_args(argv)
    grid = build_grid()
    err = interpolation_error(grid)
    write_csv(args.out, grid, err)
    print(f"wrote {args.out} ({grid.size} nodes; interpolation within {100 * err:.2f} %)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
