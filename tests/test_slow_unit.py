"""The link's give-up rule (issue 13): a slow unit is not a dead one.

Once the retries are spent and the unit's watchdog time has passed, the host calls the link
lost only if the unit said its watchdog tripped, or has been silent (no valid frame of any kind)
for its watchdog time on its own clock, or has shown life without answering for
LIVE_WAIT_WATCHDOGS watchdog times. The rule is a pure function, tested on made-up clocks; the
session is tested against the unit core in memory on a fake clock (tests/memlink.py).
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from memlink import Bench
from thruster_hil.firmware_bridge.linkrules import (
    LIVE_WAIT_MAX_S,
    LIVE_WAIT_WATCHDOGS,
    MIN_UNIT_CLOCK_RATE,
    LinkError,
    unit_clock_rate,
    unit_lost,
)

WD = 0.25  # the unit's watchdog time [s]
MS = 1_000_000  # ns


# ---- the rule, on made-up clocks ----------------------------------------------------------------


def test_the_units_clock_rate_from_its_time_stamps():
    # Housekeeping every 100 ms of the unit's clock, arriving every 300 ms of ours: a third.
    samples = [(k * 300 * MS, 5_000_000 + k * 100_000) for k in range(5)]
    assert unit_clock_rate(samples) == pytest.approx(1 / 3)
    assert unit_clock_rate(samples[:1]) == 1.0  # one sample: no rate, real time assumed
    assert unit_clock_rate([(0, 0), (50 * MS, 10_000)]) == 1.0  # too short a baseline
    # Bunched arrivals look fast: never taken above real time.
    assert unit_clock_rate([(0, 0), (100 * MS, 400_000)]) == 1.0
    # A stopped clock is bounded below.
    assert unit_clock_rate([(0, 7), (1000 * MS, 7)]) == MIN_UNIT_CLOCK_RATE
    # The 32-bit unit clock wraps.
    assert unit_clock_rate([(0, 0xFFFF_FFFF - 49_999), (200 * MS, 50_000)]) == pytest.approx(0.5)


def test_a_silent_unit_is_lost_after_its_watchdog_time_on_its_own_clock():
    assert unit_lost(0.3, 0.26, 1.0, WD, tripped=False)  # real time: 260 ms silent > 250
    assert not unit_lost(0.3, 0.26, 1 / 3, WD, tripped=False)  # 87 ms of its clock
    assert unit_lost(0.8, 0.76, 1 / 3, WD, tripped=False)  # 253 ms of its clock
    assert not unit_lost(0.3, 0.01, 1.0, WD, tripped=False)  # it just sent something


def test_a_unit_that_tripped_or_outlived_the_bound_is_lost_whatever_it_sends():
    assert unit_lost(0.3, 0.0, 1.0, WD, tripped=True)
    assert unit_lost(LIVE_WAIT_WATCHDOGS * WD, 0.0, 1.0, WD, tripped=False)
    assert not unit_lost(LIVE_WAIT_WATCHDOGS * WD - 0.01, 0.0, 1.0, WD, tripped=False)
    # The bound is on the unit's clock: a unit at a quarter of real time gets four times as
    # long on ours, but never more than LIVE_WAIT_MAX_S.
    assert not unit_lost(LIVE_WAIT_WATCHDOGS * WD * 3.9, 0.0, 0.25, WD, tripped=False)
    assert unit_lost(LIVE_WAIT_WATCHDOGS * WD * 4, 0.0, 0.25, WD, tripped=False)
    assert unit_lost(LIVE_WAIT_MAX_S, 0.0, MIN_UNIT_CLOCK_RATE, WD, tripped=False)


@given(
    waited=st.floats(0, 10),
    silent=st.floats(0, 10),
    rate=st.floats(MIN_UNIT_CLOCK_RATE, 1.0),
    wd=st.floats(0.05, 2.0),
)
def test_the_rule_never_waits_past_the_bound_and_never_gives_up_on_a_talking_unit_early(
    waited, silent, rate, wd
):
    lost = unit_lost(waited, silent, rate, wd, tripped=False)
    if waited >= min(LIVE_WAIT_MAX_S, LIVE_WAIT_WATCHDOGS * wd / rate):
        assert lost
    if silent * rate < wd and waited * rate < LIVE_WAIT_WATCHDOGS * wd and waited < LIVE_WAIT_MAX_S:
        assert not lost
    # Against a real-time unit the rule is never later than "silent for the watchdog time".
    if silent >= wd:
        assert unit_lost(waited, silent, 1.0, wd, tripped=False)


# ---- the session against the unit core, on a fake clock ---------------------------------------


def _armed(slow_rtt_s: float = 0.001) -> Bench:
    b = Bench(n_channels=3)
    b.connect()
    b.arm(500)
    b.s.retry_rtt_s = slow_rtt_s  # a 20 ms retry timeout
    b.core.hk_period_ms = 20  # it talks: housekeeping every 20 ms of its clock
    return b


def test_a_slow_unit_that_keeps_sending_is_waited_for_past_the_old_give_up_time():
    b = _armed()
    give_up_ns = int(b.s.give_up_s * 1e9)
    t0 = b.now_ns
    # Its reports of step 4 come only after twice the old give-up time.
    b.to_host = lambda m: 0 if m.name == "VALVE_REPORT" and b.now_ns - t0 < 2 * give_up_ns else 1
    res = b.fire(4, [10] * 3)
    assert res.executed_ms == (10, 10, 10) and res.complete
    copies = b.frames("FIRE")
    assert len(copies) > 4 and len({c.seq for c in copies}) == 1
    assert len(b.executed(4)) == 1  # however many copies, executed once
    assert b.s.stats()["slow_unit_waits"] == 1


def test_a_unit_that_talks_but_never_answers_is_given_up_at_the_bound():
    b = _armed()
    b.to_host = lambda m: 0 if m.name == "VALVE_REPORT" else 1
    t0 = b.now_ns
    with pytest.raises(
        LinkError,
        match=r"no reply to FIRE step 4 .* tries over .*the unit "
        r"kept sending, its clock at [0-9.]+ x ours, but did not answer",
    ) as exc:
        b.fire(4, [10] * 3)
    assert "\n" not in str(exc.value)
    assert (b.now_ns - t0) / 1e9 >= LIVE_WAIT_WATCHDOGS * b.s.watchdog_s


def test_a_unit_whose_watchdog_tripped_is_given_up_without_waiting_for_the_bound():
    b = _armed()
    b.to_unit = lambda m: 0 if m.name == "FIRE" else 1  # its watchdog starves and trips
    t0 = b.now_ns
    with pytest.raises(
        LinkError, match="no reply to FIRE step 4 .*the unit's link watchdog expired"
    ):
        b.fire(4, [10] * 3)
    assert (b.now_ns - t0) / 1e9 < 2 * b.s.give_up_s


def test_a_host_feeds_the_watchdog_every_quarter_of_its_time():
    """A HEARTBEAT is due once nothing fed the unit's watchdog for a quarter of its time: a
    host that then loses the CPU for half the watchdog time still feeds it in time."""
    b = _armed()
    b.s.heartbeat(7, b.now_ns)
    quarter_ns = b.s.info.watchdog_ms * 250_000
    assert b.s.heartbeat_due_ns() == b.now_ns + quarter_ns


def test_resends_to_a_slow_unit_back_off_to_a_quarter_of_its_watchdog_time():
    """The first MAX_RETRIES resends come a retry timeout apart, then twice as far each time,
    never further than a quarter of the watchdog time (the copies still feed the watchdog)."""
    b = _armed()
    waits = [b.s.resend_wait_s(a) for a in range(8)]
    assert waits[:3] == [0.02] * 3
    assert waits[3] == pytest.approx(0.04)
    assert waits[4:] == [pytest.approx(b.s.info.watchdog_ms / 4000)] * 4
