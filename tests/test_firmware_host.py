"""The board firmware's C code on the host: generated headers, parser vs the Python codec, the
state machine, the AVR build, libFuzzer, and the conformance suite under qemu-system-avr.

Tool-dependent tests skip with the reason when a tool is missing (gcc/make for the host build,
avr-gcc for the firmware, clang's libFuzzer for the fuzzer, qemu-system-avr for QEMU); CI installs
them all (apt: gcc make gcc-avr avr-libc binutils-avr clang qemu-system-misc).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cobs import cobs
from thruster_hil.firmware_bridge import codec
from thruster_hil.firmware_bridge.codec import Decoder, Message, ProtocolError
from thruster_hil.firmware_bridge.dictionary import DICT_HASH

ROOT = Path(__file__).resolve().parent.parent
BOARD = ROOT / "firmware_bridge" / "board"
GOLDEN = ROOT / "firmware_bridge" / "golden_vectors.json"
sys.path.insert(0, str(ROOT / "tools"))

import gen_c_header  # noqa: E402

# Slow tier (`-m "not slow"` leaves it out): builds the firmware, runs libFuzzer and QEMU.
pytestmark = pytest.mark.slow


def _need(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing and os.environ.get("CI"):
        pytest.fail(f"CI must install {', '.join(missing)} (.ci/run)")
    if missing:
        pytest.skip(
            f"{', '.join(missing)} not installed (apt-get install -y gcc make gcc-avr "
            f"avr-libc binutils-avr clang qemu-system-misc)"
        )


def _make(*targets: str, timeout: float = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        ["make", "-C", str(BOARD), *targets], capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, f"make {' '.join(targets)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


# ---- generated headers ----------------------------------------------------------------------


def test_dictionary_header_matches_messages_toml():
    assert (BOARD / "dictionary.h").read_text() == gen_c_header.render_dictionary(), (
        "dictionary.h is stale: run python tools/gen_c_header.py"
    )
    assert f"#define DICT_HASH 0x{DICT_HASH:08X}UL" in (BOARD / "dictionary.h").read_text()


def test_pins_header_matches_rig_toml():
    assert (BOARD / "pins.h").read_text() == gen_c_header.render_pins(), (
        "pins.h is stale: run python tools/gen_c_header.py"
    )


def test_rig_pin_map_is_complete():
    rig = gen_c_header._load_rig()
    valves = rig["valves"]["map"]
    assert len(valves) == 32 and {v["port"] for v in valves} == {"A", "C", "L", "K"}
    assert rig["arm_enable"] == {
        "port": "D",
        "bit": 7,
        "arduino_pin": 38,
        "active_low": True,
        "pull_up": True,
    }


# ---- host build: parser vs the Python codec -------------------------------------------------


@pytest.fixture(scope="module")
def host_vectors():
    _need("make", "gcc")
    _make("host")
    return BOARD / "host_vectors"


def _python_result(item: Message | ProtocolError, packet: bytes | None) -> str:
    if isinstance(item, ProtocolError):
        return f"err:{item.kind}"
    return f"ok:{item.spec.id}:{item.seq}:{item.flags}:{packet[8:-2].hex()}"


def _expected(wire: bytes) -> tuple[str, str]:
    """What the codec makes of one line: whole frame (without the last 0x00) and byte stream."""
    frame = wire[:-1] if wire.endswith(b"\x00") else wire
    try:
        msg = codec.decode_frame(frame)
        whole = _python_result(msg, cobs.decode(frame))
    except ProtocolError as err:
        whole = f"err:{err.kind}"
    results = []
    for item in Decoder().feed(wire):
        packet = None
        if isinstance(item, Message):
            # the packet of this message: re-encode (the codec round-trips exactly)
            packet = codec.encode_packet(item.name, item.seq, item.flags, **item.fields)
        results.append(_python_result(item, packet))
    return whole, " ".join(results) or "none"


def _vectors() -> list[tuple[str, bytes]]:
    g = json.loads(GOLDEN.read_text())
    out = [(v["id"], bytes.fromhex(v["wire"])) for v in g["good"] + g["bad"]]
    rng = random.Random(20240601)
    goods = [bytes.fromhex(v["wire"]) for v in g["good"]]
    # Mutations of good frames: byte flips, truncations, insertions, concatenations.
    for i in range(600):
        w = bytearray(rng.choice(goods))
        op = i % 4
        if op == 0:
            k = rng.randrange(len(w) - 1)
            w[k] ^= 1 << rng.randrange(8)
        elif op == 1:
            del w[rng.randrange(len(w) - 1)]
        elif op == 2:
            w.insert(rng.randrange(len(w)), rng.randrange(1, 256))
        else:
            w = bytearray(rng.choice(goods) + bytes(w))
        out.append((f"mutant-{i}", bytes(w)))
    out.append(("lone-delimiters", b"\x00\x00"))
    out.append(("garbage-then-good", b"\x01\x02\x03\x00\xff" * 3 + b"\x00" + goods[0]))
    out.append(("max-length", b"\x01" * 63 + b"\x00"))
    return out


def test_golden_vectors_through_c_parser(host_vectors, tmp_path):
    vectors = _vectors()
    path = tmp_path / "vectors.txt"
    lines = ["# hex wire frame, then the expected outcome (for people; the harness ignores it)"]
    for name, wire in vectors:
        lines.append(f"{wire.hex()} {name} {_expected(wire)[1]}")
    path.write_text("\n".join(lines) + "\n")
    proc = subprocess.run(
        [str(host_vectors), str(path)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    got: dict[tuple[int, str], str] = {}
    for line in proc.stdout.splitlines():
        n, mode, rest = line.split(" ", 2)
        got[(int(n), mode)] = rest
    wrong = []
    for i, (name, wire) in enumerate(vectors):
        whole, stream = _expected(wire)
        lineno = i + 2
        if got.get((lineno, "frame")) != whole:
            wrong.append(f"{name} frame: C {got.get((lineno, 'frame'))} != Python {whole}")
        if got.get((lineno, "bytes")) != stream:
            wrong.append(f"{name} bytes: C {got.get((lineno, 'bytes'))} != Python {stream}")
    assert not wrong, "\n".join(wrong[:20])
    g = json.loads(GOLDEN.read_text())
    assert len(vectors) >= len(g["good"]) + len(g["bad"])


def test_unit_smoke_session_decodes(host_vectors):
    """unit.c through boot, HELLO, ARM, a REALTIME FIRE and a watchdog trip: every TM frame it
    sends decodes with the Python codec, in the order the protocol wants."""
    proc = subprocess.run(
        [str(host_vectors), "--unit-smoke"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    msgs = [
        codec.decode_frame(bytes.fromhex(line[3:])[:-1])
        for line in proc.stdout.splitlines()
        if line.startswith("tx ")
    ]
    names = [m.name for m in msgs]
    assert names[:2] == ["BOOT", "EVENT"] and msgs[0]["dict_hash"] == DICT_HASH
    assert "HELLO_ACK" in names and "ARM_CHALLENGE" in names
    report = next(m for m in msgs if m.name == "VALVE_REPORT")
    assert report["executed_ticks"][:2] == (20, 5) and report["flags"] & 1  # 3 -> min_on 5
    events = [m["event"] for m in msgs if m.name == "EVENT"]
    assert 3 in events and 2 in events  # WATCHDOG_TRIP, SAFE_ENTERED
    assert "open_mask 00000001" in proc.stdout  # channel 0 still open mid-pulse (REALTIME)
    assert all(m.flags & 4 for m in msgs)  # TEST_BUILD flag on every TM


class _CUnit:
    """unit.c on the host (``host_vectors --unit-stdin``) with UnitCore's driving interface."""

    def __init__(self, exe: Path):
        self.proc = subprocess.Popen(
            [str(exe), "--unit-stdin"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )

    def _do(self, line: str) -> list[str]:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        out = []
        while (got := self.proc.stdout.readline().strip()) != ".":
            assert got, f"host_vectors ended after {line!r}"
            out.append(got)
        return out

    def _tx(self, line: str) -> bytes:
        return b"".join(bytes.fromhex(x[3:]) for x in self._do(line) if x.startswith("tx "))

    def boot(self, now_us: int) -> bytes:
        return self._tx(f"boot {now_us}")

    def receive(self, data: bytes, now_us: int) -> bytes:
        return self._tx(f"rx {now_us} {data.hex()}")

    def tick(self, now_us: int, late_us: int = 0) -> bytes:
        return self._tx(f"tick {now_us} {late_us}")

    def set_tank_kpa(self, kpa: int, now_us: int) -> bytes:
        return self._tx(f"tank {now_us} {kpa}")

    def reset(self, now_us: int) -> bytes:
        return self._tx(f"reset {now_us}")

    def set_arm_enable(self, enabled: bool, now_us: int) -> bytes:
        return self._tx(f"armen {now_us} {int(enabled)}")

    def mix32(self, x: int) -> int:
        return int(self._do(f"mix {x}")[0].split()[1], 16)

    @property
    def state(self) -> int:
        return int(self._do("state")[0].split()[1])

    def open_mask(self) -> int:
        return int(self._do("state")[0].split()[3], 16)

    def close(self) -> None:
        self.proc.stdin.close()
        assert self.proc.wait(timeout=10) == 0


def _low_pressure_session(unit) -> list[tuple]:
    """Drive one unit through the minimum-feed-pressure rule (issue 7) and return what it said,
    minus the session tokens and nonces (each implementation draws its own)."""
    from thruster_hil.firmware_bridge.dictionary import ENUMS, FAULT, FLAG_ACK_REQ, LIMITS, MODE

    said: list[tuple] = []
    seq = iter(range(1000))
    session = nonce = 0

    def keep(data: bytes) -> list[Message]:
        msgs = Decoder().feed(data)
        assert all(isinstance(m, Message) for m in msgs), msgs
        for m in msgs:
            said.append(
                (
                    m.name,
                    tuple(
                        sorted((k, v) for k, v in m.fields.items() if k not in ("session", "nonce"))
                    ),
                )
            )
        return msgs

    def send(t_us: int, name: str, flags: int = 0, **fields) -> list[Message]:
        nonlocal session, nonce
        if name in ("ARM_REQUEST", "ARM_CONFIRM", "FIRE", "HEARTBEAT", "FAULT_INJECT"):
            fields["session"] = session
        msgs = keep(unit.receive(codec.encode(name, next(seq), flags, **fields), t_us))
        for m in msgs:
            if m.name == "HELLO_ACK":
                session = m["session"]
            elif m.name == "ARM_CHALLENGE":
                nonce = m["nonce"]
        return msgs

    def arm(t_us: int, next_step: int) -> None:
        send(t_us, "ARM_REQUEST")
        send(
            t_us + 100,
            "ARM_CONFIRM",
            FLAG_ACK_REQ,
            nonce=nonce,
            max_on_ticks=100,
            next_step=next_step,
        )

    def fire(t_us: int, step: int, on: dict[int, int]) -> list[Message]:
        ticks = [on.get(c, 0) for c in range(16)]
        return send(
            t_us,
            "FIRE",
            step=step,
            valid_for_ms=0,
            bank=0,
            mask=sum(1 << c for c in on),
            on_ticks=ticks,
        )

    low = LIMITS["min_feed_kpa"] - 1
    keep(unit.boot(0))
    send(
        1000,
        "HELLO",
        proto_ver=1,
        dict_hash=DICT_HASH,
        mode=MODE["REALTIME"],
        period_ms=100,
        host_nonce=0xA5A5A5A5,
    )
    arm(2000, 1)
    fire(4000, 1, {0: 60, 1: 30})
    send(14_000, "FAULT_INJECT", FLAG_ACK_REQ, fault=FAULT["TANK_PRESSURE"], arg=low)
    assert unit.state == ENUMS["state"]["SAFE"] and unit.open_mask() == 0
    fire(15_000, 2, {0: 10})
    send(16_000, "ARM_REQUEST")
    send(17_000, "FAULT_INJECT", FLAG_ACK_REQ, fault=FAULT["TANK_PRESSURE"], arg=low + 1)
    assert unit.state == ENUMS["state"]["SAFE"]
    arm(18_000, 3)
    fire(19_000, 3, {2: 40})
    keep(unit.set_tank_kpa(120, 29_000))  # a pressure reading, mid-pulse
    assert unit.state == ENUMS["state"]["SAFE"] and unit.open_mask() == 0
    fire(30_000, 4, {2: 10})
    keep(unit.set_tank_kpa(1800, 31_000))
    send(32_000, "ARM_REQUEST")
    keep(unit.tick(60_000))
    return said


def test_low_tank_pressure_is_the_same_on_unit_c_and_unitcore(host_vectors):
    """REQ issue 7: the minimum feed pressure rule, run through unit.c and through the
    emulator's UnitCore with the same commands at the same unit times: both say exactly the
    same (valves cut and reported aborted, SAFE_ENTERED LOW_PRESSURE, FIRE and ARM refused
    while low, still SAFE when the pressure is back)."""
    from thruster_hil.firmware_bridge.dictionary import ENUMS, EVENT
    from thruster_hil.firmware_bridge.unit import UnitCore

    c_unit = _CUnit(host_vectors)
    try:
        c_said = _low_pressure_session(c_unit)
    finally:
        c_unit.close()
    py_said = _low_pressure_session(UnitCore(n_channels=32, rng_seed=7, min_on_ticks=5))
    assert c_said == py_said
    safe = [
        dict(f)
        for name, f in c_said
        if name == "EVENT" and dict(f)["event"] == EVENT["SAFE_ENTERED"]
    ]
    reasons = ENUMS["safe_reason"]
    assert [(e["arg0"], e["arg1"]) for e in safe] == [
        (reasons["LOW_PRESSURE"], 499),
        (reasons["LOW_PRESSURE"], 120),
    ]
    reports = [dict(f) for name, f in c_said if name == "VALVE_REPORT"]
    assert [(r["step"], r["flags"] & 2, r["executed_ticks"][:3]) for r in reports] == [
        (1, 2, (10, 10, 0)),
        (3, 2, (0, 0, 10)),
    ]
    refusals = [dict(f)["result"] for name, f in c_said if name == "ACK"]
    assert refusals.count(1) == 3  # FIRE 2, ARM_REQUEST, FIRE 4: REJECTED_STATE


def _security_session(unit) -> list[tuple]:
    """Drive one unit through issue 13's rules (step window, FAULT_INJECT and the lockout,
    the arm-enable result, what a reset keeps) and return what it said, minus tokens and
    nonces (each implementation draws its own)."""
    from thruster_hil.firmware_bridge.dictionary import FAULT, FLAG_ACK_REQ, LIMITS, MODE

    said: list[tuple] = []
    seq = iter(range(1000))
    session = nonce = 0

    def keep(data: bytes) -> None:
        nonlocal session, nonce
        msgs = Decoder().feed(data)
        assert all(isinstance(m, Message) for m in msgs), msgs
        for m in msgs:
            said.append(
                (
                    m.name,
                    tuple(
                        sorted((k, v) for k, v in m.fields.items() if k not in ("session", "nonce"))
                    ),
                )
            )
            if m.name == "HELLO_ACK":
                session = m["session"]
            elif m.name == "ARM_CHALLENGE":
                nonce = m["nonce"]

    def send(t_us: int, name: str, flags: int = 0, token: int | None = None, **fields) -> None:
        if name not in ("HELLO", "PING", "STOP_ALL"):
            fields["session"] = session if token is None else token
        keep(unit.receive(codec.encode(name, next(seq), flags, **fields), t_us))

    def hello(t_us: int) -> None:
        send(
            t_us,
            "HELLO",
            proto_ver=1,
            dict_hash=DICT_HASH,
            mode=MODE["REALTIME"],
            period_ms=100,
            host_nonce=0x0BADCAFE,
        )

    def arm(t_us: int, next_step: int) -> None:
        send(t_us, "ARM_REQUEST")
        send(
            t_us + 100,
            "ARM_CONFIRM",
            FLAG_ACK_REQ,
            nonce=nonce,
            max_on_ticks=100,
            next_step=next_step,
        )

    def fire(t_us: int, step: int, on: dict[int, int], token: int | None = None) -> None:
        ticks = [on.get(c, 0) for c in range(16)]
        send(
            t_us,
            "FIRE",
            token=token,
            step=step,
            valid_for_ms=0,
            bank=0,
            mask=sum(1 << c for c in on),
            on_ticks=ticks,
        )

    keep(unit.boot(0))
    hello(1000)
    arm(2000, 10)
    fire(3000, 9, {0: 10})  # STALE
    fire(3100, 10 + LIMITS["step_window_min"], {0: 10})  # STEP_AHEAD
    fire(3200, 10, {0: 50, 1: 30})  # executes: REALTIME pulses running
    wrong = session ^ 0x5A5A5A5A
    send(4000, "FAULT_INJECT", FLAG_ACK_REQ, token=wrong, fault=FAULT["STUCK_OPEN"], arg=0)
    for k in range(LIMITS["session_error_limit"] - 2):
        fire(5000 + k, 0x7F000000 + k, {0: 100}, token=wrong ^ k)
    send(20_000, "DISARM", token=wrong)  # the 8th: LOCKOUT, pulses cut at 16.8 ms
    fire(21_000, 11, {0: 10})  # the old token is dead
    hello(30_000)
    arm(31_000, 1)
    fire(32_000, 1, {2: 5})
    keep(unit.set_arm_enable(False, 33_000))  # ARMED -> SAFE (ARM_DISABLED)
    arm(34_000, 2)  # ARM_CONFIRM: ARM_DISABLED, stays ARMING
    keep(unit.set_arm_enable(True, 35_000))
    send(36_000, "FAULT_INJECT", FLAG_ACK_REQ, fault=FAULT["STUCK_OPEN"], arg=3)
    send(36_500, "FAULT_INJECT", FLAG_ACK_REQ, fault=FAULT["TANK_PRESSURE"], arg=1500)
    keep(unit.reset(40_000))  # HK counters zeroed; stuck 3 and 1500 kPa kept
    keep(unit.tick(140_000))  # the first HK of the new boot
    return said


def test_session_security_is_the_same_on_unit_c_and_unitcore(host_vectors):
    """REQ issue 13 (1-3): unit.c and the emulator's UnitCore, the same commands at the same
    unit times, say exactly the same (apart from their own tokens and nonces)."""
    from thruster_hil.firmware_bridge.dictionary import ENUMS, EVENT, RESULT
    from thruster_hil.firmware_bridge.unit import UnitCore, mix32

    c_unit = _CUnit(host_vectors)
    try:
        assert [c_unit.mix32(x) for x in (0, 1, 0x12345678, 0xFFFFFFFF)] == [
            mix32(x) for x in (0, 1, 0x12345678, 0xFFFFFFFF)
        ]
        c_said = _security_session(c_unit)
    finally:
        c_unit.close()
    py_said = _security_session(UnitCore(n_channels=32, rng_seed=7, min_on_ticks=5))
    assert c_said == py_said
    results = [dict(f)["result"] for name, f in c_said if name == "ACK"]
    for r in ("STALE", "STEP_AHEAD", "BAD_SESSION", "ARM_DISABLED"):
        assert RESULT[r] in results, r
    evs = [dict(f) for name, f in c_said if name == "EVENT"]
    reasons = ENUMS["safe_reason"]
    assert [e["arg0"] for e in evs if e["event"] == EVENT["SAFE_ENTERED"]] == [
        reasons["INTRUSION"],
        reasons["ARM_DISABLED"],
    ]
    assert [(e["arg0"], e["arg1"]) for e in evs if e["event"] == EVENT["LOCKOUT"]] == [(8, 0x12)]
    cut = [dict(f) for name, f in c_said if name == "VALVE_REPORT"][0]
    assert cut["flags"] & 2 and cut["executed_ticks"][:2] == (16, 16)
    hk = [dict(f) for name, f in c_said if name == "HK"][-1]
    assert hk["session_errors"] == 0 and hk["rx_frames"] == 0
    assert hk["stuck_mask"] == 1 << 3 and hk["tank_kPa"] == 1500


def _late_watchdog_session(unit) -> list[tuple]:
    """Two watchdog trips found by late ticks (1.7 ms, then 70 ms: clamped to 65535 us)."""
    from thruster_hil.firmware_bridge.dictionary import FLAG_ACK_REQ, MODE

    said: list[tuple] = []
    seq = iter(range(1000))
    got: dict[str, int] = {}

    def keep(data: bytes) -> None:
        for m in Decoder().feed(data):
            got.update({k: m[k] for k in ("session", "nonce") if k in m.fields})
            said.append((m.name, tuple(sorted(m.fields.items()))) if m.name == "EVENT" else m.name)

    def session(t_us: int) -> None:
        keep(
            unit.receive(
                codec.encode(
                    "HELLO",
                    next(seq),
                    0,
                    proto_ver=1,
                    dict_hash=DICT_HASH,
                    mode=MODE["REALTIME"],
                    period_ms=100,
                    host_nonce=0x5A5A0000 + t_us,
                ),
                t_us,
            )
        )
        keep(
            unit.receive(
                codec.encode("ARM_REQUEST", next(seq), 0, session=got["session"]), t_us + 100
            )
        )
        keep(
            unit.receive(
                codec.encode(
                    "ARM_CONFIRM",
                    next(seq),
                    FLAG_ACK_REQ,
                    session=got["session"],
                    nonce=got["nonce"],
                    max_on_ticks=100,
                    next_step=1,
                ),
                t_us + 200,
            )
        )

    keep(unit.boot(0))
    session(1000)
    keep(unit.tick(1200 + 250_000 + 700, 1700))  # the tick after the deadline ran 1.7 ms late
    session(400_000)
    keep(unit.tick(400_200 + 320_000, 70_000))
    return [s for s in said if s != "HK"]


def test_a_late_tick_is_on_the_watchdog_trip_the_same_on_unit_c_and_unitcore(host_vectors):
    """REQ issue 13 (8): a tick the CPU ran late says how late in its WATCHDOG_TRIP (arg1, us;
    arg0 the ms since the last valid frame), on unit.c and on UnitCore alike: the campaign
    judges a QEMU unit's closure on that, as it judges the emulator's on its timer record."""
    from thruster_hil.firmware_bridge.dictionary import EVENT
    from thruster_hil.firmware_bridge.unit import UnitCore

    c_unit = _CUnit(host_vectors)
    try:
        c_said = _late_watchdog_session(c_unit)
    finally:
        c_unit.close()
    py_said = _late_watchdog_session(UnitCore(n_channels=32, rng_seed=7, min_on_ticks=5))
    assert c_said == py_said
    trips = [dict(f) for s in c_said if s[0] == "EVENT" for f in [s[1]]]
    trips = [(e["arg0"], e["arg1"]) for e in trips if e["event"] == EVENT["WATCHDOG_TRIP"]]
    assert trips == [(250, 1700), (320, 0xFFFF)]


# ---- the AVR build ----------------------------------------------------------------------------


def test_avr_firmware_builds_and_fits():
    _need("make", "avr-gcc", "avr-size")
    _make("all", "TEST_BUILD=0")
    out = _make("size").stdout
    program = int(re.search(r"Program:\s+(\d+) bytes", out).group(1))
    data = int(re.search(r"Data:\s+(\d+) bytes", out).group(1))
    print(f"firmware.elf: flash {program} B, RAM {data} B (static)")
    assert program < 256 * 1024 - 8 * 1024  # below the bootloader section
    assert data < 6 * 1024  # leaves >= 2 KB of the 8 KB SRAM for the stack
    assert (BOARD / "firmware.hex").exists()
    _make("qemu")
    assert (BOARD / "firmware-qemu.elf").exists()


# ---- libFuzzer --------------------------------------------------------------------------------


def _fuzzer_links() -> bool:
    if shutil.which("clang") is None:
        return False
    proc = subprocess.run(["make", "-C", str(BOARD), "fuzz"], capture_output=True, text=True)
    return proc.returncode == 0


@pytest.mark.slow
def test_fuzz_parser_and_state_machine(tmp_path):
    _need("make", "clang")
    if not _fuzzer_links():
        pytest.skip("clang cannot link -fsanitize=fuzzer (apt-get install -y libclang-rt-14-dev)")
    # The corpus kept in the repository (tools/fuzz_deep.py grows it with 10^7-execution runs):
    # every input in it still holds, before the fresh search.
    kept = subprocess.run(
        [str(BOARD / "fuzz_unit"), "-runs=0", "-max_len=512", str(BOARD / "fuzz_corpus")],
        capture_output=True,
        text=True,
    )
    assert kept.returncode == 0, kept.stderr[-3000:]
    files = len(list((BOARD / "fuzz_corpus").iterdir()))
    assert files > 100 and re.search(rf"Done {files + 1} runs", kept.stderr), kept.stderr[-2000:]
    # 10^6 executions in all, split over the CPUs this process may use (two on CI): each
    # worker is its own libFuzzer process with its own seed and corpus, so together they search
    # more ground than one, in about half the wall time (one process took 441 s quiet).
    runs = 1_000_000
    workers = max(1, min(2, len(os.sched_getaffinity(0))))
    procs = []
    for w in range(workers):
        corpus = tmp_path / f"corpus{w}"
        corpus.mkdir()
        log = open(tmp_path / f"fuzz{w}.log", "w+")
        cmd = [
            str(BOARD / "fuzz_unit"),
            f"-runs={-(-runs // workers)}",
            "-max_len=512",
            "-max_total_time=1200",
            f"-seed={w + 1}",
            f"-artifact_prefix={tmp_path}/",
            str(corpus),
        ]
        procs.append((subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), log))
    texts = []
    try:
        for proc, _log in procs:
            proc.wait(timeout=1500)
    finally:
        for proc, log in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.seek(0)
            texts.append((proc.returncode, log.read()))
            log.close()
    done_runs = 0
    for rc, text in texts:
        assert rc == 0, text[-3000:]
        for bad in ("ERROR: AddressSanitizer", "runtime error:", "ERROR: libFuzzer"):
            assert bad not in text, text[-3000:]
        assert "deadly signal" not in text, text[-3000:]
        done = re.search(r"Done (\d+) runs in (\d+) second", text)
        assert done, text[-2000:]
        done_runs += int(done.group(1))
        print(f"libFuzzer worker: {done.group(1)} executions in {done.group(2)} s")
    assert done_runs >= runs, f"only {done_runs} executions within the time cap"


