"""Run records: every `thruster-hil run` leaves a directory an operator can keep and replay.

    run.json        what the run set out to do, written when the burn starts: stack, unit,
                    mode, target delta-v, attitude limit, control period, planned cycles, the
                    plan and the start time (``thruster-hil monitor`` follows a run with it)
    status.json     the link's counters and the unit's last housekeeping, rewritten every
                    second while a serial unit flies (serial units only)
    summary.json    the run's summary (the --json object) plus config hashes, versions and the
                    unit's identity; written at the end, also after Ctrl-C ("aborted": true)
    telemetry.csv   one row per control cycle, flushed every cycle (the fixed columns, the
                    commanded and executed on-times per thruster, then the propellant drawn
                    from each tank so far, ``propellant_kg:<tank>``)
    capture.csv     every byte on the wire in each direction with its host time (monotonic ns):
                    ``t_ns,dir,hex``, flushed per chunk (serial units only)

Written as the run goes, so a crash or a kill keeps everything up to the last cycle.
"""

from __future__ import annotations

import csv
import datetime as _dt
import hashlib
import json
import math
import os
import platform
import threading
import time
from pathlib import Path

from thruster_hil.errors import UserError

TELEMETRY_FIELDS = ("cycle", "t_s", "status", "dv_along_mps", "dv_remaining_mps",
                    "altitude_km", "attitude_error_deg", "rate_x_dps", "rate_y_dps", "rate_z_dps",
                    "propellant_kg", "rtt_ms")


def default_run_dir(stack: str, root: str | Path = "runs") -> Path:
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    return Path(root) / f"{stamp}-{stack}"


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


class RunRecorder:
    """Writes one run directory. Use as ``on_cycle`` / ``on_bytes`` sink, then :meth:`finish`."""

    def __init__(self, out_dir: str | Path, thruster_names: list[str], mass0_kg: float,
                 tank_names: tuple[str, ...] = ()):
        self.dir = Path(out_dir)
        try:
            taken = self.dir.exists() and (not self.dir.is_dir() or any(self.dir.iterdir()))
        except OSError as exc:  # a name too long, a directory we may not list
            raise UserError(str(self.dir), f"cannot use it as the run directory: {exc.strerror}",
                            field="--out") from None
        if taken:
            what = "directory exists and is not empty" if self.dir.is_dir() else "path is a file"
            raise UserError(str(self.dir), f"the run {what}: pick another --out (nothing is "
                            "overwritten)", field="--out")
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._tel = open(self.dir / "telemetry.csv", "w", newline="", encoding="utf-8")
        except OSError as exc:
            raise UserError(str(self.dir), f"cannot create the run directory: {exc.strerror}",
                            field="--out") from None
        self._names = list(thruster_names)
        self._tanks = list(tank_names)
        self._mass0 = mass0_kg
        self._writer = csv.writer(self._tel)
        self._writer.writerow(list(TELEMETRY_FIELDS)
                              + [f"cmd_ms:{n}" for n in self._names]
                              + [f"exec_ms:{n}" for n in self._names]
                              + [f"propellant_kg:{n}" for n in self._tanks])
        self._tel.flush()
        self._cap = None
        self._cap_lock = threading.Lock()
        self.cycles = 0

    # ---- sinks -------------------------------------------------------------------------
    def on_bytes(self, direction: str, t_ns: int, data: bytes) -> None:
        """Raw capture (called from the link's reader thread and the control thread)."""
        with self._cap_lock:
            if self._cap is None:
                self._cap = open(self.dir / "capture.csv", "w", encoding="utf-8")
                self._cap.write("t_ns,dir,hex\n")
            self._cap.write(f"{t_ns},{direction},{data.hex()}\n")
            self._cap.flush()

    def on_cycle(self, k: int, info: dict) -> None:
        from controller import cycle as cst
        from sims import plant
        from sims.constants import R_EARTH

        ctrl = info["ctrl"]
        y = info["y"]
        c = ctrl.ctrl
        r = math.sqrt(y[plant.R] ** 2 + y[plant.R + 1] ** 2 + y[plant.R + 2] ** 2)
        w = y[plant.W:plant.W + 3]
        rtt = info.get("rtt_s") or 0.0
        row = [k, f"{info['t_s']:.3f}", info["status"], f"{c[cst.C_DV_ALONG]:.9f}",
               f"{c[cst.C_REMAINING]:.9f}", f"{(r - R_EARTH) / 1e3:.6f}",
               f"{math.degrees(c[cst.C_ATT_ERR]):.6f}", f"{math.degrees(w[0]):.8f}",
               f"{math.degrees(w[1]):.8f}", f"{math.degrees(w[2]):.8f}",
               f"{self._mass0 - y[plant.M]:.6f}", f"{rtt * 1e3:.4f}"]
        row += [int(v) for v in ctrl.on_ms] + [int(v) for v in info["executed_ms"]]
        if self._tanks:
            row += [f"{float(v):.6f}" for v in info["tank_used"]]
        self._writer.writerow(row)
        self._tel.flush()
        self.cycles += 1

    # ---- start -------------------------------------------------------------------------
    def start(self, info: dict) -> Path:
        """Write run.json: what the run is about to fly (see the module docstring)."""
        out = dict(info)
        out.setdefault("started_unix_s", time.time())
        return write_json_atomic(self.dir / "run.json", out)

    # ---- end ---------------------------------------------------------------------------
    def finish(self, summary: dict, meta: dict) -> Path:
        """Write summary.json (atomically) and close the files."""
        out = dict(summary)
        out.update(meta)
        out["records"] = {"telemetry_rows": self.cycles,
                          "capture": (self.dir / "capture.csv").exists()}
        write_json_atomic(self.dir / "summary.json", out)
        self.close()
        return self.dir / "summary.json"

    def close(self) -> None:
        self._tel.close()
        with self._cap_lock:
            if self._cap is not None:
                self._cap.close()
                self._cap = None


