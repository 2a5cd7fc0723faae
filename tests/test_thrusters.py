"""Tests for thruster_hil.sims.thrusters: pulse impulse, its inverse, blowdown, Isp, health, cycle
impulses."""

import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from thruster_hil.sims import thrusters as thr

from thruster_hil.core.constants import G0

INF = math.inf

# Valve/thrust parameters drawn by hypothesis: a 10-500 N bipropellant-class thruster with
# delays and time constants of a few to tens of ms.
thrusts = st.floats(1.0, 500.0)
delays = st.floats(0.0, 0.05)
# 0 (ideal step) or 0.1-50 ms. Below ~0.1 ms with a tail the impulse jumps almost discontinuously
# in T and a 1e-9 impulse match is beyond the resolution of a double on-time (tested separately).
taus = st.one_of(st.just(0.0), st.floats(1e-4, 0.05))
on_times = st.floats(0.0, 2.0)


def _rel_close(a, b, rel, abs_=1e-15):
    return abs(a - b) <= rel * max(abs(a), abs(b)) + abs_


def test_long_pulse_matches_hand_integration():
    """Hand integration of the pulse model (module docstring), 1e-12 relative.

    F = 100 N, t_on = 1 s, open delay 20 ms, close delay 30 ms, tau_rise 10 ms, tau_tail 15 ms.
    Valve open T = t_on + t_cd - t_od = 1.01 s.
      rise:  int_0^T F (1 - e^{-u/tau_r}) du = F (T - tau_r (1 - e^{-T/tau_r}))
                                            = 100 (1.01 - 0.01 (1 - e^-101)) = 100.0 N s
      tail:  int_0^inf F(T) e^{-s/tau_t} ds = F (1 - e^{-101}) tau_t          = 1.5 N s
    (e^-101 ~ 1.4e-44 is below double rounding of these sums.)
    Total 101.5 N s = F (t_on + t_cd - t_od) - F tau_r + F tau_t.
    """
    args = (100.0, 0.02, 0.03, 0.01, 0.015)
    assert _rel_close(thr.effective_impulse(1.0, *args), 101.5, 1e-12)
    assert _rel_close(thr.pulse_impulse(1.0, 0.0, INF, *args), 101.5, 1e-12)
    # Window split at the valve-close instant t_c = 1.03 s: the rise part and the tail part.
    assert _rel_close(thr.pulse_impulse(1.0, 0.0, 1.03, *args), 100.0, 1e-12)
    assert _rel_close(thr.pulse_impulse(1.0, 1.03, INF, *args), 1.5, 1e-12)
    # Nothing before the valve opens.
    assert thr.pulse_impulse(1.0, 0.0, 0.02, *args) == 0.0


def test_short_pulse_hand_integration():
    """A pulse shorter than the rise time (1e-12 relative).

    F = 200 N, t_on = 5 ms, open delay 10 ms, close delay 12 ms -> T = 7 ms, tau_r = 20 ms,
    tau_t = 8 ms: I = F [T + (tau_t - tau_r)(1 - e^{-T/tau_r})]
                    = 200 [0.007 - 0.012 (1 - e^{-0.35})].
    """
    expected = 200.0 * (0.007 - 0.012 * (1.0 - math.exp(-0.35)))
    got = thr.effective_impulse(0.005, 200.0, 0.010, 0.012, 0.020, 0.008)
    assert _rel_close(got, expected, 1e-12)


