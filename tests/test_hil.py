"""The closed hardware-in-the-loop: controller + plant + the pty emulator over the serial link.

Acceptance of the firmware bridge: a lockstep reboost through the emulator matches the SIL run,
survives 1 % corrupted and 1 % dropped frames without firing any step twice, and a link lost
mid-burn closes every valve within the watchdog time plus one tick on the emulator's clock while
the host reports the loss and stops. The unit's log (emulator --log) is the evidence.
"""

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import serial
from thruster_hil.firmware_bridge.emulator import EmulatorProcess
from thruster_hil.sims.thrusters import HEALTH_FAILED_OFF, HEALTH_STUCK_OPEN

from thruster_hil.closedloop.fused import warm_up
from thruster_hil.closedloop.hil import open_unit
from thruster_hil.closedloop.runner import Failure, format_run, run_burn
from thruster_hil.config import build_stack_model, load_stack
from thruster_hil.plan import Target, plan_burn

# Slow tier (`-m "not slow"` leaves it out): flies burns over a pty against the emulator process.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
STACK = "dragon-boost-kit"


@pytest.fixture(scope="module")
def dragon():
    model = build_stack_model(load_stack(STACK))
    plan = plan_burn(STACK, Target("raise_perigee", 1.6))
    sil = run_burn(model, plan).summary
    warm_up(model, plan)  # the per-cycle kernels, before any test arms a unit
    return model, plan, sil


def _open(model, port, mode, **kw):
    """Connect and arm an emulator (``port`` None: start one) for ``model``'s thrusters."""
    return open_unit(
        unit="emulator",
        port=port,
        mode=mode,
        n_thrusters=len(model.thruster_names),
        period_ms=int(round(model.control_period_s * 1000)),
        **kw,
    )


def _hil(model, plan, tmp_path, faults=None, mode="lockstep"):
    log = tmp_path / "emulator.jsonl"
    unit = _open(model, None, mode, faults=faults, emulator_log=log)
    summary = run_burn(model, plan, unit=unit).summary
    records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return summary, records


def _fired_steps(records):
    return Counter((r["session"], r["step"], r["bank"]) for r in records if r["ev"] == "fire")


def test_lockstep_reboost_through_the_emulator_matches_sil(dragon, tmp_path):
    model, plan, sil = dragon
    hil, records = _hil(model, plan, tmp_path)
    assert hil["completed"] and not hil["aborted"]
    assert hil["valves_closed"] is True and hil["valves_open"] == []
    assert hil["achieved_delta_v_mps"] == pytest.approx(sil["achieved_delta_v_mps"], rel=5e-3)
    link = hil["link"]
    assert link["frames_sent"] > 2 * hil["cycles"] and link["crc_errors"] == 0
    assert max(_fired_steps(records).values()) == 1


def test_reboost_survives_corrupted_and_dropped_frames(dragon, tmp_path):
    """1 % of frames corrupted and 1 % dropped, each way: the burn still ends within 0.5 % of the
    SIL delta-v, no FIRE step executes twice, and every corrupted frame is counted by its
    receiver (the unit for host->unit frames, the host's decoder for unit->host frames)."""
    model, plan, sil = dragon
    hil, records = _hil(model, plan, tmp_path, faults="corrupt=0.01,drop=0.01,seed=11")
    assert hil["completed"] and not hil["aborted"], hil.get("abort_reason")
    assert hil["achieved_delta_v_mps"] == pytest.approx(sil["achieved_delta_v_mps"], rel=5e-3)
    assert max(_fired_steps(records).values()) == 1, "a FIRE step executed twice"
    counters = [r for r in records if r["ev"] == "counters"][-1]
    corrupted_rx = counters["link"]["rx"]["corrupted"]
    corrupted_tx = counters["link"]["tx"]["corrupted"]
    assert corrupted_rx > 0 and corrupted_tx > 0
    unit = counters["unit"]
    assert unit["crc_errors"] + unit["cobs_errors"] + unit["length_errors"] == corrupted_rx
    link = hil["link"]
    host_errors = (
        link["crc_errors"]
        + link["cobs_errors"]
        + link["length_errors"]
        + link["other_protocol_errors"]
    )
    assert host_errors == corrupted_tx
    assert link["retries"] > 0


def _wait_for_record(log: Path, pred, timeout_s: float = 10.0):
    """The first record of the unit's log that satisfies pred (the log is flushed per line)."""
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if log.exists():
            for line in log.read_text().splitlines():
                if line.strip() and pred(json.loads(line)):
                    return json.loads(line)
        time.sleep(0.02)
    raise AssertionError(f"no matching record in {log} within {timeout_s} s")


