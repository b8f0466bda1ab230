"""Differentiable operations on arrays and Tensors.

Each primitive is a forward function on arrays, ``forward(*arrays, **params) -> (result, residuals)``,
followed by its vector-Jacobian product, ``vjp(g, residuals, needs, **params) -> one gradient (or
None) per positional argument`` (``needs[i]`` tells whether argument i wants one), registered
with ``defvjp`` right below it (as in HIPS autograd). Positional arguments may be arrays or
Tensors; keyword arguments are static parameters. A call whose arguments contain no Tensor
returns the plain result; otherwise the result is a Tensor, recorded on the tape when some
argument requires grad. Recording a primitive that has no VJP raises NotImplementedError naming it.

CUDA device arrays (inside Tensors or not) are accepted by the convolution primitives only, which
run the CUDA kernels forward and backward; any other primitive given one raises
NotImplementedError naming it, before computing anything (no silent copy to the host).

Layouts follow the convolutions: activations are channels-last, (N, L, C), (N, H, W, C) and
(N, D, H, W, C) for 1-, 2- and 3-D pooling and (..., C) for batch normalization; ``linear``'s
weight is (in_features, out_features).

The convolutions parse their arguments once per call: on arrays they are exactly nbconv.conv's
public functions; with a Tensor among x, w and bias they validate as those do (same errors), then
record a primitive whose static parameters are the parsed ConvParams, and whose VJP calls
nbconv.conv's internal entry points (forward, input_grad, weight_grad, bias_grad) with them.
"""
import functools
import numbers

import numpy as np

from . import _backend
from . import conv as _conv
from ._device import is_device_array as _is_device_array
from ._shapes import check_dtypes, spatial_tuple
from .tape import Tensor, _device_filled, is_grad_enabled, record

_VJPS = {}


class Primitive:
    """An operation on arrays that the tape differentiates with the VJP registered by defvjp.

    ``on_device=True`` declares that forward and VJP accept CUDA device arrays (see :func:`apply`).
    ``name`` (default: the forward's name without leading underscores) is what errors and the tape show.
    """

    __slots__ = ("name", "forward", "on_device")

    def __init__(self, forward, on_device=False, name=None):
        self.forward = forward
        self.name = forward.__name__.lstrip("_") if name is None else name
        self.on_device = on_device

    def __repr__(self):
        return f"<primitive {self.name}>"


def _unwrap(a):
    return a.data if isinstance(a, Tensor) else a


def defvjp(prim, vjp):
    """Register `vjp` as the vector-Jacobian product of `prim`."""
    _VJPS[prim] = vjp


def apply(prim, *args, **params):
    """prim's forward on the arrays inside `args`; recorded on the tape when a Tensor in `args` requires grad.

    NotImplementedError when an argument or parameter is a CUDA device array and prim is not on_device.
    """
    arrays, any_tensor = [], False
    for a in args:
        if isinstance(a, Tensor):
            any_tensor = True
            arrays.append(a.data)
        else:
            arrays.append(a)
    if not prim.on_device and any(_is_device_array(_unwrap(a)) for a in (*arrays, *params.values())):
        raise NotImplementedError(f"{prim.name} does not accept CUDA device arrays: device arrays are supported by "
                                  "the convolution ops only (conv1d, conv2d, conv3d, conv_transpose1d, "
                                  "conv_transpose2d, conv_transpose3d); copy to the host with Tensor.numpy() first")
    result, residuals = prim.forward(*arrays, **params)
    if not any_tensor:
        return result
    needs = tuple(isinstance(a, Tensor) and a.requires_grad for a in args)
    if not (any(needs) and is_grad_enabled()):
        return Tensor(result)
    vjp = _VJPS.get(prim)
    if vjp is None:
        raise NotImplementedError(f"primitive '{prim.name}' has no VJP registered with defvjp, so it cannot be "
                                  "recorded on the tape (call it under no_grad() or on arrays)")
    return record(prim.name, lambda grads: vjp(grads[0], residuals, needs, **params), args, result)


def _unbroadcast(g, shape):
    """Sum `g` over the axes that broadcasting added or stretched, giving an array of `shape`."""
    if g.shape == shape:
        return g
    extra = g.ndim - len(shape)
    axes = tuple(range(extra)) + tuple(extra + i for i, n in enumerate(shape) if n == 1 and g.shape[extra + i] != 1)
    return g.sum(axis=axes, keepdims=True).reshape(shape)


