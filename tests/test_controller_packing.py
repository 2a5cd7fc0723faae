"""Controller.step (one packed buffer into numba) computes what cycle.step does on twelve arrays.

Issue 18: the Python -> numba call of a step cost ~1 us with twelve array arguments, so a
Controller keeps its arrays as views of one buffer (controller/packing.py) and steps through
``packing.step_packed``. These tests hold that to the same bytes as ``cycle.step`` on separate
arrays, cycle by cycle over whole burns (warm starts, pivots, a failed thruster, the end of the
burn), and check the views and the header that make it work.
"""

import json

import numpy as np
import pytest
from thruster_hil.controller import cycle as cst
from thruster_hil.controller import packing
from thruster_hil.controller.build import build_controller

from thruster_hil.closedloop.runner import Failure, run_burn
from thruster_hil.config import build_stack_model, list_stacks, load_stack
from thruster_hil.core.health import HEALTH_FAILED_OFF
from thruster_hil.plan import Target, plan_burn


def _recorded_inputs(stack: str, failures=None):
    """The sensor vector and the health the controller saw each cycle of a SIL burn."""
    model = build_stack_model(load_stack(stack))
    plan = plan_burn(stack, Target("delta_v", 0.2))
    seen = []

    def grab(k, info):
        c = info["ctrl"]
        seen.append((c.sens.copy(), c.health.copy()))

    run_burn(model, plan, failures=failures, on_cycle=grab)
    return model, plan, seen


@pytest.mark.parametrize("stack", list_stacks())
def test_packed_step_matches_the_twelve_array_step_byte_for_byte(stack):
    # Dragon loses a main engine mid-burn: the allocation pivots around it.
    failures = [Failure("trunk-draco-1", 10.0)] if stack == "dragon-boost-kit" else None
    model, plan, seen = _recorded_inputs(stack, failures)
    packed = build_controller(model, plan["delta_v_mps"])
    twin = {name: getattr(packed, name).copy() for name in packing.ARRAY_NAMES}
    iterations = 0
    for sens, health in seen:
        packed.sens[:] = sens
        packed.health[:] = health
        twin["sens"][:] = sens
        twin["health"][:] = health
        status = packed.step()
        assert status == cst.step(*(twin[name] for name in packing.ARRAY_NAMES))
        for name in packing.ARRAY_NAMES:
            assert getattr(packed, name).tobytes() == twin[name].tobytes(), name
        iterations += int(packed.ctrl[cst.C_ITER])
    assert len(seen) > 50
    if stack == "dragon-boost-kit":
        assert iterations > 0  # the burn pivots: not only warm starts that stay optimal


def test_views_share_the_one_buffer_and_keep_shapes_and_dtypes():
    model = build_stack_model(load_stack("dragon-boost-kit"))
    ctrl = build_controller(model, 0.5)
    for name in packing.ARRAY_NAMES:
        view = getattr(ctrl, name)
        assert np.shares_memory(view, ctrl.packed), name
        assert view.flags.c_contiguous and view.flags.writeable, name
        assert view.ctypes.data % 8 == 0, name
    assert ctrl.health.dtype == np.int64 and ctrl.ints.dtype == np.int64
    assert ctrl.on_ms.dtype == np.uint16 and ctrl.on_ms.shape == (ctrl.n,)
    assert ctrl.E.shape[1] == ctrl.qp.shape[1] == ctrl.ints.shape[1]
    # No two arrays overlap: writing one leaves every other unchanged.
    before = {name: getattr(ctrl, name).copy() for name in packing.ARRAY_NAMES}
    ctrl.health[:] = HEALTH_FAILED_OFF
    ctrl.on_ms[:] = 65535
    for name in packing.ARRAY_NAMES:
        if name not in ("health", "on_ms"):
            assert np.array_equal(getattr(ctrl, name), before[name], equal_nan=True), name


def test_the_header_names_each_array():
    model = build_stack_model(load_stack("cygnus"))
    ctrl = build_controller(model, 0.5)
    header = ctrl.packed[: packing.HEADER_LEN].view(np.int64)
    assert header[packing.H_N] == ctrl.n
    assert header[packing.H_M] == ctrl.m
    assert (header[packing.H_ROWS], header[packing.H_COLS]) == ctrl.E.shape
    base = ctrl.packed.ctypes.data
    for name, slot in zip(
        packing.ARRAY_NAMES,
        (
            packing.H_SENS,
            packing.H_PARAMS,
            packing.H_A,
            packing.H_E,
            packing.H_BINV,
            packing.H_QP,
            packing.H_INTS,
            packing.H_THR,
            packing.H_MOD,
            packing.H_HEALTH,
            packing.H_CTRL,
            packing.H_ON_MS,
        ),
        strict=True,
    ):
        assert getattr(ctrl, name).ctypes.data == base + 8 * int(header[slot]), name


def test_pack_names_an_array_of_the_wrong_shape():
    model = build_stack_model(load_stack("cygnus"))
    ctrl = build_controller(model, 0.5)
    arrays = {name: getattr(ctrl, name).copy() for name in packing.ARRAY_NAMES}
    arrays["mod"] = np.zeros((ctrl.n, 2))
    with pytest.raises(ValueError, match="'mod'"):
        packing.pack(arrays)
    arrays["mod"] = np.zeros((ctrl.n, 3))
    arrays["health"] = np.zeros(ctrl.n, np.int32)
    with pytest.raises(ValueError, match="'health'"):
        packing.pack(arrays)


def test_bad_sensors_close_every_valve_through_the_packed_step():
    model = build_stack_model(load_stack("progress"))
    ctrl = build_controller(model, 0.5)
    ctrl.sens[:] = np.nan
    ctrl.on_ms[:] = 99
    assert ctrl.step() == cst.ST_BAD_INPUT
    assert not ctrl.on_ms.any()


NO_ALLOCATION_PROBE = r"""
import json
from numba import njit
from numba.core.runtime import rtsys
from thruster_hil.config import build_stack_model, load_stack
from thruster_hil.controller.build import build_controller
from thruster_hil.controller.packing import step_packed

model = build_stack_model(load_stack("dragon-boost-kit"))
ctrl = build_controller(model, 0.5)
ctrl.sens[:] = [6.8e6, 0, 0, 0, 7660.0, 0, 1, 0, 0, 0, 0, 0, 0, 4.5e5, 0, 0, 0]

@njit
def drive(times, buf):
    for _ in range(times):
        step_packed(buf)

drive(1, ctrl.packed)
counts = []
for times in (1, 200):
    before = rtsys.get_allocation_stats()
    drive(times, ctrl.packed)
    after = rtsys.get_allocation_stats()
    counts.append((after.alloc - before.alloc, after.mi_alloc - before.mi_alloc))
print(json.dumps([counts[1][0] - counts[0][0], counts[1][1] - counts[0][1]]))
"""


@pytest.mark.slow
def test_the_packed_step_makes_no_heap_allocation():
    """Its views of the buffer are made without allocating (nor counting references)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, NUMBA_NRT_STATS="1", PYTHONPATH=str(root))
    out = subprocess.run(
        [sys.executable, "-c", NO_ALLOCATION_PROBE],
        capture_output=True,
        text=True,
        env=env,
        cwd=root,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [0, 0]
