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
    for name in ("Tensor", "Function", "no_grad", "grad", "gradcheck", "gradgradcheck", "GradcheckError", "relu",
                 "max_pool1d", "max_pool2d", "max_pool3d", "avg_pool1d", "avg_pool2d", "avg_pool3d", "batch_norm",
                 "linear", "log_softmax", "softmax", "cross_entropy", "dropout", "concatenate", "stack", "pad",
                 "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
                 "conv_transpose3d", "conv1d_backward", "conv2d_backward", "conv3d_backward", "ConvGrads",
                 "Conv1dGrads", "Conv2dGrads", "Conv3dGrads", "cuda_available", "optim"):
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
    modules = ["tape.py", "optim.py"] + sorted(p.name for p in package.glob("ops*.py"))
    assert {"ops.py", "ops_core.py", "ops_math.py", "ops_nn.py", "ops_conv.py"} <= set(modules)
    for module in modules:
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


# ------------------------------------------------------------------------------------ grad() and create_graph

def test_grad_returns_tensors_and_leaves_dot_grad_alone(rng):
    x, w = leaf(rng.standard_normal((2, 3))), leaf(rng.standard_normal((3, 4)))
    y = (x @ w).exp()
    v = rng.standard_normal((2, 4))
    gx, gw = nbconv.grad(y, [x, w], v)
    assert x.grad is None and w.grad is None
    assert isinstance(gx, Tensor) and not gx.requires_grad and gx.is_leaf
    tx, tw = torch.tensor(x.data, requires_grad=True), torch.tensor(w.data, requires_grad=True)
    ex, ew = torch.autograd.grad((tx @ tw).exp(), [tx, tw], torch.tensor(v))
    np.testing.assert_allclose(gx.data, ex.numpy(), rtol=1e-12)
    np.testing.assert_allclose(gw.data, ew.numpy(), rtol=1e-12)
    (gx_only,) = nbconv.grad(y.sum(), x)                     # one Tensor in, scalar output: no grad_outputs
    np.testing.assert_allclose(gx_only.data, nbconv.grad(y, [x], np.ones((2, 4)))[0].data)


def test_grad_of_several_outputs_and_non_leaf_inputs(rng):
    x = leaf(rng.standard_normal(4))
    h = x * 3
    a, b = h.exp(), h * h
    gh, gx = nbconv.grad([a.sum(), b.sum()], [h, x])
    np.testing.assert_allclose(gh.data, np.exp(h.data) + 2 * h.data, rtol=1e-12)
    np.testing.assert_allclose(gx.data, 3 * gh.data, rtol=1e-12)
    (ga,) = nbconv.grad(a, [a], np.full(4, 2.0))              # an output with respect to itself: the seed
    np.testing.assert_array_equal(ga.data, np.full(4, 2.0))


def test_grad_argument_errors(rng):
    x, unused = leaf(rng.standard_normal(3)), leaf(rng.standard_normal(3))
    y = (x * 2).sum()
    with pytest.raises(RuntimeError, match=r"inputs\[1\] \(shape \(3,\)\) is not used.*allow_unused=True"):
        nbconv.grad(y, [x, unused])
    assert nbconv.grad(y, [x, unused], allow_unused=True)[1] is None
    with pytest.raises(RuntimeError, match=r"inputs\[0\] does not require grad"):
        nbconv.grad(y, [Tensor(np.ones(3))])
    with pytest.raises(RuntimeError, match=r"outputs\[0\] does not require grad"):
        nbconv.grad(Tensor(np.ones(1)), [x])
    with pytest.raises(RuntimeError, match=r"grad_outputs\[0\] argument for a Tensor of shape \(3,\)"):
        nbconv.grad(x * 2, [x])
    with pytest.raises(ValueError, match="2 entries for 1 outputs"):
        nbconv.grad(y, [x], [np.ones(()), np.ones(())])
    with pytest.raises(TypeError, match=r"inputs\[0\] must be a Tensor"):
        nbconv.grad(y, [x.data])


def test_create_graph_gives_differentiable_gradients(rng):
    """d/dx of sum(x ** 3) is 3 x ** 2 (a Tensor with a graph); its gradient is 6 x; the third is 6."""
    x = leaf(rng.standard_normal(5))
    (g1,) = nbconv.grad((x ** 3).sum(), x, create_graph=True)
    assert g1.requires_grad and not g1.is_leaf
    np.testing.assert_allclose(g1.data, 3 * x.data ** 2, rtol=1e-12)
    (g2,) = nbconv.grad(g1.sum(), x, create_graph=True)
    np.testing.assert_allclose(g2.data, 6 * x.data, rtol=1e-12)
    (g3,) = nbconv.grad(g2.sum(), x)
    np.testing.assert_allclose(g3.data, np.full(5, 6.0), rtol=1e-12)


