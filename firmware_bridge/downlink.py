"""Telemetry out, sans-IO: one control cycle's numbers in, one HOST_CYCLE space packet out.

HOST_CYCLE (messages.toml, APID host_telemetry, ``link = "udp"``) is the host's state after a
control cycle: the numbers of one telemetry.csv row, as integers in fine units (um/s, mm, udeg,
udeg/s, mg, us, ms), so a ground system (Yamcs, OpenC3 COSMOS, space-packet-parser) reads it from
the same XTCE export as the serial wire. No socket here: :class:`CycleTelemetry` returns bytes,
the UDP driver (:mod:`thruster_hil.firmware_bridge.udp`) sends them.

The packet is exactly what ``codec.encode_packet("HOST_CYCLE", ...)`` makes of the fields that
:meth:`CycleTelemetry.fields` gives (tests/test_stream.py checks it for any input, NaN and
out-of-range values included). It is built every control cycle and the stream must not slow the
loop (docs/protocol.md, "Telemetry out": at most 5 % fewer cycles per second), so the bytes are
written by one numba kernel (:func:`pack_cycle`: scale, round half to even, hold each value to
its field's range, NaN as 0, big-endian, CRC) into a buffer that is reused: a Python struct pack
of the ~100 values cost about twice as much. The field layout comes from the dictionary at
import, checked against the order the kernel writes, so a changed HOST_CYCLE cannot be packed
wrongly in silence.
"""

from __future__ import annotations

import math
import struct

import numpy as np
from thruster_hil.firmware_bridge.codec import MSG_VERSION
from thruster_hil.firmware_bridge.dictionary import MESSAGES, Field
from thruster_hil.firmware_bridge.ring_sender import (
    CONSUMED,
    COUNTERS,
    HEADER_BYTES,
    N_SLOTS,
    PUBLISHED,
    RING_FULL,
    SENDER_CAUSES,
    SEQ,
    SLOT_BYTES,
)

from thruster_hil.core.jit import kernel

SPEC = MESSAGES["HOST_CYCLE"]
_FIELDS = {f.name: f for f in SPEC.fields}
#: Thruster and tank slots in one packet (the u16[32] / u32[4] arrays).
MAX_THRUSTERS = _FIELDS["cmd_ms"].count
MAX_TANKS = _FIELDS["tank_used_mg"].count
#: The fields in the order :func:`pack_cycle` writes them, with their types.
_KERNEL_ORDER = (
    ("step", "u32"),
    ("t_ms", "u32"),
    ("status", "u16"),
    ("n_thrusters", "u8"),
    ("n_tanks", "u8"),
    ("dv_along_umps", "i32"),
    ("dv_remaining_umps", "i32"),
    ("altitude_mm", "u32"),
    ("attitude_error_udeg", "u32"),
    ("rate_x_udegps", "i32"),
    ("rate_y_udegps", "i32"),
    ("rate_z_udegps", "i32"),
    ("propellant_mg", "u32"),
    ("rtt_us", "u32"),
    ("link_frames_sent", "u32"),
    ("link_frames_received", "u32"),
    ("link_errors", "u32"),
    ("link_retries", "u32"),
    ("stream_dropped", "u32"),
    ("cmd_ms", f"u16[{MAX_THRUSTERS}]"),
    ("exec_ms", f"u16[{MAX_THRUSTERS}]"),
    ("tank_used_mg", f"u32[{MAX_TANKS}]"),
)
if tuple((f.name, f.type) for f in SPEC.fields) != _KERNEL_ORDER:
    raise ValueError("messages.HOST_CYCLE changed: update firmware_bridge/downlink.py to match")
PACKET_BYTES = 8 + SPEC.payload_len + 2
_CMD = 8 + 68  # byte offsets of the arrays (checked below)
_EXEC = _CMD + 2 * MAX_THRUSTERS
_TANKS = _EXEC + 2 * MAX_THRUSTERS
if _TANKS + 4 * MAX_TANKS + 2 != PACKET_BYTES:
    raise ValueError("messages.HOST_CYCLE: the layout is not the one downlink.py writes")


def _crc_table() -> np.ndarray:
    """CRC-16/CCITT-FALSE (poly 0x1021, MSB first) of every byte value, for the kernel."""
    table = np.zeros(256, np.uint16)
    for byte in range(256):
        reg = byte << 8
        for _ in range(8):
            reg = ((reg << 1) ^ 0x1021 if reg & 0x8000 else reg << 1) & 0xFFFF
        table[byte] = reg
    return table


