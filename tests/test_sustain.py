"""Tests for thruster_hil.sustain: a span of decay and plan-made reboosts above a floor."""

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from thruster_hil import cli
from thruster_hil.core.constants import MU_EARTH, R_EARTH
from thruster_hil.sustain import decay_validation, decay_validation_markdown, sustain

# Slow tier (`-m "not slow"` leaves it out): plans a year of reboosts (whole burns flown).
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def year():
    """A year of the default stack (Dragon boost kit) at each preset."""
    return {
        a: sustain("dragon-boost-kit", 365.0, solar_activity=a) for a in ("low", "moderate", "high")
    }


def test_more_activity_needs_more_burns_and_propellant(year):
    burns = [year[a]["burns"] for a in ("low", "moderate", "high")]
    assert burns[0] < burns[1] < burns[2]
    props = [year[a]["propellant_kg"] for a in ("low", "moderate", "high")]
    assert props[0] < props[1] < props[2]


def test_floor_never_crossed_and_each_reboost_restores_the_ceiling(year):
    for r in year.values():
        assert r["min_mean_altitude_km"] >= r["floor_km"]
        assert min(r["timeline"]["mean_altitude_km"]) >= r["floor_km"]
        for b in r["reboosts"]:
            assert r["floor_km"] <= b["mean_altitude_before_km"] < r["trigger_km"]
            # the plan's secant corrections meet a mean-altitude target to 1 % of the raise
            assert b["mean_altitude_after_km"] == pytest.approx(
                r["ceiling_km"], abs=0.01 * (r["ceiling_km"] - r["floor_km"])
            )
        assert all(0.0 <= d <= r["days"] for d in r["timeline"]["day"])


def test_gain_per_delta_v_is_the_near_circular_rate(year):
    """Each reboost's mean-altitude gain per m/s of delta-v is da/dv = 2 a / v (Gauss's
    equation on a near-circular orbit, ../shared/DESIGN.md: ~1.78 km per m/s at 415-420 km).
    The plan propagates a finite burn with J2 and drag, so 2 % tolerance."""
    r = year["moderate"]
    a = R_EARTH + r["trigger_km"] * 1e3
    expected_km_per_mps = 2.0 * a / math.sqrt(MU_EARTH / a) / 1e3
    b = r["burn"]
    assert b["mean_altitude_change_km"] / b["delta_v_mps"] == pytest.approx(
        expected_km_per_mps, rel=0.02
    )


def test_altitude_budget_and_kits_add_up(year):
    """Start + gains - decay = end; kits hold the propellant spent (with what replaced kits
    still held); the per-year numbers scale the span to 365.25 days."""
    for r in year.values():
        gains = sum(
            b["mean_altitude_after_km"] - b["mean_altitude_before_km"] for b in r["reboosts"]
        )
        assert r["end_mean_altitude_km"] < r["ceiling_km"] + gains
        assert r["propellant_kg"] == pytest.approx(r["burns"] * r["burn"]["propellant_kg"])
        # Kits hold what the translation tanks gave (attitude thrusters draw other tanks).
        from_kits = r["burns"] * r["burn"]["kit_propellant_kg"]
        assert from_kits <= r["propellant_kg"] + 1e-9
        assert r["kits"] * r["kit_propellant_kg"] >= from_kits + r["stranded_propellant_kg"] - 1e-6
        assert r["kits_per_year"] == pytest.approx(
            from_kits / r["kit_propellant_kg"] * 365.25 / 365.0
        )
        assert [b["kit"] for b in r["reboosts"]] == sorted(b["kit"] for b in r["reboosts"])


@settings(max_examples=8, deadline=None)
@given(f107=st.floats(60.0, 300.0), ap=st.floats(0.0, 400.0), band=st.floats(0.5, 20.0))
def test_floor_holds_for_any_activity_and_band(f107, ap, band):
    r = sustain("dragon-boost-kit", 60.0, floor_km=418.5 - band, f107_sfu=f107, ap=ap)
    assert r["min_mean_altitude_km"] >= r["floor_km"]
    assert r["burns"] == len(r["reboosts"])


def test_decay_validation_rows():
    rows = decay_validation()
    assert [r["activity"] for r in rows] == ["low", "moderate", "high"]
    for r in rows:
        assert {
            "f107_sfu",
            "ap",
            "altitude_km",
            "predicted_m_per_day",
            "published_m_per_day",
            "within",
            "source",
        } <= set(r)
        assert r["predicted_m_per_day"] > 0.0 and r["source"]
    by = {r["activity"]: r for r in rows}
    assert by["moderate"]["within"] and by["high"]["within"]
    # The high preset is a typical maximum, not a storm: below the ~300 m/day of storms.
    assert by["high"]["predicted_m_per_day"] < 300.0
    table = decay_validation_markdown(rows)
    assert table.count("\n") == 4 and "| moderate | 140 | 15 |" in table


