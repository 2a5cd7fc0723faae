"""The one place that owns numba's jit options for every kernel in thruster-hil.

Kernels are compiled with ``cache=True`` so a second process loads machine code from
``__pycache__`` instead of recompiling, ``nogil=True`` so a reader thread keeps running while a
kernel does, and without fastmath so results are bit-for-bit reproducible across runs.
:func:`parallel_kernel` adds ``parallel=True`` for the few kernels that spread independent work
(Monte-Carlo cases) over numba's threads with ``prange``; each iteration must be independent of
the others so the result never depends on the thread count.
"""

from numba import njit

JIT_OPTIONS = {"cache": True, "nogil": True, "fastmath": False, "error_model": "numpy"}


def kernel(fn):
    """Compile ``fn`` as a thruster-hil numba kernel (pure function on arrays and floats)."""
    return njit(**JIT_OPTIONS)(fn)


def parallel_kernel(fn):
    """Compile ``fn`` as a kernel whose ``prange`` loops run on numba's thread pool."""
    return njit(parallel=True, **JIT_OPTIONS)(fn)


def inline_kernel(fn):
    """:func:`kernel`, inlined into its callers in numba's IR (``inline="always"``). For the small
    kernels the integrators call several times per step (accelerations, RK4 stages, the density
    lookup): as separate functions every call passed each array argument as its whole structure
    on the stack and every tuple result through memory. Inlining moves no floating-point
    operation (no fastmath), so results are unchanged bit for bit."""
    return njit(inline="always", **JIT_OPTIONS)(fn)
