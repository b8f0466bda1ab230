"""nbconv's worker threads: a team that runs a task beside the calling thread, handing it over by polling.

Waking a sleeping thread is slow where an idle CPU halts: on a 2-vCPU KVM guest a ThreadPoolExecutor hand-off
started the worker 35-50 us after the submit, and the caller waiting for the worker's last chunk paid a wake-up
again, together as much as a small layer's whole kernel. So, as OpenMP runtimes do, a worker that has finished a
task keeps polling for the next one for SPIN_SECONDS (in compiled code, without the GIL) before it sleeps on a
condition, and the caller polls for the workers' completion the same way. A worker that sees a new task waits
LINGER_SECONDS more before it takes the GIL, so that it finds the GIL free (the caller publishes the task right
before its own first kernel, which releases the GIL) instead of sleeping until then: measured from the caller's
first kernel to the worker's, 11-13 us at the median with a 12 us linger, 37-39 us with 4 us (a sleep on the GIL).

A call on n threads starts workers 1..n-1 only; each posts its completion with an atomic store, ordered after its
results, and goes on polling for the next task in the same compiled call (`finish`): a worker that returned to
Python in between held the GIL just as the caller, seeing the post, wanted it back, and the caller slept on the GIL
(a call whose worker finished last returned 63 us after that worker's kernel, 17 us once it stays in compiled code). A
caller that has stopped polling and sleeps sets a flag first, which makes a finishing worker return to wake it. A
KeyboardInterrupt in the caller stops the task's schedules and is raised once the workers are done. One call at a
time uses the team (`Team.run`); another thread calling meanwhile gets None from `team()` and does its work alone.
Workers are daemon threads; a forked child makes its own team.
"""
import os
import threading
import time

import numba
import numpy as np
from numba import types
from numba.extending import intrinsic, overload, register_jitable

SPIN_SECONDS = 3e-4  # a worker polls this long for the next task after each task, then sleeps
LINGER_SECONDS = 12e-6  # a worker that sees a new task waits this long before it takes the GIL (see below)


_python_atomics = threading.Lock()  # the plain bodies' atomicity (NUMBA_DISABLE_JIT=1, Python stand-ins)


def atomic_load(flags, i):
    """flags[i] (flags a contiguous integer array, 0 <= i < len(flags)), read from memory on every call (compiled: an
    acquire load the compiler may not hoist out of a loop)."""
    return flags[i]


def atomic_add(flags, i, value):
    """flags[i] += value atomically (flags and i as for atomic_load); returns the value before (compiled: one
    sequentially consistent read-modify-write)."""
    with _python_atomics:
        before = flags[i]
        flags[i] = before + value
    return before


