"""Array operations on the tape: elementwise arithmetic and functions, matmul, reductions, shapes,
indexing, joining and padding. Every VJP works on arrays (a plain backward) and on Tensors
(create_graph), see nbconv.ops_core; the linear operations come in adjoint pairs (getitem and
index_put, pad and fold, broadcast_to and the sum that unbroadcasts), each the other's VJP.

Functions here shadow the builtins sum, max, abs (they are Tensor methods too); the module uses
np.* for the builtins' meaning.

Every function takes arrays (anything ``np.asarray`` accepts) or Tensors and returns an ndarray when
no argument is a Tensor, otherwise a Tensor (recorded on the tape when an argument requires grad).
CUDA device arrays raise NotImplementedError (only the convolutions run on the device).
"""
from __future__ import annotations

import numbers
from typing import Any, Literal, Sequence, SupportsIndex, overload

import numpy as np
from numpy.typing import ArrayLike, DTypeLike, NDArray

from .ops_core import (Primitive, TensorOrArrayT, Values, apply, array_operand, defvjp, expand, reduced_count,
                       shape_of, unbroadcast, unwrap, value)
from .tape import Tensor


def _broadcasting(ufunc, a, b):
    try:
        return ufunc(a, b)
    except ValueError:
        raise ValueError(f"{ufunc.__name__}: operands of shapes {np.shape(a)} and {np.shape(b)} cannot be "
                         "broadcast together") from None


def _real_scalar(v, what):
    if isinstance(v, Tensor) or isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real):
        raise TypeError(f"{what} must be a real scalar, got {type(v).__name__}")
    return v


# ---------------------------------------------------------------- elementwise and broadcasting

@Primitive
def _add(a, b):
    return _broadcasting(np.add, a, b), (np.shape(a), np.shape(b))


def _add_vjp(g, shapes, needs):
    return tuple(unbroadcast(g, s) if n else None for s, n in zip(shapes, needs))


defvjp(_add, _add_vjp)


@Primitive
def _subtract(a, b):
    return _broadcasting(np.subtract, a, b), (np.shape(a), np.shape(b))


def _subtract_vjp(g, shapes, needs):
    return (unbroadcast(g, shapes[0]) if needs[0] else None,
            unbroadcast(-g, shapes[1]) if needs[1] else None)


defvjp(_subtract, _subtract_vjp)


@Primitive
def _multiply(a, b):
    return _broadcasting(np.multiply, a, b), (a, b)


def _multiply_vjp(g, res, needs):
    a, b = res
    return (unbroadcast(g * b, shape_of(a)) if needs[0] else None,
            unbroadcast(g * a, shape_of(b)) if needs[1] else None)


defvjp(_multiply, _multiply_vjp)


@Primitive
def _divide(a, b):
    out = _broadcasting(np.true_divide, a, b)
    return out, (a, b, out)


def _divide_vjp(g, res, needs):
    a, b, out = res
    return (unbroadcast(g / b, shape_of(a)) if needs[0] else None,
            unbroadcast(-g * out / b, shape_of(b)) if needs[1] else None)


defvjp(_divide, _divide_vjp)


@Primitive
def _negative(x):
    return np.negative(x), None


defvjp(_negative, lambda g, res, needs: (-g,))


@Primitive
def _power(x, *, exponent):
    return np.power(x, exponent), x


defvjp(_power, lambda g, x, needs, *, exponent: (g * exponent * x ** (exponent - 1),))


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


defvjp(_relu, lambda g, out, needs: (g * (value(out) > 0),))


@Primitive
def _absolute(x):
    return np.abs(x), x


defvjp(_absolute, lambda g, x, needs: (g * np.sign(value(x)),))


@Primitive
def _sqrt(x):
    out = np.sqrt(x)
    return out, out


defvjp(_sqrt, lambda g, out, needs: (g / (out * 2),))


@Primitive
def _tanh(x):
    out = np.tanh(x)
    return out, out


defvjp(_tanh, lambda g, out, needs: (g * (1 - out * out),))


@Primitive
def _sigmoid(x):
    e = np.exp(-np.abs(x))  # never overflows
    out = np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(np.result_type(x, np.float16), copy=False)
    return out, out


defvjp(_sigmoid, lambda g, out, needs: (g * (out * (1 - out)),))


@Primitive
def _clip(x, *, low, high):
    inside = np.ones(np.shape(x), bool)
    if low is not None:
        inside &= x >= low
    if high is not None:
        inside &= x <= high
    return np.clip(x, low, high), inside


defvjp(_clip, lambda g, inside, needs, **bounds: (g * inside,))


@Primitive
def _matmul(a, b):
    try:
        return np.matmul(a, b), (a, b)
    except ValueError:
        raise ValueError(f"matmul: shapes {np.shape(a)} and {np.shape(b)} are not aligned (the last axis of the "
                         "first must match the second-to-last axis of the second)") from None


def _swap_last(a):
    n = len(shape_of(a))
    return a.transpose(tuple(range(n - 2)) + (n - 1, n - 2))


