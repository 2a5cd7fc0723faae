"""A fault-injecting proxy in front of any propulsion unit: the emulator's link faults for the
QEMU firmware or a real board, and a bus analyser's record of what crossed the line.

Run it as ``python -m thruster_hil.firmware_bridge.faultproxy --upstream URL [--faults SPEC] [--log
PATH] [--baudrate N] [--parent-fd FD]``. It opens the unit's port (``serial.serial_for_url``,
exclusively, like every host), opens a raw pty pair, prints the pty's slave path as its first stdout
line and serves until SIGTERM/SIGINT (exit 0), until ``--parent-fd`` reads end-of-file (the process
that started it is gone: exit 0), or until the unit's port goes away (exit 3). A host opens the pty
as if it were the unit.

Whole frames (split on the 0x00 delimiter) cross it both ways through
:class:`~thruster_hil.firmware_bridge.faults.LinkFaults` with ``--faults`` (the grammar of
:mod:`thruster_hil.firmware_bridge.faults`): drops, corruption, duplicates, delays and cuts, per
direction (``rx``: host to unit, ``tx``: unit to host). The unit faults of the spec (stall, reset,
fail, stuck, clear, pressure) go to the unit as FAULT_INJECT frames without an ACK request (the unit
must be a test build; it tells the host with its FAULT_INJECTED event) with the host's session token
(the proxy reads the line: the last HELLO_ACK ACCEPTED it passed on), written before the host frame
that made them due, so ``fail=3@step40`` fails channel 3 before FIRE 40 reaches the unit. Injected
frames never pass through the link faults, and nothing the proxy does is a host action: it never
sends STOP_ALL, never arms, never answers for the unit.

While the link is cut, or while no host has the pty open, the proxy still reads what the unit
sends, so its log keeps the unit's side of the story (watchdog trips, SAFE transitions, HK).

``--log PATH``: JSON lines, written and flushed by a thread of their own (the forwarding loop
never waits for the disk), in order, all of them by the time the proxy exits. The first is
``{"ev": "start", "t_us": 0, "t0_monotonic_us": ..., "upstream": ..., "port": ..., "faults":
...}`` (``t_us`` everywhere is
microseconds since the proxy started; ``t0_monotonic_us`` is CLOCK_MONOTONIC then, so records of
other processes on the machine line up). Then one per frame: ``{"t_us", "dir": "h2u"|"u2h",
"act", "msg", "seq", "flags", ...fields}`` where ``act`` is ``fwd`` (passed on), ``drop``,
``cut`` (lost to a cut), ``corrupt`` (passed on with a byte flipped: the fields logged are the
original's), ``dup`` (passed on twice), ``delay`` (held until ``due_us``), ``late`` (a held frame
passed on: the same frame as its ``delay`` record; ``"nohost": true`` when no host had the pty
open by then, so it was lost), ``nohost`` (from the unit while no host had the pty open: lost)
or ``inject`` (a FAULT_INJECT of the proxy's own); ``msg`` is the message name, or ``!kind``
for bytes that do not decode (``!crc``, ``!cobs``, ...). Also ``{"ev": "fault", "t_us", "fault",
"step"}`` when a scheduled fault applies, ``connect`` / ``disconnect`` of the host, and ``stop``
(reason, counts).
"""

from __future__ import annotations

import argparse
import errno
import heapq
import json
import os
import queue
import select
import sys
import threading
import time
from typing import IO

import serial
from thruster_hil.firmware_bridge.codec import ProtocolError, decode_frame, encode_fields
from thruster_hil.firmware_bridge.dictionary import MESSAGES
from thruster_hil.firmware_bridge.emulator import (
    PtyServiceProcess,
    open_raw_pty,
    signal_wakeup,
    split_frames,
)
from thruster_hil.firmware_bridge.faults import LinkFaults, parse_faults

from thruster_hil.core.errors import OneLineParser, UserError
from thruster_hil.core.textnum import whole_number

PROG = "thruster_hil.firmware_bridge.faultproxy"
#: Sequence counts of the proxy's own FAULT_INJECT frames start here (the host's are far below
#: this for any burn; the unit only counts a gap).
_INJECT_SEQ0 = 0x3F00
_HUP_POLL_S = 0.005
_LATE_LOG_S = 0.020  # a wake-up this late is logged (ev "late"): the proxy itself was held off
_HELLO_ACK_ID = bytes([MESSAGES["HELLO_ACK"].id])


class ProxyError(RuntimeError):
    """The proxy process did not start (or died before printing its port)."""