def _crc_tables() -> np.ndarray:
    """The byte table and three more for four bytes a step ("slice-by-4"): row k holds the
    register after a byte value and k zero bytes, from 0. The CRC is linear over XOR, so four
    bytes (the register's two XORed into the first two) are four independent look-ups, not a
    chain of four: a quarter of the per-cycle CRC time, which the loop pays on every packet."""
    tables = np.zeros((4, 256), np.int64)
    tables[0] = _crc_table()
    for k in range(1, 4):
        prev = tables[k - 1]
        tables[k] = ((prev << 8) & 0xFFFF) ^ tables[0][prev >> 8]
    return tables


_CRC4 = _crc_tables()
_U32 = 0xFFFFFFFF
_SENDER_CAUSES = tuple(SENDER_CAUSES)  # (the sender's drop counters, as the kernel reads them)
if PACKET_BYTES > SLOT_BYTES:
    raise ValueError("messages.HOST_CYCLE: the packet outgrew the sender's ring slot")
_I32_LO, _I32_HI = -(2**31), 2**31 - 1


@kernel
def _fit(x, scale, lo, hi):
    """``x * scale`` rounded half to even (as Python's round) and held to [lo, hi]; NaN: 0."""
    v = x * scale
    if v != v:
        return 0
    if v >= hi:
        return hi
    if v <= lo:
        return lo
    return np.int64(np.rint(v))


@kernel
def _be(buf, pos, value, nbytes):
    for i in range(nbytes):
        buf[pos + nbytes - 1 - i] = (value >> (8 * i)) & 0xFF


_HEAD = np.frombuffer(
    struct.pack(
        ">HHHBB", (1 << 11) | SPEC.apid, 0xC000, SPEC.payload_len + 3, SPEC.id, MSG_VERSION << 4
    ),
    np.uint8,
).copy()  # TM, secondary header, APID; unsegmented, count 0; length; message id; version


@kernel
def pack_cycle(
    buf,
    seq,
    cmd_ms,
    exec_ms,
    tank_used_kg,
    counters,
    step,
    status,
    t_s,
    dv_along,
    dv_remaining,
    altitude_km,
    att_deg,
    wx,
    wy,
    wz,
    prop_kg,
    rtt_ms,
):
    """One whole HOST_CYCLE packet into ``buf`` (:data:`PACKET_BYTES`), sequence count ``seq``:
    the header, the values of :meth:`CycleTelemetry.fields`, then the CRC. ``counters`` =
    (frames sent, frames received, bad frames, retries, datagrams dropped)."""
    for i in range(8):
        buf[i] = _HEAD[i]
    _be(buf, 2, 0xC000 | (seq & 0x3FFF), 2)
    n_thr = min(cmd_ms.shape[0], exec_ms.shape[0], MAX_THRUSTERS)
    n_tank = min(tank_used_kg.shape[0], MAX_TANKS)
    _be(buf, 8, min(max(step, 0), _U32), 4)
    _be(buf, 12, _fit(t_s, 1e3, 0, _U32), 4)
    _be(buf, 16, min(max(status, 0), 0xFFFF), 2)
    buf[18] = n_thr
    buf[19] = n_tank
    _be(buf, 20, _fit(dv_along, 1e6, _I32_LO, _I32_HI), 4)
    _be(buf, 24, _fit(dv_remaining, 1e6, _I32_LO, _I32_HI), 4)
    _be(buf, 28, _fit(altitude_km, 1e6, 0, _U32), 4)
    _be(buf, 32, _fit(att_deg, 1e6, 0, _U32), 4)
    _be(buf, 36, _fit(wx, 1e6, _I32_LO, _I32_HI), 4)
    _be(buf, 40, _fit(wy, 1e6, _I32_LO, _I32_HI), 4)
    _be(buf, 44, _fit(wz, 1e6, _I32_LO, _I32_HI), 4)
    _be(buf, 48, _fit(prop_kg, 1e6, 0, _U32), 4)
    _be(buf, 52, _fit(rtt_ms, 1e3, 0, _U32), 4)
    for i in range(5):
        _be(buf, 56 + 4 * i, min(max(counters[i], 0), _U32), 4)
    for i in range(n_thr):
        _be(buf, _CMD + 2 * i, min(max(np.int64(cmd_ms[i]), 0), 0xFFFF), 2)
        _be(buf, _EXEC + 2 * i, min(max(np.int64(exec_ms[i]), 0), 0xFFFF), 2)
    for i in range(n_thr, MAX_THRUSTERS):
        _be(buf, _CMD + 2 * i, 0, 2)
        _be(buf, _EXEC + 2 * i, 0, 2)
    for i in range(n_tank):
        _be(buf, _TANKS + 4 * i, _fit(tank_used_kg[i], 1e6, 0, _U32), 4)
    for i in range(n_tank, MAX_TANKS):
        _be(buf, _TANKS + 4 * i, 0, 4)
    end = PACKET_BYTES - 2
    crc = crc16(buf, end)
    buf[end] = crc >> 8
    buf[end + 1] = crc & 0xFF


