"""The primitive machinery of the tape's operations: Primitive, defvjp, apply.

Each primitive is a forward function on arrays, ``forward(*arrays, **params) -> (result, residuals)``,
followed by its vector-Jacobian product, ``vjp(g, residuals, needs, **params) -> one gradient (or
None) per positional argument`` (``needs[i]`` tells whether argument i wants one), registered
with ``defvjp`` right below it (as in HIPS autograd). Positional arguments may be arrays or
Tensors; keyword arguments are static parameters. A call whose arguments contain no Tensor
returns the plain result; otherwise the result is a Tensor, recorded on the tape when some
argument requires grad. Recording a primitive that has no VJP raises NotImplementedError naming it.

One VJP serves first- and higher-order gradients. On a plain ``backward()`` it runs on arrays: g and
the residuals are arrays. Under ``create_graph=True`` it runs on Tensors, so that the backward pass
is recorded: g is a Tensor, and every residual that *is* one of the primitive's array arguments
(matched by identity, in argument order) or its result is handed over as that argument's Tensor
(the result as a Tensor attached to the primitive's node), so gradients flow through it; any other
residual (a mask, indices, statistics) is a constant. VJPs are therefore written with operations
that work on arrays and Tensors alike -- the operators, ``.sum``/``.reshape``/``.transpose``, the
functions of nbconv.ops (on arrays they return arrays, at NumPy speed) -- and one whose residual
depends differentiably on an input recomputes it from the input when g is a Tensor (batch_norm,
cross_entropy). Convolution VJPs are convolutions (see nbconv.ops_conv).

Residuals that are arguments or the result are also what the tape guards against in-place writes
(read-only until the node's backward, see nbconv.tape): the caller's arrays -- a Tensor's ``.data``,
or a plain ndarray passed as an argument. Forward passes and VJPs read them through writeable
aliases (``kernel_view``), so the kernels never copy them.

CUDA device arrays (inside Tensors or not) are accepted by primitives declared ``on_device``
(the convolutions) only; any other primitive given one raises NotImplementedError naming it,
before computing anything (no silent copy to the host).
"""
from __future__ import annotations

import numbers
from typing import Any, Callable, Sequence, TypeVar, Union

import numpy as np
from numpy.typing import NDArray

from ._device import is_device_array as _is_device_array
from .tape import Tensor, _aliases, is_grad_enabled, output_tensor, record_node

_VJPS = {}

# Type hints of the operations (nbconv.ops_math, nbconv.ops_nn): an argument is a Tensor or array values, and
# the result is a Tensor exactly when an argument is one (a type checker infers which from the arguments).
TensorOrArrayT = TypeVar("TensorOrArrayT", NDArray[Any], Tensor)
"""The result type of an operation (a TypeVar constrained to NDArray[Any] and Tensor): a Tensor when an
argument is one, else an ndarray."""
Values = Union[NDArray[Any], complex, np.generic, Sequence[Any]]
"""Array values that are not a Tensor: an ndarray, a scalar, or a (nested) sequence of them."""
_HOST = (np.ndarray, numbers.Number, str, tuple, type(None), np.dtype, slice)  # never device arrays


class Primitive:
    """An operation on arrays that the tape differentiates with the VJP registered by :func:`defvjp`.

    Usable as a decorator. Call it with :func:`apply`.

    Parameters
    ----------
    forward : callable
        ``forward(*arrays, **params) -> (result, residuals)``: the result (an array) from the
        positional array arguments and the keyword (static) parameters, and what the VJP needs (an
        array, a tuple, None, ...). Arguments that are also returned as residuals (by identity) are
        handed to the VJP as Tensors under ``create_graph``, and guarded against in-place writes.
    on_device : bool, default False
        Whether forward and VJP accept CUDA device arrays (see :func:`apply`).
    name : str, optional
        What errors and the tape show; default: the forward's name without leading underscores.

    Examples
    --------
    >>> import numpy as np, nbconv
    >>> from nbconv.ops import Primitive, apply, defvjp
    >>> @Primitive
    ... def _cube(x):
    ...     return x ** 3, x                          # (result, residuals for the VJP)
    >>> defvjp(_cube, lambda g, x, needs: (g * 3 * x ** 2,))
    >>> _cube
    <primitive cube>
    >>> t = nbconv.Tensor(np.array([1.0, 2.0]), requires_grad=True)
    >>> apply(_cube, t).sum().backward()
    >>> t.grad
    array([ 3., 12.])
    """

    __slots__ = ("name", "forward", "on_device")

    def __init__(self, forward: Callable[..., tuple[Any, Any]], on_device: bool = False,
                 name: str | None = None) -> None:
        self.forward = forward
        self.name = forward.__name__.lstrip("_") if name is None else name
        self.on_device = on_device

    def __repr__(self) -> str:
        return f"<primitive {self.name}>"


