"""Differentiable operations on arrays and Tensors: the public names, the Tensor operators and
methods, and the NumPy protocols of Tensors.

The operations live in four modules, one-way from the machinery up:

- :mod:`nbconv.ops_core`: Primitive, defvjp, apply -- how a primitive runs, records and
  differentiates (first and higher order), and what it guards against in-place writes;
- :mod:`nbconv.ops_math`: arithmetic, elementwise functions, matmul, reductions, shapes, indexing,
  concatenate/stack, pad;
- :mod:`nbconv.ops_nn`: linear, softmax, log_softmax, cross_entropy, dropout, batch_norm, pooling;
- :mod:`nbconv.ops_conv`: the convolutions, whose VJPs are convolutions.

Every function accepts arrays or Tensors: given no Tensor it returns the plain result; otherwise a
Tensor, recorded on the tape when an input requires grad.

NumPy interplay: an operator with a NumPy array on either side (``a * t``, ``t * a``, ``a @ t``)
gives a Tensor; NumPy ufuncs and functions applied to Tensors (``np.exp(t)``, ``np.sum(t, axis=0)``,
``np.concatenate([t, a])``) dispatch to the tape when nbconv has the operation. Those whose results
carry no gradient (comparisons, ``np.isnan``, ``np.argmax``, ...) compute on the data and return
arrays, and so does any other on Tensors that would not be recorded (no input requires grad, or
under no_grad); any other on a Tensor that requires grad raises TypeError saying what to use --
never a silent conversion that drops the gradient (as PyTorch refuses ``.numpy()`` there).
"""
import inspect

import numpy as np

from .ops_conv import (conv1d, conv1d_backward, conv2d, conv2d_backward, conv3d, conv3d_backward,
                       conv_input_grad, conv_transpose1d, conv_transpose2d, conv_transpose3d, conv_weight_grad)
from .ops_core import Primitive, apply, defvjp
from .ops_math import (abs, add, astype, broadcast_to, clip, concatenate, divide, exp, getitem, log,
                       matmul, max, mean, multiply, negative, pad, power, relu, reshape, sigmoid, sqrt, stack,
                       subtract, sum, tanh, transpose)
from .ops_nn import (avg_pool1d, avg_pool2d, avg_pool3d, batch_norm, cross_entropy, dropout, linear,
                     log_softmax, max_pool1d, max_pool2d, max_pool3d, softmax)
from .tape import Tensor, is_grad_enabled

__all__ = ["Primitive", "apply", "defvjp",
           "add", "subtract", "multiply", "divide", "negative", "power", "exp", "log", "relu", "abs", "sqrt", "tanh",
           "sigmoid", "clip", "matmul", "astype", "broadcast_to", "sum", "mean", "max", "reshape", "transpose",
           "getitem", "concatenate", "stack", "pad",
           "linear", "log_softmax", "softmax", "cross_entropy", "dropout", "batch_norm", "max_pool1d", "max_pool2d",
           "max_pool3d", "avg_pool1d", "avg_pool2d", "avg_pool3d",
           "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d",
           "conv1d_backward", "conv2d_backward", "conv3d_backward", "conv_input_grad", "conv_weight_grad"]

# ---------------------------------------------------------------- Tensor operators and methods

_METHODS = {
    "__add__": add, "__radd__": lambda a, b: add(b, a),
    "__sub__": subtract, "__rsub__": lambda a, b: subtract(b, a),
    "__mul__": multiply, "__rmul__": lambda a, b: multiply(b, a),
    "__truediv__": divide, "__rtruediv__": lambda a, b: divide(b, a),
    "__matmul__": matmul, "__rmatmul__": lambda a, b: matmul(b, a),
    "__neg__": negative, "__pos__": lambda a: a, "__pow__": power, "__abs__": abs, "__getitem__": getitem,
    "sum": sum, "mean": mean, "max": max, "reshape": reshape, "transpose": transpose, "astype": astype,
    "relu": relu, "exp": exp, "log": log, "abs": abs, "sqrt": sqrt, "tanh": tanh, "sigmoid": sigmoid, "clip": clip,
}
for _name, _method in _METHODS.items():
    setattr(Tensor, _name, _method)
Tensor.T = property(lambda self: transpose(self), doc="The Tensor with its axes reversed (recorded).")


def _comparison(ufunc):
    def compare(a, b):
        """Elementwise comparison of the values: a boolean array (a constant for the tape, e.g. a mask)."""
        return ufunc(a.data, b.data if isinstance(b, Tensor) else b)
    return compare


