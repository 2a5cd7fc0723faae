"""The host link: the one piece of code that touches the serial port (docs/protocol.md section 7).

A :class:`Link` owns one port opened with ``serial.serial_for_url(..., exclusive=True)`` (device
path, pty path, ``hwgrep://``, ``loop://``) and one reader thread. The reader reads what has
arrived (one ``select`` and ``os.read`` on the port's descriptor, as pyserial's own ``read`` does;
``read(in_waiting or 1)`` on a port without one), feeds a
:class:`thruster_hil.firmware_bridge.codec.Decoder` and files what it decodes
under a :class:`threading.Condition`: ACKs by (acked sequence count, msg id), VALVE_REPORTs by
(step, bank), PONGs by nonce, the latest HELLO_ACK / ARM_CHALLENGE / BOOT / HK, and a bounded
event list. The control thread calls the blocking methods (:meth:`connect`, :meth:`arm`,
:meth:`fire`, ...), each of which sends a frame and waits on that condition for its reply: no
sleep loops, no busy polling.

Errors:

* :class:`thruster_hil.core.errors.UserError` for what an operator must fix: a port that cannot be
  opened, a unit built from another message dictionary, a parameter out of range.
* :class:`LinkError` for runtime link failures the run loop handles: no reply after the
  retries, a rejecting ACK, a unit reset, a port that went away.

Both have one-line messages.

Retries (section 7): a non-periodic command (HELLO, ARM_REQUEST, ARM_CONFIRM, DISARM, SET_PARAM,
HEARTBEAT with ack) and, in LOCKSTEP, a FIRE without its VALVE_REPORT is resent with the same
sequence count and the RETRANSMIT flag after ``max(20 ms, 3 x RTT)`` (200 ms before the first
RTT estimate), at most 3 times. In REALTIME a FIRE is never resent.

The raw capture hook ``on_bytes(direction, t_ns, data)`` sees every chunk read ("rx") and every
frame written ("tx") with its host monotonic time in ns; it runs on the reader thread (rx) or
the caller's thread (tx), so it must be quick (queue the bytes, write them elsewhere).
"""

from __future__ import annotations

import errno
import itertools
import math
import os
import random
import select
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import serial
from thruster_hil.firmware_bridge import codec
from thruster_hil.firmware_bridge.dictionary import (
    BY_ID,
    CHANNELS_PER_BANK,
    DICT_HASH,
    ENUMS,
    EVENT,
    FLAG_ACK_REQ,
    FLAG_RETRANSMIT,
    FLAG_TEST_BUILD,
    LIMITS,
    MESSAGES,
    MODE,
    PROTO_VERSION,
    RESULT,
    RESULT_NAMES,
)
from thruster_hil.firmware_bridge.portwatch import other_readers, port_alive

from thruster_hil.core.errors import UserError
from thruster_hil.core.health import HEALTH_FAILED_OFF, HEALTH_NOMINAL, HEALTH_STUCK_OPEN

__all__ = ["FireResult", "Link", "LinkError", "LinkInfo", "PingSample", "Received"]

MAX_RETRIES = 3  # resends after the first try (section 7)
#: REALTIME: how long after a period a FIRE's report may still come (a whole-period pulse
#: reports when it ends; USB serial latency is a few ms) [ms].
REALTIME_REPORT_SLACK_MS = 20
MIN_RETRY_TIMEOUT_S = 0.020
INITIAL_RETRY_TIMEOUT_S = 0.200  # before the PING burst measured an RTT
PING_BURST = 20
#: A unit that shows signs of life but does not answer is waited for at most this many of its
#: watchdog times on its own clock, and LIVE_WAIT_MAX_S on the host's (docs/protocol.md
#: section 7: a slow unit is not a dead one).
LIVE_WAIT_WATCHDOGS = 8
LIVE_WAIT_MAX_S = 10.0
#: The slowest the unit's clock is taken to run against the host's (a unit 20 times slower than
#: real time is waited for LIVE_WAIT_WATCHDOGS watchdog times at most anyway).
MIN_UNIT_CLOCK_RATE = 0.05
_CLOCK_SAMPLES = 16  # (host time, unit clock) pairs from HK, for the unit's clock rate
_CLOCK_BASELINE_NS = 100_000_000  # a rate needs samples at least this far apart
EVENT_LOG_SIZE = 256
_FILED_REPLIES = 256  # bound on unclaimed ACKs / reports kept for a waiter
_RTT_SAMPLES = 4096

# VALVE_REPORT flags (section 4).
REPORT_CLAMPED = 1
REPORT_ABORTED = 2
REPORT_DUPLICATE = 4

PARAM = ENUMS["param"]
FAULT = ENUMS["fault"]
SAFE_REASON = ENUMS["safe_reason"]
MIN_FEED_KPA = LIMITS["min_feed_kpa"]
_PARAM_RANGES = {  # SET_PARAM limits (section 4): (ranges..., text)
    "WATCHDOG_MS": (((LIMITS["watchdog_ms_min"], LIMITS["watchdog_ms_max"]),),
                    f"{LIMITS['watchdog_ms_min']}..{LIMITS['watchdog_ms_max']} ms"),
    "HK_PERIOD_MS": (((0, 0), (20, 10000)), "0 (off) or 20..10000 ms"),
    "MIN_ON_TICKS": (((0, 1000),), "0..1000 ticks"),
}
_MODES = {"lockstep": MODE["LOCKSTEP"], "realtime": MODE["REALTIME"]}
_ID = {name: spec.id for name, spec in MESSAGES.items()}
ARM_TRIES = 3  # ARM_REQUEST/CONFIRM exchanges before a BAD_NONCE is taken as final
_DOWN = object()  # sentinel a wait predicate returns when the port went away
_RESET = object()  # ... or when the unit reset under a session
_LOCKED_OUT = object()  # ... or when the unit locked out another writer (LOCKOUT)
_TAKEN = object()  # ... or another process is reading the port


class LinkError(Exception):
    """A runtime link failure (no reply, rejected command, unit reset, port gone). One line."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split("\n")))


@dataclass(frozen=True, slots=True)
class Received:
    """A decoded message with the host monotonic time (ns) of the read that completed it."""

    msg: codec.Message
    t_ns: int


@dataclass(frozen=True, slots=True)
class LinkInfo:
    """What HELLO_ACK told us about the unit and the session."""

    session: int
    fw_ver: int
    proto_ver: int
    dict_hash: int
    n_channels: int
    tick_us: int
    min_on_ticks: int
    watchdog_ms: int
    mode: str  # "lockstep" | "realtime"
    period_ms: int
    boot_count: int
    test_build: bool


@dataclass(frozen=True, slots=True)
class PingSample:
    rtt_ms: float
    offset_us: float  # unit clock - host clock (mod 2**32, signed): pu_us ~ host_us + offset


@dataclass(frozen=True, slots=True)
class FireResult:
    """What one control step's FIRE really did, per thruster (index = channel)."""

    step: int
    executed_ms: tuple[int, ...]  # executed on-time per thruster (0 where no report came)
    executed_ticks: tuple[int, ...]
    health: tuple[int, ...]  # HEALTH_NOMINAL / HEALTH_FAILED_OFF / HEALTH_STUCK_OPEN
    flags: int  # OR of the banks' report flags (REPORT_CLAMPED | REPORT_ABORTED | ...)
    rtt_ms: float | None  # first send -> last report of this step; None if no report came
    missing_banks: tuple[int, ...] = ()  # REALTIME: banks whose report missed the deadline
    t_start_pu_us: int | None = None  # bank 0's pulse start on the unit's clock

    @property
    def complete(self) -> bool:
        return not self.missing_banks


@dataclass(eq=False)
class _Chain:
    """A LOCKSTEP run of FIREs driven from the reader thread (see :meth:`Link.fire_chain`).
    Every field is guarded by the link's condition."""

    on_result: Callable[[FireResult], tuple[int, Any] | None]
    step: int = 0
    n: int = 0
    banks: list = field(default_factory=list)
    seqs: dict[int, int] = field(default_factory=dict)  # bank -> seq of this step's FIRE
    reports: dict[int, Received] = field(default_factory=dict)
    t_first: int = 0  # first send of this step (host monotonic ns): RTT
    t_sent: int = 0  # latest send or resend of this step: stall detection
    attempt: int = 0  # resends of this step so far
    slow: bool = False  # this step outlived give_up_s: a live unit was waited for
    busy: bool = False  # the reader is inside on_result (or sending the next step)
    cancelled: bool = False
    done: bool = False
    error: BaseException | None = None
    #: Set when the calling thread must look: the chain ended, or the port or the session went.
    #: The calling thread is not woken per step.
    wake: threading.Event = field(default_factory=threading.Event)


def _wrap32(x: int) -> int:
    """x mod 2**32 as a signed 32-bit value."""
    x &= 0xFFFFFFFF
    return x - (1 << 32) if x & 0x80000000 else x


