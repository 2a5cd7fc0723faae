"""Issue 16, deliverable 4: the bench actuator checkout (``thruster-hil checkout``).

Every channel fired alone and reported, a declined prompt that fires nothing, a stuck or failed
valve refused unless excluded, a channel out of range, a mismatch that sets the exit status, and
every exit closing the valves by command (also SIGTERM). Judged on the unit's own record: the
emulator's JSON-lines log (its FIREs, its state changes and their reasons), and under QEMU the
unit's housekeeping (its last executed step) and events. No sleep-based synchronisation: the
tests poll files another process writes and read pipes with ``select``, with generous overall
deadlines on progress, never a bound on how fast anything runs.
"""

from __future__ import annotations

import io
import json
import os
import pty
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from thruster_hil.firmware_bridge.emulator import EmulatorProcess

from thruster_hil.campaign import _read_jsonl
from thruster_hil.checkout import MAX_CHANNELS, channel_list, format_channels
from thruster_hil.cli import main
from thruster_hil.stopsignals import as_from_a_terminal

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONPATH=str(ROOT))
PROGRESS_TIMEOUT_S = 120.0  # on progress (a prompt appearing, a file growing), never on speed
ON_MS = 20


class _Terminal(io.StringIO):
    """stdin as an operator's terminal that answers ``text``."""

    def isatty(self) -> bool:
        return True


def _checkout(capsys, *argv: str) -> tuple[int, dict | None, str]:
    """``thruster-hil checkout ARGV --json`` in this process: status, the JSON object (None if
    nothing was printed) and stderr."""
    status = main(["checkout", *argv, "--json"])
    out = capsys.readouterr()
    return status, (json.loads(out.out) if out.out.strip() else None), out.err


def _fires(log: list[dict]) -> list[dict]:
    return [r for r in log if r["ev"] == "fire"]


def _pulses(log: list[dict]) -> list[tuple[int, int]]:
    """(channel, executed ticks) of every valve the unit opened, in order."""
    return [(16 * r["bank"] + c, t) for r in _fires(log) for c, t in enumerate(r["executed"]) if t]


def _armed(log: list[dict]) -> bool:
    return any(r["ev"] == "state" and r["to"] in ("ARMING", "ARMED") for r in log)


def _went(log: list[dict], state: str) -> bool:
    return any(r["ev"] == "state" and r["to"] == state for r in log)


def _closed_by_command_after_the_last_fire(log: list[dict]) -> bool:
    t_last = max((r["t_us"] for r in _fires(log)), default=0)
    return any(
        r["ev"] == "state"
        and r["from"] == "ARMED"
        and r["to"] == "SAFE"
        and r["reason"] == "COMMANDED"
        and r["t_us"] >= t_last
        for r in log
    )


def _one_line_error(status: int, err: str, *words: str) -> None:
    assert status == 2, err
    assert err.startswith("thruster-hil: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for w in words:
        assert w in err, err


# ---- the channel list ---------------------------------------------------------------------


def test_a_channel_list_reads_singles_and_ranges_in_the_order_given():
    assert channel_list("0") == (0,)
    assert channel_list("3,0-2, 8-9") == (3, 0, 1, 2, 8, 9)
    assert channel_list(f"0-{MAX_CHANNELS - 1}") == tuple(range(MAX_CHANNELS))


@pytest.mark.parametrize(
    "text, words",
    [
        ("32", "channel 32 out of range"),
        ("0-40", "channel 40 out of range"),
        ("-1", "expected channels like"),
        ("5-3", "runs backwards"),
        ("1,1", "channel 1 given twice"),
        ("0-3,2", "channel 2 given twice"),
        ("a", "expected channels like"),
        ("1_0", "expected channels like"),
        ("", "expected channels like"),
        ("1,", "expected channels like"),
    ],
)
def test_a_bad_channel_list_is_one_line_and_exit_2(text, words, capsys):
    status = main(["checkout", "--port", "/nonexistent/port", "--channels", text, "--yes"])
    _one_line_error(status, capsys.readouterr().err, "--channels", words)


@given(st.sets(st.integers(0, MAX_CHANNELS - 1), min_size=1))
def test_the_suggested_channel_list_reads_back_as_the_same_channels(channels):
    assert channel_list(format_channels(channels)) == tuple(sorted(channels))


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--on-ms", "0"], ("--on-ms", "1..10000")),
        (["--on-ms", "10001"], ("--on-ms", "1..10000")),
        (["--port", "/dev/null", "--unit", "qemu"], ("--port or --unit",)),
    ],
)
def test_bad_checkout_options_are_one_line_and_exit_2(argv, words, capsys):
    status = main(["checkout", *argv, "--yes"])
    _one_line_error(status, capsys.readouterr().err, *words)


