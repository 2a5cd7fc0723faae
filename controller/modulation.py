"""Pulse modulation: impulse requests -> valve on-times, conserving impulse over time.

Each cycle a thruster is asked for an impulse. The modulator adds it to the thruster's running
remainder and commands the on-time whose impulse (valve delays, rise and tail-off included, as
booked by :func:`thruster_hil.sims.thrusters.attributed_impulse`) matches the remainder, then
subtracts what it booked. So nothing requested is ever dropped:

* Minimum on-time: a remainder below the minimum impulse bit (MIB, the impulse of the minimum
  on-time) is carried forward; once it reaches half a MIB a minimum pulse fires (booking a whole
  MIB), which keeps the remainder within +-MIB/2. Over any window of cycles the delivered impulse
  therefore equals the requested impulse within one MIB per thruster.
* Valve delays: the on-time comes from inverting the pulse-impulse model
  (:func:`thruster_hil.sims.thrusters.on_time_for_impulse` on the closed form
  ``I(T) = F [T + (tau_tail - tau_rise)(1 - exp(-T/tau_rise))]``, T = t_on + t_cd - t_od),
  and a command that continues a full-cycle command books plain ``F t_on``: the valve is
  already open.
* Full cycles: a request of a whole cycle's impulse (``T_MAX_IMPULSE``) opens the valve for
  the whole cycle when the impulse that books leaves the remainder within half a MIB; a run of
  such cycles is one continuous firing, its tail booked once, at its start.
* Tick: on-times are rounded to the unit's tick (1 ms); the rounding error stays in the
  remainder. An on-time is never below the minimum (except zero) nor above the cycle, and a gap
  before the cycle end shorter than the valve can resolve is closed to a full-cycle command.

The per-thruster model parameters are columns of ``thr`` (n, THR_COLS):
"""

from __future__ import annotations

import math

import numpy as np

from thruster_hil.core.jit import inline_kernel, kernel
from thruster_hil.core.layout import Layout
from thruster_hil.core.pulses import attributed_impulse, on_time_for_impulse

THRUSTER_COLUMNS = Layout(
    "controller thruster columns",
    [
        ("T_THRUST", 1),  # steady-state thrust [N]
        ("T_OPEN_DELAY", 1),  # [s]
        ("T_CLOSE_DELAY", 1),  # [s]
        ("T_TAU_RISE", 1),  # [s]
        ("T_TAU_TAIL", 1),  # [s]
        ("T_MIN_ON", 1),  # minimum on-time [s]
        ("T_MIB", 1),  # minimum impulse bit: booked impulse of the minimum on-time from rest [N s]
        ("T_MAX_IMPULSE", 1),  # most impulse one cycle can book: F * period [N s]
        ("T_TRANSLATION", 1),  # 1.0 for a translation thruster, 0.0 for an attitude thruster
        ("T_KG_PER_NS", 1),  # propellant per unit impulse at the nominal Isp, 1/(Isp g0) [kg/(N s)]
        ("T_TANK", 1),  # index of the tank it draws from
        # Impulse a full-cycle command delivers after its cycle [N s] (its close delay and
        # tail-off): pulse_impulse(period, period, inf, ...), computed once by the build.
        ("T_FULL_SPILL", 1),
    ],
)
(
    T_THRUST,
    T_OPEN_DELAY,
    T_CLOSE_DELAY,
    T_TAU_RISE,
    T_TAU_TAIL,
    T_MIN_ON,
    T_MIB,
    T_MAX_IMPULSE,
    T_TRANSLATION,
    T_KG_PER_NS,
    T_TANK,
    T_FULL_SPILL,
) = THRUSTER_COLUMNS.offsets
THR_COLS = THRUSTER_COLUMNS.length

# Modulator state per thruster, columns of ``mod`` (n, MOD_COLS).
MODULATOR_COLUMNS = Layout(
    "modulator state columns",
    [
        ("M_REMAINDER", 1),  # requested but not yet booked impulse [N s]
        ("M_FULL", 1),  # last command covered the whole cycle (1.0 / 0.0)
        ("M_LAST_ON", 1),  # last commanded on-time [s]
    ],
)
M_REMAINDER, M_FULL, M_LAST_ON = MODULATOR_COLUMNS.offsets
MOD_COLS = MODULATOR_COLUMNS.length
#: A request within a thousandth of a whole cycle's impulse is a whole cycle: a gimbal's
#: small moves and the allocation's round-off must not close a main engine's valve. The
#: difference goes to the remainder (at most half a MIB, then one shorter cycle repays it).
FULL_TOL = 1.0 - 1e-3