def _percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) or None for no values."""
    if not values:
        return None
    s = sorted(values)
    k = max(0, min(len(s) - 1, math.ceil(q / 100.0 * len(s)) - 1))
    return s[k]


def unit_clock_rate(samples: Sequence[tuple[int, int]]) -> float:
    """How many seconds the unit's clock advanced per second of the host's, from (host
    monotonic ns, unit ``pu_time_us``) pairs in arrival order: the oldest against the newest.
    1.0 without two samples ``_CLOCK_BASELINE_NS`` apart; never above 1 (a unit whose clock
    seems fast, frames bunched in arrival, is not waited for less than its watchdog time) nor
    below ``MIN_UNIT_CLOCK_RATE``. The unit clock is 32-bit and wraps."""
    if len(samples) < 2:
        return 1.0
    (h0, u0), (h1, u1) = samples[0], samples[-1]
    if h1 - h0 < _CLOCK_BASELINE_NS:
        return 1.0
    du_us = (u1 - u0) & 0xFFFFFFFF
    return min(1.0, max(MIN_UNIT_CLOCK_RATE, du_us * 1000 / (h1 - h0)))


def unit_lost(waited_s: float, silent_s: float, rate: float, watchdog_s: float,
              tripped: bool) -> bool:
    """The give-up rule, once the retries are spent and ``give_up_s`` has passed: is a unit
    that has not answered for ``waited_s`` (host clock) dead rather than slow?

    Dead: it said its link watchdog tripped (it is SAFE, nothing it could answer would be a
    VALVE_REPORT); or it has been silent, no valid frame of any kind, for its own watchdog time
    measured on its clock (``silent_s`` host seconds times the clock ``rate``: a unit running
    at a third of real time under a loaded host is silent three times longer before its own
    watchdog would have tripped). A unit that keeps sending (housekeeping, events) but does not
    answer is waited for ``LIVE_WAIT_WATCHDOGS`` watchdog times of its clock at most, and never
    more than ``LIVE_WAIT_MAX_S`` of the host's."""
    if tripped or waited_s * rate >= LIVE_WAIT_WATCHDOGS * watchdog_s \
            or waited_s >= LIVE_WAIT_MAX_S:
        return True
    return silent_s * rate >= watchdog_s


def _open_error(url: str, exc: BaseException) -> UserError:
    """One operator line for a port that would not open."""
    code = getattr(exc, "errno", None)
    if code is None and exc.args and isinstance(exc.args[0], int):
        code = exc.args[0]
    detail = " ".join(str(exc).split())
    if isinstance(exc, ValueError):
        msg = f"not a port path or a pyserial URL ({detail}); use e.g. /dev/ttyACM0, " \
              "/dev/serial/by-id/..., hwgrep://VID:PID or loop://"
    elif code in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EBUSY):
        msg = "port is in use by another process (opened exclusively); close the other run " \
              "or pick another port"
    elif code in (errno.ENOENT, errno.ENODEV, errno.ENXIO):
        msg = "no such port; check the cable and the path (ls /dev/serial/by-id/) or that " \
              "the emulator is running"
    elif code in (errno.EACCES, errno.EPERM):
        msg = "permission denied opening the port; add your user to the 'dialout' group " \
              "(then log in again) or check the device's permissions"
    elif "no ports found" in detail.lower():
        msg = f"no serial port matches ({detail}); check the cable and the VID:PID"
    else:
        msg = f"cannot open the port ({detail}); check the path, the cable and the permissions"
    return UserError(where=url, message=msg)


