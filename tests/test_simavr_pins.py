"""Pin-level evidence from simavr (issue 17 item 2): the board firmware flown over its pty by the
real host link, every valve pin traced cycle by cycle (firmware_bridge/board/simavr_unit.c),
judged by firmware_bridge/pinevidence.py against what the host sent and the unit reported.

Every assertion is in simulated time (CPU cycles of the 16 MHz AVR), never on the wall clock; the
host waits for the unit's own answers (reports, events, BOOT), never sleeps. REQ numbers are the
issue's: 2a pulse width, 2b watchdog closure, 2c STOP_ALL, 2d only accepted FIREs, 2e resets.

Slow tier. Without simavr (or avr-gcc) the tests skip, naming what to install; under CI=true
they fail instead (tests/conftest.py).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from thruster_hil.firmware_bridge import pinevidence as pe
from thruster_hil.firmware_bridge.dictionary import EVENT, LIMITS
from thruster_hil.firmware_bridge.link import Link
from thruster_hil.firmware_bridge.vcd import Trace, read_vcd

pytestmark = pytest.mark.slow

WATCHDOG_MS = LIMITS["watchdog_ms_default"]  # 250: the unit's link watchdog (HELLO_ACK says so)
STOP_ALL_BOUND_US = pe.STOP_ALL_BOUND_US  # REQ 2c, stated and explained in pinevidence
#: Every valve edge is the tick interrupt's (main.c, "Pin timing"): a pulse rises at its start
#: tick and falls at start + executed ticks, each a few hundred cycles at most after its tick
#: (the interrupt's latency: interrupts are off for at most ~450 cycles in the main loop), so a
#: pulse that ran its course lasts its reported ticks within 100 us, not the issue's 1 ms.
EDGE_TOL_CYCLES = 100 * pe.CYCLES_PER_US
#: A FIRE's pulses start at the first tick edge at least 200 us after the unit executes it
#: (main.c START_MARGIN_US): its pins rise at most that plus a tick after its pass.
START_CYCLES = pe.TICK_CYCLES + 200 * pe.CYCLES_PER_US


def _need() -> None:
    missing = [t for t in ("make", "gcc", "avr-gcc") if shutil.which(t) is None]
    if not Path("/usr/include/simavr/sim_avr.h").exists():
        missing.append("libsimavr-dev")
    if missing:
        pytest.skip(
            f"{', '.join(missing)} not installed (apt-get install -y simavr libsimavr-dev "
            f"libsimavrparts1 gcc-avr avr-libc gcc make)"
        )


@dataclass
class Flight:
    """One session's evidence: the trace, the wire record, the harness's byte log and stats."""

    trace: Trace
    pulses: list[pe.Pulse]
    rec: pe.WireRecord
    resets: list[int]
    arrivals: dict[int, int]
    stats: dict

    def arrival_of_first(self, name: str) -> int:
        """When the last byte of the host's first frame ``name`` reached the UART [cycle]."""
        idx = [i for i, s in enumerate(self.rec.sent) if s.msg.name == name and i in self.arrivals]
        assert idx, f"no {name} reached the unit"
        return self.arrivals[idx[0]]

    def last_arrival(self) -> tuple[int, str]:
        """The last frame of the host's that reached the unit: its arrival cycle and name."""
        i = max(self.arrivals)
        return self.arrivals[i], self.rec.sent[i].msg.name


