"""Load the machine: N CPU-bound processes beside whatever you run, as a busy CI machine has.

Issue 13 found the suite, the fault campaign and the REALTIME burn failing when other processes
were compiling and running beside them. This tool reproduces that on purpose::

    python tools/busy.py 2 -- thruster-hil faults        # the campaign beside 2 busy processes
    python tools/busy.py 2 -- thruster-hil run --stack progress --delta-v 0.05 --mode realtime
    python tools/busy.py 2                               # just load the machine until Ctrl-C
    python -m pytest -m campaign --busy 2                # the same from pytest (tests/conftest.py)

With a command it runs the command beside the busy processes, stops them when it ends, prints
one line (the command's exit status and wall time) on stderr and exits with the command's status.

Each busy process is a plain Python loop at normal priority (nice 0, SCHED_OTHER), like a
compiler. It holds the read end of a pipe whose write end only the starting process has, and
exits when that pipe reads end-of-file: however the starting process ends (even SIGKILL), no busy
process outlives it.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

#: The busy process: spin, and every ~20 ms look at the lifeline (stdin) without blocking.
_WORKER = r"""
import os, select, sys, time
x = 0
while True:
    end = time.perf_counter() + 0.02
    while time.perf_counter() < end:
        x = (x * 1103515245 + 12345) & 0xFFFFFFFF
    r, _, _ = select.select([0], [], [], 0)
    if r and not os.read(0, 1):
        sys.exit(0)
"""


class Busy:
    """``n`` busy processes for the life of a ``with`` block (or between start() and stop())."""

    def __init__(self, n: int):
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"the number of busy processes must be a whole number >= 0, got {n!r}")
        self.n = n
        self.procs: list[subprocess.Popen] = []

    def start(self) -> Busy:
        for _ in range(self.n):
            self.procs.append(
                subprocess.Popen(
                    [sys.executable, "-c", _WORKER],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        return self

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def running(self) -> int:
        return sum(p.poll() is None for p in self.procs)

    def stop(self) -> None:
        """Close each lifeline (the process exits by itself), then make sure it did."""
        for p in self.procs:
            if p.stdin is not None:
                p.stdin.close()
        for p in self.procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.procs.clear()

    def __enter__(self) -> Busy:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    cmd: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, cmd = argv[:i], argv[i + 1 :]
    p = argparse.ArgumentParser(prog="python tools/busy.py", description=__doc__.split("\n")[0])
    p.add_argument("n", type=int, help="how many CPU-bound processes to start (>= 0)")
    args = p.parse_args(argv)
    if args.n < 0:
        p.error(f"n must be >= 0, got {args.n}")
    with Busy(args.n) as busy:
        if not cmd:
            print(
                f"busy: {args.n} processes ({' '.join(map(str, busy.pids))}); Ctrl-C ends them",
                file=sys.stderr,
            )
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                return 0
        t0 = time.monotonic()
        try:
            rc = subprocess.call(cmd)
        except OSError as err:
            print(f"busy: cannot run {cmd[0]}: {err.strerror}", file=sys.stderr)
            return 2
        print(
            f"busy: {' '.join(cmd)} -> exit {rc} in {time.monotonic() - t0:.1f} s beside "
            f"{args.n} busy processes",
            file=sys.stderr,
        )
        return rc


if __name__ == "__main__":
    sys.exit(main())
