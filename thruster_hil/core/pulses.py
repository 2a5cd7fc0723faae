"""The pulse model shared by the plant and the controller: the impulse of one valve command.

Pulse model (one command per control cycle, commanded at t = 0 of the cycle, on-time ``t_on``):

* ``t_on <= 0`` (or NaN): no pulse at all.
* The valve opens at ``t_o = open_delay`` and closes at ``t_c = t_on + close_delay``. If
  ``t_c <= t_o`` the valve never opens and there is no impulse.
* While open, thrust rises first-order: ``F(t) = F_ss (1 - exp(-(t - t_o)/tau_rise))``.
* After closing it tails off: ``F(t) = F(t_c) exp(-(t - t_c)/tau_tail)``.
* ``tau = 0`` means an instantaneous step (handled without dividing by zero).

With ``T = t_c - t_o`` the whole-pulse impulse is (integrating the two pieces by hand)

    I(T) = F_ss [T + (tau_tail - tau_rise)(1 - exp(-T/tau_rise))],

strictly increasing in T, so in ``t_on`` for ``t_on > open_delay - close_delay``.

All functions are numba kernels (``thruster_hil.core.jit.kernel``): pure, SI units, outputs
preallocated by the caller, no exceptions (status codes / documented fallback values),
deterministic.
"""

import math

import numpy as np

from thruster_hil.core.jit import kernel

# Fixed iteration budget for on_time_for_impulse's bisection (converges to adjacent doubles well
# before this; the loop stops early when the bracket cannot shrink further).
_BISECT_ITERS = 200
_NEWTON_ITERS = 12
# Smallest positive double: lower end of the bisection bracket in the valve-open time T [s].
_SMALLEST_T = 5e-324


@kernel
def _one_minus_exp(x):
    """``1 - exp(-x)`` accurate for small x."""
    return -math.expm1(-x)


@kernel
def _rise_excess(du, tau):
    """``tau (x - (1 - exp(-x)))`` with ``x = du/tau``, du >= 0, tau > 0, without cancellation or
    overflow (tau may be subnormal).

    With ``sum_{k>=2} (-x)^k/k!`` below x = 0.05 (truncated after x^10: relative error < 1e-18),
    ``x + expm1(-x)`` on [0.05, 1) (relative rounding error < 2 eps/x < 1e-14), and
    ``du - tau (1 - exp(-x))`` from x = 1 (relative rounding error < 3 eps).
    """
    x = du / tau
    if x >= 1.0:
        return du - tau * _one_minus_exp(x)
    return tau * _x_minus_one_minus_exp(x)


@kernel
def _x_minus_one_minus_exp(x):
    """``x - (1 - exp(-x)) = sum_{k>=2} (-x)^k/k!`` for 0 <= x < 1 (see ``_rise_excess``)."""
    if x < 0.05:
        # Horner form of x^2/2! - x^3/3! + ... + x^10/10!
        acc = 1.0 / 3628800.0
        acc = 1.0 / 362880.0 - x * acc
        acc = 1.0 / 40320.0 - x * acc
        acc = 1.0 / 5040.0 - x * acc
        acc = 1.0 / 720.0 - x * acc
        acc = 1.0 / 120.0 - x * acc
        acc = 1.0 / 24.0 - x * acc
        acc = 1.0 / 6.0 - x * acc
        acc = 0.5 - x * acc
        return x * x * acc
    return x + math.expm1(-x)


@kernel
def pulse_impulse(
    t_on_s, t_a_s, t_b_s, thrust_N, open_delay_s, close_delay_s, tau_rise_s, tau_tail_s
):
    """Impulse [N s] of one pulse delivered in the time window ``[t_a_s, t_b_s]`` of the cycle.

    Times from the command instant (t = 0). ``t_b_s`` may be ``inf`` (rest of the pulse) and
    ``t_a_s`` may be ``-inf``. Analytic integral of the module's pulse model; windows that
    partition the time axis give impulses that sum to the whole pulse (to rounding).
    Returns 0 for no pulse, an empty window or ``thrust_N <= 0``.
    """
    if not (t_on_s > 0.0) or not (thrust_N > 0.0) or not (t_b_s > t_a_s):
        return 0.0
    t_o = open_delay_s
    t_c = t_on_s + close_delay_s
    if not (t_c > t_o):
        return 0.0
    total = 0.0
    # Valve open: rising thrust on [t_o, t_c].
    a = max(t_a_s, t_o)
    b = min(t_b_s, t_c)
    if b > a:
        ua = a - t_o
        du = b - a
        if tau_rise_s > 0.0:
            # F_ss [du - tau (exp(-ua/tau) - exp(-ub/tau))]
            #   = F_ss [du (1 - e^{-ua/tau}) + tau e^{-ua/tau} (x - (1 - e^{-x}))], x = du/tau:
            # two non-negative terms, so short windows never come out negative by cancellation.
            e_a = math.exp(-ua / tau_rise_s)
            total += thrust_N * (
                du * _one_minus_exp(ua / tau_rise_s) + e_a * _rise_excess(du, tau_rise_s)
            )
        else:
            total += thrust_N * du
    # Valve closed: tail-off from F(t_c) on [t_c, inf).
    if tau_tail_s > 0.0:
        a = max(t_a_s, t_c)
        if t_b_s > a:
            if tau_rise_s > 0.0:
                f_c = thrust_N * _one_minus_exp((t_c - t_o) / tau_rise_s)
            else:
                f_c = thrust_N
            sa = a - t_c
            total += (
                f_c
                * tau_tail_s
                * math.exp(-sa / tau_tail_s)
                * _one_minus_exp((t_b_s - a) / tau_tail_s)
            )
    return total


