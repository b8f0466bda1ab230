"""The PyTorch adapter nbconv.torch: custom ops, gradients (also second order), torch.compile and
drop-in equivalence with torch.nn's convolutions. PyTorch's own convolutions are the oracle."""
import contextlib
import os
import subprocess
import sys

import numba
import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

import nbconv  # noqa: E402
import nbconv.torch as nt  # noqa: E402

# (input shape without batch, module kwargs) for 2-D convolutions; in_channels = shape[0].
CASES_2D = [
    ((4, 7, 6), dict(out_channels=6, kernel_size=3)),
    ((4, 9, 8), dict(out_channels=5, kernel_size=(3, 2), stride=(2, 1), padding=(1, 2))),
    ((3, 7, 8), dict(out_channels=4, kernel_size=3, padding="same", dilation=2)),
    ((3, 6, 6), dict(out_channels=4, kernel_size=2, padding="same", bias=False)),
    ((4, 6, 7), dict(out_channels=6, kernel_size=3, padding="valid", stride=2, dilation=(1, 2), groups=2)),
    ((4, 6, 6), dict(out_channels=8, kernel_size=3, padding=1, groups=4)),  # depthwise
    ((3, 6, 7), dict(out_channels=4, kernel_size=3, padding=(1, 2), stride=2, padding_mode="reflect")),
    ((3, 5, 6), dict(out_channels=4, kernel_size=(2, 3), padding="same", padding_mode="replicate")),
    ((2, 5, 6), dict(out_channels=4, kernel_size=3, padding=(2, 1), dilation=(1, 2), padding_mode="circular")),
]
CASES_1D = [
    ((3, 9), dict(out_channels=4, kernel_size=3)),
    ((4, 11), dict(out_channels=6, kernel_size=4, stride=3, padding=2, dilation=2, groups=2)),
    ((3, 8), dict(out_channels=2, kernel_size=3, padding="same", padding_mode="reflect", bias=False)),
    ((2, 8), dict(out_channels=3, kernel_size=2, padding=1, stride=2, padding_mode="circular")),
]
# (input shape without batch, module kwargs, output_size or None) for transposed convolutions.
CASES_T2D = [
    ((4, 4, 5), dict(out_channels=3, kernel_size=3, stride=2, padding=1, output_padding=1), None),
    ((4, 4, 3), dict(out_channels=6, kernel_size=(2, 3), stride=(1, 2), padding=(0, 1), groups=2), None),
    ((2, 3, 4), dict(out_channels=3, kernel_size=2, stride=1, dilation=3, output_padding=2), None),  # op >= stride
    ((3, 3, 3), dict(out_channels=2, kernel_size=3, stride=2, padding=1, bias=False), (6, 5)),
]
CASES_T1D = [
    ((3, 5), dict(out_channels=4, kernel_size=3, stride=2, padding=1, output_padding=1, dilation=2), None),
    ((4, 4), dict(out_channels=2, kernel_size=2, stride=3, groups=2), (12,)),
]

# 3-D (tiny: every case also runs gradcheck and gradgradcheck).
CASES_3D = [
    ((2, 4, 5, 4), dict(out_channels=3, kernel_size=2)),
    ((4, 5, 4, 6), dict(out_channels=4, kernel_size=(2, 3, 2), stride=(2, 1, 2), padding=(1, 0, 1),
                        dilation=(1, 1, 2), groups=2)),
    ((3, 4, 4, 4), dict(out_channels=6, kernel_size=3, padding=1, groups=3)),  # depthwise, multiplier 2
    ((2, 4, 4, 5), dict(out_channels=2, kernel_size=3, padding="same", padding_mode="reflect", bias=False)),
    ((2, 3, 4, 4), dict(out_channels=3, kernel_size=(1, 2, 3), padding=1, stride=2, padding_mode="replicate")),
    ((2, 3, 4, 3), dict(out_channels=4, kernel_size=2, padding=(1, 2, 1), dilation=(2, 1, 1), groups=2,
                        padding_mode="circular")),
]
CASES_T3D = [
    ((4, 3, 2, 3), dict(out_channels=2, kernel_size=3, stride=2, padding=1, output_padding=1), None),
    ((4, 2, 3, 2), dict(out_channels=6, kernel_size=(2, 1, 2), stride=(1, 2, 2), padding=(0, 0, 1),
                        dilation=(2, 1, 1), groups=2), None),
    ((2, 2, 2, 2), dict(out_channels=2, kernel_size=2, dilation=3, output_padding=2, bias=False), None),  # op >= stride
    ((3, 2, 2, 3), dict(out_channels=2, kernel_size=3, stride=2, padding=1), (4, 3, 6)),
]


def _ids(cases):
    return [";".join(f"{k}={v}" for k, v in c[1].items()) for c in cases]


@pytest.fixture
def serial_numba():
    """Run nbconv's kernels on one thread: the tests that call them hundreds of times on tiny arrays
    are otherwise dominated by parallel-region start-up (much worse on a loaded machine)."""
    saved = numba.get_num_threads()
    numba.set_num_threads(1)
    yield
    numba.set_num_threads(saved)


def _pair(module_cls, nt_cls, in_channels, kwargs, dtype, seed=0):
    """(torch.nn module, nbconv module) with identical parameters, the latter loaded from the former."""
    torch.manual_seed(seed)
    ref = module_cls(in_channels, dtype=dtype, **kwargs)
    ours = nt_cls(in_channels, dtype=dtype, **kwargs)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def _close(a, b, dtype):
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)


def _compare_modules(ref, ours, x, dtype, **call):
    """Outputs and gradients (input, weight, bias) of `ref` and `ours` on x agree."""
    x_ref = x.detach().clone().requires_grad_()
    x_ours = x.detach().clone().requires_grad_()
    y_ref, y_ours = ref(x_ref, **call), ours(x_ours, **call)
    assert y_ours.shape == y_ref.shape
    _close(y_ours, y_ref, dtype)
    g = torch.randn_like(y_ref)
    y_ref.backward(g)
    y_ours.backward(g)
    _close(x_ours.grad, x_ref.grad, dtype)
    for p_ref, p_ours in zip(ref.parameters(), ours.parameters()):
        _close(p_ours.grad, p_ref.grad, dtype)


# ------------------------------------------------------------------------------------------------
# Drop-in equivalence with torch.nn
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape,kwargs", CASES_2D, ids=_ids(CASES_2D))
def test_conv2d_matches_nn(shape, kwargs, dtype):
    ref, ours = _pair(nn.Conv2d, nt.Conv2d, shape[0], kwargs, dtype)
    _compare_modules(ref, ours, torch.randn(2, *shape, dtype=dtype), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape,kwargs", CASES_1D, ids=_ids(CASES_1D))
def test_conv1d_matches_nn(shape, kwargs, dtype):
    ref, ours = _pair(nn.Conv1d, nt.Conv1d, shape[0], kwargs, dtype)
    _compare_modules(ref, ours, torch.randn(3, *shape, dtype=dtype), dtype)


@pytest.mark.parametrize("shape,kwargs,output_size", CASES_T2D, ids=_ids(CASES_T2D))
def test_conv_transpose2d_matches_nn(shape, kwargs, output_size):
    ref, ours = _pair(nn.ConvTranspose2d, nt.ConvTranspose2d, shape[0], kwargs, torch.float64)
    _compare_modules(ref, ours, torch.randn(2, *shape, dtype=torch.float64), torch.float64, output_size=output_size)


@pytest.mark.parametrize("shape,kwargs,output_size", CASES_T1D, ids=_ids(CASES_T1D))
def test_conv_transpose1d_matches_nn(shape, kwargs, output_size):
    ref, ours = _pair(nn.ConvTranspose1d, nt.ConvTranspose1d, shape[0], kwargs, torch.float32)
    _compare_modules(ref, ours, torch.randn(2, *shape), torch.float32, output_size=output_size)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "sliced", "unbatched"])
