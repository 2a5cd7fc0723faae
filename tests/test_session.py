"""The host session (firmware_bridge/session.py) against the unit core, in memory, on a fake
clock (tests/memlink.py): deterministic, no pty, no sleeps, no wall clock. Requirements: docs/
protocol.md section 7 (host behaviour), issue 13 (give-up rule, foreign traffic, lockout)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from memlink import LATENCY_NS, UNIT_CLOCK_OFFSET_US, Bench
from thruster_hil.firmware_bridge import codec
from thruster_hil.firmware_bridge.dictionary import (
    DICT_HASH,
    FLAG_ACK_REQ,
    FLAG_RETRANSMIT,
    LIMITS,
    MODE,
    PROTO_VERSION,
)
from thruster_hil.firmware_bridge.linkrules import (
    LIVE_WAIT_WATCHDOGS,
    MAX_RETRIES,
    REPORT_DUPLICATE,
    RTO_G_S,
    RTO_K,
    LinkError,
    rtt_estimate,
)
from thruster_hil.firmware_bridge.session import PENDING
from thruster_hil.firmware_bridge.unit import ARMED, SAFE

from thruster_hil.core.errors import UserError

WD_S = LIMITS["watchdog_ms_default"] / 1000


def armed_bench(n_channels: int = 24, mode: str = "lockstep", **kw) -> Bench:
    b = Bench(n_channels, **kw)
    b.connect(mode)
    b.arm(100)
    return b


def drop_first(name: str, n: int = 1):
    """A hook that drops the first ``n`` frames called ``name``."""
    left = [n]

    def hook(msg):
        if msg.name == name and left[0] > 0:
            left[0] -= 1
            return 0
        return 1

    return hook


# ---- connect ---------------------------------------------------------------------------------


def test_connect_resyncs_sends_hello_with_hash_and_nonce_and_measures_rtt_and_offset():
    b = Bench()
    info = b.connect(period_ms=200)
    assert b.writes[0].startswith(b"\x00")  # the lone zero before HELLO
    (hello,) = b.frames("HELLO")
    assert (hello["dict_hash"], hello["proto_ver"]) == (DICT_HASH, PROTO_VERSION)
    assert hello["mode"] == MODE["LOCKSTEP"] and hello["period_ms"] == 200
    assert hello["host_nonce"] == 0xC0FFEE
    assert info.session == b.core.session == b.s.session
    assert (info.n_channels, info.watchdog_ms) == (24, LIMITS["watchdog_ms_default"])
    assert len(b.frames("PING")) == 4
    st_ = b.s.stats()
    # The fake wire is symmetric: the RTT is twice the latency, the offset exact.
    assert st_["rtt_ms_p50"] == pytest.approx(2 * LATENCY_NS / 1e6)
    assert b.s.clock_offset_us == pytest.approx(UNIT_CLOCK_OFFSET_US)
    assert b.s.retry_timeout_s == pytest.approx(0.020)  # max(20 ms, 3 x RTT)
    assert not b.s.reset_detected and st_["resets_detected"] == 0


def test_connect_without_a_boot_goes_ahead_after_the_boot_timeout():
    b = Bench(boot=False)
    b.core.boot(b.unit_us())  # the unit is up; its BOOT was never heard (no auto-reset)
    t0 = b.now_ns
    b.connect(boot_timeout_s=0.5)
    hello_at = [m for m in b.sent if m.name == "HELLO"]
    assert hello_at and b.s.session is not None
    assert b.now_ns - t0 >= 500_000_000


def test_a_unit_with_another_dictionary_is_refused_with_both_hashes_and_never_armed():
    b = Bench(dict_hash=0xDEADBEEF)
    with pytest.raises(UserError, match="DEADBEEF") as exc:
        b.connect()
    assert f"{DICT_HASH:08X}" in str(exc.value) and "\n" not in str(exc.value)
    assert not b.frames("ARM_REQUEST") and b.core.state != ARMED


def test_bad_mode_or_period_is_a_user_error_before_anything_is_sent():
    b = Bench()
    with pytest.raises(UserError, match="mode"):
        b.s.connect("warp", 100, 1, b.now_ns)
    with pytest.raises(UserError, match="period_ms"):
        b.s.connect("lockstep", 0, 1, b.now_ns)
    assert not b.s.has_output()


def test_a_dropped_hello_is_resent_with_the_same_seq_and_retransmit():
    b = Bench()
    b.to_unit = drop_first("HELLO")
    b.connect()
    h1, h2 = b.frames("HELLO")
    assert h1.seq == h2.seq and h2.flags & FLAG_RETRANSMIT and not h1.flags & FLAG_RETRANSMIT
    assert b.s.stats()["retries"] == 1


# ---- arm -------------------------------------------------------------------------------------


def test_arm_runs_the_challenge_confirms_the_nonce_and_starts_the_watchdog():
    b = armed_bench()
    (conf,) = b.frames("ARM_CONFIRM")
    assert conf.flags & FLAG_ACK_REQ and conf["next_step"] == 1 and conf["max_on_ticks"] == 100
    assert b.core.state == ARMED and b.s.armed
    assert b.sent[-1].name == "HEARTBEAT"  # the watchdog's clock starts from a fresh one


def test_an_arm_confirm_whose_ack_was_lost_still_arms():
    b = Bench()
    b.connect()
    b.to_host = drop_first("ACK")  # the ACK ACCEPTED of the first ARM_CONFIRM
    b.arm()
    assert len(b.frames("ARM_CONFIRM")) == 2 and b.s.armed and b.core.state == ARMED


def test_an_arm_confirm_refused_with_bad_nonce_is_armed_again():
    """BAD_NONCE is the line's doing (a second challenge voided the first nonce): the host runs
    the whole exchange again, at most ARM_TRIES times."""
    b = Bench()
    b.connect()
    spoilt = [True]

    def wrong_nonce(msg):
        if msg.name == "ARM_CONFIRM" and spoilt[0]:
            spoilt[0] = False
            f = dict(msg.fields, nonce=msg["nonce"] ^ 1)
            return codec.encode("ARM_CONFIRM", msg.seq, msg.flags, **f)
        return 1

    b.to_unit = wrong_nonce
    b.arm()
    assert len(b.frames("ARM_REQUEST")) == 2 and b.core.state == ARMED and b.s.armed


def test_arm_next_step_follows_the_steps_fired_in_the_session():
    b = armed_bench()
    b.fire(7, [10] * 3)
    b.run(b.s.command("DISARM", dict(session=b.s.session), b.now_ns))
    b.arm()
    assert b.frames("ARM_CONFIRM")[-1]["next_step"] == 8


# ---- fire ------------------------------------------------------------------------------------


def test_lockstep_fire_of_18_thrusters_goes_in_two_banks_in_one_write_and_reports_both():
    b = armed_bench()
    on = list(range(10, 28))  # (at or above the unit's minimum on-time: none dropped)
    res = b.fire(1, on)
    fires = b.frames("FIRE")
    assert [f["bank"] for f in fires] == [0, 1] and fires[1]["mask"] == 0b11
    assert any(w.count(b"\x00") == 2 and len(w) > 40 for w in b.writes)  # one write
    assert res.step == 1 and res.executed_ms == tuple(on) and res.complete
    assert res.rtt_ms == pytest.approx(2 * LATENCY_NS / 1e6)
    assert len(b.executed(1)) == 2


def test_fire_is_refused_locally_before_arm():
    b = Bench()
    b.connect()
    with pytest.raises(LinkError, match="not armed"):
        b.s.fire(1, [1], b.now_ns)
    assert not b.frames("FIRE")


def test_a_dropped_report_is_resent_after_the_retry_timeout_and_executed_once():
    b = armed_bench()
    b.to_host = drop_first("VALVE_REPORT")
    t0, timeout_s = b.now_ns, b.s.retry_timeout_s
    res = b.fire(1, [5] * 18)
    f = b.frames("FIRE")
    assert len(f) == 3  # two banks, then bank 0 again
    assert f[2].seq == f[0].seq and f[2].flags & FLAG_RETRANSMIT and f[2]["step"] == 1
    assert b.now_ns - t0 >= timeout_s * 1e9  # resent only after the timeout
    assert res.flags & REPORT_DUPLICATE  # the cached report, re-sent
    assert len(b.executed(1)) == 2 and b.s.stats()["retries"] == 1


def test_fire_round_trips_longer_than_the_ping_timeout_are_learnt_not_resent():
    """At a real line rate a FIRE and its two reports take 16-20 ms, several PINGs: the host
    learns the FIRE exchange's own round trip (RFC 6298) instead of resending every FIRE whose
    reports are on their way (a timeout from the PINGs alone was 20 ms)."""
    b = armed_bench()
    assert b.s.retry_timeout_s == pytest.approx(0.020)
    b.host_delay_ns = lambda m: 30_000_000 if m.name == "VALVE_REPORT" else 0
    for step in range(1, 31):
        res = b.fire(step, [5] * 18)
        assert res.executed_ms == (5,) * 18
    # One resend at most, the first FIRE's, before anything was learnt; then none.
    assert b.s.stats()["retries"] <= 2  # (its two banks)
    assert all(len(b.executed(k)) == 2 for k in range(1, 31))
    assert 0.030 < b.s.retry_timeout_s < 0.040  # SRTT + max(G, 4 RTTVAR): 30.2 ms + 1 ms


def test_a_timeout_backs_off_until_a_clean_exchange_then_the_estimate_returns():
    b = armed_bench()
    base = b.s.retry_timeout_s
    b.to_host = drop_first("VALVE_REPORT")
    b.fire(1, [5] * 18)  # answered only after a resend: no sample (Karn)
    assert b.s.retry_timeout_s == pytest.approx(2 * base)
    b.fire(2, [5] * 18)  # a clean exchange
    assert b.s.retry_timeout_s == pytest.approx(base)


@given(st.lists(st.floats(1e-4, 1.0), min_size=1, max_size=60))
def test_the_rtt_estimate_stays_within_its_samples(samples):
    srtt, var = None, 0.0
    for r in samples:
        srtt, var = rtt_estimate(srtt, var, r)
        assert var >= 0.0
    assert min(samples) * (1 - 1e-12) <= srtt <= max(samples) * (1 + 1e-12)
    if len(set(samples)) == 1:  # a steady round trip is never timed out early
        assert srtt + max(RTO_G_S, RTO_K * var) >= samples[0]


def test_duplicated_and_late_reports_never_answer_another_step():
    b = armed_bench()
    b.to_host = lambda m: 2 if m.name == "VALVE_REPORT" else 1
    for step in range(1, 6):
        res = b.fire(step, [10 + step] * 3)
        assert res.step == step and res.executed_ms == (10 + step,) * 3
    assert all(len(b.executed(k)) == 1 for k in range(1, 6))


def test_sequence_counts_wrap_at_14_bits_and_replies_still_match():
    b = armed_bench()
    b.s.seq = codec.SEQ_MODULO - 2
    b.to_host = drop_first("VALVE_REPORT", 2)
    for step in range(1, 5):
        assert b.fire(step, [6] * 20).executed_ms == (6,) * 20
    seqs = [m.seq for m in b.frames("FIRE")]
    assert codec.SEQ_MODULO - 1 in seqs and 0 in seqs and max(seqs) < codec.SEQ_MODULO


def test_a_refusing_ack_names_the_result_and_the_low_pressure():
    b = armed_bench()
    b._to_host(b.core.set_tank_kpa(LIMITS["min_feed_kpa"] - 100, b.unit_us()))
    with pytest.raises(LinkError, match="refused: REJECTED_STATE.*tank pressure fell"):
        b.fire(1, [5] * 3)


def test_realtime_fire_waits_for_the_pulses_and_feeds_the_watchdog():
    b = armed_bench(mode="realtime")
    res = b.fire(1, [80] * 3, deadline_ns=b.now_ns + 2_000_000_000)
    assert res.executed_ms == (80,) * 3 and res.complete
    assert res.rtt_ms >= 80  # the report comes when the pulse ends


def test_realtime_missed_reports_count_and_a_long_wait_sends_heartbeats_when_due():
    b = armed_bench(mode="realtime")
    b.to_host = lambda m: 0 if m.name == "VALVE_REPORT" else 1
    hb0 = len(b.frames("HEARTBEAT"))
    res = b.fire(1, [10] * 3, deadline_ns=b.now_ns + 190_000_000)  # (< valid_for: not stale)
    assert res.missing_banks == (0,) and res.executed_ms == (0,) * 3
    assert b.s.stats()["deadline_misses"] == 1
    assert len(b.frames("HEARTBEAT")) - hb0 == 3  # 190 ms, one each quarter of 250 ms
    assert b.core.state == ARMED  # never starved
    for step in (2, 3):
        b.fire(step, [10] * 3, deadline_ns=b.now_ns + 50_000_000)
    with pytest.raises(LinkError, match=r"no VALVE_REPORT for 4 REALTIME cycles .*steps 1\.\.4"):
        b.fire(4, [10] * 3, deadline_ns=b.now_ns + 50_000_000)


@pytest.mark.parametrize("early_ns, used", [(1, True), (0, False)])
def test_a_realtime_report_is_judged_by_when_it_was_read_not_by_when_the_host_looked(
    early_ns, used
):
    """A report read at its FIRE's deadline or after missed it, even when the same wake-up
    read it (a host that was slow to poll): the rule `replay` applies to the capture's stamps.
    One read a nanosecond before the deadline is in time."""
    b = armed_bench(n_channels=20, mode="realtime")

    def delay(m):
        if m.name != "VALVE_REPORT" or m["bank"] != 1:
            return 0
        return b.s.fire_op.report_deadline_ns - early_ns - b.now_ns - LATENCY_NS

    b.host_delay_ns = delay
    res = b.fire(1, [10] * 20)
    assert res.executed_ms[16:] == ((10,) * 4 if used else (0,) * 4)
    assert res.missing_banks == (() if used else (1,))
    assert b.s.stats()["late_reports"] == (0 if used else 1)
    # Counted once: the report already read is not filed as a second late one.
    b.host_delay_ns = None
    assert b.fire(2, [10] * 20).executed_ms == (10,) * 20
    assert b.s.stats()["late_reports"] == (0 if used else 1)


def test_heartbeat_is_due_a_quarter_of_the_watchdog_after_the_last_fire_or_heartbeat():
    b = armed_bench()
    b.fire(1, [1] * 3)
    last = b.s.last_feed_ns
    assert b.s.heartbeat_due_ns() == last + b.s.info.watchdog_ms * 250_000


# ---- stop, reset, foreign traffic ------------------------------------------------------------


def test_stop_all_goes_twice_with_one_seq_and_is_acknowledged():
    b = armed_bench()
    seq = b.s.stop_all(b.now_ns)
    b.write(b.s.data_to_send())
    ack = b.run(b.s.wait_for(lambda: b.s.take_ack(seq, "STOP_ALL"), b.now_ns + 10**9))
    s1, s2 = b.frames("STOP_ALL")
    assert s1.seq == s2.seq == seq and s2.flags & FLAG_RETRANSMIT
    assert ack.msg["result"] == 0 and b.core.state == SAFE and not b.s.armed


def test_a_reset_mid_session_fails_the_fire_until_reconnected_and_armed():
    b = armed_bench()
    b._to_host(b.core.reset(b.unit_us()))
    with pytest.raises(LinkError, match="the unit reset"):
        b.fire(1, [1] * 3)
    assert b.s.stats()["resets_detected"] == 1
    kinds = []
    while (n := b.s.next_event()) is not None:
        kinds.append(n.kind)
    assert "reset" in kinds
    b.connect()
    with pytest.raises(LinkError, match="not armed"):
        b.s.fire(2, [1] * 3, b.now_ns)
    b.arm()
    assert b.fire(2, [1] * 3).complete


def test_another_writers_frames_are_counted_and_its_lockout_stops_the_fire_naming_it():
    b = armed_bench()
    wrong = (b.s.session + 1) & 0xFFFFFFFF
    for k in range(LIMITS["session_error_limit"] - 1):
        b.inject(
            codec.encode(
                "FIRE",
                k,
                0,
                session=wrong,
                step=1000 + k,
                valid_for_ms=0,
                bank=0,
                mask=1,
                on_ticks=[50] + [0] * 15,
            )
        )
    assert b.fire(1, [1] * 3).complete  # refusals of another's FIREs are not ours
    b.inject(
        codec.encode(
            "FIRE",
            9,
            0,
            session=wrong,
            step=2000,
            valid_for_ms=0,
            bank=0,
            mask=1,
            on_ticks=[50] + [0] * 15,
        )
    )
    t0 = b.now_ns
    with pytest.raises(LinkError, match="another writer on the line") as exc:
        b.fire(2, [1] * 3)
    assert b.now_ns - t0 < b.s.give_up_s * 1e9  # at once, not after the give-up time
    assert "\n" not in str(exc.value)
    assert b.s.stats()["foreign_refusals"] >= LIMITS["session_error_limit"] - 1
    assert not any(e[1] >= 1000 for e in b.core.executed_log)


# ---- give-up rule on the fake clock ----------------------------------------------------------


def test_a_fire_lost_after_a_stale_report_is_still_resent():
    """The backlog hold (no copy while the unit still answers an older step) holds one resend
    wait, not for ever. The case the loaded campaign met under QEMU: step 1's resent copy is
    answered (a duplicate report) just after step 2's FIRE went out, and that FIRE is lost (a
    UART overrun). The host must hold once, then resend step 2 and fly on, well inside the
    unit's watchdog; before the fix it held every copy, gave up, and the watchdog closed."""
    b = armed_bench()
    b.fire(1, [1] * 3)
    (report1,) = [m for m in b.received if m.name == "VALVE_REPORT" and m["step"] == 1]
    lost = []

    def overrun(msg):  # step 2's first FIRE never reaches the unit
        if msg.name == "FIRE" and msg["step"] == 2 and not lost:
            lost.append(msg)
            return 0
        return 1

    b.to_unit = overrun
    t0 = b.now_ns
    op = b.s.fire(2, [20] * 3, b.now_ns)
    assert b.s.poll(op, b.now_ns) is PENDING
    b.write(b.s.data_to_send())
    stale = codec.encode(
        "VALVE_REPORT", report1.seq, report1.flags | FLAG_RETRANSMIT, **report1.fields
    )
    b._push(b.now_ns + 2 * LATENCY_NS, "host", stale)  # the stale duplicate, after the send
    res = b.run(op)
    assert lost and res.step == 2 and res.executed_ms == (20, 20, 20)
    assert len(b.executed(2)) == 1
    assert (b.now_ns - t0) / 1e9 < WD_S / 2  # resent long before the unit's watchdog
    assert b.core.state == ARMED


