"""Bad input everywhere (issue 7): every command line and every file the bench reads, fed
generated garbage.

The contract (docs/architecture.md, DESIGN "Errors for people"): ONE line on stderr, ``thruster-hil:
error: <what and where>`` (``thruster_hil.firmware_bridge.emulator: error: ...`` for the emulator's
own command line), exit status 2, no traceback, never a silent correction.

How generated garbage stays garbage: every command line ends with a *poison*, an element that is
rejected before any work starts whatever came before it (argparse keeps the last --stack, --out
or --port given, so a poison placed last always counts). *Tripwires* replace everything a valid
command would start (a burn, a unit, an emulator, a campaign, a live view, an opened serial
port, a plot): a generated command line that got past validation fails its example at once
instead of starting a run or hanging.

FUZZ_EXAMPLES=3000 (environment) makes a long run; the default, 200 examples per property, keeps
the file at about 25 s.

Config files: real hw_configs files mutated so that they are certainly invalid (an alien type, a
NaN, a value far out of range, a key deleted or added) must raise ConfigError naming the file
and the field; byte-level damage (truncation, inserted bytes) may leave a file that still loads,
but may never raise anything other than a one-line ConfigError.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime as dt
import io
import itertools
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from thruster_hil.hw_configs import CONFIG_DIR

from thruster_hil import cli
from thruster_hil.config import load_stack
from thruster_hil.core.errors import ConfigError, UserError
from thruster_hil.dispersions import load_dispersions

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import gen_c_header  # noqa: E402
from test_config import _leaves  # noqa: E402 -- (path, value) of every leaf and every list

# Slow tier (`-m "not slow"` leaves it out): runs the CLI and the emulator as processes on generated
# input.
pytestmark = pytest.mark.slow

CLI_PREFIX = "thruster-hil: error: "
EMU_PREFIX = "thruster_hil.firmware_bridge.emulator: error: "
FUZZ = settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "200")),
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
        HealthCheck.data_too_large,
    ],
)


# ============================================================================ the harness


class Tripwire(Exception):
    """Raised where a valid command would start real work. (Not an AssertionError, which the
    conformance checks catch; nothing on the way to the tripwires catches every Exception.)"""


def _tripwire(what: str):
    def fire(*args, **kwargs):
        raise Tripwire(f"garbage got past validation: {what} was started")

    return fire


def call(argv: list[str], entry=cli.main) -> tuple[int, str, str]:
    """Run a command line in this process: (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = entry(list(argv))
        except SystemExit as exc:  # argparse's --help / exit paths: never for garbage
            status = exc.code
    return status, out.getvalue(), err.getvalue()


def assert_one_line_error(status, out: str, err: str, argv, prefix: str = CLI_PREFIX) -> None:
    shown = f"argv={argv!r}\nstatus={status!r}\nstderr={err!r}"
    assert status == 2, shown
    assert err.startswith(prefix), shown
    assert err.endswith("\n") and len(err.splitlines()) == 1, shown
    assert "Traceback" not in err, shown
    assert out == "", shown


def _helpish(token: str) -> bool:
    """-h / --help (or an abbreviation of it): valid input that prints help and exits 0."""
    head = token.split("=", 1)[0]
    return token.startswith("-h") or (len(head) >= 3 and "--help".startswith(head))


def _options(parser: argparse.ArgumentParser) -> dict[str, bool]:
    """A parser's option strings (no help) -> whether the option takes a value."""
    return {
        o: a.nargs != 0
        for a in parser._actions
        for o in a.option_strings
        if o not in ("-h", "--help")
    }


_SUB = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
COMMANDS: dict[str, dict[str, bool]] = {name: _options(p) for name, p in _SUB.choices.items()}


def _emulator_options() -> dict[str, bool]:
    from thruster_hil.firmware_bridge import emulator

    return _options(emulator._parser())


# ============================================================================ the garbage

CONTROL = "".join(chr(c) for c in range(1, 32)) + "\x7f\x85\u2028\u2029"
WORDS = [
    "",
    " ",
    "-",
    "--",
    "=",
    "@",
    ",",
    ":",
    ".",
    "..",
    "/",
    "~",
    "*",
    "'",
    '"',
    "\\",
    "$HOME",
    "nan",
    "NaN",
    "-nan",
    "inf",
    "-inf",
    "+inf",
    "Infinity",
    "1e309",
    "-1e309",
    "1e-400",
    "5e-324",
    "0",
    "-0",
    "-1",
    "+1",
    "1_0",
    "1__0",
    "１",
    "١",
    "٣",
    "৭",
    "0x1f",
    "0o7",
    "0b1",
    "1,5",
    "1.2.3",
    "1e",
    "e5",
    ".e1",
    "true",
    "false",
    "null",
    "None",
    "9" * 40,
    "-" + "9" * 40,
    "\n",
    "1\n",
    "\t1",
    " 1 ",
    "\r\n",
    "\u2028",
    "x" * 300,
    "drop=0.5",
    "reset@1s",
    "a@b",
    "@1",
    "x@",
    "x@-1",
    "x@nan",
    "fire+1s",
    "\udcff",
    "sim",
    "emulator",
    "qemu",
]
_text = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=12)
_control = st.text(st.sampled_from(CONTROL), min_size=1, max_size=4)
_numberish = st.one_of(
    st.integers(-(10**40), 10**40).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.floats(allow_nan=True, allow_infinity=True).map(lambda x: f"{x:e}"),
)
# Nothing that names a serial port that might exist ("/dev/...") or a pyserial URL that opens
# without hardware (loop://, spy://...): garbage must never reach a unit.
garbage = st.one_of(st.sampled_from(WORDS), _text, _control, _numberish).filter(
    lambda t: not _helpish(t) and "://" not in t and not t.startswith("/dev")
)
_optchars = "abcdefghijklmnopqrstuvwxyz0123456789-_"
random_option = (
    st.text(st.sampled_from(_optchars), min_size=1, max_size=12)
    .map(lambda s: "--" + s)
    .filter(lambda t: not _helpish(t))
)

_DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?", re.ASCII)
_WHOLE = re.compile(r"[+-]?[0-9]+", re.ASCII)


def _is_positive_decimal(t: str) -> bool:
    return bool(_DECIMAL.fullmatch(t)) and math.isfinite(float(t)) and float(t) > 0.0


def _is_whole_in(t: str, lo: int, hi: int) -> bool:
    return bool(_WHOLE.fullmatch(t)) and len(t) < 50 and lo <= int(t) <= hi


def bad_positive() -> st.SearchStrategy[str]:
    """Used as --option=VALUE, so a value may start with '-'."""
    return garbage.filter(lambda t: not _is_positive_decimal(t))


def bad_whole(lo: int, hi: int) -> st.SearchStrategy[str]:
    """Used as --option=VALUE, so a value may start with '-'."""
    return st.one_of(
        garbage, st.integers(hi + 1, 10**30).map(str), st.integers(-(10**30), lo - 1).map(str)
    ).filter(lambda t: not _is_whole_in(t, lo, hi))


