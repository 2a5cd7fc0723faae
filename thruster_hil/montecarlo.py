"""Monte-Carlo dispersion campaigns: ``thruster-hil montecarlo``.

One planned burn, N cases. Case i flies the true stack drawn from the dispersion spec with seed
``case_seed(seed, i)`` (:mod:`thruster_hil.dispersions`) through the all-numba batch kernel
(:func:`thruster_hil.closedloop.batch.fly_batch`): on this machine over numba's threads, or on a
Dask distributed cluster where chunks of cases become tasks (retried when they fail, recomputed
elsewhere when their worker dies). Either way a case is a function of (stack, plan, spec, seed, i)
only, so the results are the same wherever and in whatever chunks they ran.

The output directory holds ``cases.csv`` (one row per case: its seed, its dispersed inputs and
its outcome), ``summary.json`` (statistics, 3-sigma bounds, the pass limits and the failing cases
with the command that reruns each one), ``report.png`` and ``report.html``
(:mod:`thruster_hil.montecarlo_report`).
"""

from __future__ import annotations

import csv
import datetime as _dt
import json
import math
import os
import shlex
import sys
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from thruster_hil.closedloop import batch
from thruster_hil.closedloop import fused as loop
from thruster_hil.core.errors import UserError
from thruster_hil.dispersions import (
    Dispersions,
    case_inputs,
    case_seed,
    case_seeds,
    failure_candidates,
    sample_case,
)

__all__ = [
    "Campaign",
    "CampaignResult",
    "evaluate",
    "run_chunk",
    "run_dask",
    "run_local",
    "write_outputs",
]

#: Cases per chunk: one numba call locally, one task on Dask.
DEFAULT_CHUNK = 25
#: Times Dask retries a chunk whose task raised (a chunk lost with its worker is recomputed by
#: the scheduler anyway).
RETRIES = 3
DASK_HINT = "pip install 'thruster-hil[dask]'"

# Outcome columns of cases.csv (and the per-case dicts of evaluate()).
OUTCOME_FIELDS = (
    "true_delta_v_mps",
    "delta_v_error_pct",
    "sensed_delta_v_mps",
    "burn_duration_s",
    "cycles",
    "completed",
    "max_attitude_error_deg",
    "propellant_kg",
    "perigee_km_after",
    "apogee_km_after",
    "mean_altitude_change_km",
    "max_on_time_ms",
    "on_time_bound_violations",
    "failure_cycle",
    "passed",
    "fail_reasons",
)
#: Outcomes summarised with mean, sigma, percentiles and 3-sigma bounds.
STAT_FIELDS = (
    "delta_v_error_pct",
    "true_delta_v_mps",
    "burn_duration_s",
    "max_attitude_error_deg",
    "propellant_kg",
    "perigee_km_after",
    "apogee_km_after",
)

_batch_lock = threading.Lock()


@dataclass(frozen=True, eq=False)
class Campaign:
    """Everything a case needs, picklable for Dask: the stack model, the plan, the spec."""

    model: object  # thruster_hil.config.StackModel
    plan: dict
    spec: Dispersions
    seed: int
    n_cases: int
    candidates: np.ndarray  # thrusters a dispersed failure may hit
    stack_ref: str  # the stack as the operator named it (for rerun commands)

    @classmethod
    def build(
        cls,
        model,
        plan: dict,
        spec: Dispersions,
        seed: int | None,
        n_cases: int,
        stack_ref: str | None = None,
    ) -> Campaign:
        return cls(
            model,
            plan,
            spec,
            spec.seed if seed is None else int(seed),
            int(n_cases),
            failure_candidates(spec, model),
            stack_ref or plan["stack"],
        )

    def case(self, index: int) -> loop.PlantCase:
        return sample_case(self.spec, self.model, case_seed(self.seed, index), self.candidates)


