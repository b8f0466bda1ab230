"""Optimizers for the tape's Tensors: SGD (momentum, Nesterov, weight decay), Adam and AdamW.

Each one updates ``Tensor.data`` in place from ``Tensor.grad`` with torch.optim's formulas, in the
same order of operations (so float64 runs agree with PyTorch to the last few bits), computing in the
parameter's dtype. Parameters whose ``.grad`` is None are skipped, as in PyTorch.

``params`` is an iterable of leaf Tensors that require grad, or of dicts ``{"params": [...],
**options}`` (parameter groups: per-group options override the constructor's, as in torch.optim).
``param_groups`` holds the options (``opt.param_groups[0]["lr"] = 1e-4`` changes the learning rate);
``state_dict()`` / ``load_state_dict()`` save and restore options and per-parameter state (plain
dicts of numbers and NumPy arrays, laid out like torch.optim's: parameters are numbered in order).

The in-place writes go through :func:`nbconv.tape.modify_in_place`: they are allowed while a graph
that saved a parameter is alive, and bump its version, so a later backward through that graph
raises RuntimeError naming the operation instead of using the new values.
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Iterable, Union

import numpy as np

from ._device import is_device_array
from .tape import Tensor, modify_in_place

__all__ = ["Optimizer", "SGD", "Adam", "AdamW"]

Params = Union[Iterable[Tensor], Iterable[dict[str, Any]]]
"""Leaf Tensors that require grad, or parameter groups: dicts ``{"params": [...], **options}``."""


def _number(name, value, low=0.0, high=None, open_high=False):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite real number, got {value!r}")
    if value < low or (high is not None and (value >= high if open_high else value > high)):
        bound = "" if high is None else f" and {'<' if open_high else '<='} {high}"
        raise ValueError(f"{name} must be >= {low}{bound}, got {value!r}")
    return float(value)


class Optimizer:
    """Base class: parameter groups, zero_grad, step, state_dict/load_state_dict.

    Subclasses define ``_check(options)`` (validate and normalize one group's options in place) and
    ``_update(p, grad, state, options)`` (update the array p in place from grad, keeping what they
    need in the dict state), and pass their options to ``__init__`` as keyword arguments: the
    defaults that parameter groups override.

    Parameters
    ----------
    params : iterable of Tensors, or of dicts
        Leaf Tensors that require grad (host arrays), each once; or parameter groups, dicts
        ``{"params": [...], **options}`` whose options override the defaults.
    **defaults
        The optimizer's options and their values for groups that do not set them.

    Raises
    ------
    TypeError
        params is a single Tensor or not iterable, an entry is not a Tensor, a group is not a dict
        with "params" or has unknown options.
    ValueError
        No parameters, a parameter that is not a leaf requiring grad or appears twice, or an option
        out of range (raised by the subclass's check).
    NotImplementedError
        A parameter holds a CUDA device array.

    Examples
    --------
    >>> import numpy as np, nbconv
    >>> class SignSGD(nbconv.optim.Optimizer):
    ...     def __init__(self, params, lr):
    ...         super().__init__(params, lr=lr)
    ...     def _update(self, p, grad, state, options):
    ...         p -= options["lr"] * np.sign(grad)
    >>> w = nbconv.Tensor(np.array([1.0, -1.0]), requires_grad=True)
    >>> opt = SignSGD([w], lr=0.5)
    >>> (w * w).sum().backward()
    >>> opt.step()
    >>> w.data
    array([ 0.5, -0.5])
    """

    defaults: dict[str, Any] = {}

    def __init__(self, params: Params, **defaults: Any) -> None:
        name = type(self).__name__
        if isinstance(params, Tensor):
            raise TypeError(f"{name}: params must be an iterable of Tensors (or of parameter-group dicts), got a "
                            "single Tensor; wrap it in a list")
        try:
            items = list(params)
        except TypeError:
            raise TypeError(f"{name}: params must be an iterable of Tensors, got {type(params).__name__}") from None
        if not items:
            raise ValueError(f"{name}: got an empty parameter list")
        groups = items if all(isinstance(g, dict) for g in items) else [{"params": items}]
        self.defaults = dict(defaults)
        self.param_groups = []
        self.state = {}
        seen = set()
        for g, group in enumerate(groups):
            if not isinstance(group, dict) or "params" not in group:
                raise TypeError(f"{name}: parameter group {g} must be a dict with a 'params' entry")
            unknown = set(group) - set(defaults) - {"params"}
            if unknown:
                raise TypeError(f"{name}: parameter group {g} has unknown options {sorted(unknown)}")
            tensors = [group["params"]] if isinstance(group["params"], Tensor) else list(group["params"])
            for p in tensors:
                i = len(seen)
                if not isinstance(p, Tensor):
                    raise TypeError(f"{name}: parameter {i} must be a Tensor, got {type(p).__name__}")
                if not (p.is_leaf and p.requires_grad):
                    raise ValueError(f"{name}: parameter {i} (shape {p.shape}) must be a leaf Tensor that requires "
                                     "grad")
                if is_device_array(p.data):
                    raise NotImplementedError(f"{name}: parameter {i} holds a CUDA device array; the optimizers "
                                              "update host arrays only")
                if id(p) in seen:
                    raise ValueError(f"{name}: parameter {i} (shape {p.shape}) appears more than once")
                seen.add(id(p))
            options = dict(defaults, **{k: v for k, v in group.items() if k != "params"})
            self._check(options)
            self.param_groups.append(dict(options, params=tensors))

    def _check(self, options):
        """Validate (and normalize) one group's options in place."""

    def zero_grad(self) -> None:
        """Set every parameter's ``.grad`` to None."""
        for group in self.param_groups:
            for p in group["params"]:
                p.grad = None

    def _params(self):
        return [p for group in self.param_groups for p in group["params"]]

    def step(self) -> None:
        """One update of every parameter that has a gradient."""
        name = type(self).__name__
        for group in self.param_groups:
            self._check(group)
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad.data if isinstance(p.grad, Tensor) else p.grad
                grad = np.asarray(grad)
                if grad.shape != p.shape:
                    raise ValueError(f"{name}: a parameter of shape {p.shape} has a gradient of shape {grad.shape}")
                state = self.state.setdefault(id(p), {})
                with modify_in_place(p, f"{name}.step") as data:
                    self._update(data, grad.astype(data.dtype, copy=False), state, group)

    def state_dict(self) -> dict[str, Any]:
        """{"state": {index: {name: value}}, "param_groups": [{options..., "params": [indices]}]}; arrays are copies."""
        index, groups, k = {}, [], 0
        for group in self.param_groups:
            ids = []
            for p in group["params"]:
                index[id(p)] = k
                ids.append(k)
                k += 1
            groups.append(dict({n: v for n, v in group.items() if n != "params"}, params=ids))
        state = {index[key]: {n: np.array(v, copy=True) if isinstance(v, np.ndarray) else v for n, v in s.items()}
                 for key, s in self.state.items() if key in index}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore options and state saved by state_dict() (from an optimizer over parameters of the same shapes)."""
        name = type(self).__name__
        try:
            groups, state = state_dict["param_groups"], state_dict["state"]
        except (TypeError, KeyError):
            raise ValueError(f"{name}.load_state_dict: expected a dict with 'state' and 'param_groups'") from None
        if len(groups) != len(self.param_groups) or any(
                len(g["params"]) != len(mine["params"]) for g, mine in zip(groups, self.param_groups)):
            raise ValueError(f"{name}.load_state_dict: the saved parameter groups have sizes "
                             f"{[len(g['params']) for g in groups]}, this optimizer's "
                             f"{[len(g['params']) for g in self.param_groups]}")
        new_state = {}
        for saved, mine in zip(groups, self.param_groups):
            for k, p in zip(saved["params"], mine["params"]):
                if k not in state:
                    continue
                entry = {}
                for n, v in state[k].items():
                    if isinstance(v, np.ndarray):
                        if v.shape != p.shape:
                            raise ValueError(f"{name}.load_state_dict: state {n!r} of parameter {k} has shape "
                                             f"{v.shape} but the parameter has shape {p.shape}")
                        v = np.array(v, dtype=p.dtype, copy=True)
                    entry[n] = v
                new_state[id(p)] = entry
        new_groups = []
        for saved, mine in zip(groups, self.param_groups):
            options = dict({n: v for n, v in saved.items() if n != "params"}, params=mine["params"])
            self._check(options)
            new_groups.append(options)
        self.param_groups, self.state = new_groups, new_state

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__} ("]
        for i, group in enumerate(self.param_groups):
            options = ", ".join(f"{k}={v}" for k, v in group.items() if k != "params")
            lines.append(f"  group {i}: {len(group['params'])} parameters, {options}")
        return "\n".join(lines + [")"])


class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum, Nesterov momentum and L2 weight decay.

    torch.optim.SGD with dampening 0; each step::

        g = grad + weight_decay * p
        buf = g (first step), else momentum * buf + g
        g = g + momentum * buf (nesterov) or buf (momentum > 0)
        p = p - lr * g

    Parameters
    ----------
    params : iterable of Tensors, or of parameter-group dicts
        See :class:`Optimizer`.
    lr : float
        The learning rate, >= 0.
    momentum : float, default 0.0
        >= 0.
    weight_decay : float, default 0.0
        L2 penalty added to the gradient, >= 0.
    nesterov : bool, default False
        Nesterov momentum (needs momentum > 0).

    Raises
    ------
    ValueError
        An option that is not a finite real number, negative, or nesterov without momentum; and
        as :class:`Optimizer`.

    Examples
    --------
    >>> import numpy as np, nbconv
    >>> w = nbconv.Tensor(np.array([1.0, 2.0]), requires_grad=True)
    >>> opt = nbconv.optim.SGD([w], lr=0.1, momentum=0.9)
    >>> for _ in range(2):
    ...     opt.zero_grad()
    ...     (w * w).sum().backward()           # gradient 2 w
    ...     opt.step()
    >>> w.data
    array([0.46, 0.92])
    """

    def __init__(self, params: Params, lr: float, momentum: float = 0.0, weight_decay: float = 0.0,
                 nesterov: bool = False) -> None:
        super().__init__(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)

    def _check(self, options):
        options["lr"] = _number("lr", options["lr"])
        options["momentum"] = _number("momentum", options["momentum"])
        options["weight_decay"] = _number("weight_decay", options["weight_decay"])
        options["nesterov"] = bool(options["nesterov"])
        if options["nesterov"] and options["momentum"] <= 0:
            raise ValueError("SGD: nesterov momentum needs momentum > 0")

    def _update(self, p, grad, state, options):
        lr, momentum, weight_decay = options["lr"], options["momentum"], options["weight_decay"]
        if weight_decay != 0:
            grad = grad + weight_decay * p
        if momentum != 0:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = np.array(grad, copy=True)
            else:
                buf *= momentum
                buf += grad
            grad = grad + momentum * buf if options["nesterov"] else buf
        p -= lr * grad


class Adam(Optimizer):
    """Adam (Kingma & Ba) with L2 weight decay added to the gradient (torch.optim.Adam).

    Each step::

        g = grad + weight_decay * p
        m = m + (1 - beta1) * (g - m);  v = beta2 * v + (1 - beta2) * g * g;  t = t + 1
        p = p - (lr / (1 - beta1 ** t)) * m / (sqrt(v) / sqrt(1 - beta2 ** t) + eps)

    Parameters
    ----------
    params : iterable of Tensors, or of parameter-group dicts
        See :class:`Optimizer`.
    lr : float, default 1e-3
        The learning rate, >= 0.
    betas : (float, float), default (0.9, 0.999)
        The decay rates of the first and second moment estimates, each in [0, 1).
    eps : float, default 1e-8
        Added to the denominator, >= 0.
    weight_decay : float, default 0.0
        L2 penalty added to the gradient, >= 0.

    Raises
    ------
    ValueError
        An option that is not a finite real number or out of range; and as :class:`Optimizer`.

    Examples
    --------
    >>> import numpy as np, nbconv
    >>> w = nbconv.Tensor(np.array([1.0, -2.0]), requires_grad=True)
    >>> opt = nbconv.optim.Adam([w], lr=0.1)
    >>> (w * w).sum().backward()
    >>> opt.step()                              # the first step moves each entry by about lr
    >>> w.data
    array([ 0.9, -1.9])
    >>> sorted(opt.state_dict()["state"][0])
    ['exp_avg', 'exp_avg_sq', 'step']
    """

    _decoupled = False

    def __init__(self, params: Params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0) -> None:
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)

    def _check(self, options):
        name = type(self).__name__
        options["lr"] = _number("lr", options["lr"])
        options["eps"] = _number("eps", options["eps"])
        options["weight_decay"] = _number("weight_decay", options["weight_decay"])
        betas = options["betas"]
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"{name}: betas must be a pair (beta1, beta2), got {betas!r}")
        options["betas"] = (_number("betas[0]", betas[0], high=1.0, open_high=True),
                            _number("betas[1]", betas[1], high=1.0, open_high=True))

    def _update(self, p, grad, state, options):
        lr, (beta1, beta2), eps, weight_decay = options["lr"], options["betas"], options["eps"], options["weight_decay"]
        if not state:
            state["step"] = 0
            state["exp_avg"] = np.zeros_like(p)
            state["exp_avg_sq"] = np.zeros_like(p)
        m, v = state["exp_avg"], state["exp_avg_sq"]
        state["step"] += 1
        step = state["step"]
        if weight_decay != 0:
            if self._decoupled:
                p *= 1 - lr * weight_decay
            else:
                grad = grad + weight_decay * p
        weight = 1 - beta1                            # torch's m.lerp_(grad, weight), both of its branches
        if weight < 0.5:
            m += weight * (grad - m)
        else:
            m[...] = grad - (grad - m) * (1 - weight)
        v *= beta2
        v += (1 - beta2) * grad * grad
        step_size = lr / (1 - beta1 ** step)
        denom = np.sqrt(v) / (1 - beta2 ** step) ** 0.5 + eps
        p += (-step_size * m) / denom


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter; torch.optim.AdamW): each step first
    scales p by 1 - lr * weight_decay, then applies Adam's update without weight decay.

    Parameters
    ----------
    params : iterable of Tensors, or of parameter-group dicts
        See :class:`Optimizer`.
    lr : float, default 1e-3
        The learning rate, >= 0.
    betas : (float, float), default (0.9, 0.999)
        The decay rates of the first and second moment estimates, each in [0, 1).
    eps : float, default 1e-8
        Added to the denominator, >= 0.
    weight_decay : float, default 1e-2
        The decoupled decay rate, >= 0.

    Raises
    ------
    ValueError
        An option that is not a finite real number or out of range; and as :class:`Optimizer`.

    Examples
    --------
    >>> import numpy as np, nbconv
    >>> w = nbconv.Tensor(np.array([1.0, -2.0]), requires_grad=True)
    >>> opt = nbconv.optim.AdamW([{"params": [w], "weight_decay": 0.5}], lr=0.1)
    >>> w.grad = np.zeros(2)                    # only the decay acts: w *= 1 - lr * weight_decay
    >>> opt.step()
    >>> w.data
    array([ 0.95, -1.9 ])
    """

    _decoupled = True

    def __init__(self, params: Params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2) -> None:
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
