"""What telemetry out costs: lockstep cycles per second of a recorded SIL run without and with
``--stream udp://127.0.0.1:PORT`` (issue 16: at most 5 % fewer), in one process.

Each run is what `thruster-hil run --unit sim` flies after its plan: ``run_burn`` cycle by cycle
with the run directory's recorder as ``on_cycle`` and, with a stream, the CLI's
``CycleStream.on_cycle`` after it (the plan is made once: planning is not the loop). Two rates per
run: ``cycles_per_s`` is the runner's own (wall clock, the first cycle not timed: the figure the
acceptance is about), and ``cycles_per_cpu_s`` divides the cycles by the CPU time of the loop's
own thread (user and system), which other processes on a busy machine inflate less. Beside them,
where the stream's work goes: the loop thread's CPU a cycle above the plain run's
(``loop_cpu_us_per_cycle_added``), the sender process's CPU while the loop ran, a cycle
(``sender_loop_us_per_cycle``, from /proc/PID/schedstat: nanoseconds, its start-up left out),
its CPU a datagram start-up included (``sender_cpu_us_per_datagram``, rusage once it has been
waited for), and the receiver's CPU a datagram (``receiver_us_per_datagram``). The variants run
interleaved, their order rotated every round; the median of each is reported, and the median of
the per-round ratios to ``plain`` (each ratio from runs seconds apart, so a change of the
machine's load between rounds cancels out), with every round's ratio (``..._ratio_all``).

Variants: ``plain`` (no stream: the baseline); ``stream, batch reader`` (to a UDP socket that a
receiver process drains every 5 ms, as a ground system's link thread with a buffer does); ``stream,
recv() per datagram`` (a receiver blocked in recv(), woken when datagrams come); ``stream, nobody
listening`` (to a port with no socket: sends fail with ECONNREFUSED after the kernel's ICMP
port-unreachable, dropped and counted); ``stream, sender stopped (loop only)`` (the sender
process stopped and the ring never full: the loop packs and publishes every packet and nothing
is sent, which is what the loop itself pays). Each receiver counts what it got, which must equal
the datagrams sent.

``--loop-side`` measures only the loop's share, alone: ``CycleStream.on_cycle`` on one recorded
cycle against the kernel handed the loop's arrays as before, loop thread CPU a call. Usage::

    python benchmarks/stream.py [--json] [--runs N] [--stack NAME] [--delta-v MPS] [--loop-side]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
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


#: The variant whose sender is stopped and whose ring never fills: the loop's own share.
HELD = "stream, sender stopped (loop only)"


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


def _run_ns(pid: int) -> int:
    """The time process ``pid``'s main thread has run on a CPU [ns] (/proc/PID/schedstat:
    nanoseconds, where the rusage clock ticks in 10 ms; 0 where there is none)."""
    try:
        with open(f"/proc/{pid}/schedstat") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def _hold(sender) -> None:
    """The sender process stopped and the ring made never full: the loop packs and publishes
    every cycle's packet, nothing is sent (what the loop itself pays for the stream)."""
    from thruster_hil.firmware_bridge import ring_sender

    os.kill(sender.process.pid, signal.SIGSTOP)
    os.waitpid(sender.process.pid, os.WUNTRACED)
    sender.words[ring_sender.CONSUMED] = 1 << 62  # (published - consumed < 0: never full)


def _release(sender) -> None:
    from thruster_hil.firmware_bridge import ring_sender

    sender.words[ring_sender.CONSUMED] = sender.words[ring_sender.PUBLISHED]  # nothing to send
    os.kill(sender.process.pid, signal.SIGCONT)


