"""The wire between the host and the propulsion unit (docs/protocol.md).

- :mod:`firmware_bridge.codec` — sans-IO framing, encoding and decoding (bytes in, messages or
  typed protocol errors out), built from the dictionary ``messages.toml``;
- :mod:`firmware_bridge.link` — the host driver over pyserial (:class:`~firmware_bridge.link.Link`);
- :mod:`firmware_bridge.unit` / :mod:`firmware_bridge.emulator` — the unit's state machine and
  its emulator process on a pseudo-terminal; :mod:`firmware_bridge.qemu` — the board firmware
  (``board/``) under qemu-system-avr;
- :mod:`firmware_bridge.hil` — a serial unit in the closed loop;
- :mod:`firmware_bridge.conformance` — the unit contract, one suite for every tier.
"""