def test_functional_conv2d_layouts(layout):
    torch.manual_seed(1)
    base = torch.randn(2, 6, 9, 10)
    x = {"contiguous": base,
         "channels_last": base.contiguous(memory_format=torch.channels_last),
         "sliced": base[:, ::2, 1:, ::2],
         "unbatched": base[0]}[layout]
    w, b = torch.randn(4, x.shape[-3], 3, 2), torch.randn(4)
    y = nt.conv2d(x, w, b, stride=(2, 1), padding=(1, 0), dilation=(1, 2))
    _close(y, F.conv2d(x, w, b, stride=(2, 1), padding=(1, 0), dilation=(1, 2)), torch.float32)


def test_functional_conv1d_and_transposes():
    torch.manual_seed(2)
    x, w, b = torch.randn(2, 4, 10), torch.randn(6, 2, 3), torch.randn(6)
    _close(nt.conv1d(x, w, b, stride=2, padding="valid", groups=2),
           F.conv1d(x, w, b, stride=2, padding="valid", groups=2), torch.float32)
    _close(nt.conv1d(x, w, None, padding="same", dilation=3, groups=2),
           F.conv1d(x, w, None, padding="same", dilation=3, groups=2), torch.float32)
    wt = torch.randn(4, 3, 3)
    _close(nt.conv_transpose1d(x, wt, None, 2, 1, 1, 1, 2), F.conv_transpose1d(x, wt, None, 2, 1, 1, 1, 2),
           torch.float32)
    x2, wt2 = torch.randn(1, 4, 3, 5), torch.randn(4, 2, 2, 3)
    b2 = torch.randn(4)
    _close(nt.conv_transpose2d(x2, wt2, b2, stride=2, groups=2), F.conv_transpose2d(x2, wt2, b2, stride=2, groups=2),
           torch.float32)


def test_strided_same_follows_tensorflow():
    """Strided "same" (refused by PyTorch): output ceil(n / stride), extra padding element after."""
    x, w = torch.randn(1, 2, 7, 8, dtype=torch.float64), torch.randn(3, 2, 3, 4, dtype=torch.float64)
    y = nt.conv2d(x, w, padding="same", stride=2)
    assert y.shape == (1, 3, 4, 4)
    # rows: total (4-1)*2+3-7 = 2 -> (1, 1); cols: total (4-1)*2+4-8 = 2 -> (1, 1)
    _close(y, F.conv2d(F.pad(x, (1, 1, 1, 1)), w, stride=2), torch.float64)
    y = nt.conv2d(x[..., :7], w, padding="same", stride=2)  # cols: total (4-1)*2+4-7 = 3 -> (1, 2)
    _close(y, F.conv2d(F.pad(x[..., :7], (1, 2, 1, 1)), w, stride=2), torch.float64)


def test_errors_name_the_problem():
    x = torch.randn(1, 3, 5, 5)
    with pytest.raises(ValueError, match="channels"):
        nt.conv2d(x, torch.randn(2, 4, 3, 3))
    with pytest.raises(ValueError, match="padding"):
        nt.conv2d(x, torch.randn(2, 3, 3, 3), padding="full")
    with pytest.raises(TypeError, match=r"input has dtype torch.int64; nbconv supports float16, bfloat16"):
        nt.conv2d(x.long(), torch.randn(2, 3, 3, 3).long())
    with pytest.raises(TypeError, match=r"weight has dtype torch.float32 but input has dtype torch.float16"):
        nt.conv2d(x.half(), torch.randn(2, 3, 3, 3))
    with pytest.raises(ValueError, match="3-D"):
        nt.conv1d(x, torch.randn(2, 3, 3))
    with pytest.raises(ValueError, match="zeros"):
        nt.ConvTranspose2d(3, 2, 3, padding_mode="reflect")(x)


# ------------------------------------------------------------------------------------------------
# No needless copies
# ------------------------------------------------------------------------------------------------
def test_channels_last_reaches_kernels_as_view(monkeypatch):
    """A channels_last input and an OIHW weight reach nbconv as views of their memory, and the
    result is a channels_last tensor on nbconv's own array."""
    seen = {}
    real = nt.core.forward

    def spy(x, w, bias, params, out=None):
        seen["x"], seen["w"] = x, w
        seen["y"] = real(x, w, bias, params, out)
        return seen["y"]

    monkeypatch.setattr(nt.core, "forward", spy)
    x = torch.randn(2, 5, 6, 7).contiguous(memory_format=torch.channels_last)
    w = torch.randn(3, 5, 2, 2)
    y = nt.conv2d(x, w)
    assert seen["x"].flags.c_contiguous and seen["x"].shape == (2, 6, 7, 5)
    assert np.shares_memory(seen["x"], x.permute(0, 2, 3, 1).numpy())
    assert seen["w"].shape == (2, 2, 5, 3) and np.shares_memory(seen["w"], w.numpy())
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert y.data_ptr() == seen["y"].ctypes.data


# ------------------------------------------------------------------------------------------------
# Memory format: the result follows the input's, as torch.nn's convolutions do
# ------------------------------------------------------------------------------------------------
# nd -> (ours, torch's, weight shape, kwargs) for a convolution and a transposed one
LAYOUT_OPS = {
    (1, False): (nt.conv1d, F.conv1d, (6, 2, 3), dict(stride=2, padding=1, groups=2)),
    (2, False): (nt.conv2d, F.conv2d, (6, 2, 3, 2), dict(stride=(2, 1), padding=(1, 0), groups=2)),
    (3, False): (nt.conv3d, F.conv3d, (6, 4, 2, 3, 2), dict(stride=(1, 2, 1), padding=1)),
    (1, True): (nt.conv_transpose1d, F.conv_transpose1d, (4, 3, 3), dict(stride=2, padding=1, output_padding=1)),
    (2, True): (nt.conv_transpose2d, F.conv_transpose2d, (4, 2, 2, 3), dict(stride=(2, 1), groups=2)),
    (3, True): (nt.conv_transpose3d, F.conv_transpose3d, (4, 3, 2, 2, 3), dict(stride=2, padding=(1, 0, 1))),
}
SPATIAL_SHAPES = {1: (9,), 2: (7, 6), 3: (5, 4, 6)}


def _laid_out(base, layout):
    """base (N, C, *spatial) in `layout`: contiguous, channels-last (channels_last / channels_last_3d, and
    the same strides in 1-D), or a slice of a twice-as-large tensor in either layout."""
    def channels_last(t):
        return t.movedim(1, -1).contiguous().movedim(-1, 1)
    if layout == "contiguous":
        return base.contiguous()
    if layout == "channels_last":
        return channels_last(base)
    big = torch.repeat_interleave(base, 2, dim=1)  # channels 2c, 2c + 1 hold base's channel c
    big = torch.cat([big, big[..., :1]], dim=-1)
    big = channels_last(big) if layout == "sliced_channels_last" else big.contiguous()
    return big[:, ::2, ..., :-1]


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "sliced_contiguous", "sliced_channels_last"])
@pytest.mark.parametrize("nd,transposed", list(LAYOUT_OPS), ids=[f"{nd}d{'-transposed' if t else ''}"
                                                                    for nd, t in LAYOUT_OPS])
