"""Load and validate the hardware TOML files once, at the edge.

Three kinds of file (see hw_configs/): a *station* (mass properties, drag, docking ports), a
*vehicle* (mass properties, tanks, thrusters in its own frame V) and a *stack* (which vehicle sits
at which port of which station, the reboost attitude and which thrusters translate / hold
attitude). Every failure raises :class:`thruster_hil.core.errors.ConfigError` whose ``str`` is one
line ``<file>: <dotted.field>: <what was expected>, got <value>``. Nothing here prints or exits.

After loading, :func:`build_stack_model` turns a :class:`Stack` into the numbers the plant and the
controller use (:class:`StackModel`: SI units, frame B, thrusters in a fixed order).
"""

from __future__ import annotations

import difflib
import math
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from thruster_hil.core import massprops
from thruster_hil.core.constants import G0
from thruster_hil.core.errors import ConfigError
from thruster_hil.hw_configs import CONFIG_DIR

__all__ = [
    "Port",
    "Stack",
    "StackModel",
    "Station",
    "Gimbal",
    "Tank",
    "Thruster",
    "Vehicle",
    "build_stack_model",
    "list_stacks",
    "load_stack",
    "load_station",
    "load_vehicle",
]

SOLAR_ACTIVITIES = ("low", "moderate", "high")
PRESSURE_MODES = ("regulated", "blowdown")
UNIT_TOL = 1e-6  # direction / axis vectors must be unit (and orthogonal) to this tolerance
MAX_TANKS = 8  # the controller's per-tank arrays (thruster_hil.controller.cycle.MAX_TANKS)
MAX_GIMBALS = 2  # and its gimbal records (thruster_hil.controller.cycle.MAX_GIMBALS)
_STEM_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


# --------------------------------------------------------------------------------------------
# Validated raw values
# --------------------------------------------------------------------------------------------


def _frozen(a) -> np.ndarray:
    arr = np.array(a, dtype=np.float64)
    arr.setflags(write=False)
    return arr


@dataclass(frozen=True, eq=False)
class Port:
    """A docking port. ``position_m``: interface centre in B [m]; axes: unit vectors in B."""

    name: str
    position_m: np.ndarray
    x_axis: np.ndarray
    y_axis: np.ndarray


@dataclass(frozen=True, eq=False)
class Station:
    """A station. ``com_m`` in B [m]; ``inertia_kg_m2`` about the CoM, in B."""

    name: str
    path: Path
    mass_kg: float
    com_m: np.ndarray
    inertia_kg_m2: np.ndarray
    drag_area_m2: float
    drag_coefficient: float
    perigee_km: float
    apogee_km: float
    inclination_deg: float
    ports: dict[str, Port]


@dataclass(frozen=True, eq=False)
class Tank:
    """A propellant tank. Blowdown-only fields are ``None`` for a regulated tank."""

    name: str
    propellant_kg: float
    pressure_mode: str
    pressure_Pa: float
    gas_volume_m3: float | None = None
    propellant_density_kg_m3: float | None = None
    polytropic_n: float | None = None
    reserve_kg: float = 0.0  # kept for something else (a deorbit burn): no reboost touches it


@dataclass(frozen=True, eq=False)
class Thruster:
    """A thruster. ``position_m`` in V [m]; ``direction``: unit force on the vehicle, in V.

    ``thrust_exponent``/``isp_exponent`` (thrust ~ (p/p0)^a, Isp ~ (p/p0)^b) are set for thrusters
    on a blowdown tank and ``None`` otherwise.
    """

    name: str
    position_m: np.ndarray
    direction: np.ndarray
    thrust_N: float
    isp_s: float
    tank: str
    open_delay_s: float
    close_delay_s: float
    rise_time_s: float
    tail_off_s: float
    min_on_time_s: float
    thrust_exponent: float | None = None
    isp_exponent: float | None = None
    gimbal: Gimbal | None = None


@dataclass(frozen=True, eq=False)
class Gimbal:
    """A two-axis engine gimbal: each axis within +-``limit_deg``, moving at most
    ``rate_deg_s``. Its axes are perpendicular to the thrust direction (:func:`gimbal_axes`)."""

    limit_deg: float
    rate_deg_s: float


def gimbal_axes(direction) -> tuple[np.ndarray, np.ndarray]:
    """Two unit vectors perpendicular to ``direction`` and to each other: the first along the
    frame axis least aligned with the direction, made perpendicular; the second completes the
    right-handed set (``e1 x e2 = direction``)."""
    u = np.asarray(direction, dtype=np.float64)
    a = np.zeros(3)
    a[int(np.argmin(np.abs(u)))] = 1.0
    e1 = a - (a @ u) * u
    e1 /= np.linalg.norm(e1)
    return e1, np.cross(u, e1)


@dataclass(frozen=True, eq=False)
class Vehicle:
    """A vehicle. ``com_m`` in V [m]; ``inertia_kg_m2`` about its CoM in V (loaded vehicle)."""

    name: str
    path: Path
    dry_mass_kg: float
    com_m: np.ndarray
    inertia_kg_m2: np.ndarray
    tanks: dict[str, Tank]
    thrusters: dict[str, Thruster]

    @property
    def propellant_kg(self) -> float:
        return float(sum(t.propellant_kg for t in self.tanks.values()))

    @property
    def mass_kg(self) -> float:
        """Total mass as docked: dry (incl. cargo) + propellant in the listed tanks [kg]."""
        return self.dry_mass_kg + self.propellant_kg


