"""A Monte-Carlo campaign's report.png and report.html (``thruster-hil montecarlo``).

The figure: histograms of the outcomes that have a pass limit (delta-v error, attitude error,
burn duration) with the limit drawn as a solid line and mean +- 3 sigma dashed, the propellant,
and two scatter plots against the main dispersions. Every case is drawn in one of four classes,
so failed cases and cases with a dispersed thruster failure stand out from each other:
passed, passed with a failed thruster, failed, failed with a failed thruster.

The page: the verdict (PASS only when every case passed, as the command's exit status), the pass
rate, the limits and how many cases broke each, the statistics, every failed case with the
command that flies it alone, the cases with a thruster failure, and the figure as inline SVG.
The numbers come from :func:`thruster_hil.montecarlo.evaluate` and ``summarise`` (summary.json);
nothing is judged again here.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from thruster_hil.report_html import (
    MISSING,
    Raw,
    Verdict,
    cell,
    esc,
    inline_svg,
    num,
    page,
    result_cell,
    table,
)

#: (label, colour, marker) per class; Paul Tol's bright scheme, distinct for colour-blind eyes.
CLASSES = (
    ("passed", "#4477AA", "o"),
    ("passed, thruster failed", "#66CCEE", "^"),
    ("failed", "#EE6677", "x"),
    ("failed, thruster failed", "#AA3377", "D"),
)
LIMIT_COLOUR = "black"
SIGMA_COLOUR = "#888888"
#: Failed-case rows the page lists in full (summary.json keeps every one).
MAX_ROWS = 200


def case_classes(outcomes: list[dict]) -> np.ndarray:
    """Each case's class: an index into :data:`CLASSES`."""
    return np.array(
        [(0 if o["passed"] else 2) + (1 if o["failure_cycle"] >= 0 else 0) for o in outcomes],
        dtype=int,
    )


