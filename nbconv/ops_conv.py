"""Convolutions on the tape: a closed algebra of primitives, each differentiable through the others.

The convolutions parse their arguments once per call: on arrays they are exactly nbconv.conv's
public functions; with a Tensor among x, w and bias they validate as those do (same errors), then
record a primitive whose static parameters are the parsed ConvParams, and whose VJP applies the
primitives below with them (they call nbconv.conv's internal entry points: forward, input_grad,
weight_grad, bias_grad, transpose).

With J_w v = conv(v, w) (linear in v, whatever the padding mode: the modes only say which input
element a padded position copies) and K_x u = conv(x, u) (linear in u)::

    conv(x, w, b)            = J_w x + b     x <- input_grad(g, w)         w <- weight_grad(g, x)   b <- sum(g)
    input_grad(gy, w)        = J_w^T gy      gy <- conv(u, w)              w <- weight_grad(gy, u)
    weight_grad(gy, x)       = K_x^T gy      gy <- conv(x, u)              x <- input_grad(gy, u)
    bias_grad(gy)            = sum(gy)       gy <- u broadcast to gy's shape
    conv_transpose(x, w, b)  = J_w^T x + b   x <- conv(g', w)              w <- weight_grad(x, g')  b <- sum(g)

(u is the gradient arriving at each op's result; <u, J_w^T gy> = <J_w u, gy> = <w, K_u^T gy> gives
the second and third lines.) input_grad is the transposed convolution for padding mode "zeros" and,
for the other modes, also folds the gradient of the padded border back onto the input positions it
copies (the mode's adjoint); conv_transpose (zeros mode only) restricts g to the part x reaches (g',
see _transpose_adjoint). On arrays every VJP is one kernel call, as fast as calling nbconv.conv's
entry points directly; under create_graph the same lines record convolutions, so gradients of any
order work in 1-D, 2-D and 3-D, for every stride, dilation, padding, padding mode and group count.
CUDA device arrays run on the device (first-order gradients).
"""
from __future__ import annotations

import functools
from typing import Any, Sequence, TypeVar

import numpy as np
from numpy.typing import NDArray

from . import _backend
from . import conv as _conv
from ._device import is_device_array as _is_device_array
from ._shapes import ConvParams
from .conv import NEEDS, Array, ConvGrads, DeviceArray, IntOrTuple, Needs, Padding, PaddingMode, TransposePadding
from .ops_core import Primitive, apply, broadcast, defvjp, shape_of, unwrap, value
from .tape import Tensor, _device_filled


ConvT = TypeVar("ConvT", NDArray[Any], DeviceArray, Tensor)
"""The result type of a convolution (a TypeVar constrained to NDArray[Any], DeviceArray and Tensor): a
Tensor when an argument is one, else the arguments' array type."""


def _prim(fn, name):
    return Primitive(fn, on_device=True, name=name)


def _forward(x, w, bias, *, params, out):
    return _conv.forward(x, w, bias, params, out), (x, w)


def _input_grad(gy, w, *, x_shape, params):
    return _conv.input_grad(gy, w, x_shape, params), (gy, w)


def _weight_grad(gy, x, *, w_shape, params):
    return _conv.weight_grad(gy, x, w_shape, params), (gy, x)


def _transpose(x, w, bias, *, params, output_padding, shape, out):
    return _conv.transpose(x, w, bias, params, output_padding, shape, out), (x, w)


_CONV = {nd: _prim(_forward, f"conv{nd}d") for nd in (1, 2, 3)}
_INPUT_GRAD = {nd: _prim(_input_grad, f"conv{nd}d_input_grad") for nd in (1, 2, 3)}
_WEIGHT_GRAD = {nd: _prim(_weight_grad, f"conv{nd}d_weight_grad") for nd in (1, 2, 3)}
_TRANSPOSE = {nd: _prim(_transpose, f"conv_transpose{nd}d") for nd in (1, 2, 3)}


