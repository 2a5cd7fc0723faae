"""Numbers as an operator types them: ASCII decimal, nothing that Python merely tolerates.

``float()`` and ``int()`` accept more than a number on a command line should be: digits of any
script (``'١'`` is 1, ``'１'`` is 1), digit-group underscores (``'1_0'`` is 10) and surrounding
whitespace. Taking ``--delta-v 1_0`` as 10 m/s would be a silent correction, so every number an
operator writes (CLI options, the ``--faults`` spec) goes through these two functions instead.
Both raise :class:`ValueError` for anything else; the callers turn that into their one-line
:class:`~thruster_hil.core.errors.UserError`. Imports nothing heavy (the emulator process uses it).
"""

from __future__ import annotations

import argparse
import re

__all__ = ["parse_float", "parse_int", "show", "whole_number"]

_FLOAT = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?", re.ASCII)
_INT = re.compile(r"[+-]?[0-9]+", re.ASCII)
#: Longer than any number a person means; int() of 4300+ digits raises anyway.
_MAX_DIGITS = 400


def parse_float(text: str) -> float:
    """A decimal number (``1``, ``-2.5``, ``.5``, ``3e-2``); NaN and inf are not numbers here."""
    if len(text) > _MAX_DIGITS or not _FLOAT.fullmatch(text):
        raise ValueError(f"not a decimal number: {text!r}")
    return float(text)


def parse_int(text: str) -> int:
    """A whole decimal number (``42``, ``-3``, ``+7``)."""
    if len(text) > _MAX_DIGITS or not _INT.fullmatch(text):
        raise ValueError(f"not a whole decimal number: {text!r}")
    return int(text)


def show(text: str, limit: int = 60) -> str:
    """``repr`` of what the operator typed, shortened: a message stays one readable line."""
    r = repr(text)
    return r if len(r) <= limit else r[: limit - 3] + "..."


def whole_number(lo: int, hi: int, hi_text: str | None = None):
    """An argparse type: an ASCII decimal whole number in lo..hi (``hi_text``: how the message
    writes hi, e.g. "2**63-1"; default str(hi))."""
    bound = f"{lo}..{hi_text or hi}"

    def parse(text: str) -> int:
        try:
            value = parse_int(text)
        except ValueError:
            value = None
        if value is None or not lo <= value <= hi:
            raise argparse.ArgumentTypeError(
                f"expected a whole number in {bound}, got {show(text)}"
            )
        return value

    return parse
