"""The simavr tier (issue 17): the board's own TEST_BUILD firmware, cycle by cycle under simavr.

Requirements verified here: the conformance suite passes unchanged on it (`selftest --unit
simavr`); `run --unit simavr` matches `run --unit sim` within 0.5 % of delta-v; the harness tells
the reset causes apart (power-on, external, the commanded reset, a watchdog reset of a hung
firmware) as the firmware's BOOT does; its stats file holds the timing figures in CPU cycles; its
VCD trace has the documented header and the edges of a real pulse, of the arm-enable line and of
a reset. The harness needs simavr, libsimavr-dev and avr-gcc (.ci/run installs them; with CI=true
a missing one fails these tests).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import serial
from thruster_hil.firmware_bridge import codec
from thruster_hil.firmware_bridge.codec import Decoder, Message
from thruster_hil.firmware_bridge.dictionary import DICT_HASH, ENUMS, MODE

from thruster_hil.core.errors import UserError

CAUSE = ENUMS["reset_cause"]
FAULT = ENUMS["fault"]
EVENT = ENUMS["event"]
F_CPU = 16_000_000
PS_PER_CYCLE = 62_500


def _need_simavr() -> None:
    missing = [t for t in ("make", "gcc", "avr-gcc") if shutil.which(t) is None]
    if not Path("/usr/include/simavr/sim_avr.h").exists():
        missing.append("libsimavr-dev")
    if missing and os.environ.get("CI"):
        pytest.fail(f"CI must install {', '.join(missing)} (.ci/run)")
    if missing:
        pytest.skip(
            f"{', '.join(missing)} not installed (apt-get install -y simavr libsimavr-dev "
            "libsimavrparts1 gcc-avr avr-libc gcc make)"
        )


class Port:
    """A minimal host on the unit's pty: sequence counts, a decoder, reads with deadlines."""

    def __init__(self, path: str):
        self.ser = serial.serial_for_url(path, exclusive=True, timeout=0.05)
        self.dec = Decoder()
        self.seq = 0
        self.session = 0

    def send(self, name: str, **fields) -> None:
        self.ser.write(codec.encode(name, self.seq, 0, **fields))
        self.seq += 1

    def wait_for(self, name: str, timeout: float = 5.0, **match) -> Message:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for item in self.dec.feed(self.ser.read(self.ser.in_waiting or 1)):
                if isinstance(item, Message) and item.name == name:
                    if all(item[k] == v for k, v in match.items()):
                        return item
        raise AssertionError(f"no {name} {match or ''} within {timeout} s")

    def hello(self, mode: int) -> None:
        self.send(
            "HELLO",
            proto_ver=1,
            dict_hash=DICT_HASH,
            mode=mode,
            period_ms=100,
            host_nonce=int.from_bytes(os.urandom(4), "big"),
        )
        self.session = self.wait_for("HELLO_ACK")["session"]

    def arm(self) -> None:
        self.send("ARM_REQUEST", session=self.session)
        nonce = self.wait_for("ARM_CHALLENGE")["nonce"]
        self.send("ARM_CONFIRM", session=self.session, nonce=nonce, max_on_ticks=100, next_step=1)
        assert self.wait_for("ACK", msg_id=0x11)["result"] == 0

    def close(self) -> None:
        self.ser.close()


def read_vcd(path: Path) -> tuple[str, dict[str, list[tuple[int, int]]]]:
    """The header text and, per signal name, its (time [ps], value) changes in order."""
    text = path.read_text()
    header, _, body = text.partition("$enddefinitions $end")
    names = dict(re.findall(r"\$var wire 1 (\S+) (\S+) \$end", header))
    changes: dict[str, list[tuple[int, int]]] = {n: [] for n in names.values()}
    t = None
    for line in body.split():
        if line.startswith("#"):
            t = int(line[1:])
        elif line[0] in "01" and line[1:] in names:
            changes[names[line[1:]]].append((t, int(line[0])))
    return header, changes


# ---- fast: the driver's errors --------------------------------------------------------------


def test_a_missing_harness_is_one_clear_line(monkeypatch, tmp_path):
    from thruster_hil.firmware_bridge import simavr

    monkeypatch.setattr(simavr, "HARNESS", tmp_path / "simavr_unit")
    with pytest.raises(UserError) as e:
        simavr.SimavrUnit(build=False).start()
    assert "simavr_unit" in str(e.value) and "make -C firmware_bridge/board simavr" in str(e.value)


