"""Telemetry out (issue 16, deliverable 2): ``run --stream`` and ``monitor --stream``.

Requirements checked here (docs/protocol.md, "Telemetry out"):
- every control cycle goes out as one HOST_CYCLE space packet in one UDP datagram, no framing;
- space-packet-parser, driven by our XTCE export, decodes 100 % of the datagrams of a real run to
  the same field values as our codec, and those are the run's telemetry.csv numbers;
- the packet is the one the codec makes of the same fields, for any input (hypothesis; NaN,
  infinities and out-of-range values are held to the field's range, never raised);
- the sender never raises or waits: a send that fails (ECONNREFUSED, ENOBUFS, EAGAIN, anything)
  is dropped and counted, and the counts reach summary.json;
- a bad ``--stream`` URL is one line naming the option and the value, exit 2, before any work;
- HOST_CYCLE never reaches the serial wire's artefacts (the board's C header, the COBS golden
  vectors), and the layers hold (tests/test_layers.py).
"""

from __future__ import annotations

import errno
import io
import json
import os
import select
import signal
import socket
import subprocess
import sys
from pathlib import Path

import hypothesis.strategies as st
import numpy as np
import pytest
from hypothesis import given, settings
from thruster_hil.firmware_bridge import downlink, ring_sender, udp, xtce
from thruster_hil.firmware_bridge.codec import decode_packet, encode_packet
from thruster_hil.firmware_bridge.dictionary import MESSAGES, SERIAL_MESSAGES

from thruster_hil.cli import main

ROOT = Path(__file__).resolve().parents[1]
SPEC = MESSAGES["HOST_CYCLE"]


# ---- the packet (sans-IO) --------------------------------------------------------------------

_anything = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(-5e3, 5e3),
    st.sampled_from([0.0, 0.5e-6, -0.5e-6, 1.5e-6, 2147.483647, 2147.4836475, 4294.967295]),
)


@st.composite
def cycle_args(draw):
    n = draw(st.integers(0, downlink.MAX_THRUSTERS))
    m = draw(st.integers(0, downlink.MAX_TANKS))
    ints = st.integers(-(2**40), 2**40)
    return (
        (n, m),
        [draw(ints), draw(ints)] + [draw(_anything) for _ in range(10)],
        [draw(st.integers(0, 0xFFFF)) for _ in range(n)],
        [draw(st.integers(0, 0xFFFF)) for _ in range(n)],
        [draw(_anything) for _ in range(m)],
        [draw(ints) for _ in range(5)],
    )


@settings(max_examples=300, deadline=None)
@given(cycle_args(), st.integers(0, 2**14 - 1))
def test_the_kernels_packet_is_the_codecs_for_any_input(case, seq):
    """The numba kernel's bytes are exactly what the codec encodes from the plain-Python
    reference fields, and decode back to them: any value, NaN, infinite or out of range
    included (held to the field's range, NaN as 0), any sequence count."""
    (n, m), numbers, cmd, exe, tanks, counters = case
    tm = downlink.CycleTelemetry(n, m)
    tm.counters[:] = counters
    tm.buf[2:4] = [0xC0 | ((seq - 1) % 2**14) >> 8, (seq - 1) % 2**14 & 0xFF]
    packet = tm.packet(*numbers, cmd, exe, tanks)
    fields = tm.fields(*numbers, cmd, exe, tanks)
    assert packet == encode_packet("HOST_CYCLE", seq, 0, **fields)
    assert decode_packet(packet).fields == fields and decode_packet(packet).seq == seq == tm.seq
    for f in SPEC.fields:
        values = fields[f.name] if f.count > 1 else (fields[f.name],)
        assert all(f.lo <= v <= f.hi for v in values), f.name
    assert fields["n_thrusters"] == n and fields["n_tanks"] == m
    assert not any(fields["cmd_ms"][n:]) and not any(fields["tank_used_mg"][m:])


_floats = st.floats(allow_nan=True, allow_infinity=True)


@st.composite
def loop_arrays(draw, n: int, m: int):
    """What the runner's ``info`` holds after a cycle of a stack of ``n`` thrusters and ``m``
    tanks, any values (NaN, infinities)."""
    floats = st.one_of(_floats, st.floats(-1e7, 1e7))
    u16 = st.lists(st.integers(0, 0xFFFF), min_size=n, max_size=n)
    return {
        "ctrl": np.array(draw(st.lists(floats, min_size=6, max_size=6)) + [0.0] * 76),
        "y": np.array(draw(st.lists(floats, min_size=14, max_size=14))),
        "on_ms": np.array(draw(u16), np.uint16),
        "executed_ms": np.array(draw(u16), np.uint16),
        "tank_used": np.array(draw(st.lists(floats, min_size=m, max_size=m)), np.float64),
        "k": draw(st.integers(0, 2**40)),
        "status": draw(st.integers(0, 2**20)),
        "t_s": draw(floats),
        "rtt_s": draw(st.one_of(st.none(), floats)),
        "mass0": draw(floats),
    }


def _old_stream_packet(tm: downlink.CycleTelemetry, a: dict) -> bytes:
    """The packet as the stream made it before the ring (its on_cycle, numbers taken to
    Python floats, then CycleTelemetry.put): the reference the ring kernel must equal."""
    import math

    from thruster_hil.core.constants import R_EARTH

    deg = 180.0 / math.pi
    cc, y, rtt = a["ctrl"][:6].tolist(), a["y"].tolist(), a["rtt_s"] or 0.0
    alt = (math.sqrt(y[0] * y[0] + y[1] * y[1] + y[2] * y[2]) - R_EARTH) * 1e-3
    numbers = [a["k"], a["status"], a["t_s"], cc[0], cc[5], alt, cc[4] * deg]
    numbers += [y[10] * deg, y[11] * deg, y[12] * deg, a["mass0"] - y[13], rtt * 1e3]
    return tm.put(*numbers, a["on_ms"], a["executed_ms"], a["tank_used"]).tobytes()


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_the_ring_kernel_packs_what_the_old_stream_sent(data):
    """The loop's one kernel (numbers read from the arrays, packed into a ring slot) makes the
    very bytes the stream made before from the same arrays, cycle after cycle (sequence
    counts included), for any values: handed the arrays, and handed a binding that points
    at them (what the loop calls)."""
    from thruster_hil.stream import _Binding, _bound_cycle_into_ring, _cycle_into_ring

    n = data.draw(st.integers(0, downlink.MAX_THRUSTERS))
    m = data.draw(st.integers(0, downlink.MAX_TANKS))
    cycles = data.draw(st.lists(loop_arrays(n, m), min_size=1, max_size=3))
    rings = [np.zeros(ring_sender.ring_bytes(2), np.uint8) for _ in range(2)]
    for ring in rings:
        words = ring[: ring_sender.HEADER_BYTES].view(np.int64)
        words[ring_sender.N_SLOTS], words[ring_sender.SEQ] = 2, 0x3FFF
    binding = _Binding(rings[1], 0.0)
    tm = downlink.CycleTelemetry(n, m)
    for i, a in enumerate(cycles):
        arrays = [a[key] for key in ("ctrl", "y", "on_ms", "executed_ms", "tank_used")]
        numbers = [a["k"], a["status"], a["t_s"], a["rtt_s"] or 0.0]
        assert _cycle_into_ring(rings[0], *arrays, *numbers, a["mass0"])
        binding.words.view(np.float64)[-1] = a["mass0"]
        assert binding.bind(*arrays)  # (new arrays each cycle: bound again)
        assert _bound_cycle_into_ring(binding.words, *numbers)
        want = _old_stream_packet(tm, a)
        for ring in rings:
            words = ring[: ring_sender.HEADER_BYTES].view(np.int64)
            words[ring_sender.CONSUMED] += 1  # (taken, as the sender would)
            slot = (words[ring_sender.PUBLISHED] - 1) % 2
            at = ring_sender.HEADER_BYTES + slot * ring_sender.SLOT_BYTES
            assert ring[at : at + downlink.PACKET_BYTES].tobytes() == want, i