def render_report(out: Path, inputs: list[dict], outcomes: list[dict], summary: dict) -> None:
    """report.png and report.html into ``out`` (matplotlib with the Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = _figure(plt, inputs, outcomes, summary)
    fig.savefig(out / "report.png", dpi=90)
    figure_html = inline_svg(fig, "campaign plots")
    plt.close(fig)
    (out / "report.html").write_text(
        campaign_page(out.name, inputs, outcomes, summary, figure_html), encoding="utf-8"
    )


def _figure(plt, inputs: list[dict], outcomes: list[dict], summary: dict):
    cls = case_classes(outcomes)
    limits = summary["pass_limits"]
    tol = limits["delta_v_tolerance_pct"]

    def col(key, source=outcomes):
        return np.array([float(o[key]) for o in source])

    fig, axes = plt.subplots(2, 3, figsize=(15, 8.5))
    hists = (
        ("delta_v_error_pct", "true delta-v error [%]", (-tol, tol), f"pass limit ±{tol:g} %"),
        (
            "max_attitude_error_deg",
            "max attitude error [deg]",
            (limits["max_attitude_error_deg"],),
            f"pass limit {limits['max_attitude_error_deg']:g} deg",
        ),
        (
            "burn_duration_s",
            "burn duration [s]",
            (limits["max_burn_duration_s"],),
            f"pass limit {limits['max_burn_duration_s']:.4g} s",
        ),
        ("propellant_kg", "propellant [kg] (no pass limit)", (), ""),
    )
    for ax, (key, label, lines, legend) in zip(axes.flat[:4], hists, strict=True):
        values = col(key)
        lo = min([values.min(), *lines])
        hi = max([values.max(), *lines])
        if hi <= lo:
            lo, hi = lo - 0.5, hi + 0.5
        bins = np.linspace(lo, hi, 41)
        if _log_scale(values, lines):  # the cases far below their limit: both stay visible
            bins = np.geomspace(values.min(), hi * 1.05, 41)
            ax.set_xscale("log")
        present = [k for k in range(len(CLASSES)) if (cls == k).any()]
        ax.hist(
            [values[cls == k] for k in present],
            bins=bins,
            stacked=True,
            color=[CLASSES[k][1] for k in present],
            label=[f"{CLASSES[k][0]} ({int((cls == k).sum())})" for k in present],
        )
        s = summary["stats"].get(key)
        if s:
            for n, x in enumerate((s["minus_3sigma"], s["plus_3sigma"])):
                ax.axvline(
                    x, color=SIGMA_COLOUR, ls="--", lw=1, label="mean ± 3σ" if n == 0 else None
                )
        for n, x in enumerate(lines):
            line = ax.axvline(
                x, color=LIMIT_COLOUR, ls="-", lw=1.8, label=legend if n == 0 else None
            )
            line.set_gid(f"pass-limit-{key}-{n}")
        ax.set_xlabel(label)
        ax.set_ylabel("cases")
        ax.legend(loc="best", fontsize=7)
    mass = col("mass_offset_kg", inputs)
    com = np.sqrt(
        col("com_offset_x_m", inputs) ** 2
        + col("com_offset_y_m", inputs) ** 2
        + col("com_offset_z_m", inputs) ** 2
    )
    for ax, x, key, xl, yl, lines in (
        (
            axes.flat[4],
            mass,
            "delta_v_error_pct",
            "stack mass offset [kg]",
            "true delta-v error [%]",
            (-tol, tol),
        ),
        (
            axes.flat[5],
            com,
            "max_attitude_error_deg",
            "CoM offset [m]",
            "max attitude error [deg]",
            (limits["max_attitude_error_deg"],),
        ),
    ):
        y = col(key)
        for k, (label, colour, marker) in enumerate(CLASSES):
            m = cls == k
            if m.any():
                ax.scatter(
                    x[m],
                    y[m],
                    s=8 if k == 0 else 26,
                    color=colour,
                    marker=marker,
                    label=f"{label} ({int(m.sum())})",
                    zorder=3 if k else 2,
                    # The points are one image in the page's SVG (axes, text and limit lines
                    # stay vector): 10,000 cases as SVG markers made a 2.3 MB page, slow to open
                    # and ~0.8 s to write.
                    rasterized=True,
                )
        for n, v in enumerate(lines):
            line = ax.axhline(v, color=LIMIT_COLOUR, lw=1.5, label="pass limit" if n == 0 else None)
            line.set_gid(f"pass-limit-scatter-{key}-{n}")
        if _log_scale(y, lines):
            ax.set_yscale("log")
        ax.set_xlabel(xl)
        ax.set_ylabel(yl)
        ax.legend(loc="best", fontsize=7)
    word = "PASS" if summary["failed"] == 0 else "FAIL"
    fig.suptitle(
        f"{word} — {summary['stack']}: {summary['cases']} cases, target "
        f"{summary['target_delta_v_mps']:.4g} m/s, seed {summary['seed']}: "
        f"{summary['passed']} passed, {summary['failed']} failed, "
        f"{summary['thruster_failures_injected']} with a thruster failure "
        "(solid: pass limit, dashed: mean ± 3σ)"
    )
    fig.tight_layout()
    return fig


def _log_scale(values: np.ndarray, limits: tuple) -> bool:
    """A log axis when every value is positive and a limit lies over 20 times above them all
    (the attitude error of a healthy campaign: hundredths of a degree against a few degrees)."""
    if not len(limits) or (values <= 0).any():
        return False
    return min(limits) > 0 and min(limits) > 20 * values.max()


def campaign_verdict(summary: dict, outcomes: list[dict]) -> Verdict:
    """PASS only when every case passed: the campaign's exit status (1 when any case fails)."""
    failed, cases = summary["failed"], summary["cases"]
    rate = f"pass rate {100.0 * summary['pass_rate']:.1f} %"
    reasons = []
    if failed:
        tally = Counter(r for f in summary["failures"] for r in f["reasons"])
        reasons.append(
            f"{failed} of {cases} cases failed: "
            + ", ".join(f"{why} {n}" for why, n in tally.most_common())
            + "."
        )
    else:
        reasons.append(f"Every one of the {cases} cases kept every pass limit.")
    with_failure = [o for o in outcomes if o["failure_cycle"] >= 0]
    if with_failure:
        ok = sum(o["passed"] for o in with_failure)
        reasons.append(
            f"{len(with_failure)} cases had a dispersed thruster failure; {ok} of them passed."
        )
    word = "PASS" if failed == 0 else "FAIL"
    headline = f"{summary['passed']} of {cases} cases passed ({rate})"
    return Verdict(word, headline, reasons)


def _limit_rows(summary: dict, outcomes: list[dict]) -> list[tuple]:
    limits = summary["pass_limits"]
    broke = Counter(r for o in outcomes for r in o["fail_reasons"].split(";") if r)
    rows = [
        ("completed", "the burn reaches its target", "not completed"),
        (
            "delta-v",
            f"true delta-v within ±{num(limits['delta_v_tolerance_pct'], 'g')} % of the target",
            "delta-v",
        ),
        (
            "attitude",
            f"max attitude error at most {num(limits['max_attitude_error_deg'], 'g')} deg",
            "attitude",
        ),
        (
            "duration",
            f"burn duration at most {num(limits['max_burn_duration_s'], '.4g')} s",
            "duration",
        ),
        (
            "on-time bound",
            f"no valve on-time over the control period ({num(limits['max_on_time_ms'], 'd')} ms)",
            "on-time bound",
        ),
        ("plant", "the plant's integration and orbit stay valid", "plant"),
    ]
    return [
        (name, asks, cell(num(broke.get(key, 0), "d"), "num"), result_cell(broke.get(key, 0) == 0))
        for name, asks, key in rows
    ]


