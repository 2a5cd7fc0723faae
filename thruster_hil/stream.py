"""Telemetry out (``run --stream`` and ``monitor --stream``): each control cycle as one HOST_CYCLE
space packet in one UDP datagram, for a ground system (Yamcs, OpenC3 COSMOS) or a script.

The numbers are those of telemetry.csv (:func:`thruster_hil.records.telemetry_numbers`): a run
takes them from the runner's per-cycle ``info`` (:meth:`CycleStream.on_cycle`), ``monitor`` from
the rows of a run directory as it tails it (:meth:`CycleStream.on_row`).
:class:`thruster_hil.firmware_bridge.udp.UdpSender` starts a sender process of its own that sends
the packets published in a shared-memory ring, and drops and counts what cannot go at once: the
stream never stalls the loop. In a run, one numba kernel per cycle (:func:`_cycle_into_ring`)
reads the numbers from the arrays the loop already holds (the controller's outputs, the plant's
state, the on-times, the tanks) and packs the packet straight into the ring's next slot: no
Python-level work per field, no copy, no system call. The loop hands it those arrays as one
binding of their addresses (:class:`_Binding`, :func:`_bound_cycle_into_ring`), checked by
identity every cycle: numba's dispatcher costs about 0.1 us an argument. In ``monitor`` the
rows come from text, and :class:`thruster_hil.firmware_bridge.downlink.CycleTelemetry` builds
each packet.
:meth:`CycleStream.stats` is summary.json's ``stream``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numba
import numpy as np
from numba import carray, types
from numba.core import cgutils
from numba.extending import intrinsic

from thruster_hil.controller import cycle as cst
from thruster_hil.core.constants import R_EARTH
from thruster_hil.core.errors import UserError
from thruster_hil.core.jit import kernel
from thruster_hil.firmware_bridge import ring_sender
from thruster_hil.firmware_bridge.downlink import PACKET_BYTES, CycleTelemetry, put_cycle_ring
from thruster_hil.firmware_bridge.udp import StreamTarget, StreamUrlError, UdpSender, resolve
from thruster_hil.sims import plant

OPTION = "--stream"
_DEG = 180.0 / math.pi
_DV, _ATT, _LEFT = cst.C_DV_ALONG, cst.C_ATT_ERR, cst.C_REMAINING
_R, _W, _M = plant.R, plant.W, plant.M
_LINK = slice(ring_sender.COUNTERS, ring_sender.COUNTERS + 4)


@kernel
def _cycle_into_ring(
    ring, ctrl, y, on_ms, executed_ms, tank_used, step, status, t_s, rtt_s, mass0_kg
):
    """One cycle's HOST_CYCLE packet into the sender's ring, from the loop's own arrays:
    ``ctrl`` the controller's outputs, ``y`` the plant's state, the commanded and executed
    on-times [ms], the tanks' draw [kg]; the numbers of its telemetry.csv row as
    :func:`thruster_hil.records.telemetry_numbers` defines them, in the same floating-point
    operations as the stream's Python code used before the ring (so the packets are those it
    sent, bit for bit: tests/test_stream.py). True if it was published (False: the ring was
    full, counted)."""
    r = math.sqrt(y[_R] * y[_R] + y[_R + 1] * y[_R + 1] + y[_R + 2] * y[_R + 2])
    return put_cycle_ring(
        ring,
        on_ms,
        executed_ms,
        tank_used,
        step,
        status,
        t_s,
        ctrl[_DV],
        ctrl[_LEFT],
        (r - R_EARTH) * 1e-3,
        ctrl[_ATT] * _DEG,
        y[_W] * _DEG,
        y[_W + 1] * _DEG,
        y[_W + 2] * _DEG,
        mass0_kg - y[_M],
        rtt_s * 1e3,
    )


@intrinsic
def _at(typingctx, address):
    """An int64 address as numba's void pointer, for :func:`numba.carray`."""
    if not isinstance(address, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], cgutils.voidptr_t)

    return types.voidptr(address), codegen


#: The words of a binding (:class:`_Binding`): each array's address and length, then the
#: stack's initial mass [kg] as float64 bits.
_B_RING, _B_CTRL, _B_Y, _B_ON, _B_EXEC, _B_TANKS = 0, 2, 4, 6, 8, 10
_B_MASS0 = 12
_B_WORDS = 13


@kernel
def _bound_cycle_into_ring(binding, step, status, t_s, rtt_s):
    """:func:`_cycle_into_ring` on the arrays a binding points at (:class:`_Binding`): one
    array and four numbers through numba's dispatcher rather than six arrays and five numbers,
    each array argument costing the loop about 0.1 us a call to type and unbox (measured:
    benchmarks/stream.py --loop-side)."""
    b = binding
    return _cycle_into_ring(
        carray(_at(b[_B_RING]), b[_B_RING + 1], np.uint8),
        carray(_at(b[_B_CTRL]), b[_B_CTRL + 1], np.float64),
        carray(_at(b[_B_Y]), b[_B_Y + 1], np.float64),
        carray(_at(b[_B_ON]), b[_B_ON + 1], np.uint16),
        carray(_at(b[_B_EXEC]), b[_B_EXEC + 1], np.uint16),
        carray(_at(b[_B_TANKS]), b[_B_TANKS + 1], np.float64),
        step,
        status,
        t_s,
        rtt_s,
        b.view(np.float64)[_B_MASS0],
    )


