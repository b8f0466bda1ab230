"""The tape on Tensors that hold CUDA device arrays.

The convolution ops run forward and backward on the device; every gradient is compared (copied to
the host) with the same computation on NumPy Tensors. Other ops raise NotImplementedError. Under
Numba's CUDA simulator (conftest's default) every launch costs ~0.1 ms per thread, so shapes are
tiny: at most a few hundred threads per launch.
"""
import numba
import numpy as np
import pytest

import nbconv
from nbconv import Function, Tensor, no_grad
from nbconv._device import is_device_array as _is_device_array

if not (numba.config.ENABLE_CUDASIM or nbconv.cuda_available()):
    pytest.skip("no CUDA GPU and the CUDA simulator is off (NUMBA_ENABLE_CUDASIM=0)", allow_module_level=True)

from numba import cuda  # noqa: E402

TOL = dict(rtol=1e-5, atol=1e-5)


def host_and_device(arrays):
    """Two lists of leaf Tensors that require grad over `arrays`: on the host and on the device."""
    return ([Tensor(a, requires_grad=True) for a in arrays],
            [Tensor(cuda.to_device(a), requires_grad=True) for a in arrays])


def assert_device_grads_match(host, device):
    for h, d in zip(host, device):
        assert _is_device_array(d.grad) and not isinstance(d.grad, np.ndarray)
        np.testing.assert_allclose(d.grad.copy_to_host(), h.grad, **TOL)


CONVS = [
    (nbconv.conv2d, (2, 5, 5, 3), (3, 3, 3, 4), 4, dict(stride=2, padding=1)),
    (nbconv.conv2d, (1, 5, 5, 4), (3, 3, 2, 4), 4, dict(groups=2, dilation=(2, 1), padding=((1, 0), (0, 1)))),
    (nbconv.conv2d, (1, 4, 4, 2), (3, 3, 2, 3), None, dict(padding=1, padding_mode="reflect")),
    (nbconv.conv1d, (2, 7, 3), (3, 3, 4), 4, dict(padding="same", dilation=2)),
    (nbconv.conv_transpose2d, (1, 3, 3, 4), (3, 3, 2, 4), 2, dict(stride=2, output_padding=1)),
    # output_padding >= stride: the input gradient is cropped and the weight gradient's x padded
    (nbconv.conv_transpose2d, (1, 3, 3, 2), (3, 3, 2, 2), 2, dict(dilation=2, output_padding=1)),
    (nbconv.conv_transpose1d, (2, 4, 3), (3, 2, 3), 2, dict(stride=2, padding=1)),
    (nbconv.conv3d, (1, 3, 4, 3, 2), (2, 2, 2, 2, 3), 3,
     dict(stride=(1, 2, 1), padding=((1, 0), (0, 1), (1, 1)), padding_mode="circular")),
    (nbconv.conv3d, (1, 3, 3, 4, 4), (2, 2, 2, 1, 4), None, dict(groups=4, dilation=(1, 1, 2), padding="same")),
    (nbconv.conv_transpose3d, (1, 2, 2, 3, 2), (2, 2, 2, 2, 2), 2, dict(stride=(2, 1, 2), output_padding=(1, 0, 1))),
]


@pytest.mark.parametrize("fn, x_shape, w_shape, bias, kwargs", CONVS,
                         ids=["conv2d-stride-pad", "conv2d-groups-dilation-asym", "conv2d-reflect-nobias",
                              "conv1d-same-dilation", "transpose2d-stride", "transpose2d-crop", "transpose1d",
                              "conv3d-stride-circular", "conv3d-depthwise-same-dilation", "transpose3d-outpad"])
def test_conv_forward_and_gradients_match_host(rng, fn, x_shape, w_shape, bias, kwargs):
    arrays = [rng.standard_normal(s).astype(np.float32) for s in (x_shape, w_shape) + ((bias,) if bias else ())]
    host, device = host_and_device(arrays)
    y_host, y_dev = fn(*host, **kwargs), fn(*device, **kwargs)
    assert _is_device_array(y_dev.data) and y_dev.requires_grad and not y_dev.is_leaf
    np.testing.assert_allclose(y_dev.numpy(), y_host.numpy(), **TOL)
    g = rng.standard_normal(y_host.shape).astype(np.float32)
    y_host.backward(g)
    y_dev.backward(cuda.to_device(g))
    assert_device_grads_match(host, device)


def test_fan_out_accumulates_on_device(rng):
    """A weight used by two convolutions (leaf), and a non-leaf used as both input and weight of one."""
    arrays = [rng.standard_normal(s) for s in ((1, 4, 5, 3), (3, 3, 3, 3), (3,), (2, 3, 3, 3))]
    host, device = host_and_device(arrays)
    ys, hs = [], []
    for x, w, b, w2 in (host, device):
        h = nbconv.conv2d(x, w, padding=1)
        h = nbconv.conv2d(h, w, b, padding=(0, 1))            # w used twice
        h = nbconv.conv2d(h, w2)                              # (1, 1, 3, 3): also a 1x1 weight for itself
        h.retain_grad()
        ys.append(nbconv.conv2d(h, h))                        # h used twice
        hs.append(h)
    g = rng.standard_normal(ys[0].shape)
    ys[0].backward(g)
    ys[1].backward(cuda.to_device(g))
    assert_device_grads_match(host + hs[:1], device + hs[1:])


