"""Differentiable operations: every op is gradient-checked in float64 with nbconv.gradcheck and its
value and gradients are compared with PyTorch's autograd (channels-last here, NCHW there)."""
import numba
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import nbconv
from nbconv import Tensor, gradcheck, ops
from nbconv import conv as conv_arrays


@pytest.fixture(autouse=True)
def one_thread():
    """These problems are tiny: one thread avoids paying a parallel launch per kernel call."""
    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    yield
    numba.set_num_threads(threads)


def check(fn, torch_fn, arrays, rng, rtol=1e-9, atol=1e-10):
    """gradcheck fn on float64 `arrays`, then compare fn's value and the gradients of a random
    projection of it with torch_fn's."""
    arrays = [np.asarray(a, dtype=np.float64) for a in arrays]
    assert gradcheck(fn, arrays)
    tensors = [Tensor(a.copy(), requires_grad=True) for a in arrays]
    out = fn(*tensors)
    v = rng.standard_normal(out.shape)
    out.backward(v)
    torch_inputs = [torch.tensor(a, requires_grad=True) for a in arrays]
    expected = torch_fn(*torch_inputs)
    (expected * torch.tensor(v)).sum().backward()
    np.testing.assert_allclose(out.data, expected.detach().numpy(), rtol=rtol, atol=atol)
    for t, te in zip(tensors, torch_inputs):
        np.testing.assert_allclose(t.grad, te.grad.numpy(), rtol=rtol, atol=atol)


def nchw(t):
    """Channels-last torch tensor -> channels-first: (N, *spatial, C) -> (N, C, *spatial)."""
    return t.movedim(-1, 1)


def nhwc(t):
    return t.movedim(1, -1)


def away_from_zero(rng, shape, margin=0.1):
    a = rng.standard_normal(shape)
    return np.where(np.abs(a) < margin, a + np.sign(a + 1e-12) * margin, a)


# ------------------------------------------------------------------------------------ elementwise, broadcasting

BROADCAST_SHAPES = [((2, 3), (2, 3)), ((3, 1, 4), (2, 4)), ((4,), (3, 4)), ((2, 1), (1, 5)), ((), (2, 3))]


@pytest.mark.parametrize("shape_a, shape_b", BROADCAST_SHAPES)
@pytest.mark.parametrize("op", ["add", "sub", "mul", "div"])
def test_binary_broadcasting(op, shape_a, shape_b, rng):
    fn = {"add": lambda a, b: a + b, "sub": lambda a, b: a - b, "mul": lambda a, b: a * b,
          "div": lambda a, b: a / b}[op]
    b = away_from_zero(rng, shape_b, 0.5)
    check(fn, fn, [rng.standard_normal(shape_a), b], rng)


def test_scalar_operands(rng):
    f = lambda x: (2.0 - x) * 3 + 1 / (x * x + 1) - x / 4  # noqa: E731
    check(f, f, [rng.standard_normal((2, 3))], rng)


@pytest.mark.parametrize("name", ["neg", "pow2", "pow_half", "pow_neg", "exp", "log", "relu"])
def test_unary(name, rng):
    ours, theirs, positive = {
        "neg": (lambda x: -x, lambda x: -x, False),
        "pow2": (lambda x: x ** 2, lambda x: x ** 2, False),
        "pow_half": (lambda x: x ** 0.5, lambda x: x ** 0.5, True),
        "pow_neg": (lambda x: x ** -1.5, lambda x: x ** -1.5, True),
        "exp": (lambda x: x.exp(), torch.exp, False),
        "log": (lambda x: x.log(), torch.log, True),
        "relu": (lambda x: x.relu(), torch.relu, False),
    }[name]
    x = away_from_zero(rng, (3, 4))
    check(ours, theirs, [np.abs(x) if positive else x], rng)


def test_relu_function_on_arrays_and_tensors(rng):
    x = away_from_zero(rng, (2, 3))
    out = nbconv.relu(x)
    assert type(out) is np.ndarray
    np.testing.assert_array_equal(out, np.maximum(x, 0))
    check(nbconv.relu, torch.relu, [x], rng)


@pytest.mark.parametrize("shape_a, shape_b", [((3, 4), (4, 5)), ((4,), (4, 5)), ((3, 4), (4,)), ((4,), (4,)),
                                              ((2, 3, 4), (4, 5)), ((2, 3, 4), (1, 4, 5)), ((3, 4), (2, 4, 5))])
def test_matmul(shape_a, shape_b, rng):
    check(lambda a, b: a @ b, torch.matmul, [rng.standard_normal(shape_a), rng.standard_normal(shape_b)], rng)


def test_reflected_matmul(rng):
    a = rng.standard_normal((2, 3))
    x = Tensor(rng.standard_normal((3, 2)), requires_grad=True)
    (a @ x).sum().backward()
    np.testing.assert_allclose(x.grad, a.sum(axis=0)[:, None] * np.ones((3, 2)))


# ------------------------------------------------------------------------------------ reductions and shapes

REDUCTIONS = [(None, False), (0, False), (-1, True), ((0, 2), False), ((1, 2), True)]


@pytest.mark.parametrize("axis, keepdims", REDUCTIONS)
@pytest.mark.parametrize("name", ["sum", "mean", "max"])
def test_reductions(name, axis, keepdims, rng):
    def theirs(t):
        dim = tuple(range(t.ndim)) if axis is None else axis
        if name == "max":
            return t.amax(dim=dim, keepdim=keepdims)
        return getattr(t, name)(dim=dim, keepdim=keepdims)

    check(lambda x: getattr(x, name)(axis=axis, keepdims=keepdims), theirs, [rng.standard_normal((2, 3, 4))], rng)


def test_max_splits_the_gradient_between_ties():
    x = Tensor(np.array([[1.0, 3.0, 3.0], [2.0, 0.0, 2.0]]), requires_grad=True)
    x.max(axis=1).sum().backward()
    tx = torch.tensor(x.data, requires_grad=True)
    tx.amax(dim=1).sum().backward()
    np.testing.assert_array_equal(x.grad, tx.grad.numpy())


def test_reshape_and_transpose(rng):
    x = rng.standard_normal((2, 3, 4))
    check(lambda t: t.reshape(4, -1), lambda t: t.reshape(4, -1), [x], rng)
    check(lambda t: t.reshape((3, 8)) * 2, lambda t: t.reshape(3, 8) * 2, [x], rng)
    check(lambda t: t.transpose(), lambda t: t.permute(2, 1, 0), [x], rng)
    check(lambda t: t.transpose(1, 2, 0), lambda t: t.permute(1, 2, 0), [x], rng)
    check(lambda t: t.transpose(0, -1, 1), lambda t: t.permute(0, 2, 1), [x], rng)
    check(lambda t: t.transpose((0, 2, 1)) @ t, lambda t: t.permute(0, 2, 1) @ t, [x], rng)


# ------------------------------------------------------------------------------------ shape errors

def test_shape_errors_quote_both_shapes():
    a, b = Tensor(np.ones((2, 3)), requires_grad=True), Tensor(np.ones((4,)))
    with pytest.raises(ValueError, match=r"\(2, 3\) and \(4,\)"):
        a + b
    with pytest.raises(ValueError, match=r"\(2, 3\) and \(4,\)"):
        a * b
    with pytest.raises(ValueError, match=r"\(2, 3\) and \(2, 3\)"):
        a @ a
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(4, 5\)"):
        nbconv.linear(a, np.ones((4, 5)))
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(4,\)"):
        a.reshape(4)
    with pytest.raises(ValueError, match=r"\(2, 3\)"):
        a.transpose(0, 0)
    with pytest.raises(ValueError, match=r"\(2,\).*\(4, 3\)"):
        nbconv.batch_norm(np.ones((4, 3)), np.ones(2), None)
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(3,\)"):
        nbconv.cross_entropy(a, np.zeros(3, dtype=int))
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        nbconv.cross_entropy(a, np.array([0, 3]))


