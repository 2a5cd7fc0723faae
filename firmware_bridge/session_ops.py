"""The operations of the host session (firmware_bridge/session.py): each command in flight
owns its timers (``deadline_ns``), its resends and its give-up rule, and :meth:`Op.poll` turns
the session's filed replies and the time into a result, PENDING or a LinkError. Multi-step
exchanges (connect, ARM, SET_PARAM, the PING burst) are generators run by :class:`FlowOp`.
Pure: no I/O, no clock."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from thruster_hil.firmware_bridge.dictionary import (
    DICT_HASH,
    FLAG_ACK_REQ,
    FLAG_RETRANSMIT,
    FLAG_TEST_BUILD,
    PROTO_VERSION,
    RESULT,
)
from thruster_hil.firmware_bridge.linkrules import (
    _ACCEPTED,
    _FILED_REPLIES,
    ARM_TRIES,
    INITIAL_RETRY_TIMEOUT_S,
    MAX_RETRIES,
    MODES,
    PARAM,
    PENDING,
    REALTIME_REPORT_SLACK_MS,
    LinkError,
    LinkInfo,
    PingSample,
    Received,
    _wrap32,
    percentile,
)

from thruster_hil.core.errors import UserError

if TYPE_CHECKING:
    from thruster_hil.firmware_bridge.session import HostSession

# ---- operations ------------------------------------------------------------------------------


class Op:
    """A command in flight. ``deadline_ns``: when :meth:`HostSession.poll` must run again even
    if nothing arrives (None: only on input)."""

    deadline_ns: int | None = None

    def poll(self, now_ns: int) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError


class WaitOp(Op):
    """Wait for ``pred()`` (truthy: the result) until ``deadline_ns``; then ``None``.
    ``checks``: raise LinkError when the port goes, and (``session``) the unit resets or locks
    the session out."""

    def __init__(
        self,
        s: HostSession,
        pred: Callable[[], Any],
        deadline_ns: int | None,
        *,
        session: bool = False,
        checks: bool = True,
    ):
        self.s, self.pred, self.deadline_ns = s, pred, deadline_ns
        self.session, self.checks = session, checks

    def poll(self, now_ns: int) -> Any:
        got = self.s._check(self.pred, self.session) if self.checks else self.pred()
        if got:
            return got
        if self.deadline_ns is not None and now_ns >= self.deadline_ns:
            return None
        return PENDING


class TransactOp(Op):
    """Send ``name`` and wait for ``reply(seq)``; resend with the same seq and RETRANSMIT every
    retry timeout; after ``retries`` resends give up once :func:`unit_lost` says so. Result:
    (reply, attempt)."""

    def __init__(
        self,
        s: HostSession,
        name: str,
        fields: dict[str, Any],
        reply: Callable[[int], Any],
        *,
        ack_req: bool,
        session: bool,
        retries: int,
        now_ns: int,
    ):
        self.s, self.name, self.fields, self.reply = s, name, fields, reply
        self.session, self.retries = session, retries
        self.seq = s.next_seq()
        self.flags = FLAG_ACK_REQ if ack_req else 0
        self.attempt = 0
        self.t_first = self.t_sent = now_ns
        s.queue(name, self.seq, self.flags, fields, now_ns)
        self.deadline_ns = now_ns + int(s.retry_timeout_s * 1e9)

    def poll(self, now_ns: int) -> Any:
        s = self.s
        got = s._check(lambda: self.reply(self.seq), self.session)
        if got:
            if self.attempt > self.retries:
                s.slow_unit_waits += 1
            return got, self.attempt
        if now_ns < self.deadline_ns:
            return PENDING
        if self.attempt >= self.retries and s.unit_lost_since(self.t_first, now_ns):
            raise LinkError(
                f"{s.url}: no reply to {self.name} (seq {self.seq}) after {self.attempt + 1} "
                f"tries {s.retry_timeout_s * 1000:.0f} ms apart; is the unit running?"
                f"{s.live_hint(self.t_first)}"
            )
        self.attempt += 1
        s.retries += 1
        self.flags |= FLAG_RETRANSMIT
        s.queue(self.name, self.seq, self.flags, self.fields, now_ns)
        self.t_sent = now_ns
        self.deadline_ns = now_ns + int(s.retry_timeout_s * 1e9)
        return PENDING


class FlowOp(Op):
    """A sequence of operations written as a generator: it yields an operation, gets its
    result back, and finally returns the flow's result (connect, arm, the PING burst)."""

    def __init__(self, s: HostSession, gen):
        self.s, self.gen = s, gen
        self.op = next(gen)
        self.deadline_ns = self.op.deadline_ns

    def poll(self, now_ns: int) -> Any:
        while True:
            got = self.op.poll(now_ns)
            if got is PENDING:
                self.deadline_ns = self.op.deadline_ns
                return PENDING
            try:
                self.op = self.gen.send(got)
            except StopIteration as stop:
                return stop.value


