"""Orbit plant: two-body + J2 + drag accelerations, RK4 with sub-steps, element conversions.

Frames and units (docs/architecture.md): N = ECI J2000, H = LVLH (x_H along-track, y_H = -orbit
normal, z_H nadir); SI throughout (m, s, kg, N, rad). The state vector is

    y = [r_BN_N (3) [m], v_BN_N (3) [m/s], mass_kg [kg]]        (float64, shape (7,))

Physics
-------
* Gravity: point mass ``-mu r / |r|^3`` plus the J2 zonal term (Vallado, *Fundamentals of
  Astrodynamics and Applications*, 4th ed., eq. 8-30 in its Cartesian form), with MU_EARTH,
  R_EARTH and J2_EARTH from :mod:`thruster_hil.core.constants`. N is treated as Earth-fixed-pole (no
  precession/nutation): the J2 axis is z_N.
* Drag: ``a = -0.5 rho (Cd A / m) |v_rel| v_rel`` with ``v_rel = v - omega_E x r``, an atmosphere
  co-rotating with the Earth about z_N. ``rho`` comes from
  :func:`thruster_hil.sims.atmosphere.density_kg_m3` at the height above the WGS 84 ellipsoid, ``|r|
  - R_EARTH (1 - f sin^2(phi))`` with phi the geocentric latitude (good to tens of metres at ISS
  altitude; see sims/atmosphere.py).
* Thrust: a force fixed in LVLH, ``F_N = dcm_HN.T @ force_H_N``, re-evaluated from the current
  (r, v) at every RK4 stage, with mass flow ``dm/dt = -mdot``.

Kernels never raise. Where a mass is not positive the thrust and drag accelerations are skipped (a
massless body has no meaningful acceleration) rather than producing inf/NaN.

Mean elements
-------------
J2 swings the *osculating* semi-major axis, perigee and apogee at ISS altitude by several km within
one orbit. ../shared/DESIGN.md therefore asks that what a burn changed be reported as mean
(orbit-averaged) elements, or as the difference from a no-burn propagation over the same time --
never as raw osculating before/after values. :func:`mean_apsides` provides the orbit average.
"""

from __future__ import annotations

import math

import numpy as np
from thruster_hil.sims.atmosphere import density_kg_m3, density_sloped_kg_m3, log_density_slopes

from thruster_hil.core.constants import F_EARTH, J2_EARTH, MU_EARTH, OMEGA_EARTH, R_EARTH
from thruster_hil.core.frames import dcm_HN, lvlh_axes  # noqa: F401  (re-exported)
from thruster_hil.core.jit import inline_kernel, kernel

TWO_PI = 2.0 * math.pi

# Size of the scratch array ``rk4_step`` needs (5 stage buffers of 7 + spare).
RK4_WORK_SIZE = 40

# propagate() status codes.
STATUS_OK = 0
STATUS_BAD_ARGS = 1  # dt_s <= 0, n_sub < 1, or out_y of the wrong shape: nothing written
STATUS_NONFINITE = 2  # the state became non-finite; remaining rows are filled with NaN


# --------------------------------------------------------------------------------------------
# Accelerations and frames
# --------------------------------------------------------------------------------------------


@inline_kernel
def _gravity_drag_xyz(
    rx, ry, rz, vx, vy, vz, mass_kg, cd_area_m2, j2_on, table_alt_m, table_log_rho
):
    """Gravity (+J2) and drag for scalar inputs: (ax, ay, az) [m/s^2]."""
    return _accel_xyz(
        rx, ry, rz, vx, vy, vz, mass_kg, cd_area_m2, j2_on, table_alt_m, table_log_rho,
        table_log_rho, False,
    )  # fmt: skip


@inline_kernel
def _gravity_drag_sloped_xyz(
    rx, ry, rz, vx, vy, vz, mass_kg, cd_area_m2, j2_on, table_alt_m, table_log_rho, table_slope
):
    """:func:`_gravity_drag_xyz` with the density table's slopes precomputed
    (:func:`thruster_hil.sims.atmosphere.log_density_slopes`): the same result, bit for bit."""
    return _accel_xyz(
        rx, ry, rz, vx, vy, vz, mass_kg, cd_area_m2, j2_on, table_alt_m, table_log_rho,
        table_slope, True,
    )  # fmt: skip