# ---- against the emulator -----------------------------------------------------------------


@pytest.mark.slow
def test_every_channel_is_fired_once_alone_and_reported(tmp_path, capsys):
    log_path = tmp_path / "unit.jsonl"
    with EmulatorProcess(log_path=log_path) as emu:
        status, out, err = _checkout(capsys, "--port", emu.port, "--on-ms", str(ON_MS), "--yes")
    assert status == 0, (err, out)
    assert out["passed"] and out["armed"] and not out["mismatched"]
    assert [r["channel"] for r in out["results"]] == list(range(32))
    for r in out["results"]:
        assert r["ok"] and r["executed_ms"] == ON_MS == r["commanded_ms"], r
        assert r["others"] == {}
    assert out["identity"]["n_channels"] == 32 and out["identity"]["test_build"]
    assert out["identity"]["reset_cause"] == ["POWER_ON"]  # the first open boots the emulator
    assert out["health"]["state"] == "SAFE" and out["health"]["stuck"] == []
    assert out["stop_all"] == {
        "acknowledged": True,
        "open_channels": [],
        "state": "SAFE",
        "last_step": 32,
    }
    # The unit's own record: each channel opened exactly once, alone, for the on-time; REALTIME
    # (the pins move); and STOP_ALL, not the watchdog, closed it after the last pulse.
    log = _read_jsonl(log_path)
    assert _pulses(log) == [(ch, ON_MS) for ch in range(32)]
    assert {r["mode"] for r in _fires(log)} == {"REALTIME"}
    assert _closed_by_command_after_the_last_fire(log)
    assert not [r for r in log if r["ev"] == "watchdog_trip"]


@pytest.mark.slow
def test_the_text_report_shows_identity_health_each_channel_and_the_stop(tmp_path, capsys):
    with EmulatorProcess(log_path=tmp_path / "unit.jsonl") as emu:
        status = main(
            ["checkout", "--port", emu.port, "--channels", "7,2", "--on-ms", "30", "--yes"]
        )
    text = capsys.readouterr().out
    assert status == 0, text
    for words in (
        "firmware    0x",
        "boot        count 1, reset cause POWER_ON",
        "TEST build",
        "state       SAFE; tank",
        "stuck open: none",
        "channel  7  commanded    30 ms  executed    30 ms  ok",
        "channel  2  commanded    30 ms  executed    30 ms  ok",
        "STOP_ALL acknowledged; every valve closed",
        "checkout PASSED: 2 of 2 channel(s)",
    ):
        assert words in text, text
    assert text.index("channel  7") < text.index("channel  2")  # in the order given


@pytest.mark.slow
@pytest.mark.parametrize("answer", ["n\n", "\n", "yes please\n", ""])
def test_a_declined_prompt_arms_nothing_and_fires_nothing(tmp_path, capsys, monkeypatch, answer):
    log_path = tmp_path / "unit.jsonl"
    monkeypatch.setattr(sys, "stdin", _Terminal(answer))
    with EmulatorProcess(log_path=log_path) as emu:
        status, out, err = _checkout(capsys, "--port", emu.port)
    assert status == 1
    assert "[y/N]" in err and "ARM the unit" in err
    assert out["declined"] and not out["armed"] and out["results"] == [] and not out["passed"]
    assert out["stop_all"]["acknowledged"] and out["stop_all"]["last_step"] == 0
    log = _read_jsonl(log_path)
    assert any(r["ev"] == "connect" for r in log)  # it did talk to the unit
    assert _fires(log) == [] and not _armed(log)


