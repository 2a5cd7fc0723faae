"""Run records: every `thruster-hil run` leaves a directory an operator can keep and replay.

    run.json        what the run set out to do, written when the burn starts: stack, unit,
                    mode, target delta-v, attitude limit, control period, planned cycles, the
                    plan and the start time (``thruster-hil monitor`` follows a run with it)
    status.json     the link's counters and the unit's last housekeeping, rewritten every
                    second while a serial unit flies (serial units only)
    summary.json    the run's summary (the --json object) plus config hashes, versions and the
                    unit's identity; written at the end, also after Ctrl-C, SIGTERM, SIGHUP or a
                    record that could not be written ("aborted": true)
    telemetry.csv   one row per control cycle, written whole every cycle (the fixed columns, the
                    commanded and executed on-times per thruster, then the propellant drawn
                    from each tank so far, ``propellant_kg:<tank>``)
    capture.csv     every byte on the wire in each direction with its host time (monotonic ns):
                    ``t_ns,dir,hex``, written whole per chunk (serial units only)

Written as the run goes, so a crash or a kill keeps everything up to the last cycle. A run in the
default directory (``runs/<UTC time>-<stack>``) also points the symlink ``runs/latest`` at it
(:func:`point_latest`); report, replay and monitor read through it once (:func:`resolve_latest`).

Never torn, never silently lost: telemetry.csv and capture.csv only ever end in a whole line (a
write that fails part-way, a full disk or a file-size limit, is cut back to the last whole line
with ftruncate, which needs no space). A write that fails stops the burn (:class:`RecordError`:
the runner closes the unit with STOP_ALL and summarises the run as aborted) and the command
ends with one line naming the file and the error. summary.json is written into space reserved
when the run starts (``.summary.reserve``, overwritten in place and renamed), so a full disk
still gets its summary; status.json and run.json are written atomically and leave no ``.tmp``.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as _dt
import errno
import hashlib
import io
import json
import math
import os
import platform
import shlex
import threading
import time
from pathlib import Path

from thruster_hil.core.errors import UserError

TELEMETRY_FIELDS = (
    "cycle",
    "t_s",
    "status",
    "dv_along_mps",
    "dv_remaining_mps",
    "altitude_km",
    "attitude_error_deg",
    "rate_x_dps",
    "rate_y_dps",
    "rate_z_dps",
    "propellant_kg",
    "rtt_ms",
)


def telemetry_numbers(info: dict, mass0_kg: float) -> tuple[float, ...]:
    """One cycle's numeric columns of telemetry.csv, ``dv_along_mps`` to ``rtt_ms``
    (TELEMETRY_FIELDS[3:]), from the runner's per-cycle ``info``, before any rounding: the run
    records write them formatted, the Python API (:mod:`thruster_hil.api`) keeps them as they
    are, so both come from this one definition."""
    from thruster_hil.controller import cycle as cst
    from thruster_hil.core.constants import R_EARTH
    from thruster_hil.sims import plant

    c = info["ctrl"].ctrl
    y = info["y"]
    r = math.sqrt(y[plant.R] ** 2 + y[plant.R + 1] ** 2 + y[plant.R + 2] ** 2)
    w = y[plant.W : plant.W + 3]
    rtt = info.get("rtt_s") or 0.0
    return (
        c[cst.C_DV_ALONG],
        c[cst.C_REMAINING],
        (r - R_EARTH) / 1e3,
        math.degrees(c[cst.C_ATT_ERR]),
        math.degrees(w[0]),
        math.degrees(w[1]),
        math.degrees(w[2]),
        mass0_kg - y[plant.M],
        rtt * 1e3,
    )


#: Space reserved for summary.json when the run starts [bytes] (a summary is a few kB).
SUMMARY_RESERVE_BYTES = 32 * 1024
RESERVE_NAME = ".summary.reserve"


class RecordError(UserError):
    """A run record that could not be written: one line naming the file and the OS error."""

    def __init__(self, path: str | Path, exc: OSError, doing: str = "cannot write it"):
        self.path = str(path)
        self.errno = exc.errno
        self.strerror = exc.strerror or str(exc)
        super().__init__(self.path, f"{doing}: {self.strerror}")


def _write_all(fd: int, data: bytes) -> None:
    """os.write until every byte is out (a write may be partial: a file-size limit)."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        if n <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        view = view[n:]


