"""Lockstep HIL loop speed against the raw pseudo-terminal round-trip rate, in one run.

1. Raw: a trivial echo peer (a separate process holding a raw pty master) sends back every byte;
   the host writes a 50-byte COBS frame through pyserial and reads until its delimiter the way
   the link's reader does (``select`` on the port's descriptor, then ``os.read`` of what is
   there). Round trips per second.
2. Loop: the full lockstep HIL reboost (controller + plant + link + the emulator process) of each
   stack: control cycles per second, timed from the loop's own per-cycle stamps (the first
   cycle, which loads the kernels, and closing the unit are not counted).
3. The ratio loop / raw. A stack with more than 16 thrusters sends two FIREs (two banks) per
   cycle, in one write.
4. The ceiling of that ratio on this machine: the same burn stepped cycle by cycle from Python
   with the ideal in-process unit (the controller and the plant, no wire) takes ``t_sil`` per
   cycle, and a lockstep HIL cycle cannot take less than ``t_sil`` plus one raw round trip
   ``t_raw``, so loop / raw <= t_raw / (t_raw + t_sil) even with a wire and a unit that cost
   nothing. ``link_overhead_us`` is what the wire, the host session and the unit add per cycle:
   1/loop - 1/raw - 1/sil.

Placement. The unit stands in for a board, which has a processor of its own: the peer (echo or
emulator) runs on one CPU and the host process on another, for the raw measurement and the loop
alike. Left to the scheduler, the same raw measurement swings between ~14,000/s (host and peer on
different CPUs: every hand-over wakes an idle virtual CPU) and ~37,000/s (both on one CPU,
which happens when something else keeps the other CPU busy), so a ratio of unpinned figures
says more about the machine's load than about the loop. ``--no-pin`` measures unpinned anyway;
on a one-CPU machine nothing is pinned.

Rounds. Raw and loop are measured alternately, ``--rounds`` times; each round's ratio uses the
mean of the raw rates measured just before and just after its loops, and the reported figures are
the medians over rounds.

Usage::

    python benchmarks/link_loop.py [--json] [--rounds N] [--round-trips N] [--no-pin]
"""

from __future__ import annotations

import argparse
import json
import os
import select
import statistics
import subprocess
import sys
import time

import serial
from thruster_hil.firmware_bridge.codec import encode
from thruster_hil.firmware_bridge.emulator import EmulatorProcess

from thruster_hil.closedloop.fused import warm_up
from thruster_hil.closedloop.hil import open_unit
from thruster_hil.closedloop.runner import run_burn
from thruster_hil.config import build_stack_model, list_stacks, load_stack
from thruster_hil.plan import Target, plan_burn

ECHO_PEER = r"""
import os, sys, tty
master, slave = os.openpty()
tty.setraw(master); tty.setraw(slave)
print(os.ttyname(slave), flush=True)
while True:
    data = os.read(master, 4096)
    if not data:
        break
    os.write(master, data)
"""


