"""nbconv's CUDA kernels (nbconv/_cuda*.py) against the naive reference, in 1-D, 2-D and 3-D (one kernel
family: the backend views every call as 3-D), and the device/stream/allocation logic of the backend.

They run under Numba's CUDA simulator unless NUMBA_ENABLE_CUDASIM=0 and a GPU is present (conftest
sets the simulator by default). Under the simulator every thread is a Python thread, so shapes are
tiny and the implicit-GEMM kernels use small tiles (nbconv._cuda_gemm.SIM_TILES, 16 threads; the same
code as the GPU tiles, which test_gpu_tiles runs too). Which kernel family serves a call depends on
its channel counts; the `path` fixture forces one: "gemm" (every call through the implicit-GEMM
kernels, whatever its channels) or "direct" (the direct kernels). What needs a GPU (interop with
CuPy/PyTorch through __cuda_array_interface__, streams) is tested with stand-ins for the driver and
PyTorch here, and for real where a GPU is present. Compiling the kernels for real GPUs is
tests/test_cuda_static.py.
"""
import contextlib
import inspect
import itertools
import os
import subprocess
import sys
import types

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
from nbconv import _cuda_direct as direct  # noqa: E402
from nbconv import _cuda_gemm as gemm  # noqa: E402
from nbconv import _cuda_launch as launch  # noqa: E402
from nbconv._padding import CODES, source_index  # noqa: E402

TOL = {np.dtype(np.float32): 1e-4, np.dtype(np.float64): 1e-10}
real_gpu = pytest.mark.skipif(SIMULATOR, reason="needs a real GPU: the CUDA simulator has no "
                                                "__cuda_array_interface__ or cuda.as_cuda_array")


