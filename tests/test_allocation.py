"""Allocation: the bounded simplex LP against scipy.optimize.linprog (HiGHS), a test-only oracle.

The problem (controller/allocation.py):  minimise err_cost'(e+ + e-) + c'x  subject to
E_eq x + e+ - e- = b_eq, E_ub x <= b_ub, lb <= x <= ub, e+, e- >= 0, which linprog states
directly. Requirement (issue 14): the optimum matches linprog's to 1e-6 relative in objective on
200 random well-posed problems, and no bound is ever broken, on ill-posed ones either.
"""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import linprog
from thruster_hil.controller.allocation import (
    LP_OK,
    LP_WORK_ROWS,
    WARM_INFEASIBLE,
    WARM_NONE,
    _dual_simplex,
    _simplex,
    _warm_basis,
    allocate,
    fill_lp_columns,
    lp_columns,
)

problems = st.integers(min_value=0, max_value=2**31 - 1).map(np.random.default_rng)


def _solve(E_act, b, c_act, lb_act, ub_act, n_eq, err_cost, start=None):
    """Solve cold, or warm from ``start`` = (x, state, basis) of an earlier solve."""
    n_rows, m = E_act.shape
    n_cols = lp_columns(n_rows, n_eq, m)
    E = np.zeros((n_rows, n_cols))
    E[:, :m] = E_act
    c = np.zeros(n_cols)
    c[:m] = c_act
    lb = np.zeros(n_cols)
    ub = np.zeros(n_cols)
    lb[:m] = lb_act
    ub[:m] = ub_act
    x = np.zeros(n_cols)
    state = np.zeros(n_cols, np.int64)
    basis = np.zeros(n_rows, np.int64)
    if start is not None:
        x[:], state[:], basis[:] = start
    bb = b.astype(float).copy()
    status, it = allocate(
        E,
        bb,
        c,
        lb,
        ub,
        n_rows,
        n_eq,
        m,
        err_cost,
        x,
        state,
        basis,
        np.zeros((n_rows, n_rows)),
        np.zeros((LP_WORK_ROWS, n_cols)),
        20 * n_cols + 50,
        start is not None,
    )
    _solve.last = (x.copy(), state.copy(), basis.copy())
    return status, it, x, bb


def _objective(E_act, b, c_act, n_eq, err_cost, x_act):
    r = b[:n_eq] - E_act[:n_eq] @ x_act
    return float(err_cost[:n_eq] @ np.abs(r) + c_act @ x_act)


def _oracle(E_act, b, c_act, lb, ub, n_eq, err_cost):
    """The same LP for HiGHS: variables [x, e+, e-]; "<=" rows relaxed as allocate() does."""
    n_rows, m = E_act.shape
    b = b.astype(float).copy()
    b[n_eq:] = np.maximum(b[n_eq:], E_act[n_eq:] @ lb)
    c = np.concatenate([c_act, err_cost[:n_eq], err_cost[:n_eq]])
    A_eq = np.hstack([E_act[:n_eq], np.eye(n_eq), -np.eye(n_eq)])
    A_ub = np.hstack([E_act[n_eq:], np.zeros((n_rows - n_eq, 2 * n_eq))])
    bounds = [(lb[j], ub[j]) for j in range(m)] + [(0, None)] * (2 * n_eq)
    for options in (
        {"primal_feasibility_tolerance": 1e-10, "dual_feasibility_tolerance": 1e-10},
        {},
    ):  # HiGHS's defaults where the tight tolerances meet numerical trouble
        res = linprog(
            c,
            A_ub=A_ub if n_rows > n_eq else None,
            b_ub=b[n_eq:] if n_rows > n_eq else None,
            A_eq=A_eq,
            b_eq=b[:n_eq],
            bounds=bounds,
            method="highs",
            options=options,
        )
        if res.status == 0:
            break
    assert res.status == 0, res.message
    return float(res.fun)


