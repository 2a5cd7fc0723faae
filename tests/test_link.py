"""The thin driver (firmware_bridge/link.py) over real ports: the pty emulator, loop://, and
ports that do not open. The protocol logic it drives is tested deterministically in
tests/test_session.py; here only what needs a port: one thread reads, decodes, steps, encodes
and writes; STOP_ALL on close; one-line errors for ports; the polling fallback of a port without
a descriptor. Waits are bounded by replies (the emulator answers), never by sleeps."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import serial
from thruster_hil.firmware_bridge import codec
from thruster_hil.firmware_bridge.dictionary import FLAG_RETRANSMIT
from thruster_hil.firmware_bridge.emulator import EmulatorProcess
from thruster_hil.firmware_bridge.link import FireResult, Link, LinkError

from thruster_hil.core.errors import UserError

# Slow tier (`-m "not slow"` leaves it out): drives the link over a real pty against the emulator
# process.
pytestmark = pytest.mark.slow

WAIT = 5.0  # generous bound on a reply the emulator sends at once


@pytest.fixture(scope="module")
def emu():
    with EmulatorProcess(channels=24) as e:
        yield e


@pytest.fixture
def link(emu):
    lk = Link(emu.port, ping_burst=4)
    lk.connect(mode="lockstep", period_ms=100)
    yield lk
    lk.close()


def test_connect_arm_fire_over_the_emulator(link):
    link.arm(100)
    res = link.fire(1, list(range(10, 28)))  # (none under the minimum on-time)
    assert res.step == 1 and res.executed_ms == tuple(range(10, 28)) and res.complete
    st = link.stats()
    assert st["link_up"] and st["armed"] and st["rtt_samples"] >= 5


def test_fire_chain_runs_every_step_on_the_calling_thread_in_order(link):
    """read -> decode -> step -> encode -> write on one thread: on_result runs on the caller's
    thread, and it is told it must not wait (on_reader_thread)."""
    link.arm(100, next_step=10)
    seen: list[FireResult] = []
    threads, inside = set(), []

    def on_result(res: FireResult):
        threads.add(threading.current_thread())
        inside.append(link.on_reader_thread())
        seen.append(res)
        return None if res.step == 40 else (res.step + 1, np.full(18, res.step % 50, np.uint16))

    link.fire_chain(10, np.full(18, 3, np.uint16), on_result)
    assert [r.step for r in seen] == list(range(10, 41))
    assert threads == {threading.current_thread()} and all(inside)
    assert not link.on_reader_thread()
    for r in seen[1:]:
        assert r.executed_ms == ((r.step - 1) % 50,) * 18


def test_fire_chain_raises_what_on_result_raised_and_is_lockstep_only(link):
    link.arm(100)

    class Boom(Exception):
        pass

    def on_result(res):
        raise Boom(res.step)

    with pytest.raises(Boom):
        link.fire_chain(1, [1] * 18, on_result)
    link.s.mode = "realtime"
    with pytest.raises(LinkError, match="LOCKSTEP"):
        link.fire_chain(2, [1] * 18, lambda r: None)


def test_close_sends_stop_all_confirmed_and_is_idempotent(emu):
    seen: list[tuple[str, bytes]] = []
    lk = Link(emu.port, ping_burst=2, on_bytes=lambda d, _t, data: seen.append((d, data)))
    lk.connect()
    lk.arm(100)
    assert lk.close(confirm_timeout_s=WAIT) is True
    assert not lk.is_up and not lk.armed
    assert lk.close() is None  # closed: nothing sent, nothing raised
    tx = [data for d, data in seen if d == "tx"]
    assert tx[-1].count(b"\x00") == 2  # STOP_ALL and its RETRANSMIT copy, one write


def test_stop_all_is_sent_even_with_the_link_judged_down(emu):
    with Link(emu.port, ping_burst=2) as lk:
        lk.connect()
        lk.arm(100)
        lk._mark_down("judged down")  # noqa: SLF001 - what a failed read does
        assert not lk.is_up
        with pytest.raises(LinkError, match="link is down"):
            lk.fire(1, [1] * 18)
        assert lk.stop_all(confirm_timeout_s=WAIT) is True


def test_a_busy_port_is_a_one_line_user_error(link, emu):
    other = Link(emu.port)
    with pytest.raises(UserError) as exc:
        other.open()
    text = str(exc.value)
    assert "\n" not in text and text.startswith(emu.port) and "in use" in text


def test_missing_port_and_unknown_scheme_are_one_line_user_errors(tmp_path):
    path = str(tmp_path / "ttyNOPE0")
    with pytest.raises(UserError, match="no such port") as exc:
        Link(path).open()
    assert "\n" not in str(exc.value) and str(exc.value).startswith(path)
    with pytest.raises(UserError, match="not a port path or a pyserial URL"):
        Link("nosuch://thing").open()


def test_loop_url_is_polled_and_captured_both_ways():
    seen: list[tuple[str, int, bytes]] = []
    lk = Link("loop://", on_bytes=lambda d, t, data: seen.append((d, t, data)))
    lk.open()
    assert lk.is_up and isinstance(lk._ser, serial.SerialBase) and lk._fd is None  # noqa: SLF001
    with pytest.raises(LinkError, match="no PONG"):
        lk.ping(timeout_s=0.05)  # the loop echoes our PING: nobody answers it
    tx = b"".join(d for k, _, d in seen if k == "tx")
    rx = b"".join(d for k, _, d in seen if k == "rx")
    assert tx and rx == tx and all(t > 0 for _, t, _ in seen)
    st = lk.stats()
    assert st["frames_sent"] == 1 and st["unexpected_messages"] == 1
    lk.close()
    assert not lk.is_up


def test_a_dropped_fire_is_resent_over_the_pty(emu):
    """The emulator drops frames it is told to; the driver's timers resend (RETRANSMIT)."""
    sent: list[bytes] = []
    with EmulatorProcess(channels=24, faults="drop=0.05,seed=5") as lossy:
        lk = Link(
            lossy.port, ping_burst=20, on_bytes=lambda d, _t, data: d == "tx" and sent.append(data)
        )
        try:
            lk.connect()
            lk.arm(100)
            for step in range(1, 200):
                assert lk.fire(step, [20] * 18).executed_ms == (20,) * 18
            assert lk.stats()["retries"] > 0
        finally:
            lk.close()
    dec = codec.Decoder()
    frames = [m for chunk in sent for m in dec.feed(chunk) if isinstance(m, codec.Message)]
    assert any(m.name == "FIRE" and m.flags & FLAG_RETRANSMIT for m in frames)