def _read_until(fd: int, marker: bytes, proc: subprocess.Popen) -> bytes:
    """Read a pty master until ``marker`` shows (or the process ends); bounded on progress."""
    seen = b""
    deadline = time.monotonic() + PROGRESS_TIMEOUT_S
    while marker not in seen:
        assert time.monotonic() < deadline, (
            f"no {marker!r} within {PROGRESS_TIMEOUT_S:g} s: {seen!r}"
        )
        if select.select([fd], [], [], 0.5)[0]:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: the process closed the terminal
                break
            if not chunk:
                break
            seen += chunk
        elif proc.poll() is not None:
            break
    return seen


@pytest.mark.slow
@pytest.mark.parametrize("answer", ["n", "ctrl-c"])
def test_an_operator_who_answers_no_on_a_real_terminal_fires_nothing(tmp_path, answer):
    """The prompt on a pseudo-terminal, as an operator sees it: answered 'n' (exit 1) or
    Ctrl-C (exit 130, one line), and the unit's log shows it was never armed and fired
    nothing."""
    log_path = tmp_path / "unit.jsonl"
    with EmulatorProcess(log_path=log_path) as emu:
        master, slave = pty.openpty()
        proc = subprocess.Popen(
            [sys.executable, "-m", "thruster_hil.cli", "checkout", "--port", emu.port],
            stdin=slave,
            stderr=slave,
            stdout=subprocess.PIPE,
            cwd=ROOT,
            env=ENV,
            text=True,
            preexec_fn=as_from_a_terminal,
        )
        os.close(slave)
        try:
            prompt = _read_until(master, b"[y/N]", proc)
            assert b"[y/N]" in prompt, prompt
            if answer == "n":
                os.write(master, b"n\n")
            else:  # (the child is not in the terminal's foreground group: signal it directly)
                proc.send_signal(signal.SIGINT)
            rest = _read_until(master, b"\x00never", proc)  # until the process closes it
            stdout, _ = proc.communicate(timeout=PROGRESS_TIMEOUT_S)
        finally:
            os.close(master)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    if answer == "n":
        assert proc.returncode == 1
        assert "checkout DECLINED: nothing fired" in stdout
    else:
        assert proc.returncode == 130
        assert rest.decode().strip().endswith("thruster-hil: interrupted"), rest
    assert b"Traceback" not in rest
    log = _read_jsonl(log_path)
    assert _fires(log) == [] and not _armed(log)


@pytest.mark.slow
def test_without_a_terminal_or_yes_it_refuses_before_touching_the_unit(
    tmp_path, capsys, monkeypatch
):
    log_path = tmp_path / "unit.jsonl"
    monkeypatch.setattr(sys, "stdin", io.StringIO("y\n"))  # piped: not an operator
    with EmulatorProcess(log_path=log_path) as emu:
        status = main(["checkout", "--port", emu.port])
    _one_line_error(status, capsys.readouterr().err, "stdin is not a terminal", "--yes")
    assert not any(r["ev"] == "connect" for r in _read_jsonl(log_path))


