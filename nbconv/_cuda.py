"""CUDA backend: channels-last convolutions with 1, 2 or 3 spatial dims on CUDA device arrays.

Implements :class:`nbconv._backend.Backend`. Imported lazily (by ``nbconv._backend.select``) when an
argument is a device array, so `import nbconv` never imports numba.cuda. Every function receives
validated arrays and a :class:`ConvParams` with one entry per spatial dim; x is (N, *spatial, C_in),
w is (*kernel, C_in // groups, C_out); results are new C-contiguous numba device arrays unless `out`
is given. Nothing is copied through the host.

One family of kernels serves every dimension count: each call is viewed as 3-D (D, H, W) by
inserting unit spatial axes in front (1-D: D = H = 1; 2-D: D = 1), as zero-copy views
(:func:`_as_5d`), and the parameters of the missing axes are stride 1, dilation 1, no padding.

Which kernels (the math is the CPU backend's, see nbconv/_cpu.py):

- forward, input gradient, transposed convolution, weight gradient: implicit-GEMM kernels
  (nbconv/_cuda_gemm.py) when a group has at least GEMM_MIN_COLUMNS columns (output channels for
  the forward and the weight gradient, input channels for the input gradient). Their operands are
  read as C-contiguous arrays: other layouts are copied once (one kernel) first. The input gradient
  runs one GEMM per sub-pixel phase; with reflect/replicate/circular padding it is computed for the
  padded input and folded back onto the input axis by axis (when the padded input is at most
  FOLD_LIMIT times the input; the direct gather otherwise).
- fewer columns per group (depthwise, small groups), and what no GEMM covers: the direct kernels of
  nbconv/_cuda_direct.py, which read any strides in place.
- bias gradient: per-chunk partial sums, then a fixed-order sum.
Weight and bias gradients are reduced in a fixed order (chunks depend on the shapes only): results
are bitwise reproducible, for any grid size.

Devices, streams and allocation (nbconv/_cuda_launch.py): each call runs on its arrays' device and
launches on the stream that orders it after their producers (PyTorch's current stream for PyTorch
tensors, the interface's stream for CuPy arrays, the arrays' own stream for numba arrays, else the
default stream); results and workspaces come from numba or from an allocator the caller installs
(:func:`nbconv._cuda_launch.allocator`). No call synchronizes the host.
"""
import numpy as np

from . import _cuda_direct as direct
from . import _cuda_gemm as gemm
from . import _cuda_launch as launch
from ._cuda_direct import SPATIAL, Axis, Geometry, geometry  # noqa: F401  (re-exported for tests and tools)

# Direct kernels: threads per block (a power of two >= 32; smaller for small problems) and the grid cap
# (grid-stride loops cover the rest). Under the simulator every thread is a Python thread that costs
# ~0.5 ms to start: few threads loop over more elements there (results do not depend on the grid).
THREADS_PER_BLOCK = 32 if launch.SIMULATOR else 256
MAX_BLOCKS = 4 if launch.SIMULATOR else 4096
PIXEL_CHUNK = 64          # direct weight/bias gradient: fewest output pixels per chunk
MAX_CHUNKS = 256          # most chunks (partial sums) per weight/bias-gradient element
PARTIAL_BUDGET = 1 << 24  # most partial-sum elements one gradient allocates
GEMM_MIN_COLUMNS = 8      # columns per group from which the implicit-GEMM kernels are used
GEMM_TARGET_TILES = 512   # weight gradient: split the pixels into chunks until the grid has this many tiles
GEMM_MIN_CHUNK = 512      # weight gradient: fewest output pixels per chunk
FOLD_LIMIT = 8            # input gradient with padding modes: largest padded/unpadded volume for the GEMM path


def _pow2(n):
    return 1 << max(0, int(n) - 1).bit_length()


