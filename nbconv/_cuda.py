"""CUDA backend: channels-last convolutions with 1, 2 or 3 spatial dims on CUDA device arrays.

Implements :class:`nbconv._backend.Backend`. Imported lazily (by ``nbconv._backend.select``) when an
argument is a device array, so `import nbconv` never imports numba.cuda. Every function receives
validated arrays and a :class:`ConvParams` with one entry per spatial dim; x is (N, *spatial, C_in),
w is (*kernel, C_in // groups, C_out); results are new C-contiguous numba device arrays unless `out`
is given. Arrays of any strides are read in place (the kernels index them element by element), and
nothing is copied through the host.

One family of kernels serves every dimension count: each call is viewed as 3-D (D, H, W) by
inserting unit spatial axes in front (1-D: D = H = 1; 2-D: D = 1), as zero-copy views
(:func:`_as_3d`), and the parameters of the missing axes are stride 1, dilation 1, no padding.

The math is the CPU backend's (see nbconv/_cpu.py), with the padding applied by index mapping
inside the kernels instead of by a padded copy. Per spatial axis, output position o reads input
position t = o*s + k*d - before through tap k, and src(t) (nbconv._padding.source_index, compiled
here as a device function) is the element it copies, or nothing where "zeros" padding holds 0:

    y[n, o, co]   = sum_{k, ci} x[n, src(o*s + k*d - before), g*Cg + ci] * w[k, ci, co]   (per axis)
    gw[k, ci, co] = sum_{n, o} x[n, src(o*s + k*d - before), g*Cg + ci] * gy[n, o, co]
    gb[co]        = sum_{n, o} gy[n, o, co]
    gx[n, a, ci]  = sum_{(o, k): src(o*s + k*d - before) = a} gy[n, o, co] * w[k, ci, co]

The input gradient is a gather (one thread per element of gx, no atomics): per axis and tap it
enumerates the output positions that can read element a (`_readers`: the one reading a itself, and
those reading the padding, where another copy of a may sit) and keeps those whose src(t) is a. The
transposed convolution is the same gather in "zeros" mode with the crop as `before`.

Design for a real GPU:
- Threads map to channels, the contiguous channels-last axis: consecutive threads write consecutive
  output elements and read consecutive weights; threads of one group that share a pixel read the
  same input element (a warp broadcast).
- forward: a block computes a tile of (channel lanes) x (pixel lanes) outputs; the weights of the
  block's channels are staged in shared memory, TILE elements at a time along the flattened
  (kd, kh, kw, ci) reduction, and reused by every pixel lane.
- weight gradient: pass 1 gives each block a (channel lanes) x (kd, kh, kw, ci rows) tile of the
  weight gradient and a fixed chunk of output pixels; grad_out for a slice of the chunk is staged in
  shared memory (reused by every row lane) with the pixel coordinates. Pass 2 sums the per-chunk
  partials in a fixed order. Chunks depend on the shapes only, so the result is bitwise reproducible
  for any grid size; no float atomics anywhere.
- input gradient / transposed conv: the weight is first rearranged to (KD, KH, KW, C_src, Cg_dst) so
  the gather reads it along the thread's channel axis (coalesced).
- every kernel uses grid-stride loops over its tiles, so grid sizes are capped (MAX_BLOCKS).
- indices are 64-bit (parameters may be as large as 2**62, see nbconv._shapes.MAX_PARAM).
Launches go to the default stream.
"""
import functools
from typing import NamedTuple

import numpy as np
from numba import cuda, float32, float64, int64

from ._device import as_device_array
from ._padding import CODES, ZEROS, source_index

THREADS_PER_BLOCK = 256   # a power of two >= 32; blocks may be smaller for small problems
MAX_BLOCKS = 4096         # grid-size cap: larger problems are covered by grid-stride loops
TILE = 1024               # elements of a shared-memory tile (8 KiB in float64)
PIXEL_CHUNK = 64          # fewest output pixels per weight/bias-gradient chunk
MAX_CHUNKS = 256          # most chunks (partial sums) per weight/bias-gradient element
PARTIAL_BUDGET = 1 << 24  # most partial-sum elements one gradient allocates
SPATIAL = 3               # the spatial dims every kernel works in (fewer are viewed with unit axes)

_NUMBA_TYPES = {np.dtype(np.float32): float32, np.dtype(np.float64): float64}


