"""controller.step allocates nothing: numba's runtime counts every heap allocation it makes.

Run in a fresh interpreter with NUMBA_NRT_STATS=1 (the counters are only kept when that is set at
start-up). Passing arrays in from Python adopts each one (one count per array argument), so a
jitted driver calls step 1 time and 200 times from a mid-burn SIL state: the counts must match.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# Slow tier (`-m "not slow"` leaves it out): compiles controller.step in a fresh process.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]

PROBE = r"""
import json
from numba import njit
from numba.core.runtime import rtsys
from thruster_hil.controller.cycle import step
from thruster_hil.closedloop.runner import run_burn
from thruster_hil.config import build_stack_model, load_stack
from thruster_hil.plan import Target, plan_burn

model = build_stack_model(load_stack("dragon-boost-kit"))
plan = plan_burn("dragon-boost-kit", Target("raise_perigee", 1.6))
deltas = []

@njit
def drive(times, sens, params, A, E, Binv, qp, ints, thr, mod, health, ctrl, on_ms):
    for _ in range(times):
        step(sens, params, A, E, Binv, qp, ints, thr, mod, health, ctrl, on_ms)

def probe(k, info):
    if k == 50:
        c = info["ctrl"]
        args = (c.sens, c.params, c.A, c.E, c.Binv, c.qp, c.ints, c.thr, c.mod, c.health, c.ctrl,
                c.on_ms)
        drive(1, *args)
        counts = []
        for times in (1, 200):
            before = rtsys.get_allocation_stats().alloc
            drive(times, *args)
            counts.append(rtsys.get_allocation_stats().alloc - before)
        deltas.append(counts[1] - counts[0])

run_burn(model, plan, on_cycle=probe)
print(json.dumps(deltas))
"""


def test_controller_step_makes_no_heap_allocation():
    env = dict(os.environ, NUMBA_NRT_STATS="1", PYTHONPATH=str(ROOT))
    out = subprocess.run(
        [sys.executable, "-c", PROBE],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [0]