def test_backward_with_create_graph_makes_grad_a_tensor_that_accumulates(rng):
    x = leaf(rng.standard_normal(3))
    (x.exp() * x).sum().backward(create_graph=True)
    assert isinstance(x.grad, Tensor) and x.grad.requires_grad
    first = x.grad
    np.testing.assert_allclose(first.data, np.exp(x.data) * (x.data + 1), rtol=1e-12)
    x.grad = None
    first.sum().backward()                                   # d/dx sum(e^x (x + 1)) = e^x (x + 2)
    np.testing.assert_allclose(x.grad, np.exp(x.data) * (x.data + 2), rtol=1e-12)
    x.grad = None
    (x * x).sum().backward()                                 # plain, then create_graph: the Tensor sum
    (x * x).sum().backward(create_graph=True)
    assert isinstance(x.grad, Tensor)
    np.testing.assert_allclose(x.grad.data, 4 * x.data, rtol=1e-12)


def test_a_gradient_tensor_that_requires_grad_is_part_of_the_graph(rng):
    x, v = leaf(rng.standard_normal(4)), leaf(rng.standard_normal(4))
    (gx,) = nbconv.grad(x.tanh(), x, v, create_graph=True)   # gx = v (1 - tanh(x)^2)
    (gv,) = nbconv.grad(gx.sum(), v)
    np.testing.assert_allclose(gv.data, 1 - np.tanh(x.data) ** 2, rtol=1e-12)


def test_gradgradcheck_passes_and_catches_a_wrong_second_derivative(rng):
    assert nbconv.gradgradcheck(lambda a, b: (a * b).exp() / (b * b + 1), [rng.standard_normal(3),
                                                                         rng.standard_normal(3)])

    class Square(Function):                                  # right first derivative, computed on arrays
        @staticmethod
        def forward(ctx, a):
            ctx.save_for_backward(a)
            return a * a

        @staticmethod
        def backward(ctx, g):
            (a,) = ctx.saved_tensors
            return 2 * a * g

    assert gradcheck(lambda t: Square.apply(t), [rng.standard_normal(3)])
    with pytest.raises(RuntimeError, match=r"Square.backward computes on arrays, so its gradients cannot be "
                                           r"differentiated again"):
        nbconv.gradgradcheck(lambda t: Square.apply(t), [rng.standard_normal(3)])


def test_function_gradients_under_create_graph_are_first_order(rng):
    """create_graph through a Function works for the first derivative; a second one through it
    raises naming the Function (no silently missing term)."""
    x = leaf(rng.standard_normal(3))
    y = Add.apply(x * x, x)
    (g,) = nbconv.grad(y.sum(), x, create_graph=True)
    np.testing.assert_allclose(g.data, 2 * x.data + 1, rtol=1e-12)
    with pytest.raises(RuntimeError, match="Add.backward computes on arrays"):
        g.sum().backward()


def torch_conv2d(x, w, b=None, stride=1, padding=0, padding_mode="zeros", groups=1):
    """PyTorch's conv2d on channels-last x (N, H, W, C) and HWIO w; padding modes through F.pad."""
    import torch.nn.functional as F
    xt = x.movedim(-1, 1)
    if padding_mode != "zeros":
        xt, padding = F.pad(xt, (padding,) * 4, mode=padding_mode), 0
    return F.conv2d(xt, w.permute(3, 2, 0, 1), b, stride=stride, padding=padding, groups=groups).movedim(1, -1)


def small_cnn(p, x, labels, conv, pool, bn, act, lin, ce):
    h = act[0](conv(x, p[0], p[1], stride=2, padding=1, padding_mode="reflect"))
    h = pool[0](h)
    h = act[1](conv(h, p[2], None, padding=1, groups=2))
    h = pool[1](bn(h, p[3]))
    return ce(lin(h.reshape(x.shape[0], -1), p[4]), labels)


