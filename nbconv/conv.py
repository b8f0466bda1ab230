"""Convolutions on arrays: the public functions (validate once -> ConvParams -> a backend) and the
internal entry points that take parsed ConvParams and shapes (used by the tape and the adapters).

Notation: activations are channels-last, (N, L, C) in 1-D, (N, H, W, C) in 2-D, (N, D, H, W, C) in
3-D; weights are spatial-first then in then out, (*kernel, C_in // groups, C_out); bias is (C_out,).
The operation is cross-correlation (no kernel flip).

Parameters shared by every function (one definition: :mod:`nbconv._shapes`):

- ``stride``, ``dilation``: an int or one int per spatial dim, each >= 1.
- ``padding``: an int; one int per spatial dim; one ``(before, after)`` pair per spatial dim;
  ``"valid"`` (none) or ``"same"`` (output size ``ceil(input / stride)``, TensorFlow/JAX split with
  the extra element after).
- ``padding_mode``: ``"zeros"``, ``"reflect"``, ``"replicate"`` or ``"circular"`` (PyTorch's meanings).
- ``groups``: divides C_in and C_out; ``groups == C_in`` is depthwise.
- dtypes float32 or float64, shared by every array argument; any strides; inputs are never modified.
  Bad shapes or parameters raise ValueError/TypeError naming the argument before any kernel runs.

Type hints use the names defined here: :data:`ArrayT` (the array type of a call: NumPy arrays in,
NumPy arrays out; CUDA device arrays in, device arrays out), :data:`Array` (either),
:data:`IntOrTuple` (stride, dilation, output_padding), :data:`Padding`, :data:`TransposePadding`,
:data:`PaddingMode` and :data:`Needs`.
"""
from __future__ import annotations

from collections import namedtuple
from typing import Any, Literal, Protocol, Sequence, Tuple, TypeVar, Union

import numpy as np
from numpy.typing import NDArray

from . import _backend
from ._shapes import (check_dtypes, check_ndim, conv_output_shape, conv_params, plain, remember, remembered,
                      transpose_params)

ConvGrads = namedtuple("ConvGrads", ["input", "weight", "bias"])
ConvGrads.__doc__ = "Gradients of a convolution: (input, weight, bias); an entry not asked for is None."
Conv3dGrads = Conv2dGrads = Conv1dGrads = ConvGrads


class DeviceArray(Protocol):
    """A CUDA device array: a numba device array, or any object exposing ``__cuda_array_interface__``
    (CuPy arrays, PyTorch CUDA tensors). For type hints only."""

    @property
    def __cuda_array_interface__(self) -> dict[str, Any]: ...


Array = Union[NDArray[Any], DeviceArray]
"""A NumPy array (CPU kernels) or a CUDA device array (CUDA kernels)."""
ArrayT = TypeVar("ArrayT", NDArray[Any], DeviceArray)
"""The array type of a call (a TypeVar constrained to NDArray[Any] and DeviceArray): its array arguments
and its result are all NumPy arrays or all device arrays."""
IntOrTuple = Union[int, Sequence[int]]
"""An int for every spatial dim, or one int per spatial dim."""
Padding = Union[int, Literal["same", "valid"], Sequence[Union[int, Tuple[int, int]]]]
"""An int, one int or one ``(before, after)`` pair per spatial dim, ``"same"`` or ``"valid"``."""
TransposePadding = Union[int, Literal["valid"], Sequence[Union[int, Tuple[int, int]]]]
"""A transposed convolution's padding: :data:`Padding` without ``"same"``."""
PaddingMode = Literal["zeros", "reflect", "replicate", "circular"]
"""What the padding holds (PyTorch's meanings)."""
Needs = Union[Literal["input", "weight", "bias"], Sequence[Literal["input", "weight", "bias"]]]
"""The gradients to compute: names among ``"input"``, ``"weight"``, ``"bias"``."""
NEEDS: tuple[Literal["input", "weight", "bias"], ...] = ("input", "weight", "bias")

_SPATIAL = {1: "L", 2: "H, W", 3: "D, H, W"}
_KERNEL = {1: "K", 2: "KH, KW", 3: "KD, KH, KW"}


