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
