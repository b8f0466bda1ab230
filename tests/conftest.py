"""Test configuration shared by every test module.

The CUDA kernels run under Numba's CUDA simulator unless the caller chose otherwise: the variable
must be set before numba is first imported, which conftest guarantees (set NUMBA_ENABLE_CUDASIM=0
to test on a real GPU).
"""
import os

os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402


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
