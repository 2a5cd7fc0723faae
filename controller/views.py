"""Array views made inside numba without counting references: for the controller's hot path.

Every view numba makes of an array (``a[i]``, ``a[i:j]``, a reshape) holds a reference to the
array's memory: an atomic increment when it is made and a decrement when it dies. A control
step makes dozens (a row of ``thr`` and ``mod`` per thruster, slices of ``ctrl`` and
``params``), and measured here that counting cost about a fifth of the step. A view with no
memory reference (what ``numba.carray`` makes of a raw pointer) costs nothing to make or to
drop, and neither do the views made from it. It is safe exactly while something else keeps
the memory alive: inside a kernel, for views of the kernel's own arguments that do not outlive
the call (the caller holds the arrays for the whole call). Never return or store one.

- :func:`borrowed` — such a view of a whole array.
- :func:`carve` — such a view of a run of a float64 buffer, as another shape and dtype
  (:mod:`thruster_hil.controller.packing` lays the controller's arrays out in one buffer).

Both are plain numpy views when called from Python, so the kernels that use them still run as
plain Python (benchmarks/controller_step.py's baseline).
"""

from __future__ import annotations

import numpy as np
from numba.core import cgutils, types
from numba.extending import intrinsic, overload
from numba.np.arrayobj import make_array, populate_array


def borrowed(a: np.ndarray) -> np.ndarray:
    """``a`` itself, viewed without a reference to its memory inside numba (see the module
    docstring for when that is safe)."""
    return a


@intrinsic
def _borrowed(typingctx, a):
    if not isinstance(a, types.Array):
        return None

    def codegen(context, builder, sig, args):
        src = make_array(sig.args[0])(context, builder, args[0])
        out = make_array(sig.return_type)(context, builder)
        populate_array(
            out,
            data=src.data,
            shape=src.shape,
            strides=src.strides,
            itemsize=src.itemsize,
            meminfo=None,
        )
        return out._getvalue()

    return a(a), codegen


@overload(borrowed, jit_options={"cache": True})
def _borrowed_numba(a):
    return lambda a: _borrowed(a)


def carve(buf: np.ndarray, start: int, shape: tuple, dtype) -> np.ndarray:
    """The C-contiguous array of ``shape`` and ``dtype`` whose data begins at float64 slot
    ``start`` of ``buf`` (1-D float64), as a view.

    Inside numba this is :func:`_carve`, which only fills in the view's pointer, shape and
    strides, with no memory reference. numba's own ``buf[a:b].reshape(...).view(...)`` checks
    the bounds, the new shape (through a C helper) and the dtype, and counts references for
    every intermediate array: measured here, the twelve views of a step cost ~0.25 us that way,
    more than passing one array in from Python. The caller guarantees the view lies within
    ``buf`` and that ``buf`` outlives it."""
    size = int(np.prod(shape))
    slots = -(-size * np.dtype(dtype).itemsize // 8)
    return buf[start : start + slots].view(dtype)[:size].reshape(shape)


@intrinsic
def _carve(typingctx, buf, start, shape, dtype):
    """The numba side of :func:`carve`: a view without a reference to ``buf``'s memory (as
    ``numba.carray`` makes), so nothing is counted."""
    if not (
        isinstance(buf, types.Array)
        and buf.ndim == 1
        and buf.layout == "C"
        and buf.dtype == types.float64
        and isinstance(start, types.Integer)
        and isinstance(shape, types.UniTuple)
        and isinstance(shape.dtype, types.Integer)
        and 1 <= shape.count <= 2
        and isinstance(dtype, types.NumberClass)
    ):
        return None
    view = types.Array(dtype.instance_type, shape.count, "C")

    def codegen(context, builder, sig, args):
        src = make_array(sig.args[0])(context, builder, args[0])
        out = make_array(sig.return_type)(context, builder)
        first = context.cast(builder, args[1], sig.args[1], types.intp)
        ll_item = context.get_data_type(sig.return_type.dtype)
        data = builder.bitcast(builder.gep(src.data, [first]), ll_item.as_pointer())
        dims = [
            context.cast(builder, d, sig.args[2].dtype, types.intp)
            for d in cgutils.unpack_tuple(builder, args[2])
        ]
        itemsize = context.get_constant(types.intp, context.get_abi_sizeof(ll_item))
        strides = [itemsize]
        for d in reversed(dims[1:]):
            strides.insert(0, builder.mul(strides[0], d))
        populate_array(out, data=data, shape=dims, strides=strides, itemsize=itemsize, meminfo=None)
        return out._getvalue()

    return view(buf, start, shape, dtype), codegen


@overload(carve, jit_options={"cache": True})
def _carve_numba(buf, start, shape, dtype):
    return lambda buf, start, shape, dtype: _carve(buf, start, shape, dtype)
