"""Thruster allocation: the bounded, weighted least-squares wrench problem, solved exactly.

Each control cycle the controller wants a force and a torque on the stack (a wrench ``w``, 6) and
has m actuators: thruster impulses in ``[0, ub_i]`` and, optionally, the station's CMGs as three
signed torque actuators within their budget. With ``A`` (6 x m) mapping actuator values to the
wrench, the allocation solves

    minimise  0.5 * || diag(sqrt(row_weight)) (A x - w) ||^2  +  0.5 * sum_i reg_i x_i^2
    subject to lb_i <= x_i <= ub_i

a strictly convex quadratic programme (every ``reg_i > 0``) with a unique minimiser. The small
``reg`` term picks, among the actuator sets that deliver the same wrench, the one with the least
quadratic effort (no opposing pairs firing against each other, CMGs preferred where their
``reg`` is smaller).

The solver is a primal active-set method for box constraints (Nocedal & Wright, *Numerical
Optimization*, 2nd ed., Algorithm 16.3, specialised to bounds): on the free set it solves the
equality-constrained sub-problem by Cholesky, steps to the nearest blocking bound, and releases
the bound whose multiplier has the wrong sign. It terminates in a finite number of iterations
with the exact optimum (to round-off), and it warm-starts from the previous cycle's working set,
which from one cycle to the next usually needs one or two iterations.

A failed thruster is given ``lb = ub = 0``: it is never used. A stuck-open one can be given
``lb = ub = its impulse``: the others then cancel it.

All kernels are pure, allocate nothing and never raise.
"""

from __future__ import annotations

import math

from sims._jit import kernel

# Working-set codes.
FREE = 0
AT_LOWER = -1
AT_UPPER = 1

# Solver status bits.
QP_OK = 0
QP_ITERATION_LIMIT = 1
QP_NOT_POSITIVE_DEFINITE = 2

#: Number of length-m scratch rows :func:`solve_box_qp` needs (besides the m x m Cholesky factor).
QP_WORK_ROWS = 2


@kernel
def _cholesky_solve_free(H, free_idx, nf, rhs, L, out):
    """Solve H[F,F] y = rhs[0:nf] for the free indices F; L is (>= nf, >= nf) scratch.

    Returns False (nothing meaningful in ``out``) if H[F,F] is not positive definite.
    """
    for a in range(nf):
        ia = free_idx[a]
        for b in range(a + 1):
            ib = free_idx[b]
            s = H[ia, ib]
            for k in range(b):
                s -= L[a, k] * L[b, k]
            if a == b:
                if not (s > 0.0):
                    return False
                L[a, a] = math.sqrt(s)
            else:
                L[a, b] = s / L[b, b]
    for a in range(nf):
        s = rhs[a]
        for k in range(a):
            s -= L[a, k] * out[k]
        out[a] = s / L[a, a]
    for a in range(nf - 1, -1, -1):
        s = out[a]
        for k in range(a + 1, nf):
            s -= L[k, a] * out[k]
        out[a] = s / L[a, a]
    return True


