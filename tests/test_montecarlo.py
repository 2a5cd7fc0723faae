"""Monte-Carlo campaigns (issue 8): the batch kernel reproduces ``run --unit sim``, results do not
depend on threads, chunks or the scheduler, a worker killed mid-campaign loses no case, and the
CLI writes its three outputs and answers bad input with one line."""

import csv
import dataclasses
import io
import json
import os
import sys

import numpy as np
import pytest

from thruster_hil import montecarlo as mc
from thruster_hil.cli import main
from thruster_hil.closedloop import batch
from thruster_hil.closedloop import fused as loop
from thruster_hil.config import build_stack_model, load_stack
from thruster_hil.dispersions import case_seed, load_dispersions
from thruster_hil.plan import Target, plan_burn

# Slow tier (`-m "not slow"` leaves it out): flies Monte-Carlo campaigns (and a Dask cluster).
pytestmark = pytest.mark.slow

STACK = "dragon-boost-kit"
DV = 0.3
# Every case loses a thruster early: exercises the failure path of the batch and of run.
FAILING = (
    load_dispersions("default")
    .path.read_text()
    .replace("probability = 0.02", "probability = 1.0")
    .replace("window_s = [0.0, 300.0]", "window_s = [5.0, 60.0]")
)


@pytest.fixture(scope="module")
def campaign():
    model = build_stack_model(load_stack(STACK))
    plan = plan_burn(STACK, Target("delta_v", DV))
    return mc.Campaign.build(model, plan, load_dispersions("default"), 11, 30, STACK)


@pytest.fixture(scope="module")
def local_rows(campaign):
    return mc.run_local(campaign, threads=2).rows


def _run_json(capsys, tmp_path, *extra):
    argv = [
        "run",
        "--unit",
        "sim",
        "--stack",
        STACK,
        "--delta-v",
        str(DV),
        "--json",
        "--out",
        str(tmp_path / f"run{len(list(tmp_path.iterdir()))}"),
        *extra,
    ]
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_a_batch_case_reproduces_run_unit_sim(campaign, local_rows, capsys, tmp_path):
    """Acceptance: the batch kernel and `run --unit sim` (cycle by cycle, with its records) give
    the same delta-v (within 1e-9 relative; in fact to the bit) and the same perigee after."""
    for index in (0, 7):
        seed_k = case_seed(campaign.seed, index)
        run = _run_json(capsys, tmp_path, "--dispersions", "default", "--case-seed", str(seed_k))
        row = local_rows[index]
        assert run["case_seed"] == seed_k
        assert run["true_delta_v_mps"] == pytest.approx(row[loop.O_TRUE_DV], rel=1e-9, abs=0)
        assert run["achieved_delta_v_mps"] == pytest.approx(row[loop.O_ACHIEVED_DV], rel=1e-9)
        assert run["cycles"] == row[batch.B_CYCLES]
        assert run["perigee_km_after"] == pytest.approx(
            campaign.plan["perigee_km_before"] + row[loop.O_D_PERIGEE] / 1e3, abs=1e-9
        )
        assert run["max_attitude_error_deg"] == pytest.approx(
            np.degrees(row[batch.B_MAX_ATT_ERR]), rel=1e-12
        )
    # --case N --seed S names the same case as its case seed.
    by_index = _run_json(
        capsys, tmp_path, "--dispersions", "default", "--case", "7", "--seed", str(campaign.seed)
    )
    assert by_index["true_delta_v_mps"] == pytest.approx(
        local_rows[7][loop.O_TRUE_DV], rel=1e-9, abs=0
    )


def test_a_case_with_a_failed_thruster_reproduces_too(campaign, capsys, tmp_path):
    spec_path = tmp_path / "failing.toml"
    spec_path.write_text(FAILING)
    failing = mc.Campaign.build(
        campaign.model, campaign.plan, load_dispersions(spec_path), 3, 4, STACK
    )
    rows = mc.run_local(failing).rows
    assert (rows[:, batch.B_FAIL_CYCLE] >= 10).all()  # 5..60 s at 0.5 s per cycle
    seed_k = case_seed(3, 2)
    run = _run_json(capsys, tmp_path, "--dispersions", str(spec_path), "--case-seed", str(seed_k))
    assert run["true_delta_v_mps"] == pytest.approx(rows[2][loop.O_TRUE_DV], rel=1e-9, abs=0)
    assert len(run["reallocations"]) == 1


def test_results_do_not_depend_on_threads_or_chunks(campaign, local_rows):
    one_thread = mc.run_local(campaign, threads=1, chunk=7).rows
    assert np.array_equal(one_thread, local_rows)
    # A chunk run on its own gives the same rows as inside the whole campaign.
    start, rows = mc.run_chunk(campaign, 12, 19)
    assert start == 12 and np.array_equal(rows, local_rows[12:19])


def test_evaluate_applies_the_pass_criteria(campaign, local_rows):
    outcomes = mc.evaluate(campaign, local_rows)
    assert all(o["passed"] for o in outcomes)  # the default dispersions are flyable
    spec = dataclasses.replace(campaign.spec, delta_v_tolerance_pct=1e-9)
    tight = mc.Campaign.build(
        campaign.model, campaign.plan, spec, campaign.seed, campaign.n_cases, STACK
    )
    failed = [o for o in mc.evaluate(tight, local_rows) if not o["passed"]]
    assert failed and all("delta-v" in o["fail_reasons"] for o in failed)


