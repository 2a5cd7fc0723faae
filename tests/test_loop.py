"""thruster_hil.closedloop.fused: one cycle as two kernels, the fused burn loop, and the
counter-based noise.

Requirement (issue 8): the all-numba burn gives the same numbers as the cycle-by-cycle loop that
HIL and recorded runs use, so a batch case reproduces ``run --unit sim`` exactly.
"""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from thruster_hil.controller import cycle as cst

from thruster_hil.closedloop import fused as loop
from thruster_hil.closedloop.runner import Failure, run_burn
from thruster_hil.config import build_stack_model, load_stack
from thruster_hil.plan import Target, plan_burn

# Slow tier (`-m "not slow"` leaves it out): flies whole burns and compiles the fused loop.
pytestmark = pytest.mark.slow

SAME_KEYS = (
    "achieved_delta_v_mps",
    "true_delta_v_mps",
    "cycles",
    "burn_duration_s",
    "max_attitude_error_deg",
    "propellant_kg",
    "perigee_km_after",
    "apogee_km_after",
    "status_cycles",
    "max_on_time_ms",
    "tank_used_kg",
    "completed",
)


@pytest.fixture(scope="module")
def dragon():
    model = build_stack_model(load_stack("dragon-boost-kit"))
    return model, plan_burn("dragon-boost-kit", Target("delta_v", 0.2))


def _case(model, seed=7):
    n = len(model.thruster_names)
    rng = np.random.default_rng(seed)
    return loop.PlantCase(
        seed=seed,
        thrust_scale=1.0 + 0.02 * rng.standard_normal(n),
        isp_scale=1.0 + 0.01 * rng.standard_normal(n),
        misalign_rad=np.radians(0.5) * np.abs(rng.standard_normal(n)),
        misalign_azimuth_rad=rng.uniform(0, 2 * np.pi, n),
        d_open_delay_s=0.002 * rng.standard_normal(n),
        d_close_delay_s=0.002 * rng.standard_normal(n),
        d_mass_kg=3000.0,
        d_com_B_m=np.array([0.05, -0.1, 0.08]),
        noise_att_rad=1e-4,
        noise_rate_rad_s=1e-6,
        noise_dv_mps=1e-6,
        acc_bias_B_mps2=np.array([1e-6, 0.0, -1e-6]),
        fail_index=3,
        fail_at_s=30.0,
    )


def test_fused_burn_equals_the_cycle_by_cycle_loop(dragon):
    model, plan = dragon
    fused = run_burn(model, plan, failures=[Failure("trunk-draco-2", 40.0)]).summary
    stepped = run_burn(
        model, plan, failures=[Failure("trunk-draco-2", 40.0)], on_cycle=lambda k, info: None
    ).summary
    for key in SAME_KEYS:
        assert fused[key] == stepped[key], key
    assert fused["reallocations"] == stepped["reallocations"]
    # Ideal sensors: the controller's delta-v is the true one, to the bit.
    assert fused["true_delta_v_mps"] == fused["achieved_delta_v_mps"]


def test_a_dispersed_case_is_the_same_in_both_loops(dragon):
    model, plan = dragon
    case = _case(model)
    fused = run_burn(model, plan, case=case).summary
    stepped = run_burn(model, plan, case=case, on_cycle=lambda k, info: None).summary
    for key in SAME_KEYS:
        assert fused[key] == stepped[key], key
    # The dispersion shows: sensor bias and noise separate belief from truth, the heavier true
    # stack takes more propellant for the same believed delta-v.
    nominal = run_burn(model, plan).summary
    assert fused["true_delta_v_mps"] != fused["achieved_delta_v_mps"]
    assert fused["propellant_kg"] != nominal["propellant_kg"]
    assert [r["thruster"] for r in fused["reallocations"]] == [model.thruster_names[3]]


def test_along_track_vector_matches_the_controller():
    model = build_stack_model(load_stack("progress"))
    plan = plan_burn("progress", Target("delta_v", 0.1))
    sim = loop.new_sim(model, plan)
    sim.pre(0)
    xb = np.empty(3)
    loop.along_track_B(sim.y, xb)
    assert np.array_equal(xb, sim.ctrl.ctrl[cst.C_XH_B : cst.C_XH_B + 3])


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2**63 - 1), counter=st.integers(0, 2**62))
def test_uniform_is_inside_the_open_unit_interval(seed, counter):
    u = loop.uniform(seed, counter)
    assert 0.0 < u < 1.0
    assert u == loop.uniform(seed, counter)  # stateless: the same key, the same number


def test_normals_have_unit_variance_and_are_uncorrelated_across_seeds():
    """20,000 draws: the sample mean is within 5 standard errors (5/sqrt(N) = 0.035) of 0 and the
    variance within 5 * sqrt(2/N) = 0.05 of 1 (Gaussian sampling distributions)."""
    n = 20000
    x = np.array([loop.normal(12345, c) for c in range(n)])
    y = np.array([loop.normal(12346, c) for c in range(n)])
    assert abs(x.mean()) < 5 / math.sqrt(n)
    assert abs(x.var() - 1.0) < 5 * math.sqrt(2 / n)
    assert abs(np.corrcoef(x, y)[0, 1]) < 5 / math.sqrt(n)


def test_ideal_sensors_copy_the_state():
    y = np.arange(14, dtype=float) + 1.0
    sensed = np.array([0.1, 0.2, 0.3, 0, 0, 0])
    pscal = np.zeros(loop.PS_LEN)
    sens = np.zeros(cst.SENS_LEN)
    loop.sense(5, 99, y, sensed, pscal, sens)
    assert np.array_equal(sens[cst.S_R : cst.S_R + 3], y[0:3])
    assert np.array_equal(sens[cst.S_Q : cst.S_Q + 4], y[6:10])
    assert sens[cst.S_MASS] == y[13]
    assert np.array_equal(sens[cst.S_DV : cst.S_DV + 3], sensed[:3])
