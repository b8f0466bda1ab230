"""Implicit-GEMM CUDA kernels: the convolution forward, the input gradient (and the transposed
convolution) and the weight gradient as tiled matrix products over channels-last activations.

Each kernel computes C = A @ B without forming A (im2col): A's elements are gathered from the
activation while a block stages them, through a precomputed offset table over the reduction index.
Both operands of a block tile pass through shared memory; each thread accumulates a register tile of
TM x TN outputs (`mma`, generated fully unrolled); the tile sizes are compile-time constants
(:class:`Tile`). One kernel per (dtype, tile, index width, padding class): see :func:`kernels`.

Per group g (C_in = groups * Cgi, C_out = groups * Cgo), viewed as 3-D (D, H, W):

- forward: rows m = output pixels (n, od, oh, ow), columns co < Cgo, reduction k = (tap, ci) <
  taps * Cgi (table row k: tap * dilation - pad_before per axis, ci, and their offset in x):
  y[m, co] = sum_k x[n, src(o * stride + off_k), g*Cgi + ci_k] * w[tap_k, ci_k, g*Cgo + co];
  B is w itself (row k at k * C_out).
- input gradient (transposed convolution): the same kernel once per sub-pixel phase r (per axis, the
  positions a = r + j * stride that one set of taps reaches; at most K per axis, whatever the
  stride): rows (n, jd, jh, jw), columns ci < Cgi, reduction (tap of the phase, co):
  gx[n, r + j*s, ci] = sum gy[n, j + q_tap, g*Cgo + co] * w[tap, ci, g*Cgo + co] with
  q_tap = (r + before - tap * dilation) / stride (exact), zero outside gy. B is a dense
  (groups, taps of the phase, Cgo, Cgi) block gathered from w once per call. Positions no phase
  reaches are filled with zeros (or the bias) first.
- weight gradient: rows r = (tap, ci), columns co, reduction over the output pixels of a fixed chunk:
  gw[r, co] = sum_p x[n_p, src(o_p * stride + off_r), g*Cgi + ci_r] * gy[p, g*Cgo + co]. A thread
  walks its pixel by carries (no division in the loop). Chunks are a function of the shapes only and
  their partial sums are added in a fixed order afterwards (no atomics): results are bitwise
  reproducible.

Padding: with zero padding an element's offset is a per-row offset plus the table's offset, and its
test three unsigned compares. Reflect/replicate/circular padding go through the padding map src
(nbconv._padding.source_index) in its division-free form: positions lie within one padding width of
the input (validation guarantees it), so every mode is affine on each side, src(t) = slope * t + lo
(t < 0), slope * t + hi (t >= n), t inside (:func:`pad_map`).

Index arithmetic is 32-bit when every offset and position a call can form fits (below INT32_LIMIT);
otherwise the same kernels are compiled with 64-bit indices. Numba widens integer arithmetic to 64
bits, so the kernels cast every index expression back (`I(...)`, `U(...)`); LLVM then emits 32-bit
instructions. Array indices are unsigned (no negative-index wraparound code), and operand loads are
unconditional (index 0 where nothing is read) with the value selected: the staging has no branches.

Thread mapping (T threads, a (BM // TM) x (BN // TN) grid): a thread owns rows
(i // VM) * GM + ty * VM + i % VM and columns (j // VN) * GN + tx * VN + j % VN of its block tile, so
its fragments are VM (VN) contiguous shared-memory elements (vector loads) and the threads of a warp
read distinct banks. Staging: the forward's A tile is read with consecutive threads on consecutive
reduction indices (consecutive channels of one pixel), the weight gradient's with consecutive threads
on consecutive rows (again channels); B tiles with consecutive threads on consecutive columns. A's
shared rows are padded by 16 bytes so the transposed stores do not conflict. Every kernel loops over
its tiles grid-stride, so any grid gives the same results.
"""
import functools
from typing import NamedTuple

import numba
import numpy as np
from numba import cuda

from ._padding import CIRCULAR, REFLECT, REPLICATE, ZEROS

TABLE_COLUMNS = 5        # offset table rows: (off_d, off_h, off_w, channel, A offset)
# grid cap (grid-stride loops over tiles cover larger problems; few blocks of Python threads under the simulator)
MAX_BLOCKS = 4 if numba.config.ENABLE_CUDASIM else 1 << 16
INT32_LIMIT = 1 << 30    # indices below this (with headroom for one addition) use the 32-bit kernels


