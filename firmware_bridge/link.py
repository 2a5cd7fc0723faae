"""The host link: the thin driver that owns the serial port (docs/protocol.md section 7).

All protocol logic lives in the sans-IO :class:`thruster_hil.firmware_bridge.session.HostSession`
(sequence counts, reply matching, retries, connect, ARM, FIRE, heartbeats, foreign traffic,
statistics). A :class:`Link` opens one port with ``serial.serial_for_url(..., exclusive=True)``
(device path, pty path, ``hwgrep://``, ``loop://``) and runs every operation of the session on
the calling thread: write what the session queued, ``select`` on the port's descriptor until
input comes or the operation's next deadline (a resend, a heartbeat, a give-up), ``os.read``
what is there, feed it to the session, poll the operation. No reader thread: a LOCKSTEP cycle is
read -> decode -> step -> encode -> write on one thread, with no hand-over. A port without a
descriptor (``loop://``, ``spy://`` over one) is polled with ``read(in_waiting or 1)`` instead.

Between operations nobody reads the port: what the unit sends meanwhile (housekeeping, events)
waits in the OS buffer and is filed by the next operation.

Errors: :class:`thruster_hil.core.errors.UserError` for what an operator must fix (a port that
cannot be opened, a unit with another message dictionary, a parameter out of range);
:class:`LinkError` for runtime link failures (no reply after the retries, a refusing ACK, a
unit reset, a port that went away, another process reading the port). Both are one line.

The raw capture hook ``on_bytes(direction, t_ns, data)`` sees every chunk read ("rx") and every
write ("tx") with its host monotonic time in ns; it runs on the link's thread, so it must be
quick (queue the bytes, write them elsewhere).
"""

from __future__ import annotations

import errno
import os
import random
import select
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import serial
from thruster_hil.firmware_bridge.dictionary import RESULT
from thruster_hil.firmware_bridge.linkrules import (
    INITIAL_RETRY_TIMEOUT_S,
    MAX_RETRIES,
    PENDING,
    PING_BURST,
    REPORT_ABORTED,
    REPORT_CLAMPED,
    REPORT_DUPLICATE,
    FireResult,
    LinkError,
    LinkInfo,
    PingSample,
    Received,
    unit_clock_rate,
    unit_lost,
)
from thruster_hil.firmware_bridge.portwatch import other_readers, port_alive
from thruster_hil.firmware_bridge.session import HostSession, Op

from thruster_hil.core.errors import UserError

__all__ = [
    "FireResult",
    "Link",
    "LinkError",
    "LinkInfo",
    "PingSample",
    "Received",
    "MAX_RETRIES",
    "REPORT_ABORTED",
    "REPORT_CLAMPED",
    "REPORT_DUPLICATE",
    "unit_clock_rate",
    "unit_lost",
]


ACCEPTED = RESULT["ACCEPTED"]


def _open_error(url: str, exc: BaseException) -> UserError:
    """One operator line for a port that would not open."""
    code = getattr(exc, "errno", None)
    if code is None and exc.args and isinstance(exc.args[0], int):
        code = exc.args[0]
    detail = " ".join(str(exc).split())
    if isinstance(exc, ValueError):
        msg = (
            f"not a port path or a pyserial URL ({detail}); use e.g. /dev/ttyACM0, "
            "/dev/serial/by-id/..., hwgrep://VID:PID or loop://"
        )
    elif code in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EBUSY):
        msg = (
            "port is in use by another process (opened exclusively); close the other run "
            "or pick another port"
        )
    elif code in (errno.ENOENT, errno.ENODEV, errno.ENXIO):
        msg = (
            "no such port; check the cable and the path (ls /dev/serial/by-id/) or that "
            "the emulator is running"
        )
    elif code in (errno.EACCES, errno.EPERM):
        msg = (
            "permission denied opening the port; add your user to the 'dialout' group "
            "(then log in again) or check the device's permissions"
        )
    elif "no ports found" in detail.lower():
        msg = f"no serial port matches ({detail}); check the cable and the VID:PID"
    else:
        msg = f"cannot open the port ({detail}); check the path, the cable and the permissions"
    return UserError(where=url, message=msg)