@dataclass(frozen=True, eq=False)
class Stack:
    """A station + vehicle at a port, with the reboost attitude and thruster roles."""

    name: str
    path: Path
    station: Station
    vehicle: Vehicle
    port: str
    clock_deg: float
    attitude_ypr_deg: np.ndarray
    translation_thrusters: tuple[str, ...]
    attitude_thrusters: tuple[str, ...]
    control_period_s: float
    max_attitude_error_deg: float
    max_rate_deg_s: float
    cmg_torque_budget_Nm: float
    solar_activity: str = "moderate"


# --------------------------------------------------------------------------------------------
# Field readers
# --------------------------------------------------------------------------------------------


def _display(path: Path | str) -> str:
    p = Path(path)
    try:
        return str(p.resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError, RuntimeError):  # not below the cwd; a name the OS refuses
        return str(p)


def _is_file(path: Path) -> bool:
    """``path.is_file()``, but a name the OS refuses (too long, ...) is just not a file."""
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


def _show(value: Any) -> str:
    try:
        text = repr(value)
    except (RecursionError, ValueError):  # a table nested thousands deep, a 5000-digit integer
        return f"a {type(value).__name__} too large to show"
    return text if len(text) <= 60 else text[:57] + "..."


class _Table:
    """One TOML table being validated: reads fields, remembers them, rejects unknown keys."""

    def __init__(self, where: str, data: Any, prefix: str = ""):
        self.where = where
        self.prefix = prefix
        if not isinstance(data, dict):
            raise ConfigError(where, f"expected a table, got {_show(data)}", prefix or None)
        self.data = data

    def path(self, key: str) -> str:
        return f"{self.prefix}.{key}" if self.prefix else key

    def fail(self, key: str, message: str) -> ConfigError:
        return ConfigError(self.where, message, self.path(key))

    def check_keys(self, allowed: tuple[str, ...]) -> None:
        for key in self.data:
            if key not in allowed:
                near = difflib.get_close_matches(key, allowed, n=1)
                hint = f"did you mean {near[0]!r}?" if near else f"allowed: {', '.join(allowed)}"
                raise self.fail(key, f"unknown key ({hint}), got {_show(key)}")

    def raw(self, key: str, default: Any = ..., what: str = "a value") -> Any:
        if key not in self.data:
            if default is ...:
                raise self.fail(key, f"missing field: expected {what}, got nothing")
            return default
        return self.data[key]

    def string(self, key: str, choices: tuple[str, ...] | None = None, default: Any = ...) -> str:
        what = f"one of {', '.join(choices)}" if choices else "a non-empty string"
        v = self.raw(key, default, what)
        if not isinstance(v, str) or not v.strip():
            raise self.fail(key, f"expected {what}, got {_show(v)}")
        if choices and v not in choices:
            raise self.fail(key, f"expected {what}, got {_show(v)}")
        return v

    def number(
        self,
        key: str,
        lo: float,
        hi: float,
        *,
        lo_open: bool = False,
        unit: str = "",
        default: Any = ...,
    ) -> float:
        rng = f"{'(' if lo_open else '['}{lo:g}, {hi:g}]{' ' + unit if unit else ''}"
        v = self.raw(key, default, f"a number in {rng}")
        return _check_number(v, lo, hi, lo_open, rng, lambda m: self.fail(key, m))

    def vector(self, key: str, n: int = 3, bound: float = math.inf, unit: str = "") -> np.ndarray:
        what = f"a list of {n} finite numbers{' [' + unit + ']' if unit else ''}"
        v = self.raw(key, ..., what)
        if not isinstance(v, list) or len(v) != n:
            got = f"{len(v)} values" if isinstance(v, list) else _show(v)
            raise self.fail(key, f"expected {what}, got {got}")
        rng = f"[{-bound:g}, {bound:g}]"
        out = [
            _check_number(x, -bound, bound, False, rng, lambda m, i=i: self.fail(f"{key}[{i}]", m))
            for i, x in enumerate(v)
        ]
        return np.array(out, dtype=np.float64)

    def unit_vector(self, key: str) -> np.ndarray:
        u = self.vector(key, 3, 1.0 + UNIT_TOL)
        norm = float(np.linalg.norm(u))
        if abs(norm - 1.0) > UNIT_TOL:
            raise self.fail(key, f"expected a unit vector (|u| = 1 +- 1e-6), got |u| = {norm:.9g}")
        return u

    def matrix3(self, key: str, unit: str = "") -> np.ndarray:
        what = f"a 3x3 list of lists of finite numbers{' [' + unit + ']' if unit else ''}"
        v = self.raw(key, ..., what)
        if (
            not isinstance(v, list)
            or len(v) != 3
            or any(not isinstance(r, list) or len(r) != 3 for r in v)
        ):
            raise self.fail(key, f"expected {what}, got {_show(v)}")
        rows = []
        for i, r in enumerate(v):
            row = []
            for j, x in enumerate(r):
                row.append(
                    _check_number(
                        x,
                        -1e12,
                        1e12,
                        False,
                        "[-1e12, 1e12]",
                        lambda m, i=i, j=j: self.fail(f"{key}[{i}][{j}]", m),
                    )
                )
            rows.append(row)
        return np.array(rows, dtype=np.float64)

    def string_list(self, key: str, allow_empty: bool = False) -> tuple[str, ...]:
        what = "a list of thruster names" + ("" if allow_empty else " (at least one)")
        v = self.raw(key, ..., what)
        if not isinstance(v, list) or (not v and not allow_empty):
            raise self.fail(key, f"expected {what}, got {_show(v)}")
        for x in v:
            if not isinstance(x, str) or not x:
                raise self.fail(key, f"expected {what}, got element {_show(x)}")
        return tuple(v)

    def subtables(self, key: str, what: str) -> dict[str, dict]:
        v = self.raw(key, ..., f"at least one [{key}.<name>] table ({what})")
        if not isinstance(v, dict) or not v:
            raise self.fail(key, f"expected at least one [{key}.<name>] table, got {_show(v)}")
        for name, sub in v.items():
            if not isinstance(sub, dict):
                raise ConfigError(
                    self.where,
                    f"expected a table ({what}), got {_show(sub)}",
                    self.path(f"{key}.{name}"),
                )
        return v


