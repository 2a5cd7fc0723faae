"""Host link tests against a small fake unit on a pty pair (the real emulator is elsewhere).

The fake unit is a thread on the master side of ``os.openpty()`` (both ends raw, P-12) that
decodes with ``codec.Decoder`` and answers with ``codec.encode`` just enough of
docs/protocol.md for the link: BOOT, HELLO_ACK, PONG, ARM_CHALLENGE, ACK, VALVE_REPORT. Its
switches drop the first copy of a message, answer DICT_MISMATCH, reject FIRE, or reset (BOOT
mid-session). Every frame it receives is recorded, and tests wait on its condition variable,
never on sleeps.
"""

from __future__ import annotations

import os
import select
import threading
import time
import tty

import numpy as np
import pytest
import serial
from thruster_hil.firmware_bridge import codec
from thruster_hil.firmware_bridge.dictionary import (
    DICT_HASH,
    ENUMS,
    EVENT,
    FAULT,
    FLAG_ACK_REQ,
    FLAG_RETRANSMIT,
    FLAG_TEST_BUILD,
    LIMITS,
    MODE,
    PROTO_VERSION,
    RESULT,
)
from thruster_hil.firmware_bridge.link import FireResult, Link, LinkError
from thruster_hil.sims.thrusters import HEALTH_FAILED_OFF, HEALTH_NOMINAL, HEALTH_STUCK_OPEN

from thruster_hil.closedloop.hil import SerialUnit
from thruster_hil.core.errors import UserError

UNIT_CLOCK_OFFSET_US = 1_000_000  # the fake's clock runs this far ahead of the host's
N_CHANNELS = 24
MIN_FEED = LIMITS["min_feed_kpa"]
WAIT = 2.0  # generous upper bound for any wait on the fake; tests normally take ms