@pytest.fixture(autouse=True)
def _quick_thread_switches():
    """The simulator's block manager polls its Python threads: short GIL switch intervals cut the time
    threads wait for each other at every syncthreads (~40%)."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-4)
    yield
    sys.setswitchinterval(interval)


@pytest.fixture
def path(request, monkeypatch):
    """Force one kernel family: "gemm" or "direct" (see the module docstring)."""
    monkeypatch.setattr(_cuda, "GEMM_MIN_COLUMNS", 1 if request.param == "gemm" else 1 << 62)
    return request.param


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
# the direct kernels on the cases that reach each of their code paths (every padding mode, groups, 1-D/3-D)
DIRECT_CASES = ("reflect", "replicate", "circular", "1d-reflect-stride", "3d-depthwise-circular")
CONV = {1: (nbconv.conv1d, nbconv.conv1d_backward), 2: (nbconv.conv2d, nbconv.conv2d_backward),
        3: (nbconv.conv3d, nbconv.conv3d_backward)}
TRANSPOSE = {1: nbconv.conv_transpose1d, 2: nbconv.conv_transpose2d, 3: nbconv.conv_transpose3d}


def check_conv(case, rng):
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
    gy = rng.standard_normal(expected.shape).astype(dtype)
    expected_grads = R.conv_grads(gy, x, w, stride, pads, dilation, groups, mode)
    grads = backward(dev(gy), dev(x), dev(w), **kw)
    for name, got, ref in zip(("input", "weight", "bias"), grads, expected_grads):
        assert got.dtype == dtype and tuple(got.shape) == ref.shape, name
        close(host(got), ref, dtype)


@pytest.mark.parametrize("path", ["gemm"], indirect=True)
@pytest.mark.parametrize("case", CONV_CASES.values(), ids=CONV_CASES.keys())
def test_conv_forward_and_backward(case, rng, path):
    check_conv(case, rng)


@pytest.mark.parametrize("path", ["direct"], indirect=True)
@pytest.mark.parametrize("case", [CONV_CASES[c] for c in DIRECT_CASES], ids=DIRECT_CASES)
def test_conv_direct_kernels(case, rng, path):
    check_conv(case, rng)


# (x shape, w shape, stride, padding, output_padding, dilation, groups, bias, dtype)
TRANSPOSE_CASES = {
    "stride2-outpad": ((1, 3, 4, 2), (3, 3, 3, 2), 2, 1, 1, 1, 1, True, np.float64),
    "asym-dilation": ((1, 4, 3, 2), (2, 3, 2, 2), (1, 2), ((1, 0), (2, 1)), (0, 1), (2, 1), 1, False, np.float32),
    "groups-outpad-dilation": ((2, 3, 3, 4), (2, 2, 3, 4), 1, 0, 1, 2, 2, True, np.float32),
    "1d-stride3": ((2, 4, 2), (3, 2, 2), 3, ((1, 2),), 2, 1, 1, True, np.float64),
    "3d-stride-outpad-groups": ((1, 2, 3, 2, 4), (2, 3, 2, 2, 4), (2, 1, 2), ((1, 0), (0, 1), (1, 1)), (1, 0, 1),
                                (1, 2, 1), 2, True, np.float32),
    "3d-dilation-outpad": ((1, 2, 2, 3, 2), (2, 2, 2, 3, 2), 1, 0, (1, 1, 0), (2, 2, 1), 1, False, np.float64),
    # stride 4 > kernel 2: phases no tap reaches hold only the bias
    "stride-past-kernel": ((1, 2, 3, 2), (2, 2, 3, 2), (4, 3), 0, (2, 1), 1, 1, True, np.float32),
}


@pytest.mark.parametrize("path", ["gemm", "direct"], indirect=True)
@pytest.mark.parametrize("case", TRANSPOSE_CASES.values(), ids=TRANSPOSE_CASES.keys())
def test_conv_transpose(case, rng, path):
    x_shape, w_shape, stride, padding, output_padding, dilation, groups, with_bias, dtype = case
    if path == "direct" and len(x_shape) == 3:
        pytest.skip("covered by the other direct cases")
    fn = TRANSPOSE[len(x_shape) - 2]
    x, w, b = data(rng, dtype, x_shape, w_shape, (w_shape[-2] * groups,))
    b = b if with_bias else None
    kw = dict(stride=stride, padding=padding, output_padding=output_padding, dilation=dilation, groups=groups)
    expected = R.conv_transpose(x, w, b, stride, padding, output_padding, dilation, groups)
    y = fn(dev(x), dev(w), None if b is None else dev(b), **kw)
    assert y.dtype == dtype and tuple(y.shape) == expected.shape
    close(host(y), expected, dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gpu_tiles(rng, monkeypatch, dtype):
    """The tiles a GPU uses (wide and narrow, 128-256 threads) under the simulator: one call covers the
    forward and weight gradient on the wide tile (64 output channels) and the input gradient on the
    narrow one (4 input channels); reflect padding for the forward's padding map."""
    monkeypatch.setattr(gemm, "TILES", gemm.GPU_TILES)
    monkeypatch.setattr(_cuda, "GEMM_MIN_COLUMNS", 1)
    x, w = data(rng, dtype, (1, 3, 3, 4), (2, 2, 4, 64))
    y = nbconv.conv2d(dev(x), dev(w), padding=1, padding_mode="reflect")
    close(host(y), R.conv_forward(x, w, pads=1, mode="reflect"), dtype)
    gy = rng.standard_normal(tuple(y.shape)).astype(dtype)
    got = nbconv.conv2d_backward(dev(gy), dev(x), dev(w), padding=1, needs=("input", "weight"))
    for g, r in zip(got[:2], R.conv_grads(gy, x, w, pads=1)):
        close(host(g), r, dtype)