def test_leaf_gradients_accumulate_across_backward_calls_until_zero_grad(rng):
    arrays = [rng.standard_normal(s) for s in ((1, 4, 4, 2), (3, 3, 2, 2), (2, 2, 2, 2))]
    host, device = host_and_device(arrays)
    for x, w1, w2 in (host, device):
        for y, seed in ((nbconv.conv2d(x, w1), 1), (nbconv.conv2d(x, w2, stride=2), 2)):
            g = np.random.default_rng(seed).standard_normal(y.shape)
            y.backward(g if isinstance(y.data, np.ndarray) else cuda.to_device(g))
    assert_device_grads_match(host, device)
    device[0].zero_grad()
    assert device[0].grad is None


def test_backward_without_gradient_seeds_one_element_result_on_device(rng):
    arrays = [rng.standard_normal(s).astype(np.float32) for s in ((1, 3, 3, 2), (3, 3, 2, 1), (1,))]
    host, device = host_and_device(arrays)
    y_host, y_dev = nbconv.conv2d(*host), nbconv.conv2d(*device)
    assert y_dev.shape == (1, 1, 1, 1)
    y_host.backward()
    y_dev.backward()
    assert_device_grads_match(host, device)
    assert y_dev.item() == pytest.approx(y_host.item(), rel=1e-5)


def test_backward_casts_a_strided_device_gradient(rng):
    """A float64 gradient viewed with steps, for float32 Tensors: cast on the device like the host does."""
    arrays = [rng.standard_normal(s).astype(np.float32) for s in ((1, 4, 4, 2), (2, 2, 2, 3))]
    host, device = host_and_device(arrays)
    y_host, y_dev = nbconv.conv2d(*host), nbconv.conv2d(*device)
    wide = rng.standard_normal((1, 3, 3, 6))
    y_host.backward(wide[..., ::2])
    y_dev.backward(cuda.to_device(wide)[:, :, :, ::2])
    assert_device_grads_match(host, device)
    assert np.dtype(device[0].grad.dtype) == np.float32


def test_tensor_methods_keep_device_data_on_device(rng):
    x = rng.standard_normal((1, 3, 3, 2)).astype(np.float32)
    w = rng.standard_normal((2, 2, 2, 2)).astype(np.float32)
    tx, tw = Tensor(cuda.to_device(x), requires_grad=True), Tensor(cuda.to_device(w))
    assert tx.shape == x.shape and tx.dtype == np.float32 and tx.size == x.size and len(tx) == 1
    assert "CUDA device array of shape (1, 3, 3, 2)" in repr(tx)
    host = tx.numpy()
    assert isinstance(host, np.ndarray)
    np.testing.assert_array_equal(host, x)
    host[...] = 0                                             # a copy: the device data is unchanged
    np.testing.assert_array_equal(tx.numpy(), x)
    with pytest.raises(TypeError, match=r"\.numpy\(\)"):
        np.asarray(tx)
    detached = tx.detach()
    assert detached.data is tx.data and not detached.requires_grad and detached.is_leaf
    with no_grad():
        y = nbconv.conv2d(tx, tw)
    assert _is_device_array(y.data) and not y.requires_grad and y.is_leaf
    np.testing.assert_allclose(y.numpy(), nbconv.conv2d(x, w), **TOL)


def test_custom_function_gets_device_zeros_for_an_unused_output(rng):
    seen = []

    class TwoConvs(Function):
        @staticmethod
        def forward(ctx, x, w):
            ctx.save_for_backward(x, w)
            return nbconv.conv.conv2d(x, w), nbconv.conv.conv2d(x, w, stride=2)

        @staticmethod
        def backward(ctx, g_full, g_strided):
            seen.append(g_strided)
            x, w = ctx.saved_tensors
            return nbconv.conv2d_backward(g_full, x, w, needs=("input", "weight"))[:2]

    arrays = [rng.standard_normal(s) for s in ((1, 4, 4, 2), (2, 2, 2, 2))]
    host, device = host_and_device(arrays)
    for x, w in (host, device):
        y, _ = TwoConvs.apply(x, w)
        g = np.ones(y.shape)
        y.backward(g if isinstance(y.data, np.ndarray) else cuda.to_device(g))
    assert_device_grads_match(host, device)
    assert _is_device_array(seen[1]) and tuple(seen[1].shape) == (1, 2, 2, 2)
    np.testing.assert_array_equal(seen[1].copy_to_host(), 0)