def _run(model, plan, out: Path, url: str | None, hold: bool = False) -> dict:
    """One recorded SIL run (and its stream): the summary, with ``cycles_per_cpu_s``."""
    from thruster_hil.closedloop.runner import run_burn
    from thruster_hil.records import RunRecorder
    from thruster_hil.stream import CycleStream, resolve_option

    recorder = RunRecorder(out, list(model.thruster_names), model.mass_kg, model.tank_names)
    on_cycle, stream = recorder.on_cycle, None
    if url is not None:
        n_tanks = len(model.tank_names)
        stream = CycleStream(resolve_option(url, "run"), len(model.thruster_names), n_tanks)
        on_cycle = stream.after(on_cycle)  # as `run --stream` does (thruster_hil.cli)
        if hold:
            _hold(stream.sender)
        sender0 = _run_ns(stream.sender.process.pid)
    cpu0 = time.thread_time()
    summary = run_burn(model, plan, on_cycle=on_cycle).summary
    cpu = time.thread_time() - cpu0
    recorder.close()
    if stream is not None:
        if hold:
            _release(stream.sender)
        sender_loop_ns = _run_ns(stream.sender.process.pid) - sender0
        children0 = _children_cpu_s()
        stream.close()  # waits for the sender process, whose CPU time is then the children's
        summary["stream"] = stream.stats()
        n = summary["stream"]["datagrams_sent"] + summary["stream"]["datagrams_dropped"]
        sender_cpu = _children_cpu_s() - children0
        summary["stream"]["sender_cpu_us_per_datagram"] = sender_cpu / max(n, 1) * 1e6
        # while the loop ran (no start-up): what the sender took beside the loop
        summary["stream"]["sender_loop_us_per_cycle"] = sender_loop_ns / summary["cycles"] / 1e3
    summary["cycles_per_cpu_s"] = summary["cycles"] / cpu
    summary["loop_cpu_us_per_cycle"] = cpu / summary["cycles"] * 1e6
    return summary


def loop_side(model, plan, rounds: int, calls: int = 20_000) -> dict:
    """What the loop pays a cycle, alone: ``CycleStream.on_cycle`` on one recorded cycle's
    ``info`` (its sender stopped, its ring never full), against the same packet from the
    kernel handed the loop's six arrays and five numbers (the call before the binding), and
    an empty call; loop thread CPU [ns] a call, the three interleaved, ``rounds`` times."""
    from thruster_hil.closedloop.runner import run_burn
    from thruster_hil.stream import CycleStream, _cycle_into_ring, resolve_option

    seen = {}

    def keep(k: int, info: dict) -> None:
        if k == 10:
            seen.update(info)

    run_burn(model, plan, on_cycle=keep)
    stream = CycleStream(
        resolve_option(f"udp://127.0.0.1:{_closed_port()}", "run"),
        len(model.thruster_names),
        len(model.tank_names),
        model.mass_kg,
    )
    _hold(stream.sender)
    ring, mass0 = stream._ring, stream._mass0

    def eleven_arguments(k: int, info: dict) -> None:  # (as on_cycle was before the binding)
        c = info["ctrl"]
        _cycle_into_ring(
            ring,
            c.ctrl,
            info["y"],
            c.on_ms,
            info["executed_ms"],
            info["tank_used"],
            k,
            info["status"],
            info["t_s"],
            info.get("rtt_s") or 0.0,
            mass0,
        )

    def empty(k: int, info: dict) -> None:
        pass

    calls_of = {
        "CycleStream.on_cycle (binding)": stream.on_cycle,
        "kernel on the arrays (11 arguments)": eleven_arguments,
        "empty call": empty,
    }
    ns: dict[str, list[float]] = {name: [] for name in calls_of}
    try:
        for fn in calls_of.values():
            fn(0, seen)
        for i in range(rounds):
            names = list(calls_of)
            for j in range(len(names)):
                name = names[(i + j) % len(names)]
                fn = calls_of[name]
                t0 = time.thread_time_ns()
                for k in range(calls):
                    fn(k, seen)
                ns[name].append((time.thread_time_ns() - t0) / calls)
    finally:
        _release(stream.sender)
        stream.close()
    return {
        name: {
            "ns_per_call_median": round(statistics.median(v)),
            "ns_per_call_min": round(min(v)),
            "ns_per_call_max": round(max(v)),
        }
        for name, v in ns.items()
    }


def _nothing(k: int, info: dict) -> None:
    pass