def test_result_memory_format_follows_input(nd, transposed, layout, serial_numba):
    """channels-last input -> channels-last result (nbconv's own array, see the next test); any other input
    -> contiguous result. In 2-D and 3-D exactly torch.nn.functional's strides (contiguous weights);
    torch has no channels-last format for 3-D tensors, so a channels-last-strided 1-D input is the one case
    where nbconv (channels-last result) and torch (contiguous) differ."""
    ours, ref, w_shape, kwargs = LAYOUT_OPS[nd, transposed]
    torch.manual_seed(19)
    c_in = w_shape[0] if transposed else w_shape[1] * kwargs.get("groups", 1)
    base = torch.randn(2, c_in, *SPATIAL_SHAPES[nd], dtype=torch.float64)
    x = _laid_out(base, layout)
    assert torch.equal(x, base)
    w = torch.randn(w_shape, dtype=torch.float64)
    y, want = ours(x, w, **kwargs), ref(x, w, **kwargs)
    _close(y, want, torch.float64)
    if layout.endswith("channels_last"):
        assert y.movedim(1, -1).is_contiguous() and not y.is_contiguous()
    else:
        assert y.is_contiguous()
    if nd > 1:  # (torch's float64 3-D path returns contiguous results whatever the input: compare in float32)
        assert y.stride() == ref(x.float(), w.float(), **kwargs).stride()
    # gradients: the input's has torch's layout (its layout contract), the weight's is contiguous
    grads = []
    for conv in (ours, ref):
        x, w = x.detach().requires_grad_(), w.detach().requires_grad_()
        conv(x, w, **kwargs).backward(torch.ones_like(y))
        grads.append((x.grad, w.grad))
    _close(grads[0], grads[1], torch.float64)
    assert grads[0][0].stride() == grads[1][0].stride() and grads[0][1].is_contiguous()


def test_backward_works_channels_last():
    """The backward converts an NCHW incoming gradient to channels-last once and hands the input gradient back
    channels-last (no copy to NCHW); a leaf's .grad still has the leaf's layout, and the values are torch's."""
    torch.manual_seed(26)
    x = torch.randn(2, 3, 7, 6, dtype=torch.float64, requires_grad=True)
    w1, w2 = torch.randn(4, 3, 3, 3, dtype=torch.float64), torch.randn(5, 4, 2, 2, dtype=torch.float64)
    grads = {}
    for name, conv in (("ours", nt.conv2d), ("ref", F.conv2d)):
        y1 = conv(x, w1, padding=1)
        y1.register_hook(lambda g, name=name: grads.setdefault(name, g))
        x.grad = None
        conv(y1, w2).sin().sum().backward()
        grads[name, "x"] = x.grad
    assert grads["ours"].movedim(1, -1).is_contiguous() and grads["ours", "x"].is_contiguous()
    _close(grads["ours"], grads["ref"], torch.float64)
    _close(grads["ours", "x"], grads["ref", "x"], torch.float64)


def test_nchw_model_flattens_with_view():
    """conv -> relu -> pool -> .view(N, -1), the common classifier head, works on NCHW inputs."""
    torch.manual_seed(20)
    net = nn.Sequential(nt.Conv2d(3, 4, 3), nn.ReLU(), nn.MaxPool2d(2))
    y = net(torch.randn(5, 3, 10, 10))
    assert y.is_contiguous() and y.view(5, -1).shape == (5, 4 * 4 * 4)


# ------------------------------------------------------------------------------------------------
# float16 / bfloat16 tensors and torch.autocast
# ------------------------------------------------------------------------------------------------
# dtype -> eps (2**-mantissa bits): one rounding of the same float32 sum, done twice in two orders, can
# land one unit in the last place apart, i.e. at most eps relative.
HALF_EPS = {torch.float16: 2.0 ** -10, torch.bfloat16: 2.0 ** -7}


@pytest.mark.parametrize("dtype", list(HALF_EPS), ids=["float16", "bfloat16"])
@pytest.mark.parametrize("nd,transposed", list(LAYOUT_OPS), ids=[f"{nd}d{'-transposed' if t else ''}"
                                                                    for nd, t in LAYOUT_OPS])
def test_half_precision(nd, transposed, dtype, serial_numba):
    """float16/bfloat16 operands: the result, and the gradients, are the float32 computation on the same
    (exactly representable) values rounded once to the input dtype: equal to
    `F.conv(x.float(), w.float(), b.float()).to(dtype)` within rtol eps (2**-10 float16, 2**-7 bfloat16),
    atol 1e-4 (differently ordered float32 sums near zero)."""
    ours, ref, w_shape, kwargs = LAYOUT_OPS[nd, transposed]
    torch.manual_seed(21)
    c_in = w_shape[0] if transposed else w_shape[1] * kwargs.get("groups", 1)
    c_out = w_shape[1] * kwargs.get("groups", 1) if transposed else w_shape[0]
    x = torch.randn(2, c_in, *SPATIAL_SHAPES[nd]).to(dtype).requires_grad_()
    w, b = torch.randn(w_shape).to(dtype).requires_grad_(), torch.randn(c_out).to(dtype).requires_grad_()
    x32, w32, b32 = (t.detach().float().requires_grad_() for t in (x, w, b))
    y, want = ours(x, w, b, **kwargs), ref(x32, w32, b32, **kwargs)
    assert y.dtype == dtype and y.stride() == want.stride()
    g = torch.randn(want.shape).to(dtype)
    y.backward(g)
    want.backward(g.float())
    tol = dict(rtol=HALF_EPS[dtype], atol=1e-4)
    torch.testing.assert_close(y.float(), want.detach().to(dtype).float(), **tol)
    for got, expected in ((x.grad, x32.grad), (w.grad, w32.grad), (b.grad, b32.grad)):
        assert got.dtype == dtype
        torch.testing.assert_close(got.float(), expected.to(dtype).float(), **tol)


def test_half_precision_channels_last_and_modules(serial_numba):
    """A channels_last bfloat16 input keeps its format; float16 modules (a padding mode) compute like
    float32 ones on the same values."""
    torch.manual_seed(22)
    x = torch.randn(2, 4, 6, 7).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    w = torch.randn(3, 4, 3, 3).to(torch.bfloat16)
    y = nt.conv2d(x, w, padding=1)
    assert y.dtype == torch.bfloat16 and y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y.float(), F.conv2d(x.float(), w.float(), padding=1).bfloat16().float(),
                               rtol=HALF_EPS[torch.bfloat16], atol=1e-4)
    ours = nt.Conv3d(2, 3, 2, padding=1, padding_mode="circular", dtype=torch.float16)
    ref = nn.Conv3d(2, 3, 2, padding=1, padding_mode="circular")
    ref.load_state_dict({k: v.float() for k, v in ours.state_dict().items()})
    x = torch.randn(1, 2, 3, 4, 3).half()
    torch.testing.assert_close(ours(x).float(), ref(x.float()).half().float(), rtol=HALF_EPS[torch.float16],
                               atol=1e-4)


def _mixed_net(conv, conv_t):
    return nn.Sequential(conv(3, 6, 3, padding=1), nn.ReLU(), conv_t(6, 4, 2, stride=2), nn.Flatten(),
                         nn.Linear(4 * 12 * 12, 5))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bfloat16", "float16"])
