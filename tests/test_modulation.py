"""Pulse modulation: impulse conservation, minimum on-time, tick and cycle bounds."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from thruster_hil.controller.modulation import (
    M_FULL,
    M_REMAINDER,
    MOD_COLS,
    T_CLOSE_DELAY,
    T_MAX_IMPULSE,
    T_MIB,
    T_MIN_ON,
    T_OPEN_DELAY,
    T_TAU_RISE,
    T_TAU_TAIL,
    T_THRUST,
    THR_COLS,
    modulate_one,
    pulse_on_times,
)
from thruster_hil.sims.thrusters import attributed_impulse, effective_impulse

PERIOD, TICK = 0.5, 1e-3


@settings(max_examples=300, deadline=None)
@given(
    steps=st.integers(1, 60),
    n=st.integers(1, 4),
    seed=st.integers(0, 2**31 - 1),
    t_min_ms=st.integers(1, 100),
    sparse=st.floats(0.0, 1.0),
)
def test_batch_conserves_impulse_within_one_mib_over_every_window(steps, n, seed, t_min_ms, sparse):
    """For every window [a, b) of cycles, |F sum(on) - sum(request) * period| <= MIB, and every
    on-time is 0 or a whole tick in [t_min, period] (ideal thrusters)."""
    rng = np.random.default_rng(seed)
    f_max = rng.uniform(10.0, 500.0, n)
    req = rng.uniform(0.0, 1.0, (steps, n)) * f_max
    req[rng.random((steps, n)) < sparse] = 0.0
    t_min = t_min_ms * 1e-3
    on = pulse_on_times(req, f_max, t_min, PERIOD, TICK)
    assert np.all((on == 0.0) | ((on >= t_min - 1e-12) & (on <= PERIOD + 1e-12)))
    np.testing.assert_allclose(on / TICK, np.round(on / TICK), atol=1e-9)
    mib = f_max * t_min
    delivered = np.vstack([np.zeros(n), np.cumsum(f_max * on, axis=0)])
    requested = np.vstack([np.zeros(n), np.cumsum(req * PERIOD, axis=0)])
    err = delivered - requested  # err[b] - err[a] is the window error
    spread = err.max(axis=0) - err.min(axis=0)
    assert np.all(spread <= mib * (1 + 1e-9))


def test_full_request_fires_the_whole_cycle_and_small_ones_wait():
    on = pulse_on_times(np.array([[400.0, 4.0]] * 10), np.array([400.0, 400.0]), 0.04, PERIOD)
    assert np.all(on[:, 0] == PERIOD)
    # 4 N * 0.5 s = 2 N s per cycle against a MIB of 16 N s: a minimum pulse every ~8 cycles
    fired = on[:, 1][on[:, 1] > 0]
    assert len(fired) == 1 and fired[0] == pytest.approx(0.04)


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="2-D"):
        pulse_on_times(np.zeros(3), np.ones(3), 0.01, PERIOD)
    with pytest.raises(ValueError, match="tick_s"):
        pulse_on_times(np.zeros((2, 1)), np.ones(1), 0.01, PERIOD, tick_s=1.0)


def _thr_row(f=400.0, t_od=0.010, t_cd=0.020, tr=0.015, tt=0.020, t_min=0.040):
    row = np.zeros(THR_COLS)
    row[T_THRUST], row[T_OPEN_DELAY], row[T_CLOSE_DELAY] = f, t_od, t_cd
    row[T_TAU_RISE], row[T_TAU_TAIL], row[T_MIN_ON] = tr, tt, t_min
    row[T_MIB] = effective_impulse(t_min, f, t_od, t_cd, tr, tt)
    row[T_MAX_IMPULSE] = f * PERIOD
    return row


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=80))
def test_delay_compensated_bookings_conserve_impulse(fractions):
    """With valve delays and rise/tail-off, the impulse booked for the commanded on-times follows
    the requests within one MIB over every window (the remainder stays in [-MIB/2, MIB/2] plus
    the tick and the gap the valve cannot resolve)."""
    row = _thr_row()
    mod = np.zeros(MOD_COLS)
    booked, requested = [0.0], [0.0]
    for frac in fractions:
        req = frac * row[T_MAX_IMPULSE]
        full_before = mod[M_FULL] > 0.5
        t_on = modulate_one(req, row, mod, PERIOD, TICK)
        assert t_on == 0.0 or row[T_MIN_ON] - 1e-12 <= t_on <= PERIOD
        assert abs(t_on / TICK - round(t_on / TICK)) < 1e-9
        booked.append(booked[-1] + attributed_impulse(t_on, full_before, *row[:5]))
        requested.append(requested[-1] + req)
    err = np.array(booked) - np.array(requested)
    slack = row[T_THRUST] * (row[T_CLOSE_DELAY] - row[T_OPEN_DELAY] + TICK)
    assert err.max() - err.min() <= row[T_MIB] + slack + 1e-9
    assert abs(mod[M_REMAINDER]) <= row[T_MIB] / 2 + slack + 1e-9
