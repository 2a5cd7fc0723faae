"""Tests for sims.thrusters: pulse impulse, its inverse, blowdown, Isp, health, cycle impulses."""

import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from sims import thrusters as thr
from sims.constants import G0

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
# Cycle impulses
# ---------------------------------------------------------------------------------------------


def _cycle(on, health, f, t_od, t_cd, tr, tt, period, n_sub, carry=None):
    n = len(on)
    arr = [np.asarray(x, dtype=np.float64) for x in (on, f, t_od, t_cd, tr, tt)]
    carry = np.zeros(n) if carry is None else np.asarray(carry, dtype=np.float64)
    out = np.full((n_sub, n), np.nan)
    out_carry = np.full(n, np.nan)
    status = thr.cycle_impulses(
        arr[0], np.asarray(health, dtype=np.int64), arr[1], arr[2], arr[3], arr[4], arr[5],
        period, n_sub, carry, out, out_carry,
    )  # fmt: skip
    return status, out, out_carry


def test_health_failed_off_and_stuck_open():
    """Failed off: 0 whatever the command. Stuck open: F * period, split evenly over sub-steps."""
    period, n_sub = 1.0, 8
    status, out, carry = _cycle(
        [0.5, 0.5, 0.0, 0.3],
        [thr.HEALTH_FAILED_OFF, thr.HEALTH_STUCK_OPEN, thr.HEALTH_STUCK_OPEN, thr.HEALTH_NOMINAL],
        [100.0, 100.0, 40.0, 100.0],
        [0.02] * 4, [0.03] * 4, [0.01] * 4, [0.015] * 4, period, n_sub,
    )  # fmt: skip
    assert status == thr.CYCLE_OK
    assert np.all(out[:, 0] == 0.0) and carry[0] == 0.0
    assert np.allclose(out[:, 1], 100.0 * period / n_sub, rtol=1e-15)
    assert _rel_close(out[:, 1].sum(), 100.0 * period, 1e-14)
    assert _rel_close(out[:, 2].sum(), 40.0 * period, 1e-14) and carry[1] == carry[2] == 0.0
    assert _rel_close(
        out[:, 3].sum() + carry[3], thr.effective_impulse(0.3, 100.0, 0.02, 0.03, 0.01, 0.015),
        1e-12,
    )  # fmt: skip


def test_pulse_running_past_cycle_end_is_carried():
    """A full-period command: close delay + tail-off run past the cycle end. The part after the
    period comes back as carry (hand value: the still-open part on [period, t_c] plus the whole
    tail F(t_c) tau_t) and is delivered in sub-step 0 of the next cycle (1e-12)."""
    f, t_od, t_cd, tr, tt, period = 100.0, 0.02, 0.03, 0.01, 0.015, 0.5
    status, out, carry = _cycle([2.0], [thr.HEALTH_NOMINAL], [f], [t_od], [t_cd], [tr], [tt],
                                period, 5)  # fmt: skip
    assert status == thr.CYCLE_OK
    # command clamped to the period: valve closes at 0.5 + 0.03 = 0.53 s
    T = period + t_cd - t_od
    f_c = f * (1.0 - math.exp(-T / tr))
    after = f * (0.03 - tr * math.exp(-(period - t_od) / tr) * (1.0 - math.exp(-0.03 / tr)))
    after += f_c * tt
    assert _rel_close(carry[0], after, 1e-12)
    assert _rel_close(out.sum() + carry[0], thr.effective_impulse(period, f, t_od, t_cd, tr, tt),
                      1e-12)  # fmt: skip
    # next cycle, no command: only the carried impulse, all in sub-step 0
    status, out2, carry2 = _cycle([0.0], [thr.HEALTH_NOMINAL], [f], [t_od], [t_cd], [tr], [tt],
                                  period, 5, carry=carry)  # fmt: skip
    assert out2[0, 0] == carry[0] and np.all(out2[1:, 0] == 0.0) and carry2[0] == 0.0
    # the carry is delivered even if the thruster has failed off meanwhile (already committed)
    status, out3, _ = _cycle([0.0], [thr.HEALTH_FAILED_OFF], [f], [t_od], [t_cd], [tr], [tt],
                             period, 5, carry=carry)  # fmt: skip
    assert out3[0, 0] == carry[0]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.floats(-0.5, 3.0), min_size=3, max_size=3),
    st.lists(thrusts, min_size=3, max_size=3),
    st.lists(st.floats(0.0, 0.2), min_size=3, max_size=3),
    st.lists(st.floats(0.0, 0.2), min_size=3, max_size=3),
    st.lists(taus, min_size=3, max_size=3),
    st.lists(taus, min_size=3, max_size=3),
    st.lists(st.floats(0.0, 10.0), min_size=3, max_size=3),
    st.floats(0.05, 2.0),
    st.integers(1, 20),
)
def test_cycle_conservation(on, f, t_od, t_cd, tr, tt, carry_in, period, n_sub):
    """Sum over sub-steps + carry out = effective_impulse(clamped command) + carry in (1e-12 rel),
    no sub-step impulse negative."""
    status, out, carry = _cycle(on, [thr.HEALTH_NOMINAL] * 3, f, t_od, t_cd, tr, tt, period,
                                n_sub, carry=carry_in)  # fmt: skip
    assert status == thr.CYCLE_OK
    assert np.all(out >= 0.0) and np.all(carry >= 0.0)
    for i in range(3):
        t_on = min(max(on[i], 0.0), period)
        whole = thr.effective_impulse(t_on, f[i], t_od[i], t_cd[i], tr[i], tt[i])
        total = math.fsum(out[:, i]) + carry[i]
        assert _rel_close(total, whole + carry_in[i], 1e-12, 1e-12)


def test_cycle_bad_inputs_return_status():
    status, out, _ = _cycle([0.1], [thr.HEALTH_NOMINAL], [1.0], [0.0], [0.0], [0.0], [0.0], 0.0, 4)
    assert status == thr.CYCLE_BAD_PERIOD and np.all(np.isnan(out))
    status, out, carry = _cycle([0.1], [7], [1.0], [0.0], [0.0], [0.0], [0.0], 1.0, 4)
    assert status == thr.CYCLE_UNKNOWN_HEALTH and np.all(out == 0.0) and carry[0] == 0.0
    out = np.zeros((3, 2))
    status = thr.cycle_impulses(
        np.zeros(1), np.zeros(1, dtype=np.int64), np.ones(1), np.zeros(1), np.zeros(1),
        np.zeros(1), np.zeros(1), 1.0, 4, np.zeros(1), out, np.zeros(1),
    )  # fmt: skip
    assert status == thr.CYCLE_BAD_SHAPE


@pytest.mark.parametrize("n_sub", [1, 3, 10])
def test_cycle_sub_steps_match_windowed_pulse(n_sub):
    """Each sub-step equals pulse_impulse over its window [k h, (k+1) h] (bit-identical)."""
    args = (120.0, 0.015, 0.02, 0.008, 0.012)
    period = 0.4
    _, out, _ = _cycle([0.2], [thr.HEALTH_NOMINAL], *[[a] for a in args], period, n_sub)
    h = period / n_sub
    for k in range(1, n_sub):
        b = period if k == n_sub - 1 else (k + 1) * h
        assert out[k, 0] == thr.pulse_impulse(0.2, k * h, b, *args)
