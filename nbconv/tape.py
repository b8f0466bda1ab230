"""Reverse-mode automatic differentiation: Tensor, Function, no_grad, grad, gradcheck, gradgradcheck.

A Tensor wraps an array. An operation whose inputs require gradients records a :class:`Node` on
its result(s); the recorded nodes form a graph that :meth:`Tensor.backward` and :func:`grad` walk in
reverse topological order, iteratively (no recursion, so chains of any depth work). The operations
themselves (arithmetic, reductions, convolutions, pooling, ...) live in :mod:`nbconv.ops`, which
also installs the Tensor operators and methods; this module never touches a kernel.

Semantics follow PyTorch: gradients of every use of a Tensor add up; leaf gradients accumulate
across ``backward()`` calls until :meth:`Tensor.zero_grad`; a non-leaf keeps ``.grad`` only after
:meth:`Tensor.retain_grad`. The graph is kept as long as its output Tensors are alive, so
``backward()`` may be called more than once on the same graph.

Higher-order gradients. With ``create_graph=True`` the backward pass runs the operations' VJPs on
Tensors, so the pass is itself recorded: the gradients are Tensors with a graph of their own, which
can be differentiated again (every VJP in :mod:`nbconv.ops` is written with differentiable
operations). A Node's ``backward_fn(node, grads, needed, create_graph)`` gets the output gradients
as arrays (plain pass) or Tensors (``create_graph``), ``needed`` (None, or one flag per parent: the
gradients :func:`grad` actually asks for) and returns one gradient (array, Tensor or None) per parent.

Threads. Grad mode (:class:`no_grad`) is per thread; concurrent ``backward()`` calls may share
leaves: accumulation into ``.grad`` is serialized by a lock (in the order the threads reach it).

Saved arrays. An operation that keeps one of its inputs (or its result) for backward *guards* that
array until its node has run backward (or is freed): the array -- the Tensor's ``.data`` or a plain
ndarray argument, and the array owning its memory when it is a view -- is made read-only, so an
in-place write is refused by NumPy ("assignment destination is read-only") instead of silently
changing the gradient; the previous flags are restored afterwards. Kernels keep reading the data
through writeable aliases (:func:`kernel_view`), so nothing is copied. Writes through nbconv's own
in-place paths (the optimizers, :func:`modify_in_place`) are allowed at any time and bump a version
counter; a backward that reaches an operation whose saved array changed since its forward pass
raises RuntimeError naming the operation (PyTorch's version-counter behaviour). Not detected: writes
through a view that existed before the array was saved, and raw writes made after the node's first
backward (a second backward over a kept graph then sees the new values). Device arrays have no
read-only flag: only the version counter covers them.

A Tensor may hold a CUDA device array (a numba device array, or a zero-copy numba view of any
object exposing ``__cuda_array_interface__``). Its gradients are then device arrays too, built,
accumulated and cast on the device by the backend that :func:`nbconv._backend.select` picks for
them (imported only once a device array is seen; this module names no backend);
only ``numpy()`` and ``item()`` copy to the host. Which operations accept device arrays is up to
:mod:`nbconv.ops` (the convolutions). Higher-order gradients are computed on the host only.
"""
from __future__ import annotations

import contextlib
import copy
import threading
import weakref
from typing import TYPE_CHECKING, Any, Callable, Iterator, Literal, Sequence, SupportsIndex

import numpy as np
from numpy.typing import ArrayLike, DTypeLike, NDArray

from . import _backend
from ._device import as_device_array, is_device_array as _device_check
from .conv import DeviceArray

__all__ = ["Tensor", "Function", "no_grad", "is_grad_enabled", "grad", "gradcheck", "gradgradcheck",
           "GradcheckError", "modify_in_place"]

# ---------------------------------------------------------------------------------------------- grad mode

_mode = threading.local()


def is_grad_enabled() -> bool:
    """Whether operations on Tensors are recorded in this thread (False inside ``no_grad``).

    Examples
    --------
    >>> import nbconv
    >>> from nbconv.tape import is_grad_enabled
    >>> is_grad_enabled()
    True
    >>> with nbconv.no_grad():
    ...     is_grad_enabled()
    False
    """
    return getattr(_mode, "enabled", True)


class no_grad(contextlib.ContextDecorator):
    """Context manager (and decorator) that stops recording operations in this thread.

    Re-entrant and per thread: one instance may be used by several threads at once and by recursive
    calls of a decorated function; each exit restores the mode its own entry found (a stack per thread).
    Operations inside return Tensors that do not require grad, and nothing is kept for backward.

    Examples
    --------
    >>> import numpy as np, nbconv
    >>> w = nbconv.Tensor(np.ones(3), requires_grad=True)
    >>> with nbconv.no_grad():
    ...     (w * 2).requires_grad
    False
    >>> @nbconv.no_grad()
    ... def evaluate(w):
    ...     return (w * 2).sum()
    >>> evaluate(w)
    Tensor(array(6.))
    """

    def __enter__(self) -> no_grad:
        _stack().append(is_grad_enabled())
        _mode.enabled = False
        return self

    def __exit__(self, *exc: object) -> Literal[False]:
        _mode.enabled = _stack().pop()
        return False


def _stack():
    stack = getattr(_mode, "stack", None)
    if stack is None:
        stack = _mode.stack = []
    return stack


@contextlib.contextmanager
def _grad_mode(enabled):
    """Recording on or off in this thread for the duration (the backward pass's own mode)."""
    previous = is_grad_enabled()
    _mode.enabled = enabled
    try:
        yield
    finally:
        _mode.enabled = previous


# ---------------------------------------------------------------------------------------------- helpers

def _is_float(dtype):
    return np.dtype(dtype).kind == "f"


def _is_device_array(a):
    return not isinstance(a, np.ndarray) and _device_check(a)


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
    """a + b for two gradients of one shape (arrays on one side, or Tensors under create_graph)."""
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        return a + b
    if _is_device_array(a):
        backend = _backend.select(a=a, b=b)
        return backend.add(_device_contiguous(backend, a), _device_contiguous(backend, b))
    return a + b


# ---------------------------------------------------------------------------------------------- saved arrays

_lock = threading.RLock()   # guards and versions; re-entrant: a Node freed by the garbage collector inside a
                            # guarded region releases its guards from the same thread
_grad_lock = threading.Lock()  # serializes gradient accumulation into .grad
_guards = {}                # id(memory owner) -> [count of saves, arrays made read-only (the owner first)...]
_aliases = {}               # id(guarded array) -> writeable alias (what kernels read)
_versions = {}              # id(array) -> [weakref, version, who]


