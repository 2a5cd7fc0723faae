"""The plant the controller flies against (``thruster_hil.sims``): numba kernels on floats and
arrays, SI units. The plant only: the closed loop that flies it is ``thruster_hil.closedloop``,
and the kernels the controller shares with it (frames, the pulse model, health codes, constants,
mass properties) are in ``thruster_hil.core``.

Modules: atmosphere (NRLMSIS 2.1 table), orbit (two-body + J2 + drag), attitude (Euler's
equations, gravity gradient), thrusters (valves, feed), plant (the stack integrated as one body)
and decay (mean-element drag decay between burns).
"""
