"""Neural-network functions on the tape: linear, softmax, log_softmax, cross_entropy, dropout,
batch_norm and pooling. Layouts follow the convolutions: activations are channels-last, (N, L, C),
(N, H, W, C) and (N, D, H, W, C) for 1-, 2- and 3-D pooling and (..., C) for batch normalization;
``linear``'s weight is (in_features, out_features). Every VJP works on arrays and on Tensors (see
nbconv.ops_core); the pooling gradients are primitives whose own VJPs are the pooling's
(avg_pool_grad is avg_pool's adjoint, max_pool_grad scatters where max_pool_gather gathers).

Every function takes arrays or Tensors and returns an ndarray when no argument is a Tensor,
otherwise a Tensor (recorded on the tape when an argument requires grad).
"""
from __future__ import annotations

import numbers
from typing import Any, Sequence

import numpy as np
from numpy.typing import NDArray

from ._shapes import check_dtypes, spatial_tuple
from .ops_core import Primitive, TensorOrArrayT, Values, apply, array_operand, defvjp, is_graph
from .ops_math import exp, multiply
from .tape import Tensor

# ---------------------------------------------------------------- linear, softmax, cross_entropy


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
    k, m = tuple(w.shape)
    g2 = g.reshape(-1, m)
    return (g @ w.T if needs[0] else None,
            x.reshape(-1, k).T @ g2 if needs[1] else None,
            g2.sum(axis=0) if needs[2] else None)


defvjp(_linear, _linear_vjp)


def linear(x: TensorOrArrayT | Values, w: TensorOrArrayT | Values,
           bias: TensorOrArrayT | Values | None = None) -> TensorOrArrayT:
    """x @ w + bias: a fully connected layer.

    Parameters
    ----------
    x : ndarray or Tensor, shape (..., in_features)
    w : ndarray or Tensor, shape (in_features, out_features)
        Note the order: the transpose of torch.nn.Linear's weight.
    bias : ndarray or Tensor, shape (out_features,), optional

    Returns
    -------
    ndarray or Tensor
        A Tensor when an argument is one (recorded when it requires grad), else an ndarray.
        Of shape (..., out_features).

    Raises
    ------
    ValueError
        Shapes that do not fit, quoting them.

    Examples
    --------
    >>> import numpy as np, nbconv
    >>> x = np.array([[1.0, 2.0]])
    >>> w = nbconv.Tensor(np.array([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]]), requires_grad=True)
    >>> y = nbconv.linear(x, w, np.array([0.0, 0.0, 10.0]))
    >>> y
    Tensor(array([[ 1.,  2., 13.]]), requires_grad=True)
    >>> y.sum().backward()
    >>> w.grad
    array([[1., 1., 1.],
           [2., 2., 2.]])
    """
    return apply(_linear, x, w, bias)


@Primitive
def _log_softmax(x, *, axis):
    shifted = x - np.max(x, axis=axis, keepdims=True)
    out = shifted - np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True))
    return out, out


defvjp(_log_softmax, lambda g, out, needs, *, axis: (g - exp(out) * g.sum(axis=axis, keepdims=True),))


def log_softmax(x: TensorOrArrayT | Values, axis: int = -1) -> TensorOrArrayT:
    """log(softmax(x)) along `axis`, computed stably (the maximum is subtracted first).

    Parameters
    ----------
    x : ndarray or Tensor
        Floating-point values of any shape.
    axis : int, default -1
        The axis to normalize over.

    Returns
    -------
    ndarray or Tensor
        A Tensor when an argument is one (recorded when it requires grad), else an ndarray.

    Examples
    --------
    >>> import numpy as np, nbconv
    >>> nbconv.log_softmax(np.array([[0.0, 0.0], [1000.0, 1000.0]]))
    array([[-0.69314718, -0.69314718],
           [-0.69314718, -0.69314718]])
    """
    return apply(_log_softmax, x, axis=axis)


@Primitive
def _softmax(x, *, axis):
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    out = e / np.sum(e, axis=axis, keepdims=True)
    return out, out


defvjp(_softmax, lambda g, out, needs, *, axis: (out * (g - (g * out).sum(axis=axis, keepdims=True)),))


def softmax(x: TensorOrArrayT | Values, axis: int = -1) -> TensorOrArrayT:
    """exp(x) / sum(exp(x)) along `axis`, computed stably (the maximum is subtracted first).

    Parameters
    ----------
    x : ndarray or Tensor
        Floating-point values of any shape.
    axis : int, default -1
        The axis to normalize over.

    Returns
    -------
    ndarray or Tensor
        A Tensor when an argument is one (recorded when it requires grad), else an ndarray.

    Examples
    --------
    >>> import numpy as np, nbconv
    >>> nbconv.softmax(np.array([[0.0, np.log(3.0)], [1000.0, 1000.0]]))
    array([[0.25, 0.75],
           [0.5 , 0.5 ]])
    """
    return apply(_softmax, x, axis=axis)


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
    return loss, (logits, logp, labels)


