"""thruster_hil.config: the packaged stacks load and build; every bad input is one ConfigError."""

import copy
import math
import tempfile
import tomllib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from thruster_hil.hw_configs import CONFIG_DIR

from thruster_hil.config import (
    build_stack_model,
    list_stacks,
    load_stack,
    load_station,
    load_vehicle,
)
from thruster_hil.core.errors import ConfigError

STACKS = ("dragon-boost-kit", "cygnus", "progress")

# ---- a minimal TOML writer (tomli_w is not installed) --------------------------------------


def _scalar(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list):
        return "[" + ", ".join(_scalar(x) for x in v) + "]"
    raise TypeError(type(v))


def _key(k: str) -> str:
    ok = k and all(c.isalnum() or c in "-_" for c in k)
    return k if ok else _scalar(k)


def dumps(data: dict, prefix: str = "") -> str:
    lines = [f"{_key(k)} = {_scalar(v)}" for k, v in data.items() if not isinstance(v, dict)]
    out = "\n".join(lines) + ("\n" if lines else "")
    for k, v in data.items():
        if isinstance(v, dict):
            name = f"{prefix}.{_key(k)}" if prefix else _key(k)
            out += f"\n[{name}]\n" + dumps(v, name)
    return out


def _read(kind: str, stem: str) -> dict:
    with open(CONFIG_DIR / kind / f"{stem}.toml", "rb") as f:
        return tomllib.load(f)


def originals(stack_name: str) -> dict:
    """The three documents of a packaged stack (and the stems they are stored under)."""
    stack = _read("stacks", stack_name)
    return {
        "stack": stack,
        "station": _read("stations", stack["station"]),
        "vehicle": _read("vehicles", stack["vehicle"]),
        "stems": {"station": stack["station"], "vehicle": stack["vehicle"]},
    }


def write_tree(root: Path, docs: dict) -> dict:
    """Write the documents as root/{stacks,stations,vehicles}/*.toml (stems as originally)."""
    paths = {
        "stack": root / "stacks" / "test-stack.toml",
        "station": root / "stations" / f"{docs['stems']['station']}.toml",
        "vehicle": root / "vehicles" / f"{docs['stems']['vehicle']}.toml",
    }
    for kind, path in paths.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(dumps(docs[kind]))
    return paths


def test_dumper_round_trips_the_packaged_files():
    for name in STACKS:
        docs = originals(name)
        for doc in (docs["stack"], docs["station"], docs["vehicle"]):
            assert tomllib.loads(dumps(doc)) == doc


# ---- the packaged stacks -----------------------------------------------------------------


def test_list_stacks():
    assert set(STACKS) <= set(list_stacks())


@pytest.mark.parametrize("name", STACKS)
def test_packaged_stack_loads_and_builds(name):
    model = build_stack_model(load_stack(name))
    # NASA ISS mass 419,725 kg plus a 4.5-12 t vehicle: 424-432 t.
    assert 4.2e5 <= model.mass_kg <= 4.6e5
    assert model.along_track_thrust_N > 0.0
    x_H_B = model.dcm_BH[:, 0]
    F = model.translation_force_B
    assert F @ x_H_B > 0.9 * np.linalg.norm(F)
    np.testing.assert_allclose(model.dcm_BH @ model.dcm_BH.T, np.eye(3), atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(model.u_T_B, axis=1), 1.0, atol=1e-6)
    np.testing.assert_array_equal(model.I_B, model.I_B.T)
    assert np.linalg.eigvalsh(model.I_B)[0] > 0.0
    n = len(model.thruster_names)
    assert model.r_TC_B.shape == (n, 3) and model.thrust_N.shape == (n,)
    assert list(model.translation_idx) + list(model.attitude_idx) == list(range(n))
    mdot = sum(model.thrust_N[i] / (model.isp_s[i] * 9.80665) for i in model.translation_idx)
    assert math.isclose(model.translation_mass_flow_kg_s, mdot)
    assert model.describe()["stack"] == model.name


