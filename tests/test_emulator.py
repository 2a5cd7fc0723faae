"""The emulator process on a real pty, its fault spec and its JSON-lines record.

No sleep-based synchronisation: every wait is a read with a timeout on the port, or a wait on
the process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import serial
from thruster_hil.firmware_bridge import codec
from thruster_hil.firmware_bridge.codec import Decoder, Message
from thruster_hil.firmware_bridge.dictionary import (
    DICT_HASH,
    ENUMS,
    EVENT,
    FAULT,
    FLAG_ACK_REQ,
    MODE,
    RESULT,
)
from thruster_hil.firmware_bridge.emulator import EmulatorError, EmulatorProcess, start_emulator
from thruster_hil.firmware_bridge.faults import LinkFaults, corrupt_byte, parse_faults

from thruster_hil.core.errors import UserError

# Slow tier (`-m "not slow"` leaves it out): starts the emulator process on a pty.
pytestmark = pytest.mark.slow


class Port:
    """A minimal host: the port, a decoder, sequence counts, reads with deadlines."""

    def __init__(self, path: str):
        self.ser = serial.serial_for_url(path, exclusive=True, timeout=0.05)
        self.dec = Decoder()
        self.seq = 0
        self.errors: list[codec.ProtocolError] = []
        self.session = 0

    def send(self, name: str, flags: int = 0, **fields) -> None:
        self.ser.write(codec.encode(name, self.seq, flags, **fields))
        self.seq += 1

    def wait_for(self, name: str, timeout: float = 3.0, **match) -> Message:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            data = self.ser.read(self.ser.in_waiting or 1)
            for item in self.dec.feed(data):
                if isinstance(item, codec.ProtocolError):
                    self.errors.append(item)
                elif item.name == name and all(item[k] == v for k, v in match.items()):
                    return item
        raise AssertionError(f"no {name} {match or ''} within {timeout} s")

    def hello(self, mode=MODE["LOCKSTEP"], period_ms=100) -> Message:
        self.send(
            "HELLO",
            proto_ver=1,
            dict_hash=DICT_HASH,
            mode=mode,
            period_ms=period_ms,
            host_nonce=int.from_bytes(os.urandom(4), "big"),
        )
        ack = self.wait_for("HELLO_ACK")
        self.session = ack["session"]
        return ack

    def arm(self, max_on_ticks=1000) -> None:
        self.send("ARM_REQUEST", session=self.session)
        nonce = self.wait_for("ARM_CHALLENGE")["nonce"]
        self.send(
            "ARM_CONFIRM", session=self.session, nonce=nonce, max_on_ticks=max_on_ticks, next_step=1
        )
        assert self.wait_for("ACK", msg_id=0x11)["result"] == 0

    def fire(self, step: int, on: dict[int, int], **kw) -> None:
        ticks = [on.get(c, 0) for c in range(16)]
        self.send(
            "FIRE",
            session=self.session,
            step=step,
            valid_for_ms=0,
            bank=0,
            mask=sum(1 << c for c in on),
            on_ticks=ticks,
            **kw,
        )

    def close(self) -> None:
        self.ser.close()


def read_log(path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@pytest.fixture
def emu(tmp_path):
    with EmulatorProcess(log_path=tmp_path / "emu.jsonl", seed=5) as e:
        yield e


def test_boot_hello_ping(emu):
    port = Port(emu.port)
    try:
        boot = port.wait_for("BOOT")
        assert boot["dict_hash"] == DICT_HASH and boot["boot_count"] == 1
        assert boot["n_channels"] == 32 and boot.flags & 4
        ack = port.hello()
        assert ack["result"] == 0 and ack["session"] != 0 and ack["tick_us"] == 1000
        port.send("PING", nonce=0xABCD, t1_host_us=42)
        pong = port.wait_for("PONG")
        assert pong["nonce"] == 0xABCD and pong["t1_host_us"] == 42
        assert pong["t3_pu_us"] >= pong["t2_pu_us"] > boot.seq
    finally:
        port.close()


def test_exclusive_lock(emu):
    port = Port(emu.port)
    try:
        with pytest.raises(serial.SerialException):
            serial.serial_for_url(emu.port, exclusive=True, timeout=0.1)
        port.wait_for("BOOT")  # the first owner is undisturbed
    finally:
        port.close()


def wait_log(path, ev: str, timeout: float = 3.0) -> dict:
    """Wait (reading the log with a deadline) for a record of kind ``ev``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for r in read_log(path):
            if r["ev"] == ev:
                return r
        time.sleep(0.005)
    raise AssertionError(f"no {ev} record in {path} within {timeout} s")


