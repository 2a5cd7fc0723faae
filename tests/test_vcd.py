"""firmware_bridge/vcd.py: the VCD reader the pin evidence stands on (issue 17 item 2).

A small writer here produces standard VCD text (header, $dumpvars, #time, scalar and vector
changes); hypothesis checks that any set of traces survives the round trip, fed whole and in
arbitrary chunks, and the edge cases are spelled out one by one.
"""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from thruster_hil.firmware_bridge.vcd import VcdError, VcdParser, parse_vcd

ID_CHARS = "!\"#$%&'()*+,-./:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[]^_`abcdefghijklmnopqrstuvwxyz{|}~"


def _ident(i: int) -> str:
    out = ""
    while True:
        out += ID_CHARS[i % len(ID_CHARS)]
        i //= len(ID_CHARS)
        if not i:
            return out


def write_vcd(
    signals: dict[str, list[tuple[int, int | None]]],
    *,
    timescale: str = "1 ps",
    f_cpu_hz: int | None = 16_000_000,
    widths: dict[str, int] | None = None,
) -> str:
    """VCD text of ``signals`` (name -> [(time, value)], value None = x); each signal's first
    change must be at time 0 (it goes in $dumpvars)."""
    widths = widths or {}
    ids = {name: _ident(i) for i, name in enumerate(signals)}
    lines = [f"$timescale {timescale} $end"]
    if f_cpu_hz is not None:
        lines.append(f"$comment f_cpu_hz {f_cpu_hz} $end")
    lines.append("$scope module unit $end")
    for name in signals:
        lines.append(f"$var wire {widths.get(name, 1)} {ids[name]} {name} $end")
    lines += ["$upscope $end", "$enddefinitions $end", "#0", "$dumpvars"]

    def val(name: str, v: int | None) -> str:
        w = widths.get(name, 1)
        if w == 1:
            return f"{'x' if v is None else v}{ids[name]}"
        return f"b{'x' * w if v is None else format(v, 'b')} {ids[name]}"

    for name, changes in signals.items():
        assert changes[0][0] == 0
        lines.append(val(name, changes[0][1]))
    lines.append("$end")
    events = sorted((t, name, v) for name, ch in signals.items() for t, v in ch[1:])
    now = 0
    for t, name, v in events:
        if t != now:
            lines.append(f"#{t}")
            now = t
        lines.append(val(name, v))
    return "\n".join(lines) + "\n"


def _dedup(changes: list[tuple[int, int | None]]) -> list[tuple[int, int | None]]:
    out: list[tuple[int, int | None]] = []
    for t, v in changes:
        if out and out[-1][1] == v:
            continue
        out.append((t, v))
    return out


@st.composite
def traces(draw) -> dict[str, list[tuple[int, int | None]]]:
    n = draw(st.integers(1, 5))
    out = {}
    for i in range(n):
        times = sorted(draw(st.sets(st.integers(1, 10**9), max_size=12)))
        values = draw(
            st.lists(
                st.sampled_from([0, 1, None]), min_size=len(times) + 1, max_size=len(times) + 1
            )
        )
        out[f"valve{i}"] = list(zip([0, *times], values, strict=True))
    return out


@settings(max_examples=150, deadline=None)
@given(traces(), st.data())
def test_round_trip_whole_and_chunked(signals, data):
    text = write_vcd(signals)
    whole = parse_vcd(text)
    cuts = sorted(data.draw(st.sets(st.integers(0, len(text)), max_size=8)))
    p = VcdParser()
    prev = 0
    for c in [*cuts, len(text)]:
        p.feed(text[prev:c])
        prev = c
    chunked = p.close()
    for trace in (whole, chunked):
        assert set(trace.signals) == set(signals)
        for name, changes in signals.items():
            assert trace[name].changes == _dedup(changes)
        assert trace.f_cpu_hz == 16_000_000
        assert trace.timescale_s == Fraction(1, 10**12)


@settings(max_examples=100, deadline=None)
@given(traces())
def test_high_intervals_cover_exactly_the_ones(signals):
    trace = parse_vcd(write_vcd(signals))
    for name, changes in signals.items():
        end = max(t for ch in signals.values() for t, _ in ch) + 1
        intervals = trace[name].high_intervals()
        for t in sorted({t for t, _ in changes} | {end}):
            high = any(a <= t and (b is None or t < b) for a, b in intervals)
            assert high == (trace[name].value_at(t) == 1)
        # rises and falls alternate and never touch
        flat = [x for a, b in intervals for x in (a, b) if x is not None]
        assert flat == sorted(flat) and len(set(flat)) == len(flat)


def test_cycles_and_seconds_are_exact():
    trace = parse_vcd(write_vcd({"valve0": [(0, 0), (62_500 * 16_000, 1)]}))
    t_rise = trace["valve0"].high_intervals()[0][0]
    assert trace.cycles(t_rise) == 16_000
    assert trace.seconds(t_rise) == pytest.approx(1e-3)
    assert trace.time_of_cycle(16_000) == t_rise


def test_vectors_reals_aliases_and_scopes():
    text = """$date today $end
$version simavr harness $end
$timescale 10ns $end
$scope module top $end
$var wire 8 % uart_rx $end
$var real 64 ^ vdd $end
$var wire 1 ! pin $end
$var wire 1 ! pin_alias $end
$scope module sub $end
$var wire 1 & pin $end
$upscope $end
$upscope $end
$enddefinitions $end
#0
$dumpvars b0 % r3.3 ^ 0! 1& $end
#5
b1010 % 1!
#7
bx1 % r1.5 ^ z!
#9
$dumpoff x! $end
"""
    trace = parse_vcd(text)
    assert trace.timescale_s == Fraction(1, 10**8)
    assert trace["uart_rx"].changes == [(0, 0), (5, 10), (7, None)]
    assert trace["vdd"].changes == [(0, 3.3), (7, 1.5)]
    assert trace["pin"].changes == trace["pin_alias"].changes == [(0, 0), (5, 1), (7, None)]
    assert trace["top.sub.pin"].changes == [(0, 1)]
    assert trace.end_time == 9 and trace.f_cpu_hz is None
    with pytest.raises(VcdError, match="f_cpu_hz"):
        trace.cycles(5)


def test_still_high_at_the_end_and_repeats():
    trace = parse_vcd(
        write_vcd({"valve3": [(0, 1), (10, 1), (20, 0), (30, 1), (40, 1)]}, f_cpu_hz=None)
    )
    assert trace["valve3"].high_intervals() == [(0, 20), (30, None)]
    assert trace["valve3"].edges() == [(20, 0), (30, 1)]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("$timescale 3 ps $end", "bad \\$timescale"),
        ("$var wire 1 ! a $end $enddefinitions $end #0 1?", "undeclared id '\\?'"),
        ("$var wire 1 ! a $end #5 0! #4 1!", "time goes back"),
        ("$var wire 1 ! a $end #x", "bad time stamp"),
        ("$comment never closed", "ends inside \\$comment"),
        ("$var wire 4 ! a $end b10", "no id"),
        ("$var wire 4 ! a $end b102 !", "bad vector value"),
        ("$var wire one ! a $end", "is not a number"),
        ("$end", "without a section"),
        ("$var wire 1 ! a $end hello", "unexpected 'hello'"),
    ],
)
def test_bad_text_names_what_and_where(text, message):
    with pytest.raises(VcdError, match=message):
        parse_vcd(text)
