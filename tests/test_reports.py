"""report.html and the Monte-Carlo report.html, read as a browser's parser reads them.

Real runs and a real campaign are flown (the in-process unit, and the emulator for the link's
counters); each page is parsed with html.parser and checked for what an operator opens it for:
the verdict first (PASS for a good run, ABORTED with its reason for one that lost its thrusters,
FAIL with the rerun commands for a campaign with failed cases), units in the tables, a colour
bar on the firing raster, the pass limits drawn, no Python literal (None/False/True) shown, and
one self-contained file (no script, no network). The pictures themselves are checked in a real
browser by tools/screenshot_reports.py (docs/report.md).
"""

from __future__ import annotations

import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from thruster_hil.cli import _run_status, main
from thruster_hil.dispersions import load_dispersions
from thruster_hil.report_html import run_page, run_verdict

STACK = "dragon-boost-kit"
DV = "0.05"
VOID = {"meta", "br", "img", "input", "link", "hr", "col", "source", "area", "base", "wbr"}


class Page(HTMLParser):
    """The parts of a page the tests look at: its text, the elements with an id (their text),
    the tables by id (rows of cell texts), the tags and attributes seen."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.text: list[str] = []
        self.tags: list[tuple[str, dict]] = []
        self.by_id: dict[str, list[str]] = {}
        self.tables: dict[str, list[list[str]]] = {}
        self._open: list[tuple[str, str | None]] = []  # (tag, id)
        self._table: list[str | None] = []
        self._cell: list[str] | None = None
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append((tag, a))
        if tag in VOID:
            return
        self._open.append((tag, a.get("id")))
        if a.get("id"):
            self.by_id.setdefault(a["id"], [])
        if tag == "table":
            self._table.append(a.get("id"))
            if a.get("id"):
                self.tables[a["id"]] = []
        elif tag == "tr" and self._table and self._table[-1]:
            self.tables[self._table[-1]].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in VOID:
            return
        while self._open:
            t, _ = self._open.pop()
            if t == tag:
                break
        if tag == "table" and self._table:
            self._table.pop()
        elif tag in ("td", "th") and self._cell is not None:
            if self._table and self._table[-1]:
                self.tables[self._table[-1]][-1].append(" ".join("".join(self._cell).split()))
            self._cell = None

    def handle_data(self, data):
        self.text.append(data)
        for _, ident in self._open:
            if ident:
                self.by_id[ident].append(data)
        if self._cell is not None:
            self._cell.append(data)

    def id_text(self, ident: str) -> str:
        return " ".join(" ".join(self.by_id.get(ident, [])).split())

    def all_text(self) -> str:
        return " ".join(" ".join(self.text).split())


def h1_text(html: str) -> str:
    m = re.search(r"<h1[^>]*>(.*?)</h1>", html, flags=re.S)
    assert m, "no h1"
    return " ".join(Page(m.group(1)).all_text().split())


def assert_no_python_literals(page: Page) -> None:
    words = re.findall(r"[A-Za-z_]+", page.all_text())
    for literal in ("None", "False", "True", "nan", "NaN"):
        assert literal not in words, f"{literal!r} shown on the page"


def assert_self_contained(page: Page) -> None:
    for tag, attrs in page.tags:
        assert tag not in ("script", "iframe", "object", "embed"), tag
        if tag == "link":
            pytest.fail(f"<link {attrs}>: the page must not load anything")
        for key in ("src", "href", "xlink:href"):
            value = attrs.get(key)
            if value is not None and not value.startswith(("data:", "#")):
                pytest.fail(f"<{tag} {key}={value[:60]!r}>: a reference out of the page")


def _run(tmp: Path, name: str, *extra: str, unit: str = "sim") -> tuple[Path, int]:
    out = tmp / name
    code = main(
        ["run", "--unit", unit, "--stack", STACK, "--delta-v", DV, "--out", str(out), *extra]
    )
    return out, code


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A run that passes and one whose translation thrusters both fail off (aborted), flown
    once for the module; each then reported."""
    tmp = tmp_path_factory.mktemp("reports")
    good, good_code = _run(tmp, "good")
    bad, bad_code = _run(
        tmp, "aborted", "--fail-thruster", "trunk-draco-1@5", "--fail-thruster", "trunk-draco-2@5"
    )
    for out in (good, bad):
        assert main(["report", str(out)]) == 0
    return {"good": (good, good_code), "aborted": (bad, bad_code)}


def _page(run: Path) -> tuple[str, Page]:
    text = (run / "report.html").read_text(encoding="utf-8")
    return text, Page(text)