def defvjp(prim: Primitive, vjp: Callable[..., tuple[Any, ...]]) -> None:
    """Register `vjp` as the vector-Jacobian product of `prim` (replacing any earlier one).

    Parameters
    ----------
    prim : Primitive
        The primitive.
    vjp : callable
        ``vjp(g, residuals, needs, **params) -> tuple``: given the gradient g of the primitive's
        result, the residuals its forward returned, ``needs`` (one bool per positional argument:
        whether that argument wants a gradient) and the same keyword parameters as forward, one
        gradient (of that argument's shape) or None per positional argument. On a plain backward g
        and the residuals are arrays; under ``create_graph`` g is a Tensor and so are the residuals
        that are arguments or the result, so write it with operations that work on both (operators,
        ``.sum``, ``.reshape``, the functions of nbconv.ops).

    Examples
    --------
    >>> import numpy as np, nbconv
    >>> from nbconv.ops import Primitive, apply, defvjp
    >>> @Primitive
    ... def _scale(x, *, factor):
    ...     return x * factor, None
    >>> defvjp(_scale, lambda g, residuals, needs, *, factor: (g * factor,))
    >>> nbconv.gradcheck(lambda t: apply(_scale, t, factor=3.0), [np.ones(2)])
    True
    """
    _VJPS[prim] = vjp


def unwrap(a):
    """The array inside a Tensor; anything else unchanged."""
    return a.data if isinstance(a, Tensor) else a


value = unwrap


def apply(prim: Primitive, *args: Any, **params: Any) -> Any:
    """prim's forward on the arrays inside `args`; recorded on the tape when a Tensor in `args` requires grad.

    Parameters
    ----------
    prim : Primitive
        The operation.
    *args : arrays, Tensors or other values
        The positional arguments of prim's forward (the arrays inside Tensors are passed); the ones
        that can receive gradients.
    **params
        The static parameters of prim's forward (and VJP), passed as they are: their names are the
        primitive's own. Never differentiated.

    Returns
    -------
    Tensor or the forward's result
        The forward's result as it is when no argument is a Tensor; otherwise a Tensor (or a tuple of
        Tensors), recorded on the tape when an argument requires grad and grad mode is on.

    Raises
    ------
    NotImplementedError
        An argument or parameter is a CUDA device array and prim is not ``on_device``; or the call
        would be recorded but prim has no VJP (register one with :func:`defvjp`).

    Examples
    --------
    >>> import numpy as np, nbconv
    >>> from nbconv.ops import Primitive, apply
    >>> @Primitive
    ... def _shift(x, *, by):
    ...     return x + by, None
    >>> apply(_shift, np.zeros(2), by=1.5)
    array([1.5, 1.5])
    >>> apply(_shift, nbconv.Tensor(np.zeros(2)), by=1.5)
    Tensor(array([1.5, 1.5]))
    """
    arrays, any_tensor, view = [], False, _aliases.get
    for a in args:
        if isinstance(a, Tensor):
            any_tensor = True
            a = a.data
        arrays.append(view(id(a), a))  # kernel_view
    if not prim.on_device and not all(isinstance(a, _HOST) or not _is_device_array(a)
                                      for a in (*arrays, *params.values())):
        raise NotImplementedError(f"{prim.name} does not accept CUDA device arrays: device arrays are supported by "
                                  "the convolution ops only (conv1d, conv2d, conv3d, conv_transpose1d, "
                                  "conv_transpose2d, conv_transpose3d); copy to the host with Tensor.numpy() first")
    result, residuals = prim.forward(*arrays, **params)
    if not any_tensor:
        return result
    needs = tuple(isinstance(a, Tensor) and a._requires_grad for a in args)
    if not (any(needs) and is_grad_enabled()):
        return Tensor(result)
    vjp = _VJPS.get(prim)
    if vjp is None:
        raise NotImplementedError(f"primitive '{prim.name}' has no VJP registered with defvjp, so it cannot be "
                                  "recorded on the tape (call it under no_grad() or on arrays)")
    return _record(prim, vjp, args, arrays, result, residuals, needs, params)