def fly(tmp_path: Path, script: Callable[[Link, object], None]) -> Flight:
    """Start the harness with a VCD, a byte log and stats, run ``script(link, unit)`` on a
    Link that records every chunk, stop the harness, and gather the evidence."""
    _need()
    from thruster_hil.firmware_bridge.simavr import SimavrUnit

    chunks: list[tuple[str, int, bytes]] = []
    vcd, stats, ulog = tmp_path / "pins.vcd", tmp_path / "stats.json", tmp_path / "uart.log"
    plog = tmp_path / "passes.log"  # every long main-loop pass: where a latency's time went
    with SimavrUnit(vcd_path=vcd, stats_path=stats, uart_log_path=ulog, pass_log_path=plog) as unit:
        link = Link(unit.port, on_bytes=lambda d, t, b: chunks.append((d, t, bytes(b))))
        try:
            script(link, unit)
        finally:
            link.on_bytes = None  # what the script left unsent is not part of the record
            unit.stop()
            link.close()
        st = unit.stats()
    trace = read_vcd(vcd)
    rec = pe.WireRecord.from_chunks(chunks)
    arrivals = pe.frame_arrivals(rec, pe.parse_uart_log(ulog.read_text()))
    return Flight(trace, pe.valve_pulses(trace), rec, pe.reset_cycles(trace), arrivals, st)


