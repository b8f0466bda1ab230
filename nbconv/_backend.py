"""The interface every convolution backend implements, and the one place that picks a backend.

A backend is a module (``nbconv._cpu`` for NumPy arrays, ``nbconv._cuda`` for CUDA device arrays)
with the functions of :class:`Backend`. Arrays reaching a backend are already validated: x is
(N, *spatial, C_in) with 1, 2 or 3 spatial dims, w is (*kernel, C_in // groups, C_out), params a
:class:`nbconv._shapes.ConvParams` with one entry per spatial dim, dtypes float32 or float64, shared.
Backends are imported on first use, so ``import nbconv`` imports neither numba nor numba.cuda.
"""
from typing import Protocol

import numpy as np

from ._device import is_device_array

OPTIONAL = ("bias", "out")  # the only array arguments that may be None


class Backend(Protocol):
    """What nbconv.conv asks of a backend (every result is a new C-contiguous array unless `out` is given)."""

    def as_array(self, a):
        """`a` as this backend's array type without a copy (None stays None)."""

    def empty(self, shape, dtype):
        """A new uninitialised C-contiguous result array."""

    def check_out(self, out, inputs):
        """ValueError unless `out` (right shape and dtype) is C-contiguous, writeable and overlaps no input."""

    def forward(self, x, w, bias, params, out):
        """out = conv(x, w) + bias (bias may be None); returns out."""

    def grad_input(self, gy, w, x_shape, params):
        """dL/dx of y = conv(x, w) for an x of shape x_shape, given gy = dL/dy."""

    def grad_weight(self, gy, x, w_shape, params):
        """dL/dw of y = conv(x, w) for a w of shape w_shape, given gy (fixed-order, reproducible sum)."""

    def grad_bias(self, gy):
        """gy summed over every axis but the last (fixed-order, reproducible sum)."""

    def grad_weight_and_bias(self, gy, x, w_shape, params):
        """(grad_weight(...), grad_bias(gy)), in one hand-off to the threads or one pass over gy where the backend
        can."""

    def transpose(self, x, w, bias, params, output_padding, out):
        """out = conv_transpose(x, w) + bias: the input gradient of the convolution whose output is x."""


def select(**arrays):
    """The backend for these arrays (None bias/out ignored); TypeError on a non-array or a host/device mix."""
    for name, a in arrays.items():  # the common case, NumPy arrays (or an optional None), decided at once
        if type(a) is not np.ndarray and (a is not None or name not in OPTIONAL):
            break
    else:
        from . import _cpu
        return _cpu
    kinds = {}
    for name, a in arrays.items():
        if a is None:
            if name in OPTIONAL:
                continue
            raise TypeError(f"{name} must be a NumPy array or a CUDA device array, got None")
        if isinstance(a, np.ndarray):
            kinds[name] = "host"
        elif is_device_array(a):
            kinds[name] = "device"
        else:
            raise TypeError(f"{name} must be a NumPy array or a CUDA device array, got {type(a).__name__}")
    if len(set(kinds.values())) > 1:
        where = ", ".join(f"{name} on {kind}" for name, kind in kinds.items())
        raise TypeError(f"arrays must all be on the host or all on a CUDA device, got {where}")
    if "device" in kinds.values():
        from . import _cuda
        return _cuda
    from . import _cpu
    return _cpu
