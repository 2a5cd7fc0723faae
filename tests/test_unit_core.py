"""UnitCore, the unit's logic, driven with explicit unit time (no sleeps, no I/O).

Covers docs/protocol.md sections 3-6: the full state table, the two-step ARM interlock, clamps
and the min-on rule, idempotent FIRE, STOP_ALL everywhere, the link watchdog on the unit clock,
sessions, the dictionary check, faults, health, HK, retransmissions; a hypothesis state machine
against a small reference model of the table; garbage never crashes it.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from thruster_hil.firmware_bridge import codec, statetable
from thruster_hil.firmware_bridge.codec import Decoder, Message
from thruster_hil.firmware_bridge.dictionary import (
    DICT_HASH,
    ENUMS,
    EVENT,
    FAULT,
    FLAG_ACK_REQ,
    FLAG_RETRANSMIT,
    LIMITS,
    MODE,
    RESULT,
    STATE,
)
from thruster_hil.firmware_bridge.unit import UnitCore

SAFE, ARMING, ARMED, FAULT_ST = STATE["SAFE"], STATE["ARMING"], STATE["ARMED"], STATE["FAULT"]
LOCKSTEP, REALTIME = MODE["LOCKSTEP"], MODE["REALTIME"]
REASON = ENUMS["safe_reason"]
PARAM = ENUMS["param"]
MS = 1000
SESSION_CMDS = {
    "HEARTBEAT",
    "ARM_REQUEST",
    "ARM_CONFIRM",
    "DISARM",
    "FIRE",
    "SET_PARAM",
    "FAULT_INJECT",
}


class Bench:
    """A test host around one UnitCore: encodes commands with its own sequence counts, decodes
    everything the unit says (asserting it is well formed), keeps the unit clock."""

    def __init__(self, seed: int = 1, boot: bool = True, **kw):
        self.u = UnitCore(rng_seed=seed, **kw)
        self.t = 0
        self.seq = 0
        self.dec = Decoder()
        self.boot = self.decode(self.u.boot(0)) if boot else []
        self.nonce = 0
        self.next_step = 1  # what ARM_CONFIRM says unless a test says otherwise

    def decode(self, data: bytes) -> list[Message]:
        items = self.dec.feed(data)
        assert all(isinstance(m, Message) for m in items), items
        return items

    def send(
        self, name: str, flags: int = 0, seq: int | None = None, at: int | None = None, **fields
    ) -> list[Message]:
        if at is not None:
            self.t = at
        if seq is None:
            seq, self.seq = self.seq, self.seq + 1
        if name in SESSION_CMDS and "session" not in fields:
            fields["session"] = self.u.session or 0
        if name == "HELLO":
            fields.setdefault("host_nonce", 0x600DF00D + seq)
            self.next_step = 1
        elif name == "ARM_CONFIRM":
            fields.setdefault("next_step", self.next_step)
        elif name == "FIRE":
            self.next_step = max(self.next_step, fields["step"] + 1)
        return self.decode(self.u.receive(codec.encode(name, seq, flags, **fields), self.t))

    def tick(self, dt_us: int = 0) -> list[Message]:
        self.t += dt_us
        return self.decode(self.u.tick(self.t))

    def hello(self, mode=LOCKSTEP, period_ms=100, dict_hash=DICT_HASH, **kw) -> Message:
        return reply(
            self.send(
                "HELLO", proto_ver=1, dict_hash=dict_hash, mode=mode, period_ms=period_ms, **kw
            )
        )

    def arm_request(self) -> list[Message]:
        msgs = self.send("ARM_REQUEST")
        ch = [m for m in msgs if m.name == "ARM_CHALLENGE"]
        if ch:
            self.nonce = ch[0]["nonce"]
        return msgs

    def arm(self, max_on_ticks: int = 1000) -> list[Message]:
        self.arm_request()
        msgs = self.send("ARM_CONFIRM", nonce=self.nonce, max_on_ticks=max_on_ticks)
        assert self.u.state == ARMED, msgs
        return msgs

    def fire(
        self,
        step: int,
        on: dict[int, int] | None = None,
        bank: int = 0,
        valid_for_ms: int = 0,
        **kw,
    ) -> list[Message]:
        on = on or {}
        ticks = [on.get(c, 0) for c in range(16)]
        mask = sum(1 << c for c in on)
        return self.send(
            "FIRE", step=step, valid_for_ms=valid_for_ms, bank=bank, mask=mask, on_ticks=ticks, **kw
        )

    def inject(self, fault: str, arg: int = 0, flags: int = FLAG_ACK_REQ) -> list[Message]:
        return self.send("FAULT_INJECT", flags=flags, fault=FAULT[fault], arg=arg)


def reply(msgs: list[Message]) -> Message:
    """The one reply (not an EVENT or periodic HK) among msgs."""
    out = [m for m in msgs if m.name not in ("EVENT", "HK")]
    assert len(out) == 1, msgs
    return out[0]


def events(msgs: list[Message], name: str | None = None) -> list[Message]:
    return [m for m in msgs if m.name == "EVENT" and (name is None or m["event"] == EVENT[name])]


def bench_in(state: int, **kw) -> Bench:
    b = Bench(**kw)
    b.hello()
    if state == ARMING:
        b.arm_request()
    elif state == ARMED:
        b.arm()
    elif state == FAULT_ST:
        b.u.force_fault(b.t)
    assert b.u.state == state
    return b


def test_boot_packet_and_state():
    b = Bench()
    boot = b.boot[0]
    assert boot.name == "BOOT" and boot["boot_count"] == 1 and boot["dict_hash"] == DICT_HASH
    assert boot["reset_cause"] == ENUMS["reset_cause"]["POWER_ON"] and boot["n_channels"] == 32
    assert b.u.state == SAFE and b.u.session is None


# ----------------------------------------------------------------------------- state table

R = RESULT
_ALL = (SAFE, ARMING, ARMED, FAULT_ST)
BOOT_ST = STATE["BOOT"]
STATE_NAME = {v: k for k, v in STATE.items()}
RESULT_NAME = {v: k for k, v in R.items()}


def transitions() -> list[tuple[str, int, int | None, int]]:
    """Every transition the state table (messages.toml) declares: (input, state, result, state
    after); result None for a cell where the input does nothing. A BOOT_DONE outside BOOT cannot
    happen (the unit starts only from BOOT): those cells are not stimulated."""
    out = []
    for cell in statetable.cells():
        if cell.kind == "none":
            if not (cell.input == "BOOT_DONE" and cell.state != BOOT_ST):
                out.append((cell.input, cell.state, None, cell.state))
        elif cell.kind == "refuse":
            out.append((cell.input, cell.state, cell.refusal, cell.state))
        else:
            out += [(cell.input, cell.state, r, n) for r, ns in cell.outcomes for n in ns]
    return out


def _tid(t) -> str:
    inp, state, result, after = t
    res = "nothing" if result is None else RESULT_NAME[result]
    return f"{inp}-{STATE_NAME[state]}-{res}-{STATE_NAME[after]}"


def _bench_in(state: int) -> Bench:
    if state == BOOT_ST:
        return Bench(boot=False)
    return bench_in(state)


def _command(b: Bench, inp: str, result: int | None, after: int) -> list[Message]:
    """Send command ``inp`` so that, in the bench's state, it ends in ``result`` (setting up what
    that result needs first: a low tank, the arm-enable input off, a floor, a first FIRE)."""
    a = FLAG_ACK_REQ
    action = statetable.COMMANDS[inp][b.u.state].kind == "action"
    if inp == "HELLO":
        kw = {
            "DICT_MISMATCH": {"dict_hash": DICT_HASH ^ 1},
            "BAD_MODE": {"mode": 7},
            "BAD_PARAM": {"period_ms": 5},
        }.get(RESULT_NAME.get(result), {})
        return b.send(
            "HELLO",
            **{"proto_ver": 1, "dict_hash": DICT_HASH, "mode": LOCKSTEP, "period_ms": 100, **kw},
        )
    if inp == "HEARTBEAT":
        return b.send("HEARTBEAT", flags=a, host_step=1)
    if inp == "PING":
        return b.send("PING", nonce=9, t1_host_us=123)
    if inp == "ARM_REQUEST":
        if action and result == R["REJECTED_STATE"]:
            b.inject("TANK_PRESSURE", MIN_FEED_KPA - 1)
        return b.arm_request()
    if inp == "ARM_CONFIRM":
        nonce, max_on = b.nonce, 100
        if action and result == R["ARM_DISABLED"]:
            b.u.set_arm_enable(False, b.t)
        elif action and result == R["BAD_PARAM"]:
            max_on = 0
        elif action and result == R["STALE"]:  # a floor this session already passed
            b.send("ARM_CONFIRM", nonce=b.nonce, max_on_ticks=100)
            b.fire(5, {0: 10})
            b.send("DISARM")
            b.arm_request()
            nonce = b.nonce
            b.next_step = 5
        elif result == R["BAD_NONCE"]:
            nonce ^= 0xDEAD
        return b.send("ARM_CONFIRM", nonce=nonce, max_on_ticks=max_on)
    if inp in ("DISARM",):
        return b.send("DISARM")
    if inp == "STOP_ALL":
        return b.send("STOP_ALL", flags=a)
    if inp == "FIRE":
        if result == R["DUPLICATE"]:
            b.fire(1, {0: 10})
            return b.fire(1, {0: 10})
        step, bank = {R["STALE"]: (0, 0), R["STEP_AHEAD"]: (1000, 0), R["BAD_PARAM"]: (1, 7)}.get(
            result, (1, 0)
        )
        return b.fire(step, {0: 10}, bank=bank)
    if inp == "SET_PARAM":
        value = 1 if result == R["BAD_PARAM"] else 300
        return b.send("SET_PARAM", param=PARAM["WATCHDOG_MS"], value=value)
    if inp == "FAULT_INJECT":
        if result == R["UNSUPPORTED"]:
            return b.send("FAULT_INJECT", flags=a, fault=99, arg=0)
        if result == R["BAD_PARAM"]:
            return b.inject("FAIL_OFF", 200)
        if after != b.u.state:  # RESET: the unit boots again into SAFE
            return b.inject("RESET")
        return b.inject("TANK_PRESSURE", 1500)
    raise AssertionError(inp)


def _outcome(msgs: list[Message]) -> int | None:
    """The result the unit's reply says: an ACK's or HELLO_ACK's result, ACCEPTED for the reply
    of an accepted command (PONG, ARM_CHALLENGE, VALVE_REPORT), DUPLICATE for a re-sent report;
    None when the unit said nothing (not even an ACK)."""
    replies = [m for m in msgs if m.name not in ("EVENT", "HK", "BOOT")]
    if not replies:
        return None
    r = replies[0]
    if r.name in ("ACK", "HELLO_ACK"):
        return r["result"]
    if r.name == "VALVE_REPORT" and r["flags"] & 4:
        return R["DUPLICATE"]
    return R["ACCEPTED"]


#: The evidence each event's action leaves (besides the state after it).
def _event_evidence(inp: str, b: Bench, msgs: list[Message], journal: list[dict]) -> bool:
    names = [m.name for m in msgs]
    reasons = [e["arg0"] for e in events(msgs, "SAFE_ENTERED")]
    return {
        "BOOT_DONE": "BOOT" in names,
        "RESET": "BOOT" in names,
        "WATCHDOG": bool(events(msgs, "WATCHDOG_TRIP")),
        "CHALLENGE_EXPIRED": b.u._nonce is None and b.u.state == ARMING,
        "ARM_IDLE": REASON["ARM_TIMEOUT"] in reasons,
        "TANK_LOW": REASON["LOW_PRESSURE"] in reasons,
        "LOCKOUT": bool(events(msgs, "LOCKOUT")),
        "ARM_ENABLE_OFF": REASON["ARM_DISABLED"] in reasons,
        "SELF_CHECK_FAULT": any(j.get("to") == "FAULT" for j in journal),
    }[inp]


def _event(b: Bench, inp: str) -> list[Message]:
    """Make event ``inp`` happen to the bench's unit (or try to: a timer that does not run in
    this state must not fire)."""
    if inp == "BOOT_DONE":
        return b.decode(b.u.boot(b.t))
    if inp == "RESET":
        return b.decode(b.u.reset(b.t))
    if inp == "WATCHDOG":
        return b.tick(LIMITS["watchdog_ms_default"] * MS + 1)
    if inp in ("CHALLENGE_EXPIRED", "ARM_IDLE"):
        ms = LIMITS["arm_challenge_ms" if inp == "CHALLENGE_EXPIRED" else "arm_idle_ms"] + 100
        msgs: list[Message] = []
        for _ in range(ms // 100):  # the link watchdog fed, nothing else
            b.t += 100 * MS
            msgs += b.send("HEARTBEAT", host_step=0)
        return msgs
    if inp == "TANK_LOW":
        return b.decode(b.u.set_tank_kpa(MIN_FEED_KPA - 1, b.t))
    if inp == "LOCKOUT":
        msgs = []
        for _ in range(LIMITS["session_error_limit"]):
            msgs += b.send("HEARTBEAT", host_step=0, session=(b.u.session or 0) ^ 0x8001)
        return msgs
    if inp == "ARM_ENABLE_OFF":
        return b.decode(b.u.set_arm_enable(False, b.t))
    if inp == "SELF_CHECK_FAULT":
        return b.decode(b.u.force_fault(b.t))
    raise AssertionError(inp)


@pytest.mark.parametrize("transition", transitions(), ids=_tid)
def test_every_declared_transition(transition):
    """Each transition the state table declares happens on UnitCore: the same result, the same
    state after, every valve closed outside ARMED (docs/protocol.md section 5)."""
    inp, state, result, after = transition
    b = _bench_in(state)
    fired = len(b.u.executed_log)
    if inp in statetable.EVENTS:
        seen = len(b.u.journal)
        msgs = _event(b, inp)
        assert _event_evidence(inp, b, msgs, b.u.journal[seen:]) == (result is not None), msgs
        if inp == "RESET":  # through BOOT: the BOOT packet, then BOOT_DONE's state
            assert b.u.state == statetable.EVENTS["BOOT_DONE"][after].next()
        else:
            assert b.u.state == after, msgs
    else:
        msgs = _command(b, inp, result, after)
        assert _outcome(msgs) == result, msgs
        assert b.u.state == after, msgs
        if result == R["ACCEPTED"] and inp == "FIRE":
            assert len(b.u.executed_log) == fired + 1
        elif inp == "FIRE":
            assert len(b.u.executed_log) <= fired + 1  # DUPLICATE: its first FIRE only
        if state in (ARMING, ARMED) and after == SAFE and not any(m.name == "BOOT" for m in msgs):
            assert events(msgs, "SAFE_ENTERED"), msgs  # (a reset is a new boot instead)
    if b.u.state != ARMED:
        assert b.u.open_mask() == 0


def test_every_cell_is_exercised():
    """The transitions above cover every (input, state) cell of the table but the BOOT_DONE ones
    that cannot happen."""
    covered = {(i, s) for i, s, _, _ in transitions()}
    cells = {(c.input, c.state) for c in statetable.cells()}
    assert cells - covered == {("BOOT_DONE", s) for s in STATE.values() if s != BOOT_ST}


def test_commands_are_dispatched_by_the_table(monkeypatch):
    """UnitCore asks the table, not its own state tests: a cell changed to a refusal is refused
    with that result, and nothing of the action happens."""
    row = dict(statetable.COMMANDS["PING"])
    row[SAFE] = statetable.Cell("PING", SAFE, "refuse", refusal=R["BAD_MODE"])
    monkeypatch.setitem(statetable.COMMANDS, "PING", row)
    b = bench_in(SAFE)
    r = reply(b.send("PING", nonce=9, t1_host_us=123))
    assert r.name == "ACK" and r["result"] == R["BAD_MODE"]


def test_rejected_commands_always_get_an_ack_without_ack_req():
    b = bench_in(SAFE)
    r = reply(b.fire(1, {0: 10}))  # no ACK_REQ flag
    assert r.name == "ACK" and r["result"] == R["REJECTED_STATE"] and r["msg_id"] == 0x20


def test_commands_without_ack_req_get_no_ack_when_accepted():
    b = bench_in(ARMED)
    assert b.send("HEARTBEAT", host_step=3) == []
    b2 = bench_in(SAFE)
    assert [m for m in b2.send("STOP_ALL") if m.name != "EVENT"] == []


# ----------------------------------------------------------------------------- sessions


@pytest.mark.parametrize(
    "name,fields",
    [
        ("HEARTBEAT", {"host_step": 1}),
        ("ARM_REQUEST", {}),
        ("ARM_CONFIRM", {"nonce": 1, "max_on_ticks": 5}),
        ("DISARM", {}),
        ("FIRE", {"step": 1, "valid_for_ms": 0, "bank": 0, "mask": 1, "on_ticks": [5] * 16}),
        ("SET_PARAM", {"param": 1, "value": 100}),
    ],
)
@pytest.mark.parametrize("state", (SAFE, ARMING, ARMED))
def test_wrong_session_is_rejected_and_counted(name, fields, state):
    b = bench_in(state)
    before = b.u.session
    msgs = b.send(name, session=before ^ 0x8001, **fields)
    r = reply(msgs)
    assert r.name == "ACK" and r["result"] == R["BAD_SESSION"]
    assert events(msgs, "SESSION_REJECTED")[0]["arg0"] == codec.MESSAGES[name].id
    assert b.u.counters["session_errors"] == 1 and b.u.state == state
    assert b.u.hk_fields(b.t)["session_errors"] == 1
    assert not b.u.executed_log


def test_no_session_before_hello():
    b = Bench()
    r = reply(b.send("ARM_REQUEST", session=0))
    assert r["result"] == R["BAD_SESSION"] and b.u.state == SAFE


def test_sessions_are_new_at_every_hello_and_never_zero():
    b = Bench()
    seen = [b.hello()["session"] for _ in range(300)]
    assert 0 not in seen
    assert all(x != y for x, y in zip(seen, seen[1:], strict=False))


def test_dict_mismatch_never_arms():
    b = bench_in(SAFE)
    old = b.u.session
    r = b.hello(dict_hash=DICT_HASH ^ 0x10)
    assert r["result"] == R["DICT_MISMATCH"] and r["session"] == 0
    for s in (0, old):
        assert reply(b.send("ARM_REQUEST", session=s))["result"] == R["BAD_SESSION"]
    assert b.u.state == SAFE
    r2 = reply(b.send("HELLO", proto_ver=2, dict_hash=DICT_HASH, mode=0, period_ms=100))
    assert r2["result"] == R["DICT_MISMATCH"]


def test_hello_bad_mode_and_period():
    b = bench_in(SAFE)
    s = b.u.session
    assert b.hello(mode=7)["result"] == R["BAD_MODE"]
    assert b.hello(period_ms=5)["result"] == R["BAD_PARAM"]
    assert b.u.session == s


# ----------------------------------------------------------------------------- ARM interlock


def test_wrong_nonce_goes_safe():
    b = bench_in(ARMING)
    msgs = b.send("ARM_CONFIRM", nonce=b.nonce + 1, max_on_ticks=10)
    assert reply(msgs)["result"] == R["BAD_NONCE"] and b.u.state == SAFE
    assert events(msgs, "SAFE_ENTERED")[0]["arg0"] == REASON["BAD_NONCE"]


def test_expired_nonce_is_refused():
    b = bench_in(ARMING)
    for _ in range(21):  # keep the link watchdog fed past the 2000 ms challenge
        b.t += 100 * MS
        b.send("HEARTBEAT", host_step=0)
    assert b.u.state == ARMING
    msgs = b.send("ARM_CONFIRM", nonce=b.nonce, max_on_ticks=10)
    assert reply(msgs)["result"] == R["BAD_NONCE"] and b.u.state == SAFE


def test_nonce_just_in_time_is_accepted():
    b = bench_in(ARMING)
    for _ in range(20):
        b.t += 100 * MS
        b.send("HEARTBEAT", host_step=0)
    assert reply(b.send("ARM_CONFIRM", nonce=b.nonce, max_on_ticks=10))["result"] == 0


def test_new_challenge_voids_the_old_nonce():
    b = bench_in(ARMING)
    old = b.nonce
    b.arm_request()
    assert b.nonce != old
    assert reply(b.send("ARM_CONFIRM", nonce=old, max_on_ticks=10))["result"] == R["BAD_NONCE"]


def test_fire_before_arm_is_refused():
    for state in (SAFE, ARMING):
        b = bench_in(state)
        assert reply(b.fire(1, {0: 10}))["result"] == R["REJECTED_STATE"]
        assert not b.u.executed_log


def test_arm_confirm_bad_max_on_ticks():
    b = bench_in(ARMING)
    assert reply(b.send("ARM_CONFIRM", nonce=b.nonce, max_on_ticks=0))["result"] == R["BAD_PARAM"]
    assert b.u.state == ARMING


# ----------------------------------------------------------------------------- clamps


def test_clamp_to_max_on_ticks_and_period():
    b = bench_in(SAFE)
    b.hello(period_ms=100)
    b.arm(max_on_ticks=50)
    msgs = b.fire(1, {0: 80, 1: 50, 2: 7})
    rep = reply(msgs)
    assert rep["executed_ticks"][:3] == (50, 50, 7) and rep["flags"] & 1
    ev = events(msgs, "CLAMPED")
    assert [(e["arg0"], e["arg1"], e["arg2"]) for e in ev] == [(0, 80, 50)]
    b2 = bench_in(SAFE)
    b2.hello(period_ms=20)
    b2.arm(max_on_ticks=1000)
    rep = reply(b2.fire(1, {3: 30}))
    assert rep["executed_ticks"][3] == 20 and rep["flags"] & 1


@pytest.mark.parametrize("asked,executed", [(0, 0), (1, 0), (2, 0), (3, 5), (4, 5), (5, 5), (6, 6)])
def test_min_on_rule(asked, executed):
    b = bench_in(ARMED)  # min_on_ticks 5
    msgs = b.fire(1, {4: asked})
    rep = reply(msgs)
    assert rep["executed_ticks"][4] == executed
    assert bool(rep["flags"] & 1) == (asked != executed)
    assert len(events(msgs, "CLAMPED")) == (asked != executed)


def test_unmasked_channels_are_not_touched():
    b = bench_in(ARMED)
    ticks = [20] * 16
    rep = reply(b.send("FIRE", step=1, valid_for_ms=0, bank=0, mask=0b101, on_ticks=ticks))
    assert rep["executed_ticks"] == (20, 0, 20) + (0,) * 13


def test_min_on_ticks_param():
    b = bench_in(SAFE)
    assert reply(b.send("SET_PARAM", param=PARAM["MIN_ON_TICKS"], value=0))["result"] == 0
    b.arm()
    assert reply(b.fire(1, {0: 1}))["executed_ticks"][0] == 1


def test_bank_beyond_channels_is_bad_param():
    b = bench_in(ARMED)
    assert reply(b.fire(1, {0: 10}, bank=2))["result"] == R["BAD_PARAM"]
    b2 = bench_in(ARMED, n_channels=20)
    rep = reply(b2.fire(1, {0: 10, 3: 10, 4: 10}, bank=1))  # channels 16..19 exist, 20 not
    assert rep["executed_ticks"][:5] == (10, 0, 0, 10, 0)


# ----------------------------------------------------------------------------- idempotent FIRE


def test_duplicate_step_resends_report_and_never_fires_twice():
    b = bench_in(ARMED)
    first = reply(b.fire(5, {0: 10}))
    assert first.name == "VALVE_REPORT" and first["flags"] == 0
    msgs = b.fire(5, {0: 10})  # new seq, same step
    again = reply(msgs)
    assert again.name == "VALVE_REPORT" and again["flags"] == 4
    assert again.seq == first.seq and again.flags & FLAG_RETRANSMIT
    assert again["executed_ticks"] == first["executed_ticks"]
    assert events(msgs, "DUP_FIRE")[0]["arg1"] == 5
    # A retransmission of the very frame (same seq, RETRANSMIT flag): same answer.
    again2 = reply(b.fire(5, {0: 10}, seq=b.seq - 1, flags=FLAG_RETRANSMIT))
    assert again2["flags"] == 4
    stale = b.fire(4, {0: 10})
    assert reply(stale)["result"] == R["STALE"] and events(stale, "STALE_FIRE")
    assert [e[1] for e in b.u.executed_log] == [5]
    assert b.u.counters["duplicate_fires"] == 2 and b.u.counters["stale_fires"] == 1


def test_steps_are_per_bank():
    b = bench_in(ARMED)
    assert reply(b.fire(7, {0: 10}, bank=0)).name == "VALVE_REPORT"
    assert reply(b.fire(7, {0: 10}, bank=1)).name == "VALVE_REPORT"
    assert sorted((e[1], e[2]) for e in b.u.executed_log) == [(7, 0), (7, 1)]


def test_step_memory_survives_rearm_within_a_session():
    b = bench_in(ARMED)
    reply(b.fire(9, {0: 10}))
    b.send("DISARM")
    b.arm()
    assert reply(b.fire(9, {0: 10}))["flags"] & 4  # duplicate: not fired again
    assert len(b.u.executed_log) == 1


# ----------------------------------------------------------------------------- STOP_ALL


@pytest.mark.parametrize("state", _ALL)
def test_stop_all_without_session_closes_valves(state):
    b = bench_in(state, n_channels=32)
    if state == ARMED:
        b.hello(mode=REALTIME, period_ms=1000)
        b.arm()
        b.fire(1, {0: 500, 1: 300})
        b.t += 100 * MS
        assert b.u.open_mask() == 0b11
    msgs = b.send("STOP_ALL")  # no session field at all
    assert b.u.open_mask() == 0
    assert b.u.state == (FAULT_ST if state == FAULT_ST else SAFE)
    if state == ARMED:
        rep = [m for m in msgs if m.name == "VALVE_REPORT"][0]
        assert rep["flags"] & 2 and rep["executed_ticks"][:2] == (100, 100)


# ----------------------------------------------------------------------------- watchdog


def _first_closed(b: Bench, limit_us: int) -> tuple[int, list[Message]]:
    """Tick the unit every 1 ms until the commanded valves are closed."""
    out: list[Message] = []
    while b.u.open_mask() and b.t < limit_us:
        out += b.tick(1 * MS)
    return b.t, out


@pytest.mark.parametrize("watchdog_ms", [250, 50, 1000])
def test_watchdog_closes_valves_on_unit_time_with_pulses_in_progress(watchdog_ms):
    b = bench_in(SAFE)
    b.send("SET_PARAM", param=PARAM["WATCHDOG_MS"], value=watchdog_ms)
    b.hello(mode=REALTIME, period_ms=5000)
    b.arm(max_on_ticks=5000)
    b.t += 10 * MS
    t_fire = b.t
    b.fire(1, {0: 3000, 15: 4000}, bank=0)
    b.fire(1, {2: 3000}, bank=1)
    assert b.u.open_mask() == (1 << 0) | (1 << 15) | (1 << 18)
    t_closed, msgs = _first_closed(b, t_fire + 10_000 * MS)
    assert watchdog_ms * MS <= t_closed - t_fire <= watchdog_ms * MS + 1 * MS
    assert b.u.state == SAFE
    trip = events(msgs, "WATCHDOG_TRIP")[0]
    assert trip["arg0"] == watchdog_ms
    assert events(msgs, "SAFE_ENTERED")[0]["arg0"] == REASON["WATCHDOG"]
    reps = [m for m in msgs if m.name == "VALVE_REPORT"]
    assert len(reps) == 2 and all(r["flags"] & 2 for r in reps)
    assert reps[0]["executed_ticks"][0] == watchdog_ms
    j = [r for r in b.u.journal if r["ev"] == "watchdog_trip"][0]
    assert j["closed_us"] - j["last_valid_us"] <= (watchdog_ms + 1) * MS


def test_watchdog_deadline_is_exact_with_next_deadline():
    b = bench_in(ARMED)
    t0 = b.t
    assert b.u.next_deadline_us() <= t0 + 250 * MS
    while b.u.state == ARMED:
        nxt = b.u.next_deadline_us()
        b.t = nxt
        b.tick()
    assert b.t == t0 + 250 * MS


def test_heartbeats_keep_it_armed_and_arm_idle_disarms():
    b = bench_in(ARMED)
    t0 = b.t
    msgs = []
    while b.t < t0 + 31_000 * MS and b.u.state == ARMED:
        b.t += 100 * MS
        msgs += b.send("HEARTBEAT", host_step=1)
    assert b.u.state == SAFE and t0 + 30_000 * MS <= b.t <= t0 + 30_100 * MS
    assert events(msgs, "SAFE_ENTERED")[-1]["arg0"] == REASON["ARM_TIMEOUT"]


def test_watchdog_in_arming():
    b = bench_in(ARMING)
    b.tick(249 * MS)
    assert b.u.state == ARMING
    msgs = b.tick(1 * MS)
    assert b.u.state == SAFE and events(msgs, "WATCHDOG_TRIP")


def test_fire_after_watchdog_deadline_does_not_execute():
    b = bench_in(ARMED)
    b.t += 300 * MS  # no tick() in between: receive() runs the due timers first
    msgs = b.fire(1, {0: 10})
    assert b.u.state == SAFE and events(msgs, "WATCHDOG_TRIP")
    assert [m for m in msgs if m.name == "ACK"][0]["result"] == R["REJECTED_STATE"]
    assert not b.u.executed_log


# ----------------------------------------------------------------------------- REALTIME


def test_realtime_pulses_and_report_at_the_end():
    b = bench_in(SAFE)
    b.hello(mode=REALTIME, period_ms=100)
    b.arm()
    t0 = b.t
    assert b.fire(1, {0: 20, 1: 40}) == []
    assert b.u.open_mask() == 0b11
    b.tick(20 * MS)
    assert b.u.open_mask() == 0b10
    msgs = b.tick(19 * MS)
    assert not [m for m in msgs if m.name == "VALVE_REPORT"]
    assert b.u.next_deadline_us() == t0 + 40 * MS
    msgs = b.tick(1 * MS)
    rep = reply(msgs)
    assert rep["executed_ticks"][:2] == (20, 40) and rep["flags"] == 0
    assert rep["t_start_pu_us"] == t0 and b.u.open_mask() == 0


def test_realtime_stale_by_valid_for():
    b = bench_in(SAFE)
    b.hello(mode=REALTIME, period_ms=100)
    b.arm()
    b.fire(1, {0: 10}, valid_for_ms=150)
    b.t += 100 * MS
    b.tick()
    b.fire(2, {0: 10}, valid_for_ms=150)  # 100 ms after the previous: fine
    b.t += 151 * MS
    b.tick()
    b.send("HEARTBEAT", host_step=2)
    b.t += 50 * MS
    b.send("HEARTBEAT", host_step=2)
    msgs = b.fire(3, {0: 10}, valid_for_ms=150)  # 201 ms after step 2
    assert reply(msgs)["result"] == R["STALE"]
    assert [e[1] for e in b.u.executed_log] == [1, 2]


def test_realtime_duplicate_while_running_gets_ack_duplicate():
    b = bench_in(SAFE)
    b.hello(mode=REALTIME, period_ms=100)
    b.arm()
    b.fire(1, {0: 50})
    assert reply(b.fire(1, {0: 50}))["result"] == R["DUPLICATE"]
    b.tick(50 * MS)
    assert len(b.u.executed_log) == 1


def test_realtime_new_fire_cuts_only_its_channels():
    b = bench_in(SAFE)
    b.hello(mode=REALTIME, period_ms=100)
    b.arm()
    b.fire(1, {0: 80, 1: 80})
    b.t += 30 * MS
    assert b.fire(2, {0: 10}) == []
    assert b.u.open_mask() == 0b11
    msgs = b.tick(10 * MS)  # step 2 ends
    assert [m["step"] for m in msgs if m.name == "VALVE_REPORT"] == [2]
    msgs = b.tick(40 * MS)  # step 1's channel 1 ends at 80
    rep = reply(msgs)
    assert rep["step"] == 1 and rep["executed_ticks"][:2] == (30, 80) and rep["flags"] & 2


def test_disarm_aborts_pulses_with_executed_ticks():
    b = bench_in(SAFE)
    b.hello(mode=REALTIME, period_ms=100)
    b.arm()
    b.fire(1, {0: 60})
    b.t += 25 * MS
    msgs = b.send("DISARM")
    rep = [m for m in msgs if m.name == "VALVE_REPORT"][0]
    assert rep["executed_ticks"][0] == 25 and rep["flags"] & 2 and b.u.open_mask() == 0


# ----------------------------------------------------------------------------- faults, health


def test_reset_fault():
    b = bench_in(SAFE)
    b.hello(mode=REALTIME, period_ms=100)
    b.arm()
    b.fire(1, {0: 60})
    old = b.u.session
    b.t += 10 * MS
    msgs = b.inject("RESET")
    names = [m.name for m in msgs]
    assert names.index("VALVE_REPORT") < names.index("BOOT")
    boot = [m for m in msgs if m.name == "BOOT"][0]
    assert boot["boot_count"] == 2 and boot["reset_cause"] == ENUMS["reset_cause"]["SOFTWARE"]
    assert boot.seq == 0  # a new boot starts its counts again
    assert b.u.state == SAFE and b.u.session is None and b.u.open_mask() == 0
    assert reply(b.fire(2, {0: 10}, session=old))["result"] == R["BAD_SESSION"]
    assert b.hello()["boot_count"] == 2


def test_fault_inject_unsupported_on_flight_build():
    b = Bench(test_build=False)
    b.hello()
    r = reply(b.inject("RESET", flags=0))
    assert r["result"] == R["UNSUPPORTED"] and b.u.boot_count == 1
    assert not b.boot[0].flags & 4


def test_fault_inject_bad_channel_and_kind():
    b = bench_in(SAFE)
    assert reply(b.inject("FAIL_OFF", 32))["result"] == R["BAD_PARAM"]
    assert reply(b.send("FAULT_INJECT", fault=99, arg=0))["result"] == R["UNSUPPORTED"]


def test_health_faults_in_valve_report_and_hk():
    b = bench_in(SAFE)
    b.hello(period_ms=100)
    msgs = b.inject("FAIL_OFF", 3)
    assert events(msgs, "FAULT_INJECTED")[0]["arg0"] == FAULT["FAIL_OFF"]
    b.inject("STUCK_OPEN", 5)
    b.inject("STUCK_OPEN", 17)
    b.inject("TANK_PRESSURE", 1500)
    b.arm()
    rep = reply(b.fire(1, {3: 20, 4: 20}))
    assert rep["executed_ticks"][3] == 0 and rep["executed_ticks"][4] == 20
    assert rep["executed_ticks"][5] == 100  # stuck open: the whole cycle
    assert rep["failed_mask"] == 1 << 3 and rep["stuck_mask"] == 1 << 5
    rep1 = reply(b.fire(1, {}, bank=1))
    assert rep1["stuck_mask"] == 1 << 1 and rep1["executed_ticks"][1] == 100
    hk = b.u.hk_fields(b.t)
    assert hk["failed_mask"] == 1 << 3 and hk["stuck_mask"] == (1 << 5) | (1 << 17)
    assert hk["tank_kPa"] == 1500 and hk["open_mask"] == (1 << 5) | (1 << 17)
    b.inject("CLEAR", 5)
    b.inject("CLEAR", 3)
    rep = reply(b.fire(2, {3: 20}))
    assert rep["failed_mask"] == 0 and rep["stuck_mask"] == 0 and rep["executed_ticks"][3] == 20


MIN_FEED_KPA = LIMITS["min_feed_kpa"]


def test_low_tank_pressure_while_armed_cuts_pulses_and_goes_safe():
    """REQ issue 7: below min_feed_kpa an armed unit closes every valve at once (pulses in
    progress reported aborted with the ticks they ran), goes SAFE with reason LOW_PRESSURE and
    the pressure in arg1; FIRE and ARM are refused while it stays low; a pressure that comes
    back leaves it SAFE until the host arms again."""
    b = bench_in(SAFE)
    b.hello(mode=REALTIME, period_ms=100)
    b.arm()
    b.fire(1, {0: 60, 1: 30})
    b.t += 10 * MS
    msgs = b.inject("TANK_PRESSURE", MIN_FEED_KPA - 1)
    names = [m.name for m in msgs]
    assert names.index("VALVE_REPORT") < names.index("EVENT", names.index("VALVE_REPORT"))
    rep = [m for m in msgs if m.name == "VALVE_REPORT"][0]
    assert rep["flags"] & 2 and rep["executed_ticks"][:2] == (10, 10)
    (safe,) = events(msgs, "SAFE_ENTERED")
    assert safe["arg0"] == REASON["LOW_PRESSURE"] and safe["arg1"] == MIN_FEED_KPA - 1
    assert safe["state"] == SAFE and b.u.state == SAFE and b.u.open_mask() == 0
    assert b.u.hk_fields(b.t)["tank_kPa"] == MIN_FEED_KPA - 1
    assert reply(b.fire(2, {0: 10}))["result"] == R["REJECTED_STATE"]
    assert reply(b.send("ARM_REQUEST"))["result"] == R["REJECTED_STATE"]
    assert b.u.state == SAFE
    msgs = b.inject("TANK_PRESSURE", MIN_FEED_KPA)  # back at the minimum: still SAFE
    assert not events(msgs, "SAFE_ENTERED") and b.u.state == SAFE
    assert reply(b.fire(3, {0: 10}))["result"] == R["REJECTED_STATE"]
    b.arm()
    assert b.fire(4, {0: 10}) == [] and b.u.open_mask() == 1  # REALTIME: firing again
    assert reply(b.tick(10 * MS))["executed_ticks"][0] == 10


def test_low_tank_pressure_while_arming_goes_safe_and_the_nonce_is_void():
    b = bench_in(ARMING)
    msgs = b.inject("TANK_PRESSURE", 0)
    assert [e["arg0"] for e in events(msgs, "SAFE_ENTERED")] == [REASON["LOW_PRESSURE"]]
    assert b.u.state == SAFE
    r = reply(b.send("ARM_CONFIRM", nonce=b.nonce, max_on_ticks=100))
    assert r["result"] == R["REJECTED_STATE"] and b.u.state == SAFE


@pytest.mark.parametrize(
    "kpa,stays_armed", [(MIN_FEED_KPA, True), (MIN_FEED_KPA - 1, False), (0, False), (1800, True)]
)
def test_min_feed_pressure_boundary(kpa, stays_armed):
    b = bench_in(ARMED)
    msgs = b.inject("TANK_PRESSURE", kpa)
    assert (b.u.state == ARMED) == stays_armed
    assert bool(events(msgs, "SAFE_ENTERED")) != stays_armed
    assert (reply(b.fire(1, {0: 10})).name == "VALVE_REPORT") == stays_armed


@pytest.mark.parametrize("state", [SAFE, FAULT_ST])
def test_low_tank_pressure_outside_arming_changes_no_state_and_blocks_arming(state):
    b = bench_in(state)
    msgs = b.inject("TANK_PRESSURE", 100)
    assert not events(msgs, "SAFE_ENTERED") and b.u.state == state
    assert reply(b.send("ARM_REQUEST"))["result"] == R["REJECTED_STATE"]
    assert b.u.state == state


def test_low_tank_pressure_survives_a_reset_and_keeps_blocking_arm():
    b = bench_in(ARMED)
    b.inject("TANK_PRESSURE", 100)
    b.inject("RESET")
    b.hello()
    assert reply(b.send("ARM_REQUEST"))["result"] == R["REJECTED_STATE"]
    assert b.u.hk_fields(b.t)["tank_kPa"] == 100


def test_low_tank_pressure_from_a_reading_and_stuck_valves_stay_open():
    """The same rule for a pressure reading that is not a FAULT_INJECT (a transducer), and a
    stuck-open valve is still reported open after the unit went SAFE: it cannot be closed."""
    b = bench_in(SAFE)
    b.inject("STUCK_OPEN", 2)
    b.arm()
    msgs = b.decode(b.u.set_tank_kpa(MIN_FEED_KPA - 100, b.t))
    assert [e["arg0"] for e in events(msgs, "SAFE_ENTERED")] == [REASON["LOW_PRESSURE"]]
    assert b.u.state == SAFE and b.u.open_mask() == 1 << 2


def test_drop_rx_and_corrupt_tx():
    b = bench_in(SAFE)
    b.inject("DROP_RX", 2)
    assert b.send("PING", nonce=1, t1_host_us=0) == []
    assert b.send("PING", nonce=2, t1_host_us=0) == []
    assert reply(b.send("PING", nonce=3, t1_host_us=0))["nonce"] == 3
    assert b.u.counters["dropped_rx"] == 2
    b.inject("CORRUPT_TX", 1, flags=0)  # its FAULT_INJECTED event goes out clean
    out = b.dec.feed(b.u.receive(codec.encode("PING", 99, nonce=4, t1_host_us=0), b.t))
    assert len(out) == 1 and isinstance(out[0], codec.CrcError)
    assert reply(b.send("PING", nonce=5, t1_host_us=0))["nonce"] == 5
    assert b.u.counters["corrupted_tx"] == 1


def test_stall_ignores_input_but_timers_run():
    b = bench_in(SAFE)
    b.hello(mode=REALTIME, period_ms=1000)
    b.arm()
    b.fire(1, {0: 900})
    t_fire = b.t
    b.inject("STALL_MS", 2000)
    for _ in range(5):
        b.t += 40 * MS
        assert b.send("HEARTBEAT", flags=FLAG_ACK_REQ, host_step=1) == []  # not heard
    t_closed, msgs = _first_closed(b, t_fire + 3000 * MS)
    assert t_closed - t_fire <= 251 * MS and b.u.state == SAFE
    assert b.u.counters["uart_overruns"] == 5
    b.t = t_fire + 2001 * MS
    assert reply(b.send("PING", nonce=1, t1_host_us=0)).name == "PONG"


# ----------------------------------------------------------------------------- HK, counters


def test_hk_period_and_contents():
    b = bench_in(SAFE)
    msgs = b.tick(100 * MS)
    (hk,) = [m for m in msgs if m.name == "HK"]
    assert hk["state"] == SAFE and hk["pu_time_us"] == 100 * MS
    assert hk["rx_frames"] == 1 and hk["tank_kPa"] == 1800
    b.decode(b"")
    b.u.receive(b"\x05\x01\x02\x03\x04\x00", b.t)  # garbage frame (not decoded by us)
    b.arm()
    b.t += 50 * MS
    hk = [m for m in b.tick(50 * MS) if m.name == "HK"][0]
    assert hk["state"] == ARMED and hk["watchdog_remaining_ms"] == 150
    assert hk["crc_errors"] + hk["length_errors"] + hk["cobs_errors"] == 1
    b.send("DISARM")
    assert reply(b.send("SET_PARAM", param=PARAM["HK_PERIOD_MS"], value=0))["result"] == 0
    assert not [m for m in b.tick(1000 * MS) if m.name == "HK"]
    b.send("SET_PARAM", param=PARAM["HK_PERIOD_MS"], value=20)
    assert len([m for m in b.tick(100 * MS) if m.name == "HK"]) == 1  # one late tick: one HK
    assert len([m for m in b.tick(20 * MS) if m.name == "HK"]) == 1


@pytest.mark.parametrize(
    "param,value,ok",
    [
        ("WATCHDOG_MS", 49, False),
        ("WATCHDOG_MS", 50, True),
        ("WATCHDOG_MS", 2000, True),
        ("WATCHDOG_MS", 2001, False),
        ("HK_PERIOD_MS", 0, True),
        ("HK_PERIOD_MS", 19, False),
        ("HK_PERIOD_MS", 20, True),
        ("HK_PERIOD_MS", 10000, True),
        ("HK_PERIOD_MS", 10001, False),
        ("MIN_ON_TICKS", -1, False),
        ("MIN_ON_TICKS", 0, True),
        ("MIN_ON_TICKS", 1000, True),
        ("MIN_ON_TICKS", 1001, False),
    ],
)
def test_set_param_limits(param, value, ok):
    b = bench_in(SAFE)
    r = reply(b.send("SET_PARAM", param=PARAM[param], value=value))
    assert r["result"] == (R["ACCEPTED"] if ok else R["BAD_PARAM"])
    assert reply(b.send("SET_PARAM", param=99, value=1))["result"] == R["BAD_PARAM"]
    if ok and param == "WATCHDOG_MS":
        assert b.hello()["watchdog_ms"] == value


def test_bad_frames_are_counted_and_events_rate_limited():
    b = bench_in(SAFE)
    good = codec.encode("PING", 1, nonce=1, t1_host_us=0)
    bad = bytearray(good)
    bad[3] ^= 0x40
    out = b.dec.feed(b.u.receive(bytes(bad) * 10, b.t))
    ev = [m for m in out if isinstance(m, Message) and m.name == "EVENT"]
    assert len(ev) == 1 and ev[0]["event"] == EVENT["BAD_FRAME"]
    assert (
        sum(
            b.u.counters[k] for k in ("crc_errors", "cobs_errors", "length_errors", "header_errors")
        )
        == 10
    )
    b.t += 100 * MS
    out = b.dec.feed(b.u.receive(bytes(bad), b.t))
    assert [m["arg1"] for m in out if isinstance(m, Message) and m.name == "EVENT"] == [10]


def test_seq_gaps_on_received_tcs():
    b = bench_in(SAFE)
    b.send("PING", nonce=1, t1_host_us=0)
    b.seq += 3
    b.send("PING", nonce=1, t1_host_us=0)
    b.send("PING", nonce=1, t1_host_us=0, seq=b.seq - 1, flags=FLAG_RETRANSMIT)
    assert b.u.counters["seq_gaps"] == 1


def test_tm_sequence_counts_per_apid():
    b = bench_in(ARMED)
    seqs: dict[int, list[int]] = {}
    msgs = []
    for k in range(1, 6):
        msgs += b.fire(k, {0: 3})  # clamp events + reports
        msgs += b.send("PING", nonce=k, t1_host_us=0)
    for m in msgs:
        seqs.setdefault(m.spec.apid, []).append(m.seq)
    for apid, s in seqs.items():
        assert s == list(range(s[0], s[0] + len(s))), (apid, s)
    assert set(seqs) == {0x011, 0x012, 0x013}


def test_retransmitted_commands_are_answered_from_the_cache():
    b = Bench()
    r1 = b.hello()
    seq = b.seq - 1
    r2 = reply(
        b.send(
            "HELLO",
            flags=FLAG_RETRANSMIT,
            seq=seq,
            proto_ver=1,
            dict_hash=DICT_HASH,
            mode=0,
            period_ms=100,
        )
    )
    assert r2.fields == r1.fields and r2.seq == r1.seq and r2.flags & FLAG_RETRANSMIT
    assert b.u.session == r1["session"]
    ch1 = reply(b.arm_request())
    ch2 = reply(b.send("ARM_REQUEST", flags=FLAG_RETRANSMIT, seq=b.seq - 1))
    assert ch2["nonce"] == ch1["nonce"] == b.u._nonce
    r = reply(b.send("ARM_CONFIRM", nonce=b.nonce, max_on_ticks=100))
    r_again = reply(
        b.send("ARM_CONFIRM", flags=FLAG_RETRANSMIT, seq=b.seq - 1, nonce=b.nonce, max_on_ticks=100)
    )
    assert r["result"] == r_again["result"] == 0 and b.u.state == ARMED
    assert b.u.counters["retransmits_answered"] == 3
    # The same seq without RETRANSMIT is a new command: acted on.
    assert (
        reply(b.send("ARM_CONFIRM", seq=b.seq - 1, nonce=b.nonce, max_on_ticks=100))["result"]
        == R["REJECTED_STATE"]
    )


def test_reset_fault_is_not_repeated_by_a_retransmission():
    b = bench_in(SAFE)
    b.inject("RESET")
    b.send(
        "FAULT_INJECT",
        flags=FLAG_RETRANSMIT | FLAG_ACK_REQ,
        seq=b.seq - 1,
        fault=FAULT["RESET"],
        arg=0,
    )
    assert b.u.boot_count == 2


# ----------------------------------------------------------------------------- robustness


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    chunks=st.lists(st.binary(max_size=80), max_size=12),
    gaps=st.lists(st.integers(0, 400_000), min_size=12, max_size=12),
)
def test_garbage_never_crashes(chunks, gaps):
    b = bench_in(SAFE)
    b.hello(mode=REALTIME, period_ms=100)
    b.arm()
    b.fire(1, {0: 50})
    for data, dt in zip(chunks, gaps, strict=False):
        b.t += dt
        out = b.u.receive(data, b.t) + b.u.tick(b.t)
        assert all(isinstance(m, Message) for m in Decoder().feed(out))
        assert b.u.state in (SAFE, ARMED)
        if b.u.state != ARMED:
            assert b.u.open_mask() == 0
    counted = sum(
        b.u.counters[k]
        for k in (
            "crc_errors",
            "cobs_errors",
            "length_errors",
            "header_errors",
            "unknown_id_errors",
        )
    )
    assert counted == sum(b.u._decoder.errors.values())
    assert len({(s, st_, bk) for s, st_, bk, _ in b.u.executed_log}) == len(b.u.executed_log)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_valid_frames_split_anywhere(data):
    b = bench_in(SAFE)
    stream = b"".join(codec.encode("PING", i, nonce=i, t1_host_us=i) for i in range(5))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    out = b""
    prev = 0
    for c in cuts + [len(stream)]:
        out += b.u.receive(stream[prev:c], b.t)
        prev = c
    assert [m["nonce"] for m in b.decode(out)] == [0, 1, 2, 3, 4]


class UnitVsModel(RuleBasedStateMachine):
    """UnitCore against a tiny reference model of the state table (LOCKSTEP)."""

    def __init__(self):
        super().__init__()
        self.b = Bench(seed=3)
        self.st = SAFE
        self.has_session = False
        self.nonce_t: int | None = None
        self.last_valid = 0
        self.idle_from = 0
        self.step = 0
        self.low = False  # tank below min_feed_kpa

    def _timers(self):
        if self.st in (ARMING, ARMED) and self.b.t - self.last_valid >= 250 * MS:
            self.st = SAFE
        if self.st == ARMED and self.b.t - self.idle_from >= 30_000 * MS:
            self.st = SAFE
        if self.st != ARMING:
            self.nonce_t = None

    def _session(self, good: bool) -> int:
        s = self.b.u.session or 0
        return s if good else s ^ 0x8000 or 1

    @rule(dt=st.integers(0, 300_000))
    def advance(self, dt):
        self.b.tick(dt)
        self._timers()

    @rule(good=st.booleans())
    def hello(self, good):
        r = self.b.hello(dict_hash=DICT_HASH if good else DICT_HASH ^ 1)
        self._timers()
        assert r["result"] == (0 if good else R["DICT_MISMATCH"])
        self.has_session = good
        if self.st in (ARMING, ARMED):
            self.st = SAFE

    @rule(good=st.booleans())
    def heartbeat(self, good):
        r = self.b.send("HEARTBEAT", flags=FLAG_ACK_REQ, host_step=0, session=self._session(good))
        self._timers()
        ok = good and self.has_session
        assert reply(r)["result"] == (0 if ok else R["BAD_SESSION"])
        if ok:
            self.last_valid = self.b.t

    @rule(good=st.booleans())
    def arm_request(self, good):
        msgs = self.b.send("ARM_REQUEST", session=self._session(good))
        self._timers()
        r = reply(msgs)
        if not (good and self.has_session):
            assert r["result"] == R["BAD_SESSION"]
        elif self.st in (SAFE, ARMING) and not self.low:
            assert r.name == "ARM_CHALLENGE"
            self.b.nonce = r["nonce"]
            self.st, self.nonce_t, self.last_valid = ARMING, self.b.t, self.b.t
        else:
            assert r["result"] == R["REJECTED_STATE"]

    @rule(good_nonce=st.booleans())
    def arm_confirm(self, good_nonce):
        nonce = self.b.nonce if good_nonce else self.b.nonce ^ 0x77
        msgs = self.b.send(
            "ARM_CONFIRM", nonce=nonce, max_on_ticks=100, session=self._session(True)
        )
        self._timers()
        r = reply(msgs)
        if not self.has_session:
            assert r["result"] == R["BAD_SESSION"]
        elif self.st != ARMING:
            assert r["result"] == R["REJECTED_STATE"]
        elif good_nonce and self.nonce_t is not None and self.b.t - self.nonce_t <= 2000 * MS:
            assert r["result"] == 0
            self.st, self.last_valid, self.idle_from = ARMED, self.b.t, self.b.t
        else:
            assert r["result"] == R["BAD_NONCE"]
            self.st = SAFE

    @rule()
    def disarm(self):
        r = reply(self.b.send("DISARM", session=self._session(True)))
        self._timers()
        if self.has_session:
            assert r["result"] == 0
            self.st = SAFE
        else:
            assert r["result"] == R["BAD_SESSION"]

    @rule()
    def stop_all(self):
        self.b.send("STOP_ALL")
        self._timers()
        if self.st in (ARMING, ARMED):
            self.st = SAFE

    @rule()
    def fire(self):
        self.step += 1
        msgs = self.b.fire(self.step, {0: 10}, session=self._session(True))
        self._timers()
        r = reply(msgs)
        if not self.has_session:
            assert r["result"] == R["BAD_SESSION"]
        elif self.st != ARMED:
            assert r["result"] == R["REJECTED_STATE"]
        else:
            assert r.name == "VALVE_REPORT" and r["step"] == self.step
            self.last_valid = self.idle_from = self.b.t

    @rule(kpa=st.sampled_from([0, MIN_FEED_KPA - 1, MIN_FEED_KPA, 1800]))
    def tank_pressure(self, kpa):
        self.b.inject("TANK_PRESSURE", kpa, flags=0)
        self._timers()
        if not self.has_session:
            return  # FAULT_INJECT needs the session: refused, nothing changes
        self.low = kpa < MIN_FEED_KPA
        if self.low and self.st in (ARMING, ARMED):
            self.st = SAFE

    @precondition(lambda self: self.st != FAULT_ST)
    @rule()
    def fault(self):
        self.b.decode(self.b.u.force_fault(self.b.t))
        self.st = FAULT_ST

    @invariant()
    def same_state(self):
        assert self.b.u.state == self.st
        assert (self.b.u.session is not None) == self.has_session
        if self.st != ARMED:
            assert self.b.u.open_mask() == 0
        if self.low:
            assert self.st not in (ARMING, ARMED)
        log = [(s, k, bank) for s, k, bank, _ in self.b.u.executed_log]
        assert len(set(log)) == len(log)


TestUnitVsModel = UnitVsModel.TestCase
TestUnitVsModel.settings = settings(max_examples=80, stateful_step_count=40, deadline=None)