def _cross_entropy_vjp(g, res, needs):
    logits, logp, labels = res
    n = len(labels)
    if is_graph(g):  # the gradient (softmax - onehot) / n as a function of the logits
        onehot = np.zeros(logp.shape, logp.dtype)
        onehot[np.arange(n), labels] = 1
        return (softmax(logits, axis=1) - onehot) * (g / n), None
    grad = np.exp(logp)
    grad[np.arange(n), labels] -= 1
    return grad * (g / n), None


defvjp(_cross_entropy, _cross_entropy_vjp)


def cross_entropy(logits: TensorOrArrayT | Values, labels: TensorOrArrayT | Values) -> TensorOrArrayT:
    """The mean over the batch of ``-log_softmax(logits)[n, labels[n]]`` (torch's cross_entropy).

    Parameters
    ----------
    logits : ndarray or Tensor, shape (N, classes)
        Unnormalized scores, N >= 1.
    labels : int array or Tensor, shape (N,)
        The class of each row, in [0, classes). Constants: they get no gradient.

    Returns
    -------
    ndarray or Tensor
        A 0-d array in the dtype of logits (a Tensor when an argument is one).

    Raises
    ------
    ValueError
        logits not 2-D or empty, labels of another shape, not integers, or out of range.

    Examples
    --------
    >>> import numpy as np, nbconv
    >>> logits = nbconv.Tensor(np.zeros((2, 4)), requires_grad=True)
    >>> loss = nbconv.cross_entropy(logits, np.array([1, 3]))
    >>> round(loss.item(), 6)                  # log(4)
    1.386294
    >>> loss.backward()
    >>> logits.grad
    array([[ 0.125, -0.375,  0.125,  0.125],
           [ 0.125,  0.125,  0.125, -0.375]])
    """
    return apply(_cross_entropy, logits, labels)


def dropout(x: TensorOrArrayT | Values, p: float, training: bool = True,
            rng: np.random.Generator | None = None) -> TensorOrArrayT:
    """Inverted dropout: each element of x is zeroed with probability p and the others are scaled by
    1 / (1 - p), so the expectation is unchanged. The gradient is masked and scaled the same way.

    Parameters
    ----------
    x : ndarray or Tensor
        float32 or float64 (TypeError otherwise).
    p : float
        The probability of zeroing, in [0, 1] (ValueError otherwise).
    training : bool, default True
        False returns x itself (as does p == 0).
    rng : numpy.random.Generator, optional
        The mask is ``rng.random(x.shape) >= p``, so a seeded generator reproduces it; None uses a
        fresh one. TypeError for anything else.

    Returns
    -------
    ndarray or Tensor
        A Tensor when an argument is one (recorded when it requires grad), else an ndarray.

    Examples
    --------
    >>> import numpy as np, nbconv
    >>> nbconv.dropout(np.ones(6), 0.5, rng=np.random.default_rng(0))
    array([2., 0., 0., 0., 2., 2.])
    >>> x = np.ones(3)
    >>> nbconv.dropout(x, 0.5, training=False) is x
    True
    """
    if isinstance(p, (bool, np.bool_)) or not isinstance(p, numbers.Real) or not 0 <= p <= 1:
        raise ValueError(f"dropout: p must be a probability in [0, 1], got {p!r}")
    if rng is not None and not isinstance(rng, np.random.Generator):
        raise TypeError(f"dropout: rng must be a numpy.random.Generator or None, got {type(rng).__name__}")
    data = array_operand(x, "dropout")
    check_dtypes(x=data)
    if not training or p == 0:
        return x
    rng = np.random.default_rng() if rng is None else rng
    keep = rng.random(tuple(data.shape)) >= p
    scale = np.zeros(keep.shape, data.dtype) if p == 1 else (keep / (1 - p)).astype(data.dtype)
    return multiply(x, scale)


# ---------------------------------------------------------------- pooling

_SPATIAL_NAMES = {1: "L", 2: "H, W", 3: "D, H, W"}


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
    argmax, shape, dtype = res
    return (apply(_max_pool_grad, g, argmax=argmax, shape=shape, dtype=dtype),)


