"""What telemetry out costs: lockstep cycles per second of a recorded SIL run without and with
``--stream udp://127.0.0.1:PORT`` (issue 16: at most 5 % fewer), in one process.

Each run is what `thruster-hil run --unit sim` flies after its plan: ``run_burn`` cycle by cycle
with the run directory's recorder as ``on_cycle`` and, with a stream, the CLI's
``CycleStream.on_cycle`` after it (the plan is made once: planning is not the loop). Two rates per
run: ``cycles_per_s`` is the runner's own (wall clock, the first cycle not timed: the figure the
acceptance is about), and ``cycles_per_cpu_s`` divides the cycles by the CPU time of the loop's
own thread (user and system), which other processes on a busy machine inflate less; the stream's
sender process, which makes the send system calls beside the loop, is not in it: its CPU time is
reported apart (``sender_cpu_us_per_datagram``, from the children's rusage once it has been
waited for; the receivers live on until the end, so they are not in it). The variants run
interleaved, their order rotated every round; the median of each is reported, and the median of
the per-round ratios to ``plain`` (each ratio from runs seconds apart, so a change of the
machine's load between rounds cancels out).

Variants: ``plain`` (no stream: the baseline); ``stream, batch reader`` (to a UDP socket that a
receiver process drains every 5 ms, as a ground system's link thread with a buffer does); ``stream,
recv() per datagram`` (a receiver blocked in recv(), woken by every datagram: the kernel's wake-up
is paid in the sending process, on its sender thread); ``stream, nobody listening`` (to a port
with no socket: every other send fails with ECONNREFUSED after the kernel's ICMP port-unreachable,
dropped and counted).
Each receiver counts what it got, which must equal the datagrams sent. Usage::

    python benchmarks/stream.py [--json] [--runs N] [--stack NAME] [--delta-v MPS]
"""

from __future__ import annotations

import argparse
import json
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
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


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _run(model, plan, out: Path, url: str | None) -> dict:
    """One recorded SIL run (and its stream): the summary, with ``cycles_per_cpu_s``."""
    from thruster_hil.cli import _also_stream
    from thruster_hil.closedloop.runner import run_burn
    from thruster_hil.records import RunRecorder
    from thruster_hil.stream import CycleStream, resolve_option

    recorder = RunRecorder(out, list(model.thruster_names), model.mass_kg, model.tank_names)
    on_cycle, stream = recorder.on_cycle, None
    if url is not None:
        n_tanks = len(model.tank_names)
        stream = CycleStream(resolve_option(url, "run"), len(model.thruster_names), n_tanks)
        on_cycle = _also_stream(on_cycle, stream.on_cycle)
    cpu0 = time.thread_time()
    summary = run_burn(model, plan, on_cycle=on_cycle).summary
    cpu = time.thread_time() - cpu0
    recorder.close()
    if stream is not None:
        children0 = _children_cpu_s()
        stream.close()  # waits for the sender process, whose CPU time is then the children's
        summary["stream"] = stream.stats()
        n = summary["stream"]["datagrams_sent"] + summary["stream"]["datagrams_dropped"]
        sender_cpu = _children_cpu_s() - children0
        summary["stream"]["sender_cpu_us_per_datagram"] = sender_cpu / max(n, 1) * 1e6
    summary["cycles_per_cpu_s"] = summary["cycles"] / cpu
    return summary


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--stack", default="dragon-boost-kit")
    ap.add_argument("--delta-v", default="4", help="the burn [m/s] (default 4: ~4500 cycles)")
    args = ap.parse_args(argv)
    from thruster_hil.config import build_stack_model, load_stack
    from thruster_hil.plan import Target, plan_burn

    model = build_stack_model(load_stack(args.stack))
    plan = plan_burn(args.stack, Target("delta_v", float(args.delta_v)))
    receivers = {"stream, batch reader": Receiver("poll")}
    receivers["stream, recv() per datagram"] = Receiver("block")
    urls: dict[str, str | None] = {"plain": None}
    for name, receiver in receivers.items():
        urls[name] = f"udp://127.0.0.1:{receiver.port}"
    urls["stream, nobody listening"] = f"udp://127.0.0.1:{_closed_port()}"
    names = list(urls)
    samples: dict[str, list[dict]] = {name: [] for name in names}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            _run(model, plan, Path(tmp) / "warm-up", urls["stream, batch reader"])
            receivers["stream, batch reader"].count()
            for i in range(args.runs):
                for j in range(len(names)):
                    name = names[(i + j) % len(names)]  # rotated: no variant always first
                    s = _run(model, plan, Path(tmp) / f"run-{i}-{j}", urls[name])
                    samples[name].append(s)
                    if name in receivers:
                        got = receivers[name].count()
                        if got != s["stream"]["datagrams_sent"]:
                            raise SystemExit(
                                f"{name}: the receiver got {got} of "
                                f"{s['stream']['datagrams_sent']} datagrams"
                            )
                        s["stream"]["received"] = got
    finally:
        for receiver in receivers.values():
            receiver.close()
    out = {
        "unit": "sim",
        "stack": args.stack,
        "cycles": samples["plain"][0]["cycles"],
        "runs": args.runs,
        "variants": {},
    }
    for name, runs in samples.items():
        row = {}
        for key in ("cycles_per_s", "cycles_per_cpu_s"):
            row[f"{key}_median"] = round(statistics.median(s[key] for s in runs))
            row[f"{key}_ratio"] = round(
                statistics.median(
                    s[key] / base[key] for s, base in zip(runs, samples["plain"], strict=True)
                ),
                3,
            )
        row["cycles_per_s_all"] = [round(s["cycles_per_s"]) for s in runs]
        if name != "plain":
            row["datagrams_sent_median"] = statistics.median(
                s["stream"]["datagrams_sent"] for s in runs
            )
            row["datagrams_dropped_median"] = statistics.median(
                s["stream"]["datagrams_dropped"] for s in runs
            )
            row["sender_cpu_us_per_datagram_median"] = round(
                statistics.median(s["stream"]["sender_cpu_us_per_datagram"] for s in runs), 2
            )
        out["variants"][name] = row
    if args.json:
        print(json.dumps(out))
    else:
        print(f"{args.stack} via sim, recorded: {out['cycles']} cycles, {args.runs} runs each")
        print(
            "  variant                       cycles/s  ratio   cycles/CPU-s  ratio   sender us/dg"
        )
        for name, row in out["variants"].items():
            sender = row.get("sender_cpu_us_per_datagram_median")
            print(
                f"  {name:28s} {row['cycles_per_s_median']:8d}  x{row['cycles_per_s_ratio']:.3f}"
                f"  {row['cycles_per_cpu_s_median']:10d}  x{row['cycles_per_cpu_s_ratio']:.3f}"
                + (f"   {sender:6.2f}" if sender is not None else "")
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
