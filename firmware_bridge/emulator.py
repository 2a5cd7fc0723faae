"""The propulsion-unit emulator: :class:`~thruster_hil.firmware_bridge.unit.UnitCore` on a
pseudo-terminal.

Run it as ``python -m thruster_hil.firmware_bridge.emulator [--faults SPEC] [--channels N]
[--log PATH] [--link-path PATH] [--seed N] [--no-auto-reset] [--boot-delay-ms MS]
[--mode-hint MODE]``. It opens a pty pair (both ends raw at once), prints the slave path as the
first stdout line (or writes it to ``--link-path``) and serves until SIGTERM/SIGINT, which close
the valves and exit 0.
``--parent-fd FD`` names the read end of a pipe whose write end only the starting process holds
(:class:`EmulatorProcess` passes one): when it reads end-of-file that process is gone, even killed
with SIGKILL, and the emulator closes the valves and exits 0 too, rather than serving an orphaned
pty for ever.

Like a Mega 2560 whose USB port resets the board when opened, the unit boots (BOOT, reset cause
POWER_ON, boot count 1) when a host first opens the port, and resets (reset cause EXTERNAL,
boot count + 1) at every later open, ``--boot-delay-ms`` (default 100 ms, the bootloader) after
the open; pyserial flushes the input at open, so a BOOT sent earlier would be lost.
``--no-auto-reset`` boots once at start and never resets on open (a board without auto-reset).
While no host has the port open, the unit keeps running (its watchdog closes the valves) and
what it sends is lost.

One thread: ``select()`` on the pty master and a signal pipe, with the timeout of the earliest of
the unit's next deadline, the fault delay queues and the next scheduled fault. The clock is
``time.monotonic_ns() // 1000`` since start (the unit's ``pu_time_us``).

``--log PATH`` writes JSON lines, flushed per line, each with ``t_us`` (the emulator clock):
``start`` (port, channels, faults, pid, and ``t0_monotonic_us``: CLOCK_MONOTONIC at t_us 0,
to line this log up with other processes' records), ``connect`` / ``disconnect`` (host
opened/closed the port), ``boot`` (boot_count, reset_cause), ``state`` (from, to, reason),
``fire`` (session, step, bank, mode, t_start_us, executed [16 ticks], flags, aborted),
``watchdog_trip`` (last_valid_us, closed_us, since_valid_ms, watchdog_ms, and the timer's own
record: deadline_us, due_us, ran_us, late_us, below), ``fault`` (kind, arg, source
wire|schedule), ``lockout`` (session_errors, msg_id: the unit voided the session after that many
wrong tokens), ``link_cut`` (step, until_us: null for good), ``counters`` (unit, link, io,
timer; every second and at exit) and ``stop`` (signal).

Timer lateness, as an RTOS reports overruns. The loop asks select() to wake it when the unit's
next timer is due (``due_us``); on a loaded machine the process may get the CPU back only later.
Each time the timers run the loop knows when they were due and when they actually ran
(``ran_us``): ``late_us = ran_us - due_us`` is the host's scheduling, not the unit's logic. A
watchdog trip carries them, with its ``deadline_us`` (last valid frame + watchdog time): the unit
closed on time if its timer was due no later than the deadline and it closed when the timer ran
(closed_us - deadline_us <= late_us + 1 tick). ``counters`` carries ``timer``: runs, how many
ran over a tick late, and the worst lateness. To keep it small the emulator raises its own
priority where allowed (firmware_bridge/priority.py: SCHED_FIFO 20, else nice -10); the start
record says what it got (``priority``).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import heapq
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
import tty
from typing import IO

from thruster_hil.firmware_bridge.faults import LinkFaults, parse_faults
from thruster_hil.firmware_bridge.priority import UNIT_FIFO, raise_priority
from thruster_hil.firmware_bridge.unit import RESET_CAUSE, UnitCore

from thruster_hil.core.errors import OneLineParser, UserError
from thruster_hil.core.textnum import show, whole_number

PROG = "thruster_hil.firmware_bridge.emulator"
_OUT_LIMIT = 1 << 16
_HUP_POLL_US = 5_000
_COUNTERS_EVERY_US = 1_000_000


def split_frames(buf: bytearray, data: bytes) -> list[bytes]:
    """Append ``data`` to ``buf`` and take out the whole frames (delimiter included)."""
    buf += data
    frames = []
    while True:
        i = buf.find(b"\x00")
        if i < 0:
            return frames
        frames.append(bytes(buf[: i + 1]))
        del buf[: i + 1]


@contextlib.contextmanager
def signal_wakeup(handler):
    """SIGTERM and SIGINT go to ``handler`` and wake a select() on the fd this yields."""
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    old_fd = signal.set_wakeup_fd(wake_w)
    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield wake_r
    finally:
        signal.set_wakeup_fd(old_fd)
        for s, h in old.items():
            signal.signal(s, h)
        os.close(wake_r)
        os.close(wake_w)


def open_raw_pty() -> tuple[int, str]:
    """A pty pair, both ends raw: (non-blocking master fd, slave path). The slave is closed
    again: the host opens it, and while nobody has it open the master reports HUP."""
    master, slave = os.openpty()
    tty.setraw(master)  # at once: a fresh pty is canonical with echo (anchors P-12)
    tty.setraw(slave)
    path = os.ttyname(slave)
    os.close(slave)
    os.set_blocking(master, False)
    return master, path


class Emulator:
    """The I/O wrapper around one :class:`UnitCore` (used by :func:`main`)."""

    def __init__(
        self,
        core: UnitCore,
        faults: LinkFaults | None = None,
        log: IO[str] | None = None,
        auto_reset: bool = True,
        boot_delay_us: int = 100_000,
    ):
        self.core = core
        active = faults is not None and (faults.spec.link_active or bool(faults.spec.schedule))
        self.faults = faults if active else None
        self.log = log
        self.auto_reset = auto_reset
        self.boot_delay_us = boot_delay_us
        self.master = -1
        self.path = ""
        self.connected = False
        self.stop_signal: int | None = None
        self.stop_reason: str | None = None
        self._t0 = time.monotonic_ns()
        self._reset_at: int | None = None
        self._out = bytearray()
        self._rx_partial = bytearray()
        self._tx_partial = bytearray()
        self._delayed: list[tuple[int, int, str, bytes]] = []  # (due, n, direction, frame)
        self._n = 0
        self._first_fire_us: int | None = None
        self._next_counters = _COUNTERS_EVERY_US
        self._timer_due = 0  # when the timers last asked to run (emulator us)
        self._timer_ran = 0  # ... and when they ran
        self.timer = {"runs": 0, "late_over_tick": 0, "late_max_us": 0}
        self.io = {
            "rx_bytes": 0,
            "tx_bytes": 0,
            "tx_lost_disconnected": 0,
            "tx_overflow": 0,
            "connects": 0,
            "disconnects": 0,
        }

    def now(self) -> int:
        return (time.monotonic_ns() - self._t0) // 1000

    # ---------------------------------------------------------------- pty

    def open_pty(self) -> str:
        self.master, self.path = open_raw_pty()
        return self.path

    def _host_present(self) -> bool:
        p = select.poll()
        p.register(self.master, select.POLLIN | select.POLLHUP)
        return not any(ev & select.POLLHUP for _, ev in p.poll(0))

    # ---------------------------------------------------------------- output

    def _write_log(self, record: dict) -> None:
        if self.log is not None:
            self.log.write(json.dumps(record, separators=(",", ":")) + "\n")
            self.log.flush()

    def _drain_journal(self) -> None:
        j = self.core.journal
        if not j:
            return
        if self.log is None and self._first_fire_us is not None:
            j.clear()  # nothing to write, nothing more to learn from it
            return
        for rec in j:
            if rec.get("ev") == "fire" and self._first_fire_us is None:
                self._first_fire_us = rec["t_start_us"]
            if rec.get("ev") == "watchdog_trip":
                rec = {**rec, **self._timer_record(rec)}
            self._write_log(rec)
        j.clear()

    def send(self, data: bytes, now: int) -> None:
        if not data:
            return
        if self.faults is None or not self.faults.spec.link_active:
            self._queue_out(data)
            return
        for frame in split_frames(self._tx_partial, data):
            for due, f in self.faults.process("tx", frame, now):
                if due <= now:
                    self._queue_out(f)
                else:
                    self._delay(due, "tx", f)

    def _delay(self, due: int, direction: str, frame: bytes) -> None:
        self._n += 1
        heapq.heappush(self._delayed, (due, self._n, direction, frame))

    def _queue_out(self, data: bytes) -> None:
        if not self.connected:
            self.io["tx_lost_disconnected"] += len(data)
            return
        if len(self._out) + len(data) > _OUT_LIMIT:
            self.io["tx_overflow"] += len(data)
            return
        self._out += data

    def _flush(self) -> None:
        while self._out and self.connected:
            try:
                n = os.write(self.master, self._out)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno == errno.EIO:
                    self._disconnected()
                    return
                raise
            self.io["tx_bytes"] += n
            del self._out[:n]

    # ---------------------------------------------------------------- input

    def _on_rx(self, data: bytes, now: int) -> None:
        self.io["rx_bytes"] += len(data)
        faults = self.faults
        if faults is None or not (faults.spec.link_active or faults.spec.by_step):
            self.send(self.core.receive(data, now), now)
            return
        for frame in split_frames(self._rx_partial, data):
            if faults.spec.by_step:
                faults.note_rx(frame)  # a fault due at this frame's step applies before it
                self._apply_due_faults(now)
            if not faults.spec.link_active:
                self.send(self.core.receive(frame, now), now)
                continue
            for due, f in faults.process("rx", frame, now):
                if due <= now:
                    self.send(self.core.receive(f, now), now)
                else:
                    self._delay(due, "rx", f)

    def _apply_due_faults(self, now: int) -> None:
        faults = self.faults
        cut_before = faults.cut_from_us
        for kind, arg in faults.due_unit_faults(now, self._first_fire_us):
            self.send(self.core.inject_fault(kind, arg, now, source="schedule"), now)
        if faults.cut_from_us is not None and faults.cut_from_us != cut_before:
            until = faults.cut_until_us
            self._write_log(
                {
                    "t_us": now,
                    "ev": "link_cut",
                    "step": faults.step,
                    "until_us": None if until is None or until < 0 else until,
                }
            )

    def _connected(self, now: int) -> None:
        self.connected = True
        self.io["connects"] += 1
        self._write_log({"t_us": now, "ev": "connect"})
        if self.auto_reset:
            self._reset_at = now + self.boot_delay_us

    def _disconnected(self) -> None:
        if self.connected:
            self.connected = False
            self.io["disconnects"] += 1
            self._out.clear()
            self._rx_partial.clear()
            self._write_log({"t_us": self.now(), "ev": "disconnect"})

    # ---------------------------------------------------------------- timer lateness

    def _timer_ran_at(self, due: int, now: int) -> None:
        """The timers, due at ``due``, run at ``now``: count how late the host let them run."""
        if due <= 0:
            due = now  # a run the loop forced (start, a host gone): no timer was waiting
        late = max(0, now - due)
        self._timer_due, self._timer_ran = due, now
        t = self.timer
        t["runs"] += 1
        t["late_over_tick"] += late > 1000
        t["late_max_us"] = max(t["late_max_us"], late)

    def _timer_record(self, trip: dict) -> dict:
        """A watchdog trip's timing: its deadline, when the timers were due and when they ran
        (the run that closed the valves, at ``closed_us``)."""
        deadline = trip["last_valid_us"] + trip["watchdog_ms"] * 1000
        if self._timer_ran != trip["closed_us"]:  # closed by a frame's arrival, not a timer
            return {
                "deadline_us": deadline,
                "due_us": None,
                "ran_us": trip["closed_us"],
                "late_us": None,
            }
        return {
            "deadline_us": deadline,
            "due_us": self._timer_due,
            "ran_us": self._timer_ran,
            "late_us": max(0, self._timer_ran - self._timer_due),
        }

    # ---------------------------------------------------------------- loop

    def _counters(self, now: int) -> dict:
        return {
            "t_us": now,
            "ev": "counters",
            "unit": dict(self.core.counters),
            "timer": dict(self.timer),
            "link": self.faults.counts if self.faults else None,
            "scheduled": self.faults.applied if self.faults else [],
            "io": dict(self.io),
        }

    def _step(self, now: int) -> None:
        core = self.core
        if not self.connected and self._host_present():
            self._connected(now)
        if self._reset_at is not None and now >= self._reset_at:
            self._reset_at = None
            if core.state == 0:  # BOOT: never booted (no host yet)
                self.send(core.boot(now), now)
            else:
                self.send(core.reset(now, RESET_CAUSE["EXTERNAL"]), now)
        while self._delayed and self._delayed[0][0] <= now:
            _, _, direction, frame = heapq.heappop(self._delayed)
            if direction == "rx":
                self.send(core.receive(frame, now), now)
            else:
                self._queue_out(frame)
        if self.faults is not None:
            self._apply_due_faults(now)
        late = self._timer_ran - self._timer_due if self._timer_ran == now else 0
        self.send(core.tick(now, late), now)
        self._drain_journal()
        if now >= self._next_counters:
            self._write_log(self._counters(now))
            self._next_counters = now + _COUNTERS_EVERY_US

    def _due(self, now: int) -> int:
        """When _step must run next (emulator us): the earliest timer of the unit, a reset, a
        delayed frame, a scheduled fault, the counters record, or the next HUP poll."""
        unit = self.core.next_deadline_us()
        if (
            self._reset_at is None
            and not self._delayed
            and self.faults is None
            and self.connected
            and unit is not None
        ):  # (after every frame of a burn)
            return unit if unit < self._next_counters else self._next_counters
        times = [unit, self._reset_at, self._next_counters]
        if self._delayed:
            times.append(self._delayed[0][0])
        if self.faults is not None:
            times.append(self.faults.next_unit_fault_us(self._first_fire_us))
        if not self.connected:
            times.append(now + _HUP_POLL_US)
        return min(t for t in times if t is not None)

    def serve(self, parent_fd: int | None = None) -> int:
        """Serve until a signal arrives or ``parent_fd`` reads end-of-file (the process that
        started the emulator is gone). Returns the exit status (0)."""
        with signal_wakeup(self._on_signal) as wake_r:
            if not self.auto_reset:
                self.send(self.core.boot(self.now()), self.now())
            due = 0  # _step (timers, faults, connection) runs only when something is due
            # What select waits on, made once (it runs for every frame; it reads the lists).
            r_idle = [wake_r] + ([parent_fd] if parent_fd is not None else [])
            r_connected = r_idle + [self.master]
            w_pending, w_none = [self.master], []
            while self.stop_signal is None:
                now = self.now()
                if now >= due:
                    self._timer_ran_at(due, now)
                    self._step(now)
                    due = self._due(now)
                if self.connected:
                    rlist, wlist = r_connected, (w_pending if self._out else w_none)
                else:
                    rlist, wlist = r_idle, w_none
                r, w, _ = select.select(rlist, wlist, [], max(0.0, (due - self.now()) / 1e6))
                if self.stop_signal is not None:
                    break
                if parent_fd is not None and parent_fd in r and not os.read(parent_fd, 1):
                    self.stop_reason = "parent exited"
                    break
                if self.master in r:
                    try:
                        data = os.read(self.master, 4096)
                    except BlockingIOError:
                        data = b""
                    except OSError as exc:
                        if exc.errno != errno.EIO:
                            raise
                        self._disconnected()
                        data = b""
                    # The input's arrival time, read once: the timers that fell due before it
                    # run first (woken late, a loaded host or a stopped process), as the
                    # board's timer interrupt would have, with their lateness on record. (A
                    # time read before the read() could be stale by a whole descheduling,
                    # and the frame then found an overdue timer the loop had not run.)
                    now = self.now()
                    if now >= due:
                        self._timer_ran_at(due, now)
                        self._step(now)
                        due = self._due(now)
                    if data:
                        self._on_rx(data, now)
                    elif not self._host_present():
                        self._disconnected()
                    if self._out:
                        self._flush()  # answer first, then the bookkeeping
                    self._drain_journal()
                    due = min(due, self._due(self.now()))  # what the input scheduled
                    if not self.connected:
                        due = 0
                if self._out:
                    self._flush()
            now = self.now()
            self.send(self.core.stop_all(now), now)
            self._flush()
            self._drain_journal()
            self._write_log(self._counters(now))
            self._write_log(
                {
                    "t_us": now,
                    "ev": "stop",
                    "signal": self.stop_signal,
                    "reason": self.stop_reason or "signal",
                }
            )
            return 0

    def _on_signal(self, signum, frame) -> None:
        self.stop_signal = signum


# -------------------------------------------------------------------- command line


def _parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog=f"python -m {PROG}", description="Propulsion-unit emulator on a pseudo-terminal."
    )
    p.add_argument("--faults", default=None, help="link/unit fault spec (see faults.py)")
    p.add_argument("--channels", type=whole_number(1, 32), default=32, help="valve channels, 1..32")
    p.add_argument("--link-path", default=None, help="write the port path here, not stdout")
    p.add_argument("--log", default=None, help="JSON-lines record of what the unit did")
    p.add_argument(
        "--seed",
        type=whole_number(0, 2**63 - 1),
        default=None,
        help="the fault RNG's seed when --faults names none; never the session "
        "token, which is always fresh (docs/protocol.md section 3)",
    )
    p.add_argument("--min-on-ticks", type=whole_number(0, 1000), default=5)
    p.add_argument("--no-test-build", action="store_true", help="refuse FAULT_INJECT")
    p.add_argument(
        "--no-auto-reset",
        action="store_true",
        help="boot once at start, not when a host opens the port",
    )
    p.add_argument("--boot-delay-ms", type=whole_number(0, 10000), default=100)
    p.add_argument(
        "--mode-hint",
        choices=("lockstep", "realtime"),
        default=None,
        help="recorded in the log only: the mode comes from HELLO",
    )
    p.add_argument(
        "--parent-fd",
        type=whole_number(0, 2**31 - 1),
        default=None,
        help="exit when this pipe reads end-of-file (the starting process died)",
    )
    return p


def _check_parent_fd(fd: int | None) -> None:
    if fd is None:
        return
    try:
        os.fstat(fd)
    except OSError:
        raise UserError("--parent-fd", f"expected an open file descriptor, got {fd}") from None


def main(argv: list[str] | None = None) -> int:
    log = None
    try:
        args = _parser().parse_args(argv)
        _check_parent_fd(args.parent_fd)
        spec = parse_faults(args.faults, args.channels)
        if args.seed is not None and "seed=" not in (args.faults or ""):
            spec.seed = args.seed  # faults only: tokens and nonces never come from a seed
        if args.log:
            try:
                log = open(args.log, "w", encoding="utf-8")  # noqa: SIM115
            except (OSError, ValueError) as err:
                why = getattr(err, "strerror", None) or str(err)
                raise UserError("--log", f"cannot open {show(args.log)}: {why}") from None
    except UserError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return err.exit_code
    priority = raise_priority(UNIT_FIFO, reset_on_fork=True)
    core = UnitCore(
        n_channels=args.channels, test_build=not args.no_test_build, min_on_ticks=args.min_on_ticks
    )
    emu = Emulator(
        core,
        LinkFaults(spec, args.channels),
        log,
        auto_reset=not args.no_auto_reset,
        boot_delay_us=args.boot_delay_ms * 1000,
    )
    path = emu.open_pty()
    emu._write_log(
        {
            "t_us": emu.now(),
            "ev": "start",
            "port": path,
            "pid": os.getpid(),
            "t0_monotonic_us": emu._t0 // 1000,
            "priority": priority,
            "channels": args.channels,
            "faults": spec.text,
            "mode_hint": args.mode_hint,
        }
    )
    try:
        if args.link_path:
            tmp = f"{args.link_path}.tmp{os.getpid()}"
            try:
                with open(tmp, "w", encoding="utf-8") as f:
                    f.write(path + "\n")
                os.replace(tmp, args.link_path)
            except (OSError, ValueError) as err:
                why = getattr(err, "strerror", None) or str(err)
                bad = UserError("--link-path", f"cannot write {show(args.link_path)}: {why}")
                print(f"{PROG}: error: {bad}", file=sys.stderr)
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                return 2
        else:
            print(path, flush=True)
        return emu.serve(parent_fd=args.parent_fd)
    finally:
        if log is not None:
            log.close()
        os.close(emu.master)


# -------------------------------------------------------------------- Python API


class EmulatorError(RuntimeError):
    """The emulator process did not start (or died before printing its port)."""


class PtyServiceProcess:
    """A ``python -m MODULE ... --parent-fd FD`` service that prints its pty path as its first
    stdout line (the emulator, the fault proxy). ``start()`` waits for the path (``.port``);
    ``stop()`` ends it. The lifeline pipe makes it exit by itself when this process dies."""

    module = PROG
    error = EmulatorError

    def __init__(self, args: list[str], start_timeout: float = 10.0):
        self.args = list(args)
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen | None = None
        self.port: str = ""
        self._stderr: IO[bytes] | None = None
        self._lifeline: int | None = None

    def start(self):
        self._stderr = tempfile.TemporaryFile()
        # The lifeline: the child gets the read end; the write end stays here only (os.pipe
        # fds are not inheritable), so when this process dies, however, the child reads EOF.
        lifeline_r, self._lifeline = os.pipe()
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", self.module, *self.args, "--parent-fd", str(lifeline_r)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=self._stderr,
                pass_fds=(lifeline_r,),
            )
        finally:
            os.close(lifeline_r)
        fd = self.proc.stdout.fileno()
        buf = b""
        deadline = time.monotonic() + self.start_timeout
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0:
                self.stop()
                raise self.error(f"{self.module}: no port path within {self.start_timeout:g} s")
            r, _, _ = select.select([fd], [], [], left)
            if r:
                chunk = os.read(fd, 1024)
                if not chunk:
                    rc = self.proc.wait()
                    raise self.error(
                        f"{self.module} exited with status {rc} before printing "
                        f"its port: {self.stderr_text().strip() or '(no stderr)'}"
                    )
                buf += chunk
        self.port = buf.split(b"\n", 1)[0].decode().strip()
        return self

    def stderr_text(self) -> str:
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout`` s. Returns the exit status."""
        if self.proc is None:
            self._cut_lifeline()
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._cut_lifeline()
        return self.proc.returncode

    def _cut_lifeline(self) -> None:
        """Close our end of the lifeline: the service, if still running, exits on its own."""
        if self._lifeline is not None:
            os.close(self._lifeline)
            self._lifeline = None

    def close(self) -> None:
        self.stop()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def __enter__(self):
        if self.proc is None:
            self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class EmulatorProcess(PtyServiceProcess):
    """The emulator as a subprocess, for tests and the closed loop::

    with EmulatorProcess(faults="drop=0.01,seed=3", log_path="emu.jsonl") as emu:
        ser = serial.serial_for_url(emu.port, exclusive=True, timeout=0.5)
    """

    def __init__(
        self,
        faults: str | None = None,
        channels: int = 32,
        log_path: str | os.PathLike | None = None,
        seed: int | None = None,
        extra_args: tuple[str, ...] | list[str] = (),
        start_timeout: float = 10.0,
    ):
        args = ["--channels", str(channels)]
        if faults:
            args += ["--faults", faults]
        if log_path is not None:
            args += ["--log", os.fspath(log_path)]
        if seed is not None:
            args += ["--seed", str(seed)]
        super().__init__(args + list(extra_args), start_timeout)


def start_emulator(faults: str | None = None, channels: int = 32, **kw) -> EmulatorProcess:
    """Start an emulator subprocess and wait for its port (``.port``)."""
    return EmulatorProcess(faults=faults, channels=channels, **kw).start()


if __name__ == "__main__":
    sys.exit(main())
