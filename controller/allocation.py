"""Thruster allocation: a linear programme that meets the wrench with the least propellant.

Each control cycle the controller wants a force and a torque on the stack (a wrench ``w``, 6
rows) and has actuators: thruster duties in ``[0, 1]`` of a full-cycle impulse, the gimbal angle
increments of a gimbaled engine, the station's CMGs. Linear-programming allocation (Bodson,
"Evaluation of optimization methods for control allocation", JGCD 25(4), 2002, sec. III.C: the
error-minimisation and fuel-minimisation LPs, combined with weights) solves

    minimise    sum_r err_cost_r (e+_r + e-_r)  +  sum_j c_j x_j
    subject to  E_r x + e+_r - e-_r = b_r     r < n_eq      (the wrench rows, "soft")
                E_r x + s_r        = b_r     r >= n_eq     (the "<=" rows: roles, tank budgets)
                lb <= x <= ub,   e+, e-, s >= 0

``err_cost`` makes the priorities: torque errors cost ~1e3 times more than force errors, which
cost ~1e3 times more than the propellant of a full-cycle pulse (``c``). An LP's optimum is a
vertex and there are finitely many, so above some finite ratio the weighted optimum *is* the
lexicographic one (torque error first, then force error, then propellant); the ratios used
(1e3 per tier on rows scaled to O(1)) are far above what the stacks' geometry needs.

:func:`solve_lp` is a bounded-variable primal simplex (revised, with an explicit basis inverse
updated by one pivot per iteration; Dantzig's rule, switching to Bland's rule after a run of
degenerate pivots, which cannot cycle: Bland 1977). It starts from the signed unit basis of the
error and slack columns, which is always feasible, so no phase I is needed, or, in the
controller, from the last cycle's optimal basis while that stays feasible (a few pivots). When
the wanted wrench has moved that basis out of its bounds, it is still dual feasible (the costs
never change, E barely), and :func:`_dual_simplex`, a bounded-variable dual simplex, goes on from
it to the new optimum (a pivot or two where a cold start took 12-19), the primal simplex after it
confirming. The iterations reported count the dual pivots with the primal ones. It is
exact for its problem class: it stops at a basis whose reduced costs all have the right sign (to
a scale-aware tolerance), which is the LP optimum; tests/test_allocation.py checks it against
scipy's HiGHS (linprog) on random problems.

All kernels are pure, allocate nothing and never raise.
"""

from __future__ import annotations

import math

from thruster_hil.core.jit import inline_kernel, kernel
from thruster_hil.core.layout import Layout

# Variable states.
BASIC = 0
AT_LOWER = -1
AT_UPPER = 1

# Solver status.
LP_OK = 0
LP_ITERATION_LIMIT = 1
LP_UNBOUNDED = 2
LP_BAD_START = 3

# Zero terms (issue 18). A sum that starts at +0.0 (pi, alpha, x_B) never becomes -0.0 (in
# round-to-nearest x + -x is +0.0, and +0.0 + -0.0 is +0.0), and adding a zero, of either sign,
# leaves any other value as it is; so the kernels skip the terms whose factor is an exact zero
# (a basic variable of no cost, a zero of the entering column) and every bit is the full sum's.
# (The factors they multiply, Binv's entries, are finite: its pivots are at least 1e-12.)
#
# Unit columns (issue 18). The error and slack columns fill_lp_columns makes have one non-zero,
# +1 or -1. A reduced cost d_j = c_j - sum_k pi_k E_kj is then c_j - (+-pi_r) to the bit: it
# starts at c_j, which is never -0.0 (an error cost is positive, a slack's cost +0.0), and a
# value that is not -0.0 stays as it is when a zero of either sign is subtracted (+0.0 - +0.0
# and +0.0 - -0.0 are +0.0), so the other rows' zero terms change nothing; its scale
# |c_j| + sum_k |pi_k E_kj| likewise. A row of Binv N at such a column is 0.0 + (+-Binv[i, r]).
# The kernels take ``n_unit``, the first such column (n_cols when none is known, as for
# solve_lp), and ``n_eq`` (their layout), and price those columns with that one term.

