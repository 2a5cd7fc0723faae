"""A stop signal never cuts the end of a control cycle in two (thruster_hil.core.sections).

The loaded fault campaign (CI, row E21: SIGHUP at cycle 248) found a run whose summary said 249
cycles while its telemetry held 250 rows: the signal landed after the cycle's row was written and
before the cycle was counted. Here the per-cycle sink sends the signal to its own process at a
chosen cycle and a chosen point of its work, so the handler runs exactly there (a signal sent to
oneself is handled at the next bytecode), with no timing involved.
"""

from __future__ import annotations

import os
import signal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from thruster_hil.closedloop.runner import run_burn
from thruster_hil.config import build_stack_model, load_stack
from thruster_hil.core import sections
from thruster_hil.plan import Target, plan_burn
from thruster_hil.stopsignals import HostSignal, StopSignals

# Slow tier (`-m "not slow"` leaves it out): flies burns cycle by cycle.
pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _sighup_as_from_a_terminal():
    """SIGHUP handled by default, as in a process started from a terminal, whatever started
    this test session: under nohup it starts ignored, and StopSignals rightly keeps it so
    (tests/test_hostexit.py holds that part of its contract), which would leave nothing here to
    raise."""
    previous = signal.signal(signal.SIGHUP, signal.SIG_DFL)
    yield
    signal.signal(signal.SIGHUP, previous)


def test_a_signal_in_a_section_is_raised_when_the_outermost_section_ends():
    with StopSignals():
        sections.enter()
        sections.enter()
        os.kill(os.getpid(), signal.SIGTERM)
        sections.leave()  # still inside the outer section: nothing raised
        with pytest.raises(HostSignal) as info:
            sections.leave()
    assert info.value.signal_name == "SIGTERM"
    assert not sections.deferring()
    sections.enter()
    sections.leave()  # the deferred signal was raised once and is gone


def test_outside_a_section_a_signal_raises_where_it_lands():
    with StopSignals(), pytest.raises(HostSignal):
        os.kill(os.getpid(), signal.SIGHUP)
        for _ in range(1000):
            pass
        pytest.fail("the signal did not raise")


@pytest.fixture(scope="module")
def dragon():
    model = build_stack_model(load_stack("dragon-boost-kit"))
    return model, plan_burn("dragon-boost-kit", Target("delta_v", 0.2))


@settings(max_examples=15, deadline=None)
@given(at_cycle=st.integers(0, 30), at_point=st.sampled_from(["start", "between", "end"]))
def test_a_signal_anywhere_in_a_cycle_leaves_as_many_rows_as_counted_cycles(
    dragon, at_cycle, at_point
):
    """The sink writes each cycle as two parts (as the recorder writes telemetry and the live
    stream); the signal lands before, between or after them. Every run stops "interrupted by
    SIGHUP" with its summary's cycles equal to the rows kept, and every row whole."""
    model, plan = dragon
    rows: list[list[int]] = []

    def on_cycle(k: int, info: dict) -> None:
        if k == at_cycle and at_point == "start":
            os.kill(os.getpid(), signal.SIGHUP)
        rows.append([k])
        if k == at_cycle and at_point == "between":
            os.kill(os.getpid(), signal.SIGHUP)
        rows[-1].append(int(info["status"]))
        if k == at_cycle and at_point == "end":
            os.kill(os.getpid(), signal.SIGHUP)

    with StopSignals():
        result = run_burn(model, plan, on_cycle=on_cycle)
    s = result.summary
    assert s["abort_reason"] == "interrupted by SIGHUP"
    assert s["cycles"] == len(rows) == at_cycle + 1
    assert all(len(r) == 2 for r in rows)
    assert [r[0] for r in rows] == list(range(len(rows)))
