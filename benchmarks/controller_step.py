"""Median microseconds per controller.step for each stack, against its plain-Python twin.

The Python baseline runs the same algorithm with every numba kernel swapped for its ``.py_func``
(recursively: kernels that call kernels call the Python versions), in the same process, on the
same inputs: a mid-burn cycle of each stack. Usage::

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
import thruster_hil.controller.cycle
import thruster_hil.controller.modulation
import thruster_hil.sims.attitude
import thruster_hil.sims.thrusters
from numba.core.registry import CPUDispatcher

from thruster_hil.closedloop.runner import run_burn
from thruster_hil.config import build_stack_model, list_stacks, load_stack
from thruster_hil.plan import Target, plan_burn

MODULES = (
    thruster_hil.controller.cycle,
    thruster_hil.controller.allocation,
    thruster_hil.controller.modulation,
    thruster_hil.sims.attitude,
    thruster_hil.sims.thrusters,
)


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
    """A controller captured mid-burn (cycle 100) of a SIL reboost, with its sensor vector."""
    model = build_stack_model(load_stack(stack))
    plan = plan_burn(stack, Target("raise_perigee", 1.6))
    captured = {}

    def grab(k, info):
        if k == 100:
            ctrl = info["ctrl"]
            captured["snapshot"] = {
                name: getattr(ctrl, name).copy()
                for name in (
                    "sens",
                    "params",
                    "A",
                    "E",
                    "Binv",
                    "qp",
                    "ints",
                    "thr",
                    "mod",
                    "health",
                    "ctrl",
                    "on_ms",
                )
            }

    run_burn(model, plan, on_cycle=grab)
    return len(model.thruster_names), captured["snapshot"]


def _time_calls(fn, snap, repeat: int) -> list[float]:
    args = [
        snap[k].copy()
        for k in (
            "sens",
            "params",
            "A",
            "E",
            "Binv",
            "qp",
            "ints",
            "thr",
            "mod",
            "health",
            "ctrl",
            "on_ms",
        )
    ]
    samples = []
    for _ in range(repeat):
        # Fresh controller state each call, so every sample does the same work.
        args[5][:] = snap["qp"]
        args[6][:] = snap["ints"]
        args[8][:] = snap["mod"]
        args[10][:] = snap["ctrl"]
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
        n, snap = _mid_burn_controller(stack)
        step = thruster_hil.controller.cycle.step
        numba_us = statistics.median(_time_calls(step, snap, args.repeat))
        with plain_python():
            py = thruster_hil.controller.cycle.step
            python_us = statistics.median(_time_calls(py, snap, max(50, args.repeat // 200)))
        out["stacks"][stack] = {
            "thrusters": n,
            "numba_us_median": round(numba_us, 3),
            "python_us_median": round(python_us, 1),
            "ratio": round(python_us / numba_us, 1),
        }
    if args.json:
        print(json.dumps(out))
    else:
        for name, row in out["stacks"].items():
            print(
                f"{name:18s} {row['thrusters']:3d} thrusters  numba {row['numba_us_median']:8.2f}"
                f" us  python {row['python_us_median']:10.1f} us  ratio {row['ratio']:8.1f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