def test_a_cut_link_is_given_up_after_the_units_watchdog_time_not_before():
    b = armed_bench()
    b.fire(1, [1] * 3)
    b.unit_down = True
    t0 = b.now_ns
    with pytest.raises(LinkError, match=r"no reply to FIRE step 2 .*is the unit running"):
        b.fire(2, [1] * 3)
    waited_s = (b.now_ns - t0) / 1e9
    assert WD_S <= waited_s < WD_S + 2 * b.s.retry_timeout_s + 0.1
    assert len(b.frames("FIRE")) - 1 > MAX_RETRIES


def test_a_slow_unit_that_keeps_talking_is_waited_for_and_counted():
    b = armed_bench()
    b.fire(1, [1] * 3)
    held = []

    def late(msg):  # every report of step 2 comes only after 2 watchdog times
        if msg.name == "VALVE_REPORT" and msg["step"] == 2 and b.now_ns - t0 < 2 * WD_S * 1e9:
            held.append(msg)
            return 0
        return 1

    b.to_host = late
    t0 = b.now_ns
    b.core.hk_period_ms = 20  # it keeps sending housekeeping: alive
    res = b.fire(2, [1] * 3)
    assert res.complete and held
    assert b.s.stats()["slow_unit_waits"] == 1


def test_a_talking_unit_that_never_answers_is_given_up_after_the_live_bound():
    b = armed_bench()
    b.fire(1, [1] * 3)
    b.core.hk_period_ms = 20
    b.to_host = lambda m: 0 if m.name == "VALVE_REPORT" else 1
    t0 = b.now_ns
    with pytest.raises(LinkError, match="kept sending"):
        b.fire(2, [1] * 3)
    assert (b.now_ns - t0) / 1e9 >= LIVE_WAIT_WATCHDOGS * WD_S