class Tile(NamedTuple):
    """Compile-time shape of a block tile: BM x BN outputs, BK reduction steps staged per pass, TM x TN
    outputs per thread read as VM (VN) contiguous elements."""

    bm: int
    bn: int
    bk: int
    tm: int
    tn: int
    vm: int
    vn: int

    @property
    def threads(self):
        return (self.bm // self.tm) * (self.bn // self.tn)


# The tiles a real GPU uses: "wide", and "narrow" (fewer idle columns) for fewer than WIDE_FROM columns
# per group with zero padding and 32-bit indices. A narrow tile's A elements each feed only BN columns,
# too few to pay for the padding map or 64-bit offsets, so those kernels keep the wide tile.
GPU_TILES = {
    (np.dtype(np.float32), "wide"): Tile(128, 128, 8, 8, 8, 4, 4),
    (np.dtype(np.float32), "narrow"): Tile(128, 32, 8, 8, 4, 4, 4),
    (np.dtype(np.float64), "wide"): Tile(128, 64, 8, 8, 4, 2, 2),
    (np.dtype(np.float64), "narrow"): Tile(128, 32, 8, 8, 4, 2, 2),
}
# Under Numba's CUDA simulator every thread is a Python thread: the same kernels with small tiles
# (16 threads) keep the tests fast; tests also run the GPU tiles.
SIM_TILES = {
    (np.dtype(np.float32), "wide"): Tile(16, 16, 4, 4, 4, 2, 2),
    (np.dtype(np.float32), "narrow"): Tile(16, 8, 4, 4, 2, 2, 2),
    (np.dtype(np.float64), "wide"): Tile(16, 16, 4, 4, 4, 2, 2),
    (np.dtype(np.float64), "narrow"): Tile(16, 8, 4, 4, 2, 2, 2),
}
TILES = SIM_TILES if numba.config.ENABLE_CUDASIM else GPU_TILES
WIDE_FROM = 64   # columns per group from which the wide tile is used


def tile_for(dtype, columns, zero_pad, wide):
    """The Tile for a GEMM with `columns` columns per group (zero_pad, wide: see kernels)."""
    narrow = columns < WIDE_FROM and zero_pad and not wide
    return TILES[np.dtype(dtype), "narrow" if narrow else "wide"]


def check_tile(tile):
    """ValueError unless the staging loops of the kernels cover `tile` exactly."""
    t = tile.threads
    ok = (tile.bm % tile.tm == 0 and tile.bn % tile.tn == 0 and tile.tm % tile.vm == 0 and tile.tn % tile.vn == 0
          and t % tile.bk == 0 and tile.bm % (t // tile.bk) == 0 and t % tile.bn == 0
          and tile.bk % (t // tile.bn) == 0 and (tile.bm // tile.tm) * tile.vm <= tile.bm // (tile.tm // tile.vm)
          and (tile.bn // tile.tn) * tile.vn <= tile.bn // (tile.tn // tile.vn))
    if not ok:
        raise ValueError(f"tile {tile} does not fit the kernels' staging loops")


class ConvGemm(NamedTuple):
    """Scalars of one forward or input-gradient launch (all of one integer type)."""

    m_count: int   # rows: pixels (n, rd, rh, rw) of an N x r_d x r_h x r_w grid
    r_d: int
    r_h: int
    r_w: int
    src_d: int     # A's source activation (N, D, H, W, C)
    src_h: int
    src_w: int
    src_c: int
    step_d: int    # a row's source position per axis: r * step + table offset
    step_h: int
    step_w: int
    a_group: int   # source channels per group
    slope: int     # the padding map (pad_map)
    lo_d: int
    hi_d: int
    lo_h: int
    hi_h: int
    lo_w: int
    hi_w: int
    zero: int
    k_count: int   # reduction length (rows of the table, from row k_first)
    k_first: int
    b_first: int   # B[k, col] of group g is b[b_first + g * b_group + k * b_row + col]
    b_row: int
    b_group: int
    n_count: int   # columns per group
    dst_d: int     # destination (N, D, H, W, C)
    dst_h: int
    dst_w: int
    dst_c: int
    org_d: int     # destination pixel of row (n, rd, rh, rw): (n, org + r * dstep) per axis
    org_h: int
    org_w: int
    dstep_d: int
    dstep_h: int
    dstep_w: int
    groups: int


class WgradGemm(NamedTuple):
    """Scalars of one weight-gradient launch (all of one integer type)."""

    r_count: int   # rows: (tap, ci), taps * Cgi
    n_count: int   # columns: Cgo
    groups: int
    src_d: int     # x (N, D, H, W, C_in)
    src_h: int
    src_w: int
    src_c: int
    a_group: int   # Cgi
    slope: int
    lo_d: int
    hi_d: int
    lo_h: int
    hi_h: int
    lo_w: int
    hi_w: int
    zero: int
    out_d: int     # gy (N, OD, OH, OW, C_out)
    out_h: int
    out_w: int
    c_out: int
    b_group: int   # Cgo
    p_count: int   # output pixels
    step_d: int    # the convolution's strides
    step_h: int
    step_w: int
    chunk: int     # output pixels per partial sum
    chunks: int


def pad_map(mode, n):
    """(slope, lo, hi, zero) of padding mode `mode` (a nbconv._padding code) on an axis of length n:
    position t copies slope * t + lo (t < 0), slope * t + hi (t >= n), t itself inside; with zero
    padding (zero=1) nothing is read outside. Exact for -n <= t < 2n - 1 (reflect: |t| < n), which
    validation guarantees (reflect pads < n, circular pads <= n; replicate is exact for any t)."""
    if mode == REFLECT:
        return -1, 0, 2 * n - 2, 0
    if mode == REPLICATE:
        return 0, 0, n - 1, 0
    if mode == CIRCULAR:
        return 1, n, -n, 0
    assert mode == ZEROS
    return 1, 0, 0, 1


def _source_py(t, n, lo, hi, slope):
    """The element that position t of an axis of length n copies under a reflect, replicate or circular
    padding (see pad_map); written without branches (LLVM makes selects of it)."""
    below = t < 0
    mapped = slope * t + (lo if below else hi)
    return mapped if below or t >= n else t


# A device function; under the simulator the same function called as plain Python (the simulator's
# device-function wrapper costs ~10 us a call).
_source = _source_py if numba.config.ENABLE_CUDASIM else cuda.jit(device=True)(_source_py)


def fits_int32(*values):
    """True when every value (sizes, positions, offsets a launch can form) is below INT32_LIMIT in magnitude."""
    return all(abs(int(v)) < INT32_LIMIT for v in values)


class GemmKernels(NamedTuple):
    conv: object
    wgrad: object


def mma_source(tile, lda):
    """Python source of `mma(As, Bs, acc, a_off, b_off)`: acc += this thread's fragments of the staged
    tiles over the BK reduction steps, fully unrolled (numba has no unroll pragma, and NVVM leaves a
    loop of this size rolled): every shared-memory read has a constant offset from a_off / b_off."""
    bm, bn, bk, tm, tn, vm, vn = tile
    gm, gn = bm // (tm // vm), bn // (tn // vn)
    lines = ["def mma(As, Bs, acc, a_off, b_off):"]
    for kk in range(bk):
        lines += [f"    a{i} = As[a_off + S({kk * lda + (i // vm) * gm + i % vm})]" for i in range(tm)]
        lines += [f"    b{j} = Bs[b_off + S({kk * bn + (j // vn) * gn + j % vn})]" for j in range(tn)]
        lines += [f"    acc[{i}, {j}] += a{i} * b{j}" for i in range(tm) for j in range(tn)]
    return "\n".join(lines) + "\n"


@functools.lru_cache(maxsize=None)
def mma_function(tile, lda):
    """The `mma` device function of mma_source, one per (tile, lda): the forward and weight-gradient kernels
    of every index width and padding class share it, so a process types and lowers each unrolled body once
    (under the simulator: the plain Python function)."""
    namespace = {"S": np.uint64}
    exec(mma_source(tile, lda), namespace)
    return namespace["mma"] if numba.config.ENABLE_CUDASIM else cuda.jit(device=True)(namespace["mma"])


@functools.lru_cache(maxsize=None)
def kernels(dtype, tile, wide, zero_pad):
    """The implicit-GEMM kernels for one float dtype, Tile, index width (wide: 64-bit indices) and padding
    class (zero_pad: positions outside the input read zeros, so an element's offset is a row offset plus
    a table offset and its test three unsigned compares; else reflect/replicate/circular padding, whose
    map (pad_map) every element goes through)."""
    check_tile(tile)
    dtype = np.dtype(dtype)
    # NumPy scalar types: numba compiles them as casts, and the simulator calls them ~4x faster than numba's
    real = dtype.type
    I = np.int64 if wide else np.int32     # noqa: E741  (signed index type)
    U = np.uint64 if wide else np.uint32   # unsigned: indexing without negative-index wraparound
    S = np.uint64                          # shared-memory fragment indices: never truncated, so LLVM sees
    #                                        the elements of a fragment as adjacent (vector loads)
    BM, BN, BK, TM, TN, VM, VN = tile
    T = tile.threads
    TX = BN // TN                    # thread columns
    LDA = BM + 16 // dtype.itemsize  # A's shared row length (padded: conflict-free transposed stores)
    A_SIZE = BK * LDA
    B_SIZE = BK * BN
    A_STEP = T // BK                 # forward staging: rows m_a + j * A_STEP, reduction index kk_a
    A_ROWS = BM // A_STEP
    B_STEP = T // BN                 # B staging: rows k_b + j * B_STEP, column col_b
    B_ROWS = BK // B_STEP
    GM = BM // (TM // VM)            # distance between a thread's row groups
    NC = TABLE_COLUMNS
    ZP = bool(zero_pad)
    FAR = -(1 << 30)                 # a position offset that no range test passes (|positions| < 2**30)
    W_LANES = T // BK                # weight-gradient staging: rows rl + j * W_LANES of pixel pk
    W_ROWS = BM // W_LANES
    mma = mma_function(tile, LDA)

    @cuda.jit
    def conv(a, b, tab, bias, has_bias, dst, g):
        """dst[row, g*n_count + col] = bias + sum_k A[row, k] * B[k, col] (see the module docstring);
        a, b, tab, bias and dst are 1-D C-contiguous arrays."""
        As = cuda.shared.array(A_SIZE, real)
        Bs = cuda.shared.array(B_SIZE, real)
        drow = cuda.shared.array(BM, I)       # destination offset of each row of the tile (-1: none)
        acc = cuda.local.array((TM, TN), real)
        an = cuda.local.array(A_ROWS, I)      # staged rows: n * src_d (-1 past the last row)
        ad = cuda.local.array(A_ROWS, I)      # r * step per axis
        ah = cuda.local.array(A_ROWS, I)
        aw = cuda.local.array(A_ROWS, I)
        ro = cuda.local.array(A_ROWS, I)      # zero padding: the row's offset in a
        t = S(cuda.threadIdx.x)
        a_off = S(S(t // S(TX)) * S(VM))      # this thread's first row and column in the tiles
        b_off = S(S(t % S(TX)) * S(VN))
        kk_a = I(t % S(BK))
        m_a = I(t // S(BK))
        col_b = I(t % S(BN))
        k_b = I(t // S(BN))
        k_last = I(g.k_count - I(1))
        m_tiles = I(I(g.m_count + I(BM - 1)) // I(BM))
        n_tiles = I(I(g.n_count + I(BN - 1)) // I(BN))
        tiles = I(I(g.groups * m_tiles) * n_tiles)
        for tile in range(I(cuda.blockIdx.x), tiles, I(cuda.gridDim.x)):
            nt = I(tile % n_tiles)
            rest = I(tile // n_tiles)
            m0 = I(I(rest % m_tiles) * I(BM))
            grp = I(rest // m_tiles)
            n0 = I(nt * I(BN))
            a_base = I(grp * g.a_group)
            b_base = I(I(g.b_first + I(grp * g.b_group)) + n0)
            col_live = I(n0 + col_b) < g.n_count
            bo = I(I(k_b * g.b_row) + I(b_base + col_b))   # B offset of this thread's first staged element
            b_step = I(g.b_row * I(B_STEP))
            cuda.syncthreads()                # the previous tile's epilogue has read drow
            for j in range(A_ROWS):
                m = I(I(m0 + m_a) + I(j * A_STEP))
                if m < g.m_count:
                    rw = I(m % g.r_w)
                    q = I(m // g.r_w)
                    rh = I(q % g.r_h)
                    q = I(q // g.r_h)
                    rd = I(q % g.r_d)
                    n = I(q // g.r_d)
                    an[j] = I(n * g.src_d)
                    ad[j] = I(rd * g.step_d)
                    ah[j] = I(rh * g.step_h)
                    aw[j] = I(rw * g.step_w)
                    ro[j] = I(I(I(I(I(I(an[j] + ad[j]) * g.src_h) + ah[j]) * g.src_w) + aw[j]) * g.src_c) + a_base
                    if kk_a == 0:
                        pd = I(I(n * g.dst_d) + I(g.org_d + I(rd * g.dstep_d)))
                        ph = I(I(pd * g.dst_h) + I(g.org_h + I(rh * g.dstep_h)))
                        pw = I(I(ph * g.dst_w) + I(g.org_w + I(rw * g.dstep_w)))
                        drow[U(m_a + I(j * A_STEP))] = I(I(pw * g.dst_c) + I(grp * g.n_count))
                else:
                    an[j] = I(-1)
                    ad[j] = I(FAR if ZP else 0)   # zero padding: fails the range test of every tap
                    ah[j] = aw[j] = ro[j] = I(0)
                    if kk_a == 0:
                        drow[U(m_a + I(j * A_STEP))] = I(-1)
            for i in range(TM):
                for j in range(TN):
                    acc[i, j] = real(0)
            for k0 in range(I(0), g.k_count, I(BK)):
                # stage A (gathered) and B; loads are unconditional (from index 0 where nothing is read)
                # and their values selected: no branches
                k = I(k0 + kk_a)
                live = k < g.k_count
                e = U(I(I(I(k if live else k_last) + g.k_first) * I(NC)))
                od = I(tab[e]) if live or not ZP else I(FAR)   # zero padding past the last k: fails every test
                oh = I(tab[U(e + U(1))])
                ow = I(tab[U(e + U(2))])
                ac = ko = I(0)
                if ZP:
                    ko = I(tab[U(e + U(4))])
                else:
                    ac = I(I(tab[U(e + U(3))]) + a_base)
                cuda.syncthreads()            # the previous pass has read the tiles
                for j in range(A_ROWS):
                    td = I(ad[j] + od)
                    th = I(ah[j] + oh)
                    tw = I(aw[j] + ow)
                    if ZP:
                        ok = (U(td) < U(g.src_d)) & (U(th) < U(g.src_h)) & (U(tw) < U(g.src_w))
                        p = I(ro[j] + ko)
                    else:
                        sd = _source(td, g.src_d, g.lo_d, g.hi_d, g.slope)
                        sh = _source(th, g.src_h, g.lo_h, g.hi_h, g.slope)
                        sw = _source(tw, g.src_w, g.lo_w, g.hi_w, g.slope)
                        ok = live & (an[j] >= 0)
                        p = I(I(I(I(I(I(I(an[j] + I(sd)) * g.src_h) + I(sh)) * g.src_w) + I(sw)) * g.src_c) + ac)
                    v = a[U(p if ok else I(0))]
                    As[U(I(kk_a * I(LDA)) + I(m_a + I(j * A_STEP)))] = v if ok else real(0)
                for j in range(B_ROWS):
                    kb = I(k_b + I(j * B_STEP))
                    ok = (I(k0 + kb) < g.k_count) & col_live
                    v = b[U(I(bo + I(j * b_step)) if ok else I(0))]
                    Bs[U(I(kb * I(BN)) + col_b)] = v if ok else real(0)
                bo = I(bo + I(g.b_row * I(BK)))
                cuda.syncthreads()
                mma(As, Bs, acc, a_off, b_off)
            for i in range(TM):
                off = drow[S((i // VM) * GM + i % VM) + a_off]
                if off >= 0:
                    for j in range(TN):
                        c = I(n0 + I(S((j // VN) * (BN // (TN // VN)) + j % VN) + b_off))
                        if c < g.n_count:
                            v = acc[i, j]
                            if has_bias:
                                v += bias[U(I(grp * g.n_count) + c)]
                            dst[U(off + c)] = v

    @cuda.jit
    def wgrad(x, gy, tab, out, g):
        """out[chunk, r, g*Cgo + co] = sum over the output pixels p of the chunk of
        x[n_p, src(o_p * stride + off_r), g*Cgi + ci_r] * gy[p, g*Cgo + co]; 1-D C-contiguous arrays."""
        As = cuda.shared.array(A_SIZE, real)
        Bs = cuda.shared.array(B_SIZE, real)
        acc = cuda.local.array((TM, TN), real)
        rd = cuda.local.array(W_ROWS, I)      # per staged row: tap offsets, channel (-1: past the last row)
        rh = cuda.local.array(W_ROWS, I)
        rw = cuda.local.array(W_ROWS, I)
        rc = cuda.local.array(W_ROWS, I)
        rk = cuda.local.array(W_ROWS, I)      # zero padding: the row's offset from its pixel's
        t = S(cuda.threadIdx.x)
        a_off = S(S(t // S(TX)) * S(VM))
        b_off = S(S(t % S(TX)) * S(VN))
        rl = I(t % S(W_LANES))
        pk = I(t // S(W_LANES))
        col_b = I(t % S(BN))
        k_b = I(t // S(BN))
        r_tiles = I(I(g.r_count + I(BM - 1)) // I(BM))
        n_tiles = I(I(g.n_count + I(BN - 1)) // I(BN))
        tiles = I(I(I(g.chunks * g.groups) * r_tiles) * n_tiles)
        for tile in range(I(cuda.blockIdx.x), tiles, I(cuda.gridDim.x)):
            nt = I(tile % n_tiles)
            rest = I(tile // n_tiles)
            r0 = I(I(rest % r_tiles) * I(BM))
            rest = I(rest // r_tiles)
            grp = I(rest % g.groups)
            chunk = I(rest // g.groups)
            n0 = I(nt * I(BN))
            b_base = I(I(grp * g.b_group) + n0)
            col_live = I(n0 + col_b) < g.n_count
            p_lo = I(chunk * g.chunk)
            p_hi = I(p_lo + g.chunk)
            if p_hi > g.p_count:
                p_hi = g.p_count
            go = I(I(I(p_lo + k_b) * g.c_out) + I(b_base + col_b))   # gy offset of the first staged element
            g_step = I(g.c_out * I(B_STEP))
            for j in range(W_ROWS):
                r = I(I(r0 + rl) + I(j * W_LANES))
                if r < g.r_count:
                    e = U(I(r * I(NC)))
                    rd[j] = I(tab[e])
                    rh[j] = I(tab[U(e + U(1))])
                    rw[j] = I(tab[U(e + U(2))])
                    rc[j] = I(I(tab[U(e + U(3))]) + I(grp * g.a_group))
                    rk[j] = I(I(tab[U(e + U(4))]) + I(grp * g.a_group))
                else:
                    rd[j] = I(FAR if ZP else 0)   # zero padding: fails the range test
                    rh[j] = rw[j] = rk[j] = I(0)
                    rc[j] = I(-1)
            p = I(p_lo + pk)                  # this thread's staged pixel, advanced by BK per pass
            ow = I(p % g.out_w)
            q = I(p // g.out_w)
            oh = I(q % g.out_h)
            q = I(q // g.out_h)
            od = I(q % g.out_d)
            nb = I(I(q // g.out_d) * g.src_d)
            for i in range(TM):
                for j in range(TN):
                    acc[i, j] = real(0)
            for p0 in range(p_lo, p_hi, I(BK)):
                live = I(p0 + pk) < p_hi
                bd = I(od * g.step_d)
                bh = I(oh * g.step_h)
                bw = I(ow * g.step_w)
                pb = I(I(I(I(I(I(nb + bd) * g.src_h) + bh) * g.src_w) + bw) * g.src_c)
                cuda.syncthreads()
                for j in range(W_ROWS):
                    td = I(bd + rd[j])
                    th = I(bh + rh[j])
                    tw = I(bw + rw[j])
                    if ZP:
                        ok = live & (U(td) < U(g.src_d)) & (U(th) < U(g.src_h)) & (U(tw) < U(g.src_w))
                        pp = I(pb + rk[j])
                    else:
                        sd = _source(td, g.src_d, g.lo_d, g.hi_d, g.slope)
                        sh = _source(th, g.src_h, g.lo_h, g.hi_h, g.slope)
                        sw = _source(tw, g.src_w, g.lo_w, g.hi_w, g.slope)
                        ok = live & (rc[j] >= 0)
                        pp = I(I(I(I(I(I(I(nb + I(sd)) * g.src_h) + I(sh)) * g.src_w) + I(sw)) * g.src_c) + rc[j])
                    v = x[U(pp if ok else I(0))]
                    As[U(I(pk * I(LDA)) + I(rl + I(j * W_LANES)))] = v if ok else real(0)
                for j in range(B_ROWS):
                    kb = I(k_b + I(j * B_STEP))
                    ok = (I(p0 + kb) < p_hi) & col_live
                    v = gy[U(I(go + I(j * g_step)) if ok else I(0))]
                    Bs[U(I(kb * I(BN)) + col_b)] = v if ok else real(0)
                go = I(go + I(g.c_out * I(BK)))
                ow = I(ow + I(BK))            # the next pass's pixel: carries instead of divisions
                while ow >= g.out_w:
                    ow = I(ow - g.out_w)
                    oh = I(oh + I(1))
                    if oh == g.out_h:
                        oh = I(0)
                        od = I(od + I(1))
                        if od == g.out_d:
                            od = I(0)
                            nb = I(nb + g.src_d)
                cuda.syncthreads()
                mma(As, Bs, acc, a_off, b_off)
            base = I(I(chunk * g.r_count) + r0)
            for i in range(TM):
                r = I(S((i // VM) * GM + i % VM) + a_off)
                if I(r0 + r) < g.r_count:
                    row = I(I(I(base + r) * g.c_out) + I(grp * g.b_group))
                    for j in range(TN):
                        c = I(n0 + I(S((j // VN) * (BN // (TN // VN)) + j % VN) + b_off))
                        if c < g.n_count:
                            out[U(row + c)] = acc[i, j]

    kind = next((k for (d, k), t in GPU_TILES.items() if d == dtype and t == tile), ",".join(map(str, tile)))
    for kernel in (conv, wgrad):   # names for reports (nbconv._cuda_static)
        kernel.nbconv_label = (f"gemm.{kernel.py_func.__name__}[{dtype.name},{kind},"
                               f"{'i64' if wide else 'i32'},{'zero-pad' if zero_pad else 'modes'}]")
    return GemmKernels(conv=conv, wgrad=wgrad)


# ---------------------------------------------------------------- plans (host side: tables and scalars)

def _itype(wide):
    return np.int64 if wide else np.int32


def _taps(kernel):
    """(KD*KH*KW, 3) array of the taps (kd, kh, kw) in C order."""
    return np.indices(kernel).reshape(3, -1).T


def _linear(outer, positions, dims, channels):
    """The offset (((outer * D + p_d) * H + p_h) * W + p_w) * C of positions in dims (D, H, W, C)."""
    d, h, w, c = dims
    return (((outer * d + positions[0]) * h + positions[1]) * w + positions[2]) * c + channels


def forward_table(kernel, geom, cgi, src_dims):
    """The offset table of the forward (and weight gradient) reading an x of dims src_dims (D, H, W, C):
    row k = tap * cgi + ci holds (off_d, off_h, off_w, ci, A offset) with off = tap * dilation - before
    per axis and A offset the linear offset of (off_d, off_h, off_w, ci) in x."""
    taps = _taps(kernel)
    dil = np.array([ax.dilation for ax in geom[:3]], dtype=np.int64)
    before = np.array([ax.before for ax in geom[:3]], dtype=np.int64)
    offs = np.repeat(taps * dil - before, cgi, axis=0)
    n = len(taps) * cgi
    tab = np.empty((n, TABLE_COLUMNS), dtype=np.int64)
    tab[:, :3] = offs
    tab[:, 3] = np.tile(np.arange(cgi), len(taps))
    tab[:, 4] = _linear(0, offs.T, src_dims, tab[:, 3])
    return tab


def _maps(geom, dims):
    """(slope, lo_d, hi_d, lo_h, hi_h, lo_w, hi_w, zero) of the padding map on axes of lengths dims."""
    per_axis = [pad_map(geom.mode, n) for n in dims]
    slope, zero = per_axis[0][0], per_axis[0][3]
    return (slope, per_axis[0][1], per_axis[0][2], per_axis[1][1], per_axis[1][2], per_axis[2][1],
            per_axis[2][2], zero)


def _offsets_fit(n, row_positions, table, src_dims, *more):
    """True when every index a launch forms fits the 32-bit kernels: the rows' offsets (batch n, largest
    row position per axis), the table's entries, their sums, positions and the extra values `more`."""
    rows = _linear(n, row_positions, src_dims, src_dims[3])
    reach = np.abs(table).max(axis=0, initial=0)
    positions = [p + int(r) + 2 * dim for p, r, dim in zip(row_positions, reach[:3], src_dims)]
    return fits_int32(rows, int(reach[4]), rows + int(reach[4]), table.size, *positions, *more)


def forward_plan(x_shape, w_shape, out_shape, geom):
    """(ConvGemm, table, wide) of the forward of 5-D shapes x (N, D, H, W, C_in), w (KD, KH, KW, Cgi,
    C_out), out (N, OD, OH, OW, C_out); geom a nbconv._cuda_direct.Geometry."""
    n, *x_spatial, c_in = x_shape
    *kernel, cgi, c_out = w_shape
    out_spatial = out_shape[1:4]
    groups = c_in // cgi
    cgo = c_out // groups
    src_dims = (*x_spatial, c_in)
    tab = forward_table(kernel, geom, cgi, src_dims)
    strides = [ax.stride for ax in geom[:3]]
    wide = not _offsets_fit(n, [(o - 1) * s for o, s in zip(out_spatial, strides)], tab, src_dims,
                            int(np.prod(w_shape)), int(np.prod(out_shape)))
    g = ConvGemm(n * int(np.prod(out_spatial)), *out_spatial, *src_dims, *strides, cgi, *_maps(geom, x_spatial),
                 len(tab), 0, 0, c_out, cgo, cgo, *out_spatial, c_out, 0, 0, 0, 1, 1, 1, groups)
    wide = wide or not fits_int32(*g)
    return _typed(g, wide), tab.astype(_itype(wide)), wide


def _typed(g, wide):
    t = _itype(wide)
    return type(g)(*(t(v) for v in g))


def _axis_phases(n, k, ax):
    """Per residue r < min(stride, n) that some tap reaches: (r, positions, [(tap, q)]) with the taps
    whose reads land on positions r + j * stride, from output position j + q."""
    phases = {}
    s, d, b = ax.stride, ax.dilation, ax.before
    for tap in range(k):
        r = (tap * d - b) % s
        if r < n:
            phases.setdefault(r, []).append((tap, (r + b - tap * d) // s))
    return [(r, -(-(n - r) // s), taps) for r, taps in sorted(phases.items())]


class InputGradPlan(NamedTuple):
    """The launches of an input gradient: phases (one ConvGemm each, reading its rows of the table and
    its block of the gathered weight), their offset table, the weight rows B is gathered from
    (`b_rows`: B's row r is w[b_rows[r] + ci * C_out] for ci < Cgi, see nbconv._cuda_direct.gather_rows),
    whether the phases cover every element of the result (else it is filled with zeros or the bias
    first) and whether the kernels need 64-bit indices."""

    phases: list
    table: np.ndarray
    b_rows: np.ndarray
    covers: bool
    wide: bool


def input_grad_plan(dst_shape, w_shape, gy_shape, geom):
    """The InputGradPlan (zero padding) of a convolution whose input has 5-D shape dst_shape and output
    gy_shape, weight w_shape (KD, KH, KW, Cgi, C_out). A phase's rows are (n, jd, jh, jw), its table rows
    (tap of the phase, co) hold (q_d, q_h, q_w, co, A offset): the row reads gy at (n, j + q, co); its B
    is a (groups, taps of the phase, Cgo, Cgi) block of the gathered weight, B[(tap, co), ci] =
    w[tap, ci, g*Cgo + co]."""
    n, *spatial, c_in = dst_shape
    *kernel, cgi, c_out = w_shape
    out_spatial = gy_shape[1:4]
    src_dims = (*out_spatial, c_out)
    groups = c_in // cgi
    cgo = c_out // groups
    axes = [_axis_phases(sz, k, ax) for sz, k, ax in zip(spatial, kernel, geom[:3])]
    covers = all(len(ph) == min(ax.stride, sz) for ph, ax, sz in zip(axes, geom[:3], spatial))
    tables, b_rows, specs = [], [], []
    first = b_first = 0
    co = np.arange(cgo)
    for pd in axes[0]:
        for ph in axes[1]:
            for pw in axes[2]:
                blocks, taps = [], []
                for kd, qd in pd[2]:
                    for kh, qh in ph[2]:
                        for kw, qw in pw[2]:
                            taps.append((kd * kernel[1] + kh) * kernel[2] + kw)
                            block = np.empty((cgo, TABLE_COLUMNS), dtype=np.int64)
                            block[:, 0], block[:, 1], block[:, 2] = qd, qh, qw
                            block[:, 3] = co
                            block[:, 4] = _linear(0, (qd, qh, qw), src_dims, co)
                            blocks.append(block)
                taps = np.array(taps, dtype=np.int64)
                # rows (g, tap, co) of this phase's B: w[tap, 0, g*Cgo + co]
                rows = (taps[None, :, None] * (cgi * c_out) + (np.arange(groups) * cgo)[:, None, None]
                        + co[None, None, :]).reshape(-1)
                tables.append(np.concatenate(blocks))
                b_rows.append(rows)
                specs.append(((pd[0], ph[0], pw[0]), (pd[1], ph[1], pw[1]), first, len(tables[-1]), b_first,
                              len(taps) * cgo * cgi))
                first += len(tables[-1])
                b_first += len(rows) * cgi
    table = np.concatenate(tables) if tables else np.zeros((0, TABLE_COLUMNS), dtype=np.int64)
    b_rows = np.concatenate(b_rows) if b_rows else np.zeros(0, dtype=np.int64)
    counts = [max((ph[1] for ph in axis), default=0) for axis in axes]
    wide = not _offsets_fit(n, counts, table, src_dims, int(np.prod(dst_shape)), int(np.prod(w_shape)),
                            *(sz + ax.stride for sz, ax in zip(spatial, geom[:3])))
    phases = [ConvGemm(n * int(np.prod(counts)), *counts, *src_dims, 1, 1, 1, cgo,
                       *_maps(geom._replace(mode=ZEROS), out_spatial), rows, first, b_first, cgi, b_group, cgi,
                       *spatial, c_in, *origin, *(ax.stride for ax in geom[:3]), groups)
              for origin, counts, first, rows, b_first, b_group in specs]   # one ConvGemm per phase
    wide = wide or not all(fits_int32(*g) for g in phases)
    phases = [_typed(g, wide) for g in phases]
    return InputGradPlan(phases, table.astype(_itype(wide)), b_rows.astype(_itype(wide)), covers, wide)


def weight_grad_plan(x_shape, gy_shape, w_shape, geom, chunk, chunks):
    """(WgradGemm, table, wide) of the weight gradient of 5-D shapes (see forward_plan), the output
    pixels split into `chunks` chunks of `chunk` pixels."""
    n, *x_spatial, c_in = x_shape
    *kernel, cgi, c_out = w_shape
    out_spatial = gy_shape[1:4]
    groups = c_in // cgi
    cgo = c_out // groups
    src_dims = (*x_spatial, c_in)
    tab = forward_table(kernel, geom, cgi, src_dims)
    p_count = n * int(np.prod(out_spatial))
    strides = [ax.stride for ax in geom[:3]]
    wide = not _offsets_fit(n, [(o - 1) * s for o, s in zip(out_spatial, strides)], tab, src_dims,
                            int(np.prod(gy_shape)), chunks * int(np.prod(w_shape)), p_count + chunk)
    g = WgradGemm(len(tab), cgo, groups, *src_dims, cgi, *_maps(geom, x_spatial), *out_spatial, c_out, cgo,
                  p_count, *strides, chunk, chunks)
    wide = wide or not fits_int32(*g)
    return _typed(g, wide), tab.astype(_itype(wide)), wide


def tiles_of(g, tile):
    """Block tiles of a launch (its grid-stride loop's length)."""
    if isinstance(g, WgradGemm):
        return int(g.chunks) * int(g.groups) * -(-int(g.r_count) // tile.bm) * -(-int(g.n_count) // tile.bn)
    return int(g.groups) * -(-int(g.m_count) // tile.bm) * -(-int(g.n_count) // tile.bn)