class FakeUnit:
    """A propulsion unit just smart enough for the link (see the module docstring)."""

    def __init__(self, n_channels: int = N_CHANNELS):
        self.master, self.slave = os.openpty()
        tty.setraw(self.master)
        tty.setraw(self.slave)
        self.path = os.ttyname(self.slave)
        self.n_channels = n_channels
        self.cond = threading.Condition()
        self.seen: list[codec.Message] = []  # every frame received, in order
        self.handled = 0  # frames fully handled (answered or dropped)
        self.drop_first: set[str] = set()  # drop the first copy of the next such message
        self.lose_ack_once: set[str] = set()  # act on the next such message, lose its ACK
        self.dict_mismatch = False
        self.fire_result: str | None = None  # answer FIRE with this rejecting ACK
        self.lockout_at_step: int | None = None  # another writer's guesses lock out here
        self.failed_mask = 0  # per channel, all banks
        self.stuck_mask = 0
        self.faults_on = False  # a test build: FAULT_INJECT FAIL_OFF/STUCK_OPEN applied
        self.faults_applied: set[int] = set()  # their sequence counts (a resend is a no-op)
        self.period_ticks = 500
        self.boot_count = 7
        self.session: int | None = None
        self.session_counter = 0x1234
        self.armed = False
        self.nonce: int | None = None
        self.last_reports: dict[int, tuple[int, dict]] = {}
        self.seq = {0x011: 0, 0x012: 0, 0x013: 0}
        self._tx_lock = threading.Lock()
        self._stop_r, self._stop_w = os.pipe()
        self._decoder = codec.Decoder()
        self._thread = threading.Thread(target=self._run, name="fake-unit", daemon=True)
        self._thread.start()

    # -- plumbing --
    def now_us(self) -> int:
        return (time.monotonic_ns() // 1000 + UNIT_CLOCK_OFFSET_US) & 0xFFFFFFFF

    def send(self, name: str, **fields) -> None:
        spec = codec.MESSAGES[name]
        with self._tx_lock:
            seq = self.seq[spec.apid]
            self.seq[spec.apid] = (seq + 1) % codec.SEQ_MODULO
            os.write(self.master, codec.encode(name, seq, FLAG_TEST_BUILD, **fields))

    def _run(self) -> None:
        while True:
            ready, _, _ = select.select([self.master, self._stop_r], [], [])
            if self._stop_r in ready:
                return
            try:
                data = os.read(self.master, 4096)
            except OSError:  # no slave open right now (EIO): wait for one
                continue
            for item in self._decoder.feed(data):
                if isinstance(item, codec.Message):
                    with self.cond:
                        self.seen.append(item)
                        self.cond.notify_all()
                    self._handle(item)
                    with self.cond:
                        self.handled += 1
                        self.cond.notify_all()

    def close(self) -> None:
        os.write(self._stop_w, b"x")
        self._thread.join(WAIT)
        for fd in (self.master, self.slave, self._stop_r, self._stop_w):
            os.close(fd)

    def wait_seen(self, pred, timeout: float = WAIT):
        """Wait until pred(seen) holds and every frame seen so far has been handled."""
        with self.cond:
            return self.cond.wait_for(
                lambda: pred(self.seen) and self.handled == len(self.seen), timeout)

    def frames(self, name: str) -> list[codec.Message]:
        with self.cond:
            return [m for m in self.seen if m.name == name]

    # -- behaviour --
    def boot(self) -> None:
        """Power on / reset: valves closed, no session, BOOT."""
        self.boot_count += 1
        self.session = None
        self.armed = False
        self.last_reports.clear()
        self.send("BOOT", fw_ver=0x0100, proto_ver=PROTO_VERSION, boot_count=self.boot_count,
                  reset_cause=16, n_channels=self.n_channels, dict_hash=DICT_HASH)

    def lockout(self, errors: int = LIMITS["session_error_limit"]) -> None:
        """Another writer's wrong tokens reached the limit: SAFE (INTRUSION), LOCKOUT."""
        self.session, self.armed = None, False
        for name in ("FIRE",) * (errors - 1) + ("DISARM",):
            self.send("ACK", acked_seq=0x3FFF, msg_id=codec.MESSAGES[name].id,
                      result=RESULT["BAD_SESSION"])
        self.send("EVENT", pu_time_us=self.now_us(), event=EVENT["SAFE_ENTERED"], state=1,
                  arg0=ENUMS["safe_reason"]["INTRUSION"], arg1=0, arg2=0)
        self.send("EVENT", pu_time_us=self.now_us(), event=EVENT["LOCKOUT"], state=1,
                  arg0=errors, arg1=codec.MESSAGES["DISARM"].id, arg2=0)

    def ack(self, m: codec.Message, result: str) -> None:
        if m.name in self.lose_ack_once:
            self.lose_ack_once.discard(m.name)
            return
        self.send("ACK", acked_seq=m.seq, msg_id=codec.MESSAGES[m.name].id,
                  result=RESULT[result])

    def _handle(self, m: codec.Message) -> None:
        with self.cond:
            if m.name in self.drop_first:
                self.drop_first.discard(m.name)
                return
        name = m.name
        if "session" in m.fields and name != "HELLO" and m["session"] != self.session:
            self.ack(m, "BAD_SESSION")
            return
        if name == "HELLO":
            if self.dict_mismatch or m["dict_hash"] != DICT_HASH:
                self.session, self.armed = None, False
                result, session = RESULT["DICT_MISMATCH"], 0
            else:
                self.session_counter += 1
                self.session, self.armed = self.session_counter, False
                result, session = RESULT["ACCEPTED"], self.session
            self.send("HELLO_ACK", result=result, session=session, fw_ver=0x0100,
                      proto_ver=PROTO_VERSION, dict_hash=0xDEADBEEF if self.dict_mismatch
                      else DICT_HASH, n_channels=self.n_channels, tick_us=1000,
                      min_on_ticks=10, watchdog_ms=250, mode=m["mode"],
                      boot_count=self.boot_count)
        elif name == "PING":
            t2 = self.now_us()
            self.send("PONG", nonce=m["nonce"], t1_host_us=m["t1_host_us"], t2_pu_us=t2,
                      t3_pu_us=self.now_us())
        elif name == "ARM_REQUEST":
            self.nonce = 0xC0FFEE00 + self.session_counter
            self.send("ARM_CHALLENGE", nonce=self.nonce, valid_ms=2000)
        elif name == "ARM_CONFIRM":
            if self.armed:
                self.ack(m, "REJECTED_STATE")
            elif m["nonce"] == self.nonce:
                self.armed = True
                self.send("EVENT", pu_time_us=self.now_us(), event=EVENT["ARMED"], state=3,
                          arg0=0, arg1=0, arg2=0)
                self.ack(m, "ACCEPTED")
            else:
                self.ack(m, "BAD_NONCE")
        elif name in ("STOP_ALL", "DISARM"):
            self.armed = False
            if name == "DISARM" or m.flags & FLAG_ACK_REQ:
                self.ack(m, "ACCEPTED")
        elif name in ("HEARTBEAT", "SET_PARAM"):
            if m.flags & FLAG_ACK_REQ:
                self.ack(m, "ACCEPTED")
        elif name == "FIRE":
            self._fire(m)
        elif name == "FAULT_INJECT":
            if not self.faults_on:
                self.ack(m, "UNSUPPORTED")
                return
            if m.seq not in self.faults_applied:
                self.faults_applied.add(m.seq)
                if m["fault"] == FAULT["FAIL_OFF"]:
                    self.failed_mask |= 1 << m["arg"]
                elif m["fault"] == FAULT["STUCK_OPEN"]:
                    self.stuck_mask |= 1 << m["arg"]
            if m.flags & FLAG_ACK_REQ:
                self.ack(m, "ACCEPTED")

    def _fire(self, m: codec.Message) -> None:
        if self.lockout_at_step is not None and m["step"] == self.lockout_at_step:
            self.lockout()
            self.ack(m, "BAD_SESSION")
            return
        if not self.armed:
            self.ack(m, "REJECTED_STATE")
            return
        if self.fire_result is not None:
            self.ack(m, self.fire_result)
            return
        bank = m["bank"]
        cached = self.last_reports.get(bank)
        if cached is not None and cached[0] == m["step"]:  # idempotent per step
            self.send("VALVE_REPORT", **dict(cached[1], flags=cached[1]["flags"] | 4))
            return
        failed = (self.failed_mask >> (16 * bank)) & 0xFFFF
        stuck = (self.stuck_mask >> (16 * bank)) & 0xFFFF
        executed = []
        for c in range(16):
            bit = 1 << c
            if stuck & bit:
                executed.append(self.period_ticks)
            elif failed & bit or not m["mask"] & bit:
                executed.append(0)
            else:
                executed.append(m["on_ticks"][c])
        report = dict(step=m["step"], t_start_pu_us=self.now_us(), bank=bank, flags=0,
                      executed_ticks=executed, failed_mask=failed, stuck_mask=stuck)
        self.last_reports[bank] = (m["step"], report)
        self.send("VALVE_REPORT", **report)


@pytest.fixture
def unit():
    u = FakeUnit()
    yield u
    u.close()


@pytest.fixture
def link(unit):
    lk = Link(unit.path, ping_burst=10)
    lk.open()
    unit.boot()  # the board resets when the port opens; BOOT follows
    yield lk
    lk.close()


def connected(link: Link, unit: FakeUnit, **kw) -> Link:
    link.connect(**kw)
    return link


def sync(link: Link) -> None:
    """A PING round trip: the fake has processed every frame sent before it."""
    link.ping()


# ---- connect ---------------------------------------------------------------------------------

def test_connect_waits_for_boot_sends_hello_and_measures_rtt_and_offset(link, unit):
    info = link.connect(mode="lockstep", period_ms=200)
    hellos = unit.frames("HELLO")
    assert len(hellos) == 1
    assert hellos[0]["dict_hash"] == DICT_HASH
    assert hellos[0]["proto_ver"] == PROTO_VERSION
    assert hellos[0]["mode"] == MODE["LOCKSTEP"] and hellos[0]["period_ms"] == 200
    assert info.session == unit.session and link.session == unit.session
    assert (info.n_channels, info.tick_us, info.watchdog_ms) == (N_CHANNELS, 1000, 250)
    assert info.boot_count == unit.boot_count and info.test_build
    assert len(unit.frames("PING")) == 10
    st = link.stats()
    assert st["rtt_samples"] == 10 and 0 < st["rtt_ms_p50"] <= st["rtt_ms_p99"] < 1000
    # The fake's clock is 1 s ahead; the offset is good to about one RTT.
    assert abs(link.clock_offset_us - UNIT_CLOCK_OFFSET_US) < 20_000
    assert link.retry_timeout_s >= 0.020
    # The BOOT that came before HELLO is not a reset.
    assert not link.reset_detected and st["resets_detected"] == 0


def test_connect_without_boot_proceeds_after_the_boot_timeout(unit):
    with Link(unit.path, ping_burst=2) as lk:  # no unit.boot(): a board without auto-reset
        t0 = time.monotonic()
        info = lk.connect(boot_timeout_s=0.1)
        assert time.monotonic() - t0 >= 0.1
        assert info.session == unit.session


def test_realtime_mode_is_sent_in_hello(link, unit):
    link.connect(mode="realtime", period_ms=100)
    assert unit.frames("HELLO")[0]["mode"] == MODE["REALTIME"]


def test_bad_mode_or_period_is_a_one_line_user_error(link):
    with pytest.raises(UserError, match="mode") as exc:
        link.connect(mode="fast")
    assert "\n" not in str(exc.value)
    with pytest.raises(UserError, match="period_ms"):
        link.connect(period_ms=5)


def test_dictionary_mismatch_is_refused_with_both_hashes_and_never_armed(link, unit):
    unit.dict_mismatch = True
    with pytest.raises(UserError) as exc:
        link.connect()
    text = str(exc.value)
    assert "\n" not in text and text.startswith(unit.path)
    assert "0xDEADBEEF" in text and f"0x{DICT_HASH:08X}" in text
    assert link.session is None
    with pytest.raises(LinkError, match="no session"):
        link.arm(100)
    assert not unit.frames("ARM_REQUEST")


# ---- arm and fire ------------------------------------------------------------------------------

def test_arm_runs_the_challenge_and_confirms_the_nonce(link, unit):
    connected(link, unit).arm(max_on_ticks=300)
    confirm = unit.frames("ARM_CONFIRM")[0]
    assert confirm["nonce"] == unit.nonce and confirm["max_on_ticks"] == 300
    assert confirm["session"] == unit.session and confirm.flags & FLAG_ACK_REQ
    assert link.armed and unit.armed


def test_arm_confirm_whose_ack_was_lost_still_arms(link, unit):
    connected(link, unit)
    unit.lose_ack_once = {"ARM_CONFIRM"}  # armed, but the ACK never comes: the resend is
    link.arm(100)  # refused with REJECTED_STATE, and the ARMED event shows the first worked
    confirms = unit.frames("ARM_CONFIRM")
    assert len(confirms) == 2 and confirms[1].flags & FLAG_RETRANSMIT
    assert link.armed and unit.armed
    assert any(e.msg["event"] == EVENT["ARMED"] for e in link.events())


def test_arm_refused_with_a_bad_nonce_is_a_link_error(link, unit):
    connected(link, unit)
    orig = unit._handle

    def wrong_nonce(m):
        orig(m)
        if m.name == "ARM_REQUEST":
            unit.nonce ^= 1  # the unit now expects another nonce than it sent
    unit._handle = wrong_nonce
    with pytest.raises(LinkError, match="BAD_NONCE"):
        link.arm(100)
    assert not link.armed


def test_fault_inject_on_a_unit_without_test_build_is_unsupported(link, unit):
    connected(link, unit)
    with pytest.raises(LinkError, match="UNSUPPORTED"):
        link.inject_fault("drop_rx", 2)
    fi = unit.frames("FAULT_INJECT")
    assert len(fi) == 1 and fi[0]["fault"] == 1 and fi[0]["arg"] == 2
    with pytest.raises(ValueError, match="unknown fault"):
        link.inject_fault("explode")


def test_fire_is_refused_locally_before_arm(link, unit):
    connected(link, unit)
    with pytest.raises(LinkError, match="not armed"):
        link.fire(1, [10] * 18)
    assert not unit.frames("FIRE")


def test_lockstep_fire_18_thrusters_in_two_banks(link, unit):
    unit.failed_mask = 1 << 3
    unit.stuck_mask = 1 << 17
    connected(link, unit).arm(500)
    on = [10 * (i + 1) for i in range(18)]
    res = link.fire(5, on)
    assert isinstance(res, FireResult) and res.complete
    sync(link)
    all_fires = unit.frames("FIRE")
    fires = [f for f in all_fires if not f.flags & FLAG_RETRANSMIT]  # first copies
    assert [f["bank"] for f in fires] == [0, 1]
    assert fires[0].seq != fires[1].seq
    assert fires[0]["mask"] == 0xFFFF and fires[1]["mask"] == 0b11
    assert list(fires[0]["on_ticks"]) == on[:16]
    assert list(fires[1]["on_ticks"]) == on[16:] + [0] * 14
    assert all(f["step"] == 5 and f["session"] == unit.session for f in fires)
    expected = list(on)
    expected[3] = 0
    expected[17] = unit.period_ticks
    assert list(res.executed_ms) == expected and list(res.executed_ticks) == expected
    health = [HEALTH_NOMINAL] * 18
    health[3] = HEALTH_FAILED_OFF
    health[17] = HEALTH_STUCK_OPEN
    assert list(res.health) == health
    assert res.flags == 0 and res.rtt_ms is not None and res.rtt_ms > 0
    # No retransmission unless this machine is slower than the 20 ms floor.
    assert link.stats()["retries"] == len(all_fires) - 2


def test_dropped_fire_is_resent_with_same_seq_and_step_and_retransmit_flag(link, unit):
    connected(link, unit).arm(500)
    unit.drop_first = {"FIRE"}
    res = link.fire(9, [20] * 18)
    assert list(res.executed_ms) == [20] * 18
    sync(link)
    bank0 = [f for f in unit.frames("FIRE") if f["bank"] == 0]
    assert len(bank0) >= 2
    first, second = bank0[0], bank0[1]
    assert second.seq == first.seq and second["step"] == first["step"] == 9
    assert not first.flags & FLAG_RETRANSMIT and second.flags & FLAG_RETRANSMIT
    resent = sum(1 for f in unit.seen if f.flags & FLAG_RETRANSMIT and f.name != "STOP_ALL")
    assert link.stats()["retries"] == resent >= 1


def test_dropped_hello_is_resent_and_counted(link, unit):
    unit.drop_first = {"HELLO"}
    link.connect()
    hellos = unit.frames("HELLO")
    assert len(hellos) == 2 and hellos[0].seq == hellos[1].seq
    assert hellos[1].flags & FLAG_RETRANSMIT
    assert link.stats()["retries"] >= 1 and link.session == unit.session


def test_rejecting_ack_to_fire_raises_link_error_naming_the_result(link, unit):
    connected(link, unit).arm(500)
    unit.fire_result = "STALE"
    with pytest.raises(LinkError, match="STALE") as exc:
        link.fire(3, [10] * 18)
    assert "\n" not in str(exc.value)


def test_a_fire_refused_after_a_watchdog_trip_says_so(link, unit):
    """A host that was silent past the watchdog finds its unit SAFE: the refusal names why."""
    connected(link, unit).arm(500)
    unit.send("EVENT", pu_time_us=unit.now_us(), event=EVENT["WATCHDOG_TRIP"], state=1,
              arg0=251, arg1=0, arg2=0)
    sync(link)
    unit.fire_result = "REJECTED_STATE"
    with pytest.raises(LinkError, match="REJECTED_STATE .*watchdog expired: 251 ms") as exc:
        link.fire(3, [10] * 18)
    assert "\n" not in str(exc.value)


def _low_pressure_safe(unit: FakeUnit, kpa: int) -> None:
    """What a unit says when its tank drops below the minimum feed pressure while armed."""
    unit.armed = False
    unit.send("EVENT", pu_time_us=unit.now_us(), event=EVENT["SAFE_ENTERED"], state=1,
              arg0=ENUMS["safe_reason"]["LOW_PRESSURE"], arg1=kpa, arg2=0)


def test_a_fire_refused_after_low_tank_pressure_says_so(link, unit):
    """REQ issue 7: the unit went SAFE for LOW_PRESSURE: the refusal names the pressure and the
    minimum, in one line."""
    connected(link, unit).arm(500)
    _low_pressure_safe(unit, 420)
    sync(link)
    with pytest.raises(LinkError, match=r"REJECTED_STATE \(the unit's tank pressure fell to 420 "
                       rf"kPa, below the minimum feed pressure of {MIN_FEED} kPa") as exc:
        link.fire(3, [10] * 18)
    assert "\n" not in str(exc.value) and "LOW_PRESSURE" in str(exc.value)


def test_a_chain_stopped_by_low_tank_pressure_says_so(link, unit):
    """The same in a LOCKSTEP chain: the step after the pressure dropped is refused and
    fire_chain raises the one-line reason."""
    connected(link, unit).arm(500)

    def on_result(res: FireResult):
        if res.step == 3:
            _low_pressure_safe(unit, 12)  # before the unit sees step 4
        return res.step + 1, [10] * 18

    with pytest.raises(LinkError, match="FIRE step 4 bank 0 refused: REJECTED_STATE .*fell to 12 "
                       "kPa.*LOW_PRESSURE") as exc:
        link.fire_chain(1, [10] * 18, on_result)
    assert "\n" not in str(exc.value)


def test_arm_refused_while_the_tank_is_low_says_so(link, unit):
    connected(link, unit)
    unit.send("HK", pu_time_us=unit.now_us(), state=1, watchdog_remaining_ms=0, rx_frames=1,
              crc_errors=0, cobs_errors=0, length_errors=0, seq_gaps=0, uart_overruns=0,
              session_errors=0, last_step=0, open_mask=0, failed_mask=0, stuck_mask=0,
              tank_kPa=MIN_FEED - 1)
    assert link.wait_hk(timeout_s=WAIT) is not None
    orig = unit._handle

    def low(m):
        if m.name == "ARM_REQUEST":
            unit.ack(m, "REJECTED_STATE")
        else:
            orig(m)

    unit._handle = low
    with pytest.raises(LinkError, match=f"ARM_REQUEST refused: REJECTED_STATE .*tank at "
                       f"{MIN_FEED - 1} kPa") as exc:
        link.arm(100)
    assert "\n" not in str(exc.value) and not link.armed


def test_no_report_for_the_units_watchdog_time_is_a_link_error(link, unit):
    """A FIRE nobody answers is resent every retry timeout (same sequence count) and the host
    calls the link lost only after MAX_RETRIES resends AND the unit's own watchdog time: a
    stall the unit tolerates does not end the burn on the host's side first."""
    import time

    connected(link, unit).arm(500)
    link._retry_rtt_s = 0.001  # noqa: SLF001 - a 20 ms retry timeout
    unit.drop_first = {"FIRE"}
    orig = unit._handle

    def black_hole(m):  # swallow every FIRE
        if m.name != "FIRE":
            orig(m)

    unit._handle = black_hole
    t0 = time.monotonic()
    with pytest.raises(LinkError, match="no reply to FIRE step 4 .* tries over") as exc:
        link.fire(4, [10] * 3)
    elapsed = time.monotonic() - t0
    watchdog_s = link.info.watchdog_ms / 1000
    assert watchdog_s <= elapsed < watchdog_s + 0.2, elapsed
    assert link.give_up_s == pytest.approx(watchdog_s)
    fires = unit.frames("FIRE")
    assert len(fires) >= 4 + 1 and len({f.seq for f in fires}) == 1
    assert link.stats()["retries"] == len(fires) - 1
    assert "\n" not in str(exc.value)


# ---- fault injection from inside a LOCKSTEP chain -------------------------------------------

def test_a_failure_injected_inside_a_chain_goes_ahead_of_the_next_fire_and_is_resent_if_lost(
        link, unit):
    """REQ issue 7: SerialUnit.fail() called while a chain prepares its next cycle (on the
    reader thread) sends FAULT_INJECT without ACK_REQ ahead of that FIRE instead of waiting for
    an ACK nobody can read. Its first copy is lost here: the next report does not show the
    failure, so the same FAULT_INJECT (same seq, RETRANSMIT) goes ahead of the FIRE after it,
    and from then on every report shows the channel failed."""
    unit.faults_on = True
    connected(link, unit).arm(500)
    su = SerialUnit(link, 18, 500, "lockstep", "fake")
    unit.drop_first = {"FAULT_INJECT"}
    health3: list[int] = []

    def next_cycle(report):
        health3.append(int(report.health[3]))
        if len(health3) == 2:
            su.fail(3, HEALTH_FAILED_OFF)
        return None if len(health3) == 6 else np.full(18, 10, np.uint16)

    su.execute_chain(0, np.full(18, 10, np.uint16), next_cycle)
    assert health3 == [HEALTH_NOMINAL] * 3 + [HEALTH_FAILED_OFF] * 3
    sync(link)
    faults = unit.frames("FAULT_INJECT")
    assert len(faults) == 2 and faults[0].seq == faults[1].seq
    assert [f.flags & (FLAG_ACK_REQ | FLAG_RETRANSMIT) for f in faults] == [0, FLAG_RETRANSMIT]
    assert (faults[0]["fault"], faults[0]["arg"]) == (FAULT["FAIL_OFF"], 3)
    order = [(m.name, m.fields.get("step")) for m in unit.seen
             if m.name in ("FAULT_INJECT", "FIRE") and m.fields.get("bank", 0) == 0]
    assert order.index(("FAULT_INJECT", None)) == order.index(("FIRE", 3)) - 1
    assert order[order.index(("FIRE", 4)) - 1] == ("FAULT_INJECT", None)


# ---- closing a serial unit: are its valves really closed? ------------------------------------

@pytest.mark.parametrize("stuck", [0, 1 << 17])
def test_closing_a_unit_that_sends_no_housekeeping_trusts_the_stuck_masks_it_reported(
        link, unit, stuck):
    """After the STOP_ALL ACK the unit's next HK says which valves are open; this fake sends
    none, so what its VALVE_REPORTs said is stuck open is taken as still open (STOP_ALL cannot
    close it), and only a unit with none is reported closed."""
    unit.stuck_mask = stuck
    connected(link, unit).arm(500)
    su = SerialUnit(link, 18, 500, "lockstep", "fake")
    su.execute(0, np.full(18, 10, np.uint16))
    su.close()
    assert unit.frames("STOP_ALL")
    assert su.valves_closed is (not stuck)
    assert su.valves_open == ([17] if stuck else [])


# ---- fire_chain: LOCKSTEP steps driven from the reader thread ------------------------------

def test_fire_chain_runs_each_step_on_the_reader_thread_in_order(link, unit):
    """Each step's report reaches on_result (on the reader thread), whose answer is the next
    FIRE; the chain ends when on_result returns None; every step is one RTT sample."""
    unit.failed_mask = 1 << 3
    connected(link, unit).arm(500)
    seen: list[FireResult] = []
    threads = set()
    caller = threading.current_thread()

    def on_result(res: FireResult):
        threads.add(threading.current_thread())
        seen.append(res)
        if res.step == 25:
            return None
        return res.step + 1, [res.step + i for i in range(18)]

    link.fire_chain(10, [10] * 18, on_result)
    assert [r.step for r in seen] == list(range(10, 26))
    assert threads and caller not in threads  # no hand-over to the calling thread per step
    for r in seen[1:]:
        expected = [r.step - 1 + i for i in range(18)]
        expected[3] = 0  # the failed channel executes nothing
        assert list(r.executed_ms) == expected
        assert r.health[3] == HEALTH_FAILED_OFF and r.rtt_ms > 0
    sync(link)
    firsts = [f for f in unit.frames("FIRE") if not f.flags & FLAG_RETRANSMIT]
    assert [(f["step"], f["bank"]) for f in firsts] == [(s, b) for s in range(10, 26)
                                                        for b in (0, 1)]
    assert link.stats()["rtt_samples"] >= 16


def test_fire_chain_resends_a_step_whose_report_did_not_come(link, unit):
    connected(link, unit).arm(500)
    unit.drop_first = {"FIRE"}
    steps = []

    def on_result(res):
        steps.append((res.step, list(res.executed_ms)))
        return None if res.step == 3 else (res.step + 1, [20] * 18)

    link.fire_chain(1, [20] * 18, on_result)
    assert steps == [(s, [20] * 18) for s in (1, 2, 3)]
    sync(link)
    bank0 = [f for f in unit.frames("FIRE") if f["bank"] == 0 and f["step"] == 1]
    assert len(bank0) >= 2 and bank0[1].seq == bank0[0].seq
    assert bank0[1].flags & FLAG_RETRANSMIT
    assert link.stats()["retries"] >= 1


def test_fire_chain_gives_up_after_the_units_watchdog_time(link, unit):
    """As one FIRE does: resends every retry timeout, gives up no sooner than the unit's
    watchdog time (and after three resends at least)."""
    import time

    connected(link, unit).arm(500)
    link._retry_rtt_s = 0.001  # noqa: SLF001 - a 20 ms retry timeout
    orig = unit._handle
    unit._handle = lambda m: None if m.name == "FIRE" else orig(m)
    t0 = time.monotonic()
    with pytest.raises(LinkError, match="no reply to FIRE step 7"):
        link.fire_chain(7, [10] * 3, lambda res: None)
    assert time.monotonic() - t0 >= link.info.watchdog_ms / 1000
    fires = unit.frames("FIRE")
    assert len(fires) >= 4 + 1 and len({f.seq for f in fires}) == 1


def test_fire_chain_raises_a_rejection_and_what_on_result_raised(link, unit):
    connected(link, unit).arm(500)
    unit.fire_result = "STALE"
    with pytest.raises(LinkError, match="FIRE step 4 bank 0 refused: STALE"):
        link.fire_chain(4, [10] * 18, lambda res: (res.step + 1, [10] * 18))
    unit.fire_result = None

    class Boom(Exception):
        pass

    def on_result(res):
        if res.step == 12:
            raise Boom("plant diverged")
        return res.step + 1, [10] * 18

    with pytest.raises(Boom, match="plant diverged"):
        link.fire_chain(10, [10] * 18, on_result)
    # The link is usable afterwards: the chain is gone, a plain FIRE works.
    assert link.fire(20, [5] * 18).executed_ms == (5,) * 18


def test_fire_chain_stops_on_a_unit_reset(link, unit):
    connected(link, unit).arm(500)

    def on_result(res):
        if res.step == 2:
            unit.boot()  # the unit resets while the host computes the next step
        return res.step + 1, [10] * 18

    with pytest.raises(LinkError, match="reset"):
        link.fire_chain(1, [10] * 18, on_result)
    assert not link.armed


def test_fire_chain_is_lockstep_only(link, unit):
    connected(link, unit, mode="realtime", period_ms=100).arm(50)
    with pytest.raises(LinkError, match="LOCKSTEP"):
        link.fire_chain(1, [10] * 3, lambda res: None)


def test_realtime_fire_collects_reports_and_counts_missed_deadlines(link, unit):
    connected(link, unit, mode="realtime", period_ms=100).arm(50)
    res = link.fire(1, [5] * 18, deadline_ns=time.monotonic_ns() + 1_000_000_000)
    assert res.complete and list(res.executed_ms) == [5] * 18
    assert link.stats()["deadline_misses"] == 0
    unit.drop_first = {"FIRE"}  # bank 0's report never comes, and is not resent
    res = link.fire(2, [5] * 18, deadline_ns=time.monotonic_ns() + 200_000_000)
    assert res.missing_banks == (0,) and not res.complete
    assert list(res.executed_ms) == [0] * 16 + [5, 5]
    sync(link)
    assert len([f for f in unit.frames("FIRE") if f["step"] == 2]) == 2  # no resend
    assert link.stats()["deadline_misses"] == 1


# ---- reset, reconnect, close ------------------------------------------------------------------

def test_reset_detected_then_reconnect_then_fire_refused_until_rearmed(link, unit):
    connected(link, unit).arm(500)
    link.fire(1, [10] * 18)
    unit.boot()  # the unit resets mid-session
    assert link.wait_reset(WAIT)
    assert link.stats()["resets_detected"] == 1 and not link.armed
    with pytest.raises(LinkError, match="reset"):
        link.fire(2, [10] * 18)
    n_hello = len(unit.frames("HELLO"))
    info = link.reconnect(boot_timeout_s=0.5)
    assert len(unit.frames("HELLO")) == n_hello + 1
    assert info.boot_count == unit.boot_count and not link.reset_detected
    assert info.session == unit.session
    with pytest.raises(LinkError, match="not armed"):
        link.fire(2, [10] * 18)
    link.arm(500)
    assert list(link.fire(2, [10] * 18).executed_ms) == [10] * 18


def test_port_gone_marks_link_down_and_reconnect_reopens():
    u = FakeUnit()
    lk = Link(u.path, ping_burst=2)
    try:
        lk.open()
        u.boot()
        lk.connect()
        path = u.path
        u.close()  # the emulator dies: its pty disappears
        with lk._cond:  # noqa: SLF001 - wait for the reader to notice, no sleep
            assert lk._cond.wait_for(lambda: not lk._up, WAIT)  # noqa: SLF001
        assert not lk.is_up
        with pytest.raises(LinkError, match="down"):
            lk.ping()
        lk.stop_all()  # never raises on a dead port
        with pytest.raises(LinkError, match="did not come back"):
            lk.reconnect(timeout_s=0.1)
        assert path
    finally:
        lk.close()
        lk.close()  # idempotent


def test_close_sends_stop_all_and_is_idempotent(unit):
    lk = Link(unit.path, ping_burst=2)
    lk.open()
    unit.boot()
    lk.connect()
    lk.arm(100)
    lk.close()
    assert unit.wait_seen(lambda seen: sum(m.name == "STOP_ALL" for m in seen) >= 2)
    stops = unit.frames("STOP_ALL")
    assert stops[0].seq == stops[1].seq and stops[1].flags & FLAG_RETRANSMIT
    assert not unit.armed
    lk.close()
    assert len(unit.frames("STOP_ALL")) == 2
    assert not lk.is_up


def test_stop_all_reports_whether_the_unit_confirmed(link, unit):
    connected(link, unit).arm(100)
    assert link.stop_all(confirm_timeout_s=WAIT) is True
    stops = unit.frames("STOP_ALL")
    assert stops and all(m.flags & FLAG_ACK_REQ for m in stops)
    assert not unit.armed and not link.armed
    orig = unit._handle
    unit._handle = lambda m: None if m.name == "STOP_ALL" else orig(m)  # a unit that is deaf
    assert link.stop_all(confirm_timeout_s=0.05) is False
    assert link.stop_all() is None  # nothing waited for


def test_context_manager_closes_with_stop_all(unit):
    with Link(unit.path, ping_burst=1) as lk:
        lk.open()
    assert unit.wait_seen(lambda seen: any(m.name == "STOP_ALL" for m in seen))


# ---- opening the port ----------------------------------------------------------------------

def test_busy_port_is_a_one_line_user_error(link, unit):
    other = Link(unit.path)
    with pytest.raises(UserError) as exc:
        other.open()
    text = str(exc.value)
    assert "\n" not in text and text.startswith(unit.path)
    assert "in use by another process" in text
    other.close()


def test_missing_port_is_a_one_line_user_error(tmp_path):
    path = str(tmp_path / "ttyNOPE0")
    with pytest.raises(UserError) as exc:
        Link(path).open()
    text = str(exc.value)
    assert "\n" not in text and text.startswith(path) and "no such port" in text


def test_unknown_url_scheme_is_a_one_line_user_error():
    with pytest.raises(UserError, match="not a port path or a pyserial URL") as exc:
        Link("nosuch://thing").open()
    assert "\n" not in str(exc.value)


def test_loop_url_opens_and_captures_both_directions():
    seen: list[tuple[str, int, bytes]] = []
    done = threading.Event()

    def capture(direction, t_ns, data):
        seen.append((direction, t_ns, data))
        if direction == "rx":
            done.set()

    lk = Link("loop://", on_bytes=capture)
    lk.open()
    assert lk.is_up and isinstance(lk._ser, serial.SerialBase)  # noqa: SLF001
    with pytest.raises(LinkError, match="no PONG"):
        lk.ping(timeout_s=0.05)  # the loop echoes our PING: nobody answers it
    assert done.wait(WAIT)
    tx = b"".join(d for k, _, d in seen if k == "tx")
    rx = b"".join(d for k, _, d in seen if k == "rx")
    assert tx and rx.startswith(tx[: len(rx)]) and all(t > 0 for _, t, _ in seen)
    assert lk.stats()["frames_sent"] == 1
    lk.close()
    assert not lk.is_up


# ---- helpers and statistics ------------------------------------------------------------------

def test_heartbeat_disarm_set_param_and_maybe_heartbeat(link, unit):
    connected(link, unit).arm(100)
    link.heartbeat(7, ack=True)
    hb = [m for m in unit.frames("HEARTBEAT") if m["host_step"] == 7]
    assert hb and hb[0]["session"] == unit.session and hb[0].flags & FLAG_ACK_REQ
    assert not link.maybe_heartbeat(8)  # one just went out
    link._last_feed_ns -= 200_000_000  # noqa: SLF001 - pretend 200 ms passed (> 125 ms)
    assert link.maybe_heartbeat(8)
    link.disarm()
    assert not link.armed and not unit.armed
    link.set_param("watchdog_ms", 500)
    sp = unit.frames("SET_PARAM")[0]
    assert sp["value"] == 500 and sp.flags & FLAG_ACK_REQ
    assert link.watchdog_ms == 500
    with pytest.raises(UserError, match="WATCHDOG_MS"):
        link.set_param("WATCHDOG_MS", 10)
    with pytest.raises(UserError, match="param"):
        link.set_param("NOPE", 1)


def test_stats_keys_present(link, unit):
    connected(link, unit).arm(100)
    link.fire(1, [1] * 18)
    unit.send("HK", pu_time_us=1, state=3, watchdog_remaining_ms=200, rx_frames=42,
              crc_errors=1, cobs_errors=0, length_errors=0, seq_gaps=0, uart_overruns=0,
              session_errors=0, last_step=1, open_mask=0, failed_mask=0, stuck_mask=0,
              tank_kPa=2000)
    os.write(unit.master, b"\x05garbage\x00")  # a damaged frame: counted, then resync
    sync(link)
    st = link.stats()
    for key in ("frames_sent", "frames_received", "crc_errors", "cobs_errors",
                "length_errors", "other_protocol_errors", "retries", "rtt_ms_p50",
                "rtt_ms_p99", "deadline_misses", "resets_detected", "unit_rx_frames",
                "unit_seq_gaps", "unit_session_errors"):
        assert key in st, key
    assert st["unit_rx_frames"] == 42
    assert st["frames_sent"] >= 10 + 2 + 2 and st["frames_received"] >= 10
    assert st["crc_errors"] + st["cobs_errors"] + st["length_errors"] \
        + st["other_protocol_errors"] == 1
    assert st["rtt_samples"] >= 12  # the pings and the two lockstep exchanges


# ---- another writer on the line (issue 13) ------------------------------------------------------

def test_connect_resyncs_with_a_lone_zero_and_sends_a_fresh_host_nonce(unit):
    """docs/protocol.md sections 1 and 3: a lone 0x00 before HELLO ends any partial frame the
    unit holds; every HELLO carries a new 32-bit nonce from os.urandom."""
    sent: list[bytes] = []
    with Link(unit.path, ping_burst=2, on_bytes=lambda d, _t, b: d == "tx" and sent.append(b)) \
            as lk:
        lk.open()
        unit.boot()
        lk.connect()
        lk.reconnect(boot_timeout_s=0.1)
    hello_id = bytes([codec.MESSAGES["HELLO"].id])
    first_hello = next(i for i, b in enumerate(sent) if b != b"\x00"
                       and codec.Decoder().feed(b)[0].name == "HELLO")
    assert sent[first_hello - 1] == b"\x00" and hello_id
    nonces = [m["host_nonce"] for m in unit.frames("HELLO")]
    assert len(nonces) == 2 and nonces[0] != nonces[1]


def test_arm_sends_the_next_step_of_the_session(link, unit):
    connected(link, unit).arm(500)
    assert unit.frames("ARM_CONFIRM")[-1]["next_step"] == 1
    for step in (1, 2, 3):
        link.fire(step, [10] * 18)
    link.disarm()
    link.arm(500)
    assert unit.frames("ARM_CONFIRM")[-1]["next_step"] == 4  # after every step of the session
    link.connect()  # a new session: its steps start again
    link.arm(500, next_step=58)  # or where the host says (a reconnect mid-burn)
    assert unit.frames("ARM_CONFIRM")[-1]["next_step"] == 58


def test_fault_inject_carries_the_session(link, unit):
    unit.faults_on = True
    connected(link, unit)
    assert link.inject_fault("FAIL_OFF", 2) == "ACCEPTED"
    assert unit.frames("FAULT_INJECT")[-1]["session"] == link.session


def test_a_lockout_stops_a_fire_at_once_naming_another_writer(link, unit):
    """REQ 13.1: the unit locked another writer out (and voided our session): the FIRE
    waiting for its report fails at once with one line naming the cause, and so does every
    later command, until a new connect."""
    connected(link, unit).arm(500)
    link.fire(1, [10] * 18)
    unit.lockout_at_step = 2
    t0 = time.monotonic()
    with pytest.raises(LinkError, match="another writer on the line") as exc:
        link.fire(2, [10] * 18)
    assert time.monotonic() - t0 < link.give_up_s  # not the give-up timeout
    msg = str(exc.value)
    assert "\n" not in msg and "LOCKOUT" in msg and "refused 8 commands" in msg
    assert not link.armed and link.stats()["foreign_refusals"] >= 8
    with pytest.raises(LinkError, match="another writer on the line"):
        link.heartbeat(3)
    link.connect()
    link.arm(500)
    assert list(link.fire(3, [10] * 18).executed_ms) == [10] * 18


def test_a_lockout_ends_a_chain_naming_another_writer(link, unit):
    connected(link, unit).arm(500)
    unit.lockout_at_step = 3
    with pytest.raises(LinkError, match="another writer on the line"):
        link.fire_chain(1, [10] * 18, lambda res: (res.step + 1, [10] * 18))
    assert [f["step"] for f in unit.frames("FIRE")][-1] == 3