def test_hessian_vector_product_of_a_small_cnn_matches_torch_functional_hvp(rng):
    """conv (stride, reflect padding) -> tanh -> avg_pool -> grouped conv -> sigmoid -> batch_norm ->
    max_pool -> linear -> cross_entropy: H v for the weights, against torch.autograd.functional.hvp."""
    import torch.nn.functional as F
    x = rng.standard_normal((4, 8, 8, 2))
    labels = rng.integers(0, 3, 4)
    shapes = [(3, 3, 2, 4), (4,), (3, 3, 2, 4), (4,), (4, 3)]
    weights = [rng.standard_normal(s) * 0.5 for s in shapes]
    vectors = [rng.standard_normal(s) for s in shapes]

    def ours(*p):
        return small_cnn(p, x, labels, lambda *a, **k: nbconv.conv2d(*a, **k),
                         (lambda t: nbconv.avg_pool2d(t, 2), lambda t: nbconv.max_pool2d(t, 2)),
                         lambda t, g: nbconv.batch_norm(t, g, None), (lambda t: t.tanh(), lambda t: t.sigmoid()),
                         nbconv.linear, nbconv.cross_entropy)

    params = [leaf(w) for w in weights]
    loss = ours(*params)
    grads = nbconv.grad(loss, params, create_graph=True)
    dot = sum((g * v).sum() for g, v in zip(grads, vectors))
    hvp = nbconv.grad(dot, params)

    def theirs(*p):
        nhwc = lambda t: t.movedim(1, -1)  # noqa: E731
        nchw = lambda t: t.movedim(-1, 1)  # noqa: E731
        return small_cnn(p, torch.tensor(x), torch.tensor(labels), torch_conv2d,
                         (lambda t: nhwc(F.avg_pool2d(nchw(t), 2)), lambda t: nhwc(F.max_pool2d(nchw(t), 2))),
                         lambda t, g: F.batch_norm(t.reshape(-1, 4), None, None, g, training=True).reshape(t.shape),
                         (torch.tanh, torch.sigmoid), lambda t, w: t @ w, F.cross_entropy)

    value, expected = torch.autograd.functional.hvp(theirs, tuple(torch.tensor(w) for w in weights),
                                                    tuple(torch.tensor(v) for v in vectors))
    assert loss.item() == pytest.approx(value.item(), rel=1e-12)
    for ours_hv, their_hv in zip(hvp, expected):
        np.testing.assert_allclose(ours_hv.data, their_hv.numpy(), rtol=1e-8, atol=1e-10)


# ------------------------------------------------------------------------------------ saved arrays and in-place writes

def test_writing_saved_data_before_backward_is_refused_then_allowed(rng):
    x, w = leaf(rng.standard_normal(4)), leaf(rng.standard_normal(4))
    y = (x * w).sum()
    for write in (lambda: x.data.__setitem__(0, 5.0), lambda: x.data.__iadd__(1), lambda: np.copyto(w.data, 0)):
        with pytest.raises(ValueError, match="read-only"):
            write()
    y.backward()
    np.testing.assert_array_equal(x.grad, w.data)            # the values the forward pass saw
    x.data[0] = 5.0                                           # backward ran: writeable again
    w.data -= 0.1 * w.grad
    assert x.data.flags.writeable and w.data.flags.writeable


def test_a_saved_view_guards_the_array_owning_its_memory(rng):
    base = rng.standard_normal((2, 3))
    t = Tensor(base, requires_grad=True)
    h = t.reshape(6)                                          # a view of base
    y = (h * h).sum()
    with pytest.raises(ValueError, match="read-only"):
        base[0, 0] = 1.0
    with pytest.raises(ValueError, match="read-only"):
        h.data[0] = 1.0
    y.backward()
    base[0, 0] = 1.0
    h.data[1] = 2.0
    np.testing.assert_allclose(t.grad.reshape(-1)[2:], 2 * base.reshape(-1)[2:])


def test_plain_ndarrays_passed_to_ops_are_guarded_until_backward(rng):
    a = rng.standard_normal((1, 5, 5, 2))
    w = leaf(rng.standard_normal((3, 3, 2, 2)))
    y = nbconv.conv2d(a, w)                                    # a is saved (for w's gradient)
    assert not a.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        a[...] = 0
    y.backward(np.ones(y.shape))
    assert a.flags.writeable
    a[...] = 0


def test_a_graph_dropped_without_backward_gives_the_arrays_back(rng):
    x = leaf(rng.standard_normal(3))
    y = x.exp() * x
    assert not x.data.flags.writeable
    del y
    assert x.data.flags.writeable
    with no_grad():
        x.exp() * x                                           # nothing recorded: nothing guarded
        assert x.data.flags.writeable


