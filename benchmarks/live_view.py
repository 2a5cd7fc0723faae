"""What watching costs: lockstep cycles per second of `thruster-hil run` plain, with the progress
bar and with --live, on the sim unit and through the emulator, in one run.

Each variant runs the real command in a subprocess with its stderr on a pseudo-terminal (so the
bar and the live view really draw, at their own refresh rates, while this process drains the
terminal) and reads cycles_per_s from the run's summary.json. The variants are interleaved,
``--runs`` times each; the median is reported with its ratio to the plain run. Usage::

    python benchmarks/live_view.py [--json] [--runs N]
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import pty
import select
import statistics
import struct
import subprocess
import sys
import tempfile
import termios
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: The burns: long enough for the live view to redraw many times (dragon-boost-kit, 0.5 s cycles).
BURNS = {"sim": ["--delta-v", "10"], "emulator": ["--delta-v", "5"]}
VARIANTS = {"plain": ["--json"], "progress bar": [], "--live": ["--live", "--json"]}


def _run(argv: list[str], out: Path) -> dict:
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    env = dict(os.environ, PYTHONPATH=str(ROOT), TERM="xterm-256color")
    proc = subprocess.Popen(
        [sys.executable, "-m", "thruster_hil.cli", "run", *argv, "--out", str(out)],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=slave,
    )
    os.close(slave)
    drawn = 0
    while True:  # drain the terminal so the drawing never blocks on a full pty buffer
        r, _, _ = select.select([master], [], [], 1.0)
        if r:
            try:
                data = os.read(master, 1 << 16)
            except OSError:
                break
            if not data:
                break
            drawn += len(data)
        elif proc.poll() is not None:
            break
    os.close(master)
    if proc.wait() != 0:
        raise SystemExit(f"run {' '.join(argv)} failed with status {proc.returncode}")
    summary = json.loads((out / "summary.json").read_text())
    return {
        "cycles_per_s": summary["cycles_per_s"],
        "cycles": summary["cycles"],
        "terminal_bytes": drawn,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args(argv)
    out: dict = {"units": {}}
    with tempfile.TemporaryDirectory() as tmp:
        n = 0
        for unit, burn in BURNS.items():
            base = ["--unit", unit, "--stack", "dragon-boost-kit", *burn]
            samples: dict[str, list[dict]] = {v: [] for v in VARIANTS}
            for _ in range(args.runs):
                for variant, extra in VARIANTS.items():
                    n += 1
                    samples[variant].append(_run(base + extra, Path(tmp) / f"run{n}"))
            plain = statistics.median(s["cycles_per_s"] for s in samples["plain"])
            out["units"][unit] = {
                variant: {
                    "cycles": runs[0]["cycles"],
                    "cycles_per_s_median": round(
                        statistics.median(s["cycles_per_s"] for s in runs)
                    ),
                    "ratio_to_plain": round(
                        statistics.median(s["cycles_per_s"] for s in runs) / plain, 3
                    ),
                    "terminal_bytes_median": round(
                        statistics.median(s["terminal_bytes"] for s in runs)
                    ),
                }
                for variant, runs in samples.items()
            }
    if args.json:
        print(json.dumps(out))
    else:
        for unit, rows in out["units"].items():
            for variant, row in rows.items():
                print(
                    f"{unit:9s} {variant:13s} {row['cycles']:6d} cycles "
                    f"{row['cycles_per_s_median']:8d} cycles/s  x{row['ratio_to_plain']:.3f}  "
                    f"{row['terminal_bytes_median']:8d} bytes drawn"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