def _matmul_vjp(g, res, needs):
    a, b = res
    sa, sb = shape_of(a), shape_of(b)
    a2 = a.reshape((1,) + sa) if len(sa) == 1 else a
    b2 = b.reshape(sb + (1,)) if len(sb) == 1 else b
    g2 = g.reshape(tuple(g.shape) + (1,)) if len(sb) == 1 else g
    if len(sa) == 1:
        gs = tuple(g2.shape)
        g2 = g2.reshape(gs[:-1] + (1,) + gs[-1:])
    return (unbroadcast(g2 @ _swap_last(b2), shape_of(a2)).reshape(sa) if needs[0] else None,
            unbroadcast(_swap_last(a2) @ g2, shape_of(b2)).reshape(sb) if needs[1] else None)


defvjp(_matmul, _matmul_vjp)


@Primitive
def _astype(x, *, dtype):
    return np.asarray(x).astype(dtype), np.dtype(np.asarray(x).dtype)


defvjp(_astype, lambda g, dtype_in, needs, *, dtype: (g.astype(dtype_in),))


@Primitive
def _broadcast_to(x, *, shape):
    try:
        return np.broadcast_to(x, shape), np.shape(x)
    except ValueError:
        raise ValueError(f"broadcast_to: an array of shape {np.shape(x)} cannot be broadcast to {shape}") from None


defvjp(_broadcast_to, lambda g, shape_in, needs, *, shape: (unbroadcast(g, shape_in),))


def add(a: TensorOrArrayT | Values, b: TensorOrArrayT | Values) -> TensorOrArrayT:
    """a + b elementwise, with NumPy broadcasting; each gradient is summed back to its input's shape.

    Parameters
    ----------
    a, b : array_like or Tensor
        Shapes that broadcast together (ValueError otherwise, quoting both).

    Returns
    -------
    ndarray or Tensor
        A Tensor when an argument is one (recorded when it requires grad), else an ndarray.

    Examples
    --------
    >>> import numpy as np, nbconv
    >>> a = nbconv.Tensor(np.array([[1.0], [2.0]]), requires_grad=True)
    >>> y = nbconv.ops.add(a, np.array([10.0, 20.0]))
    >>> y.data
    array([[11., 21.],
           [12., 22.]])
    >>> y.sum().backward()
    >>> a.grad
    array([[2.],
           [2.]])
    """
    return apply(_add, a, b)


def subtract(a: TensorOrArrayT | Values, b: TensorOrArrayT | Values) -> TensorOrArrayT:
    """a - b elementwise, with NumPy broadcasting; each gradient is summed back to its input's shape.

    Parameters
    ----------
    a, b : array_like or Tensor
        Shapes that broadcast together (ValueError otherwise, quoting both).

    Returns
    -------
    ndarray or Tensor
        A Tensor when an argument is one (recorded when it requires grad), else an ndarray.

    Examples
    --------
    >>> import numpy as np, nbconv
    >>> a = nbconv.Tensor(np.array([[1.0], [2.0]]), requires_grad=True)
    >>> y = nbconv.ops.subtract(a, np.array([10.0, 20.0]))
    >>> y.data
    array([[ -9., -19.],
           [ -8., -18.]])
    >>> y.sum().backward()
    >>> a.grad
    array([[2.],
           [2.]])
    """
    return apply(_subtract, a, b)


def multiply(a: TensorOrArrayT | Values, b: TensorOrArrayT | Values) -> TensorOrArrayT:
    """a * b elementwise, with NumPy broadcasting; each gradient is summed back to its input's shape.

    Parameters
    ----------
    a, b : array_like or Tensor
        Shapes that broadcast together (ValueError otherwise, quoting both).

    Returns
    -------
    ndarray or Tensor
        A Tensor when an argument is one (recorded when it requires grad), else an ndarray.

    Examples
    --------
    >>> import numpy as np, nbconv
    >>> a = nbconv.Tensor(np.array([[1.0], [2.0]]), requires_grad=True)
    >>> y = nbconv.ops.multiply(a, np.array([10.0, 20.0]))
    >>> y.data
    array([[10., 20.],
           [20., 40.]])
    >>> y.sum().backward()
    >>> a.grad
    array([[30.],
           [30.]])
    """
    return apply(_multiply, a, b)


def divide(a: TensorOrArrayT | Values, b: TensorOrArrayT | Values) -> TensorOrArrayT:
    """a / b elementwise, with NumPy broadcasting; each gradient is summed back to its input's shape.

    Parameters
    ----------
    a, b : array_like or Tensor
        Shapes that broadcast together (ValueError otherwise, quoting both).

    Returns
    -------
    ndarray or Tensor
        A Tensor when an argument is one (recorded when it requires grad), else an ndarray.

    Examples
    --------
    >>> import numpy as np, nbconv
    >>> a = nbconv.Tensor(np.array([[1.0], [2.0]]), requires_grad=True)
    >>> y = nbconv.ops.divide(a, np.array([1.0, 2.0]))
    >>> y.data
    array([[1. , 0.5],
           [2. , 1. ]])
    >>> y.sum().backward()
    >>> a.grad
    array([[1.5],
           [1.5]])
    """
    return apply(_divide, a, b)


