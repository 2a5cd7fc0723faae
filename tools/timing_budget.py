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

F_CPU_HZ = 16_000_000
TICK_CYCLES = F_CPU_HZ // 1000
RX_RING_BYTES = 256  # firmware_bridge/board/main.c RX_RING
PERIOD_MS = 10  # the least control period (messages.toml period_ms_min)
STEPS = 100  # about 1.1 s of back-to-back FIREs


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
            s = link.s
            ticks = [PERIOD_MS] * 16
            for k in range(1, steps + 1):
                for bank in (0, 1):
                    fields = dict(
                        session=link.session,
                        step=k,
                        valid_for_ms=0,
                        bank=bank,
                        mask=0xFFFF,
                        on_ticks=ticks,
                    )
                    s.queue("FIRE", s.next_seq(), 0, fields, time.monotonic_ns())
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


def budget_rows(stats: dict, hk: dict | None) -> list[Row]:
    """The table's rows from the harness's stats and the unit's last HK."""
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
    return rows


def render(rows: list[Row], stats: dict, steps: int) -> str:
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
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=STEPS, help=f"steps to fly (default {STEPS})")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args(argv)
    got = fly_max_rate(args.steps)
    rows = budget_rows(got["stats"], got["hk"])
    if args.json:
        print(json.dumps({"rows": [asdict(r) | {"margin": r.margin} for r in rows], **got}))
    # exit 1 when a limit is broken (a target missed is in the table, not an error)
    else:
        print(render(rows, got["stats"], args.steps))
    return 0 if all(r.margin >= 0 for r in rows if r.limit) else 1


if __name__ == "__main__":
    sys.exit(main())
