"""The host session and the unit core wired together in memory, on one fake clock.

No pty, no threads, no sleeps: :meth:`Bench.run` polls an operation of the
:class:`~thruster_hil.firmware_bridge.session.HostSession`, carries what it queued to the
:class:`~thruster_hil.firmware_bridge.unit.UnitCore` after a fixed one-way latency, carries the
unit's answers back the same way, runs the unit's timers, and jumps the clock to the next thing
that happens (a frame arriving, the operation's deadline, the unit's next timer). Hooks decide
per frame how many copies arrive (0: dropped, 2: duplicated) in either direction, or (towards
the unit) which frame arrives instead.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable

from thruster_hil.firmware_bridge import codec
from thruster_hil.firmware_bridge.session import PENDING, HostSession
from thruster_hil.firmware_bridge.unit import UnitCore

LATENCY_NS = 100_000  # one way [ns]
UNIT_CLOCK_OFFSET_US = 1_000_000  # the unit's clock runs this far ahead of the host's
T0_NS = 10_000_000_000


def frames_of(data: bytes) -> list[bytes]:
    """The frames in ``data``, each with its 0x00 delimiter (a lone 0x00 is kept as is)."""
    out, start = [], 0
    while True:
        end = data.find(b"\x00", start)
        if end < 0:
            return out
        out.append(data[start : end + 1])
        start = end + 1


def decode(frame: bytes) -> codec.Message | None:
    return codec.decode_frame(frame[:-1]) if len(frame) > 1 else None


class Bench:
    """One host session, one unit core, one fake clock (host monotonic ns)."""

    def __init__(
        self, n_channels: int = 24, *, boot: bool = True, url: str = "mem://unit", **core_kw
    ):
        self.now_ns = T0_NS
        self.core = UnitCore(
            n_channels=n_channels,
            rng_seed=1,
            entropy=itertools.count(0x1234_5678).__next__,
            **core_kw,
        )
        self.s = HostSession(url, ping_nonce=7)
        self.s.port_opened()
        self._q: list = []
        self._n = itertools.count()
        #: Copies of a frame that reach the unit / the host: ``hook(msg) -> int``.
        self.to_unit: Callable[[codec.Message], int] | None = None
        self.to_host: Callable[[codec.Message], int] | None = None
        #: Extra one-way delay of a frame to the host [ns] (a slow line: longer frames).
        self.host_delay_ns: Callable[[codec.Message], int] | None = None
        self.sent: list[codec.Message] = []  # every frame the host wrote, decoded
        self.received: list[codec.Message] = []  # every frame the host was given
        self.writes: list[bytes] = []
        self.unit_down = False  # the unit neither reads nor sends (a cut cable)
        if boot:
            self._to_host(self.core.boot(self.unit_us()))

    def unit_us(self, t_ns: int | None = None) -> int:
        return (self.now_ns if t_ns is None else t_ns) // 1000 + UNIT_CLOCK_OFFSET_US

    def _push(self, t_ns: int, dest: str, frame: bytes) -> None:
        heapq.heappush(self._q, (t_ns, next(self._n), dest, frame))

    def _to_host(self, data: bytes) -> None:
        if self.unit_down:
            return
        for frame in frames_of(data):
            msg = decode(frame)
            copies = self.to_host(msg) if self.to_host and msg is not None else 1
            extra = self.host_delay_ns(msg) if self.host_delay_ns and msg is not None else 0
            for _ in range(copies):
                self._push(self.now_ns + LATENCY_NS + extra, "host", frame)

    def write(self, data: bytes) -> None:
        """What the host writes: recorded, then carried to the unit through the hook."""
        self.writes.append(data)
        for frame in frames_of(data):
            msg = decode(frame)
            if msg is not None:
                self.sent.append(msg)
            copies = self.to_unit(msg) if self.to_unit and msg is not None else 1
            if isinstance(copies, bytes):  # the hook's replacement for the frame
                frame, copies = copies, 1
            for _ in range(copies):
                self._push(self.now_ns + LATENCY_NS, "unit", frame)

    def inject(self, data: bytes) -> None:
        """Another writer on the line: ``data`` reaches the unit now."""
        self._to_host(self.core.receive(data, self.unit_us()))

    def _deliver(self) -> None:
        while self._q and self._q[0][0] <= self.now_ns:
            _t, _n, dest, frame = heapq.heappop(self._q)
            if dest == "unit":
                if not self.unit_down:
                    self._to_host(self.core.receive(frame, self.unit_us()))
            else:
                msg = decode(frame)
                if msg is not None:
                    self.received.append(msg)
                self.s.receive_data(frame, self.now_ns)
        due = self.core.next_deadline_us()
        if due is not None and due <= self.unit_us():
            self._to_host(self.core.tick(self.unit_us()))

    def _next_time(self, deadline_ns: int | None) -> int | None:
        times = [deadline_ns]
        if self._q:
            times.append(self._q[0][0])
        due = self.core.next_deadline_us()
        if due is not None:
            times.append((due - UNIT_CLOCK_OFFSET_US) * 1000)
        times = [t for t in times if t is not None]
        return max(self.now_ns, min(times)) if times else None

    def run(self, op, limit_s: float = 60.0):
        """Drive ``op`` to its result on the fake clock (raises what the session raises)."""
        end = self.now_ns + int(limit_s * 1e9)
        while True:
            got = self.s.poll(op, self.now_ns)
            data = self.s.data_to_send()
            if data:
                self.write(data)
            if got is not PENDING:
                return got
            t = self._next_time(op.deadline_ns)
            assert t is not None and t <= end, "the operation waits for nothing"
            due = self.core.next_deadline_us()
            if (
                t == self.now_ns
                and not (self._q and self._q[0][0] <= t)
                and not (due is not None and due <= self.unit_us())
            ):
                t += 1  # a deadline now: let the session see time pass
            self.now_ns = t
            self._deliver()

    def advance(self, dt_s: float) -> None:
        """Let ``dt_s`` pass with no operation (the unit's timers run, frames arrive)."""
        end = self.now_ns + int(dt_s * 1e9)
        while self.now_ns < end:
            self.now_ns = min(self._next_time(end), end)
            self._deliver()

    # ---- shortcuts ---------------------------------------------------------------------------

    def connect(
        self,
        mode: str = "lockstep",
        period_ms: int = 100,
        ping_burst: int = 4,
        boot_timeout_s: float = 3.0,
    ):
        return self.run(
            self.s.connect(mode, period_ms, 0xC0FFEE, self.now_ns, boot_timeout_s, ping_burst)
        )

    def arm(self, max_on_ticks: int = 100, next_step: int | None = None) -> None:
        self.run(self.s.arm(max_on_ticks, self.now_ns, next_step))

    def fire(self, step: int, on_ms, **kw):
        return self.run(self.s.fire(step, on_ms, self.now_ns, **kw))

    def frames(self, name: str) -> list[codec.Message]:
        return [m for m in self.sent if m.name == name]

    def executed(self, step: int) -> list[tuple]:
        """The unit's executed-FIRE log entries of ``step`` (one per bank executed)."""
        return [e for e in self.core.executed_log if e[1] == step]
