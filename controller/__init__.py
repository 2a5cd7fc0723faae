"""The reboost control loop: numba kernels on plain arrays, with a thin validated builder.

Public API:

- :func:`step` — one control cycle (guidance -> attitude hold -> allocation -> modulation) on
  preallocated arrays; returns the status word and writes the on-times [ms] (uint16).
- :func:`build_controller` / :class:`Controller` — build those arrays once from a stack model.
- :func:`pulse_on_times` — batch pulse modulation (steps x thrusters) for benchmarks and
  comparison with other tools.
- :func:`allocate` / :func:`solve_lp` — the wrench allocation at least propellant, an LP solved
  exactly by a bounded-variable simplex.
- :func:`describe_status` and the ``ST_*`` status bits.
"""

from thruster_hil.controller.allocation import allocate, solve_lp
from thruster_hil.controller.build import Controller, build_controller
from thruster_hil.controller.cycle import (
    ST_ATTITUDE_LIMIT,
    ST_BAD_INPUT,
    ST_BURNING,
    ST_COMPLETE,
    ST_INFEASIBLE,
    ST_RATE_LIMITED,
    ST_RESERVE,
    ST_SATURATED,
    ST_THRUSTER_OUT,
    ST_TORQUE_LIMITED,
    describe_status,
    step,
)
from thruster_hil.controller.modulation import pulse_on_times

__all__ = [
    "Controller",
    "build_controller",
    "step",
    "pulse_on_times",
    "allocate",
    "solve_lp",
    "describe_status",
    "ST_BURNING",
    "ST_COMPLETE",
    "ST_SATURATED",
    "ST_INFEASIBLE",
    "ST_ATTITUDE_LIMIT",
    "ST_RATE_LIMITED",
    "ST_TORQUE_LIMITED",
    "ST_THRUSTER_OUT",
    "ST_BAD_INPUT",
    "ST_RESERVE",
]