#: Rows of ``work`` (each at least n_rows long) :func:`solve_lp` needs.
LP_WORK = Layout(
    "LP solver work rows",
    [
        ("W_PI", 1),  # simplex multipliers
        ("W_ALPHA", 1),  # the entering column in the basis
        ("W_TMP", 1),  # right-hand side scratch
        ("W_D", 1),  # dual simplex: reduced costs of all columns (n_cols long)
        ("W_DTOL", 1),  # dual simplex: their tolerances (n_cols long)
        ("W_ROW", 1),  # dual simplex: the pivot row, row r of Binv N (n_cols long)
    ],
)
W_PI, W_ALPHA, W_TMP, W_D, W_DTOL, W_ROW = LP_WORK.offsets
LP_WORK_ROWS = LP_WORK.length
#: Pivot tolerance on the entering column (rows are scaled to O(1)).
PIVOT_TOL = 1e-9
#: Relative tolerance of a reduced cost against the size of the terms that make it up: the
#: error costs are 1e6 times the propellant, so a looser one would miss propellant savings.
COST_TOL = 1e-14


@inline_kernel
def _nonbasic_rhs(E, b, x, state, n_rows, n_cols, out):
    """out = b - N x_N: the right-hand side the basic variables must meet."""
    # Column by column, so the rows' sums (each a chain of dependent subtractions) advance side
    # by side; each row still subtracts its terms in column order: the same numbers.
    for r in range(n_rows):
        out[r] = b[r]
    for j in range(n_cols):
        if state[j] != BASIC:
            xj = x[j]
            # Most non-basic variables sit at a bound of 0 (idle thrusters, error and slack
            # columns): subtracting E[r, j] * 0 leaves a non-zero sum as it is.
            if xj != 0.0:
                for r in range(n_rows):
                    out[r] -= E[r, j] * xj
    # Skipping a zero term can only change the sign of a zero sum, and only when the sum was
    # -0.0 before it (-0.0 - -0.0 is +0.0): a sum that starts from a b[r] that is not -0.0
    # never becomes -0.0 (x - y is -0.0 only for x = -0.0, y = +0.0; two different doubles
    # never cancel to zero, gradual underflow making their difference exact), and any other
    # value minus a zero of either sign is itself. So only a row whose b[r] is -0.0 and whose
    # sum came out zero is summed again with every term: every bit is what the full sum gives.
    for r in range(n_rows):
        if out[r] == 0.0 and math.copysign(1.0, b[r]) < 0.0:
            s = b[r]
            for j in range(n_cols):
                if state[j] != BASIC:
                    s -= E[r, j] * x[j]
            out[r] = s


@inline_kernel
def _basic_values(E, b, x, state, basis, Binv, n_rows, n_cols, tmp):
    """x_B = Binv (b - N x_N)."""
    _nonbasic_rhs(E, b, x, state, n_rows, n_cols, tmp)
    for r in range(n_rows):
        s = 0.0
        for k in range(n_rows):
            s += Binv[r, k] * tmp[k]
        x[basis[r]] = s


@kernel
def _refactor_basics(E, b, x, state, basis, M, n_rows, n_cols, rhs, rhs_ready):
    """x_B from B x_B = b - N x_N by Gaussian elimination with partial pivoting on the basis
    columns (M is overwritten). Leaves x_B as it is if B is singular to working precision.
    With ``rhs_ready``, ``rhs`` already holds b - N x_N (nothing non-basic moved since)."""
    if not rhs_ready:
        _nonbasic_rhs(E, b, x, state, n_rows, n_cols, rhs)
    for r in range(n_rows):
        for k in range(n_rows):
            M[r, k] = E[r, basis[k]]
    for k in range(n_rows):
        p = k
        big = abs(M[k, k])  # abs(M[p, k]), kept at hand
        for r in range(k + 1, n_rows):
            a = abs(M[r, k])
            if a > big:
                big = a
                p = r
        if big == 0.0:
            return
        if p != k:
            for c in range(n_rows):
                M[k, c], M[p, c] = M[p, c], M[k, c]
            rhs[k], rhs[p] = rhs[p], rhs[k]
        for r in range(k + 1, n_rows):
            if M[r, k] == 0.0:
                continue  # f would be zero (the basis is mostly unit columns): no division
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


