"""The allocation's linear algebra skips work that cannot change a bit (issue 18).

controller/allocation.py's kernels skip, for speed, the terms of a sum whose factor is zero
(``_nonbasic_rhs``: a non-basic variable at 0), the divisions whose result is thrown away
(``_refactor_basics``: a zero below the pivot) and the division of a pivot row by 1 or -1
(``_invert``: the unit columns of the basic errors and slacks), and the duals skip the basics
of no cost (``_reduced_costs``, ``_simplex``), which price the error and slack columns by
their one non-zero term. Each is exact: these tests hold
the kernels, byte for byte (signed zeros included), to the plain algorithms they replaced,
written out again here and compiled the same way, on random sparse matrices like the
controller's (unit columns, exact zeros of both signs, variables at 0, 1 and between).
"""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from numba import njit
from thruster_hil.controller.allocation import (
    AT_LOWER,
    AT_UPPER,
    BASIC,
    _invert,
    _nonbasic_rhs,
    _reduced_costs,
    _refactor_basics,
    fill_lp_columns,
    lp_columns,
)

from thruster_hil.core.jit import JIT_OPTIONS

seeds = st.integers(min_value=0, max_value=2**31 - 1)
_PLAIN = {k: v for k, v in JIT_OPTIONS.items() if k != "cache"}


@njit(**_PLAIN)
def _plain_rhs(E, b, x, state, n_rows, n_cols, out):
    for r in range(n_rows):
        out[r] = b[r]
    for j in range(n_cols):
        if state[j] != BASIC:
            xj = x[j]
            for r in range(n_rows):
                out[r] -= E[r, j] * xj


@njit(**_PLAIN)
def _plain_invert(M, n, perm):
    for k in range(n):
        p = k
        for r in range(k + 1, n):
            if abs(M[r, k]) > abs(M[p, k]):
                p = r
        if abs(M[p, k]) < 1e-12:
            return False
        perm[k] = p
        if p != k:
            for col in range(n):
                M[k, col], M[p, col] = M[p, col], M[k, col]
        piv = M[k, k]
        M[k, k] = 1.0
        for col in range(n):
            M[k, col] /= piv
        for r in range(n):
            if r != k:
                f = M[r, k]
                if f != 0.0:
                    M[r, k] = 0.0
                    for col in range(n):
                        M[r, col] -= f * M[k, col]
    for k in range(n - 1, -1, -1):
        p = int(perm[k])
        if p != k:
            for r in range(n):
                M[r, k], M[r, p] = M[r, p], M[r, k]
    return True


@njit(**_PLAIN)
def _plain_refactor(E, b, x, state, basis, M, n_rows, n_cols, rhs):
    _plain_rhs(E, b, x, state, n_rows, n_cols, rhs)
    for r in range(n_rows):
        for k in range(n_rows):
            M[r, k] = E[r, basis[k]]
    for k in range(n_rows):
        p = k
        for r in range(k + 1, n_rows):
            if abs(M[r, k]) > abs(M[p, k]):
                p = r
        if M[p, k] == 0.0:
            return
        if p != k:
            for c in range(n_rows):
                M[k, c], M[p, c] = M[p, c], M[k, c]
            rhs[k], rhs[p] = rhs[p], rhs[k]
        for r in range(k + 1, n_rows):
            f = M[r, k] / M[k, k]
            if f != 0.0:
                for c in range(k, n_rows):
                    M[r, c] -= f * M[k, c]
                rhs[r] -= f * rhs[k]
    for k in range(n_rows - 1, -1, -1):
        s = rhs[k]
        for c in range(k + 1, n_rows):
            s -= M[k, c] * x[basis[c]]
        x[basis[k]] = s / M[k, k]