def describe(frame: bytes) -> dict:
    """The log fields of one frame (delimiter included or not): its message name, sequence
    count, header flags and fields, or ``{"msg": "!kind"}`` when it does not decode."""
    body = frame[:-1] if frame.endswith(b"\x00") else frame
    if not body:
        return {"msg": "!empty"}
    try:
        m = decode_frame(body)
    except ProtocolError as err:
        return {"msg": f"!{err.kind}"}
    rec = {"msg": m.name, "seq": m.seq, "flags": m.flags}
    for k, v in m.fields.items():
        rec[k] = list(v) if isinstance(v, tuple) else v
    return rec


#: Bytes the line may carry to the unit in one go when paced (``--line-rate``): a short burst,
#: well inside the firmware's 256-byte receive ring.
LINE_BURST_BYTES = 16


class LineWriter:
    """The log's lines written by a thread of their own, each flushed as soon as that thread
    gets to it: the forwarding loop never waits for the disk. On a loaded machine a write to
    the log file can wait hundreds of milliseconds for the kernel's writeback workers, which
    run at normal priority behind the CPU-bound processes; the proxy's own SCHED_FIFO
    priority does not help then. The lines stay in order; :meth:`close` writes what is queued
    and closes the file."""

    def __init__(self, file: IO[str]):
        self.file = file
        self._q: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="proxy-log", daemon=True)
        self._thread.start()

    def write(self, line: str) -> None:
        self._q.put(line)

    def flush(self) -> None:
        """Nothing to do here: the writer thread flushes every batch it writes."""

    def _run(self) -> None:
        while True:
            line = self._q.get()
            batch = []
            while line is not None:
                batch.append(line)
                try:
                    line = self._q.get_nowait()
                except queue.Empty:
                    break
            if batch:
                self.file.write("".join(batch))
                self.file.flush()
            if line is None:
                return

    def close(self) -> None:
        self._q.put(None)
        self._thread.join()
        self.file.close()