@kernel
def solve_lp(E, b, c, lb, ub, n_rows, n_cols, x, state, basis, Binv, work, max_iter):
    """Minimise ``c x`` subject to ``E x = b`` and ``lb <= x <= ub`` (``ub`` may be inf).

    Uses ``E[:n_rows, :n_cols]``. On entry ``basis[:n_rows]`` names a feasible starting basis
    and ``Binv`` (>= n_rows, >= n_rows) holds its inverse; ``state`` is BASIC for those and
    AT_LOWER / AT_UPPER for the rest, and the non-basic ``x`` sit at those bounds. ``work`` is
    (LP_WORK_ROWS, >= n_rows) scratch. On return ``x``/``state``/``basis`` hold the optimal
    basic solution, every ``x`` within its bounds. Returns (status, iterations).
    """
    return _solve_lp(
        E, b, c, lb, ub, n_rows, n_cols, x, state, basis, Binv, work, max_iter, n_cols, 0
    )


@kernel
def _solve_lp(E, b, c, lb, ub, n_rows, n_cols, x, state, basis, Binv, work, max_iter, n_unit, n_eq):
    """:func:`solve_lp`, the columns from ``n_unit`` on :func:`fill_lp_columns`' unit columns
    for ``n_eq`` soft rows (see "Unit columns"; ``n_unit = n_cols``: none)."""
    _basic_values(E, b, x, state, basis, Binv, n_rows, n_cols, work[W_TMP])
    if not _basics_feasible(b, lb, ub, x, basis, n_rows):
        return LP_BAD_START, 0
    return _simplex(
        E, b, c, lb, ub, n_rows, n_cols, x, state, basis, Binv, work, max_iter, n_unit, n_eq
    )


@inline_kernel
def _basics_feasible(b, lb, ub, x, basis, n_rows):
    """Every basic variable within its bounds (to a tolerance relative to its row's b)."""
    for r in range(n_rows):
        j = basis[r]
        slack = 1e-9 * (1.0 + abs(b[r]))
        if x[j] < lb[j] - slack or x[j] > ub[j] + slack:
            return False
    return True


@inline_kernel
def _duals(c, basis, Binv, n_rows, pi):
    """pi = c_B' Binv, row by row of Binv (each pi[k] summed in the same order); a basic of no
    cost (a slack) adds zero terms and is skipped (see "Zero terms")."""
    for k in range(n_rows):
        pi[k] = 0.0
    for r in range(n_rows):
        cb = c[basis[r]]
        if cb != 0.0:
            for k in range(n_rows):
                pi[k] += cb * Binv[r, k]


@inline_kernel
def _reduced_cost(E, c, pi, j, n_rows):
    """Column j's reduced cost d_j = c_j - pi E_j and the tolerance a pricing allows it."""
    d = c[j]
    scale = abs(c[j])
    for k in range(n_rows):
        t = pi[k] * E[k, j]
        d -= t
        scale += abs(t)
    return d, COST_TOL * scale + 1e-300


@inline_kernel
def _unit_column(j, n_unit, n_eq):
    """Row and sign of the lone non-zero (+1 or -1) of column ``j >= n_unit`` in the layout
    :func:`fill_lp_columns` gives the columns after ``n_unit`` actuators: the errors e+, e- of
    each of the ``n_eq`` soft rows, then one slack per "<=" row."""
    k = j - n_unit
    if k < 2 * n_eq:
        return k >> 1, 1.0 - 2.0 * (k & 1)
    return k - n_eq, 1.0