def test_tau_zero_limits():
    """tau = 0 is an ideal step: I = F T with no rise loss and no tail; and small tau -> limit."""
    f, t_on, t_od, t_cd = 50.0, 0.3, 0.02, 0.025
    T = t_on + t_cd - t_od
    assert _rel_close(thr.effective_impulse(t_on, f, t_od, t_cd, 0.0, 0.0), f * T, 1e-14)
    assert _rel_close(thr.pulse_impulse(t_on, 0.0, INF, f, t_od, t_cd, 0.0, 0.0), f * T, 1e-14)
    # only the rise instantaneous: I = F (T + tau_t); only the tail: I = F (T - tau_r (1-e^-T/tr))
    assert _rel_close(thr.effective_impulse(t_on, f, t_od, t_cd, 0.0, 0.01), f * (T + 0.01), 1e-14)
    expected = f * (T - 0.01 * (1.0 - math.exp(-T / 0.01)))
    assert _rel_close(thr.effective_impulse(t_on, f, t_od, t_cd, 0.01, 0.0), expected, 1e-14)
    assert _rel_close(thr.pulse_impulse(t_on, 0.0, INF, f, t_od, t_cd, 0.01, 0.0), expected, 1e-14)
    # continuity: tau -> 0+ approaches the tau = 0 result (error ~ F tau)
    small = thr.effective_impulse(t_on, f, t_od, t_cd, 1e-12, 1e-12)
    assert abs(small - f * T) < 1e-9
    # subnormal tau: no overflow to inf/nan in any window
    for tau in (5e-324, 2.2e-311):
        parts = [thr.pulse_impulse(t_on, a, b, f, t_od, t_cd, tau, tau)
                 for a, b in ((-INF, 0.1), (0.1, 0.1 + 1e-300), (0.1 + 1e-300, INF))]  # fmt: skip
        assert all(0.0 <= p < INF for p in parts)
        assert _rel_close(math.fsum(parts), f * T, 1e-12)
    # windowed, tau = 0: exactly F times the overlap of the window with [t_od, t_c]
    assert _rel_close(thr.pulse_impulse(t_on, 0.1, 0.2, f, t_od, t_cd, 0.0, 0.0), f * 0.1, 1e-12)


def test_no_pulse_cases():
    """t_on <= 0, NaN, zero thrust, or a close before the open give exactly zero."""
    for t_on in (0.0, -1.0, math.nan):
        assert thr.effective_impulse(t_on, 100.0, 0.02, 0.03, 0.01, 0.01) == 0.0
        assert thr.pulse_impulse(t_on, 0.0, INF, 100.0, 0.02, 0.03, 0.01, 0.01) == 0.0
    assert thr.effective_impulse(0.5, 0.0, 0.02, 0.03, 0.01, 0.01) == 0.0
    # open delay 50 ms, close delay 10 ms: a 30 ms command closes (40 ms) before it opens
    assert thr.effective_impulse(0.03, 100.0, 0.05, 0.01, 0.01, 0.01) == 0.0
    assert thr.on_time_for_impulse(0.0, 100.0, 0.02, 0.03, 0.01, 0.01) == 0.0
    assert thr.on_time_for_impulse(-1.0, 100.0, 0.02, 0.03, 0.01, 0.01) == 0.0
    assert thr.on_time_for_impulse(1.0, 0.0, 0.02, 0.03, 0.01, 0.01) == 0.0


@settings(max_examples=300, deadline=None)
@given(
    on_times,
    thrusts,
    delays,
    delays,
    taus,
    taus,
    st.lists(st.floats(-0.1, 2.5), min_size=1, max_size=8),
)
def test_windowed_impulses_partition_to_whole(t_on, f, t_od, t_cd, tr, tt, cuts):
    """Impulses over windows that partition (-inf, inf) sum to the whole pulse (1e-12 relative)."""
    edges = [-INF] + sorted(cuts) + [INF]
    parts = [
        thr.pulse_impulse(t_on, a, b, f, t_od, t_cd, tr, tt)
        for a, b in zip(edges[:-1], edges[1:], strict=True)
    ]
    whole = thr.effective_impulse(t_on, f, t_od, t_cd, tr, tt)
    assert min(parts) >= 0.0
    assert _rel_close(math.fsum(parts), whole, 1e-12, 1e-13)
    assert _rel_close(thr.pulse_impulse(t_on, -INF, INF, f, t_od, t_cd, tr, tt), whole, 1e-12)


