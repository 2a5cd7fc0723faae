"""Array layouts declared once (issue 15, deliverable 6): every layout the kernels index is one
:class:`thruster_hil.core.layout.Layout`, its fields neither overlap nor leave gaps, and each
module's constants are the layout's offsets."""

from __future__ import annotations

import importlib
import pkgutil
import types

import hypothesis.strategies as st
import numpy as np
import pytest
from hypothesis import given

from thruster_hil.core.layout import Layout


def _modules_with_layouts() -> list[tuple[types.ModuleType, str, Layout]]:
    """(module, attribute, layout) for every Layout a module of the package declares."""
    found = []
    names = []
    # The layers with kernels (sims/ and controller/ live outside thruster_hil/ on disk, so
    # each package is walked on its own path); firmware_bridge has none.
    for pkg_name in KERNEL_PACKAGES:
        pkg = importlib.import_module(pkg_name)
        names += [info.name for info in pkgutil.walk_packages(pkg.__path__, pkg_name + ".")]
    for name in names:
        mod = importlib.import_module(name)
        for attr, value in vars(mod).items():
            if isinstance(value, Layout):
                found.append((mod, attr, value))
    return found


KERNEL_PACKAGES = (
    "thruster_hil.core",
    "thruster_hil.sims",
    "thruster_hil.controller",
    "thruster_hil.closedloop",
)


DECLARED = _modules_with_layouts()
# Each layout once, where it is declared (other modules may import it under the same name).
OWNED = [
    (m, a, lay)
    for m, a, lay in DECLARED
    if not any(lay is other and m2.__name__ < m.__name__ for m2, _a, other in DECLARED)
]


def test_the_kernels_layouts_are_declared():
    names = {lay.name for _m, _a, lay in OWNED}
    for expected in (
        "controller sensor vector",
        "controller parameters",
        "controller state",
        "controller qp rows",
        "controller gimbal record",
        "controller LP rows",
        "controller thruster columns",
        "modulator state columns",
        "LP solver work rows",
        "plant state",
        "sensed delta-v",
        "valve state columns",
        "attitude RK4 work",
        "plant thruster rows",
        "plant thruster geometry",
        "plant tank rows",
        "plant scalars",
        "case accumulators",
        "live thruster rows",
        "burn numbers",
        "batch result row",
    ):
        assert expected in names, f"layout {expected!r} not declared"


@pytest.mark.parametrize("mod,attr,layout", OWNED, ids=[f"{m.__name__}.{a}" for m, a, _l in OWNED])
def test_fields_tile_the_layout_exactly(mod, attr, layout):
    """Every element of [0, length) belongs to exactly one field."""
    owner = np.full(layout.length, -1)
    for i, ((field, size), off) in enumerate(zip(layout.fields, layout.offsets, strict=True)):
        assert size >= 1
        assert (owner[off : off + size] == -1).all(), f"{field} overlaps another field"
        assert off + size <= layout.length, f"{field} runs past the end"
        owner[off : off + size] = i
    assert (owner >= 0).all(), "a gap between fields"


@pytest.mark.parametrize("mod,attr,layout", OWNED, ids=[f"{m.__name__}.{a}" for m, a, _l in OWNED])
def test_module_constants_are_the_layout_offsets(mod, attr, layout):
    for field, _size in layout.fields:
        assert hasattr(mod, field), f"{mod.__name__} does not export {field}"
        value = getattr(mod, field)
        assert type(value) is int, f"{field} must be a plain int (a numba global)"
        assert value == layout.offset(field), field


@pytest.mark.parametrize(
    "module,length_name,layout_name",
    [
        ("thruster_hil.controller.cycle", "SENS_LEN", "SENSORS"),
        ("thruster_hil.controller.cycle", "PARAM_LEN", "PARAMS"),
        ("thruster_hil.controller.cycle", "CTRL_LEN", "CTRL"),
        ("thruster_hil.controller.cycle", "QP_ROWS", "QP"),
        ("thruster_hil.controller.cycle", "G_STRIDE", "GIMBAL_RECORD"),
        ("thruster_hil.controller.modulation", "THR_COLS", "THRUSTER_COLUMNS"),
        ("thruster_hil.controller.modulation", "MOD_COLS", "MODULATOR_COLUMNS"),
        ("thruster_hil.controller.allocation", "LP_WORK_ROWS", "LP_WORK"),
        ("thruster_hil.sims.plant", "PLANT_STATE_LEN", "PLANT_STATE"),
        ("thruster_hil.sims.plant", "SENSED_LEN", "SENSED"),
        ("thruster_hil.sims.thrusters", "VALVE_STATE_LEN", "VALVE_STATE"),
        ("thruster_hil.sims.attitude", "ATTITUDE_WORK_LEN", "ATTITUDE_WORK"),
        ("thruster_hil.closedloop.fused", "PT_LEN", "PLANT_THRUSTERS"),
        ("thruster_hil.closedloop.fused", "G_LEN", "GEOMETRY"),
        ("thruster_hil.closedloop.fused", "TK_LEN", "TANKS"),
        ("thruster_hil.closedloop.fused", "PS_LEN", "PLANT_SCALARS"),
        ("thruster_hil.closedloop.fused", "ACC_LEN", "ACCUMULATORS"),
        ("thruster_hil.closedloop.fused", "LV_LEN", "LIVE"),
        ("thruster_hil.closedloop.fused", "OUT_LEN", "FINISH"),
        ("thruster_hil.closedloop.batch", "B_LEN", "BATCH_ROW"),
    ],
)
def test_length_constants_are_the_layout_lengths(module, length_name, layout_name):
    mod = importlib.import_module(module)
    assert getattr(mod, length_name) == getattr(mod, layout_name).length


def test_the_qp_work_rows_are_the_solvers():
    from thruster_hil.controller import allocation, cycle

    assert cycle.QP.size("Q_WORK") == allocation.LP_WORK.length
    assert cycle.QP_ROWS - cycle.Q_WORK == allocation.LP_WORK_ROWS


def test_the_plant_state_matches_the_sensor_vector_prefix():
    """``fused.sense`` copies r, v, q, omega: the two layouts must agree on their sizes."""
    from thruster_hil.controller import cycle
    from thruster_hil.sims import plant

    for p, s in (("R", "S_R"), ("V", "S_V"), ("Q", "S_Q"), ("W", "S_W")):
        assert plant.PLANT_STATE.size(p) == cycle.SENSORS.size(s)


FIELD_NAMES = st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZ_", min_size=1, max_size=8)


@given(
    st.lists(
        st.tuples(FIELD_NAMES, st.integers(1, 50)),
        min_size=1,
        max_size=20,
        unique_by=lambda f: f[0],
    )
)
def test_any_declaration_tiles_its_length(fields):
    layout = Layout("hypothesis", fields)
    assert layout.length == sum(size for _f, size in fields)
    at = 0
    for field, size in fields:
        assert layout.offset(field) == at
        assert layout.span(field) == slice(at, at + size)
        at += size


@pytest.mark.parametrize(
    "fields",
    [
        [("A", 1), ("A", 2)],  # the same field twice
        [("A", 0)],  # empty
        [("A", -1)],
        [("A", 1.5)],
        [("A", True)],
    ],
)
def test_bad_declarations_are_refused(fields):
    with pytest.raises(ValueError):
        Layout("bad", fields)
