"""CPU backend: channels-last convolutions with 1, 2 or 3 spatial dims on NumPy arrays.

Implements :class:`nbconv._backend.Backend`. Every function receives validated arrays and a
:class:`ConvParams` with one entry per spatial dim; x is (N, *spatial, C_in), w is
(*kernel, C_in // groups, C_out), results are new C-contiguous arrays unless `out` is given.

How the three gradients are computed (y = conv(x, w), xp = x padded, gy = dL/dy)::

    y[n, o, co]   = sum_{k, ci} xp[n, o*s + k*d, g*Cg + ci] * w[k, ci, co]      (per spatial dim)
    gw[k, ci, co] = sum_{n, o} xp[n, o*s + k*d, g*Cg + ci] * gy[n, o, co]      correlation of x with
                                                                              gy (stride -> dilation)
    gb[co]        = sum_{n, o} gy[n, o, co]
    gxp[n, i, ci] = sum_{(o, k): o*s + k*d = i} gy[n, o, co] * w[k, ci, co]     full correlation of gy
                                                                              with the flipped kernel

gxp is computed without inserting stride zeros into gy: split i = q + s*j by its phase q (0 <= q < s).
A tap k contributes to phase q iff (q - k*d) % s == 0, and then through o = j + (q - k*d) // s, so each
phase is a stride-1 correlation of (zero-padded) gy with its own subset of taps, and every multiply
does useful work. At stride 1 that is the forward's gather over gy with the kernel flipped and its channels
swapped, whose plan reads gy in place but for its border (no padded copy of gy). gx is gxp with the padding
folded back (cropped for "zeros"; for the other modes the padded positions' gradients are added to the input
positions they copied). The transposed convolution is exactly gxp, cropped by its padding.

All three products run through one register-tiled inner product (`_micro.micro_tile`) that reads
its scalar operand through a table of offsets, so the reduction index (taps x channels) is flat and
no im2col matrix is ever formed; with AVX-512, layers of at least WB = 64 output channels per group (in the
product's sense: C_in for the input gradient) run its wide form (`micro_tile_wide`: 6 x 64, not 8 x 32),
with the weights packed in blocks of 64 lanes (`_lanes`). Other shapes take other routes: with fewer than B
input channels per group the gather would leave most lanes idle, so the input gradient computes each output pixel's
columns (taps x input channels) and scatter-adds them (`_scatter_conv`); the forward of a layer with one input
channel and fewer than B output channels (LeNet's first) puts output columns in the lanes (`_column_conv`,
on `_micro.micro_columns`); depthwise convolutions (one
input channel per group) run in `_depthwise`, where each vector lane is its own channel. Grouped
convolutions with 2 or 4 channels per group in and out (ResNeXt-style) and a channel count that fills whole
vectors run their forward and input gradient through the gather kernel with the groups side by side in the
lanes (`_micro.micro_groups`). The weight gradient of any layout with 2 or 4 channels per group runs in
`_depthwise.grad_weight_groups` on x itself, each lane an input channel and grad_out rotated within its group
(`_micro.micro_rotated`). The forward of the other layouts with 2 to 4 channels per group, and the weight gradient
with 3, run in `_depthwise` after the group's input channel becomes a spatial dim of its own (`_as_depthwise`).

Pointwise convolutions (1x1 kernels, one group, no padding) are plain matrix products over the pixels,
(pixels, C_in) @ (C_in, C_out), and run through the same kernels (the tile writes bias and product in one pass
over the output). Not through NumPy's BLAS: OpenBLAS's float32 products change in their last bits with its
thread count (measured for 1 vs 2 threads on the benchmark's 1x1 shapes), which also changes when several
Python threads call it at once, so its results were not reproducible.
"""
import collections
import functools
import itertools
import math
import os

import numpy as np

from . import _depthwise
from ._jit import CHUNKS_PER_THREAD, SLOTS, call, call_all, chunk_items, kernel, threads
from ._micro import (LB, LP, B, P, VECTOR_BYTES, WB, WIDE, WP, micro_columns, micro_groups, micro_tile,
                     micro_tile_into, micro_tile_into_wide, micro_tile_wide, window_supported)
from ._padding import CODES, source_indices
from ._shapes import ConvParams

_TILES_PER_ITEM = 8  # register tiles per item (unit of work shared among threads) of the gather kernel, at most
_PANEL_BYTES = 192 << 10  # packed weights the gather kernel keeps in use across an item's tiles (in L2)
_PARALLEL_PACK_BYTES = 1 << 20  # forward weights of at least this size are packed by the threads (_pack_blocks)
# most output pixels per chunk of the weight gradient, for fewer than 16 input channels per group and for more (a
# chunk's source rows, a cache line or more per pixel, then stay in L1 across the taps)
_WEIGHT_GRAD_CHUNKS = (256, 128)
# With AVX-512's wide tile (6 x 64), longer chunks: up to _WIDE_CHUNK_MOST pixels while a chunk of grad_out (every
# block of a group's output channels, read from L2 once per tile, prefetched) fits in _WIDE_CHUNK_BYTES, so that each
# tile's sums are loaded, added and stored less often (weight gradients of 64-channel layers 2-8% faster, see
# _grad_weight_chunk; a budget of 1 MiB measured the same as 256 KiB). Not measured with AVX2's tile: not used there.
_WIDE_CHUNK_BYTES = 256 << 10
_WIDE_CHUNK_MOST = 1024
_DIRECT_ROWS = 16 * P  # most rows of w (taps x input channels) for which the weight gradient reads grad_out in place


@kernel()
def _gather_conv(src, src_rows, src_step, offsets, wpk, bias_blocks, dst, dst_rows, dst_step, row_len, src_shift,
                 dst_shift, cg_dst, lane_groups, per_item, panel, weights_outer, sched, me):
    """dst[dst_rows[r] + j*dst_step + dst_shift[g] + co] = bias_blocks[g, co // L, co % L] + sum_t
    src[src_rows[r] + j*src_step + src_shift[g] + offsets[t]] * wpk[g, co // L, t, co % L] for r < len(src_rows),
    j < row_len, co < cg_dst; src and dst flat, src_rows, offsets and src_shift unsigned, wpk and bias_blocks
    (G, ceil(cg_dst / L), ..., L) C-contiguous for L = B (the P x B tile) or WB (the WP x WB wide tile); every
    source offset inside src, every destination distinct. g indexes wpk's first axis: a group of channels (shifts
    g*cg_src and g*cg_dst, _group_shifts), or the pair (phase p, group h) at g = p*groups + h of a job of merged
    sub-pixel phases, whose source rows and taps agree up to a shift (_merged_phases).
    With lane_groups = c > 0 (G == 1, src_shift[0] == dst_shift[0] == 0, cg_dst the source's channels too, a multiple
    of the vector length, L = B), each lane co instead sums src[... + offsets[t] + co - co % c + (co + k) % c] *
    wpk[0, co // B, t*c + k, co % B] over t and k < c (`micro_groups`: a grouped convolution with c channels per
    group, its groups side by side in the lanes).
    Items i of chunk_items(sched, me): the tiles (P or WP consecutive output pixels in row-major order, which may span
    rows and images) per_item*h up to per_item*(h + 1) (see _gather_items) through part k of the weights: panel
    k % panels of group k // panels, `panel` blocks of wpk (which stay in cache across the item's tiles), panels =
    ceil(blocks / panel); h, k = divmod(i, G * panels), or with weights_outer k, h = divmod(i, tile groups), so that
    a thread's consecutive items share a part of the weights instead of their tiles (see _weights_outer)."""
    groups, n_blocks, lanes = wpk.shape[0], wpk.shape[1], wpk.shape[3]
    # the wide tile (WP x WB) for packs of WB lanes, else the dense one (P x B); without AVX-512 they are the same
    wide = lanes == WB
    rows = WP if wide else P
    n_panels = (n_blocks + panel - 1) // panel
    n_pix = src_rows.shape[0] * row_len
    n_tiles = (n_pix + rows - 1) // rows
    n_tile_groups = (n_tiles + per_item - 1) // per_item
    # whole tiles write their whole blocks of lanes straight to dst (micro_tile_into); the rest goes through `tile`
    n_whole = 0 if lane_groups else cg_dst // lanes
    bias_flat = bias_blocks.reshape(groups, -1)
    tile = np.empty((max(P, WP), max(B, WB)), dtype=dst.dtype)
    bases = np.empty(max(P, WP), dtype=np.uint64)
    d_bases = np.empty(max(P, WP), dtype=np.uint64)
    firsts = np.empty(per_item * rows, dtype=np.uint64)  # each pixel's source and destination offsets
    d_firsts = np.empty(per_item * rows, dtype=np.int64)
    firsts_of = -1  # the tile group whose offsets firsts and d_firsts hold
    for item in chunk_items(sched, me):
        if weights_outer:
            part, tiles = divmod(item, n_tile_groups)
        else:
            tiles, part = divmod(item, groups * n_panels)
        q_lo = tiles * per_item * rows
        n_q = min(n_tiles * rows, q_lo + per_item * rows) - q_lo
        if tiles != firsts_of:
            for i in range(n_q):
                r, j = divmod(min(q_lo + i, n_pix - 1), row_len)
                firsts[i] = src_rows[r] + np.uint64(j * src_step)
                d_firsts[i] = dst_rows[r] + j * dst_step
            firsts_of = tiles
        g, b0 = part // n_panels, part % n_panels * panel
        b1 = min(n_blocks, b0 + panel)
        # the whole blocks and their bias, as views made once per item (a view per tile costs two atomic updates of a
        # reference count that every thread shares)
        w_whole = wpk[g, b0:max(b0, min(b1, n_whole))]
        bias_whole = bias_flat[g, b0 * lanes:]
        for t0 in range(0, n_q, rows):
            n_rows = min(rows, n_pix - q_lo - t0)
            for p in range(rows):
                bases[p] = firsts[t0 + p] + src_shift[g]
            whole = min(b1, n_whole) if n_rows == rows else b0
            if whole > b0:
                for p in range(rows):
                    d_bases[p] = np.uint64(d_firsts[t0 + p] + dst_shift[g] + b0 * lanes)
                if wide:
                    micro_tile_into_wide(src, bases, offsets, w_whole, dst, d_bases, bias_whole, False)
                else:
                    micro_tile_into(src, bases, offsets, w_whole, dst, d_bases, bias_whole, False)
            for nb in range(max(b0, whole), b1):
                n_valid = min(lanes, cg_dst - nb * lanes)
                if lane_groups:
                    micro_groups(src, bases, nb * lanes, offsets, wpk[g, nb], tile, n_valid, lane_groups)
                elif wide:
                    micro_tile_wide(src, bases, offsets, wpk[g, nb], tile, n_valid)
                else:
                    micro_tile(src, bases, offsets, wpk[g, nb], tile, n_valid)
                bias_block = bias_blocks[g, nb]
                for p in range(n_rows):
                    d0 = d_firsts[t0 + p] + dst_shift[g] + nb * lanes
                    out = dst[d0:d0 + n_valid]
                    if n_valid == B:  # constant trip count: one vector add and store per register
                        for b in range(B):
                            out[b] = tile[p, b] + bias_block[b]
                    else:
                        for b in range(n_valid):
                            out[b] = tile[p, b] + bias_block[b]


