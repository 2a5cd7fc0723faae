"""The plant the controller flies against: numba kernels on floats and arrays, SI units.

Modules: constants, atmosphere (NRLMSIS 2.1 table), orbit (two-body + J2 + drag), attitude
(Euler parameters, Euler's equations, gravity gradient), massprops (stack mass properties),
thrusters (valves, pulses, feed), plant (the stack integrated as one body), loop (one control
cycle as numba kernels, the fused burn, the counter-based noise), runner (the closed loop) and
batch (many Monte-Carlo cases at once under numba prange).
"""
