"""Link-level fault injection for the emulator: what a bad cable, a busy USB hub or a flaky
board does to the frames, plus unit faults on a schedule.

Spec grammar (``--faults``), comma-separated items, whitespace ignored::

    spec     := item ("," item)*
    item     := LINKKEY ["." DIR] "=" RATE                 drop, corrupt, duplicate
              | "delay" ["." DIR] "=" RATE ":" DURATION    hold a frame DURATION (later frames
                                                           overtake it)
              | "stall=" DURATION "@" WHEN                 the unit ignores input for DURATION
              | "reset@" WHEN                              the unit resets (new BOOT)
              | "fail=" CH "@" WHEN                        channel CH fails off
              | "stuck=" CH "@" WHEN                       channel CH sticks open
              | "clear=" CH "@" WHEN                       channel CH is healthy again
              | "pressure=" KPA ["kPa"] "@" WHEN           tank pressure becomes KPA
              | "cut" ["=" DURATION] "@" WHEN              the link is lost both ways for
                                                           DURATION (none: for good)
              | "seed=" INT                                the RNG seed (default 0)
    DIR      := "rx" (frames the unit receives) | "tx" (frames the unit sends); none: both
    RATE     := a probability in [0, 1] per frame
    DURATION := NUMBER ("s" | "ms")                        e.g. 2s, 250ms, 1.5s; at most 86400s
    WHEN     := DURATION                                   since the emulator started
              | "fire+" DURATION                           since the first FIRE the unit received
              | "step" INT                                 when the host's FIRE of that control
                                                           step (or a later one) comes in, before
                                                           the unit gets it

Example: ``drop=0.01,corrupt=0.01,duplicate=0.005,delay=0.01:30ms,stall=5s@2s,reset@fire+40s,
fail=3@10s,stuck=5@12s,pressure=1500kPa@20s,cut@step120,seed=7``.

A lockstep burn flies thousands of cycles a second, so a time is no way to say "mid-burn" there:
``@stepK`` is. Whoever applies the spec (the emulator, or
:mod:`thruster_hil.firmware_bridge.faultproxy` in front of any unit) calls
:meth:`LinkFaults.note_rx` with every frame from the host first: a fault due at step K then applies
before FIRE K reaches the unit (a ``cut`` loses FIRE K itself).

Per frame and direction, in this order: cut (while the link is cut every frame is lost), drop (the
frame is gone), corrupt (one byte before the delimiter is XORed with a random non-zero value that
does not make it 0x00, so the frame still ends where it did and fails its CRC/COBS/length check),
duplicate (sent twice), delay. Every action is counted in ``LinkFaults.counts`` (per direction) and
``LinkFaults.applied`` (the scheduled unit faults).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

from thruster_hil.firmware_bridge.codec import ProtocolError, decode_frame
from thruster_hil.firmware_bridge.dictionary import FAULT

from thruster_hil.core.errors import UserError
from thruster_hil.core.textnum import parse_float, parse_int, show

_WHERE = "--faults"
DIRECTIONS = ("rx", "tx")
_LINK_KEYS = ("drop", "corrupt", "duplicate", "delay")
# ASCII digits only: \d alone would take any script's digits ('٣s' as 3 s).
_DURATION = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(ms|s)", re.ASCII)
#: The longest duration a spec may give (a day) [us]: longer is a typo, not a test plan.
MAX_DURATION_US = 86_400 * 1_000_000
_STEP = re.compile(r"step([0-9]{1,10})", re.ASCII)
#: ``ScheduledFault.kind`` of a link cut: not a unit fault, the link applies it.
CUT = -1
_UNIT_KEYS = ("stall", "fail", "stuck", "clear", "pressure")
_ALL_KEYS = "drop, corrupt, duplicate, delay, stall, reset, fail, stuck, clear, pressure, cut, seed"


def _err(message: str) -> UserError:
    return UserError(where=_WHERE, message=message)


def parse_duration_us(text: str, what: str) -> int:
    """``"250ms"`` -> 250000, ``"2s"`` -> 2000000."""
    m = _DURATION.fullmatch(text.strip()) if len(text) <= 40 else None
    if not m:
        raise _err(f"{what}: expected a duration like 250ms or 2s, got {show(text)}")
    value = float(m.group(1)) * (1000 if m.group(2) == "ms" else 1_000_000)
    if value > MAX_DURATION_US:
        raise _err(f"{what}: expected a duration of at most 86400s, got {show(text)}")
    return int(round(value))


def _rate(text: str, what: str) -> float:
    try:
        value = parse_float(text)
    except ValueError:
        raise _err(f"{what}: expected a probability in [0, 1], got {show(text)}") from None
    if not 0.0 <= value <= 1.0:
        raise _err(f"{what}: expected a probability in [0, 1], got {show(text)}")
    return value


def _int(text: str, what: str, lo: int, hi: int) -> int:
    try:
        value = parse_int(text)
    except ValueError:
        raise _err(f"{what}: expected an integer in {lo}..{hi}, got {show(text)}") from None
    if not lo <= value <= hi:
        raise _err(f"{what}: expected an integer in {lo}..{hi}, got {show(text)}")
    return value


@dataclass(frozen=True)
class ScheduledFault:
    """A unit fault (enum ``fault`` kind and argument; :data:`CUT` with ``arg`` the cut's length
    in ms, 0 for good) due ``at_us`` after the start, or after the first FIRE when
    ``after_fire``, or when the host's FIRE of step ``at_step`` (or a later one) comes in."""

    kind: int
    arg: int
    at_us: int
    after_fire: bool
    text: str
    at_step: int | None = None


