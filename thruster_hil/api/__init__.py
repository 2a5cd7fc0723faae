"""The Python API of thruster-hil: plan, run, replay and Monte-Carlo from a script or a notebook.

    from thruster_hil import api

    p = api.plan("dragon-boost-kit", delta_v_mps=0.1)
    r = api.run(p)                       # the in-process ideal unit; unit="emulator", port=URL
    r.verdict, r.series.attitude_error_deg.max()

Every call is the ``thruster-hil`` command of the same name (docs/api.md): the same numbers,
the same run directory when asked for one. Results are typed dataclasses with the per-cycle time
series as numpy arrays. Bad input raises :class:`UserError` (its subclasses: :class:`ConfigError`
for a config file, :class:`RecordError` for a run record, :class:`RunRecordsError` for a run whose
records could not be written whole) with the CLI's one-line message; a burn that misses its
target is a result whose ``verdict`` says so.
"""

from thruster_hil.api.burns import montecarlo, plan, replay, run
from thruster_hil.api.results import (
    BurnResult,
    CaseOutcomes,
    MonteCarloResult,
    Plan,
    ReplayResult,
    RunRecordsError,
    TimeSeries,
    Verdict,
)
from thruster_hil.core.errors import ConfigError, UserError
from thruster_hil.records import RecordError

__all__ = [
    "BurnResult",
    "CaseOutcomes",
    "ConfigError",
    "MonteCarloResult",
    "Plan",
    "RecordError",
    "ReplayResult",
    "RunRecordsError",
    "TimeSeries",
    "UserError",
    "Verdict",
    "montecarlo",
    "plan",
    "replay",
    "run",
]