def negative(x: TensorOrArrayT | Values) -> TensorOrArrayT:
    """-x elementwise.

    Parameters
    ----------
    x : array_like or Tensor

    Returns
    -------
    ndarray or Tensor
        A Tensor when x is one (recorded when it requires grad), else an ndarray.

    Examples
    --------
    >>> import numpy as np, nbconv
    >>> nbconv.ops.negative(np.array([1.0, -2.0]))
    array([-1.,  2.])
    """
    return apply(_negative, x)


def power(x: TensorOrArrayT | Values, exponent: float) -> TensorOrArrayT:
    """x ** exponent elementwise, for a real scalar exponent (``t ** 2`` on a Tensor).

    Parameters
    ----------
    x : array_like or Tensor
    exponent : int or float
        A real scalar (TypeError for a Tensor, an array or a bool).

    Returns
    -------
    ndarray or Tensor
        A Tensor when x is one (recorded when it requires grad), else an ndarray.

    Examples
    --------
    >>> import numpy as np, nbconv
    >>> x = nbconv.Tensor(np.array([1.0, 3.0]), requires_grad=True)
    >>> nbconv.ops.power(x, 2).sum().backward()
    >>> x.grad
    array([2., 6.])
    """
    return apply(_power, x, exponent=_real_scalar(exponent, "the exponent of **"))


def exp(x: TensorOrArrayT | Values) -> TensorOrArrayT:
    """e ** x elementwise.

    Parameters
    ----------
    x : array_like or Tensor

    Returns
    -------
    ndarray or Tensor
        A Tensor when x is one (recorded when it requires grad), else an ndarray.

    Examples
    --------
    >>> import numpy as np, nbconv
    >>> nbconv.ops.exp(np.array([0.0, 1.0]))
    array([1.        , 2.71828183])
    """
    return apply(_exp, x)


def log(x: TensorOrArrayT | Values) -> TensorOrArrayT:
    """The natural logarithm, elementwise (the gradient is 1 / x).

    Parameters
    ----------
    x : array_like or Tensor

    Returns
    -------
    ndarray or Tensor
        A Tensor when x is one (recorded when it requires grad), else an ndarray.

    Examples
    --------
    >>> import numpy as np, nbconv
    >>> nbconv.ops.log(np.array([1.0, np.e]))
    array([0., 1.])
    """
    return apply(_log, x)


def relu(x: TensorOrArrayT | Values) -> TensorOrArrayT:
    """max(x, 0) elementwise (the gradient at 0 is 0).

    Parameters
    ----------
    x : array_like or Tensor

    Returns
    -------
    ndarray or Tensor
        A Tensor when x is one (recorded when it requires grad), else an ndarray.

    Examples
    --------
    >>> import numpy as np, nbconv
    >>> nbconv.ops.relu(np.array([-1.0, 0.0, 2.0]))
    array([0., 0., 2.])
    >>> x = nbconv.Tensor(np.array([-1.0, 0.0, 2.0]), requires_grad=True)
    >>> nbconv.relu(x).sum().backward()
    >>> x.grad
    array([0., 0., 1.])
    """
    return apply(_relu, x)


def abs(x: TensorOrArrayT | Values) -> TensorOrArrayT:  # noqa: A001 (Tensor.abs)
    """The absolute value |x|, elementwise (the gradient at 0 is 0, like torch.abs).

    Parameters
    ----------
    x : array_like or Tensor

    Returns
    -------
    ndarray or Tensor
        A Tensor when x is one (recorded when it requires grad), else an ndarray.

    Examples
    --------
    >>> import numpy as np, nbconv
    >>> nbconv.ops.abs(np.array([-1.5, 2.0]))
    array([1.5, 2. ])
    """
    return apply(_absolute, x)


def sqrt(x: TensorOrArrayT | Values) -> TensorOrArrayT:
    """The square root, elementwise (the gradient is 1 / (2 sqrt(x))).

    Parameters
    ----------
    x : array_like or Tensor

    Returns
    -------
    ndarray or Tensor
        A Tensor when x is one (recorded when it requires grad), else an ndarray.

    Examples
    --------
    >>> import numpy as np, nbconv
    >>> nbconv.ops.sqrt(np.array([4.0, 9.0]))
    array([2., 3.])
    """
    return apply(_sqrt, x)


def tanh(x: TensorOrArrayT | Values) -> TensorOrArrayT:
    """The hyperbolic tangent, elementwise.

    Parameters
    ----------
    x : array_like or Tensor

    Returns
    -------
    ndarray or Tensor
        A Tensor when x is one (recorded when it requires grad), else an ndarray.

    Examples
    --------
    >>> import numpy as np, nbconv
    >>> nbconv.ops.tanh(np.array([0.0]))
    array([0.])
    """
    return apply(_tanh, x)