class FireOp(Op):
    """One control step: one FIRE per bank of 16, all queued together (one write). The one
    FIRE path of both clocks; see the module docstring. Result: a :class:`FireResult`."""

    def __init__(
        self,
        s: HostSession,
        step: int,
        n: int,
        banks: list,
        now_ns: int,
        realtime: bool,
        deadline_ns: int | None,
    ):
        self.s, self.step, self.n, self.banks, self.realtime = s, step, n, banks, realtime
        seqs = s.next_seqs(len(banks))
        self.seqs = {b[0]: q for b, q in zip(banks, seqs, strict=True)}
        self.reports: dict[int, Received] = {}
        self.rejected: tuple[int, Received] | None = None
        self.attempt = 0
        # Stamped before the write: the reports may be in before the write returns.
        self.t_first = self.t_sent = self.t_wait = now_ns
        queue = s.queue
        for b, q in zip(banks, seqs, strict=True):
            queue("FIRE", q, 0, b[3], now_ns)
        if realtime:
            if deadline_ns is None:
                # A pulse may last the whole period (a main engine firing continuously): its
                # report comes when it ends, a period plus the link's latency after the FIRE.
                # Counted from the write's stamp, the capture's time of these FIREs, so that
                # `replay` draws the same line through the capture.
                period_ms = (s.period_ms or 500) + REALTIME_REPORT_SLACK_MS
                deadline_ns = s.out_t_ns + period_ms * 1_000_000
            self.report_deadline_ns = deadline_ns
            self.deadline_ns = min(deadline_ns, s.heartbeat_due_ns())
        else:
            self.give_up_ns = now_ns + int(s.give_up_s * 1e9)
            self.deadline_ns = now_ns + int(s.resend_wait_s(0) * 1e9)
        s.fire_op = self

    def refused(self, seq: int, rec: Received) -> None:
        """A refusing ACK to one of this step's FIREs (not DUPLICATE)."""
        if self.rejected is None:
            for b, q in self.seqs.items():
                if q == seq and b not in self.reports:
                    self.rejected = (b, rec)

    def _collect(self) -> bool:
        """Reports filed before this op existed (a late chain), and whether the step is done."""
        if len(self.reports) < len(self.seqs):
            filed = self.s._reports
            if filed:
                for b in self.seqs:
                    if b not in self.reports:
                        rec = filed.pop((self.step, b), None)
                        if rec is not None:
                            self.reports[b] = rec
        return self.rejected is not None or len(self.reports) == len(self.seqs)

    def poll(self, now_ns: int) -> Any:
        s = self.s
        done = s._check(self._collect, True)
        if self.rejected is not None:
            self._finish()
            b, rec = self.rejected
            why = (
                " after a unit reset (BOOT in mid-session): reconnect and ARM again"
                if s.reset_detected
                else s.refusal_hint()
            )
            raise LinkError(
                f"{s.url}: FIRE step {self.step} bank {b} refused: {s.result_name(rec)}{why}"
            )
        if self.realtime:
            return self._poll_realtime(now_ns, done)
        if done:
            self._finish()
            t_last = max(r.t_ns for r in self.reports.values())
            if self.attempt == 0:  # Karn: no RTT sample from a retransmitted exchange
                s.rtt_ms.append((t_last - self.t_first) / 1e6)
                s.fire_rtt_sample((t_last - self.t_first) / 1e9)
            elif t_last >= self.give_up_ns:
                s.slow_unit_waits += 1
            return s.fire_result(self, (t_last - self.t_first) / 1e6)
        if now_ns < self.deadline_ns:
            return PENDING
        if (
            self.attempt >= MAX_RETRIES
            and now_ns >= self.give_up_ns
            and s.unit_lost_since(self.t_first, now_ns)
        ):
            self._finish()
            missing = sorted(set(self.seqs) - set(self.reports))
            raise LinkError(
                f"{s.url}: no reply to FIRE step {self.step} (no VALVE_REPORT for bank(s) "
                f"{missing}) after {self.attempt + 1} tries over "
                f"{(now_ns - self.t_first) / 1e6:.0f} ms; is the unit running?"
                f"{s.foreign_hint(self.seqs.values())}{s.live_hint(self.t_first)}"
            )
        self.attempt += 1
        s.fire_timed_out()
        # Hold the copies while the unit is still answering an older step (it is reading a
        # backlog), but for one resend wait only: the next attempt asks again whether a stale
        # report came since this one, so a FIRE lost behind the backlog is resent.
        behind = s.unit_behind(self.step, self.t_sent)
        self.t_sent = now_ns
        if not behind:
            for b, _lo, _w, fields in self.banks:
                if b not in self.reports:
                    s.retries += 1
                    s.queue("FIRE", self.seqs[b], FLAG_RETRANSMIT, fields, now_ns)
        self.deadline_ns = now_ns + int(s.resend_wait_s(self.attempt) * 1e9)
        return PENDING

    def _poll_realtime(self, now_ns: int, done: bool) -> Any:
        s = self.s
        if not done and now_ns < self.report_deadline_ns:
            if now_ns >= s.heartbeat_due_ns():
                # Pulses last up to a period, longer than the unit's watchdog: keep feeding it.
                s.heartbeat(self.step, now_ns)
            self.deadline_ns = min(self.report_deadline_ns, s.heartbeat_due_ns())
            return PENDING
        self._finish()
        # A report is in time by the time it was read (its stamp, the one the capture keeps),
        # not by when this poll came round: one read past the deadline counts as late even if
        # the same wake-up read it, so `replay` applies the same rule to the capture exactly.
        late = [b for b, rec in self.reports.items() if rec.t_ns >= self.report_deadline_ns]
        for b in late:
            del self.reports[b]
        s.late_reports += len(late)
        missing = tuple(b for b in self.seqs if b not in self.reports)
        s.deadline_misses += len(missing)
        if len(s._late_expected) > _FILED_REPLIES:  # reports that never came
            s._late_expected.clear()
        s._late_expected.update((self.step, b) for b in missing if b not in late)
        # A report missed now and then is a late cycle; none for MAX_RETRIES + 1 cycles in a
        # row (a cut cable, a dead unit) ends the burn: the unit's watchdog has long closed
        # the valves, and the host must not fly on in the dark.
        s.silent_cycles = s.silent_cycles + 1 if len(missing) == len(self.seqs) else 0
        if s.silent_cycles > MAX_RETRIES:
            raise LinkError(
                f"{s.url}: no VALVE_REPORT for {s.silent_cycles} REALTIME "
                f"cycles in a row (steps {self.step - s.silent_cycles + 1}.."
                f"{self.step}): the link is lost or the unit stopped answering"
                f"{s.foreign_hint(self.seqs.values())}"
            )
        rtt = None
        if self.reports:
            rtt = (max(r.t_ns for r in self.reports.values()) - self.t_first) / 1e6
        return s.fire_result(self, rtt, missing)

    def _finish(self) -> None:
        if self.s.fire_op is self:
            self.s.fire_op = None


