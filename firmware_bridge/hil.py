"""A serial propulsion unit as the runner's unit: the closed hardware-in-the-loop.

:class:`SerialUnit` has the same ``execute(cycle, on_ms) -> UnitReport`` as the in-process
:class:`sims.runner.IdealUnit`, but every cycle goes over the wire through :class:`Link`: FIRE out,
VALVE_REPORT back, and the plant integrates the on-times the unit *reports* it executed (clamped,
quantised, dropped by a failed channel, held open by a stuck one). Thruster i is valve channel i
(bank i // 16).

:func:`open_unit` opens the unit an operator asked for: the pty emulator (started here as a
separate process), the board firmware under qemu-system-avr (built if needed), or any port URL
(a board, hwgrep://...).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np

from firmware_bridge.dictionary import FAULT
from firmware_bridge.link import Link, LinkError
from sims.runner import UnitReport
from sims.thrusters import HEALTH_FAILED_OFF, HEALTH_STUCK_OPEN

__all__ = ["SerialUnit", "open_unit", "LinkError"]

#: How long closing a serial unit waits for the unit to acknowledge its STOP_ALL [s].
STOP_CONFIRM_S = 0.5


class SerialUnit:
    """The runner's unit over a :class:`Link` (connected and armed by :func:`open_unit`)."""

    #: What the runner treats as "the unit failed": it stops the burn safely and reports why.
    errors = (LinkError,)

    def __init__(self, link: Link, n_thrusters: int, period_ms: int, mode: str, name: str,
                 process=None):
        self.link = link
        self.n = n_thrusters
        self.period_ms = period_ms
        self.mode = mode
        self.name = name
        self.realtime = mode == "realtime"
        self._process = process
        self._executed = np.zeros(n_thrusters, np.uint16)
        self._health = np.zeros(n_thrusters, np.int64)
        #: After close(): did the unit acknowledge the final STOP_ALL (its valves closed)?
        self.valves_closed: bool | None = None

    def execute(self, cycle: int, on_ms: np.ndarray) -> UnitReport:
        return self._report(self.link.fire(cycle + 1, on_ms[:self.n]))

    def _report(self, res) -> UnitReport:
        self._executed[:] = res.executed_ms[:self.n]
        health = res.health[:self.n]
        self._health[:] = health
        # No report at all (every bank missed a REALTIME deadline): no round-trip time.
        rtt_s = math.nan if res.rtt_ms is None else res.rtt_ms / 1e3
        return UnitReport(self._executed, self._health, rtt_s, all_nominal=not any(health))

    def execute_chain(self, cycle: int, on_ms: np.ndarray,
                      next_cycle: Callable[[UnitReport], np.ndarray | None]) -> None:
        """LOCKSTEP: execute cycle ``cycle``, hand its report to ``next_cycle`` and execute the
        on-times it returns as the next cycle, until it returns None (:meth:`Link.fire_chain`:
        ``next_cycle`` runs on the link's reader thread, with no thread hand-over per cycle)."""
        def on_result(res) -> tuple[int, np.ndarray] | None:
            nxt = next_cycle(self._report(res))
            return None if nxt is None else (res.step + 1, nxt[:self.n])

        self.link.fire_chain(cycle + 1, on_ms[:self.n], on_result)

    def wait_until(self, t_monotonic_s: float, step: int) -> None:
        """REALTIME: idle until the next cycle is due, feeding the unit's link watchdog with a
        HEARTBEAT whenever nothing went out for half its time."""
        quarter = self.link.watchdog_ms / 4000.0
        while True:
            left = t_monotonic_s - time.monotonic()
            if left <= 0.0:
                return
            self.link.maybe_heartbeat(step)
            time.sleep(min(left, quarter))

    def fail(self, index: int, code: int = HEALTH_FAILED_OFF) -> None:
        """Fail a thruster on the unit itself (fault injection; test builds only)."""
        kind = "STUCK_OPEN" if code == HEALTH_STUCK_OPEN else "FAIL_OFF"
        self.link.inject_fault(FAULT[kind], index)

    def stats(self) -> dict:
        return self.link.stats()

    def close(self) -> None:
        """STOP_ALL and wait up to 0.5 s for the unit to confirm it (``valves_closed``: True
        confirmed, False not confirmed, None the link was already down), then close."""
        try:
            closed = self.link.close(confirm_timeout_s=STOP_CONFIRM_S)
            if self.valves_closed is None or closed is not None:
                self.valves_closed = closed
        finally:
            if self._process is not None:
                self._process.stop()
                self._process = None


def start_unit_process(unit: str, faults: str | None = None, emulator_log=None):
    """Start the unit that lives in a process of its own (``emulator`` or ``qemu``) and return
    it started: ``.port`` is its pty, ``.stop()`` ends it."""
    if unit == "emulator":
        from firmware_bridge.emulator import EmulatorProcess

        process = EmulatorProcess(faults=faults, log_path=emulator_log)
    elif unit == "qemu":
        from firmware_bridge.qemu import QemuUnit

        process = QemuUnit()
    else:
        raise ValueError(f"unit {unit!r} has no process to start")
    process.start()
    return process


def open_unit(*, unit: str, port: str | None, mode: str, n_thrusters: int, period_ms: int,
              faults: str | None = None, on_bytes=None, emulator_log=None) -> SerialUnit:
    """Start or open the unit, connect (BOOT, HELLO, PING) and arm it for ``period_ms`` pulses."""
    process = None
    if port is None:
        process = start_unit_process(unit, faults, emulator_log)
        url, name = process.port, unit
    else:
        url, name = port, port
    link = None
    try:
        link = Link(url, on_bytes=on_bytes)
        link.connect(mode=mode, period_ms=period_ms)
        if link.n_channels < n_thrusters:
            raise LinkError(f"the unit has {link.n_channels} valve channels, the stack needs "
                            f"{n_thrusters}")
        link.arm(max_on_ticks=period_ms)
    except BaseException:
        if link is not None:
            link.close()
        if process is not None:
            process.stop()
        raise
    return SerialUnit(link, n_thrusters, period_ms, mode, name, process)