@inline_kernel
def modulate_one(request_Ns, thr_row, mod_row, period_s, tick_s):
    """Add ``request_Ns`` to the remainder and return the on-time [s] commanded this cycle."""
    f = thr_row[T_THRUST]
    t_od = thr_row[T_OPEN_DELAY]
    t_cd = thr_row[T_CLOSE_DELAY]
    tr = thr_row[T_TAU_RISE]
    tt = thr_row[T_TAU_TAIL]
    t_min = thr_row[T_MIN_ON]
    mib = thr_row[T_MIB]
    acc = mod_row[M_REMAINDER]
    if request_Ns > 0.0:
        acc += request_Ns
    continuing = mod_row[M_FULL] > 0.5
    # A backlog above two cycles' worth can only come from requests the thruster cannot meet.
    cap = 2.0 * thr_row[T_MAX_IMPULSE]
    if acc > cap:
        acc = cap
    t_on = 0.0
    # A full-cycle request keeps the valve open the whole cycle (a main engine fires
    # continuously rather than closing for the tail it books), as long as what that books
    # keeps the remainder within half a MIB.
    if (
        request_Ns >= FULL_TOL * thr_row[T_MAX_IMPULSE]
        and acc - attributed_impulse(period_s, continuing, f, t_od, t_cd, tr, tt) >= -0.5 * mib
    ):
        t_on = period_s
    elif acc >= mib:
        if continuing:
            t = acc / f
        else:
            t = on_time_for_impulse(acc, f, t_od, t_cd, tr, tt)
        n_ticks = math.floor(t / tick_s + 0.5)
        t_on = n_ticks * tick_s
        if t_on < t_min:
            t_on = t_min
    elif acc >= 0.5 * mib:
        t_on = t_min
    # A gap the valve cannot resolve (shorter than close - open delay, plus a tick) is closed.
    gap_min = t_cd - t_od
    if gap_min < 0.0:
        gap_min = 0.0
    if t_on > 0.0 and t_on > period_s - gap_min - tick_s:
        t_on = period_s
    booked = attributed_impulse(t_on, continuing, f, t_od, t_cd, tr, tt)
    mod_row[M_REMAINDER] = acc - booked
    mod_row[M_FULL] = 1.0 if t_on >= period_s else 0.0
    mod_row[M_LAST_ON] = t_on
    return t_on


@kernel
def reset_one(mod_row):
    """Forget a thruster's remainder (it failed, or the burn ended)."""
    mod_row[M_REMAINDER] = 0.0
    mod_row[M_FULL] = 0.0
    mod_row[M_LAST_ON] = 0.0


@kernel
def _pulse_on_times(force_requests_N, max_thrust_N, min_on_time_s, period_s, tick_s, out):
    steps = force_requests_N.shape[0]
    n = force_requests_N.shape[1]
    thr = np.zeros((n, THR_COLS))
    mod = np.zeros((n, MOD_COLS))
    for i in range(n):
        thr[i, T_THRUST] = max_thrust_N[i]
        thr[i, T_MIN_ON] = min_on_time_s[i]
        thr[i, T_MIB] = max_thrust_N[i] * min_on_time_s[i]
        thr[i, T_MAX_IMPULSE] = max_thrust_N[i] * period_s
    for k in range(steps):
        for i in range(n):
            out[k, i] = modulate_one(
                force_requests_N[k, i] * period_s, thr[i], mod[i], period_s, tick_s
            )


def pulse_on_times(
    force_requests_N: np.ndarray,
    max_thrust_N: np.ndarray,
    min_on_time_s: np.ndarray | float,
    period_s: float,
    tick_s: float = 1e-3,
) -> np.ndarray:
    """On-times [s] (steps x thrusters) for a sequence of mean-force requests [N].

    The batch entry point for benchmarks and for comparison with other tools (Basilisk's
    thrFiringRemainder does the same job): an ideal thruster (no valve delays, instant rise and
    tail-off) of thrust ``max_thrust_N`` [N] is asked, each cycle of ``period_s`` [s], for the
    impulse ``force_requests_N * period_s``. Requests are carried forward below the minimum
    on-time ``min_on_time_s`` [s] (scalar or per thruster), on-times are multiples of ``tick_s``
    [s] within [min_on_time_s, period_s] or zero, and over any window of cycles the delivered
    impulse ``max_thrust_N * sum(on_times)`` equals the requested impulse within one minimum
    impulse bit (``max_thrust_N * min_on_time_s``) per thruster.
    """
    req = np.ascontiguousarray(force_requests_N, dtype=np.float64)
    if req.ndim != 2:
        raise ValueError(
            f"force_requests_N: expected a 2-D array (steps x thrusters), got shape {req.shape}"
        )
    n = req.shape[1]
    f_max = np.ascontiguousarray(np.broadcast_to(max_thrust_N, (n,)), dtype=np.float64)
    t_min = np.ascontiguousarray(np.broadcast_to(min_on_time_s, (n,)), dtype=np.float64)
    if not (np.all(np.isfinite(req)) and np.all(f_max > 0) and np.all(t_min >= 0)):
        raise ValueError("force_requests_N must be finite, max_thrust_N > 0, min_on_time_s >= 0")
    if not (0.0 < tick_s <= period_s) or not np.all(t_min <= period_s):
        raise ValueError(
            f"need 0 < tick_s <= period_s and min_on_time_s <= period_s, got "
            f"tick_s={tick_s}, period_s={period_s}"
        )
    out = np.empty_like(req)
    # The unit can only time whole ticks: the minimum on-time is the next whole tick up.
    t_min_ticks = np.ceil(np.maximum(t_min, tick_s) / tick_s - 1e-9) * tick_s
    _pulse_on_times(req, f_max, t_min_ticks, float(period_s), float(tick_s), out)
    return out
