"""The run's one-page report.html: the verdict first, then what the run did, in words and units.

Everything shown comes from the run's records as written (summary.json, run.json): numbers are
formatted here, never recomputed (the run's summary is where the delta-v, the propellant and the
verdict's inputs are computed). The page is one self-contained file: inline CSS, the plots as
inline SVG (matplotlib's SVG backend), no script, no network. Every text taken from a record is
escaped (:func:`html.escape`): a stack or a reason may hold any characters.

The helpers at the top (:func:`cell`, :func:`table`, :func:`page`, :func:`inline_svg`) are shared
with the Monte-Carlo page (:mod:`thruster_hil.montecarlo_report`).
"""

from __future__ import annotations

import datetime
import html
import io
import math
from dataclasses import dataclass, field

from thruster_hil.records import run_outcome

# --------------------------------------------------------------------------------------------
# Page building blocks
# --------------------------------------------------------------------------------------------

#: Shown for a value the record does not have (null or absent): never Python's "None".
MISSING = "—"

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:0;
 color:#222;background:#fafafa}
main{max-width:1280px;margin:0 auto;padding:0 1.2em 2em}
header.verdict{padding:.8em 1.2em;color:#fff}
header.verdict h1{margin:.1em 0;font-size:1.9em}
header.verdict p{margin:.2em 0;font-size:1.05em}
header.pass{background:#1b7837} header.fail{background:#b2182b} header.aborted{background:#8c510a}
h2{font-size:1.2em;margin:1.4em 0 .4em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.3em 0;background:#fff}
th,td{padding:.22em .7em;border:1px solid #ddd;text-align:left;vertical-align:top}
th{background:#f0f0f0;font-weight:600}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
td.ok{color:#1b7837;font-weight:600} td.bad{color:#b2182b;font-weight:600}
td.na{color:#777}
td:first-child{white-space:nowrap}
code{font-size:.9em;word-break:break-all}
.note{color:#555;font-size:.92em}
.cols{display:flex;flex-wrap:wrap;gap:1.5em} .cols>div{flex:1 1 420px}
figure{margin:.5em 0} figure svg{width:100%;height:auto;background:#fff}
"""


@dataclass(frozen=True)
class Raw:
    """HTML built here from escaped parts (a table cell that is not plain text)."""

    html: str


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def num(value: object, spec: str = ".4g") -> str:
    """A number as text with ``spec``; a missing or non-numeric value as :data:`MISSING`."""
    if value is None or isinstance(value, bool) or not isinstance(value, int | float):
        return MISSING
    if isinstance(value, float) and not math.isfinite(value):
        return MISSING
    if isinstance(value, float) and spec.endswith("d"):  # a count written as a float
        return format(int(value), spec) if value.is_integer() else format(value, "g")
    return format(value, spec)


def number(value: object) -> float | None:
    """A record's field as a finite number, or None (absent, null, of another type)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def items(value: object) -> list:
    """A record's list field as a list ([] when it is absent or not a list)."""
    return list(value) if isinstance(value, list) else []


def mapping(value: object) -> dict:
    """A record's object field as a dict ({} when it is absent or not an object)."""
    return value if isinstance(value, dict) else {}


def yes_no(value: object, yes: str = "yes", no: str = "no") -> str:
    return MISSING if value is None else (yes if value else no)


@dataclass
class Cell:
    """A table cell: text (escaped when written) or :class:`Raw`, with a CSS class."""

    content: object
    cls: str = ""


def cell(content: object, cls: str = "") -> Cell:
    return Cell(content, cls)


def _td(c: object, tag: str = "td") -> str:
    if not isinstance(c, Cell):
        c = Cell(c)
    inner = c.content.html if isinstance(c.content, Raw) else esc(_text(c.content))
    cls = f' class="{esc(c.cls)}"' if c.cls else ""
    return f"<{tag}{cls}>{inner}</{tag}>"


def _text(value: object) -> str:
    """A cell's plain text: never a Python literal (None, True/False)."""
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return yes_no(value)
    return str(value)


def table(head: tuple[str, ...], rows: list[tuple], css_id: str = "") -> str:
    ident = f' id="{esc(css_id)}"' if css_id else ""
    out = [f"<table{ident}><thead><tr>", *(_td(h, "th") for h in head), "</tr></thead><tbody>"]
    for row in rows:
        out.append("<tr>" + "".join(_td(c) for c in row) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def result_cell(ok: bool | None) -> Cell:
    """PASS / FAIL / n/a (a criterion that does not apply to this run)."""
    if ok is None:
        return Cell("n/a", "na")
    return Cell("PASS", "ok") if ok else Cell("FAIL", "bad")


def inline_svg(fig, title: str) -> str:
    """``fig`` as an SVG element to put inside the page (no XML prolog, no DOCTYPE). Text stays
    text (svg.fonttype none): smaller, searchable, and the browser draws it with its fonts."""
    import matplotlib

    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none"}):
        fig.savefig(buf, format="svg", metadata={"Date": None})  # the same records, the same page
    svg = buf.getvalue()
    svg = svg[svg.index("<svg") :]
    return f'<figure aria-label="{esc(title)}">{svg}</figure>'


def page(title: str, verdict: Verdict, body: str) -> str:
    """The whole document: the verdict banner first, then ``body`` (already escaped HTML)."""
    reasons = "".join(f"<p>{esc(r)}</p>" for r in verdict.reasons)
    return (
        "<!doctype html>\n"
        f'<html lang="en"><head><meta charset="utf-8"><title>{esc(verdict.word)}: '
        f"{esc(title)}</title>\n"
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<style>{CSS}</style></head>\n<body>\n"
        f'<header class="verdict {esc(verdict.word.lower())}" id="verdict">'
        f"<h1>{esc(verdict.word)} — {esc(verdict.headline)}</h1>{reasons}"
        f'<p class="subtitle">{esc(title)}</p></header>\n'
        f"<main>\n{body}\n</main>\n</body></html>\n"
    )


# --------------------------------------------------------------------------------------------
# The run's verdict
# --------------------------------------------------------------------------------------------


@dataclass
class Verdict:
    word: str  # PASS, FAIL or ABORTED
    headline: str
    reasons: list[str] = field(default_factory=list)
    #: (criterion, what it asks, what the run did, True/False/None (does not apply))
    checks: list[tuple[str, str, str, bool | None]] = field(default_factory=list)


def run_verdict(s: dict) -> Verdict:
    """PASS / FAIL / ABORTED by the criteria the run judged for its exit status (``run`` exits 0
    only when the burn was not aborted and has no ``failure_reason``: it completed, kept its
    attitude within the limit and left no valve open after STOP_ALL), each shown as a
    criterion."""
    checks: list[tuple[str, str, str, bool | None]] = []
    aborted = bool(s.get("aborted"))
    checks.append(
        (
            "burn not aborted",
            "the run ends by itself, not stopped by the unit, the link, a signal or a tank",
            f"aborted: {s.get('abort_reason') or 'no reason recorded'}"
            if aborted
            else "ran to the end",
            not aborted,
        )
    )
    target, achieved = s.get("target_delta_v_mps"), s.get("achieved_delta_v_mps")
    completed = s.get("completed")
    checks.append(
        (
            "on target",
            f"the sensed along-track delta-v reaches the target {num(target, '.5f')} m/s",
            f"{num(achieved, '.5f')} m/s ({num(s.get('delta_v_error_pct'), '+.3f')} %), "
            + ("target reached" if completed else "target not reached"),
            None if completed is None else bool(completed),
        )
    )
    att, limit = number(s.get("max_attitude_error_deg")), number(s.get("attitude_limit_deg"))
    att_ok = None if att is None or limit is None else att <= limit
    checks.append(
        (
            "attitude held",
            f"attitude error at most {num(limit, 'g')} deg throughout",
            f"max {num(att, '.4g')} deg",
            att_ok,
        )
    )
    checks.append(_valves_check(s))
    touched = [str(t) for t in items(s.get("reserve_touched"))]
    if any(number(v) for v in mapping(s.get("tank_reserve_kg")).values()):
        checks.append(
            (
                "tank reserves kept",
                "no tank drawn into its reserve",
                "reserve touched: " + ", ".join(touched) if touched else "kept",
                not touched,
            )
        )
    reasons: list[str] = []
    outcome, why = run_outcome(s)
    word = {"aborted": "ABORTED", "failed": "FAIL"}.get(outcome, "PASS")
    if outcome != "completed":
        reasons.append(f"{outcome.capitalize()}: {why or 'no reason recorded'}.")
    for name, _asks, did, ok in checks:
        if ok is False and word == "PASS":
            word = "FAIL"
        if ok is False and name not in ("burn not aborted",) and not reasons:
            reasons.append(f"Failed: {name}: {did}.")
    if word == "PASS":
        reasons.append(
            "Every criterion met: the burn reached its target and held attitude within the limit."
        )
    headline = (
        f"{s.get('stack') or 'unknown stack'} via {s.get('unit') or 'unknown unit'}: "
        f"delta-v {num(achieved, '.4f')} of {num(target, '.4f')} m/s"
    )
    return Verdict(word, headline, reasons, checks)


def _valves_check(s: dict) -> tuple[str, str, str, bool | None]:
    asks = "the unit confirms STOP_ALL and reports every valve closed"
    if items(s.get("valves_open")):
        chans = ", ".join(str(c) for c in items(s["valves_open"]))
        return ("valves closed", asks, f"still open after STOP_ALL: channel(s) {chans}", False)
    if s.get("unit") == "sim":
        return ("valves closed", asks, "no valves: the in-process unit (sim)", None)
    closed = s.get("valves_closed")
    if closed is True:
        return ("valves closed", asks, "closed by STOP_ALL (acknowledged)", True)
    if closed is False:
        return ("valves closed", asks, "STOP_ALL sent, not confirmed by the unit", False)
    return ("valves closed", asks, "not known (the link was down at the end)", None)


# --------------------------------------------------------------------------------------------
# The run's page
# --------------------------------------------------------------------------------------------

#: The link's counters (summary.json "link", firmware_bridge.session stats) with human names and
#: units, in the order an operator looks for them: what went wrong on the wire first.
LINK_FIELDS: tuple[tuple[str, str, str, str], ...] = (
    ("retries", "resends (commands sent again)", "", "d"),
    ("crc_errors", "CRC errors (host side)", "", "d"),
    ("cobs_errors", "framing (COBS) errors", "", "d"),
    ("length_errors", "length errors", "", "d"),
    ("other_protocol_errors", "other protocol errors", "", "d"),
    ("unexpected_messages", "unexpected messages", "", "d"),
    ("rejections", "commands the unit rejected", "", "d"),
    ("deadline_misses", "deadline misses", "", "d"),
    ("late_reports", "late valve reports", "", "d"),
    ("slow_unit_waits", "waits on a slow unit", "", "d"),
    ("foreign_refusals", "foreign commands refused", "", "d"),
    ("resets_detected", "unit resets detected", "", "d"),
    ("rtt_ms_p50", "round trip, median (exchanges sent once)", "ms", ".3f"),
    ("rtt_ms_p99", "round trip, 99th percentile (sent once)", "ms", ".3f"),
    ("rtt_samples", "round-trip samples", "", "d"),
    ("frames_sent", "frames sent", "", "d"),
    ("bytes_sent", "bytes sent", "B", ",d"),
    ("frames_received", "frames received", "", "d"),
    ("bytes_received", "bytes received", "B", ",d"),
    ("clock_offset_us", "unit clock offset from the host", "µs", ",.0f"),
    ("unit_rx_frames", "unit: frames received", "", "d"),
    ("unit_crc_errors", "unit: CRC errors", "", "d"),
    ("unit_cobs_errors", "unit: framing (COBS) errors", "", "d"),
    ("unit_length_errors", "unit: length errors", "", "d"),
    ("unit_seq_gaps", "unit: sequence-count gaps", "", "d"),
    ("unit_uart_overruns", "unit: UART overruns", "", "d"),
    ("unit_session_errors", "unit: session errors (wrong token)", "", "d"),
    ("unit_tank_kPa", "unit: tank pressure", "kPa", "d"),
    ("unit_pu_time_us", "unit: clock at its last housekeeping", "µs", ",d"),
    ("unit_last_step", "unit: last control step", "", "d"),
    ("unit_watchdog_remaining_ms", "unit: link watchdog remaining", "ms", "d"),
    ("bytes_taken_reads", "empty reads (another process took the bytes)", "", "d"),
    ("capture_errors", "capture.csv write errors", "", "d"),
)
_MASKS = (
    ("unit_open_mask", "unit: valves open (mask)"),
    ("unit_failed_mask", "unit: valves failed (mask)"),
    ("unit_stuck_mask", "unit: valves stuck (mask)"),
)


def _row(name: str, value: str, unit: str = "") -> tuple:
    return (name, cell(value, "num"), unit)


def _summary_rows(s: dict, run_meta: dict) -> list[tuple]:
    plan = mapping(s.get("plan"))
    planned_cycles = run_meta.get("planned_cycles")
    cycles = num(s.get("cycles"), "d")
    if isinstance(planned_cycles, int):
        cycles += f" of {planned_cycles} planned"
    started = number(run_meta.get("started_unix_s"))
    when = MISSING
    if started is not None and 0 <= started < 1e11:
        stamp = datetime.datetime.fromtimestamp(started, datetime.UTC)
        when = stamp.strftime("%Y-%m-%d %H:%M:%S UTC")
    rows = [
        ("started", cell(when), ""),
        ("stack", cell(plan.get("stack_name") or s.get("stack")), ""),
        (
            "vehicle / port",
            cell(f"{plan.get('vehicle', MISSING)} / {plan.get('port', MISSING)}"),
            "",
        ),
        (
            "unit / clock",
            cell(f"{s.get('unit') or MISSING} / {run_meta.get('mode') or MISSING}"),
            "",
        ),
        _row("target delta-v", num(s.get("target_delta_v_mps"), ".5f"), "m/s"),
        _row(
            "achieved delta-v (sensed along-track)",
            num(s.get("achieved_delta_v_mps"), ".5f"),
            "m/s",
        ),
        _row("true delta-v (plant)", num(s.get("true_delta_v_mps"), ".5f"), "m/s"),
        _row("delta-v error (sensed)", num(s.get("delta_v_error_pct"), "+.3f"), "%"),
        _row("burn duration", num(s.get("burn_duration_s"), ".1f"), "s"),
        _row("planned burn duration", num(s.get("planned_burn_duration_s"), ".1f"), "s"),
        _row("control cycles", cycles, ""),
        _row("control period", num(s.get("period_ms"), "d"), "ms"),
        _row("max attitude error", num(s.get("max_attitude_error_deg"), ".4g"), "deg"),
        _row("attitude limit", num(s.get("attitude_limit_deg"), "g"), "deg"),
        _row("propellant used", num(s.get("propellant_kg"), ".2f"), "kg"),
        _row("propellant planned", num(plan.get("propellant_kg"), ".2f"), "kg"),
        _row("mean perigee before", num(s.get("perigee_km_before"), ".3f"), "km"),
        _row("mean perigee after", num(s.get("perigee_km_after"), ".3f"), "km"),
        _row("mean apogee before", num(s.get("apogee_km_before"), ".3f"), "km"),
        _row("mean apogee after", num(s.get("apogee_km_after"), ".3f"), "km"),
        _row("mean altitude change", num(s.get("mean_altitude_change_km"), "+.3f"), "km"),
        _row("longest valve on-time", num(s.get("max_on_time_ms"), "d"), "ms"),
        _row("on-times over the control period", num(s.get("on_time_bound_violations"), "d"), ""),
    ]
    if "late_cycles" in s:
        rows.append(_row("late cycles (realtime)", num(s.get("late_cycles"), "d"), ""))
    rows.append(_row("speed", num(s.get("cycles_per_s"), ",.0f"), "cycles/s"))
    rows.append(_row("wall time", num(s.get("wall_s"), ".3f"), "s"))
    return rows


def _status_rows(s: dict) -> list[tuple]:
    from thruster_hil.controller.cycle import STATUS_MEANINGS, STATUS_NAMES

    meaning = {STATUS_NAMES[bit]: text for bit, text in STATUS_MEANINGS.items()}
    counts = mapping(s.get("status_cycles"))
    return [(name, cell(num(n, "d"), "num"), meaning.get(name, "")) for name, n in counts.items()]


def _propellant_rows(s: dict) -> list[tuple]:
    plan = mapping(s.get("plan"))
    planned = mapping(plan.get("tank_used_kg"))
    used = mapping(s.get("propellant_by_tank_kg"))
    reserve = mapping(s.get("tank_reserve_kg"))
    touched = {str(t) for t in items(s.get("reserve_touched"))}
    rows = []
    for tank in dict.fromkeys([*planned, *used]):
        rows.append(
            (
                tank,
                cell(num(planned.get(tank), ".2f"), "num"),
                cell(num(used.get(tank), ".2f"), "num"),
                cell(_ratio(used.get(tank), planned.get(tank)), "num"),
                cell(_reserve(reserve.get(tank)), "num"),
                cell("TOUCHED", "bad") if tank in touched else "kept",
            )
        )
    rows.append(
        (
            cell(Raw("<strong>all tanks</strong>")),
            cell(num(plan.get("propellant_kg"), ".2f"), "num"),
            cell(num(s.get("propellant_kg"), ".2f"), "num"),
            cell(_ratio(s.get("propellant_kg"), plan.get("propellant_kg")), "num"),
            "",
            "",
        )
    )
    return rows


def _reserve(kg: object) -> str:
    if isinstance(kg, int | float) and not isinstance(kg, bool) and kg == 0:
        return "none"
    return num(kg, ".2f")


def _ratio(used: object, planned: object) -> str:
    """Run against plan as a percentage (a display ratio of two recorded numbers)."""
    if not isinstance(used, int | float) or not isinstance(planned, int | float) or planned <= 0:
        return MISSING
    return f"{100.0 * used / planned:.1f} %"


def _link_section(s: dict) -> str:
    link = s.get("link")
    if not isinstance(link, dict):
        return (
            '<p class="note">No link counters: this run had no wire (the in-process unit, '
            "<code>--unit sim</code>).</p>"
        )
    from thruster_hil.firmware_bridge.dictionary import STATE_NAMES

    rows = []
    known = set()
    for key, name, unit, spec in LINK_FIELDS:
        known.add(key)
        if key in link:
            rows.append((name, cell(num(link[key], spec), "num"), unit))
    state = link.get("unit_state")
    known.update(("unit_state", "armed", "link_up"))
    shown = STATE_NAMES.get(state, num(state, "d")) if isinstance(state, int) else MISSING
    rows.append(("unit: state at the end", cell(shown), ""))
    rows.append(("armed at the end", cell(yes_no(link.get("armed"))), ""))
    rows.append(("link up at the end", cell(yes_no(link.get("link_up"))), ""))
    for key, name in _MASKS:
        known.add(key)
        v = link.get(key)
        rows.append((name, cell(f"0x{v:08X}" if isinstance(v, int) else MISSING, "num"), ""))
    for key in link:  # counters this page does not know yet: shown, under their own name
        if key not in known:
            v = link[key]
            shown = num(v, "g") if isinstance(v, int | float) and not isinstance(v, bool) else v
            rows.append((key, cell(_text(shown), "num"), ""))
    host = [r for r in rows if not r[0].startswith("unit")]
    unit = [r for r in rows if r[0].startswith("unit")]
    head = ("counter", "value", "unit")
    return (
        f'<div class="cols"><div><h3>host</h3>{table(head, host, "link")}</div>'
        f"<div><h3>unit (its last housekeeping)</h3>{table(head, unit, 'link-unit')}</div></div>"
    )


def _versions_section(s: dict) -> str:
    rows = [
        ("thruster-hil", cell(s.get("thruster_hil_version"))),
        ("Python", cell(s.get("python"))),
        (
            "numpy / numba / pyserial",
            cell(
                f"{s.get('numpy') or MISSING} / "
                f"{s.get('numba') or MISSING} / "
                f"{s.get('pyserial') or MISSING}"
            ),
        ),
        ("message dictionary hash", cell(s.get("dictionary_hash"))),
    ]
    ident = mapping(s.get("unit_identity"))
    if "fw_ver" in ident:
        fw = ident.get("fw_ver")
        fw_text = f"{fw >> 8}.{fw & 0xFF} (0x{fw:04X})" if isinstance(fw, int) else MISSING
        match = ident.get("dict_hash") == s.get("dictionary_hash")
        rows += [
            ("unit firmware version", cell(fw_text)),
            ("unit protocol version", cell(num(ident.get("proto_ver"), "d"))),
            (
                "unit dictionary hash",
                cell(
                    f"{ident.get('dict_hash') or MISSING} "
                    + ("(matches the host's)" if match else "(DIFFERS from the host's)"),
                    "" if match else "bad",
                ),
            ),
            ("unit valve channels", cell(num(ident.get("n_channels"), "d"))),
            ("unit boot count", cell(num(ident.get("boot_count"), "d"))),
            ("unit test build", cell(yes_no(ident.get("test_build")))),
        ]
    else:
        rows.append(
            (
                "unit firmware",
                cell(f"none: {ident.get('unit') or s.get('unit')} (in-process, no firmware)"),
            )
        )
    out = table(("", "version"), rows, "versions")
    hashes = mapping(s.get("config_sha256"))
    if hashes:
        names = {"stack": s.get("stack_path")}
        rows = [
            (what, cell(Raw(f"<code>{esc(h)}</code>")), cell(names.get(what) or ""))
            for what, h in hashes.items()
        ]
        out += table(("configuration", "SHA-256", "file"), rows, "config-hashes")
    return out


def _events_section(s: dict) -> str:
    rows = []
    for f in items(s.get("failures")):
        if isinstance(f, dict):
            rows.append(
                ("thruster failed off (injected)", f.get("thruster"), num(f.get("at_s"), ".1f"))
            )
    for r in items(s.get("reallocations")):
        if isinstance(r, dict):
            rows.append(("reallocated around", r.get("thruster"), num(r.get("t_s"), ".1f")))
    if not rows:
        return '<p class="note">No thruster failures injected, no reallocations.</p>'
    return table(("event", "thruster", "at [s]"), [(a, b, cell(c, "num")) for a, b, c in rows])


def _records(s: dict) -> dict:
    return s["records"] if isinstance(s.get("records"), dict) else {}


def run_page(run_name: str, s: dict, run_meta: dict, figure_html: str) -> str:
    """report.html for the run with summary ``s`` (summary.json, nulls kept) and run.json
    ``run_meta`` ({} when absent); ``figure_html`` from :func:`inline_svg`."""
    v = run_verdict(s)
    checks = table(
        ("criterion", "asks", "this run", "result"),
        [(name, asks, did, result_cell(ok)) for name, asks, did, ok in v.checks],
        "criteria",
    )
    body = [
        "<h2>Criteria</h2>",
        checks,
        '<div class="cols"><div>',
        "<h2>Summary</h2>",
        table(("quantity", "value", "unit"), _summary_rows(s, run_meta), "summary"),
        "</div><div>",
        "<h2>Propellant against the plan</h2>",
        table(
            (
                "tank",
                "planned [kg]",
                "used [kg]",
                "used / planned",
                "reserve [kg]",
                "reserve state",
            ),
            _propellant_rows(s),
            "propellant",
        ),
        "<h2>Controller status (cycles)</h2>",
        table(("status", "cycles", "meaning"), _status_rows(s), "status"),
        "<h2>Thruster events</h2>",
        _events_section(s),
        "</div></div>",
        "<h2>Link counters</h2>",
        _link_section(s),
        "<h2>Plots</h2>",
        figure_html,
        "<h2>Versions and configuration</h2>",
        _versions_section(s),
        f'<p class="note">Run directory {esc(s.get("run_dir") or run_name)}; '
        f"telemetry rows {esc(num(_records(s).get('telemetry_rows'), 'd'))}.</p>",
    ]
    title = f"thruster-hil run record, directory {run_name}"
    return page(title, v, "\n".join(body))