@pytest.mark.parametrize("path", ["gemm"], indirect=True)
def test_64_bit_index_kernels(rng, monkeypatch, path):
    """The kernels for operands beyond the 32-bit limit (the limit lowered): zero padding and reflect,
    forward and both gradients."""
    monkeypatch.setattr(gemm, "INT32_LIMIT", 8)
    x, w = data(rng, np.float32, (1, 4, 5, 2), (2, 3, 2, 3))
    assert gemm.forward_plan((1, 1, 4, 5, 2), (1, 2, 3, 2, 3), (1, 1, 4, 5, 3), direct.geometry(
        nbconv._shapes.ConvParams((1, 1), ((1, 0), (1, 1)), (1, 1), 1, "zeros")))[2]
    for mode in ("zeros", "reflect"):
        kw = dict(stride=(2, 1), padding=((1, 0), (1, 1)), padding_mode=mode)
        y = nbconv.conv2d(dev(x), dev(w), **kw)
        close(host(y), R.conv_forward(x, w, stride=(2, 1), pads=((1, 0), (1, 1)), mode=mode), np.float32)
        gy = rng.standard_normal(tuple(y.shape)).astype(np.float32)
        for g, r in zip(nbconv.conv2d_backward(dev(gy), dev(x), dev(w), **kw),
                        R.conv_grads(gy, x, w, stride=(2, 1), pads=((1, 0), (1, 1)), mode=mode)):
            close(host(g), r, np.float32)


@pytest.mark.parametrize("path", ["gemm"], indirect=True)
def test_input_gradient_of_padding_modes_by_fold_and_by_gather(rng, monkeypatch, path):
    """With reflect/replicate/circular padding the input gradient is the GEMM over the padded input folded
    back (padded volume up to FOLD_LIMIT times the input) or the direct gather: both equal the reference."""
    x, w = data(rng, np.float64, (1, 4, 3, 3), (2, 2, 3, 2))
    pads = ((3, 2), (2, 1))
    gy = rng.standard_normal((1, 8, 5, 2))
    expected = R.conv_grads(gy, x, w, pads=pads, mode="replicate")[0]
    for limit in (100, 0):
        monkeypatch.setattr(_cuda, "FOLD_LIMIT", limit)
        got = nbconv.conv2d_backward(dev(gy), dev(x), dev(w), padding=pads, padding_mode="replicate", needs="input")
        close(host(got.input), expected, np.float64)


@pytest.mark.parametrize("mode", ["zeros", "reflect", "replicate", "circular"])
def test_pad_map_is_source_index(mode):
    """The kernels' division-free padding map (pad_map, _source) equals nbconv._padding.source_index on
    every position a convolution can read (validation bounds the pads)."""
    code = CODES[mode]
    for n in (1, 2, 3, 5):
        limit = n - 1 if mode == "reflect" else n
        slope, lo, hi, zero = gemm.pad_map(code, n)
        for t in range(-limit, n + limit):
            expected = source_index(t, n, code)
            if mode == "zeros":
                assert zero and (expected == -1) == (not 0 <= t < n)
            else:
                assert gemm._source_py(t, n, lo, hi, slope) == expected, (mode, n, t)


def test_input_gradient_phases_cover_every_tap_once():
    """The sub-pixel phases of the input gradient (host plans, no kernels): every (position, tap) pair whose
    read lands inside the input appears in exactly one phase, reading the right output position."""
    for n, k, s, d, b in itertools.product((1, 3, 7), (1, 2, 3), (1, 2, 3, 5), (1, 2), (0, 1, 2)):
        n_out = (n + 2 * b - d * (k - 1) - 1) // s + 1
        if n_out < 1:
            continue
        found = []
        for r, count, taps in gemm._axis_phases(n, k, direct.Axis(s, d, b)):
            for j in range(count):
                found += [(r + j * s, tap, j + q) for tap, q in taps]
        expected = [(a, tap, o) for a in range(n) for tap in range(k) for o in range(-k * d - b, n + b + 1)
                    if o * s + tap * d - b == a]
        assert sorted(found) == sorted(expected), (n, k, s, d, b)


def test_int32_decision():
    """Operands (or positions) beyond 2**30 take the 64-bit kernels; ordinary shapes the 32-bit ones."""
    geom = direct.geometry(nbconv._shapes.ConvParams((1, 1), ((1, 1), (1, 1)), (1, 1), 1, "zeros"))
    assert not gemm.forward_plan((8, 1, 56, 56, 64), (1, 3, 3, 64, 64), (8, 1, 56, 56, 64), geom)[2]
    assert gemm.forward_plan((1024, 1, 256, 256, 64), (1, 3, 3, 64, 64), (1024, 1, 256, 256, 64), geom)[2]
    big_stride = direct.geometry(nbconv._shapes.ConvParams((1, 1 << 40), ((0, 0), (0, 0)), (1, 1), 1, "zeros"))
    assert gemm.forward_plan((1, 1, 4, 5, 8), (1, 1, 1, 8, 8), (1, 1, 4, 1, 8), big_stride)[2]