# ---- the conformance suite under QEMU --------------------------------------------------------


@pytest.mark.slow
def test_conformance_under_qemu():
    _need("make", "avr-gcc", "qemu-system-avr")
    from thruster_hil.firmware_bridge.conformance import run_all
    from thruster_hil.firmware_bridge.qemu import QemuUnit

    with QemuUnit() as q:
        results = run_all(q.port)
    failed = [f"{r.check.name}: {r.detail}" for r in results if r.outcome == "failed"]
    assert not failed, "\n".join(failed)
    assert sum(r.outcome == "passed" for r in results) == len(results)


@pytest.mark.slow
def test_hil_reboost_through_qemu_matches_sil():
    """A lockstep HIL reboost of the dragon-boost-kit stack through the real firmware under QEMU
    ends within 0.5 % of the SIL delta-v (QEMU timing is not faithful: no timing assertion)."""
    _need("make", "avr-gcc", "qemu-system-avr")
    from thruster_hil.closedloop.fused import warm_up
    from thruster_hil.closedloop.hil import open_unit
    from thruster_hil.closedloop.runner import run_burn
    from thruster_hil.config import build_stack_model, load_stack
    from thruster_hil.plan import Target, plan_burn

    model = build_stack_model(load_stack("dragon-boost-kit"))
    plan = plan_burn("dragon-boost-kit", Target("delta_v", 0.1))
    sil = run_burn(model, plan).summary
    warm_up(model, plan)  # compile the cycle before the unit is armed
    unit = open_unit(
        unit="qemu",
        port=None,
        mode="lockstep",
        n_thrusters=len(model.thruster_names),
        period_ms=int(round(model.control_period_s * 1000)),
    )
    hil = run_burn(model, plan, unit=unit).summary
    assert hil["completed"] and not hil["aborted"], hil.get("abort_reason")
    assert hil["achieved_delta_v_mps"] == pytest.approx(sil["achieved_delta_v_mps"], rel=5e-3)
    assert hil["link"]["crc_errors"] == 0