def _random_problem(rng, m, well_posed):
    """A thruster-like problem: 6 wrench rows (forces O(1), torques up to 20x), 1-3 budget rows
    (a role row, tanks), duties in [0, ub], some signed (CMG/gimbal-like) actuators."""
    n_ineq = int(rng.integers(1, 4))
    E = np.vstack(
        [
            rng.normal(size=(6, m)) * rng.choice([1.0, 20.0], size=(6, 1)),
            rng.uniform(0.0, 1.0, size=(n_ineq, m)),
        ]
    )
    ub = rng.uniform(0.5, 2.0, size=m)
    lb = np.zeros(m)
    signed = rng.random(m) < 0.2
    lb[signed] = -ub[signed]
    c = rng.uniform(0.01, 1.0, size=m)
    c[signed] = 0.0
    err_cost = np.concatenate([np.full(3, 1e3), np.full(3, 1e6)]) * rng.uniform(0.5, 2.0, 6)
    if well_posed:
        x_true = rng.uniform(lb, ub)
        b = np.concatenate([E[:6] @ x_true, E[6:] @ x_true + rng.uniform(0.0, 2.0, n_ineq)])
    else:
        dead = rng.random(m) < 0.3
        ub[dead] = 0.0  # failed thrusters: lb = ub = 0
        lb[dead] = 0.0
        stuck = (rng.random(m) < 0.1) & ~dead & ~signed
        lb[stuck] = ub[stuck]  # stuck open: lb = ub = full
        b = np.concatenate([rng.normal(size=6) * 50.0, rng.normal(size=n_ineq)])
    return E, b, c, lb, ub, err_cost


def _check(rng, m, well_posed):
    E, b, c, lb, ub, err_cost = _random_problem(rng, m, well_posed)
    status, _, x, _ = _solve(E, b, c, lb, ub, 6, err_cost)
    assert status == LP_OK
    xa = x[:m]
    assert np.all(xa >= lb) and np.all(xa <= ub), "a bound was broken"
    assert np.all(xa[(lb == 0.0) & (ub == 0.0)] == 0.0), "a failed thruster was used"
    b_rel = b.astype(float).copy()
    b_rel[6:] = np.maximum(b[6:], E[6:] @ lb)
    assert np.all(E[6:] @ xa <= b_rel[6:] + 1e-9 * (1.0 + np.abs(b_rel[6:]))), "a budget row"
    ref = _oracle(E, b, c, lb, ub, 6, err_cost)
    got = _objective(E, b, c, 6, err_cost, xa)
    # Absolute floor for an optimum at or near zero: a round-off residual of the wrench rows
    # (~1e-15 of b) costs err_cost per unit.
    floor = 1e-13 * float(err_cost.max()) * (1.0 + float(np.abs(b).max()))
    assert got == pytest.approx(ref, rel=1e-6, abs=floor)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(rng=problems, m=st.integers(min_value=6, max_value=30))
def test_matches_linprog_on_well_posed_problems(rng, m):
    _check(rng, m, well_posed=True)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(rng=problems, m=st.integers(min_value=1, max_value=30))
def test_never_breaks_a_bound_on_ill_posed_problems(rng, m):
    _check(rng, m, well_posed=False)


@settings(max_examples=100, deadline=None, derandomize=True)
@given(
    rng=problems,
    m=st.integers(min_value=6, max_value=30),
    shift=st.floats(min_value=0.0, max_value=0.3),
)
def test_a_warm_start_from_the_last_optimum_reaches_the_new_one(rng, m, shift):
    """The controller starts each cycle from the last cycle's basis: after the wrench and the
    budgets move (by up to 30 %) the warm solve still matches linprog, and a basis that is no
    longer feasible or not a basis at all falls back to the cold start."""
    E, b, c, lb, ub, err_cost = _random_problem(rng, m, well_posed=True)
    _solve(E, b, c, lb, ub, 6, err_cost)
    start = _solve.last
    b2 = b * (1.0 + shift * rng.uniform(-1.0, 1.0, size=b.shape))
    status, _, x, _ = _solve(E, b2, c, lb, ub, 6, err_cost, start=start)
    assert status == LP_OK
    xa = x[:m]
    assert np.all(xa >= lb) and np.all(xa <= ub)
    ref = _oracle(E, b2, c, lb, ub, 6, err_cost)
    floor = 1e-13 * float(err_cost.max()) * (1.0 + float(np.abs(b2).max()))
    assert _objective(E, b2, c, 6, err_cost, xa) == pytest.approx(ref, rel=1e-6, abs=floor)
    garbage = (start[0], rng.integers(-1, 2, size=start[1].shape), start[2][::-1].copy())
    status, _, x, _ = _solve(E, b2, c, lb, ub, 6, err_cost, start=garbage)
    assert status == LP_OK
    assert _objective(E, b2, c, 6, err_cost, x[:m]) == pytest.approx(ref, rel=1e-6, abs=floor)


