"""Reverse-mode automatic differentiation: Tensor, Function, no_grad, gradcheck.

A Tensor wraps an array. An operation whose inputs require gradients records a :class:`Node` on
its result(s); the recorded nodes form a graph that :meth:`Tensor.backward` walks in reverse
topological order, iteratively (no recursion, so chains of any depth work). The operations
themselves (arithmetic, reductions, convolutions, pooling, ...) live in :mod:`nbconv.ops`, which
also installs the Tensor operators and methods; this module never touches a kernel.

Semantics follow PyTorch: gradients of every use of a Tensor add up; leaf gradients accumulate
across ``backward()`` calls until :meth:`Tensor.zero_grad`; a non-leaf keeps ``.grad`` only after
:meth:`Tensor.retain_grad`. The graph is kept as long as its output Tensors are alive, so
``backward()`` may be called more than once on the same graph.

A Tensor may hold a CUDA device array (a numba device array, or a zero-copy numba view of any
object exposing ``__cuda_array_interface__``). Its gradients are then device arrays too, built,
accumulated and cast on the device by the backend that :func:`nbconv._backend.select` picks for
them (imported only once a device array is seen; this module names no backend);
only ``numpy()`` and ``item()`` copy to the host. Which operations accept device arrays is up to
:mod:`nbconv.ops` (the convolutions).
"""
import contextlib
import threading
import weakref

import numpy as np

from . import _backend
from ._device import as_device_array, is_device_array as _is_device_array

__all__ = ["Tensor", "Function", "no_grad", "is_grad_enabled", "gradcheck", "GradcheckError"]

_mode = threading.local()


def is_grad_enabled():
    """Whether operations on Tensors are recorded in this thread (False inside ``no_grad``)."""
    return getattr(_mode, "enabled", True)


class no_grad(contextlib.ContextDecorator):
    """Context manager (and decorator) that stops recording operations in this thread."""

    def __enter__(self):
        self._previous = is_grad_enabled()
        _mode.enabled = False
        return self

    def __exit__(self, *exc):
        _mode.enabled = self._previous
        return False


def _is_float(dtype):
    return np.issubdtype(np.dtype(dtype), np.floating)


def _where(a):
    return "a CUDA device array" if _is_device_array(a) else "on the host"


def _device_filled(backend, shape, dtype, value):
    """A new C-contiguous device array of `shape` and `dtype` from `backend` (the device backend, see
    _device_backend) holding `value` (a scalar, or a device array of `shape` with any strides and
    dtype), filled by a kernel on the device."""
    out = backend.empty(shape, dtype)
    if out.size:
        out[(slice(None),) * len(shape)] = value if np.isscalar(value) else as_device_array(value)
    return out


def _device_backend(a):
    """The backend of device array `a` (nbconv._backend.select: the one place that picks backends)."""
    return _backend.select(a=a)


def _device_contiguous(backend, a):
    a = as_device_array(a)
    return a if a.is_c_contiguous() else _device_filled(backend, tuple(a.shape), a.dtype, a)


def _sum(a, b):
    """a + b for two gradients of one shape and dtype, on the device when they are device arrays."""
    if _is_device_array(a):
        backend = _backend.select(a=a, b=b)
        return backend.add(_device_contiguous(backend, a), _device_contiguous(backend, b))
    return a + b