def test_autocast_matches_nn(dtype, serial_numba):
    """torch.autocast("cpu", dtype) around a model mixing nbconv.torch modules and nn.Linear: every layer's
    output dtype is the nn.Conv2d model's, the outputs agree within 8 eps (the layers' roundings to the
    autocast dtype compound), and the float32 parameters get float32 gradients that agree likewise."""
    torch.manual_seed(23)
    ref, ours = _mixed_net(nn.Conv2d, nn.ConvTranspose2d), _mixed_net(nt.Conv2d, nt.ConvTranspose2d)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(2, 3, 6, 6)
    dtypes = {"ref": [], "ours": []}
    for name, net in (("ref", ref), ("ours", ours)):
        for layer in net:
            layer.register_forward_hook(lambda m, i, o, name=name: dtypes[name].append(o.dtype))
    with torch.autocast("cpu", dtype=dtype):
        y_ref, y_ours = ref(x), ours(x)
    assert dtypes["ours"] == dtypes["ref"] and y_ours.dtype == y_ref.dtype == dtype
    tol = dict(rtol=8 * HALF_EPS[dtype], atol=8 * HALF_EPS[dtype] * y_ref.abs().max().item())
    torch.testing.assert_close(y_ours.float(), y_ref.float(), **tol)
    y_ref.float().square().sum().backward()
    y_ours.float().square().sum().backward()
    for (name, p_ours), p_ref in zip(ours.named_parameters(), ref.parameters()):
        assert p_ours.grad.dtype == p_ref.grad.dtype == torch.float32, name
        torch.testing.assert_close(p_ours.grad, p_ref.grad, rtol=8 * HALF_EPS[dtype],
                                   atol=8 * HALF_EPS[dtype] * p_ref.grad.abs().max().item(), msg=name)
    with torch.autocast("cpu", dtype=dtype):  # float64 is not autocast, as in torch
        x64, w64 = torch.randn(1, 2, 4, 4, dtype=torch.float64), torch.randn(3, 2, 2, 2, dtype=torch.float64)
        assert nt.conv2d(x64, w64).dtype == F.conv2d(x64, w64).dtype == torch.float64


# ------------------------------------------------------------------------------------------------
# Gradients: first and second order, float64
# ------------------------------------------------------------------------------------------------
def _gradchecks(module, x, **call):
    """gradcheck and gradgradcheck (fast mode) of module(x) w.r.t. x and the module's parameters."""
    names = [name for name, _ in module.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in module.parameters()]

    def f(x, *params):
        return torch.func.functional_call(module, dict(zip(names, params)), (x,), call)

    assert torch.autograd.gradcheck(f, (x, *params), fast_mode=True)
    assert torch.autograd.gradgradcheck(f, (x, *params), fast_mode=True)


@pytest.mark.parametrize("nd,shape,kwargs", [(2, *c) for c in CASES_2D] + [(1, *c) for c in CASES_1D],
                         ids=_ids(CASES_2D) + _ids(CASES_1D))
def test_gradcheck_and_gradgradcheck(nd, shape, kwargs):
    torch.manual_seed(3)
    module = (nt.Conv2d if nd == 2 else nt.Conv1d)(shape[0], dtype=torch.float64, **kwargs)
    _gradchecks(module, torch.randn(2, *shape, dtype=torch.float64, requires_grad=True))


@pytest.mark.parametrize("nd,shape,kwargs,output_size", [(2, *c) for c in CASES_T2D] + [(1, *c) for c in CASES_T1D],
                         ids=_ids(CASES_T2D) + _ids(CASES_T1D))
def test_transpose_gradcheck_and_gradgradcheck(nd, shape, kwargs, output_size):
    torch.manual_seed(4)
    module = (nt.ConvTranspose2d if nd == 2 else nt.ConvTranspose1d)(shape[0], dtype=torch.float64, **kwargs)
    _gradchecks(module, torch.randn(2, *shape, dtype=torch.float64, requires_grad=True), output_size=output_size)


def test_gradcheck_full_jacobian(serial_numba):
    """The slow, exact mode (every Jacobian entry) on a tiny case with every parameter kind."""
    torch.manual_seed(5)
    x = torch.randn(1, 2, 5, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 1, 2, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, requires_grad=True)

    def f(x, w, b):
        return nt._convnd(2, x, w, b, (2, 1), ((1, 0), (2, 1)), (1, 2), 2, "reflect")

    assert torch.autograd.gradcheck(f, (x, w, b))
    assert torch.autograd.gradgradcheck(f, (x, w, b))


# ------------------------------------------------------------------------------------------------
# The custom ops themselves
# ------------------------------------------------------------------------------------------------
OPCHECK_PARAMS = [
    ([1, 1], [0, 0, 0, 0], [1, 1], 1, "zeros"),
    ([2, 1], [1, 0, 1, 2], [1, 2], 2, "zeros"),
    ([2, 2], [1, 1, 0, 2], [1, 1], 1, "reflect"),
    ([1, 2], [2, 1, 1, 1], [2, 1], 2, "circular"),
    ([1, 1], [1, 1, 1, 1], [1, 1], 1, "replicate"),
]


@pytest.mark.parametrize("stride,padding,dilation,groups,mode", OPCHECK_PARAMS)
def test_opcheck(stride, padding, dilation, groups, mode, serial_numba):
    """Schema, fake kernels (shapes and strides: channels_last inputs for two modes), autograd registration."""
    torch.manual_seed(6)
    ops = torch.ops.nbconv
    x = torch.randn(2, 4, 7, 6, dtype=torch.float64)
    if mode in ("reflect", "circular"):
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    w = torch.randn(6, 4 // groups, 3, 2, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, dtype=torch.float64, requires_grad=True)
    torch.library.opcheck(ops.conv.default, (x, w, b, stride, padding, dilation, groups, mode))
    y = ops.conv(x, w, b, stride, padding, dilation, groups, mode)
    g = torch.randn_like(y).requires_grad_()
    torch.library.opcheck(ops.conv_weight_grad.default, (g, x, list(w.shape), stride, padding, dilation, groups, mode))
    output_padding = nt._forward_output_padding(x.shape[2:], w.shape[2:], stride, padding, dilation)
    bias = torch.randn(4, dtype=torch.float64, requires_grad=True)
    torch.library.opcheck(ops.conv_transpose.default,
                          (g, w, bias, stride, padding, output_padding, dilation, groups, mode))


# ------------------------------------------------------------------------------------------------
# torch.compile
# ------------------------------------------------------------------------------------------------
def _small_net(dtype=torch.float32):
    return nn.Sequential(nt.Conv2d(3, 8, 3, padding="same", padding_mode="reflect", dtype=dtype), nn.ReLU(),
                         nt.Conv2d(8, 4, 3, stride=2, groups=2, dtype=dtype), nn.Flatten(),
                         nn.Linear(4 * 4 * 4, 2, dtype=dtype))


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_torch_compile_fullgraph(backend):
    """Forward and backward compiled in one graph each. Inductor's on-disk caches do not key on a custom op's
    implementation, so code compiled against an older nbconv (other result strides) could be replayed:
    this test compiles afresh."""
    torch.manual_seed(7)
    net = _small_net()
    x = torch.randn(2, 3, 9, 10, requires_grad=True)
    torch._dynamo.reset()
    with torch._inductor.config.patch(fx_graph_cache=False), torch._functorch.config.patch(enable_autograd_cache=False):
        compiled = torch.compile(net, backend=backend, fullgraph=True)
        y = compiled(x)
        y.square().sum().backward()
    grads = [x.grad] + [p.grad for p in net.parameters()]
    x_eager = x.detach().clone().requires_grad_()
    net_eager = _small_net()
    net_eager.load_state_dict(net.state_dict())
    y_eager = net_eager(x_eager)
    y_eager.square().sum().backward()
    _close(y, y_eager, torch.float32)
    for got, want in zip(grads, [x_eager.grad] + [p.grad for p in net_eager.parameters()]):
        _close(got, want, torch.float32)


def test_torch_compile_dynamic_shapes():
    """Symbolic shapes flow through the fake kernels and the backward's output_padding."""
    torch.manual_seed(8)
    net = nn.Sequential(nt.Conv2d(3, 6, 3, padding="same", padding_mode="circular"), nn.ReLU(),
                        nt.Conv2d(6, 4, 3, stride=2, groups=2), nt.ConvTranspose2d(4, 3, 3, stride=2, output_padding=1))
    torch._dynamo.reset()
    compiled = torch.compile(net, backend="aot_eager", fullgraph=True, dynamic=True)
    for shape in [(2, 3, 10, 9), (3, 3, 12, 11), (1, 3, 9, 13)]:
        x = torch.randn(*shape, requires_grad=True)
        compiled(x).square().sum().backward()
        got = x.grad
        x.grad = None
        want = net(x)
        want.square().sum().backward()
        _close(compiled(x), want, torch.float32)
        _close(got, x.grad, torch.float32)


# ------------------------------------------------------------------------------------------------
# Modules: parameters, initialisation, state_dict, training
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("classes,args", [
    ((nn.Conv2d, nt.Conv2d), (6, 8, (3, 2))),
    ((nn.Conv1d, nt.Conv1d), (4, 6, 5)),
    ((nn.ConvTranspose2d, nt.ConvTranspose2d), (6, 4, 3)),
    ((nn.ConvTranspose1d, nt.ConvTranspose1d), (4, 6, 2)),
    ((nn.Conv3d, nt.Conv3d), (4, 6, (3, 2, 1))),
    ((nn.ConvTranspose3d, nt.ConvTranspose3d), (6, 4, (2, 1, 3))),
], ids=["2d", "1d", "transpose2d", "transpose1d", "3d", "transpose3d"])
def test_parameters_init_and_state_dict(classes, args):
    ref_cls, our_cls = classes
    torch.manual_seed(9)
    ref = ref_cls(*args, groups=2)
    torch.manual_seed(9)
    ours = our_cls(*args, groups=2)
    assert isinstance(ours, ref_cls)
    assert [(n, p.shape) for n, p in ours.named_parameters()] == [(n, p.shape) for n, p in ref.named_parameters()]
    for p_ours, p_ref in zip(ours.parameters(), ref.parameters()):  # same initialisation from the same seed
        torch.testing.assert_close(p_ours, p_ref, rtol=0, atol=0)
    other = ref_cls(*args, groups=2)
    ours.load_state_dict(other.state_dict())          # an nn state_dict loads strictly ...
    ref.load_state_dict(ours.state_dict())            # ... and ours loads into nn
    for p_ours, p_ref, p_other in zip(ours.parameters(), ref.parameters(), other.parameters()):
        torch.testing.assert_close(p_ours, p_other, rtol=0, atol=0)
        torch.testing.assert_close(p_ref, p_other, rtol=0, atol=0)
    no_bias = our_cls(*args, bias=False, dtype=torch.float64)
    assert no_bias.bias is None and no_bias.weight.dtype == torch.float64


def _lenet_like(conv_cls):
    return nn.Sequential(conv_cls(1, 6, 3), nn.ReLU(), conv_cls(6, 8, 3, padding=1, padding_mode="replicate"),
                         nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8 * 5 * 5, 10))


