"""Fuzz the wire at depth: 10^7 executions of the firmware's libFuzzer target and of the Python
decoder's fuzzer (CI runs 10^6 of each; docs/reliability.md, "Fuzzing").

- **C** (``firmware_bridge/board/fuzz_unit``: the firmware's parser and state machine under
  AddressSanitizer and UndefinedBehaviorSanitizer). ``--workers`` libFuzzer processes, each with
  its own seed and its own working corpus, all starting from the corpus kept in the repository
  (``firmware_bridge/board/fuzz_corpus``). ``--update-corpus`` merges what they found into it
  (``-merge=1``: only inputs that add coverage), so the next run, and CI's, start deeper.
- **Python** (``tools/fuzz_decoder.py``: the codec's decoder). ``--workers`` processes with seeds
  1..N, each from the golden vectors (``firmware_bridge/golden_vectors.json``, the decoder's
  corpus in the repository) and ``--corpus`` directories.

Each worker's executions, seconds and rate are printed (``--json``: one object), and the exit
status is 1 if any worker found a failure (its input is kept under ``--artifacts``).

Usage::

    python tools/fuzz_deep.py [--runs 10000000] [--workers N] [--target c|python|both]
                              [--update-corpus] [--artifacts DIR] [--json]

On this machine (2 cores, quiet) 10^7 took 37 min for the C target with 2 workers and 73 s for
the decoder; docs/reliability.md has each run's figures.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BOARD = ROOT / "firmware_bridge" / "board"
CORPUS = BOARD / "fuzz_corpus"
MAX_LEN = 512


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def fuzz_c(runs: int, workers: int, artifacts: Path, work: Path, update: bool) -> list[dict]:
    build = subprocess.run(["make", "-C", str(BOARD), "fuzz"], capture_output=True, text=True)
    if build.returncode != 0:
        raise SystemExit(
            "fuzz_deep: cannot build fuzz_unit (clang with libFuzzer: apt-get install -y clang "
            f"libclang-rt-14-dev): {build.stderr.strip().splitlines()[-1:]}"
        )
    CORPUS.mkdir(exist_ok=True)
    procs = []
    for w in range(workers):
        mine = work / f"c{w}"
        mine.mkdir()
        log = open(work / f"c{w}.log", "w+")
        cmd = [
            str(BOARD / "fuzz_unit"),
            f"-runs={-(-runs // workers)}",
            f"-max_len={MAX_LEN}",
            f"-seed={w + 1}",
            f"-artifact_prefix={artifacts}/",
            "-print_final_stats=1",
            str(mine),  # new inputs go to the first directory, not to the repository's
            str(CORPUS),
        ]
        procs.append((subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), log, w))
    out = []
    for proc, log, w in procs:
        proc.wait()
        log.seek(0)
        text = log.read()
        log.close()
        done = re.search(r"Done (\d+) runs in (\d+) second", text)
        cov = re.findall(r"cov: (\d+) ft: (\d+)", text)
        execs = int(done.group(1)) if done else None
        secs = int(done.group(2)) if done else None
        out.append(
            {
                "target": "c",
                "worker": w,
                "seed": w + 1,
                "ok": proc.returncode == 0 and done is not None,
                "executions": execs,
                "seconds": secs,
                "execs_per_s": round(execs / secs) if execs and secs else None,
                "coverage": int(cov[-1][0]) if cov else None,
                "features": int(cov[-1][1]) if cov else None,
                "tail": None if proc.returncode == 0 else text[-3000:],
            }
        )
    if update and all(r["ok"] for r in out):
        before = len(list(CORPUS.iterdir()))
        merge = subprocess.run(
            [str(BOARD / "fuzz_unit"), "-merge=1", f"-max_len={MAX_LEN}", str(CORPUS)]
            + [str(work / f"c{w}") for w in range(workers)],
            capture_output=True,
            text=True,
        )
        if merge.returncode != 0:
            raise SystemExit(f"fuzz_deep: merging into {CORPUS} failed:\n{merge.stderr[-2000:]}")
        print(
            f"fuzz_deep: corpus {CORPUS.relative_to(ROOT)}: {before} -> "
            f"{len(list(CORPUS.iterdir()))} inputs",
            file=sys.stderr,
        )
    return out


def fuzz_python(runs: int, workers: int, artifacts: Path) -> list[dict]:
    procs = []
    for w in range(workers):
        cmd = [
            sys.executable,
            str(ROOT / "tools" / "fuzz_decoder.py"),
            f"--runs={-(-runs // workers)}",
            f"--seed={w + 1}",
            f"--artifacts={artifacts}",
        ]
        t0 = time.monotonic()
        procs.append((subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE), w, t0))
    out = []
    for proc, w, t0 in procs:
        stdout, stderr = proc.communicate()
        secs = time.monotonic() - t0
        execs = -(-runs // workers) if proc.returncode == 0 else None
        out.append(
            {
                "target": "python",
                "worker": w,
                "seed": w + 1,
                "ok": proc.returncode == 0,
                "executions": execs,
                "seconds": round(secs, 1),
                "execs_per_s": round(execs / secs) if execs else None,
                "summary": stdout.decode().strip().splitlines()[-1:] or None,
                "tail": None if proc.returncode == 0 else stderr.decode()[-3000:],
            }
        )
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10_000_000, help="executions per target")
    ap.add_argument("--workers", type=int, default=max(1, min(2, _cpus())))
    ap.add_argument("--target", choices=("c", "python", "both"), default="both")
    ap.add_argument("--update-corpus", action="store_true", help="merge new C inputs into the repo")
    ap.add_argument("--artifacts", type=Path, default=Path("."), help="where a failure is kept")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if args.runs < 1 or args.workers < 1:
        ap.error("--runs and --workers must be at least 1")
    args.artifacts.mkdir(parents=True, exist_ok=True)
    results: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="fuzz_deep.") as tmp:
        if args.target in ("c", "both"):
            results += fuzz_c(
                args.runs, args.workers, args.artifacts, Path(tmp), args.update_corpus
            )
        if args.target in ("python", "both"):
            results += fuzz_python(args.runs, args.workers, args.artifacts)
    totals = {}
    for t in ("c", "python"):
        mine = [r for r in results if r["target"] == t]
        if mine:
            totals[t] = {
                "executions": sum(r["executions"] or 0 for r in mine),
                "seconds": max(r["seconds"] or 0 for r in mine),
                "ok": all(r["ok"] for r in mine),
            }
    if args.json:
        print(json.dumps({"workers": results, "totals": totals}, indent=2))
    else:
        for r in results:
            print(
                f"{r['target']:6s} worker {r['worker']} (seed {r['seed']}): "
                f"{r['executions']} executions in {r['seconds']} s "
                f"({r['execs_per_s']}/s){'' if r['ok'] else '  FAILED'}"
            )
            if r.get("tail"):
                print(r["tail"])
        for t, v in totals.items():
            print(f"{t}: {v['executions']:,} executions in {v['seconds']} s, ok={v['ok']}")
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