def _layouts(nd, transposed=False):
    """(activation layout, weight layout) strings for error messages."""
    c_in = "C_out // groups, C_in" if transposed else "C_in // groups, C_out"
    return f"(N, {_SPATIAL[nd]}, C)", f"({_KERNEL[nd]}, {c_in})"


# ---------------------------------------------------------------- internal entry points (parsed params)

def _on(backend, *arrays):
    return tuple(None if a is None else backend.as_array(a) for a in arrays)


def forward(x, w, bias, params, out=None):
    """conv(x, w) + bias for validated arrays and ConvParams (into `out`, already checked, when given)."""
    backend = _backend.select(x=x, w=w, bias=bias, out=out)
    x, w, bias, out = _on(backend, x, w, bias, out)
    if out is None:
        out = backend.empty(conv_output_shape(tuple(x.shape), tuple(w.shape), params), np.dtype(x.dtype))
    return backend.forward(x, w, bias, params, out)


def input_grad(gy, w, x_shape, params):
    """dL/dx of y = conv(x, w, params) for an x of shape x_shape, given gy = dL/dy."""
    backend = _backend.select(grad_out=gy, w=w)
    gy, w = _on(backend, gy, w)
    check_dtypes(grad_out=gy, w=w)
    return backend.grad_input(gy, w, tuple(x_shape), params)


def weight_grad(gy, x, w_shape, params):
    """dL/dw of y = conv(x, w, params) for a w of shape w_shape, given gy = dL/dy."""
    backend = _backend.select(grad_out=gy, x=x)
    gy, x = _on(backend, gy, x)
    check_dtypes(grad_out=gy, x=x)
    return backend.grad_weight(gy, x, tuple(w_shape), params)


def bias_grad(grad_out):
    """dL/dbias for channels-last grad_out (N, *spatial, C): the sum over every axis but the last, in the
    backend's fixed order (the bias gradient of convolutions and transposed ones)."""
    backend = _backend.select(grad_out=grad_out)
    (g,) = _on(backend, grad_out)
    return backend.grad_bias(g)


def transpose(x, w, bias, params, output_padding, out_shape, out=None):
    """conv_transpose(x, w) + bias of shape out_shape for validated arrays and params."""
    backend = _backend.select(x=x, w=w, bias=bias, out=out)
    x, w, bias, out = _on(backend, x, w, bias, out)
    if out is None:
        out = backend.empty(tuple(out_shape), np.dtype(x.dtype))
    return backend.transpose(x, w, bias, params, tuple(output_padding), out)


# ---------------------------------------------------------------- validation shared by the public functions

def _check_bias(bias, c_out):
    if bias is not None and tuple(bias.shape) != (c_out,):
        raise ValueError(f"bias must have shape ({c_out},) (C_out), got {tuple(bias.shape)}")


def _check_out(backend, out, shape, dtype, inputs):
    """ValueError/TypeError unless `out` can hold a result of `shape` and `dtype`."""
    if tuple(out.shape) != tuple(shape):
        raise ValueError(f"out has shape {tuple(out.shape)} but the result has shape {tuple(shape)}")
    if np.dtype(out.dtype) != dtype:
        raise TypeError(f"out has dtype {np.dtype(out.dtype)} but the result has dtype {dtype}")
    backend.check_out(out, inputs)


def parse_needs(needs):
    """`needs` as a tuple of names from NEEDS (a single name is accepted)."""
    if isinstance(needs, str):
        needs = (needs,)
    try:
        needs = tuple(needs)
    except TypeError:
        raise TypeError(f"needs must be a tuple of names from {NEEDS}, got {needs!r}") from None
    unknown = [n for n in needs if n not in NEEDS]
    if unknown:
        raise ValueError(f"needs may only contain {NEEDS}, got {needs!r}")
    return needs


