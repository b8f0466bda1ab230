"""CUDA backend: channels-last 2-D convolutions on CUDA device arrays (1-D callers pass H = 1).

Imported lazily by nbconv.conv when an argument is a device array, so `import nbconv` never imports
numba.cuda. Every function receives validated arrays and a 2-D :class:`ConvParams`; x is
(N, H, W, C_in), w is (KH, KW, C_in // groups, C_out); results are new C-contiguous numba device
arrays unless `out` is given. Arrays of any strides are read in place (the kernels index them
element by element), and nothing is copied through the host.

The math is the CPU backend's (see nbconv/_cpu.py), with the padding applied by index mapping
inside the kernels instead of by a padded copy:

    y[n, o, co]   = sum_{k, ci} x[n, src(o*s + k*d), g*Cg + ci] * w[k, ci, co]     (per spatial dim)
    gw[k, ci, co] = sum_{n, o} x[n, src(o*s + k*d), g*Cg + ci] * gy[n, o, co]
    gb[co]        = sum_{n, o} gy[n, o, co]
    gx[n, a, ci]  = sum_{i: src(i) = a} sum_{(o, k): o*s + k*d = i} gy[n, o, co] * w[k, ci, co]

src(i) maps padded position i to the input element it holds (PyTorch's padding modes), or to
nothing where "zeros" padding holds 0. The input gradient is a gather (one thread per element of
gx, no atomics): it enumerates the padded positions that copy its element (`_fold_range`: the
interior position plus at most two pad ranges) and, for each, the taps whose stride phase matches.
The transposed convolution is the same gather with "zeros" mode and the crop as `before`.

Design for a real GPU:
- Threads map to channels, the contiguous NHWC axis: consecutive threads write consecutive output
  elements and read consecutive weights; threads of one group that share a pixel read the same
  input element (a warp broadcast).
- forward: a block computes a tile of (channel lanes) x (pixel lanes) outputs; the weights of the
  block's channels are staged in shared memory, TILE elements at a time along the flattened
  (kh, kw, ci) reduction, and reused by every pixel lane.
- weight gradient: pass 1 gives each block a (channel lanes) x (kh, kw, ci rows) tile of the weight
  gradient and a fixed chunk of output pixels; grad_out for a slice of the chunk is staged in shared
  memory (reused by every row lane) with the pixel coordinates. Pass 2 sums the per-chunk partials
  in a fixed order. Chunks depend on the shapes only, so the result is bitwise reproducible for
  any grid size; no float atomics anywhere.
- input gradient / transposed conv: the weight is first rearranged to (KH, KW, C_src, Cg_dst) so the
  gather reads it along the thread's channel axis (coalesced).
- every kernel uses grid-stride loops over its tiles, so grid sizes are capped (MAX_BLOCKS).
Launches go to the default stream.
"""
import functools

import numpy as np
from numba import cuda, float32, float64, int32

THREADS_PER_BLOCK = 256   # a power of two >= 32; blocks may be smaller for small problems
MAX_BLOCKS = 4096         # grid-size cap: larger problems are covered by grid-stride loops
TILE = 1024               # elements of a shared-memory tile (8 KiB in float64)
PIXEL_CHUNK = 64          # fewest output pixels per weight/bias-gradient chunk
MAX_CHUNKS = 256          # most chunks (partial sums) per weight/bias-gradient element
PARTIAL_BUDGET = 1 << 24  # most partial-sum elements one gradient allocates

_MODES = {"zeros": 0, "reflect": 1, "replicate": 2, "circular": 3}
_NUMBA_TYPES = {np.dtype(np.float32): float32, np.dtype(np.float64): float64}


@cuda.jit(device=True)
def _imin(a, b):
    """The smaller of two integers (numba 0.68's CUDA target fails to compile the builtin min)."""
    return a if a < b else b


@cuda.jit(device=True)
def _source(p, before, n, mode):
    """Index of the input element that padded position p copies along an axis of length n with
    `before` leading pads in `mode` (0 zeros, 1 reflect, 2 replicate, 3 circular); -1 for a zero."""
    t = p - before
    if t >= 0 and t < n:
        return t
    if mode == 0:
        return -1
    if mode == 1:
        return -t if t < 0 else 2 * (n - 1) - t
    if mode == 2:
        return 0 if t < 0 else n - 1
    return t % n


