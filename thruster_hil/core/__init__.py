"""The core every other layer stands on (docs/architecture.md, "Layers"): nothing here imports
anything of the project's above it.

- :mod:`~thruster_hil.core.jit` — the one place numba's options are set (``kernel``);
- :mod:`~thruster_hil.core.constants` — physical constants, SI;
- :mod:`~thruster_hil.core.frames` — Euler parameters, DCMs and the LVLH frame;
- :mod:`~thruster_hil.core.pulses` — the impulse of one valve command (plant and controller);
- :mod:`~thruster_hil.core.health` — thruster health codes (plant, controller, wire, loop);
- :mod:`~thruster_hil.core.massprops` — the stack model's mass properties;
- :mod:`~thruster_hil.core.errors` / :mod:`~thruster_hil.core.textnum` — the one-line error and
  number parsing every edge uses.

Nothing is imported here: the emulator process imports ``core.errors`` and must not pay for
numba at start-up.
"""
