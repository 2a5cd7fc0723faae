"""The board firmware under qemu-system-avr: a propulsion unit on a pseudo-terminal.

::

    with QemuUnit() as q:          # builds firmware_bridge/board/firmware-qemu.elf if needed
        run_all(q.port)            # q.port is /dev/pts/N, like the emulator's

QEMU's mega2560 machine models the USART and the 16-bit timers, which is all the firmware needs
for protocol conformance (no GPIO, no ADC, no watchdog, no persistent EEPROM: see the notes in
firmware_bridge/board/main.c). Its clock is not faithful, so nothing timed to the millisecond is
asserted against it (../shared/research/hil_link_anchors.md section 4.4). Opening the pty does
not reset the firmware (unlike a real Mega): hosts send HELLO, which starts a fresh session.

QemuUnit keeps its own descriptor on the pty's slave side open (write-only, never read) for
QEMU's whole life. Without it, every time a client closes the port QEMU's pty backend sees a
hang-up, marks the port disconnected and re-polls it only once a second (qemu 7.2
chardev/char-pty.c): the first command after each reopen then waits up to 1 s, longer than a
host's 0.5 s HELLO retry. With the slave held open QEMU never sees a hang-up and answers in
milliseconds. The cost: what the firmware sends while no client reads stays in the tty buffer
(4 KB, about 6 s of housekeeping) for the next client, and once that buffer is full QEMU waits
for a reader (the firmware's clock stalls with it).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

from thruster_hil.firmware_bridge.priority import UNIT_FIFO, raise_priority

from thruster_hil.core.errors import UserError

BOARD_DIR = Path(__file__).resolve().parent / "board"
QEMU_ELF = BOARD_DIR / "firmware-qemu.elf"
INSTALL_HINT = "install qemu-system-misc gcc-avr avr-libc (apt-get install -y ...)"
_PTY_RE = re.compile(rb"char device redirected to (/dev/pts/\d+)")
_SOURCES = ("*.c", "*.h", "Makefile")


def _stale(elf: Path) -> bool:
    if not elf.exists():
        return True
    built = elf.stat().st_mtime
    return any(p.stat().st_mtime > built for pat in _SOURCES for p in BOARD_DIR.glob(pat))


def build_qemu_firmware(force: bool = False) -> Path:
    """``make -C firmware_bridge/board qemu`` when the ELF is missing or older than a source."""
    if not force and not _stale(QEMU_ELF):
        return QEMU_ELF
    for tool in ("make", "avr-gcc"):
        if shutil.which(tool) is None:
            raise UserError("qemu", f"{tool} not found: {INSTALL_HINT}")
    proc = subprocess.run(["make", "-C", str(BOARD_DIR), "qemu"], capture_output=True, text=True)
    if proc.returncode != 0:
        tail = " | ".join((proc.stdout + proc.stderr).strip().splitlines()[-5:])
        raise UserError("qemu", f"building the QEMU firmware failed: {tail}")
    return QEMU_ELF


class QemuUnit:
    """qemu-system-avr running the firmware with its USART0 on a pty.

    ``port`` is the pty path once started; ``stop()`` (or leaving the ``with`` block) kills QEMU
    and its pty disappears. ``boot_timeout_s`` bounds the wait for QEMU to announce its pty.
    """

    def __init__(
        self,
        elf: str | os.PathLike | None = None,
        build: bool = True,
        boot_timeout_s: float = 10.0,
        qemu: str = "qemu-system-avr",
    ):
        self.elf = Path(elf) if elf is not None else QEMU_ELF
        self.build = build and elf is None
        self.boot_timeout_s = boot_timeout_s
        self.qemu = qemu
        self.port: str | None = None
        self._proc: subprocess.Popen | None = None
        self._hold_fd: int | None = None
        self.priority: str | None = None  # what QEMU's I/O thread got (priority.py)

    def start(self) -> QemuUnit:
        exe = shutil.which(self.qemu)
        if exe is None:
            raise UserError("qemu", f"{self.qemu} not found: {INSTALL_HINT}")
        if self.build:
            build_qemu_firmware()
        if not self.elf.exists():
            raise UserError(
                "qemu", f"firmware {self.elf} not found: run make -C firmware_bridge/board qemu"
            )
        cmd = [
            exe,
            "-machine",
            "mega2560",
            "-bios",
            str(self.elf),
            "-serial",
            "pty",
            "-nographic",
            "-monitor",
            "none",
        ]
        # QEMU must not outlive the process that started it, even one killed with SIGKILL:
        # util-linux's setpriv sets the parent-death signal (prctl PR_SET_PDEATHSIG) and execs
        # QEMU, which then gets SIGTERM when its parent dies (the emulator has its lifeline
        # pipe instead). Without setpriv, stop() is the only way QEMU ends.
        setpriv = shutil.which("setpriv")
        if setpriv is not None:
            cmd = [setpriv, "--pdeathsig", "TERM", *cmd]
        self._proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + self.boot_timeout_s
        banner = b""
        os.set_blocking(self._proc.stdout.fileno(), False)
        while time.monotonic() < deadline:
            chunk = self._proc.stdout.read() or b""
            banner += chunk
            m = _PTY_RE.search(banner)
            if m:
                port = m.group(1).decode()
                while not os.path.exists(port) and time.monotonic() < deadline:
                    time.sleep(0.01)
                if os.path.exists(port):
                    self._hold_fd = os.open(port, os.O_WRONLY | os.O_NOCTTY | os.O_NONBLOCK)
                    self.port = port
                    # QEMU's main thread is its I/O loop: it hands the USART each received
                    # byte and runs the timers that raise the firmware's tick interrupt. It
                    # sleeps between events, so it takes little CPU at a raised priority; the
                    # vCPU thread, which spins, keeps its normal priority.
                    self.priority = raise_priority(
                        UNIT_FIFO, pid=self._proc.pid, main_thread_only=True
                    )
                    return self
            if self._proc.poll() is not None:
                break
            time.sleep(0.02)
        out = banner.decode(errors="replace").strip().replace("\n", " | ")
        self.stop()
        raise UserError(
            "qemu",
            f"qemu-system-avr did not announce its pty within "
            f"{self.boot_timeout_s} s: {out or 'no output'}",
        )

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self, timeout: float = 5.0) -> None:
        proc, self._proc = self._proc, None
        self.port = None
        if self._hold_fd is not None:
            os.close(self._hold_fd)
            self._hold_fd = None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        if proc.stdout is not None:
            proc.stdout.close()

    def __enter__(self) -> QemuUnit:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