def test_the_stream_follows_the_loops_arrays_bound_or_not():
    """CycleStream.on_cycle hands the kernel a binding that points at the loop's arrays: a
    value changed in place is sent as it is now; an array the loop replaced is bound afresh
    (never read through the old address); an array the binding does not take (here a
    strided view) goes through the 11-argument kernel. Every packet is the one the stream
    sent before the ring, on a real 127.0.0.1 socket."""
    from types import SimpleNamespace

    from thruster_hil.stream import CycleStream, resolve_option

    rng = np.random.default_rng(16)
    n, m = 5, 2

    def arrays() -> dict:
        y = rng.normal(size=14)
        y[0] += 6.8e6
        return {
            "ctrl": rng.normal(size=82),
            "y": y,
            "on_ms": rng.integers(0, 500, n).astype(np.uint16),
            "executed_ms": rng.integers(0, 500, n).astype(np.uint16),
            "tank_used": rng.random(m),
        }

    r = _receiver()
    stream = CycleStream(resolve_option(f"udp://127.0.0.1:{r.getsockname()[1]}", "run"), n, m, 9e4)
    a = arrays()
    sent = []
    for k in range(6):
        if k == 1:  # the same arrays, new values
            for key, v in arrays().items():
                a[key][:] = v
        elif k == 2:  # the loop replaced one of them
            a["y"] = arrays()["y"]
        elif k == 3:  # a report the binding does not take: every other element of a buffer
            wide = np.zeros(2 * n, np.uint16)
            wide[::2] = arrays()["executed_ms"]
            a["executed_ms"] = wide[::2]
        elif k == 4:  # bindable again
            a["executed_ms"] = arrays()["executed_ms"]
        elif k == 5:
            a["tank_used"][:] = [np.nan, 2.0]
        info = {"ctrl": SimpleNamespace(ctrl=a["ctrl"], on_ms=a["on_ms"]), "status": k + 1}
        info |= {"y": a["y"], "executed_ms": a["executed_ms"], "tank_used": a["tank_used"]}
        info |= {"t_s": 0.5 * k, "rtt_s": None if k % 2 else 1e-3}
        stream.on_cycle(k, info)
        sent.append({**info, **{key: np.copy(v) for key, v in a.items()}, "k": k, "mass0": 9e4})
    stream.close()
    assert stream.stats()["datagrams_sent"] == 6
    got = _receive(r, 6)
    r.close()
    tm = downlink.CycleTelemetry(n, m)
    assert got == [_old_stream_packet(tm, c) for c in sent]


def test_after_records_first_then_packs_with_the_link_counters_of_now():
    """``run --stream``'s sink is ``CycleStream.after(records)``: each cycle the records get it
    first, then the packet is packed (one closure, no wrapper), and link counters set after the
    sink was made (the CLI opens the unit after the stream) are in the packets from then on."""
    from types import SimpleNamespace

    from thruster_hil.stream import CycleStream, resolve_option

    rng = np.random.default_rng(18)
    n, m = 4, 1
    r = _receiver()
    stream = CycleStream(resolve_option(f"udp://127.0.0.1:{r.getsockname()[1]}", "run"), n, m, 5e4)
    order: list[tuple[str, int]] = []
    sink = stream.after(lambda k, info: order.append(("records", k)))
    y = rng.normal(size=14)
    y[0] += 6.8e6
    a = {
        "ctrl": rng.normal(size=82),
        "y": y,
        "on_ms": rng.integers(0, 500, n).astype(np.uint16),
        "executed_ms": rng.integers(0, 500, n).astype(np.uint16),
        "tank_used": rng.random(m),
    }
    tm = downlink.CycleTelemetry(n, m)
    expected = []
    for k in range(4):
        if k == 2:
            stream.set_link_counters(lambda: (7, 8, 9, 10))
            tm.counters[:4] = (7, 8, 9, 10)
        info = {"ctrl": SimpleNamespace(ctrl=a["ctrl"], on_ms=a["on_ms"]), "status": k}
        info |= {"y": a["y"], "executed_ms": a["executed_ms"], "tank_used": a["tank_used"]}
        info |= {"t_s": 0.5 * k, "rtt_s": 2e-3}
        sink(k, info)
        order.append(("published", int(stream.sender.words[ring_sender.PUBLISHED])))
        expected.append(_old_stream_packet(tm, {**info, **a, "k": k, "mass0": 5e4}))
    stream.close()
    assert order == [x for k in range(4) for x in (("records", k), ("published", k + 1))]
    got = _receive(r, 4)
    r.close()
    assert got == expected


