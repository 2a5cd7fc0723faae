"""The ``thruster-hil`` command line.

Every failure an operator can cause ends as one line on stderr,
``thruster-hil: error: <what and where>``, and exit status 2; never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
from collections.abc import Sequence

from thruster_hil.core.errors import OneLineParser, UserError
from thruster_hil.core.textnum import parse_float, show, whole_number
from thruster_hil.stopsignals import StopSignals, exit_status

PROG = "thruster-hil"
#: Refresh rate of the live views [Hz] (rich Live's own thread; never per control cycle).
LIVE_HZ = 4.0


class _OneLineParser(OneLineParser):
    """A usage error names the subcommand it is about."""

    def where(self) -> str:
        return self.prog.removeprefix(PROG).strip() or "arguments"


def _positive_float(name: str):
    def parse(text: str) -> float:
        try:
            value = parse_float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected a decimal number > 0, got {show(text)}"
            ) from None
        if not math.isfinite(value) or value <= 0.0:
            raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {show(text)}")
        return value

    return parse


def version_text() -> str:
    """What ``--version`` prints: the package, the wire it speaks and the interpreter."""
    import platform

    from thruster_hil import __version__
    from thruster_hil.firmware_bridge.dictionary import DICT_HASH, PROTO_VERSION

    return (
        f"{PROG} {__version__} (wire protocol {PROTO_VERSION}, dictionary 0x{DICT_HASH:08X}; "
        f"Python {platform.python_version()})"
    )


class _VersionAction(argparse.Action):
    """``--version``: like argparse's, but the text is made only when asked for (it reads the
    wire dictionary), and printed as it is, not re-wrapped."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        print(version_text())
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(
        prog=PROG,
        description="Hardware-in-the-loop bench for the reboost controller of a vehicle docked "
        "at the International Space Station.",
    )
    parser.add_argument(
        "--version",
        action=_VersionAction,
        help="print the version, the wire protocol and dictionary it speaks, and exit",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_OneLineParser)
    sub.required = True

    plan = sub.add_parser(
        "plan",
        help="plan a reboost burn without hardware",
        description="Plan a reboost: fly it as 'run --unit sim' does (the controller, the plant "
        "with two-body + J2 + drag, the ideal unit; ignition half the burn before apogee) and "
        "report the delta-v, burn duration, propellant and orbit after, which the run then "
        "reproduces. The rocket equation on the translation thrusters' along-track thrust gives "
        "the first estimate; duration and orbit targets are met on the flown burn. Perigee and "
        "apogee are mean (orbit-averaged) altitudes.",
    )
    _add_burn_arguments(plan)
    plan.add_argument("--json", action="store_true", help="print one JSON object")
    plan.set_defaults(handler=_cmd_plan)

    run = sub.add_parser(
        "run",
        help="fly a reboost in closed loop: controller, plant and a propulsion unit",
        description="Plan the burn as 'plan' does, then fly it: every control cycle the "
        "controller computes the valve on-times, the unit executes them and the plant integrates "
        "what the unit executed. '--unit sim' is the in-process ideal unit: the software-in-the-"
        "loop reference that hardware runs are compared against. Every run writes its run "
        "directory as it goes and prints where it is. On a terminal a progress bar on stderr "
        "shows the cycles flown against the planned cycles and an ETA (not with --json, not "
        "when stderr is a file or a pipe); --live shows the whole state instead.",
    )
    _add_burn_arguments(run)
    run.add_argument(
        "--unit",
        choices=("emulator", "qemu", "simavr", "sim"),
        default="emulator",
        help="propulsion unit: emulator = the board's emulator on a pseudo-terminal "
        "(default), qemu = the board firmware under qemu-system-avr, simavr = the board "
        "firmware cycle by cycle under simavr, sim = "
        "in-process ideal unit (no serial)",
    )
    run.add_argument(
        "--port",
        metavar="URL",
        help="a unit on this port instead (a device path, a pty, hwgrep://VID:PID, "
        "any pyserial URL)",
    )
    run.add_argument(
        "--mode",
        choices=("lockstep", "realtime"),
        default="lockstep",
        help="lockstep: one FIRE -> one report -> one plant step, as fast as the "
        "link goes (default); realtime: cycles paced by the wall clock",
    )
    run.add_argument(
        "--faults",
        metavar="SPEC",
        help="fault injection in the emulator (see 'thruster-hil emulate --help')",
    )
    run.add_argument(
        "--fail-thruster",
        action="append",
        default=[],
        metavar="NAME@SECONDS",
        type=_failure,
        help="fail thruster NAME off at SECONDS into the burn (repeatable)",
    )
    run.add_argument(
        "--out",
        metavar="DIR",
        help="run directory for run.json, telemetry.csv, capture.csv (the raw "
        "wire), status.json and summary.json (default: runs/<UTC time>-<stack>, and "
        "the symlink runs/latest points there); must not exist or be empty",
    )
    run.add_argument(
        "--dispersions",
        metavar="NAME|FILE",
        help="with --unit sim: fly one case of a Monte-Carlo campaign with this "
        "dispersion spec (with --case-seed K, or --case N [--seed S])",
    )
    run.add_argument(
        "--case-seed",
        type=_seed,
        metavar="K",
        help="the case's seed, as cases.csv and summary.json list it",
    )
    run.add_argument(
        "--case",
        type=_index,
        metavar="N",
        help="case N of the campaign with --seed S (default: the spec's seed)",
    )
    run.add_argument("--seed", type=_seed, metavar="S", help="the campaign seed for --case")
    run.add_argument(
        "--live",
        action="store_true",
        help="show a live view on stderr while the burn flies: unit state and "
        "arming, each thruster's executed on-time, delta-v against target, "
        "attitude error against its limit, propellant, link health (refreshed "
        "4 times a second, never per cycle)",
    )
    run.add_argument(
        "--json", action="store_true", help="print one JSON object (and no progress bar)"
    )
    _add_stream_argument(run, "each control cycle")
    run.set_defaults(handler=_cmd_run)

    mc = sub.add_parser(
        "montecarlo",
        help="a Monte-Carlo dispersion campaign of the burn (all-numba batches, or Dask)",
        description="Plan the burn as 'plan' does, then fly N cases of it, each with the true "
        "stack and sensors drawn from a dispersion spec (thrust, Isp, misalignment, valve "
        "delays, mass, centre of mass, sensor noise, thruster failure) while the controller "
        "keeps the nominal model. Cases run in numba batches over this machine's cores, or as "
        "tasks on a Dask cluster (--scheduler). Writes cases.csv, summary.json, report.png and "
        "report.html (verdict, pass rate, limits, failed cases with their rerun commands); "
        "exit status 1 when any case fails its pass criteria. Rerun one case with 'run --unit "
        "sim --dispersions FILE --case-seed K'.",
    )
    _add_burn_arguments(mc)
    mc.add_argument("--cases", type=_count, required=True, metavar="N", help="number of cases")
    mc.add_argument(
        "--dispersions",
        default="default",
        metavar="NAME|FILE",
        help="dispersion spec: a name in hw_configs/dispersions/ or a TOML path (default: default)",
    )
    mc.add_argument(
        "--seed",
        type=_seed,
        metavar="S",
        help="campaign seed (default: the spec's); case i's seed derives from (S, i) only",
    )
    mc.add_argument(
        "--scheduler",
        metavar="tcp://HOST:PORT",
        help="run on this Dask distributed scheduler (needs "
        "pip install 'thruster-hil[dask]'); default: this machine's cores",
    )
    mc.add_argument(
        "--chunk",
        type=_count,
        metavar="N",
        help="cases per batch call / Dask task (default: 25, or 8 per thread)",
    )
    mc.add_argument(
        "--threads",
        type=_count,
        metavar="N",
        help="numba threads on this machine (default: all cores)",
    )
    mc.add_argument(
        "--out",
        metavar="DIR",
        help="output directory (default: runs/<UTC time>-<stack>-montecarlo); must "
        "not exist or be empty",
    )
    mc.add_argument("--json", action="store_true", help="print summary.json's object")
    mc.set_defaults(handler=_cmd_montecarlo)

    replay = sub.add_parser(
        "replay",
        help="re-decode a run's raw wire capture and reproduce its telemetry",
        description="Feed RUN_DIR/capture.csv through the same codec, fly the same burn with the "
        "unit's recorded VALVE_REPORTs in place of the unit, and write "
        "RUN_DIR/telemetry.replay.csv; reports whether it equals telemetry.csv.",
    )
    replay.add_argument(
        "run_dir", metavar="RUN_DIR", help="a directory written by 'run' (runs/latest: the newest)"
    )
    replay.add_argument("--json", action="store_true", help="print one JSON object")
    replay.set_defaults(handler=_cmd_replay)

    report = sub.add_parser(
        "report",
        help="render a run's report.png and report.html",
        description="Plot a run directory: altitude and apsides, delta-v against target, the "
        "firing raster, attitude error, propellant against the plan and the link RTT histogram, "
        "into RUN_DIR/report.png, and a self-contained RUN_DIR/report.html that opens with the "
        "verdict (PASS, FAIL or ABORTED and why), then the summary with units, propellant per "
        "tank, link counters, versions and config hashes and the plots as SVG (docs/report.md).",
    )
    report.add_argument(
        "run_dir",
        metavar="RUN_DIR",
        help="a directory written by 'run' (runs/latest: the newest), or by 'montecarlo' (its "
        "report.png and report.html again)",
    )
    report.set_defaults(handler=_cmd_report)

    monitor = sub.add_parser(
        "monitor",
        help="watch a run directory as the run writes it, or a unit on a serial port",
        description="With RUN_DIR: follow a run in progress (or finished) by tailing its "
        "telemetry.csv, run.json and status.json, in the same view as 'run --live'; exits when "
        "the run writes summary.json. With --port: open the unit's port, say HELLO (never ARM: "
        "the unit stays SAFE) and show its housekeeping (state, valves, tank pressure, counters) "
        "and the link's health until Ctrl-C. A port a run holds is refused ('in use').",
    )
    monitor.add_argument(
        "run_dir",
        metavar="RUN_DIR",
        nargs="?",
        help="a directory 'run' writes or wrote (runs/latest: the newest)",
    )
    monitor.add_argument(
        "--port",
        metavar="URL",
        help="a unit's port instead (a device path, a pty, hwgrep://VID:PID)",
    )
    monitor.add_argument("--once", action="store_true", help="print one frame of the view and exit")
    _add_stream_argument(monitor, "each row of RUN_DIR's telemetry.csv, as it is written")
    monitor.set_defaults(handler=_cmd_monitor)

    emulate = sub.add_parser(
        "emulate",
        help="run the propulsion-unit emulator stand-alone and print its port path",
        description="Start the emulator of the Arduino Mega 2560 propulsion unit on a "
        "pseudo-terminal and print the device path (first line on stdout); it serves until "
        "Ctrl-C. Point 'run --port', 'selftest --port' or your own tools at that path. "
        "Fault spec: comma-separated items drop|corrupt|duplicate[.rx|.tx]=RATE, "
        "delay[.rx|.tx]=RATE:DURATION, stall=DURATION@WHEN, reset@WHEN, fail=CH@WHEN, "
        "stuck=CH@WHEN, clear=CH@WHEN, pressure=KPA@WHEN, cut[=DURATION]@WHEN (the link lost "
        "both ways), seed=INT; WHEN is a duration since start (2s, 250ms), since the first "
        "FIRE (fire+2s), or the host's FIRE of a control step (step40).",
    )
    emulate.add_argument("--faults", metavar="SPEC", help="fault injection (see above)")
    emulate.add_argument("--channels", type=_channels, default=32, help="valve channels (1-32)")
    emulate.add_argument("--log", metavar="PATH", help="write the unit's JSON-lines log here")
    emulate.add_argument(
        "--seed",
        type=_seed,
        help="seed of the link faults when --faults names none; never the session token",
    )
    emulate.set_defaults(handler=_cmd_emulate)

    ports = sub.add_parser(
        "ports",
        help="list serial ports and mark the Arduino Mega 2560s",
        description="List the serial ports pyserial sees (device, VID:PID, description), marking "
        "the Arduino Mega 2560 (VID:PID 2341:0042 or 2A03:0042) a bench rig uses.",
    )
    ports.add_argument("--json", action="store_true", help="print one JSON object")
    ports.set_defaults(handler=_cmd_ports)

    selftest = sub.add_parser(
        "selftest",
        help="run the unit conformance suite against a unit and print a pass/fail report",
        description="Check a propulsion unit's whole contract (handshake, state table, ARM "
        "interlock, clamps, idempotent FIRE, STOP_ALL, watchdog safing, reset handling) over "
        "its port: the same checks CI runs against the emulator.",
    )
    selftest.add_argument(
        "--port",
        metavar="URL",
        help="the unit's port (e.g. /dev/serial/by-id/usb-Arduino...); "
        "default: start the --unit and test it",
    )
    selftest.add_argument(
        "--unit",
        choices=("emulator", "qemu", "simavr"),
        default="emulator",
        help="without --port: the emulator (default) or the board firmware under "
        "qemu-system-avr or simavr",
    )
    selftest.add_argument("--json", action="store_true", help="print one JSON object")
    selftest.set_defaults(handler=_cmd_selftest)

    _add_sustain_parser(sub)
    _add_dictionary_parser(sub)
    _add_checkout_parser(sub)

    faults = sub.add_parser(
        "faults",
        help="the fault-injection campaign: every fault against the emulator and QEMU, judged",
        description="Fly the reboost through a fault proxy against the emulator and the board "
        "firmware under qemu-system-avr, one row per fault (link loss at random steps, 0.1/1/5 "
        "% corruption, drops and duplicates, delayed replies, unit reset, a thruster failed "
        "off, a valve stuck open, tank pressure loss, the host killed, a second writer without "
        "the session token), and judge each row on the unit's own record: delta-v, attitude "
        "error, time until every valve closed, double and unintended fires, complete run "
        "records. Writes campaign.json, results.md and each row's evidence (unit.jsonl, "
        "wire.jsonl, the run directory); exit status 1 when a row fails. docs/reliability.md "
        "explains the rows and the safety requirements they verify.",
    )
    faults.add_argument(
        "--units",
        type=_units,
        default=("emulator", "qemu"),
        metavar="UNIT[,UNIT]",
        help="emulator, qemu, simavr (its firmware timing rows, judged on the pins in "
        "simulated time), comma-separated (default: emulator,qemu)",
    )
    faults.add_argument(
        "--only",
        type=_row_ids,
        metavar="ID[,ID...]",
        help="only these rows (e.g. E02,Q07; 'faults --list' lists them)",
    )
    faults.add_argument(
        "--seed", type=_seed, default=1, help="seed of the random steps and channels (default: 1)"
    )
    faults.add_argument(
        "--out",
        metavar="DIR",
        help="campaign directory (default: runs/faults-<UTC time>); must not exist or be empty",
    )
    faults.add_argument(
        "--doc",
        metavar="PATH",
        help="also write the results table into this Markdown file's campaign "
        "section (docs/reliability.md)",
    )
    faults.add_argument(
        "--jobs",
        type=_jobs,
        default=1,
        metavar="N",
        help="rows flown at once, each with its own processes (default: 1; at most the CPUs "
        "this process may use); more than one loads each row as a busy process beside it would",
    )
    faults.add_argument("--list", action="store_true", help="list the rows and exit")
    faults.add_argument("--json", action="store_true", help="print one JSON object")
    faults.set_defaults(handler=_cmd_faults)

    validate = sub.add_parser(
        "validate",
        help="the validation tables: real reboosts, plan against run, Gauss, 30-day decay",
        description="Predict every real reboost of the calibration file "
        "(reboost_calibration.md, C1-C10) with the stacks and compare mean-altitude change and "
        "delta-v (10 % tolerance, 15 % for Progress); compare plan with run --unit sim for "
        "each stack; check the finite burn against Gauss's variational equation; and propagate "
        "30 days of decay at each solar-activity level against published rates. Prints the "
        "tables as Markdown; exit status 1 when a judged row is outside its tolerance. "
        "docs/validation.md explains the rows.",
    )
    validate.add_argument(
        "--doc",
        metavar="PATH",
        help="also write the tables into this Markdown file's validation "
        "section (docs/validation.md)",
    )
    validate.add_argument("--json", action="store_true", help="print one JSON object")
    validate.set_defaults(handler=_cmd_validate)
    return parser


