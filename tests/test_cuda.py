"""nbconv's CUDA kernels (nbconv/_cuda.py) against the naive reference and the CPU path, in 1-D, 2-D
and 3-D (one kernel family: the backend views every call as 3-D).

They run under Numba's CUDA simulator unless NUMBA_ENABLE_CUDASIM=0 and a GPU is present (conftest
sets the simulator by default). The simulator costs ~0.1 ms per thread and ~1 ms per thread of a
kernel that synchronises, so shapes are tiny: each launch has at most a few hundred threads.
Interop with CuPy/PyTorch CUDA tensors needs `__cuda_array_interface__`, which the simulator lacks;
those tests run on a real GPU only.
"""
import inspect
import itertools
import os
import subprocess
import sys

import numba
import numpy as np
import pytest

import nbconv

try:
    from . import reference as R
except ImportError:   # tests/ is not a package: pytest puts it on sys.path
    import reference as R

SIMULATOR = bool(numba.config.ENABLE_CUDASIM)
if not (SIMULATOR or nbconv.cuda_available()):
    pytest.skip("no CUDA GPU and the CUDA simulator is off (NUMBA_ENABLE_CUDASIM=0)", allow_module_level=True)

from numba import cuda  # noqa: E402

from nbconv import _backend, _cuda  # noqa: E402

TOL = {np.dtype(np.float32): 1e-4, np.dtype(np.float64): 1e-10}
real_gpu = pytest.mark.skipif(SIMULATOR, reason="needs a real GPU: the CUDA simulator has no "
                                                "__cuda_array_interface__ or cuda.as_cuda_array")


def dev(a):
    return cuda.to_device(np.ascontiguousarray(a))


def host(d):
    assert type(d).__module__.startswith("numba.cuda"), f"expected a numba device array, got {type(d)}"
    return d.copy_to_host()


def close(actual, expected, dtype):
    """Equal within the contract's tolerance, relative to the magnitude of the result."""
    tol = TOL[np.dtype(dtype)]
    scale = max(1.0, float(np.abs(expected).max(initial=0.0)))
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol * scale)


def explicit_pads(padding, x_shape, w_shape, stride, dilation):
    nd = len(x_shape) - 2
    stride = (stride,) * nd if np.ndim(stride) == 0 else stride
    dilation = (dilation,) * nd if np.ndim(dilation) == 0 else dilation
    if padding == "same":
        return R.same_pads(x_shape[1:-1], w_shape[:-2], stride, dilation)
    return padding


def data(rng, dtype, *shapes):
    return [rng.standard_normal(s).astype(dtype) for s in shapes]


# (x shape, w shape, stride, padding, dilation, groups, padding_mode, bias, dtype)
CONV_CASES = {
    "plain-f64": ((2, 4, 5, 3), (2, 2, 3, 4), 1, 0, 1, 1, "zeros", True, np.float64),
    "stride-asym-f32": ((1, 6, 5, 2), (3, 2, 2, 3), (2, 1), ((1, 2), (0, 1)), 1, 1, "zeros", True, np.float32),
    "dilation": ((1, 6, 5, 2), (2, 2, 2, 3), 1, 2, (2, 1), 1, "zeros", True, np.float32),
    "depthwise-mult2": ((1, 5, 4, 3), (3, 3, 1, 6), (1, 2), 1, 1, 3, "zeros", True, np.float32),
    "reflect": ((1, 5, 5, 2), (3, 3, 2, 2), 1, ((2, 1), (1, 2)), 1, 1, "reflect", True, np.float64),
    "replicate": ((1, 4, 5, 2), (2, 3, 2, 2), (2, 1), ((3, 1), (0, 2)), 1, 1, "replicate", False, np.float32),
    "circular": ((1, 4, 5, 2), (3, 2, 1, 2), 1, ((4, 2), (1, 5)), (1, 2), 2, "circular", True, np.float64),
    "1d-circular-same": ((2, 7, 2), (3, 2, 3), 1, "same", 2, 1, "circular", True, np.float64),
    "1d-reflect-stride": ((1, 9, 3), (2, 1, 3), 2, ((2, 3),), 1, 3, "reflect", False, np.float32),
    "3d-int-pad-f64": ((1, 3, 3, 3, 2), (2, 2, 2, 2, 3), 1, 1, 1, 1, "zeros", True, np.float64),
    "3d-stride-asym-f32": ((1, 4, 5, 3, 2), (2, 3, 2, 2, 3), (2, 1, 2), ((1, 2), (0, 1), (2, 0)), 1, 1, "zeros",
                           True, np.float32),
    "3d-same-stride-dilation-reflect": ((1, 4, 3, 5, 2), (2, 2, 3, 2, 2), (1, 1, 2), "same", (2, 1, 1), 1, "reflect",
                                        False, np.float64),
    "3d-groups-replicate": ((1, 3, 4, 3, 4), (1, 2, 3, 2, 6), 2, ((2, 1), (0, 2), (1, 0)), 1, 2, "replicate", False,
                            np.float32),
    "3d-depthwise-circular": ((2, 3, 3, 2, 3), (2, 2, 2, 1, 6), (1, 2, 1), ((2, 1), (1, 3), (0, 2)), (1, 1, 2), 3,
                              "circular", True, np.float64),
}
CONV = {1: (nbconv.conv1d, nbconv.conv1d_backward), 2: (nbconv.conv2d, nbconv.conv2d_backward),
        3: (nbconv.conv3d, nbconv.conv3d_backward)}