def _owner(a):
    base = a.base
    return base if isinstance(base, np.ndarray) else a


def kernel_view(a):
    """`a` itself, or a writeable alias of it while it is guarded (read-only because the tape saved
    it): what kernels and the operations' forward passes read, so that guarding copies nothing.
    (An entry exists only while its array is alive -- the guard holds it -- so ids are unambiguous.)"""
    return _aliases.get(id(a), a)


def _flip(guard, a):
    flags = a.flags
    if flags.writeable and id(a) not in _aliases:
        _aliases[id(a)] = a.view()
        flags.writeable = False
        guard.append(a)


def _guard(arrays):
    """Make host arrays (and the arrays owning their memory) read-only until _unguard(arrays)."""
    with _lock:
        for a in arrays:
            base = a.base
            owner = base if isinstance(base, np.ndarray) else a
            guard = _guards.get(id(owner))
            if guard is None:
                guard = _guards[id(owner)] = [0]
            guard[0] += 1
            if owner is not a:
                _flip(guard, owner)
            _flip(guard, a)


def _unguard(arrays):
    with _lock:
        for a in arrays:
            owner = _owner(a)
            guard = _guards.get(id(owner))
            if guard is None:
                continue
            guard[0] -= 1
            if guard[0]:
                continue
            del _guards[id(owner)]
            for b in guard[1:]:  # the owner (when flipped) comes first: views need a writeable base
                _aliases.pop(id(b), None)
                try:
                    b.flags.writeable = True
                except ValueError:  # its base was made read-only by someone else meanwhile: leave it
                    pass


def _version(a):
    if not _versions:
        return 0
    entry = _versions.get(id(a))
    return 0 if entry is None or entry[0]() is not a else entry[1]


def _versions_of(a):
    """The versions of host array `a` and of the array owning its memory (itself when it owns it)."""
    if not _versions:
        return (0, 0)
    return (_version(a), _version(_owner(a)))


def _forget(key, ref):
    entry = _versions.get(key)
    if entry is not None and entry[0] is ref:
        del _versions[key]


def _bump(a, who):
    with _lock:
        for b in {id(a): a, id(_owner(a)): _owner(a)}.values() if isinstance(a, np.ndarray) else (a,):
            entry = _versions.get(id(b))
            if entry is None or entry[0]() is not b:
                try:
                    ref = weakref.ref(b, lambda r, key=id(b): _forget(key, r))
                except TypeError:  # not weak-referenceable: untracked
                    continue
                _versions[id(b)] = [ref, 1, who]
            else:
                entry[1] += 1
                entry[2] = who


@contextlib.contextmanager
def modify_in_place(tensor: Tensor | NDArray[Any] | DeviceArray,
                    who: str = "an in-place update") -> Iterator[NDArray[Any] | DeviceArray]:
    """A context manager yielding an array through which `tensor`'s data may be written in place,
    even while the tape guards it (read-only because an operation saved it for backward).

    On exit the array's version is bumped, so a later backward through an operation that saved it
    before the write raises RuntimeError naming that operation and `who` (instead of computing a
    wrong gradient). The optimizers update parameters this way.

    Parameters
    ----------
    tensor : Tensor, ndarray or CUDA device array
        The Tensor (its ``.data`` is written) or the array to write.
    who : str, default "an in-place update"
        What writes, for the error message of a backward that the write invalidates.

    Yields
    ------
    ndarray or CUDA device array
        A writeable alias of the data (the same memory; for a device array, the array itself).

    Raises
    ------
    ValueError
        The array was read-only before nbconv saw it (the tape never unlocks those).

    Examples
    --------
    >>> import numpy as np, nbconv
    >>> from nbconv.tape import modify_in_place
    >>> w = nbconv.Tensor(np.ones(2), requires_grad=True)
    >>> loss = (w * w).sum()              # saves w: w.data is read-only until backward
    >>> w.data.flags.writeable
    False
    >>> with modify_in_place(w, "my update") as data:
    ...     data -= 0.5
    >>> w.data
    array([0.5, 0.5])
    >>> loss.backward()
    Traceback (most recent call last):
    ...
    RuntimeError: multiply: input 0 (shape (2,)), which it saved for backward, was modified in place by my update ...
    """
    a = tensor.data if isinstance(tensor, Tensor) else tensor
    if isinstance(a, np.ndarray):
        target = kernel_view(a)
        if not target.flags.writeable:
            raise ValueError(f"{who}: the array (shape {a.shape}) is read-only")
    else:
        target = a
    try:
        yield target
    finally:
        _bump(a, who)


# ---------------------------------------------------------------------------------------------- Tensor