def _add_stream_argument(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument(
        "--stream",
        metavar="udp://HOST:PORT",
        help=f"send {what} as one HOST_CYCLE CCSDS space packet per UDP datagram (no "
        "framing; 'thruster-hil dictionary --xtce' describes it) for a ground system or a "
        "script; the host is resolved once at start, a datagram that cannot go at once is "
        "dropped and counted (summary.json 'stream'), never waited for",
    )


def _add_dictionary_parser(sub) -> None:
    dictionary = sub.add_parser(
        "dictionary",
        help="the wire dictionary: its messages, or an XTCE 1.2 export for ground systems",
        description="Show the wire dictionary (firmware_bridge/messages.toml: its hash and "
        "messages), or export it as XTCE 1.2 for Yamcs, OpenC3 COSMOS and XTCE decoders such "
        "as space-packet-parser: telemetry and telecommands, the CCSDS headers, units, "
        "enumerations, valid ranges and the CRC (docs/protocol.md, 'Ground systems: XTCE').",
    )
    dictionary.add_argument(
        "--xtce", metavar="FILE", help="write the XTCE 1.2 XML to FILE ('-': standard output)"
    )
    dictionary.set_defaults(handler=_cmd_dictionary)


def _cmd_dictionary(args: argparse.Namespace) -> int:
    from pathlib import Path

    from thruster_hil.firmware_bridge import dictionary, xtce

    if args.xtce is None:
        print(f"dictionary 0x{dictionary.DICT_HASH:08X}, protocol {dictionary.PROTO_VERSION}")
        for spec in dictionary.MESSAGES.values():
            way = "TC" if spec.is_command else "TM"
            print(f"  0x{spec.id:02X} {spec.name:<14} {way} APID 0x{spec.apid:03X}")
        return 0
    data = xtce.xtce_bytes()
    if args.xtce == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
        return 0
    try:
        Path(args.xtce).write_bytes(data)
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
        why = getattr(exc, "strerror", None) or str(exc)
        raise UserError(args.xtce, f"cannot write the XTCE file: {why}") from None
    print(f"wrote {args.xtce}: XTCE 1.2 of dictionary 0x{dictionary.DICT_HASH:08X}")
    return 0


def _add_sustain_parser(sub) -> None:
    sustain = sub.add_parser(
        "sustain",
        help="a year of decay and reboosts: how many burns, how much propellant, how many kits",
        description="Could this stack keep the station up? Propagate the drag decay of the mean "
        "altitude (orbit-averaged, NRLMSIS 2.1 at the chosen F10.7 and Ap) and schedule "
        "reboosts that keep it above the floor: each one the burn 'plan' plans back to the "
        "ceiling with the stack's own thrusters and propellant (at most one kit's). Reports the "
        "reboosts, the propellant and the kits (or vehicles) needed per year; --plot draws the "
        "mean altitude over the span (docs/atmosphere.md).",
    )
    _add_stack_argument(sustain)
    sustain.add_argument(
        "--days",
        type=_bounded_float(1.0, 3650.0, " days"),
        default=365.0,
        metavar="D",
        help="span to sustain [days] (default: 365)",
    )
    sustain.add_argument(
        "--floor-km",
        type=_positive_float("--floor-km"),
        metavar="F",
        help="lowest mean altitude allowed [km] (default: 5 km below the ceiling)",
    )
    sustain.add_argument(
        "--ceiling-km",
        type=_positive_float("--ceiling-km"),
        metavar="C",
        help="mean altitude each reboost restores, and the start [km] "
        "(default: the station's mean altitude)",
    )
    _add_atmosphere_arguments(sustain)
    sustain.add_argument(
        "--plot", metavar="FILE", help="write a PNG of the mean altitude over the span"
    )
    sustain.add_argument(
        "--json", action="store_true", help="print one JSON object (without the altitude timeline)"
    )
    sustain.set_defaults(handler=_cmd_sustain)


def _add_checkout_parser(sub) -> None:
    from thruster_hil.checkout import MAX_ON_MS, channel_list

    checkout = sub.add_parser(
        "checkout",
        help="bench actuator checkout: fire each valve channel alone and show what the unit did",
        description="Check a rig's valves one at a time, as QGroundControl's actuator test "
        "does: say HELLO, show the unit's identity (firmware, boot count, reset cause, test "
        "build) and health (state, failed and stuck valves, tank pressure), ask before ARM, "
        "then fire each channel alone in turn (REALTIME: the pins move) and show the on-time "
        "the unit reports it executed against the commanded one. Always ends with STOP_ALL. "
        "Refuses a unit with a stuck-open or failed-off valve on a selected channel. Exit "
        "status 0: every channel executed exactly as commanded; 1: a mismatch, a missing "
        "report, a refused or declined checkout; 2: bad input (docs/bench.md).",
    )
    checkout.add_argument(
        "--port",
        metavar="URL",
        help="the unit's port (a device path, a pty, hwgrep://VID:PID); default: start the --unit",
    )
    checkout.add_argument(
        "--unit",
        choices=("emulator", "qemu", "simavr"),
        help="without --port: the emulator (default) or the board firmware under "
        "qemu-system-avr or simavr",
    )
    checkout.add_argument(
        "--channels",
        type=channel_list,
        metavar="LIST",
        help="channels to fire, in this order, e.g. 0-3,8 (from 0; default: all of the unit's)",
    )
    checkout.add_argument(
        "--on-ms",
        type=whole_number(1, MAX_ON_MS),
        default=100,
        metavar="N",
        help=f"each pulse's on-time [ms] (1..{MAX_ON_MS}, at least the unit's minimum; "
        "default: 100)",
    )
    checkout.add_argument(
        "--yes", action="store_true", help="arm without asking (scripts); otherwise a y/N prompt"
    )
    checkout.add_argument("--json", action="store_true", help="print one JSON object")
    checkout.set_defaults(handler=_cmd_checkout)


def _cmd_checkout(args: argparse.Namespace) -> int:
    from thruster_hil.checkout import run_command

    return run_command(
        port=args.port,
        unit=args.unit,
        channels=args.channels,
        on_ms=args.on_ms,
        yes=args.yes,
        as_json=args.json,
        stop_signals=getattr(args, "stop_signals", None),
    )


def _cmd_sustain(args: argparse.Namespace) -> int:
    from pathlib import Path

    from thruster_hil.sustain import format_sustain, plot_sustain, sustain

    if args.plot is not None:  # before a year is flown
        plot = Path(args.plot)
        if plot.is_dir() or not plot.parent.is_dir():
            raise UserError(
                "sustain",
                f"expected a file in an existing directory, got {show(args.plot)}",
                field="--plot",
            )
    result = sustain(
        args.stack,
        args.days,
        floor_km=args.floor_km,
        ceiling_km=args.ceiling_km,
        solar_activity=args.solar_activity,
        f107_sfu=args.f107,
        ap=args.ap,
    )
    if args.plot is not None:
        result["plot"] = str(plot_sustain(result, args.plot))
    result.pop("timeline")
    if args.json:
        print(json.dumps(result))
    else:
        print(format_sustain(result))
        if args.plot is not None:
            print(f"plot in {result['plot']}")
    return 0


def _units(text: str) -> tuple[str, ...]:
    units = tuple(u.strip() for u in text.split(","))
    bad = [u for u in units if u not in ("emulator", "qemu", "simavr")]
    if bad or not units or len(set(units)) != len(units):
        raise argparse.ArgumentTypeError(
            f"expected units from emulator, qemu, simavr (e.g. emulator,qemu), got {text!r}"
        )
    return units


def _row_ids(text: str) -> set[str]:
    import re

    ids = {i.strip().upper() for i in text.split(",")}
    bad = sorted(i for i in ids if not re.fullmatch(r"[EQS]\d{2}", i))
    if bad:
        raise argparse.ArgumentTypeError(f"expected row ids like E02 or Q07, got {text!r}")
    return ids


_count = whole_number(1, 10**8, "1e8")  # cases, chunk sizes, threads


def _jobs(text: str) -> int:
    """faults --jobs: 1 .. the CPUs this process may use (more would only make every row late)."""
    import os

    return whole_number(1, max(1, len(os.sched_getaffinity(0))))(text)


_index = whole_number(0, 10**8, "1e8")  # a case number
_seed = whole_number(0, 2**63 - 1, "2**63-1")
_channels = whole_number(1, 32, "32")  # the unit's valve channels


def _failure(text: str) -> tuple[str, float]:
    name, sep, when = text.rpartition("@")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME@SECONDS, got {show(text)}")
    try:
        at_s = parse_float(when)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected NAME@SECONDS with SECONDS a decimal number, got {show(text)}"
        ) from None
    if not math.isfinite(at_s) or at_s < 0.0:
        raise argparse.ArgumentTypeError(f"expected SECONDS >= 0, got {show(text)}")
    return name, at_s