def run_directory(run_dir: str | Path, missing: str) -> Path:
    """RUN_DIR as replay and report take it: an existing directory, or a one-line UserError
    (``missing``: what to say when there is none)."""
    run = Path(run_dir)
    try:
        exists, is_dir = run.exists(), run.is_dir()
    except (OSError, ValueError) as exc:  # a name the OS refuses (too long, ...)
        raise UserError(str(run), f"not a run directory: {getattr(exc, 'strerror', None) or exc}"
                        ) from None
    if not exists:
        raise UserError(str(run), missing)
    if not is_dir:
        raise UserError(str(run), "expected a run directory, got a file")
    return run


def read_record(path: Path) -> dict | None:
    """A run record's JSON object (run.json, status.json, summary.json); None when the file is
    not there. Anything else that is not a UTF-8 JSON object is a one-line :class:`UserError`
    naming the file: a run directory is the input of replay, report and monitor."""
    where = str(path)
    try:
        if path.exists() and not path.is_file():  # a directory, a FIFO (read would block)
            raise UserError(where, "expected a JSON file, got a directory or a special file")
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        raise UserError(str(path.parent), "expected a run directory, got a file") from None
    except UnicodeDecodeError as exc:
        raise UserError(where, f"expected UTF-8 JSON, got undecodable bytes ({exc.reason})"
                        ) from None
    except (OSError, ValueError) as exc:
        raise UserError(where, f"cannot read it: {getattr(exc, 'strerror', None) or exc}"
                        ) from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(where, f"not valid JSON: {exc}") from None
    except (ValueError, RecursionError):  # a 5000-digit number; arrays nested too deep
        raise UserError(where, "not valid JSON: a number or a nesting too large") from None
    if not isinstance(doc, dict):
        raise UserError(where, f"expected a JSON object, got {type(doc).__name__}")
    return doc


def _typename(value) -> str:
    return "null" if value is None else type(value).__name__


def check_record(doc: dict, where: str | Path, *, numbers: tuple[str, ...] = (),
                 strings: tuple[str, ...] = (), flags: tuple[str, ...] = (),
                 tables: tuple[str, ...] = (), required: tuple[str, ...] = ()) -> dict:
    """Check the fields of a run record that a reader uses: each absent (unless required) or
    null, or of its type (numbers finite, not true/false). Returns ``doc``."""
    for key in required:
        if key not in doc:
            raise UserError(str(where), "missing field: this is not a record of a thruster-hil "
                            "run (or one written by another version)", field=key)
    for keys, ok, what in (
            (numbers, lambda v: not isinstance(v, bool) and (
                isinstance(v, int) and abs(v) < 1e300
                or isinstance(v, float) and math.isfinite(v)), "a finite number"),
            (strings, lambda v: isinstance(v, str), "a string"),
            (flags, lambda v: isinstance(v, bool), "true or false"),
            (tables, lambda v: isinstance(v, dict), "an object")):
        for key in keys:
            value = doc.get(key)
            if value is not None and not ok(value):
                shown = repr(value) if isinstance(value, int | float | str) else _typename(value)
                raise UserError(str(where), f"expected {what}, got {shown[:60]}", field=key)
    return doc


def write_json_atomic(path: Path, obj: dict) -> Path:
    """Write ``obj`` as JSON to ``path`` so that a reader sees the old file or the new one, never
    half of one (a follower polls these files while the run writes them)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


class StatusWriter:
    """Rewrites RUN_DIR/status.json every ``interval_s`` from ``stats()`` on a thread of its own
    (the control loop never waits for it): ``{"updated_unix_s": ..., "link": stats()}``."""

    def __init__(self, run_dir: str | Path, stats, interval_s: float = 1.0):
        self.path = Path(run_dir) / "status.json"
        self._stats = stats
        self._interval = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="run status.json", daemon=True)
        self.writes = 0

    def _write(self) -> None:
        try:
            write_json_atomic(self.path, {"updated_unix_s": time.time(), "link": self._stats()})
            self.writes += 1
        except Exception:  # a full disk or a dead port must not stop the burn (or print a
            pass  # traceback over the live view): telemetry.csv is the record

    def _loop(self) -> None:
        while True:
            self._write()
            if self._stop.wait(self._interval):
                return

    def __enter__(self) -> StatusWriter:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._write()  # the counters at the end, also for a run shorter than one interval


def run_meta(stack, unit_name: str, link_info=None) -> dict:
    """Config hashes, versions and the unit's identity for summary.json."""
    import numba
    import numpy
    import serial

    from firmware_bridge.dictionary import DICT_HASH, DICTIONARY_PATH
    from thruster_hil import __version__

    meta = {
        "thruster_hil_version": __version__,
        "python": platform.python_version(),
        "numpy": numpy.__version__, "numba": numba.__version__,
        "pyserial": serial.__version__,
        "config_sha256": {
            "stack": file_sha256(stack.path), "station": file_sha256(stack.station.path),
            "vehicle": file_sha256(stack.vehicle.path),
            "dictionary": file_sha256(DICTIONARY_PATH)},
        "dictionary_hash": f"0x{DICT_HASH:08X}",
        "unit_identity": {"unit": unit_name},
    }
    if link_info is not None:
        meta["unit_identity"].update(
            fw_ver=link_info.fw_ver, proto_ver=link_info.proto_ver,
            dict_hash=f"0x{link_info.dict_hash:08X}", n_channels=link_info.n_channels,
            boot_count=link_info.boot_count, test_build=link_info.test_build)
    return meta
