"""The in-flight impulse of a full-cycle command is computed once, by the build (issue 18).

controller.step's guidance counts the impulse a thruster's last command still delivers after
its cycle (close delay, tail-off): ``pulse_impulse(t_prev, period, inf, ...)``, several
exponentials a thruster. A main engine firing on commands the whole cycle every cycle, always the
same numbers, so the build stores that one value per thruster (``thr[:, T_FULL_SPILL]``) and the
step reads it when ``t_prev == period``. Whole burns of every stack stay bit for bit the same
(tests/test_speed_golden.py, test_controller_packing.py, test_loop.py); these tests hold the
stored value to the kernel's and show the step uses it exactly for full-cycle commands.
"""

from __future__ import annotations

import math

import pytest
from thruster_hil.controller import cycle as cst
from thruster_hil.controller import modulation as mo
from thruster_hil.controller.build import build_controller

from thruster_hil.closedloop.runner import run_burn
from thruster_hil.config import build_stack_model, list_stacks, load_stack
from thruster_hil.core.pulses import pulse_impulse
from thruster_hil.plan import Target, plan_burn


@pytest.mark.parametrize("stack", list_stacks())
def test_the_stored_spill_is_the_kernel_s_bit_for_bit(stack):
    ctrl = build_controller(build_stack_model(load_stack(stack)), 1.0)
    period = ctrl.params[cst.P_PERIOD]
    for row in ctrl.thr:
        want = pulse_impulse(
            period,
            period,
            math.inf,
            row[mo.T_THRUST],
            row[mo.T_OPEN_DELAY],
            row[mo.T_CLOSE_DELAY],
            row[mo.T_TAU_RISE],
            row[mo.T_TAU_TAIL],
        )
        assert row[mo.T_FULL_SPILL] == want and want > 0.0


def _inflight(model, sens, last_on, spoil):
    """C_INFLIGHT after one step from ``sens`` with every thruster's last command ``last_on``;
    ``spoil`` zeroes the stored spills first."""
    ctrl = build_controller(model, 1.0)
    ctrl.sens[:] = sens
    ctrl.mod[:, mo.M_LAST_ON] = last_on
    if spoil:
        ctrl.thr[:, mo.T_FULL_SPILL] = 0.0
    ctrl.step()
    return ctrl.ctrl[cst.C_INFLIGHT]


def test_the_step_reads_the_stored_spill_only_after_a_full_cycle_command():
    model = build_stack_model(load_stack("progress"))
    seen = []
    run_burn(
        model,
        plan_burn("progress", Target("delta_v", 0.2)),
        on_cycle=lambda k, info: seen.append(info["ctrl"].sens.copy()),
    )
    sens = seen[len(seen) // 2]  # mid-burn: the attitude the burn holds
    period = float(model.control_period_s)
    for last_on, used in ((period, True), (0.5 * period, False), (0.03, False)):
        kept = _inflight(model, sens, last_on, spoil=False)
        spoilt = _inflight(model, sens, last_on, spoil=True)
        assert kept > 0.0
        assert (kept != spoilt) == used, last_on