# A fault spec item certainly wrong for 32 channels (grammar, range, digits, duplicates).
BAD_FAULT_ITEMS = [
    "drop=2",
    "drop=-0.1",
    "drop=nan",
    "drop=inf",
    "drop=1_0",
    "drop=٠.٥",
    "drop=",
    "drop",
    "corrupt.up=0.1",
    "duplicate=0.1@1s",
    "delay=0.1",
    "delay=0.1:30",
    "delay=2:30ms",
    "delay=0.1:1e3s",
    "delay=0.1:86401s",
    "stall=5@2s",
    "stall=0ms@1s",
    "stall=66s@1s",
    "stall=1s@",
    "stall=1s",
    "reset",
    "reset@",
    "reset@fire+",
    "reset@2",
    "reset@86401s",
    "reset@٢s",
    "reset@fire+fire+1s",
    "fail=32@1s",
    "fail=-1@1s",
    "fail=٣@1s",
    "fail=1",
    "stuck=x@1s",
    "clear=1@",
    "pressure=70000kPa@1s",
    "pressure=1_5@1s",
    "pressure=-1@1s",
    "seed=-1",
    "seed=x",
    "seed=1@1s",
    "seed=" + "9" * 30,
    "seed=1_0",
    "seed.rx=1",
    "bogus=1",
    "=",
    "==",
    "drop==1",
    "@",
    "drop=0.1,drop=0.2",
    "delay.tx=0.1:1ms,delay=0.2:1ms",
]
GOOD_FAULT_ITEMS = [
    "drop=0.01",
    "corrupt.rx=0.02",
    "duplicate=0.005",
    "delay.tx=0.1:30ms",
    "stall=5s@2s",
    "reset@fire+40s",
    "fail=3@10s",
    "pressure=1500kPa@20s",
    "clear=3@1.5s",
    "seed=7",
]


@st.composite
def bad_fault_spec(draw) -> str:
    good = draw(st.lists(st.sampled_from(GOOD_FAULT_ITEMS), max_size=3, unique=True))
    # drop=... twice would be a duplicate anyway; keep the good ones' keys apart from the bad
    bad = draw(
        st.one_of(
            st.sampled_from(BAD_FAULT_ITEMS),
            garbage.map(lambda t: "zz" + "".join(t.split()) + "=1"),
        )
    )
    items = draw(st.permutations([*good, bad]))
    return ",".join(items)


# ============================================================================ the bench


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """Bad files and directories, a real run directory to damage, the cwd in a scratch
    directory (relative garbage paths name nothing; nothing lands in the repository), then the
    tripwires."""
    mp = pytest.MonkeyPatch()
    base = tmp_path_factory.mktemp("fuzz")
    mp.chdir(base)
    b = _Bench(base)
    b.template_run = base / "template-run"
    status, _, err = call(
        [
            "run",
            "--unit",
            "sim",
            "--stack",
            "progress",
            "--delta-v",
            "0.005",
            "--out",
            str(b.template_run),
            "--json",
        ]
    )
    assert status == 0, err
    _install_tripwires(mp)
    yield b
    mp.undo()


def _install_tripwires(mp: pytest.MonkeyPatch) -> None:
    import matplotlib
    import serial
    import thruster_hil.firmware_bridge.emulator

    import thruster_hil.campaign
    import thruster_hil.closedloop.fused
    import thruster_hil.closedloop.hil
    import thruster_hil.closedloop.runner
    import thruster_hil.live
    import thruster_hil.montecarlo
    import thruster_hil.replay

    real_run_burn = thruster_hil.closedloop.runner.run_burn

    def run_burn(model, plan, **kwargs):
        """A plan flies its burn (thruster_hil.plan: the ideal unit, nobody watching, nothing
        written): that is planning. A burn with a unit, a watcher, failures or a case is a run."""
        if any(kwargs.get(k) for k in ("unit", "failures", "on_cycle", "case")):
            raise Tripwire("garbage got past validation: a burn was started")
        return real_run_burn(model, plan, **kwargs)

    mp.setattr(thruster_hil.closedloop.runner, "run_burn", run_burn)
    mp.setattr(
        thruster_hil.closedloop.fused, "warm_up", _tripwire("a burn (the compile before it)")
    )
    mp.setattr(thruster_hil.replay, "run_burn", _tripwire("a replayed burn"))
    mp.setattr(thruster_hil.closedloop.hil, "open_unit", _tripwire("a unit"))
    mp.setattr(thruster_hil.closedloop.hil, "start_unit_process", _tripwire("a unit process"))
    mp.setattr(thruster_hil.firmware_bridge.emulator.Emulator, "open_pty", _tripwire("an emulator"))
    mp.setattr(thruster_hil.montecarlo, "run_local", _tripwire("a Monte-Carlo campaign"))
    mp.setattr(thruster_hil.montecarlo, "run_dask", _tripwire("a Dask campaign"))
    mp.setattr(thruster_hil.live, "follow", _tripwire("a live view"))
    mp.setattr(thruster_hil.campaign, "run_campaign", _tripwire("a fault campaign"))
    mp.setattr(thruster_hil.campaign, "run_row", _tripwire("a fault campaign row"))
    mp.setattr(matplotlib, "use", _tripwire("a plot"))
    real_open = serial.serial_for_url

    def opened(*args, **kwargs):
        port = real_open(*args, **kwargs)
        port.close()
        raise Tripwire(f"garbage got past validation: port {args[:1]} opened")

    mp.setattr(serial, "serial_for_url", opened)