@inline_kernel
def _accel_xyz(
    rx, ry, rz, vx, vy, vz, mass_kg, cd_area_m2, j2_on, table_alt_m, table_log_rho, table_slope,
    sloped,
):  # fmt: skip
    """The body of the two above; ``sloped`` is a constant in each, so the branch on it is
    compiled away."""
    r2 = rx * rx + ry * ry + rz * rz
    r = math.sqrt(r2)
    k = -MU_EARTH / (r2 * r)
    ax = k * rx
    ay = k * ry
    az = k * rz
    if j2_on:
        # a_J2 = -1.5 J2 mu R^2 / r^5 * [x (1 - 5 z^2/r^2), y (1 - 5 z^2/r^2), z (3 - 5 z^2/r^2)]
        c = -1.5 * J2_EARTH * MU_EARTH * R_EARTH * R_EARTH / (r2 * r2 * r)
        s = 5.0 * rz * rz / r2
        ax += c * rx * (1.0 - s)
        ay += c * ry * (1.0 - s)
        az += c * rz * (3.0 - s)
    if cd_area_m2 > 0.0 and mass_kg > 0.0:
        # v_rel = v - omega x r with omega = (0, 0, OMEGA_EARTH)
        wx = vx + OMEGA_EARTH * ry
        wy = vy - OMEGA_EARTH * rx
        wz = vz
        vrel = math.sqrt(wx * wx + wy * wy + wz * wz)
        # Height above the ellipsoid, first order in the flattening: the table is geodetic.
        sin2 = rz * rz / r2
        h = r - R_EARTH * (1.0 - F_EARTH * sin2)
        if sloped:
            rho = density_sloped_kg_m3(h, table_alt_m, table_log_rho, table_slope)
        else:
            rho = density_kg_m3(h, table_alt_m, table_log_rho)
        d = -0.5 * rho * cd_area_m2 / mass_kg * vrel
        ax += d * wx
        ay += d * wy
        az += d * wz
    return ax, ay, az


@kernel
def _gravity_drag(
    rx, ry, rz, vx, vy, vz, mass_kg, cd_area_m2, j2_on, table_alt_m, table_log_rho, out_a_N
):
    """Gravity (+J2) and drag for scalar inputs; writes out_a_N[0:3]."""
    ax, ay, az = _gravity_drag_xyz(
        rx, ry, rz, vx, vy, vz, mass_kg, cd_area_m2, j2_on, table_alt_m, table_log_rho
    )
    out_a_N[0] = ax
    out_a_N[1] = ay
    out_a_N[2] = az


@kernel
def orbit_accel(r_BN_N, v_BN_N, mass_kg, cd_area_m2, j2_on, table_alt_m, table_log_rho, out_a_N):
    """Gravitational (point mass + J2 if ``j2_on``) plus drag acceleration [m/s^2] into out_a_N.

    r_BN_N [m], v_BN_N [m/s] in ECI J2000; mass_kg [kg]; cd_area_m2 = Cd * A [m^2] (0 switches drag
    off); j2_on: bool or 0.0/1.0; (table_alt_m, table_log_rho) from
    :func:`thruster_hil.sims.atmosphere.density_table`. Drag uses a co-rotating atmosphere and the
    height above the WGS 84 ellipsoid (first order in the flattening). No thrust here (see
    :func:`rk4_step`).
    """
    _gravity_drag(
        r_BN_N[0],
        r_BN_N[1],
        r_BN_N[2],
        v_BN_N[0],
        v_BN_N[1],
        v_BN_N[2],
        mass_kg,
        cd_area_m2,
        j2_on,
        table_alt_m,
        table_log_rho,
        out_a_N,
    )


