"""REALTIME pacing: how late each cycle starts against its ideal schedule (the jitter the run's
``link`` object and the live view report), and the report budget that keeps a pulse from
running into the next cycle (benchmarks/realtime_jitter.py measures both at 50 Hz)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from thruster_hil.closedloop.hil import SerialUnit, pacing_stats, report_budget_ms


@settings(deadline=None)  # a busy machine must not fail it
@given(st.lists(st.floats(0.0, 5.0), max_size=300))
def test_pacing_stats_are_nearest_rank_of_every_cycle_start(lags_s):
    """The REALTIME jitter figures: nearest-rank p50 / p99 of how late each cycle started and
    the worst, in ms; None before any cycle."""
    out = pacing_stats(lags_s)
    assert out["cycle_starts"] == len(lags_s)
    if not lags_s:
        assert out["cycle_start_jitter_ms_p50"] is None and out["cycle_start_jitter_ms_max"] is None
        return
    ms = sorted(1e3 * x for x in lags_s)
    n = len(ms)
    assert out["cycle_start_jitter_ms_p50"] == ms[max(0, -(-50 * n // 100) - 1)]
    assert out["cycle_start_jitter_ms_p99"] == ms[max(0, -(-99 * n // 100) - 1)]
    assert out["cycle_start_jitter_ms_max"] == ms[-1]


def test_a_realtime_pulse_ends_the_report_budget_before_the_next_cycle():
    """REALTIME: the unit reports a FIRE when its pulses end and the next cycle needs that
    report, so SerialUnit shortens every pulse to end report_budget_ms before the next cycle is
    due, counted from when this cycle really started. A pulse as long as the period made each
    cycle start ~1 ms later than the last, without bound (37 ms late after 33 cycles at 2 Hz)."""
    import numpy as np

    assert report_budget_ms(None) == 2 and report_budget_ms(0.3) == 2
    assert report_budget_ms(4.2) == 6

    class FakeLink:
        fired: list

        def fire(self, step, on):
            self.fired.append(on.copy())
            raise _Stop

    class _Stop(Exception):
        pass

    link = FakeLink()
    link.fired = []
    unit = SerialUnit(link, 3, 500, "realtime", "fake")
    assert unit.report_budget_ms == 2  # until open_unit sets it from the link's RTT
    for lag_s, want in ((0.0, [498, 100, 0]), (0.0032, [494, 100, 0]), (0.6, [0, 0, 0])):
        unit.cycle_started(0, lag_s)
        with pytest.raises(_Stop):
            unit.execute(0, np.array([500, 100, 0], np.uint16))
        assert link.fired[-1].tolist() == want
    assert unit.capped_cycles == 3
    unit.cycle_started(1, 0.0)
    with pytest.raises(_Stop):
        unit.execute(1, np.array([300, 0, 0], np.uint16))  # within the budget: as commanded
    assert link.fired[-1].tolist() == [300, 0, 0] and unit.capped_cycles == 3
    lockstep = SerialUnit(link, 3, 500, "lockstep", "fake")
    with pytest.raises(_Stop):
        lockstep.execute(0, np.array([500, 0, 0], np.uint16))
    assert link.fired[-1].tolist() == [500, 0, 0]