class _Binding:
    """Where the loop's arrays are, for :func:`_bound_cycle_into_ring`: their addresses and
    lengths in :attr:`words`, and the arrays themselves, held here so that their memory lives
    as long as the binding points at it. :meth:`bind` takes only what the kernel reads safely
    (1-d, C-contiguous, of its dtype, long enough for the indices it reads); the stream
    checks every cycle that the loop's arrays are still these objects, and binds again (or
    calls the 11-argument kernel) when they are not."""

    _DTYPES = (np.float64, np.float64, np.uint16, np.uint16, np.float64)
    _MIN_LEN = (max(_DV, _ATT, _LEFT) + 1, max(_R + 3, _W + 3, _M + 1), 0, 0, 0)

    def __init__(self, ring: np.ndarray, mass0_kg: float):
        self.words = np.zeros(_B_WORDS, np.int64)
        self.words.view(np.float64)[_B_MASS0] = mass0_kg
        self._ring = ring
        self.arrays: tuple = ()
        if not self._fits(ring, np.uint8, 0):
            raise ValueError("the stream's ring is not a C-contiguous uint8 array")
        self.words[_B_RING : _B_RING + 2] = ring.ctypes.data, ring.size

    @staticmethod
    def _fits(a, dtype, min_len: int) -> bool:
        return (
            isinstance(a, np.ndarray)
            and a.ndim == 1
            and a.dtype == dtype
            and a.flags.c_contiguous
            and a.size >= min_len
        )

    def bind(self, ctrl, y, on_ms, executed_ms, tank_used) -> bool:
        """Point the binding at these arrays; False (and bound to nothing) if one of them is
        not what the kernel can read through an address."""
        arrays = (ctrl, y, on_ms, executed_ms, tank_used)
        self.arrays = ()
        self.words[_B_CTRL:_B_MASS0] = 0  # (nothing is read through it until bound again)
        for a, dtype, n in zip(arrays, self._DTYPES, self._MIN_LEN, strict=True):
            if not self._fits(a, dtype, n):
                return False
        for i, a in enumerate(arrays):
            at = _B_CTRL + 2 * i
            self.words[at : at + 2] = a.ctypes.data, a.size
        self.arrays = arrays
        return True


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


def _warm_up(n_thrusters: int, n_tanks: int) -> None:
    """Load (or compile) the ring kernels now, not in the first control cycle, on a ring of
    their own typed as the loop's arrays are (nothing is sent), and check that each one's
    packet is the reference builder's: the kernel on the arrays (:func:`_cycle_into_ring`) and
    the one on a binding (:func:`_bound_cycle_into_ring`), which the loop calls. numba's cache
    checks a kernel's own file only: a copy cached before downlink.py or ring_sender.py changed
    (the packer inlined, the ring's layout as constants) would pack the old way in silence;
    such a copy is compiled afresh here instead."""
    on_ms = np.arange(n_thrusters, dtype=np.uint16)
    tanks = np.linspace(0.5, 1.0, n_tanks)
    ctrl, y = np.full(_LEFT + 1, 0.25), np.linspace(-1e-3, 1e-3, _M + 1)
    y[_R] = R_EARTH + 4.2e5
    y[_M] = 4.5e5
    tm = CycleTelemetry(n_thrusters, n_tanks)
    r = y[_R : _R + 3].tolist()
    alt = (math.sqrt(r[0] * r[0] + r[1] * r[1] + r[2] * r[2]) - R_EARTH) * 1e-3
    w = [v * _DEG for v in y[_W : _W + 3].tolist()]
    numbers = [0.25, 0.25, alt, 0.25 * _DEG, *w, 4.6e5 - float(y[_M]), 2.0]
    want = tm.packet(7, 3, 0.125, *numbers, on_ms, on_ms, tanks)

    def packs(bound: bool) -> bool:
        ring = np.zeros(ring_sender.ring_bytes(1), np.uint8)
        words = ring[: ring_sender.HEADER_BYTES].view(np.int64)
        words[ring_sender.N_SLOTS], words[ring_sender.SEQ] = 1, 0x3FFF
        if bound:
            binding = _Binding(ring, 4.6e5)
            if not binding.bind(ctrl, y, on_ms, on_ms.copy(), tanks):
                return False
            _bound_cycle_into_ring(binding.words, 7, 3, 0.125, 0.002)
        else:
            _cycle_into_ring(ring, ctrl, y, on_ms, on_ms, tanks, 7, 3, 0.125, 0.002, 4.6e5)
        start = ring_sender.HEADER_BYTES
        got = ring[start : start + PACKET_BYTES].tobytes()
        return words[ring_sender.PUBLISHED] == 1 and got == want

    for bound in (False, True):
        if not packs(bound):
            (_bound_cycle_into_ring if bound else _cycle_into_ring).recompile()
            if not packs(bound):
                raise RuntimeError(
                    "the stream's ring kernel does not pack HOST_CYCLE as downlink.py does"
                )