def _check_number(v, lo, hi, lo_open, rng, fail) -> float:
    # bool is an int subclass in Python: a "true" is never a mass or a thrust.
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise fail(f"expected a number in {rng}, got {_show(v)}")
    try:
        x = float(v)
    except OverflowError:  # a TOML integer beyond 1.8e308
        raise fail(f"expected a number in {rng}, got {_show(v)}") from None
    if not math.isfinite(x):
        raise fail(f"expected a finite number in {rng}, got {_show(v)}")
    if x < lo or x > hi or (lo_open and x <= lo):
        raise fail(f"expected a number in {rng}, got {_show(v)}")
    return x


def _check_inertia(t: _Table, key: str, inertia: np.ndarray) -> np.ndarray:
    I = inertia  # noqa: E741 - the conventional symbol
    scale = float(np.max(np.abs(I)))
    if not np.allclose(I, I.T, rtol=0.0, atol=1e-9 * max(scale, 1.0)):
        raise t.fail(key, f"expected a symmetric inertia matrix, got {_show(I.tolist())}")
    eig = np.linalg.eigvalsh(I)
    if eig[0] <= 0.0:
        raise t.fail(
            key, f"expected a positive-definite inertia matrix, got eigenvalues {eig.tolist()}"
        )
    # Triangle inequality on the principal moments: each <= sum of the other two.
    a, b, c = eig
    if c > a + b + 1e-9 * c:
        raise t.fail(
            key,
            "expected principal moments obeying the triangle inequality (largest <= sum of the "
            f"other two), got {eig.tolist()}",
        )
    return I


def _read_toml(path: Path, where: str) -> dict:
    try:
        special = path.exists() and not path.is_dir() and not path.is_file()
    except (OSError, ValueError):
        special = False  # open() below says what is wrong with the name
    if special:  # a FIFO or a device: open() would wait for a writer for ever
        raise ConfigError(where, "expected a TOML file, got a special file (FIFO, device)")
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(
            where, f"expected an existing file, got no such file {_show(str(path))}"
        ) from None
    except IsADirectoryError:
        raise ConfigError(where, "expected a TOML file, got a directory") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(where, f"expected valid TOML, got {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            where, f"expected UTF-8 TOML, got undecodable bytes ({exc.reason})"
        ) from None
    except ValueError as exc:  # tomllib: an integer of more than 4300 digits
        raise ConfigError(where, f"expected valid TOML, got {exc}") from None
    except RecursionError:
        raise ConfigError(
            where, "expected valid TOML, got arrays or tables nested too deeply to read"
        ) from None
    except OSError as exc:
        raise ConfigError(where, f"expected a readable file, got {exc.strerror}") from None


# --------------------------------------------------------------------------------------------
# Station
# --------------------------------------------------------------------------------------------

_STATION_KEYS = (
    "name",
    "mass_kg",
    "com_m",
    "inertia_kg_m2",
    "drag_area_m2",
    "drag_coefficient",
    "typical_orbit",
    "ports",
)
_ORBIT_KEYS = ("perigee_km", "apogee_km", "inclination_deg")
_PORT_KEYS = ("position_m", "x_axis", "y_axis")


def load_station(path: str | Path) -> Station:
    """Load and validate a station TOML file."""
    path = Path(path)
    where = _display(path)
    t = _Table(where, _read_toml(path, where))
    t.check_keys(_STATION_KEYS)
    name = t.string("name")
    mass = t.number("mass_kg", 0.0, 1e7, lo_open=True, unit="kg")
    com = t.vector("com_m", 3, 1000.0, "m")
    inertia = _check_inertia(t, "inertia_kg_m2", t.matrix3("inertia_kg_m2", "kg m^2"))
    area = t.number("drag_area_m2", 0.0, 1e5, lo_open=True, unit="m^2")
    cd = t.number("drag_coefficient", 0.5, 5.0)

    orbit = _Table(where, t.raw("typical_orbit", ..., "a [typical_orbit] table"), "typical_orbit")
    orbit.check_keys(_ORBIT_KEYS)
    perigee = orbit.number("perigee_km", 150.0, 2000.0, unit="km")
    apogee = orbit.number("apogee_km", 150.0, 2000.0, unit="km")
    if apogee < perigee:
        raise orbit.fail(
            "apogee_km", f"expected apogee >= perigee ({perigee:g} km), got {apogee:g}"
        )
    incl = orbit.number("inclination_deg", 0.0, 180.0, unit="deg")

    ports: dict[str, Port] = {}
    for pname, raw in t.subtables("ports", "a docking port").items():
        p = _Table(where, raw, f"ports.{pname}")
        p.check_keys(_PORT_KEYS)
        pos = p.vector("position_m", 3, 1000.0, "m")
        x = p.unit_vector("x_axis")
        y = p.unit_vector("y_axis")
        dot = float(x @ y)
        if abs(dot) > UNIT_TOL:
            raise p.fail(
                "y_axis", f"expected a unit vector orthogonal to x_axis, got x.y = {dot:.9g}"
            )
        ports[pname] = Port(pname, _frozen(pos), _frozen(x), _frozen(y))

    return Station(
        name=name,
        path=path,
        mass_kg=mass,
        com_m=_frozen(com),
        inertia_kg_m2=_frozen(inertia),
        drag_area_m2=area,
        drag_coefficient=cd,
        perigee_km=perigee,
        apogee_km=apogee,
        inclination_deg=incl,
        ports=ports,
    )