class WholeLines:
    """An append-only text file that only ever holds whole lines. Each :meth:`write` is one or
    more complete lines; if the write fails part-way (no space, EFBIG past RLIMIT_FSIZE) the
    file is cut back to where it was (ftruncate needs no space) and :class:`RecordError` is
    raised, so the file never ends in a partial row."""

    def __init__(self, path: Path):
        self.path = path
        self._fd: int | None = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self.size = 0

    def write(self, text: str) -> None:
        if self._fd is None:
            raise RecordError(self.path, OSError(errno.EBADF, "the file is closed"))
        data = text.encode("utf-8")
        try:
            _write_all(self._fd, data)
        except OSError as exc:
            try:
                os.ftruncate(self._fd, self.size)
                os.lseek(self._fd, self.size, os.SEEK_SET)
            except OSError:
                pass  # the file is gone altogether: the error below says so
            raise RecordError(self.path, exc) from None
        self.size += len(data)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def run_outcome(summary: dict) -> tuple[str, str | None]:
    """How a run ended, by the rule of the CLI's exit status, and why (None when completed):
    "aborted" (``abort_reason``) and "failed" (``failure_reason``: the target not reached, the
    attitude limit broken) exit 1 (or 128 + n after a signal), "completed" exits 0. The Python
    API's verdict and report.html's both read it from here."""
    if summary.get("aborted"):
        return "aborted", summary.get("abort_reason")
    if summary.get("failure_reason"):
        return "failed", summary["failure_reason"]
    return "completed", None


def record_not_flown(
    recorder, exc: BaseException, plan: dict, unit_label: str, stack_path, valves_closed
) -> None:
    """A run that ended before or outside its burn loop: for a signal (KeyboardInterrupt) or a
    UserError, summary.json says what it can (aborted, why, the signal); for anything else the
    records are only closed. A directory that cannot take the summary leaves the exception as
    all there is. The CLI and the Python API both end such runs here."""
    if isinstance(exc, KeyboardInterrupt):
        name = getattr(exc, "signal_name", "SIGINT")
        reason = "interrupted" if name == "SIGINT" else f"interrupted by {name}"
    elif isinstance(exc, UserError):
        name, reason = None, str(exc)
    else:
        recorder.close()
        return
    summary = {
        "stack": plan["stack"],
        "unit": unit_label,
        "target_delta_v_mps": plan["delta_v_mps"],
        "cycles": recorder.cycles,
        "completed": False,
        "aborted": True,
        "abort_reason": f"before the burn: {reason}",
        "signal": name,
        "failure_reason": None,
        "valves_closed": valves_closed,
        "run_dir": str(recorder.dir),
        "plan": plan,
        "stack_path": str(stack_path),
    }
    try:
        recorder.finish(summary, {})
    except RecordError:
        pass


def default_run_dir(stack: str, root: str | Path = "runs") -> Path:
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    return Path(root) / f"{stamp}-{stack}"


#: The symlink ``run`` points at the newest run directory it made under runs/ (``runs/latest``),
#: so the commands a README or a notebook shows can be copied as they are.
LATEST = "latest"


def point_latest(run_dir: str | Path) -> str | None:
    """Point ``<parent>/latest`` at ``run_dir`` (a relative symlink, so the runs/ tree can be
    moved), replaced atomically: a symlink made under a temporary name, then renamed over the
    old one, so a reader (``monitor runs/latest`` in another terminal) sees the old run or the
    new one, never no link. Returns why it was left alone, or None: a ``latest`` that is not a
    symlink (someone's own file or directory) is never replaced."""
    run = Path(run_dir)
    link = run.parent / LATEST
    if link.exists() and not link.is_symlink():
        return f"{link} is not a symlink: left as it is"
    tmp = run.parent / f".{LATEST}.{os.getpid()}.tmp"
    try:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        os.symlink(run.name, tmp, target_is_directory=True)
        os.replace(tmp, link)  # rename(2) replaces the link itself, never what it points at
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        return f"{link} could not be pointed at {run.name}: {exc.strerror}"
    return None


def resolve_latest(run_dir: str | Path) -> Path:
    """RUN_DIR as given, or where it points when it is ``runs/latest`` (any symlink): the
    commands then work on that run even if a newer run moves the link meanwhile, and name it."""
    path = Path(run_dir)
    try:
        if not path.is_symlink():
            return path
        target = Path(os.readlink(path))
    except (OSError, ValueError):  # a name the OS refuses: the caller says so
        return path
    return target if target.is_absolute() else path.parent / target


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


