"""The link's give-up rule (issue 13): a slow unit is not a dead one.

Once the retries are spent and the unit's watchdog time has passed, the host calls the link
lost only if the unit said its watchdog tripped, or has been silent (no valid frame of any kind)
for its watchdog time on its own clock, or has shown life without answering for
LIVE_WAIT_WATCHDOGS watchdog times. The rule is a pure function, tested on made-up clocks; the
link is tested against the fake unit of tests/test_link.py.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import test_link
from hypothesis import given
from hypothesis import strategies as st
from test_link import FakeUnit, connected
from thruster_hil.firmware_bridge.dictionary import EVENT
from thruster_hil.firmware_bridge.link import (
    LIVE_WAIT_MAX_S,
    LIVE_WAIT_WATCHDOGS,
    MIN_UNIT_CLOCK_RATE,
    LinkError,
    unit_clock_rate,
    unit_lost,
)

unit, link = test_link.unit, test_link.link  # the fake unit and a link to it (fixtures)
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
    assert unit_clock_rate([(0, 0xFFFF_FFFF - 49_999), (200 * MS, 50_000)]) == \
        pytest.approx(0.5)


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


@given(waited=st.floats(0, 10), silent=st.floats(0, 10),
       rate=st.floats(MIN_UNIT_CLOCK_RATE, 1.0), wd=st.floats(0.05, 2.0))
def test_the_rule_never_waits_past_the_bound_and_never_gives_up_on_a_talking_unit_early(
        waited, silent, rate, wd):
    lost = unit_lost(waited, silent, rate, wd, tripped=False)
    if waited >= min(LIVE_WAIT_MAX_S, LIVE_WAIT_WATCHDOGS * wd / rate):
        assert lost
    if silent * rate < wd and waited * rate < LIVE_WAIT_WATCHDOGS * wd \
            and waited < LIVE_WAIT_MAX_S:
        assert not lost
    # Against a real-time unit the rule is never later than "silent for the watchdog time".
    if silent >= wd:
        assert unit_lost(waited, silent, 1.0, wd, tripped=False)


# ---- the link against the fake unit -----------------------------------------------------------

def _hk(unit: FakeUnit, pu_time_us: int, state: int = 3) -> None:
    unit.send("HK", pu_time_us=pu_time_us & 0xFFFFFFFF, state=state, watchdog_remaining_ms=200,
              rx_frames=0, crc_errors=0, cobs_errors=0, length_errors=0, seq_gaps=0,
              uart_overruns=0, session_errors=0, last_step=0, open_mask=0, failed_mask=0,
              stuck_mask=0, tank_kPa=1800)


def _slow_fires(unit: FakeUnit, answer_after, on_copy=None) -> list:
    """Make the fake slow at FIRE: each copy it receives gets a housekeeping frame back (or
    ``on_copy(copies)``), and it answers only when ``answer_after(copies)`` says so."""
    orig = unit._handle
    copies: list = []

    def handle(m):
        if m.name != "FIRE":
            return orig(m)
        copies.append(m)
        if on_copy is not None:
            on_copy(copies)
        else:
            _hk(unit, unit.now_us())
        if answer_after(copies):
            orig(m)

    unit._handle = handle
    return copies


def test_a_slow_unit_that_keeps_sending_is_waited_for_past_the_old_give_up_time(link, unit):
    connected(link, unit).arm(500)
    link._retry_rtt_s = 0.001  # noqa: SLF001 - a 20 ms retry timeout
    give_up_ns = int(link.give_up_s * 1e9)

    stamps: list[int] = []

    def answer(copies):  # only once the FIRE has waited twice the old give-up time
        import time

        stamps.append(time.monotonic_ns())
        return stamps[-1] - stamps[0] >= 2 * give_up_ns

    copies = _slow_fires(unit, answer)
    res = link.fire(4, [10] * 3)
    assert res.executed_ms == (10, 10, 10) and res.complete
    assert len(copies) > 4 and len({c.seq for c in copies}) == 1
    assert link.stats()["slow_unit_waits"] == 1


def test_a_unit_that_talks_but_never_answers_is_given_up_at_the_bound(link, unit):
    connected(link, unit).arm(500)
    link._retry_rtt_s = 0.001  # noqa: SLF001 - a 20 ms retry timeout
    link.info = replace(link.info, watchdog_ms=50)  # bound: 8 x 50 ms
    _slow_fires(unit, lambda copies: False)
    with pytest.raises(LinkError, match=r"no reply to FIRE step 4 .* tries over .*the unit "
                       r"kept sending, its clock at [0-9.]+ x ours, but did not answer") as exc:
        link.fire(4, [10] * 3)
    assert "\n" not in str(exc.value)


def test_a_unit_whose_watchdog_tripped_is_given_up_without_waiting_for_the_bound(link, unit):
    connected(link, unit).arm(500)
    link._retry_rtt_s = 0.001  # noqa: SLF001 - a 20 ms retry timeout

    def tripped(copies):
        if len(copies) == 1:
            unit.send("EVENT", pu_time_us=unit.now_us(), event=EVENT["WATCHDOG_TRIP"],
                      state=1, arg0=250, arg1=0, arg2=0)
        _hk(unit, unit.now_us(), state=1)

    _slow_fires(unit, lambda copies: False, on_copy=tripped)
    with pytest.raises(LinkError, match="no reply to FIRE step 4 .*the unit's link watchdog "
                       "expired: 250 ms"):
        link.fire(4, [10] * 3)


def test_a_slow_unit_is_waited_for_inside_a_lockstep_chain_too(link, unit):
    connected(link, unit).arm(500)
    link._retry_rtt_s = 0.001  # noqa: SLF001 - a 20 ms retry timeout
    give_up_ns = int(link.give_up_s * 1e9)
    stamps: list[int] = []

    def answer(copies):
        import time

        if copies[-1]["step"] != 2:
            return True
        stamps.append(time.monotonic_ns())
        return stamps[-1] - stamps[0] >= 2 * give_up_ns

    _slow_fires(unit, answer)
    steps = []
    link.fire_chain(1, [10] * 3, lambda res: (steps.append(res.step), None if res.step == 3
                                              else (res.step + 1, [10] * 3))[1])
    assert steps == [1, 2, 3]
    assert link.stats()["slow_unit_waits"] == 1


def test_a_realtime_host_feeds_the_watchdog_every_quarter_of_its_time(link, unit):
    """A HEARTBEAT goes out once nothing fed the unit's watchdog for a quarter of its time: a
    host that then loses the CPU for half the watchdog time still feeds it in time."""
    connected(link, unit).arm(100)
    link.heartbeat(7)
    quarter_ns = link.info.watchdog_ms * 250_000
    link._last_feed_ns -= quarter_ns - 5_000_000  # noqa: SLF001 - 5 ms short of a quarter
    assert not link.maybe_heartbeat(8)
    link._last_feed_ns -= 10_000_000  # noqa: SLF001 - 5 ms past it
    assert link.maybe_heartbeat(8)


def test_resends_to_a_slow_unit_back_off_to_a_quarter_of_its_watchdog_time(link, unit):
    """The first MAX_RETRIES resends come a retry timeout apart, then twice as far each time,
    never further than a quarter of the watchdog time (the copies still feed the watchdog)."""
    connected(link, unit).arm(500)
    link._retry_rtt_s = 0.001  # noqa: SLF001 - a 20 ms retry timeout
    waits = [link._resend_wait_s(a) for a in range(8)]  # noqa: SLF001
    assert waits[:3] == [0.02] * 3
    assert waits[3] == pytest.approx(0.04)
    assert waits[4:] == [pytest.approx(link.info.watchdog_ms / 4000)] * 4