# ---- a property ------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.sampled_from([0, 1, 1, 1, 2]), min_size=1, max_size=60),
    st.lists(st.sampled_from([0, 1, 1, 1, 2]), min_size=1, max_size=60),
)
def test_drops_and_duplicates_never_mismatch_a_reply_nor_execute_a_step_twice(up, down):
    """Whatever frames the line drops or repeats, each result is its own step's, with what the
    unit executed for it, and no (step, bank) is ever executed twice."""
    b = armed_bench(n_channels=20)
    ups, downs = iter(up), iter(down)
    b.to_unit = lambda m: next(ups, 1) if m.name == "FIRE" else 1
    b.to_host = lambda m: next(downs, 1) if m.name in ("VALVE_REPORT", "ACK") else 1
    for step in range(1, 8):
        on = [5 + (step * 7 + i) % 50 for i in range(20)]
        try:
            res = b.fire(step, on)
        except LinkError:
            break  # a burst of drops the retries could not bridge: stopped, not wrong
        assert res.step == step and res.executed_ms == tuple(on)
        executed = b.executed(step)
        assert sorted(e[2] for e in executed) == [0, 1]
    keys = [(e[0], e[1], e[2]) for e in b.core.executed_log]
    assert len(keys) == len(set(keys))


# ---- parameters, faults, statistics ----------------------------------------------------------


