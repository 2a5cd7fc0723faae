"""The one place that owns numba's jit options for every kernel in thruster-hil.

Kernels are compiled with ``cache=True`` so a second process loads machine code from
``__pycache__`` instead of recompiling, ``nogil=True`` so a reader thread keeps running while a
kernel does (except :func:`host_kernel`'s, too short for the hand-off to pay), and without
fastmath so results are bit-for-bit reproducible across runs. :func:`parallel_kernel` adds
``parallel=True`` for the few kernels that spread independent work (Monte-Carlo cases) over
numba's threads with ``prange``; each iteration must be independent of the others so the result
never depends on the thread count.
"""

from numba import njit

JIT_OPTIONS = {"cache": True, "nogil": True, "fastmath": False, "error_model": "numpy"}


def kernel(fn):
    """Compile ``fn`` as a thruster-hil numba kernel (pure function on arrays and floats)."""
    return njit(**JIT_OPTIONS)(fn)


def host_kernel(fn):
    """:func:`kernel` for an entry point a Python host calls once per cycle for a couple of
    microseconds of work (``Controller.step``): it keeps the GIL. Releasing and taking it back
    around every call costs ~30 ns (measured, benchmarks/controller_step.py's machine), and a
    reader thread waiting for it loses at most the call itself. Kernels it calls run as they
    would anyway: the GIL is only handed off at the Python boundary."""
    return njit(**{**JIT_OPTIONS, "nogil": False})(fn)


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