def test_read_only_arrays_stay_read_only(rng):
    a = rng.standard_normal(3)
    a.flags.writeable = False
    x = Tensor(a, requires_grad=True)
    (x * x).sum().backward()
    assert not a.flags.writeable
    np.testing.assert_array_equal(x.grad, 2 * a)


def test_guarded_arrays_reach_the_kernels_without_copies(monkeypatch, rng):
    """Kernels read guarded (read-only) inputs through writeable aliases: every array the CPU backend
    gets is writeable, so nbconv._cpu never copies them."""
    from nbconv import _cpu

    seen = []
    for name in ("forward", "grad_input", "grad_weight", "grad_bias", "transpose"):
        real = getattr(_cpu, name)

        def spy(*args, real=real):
            seen.extend(a.flags.writeable for a in args if isinstance(a, np.ndarray))
            return real(*args)
        monkeypatch.setattr(_cpu, name, spy)
    x, w = leaf(rng.standard_normal((1, 5, 5, 2))), leaf(rng.standard_normal((3, 3, 2, 2)))
    h = nbconv.conv2d(x, w, padding=1)                          # x, w guarded
    y = nbconv.conv2d(h.relu(), w)                              # relu's result and w guarded: inputs again
    assert not x.data.flags.writeable and not w.data.flags.writeable
    y.backward(np.ones(y.shape), create_graph=True)
    x.grad.backward(np.ones(x.shape))                          # (a sum's broadcast gradient would be read-only)
    assert len(seen) > 10 and all(seen)


def test_an_in_place_update_through_nbconv_makes_a_later_backward_raise_naming_the_op(rng):
    x, w = leaf(rng.standard_normal((1, 4, 4, 2))), leaf(rng.standard_normal((3, 3, 2, 2)))
    y = nbconv.conv2d(x, w, padding=1)
    with nbconv.tape.modify_in_place(w, "my update") as data:  # allowed while guarded (it bumps the version)
        data *= 2
    with pytest.raises(RuntimeError, match=r"^conv2d: input 1 \(shape \(3, 3, 2, 2\)\), which it saved for backward, "
                                           r"was modified in place by my update after the forward pass"):
        y.backward(np.ones(y.shape))


def test_an_in_place_update_between_two_backward_passes_is_detected(rng):
    x = leaf(np.abs(rng.standard_normal(3)) + 1)
    y = (x.log() * 3).sum()                                    # log saves its input
    y.backward()
    with nbconv.tape.modify_in_place(x) as data:
        data += 1
    with pytest.raises(RuntimeError, match=r"^log: input 0 \(shape \(3,\)\).*modified in place by an in-place "
                                           r"update after the forward pass \(version 0 -> 1\)"):
        y.backward()
    z = (x.log() * 3).sum()                                    # a new forward pass sees the new values
    x.zero_grad()
    z.backward()
    np.testing.assert_allclose(x.grad, 3 / x.data)


def test_a_saved_result_is_guarded_and_versioned_too(rng):
    x = leaf(rng.standard_normal(3))
    e = x.exp()                                                # exp saves its result
    y = (e * 2).sum()
    with pytest.raises(ValueError, match="read-only"):
        e.data[0] = 0
    with nbconv.tape.modify_in_place(e, "a test"):
        pass
    with pytest.raises(RuntimeError, match=r"^multiply: input 0 .*by a test"):
        y.backward()


def test_modify_in_place_refuses_arrays_that_were_read_only_already():
    a = np.ones(3)
    a.flags.writeable = False
    with pytest.raises(ValueError, match=r"the array \(shape \(3,\)\) is read-only"):
        with nbconv.tape.modify_in_place(Tensor(a)):
            pass


# ------------------------------------------------------------------------------------ Function misuse

def make_function(name, forward, backward):
    return type(name, (Function,), {"forward": staticmethod(forward), "backward": staticmethod(backward)})


@pytest.mark.parametrize("result, error, match", [
    (lambda a: 2.5, TypeError, r"^BadForward.forward returned float; forward must return a NumPy array"),
    (lambda a: None, TypeError, r"^BadForward.forward returned NoneType;"),
    (lambda a: (a * 2, None), TypeError, r"^BadForward.forward returned NoneType as output 1;"),
    (lambda a: [a.tolist()], TypeError, r"^BadForward.forward returned list as output 0;"),
    (lambda a: (), TypeError, r"^BadForward.forward returned an empty tuple"),
], ids=["float", "None", "tuple-with-None", "list", "empty"])
def test_function_forward_misuse_names_the_function_and_the_output(result, error, match):
    bad = make_function("BadForward", lambda ctx, a: result(a), lambda ctx, g: g)
    with pytest.raises(error, match=match):
        bad.apply(leaf(np.ones(3)))