def _add_burn_arguments(p: argparse.ArgumentParser) -> None:
    """The stack, the initial orbit and the target: shared by plan and run."""
    _add_stack_argument(p)
    p.add_argument(
        "--perigee-km",
        type=_positive_float("--perigee-km"),
        metavar="P",
        help="initial mean perigee altitude [km] (default: the station's typical orbit)",
    )
    p.add_argument(
        "--apogee-km",
        type=_positive_float("--apogee-km"),
        metavar="A",
        help="initial mean apogee altitude [km] (default: the station's typical orbit)",
    )
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument(
        "--delta-v",
        type=_positive_float("--delta-v"),
        metavar="MPS",
        help="along-track delta-v [m/s]",
    )
    target.add_argument(
        "--raise-perigee-km",
        type=_positive_float("--raise-perigee-km"),
        metavar="D",
        help="raise the mean perigee by D km (burn centred on apogee)",
    )
    target.add_argument(
        "--target-mean-altitude-km",
        type=_positive_float("--target-mean-altitude-km"),
        metavar="H",
        help="reach a mean altitude of H km",
    )
    target.add_argument(
        "--burn-duration",
        type=_positive_float("--burn-duration"),
        metavar="S",
        help="burn for S seconds",
    )
    _add_atmosphere_arguments(p)


