"""Test configuration shared by every test module.

The CUDA kernels run under Numba's CUDA simulator unless the caller chose otherwise: the variable
must be set before numba is first imported, which conftest guarantees (set NUMBA_ENABLE_CUDASIM=0
to test on a real GPU).
"""
import os

os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")

import sys  # noqa: E402
import threading  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402


def _serialize_simulated_shared_arrays():
    """Numba's CUDA simulator (numba's and numba-cuda's) runs a block's threads as Python threads and
    creates each static `cuda.shared.array` on first use with an unlocked check-then-insert keyed by the
    calling source line: two threads that miss at once get two different arrays, and the block computes
    garbage (seen intermittently in tests/test_cuda.py's implicit-GEMM cases). A real GPU has no such
    race. Here the same lookup runs under a lock (same key: the kernel's file and line)."""
    from numba.cuda.simulator import kernelapi
    allocate = kernelapi.FakeCUDAShared.array
    lock = threading.Lock()

    def array(self, shape, dtype, *args, **kwargs):
        if shape == 0:  # dynamic shared memory: one buffer, no first-use race
            return allocate(self, shape, dtype, *args, **kwargs)
        frame = sys._getframe(1)
        caller = (frame.f_code.co_filename, frame.f_lineno)
        with lock:
            res = self._allocations.get(caller)
            if res is None:
                if isinstance(dtype, types.Type):
                    dtype = numpy_support.as_dtype(dtype)
                res = np.empty(shape, dtype)
                self._allocations[caller] = res
        return res

    from numba import types
    from numba.np import numpy_support
    kernelapi.FakeCUDAShared.array = array


if os.environ["NUMBA_ENABLE_CUDASIM"] == "1":
    _serialize_simulated_shared_arrays()


@pytest.fixture
def rng():
    """A freshly seeded generator per test: failures reproduce."""
    return np.random.default_rng(20261122)


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False,
                     help="also run tests marked slow (inputs of more than 2**31 elements; tens of GB of memory)")


def pytest_collection_modifyitems(config, items):
    """Skip tests marked slow unless --runslow is given (or -m selects them explicitly, e.g. -m slow)."""
    markexpr = config.getoption("markexpr") or ""
    if config.getoption("--runslow") or ("slow" in markexpr and "not slow" not in markexpr):
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow (or -m slow)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
