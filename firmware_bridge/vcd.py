"""A sans-IO reader of Value Change Dump files (IEEE 1364 section 18): pin traces as edge lists.

::

    p = VcdParser()
    for chunk in chunks:          # text, split anywhere (mid-token too)
        p.feed(chunk)
    trace = p.close()
    trace["valve0"].high_intervals()       # [(t_rise, t_fall or None), ...] in VCD time units
    trace.seconds(t), trace.cycles(t)      # a VCD time in simulated seconds / CPU cycles

What it reads: the header ($timescale, $scope/$upscope, $var, $comment, $date, $version,
$enddefinitions), ``#time`` stamps, scalar changes (``0!``, ``1!``, ``x!``, ``z!``), vector
changes (``b1010 !``, an x or z bit makes the value unknown) and real changes (``r1.5 !``). The
$dumpvars / $dumpall / $dumpon / $dumpoff sections are plain value changes at the current time
(their ``$end`` closes them). Identifier codes may be shared by several $var (aliases).

The simavr harness (firmware_bridge/board/simavr_unit.c) writes ``$comment f_cpu_hz N $end``;
:meth:`Trace.cycles` uses it. Times stay integers in the file's units, and the timescale is an
exact :class:`~fractions.Fraction` of a second, so a cycle count never picks up float error.

Nothing here opens a file: :func:`read_vcd` is the one-line convenience that does.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from fractions import Fraction

__all__ = ["VcdError", "Signal", "Trace", "VcdParser", "parse_vcd", "read_vcd"]

_UNITS = {
    "s": Fraction(1),
    "ms": Fraction(1, 10**3),
    "us": Fraction(1, 10**6),
    "ns": Fraction(1, 10**9),
    "ps": Fraction(1, 10**12),
    "fs": Fraction(1, 10**15),
}
_TIMESCALE_RE = re.compile(r"^\s*(1|10|100)\s*(s|ms|us|ns|ps|fs)\s*$")
_F_CPU_RE = re.compile(r"\bf_cpu_hz\s+(\d+)\b")
#: Sections whose body is free text up to $end.
_TEXT_SECTIONS = {"$comment", "$date", "$version", "$timescale"}
#: Sections whose body is value changes (the $end after them is skipped).
_DUMP_SECTIONS = {"$dumpvars", "$dumpall", "$dumpon", "$dumpoff"}


class VcdError(ValueError):
    """A VCD text this reader cannot make sense of; the message names the token and where."""


@dataclass
class Signal:
    """One traced variable: its value changes, in time order, with consecutive repeats dropped.

    A scalar's values are 0, 1 or None (x or z); a vector's an int or None (any x/z bit); a
    real's a float.
    """

    name: str
    width: int
    kind: str = "wire"
    changes: list[tuple[int, int | float | None]] = field(default_factory=list)

    def _add(self, t: int, value: int | float | None) -> None:
        if self.changes and self.changes[-1][1] == value:
            return
        if self.changes and self.changes[-1][0] == t:  # two values at one time: the last counts
            self.changes.pop()
            if self.changes and self.changes[-1][1] == value:
                return
        self.changes.append((t, value))

    def value_at(self, t: int) -> int | float | None:
        """The value at time ``t`` (after every change at ``t``); None before the first."""
        value = None
        for tc, v in self.changes:
            if tc > t:
                break
            value = v
        return value

    def edges(self) -> list[tuple[int, int | float | None]]:
        """The changes after the first (the initial value is not an edge)."""
        return self.changes[1:]

    def high_intervals(self) -> list[tuple[int, int | None]]:
        """Maximal intervals where the value is 1: ``(t_rise, t_fall)``, t_fall None when still
        high at the end of the trace. A pin high from the start rises at its first change."""
        out: list[tuple[int, int | None]] = []
        start: int | None = None
        for t, v in self.changes:
            if v == 1 and start is None:
                start = t
            elif v != 1 and start is not None:
                out.append((start, t))
                start = None
        if start is not None:
            out.append((start, None))
        return out


@dataclass
class Trace:
    """What a VCD held: the signals by name, the timescale and the last time stamp."""

    timescale_s: Fraction
    signals: dict[str, Signal]
    end_time: int
    comments: list[str]
    f_cpu_hz: int | None = None

    def __getitem__(self, name: str) -> Signal:
        try:
            return self.signals[name]
        except KeyError:
            have = sorted(self.signals)
            raise KeyError(f"no signal {name!r} in the trace (has {have})") from None

    def __contains__(self, name: str) -> bool:
        return name in self.signals

    def seconds(self, t: int) -> float:
        """A time of this trace in simulated seconds."""
        return float(t * self.timescale_s)

    def cycles(self, t: int) -> Fraction:
        """A time of this trace in CPU cycles (needs the f_cpu_hz comment, or f_cpu_hz set)."""
        if not self.f_cpu_hz:
            raise VcdError("the trace has no '$comment f_cpu_hz N $end': cycles are unknown")
        return t * self.timescale_s * self.f_cpu_hz

    def time_of_cycle(self, cycle: int) -> Fraction:
        """The trace time of a CPU cycle count (inverse of :meth:`cycles`)."""
        if not self.f_cpu_hz:
            raise VcdError("the trace has no '$comment f_cpu_hz N $end': cycles are unknown")
        return Fraction(cycle) / (self.timescale_s * self.f_cpu_hz)


class VcdParser:
    """Incremental, sans-IO: :meth:`feed` text in any chunks, then :meth:`close` for the trace."""

    def __init__(self) -> None:
        self._pending = ""  # a token cut by a chunk boundary
        self._section: str | None = None  # inside $xxx ... $end
        self._section_words: list[str] = []
        self._in_dump = False
        self._defs_done = False
        self._awaiting_id: tuple[str, str] | None = None  # ("b", "1010") waiting for its id
        self._timescale: Fraction = Fraction(1, 10**9)  # the standard's default: 1 ns
        self._ids: dict[str, list[Signal]] = {}
        self._signals: dict[str, Signal] = {}
        self._scope: list[str] = []
        self._comments: list[str] = []
        self._time = 0
        self._end_time = 0
        self._tokens = 0

    # ---- input -----------------------------------------------------------------------------

    def feed(self, text: str) -> None:
        """Parse ``text``; a token cut at its end waits for the next chunk."""
        data = self._pending + text
        if not data:
            return
        cut = len(data)
        if not data[-1].isspace():  # the last token may continue in the next chunk
            cut = max(data.rfind(" "), data.rfind("\n"), data.rfind("\t"), data.rfind("\r")) + 1
        self._pending = data[cut:]
        for tok in data[:cut].split():
            self._token(tok)

    def close(self) -> Trace:
        """End of input: the trace. VcdError if the text stopped inside a section or change."""
        if self._pending:
            tok, self._pending = self._pending, ""
            self._token(tok)
        if self._section is not None:
            raise VcdError(f"the text ends inside {self._section} (no $end)")
        if self._awaiting_id is not None:
            raise VcdError(f"the text ends after the value {self._awaiting_id[1]!r}: no id")
        f_cpu = None
        for c in self._comments:
            m = _F_CPU_RE.search(c)
            if m:
                f_cpu = int(m.group(1))
        return Trace(self._timescale, self._signals, self._end_time, self._comments, f_cpu)

    # ---- tokens ----------------------------------------------------------------------------

    def _token(self, tok: str) -> None:
        self._tokens += 1
        if self._section is not None:
            if tok == "$end":
                self._end_section()
            else:
                self._section_words.append(tok)
            return
        if self._awaiting_id is not None:
            kind, value = self._awaiting_id
            self._awaiting_id = None
            self._change(tok, _vector_value(value, tok) if kind == "b" else _real(value, tok))
            return
        if tok.startswith("$"):
            if tok in _DUMP_SECTIONS:
                self._in_dump = True
            elif tok == "$end" and self._in_dump:
                self._in_dump = False
            elif tok == "$end":
                raise VcdError(f"token {self._tokens}: $end without a section")
            else:
                self._section, self._section_words = tok, []
            return
        head = tok[0]
        if head == "#":
            try:
                t = int(tok[1:])
            except ValueError:
                raise VcdError(f"token {self._tokens}: bad time stamp {tok!r}") from None
            if t < self._time:
                raise VcdError(f"token {self._tokens}: time goes back ({tok} after #{self._time})")
            self._time = self._end_time = t
        elif head in "01xXzZ":
            if len(tok) < 2:
                raise VcdError(f"token {self._tokens}: value {tok!r} without an id")
            self._change(tok[1:], None if head in "xXzZ" else int(head))
        elif head in "bBrR":
            self._awaiting_id = (head.lower(), tok[1:])
        else:
            raise VcdError(f"token {self._tokens}: unexpected {tok!r} at #{self._time}")

    def _change(self, ident: str, value: int | float | None) -> None:
        sigs = self._ids.get(ident)
        if sigs is None:
            raise VcdError(f"token {self._tokens}: value change for undeclared id {ident!r}")
        for s in sigs:
            s._add(self._time, value)

    def _end_section(self) -> None:
        name, words = self._section, self._section_words
        self._section, self._section_words = None, []
        if name == "$timescale":
            m = _TIMESCALE_RE.match(" ".join(words))
            if not m:
                raise VcdError(f"bad $timescale {' '.join(words)!r} (expected e.g. '1 ps')")
            self._timescale = int(m.group(1)) * _UNITS[m.group(2)]
        elif name == "$comment":
            self._comments.append(" ".join(words))
        elif name == "$scope":
            self._scope.append(words[1] if len(words) > 1 else "")
        elif name == "$upscope":
            if self._scope:
                self._scope.pop()
        elif name == "$var":
            self._var(words)
        elif name == "$enddefinitions":
            self._defs_done = True
        # $date, $version and unknown keyword sections: ignored

    def _var(self, words: list[str]) -> None:
        if len(words) < 4:
            raise VcdError(f"$var {' '.join(words)} $end: expected 'type size id name'")
        kind, size, ident, ref = words[0], words[1], words[2], words[3]
        try:
            width = int(size)
        except ValueError:
            raise VcdError(f"$var {' '.join(words)} $end: size {size!r} is not a number") from None
        name = ref if ref not in self._signals else ".".join([*self._scope, ref])
        sig = Signal(name, width, kind)
        self._signals[name] = sig
        self._ids.setdefault(ident, []).append(sig)


def _vector_value(bits: str, ident: str) -> int | None:
    if not bits or any(c not in "01xXzZ" for c in bits):
        raise VcdError(f"bad vector value b{bits} for id {ident!r}")
    if any(c in "xXzZ" for c in bits):
        return None
    return int(bits, 2)


def _real(text: str, ident: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise VcdError(f"bad real value r{text} for id {ident!r}") from None


def parse_vcd(text: str) -> Trace:
    """The trace of a whole VCD text."""
    p = VcdParser()
    p.feed(text)
    return p.close()


def read_vcd(path: str | os.PathLike) -> Trace:
    """Read a VCD file (in 1 MB chunks) into a :class:`Trace`."""
    p = VcdParser()
    with open(path, encoding="ascii", errors="replace") as f:
        while chunk := f.read(1 << 20):
            p.feed(chunk)
    return p.close()
