"""The firmware's timing budget holds at the maximum FIRE rate (issue 17 item 3): tools/
timing_budget.py flies it under simavr and every limit in its table keeps a positive margin, in
CPU cycles of simulated time. docs/bench.md "Timing budget (simavr, cycles)" holds the table.

Slow tier; without simavr the test skips naming what to install (fails under CI=true).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from test_simavr_pins import _need

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

import timing_budget  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def measured(tmp_path_factory) -> dict:
    _need()
    return timing_budget.fly_max_rate(steps=60, out_dir=tmp_path_factory.mktemp("budget"))


def test_every_limit_keeps_a_positive_margin(measured):
    rows = timing_budget.budget_rows(measured["stats"], measured["hk"])
    print("\n" + timing_budget.render(rows, measured["stats"], measured["steps"]))
    broken = [r for r in rows if r.limit and r.margin < 0]
    assert not broken, broken
    by = {r.item: r for r in rows if r.limit}
    assert 0 < by["tick ISR latency (TIMER1_COMPA)"].measured < timing_budget.TICK_CYCLES
    assert by["UART RX overruns (harness)"].measured == 0
    assert by["UART errors (unit HK uart_overruns)"].measured == 0
    # the main loop never waits for the wire at this rate (TX ring 2 KB), and interrupts are
    # never off for a frame of the line
    assert by["main loop waits for the wire (WDRs in uart_send)"].measured == 0
    assert (
        0
        < by["interrupts off, longest stretch"].measured
        < measured["stats"]["uart_rx"]["frame_cycles"]
    )


def test_the_main_loop_pass_is_cpu_work_not_a_wait(measured):
    """Issue 17: the worst pass at the maximum rate (32 channels) was 86,000-304,000 cycles,
    waiting for the wire in uart_send. With no wait left it is the CPU's work of one pass: a
    FIRE, the report of the pulse it cut and the interrupts meanwhile (under 64,000 cycles,
    4 ticks; the 16,000-cycle target is in the table, not met: docs/bench.md section 9)."""
    pass_max = measured["stats"]["main_loop"]["pass_max_cycles"]
    print(f"main loop worst pass: {pass_max} cycles")
    assert pass_max < 4 * timing_budget.TICK_CYCLES


def test_the_scenario_really_ran_at_the_maximum_rate(measured):
    """Both banks' FIREs of every step reached the unit, back to back: the bytes received are
    the frames sent (57 bytes a FIRE), and the simulated time is the line's time for them."""
    rx = measured["stats"]["uart_rx"]
    fires = 2 * measured["steps"]
    assert rx["bytes"] >= 57 * fires
    line_s = 57 * fires * rx["frame_cycles"] / timing_budget.F_CPU_HZ
    assert measured["stats"]["sim_s"] >= line_s
    assert measured["stats"]["interrupts"]["TIMER1_COMPA"]["count"] >= 1000 * line_s