class Tensor:
    """An array (``.data``) with an optional gradient (``.grad``) recorded on the tape.

    ``Tensor(array, requires_grad=False)`` shares the array's memory (lists and scalars are
    converted with ``np.asarray``; a CUDA device array stays on the device, as a numba device
    array: objects exposing ``__cuda_array_interface__`` are viewed without a copy). Only
    floating-point Tensors can require gradients.

    ``.grad`` is an array after a plain ``backward()``; after ``backward(create_graph=True)`` it is a
    Tensor with a graph of its own (as in PyTorch, where it then has a grad_fn).

    Parameters
    ----------
    data : array_like, CUDA device array or Tensor
        The values (a Tensor's ``.data`` is shared). Any shape and dtype.
    requires_grad : bool, default False
        Whether operations on this Tensor are recorded, so that ``backward()`` fills its ``.grad``.

    Raises
    ------
    TypeError
        ``requires_grad=True`` with a dtype that is not floating-point.

    Examples
    --------
    >>> import numpy as np, nbconv
    >>> x = nbconv.Tensor(np.array([1.0, 2.0, 3.0]), requires_grad=True)
    >>> y = (x * x).sum()
    >>> y
    Tensor(array(14.), requires_grad=True)
    >>> y.backward()
    >>> x.grad
    array([2., 4., 6.])
    >>> x.shape, x.dtype, x.is_leaf, y.is_leaf
    ((3,), dtype('float64'), True, False)
    """

    __slots__ = ("data", "grad", "_requires_grad", "_node", "_index", "__weakref__")
    __array_ufunc__ = None  # replaced by nbconv.ops: NumPy ufuncs dispatch to the tape or raise TypeError
    data: Any   # an ndarray, or a CUDA device array
    grad: Any   # None, an array like data, or a Tensor (after backward(create_graph=True))

    def __init__(self, data: ArrayLike | DeviceArray | Tensor, requires_grad: bool = False) -> None:
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
    def requires_grad(self) -> bool:
        """Whether operations on this Tensor are recorded (settable on leaves; floating-point only)."""
        return self._requires_grad

    @requires_grad.setter
    def requires_grad(self, value: bool) -> None:
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

    def numpy(self) -> NDArray[Any]:
        """The underlying NumPy array (shared, not copied); for a device array, a copy on the host."""
        if _is_device_array(self.data):
            return self.data.copy_to_host()
        return self.data

    def item(self) -> Any:
        """The single element as a Python scalar (copied from the device for a device array)."""
        return self.numpy().item()

    def __float__(self) -> float:
        if self.size != 1:
            raise TypeError(f"only single-element Tensors can be converted to a Python float, got shape {self.shape}")
        return float(self.item())

    def __array__(self, dtype: DTypeLike | None = None, copy: bool | None = None) -> NDArray[Any]:
        if _is_device_array(self.data):
            raise TypeError("a Tensor holding a CUDA device array cannot be converted to a NumPy array implicitly; "
                            "call .numpy() to copy it to the host")
        return np.array(self.data, dtype=dtype, copy=copy)

    def __len__(self) -> int:
        return len(self.data)

    def __repr__(self) -> str:
        grad = ", requires_grad=True" if self._requires_grad else ""
        if _is_device_array(self.data):
            return f"Tensor(<CUDA device array of shape {self.shape}, dtype {self.dtype}>{grad})"
        return f"Tensor({self.data!r}{grad})"

    def detach(self) -> Tensor:
        """A new leaf Tensor sharing .data that does not require grad."""
        return Tensor(self.data)

    def zero_grad(self) -> None:
        """Forget the accumulated gradient (``.grad`` becomes None)."""
        self.grad = None

    def retain_grad(self) -> None:
        """Keep ``.grad`` on this non-leaf Tensor during backward (a no-op on leaves)."""
        if not self._requires_grad:
            raise RuntimeError("retain_grad() on a Tensor that does not require grad")
        if self._node is not None:
            if self._node.retained is None:
                self._node.retained = {}
            self._node.retained[self._index] = weakref.ref(self)

    def backward(self, gradient: ArrayLike | DeviceArray | Tensor | None = None, create_graph: bool = False) -> None:
        """Accumulate d(self)/d(leaf) . gradient into every leaf's ``.grad`` that requires grad.

        ``gradient`` (same shape as self, cast to its dtype) is required unless self has exactly one
        element. It must be on the same side as self: a device array for a Tensor holding one (the
        implicit one-element seed is then made on the device), a host array otherwise (TypeError).
        With ``create_graph=True`` the backward pass is recorded: ``.grad`` becomes a Tensor that can
        be differentiated again (a ``gradient`` Tensor that requires grad is part of that graph).

        Raises RuntimeError when self does not require grad, when ``gradient`` is missing for a
        Tensor of several elements, or when an array an operation saved was modified in place since
        (see :func:`nbconv.tape.modify_in_place`); ValueError when ``gradient`` has another shape.

        >>> import numpy as np, nbconv
        >>> x = nbconv.Tensor(np.array([1.0, 2.0]), requires_grad=True)
        >>> (x * 3).backward(np.array([1.0, 10.0]))
        >>> x.grad
        array([ 3., 30.])
        """
        if not self._requires_grad:
            raise RuntimeError("backward() on a Tensor that does not require grad (it has no recorded graph)")
        seed = _seed(self, gradient, "gradient", create_graph)
        _run_backward([self], [seed], create_graph)

    if TYPE_CHECKING:  # installed by nbconv.ops when nbconv is imported (its functions of the same names)
        def __add__(self, other: Tensor | ArrayLike) -> Tensor: ...
        __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = __truediv__ = __rtruediv__ = __add__
        __matmul__ = __rmatmul__ = __add__

        def __lt__(self, other: Tensor | ArrayLike) -> NDArray[np.bool_]: ...
        __le__ = __gt__ = __ge__ = __lt__

        def __neg__(self) -> Tensor: ...
        __pos__ = __abs__ = relu = exp = log = abs = sqrt = tanh = sigmoid = __neg__

        def __pow__(self, exponent: float) -> Tensor: ...
        def __getitem__(self, index: Any) -> Tensor: ...
        def sum(self, axis: int | Sequence[int] | None = None, keepdims: bool = False) -> Tensor: ...
        mean = max = sum

        def reshape(self, *shape: SupportsIndex | Sequence[SupportsIndex]) -> Tensor: ...
        transpose = reshape

        def astype(self, dtype: DTypeLike) -> Tensor: ...
        def clip(self, min: ArrayLike | None = None, max: ArrayLike | None = None) -> Tensor: ...
        @property
        def T(self) -> Tensor: ...


def _seed(tensor, gradient, what, create_graph):
    """The validated output gradient for `tensor`: an array (a Tensor under create_graph)."""
    if gradient is None:
        if tensor.size != 1:
            raise RuntimeError(f"backward() needs a {what} argument for a Tensor of shape {tensor.shape}; "
                               "it can be omitted only for single-element Tensors")
        if _is_device_array(tensor.data):
            gradient = _device_filled(_device_backend(tensor.data), tensor.shape, tensor.dtype, 1)
        else:
            gradient = np.ones(tensor.shape, tensor.dtype)
    else:
        graph = gradient if isinstance(gradient, Tensor) and create_graph else None
        if isinstance(gradient, Tensor):
            gradient = gradient.data
        if _is_device_array(gradient) != _is_device_array(tensor.data):
            raise TypeError(f"{what} is {_where(gradient)} but the Tensor's data is {_where(tensor.data)}; "
                            "they must both be on the host or both on a CUDA device")
        if not _is_device_array(gradient):
            gradient = np.asarray(gradient)
        if tuple(gradient.shape) != tensor.shape:
            raise ValueError(f"{what} has shape {tuple(gradient.shape)} but the Tensor has shape {tensor.shape}")
        if graph is not None:
            return graph if graph.dtype == tensor.dtype else graph.astype(tensor.dtype)
        if _is_device_array(gradient):
            if np.dtype(gradient.dtype) != tensor.dtype:
                gradient = _device_filled(_device_backend(gradient), tensor.shape, tensor.dtype, gradient)
        else:
            gradient = gradient.astype(tensor.dtype, copy=False)
    if create_graph:
        if _is_device_array(gradient):
            raise NotImplementedError("create_graph=True (higher-order gradients) is supported on the host only; "
                                      "this Tensor holds a CUDA device array")
        return Tensor(gradient)
    return gradient