@kernel
def _simplex(E, b, c, lb, ub, n_rows, n_cols, x, state, basis, Binv, work, max_iter, n_unit, n_eq):
    """:func:`solve_lp` from a feasible basis whose basic values are already in ``x``, and
    ``work[W_TMP]`` the right-hand side b - N x_N they were computed from. Columns from
    ``n_unit`` on are :func:`fill_lp_columns`' unit columns for ``n_eq`` soft rows (see "Unit
    columns"; ``n_unit = n_cols``: none)."""
    pi = work[W_PI]
    alpha = work[W_ALPHA]
    tmp = work[W_TMP]
    degenerate = 0
    bland = False
    it = 0
    status = LP_ITERATION_LIMIT
    while it < max_iter:
        _duals(c, basis, Binv, n_rows, pi)
        # Pricing: the non-basic variable whose move lowers the cost fastest.
        q = -1
        q_dir = 0
        best = 0.0
        for j in range(n_cols):
            st = state[j]
            if st == BASIC or lb[j] >= ub[j]:
                continue
            if j >= n_unit:
                # One term (see "Unit columns"), written out here: an inlined kernel taking
                # the arrays would add reference counting to every column.
                r, sign = _unit_column(j, n_unit, n_eq)
                t = pi[r] * sign
                d = c[j] - t
                tol = COST_TOL * (abs(c[j]) + abs(t)) + 1e-300
            else:
                d, tol = _reduced_cost(E, c, pi, j, n_rows)
            if st == AT_LOWER and d < -tol:
                score = -d
                direction = 1
            elif st == AT_UPPER and d > tol:
                score = d
                direction = -1
            else:
                continue
            if bland:
                q = j
                q_dir = direction
                break
            if score > best:
                best = score
                q = j
                q_dir = direction
        if q < 0:
            status = LP_OK
            break
        it += 1
        # Entering column in the basis: alpha = Binv E_q, column by column of Binv (each
        # alpha[r] summed in the same order).
        for r in range(n_rows):
            alpha[r] = 0.0
        for k in range(n_rows):
            e = E[k, q]
            if e != 0.0:  # zero terms (see "Zero terms" above)
                for r in range(n_rows):
                    alpha[r] += Binv[r, k] * e
        # Ratio test: x_q moves by q_dir * t, the basics by -q_dir * t * alpha.
        t_max = ub[q] - lb[q]
        leave = -1
        leave_side = AT_LOWER
        for r in range(n_rows):
            a = q_dir * alpha[r]
            jb = basis[r]
            if a > PIVOT_TOL:
                t = (x[jb] - lb[jb]) / a
                side = AT_LOWER
            elif a < -PIVOT_TOL and ub[jb] < math.inf:
                t = (ub[jb] - x[jb]) / (-a)
                side = AT_UPPER
            else:
                continue
            if t < 0.0:
                t = 0.0
            if t < t_max or (bland and t == t_max and leave >= 0 and jb < basis[leave]):
                t_max = t
                leave = r
                leave_side = side
        if t_max == math.inf:
            status = LP_UNBOUNDED
            break
        degenerate = degenerate + 1 if t_max == 0.0 else 0
        if degenerate > 2 * n_rows:
            bland = True
        step = q_dir * t_max
        x[q] += step
        for r in range(n_rows):
            x[basis[r]] -= step * alpha[r]
        if leave < 0:
            # The entering variable reaches its other bound first: a bound flip.
            if q_dir > 0:
                x[q] = ub[q]
                state[q] = AT_UPPER
            else:
                x[q] = lb[q]
                state[q] = AT_LOWER
            continue
        jl = basis[leave]
        x[jl] = lb[jl] if leave_side == AT_LOWER else ub[jl]
        state[jl] = leave_side
        basis[leave] = q
        state[q] = BASIC
        p = alpha[leave]
        for k in range(n_rows):
            Binv[leave, k] /= p
        for r in range(n_rows):
            f = alpha[r]
            if r != leave and f != 0.0:
                for k in range(n_rows):
                    Binv[r, k] -= f * Binv[leave, k]
    # Clean the basics of the pivots' accumulated round-off (a fresh solve with the final
    # basis: the error costs amplify any residual a millionfold), and never leave a bound.
    # With no pivot nothing non-basic has moved: b - N x_N is still in tmp, as it was computed
    # (the same numbers a recomputation would give).
    _refactor_basics(E, b, x, state, basis, Binv, n_rows, n_cols, tmp, it == 0)
    for j in range(n_cols):
        if x[j] < lb[j]:
            x[j] = lb[j]
        elif x[j] > ub[j]:
            x[j] = ub[j]
    return status, it


@kernel
def lp_columns(n_rows, n_eq, n_act):
    """Number of LP columns :func:`allocate` uses: actuators, two error columns per soft row,
    one slack per "<=" row."""
    return n_act + 2 * n_eq + (n_rows - n_eq)


