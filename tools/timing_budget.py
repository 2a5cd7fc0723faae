"""The firmware's timing budget in CPU cycles, measured under simavr (issue 17 item 3).

    python tools/timing_budget.py              # the table for docs/bench.md, "Timing budget"
    python tools/timing_budget.py --json       # the figures as one JSON object

It flies the maximum FIRE rate against the board firmware under simavr: a REALTIME session at the
least control period (10 ms), every channel of both banks commanded every step, the host writing
each step's two FIREs back to back with no wait (so the line carries FIREs without a gap, as fast
as 115200 bit/s allows), the unit's housekeeping (HK, every 100 ms) and its two VALVE_REPORTs a
step going the other way on top. The harness's stats file (firmware_bridge/board/simavr_unit.c)
gives the figures; the unit's own last HK gives its UART error count.

Each row has a budget and the margin left; a "limit" broken loses data or a tick (exit 1), a
"target" missed weakens a timing claim (in the table only):

- tick ISR latency (TIMER1_COMPA pending -> running): 16,000 cycles, one tick. A compare match
  not serviced before the next one is a lost millisecond (OCF1A holds one).
- tick ISR duration: it switches the valves whose tick has come (pulse starts and ends) and
  applies the link watchdog (main.c, "Pin timing"); its scan for the next edge runs with
  interrupts on, so the figure includes the RX/UDRE interrupts it let in.
- interrupts off, the longest stretch (the harness's irq_off, interrupt handlers included): under
  one frame of the line (1,360 cycles), so a received byte is read before the next one is
  complete (simavr's USART, unlike the chip's 2-byte FIFO, hands a backlog over at the line rate
  and never catches up) and a tick edge is applied within a tenth of a tick.
- the main loop never waits for the wire: the harness counts the WDRs uart_send executes while
  the TX ring (2 KB) is full; none at this rate.
- main loop, worst pass with 32 channels, two budgets: the receive ring (256 bytes) must be
  drained before it fills, so a pass must last fewer than 256 byte times; and a target of one
  tick, 16,000 cycles, for how soon the next FIRE or a STOP_ALL is taken. Pulse edges and the
  link watchdog do not wait for it: the tick interrupt switches those pins.
- UART RX: each byte read by its interrupt before a third arrives (the USART holds two), two
  frame times of the real line (10 bits at UBRR0 16 with U2X: 1,360 cycles each); no overrun
  (the harness's FIFO model) and no UART error on the unit (HK uart_overruns).
- stack: the high-water mark against the RAM free above .bss/.noinit.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from thruster_hil.firmware_bridge.pinevidence import STOP_ALL_BOUND_US  # last byte -> pins low

F_CPU_HZ = 16_000_000
TICK_CYCLES = F_CPU_HZ // 1000
RX_RING_BYTES = 256  # firmware_bridge/board/main.c RX_RING
PERIOD_MS = 10  # the least control period (messages.toml period_ms_min)
STEPS = 100  # about 1.1 s of back-to-back FIREs
#: Where a STOP_ALL is written into the maximum-rate flight, as (name, behind, pad): right
#: behind bank 0's FIRE (bank 1's is not sent) or bank 1's, then ``pad`` lone delimiters (0x00,
#: nothing to the unit's decoder: one byte time, 85 us, each) before it, so its arrival sweeps
#: the passes that take the FIREs in front of it, and (60-72 B) the ends of the pulses no later
#: FIRE cuts.
STOP_POINTS = (
    ("behind bank 0", 0, 0),
    ("behind bank 1", 1, 0),
    ("bank 1 + 6 B", 1, 6),
    ("bank 1 + 12 B", 1, 12),
    ("bank 1 + 18 B", 1, 18),
    ("bank 1 + 30 B", 1, 30),
    ("bank 1 + 45 B", 1, 45),
    ("bank 1 + 60 B", 1, 60),
    ("bank 1 + 66 B", 1, 66),  # bank 0's pulses end on their own about here (no next step)
    ("bank 1 + 72 B", 1, 72),
)
WARM_STEPS = 8  # maximum-rate steps before each STOP_ALL (every pass at its steady length)


@dataclass(frozen=True)
class Row:
    """One line of the budget table (cycles unless ``unit`` says otherwise)."""

    item: str
    measured: int
    budget: int
    unit: str
    why: str
    limit: bool = True  # a hard limit (data lost or a tick missed past it), else a target

    @property
    def margin(self) -> int:
        return self.budget - self.measured


def _queue_fire(link, step: int, bank: int, ticks: list[int]) -> None:
    """One bank's FIRE of every channel, queued straight to the wire (the session's queue; the
    caller flushes): valid_for_ms 0, no staleness check."""
    fields = dict(
        session=link.session, step=step, valid_for_ms=0, bank=bank, mask=0xFFFF, on_ticks=ticks
    )
    link.s.queue("FIRE", link.s.next_seq(), 0, fields, time.monotonic_ns())


def fly_max_rate(steps: int = STEPS, out_dir: Path | None = None) -> dict:
    """Run the maximum-rate scenario; returns {"stats": harness stats, "hk": the unit's last HK
    fields, "steps": steps}."""
    from thruster_hil.firmware_bridge.link import Link
    from thruster_hil.firmware_bridge.simavr import SimavrUnit

    tmp = Path(out_dir) if out_dir is not None else Path(tempfile.mkdtemp(prefix="budget-"))
    with SimavrUnit(stats_path=tmp / "stats.json") as unit:
        link = Link(unit.port)
        try:
            link.connect(mode="realtime", period_ms=PERIOD_MS)
            link.arm(max_on_ticks=PERIOD_MS)
            # The FIREs go straight to the wire (the session's queue, one write a step): the
            # Link's REALTIME fire() would wait for reports and call the link lost when they
            # lag behind a line this full. valid_for_ms 0: no staleness check.
            ticks = [PERIOD_MS] * 16
            for k in range(1, steps + 1):
                for bank in (0, 1):
                    _queue_fire(link, k, bank, ticks)
                link._flush()  # blocks while the pty is full: the line paces the host
            hk = link.wait_hk(after_ns=time.monotonic_ns(), timeout_s=10.0)
        finally:
            link.close(confirm_timeout_s=2.0)
            unit.stop()
        stats = unit.stats()
    return {
        "stats": stats,
        "hk": dict(hk.msg.fields) if hk is not None else None,
        "steps": steps,
    }


def fly_stop_all_at_max_rate(
    points=STOP_POINTS, rounds: int = 1, warm: int = WARM_STEPS, out_dir: Path | None = None
) -> dict:
    """STOP_ALL's latency at the maximum FIRE rate, judged on the pins: for each point of
    ``points`` (``rounds`` times) the unit flies ``warm`` maximum-rate steps (as
    :func:`fly_max_rate`), the last one's write ending in a STOP_ALL at that point, and is armed
    again once it went SAFE. Each STOP_ALL is timed from its last byte at the UART (the
    harness's byte log) to every valve pin low (the VCD), in simulated cycles. Returns
    {"trials": [{"point", "t0", "closure_cycles", "pins_high_at_t0", "ok"}], "stats"}."""
    from thruster_hil.firmware_bridge import pinevidence as pe
    from thruster_hil.firmware_bridge.dictionary import EVENT
    from thruster_hil.firmware_bridge.link import Link
    from thruster_hil.firmware_bridge.simavr import SimavrUnit
    from thruster_hil.firmware_bridge.vcd import read_vcd

    tmp = Path(out_dir) if out_dir is not None else Path(tempfile.mkdtemp(prefix="stopall-"))
    vcd, ulog, stats_p = tmp / "pins.vcd", tmp / "uart.log", tmp / "stats.json"
    chunks: list[tuple[str, int, bytes]] = []
    plan = [pt for _ in range(rounds) for pt in points]
    with SimavrUnit(
        vcd_path=vcd, stats_path=stats_p, uart_log_path=ulog, pass_log_path=tmp / "passes.log"
    ) as unit:
        link = Link(unit.port, on_bytes=lambda d, t, b: chunks.append((d, t, bytes(b))))
        try:
            link.connect(mode="realtime", period_ms=PERIOD_MS)
            s = link.s
            step = 0
            ticks = [PERIOD_MS] * 16
            safe = EVENT["SAFE_ENTERED"]
            for _name, behind, pad in plan:
                link.arm(max_on_ticks=PERIOD_MS, next_step=step + 1)
                for k in range(warm):
                    step += 1
                    for bank in (0, 1):
                        if k == warm - 1 and bank > behind:
                            break
                        _queue_fire(link, step, bank, ticks)
                    if k < warm - 1:
                        link._flush()
                for _ in range(pad):
                    s.resync()  # a lone 0x00
                n_safe = sum(e.msg["event"] == safe for e in link.events())
                s.stop_all(time.monotonic_ns())  # queued behind the step's FIREs: one write
                link._flush(force=True)
                deadline = time.monotonic_ns() + 10_000_000_000
                link._run(
                    s.wait_for(
                        lambda n=n_safe: sum(e.msg["event"] == safe for e in link.events()) > n,
                        deadline,
                        checks=False,
                    )
                )
            link.wait_hk(after_ns=time.monotonic_ns(), timeout_s=10.0)  # every pin in the trace
        finally:
            link.on_bytes = None
            link.close(confirm_timeout_s=2.0)
            unit.stop()
        stats = unit.stats()
    rec = pe.WireRecord.from_chunks(chunks)
    arrivals = pe.frame_arrivals(rec, pe.parse_uart_log(ulog.read_text()))
    pulses = pe.valve_pulses(read_vcd(vcd))
    # each trial's first STOP_ALL (Link sends a RETRANSMIT copy) and the next frame after it
    firsts = [
        i
        for i, x in enumerate(rec.sent)
        if x.msg.name == "STOP_ALL" and (i == 0 or rec.sent[i - 1].msg.name != "STOP_ALL")
    ]
    assert len(firsts) == len(plan), (len(firsts), len(plan))
    trials = []
    for (name, _b, _p), i in zip(plan, firsts, strict=True):
        t0 = arrivals[i]
        nxt = min(
            (arrivals[j] for j in range(i + 2, len(rec.sent)) if j in arrivals),
            default=None,
        )
        mine = [p for p in pulses if nxt is None or p.rise < nxt]
        v = pe.judge_closed_after(
            "STOP_ALL at the maximum rate",
            mine,
            t0,
            pe.CYCLES_PER_US * STOP_ALL_BOUND_US,
            "STOP_ALL's last byte",
            rises_until=nxt,
        )
        trials.append(
            {
                "point": name,
                "t0": t0,
                "closure_cycles": v.numbers["closure_cycles"],
                "pins_high_at_t0": v.numbers["pins_high_at_t0"],
                "ok": v.ok,
                "problems": v.problems,
            }
        )
    return {"trials": trials, "stats": stats, "dir": str(tmp)}


def stop_all_row(stop: dict) -> Row:
    """The STOP_ALL row: the worst of :func:`fly_stop_all_at_max_rate`'s trials."""
    worst = max(stop["trials"], key=lambda t: t["closure_cycles"])
    return Row(
        "STOP_ALL last byte -> every pin low, at the maximum rate",
        worst["closure_cycles"],
        STOP_ALL_BOUND_US * F_CPU_HZ // 1_000_000,
        "cycles",
        f"STOP_ALL_BOUND_US (1,000 us; worst: {worst['point']}, of {len(stop['trials'])})",
    )


def budget_rows(stats: dict, hk: dict | None, stop: dict | None = None) -> list[Row]:
    """The table's rows from the harness's stats and the unit's last HK (and the STOP_ALL
    flight's, :func:`fly_stop_all_at_max_rate`)."""
    tick = stats["interrupts"]["TIMER1_COMPA"]
    rx = stats["uart_rx"]
    line = rx["frame_cycles"]  # the real line's frame: the harness feeds bytes at it
    stack = stats["stack"]
    free = stack["ramend"] - stack["end_of_data"] + 1
    pass_max = stats["main_loop"]["pass_max_cycles"]
    off = stats["irq_off"]
    rows = [
        Row(
            "tick ISR latency (TIMER1_COMPA)",
            tick["latency_max_cycles"],
            TICK_CYCLES,
            "cycles",
            "serviced before the next compare match (1 ms)",
        ),
        Row(
            "tick ISR duration",
            tick["duration_max_cycles"],
            TICK_CYCLES,
            "cycles",
            "done before the next compare match",
        ),
        Row(
            "interrupts off, longest stretch",
            off["max_cycles"],
            line,
            "cycles",
            f"a received byte read before the next one is complete (1 frame; worst in "
            f"{off['max_from'] or '?'})",
        ),
        Row(
            "main loop waits for the wire (WDRs in uart_send)",
            stats["main_loop"]["wire_wait_wdrs"],
            0,
            "count",
            "no pass waits for a full TX ring (2 KB)",
        ),
        Row(
            "main loop, worst pass, in byte times",
            -(-pass_max // rx["frame_cycles"]),
            RX_RING_BYTES,
            "bytes",
            "the 256-byte receive ring drained before it fills",
        ),
        Row(
            "main loop, worst pass, 32 channels",
            pass_max,
            TICK_CYCLES,
            "cycles",
            "target: the next FIRE/STOP_ALL taken within a tick (edges, watchdog: tick ISR)",
            limit=False,
        ),
        Row(
            "UART RX: byte arrival -> RX ISR",
            rx["wait_max_cycles"],
            2 * line,
            "cycles",
            f"read before a third byte completes (2 frames of {line} cycles)",
        ),
        Row("UART RX overruns (harness)", rx["overruns"], 0, "bytes", "none at the maximum rate"),
        Row(
            "UART errors (unit HK uart_overruns)",
            hk["uart_overruns"] if hk else -1,
            0,
            "count",
            "DOR + FE + ring drops on the unit",
        ),
        Row("stack high-water mark", stack["hwm_bytes"], free, "bytes", "RAM above .bss/.noinit"),
    ]
    if stop is not None:
        rows.append(stop_all_row(stop))
    return rows


def render(rows: list[Row], stats: dict, steps: int, stop: dict | None = None) -> str:
    """docs/bench.md's table."""
    lines = [
        "| item | measured | budget | margin | budget because | kind |",
        "|---|---:|---:|---:|---|---|",
    ]
    for r in rows:
        u = "" if r.unit == "cycles" else f" {r.unit}"
        lines.append(
            f"| {r.item} | {r.measured:,}{u} | {r.budget:,}{u} | {r.margin:,}{u} | {r.why} "
            f"| {'limit' if r.limit else 'target'} |"
        )
    rx = stats["uart_rx"]
    lines.append("")
    lines.append(
        f"Scenario: {steps} REALTIME steps at {PERIOD_MS} ms, 32 channels x {PERIOD_MS} ms each "
        f"step, both banks' FIREs written back to back; {rx['bytes']:,} bytes received, "
        f"{stats['sim_s']:.2f} s simulated, {stats['cycles']:,} cycles, "
        f"{rx['frame_cycles']:,} cycles a byte (115200 bit/s nominal, UBRR0 16 with U2X, 8N1)."
    )
    if stop is not None:
        lines.append("")
        lines.append(
            f"STOP_ALL at the maximum rate ({WARM_STEPS} steps before each; last byte -> every "
            "pin low, cycles): "
            + ", ".join(f"{t['point']} {t['closure_cycles']:,}" for t in stop["trials"])
            + f"; its flight's worst pass {stop['stats']['main_loop']['pass_max_cycles']:,}."
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=STEPS, help=f"steps to fly (default {STEPS})")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args(argv)
    got = fly_max_rate(args.steps)
    stop = fly_stop_all_at_max_rate()
    rows = budget_rows(got["stats"], got["hk"], stop)
    if args.json:
        print(
            json.dumps(
                {
                    "rows": [asdict(r) | {"margin": r.margin} for r in rows],
                    **got,
                    "stop_all": stop,
                }
            )
        )
    # exit 1 when a limit is broken (a target missed is in the table, not an error)
    else:
        print(render(rows, got["stats"], args.steps, stop))
    return 0 if all(r.margin >= 0 for r in rows if r.limit) else 1


if __name__ == "__main__":
    sys.exit(main())