# --------------------------------------------------------------------------------------------
# Vehicle
# --------------------------------------------------------------------------------------------

_VEHICLE_KEYS = ("name", "dry_mass_kg", "com_m", "inertia_kg_m2", "tanks", "thrusters")
_BLOWDOWN_KEYS = ("gas_volume_m3", "propellant_density_kg_m3", "polytropic_n")
_TANK_KEYS = ("propellant_kg", "pressure_mode", "pressure_Pa", "reserve_kg", *_BLOWDOWN_KEYS)
_EXPONENT_KEYS = ("thrust_exponent", "isp_exponent")
_GIMBAL_KEYS = ("limit_deg", "rate_deg_s")
_THRUSTER_KEYS = (
    "position_m",
    "direction",
    "thrust_N",
    "isp_s",
    "tank",
    "open_delay_s",
    "close_delay_s",
    "rise_time_s",
    "tail_off_s",
    "min_on_time_s",
    "gimbal",
    *_EXPONENT_KEYS,
)


#: The weakest thruster a vehicle may list [N]: a small cold-gas thruster. 1e-300 N passed
#: (F . F underflows to 0 and the plan asked for a burn of 1e303 s).
MIN_THRUST_N = 0.1


def load_vehicle(path: str | Path) -> Vehicle:
    """Load and validate a vehicle TOML file."""
    path = Path(path)
    where = _display(path)
    t = _Table(where, _read_toml(path, where))
    t.check_keys(_VEHICLE_KEYS)
    name = t.string("name")
    dry = t.number("dry_mass_kg", 0.0, 1e6, lo_open=True, unit="kg")
    com = t.vector("com_m", 3, 100.0, "m")
    inertia = _check_inertia(t, "inertia_kg_m2", t.matrix3("inertia_kg_m2", "kg m^2"))

    tanks: dict[str, Tank] = {}
    for tname, raw in t.subtables("tanks", "a propellant tank").items():
        k = _Table(where, raw, f"tanks.{tname}")
        k.check_keys(_TANK_KEYS)
        prop = k.number("propellant_kg", 0.0, 1e5, unit="kg")
        mode = k.string("pressure_mode", PRESSURE_MODES)
        pressure = k.number("pressure_Pa", 0.0, 1e8, lo_open=True, unit="Pa")
        extra: dict[str, float] = {}
        if mode == "blowdown":
            extra["gas_volume_m3"] = k.number("gas_volume_m3", 0.0, 100.0, lo_open=True, unit="m^3")
            extra["propellant_density_kg_m3"] = k.number(
                "propellant_density_kg_m3", 100.0, 3000.0, unit="kg/m^3"
            )
            extra["polytropic_n"] = k.number("polytropic_n", 1.0, 1.67)
        else:
            for key in _BLOWDOWN_KEYS:
                if key in raw:
                    raise k.fail(
                        key, f"expected no {key} for a regulated tank, got {_show(raw[key])}"
                    )
        reserve = k.number("reserve_kg", 0.0, 1e5, unit="kg", default=0.0)
        if reserve > prop:
            raise k.fail(
                "reserve_kg",
                f"expected a reserve no larger than the tank's "
                f"propellant_kg ({prop:g} kg), got {reserve:g}",
            )
        tanks[tname] = Tank(tname, prop, mode, pressure, reserve_kg=reserve, **extra)

    thrusters: dict[str, Thruster] = {}
    for hname, raw in t.subtables("thrusters", "a thruster").items():
        h = _Table(where, raw, f"thrusters.{hname}")
        h.check_keys(_THRUSTER_KEYS)
        pos = h.vector("position_m", 3, 100.0, "m")
        direction = h.unit_vector("direction")
        thrust = h.number("thrust_N", MIN_THRUST_N, 1e5, unit="N")
        isp = h.number("isp_s", 50.0, 500.0, unit="s")
        tank = h.string("tank")
        if tank not in tanks:
            raise h.fail("tank", f"expected one of the tanks {sorted(tanks)}, got {_show(tank)}")
        delays = {
            key: h.number(key, 0.0, 1.0, unit="s")
            for key in ("open_delay_s", "close_delay_s", "rise_time_s", "tail_off_s")
        }
        min_on = h.number("min_on_time_s", 0.0, 10.0, unit="s")
        exps: dict[str, float] = {}
        if tanks[tank].pressure_mode == "blowdown":
            exps["thrust_exponent"] = h.number("thrust_exponent", 0.0, 3.0)
            exps["isp_exponent"] = h.number("isp_exponent", 0.0, 1.0)
        else:
            for key in _EXPONENT_KEYS:
                if key in raw:
                    raise h.fail(
                        key,
                        f"expected no {key} for a thruster on a regulated tank, "
                        f"got {_show(raw[key])}",
                    )
        gimbal = None
        if "gimbal" in raw:
            gt = _Table(where, raw["gimbal"], f"thrusters.{hname}.gimbal")
            gt.check_keys(_GIMBAL_KEYS)
            gimbal = Gimbal(
                gt.number("limit_deg", 0.0, 45.0, lo_open=True, unit="deg"),
                gt.number("rate_deg_s", 0.0, 90.0, lo_open=True, unit="deg/s"),
            )
        thrusters[hname] = Thruster(
            hname,
            _frozen(pos),
            _frozen(direction),
            thrust,
            isp,
            tank,
            min_on_time_s=min_on,
            gimbal=gimbal,
            **delays,
            **exps,
        )

    if len(tanks) > MAX_TANKS:
        raise t.fail("tanks", f"expected at most {MAX_TANKS} tanks, got {len(tanks)}")
    n_gimbals = sum(h.gimbal is not None for h in thrusters.values())
    if n_gimbals > MAX_GIMBALS:
        raise t.fail(
            "thrusters", f"expected at most {MAX_GIMBALS} gimbaled thrusters, got {n_gimbals}"
        )
    return Vehicle(name, path, dry, _frozen(com), _frozen(inertia), tanks, thrusters)


