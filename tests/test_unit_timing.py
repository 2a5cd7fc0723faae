"""The emulator's own timing record (issue 13): each watchdog trip carries its deadline, when the
unit's timer was due and when the host let it run, so a closure made late by the host's
scheduling is told apart from a unit that closed late; and the emulator raises its priority where
it may (firmware_bridge/priority.py), saying what it got.

The host's scheduling is made late on purpose here: the emulator is stopped (SIGSTOP) across
its watchdog deadline and let go again. Nothing is asserted on the wall clock: every check is on
the emulator's own record.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from thruster_hil.firmware_bridge.emulator import EmulatorProcess
from thruster_hil.firmware_bridge.link import Link
from thruster_hil.firmware_bridge.priority import raise_priority, raised_priority

from thruster_hil.campaign import (
    MAX_TIMER_LATE_MS,
    Row,
    _emulator_evidence,
    _read_jsonl,
    judge_closure,
)

# Slow tier (`-m "not slow"` leaves it out): times the emulator process on its own clock.
pytestmark = pytest.mark.slow


def _records(path) -> list[dict]:
    return _read_jsonl(path)  # the emulator's log, read as the campaign reads it


def _wait_for(path, ev: str, timeout_s: float = 10.0) -> dict | None:
    """Poll the emulator's log (another process writes it) for a record of kind ``ev``."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        found = [r for r in _records(path) if r["ev"] == ev]
        if found:
            return found[0]
        time.sleep(0.01)
    return None


@pytest.mark.skipif(not hasattr(signal, "SIGSTOP"), reason="needs SIGSTOP (POSIX)")
def test_a_descheduled_emulator_closes_at_its_first_timer_run_and_says_how_late_it_ran(tmp_path):
    log = tmp_path / "unit.jsonl"
    with EmulatorProcess(log_path=log) as emu, Link(emu.port) as link:
        link.connect()
        link.arm(100)  # its HEARTBEAT starts the watchdog; the host sends nothing more
        os.kill(emu.pid, signal.SIGSTOP)
        try:
            time.sleep(0.4)  # the fault: the unit gets no CPU across its 250 ms deadline
        finally:
            os.kill(emu.pid, signal.SIGCONT)
        trip = _wait_for(log, "watchdog_trip")
    assert trip is not None, "no watchdog trip on record"
    records = _records(log)
    start = records[0]
    assert start["ev"] == "start" and start["priority"]  # what it got, whatever it was
    # The unit's logic: its timer was due by the deadline, and it closed when the timer ran.
    assert trip["deadline_us"] == trip["last_valid_us"] + trip["watchdog_ms"] * 1000
    assert trip["due_us"] is not None and trip["due_us"] <= trip["deadline_us"]
    assert trip["ran_us"] == trip["closed_us"]
    assert trip["late_us"] == trip["ran_us"] - trip["due_us"]
    assert trip["closed_us"] - trip["deadline_us"] <= trip["late_us"] + 1000
    counters = [r for r in records if r["ev"] == "counters"][-1]
    assert counters["timer"]["late_max_us"] >= trip["late_us"]
    # The campaign's judge: the closure is right for the unit, and the lateness is the host's,
    # judged apart: a stall over MAX_TIMER_LATE_MS is too busy a machine to judge at all.
    ev = _emulator_evidence(
        records,
        [],
        Row(id="E99", unit="emulator", fault="stall", expect="killed", expected="x", onset="link"),
    )
    assert ev.timer_late_ms == trip["late_us"] / 1000
    why = judge_closure(ev, 251.0)
    if ev.timer_late_ms > MAX_TIMER_LATE_MS:
        assert len(why) == 1 and "too busy a machine to judge the unit" in why[0]
    else:
        assert why == []


def test_priority_is_raised_where_allowed_and_given_back():
    before = (os.sched_getscheduler(0), os.getpriority(os.PRIO_PROCESS, 0))
    with raised_priority(10) as got:
        assert got == "SCHED_FIFO 10" or got.startswith(("nice ", "normal ("))
        if got == "SCHED_FIFO 10":
            assert os.sched_getscheduler(0) == os.SCHED_FIFO
    assert (os.sched_getscheduler(0), os.getpriority(os.PRIO_PROCESS, 0)) == before


def test_priority_not_allowed_is_said_not_raised(monkeypatch):
    def refuse(*_a):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "sched_setscheduler", refuse)
    monkeypatch.setattr(os, "setpriority", refuse)
    got = raise_priority(10)
    assert got == (
        "normal (SCHED_FIFO: Operation not permitted; nice: Operation not permitted)"
    ) or got.startswith("nice ")  # already at or below -10


def test_priority_of_another_process_reaches_every_thread():
    """A thread left at normal priority can be preempted holding the GIL and stall the raised
    one (the fault proxy's log writer did, 313 ms on a loaded machine): every thread is raised."""
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, threading; e = threading.Event();"
            "threading.Thread(target=e.wait, daemon=True).start();"
            "print('ready', flush=True); sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout.readline().strip() == "ready"
        tids = [int(t) for t in os.listdir(f"/proc/{child.pid}/task")]
        assert len(tids) == 2
        main = raise_priority(10, pid=child.pid, main_thread_only=True)  # as for QEMU's I/O loop
        if main == "SCHED_FIFO 10":
            policies = {t: os.sched_getscheduler(t) for t in tids}
            assert policies.pop(child.pid) == os.SCHED_FIFO
            assert list(policies.values()) == [os.SCHED_OTHER]
        got = raise_priority(10, pid=child.pid)
        if got == "SCHED_FIFO 10":
            assert [os.sched_getscheduler(t) for t in tids] == [os.SCHED_FIFO] * 2
        elif got.startswith("nice "):
            assert {os.getpriority(os.PRIO_PROCESS, t) for t in tids} == {int(got.split()[1])}
        else:
            assert got.startswith("normal (")
    finally:
        child.stdin.close()
        child.wait()