def test_primitive_without_vjp_fails_loudly_naming_itself():
    @ops.Primitive
    def _cube(x):
        return x ** 3, None

    np.testing.assert_array_equal(ops.apply(_cube, np.full(2, 2.0)), np.full(2, 8.0))  # arrays: no tape
    with nbconv.no_grad():
        assert not ops.apply(_cube, Tensor(np.ones(2), requires_grad=True)).requires_grad
    with pytest.raises(NotImplementedError, match="'cube'"):
        ops.apply(_cube, Tensor(np.ones(2), requires_grad=True))


# ------------------------------------------------------------------------------------ neural-network functions

@pytest.mark.parametrize("x_shape, bias", [((4, 5), True), ((2, 3, 5), True), ((4, 5), False)])
def test_linear(x_shape, bias, rng):
    args = [rng.standard_normal(x_shape), rng.standard_normal((5, 3))] + ([rng.standard_normal(3)] if bias else [])
    check(lambda x, w, *b: nbconv.linear(x, w, *b), lambda x, w, *b: F.linear(x, w.T, *b), args, rng)


@pytest.mark.parametrize("axis", [-1, 0])
def test_log_softmax(axis, rng):
    check(lambda x: nbconv.log_softmax(x, axis=axis), lambda x: F.log_softmax(x, dim=axis),
          [rng.standard_normal((4, 5)) * 3], rng)


def test_cross_entropy(rng):
    labels = rng.integers(0, 5, 6)
    check(lambda x: nbconv.cross_entropy(x, labels), lambda x: F.cross_entropy(x, torch.tensor(labels)),
          [rng.standard_normal((6, 5)) * 3], rng)
    loss = nbconv.cross_entropy(rng.standard_normal((6, 5)).astype(np.float32), Tensor(labels))
    assert isinstance(loss, Tensor) and loss.dtype == np.float32 and loss.shape == ()


POOLS = [dict(kernel_size=2), dict(kernel_size=3, stride=2, padding=1), dict(kernel_size=(2, 3), stride=(1, 2)),
         dict(kernel_size=3, stride=1, padding=(1, 0))]


@pytest.mark.parametrize("params", POOLS)
def test_max_pool2d(params, rng):
    x = rng.permutation(2 * 6 * 7 * 3).reshape(2, 6, 7, 3) / 10.0  # distinct values: no ties
    check(lambda t: nbconv.max_pool2d(t, **params),
          lambda t: nhwc(F.max_pool2d(nchw(t), params["kernel_size"], params.get("stride"), params.get("padding", 0))),
          [x], rng)


@pytest.mark.parametrize("params", POOLS)
def test_avg_pool2d(params, rng):
    check(lambda t: nbconv.avg_pool2d(t, **params),
          lambda t: nhwc(F.avg_pool2d(nchw(t), params["kernel_size"], params.get("stride"), params.get("padding", 0))),
          [rng.standard_normal((2, 6, 7, 3))], rng)


def test_pooling_argument_errors():
    x = np.ones((1, 4, 4, 2))
    with pytest.raises(ValueError, match="half"):
        nbconv.max_pool2d(x, 2, padding=2)
    with pytest.raises(ValueError, match=r"\(1, 4, 4, 2\)"):
        nbconv.avg_pool2d(x, 5)
    with pytest.raises(ValueError, match="4-D"):
        nbconv.max_pool2d(np.ones((4, 4, 2)), 2)
    with pytest.raises(TypeError, match="float32 or float64"):
        nbconv.max_pool2d(np.ones((1, 4, 4, 2), dtype=np.int32), 2)