def test_link_loss_closes_the_valves_within_the_watchdog(dragon, tmp_path):
    """The unit stops hearing the host 20 ms (wall clock) into a lockstep burn (a 3 s stall of
    its input): on the emulator's clock every valve is closed within watchdog_ms + 1 tick of the
    last valid frame, and the host reports the loss and stops the burn."""
    model, plan, _ = dragon
    log = tmp_path / "emulator.jsonl"
    with EmulatorProcess(faults="stall=3s@fire+20ms", log_path=log) as emu:
        unit = _open(model, emu.port, "lockstep")
        hil = run_burn(model, plan, unit=unit).summary
        trip = _wait_for_record(log, lambda r: r["ev"] == "watchdog_trip")
    assert hil["aborted"] and "unit" in hil["abort_reason"]
    assert not hil["completed"]
    records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    trips = [r for r in records if r["ev"] == "watchdog_trip"]
    assert trip in trips
    for trip in trips:
        assert trip["closed_us"] - trip["last_valid_us"] <= (trip["watchdog_ms"] + 1) * 1000
    states = [r for r in records if r["ev"] == "state"]
    assert any(r["to"] == "SAFE" and r["reason"] == "WATCHDOG" for r in states), states


def test_low_tank_pressure_mid_burn_safes_the_unit_and_the_abort_says_why(dragon, tmp_path):
    """REQ issue 7: the unit's tank drops to 300 kPa (below min_feed_kpa) 20 ms (wall clock)
    into a lockstep burn: the unit closes its valves and goes SAFE (LOW_PRESSURE) on its own, the
    host's next FIRE is refused and the burn stops with a one-line reason that names it."""
    model, plan, _ = dragon
    log = tmp_path / "emulator.jsonl"
    with EmulatorProcess(faults="pressure=300kPa@fire+20ms", log_path=log) as emu:
        unit = _open(model, emu.port, "lockstep")
        hil = run_burn(model, plan, unit=unit).summary
        _wait_for_record(log, lambda r: r["ev"] == "state" and r["to"] == "SAFE")
    assert hil["aborted"] and not hil["completed"]
    reason = hil["abort_reason"]
    assert "\n" not in reason and "REJECTED_STATE" in reason and "LOW_PRESSURE" in reason
    assert "300 kPa" in reason and "500 kPa" in reason
    assert hil["valves_closed"] is True and hil["valves_open"] == []
    assert hil["link"]["unit_tank_kPa"] == 300  # the HK asked for after the final STOP_ALL
    records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    safes = [r for r in records if r["ev"] == "state" and r["to"] == "SAFE"]
    assert safes[0]["reason"] == "LOW_PRESSURE" and safes[0]["from"] == "ARMED"


@pytest.fixture(scope="module")
def dragon_failure():
    """The dragon-boost-kit stack, a 0.3 m/s burn, trunk-draco-1 failing off 5 s in, and the
    SIL run of exactly that."""
    model = build_stack_model(load_stack(STACK))
    plan = plan_burn(STACK, Target("delta_v", 0.3))
    name = model.thruster_names[0]
    sil = run_burn(model, plan, failures=[Failure(name, 5.0, HEALTH_FAILED_OFF)]).summary
    warm_up(model, plan)
    return model, plan, name, sil


def test_a_thruster_failed_mid_lockstep_burn_is_reallocated_as_in_sil(dragon_failure, tmp_path):
    """REQ issue 7: a failure injected while the lockstep chain runs (the runner calls
    unit.fail() on the link's reader thread) reaches the unit ahead of the next FIRE instead of
    waiting for an ACK nobody can read: the burn completes with the thruster failed on the
    unit, the controller reallocates at the same cycle as in SIL, and the delta-v is within
    0.5 % of the SIL run with the same failure."""
    model, plan, name, sil = dragon_failure
    log = tmp_path / "emulator.jsonl"
    unit = _open(model, None, "lockstep", emulator_log=log)
    hil = run_burn(model, plan, unit=unit, failures=[Failure(name, 5.0, HEALTH_FAILED_OFF)]).summary
    assert hil["completed"] and not hil["aborted"], hil.get("abort_reason")
    realloc = [(r["thruster"], r["cycle"], r["health"]) for r in hil["reallocations"]]
    assert realloc == [(r["thruster"], r["cycle"], r["health"]) for r in sil["reallocations"]]
    assert realloc == [(name, 10, HEALTH_FAILED_OFF)]
    assert hil["achieved_delta_v_mps"] == pytest.approx(sil["achieved_delta_v_mps"], rel=5e-3)
    records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    (fault,) = [r for r in records if r["ev"] == "fault"]
    assert (fault["kind"], fault["arg"], fault["source"]) == ("FAIL_OFF", 0, "wire")
    fires = {r["step"]: r for r in records if r["ev"] == "fire" and r["bank"] == 0}
    # Cycle 10 is step 11: the fault arrived right before its FIRE, and channel 0 never fired
    # again; before it, it did.
    assert records.index(fires[10]) < records.index(fault) < records.index(fires[11])
    assert all(f["executed"][0] == 0 for step, f in fires.items() if step >= 11)
    assert any(f["executed"][0] > 0 for step, f in fires.items() if step < 11)