@kernel
def solve_box_qp(H, g, lb, ub, x, wset, L, work, free_idx, max_iter):
    """Minimise 0.5 x'Hx + g'x subject to lb <= x <= ub; H symmetric positive definite (m x m).

    ``x`` (m) and ``wset`` (m, int8: FREE / AT_LOWER / AT_UPPER) are the warm start on entry and
    the solution and its active set on return. ``L`` is (m, m) scratch, ``work`` is
    (QP_WORK_ROWS, m) float scratch and ``free_idx`` (m) int64 scratch. Returns (status,
    iterations).
    """
    m = x.shape[0]
    rhs = work[0]
    sol = work[1]
    # Make the start feasible and consistent with its working set.
    for i in range(m):
        if lb[i] >= ub[i]:
            x[i] = lb[i]
            wset[i] = AT_LOWER
        elif wset[i] == AT_LOWER:
            x[i] = lb[i]
        elif wset[i] == AT_UPPER:
            x[i] = ub[i]
        else:
            wset[i] = FREE
            if x[i] < lb[i] or not (x[i] == x[i]):
                x[i] = lb[i]
            elif x[i] > ub[i]:
                x[i] = ub[i]
    it = 0
    while it < max_iter:
        it += 1
        nf = 0
        for i in range(m):
            if wset[i] == FREE:
                free_idx[nf] = i
                nf += 1
        if nf > 0:
            # Sub-problem on the free set with the others held: H_FF y = -(g_F + H_FB x_B).
            for a in range(nf):
                i = free_idx[a]
                s = -g[i]
                for j in range(m):
                    if wset[j] != FREE:
                        s -= H[i, j] * x[j]
                rhs[a] = s
            if not _cholesky_solve_free(H, free_idx, nf, rhs, L, sol):
                return QP_NOT_POSITIVE_DEFINITE, it
            # Ratio test along p = sol - x_F.
            alpha = 1.0
            block = -1
            block_side = FREE
            for a in range(nf):
                i = free_idx[a]
                p = sol[a] - x[i]
                if p < 0.0 and x[i] + p < lb[i]:
                    t = (lb[i] - x[i]) / p
                    if t < alpha:
                        alpha = t
                        block = i
                        block_side = AT_LOWER
                elif p > 0.0 and x[i] + p > ub[i]:
                    t = (ub[i] - x[i]) / p
                    if t < alpha:
                        alpha = t
                        block = i
                        block_side = AT_UPPER
            if block >= 0:
                for a in range(nf):
                    i = free_idx[a]
                    x[i] += alpha * (sol[a] - x[i])
                x[block] = lb[block] if block_side == AT_LOWER else ub[block]
                wset[block] = block_side
                continue
            for a in range(nf):
                x[free_idx[a]] = sol[a]
        # At the sub-problem optimum: release the bound with the most negative multiplier.
        worst = 0.0
        release = -1
        for i in range(m):
            if wset[i] == FREE or lb[i] >= ub[i]:
                continue
            s = g[i]
            for j in range(m):
                s += H[i, j] * x[j]
            lam = s if wset[i] == AT_LOWER else -s
            # Scale-aware tolerance: the multiplier against the size of the gradient terms.
            tol = 1e-12 * (abs(g[i]) + abs(H[i, i]) * (abs(lb[i]) + abs(ub[i])) + 1e-300)
            if lam < -tol and lam < worst:
                worst = lam
                release = i
        if release < 0:
            return QP_OK, it
        wset[release] = FREE
    return QP_ITERATION_LIMIT, it


@kernel
def normal_matrix(A, row_weight, reg, out_H):
    """``out_H = A' diag(row_weight) A + diag(reg)``: the QP's Hessian (constant per geometry)."""
    n_rows = A.shape[0]
    m = A.shape[1]
    for i in range(m):
        for j in range(i + 1):
            s = 0.0
            for r in range(n_rows):
                s += A[r, i] * row_weight[r] * A[r, j]
            out_H[i, j] = s
            out_H[j, i] = s
        out_H[i, i] += reg[i]


@kernel
def allocate(A, row_weight, H, wanted, lb, ub, x, wset, L, work, free_idx, achieved, max_iter):
    """Actuator values ``x`` in [lb, ub] whose wrench ``A x`` best matches ``wanted``.

    ``H`` comes from :func:`normal_matrix` for the same A, row_weight and regularisation.
    ``x``/``wset`` warm-start and return the solution; ``achieved`` (rows of A) receives ``A x``.
    Returns (qp_status, relative weighted residual ||W^1/2 (A x - w)|| / ||W^1/2 w||, iterations,
    saturated): the residual is 0 for a zero request that is met; ``saturated`` is True when an
    actuator sits at a limit of its range that binds (its multiplier is positive: it would go
    further if it could), i.e. the bounds, not the geometry, keep the request from being met.
    A thruster at zero is resting, not saturated.
    """
    n_rows = A.shape[0]
    m = A.shape[1]
    g = work[QP_WORK_ROWS]
    for j in range(m):
        s = 0.0
        for r in range(n_rows):
            s -= A[r, j] * row_weight[r] * wanted[r]
        g[j] = s
    status, it = solve_box_qp(H, g, lb, ub, x, wset, L, work, free_idx, max_iter)
    num = 0.0
    den = 0.0
    for r in range(n_rows):
        s = 0.0
        for j in range(m):
            s += A[r, j] * x[j]
        achieved[r] = s
        e = s - wanted[r]
        num += row_weight[r] * e * e
        den += row_weight[r] * wanted[r] * wanted[r]
    if den > 0.0:
        rel = math.sqrt(num / den)
    else:
        rel = 0.0 if num == 0.0 else math.inf
    saturated = False
    for i in range(m):
        if wset[i] == FREE or lb[i] >= ub[i]:
            continue
        if wset[i] == AT_LOWER and lb[i] == 0.0:
            continue
        s = g[i]
        for j in range(m):
            s += H[i, j] * x[j]
        lam = s if wset[i] == AT_LOWER else -s
        if lam > 1e-9 * (abs(g[i]) + H[i, i] * (abs(lb[i]) + abs(ub[i]))):
            saturated = True
            break
    return status, rel, it, saturated


#: Rows of ``work`` that :func:`allocate` needs: the QP's plus one for the gradient.
ALLOC_WORK_ROWS = QP_WORK_ROWS + 1
