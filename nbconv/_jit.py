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
- Threads: every kernel is serial (`parallel=False`: Numba's parfor passes and the per-loop gufunc
  they generate about double a kernel's compile time) and releases the GIL. A kernel that can be split
  takes a schedule of its independent items and a thread number as its last two arguments (sched, me) and loops
  over `chunk_items(sched, me)`; `call` runs it on the calling thread and nbconv's own worker threads (`_workers`:
  NUMBA_NUM_THREADS - 1 threads that poll for work for a while after each task). The threads claim contiguous
  chunks of the items with atomic counters, inside the kernel (no return to Python, and no GIL, between chunks):
  first one per thread, its own (together STATIC_SHARE of the items: a layer called again finds its data in the
  caches of the cores that used it last time), then chunks taken in turn, largest first and shrinking towards the
  end (guided scheduling), so that a core slowed by other work takes fewer and the threads finish together; an own
  chunk whose thread has not started when the others run out of work is taken by one of them. Every item's result
  is computed by one thread in a fixed order, so the bits do not depend on the thread count or the chunking. No
  Numba threading layer is ever started, so nbconv is fork-safe under any layer (a forked child makes its own
  workers) and needs no TBB. The thread count of a call: numba.get_num_threads() of the calling thread where the
  program has started Numba's threads (it may have called numba.set_num_threads), else NUMBA_NUM_THREADS.
- A hand-off to the workers costs microseconds when they are polling, tens of them when they sleep (milliseconds
  on an oversubscribed machine), so a call whose `work` (multiply-adds or elements touched) is below SERIAL_BELOW
  runs on the calling thread only.
- With NUMBA_DISABLE_JIT=1 (Numba's debugging switch) the kernels run as plain Python: correct, and
  orders of magnitude slower.
"""
import hashlib
import os
import threading
import warnings

import numba
import numba.np.ufunc.parallel as numba_parallel
import numpy as np

from . import _workers
from ._workers import atomic_add, atomic_load

FASTMATH = frozenset({"contract"})
SERIAL_BELOW = 1 << 18
CHUNKS_PER_THREAD = 16  # a split call's smallest chunks hold 1 / (threads x this) of its items (at least one)
# This share of a split call's items is cut into one chunk per thread, which that thread takes first, so that a
# layer called again runs mostly on the cores whose caches hold its data from the last call.
STATIC_SHARE = 0.75
# Reductions split their rows over this many fixed partial-sum slots and add the slots in order, so
# every result is bitwise identical for any number of threads.
SLOTS = 8

_compile_lock = threading.Lock()
_compiled = set()
_kernels = []  # every dispatcher made by `kernel` (to discard their caches together)
_warned_no_cache = False


def _reinit_after_fork():
    """In a forked child: a fresh lock (a parent thread may have held it at the fork; `_workers` does the same for
    its team)."""
    global _compile_lock
    _compile_lock = threading.Lock()


os.register_at_fork(after_in_child=_reinit_after_fork)


_NO_CACHE_WARNING = ("nbconv: no writable Numba cache location ({error}); kernels compile in memory in every "
                     "process. Set NUMBA_CACHE_DIR to a writable directory to cache them.")


# Numba reuses a cached kernel while the kernel's own source file is unchanged; these modules' code is compiled into
# kernels of other files (register tiles, chunk generators, atomics), so their stamps join every kernel's.
_SHARED_SOURCES = ("_micro.py", "_jit.py", "_workers.py", "_padding.py")


def _shared_stamp():
    """SHA-256 of the concatenated contents of _SHARED_SOURCES, as numba hashes a kernel's own file (None where the
    package is not in files)."""
    here = os.path.dirname(os.path.abspath(__file__))
    digest = hashlib.sha256()
    try:
        for name in _SHARED_SOURCES:
            with open(os.path.join(here, name), "rb") as source:
                digest.update(source.read())
    except OSError:
        return None
    return digest.digest()


_SHARED_STAMP = _shared_stamp()


def kernel(inline="never"):
    """Decorator for nbconv's CPU kernels (nothing is compiled until the first call). A cached kernel is reused
    only while its own file and _SHARED_SOURCES are unchanged."""
    options = dict(fastmath=set(FASTMATH), nogil=True, error_model="numpy", boundscheck=False, inline=inline)

    def decorate(fn):
        try:
            dispatcher = numba.njit(cache=True, **options)(fn)
            cache_file = getattr(getattr(dispatcher, "_cache", None), "_cache_file", None)
            if cache_file is not None:  # the stamp numba writes into the cache index and compares on loading it
                cache_file._source_stamp = (cache_file._source_stamp, _SHARED_STAMP)
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


POLLS = tuple(kernel()(f) for f in (_workers.poll_task, _workers.poll_done, _workers.finish))  # the team's, compiled


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


# The array flags numba's type of an array depends on: C_CONTIGUOUS, F_CONTIGUOUS, ALIGNED, WRITEABLE.
_TYPED_FLAGS = 0x1 | 0x2 | 0x100 | 0x400


def numba_threads_started():
    """Whether the program has started Numba's threading layer (asking Numba anything about its threads
    would start it)."""
    return getattr(numba_parallel, "_is_initialized", False)


def threads():
    """The number of threads a call may use (see the module docstring)."""
    return numba.get_num_threads() if numba_threads_started() else numba.config.NUMBA_NUM_THREADS


def _static_chunks(items, n_threads):
    """How many chunks _chunk_bounds starts with that are each thread's own (n_threads, or 0 for too few items)."""
    return n_threads if items * STATIC_SHARE // n_threads >= max(1, items // (n_threads * CHUNKS_PER_THREAD)) else 0


