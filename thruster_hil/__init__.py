"""thruster-hil: the hardware-in-the-loop bench for a docked vehicle's reboost controller.

The application edge: the ``thruster-hil`` command line (:mod:`thruster_hil.cli`), the Python API
(:mod:`thruster_hil.api`: plan, run, replay and Monte-Carlo with typed results), the validated
hardware configs (:mod:`thruster_hil.config`: ``load_stack``, ``build_stack_model``), burn
planning (:mod:`thruster_hil.plan`: ``plan_burn``), dispersion specs and Monte-Carlo campaigns
(:mod:`thruster_hil.dispersions`, :mod:`thruster_hil.montecarlo`) and the one-line error every
operator-facing failure goes through (:mod:`thruster_hil.core.errors`: ``UserError``).

Nothing is imported here: the emulator process imports :mod:`thruster_hil.core.errors` and must not
pay for numba at start-up.
"""

__version__ = "0.1.0"