@dataclass
class FaultSpec:
    rates: dict[str, dict[str, float]] = field(
        default_factory=lambda: {d: {k: 0.0 for k in _LINK_KEYS} for d in DIRECTIONS}
    )
    delay_us: dict[str, int] = field(default_factory=lambda: {d: 0 for d in DIRECTIONS})
    schedule: list[ScheduledFault] = field(default_factory=list)
    seed: int = 0
    text: str = ""

    @property
    def link_active(self) -> bool:
        """Whether every frame must go through :meth:`LinkFaults.process` (rates, or a cut)."""
        return any(v > 0 for d in self.rates.values() for v in d.values()) or any(
            f.kind == CUT for f in self.schedule
        )

    @property
    def by_step(self) -> bool:
        """Whether some fault waits for a control step (:meth:`LinkFaults.note_rx` needed)."""
        return any(f.at_step is not None for f in self.schedule)


def parse_faults(text: str | None, n_channels: int = 32) -> FaultSpec:
    """Parse a fault spec; raise :class:`UserError` (one line) on the first bad item."""
    spec = FaultSpec(text=text or "")
    if not text or not text.strip():
        return spec
    seen: set[str] = set()
    for raw in text.split(","):
        item = "".join(raw.split())
        if not item:
            raise _err(f"empty item in {show(text)}")
        if item.startswith(("reset@", "cut@")):
            key, _, when = item.partition("@")
            value = ""
        elif "=" in item:
            key, value = item.split("=", 1)
            when = None
            if "@" in value:
                value, when = value.split("@", 1)
        else:
            raise _err(f"expected key=value, reset@WHEN or cut@WHEN, got {show(item)}")
        base, _, direction = key.partition(".")
        if base in _LINK_KEYS:
            if when is not None:
                raise _err(f"{key}: a link fault has a rate, not a time, got {show(item)}")
            if direction and direction not in DIRECTIONS:
                raise _err(f"{key}: direction must be rx or tx, got {show(direction)}")
            dirs = (direction,) if direction else DIRECTIONS
            for d in dirs:
                if f"{base}.{d}" in seen:
                    raise _err(f"{key}: given twice")
                seen.add(f"{base}.{d}")
            if base == "delay":
                rate_text, sep, dur = value.partition(":")
                if not sep:
                    raise _err(f"{key}: expected RATE:DURATION like 0.01:30ms, got {show(value)}")
                rate = _rate(rate_text, key)
                delay = parse_duration_us(dur, key)
                for d in dirs:
                    spec.delay_us[d] = delay
            else:
                rate = _rate(value, key)
            for d in dirs:
                spec.rates[d][base] = rate
            continue
        if direction:
            raise _err(f"{key}: only drop, corrupt, duplicate and delay take a direction")
        if key == "seed":
            if when is not None:
                raise _err(f"seed: expected an integer, got {show(item)}")
            spec.seed = _int(value, "seed", 0, 2**63 - 1)
            continue
        if when is None:
            if key in (*_UNIT_KEYS, "cut"):
                raise _err(f"{key}: needs a time, e.g. {key}=...@2s or @step100, got {show(item)}")
            raise _err(f"unknown fault {show(key)} ({_ALL_KEYS})")
        at_step = None
        after_fire = False
        at_us = 0
        if when.startswith("step"):
            m = _STEP.fullmatch(when)
            if not m or int(m.group(1)) > 0xFFFFFFFF:
                raise _err(
                    f"{key} time: expected stepN with N a control step 0..4294967295, "
                    f"got {show(when)}"
                )
            at_step = int(m.group(1))
        else:
            after_fire = when.startswith("fire+")
            at_us = parse_duration_us(when[5:] if after_fire else when, f"{key} time")
        if key == "cut":
            if "=" in item.partition("@")[0] and not value:
                raise _err(f"cut: expected cut=DURATION@WHEN or cut@WHEN, got {show(item)}")
            ms = 0 if not value else parse_duration_us(value, "cut") // 1000
            if value and not 1 <= ms <= 0xFFFFFFFF:
                raise _err(f"cut: expected at least 1ms, got {show(value)}")
            kind, arg = CUT, ms
        elif key == "reset":
            kind, arg = FAULT["RESET"], 0
        elif key == "stall":
            ms = parse_duration_us(value, "stall") // 1000
            if not 1 <= ms <= 0xFFFF:
                raise _err(f"stall: expected 1ms..65535ms, got {show(value)}")
            kind, arg = FAULT["STALL_MS"], ms
        elif key in ("fail", "stuck", "clear"):
            kind = {
                "fail": FAULT["FAIL_OFF"],
                "stuck": FAULT["STUCK_OPEN"],
                "clear": FAULT["CLEAR"],
            }[key]
            arg = _int(value, f"{key} channel", 0, n_channels - 1)
        elif key == "pressure":
            number = value[:-3] if value.lower().endswith("kpa") else value
            arg = _int(number, "pressure kPa", 0, 0xFFFF)
            kind = FAULT["TANK_PRESSURE"]
        else:
            raise _err(f"unknown fault {show(key)} ({_ALL_KEYS})")
        spec.schedule.append(ScheduledFault(kind, arg, at_us, after_fire, item, at_step))
    spec.schedule.sort(key=lambda f: (f.at_step is not None, f.at_step or 0, f.after_fire, f.at_us))
    return spec


