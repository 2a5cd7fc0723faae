"""A serial propulsion unit as the runner's unit: the closed hardware-in-the-loop.

:class:`SerialUnit` has the same ``execute(cycle, on_ms) -> UnitReport`` as the in-process
:class:`thruster_hil.closedloop.runner.IdealUnit`, but every cycle goes over the wire through
:class:`Link`: FIRE out, VALVE_REPORT back, and the plant integrates the on-times the unit *reports*
it executed (clamped, quantised, dropped by a failed channel, held open by a stuck one). Thruster i
is valve channel i (bank i // 16).

:func:`open_unit` opens the unit an operator asked for: the pty emulator (started here as a
separate process), the board firmware under qemu-system-avr or simavr (built if needed), or any
port URL (a board, hwgrep://...).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from thruster_hil.closedloop.runner import UnitReport
from thruster_hil.firmware_bridge.dictionary import CHANNELS_PER_BANK, FAULT
from thruster_hil.firmware_bridge.link import MAX_RETRIES, Link, LinkError
from thruster_hil.firmware_bridge.linkrules import percentile
from thruster_hil.firmware_bridge.priority import (
    HOST_FIFO,
    raise_priority,
    restore_priority,
    save_priority,
)
from thruster_hil.sims.thrusters import HEALTH_FAILED_OFF, HEALTH_NOMINAL, HEALTH_STUCK_OPEN

__all__ = ["SerialUnit", "open_unit", "LinkError"]

#: How long closing a serial unit waits for the unit to acknowledge its STOP_ALL [s].
STOP_CONFIRM_S = 0.5
_HEALTH_NAMES = {
    HEALTH_NOMINAL: "nominal",
    HEALTH_FAILED_OFF: "failed off",
    HEALTH_STUCK_OPEN: "stuck open",
}


@dataclass
class _Fault:
    """A thruster failure sent to the unit and not yet seen in one of its VALVE_REPORTs."""

    kind: str  # FAIL_OFF / STUCK_OPEN
    health: int  # what the reports must show for the channel once it applied
    seq: int | None  # sent without waiting (from a lockstep chain): its sequence count
    resends: int = 0


#: REALTIME: the least report budget [ms] (the unit's 1 ms tick ends a pulse up to a tick late,
#: and the report still has to cross the line and wake the host).
REPORT_BUDGET_MIN_MS = 2


def report_budget_ms(rtt_ms_p99: float | None) -> int:
    """How long before the next cycle is due a REALTIME cycle's pulses must end [ms]: one
    round trip at the link's p99 (the report's way back, with margin) plus the unit's tick,
    in whole ms, at least REPORT_BUDGET_MIN_MS."""
    rtt = 0.0 if rtt_ms_p99 is None else float(rtt_ms_p99)
    return max(REPORT_BUDGET_MIN_MS, math.ceil(rtt) + 1)


def pacing_stats(lags_s: list[float]) -> dict:
    """Cycle-start jitter of a REALTIME run: how late each cycle started against the ideal
    schedule (cycle k due k periods after the first), nearest-rank p50 / p99 and the worst, in
    ms (None before the first cycle)."""
    ms = [1e3 * lag for lag in lags_s]
    return {
        "cycle_start_jitter_ms_p50": percentile(ms, 50),
        "cycle_start_jitter_ms_p99": percentile(ms, 99),
        "cycle_start_jitter_ms_max": max(ms) if ms else None,
        "cycle_starts": len(ms),
    }


class SerialUnit:
    """The runner's unit over a :class:`Link` (connected and armed by :func:`open_unit`)."""

    #: What the runner treats as "the unit failed": it stops the burn safely and reports why.
    errors = (LinkError,)

    def __init__(
        self, link: Link, n_thrusters: int, period_ms: int, mode: str, name: str, process=None
    ):
        self.link = link
        self.n = n_thrusters
        self.period_ms = period_ms
        self.mode = mode
        self.name = name
        self.realtime = mode == "realtime"
        self._process = process
        self._executed = np.zeros(n_thrusters, np.uint16)
        self._health = np.zeros(n_thrusters, np.int64)
        self._health_nominal = True  # _health holds HEALTH_NOMINAL (0) everywhere
        self._faults: dict[int, _Fault] = {}  # channel -> failure awaiting confirmation
        #: After close(): did the unit confirm every valve closed? True: it acknowledged the
        #: final STOP_ALL and reports no valve open; False: no acknowledgement, or a valve is
        #: still open (stuck); None: the link was already down.
        self.valves_closed: bool | None = None
        #: After close(): the valve channels the unit still reports open (a stuck-open valve
        #: cannot be closed by STOP_ALL); None when unknown (no acknowledgement, link down).
        self.valves_open: list[int] | None = None
        #: REALTIME: the scheduling priority the host thread got for the burn
        #: (firmware_bridge/priority.py), restored at close(); None in LOCKSTEP.
        self.priority: str | None = None
        self._saved_priority: tuple | None = None
        #: REALTIME: how late each cycle started against the ideal schedule [s] (cycle_started)
        self._lags_s: list[float] = []
        self._lag_s = 0.0  # this cycle's
        #: REALTIME: each cycle's pulses end this long [ms] before the next cycle is due, so
        #: their VALVE_REPORT is in by then; open_unit sets it from the link's measured RTT
        #: (report_budget_ms), the least budget until then.
        self.report_budget_ms = REPORT_BUDGET_MIN_MS
        self.capped_cycles = 0  # REALTIME cycles whose pulses the budget shortened
        self._capped = np.zeros(n_thrusters, np.uint16)

    def execute(self, cycle: int, on_ms: np.ndarray) -> UnitReport:
        on = on_ms[: self.n]
        if self.realtime:
            # The unit reports a FIRE when its pulses end, and the next cycle needs that report:
            # a pulse as long as the period (a thruster held on) would make every cycle start
            # a little later than the last, without bound. So every pulse ends the report
            # budget before the next cycle is due, counted from when this cycle really
            # started (a late cycle's pulses are shorter: the schedule catches up).
            cap = self.period_ms - self.report_budget_ms - math.ceil(self._lag_s * 1e3)
            cap = max(0, min(cap, self.period_ms))
            if on.max(initial=0) > cap:
                np.minimum(on, cap, out=self._capped)
                on = self._capped
                self.capped_cycles += 1
        return self._report(self.link.fire(cycle + 1, on))

    def _report(self, res) -> UnitReport:
        n = self.n
        ms = res.executed_ms
        self._executed[:] = ms if len(ms) == n else ms[:n]
        health = res.health if len(res.health) == n else res.health[:n]
        nominal = not any(health)
        if not (nominal and self._health_nominal):  # (all zeros already: nothing to copy)
            self._health[:] = health
            self._health_nominal = nominal
        if self._faults:
            self._confirm_faults(res)
        # No report at all (every bank missed a REALTIME deadline): no round-trip time.
        rtt_s = math.nan if res.rtt_ms is None else res.rtt_ms / 1e3
        return UnitReport(self._executed, self._health, rtt_s, nominal)

    def execute_chain(
        self, cycle: int, on_ms: np.ndarray, next_cycle: Callable[[UnitReport], np.ndarray | None]
    ) -> None:
        """LOCKSTEP: execute cycle ``cycle``, hand its report to ``next_cycle`` and execute the
        on-times it returns as the next cycle, until it returns None (:meth:`Link.fire_chain`:
        ``next_cycle`` runs on the link's thread, with no thread hand-over per cycle)."""

        def on_result(res) -> tuple[int, np.ndarray] | None:
            nxt = next_cycle(self._report(res))  # may call fail(): see there
            return None if nxt is None else (res.step + 1, nxt[: self.n])

        self.link.fire_chain(cycle + 1, on_ms[: self.n], on_result)

    def wait_until(self, t_monotonic_s: float, step: int) -> None:
        """REALTIME: idle until the next cycle is due, feeding the unit's link watchdog with a
        HEARTBEAT whenever nothing went out for a quarter of its time."""
        eighth = self.link.watchdog_ms / 8000.0  # maybe_heartbeat feeds it every quarter
        while True:
            left = t_monotonic_s - time.monotonic()
            if left <= 0.0:
                return
            self.link.maybe_heartbeat(step)
            time.sleep(min(left, eighth))

    def cycle_started(self, cycle: int, lag_s: float) -> None:
        self._lag_s = lag_s
        self._lags_s.append(lag_s)

    def fail(self, index: int, code: int = HEALTH_FAILED_OFF) -> None:
        """Fail a thruster on the unit itself (fault injection; test builds only), before the
        next FIRE. The unit's next VALVE_REPORT must show it (else the FAULT_INJECT is resent,
        then LinkError).

        In a LOCKSTEP chain this runs on the link's thread (the runner calls it while
        it prepares the next cycle), where waiting for the ACK would wait for a reply that
        only this thread could read: there the FAULT_INJECT goes out without ACK_REQ, ahead
        of the next FIRE, and the unit, which handles frames in order, applies it first."""
        kind = "STUCK_OPEN" if code == HEALTH_STUCK_OPEN else "FAIL_OFF"
        health = HEALTH_STUCK_OPEN if kind == "STUCK_OPEN" else HEALTH_FAILED_OFF
        seq = None
        if self.link.on_reader_thread():
            seq = self.link.send_fault(FAULT[kind], index)
        else:
            self.link.inject_fault(FAULT[kind], index)
        self._faults[index] = _Fault(kind, health, seq)

    def _confirm_faults(self, res) -> None:
        """Every failure sent before this step's FIRE shows in its report; a FAULT_INJECT that
        went out without waiting and did not arrive is resent (same seq, RETRANSMIT: never
        applied twice) before the next FIRE, up to MAX_RETRIES times."""
        for index, f in list(self._faults.items()):
            if index // CHANNELS_PER_BANK in res.missing_banks:
                continue  # REALTIME: no report for this bank this step; the next one says
            shown = int(res.health[index])
            if shown == f.health:
                del self._faults[index]
                continue
            if f.seq is not None:
                refused = self.link.fault_refusal(f.seq)
                if refused is not None:
                    raise LinkError(
                        f"{self.link.url}: FAULT_INJECT {f.kind} on channel {index} "
                        f"refused: {refused} (fault injection needs a test build)"
                    )
                if f.resends < MAX_RETRIES:
                    f.resends += 1
                    self.link.send_fault(FAULT[f.kind], index, seq=f.seq)
                    continue
            raise LinkError(
                f"{self.link.url}: the unit did not apply FAULT_INJECT {f.kind} on "
                f"channel {index}: its VALVE_REPORT for step {res.step} shows it "
                f"{_HEALTH_NAMES.get(shown, shown)}"
            )

    def stats(self) -> dict:
        out = self.link.stats()
        if self.realtime:
            out.update(pacing_stats(self._lags_s))
            out["report_budget_ms"] = self.report_budget_ms
            out["capped_cycles"] = self.capped_cycles
        if self.priority is not None:
            out["host_priority"] = self.priority
        return out

    def close(self) -> None:
        """STOP_ALL, then close. Within 0.5 s in all, the unit must acknowledge the STOP_ALL
        and then report its valves: ``valves_open`` lists the channels still open after it
        (a stuck-open valve), and ``valves_closed`` is True only if it acknowledged and none
        is open (False: no acknowledgement or a valve open; None: the link was already down).
        """
        try:
            deadline = time.monotonic() + STOP_CONFIRM_S
            acked = self.link.stop_all(confirm_timeout_s=STOP_CONFIRM_S)
            still_open = self._open_after_stop(deadline) if acked else None
            self.link.close()
            if self.valves_closed is None or acked is not None:
                self.valves_closed = acked if still_open is None else not still_open
                self.valves_open = still_open
        finally:
            if self._saved_priority is not None:
                restore_priority(self._saved_priority)
                self._saved_priority = None
            if self._process is not None:
                self._process.stop()
                self._process = None

    def _open_after_stop(self, deadline: float) -> list[int]:
        """The channels open after an acknowledged STOP_ALL. The unit closes every valve it can
        before it answers, so what stays open is stuck. Its first housekeeping after the ACK
        (open_mask) says; if none comes by ``deadline``, the stuck valves it last reported (HK
        stuck_mask, this run's VALVE_REPORTs) are taken as open."""
        after_ns = time.monotonic_ns()  # the ACK is in: an HK received later was made after it
        hk = None
        try:
            hk = self.link.wait_hk(
                after_ns=after_ns, timeout_s=max(0.0, deadline - time.monotonic())
            )
        except LinkError:
            pass  # the port went away: fall back on what the unit last said
        if hk is not None:
            mask = hk.msg["open_mask"]
        else:
            last = self.link.latest_hk
            mask = last.msg["stuck_mask"] if last is not None else 0
            for i in np.flatnonzero(self._health == HEALTH_STUCK_OPEN):
                mask |= 1 << int(i)
        return [c for c in range(self.link.n_channels or 32) if mask >> c & 1]