def _broadcasting(ufunc, a, b):
    try:
        return ufunc(a, b)
    except ValueError:
        raise ValueError(f"{ufunc.__name__}: operands of shapes {np.shape(a)} and {np.shape(b)} cannot be "
                         "broadcast together") from None


def _expand(g, shape, axis, keepdims):
    """`g`, the gradient of a reduction over `axis`, broadcast back to the input's `shape`."""
    if axis is not None and not keepdims:
        g = np.expand_dims(g, axis)
    return np.broadcast_to(g, shape)


def _reduced_count(shape, axis):
    if axis is None:
        return int(np.prod(shape))
    axes = (axis,) if isinstance(axis, numbers.Integral) else axis
    return int(np.prod([shape[a] for a in axes]))


# ---------------------------------------------------------------- elementwise and broadcasting

@Primitive
def _add(a, b):
    return _broadcasting(np.add, a, b), (np.shape(a), np.shape(b))


def _add_vjp(g, shapes, needs):
    return tuple(_unbroadcast(g, s) if n else None for s, n in zip(shapes, needs))


defvjp(_add, _add_vjp)


@Primitive
def _subtract(a, b):
    return _broadcasting(np.subtract, a, b), (np.shape(a), np.shape(b))


def _subtract_vjp(g, shapes, needs):
    return (_unbroadcast(g, shapes[0]) if needs[0] else None,
            _unbroadcast(-g, shapes[1]) if needs[1] else None)


defvjp(_subtract, _subtract_vjp)


@Primitive
def _multiply(a, b):
    return _broadcasting(np.multiply, a, b), (a, b)


def _multiply_vjp(g, res, needs):
    a, b = res
    return (_unbroadcast(g * b, np.shape(a)) if needs[0] else None,
            _unbroadcast(g * a, np.shape(b)) if needs[1] else None)


defvjp(_multiply, _multiply_vjp)


@Primitive
def _divide(a, b):
    out = _broadcasting(np.true_divide, a, b)
    return out, (a, b, out)


def _divide_vjp(g, res, needs):
    a, b, out = res
    return (_unbroadcast(g / b, np.shape(a)) if needs[0] else None,
            _unbroadcast(-g * out / b, np.shape(b)) if needs[1] else None)


defvjp(_divide, _divide_vjp)


@Primitive
def _negative(x):
    return np.negative(x), None


defvjp(_negative, lambda g, res, needs: (-g,))


@Primitive
def _power(x, *, exponent):
    return np.power(x, exponent), x


defvjp(_power, lambda g, x, needs, *, exponent: (g * exponent * np.power(x, exponent - 1),))


@Primitive
def _exp(x):
    out = np.exp(x)
    return out, out


defvjp(_exp, lambda g, out, needs: (g * out,))


@Primitive
def _log(x):
    return np.log(x), x


defvjp(_log, lambda g, x, needs: (g / x,))


@Primitive
def _relu(x):
    out = np.maximum(x, 0)
    return out, out


defvjp(_relu, lambda g, out, needs: (g * (out > 0),))


@Primitive
def _matmul(a, b):
    try:
        return np.matmul(a, b), (a, b)
    except ValueError:
        raise ValueError(f"matmul: shapes {np.shape(a)} and {np.shape(b)} are not aligned (the last axis of the "
                         "first must match the second-to-last axis of the second)") from None


def _matmul_vjp(g, res, needs):
    a, b = res
    a2 = a[None, :] if a.ndim == 1 else a
    b2 = b[:, None] if b.ndim == 1 else b
    g2 = np.expand_dims(g, -1) if b.ndim == 1 else g
    g2 = np.expand_dims(g2, -2) if a.ndim == 1 else g2
    return (_unbroadcast(g2 @ np.swapaxes(b2, -1, -2), a2.shape).reshape(a.shape) if needs[0] else None,
            _unbroadcast(np.swapaxes(a2, -1, -2) @ g2, b2.shape).reshape(b.shape) if needs[1] else None)


defvjp(_matmul, _matmul_vjp)

# ---------------------------------------------------------------- reductions and shapes


@Primitive
def _sum(x, *, axis, keepdims):
    return np.asarray(np.sum(x, axis=axis, keepdims=keepdims)), np.shape(x)


defvjp(_sum, lambda g, shape, needs, *, axis, keepdims: (_expand(g, shape, axis, keepdims),))