@kernel
def _derivative(y, force_H_N, mdot_kg_s, cd_area_m2, j2_on, table_alt_m, table_log_rho, out_dy):
    """dy/dt of the 7-state with a thrust force fixed in LVLH; writes out_dy[0:7]."""
    rx = y[0]
    ry = y[1]
    rz = y[2]
    vx = y[3]
    vy = y[4]
    vz = y[5]
    m = y[6]
    _gravity_drag(
        rx, ry, rz, vx, vy, vz, m, cd_area_m2, j2_on, table_alt_m, table_log_rho, out_dy[3:6]
    )
    fx_h = force_H_N[0]
    fy_h = force_H_N[1]
    fz_h = force_H_N[2]
    if (fx_h != 0.0 or fy_h != 0.0 or fz_h != 0.0) and m > 0.0:
        # LVLH axes in N, F_N = dcm_HN.T @ F_H.
        xx, xy, xz, yx, yy, yz, zx, zy, zz = lvlh_axes(rx, ry, rz, vx, vy, vz)
        inv_m = 1.0 / m
        out_dy[3] += (fx_h * xx + fy_h * yx + fz_h * zx) * inv_m
        out_dy[4] += (fx_h * xy + fy_h * yy + fz_h * zy) * inv_m
        out_dy[5] += (fx_h * xz + fy_h * yz + fz_h * zz) * inv_m
    out_dy[0] = vx
    out_dy[1] = vy
    out_dy[2] = vz
    out_dy[6] = -mdot_kg_s


@kernel
def rk4_step(
    y, h_s, force_H_N, mdot_kg_s, cd_area_m2, j2_on, table_alt_m, table_log_rho, work, out_y
):
    """One classical RK4 step of length h_s [s] from y (7,) into out_y (7,).

    force_H_N (3,) [N] is fixed in LVLH and re-resolved into N from each stage's (r, v); the mass
    derivative is -mdot_kg_s [kg/s]. Zero force and mdot = 0 mean coast. work: float64 scratch of
    at least RK4_WORK_SIZE elements. out_y may not alias y.
    """
    k1 = work[0:7]
    k2 = work[7:14]
    k3 = work[14:21]
    k4 = work[21:28]
    ys = work[28:35]
    _derivative(y, force_H_N, mdot_kg_s, cd_area_m2, j2_on, table_alt_m, table_log_rho, k1)
    for i in range(7):
        ys[i] = y[i] + 0.5 * h_s * k1[i]
    _derivative(ys, force_H_N, mdot_kg_s, cd_area_m2, j2_on, table_alt_m, table_log_rho, k2)
    for i in range(7):
        ys[i] = y[i] + 0.5 * h_s * k2[i]
    _derivative(ys, force_H_N, mdot_kg_s, cd_area_m2, j2_on, table_alt_m, table_log_rho, k3)
    for i in range(7):
        ys[i] = y[i] + h_s * k3[i]
    _derivative(ys, force_H_N, mdot_kg_s, cd_area_m2, j2_on, table_alt_m, table_log_rho, k4)
    sixth = h_s / 6.0
    for i in range(7):
        out_y[i] = y[i] + sixth * (k1[i] + 2.0 * k2[i] + 2.0 * k3[i] + k4[i])