def test_reconnect_resets_like_a_mega(emu, tmp_path):
    port = Port(emu.port)
    port.wait_for("BOOT")
    port.hello()
    port.close()
    # A reopen faster than the emulator's loop notices the hang-up is not a reconnect: wait
    # until it has seen the port close, as a USB re-plug would take.
    wait_log(tmp_path / "emu.jsonl", "disconnect")
    port = Port(emu.port)
    try:
        boot = port.wait_for("BOOT")
        assert boot["boot_count"] == 2
        assert boot["reset_cause"] == ENUMS["reset_cause"]["EXTERNAL"]
        assert port.hello()["result"] == 0
    finally:
        port.close()


def _firing_a_long_pulse(emu) -> Port:
    """A host on the emulator's port, armed in REALTIME, with a 1.5 s pulse on channel 0 in
    progress (a PING round trip proves the FIRE before it was processed)."""
    port = Port(emu.port)
    port.wait_for("BOOT")
    port.hello(mode=MODE["REALTIME"], period_ms=2000)
    port.arm(max_on_ticks=2000)
    port.fire(1, {0: 1500})
    port.send("PING", nonce=1, t1_host_us=0)
    port.wait_for("PONG")
    return port


def test_sigterm_exits_cleanly_and_closes_valves(tmp_path):
    log = tmp_path / "emu.jsonl"
    emu = start_emulator(log_path=log, extra_args=["--mode-hint", "realtime"])
    try:
        port = _firing_a_long_pulse(emu)
        assert emu.stop() == 0
        port.close()
    finally:
        emu.close()
    records = read_log(log)
    assert records[0]["ev"] == "start" and records[-1]["ev"] == "stop"
    fires = [r for r in records if r["ev"] == "fire"]
    assert len(fires) == 1 and fires[0]["aborted"] and fires[0]["executed"][0] < 1500
    assert [r for r in records if r["ev"] == "state"][-1]["to"] == "SAFE"


def test_emulator_exits_when_the_process_that_started_it_is_gone(tmp_path):
    """The lifeline pipe: when its write end closes (the starting process died, even by
    SIGKILL, which no handler sees) the emulator closes the valves and exits 0 by itself."""
    log = tmp_path / "emu.jsonl"
    emu = start_emulator(log_path=log)
    try:
        port = _firing_a_long_pulse(emu)
        emu._cut_lifeline()  # what the kernel does to the write end when the parent dies
        assert emu.proc.wait(timeout=10) == 0  # no signal was sent
        port.close()
    finally:
        emu.close()
    records = read_log(log)
    assert records[-1]["ev"] == "stop" and records[-1]["reason"] == "parent exited"
    assert records[-1]["signal"] is None
    fires = [r for r in records if r["ev"] == "fire"]
    assert len(fires) == 1 and fires[0]["aborted"]
    assert [r for r in records if r["ev"] == "state"][-1]["to"] == "SAFE"


