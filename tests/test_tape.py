"""The tape: Tensor semantics, backward's graph walk, custom Functions, no_grad and gradcheck.

Gradients are checked three ways: with nbconv.gradcheck (finite differences), against PyTorch's
autograd on the same expression, and against closed forms where one is short.
"""
import numba
import numpy as np
import pytest
import torch

import nbconv
from nbconv import Function, GradcheckError, Tensor, gradcheck, no_grad


@pytest.fixture(autouse=True)
def one_thread():
    """These problems are tiny: one thread avoids paying a parallel launch per kernel call."""
    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    yield
    numba.set_num_threads(threads)


def leaf(a):
    return Tensor(np.array(a, dtype=np.float64), requires_grad=True)


# ------------------------------------------------------------------------------------ Tensor basics

def test_tensor_attributes_share_memory(rng):
    a = rng.standard_normal((2, 3)).astype(np.float32)
    t = Tensor(a, requires_grad=True)
    assert t.data is a and t.numpy() is a
    assert t.shape == (2, 3) and t.dtype == np.float32 and t.ndim == 2 and t.size == 6
    assert t.is_leaf and t.requires_grad and t.grad is None
    d = t.detach()
    assert d.data is a and not d.requires_grad and d.is_leaf
    y = t * 2
    assert not y.is_leaf and y.requires_grad and y.dtype == np.float32
    assert not Tensor([1, 2]).requires_grad


def test_integer_tensor_cannot_require_grad():
    with pytest.raises(TypeError, match="floating-point"):
        Tensor(np.arange(3), requires_grad=True)


def test_requires_grad_is_fixed_on_non_leaves():
    y = leaf([1.0]) * 2
    with pytest.raises(RuntimeError, match="leaf"):
        y.requires_grad = False


def test_backward_on_tensor_without_grad_raises():
    with pytest.raises(RuntimeError, match="does not require grad"):
        Tensor(np.ones(3)).sum().backward()
    with pytest.raises(RuntimeError, match="does not require grad"):
        Tensor(np.ones(1)).backward()


def test_backward_of_non_scalar_needs_a_gradient():
    x = leaf(np.ones((2, 3)))
    with pytest.raises(RuntimeError, match=r"\(2, 3\)"):
        (x * 2).backward()
    with pytest.raises(ValueError, match=r"\(3, 2\).*\(2, 3\)"):
        (x * 2).backward(np.ones((3, 2)))
    (x * 2).backward(np.full((2, 3), 0.5))
    np.testing.assert_array_equal(x.grad, np.ones((2, 3)))


def test_ndarray_operand_on_the_left_defers_to_the_tensor(rng):
    a = rng.standard_normal(3)
    x = leaf(rng.standard_normal(3))
    y = a * x + a - x / 2
    assert isinstance(y, Tensor)
    y.sum().backward()
    np.testing.assert_allclose(x.grad, a - 0.5)


# ------------------------------------------------------------------------------------ graph semantics

def test_fan_out_accumulates_every_use(rng):
    x0 = rng.standard_normal(5)
    x = leaf(x0)
    y = x * x + x  # x used three times
    z = y * y.exp()  # y used twice
    z.sum().backward()
    tx = torch.tensor(x0, requires_grad=True)
    ty = tx * tx + tx
    (ty * ty.exp()).sum().backward()
    np.testing.assert_allclose(x.grad, tx.grad.numpy(), rtol=1e-12)


def test_leaf_gradients_accumulate_until_zero_grad(rng):
    x = leaf(rng.standard_normal(4))
    loss = (x * 3).sum()
    loss.backward()
    loss.backward()  # the graph is kept: a second pass adds again
    np.testing.assert_allclose(x.grad, np.full(4, 6.0))
    (x * x).sum().backward()
    np.testing.assert_allclose(x.grad, 6.0 + 2 * x.data)
    x.zero_grad()
    assert x.grad is None
    (x * 3).sum().backward()
    np.testing.assert_allclose(x.grad, np.full(4, 3.0))


def test_grad_is_a_private_array(rng):
    """A leaf's .grad never aliases an array the graph still uses (here the incoming gradient)."""
    x = leaf(rng.standard_normal(3))
    seed = np.ones(3)
    (x + 0).backward(seed)
    x.grad *= 10
    np.testing.assert_array_equal(seed, np.ones(3))


def test_retain_grad_keeps_non_leaf_gradients(rng):
    x = leaf(rng.standard_normal(4))
    h = x * 2
    kept = h.exp()
    kept.retain_grad()
    out = (kept * h).sum()
    out.backward()
    assert h.grad is None  # non-leaf without retain_grad
    np.testing.assert_allclose(kept.grad, h.data)
    np.testing.assert_allclose(x.grad, 2 * (kept.data * h.data + kept.data))
    out.retain_grad()
    out.backward()  # retained gradients accumulate like leaf gradients
    np.testing.assert_allclose(kept.grad, 2 * h.data)
    np.testing.assert_allclose(out.grad, 1.0)