# ---- flows ---------------------------------------------------------------------------------


def command_flow(s: HostSession, name, fields, ack, now_ns):
    rec, _ = yield s.transact(name, fields, ack, now_ns, ack_req=True, session=True)
    return rec


def connect_flow(s: HostSession, key, period_ms, host_nonce, now_ns, boot_timeout_s, ping_burst):
    # Discard input until BOOT (nobody waits for what comes before).
    yield s.wait_for(
        lambda: s.boots > s.boots_consumed or not s.up,
        now_ns + int(boot_timeout_s * 1e9),
        checks=False,
    )
    s.boots_consumed = s.boots
    s.session = None
    s._armed = False
    s.reset_detected = False
    s.lockout = None
    s.next_step = 1
    s._forget_replies()
    hello_before = s.hello_acks
    s.info = None
    s.resync()

    def hello_reply(_seq: int) -> Received | None:
        return s.last_hello_ack if s.hello_acks > hello_before else None

    # The unit may still be coming up, or its serial line may not be serviced yet (a board
    # without auto-reset, QEMU re-polling its pty): at connect, keep offering HELLO (same
    # sequence count) for a boot timeout rather than the usual few tries.
    retries = max(MAX_RETRIES, math.ceil(boot_timeout_s / s.retry_timeout_s))
    rec, _ = yield s.transact(
        "HELLO",
        dict(
            proto_ver=PROTO_VERSION,
            dict_hash=DICT_HASH,
            mode=MODES[key],
            period_ms=period_ms,
            host_nonce=host_nonce & 0xFFFFFFFF,
        ),
        hello_reply,
        s.now_ns,
        ack_req=False,
        session=False,
        retries=retries,
    )
    ack = rec.msg
    if ack["result"] == RESULT["DICT_MISMATCH"]:
        raise UserError(
            where=s.url,
            message=f"message dictionary mismatch: the unit has hash 0x{ack['dict_hash']:08X}"
            f", this host 0x{DICT_HASH:08X}; rebuild the firmware/emulator from this "
            f"messages.toml (the unit will not be armed)",
        )
    if ack["result"] != _ACCEPTED:
        raise LinkError(f"{s.url}: HELLO refused: {s.result_name(rec)}")
    if ack["proto_ver"] != PROTO_VERSION:
        raise UserError(
            where=s.url,
            message=f"the unit speaks protocol version {ack['proto_ver']}, this "
            f"host {PROTO_VERSION}; update the firmware or the host",
        )
    test_build = s.test_build or bool(ack.flags & FLAG_TEST_BUILD)
    session = s.session if s.session is not None else ack["session"]
    mode_names = {v: k for k, v in MODES.items()}
    s.info = LinkInfo(
        session=session,
        fw_ver=ack["fw_ver"],
        proto_ver=ack["proto_ver"],
        dict_hash=ack["dict_hash"],
        n_channels=ack["n_channels"],
        tick_us=ack["tick_us"],
        min_on_ticks=ack["min_on_ticks"],
        watchdog_ms=ack["watchdog_ms"],
        mode=mode_names.get(ack["mode"], key),
        period_ms=period_ms,
        boot_count=ack["boot_count"],
        test_build=test_build,
    )
    s.mode, s.period_ms = key, period_ms
    samples = []
    timeout_s = max(s.retry_timeout_s, INITIAL_RETRY_TIMEOUT_S)
    for _ in range(ping_burst):
        sample = yield s.ping(s.now_ns, timeout_s)
        if sample is not None:
            samples.append(sample)
    if ping_burst and len(samples) * 2 < ping_burst:
        raise LinkError(
            f"{s.url}: only {len(samples)} of {ping_burst} PINGs were "
            "answered; the link is losing frames"
        )
    if samples:
        s.retry_rtt_s = percentile([p.rtt_ms for p in samples], 50) / 1000.0
        best = min(samples, key=lambda p: p.rtt_ms)  # least queueing: best offset
        s.clock_offset_us = best.offset_us
    return s.info