# --------------------------------------------------------------------------------------------
# Stack
# --------------------------------------------------------------------------------------------

_STACK_KEYS = (
    "name",
    "station",
    "vehicle",
    "port",
    "clock_deg",
    "attitude_ypr_deg",
    "translation_thrusters",
    "attitude_thrusters",
    "control_period_s",
    "max_attitude_error_deg",
    "max_rate_deg_s",
    "cmg_torque_budget_Nm",
    "solar_activity",
)


def list_stacks() -> list[str]:
    """Names of the packaged stacks (file stems in hw_configs/stacks/)."""
    return sorted(p.stem for p in (CONFIG_DIR / "stacks").glob("*.toml"))


def _stack_path(name_or_path: str) -> Path:
    s = str(name_or_path)
    if "/" in s or "\\" in s or s.endswith(".toml"):
        return Path(s)
    path = CONFIG_DIR / "stacks" / f"{s}.toml"
    if not _is_file(path):
        raise ConfigError(
            s,
            f"expected a stack name (one of {', '.join(list_stacks())}) or a path to a .toml "
            f"file, got no file {_display(path)}",
        )
    return path


def _resolve(t: _Table, key: str, stack_path: Path, kind: str) -> Path:
    stem = t.string(key)
    if not _STEM_RE.match(stem):
        raise t.fail(
            key, f"expected a {kind} file stem (letters, digits, '-', '_', '.'), got {_show(stem)}"
        )
    local = stack_path.resolve().parent.parent / f"{kind}s" / f"{stem}.toml"
    packaged = CONFIG_DIR / f"{kind}s" / f"{stem}.toml"
    for candidate in (local, packaged):
        if _is_file(candidate):
            return candidate
    looked = _display(local) if local == packaged else f"{_display(local)} or {_display(packaged)}"
    raise t.fail(key, f"expected a {kind} file {looked}, got no such file for {_show(stem)}")


#: Bounds that keep a burn physically meaningful (docs/architecture.md, "Config bounds").
#: The unit's tick is 1 ms and the wire carries the period in whole ms (10..10000 ms).
PERIOD_MS_MIN, PERIOD_MS_MAX = 10, 10_000
#: The period holds at least this many of the longest minimum on-time of the stack's
#: thrusters: below it pulse modulation has almost nothing between "off" and "on all cycle".
PERIOD_PER_MIN_ON = 4
#: The attitude limit: 0.1 deg is ten times a star tracker's error (a smaller limit is tripped by
#: the estimate's noise and inhibits every firing); at 90 deg the thrust no longer points along
#: the track at all.
MIN_ATTITUDE_LIMIT_DEG, MAX_ATTITUDE_LIMIT_DEG = 0.1, 90.0
#: The hold's rate limit: 0.01 deg/s takes out a 0.1 deg error in 10 s (20 cycles of 0.5 s).
MIN_RATE_LIMIT_DEG_S = 0.01