class RunRecorder:
    """Writes one run directory. Use as ``on_cycle`` / ``on_bytes`` sink, then :meth:`finish`."""

    def __init__(
        self,
        out_dir: str | Path,
        thruster_names: list[str],
        mass0_kg: float,
        tank_names: tuple[str, ...] = (),
    ):
        self.dir = Path(out_dir)
        try:
            taken = self.dir.exists() and (not self.dir.is_dir() or any(self.dir.iterdir()))
        except OSError as exc:  # a name too long, a directory we may not list
            raise UserError(
                str(self.dir), f"cannot use it as the run directory: {exc.strerror}", field="--out"
            ) from None
        if taken:
            what = "directory exists and is not empty" if self.dir.is_dir() else "path is a file"
            raise UserError(
                str(self.dir),
                f"the run {what}: pick another --out (nothing is overwritten)",
                field="--out",
            )
        self._names = list(thruster_names)
        self._tanks = list(tank_names)
        self._mass0 = mass0_kg
        self._row = io.StringIO()
        self._writer = csv.writer(self._row)  # csv formatting (\r\n rows), written whole
        self._cap: WholeLines | None = None
        self._cap_lock = threading.Lock()
        self._reserve: int | None = None
        self.cycles = 0
        #: The first record that could not be written (the burn stops at the next cycle).
        self.error: RecordError | None = None
        self._tel: WholeLines | None = None
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._tel = WholeLines(self.dir / "telemetry.csv")
            self._tel.write(
                self._line(
                    list(TELEMETRY_FIELDS)
                    + [f"cmd_ms:{n}" for n in self._names]
                    + [f"exec_ms:{n}" for n in self._names]
                    + [f"propellant_kg:{n}" for n in self._tanks]
                )
            )
            self._reserve_summary()
        except (OSError, RecordError) as exc:
            self.close()
            why = exc.message if isinstance(exc, RecordError) else exc.strerror
            raise UserError(
                str(self.dir), f"cannot create the run directory: {why}", field="--out"
            ) from None

    def _line(self, row: list) -> str:
        self._writer.writerow(row)
        text = self._row.getvalue()
        self._row.seek(0)
        self._row.truncate()
        return text

    def _reserve_summary(self) -> None:
        """Claim the space summary.json will need now, while there is some (see module doc)."""
        fd = os.open(self.dir / RESERVE_NAME, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        self._reserve = fd
        _write_all(fd, b" " * SUMMARY_RESERVE_BYTES)

    def _discard_reserve(self) -> None:
        if self._reserve is not None:
            os.close(self._reserve)
            self._reserve = None
            try:
                os.unlink(self.dir / RESERVE_NAME)
            except OSError:
                pass

    def fail(self, error: RecordError) -> None:
        """Note a record that could not be written (any thread): the burn stops at the next
        cycle (:meth:`on_cycle` raises :class:`thruster_hil.closedloop.runner.StopBurn`)."""
        if self.error is None:
            self.error = error

    def _stop_if_failed(self) -> None:
        if self.error is not None:
            from thruster_hil.closedloop.runner import StopBurn

            raise StopBurn(f"records: {self.error}")

    # ---- sinks -------------------------------------------------------------------------
    def on_bytes(self, direction: str, t_ns: int, data: bytes) -> None:
        """Raw capture (called from the link's reader thread and the control thread)."""
        with self._cap_lock:
            if self.error is not None:
                return  # the burn is stopping: the capture keeps what it had, whole
            try:
                if self._cap is None:
                    self._cap = WholeLines(self.dir / "capture.csv")
                    self._cap.write("t_ns,dir,hex\n")
                self._cap.write(f"{t_ns},{direction},{data.hex()}\n")
            except OSError as exc:
                self.fail(RecordError(self.dir / "capture.csv", exc))
            except RecordError as err:
                self.fail(err)

    def on_cycle(self, k: int, info: dict) -> None:
        dv, left, alt, att, wx, wy, wz, prop, rtt_ms = telemetry_numbers(info, self._mass0)
        row = [
            k,
            f"{info['t_s']:.3f}",
            info["status"],
            f"{dv:.9f}",
            f"{left:.9f}",
            f"{alt:.6f}",
            f"{att:.6f}",
            f"{wx:.8f}",
            f"{wy:.8f}",
            f"{wz:.8f}",
            f"{prop:.6f}",
            f"{rtt_ms:.4f}",
        ]
        row += [int(v) for v in info["ctrl"].on_ms] + [int(v) for v in info["executed_ms"]]
        if self._tanks:
            row += [f"{float(v):.6f}" for v in info["tank_used"]]
        self._stop_if_failed()  # the capture or status.json failed since the last cycle
        try:
            self._tel.write(self._line(row))
        except RecordError as err:
            self.fail(err)
            self._stop_if_failed()
        self.cycles += 1

    # ---- start -------------------------------------------------------------------------
    def start(self, info: dict) -> Path:
        """Write run.json: what the run is about to fly (see the module docstring).
        RecordError if it cannot be written."""
        out = dict(info)
        out.setdefault("started_unix_s", time.time())
        try:
            return write_json_atomic(self.dir / "run.json", out)
        except OSError as exc:
            raise RecordError(self.dir / "run.json", exc) from None

    # ---- end ---------------------------------------------------------------------------
    def finish(self, summary: dict, meta: dict) -> Path:
        """Write summary.json (atomically) and close the files."""
        out = dict(summary)
        out.update(meta)
        out["records"] = {
            "telemetry_rows": self.cycles,
            "capture": (self.dir / "capture.csv").exists(),
        }
        if self.error is not None:
            out["records"]["error"] = str(self.error)
        path = self.dir / "summary.json"
        text = json.dumps(out, indent=1) + "\n"
        self._close_files()
        try:
            self._write_summary(path, text.encode("utf-8"))
        except OSError as exc:
            raise RecordError(path, exc) from None
        return path

    def _write_summary(self, path: Path, data: bytes) -> None:
        """Into the reserved space if it is big enough (no new blocks needed), else anew."""
        fd, self._reserve = self._reserve, None
        if fd is None or len(data) > SUMMARY_RESERVE_BYTES:
            if fd is not None:
                os.close(fd)
                _unlink_quietly(self.dir / RESERVE_NAME)
            write_bytes_atomic(path, data)
            return
        reserve = self.dir / RESERVE_NAME
        try:
            os.lseek(fd, 0, os.SEEK_SET)
            _write_all(fd, data)
            os.ftruncate(fd, len(data))
        except OSError:
            os.close(fd)
            _unlink_quietly(reserve)
            raise
        os.close(fd)
        os.replace(reserve, path)

    def _close_files(self) -> None:
        if self._tel is not None:
            self._tel.close()
        with self._cap_lock:
            if self._cap is not None:
                self._cap.close()
                self._cap = None

    def close(self) -> None:
        """Close the files and give back the summary's reserved space (idempotent; after
        :meth:`finish` there is nothing left to close)."""
        self._close_files()
        self._discard_reserve()


def run_directory(run_dir: str | Path, missing: str) -> Path:
    """RUN_DIR as replay and report take it: an existing directory, or a one-line UserError
    (``missing``: what to say when there is none)."""
    run = Path(run_dir)
    try:
        exists, is_dir = run.exists(), run.is_dir()
    except (OSError, ValueError) as exc:  # a name the OS refuses (too long, ...)
        raise UserError(
            str(run), f"not a run directory: {getattr(exc, 'strerror', None) or exc}"
        ) from None
    if not exists:
        raise UserError(str(run), missing)
    if not is_dir:
        raise UserError(str(run), "expected a run directory, got a file")
    return run


def refuse_campaign_dir(run: Path, command: str) -> None:
    """A one-line UserError when ``run`` is a Monte-Carlo campaign's directory (it holds
    cases.csv), saying what ``command`` (replay, monitor) takes instead; nothing otherwise."""
    try:
        is_campaign = (run / "cases.csv").is_file()
    except (OSError, ValueError):
        return
    if not is_campaign:
        return
    try:
        summary = read_record(run / "summary.json") or {}
    except UserError:
        summary = {}
    if not isinstance(summary, dict):
        summary = {}
    spec = summary.get("dispersions")
    spec_file = spec.get("file") if isinstance(spec, dict) else None
    stack = summary.get("stack")
    rerun = shlex.join(
        [
            "thruster-hil",
            "run",
            "--unit",
            "sim",
            "--stack",
            stack if isinstance(stack, str) else "STACK",
            "TARGET",
            "--dispersions",
            spec_file if isinstance(spec_file, str) else "SPEC",
            "--case-seed",
            "K",
        ]
    )
    takes = {
        "replay": "replay takes the directory of a 'thruster-hil run' through a serial unit "
        "(--unit emulator, --unit qemu or --port), whose capture.csv it decodes",
        "monitor": "monitor follows the directory of a 'thruster-hil run'",
    }[command]
    raise UserError(
        str(run),
        f"a Monte-Carlo campaign directory (cases.csv), not a run: {takes}; to fly one case "
        f"with its own run records: '{rerun}' (TARGET the campaign's, K from cases.csv; "
        "summary.json's failures give each failed case's whole command)",
    )


def damage(run: Path, needs: tuple[str, ...] = ("summary", "telemetry", "capture")) -> list[str]:
    """What the run directory ``run`` lacks or holds broken, among the files in ``needs``
    (summary, telemetry, capture), one phrase each; [] when they are whole. For the one-line
    errors of replay and report: a run killed mid-write, a full disk, a file removed."""
    out: list[str] = []
    try:
        meta = read_record(run / "run.json")
    except UserError:
        meta = None
    try:
        summary = read_record(run / "summary.json")
    except UserError as err:
        summary, bad_summary = None, str(err)
    else:
        bad_summary = None
    rows = None
    if "telemetry" in needs:
        try:
            data = (run / "telemetry.csv").read_bytes()
        except FileNotFoundError:
            out.append("no telemetry.csv")
        except OSError as exc:
            out.append(f"telemetry.csv cannot be read ({exc.strerror})")
        else:
            rows = max(0, data.count(b"\n") - 1)
            if data and not data.endswith(b"\n"):
                out.append(f"telemetry.csv ends in a partial row (after {rows} whole cycles)")
    if "summary" in needs:
        if bad_summary is not None:
            out.append(f"summary.json is broken ({bad_summary})")
        elif summary is None:
            kept = f" ({rows} cycles in telemetry.csv)" if rows is not None else ""
            out.append(
                f"no summary.json{kept}: the run did not end by itself (killed, power "
                "lost) or is still flying"
            )
        else:
            cycles = summary.get("cycles")
            if rows is not None and isinstance(cycles, int) and cycles != rows:
                out.append(f"summary.json counts {cycles} cycles, telemetry.csv holds {rows}")
            error = (
                (summary.get("records") or {}).get("error")
                if isinstance(summary.get("records"), dict)
                else None
            )
            if error:
                out.append(f"the run could not write its records ({error})")
    if "capture" in needs:
        serial = (meta or {}).get("serial", summary is not None and summary.get("link") is not None)
        try:
            cap = (run / "capture.csv").read_bytes()
        except FileNotFoundError:
            if serial:
                out.append("no capture.csv (a run through a serial unit writes one)")
        except OSError as exc:
            out.append(f"capture.csv cannot be read ({exc.strerror})")
        else:
            if cap and not cap.endswith(b"\n"):
                out.append("capture.csv ends in a partial line")
    if meta is None and not (run / "run.json").exists():
        out.append("no run.json")
    try:
        left = sorted(
            p.name for p in run.iterdir() if p.name.endswith(".tmp") or p.name == RESERVE_NAME
        )
    except OSError:
        left = []
    if left:
        out.append(f"left over from a run killed while writing: {', '.join(left)}")
    return out


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
        raise UserError(
            where, f"expected UTF-8 JSON, got undecodable bytes ({exc.reason})"
        ) from None
    except (OSError, ValueError) as exc:
        raise UserError(where, f"cannot read it: {getattr(exc, 'strerror', None) or exc}") from None
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


def check_record(
    doc: dict,
    where: str | Path,
    *,
    numbers: tuple[str, ...] = (),
    strings: tuple[str, ...] = (),
    flags: tuple[str, ...] = (),
    tables: tuple[str, ...] = (),
    required: tuple[str, ...] = (),
) -> dict:
    """Check the fields of a run record that a reader uses: each absent (unless required) or
    null, or of its type (numbers finite, not true/false). Returns ``doc``."""
    for key in required:
        if key not in doc:
            raise UserError(
                str(where),
                "missing field: this is not a record of a thruster-hil "
                "run (or one written by another version)",
                field=key,
            )
    for keys, ok, what in (
        (
            numbers,
            lambda v: (
                not isinstance(v, bool)
                and (
                    isinstance(v, int)
                    and abs(v) < 1e300
                    or isinstance(v, float)
                    and math.isfinite(v)
                )
            ),
            "a finite number",
        ),
        (strings, lambda v: isinstance(v, str), "a string"),
        (flags, lambda v: isinstance(v, bool), "true or false"),
        (tables, lambda v: isinstance(v, dict), "an object"),
    ):
        for key in keys:
            value = doc.get(key)
            if value is not None and not ok(value):
                shown = repr(value) if isinstance(value, int | float | str) else _typename(value)
                raise UserError(str(where), f"expected {what}, got {shown[:60]}", field=key)
    return doc


def write_json_atomic(path: Path, obj: dict) -> Path:
    """Write ``obj`` as JSON to ``path`` so that a reader sees the old file or the new one, never
    half of one (a follower polls these files while the run writes them)."""
    return write_bytes_atomic(path, (json.dumps(obj, indent=1) + "\n").encode("utf-8"))


def write_bytes_atomic(path: Path, data: bytes) -> Path:
    """``data`` to ``path`` through ``path.tmp`` and a rename; the .tmp never stays behind
    (removed when the write fails: a full disk).

    A SIGKILL cannot be caught, so the name ``path.tmp`` exists only for as short as can be:
    the bytes go first into an unnamed file in the directory (Linux's O_TMPFILE: it vanishes
    with the process if it dies writing), which is then given the .tmp name and renamed over
    ``path``: two system calls with a name no one needs. (A host SIGKILLed while status.json was
    written left a status.json.tmp in CI's loaded campaign, row S02.) Where O_TMPFILE is not
    supported (another OS, some file systems) the bytes are written under the .tmp name."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        fd = _unnamed_file(path.parent)
        named = fd is None
        if named:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            _write_all(fd, data)
            if not named:
                _unlink_quietly(tmp)  # (one a killed run left: link() does not replace)
                _link_unnamed(fd, tmp)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    return path


def _link_unnamed(fd: int, name: Path) -> None:
    """Give the unnamed file ``fd`` the name ``name``: linkat(2) of /proc/self/fd/FD with
    AT_SYMLINK_FOLLOW, as open(2) documents for O_TMPFILE (os.link's own call does not follow
    the /proc link on Linux, and fails across devices)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    at_fdcwd, at_symlink_follow = -100, 0x400
    src = f"/proc/self/fd/{fd}".encode()
    if libc.linkat(at_fdcwd, src, at_fdcwd, os.fsencode(name), at_symlink_follow) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(name))