def test_meets_a_reachable_wrench_with_least_propellant():
    """+x force of 1 from two +x thrusters, the second twice as thirsty: only the first fires."""
    E = np.zeros((6, 2))
    E[0] = [1.0, 1.0]
    status, _, x, _ = _solve(
        E,
        np.array([1.0, 0, 0, 0, 0, 0]),
        np.array([1.0, 2.0]),
        np.zeros(2),
        np.ones(2),
        6,
        np.full(6, 1e3),
    )
    assert status == LP_OK
    np.testing.assert_allclose(x[:2], [1.0, 0.0], atol=1e-12)


def test_torque_comes_before_force():
    """One thruster gives force with a torque; a torque request of 0 wins over the force."""
    E = np.zeros((6, 1))
    E[0, 0] = 1.0
    E[5, 0] = 1.0
    err = np.array([1.0, 1.0, 1.0, 1e3, 1e3, 1e3])
    status, _, x, _ = _solve(
        E, np.array([1.0, 0, 0, 0, 0, 0]), np.ones(1), np.zeros(1), np.ones(1), 6, err
    )
    assert status == LP_OK and x[0] == 0.0


def test_reports_an_unreachable_request_without_firing():
    """Two +x thrusters cannot give a -x force: nothing fires."""
    E = np.zeros((6, 2))
    E[0, :] = 1.0
    status, _, x, _ = _solve(
        E, np.array([-5.0, 0, 0, 0, 0, 0]), np.ones(2), np.zeros(2), np.ones(2), 6, np.full(6, 1e3)
    )
    assert status == LP_OK
    np.testing.assert_array_equal(x[:2], 0.0)


def test_a_budget_row_caps_a_tank():
    """A tank row (<= 0.25) caps the thirsty thruster's duty even though force goes unmet."""
    E = np.zeros((7, 1))
    E[0, 0] = 1.0
    E[6, 0] = 1.0
    status, _, x, _ = _solve(
        E,
        np.array([1.0, 0, 0, 0, 0, 0, 0.25]),
        np.ones(1),
        np.zeros(1),
        np.ones(1),
        6,
        np.full(6, 1e3),
    )
    assert status == LP_OK and x[0] == pytest.approx(0.25, abs=1e-12)


def test_columns_count():
    assert lp_columns(9, 6, 20) == 20 + 12 + 3
    assert math.isfinite(lp_columns(6, 6, 1))


def _filled(E_act, b, c_act, lb_act, ub_act, err_cost):
    """The whole LP (actuator, error and slack columns) as allocate() fills it."""
    n_rows, m = E_act.shape
    n_cols = lp_columns(n_rows, 6, m)
    E = np.zeros((n_rows, n_cols))
    E[:, :m] = E_act
    c = np.zeros(n_cols)
    c[:m] = c_act
    lb = np.zeros(n_cols)
    ub = np.zeros(n_cols)
    lb[:m] = lb_act
    ub[:m] = ub_act
    fill_lp_columns(E, c, lb, ub, n_rows, 6, m, err_cost)
    return E, b.astype(float).copy(), c, lb, ub, n_cols


