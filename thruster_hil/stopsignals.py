"""SIGINT, SIGTERM and SIGHUP stop a command that holds a unit the same safe way.

Python turns SIGINT (Ctrl-C) into KeyboardInterrupt and leaves SIGTERM and SIGHUP at their
default action, which ends the process at once: no STOP_ALL, no summary.json, the valves left
to the unit's watchdog. :class:`StopSignals` gives the three one handler that raises
:class:`HostSignal` in the main thread. HostSignal is a KeyboardInterrupt, so every path that
already stops safely on Ctrl-C (the runner's loop, a lockstep chain on the link's reader thread,
a selftest, ``monitor --port``) does exactly the same for SIGTERM and SIGHUP: STOP_ALL with its
ACK, summary.json with ``"aborted": true`` and ``"signal"``, and exit status
``128 + signal number`` as a shell reports it: 130 SIGINT, 129 SIGHUP, 143 SIGTERM.

It raises once. A signal that comes after that, or after :meth:`StopSignals.hold` (the burn loop
has ended: the unit is being closed and the records written), is noted in ``received`` and
otherwise waits for the command to finish what it is doing. Inside a
:mod:`thruster_hil.core.sections` section (the end of a control cycle: the plant integrated, its
records written, the cycle counted) the one raise waits for the section to end. A signal the
process was started with ignored (``nohup``, a background job without job control) stays ignored.
"""

from __future__ import annotations

import signal
import threading

from thruster_hil.core import sections

__all__ = [
    "SIGNALS",
    "HostSignal",
    "StopSignals",
    "as_from_a_terminal",
    "exit_status",
    "signal_name",
]

#: The signals that stop a command safely.
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def as_from_a_terminal() -> None:
    """Put the stop signals at their default dispositions, as for a command started from an
    operator's terminal: a ``preexec_fn`` for a child (a test's or the campaign's host) whose
    parent may itself have been started as a background job (SIGINT ignored) or under nohup
    (SIGHUP ignored), which the child would otherwise rightly keep ignoring."""
    for signum in SIGNALS:
        signal.signal(signum, signal.SIG_DFL)


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


def exit_status(name: str | None) -> int:
    """The exit status of a command stopped by signal ``name`` (e.g. "SIGTERM"): 128 + its
    number; 130 (SIGINT) for an unknown or missing name."""
    try:
        return 128 + int(signal.Signals[name])  # type: ignore[index]
    except (KeyError, TypeError):
        return 128 + int(signal.SIGINT)


class HostSignal(KeyboardInterrupt):
    """SIGINT, SIGTERM or SIGHUP arrived: stop safely. ``signal_name`` says which."""

    def __init__(self, signum: int):
        self.signum = signum
        self.signal_name = signal_name(signum)
        super().__init__(self.signal_name)


class StopSignals:
    """``with StopSignals() as stop:`` installs the handler (main thread only; elsewhere it does
    nothing) and restores the previous handlers on exit."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._hold = False
        self._raised = False
        self._previous: dict[int, object] = {}

    @property
    def received_name(self) -> str | None:
        return None if self.received is None else signal_name(self.received)

    def hold(self) -> None:
        """From now on a signal is only noted, never raised (the loop has ended)."""
        self._hold = True

    def _handle(self, signum: int, frame) -> None:
        if self.received is None:
            self.received = signum
        if self._hold or self._raised:
            return
        self._raised = True
        if sections.deferring():  # the end of a control cycle: raised when it is whole
            sections.defer(HostSignal(signum))
            return
        raise HostSignal(signum)

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in SIGNALS:
                previous = signal.getsignal(signum)
                if previous is signal.SIG_IGN:
                    continue  # started ignoring it (nohup): keep ignoring it
                self._previous[signum] = previous
                signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)  # type: ignore[arg-type]
        self._previous.clear()