class _Backward:
    """A recorded primitive's backward_fn: its VJP with the residuals and static parameters."""

    __slots__ = ("vjp", "stored", "sources", "needs", "params", "single")

    def __init__(self, vjp, stored, sources, needs, params, single):
        self.vjp, self.stored, self.sources, self.needs, self.params, self.single = \
            vjp, stored, sources, needs, params, single

    def __call__(self, node, grads, needed, create_graph):
        needs = self.needs if needed is None else tuple(a and b for a, b in zip(self.needs, needed))
        res = self.stored
        if create_graph and self.sources is not None:  # the saved inputs and result as Tensors (see above)
            res = tuple(e if s is None else output_tensor(node, 0, e) if s[0] == "output"
                        else e if node.parents[s[1]] is None else node.parents[s[1]]
                        for e, s in zip(res, self.sources))
        return self.vjp(grads[0], res[0] if self.single else res, needs, **self.params)


def _record(prim, vjp, args, arrays, result, residuals, needs, params):
    single = type(residuals) is not tuple
    entries = (residuals,) if single else residuals
    # Which residuals are the arguments (in argument order, each once while possible) or the result.
    sources, saved, kept, used = [], [], [], set()
    for e in entries:
        source = None
        if type(e) is np.ndarray or (not isinstance(e, _HOST) and _is_device_array(e)):
            if e is result:
                source = ("output", 0)
            else:
                matches = [i for i, a in enumerate(arrays) if a is e]
                if matches:
                    free = [i for i in matches if i not in used]
                    source = ("input", free[0] if free else matches[0])
                    used.add(source[1])
            if source is not None:
                saved.append(result if source[0] == "output" else unwrap(args[source[1]]))
                kept.append(source)
        sources.append(source)
    backward = _Backward(vjp, entries, tuple(sources) if saved else None, needs, params, single)
    parents = tuple(a if n else None for a, n in zip(args, needs))
    out = record_node(prim.name, backward, parents, result, tuple(saved), tuple(kept))
    if saved:  # now guarded (read-only): the VJP reads them through writeable aliases
        backward.stored = tuple(e if s is None else _aliases.get(id(e), e) for e, s in zip(entries, sources))
    return out


# ---------------------------------------------------------------- helpers for VJPs (arrays or Tensors)

def shape_of(a):
    """The shape of an array, Tensor or scalar."""
    return tuple(a.shape) if isinstance(a, (Tensor, np.ndarray)) else np.shape(a)


def is_graph(g):
    """Whether a VJP runs under create_graph (its gradient is a Tensor)."""
    return isinstance(g, Tensor)


def unbroadcast(g, shape):
    """Sum `g` over the axes that broadcasting added or stretched, giving an array of `shape`."""
    g_shape = tuple(g.shape)
    if g_shape == tuple(shape):
        return g
    extra = len(g_shape) - len(shape)
    axes = tuple(range(extra)) + tuple(extra + i for i, n in enumerate(shape) if n == 1 and g_shape[extra + i] != 1)
    return g.sum(axis=axes, keepdims=True).reshape(tuple(shape))


def broadcast(g, shape):
    """`g` broadcast to `shape` (a read-only view for an array; the differentiable op for a Tensor)."""
    if isinstance(g, Tensor):
        from .ops_math import broadcast_to
        return broadcast_to(g, shape)
    return np.broadcast_to(g, shape)


def expand(g, shape, axis, keepdims):
    """`g`, the gradient of a reduction over `axis`, broadcast back to the input's `shape`."""
    if axis is not None and not keepdims:
        axes = {a % len(shape) for a in ((axis,) if isinstance(axis, numbers.Integral) else axis)}
        g = g.reshape(tuple(1 if i in axes else n for i, n in enumerate(shape)))
    return broadcast(g, shape)


def reduced_count(shape, axis):
    if axis is None:
        return int(np.prod(shape))
    axes = (axis,) if isinstance(axis, numbers.Integral) else axis
    return int(np.prod([shape[a] for a in axes]))


def array_operand(x, op):
    """The array behind x (a Tensor, ndarray or device array); TypeError naming op otherwise."""
    data = x.data if isinstance(x, Tensor) else x
    if not (isinstance(data, np.ndarray) or _is_device_array(data)):
        raise TypeError(f"{op}: x must be a NumPy array or a Tensor, got {type(x).__name__}")
    return data