@pytest.mark.slow
def test_hil_thruster_failure_through_qemu_matches_sil():
    """Issue 7 on the real firmware: trunk-draco-1 fails 5 s into a lockstep burn through QEMU
    (the FAULT_INJECT goes out from inside the lockstep chain, without ACK_REQ, ahead of the next
    FIRE): the burn completes, reallocated at the SIL's cycle, within 0.5 % of the SIL delta-v."""
    _need("make", "avr-gcc", "qemu-system-avr")
    from thruster_hil.sims.thrusters import HEALTH_FAILED_OFF

    from thruster_hil.closedloop.fused import warm_up
    from thruster_hil.closedloop.hil import open_unit
    from thruster_hil.closedloop.runner import Failure, run_burn
    from thruster_hil.config import build_stack_model, load_stack
    from thruster_hil.plan import Target, plan_burn

    model = build_stack_model(load_stack("dragon-boost-kit"))
    plan = plan_burn("dragon-boost-kit", Target("delta_v", 0.3))
    name = model.thruster_names[0]
    sil = run_burn(model, plan, failures=[Failure(name, 5.0, HEALTH_FAILED_OFF)]).summary
    warm_up(model, plan)
    unit = open_unit(
        unit="qemu",
        port=None,
        mode="lockstep",
        n_thrusters=len(model.thruster_names),
        period_ms=int(round(model.control_period_s * 1000)),
    )
    hil = run_burn(model, plan, unit=unit, failures=[Failure(name, 5.0, HEALTH_FAILED_OFF)]).summary
    assert hil["completed"] and not hil["aborted"], hil.get("abort_reason")
    assert (
        [(r["thruster"], r["cycle"]) for r in hil["reallocations"]]
        == [(r["thruster"], r["cycle"]) for r in sil["reallocations"]]
        == [(name, 10)]
    )
    assert hil["achieved_delta_v_mps"] == pytest.approx(sil["achieved_delta_v_mps"], rel=5e-3)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_qemu_does_not_outlive_a_killed_parent(tmp_path):
    """A process that started QEMU (as `run --unit qemu` does) is killed with SIGKILL, which no
    handler sees: QEMU ends too (parent-death signal through setpriv)."""
    _need("make", "avr-gcc", "qemu-system-avr", "setpriv")
    import signal
    import time

    root = Path(__file__).resolve().parents[1]
    starter = (
        "import os, sys\nfrom thruster_hil.firmware_bridge.qemu import QemuUnit\n"
        "q = QemuUnit().start()\nprint(q._proc.pid, flush=True)\nsys.stdin.read()\n"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", starter],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=root,
        env=dict(os.environ, PYTHONPATH=str(root)),
    )
    try:
        pid = int(parent.stdout.readline())  # QEMU is up: its pty was announced
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # poll the process table for QEMU's exit, bounded
            try:
                state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError):
                break  # gone (and reaped by init)
            if state == "Z":
                break
            time.sleep(0.02)
        else:
            os.kill(pid, signal.SIGKILL)
            pytest.fail("qemu-system-avr outlived its killed parent by 10 s")
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