@pytest.mark.parametrize("tile", sorted(set(gemm.GPU_TILES.values()) | set(gemm.SIM_TILES.values())))
def test_tiles_fit_the_staging_loops(tile):
    gemm.check_tile(tile)
    assert gemm.mma_source(tile, tile.bm + 4).count("+=") == tile.bk * tile.tm * tile.tn


@pytest.mark.parametrize("path", ["gemm", "direct"], indirect=True)
def test_launch_geometry_does_not_change_results(rng, monkeypatch, path):
    """Grid-stride loops with a capped grid and small blocks give bitwise the same results; the
    weight gradient's fixed chunking makes it reproducible and, with several chunks, correct."""
    x, w = data(rng, np.float32, (1, 2, 4, 3, 3), (2, 2, 2, 3, 4))
    pads = ((0, 1), (1, 0), (1, 1))
    kw = dict(padding=pads, padding_mode="replicate")
    gy = rng.standard_normal((1, 2, 4, 4, 4)).astype(np.float32)
    monkeypatch.setattr(_cuda, "PIXEL_CHUNK", 8)          # 32 output pixels -> 4 direct weight-gradient chunks
    monkeypatch.setattr(_cuda, "GEMM_MIN_CHUNK", 8)       # and 4 GEMM chunks
    monkeypatch.setattr(_cuda, "GEMM_TARGET_TILES", 1 << 20)

    def run():
        return [host(nbconv.conv3d(dev(x), dev(w), **kw))] + \
            [host(g) for g in nbconv.conv3d_backward(dev(gy), dev(x), dev(w), **kw)]

    default = run()
    monkeypatch.setattr(_cuda, "MAX_BLOCKS", 1)
    monkeypatch.setattr(_cuda, "THREADS_PER_BLOCK", 32)
    monkeypatch.setattr(gemm, "MAX_BLOCKS", 1)
    small = run()
    for a, b in zip(default, small):
        np.testing.assert_array_equal(a, b)
    refs = [R.conv_forward(x, w, pads=pads, mode="replicate"), *R.conv_grads(gy, x, w, pads=pads, mode="replicate")]
    for a, r in zip(default, refs):
        close(a, r, np.float32)