@settings(max_examples=300, deadline=None)
@given(st.floats(0.005, 2.0), thrusts, delays, delays, taus, taus)
def test_on_time_for_impulse_inverts_effective_impulse(t_on, f, t_od, t_cd, tr, tt):
    """on_time_for_impulse(effective_impulse(t_on)) = t_on to 1e-9 s, for commands whose valve-open
    time T = t_on + t_cd - t_od is at least 5 ms (where dI/dT >= ~0.1 F keeps it well posed)."""
    assume(t_on + t_cd - t_od >= 0.005)
    impulse = thr.effective_impulse(t_on, f, t_od, t_cd, tr, tt)
    back = thr.on_time_for_impulse(impulse, f, t_od, t_cd, tr, tt)
    assert abs(back - t_on) < 1e-9


@settings(max_examples=200, deadline=None)
@given(st.floats(0.0, 5.0), thrusts, delays, delays, taus, taus)
def test_on_time_for_impulse_never_overshoots_structure(impulse, f, t_od, t_cd, tr, tt):
    """Any request: the result is >= 0, and its impulse matches the request (1e-9 rel) unless the
    request is at or below the impulse of the shortest possible pulse, in which case the result
    is a no-pulse on-time (zero impulse)."""
    t = thr.on_time_for_impulse(impulse, f, t_od, t_cd, tr, tt)
    assert t >= 0.0
    got = thr.effective_impulse(t, f, t_od, t_cd, tr, tt)
    if not _rel_close(got, impulse, 1e-9, 1e-12):
        assert got == 0.0
        t_shortest = max(0.0, t_od - t_cd) + 1e-12
        assert impulse <= thr.effective_impulse(t_shortest, f, t_od, t_cd, tr, tt) + 1e-9


def test_on_time_for_impulse_tiny_tau_rise():
    """Root many decades below the bracket: tau_rise = 1e-273 s, tau_tail = 1/32 s, F = 1 N, no
    delays, request F tau_tail / 2. I(T) = T + (tau_t - tau_r)(1 - e^{-T/tau_r}) gives
    T = tau_r ln 2 to first order (the T term is ~1e-273 of the total): on-time to 1e-12 rel."""
    t = thr.on_time_for_impulse(1.0 / 64.0, 1.0, 0.0, 0.0, 1e-273, 1.0 / 32.0)
    assert _rel_close(t, 1e-273 * math.log(2.0), 1e-12, 0.0)
    # and a request below the instantaneous-rise jump F tau_t with tau_rise = 0: no pulse
    assert thr.on_time_for_impulse(0.01, 1.0, 0.02, 0.0, 0.0, 1.0 / 32.0) == 0.02
    assert thr.effective_impulse(0.02, 1.0, 0.02, 0.0, 0.0, 1.0 / 32.0) == 0.0


@settings(max_examples=200, deadline=None)
@given(st.floats(0.0, 1.9), st.floats(1e-4, 0.1), thrusts, delays, delays, taus, taus)
def test_effective_impulse_monotone(t1, dt, f, t_od, t_cd, tr, tt):
    """More on-time never gives less impulse."""
    e1 = thr.effective_impulse(t1, f, t_od, t_cd, tr, tt)
    e2 = thr.effective_impulse(t1 + dt, f, t_od, t_cd, tr, tt)
    assert e2 >= e1


def test_minimum_impulse_bit():
    """MIB = effective impulse at the minimum on-time (10 ms command, hand formula)."""
    args = (400.0, 0.008, 0.012, 0.004, 0.006)
    T = 0.010 + 0.012 - 0.008
    expected = 400.0 * (T + 0.002 * (1.0 - math.exp(-T / 0.004)))
    assert _rel_close(thr.minimum_impulse_bit(0.010, *args), expected, 1e-12)


