"""The one declared interface between the closed loop and a propulsion unit.

:func:`thruster_hil.closedloop.runner.run_burn` flies a burn around any :class:`Unit`: the
in-process ideal unit (:class:`thruster_hil.closedloop.runner.IdealUnit`, the software-in-the-loop
reference), a unit over the wire (:class:`thruster_hil.closedloop.hil.SerialUnit`: the emulator,
QEMU or a board) and the replay of a recorded wire capture
(:class:`thruster_hil.replay.ReplayUnit`). The runner uses exactly what is declared here, and
nothing else: no probing for optional parts. A unit that has nothing to say for one of them says
so in the declared way (``stats()`` returns None, ``valves_open`` is empty or None).

:class:`StepByStep` gives the parts that a unit executing one cycle per call shares: its chain
is a plain loop over :meth:`Unit.execute`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar, Protocol, runtime_checkable

import numpy as np

__all__ = ["StepByStep", "Unit", "UnitReport"]


@dataclass
class UnitReport:
    """What a unit executed in one cycle: on-times [ms] and per-thruster health codes."""

    executed_ms: np.ndarray
    health: np.ndarray
    rtt_s: float = 0.0
    #: True if every thruster reported nominal (lets the loop skip the health bookkeeping);
    #: None: not known, look at ``health``.
    all_nominal: bool | None = None


#: Called with cycle k's report; returns cycle k+1's on-times [ms], or None to stop.
NextCycle = Callable[[UnitReport], "np.ndarray | None"]


@runtime_checkable
class Unit(Protocol):
    """A propulsion unit as the closed loop flies it."""

    #: How the run names it ("sim", "replay", "emulator", a port URL).
    name: str
    #: True: the cycles are paced on the wall clock (REALTIME), the loop calls ``wait_until``
    #: between them and counts late cycles; False: lockstep, through ``execute_chain``.
    realtime: bool
    #: The exceptions that mean "the unit failed": the loop stops the burn safely and reports
    #: the exception's line as the abort reason.
    errors: tuple[type[BaseException], ...]
    #: After ``close()``: did the unit confirm every valve closed (None: could not ask)?
    valves_closed: bool | None
    #: After ``close()``: the valve channels still open (stuck), None when unknown.
    valves_open: Sequence[int] | None

    def execute(self, cycle: int, on_ms: np.ndarray) -> UnitReport:
        """Execute cycle ``cycle``'s on-times [ms] (n, uint16) and report what was executed."""
        ...

    def execute_chain(self, cycle: int, on_ms: np.ndarray, next_cycle: NextCycle) -> None:
        """LOCKSTEP: execute ``on_ms`` as cycle ``cycle``, hand the report to ``next_cycle``
        and go on with the on-times it returns, until it returns None."""
        ...

    def wait_until(self, t_monotonic_s: float, step: int) -> None:
        """REALTIME: idle until ``time.monotonic()`` reaches ``t_monotonic_s`` (keeping the
        unit's link alive)."""
        ...

    def cycle_started(self, cycle: int, lag_s: float) -> None:
        """REALTIME: cycle ``cycle`` starts now, ``lag_s`` after its ideal time on the wall-clock
        schedule (the pacing's jitter; the unit reports it with its link statistics)."""
        ...

    def fail(self, index: int, code: int) -> None:
        """Fault injection: thruster ``index`` gets health ``code`` from the next cycle on."""
        ...

    def stats(self) -> dict | None:
        """The link's statistics for the summary ("link"), or None (no link)."""
        ...

    def close(self) -> None:
        """End the unit's part of the run: every valve closed by command where there are
        valves (STOP_ALL), then ``valves_closed`` / ``valves_open`` say how that went."""
        ...


class StepByStep:
    """Defaults for a unit that executes one cycle per :meth:`execute` call in this process
    (no link, no wall-clock pacing of its own)."""

    realtime: ClassVar[bool] = False

    def execute(self, cycle: int, on_ms: np.ndarray) -> UnitReport:
        raise NotImplementedError

    def execute_chain(self, cycle: int, on_ms: np.ndarray, next_cycle: NextCycle) -> None:
        nxt: np.ndarray | None = on_ms
        while nxt is not None:
            nxt = next_cycle(self.execute(cycle, nxt))
            cycle += 1

    def wait_until(self, t_monotonic_s: float, step: int) -> None:
        time.sleep(max(0.0, t_monotonic_s - time.monotonic()))

    def cycle_started(self, cycle: int, lag_s: float) -> None:
        pass

    def stats(self) -> dict | None:
        return None