@settings(max_examples=150, deadline=None, derandomize=True)
@given(
    rng=problems,
    m=st.integers(min_value=6, max_value=30),
    shift=st.floats(min_value=0.05, max_value=1.0),
)
def test_the_dual_simplex_from_a_dual_feasible_basis_reaches_the_cold_optimum(rng, m, shift):
    """Issue 18: the last cycle's optimal basis stays dual feasible when only b moves (c and E
    unchanged), so the dual simplex (Chvatal 1983 ch. 10) goes from it to a primal feasible
    basis that is optimal. Its objective equals the cold solve's to 1e-9 relative (the optimum
    may not be unique, the optimal value is) and linprog's to 1e-6, as the cold solve's does."""
    E_act, b, c_act, lb_act, ub_act, err_cost = _random_problem(rng, m, well_posed=True)
    _solve(E_act, b, c_act, lb_act, ub_act, 6, err_cost)
    x, state, basis = (a.copy() for a in _solve.last)
    b2 = b * (1.0 + shift * rng.uniform(-1.0, 1.0, size=b.shape))
    status, _, x_cold, _ = _solve(E_act, b2, c_act, lb_act, ub_act, 6, err_cost)
    assert status == LP_OK
    E, bb, c, lb, ub, n_cols = _filled(E_act, b2, c_act, lb_act, ub_act, err_cost)
    n_rows = E.shape[0]
    Binv = np.zeros((n_rows, n_rows))
    work = np.zeros((LP_WORK_ROWS, n_cols))
    start = _warm_basis(E, bb, lb, ub, n_rows, n_cols, x, state, basis, Binv, work)
    assert start != WARM_NONE
    # Both ways: pricing every column in full (n_unit = n_cols), and the error and slack
    # columns by their one non-zero (n_unit = m): the same solve to the bit (allocation.py,
    # "Unit columns"), pivot for pivot.
    runs = []
    for n_unit, n_eq in ((n_cols, 0), (m, 6)):
        arrays = [a.copy() for a in (x, state, basis, Binv, work)]
        xr, sr, br, Br, wr = arrays
        dual_it = 0
        if start == WARM_INFEASIBLE:
            ok, dual_it = _dual_simplex(
                E, bb, c, lb, ub, n_rows, n_cols, xr, sr, br, Br, wr, 500, n_unit, n_eq
            )
            assert ok, "the dual simplex failed from an optimal basis of the same c and E"
        status, it = _simplex(
            E, bb, c, lb, ub, n_rows, n_cols, xr, sr, br, Br, wr, 500, n_unit, n_eq
        )
        assert status == LP_OK
        runs.append(([a.tobytes() for a in arrays], dual_it, it))
    assert runs[0] == runs[1]
    x = xr
    xa = x[:m]
    assert np.all(xa >= lb_act) and np.all(xa <= ub_act), "a bound was broken"
    floor = 1e-13 * float(err_cost.max()) * (1.0 + float(np.abs(b2).max()))
    got = _objective(E_act, b2, c_act, 6, err_cost, xa)
    cold = _objective(E_act, b2, c_act, 6, err_cost, x_cold[:m])
    assert got == pytest.approx(cold, rel=1e-9, abs=floor)
    ref = _oracle(E_act, b2, c_act, lb_act, ub_act, 6, err_cost)
    assert got == pytest.approx(ref, rel=1e-6, abs=floor)


@settings(max_examples=100, deadline=None, derandomize=True)
@given(
    rng=problems,
    m=st.integers(min_value=6, max_value=30),
    shift=st.floats(min_value=0.0, max_value=0.5),
    tilt=st.floats(min_value=0.0, max_value=0.05),
)
def test_a_warm_start_after_b_and_e_move_matches_the_cold_optimum(rng, m, shift, tilt):
    """As the controller sees it: b moves and a budget row of E tilts (the role row follows the
    thrust direction), so the last basis may or may not stay dual feasible; whichever path the
    warm start takes (primal, dual, or back to cold), the objective is the cold solve's."""
    E, b, c, lb, ub, err_cost = _random_problem(rng, m, well_posed=True)
    _solve(E, b, c, lb, ub, 6, err_cost)
    start = _solve.last
    b2 = b * (1.0 + shift * rng.uniform(-1.0, 1.0, size=b.shape))
    E2 = E.copy()
    E2[6] *= 1.0 + tilt * rng.uniform(-1.0, 1.0, size=m)
    status, _, x_cold, _ = _solve(E2, b2, c, lb, ub, 6, err_cost)
    assert status == LP_OK
    status, _, x, _ = _solve(E2, b2, c, lb, ub, 6, err_cost, start=start)
    assert status == LP_OK
    xa = x[:m]
    assert np.all(xa >= lb) and np.all(xa <= ub)
    floor = 1e-13 * float(err_cost.max()) * (1.0 + float(np.abs(b2).max()))
    got = _objective(E2, b2, c, 6, err_cost, xa)
    assert got == pytest.approx(_objective(E2, b2, c, 6, err_cost, x_cold[:m]), rel=1e-9, abs=floor)