@functools.partial(Primitive, on_device=True, name="conv_bias_grad")
def _bias_grad(gy):
    return _conv.bias_grad(gy), tuple(gy.shape)


defvjp(_bias_grad, lambda u, shape, needs: (broadcast(u, shape),))


def conv_input_grad(gy: ConvT | NDArray[Any], w: ConvT | NDArray[Any], x_shape: Sequence[int],
                    params: ConvParams) -> ConvT:
    """dL/dx of y = conv(x, w, params) given gy = dL/dy, for an x of shape x_shape: differentiable in
    gy and w (what the convolutions' VJPs use, also under create_graph).

    Parameters
    ----------
    gy : array or Tensor, shape (N, *out_spatial, C_out)
        The gradient of the convolution's result.
    w : array or Tensor, shape (*kernel, C_in // groups, C_out)
    x_shape : tuple of ints
        The shape of the convolution's input (N, *spatial, C_in).
    params : ConvParams
        The convolution's parsed parameters (``nbconv._shapes.conv_params``); not re-validated, so
        they and the shapes must come from a validated convolution.

    Returns
    -------
    array or Tensor, shape `x_shape`
        A Tensor when gy or w is one (recorded when one requires grad); a device array for device
        arrays.

    Examples
    --------
    >>> import numpy as np, nbconv
    >>> from nbconv._shapes import conv_params
    >>> params = conv_params((1, 4, 1), (3, 1, 1), stride=1, padding=0, dilation=1, groups=1,
    ...                      padding_mode="zeros")
    >>> nbconv.ops.conv_input_grad(np.ones((1, 2, 1)), np.ones((3, 1, 1)), (1, 4, 1), params)[0, :, 0]
    array([1., 2., 2., 1.])
    """
    return apply(_INPUT_GRAD[len(params.stride)], gy, w, x_shape=tuple(x_shape), params=params)


def conv_weight_grad(gy: ConvT | NDArray[Any], x: ConvT | NDArray[Any], w_shape: Sequence[int],
                     params: ConvParams) -> ConvT:
    """dL/dw of y = conv(x, w, params) given gy = dL/dy, for a w of shape w_shape: differentiable in
    gy and x (what the convolutions' VJPs use, also under create_graph).

    Parameters
    ----------
    gy : array or Tensor, shape (N, *out_spatial, C_out)
        The gradient of the convolution's result.
    x : array or Tensor, shape (N, *spatial, C_in)
        The convolution's input.
    w_shape : tuple of ints
        The shape of the weight (*kernel, C_in // groups, C_out).
    params : ConvParams
        As for :func:`conv_input_grad`.

    Returns
    -------
    array or Tensor, shape `w_shape`
        A fixed-order sum (bitwise identical for any number of threads); a Tensor when gy or x is
        one (recorded when one requires grad).

    Examples
    --------
    >>> import numpy as np, nbconv
    >>> from nbconv._shapes import conv_params
    >>> params = conv_params((1, 4, 1), (3, 1, 1), stride=1, padding=0, dilation=1, groups=1,
    ...                      padding_mode="zeros")
    >>> x = np.arange(4.0).reshape(1, 4, 1)
    >>> nbconv.ops.conv_weight_grad(np.ones((1, 2, 1)), x, (3, 1, 1), params)[:, 0, 0]
    array([1., 3., 5.])
    """
    return apply(_WEIGHT_GRAD[len(params.stride)], gy, x, w_shape=tuple(w_shape), params=params)


def _convolve(x, w, params):
    return apply(_CONV[len(params.stride)], x, w, None, params=params, out=None)


def _conv_vjp(g, res, needs, *, params, out):
    x, w = res
    return (conv_input_grad(g, w, shape_of(x), params) if needs[0] else None,
            conv_weight_grad(g, x, shape_of(w), params) if needs[1] else None,
            apply(_bias_grad, g) if needs[2] else None)


