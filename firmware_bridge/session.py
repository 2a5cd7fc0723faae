"""The host side of the link as a pure state machine (sans-IO, the counterpart of
:class:`thruster_hil.firmware_bridge.unit.UnitCore`; docs/protocol.md section 7).

No serial, os, time or threads: the caller feeds what it read with the host's monotonic time in
ns and writes what the session wants written::

    s = HostSession(url)
    op = s.connect("lockstep", 500, host_nonce, now_ns)  # an operation in flight
    port.write(s.data_to_send())
    while (got := s.poll(op, now_ns)) is PENDING:        # result, or raises LinkError
        port.write(s.data_to_send())                     # resends, heartbeats
        data = read with timeout until op.deadline_ns
        s.receive_data(data, now_ns)
    s.next_event()                                       # unsolicited news: BOOT, reset, ...

Every blocking call of the old link is one *operation* here (:meth:`HostSession.connect`,
:meth:`arm`, :meth:`fire`, :meth:`ping`, :meth:`transact`, :meth:`stop_all`, :meth:`wait_for`):
it owns its timers (``deadline_ns``: when :meth:`poll` must run again if nothing arrives), its
resends and its give-up rule, so a driver is a loop of write / wait / read / poll. The session
owns the sequence counts, reply matching (ACKs by (acked seq, msg id), VALVE_REPORTs by (step,
bank), PONGs by nonce), the retry rule, foreign-traffic accounting (BAD_SESSION answers to
another writer, the unit's LOCKOUT), the unit's clock rate and the statistics.

FIRE has one path for both clocks (:class:`FireOp`): LOCKSTEP resends a bank whose report does
not come (same seq, RETRANSMIT, same step: idempotent on the unit) and gives up only when
:func:`unit_lost` says the unit is dead; REALTIME never resends, collects the reports until the
cycle's deadline and feeds the unit's watchdog with HEARTBEATs meanwhile.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any

from thruster_hil.firmware_bridge import codec
from thruster_hil.firmware_bridge.dictionary import (
    BY_ID,
    CHANNELS_PER_BANK,
    EVENT,
    FLAG_ACK_REQ,
    FLAG_RETRANSMIT,
    FLAG_TEST_BUILD,
    LIMITS,
    MESSAGES,
    RESULT_NAMES,
)
from thruster_hil.firmware_bridge.linkrules import (
    _ACCEPTED,
    _BAD_SESSION,
    _CLOCK_SAMPLES,
    _DUPLICATE,
    _FILED_REPLIES,
    _FIRE_ID,
    _ID,
    _PARAM_RANGES,
    _RTT_SAMPLES,
    EVENT_LOG_SIZE,
    FAULT,
    INITIAL_RETRY_TIMEOUT_S,
    MAX_RETRIES,
    MIN_FEED_KPA,
    MIN_RETRY_TIMEOUT_S,
    MODES,
    PARAM,
    PENDING,
    PING_BURST,
    RTO_G_S,
    RTO_K,
    RTO_MAX_BACKOFF,
    SAFE_REASON,
    FireResult,
    LinkError,
    LinkInfo,
    Notice,
    PingSample,
    Received,
    percentile,
    rtt_estimate,
    unit_clock_rate,
    unit_lost,
)
from thruster_hil.firmware_bridge.session_ops import (
    FireOp,
    FlowOp,
    Op,
    TransactOp,
    WaitOp,
    arm_flow,
    command_flow,
    connect_flow,
    ping_flow,
    set_param_flow,
)

from thruster_hil.core.errors import UserError
from thruster_hil.core.health import HEALTH_FAILED_OFF, HEALTH_NOMINAL, HEALTH_STUCK_OPEN

__all__ = [
    "PENDING",
    "FireOp",
    "FireResult",
    "FlowOp",
    "HostSession",
    "LinkError",
    "LinkInfo",
    "Notice",
    "Op",
    "PingSample",
    "Received",
    "unit_clock_rate",
    "unit_lost",
]


# ---- the session -----------------------------------------------------------------------------

_ZEROS = [0] * CHANNELS_PER_BANK
_SEQ_MODULO = codec.SEQ_MODULO
_encode_fields = codec.encode_fields
_new = object.__new__
_set_msg = Received.msg.__set__  # type: ignore[attr-defined]  (slot descriptors)
_set_t_ns = Received.t_ns.__set__  # type: ignore[attr-defined]


class HostSession:
    """The host's side of one unit link; see the module docstring. ``url`` only names the port
    in messages. ``ping_nonce``: the first PING nonce (the driver draws it at random)."""

    def __init__(self, url: str = "unit", *, valid_for_ms: int | None = None, ping_nonce: int = 0):
        self.url = url
        self.valid_for_ms = valid_for_ms
        self.info: LinkInfo | None = None
        self.clock_offset_us: float | None = None
        self.max_on_ticks: int | None = None
        self.mode: str | None = None
        self.period_ms: int | None = None
        self.seq = 0  # the next sequence count of the host's APID (14 bit)
        self._nonce = ping_nonce & 0x7FFFFFFF
        self._decoder = codec.Decoder()
        self._layouts: dict[int, list[tuple[int, int, int, int]]] = {}
        self._nominal: dict[int, tuple[int, ...]] = {}  # n -> (HEALTH_NOMINAL,) * n
        self._out: list[bytes] = []
        #: When the first of the frames now queued was stamped (host ns): a FIRE's round trip
        #: is measured from it, so a capture of the write must carry the same time.
        self.out_t_ns = 0
        self._out_names: list[str] = []
        self.fire_op: FireOp | None = None
        self.now_ns = 0

        # Port state (inputs from the driver).
        self.up = False
        self.down_reason = ""
        #: Set (one line) when another process was found reading the port; every wait fails
        #: with it from then on.
        self.intruder: str | None = None

        self.session: int | None = None
        self._armed = False
        self._acks: OrderedDict[tuple[int, int], Received] = OrderedDict()
        self._reports: OrderedDict[tuple[int, int], Received] = OrderedDict()
        self._pongs: OrderedDict[int, Received] = OrderedDict()
        self.hello_acks = 0
        self.last_hello_ack: Received | None = None
        self.challenges = 0
        self.last_challenge: Received | None = None
        self.boots = 0
        self.boots_consumed = 0
        self.last_boot: Received | None = None
        self.latest_hk: Received | None = None
        self.events: deque[Received] = deque(maxlen=EVENT_LOG_SIZE)
        self._notices: deque[Notice] = deque(maxlen=EVENT_LOG_SIZE)
        self.armed_events = 0
        self.reset_detected = False
        self._late_expected: set[tuple[int, int]] = set()
        self.test_build = False
        self.watchdog_trip_ms: int | None = None  # the unit's last WATCHDOG_TRIP since ARMED
        self.low_pressure_kpa: int | None = None  # SAFE_ENTERED LOW_PRESSURE since ARMED

        self.frames_sent = 0
        self.bytes_sent = 0
        self.retries = 0
        self.rtt_ms: deque[float] = deque(maxlen=_RTT_SAMPLES)
        self.retry_rtt_s: float | None = None  # the PING burst's median RTT
        # The lockstep FIRE exchange's own round trip (RFC 6298): a FIRE and its reports are
        # longer frames than a PING, and at a real line rate their round trip (16-20 ms at
        # 115,200 baud) is several PINGs'; a timeout from PINGs alone resends FIREs whose
        # reports are on their way.
        self.fire_srtt_s: float | None = None
        self.fire_rttvar_s = 0.0
        self.rto_backoff = 1  # doubled at each FIRE timeout, 1 again at the next clean sample
        self.deadline_misses = 0
        self.silent_cycles = 0  # REALTIME cycles in a row without any VALVE_REPORT
        self.foreign_refusals = 0
        self.foreign_refused_seqs: deque[int] = deque(maxlen=64)
        self.lockout: str | None = None  # why the unit voided our session (LOCKOUT event)
        self.next_step = 1  # the lowest step the unit accepts next in this session
        self.late_reports = 0
        self.resets_detected = 0
        self.rejections: dict[str, int] = {}
        self.unexpected = 0
        self.last_feed_ns = 0  # when a FIRE or HEARTBEAT last went out (the unit's watchdog)
        self.last_rx_ns = 0  # when a valid frame last came (the unit's life)
        self.last_report = (0, -1)  # (host ns, step) of the latest VALVE_REPORT, even late
        self.unit_clock: deque[tuple[int, int]] = deque(maxlen=_CLOCK_SAMPLES)
        self.slow_unit_waits = 0  # replies that came only because a live unit was waited for

    # ---- bytes in ----------------------------------------------------------------------------

    def receive_data(self, data: bytes, now_ns: int) -> None:
        """Bytes read from the port at host monotonic ``now_ns``: decode and file them."""
        self.now_ns = now_ns
        for item in self._decoder.feed(data):
            if not isinstance(item, codec.ProtocolError):  # (counted by the decoder)
                self._dispatch(item, now_ns)

    def next_event(self) -> Notice | None:
        """The oldest unread :class:`Notice` (bounded: the last EVENT_LOG_SIZE), or None."""
        return self._notices.popleft() if self._notices else None

    @staticmethod
    def _file(store: OrderedDict, key: Any, rec: Received) -> None:
        store[key] = rec
        store.move_to_end(key)
        if len(store) > _FILED_REPLIES:
            store.popitem(last=False)

    def _dispatch(self, msg: codec.Message, t_ns: int) -> None:
        # Received(msg, t_ns) without the frozen dataclass's __init__: one per frame.
        rec = _new(Received)
        _set_msg(rec, msg)
        _set_t_ns(rec, t_ns)
        name = msg.name
        self.last_rx_ns = t_ns
        if msg.flags & FLAG_TEST_BUILD:
            self.test_build = True
        if name == "VALVE_REPORT":
            f = msg.fields
            step = f["step"]
            self.last_report = (t_ns, step)
            op = self.fire_op
            if op is not None and step == op.step and f["bank"] in op.seqs:
                op.reports.setdefault(f["bank"], rec)  # a report of the FIRE in flight
                return
            key = (step, f["bank"])
            if key in self._late_expected:
                self._late_expected.discard(key)
                self.late_reports += 1
            else:
                self._file(self._reports, key, rec)
        elif name == "ACK":
            f = msg.fields
            result, msg_id = f["result"], f["msg_id"]
            if result == _BAD_SESSION and self.session is not None and not self.reset_detected:
                # Our commands carry the session the unit gave us: BAD_SESSION answers another
                # writer's (a second program on the line). Counted; a FIRE's is never taken as
                # a refusal of ours (it may use one of our sequence counts), any other is filed
                # (a command of ours that did fail that way must not wait for ever).
                self.foreign_refusals += 1
                self.foreign_refused_seqs.append(f["acked_seq"])
                if msg_id == _FIRE_ID:
                    return
            self._file(self._acks, (f["acked_seq"], msg_id), rec)
            if result != _ACCEPTED:
                rname = RESULT_NAMES.get(result, str(result))
                self.rejections[rname] = self.rejections.get(rname, 0) + 1
                op = self.fire_op
                if op is not None and msg_id == _FIRE_ID and result != _DUPLICATE:
                    op.refused(f["acked_seq"], rec)
        elif name == "PONG":
            self._file(self._pongs, msg["nonce"], rec)
        elif name == "HK":
            self.latest_hk = rec
            self.unit_clock.append((t_ns, msg["pu_time_us"]))  # periodic on the unit's clock
            self._notices.append(Notice("hk", rec))
        elif name == "EVENT":
            self.events.append(rec)
            self._notices.append(Notice("event", rec))
            ev = msg["event"]
            if ev == EVENT["ARMED"]:
                self.armed_events += 1
                self.watchdog_trip_ms = None
                self.low_pressure_kpa = None
            elif ev == EVENT["WATCHDOG_TRIP"]:
                self.watchdog_trip_ms = msg["arg0"]
            elif ev == EVENT["SAFE_ENTERED"] and msg["arg0"] == SAFE_REASON["LOW_PRESSURE"]:
                self.low_pressure_kpa = msg["arg1"]
            elif ev == EVENT["LOCKOUT"] and self.session is not None:
                self._on_lockout(msg["arg0"], msg["arg1"])
        elif name == "HELLO_ACK":
            self.hello_acks += 1
            self.last_hello_ack = rec
            # Every HELLO the unit answers makes a new session and leaves it SAFE, even a late
            # answer to a retransmitted HELLO: follow the unit.
            self._armed = False
            self.session = msg["session"] if msg["result"] == _ACCEPTED else None
        elif name == "ARM_CHALLENGE":
            self.challenges += 1
            self.last_challenge = rec
        elif name == "BOOT":
            self.boots += 1
            self.last_boot = rec
            if self.session is not None:  # a BOOT mid-session: the unit reset
                self.reset_detected = True
                self.resets_detected += 1
                self.session = None
                self._armed = False
                self._notices.append(Notice("reset", rec))
            else:
                self._notices.append(Notice("boot", rec))
        else:
            self.unexpected += 1  # a TC on the line (loop://, echo) or nothing we wait for

    def _on_lockout(self, errors: int, msg_id: int) -> None:
        """The unit saw ``errors`` commands without the session and voided it: whatever waits
        on the session fails with the reason."""
        last = BY_ID[msg_id].name if msg_id in BY_ID else f"id 0x{msg_id:02X}"
        self.lockout = (
            f"{self.url}: another writer on the line: the unit refused {errors} commands "
            f"without the session (the last a {last}; {self.foreign_refusals} refusals seen "
            f"here), closed every valve, went SAFE and voided the session (LOCKOUT); burn "
            f"stopped: find the other program on this port"
        )
        self.session = None
        self._armed = False
        self._notices.append(Notice("lockout", text=self.lockout))

    # ---- bytes out ---------------------------------------------------------------------------

    def data_to_send(self) -> bytes:
        """Everything queued since the last call, as one write (b"" if nothing)."""
        if not self._out:
            return b""
        data = b"".join(self._out) if len(self._out) > 1 else self._out[0]
        self._out.clear()
        self._out_names.clear()
        return data

    def has_output(self) -> bool:
        return bool(self._out)

    def pending_names(self) -> list[str]:
        """The message names of what :meth:`data_to_send` would return (for error lines)."""
        return list(self._out_names)

    def queue(self, name: str, seq: int, flags: int, fields: dict[str, Any], now_ns: int) -> None:
        frame = _encode_fields(name, seq, flags, fields)
        if not self._out:
            self.out_t_ns = now_ns
        self._out.append(frame)
        self._out_names.append(name)
        self.frames_sent += 1
        self.bytes_sent += len(frame)
        if name == "FIRE" or name == "HEARTBEAT":
            self.last_feed_ns = now_ns  # the unit's link watchdog is fed

    def queue_many(self, frames: list[tuple[str, int, int, dict]], now_ns: int) -> None:
        for name, seq, flags, fields in frames:
            self.queue(name, seq, flags, fields, now_ns)

    def resync(self) -> None:
        """A lone 0x00 (docs/protocol.md section 1): it ends whatever partial frame the unit
        holds (line noise, an earlier program's bytes), so that our next frame is not
        swallowed with it. Queued before every HELLO of :meth:`connect`."""
        if not self._out:
            self.out_t_ns = self.now_ns
        self._out.append(b"\x00")
        self._out_names.append("resync")

    def next_seqs(self, n: int) -> list[int]:
        """The next n sequence counts. An unclaimed ACK still filed under one (from 16384
        commands ago) is dropped so it cannot answer the new command."""
        first = self.seq
        self.seq = (first + n) % _SEQ_MODULO
        seqs = [first % _SEQ_MODULO] if n == 1 else [(first + i) % _SEQ_MODULO for i in range(n)]
        if self._acks:
            for key in [k for k in self._acks if k[0] in seqs]:
                del self._acks[key]
        return seqs

    def next_seq(self) -> int:
        return self.next_seqs(1)[0]

    # ---- port state (driver inputs) ----------------------------------------------------------

    def port_opened(self) -> None:
        self._decoder = codec.Decoder()
        self.intruder = None
        self.up = True
        self.down_reason = ""
        self.boots_consumed = self.boots

    def port_down(self, reason: str) -> None:
        self.up = False
        self.down_reason = reason

    def port_closed(self) -> None:
        self.up = False
        self.session = None
        self._armed = False

    def port_taken(self, message: str) -> None:
        """Another process reads the port: a reply this host never sees cannot be waited for."""
        if self.intruder is None:
            self.intruder = message

    # ---- timing rules ------------------------------------------------------------------------

    @property
    def watchdog_s(self) -> float:
        return (self.info.watchdog_ms if self.info else LIMITS["watchdog_ms_default"]) / 1e3

    @property
    def retry_timeout_s(self) -> float:
        """max(20 ms, 3 x the PING RTT, SRTT + max(G, 4 RTTVAR) of the FIRE exchanges), times
        the backoff, at most a quarter of the unit's watchdog; 200 ms before anything was
        measured (docs/protocol.md section 7)."""
        if self.retry_rtt_s is None and self.fire_srtt_s is None:
            return INITIAL_RETRY_TIMEOUT_S
        rto = MIN_RETRY_TIMEOUT_S
        if self.retry_rtt_s is not None:
            rto = max(rto, 3.0 * self.retry_rtt_s)
        if self.fire_srtt_s is not None:
            rto = max(rto, self.fire_srtt_s + max(RTO_G_S, RTO_K * self.fire_rttvar_s))
        if self.rto_backoff == 1:
            return rto
        return min(rto * self.rto_backoff, max(rto, self.watchdog_s / 4))

    def fire_rtt_sample(self, rtt_s: float) -> None:
        """A lockstep FIRE answered on its first try (Karn: never a resent one's): into the
        estimate, and the backoff ends."""
        self.fire_srtt_s, self.fire_rttvar_s = rtt_estimate(
            self.fire_srtt_s, self.fire_rttvar_s, rtt_s
        )
        self.rto_backoff = 1

    def fire_timed_out(self) -> None:
        """A FIRE's wait ran out: the next waits are twice as long until a clean sample (RFC
        6298 section 5.5), so an estimate that is too short cannot keep every FIRE resent and
        so never sampled."""
        self.rto_backoff = min(self.rto_backoff * 2, RTO_MAX_BACKOFF)

    @property
    def give_up_s(self) -> float:
        """How long a FIRE goes unanswered (resent every retry timeout) before the host calls
        the link lost: MAX_RETRIES resends at least, and never less than the unit's own link
        watchdog, so a stall shorter than the one the unit tolerates (a busy host, a busy
        QEMU) does not end a burn the unit would have gone on with. After it, the host calls
        the link lost only when :func:`unit_lost` says so (a slow unit is not a dead one)."""
        return max((MAX_RETRIES + 1) * self.retry_timeout_s, self.watchdog_s)

    def resend_wait_s(self, attempt: int) -> float:
        """How long to wait for a FIRE's reports after try ``attempt`` (0: the first send):
        the retry timeout for the first MAX_RETRIES resends, then twice as long each time up
        to a quarter of the unit's watchdog time. A slow unit (QEMU on a loaded machine reads
        its input at a fraction of the line rate) is not buried under copies it must read
        before anything new, and the copies still feed its watchdog."""
        timeout = self.retry_timeout_s
        if attempt < MAX_RETRIES:
            return timeout
        return min(timeout * 2 ** (attempt - MAX_RETRIES + 1), max(timeout, self.watchdog_s / 4))

    def unit_behind(self, step: int, since_ns: int) -> bool:
        """Is the unit still answering FIREs of an older step than ``step`` (a late or resent
        report came since ``since_ns``, our last send)? Then it is reading a backlog of our
        frames, a slow unit's input queue: another copy now would only wait behind them."""
        t_ns, last_step = self.last_report
        return t_ns > since_ns and last_step != step

    def unit_lost_since(self, t_first_ns: int, now_ns: int) -> bool:
        """:func:`unit_lost` for a command first sent at ``t_first_ns`` and not answered yet."""
        tripped = self.watchdog_trip_ms is not None and self._armed
        return unit_lost(
            (now_ns - t_first_ns) / 1e9,
            (now_ns - max(self.last_rx_ns, 0)) / 1e9,
            unit_clock_rate(self.unit_clock),
            self.watchdog_s,
            tripped,
        )

    def heartbeat_due_ns(self) -> int:
        """When a HEARTBEAT is next due: a quarter of the watchdog time after the last FIRE or
        HEARTBEAT (so a host that lost the CPU for up to half of it, checking every eighth,
        still feeds the watchdog in time on a loaded machine)."""
        watchdog_ms = self.info.watchdog_ms if self.info else LIMITS["watchdog_ms_default"]
        return self.last_feed_ns + watchdog_ms * 250_000

    def next_deadline(self, op: Op | None = None) -> int | None:
        """When :meth:`poll` of ``op`` must run again if nothing arrives (host ns)."""
        return op.deadline_ns if op is not None else None

    # ---- checks and hints --------------------------------------------------------------------

    def _check(self, pred: Callable[[], Any], session: bool) -> Any:
        """pred(), or raise LinkError if the session cannot answer any more: the unit locked it
        out (first: the BAD_SESSION that follows is its consequence), another process reads
        the port, the port is down, or (``session``) the unit reset."""
        if session and self.lockout is not None:
            raise LinkError(self.lockout)
        got = pred()
        if got:
            return got
        if self.intruder is not None:
            raise LinkError(self.intruder)
        if not self.up:
            raise LinkError(
                f"{self.url}: link is down ({self.down_reason or 'port closed'}); reconnect"
            )
        if session and self.reset_detected:
            raise LinkError(
                f"{self.url}: the unit reset (BOOT in mid-session): reconnect and ARM again"
            )
        return got

    def require_session(self, what: str) -> int:
        if not self.up:
            raise LinkError(
                f"{self.url}: link is down ({self.down_reason or 'not open'});"
                f" reconnect before {what}"
            )
        if self.reset_detected:
            raise LinkError(
                f"{self.url}: the unit reset (BOOT in mid-session): reconnect before {what}"
            )
        if self.lockout is not None:
            raise LinkError(self.lockout)
        if self.session is None:
            raise LinkError(f"{self.url}: no session with the unit; connect() before {what}")
        return self.session

    @property
    def armed(self) -> bool:
        return self._armed and self.session is not None and not self.reset_detected

    def disarmed(self) -> None:
        self._armed = False

    def foreign_hint(self, seqs, others: str = "") -> str:
        """If the unit answered BAD_SESSION with one of ``seqs`` (taken for another writer's),
        say so: a unit that reset unheard (its BOOT lost) answers our FIREs that way too.
        ``others``: who else has the port open for reading (the driver asks the system)."""
        if any(q in self.foreign_refused_seqs for q in seqs):
            return (
                " (the unit answered BAD_SESSION: another writer on the line, or it reset "
                "and lost the session)"
            )
        others = others or (self.other_readers() if self.other_readers else "")
        if others:
            return (
                f" (another process has {self.url} open for reading, {others}: it may be "
                "taking the unit's replies)"
            )
        return ""

    #: Set by a driver: who else reads the port (a system query), for error lines only.
    other_readers: Callable[[], str] | None = None

    def live_hint(self, t_first_ns: int) -> str:
        """What the unit did while it did not answer, for the give-up message."""
        if self.watchdog_trip_ms is not None:
            return self.refusal_hint()
        if self.last_rx_ns > t_first_ns:
            rate = unit_clock_rate(self.unit_clock)
            return f" (the unit kept sending, its clock at {rate:.2f} x ours, but did not answer)"
        return ""

    def refusal_hint(self) -> str:
        """Why the unit may have refused a FIRE, if it said so: its SAFE_ENTERED LOW_PRESSURE
        or WATCHDOG_TRIP event since the last ARMED, else a tank pressure below the minimum in
        its latest housekeeping."""
        if self.low_pressure_kpa is not None:
            kpa = self.low_pressure_kpa
            return (
                f" (the unit's tank pressure fell to {kpa} kPa, below the minimum feed "
                f"pressure of {MIN_FEED_KPA} kPa, so it closed its valves and went SAFE "
                f"(LOW_PRESSURE); restore the pressure, then ARM again)"
            )
        if self.watchdog_trip_ms is not None:
            return (
                f" (the unit's link watchdog expired: {self.watchdog_trip_ms} ms without a "
                f"FIRE or HEARTBEAT from the host, so it closed its valves and went SAFE)"
            )
        return self.hk_pressure_hint()

    def hk_pressure_hint(self) -> str:
        """The low-pressure hint if the unit's latest HK shows its tank below the minimum."""
        hk = self.latest_hk
        if hk is None or hk.msg["tank_kPa"] >= MIN_FEED_KPA:
            return ""
        kpa = hk.msg["tank_kPa"]
        return (
            f" (the unit reports its tank at {kpa} kPa, below the minimum feed pressure of "
            f"{MIN_FEED_KPA} kPa: it refuses to arm or fire until the pressure is back)"
        )

    @staticmethod
    def result_name(rec: Received) -> str:
        r = rec.msg["result"]
        return RESULT_NAMES.get(r, str(r))

    # ---- replies -----------------------------------------------------------------------------

    def take_ack(self, seq: int, msg_name: str) -> Received | None:
        return self._acks.pop((seq, _ID[msg_name]), None)

    def _forget_replies(self) -> None:
        """Drop filed replies of an earlier session or arming: a step number reused after a
        re-ARM must not find an old VALVE_REPORT."""
        self._acks.clear()
        self._reports.clear()
        self._pongs.clear()
        self._late_expected.clear()

    def poll(self, op: Op, now_ns: int) -> Any:
        """Run ``op``'s timers at ``now_ns``: its result, or PENDING (then write
        :meth:`data_to_send` and wait for input until ``op.deadline_ns``). Raises LinkError
        (UserError for what an operator must fix) when the operation fails."""
        self.now_ns = now_ns
        return op.poll(now_ns)

    def wait_for(
        self,
        pred: Callable[[], Any],
        deadline_ns: int | None,
        *,
        session: bool = False,
        checks: bool = True,
    ) -> WaitOp:
        """An operation that ends when ``pred()`` is truthy (its result) or at the deadline
        (None)."""
        return WaitOp(self, pred, deadline_ns, session=session, checks=checks)

    def transact(
        self,
        name: str,
        fields: dict[str, Any],
        reply: Callable[[int], Any],
        now_ns: int,
        *,
        ack_req: bool,
        session: bool,
        retries: int = MAX_RETRIES,
    ) -> TransactOp:
        """Send ``name`` and wait for ``reply(seq)`` with the retry rule (section 7)."""
        return TransactOp(
            self,
            name,
            fields,
            reply,
            ack_req=ack_req,
            session=session,
            retries=retries,
            now_ns=now_ns,
        )

    def command(self, name: str, fields: dict[str, Any], now_ns: int) -> FlowOp:
        """A command with ACK_REQ, retried; its result is the ACK (LinkError if refused)."""

        def ack(seq: int) -> Received | None:
            return self.take_ack(seq, name)

        return FlowOp(self, command_flow(self, name, fields, ack, now_ns))

    # ---- connect and ping --------------------------------------------------------------------

    def connect(
        self,
        mode: str,
        period_ms: int,
        host_nonce: int,
        now_ns: int,
        boot_timeout_s: float = 3.0,
        ping_burst: int = PING_BURST,
    ) -> FlowOp:
        """Wait for BOOT (or ``boot_timeout_s``: boards without auto-reset send none), resync,
        HELLO with the dictionary hash and ``host_nonce``, then a PING burst for RTT and clock
        offset. Result: :class:`LinkInfo`. UserError for a bad mode/period or a unit with
        another dictionary (never armed); LinkError if the unit does not answer."""
        key = str(mode).lower()
        if key not in MODES:
            raise UserError(
                where=self.url,
                field="mode",
                message=f"expected 'lockstep' or 'realtime', got {mode!r}",
            )
        lo, hi = LIMITS["period_ms_min"], LIMITS["period_ms_max"]
        if (
            isinstance(period_ms, bool)
            or not isinstance(period_ms, int)
            or not lo <= period_ms <= hi
        ):
            raise UserError(
                where=self.url,
                field="period_ms",
                message=f"expected an integer {lo}..{hi} ms, got {period_ms!r}",
            )
        return FlowOp(
            self, connect_flow(self, key, period_ms, host_nonce, now_ns, boot_timeout_s, ping_burst)
        )

    def ping(self, now_ns: int, timeout_s: float) -> Op:
        """One PING/PONG (not retried: periodic). Result: :class:`PingSample` (its RTT added to
        the statistics), or None if no PONG came within ``timeout_s``."""
        nonce = self._nonce & 0xFFFFFFFF
        self._nonce += 1
        seq = self.next_seq()
        t1_us = now_ns // 1000
        self.queue("PING", seq, 0, dict(nonce=nonce, t1_host_us=t1_us), now_ns)
        return FlowOp(self, ping_flow(self, nonce, now_ns + int(timeout_s * 1e9)))

    # ---- arming ------------------------------------------------------------------------------

    def arm(self, max_on_ticks: int, now_ns: int, next_step: int | None = None) -> FlowOp:
        """ARM_REQUEST -> ARM_CHALLENGE -> ARM_CONFIRM(nonce, max_on_ticks, next_step) -> ACK
        ACCEPTED, then a HEARTBEAT that starts the watchdog's clock. ``next_step`` (default:
        one after every step fired in this session, 1 in a new one) is the step of the next
        FIRE. LinkError if refused or unanswered, ValueError for max_on_ticks out of range."""
        cap = LIMITS["max_on_ticks_cap"]
        if isinstance(max_on_ticks, bool) or not 1 <= int(max_on_ticks) <= cap:
            raise ValueError(f"max_on_ticks must be 1..{cap}, got {max_on_ticks!r}")
        session = self.require_session("ARM")
        return FlowOp(self, arm_flow(self, session, int(max_on_ticks), next_step))

    def stop_all(self, now_ns: int) -> int:
        """STOP_ALL, twice (same seq, the copy flagged RETRANSMIT), asking for an ACK; returns
        the seq (its ACK: ``take_ack(seq, "STOP_ALL")``). Queued whatever the link's state."""
        self._armed = False
        seq = self.next_seq()
        for flags in (FLAG_ACK_REQ, FLAG_ACK_REQ | FLAG_RETRANSMIT):
            self.queue("STOP_ALL", seq, flags, {}, now_ns)
        return seq

    def heartbeat(self, step: int, now_ns: int) -> None:
        """Queue a HEARTBEAT(session, step) without ACK_REQ (periodic: never retried)."""
        session = self.require_session("HEARTBEAT")
        self.queue(
            "HEARTBEAT",
            self.next_seq(),
            0,
            dict(session=session, host_step=int(step) & 0xFFFFFFFF),
            now_ns,
        )

    # ---- firing ------------------------------------------------------------------------------

    def _ticks(self, on_ms) -> list[int]:
        tick_us = self.info.tick_us or 1000
        dtype = getattr(on_ms, "dtype", None)
        if dtype is not None and dtype.kind == "u":
            ints = on_ms.tolist()  # the runner's on-times: already whole, non-negative
        else:
            ints = [int(v) for v in on_ms]
            if ints != list(on_ms) or (ints and min(ints) < 0):
                for i, v in enumerate(on_ms):
                    if int(v) != v or v < 0:
                        raise ValueError(f"on_ms[{i}] must be a non-negative integer, got {v!r}")
        if tick_us == 1000:
            return [v if v < 0xFFFF else 0xFFFF for v in ints]
        return [min(0xFFFF, (v * 1000 + tick_us // 2) // tick_us) for v in ints]

    def _bank_layout(self, n: int) -> list[tuple[int, int, int, int]]:
        """(bank, first channel, width, mask) of each FIRE that carries n on-times."""
        layout = self._layouts.get(n)
        if layout is None:
            layout = []
            for b in range((n + CHANNELS_PER_BANK - 1) // CHANNELS_PER_BANK):
                lo = b * CHANNELS_PER_BANK
                width = min(n, lo + CHANNELS_PER_BANK) - lo
                layout.append((b, lo, width, (1 << width) - 1))
            self._layouts[n] = layout
        return layout

    def fire_session(self) -> int:
        """The session to FIRE in; LinkError saying exactly why not if the link cannot fire."""
        if (
            self._armed
            and self.session is not None
            and not self.reset_detected
            and self.up
            and self.info is not None
        ):
            return self.session
        if self.lockout is not None:
            raise LinkError(self.lockout)
        if not self.armed or self.info is None:
            raise LinkError(
                f"{self.url}: FIRE refused: the link is not armed "
                f"({'the unit reset: reconnect and ' if self.reset_detected else ''}"
                f"arm() first)"
            )
        return self.require_session("FIRE")

    def fire(
        self,
        step: int,
        on_ms,
        now_ns: int,
        *,
        valid_for_ms: int | None = None,
        deadline_ns: int | None = None,
    ) -> FireOp:
        """Fire one control step (see :class:`FireOp`): its FIREs are queued at once. Result: a
        :class:`FireResult`. LinkError if not armed (also after a reset until ARM again), on a
        refusing ACK (named) or when the unit is lost; ValueError for bad on-times."""
        session = self.fire_session()
        info = self.info
        n = len(on_ms)
        if not 1 <= n <= info.n_channels:
            raise ValueError(f"fire: {n} on-times for a unit with {info.n_channels} channels")
        ticks = self._ticks(on_ms)
        if step >= self.next_step:
            self.next_step = step + 1
        vf = valid_for_ms if valid_for_ms is not None else self.valid_for_ms
        if vf is None:
            vf = min(0xFFFF, 2 * (self.period_ms or 500))
        layout = self._layouts.get(n) or self._bank_layout(n)
        if len(layout) == 1 and n == CHANNELS_PER_BANK:  # one full bank: no slicing
            banks = [
                (
                    0,
                    0,
                    n,
                    {
                        "session": session,
                        "step": step,
                        "valid_for_ms": vf,
                        "bank": 0,
                        "mask": 0xFFFF,
                        "on_ticks": ticks,
                    },
                )
            ]
        else:
            banks = []
            for b, lo, width, mask in layout:
                bank_ticks = ticks[lo : lo + width]
                if width < CHANNELS_PER_BANK:
                    bank_ticks += _ZEROS[: CHANNELS_PER_BANK - width]
                banks.append(
                    (
                        b,
                        lo,
                        width,
                        {
                            "session": session,
                            "step": step,
                            "valid_for_ms": vf,
                            "bank": b,
                            "mask": mask,
                            "on_ticks": bank_ticks,
                        },
                    )
                )
        return FireOp(self, step, n, banks, now_ns, self.mode == "realtime", deadline_ns)

    def fire_result(
        self, op: FireOp, rtt_ms: float | None, missing: tuple[int, ...] = ()
    ) -> FireResult:
        tick_us = self.info.tick_us or 1000
        n = op.n
        ex: list[int] = []
        health = None  # all nominal until a report says otherwise
        flags = 0
        t_start = None
        reports = op.reports
        for b, lo, width, _fields in op.banks:  # (banks in channel order, back to back)
            rec = reports.get(b)
            if rec is None:
                ex += _ZEROS[:width]
                continue
            f = rec.msg.fields
            flags |= f["flags"]
            if b == 0:
                t_start = f["t_start_pu_us"]
            ticks = f["executed_ticks"]
            ex += ticks if width == CHANNELS_PER_BANK else ticks[:width]
            stuck = f["stuck_mask"]
            failed = f["failed_mask"]
            if stuck or failed:
                if health is None:
                    health = [HEALTH_NOMINAL] * n
                for i in range(width):
                    bit = 1 << i
                    if stuck & bit:
                        health[lo + i] = HEALTH_STUCK_OPEN
                    elif failed & bit:
                        health[lo + i] = HEALTH_FAILED_OFF
        ticks_t = tuple(ex)
        ms = ticks_t if tick_us == 1000 else tuple((t * tick_us + 500) // 1000 for t in ex)
        nominal = self._nominal.get(n)
        if nominal is None:
            nominal = self._nominal[n] = (HEALTH_NOMINAL,) * n
        return FireResult(
            op.step,
            ms,
            ticks_t,
            nominal if health is None else tuple(health),
            flags,
            rtt_ms,
            tuple(missing),
            t_start,
        )

    # ---- parameters and faults ---------------------------------------------------------------

    def set_param(self, name: str | int, value: int, now_ns: int) -> FlowOp:
        """SET_PARAM (unit SAFE only). UserError for an unknown parameter, a value out of its
        range or a BAD_PARAM answer; LinkError for any other refusal or no answer."""
        names = {v: k for k, v in PARAM.items()}
        key = names.get(name) if isinstance(name, int) else str(name).upper()
        if key not in PARAM:
            raise UserError(
                where=self.url,
                field="param",
                message=f"expected one of {', '.join(PARAM)}, got {name!r}",
            )
        ranges, text = _PARAM_RANGES[key]
        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            or not any(lo <= value <= hi for lo, hi in ranges)
        ):
            raise UserError(where=self.url, field=key, message=f"expected {text}, got {value!r}")
        session = self.require_session("SET_PARAM")
        return FlowOp(self, set_param_flow(self, key, value, session, now_ns))

    @staticmethod
    def fault_fields(kind: str | int, arg: int) -> tuple[str, dict[str, int]]:
        names = {v: k for k, v in FAULT.items()}
        key = names.get(kind) if isinstance(kind, int) else str(kind).upper()
        if key not in FAULT:
            raise ValueError(f"unknown fault {kind!r}; expected one of {', '.join(FAULT)}")
        if not 0 <= int(arg) <= 0xFFFF:
            raise ValueError(f"fault argument must be 0..65535, got {arg!r}")
        return key, dict(fault=FAULT[key], arg=int(arg))

    def send_fault(self, kind: str | int, arg: int, now_ns: int, seq: int | None = None) -> int:
        """Queue FAULT_INJECT without ACK_REQ; ``seq`` resends an earlier one (same count,
        RETRANSMIT: applied only if the first never came). Returns its seq."""
        _key, fields = self.fault_fields(kind, arg)
        fields["session"] = self.require_session("FAULT_INJECT")
        flags = 0
        if seq is None:
            seq = self.next_seq()
        else:
            flags = FLAG_RETRANSMIT
            self.retries += 1
        self.queue("FAULT_INJECT", seq, flags, fields, now_ns)
        return seq

    def fault_refusal(self, seq: int) -> str | None:
        """The result the unit refused FAULT_INJECT ``seq`` with, or None (none arrived)."""
        rec = self.take_ack(seq, "FAULT_INJECT")
        if rec is None or rec.msg["result"] == _ACCEPTED:
            return None
        return self.result_name(rec)

    # ---- statistics --------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Counters of this session plus the unit's last HK (``unit_*``, None before any HK).
        Safe to call from another thread (a status writer): every read is of a value or a
        C-level copy."""
        errs = dict(self._decoder.errors)
        rtts = list(self.rtt_ms)
        out: dict[str, Any] = {
            "frames_sent": self.frames_sent,
            "bytes_sent": self.bytes_sent,
            "frames_received": self._decoder.frames,
            "bytes_received": self._decoder.bytes,
            "crc_errors": errs.get("crc", 0),
            "cobs_errors": errs.get("cobs", 0),
            "length_errors": errs.get("length", 0),
            "other_protocol_errors": sum(
                v for k, v in errs.items() if k not in ("crc", "cobs", "length")
            ),
            "unexpected_messages": self.unexpected,
            "retries": self.retries,
            "rejections": sum(self.rejections.values()),
            "rtt_ms_p50": percentile(rtts, 50),
            "rtt_ms_p99": percentile(rtts, 99),
            "rtt_samples": len(rtts),
            "deadline_misses": self.deadline_misses,
            "foreign_refusals": self.foreign_refusals,
            "slow_unit_waits": self.slow_unit_waits,
            "late_reports": self.late_reports,
            "resets_detected": self.resets_detected,
            "clock_offset_us": self.clock_offset_us,
            "armed": self._armed and self.session is not None,
        }
        hk = self.latest_hk.msg.fields if self.latest_hk is not None else {}
        for f in MESSAGES["HK"].fields:
            out[f"unit_{f.name}"] = hk.get(f.name)
        return out