@pytest.mark.parametrize("bound", [False, True])
@pytest.mark.parametrize("fixed_by_recompiling", [True, False])
def test_a_stale_ring_kernel_is_compiled_afresh_or_refused(
    monkeypatch, fixed_by_recompiling, bound
):
    """numba's cache checks a kernel's own file only: a cached ring kernel (on the arrays, or
    on a binding) that packs otherwise than downlink.py (here: one byte off) is compiled
    afresh at start-up, and refused if that does not help; never trusted into the loop."""
    import ctypes

    import thruster_hil.stream as stream

    name = "_bound_cycle_into_ring" if bound else "_cycle_into_ring"
    real = getattr(stream, name)

    class Stale:
        recompiled = 0

        def __call__(self, first, *args):
            real(first, *args)
            if not (fixed_by_recompiling and self.recompiled):
                at = int(first[0]) if bound else first.ctypes.data  # (a binding: the ring's)
                ctypes.c_uint8.from_address(at + ring_sender.HEADER_BYTES + 9).value ^= 1

        def recompile(self):
            self.recompiled += 1

    stale = Stale()
    monkeypatch.setattr(stream, name, stale)
    if fixed_by_recompiling:
        stream._warm_up(3, 1)
    else:
        with pytest.raises(RuntimeError, match="does not pack HOST_CYCLE as downlink.py does"):
            stream._warm_up(3, 1)
    assert stale.recompiled == 1


def test_crc16_is_binascii_crc_hqx_for_any_length():
    import binascii

    data = np.frombuffer(bytes(range(256)) * 2, np.uint8)
    for end in (0, 1, 2, 3, 4, 5, 7, 8, 220, 221, 511):
        assert downlink.crc16(data, end) == binascii.crc_hqx(data[:end].tobytes(), 0xFFFF), end


def test_values_scale_round_half_to_even_and_hold_to_range():
    tm = downlink.CycleTelemetry(2, 1)
    numbers = [7, 3, 1.0005, 0.0000025, -0.0000015, 415.5, float("nan"), 1e9, -1e9, 0.0]
    numbers += [12.5e-6, 0.25]
    f = tm.fields(*numbers, [1, 2], [3, 4], [1.0])
    assert (f["step"], f["status"], f["t_ms"]) == (7, 3, 1000)  # 1000.5 ms -> 1000 (even)
    assert (f["dv_along_umps"], f["dv_remaining_umps"]) == (2, -2)  # 2.5 -> 2, -1.5 -> -2
    assert f["altitude_mm"] == 415_500_000 and f["attitude_error_udeg"] == 0  # NaN -> 0
    assert (f["rate_x_udegps"], f["rate_y_udegps"]) == (2**31 - 1, -(2**31))
    assert (f["propellant_mg"], f["rtt_us"]) == (12, 250)
    assert f["cmd_ms"][:3] == (1, 2, 0) and f["exec_ms"][:3] == (3, 4, 0)
    assert f["tank_used_mg"] == (1_000_000, 0, 0, 0)
    assert decode_packet(tm.packet(*numbers, [1, 2], [3, 4], [1.0])).fields == f


def test_the_sequence_count_runs_on_and_wraps_at_2_14():
    tm = downlink.CycleTelemetry(1, 0)
    args = [0, 0] + [0.0] * 10 + [[0], [0], []]
    assert [decode_packet(tm.packet(*args)).seq for _ in range(3)] == [0, 1, 2]
    tm.buf[2:4] = [0xFF, 0xFE]  # last count 0x3FFE
    assert [decode_packet(tm.packet(*args)).seq for _ in range(3)] == [0x3FFF, 0, 1]


def test_too_many_thrusters_or_tanks_for_one_packet_are_refused_at_start():
    with pytest.raises(ValueError, match="at most 32 thrusters"):
        downlink.CycleTelemetry(33, 1)
    with pytest.raises(ValueError, match="at most 4 tanks"):
        downlink.CycleTelemetry(1, 5)


def test_host_cycle_is_udp_only_and_stays_off_the_serial_wire():
    """Larger than a serial frame (64 bytes) by design: not in the board's C header, not a
    COBS golden vector, and a COBS frame of it is refused as too long by our decoder."""
    sys.path.insert(0, str(ROOT / "tools"))
    import gen_c_header

    assert SPEC.udp_only and not SPEC.is_command and "HOST_CYCLE" not in SERIAL_MESSAGES
    assert all(not s.udp_only for s in SERIAL_MESSAGES.values())
    assert len(MESSAGES) == len(SERIAL_MESSAGES) + 1
    assert "HOST_CYCLE" not in gen_c_header.render_dictionary()
    golden = json.loads((ROOT / "firmware_bridge" / "golden_vectors.json").read_text())
    assert not any(v["message"] == "HOST_CYCLE" for v in golden["good"])
    assert downlink.PACKET_BYTES == 222 > 64
    from thruster_hil.firmware_bridge.codec import Decoder, FrameTooLong, encode_fields

    tm = downlink.CycleTelemetry(1, 1)
    frame = encode_fields("HOST_CYCLE", 0, 0, tm.fields(0, 0, *[0.0] * 10, [5], [5], [0.1]))
    assert isinstance(Decoder().feed(frame)[0], FrameTooLong)


def test_the_xtce_export_describes_host_cycle():
    text = xtce.xtce_bytes().decode()
    assert '<SequenceContainer name="HOST_CYCLE">' in text
    assert 'parameterRef="HOST_CYCLE_cmd_ms_31"' in text
    assert "one per datagram" in text  # the ancillary note on framing


# ---- the UDP driver --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url, why",
    [
        ("tcp://127.0.0.1:9", "scheme 'tcp'"),
        ("127.0.0.1:9", "udp://HOST:PORT"),
        ("udp://127.0.0.1", "no port"),
        ("udp://:9", "no host"),
        ("udp://127.0.0.1:0", "1..65535"),
        ("udp://127.0.0.1:65536", "1..65535"),
        ("udp://127.0.0.1:x", "1..65535"),
        ("udp://[::1:9", "udp://HOST:PORT"),
        ("udp://127.0.0.1:9/path", "nothing else"),
        ("", "no scheme"),
    ],
)
def test_bad_urls_are_named(url, why):
    with pytest.raises(udp.StreamUrlError, match=why):
        udp.resolve(url)


def test_good_urls_resolve_once():
    assert udp.parse_url("udp://127.0.0.1:5005") == ("127.0.0.1", 5005)
    assert udp.parse_url("UDP://[::1]:1") == ("::1", 1)
    target = udp.resolve("udp://localhost:65535")
    assert target.port == 65535 and target.sockaddr[1] == 65535


def test_a_host_that_does_not_resolve_is_named():
    with pytest.raises(udp.StreamUrlError, match="cannot resolve host 'no.such.host.invalid'"):
        udp.resolve("udp://no.such.host.invalid:9")


class _FailingSocket:
    """A socket whose every send fails with one error, recording what it was handed."""

    def __init__(self, exc: OSError):
        self.exc, self.handed = exc, []

    def send(self, data) -> int:
        self.handed.append(bytes(data))
        raise self.exc