class Link:
    """The host side of the propulsion-unit link. See the module docstring.

    ``Link(url)`` does not touch the port; :meth:`open` (or :meth:`connect`) opens it. One
    thread drives it; :meth:`stats` may be read from another (a status writer).
    """

    def __init__(
        self,
        url: str,
        *,
        baudrate: int = 115200,
        timeout: float = 0.1,
        on_bytes: Callable[[str, int, bytes], None] | None = None,
        ping_burst: int = PING_BURST,
        valid_for_ms: int | None = None,
    ):
        self.url = url
        self.baudrate = baudrate
        self.timeout = timeout
        self.on_bytes = on_bytes
        self.ping_burst = ping_burst
        self.s = HostSession(url, valid_for_ms=valid_for_ms, ping_nonce=random.getrandbits(31))
        self.s.other_readers = lambda: other_readers(self.url)
        self._ser: serial.SerialBase | None = None
        self._fd: int | None = None
        self._read_failed = False  # the last read raised: nothing more will come
        self._in_chain_result = False  # inside a fire_chain on_result
        self._thread: threading.Thread | None = None
        self._capture_errors = 0
        self._bytes_taken_reads = 0
        self._thief_checked_ns = 0

    # ---- what the session knows ----------------------------------------------------------------

    info = property(lambda self: self.s.info, lambda self, v: setattr(self.s, "info", v))
    clock_offset_us = property(lambda self: self.s.clock_offset_us)
    max_on_ticks = property(lambda self: self.s.max_on_ticks)
    latest_hk = property(lambda self: self.s.latest_hk)
    last_boot = property(lambda self: self.s.last_boot)
    reset_detected = property(lambda self: self.s.reset_detected)
    armed = property(lambda self: self.s.armed)
    is_up = property(lambda self: self.s.up)
    session = property(lambda self: self.s.session)
    retry_timeout_s = property(lambda self: self.s.retry_timeout_s)
    give_up_s = property(lambda self: self.s.give_up_s)
    n_channels = property(lambda self: self.s.info.n_channels if self.s.info else None)
    tick_us = property(lambda self: self.s.info.tick_us if self.s.info else None)
    watchdog_ms = property(lambda self: self.s.info.watchdog_ms if self.s.info else None)

    @property
    def boot_count(self) -> int | None:
        s = self.s
        if s.last_boot is not None and (s.info is None or s.reset_detected):
            return s.last_boot.msg["boot_count"]
        return s.info.boot_count if s.info else None

    def events(self) -> list[Received]:
        """The unit's EVENTs, oldest first (the last EVENT_LOG_SIZE)."""
        return list(self.s.events)

    def stats(self) -> dict[str, Any]:
        """Counters of this link plus the unit's last HK (``unit_*``, None before any HK)."""
        out = self.s.stats()
        out["bytes_taken_reads"] = self._bytes_taken_reads
        out["capture_errors"] = self._capture_errors
        out["link_up"] = self.s.up
        return out

    # ---- port ----------------------------------------------------------------------------------

    def open(self) -> None:
        """Open the port (exclusively). Idempotent while the link is up. UserError (one line)
        if the port cannot be opened."""
        if self._ser is not None and self.s.up:
            return
        self._close_port()
        try:
            ser = serial.serial_for_url(
                self.url, baudrate=self.baudrate, timeout=self.timeout, exclusive=True
            )
        except (serial.SerialException, OSError, ValueError) as exc:
            raise _open_error(self.url, exc) from None
        try:
            fd = ser.fileno()
        except (AttributeError, OSError, ValueError, serial.SerialException):
            fd = None
        self._ser = ser
        self._fd = fd if isinstance(fd, int) and fd >= 0 else None
        self._read_failed = False
        self._thread = threading.current_thread()
        self.s.port_opened()

    def _close_port(self) -> None:
        ser = self._ser
        if ser is None:
            return
        try:
            ser.close()
        except Exception:  # noqa: BLE001 - a dead port may fail anything; we are closing it
            pass
        self._ser = self._fd = None
        self.s.port_closed()

    def close(self, confirm_timeout_s: float = 0.0) -> bool | None:
        """STOP_ALL, then close the port. Idempotent; never raises on a dead port. Returns what
        :meth:`stop_all` returns (with ``confirm_timeout_s``: did the unit confirm)."""
        try:
            return self.stop_all(confirm_timeout_s)
        finally:
            self._close_port()

    def __enter__(self) -> Link:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _mark_down(self, reason: str) -> None:
        self.s.port_down(reason)

    # ---- the loop ------------------------------------------------------------------------------

    def _capture(self, direction: str, t_ns: int, data: bytes) -> None:
        try:
            self.on_bytes(direction, t_ns, data)
        except Exception:  # noqa: BLE001 - a broken recorder must not kill the link
            self._capture_errors += 1

    def _flush(self, force: bool = False) -> None:
        """Write what the session queued, in one write. LinkError if the port is gone
        (``force``: try the write while the port is open, even with the link judged down)."""
        s = self.s
        names = s.pending_names()
        t_ns = s.out_t_ns
        data = s.data_to_send()
        if not data:
            return
        ser = self._ser
        if ser is None or not (s.up or force):
            raise LinkError(
                f"{self.url}: link is down ({s.down_reason or 'port not open'}); reconnect"
            )
        try:
            if self._fd is not None:
                self._write_fd(data)
            else:
                ser.write(data)
        except (serial.SerialException, OSError) as exc:
            reason = " ".join(str(exc).split()) or type(exc).__name__
            s.port_down(reason)
            raise LinkError(
                f"{self.url}: writing {names[0]} failed ({reason}); the port went away: reconnect"
            ) from None
        if self.on_bytes is not None:
            self._capture("tx", t_ns, data)

    def _write_fd(self, data: bytes) -> None:
        """Write all of ``data`` to the port's descriptor, as pyserial's ``write`` does minus
        the ``select`` it makes after every write (one syscall less per frame batch); wait
        for room only when the output buffer is full (the descriptor is non-blocking)."""
        fd = self._fd
        try:
            n = os.write(fd, data)
        except BlockingIOError:
            n = 0
        if n == len(data):  # (the usual case: a cycle's frames fit in the pty at once)
            return
        view = memoryview(data)[n:]
        while view:
            try:
                n = os.write(fd, view)
            except BlockingIOError:
                select.select([], [fd], [], self.timeout)
                continue
            view = view[n:]

    def _read(self, deadline_ns: int | None) -> None:
        """Wait for input until ``deadline_ns`` (host monotonic; None: the port's timeout) and
        feed what came to the session. A read failure marks the link down."""
        ser = self._ser
        timeout = (
            self.timeout
            if deadline_ns is None
            else max(0.0, (deadline_ns - time.monotonic_ns()) / 1e9)
        )
        if ser is None or self._read_failed:
            self.s.port_down(self.s.down_reason or "port closed")
            time.sleep(min(timeout, self.timeout))  # nothing can come: let the deadline pass
            return
        fd = self._fd
        try:
            if fd is not None:
                if not select.select([fd], [], [], timeout)[0]:
                    if deadline_ns is not None:
                        self._quiet_until_deadline()
                    return
                try:
                    data = os.read(fd, 4096)
                except BlockingIOError:
                    return
                if not data:
                    # Readable, then nothing there: either the device is gone (a hung-up tty
                    # reads 0 bytes and fails every ioctl) or another process read it first.
                    if not port_alive(fd):
                        raise serial.SerialException(
                            "device reports readiness to read but "
                            "returned no data (device disconnected?)"
                        )
                    self._bytes_taken()
                    return
            else:  # no descriptor (loop://, ...): poll
                if ser.timeout != min(timeout, self.timeout):
                    ser.timeout = min(timeout, self.timeout)
                data = ser.read(ser.in_waiting or 1)
                if not data:
                    return
        except (serial.SerialException, OSError) as exc:
            self._read_failed = True
            self.s.port_down(" ".join(str(exc).split()) or type(exc).__name__)
            return
        t_ns = time.monotonic_ns()
        if self.on_bytes is not None:
            self._capture("rx", t_ns, data)
        self.s.receive_data(data, t_ns)

    def _quiet_until_deadline(self) -> None:
        """Nothing came before an operation's deadline (a reply is late). If another process
        has the port open for reading, it is the likeliest taker: one that always wins the
        race for the bytes leaves no empty read to notice (:meth:`_bytes_taken`), and between
        two operations only it is reading. Checked at most every 100 ms (a /proc scan)."""
        now = time.monotonic_ns()
        if self.s.intruder is not None or now - self._thief_checked_ns < 100_000_000:
            return
        self._thief_checked_ns = now
        who = other_readers(self.url)
        if who:
            self.s.port_taken(
                f"another process is reading {self.url}: {who}; the unit's "
                "replies were taken before this host could read them (close "
                "that program, then run again)"
            )

    def _bytes_taken(self) -> None:
        """The port was readable, the read found nothing, and the port is alive: another
        process read the unit's bytes first. Every wait fails from now on, naming the cause
        (and the process when the system says who has the port open)."""
        self._bytes_taken_reads += 1
        if self.s.intruder is not None:
            return
        who = other_readers(self.url)
        self.s.port_taken(
            f"another process is reading {self.url}"
            f"{': ' + who if who else ''}; the unit's replies were taken before "
            "this host could read them (close that program, then run again)"
        )

    def _run(self, op: Op, force: bool = False) -> Any:
        """Drive ``op`` to its result: write, wait for input or its deadline, read, poll."""
        s = self.s
        while True:
            got = s.poll(op, time.monotonic_ns())
            if s.has_output():
                self._flush(force)
            if got is not PENDING:
                return got
            self._read(op.deadline_ns)

    # ---- connect / ping ------------------------------------------------------------------------

    def connect(
        self, mode: str = "lockstep", period_ms: int = 500, boot_timeout_s: float = 3.0
    ) -> LinkInfo:
        """Open (if needed), wait for BOOT (or ``boot_timeout_s``), HELLO with the dictionary
        hash, then a PING burst for RTT and clock offset (see HostSession.connect)."""
        nonce = int.from_bytes(os.urandom(4), "big")
        op = self.s.connect(
            mode, period_ms, nonce, time.monotonic_ns(), boot_timeout_s, self.ping_burst
        )  # (validates before the port opens)
        self.open()
        return self._run(op)

    def ping(self, timeout_s: float | None = None) -> PingSample:
        """One PING/PONG: RTT (also added to the statistics) and a clock-offset sample.
        Not retried (periodic). LinkError on no answer."""
        timeout = (
            timeout_s
            if timeout_s is not None
            else max(self.s.retry_timeout_s, INITIAL_RETRY_TIMEOUT_S)
        )
        got = self._run(self.s.ping(time.monotonic_ns(), timeout))
        if got is None:
            raise LinkError(f"{self.url}: no PONG within {timeout * 1000:.0f} ms")
        return got

    # ---- arming --------------------------------------------------------------------------------

    def arm(self, max_on_ticks: int, next_step: int | None = None) -> None:
        """ARM_REQUEST -> ARM_CHALLENGE -> ARM_CONFIRM -> ACK (see HostSession.arm)."""
        op = self.s.arm(max_on_ticks, time.monotonic_ns(), next_step)
        try:
            self._run(op)
        except LinkError:
            if not self.s.armed:
                raise  # (armed: only the watchdog's first HEARTBEAT failed, best effort)

    def disarm(self) -> None:
        """DISARM (with ACK_REQ and retries): valves closed, unit SAFE. LinkError if refused."""
        session = self.s.require_session("DISARM")
        rec = self._run(self.s.command("DISARM", dict(session=session), time.monotonic_ns()))
        self.s.disarmed()
        if rec.msg["result"] != ACCEPTED:
            raise LinkError(f"{self.url}: DISARM refused: {self.s.result_name(rec)}")

    def stop_all(self, confirm_timeout_s: float = 0.0) -> bool | None:
        """STOP_ALL, twice (same seq, the copy flagged RETRANSMIT), asking for an ACK.

        Never raises, whatever the port's state. Returns True if the unit acknowledged it (it
        closes every valve before it answers) within ``confirm_timeout_s``, False if it did
        not, None if nothing was waited for (``confirm_timeout_s`` 0) or the port was down.
        """
        s = self.s
        if self._ser is None:
            s.disarmed()
            return None
        # Whatever was concluded (the link judged down, another process reading the port),
        # the port may still take a write: STOP_ALL goes out whenever it does.
        seq = s.stop_all(time.monotonic_ns())
        try:
            self._flush(force=True)
        except Exception:  # noqa: BLE001 - safing must never raise
            return None
        if confirm_timeout_s <= 0.0 or self._read_failed:
            return None  # nobody can read the port: the ACK cannot be seen
        deadline = time.monotonic_ns() + int(confirm_timeout_s * 1e9)
        op = s.wait_for(
            lambda: s.take_ack(seq, "STOP_ALL") or self._read_failed, deadline, checks=False
        )
        try:
            ack = self._run(op, force=True)
        except Exception:  # noqa: BLE001
            return False
        if ack is None or ack is True:
            return False
        return ack.msg["result"] == ACCEPTED

    # ---- firing --------------------------------------------------------------------------------

    def fire(
        self,
        step: int,
        on_ms: Sequence[int] | np.ndarray,
        *,
        valid_for_ms: int | None = None,
        deadline_ns: int | None = None,
    ) -> FireResult:
        """Fire one control step: one FIRE per bank of 16 thrusters, all in one write.

        LOCKSTEP: waits for each bank's VALVE_REPORT(step, bank), resending a missing bank
        (same seq, RETRANSMIT) until the give-up rule. REALTIME: collects the reports that
        arrive before ``deadline_ns`` (host monotonic ns; default: now + period +
        REALTIME_REPORT_SLACK_MS), feeding the watchdog meanwhile; a bank whose report misses
        it is listed in ``missing_banks``. LinkError if not armed, refused or lost.
        """
        return self._run(
            self.s.fire(
                step, on_ms, time.monotonic_ns(), valid_for_ms=valid_for_ms, deadline_ns=deadline_ns
            )
        )

    def fire_chain(
        self,
        step: int,
        on_ms: Sequence[int] | np.ndarray,
        on_result: Callable[[FireResult], tuple[int, Any] | None],
    ) -> None:
        """LOCKSTEP: fire ``step``, hand its :class:`FireResult` to ``on_result`` and fire what
        it returns, ``(next step, on_ms)``, until it returns None. :meth:`fire` in a loop on
        this thread; ``on_result`` must not wait for a reply (see :meth:`on_reader_thread`).
        Raises what :meth:`fire` raises, or what ``on_result`` raised."""
        if self.s.mode == "realtime":
            raise LinkError(f"{self.url}: fire_chain is for LOCKSTEP; fire() each REALTIME step")
        s, run = self.s, self._run
        nxt = (step, on_ms)
        while nxt is not None:
            res = run(s.fire(nxt[0], nxt[1], time.monotonic_ns()))
            self._in_chain_result = True
            try:
                nxt = on_result(res)
            finally:
                self._in_chain_result = False

    def on_reader_thread(self) -> bool:
        """Is the caller inside a :meth:`fire_chain` ``on_result``? It then sends without
        waiting (:meth:`send_fault`), so the wire carries what the chain expects next."""
        return self._in_chain_result

    # ---- heartbeat, parameters, faults ---------------------------------------------------------

    def heartbeat(self, step: int, *, ack: bool = False) -> None:
        """HEARTBEAT(session, step). With ``ack=True`` it is sent with ACK_REQ and retried
        like any non-periodic command; LinkError if refused or unanswered."""
        if not ack:
            self.s.heartbeat(step, time.monotonic_ns())
            self._flush()
            return
        session = self.s.require_session("HEARTBEAT")
        rec = self._run(
            self.s.command(
                "HEARTBEAT",
                dict(session=session, host_step=int(step) & 0xFFFFFFFF),
                time.monotonic_ns(),
            )
        )
        if rec.msg["result"] != ACCEPTED:
            raise LinkError(f"{self.url}: HEARTBEAT refused: {self.s.result_name(rec)}")

    def maybe_heartbeat(self, step: int) -> bool:
        """Send a HEARTBEAT only if no HEARTBEAT or FIRE went out for a quarter of the watchdog
        time. Returns whether one was sent. Call it every cycle of the run loop."""
        s = self.s
        if s.info is None or s.session is None or time.monotonic_ns() < s.heartbeat_due_ns():
            return False
        self.heartbeat(step)
        return True

    def set_param(self, name: str | int, value: int) -> None:
        """SET_PARAM (unit SAFE only); see HostSession.set_param."""
        self._run(self.s.set_param(name, value, time.monotonic_ns()))

    def inject_fault(self, kind: str | int, arg: int = 0) -> str | None:
        """FAULT_INJECT (test builds only). Returns the ACK's result name, or None when no ACK
        is waited for: RESET (the unit resets instead of answering), and a call inside a
        :meth:`fire_chain` ``on_result``, which sends it with :meth:`send_fault`. Not retried
        (a fault must not apply twice). LinkError if unanswered or refused (UNSUPPORTED)."""
        s = self.s
        key, fields = s.fault_fields(kind, arg)
        fields["session"] = s.require_session("FAULT_INJECT")
        now = time.monotonic_ns()
        if key == "RESET":
            s.queue("FAULT_INJECT", s.next_seq(), 0, fields, now)
            self._flush()
            return None
        if self.on_reader_thread():
            self.send_fault(key, arg)
            return None
        rec, _ = self._run(
            s.transact(
                "FAULT_INJECT",
                fields,
                lambda seq: s.take_ack(seq, "FAULT_INJECT"),
                now,
                ack_req=True,
                session=False,
                retries=0,
            )
        )
        result = s.result_name(rec)
        if rec.msg["result"] != ACCEPTED:
            raise LinkError(f"{self.url}: FAULT_INJECT {key} refused: {result}")
        return result

    def send_fault(self, kind: str | int, arg: int = 0, *, seq: int | None = None) -> int:
        """FAULT_INJECT without ACK_REQ and without waiting (inside a LOCKSTEP chain); returns
        its sequence count. The unit handles frames in order, so the fault is applied before
        any FIRE sent after it. ``seq`` resends that earlier one (RETRANSMIT)."""
        seq = self.s.send_fault(kind, arg, time.monotonic_ns(), seq)
        self._flush()
        return seq

    def fault_refusal(self, seq: int) -> str | None:
        """The result the unit refused the FAULT_INJECT ``seq`` of :meth:`send_fault` with
        (e.g. UNSUPPORTED on a flight build), or None if no refusal has arrived."""
        return self.s.fault_refusal(seq)

    # ---- reset / reconnect ---------------------------------------------------------------------

    def wait_reset(self, timeout_s: float) -> bool:
        """Block until a mid-session BOOT was seen (or timeout); return reset_detected."""
        deadline = time.monotonic_ns() + int(timeout_s * 1e9)
        self._run(
            self.s.wait_for(lambda: self.s.reset_detected or not self.s.up, deadline, checks=False)
        )
        return self.s.reset_detected

    def wait_hk(self, after_ns: int | None = None, timeout_s: float = 1.0) -> Received | None:
        """The unit's housekeeping (HK) received after ``after_ns`` (host monotonic ns; default:
        any), waiting up to ``timeout_s`` for one; None if none came. LinkError if the port
        goes down meanwhile."""
        s = self.s

        def newer():
            hk = s.latest_hk
            return hk if hk is not None and (after_ns is None or hk.t_ns > after_ns) else None

        return self._run(s.wait_for(newer, time.monotonic_ns() + int(timeout_s * 1e9)))

    def reconnect(self, timeout_s: float = 10.0, boot_timeout_s: float = 3.0) -> LinkInfo:
        """After a reset (BOOT mid-session) or a port that went away: re-open the port if
        needed (retrying with backoff up to ``timeout_s``), wait for BOOT, HELLO, PING burst,
        with the mode and period of the last connect(). The link refuses FIRE until arm()."""
        if self.s.mode is None or self.s.period_ms is None:
            raise LinkError(f"{self.url}: reconnect() before any connect()")
        if self._ser is None or not self.s.up:
            self._close_port()
            deadline = time.monotonic() + timeout_s
            backoff = 0.05
            while True:
                try:
                    self.open()
                    break
                except UserError as exc:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise LinkError(
                            f"{self.url}: the port did not come back within "
                            f"{timeout_s:g} s ({exc.message})"
                        ) from None
                    time.sleep(min(backoff, left))  # reopen backoff, not a reply wait
                    backoff = min(1.0, backoff * 2)
        return self.connect(self.s.mode, self.s.period_ms, boot_timeout_s)