class _Bench:
    """Files that are no config: each in bad_config_paths certainly fails to load as a stack,
    each in bad_spec_paths as a dispersion spec."""

    def __init__(self, base: Path):
        self.base = base
        self._n = itertools.count()
        d = base / "bad"
        d.mkdir()
        (d / "adir.toml").mkdir()
        (d / "afile").write_text("not a directory\n")
        (d / "nonempty").mkdir()
        (d / "nonempty" / "keep.txt").write_text("precious\n")
        stack_text = (CONFIG_DIR / "stacks" / "progress.toml").read_text()
        files = {
            "empty.toml": b"",
            "not-toml.toml": b"this is [[ not toml\n",
            "non-utf8.toml": b'name = "\xff\xfe"\n',
            "wrong-shape.toml": b"x = 1\n[y]\nz = [1, 2]\n",
            "nested.toml": b"x = " + b"[" * 3000 + b"]" * 3000 + b"\n",
            "huge-int.toml": b"name = " + b"9" * 5000 + b"\n",
            "truncated-stack.toml": stack_text[: len(stack_text) // 3].encode(),
            "vehicle-as-stack.toml": (CONFIG_DIR / "vehicles" / "progress-ms.toml").read_bytes(),
            "station-as-stack.toml": (CONFIG_DIR / "stations" / "iss.toml").read_bytes(),
            "bom.toml": b"\xef\xbb\xbf" + b"name = 1\n",
        }
        for name, data in files.items():
            (d / name).write_bytes(data)
        unreadable = d / "unreadable.toml"
        unreadable.write_bytes(b"[[[ also not toml\n")
        unreadable.chmod(0)
        os.mkfifo(d / "fifo.toml")
        self.bad_config_paths = [
            str(p)
            for p in (
                d / "missing.toml",
                d / "adir.toml",
                d / "afile" / "x.toml",
                d / ("x" * 300 + ".toml"),
                d / "fifo.toml",
                unreadable,
                *(d / name for name in files),
            )
        ]
        # A good stack is a bad dispersion spec (unknown keys).
        (d / "stack-as-spec.toml").write_bytes(stack_text.encode())
        # ... and an empty file is a good one (every field has its default).
        self.bad_spec_paths = [
            *(p for p in self.bad_config_paths if not p.endswith("empty.toml")),
            str(d / "stack-as-spec.toml"),
        ]
        self.bad_config_names = [
            "soyuz",
            "",
            " ",
            "x" * 300,
            "progress.",
            "..",
            "-x",
            "progress\n",
            "ｐｒｏｇｒｅｓｓ",
        ]
        self.missing = d / "missing"
        self.adir = d / "adir.toml"
        self.afile = d / "afile"
        self.nonempty = d / "nonempty"
        self.fifo = d / "fifo.toml"

    def fresh(self, name: str) -> Path:
        """A new, unique path in the scratch directory (examples never share files)."""
        return self.base / f"{name}-{next(self._n)}"


# ============================================================================ command lines

#: Values that are valid for an option: so that garbage elsewhere reaches deep validation.
VALID = {
    "--stack": ["progress", "cygnus", "dragon-boost-kit"],
    "--delta-v": ["0.01", "1"],
    "--raise-perigee-km": ["0.5"],
    "--target-mean-altitude-km": ["419"],
    "--burn-duration": ["10"],
    "--perigee-km": ["410"],
    "--apogee-km": ["420"],
    "--solar-activity": ["low", "high"],
    "--unit": ["sim", "emulator", "qemu"],
    "--mode": ["lockstep", "realtime"],
    "--faults": ["drop=0.01", "seed=3"],
    "--fail-thruster": ["kdu-1@1", "bt4@0"],
    "--dispersions": ["default"],
    "--case-seed": ["5"],
    "--case": ["0"],
    "--seed": ["1"],
    "--cases": ["2"],
    "--chunk": ["1"],
    "--threads": ["1"],
    "--scheduler": ["tcp://127.0.0.1:9"],
    "--channels": ["4", "32"],
    "--f107": ["65", "250.5"],
    "--ap": ["0", "45"],
    "--days": ["30"],
    "--floor-km": ["410"],
    "--ceiling-km": ["419"],
}


def _value(draw, bench: _Bench, option: str) -> str:
    if option == "--port":  # never a port that opens
        return draw(bad_port(bench))
    if option in ("--out", "--log"):
        return draw(
            st.sampled_from([str(bench.fresh("out")), str(bench.afile), str(bench.nonempty)])
        )
    pool = VALID.get(option)
    if pool and draw(st.booleans()):
        return draw(st.sampled_from(pool))
    return draw(garbage)


#: Command lines that get past argparse: "deep" bodies start here, so that the garbage after
#: them meets the handlers' own checks (stack, plan, dispersions, faults, run directory...).
BASE = {
    "plan": ["--delta-v", "0.01"],
    "run": ["--unit", "sim", "--delta-v", "0.01"],
    "montecarlo": ["--cases", "2", "--delta-v", "0.01"],
    "monitor": ["--once"],
}
POSITIVE = {
    "--delta-v",
    "--raise-perigee-km",
    "--target-mean-altitude-km",
    "--burn-duration",
    "--perigee-km",
    "--apogee-km",
    "--floor-km",
    "--ceiling-km",
}
WHOLE = {
    "--cases": (1, 10**8),
    "--chunk": (1, 10**8),
    "--threads": (1, 10**8),
    "--case": (0, 10**8),
    "--case-seed": (0, 2**63 - 1),
    "--seed": (0, 2**63 - 1),
    "--channels": (1, 32),
    "--min-on-ticks": (0, 1000),
    "--boot-delay-ms": (0, 10000),
    "--parent-fd": (0, 2**31 - 1),
}


def _choices(parser: argparse.ArgumentParser) -> dict[str, tuple]:
    return {
        o: tuple(a.choices)
        for a in parser._actions
        if a.choices and a.option_strings
        for o in a.option_strings
    }


CHOICES = {name: _choices(p) for name, p in _SUB.choices.items()}


def _parses(draw, bench: _Bench, option: str, choices: tuple) -> str:
    """A value argparse takes for the option, but otherwise anything."""
    if option in POSITIVE:
        return repr(
            draw(
                st.one_of(
                    st.floats(5e-324, 1e308),
                    st.sampled_from([1e-9, 0.01, 1.0, 100.0, 149.9, 410.0, 2000.1, 1e6]),
                )
            )
        )
    if option in WHOLE:
        lo, hi = WHOLE[option]
        return str(draw(st.one_of(st.integers(lo, hi), st.sampled_from([lo, hi]))))
    if choices:
        return draw(st.sampled_from(choices))
    if option == "--fail-thruster":
        return f"{draw(garbage)}@{draw(st.floats(0, 1e6))!r}"
    return _value(draw, bench, option)


@st.composite
def argv_body(
    draw,
    bench: _Bench,
    options: dict[str, bool],
    base: list[str] | None = None,
    choices: dict[str, tuple] | None = None,
) -> list[str]:
    """Either chaos (0-6 elements: options with garbage or valid values, options without their
    value, made-up options, stray words) or deep (``base``, a command line argparse takes, plus
    options whose values argparse takes but nothing else should)."""
    names = sorted(options)
    if base is not None and names and draw(st.booleans()):
        out = list(base)
        for _ in range(draw(st.integers(0, 4))):
            opt = draw(st.sampled_from(names))
            out.append(
                f"{opt}={_parses(draw, bench, opt, (choices or {}).get(opt, ()))}"
                if options[opt]
                else opt
            )
        return out
    out = []
    for _ in range(draw(st.integers(0, 6))):
        hows = (
            ("value", "value", "equals", "bare", "made-up", "stray")
            if names
            else ("made-up", "stray")
        )
        how = draw(st.sampled_from(hows))
        opt = draw(st.sampled_from(names)) if names else ""
        if how == "made-up":
            out += [draw(random_option)] + ([draw(garbage)] if draw(st.booleans()) else [])
        elif how == "stray":
            out.append(draw(garbage))
        elif how == "bare" or not options[opt]:
            out.append(opt)
        elif how == "equals":
            out.append(f"{opt}={_value(draw, bench, opt)}")
        else:
            out += [opt, _value(draw, bench, opt)]
    return out


def bad_port(bench: _Bench) -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(
            [str(bench.missing), str(bench.adir), str(bench.afile), "", "nope://x", "x" * 300]
        ),
        garbage.filter(lambda t: not t.startswith("/")),  # relative: nothing in the scratch dir
    )


def bad_run_dir_simple(bench: _Bench) -> st.SearchStrategy[str]:
    return st.sampled_from(
        [str(bench.missing), str(bench.afile), str(bench.adir), str(bench.fifo), "x" * 300, ""]
    )


