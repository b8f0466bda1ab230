"""The one definition of the padding modes (PyTorch's meanings): which input element a padded
position copies. A leaf module: plain Python that NumPy code calls and that the CPU and CUDA kernels
compile (``numba.njit`` / ``cuda.jit(device=True)`` of :func:`source_index`).

Positions are relative to the first input element along one axis: t < 0 or t >= n lie in the
padding. Validation (nbconv._shapes) guarantees reflect pads < n and circular pads <= n, so one
reflection or one wrap reaches the input.
"""
import numpy as np

MODES = ("zeros", "reflect", "replicate", "circular")
ZEROS, REFLECT, REPLICATE, CIRCULAR = range(4)
CODES = {name: code for code, name in enumerate(MODES)}


def source_index(t, n, mode):
    """Index in [0, n) of the element that position t copies; -1 where mode ZEROS pads with zeros."""
    if 0 <= t < n:
        return t
    if mode == REFLECT:
        return (n - 1) - abs((n - 1) - abs(t))
    if mode == REPLICATE:
        return 0 if t < 0 else n - 1
    if mode == CIRCULAR:
        return t % n
    return -1


def source_indices(t, n, mode):
    """source_index over an int array `t` (NumPy, vectorized; same map)."""
    t = np.asarray(t, dtype=np.int64)
    inside = (t >= 0) & (t < n)
    if mode == REFLECT:
        mapped = (n - 1) - np.abs((n - 1) - np.abs(t))
    elif mode == REPLICATE:
        mapped = np.clip(t, 0, n - 1)
    elif mode == CIRCULAR:
        mapped = t % n
    else:
        mapped = np.full(t.shape, -1, dtype=np.int64)
    return np.where(inside, t, mapped)