def sigmoid(x: TensorOrArrayT | Values) -> TensorOrArrayT:
    """1 / (1 + exp(-x)) elementwise, computed without overflow.

    Parameters
    ----------
    x : array_like or Tensor

    Returns
    -------
    ndarray or Tensor
        A Tensor when x is one (recorded when it requires grad), else an ndarray.

    Examples
    --------
    >>> import numpy as np, nbconv
    >>> nbconv.ops.sigmoid(np.array([-1000.0, 0.0, 1000.0]))
    array([0. , 0.5, 1. ])
    """
    return apply(_sigmoid, x)


def clip(x: TensorOrArrayT | Values,
         min: ArrayLike | None = None,  # noqa: A002 (torch.clamp's and ndarray.clip's names)
         max: ArrayLike | None = None) -> TensorOrArrayT:
    """x limited to [min, max] elementwise. The gradient passes where min <= x <= max (like
    torch.clamp); the bounds are constants.

    Parameters
    ----------
    x : array_like or Tensor
    min, max : scalar or array_like, optional
        The bounds (either may be None, not both), broadcasting against x. Not Tensors (TypeError:
        pass their ``.data``).

    Returns
    -------
    ndarray or Tensor
        A Tensor when x is one (recorded when it requires grad), else an ndarray.

    Raises
    ------
    ValueError
        Neither bound is given.

    Examples
    --------
    >>> import numpy as np, nbconv
    >>> x = nbconv.Tensor(np.array([-2.0, 0.5, 3.0]), requires_grad=True)
    >>> y = nbconv.ops.clip(x, -1, 1)
    >>> y.sum().backward()
    >>> y.data, x.grad
    (array([-1. ,  0.5,  1. ]), array([0., 1., 0.]))
    """
    if min is None and max is None:
        raise ValueError("clip: give min, max or both")
    for name, bound in (("min", min), ("max", max)):
        if isinstance(bound, Tensor):
            raise TypeError(f"clip: {name} must be a number or an array (a constant), got a Tensor; pass its .data")
    return apply(_clip, x, low=min, high=max)


def matmul(a: TensorOrArrayT | Values, b: TensorOrArrayT | Values) -> TensorOrArrayT:
    """a @ b with NumPy's matmul rules (batched and 1-D operands included).

    Parameters
    ----------
    a, b : array_like or Tensor
        (..., n, k) and (..., k, m), the leading axes broadcasting; a 1-D operand is a vector.
        ValueError when the inner dimensions differ.

    Returns
    -------
    ndarray or Tensor
        A Tensor when an argument is one (recorded when it requires grad), else an ndarray.

    Examples
    --------
    >>> import numpy as np, nbconv
    >>> a = nbconv.Tensor(np.eye(2), requires_grad=True)
    >>> y = a @ np.array([[1.0, 2.0], [3.0, 4.0]])
    >>> y.sum().backward()
    >>> a.grad
    array([[3., 7.],
           [3., 7.]])
    """
    return apply(_matmul, a, b)


def astype(x: TensorOrArrayT | Values, dtype: DTypeLike) -> TensorOrArrayT:
    """x converted to `dtype` (a copy); the gradient is converted back to x's dtype.

    Parameters
    ----------
    x : array_like or Tensor
    dtype : dtype_like
        Anything ``np.dtype`` accepts.

    Returns
    -------
    ndarray or Tensor
        A Tensor when x is one (recorded when it requires grad), else an ndarray.

    Examples
    --------
    >>> import numpy as np, nbconv
    >>> x = nbconv.Tensor(np.array([1.0, 2.0]), requires_grad=True)
    >>> y = x.astype(np.float32)
    >>> y.sum().backward()
    >>> y.dtype, x.grad.dtype
    (dtype('float32'), dtype('float64'))
    """
    return apply(_astype, x, dtype=np.dtype(dtype))


def broadcast_to(x: TensorOrArrayT | Values, shape: Sequence[int]) -> TensorOrArrayT:
    """x broadcast to `shape` (NumPy's rules; a read-only view for an array); the gradient is summed
    back to x's shape.

    Parameters
    ----------
    x : array_like or Tensor
    shape : tuple of ints
        A shape x broadcasts to (ValueError otherwise).

    Returns
    -------
    ndarray or Tensor
        A Tensor when x is one (recorded when it requires grad), else an ndarray.

    Examples
    --------
    >>> import numpy as np, nbconv
    >>> x = nbconv.Tensor(np.array([1.0, 2.0]), requires_grad=True)
    >>> nbconv.ops.broadcast_to(x, (3, 2)).sum().backward()
    >>> x.grad
    array([3., 3.])
    """
    return apply(_broadcast_to, x, shape=tuple(shape))


# ---------------------------------------------------------------- reductions and shapes

def _axis(axis):
    return tuple(axis) if isinstance(axis, list) else axis


@Primitive
def _sum(x, *, axis, keepdims):
    return np.asarray(np.sum(x, axis=axis, keepdims=keepdims)), np.shape(x)


defvjp(_sum, lambda g, shape, needs, *, axis, keepdims: (expand(g, shape, axis, keepdims),))


@Primitive
def _mean(x, *, axis, keepdims):
    return np.asarray(np.mean(x, axis=axis, keepdims=keepdims)), np.shape(x)