def test_a_warm_start_after_the_wrench_moves_takes_few_pivots():
    """Issue 18: when the wanted wrench moves so that the last optimum leaves its bounds, the
    warm start goes on from it by the dual simplex instead of starting cold. Over 40 thruster-
    like problems whose b moves by 20 %, the warm solves (dual pivots counted with the primal
    ones) take under a quarter of the cold solves' pivots (before, 57 %: 419 of 731; now 38)."""
    rng = np.random.default_rng(18)
    warm_total = 0
    cold_total = 0
    for _ in range(40):
        m = int(rng.integers(10, 25))
        E, b, c, lb, ub, err_cost = _random_problem(rng, m, well_posed=True)
        _solve(E, b, c, lb, ub, 6, err_cost)
        start = _solve.last
        b2 = b * (1.0 + 0.2 * rng.uniform(-1.0, 1.0, size=b.shape))
        status, cold_it, _, _ = _solve(E, b2, c, lb, ub, 6, err_cost)
        assert status == LP_OK
        status, warm_it, _, _ = _solve(E, b2, c, lb, ub, 6, err_cost, start=start)
        assert status == LP_OK
        cold_total += cold_it
        warm_total += warm_it
    assert warm_total < 0.25 * cold_total, (warm_total, cold_total)


def test_an_infeasible_budget_row_falls_back_to_the_cold_start():
    """A stuck-open thruster (lb = ub = 1) on a tank whose budget is 0: no basis meets the row,
    so the dual simplex finds no entering column and the cold start relaxes the row, as before:
    the same solve, bit for bit, as a cold start without the warm attempt."""
    E = np.zeros((7, 2))
    E[0] = [1.0, 1.0]
    E[6] = [1.0, 0.0]
    c = np.ones(2)
    err = np.full(6, 1e3)
    lb = np.zeros(2)
    ub = np.ones(2)
    _solve(E, np.array([1.0, 0, 0, 0, 0, 0, 2.0]), c, lb, ub, 6, err)
    start = _solve.last
    status, _, x, bb = _solve(
        E, np.array([1.0, 0, 0, 0, 0, 0, 0.0]), c, np.array([1.0, 0.0]), ub, 6, err, start=start
    )
    assert status == LP_OK
    np.testing.assert_allclose(x[:2], [1.0, 0.0], atol=1e-12)
    assert bb[6] == 1.0  # relaxed to what the stuck valve takes
    status, _, x_cold, _ = _solve(
        E, np.array([1.0, 0, 0, 0, 0, 0, 0.0]), c, np.array([1.0, 0.0]), ub, 6, err
    )
    np.testing.assert_array_equal(x, x_cold)
    # The dual simplex itself: a basis of the problem, out of bounds, and no column can enter.
    x, state, basis = (a.copy() for a in start)
    E_f, b_f, c_f, lb_f, ub_f, n_cols = _filled(
        E, np.array([1.0, 0, 0, 0, 0, 0, 0.0]), c, np.array([1.0, 0.0]), ub, err
    )
    Binv = np.zeros((7, 7))
    work = np.zeros((LP_WORK_ROWS, n_cols))
    assert _warm_basis(E_f, b_f, lb_f, ub_f, 7, n_cols, x, state, basis, Binv, work) == (
        WARM_INFEASIBLE
    )
    ok, _ = _dual_simplex(
        E_f, b_f, c_f, lb_f, ub_f, 7, n_cols, x, state, basis, Binv, work, 100, 2, 6
    )
    assert not ok
