"""firmware_bridge/pinevidence.py on made-up traces: each judge passes on a unit that behaves
and fails, naming the pin, on one that does not (issue 17 item 2). The real traces come from
simavr in tests/test_simavr_pins.py."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_vcd import write_vcd
from thruster_hil.firmware_bridge import codec
from thruster_hil.firmware_bridge.dictionary import DICT_HASH, ENUMS, EVENT
from thruster_hil.firmware_bridge.pinevidence import (
    TICK_CYCLES,
    WireRecord,
    align,
    boot_segments,
    event_cycle,
    frame_arrivals,
    frames_received,
    judge_closed_after,
    judge_only_accepted_fires,
    judge_pulse_widths,
    judge_reset_low,
    last_valid_frame,
    parse_uart_log,
    reset_cycles,
    uart_log_chunks,
    valve_pulses,
)
from thruster_hil.firmware_bridge.vcd import parse_vcd

PS_PER_CYCLE = 62_500
PASS = 400  # cycles from a FIRE's acceptance to its pins (one main-loop pass, roughly)


class FakeBench:
    """A well-behaved unit, written down by hand: pulses rise a pass after the FIRE and fall
    on the first tick at or after their end; every FIRE gets its VALVE_REPORT."""

    def __init__(self, origin: int = 5_000, boot_seen: bool = True):
        self.origin = origin  # trace cycle of unit time 0
        self.chunks: list[tuple[str, int, bytes]] = []
        self.levels: dict[str, list[tuple[int, int]]] = {f"valve{c}": [(0, 0)] for c in range(32)}
        self.levels["reset"] = [(0, 0)]
        self.seq = 0
        self.t_ns = 0
        if boot_seen:
            self.rx("BOOT", fw_ver=1, proto_ver=1, boot_count=1, reset_cause=1, n_channels=32,
                    dict_hash=DICT_HASH)  # fmt: skip
        self.tx("HELLO", proto_ver=1, host_nonce=1, dict_hash=DICT_HASH, mode=1, period_ms=100)

    def tx(self, name: str, **fields) -> None:
        self.seq += 1
        self.t_ns += 1000
        self.chunks.append(("tx", self.t_ns, codec.encode(name, self.seq, 0, **fields)))

    def rx(self, name: str, **fields) -> None:
        self.seq += 1
        self.t_ns += 1000
        self.chunks.append(("rx", self.t_ns, codec.encode(name, self.seq, 0, **fields)))

    def cyc(self, t_us: int) -> int:
        return self.origin + 16 * t_us

    def pin(self, ch: int, rise: int, fall: int | None) -> None:
        self.levels[f"valve{ch}"].append((rise * PS_PER_CYCLE, 1))
        if fall is not None:
            self.levels[f"valve{ch}"].append((fall * PS_PER_CYCLE, 0))

    def fire(
        self, step: int, t_us: int, on: dict[int, int], bank: int = 0, cut_at_us: int | None = None
    ) -> None:
        ticks = [on.get(c, 0) for c in range(16)]
        self.tx("FIRE", session=1, step=step, valid_for_ms=0, bank=bank,
                mask=sum(1 << c for c in on), on_ticks=ticks)  # fmt: skip
        executed = list(ticks)
        for c, n in on.items():
            end_us = t_us + 1000 * n
            if cut_at_us is not None and cut_at_us < end_us:
                end_us = cut_at_us
                executed[c] = (cut_at_us - t_us) // 1000
                fall = self.cyc(cut_at_us) + PASS
            else:
                fall = self.origin + TICK_CYCLES * -(-end_us // 1000) + 200  # next tick edge
            self.pin(16 * bank + c, self.cyc(t_us) + PASS, fall)
        self.rx("VALVE_REPORT", step=step, t_start_pu_us=t_us, bank=bank,
                flags=2 if cut_at_us else 0, executed_ticks=executed, failed_mask=0,
                stuck_mask=0)  # fmt: skip

    def reset(self, at: int, origin: int) -> None:
        self.levels["reset"] += [(at * PS_PER_CYCLE, 1), ((at + 1) * PS_PER_CYCLE, 0)]
        self.origin = origin
        self.rx("BOOT", fw_ver=1, proto_ver=1, boot_count=2, reset_cause=8, n_channels=32,
                dict_hash=DICT_HASH)  # fmt: skip

    def evidence(self):
        for ch in self.levels.values():
            ch.sort()
        trace = parse_vcd(write_vcd(self.levels))
        return trace, valve_pulses(trace), WireRecord.from_chunks(self.chunks), reset_cycles(trace)


def test_a_clean_burn_passes_every_judge():
    b = FakeBench()
    b.fire(1, 10_000, {0: 30, 3: 7})
    b.fire(1, 10_300, {1: 12}, bank=1)
    b.fire(2, 110_000, {0: 45})
    trace, pulses, rec, resets = b.evidence()
    assert len(pulses) == 4 and {f.step for f in rec.fires} == {1, 2}
    widths = judge_pulse_widths(pulses, rec, resets)
    assert widths.ok, widths
    assert 0 < widths.numbers["err_max_cycles"] <= TICK_CYCLES
    only = judge_only_accepted_fires(pulses, rec, resets)
    assert only.ok, only
    # the clocks align on the first rise: every pulse here rose one pass after its FIRE
    assert only.numbers["rise_after_accept_max_cycles"] == 0
    assert align(pulses, rec.fires, resets, rec.boots) == {1: b.origin + PASS}


def test_an_uncommanded_pulse_fails_and_is_named():
    b = FakeBench()
    b.fire(1, 10_000, {0: 30})
    b.pin(5, b.cyc(50_000), b.cyc(52_000))  # nobody asked for valve5
    b.fire(2, 110_000, {0: 45})
    _, pulses, rec, resets = b.evidence()
    only = judge_only_accepted_fires(pulses, rec, resets)
    assert not only.ok and only.numbers["unexplained"] == 1
    assert "valve5" in only.problems[0]
    # the same pin declared stuck open (a modelled hardware fault) is left out
    assert judge_only_accepted_fires(pulses, rec, resets, stuck_channels=[5]).ok


def test_a_second_rise_for_one_fire_is_caught():
    b = FakeBench()
    b.fire(1, 10_000, {0: 2})
    b.pin(0, b.cyc(13_500), b.cyc(14_000))  # a glitch 3.5 ms after the FIRE: within the window
    _, pulses, rec, resets = b.evidence()
    only = judge_only_accepted_fires(pulses, rec, resets)
    assert not only.ok and only.numbers["unexplained"] == 1 and "valve0" in only.problems[0]


def test_a_pulse_longer_than_reported_fails():
    b = FakeBench()
    b.fire(1, 10_000, {0: 30})
    b.levels["valve0"][-1] = (b.levels["valve0"][-1][0] + 2 * TICK_CYCLES * PS_PER_CYCLE, 0)
    _, pulses, rec, resets = b.evidence()
    widths = judge_pulse_widths(pulses, rec, resets)
    assert not widths.ok and "valve0 step 1" in widths.problems[0]


def test_a_reported_pulse_that_never_showed_fails():
    b = FakeBench()
    b.fire(1, 10_000, {0: 30, 1: 20})
    b.levels["valve1"] = [(0, 0)]
    _, pulses, rec, resets = b.evidence()
    only = judge_only_accepted_fires(pulses, rec, resets)
    assert not only.ok and "channel 1 reported 20 ticks" in only.problems[0]


def test_watchdog_closure_from_the_last_fire():
    b = FakeBench()
    b.fire(1, 10_000, {2: 400}, cut_at_us=10_000 + 250_600)  # the watchdog cut it
    _, pulses, rec, resets = b.evidence()
    origins = align(pulses, rec.fires, resets, rec.boots)
    t0, since = last_valid_frame(rec, origins)
    assert t0 == b.cyc(10_000) + PASS and "step 1" in since
    ok = judge_closed_after("wd", pulses, t0, 251 * TICK_CYCLES, since)
    assert ok.ok and ok.numbers["closure_cycles"] == 250_600 * 16
    late = judge_closed_after("wd", pulses, t0, 250 * TICK_CYCLES, since)
    assert not late.ok and "bound" in late.problems[-1]


def test_stop_all_from_the_units_safe_entered_event():
    b = FakeBench()
    b.fire(1, 10_000, {0: 90})
    b.fire(1, 10_000, {1: 90}, bank=1)
    b.tx("STOP_ALL")
    b.rx("EVENT", pu_time_us=40_000, event=EVENT["SAFE_ENTERED"], state=1,
         arg0=ENUMS["safe_reason"]["COMMANDED"], arg1=0, arg2=0)  # fmt: skip
    for ch in (0, 17):  # cut at 40 ms: rewrite the falls
        b.levels[f"valve{ch}"] = [(0, 0)]
        b.pin(ch, b.cyc(10_000) + PASS, b.cyc(40_000) + PASS + 123)
    _, pulses, rec, resets = b.evidence()
    origins = align(pulses, rec.fires, resets, rec.boots)
    t0, ev = event_cycle(rec, origins, "SAFE_ENTERED", ENUMS["safe_reason"]["COMMANDED"])
    v = judge_closed_after("stop", pulses, t0, 16 * 50, "STOP_ALL handled")
    assert v.ok and v.numbers["closure_cycles"] == 123 and v.numbers["pins_high_at_t0"] == 2


def test_reset_low_and_boot_alignment_from_the_end():
    b = FakeBench(boot_seen=False)  # the host opened the port after the first BOOT
    b.fire(1, 10_000, {0: 30})
    b.reset(at=3_000_000, origin=3_000_000 + 9_000)
    b.tx("HELLO", proto_ver=1, host_nonce=2, dict_hash=DICT_HASH, mode=1, period_ms=100)
    b.fire(1, 20_000, {4: 10})
    trace, pulses, rec, resets = b.evidence()
    assert resets == [3_000_000] and len(rec.boots) == 1
    assert align(pulses, rec.fires, resets, rec.boots) == {0: 5_400, 1: 3_009_400}
    v = judge_reset_low(trace, pulses, rec, resets)
    assert v.ok, v
    assert v.numbers["first_rise_after_reset_cycles"] == [9_000 + 16 * 20_000 + PASS]
    assert judge_only_accepted_fires(pulses, rec, resets).ok
    # a pin that glitches high after the reset, before any FIRE, fails
    b.pin(9, 3_000_100, 3_000_300)
    trace, pulses, rec, resets = b.evidence()
    bad = judge_reset_low(trace, pulses, rec, resets)
    assert not bad.ok and "valve9" in bad.problems[0]


def test_no_reset_means_nothing_to_judge():
    b = FakeBench()
    b.fire(1, 10_000, {0: 30})
    trace, pulses, rec, resets = b.evidence()
    v = judge_reset_low(trace, pulses, rec, resets)
    assert not v.ok and "no reset" in v.problems[0]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 15), st.integers(1, 80), st.integers(0, 999)),
        min_size=1,
        max_size=12,
    ),
    st.integers(1_000, 50_000),
)
def test_any_lawful_schedule_passes_and_widths_stay_within_a_tick(plan, origin):
    """Property: whatever pulses a lawful unit runs (one FIRE per 100 ms step, any channel,
    any length up to 80 ticks, any offset within the tick), the widths are within one tick of
    the report and every pin is explained."""
    b = FakeBench(origin=origin)
    for k, (ch, n, off) in enumerate(plan):
        b.fire(k + 1, 100_000 * (k + 1) + off, {ch: n})
    _, pulses, rec, resets = b.evidence()
    assert judge_pulse_widths(pulses, rec, resets).ok
    assert judge_only_accepted_fires(pulses, rec, resets).ok


def test_a_trace_without_valve_wires_is_refused():
    trace = parse_vcd(write_vcd({"reset": [(0, 0)]}))
    with pytest.raises(KeyError, match="valve0"):
        valve_pulses(trace)


def _boot(count: int, cause: int) -> codec.Message:
    return codec.Message("BOOT", 0, {"boot_count": count, "reset_cause": cause})


def test_boot_segments_place_the_boots_the_host_saw():
    po, wd, ext = 1, 8, 2
    resets = [100, 200, 300]  # four boots in the trace
    # every BOOT seen, the power-on one first
    seen = [_boot(1, po), _boot(2, wd), _boot(3, wd), _boot(4, ext)]
    assert boot_segments(seen, resets) == {0: -1, 1: 0, 2: 1, 3: 2, 4: 3}
    # the last BOOT missed (the port re-opened after it): the power-on one anchors
    assert boot_segments(seen[:3], resets) == {0: -1, 1: 0, 2: 1, 3: 2}
    # no power-on BOOT seen, one missed in the middle: the last one anchors, counts place it
    assert boot_segments([seen[1], seen[3]], resets) == {0: 0, 1: 1, 2: 3}
    assert boot_segments([], resets) == {0: 3}


def test_frames_received_decode_the_byte_log_with_each_last_byte_cycle():
    hb = codec.encode("HEARTBEAT", 3, 0, session=1, host_step=2)
    stop = codec.encode("STOP_ALL", 4, 0)
    stream = b"\x00" + hb + bytes([0x05, 0x01]) + b"\x00" + stop  # a lone 0, a broken frame
    rx = [(100 + 10 * i, b) for i, b in enumerate(stream)]
    got = frames_received(rx)
    assert [(m.name, c) for c, m in got] == [
        ("HEARTBEAT", 100 + 10 * len(hb)),
        ("STOP_ALL", 100 + 10 * (len(stream) - 1)),
    ]
    # a byte the UART lost (its receiver off during a reset) takes its frame with it
    assert [m.name for _, m in frames_received(rx[:5] + rx[6:])] == ["STOP_ALL"]
    log = "10 rx 05\n11 tx 00\n12 rx 00\n"
    assert parse_uart_log(log) == [(10, 5), (12, 0)]
    with pytest.raises(ValueError, match="line 1"):
        parse_uart_log("10 5\n")


def test_frame_arrivals_match_the_hosts_frames_to_what_the_unit_heard():
    b = FakeBench()
    b.tx("STOP_ALL")
    b.tx("STOP_ALL")
    rec = WireRecord.from_chunks(b.chunks)
    stream = rec.tx_bytes
    first_end = rec.sent[1].end  # the first STOP_ALL is lost (a reset), the rest arrive
    rx = [(1000 + i, x) for i, x in enumerate(stream) if not rec.sent[0].end <= i < first_end]
    arr = frame_arrivals(rec, rx)
    assert set(arr) == {0, 2}
    assert arr[2] == 1000 + rec.sent[2].end - 1


def _as_uart_log(chunks) -> str:
    """The bench's wire as the simavr harness logs it: a byte a line, "rx" what the unit
    received (the host's "tx"), with cycles that only grow."""
    lines, cycle = [], 0
    for direction, _t, data in chunks:
        for b in data:
            cycle += 10
            lines.append(f"{cycle} {'rx' if direction == 'tx' else 'tx'} {b:02x}")
    return "\n".join(lines) + "\n"


def test_the_units_own_byte_log_gives_the_record_a_host_capture_gives():
    """campaign._simavr_pins judges REQ 2d on the unit's UART log (no host capture there): it
    must read the same FIREs, reports and boots, and the same verdict, as the host's chunks."""
    b = FakeBench()
    b.fire(1, 10_000, {0: 5, 3: 2})
    b.fire(2, 110_000, {1: 7}, bank=1)
    trace, pulses, rec, resets = b.evidence()
    log = _as_uart_log(b.chunks)
    again = WireRecord.from_chunks(uart_log_chunks(log))
    assert again.fires == rec.fires
    assert again.boots == rec.boots
    assert [s_.msg for s_ in again.sent] == [s_.msg for s_ in rec.sent]
    assert again.tx_bytes == rec.tx_bytes
    ok = judge_only_accepted_fires(pulses, again, resets)
    assert ok.ok and ok.numbers["pulses"] == 3
    # a pulse nobody commanded is still caught through the log
    b.pin(9, b.cyc(50_000), b.cyc(52_000))
    _, pulses, _, resets = b.evidence()
    bad = judge_only_accepted_fires(pulses, again, resets)
    assert not bad.ok and bad.numbers["unexplained"] == 1
    with pytest.raises(ValueError, match="line 2"):
        uart_log_chunks("10 rx 05\nnonsense\n")