def _accumulate(tensor, grad):
    """tensor.grad += grad under the tape's lock (concurrent backward calls into shared leaves lose
    nothing), starting from a private copy; out of place when .grad is a Tensor, grad is one
    (create_graph), .grad is read-only (an op saved it) or a device array."""
    with _grad_lock:
        old = tensor.grad
        if old is None:
            if isinstance(grad, Tensor):
                tensor.grad = grad
            elif _is_device_array(grad):
                tensor.grad = _device_filled(_device_backend(grad), tensor.shape, tensor.dtype, grad)
            else:
                tensor.grad = np.array(grad, dtype=tensor.dtype, copy=True)
        elif (isinstance(old, np.ndarray) and not isinstance(grad, Tensor) and old.flags.writeable
              and old.dtype == tensor.dtype):
            old += grad
        else:
            tensor.grad = _sum(old, grad)


# ---------------------------------------------------------------------------------------------- graph

class Node:
    """One recorded operation: maps its outputs' gradients to its inputs' gradients.

    ``backward_fn(node, grads, needed, create_graph)`` receives one gradient per output (zeros, on
    the output's side, for outputs that got none) and returns one gradient or None per entry of
    ``parents`` (the input Tensors that require grad, None for the other inputs). ``saved`` holds the
    arrays the operation keeps (guarded until its backward runs), ``sources`` what each one is
    (("input", i) or ("output", k)) and ``versions`` their versions then, for the error that names an
    in-place write.
    """

    __slots__ = ("name", "backward_fn", "parents", "outputs", "retained", "saved", "sources", "versions",
                 "_guarded", "__weakref__")

    def __init__(self, name, backward_fn, parents, outputs, saved=(), sources=()):
        self.name = name
        self.backward_fn = backward_fn
        self.parents = parents
        self.outputs = outputs  # ((shape, dtype, device backend or None on the host), ...) per output
        self.retained = None  # {output index: weakref to the Tensor that asked for retain_grad}
        self.saved = saved
        self.sources = sources
        self.versions = self._guarded = None
        if saved:
            if _versions:
                self.versions = tuple(_versions_of(a) if isinstance(a, np.ndarray) else (_version(a), 0)
                                      for a in saved)
            guarded = [a for a in saved if type(a) is np.ndarray]
            if guarded:
                _guard(guarded)
                self._guarded = guarded

    def release(self):
        """Give back the saved arrays' write permission (after backward, or when the node dies); once,
        also when several threads backpropagate through the node at the same time."""
        if self._guarded is None:
            return
        with _lock:
            guarded, self._guarded = self._guarded, None
            if guarded:
                _unguard(guarded)

    def __del__(self):
        try:
            self.release()
        except Exception:  # interpreter shutdown
            pass

    def check_versions(self):
        """RuntimeError naming the operation when an array it saved was written through nbconv since."""
        if not self.saved or not _versions:
            return
        before_all = self.versions or ((0, 0),) * len(self.saved)
        for position, (a, before) in enumerate(zip(self.saved, before_all)):
            now = _versions_of(a) if isinstance(a, np.ndarray) else (_version(a), 0)
            if now != before:
                owner = _owner(a) if isinstance(a, np.ndarray) else a
                entry = _versions.get(id(a)) or _versions.get(id(owner))
                who = entry[2] if entry else "an in-place update"
                kind, i = self.sources[position] if position < len(self.sources) else ("saved array", position)
                label = "its result" if (kind, i) == ("output", 0) and len(self.outputs) == 1 else f"{kind} {i}"
                raise RuntimeError(f"{self.name}: {label} (shape {tuple(a.shape)}), which it saved for backward, was "
                                   f"modified in place by {who} after the forward pass (version {max(before)} -> "
                                   f"{max(now)}); its gradient would be wrong. Run the forward pass again after "
                                   "the update")


def output_tensor(node, index, data):
    """A Tensor on `data` that stands for output `index` of `node` (a saved result under create_graph:
    gradients that flow into it reach the node's inputs)."""
    t = Tensor.__new__(Tensor)
    t.data, t.grad, t._node, t._index, t._requires_grad = data, None, node, index, True
    return t


def record(name, backward_fn, inputs, results, saved=(), sources=()):
    """Wrap `results` (an array or a tuple of arrays) in Tensors, recording a Node when grad mode
    is on and some Tensor in `inputs` requires grad; returns a Tensor or a tuple of Tensors.
    `saved` are the arrays the operation keeps for backward (inputs or results), guarded until it
    runs; `sources` say what each is (("input", i) or ("output", k)), for errors."""
    single = not isinstance(results, tuple)
    arrays = (results,) if single else results
    parents = tuple(a if isinstance(a, Tensor) and a._requires_grad else None for a in inputs)
    if is_grad_enabled() and any(p is not None for p in parents):
        return record_node(name, backward_fn, parents, results, saved, sources)
    outs = tuple(_wrap(a) for a in arrays)
    return outs[0] if single else outs


def record_node(name, backward_fn, parents, results, saved=(), sources=()):
    """record() once it is known that a Node is recorded, with its `parents` (one per input: the
    Tensor when it requires grad, else None)."""
    single = not isinstance(results, tuple)
    arrays = (results,) if single else results
    outs = tuple(_wrap(a) for a in arrays)
    node = Node(name, backward_fn, parents,
                tuple((a.shape, a.dtype, None) if type(a) is np.ndarray else
                      (tuple(a.shape), np.dtype(a.dtype), _device_backend(a) if _is_device_array(a) else None)
                      for a in arrays), saved, sources)
    for i, t in enumerate(outs):
        if t.data.dtype.kind == "f":
            t._node, t._index, t._requires_grad = node, i, True
    return outs[0] if single else outs


def _wrap(a):
    """Tensor(a) (a fast path for the ndarrays operations produce)."""
    if type(a) is not np.ndarray:
        return Tensor(a)
    t = Tensor.__new__(Tensor)
    t.data, t.grad, t._node, t._index, t._requires_grad = a, None, None, 0, False
    return t


