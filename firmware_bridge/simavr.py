"""The board firmware under simavr: the bench board's own build, cycle by cycle, on a pty.

::

    with SimavrUnit(vcd_path="pins.vcd", stats_path="stats.json") as s:  # builds if needed
        run_all(s.port)            # s.port is /dev/pts/N, like the emulator's and QEMU's
        figures = s.stats()        # ISR latencies, main-loop time, stack high-water mark

The harness (firmware_bridge/board/simavr_unit.c, ``make -C firmware_bridge/board simavr``) runs
firmware-sim.elf, built with exactly the flags of a board flashed with ``make TEST_BUILD=1``, as an
ATmega2560 at 16 MHz under libsimavr: USART0 on a pty, the valve pins and the arm-enable line
traced to a VCD file, the arm-enable input driven, resets and timing figures counted in CPU
cycles. Its simulated time never runs ahead of the wall clock (see the harness's header and
docs/bench.md "simavr tier"). Opening the pty does not reset the firmware: hosts send HELLO.

The harness reads commands on its stdin (``arm on|off``, ``reset``, ``hang``, ``stats``,
``quit``) and ends when its stdin closes, so it never outlives the process that started it.
"""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from thruster_hil.core.errors import UserError

BOARD_DIR = Path(__file__).resolve().parent / "board"
SIM_ELF = BOARD_DIR / "firmware-sim.elf"
HARNESS = BOARD_DIR / "simavr_unit"
SIMAVR_HEADER = Path("/usr/include/simavr/sim_avr.h")
INSTALL_HINT = (
    "install simavr libsimavr-dev libsimavrparts1 gcc-avr avr-libc gcc make "
    "(apt-get install -y ...)"
)
_PTY_RE = re.compile(rb"^pty (/dev/pts/\d+)$", re.MULTILINE)
_STATS_RE = re.compile(rb"^stats written$", re.MULTILINE)
_FIRMWARE_C = ("main.c", "unit.c", "proto.c")  # the Makefile's FW_SRC


def _stale(target: Path, sources: list[Path]) -> bool:
    if not target.exists():
        return True
    built = target.stat().st_mtime
    return any(p.stat().st_mtime > built for p in sources)


def _sources() -> tuple[list[Path], list[Path]]:
    """(the firmware's sources, the harness's sources), as the Makefile builds each."""
    makefile = BOARD_DIR / "Makefile"
    headers = sorted(BOARD_DIR.glob("*.h"))
    firmware = [BOARD_DIR / n for n in _FIRMWARE_C] + headers + [makefile]
    return firmware, [BOARD_DIR / "simavr_unit.c", BOARD_DIR / "pins.h", makefile]


def build_simavr(force: bool = False) -> tuple[Path, Path]:
    """``make -C firmware_bridge/board simavr`` when the harness or firmware-sim.elf is missing
    or older than a source; returns (harness, ELF)."""
    firmware, harness = _sources()
    if not force and not _stale(SIM_ELF, firmware) and not _stale(HARNESS, harness):
        return HARNESS, SIM_ELF
    for tool in ("make", "avr-gcc", "gcc"):
        if shutil.which(tool) is None:
            raise UserError("simavr", f"{tool} not found: {INSTALL_HINT}")
    if not SIMAVR_HEADER.exists():
        raise UserError("simavr", f"libsimavr-dev not installed ({SIMAVR_HEADER}): {INSTALL_HINT}")
    proc = subprocess.run(["make", "-C", str(BOARD_DIR), "simavr"], capture_output=True, text=True)
    if proc.returncode != 0:
        tail = " | ".join((proc.stdout + proc.stderr).strip().splitlines()[-5:])
        raise UserError("simavr", f"building the simavr harness failed: {tail}")
    return HARNESS, SIM_ELF


