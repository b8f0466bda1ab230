"""The tape under threads: no_grad is per thread and re-entrant (also as a reused decorator), and
concurrent backward() calls into shared leaves lose nothing.

The concurrent sums use integer-valued float64 data, so every partial sum is exact and the
threaded result must equal the serial one bitwise, whatever order the threads accumulate in.
"""
import threading

import numba
import numpy as np
import pytest

import nbconv
from nbconv import Tensor, no_grad, tape
from nbconv.tape import is_grad_enabled


@pytest.fixture(autouse=True)
def one_thread():
    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    yield
    numba.set_num_threads(threads)


def run_threads(targets):
    errors = []

    def wrap(fn):
        def run():
            try:
                fn()
            except BaseException as error:  # reported in the main thread
                errors.append(error)
        return run

    threads = [threading.Thread(target=wrap(fn)) for fn in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    if errors:
        raise errors[0]


def test_reused_no_grad_decorator_is_re_entrant():
    """One decorator instance, entered recursively: each exit restores what its own entry found."""
    seen = []

    @no_grad()
    def countdown(n):
        seen.append(is_grad_enabled())
        if n:
            countdown(n - 1)
        seen.append(is_grad_enabled())

    countdown(3)
    assert seen == [False] * 8
    assert is_grad_enabled()
    x = Tensor(np.ones(2), requires_grad=True)
    assert (x * 2).requires_grad


def test_no_grad_is_per_thread():
    """Thread A turns recording off and waits; thread B records meanwhile, then both restore their own mode."""
    a_off, b_checked = threading.Event(), threading.Event()
    results = {}
    x = Tensor(np.ones(3), requires_grad=True)

    def a():
        with no_grad():
            a_off.set()
            assert b_checked.wait(10)
            results["a inside"] = ((x * 2).requires_grad, is_grad_enabled())
        results["a after"] = is_grad_enabled()

    def b():
        assert a_off.wait(10)
        results["b"] = ((x * 2).requires_grad, is_grad_enabled())
        b_checked.set()

    run_threads([a, b])
    assert results == {"a inside": (False, False), "a after": True, "b": (True, True)}


def test_one_no_grad_instance_shared_by_threads_restores_each_threads_mode():
    """A reused instance entered by two threads that started in different modes (thread A inside an
    outer no_grad, thread B recording): each exit restores that thread's own mode."""
    shared = no_grad()
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
    results = {}

    def a():
        with no_grad():
            with shared:
                a_in.set()
                assert b_in.wait(10)
            results["a after shared"] = is_grad_enabled()  # still inside the outer no_grad
            a_out.set()
        results["a after outer"] = is_grad_enabled()

    def b():
        assert a_in.wait(10)
        with shared:
            b_in.set()
            assert a_out.wait(10)
            results["b inside"] = is_grad_enabled()
        results["b after"] = is_grad_enabled()

    run_threads([a, b])
    assert results == {"a after shared": False, "a after outer": True, "b inside": False, "b after": True}


def test_new_threads_record_by_default():
    results = []
    with no_grad():
        run_threads([lambda: results.append(is_grad_enabled())])
    assert results == [True]


THREADS, PASSES = 4, 150

CASES = {  # weight shape, input shape, the forward pass
    "linear": ((96, 96), (4, 96), lambda x, w, b: nbconv.linear(x, w, b)),
    "conv2d": ((3, 3, 8, 8), (1, 4, 4, 8), lambda x, w, b: nbconv.conv2d(x, w, b, padding=1)),
}


@pytest.mark.parametrize("case", CASES)
def test_concurrent_backward_into_a_shared_weight_equals_the_serial_sum(case, rng):
    """4 threads x 150 backward passes into one weight and one bias: the accumulated .grad equals the
    serial sum bitwise (integer-valued data: every sum is exact, in any order). The linear weight is
    large enough (9,216 elements) for NumPy to release the GIL inside `grad += g`, where an unlocked
    accumulation loses updates."""
    w_shape, x_shape, layer = CASES[case]
    passes = PASSES if case == "linear" else 40
    w0 = rng.integers(-2, 3, w_shape).astype(np.float64)
    b0 = np.ones(w_shape[-1])
    batches = [[rng.integers(-3, 4, x_shape).astype(np.float64) for _ in range(passes)] for _ in range(THREADS)]

    def one_pass(w, b, x):
        y = layer(x, w, b)
        (y * y.detach() + y).sum().backward()

    w, b = Tensor(w0.copy(), requires_grad=True), Tensor(b0.copy(), requires_grad=True)
    for xs in batches:
        for x in xs:
            one_pass(w, b, x)
    serial_w, serial_b = w.grad.copy(), b.grad.copy()

    w, b = Tensor(w0.copy(), requires_grad=True), Tensor(b0.copy(), requires_grad=True)
    start = threading.Barrier(THREADS)

    def worker(xs):
        def run():
            start.wait()
            for x in xs:
                one_pass(w, b, x)
        return run

    run_threads([worker(xs) for xs in batches])
    np.testing.assert_array_equal(w.grad, serial_w)
    np.testing.assert_array_equal(b.grad, serial_b)
    # every guard taken by the threads' graphs was given back: the weight is writeable again
    assert w.data.flags.writeable and not tape._guards and not tape._aliases


def test_concurrent_backward_through_shared_intermediate_graphs(rng):
    """Threads backpropagating through graphs that share a recorded prefix (kept with retain-style
    reuse: backward may run more than once) into one leaf: nothing is lost."""
    x0 = rng.integers(-3, 4, (6,)).astype(np.float64)
    x = Tensor(x0, requires_grad=True)
    shared = x * 2 + 1                     # recorded once, used by every thread
    start = threading.Barrier(THREADS)

    def worker(k):
        def run():
            start.wait()
            for _ in range(PASSES):
                (shared * float(k + 1)).sum().backward()
        return run

    run_threads([worker(k) for k in range(THREADS)])
    expected = np.full(6, 2.0 * PASSES * sum(k + 1 for k in range(THREADS)))
    np.testing.assert_array_equal(x.grad, expected)


def test_concurrent_grad_calls_do_not_touch_leaf_grads(rng):
    x = Tensor(rng.standard_normal(5), requires_grad=True)
    y = (x * x).sum()
    out = {}
    start = threading.Barrier(THREADS)

    def worker(k):
        def run():
            start.wait()
            out[k] = [nbconv.grad(y, x)[0].data for _ in range(50)]
        return run

    run_threads([worker(k) for k in range(THREADS)])
    assert x.grad is None
    for grads in out.values():
        for g in grads:
            np.testing.assert_array_equal(g, 2 * x.data)
