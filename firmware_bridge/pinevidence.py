"""Pin-level evidence: what the valve pins did in a simavr trace, judged against what the host
commanded and the unit reported (issue 17 item 2). Pure functions, no I/O.

Two records meet here:

- **the trace** (:mod:`firmware_bridge.vcd`, written by the simavr harness): each valve pin's
  high intervals and each reset, in CPU cycles of simulated time (16 MHz: 16 cycles a
  microsecond), independent of how busy the host was;
- **the wire** (:class:`WireRecord`, from the chunks a :class:`~firmware_bridge.link.Link`
  hands its ``on_bytes`` hook, or a run directory's capture.csv): the frames the host sent and
  what the unit answered. An accepted FIRE is one the unit answered with a VALVE_REPORT (not a
  re-sent one); the report carries the executed ticks per channel and ``t_start_pu_us``, on
  the unit's own clock when its pulses started (the board firmware: the tick edge its tick
  interrupt raised them at), and each HK the unit's ``open_mask`` at its ``pu_time_us``.

Aligning the two clocks. The unit's clock (pu_time_us: Timer1 from main(), restarted by every
reset) runs on the same 16 MHz as the trace, so within one boot the trace cycle of unit time
``t`` is ``origin + 16 t`` with one unknown ``origin`` per boot (:func:`align`). A FIRE's pins
rise in the main-loop pass that accepted it, a few hundred cycles after ``t_start``: the origin
is the least ``rise - 16 t_start`` over the first pulse of every channel in that boot, and every
pulse must then start within ``RISE_TOL_CYCLES`` of its FIRE (an extra pulse anywhere breaks
the alignment and shows as unmatched, so the check cannot pass by construction). Each verdict
says what it measured from: a frame's last byte reaching the UART when the harness logged
the bytes (``--uart-log``, :func:`frame_arrivals`), else the unit's own clock at the moment it
took the frame.

Every judge returns a :class:`Verdict`: ``ok``, the numbers (cycles and microseconds) the tests
assert and docs quote, and one line per problem.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from thruster_hil.firmware_bridge.codec import Decoder, Message
from thruster_hil.firmware_bridge.dictionary import CHANNELS_PER_BANK, ENUMS
from thruster_hil.firmware_bridge.vcd import Trace

__all__ = [
    "F_CPU_HZ",
    "TICK_CYCLES",
    "STOP_ALL_BOUND_US",
    "RISE_TOL_CYCLES",
    "Pulse",
    "Fire",
    "WireRecord",
    "Verdict",
    "valve_pulses",
    "reset_cycles",
    "align",
    "boot_segments",
    "parse_uart_log",
    "frame_arrivals",
    "frames_received",
    "unreported_fires",
    "unit_cycle",
    "last_valid_frame",
    "event_cycle",
    "judge_pulse_widths",
    "judge_only_accepted_fires",
    "judge_closed_after",
    "uart_log_chunks",
    "judge_reset_low",
    "judge_open_mask",
]

F_CPU_HZ = 16_000_000
CYCLES_PER_US = F_CPU_HZ // 1_000_000
TICK_CYCLES = 1000 * CYCLES_PER_US  # the unit's 1 ms tick
#: A FIRE's pins rise at the first tick edge at least 200 us after the main-loop pass that
#: accepted it (main.c, "Pin timing"): at most this long after its last byte (5 ms: above two of
#: the longest passes measured with 32 channels, plus that tick, and half the 10 ms least
#: control period between two FIREs of one channel, so no pulse can be matched to the wrong FIRE;
#: each FIRE explains one rise per channel, so a second pulse in that window is still caught).
RISE_TOL_CYCLES = 5 * TICK_CYCLES
#: REQ 2c, the stated STOP_ALL latency: from the frame's last byte at the UART to every valve
#: pin low, 1,000 us; the campaign's fault rows on simavr (a reset, a pressure loss) are held to
#: it too. The pin tests send STOP_ALL right behind a FIRE: the pass that handles that FIRE
#: (about 13,700 cycles, 0.86 ms, with its COBS and CRC done as its bytes came) ends before
#: STOP_ALL's last byte lands, and STOP_ALL's own pass closes the valves about 3,000 cycles after
#: it starts (before it builds the closing's reports). Measured 0.38 to 0.65 ms with 16 or 32
#: valves open (main before issue 17's pin work: 0.91 to 1.13 ms); docs/bench.md section 8. At
#: the maximum FIRE rate (tests/test_timing_budget.py, section 9): 3,900 to 13,400 cycles since
#: the main loop's passes are bounded (main.c, "Pass bound"; up to 82,280 before).
STOP_ALL_BOUND_US = 1000
_DUP_REPORT = 4  # VALVE_REPORT flags bit 2: a re-sent report, not a new execution
_REALTIME = ENUMS["mode"]["REALTIME"]
_ACCEPTED = ENUMS["result"]["ACCEPTED"]


def us(cycles: float) -> float:
    """Cycles of the 16 MHz clock in microseconds."""
    return cycles / CYCLES_PER_US


@dataclass(frozen=True)
class Pulse:
    """One valve pin high from ``rise`` to ``fall`` (cycles; fall None: high at the trace's end)."""

    channel: int
    rise: int
    fall: int | None

    def width(self) -> int | None:
        return None if self.fall is None else self.fall - self.rise


@dataclass(frozen=True)
class Fire:
    """A FIRE the unit accepted, as its VALVE_REPORT says (``boot``: the index of the unit's boot
    it ran in, counted in the wire record)."""

    boot: int
    step: int
    bank: int
    t_start_us: int
    executed: tuple[int, ...]
    flags: int
    realtime: bool
    on_ticks: tuple[int, ...] | None = None  # what the host asked, when its FIRE is on record

    def channels(self) -> list[int]:
        """The unit-wide channels this FIRE held open for at least one tick."""
        base = self.bank * CHANNELS_PER_BANK
        return [base + c for c, e in enumerate(self.executed) if e > 0]

    def asked(self, channel: int) -> bool:
        """Did the host command ``channel`` (on_ticks > 0) in this FIRE?"""
        c = channel - self.bank * CHANNELS_PER_BANK
        if not 0 <= c < CHANNELS_PER_BANK:
            return False
        if self.on_ticks is None:
            return self.executed[c] > 0
        return self.on_ticks[c] > 0


@dataclass(frozen=True)
class Sent:
    """A frame the host sent: its message, host time and where its last byte is in the host's
    byte stream (``end``: count of bytes sent up to and including its delimiter)."""

    msg: Message
    t_ns: int
    end: int


@dataclass
class WireRecord:
    """What crossed the wire, decoded: the host's frames, the unit's answers, by boot."""

    sent: list[Sent] = field(default_factory=list)
    fires: list[Fire] = field(default_factory=list)
    events: list[tuple[int, Message]] = field(default_factory=list)  # (boot, EVENT)
    hks: list[tuple[int, Message]] = field(default_factory=list)  # (boot, HK)
    boots: list[Message] = field(default_factory=list)  # the BOOTs the host saw, in order
    rx_errors: int = 0
    tx_bytes: bytes = b""  # every byte the host sent, in order
    refused: set[int] = field(default_factory=set)  # seqs of commands an ACK refused
    inferred_boots: int = 0  # boots whose BOOT the host missed, seen by the unit's clock

    @classmethod
    def from_chunks(cls, chunks: Iterable[tuple[str, int, bytes]]) -> WireRecord:
        """Decode ``(direction, t_ns, data)`` chunks ("tx" host -> unit, "rx" unit -> host) in
        the order they happened (a Link's ``on_bytes`` calls; capture.csv rows)."""
        rec = cls()
        dec = {"tx": Decoder(), "rx": Decoder()}
        asked: dict[tuple[int, int], tuple[int, ...]] = {}  # (step, bank) -> on_ticks
        realtime = False
        last_pu: int | None = None  # the unit's clock in HK and EVENT, this boot
        tx_bytes = 0
        tx_all = bytearray()
        for direction, t_ns, data in chunks:
            if direction == "tx":
                tx_all += data
                # frames end at each 0x00: find each frame's end offset in the stream
                ends = [tx_bytes + i + 1 for i, b in enumerate(data) if b == 0]
                msgs = dec["tx"].feed(data)
                tx_bytes += len(data)
                good = iter(ends)
                for m in msgs:
                    end = next(good, tx_bytes)
                    if not isinstance(m, Message):
                        continue
                    rec.sent.append(Sent(m, t_ns, end))
                    if m.name == "HELLO":
                        realtime = m["mode"] == _REALTIME
                    elif m.name == "FIRE":
                        asked[(m["step"], m["bank"])] = tuple(m["on_ticks"])
                continue
            for m in dec["rx"].feed(data):
                if not isinstance(m, Message):
                    rec.rx_errors += 1
                    continue
                if m.name in ("HK", "EVENT"):
                    # the unit's clock never steps back within a boot (main.c now_us): if it
                    # did, the unit reset and its BOOT never reached the host (the port was
                    # re-opened, which flushes what waited): count the boot anyway
                    t = m["pu_time_us"]
                    if last_pu is not None and t < last_pu:
                        prev = rec.boots[-1]["boot_count"] if rec.boots else 0
                        rec.boots.append(
                            Message(
                                "BOOT", 0, {"boot_count": (prev + 1) & 0xFFFF, "reset_cause": 0}
                            )
                        )
                        rec.inferred_boots += 1
                    last_pu = t
                boot = len(rec.boots)
                if m.name == "BOOT":
                    rec.boots.append(m)
                    last_pu = None
                elif m.name == "EVENT":
                    rec.events.append((boot, m))
                elif m.name == "HK":
                    rec.hks.append((boot, m))
                elif m.name == "ACK" and m["result"] != _ACCEPTED:
                    rec.refused.add(m["acked_seq"])
                elif m.name == "VALVE_REPORT" and not m["flags"] & _DUP_REPORT:
                    key = (m["step"], m["bank"])
                    rec.fires.append(
                        Fire(
                            boot,
                            m["step"],
                            m["bank"],
                            m["t_start_pu_us"],
                            tuple(m["executed_ticks"]),
                            m["flags"],
                            realtime,
                            asked.get(key),
                        )
                    )
        rec.tx_bytes = bytes(tx_all)
        return rec

    def last_sent(self, name: str | None = None) -> Sent | None:
        """The host's last frame (of message ``name``)."""
        for s in reversed(self.sent):
            if name is None or s.msg.name == name:
                return s
        return None


@dataclass
class Verdict:
    """A judge's answer: pass/fail, the numbers it measured, one line per problem."""

    name: str
    ok: bool
    numbers: dict[str, Any]
    problems: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        nums = ", ".join(f"{k} {v}" for k, v in self.numbers.items())
        head = f"{self.name}: {'PASS' if self.ok else 'FAIL'} ({nums})"
        return "\n  ".join([head, *self.problems[:20]])


# ---- the trace ------------------------------------------------------------------------------


def valve_pulses(trace: Trace, n_channels: int = 32) -> list[Pulse]:
    """Every valve pin's high intervals, in cycles, ordered by rise then channel."""
    out = []
    for ch in range(n_channels):
        name = f"valve{ch}"
        if name not in trace:
            raise KeyError(f"the trace has no {name} (has {sorted(trace.signals)})")
        for a, b in trace[name].high_intervals():
            out.append(Pulse(ch, int(trace.cycles(a)), None if b is None else int(trace.cycles(b))))
    out.sort(key=lambda p: (p.rise, p.channel))
    return out


def reset_cycles(trace: Trace) -> list[int]:
    """The cycles at which the harness marked a reset (rising edges of ``reset``; a mark at
    cycle 0 is the power-on and not counted)."""
    if "reset" not in trace:
        return []
    return [int(trace.cycles(a)) for a, _ in trace["reset"].high_intervals() if trace.cycles(a) > 0]


def _segment(cycle: int, resets: Sequence[int]) -> int:
    """Which boot of the trace ``cycle`` falls in (0 before the first reset)."""
    n = 0
    for r in resets:
        if cycle >= r:
            n += 1
    return n


def boot_segments(boots: Sequence[Message], resets: Sequence[int]) -> dict[int, int]:
    """Which boot of the trace (0: from power-on, i: after the i-th reset) each boot of the wire
    record is (0: before the first BOOT the host saw, i: after its i-th BOOT). BOOT's
    boot_count goes up by one a boot, so the BOOTs the host saw place themselves even when it
    missed some (a port re-opened flushes what came meanwhile). The anchor: a BOOT with reset
    cause POWER_ON is the trace's first boot; without one, the last BOOT the host saw is the
    trace's last boot. What came before the first BOOT belongs to the boot before it."""
    if not boots:
        return {0: len(resets)}
    power_on = ENUMS["reset_cause"]["POWER_ON"]
    first_po = next((b for b in boots if b["reset_cause"] & power_on), None)
    if first_po is not None:
        ref, ref_seg = first_po["boot_count"], 0
    else:
        ref, ref_seg = boots[-1]["boot_count"], len(resets)
    out = {
        i + 1: ref_seg + (((b["boot_count"] - ref) + 0x8000) & 0xFFFF) - 0x8000
        for i, b in enumerate(boots)
    }
    out[0] = out[1] - 1
    return out


def align(
    pulses: Sequence[Pulse],
    fires: Sequence[Fire],
    resets: Sequence[int],
    boots: Sequence[Message],
) -> dict[int, int]:
    """The trace cycle of unit time 0 for each boot of the wire record that fired (see the
    module docstring; ``boots``: the BOOTs the host saw, :func:`boot_segments`).

    Returns {wire boot index: origin cycle}; a boot without a realtime FIRE that opened a
    valve has no origin.
    """
    seg_of = boot_segments(boots, resets)
    origins: dict[int, int] = {}
    for boot in sorted({f.boot for f in fires if f.realtime}):
        seg = seg_of[boot]
        first_fire: dict[int, int] = {}
        for f in fires:
            if f.boot != boot or not f.realtime:
                continue
            for ch in f.channels():
                first_fire.setdefault(ch, f.t_start_us)
        first_rise: dict[int, int] = {}
        for p in pulses:
            if _segment(p.rise, resets) == seg:
                first_rise.setdefault(p.channel, p.rise)
        cands = [
            first_rise[ch] - CYCLES_PER_US * t for ch, t in first_fire.items() if ch in first_rise
        ]
        if not cands:
            continue
        # Refine over every FIRE of the boot: the pulse nearest where the first estimate puts
        # it (that estimate is off by at most a pass or two, far less than the 10 ms between
        # two FIREs of a channel); the least rise - t_start is the origin (the FIRE whose pins
        # came soonest after its stamp).
        rough = min(cands)
        rises: dict[int, list[int]] = {}
        for p in pulses:
            if _segment(p.rise, resets) == seg:
                rises.setdefault(p.channel, []).append(p.rise)
        best = rough
        for f in fires:
            if f.boot != boot or not f.realtime:
                continue
            t = CYCLES_PER_US * f.t_start_us
            for ch in f.channels():
                if ch in rises:
                    d = min((r - t for r in rises[ch]), key=lambda x: abs(x - rough))
                    if abs(d - rough) <= RISE_TOL_CYCLES:
                        best = min(best, d)
        origins[boot] = best
    return origins


def _uart_log_lines(text: str):
    """The harness's --uart-log, a line at a time: ``(cycle, "rx" | "tx", byte)`` (``<cycle>
    rx|tx <hex>`` a line, the cycle when the byte was complete: for rx, when the USART has it)."""
    for n, line in enumerate(text.splitlines(), start=1):
        parts = line.split()
        try:
            if len(parts) != 3 or parts[1] not in ("rx", "tx"):
                raise ValueError
            cycle, byte = int(parts[0]), int(parts[2], 16)
        except ValueError:
            raise ValueError(
                f"uart log line {n}: expected '<cycle> rx|tx <hex>', got {line!r}"
            ) from None
        yield cycle, parts[1], byte


def parse_uart_log(text: str) -> list[tuple[int, int]]:
    """The bytes the unit received, from the harness's --uart-log: ``[(cycle, byte), ...]`` in
    the order they came. Bytes the chip lost (its receiver off during a reset) are not in the
    log."""
    return [(cycle, byte) for cycle, way, byte in _uart_log_lines(text) if way == "rx"]


def uart_log_chunks(text: str) -> list[tuple[str, int, bytes]]:
    """The harness's --uart-log as :meth:`WireRecord.from_chunks` takes a host's capture, seen
    from the unit's pins: what it received as "tx" (host to unit, whoever wrote it: the host or
    a proxy), what it sent as "rx", each run of bytes one chunk stamped with its first byte's
    time (ns of simulated time). For a row with no host capture of its own to judge against
    (the campaign's, where a proxy sits between the host and the unit, or the host is killed)."""
    out: list[tuple[str, int, bytes]] = []
    buf = bytearray()
    cur: str | None = None
    t0 = 0
    for cycle, way, byte in _uart_log_lines(text):
        direction = "tx" if way == "rx" else "rx"
        if direction != cur:
            if buf:
                out.append((cur, t0, bytes(buf)))
            buf = bytearray()
            cur, t0 = direction, cycle * 1000 // CYCLES_PER_US
        buf.append(byte)
    if buf:
        out.append((cur, t0, bytes(buf)))
    return out


def frames_received(rx: Sequence[tuple[int, int]]) -> list[tuple[int, Message]]:
    """The frames the unit received, decoded, each with the cycle its last byte reached the
    UART: what the unit heard, whoever sent it (the host, or a proxy in between). Frames that do
    not decode (a corrupted or lost byte) are left out."""
    dec = Decoder()
    out: list[tuple[int, Message]] = []
    prev = 0
    for cycle, byte in rx:
        if byte == 0 and prev != 0:
            for m in dec.feed(b"\x00"):
                if isinstance(m, Message):
                    out.append((cycle, m))
        elif byte != 0:
            dec.feed(bytes([byte]))
        prev = byte
    return out


def frame_arrivals(rec: WireRecord, rx: Sequence[tuple[int, int]]) -> dict[int, int]:
    """The trace cycle at which the last byte (the 0x00 delimiter) of each frame the host sent
    reached the unit's UART. The frames the unit received (:func:`frames_received`) are the
    host's, in order, less any a reset lost: each sent frame is matched to the next received
    one with the same message, sequence count, flags and fields. Returns {index in
    ``rec.sent``: cycle}; frames the unit never got are left out."""
    got = frames_received(rx)
    out: dict[int, int] = {}
    j = 0
    for i, s_ in enumerate(rec.sent):
        m = s_.msg
        k = j
        while k < len(got) and got[k][1] != m:
            k += 1
        if k < len(got):
            out[i] = got[k][0]
            j = k + 1
    return out


def unreported_fires(rec: WireRecord, arrivals: dict[int, int]) -> list[tuple[int, Message]]:
    """FIREs the unit received and did not refuse but never reported: a reset cut them short
    (the report dies with the RAM). ``[(arrival cycle, FIRE), ...]``: the pins these may have
    raised are explained by the FIRE's arrival instead of a report."""
    reported = {(f.step, f.bank) for f in rec.fires}
    out = []
    for i, s_ in enumerate(rec.sent):
        m = s_.msg
        if m.name != "FIRE" or i not in arrivals or m.seq in rec.refused:
            continue
        if (m["step"], m["bank"]) not in reported:
            out.append((arrivals[i], m))
    return out


def unit_cycle(origins: dict[int, int], boot: int, t_us: int) -> int | None:
    """The trace cycle of unit time ``t_us`` in wire boot ``boot`` (None: boot not aligned)."""
    origin = origins.get(boot)
    return None if origin is None else origin + CYCLES_PER_US * t_us


def last_valid_frame(rec: WireRecord, origins: dict[int, int]) -> tuple[int, str] | None:
    """When the unit heard the host's last frame, in trace cycles, for the watchdog closure:
    the last frame the host sent must be a FIRE the unit accepted (its report's t_start is the
    moment the unit took it, on the unit's clock: the link watchdog counts from there).
    None when the host's last frame was anything else (its arrival is not on record)."""
    last = rec.last_sent()
    if last is None or last.msg.name != "FIRE":
        return None
    for f in reversed(rec.fires):
        if (f.step, f.bank) == (last.msg["step"], last.msg["bank"]):
            t = unit_cycle(origins, f.boot, f.t_start_us)
            if t is not None:
                return t, f"the unit accepted the last FIRE (step {f.step}, bank {f.bank})"
    return None


def event_cycle(
    rec: WireRecord, origins: dict[int, int], event: str, arg0: int | None = None
) -> tuple[int, Message] | None:
    """The trace cycle of the unit's last EVENT ``event`` (with ``arg0``), from its pu_time_us."""
    code = ENUMS["event"][event]
    for boot, m in reversed(rec.events):
        if m["event"] == code and (arg0 is None or m["arg0"] == arg0):
            t = unit_cycle(origins, boot, m["pu_time_us"])
            if t is not None:
                return t, m
    return None


# ---- judges ---------------------------------------------------------------------------------


def _match(
    pulses: Sequence[Pulse],
    fires: Sequence[Fire],
    origins: dict[int, int],
    resets: Sequence[int],
    seg_of: dict[int, int],
) -> tuple[list[tuple[Pulse, list[Fire]]], list[Pulse], list[tuple[Fire, int]]]:
    """Pair each pulse with the accepted FIREs that held its pin open: the FIRE it rose for
    (rise within RISE_TOL_CYCLES after t_start) and any later FIRE on that channel that kept it
    open (a new FIRE cutting the old pulse in the same pass). Returns the pairs, the pulses no
    FIRE explains and the (FIRE, channel) whose executed ticks no pulse shows."""
    boot_of = {seg: boot for boot, seg in seg_of.items()}
    pairs: list[tuple[Pulse, list[Fire]]] = []
    unexplained: list[Pulse] = []
    used: set[tuple[int, int]] = set()  # (id(fire), channel)
    rose: set[tuple[int, int]] = set()  # (id(fire), channel) that explained a rise
    for p in pulses:
        boot = boot_of.get(_segment(p.rise, resets))
        origin = origins.get(boot)
        mine: list[Fire] = []
        if origin is not None:
            mine_t = sorted(
                (origin + CYCLES_PER_US * f.t_start_us, i)
                for i, f in enumerate(fires)
                if f.boot == boot and f.realtime and f.asked(p.channel)
            )
            for t, i in mine_t:
                if not mine and 0 <= p.rise - t <= RISE_TOL_CYCLES:
                    if (id(fires[i]), p.channel) in rose:
                        continue  # that FIRE already raised this pin once
                    rose.add((id(fires[i]), p.channel))
                    mine.append(fires[i])  # the FIRE it rose for
                elif mine and p.rise < t and (p.fall is None or t < p.fall):
                    mine.append(fires[i])  # a later FIRE kept it open
        if mine:
            pairs.append((p, mine))
            used.update((id(f), p.channel) for f in mine)
        else:
            unexplained.append(p)
    missing = [
        (f, ch) for f in fires if f.realtime for ch in f.channels() if (id(f), ch) not in used
    ]
    return pairs, unexplained, missing


def judge_pulse_widths(
    pulses: Sequence[Pulse],
    rec: WireRecord,
    resets: Sequence[int],
    aborted: bool = True,
    tol_cycles: int = TICK_CYCLES,
) -> Verdict:
    """Each pulse lasts its FIRE's reported executed ticks within one tick (REQ issue 17 2a).

    Width error = (fall - rise) - executed x 1 ms. The unit switches on 1 ms tick edges: a pulse
    accepted mid-tick closes at the first tick at or after its end, so the error is in
    [-(acceptance to pin), 1 tick + one main-loop pass]; |error| <= ``tol_cycles`` (default one
    tick, the issue's requirement) passes. Pulses whose pin a second
    FIRE held open without a break are counted apart (chained) and judged on the sum.
    ``aborted=False`` leaves out pulses whose report says aborted (flags bit 1: cut by STOP_ALL,
    the watchdog, a new FIRE), counted in ``aborted_left_out``: the closing of those is judged
    by :func:`judge_closed_after`."""
    origins = align(pulses, rec.fires, resets, rec.boots)
    pairs, _, _ = _match(pulses, rec.fires, origins, resets, boot_segments(rec.boots, resets))
    errors: list[int] = []
    problems: list[str] = []
    chained = left_out = 0
    for p, fs in pairs:
        if not aborted and any(f.flags & 2 for f in fs):
            left_out += 1
            continue
        if p.fall is None:
            problems.append(f"valve{p.channel}: high from cycle {p.rise} to the end of the trace")
            continue
        c = p.channel % CHANNELS_PER_BANK
        ticks = sum(f.executed[c] for f in fs)
        chained += len(fs) > 1
        err = p.fall - p.rise - ticks * TICK_CYCLES
        errors.append(err)
        if abs(err) > tol_cycles * len(fs):
            problems.append(
                f"valve{p.channel} step {fs[0].step}: {p.fall - p.rise} cycles high, reported "
                f"{ticks} ticks ({us(err):+.1f} us)"
            )
    numbers = {
        "pulses": len(errors),
        "chained": chained,
        "aborted_left_out": left_out,
        "err_min_cycles": min(errors, default=None),
        "err_max_cycles": max(errors, default=None),
        "err_max_abs_us": us(max((abs(e) for e in errors), default=0)),
        "tol_cycles": tol_cycles,
    }
    ok = not problems and bool(errors)
    if not errors:
        problems.append("no pulse matched an accepted FIRE: nothing to judge")
    return Verdict("pulse width = executed ticks", ok, numbers, problems)


def _by_arrival(pulses: Sequence[Pulse], unreported: Sequence[tuple[int, Message]]) -> list[Pulse]:
    """The pulses an unreported FIRE explains: it commanded the channel, the pin rose within
    RISE_TOL_CYCLES of its arrival."""
    out = []
    for p in pulses:
        for t, m in unreported:
            c = p.channel - CHANNELS_PER_BANK * m["bank"]
            if 0 <= c < CHANNELS_PER_BANK and m["on_ticks"][c] and m["mask"] >> c & 1:
                if 0 <= p.rise - t <= RISE_TOL_CYCLES:
                    out.append(p)
                    break
    return out


def judge_only_accepted_fires(
    pulses: Sequence[Pulse],
    rec: WireRecord,
    resets: Sequence[int],
    stuck_channels: Iterable[int] = (),
    unreported: Sequence[tuple[int, Message]] = (),
) -> Verdict:
    """No pin is ever high outside an accepted FIRE, and every channel an accepted REALTIME FIRE
    executed for at least one tick was high (REQ issue 17 2d). Channels the bench made stick
    open (FAULT_INJECT STUCK_OPEN: a modelled hardware fault) are left out, and named.
    ``unreported`` (:func:`unreported_fires`): FIREs a reset kept from being reported; a pulse
    on a channel one of them commanded, rising within RISE_TOL_CYCLES of its arrival, is
    explained by it."""
    stuck = set(stuck_channels)
    judged = [p for p in pulses if p.channel not in stuck]
    origins = align(judged, rec.fires, resets, rec.boots)
    seg_of = boot_segments(rec.boots, resets)
    pairs, unexplained, missing = _match(judged, rec.fires, origins, resets, seg_of)
    by_arrival = _by_arrival(unexplained, unreported)
    unexplained = [p for p in unexplained if p not in by_arrival]
    missing = [(f, ch) for f, ch in missing if ch not in stuck]
    lags = [p.rise - (origins[fs[0].boot] + CYCLES_PER_US * fs[0].t_start_us) for p, fs in pairs]
    problems = [
        f"valve{p.channel} high at cycles {p.rise}..{p.fall} ({us(p.rise) / 1e3:.3f} ms): "
        f"no accepted FIRE commanded it"
        for p in unexplained
    ]
    problems += [
        f"step {f.step} bank {f.bank}: channel {ch} reported {f.executed[ch % 16]} ticks, "
        f"its pin never rose"
        for f, ch in missing
    ]
    numbers = {
        "pulses": len(judged),
        "fires": sum(f.realtime for f in rec.fires),
        "unexplained": len(unexplained),
        "missing": len(missing),
        "explained_by_unreported_fire": len(by_arrival),
        "rise_after_accept_max_cycles": max(lags, default=None),
        "stuck_channels": sorted(stuck),
    }
    return Verdict("no pin high outside an accepted FIRE", not problems, numbers, problems)


def judge_closed_after(
    name: str,
    pulses: Sequence[Pulse],
    t0: int,
    bound_cycles: int,
    since: str,
    rises_until: int | None = None,
) -> Verdict:
    """Every pin low within ``bound_cycles`` of cycle ``t0`` and nothing rising after it
    (the watchdog closure, REQ 2b, and STOP_ALL, REQ 2c). The closure time is the last fall
    of a pulse high after ``t0``, minus ``t0`` (0 when every pin was already low).
    ``rises_until``: pins may still rise up to this cycle (the frames before ``t0``'s, which
    the unit handles in order, in the pass ``t0``'s byte came in or the next)."""
    late = [p for p in pulses if p.fall is None or p.fall > t0]
    problems = []
    closure = 0
    for p in late:
        if p.fall is None:
            problems.append(f"valve{p.channel} still high at the end of the trace")
            continue
        if p.rise > (t0 if rises_until is None else rises_until):
            problems.append(f"valve{p.channel} rose {us(p.rise - t0):.1f} us after {since}")
        closure = max(closure, p.fall - t0)
    if closure > bound_cycles:
        problems.append(
            f"the last pin fell {us(closure):.1f} us after {since}, bound {us(bound_cycles):.1f} us"
        )
    numbers = {
        "closure_cycles": closure,
        "closure_us": us(closure),
        "bound_cycles": bound_cycles,
        "margin_cycles": bound_cycles - closure,
        "pins_high_at_t0": len(late),
        "from": since,
    }
    return Verdict(name, not problems, numbers, problems)


def judge_reset_low(
    trace: Trace,
    pulses: Sequence[Pulse],
    rec: WireRecord,
    resets: Sequence[int],
    unreported: Sequence[tuple[int, Message]] = (),
) -> Verdict:
    """Every valve pin low at each reset mark and from there until its first accepted FIRE of
    the new boot (REQ issue 17 2e): the pins never glitch high through a reset. Checks the
    wires' levels at the mark, and that every pulse rising after a reset is explained by an
    accepted FIRE of that boot."""
    problems = []
    names = [n for n in trace.signals if n.startswith("valve") and n[5:].isdigit()]
    for r in resets:
        t = trace.time_of_cycle(r)
        t_int = int(t) if t.denominator == 1 else int(t) + 1
        high = [n for n in names if trace[n].value_at(t_int) != 0]
        if high:
            problems.append(f"reset at cycle {r}: {', '.join(sorted(high))} not low")
    origins = align(pulses, rec.fires, resets, rec.boots)
    _, unexplained, _ = _match(pulses, rec.fires, origins, resets, boot_segments(rec.boots, resets))
    explained = _by_arrival(unexplained, unreported)
    for p in [p for p in unexplained if p not in explained]:
        if _segment(p.rise, resets) > 0:
            problems.append(
                f"valve{p.channel} rose at cycle {p.rise} after reset "
                f"{resets[_segment(p.rise, resets) - 1]} with no accepted FIRE"
            )
    first_after = []
    for i, r in enumerate(resets):
        end = resets[i + 1] if i + 1 < len(resets) else None
        rises = [p.rise for p in pulses if p.rise >= r and (end is None or p.rise < end)]
        first_after.append(min(rises) - r if rises else None)
    numbers = {
        "resets": len(resets),
        "first_rise_after_reset_cycles": first_after,
    }
    ok = not problems and bool(resets)
    if not resets:
        problems.append("the trace marks no reset: nothing to judge")
    return Verdict("pins low through every reset", ok, numbers, problems)


def judge_open_mask(
    pulses: Sequence[Pulse],
    rec: WireRecord,
    resets: Sequence[int],
    edge_tol_cycles: int,
    n_channels: int = 32,
) -> Verdict:
    """Each HK's ``open_mask`` is what the valve pins showed at its ``pu_time_us`` (issue 17:
    what the unit reports is true to the pins). A channel with an edge within
    ``edge_tol_cycles`` of that moment is left out (counted in ``near_edge``): the tick
    interrupt switches a valve a few dozen cycles after the unit's clock has passed the edge.
    HKs of a boot without an aligned clock (no FIRE opened a valve) are not judged."""
    origins = align(pulses, rec.fires, resets, rec.boots)
    seg_of = boot_segments(rec.boots, resets)
    by_channel: dict[int, list[Pulse]] = {}
    for p in pulses:
        by_channel.setdefault(p.channel, []).append(p)
    judged = with_open = near = 0
    problems: list[str] = []
    for boot, m in rec.hks:
        origin = origins.get(boot)
        if origin is None:
            continue
        c = origin + CYCLES_PER_US * m["pu_time_us"]
        if _segment(c, resets) != seg_of.get(boot):
            continue
        judged += 1
        with_open += m["open_mask"] != 0
        for ch in range(n_channels):
            high = near_edge = False
            for p in by_channel.get(ch, ()):
                fall = p.fall if p.fall is not None else None
                if abs(p.rise - c) <= edge_tol_cycles or (
                    fall is not None and abs(fall - c) <= edge_tol_cycles
                ):
                    near_edge = True
                if p.rise <= c and (fall is None or c < fall):
                    high = True
            if near_edge:
                near += 1
                continue
            said = bool(m["open_mask"] >> ch & 1)
            if said != high:
                problems.append(
                    f"HK at unit {m['pu_time_us']} us (cycle {c}): valve{ch} "
                    f"{'open' if said else 'closed'} in open_mask, pin {'high' if high else 'low'}"
                )
    numbers = {
        "hks": judged,
        "hks_with_open_valves": with_open,
        "near_edge_left_out": near,
        "mismatches": len(problems),
        "edge_tol_cycles": edge_tol_cycles,
    }
    if not with_open:
        problems.append("no HK while a valve was open: nothing to judge")
    return Verdict("HK open_mask = pins", not problems, numbers, problems)