# ---------------------------------------------------------------------------------------------
# Blowdown, thrust and Isp
# ---------------------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    st.floats(5e5, 3e6),
    st.floats(1e-3, 0.1),
    st.floats(0.0, 50.0),
    st.floats(0.0, 50.0),
    st.floats(800.0, 1500.0),
    st.sampled_from([1.0, 1.2, 1.4]),
)
def test_blowdown_monotone_and_p0_at_zero_use(p0, v0, used1, extra, rho, n):
    """p(0) = p0 exactly; p decreases with propellant used; isothermal p V = const."""
    assert thr.blowdown_pressure_Pa(p0, v0, 0.0, rho, n) == p0
    p1 = thr.blowdown_pressure_Pa(p0, v0, used1, rho, n)
    p2 = thr.blowdown_pressure_Pa(p0, v0, used1 + extra, rho, n)
    assert 0.0 < p2 <= p1 <= p0
    if n == 1.0:
        assert _rel_close(p1 * (v0 + used1 / rho), p0 * v0, 1e-12)


def test_blowdown_hand_value_and_bad_tank():
    """V0 = 0.02 m^3, 20 kg of 1000 kg/m^3 used -> V = 0.04 m^3; adiabatic p = p0 / 2^1.4."""
    p = thr.blowdown_pressure_Pa(2.0e6, 0.02, 20.0, 1000.0, 1.4)
    assert _rel_close(p, 2.0e6 / 2.0**1.4, 1e-14)
    assert math.isnan(thr.blowdown_pressure_Pa(2.0e6, 0.0, 1.0, 1000.0, 1.0))
    assert math.isnan(thr.blowdown_pressure_Pa(2.0e6, 0.02, 1.0, 0.0, 1.0))


def test_regulated_pressure():
    assert thr.regulated_pressure_Pa(1.7e6, 10.0, 100.0) == 1.7e6
    assert thr.regulated_pressure_Pa(1.7e6, 100.0, 100.0) == 0.0


def test_thrust_isp_at_pressure():
    """Power laws: at p_ref both equal the reference; half the pressure with a = 1, b = 0.05 gives
    F/2 and Isp * 0.5^0.05; zero pressure gives no thrust."""
    f, isp = thr.thrust_isp_at_pressure(400.0, 300.0, 2.0e6, 2.0e6, 1.0, 0.05)
    assert (f, isp) == (400.0, 300.0)
    f, isp = thr.thrust_isp_at_pressure(400.0, 300.0, 2.0e6, 1.0e6, 1.0, 0.05)
    assert _rel_close(f, 200.0, 1e-15)
    assert _rel_close(isp, 300.0 * 0.5**0.05, 1e-15)
    assert thr.thrust_isp_at_pressure(400.0, 300.0, 2.0e6, 0.0, 1.0, 0.05) == (0.0, 0.0)


def test_propellant_used():
    """m = I / (Isp g0): 2942 N s at 300 s is 2942 / (300 * 9.80665) kg; Isp 0 -> 0."""
    assert _rel_close(thr.propellant_used_kg(2942.0, 300.0), 2942.0 / (300.0 * G0), 1e-15)
    assert thr.propellant_used_kg(10.0, 0.0) == 0.0


# ---------------------------------------------------------------------------------------------
# Valves over consecutive cycles
# ---------------------------------------------------------------------------------------------

F, T_OD, T_CD, TR, TT = 100.0, 0.02, 0.03, 0.01, 0.015


def _run(commands, period=0.5, n_sub=5, health=None, params=(F, T_OD, T_CD, TR, TT)):
    """Run a (cycles x n) command sequence through valve_cycle; returns (cycles, n_sub, n)."""
    commands = np.atleast_2d(np.asarray(commands, dtype=np.float64))
    n = commands.shape[1]
    cols = [np.full(n, p, dtype=np.float64) for p in params]
    hv = np.zeros(n, np.int64) if health is None else np.asarray(health, np.int64)
    state = thr.valve_state_at_rest(n)
    out = np.empty((len(commands), n_sub, n))
    for c, cmd in enumerate(commands):
        status = thr.valve_cycle(cmd, hv, *cols, period, state, out[c])
        assert status in (thr.CYCLE_OK, thr.CYCLE_UNKNOWN_HEALTH)
    return out


