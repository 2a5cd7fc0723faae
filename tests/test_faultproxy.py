"""The fault proxy in front of a unit, and faults due at a control step.

A lockstep burn flies thousands of cycles a second: ``@stepK`` is the only way to put a fault
mid-burn there. These tests show the proxy is transparent without faults (the whole conformance
suite passes through it), that a step-triggered fault applies before that step's FIRE reaches the
unit (through the proxy and in the emulator itself), and that a cut loses everything both ways
while the proxy still logs what the unit says.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from thruster_hil.firmware_bridge import codec
from thruster_hil.firmware_bridge.conformance import run_all
from thruster_hil.firmware_bridge.dictionary import FAULT
from thruster_hil.firmware_bridge.emulator import EmulatorProcess
from thruster_hil.firmware_bridge.faultproxy import FaultProxyProcess, ProxyError, describe
from thruster_hil.firmware_bridge.faults import CUT, LinkFaults, parse_faults

from thruster_hil.closedloop.fused import warm_up
from thruster_hil.closedloop.hil import open_unit
from thruster_hil.closedloop.runner import run_burn
from thruster_hil.config import build_stack_model, load_stack
from thruster_hil.core.errors import UserError
from thruster_hil.plan import Target, plan_burn

# Slow tier (`-m "not slow"` leaves it out): starts the emulator and the fault proxy as processes.
pytestmark = pytest.mark.slow

STACK = "dragon-boost-kit"


def _read(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def dragon():
    model = build_stack_model(load_stack(STACK))
    plan = plan_burn(STACK, Target("delta_v", 0.1))
    warm_up(model, plan)
    return model, plan


def _fly(model, plan, port):
    unit = open_unit(
        unit="emulator",
        port=port,
        mode="lockstep",
        n_thrusters=len(model.thruster_names),
        period_ms=int(round(model.control_period_s * 1000)),
    )
    return run_burn(model, plan, unit=unit).summary


# ----------------------------------------------------------------------------- grammar


def test_step_and_cut_grammar():
    spec = parse_faults("cut@step40, fail=3@step7, cut=250ms@fire+1s, reset@step9")
    sched = [(f.kind, f.arg, f.at_step, f.after_fire, f.at_us) for f in spec.schedule]
    assert sched == [
        (CUT, 250, None, True, 1_000_000),
        (FAULT["FAIL_OFF"], 3, 7, False, 0),
        (FAULT["RESET"], 0, 9, False, 0),
        (CUT, 0, 40, False, 0),
    ]
    assert spec.link_active and spec.by_step
    assert not parse_faults("fail=3@2s").by_step and not parse_faults("fail=3@2s").link_active


@pytest.mark.parametrize(
    "bad",
    [
        "cut",
        "cut=@step4",
        "cut=0ms@step3",
        "cut@stepx",
        "reset@step-1",
        "fail=3@step",
        "cut@step99999999999",
    ],
)
def test_bad_step_or_cut_items_are_one_line(bad):
    with pytest.raises(UserError) as exc:
        parse_faults(bad)
    assert str(exc.value).startswith("--faults") and "\n" not in str(exc.value)


def test_a_step_fault_waits_for_that_step_and_a_cut_loses_both_ways():
    lf = LinkFaults("fail=2@step5,cut=10ms@step6")
    fire = {
        k: codec.encode(
            "FIRE", k, 0, session=1, step=k, valid_for_ms=0, bank=0, mask=1, on_ticks=[1] + [0] * 15
        )
        for k in (4, 5, 6)
    }
    lf.note_rx(fire[4])
    assert lf.due_unit_faults(0, None) == []
    lf.note_rx(codec.encode("PING", 9, 0, nonce=1, t1_host_us=0))  # not a FIRE: no step
    assert lf.step == 4
    lf.note_rx(fire[5])
    assert lf.due_unit_faults(100, None) == [(FAULT["FAIL_OFF"], 2)]
    assert lf.process("rx", fire[5], 100) == [(100, fire[5])]
    lf.note_rx(fire[6])
    assert lf.due_unit_faults(200, None) == []  # the cut is the link's, not the unit's
    assert lf.process("rx", fire[6], 200) == [] and lf.process("tx", b"\x01\x00", 9_000) == []
    assert lf.counts["rx"]["cut"] == 1 and lf.counts["tx"]["cut"] == 1
    assert lf.process("tx", b"\x01\x00", 10_200) == [(10_200, b"\x01\x00")]  # 10 ms later
    assert [a["step"] for a in lf.applied] == [5, 6]


def test_describe_names_undecodable_bytes():
    frame = codec.encode("PING", 3, 0, nonce=7, t1_host_us=11)
    assert describe(frame) == {"msg": "PING", "seq": 3, "flags": 0, "nonce": 7, "t1_host_us": 11}
    assert describe(frame[:3] + bytes([frame[3] ^ 0x40]) + frame[4:])["msg"].startswith("!")
    assert describe(b"\x00") == {"msg": "!empty"}


# ----------------------------------------------------------------------------- proxy


@pytest.mark.conformance
def test_the_conformance_suite_passes_through_a_proxy_without_faults(tmp_path):
    log = tmp_path / "wire.jsonl"
    with EmulatorProcess() as emu, FaultProxyProcess(emu.port, None, log) as proxy:
        results = run_all(proxy.port)
    failed = [(r.check, r.detail) for r in results if r.outcome == "failed"]
    assert not failed and len(results) >= 10
    records = _read(log)
    assert records[0]["ev"] == "start" and records[-1]["ev"] == "stop"
    frames = [r for r in records if "dir" in r]
    # Without faults everything is passed on; only what the unit says between two checks,
    # while no host has the port open, is lost (as it would be on a direct line).
    assert {r["act"] for r in frames} <= {"fwd", "nohost"}
    assert all(r["act"] == "fwd" for r in frames if r["dir"] == "h2u")
    assert any(r["msg"] == "FIRE" for r in frames) and any(
        r["msg"] == "VALVE_REPORT" for r in frames
    )


def test_a_proxy_on_a_port_that_does_not_exist_is_one_line(tmp_path):
    with pytest.raises(ProxyError, match=r"status 2.*--upstream: cannot open /nonexistent"):
        FaultProxyProcess("/nonexistent/tty", None).start()
    with pytest.raises(ProxyError, match=r"status 2.*--faults"):
        FaultProxyProcess("/dev/null", "cut@soon").start()


def test_a_fault_at_a_step_through_the_proxy_applies_before_that_fire(dragon, tmp_path):
    """fail=0@step20 through the proxy: the unit executes nothing on channel 0 from FIRE 20 on
    (and did before), its log has the FAULT_INJECT from the wire before FIRE 20, the host hears
    of it (reallocation) and the burn still ends."""
    model, plan = dragon
    unit_log, wire_log = tmp_path / "unit.jsonl", tmp_path / "wire.jsonl"
    with (
        EmulatorProcess(log_path=unit_log) as emu,
        FaultProxyProcess(emu.port, "fail=0@step20", wire_log) as proxy,
    ):
        summary = _fly(model, plan, proxy.port)
    assert summary["completed"] and not summary["aborted"], summary["abort_reason"]
    assert [r["thruster"] for r in summary["reallocations"]] == [model.thruster_names[0]]
    unit = _read(unit_log)
    fault_at = next(i for i, r in enumerate(unit) if r["ev"] == "fault")
    assert unit[fault_at]["kind"] == "FAIL_OFF" and unit[fault_at]["source"] == "wire"
    fires = [(i, r) for i, r in enumerate(unit) if r["ev"] == "fire" and r["bank"] == 0]
    assert all(i > fault_at for i, r in fires if r["step"] >= 20)
    assert all(i < fault_at for i, r in fires if r["step"] < 20)
    assert any(r["executed"][0] > 0 for _, r in fires if r["step"] < 20)
    assert all(r["executed"][0] == 0 for _, r in fires if r["step"] >= 20)
    wire = _read(wire_log)
    injected = [r for r in wire if r.get("act") == "inject"]
    assert len(injected) == 1 and injected[0]["msg"] == "FAULT_INJECT"
    assert any(r["ev"] == "fault" and r["step"] == 20 for r in wire if "ev" in r)


def test_a_cut_at_a_step_in_the_emulator_and_through_the_proxy(dragon, tmp_path):
    """cut@step30, in the emulator itself and in a proxy in front of a clean emulator: FIRE 30
    never reaches the unit, nothing of step 30 or later executes, the host reports the lost link
    and stops, the unit's watchdog closes every valve within watchdog_ms + 1 tick of the last
    frame it heard, and the proxy still logs the unit's side after the cut."""
    model, plan = dragon
    for where in ("emulator", "proxy"):
        unit_log, wire_log = tmp_path / f"{where}-unit.jsonl", tmp_path / f"{where}-wire.jsonl"
        emu_faults = "cut@step30" if where == "emulator" else None
        with EmulatorProcess(faults=emu_faults, log_path=unit_log) as emu:
            if where == "proxy":
                with FaultProxyProcess(emu.port, "cut@step30", wire_log) as proxy:
                    summary = _fly(model, plan, proxy.port)
                    _wait_trip(unit_log)
            else:
                summary = _fly(model, plan, emu.port)
                _wait_trip(unit_log)
        assert summary["aborted"] and "no reply to FIRE step 30" in summary["abort_reason"]
        assert summary["cycles"] == 29
        unit = _read(unit_log)
        assert max(r["step"] for r in unit if r["ev"] == "fire") == 29, where
        trip = next(r for r in unit if r["ev"] == "watchdog_trip")
        assert trip["closed_us"] - trip["last_valid_us"] <= (trip["watchdog_ms"] + 1) * 1000
        if where == "proxy":
            wire = _read(wire_log)
            cut = [r for r in wire if r.get("act") == "cut"]
            assert cut and cut[0]["msg"] == "FIRE" and cut[0]["step"] == 30
            assert any(r.get("msg") == "EVENT" and r["event"] == 3 for r in cut), (
                "the unit's WATCHDOG_TRIP event is in the proxy's log"
            )