def _mean_vjp(g, shape, needs, *, axis, keepdims):
    return (expand(g / reduced_count(shape, axis), shape, axis, keepdims),)


defvjp(_mean, _mean_vjp)


@Primitive
def _max(x, *, axis, keepdims):
    top = np.max(x, axis=axis, keepdims=True)
    out = top if keepdims else (top.reshape(()) if axis is None else np.squeeze(top, axis=axis))
    return np.asarray(out), (x, top)


def _max_vjp(g, res, needs, *, axis, keepdims):
    """The gradient goes to the maxima, split evenly between ties (like torch.amax); the choice of the
    maxima is a constant (the second derivative is zero almost everywhere)."""
    x, top = res
    x = value(x)
    mask = x == top
    count = np.sum(mask, axis=axis, keepdims=True).astype(x.dtype)
    return (expand(g, x.shape, axis, keepdims) * (mask / count).astype(x.dtype),)


defvjp(_max, _max_vjp)


@Primitive
def _reshape(x, *, shape):
    try:
        return np.reshape(x, shape), np.shape(x)
    except ValueError:
        raise ValueError(f"cannot reshape an array of shape {np.shape(x)} into shape {shape}") from None


defvjp(_reshape, lambda g, shape_in, needs, *, shape: (g.reshape(shape_in),))


@Primitive
def _transpose(x, *, axes):
    try:
        return np.transpose(x, axes), None
    except (ValueError, np.exceptions.AxisError):
        raise ValueError(f"axes {axes} are not a permutation of the axes of an array of shape {np.shape(x)}") from None


def _transpose_vjp(g, res, needs, *, axes):
    if axes is None:
        return (g.transpose(),)
    n = len(g.shape)
    return (g.transpose(tuple(int(i) for i in np.argsort([a % n for a in axes]))),)


defvjp(_transpose, _transpose_vjp)


def sum(x: TensorOrArrayT | Values, axis: int | Sequence[int] | None = None,  # noqa: A001 (Tensor.sum)
        keepdims: bool = False) -> TensorOrArrayT:
    """The sum over `axis`.

    Parameters
    ----------
    x : array_like or Tensor
    axis : int, tuple of ints or None, default None
        The axes to reduce (negative ones count from the end); None reduces all.
    keepdims : bool, default False
        Keep the reduced axes with size 1.

    Returns
    -------
    ndarray or Tensor
        A Tensor when x is one (recorded when it requires grad), else an ndarray.

    Examples
    --------
    >>> import numpy as np, nbconv
    >>> x = nbconv.Tensor(np.array([[1.0, 2.0], [3.0, 4.0]]), requires_grad=True)
    >>> y = x.sum(axis=1)
    >>> y.data
    array([3., 7.])
    >>> y.sum().backward()
    >>> x.grad
    array([[1., 1.],
           [1., 1.]])
    """
    return apply(_sum, x, axis=_axis(axis), keepdims=keepdims)


def mean(x: TensorOrArrayT | Values, axis: int | Sequence[int] | None = None,
        keepdims: bool = False) -> TensorOrArrayT:
    """The mean over `axis`.

    Parameters
    ----------
    x : array_like or Tensor
    axis : int, tuple of ints or None, default None
        The axes to reduce (negative ones count from the end); None reduces all.
    keepdims : bool, default False
        Keep the reduced axes with size 1.

    Returns
    -------
    ndarray or Tensor
        A Tensor when x is one (recorded when it requires grad), else an ndarray.

    Examples
    --------
    >>> import numpy as np, nbconv
    >>> x = nbconv.Tensor(np.array([[1.0, 2.0], [3.0, 4.0]]), requires_grad=True)
    >>> y = x.mean(axis=1)
    >>> y.data
    array([1.5, 3.5])
    >>> y.sum().backward()
    >>> x.grad
    array([[0.5, 0.5],
           [0.5, 0.5]])
    """
    return apply(_mean, x, axis=_axis(axis), keepdims=keepdims)


def max(x: TensorOrArrayT | Values, axis: int | Sequence[int] | None = None,  # noqa: A001 (Tensor.max)
        keepdims: bool = False) -> TensorOrArrayT:
    """The maximum over `axis`; ties share the gradient evenly (like torch.amax).

    Parameters
    ----------
    x : array_like or Tensor
    axis : int, tuple of ints or None, default None
        The axes to reduce (negative ones count from the end); None reduces all.
    keepdims : bool, default False
        Keep the reduced axes with size 1.

    Returns
    -------
    ndarray or Tensor
        A Tensor when x is one (recorded when it requires grad), else an ndarray.

    Examples
    --------
    >>> import numpy as np, nbconv
    >>> x = nbconv.Tensor(np.array([[1.0, 2.0], [3.0, 4.0]]), requires_grad=True)
    >>> y = x.max(axis=1)
    >>> y.data
    array([2., 4.])
    >>> y.sum().backward()
    >>> x.grad
    array([[0., 1.],
           [0., 1.]])
    """
    return apply(_max, x, axis=_axis(axis), keepdims=keepdims)