@Primitive
def _max_pool_grad(g, *, argmax, shape, dtype):
    """Scatters g (N, *out, C) to the window maxima recorded in argmax (flat spatial indices)."""
    from . import _pool
    return _pool.max_pool_grad(np.ascontiguousarray(g, dtype=dtype), argmax, shape, dtype), None


@Primitive
def _max_pool_gather(u, *, argmax):
    """The adjoint of max_pool_grad: u (N, *spatial, C) read at argmax, giving (N, *out, C)."""
    n, c = u.shape[0], u.shape[-1]
    flat = np.reshape(u, (n, -1, c))
    return np.take_along_axis(flat, argmax.reshape(n, -1, c), axis=1).reshape(argmax.shape), u.shape


defvjp(_max_pool_grad, lambda u, res, needs, *, argmax, shape, dtype: (apply(_max_pool_gather, u, argmax=argmax),))
defvjp(_max_pool_gather, lambda g, shape, needs, *, argmax: (apply(_max_pool_grad, g, argmax=argmax, shape=shape,
                                                                   dtype=np.dtype(g.dtype)),))


def _avg_pool(x, *, kernel, stride, pads, out_spatial):
    from . import _pool  # kernels load numba: imported on first use, not with nbconv
    return _pool.avg_pool(np.ascontiguousarray(x), kernel, stride, pads, out_spatial), (x.shape, x.dtype)


def _avg_pool_grad(g, *, kernel, stride, pads, shape, dtype):
    from . import _pool
    return _pool.avg_pool_grad(np.ascontiguousarray(g, dtype=dtype), kernel, stride, pads, shape, dtype), None


_MAX_POOL = {nd: Primitive(_max_pool, name=f"max_pool{nd}d") for nd in (1, 2, 3)}
_AVG_POOL = {nd: Primitive(_avg_pool, name=f"avg_pool{nd}d") for nd in (1, 2, 3)}
_AVG_POOL_GRAD = {nd: Primitive(_avg_pool_grad, name=f"avg_pool{nd}d_grad") for nd in (1, 2, 3)}


def _avg_pool_vjp(g, res, needs, *, kernel, stride, pads, out_spatial):
    shape, dtype = res
    return (apply(_AVG_POOL_GRAD[len(kernel)], g, kernel=kernel, stride=stride, pads=pads, shape=shape,
                  dtype=dtype),)