def _wait_trip(log, timeout_s: float = 5.0) -> None:
    """Until the unit's log records its watchdog trip (the log is flushed per line)."""
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if '"watchdog_trip"' in log.read_text():
            return
        time.sleep(0.02)
    raise AssertionError(f"no watchdog_trip in {log} within {timeout_s} s")


@settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(step=st.integers(min_value=2, max_value=100))
def test_a_link_lost_at_any_step_closes_every_valve_within_the_watchdog(dragon, tmp_path, step):
    """Property (issue 7 acceptance): wherever in the burn the link is lost, the emulator's
    valves are all closed within watchdog_ms + 1 tick of the last frame it heard, no step
    executes twice, and nothing of the lost step or later executes."""
    model, plan = dragon
    log = tmp_path / f"unit-{step}.jsonl"
    with EmulatorProcess(faults=f"cut@step{step}", log_path=log) as emu:
        summary = _fly(model, plan, emu.port)
        _wait_trip(log)
    assert summary["aborted"] and f"no reply to FIRE step {step}" in summary["abort_reason"]
    unit = _read(log)
    trips = [r for r in unit if r["ev"] == "watchdog_trip"]
    assert len(trips) == 1
    assert trips[0]["closed_us"] - trips[0]["last_valid_us"] <= (trips[0]["watchdog_ms"] + 1) * 1000
    fired = [(r["step"], r["bank"]) for r in unit if r["ev"] == "fire"]
    assert len(fired) == len(set(fired)) and max(s for s, _b in fired) == step - 1