def test_weight_gradient_chunks_are_shape_determined():
    """The GEMM weight gradient's chunks depend on the shapes only (never on the device or the launch), and
    the partial sums stay within PARTIAL_BUDGET."""
    assert _cuda._gemm_chunks(100, 1, 10) == (100, 1)                 # too few pixels for a second chunk
    chunk, n = _cuda._gemm_chunks(1 << 20, 4, 1000)
    assert n == _cuda.GEMM_TARGET_TILES // 4 and chunk * n >= 1 << 20
    chunk, n = _cuda._gemm_chunks(1 << 20, 1, _cuda.PARTIAL_BUDGET // 2)
    assert n == 2


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
            axis = direct.Axis(stride=s, dilation=d, before=before)
            for a in range(n):
                found = [(t, o) for t in range(k) for part in range(3) for o in range(*direct._readers(
                    a, t, part, n, n_out, axis, code)) if direct._read(o, t, n, axis, code) == a]
                expected = [(t, o) for t in range(k) for o in range(n_out) if direct._read(o, t, n, axis, code) == a]
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


def test_bias_grad_with_zero_channels():
    gb = nbconv.conv.bias_grad(cuda.device_array((2, 3, 0), dtype=np.float32))
    assert tuple(gb.shape) == (0,) and gb.dtype == np.float32


# ---------------------------------------------------------------- devices, streams, allocation (no GPU needed)

class _TorchLike:
    """What nbconv reads of a PyTorch CUDA tensor."""
    __module__ = "torch"

    def __init__(self, index):
        self.device = types.SimpleNamespace(type="cuda", index=index)
        self.__cuda_array_interface__ = {"shape": (2,), "typestr": "<f4", "data": (4096, False), "version": 2}


class _CupyLike:
    def __init__(self, index, stream):
        self.device = types.SimpleNamespace(id=index)
        self.__cuda_array_interface__ = {"shape": (2,), "typestr": "<f4", "data": (4096, False), "version": 3,
                                         "stream": stream}


def test_producer_stream_and_device_of():
    torch_like, cupy_like = _TorchLike(1), _CupyLike(2, 12345)
    assert launch.producer_stream(torch_like) == ("torch", 1) and launch.device_of(torch_like) == 1
    assert launch.producer_stream(cupy_like) == ("handle", 12345) and launch.device_of(cupy_like) == 2
    assert launch.producer_stream(_CupyLike(0, None)) == ("default", None)
    assert launch.producer_stream(dev(np.ones(2))) == ("default", None)
    assert launch.device_of(dev(np.ones(2))) is None            # the simulator has no devices to tell apart


def test_choose_stream():
    assert launch.choose_stream([0, 0]) == (None, [])
    assert launch.choose_stream([0, 7, 7, 0]) == (1, [0])        # the default stream's work is waited for
    assert launch.choose_stream([5, 7, 5, 9]) == (0, [1, 3])


class _Recorder:
    def __init__(self):
        self.events = []

    def gpus(self):
        recorder = self

        class Gpus:
            def __getitem__(self, index):
                recorder.events.append(f"gpu {index}")
                return contextlib.nullcontext()

        return Gpus()


def test_placement_enters_the_arrays_device(monkeypatch):
    """A call on arrays of GPU 1 runs inside numba's context for GPU 1, whatever the current device."""
    rec = _Recorder()
    monkeypatch.setattr(launch, "SIMULATOR", False)
    monkeypatch.setattr(cuda, "gpus", rec.gpus(), raising=False)
    monkeypatch.setattr(launch, "launch_stream", lambda arrays: "stream")
    with launch.placement(None, _TorchLike(1), _TorchLike(1)) as stream:
        rec.events.append("kernels")
    assert rec.events == ["gpu 1", "kernels"] and stream == "stream"


class _Stream:
    def __init__(self, handle):
        self.handle = handle

    def __int__(self):
        return self.handle

    def __bool__(self):
        return True


def test_launch_stream_waits_for_the_other_producers(monkeypatch):
    """The launch goes to the first operand's stream, which waits (GPU-side events) for the other distinct
    streams; no operand stream: the default stream."""
    rec = _Recorder()

    class Event:
        def record(self, stream=0):
            rec.events.append(f"record on {int(stream)}")

        def wait(self, stream=0):
            rec.events.append(f"wait on {int(stream)}")

    monkeypatch.setattr(launch, "SIMULATOR", False)
    monkeypatch.setattr(cuda, "event", lambda timing=False: Event(), raising=False)
    monkeypatch.setattr(launch, "default_stream", lambda: _Stream(1))
    a, b, c = (types.SimpleNamespace(stream=s) for s in (_Stream(7), 0, _Stream(9)))
    assert int(launch.launch_stream([a, b, c, None])) == 7
    assert rec.events == ["record on 1", "wait on 7", "record on 9", "wait on 7"]
    assert int(launch.launch_stream([b])) == 1


def test_torch_tensor_wrapped_on_its_device_and_current_stream(monkeypatch):
    """A PyTorch tensor on cuda:1 is wrapped in GPU 1's context, without synchronizing, and carries
    PyTorch's current stream of GPU 1 (an external stream), so nbconv's kernels launch there."""
    torch = pytest.importorskip("torch")
    rec = _Recorder()
    monkeypatch.setattr(launch, "SIMULATOR", False)
    monkeypatch.setattr(cuda, "gpus", rec.gpus(), raising=False)

    def wrap(desc, owner=None, sync=True):
        rec.events.append(f"wrap sync={sync}")
        return types.SimpleNamespace(stream=0)

    monkeypatch.setattr(cuda, "from_cuda_array_interface", wrap, raising=False)
    monkeypatch.setattr(cuda, "external_stream", lambda handle: f"external {handle}", raising=False)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda index: types.SimpleNamespace(cuda_stream=4242))
    array = launch.as_array(_TorchLike(1))
    assert rec.events == ["gpu 1", "wrap sync=False"] and array.stream == "external 4242"