def parse_forward(nd, x, w, bias, out, *, stride, padding, dilation, groups, padding_mode):
    """Validate a conv{nd}d call, raising the errors users see: ((x, w, bias, out) as the backend's
    arrays, ConvParams)."""
    backend = _backend.select(x=x, w=w, bias=bias, out=out)
    x, w, bias, out = _on(backend, x, w, bias, out)
    x_layout, w_layout = _layouts(nd)
    check_ndim(x, nd + 2, "x", x_layout)
    check_ndim(w, nd + 2, "w", w_layout)
    dtype = check_dtypes(x=x, w=w, bias=bias, out=out)
    params = conv_params(tuple(x.shape), tuple(w.shape), stride=stride, padding=padding, dilation=dilation,
                         groups=groups, padding_mode=padding_mode)
    _check_bias(bias, tuple(w.shape)[-1])
    if out is not None:
        _check_out(backend, out, conv_output_shape(tuple(x.shape), tuple(w.shape), params), dtype,
                   {"x": x, "w": w, "bias": bias})
    return (x, w, bias, out), params


def _host_call(nd, x, w, bias, out, *params):
    """The key under which a call's validation is remembered (`remember`) when what it depends on is known: NumPy
    arrays (x, w and bias exactly np.ndarray, no `out`) and plain parameters (ints, strs and tuples of them); None
    for other calls."""
    if (out is None and type(x) is np.ndarray and type(w) is np.ndarray and (bias is None or type(bias) is np.ndarray)
            and plain(params)):
        bias_key = None if bias is None else (bias.shape, bias.dtype)
        return "host forward", nd, x.shape, x.dtype, w.shape, w.dtype, bias_key, params
    return None


def _forward(nd, x, w, bias, stride, padding, dilation, groups, padding_mode, out):
    key = _host_call(nd, x, w, bias, out, stride, padding, dilation, groups, padding_mode)
    parsed = None if key is None else remembered(key)
    if parsed is not None:  # the same validation passed before: its backend, parameters and result shape
        backend, params, shape = parsed
        return backend.forward(x, w, bias, params, backend.empty(shape, x.dtype))
    (x, w, bias, out_array), params = parse_forward(nd, x, w, bias, out, stride=stride, padding=padding,
                                                    dilation=dilation, groups=groups, padding_mode=padding_mode)
    result = forward(x, w, bias, params, out_array)
    if key is not None:
        remember(key, (_backend.select(x=x), params, result.shape))
    return result if out is None else out


def _backward(nd, grad_out, x, w, stride, padding, dilation, groups, padding_mode, needs):
    backend = _backend.select(grad_out=grad_out, x=x, w=w)
    grad_out, x, w = _on(backend, grad_out, x, w)
    needs = parse_needs(needs)
    x_layout, w_layout = _layouts(nd)
    check_ndim(x, nd + 2, "x", x_layout)
    check_ndim(w, nd + 2, "w", w_layout)
    check_ndim(grad_out, nd + 2, "grad_out", x_layout)
    check_dtypes(grad_out=grad_out, x=x, w=w)
    params = conv_params(tuple(x.shape), tuple(w.shape), stride=stride, padding=padding, dilation=dilation,
                         groups=groups, padding_mode=padding_mode)
    y_shape = conv_output_shape(tuple(x.shape), tuple(w.shape), params)
    if tuple(grad_out.shape) != y_shape:
        raise ValueError(f"grad_out has shape {tuple(grad_out.shape)} but the convolution's output has shape "
                         f"{y_shape} (x.shape={tuple(x.shape)}, w.shape={tuple(w.shape)})")
    gx = input_grad(grad_out, w, x.shape, params) if "input" in needs else None
    if "weight" in needs and "bias" in needs:  # together where the backend can (one hand-off, or one pass)
        gw, gb = backend.grad_weight_and_bias(grad_out, x, tuple(w.shape), params)
    else:
        gw = weight_grad(grad_out, x, w.shape, params) if "weight" in needs else None
        gb = bias_grad(grad_out) if "bias" in needs else None
    return ConvGrads(gx, gw, gb)


