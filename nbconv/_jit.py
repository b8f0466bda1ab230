"""Compilation policy for every CPU kernel, in one place.

- `cache=True`: compiled code is written beside the module and reused by later processes.
- fastmath is limited to `contract` (fused multiply-add). `reassoc` would let LLVM vectorize the
  reduction instead of the register tile, and `nnan`/`ninf` would break NaN/Inf propagation.
- LLVM's SLP vectorizer packs the register tiles of `_micro.py` into vector registers. Numba ships
  with it off (numba issue #8705) and reads `numba.config.SLP_VECTORIZE` whenever it optimizes a
  module, so `call` turns it on only while one of our kernels compiles, under a lock, and restores
  the user's setting afterwards.
"""
import threading

import numba

FASTMATH = frozenset({"contract"})

_compile_lock = threading.Lock()
_compiled = set()


def kernel(parallel=False, inline="never"):
    """Decorator for nbconv's CPU kernels (nothing is compiled until the first call)."""
    return numba.njit(cache=True, parallel=parallel, fastmath=set(FASTMATH), nogil=True,
                      error_model="numpy", boundscheck=False, inline=inline)


def call(dispatcher, *args):
    """dispatcher(*args), compiling (or loading from cache) with SLP vectorization on the first time."""
    key = (dispatcher, tuple(numba.typeof(a) for a in args))
    if key in _compiled:
        return dispatcher(*args)
    with _compile_lock:
        saved = numba.config.SLP_VECTORIZE
        numba.config.SLP_VECTORIZE = 1
        try:
            dispatcher.compile(tuple(numba.typeof(a) for a in args))
        finally:
            numba.config.SLP_VECTORIZE = saved
        _compiled.add(key)
    return dispatcher(*args)