@kernel
def propagate(
    y0,
    dt_s,
    n_steps,
    n_sub,
    burn_start_s,
    burn_stop_s,
    force_H_N,
    mdot_kg_s,
    cd_area_m2,
    j2_on,
    table_alt_m,
    table_log_rho,
    out_y,
):
    """Propagate y0 (7,) for n_steps outer steps of dt_s [s], writing out_y[k] = y(k dt_s).

    out_y: (n_steps + 1, 7); out_y[0] = y0. Each outer step is n_sub equal RK4 sub-steps. The
    thrust (force_H_N [N] in LVLH, mass flow mdot_kg_s [kg/s]) is on for t in
    [burn_start_s, burn_stop_s) with t measured from y0's epoch; a sub-step that contains a burn
    edge is split exactly at the edge, so the thrust acts for exactly burn_stop_s - burn_start_s
    and the delivered impulse and propellant used do not depend on dt_s or n_sub (beyond the
    integrator's own truncation error). burn_stop_s <= burn_start_s means no burn.

    Returns STATUS_OK, STATUS_BAD_ARGS (nothing written) or STATUS_NONFINITE (the state became
    non-finite, e.g. after re-entry far below the table; later rows are NaN). The only
    allocations are two small scratch arrays made once at entry.
    """
    if n_sub < 1 or not (dt_s > 0.0) or n_steps < 0:
        return STATUS_BAD_ARGS
    if out_y.shape[0] < n_steps + 1 or out_y.shape[1] != 7:
        return STATUS_BAD_ARGS
    work = np.empty(RK4_WORK_SIZE)
    ybuf = np.empty((2, 7))
    zero_f = np.zeros(3)
    cur = ybuf[0]
    nxt = ybuf[1]
    for i in range(7):
        cur[i] = y0[i]
        out_y[0, i] = y0[i]
    burn = burn_stop_s > burn_start_s
    h = dt_s / n_sub
    for k in range(n_steps):
        t_outer = k * dt_s
        for j in range(n_sub):
            t0 = t_outer + j * h
            t1 = (k + 1) * dt_s if j == n_sub - 1 else t_outer + (j + 1) * h
            # Walk the sub-step [t0, t1] through the burn edges that fall strictly inside it.
            ta = t0
            while ta < t1:
                tb = t1
                if burn:
                    if ta < burn_start_s < tb:
                        tb = burn_start_s
                    if ta < burn_stop_s < tb:
                        tb = burn_stop_s
                tm = 0.5 * (ta + tb)
                if burn and burn_start_s <= tm < burn_stop_s:
                    rk4_step(
                        cur,
                        tb - ta,
                        force_H_N,
                        mdot_kg_s,
                        cd_area_m2,
                        j2_on,
                        table_alt_m,
                        table_log_rho,
                        work,
                        nxt,
                    )
                else:
                    rk4_step(
                        cur,
                        tb - ta,
                        zero_f,
                        0.0,
                        cd_area_m2,
                        j2_on,
                        table_alt_m,
                        table_log_rho,
                        work,
                        nxt,
                    )
                tmp = cur
                cur = nxt
                nxt = tmp
                ta = tb
        ok = True
        for i in range(7):
            out_y[k + 1, i] = cur[i]
            if not math.isfinite(cur[i]):
                ok = False
        if not ok:
            for kk in range(k + 1, n_steps + 1):
                for i in range(7):
                    out_y[kk, i] = math.nan
            return STATUS_NONFINITE
    return STATUS_OK


# --------------------------------------------------------------------------------------------
# Coasting on scalars: propagate() without thrust, without the arrays
# --------------------------------------------------------------------------------------------
# The orbit evaluation after every burn (and every Monte-Carlo case) coasts about 2,900 RK4
# steps of ~4 s (11,700 of 1 s before issue 18's mc18b). propagate() does that through 7-element
# stage buffers and array views, whose bookkeeping costs more than the physics; these kernels keep
# the state in locals. They perform the same floating-point operations in the same order as
# propagate(y0, dt_s, n, 1, 0, 0, 0, 0, ...), so their states are bit-for-bit propagate()'s
# (tests/test_orbit.py and tests/test_speed_golden.py check it): the mass stays exactly y0[6] (its
# derivative is -0.0) and a step's length is (k + 1) dt_s - k dt_s, as propagate() measures it,
# not dt_s. The density lookups take each table segment's slope from log_density_slopes (the
# same quotient density_kg_m3 divides out at every lookup, so the same bits, without a division
# on the step's dependency chain).