@kernel()
def _column_conv(src, src_rows, offsets, wb, bias, dst, sched, me):
    """dst[r, ow, co] = bias[co] + sum_s src[src_rows[r] + ow + offsets[s]] * wb[co*T + s, 0] for r < R, ow < OW,
    co < C (T = len(offsets)): a convolution with one input channel and unit stride along the last dim, its vector
    lanes LB consecutive output columns (`micro_columns`) instead of output channels, for C below a tile's lanes. src
    flat (the padded input), src_rows and offsets unsigned, wb (C*T, >= LB) each row one weight repeated, dst (R, OW,
    C) C-contiguous, R >= LP, OW >= LB; items i of chunk_items(sched, me): the output rows LP*i .. LP*i + LP - 1
    (the last item's rows end at R; rows and columns computed twice get the same values twice)."""
    n_rows, out_w, c_out = dst.shape
    n_taps = offsets.shape[0]
    tiles = np.empty((c_out, LP, LB), dtype=dst.dtype)
    flat_tiles = tiles.reshape(-1)
    flat_dst = dst.reshape(-1)
    bases = np.empty(LP, dtype=np.uint64)
    for item in chunk_items(sched, me):
        r0 = min(item * LP, n_rows - LP)
        for col in range(0, out_w, LB):
            ow0 = min(col, out_w - LB)
            for p in range(LP):
                bases[p] = src_rows[r0 + p] + np.uint64(ow0)
            micro_columns(src, bases, offsets, wb, n_taps, tiles)
            for co in range(c_out):  # the tiles' lanes (columns) to pixels of c_out channels
                bias_co = bias[co]
                for p in range(LP):
                    at = ((r0 + p) * out_w + ow0) * c_out + co
                    t0 = (co * LP + p) * LB
                    for b in range(LB):
                        flat_dst[at + b * c_out] = flat_tiles[t0 + b] + bias_co


@kernel()
def _scatter_conv(gy, reduce_offsets, wpk, offsets, dst, dst_pix, cg_src, cg_dst, sched, me):
    """dst[n, dst_pix[q] + g*cg_dst + offsets[j]] += sum_co gy[n*Q + q, g*cg_src + co] * wpk[g, j // B, co, j % B]
    for q < Q = len(dst_pix), j < len(offsets), co < len(reduce_offsets) (= arange(cg_src)); gy (N*Q, C_src) and
    dst (N, image size) C-contiguous, dst zeroed; items n of chunk_items(sched, me): the images (no write races)."""
    n_q = dst_pix.shape[0]
    c_src = gy.shape[1]
    groups, n_blocks = wpk.shape[0], wpk.shape[1]
    n_cols = offsets.shape[0]
    gy_flat = gy.reshape(-1)
    for n in chunk_items(sched, me):
        tile = np.empty((P, B), dtype=dst.dtype)
        bases = np.empty(P, dtype=np.uint64)
        image = dst[n]
        for q0 in range(0, n_q, P):
            for g in range(groups):
                for p in range(P):
                    bases[p] = np.uint64((n * n_q + min(q0 + p, n_q - 1)) * c_src + g * cg_src)
                for nb in range(n_blocks):
                    n_valid = min(B, n_cols - nb * B)
                    micro_tile(gy_flat, bases, reduce_offsets, wpk[g, nb], tile, n_valid)
                    for p in range(min(P, n_q - q0)):
                        base = dst_pix[q0 + p] + g * cg_dst
                        for b in range(n_valid):
                            image[base + offsets[nb * B + b]] += tile[p, b]


