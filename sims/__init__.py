"""The plant the controller flies against: numba kernels on floats and arrays, SI units.

Modules: constants, atmosphere (NRLMSIS 2.1 table), orbit (two-body + J2 + drag), attitude
(Euler parameters, Euler's equations, gravity gradient), massprops (stack mass properties),
thrusters (valves, pulses, feed), plant (the stack integrated as one body) and runner (the
closed loop).
"""