def _ring(slots: int, datagram_bytes: int) -> tuple[bytearray, memoryview]:
    """A ring as the sender process sees it (bytes and int64 words), without a process."""
    ring = bytearray(ring_sender.ring_bytes(slots))
    words = memoryview(ring)[: ring_sender.HEADER_BYTES].cast("q")
    words[ring_sender.N_SLOTS], words[ring_sender.DATAGRAM_BYTES] = slots, datagram_bytes
    return ring, words


@pytest.mark.parametrize(
    "exc, cause",
    [
        (BlockingIOError(errno.EAGAIN, "would block"), ring_sender.WOULD_BLOCK),
        (OSError(errno.ENOBUFS, "no buffer space"), ring_sender.NO_BUFFERS),
        (ConnectionRefusedError(errno.ECONNREFUSED, "refused"), ring_sender.REFUSED),
        (OSError(errno.EPERM, "not permitted"), ring_sender.OTHER),
    ],
)
def test_a_send_that_fails_is_dropped_and_counted_never_raised(exc, cause):
    """The sender process's one step: every published slot handed to the socket once, in
    order, as exactly one datagram; a failure is counted by cause, never retried or raised,
    and the slots are released (CONSUMED) all the same."""
    ring, words = _ring(4, 3)
    for i in range(6):  # six packets through four slots: the sender took the first two
        at = ring_sender.HEADER_BYTES + (i % 4) * ring_sender.SLOT_BYTES
        ring[at : at + 3] = bytes([i, i, i])
        if i == 2:
            words[ring_sender.PUBLISHED] = 2
            sock = _FailingSocket(exc)
            assert ring_sender.send_published(sock, memoryview(ring), words) == 2
    words[ring_sender.PUBLISHED] = 6
    sock = _FailingSocket(exc)
    assert ring_sender.send_published(sock, memoryview(ring), words) == 4
    assert sock.handed == [bytes([i, i, i]) for i in range(2, 6)]
    assert ring_sender.send_published(sock, memoryview(ring), words) == 0
    assert (words[ring_sender.CONSUMED], words[ring_sender.SENT], words[cause]) == (6, 0, 6)
    others = set(ring_sender.SENDER_CAUSES) - {cause}
    assert all(words[w] == 0 for w in others)


def _senders(monkeypatch) -> list:
    """Every UdpSender made from now on (to check its process afterwards)."""
    made = []
    start = udp.UdpSender._start

    def recorded(self, sock):
        start(self, sock)
        made.append(self)

    monkeypatch.setattr(udp.UdpSender, "_start", recorded)
    return made


def _assert_ended(sender) -> None:
    """The sender process has exited by itself (0) and been waited for: its pid is gone."""
    assert sender.process.returncode == 0
    with pytest.raises(ProcessLookupError):
        os.kill(sender.process.pid, 0)


def _hold(sender) -> None:
    """Stop the sender process and wait until it is stopped: it takes nothing from the ring
    until :func:`_release` (a blocked sender, without any timing)."""
    os.kill(sender.process.pid, signal.SIGSTOP)
    _, status = os.waitpid(sender.process.pid, os.WUNTRACED)
    assert os.WIFSTOPPED(status)


def _release(sender) -> None:
    os.kill(sender.process.pid, signal.SIGCONT)


def test_a_full_ring_drops_in_the_loop_and_counts_exactly():
    """submit() only writes a slot and publishes it; while the sender is blocked, the ring's
    every slot fills and each further datagram is dropped (ring_full), never waited for; the
    sender then sends what was published, in order, and ends with the stream."""
    r = _receiver()
    sender = udp.UdpSender(udp.resolve(f"udp://127.0.0.1:{r.getsockname()[1]}"), 1, 3)
    _hold(sender)
    assert [sender.submit(bytes([i])) for i in range(5)] == [True, True, True, False, False]
    assert sender.dropped_by_cause == {"ring_full": 2} and sender.sent == 0
    _release(sender)
    sender.close()
    _assert_ended(sender)
    assert (sender.sent, sender.dropped, sender.dropped_by_cause) == (3, 2, {"ring_full": 2})
    assert _receive(r, 3) == [b"\x00", b"\x01", b"\x02"]
    r.close()
    with pytest.raises(ValueError, match="2 bytes on a stream of 1"):
        sender.submit(b"xx")


def test_the_kernel_drops_on_a_full_ring_and_the_gap_shows():
    """put_cycle_ring with nobody taking from a ring of 3 slots: 3 packets published, the next
    2 dropped and counted (RING_FULL); their sequence counts are skipped, and the next packet,
    once a slot is free, says 2 dropped."""
    ring = np.zeros(ring_sender.ring_bytes(3), np.uint8)
    words = ring[: ring_sender.HEADER_BYTES].view(np.int64)
    words[ring_sender.N_SLOTS], words[ring_sender.SEQ] = 3, 0x3FFF
    z = np.zeros(1, np.uint16)
    args = (z, z, np.zeros(0), 0, 0, *[0.0] * 10)
    put = downlink.put_cycle_ring
    assert [put(ring, *args) for _ in range(5)] == [True, True, True, False, False]
    assert (words[ring_sender.PUBLISHED], words[ring_sender.RING_FULL]) == (3, 2)
    slots = ring[ring_sender.HEADER_BYTES :].reshape(3, ring_sender.SLOT_BYTES)
    got = [decode_packet(slots[i, : downlink.PACKET_BYTES].tobytes()) for i in range(3)]
    assert [(p.seq, p["stream_dropped"]) for p in got] == [(0, 0), (1, 0), (2, 0)]
    words[ring_sender.CONSUMED] = 1  # the sender took one
    assert put(ring, *args) and not put(ring, *args)
    last = decode_packet(slots[0, : downlink.PACKET_BYTES].tobytes())
    assert (last.seq, last["stream_dropped"], words[ring_sender.RING_FULL]) == (5, 2, 3)


def test_the_sender_process_is_the_standard_library_only():
    """It starts in milliseconds: no numba, no numpy, none of the package's heavy modules."""
    code = "import json, sys, thruster_hil.firmware_bridge.ring_sender as m\n"
    code += "print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True)
    modules = set(json.loads(out.stdout))
    assert "numba" not in modules and "numpy" not in modules
    ours = {m for m in modules if m.startswith("thruster_hil")}
    assert ours == {"thruster_hil", "thruster_hil.firmware_bridge", udp.SENDER_MODULE}


