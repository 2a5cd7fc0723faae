"""Bench actuator checkout: every valve channel fired alone, in turn, and what the unit reports.

Modelled on QGroundControl's actuator test: before a rig flies anything, the operator checks its
wiring one valve at a time. ``thruster-hil checkout`` opens a session (HELLO; the unit stays
SAFE), shows the unit's identity (BOOT, HELLO_ACK) and health (its housekeeping), refuses a unit
that could not pass (a stuck-open or failed-off valve on a selected channel, low tank pressure,
a unit not SAFE), asks the operator before ARM, then fires each selected channel alone: one step
commands ``on_ms`` on that channel and 0 ms on every other, and the unit's VALVE_REPORT says what
it executed. Every exit (done, refused, declined, an error, Ctrl-C, SIGTERM) ends with STOP_ALL.

The session is REALTIME: a board executes LOCKSTEP FIREs in virtual time and never moves a pin
(firmware_bridge/board/main.c), and a wiring check needs the pins to move. Nothing here is timed
on the host's clock beyond generous waits: the unit's report is the evidence.

Exit status (:attr:`CheckoutResult.exit_status`): 0 every selected channel executed exactly its
command and the unit acknowledged STOP_ALL with the valves closed; 1 anything else the unit
showed (a mismatch, a missing report, a refusal, a declined prompt, a link lost mid-checkout).
Bad input raises :class:`UserError` (exit 2) before the unit is armed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from thruster_hil.core.errors import UserError
from thruster_hil.core.health import HEALTH_FAILED_OFF, HEALTH_STUCK_OPEN
from thruster_hil.core.textnum import parse_int, show
from thruster_hil.firmware_bridge.dictionary import ENUMS, EVENT_NAMES, LIMITS, STATE_NAMES
from thruster_hil.firmware_bridge.link import REPORT_ABORTED, REPORT_CLAMPED, Link, LinkError

__all__ = [
    "MAX_CHANNELS",
    "ChannelResult",
    "CheckoutResult",
    "channel_list",
    "format_channels",
    "run_checkout",
    "run_command",
]

#: HK's valve masks are 32 bits: no unit has more channels.
MAX_CHANNELS = 32
#: The longest pulse: the unit's per-pulse cap (max_on_ticks_cap) and its longest period.
MAX_ON_MS = min(LIMITS["max_on_ticks_cap"], LIMITS["period_ms_max"])
MAX_ON_TICKS = LIMITS["max_on_ticks_cap"]
MIN_PERIOD_MS = LIMITS["period_ms_min"]
MIN_FEED_KPA = LIMITS["min_feed_kpa"]
#: How long to wait for the unit's housekeeping after HELLO [s] (it sends one every 100 ms).
HK_WAIT_S = 2.0
#: A pulse's VALVE_REPORT comes when the pulse ends; it is waited for this long beyond [ms]
#: (a loaded host, QEMU's slow clock). A report that misses it is a missing report.
REPORT_SLACK_MS = 2000
#: REALTIME staleness: a FIRE is refused STALE if it arrives more than on-ms + this after the
#: previous one [ms]. The host sends each FIRE as soon as the last report is in, so only a
#: stalled host comes near it.
STALE_SLACK_MS = 5000
#: How long the final STOP_ALL's acknowledgement and the housekeeping after it are waited for [s].
STOP_CONFIRM_S = 2.0

_RESET_CAUSES = ENUMS["reset_cause"]


# ---- the channel list ------------------------------------------------------------------------


def channel_list(text: str) -> tuple[int, ...]:
    """An argparse type: ``0,3,8-11`` -> (0, 3, 8, 9, 10, 11), in the order given; channels are
    numbered from 0 (thruster i is channel i) up to MAX_CHANNELS - 1; none twice."""
    out: list[int] = []
    for item in text.split(","):
        lo_text, dash, hi_text = item.strip().partition("-")
        try:
            lo = parse_int(lo_text)
            hi = parse_int(hi_text) if dash else lo
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected channels like 0,3,8-11, got {show(text)}"
            ) from None
        if lo > hi:
            raise argparse.ArgumentTypeError(f"range {item.strip()} runs backwards")
        for ch in (lo, hi):
            if not 0 <= ch < MAX_CHANNELS:
                raise argparse.ArgumentTypeError(
                    f"channel {ch} out of range: expected 0..{MAX_CHANNELS - 1}"
                )
        for ch in range(lo, hi + 1):
            if ch in out:
                raise argparse.ArgumentTypeError(f"channel {ch} given twice in {show(text)}")
            out.append(ch)
    return tuple(out)


def format_channels(channels: Sequence[int]) -> str:
    """The shortest list ``channel_list`` reads back as these channels (sorted): 0-2,4-31."""
    parts: list[str] = []
    run: list[int] = []
    for ch in sorted(channels):
        if run and ch == run[-1] + 1:
            run.append(ch)
            continue
        if run:
            parts.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [ch]
    if run:
        parts.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(parts)


def _bits(mask: int, n: int) -> list[int]:
    return [c for c in range(n) if mask >> c & 1]


# ---- results ---------------------------------------------------------------------------------


@dataclass
class ChannelResult:
    """One channel fired alone: what was commanded and what the unit reported it executed."""

    channel: int
    step: int
    commanded_ms: int
    commanded_ticks: int
    #: From the channel's VALVE_REPORT; None when no report came.
    executed_ticks: int | None = None
    executed_ms: int | None = None
    #: Other channels the same step's reports show executing (channel -> ticks): commanded 0.
    others: dict[int, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class CheckoutResult:
    port: str
    channels: list[int] = field(default_factory=list)
    on_ms: int = 0
    identity: dict[str, Any] = field(default_factory=dict)
    health: dict[str, Any] = field(default_factory=dict)
    #: Why the unit was not armed (its health), None if it was fit.
    refused: str | None = None
    declined: bool = False
    armed: bool = False
    results: list[ChannelResult] = field(default_factory=list)
    #: A link failure that ended the firing early (one line), None if none.
    error: str | None = None
    #: The final STOP_ALL: acknowledged (True/False, None: the link was down), the channels
    #: open after it (from the unit's housekeeping; None: unknown) and that HK's state and
    #: last executed step (the unit's own record of what it fired in this session).
    stop_all: dict[str, Any] = field(default_factory=dict)
    #: The unit's EVENTs during the checkout, by name (CLAMPED, WATCHDOG_TRIP, ARMED, ...).
    unit_events: list[str] = field(default_factory=list)

    @property
    def mismatched(self) -> list[int]:
        return [r.channel for r in self.results if not r.ok]

    @property
    def stop_all_ok(self) -> bool:
        """STOP_ALL acknowledged and no valve open after it but those stuck open before the
        checkout and not selected (the operator excluded them: STOP_ALL cannot close them)."""
        opened = self.stop_all.get("open_channels")
        if not self.stop_all.get("acknowledged") or opened is None:
            return False
        return set(opened) <= set(self.health.get("stuck", ())) - set(self.channels)

    @property
    def passed(self) -> bool:
        return (
            self.armed
            and self.error is None
            and len(self.results) == len(self.channels)
            and not self.mismatched
            and self.stop_all_ok
        )

    @property
    def exit_status(self) -> int:
        return 0 if self.passed else 1

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for r, d in zip(self.results, out["results"], strict=True):
            d["ok"] = r.ok
        out.update(passed=self.passed, mismatched=self.mismatched)
        return out


# ---- what the unit says about itself ---------------------------------------------------------


def _identity(link: Link, url: str) -> dict[str, Any]:
    info = link.info
    boot = link.last_boot.msg if link.last_boot is not None else None
    cause = None if boot is None else boot["reset_cause"]
    stats = link.stats()
    return {
        "port": url,
        "fw_ver": info.fw_ver,
        "proto_ver": info.proto_ver,
        "dict_hash": f"0x{info.dict_hash:08X}",
        "n_channels": info.n_channels,
        "tick_us": info.tick_us,
        "min_on_ticks": info.min_on_ticks,
        "watchdog_ms": info.watchdog_ms,
        "boot_count": link.boot_count,
        # A board resets when its port opens and says why in BOOT; QEMU and a board without
        # auto-reset send no BOOT then: unknown.
        "reset_cause": None
        if cause is None
        else [name for name, bit in _RESET_CAUSES.items() if cause & bit] or [str(cause)],
        "test_build": info.test_build,
        "rtt_ms_p50": stats.get("rtt_ms_p50"),
    }


def _health(hk: dict[str, Any], n: int) -> dict[str, Any]:
    return {
        "state": STATE_NAMES.get(hk["state"], str(hk["state"])),
        "failed": _bits(hk["failed_mask"], n),
        "stuck": _bits(hk["stuck_mask"], n),
        "open": _bits(hk["open_mask"], n),
        "tank_kPa": hk["tank_kPa"],
        "min_feed_kPa": MIN_FEED_KPA,
        "crc_errors": hk["crc_errors"],
        "uart_overruns": hk["uart_overruns"],
    }


def _list(channels: Sequence[int]) -> str:
    return format_channels(channels) if channels else "none"


def describe_unit(ident: dict[str, Any], health: dict[str, Any]) -> list[str]:
    """The identity and health block an operator reads before saying yes."""
    cause = ident["reset_cause"]
    rtt = ident["rtt_ms_p50"]
    return [
        f"unit on {ident['port']}",
        f"  firmware    0x{ident['fw_ver']:04X}, protocol {ident['proto_ver']}, dictionary "
        f"{ident['dict_hash']} (this host's), "
        + ("TEST build (fault injection)" if ident["test_build"] else "flight build"),
        f"  boot        count {ident['boot_count']}, reset cause "
        + ("+".join(cause) if cause else "not seen (no BOOT since the port opened)"),
        f"  channels    {ident['n_channels']}, tick {ident['tick_us']} us, minimum on-time "
        f"{ident['min_on_ticks']} ticks, link watchdog {ident['watchdog_ms']} ms"
        + ("" if rtt is None else f", RTT {rtt:.1f} ms"),
        f"  state       {health['state']}; tank {health['tank_kPa']} kPa (ARM needs "
        f">= {health['min_feed_kPa']})",
        f"  valves      failed off: {_list(health['failed'])}; stuck open: "
        f"{_list(health['stuck'])}; open now: {_list(health['open'])}",
        f"  link errors CRC {health['crc_errors']}, UART overruns {health['uart_overruns']}",
    ]


def _refusal(health: dict[str, Any], channels: Sequence[int]) -> str | None:
    """Why this unit must not be armed for these channels, or None."""
    faulty = sorted((set(health["stuck"]) | set(health["failed"])) & set(channels))
    if faulty:
        kinds = [f"{ch} {'stuck open' if ch in health['stuck'] else 'failed off'}" for ch in faulty]
        rest = [ch for ch in channels if ch not in faulty]
        hint = (
            f"check the others with --channels {format_channels(rest)}"
            if rest
            else "repair it first"
        )
        return f"channel {', '.join(kinds)} (the unit's housekeeping): {hint}"
    if health["state"] != "SAFE":
        return f"the unit is {health['state']}, not SAFE after HELLO: it cannot be armed"
    if health["tank_kPa"] < health["min_feed_kPa"]:
        return (
            f"tank pressure {health['tank_kPa']} kPa is below the minimum feed pressure "
            f"{health['min_feed_kPa']} kPa: the unit refuses to arm"
        )
    return None


# ---- firing ----------------------------------------------------------------------------------


def _ticks(on_ms: int, tick_us: int) -> int:
    """on_ms in the unit's ticks, rounded as the host session rounds a FIRE's on-times."""
    return (on_ms * 1000 + tick_us // 2) // tick_us


def _fire_one(link: Link, step: int, ch: int, on_ms: int, known_bad: set[int]) -> ChannelResult:
    info = link.info
    n, tick_us = info.n_channels, info.tick_us or 1000
    ticks = _ticks(on_ms, tick_us)
    res = ChannelResult(ch, step, on_ms, ticks)
    cmd = [0] * n  # every bank every step: the unit's per-bank step floors advance together
    cmd[ch] = on_ms
    deadline = time.monotonic_ns() + (on_ms + REPORT_SLACK_MS) * 1_000_000
    fired = link.fire(step, cmd, valid_for_ms=on_ms + STALE_SLACK_MS, deadline_ns=deadline)
    bank = ch // 16
    if bank in fired.missing_banks:
        res.problems.append(f"no VALVE_REPORT within {on_ms + REPORT_SLACK_MS} ms")
        return res
    got = fired.executed_ticks[ch]
    res.executed_ticks = got
    res.executed_ms = (got * tick_us + 500) // 1000
    if got != ticks:
        res.problems.append(f"executed {got} ticks, commanded {ticks}")
    health = fired.health[ch]
    if health == HEALTH_STUCK_OPEN:
        res.problems.append("reported stuck open")
    elif health == HEALTH_FAILED_OFF:
        res.problems.append("reported failed off")
    if fired.flags & REPORT_CLAMPED:
        res.problems.append("clamped by the unit")
    if fired.flags & REPORT_ABORTED:
        res.problems.append("aborted by the unit")
    for other, t in enumerate(fired.executed_ticks):
        if other == ch or other in known_bad:
            continue  # (a valve stuck before the checkout reports open in every report)
        if t:
            res.others[other] = t
        if fired.health[other] and (other // 16) not in fired.missing_banks:
            res.problems.append(f"channel {other} reported {_HEALTH_WORDS[fired.health[other]]}")
    if res.others:
        res.problems.append(
            "uncommanded: "
            + ", ".join(f"channel {c} executed {t} ticks" for c, t in sorted(res.others.items()))
        )
    # A valve reported bad is flagged once, on the step that showed it, not on every later one.
    known_bad.update(c for c, h in enumerate(fired.health) if h)
    return res


_HEALTH_WORDS = {HEALTH_STUCK_OPEN: "stuck open", HEALTH_FAILED_OFF: "failed off"}


def describe_channel(r: ChannelResult) -> str:
    executed = "no report" if r.executed_ms is None else f"executed {r.executed_ms:>5d} ms"
    verdict = "ok" if r.ok else "MISMATCH: " + "; ".join(r.problems)
    return f"  channel {r.channel:>2d}  commanded {r.commanded_ms:>5d} ms  {executed}  {verdict}"


def _stop_all(link: Link) -> dict[str, Any]:
    """STOP_ALL with its acknowledgement, then the unit's first housekeeping after it (which
    valves are still open, its state and last executed step). Never raises."""
    out: dict[str, Any] = {"acknowledged": None, "open_channels": None}
    try:
        acked = link.stop_all(confirm_timeout_s=STOP_CONFIRM_S)
        out["acknowledged"] = acked
        if acked:
            hk = link.wait_hk(after_ns=time.monotonic_ns(), timeout_s=STOP_CONFIRM_S)
            if hk is not None:
                n = link.n_channels or MAX_CHANNELS
                out["open_channels"] = _bits(hk.msg["open_mask"], n)
                out["state"] = STATE_NAMES.get(hk.msg["state"])
                out["last_step"] = hk.msg["last_step"]
    except (LinkError, UserError, OSError):
        pass  # what the unit confirmed is what out says
    finally:
        link.close()  # (sends STOP_ALL once more, without waiting)
    return out


def describe_stop(stop: dict[str, Any]) -> str:
    if not stop.get("acknowledged"):
        return "STOP_ALL sent; NOT acknowledged by the unit: check the valves"
    opened = stop.get("open_channels")
    if opened is None:
        return "STOP_ALL acknowledged; no housekeeping after it to confirm the valves closed"
    if opened:
        return f"STOP_ALL acknowledged; still open (stuck): channel {_list(opened)}"
    return "STOP_ALL acknowledged; every valve closed (the unit's housekeeping)"


def run_checkout(
    url: str,
    *,
    channels: Sequence[int] | None,
    on_ms: int,
    confirm: Callable[[str], bool],
    emit: Callable[[str], None] = print,
    stop_signals=None,
) -> CheckoutResult:
    """Check out the unit on ``url``; see the module docstring. ``channels`` None: all of the
    unit's. ``confirm(question)`` says whether to ARM; ``emit`` shows a line as it happens.
    UserError (exit 2) for a port that does not open or answer, a channel the unit does not
    have or an on-time below its minimum; a signal propagates (after STOP_ALL)."""
    result = CheckoutResult(url, on_ms=on_ms)
    link = Link(url)
    arming = False  # from ARM_REQUEST on, the operator is told how STOP_ALL went
    try:
        try:
            # HELLO only: the unit stays SAFE until the operator says yes.
            link.connect(mode="realtime", period_ms=max(MIN_PERIOD_MS, on_ms))
            hk = link.wait_hk(after_ns=time.monotonic_ns(), timeout_s=HK_WAIT_S)
        except LinkError as exc:
            raise UserError(url, f"the unit did not answer: {exc}") from None
        if hk is None:
            raise UserError(url, f"the unit sent no housekeeping within {HK_WAIT_S:g} s")
        info = link.info
        n = info.n_channels
        chosen = list(range(n)) if channels is None else list(channels)
        beyond = [ch for ch in chosen if ch >= n]
        if beyond:
            raise UserError(
                "checkout",
                f"channel {beyond[0]} out of range: the unit on {url} has {n} channels "
                f"(0..{n - 1})",
                field="--channels",
            )
        min_ms = -(-info.min_on_ticks * (info.tick_us or 1000) // 1000)
        if on_ms < min_ms:
            raise UserError(
                "checkout",
                f"expected at least the unit's minimum on-time {min_ms} ms, got {on_ms}",
                field="--on-ms",
            )
        result.channels = chosen
        result.identity = _identity(link, url)
        result.health = _health(hk.msg.fields, n)
        for line in describe_unit(result.identity, result.health):
            emit(line)
        result.refused = _refusal(result.health, chosen)
        if result.refused is not None:
            return result  # (the verdict line says why)
        question = (
            f"ARM the unit on {url} and fire {len(chosen)} channel(s) "
            f"({format_channels(chosen)}) one at a time, {on_ms} ms each?"
        )
        if not confirm(question):
            result.declined = True
            emit("declined: the unit was not armed, nothing fired")
            return result
        arming = True
        try:
            link.arm(max_on_ticks=min(MAX_ON_TICKS, _ticks(on_ms, info.tick_us or 1000)))
        except LinkError as exc:
            result.error = f"ARM refused: {exc}"
            emit(f"FAILED: {result.error}")
            return result
        result.armed = True
        known_bad = set(result.health["stuck"]) | set(result.health["failed"])
        emit(f"armed; firing {len(chosen)} channel(s), {on_ms} ms each, one at a time")
        for step, ch in enumerate(chosen, start=1):
            try:
                r = _fire_one(link, step, ch, on_ms, known_bad)
                result.results.append(r)
                emit(describe_channel(r))
                link.maybe_heartbeat(step)  # the printing must not starve the unit's watchdog
            except LinkError as exc:
                result.error = str(exc)
                emit(f"FAILED at channel {ch}: {exc}")
                break
        return result
    finally:
        if stop_signals is not None:
            stop_signals.hold()  # a second signal must not cut the STOP_ALL short
        result.stop_all = _stop_all(link)
        result.unit_events = [
            EVENT_NAMES.get(e.msg["event"], str(e.msg["event"])) for e in link.events()
        ]
        if arming:
            emit(describe_stop(result.stop_all))


def describe_verdict(result: CheckoutResult) -> str:
    if result.refused is not None:
        return "checkout REFUSED: " + result.refused
    if result.declined:
        return "checkout DECLINED: nothing fired"
    if result.passed:
        return (
            f"checkout PASSED: {len(result.results)} of {len(result.channels)} channel(s) "
            "executed exactly as commanded"
        )
    why = []
    if result.mismatched:
        why.append(f"mismatch on channel {_list(result.mismatched)}")
    if result.error is not None:
        why.append(result.error)
    not_fired = len(result.channels) - len(result.results)
    if not_fired and result.armed:
        why.append(f"{not_fired} channel(s) not fired")
    if result.armed and not result.stop_all_ok:
        why.append(describe_stop(result.stop_all))
    return "checkout FAILED: " + "; ".join(why)


# ---- the command -----------------------------------------------------------------------------


def ask_terminal(question: str) -> bool:
    """y/N on the terminal (the question on stderr, the answer from stdin); EOF is no."""
    sys.stderr.write(f"{question} [y/N] ")
    sys.stderr.flush()
    return sys.stdin.readline().strip().lower() in ("y", "yes")


def run_command(
    *,
    port: str | None,
    unit: str | None,
    channels: Sequence[int] | None,
    on_ms: int,
    yes: bool,
    as_json: bool,
    stop_signals=None,
) -> int:
    """``thruster-hil checkout``: start the unit if asked (``unit`` without ``port``), check it
    out, print the lines (or one JSON object) and return the exit status."""
    if port is not None and unit is not None:
        raise UserError("checkout", "give --port or --unit, not both")
    if not yes and not sys.stdin.isatty():
        raise UserError(
            "checkout",
            "cannot ask before ARM: stdin is not a terminal; pass --yes to fire without "
            "asking (nothing was sent to a unit)",
        )
    confirm = (lambda _q: True) if yes else ask_terminal
    process = None
    url = port
    if url is None:
        from thruster_hil.closedloop.hil import start_unit_process

        process = start_unit_process(unit or "emulator")
        url = process.port
    try:
        result = run_checkout(
            url,
            channels=channels,
            on_ms=on_ms,
            confirm=confirm,
            emit=(lambda _line: None) if as_json else (lambda line: print(line, flush=True)),
            stop_signals=stop_signals,
        )
    finally:
        if process is not None:
            process.stop()
    if as_json:
        out = result.as_dict()
        out["unit"] = port if port is not None else unit or "emulator"
        print(json.dumps(out))
    else:
        print(describe_verdict(result))
    return result.exit_status