def _unnamed_file(directory: Path) -> int | None:
    """A writable file with no name in ``directory`` (O_TMPFILE), or None where there is none."""
    flag = getattr(os, "O_TMPFILE", 0)
    if not flag or not os.path.isdir("/proc/self/fd"):
        return None
    try:
        return os.open(directory, os.O_WRONLY | flag, 0o644)
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOENT):
            return None  # not supported here: the named way
        raise


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


class StatusWriter:
    """Rewrites RUN_DIR/status.json every ``interval_s`` from ``stats()`` on a thread of its own
    (the control loop never waits for it): ``{"updated_unix_s": ..., "link": stats()}``."""

    def __init__(self, run_dir: str | Path, stats, interval_s: float = 1.0, on_error=None):
        self.path = Path(run_dir) / "status.json"
        self._stats = stats
        self._on_error = on_error  # called with a RecordError when status.json cannot be written
        self._interval = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="run status.json", daemon=True)
        self.writes = 0

    def _write(self) -> None:
        try:
            write_json_atomic(self.path, {"updated_unix_s": time.time(), "link": self._stats()})
            self.writes += 1
        except OSError as exc:  # a full disk, the run directory gone: the burn must stop
            if self._on_error is not None:
                self._on_error(RecordError(self.path, exc))
        except Exception:  # noqa: BLE001 - a dead port must not print a traceback over the
            pass  # live view: telemetry.csv is the record

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

    from thruster_hil import __version__
    from thruster_hil.firmware_bridge.dictionary import DICT_HASH, DICTIONARY_PATH

    meta = {
        "thruster_hil_version": __version__,
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "numba": numba.__version__,
        "pyserial": serial.__version__,
        "config_sha256": {
            "stack": file_sha256(stack.path),
            "station": file_sha256(stack.station.path),
            "vehicle": file_sha256(stack.vehicle.path),
            "dictionary": file_sha256(DICTIONARY_PATH),
        },
        "dictionary_hash": f"0x{DICT_HASH:08X}",
        "unit_identity": {"unit": unit_name},
    }
    if link_info is not None:
        meta["unit_identity"].update(
            fw_ver=link_info.fw_ver,
            proto_ver=link_info.proto_ver,
            dict_hash=f"0x{link_info.dict_hash:08X}",
            n_channels=link_info.n_channels,
            boot_count=link_info.boot_count,
            test_build=link_info.test_build,
        )
    return meta