@kernel
def _invert(M, n, perm):
    """Invert M[:n, :n] in place by Gauss-Jordan elimination with partial pivoting (the row
    interchanges undone as column interchanges at the end); ``perm`` (n) float scratch.
    Returns False, M spoilt, if a pivot is below 1e-12 (rows are scaled to O(1))."""
    for k in range(n):
        p = k
        big = abs(M[k, k])  # abs(M[p, k]), kept at hand
        for r in range(k + 1, n):
            a = abs(M[r, k])
            if a > big:
                big = a
                p = r
        if big < 1e-12:
            return False
        perm[k] = p
        if p != k:
            for col in range(n):
                M[k, col], M[p, col] = M[p, col], M[k, col]
        piv = M[k, k]
        M[k, k] = 1.0
        # Dividing by 1 or -1 is exact (x or -x, bit for bit): the pivot of a basic error or
        # slack column, most of the basis, needs no division.
        if piv == -1.0:
            for col in range(n):
                M[k, col] = -M[k, col]
        elif piv != 1.0:
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


#: What :func:`_warm_basis` found.
WARM_NONE = 0  # not a basis of this problem (or singular): cold start
WARM_FEASIBLE = 1  # a basis whose basic values are within their bounds: primal simplex
WARM_INFEASIBLE = 2  # a basis, Binv its inverse, but some basic value out of its bounds


@kernel
def _warm_basis(E, b, lb, ub, n_rows, n_cols, x, state, basis, Binv, work):
    """Make the basis left in ``basis``/``state`` (the last cycle's optimum) the start, if it
    is still a basis of this problem: non-basic values to their (new) bounds, Binv its inverse,
    the basic values computed. Returns WARM_FEASIBLE if the basics are within their bounds,
    WARM_INFEASIBLE if not, WARM_NONE if it is no basis (nothing usable then)."""
    # One pass counts the basics and puts the non-basic values at their bounds. When it is no
    # basis after all (WARM_NONE), the cold start that follows sets every value and state
    # afresh, so what this pass changed does not matter.
    count = 0
    for j in range(n_cols):
        st = state[j]
        if st == BASIC:
            count += 1
        elif st == AT_UPPER and ub[j] < math.inf and lb[j] < ub[j]:
            x[j] = ub[j]
        else:
            x[j] = lb[j]
            state[j] = AT_LOWER
    if count != n_rows:
        return WARM_NONE
    for r in range(n_rows):
        j = basis[r]
        if j < 0 or j >= n_cols or state[j] != BASIC:
            return WARM_NONE
    for r in range(n_rows):
        for k in range(n_rows):
            Binv[r, k] = E[r, basis[k]]
    if not _invert(Binv, n_rows, work[0]):
        return WARM_NONE
    # The right-hand side goes where _simplex's final clean-up can take it again.
    _basic_values(E, b, x, state, basis, Binv, n_rows, n_cols, work[W_TMP])
    if _basics_feasible(b, lb, ub, x, basis, n_rows):
        return WARM_FEASIBLE
    return WARM_INFEASIBLE


@kernel
def _reduced_costs(E, c, lb, ub, n_rows, n_cols, state, basis, Binv, pi, d, dtol, n_unit, n_eq):
    """pi = c_B' Binv and, for every non-basic column that is not fixed, its reduced cost
    d_j = c_j - pi E_j and the tolerance on it (as :func:`_simplex` prices them; ``n_unit``
    and ``n_eq`` as there). Basic and fixed columns get d = dtol = 0."""
    _duals(c, basis, Binv, n_rows, pi)
    for j in range(n_cols):
        if state[j] == BASIC or lb[j] >= ub[j]:
            d[j] = 0.0
            dtol[j] = 0.0
            continue
        if j >= n_unit:  # one term (see "Unit columns")
            r, sign = _unit_column(j, n_unit, n_eq)
            t = pi[r] * sign
            d[j] = c[j] - t
            dtol[j] = COST_TOL * (abs(c[j]) + abs(t)) + 1e-300
        else:
            d[j], dtol[j] = _reduced_cost(E, c, pi, j, n_rows)