def test_cli_json_and_plot(tmp_path, capsys):
    png = tmp_path / "year.png"
    assert (
        cli.main(
            ["sustain", "--days", "90", "--solar-activity", "high", "--json", "--plot", str(png)]
        )
        == 0
    )
    r = json.loads(capsys.readouterr().out)
    assert "timeline" not in r
    assert r["f107_sfu"] == 170.0 and r["ap"] == 15.0 and r["burns"] >= 1
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert cli.main(["sustain", "--days", "30", "--f107", "200", "--ap", "30"]) == 0
    out = capsys.readouterr().out
    assert "custom activity: F10.7 200 sfu, Ap 30" in out and "reboosts" in out


@pytest.mark.parametrize(
    "argv",
    [
        ["--f107", "-5"],
        ["--f107", "nan"],
        ["--ap", "1000"],
        ["--days", "0"],
        ["--floor-km", "430"],
        ["--floor-km", "418", "--ceiling-km", "418"],
        ["--ceiling-km", "2000"],
        ["--stack", "soyuz"],
        ["--plot", "/nonexistent-dir/x.png"],
    ],
)
def test_bad_inputs_are_one_line_exit_2(argv, capsys):
    assert cli.main(["sustain", *argv]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and err.startswith("thruster-hil: error: ")


@pytest.mark.parametrize("argv", [["--f107", "-5"], ["--ap", "1000"], ["--f107", "nan"]])
@pytest.mark.parametrize("command", ["plan", "run", "montecarlo"])
def test_burn_commands_refuse_bad_activity(command, argv, capsys):
    extra = ["--cases", "2"] if command == "montecarlo" else []
    assert cli.main([command, "--delta-v", "1", *extra, *argv]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1


def test_plan_carries_the_activity(capsys):
    assert cli.main(["plan", "--delta-v", "1", "--f107", "250", "--ap", "45", "--json"]) == 0
    p = json.loads(capsys.readouterr().out)
    assert (p["f107_sfu"], p["ap"], p["solar_activity"]) == (250.0, 45.0, "moderate")


def test_docs_decay_table_is_in_step():
    """docs/atmosphere.md carries decay_validation()'s table between its markers."""
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "atmosphere.md").read_text()
    start = doc.index("<!-- decay-validation:start")
    block = doc[doc.index("\n", start) + 1 : doc.index("<!-- decay-validation:end -->")]
    assert block.strip() == decay_validation_markdown(decay_validation())


def test_replay_checks_the_recorded_activity(tmp_path):
    """A run record whose plan carries an F10.7 or Ap outside the table is refused in one line
    naming the field; one without them (written before the free atmosphere) is accepted."""
    from thruster_hil.core.errors import UserError
    from thruster_hil.replay import _check_summary

    plan = {
        "delta_v_mps": 1.0,
        "burn_duration_s": 500.0,
        "perigee_km_before": 415.0,
        "apogee_km_before": 422.0,
        "inclination_deg": 51.64,
        "stack": "dragon-boost-kit",
        "burn_centre": "apogee",
        "solar_activity": "moderate",
    }
    where = tmp_path / "summary.json"
    assert _check_summary({"plan": dict(plan), "stack_path": "x"}, where) == []
    assert (
        _check_summary({"plan": {**plan, "f107_sfu": 200.0, "ap": 30}, "stack_path": "x"}, where)
        == []
    )
    for bad in ({"f107_sfu": -5.0}, {"ap": 1000}, {"f107_sfu": "x"}, {"ap": True}):
        with pytest.raises(UserError) as err:
            _check_summary({"plan": {**plan, **bad}, "stack_path": "x"}, where)
        assert "\n" not in str(err.value) and ("f107" in str(err.value) or "ap" in str(err.value))


def test_a_raise_beyond_one_kit_is_cut_to_a_whole_kit():
    """A 40 km band needs ~22 m/s per reboost, more than a boost kit holds (~9 m/s, NASA
    CRS-33): each reboost is then one whole kit's burn, short of the ceiling, and the floor
    still holds."""
    from thruster_hil.sustain import KIT_CUT

    r = sustain("dragon-boost-kit", 200.0, floor_km=378.5, f107_sfu=250.0, ap=45.0)
    assert r["burn_is_whole_kit"] and r["burns"] >= 1
    assert r["burn"]["kit_propellant_kg"] == pytest.approx(
        KIT_CUT * r["kit_propellant_kg"], rel=1e-3
    )
    assert r["kits"] == r["burns"]
    assert all(b["mean_altitude_after_km"] < r["ceiling_km"] for b in r["reboosts"])
    assert r["min_mean_altitude_km"] >= r["floor_km"]