class Axis(NamedTuple):
    """One spatial axis as the kernels see it: output position o reads input position
    o * stride + k * dilation - before through tap k."""

    stride: int
    dilation: int
    before: int


class Geometry(NamedTuple):
    """The three spatial axes of a convolution viewed as 3-D, and its padding mode code
    (nbconv._padding.CODES). Passed to the kernels as one argument."""

    depth: Axis
    height: Axis
    width: Axis
    mode: int


def _geometry(params):
    """The Geometry of ConvParams with 1, 2 or 3 spatial dims (missing leading axes are plain)."""
    plain = (Axis(stride=1, dilation=1, before=0),) * (SPATIAL - len(params.stride))
    axes = tuple(Axis(stride=int(s), dilation=int(d), before=int(before))
                 for s, d, (before, _) in zip(params.stride, params.dilation, params.pads))
    return Geometry(*plain, *axes, mode=CODES[params.mode])


_source_index = cuda.jit(device=True)(source_index)


@cuda.jit(device=True)
def _imin(a, b):
    """The smaller of two integers (numba 0.68's own CUDA target fails to compile the builtin min)."""
    return a if a < b else b


@cuda.jit(device=True)
def _imax(a, b):
    """The larger of two integers (numba 0.68's own CUDA target fails to compile the builtin max)."""
    return a if a > b else b


@cuda.jit(device=True)
def _pixel(p, shape):
    """(n, d, h, w): coordinates of flat pixel index p in a channels-last (N, D, H, W, C) shape."""
    w = p % shape[3]
    p //= shape[3]
    h = p % shape[2]
    p //= shape[2]
    return p // shape[1], p % shape[1], h, w


@cuda.jit(device=True)
def _tap(t, shape):
    """(kd, kh, kw): coordinates of flat tap index t in a weight shape (KD, KH, KW, ...)."""
    kw = t % shape[2]
    t //= shape[2]
    return t // shape[1], t % shape[1], kw


@cuda.jit(device=True)
def _read(o, k, n, axis, mode):
    """Index of the element (axis of length n) that output position o reads through tap k; -1 for a zero pad."""
    return _source_index(o * axis.stride + k * axis.dilation - axis.before, n, mode)


@cuda.jit(device=True)
def _reads(od, oh, ow, kd, kh, kw, x, geom):
    """(inside, d, h, w): the pixel of x (N, D, H, W, C) that output pixel (od, oh, ow) reads through tap
    (kd, kh, kw); inside is False where that is zero padding."""
    d = _read(od, kd, x.shape[1], geom.depth, geom.mode)
    h = _read(oh, kh, x.shape[2], geom.height, geom.mode)
    w = _read(ow, kw, x.shape[3], geom.width, geom.mode)
    return d >= 0 and h >= 0 and w >= 0, d, h, w