def ping_flow(s: HostSession, nonce, deadline_ns):
    rec = yield s.wait_for(lambda: s._pongs.pop(nonce, None), deadline_ns)
    if rec is None:
        return None
    m = rec.msg
    t4_us = rec.t_ns // 1000
    rtt_ms = (t4_us - m["t1_host_us"]) / 1000.0
    offset = (_wrap32(m["t2_pu_us"] - m["t1_host_us"]) + _wrap32(m["t3_pu_us"] - t4_us)) / 2
    s.rtt_ms.append(rtt_ms)
    return PingSample(rtt_ms=rtt_ms, offset_us=offset)


def arm_flow(s: HostSession, session, max_on_ticks, next_step):
    # A duplicated ARM_REQUEST (a line that repeats frames, or a resend whose first copy
    # got through) draws a second challenge that voids the first nonce, and the unit then
    # answers BAD_NONCE (and goes SAFE). That is the line's doing, not a refusal: arm again,
    # a bounded number of times.
    for arm_try in range(ARM_TRIES):
        last = arm_try == ARM_TRIES - 1
        challenges_before = s.challenges

        def challenge(seq: int, before=challenges_before) -> Received | None:
            if s.challenges > before:
                return s.last_challenge
            return s.take_ack(seq, "ARM_REQUEST")

        rec, _ = yield s.transact(
            "ARM_REQUEST", dict(session=session), challenge, s.now_ns, ack_req=False, session=True
        )
        if rec.msg.name == "ACK":
            raise LinkError(
                f"{s.url}: ARM_REQUEST refused: {s.result_name(rec)}{s.hk_pressure_hint()}"
            )
        nonce = rec.msg["nonce"]
        armed_events_before = s.armed_events
        step = s.next_step if next_step is None else next_step
        rec, attempt = yield s.transact(
            "ARM_CONFIRM",
            dict(session=session, nonce=nonce, max_on_ticks=max_on_ticks, next_step=int(step)),
            lambda seq: s.take_ack(seq, "ARM_CONFIRM"),
            s.now_ns,
            ack_req=True,
            session=True,
        )
        result = rec.msg["result"]
        if result == _ACCEPTED:
            break
        # A resent ARM_CONFIRM whose first copy armed the unit (its ACK lost) is refused
        # with REJECTED_STATE; the ARMED event tells us the first copy worked.
        if (
            attempt > 0
            and result == RESULT["REJECTED_STATE"]
            and s.armed_events > armed_events_before
        ):
            break
        if result == RESULT["BAD_NONCE"] and not last:
            continue
        hint = s.hk_pressure_hint() if result == RESULT["REJECTED_STATE"] else ""
        raise LinkError(f"{s.url}: ARM_CONFIRM refused: {s.result_name(rec)}{hint}")
    s._armed = True
    s._reports.clear()
    s._late_expected.clear()
    s.max_on_ticks = max_on_ticks
    s.heartbeat(0, s.now_ns)  # start the link watchdog's clock from a fresh one
    return None


def set_param_flow(s: HostSession, key, value, session, now_ns):
    rec = yield s.command("SET_PARAM", dict(session=session, param=PARAM[key], value=value), now_ns)
    result = rec.msg["result"]
    if result == RESULT["BAD_PARAM"]:
        raise UserError(where=s.url, field=key, message=f"the unit refused {value!r} (BAD_PARAM)")
    if result != _ACCEPTED:
        raise LinkError(f"{s.url}: SET_PARAM {key} refused: {s.result_name(rec)}")
    if key == "WATCHDOG_MS" and s.info is not None:
        s.info = replace(s.info, watchdog_ms=value)
