"""What an operator watches while a burn flies: the progress bar, ``run --live`` and ``monitor``.

Everything that draws is :func:`render`, a pure function from a *snapshot* (a small dict of
plain numbers and strings, below) to a rich renderable, so it is tested without a terminal.
Snapshots come from three places:

* :class:`RunWatch` — inside ``thruster-hil run``: ``on_cycle`` publishes one tuple per cycle
  (a single attribute store, no lock, no I/O); :meth:`RunWatch.snapshot` is called by rich
  Live's own refresh thread a few times a second and adds the link's counters then.
* :class:`RunDirFollower` — ``thruster-hil monitor RUN_DIR``: tails telemetry.csv (complete lines
  only), reads run.json, status.json and, at the end, summary.json.
* :func:`port_snapshot` — ``thruster-hil monitor --port URL``: the unit's housekeeping (HK) and
  the link's counters over a session that never arms.

Snapshot keys (all optional; a missing one is drawn as "-"):

    title            str       what is being watched
    cycle            int       last cycle on record (0-based; shown as k + 1 cycles flown)
    planned_cycles   int       cycles the plan calls for (burn duration / control period)
    t_s              float     burn time of that cycle [s]
    wall_s           float     wall time since the burn's first cycle [s] (for the ETA)
    status           int       the controller's status word of that cycle
    finished         str       set once the run ended: "completed" or "aborted: <why>"
    quiet_s          float     (monitor) seconds since telemetry.csv last grew, while unfinished
    unit             dict      name, mode, state (BOOT/SAFE/ARMING/ARMED/FAULT or None),
                               armed (bool or None), tank_kPa, hk_age_s
    thrusters        [str]     thruster names
    executed_ms      [int]     on-time each thruster executed in that cycle [ms]
    period_ms        int       control period [ms]
    dv_mps, target_dv_mps      delta-v achieved along track and the target [m/s]
    att_err_deg, att_limit_deg attitude error and its limit [deg]
    propellant_kg    float     propellant used so far [kg]
    link             dict      rtt_ms (this cycle's FIRE to VALVE_REPORT), rtt_ms_p50,
                               rtt_ms_p99, retries, crc_errors, deadline_misses, frames_sent,
                               frames_received, cycle_start_jitter_ms_p50/_p99/_max (REALTIME:
                               how late cycles start against the schedule); None: no link
    realtime         bool      deadline misses are meaningful, and rtt_ms holds the pulses
                               (shown as "FIRE to report", apart from the link's RTT)
    valves           dict      (port) n_channels, open_mask, failed_mask, stuck_mask
    counters         dict      (port) the unit's HK counters
"""

from __future__ import annotations

import csv
import io
import math
import os
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from thruster_hil.core.errors import UserError
from thruster_hil.records import check_record, read_record, refuse_campaign_dir

#: Bars are drawn with eighth blocks, so a 16-cell bar resolves 1/128 of full scale.
_EIGHTHS = " ▏▎▍▌▋▊▉"
BAR_CELLS = 16
#: Above this many thrusters the activity table uses two columns of thrusters.
_ONE_COLUMN_MAX = 8

#: monitor: a run whose telemetry has not grown for this long is flagged (killed? stalled?) [s].
QUIET_S = 5.0
STATE_NAMES = {0: "BOOT", 1: "SAFE", 2: "ARMING", 3: "ARMED", 4: "FAULT"}
_STATE_STYLE = {
    "ARMED": "bold green",
    "SAFE": "cyan",
    "ARMING": "yellow",
    "FAULT": "bold red",
    "BOOT": "yellow",
}
#: The unit's HK counters, rows of (field, label), each row under 60 characters.
HK_COUNTERS = (
    (
        ("rx_frames", "frames in"),
        ("last_step", "last step"),
        ("watchdog_remaining_ms", "watchdog left ms"),
    ),
    (
        ("crc_errors", "CRC"),
        ("cobs_errors", "COBS"),
        ("length_errors", "length"),
        ("seq_gaps", "seq gaps"),
    ),
    (("uart_overruns", "UART overruns"), ("session_errors", "session errors")),
)