class CycleStream:
    """One ``--stream``: a packet built from each cycle and published in the sender process's
    ring (:class:`UdpSender`); what cannot be sent is dropped and counted."""

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
            _warm_up(n_thrusters, n_tanks or 0)  # before the sender: a failure leaves nothing
        try:
            self.sender = UdpSender(target, PACKET_BYTES)
        except StreamUrlError as exc:
            raise UserError(target.url, str(exc), field=OPTION) from None
        self._ring, self._words = self.sender.ring, self.sender.words
        self._mass0 = float(mass0_kg)
        self._link = link_counters
        self._link_cell: list = [link_counters]
        self._submit = self.sender.submit
        self._header: list[str] | None = None
        self._cycle_sink()

    def set_link_counters(self, counters: Callable[[], Sequence[int]] | None) -> None:
        """Where each packet's link counters come from from now on (None: zeros)."""
        self._link = counters
        self._link_cell[0] = counters  # what the closures of _cycle_sink read each cycle

    def _telemetry(self, n_thrusters: int, n_tanks: int) -> None:
        try:
            self._tm = CycleTelemetry(n_thrusters, n_tanks)
            self._counters = self._tm.counters
        except ValueError as exc:
            raise UserError(self.target.url, str(exc), field=OPTION) from None

    # ---- a run: the runner's per-cycle info ------------------------------------------------
    def on_cycle(self, k: int, info: dict) -> None:
        """The ``on_cycle`` sink of a run: the same numbers as its telemetry.csv row, packed
        by one kernel from the arrays in ``info`` into the sender's ring. (Replaced per
        instance by :meth:`_cycle_sink`'s closure, which does the same with fewer look-ups.)"""
        self._cycle_sink()(k, info)

    def after(self, first: Callable[[int, dict], None]) -> Callable[[int, dict], None]:
        """An ``on_cycle`` sink for the runner that calls ``first`` (the run's records, and
        its view if any) and then packs the cycle's packet: :meth:`on_cycle` after ``first``
        in one closure, a Python call a cycle fewer than a wrapper calling the two."""
        return self._cycle_sink(first)

    def _cycle_sink(self, first=None) -> Callable[[int, dict], None]:
        """:meth:`on_cycle` as a closure over what it needs (after ``first``, if given): it
        runs every control cycle, where each attribute look-up is a measurable part of the
        stream's cost. The loop's arrays are the same objects cycle after cycle, so the kernel
        is handed one binding that points at them (:class:`_Binding`); each cycle checks that
        they still are the bound ones (five identity tests) before the kernel reads them. The
        kernel is called as compiled for the binding's and the numbers' types, without numba's
        dispatcher typing the arguments each call."""
        ring, mass0, link_cell, words = self._ring, self._mass0, self._link_cell, self._words
        binding = _Binding(ring, mass0)
        b_words = binding.words
        put = _bound_cycle_into_ring
        if hasattr(put, "compile"):  # (a test may put a plain function in the kernel's place)
            put = put.compile(
                (numba.typeof(b_words), numba.int64, numba.int64, numba.float64, numba.float64)
            )
        put_arrays = _cycle_into_ring
        cc = y = on = ex = tanks = None
        bound = False

        def on_cycle(k: int, info: dict) -> None:
            nonlocal cc, y, on, ex, tanks, bound
            if first is not None:
                first(k, info)
            link = link_cell[0]
            if link is not None:  # a serial unit: its counters, read every cycle
                words[_LINK] = link()
            c = info["ctrl"]
            if (
                c.ctrl is not cc
                or info["y"] is not y
                or c.on_ms is not on
                or info["executed_ms"] is not ex
                or info["tank_used"] is not tanks
            ):  # the first cycle, or a loop that replaced an array: bind (again)
                cc, y, on, ex, tanks = (
                    c.ctrl,
                    info["y"],
                    c.on_ms,
                    info["executed_ms"],
                    info["tank_used"],
                )
                bound = binding.bind(cc, y, on, ex, tanks)
            rtt_s = info.get("rtt_s") or 0.0
            if bound:
                put(b_words, k, info["status"], info["t_s"], rtt_s)
            else:  # arrays the binding does not take: numba converts them, as before
                put_arrays(ring, cc, y, on, ex, tanks, k, info["status"], info["t_s"], rtt_s, mass0)

        if first is None:
            self.on_cycle = on_cycle
        return on_cycle

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
        """The drops so far (the ring's and the sender process's) into the next packets."""
        self._counters[4] = self.sender.dropped

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