def reshape(x: TensorOrArrayT | Values, *shape: SupportsIndex | Sequence[SupportsIndex]) -> TensorOrArrayT:
    """x with a new shape of as many elements (a view when NumPy can make one).

    Parameters
    ----------
    x : array_like or Tensor
    *shape : ints, or one tuple of ints
        ``reshape(x, 2, 3)`` or ``reshape(x, (2, 3))``; one entry may be -1. ValueError when the
        sizes differ.

    Returns
    -------
    ndarray or Tensor
        A Tensor when x is one (recorded when it requires grad), else an ndarray.

    Examples
    --------
    >>> import numpy as np, nbconv
    >>> x = nbconv.Tensor(np.arange(6.0))
    >>> x.reshape(2, -1).shape, nbconv.ops.reshape(x, (3, 2)).shape
    ((2, 3), (3, 2))
    """
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = shape[0]
    return apply(_reshape, x, shape=tuple(shape))


def transpose(x: TensorOrArrayT | Values, *axes: SupportsIndex | Sequence[SupportsIndex]) -> TensorOrArrayT:
    """x with its axes permuted (a view).

    Parameters
    ----------
    x : array_like or Tensor
    *axes : ints, or one tuple of ints
        A permutation of x's axes (ValueError otherwise); none reverses them (as ``t.T`` does).

    Returns
    -------
    ndarray or Tensor
        A Tensor when x is one (recorded when it requires grad), else an ndarray.

    Examples
    --------
    >>> import numpy as np, nbconv
    >>> x = nbconv.Tensor(np.zeros((2, 3, 4)))
    >>> x.transpose(1, 0, 2).shape, x.T.shape, nbconv.ops.transpose(x, (2, 0, 1)).shape
    ((3, 2, 4), (4, 3, 2), (4, 2, 3))
    """
    if len(axes) == 1 and isinstance(axes[0], (tuple, list)):
        axes = axes[0]
    return apply(_transpose, x, axes=tuple(axes) if axes else None)


# ---------------------------------------------------------------- indexing

def _index_key(index):
    """(index as a tuple NumPy accepts, whether it is basic): Tensors unwrapped, lists as arrays and
    boolean arrays as their nonzero() integer arrays (NumPy's own meaning of a mask)."""
    items = index if isinstance(index, tuple) else (index,)
    key, basic = [], True
    for item in items:
        item = unwrap(item)
        if item is None or item is Ellipsis or isinstance(item, slice):
            key.append(item)
        elif isinstance(item, (numbers.Integral, np.integer)) and not isinstance(item, (bool, np.bool_)):
            key.append(int(item))
        else:
            arr = np.asarray(item)
            if arr.dtype == np.bool_ and arr.ndim > 0:
                key.extend(np.nonzero(arr))
            elif np.issubdtype(arr.dtype, np.integer):
                key.append(arr)
            else:
                raise IndexError(f"Tensor indices must be integers, slices, None, Ellipsis, or integer or boolean "
                                 f"arrays, got {type(item).__name__} {item!r}")
            basic = False
    return tuple(key), basic


@Primitive
def _getitem(x, *, index, basic):
    return x[index], (np.shape(x), np.asarray(x).dtype)


def _getitem_vjp(g, res, needs, *, index, basic):
    shape, dtype = res
    return (apply(_index_put, g, index=index, basic=basic, shape=shape, dtype=dtype),)


defvjp(_getitem, _getitem_vjp)


@Primitive
def _index_put(g, *, index, basic, shape, dtype):
    """The adjoint of x[index]: zeros of `shape` with g added at `index` (repeated indices add up)."""
    out = np.zeros(shape, dtype)
    if basic:
        out[index] = g
    else:
        np.add.at(out, index, g)
    return out, None


defvjp(_index_put, lambda g, res, needs, *, index, basic, shape, dtype: (g[index],))


def getitem(x: TensorOrArrayT | Values, index: Any) -> TensorOrArrayT:
    """x[index] (``t[index]`` on a Tensor). The gradient is scattered back, entries selected several
    times accumulating every use.

    Parameters
    ----------
    x : array_like or Tensor
    index : int, slice, None, Ellipsis, integer or boolean array (or Tensor), or a tuple of them
        Basic indexing (ints, slices, None, Ellipsis) gives a view, like NumPy's; integer- or
        boolean-array indexing a copy. Anything else raises IndexError.

    Returns
    -------
    ndarray or Tensor
        A Tensor when x is one (recorded when it requires grad), else an ndarray.

    Examples
    --------
    >>> import numpy as np, nbconv
    >>> x = nbconv.Tensor(np.array([1.0, 2.0, 3.0]), requires_grad=True)
    >>> y = x[np.array([0, 0, 2])]
    >>> y.sum().backward()
    >>> y.data, x.grad
    (array([1., 1., 3.]), array([2., 0., 1.]))
    """
    key, basic = _index_key(index)
    return apply(_getitem, x, index=key, basic=basic)


# ---------------------------------------------------------------- joining