def test_the_sender_process_ends_with_its_parent_however_it_dies(tmp_path):
    """A process that starts a stream and is killed (SIGKILL: no clean-up runs) leaves no
    sender: the kernel closes the sender's stdin pipe, and at its end of file it exits."""
    r = _receiver()
    script = (
        "import sys\n"
        "from thruster_hil.firmware_bridge import udp\n"
        f"s = udp.UdpSender(udp.resolve('udp://127.0.0.1:{r.getsockname()[1]}'), 4)\n"
        "s.submit(b'last')\n"
        "print(s.process.pid, flush=True)\n"
        "sys.stdin.read()\n"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    pid = int(parent.stdout.readline())
    pidfd = os.pidfd_open(pid)  # the sender, held before its parent dies: no pid reuse
    try:
        parent.kill()
        parent.wait()
        # the guard is generous, not a measurement: the sender exits at once
        assert select.select([pidfd], [], [], 60)[0] == [pidfd], "the sender outlived its parent"
    finally:
        os.close(pidfd)
        parent.stdin.close()
        parent.stdout.close()
    assert _receive(r, 1) == [b"last"]  # what was published before the end still went out
    r.close()


def test_the_sender_is_kept_off_the_loops_core():
    """The loop keeps its core: the sender may run on every CPU allowed but the one the loop's
    thread ran on when the stream started (with one CPU, anywhere), and it is nicer than the
    run (NICER), so the loop wins where they meet after all."""
    sender = udp.UdpSender(udp.resolve("udp://127.0.0.1:9"), 1)
    try:
        mine, its = os.sched_getaffinity(0), os.sched_getaffinity(sender.process.pid)
        nice = os.getpriority(os.PRIO_PROCESS, sender.process.pid)  # (set before it said ready)
    finally:
        sender.close()
    assert nice == min(19, os.getpriority(os.PRIO_PROCESS, 0) + ring_sender.NICER)
    if len(mine) > 1:
        assert its < mine and len(its) == len(mine) - 1
    else:
        assert its == mine


def test_the_sender_ignores_ctrl_c_and_the_parent_ends_it():
    """Ctrl-C reaches the whole process group: the sender goes on (the run stops the burn in
    order, then ends the stream), and sends what is published after it."""
    r = _receiver()
    sender = udp.UdpSender(udp.resolve(f"udp://127.0.0.1:{r.getsockname()[1]}"), 2)
    os.kill(sender.process.pid, signal.SIGINT)
    sender.submit(b"ok")
    sender.close()
    _assert_ended(sender)
    assert _receive(r, 1) == [b"ok"] and sender.sent == 1
    r.close()


def _batch_ring(slots: int, datagram_bytes: int, sock: socket.socket):
    """A ring in an anonymous mapping with the sender process's batch sender on it."""
    import mmap

    mapping = mmap.mmap(-1, ring_sender.ring_bytes(slots))
    words = memoryview(mapping)[: ring_sender.HEADER_BYTES].cast("q")
    words[ring_sender.N_SLOTS], words[ring_sender.DATAGRAM_BYTES] = slots, datagram_bytes
    return mapping, words, ring_sender.BatchSender(sock, mapping, words)


def _publish(mapping, words, data: bytes) -> None:
    i = words[ring_sender.PUBLISHED]
    at = ring_sender.HEADER_BYTES + i % words[ring_sender.N_SLOTS] * ring_sender.SLOT_BYTES
    mapping[at : at + len(data)] = data
    words[ring_sender.PUBLISHED] = i + 1


def test_the_batch_sender_sends_each_slot_once_in_order_across_the_wrap():
    """sendmmsg, a batch a call: slots 2, 3, 0, 1 of a ring of 4 (the wrap splits the batch),
    each one datagram of exactly its bytes, in order."""
    r = _receiver()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect(r.getsockname())
        mapping, words, batch = _batch_ring(4, 2, sock)
        for _ in range(2):
            _publish(mapping, words, b"--")
        words[ring_sender.CONSUMED] = 2  # as if sent before
        for i in range(4):
            _publish(mapping, words, bytes([i, i]))
        assert batch.send_published() == 4 and batch.send_published() == 0
        assert (words[ring_sender.SENT], words[ring_sender.CONSUMED]) == (4, 6)
        batch.close()
    assert _receive(r, 4) == [bytes([i, i]) for i in range(4)]
    r.close()


def _gso_supported() -> bool:
    """Whether this kernel takes UDP segmentation offload on a UDP socket (Linux 4.18+)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.setsockopt(ring_sender.SOL_UDP, ring_sender.UDP_SEGMENT, downlink.PACKET_BYTES)
        except OSError:
            return False
    return True


def _packets(n: int) -> list[bytes]:
    """``n`` distinct HOST_CYCLE packets: step and sequence count 0, 1, ..."""
    tm = downlink.CycleTelemetry(3, 1)
    return [tm.packet(k, 0, *[1e-3 * k] * 10, [k, 1, 2], [k, 3, 4], [0.5]) for k in range(n)]


def _wrapped_batch(mapping, words, packets: list[bytes], start: int) -> None:
    """``packets`` published from packet number ``start`` on (as if the ones before were
    sent), so that the batch runs over the ring's end."""
    words[ring_sender.PUBLISHED] = words[ring_sender.CONSUMED] = start
    for packet in packets:
        _publish(mapping, words, packet)


@pytest.mark.skipif(not _gso_supported(), reason="this kernel has no UDP GSO (Linux < 4.18)")
def test_the_gso_sender_sends_each_packet_once_in_order_one_datagram_each():
    """UDP segmentation offload: 150 HOST_CYCLE packets (slots 130..199 and 0..79 of a ring
    of 200) go in messages of up to 64 slots, and the kernel delivers each packet as one
    datagram of exactly its bytes, once, in order, on a real 127.0.0.1 socket."""
    r = _receiver()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect(r.getsockname())
        mapping, words, batch = _batch_ring(200, downlink.PACKET_BYTES, sock)
        assert batch.gso and words[ring_sender.SEND_PATH] == 2
        packets = _packets(150)
        _wrapped_batch(mapping, words, packets, 130)
        assert batch.send_published() == 150 and batch.send_published() == 0
        assert (words[ring_sender.SENT], words[ring_sender.CONSUMED]) == (150, 280)
        assert words[ring_sender.GSO_REFUSED] == 0 and batch.gso
        assert not any(words[w] for w in ring_sender.SENDER_CAUSES)
        batch.close()
    got = _receive(r, 150)
    r.close()
    assert got == packets
    assert [decode_packet(d)["step"] for d in got] == list(range(150))


def test_without_gso_on_the_socket_each_packet_is_one_message():
    """A socket that refuses the option (here AF_UNIX datagrams: EOPNOTSUPP, as a kernel
    before 4.18 refuses it with ENOPROTOOPT): sendmmsg a datagram a message, every packet
    once, in order, across the wrap; the refusal is kept (GSO_REFUSED)."""
    here, there = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with here, there:
        mapping, words, batch = _batch_ring(8, downlink.PACKET_BYTES, here)
        assert not batch.gso and words[ring_sender.SEND_PATH] == 1
        assert words[ring_sender.GSO_REFUSED] in (errno.EOPNOTSUPP, errno.ENOPROTOOPT)
        packets = _packets(7)
        _wrapped_batch(mapping, words, packets, 5)
        assert batch.send_published() == 7 and words[ring_sender.SENT] == 7
        batch.close()
        there.settimeout(60)
        assert _receive(there, 7) == packets


def _udplite_pair() -> tuple[socket.socket, socket.socket]:
    try:
        r = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDPLITE)
    except (AttributeError, OSError) as exc:
        pytest.skip(f"this kernel has no UDP-Lite sockets ({exc})")
    r.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    r.bind(("127.0.0.1", 0))
    r.settimeout(60)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDPLITE)
    s.connect(r.getsockname())
    return r, s