def run_chunk(
    campaign: Campaign, start: int, stop: int, threads: int | None = None
) -> tuple[int, np.ndarray]:
    """Cases ``start`` .. ``stop - 1``: (start, their (stop - start, B_LEN) result rows).

    ``threads``: numba threads for this call (None: as set; on a Dask worker, the worker's
    thread count)."""
    import numba

    if threads is None:
        threads = _dask_worker_threads()
    if threads is not None:
        numba.set_num_threads(max(1, min(int(threads), numba.config.NUMBA_NUM_THREADS)))
    seeds = case_seeds(campaign.seed, start, stop)
    cases = [sample_case(campaign.spec, campaign.model, int(s), campaign.candidates) for s in seeds]
    with _batch_lock:  # one parallel launch at a time per process (numba's pool is shared)
        rows = batch.run_cases(campaign.model, campaign.plan, cases)
    return start, rows


def _prepare_chunk(campaign: Campaign, start: int, stop: int, shared: tuple) -> tuple:
    """:func:`thruster_hil.closedloop.batch.prepare_cases` of cases ``start`` .. ``stop - 1``
    (as :func:`run_chunk` draws them), with the campaign's shared setup and controller."""
    seeds = case_seeds(campaign.seed, start, stop)
    cases = [sample_case(campaign.spec, campaign.model, int(s), campaign.candidates) for s in seeds]
    return batch.prepare_cases(campaign.model, campaign.plan, cases, *shared)


def _dask_worker_threads() -> int | None:
    try:
        from distributed import get_worker
    except ImportError:
        return None
    try:
        worker = get_worker()
    except ValueError:
        return None
    state = getattr(worker, "state", worker)
    return getattr(state, "nthreads", None)


def _chunks(n_cases: int, chunk: int) -> list[tuple[int, int]]:
    return [(s, min(s + chunk, n_cases)) for s in range(0, n_cases, chunk)]


