"""Lockstep HIL loop speed against the raw pseudo-terminal round-trip rate, in one run.

1. Raw: a trivial echo peer (a separate process holding a raw pty master) sends back every byte;
   the host writes a 50-byte COBS frame through pyserial and reads until its delimiter, as the
   link's reader does (``read(in_waiting or 1)``). Round trips per second.
2. Loop: the full lockstep HIL reboost (controller + plant + link + the emulator process) of each
   stack: control cycles per second.
3. The ratio loop / raw. A stack with more than 16 thrusters needs two FIRE/VALVE_REPORT
   exchanges (two banks) per cycle.

Usage::

    python benchmarks/link_loop.py [--json] [--round-trips N]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import serial

from firmware_bridge.codec import encode
from firmware_bridge.hil import open_unit
from sims.runner import run_burn
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


def raw_round_trips(n: int) -> float:
    peer = subprocess.Popen([sys.executable, "-c", ECHO_PEER], stdout=subprocess.PIPE)
    try:
        path = peer.stdout.readline().decode().strip()
        port = serial.serial_for_url(path, exclusive=True, timeout=1.0)
        frame = encode("FIRE", 1, 0, session=1, step=1, valid_for_ms=500, bank=0, mask=0xFFFF,
                       on_ticks=list(range(101, 117)))
        frame = frame[:49] + b"\x00" if len(frame) > 50 else frame
        frame = frame.rstrip(b"\x00").ljust(49, b"\x01") + b"\x00"  # exactly 50 bytes
        assert len(frame) == 50

        def once():
            port.write(frame)
            got = b""
            while not got.endswith(b"\x00"):
                got += port.read(port.in_waiting or 1)

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


def hil_cycles_per_s(stack: str) -> dict:
    model = build_stack_model(load_stack(stack))
    plan = plan_burn(stack, Target("raise_perigee", 1.6))
    run_burn(model, plan)  # warm the kernels
    unit = open_unit(unit="emulator", port=None, mode="lockstep",
                     n_thrusters=len(model.thruster_names),
                     period_ms=int(round(model.control_period_s * 1000)))
    # The loop's own clock: from the end of the first cycle (which also loads the kernels) to
    # the end of the last, so neither start-up nor closing the unit is counted.
    stamps = []
    s = run_burn(model, plan, unit=unit,
                 on_cycle=lambda k, _info: stamps.append(time.perf_counter())).summary
    rate = (len(stamps) - 1) / (stamps[-1] - stamps[0])
    return {"thrusters": len(model.thruster_names), "banks": (len(model.thruster_names) + 15) // 16,
            "cycles": s["cycles"], "loop_cycles_per_s": round(rate, 1),
            "rtt_ms_p50": s["link"]["rtt_ms_p50"], "rtt_ms_p99": s["link"]["rtt_ms_p99"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--round-trips", type=int, default=3000)
    args = ap.parse_args(argv)
    raw_before = raw_round_trips(args.round_trips)
    stacks = {name: hil_cycles_per_s(name) for name in list_stacks()}
    raw_after = raw_round_trips(args.round_trips)
    raw = 0.5 * (raw_before + raw_after)
    default = stacks["dragon-boost-kit"]
    for row in stacks.values():
        row["ratio"] = round(row["loop_cycles_per_s"] / raw, 3)
    out = {"raw_pty_round_trips_per_s": round(raw, 1),
           "loop_cycles_per_s": default["loop_cycles_per_s"], "ratio": default["ratio"],
           "stack": "dragon-boost-kit", "stacks": stacks}
    if args.json:
        print(json.dumps(out))
    else:
        print(f"raw pty round trips (50 B, echo peer): {raw:10.0f} /s")
        for name, row in stacks.items():
            print(f"{name:18s} {row['thrusters']:3d} thrusters ({row['banks']} bank(s)): "
                  f"{row['loop_cycles_per_s']:8.0f} cycles/s  ratio {row['ratio']:.2f}  "
                  f"RTT p50 {row['rtt_ms_p50']:.3f} ms p99 {row['rtt_ms_p99']:.3f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