@st.composite
def burn_poison(draw, bench: _Bench) -> list[str]:
    """Rejected while the stack loads or the burn is planned: before anything is written."""
    kind = draw(st.sampled_from(("stack-file", "stack-name", "target", "target-range", "activity")))
    if kind == "activity":  # outside the atmosphere table, or not a number
        return draw(
            st.sampled_from(
                [
                    ["--f107=-5"],
                    ["--f107=nan"],
                    ["--f107=300.01"],
                    ["--ap=1000"],
                    ["--ap=-0.5"],
                    ["--ap=inf"],
                ]
            )
        )
    if kind == "stack-file":
        return ["--stack", draw(st.sampled_from(bench.bad_config_paths))]
    if kind == "stack-name":
        return ["--stack", draw(st.sampled_from(bench.bad_config_names))]
    flag = draw(
        st.sampled_from(
            ("--delta-v", "--raise-perigee-km", "--burn-duration", "--target-mean-altitude-km")
        )
    )
    if kind == "target":
        return [f"{flag}={draw(bad_positive())}"]
    # Numbers, but a burn the thrusters cannot make: a pulse too short, more propellant than
    # the tanks hold, or (mean altitude) not above the orbit. (Stack default: dragon.)
    tiny_or_huge = draw(st.sampled_from(("1e-12", "5e-324", "1e-9", "1e9", "1e300", "5000")))
    if flag == "--target-mean-altitude-km":  # 1 km: below any orbit (perigee >= 150 km)
        tiny_or_huge = draw(st.sampled_from(("1", "1e9", "1e300")))
    return ["--stack", "dragon-boost-kit", flag, tiny_or_huge]


def bad_stream_url() -> st.SearchStrategy[str]:
    """A --stream that is not udp://HOST:PORT or whose host does not resolve (refused at
    start-up, before the plan: resolved once at the edge)."""
    return st.one_of(
        st.sampled_from(
            [
                "udp://no.such.host.invalid:9",
                "tcp://127.0.0.1:9",
                "udp://127.0.0.1",
                "udp://127.0.0.1:0",
                "udp://127.0.0.1:65536",
                "udp://:9",
                "udp://[::1:9",
                "",
            ]
        ),
        garbage.filter(lambda t: not t.lower().startswith("udp:")),
    )


@st.composite
def run_poison(draw, bench: _Bench) -> list[str]:
    kind = draw(st.sampled_from(("burn", "out", "unit", "faults", "stream")))
    if kind == "burn":
        return draw(burn_poison(bench))
    if kind == "stream":
        return ["--stream", draw(bad_stream_url())]
    if kind == "out":  # checked after the plan, before the unit: nothing is ever overwritten
        return [
            "--out",
            draw(
                st.sampled_from(
                    [str(bench.afile), str(bench.nonempty), str(bench.afile / "x"), "x" * 300]
                )
            ),
        ]
    if kind == "faults":
        return ["--unit", "emulator", "--faults", draw(bad_fault_spec())]
    return draw(
        st.sampled_from(
            [
                ["--unit", "sim", "--faults", "drop=0.1"],
                ["--unit", "sim", "--mode", "realtime"],
                ["--unit", "qemu", "--faults", "drop=0.1"],
                ["--unit", "sim", "--port", "x"],
                ["--port", "x", "--faults", "seed=1"],
            ]
        )
    )


@st.composite
def montecarlo_poison(draw, bench: _Bench) -> list[str]:
    kind = draw(st.sampled_from(("burn", "out", "spec", "threads")))
    if kind == "burn":
        return draw(burn_poison(bench))
    if kind == "out":
        return ["--out", draw(st.sampled_from([str(bench.afile), str(bench.nonempty), "x" * 300]))]
    if kind == "spec":
        return [
            "--dispersions",
            draw(st.sampled_from([*bench.bad_spec_paths, "nominal", "", "x" * 300])),
        ]
    return ["--threads", str(os.cpu_count() * 1000 + draw(st.integers(1, 10**6)))]


@st.composite
def emulate_poison(draw, bench: _Bench) -> list[str]:
    kind = draw(st.sampled_from(("channels", "faults", "seed")))
    if kind == "channels":
        return [f"--channels={draw(bad_whole(1, 32))}"]
    if kind == "seed":
        return [f"--seed={draw(bad_whole(0, 2**63 - 1))}"]
    return [f"--faults={draw(bad_fault_spec())}"]


@st.composite
def sustain_poison(draw, bench: _Bench) -> list[str]:
    """Rejected before the year is flown (or, --plot, before anything is computed)."""
    kind = draw(st.sampled_from(("f107", "ap", "days", "band", "stack", "plot")))
    if kind == "f107":
        return [f"--f107={draw(st.sampled_from(['-5', 'nan', 'inf', '59.99', '300.5', '1e9']))}"]
    if kind == "ap":
        return [f"--ap={draw(st.sampled_from(['-1', '1000', 'nan', '400.01', '-inf']))}"]
    if kind == "days":
        return [f"--days={draw(st.sampled_from(['0', '-1', '3651', 'nan', '1e300']))}"]
    if kind == "band":  # floor not below the ceiling, or outside 200..1000 km
        floor, ceiling = draw(
            st.sampled_from(
                [("430", "420"), ("418", "418"), ("199", "410"), ("410", "1001"), ("150", "160")]
            )
        )
        return ["--floor-km", floor, "--ceiling-km", ceiling]
    if kind == "stack":
        return ["--stack", draw(st.sampled_from(bench.bad_config_paths + bench.bad_config_names))]
    return [
        "--plot",
        draw(
            st.sampled_from(
                [str(bench.adir), str(bench.afile / "x.png"), str(bench.missing / "x.png")]
            )
        ),
    ]


def _valid_units(text: str) -> bool:
    try:
        cli._units(text)
    except argparse.ArgumentTypeError:
        return False
    return True


@st.composite
def faults_poison(draw, bench: _Bench) -> list[str]:
    """Rejected before a row flies (and before --list prints anything)."""
    kind = draw(st.sampled_from(("units", "only", "seed", "doc", "out")))
    if kind == "units":
        units = draw(garbage.filter(lambda t: not _valid_units(t)))
        return [f"--units={units}"]
    if kind == "only":
        only = draw(st.one_of(st.sampled_from(["E99", "Q99", "X1", "", "E1"]), garbage))
        return [f"--only={only}"]
    if kind == "seed":
        return [f"--seed={draw(bad_whole(0, 2**63 - 1))}"]
    if kind == "doc":
        return [
            "--units",
            "emulator",
            "--doc",
            draw(st.sampled_from([str(bench.missing), str(bench.adir), ""])),
        ]
    return [
        "--units",
        "emulator",
        "--out",
        draw(st.sampled_from([str(bench.afile), str(bench.nonempty)])),
    ]