@kernel
def crc16(buf, end):
    """CRC-16/CCITT-FALSE of ``buf[:end]`` (binascii.crc_hqx(data, 0xFFFF)), four bytes a
    step (:func:`_crc_tables`)."""
    crc = np.int64(0xFFFF)
    i = 0
    while i + 4 <= end:
        crc = (
            _CRC4[3, (crc >> 8) ^ buf[i]]
            ^ _CRC4[2, (crc & 0xFF) ^ buf[i + 1]]
            ^ _CRC4[1, buf[i + 2]]
            ^ _CRC4[0, buf[i + 3]]
        )
        i += 4
    while i < end:
        crc = ((crc << 8) & 0xFFFF) ^ _CRC4[0, ((crc >> 8) ^ buf[i]) & 0xFF]
        i += 1
    return crc


@kernel
def put_cycle_ring(
    ring,
    cmd_ms,
    exec_ms,
    tank_used_kg,
    step,
    status,
    t_s,
    dv_along,
    dv_remaining,
    altitude_km,
    att_deg,
    wx,
    wy,
    wz,
    prop_kg,
    rtt_ms,
):
    """The next HOST_CYCLE packet straight into the sender's ring (:mod:`.ring_sender`; ``ring``
    the whole shared mapping as uint8: one array, as each array argument costs the loop about
    0.1 us in numba's dispatcher), published once complete; True if it was, False if the ring
    was full (counted in RING_FULL; the sequence count still advances, so the receiver sees the
    gap). The packet's counters are the ring's
    COUNTERS words, the drops so far written in first. Called from the loop's own kernel
    (:mod:`thruster_hil.stream`), so no Python runs per packet."""
    words = ring[:HEADER_BYTES].view(np.int64)
    seq = (words[SEQ] + 1) & 0x3FFF
    words[SEQ] = seq
    n = words[N_SLOTS]
    published = words[PUBLISHED]
    if published - words[CONSUMED] >= n:
        words[RING_FULL] += 1
        return False
    dropped = words[RING_FULL]
    for cause in _SENDER_CAUSES:
        dropped += words[cause]
    words[COUNTERS + 4] = dropped
    at = HEADER_BYTES + (published % n) * SLOT_BYTES
    pack_cycle(
        ring[at : at + PACKET_BYTES],
        seq,
        cmd_ms,
        exec_ms,
        tank_used_kg,
        words[COUNTERS : COUNTERS + 5],
        step,
        status,
        t_s,
        dv_along,
        dv_remaining,
        altitude_km,
        att_deg,
        wx,
        wy,
        wz,
        prop_kg,
        rtt_ms,
    )
    words[PUBLISHED] = published + 1  # after the slot is whole: the sender may send it now
    return True