def test_isolated_pulse_delivers_its_effective_impulse_across_the_cycle_edge():
    """A pulse whose close delay and tail run past the cycle end: the two cycles together deliver
    exactly the analytic whole-pulse impulse (1e-12), nothing before the open delay."""
    out = _run([[0.49], [0.0], [0.0]])
    total = math.fsum(out.ravel())
    assert _rel_close(total, thr.effective_impulse(0.49, F, T_OD, T_CD, TR, TT), 1e-12)
    assert out[1].sum() > 0.0  # the tail landed in the next cycle
    assert out[2].sum() < 1e-9 * total


@pytest.mark.parametrize("n_full", [1, 2, 7])
def test_continuous_firing_is_one_long_pulse(n_full):
    """n full-cycle commands then a partial one: the valve stays open, so the run delivers the
    impulse of one pulse of on-time n*period + t_last (1e-12), and the bookings of
    attributed_impulse add up to it."""
    period, t_last = 0.5, 0.123
    cmds = [[period]] * n_full + [[t_last], [0.0], [0.0]]
    out = _run(cmds, period)
    whole = thr.effective_impulse(n_full * period + t_last, F, T_OD, T_CD, TR, TT)
    assert _rel_close(math.fsum(out.ravel()), whole, 1e-12)
    booked = thr.attributed_impulse(period, False, F, T_OD, T_CD, TR, TT)
    booked += sum(
        thr.attributed_impulse(c[0], True, F, T_OD, T_CD, TR, TT) for c in cmds[1 : n_full + 1]
    )
    assert _rel_close(booked, whole, 1e-12)
    # steady firing: a middle cycle delivers exactly F * period
    if n_full > 2:
        assert _rel_close(out[1].sum(), F * period, 1e-12)


def test_a_gap_shorter_than_the_delay_difference_is_swallowed():
    """Command gap 5 ms < t_cd - t_od = 10 ms: the valve never closes (close edge after the next
    open edge), so the run equals one pulse of the summed on-times plus the gap."""
    period = 0.5
    out = _run([[period - 0.005], [0.2], [0.0], [0.0]], period)
    whole = thr.effective_impulse(period + 0.2, F, T_OD, T_CD, TR, TT)
    assert _rel_close(math.fsum(out.ravel()), whole, 1e-12)


def test_sub_steps_partition_the_cycle():
    """The delivered impulse does not depend on the number of sub-steps (1e-12)."""
    cmds = [[0.5, 0.0], [0.3, 0.05], [0.0, 0.5], [0.5, 0.5], [0.1, 0.0]]
    totals = [_run(cmds, 0.5, n_sub).sum(axis=1) for n_sub in (1, 3, 10)]
    np.testing.assert_allclose(totals[1], totals[0], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(totals[2], totals[0], rtol=1e-12, atol=1e-12)


def test_health_failed_off_and_stuck_open():
    """Failed off: no thrust from rest whatever the command; stuck open: F*period once the rise
    transient is over (tau = 0 here: exactly F*period every cycle)."""
    out = _run(
        [[0.3, 0.0]] * 3,
        health=[thr.HEALTH_FAILED_OFF, thr.HEALTH_STUCK_OPEN],
        params=(F, T_OD, T_CD, 0.0, 0.0),
    )
    assert np.all(out[:, :, 0] == 0.0)
    np.testing.assert_allclose(out[:, :, 1].sum(axis=1), F * 0.5, rtol=1e-14)


def test_failing_mid_burn_tails_off():
    """A thruster firing steadily that fails off: its thrust decays with tau_tail, delivering
    F * tau_tail (1 - exp(-period/tau_tail)) in the cycle it fails, nothing after."""
    n = 1
    state = thr.valve_state_at_rest(n)
    cols = [np.full(n, p) for p in (F, T_OD, T_CD, TR, TT)]
    out = np.empty((1, n))
    for _ in range(4):
        thr.valve_cycle(np.full(n, 0.5), np.zeros(n, np.int64), *cols, 0.5, state, out)
    thr.valve_cycle(np.full(n, 0.5), np.full(n, thr.HEALTH_FAILED_OFF), *cols, 0.5, state, out)
    assert _rel_close(out[0, 0], F * TT * (1 - math.exp(-0.5 / TT)), 1e-9)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(0.0, 0.6), min_size=1, max_size=12), st.integers(1, 8))