class Link:
    """The host side of the propulsion-unit link. See the module docstring.

    ``Link(url)`` does not touch the port; :meth:`open` (or :meth:`connect`) opens it.
    Thread model: one reader thread (internal) and one control thread calling the methods.
    """

    def __init__(self, url: str, *, baudrate: int = 115200, timeout: float = 0.1,
                 on_bytes: Callable[[str, int, bytes], None] | None = None,
                 ping_burst: int = PING_BURST, valid_for_ms: int | None = None):
        self.url = url
        self.baudrate = baudrate
        self.timeout = timeout
        self.on_bytes = on_bytes
        self.ping_burst = ping_burst
        self.valid_for_ms = valid_for_ms
        self.info: LinkInfo | None = None
        self.clock_offset_us: float | None = None
        self.max_on_ticks: int | None = None
        self._mode: str | None = None
        self._period_ms: int | None = None

        self._ser: serial.SerialBase | None = None
        self._reader: threading.Thread | None = None
        self._stop_r: int | None = None  # a pipe that wakes the reader for close()
        self._stop_w: int | None = None
        self._stopping = threading.Event()
        self._tx_lock = threading.Lock()
        self._cond = threading.Condition()
        self._seq = 0
        self._nonce = itertools.count(random.getrandbits(31))
        self._decoder = codec.Decoder()
        self._layouts: dict[int, list[tuple[int, int, int, int]]] = {}

        # Everything below is guarded by self._cond.
        self._up = False
        self._down_reason = ""
        self._session: int | None = None
        self._armed = False
        self._acks: OrderedDict[tuple[int, int], Received] = OrderedDict()
        self._reports: OrderedDict[tuple[int, int], Received] = OrderedDict()
        self._pongs: OrderedDict[int, Received] = OrderedDict()
        self._hello_acks = 0
        self._last_hello_ack: Received | None = None
        self._challenges = 0
        self._last_challenge: Received | None = None
        self._boots = 0
        self._boots_consumed = 0
        self.last_boot: Received | None = None
        self.latest_hk: Received | None = None
        self._events: deque[Received] = deque(maxlen=EVENT_LOG_SIZE)
        self._armed_events = 0
        self.reset_detected = False
        self._late_expected: set[tuple[int, int]] = set()
        self._test_build = False
        self._chain: _Chain | None = None
        self._watchdog_trip_ms: int | None = None  # the unit's last WATCHDOG_TRIP since ARMED
        self._low_pressure_kpa: int | None = None  # SAFE_ENTERED LOW_PRESSURE since ARMED

        self._frames_sent = 0
        self._bytes_sent = 0
        self._retries = 0
        self._rtt_ms: deque[float] = deque(maxlen=_RTT_SAMPLES)
        self._retry_rtt_s: float | None = None
        self._deadline_misses = 0
        self._silent_cycles = 0  # REALTIME cycles in a row without any VALVE_REPORT
        self._foreign_refusals = 0
        self._foreign_refused_seqs: deque[int] = deque(maxlen=64)
        self._lockout: str | None = None  # why the unit voided our session (LOCKOUT event)
        self._next_step = 1  # the lowest step the unit accepts next in this session
        self._late_reports = 0
        self._resets_detected = 0
        self._rejections: dict[str, int] = {}
        self._unexpected = 0
        self._capture_errors = 0
        self._last_feed_ns = 0
        #: Set (one line) when another process was found reading the port; every wait fails
        #: with it from then on.
        self._intruder: str | None = None
        self._bytes_taken_reads = 0
        self._last_rx_ns = 0  # when the reader last decoded a valid frame (the unit's life)
        self._last_report = (0, -1)  # (host ns, step) of the latest VALVE_REPORT, even a late one
        self._unit_clock: deque[tuple[int, int]] = deque(maxlen=_CLOCK_SAMPLES)
        self._slow_unit_waits = 0  # replies that came only because a live unit was waited for

    # ---- port ------------------------------------------------------------------------------

    def open(self) -> None:
        """Open the port (exclusively) and start the reader. Idempotent while the link is up.

        Raises UserError (one line) if the port cannot be opened.
        """
        with self._cond:
            if self._ser is not None and self._up:
                return
        self._close_port()
        try:
            ser = serial.serial_for_url(self.url, baudrate=self.baudrate, timeout=self.timeout,
                                        exclusive=True)
        except (serial.SerialException, OSError, ValueError) as exc:
            raise _open_error(self.url, exc) from None
        self._stopping.clear()
        self._decoder = codec.Decoder()
        self._intruder = None
        with self._cond:
            self._ser = ser
            self._up = True
            self._down_reason = ""
            self._boots_consumed = self._boots
        self._stop_r, self._stop_w = os.pipe()
        self._reader = threading.Thread(target=self._read_loop, args=(ser, self._stop_r),
                                        name=f"link-reader {self.url}", daemon=True)
        self._reader.start()

    def _close_port(self) -> None:
        ser, reader = self._ser, self._reader
        if ser is None:
            return
        self._stopping.set()
        try:
            ser.cancel_read()
        except Exception:  # noqa: BLE001 - a dead port may fail anything; we are closing it
            pass
        stop_r, stop_w = self._stop_r, self._stop_w
        if stop_w is not None:
            os.write(stop_w, b"x")
        if reader is not None and reader is not threading.current_thread():
            reader.join(timeout=2.0)
        if stop_w is not None and (reader is None or not reader.is_alive()):
            os.close(stop_r)
            os.close(stop_w)
            self._stop_r = self._stop_w = None
        try:
            ser.close()
        except Exception:  # noqa: BLE001
            pass
        with self._cond:
            self._ser = None
            self._reader = None
            self._up = False
            self._session = None
            self._armed = False
            self._cond.notify_all()

    def close(self, confirm_timeout_s: float = 0.0) -> bool | None:
        """STOP_ALL, then close the port. Idempotent; never raises on a dead port. Returns what
        :meth:`stop_all` returns (with ``confirm_timeout_s``: did the unit confirm)."""
        try:
            return self.stop_all(confirm_timeout_s)
        finally:
            self._close_port()

    def __enter__(self) -> Link:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- reader thread ---------------------------------------------------------------------

    def _capture(self, direction: str, t_ns: int, data: bytes) -> None:
        cb = self.on_bytes
        if cb is None:
            return
        try:
            cb(direction, t_ns, data)
        except Exception:  # noqa: BLE001 - a broken recorder must not kill the link
            self._capture_errors += 1

    def _chunk_reader(self, ser: serial.SerialBase, stop_fd: int) -> Callable[[], bytes]:
        """What the reader calls for the next chunk of input (b"" after a quiet timeout).

        A port with a file descriptor (a device or a pty: pyserial's POSIX Serial) is read as
        pyserial's own ``read`` does it, one ``select`` and one ``os.read`` of whatever is
        there, minus its per-call bookkeeping: one select and one read per chunk instead of two
        of each plus an ioctl for ``read(in_waiting or 1)``. ``stop_fd`` wakes it for close().
        Any other port (loop://, socket://, ...) goes through ``read(in_waiting or 1)``.
        """
        try:
            fd = ser.fileno()
        except (AttributeError, OSError, ValueError, serial.SerialException):
            fd = None
        if not isinstance(fd, int) or fd < 0:
            return lambda: ser.read(ser.in_waiting or 1)
        timeout = self.timeout

        def read_chunk() -> bytes:
            ready, _, _ = select.select([fd, stop_fd], [], [], timeout)
            if fd not in ready:
                return b""
            try:
                data = os.read(fd, 4096)
            except BlockingIOError:
                return b""
            if not data:
                # Readable, then nothing there: either the device is gone (a hung-up tty reads
                # 0 bytes and fails every ioctl) or another process read the bytes first.
                if not port_alive(fd):
                    raise serial.SerialException("device reports readiness to read but "
                                                 "returned no data (device disconnected?)")
                self._bytes_taken(fd)
                return b""
            return data

        return read_chunk

    def _read_loop(self, ser: serial.SerialBase, stop_fd: int) -> None:
        reason = ""
        read_chunk = self._chunk_reader(ser, stop_fd)
        try:
            while not self._stopping.is_set():
                data = read_chunk()
                if not data:
                    continue
                t_ns = time.monotonic_ns()
                self._capture("rx", t_ns, data)
                # Decode outside the lock (only this thread touches the decoder), so the
                # control thread waits for the lock no longer than the filing takes.
                items = self._decoder.feed(data)
                if items:
                    with self._cond:
                        for item in items:
                            self._dispatch(item, t_ns)
                        chain = self._chain
                        if chain is not None and not chain.busy and not chain.done:
                            if chain.cancelled:
                                chain.done = True
                            elif chain.error is None and len(chain.reports) == len(chain.seqs):
                                chain.busy = True
                            else:
                                chain = None
                        else:
                            chain = None
                        if self._chain is not None and (self._chain.done
                                                        or self.reset_detected):
                            self._chain.wake.set()
                        self._cond.notify_all()
                    if chain is not None and chain.busy:
                        self._advance_chain(chain)
        except (serial.SerialException, OSError) as exc:
            reason = " ".join(str(exc).split()) or type(exc).__name__
        finally:
            with self._cond:
                if self._ser is ser:
                    self._up = False
                    if not self._stopping.is_set():
                        self._down_reason = reason or "reader stopped"
                if self._chain is not None:
                    self._chain.wake.set()
                self._cond.notify_all()

    def _bytes_taken(self, fd: int) -> None:
        """Reader thread: the port was readable, the read found nothing, and the port is alive:
        another process read the unit's bytes first. A reply this host never sees cannot be
        waited for: every wait fails from now on, naming the cause (and the process when the
        system says who has the port open)."""
        self._bytes_taken_reads += 1
        if self._intruder is not None:
            return
        who = other_readers(self.url)
        message = (f"another process is reading {self.url}"
                   f"{': ' + who if who else ''}; the unit's replies were taken before this "
                   "host could read them (close that program, then run again)")
        with self._cond:
            self._intruder = message
            chain = self._chain
            if chain is not None and chain.error is None and not chain.busy:
                chain.error = LinkError(message)
                chain.done = True
            if chain is not None:
                chain.wake.set()
            self._cond.notify_all()

    @staticmethod
    def _file(store: OrderedDict, key: Any, rec: Received) -> None:
        store[key] = rec
        store.move_to_end(key)
        while len(store) > _FILED_REPLIES:
            store.popitem(last=False)

    def _dispatch(self, item: codec.Message | codec.ProtocolError, t_ns: int) -> None:
        """File one decoded item (reader thread, self._cond held)."""
        if isinstance(item, codec.ProtocolError):
            return  # counted by the decoder
        msg = item
        rec = Received(msg, t_ns)
        name = msg.name
        self._note_life(msg, t_ns)
        if msg.flags & FLAG_TEST_BUILD:
            self._test_build = True
        chain = self._chain
        if name == "VALVE_REPORT":
            key = (msg["step"], msg["bank"])
            # (The chain is never busy here: only this thread dispatches or runs on_result.)
            if chain is not None and msg["step"] == chain.step and msg["bank"] in chain.seqs:
                chain.reports.setdefault(msg["bank"], rec)
                return
            if key in self._late_expected:
                self._late_expected.discard(key)
                self._late_reports += 1
            else:
                self._file(self._reports, key, rec)
        elif name == "ACK":
            if (msg["result"] == RESULT["BAD_SESSION"] and self._session is not None
                    and not self.reset_detected):
                # Our commands carry the session the unit gave us: BAD_SESSION answers another
                # writer's (a second program on the line). Counted; a FIRE's is never taken as
                # a refusal of ours (it may use one of our sequence counts), any other is filed
                # (a command of ours that did fail that way must not wait for ever).
                self._foreign_refusals += 1
                self._foreign_refused_seqs.append(msg["acked_seq"])
                if msg["msg_id"] == _ID["FIRE"]:
                    return
            self._file(self._acks, (msg["acked_seq"], msg["msg_id"]), rec)
            if msg["result"] != RESULT["ACCEPTED"]:
                rname = RESULT_NAMES.get(msg["result"], str(msg["result"]))
                self._rejections[rname] = self._rejections.get(rname, 0) + 1
                if (chain is not None and chain.error is None and msg["msg_id"] == _ID["FIRE"]
                        and msg["result"] != RESULT["DUPLICATE"]):
                    for b, seq in chain.seqs.items():
                        if seq == msg["acked_seq"] and b not in chain.reports:
                            why = (" after a unit reset (BOOT in mid-session): reconnect and "
                                   "ARM again" if self.reset_detected else self._refusal_hint())
                            chain.error = LinkError(f"{self.url}: FIRE step {chain.step} bank "
                                                    f"{b} refused: {rname}{why}")
                            chain.done = True
        elif name == "PONG":
            self._file(self._pongs, msg["nonce"], rec)
        elif name == "HK":
            self.latest_hk = rec
        elif name == "EVENT":
            self._events.append(rec)
            if msg["event"] == EVENT["ARMED"]:
                self._armed_events += 1
                self._watchdog_trip_ms = None
                self._low_pressure_kpa = None
            elif msg["event"] == EVENT["WATCHDOG_TRIP"]:
                self._watchdog_trip_ms = msg["arg0"]
            elif (msg["event"] == EVENT["SAFE_ENTERED"]
                  and msg["arg0"] == SAFE_REASON["LOW_PRESSURE"]):
                self._low_pressure_kpa = msg["arg1"]
            elif msg["event"] == EVENT["LOCKOUT"] and self._session is not None:
                self._on_lockout(msg["arg0"], msg["arg1"], chain)
        elif name == "HELLO_ACK":
            self._hello_acks += 1
            self._last_hello_ack = rec
            # Every HELLO the unit answers makes a new session and leaves it SAFE, even a late
            # answer to a retransmitted HELLO: follow the unit.
            self._armed = False
            ok = msg["result"] == RESULT["ACCEPTED"]
            self._session = msg["session"] if ok else None
        elif name == "ARM_CHALLENGE":
            self._challenges += 1
            self._last_challenge = rec
        elif name == "BOOT":
            self._boots += 1
            self.last_boot = rec
            if self._session is not None:  # a BOOT mid-session: the unit reset
                self.reset_detected = True
                self._resets_detected += 1
                self._session = None
                self._armed = False
        else:
            self._unexpected += 1  # a TC on the line (loop://, echo) or nothing we wait for

    def _on_lockout(self, errors: int, msg_id: int, chain: _Chain | None) -> None:
        """The unit saw ``errors`` commands without the session and voided it (reader thread,
        self._cond held): whatever waits on the session fails with the reason."""
        last = BY_ID[msg_id].name if msg_id in BY_ID else f"id 0x{msg_id:02X}"
        self._lockout = (
            f"{self.url}: another writer on the line: the unit refused {errors} commands "
            f"without the session (the last a {last}; {self._foreign_refusals} refusals seen "
            f"here), closed every valve, went SAFE and voided the session (LOCKOUT); burn "
            f"stopped: find the other program on this port")
        self._session = None
        self._armed = False
        if chain is not None and chain.error is None:
            chain.error = LinkError(self._lockout)
            chain.done = True

    def _resync(self) -> None:
        """A lone 0x00 (docs/protocol.md section 1): it ends whatever partial frame the unit
        holds (line noise, an earlier program's bytes), so that our next frame is not
        swallowed with it. Sent before every HELLO of :meth:`connect`."""
        ser = self._ser
        if ser is None or not self._up:
            return
        with self._tx_lock:
            t_ns = time.monotonic_ns()
            try:
                ser.write(b"\x00")
            except (serial.SerialException, OSError):
                return  # the HELLO that follows reports the port
        self._capture("tx", t_ns, b"\x00")

    # ---- sending ---------------------------------------------------------------------------

    def _next_seq(self) -> int:
        """The next sequence count of the host's APID (14 bit). An unclaimed ACK still filed
        under it (from 16384 commands ago) is dropped so it cannot answer the new command."""
        return self._next_seqs(1)[0]

    def _next_seqs(self, n: int) -> list[int]:
        """The next n sequence counts (see :meth:`_next_seq`)."""
        with self._tx_lock:
            first = self._seq
            self._seq = (first + n) % codec.SEQ_MODULO
        seqs = [(first + i) % codec.SEQ_MODULO for i in range(n)]
        with self._cond:
            if self._acks:
                for key in [k for k in self._acks if k[0] in seqs]:
                    del self._acks[key]
        return seqs

    def _forget_replies(self) -> None:
        """Drop filed replies of an earlier session or arming (self._cond held): a step number
        reused after a re-ARM must not find an old VALVE_REPORT."""
        self._acks.clear()
        self._reports.clear()
        self._pongs.clear()
        self._late_expected.clear()

    def _mark_down(self, reason: str) -> None:
        with self._cond:
            self._up = False
            self._down_reason = reason
            if self._chain is not None:
                self._chain.wake.set()
            self._cond.notify_all()

    def _send(self, name: str, seq: int, flags: int = 0, *, force: bool = False,
              **fields: Any) -> int:
        """Write one frame; return its host send time (ns). LinkError if the port is gone
        (``force``: try the write while the port is open, even with the link judged down)."""
        return self._send_together([(name, seq, flags, fields)], force=force)

    def _send_together(self, frames: list[tuple[str, int, int, dict[str, Any]]],
                       t_ns: int | None = None, force: bool = False) -> int:
        """Write several frames (name, seq, flags, fields) in one write, so the unit reads them
        in one go and its replies come back together; return the host send time (ns): ``t_ns``
        if given (a time the caller stamped before the write), else taken at the write."""
        data = b"".join([codec.encode_fields(name, seq, flags, fields)
                         for name, seq, flags, fields in frames])
        ser = self._ser
        if ser is None or not (self._up or force):
            raise LinkError(f"{self.url}: link is down ({self._down_reason or 'port not open'})"
                            f"; reconnect")
        with self._tx_lock:
            if t_ns is None:
                t_ns = time.monotonic_ns()
            try:
                ser.write(data)
            except (serial.SerialException, OSError) as exc:
                reason = " ".join(str(exc).split()) or type(exc).__name__
                self._mark_down(reason)
                raise LinkError(f"{self.url}: writing {frames[0][0]} failed ({reason}); the "
                                f"port went away: reconnect") from None
            self._frames_sent += len(frames)
            self._bytes_sent += len(data)
            if any(name in ("FIRE", "HEARTBEAT") for name, _s, _f, _d in frames):
                self._last_feed_ns = t_ns  # the unit's link watchdog was fed
        self._capture("tx", t_ns, data)
        return t_ns

    def _note_life(self, msg: codec.Message, t_ns: int) -> None:
        """A valid frame from the unit: it is alive; its clock, if the frame carries it."""
        self._last_rx_ns = t_ns
        if msg.name == "HK":  # periodic on the unit's clock (EVENTs come in bursts)
            self._unit_clock.append((t_ns, msg["pu_time_us"]))
        elif msg.name == "VALVE_REPORT":
            self._last_report = (t_ns, msg["step"])

    def _unit_behind(self, step: int, since_ns: int) -> bool:
        """Is the unit still answering FIREs of an older step than ``step`` (a late or resent
        report came since ``since_ns``, our last send)? Then it is reading a backlog of our
        frames, a slow unit's input queue: another copy now would only wait behind them."""
        with self._cond:
            t_ns, last_step = self._last_report
        return t_ns > since_ns and last_step != step

    def _unit_lost(self, t_first_ns: int) -> bool:
        """:func:`unit_lost` for a command first sent at ``t_first_ns`` and not answered yet."""
        now = time.monotonic_ns()
        watchdog_s = (self.info.watchdog_ms if self.info else LIMITS["watchdog_ms_default"]) / 1e3
        with self._cond:
            silent_ns = now - max(self._last_rx_ns, 0)
            rate = unit_clock_rate(self._unit_clock)
            tripped = self._watchdog_trip_ms is not None and self._armed
        return unit_lost((now - t_first_ns) / 1e9, silent_ns / 1e9, rate, watchdog_s, tripped)

    def _resend_wait_s(self, attempt: int) -> float:
        """How long to wait for a FIRE's reports after try ``attempt`` (0: the first send):
        the retry timeout for the first MAX_RETRIES resends, then twice as long each time up
        to a quarter of the unit's watchdog time. A slow unit (QEMU on a loaded machine reads
        its input at a fraction of the line rate) is not buried under copies it must read
        before anything new, and the copies still feed its watchdog."""
        timeout = self.retry_timeout_s
        if attempt < MAX_RETRIES:
            return timeout
        watchdog_s = (self.info.watchdog_ms if self.info else LIMITS["watchdog_ms_default"]) / 1e3
        return min(timeout * 2 ** (attempt - MAX_RETRIES + 1), max(timeout, watchdog_s / 4))

    def _live_hint(self, t_first_ns: int) -> str:
        """What the unit did while it did not answer, for the give-up message."""
        with self._cond:
            heard = self._last_rx_ns > t_first_ns
            rate = unit_clock_rate(self._unit_clock)
            tripped = self._watchdog_trip_ms is not None
        if tripped:
            return self._refusal_hint()
        if heard:
            return (f" (the unit kept sending, its clock at {rate:.2f} x ours, but did not "
                    f"answer)")
        return ""

    @property
    def retry_timeout_s(self) -> float:
        """max(20 ms, 3 x RTT), or 200 ms before the first PING burst."""
        if self._retry_rtt_s is None:
            return INITIAL_RETRY_TIMEOUT_S
        return max(MIN_RETRY_TIMEOUT_S, 3.0 * self._retry_rtt_s)

    @property
    def give_up_s(self) -> float:
        """How long a FIRE goes unanswered (resent every retry timeout) before the host calls
        the link lost: MAX_RETRIES resends at least, and never less than the unit's own link
        watchdog, so a stall shorter than the one the unit tolerates (a busy host, a busy
        QEMU) does not end a burn the unit would have gone on with. After it, the host calls
        the link lost only when :func:`unit_lost` says so (a slow unit is not a dead one)."""
        watchdog_s = (self.info.watchdog_ms if self.info else LIMITS["watchdog_ms_default"]) / 1e3
        return max((MAX_RETRIES + 1) * self.retry_timeout_s, watchdog_s)

    def _wait(self, pred: Callable[[], Any], timeout: float, *, session: bool) -> Any:
        """Wait for pred() (called with self._cond held) to be truthy; return its value, None on
        timeout. Raises LinkError if the port goes down or (session=True) the unit resets."""

        def check():
            if session and self._lockout is not None:
                return _LOCKED_OUT  # first: what follows it (BAD_SESSION) is its consequence
            got = pred()
            if got:
                return got
            if self._intruder is not None:
                return _TAKEN
            if not self._up:
                return _DOWN
            if session and self.reset_detected:
                return _RESET
            return None

        with self._cond:
            got = self._cond.wait_for(check, timeout)
        if got is _TAKEN:
            raise LinkError(self._intruder)
        if got is _DOWN:
            raise LinkError(f"{self.url}: link is down ({self._down_reason or 'port closed'}); "
                            "reconnect")
        if got is _RESET:
            raise LinkError(f"{self.url}: the unit reset (BOOT in mid-session): reconnect and "
                            "ARM again")
        if got is _LOCKED_OUT:
            raise LinkError(self._lockout)
        return got

    def _transact(self, name: str, fields: dict[str, Any], reply: Callable[[int], Any], *,
                  ack_req: bool, session: bool, retries: int = MAX_RETRIES
                  ) -> tuple[Any, int, int]:
        """Send ``name`` and wait for ``reply(seq)``; resend with the same seq and RETRANSMIT
        on timeout, up to ``retries`` times. Returns (reply value, last send ns, attempt)."""
        seq = self._next_seq()
        flags = FLAG_ACK_REQ if ack_req else 0
        t_first = None
        for attempt in itertools.count():
            if attempt:
                flags |= FLAG_RETRANSMIT
                with self._cond:
                    self._retries += 1
            t_send = self._send(name, seq, flags, **fields)
            t_first = t_first or t_send
            got = self._wait(lambda: reply(seq), self.retry_timeout_s, session=session)
            if got:
                if attempt > retries:
                    with self._cond:
                        self._slow_unit_waits += 1
                return got, t_send, attempt
            if attempt >= retries and self._unit_lost(t_first):
                break
        raise LinkError(f"{self.url}: no reply to {name} (seq {seq}) after {attempt + 1} tries "
                        f"{self.retry_timeout_s * 1000:.0f} ms apart; is the unit running?"
                        f"{self._live_hint(t_first)}")

    def _take_ack(self, seq: int, msg_name: str) -> Received | None:
        return self._acks.pop((seq, _ID[msg_name]), None)

    def _require_session(self, what: str) -> int:
        with self._cond:
            if not self._up:
                raise LinkError(f"{self.url}: link is down ({self._down_reason or 'not open'});"
                                f" reconnect before {what}")
            if self.reset_detected:
                raise LinkError(f"{self.url}: the unit reset (BOOT in mid-session): reconnect "
                                f"before {what}")
            if self._lockout is not None:
                raise LinkError(self._lockout)
            if self._session is None:
                raise LinkError(f"{self.url}: no session with the unit; connect() before {what}")
            return self._session

    def _foreign_hint(self, seqs) -> str:
        """If the unit answered BAD_SESSION with one of ``seqs`` (taken for another writer's),
        say so: a unit that reset unheard (its BOOT lost) answers our FIREs that way too."""
        if any(q in self._foreign_refused_seqs for q in seqs):
            return (" (the unit answered BAD_SESSION: another writer on the line, or it reset "
                    "and lost the session)")
        others = other_readers(self.url)
        if others:
            return (f" (another process has {self.url} open for reading, {others}: it may be "
                    "taking the unit's replies)")
        return ""

    def _refusal_hint(self) -> str:
        """Why the unit may have refused a FIRE, if it said so (self._cond held or not): its
        SAFE_ENTERED LOW_PRESSURE or WATCHDOG_TRIP event since the last ARMED, else a tank
        pressure below the minimum in its latest housekeeping."""
        if self._low_pressure_kpa is not None:
            return self._pressure_hint(self._low_pressure_kpa)
        if self._watchdog_trip_ms is not None:
            return (f" (the unit's link watchdog expired: {self._watchdog_trip_ms} ms without a "
                    f"FIRE or HEARTBEAT from the host, so it closed its valves and went SAFE)")
        return self._hk_pressure_hint()

    @staticmethod
    def _pressure_hint(kpa: int) -> str:
        return (f" (the unit's tank pressure fell to {kpa} kPa, below the minimum feed "
                f"pressure of {MIN_FEED_KPA} kPa, so it closed its valves and went SAFE "
                f"(LOW_PRESSURE); restore the pressure, then ARM again)")

    def _hk_pressure_hint(self) -> str:
        """The low-pressure hint if the unit's latest HK shows its tank below the minimum."""
        hk = self.latest_hk
        if hk is None or hk.msg["tank_kPa"] >= MIN_FEED_KPA:
            return ""
        kpa = hk.msg["tank_kPa"]
        return (f" (the unit reports its tank at {kpa} kPa, below the minimum feed pressure of "
                f"{MIN_FEED_KPA} kPa: it refuses to arm or fire until the pressure is back)")

    @staticmethod
    def _result_name(rec: Received) -> str:
        r = rec.msg["result"]
        return RESULT_NAMES.get(r, str(r))

    # ---- connect / ping --------------------------------------------------------------------

    def connect(self, mode: str = "lockstep", period_ms: int = 500,
                boot_timeout_s: float = 3.0) -> LinkInfo:
        """Open (if needed), wait for BOOT (or ``boot_timeout_s``: boards without auto-reset
        send none), HELLO with the dictionary hash, then a PING burst for RTT and clock offset.

        Raises UserError for a bad mode/period, a port that will not open or a unit with
        another dictionary (never armed); LinkError if the unit does not answer.
        """
        key = str(mode).lower()
        if key not in _MODES:
            raise UserError(where=self.url, field="mode",
                            message=f"expected 'lockstep' or 'realtime', got {mode!r}")
        lo, hi = LIMITS["period_ms_min"], LIMITS["period_ms_max"]
        if isinstance(period_ms, bool) or not isinstance(period_ms, int) \
                or not lo <= period_ms <= hi:
            raise UserError(where=self.url, field="period_ms",
                            message=f"expected an integer {lo}..{hi} ms, got {period_ms!r}")
        self.open()
        with self._cond:  # discard input until BOOT (the reader ignores what nobody waits for)
            self._cond.wait_for(
                lambda: self._boots > self._boots_consumed or not self._up, boot_timeout_s)
            self._boots_consumed = self._boots
            self._session = None
            self._armed = False
            self.reset_detected = False
            self._lockout = None
            self._next_step = 1
            self._forget_replies()
            hello_before = self._hello_acks
        self.info = None
        self._resync()

        def hello_reply(_seq: int) -> Received | None:
            return self._last_hello_ack if self._hello_acks > hello_before else None

        # The unit may still be coming up, or its serial line may not be serviced yet (a board
        # without auto-reset, QEMU re-polling its pty): at connect, keep offering HELLO (same
        # sequence count) for a boot timeout rather than the usual few tries.
        retries = max(MAX_RETRIES, math.ceil(boot_timeout_s / self.retry_timeout_s))
        rec, _, _ = self._transact(
            "HELLO", dict(proto_ver=PROTO_VERSION, dict_hash=DICT_HASH, mode=_MODES[key],
                          period_ms=period_ms,
                          host_nonce=int.from_bytes(os.urandom(4), "big")),
            hello_reply, ack_req=False, session=False, retries=retries)
        ack = rec.msg
        if ack["result"] == RESULT["DICT_MISMATCH"]:
            raise UserError(
                where=self.url,
                message=f"message dictionary mismatch: the unit has hash 0x{ack['dict_hash']:08X}"
                        f", this host 0x{DICT_HASH:08X}; rebuild the firmware/emulator from this "
                        f"messages.toml (the unit will not be armed)")
        if ack["result"] != RESULT["ACCEPTED"]:
            raise LinkError(f"{self.url}: HELLO refused: {self._result_name(rec)}")
        if ack["proto_ver"] != PROTO_VERSION:
            raise UserError(where=self.url,
                            message=f"the unit speaks protocol version {ack['proto_ver']}, this "
                                    f"host {PROTO_VERSION}; update the firmware or the host")
        with self._cond:
            test_build = self._test_build or bool(ack.flags & FLAG_TEST_BUILD)
            session = self._session if self._session is not None else ack["session"]
        mode_names = {v: k for k, v in _MODES.items()}
        self.info = LinkInfo(
            session=session, fw_ver=ack["fw_ver"], proto_ver=ack["proto_ver"],
            dict_hash=ack["dict_hash"], n_channels=ack["n_channels"], tick_us=ack["tick_us"],
            min_on_ticks=ack["min_on_ticks"], watchdog_ms=ack["watchdog_ms"],
            mode=mode_names.get(ack["mode"], key), period_ms=period_ms,
            boot_count=ack["boot_count"], test_build=test_build)
        self._mode, self._period_ms = key, period_ms
        self._ping_burst()
        return self.info

    def _ping_once(self, timeout_s: float) -> PingSample | None:
        nonce = next(self._nonce) & 0xFFFFFFFF
        seq = self._next_seq()
        t1_us = time.monotonic_ns() // 1000
        self._send("PING", seq, 0, nonce=nonce, t1_host_us=t1_us)
        rec = self._wait(lambda: self._pongs.pop(nonce, None), timeout_s, session=False)
        if rec is None:
            return None
        m = rec.msg
        t4_us = rec.t_ns // 1000
        rtt_ms = (t4_us - m["t1_host_us"]) / 1000.0
        offset = (_wrap32(m["t2_pu_us"] - m["t1_host_us"]) + _wrap32(m["t3_pu_us"] - t4_us)) / 2
        with self._cond:
            self._rtt_ms.append(rtt_ms)
        return PingSample(rtt_ms=rtt_ms, offset_us=offset)

    def _ping_burst(self) -> None:
        samples = []
        timeout = max(self.retry_timeout_s, INITIAL_RETRY_TIMEOUT_S)
        for _ in range(self.ping_burst):
            s = self._ping_once(timeout)
            if s is not None:
                samples.append(s)
        if self.ping_burst and len(samples) * 2 < self.ping_burst:
            raise LinkError(f"{self.url}: only {len(samples)} of {self.ping_burst} PINGs were "
                            "answered; the link is losing frames")
        if samples:
            rtts = [s.rtt_ms for s in samples]
            self._retry_rtt_s = _percentile(rtts, 50) / 1000.0
            best = min(samples, key=lambda s: s.rtt_ms)  # least queueing: best offset
            self.clock_offset_us = best.offset_us

    def ping(self, timeout_s: float | None = None) -> PingSample:
        """One PING/PONG: RTT (also added to the statistics) and a clock-offset sample.
        Not retried (periodic). LinkError on no answer."""
        timeout = timeout_s if timeout_s is not None else max(self.retry_timeout_s,
                                                              INITIAL_RETRY_TIMEOUT_S)
        s = self._ping_once(timeout)
        if s is None:
            raise LinkError(f"{self.url}: no PONG within {timeout * 1000:.0f} ms")
        return s

    # ---- arming ----------------------------------------------------------------------------

    def arm(self, max_on_ticks: int, next_step: int | None = None) -> None:
        """ARM_REQUEST -> ARM_CHALLENGE -> ARM_CONFIRM(nonce, max_on_ticks, next_step) -> ACK
        ACCEPTED. ``next_step`` (default: one after every step fired in this session, 1 in a
        new one) is the step of the next FIRE: the unit refuses steps before it and more than
        its step window beyond (docs/protocol.md section 6). Raises LinkError if refused or
        unanswered, ValueError for max_on_ticks outside 1..10000.
        """
        cap = LIMITS["max_on_ticks_cap"]
        if isinstance(max_on_ticks, bool) or not 1 <= int(max_on_ticks) <= cap:
            raise ValueError(f"max_on_ticks must be 1..{cap}, got {max_on_ticks!r}")
        session = self._require_session("ARM")
        # A duplicated ARM_REQUEST (a line that repeats frames, or a resend whose first copy
        # got through) draws a second challenge that voids the first nonce, and the unit then
        # answers BAD_NONCE (and goes SAFE). That is the line's doing, not a refusal: arm again,
        # a bounded number of times.
        for arm_try in range(ARM_TRIES):
            if self._arm_once(session, max_on_ticks, next_step, last=arm_try == ARM_TRIES - 1):
                break
        with self._cond:
            self._armed = True
            self._reports.clear()
            self._late_expected.clear()
        self.max_on_ticks = int(max_on_ticks)
        try:  # start the link watchdog's clock from a fresh HEARTBEAT
            self._send("HEARTBEAT", self._next_seq(), 0, session=session, host_step=0)
        except LinkError:
            pass

    def _arm_once(self, session: int, max_on_ticks: int, next_step: int | None,
                  last: bool) -> bool:
        """One ARM_REQUEST / ARM_CONFIRM exchange: True when armed, False after a BAD_NONCE
        (unless ``last``), LinkError for any other refusal."""
        with self._cond:
            challenges_before = self._challenges

        def challenge(seq: int) -> Received | None:
            if self._challenges > challenges_before:
                return self._last_challenge
            return self._take_ack(seq, "ARM_REQUEST")

        rec, _, _ = self._transact("ARM_REQUEST", dict(session=session), challenge,
                                   ack_req=False, session=True)
        if rec.msg.name == "ACK":
            raise LinkError(f"{self.url}: ARM_REQUEST refused: {self._result_name(rec)}"
                            f"{self._hk_pressure_hint()}")
        nonce = rec.msg["nonce"]
        with self._cond:
            armed_events_before = self._armed_events
        if next_step is None:
            next_step = self._next_step
        rec, _, attempt = self._transact(
            "ARM_CONFIRM", dict(session=session, nonce=nonce, max_on_ticks=int(max_on_ticks),
                                next_step=int(next_step)),
            lambda seq: self._take_ack(seq, "ARM_CONFIRM"), ack_req=True, session=True)
        result = rec.msg["result"]
        if result != RESULT["ACCEPTED"]:
            # A resent ARM_CONFIRM whose first copy armed the unit (its ACK lost) is refused
            # with REJECTED_STATE; the ARMED event tells us the first copy worked.
            with self._cond:
                armed_anyway = (attempt > 0 and result == RESULT["REJECTED_STATE"]
                                and self._armed_events > armed_events_before)
            if not armed_anyway and result == RESULT["BAD_NONCE"] and not last:
                return False
            if not armed_anyway:
                hint = self._hk_pressure_hint() if result == RESULT["REJECTED_STATE"] else ""
                raise LinkError(f"{self.url}: ARM_CONFIRM refused: {self._result_name(rec)}"
                                f"{hint}")
        return True

    def disarm(self) -> None:
        """DISARM (with ACK_REQ and retries): valves closed, unit SAFE. LinkError if refused."""
        session = self._require_session("DISARM")
        rec, _, _ = self._transact("DISARM", dict(session=session),
                                   lambda seq: self._take_ack(seq, "DISARM"), ack_req=True,
                                   session=True)
        with self._cond:
            self._armed = False
        if rec.msg["result"] != RESULT["ACCEPTED"]:
            raise LinkError(f"{self.url}: DISARM refused: {self._result_name(rec)}")

    def stop_all(self, confirm_timeout_s: float = 0.0) -> bool | None:
        """STOP_ALL, twice (same seq, the copy flagged RETRANSMIT), asking for an ACK.

        Never raises, whatever the port's state. Returns True if the unit acknowledged it (it
        closes every valve before it answers) within ``confirm_timeout_s``, False if it did
        not, None if nothing was waited for (``confirm_timeout_s`` 0) or the port was down.
        """
        with self._cond:
            self._armed = False
            reader = self._reader
            if self._ser is None:
                return None
        # Whatever the reader concluded (the link judged down, another process reading the
        # port), the port may still take a write: STOP_ALL goes out whenever it does.
        seq = self._next_seq()
        for flags in (FLAG_ACK_REQ, FLAG_ACK_REQ | FLAG_RETRANSMIT):
            try:
                self._send("STOP_ALL", seq, flags, force=True)
            except Exception:  # noqa: BLE001 - safing must never raise
                return None
        if confirm_timeout_s <= 0.0:
            return None
        if reader is None or not reader.is_alive():
            return None  # nobody is reading the port: the ACK cannot be seen

        def acked():  # the reader files the ACK; stop waiting only when it has stopped
            got = self._take_ack(seq, "STOP_ALL")
            return got if got is not None else (_DOWN if not reader.is_alive() else None)

        with self._cond:
            ack = self._cond.wait_for(acked, confirm_timeout_s)
        if ack is None or ack is _DOWN:
            return False
        return ack.msg["result"] == RESULT["ACCEPTED"]

    @property
    def armed(self) -> bool:
        with self._cond:
            return self._armed and self._session is not None and not self.reset_detected

    # ---- firing ----------------------------------------------------------------------------

    def _ticks(self, on_ms: Sequence[int] | np.ndarray) -> list[int]:
        assert self.info is not None
        tick_us = self.info.tick_us or 1000
        if isinstance(on_ms, np.ndarray) and on_ms.dtype.kind == "u":
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

    def _fire_session(self) -> int:
        """The session to FIRE in; LinkError saying exactly why not if the link cannot fire."""
        with self._cond:
            session = self._session
            ready = (self._armed and session is not None and not self.reset_detected
                     and self._up and self.info is not None)
        if ready:
            return session  # type: ignore[return-value]
        if self._lockout is not None:
            raise LinkError(self._lockout)
        if not self.armed or self.info is None:
            raise LinkError(f"{self.url}: FIRE refused: the link is not armed "
                            f"({'the unit reset: reconnect and ' if self.reset_detected else ''}"
                            f"arm() first)")
        return self._require_session("FIRE")

    def _fire_banks(self, step: int, on_ms: Sequence[int] | np.ndarray, session: int,
                    valid_for_ms: int | None = None) -> list[tuple[int, int, int, dict]]:
        """The FIREs of one step: (bank, first channel, width, fields) per bank of 16."""
        assert self.info is not None
        n = len(on_ms)
        if not 1 <= n <= self.info.n_channels:
            raise ValueError(f"fire: {n} on-times for a unit with {self.info.n_channels} "
                             "channels")
        ticks = self._ticks(on_ms)
        if step >= self._next_step:
            self._next_step = step + 1
        vf = valid_for_ms if valid_for_ms is not None else self.valid_for_ms
        if vf is None:
            vf = min(0xFFFF, 2 * (self._period_ms or 500))
        banks = []
        for b, lo, width, mask in self._bank_layout(n):
            bank_ticks = ticks[lo:lo + width]
            if width < CHANNELS_PER_BANK:
                bank_ticks += [0] * (CHANNELS_PER_BANK - width)
            banks.append((b, lo, width, dict(session=session, step=step, valid_for_ms=vf,
                                             bank=b, mask=mask, on_ticks=bank_ticks)))
        return banks

    def fire(self, step: int, on_ms: Sequence[int] | np.ndarray, *,
             valid_for_ms: int | None = None, deadline_ns: int | None = None) -> FireResult:
        """Fire one control step: one FIRE per bank of 16 thrusters, all in one write.

        LOCKSTEP: waits for each bank's VALVE_REPORT(step, bank), resending the same FIRE (same
        seq, RETRANSMIT) up to 3 times. REALTIME: sends every bank, then collects the reports
        that arrive before ``deadline_ns`` (host monotonic ns; default: now + period +
        REALTIME_REPORT_SLACK_MS); a bank
        whose report misses it counts as a deadline miss and is listed in ``missing_banks``
        (its thrusters show 0 executed).

        Raises LinkError if not armed (also after a reset until arm() again), on a rejecting
        ACK (REJECTED_STATE / STALE / BAD_SESSION / ... named), or if LOCKSTEP gets no report.
        """
        session = self._fire_session()
        banks = self._fire_banks(step, on_ms, session, valid_for_ms)
        n = len(on_ms)

        if self._mode == "realtime":
            return self._fire_realtime(step, n, banks, deadline_ns)

        # All banks go out back to back and their reports are awaited together: one round trip
        # per cycle however many banks. A bank whose report does not come is resent alone, with
        # its sequence count, the RETRANSMIT flag and the same step (idempotent on the unit).
        sent: dict[int, tuple[int, dict]] = {b: (self._next_seq(), fields)
                                             for b, _lo, _w, fields in banks}
        t_first = self._send_together([("FIRE", seq, 0, fields) for seq, fields in sent.values()])
        reports: dict[int, Received] = {}
        rejected: list[tuple[int, Received]] = []

        def collect():
            for b, (seq, _f) in sent.items():
                if b not in reports:
                    got = self._fire_reply(step, b, seq)
                    if got is not None:
                        if got.msg.name == "ACK":
                            rejected.append((b, got))
                        else:
                            reports[b] = got
            return bool(rejected) or len(reports) == len(sent)

        attempt = 0
        give_up_ns = t_first + int(self.give_up_s * 1e9)
        t_sent = t_first
        while True:
            if attempt and not self._unit_behind(step, t_sent):  # (else: hold the copies)
                t_sent = time.monotonic_ns()
                for b, (seq, fields) in sent.items():
                    if b not in reports:
                        with self._cond:
                            self._retries += 1
                        self._send("FIRE", seq, FLAG_RETRANSMIT, **fields)
            if self._wait(collect, self._resend_wait_s(attempt), session=True):
                break
            if attempt >= MAX_RETRIES and time.monotonic_ns() >= give_up_ns \
                    and self._unit_lost(t_first):
                missing = sorted(set(sent) - set(reports))
                raise LinkError(
                    f"{self.url}: no reply to FIRE step {step} (no VALVE_REPORT for bank(s) "
                    f"{missing}) after {attempt + 1} tries over "
                    f"{(time.monotonic_ns() - t_first) / 1e6:.0f} ms; is the unit running?"
                    f"{self._foreign_hint(q for q, _f in sent.values())}"
                    f"{self._live_hint(t_first)}")
            attempt += 1
        if rejected:
            b, rec = rejected[0]
            raise LinkError(f"{self.url}: FIRE step {step} bank {b} refused: "
                            f"{self._result_name(rec)}{self._refusal_hint()}")
        t_last = max(r.t_ns for r in reports.values())
        with self._cond:
            if attempt == 0:  # Karn: no RTT sample from a retransmitted exchange
                self._rtt_ms.append((t_last - t_first) / 1e6)
            elif t_last >= give_up_ns:
                self._slow_unit_waits += 1
        return self._fire_result(step, n, banks, reports, (t_last - t_first) / 1e6)

    def fire_chain(self, step: int, on_ms: Sequence[int] | np.ndarray,
                   on_result: Callable[[FireResult], tuple[int, Any] | None]) -> None:
        """LOCKSTEP: fire ``step``, and every further step ``on_result`` asks for, with no
        thread hand-over per step.

        When a step's VALVE_REPORTs are all in, the reader thread itself calls
        ``on_result(result)`` (a :class:`FireResult`) and at once sends what it returns: the
        next ``(step, on_ms)``, or None to end the chain. The calling thread blocks until then,
        watching for stalls: a step whose reports do not come within the retry timeout is
        resent as :meth:`fire` would (same seq, RETRANSMIT, same step), at most 3 times.

        This is :meth:`fire` in a loop, minus the wake-up of the calling thread per step (the
        biggest cost of a lockstep cycle after the pty itself). ``on_result`` runs on the
        reader thread: nothing else is read while it runs. Raises what :meth:`fire` raises
        (LinkError on refusal, no reply, reset or port loss), or re-raises what ``on_result``
        raised. On KeyboardInterrupt the chain stops after the step in progress and the
        interrupt propagates.
        """
        if self._mode == "realtime":
            raise LinkError(f"{self.url}: fire_chain is for LOCKSTEP; fire() each REALTIME step")
        session = self._fire_session()
        chain = _Chain(on_result)
        with self._cond:
            if self._chain is not None:
                raise RuntimeError("fire_chain: a chain is already running on this link")
            self._chain = chain
        try:
            self._chain_step(chain, step, on_ms, session)
            self._watch_chain(chain)
        except BaseException:
            with self._cond:
                chain.cancelled = True
                while chain.busy:  # let the reader finish the step it is in
                    self._cond.wait(0.05)
            raise
        finally:
            with self._cond:
                self._chain = None
        if chain.error is not None:
            raise chain.error

    def _chain_step(self, chain: _Chain, step: int, on_ms: Sequence[int] | np.ndarray,
                    session: int) -> None:
        """Make ``step`` the chain's step and send its FIREs (either thread)."""
        banks = self._fire_banks(step, on_ms, session)
        seqs = dict(zip((b for b, _lo, _w, _f in banks), self._next_seqs(len(banks)),
                        strict=True))
        frames = [("FIRE", seqs[b], 0, fields) for b, _lo, _w, fields in banks]
        with self._cond:
            chain.step, chain.n, chain.banks, chain.seqs = step, len(on_ms), banks, seqs
            chain.reports = {}
            chain.attempt = 0
            chain.slow = False
            # Stamped before the write: the reports may be in before _send_together returns.
            chain.t_first = chain.t_sent = t_ns = time.monotonic_ns()
        self._send_together(frames, t_ns)

    def _advance_chain(self, chain: _Chain) -> None:
        """Reader thread: a chain step is complete; hand it over and send the next."""
        try:
            t_last = max(r.t_ns for r in chain.reports.values())
            rtt_ms = (t_last - chain.t_first) / 1e6
            with self._cond:
                if chain.attempt == 0:  # Karn: no RTT sample from a retransmitted exchange
                    self._rtt_ms.append(rtt_ms)
                self._slow_unit_waits += chain.slow
            result = self._fire_result(chain.step, chain.n, chain.banks, chain.reports, rtt_ms)
            nxt = chain.on_result(result)
            with self._cond:
                stop = chain.cancelled or nxt is None
                session = self._session
            if not stop:
                if session is None or self.reset_detected:
                    raise LinkError(f"{self.url}: the unit reset (BOOT in mid-session): "
                                    "reconnect and ARM again")
                self._chain_step(chain, nxt[0], nxt[1], session)
        except BaseException as exc:  # noqa: BLE001 - handed to the chain's caller
            with self._cond:
                chain.error = exc
                chain.done = True
                chain.busy = False
            chain.wake.set()
            return
        with self._cond:
            chain.busy = False
            if stop:
                chain.done = True
        if stop:
            chain.wake.set()

    def _watch_chain(self, chain: _Chain) -> None:
        """Calling thread: wait for the chain to end; resend a stalled step's missing banks.
        It wakes once per retry timeout (not per step) to see whether the chain moved."""
        while True:
            chain.wake.wait(self.retry_timeout_s)
            with self._cond:
                if chain.done:
                    return
                if self._intruder is not None:
                    raise LinkError(self._intruder)
                if not self._up:
                    raise LinkError(f"{self.url}: link is down "
                                    f"({self._down_reason or 'port closed'}); reconnect")
                if self.reset_detected:
                    raise LinkError(f"{self.url}: the unit reset (BOOT in mid-session): "
                                    "reconnect and ARM again")
                waited_s = (time.monotonic_ns() - chain.t_sent) / 1e9
                if chain.busy or waited_s < self._resend_wait_s(chain.attempt):
                    continue  # on_result is running, or this step's reports are not yet due
                # Stalled a whole retry timeout: resend the banks whose report did not come.
                now_ns = time.monotonic_ns()
                if chain.attempt >= MAX_RETRIES and \
                        now_ns - chain.t_first >= self.give_up_s * 1e9:
                    if not self._unit_lost(chain.t_first):
                        chain.slow = True  # a live unit: keep resending, keep waiting
                    else:
                        missing = sorted(set(chain.seqs) - set(chain.reports))
                        raise LinkError(
                            f"{self.url}: no reply to FIRE step {chain.step} (no VALVE_REPORT "
                            f"for bank(s) {missing}) after {chain.attempt + 1} tries over "
                            f"{(now_ns - chain.t_first) / 1e6:.0f} ms; is the unit running?"
                            f"{self._foreign_hint(chain.seqs.values())}"
                            f"{self._live_hint(chain.t_first)}")
                chain.attempt += 1
                behind = self._unit_behind(chain.step, chain.t_sent)
                chain.t_sent = time.monotonic_ns()
                resend = [] if behind else [  # a unit reading a backlog gets no more copies
                    (chain.seqs[b], fields) for b, _lo, _w, fields in chain.banks
                    if b not in chain.reports]
                self._retries += len(resend)
            for seq, fields in resend:
                self._send("FIRE", seq, FLAG_RETRANSMIT, **fields)

    def _fire_reply(self, step: int, bank: int, seq: int) -> Received | None:
        rec = self._reports.pop((step, bank), None)
        if rec is not None:
            return rec
        ack = self._take_ack(seq, "FIRE")
        if ack is not None and ack.msg["result"] not in (RESULT["ACCEPTED"],
                                                         RESULT["DUPLICATE"]):
            return ack  # rejected: the report will not come
        return None  # ACCEPTED/DUPLICATE ACKs only announce the report

    def _fire_realtime(self, step: int, n: int, banks: list, deadline_ns: int | None
                       ) -> FireResult:
        seqs = {b: self._next_seq() for b, _lo, _w, _fields in banks}
        t_first = self._send_together([("FIRE", seqs[b], 0, fields)
                                       for b, _lo, _w, fields in banks])
        if deadline_ns is None:
            # A pulse may last the whole period (a main engine firing continuously): its report
            # comes when it ends, a period plus the link's latency after the FIRE.
            period_ms = (self._period_ms or 500) + REALTIME_REPORT_SLACK_MS
            deadline_ns = t_first + period_ms * 1_000_000
        reports: dict[int, Received] = {}
        rejected: list[tuple[int, Received]] = []

        def collect():
            for b, seq in seqs.items():
                if b in reports:
                    continue
                got = self._fire_reply(step, b, seq)
                if got is None:
                    continue
                if got.msg.name == "ACK":
                    rejected.append((b, got))
                else:
                    reports[b] = got
            return rejected or len(reports) == len(seqs)

        # Pulses last up to a period, longer than the unit's watchdog: keep feeding it while
        # the reports are awaited.
        slice_s = (self.info.watchdog_ms if self.info else 250) / 8000.0
        while True:
            timeout = (deadline_ns - time.monotonic_ns()) / 1e9
            if timeout <= 0.0 or self._wait(collect, min(timeout, slice_s), session=True):
                break
            self.maybe_heartbeat(step)
        with self._cond:
            collect()  # what arrived in the last instant
            missing = tuple(b for b in seqs if b not in reports)
            if not rejected:
                self._deadline_misses += len(missing)
                if len(self._late_expected) > _FILED_REPLIES:  # reports that never came
                    self._late_expected.clear()
                self._late_expected.update((step, b) for b in missing)
        if rejected:
            b, rec = rejected[0]
            raise LinkError(f"{self.url}: FIRE step {step} bank {b} refused: "
                            f"{self._result_name(rec)}{self._refusal_hint()}")
        # A report missed now and then is a late cycle; none for MAX_RETRIES + 1 cycles in a
        # row (a cut cable, a dead unit) ends the burn: the unit's watchdog has long closed
        # the valves, and the host must not fly on in the dark.
        self._silent_cycles = self._silent_cycles + 1 if len(missing) == len(seqs) else 0
        if self._silent_cycles > MAX_RETRIES:
            raise LinkError(f"{self.url}: no VALVE_REPORT for {self._silent_cycles} REALTIME "
                            f"cycles in a row (steps {step - self._silent_cycles + 1}.."
                            f"{step}): the link is lost or the unit stopped answering"
                            f"{self._foreign_hint(seqs.values())}")
        rtt = None
        if reports:
            rtt = (max(r.t_ns for r in reports.values()) - t_first) / 1e6
        return self._fire_result(step, n, banks, reports, rtt, missing)

    def _fire_result(self, step: int, n: int, banks: list, reports: dict[int, Received],
                     rtt_ms: float | None, missing: tuple[int, ...] = ()) -> FireResult:
        assert self.info is not None
        tick_us = self.info.tick_us or 1000
        ex = [0] * n
        health = [HEALTH_NOMINAL] * n
        flags = 0
        t_start = None
        for b, lo, width, _fields in banks:
            rec = reports.get(b)
            if rec is None:
                continue
            f = rec.msg.fields
            flags |= f["flags"]
            if b == 0:
                t_start = f["t_start_pu_us"]
            ex[lo:lo + width] = f["executed_ticks"][:width]
            stuck = f["stuck_mask"]
            failed = f["failed_mask"]
            if stuck or failed:
                for i in range(width):
                    bit = 1 << i
                    if stuck & bit:
                        health[lo + i] = HEALTH_STUCK_OPEN
                    elif failed & bit:
                        health[lo + i] = HEALTH_FAILED_OFF
        ms = tuple(ex) if tick_us == 1000 else tuple((t * tick_us + 500) // 1000 for t in ex)
        return FireResult(step=step, executed_ms=ms, executed_ticks=tuple(ex),
                          health=tuple(health), flags=flags, rtt_ms=rtt_ms,
                          missing_banks=tuple(missing), t_start_pu_us=t_start)

    # ---- heartbeat, parameters, faults -----------------------------------------------------

    def heartbeat(self, step: int, *, ack: bool = False) -> None:
        """HEARTBEAT(session, step). With ``ack=True`` it is sent with ACK_REQ and retried
        like any non-periodic command; LinkError if refused or unanswered."""
        session = self._require_session("HEARTBEAT")
        fields = dict(session=session, host_step=int(step) & 0xFFFFFFFF)
        if not ack:
            self._send("HEARTBEAT", self._next_seq(), 0, **fields)
            return
        rec, _, _ = self._transact("HEARTBEAT", fields,
                                   lambda seq: self._take_ack(seq, "HEARTBEAT"), ack_req=True,
                                   session=True)
        if rec.msg["result"] != RESULT["ACCEPTED"]:
            raise LinkError(f"{self.url}: HEARTBEAT refused: {self._result_name(rec)}")

    def maybe_heartbeat(self, step: int) -> bool:
        """Send a HEARTBEAT only if no HEARTBEAT or FIRE went out for a quarter of the watchdog
        time (so a host that lost the CPU for up to half of it, checking every eighth, still
        feeds the watchdog in time on a loaded machine). Returns whether one was sent. Call it
        every cycle of the run loop."""
        if self.info is None or self._session is None:
            return False
        quarter_ns = self.info.watchdog_ms * 250_000
        if time.monotonic_ns() - self._last_feed_ns < quarter_ns:
            return False
        self.heartbeat(step)
        return True

    def set_param(self, name: str | int, value: int) -> None:
        """SET_PARAM (unit SAFE only). UserError for an unknown parameter, a value out of its
        range or a BAD_PARAM answer; LinkError for any other refusal or no answer."""
        names = {v: k for k, v in PARAM.items()}
        key = names.get(name) if isinstance(name, int) else str(name).upper()
        if key not in PARAM:
            raise UserError(where=self.url, field="param",
                            message=f"expected one of {', '.join(PARAM)}, got {name!r}")
        ranges, text = _PARAM_RANGES[key]
        if isinstance(value, bool) or not isinstance(value, int) \
                or not any(lo <= value <= hi for lo, hi in ranges):
            raise UserError(where=self.url, field=key, message=f"expected {text}, got {value!r}")
        session = self._require_session("SET_PARAM")
        rec, _, _ = self._transact("SET_PARAM", dict(session=session, param=PARAM[key],
                                                     value=value),
                                   lambda seq: self._take_ack(seq, "SET_PARAM"), ack_req=True,
                                   session=True)
        result = rec.msg["result"]
        if result == RESULT["BAD_PARAM"]:
            raise UserError(where=self.url, field=key,
                            message=f"the unit refused {value!r} (BAD_PARAM)")
        if result != RESULT["ACCEPTED"]:
            raise LinkError(f"{self.url}: SET_PARAM {key} refused: {self._result_name(rec)}")
        if key == "WATCHDOG_MS" and self.info is not None:
            self.info = replace(self.info, watchdog_ms=value)

    @staticmethod
    def _fault_fields(kind: str | int, arg: int) -> tuple[str, dict[str, int]]:
        names = {v: k for k, v in FAULT.items()}
        key = names.get(kind) if isinstance(kind, int) else str(kind).upper()
        if key not in FAULT:
            raise ValueError(f"unknown fault {kind!r}; expected one of {', '.join(FAULT)}")
        if not 0 <= int(arg) <= 0xFFFF:
            raise ValueError(f"fault argument must be 0..65535, got {arg!r}")
        return key, dict(fault=FAULT[key], arg=int(arg))

    def on_reader_thread(self) -> bool:
        """Is the caller the link's reader thread (inside a :meth:`fire_chain` ``on_result``)?
        Such a caller must never wait for a reply: only this thread could read it."""
        return self._reader is not None and threading.current_thread() is self._reader

    def inject_fault(self, kind: str | int, arg: int = 0) -> str | None:
        """FAULT_INJECT (test builds only). Returns the ACK's result name, or None when no ACK
        is waited for: RESET (the unit resets instead of answering), and a call from the
        reader thread (inside :meth:`fire_chain`), which sends it with :meth:`send_fault`.
        Not retried (a fault must not apply twice). LinkError if unanswered or refused
        (UNSUPPORTED: not a test build)."""
        key, fields = self._fault_fields(kind, arg)
        fields["session"] = self._require_session("FAULT_INJECT")
        if key == "RESET":
            self._send("FAULT_INJECT", self._next_seq(), 0, **fields)
            return None
        if self.on_reader_thread():
            self.send_fault(key, arg)
            return None
        rec, _, _ = self._transact("FAULT_INJECT", fields,
                                   lambda seq: self._take_ack(seq, "FAULT_INJECT"),
                                   ack_req=True, session=False, retries=0)
        result = self._result_name(rec)
        if rec.msg["result"] != RESULT["ACCEPTED"]:
            raise LinkError(f"{self.url}: FAULT_INJECT {key} refused: {result}")
        return result

    def send_fault(self, kind: str | int, arg: int = 0, *, seq: int | None = None) -> int:
        """FAULT_INJECT without ACK_REQ and without waiting (safe on the reader thread, in a
        LOCKSTEP chain); returns its sequence count. The unit handles frames in order, so the
        fault is applied before any FIRE sent after this; its FAULT_INJECTED event and the
        next VALVE_REPORT's failed/stuck masks confirm it. A refusal still gets an ACK: see
        :meth:`fault_refusal`. ``seq`` resends that earlier FAULT_INJECT (same count,
        RETRANSMIT flag): the unit applies it only if it never got the first copy."""
        _key, fields = self._fault_fields(kind, arg)
        fields["session"] = self._require_session("FAULT_INJECT")
        flags = 0
        if seq is None:
            seq = self._next_seq()
        else:
            flags = FLAG_RETRANSMIT
            with self._cond:
                self._retries += 1
        self._send("FAULT_INJECT", seq, flags, **fields)
        return seq

    def fault_refusal(self, seq: int) -> str | None:
        """The result the unit refused the FAULT_INJECT ``seq`` of :meth:`send_fault` with
        (e.g. UNSUPPORTED on a flight build), or None if no refusal has arrived."""
        with self._cond:
            rec = self._take_ack(seq, "FAULT_INJECT")
        if rec is None or rec.msg["result"] == RESULT["ACCEPTED"]:
            return None
        return self._result_name(rec)

    # ---- reset / reconnect -----------------------------------------------------------------

    def wait_reset(self, timeout_s: float) -> bool:
        """Block until a mid-session BOOT was seen (or timeout); return reset_detected."""
        with self._cond:
            return self._cond.wait_for(lambda: self.reset_detected, timeout_s)

    def wait_hk(self, after_ns: int | None = None, timeout_s: float = 1.0) -> Received | None:
        """The unit's housekeeping (HK) received after ``after_ns`` (host monotonic ns; default:
        any), waiting up to ``timeout_s`` for one; None if none came. LinkError if the port
        goes down meanwhile."""
        def newer():
            hk = self.latest_hk
            return hk if hk is not None and (after_ns is None or hk.t_ns > after_ns) else None

        return self._wait(newer, timeout_s, session=False)

    def reconnect(self, timeout_s: float = 10.0, boot_timeout_s: float = 3.0) -> LinkInfo:
        """After a reset (BOOT mid-session) or a port that went away: re-open the port if
        needed (retrying with backoff up to ``timeout_s``), wait for BOOT, HELLO, PING burst,
        with the mode and period of the last connect(). The link refuses FIRE until arm()."""
        if self._mode is None or self._period_ms is None:
            raise LinkError(f"{self.url}: reconnect() before any connect()")
        with self._cond:
            need_open = self._ser is None or not self._up
        if need_open:
            self._close_port()
            deadline = time.monotonic() + timeout_s
            backoff = 0.05
            while True:
                try:
                    self.open()
                    break
                except UserError as exc:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise LinkError(f"{self.url}: the port did not come back within "
                                        f"{timeout_s:g} s ({exc.message})") from None
                    time.sleep(min(backoff, left))  # reopen backoff, not a reply wait
                    backoff = min(1.0, backoff * 2)
        return self.connect(self._mode, self._period_ms, boot_timeout_s)

    # ---- state and statistics --------------------------------------------------------------

    @property
    def is_up(self) -> bool:
        with self._cond:
            return self._up

    @property
    def session(self) -> int | None:
        with self._cond:
            return self._session

    @property
    def n_channels(self) -> int | None:
        return self.info.n_channels if self.info else None

    @property
    def tick_us(self) -> int | None:
        return self.info.tick_us if self.info else None

    @property
    def watchdog_ms(self) -> int | None:
        return self.info.watchdog_ms if self.info else None

    @property
    def boot_count(self) -> int | None:
        with self._cond:
            if self.last_boot is not None and (self.info is None or self.reset_detected):
                return self.last_boot.msg["boot_count"]
        return self.info.boot_count if self.info else None

    def events(self) -> list[Received]:
        """The unit's EVENTs, oldest first (the last EVENT_LOG_SIZE)."""
        with self._cond:
            return list(self._events)

    def stats(self) -> dict[str, Any]:
        """Counters of this link plus the unit's last HK (``unit_*``, None before any HK)."""
        with self._cond:
            errs = dict(self._decoder.errors)
            rtts = list(self._rtt_ms)
            out: dict[str, Any] = {
                "frames_sent": self._frames_sent,
                "bytes_sent": self._bytes_sent,
                "frames_received": self._decoder.frames,
                "bytes_received": self._decoder.bytes,
                "crc_errors": errs.get("crc", 0),
                "cobs_errors": errs.get("cobs", 0),
                "length_errors": errs.get("length", 0),
                "other_protocol_errors": sum(v for k, v in errs.items()
                                             if k not in ("crc", "cobs", "length")),
                "unexpected_messages": self._unexpected,
                "retries": self._retries,
                "rejections": sum(self._rejections.values()),
                "rtt_ms_p50": _percentile(rtts, 50),
                "rtt_ms_p99": _percentile(rtts, 99),
                "rtt_samples": len(rtts),
                "deadline_misses": self._deadline_misses,
                "foreign_refusals": self._foreign_refusals,
                "slow_unit_waits": self._slow_unit_waits,
                "late_reports": self._late_reports,
                "bytes_taken_reads": self._bytes_taken_reads,
                "resets_detected": self._resets_detected,
                "capture_errors": self._capture_errors,
                "clock_offset_us": self.clock_offset_us,
                "link_up": self._up,
                "armed": self._armed and self._session is not None,
            }
            hk = self.latest_hk.msg.fields if self.latest_hk is not None else {}
        for f in MESSAGES["HK"].fields:
            out[f"unit_{f.name}"] = hk.get(f.name)
        return out