# ---------------------------------------------------------------------------- drawing


def bar(fraction: float | None, cells: int = BAR_CELLS) -> str:
    """A horizontal bar of ``cells`` characters filled to ``fraction`` (clipped to 0..1)."""
    if fraction is None or not math.isfinite(fraction):
        return " " * cells
    eighths = int(round(max(0.0, min(1.0, fraction)) * cells * 8))
    full, part = divmod(eighths, 8)
    text = "█" * full + (_EIGHTHS[part] if part else "")
    return text.ljust(cells)


def _num(value: Any, fmt: str, unit: str = "") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:{fmt}}{unit}"


def format_eta(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "-:--:--"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def eta_s(snap: dict) -> float | None:
    """Wall seconds to the planned end at the pace so far, None when it cannot be told."""
    k, planned, wall = snap.get("cycle"), snap.get("planned_cycles"), snap.get("wall_s")
    if snap.get("finished") or k is None or not planned or not wall or wall <= 0 or k < 1:
        return None
    return max(0.0, (planned - (k + 1)) * wall / k)


def status_names(status: int | None) -> str:
    if status is None:
        return "-"
    from thruster_hil.controller.cycle import describe_status

    return ", ".join(describe_status(int(status))) or "idle"


def _progress_row(snap: dict) -> Text:
    k, planned, finished = snap.get("cycle"), snap.get("planned_cycles"), snap.get("finished")
    t = Text()
    if k is None:
        if not finished:
            t.append("waiting for the first cycle")
            return t
        t.append("no cycle flown")  # it ended before its first cycle: still say how
    else:
        # Cycles are numbered from 0: cycle k is the (k+1)th flown. A burn may fly past its
        # plan (the cycle that completes it, a shortfall made up): the flown cycles are then the
        # whole, 100 % and never more, the plan said beside them, and there is no ETA to give.
        flown = k + 1
        over = bool(planned) and flown > planned
        t.append(f"{flown}")
        if planned:
            frac = 1.0 if over else flown / planned
            t.append(f", planned {planned}  " if over else f" of {planned}  ")
            t.append(bar(frac), style="blue")
            t.append(f" {100 * frac:5.1f} %")
        if planned and not over and not finished:
            t.append(f"  ETA {format_eta(eta_s(snap))}")
    if finished:
        ok = finished == "completed"
        t.append(f"  {finished.upper()}", style="bold green" if ok else "bold red")
    quiet = snap.get("quiet_s")
    if not finished and quiet is not None and quiet > QUIET_S:
        t.append(f"  no new cycle for {quiet:.0f} s", style="bold yellow")
    return t


def _unit_row(snap: dict) -> Text:
    u = snap.get("unit") or {}
    t = Text(str(u.get("name", "-")))
    if u.get("mode"):
        t.append(f" ({u['mode']})")
    state = u.get("state")
    t.append("   state ")
    t.append(state or "-", style=_STATE_STYLE.get(state or "", ""))
    armed = u.get("armed")
    t.append("   armed: ")
    if armed is None:
        t.append("n/a")
    else:
        t.append("yes" if armed else "no", style="bold green" if armed else "cyan")
    return t


def _housekeeping_row(snap: dict) -> Text | None:
    u = snap.get("unit") or {}
    parts = []
    if u.get("tank_kPa") is not None:
        parts.append(f"tank {u['tank_kPa']} kPa")
    if u.get("hk_age_s") is not None:
        parts.append(f"last HK {u['hk_age_s']:.1f} s ago")
    return Text("   ".join(parts)) if parts else None


def _ratio_row(
    value: float | None, target: float | None, fmt: str, unit: str, over_is_bad: bool
) -> Text:
    t = Text(f"{_num(value, fmt)} of {_num(target, fmt)} {unit}  ")
    if value is not None and target:
        frac = value / target
        style = "red" if over_is_bad and frac > 1.0 else ("green" if not over_is_bad else "blue")
        t.append(bar(frac), style=style)
        t.append(f" {100 * frac:5.1f} %", style="bold red" if over_is_bad and frac > 1 else "")
    return t


def _link_rows(snap: dict) -> list[tuple[str, Text]]:
    link = snap.get("link")
    if link is None:
        return [("link", Text("in-process unit: no link"))]
    percentiles = (
        f"p50 {_num(link.get('rtt_ms_p50'), '.2f')}, p99 {_num(link.get('rtt_ms_p99'), '.2f')} ms"
    )
    rows: list[tuple[str, Text]] = []
    if snap.get("realtime"):
        # A REALTIME unit reports a FIRE when its pulses have ended, so FIRE -> VALVE_REPORT
        # is mostly the pulse (495 ms of a 500 ms cycle), not a round trip; the link's RTT is
        # what PING/PONG measured (the session's samples hold no FIRE exchange in REALTIME).
        rtt = Text(f"RTT {percentiles} (PING/PONG)")
        rows.append(
            (
                "FIRE to report",
                Text(f"{_num(link.get('rtt_ms'), '.1f', ' ms')} this cycle (pulses included)"),
            )
        )
    else:
        # LOCKSTEP: the unit answers a FIRE at once (virtual time), so it is a round trip.
        rtt = Text(f"RTT {_num(link.get('rtt_ms'), '.2f', ' ms')} (link {percentiles})")
    frames = Text(
        f"{_num(link.get('frames_sent'), 'd')} out / "
        f"{_num(link.get('frames_received'), 'd')} in   retries "
    )
    n = link.get("retries")
    frames.append(_num(n, "d"), style="yellow" if n else "")
    errors = Text("CRC errors ")
    n = link.get("crc_errors")
    errors.append(_num(n, "d"), style="yellow" if n else "")
    if snap.get("realtime"):
        n = link.get("deadline_misses")
        errors.append("   deadline misses ")
        errors.append(_num(n, "d"), style="bold red" if n else "")
        # How late the cycles start against the ideal schedule (the host's pacing).
        worst = link.get("cycle_start_jitter_ms_max")
        jitter = Text(
            f"p50 {_num(link.get('cycle_start_jitter_ms_p50'), '.2f')}, "
            f"p99 {_num(link.get('cycle_start_jitter_ms_p99'), '.2f')}, max "
        )
        period = snap.get("period_ms") or 0
        jitter.append(
            _num(worst, ".2f", " ms"),
            style="yellow" if worst is not None and period and worst > 0.1 * period else "",
        )
        jitter.append(" late")
        rows.append(("cycle start", jitter))
    return [("link", rtt), *rows, ("link frames", frames), ("link errors", errors)]


def _thruster_table(snap: dict) -> Table | None:
    names, executed = snap.get("thrusters"), snap.get("executed_ms")
    if not names:
        return None
    period = snap.get("period_ms") or 0
    groups = 1 if len(names) <= _ONE_COLUMN_MAX else 2
    table = Table.grid(padding=(0, 1))
    for g in range(groups):
        if g:
            table.add_column(min_width=2)  # gutter between the groups
        table.add_column(style="bold")
        table.add_column(style="magenta", no_wrap=True)
        table.add_column(justify="right")
    rows = math.ceil(len(names) / groups)
    for r in range(rows):
        cells: list[str] = []
        for g in range(groups):
            i = g * rows + r
            if g:
                cells.append("")
            if i >= len(names):
                cells += ["", "", ""]
                continue
            ms = executed[i] if executed is not None and i < len(executed) else None
            frac = ms / period if ms is not None and period else None
            cells += [names[i], bar(frac, 12), _num(ms, "d", " ms")]
        table.add_row(*cells)
    return table


def _valve_rows(valves: dict) -> list[tuple[str, Text]]:
    n = valves.get("n_channels") or 0
    opened, failed, stuck = (valves.get(k) or 0 for k in ("open_mask", "failed_mask", "stuck_mask"))
    rows = []
    for bank in range(math.ceil(n / 16)):
        t = Text()
        for ch in range(bank * 16, min(n, bank * 16 + 16)):
            bit = 1 << ch
            if stuck & bit:
                t.append("S", style="bold red")
            elif failed & bit:
                t.append("F", style="red")
            elif opened & bit:
                t.append("█", style="magenta")
            else:
                t.append("·", style="dim")
        t.append(f"   ch {bank * 16}..{min(n, bank * 16 + 16) - 1}")
        rows.append((f"valves {bank}", t))
    if rows:
        rows.append(("", Text("█ open   · closed   F failed   S stuck", style="dim")))
    return rows


def render(snap: dict) -> RenderableType:
    """The live view of one snapshot (see the module docstring for its keys)."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()
    if "cycle" in snap or "planned_cycles" in snap:
        grid.add_row("cycles", _progress_row(snap))
    grid.add_row("unit", _unit_row(snap))
    if "status" in snap:
        grid.add_row(
            "controller",
            Text(f"t {_num(snap.get('t_s'), '.1f', ' s')}   {status_names(snap.get('status'))}"),
        )
    if "target_dv_mps" in snap or "dv_mps" in snap:
        grid.add_row(
            "delta-v",
            _ratio_row(
                snap.get("dv_mps"), snap.get("target_dv_mps"), ".5f", "m/s", over_is_bad=False
            ),
        )
    if "att_limit_deg" in snap or "att_err_deg" in snap:
        grid.add_row(
            "attitude error",
            _ratio_row(
                snap.get("att_err_deg"),
                snap.get("att_limit_deg"),
                ".4f",
                "deg limit",
                over_is_bad=True,
            ),
        )
    if "propellant_kg" in snap:
        grid.add_row("propellant", Text(f"{_num(snap.get('propellant_kg'), '.3f', ' kg')} used"))
    hk = _housekeeping_row(snap)
    if hk is not None:
        grid.add_row("housekeeping", hk)
    for label, row in _link_rows(snap):
        grid.add_row(label, row)
    for label, row in _valve_rows(snap.get("valves") or {}):
        grid.add_row(label, row)
    counters = snap.get("counters")
    if counters:
        for i, fields in enumerate(HK_COUNTERS):
            grid.add_row(
                ("unit counters", "unit errors", "")[i],
                Text("   ".join(f"{label} {_num(counters.get(k), 'd')}" for k, label in fields)),
            )
    parts: list[RenderableType] = [grid]
    thrusters = _thruster_table(snap)
    if thrusters is not None:
        period = snap.get("period_ms")
        parts += [
            Text(
                f"executed on-time per thruster this cycle (of {_num(period, 'd')} ms)",
                style="bold",
            ),
            thrusters,
        ]
    return Panel(
        Group(*parts),
        title=f"thruster-hil · {snap.get('title', '')}",
        title_align="left",
        border_style="blue",
    )


def render_text(snap: dict, width: int = 110) -> str:
    """:func:`render` as plain text (no colour codes) at ``width`` columns: tests and --once."""
    from rich.console import Console

    console = Console(
        file=io.StringIO(), width=width, record=True, color_system=None, force_terminal=False
    )
    console.print(render(snap))
    return console.export_text()


# ---------------------------------------------------------------------------- in a run


class RunWatch:
    """The live view's source inside ``thruster-hil run``.

    :meth:`on_cycle` runs in the control loop. It keeps a reference to the cycle (two attribute
    stores) and, at most ``publish_hz`` times a second of wall time, publishes that cycle's
    numbers as one new tuple in one attribute store: atomic for the reader, nothing rendered, no
    lock, no I/O. :meth:`snapshot` runs on rich Live's refresh thread and asks the unit for its
    link counters there, at the refresh rate, never per cycle. :meth:`finish` publishes the last
    cycle and how the run ended, for the final frame.
    """

    def __init__(
        self,
        *,
        title: str,
        thrusters: list[str],
        period_ms: int,
        planned_cycles: int,
        target_dv_mps: float,
        att_limit_deg: float,
        mass0_kg: float,
        unit=None,
        unit_name: str = "sim",
        mode: str = "lockstep",
        publish_hz: float = 20.0,
    ):
        self._static = {
            "title": title,
            "thrusters": list(thrusters),
            "period_ms": period_ms,
            "planned_cycles": planned_cycles,
            "target_dv_mps": target_dv_mps,
            "att_limit_deg": att_limit_deg,
            "realtime": mode == "realtime",
        }
        self._mass0 = mass0_kg
        self._unit = unit
        self._unit_name = unit_name
        self._mode = mode
        self._last: tuple | None = None
        self._t0: float | None = None
        self._interval = 1.0 / publish_hz
        self._next = -math.inf
        self._k = -1
        self._info: dict | None = None
        self.finished: str | None = None
        self.published = 0

    def on_cycle(self, k: int, info: dict) -> None:
        self._k, self._info = k, info
        now = time.perf_counter()
        if now < self._next:
            return
        self._next = now + self._interval
        self._publish(k, info, now)

    def _publish(self, k: int, info: dict, now: float) -> None:
        from thruster_hil.controller import cycle as cst
        from thruster_hil.sims import plant

        if self._t0 is None:
            self._t0 = now
        c = info["ctrl"].ctrl
        self._last = (
            k,
            info["t_s"],
            info["status"],
            float(c[cst.C_DV_ALONG]),
            math.degrees(c[cst.C_ATT_ERR]),
            float(info["y"][plant.M]),
            info.get("rtt_s"),
            now - self._t0,
            info["executed_ms"].tolist(),
        )
        self.published += 1

    def finish(self, outcome: str) -> None:
        """The run ended (``outcome``: "completed", "aborted: ..."): publish its last cycle (its
        arrays hold that cycle's values once the loop has stopped) and the outcome."""
        if self._info is not None:
            self._publish(self._k, self._info, time.perf_counter())
        self.finished = outcome

    def snapshot(self) -> dict:
        snap: dict[str, Any] = dict(self._static)
        unit: dict[str, Any] = {"name": self._unit_name, "mode": self._mode}
        snap["unit"] = unit
        last = self._last
        if last is not None:
            k, t_s, status, dv, att, mass, rtt_s, wall, executed = last
            snap.update(
                cycle=k,
                t_s=t_s,
                status=status,
                dv_mps=dv,
                att_err_deg=att,
                propellant_kg=self._mass0 - mass,
                wall_s=wall,
                executed_ms=executed,
            )
        else:
            rtt_s = None
        if self.finished:
            snap["finished"] = self.finished
        stats = (
            self._unit.stats() if self._unit is not None and hasattr(self._unit, "stats") else None
        )
        if stats is None:
            unit.update(state="SIM", armed=None)
            snap["link"] = None
        else:
            unit.update(
                state=STATE_NAMES.get(stats.get("unit_state")),
                armed=stats.get("armed"),
                tank_kPa=stats.get("unit_tank_kPa"),
            )
            snap["link"] = _link_summary(stats, rtt_ms=None if rtt_s is None else rtt_s * 1e3)
        return snap


def _percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile, as the link computes its own."""
    if not values:
        return None
    s = sorted(values)
    return s[max(0, min(len(s) - 1, math.ceil(q / 100.0 * len(s)) - 1))]


def _link_summary(stats: dict, rtt_ms: float | None = None) -> dict:
    out = {
        k: stats.get(k)
        for k in (
            "rtt_ms_p50",
            "rtt_ms_p99",
            "retries",
            "crc_errors",
            "deadline_misses",
            "frames_sent",
            "frames_received",
            "cycle_start_jitter_ms_p50",
            "cycle_start_jitter_ms_p99",
            "cycle_start_jitter_ms_max",
        )
    }
    out["rtt_ms"] = rtt_ms if rtt_ms is not None else stats.get("rtt_ms_p50")
    return out


class RunProgress:
    """The progress bar of ``thruster-hil run`` on stderr: cycles against the planned cycles and
    an ETA. :meth:`on_cycle` costs one clock read per cycle and hands rich a new count at most
    ``max_hz`` times a second; rich draws from its own thread."""

    def __init__(
        self,
        planned_cycles: int,
        console=None,
        max_hz: float = 10.0,
        description: str = "burn",
        clock: Callable[[], float] = time.monotonic,
    ):
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._interval = 1.0 / max_hz
        self._clock = clock
        self._next = -math.inf
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("cycles"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
            transient=True,
            refresh_per_second=max(4.0, max_hz / 2),
        )
        self._total = max(1, planned_cycles)
        self._task = self.progress.add_task(description, total=self._total)
        self.updates = 0

    def on_cycle(self, k: int, info: dict) -> None:
        now = self._clock()
        if now < self._next:
            return
        self._next = now + self._interval
        # A burn that flies past its planned cycles grows the whole: never "497/496".
        self._total = max(self._total, k + 1)
        self.progress.update(self._task, completed=k + 1, total=self._total)
        self.updates += 1

    def __enter__(self) -> RunProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()


# ---------------------------------------------------------------------------- a run directory

#: The fields of run.json / summary.json / status.json the follower's view shows, by type.
_RECORD_NUMBERS = (
    "planned_cycles",
    "period_ms",
    "target_delta_v_mps",
    "attitude_limit_deg",
    "started_unix_s",
)
_RECORD_STRINGS = ("title", "stack", "unit", "mode", "abort_reason")
_RECORD_FLAGS = ("serial", "completed", "aborted")
_LINK_NUMBERS = (
    "rtt_ms_p50",
    "rtt_ms_p99",
    "retries",
    "crc_errors",
    "deadline_misses",
    "frames_sent",
    "frames_received",
    "cycle_start_jitter_ms_p50",
    "cycle_start_jitter_ms_p99",
    "cycle_start_jitter_ms_max",
    "cycle_starts",
    "unit_state",
    "unit_tank_kPa",
)


def _int_cell(text: str) -> int:
    """A whole number of the telemetry (ValueError, as int() raises, beyond 2**53)."""
    value = int(text)
    if abs(value) > 2**53:
        raise ValueError(f"expected a whole number of at most 2**53, got {text[:40]!r}")
    return value


class RunDirFollower:
    """Follows a run directory (``monitor RUN_DIR``): call :meth:`poll` for a fresh snapshot.

    telemetry.csv is read from where the last poll stopped, complete lines only (the run flushes
    whole rows; a row being written is left for the next poll). run.json (written at the start)
    gives the target, the limit and the plan; status.json (rewritten every second by the run)
    the link's counters and the unit's state; summary.json, once it exists, the final numbers
    and :attr:`finished`. ``on_row(header, row)``, if given, is called with every new row, in
    order (``monitor --stream`` sends each as a packet).
    """

    def __init__(self, run_dir: str | Path, on_row=None):
        self.dir = Path(run_dir)
        try:
            is_dir = self.dir.is_dir()
        except (OSError, ValueError):  # a name the OS refuses (too long, ...)
            is_dir = False
        if not is_dir:
            raise UserError(str(self.dir), "no such run directory")
        refuse_campaign_dir(self.dir, "monitor")
        if not (self.dir / "telemetry.csv").exists() and not (self.dir / "summary.json").exists():
            raise UserError(str(self.dir), "not a run directory (no telemetry.csv or summary.json)")
        self._offset = 0
        self._partial = b""
        self._header: list[str] | None = None
        self._last: list[str] | None = None
        self._rtts: deque[float] = deque(maxlen=4096)
        self.rows = 0
        self.start: dict | None = None
        self.summary: dict | None = None
        self._status: dict | None = None
        self._mtime: float | None = None
        self._on_row = on_row

    @property
    def finished(self) -> bool:
        return self.summary is not None

    def link_record(self) -> dict | None:
        """The run's latest link counters as recorded: status.json, or summary.json at the end
        (``{"link": {...}}``; None before either says anything)."""
        return self._status or self.summary

    def _json(self, name: str) -> dict | None:
        """run.json, status.json or summary.json, checked; None while not written yet (each is
        replaced atomically when it is, so anything but a JSON object is garbage)."""
        doc = read_record(self.dir / name)
        if doc is None:
            return None
        where = self.dir / name
        check_record(
            doc,
            where,
            numbers=_RECORD_NUMBERS,
            strings=_RECORD_STRINGS,
            flags=_RECORD_FLAGS,
            tables=("link",),
        )
        if doc.get("link") is not None:
            check_record(doc["link"], f"{where}: link", numbers=_LINK_NUMBERS, flags=("armed",))
        return doc

    def _read_rows(self) -> None:
        path = self.dir / "telemetry.csv"
        if path.exists() and not path.is_file():  # a directory, a FIFO (read would block)
            raise UserError(str(path), "expected a CSV file, got a directory or a special file")
        try:
            with open(path, "rb") as f:
                self._mtime = os.fstat(f.fileno()).st_mtime
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return
        self._offset += len(data)
        data = self._partial + data
        cut = data.rfind(b"\n") + 1
        self._partial = data[cut:]
        for row in csv.reader(io.StringIO(data[:cut].decode("utf-8"))):
            if not row:
                continue
            if self._header is None:
                self._header = row
                continue
            if len(row) != len(self._header):
                raise UserError(
                    str(self.dir / "telemetry.csv"),
                    f"row {self.rows + 1} has {len(row)} fields, the header {len(self._header)}",
                )
            self._last = row
            self.rows += 1
            if self._on_row is not None:
                self._on_row(self._header, row)
            rtt = float(row[self._header.index("rtt_ms")])
            if rtt > 0:
                self._rtts.append(rtt)

    def poll(self) -> dict:
        if self.start is None:
            self.start = self._json("run.json")
        summary = self._json("summary.json")  # read before the rows: then the rows are complete
        try:
            self._read_rows()
            self._status = self._json("status.json") or self._status
            self.summary = summary
            return self.snapshot()
        except (ValueError, KeyError, csv.Error) as exc:  # a column missing, not a number
            raise UserError(
                str(self.dir / "telemetry.csv"),
                f"not the telemetry of a thruster-hil run ({type(exc).__name__}: {exc})",
            ) from None

    def snapshot(self) -> dict:
        start = self.start or {}
        summary = self.summary or {}
        snap: dict[str, Any] = {
            "title": start.get("title") or summary.get("stack") or self.dir.name
        }
        unit: dict[str, Any] = {
            "name": start.get("unit") or summary.get("unit") or "-",
            "mode": start.get("mode"),
        }
        snap["unit"] = unit
        for key, src in (
            ("planned_cycles", "planned_cycles"),
            ("period_ms", "period_ms"),
            ("target_dv_mps", "target_delta_v_mps"),
            ("att_limit_deg", "attitude_limit_deg"),
        ):
            value = start.get(src, summary.get(src))
            if value is not None:
                snap[key] = value
        snap["realtime"] = start.get("mode") == "realtime"
        h = self._header
        if h is not None:
            names = [c.split(":", 1)[1] for c in h if c.startswith("exec_ms:")]
            snap["thrusters"] = names
        if self._last is not None and h is not None:
            row = dict(zip(h, self._last, strict=True))
            snap.update(
                cycle=_int_cell(row["cycle"]),
                t_s=float(row["t_s"]),
                status=_int_cell(row["status"]),
                dv_mps=float(row["dv_along_mps"]),
                att_err_deg=float(row["attitude_error_deg"]),
                propellant_kg=float(row["propellant_kg"]),
                executed_ms=[_int_cell(row[f"exec_ms:{n}"]) for n in snap["thrusters"]],
            )
            if start.get("started_unix_s") is not None and not self.summary:
                snap["wall_s"] = time.time() - start["started_unix_s"]
        if self._mtime is not None and not self.summary:
            snap["quiet_s"] = max(0.0, time.time() - self._mtime)
        rtts = list(self._rtts)
        status = self._status or {}
        stats = summary.get("link") or status.get("link")
        is_serial = stats is not None or bool(rtts) or start.get("serial")
        if summary:
            snap["finished"] = (
                "completed"
                if summary.get("completed") and not summary.get("aborted")
                else f"aborted: {summary.get('abort_reason')}"
            )
        if not is_serial:
            unit.update(state="SIM", armed=None)
            snap["link"] = None
        else:
            stats = dict(stats or {})
            if rtts and stats.get("rtt_ms_p50") is None and not snap["realtime"]:
                stats.update(rtt_ms_p50=_percentile(rtts, 50), rtt_ms_p99=_percentile(rtts, 99))
            snap["link"] = _link_summary(stats, rtt_ms=rtts[-1] if rtts else None)
            if summary:
                unit.update(state=STATE_NAMES.get(stats.get("unit_state")), armed=False)
            else:
                unit.update(
                    state=STATE_NAMES.get(stats.get("unit_state")),
                    armed=stats.get("armed"),
                    tank_kPa=stats.get("unit_tank_kPa"),
                )
        return snap


# ---------------------------------------------------------------------------- a unit on a port


def port_snapshot(link, url: str) -> dict:
    """A unit seen over a session that is never armed: its last HK and the link's counters."""
    stats = link.stats()
    hk_rec = link.latest_hk
    hk = hk_rec.msg.fields if hk_rec is not None else {}
    info = link.info
    unit: dict[str, Any] = {
        "name": url,
        "mode": info.mode if info else None,
        "state": STATE_NAMES.get(hk.get("state")) if hk else None,
        "armed": stats.get("armed"),
        "tank_kPa": hk.get("tank_kPa"),
        "hk_age_s": (time.monotonic_ns() - hk_rec.t_ns) / 1e9 if hk_rec is not None else None,
    }
    title = url
    if info is not None:
        title = (
            f"{url}: firmware 0x{info.fw_ver:04X}, protocol {info.proto_ver}, "
            f"{info.n_channels} channels, boot {link.boot_count}"
        )
    snap: dict[str, Any] = {
        "title": title,
        "unit": unit,
        "link": _link_summary(stats, rtt_ms=stats.get("rtt_ms_p50")),
    }
    if hk:
        snap["valves"] = {
            "n_channels": info.n_channels if info else 32,
            "open_mask": hk.get("open_mask"),
            "failed_mask": hk.get("failed_mask"),
            "stuck_mask": hk.get("stuck_mask"),
        }
        snap["counters"] = {k: hk.get(k) for row in HK_COUNTERS for k, _ in row}
    return snap


def follow(
    poll: Callable[[], dict],
    *,
    console,
    done: Callable[[], bool],
    interval_s: float = 0.1,
    refresh_per_second: float = 4.0,
) -> dict:
    """Show the latest ``poll()`` snapshot in a rich Live (drawn by Live's own refresh thread)
    while this thread polls every ``interval_s`` until ``done()``; the final frame stays."""
    from rich.live import Live

    latest = [poll()]
    with Live(
        get_renderable=lambda: render(latest[0]),
        console=console,
        refresh_per_second=refresh_per_second,
        auto_refresh=True,
    ) as live:
        while not done():
            time.sleep(interval_s)  # the pace of a file tail / HK poll, not a synchronisation
            latest[0] = poll()
        live.refresh()
    return latest[0]