for _name, _ufunc in (("__lt__", np.less), ("__le__", np.less_equal), ("__gt__", np.greater),
                      ("__ge__", np.greater_equal)):
    setattr(Tensor, _name, _comparison(_ufunc))

# ---------------------------------------------------------------- NumPy protocols

_UFUNCS = {
    np.add: add, np.subtract: subtract, np.multiply: multiply, np.divide: divide, np.negative: negative,
    np.positive: lambda a: a, np.matmul: matmul, np.power: power, np.exp: exp, np.log: log, np.sqrt: sqrt,
    np.tanh: tanh, np.absolute: abs,
}
_FUNCTIONS = {
    np.sum: sum, np.mean: mean, np.max: max, np.amax: max, np.reshape: reshape, np.transpose: transpose,
    np.concatenate: concatenate, np.stack: stack, np.pad: pad, np.clip: clip, np.matmul: matmul,
    np.broadcast_to: broadcast_to,
}
_INFO = {np.shape: lambda a: a.shape, np.ndim: lambda a: a.ndim, np.size: lambda a: a.size}
# Results that carry no gradient (booleans, indices): computed on the data whatever the grad mode.
_CONSTANT_UFUNCS = {np.less, np.less_equal, np.greater, np.greater_equal, np.equal, np.not_equal, np.isnan, np.isinf,
                    np.isfinite, np.signbit, np.logical_and, np.logical_or, np.logical_not, np.logical_xor, np.sign,
                    np.floor, np.ceil, np.trunc, np.rint}
_CONSTANT_FUNCTIONS = {np.argmax, np.argmin, np.argsort, np.argwhere, np.nonzero, np.flatnonzero, np.count_nonzero,
                       np.array_equal, np.array_equiv, np.allclose, np.isclose, np.any, np.all, np.round,
                       np.searchsorted, np.unique}
_HINT = ("use the Tensor operators and methods (+ - * / @ **, abs, sqrt, exp, log, tanh, sigmoid, clip, relu, sum, "
         "mean, max, reshape, transpose, indexing) or nbconv's functions (softmax, log_softmax, concatenate, stack, "
         "pad, ...); to compute on the values without recording, use t.data (or t.numpy())")


def _data(value):
    """`value` with every Tensor (also inside lists and tuples) replaced by its array."""
    if isinstance(value, Tensor):
        return value.data
    if isinstance(value, (list, tuple)):
        return type(value)(_data(v) for v in value)
    return value


def _records(values):
    """Whether some Tensor among `values` (also inside lists and tuples) would be recorded."""
    for v in values:
        if isinstance(v, Tensor):
            if v.requires_grad and is_grad_enabled():
                return True
        elif isinstance(v, (list, tuple)) and _records(v):
            return True
    return False


def _array_ufunc(self, ufunc, method, *inputs, **kwargs):
    fn = _UFUNCS.get(ufunc)
    if fn is not None and method == "__call__" and not kwargs:
        return fn(*inputs)
    if ufunc in _CONSTANT_UFUNCS or not _records(inputs + tuple(kwargs.values())):
        return getattr(ufunc, method)(*_data(inputs), **_data(kwargs))
    call = f"np.{ufunc.__name__}" + ("" if method == "__call__" else f".{method}")
    extra = f" with {', '.join(kwargs)}=" if kwargs and fn is not None and method == "__call__" else ""
    raise TypeError(f"{call}{extra} on a Tensor that requires grad is not supported (it would not be recorded on the "
                    "tape): " + _HINT)


def _array_function(self, func, types, args, kwargs):
    info = _INFO.get(func)
    if info is not None:
        return info(*args, **kwargs)
    fn = _FUNCTIONS.get(func)
    name = f"np.{func.__name__}"
    if fn is None:
        if func in _CONSTANT_FUNCTIONS or not _records(args + tuple(kwargs.values())):
            return func(*_data(args), **_data(kwargs))
        raise TypeError(f"{name} on a Tensor that requires grad is not supported (it would not be recorded on the "
                        "tape): " + _HINT)
    signature = inspect.signature(fn)
    try:
        signature.bind(*args, **kwargs)
    except TypeError as error:
        plain = signature.replace(parameters=[p.replace(annotation=p.empty) for p in signature.parameters.values()],
                                  return_annotation=signature.empty)   # the message shows names, not type hints
        raise TypeError(f"{name} on Tensors takes the arguments of nbconv's {fn.__name__}{plain}: {error}") from None
    return fn(*args, **kwargs)


Tensor.__array_ufunc__ = _array_ufunc
Tensor.__array_function__ = _array_function
