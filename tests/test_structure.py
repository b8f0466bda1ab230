"""Structural guarantees of the package: generated code is reproducible, the padding modes have one
definition that its NumPy and kernel forms agree on, and the backend interface is implemented."""
import pathlib

import numpy as np
import pytest

from nbconv import _backend, _gen_micro, _padding

PACKAGE = pathlib.Path(_gen_micro.__file__).parent


def test_generated_micro_kernel_matches_its_generator():
    assert (PACKAGE / "_micro.py").read_text() == _gen_micro.generate(), \
        "nbconv/_micro.py is stale: run `python -m nbconv._gen_micro`"


@pytest.mark.parametrize("mode", _padding.MODES)
def test_padding_index_map_scalar_and_vectorized_agree(mode):
    code = _padding.CODES[mode]
    for n in (1, 2, 5):
        limit = n - 1 if mode == "reflect" else n  # the pads validation allows
        t = np.arange(-limit, n + limit)
        expected = [_padding.source_index(int(i), n, code) for i in t]
        np.testing.assert_array_equal(_padding.source_indices(t, n, code), expected)


@pytest.mark.parametrize("mode, n, expected", [
    ("reflect", 4, [2, 1, 0, 1, 2, 3, 2, 1]),       # PyTorch's reflect: the edge is not repeated
    ("replicate", 4, [0, 0, 0, 1, 2, 3, 3, 3]),
    ("circular", 4, [2, 3, 0, 1, 2, 3, 0, 1]),
    ("zeros", 4, [-1, -1, 0, 1, 2, 3, -1, -1]),
])
def test_padding_index_map_matches_numpy_pad(mode, n, expected):
    t = np.arange(-2, n + 2)
    np.testing.assert_array_equal(_padding.source_indices(t, n, _padding.CODES[mode]), expected)
    if mode != "zeros":
        np_mode = {"reflect": "reflect", "replicate": "edge", "circular": "wrap"}[mode]
        np.testing.assert_array_equal(np.pad(np.arange(n), 2, mode=np_mode), expected)


@pytest.mark.parametrize("name", ["_cpu", "_cuda"])
def test_backends_implement_the_protocol(name):
    if name == "_cuda":
        pytest.importorskip("numba.cuda")
    import importlib
    backend = importlib.import_module(f"nbconv.{name}")
    for attr in (a for a in vars(_backend.Backend) if not a.startswith("_")):
        assert callable(getattr(backend, attr, None)), f"nbconv.{name} lacks {attr}"
