"""The software-in-the-loop reboost: controller + plant + the ideal in-process unit.

Acceptance of the control loop: for each stack a reboost to a target perigee rise ends within
0.5 % of the planned delta-v (or one minimum impulse bit), never exceeds the stack's attitude
limit, and never commands a thruster outside [0, period]; a translation thruster failing off
mid-burn is allocated around and the burn still ends on target.
"""

import dataclasses
import json

import numpy as np
import pytest
from thruster_hil.controller import cycle as cst
from thruster_hil.controller.build import build_controller
from thruster_hil.sims.thrusters import HEALTH_STUCK_OPEN

from thruster_hil.cli import main
from thruster_hil.closedloop.runner import Failure, run_burn
from thruster_hil.config import build_stack_model, list_stacks, load_stack
from thruster_hil.plan import Target, plan_burn

# Slow tier (`-m "not slow"` leaves it out): flies whole burns of every stack.
pytestmark = pytest.mark.slow

RUN_KEYS = {
    "target_delta_v_mps",
    "achieved_delta_v_mps",
    "burn_duration_s",
    "cycles",
    "max_attitude_error_deg",
    "propellant_kg",
    "perigee_km_after",
    "apogee_km_after",
    "wall_s",
    "cycles_per_s",
}


PERIGEE_RISE = Target("raise_perigee", 1.6)


def _fly(stack, failures=None, target=PERIGEE_RISE):
    model = build_stack_model(load_stack(stack))
    plan = plan_burn(stack, target)
    return model, plan, run_burn(model, plan, failures=failures)


def _tolerance(model, target_dv):
    ctrl = build_controller(model, target_dv)
    return max(0.005 * target_dv, float(ctrl.params[cst.P_DV_TOL]))


@pytest.mark.parametrize("stack", list_stacks())
def test_reboost_ends_on_target_within_limits(stack):
    model, plan, result = _fly(stack)
    s = result.summary
    assert s["completed"]
    assert abs(s["achieved_delta_v_mps"] - s["target_delta_v_mps"]) <= _tolerance(
        model, s["target_delta_v_mps"]
    )
    assert s["max_attitude_error_deg"] <= s["attitude_limit_deg"]
    assert s["on_time_bound_violations"] == 0 and s["max_on_time_ms"] <= s["period_ms"]
    # The orbit responds as planned: the perigee rises by about the asked 1.6 km.
    assert s["perigee_km_after"] - s["perigee_km_before"] == pytest.approx(1.6, abs=0.05)


def test_translation_thruster_failing_mid_burn_is_allocated_around():
    model, plan, result = _fly("dragon-boost-kit", [Failure("trunk-draco-1", 60.0)])
    s = result.summary
    assert s["completed"]
    assert abs(s["achieved_delta_v_mps"] - s["target_delta_v_mps"]) <= _tolerance(
        model, s["target_delta_v_mps"]
    )
    assert s["max_attitude_error_deg"] <= s["attitude_limit_deg"]
    assert [r["thruster"] for r in s["reallocations"]] == ["trunk-draco-1"]
    assert s["reallocations"][0]["t_s"] == pytest.approx(60.0)
    # Half the translation thrust for the rest of the burn: it takes longer than planned.
    assert s["burn_duration_s"] > 1.3 * s["planned_burn_duration_s"]
    assert s["status_cycles"].get("thruster_out", 0) > 0


def test_a_failed_thruster_is_never_commanded():
    model = build_stack_model(load_stack("dragon-boost-kit"))
    plan = plan_burn("dragon-boost-kit", Target("delta_v", 0.2))
    commanded = []

    def watch(k, info):
        if k > 30:
            commanded.append(int(info["ctrl"].on_ms[0]))

    run_burn(model, plan, failures=[Failure("trunk-draco-1", 10.0)], on_cycle=watch)
    assert commanded and max(commanded) == 0


