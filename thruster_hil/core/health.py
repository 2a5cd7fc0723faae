"""Thruster health codes: one small integer per thruster, shared by the plant, the controller,
the wire (the unit's HEALTH report) and the closed loop."""

HEALTH_NOMINAL = 0
HEALTH_FAILED_OFF = 1  # valve never opens: no thrust whatever the command
HEALTH_STUCK_OPEN = 2  # valve always open: steady-state thrust for the whole cycle

__all__ = ["HEALTH_NOMINAL", "HEALTH_FAILED_OFF", "HEALTH_STUCK_OPEN"]