def _sequence(tensors, name):
    if isinstance(tensors, (Tensor, np.ndarray)) or not isinstance(tensors, (list, tuple)):
        raise TypeError(f"{name} takes a list or tuple of arrays or Tensors, got {type(tensors).__name__}")
    if not tensors:
        raise ValueError(f"{name} needs at least one array")
    return [t if isinstance(t, Tensor) or isinstance(t, np.ndarray) else np.asarray(t) for t in tensors]


def _normalize_axis(axis, ndim, name):
    if not isinstance(axis, (numbers.Integral, np.integer)) or isinstance(axis, (bool, np.bool_)):
        raise TypeError(f"{name}: axis must be an int, got {axis!r}")
    if not -ndim <= axis < ndim:
        raise ValueError(f"{name}: axis {axis} is out of bounds for {ndim} dimensions")
    return int(axis) % ndim


@Primitive
def _concatenate(*arrays, axis):
    return np.concatenate(arrays, axis=axis), tuple(np.shape(a)[axis] for a in arrays)


def _concatenate_vjp(g, sizes, needs, *, axis):
    grads, start = [], 0
    for size, need in zip(sizes, needs):
        grads.append(g[(slice(None),) * axis + (slice(start, start + size),)] if need else None)
        start += size
    return tuple(grads)


defvjp(_concatenate, _concatenate_vjp)


@Primitive
def _stack(*arrays, axis):
    return np.stack(arrays, axis=axis), None


defvjp(_stack, lambda g, res, needs, *, axis: tuple(g[(slice(None),) * axis + (i,)] if need else None
                                                    for i, need in enumerate(needs)))


# A list may mix arrays and Tensors, so the result type comes from overloads, not from TensorOrArrayT. Type checkers
# call the first "unsafe" (an argument typed Sequence[Tensor | Values] may hold arrays only): that is the one case
# they cannot tell apart.
@overload
def concatenate(tensors: Sequence[Values], axis: int = 0) -> NDArray[Any]: ...  # type: ignore[overload-overlap]
@overload
def concatenate(tensors: Sequence[Tensor | Values], axis: int = 0) -> Tensor: ...
def concatenate(tensors: Sequence[Tensor | Values], axis: int = 0) -> Tensor | NDArray[Any]:
    """Join arrays or Tensors along an existing axis (np.concatenate); each gets its slice of the gradient.

    Parameters
    ----------
    tensors : list or tuple of array_like or Tensor
        At least one; the same shape except along `axis` (ValueError otherwise). TypeError for a
        single array or Tensor.
    axis : int, default 0
        An existing axis (negative counts from the end).

    Returns
    -------
    ndarray or Tensor
        A Tensor when an argument is one (recorded when it requires grad), else an ndarray.

    Examples
    --------
    >>> import numpy as np, nbconv
    >>> a = nbconv.Tensor(np.ones((1, 2)), requires_grad=True)
    >>> y = nbconv.concatenate([a, np.zeros((2, 2))])
    >>> (y * np.arange(3.0).reshape(3, 1)).sum().backward()
    >>> y.shape, a.grad
    ((3, 2), array([[0., 0.]]))
    """
    items = _sequence(tensors, "concatenate")
    shapes = [shape_of(t) for t in items]
    ndim = len(shapes[0])
    if ndim == 0:
        raise ValueError("concatenate: zero-dimensional arrays cannot be concatenated")
    axis = _normalize_axis(axis, ndim, "concatenate")
    for s in shapes:
        if len(s) != ndim or s[:axis] + s[axis + 1:] != shapes[0][:axis] + shapes[0][axis + 1:]:
            raise ValueError(f"concatenate: shapes {shapes} differ outside axis {axis}")
    return apply(_concatenate, *items, axis=axis)


@overload  # as concatenate's
def stack(tensors: Sequence[Values], axis: int = 0) -> NDArray[Any]: ...  # type: ignore[overload-overlap]
@overload
def stack(tensors: Sequence[Tensor | Values], axis: int = 0) -> Tensor: ...
def stack(tensors: Sequence[Tensor | Values], axis: int = 0) -> Tensor | NDArray[Any]:
    """Join arrays or Tensors of one shape along a new axis (np.stack); each gets its slice of the gradient.

    Parameters
    ----------
    tensors : list or tuple of array_like or Tensor
        At least one, all of one shape (ValueError otherwise). TypeError for a single array or Tensor.
    axis : int, default 0
        The position of the new axis in the result (negative counts from the end).

    Returns
    -------
    ndarray or Tensor
        A Tensor when an argument is one (recorded when it requires grad), else an ndarray.

    Examples
    --------
    >>> import numpy as np, nbconv
    >>> a = nbconv.Tensor(np.ones(3), requires_grad=True)
    >>> nbconv.stack([a, np.zeros(3)], axis=1).shape
    (3, 2)
    """
    items = _sequence(tensors, "stack")
    shapes = [shape_of(t) for t in items]
    if any(s != shapes[0] for s in shapes):
        raise ValueError(f"stack: all arrays must have the same shape, got {shapes}")
    axis = _normalize_axis(axis, len(shapes[0]) + 1, "stack")
    return apply(_stack, *items, axis=axis)


# ---------------------------------------------------------------- padding