STAT_ROWS = (
    ("delta_v_error_pct", "true delta-v error", "%", ".4g"),
    ("true_delta_v_mps", "true delta-v", "m/s", ".5f"),
    ("burn_duration_s", "burn duration", "s", ".1f"),
    ("max_attitude_error_deg", "max attitude error", "deg", ".4g"),
    ("propellant_kg", "propellant", "kg", ".2f"),
    ("perigee_km_after", "mean perigee after", "km", ".3f"),
    ("apogee_km_after", "mean apogee after", "km", ".3f"),
)


def _stat_rows(summary: dict) -> list[tuple]:
    rows = []
    for key, name, unit, spec in STAT_ROWS:
        st = summary["stats"].get(key)
        if not st:
            continue
        rows.append(
            (
                name,
                unit,
                *(
                    cell(num(st[k], spec), "num")
                    for k in ("mean", "sigma", "min", "p50", "p99", "max")
                ),
                cell(f"{num(st['minus_3sigma'], spec)} … {num(st['plus_3sigma'], spec)}", "num"),
            )
        )
    return rows


def _failed_rows(summary: dict, inputs: list[dict]) -> list[tuple]:
    rows = []
    for f in summary["failures"][:MAX_ROWS]:
        inp = inputs[f["case"]] if 0 <= f["case"] < len(inputs) else {}
        thruster = inp.get("failed_thruster") or ""
        at = inp.get("fail_at_s")
        failed_thr = f"{thruster} at {num(at, '.1f')} s" if thruster else "none"
        rows.append(
            (
                cell(num(f["case"], "d"), "num"),
                ", ".join(f["reasons"]),
                cell(failed_thr, "bad" if thruster else ""),
                cell(num(f["delta_v_error_pct"], "+.3f"), "num"),
                cell(num(f["max_attitude_error_deg"], ".4g"), "num"),
                cell(num(f.get("burn_duration_s"), ".1f"), "num"),
                cell(Raw(f"<code>{esc(f['rerun'])}</code>")),
            )
        )
    return rows


def _thruster_failure_rows(inputs: list[dict], outcomes: list[dict]) -> list[tuple]:
    rows = []
    for i, (inp, o) in enumerate(zip(inputs, outcomes, strict=True)):
        if o["failure_cycle"] < 0:
            continue
        rows.append(
            (
                cell(num(i, "d"), "num"),
                inp.get("failed_thruster") or MISSING,
                cell(num(inp.get("fail_at_s"), ".1f"), "num"),
                result_cell(bool(o["passed"])),
                o["fail_reasons"].replace(";", ", ") or "",
            )
        )
        if len(rows) >= MAX_ROWS:
            break
    return rows


def campaign_page(
    name: str, inputs: list[dict], outcomes: list[dict], summary: dict, figure_html: str
) -> str:
    v = campaign_verdict(summary, outcomes)
    spec = summary.get("dispersions") if isinstance(summary.get("dispersions"), dict) else {}
    campaign_rows = [
        ("stack", summary["stack"]),
        ("target delta-v", f"{num(summary['target_delta_v_mps'], '.5g')} m/s"),
        ("planned burn duration", f"{num(summary['planned_burn_duration_s'], '.1f')} s"),
        ("cases", f"{summary['cases']} (seed {summary['seed']})"),
        ("passed / failed", f"{summary['passed']} / {summary['failed']}"),
        ("pass rate", f"{100.0 * summary['pass_rate']:.1f} %"),
        ("cases with a thruster failure", num(summary["thruster_failures_injected"], "d")),
        ("dispersions", f"{spec.get('name', MISSING)} ({spec.get('file', MISSING)})"),
        ("scheduler", summary["scheduler"]),
        (
            "speed",
            f"{num(summary['cases_per_s'], '.1f')} cases/s ({num(summary['wall_s'], '.2f')} s)",
        ),
    ]
    failed = _failed_rows(summary, inputs)
    thr = _thruster_failure_rows(inputs, outcomes)
    more = len(summary["failures"]) - len(failed)
    body = [
        "<h2>Campaign</h2>",
        table(("", "value"), campaign_rows, "campaign"),
        "<h2>Pass limits</h2>",
        table(
            ("criterion", "a case passes when", "cases outside", "result"),
            _limit_rows(summary, outcomes),
            "limits",
        ),
        "<h2>Failed cases</h2>",
        table(
            (
                "case",
                "failed on",
                "thruster failure",
                "delta-v error [%]",
                "max attitude error [deg]",
                "burn duration [s]",
                "fly it alone (with run records)",
            ),
            failed,
            "failed-cases",
        )
        if failed
        else '<p class="note">No case failed.</p>',
        f'<p class="note">{more} more in summary.json.</p>' if more > 0 else "",
        "<h2>Cases with a dispersed thruster failure</h2>",
        table(
            ("case", "thruster", "failed at [s]", "result", "failed on"), thr, "thruster-failures"
        )
        if thr
        else '<p class="note">No case drew a thruster failure.</p>',
        "<h2>Statistics</h2>",
        table(
            ("outcome", "unit", "mean", "σ", "min", "p50", "p99", "max", "mean ± 3σ"),
            _stat_rows(summary),
            "stats",
        ),
        "<h2>Plots</h2>",
        figure_html,
    ]
    return page(f"thruster-hil Monte-Carlo campaign, directory {name}", v, "\n".join(body))


