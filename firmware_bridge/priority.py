"""Scheduling priority for the processes that keep time on a shared machine.

The unit's emulator stands for a board with a CPU of its own, and a REALTIME host paces its
cycles on the wall clock: on a loaded machine (CI, a bench PC compiling) both lose the CPU for
tens of milliseconds at a time, and a 250 ms link watchdog then trips, or an emulated valve
closes late, for reasons that have nothing to do with the code under test. Where the operating
system allows it (root, or CAP_SYS_NICE), they raise their priority as an RTOS task has it:
SCHED_FIFO (they sleep most of the time, so they take little CPU; Linux also keeps 5 % of every
CPU for ordinary processes), else a lower nice value. Where it is not allowed, they run as they
are: the outcome is a line of text the caller records (the emulator's log, the run summary),
never an error.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

__all__ = [
    "HOST_FIFO",
    "UNIT_FIFO",
    "WIRE_FIFO",
    "raise_priority",
    "raised_priority",
    "restore_priority",
    "save_priority",
]

UNIT_FIFO = 20  # the emulated unit above the host, as a board is beside its PC
WIRE_FIFO = 15  # a fault proxy on the line: the wire between them
HOST_FIFO = 10
NICE = -10  # the fallback when SCHED_FIFO is not allowed


def _threads(pid: int) -> list[int]:
    """The thread ids of process ``pid`` (Linux /proc), else just ``pid``; 0 is the caller."""
    if pid == 0:
        return [0]
    try:
        return sorted(int(t) for t in os.listdir(f"/proc/{pid}/task"))
    except (OSError, ValueError):
        return [pid]


def raise_priority(
    fifo: int,
    nice: int = NICE,
    reset_on_fork: bool = False,
    pid: int = 0,
    main_thread_only: bool = False,
) -> str:
    """Raise the calling thread's scheduling priority (threads it starts later inherit it;
    processes too unless ``reset_on_fork``), or that of every thread of process ``pid``:
    SCHED_FIFO at ``fifo``, else ``nice``.

    Every thread, not only the main one: Linux schedules threads, and a thread left at normal
    priority can be preempted while it holds Python's GIL, which then stalls the raised thread
    for as long as the busy processes keep the other one off the CPU (the fault proxy's log
    writer held its forwarding loop up for 313 ms that way on a loaded machine).
    ``main_thread_only``: just the main thread of ``pid`` (QEMU's I/O loop, whose vCPU thread
    beside it spins and must stay at normal priority).
    Returns what it got, e.g. ``"SCHED_FIFO 20"``, ``"nice -10"`` or ``"normal (SCHED_FIFO:
    Operation not permitted; nice: Permission denied)"``."""
    why = []
    tids = [pid] if main_thread_only else _threads(pid)
    policy = getattr(os, "SCHED_FIFO", None)
    if policy is not None and hasattr(os, "sched_setscheduler"):
        if reset_on_fork:
            policy |= getattr(os, "SCHED_RESET_ON_FORK", 0)
        try:
            for tid in tids:
                try:
                    os.sched_setscheduler(tid, policy, os.sched_param(fifo))
                except ProcessLookupError:
                    if tid == tids[0]:
                        raise
            return f"SCHED_FIFO {fifo}"
        except OSError as err:
            why.append(f"SCHED_FIFO: {err.strerror}")
    else:
        why.append("SCHED_FIFO: not on this system")
    try:
        for tid in tids:
            if os.getpriority(os.PRIO_PROCESS, tid) > nice:
                os.setpriority(os.PRIO_PROCESS, tid, nice)
        return f"nice {os.getpriority(os.PRIO_PROCESS, tids[0])}"
    except (OSError, AttributeError) as err:
        why.append(f"nice: {getattr(err, 'strerror', None) or err}")
    return f"normal ({'; '.join(why)})"


def save_priority() -> tuple:
    """The calling thread's policy, its parameter and nice value, for :func:`restore_priority`."""
    try:
        return os.sched_getscheduler(0), os.sched_getparam(0), os.getpriority(os.PRIO_PROCESS, 0)
    except (OSError, AttributeError):
        return (None, None, None)


def restore_priority(saved: tuple) -> None:
    """Back to what :func:`save_priority` saw (lowering a priority is always allowed)."""
    policy, param, niceness = saved
    with contextlib.suppress(OSError, AttributeError, TypeError):
        os.sched_setscheduler(0, policy, param)
    with contextlib.suppress(OSError, AttributeError, TypeError):
        os.setpriority(os.PRIO_PROCESS, 0, niceness)


@contextlib.contextmanager
def raised_priority(fifo: int, nice: int = NICE) -> Iterator[str]:
    """:func:`raise_priority` for the life of a ``with`` block, then back to what it was."""
    saved = save_priority()
    try:
        yield raise_priority(fifo, nice)
    finally:
        restore_priority(saved)