def start_unit_process(unit: str, faults: str | None = None, emulator_log=None):
    """Start the unit that lives in a process of its own (``emulator``, ``qemu`` or ``simavr``)
    and return
    it started: ``.port`` is its pty, ``.stop()`` ends it."""
    if unit == "emulator":
        from thruster_hil.firmware_bridge.emulator import EmulatorProcess

        process = EmulatorProcess(faults=faults, log_path=emulator_log)
    elif unit == "qemu":
        from thruster_hil.firmware_bridge.qemu import QemuUnit

        process = QemuUnit()
    elif unit == "simavr":
        from thruster_hil.firmware_bridge.simavr import SimavrUnit

        process = SimavrUnit()
    else:
        raise ValueError(f"unit {unit!r} has no process to start")
    process.start()
    return process


def open_unit(
    *,
    unit: str,
    port: str | None,
    mode: str,
    n_thrusters: int,
    period_ms: int,
    faults: str | None = None,
    on_bytes=None,
    emulator_log=None,
) -> SerialUnit:
    """Start or open the unit, connect (BOOT, HELLO, PING) and arm it for ``period_ms`` pulses."""
    process = None
    if port is None:
        process = start_unit_process(unit, faults, emulator_log)
        url, name = process.port, unit
    else:
        url, name = port, port
    link = None
    saved = None
    try:
        if mode == "realtime":  # the cycles are paced on the wall clock: hold the CPU
            saved = save_priority()  # (after the unit's process started: it does not inherit)
            priority = raise_priority(HOST_FIFO)
        link = Link(url, on_bytes=on_bytes)  # one thread: this one, at that priority
        link.connect(mode=mode, period_ms=period_ms)
        if link.n_channels < n_thrusters:
            raise LinkError(
                f"the unit has {link.n_channels} valve channels, the stack needs {n_thrusters}"
            )
        link.arm(max_on_ticks=period_ms)
    except BaseException:
        if link is not None:
            link.close()
        if saved is not None:
            restore_priority(saved)
        if process is not None:
            process.stop()
        raise
    serial_unit = SerialUnit(link, n_thrusters, period_ms, mode, name, process)
    serial_unit.report_budget_ms = report_budget_ms(link.stats().get("rtt_ms_p99"))
    if saved is not None:
        serial_unit.priority, serial_unit._saved_priority = priority, saved
    return serial_unit