def test_impulse_never_negative_and_thrust_bounded(cmds, n_sub):
    period = 0.5
    out = _run([[c] for c in cmds] + [[0.0], [0.0]], period, n_sub)
    assert np.all(out >= 0.0)
    assert np.all(out <= F * period / n_sub * (1 + 1e-12))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from([0.0, 0.06, 0.13, 0.25, 0.5]), min_size=1, max_size=15))
def test_bookings_match_delivery_when_gaps_are_resolvable(cmds):
    """With command gaps of at least 250 ms and pulses of at least 60 ms (30 tau_rise), the
    impulse booked per command equals the impulse delivered to 1e-6 of the total: what is left is
    a previous pulse's tail still decaying (e^-16) when the next one opens. Closer pulses
    interact through that tail (physics the booking leaves to the closed loop)."""
    period = 0.5
    out = _run(
        [[c] for c in cmds] + [[0.0], [0.0], [0.0]], period, 2, params=(F, T_OD, T_CD, 0.002, TT)
    )
    booked = 0.0
    prev_full = False
    for c in cmds:
        booked += thr.attributed_impulse(c, prev_full, F, T_OD, T_CD, 0.002, TT)
        prev_full = c >= period
    delivered = math.fsum(out.ravel())
    assert abs(booked - delivered) <= 1e-6 * max(delivered, 1.0)


def test_cycle_bad_inputs_return_status():
    state = thr.valve_state_at_rest(1)
    cols = [np.ones(1)] + [np.zeros(1)] * 4
    out = np.full((4, 1), np.nan)
    status = thr.valve_cycle(np.full(1, 0.1), np.zeros(1, np.int64), *cols, 0.0, state, out)
    assert status == thr.CYCLE_BAD_PERIOD and np.all(np.isnan(out))
    status = thr.valve_cycle(np.full(1, 0.1), np.full(1, 7), *cols, 1.0, state, out)
    assert status == thr.CYCLE_UNKNOWN_HEALTH and np.all(out == 0.0)
    status = thr.valve_cycle(
        np.zeros(1), np.zeros(1, np.int64), *cols, 1.0, state, np.zeros((3, 2))
    )
    assert status == thr.CYCLE_BAD_SHAPE


def _feed(impulse, blowdown, load=10.0):
    n = impulse.shape[1]
    used = np.zeros(1)
    thrust = np.zeros(n)
    isp = np.full(n, 220.0)
    thr.feed_update(
        impulse,
        isp.copy(),
        np.zeros(n, np.int64),
        np.array([load]),
        np.array([blowdown]),
        np.array([2.0e6]),
        np.array([0.02]),
        np.array([1000.0]),
        np.array([1.0]),
        np.full(n, 25.0),
        np.full(n, 220.0),
        np.full(n, 1.0 if blowdown else 0.0),
        np.full(n, 0.05 if blowdown else 0.0),
        used,
        thrust,
        isp,
    )
    return used[0], thrust, isp


def test_feed_draws_propellant_and_blows_down():
    """1000 N s at 220 s draws 1000/(220 g0) kg; the blowdown tank (isothermal, V0 = 20 l) then
    feeds at p0 V0/(V0 + m/rho), and thrust follows pressure (exponent 1)."""
    used, thrust, isp = _feed(np.full((2, 1), 500.0), True)
    assert _rel_close(used, 1000.0 / (220.0 * G0), 1e-14)
    ratio = 0.02 / (0.02 + used / 1000.0)
    assert _rel_close(thrust[0], 25.0 * ratio, 1e-12)
    assert _rel_close(isp[0], 220.0 * ratio**0.05, 1e-12)