def test_packaged_stack_geometry_by_hand():
    # Dragon: trunk Dracos at 7.7 m behind Harmony forward (13.85, 0, 4) push along -x_B.
    m = build_stack_model(load_stack("dragon-boost-kit"))
    np.testing.assert_allclose(m.u_T_B[0], [-1, 0, 0])
    np.testing.assert_allclose(m.r_TC_B[0] + m.r_CB_B, [13.85 + 7.7, 1.2, 4.0])
    assert math.isclose(m.along_track_thrust_N, 800.0)
    # Cygnus: BT-4 6.4 m nadir of Unity nadir (-7, 0, 6.5), pushing zenith.
    c = build_stack_model(load_stack("cygnus"))
    np.testing.assert_allclose(c.u_T_B[0], [0, 0, -1])
    np.testing.assert_allclose(c.r_TC_B[0] + c.r_CB_B, [-7.0, 0.0, 12.9])
    # Progress: the 8 aft DPOs, canted 9 deg, at the time-averaged 83.5 N of the calibration
    # (progress-ms.toml): 8 * 83.5 * cos(9 deg), 1.546 mm/s^2 on the model's 426,825 kg.
    p = build_stack_model(load_stack("progress"))
    assert len(p.translation_idx) == 8
    assert math.isclose(p.along_track_thrust_N, 8 * 83.5 * math.cos(math.radians(9)), rel_tol=1e-8)
    assert p.along_track_thrust_N / p.mass_kg == pytest.approx(1.546e-3, rel=1e-3)


def test_load_stack_by_path_and_station_vehicle_direct():
    s = load_stack(str(CONFIG_DIR / "stacks" / "progress.toml"))
    assert s.port == "zvezda-aft"
    assert load_station(CONFIG_DIR / "stations" / "iss.toml").mass_kg == pytest.approx(419725.0)
    assert load_vehicle(CONFIG_DIR / "vehicles" / "cygnus.toml").tanks["rcs"].polytropic_n == 1.0


def test_local_station_and_vehicle_take_precedence(tmp_path):
    docs = originals("progress")
    docs["station"]["mass_kg"] = 430000.0
    write_tree(tmp_path, docs)
    s = load_stack(str(tmp_path / "stacks" / "test-stack.toml"))
    assert s.station.mass_kg == 430000.0


def test_unknown_stack_name():
    with pytest.raises(ConfigError) as e:
        load_stack("no-such-stack")
    assert "no-such-stack" in str(e.value) and "\n" not in str(e.value)


# ---- valid perturbations load ------------------------------------------------------------


@st.composite
def perturbed(draw):
    name = draw(st.sampled_from(STACKS))
    docs = copy.deepcopy(originals(name))
    stn, veh, stk = docs["station"], docs["vehicle"], docs["stack"]
    f = st.floats(0.5, 2.0)
    stn["mass_kg"] *= draw(f)
    k = draw(f)
    stn["inertia_kg_m2"] = [[k * x for x in row] for row in stn["inertia_kg_m2"]]
    stn["com_m"] = [x + draw(st.floats(-2, 2)) for x in stn["com_m"]]
    for port in stn["ports"].values():
        port["position_m"] = [x + draw(st.floats(-0.5, 0.5)) for x in port["position_m"]]
    veh["dry_mass_kg"] *= draw(st.floats(0.3, 3.0))
    k = draw(f)
    veh["inertia_kg_m2"] = [[k * x for x in row] for row in veh["inertia_kg_m2"]]
    veh["com_m"][0] += draw(st.floats(-1, 1))
    for tank in veh["tanks"].values():
        k = draw(st.floats(0.0, 2.0))
        tank["propellant_kg"] *= k
        if "reserve_kg" in tank:  # a reserve stays within its tank
            tank["reserve_kg"] *= k
        tank["pressure_Pa"] *= draw(f)
    for thr in veh["thrusters"].values():
        thr["thrust_N"] *= draw(f)
        thr["isp_s"] = draw(st.floats(200.0, 450.0))
        thr["open_delay_s"] = draw(st.floats(0.0, 0.05))
        thr["min_on_time_s"] = draw(st.floats(0.0, 0.2))
    stk["clock_deg"] = draw(st.floats(-180, 180))
    y, p, r = stk["attitude_ypr_deg"]
    stk["attitude_ypr_deg"] = [
        y + draw(st.floats(-20, 20)),
        min(90.0, max(-90.0, p + draw(st.floats(-20, 20)))),
        r + draw(st.floats(-20, 20)),
    ]
    # A whole number of ms the wire carries, at least 4 x the longest minimum on-time of the
    # stack's thrusters (thruster_hil.config._control_period).
    used = [
        veh["thrusters"][n]
        for n in (*stk["translation_thrusters"], *stk.get("attitude_thrusters", []))
    ]
    shortest_ms = math.ceil(
        max(
            4000 * max(h["min_on_time_s"] for h in used),
            1000
            * max(
                max(h["open_delay_s"] + h["rise_time_s"], h["close_delay_s"] + h["tail_off_s"])
                for h in used
            ),
        )
        + 1
    )
    stk["control_period_s"] = draw(st.integers(max(10, shortest_ms), 2000)) / 1000
    stk["solar_activity"] = draw(st.sampled_from(["low", "moderate", "high"]))
    return docs


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(perturbed())
def test_perturbed_valid_configs_load(docs):
    with tempfile.TemporaryDirectory() as d:
        paths = write_tree(Path(d), docs)
        model = build_stack_model(load_stack(str(paths["stack"])))
    assert model.mass_kg > docs["station"]["mass_kg"]
    assert model.along_track_thrust_N > 0.0