TRANSPOSE = {1: nbconv.conv_transpose1d, 2: nbconv.conv_transpose2d, 3: nbconv.conv_transpose3d}


@pytest.mark.parametrize("case", CONV_CASES.values(), ids=CONV_CASES.keys())
def test_conv_forward_and_backward(case, rng):
    x_shape, w_shape, stride, padding, dilation, groups, mode, with_bias, dtype = case
    conv, backward = CONV[len(x_shape) - 2]
    x, w, b = data(rng, dtype, x_shape, w_shape, (w_shape[-1],))
    b = b if with_bias else None
    kw = dict(stride=stride, padding=padding, dilation=dilation, groups=groups, padding_mode=mode)
    pads = explicit_pads(padding, x_shape, w_shape, stride, dilation)
    expected = R.conv_forward(x, w, b, stride, pads, dilation, groups, mode)

    y = conv(dev(x), dev(w), None if b is None else dev(b), **kw)
    assert y.dtype == dtype and tuple(y.shape) == expected.shape
    close(host(y), expected, dtype)
    close(host(y), conv(x, w, b, **kw), dtype)

    gy = rng.standard_normal(expected.shape).astype(dtype)
    expected_grads = R.conv_grads(gy, x, w, stride, pads, dilation, groups, mode)
    grads = backward(dev(gy), dev(x), dev(w), **kw)
    cpu_grads = backward(gy, x, w, **kw)
    for name, got, ref, cpu in zip(("input", "weight", "bias"), grads, expected_grads, cpu_grads):
        assert got.dtype == dtype and tuple(got.shape) == ref.shape, name
        close(host(got), ref, dtype)
        close(host(got), cpu, dtype)


# (x shape, w shape, stride, padding, output_padding, dilation, groups, bias, dtype)
TRANSPOSE_CASES = {
    "stride2-outpad": ((1, 3, 4, 2), (3, 3, 3, 2), 2, 1, 1, 1, 1, True, np.float64),
    "asym-dilation": ((1, 4, 3, 2), (2, 3, 2, 2), (1, 2), ((1, 0), (2, 1)), (0, 1), (2, 1), 1, False, np.float32),
    "groups-outpad-dilation": ((2, 3, 3, 4), (2, 2, 3, 4), 1, 0, 1, 2, 2, True, np.float32),
    "1d-stride3": ((2, 4, 2), (3, 2, 2), 3, ((1, 2),), 2, 1, 1, True, np.float64),
    "3d-stride-outpad-groups": ((1, 2, 3, 2, 4), (2, 3, 2, 2, 4), (2, 1, 2), ((1, 0), (0, 1), (1, 1)), (1, 0, 1),
                                (1, 2, 1), 2, True, np.float32),
    "3d-dilation-outpad": ((1, 2, 2, 3, 2), (2, 2, 2, 3, 2), 1, 0, (1, 1, 0), (2, 2, 1), 1, False, np.float64),
}