def test_a_passing_run_says_pass_first(runs):
    run, code = runs["good"]
    text, page = _page(run)
    assert code == 0
    heading = h1_text(text)
    assert heading.startswith("PASS — dragon-boost-kit via sim")
    # the banner names the run's directory as a directory: one called "run" does not read as
    # "thruster-hil run run"
    assert f'<p class="subtitle">thruster-hil run record, directory {run.name}</p>' in text
    # the verdict is the first thing on the page: the first heading, before every table
    assert text.index("<h1") < text.index("<table")
    criteria = {row[0]: row for row in page.tables["criteria"][1:]}
    assert criteria["burn not aborted"][-1] == "PASS"
    assert criteria["on target"][-1] == "PASS"
    assert criteria["attitude held"][-1] == "PASS"
    assert criteria["valves closed"][-1] == "n/a"  # the in-process unit has no valves
    assert_no_python_literals(page)
    assert_self_contained(page)


def test_an_aborted_run_says_aborted_and_why(runs):
    run, code = runs["aborted"]
    text, page = _page(run)
    summary = json.loads((run / "summary.json").read_text())
    assert code == 1 and summary["aborted"]
    assert h1_text(text).startswith("ABORTED — ")
    verdict = page.id_text("verdict")
    assert "every translation thruster has failed off" in verdict
    criteria = {row[0]: row for row in page.tables["criteria"][1:]}
    assert criteria["burn not aborted"][-1] == "FAIL"
    assert criteria["on target"][-1] == "FAIL"
    events = page.all_text()
    assert "trunk-draco-1" in events and "thruster failed off (injected)" in events
    assert_no_python_literals(page)


@pytest.mark.parametrize("which", ["good", "aborted"])
def test_the_verdict_is_the_exit_status(runs, which):
    """PASS exactly when 'run' exits 0: both judge the same summary fields."""
    run, code = runs[which]
    summary = json.loads((run / "summary.json").read_text())
    word = run_verdict(summary).word
    assert (word == "PASS") == (code == 0 == _run_status(summary))
    assert word == {"good": "PASS", "aborted": "ABORTED"}[which]


def test_the_summary_table_has_units_and_the_recorded_numbers(runs):
    run, _ = runs["good"]
    _, page = _page(run)
    summary = json.loads((run / "summary.json").read_text())
    rows = {r[0]: r[1:] for r in page.tables["summary"][1:]}
    assert rows["target delta-v"] == [f"{summary['target_delta_v_mps']:.5f}", "m/s"]
    assert rows["achieved delta-v (sensed along-track)"][1] == "m/s"
    assert rows["delta-v error (sensed)"] == [f"{summary['delta_v_error_pct']:+.3f}", "%"]
    assert rows["max attitude error"][1] == "deg"
    assert rows["propellant used"] == [f"{summary['propellant_kg']:.2f}", "kg"]
    assert rows["mean perigee after"] == [f"{summary['perigee_km_after']:.3f}", "km"]
    assert rows["burn duration"][1] == "s" and rows["control period"] == ["500", "ms"]
    # no raw key names: the rows are named for people
    assert not any(re.fullmatch(r"[a-z]+(_[a-z]+)+", name) for name in rows)


def test_propellant_is_shown_against_the_plan_per_tank(runs):
    run, _ = runs["good"]
    _, page = _page(run)
    summary = json.loads((run / "summary.json").read_text())
    rows = {r[0]: r for r in page.tables["propellant"][1:]}
    assert set(summary["propellant_by_tank_kg"]) | {"all tanks"} == set(rows)
    total = rows["all tanks"]
    assert total[1] == f"{summary['plan']['propellant_kg']:.2f}"
    assert total[2] == f"{summary['propellant_kg']:.2f}"
    ratio = 100 * summary["propellant_kg"] / summary["plan"]["propellant_kg"]
    assert total[3] == f"{ratio:.1f} %"
    for tank, used in summary["propellant_by_tank_kg"].items():
        assert rows[tank][2] == f"{used:.2f}"
        assert rows[tank][1] == f"{summary['plan']['tank_used_kg'][tank]:.2f}"


def test_the_plots_are_inline_svg_with_a_colour_bar(runs):
    run, _ = runs["good"]
    text, page = _page(run)
    svgs = [a for t, a in page.tags if t == "svg"]
    assert len(svgs) == 1 and "<?xml" not in text and "<!DOCTYPE svg" not in text
    assert ("g", {"id": "colorbar"}) in page.tags  # the raster's colour bar (its axes)
    assert "executed on-time per cycle [ms]" in page.all_text()  # ... with its label
    assert "propellant used against the plan" in page.all_text()
    assert any(t == "image" for t, _ in page.tags)  # the raster itself, embedded (data: URI)
    assert_self_contained(page)