@pytest.mark.skipif(not _gso_supported(), reason="this kernel has no UDP GSO (Linux < 4.18)")
def test_gso_refused_by_a_send_falls_back_to_a_datagram_a_message_losing_nothing():
    """The kernel takes the option but refuses the send (UDP-Lite cannot checksum a GSO
    packet: EIO, as a route through IPsec or without checksum offload would): the sender
    clears the option, keeps the errno, and sends the same packets a datagram a message:
    every one once, in order, none counted dropped; later batches go the same way."""
    r, sock = _udplite_pair()
    with r, sock:
        mapping, words, batch = _batch_ring(100, downlink.PACKET_BYTES, sock)
        assert batch.gso
        packets = _packets(90)
        _wrapped_batch(mapping, words, packets[:80], 40)
        assert batch.send_published() == 80
        assert not batch.gso and words[ring_sender.GSO_REFUSED] == errno.EIO
        assert words[ring_sender.SEND_PATH] == 1
        for packet in packets[80:]:
            _publish(mapping, words, packet)
        assert batch.send_published() == 10
        assert words[ring_sender.SENT] == 90
        assert not any(words[w] for w in ring_sender.SENDER_CAUSES)
        batch.close()
        assert _receive(r, 90) == packets


def test_the_sender_looks_less_often_only_while_packets_trickle_in():
    """The sender's pause between looks (a truth table of its pacing, no clock): short before
    the first packet and after a burst, however long nothing comes; doubling after each empty
    look of a trickle (a REALTIME run's packet a period) up to IDLE_POLL_S; short again once a
    look sends anything."""
    poll, idle = ring_sender.POLL_S, ring_sender.IDLE_POLL_S
    pace = ring_sender.Pace()
    assert [pace.after(0) for _ in range(3)] == [poll] * 3  # before the first packet
    assert pace.after(500) == poll and [pace.after(0) for _ in range(5)] == [poll] * 5
    waits = [pace.after(n) for n in (1, 0, 0, 0, 0, 0, 0)]
    assert waits == [poll, 2 * poll, 4 * poll, min(8 * poll, idle), idle, idle, idle]
    assert pace.after(ring_sender.TRICKLE) == poll and pace.after(0) == 2 * poll
    assert pace.after(ring_sender.TRICKLE + 1) == poll and pace.after(0) == poll