@kernel
def _impulse_of_open_time(T, thrust_N, tau_rise_s, tau_tail_s):
    """Whole-pulse impulse for valve-open time T > 0 (closed form, see module docstring)."""
    if tau_rise_s > 0.0:
        return thrust_N * (T + (tau_tail_s - tau_rise_s) * _one_minus_exp(T / tau_rise_s))
    return thrust_N * (T + max(tau_tail_s, 0.0))


@kernel
def effective_impulse(t_on_s, thrust_N, open_delay_s, close_delay_s, tau_rise_s, tau_tail_s):
    """Whole-pulse impulse [N s] of a command ``t_on_s`` [s]:
    ``F_ss [T + (tau_tail - tau_rise)(1 - exp(-T/tau_rise))]`` with ``T = t_on + t_cd - t_od``
    (``F_ss (T + tau_tail)`` when ``tau_rise = 0``); 0 when there is no pulse."""
    if not (t_on_s > 0.0) or not (thrust_N > 0.0):
        return 0.0
    T = t_on_s + close_delay_s - open_delay_s
    if not (T > 0.0):
        return 0.0
    return _impulse_of_open_time(T, thrust_N, tau_rise_s, tau_tail_s)


@kernel
def on_time_for_impulse(impulse_Ns, thrust_N, open_delay_s, close_delay_s, tau_rise_s, tau_tail_s):
    """Commanded on-time [s] whose ``effective_impulse`` equals ``impulse_Ns`` [N s].

    Inverts the strictly increasing closed form in the valve-open time T by a safeguarded
    Newton iteration (a few steps for ordinary time constants), finished if needed by bisection
    on the bracket ``[max(0, I/F - tau_tail), I/F + tau_rise]`` (``F T - F tau_rise <= I(T) <=
    F T + F tau_tail``), geometric while the bracket spans more than a factor 4, then arithmetic,
    with a fixed budget of iterations (200; ~70 are used at most) that stops when the bracket
    reaches adjacent doubles. Returns ``T + open_delay - close_delay``, clamped below at 0:

    * ``impulse_Ns <= 0`` (or NaN), ``thrust_N <= 0``: 0.
    * Requests at or below what the shortest possible pulse gives return the on-time of no
      pulse (no impulse): 0.0 when ``close_delay > open_delay`` (an infinitesimal command already
      gives ``I(close_delay - open_delay)``), or ``open_delay - close_delay`` (valve-open time
      T = 0) when ``tau_rise = 0`` and the request is ``<= F tau_tail`` (an instantaneous rise
      makes the impulse jump to ``F tau_tail`` as T -> 0+). The controller decides about
      sub-minimum bits (see ``minimum_impulse_bit``).

    No upper clamp: the caller clamps to the control period.
    """
    if not (impulse_Ns > 0.0) or not (thrust_N > 0.0):
        return 0.0
    ratio = impulse_Ns / thrust_N
    lo = max(0.0, ratio - max(tau_tail_s, 0.0))
    hi = ratio + max(tau_rise_s, 0.0)
    T = hi  # the bracket is a single point when tau_rise = tau_tail = 0: T = I/F exactly
    if lo == 0.0:
        lo = _SMALLEST_T
        if _impulse_of_open_time(lo, thrust_N, tau_rise_s, tau_tail_s) >= impulse_Ns:
            T = 0.0  # even the shortest opening delivers the request: no pulse
            hi = lo
    converged = False
    if hi > lo and tau_rise_s > 0.0:
        # Safeguarded Newton first (a few steps for ordinary time constants, as the controller
        # needs every cycle); it keeps the bracket, and bisection finishes what it does not.
        d = tau_tail_s - tau_rise_s
        T = min(max(ratio - d, lo), hi)
        for _ in range(_NEWTON_ITERS):
            e = math.exp(-T / tau_rise_s)
            g = _impulse_of_open_time(T, thrust_N, tau_rise_s, tau_tail_s) - impulse_Ns
            if g < 0.0:
                lo = T
            elif g > 0.0:
                hi = T
            else:
                converged = True
                break
            dg = thrust_N * (1.0 + d / tau_rise_s * e)
            t_new = T - g / dg if dg > 0.0 else 0.5 * (lo + hi)
            if not (lo < t_new < hi):
                t_new = 0.5 * (lo + hi)
            if abs(t_new - T) <= 1e-13 * T:
                T = t_new
                converged = True
                break
            T = t_new
    if hi > lo and not converged:
        for _ in range(_BISECT_ITERS):
            if hi > 4.0 * lo:
                # geometric phase: halves log(hi/lo), so a root many decades below the top of
                # the bracket (tiny tau_rise) is reached in ~11 steps instead of ~1000
                mid = math.sqrt(lo) * math.sqrt(hi)
            else:
                mid = 0.5 * (lo + hi)
            if not (mid > lo and mid < hi):
                break
            if _impulse_of_open_time(mid, thrust_N, tau_rise_s, tau_tail_s) < impulse_Ns:
                lo = mid
            else:
                hi = mid
        # pick the closer end of the final bracket
        e_lo = impulse_Ns - _impulse_of_open_time(lo, thrust_N, tau_rise_s, tau_tail_s)
        e_hi = _impulse_of_open_time(hi, thrust_N, tau_rise_s, tau_tail_s) - impulse_Ns
        T = lo if e_lo < e_hi else hi
    if T == _SMALLEST_T:
        T = 0.0
    t_on = T + open_delay_s - close_delay_s
    if T == 0.0:
        # no pulse: make sure rounding in t_on + close_delay - open_delay cannot reopen the valve
        for _ in range(8):
            if not (t_on > 0.0) or not (t_on + close_delay_s - open_delay_s > 0.0):
                break
            t_on = np.nextafter(t_on, -np.inf)
    if not (t_on > 0.0):
        return 0.0
    return t_on


