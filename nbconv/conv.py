"""Public convolution functions on arrays: validate -> allocate -> dispatch to a backend.

Notation: activations are channels-last, (N, L, C) in 1-D and (N, H, W, C) in 2-D; weights are
spatial-first then in then out, (K, C_in // groups, C_out) and (KH, KW, C_in // groups, C_out);
bias is (C_out,). The operation is cross-correlation (no kernel flip).

Every 1-D call runs the 2-D kernels with H = 1.
"""
from collections import namedtuple

import numpy as np

from ._shapes import (ConvParams, check_dtypes, check_ndim, conv_output_shape, conv_params,
                      transpose_params)

ConvGrads = namedtuple("ConvGrads", ["input", "weight", "bias"])
ConvGrads.__doc__ = "Gradients of a convolution: (input, weight, bias); an entry not asked for is None."
Conv2dGrads = Conv1dGrads = ConvGrads

_NEEDS = ("input", "weight", "bias")
_LAYOUTS = {1: ("(N, L, C)", "(K, C_in // groups, C_out)"),
            2: ("(N, H, W, C)", "(KH, KW, C_in // groups, C_out)")}


def _is_device_array(a):
    return hasattr(a, "__cuda_array_interface__") or type(a).__module__.startswith("numba.cuda")


_OPTIONAL = ("bias", "out")  # the only array arguments that may be None


def _backend(**arrays):
    """The backend module for these arrays (None bias/out ignored); TypeError on non-arrays or a mix."""
    kinds = {}
    for name, a in arrays.items():
        if a is None:
            if name in _OPTIONAL:
                continue
            raise TypeError(f"{name} must be a NumPy array or a CUDA device array, got None")
        if isinstance(a, np.ndarray):
            kinds[name] = "host"
        elif _is_device_array(a):
            kinds[name] = "device"
        else:
            raise TypeError(f"{name} must be a NumPy array or a CUDA device array, got {type(a).__name__}")
    if len(set(kinds.values())) > 1:
        where = ", ".join(f"{name} on {kind}" for name, kind in kinds.items())
        raise TypeError(f"arrays must all be on the host or all on a CUDA device, got {where}")
    # Backends are imported on first use: `import nbconv` stays free of numba (and of CUDA).
    if "device" in kinds.values():
        from . import _cuda
        return _cuda
    from . import _cpu
    return _cpu


def _on_backend(backend, *arrays):
    """The arrays as the backend's array type (CUDA: numba device arrays, zero-copy; None kept)."""
    if not hasattr(backend, "as_device_array"):
        return arrays
    return tuple(None if a is None else backend.as_device_array(a) for a in arrays)


def _result(out, shape, dtype, backend, inputs):
    """A new result array, or `out` after checking it can hold the result."""
    if out is None:
        return backend.empty(shape, dtype)
    if tuple(out.shape) != tuple(shape):
        raise ValueError(f"out has shape {tuple(out.shape)} but the result has shape {tuple(shape)}")
    if np.dtype(out.dtype) != dtype:
        raise TypeError(f"out has dtype {np.dtype(out.dtype)} but the result has dtype {dtype}")
    if isinstance(out, np.ndarray):
        if not out.flags.c_contiguous:
            raise ValueError(f"out must be C-contiguous (out.strides={out.strides})")
        if not out.flags.writeable:
            raise ValueError("out must be writeable")
        for name, a in inputs.items():
            if a is not None and np.may_share_memory(out, a):
                raise ValueError(f"out overlaps {name}; pass a separate array")
    else:
        backend.check_out(out, inputs)
    return out


def _unit_axis(a, axis):
    """A view of `a` with a length-1 axis inserted at `axis` (how 1-D calls reach the 2-D kernels)."""
    if isinstance(a, np.ndarray):
        return np.expand_dims(a, axis)
    from . import _cuda
    return _cuda.unit_axis(a, axis)


def _as_2d(nd, *activations):
    return activations if nd == 2 else tuple(_unit_axis(a, 1) for a in activations)


def _weight_2d(nd, w):
    return w if nd == 2 else _unit_axis(w, 0)


def _params_2d(nd, params):
    if nd == 2:
        return params
    return ConvParams((1,) + params.stride, ((0, 0),) + params.pads, (1,) + params.dilation,
                      params.groups, params.mode)