def test_missing_libsimavr_names_the_apt_packages(monkeypatch, tmp_path):
    from thruster_hil.firmware_bridge import simavr

    monkeypatch.setattr(simavr, "SIMAVR_HEADER", tmp_path / "sim_avr.h")
    monkeypatch.setattr(simavr, "_stale", lambda target, sources: True)
    monkeypatch.setattr(simavr.shutil, "which", lambda tool: f"/usr/bin/{tool}")
    with pytest.raises(UserError) as e:
        simavr.build_simavr()
    assert "libsimavr-dev not installed" in str(e.value) and "apt-get install" in str(e.value)


# ---- slow: the harness running the firmware -------------------------------------------------


@pytest.mark.slow
def test_selftest_passes_on_simavr(capsys):
    """Acceptance: `thruster-hil selftest --unit simavr`: every conformance check passes."""
    _need_simavr()
    from thruster_hil.cli import main

    assert main(["selftest", "--unit", "simavr", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["passed"] and out["checks"]
    assert all(c["outcome"] == "passed" for c in out["checks"]), out["checks"]


@pytest.mark.slow
def test_run_unit_simavr_matches_sil(capsys, tmp_path):
    """Acceptance: `thruster-hil run --unit simavr` (lockstep, through the board firmware under
    simavr) ends within 0.5 % of the `--unit sim` delta-v. A 0.1 m/s burn of the default stack
    here; the default burn (raise perigee 1.6 km, 493 cycles) measured the same way matched to
    0.000 % (docs/bench.md section 7)."""
    _need_simavr()
    from thruster_hil.cli import main

    burn = ["run", "--stack", "dragon-boost-kit", "--delta-v", "0.1", "--json"]
    summaries = {}
    for unit in ("sim", "simavr"):
        assert main([*burn, "--unit", unit, "--out", str(tmp_path / unit)]) == 0
        summaries[unit] = json.loads(capsys.readouterr().out)
    sil, hil = summaries["sim"], summaries["simavr"]
    assert hil["completed"] and not hil["aborted"], hil.get("abort_reason")
    assert hil["unit"] == "simavr"
    assert hil["achieved_delta_v_mps"] == pytest.approx(sil["achieved_delta_v_mps"], rel=5e-3)
    assert hil["link"]["crc_errors"] == 0 and hil["link"]["unit_uart_overruns"] == 0


@pytest.mark.slow
def test_checkout_on_simavr(capsys):
    """`checkout --unit simavr`: each selected channel fires alone and executes as commanded."""
    _need_simavr()
    from thruster_hil.cli import main

    assert main(["checkout", "--unit", "simavr", "--channels", "0,31", "--yes", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["passed"], out


@pytest.mark.slow
def test_reset_causes_and_stats(tmp_path):
    """Every reset the bench can cause, as the firmware's BOOT reports it and as the harness's
    stats record it (MCUSR): power-on, the external reset pin, FAULT_INJECT RESET (a real
    watchdog reset at WDTO_15MS under simavr, reported SOFTWARE by the firmware), and a hung
    CPU that stops feeding the watchdog (WATCHDOG after 250 ms of simulated time)."""
    _need_simavr()
    from thruster_hil.firmware_bridge.simavr import SimavrUnit

    stats_path = tmp_path / "stats.json"
    with SimavrUnit(stats_path=stats_path) as unit:
        port = Port(unit.port)
        try:
            boot = port.wait_for("BOOT")
            assert boot["reset_cause"] == CAUSE["POWER_ON"] and boot["boot_count"] == 1
            # after the boot's frames (HK comes last): a reset that cuts a frame leaves the
            # next BOOT glued to its first half (no delimiter between them), as on a board
            port.wait_for("HK")
            unit.command("reset")
            boot = port.wait_for("BOOT", boot_count=2)
            assert boot["reset_cause"] == CAUSE["EXTERNAL"]
            port.hello(MODE["LOCKSTEP"])
            port.send("FAULT_INJECT", session=port.session, fault=FAULT["RESET"], arg=0)
            boot = port.wait_for("BOOT", boot_count=3)
            assert boot["reset_cause"] == CAUSE["SOFTWARE"]
            port.wait_for("HK")
            unit.command("hang")
            boot = port.wait_for("BOOT", boot_count=4)
            assert boot["reset_cause"] == CAUSE["WATCHDOG"]
            stats = unit.write_stats()
        finally:
            port.close()
    causes = [r["cause"] for r in stats["resets"]]
    assert causes == ["power_on", "external", "watchdog", "watchdog"]
    commanded, hung = stats["resets"][2]["cycle"], stats["resets"][3]["cycle"]
    (hang_at,) = stats["hangs"]
    # the hang: the watchdog's 250 ms (2048 << 4 cycles of its 128 kHz clock, 256 ms), counted
    # from the last WDR before the hang, so at most one main-loop pass earlier
    wdt_250 = (2048 << 4) * F_CPU // 128_000
    assert wdt_250 - stats["main_loop"]["pass_max_cycles"] <= hung - hang_at <= wdt_250
    assert commanded < hang_at
    assert stats["watchdog"]["period_fixes"] >= 2  # 250 -> 15 ms, and 16 -> 250 ms after it

    final = json.loads(stats_path.read_text())  # written again at quit
    assert final["cycles"] >= stats["cycles"]
    assert final["f_cpu_hz"] == F_CPU
    assert final["sim_s"] == pytest.approx(final["cycles"] / F_CPU)
    assert final["max_lag_s"] >= 0 and final["wall_s"] > 0
    irq = final["interrupts"]
    assert set(irq) == {"TIMER1_COMPA", "USART0_RX", "USART0_UDRE"}  # the firmware's ISRs
    # one tick per simulated ms, but none while the CPU hangs (256 ms) or waits for the
    # commanded reset (16 ms) with interrupts masked, nor before main starts the timer
    ticks = irq["TIMER1_COMPA"]["count"]
    assert final["sim_s"] * 1000 - 350 <= ticks <= final["sim_s"] * 1000
    for name, v in irq.items():
        assert v["count"] > 0, name
        assert 0 < v["duration_max_cycles"] < 1000, (name, v)
        assert 0 <= v["latency_max_cycles"] < 16_000, (name, v)  # under one tick
    rx = final["uart_rx"]
    assert rx["frame_cycles"] == 1360  # UBRR0 16, U2X0, 8N1: 10 bits of 136 cycles
    assert rx["bytes"] > 0 and rx["overruns"] == 0
    stack = final["stack"]
    assert stack["ramend"] == 0x21FF
    assert 0 < stack["hwm_bytes"] < stack["ramend"] - stack["end_of_data"]
    assert stack["margin_bytes"] == stack["sp_min"] + 1 - stack["end_of_data"] > 0
    loop = final["main_loop"]
    assert loop["passes"] > 1000 and 0 < loop["pass_max_cycles"] < wdt_250
    where = loop["worst_pass_functions"]  # the worst pass, function by function
    assert "main" in where and sum(where.values()) == loop["pass_max_cycles"]


@pytest.mark.slow
def test_vcd_traces_a_realtime_pulse_the_arm_line_and_a_reset(tmp_path):
    """The VCD header (timescale 1 ps, f_cpu comment, valve0..31, arm_enable, reset) and the
    edges of a 20-tick REALTIME pulse on channel 0 (its width within the firmware's documented
    bound from the reported executed ticks), of the arm-enable line (which the firmware obeys:
    ARMED -> SAFE), and of a reset marker."""
    _need_simavr()
    from thruster_hil.firmware_bridge.simavr import SimavrUnit

    vcd_path = tmp_path / "pins.vcd"
    log_path = tmp_path / "uart.log"
    with SimavrUnit(
        vcd_path=vcd_path, stats_path=tmp_path / "s.json", uart_log_path=log_path
    ) as unit:
        port = Port(unit.port)
        try:
            port.wait_for("BOOT")
            port.hello(MODE["REALTIME"])
            port.arm()
            port.send(
                "FIRE",
                session=port.session,
                step=1,
                valid_for_ms=0,
                bank=0,
                mask=1,
                on_ticks=[20] + [0] * 15,
            )
            report = port.wait_for("VALVE_REPORT", step=1)
            unit.command("arm off")  # the jumper pulled: ARMED -> SAFE after 10 ms debounce
            safe = port.wait_for("EVENT", event=EVENT["SAFE_ENTERED"])
            assert safe["arg0"] == ENUMS["safe_reason"]["ARM_DISABLED"]
            unit.command("arm on")
            port.wait_for("HK")
            unit.command("reset")
            port.wait_for("BOOT", boot_count=2)
        finally:
            port.close()
    header, changes = read_vcd(vcd_path)
    assert "$timescale 1 ps $end" in header and "$comment f_cpu_hz 16000000 $end" in header
    assert [f"valve{c}" for c in range(32)] + ["arm_enable", "reset"] == list(changes)
    assert all(ch[0] == (0, 0) for n, ch in changes.items() if n != "arm_enable")
    assert changes["arm_enable"][0] == (0, 0)  # active low: the jumper fitted pulls it to GND
    v0 = changes["valve0"]
    rises = [t for t, v in v0 if v == 1]
    falls = [t for t, v in v0 if v == 0 and t > 0]
    assert len(rises) == 1 and len(falls) >= 1 and falls[0] > rises[0]
    width_cycles = (falls[0] - rises[0]) // PS_PER_CYCLE
    executed = report["executed_ticks"][0]
    # main.c ("Pin timing"): a REALTIME pulse rises when its FIRE has been handled and the tick
    # interrupt closes it on the tick nearest rise + its ticks, so it lasts its ticks within
    # half a tick plus that interrupt's latency and run (whatever the main loop does)
    stats = json.loads((tmp_path / "s.json").read_text())
    pass_max = stats["main_loop"]["pass_max_cycles"]
    isr = stats["interrupts"]["TIMER1_COMPA"]
    tick = F_CPU // 1000
    assert executed == 20
    slack = tick // 2 + isr["latency_max_cycles"] + isr["duration_max_cycles"]
    assert abs(width_cycles - executed * tick) <= slack
    # the UART log dates the FIRE: its frame ends (0x00) before the pin rises, within two
    # main-loop passes (the pass it arrived in, the pass that takes it), then the pulse's start
    # on the first tick edge at least 200 us later (main.c, "Pin timing"), where the tick
    # interrupt raises it
    log = [line.split() for line in log_path.read_text().splitlines()]
    assert all(d in ("rx", "tx") and len(b) == 2 for _, d, b in log)
    rise_cycle = rises[0] // PS_PER_CYCLE
    fire_end = max(int(c) for c, d, b in log if d == "rx" and b == "00" and int(c) < rise_cycle)
    start_lead = F_CPU // 5000  # 200 us
    bound = (
        2 * pass_max + start_lead + tick + isr["latency_max_cycles"] + isr["duration_max_cycles"]
    )
    assert 0 < rise_cycle - fire_end <= bound
    assert rise_cycle - fire_end >= start_lead  # never before the start lead
    assert all(t % PS_PER_CYCLE == 0 for t, _ in v0)  # exact cycle stamps
    assert [v for _, v in changes["arm_enable"]] == [0, 1, 0]
    reset = changes["reset"]
    assert [v for _, v in reset] == [0, 1, 0] and reset[2][0] - reset[1][0] == PS_PER_CYCLE
    assert all(ch[-1][1] == 0 for n, ch in changes.items() if n.startswith("valve"))


@pytest.mark.slow
def test_arming_is_refused_without_the_arm_enable_jumper():
    """`--arm-enable off` (PD7 left high by its pull-up): the firmware refuses ARM_CONFIRM."""
    _need_simavr()
    from thruster_hil.firmware_bridge.simavr import SimavrUnit

    with SimavrUnit(arm_enable=False) as unit:
        port = Port(unit.port)
        try:
            port.wait_for("HK")  # past the 10 ms debounce of the input
            port.hello(MODE["LOCKSTEP"])
            port.send("ARM_REQUEST", session=port.session)
            nonce = port.wait_for("ARM_CHALLENGE")["nonce"]
            port.send(
                "ARM_CONFIRM", session=port.session, nonce=nonce, max_on_ticks=100, next_step=1
            )
            ack = port.wait_for("ACK", msg_id=0x11)
            assert ack["result"] == ENUMS["result"]["ARM_DISABLED"]
        finally:
            port.close()


@pytest.mark.slow
def test_harness_ends_with_its_stdin_and_on_sigterm(tmp_path):
    """EOF on stdin (the parent gone) and SIGTERM both end the harness cleanly: stats written,
    VCD flushed with its last time stamp."""
    _need_simavr()
    from thruster_hil.firmware_bridge.simavr import HARNESS, SIM_ELF, build_simavr

    build_simavr()
    for how in ("eof", "sigterm"):
        stats, vcd = tmp_path / f"{how}.json", tmp_path / f"{how}.vcd"
        proc = subprocess.Popen(
            [str(HARNESS), "--elf", str(SIM_ELF), "--stats", str(stats), "--vcd", str(vcd)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        try:
            line = proc.stdout.readline()
            assert line.startswith(b"pty /dev/pts/"), line
            port = Port(line.split()[1].decode())
            port.wait_for("BOOT")  # the firmware runs
            port.close()
            if how == "eof":
                proc.stdin.close()
            else:
                proc.terminate()
            assert proc.wait(timeout=30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdout.close()
            if not proc.stdin.closed:
                proc.stdin.close()
        assert json.loads(stats.read_text())["cycles"] > 0
        assert re.search(r"#\d+\s*$", vcd.read_text())
