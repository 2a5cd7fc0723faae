"""Software-in-the-loop speed: control cycles per second of `run --unit sim` for each stack.

Each stack flies a 1.6 km perigee raise in closed loop (controller + plant + ideal unit), five times
in one process after a warm-up; the median cycles per second is reported (the first cycle of each
run, which loads the kernels, is not timed). The burn runs all in numba
(thruster_hil.closedloop.fused.fly); ``stepped_cycles_per_s_median`` is the same burn cycle by cycle
from Python (the path of recorded and HIL runs) and ``fused_speedup`` the ratio of the two. Usage::

    python benchmarks/sil_run.py [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

from thruster_hil.closedloop.runner import run_burn
from thruster_hil.config import build_stack_model, list_stacks, load_stack
from thruster_hil.plan import Target, plan_burn


def _ignore(k, info) -> None:
    pass


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args(argv)
    out = {"stacks": {}}
    for stack in list_stacks():
        model = build_stack_model(load_stack(stack))
        plan = plan_burn(stack, Target("raise_perigee", 1.6))
        run_burn(model, plan)  # warm-up
        rates = [run_burn(model, plan).summary for _ in range(args.runs)]
        stepped = [run_burn(model, plan, on_cycle=_ignore).summary for _ in range(args.runs)]
        fused_rate = statistics.median(r["cycles_per_s"] for r in rates)
        stepped_rate = statistics.median(r["cycles_per_s"] for r in stepped)
        out["stacks"][stack] = {
            "stepped_cycles_per_s_median": round(stepped_rate),
            "fused_speedup": round(fused_rate / stepped_rate, 2),
            "cycles": rates[0]["cycles"],
            "cycles_per_s_median": round(statistics.median(r["cycles_per_s"] for r in rates)),
            "real_time_factor": round(
                statistics.median(r["cycles_per_s"] for r in rates) * model.control_period_s
            ),
        }
    if args.json:
        print(json.dumps(out))
    else:
        for name, row in out["stacks"].items():
            print(
                f"{name:18s} {row['cycles']:6d} cycles  {row['cycles_per_s_median']:8d} "
                f"cycles/s  {row['real_time_factor']:6d} x real time  (cycle by cycle "
                f"{row['stepped_cycles_per_s_median']:d}: fused x{row['fused_speedup']:.2f})"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