def test_nobody_listening_is_refused_and_counted():
    """A port with no socket: the kernel answers a datagram with ICMP port-unreachable, and the
    next send fails with ECONNREFUSED: dropped, counted (refused). Then each call sends one
    datagram to ask again and, refused again, drops the rest of its batch unsent (no ICMP a
    datagram); once someone listens, everything goes again."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        sock.connect(("127.0.0.1", port))
        mapping, words, batch = _batch_ring(64, 1, sock)

        def batch_of(n: int) -> tuple[int, int]:
            sent, refused = words[ring_sender.SENT], words[ring_sender.REFUSED]
            for i in range(n):
                _publish(mapping, words, bytes([i]))
            assert batch.send_published() == n
            return words[ring_sender.SENT] - sent, words[ring_sender.REFUSED] - refused

        assert batch_of(1) == (1, 0)  # its refusal comes back as an ICMP
        assert batch_of(10) == (1, 9)  # 1 refused at once; 1 sent to ask; refused: 8 unsent
        assert batch_of(10) == (1, 9)  # asked again (its refusal consumed the last one's error)
        r = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        r.bind(("127.0.0.1", port))  # someone listens now
        r.settimeout(60)
        assert batch_of(10) in ((10, 0), (9, 1))  # (the last batch's probe may still be refused)
        batch.close()
    got = _receive(r, words[ring_sender.SENT] - 3)
    assert got[-1] == bytes([9])
    r.close()
    sender = udp.UdpSender(udp.resolve(f"udp://127.0.0.1:{port}"), 1)
    assert all(sender.submit(b"x") for _ in range(10))
    sender.close()
    assert sender.sent + sender.dropped == 10
    assert set(sender.dropped_by_cause) <= {"refused"}


# ---- the command line: bad --stream -----------------------------------------------------------

BAD_URLS = [
    "udp://no.such.host.invalid:9",
    "tcp://127.0.0.1:9",
    "udp://127.0.0.1",
    "udp://127.0.0.1:0",
    "udp://127.0.0.1:70000",
    "udp://:9",
    "http://x",
    "",
]


@pytest.mark.parametrize("url", BAD_URLS)
def test_run_with_a_bad_stream_url_is_one_line_exit_2_before_any_work(tmp_path, capsys, url):
    out = tmp_path / "run"
    argv = ["run", "--unit", "sim", "--delta-v", "0.05", "--out", str(out), "--stream", url]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("thruster-hil: error: run: --stream: ") and err.count("\n") == 1
    assert repr(url) in err and "Traceback" not in err
    assert not out.exists()  # resolved at the edge: no plan, no run directory, no unit


@pytest.mark.parametrize("url", BAD_URLS[:3])
def test_monitor_with_a_bad_stream_url_is_one_line_exit_2(tmp_path, capsys, url):
    assert main(["monitor", "--once", str(tmp_path), "--stream", url]) == 2
    err = capsys.readouterr().err
    assert err.startswith("thruster-hil: error: monitor: --stream: ") and err.count("\n") == 1
    assert repr(url) in err


def test_monitor_stream_needs_a_run_directory(capsys):
    assert main(["monitor", "--port", "loop://", "--stream", "udp://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err
    assert "--stream sends the cycles of a RUN_DIR" in err and err.count("\n") == 1


# ---- a real run, received on 127.0.0.1 ------------------------------------------------------


def _receiver() -> socket.socket:
    r = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    r.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)  # the whole short run fits
    r.bind(("127.0.0.1", 0))
    r.settimeout(60)  # a safety net for a lost datagram, not a synchronisation
    return r


def _receive(r: socket.socket, n: int) -> list[bytes]:
    """The n datagrams the sender says it sent, then nothing more waiting."""
    got = [r.recv(65536) for _ in range(n)]
    r.setblocking(False)
    with pytest.raises(BlockingIOError):
        r.recv(65536)
    return got


def _spp_definition(tmp_path: Path, capsys):
    """space-packet-parser's definition from `thruster-hil dictionary --xtce` (a missing
    package fails under CI: tests/conftest.py)."""
    spp = pytest.importorskip("space_packet_parser")
    path = tmp_path / "thruster-hil.xtce.xml"
    assert main(["dictionary", "--xtce", str(path)]) == 0
    capsys.readouterr()
    return spp.XtcePacketDefinition.from_xtce(path)


def _assert_spp_reads_it_as_our_codec(definition, packet: bytes) -> dict:
    """Every HOST_CYCLE field (array elements by their XTCE names), the header and the CRC as
    space-packet-parser reads them are our codec's values; returns our codec's fields."""
    ours = decode_packet(packet)
    assert ours.name == "HOST_CYCLE"
    got = definition.parse_bytes(packet)
    assert got["MSG_ID"] == "HOST_CYCLE" and got["CCSDS_TYPE"] == "TM"
    assert got["CCSDS_APID"] == SPEC.apid and got["CCSDS_SEQ_COUNT"] == ours.seq
    assert got["CRC"] == int.from_bytes(packet[-2:], "big")
    names = set()
    for f in SPEC.fields:
        if f.count > 1:
            elems = [xtce.parameter_name(SPEC, f, i) for i in range(f.count)]
            assert tuple(got[e] for e in elems) == ours[f.name], f.name
            names |= set(elems)
        else:
            name = xtce.parameter_name(SPEC, f)
            assert got[name] == ours[f.name], f.name
            names.add(name)
    assert names <= set(got) and len(got) == len(names) + 11  # + 10 header fields + CRC
    return ours.fields


def _rows(run: Path) -> tuple[list[str], list[list[str]]]:
    import csv

    rows = list(csv.reader(io.StringIO((run / "telemetry.csv").read_text())))
    return rows[0], rows[1:]


def _assert_matches_row(fields: dict, header: list[str], row: list[str]) -> None:
    """A packet's fields are its telemetry.csv row in the packet's units (to the last unit:
    the CSV and the packet round the same number, each to its own resolution)."""
    col = {h: i for i, h in enumerate(header)}
    assert fields["step"] == int(row[col["cycle"]])
    assert fields["t_ms"] == round(float(row[col["t_s"]]) * 1e3)
    assert fields["status"] == int(row[col["status"]])
    for name, column, scale in (
        ("dv_along_umps", "dv_along_mps", 1e6),
        ("dv_remaining_umps", "dv_remaining_mps", 1e6),
        ("altitude_mm", "altitude_km", 1e6),
        ("attitude_error_udeg", "attitude_error_deg", 1e6),
        ("rate_x_udegps", "rate_x_dps", 1e6),
        ("rate_y_udegps", "rate_y_dps", 1e6),
        ("rate_z_udegps", "rate_z_dps", 1e6),
        ("propellant_mg", "propellant_kg", 1e6),
        ("rtt_us", "rtt_ms", 1e3),
    ):
        assert abs(fields[name] - float(row[col[column]]) * scale) <= 1.0, name
    cmd = [int(row[i]) for i, h in enumerate(header) if h.startswith("cmd_ms:")]
    exe = [int(row[i]) for i, h in enumerate(header) if h.startswith("exec_ms:")]
    tanks = [float(row[i]) for i, h in enumerate(header) if h.startswith("propellant_kg:")]
    assert fields["n_thrusters"] == len(cmd) and fields["n_tanks"] == len(tanks)
    assert list(fields["cmd_ms"][: len(cmd)]) == cmd and not any(fields["cmd_ms"][len(cmd) :])
    assert list(fields["exec_ms"][: len(exe)]) == exe
    for got, kg in zip(fields["tank_used_mg"], tanks, strict=False):
        assert abs(got - kg * 1e6) <= 1.0


def test_run_streams_every_cycle_and_space_packet_parser_reads_them_all(
    tmp_path, capsys, monkeypatch
):
    """A real `run --unit sim --stream udp://127.0.0.1:PORT` (dragon: 18 thrusters, 2 tanks):
    one datagram per cycle, in order, and 100 % of them decode through the XTCE export exactly
    as through our codec, to the numbers of the run's telemetry.csv; then `monitor --once
    --stream` of the finished run sends the same cycles again from its telemetry.csv. Each
    stream's sender process has ended when the command returns."""
    senders = _senders(monkeypatch)
    definition = _spp_definition(tmp_path, capsys)
    r = _receiver()
    port = r.getsockname()[1]
    run = tmp_path / "run"
    argv = ["run", "--unit", "sim", "--stack", "dragon-boost-kit", "--delta-v", "0.05"]
    argv += ["--out", str(run), "--stream", f"udp://127.0.0.1:{port}"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    summary = json.loads((run / "summary.json").read_text())
    stream = summary["stream"]
    n = summary["cycles"]
    assert n > 50
    assert stream["datagrams_sent"] == n and stream["datagrams_dropped"] == 0
    assert stream["address"] == f"127.0.0.1:{port}" and stream["packet"] == "HOST_CYCLE"
    assert stream["send_path"] == ("udp_gso" if _gso_supported() else "sendmmsg")
    assert f"streamed {n} HOST_CYCLE datagrams to 127.0.0.1:{port} (0 dropped)" in out
    datagrams = _receive(r, n)
    header, rows = _rows(run)
    assert len(rows) == n
    for k, (datagram, row) in enumerate(zip(datagrams, rows, strict=True)):
        assert len(datagram) == downlink.PACKET_BYTES  # one packet, whole, no framing
        fields = _assert_spp_reads_it_as_our_codec(definition, datagram)
        assert decode_packet(datagram).seq == k and fields["step"] == k
        assert fields["stream_dropped"] == 0 and fields["link_frames_sent"] == 0  # sim: no link
        _assert_matches_row(fields, header, row)
    assert any(any(decode_packet(d)["exec_ms"]) for d in datagrams)  # it did fire
    assert len(senders) == 1
    _assert_ended(senders[0])

    # monitor --once --stream: the finished run's rows, sent again
    assert main(["monitor", "--once", str(run), "--stream", f"udp://127.0.0.1:{port}"]) == 0
    assert f"streamed {n} HOST_CYCLE datagrams" in capsys.readouterr().err
    again = _receive(r, n)
    r.close()
    for datagram, first, row in zip(again, datagrams, rows, strict=True):
        fields = _assert_spp_reads_it_as_our_codec(definition, datagram)
        _assert_matches_row(fields, header, row)
        same = decode_packet(first).fields
        for key in ("step", "t_ms", "status", "cmd_ms", "exec_ms", "n_thrusters", "n_tanks"):
            assert fields[key] == same[key], key
    assert len(senders) == 2
    _assert_ended(senders[1])


def test_a_run_stopped_by_ctrl_c_ends_its_sender(tmp_path, capsys, monkeypatch):
    """Ctrl-C in the middle of a streamed burn (KeyboardInterrupt out of a cycle): the run
    stops as it does without a stream, and the sender has sent every cycle flown, then ended."""
    import thruster_hil.stream as stream

    senders = _senders(monkeypatch)
    put = stream._bound_cycle_into_ring

    def interrupted(binding, k, *rest):
        put(binding, k, *rest)
        if k == 20:
            raise KeyboardInterrupt

    monkeypatch.setattr(stream, "_bound_cycle_into_ring", interrupted)
    r = _receiver()
    run = tmp_path / "run"
    argv = ["run", "--unit", "sim", "--stack", "progress", "--delta-v", "0.05", "--out", str(run)]
    assert main([*argv, "--stream", f"udp://127.0.0.1:{r.getsockname()[1]}"]) != 0
    capsys.readouterr()
    assert len(senders) == 1
    _assert_ended(senders[0])
    assert senders[0].stats()["datagrams_sent"] == 21  # cycles 0..20 (the warm-up: no ring)
    assert [decode_packet(d)["step"] for d in _receive(r, 21)] == list(range(21))
    r.close()


def test_run_to_a_port_nobody_listens_on_flies_and_counts_the_drops(tmp_path, capsys):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run = tmp_path / "run"
    argv = ["run", "--unit", "sim", "--stack", "progress", "--delta-v", "0.05", "--json"]
    assert main([*argv, "--out", str(run), "--stream", f"udp://127.0.0.1:{port}"]) == 0
    printed = json.loads(capsys.readouterr().out)
    summary = json.loads((run / "summary.json").read_text())
    stream = summary["stream"]
    assert printed["stream"] == stream
    assert stream["datagrams_sent"] + stream["datagrams_dropped"] == summary["cycles"]
    # (refusals are reported by the kernel on the sender's next call, one per batch at most)
    assert set(stream["dropped_by_cause"]) <= {"refused"}
    assert summary["completed"] and not summary["aborted"]


@pytest.mark.slow  # flies a burn through the emulator (compiles the fused loop once)
def test_an_emulator_run_streams_its_link_counters(tmp_path, capsys):
    """Through the emulator (a serial unit), every packet carries the link's counters as they
    grow, and space-packet-parser reads 100 % of them as our codec."""
    definition = _spp_definition(tmp_path, capsys)
    r = _receiver()
    run = tmp_path / "run"
    argv = ["run", "--unit", "emulator", "--stack", "progress", "--delta-v", "0.05"]
    argv += ["--out", str(run), "--stream", f"udp://127.0.0.1:{r.getsockname()[1]}"]
    assert main(argv) in (0, 1)  # 1: a starved host let the unit's watchdog end the burn
    summary = json.loads((run / "summary.json").read_text())
    n = summary["stream"]["datagrams_sent"]
    assert n == summary["cycles"] > 0 and summary["stream"]["datagrams_dropped"] == 0
    fields = [_assert_spp_reads_it_as_our_codec(definition, d) for d in _receive(r, n)]
    r.close()
    sent = [f["link_frames_sent"] for f in fields]
    received = [f["link_frames_received"] for f in fields]
    assert sent == sorted(sent) and received == sorted(received)
    assert sent[0] > 0 and sent[-1] - sent[0] >= n - 1  # a FIRE a cycle at least
    assert received[-1] <= summary["link"]["frames_received"]
    assert all(f["rtt_us"] > 0 for f in fields)
    header, rows = _rows(run)
    for f, row in zip(fields, rows, strict=True):
        _assert_matches_row(f, header, row)


def test_the_python_api_streams_too(tmp_path):
    """api.run(..., stream=URL): the same packets, one per cycle, the counts in the summary;
    a bad URL raises the CLI's one-line UserError before anything flies."""
    from thruster_hil import api

    p = api.plan("progress", delta_v_mps=0.05)
    with pytest.raises(api.UserError, match=r"run: --stream: .*'udp://127\.0\.0\.1:0'"):
        api.run(p, stream="udp://127.0.0.1:0")
    r = _receiver()
    result = api.run(p, stream=f"udp://127.0.0.1:{r.getsockname()[1]}")
    n = result.summary["cycles"]
    assert result.summary["stream"]["datagrams_sent"] == n > 0
    fields = [decode_packet(d).fields for d in _receive(r, n)]
    r.close()
    # exactly the reference builder's fields of the run's unrounded time series
    s = result.series
    tm = downlink.CycleTelemetry(len(s.thrusters), len(s.tanks))
    for k, f in enumerate(fields):
        numbers = [s.cycle[k], s.status[k], s.t_s[k], s.dv_along_mps[k], s.dv_remaining_mps[k]]
        numbers += [s.altitude_km[k], s.attitude_error_deg[k], s.rate_x_dps[k]]
        numbers += [s.rate_y_dps[k], s.rate_z_dps[k], s.propellant_kg[k], s.rtt_ms[k]]
        rows = (s.commanded_ms[k], s.executed_ms[k], s.propellant_by_tank_kg[k])
        assert f == tm.fields(*numbers, *rows), k


def test_monitor_stream_of_a_directory_that_is_not_a_run_is_one_line(tmp_path, capsys):
    """The stream's note is printed only when the monitor ran: an error stays one line."""
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "telemetry.csv").write_text("cycle,t_s\n0,x,y\n")
    assert main(["monitor", "--once", str(bad), "--stream", "udp://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("thruster-hil: error: ") and err.count("\n") == 1, err
