"""The propulsion unit's behaviour as a pure state machine (sans-IO, like h11).

No os, no time, no serial: the caller feeds received bytes and the unit clock (``now_us``, an
integer microsecond count that never goes backwards) and writes the bytes it gets back::

    core = UnitCore(n_channels=32, rng_seed=7)
    out = core.boot(now_us)              # the BOOT frame
    out = core.receive(data, now_us)     # replies to whatever frames ``data`` completes
    out = core.tick(now_us)              # timers: watchdog, pulse ends, HK
    core.next_deadline_us()              # when tick() is next due (None: nothing pending)

Semantics are docs/protocol.md sections 3-6. Which command runs which handler, and which state
follows, is the state table declared in messages.toml (:mod:`.statetable`): ``_dispatch`` looks
the (command, state) cell up and either refuses with its result or runs its action, whose handler
reads the next state from the cell; the timers and events take the states they apply in and the
state they lead to from the same table. Choices the spec leaves open, made here:

- ``receive()`` runs the timers that are due first (a FIRE arriving after the watchdog deadline
  finds the unit SAFE), so the caller may skip a tick() right before it.
- A stale FIRE, a FIRE for a bad bank and a duplicate FIRE still feed the link watchdog: the host
  is alive, it is only late or repeating itself.
- The per-bank "last executed step" lives as long as the session (reset by HELLO and by a boot,
  not by a re-arm), so a step can never fire twice within a session.
- ``valid_for_ms == 0`` in a REALTIME FIRE means "no deadline".
- The challenge nonce is voided ``arm_challenge_ms`` after ARM_CHALLENGE; the unit stays ARMING
  (the link watchdog guards it) and an ARM_CONFIRM after that is BAD_NONCE.
- A duplicate FIRE re-sends the cached VALVE_REPORT as a retransmission: same sequence count,
  ``RETRANSMIT`` frame flag, report flag bit 2. In REALTIME, a duplicate of a FIRE whose pulses
  are still running has no report yet: it gets ``ACK DUPLICATE``.
- A new REALTIME FIRE on a bank cuts the older FIRE's pulses short only on the channels it
  commands; the older FIRE is reported (aborted, bit 1) once its last channel has closed.
- FAULT is entered by :meth:`UnitCore.force_fault` (the board's self-check; the dictionary has
  no fault kind for it). Entering FAULT from ARMING/ARMED emits SAFE_ENTERED with reason 0.
- HK ``watchdog_remaining_ms`` is 0 when the watchdog is not running (SAFE, FAULT).
- HK ``length_errors`` counts LENGTH and TOO_LONG errors; ``uart_overruns`` counts receive
  chunks lost while the unit was stalled (STALL_MS fault).
- Stuck-open channels are always in ``open_mask()`` (the valve is physically open).
- Health faults (FAIL_OFF, STUCK_OPEN, tank pressure) model hardware: they survive every reset
  (this object is the power-on); link faults (DROP_RX, CORRUPT_TX, STALL_MS) and parameters do
  not. ``counters`` count since power-on (the emulator's log); HK reports them since the last
  boot, as the board (whose RAM a reset clears) does.
- Session tokens are 32 bits from ``entropy()`` (default :func:`secrets.randbits`, never
  ``rng_seed``: a seed fixes the ARM-challenge nonces of a test, never a session), mixed with
  HELLO's host nonce and a session counter by :func:`mix32`, never 0, never the previous one.
- The ``session_error_limit``-th command with a wrong token in one session is a LOCKOUT: every
  valve closed, ARMING/ARMED -> SAFE (INTRUSION), the session void, a LOCKOUT event. Wrong
  tokens while there is no session are counted (HK) but cannot lock out what does not exist.
- Step window: ARM_CONFIRM sets every bank's floor to ``next_step - 1`` (refused STALE unless
  ``next_step`` is after every floor of the session) and fixes the window ``W``; a FIRE is
  executed only for a step in ``(floor, floor + W]``, which becomes the floor. Floors live as
  long as the session.
- Tank pressure below ``min_feed_kpa`` (the dictionary's limit): on the change, ARMING/ARMED
  closes every valve and goes SAFE with reason LOW_PRESSURE (SAFE_ENTERED arg1: the pressure in
  kPa); while it stays below, ARM_REQUEST and ARM_CONFIRM are REJECTED_STATE (so FIRE is refused
  as in SAFE). A pressure that comes back leaves the unit SAFE: the host must ARM again. So the
  unit is never ARMING/ARMED below the minimum. Stuck-open valves stay open (they cannot close).
"""

from __future__ import annotations

import random
import secrets
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from cobs import cobs as _cobs
from thruster_hil.firmware_bridge import codec
from thruster_hil.firmware_bridge.codec import Decoder, Message, ProtocolError
from thruster_hil.firmware_bridge.dictionary import (
    APIDS,
    CHANNELS_PER_BANK,
    DICT_HASH,
    ENUMS,
    EVENT,
    FAULT,
    FLAG_ACK_REQ,
    FLAG_RETRANSMIT,
    FLAG_TEST_BUILD,
    LIMITS,
    MESSAGES,
    MODE,
    PROTO_VERSION,
    RESULT,
    STATE,
    STATE_NAMES,
    TICK_US,
)
from thruster_hil.firmware_bridge.statetable import COMMANDS, EVENTS, Cell, hears_commands

BOOT, SAFE, ARMING, ARMED, FAULT_STATE = (
    STATE[k] for k in ("BOOT", "SAFE", "ARMING", "ARMED", "FAULT")
)
LOCKSTEP, REALTIME = MODE["LOCKSTEP"], MODE["REALTIME"]
R = RESULT
REASON = ENUMS["safe_reason"]
FRAME_ERROR = ENUMS["frame_error"]
RESET_CAUSE = ENUMS["reset_cause"]
PARAM = ENUMS["param"]