@Primitive
def _mean(x, *, axis, keepdims):
    return np.asarray(np.mean(x, axis=axis, keepdims=keepdims)), np.shape(x)


def _mean_vjp(g, shape, needs, *, axis, keepdims):
    return (_expand(g / _reduced_count(shape, axis), shape, axis, keepdims),)


defvjp(_mean, _mean_vjp)


@Primitive
def _max(x, *, axis, keepdims):
    top = np.max(x, axis=axis, keepdims=True)
    out = top if keepdims else (top.reshape(()) if axis is None else np.squeeze(top, axis=axis))
    return np.asarray(out), (x, top)


def _max_vjp(g, res, needs, *, axis, keepdims):
    """The gradient goes to the maxima, split evenly between ties (like torch.amax)."""
    x, top = res
    mask = x == top
    share = _expand(g, x.shape, axis, keepdims) / np.sum(mask, axis=axis, keepdims=True)
    return (np.where(mask, share, 0).astype(x.dtype, copy=False),)


defvjp(_max, _max_vjp)


@Primitive
def _reshape(x, *, shape):
    try:
        return np.reshape(x, shape), np.shape(x)
    except ValueError:
        raise ValueError(f"cannot reshape an array of shape {np.shape(x)} into shape {shape}") from None


defvjp(_reshape, lambda g, shape_in, needs, *, shape: (np.reshape(g, shape_in),))


@Primitive
def _transpose(x, *, axes):
    try:
        return np.transpose(x, axes), None
    except (ValueError, np.exceptions.AxisError):
        raise ValueError(f"axes {axes} are not a permutation of the axes of an array of shape {np.shape(x)}") from None


def _transpose_vjp(g, res, needs, *, axes):
    return (np.transpose(g) if axes is None else np.transpose(g, np.argsort([a % g.ndim for a in axes])),)


defvjp(_transpose, _transpose_vjp)


def add(a, b):
    """a + b with broadcasting."""
    return apply(_add, a, b)


def subtract(a, b):
    """a - b with broadcasting."""
    return apply(_subtract, a, b)


def multiply(a, b):
    """a * b with broadcasting."""
    return apply(_multiply, a, b)


def divide(a, b):
    """a / b with broadcasting."""
    return apply(_divide, a, b)


def negative(x):
    """-x."""
    return apply(_negative, x)


def power(x, exponent):
    """x ** exponent for a scalar exponent."""
    if isinstance(exponent, Tensor) or not isinstance(exponent, numbers.Real):
        raise TypeError(f"the exponent of ** must be a real scalar, got {type(exponent).__name__}")
    return apply(_power, x, exponent=exponent)


def exp(x):
    """Elementwise e ** x."""
    return apply(_exp, x)


def log(x):
    """Elementwise natural logarithm."""
    return apply(_log, x)


def relu(x):
    """max(x, 0) elementwise (the gradient at 0 is 0)."""
    return apply(_relu, x)


def matmul(a, b):
    """a @ b (NumPy's matmul rules, batched and 1-D operands included)."""
    return apply(_matmul, a, b)


def _axis(axis):
    return tuple(axis) if isinstance(axis, list) else axis


def sum(x, axis=None, keepdims=False):  # noqa: A001 (Tensor.sum)
    """Sum over `axis` (None: all axes)."""
    return apply(_sum, x, axis=_axis(axis), keepdims=keepdims)


def mean(x, axis=None, keepdims=False):
    """Mean over `axis` (None: all axes)."""
    return apply(_mean, x, axis=_axis(axis), keepdims=keepdims)


def max(x, axis=None, keepdims=False):  # noqa: A001 (Tensor.max)
    """Maximum over `axis` (None: all axes); ties share the gradient evenly."""
    return apply(_max, x, axis=_axis(axis), keepdims=keepdims)


def reshape(x, *shape):
    """x with a new shape (``reshape(x, 2, 3)`` or ``reshape(x, (2, 3))``; one entry may be -1)."""
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = shape[0]
    return apply(_reshape, x, shape=tuple(shape))


def transpose(x, *axes):
    """x with its axes permuted (reversed when no axes are given)."""
    if len(axes) == 1 and isinstance(axes[0], (tuple, list)):
        axes = axes[0]
    return apply(_transpose, x, axes=tuple(axes) if axes else None)


# ---------------------------------------------------------------- neural-network functions