@pytest.mark.parametrize("case", TRANSPOSE_CASES.values(), ids=TRANSPOSE_CASES.keys())
def test_conv_transpose(case, rng):
    x_shape, w_shape, stride, padding, output_padding, dilation, groups, with_bias, dtype = case
    fn = TRANSPOSE[len(x_shape) - 2]
    x, w, b = data(rng, dtype, x_shape, w_shape, (w_shape[-2] * groups,))
    b = b if with_bias else None
    kw = dict(stride=stride, padding=padding, output_padding=output_padding, dilation=dilation, groups=groups)
    expected = R.conv_transpose(x, w, b, stride, padding, output_padding, dilation, groups)
    y = fn(dev(x), dev(w), None if b is None else dev(b), **kw)
    assert y.dtype == dtype and tuple(y.shape) == expected.shape
    close(host(y), expected, dtype)
    close(host(y), fn(x, w, b, **kw), dtype)


def test_strided_device_views(rng):
    """Non-contiguous device views (every other row and channel, a reversed axis) are read in place."""
    big_x, big_w = data(rng, np.float64, (2, 8, 5, 6), (2, 2, 6, 3))
    dx, dw = cuda.to_device(big_x), cuda.to_device(big_w)
    x, w = big_x[:, ::2, :, ::2], big_w[::-1, :, ::2]
    y = nbconv.conv2d(dx[:, ::2, :, ::2], dw[::-1, :, ::2], padding=1)
    close(host(y), R.conv_forward(x, w, pads=1), np.float64)
    gy = rng.standard_normal(tuple(y.shape))
    ref = R.conv_grads(gy, x, w, pads=1)
    got = nbconv.conv2d_backward(cuda.to_device(gy), dx[:, ::2, :, ::2], dw[::-1, :, ::2], padding=1)
    for g, r in zip(got, ref):
        close(host(g), r, np.float64)


def test_strided_device_views_3d_and_1d(rng):
    """The unit axes that view 1-D and 2-D calls as 3-D are inserted without copying strided views,
    and 3-D views (reversed and stepped axes) are read in place by every kernel."""
    big_x, big_w = data(rng, np.float32, (1, 6, 3, 4, 6), (2, 2, 2, 6, 3))
    dx, dw = cuda.to_device(big_x), cuda.to_device(big_w)
    view_x, view_w = (slice(None), slice(None, None, 2), slice(None), slice(None, None, -1), slice(None, None, 2)), \
        (slice(None, None, -1), slice(None), slice(None), slice(None, None, 2))
    x, w = big_x[view_x], big_w[view_w]
    kw = dict(padding=((1, 0), (1, 1), (0, 1)), padding_mode="reflect")
    pads = kw["padding"]
    y = nbconv.conv3d(dx[view_x], dw[view_w], **kw)
    close(host(y), R.conv_forward(x, w, pads=pads, mode="reflect"), np.float32)
    gy = rng.standard_normal(tuple(y.shape)).astype(np.float32)
    got = nbconv.conv3d_backward(cuda.to_device(gy), dx[view_x], dw[view_w], **kw)
    for g, r in zip(got, R.conv_grads(gy, x, w, pads=pads, mode="reflect")):
        close(host(g), r, np.float32)
    w_t = big_w[:, :, ::-1, ::2]                              # (KD, KH, KW, C_out // groups, C_in = 3)
    y_t = nbconv.conv_transpose3d(dx[view_x], dw[:, :, ::-1, ::2], stride=2, padding=1, output_padding=1)
    close(host(y_t), R.conv_transpose(x, w_t, stride=2, pads=1, output_padding=1), np.float32)

    view_x1, view_w1 = (0, slice(None, None, 2), 2, slice(None, None, -1), slice(None, None, 3)), \
        (0, 0, slice(None, None, -1), slice(None, None, 3))
    x1, w1 = big_x[view_x1], big_w[view_w1]                  # (3, 4, 2) and (2, 2, 3)
    y1 = nbconv.conv1d(dx[view_x1], dw[view_w1], stride=2, padding=((1, 0),), padding_mode="replicate")
    close(host(y1), R.conv_forward(x1, w1, stride=2, pads=((1, 0),), mode="replicate"), np.float32)