def test_no_grad_stops_recording_and_restores(rng):
    x = leaf(rng.standard_normal(3))
    with no_grad():
        y = x * 2
        with no_grad():
            pass
        z = x * 3  # still off after the nested block
    assert not y.requires_grad and y.is_leaf and not z.requires_grad
    assert (x * 2).requires_grad

    @no_grad()
    def double(t):
        return t * 2

    assert not double(x).requires_grad
    assert (x * 2).requires_grad


def test_a_node_that_gets_no_gradient_still_releases_its_inputs(rng):
    """base feeds two consumers; one of them only reaches the loss through a Function whose backward
    returns None. backward must still deliver the other consumer's gradient to base and x."""

    class Ignore(Function):
        @staticmethod
        def forward(ctx, a):
            return a.copy()

        @staticmethod
        def backward(ctx, g):
            return None

    x = leaf(rng.standard_normal(3))
    base = x * 1.5
    loss = Ignore.apply(base * 2).sum() + base.sum()
    loss.backward()
    np.testing.assert_allclose(x.grad, np.full(3, 1.5))


def test_ten_thousand_op_chain(rng):
    x0 = rng.standard_normal(3)
    x = leaf(x0)
    y = x
    for _ in range(5000):
        y = y * 1.0001 + 0.001  # 10,000 recorded operations
    y.sum().backward()
    np.testing.assert_allclose(x.grad, np.full(3, 1.0001 ** 5000), rtol=1e-10)


# ------------------------------------------------------------------------------------ custom Functions

class Add(Function):
    @staticmethod
    def forward(ctx, a, b):
        return a + b

    @staticmethod
    def backward(ctx, g):
        return g, g


class Split(Function):
    """x (..., 2k) -> (first half, second half) along the last axis."""

    @staticmethod
    def forward(ctx, x):
        k = x.shape[-1] // 2
        return x[..., :k].copy(), x[..., k:].copy()

    @staticmethod
    def backward(ctx, g_first, g_second):
        return np.concatenate([g_first, g_second], axis=-1)


class Maximum(Function):
    """Elementwise max(a, b); the gradient goes to the larger input."""

    @staticmethod
    def forward(ctx, a, b):
        first = a >= b
        ctx.save_for_backward(first)
        return np.where(first, a, b)

    @staticmethod
    def backward(ctx, g):
        (first,) = ctx.saved_tensors
        return (np.where(first, g, 0.0) if ctx.needs_input_grad[0] else None,
                np.where(first, 0.0, g) if ctx.needs_input_grad[1] else None)


def torch_grads(fn, arrays, projection):
    ts = [torch.tensor(a, requires_grad=True) for a in arrays]
    (fn(*ts) * torch.tensor(projection)).sum().backward()
    return [t.grad.numpy() for t in ts]


def test_custom_add(rng):
    a, b = rng.standard_normal((2, 3)), rng.standard_normal((2, 3))
    assert gradcheck(lambda x, y: Add.apply(x, y) * x, [a, b])
    ta, tb = leaf(a), leaf(b)
    v = rng.standard_normal((2, 3))
    (Add.apply(ta, tb) * ta).backward(v)
    expected = torch_grads(lambda x, y: (x + y) * x, [a, b], v)
    np.testing.assert_allclose(ta.grad, expected[0], rtol=1e-12)
    np.testing.assert_allclose(tb.grad, expected[1], rtol=1e-12)


def test_custom_add_with_a_constant_input(rng):
    a = rng.standard_normal(3)
    x = leaf(a)
    out = Add.apply(x, np.ones(3))
    assert out.requires_grad
    out.sum().backward()
    np.testing.assert_array_equal(x.grad, np.ones(3))
    assert not Add.apply(Tensor(a), np.ones(3)).requires_grad


def test_custom_split_two_outputs(rng):
    x0 = rng.standard_normal((3, 4))
    assert gradcheck(lambda x: Split.apply(x), [x0])  # both outputs, projected
    assert gradcheck(lambda x: Split.apply(x)[1].exp(), [x0])  # one output unused: zeros for it
    x = leaf(x0)
    first, second = Split.apply(x)
    (first * 2 + second.exp() * first).sum().backward()
    expected = torch_grads(lambda t: (t[:, :2] * 2 + t[:, 2:].exp() * t[:, :2]).sum(), [x0], 1.0)[0]
    np.testing.assert_allclose(x.grad, expected, rtol=1e-12)