@Primitive
def _linear(x, w, bias):
    if np.ndim(w) != 2 or np.ndim(x) < 1 or np.shape(x)[-1] != np.shape(w)[0]:
        raise ValueError(f"linear: x has shape {np.shape(x)} and w has shape {np.shape(w)}; w must be "
                         "(in_features, out_features) with in_features == x.shape[-1]")
    if bias is not None and np.shape(bias) != (np.shape(w)[1],):
        raise ValueError(f"linear: bias has shape {np.shape(bias)} but w has shape {np.shape(w)}; bias must be "
                         f"({np.shape(w)[1]},)")
    out = x @ w
    if bias is not None:
        out += bias
    return out, (x, w)


def _linear_vjp(g, res, needs):
    x, w = res
    g2 = g.reshape(-1, w.shape[1])
    return (g @ w.T if needs[0] else None,
            x.reshape(-1, w.shape[0]).T @ g2 if needs[1] else None,
            g2.sum(axis=0) if needs[2] else None)


defvjp(_linear, _linear_vjp)


def linear(x, w, bias=None):
    """x @ w + bias, with w (in_features, out_features) and bias (out_features,)."""
    return apply(_linear, x, w, bias)


@Primitive
def _log_softmax(x, *, axis):
    shifted = x - np.max(x, axis=axis, keepdims=True)
    out = shifted - np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True))
    return out, out


defvjp(_log_softmax, lambda g, out, needs, *, axis: (g - np.exp(out) * np.sum(g, axis=axis, keepdims=True),))


def log_softmax(x, axis=-1):
    """log(softmax(x)) along `axis`, computed stably."""
    return apply(_log_softmax, x, axis=axis)


@Primitive
def _cross_entropy(logits, labels):
    labels = np.asarray(labels)
    if np.ndim(logits) != 2:
        raise ValueError(f"cross_entropy: logits must be 2-D (N, classes), got shape {np.shape(logits)}")
    n, classes = logits.shape
    if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"cross_entropy: labels must be integers of shape ({n},) for logits of shape "
                         f"{logits.shape}, got {labels.dtype} labels of shape {labels.shape}")
    if n == 0:
        raise ValueError(f"cross_entropy: the batch is empty (logits of shape {logits.shape})")
    if labels.min() < 0 or labels.max() >= classes:
        raise ValueError(f"cross_entropy: labels must lie in [0, {classes}), got values from {labels.min()} "
                         f"to {labels.max()}")
    logp, _ = _log_softmax.forward(logits, axis=1)
    rows = np.arange(n)
    loss = np.asarray(-np.mean(logp[rows, labels]), dtype=logits.dtype)
    return loss, (logp, labels)


def _cross_entropy_vjp(g, res, needs):
    logp, labels = res
    grad = np.exp(logp)
    grad[np.arange(len(labels)), labels] -= 1
    return grad * (g / len(labels)), None


defvjp(_cross_entropy, _cross_entropy_vjp)


def cross_entropy(logits, labels):
    """Mean over the batch of -log_softmax(logits)[n, labels[n]]; logits (N, classes), int labels (N,)."""
    return apply(_cross_entropy, logits, labels)


_SPATIAL_NAMES = {1: "L", 2: "H, W", 3: "D, H, W"}


def _array_operand(x, op):
    """The array behind x (a Tensor, ndarray or device array); TypeError naming op otherwise."""
    data = x.data if isinstance(x, Tensor) else x
    if not (isinstance(data, np.ndarray) or _is_device_array(data)):
        raise TypeError(f"{op}: x must be a NumPy array or a Tensor, got {type(x).__name__}")
    return data