def _input_grad_vjp(u, res, needs, *, x_shape, params):
    gy, w = res
    return (_convolve(u, w, params) if needs[0] else None,
            conv_weight_grad(gy, u, shape_of(w), params) if needs[1] else None)


def _weight_grad_vjp(u, res, needs, *, w_shape, params):
    gy, x = res
    return (_convolve(x, u, params) if needs[0] else None,
            conv_input_grad(gy, u, shape_of(x), params) if needs[1] else None)


def _transpose_adjoint(g, x_shape, params, output_padding):
    """(g', params') such that conv(g', w, params') has exactly x's shape and equals conv(g, w, params)
    on it; (None, None) when no tap of w links x to the transposed convolution's result at all.

    y = conv_transpose(x, w) is the adjoint of conv(., w) (params; y's shape in, x's shape out)
    restricted to x's positions: per spatial dim conv(g, w) has m + output_padding // stride
    positions for x's m, and the trailing ones (output_padding >= stride, possible with dilation)
    are positions x never reached. There, with n = len(g) and pads (before, after), keep the first
    n' = n - max(output_padding - after, 0) positions of g and pad after by
    max(after - output_padding, 0): then n' + before + after' - dilation * (k - 1) - 1 is exactly
    (m - 1) * stride, so conv has m positions, reading the same inputs as before (the dropped ones
    were read only by the trailing positions). n' < 1 means every window of x reads only padding.
    Other dims, and g itself when no dim needs it, are left as they are (g may be an array or a Tensor)."""
    keep, pads, changed = [slice(None)], [], False
    for n, m, (before, after), s, op in zip(tuple(g.shape)[1:-1], x_shape[1:-1], params.pads, params.stride,
                                            output_padding):
        if op < s:
            keep.append(slice(None))
            pads.append((before, after))
            continue
        kept = n - (op - after if op > after else 0)
        if kept < 1:
            return None, None
        keep.append(slice(0, kept))
        pads.append((before, after - op if after > op else 0))
        changed = True
    if not changed:
        return g, params
    return g[tuple(keep)], params._replace(pads=tuple(pads))


def _zeros_like(a):
    """Zeros of a's shape and dtype, on a's side (host or device)."""
    a = value(a)
    if _is_device_array(a):
        return _device_filled(_backend.select(x=a), tuple(a.shape), np.dtype(a.dtype), 0)
    return np.zeros(a.shape, a.dtype)


def _transpose_vjp(g, res, needs, *, params, output_padding, shape, out):
    """conv_transpose(x, w) is the adjoint of conv(., w), so its input gradient is conv(g, w), and
    <g, conv_transpose(x, w)> = <conv(g, w), x> makes its weight gradient the weight gradient of
    conv(g, w) for the output gradient x (roles swapped); both on the part of g that x reaches (see
    _transpose_adjoint). Device arrays stay on the device."""
    x, w = res
    reach, adjoint = _transpose_adjoint(g, shape_of(x), params, output_padding)
    return (None if not needs[0] else _zeros_like(x) if reach is None else _convolve(reach, w, adjoint),
            None if not needs[1] else _zeros_like(w) if reach is None else conv_weight_grad(x, reach, shape_of(w),
                                                                                             adjoint),
            apply(_bias_grad, g) if needs[2] else None)


for _nd in (1, 2, 3):
    defvjp(_CONV[_nd], _conv_vjp)
    defvjp(_INPUT_GRAD[_nd], _input_grad_vjp)
    defvjp(_WEIGHT_GRAD[_nd], _weight_grad_vjp)
    defvjp(_TRANSPOSE[_nd], _transpose_vjp)

# ---------------------------------------------------------------- public functions

_PUBLIC = {(kind, nd): getattr(_conv, f"{kind}{nd}d") for kind in ("conv", "conv_transpose") for nd in (1, 2, 3)}