@inline_kernel
def coast_step(
    rx, ry, rz, vx, vy, vz, m, h_s, cd_area_m2, j2_on, table_alt_m, table_log_rho, table_slope
):
    """One RK4 coast step of h_s [s] (gravity, J2, drag; mass m [kg] constant): the new
    (rx, ry, rz, vx, vy, vz) [m, m/s] in N, exactly as :func:`rk4_step` with zero thrust."""
    hh = 0.5 * h_s
    a1x, a1y, a1z = _gravity_drag_sloped_xyz(
        rx, ry, rz, vx, vy, vz, m, cd_area_m2, j2_on, table_alt_m, table_log_rho, table_slope
    )
    # stage 2 from y + h/2 k1 (k1's position part is v)
    sx = rx + hh * vx
    sy = ry + hh * vy
    sz = rz + hh * vz
    ux = vx + hh * a1x
    uy = vy + hh * a1y
    uz = vz + hh * a1z
    a2x, a2y, a2z = _gravity_drag_sloped_xyz(
        sx, sy, sz, ux, uy, uz, m, cd_area_m2, j2_on, table_alt_m, table_log_rho, table_slope
    )
    # stage 3 from y + h/2 k2
    sx = rx + hh * ux
    sy = ry + hh * uy
    sz = rz + hh * uz
    wx = vx + hh * a2x
    wy = vy + hh * a2y
    wz = vz + hh * a2z
    a3x, a3y, a3z = _gravity_drag_sloped_xyz(
        sx, sy, sz, wx, wy, wz, m, cd_area_m2, j2_on, table_alt_m, table_log_rho, table_slope
    )
    # stage 4 from y + h k3
    sx = rx + h_s * wx
    sy = ry + h_s * wy
    sz = rz + h_s * wz
    px = vx + h_s * a3x
    py = vy + h_s * a3y
    pz = vz + h_s * a3z
    a4x, a4y, a4z = _gravity_drag_sloped_xyz(
        sx, sy, sz, px, py, pz, m, cd_area_m2, j2_on, table_alt_m, table_log_rho, table_slope
    )
    sixth = h_s / 6.0
    return (
        rx + sixth * (vx + 2.0 * ux + 2.0 * wx + px),
        ry + sixth * (vy + 2.0 * uy + 2.0 * wy + py),
        rz + sixth * (vz + 2.0 * uz + 2.0 * wz + pz),
        vx + sixth * (a1x + 2.0 * a2x + 2.0 * a3x + a4x),
        vy + sixth * (a1y + 2.0 * a2y + 2.0 * a3y + a4y),
        vz + sixth * (a1z + 2.0 * a2z + 2.0 * a3z + a4z),
    )


#: :func:`coast_step` as a function of its own, not inlined in numba's IR: for the cold paths
#: (coast_mean_apsides_pair's single-state steps, taken only once one state became non-finite).
#: Each IR-inlined copy of the step (four accelerations, each with its density lookup) costs
#: seconds of compile time on every fresh install; the same operations in the same order, so the
#: same bits.
coast_step_call = kernel(coast_step.py_func)


@inline_kernel
def coast_step_pair(
    rx,
    ry,
    rz,
    vx,
    vy,
    vz,
    m,
    qx,
    qy,
    qz,
    ux,
    uy,
    uz,
    mq,
    h_s,
    cd_area_m2,
    table_alt_m,
    table_log_rho,
    table_slope,
):
    """:func:`coast_step` (J2 on) of two independent states: the new (r, v) of the first
    (m [kg]) then of the second (mq [kg]), each exactly what :func:`coast_step` gives it alone
    (it is that kernel, twice). Both are inlined into the caller's loop body, so the compiler
    may overlap the two independent chains of square roots, divisions and density exponentials;
    the orbit evaluation after a burn coasts the burned state and its no-burn twin this way."""
    a = coast_step(
        rx, ry, rz, vx, vy, vz, m, h_s, cd_area_m2, 1.0, table_alt_m, table_log_rho, table_slope
    )
    b = coast_step(
        qx, qy, qz, ux, uy, uz, mq, h_s, cd_area_m2, 1.0, table_alt_m, table_log_rho, table_slope
    )
    return a[0], a[1], a[2], a[3], a[4], a[5], b[0], b[1], b[2], b[3], b[4], b[5]


@inline_kernel
def finite_state(rx, ry, rz, vx, vy, vz, m):
    return (
        math.isfinite(rx)
        and math.isfinite(ry)
        and math.isfinite(rz)
        and math.isfinite(vx)
        and math.isfinite(vy)
        and math.isfinite(vz)
        and math.isfinite(m)
    )


