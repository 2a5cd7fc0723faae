"""Array layouts declared once: named fields with lengths, offsets computed from them.

The numba kernels pass their state, parameters and scratch as flat float arrays (or the rows or
columns of 2-D ones) and index them with module-level int constants, which numba folds in as
compile-time constants. Writing those offsets by hand lets two fields overlap or a length drift
from the fields; here a layout is one declaration, and the module unpacks its offsets into the
plain constants the kernels use::

    SENSORS = Layout("controller sensor vector", [
        ("S_R", 3),  # r_BN_N [m]
        ("S_V", 3),  # v_BN_N [m/s]
    ])
    S_R, S_V = SENSORS.offsets
    SENS_LEN = SENSORS.length

tests/test_layout.py checks every layout in the package: the fields are contiguous (no overlap,
no gap, together exactly ``length`` long) and each module's constant of a field's name equals
the field's offset.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["Layout", "all_layouts"]

_REGISTRY: list[Layout] = []


class Layout:
    """Consecutive named fields of given lengths (in elements, rows or columns: whatever the
    array's indexed axis is)."""

    def __init__(self, name: str, fields: Sequence[tuple[str, int]]):
        seen: set[str] = set()
        offsets: list[int] = []
        at = 0
        for field, size in fields:
            if field in seen:
                raise ValueError(f"layout {name!r}: field {field!r} declared twice")
            if not isinstance(size, int) or isinstance(size, bool) or size < 1:
                raise ValueError(
                    f"layout {name!r}: field {field!r} needs a length >= 1, got {size!r}"
                )
            seen.add(field)
            offsets.append(at)
            at += size
        self.name = name
        #: (field name, length) in declaration order.
        self.fields: tuple[tuple[str, int], ...] = tuple((f, int(s)) for f, s in fields)
        #: The fields' offsets, in declaration order (unpack them into the module's constants).
        self.offsets: tuple[int, ...] = tuple(offsets)
        #: Elements the fields take together.
        self.length: int = at
        _REGISTRY.append(self)

    def offset(self, field: str) -> int:
        """Offset of ``field``."""
        return self.offsets[self._index(field)]

    def size(self, field: str) -> int:
        """Length of ``field``."""
        return self.fields[self._index(field)][1]

    def span(self, field: str) -> slice:
        """``slice(offset, offset + length)`` of ``field``."""
        o = self.offset(field)
        return slice(o, o + self.size(field))

    def _index(self, field: str) -> int:
        for i, (f, _s) in enumerate(self.fields):
            if f == field:
                return i
        raise KeyError(f"layout {self.name!r} has no field {field!r}")

    def __repr__(self) -> str:
        return f"Layout({self.name!r}, {len(self.fields)} fields, length {self.length})"


def all_layouts() -> tuple[Layout, ...]:
    """Every layout declared so far (the modules that declare them must have been imported)."""
    return tuple(_REGISTRY)