def _check_grad(grad, tensor, node, position):
    """`grad` for input `position` of `node`, cast to the input's dtype; RuntimeError when its shape
    differs or when it is not on the input's side (host or device), TypeError when it is no array."""
    if type(grad) is np.ndarray and grad.shape == tensor.data.shape and grad.dtype == tensor.data.dtype \
            and type(tensor.data) is np.ndarray:
        return grad
    data = grad.data if isinstance(grad, Tensor) else grad
    if isinstance(data, np.generic):
        data = grad = np.asarray(data)
    if not (isinstance(data, np.ndarray) or _is_device_array(data)):
        raise TypeError(f"{node.name} backward returned {type(grad).__name__} as the gradient of input {position}; "
                        "expected an array (or None)")
    if _is_device_array(data) != _is_device_array(tensor.data):
        raise RuntimeError(f"{node.name} backward returned a gradient {_where(data)} for input {position}, "
                           f"which is {_where(tensor.data)}")
    if tuple(data.shape) != tensor.shape:
        raise RuntimeError(f"{node.name} backward returned a gradient of shape {tuple(data.shape)} for input "
                           f"{position}, which has shape {tensor.shape}")
    if isinstance(grad, Tensor):
        return grad if grad.dtype == tensor.dtype else grad.astype(tensor.dtype)
    if np.dtype(data.dtype).kind not in "fiub":
        raise TypeError(f"{node.name} backward returned a gradient of dtype {data.dtype} for input {position}")
    if np.dtype(data.dtype) == tensor.dtype:
        return data
    if _is_device_array(data):
        return _device_filled(_device_backend(data), tensor.shape, tensor.dtype, data)
    return data.astype(tensor.dtype)


def _zeros(shape, dtype, device, create_graph):
    z = np.zeros(shape, dtype) if device is None else _device_filled(device, shape, dtype, 0)
    return Tensor(z) if create_graph else z


def _run_backward(roots, seeds, create_graph, targets=None):
    """Propagate `seeds` (one per root) through the graph, in reverse topological order, iteratively.

    targets None: accumulate into the leaves' .grad (and retained non-leaf gradients). Otherwise a
    list of Tensors: their gradients are returned (None where no gradient reached), nothing else is
    touched, and only the operations that lead to a target run their VJPs.
    """
    captured = None if targets is None else [None] * len(targets)
    leaf_targets, slot_targets = {}, {}
    if targets is not None:
        for k, t in enumerate(targets):
            if t._node is None:
                leaf_targets.setdefault(id(t), []).append(k)
            else:
                slot_targets.setdefault((t._node, t._index), []).append(k)

    def deliver_leaf(leaf, grad):
        if targets is None:
            _accumulate(leaf, grad)
        else:
            for k in leaf_targets.get(id(leaf), ()):
                captured[k] = grad if captured[k] is None else _sum(captured[k], grad)

    with _grad_mode(create_graph):
        pending, start = {}, []
        for root, seed in zip(roots, seeds):
            if root._node is None:
                deliver_leaf(root, seed)
                continue
            slots = pending.get(root._node)
            if slots is None:
                slots = pending[root._node] = [None] * len(root._node.outputs)
                start.append(root._node)
            previous = slots[root._index]
            slots[root._index] = seed if previous is None else _sum(previous, seed)
        # Count, for every node reachable from the roots, the edges that will deliver gradients to it.
        consumers, users = {}, {}
        stack = list(start)
        seen = set(start)
        while stack:
            node = stack.pop()
            for parent in node.parents:
                if parent is not None and parent._node is not None:
                    producer = parent._node
                    consumers[producer] = consumers.get(producer, 0) + 1
                    if targets is not None:
                        users.setdefault(producer, []).append(node)
                    if producer not in seen:
                        seen.add(producer)
                        stack.append(producer)
        useful = None
        if targets is not None:  # the nodes that lead to a target: from the targets, toward the roots
            useful = {node for node, _ in slot_targets if node in seen}
            useful.update(node for node in seen if any(p is not None and p._node is None and id(p) in leaf_targets
                                                       for p in node.parents))
            stack = list(useful)
            while stack:
                for user in users.get(stack.pop(), ()):
                    if user not in useful:
                        useful.add(user)
                        stack.append(user)
        ready = [node for node in start if node not in consumers]
        while ready:
            node = ready.pop()
            grads = pending.pop(node, None)
            if useful is not None:
                if node not in useful:
                    continue
                for index in range(len(node.outputs)):
                    for k in slot_targets.get((node, index), ()):
                        if grads is not None and grads[index] is not None:
                            captured[k] = grads[index]
            if grads is None:
                input_grads = (None,) * len(node.parents)
            else:
                needed = None if useful is None else tuple(
                    p is not None and (id(p) in leaf_targets if p._node is None else p._node in useful)
                    for p in node.parents)
                input_grads = _node_backward(node, grads, needed, create_graph, targets is None)
            node.release()
            for position, (parent, grad) in enumerate(zip(node.parents, input_grads)):
                if parent is None:
                    continue
                producer = parent._node
                if grad is not None:
                    grad = _check_grad(grad, parent, node, position)
                    if create_graph and not isinstance(grad, Tensor):
                        grad = Tensor(grad)
                    if producer is None:
                        deliver_leaf(parent, grad)
                    else:
                        slots = pending.setdefault(producer, [None] * len(producer.outputs))
                        previous = slots[parent._index]
                        slots[parent._index] = grad if previous is None else _sum(previous, grad)
                if producer is not None:
                    consumers[producer] -= 1
                    if consumers[producer] == 0:
                        ready.append(producer)  # processed even without gradients, to release its inputs
    return captured


def _node_backward(node, grads, needed, create_graph, retain):
    """The input gradients of `node` given its (partly None) output gradients; fills retained .grad."""
    node.check_versions()
    if retain and node.retained:
        for index, ref in node.retained.items():
            tensor = ref()
            if tensor is not None and grads[index] is not None:
                _accumulate(tensor, grads[index])
    if any(g is None for g in grads):
        grads = [g if g is not None else _zeros(shape, dtype, device, create_graph)
                 for g, (shape, dtype, device) in zip(grads, node.outputs)]
    input_grads = node.backward_fn(node, grads, needed, create_graph)
    if not isinstance(input_grads, (tuple, list)):
        input_grads = (input_grads,)
    if len(input_grads) != len(node.parents):
        raise RuntimeError(f"{node.name} backward returned {len(input_grads)} gradients for "
                           f"{len(node.parents)} inputs")
    return input_grads


def _as_tensors(values, what):
    if isinstance(values, Tensor):
        return [values]
    try:
        values = list(values)
    except TypeError:
        raise TypeError(f"{what} must be a Tensor or a sequence of Tensors, got {type(values).__name__}") from None
    for i, v in enumerate(values):
        if not isinstance(v, Tensor):
            raise TypeError(f"{what}[{i}] must be a Tensor, got {type(v).__name__}")
    return values