@kernel
def coast_to(y0, dt_s, n_steps, cd_area_m2, j2_on, table_alt_m, table_log_rho, out_y):
    """The state after n_steps coast steps of dt_s [s] from y0 (7,) into out_y (7,): what
    ``propagate(y0, dt_s, n_steps, 1, 0.0, 0.0, zeros, 0.0, ...)`` leaves in its last row, with
    its status (STATUS_NONFINITE: out_y is NaN). The only array made is the density table's
    slopes (:func:`thruster_hil.sims.atmosphere.log_density_slopes`)."""
    if not (dt_s > 0.0) or n_steps < 0:
        return STATUS_BAD_ARGS
    slope = log_density_slopes(table_alt_m, table_log_rho)
    rx, ry, rz, vx, vy, vz, m = y0[0], y0[1], y0[2], y0[3], y0[4], y0[5], y0[6]
    status = STATUS_OK
    for k in range(n_steps):
        t0 = k * dt_s + 0 * dt_s
        t1 = (k + 1) * dt_s
        if t0 < t1:
            rx, ry, rz, vx, vy, vz = coast_step(
                rx, ry, rz, vx, vy, vz, m, t1 - t0, cd_area_m2, j2_on, table_alt_m, table_log_rho,
                slope,
            )  # fmt: skip
        if not finite_state(rx, ry, rz, vx, vy, vz, m):
            # propagate() overwrites the first non-finite row and every later one with NaN
            status = STATUS_NONFINITE
            rx = ry = rz = vx = vy = vz = m = math.nan
            break
    out_y[0] = rx
    out_y[1] = ry
    out_y[2] = rz
    out_y[3] = vx
    out_y[4] = vy
    out_y[5] = vz
    out_y[6] = m
    return status


# --------------------------------------------------------------------------------------------
# Element conversions
# --------------------------------------------------------------------------------------------

# Below these, the orbit is treated as circular (e) / equatorial (sin i): the undefined angles are
# set by convention instead of becoming NaN.
_E_CIRCULAR = 1e-11
_SIN_I_EQUATORIAL = 1e-11


@kernel
def _wrap_2pi(x):
    """Map an atan2 result in [-pi, pi] to [0, 2 pi)."""
    if x < 0.0:
        x += TWO_PI
    if x >= TWO_PI:  # -tiny + 2 pi rounds to 2 pi
        x = 0.0
    return x


@kernel
def elements_from_rv(r_N, v_N, mu):
    """Osculating classical elements (a [m], e, i, raan, argp, nu [rad]) from r_N [m], v_N [m/s].

    Angles in [0, 2 pi) (i in [0, pi]). Near-circular (e < 1e-11): argp = 0 and nu is measured
    from the ascending node (argument of latitude). Near-equatorial (sin i < 1e-11): raan = 0 and
    the node line is replaced by x_N (argp becomes the longitude of periapsis, or nu the true
    longitude if also circular). a = -mu / (2 energy): negative for hyperbolic orbits, inf for
    parabolic. Never NaN for a finite state with r != 0 and h != 0. Vallado 4th ed., alg. 9.
    """
    rx = r_N[0]
    ry = r_N[1]
    rz = r_N[2]
    vx = v_N[0]
    vy = v_N[1]
    vz = v_N[2]
    r = math.sqrt(rx * rx + ry * ry + rz * rz)
    v2 = vx * vx + vy * vy + vz * vz
    rv = rx * vx + ry * vy + rz * vz
    hx = ry * vz - rz * vy
    hy = rz * vx - rx * vz
    hz = rx * vy - ry * vx
    h = math.sqrt(hx * hx + hy * hy + hz * hz)
    ux = hx / h
    uy = hy / h
    uz = hz / h  # orbit normal unit vector
    c1 = v2 - mu / r
    ex = (c1 * rx - rv * vx) / mu
    ey = (c1 * ry - rv * vy) / mu
    ez = (c1 * rz - rv * vz) / mu
    e = math.sqrt(ex * ex + ey * ey + ez * ez)
    energy = 0.5 * v2 - mu / r
    a = -mu / (2.0 * energy)
    i = math.atan2(math.sqrt(hx * hx + hy * hy), hz)
    # Node line n = z x h = (-hy, hx, 0).
    nn = math.sqrt(hx * hx + hy * hy)
    if nn > _SIN_I_EQUATORIAL * h:
        nx = -hy / nn
        ny = hx / nn
        raan = _wrap_2pi(math.atan2(hx, -hy))
    else:
        nx = 1.0
        ny = 0.0
        raan = 0.0
    # Reference direction in the plane for argp/nu: periapsis, or the node line if circular.
    if e > _E_CIRCULAR:
        px = ex / e
        py = ey / e
        pz = ez / e
        # argp = angle from n to p about u: atan2((n x p) . u, n . p)
        s = (ny * pz) * ux - (nx * pz) * uy + (nx * py - ny * px) * uz
        c = nx * px + ny * py
        argp = _wrap_2pi(math.atan2(s, c))
    else:
        px = nx
        py = ny
        pz = 0.0
        argp = 0.0
    # nu = angle from p to r about u.
    s = ((py * rz - pz * ry) * ux + (pz * rx - px * rz) * uy + (px * ry - py * rx) * uz) / r
    c = (px * rx + py * ry + pz * rz) / r
    nu = _wrap_2pi(math.atan2(s, c))
    return a, e, i, raan, argp, nu