@pytest.mark.slow
@pytest.mark.parametrize("fault, kind", [("stuck", "stuck open"), ("fail", "failed off")])
def test_a_stuck_or_failed_valve_is_refused_unless_excluded(tmp_path, capsys, fault, kind):
    log_path = tmp_path / "unit.jsonl"
    with EmulatorProcess(faults=f"{fault}=3@0s", channels=8, log_path=log_path) as emu:
        status, out, _err = _checkout(capsys, "--port", emu.port, "--on-ms", str(ON_MS), "--yes")
        assert status == 1
        assert out["refused"].startswith(f"channel 3 {kind}")
        assert "--channels 0-2,4-7" in out["refused"]  # what to run instead
        assert not out["armed"] and out["results"] == []
        assert _fires(_read_jsonl(log_path)) == [] and not _armed(_read_jsonl(log_path))

        # The operator excludes the channel: the others are checked out.
        status, out, err = _checkout(
            capsys, "--port", emu.port, "--channels", "0-2,4-7", "--on-ms", str(ON_MS), "--yes"
        )
    assert status == 0, (err, out)
    assert [r["channel"] for r in out["results"]] == [0, 1, 2, 4, 5, 6, 7]
    assert all(r["ok"] for r in out["results"])
    # STOP_ALL cannot close a stuck valve: the unit says so, and it was known and excluded.
    assert out["stop_all"]["open_channels"] == ([3] if fault == "stuck" else [])
    log = _read_jsonl(log_path)
    opened = {ch for ch, _t in _pulses(log)}
    assert opened == ({0, 1, 2, 3, 4, 5, 6, 7} if fault == "stuck" else {0, 1, 2, 4, 5, 6, 7})
    assert sorted(ch for ch, t in _pulses(log) if ch != 3) == [0, 1, 2, 4, 5, 6, 7]


@pytest.mark.slow
def test_a_channel_the_unit_does_not_have_is_one_line_and_exit_2(tmp_path, capsys):
    log_path = tmp_path / "unit.jsonl"
    with EmulatorProcess(channels=8, log_path=log_path) as emu:
        status = main(["checkout", "--port", emu.port, "--channels", "0,9", "--yes"])
    _one_line_error(status, capsys.readouterr().err, "--channels", "channel 9 out of range", "8")
    log = _read_jsonl(log_path)
    assert _fires(log) == [] and not _armed(log)


@pytest.mark.slow
def test_an_on_time_below_the_units_minimum_is_one_line_and_exit_2(tmp_path, capsys):
    with EmulatorProcess(log_path=tmp_path / "unit.jsonl") as emu:
        status = main(["checkout", "--port", emu.port, "--on-ms", "3", "--yes"])
    _one_line_error(status, capsys.readouterr().err, "--on-ms", "minimum on-time 5 ms")


@pytest.mark.slow
def test_a_valve_that_fails_mid_checkout_is_a_mismatch_and_exit_1(tmp_path, capsys):
    """Channel 2 fails off just before its FIRE (step 3) reaches the unit: the unit reports
    0 ms executed, the checkout flags it, goes on with the rest and exits 1."""
    log_path = tmp_path / "unit.jsonl"
    with EmulatorProcess(faults="fail=2@step3", channels=8, log_path=log_path) as emu:
        status, out, err = _checkout(
            capsys, "--port", emu.port, "--channels", "0-3", "--on-ms", str(ON_MS), "--yes"
        )
    assert status == 1, err
    assert out["mismatched"] == [2] and not out["passed"]
    bad = out["results"][2]
    assert bad["executed_ms"] == 0 and f"executed 0 ticks, commanded {ON_MS}" in bad["problems"]
    assert "reported failed off" in bad["problems"]
    assert [r["ok"] for r in out["results"]] == [True, True, False, True]
    assert out["stop_all"]["acknowledged"] and out["stop_all"]["open_channels"] == []
    assert _closed_by_command_after_the_last_fire(_read_jsonl(log_path))