def parse_transpose(nd, x, w, bias, out, *, stride, padding, output_padding, dilation, groups):
    """Validate a conv_transpose{nd}d call, raising the errors users see: ((x, w, bias, out) as the
    backend's arrays, ConvParams, output_padding, result shape)."""
    backend = _backend.select(x=x, w=w, bias=bias, out=out)
    x, w, bias, out = _on(backend, x, w, bias, out)
    x_layout, w_layout = _layouts(nd, transposed=True)
    check_ndim(x, nd + 2, "x", x_layout)
    check_ndim(w, nd + 2, "w", w_layout)
    dtype = check_dtypes(x=x, w=w, bias=bias, out=out)
    params, output_padding, shape = transpose_params(
        tuple(x.shape), tuple(w.shape), stride=stride, padding=padding, output_padding=output_padding,
        dilation=dilation, groups=groups)
    _check_bias(bias, shape[-1])
    if out is not None:
        _check_out(backend, out, shape, dtype, {"x": x, "w": w, "bias": bias})
    return (x, w, bias, out), params, output_padding, shape


def _transpose(nd, x, w, bias, stride, padding, output_padding, dilation, groups, out):
    (x, w, bias, out_array), params, output_padding, shape = parse_transpose(
        nd, x, w, bias, out, stride=stride, padding=padding, output_padding=output_padding, dilation=dilation,
        groups=groups)
    result = transpose(x, w, bias, params, output_padding, shape, out_array)
    return result if out is None else out


# ---------------------------------------------------------------- public functions

_COMMON_PARAMETERS = """\
stride : int or tuple of {nd} ints, default 1
    Step between windows, per spatial dim; each >= 1.
padding : int, tuple of {nd} ints, tuple of {nd} (before, after) pairs, "same" or "valid", default 0
    Padding per spatial dim: an int pads every side alike; a pair pads before and after differently;
    "valid" is none; "same" gives ``ceil(size / stride)`` outputs with the total padding split as
    TensorFlow/JAX do (the odd element after).
dilation : int or tuple of {nd} ints, default 1
    Spacing between kernel taps, per spatial dim; each >= 1.
groups : int, default 1
    Channel groups: divides C_in and C_out; ``groups == C_in`` is a depthwise convolution."""

_MODE = """\
padding_mode : {"zeros", "reflect", "replicate", "circular"}, default "zeros"
    What the padding holds, as in PyTorch: zeros, the mirror image without the edge, copies of the
    edge, or the other end of the axis."""

_OUT = """\
out : ndarray, optional
    A C-contiguous array of the result's exact shape and dtype, sharing no memory with the inputs;
    the result is written there and it is returned."""

_ERRORS = """\
Raises
------
ValueError
    Shapes or parameters that do not fit, naming the argument and quoting the values.
TypeError
    Non-arrays, unsupported or mixed dtypes (float32 and float64 are supported), host and CUDA
    arrays mixed. Errors are raised before any kernel runs; inputs are never modified."""

_ARRAYS_ONLY = """\
This function takes arrays only; for nbconv Tensors, call the function of the same name in
:mod:`nbconv` (see nbconv.ops)."""
_ARRAYS = """\
Arrays may have any strides (Fortran order, negative strides, read-only views). NumPy arrays run the
CPU kernels; CUDA device arrays (numba, or anything with ``__cuda_array_interface__``) run the CUDA
kernels and give numba device arrays.

""" + _ARRAYS_ONLY


def _out_axes(nd):
    return ", ".join(f"{axis}_out" for axis in _SPATIAL[nd].split(", "))


def _forward_doc(nd, example):
    x, k = _SPATIAL[nd], _KERNEL[nd]
    return f"""{nd}-D cross-correlation of x (N, {x}, C_in) with w ({k}, C_in // groups, C_out), plus bias.

Each output size is ``(size + pad_before + pad_after - dilation * (k - 1) - 1) // stride + 1``.

Parameters
----------
x : ndarray, shape (N, {x}, C_in)
    Activations, channels-last.
w : ndarray, shape ({k}, C_in // groups, C_out)
    Weights: spatial axes, then input channels per group, then output channels.
bias : ndarray, shape (C_out,), optional
{_COMMON_PARAMETERS.format(nd=nd)}
{_MODE}
{_OUT}

Returns
-------
ndarray, shape (N, {_out_axes(nd)}, C_out)
    In the dtype of the inputs.

{_ERRORS}

Notes
-----
{_ARRAYS}

Examples
--------
{example}"""


