"""The host link's rules and value types, shared by the sans-IO session and its driver
(docs/protocol.md section 7): retry and give-up constants, the give-up rule
(:func:`unit_lost`, :func:`unit_clock_rate`), and what an operation returns (:class:`FireResult`,
:class:`LinkInfo`, :class:`PingSample`, :class:`Received`) or raises (:class:`LinkError`).
Pure: no I/O, no clock."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from thruster_hil.firmware_bridge import codec
from thruster_hil.firmware_bridge.dictionary import ENUMS, LIMITS, MESSAGES, MODE, RESULT

MAX_RETRIES = 3  # resends after the first try (section 7)
#: REALTIME: how long after a period a FIRE's report may still come (a whole-period pulse
#: reports when it ends; USB serial latency is a few ms) [ms].
REALTIME_REPORT_SLACK_MS = 20
MIN_RETRY_TIMEOUT_S = 0.020
#: The FIRE round-trip estimator (RFC 6298 section 2: gains 1/8 and 1/4, K = 4); G is the
#: unit's tick, the granularity of when it answers.
RTO_ALPHA = 0.125
RTO_BETA = 0.25
RTO_K = 4.0
RTO_G_S = 0.001
RTO_MAX_BACKOFF = 64
INITIAL_RETRY_TIMEOUT_S = 0.200  # before the PING burst measured an RTT
PING_BURST = 20
#: A unit that shows signs of life but does not answer is waited for at most this many of its
#: watchdog times on its own clock, and LIVE_WAIT_MAX_S on the host's (docs/protocol.md
#: section 7: a slow unit is not a dead one).
LIVE_WAIT_WATCHDOGS = 8
LIVE_WAIT_MAX_S = 10.0
#: The slowest the unit's clock is taken to run against the host's.
MIN_UNIT_CLOCK_RATE = 0.05
_CLOCK_SAMPLES = 16  # (host time, unit clock) pairs from HK, for the unit's clock rate
_CLOCK_BASELINE_NS = 100_000_000  # a rate needs samples at least this far apart
EVENT_LOG_SIZE = 256
_FILED_REPLIES = 256  # bound on unclaimed ACKs / reports kept for a waiter
_RTT_SAMPLES = 4096
ARM_TRIES = 3  # ARM_REQUEST/CONFIRM exchanges before a BAD_NONCE is taken as final

# VALVE_REPORT flags (section 4).
REPORT_CLAMPED = 1
REPORT_ABORTED = 2
REPORT_DUPLICATE = 4

PARAM = ENUMS["param"]
FAULT = ENUMS["fault"]
SAFE_REASON = ENUMS["safe_reason"]
MIN_FEED_KPA = LIMITS["min_feed_kpa"]
MODES = {"lockstep": MODE["LOCKSTEP"], "realtime": MODE["REALTIME"]}
_ID = {name: spec.id for name, spec in MESSAGES.items()}
_FIRE_ID = _ID["FIRE"]
_ACCEPTED = RESULT["ACCEPTED"]
_DUPLICATE = RESULT["DUPLICATE"]
_BAD_SESSION = RESULT["BAD_SESSION"]

#: What :meth:`HostSession.poll` returns while an operation is still in flight.
PENDING: Any = type("Pending", (), {"__repr__": lambda self: "PENDING"})()


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
class Notice:
    """Unsolicited news from the unit (:meth:`HostSession.next_event`).

    kind: ``boot`` (a BOOT while no session), ``reset`` (a BOOT in mid-session), ``lockout``
    (the unit voided the session: another writer), ``event`` (a unit EVENT), ``hk``."""

    kind: str
    rec: Received | None = None
    text: str = ""


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


def _wrap32(x: int) -> int:
    """x mod 2**32 as a signed 32-bit value."""
    x &= 0xFFFFFFFF
    return x - (1 << 32) if x & 0x80000000 else x


def percentile(values: Sequence[float], q: float) -> float | None:
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


def rtt_estimate(srtt_s: float | None, rttvar_s: float, sample_s: float) -> tuple[float, float]:
    """One round-trip sample into the smoothed RTT and its variation (RFC 6298 section 2.2-2.3):
    the first sample sets SRTT = R, RTTVAR = R/2; each later one moves RTTVAR a quarter of the
    way to |SRTT - R| and SRTT an eighth of the way to R."""
    if srtt_s is None:
        return sample_s, sample_s / 2.0
    rttvar = (1.0 - RTO_BETA) * rttvar_s + RTO_BETA * abs(srtt_s - sample_s)
    return (1.0 - RTO_ALPHA) * srtt_s + RTO_ALPHA * sample_s, rttvar


def unit_lost(
    waited_s: float, silent_s: float, rate: float, watchdog_s: float, tripped: bool
) -> bool:
    """The give-up rule, once the retries are spent and ``give_up_s`` has passed: is a unit
    that has not answered for ``waited_s`` (host clock) dead rather than slow?

    Dead: it said its link watchdog tripped (it is SAFE, nothing it could answer would be a
    VALVE_REPORT); or it has been silent, no valid frame of any kind, for its own watchdog time
    measured on its clock (``silent_s`` host seconds times the clock ``rate``: a unit running
    at a third of real time under a loaded host is silent three times longer before its own
    watchdog would have tripped). A unit that keeps sending (housekeeping, events) but does not
    answer is waited for ``LIVE_WAIT_WATCHDOGS`` watchdog times of its clock at most, and never
    more than ``LIVE_WAIT_MAX_S`` of the host's."""
    if (
        tripped
        or waited_s * rate >= LIVE_WAIT_WATCHDOGS * watchdog_s
        or waited_s >= LIVE_WAIT_MAX_S
    ):
        return True
    return silent_s * rate >= watchdog_s


_PARAM_RANGES = {  # SET_PARAM limits (section 4): (ranges..., text)
    "WATCHDOG_MS": (
        ((LIMITS["watchdog_ms_min"], LIMITS["watchdog_ms_max"]),),
        f"{LIMITS['watchdog_ms_min']}..{LIMITS['watchdog_ms_max']} ms",
    ),
    "HK_PERIOD_MS": (((0, 0), (20, 10000)), "0 (off) or 20..10000 ms"),
    "MIN_ON_TICKS": (((0, 1000),), "0..1000 ticks"),
}