@pytest.mark.slow
def test_sigterm_mid_checkout_closes_the_valves_by_command(tmp_path):
    """SIGTERM once the unit is ARMED (its first 5 s pulse about to run or running):
    STOP_ALL (the unit's log: ARMED -> SAFE COMMANDED, no watchdog trip), one line, exit 143."""
    log_path = tmp_path / "unit.jsonl"
    with EmulatorProcess(log_path=log_path) as emu:
        proc = subprocess.Popen(
            [sys.executable, "-m", "thruster_hil.cli", "checkout", "--port", emu.port]
            + ["--channels", "0-3", "--on-ms", "5000", "--yes"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=ENV,
            preexec_fn=as_from_a_terminal,
        )
        try:
            deadline = time.monotonic() + PROGRESS_TIMEOUT_S
            while not _went(_read_jsonl(log_path), "ARMED") and proc.poll() is None:
                assert time.monotonic() < deadline, "the checkout never armed the unit"
                time.sleep(0.01)  # polling a file another process writes
            assert proc.poll() is None, proc.communicate()
            proc.send_signal(signal.SIGTERM)
            stdout, stderr = proc.communicate(timeout=PROGRESS_TIMEOUT_S)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        deadline = time.monotonic() + 10.0
        while not _closed_by_command_after_the_last_fire(_read_jsonl(log_path)):
            assert time.monotonic() < deadline, "no STOP_ALL in the unit's log"
            time.sleep(0.01)
    assert proc.returncode == 143, stderr
    assert stderr == "thruster-hil: interrupted by SIGTERM\n"
    assert "STOP_ALL acknowledged" in stdout
    log = _read_jsonl(log_path)
    assert not [r for r in log if r["ev"] == "watchdog_trip"]
    assert len(_pulses(log)) <= 1  # at most the pulse that was running, cut short


# ---- against the board firmware under QEMU ------------------------------------------------


def _need_qemu() -> None:
    missing = [t for t in ("make", "avr-gcc", "qemu-system-avr") if shutil.which(t) is None]
    if missing and os.environ.get("CI") == "true":
        pytest.fail(f"CI must install {', '.join(missing)} (.ci/run)")
    if missing:
        pytest.skip(
            f"{', '.join(missing)} not installed (apt-get install -y make gcc-avr avr-libc "
            "qemu-system-misc)"
        )


@pytest.mark.slow
def test_checkout_starts_qemu_itself_with_unit_qemu(capsys):
    """(Before the module's QEMU starts: one QEMU at a time.)"""
    _need_qemu()
    status, out, err = _checkout(capsys, "--unit", "qemu", "--channels", "0,31", "--yes")
    assert status == 0, (err, out)
    assert out["unit"] == "qemu" and [r["channel"] for r in out["results"]] == [0, 31]


@pytest.fixture(scope="module")
def qemu_port():
    _need_qemu()
    from thruster_hil.firmware_bridge.qemu import QemuUnit

    with QemuUnit() as q:
        yield q.port


@pytest.mark.slow
def test_checkout_passes_against_the_firmware_under_qemu(qemu_port, capsys):
    status, out, err = _checkout(capsys, "--port", qemu_port, "--on-ms", str(ON_MS), "--yes")
    assert status == 0, (err, out)
    n = out["identity"]["n_channels"]
    assert [r["channel"] for r in out["results"]] == list(range(n))
    assert all(r["ok"] and r["executed_ms"] == ON_MS for r in out["results"])
    # The unit's own record: its housekeeping after STOP_ALL, and the events it sent.
    assert out["stop_all"] == {
        "acknowledged": True,
        "open_channels": [],
        "state": "SAFE",
        "last_step": n,
    }
    assert "ARMED" in out["unit_events"]


@pytest.mark.slow
def test_a_declined_prompt_under_qemu_fires_nothing(qemu_port, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", _Terminal("n\n"))
    status, out, _err = _checkout(capsys, "--port", qemu_port)
    assert status == 1 and out["declined"] and out["results"] == []
    assert out["stop_all"]["last_step"] == 0 and out["stop_all"]["state"] == "SAFE"
    assert "ARMED" not in out["unit_events"]


@pytest.mark.slow
def test_the_readme_checkout_command_passes(capsys):
    """README's example (it starts the emulator itself) does what the README says."""
    import re
    import shlex

    text = (ROOT / "README.md").read_text()
    line = next(
        ln
        for block in re.findall(r"```sh\n(.*?)```", text, flags=re.S)
        for ln in block.splitlines()
        if ln.startswith("thruster-hil checkout")
    )
    status, out, err = _checkout(capsys, *shlex.split(line)[2:])
    assert status == 0, (err, out)
    assert out["unit"] == "emulator" and out["passed"]