def _add_stack_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--stack",
        default="dragon-boost-kit",
        metavar="NAME|PATH",
        help="stack name in hw_configs/stacks/ or a path to a stack TOML "
        "(default: dragon-boost-kit)",
    )


def _bounded_float(lo: float, hi: float, unit: str):
    """An argparse type: a finite decimal number in [lo, hi]."""

    def parse(text: str) -> float:
        try:
            value = parse_float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected a decimal number in {lo:g}..{hi:g}{unit}, got {show(text)}"
            ) from None
        if not (math.isfinite(value) and lo <= value <= hi):
            raise argparse.ArgumentTypeError(
                f"expected a number in {lo:g}..{hi:g}{unit}, got {show(text)}"
            )
        return value

    return parse


def _add_atmosphere_arguments(p: argparse.ArgumentParser) -> None:
    """The atmosphere: a named level, and F10.7 / Ap to set freely (docs/atmosphere.md)."""
    from thruster_hil.sims.atmosphere import AP_MAX, AP_MIN, F107_MAX_SFU, F107_MIN_SFU, PRESETS

    levels = ", ".join(f"{k} = F10.7 {v.f107_sfu:g} / Ap {v.ap:g}" for k, v in PRESETS.items())
    p.add_argument(
        "--solar-activity",
        choices=tuple(PRESETS),
        help=f"atmosphere preset ({levels}; default: the stack's)",
    )
    p.add_argument(
        "--f107",
        type=_bounded_float(F107_MIN_SFU, F107_MAX_SFU, " sfu"),
        metavar="SFU",
        help="F10.7 solar flux, daily = 81-day mean [sfu] "
        f"({F107_MIN_SFU:g}-{F107_MAX_SFU:g}; default: the preset's)",
    )
    p.add_argument(
        "--ap",
        type=_bounded_float(AP_MIN, AP_MAX, ""),
        metavar="AP",
        help=f"daily geomagnetic Ap index ({AP_MIN:g}-{AP_MAX:g}; default: the preset's)",
    )