def _poisons(bench: _Bench) -> dict[str, st.SearchStrategy[list[str]]]:
    return {
        "faults": faults_poison(bench),
        "plan": burn_poison(bench),
        "run": run_poison(bench),
        "montecarlo": montecarlo_poison(bench),
        "replay": bad_run_dir_simple(bench).map(lambda p: [p]),
        "report": bad_run_dir_simple(bench).map(lambda p: [p]),
        "monitor": st.one_of(
            bad_run_dir_simple(bench).map(lambda p: [p]),
            bad_port(bench).map(lambda p: ["--port", p]),
            bad_stream_url().map(lambda u: ["--stream", u]),
        ),
        "emulate": emulate_poison(bench),
        "sustain": sustain_poison(bench),
        "ports": st.one_of(
            random_option.filter(lambda o: not "--json".startswith(o)).map(lambda o: [o]),
            garbage.filter(lambda t: not t.startswith("-")).map(lambda t: [t]),
        ),
        "selftest": st.one_of(
            bad_port(bench).map(lambda p: ["--port", p]),
            garbage.filter(lambda t: t not in ("emulator", "qemu")).map(lambda t: [f"--unit={t}"]),
        ),
        # An XTCE file that cannot be written.
        "dictionary": st.sampled_from(
            [str(bench.adir), str(bench.missing / "x.xml"), str(bench.afile / "x.xml"), ""]
        ).map(lambda p: [f"--xtce={p}"]),
        # A port that is not there, or channels that are no channel list: refused before any
        # unit is started or armed.
        "checkout": st.one_of(
            bad_port(bench).map(lambda p: ["--port", p, "--yes"]),
            st.sampled_from(["40", "-1", "a-b", "3-1", "", "0,,1", "99999999999"]).map(
                lambda c: ["--port", str(bench.missing), "--channels", c, "--yes"]
            ),
        ),
        # A --doc that cannot take the tables: refused before any row is computed.
        "validate": st.sampled_from(
            [
                str(bench.missing),
                str(bench.adir),
                "",
                str(bench.afile),
                str(bench.base / "bad" / "non-utf8.toml"),
                str(bench.fifo),
            ]
        ).map(lambda p: [f"--doc={p}"]),
    }


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_garbage_command_lines_are_one_line_and_exit_2(bench, command):
    poison = _poisons(bench)[command]
    body = argv_body(bench, COMMANDS[command], BASE.get(command, []), CHOICES[command])

    @FUZZ
    @given(body=body, tail=poison)
    def check(body, tail):
        argv = [command, *body, *tail]
        status, out, err = call(argv)
        assert_one_line_error(status, out, err, argv)

    check()


@FUZZ
@given(argv=st.lists(st.one_of(garbage, random_option), max_size=5))
def test_no_or_unknown_command_is_one_line_and_exit_2(argv):
    assume(not any(t in COMMANDS for t in argv))  # no command at all, or only unknown ones
    status, out, err = call(argv)
    assert_one_line_error(status, out, err, argv)


@st.composite
def emulator_poison(draw, bench: _Bench) -> list[str]:
    kind = draw(
        st.sampled_from(
            ("channels", "faults", "seed", "ticks", "delay", "fd", "log", "mode", "made-up")
        )
    )
    if kind == "channels":
        return [f"--channels={draw(bad_whole(1, 32))}"]
    if kind == "seed":
        return [f"--seed={draw(bad_whole(0, 2**63 - 1))}"]
    if kind == "ticks":
        return [f"--min-on-ticks={draw(bad_whole(0, 1000))}"]
    if kind == "delay":
        return [f"--boot-delay-ms={draw(bad_whole(0, 10000))}"]
    if kind == "fd":  # not an open descriptor of this process
        return ["--parent-fd", str(draw(st.integers(100_000, 2**31 - 1)))]
    if kind == "log":
        return [
            "--log",
            draw(
                st.sampled_from(
                    [str(bench.adir), str(bench.afile / "x.log"), str(bench.missing / "x.log")]
                )
            ),
        ]
    if kind == "mode":
        return [f"--mode-hint={draw(garbage.filter(lambda t: t not in ('lockstep', 'realtime')))}"]
    if kind == "made-up":  # not an option, nor an abbreviation of one
        return [
            draw(
                random_option.filter(
                    lambda o: not any(k.startswith(o) for k in _emulator_options())
                )
            )
        ]
    return [f"--faults={draw(bad_fault_spec())}"]


def test_garbage_emulator_command_lines_are_one_line_and_exit_2(bench):
    """``python -m thruster_hil.firmware_bridge.emulator`` has its own parser: the same contract."""
    from thruster_hil.firmware_bridge import emulator

    options = _emulator_options()
    choices = _choices(emulator._parser())

    @FUZZ
    @given(body=argv_body(bench, options, [], choices), tail=emulator_poison(bench))
    def check(body, tail):
        argv = [*body, *tail]
        status, out, err = call(argv, entry=emulator.main)
        assert_one_line_error(status, out, err, argv, prefix=EMU_PREFIX)

    check()


# ---- plan: any number a person may type is a plan the thrusters can fly, or one line ----------


def test_any_numeric_target_gives_a_flyable_plan_or_one_line(bench):
    """Numbers that parse (tiny, huge, odd): the plan either respects the thrusters (no burn
    shorter than a pulse, no more propellant than the tanks hold, an orbit target met) or is
    refused in one line. Before issue 7 huge targets printed negative altitudes, tiny ones raised
    ZeroDivisionError, and orbit targets could silently miss by a factor of two."""
    from thruster_hil.config import build_stack_model

    numbers = st.one_of(
        st.floats(min_value=5e-324, max_value=1e308),
        st.floats(min_value=1e-5, max_value=12.0),  # near what the tanks allow
        st.sampled_from([1e-12, 1e-4, 0.01, 0.3, 1.6, 4.9, 8.9, 30.0, 5000.0]),
    )

    @settings(max_examples=60, deadline=None)
    @given(
        stack=st.sampled_from(["progress", "cygnus", "dragon-boost-kit"]),
        flag=st.sampled_from(
            ["--delta-v", "--raise-perigee-km", "--burn-duration", "--target-mean-altitude-km"]
        ),
        value=numbers,
    )
    def check(stack, flag, value):
        argv = ["plan", "--stack", stack, flag, repr(value), "--json"]
        status, out, err = call(argv)
        if status == 2:
            assert_one_line_error(status, out, err, argv)
            assert flag in err or "plan:" in err, err
            return
        assert status == 0, (argv, err)
        p = json.loads(out)
        s = load_stack(stack)
        m = build_stack_model(s)
        tanks = {s.vehicle.thrusters[n].tank for n in s.translation_thrusters}
        propellant = sum(s.vehicle.tanks[k].propellant_kg for k in tanks)
        shortest = max(s.vehicle.thrusters[n].min_on_time_s for n in s.translation_thrusters)
        assert p["burn_duration_s"] >= shortest
        assert p["burn_duration_s"] * m.translation_mass_flow_kg_s <= propellant * (1 + 1e-9)
        # The plan is flown (issue 14: plan = run): no tank gave more than it holds.
        for tank, used in p["tank_used_kg"].items():
            assert used <= s.vehicle.tanks[tank].propellant_kg * (1 + 1e-9), (argv, tank)
        assert p["propellant_kg"] == pytest.approx(sum(p["tank_used_kg"].values()), abs=1e-3)
        for key in ("perigee_km_after", "apogee_km_after"):
            assert 150.0 <= p[key] <= 2000.0, (argv, p[key])
        if flag == "--raise-perigee-km":
            assert p["perigee_km_after"] - p["perigee_km_before"] == pytest.approx(value, rel=0.011)
        if flag == "--target-mean-altitude-km":
            assert p["mean_altitude_change_km"] > 0.0

    check()


# ---- fresh processes: the same contract end to end ----------------------------------------


def _fresh(args: list, module: str = "thruster_hil.cli") -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", module, *args], capture_output=True, env=env, cwd=ROOT, timeout=60
    )