class FaultProxy:
    """The proxy's I/O loop (one thread, ``select()``), used by :func:`main`."""

    def __init__(
        self,
        upstream,
        faults: LinkFaults,
        log: IO[str] | None = None,
        line_rate_Bps: float | None = None,
    ):
        self.up = upstream  # an open pyserial port with a file descriptor
        # Bytes towards the unit are paced at the line's rate when set (see _flush_unit).
        self.line_rate_Bps = line_rate_Bps
        self._credit = float(LINE_BURST_BYTES)
        self._credit_t = time.monotonic()
        self.up_fd = upstream.fileno()
        self.faults = faults
        self.log = log
        self.master = -1
        self.path = ""
        self.connected = False
        self.stop_reason: str | None = None
        self._t0 = time.monotonic_ns()
        self._partial = {"rx": bytearray(), "tx": bytearray()}
        self._to_host = bytearray()
        self._to_unit = bytearray()
        self._delayed: list[tuple[int, int, str, bytes]] = []
        self._n = 0
        self._inject_seq = _INJECT_SEQ0
        self._session = 0  # the host's token, from the HELLO_ACKs passed on (FAULT_INJECT's)
        self._first_fire_us: int | None = None
        self.counts = {"h2u": 0, "u2h": 0, "injected": 0, "nohost": 0}
        self.late_max_s = 0.0  # the worst a select() timeout returned late: this process's CPU

    def now(self) -> int:
        return (time.monotonic_ns() - self._t0) // 1000

    def open_pty(self) -> str:
        self.master, self.path = open_raw_pty()
        return self.path

    def _write_log(self, rec: dict) -> None:
        if self.log is not None:
            self.log.write(json.dumps(rec, separators=(",", ":")) + "\n")
            self.log.flush()

    def _log_frame(self, now: int, direction: str, act: str, frame: bytes, **extra) -> None:
        if self.log is not None:
            self._write_log({"t_us": now, "dir": direction, "act": act, **describe(frame), **extra})

    # ---------------------------------------------------------------- host side

    def _host_present(self) -> bool:
        p = select.poll()
        p.register(self.master, select.POLLIN | select.POLLHUP)
        return not any(ev & select.POLLHUP for _, ev in p.poll(0))

    def _check_host(self, now: int) -> None:
        present = self._host_present()
        if present and not self.connected:
            self.connected = True
            self._write_log({"t_us": now, "ev": "connect"})
        elif not present and self.connected:
            self.connected = False
            self._to_host.clear()
            self._partial["rx"].clear()
            self._write_log({"t_us": now, "ev": "disconnect"})

    def _send_host(self, frame: bytes) -> None:
        self._to_host += frame
        self._flush_host()

    def _flush_host(self) -> None:
        while self._to_host and self.connected:
            try:
                n = os.write(self.master, self._to_host)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno == errno.EIO:
                    self.connected = False
                    self._to_host.clear()
                    return
                raise
            del self._to_host[:n]

    # ---------------------------------------------------------------- unit side

    def _send_unit(self, frame: bytes) -> None:
        self._to_unit += frame
        self._flush_unit()

    def _refill(self) -> int:
        """Bytes the line may carry to the unit now (all of them without ``--line-rate``)."""
        if self.line_rate_Bps is None:
            return len(self._to_unit)
        t = time.monotonic()
        self._credit = min(
            float(LINE_BURST_BYTES), self._credit + (t - self._credit_t) * self.line_rate_Bps
        )
        self._credit_t = t
        return int(self._credit)

    def _line_wait_s(self) -> float | None:
        """How long until the line may carry the next byte to the unit (None: nothing waits)."""
        if not self._to_unit:
            return None
        if self.line_rate_Bps is None or self._refill() >= 1:
            return 0.0
        return (1.0 - self._credit) / self.line_rate_Bps

    def _flush_unit(self) -> None:
        """Write what waits for the unit without blocking (pyserial opens the port
        non-blocking). A unit that reads slowly (QEMU on a loaded machine takes its UART bytes
        one at a time) must not stall the proxy: a blocking write held the host's frames and
        the unit's reports for half a second while the unit's watchdog ran.

        With ``line_rate_Bps`` the bytes go out no faster than a serial line carries them (8N1:
        a tenth of the baud rate, in bursts of at most LINE_BURST_BYTES). A real board's UART
        receives at the line rate; QEMU's has no baud rate and takes a burst as fast as its
        interrupt runs, more than the firmware's 256-byte receive ring holds when the main
        loop is descheduled on a loaded machine (uart_overruns in its HK)."""
        while self._to_unit:
            allowed = self._refill()
            if allowed < 1:
                return
            try:
                n = os.write(self.up_fd, self._to_unit[:allowed])
            except BlockingIOError:
                return
            except OSError as exc:
                self._to_unit.clear()
                self.stop_reason = f"unit port lost: {exc.strerror}"
                return
            del self._to_unit[:n]
            if self.line_rate_Bps is not None:
                self._credit -= n

    def _drain_unit(self, within_s: float = 1.0) -> None:
        """On the way out: what the host sent last (its STOP_ALL) still reaches the unit, if
        the unit takes it within ``within_s``."""
        end = time.monotonic() + within_s
        while self._to_unit and self.stop_reason is None:
            left = end - time.monotonic()
            if left <= 0:
                return
            wait = self._line_wait_s() or 0.0
            if wait > 0:
                select.select([], [], [], min(wait, left))
            elif not select.select([], [self.up_fd], [], left)[1]:
                return
            self._flush_unit()

    def _apply_due(self, now: int) -> None:
        """Scheduled faults that are due: unit faults as FAULT_INJECT frames, cuts in place."""
        f = self.faults
        before = len(f.applied)
        for kind, arg in f.due_unit_faults(now, self._first_fire_us):
            frame = encode_fields(
                "FAULT_INJECT",
                self._inject_seq,
                0,
                {"session": self._session, "fault": kind, "arg": arg},
            )
            self._inject_seq = self._inject_seq + 1 if self._inject_seq < 0x3FFF else _INJECT_SEQ0
            self.counts["injected"] += 1
            self._log_frame(now, "h2u", "inject", frame)
            self._send_unit(frame)
        for rec in f.applied[before:]:
            self._write_log({"ev": "fault", **rec})

    # ---------------------------------------------------------------- frames

    def _pass(self, direction: str, frame: bytes, now: int) -> None:
        """One whole frame through the link faults, logged, on to the other side."""
        key = "h2u" if direction == "rx" else "u2h"
        self.counts[key] += 1
        out = self.faults.process(direction, frame, now)
        act = self.faults.last_action
        if direction == "tx" and not self.connected and act not in ("cut", "drop"):
            act = "nohost"
            self.counts["nohost"] += 1
            self._log_frame(now, key, act, frame)
            return
        extra = {"due_us": out[0][0]} if act == "delay" else {}
        self._log_frame(now, key, act, frame, **extra)
        for due, fr in out:
            if due > now:
                self._n += 1
                heapq.heappush(self._delayed, (due, self._n, direction, fr))
            elif direction == "rx":
                self._send_unit(fr)
            else:
                self._send_host(fr)

    def _on_host_bytes(self, data: bytes, now: int) -> None:
        for frame in split_frames(self._partial["rx"], data):
            f = self.faults
            if f.spec.by_step:
                f.note_rx(frame)
            if self._first_fire_us is None and describe(frame).get("msg") == "FIRE":
                self._first_fire_us = now
            self._apply_due(now)
            self._pass("rx", frame, now)

    def _on_unit_bytes(self, data: bytes, now: int) -> None:
        for frame in split_frames(self._partial["tx"], data):
            # COBS keeps non-zero bytes as they are: a frame without HELLO_ACK's id byte
            # cannot be one, and most (HK, reports) are not decoded twice.
            if _HELLO_ACK_ID in frame:
                d = describe(frame)
                if d.get("msg") == "HELLO_ACK" and d.get("result") == 0:
                    self._session = d["session"]
            self._pass("tx", frame, now)

    def _release_delayed(self, now: int) -> None:
        while self._delayed and self._delayed[0][0] <= now:
            _, _, direction, frame = heapq.heappop(self._delayed)
            key = "h2u" if direction == "rx" else "u2h"
            if direction == "tx" and not self.connected:
                # Still "late": the frame is its "delay" record's, not one more from the unit
                # (a report held past the host's exit is not a second execution).
                self.counts["nohost"] += 1
                self._log_frame(now, key, "late", frame, nohost=True)
                continue
            self._log_frame(now, key, "late", frame)
            if direction == "rx":
                self._send_unit(frame)
            else:
                self._send_host(frame)

    def _timeout_s(self, now: int) -> float:
        times = []
        if self._delayed:
            times.append(self._delayed[0][0])
        t = self.faults.next_unit_fault_us(self._first_fire_us)
        if t is not None:
            times.append(t)
        cut = self.faults.cut_until_us
        if cut is not None and cut >= 0:
            times.append(cut)
        wait = min(times) - now if times else 1_000_000
        wait_s = max(0.0, wait / 1e6)
        line = self._line_wait_s()
        if line:
            wait_s = min(wait_s, line)
        return min(wait_s, _HUP_POLL_S) if not self.connected else wait_s

    # ---------------------------------------------------------------- loop

    def serve(self, parent_fd: int | None = None) -> int:
        stop: list[int] = []
        status = 0
        with signal_wakeup(lambda signum, frame: stop.append(signum)) as wake_r:
            while not stop:
                now = self.now()
                self._check_host(now)
                self._release_delayed(now)
                self._apply_due(now)
                rlist = [wake_r, self.up_fd] + ([self.master] if self.connected else [])
                if parent_fd is not None:
                    rlist.append(parent_fd)
                wlist = [self.master] if self._to_host and self.connected else []
                if self._line_wait_s() == 0.0:
                    wlist.append(self.up_fd)
                timeout = self._timeout_s(self.now())
                asked = time.monotonic() + timeout
                r, w, _ = select.select(rlist, wlist, [], timeout)
                if not (r or w):  # a timeout: how late did this process get the CPU back?
                    late = time.monotonic() - asked
                    if late > self.late_max_s:
                        self.late_max_s = late
                    if late >= _LATE_LOG_S:
                        self._write_log(
                            {"t_us": self.now(), "ev": "late", "late_ms": round(late * 1e3, 1)}
                        )
                if stop:
                    break
                if parent_fd is not None and parent_fd in r and not os.read(parent_fd, 1):
                    self.stop_reason = "parent exited"
                    break
                if self.up_fd in r:
                    try:
                        data = os.read(self.up_fd, 4096)
                    except BlockingIOError:
                        data = b""
                    except OSError as exc:
                        data = None
                        self.stop_reason = f"unit port lost: {exc.strerror}"
                    if data is None or (data == b"" and not _readable_later(self.up_fd)):
                        self.stop_reason = self.stop_reason or "unit port closed"
                        status = 3
                        break
                    if data:
                        self._on_unit_bytes(data, self.now())
                if self.connected and self.master in r:
                    try:
                        data = os.read(self.master, 4096)
                    except BlockingIOError:
                        data = b""
                    except OSError as exc:
                        if exc.errno != errno.EIO:
                            raise
                        data = b""
                    if data:
                        self._on_host_bytes(data, self.now())
                    else:
                        self._check_host(self.now())
                if self._to_host:
                    self._flush_host()
                if self._to_unit:
                    self._flush_unit()
                if self.stop_reason is not None:
                    status = 3
                    break
            self._drain_unit()
            self._write_log(
                {
                    "t_us": self.now(),
                    "ev": "stop",
                    "reason": self.stop_reason or f"signal {stop[0]}",
                    "counts": self.counts,
                    "link": self.faults.counts,
                    "late_max_ms": round(self.late_max_s * 1e3, 1),
                }
            )
            return status