def test_training_matches_nn():
    """A few SGD steps train identically with nn.Conv2d and with nbconv.torch.Conv2d."""
    torch.manual_seed(10)
    ref = _lenet_like(nn.Conv2d).double()
    ours = _lenet_like(nt.Conv2d).double()
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(16, 1, 12, 12, dtype=torch.float64)
    labels = torch.randint(0, 10, (16,))
    losses = {}
    for name, net in (("ref", ref), ("ours", ours)):
        opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
        losses[name] = []
        for _ in range(6):  # fit one batch: the loss must go down
            opt.zero_grad()
            loss = F.cross_entropy(net(x), labels)
            loss.backward()
            opt.step()
            losses[name].append(loss.item())
    assert losses["ref"][-1] < losses["ref"][0]
    np.testing.assert_allclose(losses["ours"], losses["ref"], rtol=1e-9)
    for (name, p_ours), p_ref in zip(ours.state_dict().items(), ref.state_dict().values()):
        torch.testing.assert_close(p_ours, p_ref, rtol=1e-8, atol=1e-10, msg=name)


# ------------------------------------------------------------------------------------------------
# 3-D: Conv3d, ConvTranspose3d, conv3d, conv_transpose3d
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape,kwargs", CASES_3D, ids=_ids(CASES_3D))
def test_conv3d_matches_nn(shape, kwargs, dtype, serial_numba):
    ref, ours = _pair(nn.Conv3d, nt.Conv3d, shape[0], kwargs, dtype)
    _compare_modules(ref, ours, torch.randn(2, *shape, dtype=dtype), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape,kwargs,output_size", CASES_T3D, ids=_ids(CASES_T3D))
def test_conv_transpose3d_matches_nn(shape, kwargs, output_size, dtype, serial_numba):
    ref, ours = _pair(nn.ConvTranspose3d, nt.ConvTranspose3d, shape[0], kwargs, dtype)
    _compare_modules(ref, ours, torch.randn(2, *shape, dtype=dtype), dtype, output_size=output_size)


def test_modules_3d_unbatched(serial_numba):
    torch.manual_seed(11)
    ref, ours = _pair(nn.Conv3d, nt.Conv3d, 2, dict(out_channels=3, kernel_size=2, padding=1,
                                                    padding_mode="reflect"), torch.float64)
    _compare_modules(ref, ours, torch.randn(2, 3, 4, 3, dtype=torch.float64), torch.float64)
    ref, ours = _pair(nn.ConvTranspose3d, nt.ConvTranspose3d, 2, dict(out_channels=3, kernel_size=2, stride=2),
                      torch.float64)
    _compare_modules(ref, ours, torch.randn(2, 3, 2, 3, dtype=torch.float64), torch.float64, output_size=(7, 4, 6))


@pytest.mark.parametrize("layout", ["contiguous", "channels_last_3d", "sliced", "unbatched"])
def test_functional_conv3d_layouts(layout, serial_numba):
    torch.manual_seed(12)
    base = torch.randn(2, 6, 5, 7, 8, dtype=torch.float64)
    x = {"contiguous": base,
         "channels_last_3d": base.contiguous(memory_format=torch.channels_last_3d),
         "sliced": base[:, ::2, 1:, :, ::2],
         "unbatched": base[0]}[layout]
    w, b = torch.randn(4, x.shape[-4], 2, 3, 2, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    kwargs = dict(stride=(1, 2, 1), padding=(1, 0, 1), dilation=(2, 1, 1))
    y = nt.conv3d(x, w, b, **kwargs)
    assert y.shape == F.conv3d(x, w, b, **kwargs).shape
    _close(y, F.conv3d(x, w, b, **kwargs), torch.float64)
    if layout == "contiguous":  # float32, the other padding forms, groups
        x32, w32 = x.float(), torch.randn(6, 3, 3, 2, 3)
        for kw in (dict(padding="same", groups=2), dict(padding="valid", stride=2, groups=2)):
            _close(nt.conv3d(x32, w32, None, **kw), F.conv3d(x32, w32, None, **kw), torch.float32)


def test_functional_conv_transpose3d(serial_numba):
    torch.manual_seed(13)
    for dtype in (torch.float32, torch.float64):
        x, wt, b = (torch.randn(2, 4, 3, 2, 3, dtype=dtype), torch.randn(4, 3, 2, 3, 2, dtype=dtype),
                    torch.randn(6, dtype=dtype))
        # bias, stride, padding, output_padding, groups, dilation (positional, F's order)
        args = (b, (2, 1, 2), (0, 1, 1), (1, 0, 1), 2, (1, 1, 2))
        _close(nt.conv_transpose3d(x, wt, *args), F.conv_transpose3d(x, wt, *args), dtype)
        _close(nt.conv_transpose3d(x[0], wt, *args), F.conv_transpose3d(x[0], wt, *args), dtype)  # unbatched


def test_strided_same_3d_follows_tensorflow(serial_numba):
    x, w = torch.randn(1, 2, 5, 6, 7, dtype=torch.float64), torch.randn(3, 2, 3, 2, 4, dtype=torch.float64)
    y = nt.conv3d(x, w, padding="same", stride=2)
    assert y.shape == (1, 3, 3, 3, 4)
    # totals: (3-1)*2+3-5 = 2 -> (1, 1); (3-1)*2+2-6 = 0; (4-1)*2+4-7 = 3 -> (1, 2)
    _close(y, F.conv3d(F.pad(x, (1, 2, 0, 0, 1, 1)), w, stride=2), torch.float64)


@pytest.mark.parametrize("shape,kwargs", CASES_3D, ids=_ids(CASES_3D))
def test_gradcheck_and_gradgradcheck_3d(shape, kwargs, serial_numba):
    torch.manual_seed(14)
    module = nt.Conv3d(shape[0], dtype=torch.float64, **kwargs)
    _gradchecks(module, torch.randn(1, *shape, dtype=torch.float64, requires_grad=True))


@pytest.mark.parametrize("shape,kwargs,output_size", CASES_T3D, ids=_ids(CASES_T3D))
def test_transpose_gradcheck_and_gradgradcheck_3d(shape, kwargs, output_size, serial_numba):
    torch.manual_seed(15)
    module = nt.ConvTranspose3d(shape[0], dtype=torch.float64, **kwargs)
    _gradchecks(module, torch.randn(1, *shape, dtype=torch.float64, requires_grad=True), output_size=output_size)


def test_gradcheck_full_jacobian_3d(serial_numba):
    """Every Jacobian entry, first and second order, on a tiny 3-D case with every parameter kind."""
    torch.manual_seed(16)
    x = torch.randn(1, 2, 3, 4, 3, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 1, 2, 2, 2, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, requires_grad=True)

    def f(x, w, b):
        return nt._convnd(3, x, w, b, (1, 2, 1), ((1, 0), (1, 1), (0, 2)), (1, 1, 2), 2, "reflect")

    assert torch.autograd.gradcheck(f, (x, w, b))
    assert torch.autograd.gradgradcheck(f, (x, w, b))


OPCHECK_PARAMS_3D = [
    ([2, 1, 1], [1, 0, 0, 0, 1, 2], [1, 1, 2], 2, "zeros"),
    ([1, 2, 1], [1, 1, 0, 1, 1, 0], [1, 1, 1], 1, "reflect"),
    ([1, 1, 2], [1, 2, 1, 0, 0, 1], [2, 1, 1], 2, "circular"),  # replicate: same op path as these two
]


@pytest.mark.parametrize("stride,padding,dilation,groups,mode", OPCHECK_PARAMS_3D)
def test_opcheck_3d(stride, padding, dilation, groups, mode, serial_numba):
    torch.manual_seed(17)
    ops = torch.ops.nbconv
    x = torch.randn(2, 4, 4, 5, 4, dtype=torch.float64)
    if mode == "reflect":
        x = x.contiguous(memory_format=torch.channels_last_3d)
    x.requires_grad_()
    w = torch.randn(6, 4 // groups, 2, 3, 2, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, dtype=torch.float64, requires_grad=True)
    torch.library.opcheck(ops.conv.default, (x, w, b, stride, padding, dilation, groups, mode))
    y = ops.conv(x, w, b, stride, padding, dilation, groups, mode)
    g = torch.randn_like(y).requires_grad_()
    torch.library.opcheck(ops.conv_weight_grad.default, (g, x, list(w.shape), stride, padding, dilation, groups, mode))
    output_padding = nt._forward_output_padding(x.shape[2:], w.shape[2:], stride, padding, dilation)
    bias = torch.randn(4, dtype=torch.float64, requires_grad=True)
    torch.library.opcheck(ops.conv_transpose.default,
                          (g, w, bias, stride, padding, output_padding, dilation, groups, mode))


def test_torch_compile_fullgraph_3d():
    """Conv3d (a padding mode, groups, stride) and ConvTranspose3d in one compiled graph, forward and backward."""
    def net_3d():
        return nn.Sequential(nt.Conv3d(2, 4, 3, padding="same", padding_mode="replicate"), nn.ReLU(),
                             nt.Conv3d(4, 4, 2, stride=2, groups=2),
                             nt.ConvTranspose3d(4, 3, 3, stride=2, padding=1, output_padding=1))

    torch.manual_seed(18)
    net = net_3d()
    x = torch.randn(2, 2, 4, 6, 5, requires_grad=True)
    torch._dynamo.reset()
    compiled = torch.compile(net, backend="aot_eager", fullgraph=True)
    y = compiled(x)
    assert y.shape == (2, 3, 4, 6, 4)
    y.square().sum().backward()
    grads = [x.grad] + [p.grad for p in net.parameters()]
    x_eager = x.detach().clone().requires_grad_()
    net_eager = net_3d()
    net_eager.load_state_dict(net.state_dict())
    y_eager = net_eager(x_eager)
    y_eager.square().sum().backward()
    _close(y, y_eager, torch.float32)
    for got, want in zip(grads, [x_eager.grad] + [p.grad for p in net_eager.parameters()]):
        _close(got, want, torch.float32)


def test_ops_take_shapes_and_parse_once_3d(monkeypatch, serial_numba):
    """The ops reach nbconv through its internal entry points with shapes (no placeholder arrays) and
    each op call parses its arguments exactly once."""
    calls = []

    def counting(name, real):
        def wrapper(*args, **kwargs):
            calls.append((name, args))
            return real(*args, **kwargs)
        return wrapper

    for name in ("conv_params", "transpose_params"):
        monkeypatch.setattr(nt, name, counting(name, getattr(nt, name)))
    for name in ("forward", "input_grad", "weight_grad", "transpose"):
        monkeypatch.setattr(nt.core, name, counting(name, getattr(nt.core, name)))
    ops = torch.ops.nbconv
    x, w = torch.randn(1, 2, 4, 3, 5, dtype=torch.float64), torch.randn(3, 2, 2, 2, 3, dtype=torch.float64)
    stride, padding, dilation = [1, 2, 1], [1, 1, 0, 1, 1, 0], [1, 1, 1]

    y = ops.conv(x, w, None, stride, padding, dilation, 1, "zeros")
    assert [c[0] for c in calls] == ["conv_params", "forward"]
    calls.clear()
    ops.conv_weight_grad(y, x, list(w.shape), stride, padding, dilation, 1, "zeros")
    assert [c[0] for c in calls] == ["conv_params", "weight_grad"]
    assert calls[1][1][2] == (2, 2, 3, 2, 3)  # w_shape, HWIO
    calls.clear()
    ops.conv_transpose(y, w, None, stride, padding, [0, 1, 0], dilation, 1, "zeros")  # any valid output_padding
    assert [c[0] for c in calls] == ["transpose_params", "transpose"]
    calls.clear()
    gx = ops.conv_transpose(y, w, None, stride, padding, [0, 0, 0], dilation, 1, "reflect")
    # the padding modes fold the border: a forward conv's input gradient, checked for the mode
    assert [c[0] for c in calls] == ["transpose_params", "conv_params", "input_grad"]
    assert calls[2][1][2] == (1, 4, 3, 5, 2) and gx.shape == x.shape  # x_shape, channels-last


def test_errors_3d():
    x, w = torch.randn(1, 3, 4, 4, 4), torch.randn(2, 3, 2, 2, 2)
    with pytest.raises(ValueError, match="4-D .unbatched. or 5-D"):
        nt.conv3d(x[0, 0], w)
    with pytest.raises(ValueError, match="weight must be 5-D"):
        nt.conv3d(x, w[..., 0])
    with pytest.raises(ValueError, match="channels"):
        nt.conv3d(x, torch.randn(2, 2, 2, 2, 2))
    with pytest.raises(ValueError, match="stride"):
        nt.conv3d(x, w, stride=(1, 2))
    with pytest.raises(ValueError, match="bias"):
        nt.conv3d(x, w, torch.randn(3))
    with pytest.raises(ValueError, match="reflect padding"):
        nt.Conv3d(3, 2, 3, padding=4, padding_mode="reflect")(x)
    with pytest.raises(TypeError, match="weight has dtype torch.complex64"):
        nt.conv3d(x, w.to(torch.complex64))
    with pytest.raises(TypeError, match="bias has dtype torch.bfloat16 but input has dtype torch.float16"):
        nt.conv3d(x.half(), w.half(), torch.zeros(2, dtype=torch.bfloat16))
    with pytest.raises(TypeError, match="dtype"):
        nt.conv3d(x, w.double())
    with pytest.raises(ValueError, match="output_padding"):
        nt.conv_transpose3d(x, torch.randn(3, 2, 2, 2, 2), stride=2, output_padding=2)
    with pytest.raises(ValueError, match="zeros"):
        nt.ConvTranspose3d(3, 2, 3, padding_mode="circular")(x)
    ops = torch.ops.nbconv  # the ops themselves validate (they are callable directly)
    with pytest.raises(ValueError, match="padding must be 6 ints"):
        ops.conv(x, w, None, [1, 1, 1], [0, 0], [1, 1, 1], 1, "zeros")
    with pytest.raises(ValueError, match="padding_mode"):
        ops.conv(x, w, None, [1, 1, 1], [0] * 6, [1, 1, 1], 1, "mirror")
    with pytest.raises(ValueError, match="weight must be 5-D"):
        ops.conv(x, w[0], None, [1, 1, 1], [0] * 6, [1, 1, 1], 1, "zeros")
    with pytest.raises(ValueError, match="grad_output has shape"):
        ops.conv_weight_grad(torch.randn(1, 2, 2, 3, 3), x, list(w.shape), [1, 1, 1], [0] * 6, [1, 1, 1], 1, "zeros")
    with pytest.raises(ValueError, match="weight_shape"):
        ops.conv_weight_grad(torch.randn(1, 2, 3, 3, 3), x, [-2, 3, 2, 2, 2], [1, 1, 1], [0] * 6, [1, 1, 1], 1,
                             "zeros")
    with pytest.raises(ValueError, match="output_padding"):
        ops.conv_transpose(torch.randn(1, 3, 3, 3, 3), torch.randn(3, 2, 2, 2, 2), None, [1, 1, 1], [0] * 6,
                           [1, 0, 0], [2, 1, 1], 1, "reflect")


# ------------------------------------------------------------------------------------------------
# Deployment routes: DistributedDataParallel, torch.export; torch.jit.script is not one
# ------------------------------------------------------------------------------------------------
DDP_SCRIPT = r'''
import sys

import torch
import torch.distributed as dist
from torch import nn

import nbconv.torch as nt


def net(conv):
    torch.manual_seed(0)
    return nn.Sequential(conv(1, 4, 3, padding=1, padding_mode="reflect"), nn.ReLU(), conv(4, 4, 3, stride=2),
                         nn.Flatten(), nn.Linear(4 * 3 * 3, 3)).double()


def train(rank, port, out):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    for name, conv in (("nn", nn.Conv2d), ("nbconv", nt.Conv2d)):
        model = nn.parallel.DistributedDataParallel(net(conv))
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        gen = torch.Generator().manual_seed(rank)  # each rank its own data
        for _ in range(3):
            x = torch.randn(4, 1, 8, 8, dtype=torch.float64, generator=gen)
            labels = torch.randint(0, 3, (4,), generator=gen)
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), labels).backward()
            opt.step()
        torch.save(model.module.state_dict(), f"{out}.{name}.{rank}")
    dist.destroy_process_group()


if __name__ == "__main__":
    torch.multiprocessing.spawn(train, args=(int(sys.argv[1]), sys.argv[2]), nprocs=2)
'''


def test_ddp_trains_like_nn(tmp_path):
    """DistributedDataParallel (gloo, 2 processes on 127.0.0.1): three SGD steps on different data per rank
    give the nn.Conv2d model's parameters, identical on both ranks."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    env = dict(os.environ, NUMBA_NUM_THREADS="1", OMP_NUM_THREADS="1")
    subprocess.run([sys.executable, str(script), str(port), str(tmp_path / "state")], check=True, env=env,
                   timeout=300)
    states = {(name, rank): torch.load(tmp_path / f"state.{name}.{rank}")
              for name in ("nn", "nbconv") for rank in (0, 1)}
    for key, value in states["nn", 0].items():
        for other in (("nn", 1), ("nbconv", 0), ("nbconv", 1)):
            torch.testing.assert_close(states[other][key], value, rtol=1e-10, atol=1e-12, msg=f"{key} {other}")


def test_export_is_the_deployment_route():
    """torch.export captures the custom ops (torch.ops.nbconv.*) and the exported program computes what the
    model does; torch.jit.script (deprecated by PyTorch) cannot compile the modules' Python forward."""
    torch.manual_seed(25)
    model = nn.Sequential(nt.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"), nn.ReLU(),
                          nt.ConvTranspose2d(4, 2, 2, stride=2))
    x = torch.randn(2, 3, 6, 6)
    program = torch.export.export(model, (x,))
    targets = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    assert {"nbconv.conv.default", "nbconv.conv_transpose.default"} <= targets
    _close(program.module()(x), model(x), torch.float32)
    with pytest.raises(RuntimeError):
        torch.jit.script(model)


# ------------------------------------------------------------------------------------------------
# Import isolation and CUDA
# ------------------------------------------------------------------------------------------------
def test_import_nbconv_does_not_import_torch():
    code = ("import sys, numpy as np, nbconv; nbconv.conv2d(np.ones((1, 3, 3, 1)), np.ones((2, 2, 1, 1))); "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cuda_device_and_stream_ordering(monkeypatch):
    """The CUDA path's device and stream handling, without a GPU (PyTorch's streams and numba's device list
    replaced by recorders): numba runs in the context of the tensor's GPU (cuda:1 -> GPU 1); on a side
    stream the legacy default stream, where nbconv launches, waits for the current stream before the
    kernels and the current stream waits for it after, also when a kernel raises; on the default stream
    nothing waits (one stream orders everything)."""
    from numba import cuda
    events = []

    class Stream:
        def __init__(self, name):
            self.name = name

        def wait_stream(self, other):
            events.append(f"{self.name} waits for {other.name}")

    class Gpus:
        def __getitem__(self, index):
            events.append(f"gpu {index}")
            return contextlib.nullcontext()

    class CudaTensor:  # what _on_device reads of a tensor
        device = torch.device("cuda", 1)

    default, side = Stream("default"), Stream("side")
    current = {"stream": side}
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: current["stream"])
    monkeypatch.setattr(torch.cuda, "default_stream", lambda device=None: default)
    monkeypatch.setattr(cuda, "gpus", Gpus(), raising=False)
    with nt._on_device(CudaTensor()):
        events.append("kernels")
    assert events == ["gpu 1", "default waits for side", "kernels", "side waits for default"]
    events.clear()
    with pytest.raises(ValueError), nt._on_device(CudaTensor()):
        raise ValueError("a kernel failed")
    assert events == ["gpu 1", "default waits for side", "side waits for default"]
    events.clear()
    current["stream"] = default
    with nt._on_device(CudaTensor()):
        events.append("kernels")
    assert events == ["gpu 1", "kernels"]
    events.clear()
    with nt._on_device(torch.zeros(1)):  # CPU tensors: nothing to arrange
        events.append("kernels")
    assert events == ["kernels"]


def test_forward_results_come_from_torch_allocator(monkeypatch):
    """The forward and transposed-convolution kernels write into a tensor PyTorch allocated (on CUDA: its
    caching allocator), handed to nbconv as `out`; a channels_last result is that tensor itself."""
    seen = {}
    real_forward, real_transpose = nt.core.forward, nt.core.transpose

    def forward(x, w, bias, params, out=None):
        seen["forward"] = out
        return real_forward(x, w, bias, params, out)

    def transpose(x, w, bias, params, output_padding, out_shape, out=None):
        seen["transpose"] = out
        return real_transpose(x, w, bias, params, output_padding, out_shape, out)

    monkeypatch.setattr(nt.core, "forward", forward)
    monkeypatch.setattr(nt.core, "transpose", transpose)
    x = torch.randn(2, 3, 5, 5).contiguous(memory_format=torch.channels_last)
    y = nt.conv2d(x, torch.randn(4, 3, 2, 2))
    assert seen["forward"] is not None and y.data_ptr() == seen["forward"].ctypes.data
    y = nt.conv_transpose2d(x, torch.randn(3, 2, 2, 2), stride=2)
    assert seen["transpose"] is not None and y.data_ptr() == seen["transpose"].ctypes.data


_NEEDS_GPU = pytest.mark.skipif(not (torch.cuda.is_available() and nbconv.cuda_available()),
                                reason="needs a CUDA GPU and NUMBA_ENABLE_CUDASIM=0")


@_NEEDS_GPU
def test_cuda_side_stream_half_and_allocator():
    """On a side stream: inputs produced there are read after they are written and the result is usable
    there at once; results are PyTorch allocations; float16 works; a cuda:1 tensor stays on cuda:1."""
    torch.manual_seed(24)
    w = torch.randn(8, 4, 3, 3, device="cuda")
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        x = torch.randn(16, 4, 64, 64, device="cuda").contiguous(memory_format=torch.channels_last) * 3
        before = torch.cuda.memory_allocated()
        y = nt.conv2d(x, w, padding=1)
        assert torch.cuda.memory_allocated() - before >= y.numel() * 4
        z = y * 2
    stream.synchronize()
    _close(z, 2 * F.conv2d(x, w, padding=1), torch.float32)
    y16 = nt.conv2d(x.half(), w.half(), padding=1)
    assert y16.dtype == torch.float16
    torch.testing.assert_close(y16.float(), F.conv2d(x, w, padding=1), rtol=2e-3, atol=2e-2)
    if torch.cuda.device_count() > 1:
        x1, w1 = x.to("cuda:1"), w.to("cuda:1")
        y1 = nt.conv2d(x1, w1, padding=1)
        assert y1.device == x1.device
        _close(y1.cpu(), F.conv2d(x, w, padding=1).cpu(), torch.float32)


@pytest.mark.skipif(not (torch.cuda.is_available() and nbconv.cuda_available()),
                    reason="needs a CUDA GPU and NUMBA_ENABLE_CUDASIM=0")
def test_cuda_matches_nn():
    ref, ours = _pair(nn.Conv2d, nt.Conv2d, 4, dict(out_channels=6, kernel_size=3, stride=2, padding=1), torch.float32)
    ref, ours = ref.cuda(), ours.cuda()
    x = torch.randn(2, 4, 9, 8, device="cuda").contiguous(memory_format=torch.channels_last)
    _compare_modules(ref, ours, x, torch.float32)
    assert ours(x).device == x.device


@pytest.mark.skipif(not (torch.cuda.is_available() and nbconv.cuda_available()),
                    reason="needs a CUDA GPU and NUMBA_ENABLE_CUDASIM=0")
def test_cuda_matches_nn_3d():
    ref, ours = _pair(nn.Conv3d, nt.Conv3d, 4, dict(out_channels=6, kernel_size=3, stride=2, padding=1,
                                                    padding_mode="reflect", groups=2), torch.float32)
    ref, ours = ref.cuda(), ours.cuda()
    x = torch.randn(2, 4, 5, 9, 8, device="cuda").contiguous(memory_format=torch.channels_last_3d)
    _compare_modules(ref, ours, x, torch.float32)
    assert ours(x).device == x.device
    ref, ours = _pair(nn.ConvTranspose3d, nt.ConvTranspose3d, 4, dict(out_channels=2, kernel_size=3, stride=2),
                      torch.float32)
    ref, ours = ref.cuda(), ours.cuda()
    _compare_modules(ref, ours, torch.randn(2, 4, 3, 4, 3, device="cuda"), torch.float32)


# ------------------------------------------------------------------------------------------------
# The LeNet experiment (`python -m nbconv lenet`): data and model; the run itself is a benchmark
# ------------------------------------------------------------------------------------------------
def test_lenet_data_and_model():
    pytest.importorskip("sklearn")
    from nbconv import _lenet

    name, x_train, y_train, x_test, y_test = _lenet.load_data("digits", seed=0)
    assert name == "digits"
    assert x_train.shape == (1437, 1, 28, 28) and x_test.shape == (360, 1, 28, 28)
    assert x_train.dtype == np.float32 and abs(x_train.mean()) < 1e-4 and abs(x_train.std() - 1) < 1e-3
    assert set(np.unique(y_train)) == set(range(10)) and len(y_test) == 360
    torch.manual_seed(0)
    ref = _lenet.lenet(nn.Conv2d)
    ours = _lenet.lenet(nt.Conv2d)
    ours.load_state_dict(ref.state_dict())
    x = torch.from_numpy(x_test[:4])
    _close(ours(x), ref(x), torch.float32)


FAKE_MISMATCHES = [  # (op, args) that the real op rejects: the fake implementation must reject them too
    ("conv", lambda x, w: (x(2, 5, 8, 8), w(4, 3, 3, 3), None, [1, 1], [0, 0, 0, 0], [1, 1], 1, "zeros")),
    ("conv", lambda x, w: (x(2, 6, 8, 8), w(4, 3, 3, 3), None, [1, 1], [0, 0, 0, 0], [1, 1], 4, "zeros")),
    ("conv", lambda x, w: (x(2, 3, 8, 8), w(4, 3, 3, 3), x(5), [1, 1], [0, 0, 0, 0], [1, 1], 1, "zeros")),
    ("conv", lambda x, w: (x(2, 3, 2, 8), w(4, 3, 3, 3), None, [1, 1], [0, 0, 0, 0], [1, 1], 1, "zeros")),
    ("conv", lambda x, w: (x(2, 3, 8, 8), w(4, 3, 3, 3), None, [1, 1], [8, 8, 0, 0], [1, 1], 1, "reflect")),
    ("conv_transpose", lambda x, w: (x(2, 5, 8, 8), w(4, 3, 3, 3), None, [1, 1], [0, 0, 0, 0], [0, 0], [1, 1], 1,
                                     "zeros")),
    ("conv_transpose", lambda x, w: (x(2, 4, 8, 8), w(4, 3, 3, 3), None, [2, 2], [0, 0, 0, 0], [2, 0], [1, 1], 1,
                                     "zeros")),
    ("conv_weight_grad", lambda x, w: (x(2, 4, 6, 6), x(2, 5, 8, 8), [4, 3, 3, 3], [1, 1], [0, 0, 0, 0], [1, 1], 1,
                                       "zeros")),
    ("conv_weight_grad", lambda x, w: (x(2, 4, 5, 6), x(2, 3, 8, 8), [4, 3, 3, 3], [1, 1], [0, 0, 0, 0], [1, 1], 1,
                                       "zeros")),
]


@pytest.mark.parametrize("op, make", FAKE_MISMATCHES)
def test_fake_implementations_validate_like_the_ops(op, make):
    """Fake (meta) tensors get the real op's ValueError, not a made-up shape (torch.compile traces them)."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    real_args = make(torch.randn, torch.randn)
    with pytest.raises(ValueError) as real:
        getattr(torch.ops.nbconv, op)(*real_args)
    with FakeTensorMode():
        fake_args = make(torch.empty, torch.empty)
        with pytest.raises(ValueError) as fake:
            getattr(torch.ops.nbconv, op)(*fake_args)
    assert str(fake.value) == str(real.value)