def test_a_run_through_the_emulator_shows_its_link_counters_and_firmware(tmp_path):
    run, code = _run(tmp_path, "emu", "--faults", "corrupt=0.05,drop=0.02,seed=5", unit="emulator")
    assert code == 0
    assert main(["report", str(run)]) == 0
    text, page = _page(run)
    summary = json.loads((run / "summary.json").read_text())
    link = summary["link"]
    host = {r[0]: r[1:] for r in page.tables["link"][1:]}
    unit = {r[0]: r[1:] for r in page.tables["link-unit"][1:]}
    assert host["resends (commands sent again)"][0] == str(link["retries"])
    assert host["CRC errors (host side)"][0] == str(link["crc_errors"])
    assert host["deadline misses"][0] == str(link["deadline_misses"])
    assert host["round trip, median (exchanges sent once)"] == [f"{link['rtt_ms_p50']:.3f}", "ms"]
    assert unit["unit: session errors (wrong token)"][0] == str(link["unit_session_errors"])
    assert unit["unit: state at the end"][0] == "SAFE"
    assert link["retries"] + link["crc_errors"] > 0  # the faults were met and counted
    versions = {r[0]: r[1:] for r in page.tables["versions"][1:]}
    assert versions["thruster-hil"] == [summary["thruster_hil_version"]]
    assert "(matches the host's)" in versions["unit dictionary hash"][0]
    hashes = {r[0]: r[1] for r in page.tables["config-hashes"][1:]}
    assert hashes["stack"] == summary["config_sha256"]["stack"]
    criteria = {row[0]: row for row in page.tables["criteria"][1:]}
    assert criteria["valves closed"][-1] == "PASS"
    assert h1_text(text).startswith("PASS — dragon-boost-kit via emulator")
    assert_no_python_literals(page)


def test_everything_from_the_records_is_escaped(runs, tmp_path):
    """A stack or a reason holding markup shows as text: the page gains no element."""
    src, _ = runs["aborted"]
    run = tmp_path / "hostile"
    shutil.copytree(src, run)
    summary = json.loads((run / "summary.json").read_text())
    evil = '<script>alert("x")</script><img src=http://example.com/x>'
    summary["stack"] = evil
    summary["abort_reason"] = evil
    summary["plan"]["stack_name"] = evil
    (run / "summary.json").write_text(json.dumps(summary))
    assert main(["report", str(run)]) == 0
    text, page = _page(run)
    assert_self_contained(page)  # no <script>, no <img src=http...>
    assert evil in page.id_text("verdict")  # shown as the text it is
    assert "<script>" not in text


def _tags(page: Page) -> list[str]:
    return [tag for tag, _ in page.tags]


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=80), number=st.one_of(st.none(), st.booleans(), st.text(max_size=5)))
def test_any_text_in_a_summary_stays_text(text, number):
    """Property: whatever a summary's strings hold, the page has the same elements as with a
    plain word, and shows the text as it is; a number field of the wrong type shows as missing,
    never as a Python literal."""

    def summary(s: str) -> dict:
        return {
            "stack": s,
            "unit": s,
            "aborted": True,
            "abort_reason": s,
            "plan": {"stack_name": s, "vehicle": s, "port": s, "tank_used_kg": {s: 1.0}},
            "propellant_by_tank_kg": {s: 2.0},
            "failures": [{"thruster": s, "at_s": number}],
            "max_attitude_error_deg": number,
            "status_cycles": {s: number},
        }

    plain = Page(run_page("run", summary("word"), {}, ""))
    page = Page(run_page("run", summary(text), {"mode": text}, ""))
    assert _tags(page) == _tags(plain)
    assert " ".join(text.split()) in page.id_text("verdict")
    rows = {r[0]: r[1:] for r in page.tables["summary"][1:]}
    assert rows["max attitude error"][0] == "—"