def _pool_params(x, kernel_size, stride, padding, nd, name):
    """Validated (kernel, stride, pads, out_spatial) of an nd-D pooling of x (N, *spatial, C), one
    entry per spatial dim."""
    if np.ndim(x) != nd + 2:
        raise ValueError(f"{name}: x must be {nd + 2}-D (N, {_SPATIAL_NAMES[nd]}, C), got shape {np.shape(x)}")
    check_dtypes(x=x)
    kernel = spatial_tuple(kernel_size, nd, "kernel_size")
    stride = kernel if stride is None else spatial_tuple(stride, nd, "stride")
    pads = spatial_tuple(padding, nd, "padding", minimum=0)
    if any(2 * p > k for p, k in zip(pads, kernel)):
        raise ValueError(f"{name}: padding {pads} must be at most half of kernel_size {kernel}")
    spatial = tuple(np.shape(x)[1:-1])
    if any(n == 0 for n in spatial):
        raise ValueError(f"{name}: x has an empty spatial dim (x.shape={np.shape(x)})")
    if any(n + 2 * p < k for n, p, k in zip(spatial, pads, kernel)):
        raise ValueError(f"{name}: kernel_size {kernel} is larger than the padded input (x.shape={np.shape(x)}, "
                         f"padding={pads})")
    out_spatial = tuple((n + 2 * p - k) // s + 1 for n, p, k, s in zip(spatial, pads, kernel, stride))
    return kernel, stride, pads, out_spatial


# One forward and one VJP per pooling kind serve every dimension count (the kernels in nbconv._pool
# view each call as 3-D); the primitives differ only in the name that errors and the tape show.

def _max_pool(x, *, kernel, stride, pads, out_spatial):
    from . import _pool  # kernels load numba: imported on first use, not with nbconv
    out, argmax = _pool.max_pool(np.ascontiguousarray(x), kernel, stride, pads, out_spatial)
    return out, (argmax, x.shape, x.dtype)


def _max_pool_vjp(g, res, needs, **params):
    from . import _pool  # kernels load numba: imported on first use, not with nbconv
    argmax, shape, dtype = res
    return (_pool.max_pool_grad(np.ascontiguousarray(g, dtype=dtype), argmax, shape, dtype),)


def _avg_pool(x, *, kernel, stride, pads, out_spatial):
    from . import _pool  # kernels load numba: imported on first use, not with nbconv
    return _pool.avg_pool(np.ascontiguousarray(x), kernel, stride, pads, out_spatial), (x.shape, x.dtype)


def _avg_pool_vjp(g, res, needs, *, kernel, stride, pads, out_spatial):
    from . import _pool  # kernels load numba: imported on first use, not with nbconv
    shape, dtype = res
    return (_pool.avg_pool_grad(np.ascontiguousarray(g, dtype=dtype), kernel, stride, pads, shape, dtype),)


_MAX_POOL = {nd: Primitive(_max_pool, name=f"max_pool{nd}d") for nd in (1, 2, 3)}
_AVG_POOL = {nd: Primitive(_avg_pool, name=f"avg_pool{nd}d") for nd in (1, 2, 3)}
for _nd in (1, 2, 3):
    defvjp(_MAX_POOL[_nd], _max_pool_vjp)
    defvjp(_AVG_POOL[_nd], _avg_pool_vjp)


def _pool(prim, nd, x, kernel_size, stride, padding):
    data = _array_operand(x, prim.name)
    kernel, stride, pads, out_spatial = _pool_params(data, kernel_size, stride, padding, nd, prim.name)
    return apply(prim, x, kernel=kernel, stride=stride, pads=pads, out_spatial=out_spatial)


_POOL_ARGS = """
    kernel_size, stride and padding: an int or one int per spatial dim; stride defaults to
    kernel_size; padding is at most half the kernel. x is an ndarray or a Tensor (float32 or
    float64); arguments are checked (ValueError/TypeError naming them) before any kernel runs.
    """


def max_pool1d(x, kernel_size, stride=None, padding=0):
    """Maximum over kernel_size windows of x (N, L, C); padding never wins; NaN propagates. The
    gradient goes to the first maximum of each window.
    """
    return _pool(_MAX_POOL[1], 1, x, kernel_size, stride, padding)


def max_pool2d(x, kernel_size, stride=None, padding=0):
    """Maximum over kernel_size windows of x (N, H, W, C); padding never wins; NaN propagates. The
    gradient goes to the first maximum of each window (in row-major window order).
    """
    return _pool(_MAX_POOL[2], 2, x, kernel_size, stride, padding)


def max_pool3d(x, kernel_size, stride=None, padding=0):
    """Maximum over kernel_size windows of x (N, D, H, W, C); padding never wins; NaN propagates.
    The gradient goes to the first maximum of each window (in row-major window order).
    """
    return _pool(_MAX_POOL[3], 3, x, kernel_size, stride, padding)


def avg_pool1d(x, kernel_size, stride=None, padding=0):
    """Mean over kernel_size windows of x (N, L, C); padded positions count as zeros in the mean
    (PyTorch's default count_include_pad=True).
    """
    return _pool(_AVG_POOL[1], 1, x, kernel_size, stride, padding)


def avg_pool2d(x, kernel_size, stride=None, padding=0):
    """Mean over kernel_size windows of x (N, H, W, C); padded positions count as zeros in the mean
    (PyTorch's default count_include_pad=True).
    """
    return _pool(_AVG_POOL[2], 2, x, kernel_size, stride, padding)


def avg_pool3d(x, kernel_size, stride=None, padding=0):
    """Mean over kernel_size windows of x (N, D, H, W, C); padded positions count as zeros in the
    mean (PyTorch's default count_include_pad=True).
    """
    return _pool(_AVG_POOL[3], 3, x, kernel_size, stride, padding)


for _fn in (max_pool1d, max_pool2d, max_pool3d, avg_pool1d, avg_pool2d, avg_pool3d):
    _fn.__doc__ += _POOL_ARGS


def _channel_vector(v, channels, name, x_shape):
    if v is None:
        return None
    v = v.data if isinstance(v, Tensor) else v
    if np.shape(v) != (channels,):
        raise ValueError(f"batch_norm: {name} has shape {np.shape(v)} but x has shape {x_shape}; "
                         f"it must be ({channels},)")
    return v


@Primitive
def _batch_norm(x, weight, bias, *, running_mean, running_var, training, momentum, eps):
    from . import _pool  # kernels load numba: imported on first use, not with nbconv
    channels = x.shape[-1]
    x2 = np.ascontiguousarray(x).reshape(-1, channels)
    rows = x2.shape[0]
    zeros = np.zeros(channels)
    if training:
        total, _ = _pool.channel_sums(x2, x2, zeros, zeros)
        mean = total / rows
        _, squares = _pool.channel_sums(x2, x2, mean, mean)
        var = squares / rows
        if running_mean is not None:
            running_mean[...] = (1 - momentum) * running_mean + momentum * mean
        if running_var is not None:
            running_var[...] = (1 - momentum) * running_var + momentum * var * (rows / (rows - 1))
    else:
        mean = np.asarray(running_mean, dtype=np.float64)
        var = np.asarray(running_var, dtype=np.float64)
    invstd = 1.0 / np.sqrt(var + eps)
    w = np.ones(channels) if weight is None else np.asarray(weight, dtype=np.float64)
    b = zeros if bias is None else np.asarray(bias, dtype=np.float64)
    scale = w * invstd
    y = _pool.channel_affine(x2, x2, scale, zeros, b - mean * scale).reshape(x.shape)
    return y, (x2, mean, invstd, w)


def _batch_norm_vjp(g, res, needs, *, training, **params):
    from . import _pool  # kernels load numba: imported on first use, not with nbconv
    x2, mean, invstd, w = res
    rows, channels = x2.shape
    g2 = np.ascontiguousarray(g, dtype=x2.dtype).reshape(-1, channels)
    zeros = np.zeros(channels)
    sum_g, sum_g_centered = _pool.channel_sums(g2, x2, zeros, mean)
    gx = None
    if needs[0]:
        k = w * invstd
        if training:
            coef = -w * invstd ** 3 * sum_g_centered / rows
            shift = -k * sum_g / rows - coef * mean
        else:
            coef, shift = zeros, zeros
        gx = _pool.channel_affine(g2, x2, k, coef, shift).reshape(g.shape)
    return (gx,
            sum_g_centered * invstd if needs[1] else None,
            sum_g if needs[2] else None)


defvjp(_batch_norm, _batch_norm_vjp)


def batch_norm(x, weight, bias, running_mean=None, running_var=None, training=True, momentum=0.1, eps=1e-5):
    """Normalize x (..., C) per channel over all other axes, then scale by weight and shift by bias (C,).

    training=True uses the batch statistics (biased variance) and, when running_mean/running_var are
    given (arrays or Tensors of shape (C,)), updates them in place:
    running = (1 - momentum) * running + momentum * batch (unbiased variance), as PyTorch does.
    training=False normalizes with running_mean and running_var. weight or bias may be None.
    """
    data = _array_operand(x, "batch_norm")
    for name, value in (("momentum", momentum), ("eps", eps)):
        if not isinstance(value, numbers.Real) or not 0 <= value < float("inf") or (name == "momentum" and value > 1):
            raise ValueError(f"batch_norm: {name} must be a real number in "
                             f"{'[0, 1]' if name == 'momentum' else '[0, inf)'}, got {value!r}")
    if np.ndim(data) < 2:
        raise ValueError(f"batch_norm: x must have a batch axis and a channel axis, got shape {np.shape(data)}")
    check_dtypes(x=data)
    channels = tuple(data.shape)[-1]
    running_mean = _channel_vector(running_mean, channels, "running_mean", data.shape)
    running_var = _channel_vector(running_var, channels, "running_var", data.shape)
    _channel_vector(weight, channels, "weight", data.shape)
    _channel_vector(bias, channels, "bias", data.shape)
    if training and data.size // channels < 2:
        raise ValueError(f"batch_norm: training needs more than one value per channel, got x.shape={data.shape}")
    if not training and (running_mean is None or running_var is None):
        raise ValueError("batch_norm: training=False needs running_mean and running_var")
    return apply(_batch_norm, x, weight, bias, running_mean=running_mean, running_var=running_var,
                 training=bool(training), momentum=momentum, eps=eps)


# ---------------------------------------------------------------- convolutions

_PUBLIC = {(kind, nd): getattr(_conv, f"{kind}{nd}d") for kind in ("conv", "conv_transpose") for nd in (1, 2, 3)}


@functools.partial(Primitive, on_device=True)
def _convolution(x, w, bias, *, params, out):
    return _conv.forward(x, w, bias, params, out), (x, w)


def _convolution_vjp(g, res, needs, *, params, out):
    x, w = res
    return (_conv.input_grad(g, w, x.shape, params) if needs[0] else None,
            _conv.weight_grad(g, x, w.shape, params) if needs[1] else None,
            _conv.bias_grad(g) if needs[2] else None)


defvjp(_convolution, _convolution_vjp)


@functools.partial(Primitive, on_device=True)
def _convolution_transpose(x, w, bias, *, params, output_padding, shape, out):
    return _conv.transpose(x, w, bias, params, output_padding, shape, out), (x, w)


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
    Other dims, and g itself when no dim needs it, are left as they are."""
    keep, pads, changed = [slice(None)], [], False
    for n, m, (before, after), s, op in zip(g.shape[1:-1], x_shape[1:-1], params.pads, params.stride, output_padding):
        if op < s:
            keep.append(slice(None))
            pads.append((before, after))
            continue
        kept = n - (op - after if op > after else 0)  # (this module's max is the Tensor op)
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
    if _is_device_array(a):
        return _device_filled(_backend.select(x=a), tuple(a.shape), np.dtype(a.dtype), 0)
    return np.zeros(a.shape, a.dtype)


def _convolution_transpose_vjp(g, res, needs, *, params, output_padding, shape, out):
    """conv_transpose(x, w) is the adjoint of conv(., w), so its input gradient is conv(g, w), and
    <g, conv_transpose(x, w)> = <conv(g, w), x> makes its weight gradient the weight gradient of
    conv(g, w) for the output gradient x (roles swapped); both on the part of g that x reaches (see
    _transpose_adjoint). Device arrays stay on the device."""
    x, w = res
    reach, adjoint = _transpose_adjoint(g, tuple(x.shape), params, output_padding)
    gx = gw = gb = None
    if needs[0]:
        gx = _zeros_like(x) if reach is None else _conv.forward(reach, w, None, adjoint)
    if needs[1]:
        gw = _zeros_like(w) if reach is None else _conv.weight_grad(x, reach, w.shape, adjoint)
    if needs[2]:
        gb = _conv.bias_grad(g)
    return gx, gw, gb


defvjp(_convolution_transpose, _convolution_transpose_vjp)


def _with_tensors(args, arrays):
    """`args` with each non-Tensor replaced by its parsed array (Tensors are kept: the tape needs them)."""
    return tuple(a if isinstance(a, Tensor) else b for a, b in zip(args, arrays))


def _conv_call(nd, x, w, bias, out, **params):
    if not (isinstance(x, Tensor) or isinstance(w, Tensor) or isinstance(bias, Tensor)):
        return _PUBLIC["conv", nd](x, w, bias, out=out, **params)
    arrays, parsed = _conv.parse_forward(nd, _unwrap(x), _unwrap(w), _unwrap(bias), _unwrap(out), **params)
    return apply(_convolution, *_with_tensors((x, w, bias), arrays), params=parsed, out=arrays[3])


def _transpose_call(nd, x, w, bias, out, **params):
    if not (isinstance(x, Tensor) or isinstance(w, Tensor) or isinstance(bias, Tensor)):
        return _PUBLIC["conv_transpose", nd](x, w, bias, out=out, **params)
    arrays, parsed, output_padding, shape = _conv.parse_transpose(nd, _unwrap(x), _unwrap(w), _unwrap(bias),
                                                             _unwrap(out), **params)
    return apply(_convolution_transpose, *_with_tensors((x, w, bias), arrays), params=parsed,
                 output_padding=output_padding, shape=shape, out=arrays[3])


def _tensor_note(fn):
    return (fn.__doc__.rstrip() + "\n\n    Accepts Tensors too: the result is then a Tensor, recorded on the tape when an "
            f"input\n    requires grad. With arrays only, this is exactly nbconv.conv.{fn.__name__}.\n")


def conv1d(x, w, bias=None, *, stride=1, padding=0, dilation=1, groups=1, padding_mode="zeros", out=None):
    return _conv_call(1, x, w, bias, out, stride=stride, padding=padding, dilation=dilation, groups=groups,
                      padding_mode=padding_mode)


def conv2d(x, w, bias=None, *, stride=1, padding=0, dilation=1, groups=1, padding_mode="zeros", out=None):
    return _conv_call(2, x, w, bias, out, stride=stride, padding=padding, dilation=dilation, groups=groups,
                      padding_mode=padding_mode)


def conv3d(x, w, bias=None, *, stride=1, padding=0, dilation=1, groups=1, padding_mode="zeros", out=None):
    return _conv_call(3, x, w, bias, out, stride=stride, padding=padding, dilation=dilation, groups=groups,
                      padding_mode=padding_mode)


def conv_transpose1d(x, w, bias=None, *, stride=1, padding=0, output_padding=0, dilation=1, groups=1, out=None):
    return _transpose_call(1, x, w, bias, out, stride=stride, padding=padding, output_padding=output_padding,
                           dilation=dilation, groups=groups)


def conv_transpose2d(x, w, bias=None, *, stride=1, padding=0, output_padding=0, dilation=1, groups=1, out=None):
    return _transpose_call(2, x, w, bias, out, stride=stride, padding=padding, output_padding=output_padding,
                           dilation=dilation, groups=groups)


def conv_transpose3d(x, w, bias=None, *, stride=1, padding=0, output_padding=0, dilation=1, groups=1, out=None):
    return _transpose_call(3, x, w, bias, out, stride=stride, padding=padding, output_padding=output_padding,
                           dilation=dilation, groups=groups)


for _fn in (conv1d, conv2d, conv3d, conv_transpose1d, conv_transpose2d, conv_transpose3d):
    _fn.__doc__ = _tensor_note(getattr(_conv, _fn.__name__))

# ---------------------------------------------------------------- Tensor operators and methods

_METHODS = {
    "__add__": add, "__radd__": lambda a, b: add(b, a),
    "__sub__": subtract, "__rsub__": lambda a, b: subtract(b, a),
    "__mul__": multiply, "__rmul__": lambda a, b: multiply(b, a),
    "__truediv__": divide, "__rtruediv__": lambda a, b: divide(b, a),
    "__matmul__": matmul, "__rmatmul__": lambda a, b: matmul(b, a),
    "__neg__": negative, "__pow__": power,
    "sum": sum, "mean": mean, "max": max, "reshape": reshape, "transpose": transpose,
    "relu": relu, "exp": exp, "log": log,
}
for _name, _method in _METHODS.items():
    setattr(Tensor, _name, _method)


def conv1d_backward(grad_out, x, w, **params):
    """nbconv.conv.conv1d_backward on the arrays behind Tensors or arrays (not recorded: returns arrays)."""
    return _conv.conv1d_backward(_unwrap(grad_out), _unwrap(x), _unwrap(w), **params)


def conv2d_backward(grad_out, x, w, **params):
    """nbconv.conv.conv2d_backward on the arrays behind Tensors or arrays (not recorded: returns arrays)."""
    return _conv.conv2d_backward(_unwrap(grad_out), _unwrap(x), _unwrap(w), **params)


def conv3d_backward(grad_out, x, w, **params):
    """nbconv.conv.conv3d_backward on the arrays behind Tensors or arrays (not recorded: returns arrays)."""
    return _conv.conv3d_backward(_unwrap(grad_out), _unwrap(x), _unwrap(w), **params)
