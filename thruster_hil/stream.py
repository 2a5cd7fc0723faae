"""Telemetry out (``run --stream`` and ``monitor --stream``): each control cycle as one HOST_CYCLE
space packet in one UDP datagram, for a ground system (Yamcs, OpenC3 COSMOS) or a script.

The numbers are those of telemetry.csv (:func:`thruster_hil.records.telemetry_numbers`): a run
takes them from the runner's per-cycle ``info`` (:meth:`CycleStream.on_cycle`), ``monitor`` from
the rows of a run directory as it tails it (:meth:`CycleStream.on_row`). Packets are built by
:class:`thruster_hil.firmware_bridge.downlink.CycleTelemetry` (sans-IO) and sent by
:class:`thruster_hil.firmware_bridge.udp.UdpSender`, whose thread sends them beside the loop and
drops and counts what cannot go at once: the stream never stalls the loop.
:meth:`CycleStream.stats` is summary.json's ``stream``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from thruster_hil.core.constants import R_EARTH
from thruster_hil.core.errors import UserError
from thruster_hil.firmware_bridge.downlink import CycleTelemetry, put_cycle
from thruster_hil.firmware_bridge.udp import StreamTarget, StreamUrlError, UdpSender, resolve

OPTION = "--stream"
_DEG = 180.0 / math.pi


def resolve_option(url: str, where: str) -> StreamTarget:
    """``--stream URL`` resolved once, at start-up; a bad or unresolvable URL is one line
    (UserError, exit 2) naming the option and the value."""
    try:
        return resolve(url)
    except StreamUrlError as exc:
        raise UserError(where, f"{exc}, got {url!r}", field=OPTION) from None


def serial_link_counters(unit) -> Callable[[], tuple[int, int, int, int]] | None:
    """(frames sent, frames received, bad frames, retries) of a serial unit's link, read from
    its session's counters each cycle (plain attribute reads: no stats() dict per cycle); None
    for the in-process unit, which has no link."""
    session = getattr(getattr(unit, "link", None), "s", None)
    if session is None:
        return None
    decoder = session._decoder

    def counters() -> tuple[int, int, int, int]:
        return (
            session.frames_sent,
            decoder.frames,
            sum(decoder.errors.values()),
            session.retries,
        )

    return counters


class CycleStream:
    """One ``--stream``: a packet built from each cycle in the loop, queued for the sender's
    thread (:meth:`UdpSender.submit`); what cannot be sent is dropped and counted."""

    def __init__(
        self,
        target: StreamTarget,
        n_thrusters: int | None = None,
        n_tanks: int | None = None,
        mass0_kg: float = 0.0,
        link_counters: Callable[[], Sequence[int]] | None = None,
    ):
        """A run gives its stack's thruster and tank counts; monitor leaves them None: they
        come from the header of telemetry.csv."""
        self.target = target
        if n_thrusters is not None:
            self._telemetry(n_thrusters, n_tanks or 0)
        try:
            self.sender = UdpSender(target)
        except StreamUrlError as exc:
            raise UserError(target.url, str(exc), field=OPTION) from None
        self._mass0 = mass0_kg
        self._link = link_counters
        self._submit = self.sender.submit
        self._dropped = 0  # as the packets last said
        self._header: list[str] | None = None

    def set_link_counters(self, counters: Callable[[], Sequence[int]] | None) -> None:
        """Where each packet's link counters come from from now on (None: zeros)."""
        self._link = counters

    def _telemetry(self, n_thrusters: int, n_tanks: int) -> None:
        try:
            self._tm = CycleTelemetry(n_thrusters, n_tanks)
            self._buf = self._tm.buf
            self._packet_bytes = self._buf.tobytes  # a copy for the queue: the buffer is reused
            self._counters = self._tm.counters
        except ValueError as exc:
            raise UserError(self.target.url, str(exc), field=OPTION) from None

    # ---- a run: the runner's per-cycle info ------------------------------------------------
    def on_cycle(self, k: int, info: dict) -> None:
        """The ``on_cycle`` sink of a run: the same numbers as its telemetry.csv row (from
        ``info`` as :func:`thruster_hil.records.telemetry_numbers` takes them, written out here
        because this runs every cycle)."""
        c = info["ctrl"]
        # Python floats at once: arithmetic on numpy scalars costs several times more
        cc = c.ctrl[:6].tolist()  # controller outputs: C_DV_ALONG 0, C_ATT_ERR 4, C_REMAINING 5
        y = info["y"].tolist()  # plant state: r_BN_N [m] 0..2, omega_BN_B [rad/s] 10..12, m 13
        rtt = info.get("rtt_s") or 0.0
        if self._link is not None:  # a serial unit: its counters, read every cycle
            self._counters[:4] = self._link()
        # the kernel itself (CycleTelemetry.put without its Python call): this runs every cycle
        put_cycle(
            self._buf,
            c.on_ms,
            info["executed_ms"],
            info["tank_used"],
            self._counters,
            k,
            info["status"],
            info["t_s"],
            cc[0],
            cc[5],
            (math.sqrt(y[0] * y[0] + y[1] * y[1] + y[2] * y[2]) - R_EARTH) * 1e-3,
            cc[4] * _DEG,
            y[10] * _DEG,
            y[11] * _DEG,
            y[12] * _DEG,
            self._mass0 - y[13],
            rtt * 1e3,
        )
        self._submit(self._packet_bytes())
        self._note_drops()

    # ---- monitor: the rows of telemetry.csv --------------------------------------------------
    def on_row(self, header: list[str], row: list[str]) -> None:
        """One telemetry.csv row (``header`` its column names) as a packet."""
        if header is not self._header:
            self._columns(header)
        num = [float(row[i]) for i in self._numbers]
        if self._link is not None:
            self._counters[:4] = self._link()
        packet = self._tm.packet(
            int(row[0]),
            int(row[2]),
            *num,
            [int(row[i]) for i in self._cmd],
            [int(row[i]) for i in self._exec],
            [float(row[i]) for i in self._tanks],
        )
        self._submit(packet)
        self._note_drops()

    def _note_drops(self) -> None:
        """The drops so far (the sender thread counts them) into the next packets."""
        dropped = self.sender.dropped
        if dropped != self._dropped:
            self._dropped = self._counters[4] = dropped

    def _columns(self, header: list[str]) -> None:
        from thruster_hil.records import TELEMETRY_FIELDS

        if list(header[: len(TELEMETRY_FIELDS)]) != list(TELEMETRY_FIELDS):
            raise UserError("telemetry.csv", "not the telemetry of a thruster-hil run")
        self._header = header
        self._numbers = [1] + list(range(3, len(TELEMETRY_FIELDS)))  # t_s, dv_along .. rtt_ms
        self._cmd = [i for i, h in enumerate(header) if h.startswith("cmd_ms:")]
        self._exec = [i for i, h in enumerate(header) if h.startswith("exec_ms:")]
        self._tanks = [i for i, h in enumerate(header) if h.startswith("propellant_kg:")]
        self._telemetry(len(self._cmd), len(self._tanks))

    # ---- the end -------------------------------------------------------------------------------
    def stats(self) -> dict:
        """summary.json's ``stream``: where it went, what, how many datagrams sent and dropped."""
        out = self.sender.stats()
        out["packet"] = "HOST_CYCLE"
        return out

    def note(self) -> str:
        """One line for the operator: how many datagrams went where."""
        s = self.sender
        return f"streamed {s.sent} HOST_CYCLE datagrams to {s.target.address} ({s.dropped} dropped)"

    def close(self) -> None:
        self.sender.close()


def monitor_link_counters(status: Callable[[], dict | None]) -> Callable[[], tuple]:
    """The link counters of a run being monitored: its latest status.json (serial units
    rewrite it every second) or summary.json, 0 where there is none."""

    def counters() -> tuple[int, int, int, int]:
        link = (status() or {}).get("link") or {}
        bad = sum(
            int(link.get(k) or 0)
            for k in ("crc_errors", "cobs_errors", "length_errors", "other_protocol_errors")
        )
        return (
            int(link.get("frames_sent") or 0),
            int(link.get("frames_received") or 0),
            bad,
            int(link.get("retries") or 0),
        )

    return counters