class CycleTelemetry:
    """HOST_CYCLE packets of one stream: call :meth:`put` (or :meth:`packet`) once per cycle.

    ``n_thrusters`` and ``n_tanks`` are the stack's (at most :data:`MAX_THRUSTERS` and
    :data:`MAX_TANKS`: ValueError otherwise, at start-up). The sequence count runs on from 0
    per packet, modulo 2**14, as on the serial wire. Building the first packet here loads (or
    compiles, once per machine) the kernel: never in the first control cycle.
    """

    def __init__(self, n_thrusters: int, n_tanks: int):
        if not 0 <= n_thrusters <= MAX_THRUSTERS:
            raise ValueError(
                f"HOST_CYCLE carries at most {MAX_THRUSTERS} thrusters, the stack has {n_thrusters}"
            )
        if not 0 <= n_tanks <= MAX_TANKS:
            raise ValueError(
                f"HOST_CYCLE carries at most {MAX_TANKS} tanks, the stack has {n_tanks}"
            )
        self.n_thrusters = n_thrusters
        self.n_tanks = n_tanks
        #: (frames sent, frames received, bad frames, retries, datagrams dropped): the caller
        #: keeps them current; every packet carries them as they are.
        self.counters = np.zeros(5, np.int64)
        #: The packet buffer :meth:`put` rewrites: its sequence count (14 bits) is the last
        #: packet's, so the first packet gets 0.
        self.buf = np.zeros(PACKET_BYTES, np.uint8)
        # the first packet: loads (or compiles) the kernel now, not in the first control cycle
        zeros = np.zeros(n_thrusters, np.uint16)
        self.put(0, 0, 0.0, *[0.0] * 9, zeros, zeros, np.zeros(n_tanks))
        self.buf[2:4] = 0xFF  # last count 0x3FFF (the flags bits are rewritten by each packet)

    @property
    def seq(self) -> int:
        """The sequence count of the last packet (0x3FFF before the first)."""
        return int(self.buf[2] & 0x3F) << 8 | int(self.buf[3])

    def put(
        self,
        step: int,
        status: int,
        t_s: float,
        dv_along_mps: float,
        dv_remaining_mps: float,
        altitude_km: float,
        attitude_error_deg: float,
        rate_x_dps: float,
        rate_y_dps: float,
        rate_z_dps: float,
        propellant_kg: float,
        rtt_ms: float,
        cmd_ms: np.ndarray,
        exec_ms: np.ndarray,
        tank_used_kg: np.ndarray,
    ) -> np.ndarray:
        """The packet of one cycle in :attr:`buf` (returned; valid until the next call): the
        numbers of one telemetry.csv row in its units (s, m/s, km, deg, deg/s, kg, ms; Python
        ints and floats), the on-times as uint16 arrays of the stack's thrusters, the tanks'
        draw [kg] as a float64 array, and :attr:`counters`. Never raises for a value out of
        range."""
        pack_cycle(
            self.buf,
            self.seq + 1,  # pack_cycle keeps 14 bits: 0x3FFF + 1 is 0
            cmd_ms,
            exec_ms,
            tank_used_kg,
            self.counters,
            step,
            status,
            t_s,
            dv_along_mps,
            dv_remaining_mps,
            altitude_km,
            attitude_error_deg,
            rate_x_dps,
            rate_y_dps,
            rate_z_dps,
            propellant_kg,
            rtt_ms,
        )
        return self.buf

    def packet(self, *args) -> bytes:
        """:meth:`put` as bytes of their own, from any numbers and sequences (converted here
        as the kernel takes them; arguments as :meth:`put`)."""
        args = [int(a) for a in args[:2]] + [float(a) for a in args[2:12]] + list(args[12:])
        for i in (12, 13):
            args[i] = np.asarray(args[i], np.int64)[: self.n_thrusters].clip(0, 0xFFFF)
            args[i] = args[i].astype(np.uint16)
        args[14] = np.asarray(args[14], np.float64)[: self.n_tanks]
        return self.put(*args).tobytes()

    def fields(self, *args) -> dict:
        """The HOST_CYCLE fields (codec names, wire units) that :meth:`put` sends for these
        arguments: the reference the kernel is tested against, written plainly in Python."""
        values = self._reference(*args)
        out, i = {}, 0
        for f in SPEC.fields:
            out[f.name] = tuple(values[i : i + f.count]) if f.count > 1 else values[i]
            i += f.count
        return out

    def _reference(
        self,
        step,
        status,
        t_s,
        dv_along_mps,
        dv_remaining_mps,
        altitude_km,
        attitude_error_deg,
        rate_x_dps,
        rate_y_dps,
        rate_z_dps,
        propellant_kg,
        rtt_ms,
        cmd_ms,
        exec_ms,
        tank_used_kg,
    ) -> list[int]:
        """Every payload value in order, each scaled, rounded and held to its field's range."""
        f = _FIELDS
        n, m = self.n_thrusters, self.n_tanks
        pad_valves = [0] * (MAX_THRUSTERS - n)
        out = [
            _held(f["step"], step),
            _held(f["t_ms"], t_s, 1e3),
            _held(f["status"], status),
            n,
            m,
            _held(f["dv_along_umps"], dv_along_mps, 1e6),
            _held(f["dv_remaining_umps"], dv_remaining_mps, 1e6),
            _held(f["altitude_mm"], altitude_km, 1e6),
            _held(f["attitude_error_udeg"], attitude_error_deg, 1e6),
            _held(f["rate_x_udegps"], rate_x_dps, 1e6),
            _held(f["rate_y_udegps"], rate_y_dps, 1e6),
            _held(f["rate_z_udegps"], rate_z_dps, 1e6),
            _held(f["propellant_mg"], propellant_kg, 1e6),
            _held(f["rtt_us"], rtt_ms, 1e3),
        ]
        names = ("link_frames_sent", "link_frames_received", "link_errors", "link_retries")
        names += ("stream_dropped",)
        out += [_held(f[name], int(v)) for name, v in zip(names, self.counters, strict=True)]
        out += [_held(f["cmd_ms"], v) for v in list(cmd_ms)[:n]] + pad_valves
        out += [_held(f["exec_ms"], v) for v in list(exec_ms)[:n]] + pad_valves
        out += [_held(f["tank_used_mg"], v, 1e6) for v in list(tank_used_kg)[:m]]
        return out + [0] * (MAX_TANKS - m)


def _held(field: Field, value, scale: float = 1.0) -> int:
    """``value * scale`` rounded (half to even) and held to the field's range; NaN as 0."""
    x = float(value) * scale
    if math.isnan(x):
        return 0
    if x >= field.hi:
        return field.hi
    if x <= field.lo:
        return field.lo
    return round(x)