def _assert_fresh_one_line(proc: subprocess.CompletedProcess, prefix: str = CLI_PREFIX) -> None:
    err = proc.stderr.decode("utf-8", "backslashreplace")
    assert proc.returncode == 2, err
    assert err.startswith(prefix) and len(err.splitlines()) == 1, err
    assert "Traceback" not in err and proc.stdout == b"", err


def test_garbage_in_a_fresh_process(bench, tmp_path):
    """A handful through the console entry point: bytes that are not UTF-8 in argv, digits of
    another script, a file where a directory belongs, a spec that used to start an emulator."""
    not_a_run = tmp_path / "not-a-run"
    not_a_run.mkdir()
    (not_a_run / "summary.json").write_bytes(b"\xff\xfe[")
    (not_a_run / "telemetry.csv").write_text("cycle,t_s\n")
    cases = [
        [],
        ["fly"],
        ["plan", "--delta-v", "１"],
        ["plan", "--delta-v", "1_0"],
        ["plan", "--stack", b"\xff\xfe.toml", "--delta-v", "1"],
        ["plan", "--stack", str(bench.base / "bad" / "non-utf8.toml"), "--delta-v", "1"],
        ["plan", "--raise-perigee-km", "1e-300"],
        ["plan", "--delta-v", "1e308"],
        ["run", "--unit", "sim", "--delta-v", "0.01", "--out", str(bench.afile)],
        ["emulate", "--faults", "seed=١"],
        ["emulate", "--channels", "٣"],
        ["replay", str(bench.afile)],
        ["report", str(not_a_run)],
        ["monitor", str(not_a_run)],
        ["selftest", "--port", str(bench.adir)],
    ]
    for argv in cases:
        _assert_fresh_one_line(_fresh(argv))
    for argv in (
        ["--channels", "0"],
        ["--bogus"],
        ["--faults", "fail=٣@1s"],
        ["--parent-fd", "999999"],
        ["--link-path", str(bench.afile / "port")],
    ):
        _assert_fresh_one_line(_fresh(argv, "thruster_hil.firmware_bridge.emulator"), EMU_PREFIX)


# ============================================================================ config files