def test_cli_montecarlo_writes_cases_summary_and_report(tmp_path, capsys):
    out = tmp_path / "mc"
    code = main(
        [
            "montecarlo",
            "--stack",
            STACK,
            "--delta-v",
            str(DV),
            "--cases",
            "12",
            "--seed",
            "4",
            "--dispersions",
            "default",
            "--out",
            str(out),
            "--json",
        ]
    )
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["cases"] == 12 and summary["passed"] == 12 and summary["failures"] == []
    s = summary["stats"]["delta_v_error_pct"]
    assert s["minus_3sigma"] < s["mean"] < s["plus_3sigma"] and s["sigma"] > 0
    with open(out / "cases.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["case"]) for r in rows] == list(range(12))
    assert int(rows[5]["case_seed"]) == case_seed(4, 5)
    assert {
        "thrust_scale:trunk-draco-1",
        "mass_offset_kg",
        "true_delta_v_mps",
        "perigee_km_after",
        "passed",
    } <= rows[0].keys()
    assert json.loads((out / "summary.json").read_text())["seed"] == 4
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_montecarlo_lists_failing_cases_with_their_rerun(tmp_path, capsys):
    spec = tmp_path / "tight.toml"
    spec.write_text(
        load_dispersions("default")
        .path.read_text()
        .replace("delta_v_tolerance_pct = 0.5", "delta_v_tolerance_pct = 0.001")
    )
    code = main(
        [
            "montecarlo",
            "--delta-v",
            str(DV),
            "--cases",
            "6",
            "--dispersions",
            str(spec),
            "--out",
            str(tmp_path / "mc"),
            "--json",
        ]
    )
    summary = json.loads(capsys.readouterr().out)
    assert code == 1 and summary["failed"] > 0
    first = summary["failures"][0]
    assert f"--case-seed {first['case_seed']}" in first["rerun"]
    assert "--unit sim" in first["rerun"] and "--delta-v 0.3" in first["rerun"]


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["montecarlo", "--delta-v", "1", "--cases", "0"], "--cases"),
        (["montecarlo", "--delta-v", "1", "--cases", "5", "--seed", "-3"], "--seed"),
        (["montecarlo", "--delta-v", "1", "--cases", "5", "--dispersions", "nope"], "nope"),
        (
            [
                "montecarlo",
                "--delta-v",
                "1",
                "--cases",
                "5",
                "--scheduler",
                "tcp://127.0.0.1:9",
                "--threads",
                "2",
            ],
            "--threads",
        ),
        (["run", "--unit", "sim", "--delta-v", "1", "--case-seed", "5"], "--dispersions"),
        (["run", "--delta-v", "1", "--dispersions", "default", "--case-seed", "5"], "--unit sim"),
        (["run", "--unit", "sim", "--delta-v", "1", "--dispersions", "default"], "--case-seed"),
        (
            [
                "run",
                "--unit",
                "sim",
                "--delta-v",
                "1",
                "--dispersions",
                "default",
                "--case-seed",
                "5",
                "--seed",
                "3",
            ],
            "--seed",
        ),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(argv, needle, capsys, tmp_path):
    assert main([*argv, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("thruster-hil: error: ") and err.count("\n") == 1 and needle in err


def test_scheduler_without_dask_says_how_to_install(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed -> ImportError
    assert (
        main(
            [
                "montecarlo",
                "--delta-v",
                "1",
                "--cases",
                "5",
                "--scheduler",
                "tcp://127.0.0.1:8786",
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'thruster-hil[dask]'" in err


def test_the_local_path_does_not_import_dask(tmp_path):
    import subprocess

    code = (
        "import sys; from thruster_hil.cli import main; "
        f"main(['montecarlo', '--delta-v', '0.3', '--cases', '2', '--out', "
        f"{str(tmp_path / 'o')!r}]); "
        "assert 'dask' not in sys.modules and 'distributed' not in sys.modules"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root)
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=root, timeout=600
    )
    assert out.returncode == 0, out.stderr


def test_progress_bar_only_on_a_terminal():
    quiet = io.StringIO()
    p = mc.Progress(10, stream=quiet)
    p.update(10, 0)
    p.close()
    assert quiet.getvalue() == ""
    shown = io.StringIO()
    p = mc.Progress(10, stream=shown, enabled=True)
    p.update(10, 1)
    p.close()
    text = shown.getvalue()
    assert "10/10" in text and "cases, 1 failed" in text and "ETA" in text


# ---- Dask -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dask_client():
    distributed = pytest.importorskip("distributed")
    with (
        distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        yield client


@pytest.fixture(scope="module")
def thousand(campaign):
    big = mc.Campaign.build(campaign.model, campaign.plan, campaign.spec, 2025, 1000, STACK)
    return big, mc.run_local(big).rows


@pytest.mark.slow
def test_dask_campaign_of_1000_cases_equals_the_local_run(thousand, dask_client):
    """Acceptance: the same seed gives identical results locally and on a Dask LocalCluster."""
    big, local = thousand
    result = mc.run_dask(big, client=dask_client)
    assert result.chunks == 40
    assert np.array_equal(result.rows, local)


@pytest.mark.slow
def test_a_worker_killed_mid_campaign_loses_no_case(thousand, dask_client):
    big, local = thousand
    part = mc.Campaign.build(big.model, big.plan, big.spec, big.seed, 300, STACK)
    killed = []

    def kill_a_busy_worker(start, stop):
        if killed:
            return
        busy = [w for w, tasks in dask_client.processing().items() if tasks]
        assert busy, "no worker holds a chunk: nothing to lose"
        for address, pid in dask_client.run(os.getpid, workers=busy[:1]).items():
            os.kill(pid, 9)
            killed.append(address)

    result = mc.run_dask(part, client=dask_client, chunk=10, on_chunk=kill_a_busy_worker)
    assert killed
    assert np.array_equal(result.rows, local[:300])  # case i of 300 is case i of 1000