def placement(pin: bool) -> tuple[set[int] | None, set[int] | None]:
    """(host CPUs, peer CPUs), or (None, None) to leave placement to the scheduler."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if not pin or len(cpus) < 2:
        return None, None
    return {cpus[0]}, {cpus[1]}


def _pin_peer(pid: int, peer_cpus: set[int] | None) -> None:
    if peer_cpus is not None:
        os.sched_setaffinity(pid, peer_cpus)


def raw_round_trips(n: int, peer_cpus: set[int] | None = None) -> float:
    peer = subprocess.Popen([sys.executable, "-c", ECHO_PEER], stdout=subprocess.PIPE)
    try:
        _pin_peer(peer.pid, peer_cpus)
        path = peer.stdout.readline().decode().strip()
        port = serial.serial_for_url(path, exclusive=True, timeout=1.0)
        frame = encode(
            "FIRE",
            1,
            0,
            session=1,
            step=1,
            valid_for_ms=500,
            bank=0,
            mask=0xFFFF,
            on_ticks=list(range(101, 117)),
        )
        frame = frame.rstrip(b"\x00")[:49].ljust(49, b"\x01") + b"\x00"  # exactly 50 bytes
        assert len(frame) == 50

        fd = port.fileno()

        def once():
            port.write(frame)
            got = b""
            while not got.endswith(b"\x00"):
                select.select([fd], [], [], 1.0)
                got += os.read(fd, 4096)

        for _ in range(200):
            once()
        t0 = time.perf_counter()
        for _ in range(n):
            once()
        rate = n / (time.perf_counter() - t0)
        port.close()
        return rate
    finally:
        peer.kill()
        peer.wait()


class Stack:
    def __init__(self, name: str):
        self.name = name
        self.model = build_stack_model(load_stack(name))
        self.plan = plan_burn(name, Target("raise_perigee", 1.6))
        warm_up(self.model, self.plan)  # compile the cycle before a unit is armed
        self.n = len(self.model.thruster_names)

    def sil_stepped(self) -> float:
        """Cycles per second of the same burn cycle by cycle with the ideal in-process unit."""
        stamps: list[float] = []
        s = run_burn(
            self.model, self.plan, on_cycle=lambda k, _info: stamps.append(time.perf_counter())
        ).summary
        assert s["completed"], s
        return (len(stamps) - 1) / (stamps[-1] - stamps[0])

    def loop(self, peer_cpus: set[int] | None) -> dict:
        stamps: list[float] = []
        with EmulatorProcess() as emu:
            _pin_peer(emu.pid, peer_cpus)
            unit = open_unit(
                unit="emulator",
                port=emu.port,
                mode="lockstep",
                n_thrusters=self.n,
                period_ms=int(round(self.model.control_period_s * 1000)),
            )
            s = run_burn(
                self.model,
                self.plan,
                unit=unit,
                on_cycle=lambda k, _info: stamps.append(time.perf_counter()),
            ).summary
        assert s["completed"] and not s["aborted"], s
        return {
            "cycles": s["cycles"],
            "loop_cycles_per_s": (len(stamps) - 1) / (stamps[-1] - stamps[0]),
            "rtt_ms_p50": s["link"]["rtt_ms_p50"],
            "rtt_ms_p99": s["link"]["rtt_ms_p99"],
        }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--round-trips", type=int, default=3000)
    ap.add_argument(
        "--no-pin",
        action="store_true",
        help="leave the host and the peer where the scheduler puts them",
    )
    args = ap.parse_args(argv)
    host_cpus, peer_cpus = placement(not args.no_pin)
    if host_cpus is not None:
        os.sched_setaffinity(0, host_cpus)  # before any thread: the link's reader inherits it
    stacks = [Stack(name) for name in list_stacks()]
    raws: list[float] = []
    rounds: dict[str, list[dict]] = {s.name: [] for s in stacks}
    raw_before = raw_round_trips(args.round_trips, peer_cpus)
    for _ in range(args.rounds):
        rows = {s.name: s.loop(peer_cpus) for s in stacks}
        for s in stacks:
            rows[s.name]["sil_stepped_cycles_per_s"] = s.sil_stepped()
        raw_after = raw_round_trips(args.round_trips, peer_cpus)
        raw = 0.5 * (raw_before + raw_after)
        raws.append(raw)
        for name, row in rows.items():
            row["ratio"] = row["loop_cycles_per_s"] / raw
            sil = row["sil_stepped_cycles_per_s"]
            row["ratio_ceiling"] = 1.0 / (1.0 + raw / sil)
            row["link_overhead_us"] = 1e6 / row["loop_cycles_per_s"] - 1e6 / raw - 1e6 / sil
            rounds[name].append(row)
        raw_before = raw_after

    def med(rows: list[dict], key: str) -> float:
        return statistics.median(r[key] for r in rows)

    table = {}
    for s in stacks:
        rows = rounds[s.name]
        table[s.name] = {
            "thrusters": s.n,
            "banks": (s.n + 15) // 16,
            "cycles": rows[0]["cycles"],
            "loop_cycles_per_s": round(med(rows, "loop_cycles_per_s"), 1),
            "ratio": round(med(rows, "ratio"), 3),
            "ratio_min": round(min(r["ratio"] for r in rows), 3),
            "ratio_max": round(max(r["ratio"] for r in rows), 3),
            "sil_stepped_cycles_per_s": round(med(rows, "sil_stepped_cycles_per_s"), 1),
            "ratio_ceiling": round(med(rows, "ratio_ceiling"), 3),
            "link_overhead_us": round(med(rows, "link_overhead_us"), 1),
            "rtt_ms_p50": round(med(rows, "rtt_ms_p50"), 4),
            "rtt_ms_p99": round(med(rows, "rtt_ms_p99"), 4),
        }
    default = table["dragon-boost-kit"]
    out = {
        "raw_pty_round_trips_per_s": round(statistics.median(raws), 1),
        "raw_min": round(min(raws), 1),
        "raw_max": round(max(raws), 1),
        "loop_cycles_per_s": default["loop_cycles_per_s"],
        "ratio": default["ratio"],
        "ratio_ceiling": default["ratio_ceiling"],
        "link_overhead_us": default["link_overhead_us"],
        "stack": "dragon-boost-kit",
        "rounds": args.rounds,
        "placement": (
            "unpinned"
            if host_cpus is None
            else f"host on CPU {min(host_cpus)}, peer on CPU {min(peer_cpus)}"
        ),
        "stacks": table,
    }
    if args.json:
        print(json.dumps(out))
    else:
        print(f"placement: {out['placement']}; {args.rounds} rounds, medians")
        print(
            f"raw pty round trips (50 B, echo peer): {out['raw_pty_round_trips_per_s']:10.0f} /s"
            f"  (min {out['raw_min']:.0f}, max {out['raw_max']:.0f})"
        )
        for name, row in table.items():
            print(
                f"{name:18s} {row['thrusters']:3d} thrusters ({row['banks']} bank(s)): "
                f"{row['loop_cycles_per_s']:8.0f} cycles/s  ratio {row['ratio']:.2f} "
                f"({row['ratio_min']:.2f}..{row['ratio_max']:.2f}) of ceiling "
                f"{row['ratio_ceiling']:.2f}, link adds {row['link_overhead_us']:.0f} us  RTT p50 "
                f"{row['rtt_ms_p50']:.3f} ms p99 {row['rtt_ms_p99']:.3f} ms"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