def _control_period(t: _Table, vehicle: Vehicle, names: tuple[str, ...]) -> float:
    """control_period_s: a whole number of ms the wire can carry (10..10000 ms) and at least
    PERIOD_PER_MIN_ON x the longest minimum on-time of the stack's thrusters."""
    period = t.number("control_period_s", PERIOD_MS_MIN / 1e3, PERIOD_MS_MAX / 1e3, unit="s")
    ms = period * 1e3
    if abs(ms - round(ms)) > 1e-6:
        raise t.fail(
            "control_period_s",
            f"expected a whole number of milliseconds (the unit's "
            f"tick and the wire's unit), got {period!r} s",
        )
    min_on = max((vehicle.thrusters[n].min_on_time_s for n in names), default=0.0)
    if period < PERIOD_PER_MIN_ON * min_on:
        raise t.fail(
            "control_period_s",
            f"expected at least {PERIOD_PER_MIN_ON} x the longest "
            f"thruster minimum on-time ({PERIOD_PER_MIN_ON} x {min_on:g} s = "
            f"{PERIOD_PER_MIN_ON * min_on:g} s), got {period:g} s",
        )
    # A valve must finish opening (delay + rise) and closing (delay + tail-off) within a cycle,
    # or a pulse commanded for one cycle is still starting or ending in the next.
    name, transient = max(
        (
            (n, max(h.open_delay_s + h.rise_time_s, h.close_delay_s + h.tail_off_s))
            for n in names
            for h in (vehicle.thrusters[n],)
        ),
        key=lambda x: x[1],
        default=("", 0.0),
    )
    if period <= transient:
        raise t.fail(
            "control_period_s",
            f"expected longer than the slowest valve transient "
            f"({name}: {transient:g} s to open or close), got {period:g} s",
        )
    return period


def load_stack(name_or_path: str | Path) -> Stack:
    """Load a stack by bare name (hw_configs/stacks/<name>.toml) or path, with its station and
    vehicle, and validate everything (including that the translation set pushes along-track)."""
    path = _stack_path(str(name_or_path))
    where = _display(path)
    t = _Table(where, _read_toml(path, where))
    t.check_keys(_STACK_KEYS)
    name = t.string("name")
    station_path = _resolve(t, "station", path, "station")
    vehicle_path = _resolve(t, "vehicle", path, "vehicle")
    station = load_station(station_path)
    vehicle = load_vehicle(vehicle_path)

    port = t.string("port")
    if port not in station.ports:
        raise t.fail(
            "port",
            f"expected a port of {station.name} ({', '.join(station.ports)}), got {_show(port)}",
        )
    clock = t.number("clock_deg", -360.0, 360.0, unit="deg")
    ypr = t.vector("attitude_ypr_deg", 3, 360.0, "deg")
    if abs(ypr[1]) > 90.0:
        raise t.fail(
            "attitude_ypr_deg[1]", f"expected a 3-2-1 pitch in [-90, 90] deg, got {ypr[1]:g}"
        )
    trans = t.string_list("translation_thrusters")
    att = t.string_list("attitude_thrusters", allow_empty=True)
    seen: set[str] = set()
    for key, names in (("translation_thrusters", trans), ("attitude_thrusters", att)):
        for n in names:
            if n not in vehicle.thrusters:
                near = difflib.get_close_matches(n, list(vehicle.thrusters), n=1)
                hint = f" (did you mean {near[0]!r}?)" if near else ""
                raise t.fail(
                    key, f"expected thrusters of {vehicle.name}{hint}, got unknown {_show(n)}"
                )
            if n in seen:
                raise t.fail(key, f"expected each thruster listed once, got {_show(n)} twice")
            seen.add(n)
    period = _control_period(t, vehicle, trans + att)
    max_err = t.number(
        "max_attitude_error_deg", MIN_ATTITUDE_LIMIT_DEG, MAX_ATTITUDE_LIMIT_DEG, unit="deg"
    )
    max_rate = t.number("max_rate_deg_s", MIN_RATE_LIMIT_DEG_S, 10.0, unit="deg/s")
    cmg = t.number("cmg_torque_budget_Nm", 0.0, 1e5, unit="N m")
    solar = t.string("solar_activity", SOLAR_ACTIVITIES, default="moderate")

    stack = Stack(
        name=name,
        path=path,
        station=station,
        vehicle=vehicle,
        port=port,
        clock_deg=clock,
        attitude_ypr_deg=_frozen(ypr),
        translation_thrusters=trans,
        attitude_thrusters=att,
        control_period_s=period,
        max_attitude_error_deg=max_err,
        max_rate_deg_s=max_rate,
        cmg_torque_budget_Nm=cmg,
        solar_activity=solar,
    )

    # The translation set must push the stack along the velocity in the reboost attitude.
    geom = _geometry(stack)
    force_H = geom["dcm_BH"].T @ geom["force_B"][: len(trans)].sum(axis=0)
    mag = float(np.linalg.norm(force_H))
    if force_H[0] <= 0.0 or force_H[0] < 0.5 * mag:
        raise t.fail(
            "translation_thrusters",
            "expected a thruster set whose summed force in the reboost attitude points along-track "
            "(x_H component > half its magnitude), "
            f"got F_H = {(np.round(force_H, 3) + 0.0).tolist()} N",
        )
    return stack