def test_a_failure_on_a_unit_without_fault_injection_stops_the_burn_saying_so(dragon_failure):
    """A unit that is not a test build refuses the FAULT_INJECT: the burn stops at the next
    cycle with that reason in one line (not a timeout)."""
    model, plan, name, _ = dragon_failure
    with EmulatorProcess(extra_args=["--no-test-build"]) as emu:
        unit = _open(model, emu.port, "lockstep")
        hil = run_burn(
            model, plan, unit=unit, failures=[Failure(name, 5.0, HEALTH_FAILED_OFF)]
        ).summary
    assert hil["aborted"] and hil["cycles"] == 10  # stopped at the report of cycle 10
    assert "FAULT_INJECT FAIL_OFF on channel 0 refused: UNSUPPORTED" in hil["abort_reason"]
    assert "\n" not in hil["abort_reason"]


def test_a_stuck_open_valve_is_not_reported_closed(dragon_failure, tmp_path):
    """REQ issue 7: a valve stuck open (FAULT_INJECT STUCK_OPEN through the runner) cannot be
    closed by STOP_ALL: the unit acknowledges the final STOP_ALL, but its housekeeping still
    shows the valve open, so the summary says valves_closed false and names the channel."""
    model, _plan, _name, _ = dragon_failure
    plan = plan_burn(STACK, Target("delta_v", 0.05))
    stuck = 2  # a capsule Draco (quad-a-plus-t): the burn still ends on target
    failure = Failure(model.thruster_names[stuck], 2.0, HEALTH_STUCK_OPEN)
    log = tmp_path / "emulator.jsonl"
    unit = _open(model, None, "lockstep", emulator_log=log)
    result = run_burn(model, plan, unit=unit, failures=[failure])
    hil = result.summary
    assert hil["completed"] and not hil["aborted"], hil.get("abort_reason")
    assert hil["valves_closed"] is False and hil["valves_open"] == [stuck]
    assert hil["link"]["unit_open_mask"] == 1 << stuck  # the HK that was asked for
    assert any(e["event"] == "valves_open" and e["channels"] == [stuck] for e in result.events)
    assert "channel 2 open after STOP_ALL" in format_run(hil)
    # On target, yet not a success: the exit status, the plain summary, the API and report.html
    # all read failure_reason (records.run_outcome): a valve left open fails the run.
    assert "channel 2 open after STOP_ALL (stuck)" in hil["failure_reason"]
    assert format_run(hil).startswith("result") and "FAILED" in format_run(hil).splitlines()[0]
    records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    assert [(r["kind"], r["arg"]) for r in records if r["ev"] == "fault"] == [("STUCK_OPEN", 2)]


def test_a_second_process_cannot_open_the_port_of_a_run(tmp_path):
    """While one process holds the unit's port (exclusively, as every run does), another run
    on that port gets one clear line and exit status 2."""
    with EmulatorProcess() as emu:
        holder = serial.serial_for_url(emu.port, exclusive=True, timeout=0.1)
        try:
            env = dict(os.environ, PYTHONPATH=str(ROOT))
            out = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "thruster_hil.cli",
                    "run",
                    "--port",
                    emu.port,
                    "--delta-v",
                    "0.01",
                    "--out",
                    str(tmp_path / "run"),
                ],
                capture_output=True,
                text=True,
                env=env,
                cwd=ROOT,
                timeout=120,
            )
        finally:
            holder.close()
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
    assert "in use" in out.stderr


