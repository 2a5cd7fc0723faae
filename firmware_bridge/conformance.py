"""The unit's contract, checked over a port URL: one suite for the emulator, QEMU and a board.

Each check is a plain function of a :class:`UnitClient` (a small synchronous client over
``serial.serial_for_url``, independent of the host link so that it tests the unit and nothing
else). pytest runs them as ``tests/test_conformance.py`` (marker ``conformance``, option
``--unit-url``); ``thruster-hil selftest --port URL`` runs the same list for an operator and
prints a pass/fail report, without needing pytest on the bench machine.

Checks that need fault injection (a unit reset on command) skip on units without the TEST_BUILD
flag; checks with timing (the watchdog) only assert "within a generous bound" unless
``timing=True`` (never under QEMU, whose clock is not faithful).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import serial
from thruster_hil.firmware_bridge import statetable
from thruster_hil.firmware_bridge.codec import Decoder, Message, ProtocolError, encode
from thruster_hil.firmware_bridge.dictionary import (
    CHANNELS_PER_BANK,
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
    STATE,
)

from thruster_hil.core.errors import UserError

PERIOD_MS = 500


class Skip(Exception):
    """The check does not apply to this unit (e.g. needs a test build)."""


class UnitClient:
    """A minimal synchronous client: send a command, read frames until the one wanted."""

    def __init__(self, url: str, timeout_s: float = 2.0):
        try:
            self.port = serial.serial_for_url(url, baudrate=115200, timeout=0.05, exclusive=True)
        except (serial.SerialException, OSError, ValueError) as exc:
            raise UserError(url, f"cannot open the unit's port: {exc}") from None
        self.url = url
        self.timeout_s = timeout_s
        self.decoder = Decoder()
        self.seq = 0
        self.session = 0
        self.next_step = 1  # ARM_CONFIRM's next_step: one after every step fired this session
        self.boot: Message | None = None
        self.hello_ack: Message | None = None
        self.inbox: list[Message] = []
        self.errors: list[ProtocolError] = []

    def close(self) -> None:
        try:
            self.port.write(encode("STOP_ALL", self._next_seq()))
        except (serial.SerialException, OSError):
            pass
        self.port.close()

    def __enter__(self) -> UnitClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- raw I/O -----------------------------------------------------------------------
    def _next_seq(self) -> int:
        self.seq = (self.seq + 1) % (1 << 14)
        return self.seq

    def send(self, name: str, flags: int = 0, seq: int | None = None, **fields) -> int:
        seq = self._next_seq() if seq is None else seq
        self.port.write(encode(name, seq, flags, **fields))
        return seq

    def send_raw(self, data: bytes) -> None:
        self.port.write(data)

    def _pump(self) -> None:
        data = self.port.read(self.port.in_waiting or 1)
        for item in self.decoder.feed(data):
            if isinstance(item, ProtocolError):
                self.errors.append(item)
            else:
                self.inbox.append(item)

    def wait(self, pred: Callable[[Message], bool], timeout_s: float | None = None) -> Message:
        """The first received message matching ``pred`` (others stay in the inbox)."""
        deadline = time.monotonic() + (self.timeout_s if timeout_s is None else timeout_s)
        while True:
            for i, m in enumerate(self.inbox):
                if pred(m):
                    return self.inbox.pop(i)
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"no matching reply within {timeout_s or self.timeout_s} s "
                    f"(inbox: {[m.name for m in self.inbox][-8:]})"
                )
            self._pump()

    def wait_name(self, name: str, timeout_s: float | None = None, **match) -> Message:
        return self.wait(
            lambda m: m.name == name and all(m.fields.get(k) == v for k, v in match.items()),
            timeout_s,
        )

    def drain(self, quiet_s: float = 0.05) -> None:
        """Read until nothing arrives for ``quiet_s``; keep what came in the inbox."""
        deadline = time.monotonic() + quiet_s
        while time.monotonic() < deadline:
            if self.port.in_waiting:
                self._pump()
                deadline = time.monotonic() + quiet_s
            else:
                self._pump()

    # ---- protocol steps ----------------------------------------------------------------
    def await_boot(self, timeout_s: float = 3.0) -> Message | None:
        try:
            self.boot = self.wait_name("BOOT", timeout_s)
        except AssertionError:
            self.boot = None
        return self.boot

    def hello(
        self,
        mode: str = "LOCKSTEP",
        dict_hash: int = DICT_HASH,
        period_ms: int = PERIOD_MS,
        tries: int = 8,
    ) -> Message:
        """HELLO, resent with the same sequence count until answered (a board that was reset
        by opening its port spends a second in its bootloader first)."""
        seq = None
        flags = 0
        # A HELLO_ACK still queued from an earlier, answered-twice HELLO (a resend raced the
        # first answer) would hand back an old session: drop those first.
        while self.port.in_waiting:
            self._pump()
        self.inbox = [m for m in self.inbox if m.name != "HELLO_ACK"]
        self.send_raw(b"\x00")  # end any partial frame the unit holds (protocol section 1)
        nonce = int.from_bytes(os.urandom(4), "big")
        for _ in range(tries):
            seq = self.send(
                "HELLO",
                flags,
                seq,
                proto_ver=PROTO_VERSION,
                dict_hash=dict_hash,
                mode=MODE[mode],
                period_ms=period_ms,
                host_nonce=nonce,
            )
            try:
                self.hello_ack = self.wait_name("HELLO_ACK", timeout_s=0.5)
                break
            except AssertionError:
                flags = FLAG_RETRANSMIT
        else:
            raise AssertionError(f"no HELLO_ACK after {tries} tries")
        self.session = self.hello_ack["session"]
        self.next_step = 1
        return self.hello_ack

    def command(self, name: str, **fields) -> Message:
        """Send with ACK_REQ (session filled in) and return the ACK."""
        if "session" in _field_names(name) and "session" not in fields:
            fields["session"] = self.session
        if name == "ARM_CONFIRM":
            fields.setdefault("next_step", self.next_step)
        seq = self.send(name, FLAG_ACK_REQ, **fields)
        return self.wait_name("ACK", acked_seq=seq)

    def arm(self, max_on_ticks: int = PERIOD_MS, next_step: int | None = None) -> Message:
        self.send("ARM_REQUEST", session=self.session)
        ch = self.wait_name("ARM_CHALLENGE")
        return self.command(
            "ARM_CONFIRM",
            nonce=ch["nonce"],
            max_on_ticks=max_on_ticks,
            next_step=self.next_step if next_step is None else next_step,
        )

    def fire(
        self,
        step: int,
        ticks: list[int],
        bank: int = 0,
        mask: int | None = None,
        flags: int = 0,
        seq: int | None = None,
    ) -> int:
        ticks = list(ticks) + [0] * (CHANNELS_PER_BANK - len(ticks))
        if mask is None:
            mask = sum(1 << c for c in range(CHANNELS_PER_BANK) if ticks[c] > 0) or 1
        self.next_step = max(self.next_step, step + 1)
        return self.send(
            "FIRE",
            flags,
            seq,
            session=self.session,
            step=step,
            valid_for_ms=60000,
            bank=bank,
            mask=mask,
            on_ticks=ticks,
        )

    def report(self, step: int, bank: int = 0) -> Message:
        return self.wait_name("VALVE_REPORT", step=step, bank=bank)

    def hk(self) -> Message:
        """The next housekeeping packet (sent periodically by the unit)."""
        self.inbox = [m for m in self.inbox if m.name != "HK"]
        return self.wait_name("HK", timeout_s=3.0)

    def state(self) -> int:
        return self.hk()["state"]

    @property
    def test_build(self) -> bool:
        for m in (self.hello_ack, self.boot):
            if m is not None and m.flags & FLAG_TEST_BUILD:
                return True
        return False


def _field_names(name: str) -> set[str]:
    from thruster_hil.firmware_bridge.dictionary import MESSAGES

    return {f.name for f in MESSAGES[name].fields}


# ---- the checks --------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    name: str
    requirement: str
    fn: Callable[[UnitClient], None]


CHECKS: list[Check] = []


def check(requirement: str):
    def register(fn):
        CHECKS.append(Check(fn.__name__, requirement, fn))
        return fn

    return register


def _fires_in_a_new_session(c: UnitClient, step: int) -> None:
    """A new HELLO and ARM work, and a FIRE of ``step`` executes: the unit is usable again."""
    _ready(c, armed=True)
    c.fire(step, [10])
    assert c.report(step)["executed_ticks"][0] == 10


def _ready(c: UnitClient, armed: bool = False) -> None:
    c.hello()
    assert c.hello_ack["result"] == RESULT["ACCEPTED"], c.hello_ack
    if armed:
        ack = c.arm()
        assert ack["result"] == RESULT["ACCEPTED"], ack


@check("Handshake: HELLO with our dictionary hash opens a session; PING answers PONG")
def handshake(c: UnitClient) -> None:
    c.hello()
    h = c.hello_ack
    assert h["result"] == RESULT["ACCEPTED"]
    assert h["dict_hash"] == DICT_HASH and h["proto_ver"] == PROTO_VERSION
    assert h["session"] != 0 and h["n_channels"] >= CHANNELS_PER_BANK
    assert h["tick_us"] == 1000
    c.send("PING", nonce=0xC0FFEE, t1_host_us=123456789)
    pong = c.wait_name("PONG", nonce=0xC0FFEE)
    assert pong["t1_host_us"] == 123456789
    assert (pong["t3_pu_us"] - pong["t2_pu_us"]) % (1 << 32) < 1_000_000


@check("A unit with another dictionary is never armed (DICT_MISMATCH, then ARM refused)")
def dictionary_mismatch(c: UnitClient) -> None:
    c.hello(dict_hash=DICT_HASH ^ 0x5A5A5A5A)
    assert c.hello_ack["result"] == RESULT["DICT_MISMATCH"] and c.hello_ack["session"] == 0
    c.session = 0
    c.send("ARM_REQUEST", session=0)
    ack = c.wait_name("ACK")
    assert ack["result"] in (RESULT["BAD_SESSION"], RESULT["REJECTED_STATE"])
    assert c.state() == STATE["SAFE"]


@check("Every state x every command follows the state table (docs/protocol.md section 5)")
def state_table(c: UnitClient) -> None:
    # SAFE: FIRE and ARM_CONFIRM refused; SET_PARAM and DISARM accepted.
    _ready(c)
    c.fire(1, [10])
    assert c.wait_name("ACK")["result"] == RESULT["REJECTED_STATE"]
    assert c.command("ARM_CONFIRM", nonce=1, max_on_ticks=10)["result"] == RESULT["REJECTED_STATE"]
    assert (
        c.command("SET_PARAM", param=ENUMS["param"]["HK_PERIOD_MS"], value=100)["result"]
        == RESULT["ACCEPTED"]
    )
    assert c.command("DISARM")["result"] == RESULT["ACCEPTED"]
    # ARMING: FIRE refused, SET_PARAM refused, DISARM -> SAFE.
    c.send("ARM_REQUEST", session=c.session)
    c.wait_name("ARM_CHALLENGE")
    c.fire(2, [10])
    assert c.wait_name("ACK")["result"] == RESULT["REJECTED_STATE"]
    assert (
        c.command("SET_PARAM", param=ENUMS["param"]["HK_PERIOD_MS"], value=100)["result"]
        == RESULT["REJECTED_STATE"]
    )
    assert c.command("DISARM")["result"] == RESULT["ACCEPTED"]
    assert c.state() == STATE["SAFE"]
    # ARMED: ARM_REQUEST and SET_PARAM refused; FIRE executes; HELLO -> SAFE.
    assert c.arm()["result"] == RESULT["ACCEPTED"]
    assert c.state() == STATE["ARMED"]
    c.send("ARM_REQUEST", session=c.session)
    assert c.wait_name("ACK")["result"] == RESULT["REJECTED_STATE"]
    assert (
        c.command("SET_PARAM", param=ENUMS["param"]["HK_PERIOD_MS"], value=100)["result"]
        == RESULT["REJECTED_STATE"]
    )
    c.fire(3, [10])
    assert c.report(3)["executed_ticks"][0] == 10
    c.hello()
    assert c.state() == STATE["SAFE"]
    c.fire(4, [10])
    assert c.wait_name("ACK")["result"] == RESULT["REJECTED_STATE"]


#: The reply that says a command was accepted, when it is not an ACK.
_ACCEPT_REPLY = {
    "HELLO": "HELLO_ACK",
    "PING": "PONG",
    "ARM_REQUEST": "ARM_CHALLENGE",
    "FIRE": "VALVE_REPORT",
}
#: The result each command of the matrix is sent to get (the stimuli of _send_matrix_command):
#: an ARM_CONFIRM whose nonce cannot be right, every other command well formed.
_MATRIX_RESULT = {"ARM_CONFIRM": "BAD_NONCE"}


def _matrix() -> dict[str, dict[str, tuple[str, str | None, str]]]:
    """(state, command) -> (reply, result or None, state after), from the state table declared in
    messages.toml (docs/protocol.md section 5), for the three states a host can reach over the
    wire (FAULT is entered only by the unit itself) and the commands every unit serves
    (FAULT_INJECT needs a test build: the checks below cover it)."""
    names = {v: k for k, v in STATE.items()}
    out: dict[str, dict[str, tuple[str, str | None, str]]] = {}
    for state in ("SAFE", "ARMING", "ARMED"):
        row = out.setdefault(state, {})
        for cmd, cells in statetable.COMMANDS.items():
            if cmd == "FAULT_INJECT":
                continue
            cell = cells[STATE[state]]
            if cell.kind == "refuse":
                result = next(k for k, v in RESULT.items() if v == cell.refusal)
                row[cmd] = ("ACK", result, state)
                continue
            want = _MATRIX_RESULT.get(cmd, "ACCEPTED")
            if RESULT[want] not in cell.results:
                want = "ACCEPTED"
            reply = _ACCEPT_REPLY.get(cmd, "ACK") if want == "ACCEPTED" else "ACK"
            result = want if reply in ("ACK", "HELLO_ACK") else None
            row[cmd] = (reply, result, names[cell.next(RESULT[want])])
    return out


_MATRIX = _matrix()


def _enter(c: UnitClient, state: str, next_step: int) -> None:
    c.hello()
    if state in ("ARMING", "ARMED"):
        c.send("ARM_REQUEST", session=c.session)
        ch = c.wait_name("ARM_CHALLENGE")
        if state == "ARMED":
            ack = c.command("ARM_CONFIRM", nonce=ch["nonce"], max_on_ticks=100, next_step=next_step)
            assert ack["result"] == RESULT["ACCEPTED"], ack


def _send_matrix_command(c: UnitClient, cmd: str, step: int) -> int:
    s = c.session
    if cmd == "HELLO":
        return c.send(
            "HELLO",
            proto_ver=PROTO_VERSION,
            dict_hash=DICT_HASH,
            mode=MODE["LOCKSTEP"],
            period_ms=PERIOD_MS,
            host_nonce=step,
        )
    if cmd == "PING":
        return c.send("PING", nonce=step, t1_host_us=step)
    if cmd == "ARM_REQUEST":
        return c.send("ARM_REQUEST", session=s)
    if cmd == "ARM_CONFIRM":  # a nonce that cannot be right (the real one is never 0 here)
        return c.send(
            "ARM_CONFIRM", FLAG_ACK_REQ, session=s, nonce=0, max_on_ticks=100, next_step=step
        )
    if cmd == "FIRE":
        return c.fire(step, [5])
    if cmd == "SET_PARAM":
        return c.send(
            "SET_PARAM", FLAG_ACK_REQ, session=s, param=ENUMS["param"]["HK_PERIOD_MS"], value=100
        )
    if cmd == "STOP_ALL":
        return c.send("STOP_ALL", FLAG_ACK_REQ)
    return c.send(
        cmd,
        FLAG_ACK_REQ,
        **({"session": s, "host_step": step} if cmd == "HEARTBEAT" else {"session": s}),
    )


@check("State matrix: each reachable state x each command gives the tabled reply and state")
def state_matrix(c: UnitClient) -> None:
    wrong = []
    step = 1000
    for state, row in _MATRIX.items():
        for cmd, (reply, result, after) in row.items():
            step += 1
            _enter(c, state, step)
            seq = _send_matrix_command(c, cmd, step)
            if reply == "ACK":
                got = c.wait_name("ACK", acked_seq=seq)
                if got["result"] != RESULT[result]:
                    wrong.append(f"{state} x {cmd}: ACK {got['result']}, expected {result}")
            else:
                got = c.wait_name(reply)
                if reply == "HELLO_ACK":
                    c.session = got["session"]
            if after != "SAFE":
                c.send("HEARTBEAT", session=c.session, host_step=step)
            now = c.state()
            if now != STATE[after]:
                wrong.append(f"{state} x {cmd}: state {now}, expected {after}")
    assert not wrong, "; ".join(wrong)


@check("ARM interlock: FIRE before ARM, a wrong nonce and a stale challenge never arm")
def arm_interlock(c: UnitClient) -> None:
    _ready(c)
    c.fire(1, [10])
    assert c.wait_name("ACK")["result"] == RESULT["REJECTED_STATE"]
    c.send("ARM_REQUEST", session=c.session)
    ch = c.wait_name("ARM_CHALLENGE")
    ack = c.command("ARM_CONFIRM", nonce=(ch["nonce"] + 1) & 0xFFFFFFFF, max_on_ticks=100)
    assert ack["result"] == RESULT["BAD_NONCE"]
    assert c.state() == STATE["SAFE"]
    # A challenge replaced by a newer one is void.
    c.send("ARM_REQUEST", session=c.session)
    old = c.wait_name("ARM_CHALLENGE")
    c.send("ARM_REQUEST", session=c.session)
    new = c.wait_name("ARM_CHALLENGE")
    if old["nonce"] != new["nonce"]:
        assert (
            c.command("ARM_CONFIRM", nonce=old["nonce"], max_on_ticks=100)["result"]
            == RESULT["BAD_NONCE"]
        )
    # Commands without the session token are refused.
    c.send("ARM_REQUEST", session=(c.session + 1) & 0xFFFFFFFF or 1)
    assert c.wait_name("ACK")["result"] == RESULT["BAD_SESSION"]


@check("Clamps: a pulse never exceeds max_on_ticks nor the control period, whatever is asked")
def clamps(c: UnitClient) -> None:
    _ready(c)
    assert c.arm(max_on_ticks=200)["result"] == RESULT["ACCEPTED"]
    c.fire(1, [5000, 150, 0, 60000])
    r = c.report(1)
    assert r["executed_ticks"][0] == 200 and r["executed_ticks"][3] == 200
    assert r["executed_ticks"][1] == 150 and r["executed_ticks"][2] == 0
    assert r["flags"] & 1
    c.hello(period_ms=100)
    assert c.arm(max_on_ticks=1000)["result"] == RESULT["ACCEPTED"]
    c.fire(2, [1000])
    assert c.report(2)["executed_ticks"][0] == 100


@check("FIRE is idempotent per step: a duplicate or retransmitted FIRE never fires twice")
def idempotent_fire(c: UnitClient) -> None:
    _ready(c, armed=True)
    seq = c.fire(7, [40])
    first = c.report(7)
    c.fire(7, [40], flags=FLAG_RETRANSMIT, seq=seq)
    again = c.report(7)
    assert again["executed_ticks"] == first["executed_ticks"]
    assert again["flags"] & 4, "a re-sent report must say it is a duplicate"
    c.fire(7, [40])  # same step, new sequence count: still the same step
    assert c.report(7)["flags"] & 4
    c.fire(6, [40])  # older step
    assert c.wait_name("ACK")["result"] == RESULT["STALE"]
    c.fire(8, [40])
    assert not c.report(8)["flags"] & 4


@check("STOP_ALL is accepted in every state, with or without a session, and leaves SAFE")
def stop_all(c: UnitClient) -> None:
    c.send("STOP_ALL", FLAG_ACK_REQ)
    assert c.wait_name("ACK", msg_id=0x13)["result"] == RESULT["ACCEPTED"]
    _ready(c, armed=True)
    seq = c.send("STOP_ALL", FLAG_ACK_REQ)
    assert c.wait_name("ACK", acked_seq=seq)["result"] == RESULT["ACCEPTED"]
    assert c.state() == STATE["SAFE"]
    c.fire(1, [10])
    assert c.wait_name("ACK")["result"] == RESULT["REJECTED_STATE"]


@check("Banks: channels beyond 16 are reached with bank 1; a bank past n_channels is refused")
def banks(c: UnitClient) -> None:
    _ready(c, armed=True)
    n = c.hello_ack["n_channels"]
    if n > CHANNELS_PER_BANK:
        c.fire(1, [0, 25], bank=1)
        assert c.report(1, bank=1)["executed_ticks"][1] == 25
    bad_bank = (n + CHANNELS_PER_BANK - 1) // CHANNELS_PER_BANK
    c.fire(2, [10], bank=bad_bank)
    assert c.wait_name("ACK")["result"] == RESULT["BAD_PARAM"]


@check("Watchdog: ARMED with no HEARTBEAT or FIRE, the unit closes every valve and goes SAFE")
def watchdog_safing(c: UnitClient) -> None:
    _ready(c, armed=True)
    wd_ms = c.hello_ack["watchdog_ms"]
    event = c.wait(
        lambda m: m.name == "EVENT" and m["event"] == EVENT["WATCHDOG_TRIP"],
        timeout_s=wd_ms / 1000 + 3.0,
    )
    assert event["arg0"] >= wd_ms
    hk = c.hk()
    assert hk["state"] == STATE["SAFE"] and hk["open_mask"] == 0
    c.fire(99, [10])
    assert c.wait_name("ACK")["result"] == RESULT["REJECTED_STATE"]


@check(
    "Reset: after a reset the unit sends BOOT, has no session and must be armed again; "
    "a hardware fault survives it, the HK error counters start again from zero"
)
def reset_handling(c: UnitClient) -> None:
    _ready(c, armed=True)
    if not c.test_build:
        raise Skip(
            "needs a TEST_BUILD unit to reset on command (reset a board by reopening its port)"
        )
    old_boot = c.hello_ack["boot_count"]
    last = c.hello_ack["n_channels"] - 1
    c.send("HEARTBEAT", session=_wrong(c.session, 0), host_step=0)  # one session error
    assert c.wait_name("ACK")["result"] == RESULT["BAD_SESSION"]
    assert (
        c.command("FAULT_INJECT", fault=FAULT["STUCK_OPEN"], arg=last)["result"]
        == RESULT["ACCEPTED"]
    )
    try:
        c.send("FAULT_INJECT", session=c.session, fault=FAULT["RESET"], arg=0)
        boot = c.wait_name("BOOT", timeout_s=5.0)
        assert boot["boot_count"] == (old_boot + 1) & 0xFFFF
        hk = c.hk()
        assert hk["session_errors"] == 0 and hk["stuck_mask"] >> last & 1, hk
        c.fire(1, [10])  # the old session is gone
        assert c.wait_name("ACK")["result"] in (RESULT["BAD_SESSION"], RESULT["REJECTED_STATE"])
        _fires_in_a_new_session(c, 2)
    finally:  # leave no stuck valve to the next check
        c.hello()
        c.command("FAULT_INJECT", fault=FAULT["CLEAR"], arg=0xFFFF)


@check(
    "Low tank pressure: below min_feed_kpa the unit cuts its pulses, goes SAFE "
    "(LOW_PRESSURE) and refuses ARM and FIRE; it stays SAFE when the pressure is back"
)
def low_tank_pressure(c: UnitClient) -> None:
    _ready(c)
    if not c.test_build:
        raise Skip("needs a TEST_BUILD unit to set its tank pressure (FAULT_INJECT)")
    low = LIMITS["min_feed_kpa"] - 1
    reason = ENUMS["safe_reason"]["LOW_PRESSURE"]
    before = c.hk()["tank_kPa"]
    try:
        # A long REALTIME pulse in progress (9 s on the unit's clock, so even QEMU's loose
        # clock cannot end it before the pressure drops right behind it).
        c.hello(mode="REALTIME", period_ms=10000)
        assert c.arm(max_on_ticks=10000)["result"] == RESULT["ACCEPTED"]
        c.fire(1, [9000])
        ack = c.command("FAULT_INJECT", fault=FAULT["TANK_PRESSURE"], arg=low)
        assert ack["result"] == RESULT["ACCEPTED"], ack
        report = c.report(1)
        assert report["flags"] & 2 and report["executed_ticks"][0] < 9000, report
        safe = c.wait(
            lambda m: (
                m.name == "EVENT" and m["event"] == EVENT["SAFE_ENTERED"] and m["arg0"] == reason
            )
        )
        assert safe["arg1"] == low and safe["state"] == STATE["SAFE"], safe
        hk = c.hk()
        assert hk["state"] == STATE["SAFE"] and hk["open_mask"] == 0 and hk["tank_kPa"] == low
        c.fire(2, [10])
        assert c.wait_name("ACK")["result"] == RESULT["REJECTED_STATE"]
        c.send("ARM_REQUEST", session=c.session)
        assert c.wait_name("ACK")["result"] == RESULT["REJECTED_STATE"]
        # Back at the minimum: still SAFE until the host arms again.
        ack = c.command("FAULT_INJECT", fault=FAULT["TANK_PRESSURE"], arg=low + 1)
        assert ack["result"] == RESULT["ACCEPTED"], ack
        assert c.state() == STATE["SAFE"]
        c.fire(3, [10])
        assert c.wait_name("ACK")["result"] == RESULT["REJECTED_STATE"]
        assert c.arm(max_on_ticks=10000)["result"] == RESULT["ACCEPTED"]
        c.fire(4, [20])
        assert c.report(4)["executed_ticks"][0] == 20
    finally:  # tank pressure survives a reset: leave the unit as the next check expects it
        c.send("FAULT_INJECT", session=c.session, fault=FAULT["TANK_PRESSURE"], arg=before)


def _wrong(session: int, k: int) -> int:
    """A token that is not ``session`` (and never 0)."""
    return (session ^ (0x9E3779B9 + k)) & 0xFFFFFFFF or 1


@check("FAULT_INJECT without the session is refused (BAD_SESSION) and injects nothing")
def fault_inject_needs_session(c: UnitClient) -> None:
    # Before any HELLO there is no session at all; then one exists and the token is wrong.
    for session in (0, None):
        if session is None:
            _ready(c)
            session = _wrong(c.session, 1)
        seq = c.send(
            "FAULT_INJECT", FLAG_ACK_REQ, session=session, fault=FAULT["STUCK_OPEN"], arg=0
        )
        ack = c.wait_name("ACK", acked_seq=seq)
        assert ack["result"] == RESULT["BAD_SESSION"], ack
        hk = c.hk()
        assert hk["stuck_mask"] & 1 == 0 and hk["open_mask"] & 1 == 0, hk


@check(
    "Lockout: the session_error_limit-th command with a wrong token closes every valve, "
    "goes SAFE (INTRUSION), voids the session and says LOCKOUT"
)
def lockout(c: UnitClient) -> None:
    limit = LIMITS["session_error_limit"]
    _ready(c, armed=True)
    for k in range(limit - 1):
        seq = c.send(
            "FIRE",
            FLAG_ACK_REQ,
            session=_wrong(c.session, k),
            step=0x7F000000 + k,
            valid_for_ms=0,
            bank=0,
            mask=0xFFFF,
            on_ticks=[100] * 16,
        )
        assert c.wait_name("ACK", acked_seq=seq)["result"] == RESULT["BAD_SESSION"]
    c.fire(1, [10])  # still ARMED, still our session: below the limit nothing changes
    assert c.report(1)["executed_ticks"][0] == 10
    seq = c.send("DISARM", FLAG_ACK_REQ, session=_wrong(c.session, limit))
    assert c.wait_name("ACK", acked_seq=seq)["result"] == RESULT["BAD_SESSION"]
    out = c.wait(lambda m: m.name == "EVENT" and m["event"] == EVENT["LOCKOUT"])
    assert out["arg0"] == limit and out["arg1"] == 0x12 and out["state"] == STATE["SAFE"], out
    safe = c.wait(lambda m: m.name == "EVENT" and m["event"] == EVENT["SAFE_ENTERED"])
    assert safe["arg0"] == ENUMS["safe_reason"]["INTRUSION"], safe
    hk = c.hk()
    assert hk["state"] == STATE["SAFE"] and hk["open_mask"] == 0, hk
    c.fire(2, [10])  # our token is void too: a new HELLO is needed
    assert c.wait_name("ACK")["result"] == RESULT["BAD_SESSION"]
    _fires_in_a_new_session(c, 1)


@check(
    "Step window: a FIRE before ARM_CONFIRM's next_step is STALE, one more than the window "
    "beyond the last step is STEP_AHEAD; steps are remembered across DISARM and re-ARM"
)
def step_window(c: UnitClient) -> None:
    c.hello()
    wd, w_min = c.hello_ack["watchdog_ms"], LIMITS["step_window_min"]
    window = max(w_min, -(-wd // PERIOD_MS) + 1)
    assert c.arm(next_step=100)["result"] == RESULT["ACCEPTED"]
    c.fire(99, [10])
    assert c.wait_name("ACK")["result"] == RESULT["STALE"]
    c.fire(100 + window, [10])  # floor 99: the window is (99, 99 + window]
    assert c.wait_name("ACK")["result"] == RESULT["STEP_AHEAD"]
    c.fire(99 + window, [10])
    assert c.report(99 + window)["executed_ticks"][0] == 10
    assert c.command("DISARM")["result"] == RESULT["ACCEPTED"]
    assert c.arm(next_step=99 + window)["result"] == RESULT["STALE"]  # already executed
    assert c.command("DISARM")["result"] == RESULT["ACCEPTED"]
    assert c.arm(next_step=100 + window)["result"] == RESULT["ACCEPTED"]
    c.fire(99 + window, [10])  # the last executed step: a duplicate, never fired again
    assert c.report(99 + window)["flags"] & 4
    c.fire(100 + window, [10])
    assert c.report(100 + window)["executed_ticks"][0] == 10


@check(
    "No replay: every HELLO gives a new token, and a FIRE captured in one session is "
    "refused in the next (BAD_SESSION), whatever its step"
)
def replay_refused(c: UnitClient) -> None:
    _ready(c, armed=True)
    first = c.session
    captured = encode(
        "FIRE",
        4000,
        0,
        session=first,
        step=2,
        valid_for_ms=0,
        bank=0,
        mask=1,
        on_ticks=[30] + [0] * 15,
    )
    c.fire(1, [10])
    assert c.report(1)["executed_ticks"][0] == 10
    _ready(c, armed=True)
    assert c.session not in (0, first)
    c.send_raw(captured)
    ack = c.wait(lambda m: m.name == "ACK" and m["acked_seq"] == 4000)
    assert ack["result"] == RESULT["BAD_SESSION"], ack
    c.fire(1, [10])  # the new session still works, from its own first step
    assert c.report(1)["executed_ticks"][0] == 10
    assert not [m for m in c.inbox if m.name == "VALVE_REPORT" and m["step"] == 2]


@check("Garbage on the line is counted and ignored; the next good frame is served")
def garbage_resync(c: UnitClient) -> None:
    _ready(c)
    before = c.hk()
    c.send_raw(b"\x01\x02\x03\x00\xff" * 3 + b"\x00")
    c.send("PING", nonce=77, t1_host_us=1)
    assert c.wait_name("PONG", nonce=77)
    after = c.hk()
    bad = sum(after[k] - before[k] for k in ("crc_errors", "cobs_errors", "length_errors"))
    assert bad >= 1


@dataclass
class Result:
    check: Check
    outcome: str  # passed / failed / skipped
    detail: str = ""
    seconds: float = 0.0


def run_check(url: str, chk: Check) -> Result:
    t0 = time.monotonic()
    try:
        with UnitClient(url) as c:
            c.await_boot(timeout_s=0.3)
            chk.fn(c)
    except Skip as s:
        return Result(chk, "skipped", str(s), time.monotonic() - t0)
    except AssertionError as e:
        return Result(chk, "failed", str(e) or "assertion failed", time.monotonic() - t0)
    return Result(chk, "passed", "", time.monotonic() - t0)


def run_all(url: str) -> list[Result]:
    return [run_check(url, chk) for chk in CHECKS]