def grad(outputs: Tensor | Sequence[Tensor], inputs: Tensor | Sequence[Tensor],
         grad_outputs: ArrayLike | DeviceArray | Tensor | Sequence[ArrayLike | DeviceArray | Tensor | None]
         | None = None, create_graph: bool = False, allow_unused: bool = False) -> tuple[Tensor | None, ...]:
    """The gradients of `outputs` with respect to `inputs`, as a tuple of Tensors (one per input).

    Computes sum_k d(outputs[k])/d(input) . grad_outputs[k] like ``torch.autograd.grad``: leaves'
    ``.grad`` are not touched, and only the operations that lead to an input run backward.

    Parameters
    ----------
    outputs : Tensor or sequence of Tensors
        What to differentiate; each must require grad.
    inputs : Tensor or sequence of Tensors
        With respect to what; each must require grad (non-leaf Tensors are allowed).
    grad_outputs : array, Tensor, or sequence of them (or of None), optional
        One gradient per output, of its shape (cast to its dtype; a device array for an output that
        holds one). None (or a None entry) means 1 and is allowed for single-element outputs only.
    create_graph : bool, default False
        Record the backward pass: the results can be differentiated again (they require grad when
        they depend on something that does). Host arrays only.
    allow_unused : bool, default False
        Give None for an input that no output depends on instead of raising.

    Returns
    -------
    tuple of Tensor (or None)
        One gradient per input, in its shape and dtype.

    Raises
    ------
    TypeError
        An entry of `outputs` or `inputs` is not a Tensor; a gradient on the wrong side (host/device).
    ValueError
        `grad_outputs` has the wrong length, or a gradient has the wrong shape.
    RuntimeError
        An output or input does not require grad; an input is unused (without ``allow_unused``); a
        gradient is missing for an output of several elements.

    Examples
    --------
    >>> import numpy as np, nbconv
    >>> x = nbconv.Tensor(np.array([1.0, 2.0]), requires_grad=True)
    >>> y = (x ** 3).sum()
    >>> (dx,) = nbconv.grad(y, x, create_graph=True)
    >>> dx
    Tensor(array([ 3., 12.]), requires_grad=True)
    >>> nbconv.grad(dx.sum(), x)          # the second derivative, 6 x
    (Tensor(array([ 6., 12.])),)
    >>> x.grad is None
    True
    """
    outputs = _as_tensors(outputs, "outputs")
    inputs = _as_tensors(inputs, "inputs")
    if grad_outputs is None:
        grad_outputs = [None] * len(outputs)
    else:
        single = isinstance(grad_outputs, Tensor) or not isinstance(grad_outputs, (list, tuple))
        grad_outputs = [grad_outputs] if single else list(grad_outputs)
    if len(grad_outputs) != len(outputs):
        raise ValueError(f"grad_outputs has {len(grad_outputs)} entries for {len(outputs)} outputs")
    for i, o in enumerate(outputs):
        if not o.requires_grad:
            raise RuntimeError(f"outputs[{i}] does not require grad (it has no recorded graph)")
    for i, t in enumerate(inputs):
        if not t.requires_grad:
            raise RuntimeError(f"inputs[{i}] does not require grad")
    seeds = [_seed(o, g, f"grad_outputs[{i}]", create_graph) for i, (o, g) in enumerate(zip(outputs, grad_outputs))]
    captured = _run_backward(outputs, seeds, create_graph, targets=inputs)
    results = []
    for i, (t, g) in enumerate(zip(inputs, captured)):
        if g is None:
            if not allow_unused:
                raise RuntimeError(f"inputs[{i}] (shape {t.shape}) is not used to compute the outputs; pass "
                                   "allow_unused=True to get None for it")
            results.append(None)
        elif isinstance(g, Tensor):
            results.append(g)
        elif _is_device_array(g):
            results.append(Tensor(_device_filled(_device_backend(g), t.shape, t.dtype, g)))
        else:
            results.append(Tensor(np.array(g, dtype=t.dtype, copy=True)))
    return tuple(results)


# ---------------------------------------------------------------------------------------------- Function

class Context:
    """What a Function's forward leaves for its backward: ``save_for_backward`` and any attribute."""

    def __init__(self, needs_input_grad: tuple[bool, ...]) -> None:
        self.needs_input_grad = needs_input_grad
        self._saved: tuple[Any, ...] = ()

    def save_for_backward(self, *arrays: Any) -> None:
        """Keep `arrays` (inputs, results or other arrays) for backward, as ``saved_tensors``."""
        self._saved = arrays

    @property
    def saved_tensors(self) -> tuple[Any, ...]:
        """What forward passed to ``save_for_backward``, in order (arrays, not Tensors)."""
        return self._saved


def _is_array(a):
    return isinstance(a, np.ndarray) or _is_device_array(a)


def _function_outputs(name, results):
    """forward's results as a tuple of arrays; TypeError naming the Function and the output otherwise."""
    single = not isinstance(results, (tuple, list))
    items = (results,) if single else tuple(results)
    if not items:
        raise TypeError(f"{name}.forward returned an empty {type(results).__name__}; it must return an array "
                        "or a tuple of arrays")
    arrays = []
    for i, r in enumerate(items):
        where = "" if single else f" as output {i}"
        if isinstance(r, Tensor):
            r = r.data
        elif isinstance(r, np.generic):
            r = np.asarray(r)
        elif not _is_array(r):
            raise TypeError(f"{name}.forward returned {type(r).__name__}{where}; forward must return a NumPy array "
                            "(or a CUDA device array), or a tuple of them (wrap a Python number in np.asarray)")
        arrays.append(r)
    return single, tuple(arrays)


def _function_grads(name, result, count):
    """backward's result as a tuple of `count` gradients (arrays or None); errors name the Function
    and the input position."""
    if result is None or _is_array(result) or isinstance(result, (np.generic, Tensor)):
        result = (result,)
    elif isinstance(result, (tuple, list)):
        result = tuple(result)
    else:
        raise TypeError(f"{name}.backward returned {type(result).__name__}; it must return one gradient (an array "
                        f"or None) per input of {name}.forward ({count} input{'s' if count != 1 else ''}), as a "
                        "tuple when there are several")
    if len(result) != count:
        raise RuntimeError(f"{name} backward returned {len(result)} gradients for {count} inputs "
                           f"({name}.backward must return one gradient or None per input of forward)")
    for i, g in enumerate(result):
        if not (g is None or _is_array(g) or isinstance(g, (np.generic, Tensor))):
            raise TypeError(f"{name}.backward returned {type(g).__name__} as the gradient of input {i}; "
                            "expected an array (or None)")
    return result


def _saved_sources(entries, arrays, results):
    """Per entry of `entries`: ('input', i) when it is arrays[i] (in order, each input once while
    possible), ('output', k) when it is results[k], else None."""
    sources, used = [], set()
    for e in entries:
        source = None
        if isinstance(e, np.ndarray) or (e is not None and not isinstance(e, (tuple, int, float)) and _is_array(e)):
            for k, r in enumerate(results):
                if e is r:
                    source = ("output", k)
                    break
            if source is None:
                matches = [i for i, a in enumerate(arrays) if a is e]
                if matches:
                    free = [i for i in matches if i not in used]
                    i = free[0] if free else matches[0]
                    used.add(i)
                    source = ("input", i)
        sources.append(source)
    return sources