def test_set_param_heartbeat_with_ack_and_disarm_are_acknowledged_commands():
    b = armed_bench()
    b.run(b.s.command("HEARTBEAT", dict(session=b.s.session, host_step=3), b.now_ns))
    rec = b.run(b.s.command("DISARM", dict(session=b.s.session), b.now_ns))
    assert rec.msg["result"] == 0 and b.core.state == SAFE
    b.run(b.s.set_param("WATCHDOG_MS", 400, b.now_ns))
    assert b.s.info.watchdog_ms == 400 and b.s.give_up_s == pytest.approx(0.4)
    with pytest.raises(UserError, match="WATCHDOG_MS"):
        b.s.set_param("WATCHDOG_MS", 1, b.now_ns)  # out of range: refused before sending
    assert all(m.flags & FLAG_ACK_REQ for m in b.frames("SET_PARAM"))


def test_fault_inject_carries_the_session_and_a_flight_build_refuses_it():
    b = armed_bench()
    seq = b.s.send_fault("FAIL_OFF", 2, b.now_ns)
    b.write(b.s.data_to_send())
    (fi,) = b.frames("FAULT_INJECT")
    assert fi["session"] == b.s.session and fi.seq == seq
    assert b.fire(1, [20] * 3).health[2] != 0  # applied before the next FIRE
    flight = Bench(test_build=False)
    flight.connect()
    flight.arm()
    seq = flight.s.send_fault("FAIL_OFF", 0, flight.now_ns)
    flight.write(flight.s.data_to_send())
    flight.fire(1, [20] * 3)
    assert flight.s.fault_refusal(seq) == "UNSUPPORTED"


def test_stats_count_both_directions_and_carry_the_units_housekeeping():
    b = armed_bench()
    b.fire(1, [20] * 3)
    b.core.hk_period_ms = 50
    b.advance(0.1)  # housekeeping comes on the unit's clock (well within its watchdog time)
    b.run(b.s.ping(b.now_ns, 0.2))
    st_ = b.s.stats()
    assert st_["frames_sent"] == len(b.sent) and st_["frames_received"] == len(b.received)
    assert st_["bytes_sent"] == sum(len(w) for w in b.writes) - 1  # (minus the resync zero)
    assert st_["unit_state"] == ARMED and st_["armed"] and st_["crc_errors"] == 0