# --------------------------------------------------------------------------------------------
# Stack model
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class StackModel:
    """The stack as the plant and the controller see it. SI units; vectors in B unless named.

    Thruster arrays are indexed in a fixed order: ``translation_thrusters`` first, then
    ``attitude_thrusters`` (``thruster_names``).
    """

    name: str
    solar_activity: str
    mass_kg: float  # station + vehicle (incl. vehicle propellant) [kg]
    station_mass_kg: float
    vehicle_mass_kg: float
    r_CB_B: np.ndarray  # stack CoM relative to the B origin, in B [m]
    I_B: np.ndarray  # stack inertia about its CoM, in B [kg m^2]
    dcm_BH: np.ndarray  # LVLH -> B during the reboost (3-2-1 yaw, pitch, roll)
    dcm_BV: np.ndarray  # vehicle frame -> B
    r_PB_B: np.ndarray  # port (interface centre) relative to the B origin, in B [m]
    thruster_names: tuple[str, ...]
    translation_idx: np.ndarray  # int indices into the thruster arrays
    attitude_idx: np.ndarray
    r_TC_B: np.ndarray  # (n, 3) thruster position relative to the stack CoM, in B [m]
    u_T_B: np.ndarray  # (n, 3) unit force direction on the stack, in B
    thrust_N: np.ndarray  # (n,) nominal (steady-state) thrust [N]
    isp_s: np.ndarray  # (n,) nominal specific impulse [s]
    open_delay_s: np.ndarray
    close_delay_s: np.ndarray
    rise_time_s: np.ndarray
    tail_off_s: np.ndarray
    min_on_time_s: np.ndarray
    thrust_exponent: np.ndarray  # (n,) 0 for a regulated tank (thrust independent of pressure)
    isp_exponent: np.ndarray  # (n,) 0 for a regulated tank
    tank_idx: np.ndarray  # (n,) int index into the tank arrays
    tank_names: tuple[str, ...]
    tank_propellant_kg: np.ndarray
    tank_blowdown: np.ndarray  # bool
    tank_pressure_Pa: np.ndarray  # regulated pressure, or blowdown initial pressure
    tank_gas_volume_m3: np.ndarray  # 0 for a regulated tank
    tank_propellant_density_kg_m3: np.ndarray  # 0 for a regulated tank
    tank_polytropic_n: np.ndarray  # 1 for a regulated tank
    tank_reserve_kg: np.ndarray  # per tank: kept back from every reboost [kg]
    gimbal_limit_rad: np.ndarray  # (n,) per-axis angle limit, 0 for a fixed thruster
    gimbal_rate_rad_s: np.ndarray  # (n,) per-axis rate limit, 0 for a fixed thruster
    gimbal_e1_B: np.ndarray  # (n, 3) first gimbal axis direction in B (zeros when fixed)
    gimbal_e2_B: np.ndarray  # (n, 3) second
    torque_arm_B: np.ndarray  # (n, 3) r_TC_B x u_T_B: torque per newton about the CoM [m]
    translation_force_B: np.ndarray  # summed nominal force of the translation set, in B [N]
    translation_torque_B: np.ndarray  # its summed torque about the CoM, in B [N m]
    along_track_thrust_N: float  # sum thrust * (u . x_H), cant losses and gimbal trim included [N]
    translation_mass_flow_kg_s: float  # sum thrust / (Isp g0) [kg/s]
    lever_arm_m: float  # distance of the translation set's resultant thrust line from the CoM
    control_period_s: float
    max_attitude_error_rad: float
    max_rate_rad_s: float
    cmg_torque_budget_Nm: float
    drag_area_m2: float
    drag_coefficient: float

    def describe(self) -> dict:
        """A short, JSON-friendly summary for the CLI."""
        n_t = len(self.translation_idx)
        return {
            "stack": self.name,
            "mass_kg": round(self.mass_kg, 1),
            "com_B_m": [round(float(x), 3) for x in self.r_CB_B],
            "inertia_diag_kg_m2": [float(f"{x:.4g}") for x in np.diag(self.I_B)],
            "translation_thrusters": list(self.thruster_names[:n_t]),
            "attitude_thrusters": list(self.thruster_names[n_t:]),
            "along_track_thrust_N": round(self.along_track_thrust_N, 2),
            "translation_mass_flow_kg_s": round(self.translation_mass_flow_kg_s, 5),
            "acceleration_mm_s2": round(1e3 * self.along_track_thrust_N / self.mass_kg, 4),
            "lever_arm_m": round(self.lever_arm_m, 3),
            "translation_torque_B_Nm": [round(float(x), 1) for x in self.translation_torque_B],
            "propellant_kg": round(float(self.tank_propellant_kg.sum()), 1),
            "control_period_s": self.control_period_s,
            "solar_activity": self.solar_activity,
        }


def _geometry(stack: Stack) -> dict:
    """Mass properties and thruster geometry in B (translation thrusters first)."""
    st, veh = stack.station, stack.vehicle
    port = st.ports[stack.port]
    dcm_PB = massprops.dcm_PB_from_axes(port.x_axis, port.y_axis)
    clock = math.radians(stack.clock_deg)
    R_BV = massprops.dcm_BV(dcm_PB, clock)
    r_VcB_B = massprops.vehicle_in_body(port.position_m, dcm_PB, clock, veh.com_m)
    I_V_B = massprops.rotate_inertia(veh.inertia_kg_m2, R_BV)
    m, r_C, I_C = massprops.combine(
        st.mass_kg, st.com_m, st.inertia_kg_m2, veh.mass_kg, r_VcB_B, I_V_B
    )
    names = stack.translation_thrusters + stack.attitude_thrusters
    ths = [veh.thrusters[n] for n in names]
    pos_V = np.array([h.position_m for h in ths])
    dir_V = np.array([h.direction for h in ths])
    r_TB_B = massprops.vehicle_in_body(port.position_m, dcm_PB, clock, pos_V)
    u_B = massprops.direction_in_body(dcm_PB, clock, dir_V)
    thrust = np.array([h.thrust_N for h in ths])
    y, p, r = np.radians(stack.attitude_ypr_deg)
    return {
        "mass": m,
        "r_C": r_C,
        "I_C": I_C,
        "dcm_BV": R_BV,
        "names": names,
        "thrusters": ths,
        "r_TC_B": r_TB_B - r_C,
        "u_B": u_B,
        "thrust": thrust,
        "force_B": thrust[:, None] * u_B,
        "dcm_BH": massprops.dcm_BH_from_ypr(y, p, r),
    }


