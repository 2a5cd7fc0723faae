"""``thruster-hil report RUN_DIR``: one picture and one page that say whether the burn went right.

Renders RUN_DIR/report.png (matplotlib, Agg backend: no display needed) and RUN_DIR/report.html
(:mod:`thruster_hil.report_html`): the verdict against the burn's criteria first, then a summary
with units, propellant against the plan per tank, the link's counters, versions and config
hashes, and the same plots as inline SVG (one self-contained file). Panels: altitude against
time with the mean apsides before and after; delta-v against its target; the thruster firing
raster (executed on-time per cycle, with its colour bar); attitude error against the stack's
limit; propellant used against the plan, in all and per tank (with any tank's reserve in the
legend); the link's round-trip-time histogram.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

from thruster_hil.core.errors import UserError
from thruster_hil.core.textnum import parse_float, show
from thruster_hil.records import check_record, damage, read_record, run_directory
from thruster_hil.report_html import inline_svg, run_page

DPI = 100
SIZE_IN = (14.0, 9.0)  # -> 1400 x 900 px


#: summary.json fields the report formats or draws (each a finite number when present).
SUMMARY_NUMBERS = (
    "achieved_delta_v_mps",
    "target_delta_v_mps",
    "delta_v_error_pct",
    "perigee_km_before",
    "perigee_km_after",
    "apogee_km_before",
    "apogee_km_after",
    "attitude_limit_deg",
    "period_ms",
)
#: telemetry.csv columns the report plots; every value a number (rtt_ms may be nan: no report).
TELEMETRY_COLUMNS = (
    "t_s",
    "altitude_km",
    "dv_along_mps",
    "attitude_error_deg",
    "propellant_kg",
    "rtt_ms",
)


def _load(run: Path) -> tuple[dict, dict[str, list[float]]]:
    """summary.json and telemetry.csv, checked: a one-line UserError for anything else."""
    run = run_directory(run, "no summary.json: not a run directory")
    summary = read_record(run / "summary.json")
    if summary is None:
        if not (run / "run.json").exists() and not (run / "telemetry.csv").exists():
            raise UserError(str(run), "no summary.json: not a run directory")
        raise UserError(
            str(run), "cannot report it: " + "; ".join(damage(run, ("summary", "telemetry")))
        )
    broken = damage(run, ("telemetry",))
    if broken:
        raise UserError(str(run), "cannot report it: " + "; ".join(broken))
    check_record(summary, run / "summary.json", numbers=SUMMARY_NUMBERS)
    path = run / "telemetry.csv"
    try:
        if path.exists() and not path.is_file():
            raise UserError(str(path), "expected a CSV file, got a directory or a special file")
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except FileNotFoundError:
        raise UserError(str(run), "no telemetry.csv: not a run directory") from None
    except UnicodeDecodeError as exc:
        raise UserError(
            str(path), f"expected UTF-8 CSV, got undecodable bytes ({exc.reason})"
        ) from None
    except csv.Error as exc:
        raise UserError(str(path), f"not CSV: {exc}") from None
    except OSError as exc:
        raise UserError(str(path), f"cannot read it: {exc.strerror}") from None
    if len(rows) < 2:
        raise UserError(str(path), "has no cycles to plot")
    header = rows[0]
    for key in TELEMETRY_COLUMNS:
        if key not in header:
            raise UserError(
                str(path), f"expected the telemetry of a thruster-hil run, got no column {key!r}"
            )
    exec_cols = [k for k in header if k.startswith("exec_ms:")]
    tank_cols = [k for k in header if k.startswith("propellant_kg:")]
    cols: dict[str, list[float]] = {k: [] for k in (*TELEMETRY_COLUMNS, *exec_cols, *tank_cols)}
    index = {k: header.index(k) for k in cols}
    for n, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise UserError(
                f"{path}:{n}", f"expected {len(header)} fields as the header has, got {len(row)}"
            )
        for key, i in index.items():
            cols[key].append(_cell(row[i], key, f"{path}:{n}"))
    return summary, cols


def _cell(text: str, key: str, where: str) -> float:
    """One telemetry value: a finite number (rtt_ms: also nan, a cycle without a report)."""
    if key == "rtt_ms" and text == "nan":
        return math.nan
    try:
        value = parse_float(text)
    except ValueError:
        raise UserError(where, f"expected a number, got {show(text)}", field=key) from None
    if not math.isfinite(value):
        raise UserError(where, f"expected a finite number, got {show(text)}", field=key)
    return value


def render(run_dir: str | Path) -> dict:
    run = Path(run_dir)
    s_recorded, cols = _load(run)  # every error before matplotlib is even imported
    try:
        run_meta = read_record(run / "run.json") or {}
    except UserError:
        run_meta = {}  # what run.json adds (the clock mode, planned cycles) is shown as missing
    s = {k: v for k, v in s_recorded.items() if v is not None}  # a null draws as a missing one
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = _figure(plt, s, cols)
    png = run / "report.png"
    fig.savefig(png, dpi=DPI)
    figure_html = inline_svg(fig, "run plots")
    plt.close(fig)
    page = run_page(run.name, s_recorded, run_meta, figure_html)
    (run / "report.html").write_text(page, encoding="utf-8")
    return {
        "png": str(png),
        "html": str(run / "report.html"),
        "pixels": [int(SIZE_IN[0] * DPI), int(SIZE_IN[1] * DPI)],
    }


def _figure(plt, s: dict, cols: dict[str, list[float]]):
    """The six panels (module docstring) of the run with summary ``s`` (no nulls)."""
    import numpy as np

    t = np.array(cols["t_s"], float)
    fig, ax = plt.subplots(2, 3, figsize=SIZE_IN, dpi=DPI, constrained_layout=True)
    ok = s.get("completed") and not s.get("aborted") and not s.get("failure_reason")
    err_pct = s.get("delta_v_error_pct", float("nan"))
    if s.get("aborted"):
        word = f"ABORTED: {s.get('abort_reason')}"
    elif s.get("failure_reason"):
        word = "FAIL"
    else:
        word = "PASS" if ok else "NOT COMPLETED"
    fig.suptitle(
        _shorten(
            f"{word} — {s.get('stack')} via {s.get('unit')}: "
            f"delta-v {s.get('achieved_delta_v_mps', 0):.4f} of "
            f"{s.get('target_delta_v_mps', 0):.4f} m/s ({err_pct:+.3f} %)",
            150,
        ),
        color="black" if ok else "darkred",
        fontsize=13,
    )

    a = ax[0, 0]
    a.plot(t, np.array(cols["altitude_km"], float), lw=1)
    for key, style in (("perigee_km", "--"), ("apogee_km", ":")):
        for when, color in (("before", "grey"), ("after", "tab:green")):
            v = s.get(f"{key}_{when}")
            if v is not None:
                a.axhline(v, ls=style, color=color, lw=0.8, label=f"mean {key[:-3]} {when}")
    a.set(title="altitude (osculating) and mean apsides", xlabel="t [s]", ylabel="altitude [km]")
    a.legend(fontsize=7)

    a = ax[0, 1]
    a.plot(t, np.array(cols["dv_along_mps"], float), lw=1.2, label="sensed along-track")
    a.axhline(s.get("target_delta_v_mps", 0), color="tab:red", ls="--", lw=1, label="target")
    a.set(title="delta-v against target", xlabel="t [s]", ylabel="delta-v [m/s]")
    a.legend(fontsize=7)

    _raster(fig, ax[0, 2], s, cols, t)

    a = ax[1, 0]
    err = np.maximum(np.array(cols["attitude_error_deg"], float), 1e-6)
    a.semilogy(t, err, lw=1)
    lim = s.get("attitude_limit_deg")
    if lim:
        a.axhline(lim, color="tab:red", ls="--", lw=1, label=f"limit {lim:g} deg")
        a.legend(fontsize=7)
    a.set(
        title=f"attitude error (max {float(err.max()):.4f} deg)",
        xlabel="t [s]",
        ylabel="attitude error [deg] (log)",
        ylim=(1e-5, max(lim or 1.0, float(err.max())) * 3),
    )

    _propellant(ax[1, 1], s, cols, t)

    a = ax[1, 2]
    rtt = np.array(cols["rtt_ms"], float)
    rtt = rtt[rtt > 0]
    if rtt.size:
        a.hist(rtt, bins=40, color="tab:blue")
        a.set(
            title=f"FIRE to valve report per cycle, resends included\n(p50 "
            f"{np.percentile(rtt, 50):.3f} ms, p99 {np.percentile(rtt, 99):.3f} ms)",
            xlabel="FIRE to valve report [ms]",
            ylabel="cycles",
        )
    else:
        a.text(0.5, 0.5, "no link (in-process unit)", ha="center", va="center")
        a.set(title="FIRE to valve report, per cycle")
        a.set_axis_off()
    return fig


def _shorten(text: str, most: int) -> str:
    return text if len(text) <= most else text[: most - 1] + "…"


def _raster(fig, a, s: dict, cols: dict[str, list[float]], t) -> None:
    """Executed on-time per thruster and cycle, 0 to the control period, with its colour bar
    (gid ``colorbar`` in the SVG: the page's tests look for it)."""
    import numpy as np

    exec_cols = [k for k in cols if k.startswith("exec_ms:")]
    raster = np.array([[float(v) for v in cols[k]] for k in exec_cols])
    a.set(title="firing raster (executed on-time per cycle)", xlabel="t [s]")
    if not raster.size:
        a.text(0.5, 0.5, "no thrusters recorded", ha="center", va="center")
        return
    image = a.imshow(
        raster,
        aspect="auto",
        interpolation="nearest",
        cmap="magma",
        extent=(t[0], t[-1] if len(t) > 1 else t[0] + 1, len(exec_cols) - 0.5, -0.5),
        vmin=0,
        vmax=max(1.0, float(s.get("period_ms", raster.max() or 1))),
    )
    a.set_yticks(range(len(exec_cols)))
    a.set_yticklabels([k.split(":", 1)[1] for k in exec_cols], fontsize=6)
    bar = fig.colorbar(image, ax=a, pad=0.01)
    bar.set_label("executed on-time per cycle [ms]")
    bar.ax.set_gid("colorbar")


def _propellant(a, s: dict, cols: dict[str, list[float]], t) -> None:
    """Propellant drawn so far, in all and per tank, against the plan's: the plan's total over
    its planned duration (a straight line: the planned thrust is constant) and each tank's
    planned draw at that duration."""
    import numpy as np

    used = np.array(cols["propellant_kg"], float)
    a.plot(t, used, lw=1.4, color="tab:blue", label=f"run, all tanks ({used[-1]:.2f} kg)")
    plan = s.get("plan") if isinstance(s.get("plan"), dict) else {}
    planned, duration = plan.get("propellant_kg"), plan.get("burn_duration_s")
    if isinstance(planned, int | float) and isinstance(duration, int | float) and duration > 0:
        a.plot(
            [0.0, duration],
            [0.0, planned],
            color="black",
            ls=":",
            lw=1.2,
            label=f"plan, all tanks ({planned:.2f} kg in {duration:.0f} s)",
        )
    reserve = s.get("tank_reserve_kg") if isinstance(s.get("tank_reserve_kg"), dict) else {}
    tank_plan = plan.get("tank_used_kg") if isinstance(plan.get("tank_used_kg"), dict) else {}
    tanks = [k for k in cols if k.startswith("propellant_kg:")]
    for n, key in enumerate(tanks):
        tank = key.split(":", 1)[1]
        r = reserve.get(tank)
        note = f", reserve {r:g} kg kept" if isinstance(r, int | float) and r > 0 else ""
        color = f"C{(n + 1) % 10}"
        a.plot(t, np.array(cols[key], float), lw=1, ls="--", color=color, label=f"{tank}{note}")
        p = tank_plan.get(tank)
        if len(tanks) > 1 and isinstance(p, int | float) and isinstance(duration, int | float):
            a.plot(
                [duration],
                [p],
                marker="o",
                mfc="none",
                color=color,
                ls="none",
                label=f"{tank} plan ({p:.2f} kg)",
            )
    a.set(title="propellant used against the plan", xlabel="t [s]", ylabel="propellant [kg]")
    a.legend(fontsize=7)