def _backward_doc(nd):
    x, k = _SPATIAL[nd], _KERNEL[nd]
    return f"""Gradients of conv{nd}d w.r.t. x, w and bias, given grad_out = dL/dy.

Parameters
----------
grad_out : ndarray, shape (N, {_out_axes(nd)}, C_out)
    The gradient of a loss w.r.t. the convolution's output.
x : ndarray, shape (N, {x}, C_in)
w : ndarray, shape ({k}, C_in // groups, C_out)
{_COMMON_PARAMETERS.format(nd=nd)}
{_MODE}
needs : tuple of {{"input", "weight", "bias"}}, default all three
    The gradients to compute; the others are returned as None.

Returns
-------
ConvGrads
    Named tuple (input, weight, bias) of arrays shaped like x, w and (C_out,). The weight and bias
    gradients are fixed-order sums: bitwise identical for any number of threads.

{_ERRORS}

Examples
--------
>>> import numpy as np, nbconv
>>> x, w = np.ones((1, {', '.join(['4'] * nd)}, 2)), np.ones(({', '.join(['3'] * nd)}, 2, 1))
>>> g = nbconv.conv{nd}d_backward(np.ones((1, {', '.join(['2'] * nd)}, 1)), x, w)
>>> g.weight.shape, float(g.bias[0])
(({', '.join(['3'] * nd)}, 2, 1), {float(2 ** nd)})"""


def _transpose_doc(nd):
    x, k = _SPATIAL[nd], _KERNEL[nd]
    return f"""Transposed {nd}-D convolution: the adjoint of conv{nd}d with the same weight tensor.

``conv_transpose{nd}d(y, w)`` is the input gradient of ``conv{nd}d(x, w)`` for grad_out y (TensorFlow's
filter order; PyTorch's ConvTranspose output sizes): each output size is
``(size - 1) * stride - pad_before - pad_after + dilation * (k - 1) + output_padding + 1``.

Parameters
----------
x : ndarray, shape (N, {x}, C_in)
w : ndarray, shape ({k}, C_out // groups, C_in)
    The weight of the convolution this one is the adjoint of (its C_in is this result's C_out).
bias : ndarray, shape (C_out,), optional
{_COMMON_PARAMETERS.format(nd=nd).replace(', "same" or "valid"', ' or "valid"')}
output_padding : int or tuple of {nd} ints, default 0
    Extra positions at the end of each spatial dim; ``0 <= output_padding < max(stride, dilation)``.
{_OUT}

Returns
-------
ndarray, shape (N, {_out_axes(nd)}, C_out)

{_ERRORS}

Examples
--------
>>> import numpy as np, nbconv
>>> nbconv.conv_transpose{nd}d(np.ones((1, {', '.join(['2'] * nd)}, 1)), np.ones(({', '.join(['2'] * nd)}, 1, 1)), stride=2).shape
(1, {', '.join(['4'] * nd)}, 1)"""


_EXAMPLES = {
    1: """>>> import numpy as np, nbconv
>>> nbconv.conv1d(np.ones((1, 5, 2)), np.ones((3, 2, 1)), padding="same")[0, :, 0]
array([4., 6., 6., 6., 4.])""",
    2: """>>> import numpy as np, nbconv
>>> x = np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1)
>>> nbconv.conv2d(x, np.ones((2, 2, 1, 1), np.float32), stride=2)[0, :, :, 0]
array([[10., 18.],
       [42., 50.]], dtype=float32)""",
    3: """>>> import numpy as np, nbconv
>>> nbconv.conv3d(np.ones((1, 3, 3, 3, 1)), np.ones((2, 2, 2, 1, 1)), stride=2, padding=1)[0, :, :, :, 0]
array([[[1., 2.],
        [2., 4.]],
<BLANKLINE>
       [[2., 4.],
        [4., 8.]]])""",
}


