"""The closed loop (docs/architecture.md, "Layers"): the plant, the controller and a unit flown
together. It stands on sims, controller and firmware_bridge, and only the CLI and the operator
tools stand on it.

- :mod:`~thruster_hil.closedloop.fused` — one control cycle as numba kernels, the fused burn and
  the counter-based noise;
- :mod:`~thruster_hil.closedloop.runner` — the burn loop around any unit (``run_burn``);
- :mod:`~thruster_hil.closedloop.hil` — a unit over the wire in that loop;
- :mod:`~thruster_hil.closedloop.batch` — many Monte-Carlo cases at once under numba prange.
"""