def test_watchdog_and_no_double_fire_on_the_emulator_clock(emu, tmp_path):
    port = Port(emu.port)
    try:
        port.wait_for("BOOT")
        port.hello(mode=MODE["LOCKSTEP"], period_ms=100)
        port.arm()
        for step in (1, 2, 2, 3):  # step 2 resent: answered, never fired again
            port.fire(step, {0: 20, 1: 3})
            rep = port.wait_for("VALVE_REPORT", step=step)
        assert rep["executed_ticks"][:2] == (20, 5)
        port.send("HEARTBEAT", FLAG_ACK_REQ, session=port.session, host_step=3)
        port.wait_for("ACK", msg_id=0x02)
        # Now the host goes quiet: the unit's watchdog must trip.
        trip = port.wait_for("EVENT", event=3)
        assert 250 <= trip["arg0"] <= 251
    finally:
        port.close()
    assert emu.stop() == 0
    records = read_log(tmp_path / "emu.jsonl")
    fires = [(r["session"], r["step"], r["bank"]) for r in records if r["ev"] == "fire"]
    assert fires == [(fires[0][0], k, 0) for k in (1, 2, 3)]
    (trip_rec,) = [r for r in records if r["ev"] == "watchdog_trip"]
    assert trip_rec["closed_us"] - trip_rec["last_valid_us"] <= (250 + 1) * 1000
    counters = [r for r in records if r["ev"] == "counters"][-1]
    assert counters["unit"]["duplicate_fires"] == 1


def test_link_corruptions_are_all_counted(tmp_path):
    log = tmp_path / "emu.jsonl"
    with start_emulator(faults="corrupt.tx=0.3,drop.rx=0.2,seed=11", log_path=log) as emu:
        port = Port(emu.port)
        port.wait_for("HK")  # BOOT itself may be corrupted; HK (every 100 ms) follows it
        pongs = 0
        for i in range(1, 31):
            port.send("PING", nonce=i, t1_host_us=i)
            try:
                port.wait_for("PONG", timeout=0.1, nonce=i)
                pongs += 1
            except AssertionError:
                pass
        port.send(
            "FAULT_INJECT",
            FLAG_ACK_REQ,
            session=port.session,
            fault=FAULT["TANK_PRESSURE"],
            arg=1234,
        )
        for _ in range(20):  # until the ACK gets through uncorrupted, un-dropped
            try:
                port.wait_for("ACK", timeout=0.1, msg_id=0x7F)
                break
            except AssertionError:
                port.send(
                    "FAULT_INJECT",
                    FLAG_ACK_REQ,
                    session=port.session,
                    fault=FAULT["TANK_PRESSURE"],
                    arg=1234,
                )
        emu.stop()
        host_errors = len(port.errors)
        port.close()
    counters = [r for r in read_log(log) if r["ev"] == "counters"][-1]
    link = counters["link"]
    assert link["tx"]["corrupted"] > 0 and link["rx"]["dropped"] > 0
    assert 0 < pongs < 30
    # Every corrupted frame the host received was seen as a bad frame (frames the unit sent
    # after the host stopped reading are not in the host's count).
    assert host_errors <= link["tx"]["corrupted"]
    assert host_errors >= link["tx"]["corrupted"] - 3
    assert counters["unit"]["rx_frames"] == link["rx"]["frames"] - link["rx"]["dropped"]


def test_scheduled_reset_fault(tmp_path):
    with start_emulator(faults="reset@fire+50ms", log_path=tmp_path / "e.jsonl") as emu:
        port = Port(emu.port)
        try:
            port.wait_for("BOOT")
            port.hello()
            port.arm()
            port.fire(1, {0: 10})
            port.wait_for("VALVE_REPORT")
            boot = port.wait_for("BOOT", timeout=2.0)
            assert boot["boot_count"] == 2
            assert boot["reset_cause"] == ENUMS["reset_cause"]["SOFTWARE"]
        finally:
            port.close()