PAD_MODES = {"constant": "constant", "zeros": "constant", "reflect": "reflect", "edge": "edge",
             "replicate": "edge", "wrap": "wrap", "circular": "wrap"}


def _pad_pairs(pad_width, ndim):
    """np.pad's pad_width forms as ((before, after), ...) per axis."""
    try:
        widths = np.array(unwrap(pad_width))
    except (TypeError, ValueError):
        widths = np.array([], dtype=object)
    if widths.size == 0 or not (np.issubdtype(widths.dtype, np.integer)):
        raise TypeError(f"pad: pad_width must be an int, a (before, after) pair or one pair per axis, "
                        f"got {pad_width!r}")
    if widths.size == 1:
        pairs = ((int(widths.ravel()[0]),) * 2,) * ndim
    elif widths.size == 2 and widths.shape != (2, 1):
        pairs = (tuple(int(v) for v in widths.ravel()),) * ndim
    else:
        try:
            pairs = tuple(tuple(int(v) for v in row) for row in np.broadcast_to(widths, (ndim, 2)))
        except ValueError:
            raise ValueError(f"pad: pad_width {pad_width!r} does not fit an array of {ndim} dimensions "
                             "(one (before, after) pair per axis)") from None
    if any(v < 0 for pair in pairs for v in pair):
        raise ValueError(f"pad: pad_width must be non-negative, got {pad_width!r}")
    return pairs


@Primitive
def _pad_constant(x, *, pairs):
    return np.pad(x, pairs), np.shape(x)


def _pad_constant_vjp(g, shape, needs, *, pairs):
    return (g[tuple(slice(before, before + n) for (before, _), n in zip(pairs, shape))],)


defvjp(_pad_constant, _pad_constant_vjp)


@Primitive
def _pad_indexed(x, *, pairs, mode, maps):
    return np.pad(x, pairs, mode=mode), np.shape(x)


def _pad_indexed_vjp(g, shape, needs, *, pairs, mode, maps):
    for axis in reversed(range(len(shape))):
        if maps[axis] is not None:
            g = apply(_fold, g, axis=axis, before=pairs[axis][0], size=shape[axis], source=maps[axis])
    return (g,)


defvjp(_pad_indexed, _pad_indexed_vjp)


@Primitive
def _fold(g, *, axis, before, size, source):
    """The adjoint of taking positions `source` along `axis` (a padding's index map, whose positions
    before .. before + size are the identity): the interior plus the border positions added onto the
    elements they copy."""
    lead = (slice(None),) * axis
    out = np.array(g[lead + (slice(before, before + size),)], copy=True)
    border = np.r_[0:before, before + size:len(source)]
    if border.size:
        np.add.at(out, lead + (source[border],), g[lead + (border,)])
    return out, None


defvjp(_fold, lambda g, res, needs, *, axis, before, size, source: (g[(slice(None),) * axis + (source,)],))


def pad(x: TensorOrArrayT | Values, pad_width: int | Sequence[int] | Sequence[Sequence[int]],
        mode: Literal["constant", "zeros", "reflect", "edge", "replicate", "wrap", "circular"] = "constant"
        ) -> TensorOrArrayT:
    """x padded like ``np.pad(x, pad_width, mode)``. The gradient of a padded position goes back to
    the element it copies.

    Parameters
    ----------
    x : ndarray or Tensor
    pad_width : int, (before, after) pair, or one pair per axis
        np.pad's forms; non-negative (ValueError otherwise; TypeError when not integers).
    mode : str, default "constant"
        "constant" (zeros), "reflect", "edge" or "wrap" -- or the convolutions' names for them,
        "zeros", "reflect", "replicate", "circular". ValueError for another mode, and for a mode other
        than zeros on an empty axis that gets padding.

    Returns
    -------
    ndarray or Tensor
        A Tensor when x is one (recorded when it requires grad), else an ndarray.

    Examples
    --------
    >>> import numpy as np, nbconv
    >>> x = nbconv.Tensor(np.array([1.0, 2.0, 3.0]), requires_grad=True)
    >>> y = nbconv.pad(x, (2, 1), mode="reflect")
    >>> y.sum().backward()
    >>> y.data, x.grad
    (array([3., 2., 1., 2., 3., 2.]), array([1., 3., 2.]))
    """
    if mode not in PAD_MODES:
        raise ValueError(f"pad: mode must be one of {tuple(PAD_MODES)}, got {mode!r}")
    data = array_operand(x, "pad")
    shape = tuple(data.shape)
    pairs = _pad_pairs(pad_width, len(shape))
    np_mode = PAD_MODES[mode]
    if np_mode == "constant":
        return apply(_pad_constant, x, pairs=pairs)
    for n, (before, after) in zip(shape, pairs):
        if n == 0 and before + after:
            raise ValueError(f"pad: mode {mode!r} cannot pad an empty axis (x.shape={shape})")
    maps = tuple(np.pad(np.arange(n), pair, mode=np_mode) if pair != (0, 0) else None
                 for n, pair in zip(shape, pairs))
    return apply(_pad_indexed, x, pairs=pairs, mode=np_mode, maps=maps)
