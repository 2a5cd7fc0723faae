"""Allocation: the active-set box QP against scipy.optimize.lsq_linear (BVLS), a test-only oracle.

The QP  min 0.5||W^1/2 (A x - w)||^2 + 0.5 sum reg x^2, lb <= x <= ub  is the bounded least-squares
problem  min ||[W^1/2 A; diag(sqrt reg)] x - [W^1/2 w; 0]||^2, which lsq_linear(method="bvls")
solves exactly (Stark & Parker 1995). Tolerance: optimal cost within 1e-6 relative.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import lsq_linear

from controller.allocation import (
    ALLOC_WORK_ROWS,
    AT_LOWER,
    AT_UPPER,
    FREE,
    QP_OK,
    allocate,
    normal_matrix,
)


def _solve(A, row_w, reg, w, lb, ub, x0=None, wset=None):
    m = A.shape[1]
    H = np.empty((m, m))
    normal_matrix(A, row_w, reg, H)
    x = np.zeros(m) if x0 is None else x0.copy()
    ws = np.zeros(m, np.int8) if wset is None else wset.copy()
    achieved = np.empty(A.shape[0])
    status, rel, it, _ = allocate(A, row_w, H, w, lb, ub, x, ws, np.empty((m, m)),
                                  np.empty((ALLOC_WORK_ROWS, m)), np.empty(m, np.int64),
                                  achieved, 10 * m + 10)
    return status, rel, it, x, ws, achieved


def _cost(A, row_w, reg, w, x):
    r = A @ x - w
    return 0.5 * (r @ (row_w * r)) + 0.5 * np.sum(reg * x * x)


def _oracle(A, row_w, reg, w, lb, ub):
    """scipy's BVLS on the free variables (it needs lb < ub); fixed ones sit at their bound."""
    x = lb.astype(float).copy()
    free = lb < ub
    if not free.any():
        return x
    sw = np.sqrt(row_w)
    Af = A[:, free]
    A_aug = np.vstack([sw[:, None] * Af, np.diag(np.sqrt(reg[free]))])
    b_aug = np.concatenate([sw * (w - A[:, ~free] @ x[~free]), np.zeros(Af.shape[1])])
    res = lsq_linear(A_aug, b_aug, bounds=(lb[free], ub[free]), method="bvls", tol=1e-14,
                     lsmr_tol=None, max_iter=10_000)
    x[free] = res.x
    return x


problems = st.integers(min_value=0, max_value=2**31 - 1).map(np.random.default_rng)


def _random_problem(rng, m, well_posed):
    A = rng.normal(size=(6, m)) * rng.choice([1.0, 20.0], size=(6, 1))
    row_w = rng.uniform(0.1, 10.0, size=6)
    reg = rng.uniform(1e-6, 1e-3, size=m)
    ub = rng.uniform(0.5, 2.0, size=m)
    lb = np.zeros(m)
    if not well_posed:
        dead = rng.random(m) < 0.3
        ub[dead] = 0.0  # failed thrusters: lb = ub = 0
        signed = rng.random(m) < 0.2
        lb[signed] = -ub[signed]  # CMG-like signed actuators
    x_true = rng.uniform(lb, ub)
    w = A @ x_true if well_posed else rng.normal(size=6) * 50.0
    return A, row_w, reg, w, lb, ub


@settings(max_examples=150, deadline=None)
@given(rng=problems, m=st.integers(min_value=6, max_value=30))
def test_reaches_scipy_optimum_on_well_posed_problems(rng, m):
    A, row_w, reg, w, lb, ub = _random_problem(rng, m, well_posed=True)
    status, rel, _, x, _, _ = _solve(A, row_w, reg, w, lb, ub)
    assert status == QP_OK
    ref = _oracle(A, row_w, reg, w, lb, ub)
    c, c_ref = _cost(A, row_w, reg, w, x), _cost(A, row_w, reg, w, ref)
    assert c <= c_ref * (1 + 1e-6) + 1e-12


@settings(max_examples=150, deadline=None)
@given(rng=problems, m=st.integers(min_value=1, max_value=30))
def test_never_violates_a_bound_on_ill_posed_problems(rng, m):
    A, row_w, reg, w, lb, ub = _random_problem(rng, m, well_posed=False)
    status, rel, _, x, ws, _ = _solve(A, row_w, reg, w, lb, ub)
    assert status == QP_OK
    assert np.all(x >= lb) and np.all(x <= ub)
    assert np.all(x[ub == 0.0] == 0.0), "a failed thruster was used"
    ref = _oracle(A, row_w, reg, w, lb, ub)
    c, c_ref = _cost(A, row_w, reg, w, x), _cost(A, row_w, reg, w, ref)
    assert c <= c_ref * (1 + 1e-6) + 1e-12


@settings(max_examples=50, deadline=None)
@given(rng=problems)
def test_warm_start_from_any_working_set_gives_the_same_optimum(rng):
    A, row_w, reg, w, lb, ub = _random_problem(rng, 18, well_posed=False)
    _, _, _, x_cold, _, _ = _solve(A, row_w, reg, w, lb, ub)
    wset = rng.choice([FREE, AT_LOWER, AT_UPPER], size=18).astype(np.int8)
    _, _, _, x_warm, _, _ = _solve(A, row_w, reg, w, lb, ub, rng.uniform(-1, 3, 18), wset)
    np.testing.assert_allclose(x_warm, x_cold, atol=1e-9)


def test_reports_an_unreachable_request():
    """Two thrusters that can only push +x cannot give a -x force: residual 1, nothing fired."""
    A = np.zeros((6, 2))
    A[0, :] = 1.0
    status, rel, _, x, _, achieved = _solve(A, np.ones(6), np.full(2, 1e-6),
                                            np.array([-5.0, 0, 0, 0, 0, 0]), np.zeros(2),
                                            np.ones(2))
    assert status == QP_OK
    assert rel == pytest.approx(1.0)
    np.testing.assert_array_equal(x, 0.0)


def test_exact_request_is_met_with_least_effort():
    """A couple about z from two opposite thrusters: both fire equally; no opposing waste."""
    A = np.zeros((6, 4))
    A[0] = [1.0, -1.0, 1.0, -1.0]  # force x
    A[5] = [10.0, 10.0, -10.0, -10.0]  # torque z
    w = np.array([0.0, 0, 0, 0, 0, 10.0])
    status, rel, _, x, _, _ = _solve(A, np.ones(6), np.full(4, 1e-9), w, np.zeros(4), np.ones(4))
    assert status == QP_OK and rel < 1e-6
    np.testing.assert_allclose(x, [0.5, 0.5, 0.0, 0.0], atol=1e-6)


def test_saturation_is_a_binding_upper_bound_not_a_resting_thruster():
    """Asking one +x thruster for twice its range saturates it; asking for half does not, and
    an idle thruster at zero is not saturated."""
    A = np.zeros((6, 2))
    A[0, 0] = 1.0
    A[1, 1] = 1.0
    m = 2
    H = np.empty((m, m))
    normal_matrix(A, np.ones(6), np.full(m, 1e-9), H)
    for want_x, expect in ((2.0, True), (0.5, False)):
        x = np.zeros(m)
        *_, saturated = allocate(A, np.ones(6), H, np.array([want_x, 0, 0, 0, 0, 0.0]),
                                 np.zeros(m), np.ones(m), x, np.zeros(m, np.int8),
                                 np.empty((m, m)), np.empty((ALLOC_WORK_ROWS, m)),
                                 np.empty(m, np.int64), np.empty(6), 50)
        assert saturated is expect