def test_pooling_on_many_threads_matches_torch(rng):
    """Large enough to run the parallel kernels (above _jit.SERIAL_BELOW), in float32."""
    numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    x = rng.standard_normal((8, 32, 32, 80)).astype(np.float32)
    for ours, theirs in [(nbconv.max_pool2d, F.max_pool2d), (nbconv.avg_pool2d, F.avg_pool2d)]:
        t = Tensor(x, requires_grad=True)
        out = ours(t, 3, 2, 1)
        v = rng.standard_normal(out.shape).astype(np.float32)
        out.backward(v)
        tt = torch.tensor(x, requires_grad=True)
        expected = nhwc(theirs(nchw(tt), 3, 2, 1))
        (expected * torch.tensor(v)).sum().backward()
        np.testing.assert_allclose(out.data, expected.detach().numpy(), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(t.grad, tt.grad.numpy(), rtol=1e-5, atol=1e-5)


POOLS_ND = {
    1: [dict(kernel_size=2), dict(kernel_size=3, stride=2, padding=1), dict(kernel_size=4, stride=1, padding=2)],
    3: [dict(kernel_size=2), dict(kernel_size=3, stride=2, padding=1),
        dict(kernel_size=(1, 3, 2), stride=(2, 1, 2), padding=(0, 1, 1))],
}


@pytest.mark.parametrize("nd, params", [(nd, p) for nd, ps in POOLS_ND.items() for p in ps], ids=str)
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_pooling_1d_3d(kind, nd, params, rng):
    """Against torch.nn.functional.{max,avg}_pool{1,3}d (count_include_pad=True) and finite differences."""
    shape = {1: (2, 9, 3), 3: (2, 4, 5, 6, 2)}[nd]
    x = rng.permutation(int(np.prod(shape))).reshape(shape) / 10.0  # distinct values: no ties
    ours, theirs = getattr(nbconv, f"{kind}_pool{nd}d"), getattr(F, f"{kind}_pool{nd}d")
    check(lambda t: ours(t, **params),
          lambda t: nhwc(theirs(nchw(t), params["kernel_size"], params.get("stride"), params.get("padding", 0))),
          [x], rng)


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_max_pool_propagates_nan_like_torch(nd, rng):
    """A NaN in a window wins it (value and gradient), as in PyTorch; one NaN per window and channel here."""
    shape = {1: (1, 6, 2), 2: (1, 4, 4, 2), 3: (1, 2, 4, 4, 2)}[nd]
    x = rng.standard_normal(shape)
    x.reshape(-1)[[3, 10]] = np.nan
    t = Tensor(x, requires_grad=True)
    y = getattr(nbconv, f"max_pool{nd}d")(t, 2)
    y.backward(np.ones(y.shape))
    tt = torch.tensor(x, requires_grad=True)
    expected = nhwc(getattr(F, f"max_pool{nd}d")(nchw(tt), 2))
    expected.backward(torch.ones(expected.shape, dtype=torch.float64))
    assert np.isnan(y.data).sum() == 2
    np.testing.assert_array_equal(y.data, expected.detach().numpy())
    np.testing.assert_array_equal(t.grad, tt.grad.numpy())


@pytest.mark.parametrize("call, error, match", [
    (lambda x1, x3: nbconv.max_pool1d(x1[0], 2), ValueError,
     r"^max_pool1d: x must be 3-D \(N, L, C\), got shape \(4, 2\)"),
    (lambda x1, x3: nbconv.avg_pool3d(x1, 2), ValueError, r"^avg_pool3d: x must be 5-D \(N, D, H, W, C\), got shape"),
    (lambda x1, x3: nbconv.max_pool3d(x3, (2, 2)), ValueError, r"kernel_size must be an int or 3 ints"),
    (lambda x1, x3: nbconv.avg_pool1d(x1, 2.5), TypeError, r"kernel_size must be an int .*2\.5"),
    (lambda x1, x3: nbconv.max_pool1d(x1, 2, stride=0), ValueError, r"stride must be >= 1, got 0"),
    (lambda x1, x3: nbconv.avg_pool3d(x3, 2, stride=(1, 1, "2")), TypeError, r"stride must contain ints"),
    (lambda x1, x3: nbconv.max_pool3d(x3, 2, padding=-1), ValueError, r"padding must be >= 0, got -1"),
    (lambda x1, x3: nbconv.avg_pool1d(x1, 2, padding=2), ValueError,
     r"avg_pool1d: padding \(2,\) must be at most half"),
    (lambda x1, x3: nbconv.max_pool3d(x3, (5, 1, 1)), ValueError,
     r"max_pool3d: kernel_size \(5, 1, 1\) is larger than the padded input \(x.shape=\(1, 4, 4, 4, 2\)"),
    (lambda x1, x3: nbconv.avg_pool1d(x1.astype(np.int64), 2), TypeError, r"x has dtype int64; .*float32 or float64"),
    (lambda x1, x3: nbconv.max_pool1d([[[1.0]]], 1), TypeError, r"max_pool1d: x must be a NumPy array or a Tensor"),
    (lambda x1, x3: nbconv.avg_pool3d(Tensor(x3[:, :0]), 2, padding=1), ValueError,
     r"avg_pool3d: x has an empty spatial dim \(x.shape=\(1, 0, 4, 4, 2\)\)"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_pooling_1d_3d_argument_errors_come_before_any_kernel(call, error, match, monkeypatch):
    from nbconv import _pool
    monkeypatch.setattr(_pool, "call", lambda *args, **kwargs: pytest.fail("a pooling kernel ran"))
    x1, x3 = np.ones((1, 4, 2)), np.ones((1, 4, 4, 4, 2))
    with pytest.raises(error, match=match):
        call(x1, x3)


def test_pooling_work_is_bounded_by_the_arrays_not_the_window():
    """A window of 10**9 taps per axis over a 4 x 4 input: only the in-range taps are visited."""
    x = np.arange(32.0).reshape(1, 4, 4, 2)
    big = 10 ** 9
    out = nbconv.max_pool2d(x, big, padding=big // 2)
    np.testing.assert_array_equal(out, x.max(axis=(1, 2), keepdims=True))
    t = Tensor(x[:, 0], requires_grad=True)
    mean = nbconv.avg_pool1d(t, big, padding=big // 2)
    mean.backward(np.ones(mean.shape))
    np.testing.assert_allclose(mean.data, x[:, 0].sum(axis=1, keepdims=True) / big)
    np.testing.assert_allclose(t.grad, np.full(t.shape, 1 / big))


@pytest.mark.parametrize("nd", [1, 3])
def test_pooling_1d_3d_on_many_threads_is_bitwise_one_thread_and_matches_torch(nd, rng):
    """Large enough to run the parallel kernels (above _jit.SERIAL_BELOW), in float32."""
    shape = {1: (4, 2048, 40), 3: (2, 16, 16, 16, 40)}[nd]
    x = rng.standard_normal(shape).astype(np.float32)
    for kind in ("max", "avg"):
        ours, theirs = getattr(nbconv, f"{kind}_pool{nd}d"), getattr(F, f"{kind}_pool{nd}d")
        runs = []
        for threads in (1, numba.config.NUMBA_NUM_THREADS):
            numba.set_num_threads(threads)
            t = Tensor(x, requires_grad=True)
            out = ours(t, 3, 2, 1)
            v = np.random.default_rng(0).standard_normal(out.shape).astype(np.float32)
            out.backward(v)
            runs.append((out.data, t.grad))
        for a, b in zip(*runs):
            np.testing.assert_array_equal(a, b)
        tt = torch.tensor(x, requires_grad=True)
        expected = nhwc(theirs(nchw(tt), 3, 2, 1))
        (expected * torch.tensor(v)).sum().backward()
        np.testing.assert_allclose(runs[0][0], expected.detach().numpy(), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(runs[0][1], tt.grad.numpy(), rtol=1e-5, atol=1e-5)


def torch_batch_norm(x, weight, bias, running_mean=None, running_var=None, training=True, momentum=0.1):
    return nhwc(F.batch_norm(nchw(x), running_mean, running_var, weight, bias, training=training, momentum=momentum))


@pytest.mark.parametrize("shape", [(4, 3), (2, 3, 4, 3)])
def test_batch_norm_training(shape, rng):
    x = rng.standard_normal(shape) * 2 + 1
    check(lambda t, w, b: nbconv.batch_norm(t, w, b), torch_batch_norm,
          [x, rng.standard_normal(3), rng.standard_normal(3)], rng)


def test_batch_norm_eval(rng):
    mean, var = rng.standard_normal(3), rng.random(3) + 0.5
    check(lambda t, w, b: nbconv.batch_norm(t, w, b, mean, var, training=False),
          lambda t, w, b: torch_batch_norm(t, w, b, torch.tensor(mean), torch.tensor(var), training=False),
          [rng.standard_normal((2, 3, 4, 3)), rng.standard_normal(3), rng.standard_normal(3)], rng)


def test_batch_norm_updates_running_statistics_like_torch(rng):
    x = (rng.standard_normal((5, 4, 3)) * 3 + 2).astype(np.float32)
    mean, var = np.zeros(3, np.float32), Tensor(np.ones(3, np.float32))
    torch_mean, torch_var = torch.zeros(3), torch.ones(3)
    for _ in range(2):
        y = nbconv.batch_norm(Tensor(x, requires_grad=True), None, None, mean, var, momentum=0.2)
        expected = torch_batch_norm(torch.tensor(x), None, None, torch_mean, torch_var, momentum=0.2)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y.data, expected.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(mean, torch_mean.numpy(), rtol=1e-5)
    np.testing.assert_allclose(var.data, torch_var.numpy(), rtol=1e-5)


def test_batch_norm_argument_errors():
    with pytest.raises(ValueError, match="more than one value"):
        nbconv.batch_norm(np.ones((1, 3)), None, None)
    with pytest.raises(ValueError, match="running_mean and running_var"):
        nbconv.batch_norm(np.ones((2, 3)), None, None, training=False)


# ------------------------------------------------------------------------------------ convolutions

def torch_conv(nd, x, w, b, stride=1, padding=0, dilation=1, groups=1, padding_mode="zeros"):
    """PyTorch's conv on channels-last x and spatial-first w; explicit (before, after) pads via F.pad."""
    if isinstance(padding, tuple) and isinstance(padding[0], tuple):
        pads = [p for pair in reversed(padding) for p in pair]
        padding = 0
    elif padding_mode != "zeros":
        p = (padding,) * nd if isinstance(padding, int) else padding
        pads = [v for q in reversed(p) for v in (q, q)]
        padding = 0
    else:
        pads = None
    xt = nchw(x)
    if pads is not None:
        xt = F.pad(xt, pads, mode="constant" if padding_mode == "zeros" else padding_mode)
    wt = w.permute(nd + 1, nd, *range(nd))
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[nd]
    return nhwc(conv(xt, wt, b, stride=stride, padding=padding, dilation=dilation, groups=groups))


CONV2D = [
    dict(),
    dict(stride=2, padding=1),
    dict(stride=(2, 1), dilation=(1, 2), padding=2),
    dict(groups=2, padding="same"),
    dict(groups=4, stride=2, padding=1),  # depthwise, channel multiplier 2
    dict(padding=((1, 2), (0, 1)), dilation=2),
    dict(padding=1, padding_mode="reflect"),
    dict(padding=(2, 1), padding_mode="circular", stride=2),
    dict(padding=1, padding_mode="replicate", groups=2),
]


@pytest.mark.parametrize("params", CONV2D, ids=str)
def test_conv2d(params, rng):
    groups = params.get("groups", 1)
    args = [rng.standard_normal((2, 6, 7, 4)), rng.standard_normal((3, 3, 4 // groups, 8)), rng.standard_normal(8)]
    torch_params = dict(params, padding=(1, 1) if params.get("padding") == "same" else params.get("padding", 0))
    check(lambda x, w, b: nbconv.conv2d(x, w, b, **params),
          lambda x, w, b: torch_conv(2, x, w, b, **torch_params), args, rng)


@pytest.mark.parametrize("params", [dict(), dict(stride=2, padding=2, dilation=2, groups=2),
                                    dict(padding=((0, 2),), padding_mode="zeros"), dict(padding=1, padding_mode="reflect")],
                         ids=str)
def test_conv1d(params, rng):
    groups = params.get("groups", 1)
    args = [rng.standard_normal((2, 9, 4)), rng.standard_normal((3, 4 // groups, 6)), rng.standard_normal(6)]
    check(lambda x, w, b: nbconv.conv1d(x, w, b, **params),
          lambda x, w, b: torch_conv(1, x, w, b, **params), args, rng)


def same_pads(kernel, dilation):
    """The explicit (before, after) pads of padding="same" at stride 1 (TensorFlow's split), for PyTorch."""
    dilation = (dilation,) * len(kernel) if isinstance(dilation, int) else dilation
    return tuple((d * (k - 1) // 2, d * (k - 1) - d * (k - 1) // 2) for k, d in zip(kernel, dilation))


CONV3D = [
    dict(stride=(1, 2, 1), padding=1),
    dict(groups=2, padding=((1, 0), (0, 1), (1, 1)), padding_mode="circular", dilation=(1, 2, 1)),
    dict(padding="same", padding_mode="reflect"),
    dict(groups=2, stride=2, padding=1, padding_mode="replicate"),  # depthwise, channel multiplier 2
]


@pytest.mark.parametrize("params", CONV3D, ids=str)
def test_conv3d(params, rng):
    groups = params.get("groups", 1)
    kernel = (2, 3, 2)
    args = [rng.standard_normal((1, 3, 4, 5, 2)), rng.standard_normal(kernel + (2 // groups, 4)),
            rng.standard_normal(4)]
    torch_params = dict(params)
    if params.get("padding") == "same":
        torch_params["padding"] = same_pads(kernel, params.get("dilation", 1))
    check(lambda x, w, b: nbconv.conv3d(x, w, b, **params),
          lambda x, w, b: torch_conv(3, x, w, b, **torch_params), args, rng)


def test_conv_without_bias_and_with_constant_weight(rng):
    x = rng.standard_normal((1, 5, 5, 2))
    w = rng.standard_normal((3, 3, 2, 3))
    assert gradcheck(lambda t: nbconv.conv2d(t, Tensor(w), padding=1), [x])
    assert gradcheck(lambda k: nbconv.conv2d(Tensor(x), k, stride=2), [w])


def torch_conv_transpose(nd, x, w, b, stride=1, padding=0, output_padding=0, dilation=1, groups=1):
    """PyTorch's conv_transpose on channels-last x; w (*kernel, C_out // groups, C_in) -> (C_in, C_out // groups, *kernel)."""
    wt = w.permute(nd + 1, nd, *range(nd))
    fn = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[nd]
    return nhwc(fn(nchw(x), wt, b, stride=stride, padding=padding, output_padding=output_padding, groups=groups,
                   dilation=dilation))


CONV_TRANSPOSE2D = [
    dict(),
    dict(stride=2, padding=1, output_padding=1),
    dict(stride=(2, 3), padding=(0, 1), output_padding=(1, 2), groups=2),
    dict(dilation=2, padding=1),
    dict(dilation=3, output_padding=2, padding=1),  # output_padding >= stride: trailing rows x never reaches
    dict(stride=2, dilation=(3, 1), output_padding=(2, 1), groups=4),
]


@pytest.mark.parametrize("params", CONV_TRANSPOSE2D, ids=str)
def test_conv_transpose2d(params, rng):
    groups = params.get("groups", 1)
    args = [rng.standard_normal((2, 4, 3, 4)), rng.standard_normal((3, 2, 8 // groups, 4)), rng.standard_normal(8)]
    check(lambda x, w, b: nbconv.conv_transpose2d(x, w, b, **params),
          lambda x, w, b: torch_conv_transpose(2, x, w, b, **params), args, rng)


@pytest.mark.parametrize("params", [dict(stride=3, padding=1, output_padding=2), dict(dilation=2, groups=2)], ids=str)
def test_conv_transpose1d(params, rng):
    groups = params.get("groups", 1)
    args = [rng.standard_normal((2, 5, 4)), rng.standard_normal((3, 6 // groups, 4)), rng.standard_normal(6)]
    check(lambda x, w, b: nbconv.conv_transpose1d(x, w, b, **params),
          lambda x, w, b: torch_conv_transpose(1, x, w, b, **params), args, rng)


CONV_TRANSPOSE3D = [
    dict(stride=2, padding=1, output_padding=1),
    dict(stride=(1, 2, 1), dilation=(2, 1, 1), output_padding=(1, 1, 0), groups=2),  # output_padding >= stride
]


@pytest.mark.parametrize("params", CONV_TRANSPOSE3D, ids=str)
def test_conv_transpose3d(params, rng):
    groups = params.get("groups", 1)
    args = [rng.standard_normal((1, 2, 3, 2, 4)), rng.standard_normal((2, 2, 2, 4 // groups, 4)),
            rng.standard_normal(4)]
    check(lambda x, w, b: nbconv.conv_transpose3d(x, w, b, **params),
          lambda x, w, b: torch_conv_transpose(3, x, w, b, **params), args, rng)


@pytest.mark.parametrize("params", [
    dict(dilation=3, output_padding=2, padding=((1, 3),)),   # output_padding >= stride, <= pad after
    dict(dilation=3, output_padding=2, padding=((2, 1),)),   # output_padding >= stride, > pad after
    dict(stride=2, dilation=5, output_padding=4, padding=((0, 0),)),
    dict(dilation=3, output_padding=2, padding=((7, 0),)),   # x reaches no element of the result
], ids=str)
def test_conv_transpose_gradients_where_output_padding_reaches_past_x(params, rng):
    """Asymmetric pads, which PyTorch's conv_transpose lacks: finite differences only. The VJP runs
    the adjoint convolution on the part of the gradient that x reaches, so the result is exact."""
    args = [rng.standard_normal((2, 3, 2)), rng.standard_normal((3, 3, 2)), rng.standard_normal(3)]
    assert gradcheck(lambda x, w, b: nbconv.conv_transpose1d(x, w, b, **params), args)
    if params["padding"] == ((7, 0),):
        x, w = Tensor(args[0][:, :1], requires_grad=True), Tensor(args[1], requires_grad=True)
        y = nbconv.conv_transpose1d(x, w, **params)
        y.backward(np.ones(y.shape))
        np.testing.assert_array_equal(y.data, 0)
        np.testing.assert_array_equal(x.grad, 0)
        np.testing.assert_array_equal(w.grad, 0)


def test_conv_on_tensors_parses_arguments_once_and_not_on_backward(monkeypatch, rng):
    calls = []

    def counting(name, real):
        def parse(*args, **kwargs):
            calls.append(name)
            return real(*args, **kwargs)
        return parse

    for name in ("conv_params", "transpose_params"):
        monkeypatch.setattr(conv_arrays, name, counting(name, getattr(conv_arrays, name)))
    x = Tensor(rng.standard_normal((1, 3, 3, 3, 2)), requires_grad=True)
    w = Tensor(rng.standard_normal((2, 2, 2, 2, 2)), requires_grad=True)
    y = nbconv.conv3d(x, w, stride=2, padding=1)
    z = nbconv.conv_transpose3d(y, w, stride=2, padding=1, dilation=(2, 1, 1), output_padding=(1, 0, 0))
    assert calls == ["conv_params", "transpose_params"]
    z.backward(np.ones(z.shape))
    assert calls == ["conv_params", "transpose_params"]
    assert x.grad.shape == x.shape and w.grad.shape == w.shape


CONV3D_ERRORS = [
    dict(groups=3), dict(bias=np.ones(5)), dict(x=np.ones((1, 3, 3, 2))), dict(w=np.ones((2, 2, 2, 2, 4), np.float32)),
    dict(out=np.empty((1, 1, 1, 1, 1))), dict(out=np.empty((1, 1, 1, 1, 1), np.float32)), dict(stride=0),
    dict(padding="bogus"), dict(dilation=(1, 2)), dict(x=[[1.0]]),
]


@pytest.mark.parametrize("name", ["conv3d", "conv_transpose3d"])
@pytest.mark.parametrize("change", CONV3D_ERRORS, ids=lambda c: ",".join(c))
def test_conv_on_tensors_raises_the_array_functions_errors(name, change):
    """The Tensor path validates before recording, with the errors of nbconv.conv's functions."""
    if name == "conv3d":
        args = dict(x=np.ones((1, 3, 3, 3, 2)), w=np.ones((2, 2, 2, 2, 4)), bias=np.ones(4))
    else:
        args = dict(x=np.ones((1, 2, 2, 2, 4)), w=np.ones((2, 2, 2, 2, 4)), bias=np.ones(2))
    args.update(change)
    x, w, bias = args.pop("x"), args.pop("w"), args.pop("bias")
    with pytest.raises((ValueError, TypeError)) as array_error:
        getattr(conv_arrays, name)(x, w, bias, **args)
    tensor_x = Tensor(x, requires_grad=True) if isinstance(x, np.ndarray) else x
    with pytest.raises(array_error.type) as tensor_error:
        getattr(nbconv, name)(tensor_x, Tensor(w, requires_grad=True), bias, **args)
    assert str(tensor_error.value) == str(array_error.value)


@pytest.mark.parametrize("name, args, params", [
    ("conv2d", ((2, 5, 5, 3), (3, 3, 3, 4), (4,)), dict(stride=2, padding=1)),
    ("conv1d", ((2, 7, 3), (3, 3, 4), None), dict(dilation=2)),
    ("conv_transpose2d", ((2, 3, 3, 4), (2, 2, 3, 4), (3,)), dict(stride=2)),
    ("conv_transpose1d", ((2, 3, 4), (2, 3, 4), None), dict(stride=2, output_padding=1)),
    ("conv3d", ((1, 3, 4, 3, 2), (2, 2, 2, 2, 4), (4,)), dict(stride=(2, 1, 1), padding=1)),
    ("conv_transpose3d", ((1, 2, 2, 3, 4), (2, 2, 2, 3, 4), (3,)), dict(stride=2, output_padding=(1, 0, 1))),
])
def test_conv_wrappers_on_arrays_are_the_array_functions(name, args, params, rng):
    arrays = [None if s is None else rng.standard_normal(s).astype(np.float32) for s in args]
    ours = getattr(nbconv, name)(*arrays, **params)
    assert type(ours) is np.ndarray
    np.testing.assert_array_equal(ours, getattr(conv_arrays, name)(*arrays, **params))
    with pytest.raises(ValueError) as ours_error:
        getattr(nbconv, name)(arrays[0], arrays[1], arrays[2], groups=5, **params)
    with pytest.raises(ValueError) as array_error:
        getattr(conv_arrays, name)(arrays[0], arrays[1], arrays[2], groups=5, **params)
    assert str(ours_error.value) == str(array_error.value)
    with pytest.raises(TypeError):
        getattr(nbconv, name)(arrays[0].astype(np.float64), arrays[1], arrays[2], **params)
    out = np.empty_like(ours)
    assert getattr(nbconv, name)(*arrays, **params, out=out) is out


def test_conv_on_tensors_without_grad_returns_an_unrecorded_tensor(rng):
    x = Tensor(rng.standard_normal((1, 4, 4, 2)).astype(np.float32))
    w = rng.standard_normal((3, 3, 2, 2)).astype(np.float32)
    y = nbconv.conv2d(x, w, padding=1)
    assert isinstance(y, Tensor) and not y.requires_grad and y.is_leaf
    np.testing.assert_array_equal(y.data, conv_arrays.conv2d(x.data, w, padding=1))


def test_float32_gradients_keep_their_dtype(rng):
    x = Tensor(rng.standard_normal((2, 6, 6, 3)).astype(np.float32), requires_grad=True)
    w = Tensor(rng.standard_normal((3, 3, 3, 4)).astype(np.float32), requires_grad=True)
    g = Tensor(np.ones(4, np.float32), requires_grad=True)
    h = nbconv.max_pool2d(nbconv.batch_norm(nbconv.conv2d(x, w, padding=1), g, None).relu(), 2)
    loss = nbconv.cross_entropy(nbconv.linear(h.reshape(2, -1), np.ones((36, 5), np.float32) / 36), np.array([1, 2]))
    loss.backward()
    for t in (x, w, g):
        assert t.grad.dtype == np.float32 and t.grad.shape == t.shape


@pytest.mark.parametrize("call, match", [
    (lambda: nbconv.max_pool2d([[1.0]], 2), "max_pool2d: x must be a NumPy array or a Tensor, got list"),
    (lambda: nbconv.avg_pool2d([[1.0]], 2), "avg_pool2d: x must be a NumPy array or a Tensor, got list"),
    (lambda: nbconv.batch_norm([[1.0]], None, None), "batch_norm: x must be a NumPy array or a Tensor, got list"),
])
def test_non_array_operands_raise_type_error(call, match):
    with pytest.raises(TypeError, match=match):
        call()


@pytest.mark.parametrize("params, match", [
    (dict(momentum=1.5), r"momentum must be a real number in \[0, 1\], got 1.5"),
    (dict(momentum="fast"), r"momentum must be a real number in \[0, 1\], got 'fast'"),
    (dict(eps=-1e-5), r"eps must be a real number in \[0, inf\), got -1e-05"),
])
def test_batch_norm_checks_momentum_and_eps_before_any_kernel(params, match):
    x, running_mean, running_var = np.ones((4, 3)), np.zeros(3), np.ones(3)
    with pytest.raises(ValueError, match=match):
        nbconv.batch_norm(x, None, None, running_mean, running_var, **params)
    assert np.array_equal(running_mean, np.zeros(3)) and np.array_equal(running_var, np.ones(3))


def test_conv_backward_accepts_tensors_and_returns_arrays(rng):
    x, w = rng.standard_normal((2, 5, 5, 3)), rng.standard_normal((3, 3, 3, 4))
    gy = rng.standard_normal((2, 3, 3, 4))
    ours = nbconv.conv2d_backward(Tensor(gy), Tensor(x, requires_grad=True), Tensor(w))
    arrays = conv_arrays.conv2d_backward(gy, x, w)
    for got, want in zip(ours, arrays):
        assert type(got) is np.ndarray and np.array_equal(got, want)
    ours1 = nbconv.conv1d_backward(Tensor(gy[:, 0]), x[:, 0], Tensor(w[0]), needs=("weight",))
    assert np.array_equal(ours1.weight, conv_arrays.conv1d_backward(gy[:, 0], x[:, 0], w[0]).weight)
    ours3 = nbconv.conv3d_backward(Tensor(gy[:, None]), Tensor(x[:, None]), w[None], needs=("input", "bias"))
    arrays3 = conv_arrays.conv3d_backward(gy[:, None], x[:, None], w[None], needs=("input", "bias"))
    assert ours3.weight is None and np.array_equal(ours3.input, arrays3.input)
    assert np.array_equal(ours3.bias, arrays3.bias)


# ------------------------------------------------------------------------------------ new Tensor methods and functions

def test_getitem_basic_and_advanced_with_repeats(rng):
    x = rng.standard_normal((4, 5, 3))
    rows = np.array([0, 2, 2, 3, 0, 0])                         # repeats: their gradients add up
    mask = rng.standard_normal((4, 5)) > 0
    for index in [(1,), (slice(1, None, 2), ..., 0), (rows,), (rows, 1), (slice(None), [4, 4, 1], [0, 2, 0]),
                  (mask,), (..., [2, 2])]:
        check(lambda t: t[index], lambda t: t[index], [x], rng)
    check(lambda t: t[None, 2, ::-1], lambda t: t[None, 2].flip(1), [x], rng)  # PyTorch has no negative steps
    t = Tensor(x, requires_grad=True)
    t[rows, 1].sum().backward()
    expected = np.zeros_like(x)
    np.add.at(expected, (rows, 1), 1)
    np.testing.assert_array_equal(t.grad, expected)
    assert expected[0, 1, 0] == 3                               # row 0 taken three times
    assert np.shares_memory(Tensor(x)[1:].data, x)              # basic indexing gives a view, like NumPy
    with pytest.raises(IndexError):
        Tensor(x)[4]
    with pytest.raises(IndexError, match="must be integers"):
        Tensor(x)[np.array([0.5])]


def test_getitem_with_tensor_indices_and_iteration(rng):
    x = Tensor(rng.standard_normal((3, 2)), requires_grad=True)
    picked = x[Tensor(np.array([2, 0]))]
    np.testing.assert_array_equal(picked.data, x.data[[2, 0]])
    rows = list(x)                                              # iteration indexes row by row
    assert len(rows) == 3 and all(r.requires_grad for r in rows)


@pytest.mark.parametrize("name", ["abs", "sqrt", "tanh", "sigmoid", "clip", "clip_low", "T"])
def test_new_unary_methods(name, rng):
    ours, theirs, positive = {
        "abs": (lambda x: x.abs(), torch.abs, False),
        "sqrt": (lambda x: x.sqrt(), torch.sqrt, True),
        "tanh": (lambda x: x.tanh(), torch.tanh, False),
        "sigmoid": (lambda x: x.sigmoid(), torch.sigmoid, False),
        "clip": (lambda x: x.clip(-0.5, 0.7), lambda x: x.clamp(-0.5, 0.7), False),
        "clip_low": (lambda x: x.clip(min=0.3), lambda x: x.clamp(min=0.3), False),
        "T": (lambda x: x.T * 2, lambda x: x.T * 2, False),
    }[name]
    x = away_from_zero(rng, (3, 4))
    x = np.where(np.abs(x - 0.7) < 0.05, 0.8, np.where(np.abs(x + 0.5) < 0.05, -0.6, x))  # not on the clip edges
    check(ours, theirs, [np.abs(x) if positive else x], rng)


def test_astype_converts_the_gradient_back(rng):
    x = Tensor(rng.standard_normal(3), requires_grad=True)
    y = x.astype(np.float32)
    assert y.dtype == np.float32 and y.requires_grad
    (y * np.float32(2)).sum().backward()
    assert x.grad.dtype == np.float64
    np.testing.assert_array_equal(x.grad, 2.0)


def test_sigmoid_does_not_overflow():
    x = Tensor(np.array([-1000.0, 0.0, 1000.0]), requires_grad=True)
    with np.errstate(over="raise"):
        y = x.sigmoid()
    np.testing.assert_array_equal(y.data, [0.0, 0.5, 1.0])


def test_clip_errors():
    with pytest.raises(ValueError, match="min, max or both"):
        Tensor(np.ones(2)).clip()
    with pytest.raises(TypeError, match="constant"):
        Tensor(np.ones(2)).clip(Tensor(np.zeros(2)))


@pytest.mark.parametrize("axis", [-1, 0, 1])
def test_softmax(axis, rng):
    check(lambda x: nbconv.softmax(x, axis=axis), lambda x: F.softmax(x, dim=axis),
          [rng.standard_normal((3, 4, 2)) * 3], rng)
    assert np.all(np.isfinite(nbconv.softmax(np.array([1000.0, 0.0]))))


def test_dropout_is_inverted_and_reproducible(rng):
    x = rng.standard_normal((50, 40))
    a = nbconv.dropout(Tensor(x, requires_grad=True), 0.3, rng=np.random.default_rng(7))
    b = nbconv.dropout(x, 0.3, rng=np.random.default_rng(7))
    np.testing.assert_array_equal(a.data, b)                     # same generator seed, same mask
    keep = np.random.default_rng(7).random(x.shape) >= 0.3
    np.testing.assert_array_equal(b, x * (keep / 0.7))             # PyTorch's form: x * (mask / (1 - p))
    assert 0.25 < 1 - keep.mean() < 0.35
    mask = torch.tensor(np.random.default_rng(7).random((4, 5)) >= 0.3, dtype=torch.float64)
    check(lambda t: nbconv.dropout(t, 0.3, rng=np.random.default_rng(7)), lambda t: t * (mask / 0.7), [x[:4, :5]], rng)
    t = Tensor(x)
    assert nbconv.dropout(t, 0.5, training=False) is t and nbconv.dropout(t, 0.0) is t
    np.testing.assert_array_equal(nbconv.dropout(x, 1.0), 0)
    y = nbconv.dropout(x.astype(np.float32), 0.5)
    assert y.dtype == np.float32
    with pytest.raises(ValueError, match=r"p must be a probability in \[0, 1\], got 1.5"):
        nbconv.dropout(x, 1.5)
    with pytest.raises(TypeError, match="numpy.random.Generator"):
        nbconv.dropout(x, 0.5, rng=0)


def test_concatenate_and_stack(rng):
    a, b, c = rng.standard_normal((2, 3)), rng.standard_normal((2, 1)), rng.standard_normal((2, 3))
    check(lambda x, y: nbconv.concatenate([x, y, x * 2], axis=1), lambda x, y: torch.cat([x, y, x * 2], dim=1),
          [a, b], rng)
    check(lambda x, y: nbconv.concatenate((x, y), axis=-2), lambda x, y: torch.cat([x, y], dim=-2), [a, c], rng)
    check(lambda x, y: nbconv.stack([x, y, x]), lambda x, y: torch.stack([x, y, x]), [a, c], rng)
    check(lambda x, y: nbconv.stack([x, y], axis=-1), lambda x, y: torch.stack([x, y], dim=-1), [a, c], rng)
    mixed = nbconv.concatenate([Tensor(a, requires_grad=True), c])  # arrays and Tensors together
    assert isinstance(mixed, Tensor) and mixed.shape == (4, 3)
    assert type(nbconv.stack([a, c])) is np.ndarray
    with pytest.raises(ValueError, match=r"shapes \[\(2, 3\), \(2, 1\)\] differ outside axis 0"):
        nbconv.concatenate([a, b])
    with pytest.raises(ValueError, match="same shape"):
        nbconv.stack([a, b])
    with pytest.raises(ValueError, match="axis 3 is out of bounds for 3 dimensions"):
        nbconv.stack([a, c], axis=3)
    with pytest.raises(ValueError, match="at least one"):
        nbconv.concatenate([])
    with pytest.raises(TypeError, match="list or tuple"):
        nbconv.concatenate(Tensor(a))


PADS = [(1, "constant"), (((0, 0), (2, 1), (1, 2), (0, 0)), "reflect"), (((0, 0), (1, 3), (0, 2), (0, 0)), "edge"),
        (((0, 0), (3, 1), (2, 0), (0, 0)), "wrap"), (((0, 0), (1, 1), (2, 2), (0, 0)), "replicate"),
        (((0, 0), (2, 0), (0, 1), (0, 0)), "circular")]


@pytest.mark.parametrize("pad_width, mode", PADS, ids=str)
def test_pad_matches_numpy_and_torch(pad_width, mode, rng):
    """np.pad's values; gradients against PyTorch's F.pad (spatial dims of an NCHW view)."""
    x = rng.standard_normal((2, 4, 3, 2))
    torch_mode = {"constant": "constant", "reflect": "reflect", "edge": "replicate", "replicate": "replicate",
                  "wrap": "circular", "circular": "circular"}[mode]
    pairs = ((pad_width,) * 2,) * 4 if isinstance(pad_width, int) else pad_width
    np_mode = {"replicate": "edge", "circular": "wrap"}.get(mode, mode)
    np.testing.assert_array_equal(nbconv.pad(x, pad_width, mode), np.pad(x, pairs, mode=np_mode))

    def theirs(t):
        if torch_mode == "constant":
            return F.pad(t, [p for pair in reversed(pairs) for p in pair])
        spatial = [p for pair in reversed(pairs[1:3]) for p in pair]
        return nhwc(F.pad(nchw(t), spatial, mode=torch_mode))

    check(lambda t: nbconv.pad(t, pad_width, mode), theirs, [x], rng)


def test_pad_width_forms_and_errors(rng):
    x = rng.standard_normal((3, 4))
    for width in (2, (1, 2), ((1, 2),), ((1, 0), (0, 3)), [[2], [1]]):
        for mode in ("constant", "reflect", "edge", "wrap"):
            np.testing.assert_array_equal(nbconv.pad(x, width, mode), np.pad(x, width, mode=mode))
            assert gradcheck(lambda t: nbconv.pad(t, width, mode) ** 2, [x])
    wide = nbconv.pad(Tensor(x, requires_grad=True), 7, "reflect")  # wider than the array: repeated reflection
    np.testing.assert_array_equal(wide.data, np.pad(x, 7, mode="reflect"))
    with pytest.raises(ValueError, match="mode must be one of"):
        nbconv.pad(x, 1, "mirror")
    with pytest.raises(ValueError, match="non-negative"):
        nbconv.pad(x, -1)
    with pytest.raises(TypeError, match="pad_width must be an int"):
        nbconv.pad(x, 1.5)
    with pytest.raises(ValueError, match="does not fit an array of 2 dimensions"):
        nbconv.pad(x, ((1, 1), (1, 1), (1, 1)))
    with pytest.raises(ValueError, match="cannot pad an empty axis"):
        nbconv.pad(np.ones((0, 2)), 1, "edge")


# ------------------------------------------------------------------------------------ second derivatives

def check_double(fn, torch_fn, arrays, rng, rtol=1e-8, atol=1e-9, gradgrad=True):
    """gradgradcheck fn in float64, then compare its first and second derivatives with PyTorch's
    (torch.autograd.grad with create_graph=True): with an output gradient v and one direction u_i per
    input, the gradients g_i = d<v, fn>/dx_i and the gradient of sum_i <u_i, g_i> with respect to the
    inputs and to v."""
    arrays = [np.asarray(a, dtype=np.float64) for a in arrays]
    if gradgrad:
        assert nbconv.gradgradcheck(fn, arrays)
    xs = [Tensor(a.copy(), requires_grad=True) for a in arrays]
    out = fn(*xs)
    v0 = rng.standard_normal(out.shape)
    us = [rng.standard_normal(a.shape) for a in arrays]
    v = Tensor(v0, requires_grad=True)
    firsts = nbconv.grad(out, xs, v, create_graph=True, allow_unused=True)
    total = sum((g * u).sum() for g, u in zip(firsts, us) if g is not None)
    seconds = nbconv.grad(total, xs + [v], allow_unused=True)

    txs = [torch.tensor(a, requires_grad=True) for a in arrays]
    tout = torch_fn(*txs)
    tv = torch.tensor(v0, requires_grad=True)
    tfirsts = torch.autograd.grad(tout, txs, tv, create_graph=True, allow_unused=True)
    ttotal = sum((g * torch.tensor(u)).sum() for g, u in zip(tfirsts, us) if g is not None)
    tseconds = torch.autograd.grad(ttotal, txs + [tv], allow_unused=True)

    np.testing.assert_allclose(out.data, tout.detach().numpy(), rtol=rtol, atol=atol)
    for ours, theirs, like in zip(list(firsts) + list(seconds), list(tfirsts) + list(tseconds),
                                  arrays + arrays + [v0]):
        ours = np.zeros(like.shape) if ours is None else ours.data
        theirs = np.zeros(like.shape) if theirs is None else theirs.detach().numpy()
        np.testing.assert_allclose(ours, theirs, rtol=rtol, atol=atol)


SECOND_ORDER = {
    "add": (lambda a, b: a + b * a, [(2, 3), (3,)]),
    "subtract": (lambda a, b: (a - b) * a, [(2, 1), (1, 3)]),
    "multiply": (lambda a, b: a * b * a, [(2, 3), (2, 3)]),
    "divide": (lambda a, b: a / (b * b + 1), [(2, 1), (2, 3)]),
    "power": (lambda a: (a * a + 1) ** -1.5 + a ** 3, [(4,)]),
    "exp_log": (lambda a: (a.exp() + 1).log() * a, [(2, 3)]),
    "relu": (lambda a: (a.relu() * a).relu(), [(2, 3)]),
    "abs": (lambda a: a.abs() * a, [(2, 3)]),
    "sqrt": (lambda a: ((a * a) + 1).sqrt(), [(2, 3)]),
    "tanh": (lambda a: a.tanh() * a, [(2, 3)]),
    "sigmoid": (lambda a: a.sigmoid() * a, [(2, 3)]),
    "clip": (lambda a: (a * a).clip(0.1, 1.5) * a, [(2, 3)]),
    "matmul": (lambda a, b: (a @ b) * (a @ b), [(2, 3, 4), (4, 2)]),
    "matmul_vector": (lambda a, b: (a @ b) ** 2, [(4,), (3, 4, 2)]),
    "sum": (lambda a: a.sum(axis=1) ** 2, [(2, 3, 2)]),
    "mean": (lambda a: a.mean(axis=(0, 2), keepdims=True) * a, [(2, 3, 2)]),
    "max": (lambda a: a.max(axis=1) * a.max(), [(3, 4)]),
    "reshape_transpose": (lambda a: a.reshape(3, 4).T @ a.reshape(4, 3).transpose(1, 0), [(2, 6)]),
    "getitem": (lambda a: a[[0, 0, 2], 1:] * a[2, [1, 1, 0]], [(3, 4)]),
    "concatenate_stack": (lambda a, b: nbconv.stack([a * b, nbconv.concatenate([a, b], axis=0)[1:3]]) ** 2,
                          [(2, 3), (2, 3)]),
    "pad_reflect": (lambda a: nbconv.pad(a, ((1, 2), (2, 1)), "reflect") ** 2, [(3, 4)]),
    "pad_wrap": (lambda a: nbconv.pad(a * a, 2, "wrap"), [(3, 2)]),
    "pad_constant": (lambda a: nbconv.pad(a, 1) ** 3, [(2, 2)]),
    "softmax": (lambda a: nbconv.softmax(a, axis=0) * a, [(3, 4)]),
    "log_softmax": (lambda a: nbconv.log_softmax(a) ** 2, [(3, 4)]),
    "linear": (lambda x, w, b: nbconv.linear(x, w, b).tanh(), [(2, 3, 4), (4, 2), (2,)]),
}

TORCH_SECOND_ORDER = {
    "concatenate_stack": lambda a, b: torch.stack([a * b, torch.cat([a, b], dim=0)[1:3]]) ** 2,
    "pad_reflect": lambda a: F.pad(a[None], (2, 1, 1, 2), mode="reflect")[0] ** 2,
    "pad_wrap": lambda a: F.pad((a * a)[None, None], (2, 2, 2, 2), mode="circular")[0, 0],
    "pad_constant": lambda a: F.pad(a, (1, 1, 1, 1)) ** 3,
    "softmax": lambda a: F.softmax(a, dim=0) * a,
    "log_softmax": lambda a: F.log_softmax(a, dim=-1) ** 2,
    "linear": lambda x, w, b: torch.tanh(x @ w + b),
    "relu": lambda a: torch.relu(torch.relu(a) * a),
    "clip": lambda a: (a * a).clamp(0.1, 1.5) * a,
    "max": lambda a: a.amax(dim=1) * a.amax(),
    "reshape_transpose": lambda a: a.reshape(3, 4).T @ a.reshape(4, 3).permute(1, 0),
}


@pytest.mark.parametrize("name", SECOND_ORDER)
def test_second_derivatives_match_torch(name, rng):
    fn, shapes = SECOND_ORDER[name]
    arrays = [away_from_zero(rng, s, 0.2) for s in shapes]
    if name == "clip":  # keep a * a away from the clip edges (kinks)
        arrays = [np.where(np.abs(np.abs(a) - 1.2) < 0.1, 1.0, np.where(np.abs(a) < 0.4, 0.6, a)) for a in arrays]
    check_double(fn, TORCH_SECOND_ORDER.get(name, fn), arrays, rng)


@pytest.mark.parametrize("kind, nd", [("max", 1), ("avg", 2), ("max", 3), ("avg", 3)])
def test_pooling_second_derivatives(kind, nd, rng):
    shape = {1: (2, 7, 2), 2: (1, 5, 4, 2), 3: (1, 3, 4, 3, 2)}[nd]
    x = rng.permutation(int(np.prod(shape))).reshape(shape) / 10.0
    ours, theirs = getattr(nbconv, f"{kind}_pool{nd}d"), getattr(F, f"{kind}_pool{nd}d")
    check_double(lambda t: ours(t * t, 2, 1, 1) * t.sum(), lambda t: nhwc(theirs(nchw(t * t), 2, 1, 1)) * t.sum(),
                 [x], rng)


@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_second_derivatives(training, rng):
    x, g, b = rng.standard_normal((3, 2, 2, 2)), rng.standard_normal(2), rng.standard_normal(2)
    mean, var = rng.standard_normal(2), rng.random(2) + 0.5
    check_double(lambda t, w, c: nbconv.batch_norm(t, w, c, mean.copy(), var.copy(), training=training) ** 2,
                 lambda t, w, c: torch_batch_norm(t, w, c, torch.tensor(mean), torch.tensor(var),
                                                  training=training) ** 2,
                 [x, g, b], rng, rtol=1e-7)


def test_cross_entropy_second_derivatives(rng):
    labels = rng.integers(0, 4, 5)
    check_double(lambda t: nbconv.cross_entropy(t * t, labels), lambda t: F.cross_entropy(t * t, torch.tensor(labels)),
                 [rng.standard_normal((5, 4))], rng)


SECOND_ORDER_CONV = [
    (1, dict(stride=2, padding=1, dilation=2)),
    (1, dict(padding=2, padding_mode="reflect", groups=2)),
    (1, dict(padding=((2, 1),), padding_mode="circular", stride=2)),
    (2, dict(stride=(2, 1), padding=1, groups=2)),
    (2, dict(padding=((1, 2), (0, 1)), dilation=(1, 2), padding_mode="replicate")),
    (2, dict(padding=1, padding_mode="reflect", stride=2)),
    (2, dict(groups=4, padding="same", padding_mode="circular")),   # depthwise
    (3, dict(stride=(1, 2, 1), padding=1, padding_mode="reflect")),
    (3, dict(groups=2, padding=((1, 0), (0, 1), (1, 1)), padding_mode="replicate", dilation=(1, 1, 2))),
    (3, dict(padding=1, padding_mode="circular")),
]


@pytest.mark.parametrize("nd, params", SECOND_ORDER_CONV, ids=str)
def test_conv_second_derivatives(nd, params, rng):
    """gradgradcheck and PyTorch's double backward for x, w and bias together (the products make the
    second derivatives non-zero: conv(x, w) is bilinear)."""
    groups = params.get("groups", 1)
    spatial = {1: (7,), 2: (5, 4), 3: (3, 4, 3)}[nd]
    kernel = {1: (3,), 2: (3, 2), 3: (2, 2, 2)}[nd]
    args = [rng.standard_normal((1, *spatial, 4)), rng.standard_normal(kernel + (4 // groups, 4)) * 0.5,
            rng.standard_normal(4)]
    conv = getattr(nbconv, f"conv{nd}d")
    torch_params = dict(params)
    if params.get("padding") == "same":
        torch_params["padding"] = same_pads(kernel, params.get("dilation", 1))
    check_double(lambda x, w, b: conv(x, w, b, **params) ** 2,
                 lambda x, w, b: torch_conv(nd, x, w, b, **torch_params) ** 2, args, rng)


SECOND_ORDER_TRANSPOSE = [
    (1, dict(stride=3, padding=1, output_padding=2)),
    (2, dict(stride=(2, 1), padding=(1, 0), output_padding=(1, 0), groups=2)),
    (2, dict(dilation=3, output_padding=2, padding=1)),   # output_padding >= stride: the adjoint is cropped
    (3, dict(stride=2, padding=1, output_padding=1)),
]


@pytest.mark.parametrize("nd, params", SECOND_ORDER_TRANSPOSE, ids=str)
def test_conv_transpose_second_derivatives(nd, params, rng):
    groups = params.get("groups", 1)
    spatial = {1: (4,), 2: (3, 3), 3: (2, 2, 2)}[nd]
    kernel = {1: (3,), 2: (3, 2), 3: (2, 2, 2)}[nd]
    args = [rng.standard_normal((1, *spatial, 4)), rng.standard_normal(kernel + (4 // groups, 4)) * 0.5,
            rng.standard_normal(4)]
    conv = getattr(nbconv, f"conv_transpose{nd}d")
    check_double(lambda x, w, b: conv(x, w, b, **params) ** 2,
                 lambda x, w, b: torch_conv_transpose(nd, x, w, b, **params) ** 2, args, rng)


@pytest.mark.parametrize("params", [dict(dilation=3, output_padding=2, padding=((2, 1),)),
                                    dict(dilation=3, output_padding=2, padding=((7, 0),))], ids=str)
def test_conv_transpose_gradgradcheck_with_asymmetric_pads(params, rng):
    """Asymmetric pads, which PyTorch's conv_transpose lacks: finite differences only."""
    args = [rng.standard_normal((1, 3, 2)), rng.standard_normal((3, 3, 2)), rng.standard_normal(3)]
    assert nbconv.gradgradcheck(lambda x, w, b: nbconv.conv_transpose1d(x, w, b, **params) ** 2, args)


def test_conv_second_derivatives_through_a_chain_of_convolutions(rng):
    """conv -> conv_transpose -> conv with one weight reused: the closed algebra (input_grad and
    weight_grad differentiated again) to third order against finite differences of the second."""
    x, w = rng.standard_normal((1, 5, 5, 2)), rng.standard_normal((3, 3, 2, 2)) * 0.5

    def f(a, k):
        h = nbconv.conv2d(a, k, stride=2, padding=1, padding_mode="reflect")
        h = nbconv.conv_transpose2d(h, k, stride=2, padding=1)
        return nbconv.conv2d(h.tanh(), k, padding=1, padding_mode="circular")

    assert nbconv.gradgradcheck(f, [x, w])
    weight = Tensor(w)                                         # third order: the second derivative's gradient
    assert nbconv.gradgradcheck(lambda a: nbconv.grad(f(a, weight).sum(), a, create_graph=True)[0], [x])


def test_conv_first_order_path_records_nothing_extra(rng):
    """A plain backward runs one kernel per gradient: the VJPs on arrays record no nodes."""
    x, w, b = (Tensor(rng.standard_normal(s), requires_grad=True) for s in ((1, 5, 5, 2), (3, 3, 2, 3), (3,)))
    y = nbconv.conv2d(x, w, b, padding=1, padding_mode="reflect")
    y.backward(np.ones(y.shape))
    for t in (x, w, b):
        assert type(t.grad) is np.ndarray
