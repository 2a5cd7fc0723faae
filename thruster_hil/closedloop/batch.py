"""Many burns at once, all in numba: one Monte-Carlo case per ``prange`` iteration.

Every case flies :func:`thruster_hil.closedloop.fused.fly` (the same compiled function ``run --unit
sim`` uses through :func:`thruster_hil.closedloop.runner.run_burn`) on its own copies of the mutable
arrays, then :func:`thruster_hil.closedloop.fused.finish`; nothing is shared between iterations but
read-only inputs, so a case's numbers do not depend on how many threads ran or which thread ran it.

Memory per case (issue 18): the orbit evaluation no longer writes a one-orbit window of states
(~5,600 x 7 floats, twice per case, streamed through the cache by both threads); it sums the
mean elements as it coasts, so a case's working set is its small per-cycle arrays.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange

from thruster_hil.closedloop import fused as loop
from thruster_hil.controller import cycle as cst
from thruster_hil.controller.modulation import MOD_COLS
from thruster_hil.core.jit import parallel_kernel
from thruster_hil.core.layout import Layout
from thruster_hil.sims.plant import SENSED_LEN
from thruster_hil.sims.thrusters import HEALTH_FAILED_OFF, VALVE_STATE_LEN, VS_EDGE_T

# ---- one result row per case: finish()'s OUT_LEN numbers, then the case's records -----------
BATCH_ROW = Layout(
    "batch result row",
    [
        ("B_FINISH", loop.OUT_LEN),  # finish()'s numbers (fused.FINISH)
        ("B_CYCLES", 1),  # cycles flown
        ("B_COMPLETE_CYCLE", 1),  # cycle the controller declared the burn complete (-1 never)
        ("B_MAX_ATT_ERR", 1),  # largest attitude error the controller saw [rad]
        ("B_MAX_ON_MS", 1),  # longest command [ms]
        ("B_BOUND_VIOLATIONS", 1),  # cycles with a command longer than the period
        ("B_FAIL_CYCLE", 1),  # cycle the dispersed failure struck (-1 none)
        ("B_PLANT_STATUS", 1),  # worst plant_cycle status (0 ok)
        ("B_STATUS_OR", 1),  # OR of the controller's status words
    ],
)
(
    B_FINISH,
    B_CYCLES,
    B_COMPLETE_CYCLE,
    B_MAX_ATT_ERR,
    B_MAX_ON_MS,
    B_BOUND_VIOLATIONS,
    B_FAIL_CYCLE,
    B_PLANT_STATUS,
    B_STATUS_OR,
) = BATCH_ROW.offsets
B_LEN = BATCH_ROW.length


@parallel_kernel
def fly_batch(
    seeds,
    fail_idx,
    fail_at,
    pscal,
    pthr,
    geom,
    y0,
    ptank,
    tank_idx,
    table,
    max_cycles,
    window_s,
    params,
    A,
    E0,
    thr,
    qp0,
    ints0,
    out,
):
    """Fly case c = 0 .. len(seeds)-1 with the ideal unit: seeds (N,) int64 key the sensor
    noise; fail_idx/fail_at (N, F) the failures (-1: none); pscal (N, PS_LEN), pthr
    (N, PT_LEN, n), geom (N, 2, n, 3), y0 (N, PLANT_STATE_LEN) the true plants; the tanks, the
    atmosphere and the nominal controller (params, A, H, thr and the initial qp/ints rows) are
    shared (the LP matrix E0 is copied per case: a gimbal rewrites its columns). Writes out
    (N, B_LEN)."""
    n_cases = seeds.shape[0]
    n = thr.shape[0]
    n_rows = E0.shape[0]
    n_fail = fail_idx.shape[1]
    for c in prange(n_cases):
        y = y0[c].copy()
        y_start = y0[c].copy()
        sensed = np.zeros(SENSED_LEN)
        acc = np.zeros(loop.ACC_LEN)
        valves = np.zeros((n, VALVE_STATE_LEN))
        for i in range(n):
            valves[i, VS_EDGE_T] = np.nan
            valves[i, VS_EDGE_T + 2] = np.nan
        impulse = np.zeros((loop.N_SUB, n))
        live = np.zeros((loop.LV_LEN, n))
        for i in range(n):
            live[loop.LV_THRUST, i] = pthr[c, loop.PT_THRUST, i]
            live[loop.LV_ISP, i] = pthr[c, loop.PT_ISP, i]
        tank_used = np.zeros(ptank.shape[1])
        gimbal_work = np.empty(loop.GIMBAL_WORK_LEN)
        true_health = np.zeros(n, np.int64)
        executed = np.zeros(n, np.uint16)
        sens = np.zeros(cst.SENS_LEN)
        E = E0.copy()
        Binv = np.zeros((n_rows, n_rows))
        qp = qp0.copy()
        ints = ints0.copy()
        mod = np.zeros((n, MOD_COLS))
        health = np.zeros(n, np.int64)
        ctrl = np.zeros(cst.CTRL_LEN)
        on_ms = np.zeros(n, np.uint16)
        statuses = np.zeros(max_cycles, np.int64)
        att_err = np.zeros(max_cycles)
        longest = np.zeros(max_cycles, np.int64)
        fail_code = np.full(n_fail, HEALTH_FAILED_OFF, np.int64)
        fail_cycle = np.full(n_fail, -1, np.int64)
        k, complete, plant_status = loop.fly(
            max_cycles,
            seeds[c],
            fail_idx[c],
            fail_at[c],
            fail_code,
            fail_cycle,
            y,
            sensed,
            pscal[c],
            acc,
            pthr[c],
            geom[c],
            ptank,
            tank_idx,
            table,
            valves,
            impulse,
            live,
            tank_used,
            gimbal_work,
            true_health,
            executed,
            sens,
            params,
            A,
            E,
            Binv,
            qp,
            ints,
            thr,
            mod,
            health,
            ctrl,
            on_ms,
            statuses,
            att_err,
            longest,
        )
        row = out[c]
        loop.finish(
            k,
            y_start,
            y,
            sensed,
            pscal[c],
            acc,
            ctrl,
            window_s,
            table,
            row[B_FINISH : B_FINISH + loop.OUT_LEN],
        )
        period_ms = pscal[c, loop.PS_PERIOD_MS]
        top_err = 0.0
        top_on = 0
        violations = 0
        status_or = 0
        for j in range(k):
            if att_err[j] > top_err:
                top_err = att_err[j]
            if longest[j] > top_on:
                top_on = longest[j]
            if longest[j] > period_ms:
                violations += 1
            status_or |= statuses[j]
        row[B_CYCLES] = k
        row[B_COMPLETE_CYCLE] = complete
        row[B_MAX_ATT_ERR] = top_err
        row[B_MAX_ON_MS] = top_on
        row[B_BOUND_VIOLATIONS] = violations
        row[B_FAIL_CYCLE] = fail_cycle[0] if n_fail > 0 else -1
        row[B_PLANT_STATUS] = plant_status
        row[B_STATUS_OR] = status_or


def run_cases(model, plan: dict, cases: list, setup: loop.BurnSetup | None = None) -> np.ndarray:
    """Fly ``cases`` (a list of :class:`thruster_hil.closedloop.fused.PlantCase`) of one planned
    burn on numba's threads; returns the (len(cases), B_LEN) result rows."""
    return fly_prepared(prepare_cases(model, plan, cases, setup))


