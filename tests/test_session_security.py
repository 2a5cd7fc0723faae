"""Issue 13 deliverables 1-3 on the unit core (sans-IO, unit clock only, no sleeps).

- A writer without the session never gets a command executed, however many it sends: the
  token is 32 bits and unpredictable, and the ``session_error_limit``-th wrong token of a
  session locks the unit out (valves closed, SAFE with INTRUSION, session void, LOCKOUT).
- No replay: a token never comes from a seed, a capture of one session does nothing in the
  next, and a FIRE outside the step window is refused.
- FAULT_INJECT needs the session; a reset keeps hardware faults and ends link faults; HK
  counts since the last boot.
docs/protocol.md sections 3, 5 and 6 are the requirements quoted.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_unit_core import ARMED, ARMING, FAULT_ST, SAFE, Bench, bench_in, events, reply
from thruster_hil.firmware_bridge import codec
from thruster_hil.firmware_bridge.codec import Decoder
from thruster_hil.firmware_bridge.dictionary import (
    DICT_HASH,
    ENUMS,
    EVENT,
    FAULT,
    FLAG_ACK_REQ,
    LIMITS,
    MODE,
    RESULT,
)
from thruster_hil.firmware_bridge.unit import UnitCore, mix32, step_window

R = RESULT
REASON = ENUMS["safe_reason"]
LIMIT = LIMITS["session_error_limit"]
W_MIN = LIMITS["step_window_min"]
MS = 1000
FOREIGN_STEP = 0x7F000000  # every step the blind writer uses is at or above this

_FOREIGN_FIELDS = {
    "FIRE": lambda k: dict(
        step=FOREIGN_STEP + k, valid_for_ms=0, bank=k % 2, mask=0xFFFF, on_ticks=[200] * 16
    ),
    "ARM_REQUEST": lambda k: {},
    "ARM_CONFIRM": lambda k: dict(
        nonce=k * 2654435761 & 0xFFFFFFFF, max_on_ticks=1000, next_step=FOREIGN_STEP + k
    ),
    "DISARM": lambda k: {},
    "SET_PARAM": lambda k: dict(param=1, value=2000),
    "FAULT_INJECT": lambda k: dict(fault=FAULT["STUCK_OPEN"], arg=k % 32),
    "HEARTBEAT": lambda k: dict(host_step=k),
}
FOREIGN_KINDS = tuple(_FOREIGN_FIELDS)


def foreign(kind: str, token: int, k: int, seq: int) -> bytes:
    """One frame of the blind writer: valid in every way but its token."""
    return codec.encode_fields(kind, seq, 0, dict(session=token, **_FOREIGN_FIELDS[kind](k)))


def wrong_token(rng: random.Random, session: int | None) -> int:
    while True:
        t = rng.getrandbits(32)
        if t != session:
            return t


# ---------------------------------------------------------------------------- FAULT_INJECT


@pytest.mark.parametrize("state", [SAFE, ARMING, ARMED, FAULT_ST])
def test_fault_inject_without_the_session_is_refused_in_every_state(state):
    """REQ 13.3: FAULT_INJECT needs the session like every command but HELLO, PING, STOP_ALL."""
    b = bench_in(state)
    for kind in ("STUCK_OPEN", "FAIL_OFF", "TANK_PRESSURE", "RESET", "DROP_RX"):
        msgs = b.send(
            "FAULT_INJECT", flags=FLAG_ACK_REQ, session=b.u.session ^ 1, fault=FAULT[kind], arg=0
        )
        assert reply(msgs)["result"] == R["BAD_SESSION"]
        assert not events(msgs, "FAULT_INJECTED")
    assert (b.u.stuck, b.u.failed, b.u.tank_kpa, b.u.drop_rx) == (0, 0, 1800, 0)
    assert b.u.boot_count == 1 and b.u.state == state


def test_fault_inject_before_any_hello_is_refused():
    b = Bench()
    r = reply(
        b.send("FAULT_INJECT", flags=FLAG_ACK_REQ, session=0, fault=FAULT["STUCK_OPEN"], arg=3)
    )
    assert r["result"] == R["BAD_SESSION"] and b.u.stuck == 0 and b.u.open_mask() == 0


def test_a_reset_keeps_hardware_faults_ends_link_faults_and_zeroes_hk_counters():
    """Section 5: FAIL_OFF / STUCK_OPEN / tank pressure model hardware and survive every reset
    but power-on; DROP_RX / CORRUPT_TX / STALL_MS end; HK counters count since the boot."""
    b = bench_in(SAFE)
    b.inject("STUCK_OPEN", 3)
    b.inject("FAIL_OFF", 4)
    b.inject("TANK_PRESSURE", 1500)
    b.inject("DROP_RX", 0)
    b.inject("CORRUPT_TX", 0)
    b.send("HEARTBEAT", session=b.u.session ^ 1, host_step=0)  # a session error
    b.u.drop_rx, b.u.corrupt_tx = 5, 5  # set directly: injected they would eat the next frames
    assert b.u.hk_fields(b.t)["session_errors"] == 1
    b.decode(b.u.reset(b.t))
    assert (b.u.stuck, b.u.failed, b.u.tank_kpa) == (1 << 3, 1 << 4, 1500)
    assert (b.u.drop_rx, b.u.corrupt_tx, b.u.stall_until) == (0, 0, None)
    hk = b.u.hk_fields(b.t)
    assert all(hk[k] == 0 for k in ("rx_frames", "crc_errors", "session_errors", "seq_gaps"))
    assert b.u.counters["session_errors"] == 1  # the emulator's log keeps the run's total


# ---------------------------------------------------------------------------- tokens


def test_token_never_comes_from_the_seed():
    """REQ 13.2: two units with the same rng_seed (the emulator's --seed) and the same host
    nonce still hand out different tokens."""
    tokens = []
    for _ in range(2):
        b = Bench(seed=7)
        tokens.append(b.hello(host_nonce=1234)["session"])
    assert tokens[0] != tokens[1] and 0 not in tokens


def test_token_is_32_bits_mixed_from_host_nonce_and_unit_entropy():
    """With a fixed unit entropy (a deterministic QEMU) the host nonce alone makes it new."""
    u = UnitCore(entropy=lambda: 0xDEADBEEF)
    u.boot(0)
    seen = set()
    dec = Decoder()
    for k in range(64):
        out = u.receive(
            codec.encode(
                "HELLO",
                k,
                0,
                proto_ver=1,
                dict_hash=DICT_HASH,
                mode=0,
                period_ms=100,
                host_nonce=k * 7919,
            ),
            10 * k,
        )
        seen.add(next(m for m in dec.feed(out) if m.name == "HELLO_ACK")["session"])
    assert len(seen) == 64 and 0 not in seen
    assert max(seen) >= 1 << 16  # not confined to the old 16 bits


def test_mix32_reference_values():
    """The finaliser both ends compute (unit.c's unit_mix32 is tested equal through the
    host harness): MurmurHash3 fmix32; fixed points checked by hand from its definition."""
    assert mix32(0) == 0
    assert mix32(1) == 0x514E28B7
    assert mix32(0xFFFFFFFF) == 0x81F16F39


# ---------------------------------------------------------------------------- lockout


def test_lockout_at_the_limit_closes_valves_and_voids_the_session():
    """REQ 13.1: the limit-th wrong token in a session: every valve closed (a REALTIME pulse
    cut and reported aborted), SAFE_ENTERED INTRUSION, LOCKOUT(arg0 count, arg1 msg_id)."""
    b = Bench()
    b.hello(mode=MODE["REALTIME"], period_ms=1000)
    b.arm()
    b.fire(1, {0: 500})
    assert b.u.open_mask() == 1
    token = b.u.session
    rng = random.Random(1)
    for k in range(LIMIT - 1):
        msgs = b.send(
            "FIRE",
            session=wrong_token(rng, token),
            step=FOREIGN_STEP + k,
            valid_for_ms=0,
            bank=0,
            mask=1,
            on_ticks=[100] + [0] * 15,
        )
        assert reply(msgs)["result"] == R["BAD_SESSION"] and not events(msgs, "LOCKOUT")
    assert b.u.state == ARMED and b.u.open_mask() == 1
    b.t += 10 * MS
    msgs = b.send("SET_PARAM", session=wrong_token(rng, token), param=1, value=2000)
    names = [m.name for m in msgs]
    assert names.index("VALVE_REPORT") < names.index("EVENT", names.index("VALVE_REPORT"))
    report = next(m for m in msgs if m.name == "VALVE_REPORT")
    assert report["flags"] & 2 and report["executed_ticks"][0] == 10
    (safe,) = events(msgs, "SAFE_ENTERED")
    assert safe["arg0"] == REASON["INTRUSION"]
    (out,) = events(msgs, "LOCKOUT")
    assert (out["arg0"], out["arg1"], out["state"]) == (LIMIT, 0x30, SAFE)
    assert b.u.state == SAFE and b.u.session is None and b.u.open_mask() == 0
    assert reply(b.fire(2, {0: 10}, session=token))["result"] == R["BAD_SESSION"]
    assert b.hello()["result"] == R["ACCEPTED"]  # a new HELLO opens a new session


def test_lockout_counts_per_session_and_not_without_one():
    b = Bench()
    for _ in range(3 * LIMIT):  # no session yet: counted in HK, nothing to lock out
        msgs = b.send("ARM_REQUEST", session=12345)
        assert not events(msgs, "LOCKOUT")
    assert b.u.hk_fields(b.t)["session_errors"] == 3 * LIMIT
    b.hello()
    for _ in range(LIMIT - 1):
        b.send("DISARM", session=b.u.session ^ 0x100)
    b.hello()  # a new session starts the count again
    for _ in range(LIMIT - 1):
        assert not events(b.send("DISARM", session=b.u.session ^ 0x100), "LOCKOUT")
    assert events(b.send("DISARM", session=b.u.session ^ 0x100), "LOCKOUT")


def test_lockout_in_fault_stays_fault():
    b = bench_in(FAULT_ST)
    for _ in range(LIMIT):
        msgs = b.send("HEARTBEAT", session=b.u.session ^ 1, host_step=0)
    assert events(msgs, "LOCKOUT") and b.u.state == FAULT_ST and b.u.session is None


def test_the_right_token_after_the_lockout_is_refused():
    """The lockout is what stops a guesser: even the true token, guessed after the limit,
    executes nothing, because the session it belonged to is gone."""
    b = bench_in(ARMED)
    token = b.u.session
    for k in range(LIMIT):
        b.send(
            "FIRE",
            session=token ^ (k + 1),
            step=FOREIGN_STEP + k,
            valid_for_ms=0,
            bank=0,
            mask=1,
            on_ticks=[100] + [0] * 15,
        )
    r = reply(b.fire(FOREIGN_STEP + 99, {0: 100}, session=token))
    assert r["result"] == R["BAD_SESSION"] and b.u.counters["fires_executed"] == 0


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    burst=st.integers(1, 3 * LIMIT),
    kinds=st.lists(st.sampled_from(FOREIGN_KINDS), min_size=1, max_size=7),
    period_ms=st.sampled_from([10, 100]),
)
def test_blind_writer_interleaved_with_a_host_never_gets_anything_executed(
    seed, burst, kinds, period_ms
):
    """Property (REQ 13.1): any mix of wrong-token commands in bursts between a host's
    FIREs: none executes, the unit locks out at the limit, the host sees LOCKOUT."""
    run = _Interleaved(seed, period_ms)
    expected = live = 0  # the model: wrong tokens while a session exists, LIMIT per lockout
    for _cycle in range(6):
        run.host_cycle()  # the host has a session again (a new HELLO after a lockout)
        run.attack(burst, kinds)
        for _ in range(burst):
            live += 1
            if live == LIMIT:
                expected += 1
                break
        else:
            continue
        live = 0
    assert run.foreign_executed == 0
    assert run.lockouts_seen == expected
    assert run.core.counters["session_errors"] == 6 * burst


@pytest.mark.slow
def test_a_million_blind_guesses_execute_nothing():
    """REQ 13.1 acceptance: >= 10^6 blind guesses (FIRE, ARM_*, DISARM, SET_PARAM,
    FAULT_INJECT, HEARTBEAT, random tokens) at the pacing that worked against the 16-bit token
    (3.2 frames per ms: 32 per 10 ms cycle), every one of them made while a session exists
    (the host opens a new one as soon as it hears LOCKOUT). 0 executed, a lockout per session,
    the host told every time."""
    run = _Interleaved(seed=13, period_ms=10)
    total = 0
    while total < 1_000_000:
        run.host_cycle()
        total += run.attack(LIMIT, FOREIGN_KINDS)
    assert run.foreign_executed == 0
    assert run.core.counters["session_errors"] == total
    assert run.lockouts_seen == total // LIMIT  # every session ended by its lockout, heard
    assert run.host_fires > 0 and run.host_fires == run.core.counters["fires_executed"]


class _Interleaved:
    """A legitimate host (HELLO, ARM, one FIRE per cycle, a new session after a LOCKOUT) and a
    blind writer sharing one UnitCore on a fake unit clock."""

    def __init__(self, seed: int, period_ms: int):
        erng = random.Random(seed ^ 0x5EED)
        self.core = UnitCore(n_channels=32, rng_seed=seed, entropy=lambda: erng.getrandbits(32))
        self.rng = random.Random(seed)
        self.dec = Decoder()
        self.t = 0
        self.seq = 0
        self.period_us = period_ms * MS
        self.period_ms = period_ms
        self.session: int | None = None
        self.step = 0
        self.armed = False
        self.host_fires = 0
        self.lockouts_seen = 0
        self.foreign_executed = 0
        self.k = 0
        self._read(self.core.boot(0))

    def _read(self, data: bytes) -> list:
        msgs = self.dec.feed(data)
        for m in msgs:
            if m.name == "EVENT" and m["event"] == EVENT["LOCKOUT"]:
                self.lockouts_seen += 1
                self.session, self.armed = None, False
            elif m.name == "VALVE_REPORT" and m["step"] >= FOREIGN_STEP:
                self.foreign_executed += 1
        self._check_journal()
        return msgs

    def _check_journal(self) -> None:
        for rec in self.core.journal:
            if rec["ev"] == "fire" and (
                rec["step"] >= FOREIGN_STEP or rec["session"] != self.core.session
            ):
                self.foreign_executed += 1
        self.core.journal.clear()

    def _send(self, name: str, **fields) -> list:
        self.seq = (self.seq + 1) % codec.SEQ_MODULO
        if name != "HELLO":
            fields["session"] = self.session
        return self._read(self.core.receive(codec.encode(name, self.seq, 0, **fields), self.t))

    def host_cycle(self) -> None:
        self.t += self.period_us
        self._read(self.core.tick(self.t))
        if self.session is None:
            ack = next(
                m
                for m in self._send(
                    "HELLO",
                    proto_ver=1,
                    dict_hash=DICT_HASH,
                    mode=MODE["LOCKSTEP"],
                    period_ms=self.period_ms,
                    host_nonce=self.rng.getrandbits(32),
                )
                if m.name == "HELLO_ACK"
            )
            self.session = ack["session"]
        if not self.armed:
            ch = next(m for m in self._send("ARM_REQUEST") if m.name == "ARM_CHALLENGE")
            acks = [
                m
                for m in self._send(
                    "ARM_CONFIRM", nonce=ch["nonce"], max_on_ticks=5, next_step=self.step + 1
                )
                if m.name == "ACK"
            ]
            assert acks[0]["result"] == R["ACCEPTED"]
            self.armed = True
        self.step += 1
        msgs = self._send(
            "FIRE", step=self.step, valid_for_ms=0, bank=0, mask=1, on_ticks=[5] + [0] * 15
        )
        if any(m.name == "VALVE_REPORT" and m["step"] == self.step for m in msgs):
            self.host_fires += 1

    def attack(self, n: int, kinds) -> int:
        frames = []
        for _ in range(n):
            kind = kinds[self.k % len(kinds)]
            frames.append(
                foreign(
                    kind,
                    wrong_token(self.rng, self.core.session),
                    self.k,
                    self.rng.randrange(codec.SEQ_MODULO),
                )
            )
            self.k += 1
        self._read(self.core.receive(b"".join(frames), self.t))
        return n


# ---------------------------------------------------------------------------- replay


def _capture_session(u: UnitCore, t0: int) -> tuple[bytes, int]:
    """A host session on ``u`` (HELLO, ARM, FIREs 1..85); returns what the host sent (the
    capture) and the token it had."""
    sent = []
    dec = Decoder()
    seq = iter(range(100, 16000))
    token = nonce = 0

    def send(t, name, **fields):
        nonlocal token, nonce
        if name != "HELLO":
            fields["session"] = token
        frame = codec.encode(name, next(seq), 0, **fields)
        sent.append(frame)
        for m in dec.feed(u.receive(frame, t)):
            if m.name == "HELLO_ACK":
                token = m["session"]
            elif m.name == "ARM_CHALLENGE":
                nonce = m["nonce"]

    send(
        t0, "HELLO", proto_ver=1, dict_hash=DICT_HASH, mode=0, period_ms=100, host_nonce=0x1234
    )  # a host that even reuses its nonce
    send(t0 + MS, "ARM_REQUEST")
    send(t0 + 2 * MS, "ARM_CONFIRM", nonce=nonce, max_on_ticks=50, next_step=1)
    for step in range(1, 86):
        send(
            t0 + (3 + step) * MS,
            "FIRE",
            step=step,
            valid_for_ms=0,
            bank=0,
            mask=1,
            on_ticks=[20] + [0] * 15,
        )
    return b"".join(sent), token


def test_a_capture_replayed_into_a_later_session_executes_nothing():
    """REQ 13.2: the issue's replay (a capture of session A, its FIRE step 85 replayed while
    the host of session B is at step 7), on two units seeded identically."""
    a = UnitCore(rng_seed=7)
    a.boot(0)
    capture, token_a = _capture_session(a, 1000)
    assert a.counters["fires_executed"] == 85

    b = Bench(seed=7)  # same seed, as the campaign runs its emulators
    b.hello(host_nonce=0x1234)
    assert b.u.session != token_a
    b.arm()
    for step in range(1, 8):
        b.fire(step, {0: 20})
    fires_before = b.u.counters["fires_executed"]
    # The whole capture, minus its HELLO (that would just open another session B' the
    # replaying writer cannot read), then with it: nothing of session A executes.
    hello_end = capture.index(b"\x00") + 1
    b.decode(b.u.receive(capture[hello_end:], b.t))
    assert b.u.counters["fires_executed"] == fires_before
    assert b.u.state == SAFE and b.u.session is None  # the lockout ended session B
    b.hello(host_nonce=0x1234)
    b.decode(b.u.receive(capture, b.t + MS))  # HELLO opens B'', the rest has A's token
    assert b.u.counters["fires_executed"] == fires_before
    assert all(s != token_a for s, *_ in b.u.executed_log)


# ---------------------------------------------------------------------------- step window


@pytest.mark.parametrize(
    ("watchdog_ms", "period_ms", "window"),
    [(250, 100, W_MIN), (250, 10, 26), (2000, 10, 201), (50, 10000, W_MIN)],
)
def test_step_window_covers_every_step_lost_before_the_watchdog(watchdog_ms, period_ms, window):
    assert step_window(watchdog_ms, period_ms) == window


def test_fire_steps_outside_the_window_are_refused_and_fire_nothing():
    b = bench_in(SAFE)
    b.next_step = 1000
    b.arm()
    w = b.u.step_window
    assert w == W_MIN
    for step, result in ((999, "STALE"), (1000 + w, "STEP_AHEAD"), (2**32 - 1, "STEP_AHEAD")):
        msgs = b.fire(step, {0: 10})
        assert reply(msgs)["result"] == R[result]
        (ev,) = events(msgs, "STALE_FIRE")
        assert ev["arg2"] == (3 if result == "STEP_AHEAD" else 1)
    assert b.u.counters["fires_executed"] == 0 and b.u.state == ARMED
    assert reply(b.fire(999 + w, {0: 10})).name == "VALVE_REPORT"  # the window's last step
    assert reply(b.fire(999 + 2 * w, {0: 10})).name == "VALVE_REPORT"  # it moved with it
    assert reply(b.fire(1000 + 3 * w, {0: 10}))["result"] == R["STEP_AHEAD"]


def test_steps_are_remembered_across_disarm_and_rearm_and_forgotten_at_hello():
    b = bench_in(ARMED)
    b.fire(5, {0: 10})
    b.send("DISARM")
    b.arm_request()
    r = reply(b.send("ARM_CONFIRM", nonce=b.nonce, max_on_ticks=100, next_step=5))
    assert r["result"] == R["STALE"] and b.u.state == ARMING  # step 5 already executed
    r = reply(b.send("ARM_CONFIRM", nonce=b.nonce, max_on_ticks=100, next_step=40))
    assert r["result"] == R["ACCEPTED"]  # a host may move on (a reconnect mid-burn)
    assert reply(b.fire(5, {0: 10}))["flags"] & 4  # the last executed step: a duplicate
    assert reply(b.fire(39, {0: 10}))["result"] == R["STALE"]
    assert reply(b.fire(40, {0: 10})).name == "VALVE_REPORT"
    b.hello()
    b.next_step = 1
    b.arm()
    assert reply(b.fire(1, {0: 10})).name == "VALVE_REPORT"  # a new session starts again


def test_arm_confirm_next_step_zero_is_bad_param():
    b = bench_in(SAFE)
    b.arm_request()
    r = reply(b.send("ARM_CONFIRM", nonce=b.nonce, max_on_ticks=100, next_step=0))
    assert r["result"] == R["BAD_PARAM"] and b.u.state == ARMING


def test_arm_disabled_has_its_own_result_and_reason():
    """Section 4 gap: the board's arm-enable input. UnitCore mirrors unit.c."""
    b = bench_in(ARMED)
    msgs = b.decode(b.u.set_arm_enable(False, b.t))
    assert events(msgs, "SAFE_ENTERED")[0]["arg0"] == REASON["ARM_DISABLED"]
    b.arm_request()
    r = reply(b.send("ARM_CONFIRM", nonce=b.nonce, max_on_ticks=100))
    assert r["result"] == R["ARM_DISABLED"] and b.u.state == ARMING
    b.u.set_arm_enable(True, b.t)
    assert reply(b.send("ARM_CONFIRM", nonce=b.nonce, max_on_ticks=100))["result"] == R["ACCEPTED"]