@kernel()
def _weight_grad(flat, rows, pix, gy, partial, cg_src, cg_dst, chunk, sched, me):
    """partial[t, g, k, r, j, b] = sum over pixels s of chunks t, t+T, ... (chunk pixels each, in that order) of
    flat[rows[min(r, R-1)] + g*cg_src + pix[s]] * gy[s, g*cg_dst + nb*L + b] for the block nb = k*J + j < NB of
    output channels (discarded for nb*L + b >= cg_dst, unspecified for nb >= NB); gy (S, C_out) C-contiguous, partial
    (T, G, parts K, rows R' padded to the tile's, J, L) for L = B (the P x B tile) or WB (the WP x WB wide tile);
    items i of chunk_items(sched, me): the (slot t, group g, part k) = (i // (G*K), i // K % G, i % K), each summed
    by one thread. One tile per P (or WP) rows of w covers the part's blocks (x's values loaded once for all of
    them); it reads gy where it is when cg_dst is a multiple of L and few rows of w reuse it, else a packed copy of
    the part's blocks (the same values: the bits depend on neither)."""
    n_slots, groups, parts, n_rows_padded, per_part, lanes = partial.shape
    wide = lanes == WB  # as in _gather_conv
    tile_rows = WP if wide else P
    n_blocks = -(-cg_dst // lanes)
    n_rows = rows.shape[0]
    n_pix, c_out = gy.shape
    n_chunks = (n_pix + chunk - 1) // chunk
    last = n_rows - 1
    # gy in place where no block is partial (the tile then reads whole blocks of lanes) and few rows of w reuse it (a
    # copy costs more than the tiles then); else a packed copy (rows of gy a power-of-two stride apart share a few
    # cache sets), zero past cg_dst
    direct = cg_dst % lanes == 0 and n_rows <= _DIRECT_ROWS
    gy_flat = gy.reshape(-1)
    bases = np.empty(max(P, WP), dtype=np.uint64)
    d_rows = np.empty(max(P, WP), dtype=np.uint64)
    zero = np.zeros(per_part * lanes, dtype=partial.dtype)  # the base of each block's first sums
    gy_chunk = _line_aligned(0 if direct else per_part * chunk * lanes, partial)
    partial_flat = partial.reshape(-1)
    for item in chunk_items(sched, me):
        t, g_k = divmod(item, groups * parts)
        g, k = divmod(g_k, parts)
        nb0 = k * per_part
        nb1 = min(n_blocks, nb0 + per_part)
        acc_at = ((t * groups + g) * parts + k) * n_rows_padded * per_part * lanes  # partial[t, g, k] in partial_flat
        for ck in range(t, n_chunks, n_slots):
            s0 = ck * chunk
            s1 = min(s0 + chunk, n_pix)
            pix_chunk = pix[s0:s1]  # one view per chunk, not per tile
            if direct:
                # (the part's blocks, pixels, lanes) of gy in place (as_strided: a transposed view compiled 2 s longer)
                blocks = np.lib.stride_tricks.as_strided(gy_flat[s0 * c_out + g * cg_dst + nb0 * lanes:],
                                                         shape=(nb1 - nb0, s1 - s0, lanes),
                                                         strides=(lanes * gy.itemsize, c_out * gy.itemsize,
                                                                  gy.itemsize))
            else:
                for j in range(nb1 - nb0):
                    c0 = g * cg_dst + (nb0 + j) * lanes
                    n_valid = min(lanes, cg_dst - (nb0 + j) * lanes)
                    for s in range(s1 - s0):
                        at = np.uint64((j * chunk + s) * lanes)
                        src_at = np.uint64((s0 + s) * c_out + c0)
                        for b in range(n_valid):
                            gy_chunk[at + np.uint64(b)] = gy_flat[src_at + np.uint64(b)]
                        for b in range(n_valid, lanes):
                            gy_chunk[at + np.uint64(b)] = 0
                blocks = gy_chunk.reshape((per_part, chunk, lanes))[:nb1 - nb0, :s1 - s0]
            for r0 in range(0, n_rows, tile_rows):
                for p in range(tile_rows):
                    bases[p] = rows[min(r0 + p, last)] + np.uint64(g * cg_src)
                    d_rows[p] = np.uint64(acc_at + (r0 + p) * per_part * lanes)
                if wide:
                    micro_tile_into_wide(flat, bases, pix_chunk, blocks, partial_flat, d_rows, zero, ck != t)
                else:
                    micro_tile_into(flat, bases, pix_chunk, blocks, partial_flat, d_rows, zero, ck != t)


@kernel(inline="always")
def _line_aligned(n, like):
    """A zeroed array of n elements of like's dtype starting on a cache line (64 bytes: vector loads that do not
    straddle two lines)."""
    extra = 64 // like.itemsize
    raw = np.zeros(n + extra, dtype=like.dtype)
    start = (64 - raw.ctypes.data % 64) % 64 // like.itemsize
    return raw[start:start + n]


@kernel()
def _spread_groups(x, xe, sched, me):
    """xe[n, i, q, g*c + j] = x[n, q, g*c + i] for i, j < c = xe.shape[1]: every output channel of group g gets the
    group's input channel i; x (N, Q, C) and xe (N, c, Q, C) C-contiguous; items r of chunk_items(sched, me): the
    pixels (n, q) = divmod(r, Q)."""
    n_pix, ch = x.shape[1], x.shape[2]
    c = xe.shape[1]
    x_flat, xe_flat = x.reshape(-1), xe.reshape(-1)  # flat indexing: no array view (reference count) per pixel
    for r in chunk_items(sched, me):
        n = r // n_pix
        q = r - n * n_pix
        src = r * ch
        dst = (n * c * n_pix + q) * ch  # xe[n, 0, q, 0]; xe[n, i, q, 0] is i * n_pix * ch further
        for i in range(c):
            for g0 in range(0, ch, c):
                v = x_flat[src + g0 + i]
                for j in range(c):
                    xe_flat[dst + i * n_pix * ch + g0 + j] = v


@kernel()
def _pad_rows(x, table, before, xp, sched, me):
    """xp[r, before + i] = x[table[r], i] for i < x.shape[1] where table[r] >= 0, zero elsewhere in row r of xp: rows
    of channels-last pixels, x (R, W*C) and xp (R', W'*C) C-contiguous, before + x.shape[1] <= xp.shape[1]; items
    r of chunk_items(sched, me): the rows of xp."""
    w, width = x.shape[1], xp.shape[1]
    for r in chunk_items(sched, me):
        dst = xp[r]
        s = table[r]
        if s < 0:
            for i in range(width):
                dst[i] = 0
            continue
        src = x[s]
        for i in range(before):
            dst[i] = 0
        for i in range(w):
            dst[before + i] = src[i]
        for i in range(before + w, width):
            dst[i] = 0


_PACK_ROWS = 64  # rows of weights per item of _pack_blocks


@kernel()
def _pack_blocks(w2, out, sched, me):
    """out[g, k, r, b] = w2[r, g*cg + k*L + b] where k*L + b < cg, else 0, for g < G, k < NB, r < R, b < L: _pack of
    w2 (R, G*cg) seen as (G, R, cg); out (G, NB, R, L) and w2 C-contiguous, cg = w2.shape[1] // G, L = B or WB;
    items i of chunk_items(sched, me): the rows _PACK_ROWS*i up to _PACK_ROWS*(i + 1), each read once, in order."""
    if out.shape[3] == WB:
        _pack_rows(w2, out, sched, me, WB)
    else:
        _pack_rows(w2, out, sched, me, B)


@kernel(inline="always")
def _pack_rows(w2, out, sched, me, lanes):
    """_pack_blocks for out of `lanes` lanes (a constant: vector moves)."""
    groups, n_blocks, n_rows = out.shape[0], out.shape[1], out.shape[2]
    width = w2.shape[1]
    cg = width // groups
    src, dst = w2.reshape(-1), out.reshape(-1)  # flat: no array view per row
    for item in chunk_items(sched, me):
        for r in range(item * _PACK_ROWS, min(n_rows, (item + 1) * _PACK_ROWS)):
            for gk in range(groups * n_blocks):
                g, k = divmod(gk, n_blocks)
                s0, d0 = r * width + g * cg + k * lanes, (gk * n_rows + r) * lanes
                n_valid = min(lanes, cg - k * lanes)
                if n_valid == lanes:  # constant trip count: vector moves
                    for b in range(lanes):
                        dst[d0 + b] = src[s0 + b]
                else:
                    for b in range(n_valid):
                        dst[d0 + b] = src[s0 + b]
                    for b in range(n_valid, lanes):
                        dst[d0 + b] = 0


_SUM_WIDTH = 128  # grad_bias folds rows of fewer channels into rows of at least this many


@kernel()
def _column_sums(mat, partial, sched, me):
    """partial[t, c] = sum of mat[r, c] over the rows r of block t (of partial.shape[0] equal blocks), for the items t
    of chunk_items(sched, me); mat C-contiguous, partial float64."""
    n_slots = partial.shape[0]
    n_rows = mat.shape[0]
    for t in chunk_items(sched, me):
        acc = partial[t]
        for r in range(t * n_rows // n_slots, (t + 1) * n_rows // n_slots):
            row = mat[r]
            for c in range(row.shape[0]):
                acc[c] += row[c]


# ---------------------------------------------------------------- tables and operand layouts

def _gather_items(n_pix, lanes):
    """(tiles per item, items) of _gather_conv for n_pix output pixels and weights packed in blocks of `lanes`: up to
    _TILES_PER_ITEM tiles per item (they share each panel of weights), fewer when the smallest chunks of a split call
    would be less than an item (the grouping of tiles into items does not change any result)."""
    n_tiles = -(-n_pix // _tile_rows(lanes))
    per_item = min(_TILES_PER_ITEM, max(1, n_tiles // (CHUNKS_PER_THREAD * threads())))
    return per_item, -(-n_tiles // per_item)


def _lanes(cg_dst, lane_groups=0):
    """The lanes of the blocks of output channels (cg_dst per group) that _gather_conv and _weight_grad compute in one
    register tile: WB (the wide tile) for at least WB channels, else B. Measured, 2 threads: forwards DeepLab
    5.49-5.57 -> 4.73-4.78 ms, ResNet-50 3x3 5.35-5.51 -> 4.94-4.96; weight gradients (and bias) C3D 17.6-18.4 ->
    15.5-15.6, ResNet-50 1x1 reduce 3.64-3.73 -> 3.02-3.04; for 32 channels (the 3-D U-Net layer) the wide tile was
    1.2x slower in the forward and twice as slow in the backward."""
    return WB if cg_dst >= WB and not lane_groups else B


def _tile_rows(lanes):
    """The output pixels of _gather_conv's tile for weights packed in blocks of `lanes`."""
    return WP if lanes == WB else P


def _panel(wpk):
    """(panel, parts): the blocks of packed weights wpk (G, blocks, R, lanes) that _gather_conv runs an item's tiles
    through, as many as fit in _PANEL_BYTES (at least one), and the parts of wpk (G times the panels per group) that
    multiply its items."""
    panel = max(1, _PANEL_BYTES // (wpk.shape[2] * wpk.shape[3] * wpk.itemsize))
    return panel, wpk.shape[0] * -(-wpk.shape[1] // panel)


@functools.cache
def _l2_bytes():
    """The size of cpu0's level-2 cache (Linux sysfs), or 1 MiB where it cannot be read."""
    base = "/sys/devices/system/cpu/cpu0/cache"
    try:
        for entry in sorted(os.listdir(base)):
            with open(f"{base}/{entry}/level") as level, open(f"{base}/{entry}/size") as size:
                if level.read().strip() == "2":
                    text = size.read().strip()
                    return int(text[:-1]) << {"K": 10, "M": 20}[text[-1]]
    except (OSError, ValueError, KeyError, IndexError):
        pass
    return 1 << 20


def _weights_outer(wpk, src, tile_groups, parts):
    """Whether _gather_conv's threads take its items weights part by weights part (each part through every tile
    group) instead of tile group by tile group: where the weights do not fit in L2 (a thread's L2, of which half is
    taken as room) and that reads less from beyond it: the source once per part (or once, where it fits), against
    all the weights once per tile group. Measured, 2 threads: DeepLab's forward (2.4 MB of weights) 5.46-5.54 ->
    5.20-5.30 ms weights part first; ResNet-50's strided 3x3 (a 12.8 MB source, 0.6 MB of weights) 11% slower."""
    room = _l2_bytes() // 2
    by_weights = src.nbytes * (parts if src.nbytes > room else 1)
    return parts > 1 and wpk.nbytes > room and by_weights < wpk.nbytes * tile_groups


@functools.lru_cache(maxsize=256)
def _group_shifts(groups, cg_src, cg_dst, src_phase=(0,), dst_phase=(0,)):
    """(src_shift, dst_shift) of _gather_conv: for each phase p and group g (in that order), src_phase[p] +
    g*cg_src (unsigned) and dst_phase[p] + g*cg_dst. Cached, so the arrays are shared between calls: nothing may
    write to them (the kernels only read them; making them read-only would give Numba another type to compile
    for)."""
    g = np.arange(groups, dtype=np.int64)
    src = (np.asarray(src_phase, dtype=np.int64)[:, None] + g * cg_src).reshape(-1)
    dst = (np.asarray(dst_phase, dtype=np.int64)[:, None] + g * cg_dst).reshape(-1)
    return src.astype(np.uint64), dst


def _c(a):
    """`a` as a C-contiguous, writeable, aligned array (a copy only when needed): one kernel type per dtype."""
    flags = a.flags
    return a if flags.c_contiguous and flags.writeable and flags.aligned else np.array(a, order="C")


def _strides(shape):
    """Element strides of a C-contiguous array of `shape`."""
    strides = [1] * len(shape)
    for i in range(len(shape) - 2, -1, -1):
        strides[i] = strides[i + 1] * shape[i + 1]
    return strides


_GRID_CACHE = {}
_GRID_CACHED_LENGTH = 1 << 16  # tables up to this length are kept (at most _GRID_CACHE_SIZE of them)
_GRID_CACHE_SIZE = 512


def _cached(key, build, length=lambda table: table.size):
    """build(), kept under `key` when its length (elements of its tables) is small (index tables depend on shapes
    and parameters only; callers never modify them)."""
    table = _GRID_CACHE.get(key)
    if table is None:
        table = build()
        if length(table) <= _GRID_CACHED_LENGTH:
            if len(_GRID_CACHE) >= _GRID_CACHE_SIZE:
                _GRID_CACHE.clear()
            _GRID_CACHE[key] = table
    return table


def _grid(axes, strides, dtype=np.uint64):
    """Flat offsets sum_d (start_d + i_d*step_d) * strides[d] for every index tuple (i_0, i_1, ...) in C
    order, one (start, step, count) progression per dim (cached)."""
    def build():
        total = np.zeros((), dtype=np.int64)
        for (start, step, count), stride in zip(axes, strides):
            total = np.add.outer(total, (start + step * np.arange(count, dtype=np.int64)) * stride)
        return total.astype(dtype).ravel()
    return _cached(("grid", tuple(axes), tuple(strides), np.dtype(dtype).char), build)


def _progression(values):
    """(start, step, count) of an arithmetic progression given as a non-empty list."""
    step = values[1] - values[0] if len(values) > 1 else 1
    return values[0], step, len(values)


def _tap_offsets(kernel, dilation, shape, cg):
    """Flat offsets (uint64) of every (tap, channel < cg) of a kernel window in a C-contiguous array of
    `shape` (N, *spatial, C), relative to the window's first element."""
    strides = _strides(shape)
    return _grid([(0, d, k) for k, d in zip(kernel, dilation)] + [(0, 1, cg)], strides[1:])


def _aligned_empty(shape, dtype, align=64):
    """np.empty(shape, dtype) starting on an `align`-byte boundary (a cache line: the register tiles' vector
    loads from it then never straddle two lines)."""
    dtype = np.dtype(dtype)
    size = math.prod(shape) * dtype.itemsize
    raw = np.empty(size + align, dtype=np.uint8)
    start = -raw.ctypes.data % align
    return raw[start:start + size].view(dtype).reshape(shape)


def _pack(mat, lanes=B):
    """(G, *R, Cg) -> (G, ceil(Cg / L), prod(R), L) for L = lanes, zero-filled past Cg: L-wide column blocks, rows
    (the R axes flattened) contiguous, cache-line aligned. mat may be any view: one copy, which reads Cg in runs of L
    (a transposed weight is not first copied whole)."""
    groups, rows_shape, cg = mat.shape[0], mat.shape[1:-1], mat.shape[-1]
    full, rest = divmod(cg, lanes)
    out = _aligned_empty((groups, full + (rest > 0), math.prod(rows_shape), lanes), mat.dtype)
    blocks = out[:, :full].reshape(groups, full, *rows_shape, lanes)
    nr = len(rows_shape)
    blocks[...] = mat[..., :full * lanes].reshape(groups, *rows_shape, full, lanes).transpose(
        0, nr + 1, *range(1, nr + 1), nr + 2)
    if rest:
        out[:, full, :, :rest] = mat[..., full * lanes:].reshape(groups, -1, rest)
        out[:, full, :, rest:] = 0
    return out


def _is_depthwise(w_shape, groups):
    return groups > 1 and w_shape[-2] == 1


_ROTATIONS = (2, 4)  # channels per group whose weight gradient runs in _depthwise.grad_weight_groups
_FEW_PER_GROUP = 4  # up to this many channels per group (in and out), a grouped convolution's weight gradient
                    # (grad_weight_groups, or as depthwise) and, unless _lane_groups, its forward run in _depthwise


def _is_few_per_group(w_shape, groups):
    """2.._FEW_PER_GROUP input channels per group and as many output channels: see _as_depthwise (and
    _lane_groups, which takes the forward and input gradient of some of these layouts)."""
    cg_in, c_out = w_shape[-2:]
    return groups > 1 and 2 <= cg_in <= _FEW_PER_GROUP and c_out == groups * cg_in


def _column_lanes(w_shape, params, out_shape):
    """Whether the forward runs in _column_conv: one input channel, one group, fewer output channels than a tile's
    lanes (the gather tile would leave most of them idle), unit stride along the last dim, and at least LP output
    rows of LB columns."""
    rows = math.prod(out_shape[:-2])
    return (params.groups == 1 and w_shape[-2] == 1 and w_shape[-1] < B and params.stride[-1] == 1
            and out_shape[-2] >= LB and rows >= LP)


def _lane_groups(w_shape, groups, dtype):
    """c = C_in // groups when the forward and input gradient run with the groups side by side in the vector lanes
    (`micro_groups`): c is 2 or 4, in and out, and C_out a multiple of the vector length; else 0."""
    cg_in, c_out = w_shape[-2:]
    lanes = VECTOR_BYTES // np.dtype(dtype).itemsize
    return cg_in if _is_few_per_group(w_shape, groups) and cg_in in (2, 4) and c_out % lanes == 0 else 0


def _rotated(w3, c):
    """(T, c, C) weights (tap, input channel within the group, output channel) as the (1, T * c, C) rows of
    micro_groups: row t*c + k holds, in lane co, the weight of input channel (co + k) % c of co's group."""
    n_taps, _, ch = w3.shape
    co = np.arange(ch)
    rows = np.empty((n_taps, c, ch), dtype=w3.dtype)
    for k in range(c):
        rows[:, k] = w3[:, (co + k) % c, co]
    return rows.reshape(1, n_taps * c, ch)


def _as_depthwise(x, w_shape, params):
    """A grouped convolution with c = C_in // groups = C_out // groups as a depthwise one over one more (leading)
    spatial dim of size c, the group's input channel i:
    y[n, o, co] = sum_{i, k} x[n, o*s + k*d, (co // c)*c + i] * w[k, i, co] = sum_{i, k} xe[n, i, o*s + k*d, co] *
    we[i, k, 0, co] with xe[n, i, ..., co] = x[n, ..., (co // c)*c + i] (a copy c times x's size) and
    we = w with its C_in axis moved first. Each vector lane of the depthwise kernels is then an output channel,
    where the gather tile would have used c of its B lanes. Returns (xe, we's shape, its parameters); callers pass
    at most N // c images at a time (see _image_chunks), so that xe stays within x's size."""
    c, c_out = w_shape[-2:]
    n, spatial = x.shape[0], x.shape[1:-1]
    xe = np.empty((n, c, *spatial, c_out), dtype=x.dtype)
    pixels = _c(x).reshape(n, -1, c_out)
    call(_spread_groups, pixels, xe.reshape(n, c, -1, c_out), items=n * pixels.shape[1], work=xe.size)
    we_shape = (c, *w_shape[:-2], 1, c_out)
    depthwise = params._replace(stride=(1, *params.stride), pads=((0, 0), *params.pads),
                                dilation=(1, *params.dilation), groups=c_out)
    return xe, we_shape, depthwise


def _image_chunks(n, c):
    """Slices of the batch of at most max(1, n // c) images each."""
    step = max(1, n // c)
    return [slice(i, min(n, i + step)) for i in range(0, n, step)]


def _few_per_group_forward(x, w, bias, params, out):
    """out = conv(x, w) + bias through `_as_depthwise`, a chunk of images at a time."""
    c = w.shape[-2]
    we = _c(np.moveaxis(w, -2, 0))  # (c, *kernel, C_out): the depthwise weight, less its unit C_in axis
    for part in _image_chunks(x.shape[0], c):
        xe, we_shape, depthwise = _as_depthwise(x[part], w.shape, params)
        chunk = out[part]
        forward(xe, we.reshape(we_shape), bias, depthwise, chunk.reshape(chunk.shape[0], 1, *chunk.shape[1:]))
    return out


def _few_per_group_grad_weight(gy, x, w_shape, params):
    """dL/dw through `_as_depthwise`: the chunks' weight gradients added in order."""
    total = None
    for part in _image_chunks(x.shape[0], w_shape[-2]):
        xe, we_shape, depthwise = _as_depthwise(x[part], w_shape, params)
        gy_part = gy[part]
        gwe = _depthwise_grad_weight(gy_part.reshape(gy_part.shape[0], 1, *gy_part.shape[1:]), xe, we_shape, depthwise)
        total = gwe if total is None else total + gwe
    return np.ascontiguousarray(np.moveaxis(total[..., 0, :], 0, -2))  # (c, *kernel, C_out) -> (*kernel, c, C_out)


def _unpadded(pads):
    return not any(p for pair in pads for p in pair)


def _pad(x, pads, mode, prep=None):
    """x padded per `pads` ((before, after) per spatial dim) in `mode`, as a new C-contiguous array
    (x itself when it is already C-contiguous, writeable and unpadded); see _zero_padded for `prep`."""
    if _unpadded(pads):
        return _c(x)
    if mode == "zeros":
        return _zero_padded(x, pads, prep)
    np_mode = {"reflect": "reflect", "replicate": "edge", "circular": "wrap"}[mode]
    return _c(np.pad(x, ((0, 0), *pads, (0, 0)), mode=np_mode))  # np.pad keeps F order


def _zero_padded(x, pads, prep=None):
    """x zero-padded per `pads` ((before, after) >= 0 per spatial dim) as a new C-contiguous array, written once, by
    nbconv's threads (np.zeros and a copy would write it twice, on one thread); with a list `prep`, the threads' job
    is appended to it instead of run, and the array is returned unwritten."""
    x = _c(x)
    n, spatial, c = x.shape[0], x.shape[1:-1], x.shape[-1]
    sizes = [size + a + b for size, (a, b) in zip(spatial, pads)]
    if x.size == 0:
        return np.zeros((n, *sizes, c), dtype=x.dtype)
    table = _cached(("padded rows", n, tuple(spatial[:-1]), tuple(pads[:-1])), lambda: _depthwise.row_table(
        n, [np.arange(size)[:, None] - a for size, (a, _) in zip(sizes[:-1], pads[:-1])], spatial[:-1]).ravel())
    xp = np.empty((n, *sizes, c), dtype=x.dtype)
    job = (_pad_rows, (x.reshape(-1, spatial[-1] * c), table, pads[-1][0] * c, xp.reshape(-1, sizes[-1] * c)),
           table.shape[0])
    if prep is None:
        call(job[0], *job[1], items=job[2], work=xp.size)
    else:
        prep.append(job)
    return xp


def _fold(gxp, shape, pads, mode):
    """Gradient w.r.t. the unpadded input from the gradient w.r.t. the padded one: each padded position's
    gradient is added to the input position it copies (dropped for "zeros"); gxp itself if unpadded."""
    if _unpadded(pads):
        return gxp
    g = gxp
    for axis, (before, after) in enumerate(pads, start=1):
        n = shape[axis]
        inner = np.take(g, np.arange(before, before + n), axis=axis)
        if mode != "zeros" and before + after:
            border = np.concatenate([np.arange(before), np.arange(before + n, before + n + after)])
            sources = source_indices(border - before, n, CODES[mode])
            # np.add.at adds in the order of `border` (repeats accumulate): deterministic
            np.add.at(np.moveaxis(inner, axis, 0), sources, np.moveaxis(np.take(g, border, axis=axis), axis, 0))
        g = inner
    return np.ascontiguousarray(g)


def _bias_blocks(bias, blocks, dtype, lanes=B):
    """bias (or zeros) as (groups, blocks, lanes) blocks of each group's channels, zero-filled past them."""
    groups, n_blocks = blocks
    if bias is None:
        return np.zeros((groups, n_blocks, lanes), dtype=dtype)
    out = np.zeros((groups, n_blocks * lanes), dtype=dtype)
    out[:, :bias.shape[0] // groups] = bias.reshape(groups, -1)
    return out.reshape(groups, n_blocks, lanes)


def _bias_arg(bias, dtype):
    return np.empty(0, dtype=dtype) if bias is None else _c(bias)


# ---------------------------------------------------------------- depthwise route

def _rows(a):
    """C-contiguous (N, *spatial, C) as rows (N * prod(spatial[:-1]), spatial[-1], C) (a view)."""
    return a.reshape(-1, a.shape[-2], a.shape[-1])


def _depthwise_source(x, params):
    """(src, offsets): zero padding is applied by the kernels' border checks, other modes by a copy."""
    if params.mode == "zeros":
        return _c(x), tuple(before for before, _ in params.pads)
    return _pad(x, params.pads, params.mode), (0,) * len(params.pads)


def _padded_size(src, params):
    """The elements of _depthwise_source's padded copy src (0 where the kernels read x: zero padding or none), from the
    parameters, not from whether x needed a contiguous copy."""
    return 0 if params.mode == "zeros" or _unpadded(params.pads) else src.size


def _source_rows(src_shape, out_spatial, kernel, stride, dilation, offset):
    """The depthwise kernels' row table: the source row each (output row, outer tap) reads, -1 outside."""
    return _cached(("source rows", src_shape[:-1], tuple(out_spatial), tuple(kernel), tuple(stride),
                    tuple(dilation), tuple(offset)),
                   lambda: _depthwise.row_table(src_shape[0], _depthwise.forward_positions(
                       out_spatial[:-1], kernel[:-1], stride[:-1], dilation[:-1], offset[:-1]), src_shape[1:-2]))


def _depthwise_forward(src, wk, bias, dst, offset, stride, dilation):
    """dst = depthwise correlation of src with wk (*kernel, C_out) + bias, src shifted back by `offset`."""
    kernel = wk.shape[:-1]
    row_src = _source_rows(src.shape, dst.shape[1:-1], kernel, stride, dilation, offset)
    w3 = wk.reshape(-1, kernel[-1], wk.shape[-1])
    bias = bias if bias.shape[0] else np.zeros(dst.shape[-1], dtype=dst.dtype)
    dst_rows = _rows(dst)
    call(_depthwise.forward, _rows(src), w3, _depthwise.lanes_weights(w3), row_src, bias, dst_rows,
         offset[-1], stride[-1], dilation[-1], window_supported(kernel[-1], stride[-1], dilation[-1]),
         items=dst_rows.shape[0], work=dst.size * math.prod(kernel))
    return dst


def _depthwise_grad_input(gy, w, dst, offset, stride, dilation):
    """Depthwise input gradient into dst, whose origin is position `offset` of the padded input.
    At stride 1 without channel multiplier it is the forward kernel on gy with the kernel flipped."""
    nd = gy.ndim - 2
    kernel = w.shape[:-2]
    if all(s == 1 for s in stride) and gy.shape[-1] == dst.shape[-1]:
        flipped = _c(w[(slice(None, None, -1),) * nd + (0,)])
        shifted = tuple(d * (k - 1) - off for d, k, off in zip(dilation, kernel, offset))
        return _depthwise_forward(_c(gy), flipped, np.empty(0, dtype=gy.dtype), dst, shifted, stride, dilation)
    row_gy = _cached(("adjoint rows", gy.shape[:-1], dst.shape[1:-2], kernel, stride, dilation, offset),
                     lambda: _depthwise.row_table(gy.shape[0], _depthwise.adjoint_positions(
                         dst.shape[1:-2], kernel[:-1], stride[:-1], dilation[:-1], offset[:-1]), gy.shape[1:-2]))
    gy = _c(gy)
    dst_rows = _rows(dst)
    w3 = _c(w.reshape(-1, kernel[-1], w.shape[-1]))
    call(_depthwise.grad_input, _rows(gy), w3, _depthwise.lanes_weights(w3), row_gy, dst_rows, offset[-1], stride[-1],
         dilation[-1], items=dst_rows.shape[0], work=gy.size * math.prod(kernel))
    return dst


def _slot_count(slot_size, w_size, x_size, gy_size, copy_size):
    """Slots of partial sums (each slot_size elements) for a weight gradient of a w_size weight, x_size input and
    gy_size output: SLOTS, fewer when they (with a copy of x of copy_size, such as a padded one) would outgrow twice
    the largest operand (a large weight on a small map); from sizes only, so the sums do not depend on the number of
    threads."""
    budget = 2 * max(x_size, gy_size, w_size) - copy_size
    return max(1, min(SLOTS, budget // slot_size))


def _grouped_grad_weight(gy, x, w_shape, params, with_bias):
    """dL/dw of a grouped convolution with c = 2 or 4 channels per group in and out (`_depthwise.grad_weight_groups`,
    whose rotated sums are put back in place here), or with_bias (dL/dw, grad_bias(gy))."""
    kernel, (c, c_out) = w_shape[:-2], w_shape[-2:]
    src, offset = _depthwise_source(x, params)
    gy = _c(gy)
    row_src = _source_rows(src.shape, gy.shape[1:-1], kernel, params.stride, params.dilation, offset)
    n_slots = _slot_count(math.prod(w_shape), math.prod(w_shape), x.size, gy.size, _padded_size(src, params))
    partial = np.zeros((n_slots, row_src.shape[1], kernel[-1], c, c_out), dtype=gy.dtype)
    bias_jobs, bias_total = _bias_jobs(gy) if with_bias else ([], None)
    call_all([(_depthwise.grad_weight_groups, (_rows(src), _rows(gy), row_src, partial, offset[-1], params.stride[-1],
                                               params.dilation[-1]), n_slots)] + bias_jobs,
             gy.size * math.prod(kernel) * c)
    rotated = partial.sum(axis=0).reshape(*kernel, c, c_out)  # [k, r, l]: input channel l % c, rotation r
    lane = np.arange(c_out)
    i = lane % c
    gw = np.empty(w_shape, dtype=gy.dtype)
    for r in range(c):
        gw[..., i, lane - i + (i + r) % c] = rotated[..., r, :]
    return (gw, bias_total()) if with_bias else gw


def _depthwise_grad_weight(gy, x, w_shape, params, with_bias=False):
    """dL/dw of a depthwise convolution, or with_bias (dL/dw, grad_bias(gy)): the bias sums share the weight
    gradient's hand-off to the threads."""
    kernel, c_out = w_shape[:-2], w_shape[-1]
    src, offset = _depthwise_source(x, params)
    gy = _c(gy)
    lanes = c_out == params.groups and c_out % LB == 0
    gy_blocks = gy.reshape(-1, LB) if lanes else np.empty((0, LB), dtype=gy.dtype)
    row_src = _source_rows(src.shape, gy.shape[1:-1], kernel, params.stride, params.dilation, offset)
    n_slots = _slot_count(math.prod(w_shape), math.prod(w_shape), x.size, gy.size, _padded_size(src, params))
    partial = np.zeros((n_slots, row_src.shape[1], kernel[-1], 1, c_out), dtype=gy.dtype)
    bias_jobs, bias_total = _bias_jobs(gy) if with_bias else ([], None)
    call_all([(_depthwise.grad_weight, (_rows(src), _rows(gy), gy_blocks, row_src, partial, offset[-1],
                                        params.stride[-1], params.dilation[-1]), n_slots)] + bias_jobs,
             gy.size * math.prod(kernel))
    gw = partial.sum(axis=0).reshape(w_shape)
    return (gw, bias_total()) if with_bias else gw


# ---------------------------------------------------------------- the Backend interface

def as_array(a):
    """NumPy arrays are the CPU backend's own type."""
    return a


def empty(shape, dtype):
    """A new result array, starting on a cache line: the next layer's vector loads from it then never straddle two
    lines (on AVX-512, where a vector is a whole line, a depthwise layer reading an aligned input ran 1.1-1.35x
    faster than one at NumPy's usual 16 bytes past a line)."""
    return _aligned_empty(shape, dtype)


def check_out(out, inputs):
    """ValueError unless `out` is C-contiguous, writeable and shares no memory with an input."""
    if not out.flags.c_contiguous:
        raise ValueError(f"out must be C-contiguous (out.strides={out.strides})")
    if not out.flags.writeable:
        raise ValueError("out must be writeable")
    for name, a in inputs.items():
        if a is not None and np.may_share_memory(out, a):
            raise ValueError(f"out overlaps {name}; pass a separate array")


def forward(x, w, bias, params, out):
    """out = conv(x, w) + bias."""
    if x.size == 0:  # an empty spatial dim (the output, if any, reads only zero padding): the bias alone
        out[...] = 0 if bias is None else bias
        return out
    lane_groups = _lane_groups(w.shape, params.groups, x.dtype)
    if _is_few_per_group(w.shape, params.groups) and out.size and not lane_groups:
        return _few_per_group_forward(x, w, bias, params, out)
    if _is_depthwise(w.shape, params.groups):
        src, offset = _depthwise_source(x, params)
        return _depthwise_forward(src, _c(w[..., 0, :]), _bias_arg(bias, x.dtype), out, offset,
                                  params.stride, params.dilation)
    if out.size == 0:
        return out
    kernel, (cg_in, c_out) = w.shape[:-2], w.shape[-2:]
    groups = params.groups
    out_spatial = out.shape[1:-1]
    if _column_lanes(w.shape, params, out.shape):
        xp = _pad(x, params.pads, params.mode)
        # one table entry per output row (n, o_0, ..., o_{nd-2}): the flat offset of its first input pixel
        src_rows = _grid([(0, 1, x.shape[0])] + [(0, s, o) for o, s in zip(out_spatial[:-1], params.stride)],
                         _strides(xp.shape)[:-2])
        wb = np.repeat(w.reshape(-1, c_out).T.reshape(-1, 1), LB, axis=1)  # row co*T + t: w[t, co] in every lane
        call(_column_conv, xp.reshape(-1), src_rows, _tap_offsets(kernel, params.dilation, xp.shape, 1), wb,
             np.zeros(c_out, dtype=x.dtype) if bias is None else _c(bias), _rows(out),
             items=-(-src_rows.shape[0] // LP), work=out.size * math.prod(kernel))
        return out
    prep = []  # copies the threads make before the gather, in one hand-off
    if lane_groups:  # one "group" of all channels, each tap's cg_in source channels summed in the tile
        wpk = _pack(_rotated(w.reshape(-1, cg_in, c_out), cg_in))
    elif w.nbytes >= _PARALLEL_PACK_BYTES and w.flags.c_contiguous:
        rows, lanes = w.size // c_out, _lanes(c_out // groups)
        wpk = _aligned_empty((groups, -(-(c_out // groups) // lanes), rows, lanes), w.dtype)
        prep.append((_pack_blocks, (w.reshape(rows, c_out), wpk), -(-rows // _PACK_ROWS)))
    else:
        wpk = _pack(w.reshape(-1, groups, c_out // groups).transpose(1, 0, 2), _lanes(c_out // groups))
    return _gather_forward(x, wpk, w.shape, bias, params, out, lane_groups, prep)


def _gather_forward(x, wpk, w_shape, bias, params, out, lane_groups, prep=()):
    """out = conv(x, w) + bias through _gather_conv, for w of w_shape packed as wpk: _pack of its (groups, taps x
    C_in // groups, C_out // groups) view, or with lane_groups of its _rotated rows; prep: jobs that fill wpk, run
    with the padded copies of x in one hand-off before the gather."""
    kernel, (cg_in, c_out) = w_shape[:-2], w_shape[-2:]
    groups, out_spatial = params.groups, out.shape[1:-1]
    if lane_groups:
        groups, cg_in = 1, c_out
    lanes = wpk.shape[3]
    bias_blocks, (panel, parts) = _bias_blocks(bias, wpk.shape[:2], x.dtype, lanes), _panel(wpk)
    plan, work = _cached(("forward", x.shape, w_shape, params, lane_groups, lanes, threads(), _SPLIT_BORDER_FROM,
                          _SPLIT_BORDER_INTERIOR),
                         lambda: _forward_plan(x.shape, kernel, params, out_spatial, c_out, lane_groups, lanes),
                         lambda plan: sum(box[1].size + box[2].size + box[3].size for box in plan[0]))
    jobs, prep = [], list(prep)
    for box, offsets, rows, dst_rows, src_step, row_len, per_item, n_items in plan:
        src = _source(x, params, kernel, box, prep).reshape(-1)
        jobs.append((_gather_conv, (src, rows, src_step, offsets, wpk, bias_blocks, out.reshape(-1), dst_rows, c_out,
                                    row_len, *_group_shifts(groups, cg_in, c_out // groups), c_out // groups,
                                    lane_groups, per_item, panel, _weights_outer(wpk, src, n_items, parts)),
                     n_items * parts))
    call_all(prep, sum(args[-1].size for _, args, _ in prep))  # the packed weights and padded copies
    call_all(jobs, work)  # the boxes write disjoint parts of out: one hand-off for all
    return out


# Zero-padded inputs of at least _SPLIT_BORDER_FROM elements skip the padded copy (_source_boxes) where the interior
# holds this share of the outputs: where the border is thicker (small 3-D volumes), its copies and jobs cost more than
# the one padded copy made by the threads (measured: 3-D U-Net's 16x32x32 layer, 77% interior, 5% slower).
_SPLIT_BORDER_FROM = 1 << 20
_SPLIT_BORDER_INTERIOR = 0.9


def _source_boxes(x_shape, params, out_spatial, kernel):
    """[(output box ((lo, hi) per spatial dim), source, source position of the box's first output)]: the arrays the
    gather kernel reads, each covering a box of the output (all images). Unpadded x, or padding in another mode, or a
    small input: source "padded", one padded copy of x for the whole output. Large zero-padded inputs: source "x",
    x itself, for the interior box (outputs whose taps all fall inside x) and, for the border boxes around it,
    source "box", zero-padded copies of just the input they read (a few rows or columns), instead of a padded copy
    of all of x (where the interior is most of the output)."""
    nd = len(out_spatial)
    whole = [(0, o) for o in out_spatial]
    if _unpadded(params.pads) or params.mode != "zeros" or math.prod(x_shape) < _SPLIT_BORDER_FROM:
        return [(whole, "padded", (0,) * nd)]
    sizes = x_shape[1:-1]
    extent = [d * (k - 1) for k, d in zip(kernel, params.dilation)]
    lo = [-(-a // s) for (a, _), s in zip(params.pads, params.stride)]  # first o with o*s - a >= 0
    hi = [max(lo_d, (n - 1 - e + a) // s + 1) for n, e, (a, _), s, lo_d in
          zip(sizes, extent, params.pads, params.stride, lo)]  # past the last o with o*s - a + e <= n - 1
    interior_size = math.prod(h - l for l, h in zip(lo, hi))
    if interior_size == 0 or interior_size < _SPLIT_BORDER_INTERIOR * math.prod(out_spatial):
        return [(whole, "padded", (0,) * nd)]
    interior = list(zip(lo, hi))
    boxes = [(interior, "x", tuple(l * s - a for l, s, (a, _) in zip(lo, params.stride, params.pads)))]
    for d in range(nd):  # the slabs before and after the interior along dim d (interior along the dims before d)
        for part in ((0, lo[d]), (hi[d], out_spatial[d])):
            if part[0] < part[1]:
                boxes.append((interior[:d] + [part] + whole[d + 1:], "box", (0,) * nd))
    return boxes


def _box_region(box, params, kernel):
    """(start, size) per spatial dim of the input that the output box reads: positions o*s - a .. o*s - a + extent
    for o in the box."""
    return [(lo * s - a, (hi - 1 - lo) * s + d * (k - 1) + 1)
            for (lo, hi), s, (a, _), k, d in zip(box, params.stride, params.pads, kernel, params.dilation)]


def _source_shape(x_shape, params, kernel, box, source):
    """The shape of the array _source makes."""
    if source == "x":
        return tuple(x_shape)
    if source == "padded":
        return (x_shape[0], *(n + a + b for n, (a, b) in zip(x_shape[1:-1], params.pads)), x_shape[-1])
    return (x_shape[0], *(size for _, size in _box_region(box, params, kernel)), x_shape[-1])


def _source(x, params, kernel, box_source, prep):
    """The array that the gather kernel reads for one (box, source, _) of _source_boxes: x padded (by a job appended to
    `prep`, for zeros), x itself, or the input the box reads as a new array, zero where outside x."""
    box, source = box_source[:2]
    if source == "padded":
        return _pad(x, params.pads, params.mode, prep)
    if source == "x":
        return _c(x)
    region = _box_region(box, params, kernel)
    out = np.zeros((x.shape[0], *(size for _, size in region), x.shape[-1]), dtype=x.dtype)
    inside_src, inside_dst = [slice(None)], [slice(None)]
    for (start, size), n in zip(region, x.shape[1:-1]):
        a, b = max(start, 0), min(start + size, n)
        inside_src.append(slice(a, max(a, b)))
        inside_dst.append(slice(a - start, a - start + max(0, b - a)))
    out[tuple(inside_dst)] = x[tuple(inside_src)]
    return out


def _forward_plan(x_shape, kernel, params, out_spatial, c_out, lane_groups, lanes):
    """([per box of _source_boxes: ((box, source, origin), tap offsets, source rows, destination rows, source step
    between output columns, row length, per_item, items)], multiply-adds): the index tables of the forward's
    _gather_conv jobs, which depend on shapes and parameters only."""
    plan, work = [], 0
    out_strides = _strides((x_shape[0], *out_spatial, c_out))
    for box, source, origin in _source_boxes(x_shape, params, out_spatial, kernel):
        # one table entry per output row (n, o_0, ..., o_{nd-2}) of the box: the flat offset of its first source pixel
        src_shape = _source_shape(x_shape, params, kernel, box, source)
        src_strides, counts = _strides(src_shape), [hi - lo for lo, hi in box]
        offsets = _tap_offsets(kernel, params.dilation, src_shape, 1 if lane_groups else x_shape[-1] // params.groups)
        rows = _grid([(0, 1, x_shape[0])] + [(o, s, c) for o, s, c in zip(origin[:-1], params.stride, counts[:-1])],
                     src_strides[:-2]) + np.uint64(origin[-1] * src_strides[-2])
        dst_rows = _grid([(0, 1, x_shape[0])] + [(lo, 1, c) for (lo, _), c in zip(box[:-1], counts[:-1])],
                         out_strides[:-2], np.int64) + box[-1][0] * c_out
        per_item, n_items = _gather_items(rows.shape[0] * counts[-1], lanes)
        plan.append(((box, source, origin), offsets, rows, dst_rows, params.stride[-1] * src_strides[-2], counts[-1],
                     per_item, n_items))
        work += rows.shape[0] * counts[-1] * c_out * offsets.size * max(1, lane_groups)
    return plan, work


def _phase_taps(k_count, stride, dilation, size):
    """{phase q: [(tap k, shift e), ...]} with k*dilation + e*stride = q, for the phases q < min(stride, size)
    that some tap reaches (at most k_count of them: the work follows the kernel size, not the stride)."""
    taps = {}
    for k in range(k_count):
        q = k * dilation % stride
        if q < size:
            taps.setdefault(q, []).append((k, (q - k * dilation) // stride))
    return taps


def _plus(a, bias):
    """a + bias in place (a itself when bias is None)."""
    if bias is not None:
        a += bias
    return a


def _padded_input_grad(gy, w, padded, window, stride, dilation, groups, dst=None, bias=None):
    """Gradient w.r.t. a padded input of spatial size `padded`, restricted to window = (starts, sizes) of it
    (sub-pixel phases, no stride zeros), written into dst when given, plus `bias` when given (the transposed
    convolution's; added by the phase products' tiles when every position belongs to a phase)."""
    n, out_spatial, c_out = gy.shape[0], gy.shape[1:-1], gy.shape[-1]
    kernel, cg_in = w.shape[:-2], w.shape[-2]
    cg_out = c_out // groups
    starts, sizes = window
    shape = (n, *sizes, cg_in * groups)
    if _is_depthwise(w.shape, groups):
        return _plus(_depthwise_grad_input(gy, w, np.empty(shape, dtype=gy.dtype) if dst is None else dst, starts,
                                           stride, dilation), bias)
    lane_groups = _lane_groups(w.shape, groups, gy.dtype)
    if cg_in < B and not lane_groups:
        # Few input channels per group would leave most lanes of the gather tile idle: compute the
        # columns (taps x input channels) for each output pixel and scatter-add them instead.
        gxp = np.zeros((n, *padded, cg_in * groups), dtype=gy.dtype)
        strides = _strides(gxp.shape)
        offsets = _tap_offsets(kernel, dilation, gxp.shape, cg_in).astype(np.int64)
        dst_pix = _grid([(0, s, o) for o, s in zip(out_spatial, stride)], strides[1:-1], np.int64)
        w_cols = w.reshape(-1, groups, cg_out).transpose(1, 2, 0)
        call(_scatter_conv, _c(gy).reshape(-1, c_out), np.arange(cg_out, dtype=np.uint64), _pack(w_cols), offsets,
             gxp.reshape(n, math.prod(gxp.shape[1:])), dst_pix, cg_out, cg_in, items=n, work=gy.size * offsets.size)
        window_view = gxp[(slice(None), *(slice(a, a + size) for a, size in zip(starts, sizes)))]
        if dst is None:
            return _plus(_c(window_view), bias)
        np.copyto(dst, window_view)
        return _plus(dst, bias)
    # At stride 1 the window is a forward convolution of gy with the kernel flipped and its channels swapped, over gy
    # padded by d*(k-1) - start before: the forward's plan reads gy in place but for its border (no padded copy).
    pads = tuple((d * (k - 1) - a, a + size - o) for k, d, a, size, o in zip(kernel, dilation, starts, sizes,
                                                                            out_spatial))
    if (all(s == 1 for s in stride) and all(a >= 0 and b >= 0 for a, b in pads) and not lane_groups and gy.size
            and math.prod(shape)):
        nd = len(kernel)
        flipped = w[(slice(None, None, -1),) * nd].reshape(*kernel, cg_in, groups, cg_out)
        wpk = _pack(flipped.transpose(nd + 1, *range(nd), nd + 2, nd), _lanes(cg_in))  # (G, *taps, cg_out, cg_in)
        params = ConvParams(stride, pads, dilation, groups, "zeros")
        out = np.empty(shape, dtype=gy.dtype) if dst is None else dst
        return _gather_forward(_c(gy), wpk, (*kernel, cg_out, groups * cg_in), bias, params, out, 0)
    # gy zero-padded by lo before (the most negative shift) and enough after for every phase
    lo = [d * (k - 1) // s for k, s, d in zip(kernel, stride, dilation)]
    lengths = [lo_d + max(-(-p // s), o) for lo_d, p, s, o in zip(lo, padded, stride, out_spatial)]
    if lo == [0] * len(lo) and lengths == list(out_spatial):  # 1x1 kernels at stride 1: no border needed
        gyp = _c(gy)
    else:
        gyp = _zero_padded(gy, [(a, length - a - o) for a, length, o in zip(lo, lengths, out_spatial)])
    taps = [_phase_taps(k, s, d, p) for k, s, d, p in zip(kernel, stride, dilation, padded)]
    # a phase that no tap reaches in some dim receives no gradient: its positions must be zeroed
    empty_phase = any(len(t) < min(s, p) for t, s, p in zip(taps, stride, padded))
    if dst is None:
        dst = (np.zeros if empty_phase else np.empty)(shape, dtype=gy.dtype)
    elif empty_phase:
        dst[...] = 0
    if n == 0:
        return _plus(dst, bias)
    # positions outside every phase get the bias too: then it is added after the phase products
    late_bias, bias = (bias, None) if empty_phase else (None, bias)
    w_groups = w.reshape(*kernel, cg_in, groups, cg_out)
    # with lane_groups, one "group" of all channels: the tile sums each group's cg_out channels of gy
    dst_groups, cg_src, cg_dst = (1, c_out, c_out) if lane_groups else (groups, cg_out, cg_in)
    lanes = _lanes(cg_dst, lane_groups)
    bias_blocks = _bias_blocks(bias, (dst_groups, -(-cg_dst // lanes)), gy.dtype, lanes)
    nd = len(kernel)
    plan = _cached(("phases", gyp.shape, w.shape, padded, window, stride, dilation, groups, lane_groups, lanes,
                    threads()),
                   lambda: _phase_plan(gyp.shape, shape, kernel, taps, lo, window, stride, c_out, cg_out, lane_groups,
                                       lanes),
                   lambda jobs: sum(job.offsets.size + job.src_rows.size + job.dst_rows.size for job in jobs))
    jobs, work = [], 0
    for job in plan:
        if lane_groups:  # (taps, o, g*cg_in + i) = wsel[taps, i, g, o] (one phase per job)
            wsel = w_groups[job.phase_taps[0]]  # (*taps, cg_in, G, cg_out): a view
            wpk = _pack(_rotated(wsel.transpose(*range(nd), nd + 2, nd + 1, nd).reshape(-1, cg_out, c_out), cg_out))
        else:  # (phases x G, *taps, cg_out, cg_in)
            mats = [w_groups[taps].transpose(nd + 1, *range(nd), nd + 2, nd) for taps in job.phase_taps]
            wpk = _pack(mats[0] if len(mats) == 1 else np.concatenate(mats), lanes)
        panel, parts = _panel(wpk)
        n_phases = len(job.phase_taps)
        job_bias = bias_blocks if n_phases == 1 else np.tile(bias_blocks, (n_phases, 1, 1))
        jobs.append((_gather_conv, (gyp.reshape(-1), job.src_rows, c_out, job.offsets, wpk, job_bias, dst.reshape(-1),
                                    job.dst_rows, stride[-1] * shape[-1], job.row_len,
                                    *_group_shifts(dst_groups, cg_src, cg_dst, job.src_shifts, job.dst_shifts), cg_dst,
                                    lane_groups, job.per_item, panel, _weights_outer(wpk, gyp, job.items, parts)),
                     job.items * parts))
        work += job.work * cg_in * groups
    call_all(jobs, work)  # the phases write disjoint positions of dst: one hand-off to the threads for all
    return _plus(dst, late_bias)


def _phase_plan(src_shape, shape, kernel, taps, lo, window, stride, c_out, cg_out, lane_groups, lanes):
    """The _gather_conv jobs (_PhaseJob) of the sub-pixel phases that receive any position of the window, for dst of
    `shape`, tap offsets into the padded gy of src_shape. Phases whose source rows, taps and destination rows are the
    same up to a shift (a kernel size that is a multiple of the stride, e.g. 2x2 at stride 2) are one job, its groups
    the phases' groups (_merged_phases), except with lane_groups."""
    starts, sizes = window
    n = src_shape[0]
    src_strides, dst_strides = _strides(src_shape), _strides(shape)
    plan = []
    for phase in itertools.product(*(sorted(t) for t in taps)):
        phase_taps = [taps[d][q] for d, q in enumerate(phase)]
        # padded positions q + s*j inside the window: j in [j_lo, j_hi) per dim
        j_lo = [max(0, -((q - a) // s)) for q, a, s in zip(phase, starts, stride)]
        j_hi = [(a + size - 1 - q) // s + 1 for q, a, size, s in zip(phase, starts, sizes, stride)]
        counts = [hi - lo_j for lo_j, hi in zip(j_lo, j_hi)]
        if min(counts) <= 0:
            continue
        # each phase's taps are a progression: k steps by stride / gcd, the shift e by -dilation / gcd
        offsets = _grid([_progression([e + lo_d for _, e in t]) for t, lo_d in zip(phase_taps, lo)] +
                        [(0, 1, 1 if lane_groups else cg_out)], src_strides[1:])
        slices = tuple(slice(t[0][0], t[-1][0] + 1, _progression([k for k, _ in t])[1]) for t in phase_taps)
        src_rows = _grid([(0, 1, n)] + [(j0, 1, c) for j0, c in zip(j_lo[:-1], counts[:-1])],
                         src_strides[:-2]) + np.uint64(j_lo[-1] * c_out)
        dst_rows = _grid([(0, 1, n)] + [(q + s * j0 - a, s, c) for q, s, j0, c, a in
                                        zip(phase[:-1], stride, j_lo[:-1], counts[:-1], starts)],
                         dst_strides[:-2], np.int64) + (phase[-1] + stride[-1] * j_lo[-1] - starts[-1]) * shape[-1]
        per_item, n_items = _gather_items(src_rows.shape[0] * counts[-1], lanes)
        plan.append(_PhaseJob((slices,), tuple(len(t) for t in phase_taps), offsets, src_rows, dst_rows, counts[-1],
                              per_item, n_items, n * math.prod(counts) * offsets.size * max(1, lane_groups), (0,),
                              (0,)))
    return _merged_phases(plan, lane_groups)


# One _gather_conv job of _phase_plan: its phases' taps (per phase, a slice of each kernel dim), the taps per dim
# (alike in every phase of the job), the tap offsets, source rows, destination rows and row length of its first
# phase (the one reading first in the source), tiles per item, items, multiply-adds per input channel, and per phase
# its source and destination shift from the first.
_PhaseJob = collections.namedtuple("_PhaseJob", "phase_taps tap_counts offsets src_rows dst_rows row_len per_item "
                                                "items work src_shifts dst_shifts")


def _merged_phases(plan, lane_groups):
    """The jobs of the one-phase jobs `plan`: phases with the same row length and taps per dim whose source rows, tap
    offsets and destination rows are the same up to a constant shift of each merged into one job (not with
    lane_groups, whose tile takes one group), whose tiles then serve every phase while their source is in L1; it
    reads at the smallest of the phases' first source offsets, and its work is the sum of theirs."""
    def relative(a):
        return (a.astype(np.int64) - np.int64(a[0])).tobytes()
    merged = {}
    for i, job in enumerate(plan):
        key = (i,) if lane_groups else (job.row_len, job.tap_counts, relative(job.offsets), relative(job.src_rows),
                                        relative(job.dst_rows))
        merged.setdefault(key, []).append(job)
    jobs = []
    for phases in merged.values():
        first = [int(job.src_rows[0]) + int(job.offsets[0]) for job in phases]  # each phase's first source offset
        lowest = min(first)
        base = phases[first.index(lowest)]
        jobs.append(base._replace(phase_taps=tuple(job.phase_taps[0] for job in phases),
                                  work=sum(job.work for job in phases),
                                  src_shifts=tuple(f - lowest for f in first),
                                  dst_shifts=tuple(int(job.dst_rows[0]) - int(base.dst_rows[0]) for job in phases)))
    return jobs


def grad_input(gy, w, x_shape, params):
    """dL/dx of y = conv(x, w) given gy = dL/dy."""
    if math.prod(x_shape) == 0:
        return np.zeros(x_shape, dtype=gy.dtype)
    padded = tuple(n + a + b for n, (a, b) in zip(x_shape[1:-1], params.pads))
    if params.mode == "zeros":  # the gradient of the zero padding is dropped: compute only x's window
        window = (tuple(a for a, _ in params.pads), tuple(x_shape[1:-1]))
        return _padded_input_grad(gy, w, padded, window, params.stride, params.dilation, params.groups)
    gxp = _padded_input_grad(gy, w, padded, ((0,) * len(padded), padded), params.stride, params.dilation,
                             params.groups)
    return _fold(gxp, x_shape, params.pads, params.mode)


def grad_weight(gy, x, w_shape, params):
    """dL/dw of y = conv(x, w) given gy = dL/dy (fixed-order reduction: bitwise reproducible)."""
    return _grad_weight(gy, x, w_shape, params, False)


def grad_weight_and_bias(gy, x, w_shape, params):
    """(dL/dw, dL/dbias): grad_bias's sums share the weight gradient's hand-off to the threads (dense and
    depthwise layouts; the bits of grad_bias)."""
    return _grad_weight(gy, x, w_shape, params, True)


def _grad_weight(gy, x, w_shape, params, with_bias):
    """grad_weight, or with_bias (grad_weight, its bias gradient)."""
    if gy.size == 0 or x.size == 0:  # no products (x empty: every tap reads zero padding)
        gw = np.zeros(w_shape, dtype=gy.dtype)
    elif _is_depthwise(w_shape, params.groups):
        return _depthwise_grad_weight(gy, x, w_shape, params, with_bias)
    elif _is_few_per_group(w_shape, params.groups) and w_shape[-2] in _ROTATIONS:
        return _grouped_grad_weight(gy, x, w_shape, params, with_bias)
    elif _is_few_per_group(w_shape, params.groups):
        gw = _few_per_group_grad_weight(gy, x, w_shape, params)
    else:
        return _dense_grad_weight(gy, x, w_shape, params, with_bias)
    return (gw, grad_bias(gy)) if with_bias else gw


def _dense_grad_weight(gy, x, w_shape, params, with_bias):
    """_grad_weight through _weight_grad (with_bias: grad_bias's sums in the same hand-off to the threads)."""
    c_out, groups = w_shape[-1], params.groups
    cg_in, cg_out = w_shape[-2], c_out // groups
    xp = _pad(x, params.pads, params.mode)
    plan = _cached(("weight grad", gy.shape, x.shape, w_shape, gy.dtype, params, threads()),
                   lambda: _weight_grad_plan(gy.shape, x.shape, xp.shape, w_shape, params, gy.itemsize),
                   lambda plan: plan.rows.size + plan.pix.size)
    rows, pix, chunk, n_slots, parts = plan.rows, plan.pix, plan.chunk, plan.n_slots, plan.parts
    n_rows, n_blocks, per_part, lanes = rows.shape[0], plan.n_blocks, plan.per_part, plan.lanes
    partial = np.empty((n_slots, groups, parts, plan.rows_padded, per_part, lanes), dtype=gy.dtype)
    partial[:, :, -1, :, n_blocks - (parts - 1) * per_part:] = 0  # the last part's blocks past NB (none computed)
    bias_jobs, bias_total = _bias_jobs(gy) if with_bias else ([], None)
    call_all([(_weight_grad, (xp.reshape(-1), rows, pix, _c(gy).reshape(-1, c_out), partial, cg_in, cg_out, chunk),
               n_slots * groups * parts)] + bias_jobs, gy.size * n_rows)
    total = partial[0]
    for t in range(1, n_slots):  # the slots in a fixed order, in place (no second copy of the sums)
        total += partial[t]
    total = total[:, :, :n_rows].transpose(0, 2, 1, 3, 4).reshape(groups, n_rows, -1)[:, :, :cg_out]  # (G, R, Cg)
    gw = np.ascontiguousarray(total.transpose(1, 0, 2)).reshape(w_shape)
    return (gw, bias_total()) if with_bias else gw


# How _dense_grad_weight runs _weight_grad for given shapes and parameters: the tap (row) and pixel offset tables, the
# lanes of its tile, blocks of lanes per group, output pixels per chunk, slots of partial sums, parts of the blocks
# (blocks per part) and rows padded to the tile's
_WeightGradPlan = collections.namedtuple("_WeightGradPlan", "rows pix lanes n_blocks chunk n_slots parts per_part "
                                                            "rows_padded")


def _weight_grad_plan(gy_shape, x_shape, xp_shape, w_shape, params, itemsize):
    """The _WeightGradPlan of a dense weight gradient (x padded to xp_shape)."""
    kernel, cg_in, c_out = w_shape[:-2], w_shape[-2], w_shape[-1]
    groups = params.groups
    cg_out = c_out // groups
    rows = _tap_offsets(kernel, params.dilation, xp_shape, cg_in)
    pix = _grid([(0, 1, gy_shape[0])] + [(0, s, o) for o, s in zip(gy_shape[1:-1], params.stride)],
                _strides(xp_shape)[:-1])
    lanes = _lanes(cg_out)
    tile_rows = _tile_rows(lanes)
    n_rows, n_blocks = rows.shape[0], -(-cg_out // lanes)
    rows_padded = -(-n_rows // tile_rows) * tile_rows
    block = groups * n_blocks * rows_padded * lanes  # one slot of partial sums
    chunk = _grad_weight_chunk(pix.shape[0], cg_in, n_blocks * lanes, WIDE and lanes == WB, itemsize)
    copy = 0 if _unpadded(params.pads) else math.prod(xp_shape)
    n_slots = min(_slot_count(block, math.prod(w_shape), math.prod(x_shape), math.prod(gy_shape), copy),
                  -(-pix.shape[0] // chunk))
    # Each item's tiles cover a part of the blocks of output channels, every block where the slots and groups give
    # each thread an item (x's values are then loaded once per tile for all of them), else as many parts as that
    # takes. Measured against one block per item, 2 threads: the ResNet-50 1x1 expand's weight gradient 3.3 -> 2.9
    # ms, 1x1 reduce 3.64 -> 3.40, C3D 16.7 -> 16.4, DeepLab (one slot: two parts of four blocks) 6.02 -> 5.67.
    per_part = -(-n_blocks // min(n_blocks, -(-threads() // (n_slots * groups))))
    parts = -(-n_blocks // per_part)
    return _WeightGradPlan(rows, pix, lanes, n_blocks, chunk, n_slots, parts, per_part, rows_padded)


def _grad_weight_chunk(n_pix, cg_in, row_len, wide, itemsize):
    """Output pixels per chunk of _weight_grad for n_pix pixels, cg_in input channels per group and grad_out rows of
    row_len elements per group (its blocks of output channels, `wide`: AVX-512's wide tile's): equal chunks, m or
    m - 1 of them per slot (the slots then share the work evenly; the threads share the (slot, group, part) items),
    each at most _WEIGHT_GRAD_CHUNKS's pixels, or with the wide tile at most _WIDE_CHUNK_MOST pixels whose grad_out
    rows fit in _WIDE_CHUNK_BYTES if that is more. From shapes only: the sums' order does not depend on the threads.
    Measured (weight and bias gradients, min of interleaved calls in one process, AVX-512) against chunks of at most
    128 pixels: 1 thread C3D 40.0 -> 37.2 ms, ResNet-50 3x3 13.5 -> 13.0, WaveNet 16.0 -> 14.8; 2 threads C3D
    19.1-21.1 -> 18.3-19.9, ResNet-50 stem 3.74 -> 3.43, 3x3 6.62 -> 6.46, WaveNet 6.70 -> 6.53; layers of 128 and
    256 output channels (chunks of 512 and 256 pixels) within noise."""
    most = _WEIGHT_GRAD_CHUNKS[cg_in >= 16]
    if wide:
        most = max(most, min(_WIDE_CHUNK_MOST, _WIDE_CHUNK_BYTES // (row_len * itemsize)))
    return -(-n_pix // (SLOTS * -(-n_pix // (SLOTS * most))))


def grad_bias(gy):
    """dL/dbias: gy summed over every axis but the last (accumulated in float64, fixed order)."""
    jobs, total = _bias_jobs(gy)
    call_all(jobs, gy.size)
    return total()


def _bias_jobs(gy):
    """(jobs for call_all, total): after the jobs, total() is grad_bias(gy) (float64 sums of SLOTS fixed blocks of
    gy's rows, added in order)."""
    c_out = gy.shape[-1]
    if c_out == 0:
        return [], lambda: np.zeros(0, dtype=gy.dtype)
    mat = _c(gy).reshape(-1, c_out)
    # Few channels: `fold` rows side by side as one of >= _SUM_WIDTH columns (a long vectorized inner loop instead
    # of a short one per row), added back together at the end; the rows left over go to one more slot.
    fold = max(1, min(mat.shape[0], _SUM_WIDTH // c_out))
    whole = mat.shape[0] // fold * fold
    partial = np.zeros((SLOTS, fold * c_out))
    rest = np.zeros((1, c_out))
    jobs = [(_column_sums, (mat[:whole].reshape(-1, fold * c_out), partial), SLOTS),
            (_column_sums, (mat[whole:], rest), 1)]
    return jobs, lambda: (partial.sum(axis=0).reshape(fold, c_out).sum(axis=0) + rest[0]).astype(gy.dtype)


def transpose(x, w, bias, params, output_padding, out):
    """out = conv_transpose(x, w) + bias: the input gradient of a convolution whose output is x."""
    sizes = tuple(out.shape[1:-1])
    padded = tuple(n + a + b for n, (a, b) in zip(sizes, params.pads))
    return _padded_input_grad(x, w, padded, (tuple(a for a, _ in params.pads), sizes), params.stride,
                              params.dilation, params.groups, dst=out, bias=bias)