def test_a_unit_that_does_not_read_never_stalls_the_proxy():
    """The proxy writes to the unit without blocking: a unit that takes its bytes slowly (QEMU
    on a loaded machine reads its UART a byte at a time) or not at all must not hold up the
    unit's reports to the host. Here the unit's pty is never read while the host sends 256 KiB,
    far more than a pty buffers; the unit's report still reaches the host at once, and what the
    unit has not taken waits in the proxy, not in a blocked write. (Before, the write blocked
    for ever here: the alarm turns that into a failure instead of a hang.)"""
    import os
    import signal

    import serial
    from thruster_hil.firmware_bridge.emulator import open_raw_pty
    from thruster_hil.firmware_bridge.faultproxy import FaultProxy

    unit_master, unit_path = open_raw_pty()
    up = serial.serial_for_url(unit_path, timeout=0, exclusive=True)
    proxy = FaultProxy(up, LinkFaults(parse_faults(None), 32))
    proxy.open_pty()
    host = os.open(proxy.path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    proxy._check_host(proxy.now())
    fire = codec.encode(
        "FIRE", 1, 0, session=1, step=1, valid_for_ms=500, bank=0, mask=1, on_ticks=[5] + [0] * 15
    )

    def blocked(signum, frame):
        raise AssertionError("the proxy blocked writing to a unit that does not read")

    old = signal.signal(signal.SIGALRM, blocked)
    signal.alarm(60)
    try:
        proxy._on_host_bytes(fire * (256 * 1024 // len(fire)), proxy.now())
        assert proxy._to_unit  # the rest waits in the proxy: the unit has not read
        report = codec.encode("PONG", 7, 0, nonce=3, t1_host_us=1, t2_pu_us=2, t3_pu_us=3)
        os.write(unit_master, report)
        data = os.read(up.fileno(), 4096)
        proxy._on_unit_bytes(data, proxy.now())
        assert os.read(host, 4096) == report
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
        os.close(host)
        up.close()
        os.close(unit_master)


def test_a_report_held_past_the_hosts_exit_is_one_execution_not_two():
    """A VALVE_REPORT held by a delay fault and released after the host has closed its port is
    the same frame as its "delay" record. It was logged once more as a fresh frame from the unit
    (act "nohost"), so the campaign counted the step twice: CI's loaded Q07 failed on "1 double
    fire" for the last held report of a completed burn (delay, then nohost, both for step 109
    bank 1). Now the release is a "late" record marked nohost, and the judge sees one execution.
    On a fake clock: the times are passed in."""
    import io

    from thruster_hil.firmware_bridge.faultproxy import FaultProxy

    from thruster_hil.campaign import Row, _qemu_evidence, judge_fires

    class Upstream:
        def fileno(self) -> int:
            return -1

    log = io.StringIO()
    proxy = FaultProxy(Upstream(), LinkFaults(parse_faults("delay.tx=1:60ms"), 32), log=log)
    proxy.connected = True
    report = codec.encode(
        "VALVE_REPORT",
        7,
        0,
        **{
            f.name: 0
            for f in codec.MESSAGES["VALVE_REPORT"].fields
            if f.name not in ("step", "bank", "executed_ticks")
        },
        step=109,
        bank=1,
        executed_ticks=[3] + [0] * 15,
    )
    proxy._on_unit_bytes(report, 1_000)
    proxy.connected = False  # the host finished and closed its port
    proxy._release_delayed(61_000)
    wire = [json.loads(line) for line in log.getvalue().splitlines()]
    assert [(r["act"], r.get("nohost", False)) for r in wire] == [("delay", False), ("late", True)]
    assert proxy.counts["nohost"] == 1
    row = Row(id="Q99", unit="qemu", fault="x", expect="complete", expected="x", onset="end")
    ev = _qemu_evidence(wire, row)
    assert [(e[2], e[3]) for e in ev.executed] == [(109, 1)]
    assert judge_fires(ev, row)[0] == 0


def test_line_rate_paces_the_bytes_to_the_unit_like_a_serial_line(monkeypatch):
    """--line-rate: the proxy carries bytes to the unit no faster than the baud rate allows (8N1,
    a tenth of it per second) and in bursts of at most LINE_BURST_BYTES, as a board's serial
    line does; QEMU's UART has none, and a burst overflowed the firmware's receive ring (then
    128 bytes).
    On a fake clock: nothing more goes out until time has passed, then what that time carries."""
    import os

    import serial
    from thruster_hil.firmware_bridge import faultproxy as fp
    from thruster_hil.firmware_bridge.emulator import open_raw_pty

    now = [100.0]
    monkeypatch.setattr(fp.time, "monotonic", lambda: now[0])
    unit_master, unit_path = open_raw_pty()
    up = serial.serial_for_url(unit_path, timeout=0, exclusive=True)
    try:
        proxy = fp.FaultProxy(up, LinkFaults(parse_faults(None), 32), line_rate_Bps=11_520.0)
        proxy._send_unit(b"\x01" * 1000)

        def arrived() -> int:
            try:
                return len(os.read(unit_master, 4096))
            except BlockingIOError:
                return 0

        os.set_blocking(unit_master, False)
        assert arrived() == fp.LINE_BURST_BYTES  # the first burst only
        proxy._flush_unit()
        assert arrived() == 0 and proxy._line_wait_s() > 0  # no time, no bytes
        now[0] += 10 / 11_520  # the time of 10 bytes on the line
        proxy._flush_unit()
        assert arrived() == 10
        now[0] += 1.0  # a long pause carries one burst, not a second's worth
        proxy._flush_unit()
        assert arrived() == fp.LINE_BURST_BYTES
        assert len(proxy._to_unit) == 1000 - 2 * fp.LINE_BURST_BYTES - 10
    finally:
        up.close()
        os.close(unit_master)


def test_the_log_never_holds_up_the_forwarding_and_keeps_every_line_in_order():
    """The proxy's log is written by a thread of its own: while the file's write is stuck (a
    disk the kernel's writeback has not caught up with, on a loaded machine), the forwarding
    loop's writes return at once; every line reaches the file, in order, by close()."""
    import io
    import threading

    from thruster_hil.firmware_bridge.faultproxy import LineWriter

    release = threading.Event()
    entered = threading.Event()

    class StuckFile(io.StringIO):
        def write(self, text):
            entered.set()
            release.wait()
            return super().write(text)

        def close(self):
            self.final = self.getvalue()
            super().close()

    f = StuckFile()
    log = LineWriter(f)
    log.write("line 0\n")
    assert entered.wait(60)  # the writer thread is now inside the stuck write
    for i in range(1, 1000):
        log.write(f"line {i}\n")  # none of these waits for the stuck file
    release.set()
    log.close()
    assert f.final == "".join(f"line {i}\n" for i in range(1000))