class Function:
    """Base class for custom differentiable operations.

    Subclasses define ``forward(ctx, *inputs, **kwargs)`` and ``backward(ctx, *grad_outputs)`` as
    static methods and are called with ``MyOp.apply(*inputs, **kwargs)``. ``forward`` receives the
    arrays inside Tensor arguments (other arguments unchanged) and returns an array or a tuple of
    arrays; ``backward`` receives one gradient array per output (zeros for an output that did not
    get one) and returns one gradient (or None) per positional input. ``ctx.needs_input_grad`` tells
    which inputs need one. Misuse (a forward returning no array, a backward returning the wrong
    number, shape or kind of gradients) raises an error naming the Function and the position.

    Inputs and results passed to ``ctx.save_for_backward`` are guarded like the built-in operations'
    saved arrays (read-only until backward, see the module docstring). ``backward`` computes on
    arrays, so it is differentiable once: under ``create_graph=True`` its gradients are recorded,
    and differentiating them again raises RuntimeError naming the Function.

    Examples
    --------
    >>> import numpy as np, nbconv
    >>> class Cube(nbconv.Function):
    ...     @staticmethod
    ...     def forward(ctx, x):
    ...         ctx.save_for_backward(x)
    ...         return x ** 3
    ...     @staticmethod
    ...     def backward(ctx, g):
    ...         (x,) = ctx.saved_tensors
    ...         return g * 3 * x ** 2
    >>> x = nbconv.Tensor(np.array([1.0, 2.0]), requires_grad=True)
    >>> y = Cube.apply(x)
    >>> y.sum().backward()
    >>> y.data, x.grad
    (array([1., 8.]), array([ 3., 12.]))
    >>> nbconv.gradcheck(Cube.apply, [np.array([0.5, -1.5])])
    True
    """

    @staticmethod
    def forward(ctx: Context, *inputs: Any) -> Any:
        """Compute the result(s) from the inputs (arrays); save what backward needs on `ctx`."""
        raise NotImplementedError("Function subclasses must define a static forward(ctx, *inputs)")

    @staticmethod
    def backward(ctx: Context, *grad_outputs: Any) -> Any:
        """One gradient (an array, or None) per positional input of forward, given one per output."""
        raise NotImplementedError("Function subclasses must define a static backward(ctx, *grad_outputs)")

    @classmethod
    def apply(cls, *inputs: Any, **kwargs: Any) -> Tensor | tuple[Tensor, ...]:
        """Run forward on `inputs` (Tensors or anything else; keyword arguments go to forward as they
        are) and return its result(s) as Tensors, recorded on the tape when an input requires grad."""
        name = cls.__name__
        if cls.forward is Function.forward:
            raise NotImplementedError(f"{name} must define a static forward(ctx, *inputs)")
        if cls.backward is Function.backward:
            raise NotImplementedError(f"{name} must define a static backward(ctx, *grad_outputs)")
        ctx = Context(tuple(isinstance(a, Tensor) and a.requires_grad for a in inputs))
        arrays = [kernel_view(a.data if isinstance(a, Tensor) else a) for a in inputs]
        with no_grad():
            results = cls.forward(ctx, *arrays, **kwargs)
        single, results = _function_outputs(name, results)
        entries = ctx._saved
        sources = _saved_sources(entries, arrays, results)
        saved, kept = [], []
        for source in sources:
            if source is not None:
                kind, i = source
                saved.append(results[i] if kind == "output" else
                             inputs[i].data if isinstance(inputs[i], Tensor) else inputs[i])
                kept.append(source)
        count = len(inputs)

        def backward_fn(node, grads, needed, create_graph):
            context = ctx
            if needed is not None:
                context = copy.copy(ctx)
                context.needs_input_grad = tuple(a and b for a, b in zip(ctx.needs_input_grad, needed))
            arrays_in = tuple(g.data if isinstance(g, Tensor) else g for g in grads)
            with no_grad():
                result = _function_grads(name, cls.backward(context, *arrays_in), count)
            result = tuple(g.data if isinstance(g, Tensor) else np.asarray(g) if isinstance(g, np.generic) else g
                           for g in result)
            if not create_graph:
                return result
            return _once_differentiable(name, node, grads, result)

        out = record(name, backward_fn, inputs, results[0] if single else results, saved=tuple(saved),
                     sources=tuple(kept))
        if saved:  # kernels read guarded inputs through writeable aliases (no copies)
            ctx._saved = tuple(kernel_view(e) if s is not None else e for e, s in zip(entries, sources))
        return out


def _once_differentiable(name, node, grads, result):
    """`result` (a Function's input gradients, arrays) as Tensors recorded as depending on the
    output gradients and the Function's inputs, through a node whose backward raises: a Function's
    backward computes on arrays, so its gradients cannot be differentiated again."""
    def refuse(*_):
        raise RuntimeError(f"{name}.backward computes on arrays, so its gradients cannot be differentiated again "
                           "(create_graph=True reached it); write the operation with nbconv's differentiable "
                           "operations instead of a Function to get higher-order gradients through it")

    inputs = tuple(grads) + tuple(p for p in node.parents if p is not None)
    present = tuple(g for g in result if g is not None)
    if not present:
        return result
    wrapped = iter(record(f"{name}.backward", refuse, inputs, present) if len(present) > 1
                   else (record(f"{name}.backward", refuse, inputs, present[0]),))
    return tuple(None if g is None else next(wrapped) for g in result)


# ---------------------------------------------------------------------------------------------- checks

class GradcheckError(RuntimeError):
    """The tape's gradient disagrees with finite differences (raised by :func:`gradcheck` and
    :func:`gradgradcheck`; a RuntimeError).

    Examples
    --------
    >>> import numpy as np, nbconv
    >>> class WrongSquare(nbconv.Function):
    ...     @staticmethod
    ...     def forward(ctx, x):
    ...         ctx.save_for_backward(x)
    ...         return x * x
    ...     @staticmethod
    ...     def backward(ctx, g):
    ...         (x,) = ctx.saved_tensors
    ...         return g * x                  # should be 2 * g * x
    >>> nbconv.gradcheck(WrongSquare.apply, [np.array([1.0, 2.0])])
    Traceback (most recent call last):
    ...
    nbconv.tape.GradcheckError: gradient of input 0 (shape (2,)) disagrees with finite differences: at index (1,) ...
    """


def _float64_args(inputs):
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
    return args, checked