def _wait(link: Link, pred: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Read what the unit says until ``pred()`` (the unit's answer, not a clock); LinkError or
    AssertionError after ``timeout_s`` of nothing (a safety net, not a bound under test)."""
    deadline = time.monotonic_ns() + int(timeout_s * 1e9)
    link._run(link.s.wait_for(pred, deadline, checks=False))
    assert pred(), "the unit never said it"


def _event_seen(link: Link, name: str) -> Callable[[], bool]:
    return lambda: any(e.msg["event"] == EVENT[name] for e in link.events())


def _then_next_hk(link: Link) -> None:
    """Wait for the unit's next housekeeping: it goes out in a later main-loop pass than what
    came before it, so every pin that pass wrote is in the trace by then (the firmware writes
    the pins at the end of a pass, after the frames of that pass are already on their way)."""
    assert link.wait_hk(after_ns=time.monotonic_ns(), timeout_s=10.0) is not None


#: A lawful step's reports are waited for this long: simavr lags the wall clock on a loaded
#: host (its stats' max_lag_s), and a report read past the period's deadline counts as missing.
REPORT_WAIT_NS = 5_000_000_000


def _fire_lawful(link: Link, k: int):
    """Step k's lawful FIRE, its reports waited for however late the simulation runs."""
    return link.fire(k, _lawful(k), deadline_ns=time.monotonic_ns() + REPORT_WAIT_NS)


def _lawful(k: int) -> list[int]:
    """Step k's on-times for 32 channels [ms]: 5..59, every channel different, none clamped."""
    return [5 + (7 * k + 3 * c) % 55 for c in range(32)]


# ---- REQ 2a, 2c, 2d: a burst of lawful steps, then STOP_ALL mid-pulse -----------------------


@pytest.fixture(scope="module")
def burst(tmp_path_factory) -> Flight:
    def script(link: Link, unit) -> None:
        link.connect(mode="realtime", period_ms=100)
        link.arm(max_on_ticks=100)
        for k in range(1, 9):
            res = _fire_lawful(link, k)
            assert not res.missing_banks
        # 90 ms on every channel, then STOP_ALL at once: it reaches the unit a frame later
        link.fire(9, [90] * 32, deadline_ns=time.monotonic_ns())
        assert link.stop_all(confirm_timeout_s=5.0)
        _wait(link, _event_seen(link, "SAFE_ENTERED"))  # after step 9's (aborted) reports
        _then_next_hk(link)

    return fly(tmp_path_factory.mktemp("burst"), script)


def _pass_max(f: Flight) -> int:
    """The harness's worst main-loop pass [cycles]: the firmware writes the valve pins once a
    pass, after the frames and timers of that pass are handled."""
    return f.stats["main_loop"]["pass_max_cycles"]


def test_pulse_widths_equal_the_reported_ticks(burst):
    """REQ 2a: every pulse that ran its course lasts its VALVE_REPORT's executed ticks within
    EDGE_TOL_CYCLES (100 us; the issue asks one tick). The tick interrupt raises each pulse at
    its start tick (the report's t_start) and lowers it executed ticks later, whatever the main
    loop is doing (main.c, "Pin timing"). The pulses STOP_ALL cut are judged by the STOP_ALL
    test below."""
    v = pe.judge_pulse_widths(
        burst.pulses, burst.rec, burst.resets, aborted=False, tol_cycles=EDGE_TOL_CYCLES
    )
    print(v)
    print(f"main loop worst pass: {_pass_max(burst)} cycles (the pulse ends do not wait for it)")
    assert v.ok, v
    assert v.numbers["pulses"] == 8 * 32  # every channel of every lawful step was judged
    # step 9: bank 0's pulses, and bank 1's when they started before STOP_ALL came
    assert v.numbers["aborted_left_out"] in (16, 32)


def _two_passes(f: Flight) -> int:
    """The longest a frame's last byte can wait for its effect on the pins [cycles]: the rest
    of the pass in progress when it came, then the pass that handles it (plus the RX
    interrupt's wait)."""
    return 2 * _pass_max(f) + f.stats["uart_rx"]["wait_max_cycles"]


def test_fire_to_pin_latency(burst):
    """Each FIRE's pins rise after its last byte reached the UART, within two main-loop passes
    (:func:`_two_passes`) and its start (a tick and START_MARGIN_US at most): two independent
    measurements (the trace and the harness's pass timer) agree. Step 9's bank 1 may not have
    risen at all: STOP_ALL, right behind it, can cut it before its start tick (its report then
    says 0 ticks, judged below)."""
    lags = []
    for i, s in enumerate(burst.rec.sent):
        if s.msg.name != "FIRE" or i not in burst.arrivals:
            continue
        t = burst.arrivals[i]
        chans = {16 * s.msg["bank"] + c for c in range(16) if s.msg["on_ticks"][c]}
        rises = [p.rise - t for p in burst.pulses if p.channel in chans and p.rise >= t]
        if rises or s.msg["step"] != 9 or s.msg["bank"] != 1:
            lags.append(min(rises))
    print(f"FIRE last byte -> pins high: max {max(lags)} cycles ({max(lags) / 16:.1f} us)")
    assert len(lags) in (17, 18) and 0 < max(lags) <= _two_passes(burst) + START_CYCLES


def test_no_pin_high_outside_an_accepted_fire(burst):
    """REQ 2d: each pulse belongs to an accepted FIRE, each executed tick shows on its pin."""
    v = pe.judge_only_accepted_fires(burst.pulses, burst.rec, burst.resets)
    print(v)
    assert v.ok, v


def test_stop_all_closes_every_pin_within_the_stated_time(burst):
    """REQ 2c: from STOP_ALL's last byte at the UART to every pin low: STOP_ALL_BOUND_US."""
    t0 = burst.arrival_of_first("STOP_ALL")  # (Link sends it twice, the copy RETRANSMIT)
    assert sum(p.rise < t0 and (p.fall is None or p.fall > t0) for p in burst.pulses) >= 16
    v = pe.judge_closed_after(
        "STOP_ALL",
        burst.pulses,
        t0,
        pe.CYCLES_PER_US * STOP_ALL_BOUND_US,
        "STOP_ALL's last byte",
        rises_until=t0 + _two_passes(burst),  # bank 1's FIRE came just before it
    )
    print(v)
    assert v.ok, v
    # the pulses it cut: reported as the whole ticks they ran when the pins went low
    w = pe.judge_pulse_widths(
        burst.pulses, burst.rec, burst.resets, aborted=True, tol_cycles=pe.TICK_CYCLES
    )
    print(w)
    assert w.ok, w
    assert w.numbers["err_min_cycles"] >= -EDGE_TOL_CYCLES  # never shorter than reported


# ---- issue 17: what the unit reports is true to the pins -----------------------------------


@pytest.fixture(scope="module")
def watched(tmp_path_factory) -> Flight:
    """Lawful steps with housekeeping every 20 ms (the least HK period), so HKs fall while
    pulses start, run and end."""

    def script(link: Link, unit) -> None:
        link.connect(mode="realtime", period_ms=100)
        link.set_param("HK_PERIOD_MS", 20)
        link.arm(max_on_ticks=100)
        for k in range(1, 11):
            assert not _fire_lawful(link, k).missing_banks
        _then_next_hk(link)

    return fly(tmp_path_factory.mktemp("watched"), script)


def test_hk_open_mask_is_what_the_pins_show(watched):
    """Each HK's open_mask is the valve pins at its pu_time_us: a pulse is open in it from its
    start tick (not when the FIRE was taken) to its end tick (not when the main loop noticed),
    as on the pins. Channels with an edge within EDGE_TOL_CYCLES of the HK's moment are left
    out (the interrupt switches a valve a few hundred cycles after the tick at most)."""
    v = pe.judge_open_mask(watched.pulses, watched.rec, watched.resets, EDGE_TOL_CYCLES)
    print(v)
    assert v.ok, v
    assert v.numbers["hks_with_open_valves"] >= 10
    w = pe.judge_pulse_widths(
        watched.pulses, watched.rec, watched.resets, aborted=True, tol_cycles=EDGE_TOL_CYCLES
    )
    print(w)
    assert w.ok, w
    assert w.numbers["pulses"] == 10 * 32


# ---- REQ 2a/2b: pulses that end around the link watchdog's deadline -----------------------


@pytest.fixture(scope="module")
def deadline(tmp_path_factory) -> Flight:
    """One FIRE whose pulses end from ~6 ms before to ~6 ms after the link watchdog's deadline,
    then silence: some end on their own, the watchdog cuts the others."""

    def script(link: Link, unit) -> None:
        link.connect(mode="realtime", period_ms=1000)
        link.arm(max_on_ticks=1000)
        # bank 1's FIRE is the last frame (the deadline counts from it); bank 0's pulses start
        # about 5 ms earlier (a FIRE is 57 bytes on the line), so theirs end later in ticks
        ticks = [246 + c for c in range(16)] + [240 + c for c in range(16)]
        link.fire(1, ticks, deadline_ns=time.monotonic_ns())
        _wait(link, _event_seen(link, "WATCHDOG_TRIP"))
        _then_next_hk(link)

    return fly(tmp_path_factory.mktemp("deadline"), script)


def test_pulses_around_the_watchdog_deadline_last_their_reported_ticks(deadline):
    """A pulse that ends near the watchdog's deadline runs exactly what its report says: the
    unit's watchdog deadline is a tick edge (the RX stamp rounded up), the tick interrupt
    closes the valves there, and the unit cuts the pulses at that deadline, not when its main
    loop notices; a pulse that ends at or before it ends on its own tick."""
    d = deadline
    v = pe.judge_pulse_widths(d.pulses, d.rec, d.resets, aborted=True, tol_cycles=EDGE_TOL_CYCLES)
    print(v)
    assert v.ok, v
    assert v.numbers["pulses"] == 32
    fires = [f for f in d.rec.fires if f.step == 1]
    asked = {f.bank: f.on_ticks for f in fires}
    ran = {(f.bank, c): (f.executed[c], asked[f.bank][c]) for f in fires for c in range(16)}
    full = [k for k, (e, a) in ran.items() if e == a]
    cut = [k for k, (e, a) in ran.items() if e < a]
    print(f"ran their course: {len(full)}, cut by the watchdog: {len(cut)}")
    assert full and cut  # both sides of the deadline, in both banks' spread of ends
    t0, name = d.last_arrival()
    assert name == "FIRE"
    w = pe.judge_closed_after(
        "watchdog",
        d.pulses,
        t0,
        (WATCHDOG_MS + 1) * pe.TICK_CYCLES,
        "the last frame's last byte",
        rises_until=t0 + _two_passes(d) + START_CYCLES,
    )
    print(w)
    assert w.ok, w


# ---- REQ 2b: the host goes silent mid-pulse ------------------------------------------------


@pytest.fixture(scope="module")
def silent(tmp_path_factory) -> Flight:
    def script(link: Link, unit) -> None:
        link.connect(mode="realtime", period_ms=1000)
        assert link.watchdog_ms == WATCHDOG_MS
        link.arm(max_on_ticks=1000)
        # 600 ms on every channel, then nothing more from the host: the link is lost
        link.fire(1, [600] * 32, deadline_ns=time.monotonic_ns())
        _wait(link, _event_seen(link, "WATCHDOG_TRIP"))
        _then_next_hk(link)

    return fly(tmp_path_factory.mktemp("silent"), script)


def test_watchdog_closes_every_pin_within_watchdog_plus_one_tick(silent):
    """REQ 2b: after the host's last frame, every pin is low within watchdog_ms + 1 tick of
    simulated time from that frame's last byte at the UART. The unit counts its watchdog from
    the receive interrupt's stamp of the frame's first waiting byte (unit_receive_at), and the
    tick interrupt closes the pins at the first tick at or after that deadline (main.c, "Pin
    timing"), so neither the main loop's pickup and handling time nor its passes add to it."""
    t0, name = silent.last_arrival()
    assert name == "FIRE"  # the host said nothing after its FIRE (no HEARTBEAT, no STOP_ALL)
    last = max(i for i in silent.arrivals if silent.rec.sent[i].msg.name == "FIRE")
    m = silent.rec.sent[last].msg
    mine = {16 * m["bank"] + c for c in range(16) if m["on_ticks"][c]}
    take = max(p.rise for p in silent.pulses if p.channel in mine and p.rise >= t0) - t0
    bound = (WATCHDOG_MS + 1) * pe.TICK_CYCLES
    v = pe.judge_closed_after(
        "watchdog",
        silent.pulses,
        t0,
        bound,
        "the last frame's last byte",
        rises_until=t0 + take,  # that FIRE's own pins
    )
    print(v)
    print(
        f"from the last byte: {v.numbers['closure_us'] / 1e3:.3f} ms (bound watchdog + 1 tick, "
        f"margin {v.numbers['margin_cycles'] / 16:.1f} us); the last FIRE's pins rose "
        f"{take / 16:.1f} us after its byte"
    )
    assert v.ok, v
    assert v.numbers["pins_high_at_t0"] == 32  # every valve was open when the host fell silent
    # not before its time, but for the stamp's margin (main.c RX_STAMP_MARGIN_US, 100 us: the
    # unit counts from just before the RX interrupt saw the byte, never after it)
    assert v.numbers["closure_cycles"] >= (WATCHDOG_MS * 1000 - 100) * pe.CYCLES_PER_US
    # the pulses it cut ran exactly what the unit reports (cut at the deadline, a tick edge)
    w = pe.judge_pulse_widths(
        silent.pulses, silent.rec, silent.resets, aborted=True, tol_cycles=EDGE_TOL_CYCLES
    )
    print(w)
    assert w.ok, w
    assert w.numbers["pulses"] == 32
    trip = [m for _, m in silent.rec.events if m["event"] == EVENT["WATCHDOG_TRIP"]]
    assert len(trip) == 1 and trip[0]["arg0"] >= WATCHDOG_MS


# ---- REQ 2e: resets (commanded, hardware watchdog, external) --------------------------------


@pytest.fixture(scope="module")
def resets(tmp_path_factory) -> Flight:
    def script(link: Link, unit) -> None:
        step = 0

        def arm_and_fire(on_ms: int) -> None:
            nonlocal step
            link.arm(max_on_ticks=100, next_step=step + 1)
            step += 1
            assert not _fire_lawful(link, step).missing_banks
            step += 1  # long pulses, not waited for: the reset comes while they run
            link.fire(step, [on_ms] * 32, deadline_ns=time.monotonic_ns())

        def rebooted() -> None:
            # the unit's BOOT; a hang is 256 ms of silence, which the host may take for a lost
            # link first: reconnect() re-opens the port then (the capture keeps the BOOT)
            link.wait_reset(10.0)
            link.reconnect()

        link.connect(mode="realtime", period_ms=100)
        arm_and_fire(90)
        link.inject_fault("RESET")  # commanded: valves closed, then the watchdog resets it
        rebooted()
        arm_and_fire(90)
        unit.command("hang")  # a firmware stuck with interrupts off: the AVR watchdog resets it
        rebooted()
        arm_and_fire(90)
        unit.command("reset")  # the external reset line
        rebooted()
        link.arm(max_on_ticks=100, next_step=step + 1)
        assert not _fire_lawful(link, step + 1).missing_banks
        _then_next_hk(link)

    return fly(tmp_path_factory.mktemp("resets"), script)


def test_every_reset_leaves_the_pins_low(resets):
    """REQ 2e: at each reset every valve pin is low, and none rises before the first
    accepted FIRE of the new boot."""
    causes = [r["cause"] for r in resets.stats["resets"][1:]]
    assert causes == ["watchdog", "watchdog", "external"], causes  # commanded, hang, external
    unrep = pe.unreported_fires(resets.rec, resets.arrivals)
    v = pe.judge_reset_low(resets.trace, resets.pulses, resets.rec, resets.resets, unrep)
    print(v)
    assert v.ok, v
    assert v.numbers["resets"] == 3


def test_no_pin_high_outside_an_accepted_fire_across_resets(resets):
    """REQ 2d over four boots: every pulse is an accepted FIRE's (a FIRE a reset kept from
    being reported counts by its arrival)."""
    unrep = pe.unreported_fires(resets.rec, resets.arrivals)
    v = pe.judge_only_accepted_fires(resets.pulses, resets.rec, resets.resets, unreported=unrep)
    print(v)
    assert v.ok, v


# ---- issue 17 item 4: the campaign's firmware timing rows on simavr ------------------------


def test_the_campaigns_firmware_timing_rows_pass_on_simavr_pins(tmp_path):
    """`faults --units simavr`: link loss, host killed, reset and pressure loss, REALTIME, each
    judged on the firmware's record and on the valve pins in simulated time against the bare
    bounds: every pin low within watchdog + 1 tick of the last FIRE/HEARTBEAT the unit heard,
    within STOP_ALL's 1 ms of a fault's last byte (the fault lands mid-pulse)."""
    _need()
    from thruster_hil.campaign import run_campaign

    records = run_campaign(tmp_path, units=("simavr",))
    for r in records:
        print(r["id"], r["fault"], r["measured"]["pins"], r["why"])
    assert [r["id"] for r in records] == ["S01", "S02", "S03", "S04"]
    assert all(r["passed"] for r in records), [(r["id"], r["why"]) for r in records]
    pins = {r["id"]: r["measured"]["pins"] for r in records}
    wd_tick = (LIMITS["watchdog_ms_default"] + 1) * pe.TICK_CYCLES
    for row in ("S01", "S02"):
        assert pins[row]["bound_cycles"] == wd_tick  # no measured pass time added
        assert pins[row]["closure_cycles"] <= wd_tick
    # the host died mid-pulse (a pin was high at its last byte). Whether the watchdog or the
    # pulse's own end closed it depends on when the kill fell (after a FIRE, or after a
    # HEARTBEAT late in a long pulse), so only the bound, judged by the row, is asserted.
    assert pins["S02"]["pins_high_at_t0"] > 0
    # the reset and the pressure loss come mid-pulse: there are valves for the unit to close
    # REQ 2d over the campaign: every row's pins were judged against the FIREs the unit heard
    for row in pins:
        assert pins[row]["pulses"] > 0 and pins[row]["accepted_fires"] > 0
        assert pins[row]["pulses_unexplained"] == 0 == pins[row]["fired_channels_never_high"]
    for row in ("S03", "S04"):
        assert pins[row]["bound_cycles"] == STOP_ALL_BOUND_US * pe.CYCLES_PER_US
        assert pins[row]["pins_high_at_t0"] > 0
        assert 0 < pins[row]["closure_cycles"] <= pins[row]["bound_cycles"]