def test_custom_max(rng):
    a, b = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    assert gradcheck(lambda x, y: Maximum.apply(x, y), [a, b])
    ta, tb = leaf(a), leaf(b)
    v = rng.standard_normal((4, 3))
    Maximum.apply(ta, tb).backward(v)
    expected = torch_grads(torch.maximum, [a, b], v)
    np.testing.assert_allclose(ta.grad, expected[0], rtol=1e-12)
    np.testing.assert_allclose(tb.grad, expected[1], rtol=1e-12)
    tb.zero_grad()
    Maximum.apply(np.asarray(a), tb).backward(v)  # needs_input_grad: only the second
    np.testing.assert_allclose(tb.grad, expected[1], rtol=1e-12)


def test_function_backward_with_wrong_count_or_shape_is_reported():
    class TooMany(Function):
        @staticmethod
        def forward(ctx, a):
            return a * 2

        @staticmethod
        def backward(ctx, g):
            return g, g

    class BadShape(Function):
        @staticmethod
        def forward(ctx, a):
            return a * 2

        @staticmethod
        def backward(ctx, g):
            return g[:1]

    with pytest.raises(RuntimeError, match="TooMany backward returned 2 gradients for 1 inputs"):
        TooMany.apply(leaf(np.ones(3))).sum().backward()
    with pytest.raises(RuntimeError, match=r"BadShape backward returned a gradient of shape \(1,\).*\(3,\)"):
        BadShape.apply(leaf(np.ones(3))).sum().backward()


# ------------------------------------------------------------------------------------ gradcheck

def test_gradcheck_catches_a_wrong_backward(rng):
    class WrongSquare(Function):
        @staticmethod
        def forward(ctx, a):
            ctx.save_for_backward(a)
            return a * a

        @staticmethod
        def backward(ctx, g):
            (a,) = ctx.saved_tensors
            return g * a  # should be 2 * g * a

    with pytest.raises(GradcheckError, match=r"input 0 \(shape \(2, 3\)\).*finite differences"):
        gradcheck(lambda x: WrongSquare.apply(x), [rng.standard_normal((2, 3))])


def test_gradcheck_catches_a_lost_gradient(rng):
    """An output computed outside the tape has a non-zero numeric gradient but none on the tape."""
    with pytest.raises(GradcheckError):
        gradcheck(lambda x: Tensor(x.data * 2), [rng.standard_normal(3)])


def test_gradcheck_checks_only_inputs_that_require_grad(rng):
    a = rng.standard_normal(3)
    constant = Tensor(rng.standard_normal(3))
    assert gradcheck(lambda x, c: x * c, [Tensor(a, requires_grad=True), constant])
    with pytest.raises(ValueError, match="at least one"):
        gradcheck(lambda c: c * 2, [constant])
    with pytest.raises(ValueError, match="no floating-point Tensor"):
        gradcheck(lambda x: x.data * 2, [a])


def test_gradcheck_works_in_float64_for_float32_inputs(rng):
    a = rng.standard_normal((3, 3)).astype(np.float32)
    assert gradcheck(lambda x: (x @ x).exp().sum(), [a])
    assert a.dtype == np.float32  # the input itself is not touched


def test_public_names():
    for name in ("Tensor", "Function", "no_grad", "gradcheck", "GradcheckError", "relu", "max_pool1d", "max_pool2d",
                 "max_pool3d", "avg_pool1d", "avg_pool2d", "avg_pool3d", "batch_norm", "linear", "log_softmax",
                 "cross_entropy", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
                 "conv_transpose3d", "conv1d_backward", "conv2d_backward", "conv3d_backward", "ConvGrads",
                 "Conv1dGrads", "Conv2dGrads", "Conv3dGrads", "cuda_available"):
        assert name in nbconv.__all__ and hasattr(nbconv, name)
    assert set(nbconv.__all__) <= set(dir(nbconv))
    assert nbconv.Conv3dGrads is nbconv.ConvGrads
    from nbconv import _device
    assert nbconv.cuda_available is _device.cuda_available


def test_the_tape_and_the_ops_import_no_backend_by_name():
    """Backends are reached through nbconv._backend.select; device arrays are recognised by nbconv._device."""
    import ast
    import pathlib

    package = pathlib.Path(nbconv.__file__).parent
    for module in ("tape.py", "ops.py"):
        imported = set()
        for node in ast.walk(ast.parse((package / module).read_text())):
            if isinstance(node, ast.ImportFrom):
                imported.add(node.module or "")
                imported.update(alias.name for alias in node.names)
            elif isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
        assert not imported & {"_cpu", "_cuda", "_depthwise", "nbconv._cpu", "nbconv._cuda"}, (module, imported)


def test_importing_nbconv_imports_neither_numba_nor_torch():
    import subprocess
    import sys

    code = "import sys, nbconv; print(sorted(m for m in ('numba', 'torch') if m in sys.modules))"
    assert subprocess.check_output([sys.executable, "-c", code], text=True).strip() == "[]"