@cuda.jit(device=True)
def _readers(a, k, part, n, n_out, axis, mode):
    """[lo, hi): the output positions (of n_out) that may read element a (axis of length n) through tap
    k: part 0 those reading the leading padding, part 1 the one reading position a itself, part 2 those
    reading the trailing padding (callers keep the o whose _read is a; "zeros" padding copies nothing)."""
    base = k * axis.dilation - axis.before  # o reads position o * stride + base
    if part == 1:
        q = a - base
        if q < 0 or q % axis.stride != 0 or q // axis.stride >= n_out:
            return 0, 0
        return q // axis.stride, q // axis.stride + 1
    if mode == ZEROS:
        return 0, 0
    if part == 0:
        return 0, _imin(-(base // axis.stride), n_out)                # o * stride + base < 0
    return _imax(-((base - n) // axis.stride), 0), n_out               # o * stride + base >= n


class Kernels(NamedTuple):
    """The kernels of one float dtype (see :func:`_kernels`)."""

    forward: object
    gather: object
    weight_partials: object
    bias_partials: object
    sum_rows: object


@functools.lru_cache(maxsize=None)
def _kernels(dtype):
    """The kernels for one float dtype (shared tiles and accumulators need it at compile time)."""
    scalar = dtype.type
    shared_type = _NUMBA_TYPES[dtype]

    @cuda.jit
    def forward(x, w, bias, has_bias, out, geom, lanes):
        """out[n,o,co] = bias[co] + sum_{k,ci} x[n, read(o, k), g*Cgi+ci] * w[k,ci,co] over 3-D x, w, out (5-D
        arrays); blocks of `lanes` (a power of two <= 32) channel lanes x any pixel lanes."""
        ws = cuda.shared.array(TILE, shared_type)
        cgi, c_out = w.shape[3], w.shape[4]
        cgo = c_out // (x.shape[4] // cgi)
        n_rows = w.shape[0] * w.shape[1] * w.shape[2] * cgi
        n_pix = out.shape[0] * out.shape[1] * out.shape[2] * out.shape[3]
        tid = cuda.threadIdx.x
        n_threads = cuda.blockDim.x
        lane = tid % lanes
        pixel_lanes = n_threads // lanes
        tile_rows = TILE // lanes
        co_tiles = (c_out + lanes - 1) // lanes
        n_tiles = co_tiles * ((n_pix + pixel_lanes - 1) // pixel_lanes)
        for tile in range(cuda.blockIdx.x, n_tiles, cuda.gridDim.x):
            co0 = (tile % co_tiles) * lanes
            co = co0 + lane
            pix = (tile // co_tiles) * pixel_lanes + tid // lanes
            active = co < c_out and pix < n_pix
            n, od, oh, ow = _pixel(_imin(pix, n_pix - 1), out.shape)
            c_base = (_imin(co, c_out - 1) // cgo) * cgi
            acc = scalar(0)
            for r0 in range(0, n_rows, tile_rows):
                rows = _imin(tile_rows, n_rows - r0)
                cuda.syncthreads()
                for e in range(tid, rows * lanes, n_threads):
                    r = r0 + e // lanes
                    kd, kh, kw = _tap(r // cgi, w.shape)
                    ws[e] = w[kd, kh, kw, r % cgi, _imin(co0 + e % lanes, c_out - 1)]
                cuda.syncthreads()
                tap, ci = r0 // cgi, r0 % cgi
                kd, kh, kw = _tap(tap, w.shape)
                inside, i_d, i_h, i_w = _reads(od, oh, ow, kd, kh, kw, x, geom)
                for rr in range(rows):
                    if inside:
                        acc += x[n, i_d, i_h, i_w, c_base + ci] * ws[rr * lanes + lane]
                    ci += 1
                    if ci == cgi:
                        ci = 0
                        tap += 1
                        kd, kh, kw = _tap(tap, w.shape)
                        inside, i_d, i_h, i_w = _reads(od, oh, ow, kd, kh, kw, x, geom)
            if active:
                if has_bias:
                    acc += bias[co]
                out[n, od, oh, ow, co] = acc

    @cuda.jit
    def gather(src, wt, bias, has_bias, dst, geom):
        """dst[n,a,c] = bias[c] + sum over taps k and src pixels o with read(o, k) = a on every axis of
        sum_co src[n,o,g*Cgs+co] * wt[k,g*Cgs+co,c-g*Cgd]; 5-D arrays, wt is (KD, KH, KW, C_src, Cg_dst)."""
        _, d_dim, h_dim, w_dim, c_dst = dst.shape
        _, od_dim, oh_dim, ow_dim, c_src = src.shape
        kd_dim, kh_dim, kw_dim, _, cgd = wt.shape
        cgs = c_src // (c_dst // cgd)
        mode = geom.mode
        for e in range(cuda.grid(1), dst.size, cuda.gridsize(1)):
            c = e % c_dst
            n, a_d, a_h, a_w = _pixel(e // c_dst, dst.shape)
            s0 = (c // cgd) * cgs
            cd = c % cgd
            acc = scalar(0)
            for kp_d in range(3 * kd_dim):
                kd = kp_d // 3
                lo_d, hi_d = _readers(a_d, kd, kp_d % 3, d_dim, od_dim, geom.depth, mode)
                for od in range(lo_d, hi_d):
                    if _read(od, kd, d_dim, geom.depth, mode) != a_d:
                        continue
                    for kp_h in range(3 * kh_dim):
                        kh = kp_h // 3
                        lo_h, hi_h = _readers(a_h, kh, kp_h % 3, h_dim, oh_dim, geom.height, mode)
                        for oh in range(lo_h, hi_h):
                            if _read(oh, kh, h_dim, geom.height, mode) != a_h:
                                continue
                            for kp_w in range(3 * kw_dim):
                                kw = kp_w // 3
                                lo_w, hi_w = _readers(a_w, kw, kp_w % 3, w_dim, ow_dim, geom.width, mode)
                                for ow in range(lo_w, hi_w):
                                    if _read(ow, kw, w_dim, geom.width, mode) != a_w:
                                        continue
                                    for co in range(s0, s0 + cgs):
                                        acc += src[n, od, oh, ow, co] * wt[kd, kh, kw, co, cd]
            if has_bias:
                acc += bias[c]
            dst[n, a_d, a_h, a_w, c] = acc

    @cuda.jit
    def weight_partials(x, gy, partial, w_shape, geom, chunk, lanes):
        """partial[b,r,co] = sum over output pixels p in chunk b (`chunk` pixels each) of gy[p,co] *
        x[n_p, read(o_p, k), g*Cgi+ci] for row r = tap(k)*Cgi+ci of a weight of 5-D w_shape; blocks of
        `lanes` (a power of two <= 32) channel lanes x any row lanes."""
        gs = cuda.shared.array(TILE, shared_type)
        coords = cuda.shared.array((4, TILE), int64)  # (n, od, oh, ow) of the staged pixels
        n_chunks, n_rows, c_out = partial.shape
        cgi = w_shape[3]
        cgo = c_out // (x.shape[4] // cgi)
        n_pix = gy.shape[0] * gy.shape[1] * gy.shape[2] * gy.shape[3]
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
            kd, kh, kw = _tap(rc // cgi, w_shape)
            c = (_imin(co, c_out - 1) // cgo) * cgi + rc % cgi
            p_lo = chunk_id * chunk
            p_hi = _imin(p_lo + chunk, n_pix)
            acc = scalar(0)
            for s0 in range(p_lo, p_hi, tile_pix):
                count = _imin(tile_pix, p_hi - s0)
                cuda.syncthreads()
                for e in range(tid, count * lanes, n_threads):
                    q = e // lanes
                    n, od, oh, ow = _pixel(s0 + q, gy.shape)
                    gs[e] = gy[n, od, oh, ow, _imin(co0 + e % lanes, c_out - 1)]
                    if e % lanes == 0:
                        coords[0, q] = n
                        coords[1, q] = od
                        coords[2, q] = oh
                        coords[3, q] = ow
                cuda.syncthreads()
                for q in range(count):
                    inside, i_d, i_h, i_w = _reads(coords[1, q], coords[2, q], coords[3, q], kd, kh, kw, x, geom)
                    if inside:
                        acc += x[coords[0, q], i_d, i_h, i_w, c] * gs[q * lanes + lane]
            if active:
                partial[chunk_id, r, co] = acc

    @cuda.jit
    def bias_partials(gy, partial, chunk):
        """partial[b, co] = sum of gy[p, co] over the output pixels p of chunk b (`chunk` pixels each); gy 5-D."""
        c_out = gy.shape[4]
        n_pix = gy.size // c_out
        for e in range(cuda.grid(1), partial.shape[0] * c_out, cuda.gridsize(1)):
            co = e % c_out
            p_lo = (e // c_out) * chunk
            acc = scalar(0)
            for p in range(p_lo, _imin(p_lo + chunk, n_pix)):
                n, od, oh, ow = _pixel(p, gy.shape)
                acc += gy[n, od, oh, ow, co]
            partial[e // c_out, co] = acc

    @cuda.jit
    def sum_rows(partial, out):
        """out[j] = sum_b partial[b, j], b ascending (a fixed order: bitwise reproducible)."""
        for j in range(cuda.grid(1), out.shape[0], cuda.gridsize(1)):
            acc = scalar(0)
            for b in range(partial.shape[0]):
                acc += partial[b, j]
            out[j] = acc

    return Kernels(forward=forward, gather=gather, weight_partials=weight_partials,
                   bias_partials=bias_partials, sum_rows=sum_rows)


@cuda.jit
def _swap_channels(w, wt):
    """wt[kd, kh, kw, j, i] = w[kd, kh, kw, i, j]: the last two axes of 5-D w swapped into wt."""
    n_i, n_j = w.shape[3], w.shape[4]
    for e in range(cuda.grid(1), w.size, cuda.gridsize(1)):
        i = e % n_i
        j = (e // n_i) % n_j
        kd, kh, kw = _tap(e // (n_i * n_j), w.shape)
        wt[kd, kh, kw, j, i] = w[kd, kh, kw, i, j]


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
    """(bias, has_bias) for a kernel: a placeholder array when there is no bias."""
    return (cuda.device_array(1, dtype=dtype), False) if bias is None else (bias, True)


def _as_3d(a, at):
    """A zero-copy view of device array `a` with unit spatial axes inserted at index `at` until it has
    three (activations (N, *spatial, C): at=1; weights (*kernel, C_in, C_out): at=0), for any strides
    (numba's reshape refuses non-contiguous device arrays)."""
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


# ---------------------------------------------------------------- the Backend interface

def as_array(a):
    """`a` as a numba device array without a copy (None stays None)."""
    return None if a is None else as_device_array(a)


def empty(shape, dtype):
    """A new uninitialised C-contiguous device array."""
    return cuda.device_array(tuple(shape), dtype=np.dtype(dtype))


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


def forward(x, w, bias, params, out):
    """out = conv(x, w) + bias; returns out."""
    if out.size == 0:
        return out
    out3 = _as_3d(out, 1)
    c_out = out3.shape[4]
    bias, has_bias = _bias_arg(bias, out.dtype)
    blocks, threads, lanes = _tile_launch(c_out, out.size // c_out)
    _kernels(np.dtype(out.dtype)).forward[blocks, threads](
        _as_3d(x, 1), _as_3d(w, 0), bias, has_bias, out3, _geometry(params), lanes)
    return out


def _gather(src, w, bias, dst, params):
    """dst = the gather of src through w (see the module docstring); dst filled in place."""
    if dst.size == 0:
        return dst
    w3 = _as_3d(w, 0)
    kd, kh, kw, cgd, c_src = w3.shape
    wt = cuda.device_array((kd, kh, kw, c_src, cgd), dtype=w.dtype)
    _swap_channels[_flat_launch(w.size)](w3, wt)
    bias, has_bias = _bias_arg(bias, dst.dtype)
    _kernels(np.dtype(dst.dtype)).gather[_flat_launch(dst.size)](
        _as_3d(src, 1), wt, bias, has_bias, _as_3d(dst, 1), _geometry(params))
    return dst


def grad_input(gy, w, x_shape, params):
    """dL/dx of y = conv(x, w) for an x of shape x_shape, given gy = dL/dy (a gather, no atomics)."""
    return _gather(gy, w, None, empty(x_shape, gy.dtype), params)


def _reduce(partial, width, dtype):
    """The column sums of partial viewed as (chunks, width), in a fixed order."""
    total = cuda.device_array(width, dtype=dtype)
    _kernels(np.dtype(dtype)).sum_rows[_flat_launch(width)](partial.reshape(partial.shape[0], width), total)
    return total


def grad_weight(gy, x, w_shape, params):
    """dL/dw of y = conv(x, w) for a w of shape w_shape, given gy (two passes, bitwise reproducible)."""
    w_shape = tuple(w_shape)
    w_shape3 = (1,) * (SPATIAL + 2 - len(w_shape)) + w_shape
    c_out = w_shape[-1]
    n_rows = int(np.prod(w_shape[:-1]))
    chunk, n_chunks = _chunks(gy.size // c_out, n_rows * c_out)
    partial = cuda.device_array((n_chunks, n_rows, c_out), dtype=gy.dtype)
    if n_chunks:
        blocks, threads, lanes = _tile_launch(c_out, n_rows)
        _kernels(np.dtype(gy.dtype)).weight_partials[min(blocks * n_chunks, MAX_BLOCKS), threads](
            _as_3d(x, 1), _as_3d(gy, 1), partial, w_shape3, _geometry(params), chunk, lanes)
    return _reduce(partial, n_rows * c_out, gy.dtype).reshape(w_shape)


def grad_bias(gy):
    """dL/dbias: gy summed over every axis but the last (per-chunk partials, then a fixed-order sum)."""
    c_out = tuple(gy.shape)[-1]
    chunk, n_chunks = _chunks(gy.size // c_out, c_out)
    partial = cuda.device_array((n_chunks, c_out), dtype=gy.dtype)
    if n_chunks:
        _kernels(np.dtype(gy.dtype)).bias_partials[_flat_launch(n_chunks * c_out)](_as_3d(gy, 1), partial, chunk)
    return _reduce(partial, c_out, gy.dtype)


def transpose(x, w, bias, params, output_padding, out):
    """out = conv_transpose(x, w) + bias: the input gradient of a convolution whose output is x,
    cropped by the pads (output_padding only enlarges out, whose shape conv.py has already set)."""
    return _gather(x, w, bias, out, params)


# ---------------------------------------------------------------- device helpers for the tape

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