def burn_arrays(model, plan: dict) -> tuple:
    """What every chunk of one burn's cases shares: (setup, nominal controller). Read-only for
    :func:`fly_batch` (a case copies what it changes), so one pair serves a whole campaign."""
    from thruster_hil.controller.build import build_controller

    return loop.setup_burn(model, plan), build_controller(model, plan["delta_v_mps"])


def prepare_cases(model, plan: dict, cases: list, setup=None, ctrl=None) -> tuple:
    """The arguments of :func:`fly_batch` for ``cases`` (Python work, holding the GIL): a caller
    may build the next chunk's while numba flies this one (:func:`fly_prepared` releases it).
    ``setup``/``ctrl``: from :func:`burn_arrays` (built here when None)."""
    if setup is None or ctrl is None:
        s, c = burn_arrays(model, plan)
        setup = setup if setup is not None else s
        ctrl = ctrl if ctrl is not None else c
    n_cases = len(cases)
    n = setup.n
    pscal = np.empty((n_cases, loop.PS_LEN))
    pthr = np.empty((n_cases, loop.PT_LEN, n))
    geom = np.empty((n_cases, loop.G_LEN, n, 3))
    y0 = np.empty((n_cases, setup.y0.shape[0]))
    seeds = np.zeros(n_cases, np.int64)
    fail_idx = np.full((n_cases, 1), -1, np.int64)
    fail_at = np.full((n_cases, 1), np.inf)
    for c, case in enumerate(cases):
        pscal[c], pthr[c], geom[c], y0[c] = loop.case_arrays(setup, case)
        if case is not None:
            seeds[c] = case.seed
            fail_idx[c, 0] = case.fail_index
            fail_at[c, 0] = case.fail_at_s
    out = np.zeros((n_cases, B_LEN))
    return (
        seeds,
        fail_idx,
        fail_at,
        pscal,
        pthr,
        geom,
        y0,
        setup.ptank,
        setup.tank_idx,
        setup.table,
        setup.max_cycles,
        setup.window_s,
        ctrl.params,
        ctrl.A,
        ctrl.E,
        ctrl.thr,
        ctrl.qp,
        ctrl.ints,
        out,
    )


def fly_prepared(args: tuple) -> np.ndarray:
    """:func:`fly_batch` on :func:`prepare_cases`'s arguments; returns the result rows."""
    # Cases handed out one at a time as threads come free (numba's default splits the range
    # into one block per thread up front): a case with a failure or a longer tail, or a thread
    # the busy machine descheduled, no longer leaves the other thread idle at the end.
    with numba.parallel_chunksize(1):
        fly_batch(*args)
    return args[-1]