class Progress:
    """The campaign's progress bar on stderr (rich, as ``run``'s): cases done of all, failures,
    cases per second, elapsed and ETA; only when the stream is a terminal (or ``enabled``).
    :meth:`update` is called as chunks come back; rich draws from its own thread."""

    def __init__(self, total: int, stream=None, enabled: bool | None = None):
        self.total = total
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.done = 0
        self._bar = None
        if self.enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )
            from rich.progress import Progress as _RichProgress

            self._bar = _RichProgress(
                TextColumn("[bold]montecarlo"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("cases, {task.fields[failed]} failed, {task.fields[rate]} cases/s"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=Console(file=self.stream, force_terminal=True),
                transient=False,
            )
            self._task = self._bar.add_task("montecarlo", total=max(1, total), failed=0, rate="-")
            self._t0 = time.perf_counter()
            self._bar.start()

    def update(self, done: int, failed: int) -> None:
        self.done = done
        if self._bar is None:
            return
        elapsed = time.perf_counter() - self._t0
        rate = f"{done / elapsed:.1f}" if elapsed > 0 else "-"
        self._bar.update(self._task, completed=done, failed=failed, rate=rate)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


@dataclass
class CampaignResult:
    rows: np.ndarray  # (n_cases, B_LEN), case order
    wall_s: float
    scheduler: str
    chunks: int


def run_local(
    campaign: Campaign,
    *,
    chunk: int = 0,
    threads: int | None = None,
    progress: Progress | None = None,
) -> CampaignResult:
    """All cases on this machine, chunk by chunk over numba's threads."""
    import numba

    if threads is not None:
        numba.set_num_threads(threads)
    n_threads = numba.get_num_threads()
    if not chunk:
        # A whole number of cases per thread: with 25 on 2 threads one thread flew 13 cases
        # while the other idled for the last one, every launch (~4 % of the campaign).
        chunk = max(DEFAULT_CHUNK, 8 * n_threads)
        chunk = -(-chunk // n_threads) * n_threads
    rows = np.zeros((campaign.n_cases, batch.B_LEN))
    t0 = time.perf_counter()
    failed = 0
    spans = _chunks(campaign.n_cases, chunk)
    shared = batch.burn_arrays(campaign.model, campaign.plan)
    # The next chunk's inputs (dispersion draws, true-plant arrays: Python work) are built on a
    # helper thread while numba flies this chunk without the GIL, instead of between launches
    # with every numba thread idle (~5 % of a campaign on 2 threads). The inputs and the
    # flying are what run_chunk does, so the rows are the same.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="mc-prepare") as pool:
        nxt = pool.submit(_prepare_chunk, campaign, *spans[0], shared) if spans else None
        for j, (s, e) in enumerate(spans):
            args = nxt.result()
            if j + 1 < len(spans):
                nxt = pool.submit(_prepare_chunk, campaign, *spans[j + 1], shared)
            with _batch_lock:
                rows[s:e] = batch.fly_prepared(args)
            if progress is not None:
                failed += _count_failed_rows(campaign, rows[s:e])
                progress.update(e, failed)
    return CampaignResult(
        rows, time.perf_counter() - t0, f"local ({n_threads} threads)", len(spans)
    )


def _count_failed_rows(campaign: Campaign, rows: np.ndarray) -> int:
    return int(sum(1 for r in evaluate(campaign, rows) if not r["passed"]))


def run_dask(
    campaign: Campaign,
    *,
    scheduler: str | None = None,
    client=None,
    chunk: int = 0,
    progress: Progress | None = None,
    on_chunk: Callable[[int, int], None] | None = None,
) -> CampaignResult:
    """All cases on a Dask distributed cluster (``scheduler`` address, or a connected
    ``client``): one task per chunk, results gathered as they arrive. ``on_chunk(start, stop)``
    is called after each chunk arrives (tests use it to kill a worker mid-campaign)."""
    try:
        from distributed import Client, as_completed
    except ImportError:
        raise UserError("montecarlo", f"needs Dask: {DASK_HINT}", field="--scheduler") from None
    own = client is None
    if own:
        try:
            client = Client(scheduler, timeout="10s")
        except (OSError, TimeoutError, ValueError) as exc:
            text = " ".join(str(exc).split()) or type(exc).__name__
            raise UserError(
                "montecarlo",
                f"cannot reach the Dask scheduler at {scheduler!r}: {text}",
                field="--scheduler",
            ) from None
    try:
        chunk = chunk or DEFAULT_CHUNK
        spans = _chunks(campaign.n_cases, chunk)
        rows = np.zeros((campaign.n_cases, batch.B_LEN))
        t0 = time.perf_counter()
        token = uuid.uuid4().hex[:8]
        # The campaign (~7 kB pickled) rides in every task rather than being scattered: a
        # scattered object dies with the workers holding it, a task argument never does.
        futures = [
            client.submit(
                run_chunk,
                campaign,
                s,
                e,
                key=f"thruster-hil-mc-{token}-{s}",
                retries=RETRIES,
                pure=False,
            )
            for s, e in spans
        ]
        done = 0
        failed = 0
        for fut in as_completed(futures):
            start, chunk_rows = fut.result()
            rows[start : start + chunk_rows.shape[0]] = chunk_rows
            done += chunk_rows.shape[0]
            fut.release()
            if progress is not None:
                failed += _count_failed_rows(campaign, chunk_rows)
                progress.update(done, failed)
            if on_chunk is not None:
                on_chunk(start, start + chunk_rows.shape[0])
        address = getattr(client.scheduler, "address", scheduler) if own else "client"
        return CampaignResult(rows, time.perf_counter() - t0, f"dask {address}", len(spans))
    finally:
        if own:
            client.close()


# --------------------------------------------------------------------------------------------
# Outcomes
# --------------------------------------------------------------------------------------------


def evaluate(campaign: Campaign, rows: np.ndarray) -> list[dict]:
    """Each result row as the case's outcome, with pass/fail against the spec and the stack."""
    spec = campaign.spec
    plan = campaign.plan
    period = float(campaign.model.control_period_s)
    period_ms = int(round(period * 1000))
    target = float(plan["delta_v_mps"])
    limits = pass_limits(campaign)
    att_limit = limits["max_attitude_error_deg"]
    max_duration = limits["max_burn_duration_s"]
    out = []
    for r in rows:
        cycles = int(r[batch.B_CYCLES])
        complete = int(r[batch.B_COMPLETE_CYCLE])
        true_dv = float(r[loop.O_TRUE_DV])
        err_pct = 100.0 * (true_dv - target) / target
        duration = (complete if complete >= 0 else cycles) * period
        max_att = math.degrees(r[batch.B_MAX_ATT_ERR])
        reasons = []
        if complete < 0:
            reasons.append("not completed")
        if not abs(err_pct) <= spec.delta_v_tolerance_pct:
            reasons.append("delta-v")
        if not max_att <= att_limit:
            reasons.append("attitude")
        if r[batch.B_BOUND_VIOLATIONS] > 0 or r[batch.B_MAX_ON_MS] > period_ms:
            reasons.append("on-time bound")
        if duration > max_duration:
            reasons.append("duration")
        if r[batch.B_PLANT_STATUS] != 0 or r[loop.O_ORBIT_STATUS] != 0:
            reasons.append("plant")
        out.append(
            {
                "true_delta_v_mps": true_dv,
                "delta_v_error_pct": err_pct,
                "sensed_delta_v_mps": float(r[loop.O_ACHIEVED_DV]),
                "burn_duration_s": duration,
                "cycles": cycles,
                "completed": complete >= 0,
                "max_attitude_error_deg": max_att,
                "propellant_kg": float(r[loop.O_PROPELLANT]),
                "perigee_km_after": float(plan["perigee_km_before"] + r[loop.O_D_PERIGEE] / 1e3),
                "apogee_km_after": float(plan["apogee_km_before"] + r[loop.O_D_APOGEE] / 1e3),
                "mean_altitude_change_km": float(r[loop.O_D_A] / 1e3),
                "max_on_time_ms": int(r[batch.B_MAX_ON_MS]),
                "on_time_bound_violations": int(r[batch.B_BOUND_VIOLATIONS]),
                "failure_cycle": int(r[batch.B_FAIL_CYCLE]),
                "passed": not reasons,
                "fail_reasons": ";".join(reasons),
            }
        )
    return out


def pass_limits(campaign: Campaign) -> dict:
    """The limits a case must keep to pass, as :func:`evaluate` judges them (and summary.json
    and the report show them): the spec's, with the stack's attitude limit when the spec sets
    none and the duration limit in seconds."""
    spec = campaign.spec
    att_limit = (
        spec.max_attitude_error_deg
        if spec.max_attitude_error_deg is not None
        else math.degrees(campaign.model.max_attitude_error_rad)
    )
    return {
        "delta_v_tolerance_pct": float(spec.delta_v_tolerance_pct),
        "max_attitude_error_deg": float(att_limit),
        "max_burn_duration_s": float(
            spec.max_burn_duration_factor * campaign.plan["burn_duration_s"]
        ),
        "max_on_time_ms": int(round(float(campaign.model.control_period_s) * 1000)),
    }


def _stats(values: np.ndarray) -> dict:
    mean = float(np.mean(values))
    sigma = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    pct = np.percentile(values, [0.135, 1, 5, 50, 95, 99, 99.865])
    return {
        "mean": mean,
        "sigma": sigma,
        "min": float(np.min(values)),
        "max": float(np.max(values)),
        "p1": float(pct[1]),
        "p5": float(pct[2]),
        "p50": float(pct[3]),
        "p95": float(pct[4]),
        "p99": float(pct[5]),
        "minus_3sigma": mean - 3.0 * sigma,
        "plus_3sigma": mean + 3.0 * sigma,
        "p0_135": float(pct[0]),
        "p99_865": float(pct[6]),
    }


def rerun_command(campaign: Campaign, index: int, target_args: list[str]) -> str:
    """The command that flies case ``index`` alone, cycle by cycle, with its run records."""
    args = [
        "thruster-hil",
        "run",
        "--unit",
        "sim",
        "--stack",
        campaign.stack_ref,
        *target_args,
        "--dispersions",
        campaign.spec.where,
        "--case-seed",
        str(case_seed(campaign.seed, index)),
    ]
    return shlex.join(args)


def summarise(
    campaign: Campaign, result: CampaignResult, outcomes: list[dict], target_args: list[str]
) -> dict:
    passed = sum(o["passed"] for o in outcomes)
    stats = {k: _stats(np.array([o[k] for o in outcomes], dtype=np.float64)) for k in STAT_FIELDS}
    failures = []
    for i, o in enumerate(outcomes):
        if not o["passed"]:
            failures.append(
                {
                    "case": i,
                    "case_seed": case_seed(campaign.seed, i),
                    "reasons": o["fail_reasons"].split(";"),
                    "delta_v_error_pct": o["delta_v_error_pct"],
                    "max_attitude_error_deg": o["max_attitude_error_deg"],
                    "burn_duration_s": o["burn_duration_s"],
                    "thruster_failure_cycle": (
                        o["failure_cycle"] if o["failure_cycle"] >= 0 else None
                    ),
                    "rerun": rerun_command(campaign, i, target_args),
                }
            )
    plan = campaign.plan
    return {
        "stack": plan["stack"],
        "target_delta_v_mps": plan["delta_v_mps"],
        "planned_burn_duration_s": plan["burn_duration_s"],
        "perigee_km_before": plan["perigee_km_before"],
        "apogee_km_before": plan["apogee_km_before"],
        "cases": campaign.n_cases,
        "seed": campaign.seed,
        "case_seeds": "numpy.random.SeedSequence([seed, case]).generate_state(1, uint64) >> 1",
        "dispersions": campaign.spec.describe(),
        "scheduler": result.scheduler,
        "chunks": result.chunks,
        "wall_s": result.wall_s,
        "cases_per_s": campaign.n_cases / result.wall_s if result.wall_s > 0 else math.nan,
        "passed": passed,
        "failed": campaign.n_cases - passed,
        "pass_rate": passed / campaign.n_cases,
        "thruster_failures_injected": sum(o["failure_cycle"] >= 0 for o in outcomes),
        "pass_limits": pass_limits(campaign),
        "stats": stats,
        "failures": failures,
    }


def default_out_dir(stack: str, root: str | Path = "runs") -> Path:
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    return Path(root) / f"{stamp}-{stack}-montecarlo"


def prepare_out_dir(path: str | Path) -> Path:
    out = Path(path)
    try:
        taken = out.exists() and (not out.is_dir() or any(out.iterdir()))
    except OSError as exc:  # a name too long, a directory we may not list
        raise UserError(
            str(out), f"cannot use it as the output directory: {exc.strerror}", field="--out"
        ) from None
    if taken:
        raise UserError(
            str(out),
            "the output directory exists and is not empty: pick another "
            "--out (nothing is overwritten)",
            field="--out",
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(
            str(out), f"cannot create the output directory: {exc.strerror}", field="--out"
        ) from None
    return out


def write_outputs(out: Path, campaign: Campaign, outcomes: list[dict], summary: dict) -> None:
    """cases.csv, summary.json (atomically), report.png and report.html into ``out``."""
    names = tuple(campaign.model.thruster_names)
    inputs = [case_inputs(campaign.case(i), names) for i in range(campaign.n_cases)]
    fields = ["case", "case_seed", *inputs[0].keys(), *OUTCOME_FIELDS]
    with open(out / "cases.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(fields)
        for i, (inp, o) in enumerate(zip(inputs, outcomes, strict=True)):
            row = {"case": i, "case_seed": case_seed(campaign.seed, i), **inp, **o}
            w.writerow([int(v) if isinstance(v, bool) else v for v in map(row.__getitem__, fields)])
    tmp = out / "summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, out / "summary.json")
    from thruster_hil.montecarlo_report import render_report

    render_report(out, inputs, outcomes, summary)


def format_summary(s: dict) -> str:
    st = s["stats"]
    rows = [
        ("stack", f"{s['stack']}, target {s['target_delta_v_mps']:.5g} m/s"),
        (
            "cases",
            f"{s['cases']} (seed {s['seed']}), {s['passed']} passed, {s['failed']} "
            f"failed, {s['thruster_failures_injected']} with a thruster failure",
        ),
        (
            "scheduler",
            f"{s['scheduler']}: {s['cases_per_s']:.1f} cases/s ({s['wall_s']:.2f} s wall)",
        ),
    ]
    for key, unit in (
        ("delta_v_error_pct", "%"),
        ("max_attitude_error_deg", "deg"),
        ("burn_duration_s", "s"),
        ("propellant_kg", "kg"),
        ("perigee_km_after", "km"),
    ):
        v = st[key]
        rows.append(
            (
                key,
                f"mean {v['mean']:.5g} sigma {v['sigma']:.3g} {unit}, 3-sigma "
                f"[{v['minus_3sigma']:.5g}, {v['plus_3sigma']:.5g}], p99 "
                f"{v['p99']:.5g}",
            )
        )
    for f in s["failures"][:5]:
        rows.append((f"case {f['case']} failed", f"{', '.join(f['reasons'])}: {f['rerun']}"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