@intrinsic
def _load_acquire(typingctx, flags, i):
    if not (isinstance(flags, types.Array) and isinstance(flags.dtype, types.Integer)):
        return None  # a typing error naming the arguments

    def codegen(context, builder, signature, args):
        array = context.make_array(signature.args[0])(context, builder, args[0])
        return builder.load_atomic(builder.gep(array.data, [args[1]]), "acquire", flags.dtype.bitwidth // 8)

    return flags.dtype(flags, i), codegen


@intrinsic
def _fetch_add(typingctx, flags, i, value):
    if not (isinstance(flags, types.Array) and isinstance(flags.dtype, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        array = context.make_array(signature.args[0])(context, builder, args[0])
        added = context.cast(builder, args[2], signature.args[2], flags.dtype)
        return builder.atomic_rmw("add", builder.gep(array.data, [args[1]]), added, "seq_cst")

    return flags.dtype(flags, i, value), codegen


@overload(atomic_load)
def _atomic_load_compiled(flags, i):
    return lambda flags, i: _load_acquire(flags, i)


@overload(atomic_add)
def _atomic_add_compiled(flags, i, value):
    return lambda flags, i, value: _fetch_add(flags, i, value)


@register_jitable
def poll_task(start, me, seen, polls, linger):
    """start[me] once it differs from `seen` (after `linger` more polls), or `seen` after `polls` polls (a kernel:
    `_jit` compiles it)."""
    for _ in range(polls):
        now = atomic_load(start, me)
        if now != seen:
            for _ in range(linger):
                atomic_load(start, me)
            return now
    return seen


def poll_done(done, generation, n, polls):
    """Whether done[1:n] all equal `generation` (those workers finished it) within `polls` polls (a kernel: `_jit`
    compiles it)."""
    for _ in range(polls):
        finished = True
        for me in range(1, n):
            if atomic_load(done, me) != generation:
                finished = False
        if finished:
            return True
    return False


@register_jitable
def post(flags, i, value):
    """flags[i] = value, an atomic store ordered after every earlier write of the thread: a worker's results are
    visible to the caller once it sees the store."""
    atomic_add(flags, i, value - atomic_load(flags, i))


def finish(done, me, generation, waiting, start, polls, linger):
    """post(done, me, generation) (worker me finished that task), then -1 if the caller sleeps (waiting[0] != 0: it
    needs a notify), else poll_task(start, me, generation, polls, linger) (a kernel: `_jit` compiles it): the worker
    goes from posting to polling without taking the GIL, which the caller, seeing the post, is about to take (finding
    it held, the caller would sleep on it: 35-50 us to wake)."""
    post(done, me, generation)
    if atomic_load(waiting, 0) != 0:
        return -1
    return poll_task(start, me, generation, polls, linger)


class Team:
    """Up to `size` worker threads; `run(task, stop, n)` calls task(me) on the caller (me = 0) and on workers
    1..n-1. polls: the compiled `poll_task`, `poll_done` and `finish`."""

    def __init__(self, size, polls):
        self.poll_task, self.poll_done, self.finish = polls
        self.start = np.zeros(size + 1, dtype=np.int64)  # [me]: the last generation worker me is to run
        self.done = np.zeros(size + 1, dtype=np.int64)   # [me]: the last generation worker me has finished
        self.waiting = np.zeros(1, dtype=np.int64)  # [0]: 1 while the caller may sleep on `ready` for the workers
        self.ready = threading.Condition()
        self.busy = threading.Lock()  # held by the call using the team
        self.task = None
        self.errors = []
        self.generation = 0
        self.helpers = 1  # the threads of the current task, the caller included (set by run)
        self.started = 0  # worker threads running (fewer than size where starting one failed)
        self.polls, self.linger = _calibrate(self.poll_task, self.start)
        for me in range(1, size + 1):
            try:
                threading.Thread(target=self._serve, args=(me,), name=f"nbconv-worker-{me}", daemon=True).start()
            except RuntimeError:  # "can't start new thread": a smaller team
                break
            self.started = me

    def _serve(self, me):
        seen = 0
        generation = self.poll_task(self.start, me, seen, self.polls, self.linger)
        while True:
            if generation == seen:
                with self.ready:
                    while self.start[me] == seen:
                        self.ready.wait(1.0)  # woken by notify; the timeout only guards against a lost one
                    generation = int(self.start[me])
            seen = generation
            try:
                self.task(me)
            except BaseException as error:  # raised by the caller once the task is done
                self.errors.append(error)
            generation = self.finish(self.done, me, seen, self.waiting, self.start, self.polls, self.linger)
            if generation < 0:  # the caller sleeps: wake it, then poll for the next task
                with self.ready:
                    self.ready.notify_all()
                generation = self.poll_task(self.start, me, seen, self.polls, self.linger)

    def run(self, task, stop, n):
        """task(me) on the caller and workers 1..n-1 (at most the workers running); returns once none runs it, with
        the exceptions raised: the caller's, a KeyboardInterrupt received while waiting, then the workers'; stop()
        is called when there is one. The workers start when the caller calls `publish()` (right before its first
        kernel releases the GIL) or returns from task(0)."""
        self.task = task
        self.errors = []
        self.generation += 1
        self.helpers = min(n, self.started + 1)
        caught = interrupted = None
        try:
            task(0)
        except BaseException as error:
            caught = error
            stop()
        while True:
            try:
                if caught is not None or interrupted is not None:
                    stop()  # again, in case an interrupt cut the last call short
                self.publish()
                if self.poll_done(self.done, self.generation, self.helpers, self.polls):
                    break
                self.waiting[0] = 1  # a worker finishing from now on wakes this thread (`finish`)
                with self.ready:  # (taking the lock orders that store before the loads of done)
                    self.ready.notify_all()  # a worker asleep before publish() was cut short wakes now
                    if not (self.done[1:self.helpers] == self.generation).all():
                        self.ready.wait(0.05)
            except KeyboardInterrupt as error:
                interrupted = interrupted or error
        self.waiting[0] = 0
        self.task = None
        return [e for e in (caught, interrupted, *self.errors) if e is not None]

    def publish(self):
        """Start the workers on the task of `run` (once)."""
        if self.start[self.helpers - 1] != self.generation:
            with self.ready:
                self.start[1:self.helpers] = self.generation
                self.ready.notify_all()


def _calibrate(poll_task, start):
    """(polls in SPIN_SECONDS, polls in LINGER_SECONDS) of poll_task on this machine (fastest of a few tries)."""
    n = 20000
    best = min(_timed(lambda: poll_task(start, 0, start[0], n, 0)) for _ in range(5))
    per_second = n / max(best, 1e-9)
    return max(1, int(SPIN_SECONDS * per_second)), max(1, int(LINGER_SECONDS * per_second))


def _timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


_team = None
_team_lock = threading.Lock()


def team(compiled_polls):
    """The team (made at the first call, NUMBA_NUM_THREADS - 1 workers, with the polling functions that
    compiled_polls() returns), or None while another call uses it. The caller releases it with `release()`."""
    global _team
    with _team_lock:
        if _team is None:
            _team = Team(max(1, numba.config.NUMBA_NUM_THREADS - 1), compiled_polls())
    return _team if _team.busy.acquire(blocking=False) else None


def release(held):
    held.busy.release()


def _reinit_after_fork():
    """In a forked child: no team (the parent's threads do not exist in the child) and fresh locks."""
    global _team, _team_lock, _python_atomics
    _team = None
    _team_lock = threading.Lock()
    _python_atomics = threading.Lock()


os.register_at_fork(after_in_child=_reinit_after_fork)