@kernel
def rv_from_elements(a, e, i, raan, argp, nu, mu, out_r, out_v):
    """Position [m] and velocity [m/s] in N from classical elements (elliptic, e < 1).

    Perifocal state rotated by R3(-raan) R1(-i) R3(-argp) (Vallado 4th ed., alg. 10).
    """
    p = a * (1.0 - e * e)
    cnu = math.cos(nu)
    snu = math.sin(nu)
    r = p / (1.0 + e * cnu)
    xp = r * cnu
    yp = r * snu
    sq = math.sqrt(mu / p)
    vxp = -sq * snu
    vyp = sq * (e + cnu)
    co = math.cos(raan)
    so = math.sin(raan)
    cw = math.cos(argp)
    sw = math.sin(argp)
    ci = math.cos(i)
    si = math.sin(i)
    # Columns of the perifocal -> N rotation (P and Q unit vectors).
    p1 = co * cw - so * sw * ci
    p2 = so * cw + co * sw * ci
    p3 = sw * si
    q1 = -co * sw - so * cw * ci
    q2 = -so * sw + co * cw * ci
    q3 = cw * si
    out_r[0] = p1 * xp + q1 * yp
    out_r[1] = p2 * xp + q2 * yp
    out_r[2] = p3 * xp + q3 * yp
    out_v[0] = p1 * vxp + q1 * vyp
    out_v[1] = p2 * vxp + q2 * vyp
    out_v[2] = p3 * vxp + q3 * vyp


def a_e_from_apsis_altitudes(perigee_alt_m: float, apogee_alt_m: float) -> tuple[float, float]:
    """(a [m], e) from perigee and apogee altitudes [m] above R_EARTH (spherical).

    Requires apogee_alt_m >= perigee_alt_m (swap them if not; the caller validates inputs).
    """
    rp = R_EARTH + perigee_alt_m
    ra = R_EARTH + apogee_alt_m
    a = 0.5 * (rp + ra)
    return a, (ra - rp) / (ra + rp)


def apsis_altitudes(a: float, e: float) -> tuple[float, float]:
    """(perigee_alt_m, apogee_alt_m) [m] above R_EARTH from a [m] and e."""
    return a * (1.0 - e) - R_EARTH, a * (1.0 + e) - R_EARTH


def mean_altitude_m(a: float) -> float:
    """Mean altitude [m] of an orbit of semi-major axis a [m]: a - R_EARTH."""
    return a - R_EARTH


def period_s(a: float, mu: float = MU_EARTH) -> float:
    """Keplerian period [s]: 2 pi sqrt(a^3 / mu)."""
    return TWO_PI * math.sqrt(a * a * a / mu)


def _a_and_evec(states: np.ndarray, mu: float) -> tuple[np.ndarray, np.ndarray]:
    """Osculating a (K,) [m] and eccentricity vector (K, 3) of states (K, >=6), vectorised."""
    r = states[:, 0:3]
    v = states[:, 3:6]
    rn = np.linalg.norm(r, axis=1)
    v2 = np.einsum("ij,ij->i", v, v)
    rv = np.einsum("ij,ij->i", r, v)
    a = -mu / (2.0 * (0.5 * v2 - mu / rn))
    evec = ((v2 - mu / rn)[:, None] * r - rv[:, None] * v) / mu
    return a, evec