def conv1d(x: ArrayT, w: ArrayT, bias: ArrayT | None = None, *, stride: IntOrTuple = 1, padding: Padding = 0,
           dilation: IntOrTuple = 1, groups: int = 1, padding_mode: PaddingMode = "zeros",
           out: ArrayT | None = None) -> ArrayT:
    return _forward(1, x, w, bias, stride, padding, dilation, groups, padding_mode, out)


def conv2d(x: ArrayT, w: ArrayT, bias: ArrayT | None = None, *, stride: IntOrTuple = 1, padding: Padding = 0,
           dilation: IntOrTuple = 1, groups: int = 1, padding_mode: PaddingMode = "zeros",
           out: ArrayT | None = None) -> ArrayT:
    return _forward(2, x, w, bias, stride, padding, dilation, groups, padding_mode, out)


def conv3d(x: ArrayT, w: ArrayT, bias: ArrayT | None = None, *, stride: IntOrTuple = 1, padding: Padding = 0,
           dilation: IntOrTuple = 1, groups: int = 1, padding_mode: PaddingMode = "zeros",
           out: ArrayT | None = None) -> ArrayT:
    return _forward(3, x, w, bias, stride, padding, dilation, groups, padding_mode, out)


def conv1d_backward(grad_out: ArrayT, x: ArrayT, w: ArrayT, *, stride: IntOrTuple = 1, padding: Padding = 0,
                    dilation: IntOrTuple = 1, groups: int = 1, padding_mode: PaddingMode = "zeros",
                    needs: Needs = NEEDS) -> ConvGrads:
    return _backward(1, grad_out, x, w, stride, padding, dilation, groups, padding_mode, needs)


def conv2d_backward(grad_out: ArrayT, x: ArrayT, w: ArrayT, *, stride: IntOrTuple = 1, padding: Padding = 0,
                    dilation: IntOrTuple = 1, groups: int = 1, padding_mode: PaddingMode = "zeros",
                    needs: Needs = NEEDS) -> ConvGrads:
    return _backward(2, grad_out, x, w, stride, padding, dilation, groups, padding_mode, needs)


def conv3d_backward(grad_out: ArrayT, x: ArrayT, w: ArrayT, *, stride: IntOrTuple = 1, padding: Padding = 0,
                    dilation: IntOrTuple = 1, groups: int = 1, padding_mode: PaddingMode = "zeros",
                    needs: Needs = NEEDS) -> ConvGrads:
    return _backward(3, grad_out, x, w, stride, padding, dilation, groups, padding_mode, needs)


def conv_transpose1d(x: ArrayT, w: ArrayT, bias: ArrayT | None = None, *, stride: IntOrTuple = 1,
                     padding: TransposePadding = 0, output_padding: IntOrTuple = 0, dilation: IntOrTuple = 1,
                     groups: int = 1, out: ArrayT | None = None) -> ArrayT:
    return _transpose(1, x, w, bias, stride, padding, output_padding, dilation, groups, out)


def conv_transpose2d(x: ArrayT, w: ArrayT, bias: ArrayT | None = None, *, stride: IntOrTuple = 1,
                     padding: TransposePadding = 0, output_padding: IntOrTuple = 0, dilation: IntOrTuple = 1,
                     groups: int = 1, out: ArrayT | None = None) -> ArrayT:
    return _transpose(2, x, w, bias, stride, padding, output_padding, dilation, groups, out)


def conv_transpose3d(x: ArrayT, w: ArrayT, bias: ArrayT | None = None, *, stride: IntOrTuple = 1,
                     padding: TransposePadding = 0, output_padding: IntOrTuple = 0, dilation: IntOrTuple = 1,
                     groups: int = 1, out: ArrayT | None = None) -> ArrayT:
    return _transpose(3, x, w, bias, stride, padding, output_padding, dilation, groups, out)


for _nd in (1, 2, 3):
    globals()[f"conv{_nd}d"].__doc__ = _forward_doc(_nd, _EXAMPLES[_nd])
    globals()[f"conv{_nd}d_backward"].__doc__ = _backward_doc(_nd)
    globals()[f"conv_transpose{_nd}d"].__doc__ = _transpose_doc(_nd)
