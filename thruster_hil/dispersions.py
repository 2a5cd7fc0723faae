"""Dispersion specs for Monte-Carlo campaigns: which parameters vary, how, and the seed.

A spec is a TOML file (``hw_configs/dispersions/default.toml`` documents every field). It is
validated once, here, with the same one-line errors as every other config
(``<file>: <dotted.field>: <what was expected>, got <value>``), then bound to a stack (the
failure's thruster set is checked against the stack's thrusters).

Every case has a seed that depends on the campaign seed and the case index only (:func:`case_seed`,
numpy's SeedSequence), so how cases are chunked or scheduled never changes a case. A case's numbers
come from the counter-based generator of :mod:`thruster_hil.closedloop.fused`, keyed by the case
seed, one counter range per parameter: changing one parameter's distribution leaves every other
parameter's draws unchanged, and the sensor noise inside the burn (same generator, low counters)
never overlaps the parameter draws (counters from 2**60).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from thruster_hil.closedloop import fused as loop
from thruster_hil.config import _check_number, _display, _is_file, _read_toml, _show, _Table
from thruster_hil.core.errors import ConfigError
from thruster_hil.hw_configs import CONFIG_DIR

__all__ = [
    "Dispersions",
    "Dist",
    "case_seed",
    "case_seeds",
    "failure_candidates",
    "load_dispersions",
    "sample_case",
]

#: Normal draws are clipped at this many sigma (no 6-sigma thrust of zero).
TRUNCATE_SIGMA = 4.0
_DRAW_BASE = 1 << 60
_PARAM_STRIDE = 1 << 32
# Parameter ids: each owns a counter range of the case's generator.
_P_THRUST, _P_ISP, _P_MISALIGN, _P_AZIMUTH, _P_OPEN, _P_CLOSE = 1, 2, 3, 4, 5, 6
_P_MASS, _P_COM, _P_BIAS, _P_FAIL = 7, 8, 9, 10
MAX_SEED = 2**63 - 1

# name -> (lowest value, highest value, largest sigma, unit, neutral mean)
_LIMITS = {
    "thrust_scale": (0.5, 1.5, 0.1, "", 1.0),
    "isp_scale": (0.5, 1.5, 0.1, "", 1.0),
    "misalignment_deg": (-10.0, 10.0, 2.0, "deg", 0.0),
    "open_delay_s": (-0.1, 0.1, 0.05, "s", 0.0),
    "close_delay_s": (-0.1, 0.1, 0.05, "s", 0.0),
    "mass_kg": (-1e5, 1e5, 5e4, "kg", 0.0),
    "com_offset_m": (-5.0, 5.0, 2.0, "m", 0.0),
    "accelerometer_bias_mps2": (-1e-3, 1e-3, 1e-3, "m/s^2", 0.0),
}
_TOP_KEYS = ("name", "seed", "thrusters", "stack", "sensors", "failure", "pass")
_THRUSTER_KEYS = ("thrust_scale", "isp_scale", "misalignment_deg", "open_delay_s", "close_delay_s")
_STACK_KEYS = ("mass_kg", "com_offset_m")
_SENSOR_KEYS = (
    "attitude_noise_deg",
    "rate_noise_deg_s",
    "accelerometer_noise_mps",
    "accelerometer_bias_mps2",
)
_FAILURE_KEYS = ("probability", "window_s", "thrusters")
_PASS_KEYS = ("delta_v_tolerance_pct", "max_attitude_error_deg", "max_burn_duration_factor")
_THRUSTER_SETS = ("any", "translation", "attitude")
DISTRIBUTIONS = ("normal", "uniform")


@dataclass(frozen=True)
class Dist:
    """One parameter's distribution: ``normal`` (a = mean, b = sigma), ``uniform`` (a = low,
    b = high) or ``fixed`` (a = the value)."""

    kind: str
    a: float
    b: float = 0.0

    def sample(self, seed: int, param: int, size: int) -> np.ndarray:
        """``size`` draws for one case (seed) and one parameter id."""
        base = _DRAW_BASE + param * _PARAM_STRIDE
        out = np.empty(size)
        if self.kind == "fixed":
            out[:] = self.a
        elif self.kind == "normal":
            loop.fill_normal(seed, base, out)
            np.clip(out, -TRUNCATE_SIGMA, TRUNCATE_SIGMA, out=out)
            out = self.a + self.b * out
        else:
            loop.fill_uniform(seed, base, out)
            out = self.a + (self.b - self.a) * out
        return out

    @property
    def varies(self) -> bool:
        return self.kind != "fixed" and self.b != (self.a if self.kind == "uniform" else 0.0)

    def describe(self) -> str:
        if self.kind == "fixed":
            return f"{self.a:g}"
        if self.kind == "normal":
            return f"normal(mean {self.a:g}, sigma {self.b:g})"
        return f"uniform({self.a:g}, {self.b:g})"


@dataclass(frozen=True, eq=False)
class Dispersions:
    """A validated dispersion spec (SI units inside: angles in rad where the name says so)."""

    path: Path
    name: str
    seed: int
    thrust_scale: Dist
    isp_scale: Dist
    misalignment_deg: Dist
    open_delay_s: Dist
    close_delay_s: Dist
    mass_kg: Dist
    com_offset_m: Dist
    attitude_noise_rad: float
    rate_noise_rad_s: float
    accelerometer_noise_mps: float
    accelerometer_bias_mps2: Dist
    failure_probability: float
    failure_window_s: tuple[float, float]
    failure_thrusters: str | tuple[str, ...]
    delta_v_tolerance_pct: float
    max_attitude_error_deg: float | None
    max_burn_duration_factor: float

    @property
    def where(self) -> str:
        return _display(self.path)

    def describe(self) -> dict:
        """The spec as JSON-ready text (for summary.json)."""
        return {
            "file": self.where,
            "name": self.name,
            "thrust_scale": self.thrust_scale.describe(),
            "isp_scale": self.isp_scale.describe(),
            "misalignment_deg": self.misalignment_deg.describe(),
            "open_delay_s": self.open_delay_s.describe(),
            "close_delay_s": self.close_delay_s.describe(),
            "mass_kg": self.mass_kg.describe(),
            "com_offset_m": self.com_offset_m.describe(),
            "attitude_noise_deg": math.degrees(self.attitude_noise_rad),
            "rate_noise_deg_s": math.degrees(self.rate_noise_rad_s),
            "accelerometer_noise_mps": self.accelerometer_noise_mps,
            "accelerometer_bias_mps2": self.accelerometer_bias_mps2.describe(),
            "failure": {
                "probability": self.failure_probability,
                "window_s": list(self.failure_window_s),
                "thrusters": (
                    self.failure_thrusters
                    if isinstance(self.failure_thrusters, str)
                    else list(self.failure_thrusters)
                ),
            },
            "pass": {
                "delta_v_tolerance_pct": self.delta_v_tolerance_pct,
                "max_attitude_error_deg": self.max_attitude_error_deg,
                "max_burn_duration_factor": self.max_burn_duration_factor,
            },
        }


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def _dist(t: _Table, key: str) -> Dist:
    lo, hi, sigma_max, unit, neutral = _LIMITS[key]
    u = f" {unit}" if unit else ""
    v = t.raw(key, Dist("fixed", neutral), "a number or a {dist = ...} table")
    if isinstance(v, Dist):
        return v
    if not isinstance(v, dict):
        x = _check_number(v, lo, hi, False, f"[{lo:g}, {hi:g}]{u}", lambda m: t.fail(key, m))
        return Dist("fixed", x)
    d = _Table(t.where, v, t.path(key))
    kind = d.string("dist", DISTRIBUTIONS)
    if kind == "normal":
        d.check_keys(("dist", "mean", "sigma"))
        mean = d.number("mean", lo, hi, unit=unit, default=neutral)
        sigma = d.number("sigma", 0.0, sigma_max, unit=unit)
        for edge in (mean - TRUNCATE_SIGMA * sigma, mean + TRUNCATE_SIGMA * sigma):
            if not lo <= edge <= hi:
                raise d.fail(
                    "sigma",
                    f"expected mean +- {TRUNCATE_SIGMA:g} sigma inside "
                    f"[{lo:g}, {hi:g}]{u}, got mean {mean:g} and sigma {sigma:g}",
                )
        return Dist("normal", mean, sigma)
    d.check_keys(("dist", "low", "high"))
    low = d.number("low", lo, hi, unit=unit)
    high = d.number("high", lo, hi, unit=unit)
    if high < low:
        raise d.fail("high", f"expected high >= low ({low:g}), got {high:g}")
    return Dist("uniform", low, high)


def _section(t: _Table, key: str, keys: tuple[str, ...]) -> _Table:
    s = _Table(t.where, t.raw(key, {}), key)
    s.check_keys(keys)
    return s


def dispersions_path(name_or_path: str | Path) -> Path:
    """A bare name is a packaged spec (hw_configs/dispersions/<name>.toml), anything else a path."""
    s = str(name_or_path)
    if "/" in s or "\\" in s or s.endswith(".toml"):
        return Path(s)
    path = CONFIG_DIR / "dispersions" / f"{s}.toml"
    if not _is_file(path):
        names = sorted(p.stem for p in (CONFIG_DIR / "dispersions").glob("*.toml"))
        raise ConfigError(
            s,
            f"expected a dispersion spec name (one of {', '.join(names)}) or a "
            f"path to a .toml file, got no file {_display(path)}",
        )
    return path


def load_dispersions(name_or_path: str | Path = "default") -> Dispersions:
    """Load and validate a dispersion spec."""
    path = dispersions_path(name_or_path)
    where = _display(path)
    t = _Table(where, _read_toml(path, where))
    t.check_keys(_TOP_KEYS)
    name = t.string("name", default=path.stem)
    seed = t.raw("seed", 0, "an integer in [0, 2**63 - 1]")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise t.fail("seed", f"expected an integer in [0, 2**63 - 1], got {_show(seed)}")
    th = _section(t, "thrusters", _THRUSTER_KEYS)
    st = _section(t, "stack", _STACK_KEYS)
    se = _section(t, "sensors", _SENSOR_KEYS)
    fa = _section(t, "failure", _FAILURE_KEYS)
    pa = _section(t, "pass", _PASS_KEYS)

    window = fa.raw("window_s", [0.0, 0.0], "a list [start, end] of seconds after ignition")
    if not isinstance(window, list) or len(window) != 2:
        raise fa.fail(
            "window_s",
            f"expected a list [start, end] of seconds after ignition, got {_show(window)}",
        )
    w = [
        _check_number(x, 0.0, 1e5, False, "[0, 1e5] s", lambda m, i=i: fa.fail(f"window_s[{i}]", m))
        for i, x in enumerate(window)
    ]
    if w[1] < w[0]:
        raise fa.fail("window_s", f"expected end >= start ({w[0]:g} s), got {w[1]:g}")
    which = fa.raw("thrusters", "any", "any, translation, attitude or a list of thruster names")
    if isinstance(which, str):
        if which not in _THRUSTER_SETS:
            raise fa.fail(
                "thrusters",
                "expected any, translation, attitude or a list of "
                f"thruster names, got {_show(which)}",
            )
    else:
        which = fa.string_list("thrusters")

    limit = pa.raw("max_attitude_error_deg", None)
    if limit is not None:
        limit = pa.number("max_attitude_error_deg", 0.0, 180.0, lo_open=True, unit="deg")
    return Dispersions(
        path=path,
        name=name,
        seed=seed,
        thrust_scale=_dist(th, "thrust_scale"),
        isp_scale=_dist(th, "isp_scale"),
        misalignment_deg=_dist(th, "misalignment_deg"),
        open_delay_s=_dist(th, "open_delay_s"),
        close_delay_s=_dist(th, "close_delay_s"),
        mass_kg=_dist(st, "mass_kg"),
        com_offset_m=_dist(st, "com_offset_m"),
        attitude_noise_rad=math.radians(
            se.number("attitude_noise_deg", 0.0, 1.0, unit="deg", default=0.0)
        ),
        rate_noise_rad_s=math.radians(
            se.number("rate_noise_deg_s", 0.0, 0.1, unit="deg/s", default=0.0)
        ),
        accelerometer_noise_mps=se.number(
            "accelerometer_noise_mps", 0.0, 0.01, unit="m/s", default=0.0
        ),
        accelerometer_bias_mps2=_dist(se, "accelerometer_bias_mps2"),
        failure_probability=fa.number("probability", 0.0, 1.0, default=0.0),
        failure_window_s=(w[0], w[1]),
        failure_thrusters=which,
        delta_v_tolerance_pct=pa.number(
            "delta_v_tolerance_pct", 0.0, 100.0, lo_open=True, unit="%", default=0.5
        ),
        max_attitude_error_deg=limit,
        max_burn_duration_factor=pa.number("max_burn_duration_factor", 1.0, 10.0, default=2.5),
    )


# --------------------------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------------------------


def case_seed(seed: int, index: int) -> int:
    """The seed of case ``index`` of a campaign with ``seed``: a function of the two only
    (numpy SeedSequence entropy [seed, index]), 63 bits."""
    state = np.random.SeedSequence([int(seed), int(index)]).generate_state(1, np.uint64)[0]
    return int(state >> np.uint64(1))


def case_seeds(seed: int, start: int, stop: int) -> np.ndarray:
    """Seeds of cases ``start`` .. ``stop - 1`` (int64)."""
    return np.array([case_seed(seed, i) for i in range(start, stop)], np.int64)


def failure_candidates(spec: Dispersions, model) -> np.ndarray:
    """Indices (in the model's thruster order) a failure may hit; checks the names."""
    names = list(model.thruster_names)
    which = spec.failure_thrusters
    if which == "any":
        return np.arange(len(names), dtype=np.int64)
    if which == "translation":
        return np.asarray(model.translation_idx, np.int64)
    if which == "attitude":
        return np.asarray(model.attitude_idx, np.int64)
    out = []
    for n in which:
        if n not in names:
            raise ConfigError(
                spec.where,
                f"expected thrusters of {model.name} ({', '.join(names)}), got {_show(n)}",
                "failure.thrusters",
            )
        out.append(names.index(n))
    return np.array(out, np.int64)


def sample_case(
    spec: Dispersions, model, seed: int, candidates: np.ndarray | None = None
) -> loop.PlantCase:
    """The true stack and sensors of the case with ``seed`` (see :func:`case_seed`)."""
    if candidates is None:
        candidates = failure_candidates(spec, model)
    n = len(model.thruster_names)
    fail_index, fail_at = -1, math.inf
    u = np.empty(3)
    loop.fill_uniform(seed, _DRAW_BASE + _P_FAIL * _PARAM_STRIDE, u)
    if u[0] < spec.failure_probability and len(candidates):
        fail_index = int(candidates[min(int(u[1] * len(candidates)), len(candidates) - 1)])
        lo, hi = spec.failure_window_s
        fail_at = lo + (hi - lo) * float(u[2])
    return loop.PlantCase(
        seed=int(seed),
        thrust_scale=spec.thrust_scale.sample(seed, _P_THRUST, n),
        isp_scale=spec.isp_scale.sample(seed, _P_ISP, n),
        misalign_rad=np.radians(spec.misalignment_deg.sample(seed, _P_MISALIGN, n)),
        misalign_azimuth_rad=2.0 * math.pi * Dist("uniform", 0.0, 1.0).sample(seed, _P_AZIMUTH, n),
        d_open_delay_s=spec.open_delay_s.sample(seed, _P_OPEN, n),
        d_close_delay_s=spec.close_delay_s.sample(seed, _P_CLOSE, n),
        d_mass_kg=float(spec.mass_kg.sample(seed, _P_MASS, 1)[0]),
        d_com_B_m=spec.com_offset_m.sample(seed, _P_COM, 3),
        noise_att_rad=spec.attitude_noise_rad,
        noise_rate_rad_s=spec.rate_noise_rad_s,
        noise_dv_mps=spec.accelerometer_noise_mps,
        acc_bias_B_mps2=spec.accelerometer_bias_mps2.sample(seed, _P_BIAS, 3),
        fail_index=fail_index,
        fail_at_s=fail_at,
    )


def case_inputs(case: loop.PlantCase, names: tuple[str, ...]) -> dict:
    """A case's dispersed inputs as flat columns (for cases.csv)."""
    row: dict = {}
    for label, values, scale in (
        ("thrust_scale", case.thrust_scale, 1.0),
        ("isp_scale", case.isp_scale, 1.0),
        ("misalignment_deg", case.misalign_rad, 180.0 / math.pi),
        ("open_delay_offset_s", case.d_open_delay_s, 1.0),
        ("close_delay_offset_s", case.d_close_delay_s, 1.0),
    ):
        for name, v in zip(names, values, strict=True):
            row[f"{label}:{name}"] = float(v) * scale
    row["mass_offset_kg"] = case.d_mass_kg
    for axis, v in zip("xyz", case.d_com_B_m, strict=True):
        row[f"com_offset_{axis}_m"] = float(v)
    for axis, v in zip("xyz", case.acc_bias_B_mps2, strict=True):
        row[f"accel_bias_{axis}_mps2"] = float(v)
    row["failed_thruster"] = names[case.fail_index] if case.fail_index >= 0 else ""
    row["fail_at_s"] = case.fail_at_s if case.fail_index >= 0 else ""
    return row