@cuda.jit(device=True)
def _fold_range(a, before, after, n, mode, part):
    """Padded positions [lo, hi) whose value is input element a (axis of length n, pads before/after):
    part 0 is the interior position, parts 1 and 2 the copies in the leading and trailing pads."""
    if part == 0:
        return a + before, a + before + 1
    if mode == 1:
        t = -a if part == 1 else 2 * (n - 1) - a
        if (part == 1 and a >= 1 and a <= before) or (part == 2 and t >= n and t < n + after):
            return t + before, t + before + 1
    elif mode == 2:
        if part == 1 and a == 0:
            return 0, before
        if part == 2 and a == n - 1:
            return before + n, before + n + after
    elif mode == 3:
        t = a - n if part == 1 else a + n
        if (part == 1 and t >= -before) or (part == 2 and t < n + after):
            return t + before, t + before + 1
    return 0, 0


@functools.lru_cache(maxsize=None)
def _kernels(dtype):
    """The kernels for one float dtype (shared tiles and accumulators need it at compile time)."""
    scalar = dtype.type
    shared_type = _NUMBA_TYPES[dtype]

    @cuda.jit
    def forward(x, w, bias, has_bias, out, sh, sw, dh, dw, top, left, mode, lanes):
        """out[n,oh,ow,co] = bias[co] + sum_{kh,kw,ci} x[n, src(oh*sh+kh*dh), src(ow*sw+kw*dw), g*Cgi+ci]
        * w[kh,kw,ci,co]; blocks of lanes (a power of two <= 32) channel lanes x any pixel lanes."""
        ws = cuda.shared.array(TILE, shared_type)
        n_img, h, wd, _ = x.shape
        kh_dim, kw_dim, cgi, c_out = w.shape
        _, oh_dim, ow_dim, _ = out.shape
        cgo = c_out // (x.shape[3] // cgi)
        n_rows = kh_dim * kw_dim * cgi
        tid = cuda.threadIdx.x
        n_threads = cuda.blockDim.x
        lane = tid % lanes
        pixel_lanes = n_threads // lanes
        tile_rows = TILE // lanes
        n_pix = n_img * oh_dim * ow_dim
        co_tiles = (c_out + lanes - 1) // lanes
        n_tiles = co_tiles * ((n_pix + pixel_lanes - 1) // pixel_lanes)
        for tile in range(cuda.blockIdx.x, n_tiles, cuda.gridDim.x):
            co0 = (tile % co_tiles) * lanes
            co = co0 + lane
            pix = (tile // co_tiles) * pixel_lanes + tid // lanes
            active = co < c_out and pix < n_pix
            pix = _imin(pix, n_pix - 1)
            n = pix // (oh_dim * ow_dim)
            oh = (pix // ow_dim) % oh_dim
            ow = pix % ow_dim
            c_base = (_imin(co, c_out - 1) // cgo) * cgi
            acc = scalar(0)
            for r0 in range(0, n_rows, tile_rows):
                rows = _imin(tile_rows, n_rows - r0)
                cuda.syncthreads()
                for e in range(tid, rows * lanes, n_threads):
                    r = r0 + e // lanes
                    k = r // cgi
                    ws[e] = w[k // kw_dim, k % kw_dim, r % cgi, _imin(co0 + e % lanes, c_out - 1)]
                cuda.syncthreads()
                ci = r0 % cgi
                kw = (r0 // cgi) % kw_dim
                kh = r0 // (cgi * kw_dim)
                ih = _source(oh * sh + kh * dh, top, h, mode)
                iw = _source(ow * sw + kw * dw, left, wd, mode)
                for rr in range(rows):
                    if ih >= 0 and iw >= 0:
                        acc += x[n, ih, iw, c_base + ci] * ws[rr * lanes + lane]
                    ci += 1
                    if ci == cgi:
                        ci = 0
                        kw += 1
                        if kw == kw_dim:
                            kw = 0
                            kh += 1
                            ih = _source(oh * sh + kh * dh, top, h, mode)
                        iw = _source(ow * sw + kw * dw, left, wd, mode)
            if active:
                if has_bias:
                    acc += bias[co]
                out[n, oh, ow, co] = acc

    @cuda.jit
    def gather(src, wt, bias, has_bias, dst, sh, sw, dh, dw, top, bottom, left, right, mode):
        """dst[n,a,b,c] = bias[c] + sum over padded (i, j) copying (a, b) (pads top/bottom/left/right in
        `mode`) and taps with i = oh*sh+kh*dh, j = ow*sw+kw*dw inside src of
        src[n,oh,ow,g*Cgs+co] * wt[kh,kw,g*Cgs+co,c-g*Cgd]; wt is (KH, KW, C_src, Cg_dst)."""
        n_img, h, wd, c_dst = dst.shape
        _, oh_dim, ow_dim, c_src = src.shape
        kh_dim, kw_dim, _, cgd = wt.shape
        cgs = c_src // (c_dst // cgd)
        total = n_img * h * wd * c_dst
        for e in range(cuda.grid(1), total, cuda.gridsize(1)):
            c = e % c_dst
            b = (e // c_dst) % wd
            a = (e // (c_dst * wd)) % h
            n = e // (c_dst * wd * h)
            s0 = (c // cgd) * cgs
            cd = c % cgd
            acc = scalar(0)
            for part_h in range(3):
                i_lo, i_hi = _fold_range(a, top, bottom, h, mode, part_h)
                for i in range(i_lo, i_hi):
                    for kh in range(kh_dim):
                        t = i - kh * dh
                        if t < 0 or t % sh != 0 or t // sh >= oh_dim:
                            continue
                        oh = t // sh
                        for part_w in range(3):
                            j_lo, j_hi = _fold_range(b, left, right, wd, mode, part_w)
                            for j in range(j_lo, j_hi):
                                for kw in range(kw_dim):
                                    u = j - kw * dw
                                    if u < 0 or u % sw != 0 or u // sw >= ow_dim:
                                        continue
                                    ow = u // sw
                                    for co in range(s0, s0 + cgs):
                                        acc += src[n, oh, ow, co] * wt[kh, kw, co, cd]
            if has_bias:
                acc += bias[c]
            dst[n, a, b, c] = acc

    @cuda.jit
    def weight_partials(x, gy, partial, kw_dim, cgi, sh, sw, dh, dw, top, left, mode, chunk, lanes):
        """partial[b,r,co] = sum over output pixels p in chunk b (chunk pixels each) of gy[p,co] *
        x[n_p, src(oh_p*sh+kh*dh), src(ow_p*sw+kw*dw), g*Cgi+ci], r = (kh*KW+kw)*Cgi+ci; blocks of
        lanes (a power of two <= 32) channel lanes x any row lanes."""
        gs = cuda.shared.array(TILE, shared_type)
        pn = cuda.shared.array(TILE, int32)
        ph = cuda.shared.array(TILE, int32)
        pw = cuda.shared.array(TILE, int32)
        _, h, wd, c_in = x.shape
        _, oh_dim, ow_dim, c_out = gy.shape
        n_chunks, n_rows, _ = partial.shape
        cgo = c_out // (c_in // cgi)
        n_pix = gy.shape[0] * oh_dim * ow_dim
        tid = cuda.threadIdx.x
        n_threads = cuda.blockDim.x
        lane = tid % lanes
        row_lanes = n_threads // lanes
        tile_pix = TILE // lanes
        co_tiles = (c_out + lanes - 1) // lanes
        row_tiles = (n_rows + row_lanes - 1) // row_lanes
        for tile in range(cuda.blockIdx.x, co_tiles * row_tiles * n_chunks, cuda.gridDim.x):
            co0 = (tile % co_tiles) * lanes
            co = co0 + lane
            r = ((tile // co_tiles) % row_tiles) * row_lanes + tid // lanes
            chunk_id = tile // (co_tiles * row_tiles)
            active = co < c_out and r < n_rows
            rc = _imin(r, n_rows - 1)
            ci = rc % cgi
            kw = (rc // cgi) % kw_dim
            kh = rc // (cgi * kw_dim)
            c = (_imin(co, c_out - 1) // cgo) * cgi + ci
            p_lo = chunk_id * chunk
            p_hi = _imin(p_lo + chunk, n_pix)
            acc = scalar(0)
            for s0 in range(p_lo, p_hi, tile_pix):
                count = _imin(tile_pix, p_hi - s0)
                cuda.syncthreads()
                for e in range(tid, count * lanes, n_threads):
                    p = s0 + e // lanes
                    n = p // (oh_dim * ow_dim)
                    oh = (p // ow_dim) % oh_dim
                    ow = p % ow_dim
                    gs[e] = gy[n, oh, ow, _imin(co0 + e % lanes, c_out - 1)]
                    if e % lanes == 0:
                        pn[e // lanes] = n
                        ph[e // lanes] = oh * sh
                        pw[e // lanes] = ow * sw
                cuda.syncthreads()
                for q in range(count):
                    ih = _source(ph[q] + kh * dh, top, h, mode)
                    iw = _source(pw[q] + kw * dw, left, wd, mode)
                    if ih >= 0 and iw >= 0:
                        acc += x[pn[q], ih, iw, c] * gs[q * lanes + lane]
            if active:
                partial[chunk_id, r, co] = acc

    @cuda.jit
    def bias_partials(gy, partial, chunk):
        """partial[b, co] = sum of gy[p, co] over output pixels p in chunk b (chunk pixels each)."""
        n_img, oh_dim, ow_dim, c_out = gy.shape
        n_pix = n_img * oh_dim * ow_dim
        for e in range(cuda.grid(1), partial.shape[0] * c_out, cuda.gridsize(1)):
            co = e % c_out
            p_lo = (e // c_out) * chunk
            acc = scalar(0)
            for p in range(p_lo, _imin(p_lo + chunk, n_pix)):
                acc += gy[p // (oh_dim * ow_dim), (p // ow_dim) % oh_dim, p % ow_dim, co]
            partial[e // c_out, co] = acc

    @cuda.jit
    def sum_rows(partial, out):
        """out[j] = sum_b partial[b, j], b ascending (a fixed order: bitwise reproducible)."""
        for j in range(cuda.grid(1), out.shape[0], cuda.gridsize(1)):
            acc = scalar(0)
            for b in range(partial.shape[0]):
                acc += partial[b, j]
            out[j] = acc

    return forward, gather, weight_partials, bias_partials, sum_rows


@cuda.jit
def _swap_last(w, wt):
    """wt[kh, kw, j, i] = w[kh, kw, i, j]."""
    kh_dim, kw_dim, n_i, n_j = w.shape
    for e in range(cuda.grid(1), kh_dim * kw_dim * n_i * n_j, cuda.gridsize(1)):
        i = e % n_i
        j = (e // n_i) % n_j
        k = e // (n_i * n_j)
        wt[k // kw_dim, k % kw_dim, j, i] = w[k // kw_dim, k % kw_dim, i, j]


@cuda.jit
def _add_flat(a, b, out):
    """out[i] = a[i] + b[i] over 1-D arrays of one length."""
    for i in range(cuda.grid(1), out.shape[0], cuda.gridsize(1)):
        out[i] = a[i] + b[i]


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
    """(chunk, n_chunks): output pixels per partial sum for a gradient with `width` elements
    (a function of the shapes only, so the reduction order never depends on the launch)."""
    if n_pix == 0:
        return 1, 0
    n_chunks = min(-(-n_pix // PIXEL_CHUNK), MAX_CHUNKS, max(1, PARTIAL_BUDGET // width))
    chunk = -(-n_pix // n_chunks)
    return chunk, -(-n_pix // chunk)


def _bias_arg(bias, dtype):
    return (cuda.device_array(1, dtype=dtype), False) if bias is None else (bias, True)


def as_device_array(a):
    """`a` as a numba device array: itself, or a zero-copy view of a __cuda_array_interface__ object."""
    if type(a).__module__.startswith("numba.cuda"):   # numba's device arrays, real or simulated
        return a
    if not hasattr(cuda, "as_cuda_array"):
        raise TypeError(f"{type(a).__name__} exposes __cuda_array_interface__, which Numba's CUDA simulator "
                        "cannot read: pass numba device arrays (cuda.to_device) under the simulator")
    return cuda.as_cuda_array(a)


def unit_axis(a, axis):
    """A view of device array `a` with a length-1 axis inserted at `axis`, for any strides (numba's
    reshape refuses non-contiguous device arrays)."""
    shape, strides = tuple(a.shape), tuple(a.strides)
    new_shape = shape[:axis] + (1,) + shape[axis:]
    new_strides = strides[:axis] + (a.dtype.itemsize,) + strides[axis:]
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


def empty(shape, dtype):
    """A new result array on the device."""
    return cuda.device_array(shape, dtype=np.dtype(dtype))


def forward(x, w, bias, params, out):
    """out = conv(x, w) + bias."""
    n, oh, ow, c_out = out.shape
    if out.size == 0:
        return out
    (top, _), (left, _) = params.pads
    (sh, sw), (dh, dw) = params.stride, params.dilation
    bias, has_bias = _bias_arg(bias, out.dtype)
    blocks, threads, lanes = _tile_launch(c_out, n * oh * ow)
    _kernels(np.dtype(out.dtype))[0][blocks, threads](
        x, w, bias, has_bias, out, sh, sw, dh, dw, top, left, _MODES[params.mode], lanes)
    return out


def _gather(src, w, bias, dst, stride, dilation, pads, mode):
    """dst = the gather of src through w (see the module docstring); dst filled in place."""
    if dst.size == 0:
        return dst
    kh, kw, cgd, c_src = w.shape
    wt = cuda.device_array((kh, kw, c_src, cgd), dtype=w.dtype)
    _swap_last[_flat_launch(w.size)](w, wt)
    (top, bottom), (left, right) = pads
    bias, has_bias = _bias_arg(bias, dst.dtype)
    _kernels(np.dtype(dst.dtype))[1][_flat_launch(dst.size)](
        src, wt, bias, has_bias, dst, *stride, *dilation, top, bottom, left, right, _MODES[mode])
    return dst


def grad_input(gy, w, x_shape, params):
    """dL/dx of y = conv(x, w) given gy = dL/dy (a gather, no atomics)."""
    gx = cuda.device_array(x_shape, dtype=gy.dtype)
    return _gather(gy, w, None, gx, params.stride, params.dilation, params.pads, params.mode)


def _reduce(partial, width, dtype):
    """The column sums of partial viewed as (chunks, width), in a fixed order."""
    total = cuda.device_array(width, dtype=dtype)
    _kernels(np.dtype(dtype))[4][_flat_launch(width)](partial.reshape(partial.shape[0], width), total)
    return total


def grad_weight(gy, x, w_shape, params):
    """dL/dw of y = conv(x, w) given gy = dL/dy (two passes, bitwise reproducible)."""
    kh, kw, cgi, c_out = w_shape
    n_rows = kh * kw * cgi
    n, oh, ow, _ = gy.shape
    chunk, n_chunks = _chunks(n * oh * ow, n_rows * c_out)
    partial = cuda.device_array((n_chunks, n_rows, c_out), dtype=gy.dtype)
    if n_chunks:
        (top, _), (left, _) = params.pads
        (sh, sw), (dh, dw) = params.stride, params.dilation
        blocks, threads, lanes = _tile_launch(c_out, n_rows)
        _kernels(np.dtype(gy.dtype))[2][min(blocks * n_chunks, MAX_BLOCKS), threads](
            x, gy, partial, kw, cgi, sh, sw, dh, dw, top, left, _MODES[params.mode], chunk, lanes)
    return _reduce(partial, n_rows * c_out, gy.dtype).reshape(w_shape)


def grad_bias(gy):
    """dL/dbias: gy summed over every axis but the last (per-chunk partials, then a fixed-order sum)."""
    n, oh, ow, c_out = gy.shape
    chunk, n_chunks = _chunks(n * oh * ow, c_out)
    partial = cuda.device_array((n_chunks, c_out), dtype=gy.dtype)
    if n_chunks:
        _kernels(np.dtype(gy.dtype))[3][_flat_launch(n_chunks * c_out)](gy, partial, chunk)
    return _reduce(partial, c_out, gy.dtype)


def transpose(x, w, bias, params, output_padding, out):
    """out = conv_transpose(x, w) + bias: the input gradient of a convolution whose output is x,
    cropped by the pads (output_padding only enlarges out, whose shape conv.py has already set)."""
    return _gather(x, w, bias, out, params.stride, params.dilation, params.pads, "zeros")


def add(a, b):
    """a + b as a new C-contiguous device array (same shape and dtype; C-contiguous operands): how the
    tape accumulates the gradients of a device Tensor used several times."""
    if tuple(a.shape) != tuple(b.shape) or a.dtype != b.dtype:
        raise ValueError(f"add needs equal shapes and dtypes, got {a.dtype}{tuple(a.shape)} and "
                         f"{b.dtype}{tuple(b.shape)}")
    if not (a.is_c_contiguous() and b.is_c_contiguous()):
        raise ValueError("add needs C-contiguous device arrays")
    out = cuda.device_array(tuple(a.shape), dtype=a.dtype)
    if out.size:
        _add_flat[_flat_launch(out.size)](a.reshape(a.size), b.reshape(b.size), out.reshape(out.size))
    return out
