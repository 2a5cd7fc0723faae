"""The conformance suite: the unit's whole contract over a port URL.

Runs against the pty emulator by default; ``--unit-url URL`` points it at QEMU or a board
(``python -m pytest -m conformance --unit-url /dev/serial/by-id/...``). The checks themselves
live in firmware_bridge/conformance.py so that ``thruster-hil selftest`` runs the same list.
"""

import pytest
from thruster_hil.firmware_bridge.conformance import CHECKS, run_check

# Slow tier (`-m "not slow"` leaves it out): the unit contract over a port (the emulator process).
pytestmark = [pytest.mark.conformance, pytest.mark.slow]


@pytest.mark.parametrize("chk", CHECKS, ids=[c.name for c in CHECKS])
def test_unit_contract(unit_url, chk):
    result = run_check(unit_url, chk)
    if result.outcome == "skipped":
        pytest.skip(result.detail)
    assert result.outcome == "passed", f"{chk.requirement}: {result.detail}"
