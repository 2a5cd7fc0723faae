"""Packaged hardware descriptions (TOML): ``stations/``, ``vehicles/`` and ``stacks/``.

``CONFIG_DIR`` is the directory holding them; ``thruster_hil.config`` resolves bare names
against it.
"""

from pathlib import Path

CONFIG_DIR: Path = Path(__file__).resolve().parent

__all__ = ["CONFIG_DIR"]