OTHER_OPS = [
    ("add", lambda t: t + t), ("subtract", lambda t: 1 - t), ("multiply", lambda t: t * 2),
    ("divide", lambda t: t / 2), ("negative", lambda t: -t), ("power", lambda t: t ** 2),
    ("exp", lambda t: t.exp()), ("log", lambda t: t.log()), ("relu", nbconv.relu),
    ("matmul", lambda t: t @ t), ("sum", lambda t: t.sum()), ("mean", lambda t: t.mean(axis=0)),
    ("max", lambda t: t.max()), ("reshape", lambda t: t.reshape(-1)), ("transpose", lambda t: t.transpose()),
    ("max_pool2d", lambda t: nbconv.max_pool2d(t, 2)), ("avg_pool2d", lambda t: nbconv.avg_pool2d(t, 2)),
    ("batch_norm", lambda t: nbconv.batch_norm(t, None, None)),
    ("linear", lambda t: nbconv.linear(t, np.ones((2, 3)))),
    ("log_softmax", nbconv.log_softmax),
    ("cross_entropy", lambda t: nbconv.cross_entropy(t, np.zeros(2, np.int64))),
]


@pytest.mark.parametrize("name, op", OTHER_OPS, ids=[name for name, _ in OTHER_OPS])
@pytest.mark.parametrize("requires_grad", [True, False])
def test_other_ops_raise_not_implemented_on_device(name, op, requires_grad):
    shape = (2, 2) if name == "cross_entropy" else (2, 2, 2, 2)
    t = Tensor(cuda.to_device(np.ones(shape)), requires_grad=requires_grad)
    with pytest.raises(NotImplementedError, match=rf"^{name} does not accept CUDA device arrays: .*convolution ops only"):
        op(t)


def test_other_ops_raise_on_plain_device_arrays_and_in_gradcheck():
    d = cuda.to_device(np.ones((2, 3)))
    with pytest.raises(NotImplementedError, match="^relu .*convolution ops only"):
        nbconv.relu(d)
    with pytest.raises(NotImplementedError, match="gradcheck runs on the host"):
        nbconv.gradcheck(nbconv.conv1d, (Tensor(cuda.to_device(np.ones((1, 3, 1))), requires_grad=True),
                                         np.ones((1, 1, 1))))


def test_mixing_host_and_device_raises_type_error(rng):
    x = rng.standard_normal((1, 3, 3, 2))
    w = rng.standard_normal((2, 2, 2, 2))
    with pytest.raises(TypeError, match="must all be on the host or all on a CUDA device"):
        nbconv.conv2d(Tensor(x, requires_grad=True), Tensor(cuda.to_device(w), requires_grad=True))
    with pytest.raises(TypeError, match="must all be on the host or all on a CUDA device"):
        nbconv.conv_transpose2d(Tensor(cuda.to_device(x)), Tensor(w, requires_grad=True))
    y_dev = nbconv.conv2d(Tensor(cuda.to_device(x), requires_grad=True), Tensor(cuda.to_device(w)))
    with pytest.raises(TypeError, match="gradient is on the host but the Tensor's data is a CUDA device array"):
        y_dev.backward(np.ones(y_dev.shape))
    y_host = nbconv.conv2d(Tensor(x, requires_grad=True), w)
    with pytest.raises(TypeError, match="gradient is a CUDA device array but the Tensor's data is on the host"):
        y_host.backward(cuda.to_device(np.ones(y_host.shape)))


@pytest.mark.skipif(bool(numba.config.ENABLE_CUDASIM), reason="needs a real GPU: the CUDA simulator cannot read "
                                                              "__cuda_array_interface__")
def test_tensor_views_a_torch_cuda_tensor_without_copy(rng):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("PyTorch sees no CUDA device")
    x, w = (rng.standard_normal(s).astype(np.float32) for s in ((1, 4, 4, 2), (3, 3, 2, 3)))
    tx = torch.from_numpy(x).cuda()
    t = Tensor(tx, requires_grad=True)
    assert type(t.data).__module__.startswith("numba.cuda") and t.dtype == np.float32
    tx.zero_()                                                # the Tensor shares the torch tensor's memory
    np.testing.assert_array_equal(t.numpy(), 0)
    tx.copy_(torch.from_numpy(x))
    host_x, host_w = Tensor(x, requires_grad=True), Tensor(w, requires_grad=True)
    dev_w = Tensor(cuda.to_device(w), requires_grad=True)
    y_host, y_dev = nbconv.conv2d(host_x, host_w, padding=1), nbconv.conv2d(t, dev_w, padding=1)
    g = rng.standard_normal(y_host.shape).astype(np.float32)
    y_host.backward(g)
    y_dev.backward(torch.from_numpy(g).cuda())                # a torch gradient is viewed too
    assert_device_grads_match([host_x, host_w], [t, dev_w])