class SimavrUnit:
    """simavr_unit running the firmware with its USART0 on a pty.

    ``port`` is the pty path once started; ``stop()`` (or leaving the ``with`` block) sends
    ``quit``, waits for the harness to write its stats and VCD, and kills it if it does not end
    within the timeout. ``elf`` runs another ELF (e.g. the release firmware.elf) instead of
    firmware-sim.elf; ``arm_enable`` is the arm-enable jumper at start (True: fitted);
    ``uart_log_path`` logs every byte on USART0 with its cycle ("<cycle> rx|tx <hex>");
    ``pass_log_path`` logs every long main-loop pass with its costliest functions.
    """

    def __init__(
        self,
        elf: str | os.PathLike | None = None,
        build: bool = True,
        boot_timeout_s: float = 10.0,
        vcd_path: str | os.PathLike | None = None,
        stats_path: str | os.PathLike | None = None,
        arm_enable: bool = True,
        uart_log_path: str | os.PathLike | None = None,
        pass_log_path: str | os.PathLike | None = None,
    ):
        self.elf = Path(elf) if elf is not None else SIM_ELF
        self.build = build
        self.boot_timeout_s = boot_timeout_s
        self.vcd_path = Path(vcd_path) if vcd_path is not None else None
        self.stats_path = Path(stats_path) if stats_path is not None else None
        self.arm_enable = arm_enable
        self.uart_log_path = Path(uart_log_path) if uart_log_path is not None else None
        self.pass_log_path = Path(pass_log_path) if pass_log_path is not None else None
        self.port: str | None = None
        self._proc: subprocess.Popen | None = None
        self._err = None
        self._out = b""

    def start(self) -> SimavrUnit:
        if self.build:
            build_simavr()
        elif not HARNESS.exists():
            raise UserError(
                "simavr", f"{HARNESS} not found: run make -C firmware_bridge/board simavr"
            )
        if not self.elf.exists():
            raise UserError(
                "simavr", f"firmware {self.elf} not found: run make -C firmware_bridge/board simavr"
            )
        cmd = [str(HARNESS), "--elf", str(self.elf)]
        cmd += ["--arm-enable", "on" if self.arm_enable else "off"]
        if self.vcd_path is not None:
            cmd += ["--vcd", str(self.vcd_path)]
        if self.stats_path is not None:
            cmd += ["--stats", str(self.stats_path)]
        if self.uart_log_path is not None:
            cmd += ["--uart-log", str(self.uart_log_path)]
        if self.pass_log_path is not None:
            cmd += ["--pass-log", str(self.pass_log_path)]
        self._err = tempfile.TemporaryFile()  # never a pipe: a full one would stall the harness
        self._proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._err
        )
        self._out = b""
        m = self._wait_output(_PTY_RE, self.boot_timeout_s)
        if m:
            self.port = m.group(1).decode()
            self._out = self._out[m.end() :]
            return self
        self._proc.kill()
        self._proc.wait()
        self._err.seek(0)
        text = (self._out + self._err.read()).decode(errors="replace")
        text = text.strip().replace("\n", " | ")
        self._close_pipes()
        self._proc = None
        raise UserError(
            "simavr",
            f"simavr_unit did not announce its pty within {self.boot_timeout_s} s: "
            f"{text or 'no output'}",
        )

    def _wait_output(self, pattern: re.Pattern, timeout: float) -> re.Match | None:
        """Read the harness's stdout (unbuffered) until ``pattern`` matches or ``timeout``."""
        fd = self._proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while True:
            m = pattern.search(self._out)
            if m:
                return m
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 4096)
                if not chunk:
                    return None
                self._out += chunk

    def command(self, line: str) -> None:
        """Send one control line (``arm on``, ``arm off``, ``reset``, ``hang``)."""
        if self._proc is None or self._proc.stdin is None:
            raise RuntimeError("the simavr unit is not running")
        self._proc.stdin.write(line.encode() + b"\n")
        self._proc.stdin.flush()

    def write_stats(self, timeout: float = 10.0) -> dict:
        """Have the running harness write its stats file (and flush its VCD) now; return it."""
        self.command("stats")
        m = self._wait_output(_STATS_RE, timeout)
        if m:
            self._out = self._out[m.end() :]
            return self.stats()
        raise UserError("simavr", f"simavr_unit wrote no stats within {timeout} s")

    def stats(self) -> dict:
        """The stats file as the harness last wrote it (at ``stats`` or at exit)."""
        if self.stats_path is None:
            raise UserError("simavr", "no stats_path was given to SimavrUnit")
        return json.loads(self.stats_path.read_text())

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self, timeout: float = 5.0) -> None:
        proc, self._proc = self._proc, None
        self.port = None
        if proc is None:
            return
        if proc.poll() is None:
            try:
                proc.stdin.write(b"quit\n")
                proc.stdin.close()
            except (BrokenPipeError, OSError):
                pass
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        self._proc = proc
        self._close_pipes()
        self._proc = None

    def _close_pipes(self) -> None:
        for f in (self._proc.stdin, self._proc.stdout, self._err):
            if f is not None and not f.closed:
                try:
                    f.close()
                except OSError:
                    pass

    def __enter__(self) -> SimavrUnit:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