def test_out_argument(rng):
    x, w = data(rng, np.float32, (1, 4, 4, 2), (1, 1, 2, 2))
    out = cuda.device_array((1, 4, 4, 2), dtype=np.float32)
    result = nbconv.conv2d(dev(x), dev(w), out=out)
    assert result is out
    close(host(out), R.conv_forward(x, w), np.float32)

    dx = dev(x)
    with pytest.raises(ValueError, match="overlaps x"):
        nbconv.conv2d(dx, dev(w), out=dx)
    wide = cuda.device_array((1, 4, 4, 4), dtype=np.float32)
    with pytest.raises(ValueError, match="C-contiguous"):
        nbconv.conv2d(dx, dev(w), out=wide[:, :, :, ::2])
    with pytest.raises(ValueError, match="shape"):
        nbconv.conv2d(dx, dev(w), out=wide)
    with pytest.raises(TypeError, match="dtype"):
        nbconv.conv2d(dx, dev(w), out=cuda.device_array((1, 4, 4, 2), dtype=np.float64))
    x_t = rng.standard_normal((1, 2, 2, 2)).astype(np.float32)
    out_t = cuda.device_array((1, 2, 2, 2), dtype=np.float32)
    assert nbconv.conv_transpose2d(dev(x_t), dev(w), out=out_t) is out_t
    close(host(out_t), R.conv_transpose(x_t, w), np.float32)

    x3, w3 = data(rng, np.float64, (1, 2, 3, 2, 2), (1, 2, 1, 2, 3))
    out3 = cuda.device_array((1, 2, 2, 2, 3), dtype=np.float64)
    assert nbconv.conv3d(dev(x3), dev(w3), out=out3) is out3
    close(host(out3), R.conv_forward(x3, w3), np.float64)
    with pytest.raises(ValueError, match="shape"):
        nbconv.conv3d(dev(x3), dev(w3), out=cuda.device_array((1, 2, 3, 2, 3), dtype=np.float64))


def test_mixed_host_and_device_raise(rng):
    x, w = data(rng, np.float32, (1, 3, 3, 2), (2, 2, 2, 2))
    with pytest.raises(TypeError, match="all be on the host or all on a CUDA device"):
        nbconv.conv2d(dev(x), w)
    with pytest.raises(TypeError, match="all be on the host or all on a CUDA device"):
        nbconv.conv2d(x, dev(w), out=cuda.device_array((1, 2, 2, 2), dtype=np.float32))
    with pytest.raises(TypeError, match="all be on the host or all on a CUDA device"):
        nbconv.conv2d_backward(dev(np.zeros((1, 2, 2, 2), np.float32)), x, w)
    with pytest.raises(TypeError, match="all be on the host or all on a CUDA device"):
        nbconv.conv_transpose2d(dev(x), dev(w), bias=np.zeros(2, np.float32))
    with pytest.raises(TypeError, match="float64"):
        nbconv.conv2d(dev(x), dev(w.astype(np.float64)))
    with pytest.raises(ValueError, match="channels"):
        nbconv.conv2d(dev(x), dev(np.zeros((2, 2, 3, 2), np.float32)))


def test_launch_geometry_does_not_change_results(rng, monkeypatch):
    """Grid-stride loops with a capped grid and small blocks give bitwise the same results; the
    weight gradient's fixed chunking makes it reproducible and, with several chunks, correct."""
    x, w = data(rng, np.float32, (1, 2, 4, 3, 3), (2, 2, 2, 3, 4))
    pads = ((0, 1), (1, 0), (1, 1))
    kw = dict(padding=pads, padding_mode="replicate")
    gy = rng.standard_normal((1, 2, 4, 4, 4)).astype(np.float32)
    monkeypatch.setattr(_cuda, "PIXEL_CHUNK", 8)          # 32 output pixels -> 4 weight-gradient chunks

    def run():
        return [host(nbconv.conv3d(dev(x), dev(w), **kw))] + \
            [host(g) for g in nbconv.conv3d_backward(dev(gy), dev(x), dev(w), **kw)]

    default = run()
    monkeypatch.setattr(_cuda, "MAX_BLOCKS", 1)
    monkeypatch.setattr(_cuda, "THREADS_PER_BLOCK", 32)
    small = run()
    for a, b in zip(default, small):
        np.testing.assert_array_equal(a, b)
    refs = [R.conv_forward(x, w, pads=pads, mode="replicate"), *R.conv_grads(gy, x, w, pads=pads, mode="replicate")]
    for a, r in zip(default, refs):
        close(a, r, np.float32)


