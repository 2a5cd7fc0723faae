"""Monte-Carlo throughput: cases per second of the all-numba batch kernel, 1 vs 2 threads.

The dragon-boost-kit stack flies a 1 m/s reboost (``--delta-v 1``, about 1,080 control cycles
and one orbit of mean-element propagation per case) with the default dispersions. The same
cases run with numba.set_num_threads(1) and then (2), in this process, after a warm-up that
loads the kernels; each figure is the best of ``--repeats`` runs. The speedup is the ratio of
the two. Usage::

    python benchmarks/montecarlo.py [--cases N] [--repeats R] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numba

from thruster_hil import montecarlo as mc
from thruster_hil.config import build_stack_model, load_stack
from thruster_hil.dispersions import load_dispersions
from thruster_hil.plan import Target, plan_burn

STACK = "dragon-boost-kit"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    model = build_stack_model(load_stack(STACK))
    plan = plan_burn(STACK, Target("delta_v", 1.0))
    campaign = mc.Campaign.build(model, plan, load_dispersions("default"), 1, args.cases, STACK)
    warm = mc.Campaign.build(model, plan, campaign.spec, 2, 4, STACK)
    mc.run_local(warm, threads=1)
    mc.run_local(warm, threads=2)
    rates = {}
    cycles = None
    for threads in (1, 2):
        best = 0.0
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            result = mc.run_local(campaign, threads=threads)
            best = max(best, args.cases / (time.perf_counter() - t0))
            cycles = result.rows[:, mc.batch.B_CYCLES].mean()
        rates[threads] = best
    out = {
        "stack": STACK,
        "delta_v_mps": 1.0,
        "cases": args.cases,
        "mean_cycles_per_case": float(cycles),
        "max_threads": numba.config.NUMBA_NUM_THREADS,
        "cases_per_s_1": round(rates[1], 1),
        "cases_per_s_2": round(rates[2], 1),
        "speedup": round(rates[2] / rates[1], 2),
    }
    if args.json:
        print(json.dumps(out))
    else:
        print(
            f"{STACK}, 1 m/s, {args.cases} cases of ~{cycles:.0f} cycles: "
            f"{out['cases_per_s_1']:.1f} cases/s on 1 thread, {out['cases_per_s_2']:.1f} on 2 "
            f"(speedup {out['speedup']:.2f})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