@kernel
def _dual_simplex(
    E, b, c, lb, ub, n_rows, n_cols, x, state, basis, Binv, work, max_iter, n_unit, n_eq
):
    """Bounded-variable dual simplex from a basis of this problem that is primal infeasible
    (Binv its inverse, the basic values in ``x``, as :func:`_warm_basis` leaves them), up to
    the first primal feasible basis. ``work`` rows W_D, W_DTOL and W_ROW must be at least
    ``n_cols`` long.

    The textbook method (Chvatal, "Linear Programming", 1983, ch. 10; for the bounded variables
    and the two-pass ratio test, Koberstein, "The dual simplex method, techniques for a fast and
    stable implementation", PhD thesis, Paderborn 2005, ch. 3 and sec. 6.2.2). The start must
    be dual feasible: every non-basic column's reduced cost of the sign its bound allows. A
    boxed column with the wrong sign is moved to its other bound, which makes it so; a column
    unbounded above cannot be, and then the start is refused. Each iteration takes the basic
    variable furthest outside its bounds out of the basis (to the bound it breaks), computes its
    row of Binv N, and brings in, among the non-basic columns whose move takes that variable
    towards its bound, the one whose reduced cost reaches zero first as the leaving variable's
    grows (Harris' two passes: the dual step bounded with the reduced costs' tolerance, then the
    largest pivot within that bound). The reduced costs keep their signs, so the first primal
    feasible basis is optimal, to the tolerance: :func:`_simplex` after it fixes what Harris'
    test let slip. After a run of degenerate steps it switches to Bland's rule (leaving: the
    lowest variable index outside its bounds; entering: the lowest index at the smallest
    ratio), which cannot cycle.

    Returns (ok, pivots). ok: the basics recomputed fresh from Binv are within their bounds and
    ``work[W_TMP]`` holds the right-hand side they were computed from, as :func:`_simplex`
    expects. Not ok: the start is not dual feasible, no column can enter (the problem is primal
    infeasible: a "<=" row the actuators' lower bounds break), a pivot is numerically unsafe,
    or ``max_iter`` pivots were not enough; ``x``/``state``/``basis``/``Binv`` then hold
    whatever it reached and the caller must start afresh. ``n_unit``, ``n_eq``: as for
    :func:`_simplex`.
    """
    pi = work[W_PI]
    alpha = work[W_ALPHA]
    tmp = work[W_TMP]
    d = work[W_D]
    dtol = work[W_DTOL]
    row = work[W_ROW]
    _reduced_costs(E, c, lb, ub, n_rows, n_cols, state, basis, Binv, pi, d, dtol, n_unit, n_eq)
    flipped = False
    for j in range(n_cols):
        st = state[j]
        if st == BASIC or lb[j] >= ub[j]:
            continue
        if st == AT_LOWER and d[j] < -dtol[j]:
            if ub[j] == math.inf:
                return False, 0
            x[j] = ub[j]
            state[j] = AT_UPPER
            flipped = True
        elif st == AT_UPPER and d[j] > dtol[j]:
            x[j] = lb[j]
            state[j] = AT_LOWER
            flipped = True
    if flipped:
        _basic_values(E, b, x, state, basis, Binv, n_rows, n_cols, tmp)
    degenerate = 0
    bland = False
    it = 0
    while True:
        # Leaving row: the basic variable furthest outside its bounds (_basics_feasible's
        # tolerance), or under Bland's rule the lowest-numbered one outside.
        leave = -1
        worst = 0.0
        to_lower = True
        for r in range(n_rows):
            jb = basis[r]
            slack = 1e-9 * (1.0 + abs(b[r]))
            if x[jb] < lb[jb] - slack:
                v = lb[jb] - x[jb]
                low = True
            elif x[jb] > ub[jb] + slack:
                v = x[jb] - ub[jb]
                low = False
            else:
                continue
            if bland:
                if leave < 0 or jb < basis[leave]:
                    leave = r
                    to_lower = low
            elif v > worst:
                worst = v
                leave = r
                to_lower = low
        if leave < 0:
            break
        if it >= max_iter:
            return False, it
        if it > 0:
            _reduced_costs(
                E, c, lb, ub, n_rows, n_cols, state, basis, Binv, pi, d, dtol, n_unit, n_eq
            )
        # The pivot row: x_B[leave] = beta - sum_j row[j] x_j over the non-basic columns. The
        # leaving variable must rise (to_lower, s = 1) or fall (s = -1): a column at its lower
        # bound can rise, so it helps if s * row[j] < 0; one at its upper bound if > 0. Its
        # ratio is how far the leaving variable's reduced cost can grow before this column's
        # reaches zero.
        s = 1.0 if to_lower else -1.0
        bound = math.inf
        for j in range(n_cols):
            st = state[j]
            if st == BASIC or lb[j] >= ub[j]:
                row[j] = 0.0
                continue
            if j >= n_unit:
                r, sign = _unit_column(j, n_unit, n_eq)
                a = 0.0 + Binv[leave, r] * sign  # the one non-zero term (see "Unit columns")
            else:
                a = 0.0
                for k in range(n_rows):
                    a += Binv[leave, k] * E[k, j]
            row[j] = a
            sa = s * a
            if st == AT_LOWER and sa < -PIVOT_TOL:
                dual_slack = d[j]
            elif st == AT_UPPER and sa > PIVOT_TOL:
                dual_slack = -d[j]
            else:
                continue
            t = (max(dual_slack, 0.0) + (0.0 if bland else dtol[j])) / abs(a)
            if t < bound:
                bound = t
        if bound == math.inf:
            return False, it
        # Second pass: under Harris, the largest pivot whose ratio is within the bound; under
        # Bland, the lowest index at the smallest ratio.
        q = -1
        best = 0.0
        ratio = 0.0
        for j in range(n_cols):
            st = state[j]
            if st == BASIC or lb[j] >= ub[j]:
                continue
            a = row[j]
            sa = s * a
            if st == AT_LOWER and sa < -PIVOT_TOL:
                dual_slack = d[j]
            elif st == AT_UPPER and sa > PIVOT_TOL:
                dual_slack = -d[j]
            else:
                continue
            t = max(dual_slack, 0.0) / abs(a)
            if bland:
                if t == bound:
                    q = j
                    ratio = t
                    break
            elif t <= bound and abs(a) > best:
                best = abs(a)
                q = j
                ratio = t
        if q < 0:
            return False, it
        # The entering column in the basis, as _simplex computes it; its entry in the leaving
        # row must agree with the pivot row's, or the basis inverse has drifted too far.
        for r in range(n_rows):
            alpha[r] = 0.0
        for k in range(n_rows):
            e = E[k, q]
            if e != 0.0:  # zero terms (see "Zero terms" above)
                for r in range(n_rows):
                    alpha[r] += Binv[r, k] * e
        p = alpha[leave]
        if abs(p) <= PIVOT_TOL or abs(p - row[q]) > 1e-7 * (abs(p) + abs(row[q])):
            return False, it
        it += 1
        degenerate = degenerate + 1 if ratio == 0.0 else 0
        if degenerate > 2 * n_rows:
            bland = True
        # Primal step: x_q moves until the leaving variable sits on the bound it broke.
        jl = basis[leave]
        target = lb[jl] if to_lower else ub[jl]
        step = (x[jl] - target) / p
        x[q] += step
        for r in range(n_rows):
            x[basis[r]] -= step * alpha[r]
        x[jl] = target
        state[jl] = AT_LOWER if to_lower else AT_UPPER
        basis[leave] = q
        state[q] = BASIC
        for k in range(n_rows):
            Binv[leave, k] /= p
        for r in range(n_rows):
            f = alpha[r]
            if r != leave and f != 0.0:
                for k in range(n_rows):
                    Binv[r, k] -= f * Binv[leave, k]
    # Fresh basic values (no drift from the incremental updates), and in tmp the right-hand
    # side they came from, as _simplex's clean-up expects.
    _basic_values(E, b, x, state, basis, Binv, n_rows, n_cols, tmp)
    return _basics_feasible(b, lb, ub, x, basis, n_rows), it


