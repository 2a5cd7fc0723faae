"""What telemetry out costs: lockstep cycles per second of `thruster-hil run` without and with
``--stream udp://127.0.0.1:PORT`` (issue 16: at most 5 % fewer), in one process.

The real command (``thruster_hil.cli.main``, records and all) flies the same burn in this process,
the variants interleaved ``--runs`` times each, and cycles_per_s is read from each run's
summary.json (the runner's own count: the first cycle, which loads the kernels, is not timed).
Variants: ``plain`` (no stream: the baseline); ``stream, batch reader`` (to a UDP socket that a
receiver process drains every 5 ms, as a ground system's link thread with a buffer does); ``stream,
recv() per datagram`` (a receiver blocked in recv(), woken by every datagram: the kernel's wake-up
is paid in the sending process); ``stream, nobody listening`` (to a port with no socket: every
other send fails with ECONNREFUSED after the kernel's ICMP port-unreachable, dropped and counted).
Each receiver counts what it got, which must equal the datagrams sent. The median of each is
reported with its ratio to the plain median. Usage::

    python benchmarks/stream.py [--json] [--runs N] [--unit sim|emulator] [--delta-v MPS]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

#: A receiver in its own process (the ground system): counts datagrams until one says END.
#: ``poll`` mode drains the socket every 5 ms (a batch reader: no wake-up per datagram);
#: ``block`` mode waits in recv() for each datagram, as a simple script does.
RECEIVER = """
import select, socket, sys, time
poll = sys.argv[1] == "poll"
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1], flush=True)
n = 0
while True:
    if poll:
        time.sleep(0.005)
        select.select([s], [], [])
    d = s.recv(65536)
    if d == b"END":
        print(n, flush=True)
        n = 0
        continue
    n += 1
    if poll:
        s.setblocking(False)
        try:
            while True:
                d = s.recv(65536)
                if d == b"END":
                    print(n, flush=True)
                    n = 0
                    break
                n += 1
        except BlockingIOError:
            pass
        s.setblocking(True)
"""


class Receiver:
    def __init__(self, mode: str):
        self.proc = subprocess.Popen(
            [sys.executable, "-c", RECEIVER, mode],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
        )
        self.port = int(self.proc.stdout.readline())

    def count(self) -> int:
        """Datagrams received since the last count (the END datagram queues behind them)."""
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(b"END", ("127.0.0.1", self.port))
        return int(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


def _closed_port() -> int:
    """A local UDP port with nothing bound to it (bound, read, then closed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(argv: list[str], out: Path) -> dict:
    from thruster_hil.cli import main

    with contextlib.redirect_stdout(io.StringIO()):
        status = main(["run", *argv, "--json", "--out", str(out)])
    if status != 0:
        raise SystemExit(f"run {' '.join(argv)} exited {status}")
    return json.loads((out / "summary.json").read_text())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--unit", choices=("sim", "emulator"), default="sim")
    ap.add_argument("--stack", default="dragon-boost-kit")
    ap.add_argument("--delta-v", default="4", help="the burn [m/s] (default 4: ~4500 cycles)")
    args = ap.parse_args(argv)
    burn = ["--stack", args.stack, "--delta-v", args.delta_v, "--unit", args.unit]
    receivers = {"stream, batch reader": Receiver("poll"), "stream, recv() per datagram": None}
    receivers["stream, recv() per datagram"] = Receiver("block")
    closed = _closed_port()
    variants = {"plain": []}
    for name, receiver in receivers.items():
        variants[name] = ["--stream", f"udp://127.0.0.1:{receiver.port}"]
    variants["stream, nobody listening"] = ["--stream", f"udp://127.0.0.1:{closed}"]
    samples: dict[str, list[dict]] = {name: [] for name in variants}
    received: dict[str, list[int]] = {name: [] for name in receivers}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            _run(burn, Path(tmp) / "warm-up")  # compiles (numba cache) and loads everything
            for i in range(args.runs):
                for j, (name, extra) in enumerate(variants.items()):
                    s = _run(burn + extra, Path(tmp) / f"run-{i}-{j}")
                    samples[name].append(s)
                    if name in receivers:
                        got = receivers[name].count()
                        received[name].append(got)
                        if got != s["stream"]["datagrams_sent"]:
                            raise SystemExit(
                                f"{name}: the receiver got {got} of "
                                f"{s['stream']['datagrams_sent']} datagrams"
                            )
    finally:
        for receiver in receivers.values():
            receiver.close()
    plain = statistics.median(s["cycles_per_s"] for s in samples["plain"])
    out = {
        "unit": args.unit,
        "stack": args.stack,
        "cycles": samples["plain"][0]["cycles"],
        "runs": args.runs,
        "variants": {},
    }
    for name, runs in samples.items():
        rate = statistics.median(s["cycles_per_s"] for s in runs)
        row = {
            "cycles_per_s_median": round(rate),
            "cycles_per_s_all": [round(s["cycles_per_s"]) for s in runs],
            "ratio_to_plain": round(rate / plain, 3),
        }
        if name != "plain":
            row["datagrams_sent_median"] = statistics.median(
                s["stream"]["datagrams_sent"] for s in runs
            )
            row["datagrams_dropped_median"] = statistics.median(
                s["stream"]["datagrams_dropped"] for s in runs
            )
        if name in received:
            row["datagrams_received_median"] = statistics.median(received[name])
        out["variants"][name] = row
    if args.json:
        print(json.dumps(out))
    else:
        print(f"{args.stack} via {args.unit}: {out['cycles']} cycles, {args.runs} runs each")
        for name, row in out["variants"].items():
            extra = ""
            if "datagrams_sent_median" in row:
                extra = (
                    f"  sent {row['datagrams_sent_median']:.0f}, "
                    f"dropped {row['datagrams_dropped_median']:.0f}"
                )
            print(
                f"  {name:26s} {row['cycles_per_s_median']:8d} cycles/s  "
                f"x{row['ratio_to_plain']:.3f}{extra}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