@pytest.mark.parametrize("nd", [2, 3])
def test_empty_batch(nd):
    spatial, kernel = (4,) * nd, (3,) * nd
    conv, backward = CONV[nd]
    x = cuda.device_array((0, *spatial, 2), dtype=np.float64)
    w = dev(np.ones((*kernel, 2, 5)))
    assert tuple(conv(x, w, padding=1).shape) == (0, *spatial, 5)
    gx, gw, gb = backward(cuda.device_array((0, *spatial, 5), dtype=np.float64), x, w, padding=1)
    assert tuple(gx.shape) == (0, *spatial, 2)
    np.testing.assert_array_equal(host(gw), np.zeros((*kernel, 2, 5)))
    np.testing.assert_array_equal(host(gb), np.zeros(5))


@pytest.mark.skipif(not SIMULATOR, reason="calls device functions from Python, which only the simulator allows")
def test_readers_enumerate_every_output_position_that_reads_an_element():
    """The input gradient's per-axis enumeration (_readers filtered by _read) finds exactly the (tap,
    output position) pairs whose read lands on element a, for every mode and valid padding."""
    from nbconv._padding import CODES
    for mode, code in CODES.items():
        for n, before, after, k, s, d in itertools.product((1, 2, 3, 4), range(4), range(4), (1, 3), (1, 2, 3),
                                                           (1, 2)):
            if (mode == "reflect" and max(before, after) >= n) or (mode == "circular" and max(before, after) > n) \
                    or n + before + after < d * (k - 1) + 1:
                continue
            n_out = (n + before + after - d * (k - 1) - 1) // s + 1
            axis = _cuda.Axis(stride=s, dilation=d, before=before)
            for a in range(n):
                found = [(t, o) for t in range(k) for part in range(3) for o in range(*_cuda._readers(
                    a, t, part, n, n_out, axis, code)) if _cuda._read(o, t, n, axis, code) == a]
                expected = [(t, o) for t in range(k) for o in range(n_out) if _cuda._read(o, t, n, axis, code) == a]
                assert sorted(found) == expected and len(set(found)) == len(found), (mode, n, before, after, k, s, d, a)


def test_implements_the_backend_protocol():
    """Every method of nbconv._backend.Backend exists in _cuda with the same parameters."""
    for name, member in vars(_backend.Backend).items():
        if name.startswith("_") or not callable(member):
            continue
        expected = list(inspect.signature(member).parameters)[1:]   # less self
        assert list(inspect.signature(getattr(_cuda, name)).parameters) == expected, name
    assert _backend.select(x=dev(np.ones(2))) is _cuda


def test_add_for_gradient_accumulation(rng):
    a, b = data(rng, np.float32, (3, 2, 5), (3, 2, 5))
    np.testing.assert_array_equal(host(_cuda.add(dev(a), dev(b))), a + b)
    with pytest.raises(ValueError, match="equal shapes"):
        _cuda.add(dev(a), dev(b[:, :1]))
    with pytest.raises(ValueError, match="C-contiguous"):
        _cuda.add(dev(a)[:, :, ::2], dev(b)[:, :, ::2])


def test_cuda_available_is_false_under_the_simulator():
    assert nbconv.cuda_available() is (not SIMULATOR and cuda.is_available())


def test_import_does_not_touch_cuda():
    code = "import sys, nbconv; assert not any(m.startswith('numba.cuda') for m in sys.modules), 'imported'"
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "NUMBA_ENABLE_CUDASIM": "0"})