def blocks(model, plan, urls: dict, receivers: dict, runs: int, block: int) -> dict:
    """The stream's cost within each run, where a loaded machine's drift cancels best: the
    cycles go in blocks of ``block``, three by three, and only the third block of each three
    packs and sends its cycles (off, off, on); the second block's cycles a second (no stream,
    and after an off block: no sending left over from the last on block, which the sender
    finishes within 5 ms) over the third's is one ratio. ``plain`` sends in no block: its
    ratios are the design's own bias and noise (an A/A control: the loop's work per cycle
    changes along a burn). ``runs`` runs per variant, the variants interleaved; per variant the
    median ratio and its spread."""
    from thruster_hil.closedloop.runner import run_burn
    from thruster_hil.records import RunRecorder
    from thruster_hil.stream import CycleStream, resolve_option

    ratios: dict[str, list[float]] = {name: [] for name in urls}  # plain: the A/A control
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(runs):
            names = list(ratios)
            for j in range(len(names)):
                name = names[(i + j) % len(names)]
                out = Path(tmp) / f"blocks-{i}-{j}"
                recorder = RunRecorder(
                    out, list(model.thruster_names), model.mass_kg, model.tank_names
                )
                stream = None
                if urls[name] is not None:
                    stream = CycleStream(
                        resolve_option(urls[name], "run"),
                        len(model.thruster_names),
                        len(model.tank_names),
                        model.mass_kg,
                    )
                if name == HELD:
                    _hold(stream.sender)
                send = stream.on_cycle if stream is not None else _nothing
                marks: list[float] = []

                def in_blocks(k: int, info: dict, send=send, marks=marks) -> None:
                    if k % block == 0:
                        marks.append(time.perf_counter())
                    if (k // block) % 3 == 2:
                        send(k, info)

                record = recorder.on_cycle

                def both(k: int, info: dict, record=record, in_blocks=in_blocks) -> None:
                    record(k, info)
                    in_blocks(k, info)

                run_burn(model, plan, on_cycle=both)
                recorder.close()
                if name == HELD:
                    _release(stream.sender)
                if stream is not None:
                    stream.close()
                if name in receivers:
                    got = receivers[name].count()
                    if got != stream.stats()["datagrams_sent"]:
                        raise SystemExit(f"{name}: the receiver got {got} datagrams")
                for b in range(2, len(marks) - 1, 3):  # each whole "on" block
                    off, on = marks[b] - marks[b - 1], marks[b + 1] - marks[b]
                    ratios[name].append(off / on)
    for name, r in ratios.items():
        if len(r) < 2:
            raise SystemExit(f"{name}: {len(r)} whole blocks; a longer burn or shorter blocks")
    return {
        name: {
            "ratio_median": round(statistics.median(r), 4),
            "ratio_q1": round(statistics.quantiles(r, n=4)[0], 4),
            "ratio_q3": round(statistics.quantiles(r, n=4)[2], 4),
            "ratio_min": round(min(r), 4),
            "ratio_max": round(max(r), 4),
            "blocks": len(r),
        }
        for name, r in ratios.items()
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--stack", default="dragon-boost-kit")
    ap.add_argument("--delta-v", default="4", help="the burn [m/s] (default 4: ~4500 cycles)")
    ap.add_argument(
        "--loop-side",
        action="store_true",
        help="only what the loop pays a cycle: on_cycle alone, --runs rounds of 20,000 calls",
    )
    ap.add_argument(
        "--blocks",
        type=int,
        default=0,
        metavar="CYCLES",
        help="the stream on in every third block of CYCLES cycles of each run, off in the two "
        "before: cycles/s ratios of adjacent blocks (--runs runs a variant)",
    )
    args = ap.parse_args(argv)
    from thruster_hil.config import build_stack_model, load_stack
    from thruster_hil.plan import Target, plan_burn

    model = build_stack_model(load_stack(args.stack))
    plan = plan_burn(args.stack, Target("delta_v", float(args.delta_v)))
    if args.loop_side:
        rows = loop_side(model, plan, args.runs)
        if args.json:
            print(json.dumps({"stack": args.stack, "rounds": args.runs, "loop_side": rows}))
        else:
            print(f"{args.stack}: loop thread CPU a call [ns], {args.runs} rounds of 20,000")
            for name, row in rows.items():
                print(
                    f"  {name:38s} median {row['ns_per_call_median']:6d}"
                    f"  ({row['ns_per_call_min']}-{row['ns_per_call_max']})"
                )
        return 0
    receivers = {"stream, batch reader": Receiver("poll")}
    receivers["stream, recv() per datagram"] = Receiver("block")
    urls: dict[str, str | None] = {"plain": None}
    for name, receiver in receivers.items():
        urls[name] = f"udp://127.0.0.1:{receiver.port}"
    urls["stream, nobody listening"] = f"udp://127.0.0.1:{_closed_port()}"
    urls[HELD] = urls["stream, nobody listening"]
    names = list(urls)
    if args.blocks:
        try:
            rows = blocks(model, plan, urls, receivers, args.runs, args.blocks)
        finally:
            for receiver in receivers.values():
                receiver.close()
        if args.json:
            print(json.dumps({"stack": args.stack, "block_cycles": args.blocks, "blocks": rows}))
        else:
            print(
                f"{args.stack}: blocks of {args.blocks} cycles, stream on in every third, "
                f"{args.runs} runs a variant; cycles/s of the block before over the block with"
            )
            for name, row in rows.items():
                print(
                    f"  {name:36s} x{row['ratio_median']:.3f}  (quartiles {row['ratio_q1']:.3f}-"
                    f"{row['ratio_q3']:.3f}, {row['ratio_min']:.3f}-{row['ratio_max']:.3f}, "
                    f"{row['blocks']} blocks)"
                )
        return 0
    samples: dict[str, list[dict]] = {name: [] for name in names}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            _run(model, plan, Path(tmp) / "warm-up", urls["stream, batch reader"])
            receivers["stream, batch reader"].count()
            for i in range(args.runs):
                for j in range(len(names)):
                    name = names[(i + j) % len(names)]  # rotated: no variant always first
                    receiver = receivers.get(name)
                    receiver0 = _run_ns(receiver.proc.pid) if receiver else 0
                    s = _run(model, plan, Path(tmp) / f"run-{i}-{j}", urls[name], name == HELD)
                    samples[name].append(s)
                    if receiver is not None:
                        got = receiver.count()
                        s["receiver_us_per_datagram"] = (
                            (_run_ns(receiver.proc.pid) - receiver0) / max(got, 1) / 1e3
                        )
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
        row["cycles_per_s_ratio_all"] = [
            round(s["cycles_per_s"] / base["cycles_per_s"], 3)
            for s, base in zip(runs, samples["plain"], strict=True)
        ]
        row["loop_cpu_us_per_cycle_median"] = round(
            statistics.median(s["loop_cpu_us_per_cycle"] for s in runs), 2
        )
        row["loop_cpu_us_per_cycle_added"] = round(
            statistics.median(
                s["loop_cpu_us_per_cycle"] - base["loop_cpu_us_per_cycle"]
                for s, base in zip(runs, samples["plain"], strict=True)
            ),
            2,
        )
        if name in receivers:
            row["receiver_us_per_datagram_median"] = round(
                statistics.median(s["receiver_us_per_datagram"] for s in runs), 2
            )
        if name != "plain":
            row["sender_loop_us_per_cycle_median"] = round(
                statistics.median(s["stream"]["sender_loop_us_per_cycle"] for s in runs), 2
            )
            row["send_path"] = runs[0]["stream"].get("send_path", "")
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
            "  variant                          cycles/s  ratio (min-max)        cycles/CPU-s"
            "  ratio   loop +us/cy  sender us/cy  receiver us/dg"
        )
        for name, row in out["variants"].items():
            sender = row.get("sender_loop_us_per_cycle_median")
            receiver = row.get("receiver_us_per_datagram_median")
            spread = row["cycles_per_s_ratio_all"]
            print(
                f"  {name:32s} {row['cycles_per_s_median']:8d}  x{row['cycles_per_s_ratio']:.3f}"
                f" ({min(spread):.3f}-{max(spread):.3f})"
                f"  {row['cycles_per_cpu_s_median']:10d}  x{row['cycles_per_cpu_s_ratio']:.3f}"
                f"  {row['loop_cpu_us_per_cycle_added']:+10.2f}"
                + (f"  {sender:12.2f}" if sender is not None else " " * 14)
                + (f"  {receiver:14.2f}" if receiver is not None else "")
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
