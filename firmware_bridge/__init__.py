"""The wire between the host and the propulsion unit (``thruster_hil.firmware_bridge``,
docs/protocol.md). It stands on the core only.

- :mod:`~thruster_hil.firmware_bridge.codec` — sans-IO framing, encoding and decoding (bytes in,
  messages or typed protocol errors out), built from the dictionary ``messages.toml``;
- :mod:`~thruster_hil.firmware_bridge.session` — the host side as a sans-IO state machine
  (``HostSession``: bytes and time in, results and bytes out; its operations in
  :mod:`~thruster_hil.firmware_bridge.session_ops`, its rules and value types in
  :mod:`~thruster_hil.firmware_bridge.linkrules`);
- :mod:`~thruster_hil.firmware_bridge.link` — the thin one-thread driver over pyserial (``Link``);
- :mod:`~thruster_hil.firmware_bridge.unit` / :mod:`~thruster_hil.firmware_bridge.emulator` — the
  unit's state machine and its emulator process on a pseudo-terminal;
  :mod:`~thruster_hil.firmware_bridge.qemu` — the board firmware (``board/``) under
  qemu-system-avr; :mod:`~thruster_hil.firmware_bridge.simavr` — the same firmware cycle by
  cycle under simavr (``board/simavr_unit.c``), with pin traces and timing figures;
- :mod:`~thruster_hil.firmware_bridge.conformance` — the unit contract, one suite for every tier;
- :mod:`~thruster_hil.firmware_bridge.xtce` — the dictionary exported as XTCE 1.2 for ground
  systems (``thruster-hil dictionary --xtce``);
- :mod:`~thruster_hil.firmware_bridge.downlink` — the host's per-cycle telemetry as HOST_CYCLE
  space packets, sans-IO; :mod:`~thruster_hil.firmware_bridge.udp` — the thin non-blocking UDP
  driver that streams them (``run --stream``) through a shared-memory ring and its sender
  process, :mod:`~thruster_hil.firmware_bridge.ring_sender` (standard library only).

A unit flown in the closed loop is :mod:`thruster_hil.closedloop.hil`.
"""
