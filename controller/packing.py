"""The controller's arrays in one buffer, so a step called from Python passes one array.

numba types and unboxes every argument of a call from Python: measured here, a call with the
step's twelve arrays costs about 1.1 us before any work is done and a call with one array about
0.2 us, against about 2-3 us of work in the step itself. So a
:class:`thruster_hil.controller.build.Controller` keeps all twelve arrays as views into one
float64 buffer (the int64 and uint16 ones as views of its bytes) and :func:`step_packed` takes
just that buffer: a header of int64 slots at its start says where each array starts and how big
the variable dimensions are, and the kernel rebuilds the twelve views (no copy, no allocation)
and calls :func:`thruster_hil.controller.cycle.step` on them. The numbers are those of ``step``
on the separate arrays, bit for bit: it is the same kernel on the same values.

Kernels inside numba (the fused loop, the Monte-Carlo batch) keep calling ``step`` with the
separate arrays; a call between kernels costs nothing to type.
"""

from __future__ import annotations

import numpy as np
from thruster_hil.controller.cycle import CTRL_LEN, PARAM_LEN, QP_ROWS, SENS_LEN, step
from thruster_hil.controller.modulation import MOD_COLS, THR_COLS
from thruster_hil.controller.views import carve

from thruster_hil.core.jit import host_kernel
from thruster_hil.core.layout import Layout

#: int64 slots at the start of the buffer: the variable sizes, then each array's first element.
PACK_HEADER = Layout(
    "controller pack header",
    [
        ("H_N", 1),  # thrusters
        ("H_M", 1),  # actuator columns (A's columns)
        ("H_ROWS", 1),  # LP rows (E's and Binv's rows)
        ("H_COLS", 1),  # LP columns (E's, qp's and ints' columns)
        ("H_BINV_COLS", 1),
        ("H_SENS", 1),  # offsets [float64 elements from the buffer's start] of the arrays
        ("H_PARAMS", 1),
        ("H_A", 1),
        ("H_E", 1),
        ("H_BINV", 1),
        ("H_QP", 1),
        ("H_INTS", 1),
        ("H_THR", 1),
        ("H_MOD", 1),
        ("H_HEALTH", 1),
        ("H_CTRL", 1),
        ("H_ON_MS", 1),
    ],
)
(
    H_N,
    H_M,
    H_ROWS,
    H_COLS,
    H_BINV_COLS,
    H_SENS,
    H_PARAMS,
    H_A,
    H_E,
    H_BINV,
    H_QP,
    H_INTS,
    H_THR,
    H_MOD,
    H_HEALTH,
    H_CTRL,
    H_ON_MS,
) = PACK_HEADER.offsets
HEADER_LEN = PACK_HEADER.length

#: The arrays :func:`thruster_hil.controller.cycle.step` takes, in its order.
ARRAY_NAMES = (
    "sens",
    "params",
    "A",
    "E",
    "Binv",
    "qp",
    "ints",
    "thr",
    "mod",
    "health",
    "ctrl",
    "on_ms",
)
#: Each array's header slot: its layout field is ``H_`` + its name in capitals.
_OFFSET_SLOT = {name: PACK_HEADER.offset("H_" + name.upper()) for name in ARRAY_NAMES}


def _shapes(n: int, m: int, n_rows: int, n_cols: int, binv_cols: int) -> dict:
    """(shape, dtype) of each array: the layouts ``step`` documents."""
    return {
        "sens": ((SENS_LEN,), np.float64),
        "params": ((PARAM_LEN,), np.float64),
        "A": ((6, m), np.float64),
        "E": ((n_rows, n_cols), np.float64),
        "Binv": ((n_rows, binv_cols), np.float64),
        "qp": ((QP_ROWS, n_cols), np.float64),
        "ints": ((2, n_cols), np.int64),
        "thr": ((n, THR_COLS), np.float64),
        "mod": ((n, MOD_COLS), np.float64),
        "health": ((n,), np.int64),
        "ctrl": ((CTRL_LEN,), np.float64),
        "on_ms": ((n,), np.uint16),
    }


def pack(arrays: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """One buffer holding copies of ``arrays`` (the twelve of :data:`ARRAY_NAMES`, shaped as
    ``step`` wants them), and views into it of the same shapes and dtypes. Raises ValueError
    naming the array whose shape or dtype is not what ``step`` takes."""
    n = int(arrays["health"].shape[0])
    m = int(arrays["A"].shape[1])
    n_rows, n_cols = (int(s) for s in arrays["E"].shape)
    binv_cols = int(arrays["Binv"].shape[1])
    shapes = _shapes(n, m, n_rows, n_cols, binv_cols)
    header = np.zeros(HEADER_LEN, np.int64)
    header[[H_N, H_M, H_ROWS, H_COLS, H_BINV_COLS]] = n, m, n_rows, n_cols, binv_cols
    at = HEADER_LEN
    for name in ARRAY_NAMES:
        shape, dtype = shapes[name]
        a = arrays[name]
        if a.shape != shape or a.dtype != dtype:
            raise ValueError(
                f"controller array {name!r}: expected shape {shape} {np.dtype(dtype).name}, "
                f"got {a.shape} {a.dtype.name}"
            )
        header[_OFFSET_SLOT[name]] = at
        at += -(-a.nbytes // 8)  # whole float64 slots, so every array starts 8-byte aligned
    buf = np.zeros(at)
    buf[:HEADER_LEN].view(np.int64)[:] = header
    views = {}
    for name in ARRAY_NAMES:
        shape, dtype = shapes[name]
        views[name] = carve(buf, int(header[_OFFSET_SLOT[name]]), shape, dtype)
        views[name][...] = arrays[name]
    return buf, views


@host_kernel
def step_packed(buf):
    """:func:`thruster_hil.controller.cycle.step` on the arrays packed in ``buf`` (see
    :func:`pack`). Writes the on-times into the buffer's ``on_ms`` and returns the status.

    The layouts' lengths (SENS_LEN, THR_COLS, ...) are constants compiled into this kernel, and
    numba's on-disk cache only notices a change to this file: a change of a layout elsewhere
    must touch this file too (as the thruster columns' T_FULL_SPILL did), or a stale cache
    would carve the old shapes."""
    h = carve(buf, 0, (HEADER_LEN,), np.int64)
    n = h[H_N]
    m = h[H_M]
    n_rows = h[H_ROWS]
    n_cols = h[H_COLS]
    f8 = np.float64
    return step(
        carve(buf, h[H_SENS], (SENS_LEN,), f8),
        carve(buf, h[H_PARAMS], (PARAM_LEN,), f8),
        carve(buf, h[H_A], (6, m), f8),
        carve(buf, h[H_E], (n_rows, n_cols), f8),
        carve(buf, h[H_BINV], (n_rows, h[H_BINV_COLS]), f8),
        carve(buf, h[H_QP], (QP_ROWS, n_cols), f8),
        carve(buf, h[H_INTS], (2, n_cols), np.int64),
        carve(buf, h[H_THR], (n, THR_COLS), f8),
        carve(buf, h[H_MOD], (n, MOD_COLS), f8),
        carve(buf, h[H_HEALTH], (n,), np.int64),
        carve(buf, h[H_CTRL], (CTRL_LEN,), f8),
        carve(buf, h[H_ON_MS], (n,), np.uint16),
    )