def _with_tensors(args, arrays):
    """`args` with each non-Tensor replaced by its parsed array (Tensors are kept: the tape needs them)."""
    return tuple(a if isinstance(a, Tensor) else b for a, b in zip(args, arrays))


def _conv_call(nd, x, w, bias, out, **params):
    if not (isinstance(x, Tensor) or isinstance(w, Tensor) or isinstance(bias, Tensor)):
        return _PUBLIC["conv", nd](x, w, bias, out=out, **params)
    arrays, parsed = _conv.parse_forward(nd, unwrap(x), unwrap(w), unwrap(bias), unwrap(out), **params)
    return apply(_CONV[nd], *_with_tensors((x, w, bias), arrays), params=parsed, out=arrays[3])


def _transpose_call(nd, x, w, bias, out, **params):
    if not (isinstance(x, Tensor) or isinstance(w, Tensor) or isinstance(bias, Tensor)):
        return _PUBLIC["conv_transpose", nd](x, w, bias, out=out, **params)
    arrays, parsed, output_padding, shape = _conv.parse_transpose(nd, unwrap(x), unwrap(w), unwrap(bias),
                                                                  unwrap(out), **params)
    return apply(_TRANSPOSE[nd], *_with_tensors((x, w, bias), arrays), params=parsed,
                 output_padding=output_padding, shape=shape, out=arrays[3])


def _with_note(fn, note):
    """The docstring of nbconv.conv's `fn` (numpydoc, not indented) with `note` ending its Notes section
    (in place of the last paragraph there, which sends Tensors here)."""
    head, examples = fn.__doc__.split("\nExamples\n--------\n")
    head = head.replace("\n\n" + _conv._ARRAYS_ONLY, "")
    notes = "\n\n" if "\nNotes\n-----\n" in head else "\n\nNotes\n-----\n"
    return f"{head.rstrip()}{notes}{note}\n\nExamples\n--------\n{examples}"


_TENSORS = """\
Accepts Tensors too: the result is then a Tensor, recorded on the tape when an input requires grad
(gradients of any order). With arrays only, this is exactly nbconv.conv.{name}."""
_UNWRAPPED = """\
Accepts Tensors too, computing on their arrays: nothing is recorded and the gradients are arrays
(for gradients on the tape, call backward() on a Tensor result of conv{nd}d). With arrays only,
this is exactly nbconv.conv.{name}."""


def conv1d(x: ConvT | NDArray[Any], w: ConvT | NDArray[Any], bias: ConvT | NDArray[Any] | None = None, *,
           stride: IntOrTuple = 1, padding: Padding = 0, dilation: IntOrTuple = 1, groups: int = 1,
           padding_mode: PaddingMode = "zeros", out: Array | None = None) -> ConvT:
    return _conv_call(1, x, w, bias, out, stride=stride, padding=padding, dilation=dilation, groups=groups,
                      padding_mode=padding_mode)


def conv2d(x: ConvT | NDArray[Any], w: ConvT | NDArray[Any], bias: ConvT | NDArray[Any] | None = None, *,
           stride: IntOrTuple = 1, padding: Padding = 0, dilation: IntOrTuple = 1, groups: int = 1,
           padding_mode: PaddingMode = "zeros", out: Array | None = None) -> ConvT:
    return _conv_call(2, x, w, bias, out, stride=stride, padding=padding, dilation=dilation, groups=groups,
                      padding_mode=padding_mode)


def conv3d(x: ConvT | NDArray[Any], w: ConvT | NDArray[Any], bias: ConvT | NDArray[Any] | None = None, *,
           stride: IntOrTuple = 1, padding: Padding = 0, dilation: IntOrTuple = 1, groups: int = 1,
           padding_mode: PaddingMode = "zeros", out: Array | None = None) -> ConvT:
    return _conv_call(3, x, w, bias, out, stride=stride, padding=padding, dilation=dilation, groups=groups,
                      padding_mode=padding_mode)