class LinkFaults:
    """Applies a :class:`FaultSpec` to whole frames (delimiter included) with a seeded RNG.

    ``process(direction, frame, now_us)`` returns ``[(due_us, frame), ...]``: nothing if the
    frame was dropped (or the link is cut), two entries if duplicated, a later ``due_us`` if
    delayed. ``note_rx(frame)`` looks at a frame from the host for the control step it fires.
    ``due_unit_faults(now_us, first_fire_us)`` returns the scheduled ``(kind, arg)`` faults that
    are due (each once; a due cut starts the cut instead); ``next_unit_fault_us`` says when the
    next timed one is.
    """

    def __init__(self, spec: FaultSpec | str | None = None, n_channels: int = 32):
        if not isinstance(spec, FaultSpec):
            spec = parse_faults(spec, n_channels)
        self.spec = spec
        self._rng = random.Random(spec.seed)
        self.counts = {
            d: {"frames": 0, "dropped": 0, "corrupted": 0, "duplicated": 0, "delayed": 0, "cut": 0}
            for d in DIRECTIONS
        }
        self._todo = list(spec.schedule)
        self.applied: list[dict] = []
        self.step: int | None = None  # the latest control step the host fired
        self.cut_from_us: int | None = None
        self.cut_until_us: int | None = None  # None: not cut; -1: cut for good
        #: What process() last did to its frame, the first of cut, drop, corrupt, delay, dup,
        #: else fwd (the fault proxy's log says it per frame).
        self.last_action = "fwd"

    def note_rx(self, frame: bytes) -> None:
        """Note the control step of a FIRE from the host (only while a fault waits for one)."""
        if not self._waiting_for_step:
            return
        try:
            msg = decode_frame(frame[:-1] if frame.endswith(b"\x00") else frame)
        except ProtocolError:
            return
        if msg.name == "FIRE" and (self.step is None or msg["step"] > self.step):
            self.step = msg["step"]

    @property
    def _waiting_for_step(self) -> bool:
        return any(f.at_step is not None for f in self._todo)

    def cut(self, now_us: int) -> bool:
        """Whether the link is cut at ``now_us``."""
        until = self.cut_until_us
        if until is None:
            return False
        if until < 0 or now_us < until:
            return True
        self.cut_until_us = None
        return False

    def process(self, direction: str, frame: bytes, now_us: int) -> list[tuple[int, bytes]]:
        rates = self.spec.rates[direction]
        counts = self.counts[direction]
        counts["frames"] += 1
        if self.cut_until_us is not None and self.cut(now_us):
            counts["cut"] += 1
            self.last_action = "cut"
            return []
        rng = self._rng
        if rates["drop"] and rng.random() < rates["drop"]:
            counts["dropped"] += 1
            self.last_action = "drop"
            return []
        act = "fwd"
        if rates["corrupt"] and len(frame) > 1 and rng.random() < rates["corrupt"]:
            counts["corrupted"] += 1
            frame = corrupt_byte(frame, rng)
            act = "corrupt"
        due = now_us
        if rates["delay"] and rng.random() < rates["delay"]:
            counts["delayed"] += 1
            due = now_us + self.spec.delay_us[direction]
            act = "delay" if act == "fwd" else act
        out = [(due, frame)]
        if rates["duplicate"] and rng.random() < rates["duplicate"]:
            counts["duplicated"] += 1
            out.append((due, frame))
            act = "dup" if act == "fwd" else act
        self.last_action = act
        return out

    def _due_time(self, f: ScheduledFault, first_fire_us: int | None) -> int | None:
        if f.at_step is not None:
            return None
        if f.after_fire:
            return None if first_fire_us is None else first_fire_us + f.at_us
        return f.at_us

    def next_unit_fault_us(self, first_fire_us: int | None) -> int | None:
        times = [t for f in self._todo if (t := self._due_time(f, first_fire_us)) is not None]
        return min(times) if times else None

    def due_unit_faults(self, now_us: int, first_fire_us: int | None) -> list[tuple[int, int]]:
        due, keep = [], []
        for f in self._todo:
            if f.at_step is not None:
                ready = self.step is not None and self.step >= f.at_step
            else:
                t = self._due_time(f, first_fire_us)
                ready = t is not None and t <= now_us
            if not ready:
                keep.append(f)
                continue
            record = {"t_us": now_us, "fault": f.text}
            if f.at_step is not None:
                record["step"] = self.step
            self.applied.append(record)
            if f.kind == CUT:
                self.cut_from_us = now_us
                self.cut_until_us = -1 if f.arg == 0 else now_us + f.arg * 1000
            else:
                due.append((f.kind, f.arg))
        self._todo = keep
        return due


def corrupt_byte(frame: bytes, rng: random.Random) -> bytes:
    """XOR one byte before the delimiter with a random non-zero value that keeps it non-zero."""
    body = bytearray(frame[:-1]) if frame.endswith(b"\x00") else bytearray(frame)
    i = rng.randrange(len(body))
    while True:
        x = rng.randrange(1, 256)
        if body[i] ^ x:
            break
    body[i] ^= x
    return bytes(body) + (b"\x00" if frame.endswith(b"\x00") else b"")