# ---- random corruptions are rejected ------------------------------------------------------

OPTIONAL = {("stack", "solar_activity")}
#: Keys that may be left out anywhere they appear (a tank's reserve defaults to none kept back).
OPTIONAL_KEYS = {"reserve_kg"}
NON_NEGATIVE_SUFFIXES = ("_kg", "_s", "_N", "_Pa", "_m2", "_m3", "_Nm", "_km", "_coefficient")


def _leaves(obj, path=()):
    """(path, value) for every scalar and every element of a list."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _leaves(v, (*path, k))
    elif isinstance(obj, list):
        yield path, obj
        for i, v in enumerate(obj):
            yield from _leaves(v, (*path, i))
    else:
        yield path, obj


def _tables(obj, path=()):
    if isinstance(obj, dict):
        yield path
        for k, v in obj.items():
            yield from _tables(v, (*path, k))


def _get(obj, path):
    for p in path:
        obj = obj[p]
    return obj


@st.composite
def corrupted(draw):
    docs = copy.deepcopy(originals(draw(st.sampled_from(STACKS))))
    kind = draw(st.sampled_from(["stack", "station", "vehicle"]))
    doc = docs[kind]
    op = draw(st.sampled_from(["delete", "unknown", "type", "nan", "negative", "huge", "rename"]))
    if op == "unknown":
        path = draw(st.sampled_from(list(_tables(doc))))
        _get(doc, path)["bogus_key"] = 1
        return docs, kind, op, path
    if op == "rename":
        refs = []
        if kind == "stack":
            refs = [("port",), ("station",), ("vehicle",)]
            refs += [
                (k, i)
                for k in ("translation_thrusters", "attitude_thrusters")
                for i in range(len(doc[k]))
            ]
        elif kind == "vehicle":
            refs = [("thrusters", n, "tank") for n in doc["thrusters"]]
        else:
            kind, doc = "stack", docs["stack"]
            refs = [("port",)]
        path = draw(st.sampled_from(refs))
        _get(doc, path[:-1])[path[-1]] = "no-such-" + str(_get(doc, path))
        return docs, kind, op, path
    leaves = [(p, v) for p, v in _leaves(doc) if p and (kind, p[0]) not in OPTIONAL]
    if op == "delete":
        leaves = [
            (p, v) for p, v in leaves if isinstance(p[-1], str) and p[-1] not in OPTIONAL_KEYS
        ]
    elif op in ("nan", "huge"):
        leaves = [
            (p, v) for p, v in leaves if isinstance(v, float | int) and not isinstance(v, bool)
        ]
    elif op == "negative":
        leaves = [
            (p, v)
            for p, v in leaves
            if isinstance(v, float)
            and v > 0
            and (
                (isinstance(p[-1], str) and p[-1].endswith(NON_NEGATIVE_SUFFIXES))
                or (len(p) >= 2 and p[-3:-2] == ("inertia_kg_m2",))
            )
        ]
    path, value = draw(st.sampled_from(leaves))
    parent = _get(doc, path[:-1])
    if op == "delete":
        del parent[path[-1]]
    elif op == "type":
        if isinstance(value, str):
            parent[path[-1]] = 3.0
        elif isinstance(value, float | int):
            parent[path[-1]] = draw(st.sampled_from(["oops", True]))
        else:
            parent[path[-1]] = "oops"
    elif op == "nan":
        parent[path[-1]] = float("nan")
    elif op == "negative":
        parent[path[-1]] = -value - 1.0
    else:
        parent[path[-1]] = 1e30
    return docs, kind, op, path


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(corrupted())
def test_corrupted_configs_are_rejected_with_one_line(case):
    docs, kind, op, path = case
    with tempfile.TemporaryDirectory() as d:
        paths = write_tree(Path(d), docs)
        with pytest.raises(ConfigError) as e:
            load_stack(str(paths["stack"]))
    text = str(e.value)
    assert "\n" not in text
    assert paths[kind].name in text, (op, path, text)
    assert e.value.exit_code == 2


# ---- named bad configs -------------------------------------------------------------------


def _set(path, value):
    def mutate(doc):
        parent = _get(doc, path[:-1])
        parent[path[-1]] = value

    return mutate


def _delete(path):
    def mutate(doc):
        del _get(doc, path[:-1])[path[-1]]

    return mutate


DT = ("thrusters", "trunk-draco-1")
BAD = [
    # id, stack, file kind, mutation, field expected in the message
    ("station-mass-zero", "progress", "station", _set(("mass_kg",), 0.0), "mass_kg"),
    ("station-mass-bool", "progress", "station", _set(("mass_kg",), True), "mass_kg"),
    ("station-mass-string", "progress", "station", _set(("mass_kg",), "419725"), "mass_kg"),
    ("station-com-short", "progress", "station", _set(("com_m",), [1.0, 2.0]), "com_m"),
    ("station-com-nan", "progress", "station", _set(("com_m", 1), float("nan")), "com_m[1]"),
    ("station-com-inf", "progress", "station", _set(("com_m", 2), float("inf")), "com_m[2]"),
    (
        "inertia-asymmetric",
        "progress",
        "station",
        _set(("inertia_kg_m2", 0, 1), 9e6),
        "inertia_kg_m2",
    ),
    (
        "inertia-not-pd",
        "progress",
        "station",
        _set(("inertia_kg_m2", 0, 0), -1e8),
        "inertia_kg_m2",
    ),
    (
        "inertia-triangle",
        "progress",
        "vehicle",
        _set(("inertia_kg_m2",), [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 3.0]]),
        "inertia_kg_m2",
    ),
    (
        "port-axis-not-unit",
        "dragon-boost-kit",
        "station",
        _set(("ports", "harmony-forward", "x_axis"), [0.6, 0.6, 0.0]),
        "ports.harmony-forward.x_axis",
    ),
    (
        "port-axes-not-orthogonal",
        "dragon-boost-kit",
        "station",
        _set(("ports", "harmony-forward", "y_axis"), [0.6, 0.8, 0.0]),
        "ports.harmony-forward.y_axis",
    ),
    (
        "apogee-below-perigee",
        "progress",
        "station",
        _set(("typical_orbit", "apogee_km"), 400.0),
        "typical_orbit.apogee_km",
    ),
    ("unknown-key-near", "progress", "station", _set(("masss_kg",), 1.0), "masss_kg"),
    (
        "missing-drag-coefficient",
        "progress",
        "station",
        _delete(("drag_coefficient",)),
        "drag_coefficient",
    ),
    (
        "direction-not-unit",
        "dragon-boost-kit",
        "vehicle",
        _set((*DT, "direction"), [-0.999, 0.0, 0.0]),
        "thrusters.trunk-draco-1.direction",
    ),
    (
        "thrust-zero",
        "dragon-boost-kit",
        "vehicle",
        _set((*DT, "thrust_N"), 0.0),
        "thrusters.trunk-draco-1.thrust_N",
    ),
    (
        "isp-low",
        "dragon-boost-kit",
        "vehicle",
        _set((*DT, "isp_s"), 40.0),
        "thrusters.trunk-draco-1.isp_s",
    ),
    (
        "isp-high",
        "dragon-boost-kit",
        "vehicle",
        _set((*DT, "isp_s"), 600),
        "thrusters.trunk-draco-1.isp_s",
    ),
    (
        "negative-delay",
        "dragon-boost-kit",
        "vehicle",
        _set((*DT, "open_delay_s"), -0.01),
        "thrusters.trunk-draco-1.open_delay_s",
    ),
    (
        "position-4-long",
        "dragon-boost-kit",
        "vehicle",
        _set((*DT, "position_m"), [1.0] * 4),
        "thrusters.trunk-draco-1.position_m",
    ),
    (
        "unknown-tank",
        "dragon-boost-kit",
        "vehicle",
        _set((*DT, "tank"), "trunk"),
        "thrusters.trunk-draco-1.tank",
    ),
    (
        "pressure-mode",
        "dragon-boost-kit",
        "vehicle",
        _set(("tanks", "boost-kit", "pressure_mode"), "pulsed"),
        "tanks.boost-kit.pressure_mode",
    ),
    (
        "blowdown-missing-gas",
        "cygnus",
        "vehicle",
        _delete(("tanks", "rcs", "gas_volume_m3")),
        "tanks.rcs.gas_volume_m3",
    ),
    (
        "blowdown-thruster-missing-exponent",
        "cygnus",
        "vehicle",
        _delete(("thrusters", "rcs-roll-1", "thrust_exponent")),
        "thrusters.rcs-roll-1.thrust_exponent",
    ),
    (
        "regulated-thruster-with-exponent",
        "cygnus",
        "vehicle",
        _set(("thrusters", "bt4", "isp_exponent"), 0.1),
        "thrusters.bt4.isp_exponent",
    ),
    ("dry-mass-negative", "cygnus", "vehicle", _set(("dry_mass_kg",), -5.0), "dry_mass_kg"),
    ("thrusters-not-tables", "cygnus", "vehicle", _set(("thrusters", "bt4"), 5), "thrusters.bt4"),
    ("unknown-port", "cygnus", "stack", _set(("port",), "unity-zenith"), "port"),
    ("unknown-station", "cygnus", "stack", _set(("station",), "mir"), "station"),
    ("unknown-vehicle", "cygnus", "stack", _set(("vehicle",), "htv"), "vehicle"),
    (
        "thruster-twice",
        "cygnus",
        "stack",
        _set(("attitude_thrusters",), ["bt4"]),
        "attitude_thrusters",
    ),
    (
        "unknown-thruster",
        "cygnus",
        "stack",
        _set(("translation_thrusters",), ["bt-4"]),
        "translation_thrusters",
    ),
    (
        "empty-translation",
        "cygnus",
        "stack",
        _set(("translation_thrusters",), []),
        "translation_thrusters",
    ),
    ("solar-activity", "cygnus", "stack", _set(("solar_activity",), "extreme"), "solar_activity"),
    (
        "pushes-backwards",
        "dragon-boost-kit",
        "stack",
        _set(("attitude_ypr_deg",), [0.0, 0, 0]),
        "translation_thrusters",
    ),
    (
        "pushes-sideways",
        "dragon-boost-kit",
        "stack",
        _set(("attitude_ypr_deg",), [90.0, 0.0, 0.0]),
        "translation_thrusters",
    ),
    (
        "reserve-larger-than-tank",
        "dragon-boost-kit",
        "vehicle",
        _set(("tanks", "capsule", "reserve_kg"), 1300.5),
        "tanks.capsule.reserve_kg",
    ),
    (
        "reserve-negative",
        "dragon-boost-kit",
        "vehicle",
        _set(("tanks", "capsule", "reserve_kg"), -1.0),
        "tanks.capsule.reserve_kg",
    ),
    (
        "gimbal-limit-nan",
        "cygnus",
        "vehicle",
        _set(("thrusters", "bt4", "gimbal", "limit_deg"), math.nan),
        "thrusters.bt4.gimbal.limit_deg",
    ),
    (
        "gimbal-limit-zero",
        "cygnus",
        "vehicle",
        _set(("thrusters", "bt4", "gimbal", "limit_deg"), 0.0),
        "thrusters.bt4.gimbal.limit_deg",
    ),
    (
        "gimbal-rate-inf",
        "cygnus",
        "vehicle",
        _set(("thrusters", "bt4", "gimbal", "rate_deg_s"), math.inf),
        "thrusters.bt4.gimbal.rate_deg_s",
    ),
    (
        "gimbal-missing-rate",
        "cygnus",
        "vehicle",
        _delete(("thrusters", "bt4", "gimbal", "rate_deg_s")),
        "thrusters.bt4.gimbal.rate_deg_s",
    ),
    (
        "gimbal-not-a-table",
        "cygnus",
        "vehicle",
        _set(("thrusters", "bt4", "gimbal"), 5.0),
        "thrusters.bt4.gimbal",
    ),
    (
        "cygnus-unpitched",
        "cygnus",
        "stack",
        _set(("attitude_ypr_deg",), [0.0, 0.0, 0.0]),
        "translation_thrusters",
    ),
    (
        "pitch-out-of-range",
        "cygnus",
        "stack",
        _set(("attitude_ypr_deg",), [0.0, -100.0, 0.0]),
        "attitude_ypr_deg[1]",
    ),
    (
        "control-period-zero",
        "progress",
        "stack",
        _set(("control_period_s",), 0),
        "control_period_s",
    ),
    (
        "cmg-negative",
        "progress",
        "stack",
        _set(("cmg_torque_budget_Nm",), -1.0),
        "cmg_torque_budget_Nm",
    ),
    ("missing-port", "progress", "stack", _delete(("port",)), "port"),
    # Absurd but positive (issue 13): each flew no thrust and exited 0, or crashed the run.
    *[
        (
            f"control-period-{v!r}",
            "progress",
            "stack",
            _set(("control_period_s",), v),
            "control_period_s",
        )
        for v in (1e-308, 0.001, 0.0015, 0.1, 10.5, 0.2505)
    ],  # 0.1 < 4 x 50 ms min on-time
    *[
        (
            f"attitude-limit-{v!r}",
            "progress",
            "stack",
            _set(("max_attitude_error_deg",), v),
            "max_attitude_error_deg",
        )
        for v in (1e-308, 0.05, 120.0)
    ],
    ("rate-limit-tiny", "progress", "stack", _set(("max_rate_deg_s",), 1e-308), "max_rate_deg_s"),
    (
        "thrust-tiny",
        "dragon-boost-kit",
        "vehicle",
        _set((*DT, "thrust_N"), 1e-300),
        "thrusters.trunk-draco-1.thrust_N",
    ),
    (
        "valve-slower-than-a-cycle",
        "progress",
        "stack",
        _set(("control_period_s",), 0.04),
        "control_period_s",
    ),  # min on-time 50 ms would refuse it too: see the next test
]


def test_a_valve_slower_than_a_cycle_is_refused(tmp_path):
    docs = originals("progress")
    for thr in docs["vehicle"]["thrusters"].values():
        thr["open_delay_s"] = 0.9
    paths = write_tree(tmp_path, docs)
    with pytest.raises(
        ConfigError,
        match=r"control_period_s: expected longer than the slowest "
        r"valve transient \(dpo-aft-1: 0.92 s to open or close\), got 0.5 s",
    ):
        load_stack(str(paths["stack"]))


@pytest.mark.parametrize(
    ("stack", "kind", "mutate", "field"), [b[1:] for b in BAD], ids=[b[0] for b in BAD]
)
def test_named_bad_config(tmp_path, stack, kind, mutate, field):
    docs = originals(stack)
    mutate(docs[kind])
    paths = write_tree(tmp_path, docs)
    with pytest.raises(ConfigError) as e:
        load_stack(str(paths["stack"]))
    text = str(e.value)
    assert "\n" not in text
    assert paths[kind].name in text
    assert e.value.field == field, text
    assert f": {field}: " in text


def test_unknown_key_suggests_nearest(tmp_path):
    docs = originals("progress")
    docs["station"]["masss_kg"] = 1.0
    paths = write_tree(tmp_path, docs)
    with pytest.raises(ConfigError, match="did you mean 'mass_kg'"):
        load_stack(str(paths["stack"]))


def test_unknown_station_names_the_file_looked_for(tmp_path):
    docs = originals("cygnus")
    docs["stack"]["station"] = "mir"
    paths = write_tree(tmp_path, docs)
    with pytest.raises(ConfigError, match=r"stations/mir\.toml"):
        load_stack(str(paths["stack"]))


def test_unparseable_toml_names_the_line(tmp_path):
    bad = tmp_path / "stacks" / "broken.toml"
    bad.parent.mkdir()
    bad.write_text('name = "x"\nstation = \n')
    with pytest.raises(ConfigError) as e:
        load_stack(str(bad))
    assert "broken.toml" in str(e.value) and "line 2" in str(e.value)
    assert "\n" not in str(e.value)


def test_missing_stack_file(tmp_path):
    with pytest.raises(ConfigError, match="nothing.toml"):
        load_stack(str(tmp_path / "nothing.toml"))


def test_every_packaged_stack_is_inside_the_bounds():
    """The bounds (docs/architecture.md, "Config bounds") leave the packaged stacks flyable,
    each period a whole number of ms and at least 4 x the longest minimum on-time it uses."""
    from thruster_hil.config import MIN_ATTITUDE_LIMIT_DEG, PERIOD_PER_MIN_ON

    for name in list_stacks():
        s = load_stack(name)
        used = (*s.translation_thrusters, *s.attitude_thrusters)
        longest = max(s.vehicle.thrusters[n].min_on_time_s for n in used)
        assert s.control_period_s >= PERIOD_PER_MIN_ON * longest
        assert s.max_attitude_error_deg >= MIN_ATTITUDE_LIMIT_DEG


def test_plan_refuses_what_run_would_crash_on(tmp_path, capsys):
    """control_period_s = 1e-308 passed `plan`, then `run` crashed with a traceback: both now
    refuse it at load, in one line naming the file and the field, exit 2."""
    from thruster_hil.cli import main

    docs = originals("progress")
    docs["stack"]["control_period_s"] = 1e-308
    paths = write_tree(tmp_path, docs)
    for cmd in ("plan", "run"):
        extra = ["--unit", "sim", "--out", str(tmp_path / "run")] if cmd == "run" else []
        assert main([cmd, "--stack", str(paths["stack"]), "--delta-v", "0.05", *extra]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and ": control_period_s: " in err, err
        assert "test-stack.toml" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.slow  # propagates the longest burn it accepts
def test_plan_refuses_a_burn_longer_than_it_can_propagate(tmp_path, capsys):
    """The weakest legal thrusters (0.1 N each) and a target they would need weeks for: one
    line from `plan` (a burn over 1e6 s), exit 2, not an array it cannot allocate."""
    from thruster_hil.cli import main

    docs = originals("progress")
    for thr in docs["vehicle"]["thrusters"].values():
        thr["thrust_N"] = 0.1
    paths = write_tree(tmp_path, docs)
    assert main(["plan", "--stack", str(paths["stack"]), "--delta-v", "3"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "expected a burn of at most 1e+06 s" in err, err
    # A small target fits the 1e6 s cap, but 0.8 N of thrust loses to drag: plan flies the
    # burn as run would, and refuses it in one line instead of planning a burn that never ends.
    assert main(["plan", "--stack", str(paths["stack"]), "--delta-v", "0.05"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "expected a burn the closed loop completes" in err, err
