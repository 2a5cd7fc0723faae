"""thruster_hil.dispersions: the spec loads, every bad field is one ConfigError line, and a case
depends on (campaign seed, case index) only."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from thruster_hil.config import build_stack_model, load_stack
from thruster_hil.core.errors import ConfigError
from thruster_hil.dispersions import (
    TRUNCATE_SIGMA,
    Dist,
    case_seed,
    case_seeds,
    failure_candidates,
    load_dispersions,
    sample_case,
)

DEFAULT = """
name = "t"
seed = 3
[thrusters]
thrust_scale = { dist = "normal", sigma = 0.01 }
isp_scale = 1.0
misalignment_deg = { dist = "uniform", low = -0.5, high = 0.5 }
[stack]
mass_kg = { dist = "normal", mean = 100.0, sigma = 500.0 }
[sensors]
attitude_noise_deg = 0.01
[failure]
probability = 0.5
window_s = [10.0, 20.0]
thrusters = "translation"
"""


@pytest.fixture(scope="module")
def model():
    return build_stack_model(load_stack("dragon-boost-kit"))


def _write(tmp_path, text, name="d.toml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_the_packaged_default_loads():
    spec = load_dispersions("default")
    assert spec.name == "default" and spec.seed == 8
    assert spec.thrust_scale == Dist("normal", 1.0, 0.01)
    assert spec.open_delay_s == Dist("uniform", -0.002, 0.002)
    assert spec.attitude_noise_rad == pytest.approx(math.radians(0.005))
    assert spec.delta_v_tolerance_pct == 0.5 and spec.max_attitude_error_deg is None


def test_a_spec_file_with_defaults_for_what_it_omits(tmp_path):
    spec = load_dispersions(_write(tmp_path, DEFAULT))
    assert spec.isp_scale == Dist("fixed", 1.0)
    assert spec.close_delay_s == Dist("fixed", 0.0)  # not given: nominal
    assert spec.mass_kg == Dist("normal", 100.0, 500.0)
    assert spec.failure_window_s == (10.0, 20.0) and spec.failure_thrusters == "translation"


@pytest.mark.parametrize(
    "old,new,field",
    [
        ("seed = 3", "seed = -1", "seed"),
        ("seed = 3", "seed = 1.5", "seed"),
        ("sigma = 0.01 }", "sigma = -0.01 }", "thrusters.thrust_scale.sigma"),
        ("sigma = 0.01 }", "sigma = 0.3 }", "thrusters.thrust_scale.sigma"),
        ('"normal", sigma = 0.01', '"gauss", sigma = 0.01', "thrusters.thrust_scale.dist"),
        ("sigma = 0.01 }", "sigma = 0.01, sgima = 1 }", "thrusters.thrust_scale.sgima"),
        ("low = -0.5, high = 0.5", "low = 0.5, high = -0.5", "thrusters.misalignment_deg.high"),
        ("isp_scale = 1.0", "isp_scale = 7.0", "thrusters.isp_scale"),
        ("isp_scale = 1.0", 'isp_scale = "big"', "thrusters.isp_scale"),
        ("[stack]", "[stak]", "stak"),
        ("attitude_noise_deg = 0.01", "attitude_noise_deg = -1", "sensors.attitude_noise_deg"),
        ("probability = 0.5", "probability = 1.5", "failure.probability"),
        ("window_s = [10.0, 20.0]", "window_s = [20.0, 10.0]", "failure.window_s"),
        ("window_s = [10.0, 20.0]", "window_s = [10.0]", "failure.window_s"),
        ('thrusters = "translation"', 'thrusters = "some"', "failure.thrusters"),
    ],
)
def test_every_bad_field_is_one_line_naming_file_and_field(tmp_path, old, new, field):
    assert old in DEFAULT
    path = _write(tmp_path, DEFAULT.replace(old, new))
    with pytest.raises(ConfigError) as err:
        load_dispersions(path)
    text = str(err.value)
    assert "\n" not in text
    assert text.startswith(f"{path}: {field}: ") or f": {field}: " in text, text


def test_missing_file_and_unknown_name_are_one_line(tmp_path):
    for ref in (tmp_path / "nope.toml", "no-such-spec"):
        with pytest.raises(ConfigError) as err:
            load_dispersions(ref)
        assert "\n" not in str(err.value)


def test_failure_thruster_names_are_checked_against_the_stack(tmp_path, model):
    spec = load_dispersions(
        _write(tmp_path, DEFAULT.replace('"translation"', '["trunk-draco-1", "nozzle"]'))
    )
    with pytest.raises(ConfigError, match=r"failure\.thrusters: expected thrusters of .*nozzle"):
        failure_candidates(spec, model)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**63 - 1), start=st.integers(0, 10_000), size=st.integers(1, 20))
def test_case_seeds_depend_on_campaign_seed_and_index_only(seed, start, size):
    chunk = case_seeds(seed, start, start + size)
    assert [case_seed(seed, start + i) for i in range(size)] == chunk.tolist()
    assert (chunk >= 0).all()


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**63 - 1))
def test_sampled_cases_are_reproducible_and_within_their_bounds(seed, model):
    spec = load_dispersions("default")
    a = sample_case(spec, model, seed)
    b = sample_case(spec, model, seed)
    assert np.array_equal(a.thrust_scale, b.thrust_scale) and a.d_mass_kg == b.d_mass_kg
    assert np.all(np.abs(a.thrust_scale - 1.0) <= TRUNCATE_SIGMA * 0.01 + 1e-15)
    assert np.all(np.abs(a.d_open_delay_s) <= 0.002)
    assert np.all((a.misalign_azimuth_rad >= 0) & (a.misalign_azimuth_rad < 2 * np.pi))
    assert abs(a.d_mass_kg) <= TRUNCATE_SIGMA * 1000.0


def test_one_parameter_change_leaves_the_other_draws_alone(tmp_path, model):
    a = sample_case(load_dispersions(_write(tmp_path, DEFAULT)), model, 99)
    b = sample_case(
        load_dispersions(
            _write(tmp_path, DEFAULT.replace("sigma = 0.01 }", "sigma = 0.02 }"), "e.toml")
        ),
        model,
        99,
    )
    assert np.allclose(b.thrust_scale - 1.0, 2.0 * (a.thrust_scale - 1.0), rtol=1e-12)
    assert np.array_equal(a.misalign_rad, b.misalign_rad) and a.d_mass_kg == b.d_mass_kg


def test_failures_strike_with_the_spec_probability_in_the_window(tmp_path, model):
    """p = 0.5 over 2,000 cases: the count is within 5 binomial sigmas (5 * sqrt(500) = 112)
    of 1,000; every failure hits a translation thruster inside [10, 20] s."""
    spec = load_dispersions(_write(tmp_path, DEFAULT))
    cases = [sample_case(spec, model, case_seed(1, i)) for i in range(2000)]
    hit = [c for c in cases if c.fail_index >= 0]
    assert abs(len(hit) - 1000) < 5 * math.sqrt(2000 * 0.25)
    assert {c.fail_index for c in hit} == {0, 1}
    assert all(10.0 <= c.fail_at_s <= 20.0 for c in hit)


def _tilt_with_numpy(u, angle, azimuth):
    """The misalignment as first written, with numpy's cross product and norm."""
    a = np.zeros(3)
    a[int(np.argmin(np.abs(u)))] = 1.0
    e1 = np.cross(u, a)
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(u, e1)
    d = math.cos(azimuth) * e1 + math.sin(azimuth) * e2
    out = math.cos(angle) * u + math.sin(angle) * d
    return out / np.linalg.norm(out)


@settings(max_examples=300, deadline=None)
@given(
    u=st.one_of(
        st.sampled_from([(1.0, 0.0, 0.0), (0.0, -1.0, 0.0), (0.0, 0.0, 1.0), (-0.6, 0.0, 0.8)]),
        st.tuples(*[st.floats(-1.0, 1.0)] * 3).filter(lambda v: sum(x * x for x in v) > 1e-6),
    ),
    angle=st.one_of(st.just(0.0), st.floats(-0.05, 0.05)),
    azimuth=st.floats(-7.0, 7.0),
)
def test_a_misaligned_thrust_axis_is_the_numpy_formula_bit_for_bit(u, angle, azimuth):
    """Issue 18: a case's true thrust axes are built with scalar cross products (numpy's cost
    per call was a tenth of flying the case); they must be numpy's, bit for bit."""
    from thruster_hil.closedloop.fused import _tilt

    v = np.array(u) / np.linalg.norm(u)
    assert _tilt(v, angle, azimuth).tobytes() == _tilt_with_numpy(v, angle, azimuth).tobytes()
