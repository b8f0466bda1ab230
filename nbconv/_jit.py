"""Compilation policy for every CPU kernel, in one place.

- `cache=True`: compiled code is written beside the module and reused by later processes.
- fastmath is limited to `contract` (fused multiply-add). `reassoc` would let LLVM vectorize the
  reduction instead of the register tile, and `nnan`/`ninf` would break NaN/Inf propagation.
- LLVM's SLP vectorizer packs the register tiles of `_micro.py` into vector registers. Numba ships
  with it off (numba issue #8705) and reads `numba.config.SLP_VECTORIZE` whenever it optimizes a
  module, so `call` turns it on only while one of our kernels compiles, under a lock, and restores
  the user's setting afterwards.
- Numba's `workqueue` threading layer (chosen when neither TBB nor OpenMP is available, or forced with
  NUMBA_THREADING_LAYER) aborts the process when two threads run parallel kernels at once, so under
  it `call` runs one kernel at a time. TBB and OpenMP run concurrent calls unguarded.
- A parallel launch costs tens of microseconds (milliseconds on an oversubscribed machine), so a
  call whose `work` (multiply-adds or elements touched) is below SERIAL_BELOW runs on the calling
  thread only. Every kernel's result is independent of the thread count, so this changes no bits.
"""
import threading

import numba
import numpy as np

FASTMATH = frozenset({"contract"})
SERIAL_BELOW = 1 << 18
# Reductions split their rows over this many fixed partial-sum slots and add the slots in order, so
# every result is bitwise identical for any number of threads.
SLOTS = 8

_compile_lock = threading.Lock()
_compiled = set()
_workqueue_lock = threading.Lock()
_layer = None  # numba's threading layer, known once a parallel kernel has run


def _serialized():
    """True while concurrent kernel calls could reach the workqueue layer (and before any layer is chosen)."""
    global _layer
    if _layer is None:
        try:
            _layer = numba.threading_layer()
        except ValueError:  # no parallel kernel has run yet: the layer is not chosen
            return True
    return _layer == "workqueue"


def kernel(parallel=False, inline="never"):
    """Decorator for nbconv's CPU kernels (nothing is compiled until the first call)."""
    return numba.njit(cache=True, parallel=parallel, fastmath=set(FASTMATH), nogil=True,
                      error_model="numpy", boundscheck=False, inline=inline)


def _type_key(a):
    """What numba's type of `a` depends on, cheaper to compute than numba.typeof (~20 us per array)."""
    if isinstance(a, np.ndarray):
        flags = a.flags
        return a.dtype.num, a.ndim, flags.c_contiguous, flags.f_contiguous, flags.writeable, flags.aligned
    return type(a)


def call(dispatcher, *args, work=None):
    """dispatcher(*args), compiling (or loading from cache) with SLP vectorization on the first time,
    on one thread when `work` is below SERIAL_BELOW."""
    key = (dispatcher, tuple(_type_key(a) for a in args))
    if key not in _compiled:
        with _compile_lock:
            saved = numba.config.SLP_VECTORIZE
            numba.config.SLP_VECTORIZE = 1
            try:
                dispatcher.compile(tuple(numba.typeof(a) for a in args))
            finally:
                numba.config.SLP_VECTORIZE = saved
            _compiled.add(key)
    threads = numba.get_num_threads()
    serial = work is not None and work < SERIAL_BELOW and threads > 1
    if serial:
        numba.set_num_threads(1)
    try:
        if _serialized():
            with _workqueue_lock:
                return dispatcher(*args)
        return dispatcher(*args)
    finally:
        if serial:
            numba.set_num_threads(threads)