def test_link_path(tmp_path):
    link = tmp_path / "port"
    proc = subprocess.Popen(
        [sys.executable, "-m", "thruster_hil.firmware_bridge.emulator", "--link-path", str(link)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 10
        while not link.exists() and time.monotonic() < deadline:
            assert proc.poll() is None
            time.sleep(0.01)  # polling for a file: no other way to wait for it
        path = link.read_text().strip()
        assert os.path.exists(path)
        port = Port(path)
        port.wait_for("BOOT")
        port.close()
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=5)
    assert proc.returncode == 0 and out == b""


# ----------------------------------------------------------------------------- --faults


@pytest.mark.parametrize(
    "spec",
    [
        "drop=2",
        "nonsense=1",
        "delay=0.1",
        "stall=5@2s",
        "stall=5s@2",
        "fail=40@1s",
        "reset",
        "drop.up=0.1",
        "seed=x",
        "pressure=abc@1s",
        "drop=0.1,drop=0.2",
        ",",
    ],
)
def test_bad_fault_spec_is_one_line_and_exit_2(spec):
    proc = subprocess.run(
        [sys.executable, "-m", "thruster_hil.firmware_bridge.emulator", "--faults", spec],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "--faults" in lines[0], proc.stderr
    assert proc.stdout == ""
    with pytest.raises(UserError) as exc:
        parse_faults(spec)
    assert "\n" not in str(exc.value) and str(exc.value).startswith("--faults")


def test_emulator_process_reports_a_dead_start():
    with pytest.raises(EmulatorError, match="status 2.*--faults"):
        EmulatorProcess(faults="drop=7").start()


def test_fault_spec_grammar():
    spec = parse_faults(
        "drop=0.01, corrupt=0.02,duplicate=0.005,delay.tx=0.1:30ms,"
        "stall=5s@2s,reset@fire+40s,fail=3@10s,stuck=5@12s,"
        "pressure=1500kPa@20s,clear=3@1.5s,seed=7"
    )
    assert spec.rates["rx"]["drop"] == spec.rates["tx"]["drop"] == 0.01
    assert spec.rates["tx"]["delay"] == 0.1 and spec.rates["rx"]["delay"] == 0
    assert spec.delay_us["tx"] == 30_000 and spec.seed == 7
    sched = [(f.kind, f.arg, f.at_us, f.after_fire) for f in spec.schedule]
    assert sched == [
        (FAULT["CLEAR"], 3, 1_500_000, False),
        (FAULT["STALL_MS"], 5000, 2_000_000, False),
        (FAULT["FAIL_OFF"], 3, 10_000_000, False),
        (FAULT["STUCK_OPEN"], 5, 12_000_000, False),
        (FAULT["TANK_PRESSURE"], 1500, 20_000_000, False),
        (FAULT["RESET"], 0, 40_000_000, True),
    ]
    assert not parse_faults("").link_active and not parse_faults(None).schedule


def test_link_faults_count_everything_and_are_seeded():
    frame = codec.encode("PING", 1, nonce=1, t1_host_us=2)
    runs = []
    for _ in range(2):
        lf = LinkFaults("drop=0.2,corrupt=0.2,duplicate=0.2,delay=0.2:5ms,seed=3")
        out = [lf.process("rx", frame, 0) for _ in range(500)]
        runs.append(out)
        c = lf.counts["rx"]
        assert c["frames"] == 500
        assert sum(len(o) for o in out) == 500 - c["dropped"] + c["duplicated"]
        assert sum(1 for o in out for _, f in o[:1] if f != frame) == c["corrupted"]
        assert sum(1 for o in out for t, _ in o[:1] if t == 5000) == c["delayed"]
        for o in out:
            for _, f in o:
                if f != frame:
                    res = Decoder().feed(f)
                    assert len(res) == 1 and isinstance(res[0], codec.ProtocolError)
    assert runs[0] == runs[1]


def test_scheduled_faults_fire_once_at_their_time():
    lf = LinkFaults("stall=250ms@1s,reset@fire+2s")
    assert lf.next_unit_fault_us(None) == 1_000_000
    assert lf.due_unit_faults(999_999, None) == []
    assert lf.due_unit_faults(1_000_000, None) == [(FAULT["STALL_MS"], 250)]
    assert lf.due_unit_faults(5_000_000, None) == []  # no FIRE yet
    assert lf.next_unit_fault_us(3_000_000) == 5_000_000
    assert lf.due_unit_faults(5_000_000, 3_000_000) == [(FAULT["RESET"], 0)]
    assert lf.next_unit_fault_us(3_000_000) is None and len(lf.applied) == 2


def test_corrupt_byte_never_makes_a_delimiter():
    import random

    rng = random.Random(0)
    frame = codec.encode("PING", 1, nonce=0, t1_host_us=0)
    for _ in range(2000):
        bad = corrupt_byte(frame, rng)
        assert bad != frame and bad.count(b"\x00") == 1 and bad.endswith(b"\x00")


# ---- issue 13: the seed fixes faults, never the session ---------------------------------------


def _capture_and_fire(port: Port, steps: range) -> bytes:
    """HELLO, ARM, FIREs; returns the FIRE frames as sent (a capture of the line)."""
    port.wait_for("BOOT")
    port.hello()
    port.arm()
    sent = b""
    for step in steps:
        frame = codec.encode(
            "FIRE",
            0x2000 + step,
            0,
            session=port.session,
            step=step,
            valid_for_ms=0,
            bank=0,
            mask=1,
            on_ticks=[20] + [0] * 15,
        )
        port.ser.write(frame)
        sent += frame
        port.wait_for("VALVE_REPORT", step=step)
    return sent


def test_same_seed_emulators_give_different_tokens_and_a_replay_executes_nothing(tmp_path):
    """REQ 13.2: two emulators with the same --seed (as the campaign runs them) hand out
    different tokens, and FIREs captured from the first, replayed into the second while its
    host is at step 7, execute nothing there (the issue's step 85 among them)."""
    logs = [tmp_path / "a.jsonl", tmp_path / "b.jsonl"]
    with EmulatorProcess(log_path=logs[0], seed=7) as a:
        port = Port(a.port)
        try:
            capture = _capture_and_fire(port, range(1, 86))
            token_a = port.session
        finally:
            port.close()
    with EmulatorProcess(log_path=logs[1], seed=7) as b:
        port = Port(b.port)
        try:
            _capture_and_fire(port, range(1, 8))
            assert port.session != token_a
            port.ser.write(capture)
            # 85 wrong tokens: the 8th locks the unit out, and the host is told
            port.wait_for("EVENT", event=EVENT["LOCKOUT"])
            port.fire(8, {0: 20})
            assert port.wait_for("ACK", msg_id=0x20)["result"] == RESULT["BAD_SESSION"]
        finally:
            port.close()
    records = read_log(logs[1])
    fires = [r for r in records if r["ev"] == "fire"]
    assert [r["step"] for r in fires] == list(range(1, 8))
    assert {r["session"] for r in fires} == {fires[0]["session"]} != {token_a}
    assert [r for r in records if r["ev"] == "lockout"]


def test_fault_inject_without_the_session_is_refused_by_the_emulator(emu):
    """REQ 13.3 on the emulator process: a FAULT_INJECT before any HELLO and one with a
    wrong token are refused (BAD_SESSION) and stick nothing open, across the next reset."""
    port = Port(emu.port)
    try:
        port.wait_for("BOOT")
        port.send("FAULT_INJECT", FLAG_ACK_REQ, session=0, fault=FAULT["STUCK_OPEN"], arg=0)
        assert port.wait_for("ACK", msg_id=0x7F)["result"] == 2
        port.hello()
        port.send(
            "FAULT_INJECT",
            FLAG_ACK_REQ,
            session=port.session ^ 0xFFFF,
            fault=FAULT["STUCK_OPEN"],
            arg=0,
        )
        assert port.wait_for("ACK", msg_id=0x7F)["result"] == 2
        hk = port.wait_for("HK")
        assert hk["stuck_mask"] == 0 and hk["open_mask"] == 0
    finally:
        port.close()
    port = Port(emu.port)  # reopening resets the unit (EXTERNAL): still nothing stuck
    try:
        assert port.wait_for("HK")["stuck_mask"] == 0
    finally:
        port.close()