@kernel
def allocate(
    E, b, c, lb, ub, n_rows, n_eq, n_act, err_cost, x, state, basis, Binv, work, max_iter, warm
):
    """Actuators ``x[:n_act]`` in [lb, ub] meeting rows ``E[:n_rows, :n_act] x ~ b`` at least cost.

    The caller fills the actuator part: ``E[:n_rows, :n_act]``, ``c``/``lb``/``ub[:n_act]`` and
    ``b[:n_rows]``; rows below ``n_eq`` are soft equalities whose errors cost ``err_cost[r]``
    per unit, the rest are ``<=`` rows. This fills the error and slack columns after the
    actuators (:func:`lp_columns` in all) and solves by :func:`solve_lp`: with ``warm``, from
    the basis ``basis``/``state`` hold (the last cycle's optimum) when it is still feasible,
    which from one cycle to the next it mostly is, or by :func:`_dual_simplex` from it when it
    is not but is still dual feasible (then ``work`` must be (LP_WORK_ROWS, >= n_cols)), the
    iterations returned counting its pivots too; otherwise from every actuator at its lower
    bound with the error and slack columns basic. There, a ``<=`` row that the actuators' lower
    bounds already break (a stuck-open valve on an empty budget) is relaxed to what they take:
    nothing else could be done about it. Returns (status, iterations).
    """
    fill_lp_columns(E, c, lb, ub, n_rows, n_eq, n_act, err_cost)
    return allocate_filled(
        E, b, c, lb, ub, n_rows, n_eq, n_act, x, state, basis, Binv, work, max_iter, warm
    )