def test_regulated_feed_holds_then_an_empty_tank_gives_nothing():
    _, thrust, _ = _feed(np.full((1, 1), 500.0), False)
    assert thrust[0] == 25.0
    _, thrust, _ = _feed(np.full((1, 1), 500.0), False, load=0.1)
    assert thrust[0] == 0.0


# ---- the gimbal kinematics (issue 14) ----------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(d1=st.floats(-0.5, 0.5), d2=st.floats(-0.5, 0.5), k=st.integers(0, 2))
def test_gimbal_direction_is_unit_and_its_derivatives_match_finite_differences(d1, d2, k):
    """u(d1, d2) stays a unit vector, equals the numpy form the config uses, and du/dd1,
    du/dd2 match central differences (h = 1e-6: error O(h^2) ~ 1e-12, tolerance 1e-8)."""
    from thruster_hil.sims.thrusters import gimbal_direction

    from thruster_hil.core.massprops import gimbaled_direction

    u0 = np.zeros(3)
    u0[k] = 1.0
    e1 = np.roll(u0, 1)
    e2 = np.cross(u0, e1)
    u, du1, du2 = np.empty(3), np.empty(3), np.empty(3)
    gimbal_direction(u0, e1, e2, d1, d2, u, du1, du2)
    assert np.linalg.norm(u) == pytest.approx(1.0, abs=1e-14)
    np.testing.assert_allclose(u, gimbaled_direction(u0, e1, e2, d1, d2), atol=1e-15)
    h = 1e-6
    fd1 = (
        gimbaled_direction(u0, e1, e2, d1 + h, d2) - gimbaled_direction(u0, e1, e2, d1 - h, d2)
    ) / (2 * h)
    fd2 = (
        gimbaled_direction(u0, e1, e2, d1, d2 + h) - gimbaled_direction(u0, e1, e2, d1, d2 - h)
    ) / (2 * h)
    np.testing.assert_allclose(du1, fd1, atol=1e-8)
    np.testing.assert_allclose(du2, fd2, atol=1e-8)


def test_gimbal_trim_points_the_thrust_through_the_com():
    """The trim of an engine 9.83 m from the CoM with its axis 1.98 m off (Cygnus at Unity
    nadir) turns it by atan(1.98/9.83) = 11.4 deg, and then r x u = 0."""
    from thruster_hil.core.massprops import gimbal_trim, gimbaled_direction

    u0, e1, e2 = np.array([0, 0, -1.0]), np.array([0, 1.0, 0]), np.array([1.0, 0, 0])
    r = np.array([-1.97878484, 0.0, 9.82839884])
    d1, d2 = gimbal_trim(u0, e1, e2, r, np.radians(15.0))
    assert d1 == pytest.approx(0.0, abs=1e-15)
    assert np.degrees(d2) == pytest.approx(np.degrees(np.arctan2(1.97878484, 9.82839884)))
    np.testing.assert_allclose(np.cross(r, gimbaled_direction(u0, e1, e2, d1, d2)), 0.0, atol=1e-12)
    assert gimbal_trim(u0, e1, e2, r, np.radians(5.0))[1] == pytest.approx(np.radians(5.0))


# ---- issue 18: the shortcuts of the fast paths give the bits of the formulas they skip --------

from numba import njit  # noqa: E402


@njit
def _segment_formula(f0, is_open, f_ss, tau_rise_s, tau_tail_s, dt):
    """thrusters._segment as it was before issue 18: every exponential evaluated."""
    if dt <= 0.0:
        return 0.0, f0
    if is_open:
        if tau_rise_s <= 0.0:
            return f_ss * dt, f_ss
        x = dt / tau_rise_s
        e = math.exp(-x)
        return f_ss * dt + (f0 - f_ss) * tau_rise_s * -math.expm1(-x), f_ss + (f0 - f_ss) * e
    if tau_tail_s <= 0.0:
        return 0.0, 0.0
    x = dt / tau_tail_s
    return f0 * tau_tail_s * -math.expm1(-x), f0 * math.exp(-x)


_ZEROS = st.sampled_from([0.0, -0.0])
_ANY = st.floats(allow_nan=True, allow_infinity=True)