class Tensor:
    """An array (``.data``) with an optional gradient (``.grad``) recorded on the tape.

    ``Tensor(array, requires_grad=False)`` shares the array's memory (lists and scalars are
    converted with ``np.asarray``; a CUDA device array stays on the device, as a numba device
    array: objects exposing ``__cuda_array_interface__`` are viewed without a copy). Only
    floating-point Tensors can require gradients.
    """

    __slots__ = ("data", "grad", "_requires_grad", "_node", "_index", "__weakref__")
    __array_ufunc__ = None  # ndarray (op) Tensor defers to Tensor's reflected operator

    def __init__(self, data, requires_grad=False):
        if isinstance(data, Tensor):
            data = data.data
        elif _is_device_array(data):
            data = as_device_array(data)  # numba's own, or a zero-copy view of a CuPy/PyTorch array
        elif not isinstance(data, np.ndarray):
            data = np.asarray(data)
        self.data = data
        self.grad = None
        self._node = None
        self._index = 0
        self._requires_grad = False
        self.requires_grad = requires_grad

    @property
    def requires_grad(self):
        return self._requires_grad

    @requires_grad.setter
    def requires_grad(self, value):
        if self._node is not None:
            raise RuntimeError("requires_grad can only be changed on leaf Tensors; use detach() for a non-leaf")
        if value and not _is_float(self.data.dtype):
            raise TypeError(f"only floating-point Tensors can require gradients, got dtype {self.data.dtype}")
        self._requires_grad = bool(value)

    shape = property(lambda self: tuple(self.data.shape), doc="The shape of .data.")
    dtype = property(lambda self: np.dtype(self.data.dtype), doc="The dtype of .data.")
    ndim = property(lambda self: len(self.data.shape), doc="The number of dimensions of .data.")
    size = property(lambda self: int(np.prod(self.data.shape)), doc="The number of elements of .data.")
    is_leaf = property(lambda self: self._node is None,
                       doc="True unless the Tensor is the result of a recorded operation.")

    def numpy(self):
        """The underlying NumPy array (shared, not copied); for a device array, a copy on the host."""
        if _is_device_array(self.data):
            return self.data.copy_to_host()
        return self.data

    def item(self):
        """The single element as a Python scalar (copied from the device for a device array)."""
        return self.numpy().item()

    def __array__(self, dtype=None, copy=None):
        if _is_device_array(self.data):
            raise TypeError("a Tensor holding a CUDA device array cannot be converted to a NumPy array implicitly; "
                            "call .numpy() to copy it to the host")
        return np.array(self.data, dtype=dtype, copy=copy)

    def __len__(self):
        return len(self.data)

    def __repr__(self):
        grad = ", requires_grad=True" if self._requires_grad else ""
        if _is_device_array(self.data):
            return f"Tensor(<CUDA device array of shape {self.shape}, dtype {self.dtype}>{grad})"
        return f"Tensor({self.data!r}{grad})"

    def detach(self):
        """A new leaf Tensor sharing .data that does not require grad."""
        return Tensor(self.data)

    def zero_grad(self):
        """Forget the accumulated gradient (``.grad`` becomes None)."""
        self.grad = None

    def retain_grad(self):
        """Keep ``.grad`` on this non-leaf Tensor during backward (a no-op on leaves)."""
        if not self._requires_grad:
            raise RuntimeError("retain_grad() on a Tensor that does not require grad")
        if self._node is not None:
            self._node.retained[self._index] = weakref.ref(self)

    def backward(self, gradient=None):
        """Accumulate d(self)/d(leaf) . gradient into every leaf's ``.grad`` that requires grad.

        ``gradient`` (same shape as self, cast to its dtype) is required unless self has exactly one
        element. It must be on the same side as self: a device array for a Tensor holding one (the
        implicit one-element seed is then made on the device), a host array otherwise (TypeError).
        """
        if not self._requires_grad:
            raise RuntimeError("backward() on a Tensor that does not require grad (it has no recorded graph)")
        if gradient is None:
            if self.size != 1:
                raise RuntimeError(f"backward() needs a gradient argument for a Tensor of shape {self.shape}; "
                                   "it can be omitted only for single-element Tensors")
            if _is_device_array(self.data):
                gradient = _device_filled(_device_backend(self.data), self.shape, self.dtype, 1)
            else:
                gradient = np.ones(self.shape, self.dtype)
        else:
            if isinstance(gradient, Tensor):
                gradient = gradient.data
            if _is_device_array(gradient) != _is_device_array(self.data):
                raise TypeError(f"gradient is {_where(gradient)} but the Tensor's data is {_where(self.data)}; "
                                "they must both be on the host or both on a CUDA device")
            if not _is_device_array(gradient):
                gradient = np.asarray(gradient)
            if tuple(gradient.shape) != self.shape:
                raise ValueError(f"gradient has shape {tuple(gradient.shape)} but the Tensor has shape {self.shape}")
            if _is_device_array(gradient):
                if np.dtype(gradient.dtype) != self.dtype:
                    gradient = _device_filled(_device_backend(gradient), self.shape, self.dtype, gradient)
            else:
                gradient = gradient.astype(self.dtype, copy=False)
        _run_backward(self, gradient)