@kernel
def fill_lp_columns(E, c, lb, ub, n_rows, n_eq, n_act, err_cost):
    """The error and slack columns after the actuators (:func:`lp_columns` in all): their
    entries of ``E``, costs ``c`` and bounds. They depend only on the sizes and ``err_cost``,
    so a caller that solves the same-shaped LP every cycle fills them once."""
    n_cols = lp_columns(n_rows, n_eq, n_act)
    for j in range(n_act, n_cols):
        for r in range(n_rows):
            E[r, j] = 0.0
        lb[j] = 0.0
        ub[j] = math.inf
        c[j] = 0.0
    for r in range(n_eq):
        E[r, n_act + 2 * r] = 1.0
        E[r, n_act + 2 * r + 1] = -1.0
        c[n_act + 2 * r] = err_cost[r]
        c[n_act + 2 * r + 1] = err_cost[r]
    for r in range(n_eq, n_rows):
        E[r, n_act + 2 * n_eq + (r - n_eq)] = 1.0


@kernel
def allocate_filled(
    E, b, c, lb, ub, n_rows, n_eq, n_act, x, state, basis, Binv, work, max_iter, warm
):
    """:func:`allocate` with the error and slack columns already filled by
    :func:`fill_lp_columns` (and left alone since). Returns (status, iterations)."""
    n_cols = lp_columns(n_rows, n_eq, n_act)
    dual_it = 0
    if warm:
        start = _warm_basis(E, b, lb, ub, n_rows, n_cols, x, state, basis, Binv, work)
        if start == WARM_FEASIBLE:
            # _warm_basis has just computed the basics and checked them as solve_lp would: the
            # same numbers from the same inputs, so straight to the pivots.
            return _simplex(
                E, b, c, lb, ub, n_rows, n_cols, x, state, basis, Binv, work, max_iter, n_act, n_eq
            )
        if start == WARM_INFEASIBLE:
            # The wanted wrench moved: last cycle's optimum is out of bounds but, c unchanged
            # and E barely, normally still dual feasible. The dual simplex goes from it to a
            # feasible basis that is (to the tolerance) optimal; the primal simplex confirms.
            ok, dual_it = _dual_simplex(
                E, b, c, lb, ub, n_rows, n_cols, x, state, basis, Binv, work, max_iter, n_act, n_eq
            )
            if ok:
                status, it = _simplex(
                    E,
                    b,
                    c,
                    lb,
                    ub,
                    n_rows,
                    n_cols,
                    x,
                    state,
                    basis,
                    Binv,
                    work,
                    max_iter,
                    n_act,
                    n_eq,
                )
                return status, dual_it + it
    # The cold start sets every variable, the basis and Binv afresh: whatever the dual simplex
    # left, this is the same solve as without it.
    for j in range(n_act):
        x[j] = lb[j]
        state[j] = AT_LOWER
    for r in range(n_rows):
        s = b[r]
        for j in range(n_act):
            s -= E[r, j] * x[j]
        if r < n_eq:
            jp = n_act + 2 * r
            jm = jp + 1
            if s >= 0.0:
                basis[r] = jp
                x[jm] = 0.0
                state[jm] = AT_LOWER
            else:
                basis[r] = jm
                x[jp] = 0.0
                state[jp] = AT_LOWER
        else:
            js = n_act + 2 * n_eq + (r - n_eq)
            basis[r] = js
            if s < 0.0:
                b[r] -= s
        state[basis[r]] = BASIC
        for k in range(n_rows):
            Binv[r, k] = 0.0
        Binv[r, r] = 1.0 / E[r, basis[r]]
    status, it = _solve_lp(
        E, b, c, lb, ub, n_rows, n_cols, x, state, basis, Binv, work, max_iter, n_act, n_eq
    )
    return status, dual_it + it