def _check_bias(bias, c_out):
    if bias is not None and tuple(bias.shape) != (c_out,):
        raise ValueError(f"bias must have shape ({c_out},) (C_out), got {tuple(bias.shape)}")


def _check_layouts(nd, x, w, x_name="x"):
    x_layout, w_layout = _LAYOUTS[nd]
    check_ndim(x, nd + 2, x_name, x_layout)
    check_ndim(w, nd + 2, "w", w_layout)


def _forward(nd, x, w, bias, stride, padding, dilation, groups, padding_mode, out):
    backend = _backend(x=x, w=w, bias=bias, out=out)
    x, w, bias, out_array = _on_backend(backend, x, w, bias, out)
    _check_layouts(nd, x, w)
    dtype = check_dtypes(x=x, w=w, bias=bias, out=out_array)
    params = conv_params(tuple(x.shape), tuple(w.shape), stride=stride, padding=padding, dilation=dilation,
                         groups=groups, padding_mode=padding_mode)
    _check_bias(bias, tuple(w.shape)[-1])
    result = _result(out_array, conv_output_shape(tuple(x.shape), tuple(w.shape), params), dtype, backend,
                     {"x": x, "w": w, "bias": bias})
    (x2, result2), w2 = _as_2d(nd, x, result), _weight_2d(nd, w)
    backend.forward(x2, w2, bias, _params_2d(nd, params), result2)
    return result if out is None else out


def _parse_needs(needs):
    if isinstance(needs, str):
        needs = (needs,)
    try:
        needs = tuple(needs)
    except TypeError:
        raise TypeError(f"needs must be a tuple of names from {_NEEDS}, got {needs!r}") from None
    unknown = [n for n in needs if n not in _NEEDS]
    if unknown:
        raise ValueError(f"needs may only contain {_NEEDS}, got {needs!r}")
    return needs


def _backward(nd, grad_out, x, w, stride, padding, dilation, groups, padding_mode, needs):
    backend = _backend(grad_out=grad_out, x=x, w=w)
    grad_out, x, w = _on_backend(backend, grad_out, x, w)
    needs = _parse_needs(needs)
    _check_layouts(nd, x, w)
    check_ndim(grad_out, nd + 2, "grad_out", _LAYOUTS[nd][0])
    check_dtypes(grad_out=grad_out, x=x, w=w)
    params = conv_params(tuple(x.shape), tuple(w.shape), stride=stride, padding=padding, dilation=dilation,
                         groups=groups, padding_mode=padding_mode)
    y_shape = conv_output_shape(tuple(x.shape), tuple(w.shape), params)
    if tuple(grad_out.shape) != y_shape:
        raise ValueError(f"grad_out has shape {tuple(grad_out.shape)} but the convolution's output has shape "
                         f"{y_shape} (x.shape={tuple(x.shape)}, w.shape={tuple(w.shape)})")
    (gy2, x2), w2, p2 = _as_2d(nd, grad_out, x), _weight_2d(nd, w), _params_2d(nd, params)
    gx = gw = gb = None
    if "input" in needs:
        gx = backend.grad_input(gy2, w2, tuple(x2.shape), p2).reshape(tuple(x.shape))
    if "weight" in needs:
        gw = backend.grad_weight(gy2, x2, tuple(w2.shape), p2).reshape(tuple(w.shape))
    if "bias" in needs:
        gb = backend.grad_bias(gy2)
    return ConvGrads(gx, gw, gb)


def bias_grad(grad_out):
    """dL/dbias for channels-last grad_out (N, L, C) or (N, H, W, C): the sum over every axis but the
    last, in the backend's fixed order (the bias gradient of convolutions and transposed ones)."""
    backend = _backend(grad_out=grad_out)
    (g,) = _on_backend(backend, grad_out)
    return backend.grad_bias(g if len(g.shape) == 4 else _unit_axis(g, 1))