def test_cupy_array_keeps_its_stream_without_synchronizing(monkeypatch):
    rec = _Recorder()
    monkeypatch.setattr(launch, "SIMULATOR", False)
    monkeypatch.setattr(cuda, "gpus", rec.gpus(), raising=False)
    monkeypatch.setattr(cuda, "from_cuda_array_interface",
                        lambda desc, owner=None, sync=True: types.SimpleNamespace(stream=f"external {desc['stream']}",
                                                                                  sync=sync), raising=False)
    array = launch.as_array(_CupyLike(2, 77))
    assert rec.events == ["gpu 2"] and array.stream == "external 77" and array.sync is False


@pytest.mark.parametrize("path", ["gemm", "direct"], indirect=True)
def test_allocator_provides_results_and_workspaces(rng, path):
    """Within `allocator`, every result and workspace of a call comes from it (the PyTorch adapter installs
    PyTorch's caching allocator this way)."""
    allocated = []

    def allocate(shape, dtype):
        allocated.append(cuda.device_array(shape, dtype=dtype))
        return allocated[-1]

    def from_allocator(a):
        return any(_cuda._span(a)[0] == _cuda._span(b)[0] for b in allocated if b.size)

    x, w = data(rng, np.float32, (1, 4, 4, 2), (3, 3, 2, 3))
    with launch.allocator(allocate):
        y = nbconv.conv2d(dev(x), dev(w), padding=1, stride=2)
        grads = nbconv.conv2d_backward(dev(np.ones(tuple(y.shape), np.float32)), dev(x), dev(w), padding=1, stride=2)
    assert from_allocator(y) and all(from_allocator(g) for g in grads)
    assert len(allocated) > 4                                   # workspaces too (tables, partial sums, copies)
    close(host(y), R.conv_forward(x, w, stride=2, pads=1), np.float32)
    allocated.clear()
    nbconv.conv2d(dev(x), dev(w))
    assert allocated == []                                      # only within the block


def test_results_carry_a_stream(monkeypatch):
    """Arrays nbconv allocates carry a stream object (the default stream when no operand names one): numba
    synchronizes the host only around operations on arrays without one (the tape's fills and copies of
    device gradients go through numba's setitem), and exports the stream to consumers."""
    default = object()
    monkeypatch.setattr(launch, "default_stream", lambda: default)
    monkeypatch.setattr(launch, "SIMULATOR", False)
    assert _cuda.empty((2, 3), np.float32).stream is default
    monkeypatch.setattr(launch, "launch_stream", lambda arrays: "launch stream")
    gb = _cuda.grad_bias(dev(np.ones((2, 3, 4), np.float32)))
    assert gb.stream == "launch stream"


def test_results_made_before_a_call_move_to_its_device(monkeypatch, rng):
    """conv.py allocates a result (backend.empty) before the backend sees the arrays' device: a result made
    on another device is made again on the arrays' device."""
    x, w = data(rng, np.float32, (1, 3, 3, 2), (2, 2, 2, 2))
    dx, dw = dev(x), dev(w)
    devices = {id(dx): 1, id(dw): 1}
    monkeypatch.setattr(launch, "device_of", lambda a: devices.get(id(a), 0))
    out = _cuda.empty((1, 2, 2, 2), np.float32)
    y = _cuda.forward(dx, dw, None, nbconv._shapes.conv_params(x.shape, w.shape, stride=1, padding=0, dilation=1,
                                                              groups=1, padding_mode="zeros"), out)
    assert y is not out
    close(host(y), R.conv_forward(x, w), np.float32)


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