def test_realtime_run_is_paced_by_the_wall_clock(tmp_path):
    """A short REALTIME burn through the emulator: pulses run on the unit's clock, the run takes
    about its burn time on the wall clock, and it ends on target."""
    model = build_stack_model(load_stack("progress"))
    plan = plan_burn("progress", Target("delta_v", 0.005))
    sil = run_burn(model, plan).summary
    hil, records = _hil(model, plan, tmp_path, mode="realtime")
    assert hil["completed"] and not hil["aborted"], hil.get("abort_reason")
    assert hil["wall_s"] >= 0.8 * (hil["cycles"] - 1) * model.control_period_s
    assert hil["achieved_delta_v_mps"] == pytest.approx(sil["achieved_delta_v_mps"], rel=0.05)
    assert any(r["ev"] == "fire" and r["mode"] in ("REALTIME", 1) for r in records)
    # Every cycle's start against the schedule is in the link statistics (how late, not a bound
    # on it: this machine may be busy), and the plain summary says it.
    link = hil["link"]
    assert link["cycle_starts"] == hil["cycles"]
    p50, p99, worst = (link[f"cycle_start_jitter_ms_{q}"] for q in ("p50", "p99", "max"))
    assert 0.0 <= p50 <= p99 <= worst
    assert "pacing" in format_run(hil) and f"max {worst:.2f} ms" in format_run(hil)
    # No pulse runs into the next cycle's report budget (else each cycle would start a little
    # later than the last, the drift this budget removed: 1.1 ms a cycle at 2 Hz before).
    budget = link["report_budget_ms"]
    assert budget >= 2
    longest = max(max(r["executed"]) for r in records if r["ev"] == "fire")
    assert 0 < longest <= round(model.control_period_s * 1000) - budget


def test_realtime_host_stops_when_the_link_is_cut(tmp_path):
    """REALTIME, the link cut for good at step 6: the host does not fly on in the dark (before
    the fix it flew 200 cycles on without a single report): after MAX_RETRIES + 1 silent
    cycles it stops the burn and says the link is lost; the unit's watchdog has closed every
    valve within watchdog_ms + 1 tick of the last frame it heard."""
    model = build_stack_model(load_stack("progress"))
    plan = plan_burn("progress", Target("delta_v", 0.05))
    warm_up(model, plan)
    summary, records = _hil(model, plan, tmp_path, faults="cut@step6", mode="realtime")
    assert (
        summary["aborted"]
        and "no VALVE_REPORT for 4 REALTIME cycles in a row" in summary["abort_reason"]
    )
    assert summary["cycles"] <= 5 + 4 + 1
    assert summary["valves_closed"] is not True  # nobody could confirm it
    trips = [r for r in records if r["ev"] == "watchdog_trip"]
    assert len(trips) == 1
    assert trips[0]["closed_us"] - trips[0]["last_valid_us"] <= (trips[0]["watchdog_ms"] + 1) * 1000
    assert max(r["step"] for r in records if r["ev"] == "fire") == 5


def test_another_writer_is_locked_out_and_the_burn_stops_naming_it(dragon, tmp_path):
    """REQ 13.1: a second writer on the line sends FIREs with wrong session tokens, using the
    sequence counts the host has in flight. The unit refuses them (BAD_SESSION, counted),
    executes none, and at the session_error_limit-th locks out (valves closed, SAFE, session
    void); the host stops the burn with one line naming the other writer, closes the valves
    by STOP_ALL (acknowledged) and never takes a refusal of the intruder's for its own."""
    import threading

    from thruster_hil.firmware_bridge import codec
    from thruster_hil.firmware_bridge.dictionary import LIMITS

    model, plan, _sil = dragon
    log = tmp_path / "emulator.jsonl"
    with EmulatorProcess(log_path=log, seed=3) as emu:
        unit = _open(model, emu.port, "lockstep")
        link = unit.link
        wrong = (link.session + 1) & 0xFFFFFFFF or 1
        rogue = os.open(emu.port, os.O_WRONLY | os.O_NOCTTY)
        done = threading.Event()
        sent = [0]

        def intrude():
            while not done.is_set():
                q = link.s.seq
                for s in ((q - 2) % 16384, (q - 1) % 16384):
                    os.write(
                        rogue,
                        codec.encode(
                            "FIRE",
                            s,
                            0,
                            session=wrong,
                            step=0x7FFF0000 + sent[0],
                            valid_for_ms=0,
                            bank=0,
                            mask=0xFFFF,
                            on_ticks=[100] * 16,
                        ),
                    )
                    sent[0] += 1
                done.wait(0.0005)

        t = threading.Thread(target=intrude, daemon=True)
        t.start()
        try:
            hil = run_burn(model, plan, unit=unit).summary
        finally:
            done.set()
            t.join()
            os.close(rogue)
    records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    assert hil["aborted"] and not hil["completed"]
    reason = hil["abort_reason"]
    assert "another writer on the line" in reason and "\n" not in reason, reason
    assert hil["valves_closed"] is True  # the host's STOP_ALL, acknowledged
    fires = [r for r in records if r["ev"] == "fire"]
    assert all(r["step"] < 0x7FFF0000 for r in fires), "an intruder's FIRE executed"
    assert [r for r in records if r["ev"] == "lockout"], "the unit never locked out"
    assert hil["link"]["foreign_refusals"] >= LIMITS["session_error_limit"] - 1
    counters = [r for r in records if r["ev"] == "counters"][-1]["unit"]
    assert counters["session_errors"] >= hil["link"]["foreign_refusals"]