def _load_stack(args: argparse.Namespace):
    """The stack of ``--stack``, loaded and validated, and its model: once per command (the
    commands pass both down rather than loading the files again)."""
    from thruster_hil.config import build_stack_model, load_stack

    stack = load_stack(args.stack)
    return stack, build_stack_model(stack)


def _plan_from_args(args: argparse.Namespace, stack, model) -> dict:
    from thruster_hil.plan import Target, plan_stack

    if (args.perigee_km is None) != (args.apogee_km is None):
        raise UserError(
            args.command, "--perigee-km and --apogee-km go together: give both or neither"
        )
    if args.delta_v is not None:
        target = Target("delta_v", args.delta_v)
    elif args.raise_perigee_km is not None:
        target = Target("raise_perigee", args.raise_perigee_km)
    elif args.target_mean_altitude_km is not None:
        target = Target("mean_altitude", args.target_mean_altitude_km)
    else:
        target = Target("burn_duration", args.burn_duration)
    return plan_stack(
        stack,
        target,
        perigee_km=args.perigee_km,
        apogee_km=args.apogee_km,
        solar_activity=args.solar_activity,
        f107_sfu=args.f107,
        ap=args.ap,
        model=model,
    )


def _cmd_plan(args: argparse.Namespace) -> int:
    from thruster_hil.plan import format_plan

    result = _plan_from_args(args, *_load_stack(args))
    if args.json:
        print(json.dumps(result, sort_keys=False))
    else:
        print(format_plan(result))
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from thruster_hil.closedloop.runner import Failure, format_run, run_burn

    _check_run_unit(args)  # usage errors before the plan, the run directory or a unit
    target = None
    if args.stream is not None:  # resolved once, here: never per cycle
        from thruster_hil.stream import resolve_option

        target = resolve_option(args.stream, "run")
    stack, model = _load_stack(args)
    plan = _plan_from_args(args, stack, model)
    names = list(model.thruster_names)
    failures = []
    for name, at_s in args.fail_thruster:
        if name not in names:
            raise UserError(
                "run",
                f"expected a thruster of stack {plan['stack']} ({', '.join(names)}), got {name!r}",
                field="--fail-thruster",
            )
        failures.append(Failure(name, at_s))
    case, case_info = _run_case(args, model)
    from thruster_hil.records import (
        RunRecorder,
        StatusWriter,
        default_run_dir,
        point_latest,
        run_meta,
    )

    stop = getattr(args, "stop_signals", None) or StopSignals()
    out_dir = args.out if args.out is not None else default_run_dir(plan["stack"])
    recorder = RunRecorder(out_dir, names, model.mass_kg, model.tank_names)
    # runs/latest: the newest run made under the default directory, so that 'report
    # runs/latest' (and monitor, replay) can be copied as the README shows them.
    latest_note = point_latest(out_dir) if args.out is None else None
    unit = stream = None
    try:
        if target is not None:  # before the unit: its kernel loads now, not while armed
            from thruster_hil.stream import CycleStream, serial_link_counters

            stream = CycleStream(target, len(names), len(model.tank_names), model.mass_kg)
        unit = _open_run_unit(args, model, plan, names, recorder)
        if stream is not None:
            stream.set_link_counters(serial_link_counters(unit))
        link_info = getattr(getattr(unit, "link", None), "info", None)
        unit_name = getattr(unit, "name", "sim") if unit is not None else "sim"
        period_ms = int(round(model.control_period_s * 1000))
        planned = max(1, math.ceil(plan["burn_duration_s"] / model.control_period_s))
        title = f"{plan['stack']} via {unit_name} ({args.mode})"
        recorder.start(
            {
                "title": title,
                "stack": plan["stack"],
                "unit": unit_name,
                "mode": args.mode,
                "serial": unit is not None,
                "thrusters": names,
                "period_ms": period_ms,
                "planned_cycles": planned,
                "target_delta_v_mps": plan["delta_v_mps"],
                "attitude_limit_deg": math.degrees(model.max_attitude_error_rad),
                "plan": plan,
            }
        )
        with contextlib.ExitStack() as views:
            on_cycle, watch = recorder.on_cycle, None
            if unit is not None:
                views.enter_context(StatusWriter(out_dir, unit.stats, on_error=recorder.fail))
            if args.live:
                from thruster_hil.live import RunWatch

                watch = RunWatch(
                    title=title,
                    thrusters=names,
                    period_ms=period_ms,
                    planned_cycles=planned,
                    target_dv_mps=plan["delta_v_mps"],
                    att_limit_deg=math.degrees(model.max_attitude_error_rad),
                    mass0_kg=model.mass_kg,
                    unit=unit,
                    unit_name=unit_name,
                    mode=args.mode,
                )
                on_cycle = _run_live(views, recorder, watch)
            elif not args.json and sys.stderr.isatty():
                on_cycle = _run_progress(views, recorder, planned)
            if stream is not None:
                on_cycle = stream.after(on_cycle)
            result = run_burn(
                model,
                plan,
                unit=unit,
                failures=failures,
                on_cycle=on_cycle,
                case=case,
                on_loop_end=stop.hold,
            )
            unit = None  # closed by the runner (STOP_ALL)
            if watch is not None:  # the last frame says how it ended
                s = result.summary
                if s["aborted"]:
                    watch.finish(f"aborted: {s['abort_reason']}")
                elif s["failure_reason"]:
                    watch.finish(f"failed: {s['failure_reason']}")
                else:
                    watch.finish("completed" if s["completed"] else "not completed")
        summary = dict(result.summary)
        summary.update(case_info)
        summary["run_dir"] = str(out_dir)
        summary["plan"] = plan  # what replay needs to fly the same burn again
        summary["stack_path"] = str(stack.path)
        if stream is not None:
            stream.close()  # sends what is still queued: the counts are final
            summary["stream"] = stream.stats()
        meta = run_meta(stack, summary["unit"], link_info)
    except BaseException as exc:
        # Before the burn's loop (opening or arming the unit, run.json) or out of it: valves
        # closed by command first, then as much summary as there is, then the one line.
        stop.hold()
        if unit is not None:
            unit.close()
        if stream is not None:
            stream.close()
        return _run_not_flown(exc, args, plan, stack, recorder, unit)
    summary_error = _finish_records(recorder, summary, meta)
    if args.json:
        print(json.dumps(summary))
    else:
        print(format_run(summary))
        if stream is not None:
            print(stream.note())
        print(f"run records in {out_dir}")
    if latest_note is not None:
        print(f"{PROG}: note: {latest_note}", file=sys.stderr)
    if recorder.error is not None or summary_error is not None:
        raise _records_failed(recorder, summary, summary_error)
    return _run_status(summary)