def _accumulate(tensor, grad):
    """tensor.grad += grad, starting from a private copy (on the device for a device gradient, where
    each accumulation makes a new array)."""
    if _is_device_array(grad):
        tensor.grad = (_device_filled(_device_backend(grad), tensor.shape, tensor.dtype, grad) if tensor.grad is None
                       else _sum(tensor.grad, grad))
    elif tensor.grad is None:
        tensor.grad = np.array(grad, dtype=tensor.dtype, copy=True)
    else:
        tensor.grad += grad


class Node:
    """One recorded operation: maps its outputs' gradients to its inputs' gradients.

    ``backward_fn(grads)`` receives one array per output (zeros, on the output's side, for outputs
    that got no gradient)
    and returns one gradient or None per entry of ``parents`` (the input Tensors that require
    grad, None for the other inputs).
    """

    __slots__ = ("name", "backward_fn", "parents", "outputs", "retained")

    def __init__(self, name, backward_fn, parents, outputs):
        self.name = name
        self.backward_fn = backward_fn
        self.parents = parents
        self.outputs = outputs  # ((shape, dtype, device backend or None on the host), ...) per output
        self.retained = {}  # output index -> weakref to the Tensor that asked for retain_grad


def record(name, backward_fn, inputs, results):
    """Wrap `results` (an array or a tuple of arrays) in Tensors, recording a Node when grad mode
    is on and some Tensor in `inputs` requires grad; returns a Tensor or a tuple of Tensors."""
    single = not isinstance(results, tuple)
    arrays = (results,) if single else results
    parents = tuple(a if isinstance(a, Tensor) and a._requires_grad else None for a in inputs)
    outs = tuple(Tensor(a) for a in arrays)
    if is_grad_enabled() and any(p is not None for p in parents):
        node = Node(name, backward_fn, parents,
                    tuple((tuple(a.shape), np.dtype(a.dtype), _device_backend(a) if _is_device_array(a) else None)
                          for a in arrays))
        for i, t in enumerate(outs):
            if _is_float(t.data.dtype):
                t._node, t._index, t._requires_grad = node, i, True
    return outs[0] if single else outs


def _check_grad(grad, tensor, node, position):
    """`grad` for input `position` of `node`, cast to the input's dtype; RuntimeError when its shape
    differs or when it is not on the input's side (host or device)."""
    if _is_device_array(grad) != _is_device_array(tensor.data):
        raise RuntimeError(f"{node.name} backward returned a gradient {_where(grad)} for input {position}, "
                           f"which is {_where(tensor.data)}")
    if not _is_device_array(grad):
        grad = np.asarray(grad)
    if tuple(grad.shape) != tensor.shape:
        raise RuntimeError(f"{node.name} backward returned a gradient of shape {tuple(grad.shape)} for input "
                           f"{position}, which has shape {tensor.shape}")
    if np.dtype(grad.dtype) == tensor.dtype:
        return grad
    if _is_device_array(grad):
        return _device_filled(_device_backend(grad), tensor.shape, tensor.dtype, grad)
    return grad.astype(tensor.dtype)


