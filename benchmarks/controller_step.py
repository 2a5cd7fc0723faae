"""Median microseconds per controller.step for each stack, against its plain-Python twin.

``numba_us_median`` is ``Controller.step()``, the call a Python host makes each cycle: one
packed array crosses into numba (controller/packing.py). ``kernel12_us_median`` is
``controller.cycle.step`` called from Python with its twelve arrays (what this benchmark timed
before issue 18; the fused loop and the Monte-Carlo batch call it from inside numba, where the
arguments cost nothing). The Python baseline runs the same algorithm with every numba kernel
swapped for its ``.py_func`` (recursively: kernels that call kernels call the Python versions), in
the same process, on the same inputs: a mid-burn cycle of each stack, stepped again from the
state it left (the controller's whole state restored before every call, outside the timing), so
its warm start is already optimal (no pivot). ``flown_cycle_us_median`` is ``Controller.step()``
on cycle 100 as the burn flew it (the state after cycle 99, cycle 100's sensors), with the
allocation's pivots that cycle took (``flown_cycle_pivots``). Usage::

    python benchmarks/controller_step.py [--json] [--repeat N]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time

import thruster_hil.controller.allocation
import thruster_hil.controller.build
import thruster_hil.controller.cycle
import thruster_hil.controller.modulation
import thruster_hil.controller.packing
from numba.core.registry import CPUDispatcher

import thruster_hil.core.frames
import thruster_hil.core.pulses
from thruster_hil.closedloop.runner import run_burn
from thruster_hil.config import build_stack_model, list_stacks, load_stack
from thruster_hil.plan import Target, plan_burn

MODULES = (
    thruster_hil.controller.build,
    thruster_hil.controller.packing,
    thruster_hil.controller.cycle,
    thruster_hil.controller.allocation,
    thruster_hil.controller.modulation,
    thruster_hil.core.frames,
    thruster_hil.core.pulses,
)
ARRAY_NAMES = thruster_hil.controller.packing.ARRAY_NAMES


@contextlib.contextmanager
def plain_python():
    """Swap every numba kernel in the controller's modules for its Python function."""
    saved = []
    for mod in MODULES:
        for name, obj in list(vars(mod).items()):
            if isinstance(obj, CPUDispatcher):
                saved.append((mod, name, obj))
                setattr(mod, name, obj.py_func)
    try:
        yield
    finally:
        for mod, name, obj in saved:
            setattr(mod, name, obj)


def _mid_burn_controller(stack: str):
    """A SIL reboost's controller, a copy of its whole state (its packed buffer) after cycle
    100, and the same after cycle 99 with cycle 100's sensors in it (cycle 100 as flown)."""
    model = build_stack_model(load_stack(stack))
    plan = plan_burn(stack, Target("raise_perigee", 1.6))
    captured = {}

    def grab(k, info):
        if k == 99:
            captured["before"] = info["ctrl"].packed.copy()
        if k == 100:
            ctrl = info["ctrl"]
            captured["ctrl"] = ctrl
            captured["snapshot"] = ctrl.packed.copy()
            # Cycle 100 as it was flown: the state it started from, the sensors it read.
            ctrl.packed[:] = captured["before"]
            ctrl.sens[:] = _view_of(ctrl.sens, ctrl, captured["snapshot"])
            captured["cycle"] = ctrl.packed.copy()
            ctrl.packed[:] = captured["snapshot"]

    run_burn(model, plan, on_cycle=grab)
    return len(model.thruster_names), captured["ctrl"], captured["snapshot"], captured["cycle"]


def _view_of(view, ctrl, buffer):
    """What ``view`` (an array of ``ctrl``) holds in another copy of ``ctrl.packed``."""
    start = (view.ctypes.data - ctrl.packed.ctypes.data) // 8
    return buffer[start : start + view.size].copy()


def _time_calls(fn, args, ctrl, snapshot, repeat: int) -> list[float]:
    samples = []
    for _ in range(repeat):
        ctrl.packed[:] = snapshot  # every sample does the same work
        t0 = time.perf_counter_ns()
        fn(*args)
        samples.append((time.perf_counter_ns() - t0) / 1e3)
    return samples


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--repeat", type=int, default=20000)
    args = ap.parse_args(argv)
    out = {"stacks": {}}
    for stack in list_stacks():
        n, ctrl, snap, cycle = _mid_burn_controller(stack)
        views = [getattr(ctrl, name) for name in ARRAY_NAMES]
        kernel12 = thruster_hil.controller.cycle.step
        # Interleaved, so a change of machine load falls on both alike.
        packed_s, kernel12_s, cycle_s = [], [], []
        for _ in range(10):
            packed_s += _time_calls(ctrl.step, (), ctrl, snap, args.repeat // 10)
            kernel12_s += _time_calls(kernel12, views, ctrl, snap, args.repeat // 10)
            cycle_s += _time_calls(ctrl.step, (), ctrl, cycle, args.repeat // 10)
        ctrl.packed[:] = cycle
        ctrl.step()
        pivots = int(ctrl.ctrl[thruster_hil.controller.cycle.C_ITER])
        numba_us = statistics.median(packed_s)
        with plain_python():
            # ctrl.step is step_packed bound to the buffer: look the (swapped) kernel up anew.
            python_us = statistics.median(
                _time_calls(
                    thruster_hil.controller.packing.step_packed,
                    (ctrl.packed,),
                    ctrl,
                    snap,
                    max(50, args.repeat // 200),
                )
            )
        out["stacks"][stack] = {
            "thrusters": n,
            "numba_us_median": round(numba_us, 3),
            "kernel12_us_median": round(statistics.median(kernel12_s), 3),
            "flown_cycle_us_median": round(statistics.median(cycle_s), 3),
            "flown_cycle_pivots": pivots,
            "python_us_median": round(python_us, 1),
            "ratio": round(python_us / numba_us, 1),
        }
    if args.json:
        print(json.dumps(out))
    else:
        for name, row in out["stacks"].items():
            print(
                f"{name:18s} {row['thrusters']:3d} thrusters  numba {row['numba_us_median']:8.2f}"
                f" us  (12 arrays {row['kernel12_us_median']:6.2f} us)"
                f"  python {row['python_us_median']:10.1f} us  ratio {row['ratio']:8.1f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