FW_VERSION = 0x0100
DEFAULT_TANK_KPA = 1800
MIN_FEED_KPA = LIMITS["min_feed_kpa"]
BAD_FRAME_EVENT_GAP_US = LIMITS["bad_frame_event_gap_ms"] * 1000
SESSION_ERROR_LIMIT = LIMITS["session_error_limit"]
STEP_WINDOW_MIN = LIMITS["step_window_min"]
SEQ_MODULO = codec.SEQ_MODULO
_ERROR_KIND = {
    "cobs": FRAME_ERROR["COBS"],
    "crc": FRAME_ERROR["CRC"],
    "length": FRAME_ERROR["LENGTH"],
    "header": FRAME_ERROR["HEADER"],
    "unknown_id": FRAME_ERROR["UNKNOWN_ID"],
    "too_long": FRAME_ERROR["TOO_LONG"],
}
_SESSION_CMDS = frozenset(
    {"HEARTBEAT", "ARM_REQUEST", "ARM_CONFIRM", "DISARM", "FIRE", "SET_PARAM", "FAULT_INJECT"}
)
_FIRE_CELLS = COMMANDS["FIRE"]
_ARM_IDLE_US = LIMITS["arm_idle_ms"] * 1000
_MAX_ON_TICKS_CAP = LIMITS["max_on_ticks_cap"]
_VR_APID = MESSAGES["VALVE_REPORT"].apid
_encode_fields = codec.encode_fields
_ARM_CHALLENGE_US = LIMITS["arm_challenge_ms"] * 1000
#: hears_commands() of each state, worked out once (it runs for every chunk of input).
_HEARS = {state: hears_commands(state) for state in STATE_NAMES}
#: The states in which each timer / event applies, from the state table.
_WATCHDOG_STATES = frozenset(s for s, c in EVENTS["WATCHDOG"].items() if c.kind == "action")
_ARM_IDLE_STATES = frozenset(s for s, c in EVENTS["ARM_IDLE"].items() if c.kind == "action")
_CHALLENGE_STATES = frozenset(
    s for s, c in EVENTS["CHALLENGE_EXPIRED"].items() if c.kind == "action"
)
#: Commands whose reply is cached so a retransmission (same seq + RETRANSMIT) is answered
#: without acting twice.
_CACHED_CMDS = frozenset(
    {"HELLO", "ARM_REQUEST", "ARM_CONFIRM", "DISARM", "SET_PARAM", "FAULT_INJECT"}
)
_CACHE_SIZE = 32
EXECUTED_LOG_SIZE = 4096  # bound on executed_log: an emulator may serve for days
_PARAM_LIMITS = {
    PARAM["WATCHDOG_MS"]: lambda v: LIMITS["watchdog_ms_min"] <= v <= LIMITS["watchdog_ms_max"],
    PARAM["HK_PERIOD_MS"]: lambda v: v == 0 or 20 <= v <= 10000,
    PARAM["MIN_ON_TICKS"]: lambda v: 0 <= v <= 1000,
}


def mix32(x: int) -> int:
    """MurmurHash3's 32-bit finaliser (fmix32): every input bit flips each output bit with
    probability about 1/2. The firmware's unit.c has the same function (tested equal)."""
    x &= 0xFFFFFFFF
    x ^= x >> 16
    x = (x * 0x85EBCA6B) & 0xFFFFFFFF
    x ^= x >> 13
    x = (x * 0xC2B2AE35) & 0xFFFFFFFF
    x ^= x >> 16
    return x