def test_function_forward_may_return_numpy_scalars():
    total = make_function("Total", lambda ctx, a: np.sum(a), lambda ctx, g: np.full(3, g))
    x = leaf(np.arange(3.0))
    out = total.apply(x)
    assert out.shape == () and out.item() == 3.0
    out.backward()
    np.testing.assert_array_equal(x.grad, np.ones(3))


@pytest.mark.parametrize("grads, error, match", [
    (lambda g: {"a": g}, TypeError, r"^BadBackward.backward returned dict; it must return one gradient \(an array or "
                                    r"None\) per input of BadBackward.forward \(2 inputs\)"),
    (lambda g: (x for x in (g, g)), TypeError, r"^BadBackward.backward returned generator;"),
    (lambda g: (g,), RuntimeError, r"^BadBackward backward returned 1 gradients for 2 inputs"),
    (lambda g: (g, g, g), RuntimeError, r"^BadBackward backward returned 3 gradients for 2 inputs"),
    (lambda g: (g, "zero"), TypeError, r"^BadBackward.backward returned str as the gradient of input 1"),
    (lambda g: ([1.0, 2.0, 3.0], g), TypeError, r"^BadBackward.backward returned list as the gradient of input 0"),
    (lambda g: (g[:2], g), RuntimeError, r"^BadBackward backward returned a gradient of shape \(2,\) for input 0, "
                                         r"which has shape \(3,\)"),
    (lambda g: (g, g.astype(object)), TypeError, r"^BadBackward backward returned a gradient of dtype object for "
                                                 r"input 1"),
], ids=["dict", "generator", "too-few", "too-many", "str", "list", "shape", "dtype"])
def test_function_backward_misuse_names_the_function_and_the_input(grads, error, match):
    bad = make_function("BadBackward", lambda ctx, a, b: a * b, lambda ctx, g: grads(g))
    y = bad.apply(leaf(np.ones(3)), leaf(np.ones(3)))
    with pytest.raises(error, match=match):
        y.sum().backward()


def test_function_without_forward_or_backward_names_itself():
    class NoBackward(Function):
        @staticmethod
        def forward(ctx, a):
            return a

    with pytest.raises(NotImplementedError, match="NoBackward must define a static backward"):
        NoBackward.apply(leaf(np.ones(2)))


def test_function_saved_inputs_are_guarded_until_backward(rng):
    class Cube(Function):
        @staticmethod
        def forward(ctx, a):
            ctx.save_for_backward(a)
            return a ** 3

        @staticmethod
        def backward(ctx, g):
            (a,) = ctx.saved_tensors
            assert a.flags.writeable                           # the backward reads a writeable alias
            return 3 * a ** 2 * g

    x = leaf(rng.standard_normal(3))
    y = Cube.apply(x).sum()
    with pytest.raises(ValueError, match="read-only"):
        x.data[0] = 0
    y.backward()
    np.testing.assert_allclose(x.grad, 3 * x.data ** 2)
    x.data[0] = 0


# ------------------------------------------------------------------------------------ NumPy interplay

def test_operators_with_numpy_arrays_on_either_side(rng):
    a = rng.standard_normal((2, 3))
    x = leaf(rng.standard_normal((2, 3)))
    for fn in (lambda t: a * t, lambda t: t * a, lambda t: a - t, lambda t: a / (t * t + 1), lambda t: a + t,
               lambda t: a @ t.T, lambda t: t.T @ a, lambda t: a ** 2 * t):
        out = fn(x)
        assert isinstance(out, Tensor) and out.requires_grad
        assert gradcheck(fn, [x.data])


