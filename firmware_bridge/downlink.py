"""Telemetry out, sans-IO: one control cycle's numbers in, one HOST_CYCLE space packet out.

HOST_CYCLE (messages.toml, APID host_telemetry, ``link = "udp"``) is the host's state after a
control cycle: the numbers of one telemetry.csv row, as integers in fine units (um/s, mm, udeg,
udeg/s, mg, us, ms), so a ground system (Yamcs, OpenC3 COSMOS, space-packet-parser) reads it from
the same XTCE export as the serial wire. No socket here: :class:`CycleTelemetry` returns bytes,
the UDP driver (:mod:`thruster_hil.firmware_bridge.udp`) sends them.

The packet is exactly what ``codec.encode_packet("HOST_CYCLE", ...)`` makes of the same fields
(tests/test_stream.py checks it); it is built here with one precompiled struct because it is
built every control cycle and the stream must not slow the loop (docs/protocol.md, "Telemetry
out"): the fast path is one pack of rounded numbers; a value the pack refuses (past its field's
range, NaN, infinite) goes to a slow path that sends the field's nearest end (NaN as 0), never an
exception into the loop.
"""

from __future__ import annotations

import math
import struct
from binascii import crc_hqx
from collections.abc import Sequence

from thruster_hil.firmware_bridge.codec import MSG_VERSION, SEQ_MODULO
from thruster_hil.firmware_bridge.dictionary import MESSAGES, Field

SPEC = MESSAGES["HOST_CYCLE"]
_FIELDS = {f.name: f for f in SPEC.fields}
#: Thruster and tank slots in one packet (the u16[32] / u32[4] arrays).
MAX_THRUSTERS = _FIELDS["cmd_ms"].count
MAX_TANKS = _FIELDS["tank_used_mg"].count
#: Primary header word 0 (TM, secondary header, APID) and the data length field.
_WORD0 = (1 << 11) | SPEC.apid
_DATA_LEN = SPEC.payload_len + 3
_CRC = struct.Struct(">H").pack


class CycleTelemetry:
    """HOST_CYCLE packets of one stream: call :meth:`packet` once per control cycle.

    ``n_thrusters`` and ``n_tanks`` are the stack's (at most :data:`MAX_THRUSTERS` and
    :data:`MAX_TANKS`: ValueError otherwise, at start-up). The sequence count runs on from 0
    per packet, modulo 2**14, as on the serial wire.
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
        self._seq = 0
        self._pad_valves = (0,) * (MAX_THRUSTERS - n_thrusters)
        self._pad_tanks = (0,) * (MAX_TANKS - n_tanks)
        fmt = ">HHHBB" + SPEC.struct.format.lstrip("<>!=@")
        self._pack = struct.Struct(fmt).pack
        self._head = (_WORD0, _DATA_LEN, SPEC.id, MSG_VERSION << 4)

    def packet(
        self,
        step: int,
        t_s: float,
        status: int,
        dv_along_mps: float,
        dv_remaining_mps: float,
        altitude_km: float,
        attitude_error_deg: float,
        rate_x_dps: float,
        rate_y_dps: float,
        rate_z_dps: float,
        propellant_kg: float,
        rtt_ms: float,
        cmd_ms: Sequence[int],
        exec_ms: Sequence[int],
        tank_used_kg: Sequence[float],
        link: Sequence[int],
        dropped: int,
    ) -> bytes:
        """The packet of one cycle: the values of one telemetry.csv row (its units: s, m/s, km,
        deg, deg/s, kg, ms), ``link`` = (frames sent, frames received, bad frames, retries) and
        the datagrams this stream dropped so far. Never raises for a value out of range."""
        seq = self._seq
        self._seq = (seq + 1) % SEQ_MODULO
        word0, data_len, msg_id, ver = self._head
        try:
            body = self._pack(
                word0,
                0xC000 | seq,
                data_len,
                msg_id,
                ver,
                step,
                round(t_s * 1e3),
                status,
                self.n_thrusters,
                self.n_tanks,
                round(dv_along_mps * 1e6),
                round(dv_remaining_mps * 1e6),
                round(altitude_km * 1e6),
                round(attitude_error_deg * 1e6),
                round(rate_x_dps * 1e6),
                round(rate_y_dps * 1e6),
                round(rate_z_dps * 1e6),
                round(propellant_kg * 1e6),
                round(rtt_ms * 1e3),
                *link,
                dropped,
                *cmd_ms,
                *self._pad_valves,
                *exec_ms,
                *self._pad_valves,
                *[round(kg * 1e6) for kg in tank_used_kg],
                *self._pad_tanks,
            )
        except (ValueError, OverflowError, TypeError, struct.error):
            body = self._pack(
                word0,
                0xC000 | seq,
                data_len,
                msg_id,
                ver,
                *self._clamped(
                    step,
                    t_s,
                    status,
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
                    link,
                    dropped,
                ),
            )
        return body + _CRC(crc_hqx(body, 0xFFFF))

    def fields(self, *args) -> dict:
        """The HOST_CYCLE fields (codec names and units) :meth:`packet` sends for these
        arguments (the same ones): for tests and for a reader of the stream's definition."""
        values = self._clamped(*args)
        out, i = {}, 0
        for f in SPEC.fields:
            out[f.name] = tuple(values[i : i + f.count]) if f.count > 1 else values[i]
            i += f.count
        return out

    def _clamped(
        self,
        step,
        t_s,
        status,
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
        link,
        dropped,
    ) -> list[int]:
        """Every payload value in order, each scaled, rounded and held to its field's range."""
        f = _FIELDS
        n, m = self.n_thrusters, self.n_tanks
        out = [
            _fit(f["step"], step),
            _fit(f["t_ms"], t_s, 1e3),
            _fit(f["status"], status),
            n,
            m,
            _fit(f["dv_along_umps"], dv_along_mps, 1e6),
            _fit(f["dv_remaining_umps"], dv_remaining_mps, 1e6),
            _fit(f["altitude_mm"], altitude_km, 1e6),
            _fit(f["attitude_error_udeg"], attitude_error_deg, 1e6),
            _fit(f["rate_x_udegps"], rate_x_dps, 1e6),
            _fit(f["rate_y_udegps"], rate_y_dps, 1e6),
            _fit(f["rate_z_udegps"], rate_z_dps, 1e6),
            _fit(f["propellant_mg"], propellant_kg, 1e6),
            _fit(f["rtt_us"], rtt_ms, 1e3),
        ]
        counters = ("link_frames_sent", "link_frames_received", "link_errors", "link_retries")
        out += [_fit(f[name], v) for name, v in zip(counters, link, strict=True)]
        out.append(_fit(f["stream_dropped"], dropped))
        out += [_fit(f["cmd_ms"], v) for v in list(cmd_ms)[:n]] + list(self._pad_valves)
        out += [_fit(f["exec_ms"], v) for v in list(exec_ms)[:n]] + list(self._pad_valves)
        out += [_fit(f["tank_used_mg"], v, 1e6) for v in list(tank_used_kg)[:m]]
        out += list(self._pad_tanks)
        return out


def _fit(field: Field, value, scale: float = 1.0) -> int:
    """``value * scale`` rounded and held to the field's range; NaN (or no number) as 0."""
    try:
        x = float(value) * scale
    except (TypeError, ValueError):
        return max(field.lo, 0)
    if math.isnan(x):
        return max(field.lo, 0)
    if x >= field.hi:
        return field.hi
    if x <= field.lo:
        return field.lo
    return round(x)