def step_window(watchdog_ms: int, period_ms: int) -> int:
    """How far ahead of its floor a FIRE step may be: every step a host can lose before the
    link watchdog would trip anyway, and never fewer than ``step_window_min``."""
    return max(STEP_WINDOW_MIN, -(-watchdog_ms // period_ms) + 1)


@dataclass(slots=True)
class _Pulse:
    """One accepted FIRE of one bank (REALTIME: in progress until every channel has closed)."""

    session: int
    step: int
    bank: int
    t_start: int
    planned: list[int]  # executed ticks if nothing interrupts, per channel of the bank
    flags: int
    ends: dict[int, int] = field(default_factory=dict)  # channel-in-bank -> end time (us)
    executed: list[int] = field(default_factory=lambda: [0] * CHANNELS_PER_BANK)
    failed: int = 0
    stuck: int = 0


class UnitCore:
    """The unit's logic. See the module docstring for the driving protocol and open choices.

    Inspection: ``state``, ``session`` (None when there is none), ``mode``, ``counters`` (dict),
    ``open_mask()``, ``executed_log`` (the last EXECUTED_LOG_SIZE
    ``(session, step, bank, executed_ticks_tuple)``, one per executed FIRE, appended when its
    report goes out) and ``journal`` (list of dicts
    describing state changes, fires, trips, boots and faults; an I/O wrapper drains it into its
    log).
    """

    def __init__(
        self,
        n_channels: int = 32,
        fw_ver: int = FW_VERSION,
        boot_count: int = 1,
        reset_cause: int = RESET_CAUSE["POWER_ON"],
        test_build: bool = True,
        min_on_ticks: int = 5,
        rng_seed: int | None = None,
        dict_hash: int = DICT_HASH,
        entropy: Callable[[], int] | None = None,
    ):
        if not 1 <= n_channels <= 32:
            raise ValueError(f"n_channels must be 1..32, got {n_channels}")
        self.n_channels = n_channels
        self.n_banks = (n_channels + CHANNELS_PER_BANK - 1) // CHANNELS_PER_BANK
        self.fw_ver = fw_ver
        self.boot_count = boot_count
        self.reset_cause = reset_cause
        self.test_build = test_build
        self.default_min_on_ticks = min_on_ticks
        self.dict_hash = dict_hash
        self._rng = random.Random(rng_seed)  # ARM-challenge nonces only
        self._entropy = entropy if entropy is not None else lambda: secrets.randbits(32)
        self._sessions_made = 0
        self.state = BOOT
        self.arm_enabled = True
        # Hardware: survives resets.
        self.failed = 0  # bit per channel
        self.stuck = 0
        self.tank_kpa = DEFAULT_TANK_KPA
        self.counters = {
            k: 0
            for k in (
                "rx_frames",
                "crc_errors",
                "cobs_errors",
                "length_errors",
                "header_errors",
                "unknown_id_errors",
                "seq_gaps",
                "uart_overruns",
                "session_errors",
                "dropped_rx",
                "corrupted_tx",
                "bad_frame_events_suppressed",
                "fires_executed",
                "duplicate_fires",
                "stale_fires",
                "watchdog_trips",
                "retransmits_answered",
                "tx_frames",
            )
        }
        self.executed_log: deque[tuple[int, int, int, tuple[int, ...]]] = deque(
            maxlen=EXECUTED_LOG_SIZE
        )
        self.journal: list[dict] = []
        self._last_session: int | None = None
        self._power_on()

    # ---------------------------------------------------------------- lifecycle

    def _power_on(self) -> None:
        """RAM state after a (re)boot: no session, defaults, every valve closed."""
        self._end_session(None)
        self.drop_rx = 0  # link faults: a reset ends them
        self.corrupt_tx = 0
        self.stall_until: int | None = None
        self._hk_base = dict(self.counters)  # HK counts since this boot
        self.mode = LOCKSTEP
        self.period_ms = 100
        self.watchdog_ms = LIMITS["watchdog_ms_default"]
        self.hk_period_ms = LIMITS["hk_period_ms_default"]
        self.min_on_ticks = self.default_min_on_ticks
        self.max_on_ticks = LIMITS["max_on_ticks_cap"]
        self._challenge_t = 0
        self._last_valid = 0
        self._idle_from = 0
        self.step_window = STEP_WINDOW_MIN
        self._pending: list[_Pulse] = []  # REALTIME pulses not yet reported
        self._tm_seq = {
            apid: 0 for apid in (APIDS["unit_reply"], APIDS["unit_event"], APIDS["valve_report"])
        }
        self._rx_seq: int | None = None
        self._cache: dict[tuple[int, int, tuple], list[tuple[str, int, dict]]] = {}
        self._decoder = Decoder()
        self._next_hk: int | None = None
        self._last_bad_frame_event: int | None = None
        self._bad_since_event = 0

    def boot(self, now_us: int) -> bytes:
        """Leave BOOT: send the BOOT packet, enter SAFE, start HK."""
        out: list[bytes] = []
        self._emit(
            out,
            "BOOT",
            fw_ver=self.fw_ver,
            proto_ver=PROTO_VERSION,
            boot_count=self.boot_count,
            reset_cause=self.reset_cause,
            n_channels=self.n_channels,
            dict_hash=self.dict_hash,
        )
        self.state = EVENTS["BOOT_DONE"][BOOT].next()
        self.journal.append(
            {
                "t_us": now_us,
                "ev": "boot",
                "boot_count": self.boot_count,
                "reset_cause": self.reset_cause,
            }
        )
        self._event(out, now_us, "BOOTED", self.boot_count, self.reset_cause)
        self._next_hk = now_us + self.hk_period_ms * 1000 if self.hk_period_ms else None
        return b"".join(out)

    def reset(self, now_us: int, cause: int = RESET_CAUSE["SOFTWARE"]) -> bytes:
        """A reset: valves closed (pulses in progress reported as aborted), then a new boot with
        ``boot_count + 1`` and no session."""
        out: list[bytes] = []
        self._close_all(out, now_us)
        old = self.state
        self.boot_count = (self.boot_count + 1) & 0xFFFF
        self.reset_cause = cause
        self._power_on()
        self.state = EVENTS["RESET"][old].next()
        if old != self.state:
            self.journal.append(
                {
                    "t_us": now_us,
                    "ev": "state",
                    "from": STATE_NAMES[old],
                    "to": STATE_NAMES[self.state],
                    "reason": "RESET",
                }
            )
        return b"".join(out) + self.boot(now_us)

    def stop_all(self, now_us: int) -> bytes:
        """What STOP_ALL does, without a command (the emulator's shutdown): every valve closed,
        ARMING/ARMED -> SAFE."""
        out: list[bytes] = []
        cell = COMMANDS["STOP_ALL"][self.state]
        if cell.kind == "action":
            self._leave_armed(out, now_us, cell.next(), REASON["COMMANDED"])
        return b"".join(out)

    def force_fault(self, now_us: int) -> bytes:
        """The board's self-check found a hardware fault: close everything, enter FAULT."""
        out: list[bytes] = []
        cell = EVENTS["SELF_CHECK_FAULT"][self.state]
        if cell.kind == "action":
            self._leave_armed(out, now_us, cell.next(), 0)
        return b"".join(out)

    # ---------------------------------------------------------------- inspection

    def open_mask(self) -> int:
        """Valves open now, one bit per channel (stuck-open valves always included)."""
        mask = self.stuck
        for p in self._pending:
            for c in p.ends:
                mask |= 1 << (p.bank * CHANNELS_PER_BANK + c)
        return mask

    def watchdog_active(self) -> bool:
        return self.state in _WATCHDOG_STATES

    def pressure_low(self) -> bool:
        """The tank is below the minimum feed pressure: no arming, no firing."""
        return self.tank_kpa < MIN_FEED_KPA

    def next_deadline_us(self) -> int | None:
        # (The driver asks after every frame: no list unless pulses are pending.)
        first = self._next_hk
        state = self.state
        if state in _WATCHDOG_STATES:
            t = self._last_valid + self.watchdog_ms * 1000
            if first is None or t < first:
                first = t
        if state in _ARM_IDLE_STATES:
            t = self._idle_from + _ARM_IDLE_US
            if first is None or t < first:
                first = t
        if self._pending:
            t = min((t for p in self._pending for t in p.ends.values()), default=None)
            if t is not None and (first is None or t < first):
                first = t
        t = self.stall_until
        if t is not None and (first is None or t < first):
            first = t
        return first

    # ---------------------------------------------------------------- output helpers

    def _encode(self, name: str, seq: int, flags: int, fields: dict) -> bytes:
        if self.test_build:
            flags |= FLAG_TEST_BUILD
        frame = _encode_fields(name, seq, flags, fields)
        self.counters["tx_frames"] += 1
        if self.corrupt_tx > 0:
            self.corrupt_tx -= 1
            self.counters["corrupted_tx"] += 1
            packet = bytearray(_cobs.decode(frame[:-1]))
            packet[-1] ^= 0x5A  # the CRC's low byte: the frame stays COBS-valid, its CRC fails
            frame = _cobs.encode(bytes(packet)) + b"\x00"
        return frame

    def _emit(self, out: list[bytes], name: str, **fields) -> tuple[int, dict]:
        return self._emit_fields(out, name, fields), fields

    def _emit_fields(self, out: list[bytes], name: str, fields: dict) -> int:
        apid = MESSAGES[name].apid
        seq = self._tm_seq[apid]
        self._tm_seq[apid] = (seq + 1) % SEQ_MODULO
        out.append(self._encode(name, seq, 0, fields))
        return seq

    def _event(
        self, out: list[bytes], now_us: int, name: str, arg0: int = 0, arg1: int = 0, arg2: int = 0
    ) -> None:
        self._emit(
            out,
            "EVENT",
            pu_time_us=now_us & 0xFFFFFFFF,
            event=EVENT[name],
            state=self.state,
            arg0=arg0 & 0xFFFF,
            arg1=arg1 & 0xFFFF,
            arg2=arg2 & 0xFFFF,
        )

    def _ack(self, out: list[bytes], replies: list, msg: Message, result: int) -> None:
        fields = {"acked_seq": msg.seq, "msg_id": msg.spec.id, "result": result}
        seq, _ = self._emit(out, "ACK", **fields)
        replies.append(("ACK", seq, fields))

    def _reply(self, out: list[bytes], replies: list, name: str, **fields) -> None:
        seq, _ = self._emit(out, name, **fields)
        replies.append((name, seq, fields))

    # ---------------------------------------------------------------- state changes

    def _set_state(self, now_us: int, new: int, reason: str) -> None:
        if new != self.state:
            self.journal.append(
                {
                    "t_us": now_us,
                    "ev": "state",
                    "from": STATE_NAMES[self.state],
                    "to": STATE_NAMES[new],
                    "reason": reason,
                }
            )
            self.state = new

    def _leave_armed(
        self, out: list[bytes], now_us: int, new: int, reason: int, arg1: int = 0
    ) -> None:
        """Go SAFE or FAULT: close every valve first, then SAFE_ENTERED (if the state changes
        from ARMING/ARMED, or from FAULT to SAFE) with ``reason`` and ``arg1``."""
        self._close_all(out, now_us)
        old = self.state
        if old == new:
            return
        self._nonce = None
        names = {v: k for k, v in REASON.items()}
        self._set_state(now_us, new, names.get(reason, "FAULT" if new == FAULT_STATE else "?"))
        if old in (ARMING, ARMED) or new == SAFE:
            self._event(out, now_us, "SAFE_ENTERED", reason, arg1)

    def _close_all(self, out: list[bytes], now_us: int) -> None:
        """Abort every pulse in progress: report each with the ticks executed so far."""
        for p in list(self._pending):
            for c in list(p.ends):
                self._cut(p, c, now_us)
            self._finish(out, p, now_us)
        self._pending.clear()

    def _cut(self, p: _Pulse, c: int, now_us: int) -> None:
        # Whole ticks the valve was open before the cut (the firmware switches on tick edges).
        p.executed[c] = min(p.planned[c], max(0, (now_us - p.t_start) // TICK_US))
        p.flags |= 2
        del p.ends[c]

    def _finish(self, out: list[bytes], p: _Pulse, now_us: int) -> None:
        if p in self._pending:
            self._pending.remove(p)
        self._report(out, p, now_us)

    def _report(self, out: list[bytes], p: _Pulse, now_us: int) -> None:
        self._report_values(
            out,
            p.session,
            p.step,
            p.bank,
            p.t_start,
            p.executed,
            p.flags,
            p.failed,
            p.stuck,
            now_us,
        )

    def _report_values(
        self,
        out: list[bytes],
        session: int,
        step: int,
        bank: int,
        t_start: int,
        executed_ticks: list[int],
        flags: int,
        failed: int,
        stuck: int,
        now_us: int,
    ) -> None:
        """VALVE_REPORT of one executed FIRE (a pulse's numbers), its log and journal."""
        executed = list(executed_ticks)
        if stuck:
            for c in range(CHANNELS_PER_BANK):
                if stuck >> c & 1:
                    executed[c] = max(executed[c], self._period_ticks())
        ticks = tuple(executed)
        fields = {
            "step": step,
            "t_start_pu_us": t_start & 0xFFFFFFFF,
            "bank": bank,
            "flags": flags,
            "executed_ticks": ticks,
            "failed_mask": failed,
            "stuck_mask": stuck,
        }
        tm_seq = self._tm_seq
        seq = tm_seq[_VR_APID]  # (_emit_fields, inline: every FIRE)
        tm_seq[_VR_APID] = (seq + 1) % SEQ_MODULO
        out.append(self._encode("VALVE_REPORT", seq, 0, fields))
        if session == self.session:
            self._reports[bank] = (step, seq, fields)
        self.executed_log.append((session, step, bank, ticks))
        self.counters["fires_executed"] += 1
        self.journal.append(
            {
                "t_us": now_us,
                "ev": "fire",
                "session": session,
                "step": step,
                "bank": bank,
                "mode": "REALTIME" if self.mode else "LOCKSTEP",
                "t_start_us": t_start,
                "executed": executed,
                "flags": flags,
                "aborted": bool(flags & 2),
            }
        )

    def _period_ticks(self) -> int:
        return self.period_ms * 1000 // TICK_US

    # ---------------------------------------------------------------- timers

    def tick(self, now_us: int, late_us: int = 0) -> bytes:
        """Run the timers at ``now_us``. ``late_us``: how late the driver runs them, i.e. how
        long ago they fell due (0: on time); a WATCHDOG_TRIP found here carries it in arg1
        (at most 65535), so the trip's timing tells the unit's logic from its scheduling."""
        out: list[bytes] = []
        self._run_timers(out, now_us, late_us)
        return b"".join(out)

    def _run_timers(self, out: list[bytes], now_us: int, late_us: int = 0) -> None:
        state = self.state
        if state == BOOT:
            return
        if self.stall_until is not None and now_us >= self.stall_until:
            self.stall_until = None
        wd_deadline = (
            self._last_valid + self.watchdog_ms * 1000 if state in _WATCHDOG_STATES else None
        )
        if self._pending:  # (LOCKSTEP: never; its pulses are reported at once)
            # Pulses that ended (before the watchdog would have cut them), in time order.
            ends = sorted(
                (t, i, c)
                for i, p in enumerate(self._pending)
                for c, t in p.ends.items()
                if t <= now_us and (wd_deadline is None or t <= wd_deadline)
            )
            done: list[_Pulse] = []
            for _, i, c in ends:
                p = self._pending[i]
                p.executed[c] = p.planned[c]
                del p.ends[c]
                if not p.ends:
                    done.append(p)
            for p in done:
                self._finish(out, p, now_us)
        if wd_deadline is not None and now_us >= wd_deadline:
            since_ms = (now_us - self._last_valid) // 1000
            self.counters["watchdog_trips"] += 1
            self._event(out, now_us, "WATCHDOG_TRIP", min(since_ms, 0xFFFF), min(late_us, 0xFFFF))
            self._leave_armed(
                out, now_us, EVENTS["WATCHDOG"][self.state].next(), REASON["WATCHDOG"]
            )
            self.journal.append(
                {
                    "t_us": now_us,
                    "ev": "watchdog_trip",
                    "last_valid_us": self._last_valid,
                    "closed_us": now_us,
                    "since_valid_ms": (now_us - self._last_valid) / 1000,
                    "watchdog_ms": self.watchdog_ms,
                }
            )
        if self.state in _ARM_IDLE_STATES and now_us >= self._idle_from + _ARM_IDLE_US:
            self._leave_armed(
                out, now_us, EVENTS["ARM_IDLE"][self.state].next(), REASON["ARM_TIMEOUT"]
            )
        if (
            self.state in _CHALLENGE_STATES
            and self._nonce is not None
            and now_us - self._challenge_t > _ARM_CHALLENGE_US
        ):
            self._nonce = None  # expired: an ARM_CONFIRM now is BAD_NONCE
        if self._next_hk is not None and now_us >= self._next_hk:
            if self.stall_until is None:
                self._emit(out, "HK", **self.hk_fields(now_us))
            self._next_hk += self.hk_period_ms * 1000
            if self._next_hk <= now_us:
                self._next_hk = now_us + self.hk_period_ms * 1000

    def hk_fields(self, now_us: int) -> dict:
        c = {k: v - self._hk_base[k] for k, v in self.counters.items()}
        remaining = 0
        if self.watchdog_active():
            remaining = max(0, self._last_valid + self.watchdog_ms * 1000 - now_us) // 1000
        u16 = 0xFFFF
        return {
            "pu_time_us": now_us & 0xFFFFFFFF,
            "state": self.state,
            "watchdog_remaining_ms": min(remaining, u16),
            "rx_frames": c["rx_frames"] & u16,
            "crc_errors": c["crc_errors"] & u16,
            "cobs_errors": c["cobs_errors"] & u16,
            "length_errors": c["length_errors"] & u16,
            "seq_gaps": c["seq_gaps"] & u16,
            "uart_overruns": c["uart_overruns"] & u16,
            "session_errors": c["session_errors"] & u16,
            "last_step": self.last_step & 0xFFFFFFFF,
            "open_mask": self.open_mask() & 0xFFFFFFFF,
            "failed_mask": self.failed,
            "stuck_mask": self.stuck,
            "tank_kPa": min(self.tank_kpa, u16),
        }

    # ---------------------------------------------------------------- input

    def receive(self, data: bytes, now_us: int) -> bytes:
        out: list[bytes] = []
        self._run_timers(out, now_us)
        hears = _HEARS.get(self.state)
        if not (hears if hears is not None else hears_commands(self.state)):  # BOOT
            return b"".join(out)
        if self.stall_until is not None:
            if data:
                self.counters["uart_overruns"] += 1
            return b"".join(out)
        for item in self._decoder.feed(data):
            if self.drop_rx > 0:
                self.drop_rx -= 1
                self.counters["dropped_rx"] += 1
                continue
            if isinstance(item, ProtocolError):
                self._bad_frame(out, item, now_us)
                continue
            self.counters["rx_frames"] += 1
            self._count_seq(item)
            boots = self.boot_count
            self._command(out, item, now_us)
            if boots != self.boot_count or self.stall_until is not None:
                break  # reset or stall: the rest of this chunk is lost
        return b"".join(out)

    def _bad_frame(self, out: list[bytes], err: ProtocolError, now_us: int) -> None:
        key = {"too_long": "length_errors", "unknown_id": "unknown_id_errors"}.get(
            err.kind, f"{err.kind}_errors"
        )
        if key in self.counters:
            self.counters[key] += 1
        self._bad_since_event += 1
        last = self._last_bad_frame_event
        if last is None or now_us - last >= BAD_FRAME_EVENT_GAP_US:
            self._event(
                out, now_us, "BAD_FRAME", _ERROR_KIND.get(err.kind, 0), self._bad_since_event
            )
            self._last_bad_frame_event = now_us
            self._bad_since_event = 0
        else:
            self.counters["bad_frame_events_suppressed"] += 1

    def _count_seq(self, msg: Message) -> None:
        if msg.flags & FLAG_RETRANSMIT:
            return
        if msg.name == "HELLO" or self._rx_seq is None:
            self._rx_seq = msg.seq  # a new host may start its counts anywhere
            return
        gap = (msg.seq - self._rx_seq - 1) % SEQ_MODULO
        if gap and gap < SEQ_MODULO // 2:
            self.counters["seq_gaps"] += 1
        if gap < SEQ_MODULO // 2:
            self._rx_seq = msg.seq

    def _command(self, out: list[bytes], msg: Message, now_us: int) -> None:
        name = msg.name
        if name == "FIRE" and self.session is not None and msg.fields["session"] == self.session:
            self._dispatch(out, [], msg, now_us, _FIRE_CELLS[self.state])  # every cycle: uncached
            return
        key = None
        if name in _CACHED_CMDS:
            key = (msg.spec.id, msg.seq, tuple(sorted(msg.fields.items())))
            if msg.flags & FLAG_RETRANSMIT and key in self._cache:
                self.counters["retransmits_answered"] += 1
                for rname, rseq, rfields in self._cache[key]:
                    out.append(self._encode(rname, rseq, FLAG_RETRANSMIT, rfields))
                return
        replies: list[tuple[str, int, dict]] = []
        if name in _SESSION_CMDS and (self.session is None or msg["session"] != self.session):
            self.counters["session_errors"] += 1
            self._event(out, now_us, "SESSION_REJECTED", msg.spec.id)
            self._ack(out, replies, msg, R["BAD_SESSION"])
            if self.session is not None:
                self._session_errors += 1
                if self._session_errors >= SESSION_ERROR_LIMIT:
                    self._lockout(out, now_us, msg.spec.id)
        else:
            row = COMMANDS.get(name)
            if row is None:  # a TM id sent as TC is refused by the codec; belt and braces
                self._ack(out, replies, msg, R["UNSUPPORTED"])
            else:
                self._dispatch(out, replies, msg, now_us, row[self.state])
        if key is not None:
            self._cache[key] = replies
            while len(self._cache) > _CACHE_SIZE:
                del self._cache[next(iter(self._cache))]

    def _dispatch(
        self, out: list[bytes], replies: list, msg: Message, now_us: int, cell: Cell
    ) -> None:
        """One command in the present state, as the state table says: refused with the cell's
        result, or handed to the cell's action (which reads the next state from ``self._cell``).
        """
        if cell.kind == "refuse":
            self._ack(out, replies, msg, cell.refusal)
        elif cell.kind == "action":
            self._cell = cell
            _COMMAND_ACTIONS[cell.action](self, out, replies, msg, now_us)

    def _lockout(self, out: list[bytes], now_us: int, msg_id: int) -> None:
        """Someone without the session is guessing: every valve closed, SAFE, session void."""
        cell = EVENTS["LOCKOUT"][self.state]
        if cell.kind == "action":
            self._leave_armed(out, now_us, cell.next(), REASON["INTRUSION"])
        self._event(out, now_us, "LOCKOUT", self._session_errors, msg_id)
        self.journal.append(
            {
                "t_us": now_us,
                "ev": "lockout",
                "session_errors": self._session_errors,
                "msg_id": msg_id,
            }
        )
        self._end_session(None)

    def _end_session(self, session: int | None) -> None:
        """A new session (or none): what the old one knew about steps and reports is void."""
        self.session = session
        self._session_errors = 0  # wrong tokens in this session (the lockout's count)
        self._nonce: int | None = None
        self._last_step: dict[int, int] = {}  # bank -> last executed step (this session)
        self._floor: dict[int, int] = {}  # bank -> the step a FIRE must be after (this session)
        self._reports: dict[int, tuple[int, int, dict]] = {}  # bank -> (step, seq, fields)
        self._last_fire_t: int | None = None  # arrival of the previous FIRE (REALTIME stale)
        self.last_step = 0

    def set_arm_enable(self, enabled: bool, now_us: int) -> bytes:
        """The board's arm-enable input: disabled refuses ARM_CONFIRM (ARM_DISABLED), and an
        ARMED unit goes SAFE (reason ARM_DISABLED). The emulator has no such input."""
        out: list[bytes] = []
        self.arm_enabled = bool(enabled)
        cell = EVENTS["ARM_ENABLE_OFF"][self.state]
        if not enabled and cell.kind == "action":
            self._leave_armed(out, now_us, cell.next(), REASON["ARM_DISABLED"])
        return b"".join(out)

    # ---------------------------------------------------------------- commands

    def _new_session(self, host_nonce: int) -> int:
        """A 32-bit token: the host's nonce (a new session per HELLO even on a deterministic
        unit) mixed with the unit's own entropy (unpredictable to anyone who never read the
        line) and a counter."""
        while True:
            self._sessions_made += 1
            s = mix32(host_nonce ^ self._entropy() ^ (self._sessions_made * 0x9E3779B9))
            if s != 0 and s != self._last_session:
                self._last_session = s
                return s

    def _on_hello(self, out, replies, msg: Message, now_us: int) -> None:
        mode, period = msg["mode"], msg["period_ms"]
        base = {
            "fw_ver": self.fw_ver,
            "proto_ver": PROTO_VERSION,
            "dict_hash": self.dict_hash,
            "n_channels": self.n_channels,
            "tick_us": TICK_US,
            "boot_count": self.boot_count,
        }
        if msg["dict_hash"] != self.dict_hash or msg["proto_ver"] != PROTO_VERSION:
            result, session = R["DICT_MISMATCH"], None
        elif mode not in (LOCKSTEP, REALTIME):
            result, session = R["BAD_MODE"], self.session
        elif not LIMITS["period_ms_min"] <= period <= LIMITS["period_ms_max"]:
            result, session = R["BAD_PARAM"], self.session
        else:
            result, session = R["ACCEPTED"], self._new_session(msg["host_nonce"])
        if result in (R["ACCEPTED"], R["DICT_MISMATCH"]):
            # Any session ends here: the old one is void whatever the outcome.
            nxt = self._cell.next(result)
            if nxt != self.state:
                self._leave_armed(out, now_us, nxt, REASON["NEW_SESSION"])
            self._end_session(session)
            if result == R["ACCEPTED"]:
                self.mode, self.period_ms = mode, period
        self._reply(
            out,
            replies,
            "HELLO_ACK",
            result=result,
            session=session if result == R["ACCEPTED"] else 0,
            min_on_ticks=self.min_on_ticks,
            watchdog_ms=self.watchdog_ms,
            mode=self.mode,
            **base,
        )

    def _on_heartbeat(self, out, replies, msg: Message, now_us: int) -> None:
        self._last_valid = now_us
        if msg.flags & FLAG_ACK_REQ:
            self._ack(out, replies, msg, R["ACCEPTED"])

    def _on_ping(self, out, replies, msg: Message, now_us: int) -> None:
        t = now_us & 0xFFFFFFFF
        self._reply(
            out,
            replies,
            "PONG",
            nonce=msg["nonce"],
            t1_host_us=msg["t1_host_us"],
            t2_pu_us=t,
            t3_pu_us=t,
        )

    def _on_arm_request(self, out, replies, msg: Message, now_us: int) -> None:
        if self.pressure_low():  # the state was checked by the table
            self._ack(out, replies, msg, R["REJECTED_STATE"])
            return
        self._nonce = self._rng.randrange(1, 1 << 32)
        self._challenge_t = now_us
        self._last_valid = now_us
        self._set_state(now_us, self._cell.next(), "ARM_REQUEST")
        self._reply(
            out, replies, "ARM_CHALLENGE", nonce=self._nonce, valid_ms=LIMITS["arm_challenge_ms"]
        )

    def _on_arm_confirm(self, out, replies, msg: Message, now_us: int) -> None:
        if self.pressure_low():  # never while ARMING (TANK_LOW leaves it): defence in depth
            self._ack(out, replies, msg, R["REJECTED_STATE"])
            return
        if not self.arm_enabled:
            self._ack(out, replies, msg, R["ARM_DISABLED"])
            return
        next_step = msg["next_step"]
        if not 1 <= msg["max_on_ticks"] <= LIMITS["max_on_ticks_cap"] or next_step == 0:
            self._ack(out, replies, msg, R["BAD_PARAM"])
            return
        if self._floor and next_step <= max(self._floor.values()):
            self._ack(out, replies, msg, R["STALE"])  # a step this session already passed
            return
        fresh = (
            self._nonce is not None
            and now_us - self._challenge_t <= LIMITS["arm_challenge_ms"] * 1000
        )
        if not fresh or msg["nonce"] != self._nonce:
            self._leave_armed(out, now_us, self._cell.next(R["BAD_NONCE"]), REASON["BAD_NONCE"])
            self._ack(out, replies, msg, R["BAD_NONCE"])
            return
        self._nonce = None
        self.max_on_ticks = msg["max_on_ticks"]
        self._floor = dict.fromkeys(range(self.n_banks), next_step - 1)
        self.step_window = step_window(self.watchdog_ms, self.period_ms)
        self._last_valid = now_us
        self._idle_from = now_us
        self._last_fire_t = None
        self._set_state(now_us, self._cell.next(), "ARM_CONFIRM")
        self._ack(out, replies, msg, R["ACCEPTED"])
        self._event(out, now_us, "ARMED", self.max_on_ticks)

    def _on_disarm(self, out, replies, msg: Message, now_us: int) -> None:
        was = self.state
        self._leave_armed(out, now_us, self._cell.next(), REASON["COMMANDED"])
        if was in (ARMING, ARMED):
            self._event(out, now_us, "DISARMED")
        self._ack(out, replies, msg, R["ACCEPTED"])

    def _on_stop_all(self, out, replies, msg: Message, now_us: int) -> None:
        # Every valve closed in every state; the state after is the table's.
        self._leave_armed(out, now_us, self._cell.next(), REASON["COMMANDED"])
        if msg.flags & FLAG_ACK_REQ:
            self._ack(out, replies, msg, R["ACCEPTED"])

    def _on_set_param(self, out, replies, msg: Message, now_us: int) -> None:
        param, value = msg["param"], msg["value"]
        check = _PARAM_LIMITS.get(param)
        if check is None or not check(value):
            self._ack(out, replies, msg, R["BAD_PARAM"])
            return
        if param == PARAM["WATCHDOG_MS"]:
            self.watchdog_ms = value
        elif param == PARAM["HK_PERIOD_MS"]:
            self.hk_period_ms = value
            self._next_hk = now_us + value * 1000 if value else None
        else:
            self.min_on_ticks = value
        self._ack(out, replies, msg, R["ACCEPTED"])

    def _on_fault_inject(self, out, replies, msg: Message, now_us: int) -> None:
        if not self.test_build:
            self._ack(out, replies, msg, R["UNSUPPORTED"])
            return
        kind, arg = msg["fault"], msg["arg"]
        if kind not in FAULT.values():
            self._ack(out, replies, msg, R["UNSUPPORTED"])
            return
        if (
            kind in (FAULT["FAIL_OFF"], FAULT["STUCK_OPEN"])
            and arg >= self.n_channels
            or kind == FAULT["CLEAR"]
            and arg >= self.n_channels
            and arg != 0xFFFF
        ):
            self._ack(out, replies, msg, R["BAD_PARAM"])
            return
        if msg.flags & FLAG_ACK_REQ:
            self._ack(out, replies, msg, R["ACCEPTED"])
        out.append(self.inject_fault(kind, arg, now_us, source="wire"))

    def inject_fault(self, kind: int, arg: int, now_us: int, source: str = "local") -> bytes:
        """Apply a fault (enum ``fault``) directly, as the bench would: used by FAULT_INJECT and
        by the emulator's scheduled faults. Returns the frames to send."""
        out: list[bytes] = []
        self.journal.append(
            {
                "t_us": now_us,
                "ev": "fault",
                "kind": _FAULT_NAMES.get(kind, kind),
                "arg": arg,
                "source": source,
            }
        )
        if self.state != BOOT:
            self._event(out, now_us, "FAULT_INJECTED", kind, arg)
        if kind == FAULT["DROP_RX"]:
            self.drop_rx += arg
        elif kind == FAULT["CORRUPT_TX"]:
            self.corrupt_tx += arg
        elif kind == FAULT["STALL_MS"]:
            self.stall_until = now_us + arg * 1000
        elif kind == FAULT["RESET"]:
            out.append(self.reset(now_us, RESET_CAUSE["SOFTWARE"]))
        elif kind in (FAULT["FAIL_OFF"], FAULT["STUCK_OPEN"], FAULT["CLEAR"]):
            bits = (1 << self.n_channels) - 1 if arg == 0xFFFF else 1 << arg
            if kind == FAULT["FAIL_OFF"]:
                self.failed |= bits
                self._cut_channels(out, bits, now_us)
            elif kind == FAULT["STUCK_OPEN"]:
                self.stuck |= bits
            else:
                self.failed &= ~bits
                self.stuck &= ~bits
        elif kind == FAULT["TANK_PRESSURE"]:
            self._set_tank_kpa(out, arg, now_us)
        return b"".join(out)

    def set_tank_kpa(self, kpa: int, now_us: int) -> bytes:
        """A new tank pressure reading [kPa] (a transducer, or the bench's TANK_PRESSURE fault).
        Returns the frames to send (valves closing, SAFE_ENTERED) if it is below the minimum."""
        out: list[bytes] = []
        self._set_tank_kpa(out, kpa, now_us)
        return b"".join(out)

    def _set_tank_kpa(self, out: list[bytes], kpa: int, now_us: int) -> None:
        self.tank_kpa = kpa
        cell = EVENTS["TANK_LOW"][self.state]
        if self.pressure_low() and cell.kind == "action":
            self._leave_armed(out, now_us, cell.next(), REASON["LOW_PRESSURE"], min(kpa, 0xFFFF))

    def _cut_channels(self, out: list[bytes], bits: int, now_us: int) -> None:
        for p in list(self._pending):
            for c in list(p.ends):
                if bits >> (p.bank * CHANNELS_PER_BANK + c) & 1:
                    self._cut(p, c, now_us)
            if not p.ends:
                self._finish(out, p, now_us)

    # ---------------------------------------------------------------- FIRE

    def _on_fire(self, out, replies, msg: Message, now_us: int) -> None:
        self._last_valid = now_us  # a FIRE of the session, whatever becomes of it
        prev_fire, self._last_fire_t = self._last_fire_t, now_us
        f = msg.fields
        bank, step = f["bank"], f["step"]
        if bank >= self.n_banks:
            self._ack(out, replies, msg, R["BAD_PARAM"])
            return
        last = self._last_step.get(bank)
        if last is not None and step == last:
            self.counters["duplicate_fires"] += 1
            self._event(out, now_us, "DUP_FIRE", step >> 16, step)
            cached = self._reports.get(bank)
            if cached is not None and cached[0] == step:
                _, seq, fields = cached
                fields = dict(fields, flags=fields["flags"] | 4)
                out.append(self._encode("VALVE_REPORT", seq, FLAG_RETRANSMIT, fields))
            else:
                self._ack(out, replies, msg, R["DUPLICATE"])  # REALTIME: still running
            return
        floor = self._floor.get(bank, 0)
        why = 0  # STALE_FIRE arg2: 1 not after the floor, 2 past valid_for_ms, 3 too far ahead
        if step <= floor:
            why = 1
        elif step - floor > self.step_window:
            why = 3
        elif (
            self.mode == REALTIME
            and prev_fire is not None
            and f["valid_for_ms"]
            and now_us - prev_fire > f["valid_for_ms"] * 1000
        ):
            why = 2
        if why:
            self.counters["stale_fires"] += 1
            self._event(out, now_us, "STALE_FIRE", step >> 16, step, why)
            self._ack(out, replies, msg, R["STEP_AHEAD" if why == 3 else "STALE"])
            return
        self._execute(out, msg, now_us)

    def _execute(self, out: list[bytes], msg: Message, now_us: int) -> None:
        f = msg.fields
        bank, step, mask, on_ticks = f["bank"], f["step"], f["mask"], f["on_ticks"]
        limit = min(self.max_on_ticks, self.period_ms * 1000 // TICK_US, _MAX_ON_TICKS_CAP)
        min_on = self.min_on_ticks
        base = bank * CHANNELS_PER_BANK
        failed = (self.failed >> base) & 0xFFFF
        stuck = (self.stuck >> base) & 0xFFFF
        width = min(CHANNELS_PER_BANK, self.n_channels - base)
        if mask == 0xFFFF and width == CHANNELS_PER_BANK:
            planned = list(on_ticks)
        else:
            planned = [v if mask >> c & 1 and c < width else 0 for c, v in enumerate(on_ticks)]
        flags = 0
        if max(planned) > limit or 0 < min(filter(None, planned), default=0) < min_on:
            # Clamp to the limit, round up to the minimum on-time (or drop), one event each.
            for c in range(width):
                if not mask >> c & 1:
                    continue
                asked = v = planned[c]
                if v > limit:
                    v = limit
                if 0 < v < min_on:
                    v = min_on if 2 * v >= min_on else 0
                    if v > limit:
                        v = 0
                if v != asked:
                    flags |= 1
                    self._event(out, now_us, "CLAMPED", base + c, asked, v)
                planned[c] = v
        if failed:
            for c in range(width):
                if failed >> c & 1:
                    planned[c] = 0
        # Cut older pulses of this bank on the channels this FIRE commands.
        for p in list(self._pending) if self._pending else ():
            if p.bank != bank:
                continue
            for c in list(p.ends):
                if mask >> c & 1:
                    self._cut(p, c, now_us)
            if not p.ends:
                self._finish(out, p, now_us)
        self._last_step[bank] = step
        self._floor[bank] = step
        self.last_step = step
        self._idle_from = now_us
        if self.mode == LOCKSTEP:  # executed in virtual time: reported at once
            self._report_values(
                out, self.session or 0, step, bank, now_us, planned, flags, failed, stuck, now_us
            )
            return
        pulse = _Pulse(
            self.session or 0, step, bank, now_us, planned, flags, failed=failed, stuck=stuck
        )
        for c, v in enumerate(planned):
            if v:
                pulse.ends[c] = now_us + v * TICK_US
        if pulse.ends:
            self._pending.append(pulse)
        else:
            self._report(out, pulse, now_us)


_FAULT_NAMES = {v: k for k, v in FAULT.items()}

#: The state table's command actions (messages.toml [actions]) -> their handlers.
_COMMAND_ACTIONS: dict[str, Callable[..., None]] = {
    "hello": UnitCore._on_hello,
    "heartbeat": UnitCore._on_heartbeat,
    "ping": UnitCore._on_ping,
    "arm_request": UnitCore._on_arm_request,
    "arm_confirm": UnitCore._on_arm_confirm,
    "disarm": UnitCore._on_disarm,
    "stop_all": UnitCore._on_stop_all,
    "fire": UnitCore._on_fire,
    "set_param": UnitCore._on_set_param,
    "fault_inject": UnitCore._on_fault_inject,
}
_missing = {
    c.action for row in COMMANDS.values() for c in row.values() if c.kind == "action"
} - set(_COMMAND_ACTIONS)
if _missing:  # a new action in messages.toml needs its handler here
    raise ImportError(f"state table actions without a handler in unit.py: {sorted(_missing)}")