@kernel
def minimum_impulse_bit(
    min_on_time_s, thrust_N, open_delay_s, close_delay_s, tau_rise_s, tau_tail_s
):
    """Impulse [N s] of the shortest allowed command: ``effective_impulse(min_on_time_s, ...)``."""
    return effective_impulse(
        min_on_time_s, thrust_N, open_delay_s, close_delay_s, tau_rise_s, tau_tail_s
    )


@kernel
def attributed_impulse(
    t_on_s, continuing, thrust_N, open_delay_s, close_delay_s, tau_rise_s, tau_tail_s
):
    """The impulse [N s] a command adds, booked to the cycle that commands it.

    A pulse that starts from a closed valve books its whole effective impulse (tail and close
    delay included, though they land in the next cycle). A command that continues a previous
    full-cycle command (``continuing``) keeps the valve open: it books ``thrust * t_on``, because
    its run's tail was booked when the run started. Over a run of cycles the bookings add up to
    the run's delivered impulse exactly, once the run is long against ``tau_rise`` (1 - exp(-T/
    tau_rise) = 1 to double precision), which is what :func:`valve_cycle` delivers; the pulse
    modulator books with this and so conserves impulse.
    """
    if not (t_on_s > 0.0):
        return 0.0
    if continuing:
        return thrust_N * t_on_s
    return effective_impulse(t_on_s, thrust_N, open_delay_s, close_delay_s, tau_rise_s, tau_tail_s)


@kernel
def gimbal_direction(u0, e1, e2, d1, d2, out_u, out_du1, out_du2):
    """Thrust direction of an engine gimbaled by ``d1``, ``d2`` [rad] and its two derivatives.

    ``u0`` is the undeflected unit direction, ``e1``, ``e2`` unit vectors perpendicular to it
    and to each other. The direction is the unit vector at azimuth ``d1`` (from u0 towards e1)
    and elevation ``d2`` (towards e2):
    ``u = cos d2 (cos d1 u0 + sin d1 e1) + sin d2 e2``, so ``|u| = 1`` exactly and small angles
    tilt it by about ``d1 e1 + d2 e2``. Writes u, du/dd1 and du/dd2 (3 each).
    """
    c1 = math.cos(d1)
    s1 = math.sin(d1)
    c2 = math.cos(d2)
    s2 = math.sin(d2)
    for k in range(3):
        p = c1 * u0[k] + s1 * e1[k]
        out_u[k] = c2 * p + s2 * e2[k]
        out_du1[k] = c2 * (c1 * e1[k] - s1 * u0[k])
        out_du2[k] = c2 * e2[k] - s2 * p
