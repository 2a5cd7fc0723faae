"""The CMG torque is an output of controller.step (ctrl[C_CMG_TORQUE]) and the plant takes it
from there, never from the allocation's solver arrays (issue 15, deliverable 6)."""

from __future__ import annotations

import numpy as np
import pytest
from thruster_hil.controller import cycle as cst
from thruster_hil.sims.plant import W

from thruster_hil.closedloop.fused import new_sim
from thruster_hil.config import build_stack_model, load_stack
from thruster_hil.plan import Target, plan_stack

# Slow tier (`-m "not slow"` leaves it out): plans a burn and compiles the fused loop.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cygnus():
    stack = load_stack("cygnus")  # CMG budget 500 N m
    model = build_stack_model(stack)
    return model, plan_stack(stack, Target("delta_v", 0.2), model=model)


def _after_cycles(model, plan, cycles, tamper=None):
    sim = new_sim(model, plan)
    executed = np.zeros(sim.setup.n, np.uint16)
    for k in range(cycles):
        sim.pre(k)
        np.minimum(sim.ctrl.on_ms, sim.setup.period_ms, out=executed)
        if tamper is not None:
            tamper(sim)
        sim.post(executed)
    return sim


def test_the_controller_writes_the_allocated_cmg_torque(cygnus):
    model, plan = cygnus
    sim = _after_cycles(model, plan, 6)
    c = sim.ctrl
    budget = model.cmg_torque_budget_Nm
    assert c.params[cst.P_CMG_BUDGET] == budget
    x = c.qp[cst.Q_X]
    want = [(x[c.n + 2 * k] - x[c.n + 2 * k + 1]) * budget for k in range(3)]
    got = c.ctrl[cst.C_CMG_TORQUE : cst.C_CMG_TORQUE + 3]
    assert list(got) == want
    assert np.all(np.abs(got) <= budget)
    assert np.any(got != 0.0)  # the CMGs do hold some of the torque in this burn


def test_the_plant_reads_the_output_not_the_solver(cygnus):
    model, plan = cygnus

    def scramble_solution(sim):
        sim.ctrl.qp[cst.Q_X, :] = 1e6  # after step: only its outputs may reach the plant

    # (The next cycle's controller warm-starts from its solution, so compare the plant right
    # after the one tampered cycle.)
    one = _after_cycles(model, plan, 1)
    one_scrambled = _after_cycles(model, plan, 1, scramble_solution)
    assert np.array_equal(one.y, one_scrambled.y)

    def double_cmg(sim):
        sim.ctrl.ctrl[cst.C_CMG_TORQUE : cst.C_CMG_TORQUE + 3] *= 2.0

    one_doubled = _after_cycles(model, plan, 1, double_cmg)
    assert not np.array_equal(one.y[W : W + 3], one_doubled.y[W : W + 3])


def test_no_cmg_columns_no_cmg_torque():
    stack = load_stack("progress")  # no CMG budget
    model = build_stack_model(stack)
    plan = plan_stack(stack, Target("delta_v", 0.05), model=model)
    sim = _after_cycles(model, plan, 3)
    assert sim.ctrl.params[cst.P_CMG_BUDGET] == 0.0
    assert np.all(sim.ctrl.ctrl[cst.C_CMG_TORQUE : cst.C_CMG_TORQUE + 3] == 0.0)