def _avg_pool_grad_vjp(u, res, needs, *, kernel, stride, pads, shape, dtype):
    """avg_pool is linear and avg_pool_grad its adjoint, so avg_pool_grad's adjoint is avg_pool."""
    out_spatial = tuple((n + 2 * p - k) // s + 1 for n, p, k, s in zip(shape[1:-1], pads, kernel, stride))
    return (apply(_AVG_POOL[len(kernel)], u, kernel=kernel, stride=stride, pads=pads, out_spatial=out_spatial),)


for _nd in (1, 2, 3):
    defvjp(_MAX_POOL[_nd], _max_pool_vjp)
    defvjp(_AVG_POOL[_nd], _avg_pool_vjp)
    defvjp(_AVG_POOL_GRAD[_nd], _avg_pool_grad_vjp)


def _pool(prim, nd, x, kernel_size, stride, padding):
    data = array_operand(x, prim.name)
    kernel, stride, pads, out_spatial = _pool_params(data, kernel_size, stride, padding, nd, prim.name)
    return apply(prim, x, kernel=kernel, stride=stride, pads=pads, out_spatial=out_spatial)


_POOL_SUMMARY = {
    "max": "Maximum over windows of x, channels-last; padding never wins; NaN propagates. The gradient\n"
           "goes to the first maximum of each window (in row-major window order).",
    "avg": "Mean over windows of x, channels-last; padded positions count as zeros in the mean\n"
           "(PyTorch's default count_include_pad=True)."}
_POOL_EXAMPLES = {
    ("max", 1): ">>> nbconv.max_pool1d(np.array([1.0, 5.0, 2.0, 4.0, 3.0]).reshape(1, 5, 1), 2)[0, :, 0]\n"
                "array([5., 4.])",
    ("avg", 1): ">>> nbconv.avg_pool1d(np.array([1.0, 5.0, 2.0, 4.0, 3.0]).reshape(1, 5, 1), 2)[0, :, 0]\n"
                "array([3., 3.])",
    ("max", 2): ">>> x = np.arange(16.0).reshape(1, 4, 4, 1)\n"
                ">>> nbconv.max_pool2d(x, 2)[0, :, :, 0]\n"
                "array([[ 5.,  7.],\n"
                "       [13., 15.]])",
    ("avg", 2): ">>> x = np.arange(16.0).reshape(1, 4, 4, 1)\n"
                ">>> nbconv.avg_pool2d(x, 2)[0, :, :, 0]\n"
                "array([[ 2.5,  4.5],\n"
                "       [10.5, 12.5]])",
    ("max", 3): ">>> x = nbconv.Tensor(np.arange(8.0).reshape(1, 2, 2, 2, 1), requires_grad=True)\n"
                ">>> y = nbconv.max_pool3d(x, 2)\n"
                ">>> y.backward(np.ones(y.shape))\n"
                ">>> y.shape, x.grad.ravel()\n"
                "((1, 1, 1, 1, 1), array([0., 0., 0., 0., 0., 0., 0., 1.]))",
    ("avg", 3): ">>> x = nbconv.Tensor(np.ones((1, 2, 2, 2, 1)), requires_grad=True)\n"
                ">>> y = nbconv.avg_pool3d(x, 2, padding=1)\n"
                ">>> y.shape, float(y.data.sum())\n"
                "((1, 2, 2, 2, 1), 1.0)",
}


def _pool_doc(kind, nd):
    spatial = _SPATIAL_NAMES[nd]
    out = ", ".join(f"{axis}_out" for axis in spatial.split(", "))
    summary, example = (text.replace("\n", "\n    ") for text in (_POOL_SUMMARY[kind], _POOL_EXAMPLES[kind, nd]))
    return f"""{summary}

    Each output size is ``(size + 2 * padding - kernel_size) // stride + 1``.

    Parameters
    ----------
    x : ndarray or Tensor, shape (N, {spatial}, C)
        float32 or float64, no empty spatial dim.
    kernel_size : int or tuple of {nd} ints
        The window, per spatial dim; each >= 1.
    stride : int or tuple of {nd} ints, optional
        The step between windows, per spatial dim; default kernel_size.
    padding : int or tuple of {nd} ints, default 0
        Implicit padding on both sides of each spatial dim, at most half the kernel.

    Returns
    -------
    ndarray or Tensor, shape (N, {out}, C)
        A Tensor when x is one (recorded when it requires grad), else an ndarray; x's dtype.

    Raises
    ------
    ValueError
        Wrong number of dims, an empty spatial dim, a window larger than the padded input, padding
        over half the kernel, or a parameter < 1 (or < 0 for padding). Checked before any kernel runs.
    TypeError
        An unsupported dtype, or a parameter that is not an int or a tuple of ints.

    Examples
    --------
    >>> import numpy as np, nbconv
    {example}
    """


def max_pool1d(x: TensorOrArrayT | Values, kernel_size: int | Sequence[int],
               stride: int | Sequence[int] | None = None, padding: int | Sequence[int] = 0) -> TensorOrArrayT:
    return _pool(_MAX_POOL[1], 1, x, kernel_size, stride, padding)


def max_pool2d(x: TensorOrArrayT | Values, kernel_size: int | Sequence[int],
               stride: int | Sequence[int] | None = None, padding: int | Sequence[int] = 0) -> TensorOrArrayT:
    return _pool(_MAX_POOL[2], 2, x, kernel_size, stride, padding)


def max_pool3d(x: TensorOrArrayT | Values, kernel_size: int | Sequence[int],
               stride: int | Sequence[int] | None = None, padding: int | Sequence[int] = 0) -> TensorOrArrayT:
    return _pool(_MAX_POOL[3], 3, x, kernel_size, stride, padding)


def avg_pool1d(x: TensorOrArrayT | Values, kernel_size: int | Sequence[int],
               stride: int | Sequence[int] | None = None, padding: int | Sequence[int] = 0) -> TensorOrArrayT:
    return _pool(_AVG_POOL[1], 1, x, kernel_size, stride, padding)


def avg_pool2d(x: TensorOrArrayT | Values, kernel_size: int | Sequence[int],
               stride: int | Sequence[int] | None = None, padding: int | Sequence[int] = 0) -> TensorOrArrayT:
    return _pool(_AVG_POOL[2], 2, x, kernel_size, stride, padding)


def avg_pool3d(x: TensorOrArrayT | Values, kernel_size: int | Sequence[int],
               stride: int | Sequence[int] | None = None, padding: int | Sequence[int] = 0) -> TensorOrArrayT:
    return _pool(_AVG_POOL[3], 3, x, kernel_size, stride, padding)


for _fn, _kind, _nd in ((max_pool1d, "max", 1), (max_pool2d, "max", 2), (max_pool3d, "max", 3),
                        (avg_pool1d, "avg", 1), (avg_pool2d, "avg", 2), (avg_pool3d, "avg", 3)):
    _fn.__doc__ = _pool_doc(_kind, _nd)

# ---------------------------------------------------------------- batch normalization


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
    return y, (x, weight, x2, mean, invstd, w)


def _batch_norm_graph_vjp(g, x, weight, mean, invstd, needs, training, eps):
    """The VJP written with differentiable operations (create_graph): in training the statistics are
    recomputed from x, so their dependence on x is differentiated too."""
    axes = tuple(range(len(g.shape) - 1))
    dtype = g.dtype
    if training:
        mu = x.mean(axis=axes, keepdims=True)
        centered = x - mu
        inv = ((centered * centered).mean(axis=axes, keepdims=True) + eps) ** -0.5
    else:
        centered = x - mean.astype(dtype)
        inv = invstd.astype(dtype)
    xhat = centered * inv
    gx = None
    if needs[0]:
        gh = g if weight is None else g * weight
        if training:
            gx = inv * (gh - gh.mean(axis=axes, keepdims=True) - xhat * (gh * xhat).mean(axis=axes, keepdims=True))
        else:
            gx = gh * inv
    return (gx,
            (g * xhat).sum(axis=axes) if needs[1] else None,
            g.sum(axis=axes) if needs[2] else None)


def _batch_norm_vjp(g, res, needs, *, training, eps, **params):
    from . import _pool  # kernels load numba: imported on first use, not with nbconv
    x, weight, x2, mean, invstd, w = res
    if is_graph(g):
        return _batch_norm_graph_vjp(g, x, weight, mean, invstd, needs, training, eps)
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


def batch_norm(x: TensorOrArrayT | Values, weight: TensorOrArrayT | Values | None,
               bias: TensorOrArrayT | Values | None, running_mean: Tensor | NDArray[Any] | None = None,
               running_var: Tensor | NDArray[Any] | None = None, training: bool = True, momentum: float = 0.1,
               eps: float = 1e-5) -> TensorOrArrayT:
    """Normalize x per channel (the last axis) over all other axes, then scale by weight and shift by bias.

    ``y = (x - mean) / sqrt(var + eps) * weight + bias``, as torch.nn.functional.batch_norm does
    channels-last. Statistics are computed in float64; the result has x's dtype.

    Parameters
    ----------
    x : ndarray or Tensor, shape (..., C)
        float32 or float64, with at least a batch axis and the channel axis.
    weight, bias : ndarray or Tensor, shape (C,), or None
        The per-channel scale and shift (None: 1 and 0).
    running_mean, running_var : ndarray or Tensor, shape (C,), optional
        Running statistics. Updated in place when training (``running = (1 - momentum) * running +
        momentum * batch``, with the unbiased batch variance, as PyTorch does); required when not.
    training : bool, default True
        True: normalize with the batch statistics (biased variance), which then take part in the
        gradient; False: with running_mean and running_var, which are constants.
    momentum : float, default 0.1
        In [0, 1].
    eps : float, default 1e-5
        Added to the variance; >= 0.

    Returns
    -------
    ndarray or Tensor
        A Tensor when an argument is one (recorded when it requires grad), else an ndarray.

    Raises
    ------
    ValueError
        A vector not of shape (C,), x with fewer than 2 dims, one value per channel when training,
        missing running statistics when not training, or momentum/eps out of range.
    TypeError
        x is not a float32/float64 array or Tensor.

    Examples
    --------
    >>> import numpy as np, nbconv
    >>> x = np.array([[1.0, 10.0], [3.0, 30.0]])                      # (N, C)
    >>> running_mean, running_var = np.zeros(2), np.ones(2)
    >>> y = nbconv.batch_norm(x, None, np.array([0.0, 5.0]), running_mean, running_var, eps=0.0)
    >>> y
    array([[-1.,  4.],
           [ 1.,  6.]])
    >>> running_mean, running_var
    (array([0.2, 2. ]), array([ 1.1, 20.9]))
    """
    data = array_operand(x, "batch_norm")
    for name, v in (("momentum", momentum), ("eps", eps)):
        if not isinstance(v, numbers.Real) or not 0 <= v < float("inf") or (name == "momentum" and v > 1):
            raise ValueError(f"batch_norm: {name} must be a real number in "
                             f"{'[0, 1]' if name == 'momentum' else '[0, inf)'}, got {v!r}")
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


__all__ = ["linear", "log_softmax", "softmax", "cross_entropy", "dropout", "batch_norm", "max_pool1d", "max_pool2d",
           "max_pool3d", "avg_pool1d", "avg_pool2d", "avg_pool3d"]