def _run_backward(root, gradient):
    """Propagate `gradient` from `root` through the graph, in reverse topological order, iteratively."""
    if root._node is None:
        _accumulate(root, gradient)
        return
    # Count, for every node reachable from the root, the edges that will deliver gradients to it.
    consumers = {}
    stack = [root._node]
    seen = {root._node}
    while stack:
        node = stack.pop()
        for parent in node.parents:
            if parent is not None and parent._node is not None:
                producer = parent._node
                consumers[producer] = consumers.get(producer, 0) + 1
                if producer not in seen:
                    seen.add(producer)
                    stack.append(producer)
    pending = {root._node: [None] * len(root._node.outputs)}
    pending[root._node][root._index] = gradient
    ready = [root._node]
    while ready:
        node = ready.pop()
        grads = pending.pop(node, None)
        input_grads = (None,) * len(node.parents) if grads is None else _node_backward(node, grads)
        for position, (parent, grad) in enumerate(zip(node.parents, input_grads)):
            if parent is None:
                continue
            producer = parent._node
            if grad is not None:
                grad = _check_grad(grad, parent, node, position)
                if producer is None:
                    _accumulate(parent, grad)
                else:
                    slots = pending.setdefault(producer, [None] * len(producer.outputs))
                    previous = slots[parent._index]
                    slots[parent._index] = grad if previous is None else _sum(previous, grad)
            if producer is not None:
                consumers[producer] -= 1
                if consumers[producer] == 0:
                    ready.append(producer)  # processed even without gradients, to release its inputs


def _node_backward(node, grads):
    """The input gradients of `node` given its (partly None) output gradients; fills retained .grad."""
    for index, ref in node.retained.items():
        tensor = ref()
        if tensor is not None and grads[index] is not None:
            _accumulate(tensor, grads[index])
    grads = tuple(g if g is not None else np.zeros(shape, dtype) if device is None
                  else _device_filled(device, shape, dtype, 0)
                  for g, (shape, dtype, device) in zip(grads, node.outputs))
    input_grads = node.backward_fn(grads)
    if not isinstance(input_grads, (tuple, list)):
        input_grads = (input_grads,)
    if len(input_grads) != len(node.parents):
        raise RuntimeError(f"{node.name} backward returned {len(input_grads)} gradients for "
                           f"{len(node.parents)} inputs")
    return input_grads


class Context:
    """What a Function's forward leaves for its backward: ``save_for_backward`` and any attribute."""

    def __init__(self, needs_input_grad):
        self.needs_input_grad = needs_input_grad
        self._saved = ()

    def save_for_backward(self, *arrays):
        self._saved = arrays

    @property
    def saved_tensors(self):
        return self._saved


class Function:
    """Base class for custom differentiable operations.

    Subclasses define ``forward(ctx, *inputs, **kwargs)`` and ``backward(ctx, *grad_outputs)`` as
    static methods and are called with ``MyOp.apply(*inputs, **kwargs)``. ``forward`` receives the
    arrays inside Tensor arguments (other arguments unchanged) and returns an array or a tuple of
    arrays; ``backward`` receives one gradient array per output (zeros for an output that did not
    get one) and returns one gradient (or None) per positional input. ``ctx.needs_input_grad`` tells
    which inputs need one.
    """

    @staticmethod
    def forward(ctx, *inputs):
        raise NotImplementedError("Function subclasses must define a static forward(ctx, *inputs)")

    @staticmethod
    def backward(ctx, *grad_outputs):
        raise NotImplementedError("Function subclasses must define a static backward(ctx, *grad_outputs)")

    @classmethod
    def apply(cls, *inputs, **kwargs):
        ctx = Context(tuple(isinstance(a, Tensor) and a.requires_grad for a in inputs))
        arrays = [a.data if isinstance(a, Tensor) else a for a in inputs]
        with no_grad():
            results = cls.forward(ctx, *arrays, **kwargs)
        if isinstance(results, (tuple, list)):
            results = tuple(r.data if isinstance(r, Tensor) else r for r in results)
        elif isinstance(results, Tensor):
            results = results.data
        return record(cls.__name__, lambda grads: cls.backward(ctx, *grads), inputs, results)