def _lp(rng):
    """A controller-like LP: dense actuator columns with exact zeros of both signs, then
    signed unit columns (errors, slacks); a basis of some of each; non-basic values at 0, -0,
    1 or between; right-hand sides with signed zeros."""
    n_rows = int(rng.integers(2, 12))
    n_act = int(rng.integers(1, 20))
    dense = rng.normal(size=(n_rows, n_act))
    dense[rng.random(dense.shape) < 0.3] = 0.0
    dense[rng.random(dense.shape) < 0.15] = -0.0
    units = np.zeros((n_rows, 2 * n_rows))
    for r in range(n_rows):
        units[r, 2 * r] = 1.0
        units[r, 2 * r + 1] = -1.0
    E = np.hstack([dense, units])
    n_cols = E.shape[1]
    basis = rng.choice(n_cols, size=n_rows, replace=False).astype(np.int64)
    state = rng.choice([AT_LOWER, AT_UPPER], size=n_cols).astype(np.int64)
    state[basis] = BASIC
    x = rng.choice([0.0, -0.0, 1.0, 0.5], size=n_cols, p=[0.5, 0.1, 0.3, 0.1])
    b = rng.choice([0.0, -0.0, 1.0], size=n_rows) * rng.normal(size=n_rows)
    b[rng.random(n_rows) < 0.3] = -0.0
    return E, b, x, state, basis, n_rows, n_cols


@settings(max_examples=300, deadline=None, derandomize=True)
@given(seed=seeds)
def test_the_right_hand_side_is_the_full_sum_bit_for_bit(seed):
    E, b, x, state, _, n_rows, n_cols = _lp(np.random.default_rng(seed))
    got = np.full(n_rows, np.nan)
    want = np.full(n_rows, np.nan)
    _nonbasic_rhs(E, b, x, state, n_rows, n_cols, got)
    _plain_rhs(E, b, x, state, n_rows, n_cols, want)
    assert got.tobytes() == want.tobytes()


def test_a_skipped_zero_term_would_have_made_a_negative_zero_positive():
    """The case the re-summing is for: b = -0.0 and a term -1 * 0.0 = -0.0 give +0.0."""
    E = np.array([[-1.0, 1.0]])
    b = np.array([-0.0])
    x = np.array([0.0, 5.0])
    state = np.array([AT_LOWER, BASIC], np.int64)
    out = np.zeros(1)
    _nonbasic_rhs(E, b, x, state, 1, 2, out)
    assert out.tobytes() == np.array([0.0]).tobytes()  # +0.0, as the full sum gives


@settings(max_examples=300, deadline=None, derandomize=True)
@given(seed=seeds)
def test_the_basis_inverse_is_the_plain_gauss_jordan_bit_for_bit(seed):
    E, _, _, _, basis, n_rows, _ = _lp(np.random.default_rng(seed))
    B = np.ascontiguousarray(E[:, basis])
    got, want = B.copy(), B.copy()
    ok_got = _invert(got, n_rows, np.zeros(n_rows))
    ok_want = _plain_invert(want, n_rows, np.zeros(n_rows))
    assert ok_got == ok_want
    if ok_want:
        assert got.tobytes() == want.tobytes()


@settings(max_examples=300, deadline=None, derandomize=True)
@given(seed=seeds)
def test_the_refactored_basics_are_the_plain_elimination_bit_for_bit(seed):
    E, b, x, state, basis, n_rows, n_cols = _lp(np.random.default_rng(seed))
    x_got, x_want = x.copy(), x.copy()
    M_got, M_want = np.zeros((n_rows, n_rows)), np.zeros((n_rows, n_rows))
    rhs_got, rhs_want = np.zeros(n_rows), np.zeros(n_rows)
    _refactor_basics(E, b, x_got, state, basis, M_got, n_rows, n_cols, rhs_got, False)
    _plain_refactor(E, b, x_want, state, basis, M_want, n_rows, n_cols, rhs_want)
    assert x_got.tobytes() == x_want.tobytes()
    assert rhs_got.tobytes() == rhs_want.tobytes()
    assert M_got.tobytes() == M_want.tobytes()