def test_report_of_a_directory_that_is_not_a_run_is_one_line(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("thruster-hil: error: ")


# ---------------------------------------------------------------------------------- Monte-Carlo


def _campaign(tmp: Path, name: str, spec_text: str | None, cases: int) -> tuple[Path, int, dict]:
    args = ["--dispersions", "default"]
    if spec_text is not None:
        spec = tmp / f"{name}.toml"
        spec.write_text(spec_text)
        args = ["--dispersions", str(spec)]
    out = tmp / name
    code = main(
        ["montecarlo", "--stack", STACK, "--delta-v", DV, "--cases", str(cases), "--seed", "3"]
        + args
        + ["--out", str(out), "--json"]
    )
    return out, code, json.loads((out / "summary.json").read_text())


@pytest.fixture(scope="module")
def failing_campaign(tmp_path_factory):
    """A campaign with a tight delta-v tolerance and thruster failures early in the burn:
    some cases fail, some draw a failed thruster."""
    text = (
        load_dispersions("default")
        .path.read_text()
        .replace("delta_v_tolerance_pct = 0.5", "delta_v_tolerance_pct = 0.3")
        .replace("probability = 0.02", "probability = 0.3")
        .replace("window_s = [0.0, 300.0]", "window_s = [0.0, 20.0]")
    )
    assert "probability = 0.3" in text and "window_s = [0.0, 20.0]" in text
    return _campaign(tmp_path_factory.mktemp("mc"), "tight", text, 40)


def test_a_failing_campaign_page_gives_verdict_rate_limits_and_reruns(failing_campaign):
    out, code, summary = failing_campaign
    assert code == 1 and summary["failed"] > 0 and summary["thruster_failures_injected"] > 0
    text = (out / "report.html").read_text(encoding="utf-8")
    page = Page(text)
    heading = h1_text(text)
    assert heading.startswith(f"FAIL — {summary['passed']} of {summary['cases']} cases passed")
    assert f"pass rate {100 * summary['pass_rate']:.1f} %" in heading
    limits = {r[0]: r for r in page.tables["limits"][1:]}
    assert "within ±0.3 % of the target" in limits["delta-v"][1]
    assert limits["delta-v"][2] == str(sum("delta-v" in f["reasons"] for f in summary["failures"]))
    assert (
        f"at most {summary['pass_limits']['max_attitude_error_deg']:g} deg"
        in (limits["attitude"][1])
    )
    failed = page.tables["failed-cases"][1:]
    assert [int(r[0]) for r in failed] == [f["case"] for f in summary["failures"]]
    for row, f in zip(failed, summary["failures"], strict=True):
        assert row[-1] == f["rerun"] and f"--case-seed {f['case_seed']}" in row[-1]
    thr = page.tables["thruster-failures"][1:]
    assert len(thr) == summary["thruster_failures_injected"]
    assert_no_python_literals(page)
    assert_self_contained(page)


def test_the_campaign_plots_draw_the_pass_limits_and_mark_the_classes(failing_campaign):
    out, _, summary = failing_campaign
    page = Page((out / "report.html").read_text(encoding="utf-8"))
    ids = {a.get("id") for t, a in page.tags if t == "g"}
    for gid in (
        "pass-limit-delta_v_error_pct-0",  # -tolerance
        "pass-limit-delta_v_error_pct-1",  # +tolerance
        "pass-limit-max_attitude_error_deg-0",
        "pass-limit-burn_duration_s-0",
        "pass-limit-scatter-delta_v_error_pct-0",
    ):
        assert gid in ids, gid
    words = page.all_text()
    tol = summary["pass_limits"]["delta_v_tolerance_pct"]
    assert f"pass limit ±{tol:g} %" in words
    assert "mean ± 3σ" in words
    # the legend names each class that has cases, with its count
    for label, count in (
        ("failed", sum(1 for f in summary["failures"] if f["thruster_failure_cycle"] is None)),
        (
            "failed, thruster failed",
            sum(1 for f in summary["failures"] if f["thruster_failure_cycle"] is not None),
        ),
    ):
        if count:
            assert f"{label} ({count})" in words


def test_a_passing_campaign_says_pass(tmp_path):
    out, code, summary = _campaign(tmp_path, "nominal", None, 12)
    assert code == 0 and summary["failed"] == 0
    text = (out / "report.html").read_text(encoding="utf-8")
    page = Page(text)
    assert h1_text(text).startswith("PASS — 12 of 12 cases passed (pass rate 100.0 %)")
    assert "No case failed." in page.all_text()
    assert_no_python_literals(page)


def test_report_on_a_campaign_directory_writes_its_pages_again(failing_campaign, tmp_path, capsys):
    """`report MC_DIR` renders the campaign's pages from cases.csv and summary.json: the same
    tables as montecarlo wrote; a damaged cases.csv is one line, exit 2."""
    out, _, _ = failing_campaign
    copy = tmp_path / "again"
    shutil.copytree(out, copy)
    (copy / "report.html").unlink()
    capsys.readouterr()
    assert main(["report", str(copy)]) == 0
    assert "report.html" in capsys.readouterr().out
    first = Page((out / "report.html").read_text(encoding="utf-8"))
    again = Page((copy / "report.html").read_text(encoding="utf-8"))
    for ident in ("limits", "failed-cases", "thruster-failures", "stats", "campaign"):
        assert again.tables[ident] == first.tables[ident], ident
    lines = (copy / "cases.csv").read_text().splitlines()
    lines[3] = lines[3].replace(",1,", ",yes,", 1) if ",1," in lines[3] else lines[3] + ",x"
    (copy / "cases.csv").write_text("\n".join(lines) + "\n")
    assert main(["report", str(copy)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cases.csv:4" in err
