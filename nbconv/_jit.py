"""Compilation policy for every CPU kernel, in one place.

- `cache=True`: compiled code is written to Numba's cache (``__pycache__`` beside the modules, or
  NUMBA_CACHE_DIR) and reused by later processes. Where no cache location is writable (read-only
  install, no writable home), kernels compile in memory and one warning says how to enable the
  cache. A cache that fails to load (truncated or corrupted files) is discarded with a warning and
  the kernels recompile.
- fastmath is limited to `contract` (fused multiply-add). `reassoc` would let LLVM vectorize the
  reduction instead of the register tile, and `nnan`/`ninf` would break NaN/Inf propagation.
- The register tiles (`_micro.py`) are written as LLVM vector code, so no kernel depends on LLVM's SLP
  vectorizer, which Numba ships switched off (numba issue #8705); the user's setting is left alone.
- Threading layers: Numba prefers TBB (installed with nbconv where wheels exist), which is thread-
  and fork-safe. Numba opens the TBB runtime by file name only, which finds the copy the tbb wheel puts
  in ``<prefix>/lib`` only when the Python executable's run path names that directory: not in a virtual
  environment or a ``pip install --user``. ``import nbconv`` therefore loads that copy by its full path
  (`nbconv._tbb`), before Numba picks its layer (at its first parallel launch or thread-count query), so
  Numba finds it already loaded. GNU OpenMP aborts a forked child that runs a parallel kernel after its
  parent did; the `workqueue` layer aborts the process when two threads run parallel kernels at once, so
  under it `call` runs one kernel at a time. nbconv's locks are re-created in a forked child, so a fork
  while another thread holds one cannot deadlock the child.
- A parallel launch costs tens of microseconds (milliseconds on an oversubscribed machine), so a
  call whose `work` (multiply-adds or elements touched) is below SERIAL_BELOW runs on the calling
  thread only. Every kernel's result is independent of the thread count, so this changes no bits.
- With NUMBA_DISABLE_JIT=1 (Numba's debugging switch) the kernels run as plain Python: correct, and
  orders of magnitude slower.
"""
import os
import threading
import warnings

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
_kernels = []  # every dispatcher made by `kernel` (to discard their caches together)
_warned_no_cache = False


def _reinit_after_fork():
    """In a forked child: fresh locks (a parent thread may have held one at the fork)."""
    global _compile_lock, _workqueue_lock
    _compile_lock = threading.Lock()
    _workqueue_lock = threading.Lock()


os.register_at_fork(after_in_child=_reinit_after_fork)


def _serialized():
    """True while concurrent kernel calls could reach the workqueue layer (and before any layer is chosen)."""
    global _layer
    if _layer is None:
        try:
            _layer = numba.threading_layer()
        except ValueError:  # no parallel kernel has run yet: the layer is not chosen
            return True
    return _layer == "workqueue"


_NO_CACHE_WARNING = ("nbconv: no writable Numba cache location ({error}); kernels compile in memory in every "
                     "process. Set NUMBA_CACHE_DIR to a writable directory to cache them.")


def kernel(parallel=False, inline="never"):
    """Decorator for nbconv's CPU kernels (nothing is compiled until the first call)."""
    options = dict(parallel=parallel, fastmath=set(FASTMATH), nogil=True, error_model="numpy",
                   boundscheck=False, inline=inline)

    def decorate(fn):
        try:
            dispatcher = numba.njit(cache=True, **options)(fn)
        except RuntimeError as error:  # numba: "cannot cache function ...: no locator available"
            if "no locator available" not in str(error):
                raise
            global _warned_no_cache
            if not _warned_no_cache:
                _warned_no_cache = True
                warnings.warn(_NO_CACHE_WARNING.format(error=error), RuntimeWarning, stacklevel=3)
            dispatcher = numba.njit(cache=False, **options)(fn)
        _kernels.append(dispatcher)
        return dispatcher

    return decorate


def cache_dirs():
    """The directories holding nbconv's compiled kernels (empty when nothing can be cached)."""
    dirs = set()
    for dispatcher in _kernels:
        locator = getattr(getattr(getattr(dispatcher, "_cache", None), "_impl", None), "locator", None)
        if locator is not None:
            dirs.add(locator.get_cache_path())
    return sorted(dirs)


def _discard_caches():
    """Empty the cache index of every nbconv kernel, so that the next compilation starts afresh."""
    for dispatcher in _kernels:
        cache = getattr(dispatcher, "_cache", None)
        if cache is not None:
            try:
                cache.flush()
            except OSError:
                pass


def _foreign_overloads(dispatcher, signature):
    """Whether `dispatcher` lacks `signature` or holds another function's code after compiling it (a cache
    index naming the wrong object file: another function's, or another overload's of the same one)."""
    own = (dispatcher.py_func.__module__, dispatcher.py_func.__qualname__)
    return signature not in dispatcher.overloads or any(
        (cres.fndesc.modname, cres.fndesc.qualname) != own for cres in dispatcher.overloads.values())


def _compile(dispatcher, args):
    signature = tuple(numba.typeof(a) for a in args)
    try:
        dispatcher.compile(signature)
        if _foreign_overloads(dispatcher, signature):
            raise RuntimeError(f"the cache entry of {dispatcher.py_func.__qualname__} holds another function's code")
    except Exception as error:
        if not cache_dirs():
            raise
        # A cache entry that fails to load (truncated index, flipped bytes, an index naming the wrong
        # object file) raises from pickle, LLVM or Numba: discard the caches and compile afresh once.
        warnings.warn(f"nbconv: discarding its Numba cache in {', '.join(cache_dirs())} after it failed to load "
                      f"({type(error).__name__}: {error}); recompiling the kernels", RuntimeWarning, stacklevel=4)
        _discard_caches()
        if _foreign_overloads(dispatcher, signature):  # drop what was loaded (as numba's own recompile() does)
            dispatcher._make_finalizer()()
            dispatcher._reset_overloads()
        dispatcher.compile(signature)


def _type_key(a):
    """What numba's type of `a` depends on, cheaper to compute than numba.typeof (~20 us per array)."""
    if isinstance(a, np.ndarray):
        flags = a.flags
        return a.dtype.num, a.ndim, flags.c_contiguous, flags.f_contiguous, flags.writeable, flags.aligned
    return type(a)


def call(dispatcher, *args, work=None):
    """dispatcher(*args), compiling (or loading from cache) the first time, on one thread when `work` is
    below SERIAL_BELOW."""
    if not isinstance(dispatcher, numba.core.dispatcher.Dispatcher):  # NUMBA_DISABLE_JIT=1: plain Python
        return dispatcher(*args)
    key = (dispatcher, tuple(_type_key(a) for a in args))
    if key not in _compiled:
        with _compile_lock:
            _compile(dispatcher, args)
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