def _chunk_bounds(items, n_threads):
    """Bounds of the chunks of range(items), in the order they are taken: first one chunk per thread, together
    STATIC_SHARE of the items, then each a 1 / (2 n_threads) share of the items left, down to 1 / (n_threads *
    CHUNKS_PER_THREAD) of them (guided scheduling: a few chunks, and small ones at the end, where a thread that
    finished early would otherwise wait for a large one)."""
    smallest = max(1, items // (n_threads * CHUNKS_PER_THREAD))
    bounds = [0]
    for _ in range(_static_chunks(items, n_threads)):
        bounds.append(bounds[-1] + int(items * STATIC_SHARE) // n_threads)
    while bounds[-1] < items:
        bounds.append(min(items, bounds[-1] + max(smallest, (items - bounds[-1]) // (2 * n_threads))))
    return bounds


# A schedule: the int64 array from which the threads of one call claim its chunks of items.
_N_CHUNKS, _N_OWN, _NEXT, _STOP, _CLAIMS = range(5)  # then one claim per own chunk, then the chunk bounds
_TYPING_SCHEDULE = np.zeros(1, dtype=np.int64)  # of every schedule's type: what compiling a kernel needs


_FRESH_SCHEDULES = {}  # (items, n_threads) -> an unused schedule, copied for each call (at most 256 of them)


def schedule(items, n_threads):
    """The schedule of range(items) among n_threads threads: the chunks of _chunk_bounds, the first _static_chunks of
    them each thread's own (one chunk for a single thread). A new array: the threads' claims change it."""
    fresh = _FRESH_SCHEDULES.get((items, n_threads))
    if fresh is None:
        bounds = _chunk_bounds(items, n_threads) if n_threads > 1 else [0, items]
        n_own = _static_chunks(items, n_threads) if n_threads > 1 else 0
        fresh = np.zeros(_CLAIMS + n_own + len(bounds), dtype=np.int64)
        fresh[_N_CHUNKS], fresh[_N_OWN], fresh[_NEXT] = len(bounds) - 1, n_own, n_own
        fresh[_CLAIMS + n_own:] = bounds
        if len(_FRESH_SCHEDULES) >= 256:
            _FRESH_SCHEDULES.clear()
        _FRESH_SCHEDULES[items, n_threads] = fresh
    return fresh.copy()


# The two generators are compiled into the kernels that loop over them, and not cached on their own: Numba does not
# register a generator loaded from its cache for the compilation of a new caller (KeyError while lowering it).
@numba.njit(nogil=True)
def chunks(sched, me):
    """(lo, hi) of each chunk of `sched` that thread `me` claims, in turn: its own chunk, then the shared chunks one
    at a time as the threads ask for them, then the own chunks of threads that have not started; none once the
    schedule is stopped. Every chunk goes to exactly one thread."""
    n_chunks, n_own = sched[_N_CHUNKS], sched[_N_OWN]
    bounds = _CLAIMS + n_own
    if me < n_own and atomic_load(sched, _STOP) == 0 and atomic_add(sched, _CLAIMS + me, 1) == 0:
        yield sched[bounds + me], sched[bounds + me + 1]
    while atomic_load(sched, _STOP) == 0:
        i = atomic_add(sched, _NEXT, 1)
        if i >= n_chunks:
            break
        yield sched[bounds + i], sched[bounds + i + 1]
    for i in range(n_own):
        if atomic_load(sched, _STOP) == 0 and atomic_add(sched, _CLAIMS + i, 1) == 0:
            yield sched[bounds + i], sched[bounds + i + 1]


@numba.njit(nogil=True)
def chunk_items(sched, me):
    """The items of the chunks of `sched` that thread `me` claims (`chunks`): what a kernel's item loop runs over."""
    for lo, hi in chunks(sched, me):
        for item in range(lo, hi):
            yield item


def _split(dispatcher, args, items, n_threads):
    """dispatcher(*args, sched, me) on the calling thread and n_threads - 1 workers, sharing the items of one
    schedule (`_split_jobs` with one job)."""
    _split_jobs([(dispatcher, args, items)], n_threads)


def _split_jobs(jobs, n_threads):
    """dispatcher(*args, sched, me) for every (dispatcher, args, items) of `jobs`, on the calling thread (me = 0) and
    n_threads - 1 workers of nbconv's team (`_workers`), each job's items in a schedule of its own from which every
    thread's kernel claims chunks (`chunk_items`) until none is left, then goes on to the next job: one hand-off
    for them all, and no return to Python between chunks. It returns (or raises) only once no kernel runs any more:
    an exception in one stops the schedules (a thread claims at most the chunk it was taking) and is raised (the
    calling thread's first); a KeyboardInterrupt is raised once the kernels have returned. While another thread's
    call uses the team, the calling thread does every chunk."""
    scheds = [schedule(items, n_threads) for _, _, items in jobs]
    publish = [lambda: None]

    def stop():
        for sched in scheds:
            sched[_STOP] = 1

    def share(me):
        try:
            for (dispatcher, args, _), sched in zip(jobs, scheds):
                if me == 0:
                    publish[0]()  # the workers start (once) as the caller's first kernel releases the GIL
                dispatcher(*args, sched, me)
        except BaseException:
            stop()
            raise

    crew = None
    try:
        crew = _workers.team(_compiled_polls)
        if crew is None:  # another thread's call is using the workers: this one runs every chunk alone
            errors = []
            try:
                share(0)
            except BaseException as error:
                errors.append(error)
        else:
            publish[0] = crew.publish
            errors = crew.run(share, stop, n_threads)
    finally:
        if crew is not None:
            _workers.release(crew)
    if errors:
        raise errors[0]


def _compiled_polls():
    """POLLS, compiled (or loaded from the cache, which is discarded if it fails to load) through `_compile`: once,
    when the team is made."""
    start = np.zeros(2, dtype=np.int64)
    for dispatcher, args in zip(POLLS, ((start, 0, 0, 1, 0), (start, 0, 1, 1), (start, 1, 0, start, start, 1, 0))):
        _ensure_compiled(dispatcher, args)
    return POLLS


def _ensure_compiled(dispatcher, full):
    # what numba's types of the arguments depend on (cheaper to compute than numba.typeof, ~5 us per array)
    key = (dispatcher, *[(a.dtype.num, a.ndim, a.flags.num & _TYPED_FLAGS) if isinstance(a, np.ndarray) else type(a)
                         for a in full])
    if key not in _compiled:
        with _compile_lock:
            _compile(dispatcher, full)
            _compiled.add(key)


def call(dispatcher, *args, items=None, work=None):
    """dispatcher(*args), compiling (or loading from cache) the first time; with `items`, the kernel's last two
    arguments sched, me are added: the kernel runs over range(items) (`chunk_items`) on the calling thread when
    `work` is below SERIAL_BELOW (or one thread is allowed), else shared among threads (`_split`)."""
    full = args if items is None else (*args, schedule(items, 1), 0)
    if not isinstance(dispatcher, numba.core.dispatcher.Dispatcher):  # NUMBA_DISABLE_JIT=1: plain Python
        return dispatcher(*full)
    _ensure_compiled(dispatcher, full)
    n_threads = threads() if items is not None and items > 1 and (work is None or work >= SERIAL_BELOW) else 1
    if n_threads == 1:
        return dispatcher(*full)
    return _split(dispatcher, args, items, n_threads)


def call_all(jobs, work):
    """call(dispatcher, *args, items=items) for every (dispatcher, args, items) of `jobs` (independent: no two write
    the same memory), their items shared among threads together (`_split_jobs`: one hand-off for them all) unless
    their total `work` is below SERIAL_BELOW."""
    jobs = [(dispatcher, args, items) for dispatcher, args, items in jobs if items > 0]
    for dispatcher, args, items in jobs:
        if isinstance(dispatcher, numba.core.dispatcher.Dispatcher):
            _ensure_compiled(dispatcher, (*args, _TYPING_SCHEDULE, 0))
    n_threads = threads() if jobs and work >= SERIAL_BELOW and sum(items for _, _, items in jobs) > 1 else 1
    if n_threads == 1 or not isinstance(jobs[0][0], numba.core.dispatcher.Dispatcher):
        for dispatcher, args, items in jobs:
            dispatcher(*args, schedule(items, 1), 0)
        return
    _split_jobs(jobs, n_threads)