# --------------------------------------------------------------------------------------------
# thruster-hil report MC_DIR: the pages again from the campaign's records
# --------------------------------------------------------------------------------------------

#: cases.csv outcome columns that are flags (written 0/1), whole numbers or text; the rest of
#: the outcome columns are numbers.
_FLAGS = ("completed", "passed")
_WHOLE = ("cycles", "max_on_time_ms", "on_time_bound_violations", "failure_cycle")
_TEXT_INPUTS = ("failed_thruster", "fail_at_s")


def is_campaign_dir(path: Path) -> bool:
    try:
        return (path / "cases.csv").is_file()
    except (OSError, ValueError):
        return False


def render_campaign_dir(out: Path) -> dict:
    """report.png and report.html of the campaign in ``out`` again, from its summary.json and
    cases.csv as ``montecarlo`` wrote them (a one-line UserError for anything else)."""
    import csv
    import math

    from thruster_hil.core.errors import UserError
    from thruster_hil.montecarlo import OUTCOME_FIELDS
    from thruster_hil.records import read_record

    summary = read_record(out / "summary.json")
    if summary is None:
        raise UserError(str(out), "a Monte-Carlo directory without its summary.json")
    if not isinstance(summary.get("pass_limits"), dict) or not isinstance(
        summary.get("stats"), dict
    ):
        raise UserError(
            str(out / "summary.json"),
            "has no pass_limits: written by an older version (run the campaign again)",
        )
    path = out / "cases.csv"
    try:
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        why = getattr(exc, "strerror", None) or exc
        raise UserError(str(path), f"cannot read it: {why}") from None
    if not rows:
        raise UserError(str(path), "has no cases")
    inputs, outcomes = [], []
    for n, row in enumerate(rows, start=2):
        where = f"{path}:{n}"
        if None in row or None in row.values():
            raise UserError(where, "expected as many fields as the header has")
        missing = [k for k in OUTCOME_FIELDS if k not in row]
        if missing:
            raise UserError(str(path), f"expected the cases of a campaign, got no {missing[0]!r}")
        outcome: dict = {}
        try:
            for key in OUTCOME_FIELDS:
                text = row[key]
                if key == "fail_reasons":
                    outcome[key] = text
                elif key in _FLAGS:
                    outcome[key] = {"1": True, "0": False}[text]
                elif key in _WHOLE:
                    outcome[key] = int(text)
                else:
                    outcome[key] = float(text)
            inp: dict = {}
            for key, text in row.items():
                if key in OUTCOME_FIELDS or key in ("case", "case_seed"):
                    continue
                if key in _TEXT_INPUTS:
                    inp[key] = float(text) if key == "fail_at_s" and text else text
                else:
                    inp[key] = float(text)
        except (KeyError, ValueError):
            raise UserError(
                where, f"expected the number or flag montecarlo writes in {key!r}"
            ) from None
        if not all(math.isfinite(v) for v in inp.values() if isinstance(v, float)):
            raise UserError(where, "expected finite dispersed inputs")
        inputs.append(inp)
        outcomes.append(outcome)
    if len(outcomes) != summary.get("cases"):
        raise UserError(
            str(path), f"holds {len(outcomes)} cases, summary.json counts {summary.get('cases')}"
        )
    render_report(out, inputs, outcomes, summary)
    return {"png": str(out / "report.png"), "html": str(out / "report.html")}