def _finish_records(recorder, summary: dict, meta: dict):
    """Write summary.json; the RecordError if it could not be written (None: written)."""
    from thruster_hil.records import RecordError

    try:
        recorder.finish(summary, meta)
    except RecordError as err:
        return err
    return None


def _records_failed(recorder, summary: dict, summary_error) -> UserError:
    """The one line of a run whose records could not all be written (exit status 2)."""
    first = recorder.error or summary_error
    stopped = (
        f"the burn was stopped after {summary['cycles']} cycles, "
        if str(summary.get("abort_reason") or "").startswith("records: ")
        else ""
    )
    if summary.get("unit") == "sim":
        closed = "no valves to close (in-process unit)"
    else:
        closed = {
            True: "valves closed by STOP_ALL (acknowledged)",
            False: "STOP_ALL sent, not confirmed by the unit",
        }.get(summary.get("valves_closed"), "STOP_ALL not confirmed (the link was down)")
    if summary_error is None:
        tail = "summary.json written"
    elif summary_error is first:
        tail = "summary.json could not be written either"
    else:
        tail = f"summary.json could not be written either ({summary_error.strerror})"
    return UserError(first.path, f"{first.message}; {stopped}{closed}; {tail}")


def _run_not_flown(
    exc: BaseException, args: argparse.Namespace, plan: dict, stack, recorder, unit
) -> int:
    """A run that ended before or outside its burn loop: what summary.json can still say, then
    the exception's one line (a signal: exit 128 + its number)."""
    from thruster_hil.records import record_not_flown

    unit_name = "sim" if args.port is None and args.unit == "sim" else (args.port or args.unit)
    record_not_flown(
        recorder, exc, plan, unit_name, stack.path, getattr(unit, "valves_closed", None)
    )
    raise exc


def _run_case(args: argparse.Namespace, model):
    """The dispersed case a run flies (None: the nominal stack) and what to record about it."""
    given = [
        a
        for a, v in (("--case-seed", args.case_seed), ("--case", args.case), ("--seed", args.seed))
        if v is not None
    ]
    if args.dispersions is None:
        if given:
            raise UserError(
                "run", f"{given[0]} selects a Monte-Carlo case: it needs --dispersions FILE"
            )
        return None, {}
    if args.unit != "sim" or args.port is not None:
        raise UserError(
            "run",
            "flies a Monte-Carlo case in the software loop: use it with --unit sim",
            field="--dispersions",
        )
    if (args.case_seed is None) == (args.case is None):
        raise UserError(
            "run", "needs exactly one of --case-seed K or --case N", field="--dispersions"
        )
    if args.case_seed is not None and args.seed is not None:
        raise UserError("run", "goes with --case N, not with --case-seed", field="--seed")
    from thruster_hil.dispersions import case_seed, load_dispersions, sample_case

    spec = load_dispersions(args.dispersions)
    if args.case_seed is not None:
        seed_k = args.case_seed
        info = {"case_seed": seed_k}
    else:
        campaign_seed = spec.seed if args.seed is None else args.seed
        seed_k = case_seed(campaign_seed, args.case)
        info = {"case": args.case, "campaign_seed": campaign_seed, "case_seed": seed_k}
    info["dispersions"] = spec.where
    return sample_case(spec, model, seed_k), info


def _cmd_montecarlo(args: argparse.Namespace) -> int:
    from thruster_hil import montecarlo as mc
    from thruster_hil.dispersions import load_dispersions

    spec = load_dispersions(args.dispersions)  # one-line errors before the (slow) plan
    if args.scheduler is not None:
        if args.threads is not None:
            raise UserError(
                "montecarlo",
                "sets this machine's numba threads; with --scheduler "
                "each Dask worker uses its own threads",
                field="--threads",
            )
        try:
            import distributed  # noqa: F401
        except ImportError:
            raise UserError(
                "montecarlo", f"needs Dask: {mc.DASK_HINT}", field="--scheduler"
            ) from None
    elif args.threads is not None:
        import numba

        most = numba.config.NUMBA_NUM_THREADS
        if args.threads > most:
            raise UserError(
                "montecarlo",
                f"expected a whole number in 1..{most} (the numba "
                f"threads of this machine), got {args.threads}",
                field="--threads",
            )
    stack, model = _load_stack(args)
    plan = _plan_from_args(args, stack, model)
    campaign = mc.Campaign.build(model, plan, spec, args.seed, args.cases, args.stack)
    out_dir = mc.prepare_out_dir(
        args.out if args.out is not None else mc.default_out_dir(plan["stack"])
    )
    progress = mc.Progress(args.cases)
    try:
        if args.scheduler is not None:
            result = mc.run_dask(
                campaign, scheduler=args.scheduler, chunk=args.chunk or 0, progress=progress
            )
        else:
            result = mc.run_local(
                campaign, chunk=args.chunk or 0, threads=args.threads, progress=progress
            )
    finally:
        progress.close()
    outcomes = mc.evaluate(campaign, result.rows)
    summary = mc.summarise(campaign, result, outcomes, _target_args(args))
    summary["out_dir"] = str(out_dir)
    mc.write_outputs(out_dir, campaign, outcomes, summary)
    if args.json:
        print(json.dumps(summary))
    else:
        print(mc.format_summary(summary))
        print(f"cases.csv, summary.json, report.png and report.html in {out_dir}")
    return 0 if summary["failed"] == 0 else 1


def _target_args(args: argparse.Namespace) -> list[str]:
    """The orbit and target arguments as given (so a rerun plans the same burn)."""
    out = []
    for flag, value in (
        ("--perigee-km", args.perigee_km),
        ("--apogee-km", args.apogee_km),
        ("--delta-v", args.delta_v),
        ("--raise-perigee-km", args.raise_perigee_km),
        ("--target-mean-altitude-km", args.target_mean_altitude_km),
        ("--burn-duration", args.burn_duration),
        ("--solar-activity", args.solar_activity),
        ("--f107", args.f107),
        ("--ap", args.ap),
    ):
        if value is not None:
            out += [flag, repr(value) if isinstance(value, float) else str(value)]
    return out


def _run_progress(views: contextlib.ExitStack, recorder, planned: int):
    """The progress bar on stderr (a terminal; not with --json): cycles, planned, ETA."""
    from rich.console import Console

    from thruster_hil.live import RunProgress

    bar = views.enter_context(RunProgress(planned, console=Console(stderr=True)))
    record, tick = recorder.on_cycle, bar.on_cycle

    def on_cycle(k: int, info: dict) -> None:
        record(k, info)
        tick(k, info)

    return on_cycle