def conv_transpose1d(x: ConvT | NDArray[Any], w: ConvT | NDArray[Any], bias: ConvT | NDArray[Any] | None = None, *,
                     stride: IntOrTuple = 1, padding: TransposePadding = 0, output_padding: IntOrTuple = 0,
                     dilation: IntOrTuple = 1, groups: int = 1, out: Array | None = None) -> ConvT:
    return _transpose_call(1, x, w, bias, out, stride=stride, padding=padding, output_padding=output_padding,
                           dilation=dilation, groups=groups)


def conv_transpose2d(x: ConvT | NDArray[Any], w: ConvT | NDArray[Any], bias: ConvT | NDArray[Any] | None = None, *,
                     stride: IntOrTuple = 1, padding: TransposePadding = 0, output_padding: IntOrTuple = 0,
                     dilation: IntOrTuple = 1, groups: int = 1, out: Array | None = None) -> ConvT:
    return _transpose_call(2, x, w, bias, out, stride=stride, padding=padding, output_padding=output_padding,
                           dilation=dilation, groups=groups)


def conv_transpose3d(x: ConvT | NDArray[Any], w: ConvT | NDArray[Any], bias: ConvT | NDArray[Any] | None = None, *,
                     stride: IntOrTuple = 1, padding: TransposePadding = 0, output_padding: IntOrTuple = 0,
                     dilation: IntOrTuple = 1, groups: int = 1, out: Array | None = None) -> ConvT:
    return _transpose_call(3, x, w, bias, out, stride=stride, padding=padding, output_padding=output_padding,
                           dilation=dilation, groups=groups)


def conv1d_backward(grad_out: Tensor | Array, x: Tensor | Array, w: Tensor | Array, *, stride: IntOrTuple = 1,
                    padding: Padding = 0, dilation: IntOrTuple = 1, groups: int = 1,
                    padding_mode: PaddingMode = "zeros", needs: Needs = NEEDS) -> ConvGrads:
    return _conv.conv1d_backward(unwrap(grad_out), unwrap(x), unwrap(w), stride=stride, padding=padding,
                                 dilation=dilation, groups=groups, padding_mode=padding_mode, needs=needs)


def conv2d_backward(grad_out: Tensor | Array, x: Tensor | Array, w: Tensor | Array, *, stride: IntOrTuple = 1,
                    padding: Padding = 0, dilation: IntOrTuple = 1, groups: int = 1,
                    padding_mode: PaddingMode = "zeros", needs: Needs = NEEDS) -> ConvGrads:
    return _conv.conv2d_backward(unwrap(grad_out), unwrap(x), unwrap(w), stride=stride, padding=padding,
                                 dilation=dilation, groups=groups, padding_mode=padding_mode, needs=needs)


def conv3d_backward(grad_out: Tensor | Array, x: Tensor | Array, w: Tensor | Array, *, stride: IntOrTuple = 1,
                    padding: Padding = 0, dilation: IntOrTuple = 1, groups: int = 1,
                    padding_mode: PaddingMode = "zeros", needs: Needs = NEEDS) -> ConvGrads:
    return _conv.conv3d_backward(unwrap(grad_out), unwrap(x), unwrap(w), stride=stride, padding=padding,
                                 dilation=dilation, groups=groups, padding_mode=padding_mode, needs=needs)


for _fn in (conv1d, conv2d, conv3d, conv_transpose1d, conv_transpose2d, conv_transpose3d):
    _fn.__doc__ = _with_note(getattr(_conv, _fn.__name__), _TENSORS.format(name=_fn.__name__))
for _nd, _fn in ((1, conv1d_backward), (2, conv2d_backward), (3, conv3d_backward)):
    _fn.__doc__ = _with_note(getattr(_conv, _fn.__name__), _UNWRAPPED.format(name=_fn.__name__, nd=_nd))