def mean_apsides(
    states: np.ndarray, dt_s: float, mu: float = MU_EARTH
) -> tuple[float, float, float]:
    """Orbit-averaged (a_mean [m], perigee_alt_m, apogee_alt_m) from one period of samples.

    states: (K, 7) (or (K, >=6)) samples every dt_s [s] spanning exactly one orbital period,
    first and last sample one period apart. The osculating semi-major axis and the osculating
    eccentricity *vector* are averaged with the trapezoid rule over that period, which removes
    the J2 short-period terms (several km in a, perigee and apogee at ISS altitude); then
    perigee/apogee altitudes are a_mean (1 -/+ |e_mean|) - R_EARTH. This is an orbit average of
    osculating elements, not Brouwer/Kozai mean elements; use it consistently, e.g. as the
    difference between a burn and a no-burn propagation (../shared/DESIGN.md asks burns to be
    reported as mean elements or as differences from a no-burn propagation).
    """
    states = np.asarray(states, dtype=np.float64)
    if states.ndim != 2 or states.shape[0] < 2 or states.shape[1] < 6:
        raise ValueError("states must be (K >= 2, 7)")
    a, evec = _a_and_evec(states, mu)
    w = np.full(states.shape[0], dt_s)
    w[0] *= 0.5
    w[-1] *= 0.5
    wsum = np.sum(w)
    a_mean = float(np.sum(w * a) / wsum)
    e_mean = float(np.linalg.norm(np.sum(w[:, None] * evec, axis=0) / wsum))
    return a_mean, a_mean * (1.0 - e_mean) - R_EARTH, a_mean * (1.0 + e_mean) - R_EARTH


def rv_before_apsis(
    a_m: float,
    e: float,
    incl_rad: float,
    seconds_to_apsis: float,
    apsis: str = "apogee",
    raan_rad: float = 0.0,
    argp_rad: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """(r_BN_N [m], v_BN_N [m/s]) on the two-body orbit (a, e, i, RAAN, argp) that reaches
    ``apsis`` ("apogee" or "perigee") ``seconds_to_apsis`` [s] later (Kepler's equation by
    Newton's method; Vallado, Algorithm 2)."""
    n = math.sqrt(MU_EARTH / a_m**3)
    mean_anomaly = (math.pi if apsis == "apogee" else 0.0) - n * seconds_to_apsis
    big_e = mean_anomaly if e < 0.8 else math.pi
    for _ in range(50):
        step = (big_e - e * math.sin(big_e) - mean_anomaly) / (1.0 - e * math.cos(big_e))
        big_e -= step
        if abs(step) < 1e-15:
            break
    nu = 2.0 * math.atan2(
        math.sqrt(1.0 + e) * math.sin(big_e / 2.0), math.sqrt(1.0 - e) * math.cos(big_e / 2.0)
    )
    r = np.empty(3)
    v = np.empty(3)
    rv_from_elements(a_m, e, incl_rad, raan_rad, argp_rad, nu, MU_EARTH, r, v)
    return r, v


def mean_change(
    y_burn: np.ndarray,
    y_coast: np.ndarray,
    period_s: float,
    cd_area_m2: float,
    table: tuple[np.ndarray, np.ndarray],
    step_s: float = 1.0,
) -> dict:
    """What a burn changed, as mean elements: orbit-average the burned state and its no-burn twin
    (two-body + J2 + drag, the same epoch) over the next orbit and difference them.

    ``y_burn``/``y_coast`` are 7-states [r, v, m]; returns d_a_m, d_perigee_m, d_apogee_m [m].
    The window is exactly ``period_s``, in n = round(period_s / step_s) equal steps, and the
    average takes all n + 1 states from 0 to period_s (mean_apsides: first and last sample one
    period apart). It once took the first n states of n steps of exactly step_s, a window up to
    1.5 steps short of the period, which cost cm in the mean apsides (docs/montecarlo.md, "The
    orbit evaluation's step": the same defect in the Monte-Carlo's orbit_change).
    """
    n_window = max(1, int(round(period_s / step_s)))
    h = period_s / n_window
    alt, log_rho = table
    out = np.empty((n_window + 1, 7))
    means = []
    for y in (y_burn, y_coast):
        propagate(
            np.ascontiguousarray(y[:7], dtype=np.float64),
            h,
            n_window,
            1,
            0.0,
            0.0,
            np.zeros(3),
            0.0,
            cd_area_m2,
            1.0,
            alt,
            log_rho,
            out,
        )
        means.append(mean_apsides(out, h, MU_EARTH))
    (a_b, rp_b, ra_b), (a_c, rp_c, ra_c) = means
    return {"d_a_m": a_b - a_c, "d_perigee_m": rp_b - rp_c, "d_apogee_m": ra_b - ra_c}