def build_stack_model(stack: Stack) -> StackModel:
    """Compute the stack's mass properties and thruster geometry (see :class:`StackModel`)."""
    g = _geometry(stack)
    ths = g["thrusters"]
    n_t = len(stack.translation_thrusters)
    tank_names = tuple(stack.vehicle.tanks)
    tanks = [stack.vehicle.tanks[n] for n in tank_names]
    r_TC, u_B, thrust = g["r_TC_B"], g["u_B"], g["thrust"]
    isp = np.array([h.isp_s for h in ths])
    x_H_B = g["dcm_BH"][:, 0]  # LVLH x axis in B components
    F = g["force_B"][:n_t].sum(axis=0)
    M = np.cross(r_TC[:n_t], g["force_B"][:n_t]).sum(axis=0)
    lever = float(np.linalg.norm(np.cross(F, M)) / (F @ F))

    e1_B = np.zeros((len(ths), 3))
    e2_B = np.zeros((len(ths), 3))
    u_trim = np.array(u_B)  # a gimbaled engine as the controller trims it: through the CoM
    for i, h in enumerate(ths):
        if h.gimbal is not None:
            e1_V, e2_V = gimbal_axes(h.direction)
            e1_B[i] = g["dcm_BV"] @ e1_V
            e2_B[i] = g["dcm_BV"] @ e2_V
            trim = massprops.gimbal_trim(
                u_B[i], e1_B[i], e2_B[i], r_TC[i], math.radians(h.gimbal.limit_deg)
            )
            u_trim[i] = massprops.gimbaled_direction(u_B[i], e1_B[i], e2_B[i], *trim)

    def arr(values, dtype=np.float64):
        a = np.array(values, dtype=dtype)
        a.setflags(write=False)
        return a

    return StackModel(
        name=stack.name,
        solar_activity=stack.solar_activity,
        mass_kg=float(g["mass"]),
        station_mass_kg=stack.station.mass_kg,
        vehicle_mass_kg=stack.vehicle.mass_kg,
        r_CB_B=arr(g["r_C"]),
        I_B=arr(g["I_C"]),
        dcm_BH=arr(g["dcm_BH"]),
        dcm_BV=arr(g["dcm_BV"]),
        r_PB_B=arr(stack.station.ports[stack.port].position_m),
        thruster_names=g["names"],
        translation_idx=arr(np.arange(n_t), np.int64),
        attitude_idx=arr(np.arange(n_t, len(ths)), np.int64),
        r_TC_B=arr(r_TC),
        u_T_B=arr(u_B),
        thrust_N=arr(thrust),
        isp_s=arr(isp),
        open_delay_s=arr([h.open_delay_s for h in ths]),
        close_delay_s=arr([h.close_delay_s for h in ths]),
        rise_time_s=arr([h.rise_time_s for h in ths]),
        tail_off_s=arr([h.tail_off_s for h in ths]),
        min_on_time_s=arr([h.min_on_time_s for h in ths]),
        thrust_exponent=arr([h.thrust_exponent or 0.0 for h in ths]),
        isp_exponent=arr([h.isp_exponent or 0.0 for h in ths]),
        tank_idx=arr([tank_names.index(h.tank) for h in ths], np.int64),
        tank_names=tank_names,
        tank_propellant_kg=arr([k.propellant_kg for k in tanks]),
        tank_blowdown=arr([k.pressure_mode == "blowdown" for k in tanks], bool),
        tank_pressure_Pa=arr([k.pressure_Pa for k in tanks]),
        tank_gas_volume_m3=arr([k.gas_volume_m3 or 0.0 for k in tanks]),
        tank_propellant_density_kg_m3=arr([k.propellant_density_kg_m3 or 0.0 for k in tanks]),
        tank_polytropic_n=arr([k.polytropic_n or 1.0 for k in tanks]),
        tank_reserve_kg=arr([k.reserve_kg for k in tanks]),
        gimbal_limit_rad=arr([math.radians(h.gimbal.limit_deg) if h.gimbal else 0.0 for h in ths]),
        gimbal_rate_rad_s=arr(
            [math.radians(h.gimbal.rate_deg_s) if h.gimbal else 0.0 for h in ths]
        ),
        gimbal_e1_B=arr(e1_B),
        gimbal_e2_B=arr(e2_B),
        torque_arm_B=arr(np.cross(r_TC, u_B)),
        translation_force_B=arr(F),
        translation_torque_B=arr(M),
        along_track_thrust_N=float(thrust[:n_t] @ (u_trim[:n_t] @ x_H_B)),
        translation_mass_flow_kg_s=float(np.sum(thrust[:n_t] / (isp[:n_t] * G0))),
        lever_arm_m=lever,
        control_period_s=stack.control_period_s,
        max_attitude_error_rad=math.radians(stack.max_attitude_error_deg),
        max_rate_rad_s=math.radians(stack.max_rate_deg_s),
        cmg_torque_budget_Nm=stack.cmg_torque_budget_Nm,
        drag_area_m2=stack.station.drag_area_m2,
        drag_coefficient=stack.station.drag_coefficient,
    )