def test_numpy_ufuncs_and_functions_dispatch_to_the_tape(rng):
    x0 = np.abs(rng.standard_normal((2, 3))) + 0.1
    for fn in (np.exp, np.log, np.sqrt, np.tanh, np.abs, np.negative, lambda t: np.add(t, 1),
               lambda t: np.multiply(2.0, t), lambda t: np.power(t, 3), lambda t: np.sum(t, axis=1),
               lambda t: np.mean(t), lambda t: np.max(t, axis=0), lambda t: np.concatenate([t, np.ones((1, 3))]),
               lambda t: np.stack([t, t]), lambda t: np.pad(t, 1, mode="reflect"), lambda t: np.clip(t, 0.2, 0.8),
               lambda t: np.transpose(t), lambda t: np.reshape(t, (3, 2)), lambda t: np.matmul(t, t.T)):
        out = fn(leaf(x0))
        assert isinstance(out, Tensor) and out.requires_grad, fn
        assert gradcheck(fn, [x0])
    assert np.shape(leaf(x0)) == (2, 3) and np.ndim(leaf(x0)) == 2


def test_numpy_calls_without_a_gradient_compute_on_the_data(rng):
    x = leaf(rng.standard_normal((3, 4)))
    np.testing.assert_array_equal(np.argmax(x, axis=1), np.argmax(x.data, axis=1))
    np.testing.assert_array_equal(x > 0, x.data > 0)
    assert np.isnan(x).sum() == 0
    with no_grad():
        np.testing.assert_array_equal(np.sin(x), np.sin(x.data))
    np.testing.assert_array_equal(np.sin(x.detach()), np.sin(x.data))


def test_numpy_calls_that_would_drop_the_gradient_raise_a_type_error_saying_what_to_use(rng):
    x = leaf(rng.standard_normal(3))
    with pytest.raises(TypeError, match=r"^np.sin on a Tensor that requires grad is not supported.*t.data"):
        np.sin(x)
    with pytest.raises(TypeError, match=r"^np.cumsum on a Tensor that requires grad is not supported.*sigmoid"):
        np.cumsum(x)
    with pytest.raises(TypeError, match=r"np.exp with out= on a Tensor"):
        np.exp(x, out=np.empty(3))
    with pytest.raises(TypeError, match=r"np.add.reduce on a Tensor"):
        np.add.reduce(x)
    with pytest.raises(TypeError, match=r"np.sum on Tensors takes the arguments of nbconv's sum"):
        np.sum(x, dtype=np.float32)


def test_tensor_conversions(rng):
    x = leaf(np.array([2.5]))
    assert float(x) == 2.5 and x.item() == 2.5 and float(leaf(3.0)) == 3.0
    with pytest.raises(TypeError, match=r"single-element.*\(2,\)"):
        float(leaf([1.0, 2.0]))
    m = leaf(rng.standard_normal((2, 3)))
    assert m.T.shape == (3, 2) and m.ndim == 2 and m.T.requires_grad


def test_a_graph_collected_by_the_garbage_collector_inside_a_guarded_region_does_not_deadlock(rng):
    """A Node in a reference cycle can be freed by the cyclic garbage collector at any allocation,
    including while this thread holds the tape's lock: its guards are given back re-entrantly."""
    import gc

    x = leaf(rng.standard_normal(3))
    cycle = [x.exp() * x]
    cycle.append(cycle)
    assert not x.data.flags.writeable
    with nbconv.tape._lock:
        del cycle
        gc.collect()
    assert x.data.flags.writeable


def test_grad_on_device_tensors_and_create_graph_refused_there(rng):
    """nbconv.grad works for Tensors holding CUDA device arrays (first order, results on the device);
    higher-order gradients are host-only and say so (CUDA simulator unless a GPU is present)."""
    import numba
    if not (numba.config.ENABLE_CUDASIM or nbconv.cuda_available()):
        pytest.skip("no CUDA GPU and the CUDA simulator is off")
    from numba import cuda

    x0, w0 = rng.standard_normal((1, 4, 4, 2)), rng.standard_normal((3, 3, 2, 2))
    x, w = Tensor(cuda.to_device(x0), requires_grad=True), Tensor(cuda.to_device(w0), requires_grad=True)
    y = nbconv.conv2d(x, w, padding=1, padding_mode="reflect")
    gx, gw = nbconv.grad(y, [x, w], cuda.to_device(np.ones(y.shape)))
    hx, hw = leaf(x0), leaf(w0)
    expected = nbconv.grad(nbconv.conv2d(hx, hw, padding=1, padding_mode="reflect"), [hx, hw], np.ones(y.shape))
    np.testing.assert_allclose(gx.numpy(), expected[0].data, rtol=1e-10)
    np.testing.assert_allclose(gw.numpy(), expected[1].data, rtol=1e-10)
    with pytest.raises(NotImplementedError, match="create_graph=True .* host only"):
        y.backward(cuda.to_device(np.ones(y.shape)), create_graph=True)
