"""Stretches of the control thread that a stop signal must not cut in two.

A stop signal (SIGINT, SIGTERM, SIGHUP: :mod:`thruster_hil.stopsignals`) raises in the main thread
between any two bytecodes. Most places may stop anywhere, but the end of a control cycle may
not: once the plant has been integrated with what the unit executed, the cycle's records are
written and the cycle is counted, and a signal landing between those steps left a telemetry row
for a cycle that the summary did not count (the loaded fault campaign caught it: "summary says
249 cycles, telemetry has 250").

``with`` is not used on this path (a cycle-by-cycle run calls it every cycle), so the section is
two calls: :func:`enter` before, :func:`leave` in a ``finally``. A stop signal's handler that sees
:func:`deferring` true hands its exception to :func:`defer` instead of raising it, and
:func:`leave` raises it when the outermost section ends. Signal handlers run in the main thread
only, and the sections are entered there, so a module-level count is enough.
"""

from __future__ import annotations

__all__ = ["defer", "deferring", "enter", "leave"]

_depth = 0
_pending: BaseException | None = None


def enter() -> None:
    """A section that a stop signal must not cut begins (sections nest)."""
    global _depth
    _depth += 1


def leave() -> None:
    """The section ends; the first stop signal that came during it is raised now."""
    global _depth, _pending
    _depth -= 1
    if _depth == 0 and _pending is not None:
        exc, _pending = _pending, None
        raise exc


def deferring() -> bool:
    """Is a section open (a signal handler must then :func:`defer`, not raise)?"""
    return _depth > 0


def defer(exc: BaseException) -> None:
    """Raise ``exc`` when the open section ends (the first deferred exception is kept)."""
    global _pending
    if _pending is None:
        _pending = exc