def _run_live(views: contextlib.ExitStack, recorder, watch):
    """--live: rich Live on stderr, drawn by its own thread from the watch's snapshot."""
    from rich.console import Console
    from rich.live import Live

    from thruster_hil.live import render

    views.enter_context(
        Live(
            get_renderable=lambda: render(watch.snapshot()),
            console=Console(stderr=True),
            refresh_per_second=LIVE_HZ,
            auto_refresh=True,
        )
    )
    record, publish = recorder.on_cycle, watch.on_cycle

    def on_cycle(k: int, info: dict) -> None:
        record(k, info)
        publish(k, info)

    return on_cycle


def _check_run_unit(args: argparse.Namespace) -> None:
    """The unit options of a run, checked before anything is planned, written or started."""
    if args.port is None and args.unit == "sim":
        if args.faults is not None or args.mode != "lockstep":
            raise UserError(
                "run",
                "--faults and --mode need a serial unit (--unit emulator, "
                "--unit qemu or --port), not --unit sim",
            )
        return
    if args.unit == "sim":
        raise UserError("run", "--port and --unit sim exclude each other: the sim unit has no port")
    if args.faults is not None and (args.port is not None or args.unit != "emulator"):
        raise UserError(
            "run",
            "--faults applies to the emulator the run starts, not to a unit "
            "on --port, QEMU or simavr (start 'thruster-hil emulate --faults ...' instead)",
        )
    from thruster_hil.firmware_bridge.faults import parse_faults

    parse_faults(args.faults)


def _open_run_unit(args: argparse.Namespace, model, plan: dict, names: list[str], recorder):
    """The unit a run flies with: None (the in-process sim unit) or a connected serial unit
    (the options passed :func:`_check_run_unit`)."""
    if args.port is None and args.unit == "sim":
        return None
    from thruster_hil.closedloop.fused import warm_up
    from thruster_hil.closedloop.hil import LinkError, open_unit

    warm_up(model, plan)  # compile the cycle now: an armed unit must not wait for the compiler
    try:
        return open_unit(
            unit=args.unit,
            port=args.port,
            mode=args.mode,
            n_thrusters=len(names),
            period_ms=int(round(model.control_period_s * 1000)),
            faults=args.faults,
            on_bytes=recorder.on_bytes,
        )
    except LinkError as exc:
        raise UserError(args.port or args.unit, f"the unit did not come up: {exc}") from None


def _cmd_replay(args: argparse.Namespace) -> int:
    from thruster_hil.records import resolve_latest
    from thruster_hil.replay import replay_run

    result = replay_run(resolve_latest(args.run_dir))
    if args.json:
        print(json.dumps(result))
    else:
        verdict = "identical to" if result["identical"] else "DIFFERS from"
        print(
            f"replayed {result['cycles']} cycles from {result['frames_decoded']} frames "
            f"({result['decode_errors']} undecodable): {result['replayed']} is {verdict} "
            f"{result['recorded']}"
        )
    return 0 if result["identical"] else 1


def _cmd_report(args: argparse.Namespace) -> int:
    from thruster_hil.montecarlo_report import is_campaign_dir, render_campaign_dir
    from thruster_hil.records import resolve_latest
    from thruster_hil.report import render

    run_dir = resolve_latest(args.run_dir)
    if is_campaign_dir(run_dir):  # a Monte-Carlo directory: its pages again, from its records
        out = render_campaign_dir(run_dir)
        print(f"wrote {out['png']} and {out['html']}")
        return 0
    out = render(run_dir)
    print(f"wrote {out['png']} ({out['pixels'][0]} x {out['pixels'][1]} px) and {out['html']}")
    return 0


def _cmd_monitor(args: argparse.Namespace) -> int:
    from rich.console import Console

    if (args.run_dir is None) == (args.port is None):
        raise UserError("monitor", "give a RUN_DIR or --port URL (one of them)")
    if args.stream is not None and args.port is not None:
        raise UserError(
            "monitor",
            "--stream sends the cycles of a RUN_DIR; a unit on --port has no cycles to send",
        )
    console = Console()
    if args.port is not None:
        return _monitor_port(args.port, args.once, console)
    from thruster_hil.live import RunDirFollower, follow, render
    from thruster_hil.records import resolve_latest

    target = None
    if args.stream is not None:  # resolved once, before the directory is read
        from thruster_hil.stream import CycleStream, monitor_link_counters, resolve_option

        target = resolve_option(args.stream, "monitor")
    # runs/latest is read once: a newer run that moves the link does not switch the view.
    run_dir = resolve_latest(args.run_dir)
    stream = CycleStream(target) if target is not None else None
    try:
        follower = RunDirFollower(run_dir, on_row=stream.on_row if stream is not None else None)
        if stream is not None:
            stream.set_link_counters(monitor_link_counters(follower.link_record))
        first = follower.poll()  # a directory that is not a run: one line, before any live view
        if args.once:
            console.print(render(first))
            status = _run_status(follower.summary) if follower.finished else 0
        else:
            follow(
                follower.poll,
                console=console,
                done=lambda: follower.finished,
                refresh_per_second=LIVE_HZ,
            )
            status = _run_status(follower.summary)
    finally:
        if stream is not None:
            stream.close()  # sends what is queued (after an error too), then the counts
    if stream is not None:
        print(stream.note(), file=sys.stderr)
    return status


def _run_status(summary: dict | None) -> int:
    """The exit status of a run with this summary, for `run` and `monitor` alike: 128 + the
    signal's number when a signal stopped it (130 Ctrl-C, 143 SIGTERM, 129 SIGHUP), 1 when it
    was otherwise aborted or did not reach its target (``failure_reason``), 0 else."""
    from thruster_hil.records import run_outcome

    if not summary:
        return 0
    outcome, _why = run_outcome(summary)
    if outcome == "completed":
        return 0
    if outcome == "aborted" and (
        summary.get("signal") or summary.get("abort_reason") == "interrupted"
    ):
        return exit_status(summary.get("signal"))
    return 1


#: monitor --port: how long to wait for the unit's first housekeeping packet [s].
HK_WAIT_S = 2.0


def _monitor_port(url: str, once: bool, console) -> int:
    import time

    from thruster_hil.firmware_bridge.link import Link, LinkError
    from thruster_hil.live import follow, port_snapshot, render

    link = Link(url, ping_burst=5)
    try:
        try:
            link.connect(mode="lockstep")  # HELLO only: a session, never ARM (the unit stays SAFE)
            link.wait_hk(timeout_s=HK_WAIT_S)
        except LinkError as exc:
            raise UserError(url, f"the unit did not answer: {exc}") from None
        if once:
            console.print(render(port_snapshot(link, url)))
            return 0
        next_ping = [time.monotonic() + 1.0]

        def poll() -> dict:
            if time.monotonic() >= next_ping[0]:  # keep the RTT current, once a second
                next_ping[0] = time.monotonic() + 1.0
                try:
                    link.ping()
                except LinkError:
                    pass  # shown as a stale HK and a link that is down
            return port_snapshot(link, url)

        follow(
            poll,
            console=console,
            done=lambda: not link.is_up,
            interval_s=0.25,
            refresh_per_second=LIVE_HZ,
        )
        print(f"{PROG}: error: {url}: the link went down", file=sys.stderr)
        return 1
    finally:
        link.close()