def _toml_str(s: str) -> str:
    # A TOML basic string: JSON's escapes are TOML's, but DEL must be escaped too.
    return json.dumps(s, ensure_ascii=False).replace("\x7f", "\\u007f")


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return (
            "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
        )
    if isinstance(v, str):
        return _toml_str(v)
    if isinstance(v, dt.datetime | dt.date | dt.time):
        return v.isoformat()
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_toml_str(k)} = {_toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(type(v))


def dumps(doc: dict) -> str:
    """TOML with every table inline: one line per top-level key (arrays of tables, datetimes
    and any key included)."""
    return "".join(f"{_toml_str(k)} = {_toml_value(v)}\n" for k, v in doc.items())


def _read(kind: str, stem: str) -> dict:
    return tomllib.loads((CONFIG_DIR / kind / f"{stem}.toml").read_text(encoding="utf-8"))


def test_dumper_round_trips_every_packaged_config():
    for path in CONFIG_DIR.rglob("*.toml"):
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
        assert tomllib.loads(dumps(doc)) == doc, path


STACKS = ("progress", "cygnus", "dragon-boost-kit")

#: Values no field of any config takes: wrong TOML types, non-finite and far out of range.
ALIENS = [
    True,
    False,
    dt.datetime(1979, 5, 27, 7, 32),
    dt.date(2024, 1, 1),
    dt.time(7, 32),
    [[1, 2]],
    [],
    {"zz": 1},
    float("nan"),
    float("inf"),
    float("-inf"),
    10**30,
    -(10**30),
    1e30,
    -1e30,
    10**400,
    -(10**400),
]
#: And wrong types for fields that take a number (not for names: any name is a name).
NOT_NUMBERS = ["", "   ", "1.5", "nan", "ｘ", "\x1b[31m", "x\ny"]


def _tables(obj, path=()):
    if isinstance(obj, dict):
        yield path
        for k, v in obj.items():
            yield from _tables(v, (*path, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _tables(v, (*path, i))


def _get(obj, path):
    for p in path:
        obj = obj[p]
    return obj


def _field_of(path) -> str:
    """The dotted field a loader names for a path, up to the first list index (a loader names
    ``com_m[1]`` or ``com_m``, ``valves.map[3].bit`` or ``valves.map``: both contain this)."""
    keys = list(itertools.takewhile(lambda p: isinstance(p, str), path))
    return ".".join(keys)


#: Tables whose keys are names (ports, tanks, thrusters), not fields: deleting an entry there
#: may be harmless (an unused port), so deletions are of fields only.
_NAME_MAPS = {"ports", "tanks", "thrusters"}
#: Fields with a default: deleting them is harmless.
_OPTIONAL = {"solar_activity", "name", "seed"}


@st.composite
def certainly_invalid(draw, doc: dict, deletions: bool = True):
    """A deep copy of ``doc`` with one mutation no loader may accept, and the field it hit.
    (``deletions``: False for a file whose fields all have defaults.)"""
    doc = copy.deepcopy(doc)
    ops = ("alien", "alien", "not-a-number", "unknown-key") + (("delete",) if deletions else ())
    op = draw(st.sampled_from(ops))
    if op == "unknown-key":
        path = draw(st.sampled_from(list(_tables(doc))))
        key = draw(st.sampled_from(["zz_bogus", "Mass_kg", "", " ", "name ", "ñ", "a.b"]))
        table = _get(doc, path)
        assume(key not in table)
        table[key] = draw(st.sampled_from([1, "x", {"a": 1}]))
        return doc, _field_of((*path, key)) if key else _field_of(path)
    leaves = [(p, v) for p, v in _leaves(doc) if p]
    if op == "delete":
        leaves = [
            (p, v)
            for p, v in leaves
            if isinstance(p[-1], str)
            and p[-1] not in _OPTIONAL
            and not (len(p) >= 2 and p[-2] in _NAME_MAPS)
            and not (len(p) == 1 and p[0] in _NAME_MAPS)
        ]
    if op == "not-a-number":
        leaves = [
            (p, v) for p, v in leaves if isinstance(v, int | float) and not isinstance(v, bool)
        ]
    assume(leaves)
    path, old = draw(st.sampled_from(leaves))
    parent = _get(doc, path[:-1])
    if op == "delete":
        del parent[path[-1]]
    elif op == "alien":
        # Another type than the field has (true for a flag is no alien), no empty list for a
        # list (attitude_thrusters may be empty).
        parent[path[-1]] = draw(
            st.sampled_from(
                [
                    v
                    for v in ALIENS
                    if not (isinstance(old, bool) and isinstance(v, bool))
                    and not (isinstance(old, list) and v == [])
                ]
            )
        )
    else:
        parent[path[-1]] = draw(st.sampled_from(NOT_NUMBERS))
    return doc, _field_of(path)


def _write_stack_tree(root: Path, docs: dict[str, dict], stack: str) -> dict[str, Path]:
    """The three documents where load_stack looks first (root/{stacks,stations,vehicles}),
    under the stems the packaged stack names (whatever the mutated stack says)."""
    original = _read("stacks", stack)
    paths = {
        "stack": root / "stacks" / "fuzz-stack.toml",
        "station": root / "stations" / f"{original['station']}.toml",
        "vehicle": root / "vehicles" / f"{original['vehicle']}.toml",
    }
    for kind, path in paths.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(dumps(docs[kind]), encoding="utf-8")
    return paths


def _stack_docs(name: str) -> dict[str, dict]:
    stack = _read("stacks", name)
    return {
        "stack": stack,
        "station": _read("stations", stack["station"]),
        "vehicle": _read("vehicles", stack["vehicle"]),
    }


def assert_config_error(exc: BaseException, path: Path, field: str | None) -> None:
    text = str(exc)
    assert isinstance(exc, UserError), f"{type(exc).__name__}: {text}"
    assert len(text.splitlines()) == 1 and "\n" not in text, text
    assert path.name in text, (path.name, text)
    if field:
        assert field in text, (field, text)


@FUZZ
@given(
    data=st.data(),
    stack=st.sampled_from(STACKS),
    kind=st.sampled_from(["stack", "station", "vehicle"]),
)
def test_certainly_invalid_stack_configs_name_the_file_and_field(bench, data, stack, kind):
    docs = _stack_docs(stack)
    docs[kind], field = data.draw(certainly_invalid(docs[kind]))
    paths = _write_stack_tree(bench.fresh("tree"), docs, stack)
    with pytest.raises(ConfigError) as e:
        load_stack(str(paths["stack"]))
    assert_config_error(e.value, paths[kind], field)


@FUZZ
@given(data=st.data())
def test_certainly_invalid_dispersion_specs_name_the_file_and_field(bench, data):
    doc, field = data.draw(certainly_invalid(_read("dispersions", "default"), deletions=False))
    path = bench.fresh("spec").with_suffix(".toml")
    path.write_text(dumps(doc), encoding="utf-8")
    with pytest.raises(ConfigError) as e:
        load_dispersions(str(path))
    assert_config_error(e.value, path, field)


@FUZZ
@given(data=st.data())
def test_certainly_invalid_rigs_name_the_file_and_field(bench, data):
    rig = tomllib.loads((CONFIG_DIR / "rigs" / "mega2560-bench.toml").read_text())
    doc, field = data.draw(certainly_invalid(rig))
    path = bench.fresh("rig").with_suffix(".toml")
    path.write_text(dumps(doc), encoding="utf-8")
    with pytest.raises(ConfigError) as e:
        gen_c_header._load_rig(path)
    assert_config_error(e.value, path, field)


def test_the_packaged_rig_still_renders_the_committed_header():
    assert gen_c_header._load_rig()["valves"]["map"][31]["channel"] == 31


# ---- bytes: truncated, sprinkled, not UTF-8 ---------------------------------------------


@st.composite
def damaged(draw, data: bytes) -> tuple[bytes, bool]:
    """(damaged bytes, certainly invalid?)"""
    op = draw(st.sampled_from(("truncate", "insert", "non-utf8", "nul", "crlf", "overwrite")))
    at = draw(st.integers(0, len(data)))
    if op == "truncate":
        return data[:at], False
    if op == "insert":
        return data[:at] + draw(st.binary(min_size=1, max_size=8)) + data[at:], False
    if op == "overwrite":
        junk = draw(st.binary(min_size=1, max_size=8))
        return data[:at] + junk + data[at + len(junk) :], False
    if op == "crlf":
        return data.replace(b"\n", b"\r\n"), False
    if op == "nul":
        return data[:at] + b"\x00" + data[at:], True
    bad = draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80"]))
    return data[:at] + bad + data[at:], True


_CONFIG_FILES = [p.relative_to(CONFIG_DIR) for p in sorted(CONFIG_DIR.rglob("*.toml"))]


def _load_copy(rel: Path, root: Path) -> Path:
    """Copy the packaged tree under root, damage nothing yet; returns the copy of rel."""
    for src in CONFIG_DIR.rglob("*.toml"):
        dst = root / src.relative_to(CONFIG_DIR)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
    return root / rel


def _loaders(root: Path, rel: Path):
    """What reads a damaged file: the stacks that use it, or its own loader."""
    kind = rel.parts[0]
    if kind == "dispersions":
        return [lambda: load_dispersions(str(root / rel))]
    if kind == "rigs":
        return [lambda: gen_c_header._load_rig(root / rel)]
    out = []
    for stack in STACKS:
        doc = _read("stacks", stack)
        if kind == "stacks" and rel.stem == stack or doc.get(kind[:-1]) == rel.stem:
            out.append(lambda s=stack: load_stack(str(root / "stacks" / f"{s}.toml")))
    return out


@FUZZ
@given(data=st.data(), rel=st.sampled_from(_CONFIG_FILES))
def test_damaged_config_bytes_load_or_fail_in_one_line(bench, data, rel):
    root = bench.fresh("bytes")
    path = _load_copy(rel, root)
    damaged_bytes, certain = data.draw(damaged(path.read_bytes()))
    path.write_bytes(damaged_bytes)
    for load in _loaders(root, rel):
        try:
            load()
        except ConfigError as exc:
            text = str(exc)
            assert len(text.splitlines()) == 1 and ".toml" in text, text
            if certain:  # unreadable as TOML: the damaged file itself is named
                assert path.name in text, text
        else:
            assert not certain, "a file that is not UTF-8 TOML loaded"


def test_fault_specs_parse_or_fail_in_one_line():
    from thruster_hil.firmware_bridge.faults import FaultSpec, parse_faults

    @FUZZ
    @given(
        spec=st.one_of(
            garbage,
            st.lists(
                st.one_of(st.sampled_from(GOOD_FAULT_ITEMS + BAD_FAULT_ITEMS), garbage), max_size=4
            ).map(",".join),
        )
    )
    def any_spec(spec):
        try:
            assert isinstance(parse_faults(spec), FaultSpec)
        except UserError as exc:
            assert len(str(exc).splitlines()) == 1 and str(exc).startswith("--faults")

    @FUZZ
    @given(spec=bad_fault_spec())
    def bad_spec(spec):
        with pytest.raises(UserError) as e:
            parse_faults(spec)
        assert len(str(e.value).splitlines()) == 1 and str(e.value).startswith("--faults")

    any_spec()
    bad_spec()


# ---- through the command line -----------------------------------------------------------


@FUZZ
@given(
    data=st.data(),
    stack=st.sampled_from(STACKS),
    kind=st.sampled_from(["stack", "station", "vehicle"]),
)
def test_plan_with_a_certainly_invalid_stack_is_one_line(bench, data, stack, kind):
    docs = _stack_docs(stack)
    docs[kind], field = data.draw(certainly_invalid(docs[kind]))
    paths = _write_stack_tree(bench.fresh("cli-tree"), docs, stack)
    argv = ["plan", "--stack", str(paths["stack"]), "--delta-v", "1"]
    status, out, err = call(argv)
    assert_one_line_error(status, out, err, argv)
    assert paths[kind].name in err and field in err, err


# ============================================================================ run directories

_JSON_GARBAGE = [
    b"",
    b"{",
    b"[]",
    b"null",
    b"1",
    b'"x"',
    b"\xff\xfe{}",
    b"{" * 100_000,
    b'{"a": ' + b"9" * 5000 + b"}",
    b"\x00",
    b"NaN",
]


@st.composite
def _damaged_json(draw, data: bytes) -> bytes:
    how = draw(st.sampled_from(("garbage", "truncate", "random")))
    if how == "garbage":
        return draw(st.sampled_from(_JSON_GARBAGE))
    if how == "truncate":
        out = data[: draw(st.integers(0, max(0, len(data) - 3)))]
    else:
        out = draw(st.binary(max_size=40))
    try:
        assume(not isinstance(json.loads(out), dict))
    except (ValueError, RecursionError):
        pass
    return out


def _set_field(doc: dict, key: str, value) -> dict:
    doc = copy.deepcopy(doc)
    head, _, rest = key.partition(".")
    if rest:
        doc[head] = (
            _set_field(doc[head], rest, value) if isinstance(doc.get(head), dict) else {rest: value}
        )
    else:
        doc[head] = value
    return doc


WRONG_TYPES = ["x", True, [1], {"a": 1}, "1e3", 10**400]
#: The fields each reader uses, by type (what it must refuse when they are something else).
REPORT_NUMBERS = [
    "achieved_delta_v_mps",
    "target_delta_v_mps",
    "delta_v_error_pct",
    "perigee_km_before",
    "perigee_km_after",
    "apogee_km_before",
    "apogee_km_after",
    "attitude_limit_deg",
    "period_ms",
]
MONITOR_FIELDS = {
    "planned_cycles": 1,
    "period_ms": 1,
    "target_delta_v_mps": 1,
    "attitude_limit_deg": 1,
    "started_unix_s": 1,
    "title": "s",
    "unit": "s",
    "mode": "s",
    "completed": True,
    "aborted": True,
    "serial": True,
    "link": {},
}
REPLAY_FIELDS = [
    "plan",
    "stack_path",
    "plan.delta_v_mps",
    "plan.burn_duration_s",
    "plan.perigee_km_before",
    "plan.apogee_km_before",
    "plan.inclination_deg",
    "plan.burn_centre",
    "plan.solar_activity",
    "plan.stack",
    "failures",
]


def _wrong_for(example):
    return [
        v
        for v in WRONG_TYPES
        if type(v) is not type(example)
        and not (
            isinstance(example, int | float)
            and isinstance(v, int | float)
            and not isinstance(v, bool)
            and abs(v) < 1e300
        )
    ]


@st.composite
def damaged_run_dir(draw, bench: _Bench, command: str) -> str:
    """A copy of a real run directory with one file damaged so that ``command`` must refuse
    it, or no run directory at all."""
    if draw(st.integers(0, 4)) == 0:
        return draw(bad_run_dir_simple(bench))
    out = bench.fresh(f"{command}-run")
    shutil.copytree(bench.template_run, out)
    summary = json.loads((out / "summary.json").read_text())
    if command == "replay":
        (out / "capture.csv").write_text("t_ns,dir,hex\n")
    which = {
        "report": ["summary.json", "telemetry.csv"],
        "replay": ["summary.json", "capture.csv"],
        "monitor": ["summary.json", "run.json", "status.json", "telemetry.csv"],
    }[command]
    name = draw(st.sampled_from(which))
    target = out / name
    how = draw(st.sampled_from(("bytes", "directory", "field")))
    if how == "directory":
        target.unlink(missing_ok=True)
        target.mkdir()
    elif name.endswith(".json") and how == "field":
        doc = (
            summary
            if name == "summary.json"
            else (json.loads(target.read_text()) if target.exists() else {})
        )
        if command == "report":
            key = draw(st.sampled_from(REPORT_NUMBERS))
            value = draw(st.sampled_from(_wrong_for(1.0)))
        elif command == "replay":
            key = draw(st.sampled_from(REPLAY_FIELDS))
            example = {
                "plan": {},
                "stack_path": "s",
                "failures": [],
                "plan.burn_centre": "s",
                "plan.solar_activity": "s",
                "plan.stack": "s",
            }.get(key, 1.0)
            value = draw(st.sampled_from(_wrong_for(example)))
            if key in ("plan.burn_centre", "plan.solar_activity") and draw(st.booleans()):
                value = draw(
                    garbage.filter(
                        lambda t: t not in ("apogee", "perigee", "low", "moderate", "high")
                    )
                )
        else:
            key = draw(st.sampled_from(sorted(MONITOR_FIELDS)))
            value = draw(st.sampled_from(_wrong_for(MONITOR_FIELDS[key])))
            if key == "link" and draw(st.booleans()):
                value = {draw(st.sampled_from(["rtt_ms_p50", "retries", "unit_state"])): "x"}
        target.write_text(json.dumps(_set_field(doc, key, value)))
    elif name.endswith(".json"):
        target.write_bytes(draw(_damaged_json(target.read_bytes() if target.exists() else b"{}")))
    elif name == "capture.csv":
        target.write_bytes(
            draw(
                st.sampled_from(
                    [
                        b"",
                        b"t_ns,dir,hex",
                        b"time,dir,hex\n",
                        b"t_ns,dir,hex\n1,rx\n",
                        b"t_ns,dir,hex\nx,rx,00\n",
                        b"t_ns,dir,hex\n1,up,00\n",
                        b"t_ns,dir,hex\n1,rx,zz\n",
                        b"t_ns,dir,hex\n1_0,rx,00\n",
                        b"t_ns,dir,hex\n\xff,rx,00\n",
                        b"\xff\xfe",
                        b"t_ns,dir,hex\n1,rx,0011\n",
                    ]
                )
            )
        )
    else:  # telemetry.csv: a damaged header, or a complete last row with a bad cell
        lines = target.read_text().splitlines()
        header = lines[0].split(",")
        if draw(st.booleans()):
            gone = draw(
                st.sampled_from(
                    ["t_s", "rtt_ms", "attitude_error_deg", "propellant_kg", "dv_along_mps"]
                )
            )
            header[header.index(gone)] = gone + "_renamed"
            lines[0] = ",".join(header)
            body = "\n".join(lines) + "\n"
        else:
            row = lines[-1].split(",")
            col = draw(
                st.sampled_from(
                    [
                        "t_s",
                        "attitude_error_deg",
                        "propellant_kg",
                        "dv_along_mps",
                        "cycle",
                        "status",
                    ]
                )
            )
            row[header.index(col)] = draw(
                st.sampled_from(["x", "", "1_0", "inf", "-inf", "nan", "9" * 400, "١", "\x00"])
            )
            if command == "monitor" and row[header.index(col)] in (
                "1_0",
                "inf",
                "-inf",
                "nan",
                "9" * 400,
                "١",
            ):
                row[header.index(col)] = "x"  # the live view shows what float() reads
            if command == "report" and col in ("cycle", "status"):
                col = "t_s"
                row[header.index(col)] = "x"
            lines[-1] = ",".join(row)
            body = "\n".join(lines) + "\n"
        target.write_bytes(body.encode("utf-8", "surrogatepass"))
    return str(out)


@pytest.mark.parametrize("command", ["report", "replay", "monitor"])
def test_damaged_run_directories_are_one_line(bench, command):
    @FUZZ
    @given(run_dir=damaged_run_dir(bench, command), once=st.booleans())
    def check(run_dir, once):
        argv = [command, run_dir, *(["--once"] if once and command == "monitor" else [])]
        status, out, err = call(argv)
        assert_one_line_error(status, out, err, argv)

    check()
