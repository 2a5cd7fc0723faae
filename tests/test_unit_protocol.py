"""One declared Unit protocol (issue 15, deliverable 6): the in-process, serial and replay units
implement thruster_hil.closedloop.unit.Unit, and the runner uses its members directly instead
of probing a unit for them."""

from __future__ import annotations

import ast
import inspect

import numpy as np
import pytest

from thruster_hil.closedloop import runner
from thruster_hil.closedloop.hil import SerialUnit
from thruster_hil.closedloop.runner import IdealUnit, run_burn
from thruster_hil.closedloop.unit import StepByStep, Unit, UnitReport
from thruster_hil.config import build_stack_model, load_stack
from thruster_hil.plan import Target, plan_stack
from thruster_hil.replay import ReplayUnit

MEMBERS = (
    "name",
    "realtime",
    "errors",
    "valves_closed",
    "valves_open",
    "execute",
    "execute_chain",
    "wait_until",
    "fail",
    "stats",
    "close",
)


def _units():
    link = object()  # SerialUnit only keeps its link until a cycle runs
    return [
        IdealUnit(3, 500),
        SerialUnit(link, 3, 500, "lockstep", "emulator"),
        SerialUnit(link, 3, 500, "realtime", "/dev/ttyACM0"),
        ReplayUnit({}, 3),
    ]


@pytest.mark.parametrize("unit", _units(), ids=lambda u: f"{type(u).__name__}-{u.name}")
def test_every_unit_implements_the_protocol(unit):
    assert isinstance(unit, Unit)
    for member in MEMBERS:
        assert hasattr(unit, member), member
    assert isinstance(unit.name, str) and unit.name
    assert isinstance(unit.realtime, bool)
    assert isinstance(unit.errors, tuple)
    assert all(issubclass(e, BaseException) for e in unit.errors)
    for method in ("execute", "execute_chain", "wait_until", "fail", "stats", "close"):
        assert callable(getattr(unit, method)), method


def test_the_protocol_declares_what_the_runner_uses():
    declared = (
        set(Unit.__protocol_attrs__)
        if hasattr(Unit, "__protocol_attrs__")
        else {m for m in MEMBERS if m in Unit.__annotations__ or hasattr(Unit, m)}
    )
    assert declared >= set(MEMBERS)


def test_a_unit_missing_a_member_is_not_a_unit():
    class Partial(StepByStep):
        name = "partial"
        errors = ()
        valves_closed = True
        valves_open = ()

        def execute(self, cycle, on_ms):
            raise AssertionError

        def close(self):
            pass  # no fail(): not a Unit

    assert not isinstance(Partial(), Unit)


def test_the_runner_does_not_probe_its_unit():
    """No getattr/hasattr on a unit anywhere in the runner: a missing member is an error at the
    point of use, not a silently skipped step."""
    tree = ast.parse(inspect.getsource(runner))
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "hasattr")
            and node.args
            and isinstance(node.args[0], ast.Name)
        ):
            assert node.args[0].id != "unit", ast.unparse(node)


class _Recording(StepByStep):
    """An ideal unit that records which protocol members the loop used."""

    name = "recording"
    errors = ()

    def __init__(self, n: int, period_ms: int):
        self.ideal = IdealUnit(n, period_ms)
        self.calls: list[str] = []
        self.valves_closed = None
        self.valves_open = None

    def execute(self, cycle, on_ms):
        self.calls.append("execute")
        return self.ideal.execute(cycle, on_ms)

    def execute_chain(self, cycle, on_ms, next_cycle):
        self.calls.append("execute_chain")
        super().execute_chain(cycle, on_ms, next_cycle)

    def fail(self, index, code):
        self.calls.append(f"fail {index} {code}")
        self.ideal.fail(index, code)

    def stats(self):
        self.calls.append("stats")
        return {"frames": len(self.calls)}

    def close(self):
        self.calls.append("close")
        self.valves_closed = True
        self.valves_open = [5]


@pytest.fixture(scope="module")
def progress():
    stack = load_stack("progress")
    model = build_stack_model(stack)
    return model, plan_stack(stack, Target("delta_v", 0.05), model=model)


@pytest.mark.slow  # plans and flies a burn (compiles the fused loop)
def test_the_runner_calls_the_protocol(progress):
    model, plan = progress
    unit = _Recording(len(model.thruster_names), int(round(model.control_period_s * 1000)))
    name = model.thruster_names[0]
    result = run_burn(model, plan, unit=unit, failures=[runner.Failure(name, 1.0)])
    s = result.summary
    assert unit.calls[0] == "execute_chain"  # lockstep: the unit runs the chain
    assert "fail 0 1" in unit.calls  # the injected failure went to the unit
    assert unit.calls.count("execute") == s["cycles"]
    assert unit.calls[-2:] == ["close", "stats"]
    assert s["unit"] == "recording"
    assert s["link"] == {"frames": len(unit.calls)}  # stats() counted itself
    assert s["valves_closed"] is True and s["valves_open"] == [5]
    assert any(e["event"] == "valves_open" for e in result.events)


@pytest.mark.slow  # flies a burn
def test_the_in_process_units_have_no_link_statistics(progress):
    model, plan = progress
    s = run_burn(model, plan, unit=IdealUnit(len(model.thruster_names), 500)).summary
    assert "link" not in s
    assert s["unit"] == "sim" and s["valves_closed"] is True and s["valves_open"] == []


def test_step_by_step_chain_stops_when_told():
    class Counting(StepByStep):
        def execute(self, cycle, on_ms):
            return UnitReport(on_ms + cycle, np.zeros(1, np.int64))

    seen = []

    def next_cycle(report):
        seen.append(int(report.executed_ms[0]))
        return None if len(seen) == 4 else np.zeros(1, np.uint16)

    Counting().execute_chain(10, np.zeros(1, np.uint16), next_cycle)
    assert seen == [10, 11, 12, 13]