def _transpose(nd, x, w, bias, stride, padding, output_padding, dilation, groups, out):
    backend = _backend(x=x, w=w, bias=bias, out=out)
    x, w, bias, out_array = _on_backend(backend, x, w, bias, out)
    x_layout = _LAYOUTS[nd][0]
    check_ndim(x, nd + 2, "x", x_layout)
    check_ndim(w, nd + 2, "w", "(K, C_out // groups, C_in)" if nd == 1 else "(KH, KW, C_out // groups, C_in)")
    dtype = check_dtypes(x=x, w=w, bias=bias, out=out_array)
    params, output_padding, shape = transpose_params(
        tuple(x.shape), tuple(w.shape), stride=stride, padding=padding, output_padding=output_padding,
        dilation=dilation, groups=groups)
    _check_bias(bias, shape[-1])
    result = _result(out_array, shape, dtype, backend, {"x": x, "w": w, "bias": bias})
    (x2, result2), w2 = _as_2d(nd, x, result), _weight_2d(nd, w)
    backend.transpose(x2, w2, bias, _params_2d(nd, params), (0,) * (2 - nd) + output_padding, result2)
    return result if out is None else out


def conv1d(x, w, bias=None, *, stride=1, padding=0, dilation=1, groups=1, padding_mode="zeros", out=None):
    """1-D cross-correlation of x (N, L, C_in) with w (K, C_in // groups, C_out), plus bias (C_out,).

    Returns (N, L_out, C_out), L_out = (L + pad_before + pad_after - dilation * (K - 1) - 1) // stride + 1.

    >>> import numpy as np, nbconv
    >>> nbconv.conv1d(np.ones((1, 5, 2)), np.ones((3, 2, 1)), padding="same")[0, :, 0]
    array([4., 6., 6., 6., 4.])
    """
    return _forward(1, x, w, bias, stride, padding, dilation, groups, padding_mode, out)


def conv2d(x, w, bias=None, *, stride=1, padding=0, dilation=1, groups=1, padding_mode="zeros", out=None):
    """2-D cross-correlation of x (N, H, W, C_in) with w (KH, KW, C_in // groups, C_out), plus bias.

    Returns (N, H_out, W_out, C_out) with H_out = (H + pad_top + pad_bottom - dilation_h * (KH - 1) - 1)
    // stride_h + 1 (and likewise W_out). See the module docstring for padding forms and modes.

    >>> import numpy as np, nbconv
    >>> x = np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1)
    >>> nbconv.conv2d(x, np.ones((2, 2, 1, 1), np.float32), stride=2)[0, :, :, 0]
    array([[10., 18.],
           [42., 50.]], dtype=float32)
    """
    return _forward(2, x, w, bias, stride, padding, dilation, groups, padding_mode, out)


def conv1d_backward(grad_out, x, w, *, stride=1, padding=0, dilation=1, groups=1, padding_mode="zeros",
                    needs=_NEEDS):
    """Gradients of conv1d w.r.t. x, w and bias given grad_out (N, L_out, C_out): a ConvGrads tuple."""
    return _backward(1, grad_out, x, w, stride, padding, dilation, groups, padding_mode, needs)


def conv2d_backward(grad_out, x, w, *, stride=1, padding=0, dilation=1, groups=1, padding_mode="zeros",
                    needs=_NEEDS):
    """Gradients of conv2d w.r.t. x, w and bias given grad_out (N, H_out, W_out, C_out).

    Returns Conv2dGrads(input, weight, bias); entries not named in `needs` are None.
    """
    return _backward(2, grad_out, x, w, stride, padding, dilation, groups, padding_mode, needs)


def conv_transpose1d(x, w, bias=None, *, stride=1, padding=0, output_padding=0, dilation=1, groups=1, out=None):
    """Transposed 1-D convolution of x (N, L, C_in) with w (K, C_out // groups, C_in): the adjoint of conv1d.

    L_out = (L - 1) * stride - pad_before - pad_after + dilation * (K - 1) + output_padding + 1.
    """
    return _transpose(1, x, w, bias, stride, padding, output_padding, dilation, groups, out)


def conv_transpose2d(x, w, bias=None, *, stride=1, padding=0, output_padding=0, dilation=1, groups=1, out=None):
    """Transposed 2-D convolution of x (N, H, W, C_in) with w (KH, KW, C_out // groups, C_in).

    The adjoint of conv2d with the same weight tensor (TensorFlow's conv2d_transpose filter order);
    output sizes follow PyTorch's ConvTranspose2d, with 0 <= output_padding < max(stride, dilation).
    """
    return _transpose(2, x, w, bias, stride, padding, output_padding, dilation, groups, out)