def _readable_later(fd: int) -> bool:
    """A zero-byte read from a tty that select() called readable: hang-up (False) or not."""
    p = select.poll()
    p.register(fd, select.POLLIN | select.POLLHUP)
    return not any(ev & (select.POLLHUP | select.POLLERR) for _, ev in p.poll(0))


# -------------------------------------------------------------------- command line


def _parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog=f"python -m {PROG}",
        description="A fault-injecting proxy between a host and a propulsion unit: prints the "
        "pty the host opens instead of the unit.",
    )
    p.add_argument(
        "--upstream",
        required=True,
        metavar="URL",
        help="the unit's port (a device, a pty, any pyserial URL with a descriptor)",
    )
    p.add_argument(
        "--faults",
        default=None,
        metavar="SPEC",
        help="link and unit faults (the grammar of firmware_bridge/faults.py)",
    )
    p.add_argument("--log", default=None, metavar="PATH", help="JSON lines: every frame")
    p.add_argument("--baudrate", type=whole_number(1, 4_000_000), default=115200)
    p.add_argument(
        "--line-rate",
        action="store_true",
        help="pace the bytes to the unit at the baud rate (8N1), as a serial line carries "
        "them: for a unit whose UART has no baud rate (qemu-system-avr)",
    )
    p.add_argument(
        "--channels", type=whole_number(1, 32), default=32, help="valve channels of the unit, 1..32"
    )
    p.add_argument(
        "--parent-fd",
        type=whole_number(0, 2**31 - 1),
        default=None,
        help="exit when this pipe reads end-of-file (the starting process died)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
        spec = parse_faults(args.faults, args.channels)
        try:
            up = serial.serial_for_url(
                args.upstream, baudrate=args.baudrate, timeout=0, exclusive=True
            )
        except (serial.SerialException, OSError, ValueError) as exc:
            raise UserError(
                "--upstream", f"cannot open {args.upstream}: {' '.join(str(exc).split())}"
            ) from None
        try:
            up.fileno()
        except Exception:  # noqa: BLE001 -- pyserial raises several kinds for "no descriptor"
            up.close()
            raise UserError(
                "--upstream",
                f"{args.upstream} has no file descriptor to select() "
                f"on (use a device path or a pty)",
            ) from None
        try:
            log = LineWriter(open(args.log, "w", encoding="utf-8")) if args.log else None  # noqa: SIM115
        except OSError as exc:
            up.close()
            raise UserError("--log", f"cannot open {args.log}: {exc.strerror}") from None
    except UserError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return err.exit_code
    rate = args.baudrate / 10.0 if args.line_rate else None
    proxy = FaultProxy(up, LinkFaults(spec, args.channels), log, line_rate_Bps=rate)
    path = proxy.open_pty()
    proxy._write_log(
        {
            "t_us": 0,
            "ev": "start",
            "t0_monotonic_us": proxy._t0 // 1000,
            "upstream": args.upstream,
            "port": path,
            "pid": os.getpid(),
            "faults": spec.text,
        }
    )
    print(path, flush=True)
    try:
        status = proxy.serve(parent_fd=args.parent_fd)
        if status:
            print(f"{PROG}: error: {proxy.stop_reason}", file=sys.stderr)
        return status
    finally:
        if log is not None:
            log.close()
        os.close(proxy.master)
        up.close()


class FaultProxyProcess(PtyServiceProcess):
    """The proxy as a subprocess::

    with EmulatorProcess() as emu, FaultProxyProcess(emu.port, "cut@step40") as proxy:
        unit = open_unit(unit="emulator", port=proxy.port, ...)
    """

    module = PROG
    error = ProxyError

    def __init__(
        self,
        upstream: str,
        faults: str | None = None,
        log_path: str | os.PathLike | None = None,
        channels: int = 32,
        start_timeout: float = 10.0,
        line_rate: bool = False,
    ):
        args = ["--upstream", upstream, "--channels", str(channels)]
        if line_rate:
            args.append("--line-rate")
        if faults:
            args += ["--faults", faults]
        if log_path is not None:
            args += ["--log", os.fspath(log_path)]
        super().__init__(args, start_timeout)


if __name__ == "__main__":
    sys.exit(main())