def _cmd_emulate(args: argparse.Namespace) -> int:
    from thruster_hil.firmware_bridge.emulator import main as emulator_main
    from thruster_hil.firmware_bridge.faults import parse_faults

    parse_faults(args.faults, args.channels)  # one-line error before the pty opens
    argv = ["--channels", str(args.channels)]
    # --opt=VALUE: a value that starts with '-' is still a value to the emulator's parser
    if args.faults:
        argv.append(f"--faults={args.faults}")
    if args.log:
        argv.append(f"--log={args.log}")
    if args.seed is not None:
        argv += ["--seed", str(args.seed)]
    return emulator_main(argv)


#: USB ids of the Arduino Mega 2560 (Arduino LLC and Arduino SRL vendor ids, 16U2 bridge).
MEGA_2560_IDS = {(0x2341, 0x0042), (0x2A03, 0x0042), (0x2341, 0x0010)}


def _cmd_ports(args: argparse.Namespace) -> int:
    from serial.tools import list_ports

    rows = []
    for p in sorted(list_ports.comports(), key=lambda p: p.device):
        vid_pid = f"{p.vid:04X}:{p.pid:04X}" if p.vid is not None else ""
        rows.append(
            {
                "device": p.device,
                "vid_pid": vid_pid,
                "serial": p.serial_number or "",
                "description": p.description or "",
                "mega2560": (p.vid, p.pid) in MEGA_2560_IDS,
            }
        )
    if args.json:
        print(json.dumps({"ports": rows}))
        return 0
    if not rows:
        print("no serial ports found (a Mega on USB shows up as /dev/ttyACM*; see docs/bench.md)")
        return 0
    for r in rows:
        mark = "  <- Arduino Mega 2560" if r["mega2560"] else ""
        print(f"{r['device']:<24s} {r['vid_pid']:<10s} {r['description']}{mark}")
    return 0


def _cmd_selftest(args: argparse.Namespace) -> int:
    from thruster_hil.firmware_bridge.conformance import run_all

    process = None
    url = args.port
    if url is None:
        from thruster_hil.closedloop.hil import start_unit_process

        process = start_unit_process(args.unit)
        url = process.port
    try:
        results = run_all(url)
    finally:
        if process is not None:
            process.stop()
    failed = [r for r in results if r.outcome == "failed"]
    if args.json:
        print(
            json.dumps(
                {
                    "port": args.port or args.unit,
                    "passed": not failed,
                    "checks": [
                        {
                            "name": r.check.name,
                            "requirement": r.check.requirement,
                            "outcome": r.outcome,
                            "detail": r.detail,
                            "seconds": round(r.seconds, 3),
                        }
                        for r in results
                    ],
                }
            )
        )
    else:
        print(f"unit conformance on {args.port or args.unit}:")
        for r in results:
            mark = {"passed": "PASS", "failed": "FAIL", "skipped": "SKIP"}[r.outcome]
            line = f"  {mark}  {r.check.name:<22s} {r.check.requirement}"
            print(line + (f"\n        -> {r.detail}" if r.detail else ""))
        print(
            f"{len(results) - len(failed)} of {len(results)} checks passed or skipped; "
            f"{len(failed)} failed"
        )
    return 1 if failed else 0


def _cmd_faults(args: argparse.Namespace) -> int:
    import shlex
    from datetime import UTC, datetime
    from pathlib import Path

    from thruster_hil.campaign import build_rows, run_campaign, write_doc

    rows = build_rows(args.seed, args.units)
    known = {r.id for r in rows}
    if args.only and not args.only <= known:
        raise UserError(
            "faults",
            f"--only: no row {', '.join(sorted(args.only - known))} with "
            f"--units {','.join(args.units)} (rows: {', '.join(sorted(known))})",
        )
    doc = Path(args.doc) if args.doc is not None else None
    if doc is not None and not doc.is_file():
        raise UserError("faults", f"--doc: {doc} is not a file")
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = Path(args.out) if args.out is not None else Path("runs") / f"faults-{stamp}"
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError("faults", f"--out: {out} exists and is not an empty directory")
    if "qemu" in args.units:
        import shutil

        if shutil.which("qemu-system-avr") is None:
            raise UserError(
                "faults",
                "qemu-system-avr not found: install qemu-system-misc "
                "gcc-avr avr-libc, or run with --units emulator",
            )
    if args.list:
        for r in rows:
            print(f"{r.id}  {r.unit:<8}  {r.mode:<8}  {r.fault}  [{r.spec or ''}]")
        return 0

    def progress(rec: dict) -> None:
        if not args.json:
            mark = "pass" if rec["passed"] else "FAIL " + "; ".join(rec["why"])
            print(
                f"{rec['id']}  {rec['unit']:<8}  {rec['fault']}: "
                f"{rec['measured']['outcome']}  [{mark}]",
                flush=True,
            )

    records = run_campaign(out, args.seed, args.units, args.only, progress, jobs=args.jobs)
    if doc is not None:
        argv = [
            "thruster-hil",
            "faults",
            "--seed",
            str(args.seed),
            "--units",
            ",".join(args.units),
            "--doc",
            str(doc),
        ]
        write_doc(doc, records, shlex.join(argv))
    passed = sum(r["passed"] for r in records)
    if args.json:
        print(
            json.dumps({"out": str(out), "passed": passed, "total": len(records), "rows": records})
        )
    else:
        print(f"{passed} of {len(records)} rows pass; evidence in {out}")
    return 0 if passed == len(records) else 1


def _cmd_validate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from thruster_hil import validate

    doc = Path(args.doc) if args.doc is not None else None
    if doc is not None:
        validate.check_doc(doc)  # one line before the work, not after it
    result = validate.run_all()
    if doc is not None:
        validate.write_doc(doc, result)
    if args.json:
        print(json.dumps(result))
    else:
        print(validate.markdown(result))
    return 0 if result["ok"] else 1


def _no_command(parser: argparse.ArgumentParser) -> UserError:
    """A bare ``thruster-hil``: its usage and the commands, in the one line of a usage error
    (exit status 2), not argparse's "the following arguments are required: COMMAND"."""
    commands = next(a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    usage = " ".join(parser.format_usage().split())
    return UserError(
        "no command",
        f"{usage} with COMMAND one of {', '.join(commands)}; 'thruster-hil --help' and "
        "'thruster-hil COMMAND --help' say more",
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if not argv:
            raise _no_command(parser)
        with StopSignals() as stop:
            args = parser.parse_args(argv)
            args.stop_signals = stop
            return args.handler(args)
    except UserError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt as exc:  # Ctrl-C, SIGTERM, SIGHUP (thruster_hil.stopsignals)
        name = getattr(exc, "signal_name", "SIGINT")
        print(f"{PROG}: interrupted" + ("" if name == "SIGINT" else f" by {name}"), file=sys.stderr)
        return exit_status(name)
    except BrokenPipeError:
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