@njit(**_PLAIN)
def _plain_reduced_costs(E, c, lb, ub, n_rows, n_cols, state, basis, Binv, pi, d, dtol):
    for k in range(n_rows):
        pi[k] = 0.0
    for r in range(n_rows):
        cb = c[basis[r]]
        for k in range(n_rows):
            pi[k] += cb * Binv[r, k]
    for j in range(n_cols):
        if state[j] == BASIC or lb[j] >= ub[j]:
            d[j] = 0.0
            dtol[j] = 0.0
            continue
        dj = c[j]
        scale = abs(c[j])
        for k in range(n_rows):
            t = pi[k] * E[k, j]
            dj -= t
            scale += abs(t)
        d[j] = dj
        dtol[j] = 1e-14 * scale + 1e-300


@settings(max_examples=300, deadline=None, derandomize=True)
@given(seed=seeds)
def test_the_duals_skip_the_basics_of_no_cost_bit_for_bit(seed):
    rng = np.random.default_rng(seed)
    E, _, _, state, basis, n_rows, n_cols = _lp(rng)
    c = rng.choice([0.0, -0.0, 1.0, 1e3], size=n_cols) * rng.uniform(0.5, 2.0, n_cols)
    lb = np.zeros(n_cols)
    ub = rng.choice([0.0, 1.0, np.inf], size=n_cols)
    Binv = rng.normal(size=(n_rows, n_rows))
    Binv[rng.random(Binv.shape) < 0.3] = -0.0
    got = [np.full(n, np.nan) for n in (n_rows, n_cols, n_cols)]
    want = [np.full(n, np.nan) for n in (n_rows, n_cols, n_cols)]
    _reduced_costs(E, c, lb, ub, n_rows, n_cols, state, basis, Binv, *got, n_cols, 0)
    _plain_reduced_costs(E, c, lb, ub, n_rows, n_cols, state, basis, Binv, *want)
    for g, w in zip(got, want, strict=True):
        assert g.tobytes() == w.tobytes()


@settings(max_examples=300, deadline=None, derandomize=True)
@given(seed=seeds)
def test_the_unit_columns_reduced_costs_are_the_full_sums_bit_for_bit(seed):
    """The error and slack columns fill_lp_columns makes (one +1 or -1 each) priced by their
    one non-zero term (allocation.py, "Unit columns") give the full sums' bits, on LPs with
    "<=" rows too, multipliers with zeros of both signs and slacks of cost +0.0."""
    rng = np.random.default_rng(seed)
    n_rows = int(rng.integers(2, 12))
    n_eq = int(rng.integers(0, n_rows + 1))
    n_act = int(rng.integers(1, 20))
    n_cols = lp_columns(n_rows, n_eq, n_act)
    E = np.zeros((n_rows, n_cols))
    E[:, :n_act] = rng.normal(size=(n_rows, n_act))
    c = np.zeros(n_cols)
    c[:n_act] = rng.uniform(0.5, 2.0, n_act)
    lb = np.zeros(n_cols)
    ub = np.zeros(n_cols)
    ub[:n_act] = rng.choice([0.0, 1.0], size=n_act)
    err_cost = rng.choice([1.0, 1e3, 1e6], size=max(n_eq, 1))
    fill_lp_columns(E, c, lb, ub, n_rows, n_eq, n_act, err_cost)
    basis = rng.choice(n_cols, size=n_rows, replace=False).astype(np.int64)
    state = rng.choice([AT_LOWER, AT_UPPER], size=n_cols).astype(np.int64)
    state[basis] = BASIC
    Binv = rng.normal(size=(n_rows, n_rows)) * rng.choice([1.0, 1e6, 1e-6], size=(n_rows, 1))
    Binv[rng.random(Binv.shape) < 0.3] = 0.0
    Binv[rng.random(Binv.shape) < 0.15] = -0.0
    got = [np.full(n, np.nan) for n in (n_rows, n_cols, n_cols)]
    want = [np.full(n, np.nan) for n in (n_rows, n_cols, n_cols)]
    _reduced_costs(E, c, lb, ub, n_rows, n_cols, state, basis, Binv, *got, n_act, n_eq)
    _plain_reduced_costs(E, c, lb, ub, n_rows, n_cols, state, basis, Binv, *want)
    for g, w in zip(got, want, strict=True):
        assert g.tobytes() == w.tobytes()