def test_bad_sensor_input_closes_every_valve():
    model = build_stack_model(load_stack("progress"))
    ctrl = build_controller(model, 0.5)
    ctrl.sens[:] = np.nan
    ctrl.on_ms[:] = 99
    status = ctrl.step()
    assert status == cst.ST_BAD_INPUT
    assert not ctrl.on_ms.any()


def test_cli_run_sim_json(capsys, tmp_path):
    assert (
        main(
            [
                "run",
                "--unit",
                "sim",
                "--stack",
                "progress",
                "--delta-v",
                "0.1",
                "--json",
                "--out",
                str(tmp_path / "run"),
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert RUN_KEYS <= out.keys()
    assert out["unit"] == "sim"


@pytest.mark.parametrize(
    "arg", ["nozzle@3", "trunk-draco-1", "trunk-draco-1@-2", "trunk-draco-1@soon"]
)
def test_cli_run_rejects_a_bad_failure_spec(arg, capsys, tmp_path):
    assert (
        main(["run", "--delta-v", "0.1", "--fail-thruster", arg, "--out", str(tmp_path / "run")])
        == 2
    )
    err = capsys.readouterr().err
    assert err.startswith("thruster-hil: error: ") and err.count("\n") == 1


# ---- issue 14: roles, tanks and reserves, the gimbal --------------------------------------


def _tank(summary, name):
    return summary["propellant_by_tank_kg"][name]


def test_dragon_pushes_with_the_kit_and_holds_attitude_with_the_capsule():
    """The trunk Dracos make the push from the kit's tanks; the capsule's Dracos only hold
    attitude: every cycle their summed along-track force is at most zero (the role row), and
    the capsule gives a few kg against the kit's tens (issue 14: 73 % of the propellant came
    from the capsule with the quadratic allocation)."""
    model = build_stack_model(load_stack("dragon-boost-kit"))
    plan = plan_burn("dragon-boost-kit", PERIGEE_RISE)
    capsule = [i for i, name in enumerate(model.thruster_names) if name.startswith("quad-")]
    worst = []

    def watch(k, info):
        c = info["ctrl"]
        xb = c.ctrl[cst.C_XH_B : cst.C_XH_B + 3]
        push = sum(float(c.qp[cst.Q_X, i] * (c.A[0:3, i] @ xb)) for i in capsule)
        worst.append(push / float(c.thr[0, 7]))

    s = run_burn(model, plan, on_cycle=watch).summary
    assert s["completed"] and not s["reserve_touched"]
    assert max(worst) <= 1e-9
    assert _tank(s, "capsule") < 0.1 * _tank(s, "boost-kit")
    assert s["tank_reserve_kg"]["capsule"] > 0.0


def test_a_kit_draco_failing_never_touches_the_capsule_reserve():
    """With one kit Draco out the other finishes the burn; the capsule still only holds
    attitude (the allocation never lets its Dracos push), so its reserve is untouched."""
    model, plan, result = _fly("dragon-boost-kit", [Failure("trunk-draco-1", 60.0)])
    s = result.summary
    assert s["completed"] and not s["reserve_touched"]
    assert _tank(s, "capsule") < 0.1 * _tank(s, "boost-kit")


def test_the_burn_stops_before_a_tank_reaches_its_reserve():
    """A capsule with only 1 kg above its reserve: the attitude hold would need more over the
    burn, so the controller stops the burn (valves closed, status 'reserve') and says why; the
    reserve is never touched."""
    model = build_stack_model(load_stack("dragon-boost-kit"))
    t = model.tank_names.index("capsule")
    reserve = model.tank_reserve_kg.copy()
    reserve[t] = model.tank_propellant_kg[t] - 1.0
    model = dataclasses.replace(model, tank_reserve_kg=reserve)
    plan = plan_burn("dragon-boost-kit", PERIGEE_RISE)
    for failures in (None, [Failure("trunk-draco-1", 20.0)]):
        s = run_burn(model, plan, failures=failures).summary
        assert s["aborted"] and not s["completed"]
        assert "'capsule'" in s["abort_reason"] and "reserve" in s["abort_reason"]
        assert s["status_cycles"].get("reserve", 0) > 0
        assert _tank(s, "capsule") <= 1.0 and not s["reserve_touched"]


def test_cygnus_burn_of_ng19_length_fires_the_gimbaled_bt4_continuously():
    """Issue 14 acceptance: a 1368 s Cygnus burn has no infeasible cycle and the BT-4 is on for
    at least 98 % of it; the gimbal stays within its angle and rate limits every cycle."""
    model = build_stack_model(load_stack("cygnus"))
    plan = plan_burn("cygnus", Target("burn_duration", 1368.0))
    bt4 = model.thruster_names.index("bt4")
    col = len(model.thruster_names) + 6  # after the thrusters and the CMG +/- columns
    on_ms = []
    angles = []

    def watch(k, info):
        on_ms.append(int(info["executed_ms"][bt4]))
        angles.append(info["ctrl"].qp[cst.Q_ANGLE, col : col + 2].copy())

    s = run_burn(model, plan, on_cycle=watch).summary
    assert s["completed"]
    assert "infeasible" not in s["status_cycles"]
    assert sum(on_ms) / 1000.0 >= 0.98 * s["burn_duration_s"]
    limit = model.gimbal_limit_rad[bt4]
    step = model.gimbal_rate_rad_s[bt4] * model.control_period_s
    a = np.array(angles)
    assert np.all(np.abs(a) <= limit + 1e-12)
    assert np.all(np.abs(np.diff(a, axis=0)) <= step + 1e-12)


def test_a_burn_stopped_for_a_reserve_exits_1_saying_why(tmp_path, capsys):
    """A capsule with only 1 kg above its reserve: flown on a plan made for the packaged stack,
    the burn stops before the reserve (aborted, status 1, the reason names it) and the reserve
    is never touched; `plan` and `run` of that stack refuse it up front in one line (plan
    flies the burn as run does, and that burn cannot complete)."""
    from thruster_hil.hw_configs import CONFIG_DIR

    from thruster_hil.plan import Target, plan_burn

    for kind, stem in (
        ("stacks", "dragon-boost-kit"),
        ("stations", "iss"),
        ("vehicles", "dragon-cargo"),
    ):
        text = (CONFIG_DIR / kind / f"{stem}.toml").read_text()
        if kind == "vehicles":
            assert "reserve_kg = 1200.0" in text
            text = text.replace("reserve_kg = 1200.0", "reserve_kg = 1299.0")
        (tmp_path / kind).mkdir()
        (tmp_path / kind / f"{stem}.toml").write_text(text)
    stack = str(tmp_path / "stacks" / "dragon-boost-kit.toml")
    plan = plan_burn("dragon-boost-kit", Target("raise_perigee", 1.6))
    s = run_burn(build_stack_model(load_stack(stack)), plan).summary
    assert s["aborted"] and "reserve" in s["abort_reason"]
    assert s["propellant_by_tank_kg"]["capsule"] <= 1.0 and s["reserve_touched"] == []
    code = main(
        [
            "run",
            "--unit",
            "sim",
            "--stack",
            stack,
            "--raise-perigee-km",
            "1.6",
            "--fail-thruster",
            "trunk-draco-1@20",
            "--json",
            "--out",
            str(tmp_path / "run"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert "reserve" in err or "tanks" in err, err


def test_a_capsule_draco_stuck_open_is_cancelled_and_the_burn_goes_on():
    """A stuck-open valve drains its tank whatever the burn does: the capsule's budget and stop
    are suspended, the other Dracos cancel its thrust and the burn ends on target."""
    model, plan, result = _fly(
        "dragon-boost-kit", [Failure("quad-a-plus-t", 30.0, code=HEALTH_STUCK_OPEN)]
    )
    s = result.summary
    assert s["completed"] and not s["aborted"]
    assert abs(s["achieved_delta_v_mps"] - s["target_delta_v_mps"]) <= _tolerance(
        model, s["target_delta_v_mps"]
    )
    assert s["max_attitude_error_deg"] <= s["attitude_limit_deg"]
    assert "reserve" not in s["status_cycles"]