def _flat_launch(total):
    """(blocks, threads) for a grid-stride loop over `total` items."""
    threads = min(THREADS_PER_BLOCK, _pow2(total))
    return min(-(-total // threads), MAX_BLOCKS), threads


def _tile_launch(channels, items):
    """(blocks, threads, lanes) for tiles of `lanes` channel lanes x (threads // lanes) item lanes."""
    lanes = min(32, _pow2(channels))
    threads = lanes * min(THREADS_PER_BLOCK // lanes, _pow2(items))
    tiles = -(-channels // lanes) * -(-items // (threads // lanes))
    return min(tiles, MAX_BLOCKS), threads, lanes


def _chunks(n_pix, width):
    """(chunk, n_chunks): output pixels per partial sum for a direct gradient with `width` elements
    (a function of the shapes only, so the reduction order never depends on the launch)."""
    if n_pix == 0:
        return 1, 0
    n_chunks = min(-(-n_pix // PIXEL_CHUNK), MAX_CHUNKS, max(1, PARTIAL_BUDGET // width))
    chunk = -(-n_pix // n_chunks)
    return chunk, -(-n_pix // chunk)


def _gemm_chunks(n_pix, tiles, width):
    """(chunk, n_chunks) of the GEMM weight gradient: enough chunks to give the grid GEMM_TARGET_TILES
    tiles, each of at least GEMM_MIN_CHUNK pixels, partial sums within PARTIAL_BUDGET (shapes only)."""
    n_chunks = min(max(1, -(-GEMM_TARGET_TILES // tiles)), max(1, n_pix // GEMM_MIN_CHUNK), MAX_CHUNKS,
                   max(1, PARTIAL_BUDGET // width))
    chunk = -(-n_pix // n_chunks)
    return chunk, -(-n_pix // chunk)


def _as_5d(a, at):
    """A zero-copy view of device array `a` with unit axes inserted at index `at` until it has five
    (activations (N, *spatial, C): at=1; weights (*kernel, C_in, C_out): at=0; vectors: at=0), for any
    strides (numba's reshape refuses non-contiguous device arrays)."""
    missing = SPATIAL + 2 - len(a.shape)
    if missing == 0:
        return a
    shape, strides = tuple(a.shape), tuple(a.strides)
    new_shape = shape[:at] + (1,) * missing + shape[at:]
    new_strides = strides[:at] + (a.dtype.itemsize,) * missing + strides[at:]
    if not hasattr(a, "gpu_data"):  # the simulator's arrays wrap a NumPy array, whose reshape never refuses
        return a.reshape(new_shape)
    from numba.cuda.cudadrv.devicearray import DeviceNDArray
    return DeviceNDArray(new_shape, new_strides, a.dtype, stream=a.stream, gpu_data=a.gpu_data)



def _span(a):
    """[first, last] byte addresses that a non-empty device array can touch."""
    iface = getattr(a, "__cuda_array_interface__", None)
    start = iface["data"][0] if iface is not None else a._ary.__array_interface__["data"][0]  # simulator
    lo = start + sum(min(0, (n - 1) * s) for n, s in zip(a.shape, a.strides))
    hi = start + sum(max(0, (n - 1) * s) for n, s in zip(a.shape, a.strides)) + a.dtype.itemsize - 1
    return lo, hi


class _Call:
    """One backend call's launch stream and allocations (inside launch.placement)."""

    def __init__(self, stream):
        self.stream = stream

    def empty(self, shape, dtype):
        return launch.empty(shape, dtype, self.stream)

    def to_device(self, host):
        dev = self.empty(host.shape, host.dtype)
        if host.size:
            dev.copy_to_device(host, stream=self.stream)
        return dev

    def launch(self, kernel, blocks, threads):
        return kernel[blocks, threads, self.stream]

    def flat(self, kernel, total):
        return kernel[(*_flat_launch(total), self.stream)]

    def contiguous(self, a):
        """5-D device array `a` itself when C-contiguous, else a C-contiguous copy."""
        if a.is_c_contiguous():
            return a
        c = self.empty(tuple(a.shape), a.dtype)
        if c.size:
            self.flat(direct.copy5, c.size)(a, c)
        return c

    def zeros(self, shape, dtype, bias=None):
        """A new C-contiguous array of `shape` holding 0 (or `bias` along its last axis)."""
        out = self.empty(shape, dtype)
        self.fill(out, bias)
        return out

    def fill(self, out, bias=None):
        if out.size:
            c = tuple(out.shape)[-1]
            mat = out.reshape(out.size // c, c)
            b, has_bias = self.bias_arg(bias, out.dtype)
            self.flat(direct.kernels(np.dtype(out.dtype)).fill, out.size)(mat, b, has_bias)

    def bias_arg(self, bias, dtype):
        """(bias, has_bias) for a kernel: a C-contiguous vector, or a placeholder when there is none."""
        if bias is None:
            return self.empty((1,), dtype), False
        return self.contiguous(_as_5d(bias, 0)).reshape(bias.shape[0]), True


def _fresh(out, device, call):
    """`out` made by `empty` (outside any call) re-made on the call's device and stream when needed."""
    if not getattr(out, "_nbconv_fresh", False):
        return out
    if device is not None and launch.device_of(out) != device:
        out = call.empty(tuple(out.shape), out.dtype)
    elif not launch.SIMULATOR:
        out.stream = call.stream
    return out


def _device(*arrays):
    return next((d for d in (launch.device_of(a) for a in arrays if a is not None) if d is not None), None)


# ---------------------------------------------------------------- the Backend interface

def as_array(a):
    """`a` as a numba device array without a copy, on its device and carrying its producer's stream
    (None stays None)."""
    return launch.as_array(a)


def empty(shape, dtype):
    """A new uninitialised C-contiguous device array (the calls that fill it re-make it on their
    arrays' device if that is not the current one)."""
    out = launch.empty(shape, dtype, launch.default_stream())
    out._nbconv_fresh = True
    return out


def check_out(out, inputs):
    """ValueError unless device array `out` is C-contiguous and shares no memory with any input."""
    if not out.is_c_contiguous():
        raise ValueError(f"out must be C-contiguous (out.strides={tuple(out.strides)})")
    if out.size == 0:
        return
    lo, hi = _span(out)
    for name, a in inputs.items():
        if a is not None and a.size:
            a_lo, a_hi = _span(a)
            if a_lo <= hi and lo <= a_hi:
                raise ValueError(f"out overlaps {name}; pass a separate array")


def _groups(x_channels, w5):
    cgi, c_out = w5.shape[3], w5.shape[4]
    groups = x_channels // cgi
    return groups, cgi, c_out // groups


def forward(x, w, bias, params, out):
    """out = conv(x, w) + bias; returns out."""
    with launch.placement(x, w, bias, out) as stream:
        call = _Call(stream)
        out = _fresh(out, _device(x, w), call)
        if out.size == 0:
            return out
        x5, w5, out5 = _as_5d(x, 1), _as_5d(w, 0), _as_5d(out, 1)
        dtype = np.dtype(out.dtype)
        groups, cgi, cgo = _groups(x5.shape[4], w5)
        geom = geometry(params)
        if cgo >= GEMM_MIN_COLUMNS:
            xc, wc = call.contiguous(x5), call.contiguous(w5)
            g, table, wide = gemm.forward_plan(tuple(xc.shape), tuple(wc.shape), tuple(out5.shape), geom)
            zero_pad = geom.mode == direct.ZEROS
            tile = gemm.tile_for(dtype, cgo, zero_pad, wide)
            b, has_bias = call.bias_arg(bias, dtype)
            blocks = min(gemm.tiles_of(g, tile), gemm.MAX_BLOCKS)
            call.launch(gemm.kernels(dtype, tile, wide, zero_pad).conv, blocks, tile.threads)(
                xc.reshape(xc.size), wc.reshape(wc.size), call.to_device(table.reshape(-1)), b, has_bias,
                out5.reshape(out5.size), g)
            return out
        b, has_bias = (bias, True) if bias is not None else call.bias_arg(None, dtype)
        blocks, threads, lanes = _tile_launch(out5.shape[4], out.size // out5.shape[4])
        call.launch(direct.kernels(dtype).forward, blocks, threads)(x5, w5, b, has_bias, out5, geom, lanes)
    return out


def _padded_geometry(geom):
    """geom for the padded input: no padding before, zero mode (positions never leave the padded input)."""
    axes = [Axis(ax.stride, ax.dilation, 0) for ax in geom[:3]]
    return Geometry(*axes, mode=direct.ZEROS)


def _input_grad(call, src, w, bias, dst, params):
    """dst = the input gradient (transposed convolution) of src through w plus bias; dst a C-contiguous
    device array of the input's shape, filled in place."""
    src5, w5, dst5 = _as_5d(src, 1), _as_5d(w, 0), _as_5d(dst, 1)
    dtype = np.dtype(dst.dtype)
    cgd = w5.shape[3]                     # destination channels per group
    geom = geometry(params)
    pads = ((0, 0),) * (SPATIAL - len(params.pads)) + tuple(params.pads)
    spatial = tuple(dst5.shape[1:4])
    padded = tuple(n + a + b for n, (a, b) in zip(spatial, pads))
    folds = geom.mode != direct.ZEROS and padded != spatial
    gemm_ok = cgd >= GEMM_MIN_COLUMNS and (not folds or np.prod(padded) <= FOLD_LIMIT * max(1, np.prod(spatial)))
    if not gemm_ok:
        wt = call.empty((*w5.shape[:3], w5.shape[4], w5.shape[3]), dtype)
        call.flat(direct.swap_channels, w.size)(w5, wt)
        b, has_bias = (bias, True) if bias is not None else call.bias_arg(None, dtype)
        call.flat(direct.kernels(dtype).gather, dst.size)(src5, wt, b, has_bias, dst5, geom)
        return dst
    target = dst5
    if folds:
        geom = _padded_geometry(geom)
        target = call.empty((dst5.shape[0], *padded, dst5.shape[4]), dtype)
    elif geom.mode != direct.ZEROS:
        geom = geom._replace(mode=direct.ZEROS)   # unpadded: the mode never applies
    srcc, wc = call.contiguous(src5), call.contiguous(w5)
    plan = gemm.input_grad_plan(tuple(target.shape), tuple(w5.shape), tuple(srcc.shape), geom)
    if not plan.covers:
        call.fill(target, bias)
    if plan.phases:
        wp = call.empty((len(plan.b_rows), cgd), dtype)          # every phase's B, (groups, taps, Cgo, Cgi)
        call.flat(direct.gather_rows, wp.size)(wc.reshape(wc.size), call.to_device(plan.b_rows), w5.shape[4], wp)
        wp = wp.reshape(wp.size)
        tile = gemm.tile_for(dtype, cgd, True, plan.wide)
        b, has_bias = call.bias_arg(bias, dtype)
        kernel = gemm.kernels(dtype, tile, plan.wide, True).conv
        table = call.to_device(plan.table.reshape(-1))
        for phase in plan.phases:
            if int(phase.m_count) == 0:
                continue
            blocks = min(gemm.tiles_of(phase, tile), gemm.MAX_BLOCKS)
            call.launch(kernel, blocks, tile.threads)(srcc.reshape(srcc.size), wp, table, b, has_bias,
                                                      target.reshape(target.size), phase)
    if folds:
        _fold(call, target, dst5, pads, params.mode)
    return dst


def _fold(call, padded, dst, pads, mode):
    """dst = the gradient of the padded input `padded` folded onto the input, axis by axis (W, H, D)."""
    from ._padding import CODES
    code = CODES[mode]
    kernel = direct.kernels(np.dtype(dst.dtype)).fold
    current = padded
    axes = [axis for axis in (3, 2, 1) if sum(pads[axis - 1])]
    for i, axis in enumerate(axes):
        before, after = pads[axis - 1]
        shape = list(current.shape)
        shape[axis] = dst.shape[axis]
        nxt = dst if i == len(axes) - 1 else call.empty(tuple(shape), dst.dtype)
        outer = int(np.prod(shape[:axis]))
        inner = int(np.prod(shape[axis + 1:]))
        call.flat(kernel, nxt.size)(current.reshape(outer, current.shape[axis], inner),
                                    nxt.reshape(outer, shape[axis], inner), before, after, code)
        current = nxt


def grad_input(gy, w, x_shape, params):
    """dL/dx of y = conv(x, w) for an x of shape x_shape, given gy = dL/dy (no atomics)."""
    with launch.placement(gy, w) as stream:
        call = _Call(stream)
        dst = call.empty(x_shape, gy.dtype)
        if dst.size:
            _input_grad(call, gy, w, None, dst, params)
        return dst


def _reduce(call, partial, width, dtype):
    """The column sums of partial viewed as (chunks, width), in a fixed order."""
    total = call.empty((width,), dtype)
    call.flat(direct.kernels(np.dtype(dtype)).sum_rows, width)(partial.reshape(partial.shape[0], width), total)
    return total


def grad_weight(gy, x, w_shape, params):
    """dL/dw of y = conv(x, w) for a w of shape w_shape, given gy (fixed-order reduction: bitwise
    reproducible)."""
    w_shape = tuple(int(n) for n in w_shape)
    w_shape5 = (1,) * (SPATIAL + 2 - len(w_shape)) + w_shape
    dtype = np.dtype(gy.dtype)
    with launch.placement(gy, x) as stream:
        call = _Call(stream)
        x5, gy5 = _as_5d(x, 1), _as_5d(gy, 1)
        c_out = w_shape[-1]
        groups = x5.shape[4] // w_shape[-2]
        cgo = c_out // groups
        n_pix = gy.size // c_out
        geom = geometry(params)
        if n_pix == 0:
            return call.zeros(w_shape, dtype)
        if cgo >= GEMM_MIN_COLUMNS:
            xc, gyc = call.contiguous(x5), call.contiguous(gy5)
            zero_pad = geom.mode == direct.ZEROS
            tile = gemm.tile_for(dtype, cgo, zero_pad, False)
            rows = int(np.prod(w_shape5[:4]))
            tiles = groups * -(-rows // tile.bm) * -(-cgo // tile.bn)
            chunk, n_chunks = _gemm_chunks(n_pix, tiles, int(np.prod(w_shape)))
            g, table, wide = gemm.weight_grad_plan(tuple(xc.shape), tuple(gyc.shape), w_shape5, geom, chunk, n_chunks)
            tile = gemm.tile_for(dtype, cgo, zero_pad, wide)
            result = call.empty(w_shape if n_chunks == 1 else (n_chunks, *w_shape), dtype)
            blocks = min(gemm.tiles_of(g, tile), gemm.MAX_BLOCKS)
            call.launch(gemm.kernels(dtype, tile, wide, zero_pad).wgrad, blocks, tile.threads)(
                xc.reshape(xc.size), gyc.reshape(gyc.size), call.to_device(table.reshape(-1)),
                result.reshape(result.size), g)
            if n_chunks == 1:
                return result
            return _reduce(call, result, int(np.prod(w_shape)), dtype).reshape(w_shape)
        n_rows = int(np.prod(w_shape[:-1]))
        chunk, n_chunks = _chunks(n_pix, n_rows * c_out)
        partial = call.empty((n_chunks, n_rows, c_out), dtype)
        blocks, threads, lanes = _tile_launch(c_out, n_rows)
        call.launch(direct.kernels(dtype).weight_partials, min(blocks * n_chunks, MAX_BLOCKS), threads)(
            x5, gy5, partial, w_shape5, geom, chunk, lanes)
        return _reduce(call, partial, n_rows * c_out, dtype).reshape(w_shape)


def grad_bias(gy):
    """dL/dbias: gy summed over every axis but the last (per-chunk partials, then a fixed-order sum)."""
    c_out = tuple(gy.shape)[-1]
    dtype = np.dtype(gy.dtype)
    with launch.placement(gy) as stream:
        call = _Call(stream)
        if c_out == 0:
            return call.empty((0,), dtype)
        chunk, n_chunks = _chunks(gy.size // c_out, c_out)
        if n_chunks == 0:
            return call.zeros((c_out,), dtype)
        partial = call.empty((n_chunks, c_out), dtype)
        call.flat(direct.kernels(dtype).bias_partials, n_chunks * c_out)(_as_5d(gy, 1), partial, chunk)
        return _reduce(call, partial, c_out, dtype)


def grad_weight_and_bias(gy, x, w_shape, params):
    """(grad_weight, grad_bias): two passes over gy on the GPU."""
    return grad_weight(gy, x, w_shape, params), grad_bias(gy)


def transpose(x, w, bias, params, output_padding, out):
    """out = conv_transpose(x, w) + bias: the input gradient of a convolution whose output is x,
    cropped by the pads (output_padding only enlarges out, whose shape conv.py has already set)."""
    with launch.placement(x, w, bias, out) as stream:
        call = _Call(stream)
        out = _fresh(out, _device(x, w), call)
        if out.size:
            _input_grad(call, x, w, bias, out, params)
        return out


# ---------------------------------------------------------------- device helpers for the tape

def add(a, b):
    """a + b as a new C-contiguous device array (same shape and dtype; C-contiguous operands): how the
    tape accumulates the gradients of a device Tensor used several times."""
    if tuple(a.shape) != tuple(b.shape) or a.dtype != b.dtype:
        raise ValueError(f"add needs equal shapes and dtypes, got {a.dtype}{tuple(a.shape)} and "
                         f"{b.dtype}{tuple(b.shape)}")
    if not (a.is_c_contiguous() and b.is_c_contiguous()):
        raise ValueError("add needs C-contiguous device arrays")
    with launch.placement(a, b) as stream:
        call = _Call(stream)
        out = call.empty(tuple(a.shape), a.dtype)
        if out.size:
            call.flat(direct.add_flat, out.size)(a.reshape(a.size), b.reshape(b.size), out.reshape(out.size))
        return out
