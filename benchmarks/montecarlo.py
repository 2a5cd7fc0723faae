"""Monte-Carlo throughput: cases per second of the all-numba batch kernel, 1 vs 2 threads, and
on a Dask LocalCluster of 2 single-threaded worker processes.

The dragon-boost-kit stack flies a 1 m/s reboost (``--delta-v 1``, about 1,080 control cycles
and one orbit of mean-element propagation per case) with the default dispersions. The same
cases run with numba.set_num_threads(1) and then (2), in this process, after a warm-up that
loads the kernels; each figure is the best of ``--repeats`` runs (every run is listed too, for
the spread). The speedup is the ratio of the two.

The Dask figure needs the optional ``[dask]`` extra (``pip install 'thruster-hil[dask]'``; CI's
``[test]`` has it); without it, or with ``--no-dask``, it is left out with a note saying why.
Dask is never a runtime dependency: ``thruster-hil montecarlo`` imports it only for
``--scheduler``. The cluster is started and warmed up (its workers load the kernels from
numba's cache) before it is timed. Usage::

    python benchmarks/montecarlo.py [--cases N] [--repeats R] [--no-dask] [--json]
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
DASK_WORKERS = 2


def _dask_rates(campaign, warm, repeats: int) -> tuple[list[float] | None, str | None]:
    """Cases per second of each run on a LocalCluster, or (None, why not)."""
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        return None, f"dask is not installed ({mc.DASK_HINT})"
    rates = []
    with (
        LocalCluster(
            n_workers=DASK_WORKERS,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
        ) as cluster,
        Client(cluster) as client,
    ):
        mc.run_dask(warm, client=client)
        for _ in range(repeats):
            t0 = time.perf_counter()
            mc.run_dask(campaign, client=client)
            rates.append(campaign.n_cases / (time.perf_counter() - t0))
    return rates, None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-dask", action="store_true", help="leave the Dask figure out")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    model = build_stack_model(load_stack(STACK))
    plan = plan_burn(STACK, Target("delta_v", 1.0))
    campaign = mc.Campaign.build(model, plan, load_dispersions("default"), 1, args.cases, STACK)
    warm = mc.Campaign.build(model, plan, campaign.spec, 2, 4 * DASK_WORKERS, STACK)
    mc.run_local(warm, threads=1)
    mc.run_local(warm, threads=2)
    runs = {}
    cycles = None
    for threads in (1, 2):
        runs[threads] = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            result = mc.run_local(campaign, threads=threads)
            runs[threads].append(args.cases / (time.perf_counter() - t0))
            cycles = result.rows[:, mc.batch.B_CYCLES].mean()
    rates = {t: max(r) for t, r in runs.items()}
    out = {
        "stack": STACK,
        "delta_v_mps": 1.0,
        "cases": args.cases,
        "mean_cycles_per_case": float(cycles),
        "max_threads": numba.config.NUMBA_NUM_THREADS,
        "cases_per_s_1": round(rates[1], 1),
        "cases_per_s_2": round(rates[2], 1),
        "speedup": round(rates[2] / rates[1], 2),
        "runs_1": [round(r, 1) for r in runs[1]],
        "runs_2": [round(r, 1) for r in runs[2]],
    }
    if args.no_dask:
        dask_runs, why = None, "--no-dask"
    else:
        dask_runs, why = _dask_rates(campaign, warm, args.repeats)
    if dask_runs is not None:
        out["dask_workers"] = DASK_WORKERS
        out["dask_cases_per_s"] = round(max(dask_runs), 1)
        out["dask_runs"] = [round(r, 1) for r in dask_runs]
    else:
        out["dask_cases_per_s"] = None
        out["dask_skipped"] = why
        print(f"montecarlo benchmark: Dask figure skipped: {why}", file=sys.stderr)
    if args.json:
        print(json.dumps(out))
    else:
        dask = (
            f", {out['dask_cases_per_s']:.1f} on a Dask LocalCluster of {DASK_WORKERS} workers"
            if dask_runs is not None
            else ""
        )
        print(
            f"{STACK}, 1 m/s, {args.cases} cases of ~{cycles:.0f} cycles: "
            f"{out['cases_per_s_1']:.1f} cases/s on 1 thread, {out['cases_per_s_2']:.1f} on 2 "
            f"(speedup {out['speedup']:.2f}){dask}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
