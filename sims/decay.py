"""Mean-element drag decay of a near-circular orbit: months and years in milliseconds.

The full plant (sims/orbit.py) integrates two-body + J2 + drag at second steps: right for a burn,
too slow for a year of coasting. Here the orbit is circular with semi-major axis ``a`` and the
drag is averaged over one revolution (argument of latitude u, uniform in time), using exactly the
plant's drag model:

* the density at the height above the WGS 84 ellipsoid to first order in the flattening,
  ``h = a - R_EARTH (1 - f sin^2(phi))`` with ``sin(phi) = sin(i) sin(u)`` (sims/atmosphere.py);
* the velocity relative to an atmosphere co-rotating with the Earth, ``v_rel = v - omega x r``:
  along-track ``v - omega a cos(i)``, magnitude from the full vector;
* Gauss's variational equation for the semi-major axis on a circular orbit,
  ``da/dt = (2 a / v) a_T`` (Vallado, *Fundamentals of Astrodynamics and Applications*, 4th ed.,
  eq. 9-24 with e = 0), with the along-track drag acceleration
  ``a_T = -0.5 rho (Cd A / m) |v_rel| (v_rel . v_hat)``.

What this leaves out, and why it is small at ISS altitude: J2's short-period swing (a mean
element averages it out), the eccentricity (e ~ 5e-4 for the ISS: the density's perigee/apogee
asymmetry changes the orbit-averaged drag by well under 1 %), the slow change of the stack mass.
tests/test_decay.py checks the rate against the full propagation over days (docs/atmosphere.md).
Units SI; all kernels never raise.
"""

from __future__ import annotations

import math

from thruster_hil.sims.atmosphere import density_kg_m3

from thruster_hil.core.constants import F_EARTH, MU_EARTH, OMEGA_EARTH, R_EARTH
from thruster_hil.core.jit import kernel

#: Samples of the argument of latitude per revolution in the orbit average.
N_U = 36


@kernel
def mean_decay_rate(a_m, incl_rad, bc_m2_kg, table_alt_m, table_log_rho):
    """Orbit-averaged da/dt [m/s] (negative) of a circular orbit of semi-major axis ``a_m`` [m] and
    inclination ``incl_rad`` under drag with ballistic coefficient ``bc_m2_kg`` = Cd A / m [m^2/kg];
    (table_alt_m, table_log_rho) from :func:`thruster_hil.sims.atmosphere.density_table_for`."""
    if not (a_m > 0.0):
        return 0.0
    v = math.sqrt(MU_EARTH / a_m)
    ci = math.cos(incl_rad)
    si = math.sin(incl_rad)
    w_a = OMEGA_EARTH * a_m
    v_along = v - w_a * ci  # v_rel . v_hat: the same at every u on a circular orbit
    total = 0.0
    for k in range(N_U):
        u = 2.0 * math.pi * (k + 0.5) / N_U
        su = math.sin(u)
        cu = math.cos(u)
        sin_phi = si * su
        h = a_m - R_EARTH * (1.0 - F_EARTH * sin_phi * sin_phi)
        rho = density_kg_m3(h, table_alt_m, table_log_rho)
        # omega x r = omega a (-sin u cos i, cos u, 0) in the node frame; v as in the docstring.
        dx = -v * su + w_a * su * ci
        dy = v * cu * ci - w_a * cu
        dz = v * cu * si
        vrel = math.sqrt(dx * dx + dy * dy + dz * dz)
        total += rho * vrel
    a_t = -0.5 * bc_m2_kg * v_along * total / N_U
    return 2.0 * a_m / v * a_t


@kernel
def coast(a0_m, incl_rad, bc_m2_kg, table_alt_m, table_log_rho, dt_s, a_stop_m, out_a_m):
    """Integrate the mean decay from ``a0_m`` with RK4 steps of ``dt_s`` [s], writing
    ``out_a_m[k] = a(k dt_s)``, until a falls to ``a_stop_m`` or below or ``out_a_m`` is full.

    Returns the number n of rows written (n >= 1; out_a_m[0] = a0_m): the last one is the first
    at or below ``a_stop_m`` (or below the Earth's equatorial radius: re-entered) when that was
    reached. Nothing is written for an empty ``out_a_m`` or dt_s <= 0 (returns 0).
    """
    n_max = out_a_m.shape[0]
    if n_max == 0 or not (dt_s > 0.0):
        return 0
    a = a0_m
    out_a_m[0] = a
    n = 1
    while n < n_max and a > a_stop_m and a > R_EARTH:  # and not re-entered
        k1 = mean_decay_rate(a, incl_rad, bc_m2_kg, table_alt_m, table_log_rho)
        k2 = mean_decay_rate(a + 0.5 * dt_s * k1, incl_rad, bc_m2_kg, table_alt_m, table_log_rho)
        k3 = mean_decay_rate(a + 0.5 * dt_s * k2, incl_rad, bc_m2_kg, table_alt_m, table_log_rho)
        k4 = mean_decay_rate(a + dt_s * k3, incl_rad, bc_m2_kg, table_alt_m, table_log_rho)
        a = a + dt_s / 6.0 * (k1 + 2.0 * k2 + 2.0 * k3 + k4)
        out_a_m[n] = a
        n += 1
    return n