def _float_outputs(out):
    out = out if isinstance(out, (tuple, list)) else (out,)
    return [o for o in out if isinstance(o, Tensor) and _is_float(o.dtype)]


def gradcheck(fn: Callable[..., Any], inputs: Any, eps: float = 1e-6, atol: float = 1e-5,
              rtol: float = 1e-3) -> bool:
    """Compare the tape's gradients of ``fn(*inputs)`` with central finite differences in float64.

    Floating-point Tensors that require grad are checked, and so are floating-point ndarrays
    (wrapped as Tensors that require grad); everything else is passed through unchanged. All
    checked values are copied to float64; the check runs on the host. ``fn`` may return a Tensor or
    a tuple of Tensors: the check is made on a fixed random projection ``sum(v_k * out_k)`` of the
    outputs. An entry fails where |tape - numeric| > atol + rtol * |numeric|.

    Parameters
    ----------
    fn : callable
        Called as ``fn(*inputs)`` (with the float64 copies); returns a Tensor or a tuple of Tensors.
    inputs : sequence, or a single Tensor or array
        The arguments of `fn`.
    eps : float, default 1e-6
        The finite-difference step.
    atol, rtol : float, default 1e-5 and 1e-3
        The absolute and relative tolerances.

    Returns
    -------
    bool
        True (a mismatch raises).

    Raises
    ------
    GradcheckError
        Some entry disagrees; the message gives the worst one (input, index, both values) and how
        many entries fail.
    ValueError
        No floating-point input to check, or `fn` returned no floating-point Tensor.
    NotImplementedError
        An input is (or holds) a CUDA device array: pass host copies (``Tensor.numpy()``).

    Examples
    --------
    >>> import numpy as np, nbconv
    >>> x = np.random.default_rng(0).standard_normal((1, 4, 2))
    >>> w = np.random.default_rng(1).standard_normal((3, 2, 1))
    >>> nbconv.gradcheck(lambda x, w: nbconv.conv1d(x, w, padding=1), [x, w])
    True
    """
    if not isinstance(inputs, (tuple, list)):
        inputs = (inputs,)
    args, checked = _float64_args(inputs)
    outs = _float_outputs(fn(*args))
    if not outs:
        raise ValueError("gradcheck: fn returned no floating-point Tensor to check")
    rng = np.random.default_rng(0)
    projections = [rng.standard_normal(o.shape) for o in outs]
    for o, v in zip(outs, projections):
        if o.requires_grad:
            o.backward(v.astype(o.dtype))
    del outs, o  # free the graph: its saved arrays become writeable again for the perturbations below

    def projected():
        with no_grad():
            return sum(float(np.sum(np.asarray(o.data, dtype=np.float64) * v))
                       for o, v in zip(_float_outputs(fn(*args)), projections))

    worst = None
    for k in checked:
        t = args[k]
        analytic = np.zeros(t.shape) if t.grad is None else np.asarray(
            t.grad.data if isinstance(t.grad, Tensor) else t.grad, dtype=np.float64)
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


def gradgradcheck(fn: Callable[..., Any], inputs: Any, grad_outputs: ArrayLike | Tensor | Sequence[ArrayLike | Tensor] |
                  None = None, eps: float = 1e-6, atol: float = 1e-5, rtol: float = 1e-3) -> bool:
    """Check second derivatives of ``fn(*inputs)``: gradcheck of the function
    ``(inputs, v) -> grad(fn(*inputs), inputs, grad_outputs=v, create_graph=True)``, i.e. the tape's
    gradients of the first-order gradients (computed with create_graph=True) against central finite
    differences of the first-order gradients, in float64, with respect to the inputs and to the output
    gradients v.

    Parameters
    ----------
    fn : callable
        As for :func:`gradcheck`.
    inputs : sequence, or a single Tensor or array
        As for :func:`gradcheck`: floating-point arrays and Tensors that require grad are checked.
    grad_outputs : array, Tensor or sequence of them, optional
        The output gradients v: one per floating-point output of `fn`, of its shape (default: random).
    eps : float, default 1e-6
        The finite-difference step.
    atol, rtol : float, default 1e-5 and 1e-3
        The absolute and relative tolerances.

    Returns
    -------
    bool
        True (a mismatch raises).

    Raises
    ------
    GradcheckError
        Some second derivative disagrees. A failing entry is reported as an input of the first-order
        function: the checked inputs of `fn` come first, then one entry per output gradient v.
    ValueError
        As for :func:`gradcheck`, or `grad_outputs` does not have one entry per floating-point output.
    NotImplementedError
        An input is (or holds) a CUDA device array.

    Examples
    --------
    >>> import numpy as np, nbconv
    >>> x = np.array([[0.5, -1.0, 2.0]])
    >>> nbconv.gradgradcheck(lambda x: nbconv.softmax(x) * x, [x])
    True
    """
    if not isinstance(inputs, (tuple, list)):
        inputs = (inputs,)
    args, checked = _float64_args(inputs)
    outs = _float_outputs(fn(*args))
    if not outs:
        raise ValueError("gradgradcheck: fn returned no floating-point Tensor to check")
    if grad_outputs is None:
        rng = np.random.default_rng(1)
        grad_outputs = [rng.standard_normal(o.shape) for o in outs]
    else:
        grad_outputs = [grad_outputs] if not isinstance(grad_outputs, (list, tuple)) else list(grad_outputs)
        if len(grad_outputs) != len(outs):
            raise ValueError(f"gradgradcheck: {len(grad_outputs)} grad_outputs for {len(outs)} floating-point outputs")
        grad_outputs = [np.array(g.data if isinstance(g, Tensor) else g, dtype=np.float64) for g in grad_outputs]
    del outs

    def first_order(*values):
        xs, vs = values[:len(checked)], values[len(checked):]
        call = list(args)
        for k, x in zip(checked, xs):
            call[k] = x
        graph = is_grad_enabled()
        with _grad_mode(True):
            outs = _float_outputs(fn(*call))
            pairs = [(o, v) for o, v in zip(outs, vs) if o.requires_grad]
            if not pairs:
                return tuple(Tensor(np.zeros(x.shape)) for x in xs)
            grads = grad([o for o, _ in pairs], list(xs), [v for _, v in pairs], create_graph=graph,
                         allow_unused=True)
        return tuple(Tensor(np.zeros(x.shape)) if g is None else g for x, g in zip(xs, grads))

    values = [Tensor(args[k].data, requires_grad=True) for k in checked]
    values += [Tensor(v, requires_grad=True) for v in grad_outputs]
    return gradcheck(first_order, values, eps=eps, atol=atol, rtol=rtol)