@settings(max_examples=400, deadline=None)
@given(
    f_ss=st.one_of(_ZEROS, st.floats(0.0, 1e4), _ANY),
    same=st.booleans(),
    f0=st.one_of(_ZEROS, _ANY),
    is_open=st.booleans(),
    tau=st.one_of(_ZEROS, st.floats(1e-320, 1.0), _ANY),
    dt=st.one_of(st.floats(1e-6, 1.0), _ANY),
)
def test_segment_shortcuts_are_bit_identical_to_the_formula(f_ss, same, f0, is_open, tau, dt):
    if same:
        f0 = f_ss
    got = thr._segment(f0, is_open, f_ss, tau, tau, dt)
    want = _segment_formula(f0, is_open, f_ss, tau, tau, dt)
    _assert_same_bits(np.array(got), np.array(want))


def _assert_same_bits(got, want):
    """Equal bit for bit (signed zeros included); a NaN matches any NaN (the sign and payload of
    a NaN depend on the order the compiler gives the operands, not on the formula)."""
    nan = np.isnan(got) & np.isnan(want)
    assert (np.isnan(got) == np.isnan(want)).all()
    assert got[~nan].tobytes() == want[~nan].tobytes()


@njit
def _feed_formula(
    used, load, blowdown, p0, v0, rho, poly, tank_idx, f_ref, isp_ref, a, b, out_f, out_isp
):
    """feed_update's pressure and power laws as they were before issue 18: per thruster."""
    for i in range(tank_idx.shape[0]):
        t = tank_idx[i]
        if used[t] >= load[t]:
            p = 0.0
        elif blowdown[t]:
            p = thr.blowdown_pressure_Pa(p0[t], v0[t], used[t], rho[t], poly[t])
        else:
            p = p0[t]
        f, isp = thr.thrust_isp_at_pressure(f_ref[i], isp_ref[i], p0[t], p, a[i], b[i])
        out_f[i] = f
        out_isp[i] = isp if isp > 0.0 else isp_ref[i]


@settings(max_examples=200, deadline=None)
@given(data=st.data(), n=st.integers(1, 12), n_tanks=st.integers(1, 3))
def test_feed_update_is_the_per_thruster_formula_bit_for_bit(data, n, n_tanks):
    tank_idx = np.array(data.draw(st.lists(st.integers(0, n_tanks - 1), min_size=n, max_size=n)))
    exps = st.sampled_from([0.0, -0.0, 1.0, 0.05, 0.9, math.nan])

    def arr(strategy, size):
        return np.array(data.draw(st.lists(strategy, min_size=size, max_size=size)), np.float64)

    used = arr(st.floats(0.0, 200.0), n_tanks)
    tanks = (
        arr(st.floats(0.0, 200.0), n_tanks),  # load
        arr(st.sampled_from([0.0, 1.0]), n_tanks),  # blowdown
        arr(st.sampled_from([2.0e6, 0.0, 1.7e6]), n_tanks),  # p0
        arr(st.floats(0.01, 0.5), n_tanks),
        arr(st.floats(500.0, 1500.0), n_tanks),
        arr(st.sampled_from([1.0, 1.4]), n_tanks),
    )
    f_ref = arr(st.floats(1.0, 500.0), n)
    isp_ref = arr(st.floats(200.0, 320.0), n)
    a = arr(exps, n)
    b = arr(exps, n)
    want_f = np.zeros(n)
    want_isp = np.zeros(n)
    _feed_formula(used, *tanks, tank_idx, f_ref, isp_ref, a, b, want_f, want_isp)
    got_f = np.zeros(n)
    got_isp = np.full(n, 250.0)
    thr.feed_update(
        np.zeros((1, n)),
        got_isp.copy(),
        tank_idx,
        *tanks[:1],
        *tanks[1:],
        f_ref,
        isp_ref,
        a,
        b,
        used,
        got_f,
        got_isp,
    )
    _assert_same_bits(got_f, want_f)
    _assert_same_bits(got_isp, want_isp)