class GradcheckError(RuntimeError):
    """The tape's gradient disagrees with finite differences."""


def gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-3):
    """Compare the tape's gradients of ``fn(*inputs)`` with central finite differences in float64.

    Floating-point Tensors that require grad are checked, and so are floating-point ndarrays
    (wrapped as Tensors that require grad); everything else is passed through unchanged. All
    checked values are copied to float64; the check runs on the host (device arrays raise
    NotImplementedError: pass host copies, ``Tensor.numpy()``). ``fn`` may return a Tensor or a tuple of Tensors: the
    check is made on a fixed random projection ``sum(v_k * out_k)`` of the outputs. Returns True,
    or raises GradcheckError describing the worst entry, where |tape - numeric| exceeds
    atol + rtol * |numeric| the most.
    """
    if not isinstance(inputs, (tuple, list)):
        inputs = (inputs,)
    args, checked = [], []
    for a in inputs:
        if _is_device_array(a.data if isinstance(a, Tensor) else a):
            raise NotImplementedError("gradcheck runs on the host: pass host copies of device arrays (Tensor.numpy())")
        if isinstance(a, Tensor) and _is_float(a.dtype):
            a = Tensor(np.array(a.data, dtype=np.float64), requires_grad=a.requires_grad)
        elif isinstance(a, np.ndarray) and _is_float(a.dtype):
            a = Tensor(np.array(a, dtype=np.float64), requires_grad=True)
        if isinstance(a, Tensor) and a.requires_grad:
            checked.append(len(args))
        args.append(a)
    if not checked:
        raise ValueError("gradcheck needs at least one floating-point input to check")

    def outputs():
        out = fn(*args)
        out = out if isinstance(out, (tuple, list)) else (out,)
        return [o for o in out if isinstance(o, Tensor) and _is_float(o.dtype)]

    outs = outputs()
    if not outs:
        raise ValueError("gradcheck: fn returned no floating-point Tensor to check")
    rng = np.random.default_rng(0)
    projections = [rng.standard_normal(o.shape) for o in outs]
    for o, v in zip(outs, projections):
        if o.requires_grad:
            o.backward(v.astype(o.dtype))

    def projected():
        with no_grad():
            return sum(float(np.sum(np.asarray(o.data, dtype=np.float64) * v))
                       for o, v in zip(outputs(), projections))

    worst = None
    for k in checked:
        t = args[k]
        analytic = np.zeros(t.shape) if t.grad is None else np.asarray(t.grad, dtype=np.float64)
        numeric = np.empty(t.shape)
        flat, num_flat = t.data.reshape(-1), numeric.reshape(-1)
        for i in range(flat.size):
            original = flat[i]
            flat[i] = original + eps
            plus = projected()
            flat[i] = original - eps
            minus = projected()
            flat[i] = original
            num_flat[i] = (plus - minus) / (2 * eps)
        excess = np.abs(analytic - numeric) - (atol + rtol * np.abs(numeric))
        if excess.size and (worst is None or excess.max() > worst[0]):
            i = np.unravel_index(int(np.argmax(excess)), t.shape)
            worst = (excess.max(), k, i, analytic[i], numeric[i], int(np.sum(excess > 0)), excess.size, t.shape)
    if worst is not None and worst[0] > 0:
        _, k, i, a, n, bad, total, shape = worst
        raise GradcheckError(f"gradient of input {k} (shape {shape}) disagrees with finite differences: at index "
                             f"{tuple(int(j) for j in i)} the tape gives {float(a)!r} but finite differences give {float(n)!r} "
                             f"({bad} of {total} entries exceed atol={atol} + rtol={rtol} * |numeric|)")
    return True