# Compiles every kernel to PTX with numba's real CUDA target (the simulator runs them as plain Python,
# so code that numba cannot type for a GPU would pass it). Needs libNVVM, not a GPU.
PTX_CHECK = """
import types, numpy as np, numba
from numba import cuda, types as nt
import numba.cuda.dispatcher as dispatcher
from nbconv import _cuda
from nbconv._shapes import ConvParams
try:
    cuda.get_current_device()
except Exception:  # no driver: device functions ask the current device only for its compute capability
    dispatcher.get_current_device = lambda: types.SimpleNamespace(compute_capability=(8, 0))
i, flag = nt.int64, nt.boolean
geom = numba.typeof(_cuda._geometry(ConvParams((2,), ((1, 0),), (1,), 1, "reflect")))
shape = numba.typeof((1, 2, 3, 4, 5))
for dt in (nt.float32, nt.float64):
    a = lambda nd: nt.Array(dt, nd, "A")
    c = lambda nd: nt.Array(dt, nd, "C")
    k = _cuda._kernels(np.dtype(str(dt)))
    for kernel, sig in ((k.forward, (a(5), a(5), a(1), flag, c(5), geom, i)),
                        (k.gather, (a(5), c(5), a(1), flag, c(5), geom)),
                        (k.weight_partials, (a(5), a(5), c(3), shape, geom, i, i)),
                        (k.bias_partials, (a(5), c(2), i)), (k.sum_rows, (c(2), c(1))),
                        (_cuda._swap_channels, (a(5), c(5))), (_cuda._add_flat, (a(1), a(1), c(1)))):
        ptx, _ = cuda.compile_ptx(kernel.py_func, sig, cc=(8, 0))
        assert dt.name != "float32" or ".f64" not in ptx, kernel.py_func.__name__ + " computes in float64"
"""


def _nvvm_home():
    """A CUDA toolkit root holding libNVVM (CUDA_HOME, or the nvidia-cuda-nvcc-cu12 wheel), or None."""
    roots = [os.environ.get("CUDA_HOME")]
    try:
        import nvidia.cuda_nvcc
        roots += list(nvidia.cuda_nvcc.__path__)
    except ImportError:
        pass
    for root in filter(None, roots):
        if os.path.exists(os.path.join(root, "nvvm", "lib64", "libnvvm.so")):
            return root
    return None


def test_kernels_compile_for_a_real_gpu():
    home = _nvvm_home()
    if home is None:
        pytest.skip("libNVVM not found (set CUDA_HOME or pip install nvidia-cuda-nvcc-cu12)")
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "0", "CUDA_HOME": home}
    subprocess.run([sys.executable, "-c", PTX_CHECK], check=True, env=env)


@pytest.mark.skipif(not SIMULATOR, reason="a real GPU reads __cuda_array_interface__ objects")
def test_foreign_device_arrays_under_the_simulator_raise():
    class Foreign:
        __cuda_array_interface__ = {"shape": (1, 3, 3, 1), "typestr": "<f4", "data": (0, False), "version": 3}

    with pytest.raises(TypeError, match="simulator"):
        nbconv.conv2d(Foreign(), dev(np.ones((1, 1, 1, 1), np.float32)))


@real_gpu
def test_torch_cuda_tensors_zero_copy(rng):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("PyTorch has no CUDA device")
    x, w = data(rng, np.float32, (2, 5, 5, 3), (3, 3, 3, 4))
    tx, tw = torch.from_numpy(x).cuda(), torch.from_numpy(w).cuda()
    y = nbconv.conv2d(tx, tw, padding=1)
    close(host(y), R.conv_forward(x, w, pads=1), np.float32)
    out = torch.empty((2, 5, 5, 4), device="cuda")
    assert nbconv.conv2d(tx, tw, padding=1, out=out) is out
    close(out.cpu().numpy(), R.conv_forward(x, w, pads=1), np.float32)
    view = cuda.as_cuda_array(tx)
    assert view.__cuda_array_interface__["data"][0] == tx.data_ptr()


@real_gpu
def test_cupy_arrays(rng):
    cupy = pytest.importorskip("cupy")
    x, w = data(rng, np.float64, (1, 4, 4, 2), (2, 2, 2, 3))
    y = nbconv.conv2d(cupy.asarray(x), cupy.asarray(w), padding="same", padding_mode="reflect")
    pads = R.same_pads((4, 4), (2, 2), (1, 1), (1, 1))
    close(host(y), R.conv_forward(x, w, pads=pads, mode="reflect"), np.float64)