# ---------------------------------------------------------------------------- spec gaps (4)


@pytest.mark.parametrize("state", [SAFE, ARMING, ARMED, FAULT_ST])
def test_arm_confirm_disarm_set_param_are_always_acked_the_others_only_on_request(state):
    """Section 4, Acknowledgement: ARM_CONFIRM, DISARM and SET_PARAM have no other reply, so
    they get an ACK without ACK_REQ in every state (DISARM in SAFE too); accepted HEARTBEAT,
    STOP_ALL and FAULT_INJECT only with ACK_REQ."""
    b = bench_in(state)
    assert reply(b.send("SET_PARAM", param=2, value=100)).name == "ACK"
    assert [m.name for m in b.send("HEARTBEAT", host_step=1)] == []
    assert not [m for m in b.send("FAULT_INJECT", fault=FAULT["CLEAR"], arg=0) if m.name == "ACK"]
    assert not [m for m in b.send("STOP_ALL") if m.name == "ACK"]
    for s in (SAFE, ARMING):
        b = bench_in(s)
        if s == ARMING:
            assert reply(b.send("ARM_CONFIRM", nonce=b.nonce, max_on_ticks=10)).name == "ACK"
        assert reply(b.send("DISARM"))["result"] == R["ACCEPTED"]


def test_hk_comes_every_100_ms_from_boot_before_any_hello():
    b = Bench()
    hks = [m for m in b.tick(LIMITS["hk_period_ms_default"] * MS) if m.name == "HK"]
    assert len(hks) == 1 and hks[0]["state"] == SAFE and b.u.session is None
    assert [m.name for m in b.tick(99 * MS)] == []
    assert [m.name for m in b.tick(1 * MS)] == ["HK"]


def test_hello_bad_mode_or_period_keeps_the_session_and_its_arming():
    b = bench_in(ARMED)
    s = b.u.session
    for kw, result in (({"mode": 7}, "BAD_MODE"), ({"period_ms": 5}, "BAD_PARAM")):
        r = b.hello(**kw)
        assert r["result"] == R[result] and r["session"] == 0
        assert b.u.session == s and b.u.state == ARMED


def test_every_fire_of_the_session_in_armed_feeds_the_watchdog():
    """Section 6: executed, duplicate, STALE, STEP_AHEAD and bad-bank FIREs all feed it."""
    b = bench_in(ARMED)
    wd = b.u.watchdog_ms * MS
    b.fire(1, {0: 5})
    for step, bank in ((1, 0), (0, 0), (10_000, 0), (2, 9)):  # dup, stale, ahead, bad bank
        b.t += wd - MS
        b.fire(step, {0: 5}, bank=bank)
        assert b.u.state == ARMED
    b.t += wd - MS
    b.send(
        "FIRE", session=b.u.session ^ 1, step=3, valid_for_ms=0, bank=0, mask=1, on_ticks=[5] * 16
    )  # a wrong token feeds nothing
    assert events(b.tick(MS), "WATCHDOG_TRIP")
