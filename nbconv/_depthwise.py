"""Depthwise kernels (C_in // groups == 1, any channel multiplier m = C_out // C_in) on channels-last rows.

Any number of spatial dims: an array (N, *spatial, C) is seen as rows (N * prod(spatial[:-1]), W, C).
The taps over the outer spatial dims (all but the last) are looked up in a row table built by
:func:`row_table` (the row of the other operand each (row, outer tap) pair reads, or -1 outside it);
the last spatial dim is the kernels' inner loop, with the channel axis as the vector axis and border
checks instead of a padded copy for zero padding. Every kernel writes only what its iteration owns,
in a fixed order, so results are bitwise reproducible for any thread count.
"""
import math

import numpy as np

from ._jit import chunk_items, chunks, kernel
from ._micro import (GRAD_WINDOWS, LB, LP, micro_grad_window, micro_lanes, micro_lanes_into, micro_pixel_into,
                     micro_rotated, micro_window_into)


@kernel()
def _valid_range(count, start, step, size):
    """[lo, hi) of the indices i < count with 0 <= i * step + start < size (step >= 1)."""
    lo = max(0, -(start // step))
    hi = min(count, (size - 1 - start) // step + 1)
    return lo, max(lo, hi)


@kernel()
def _interior(out_w, w_src, k_w, off_w, sw, dw):
    """[lo, hi) of the output columns whose every tap along the row lies inside a source row of w_src."""
    lo = min(out_w, max(0, -((-off_w) // sw)))
    hi = max(lo, min(out_w, (w_src - 1 - (k_w - 1) * dw + off_w) // sw + 1))
    return lo, hi


@kernel(inline="always")
def _madd_row(acc, i, a, j, b, k, n, m, c_lo):
    """acc[i + c] += a[j + c // m] * b[k + c] for c_lo <= c < n (c_lo is 0 unless m == 1): flat arrays and offsets,
    so that no loop creates array views (each view costs an atomic reference count update, shared across threads)."""
    i, j, k = np.uint64(i), np.uint64(j), np.uint64(k)  # unsigned: no negative-index wraparound in the loops
    if m == 1:
        for c in range(np.uint64(c_lo), np.uint64(n)):
            acc[i + c] += a[j + c] * b[k + c]
    else:
        for ci in range(np.uint64(n // m)):
            av = a[j + ci]
            for u in range(np.uint64(m)):
                acc[i + ci * np.uint64(m) + u] += av * b[k + ci * np.uint64(m) + u]


@kernel(inline="always")
def _madd_rotated(acc, i, a, j, b, k, n, cg, c_lo):
    """acc[i + r*n + c] += a[j + c] * b[k + c - c % cg + (c + r) % cg] for r < cg, c_lo <= c < n: _madd_row for the
    rotated sums of grad_weight_groups (flat arrays, unsigned offsets)."""
    i, j, k, n, cg = np.uint64(i), np.uint64(j), np.uint64(k), np.uint64(n), np.uint64(cg)
    for c in range(np.uint64(c_lo), n):
        av = a[j + c]
        first = k + c - c % cg
        for r in range(cg):
            acc[i + r * n + c] += av * b[first + (c + r) % cg]


@kernel(inline="always")
def _madd_adjoint(acc, i, a, j, b, k, n, m, c_lo):
    """acc[i + c] += sum_{u < m} a[j + c*m + u] * b[k + c*m + u] for c_lo <= c < n, in order of u: flat arrays and
    unsigned offsets, as in _madd_row."""
    i, j, k = np.uint64(i), np.uint64(j), np.uint64(k)
    if m == 1:
        for c in range(np.uint64(c_lo), np.uint64(n)):
            acc[i + c] += a[j + c] * b[k + c]
    else:
        for c in range(np.uint64(c_lo), np.uint64(n)):
            s = acc[i + c]
            for u in range(np.uint64(m)):
                s += a[j + c * np.uint64(m) + u] * b[k + c * np.uint64(m) + u]
            acc[i + c] = s


@kernel()
def forward(src, w, wpk, row_src, bias, dst, off_w, sw, dw, window, sched, me):
    """dst[r, ow, c] = bias[c] + sum over taps t with row_src[r, t] >= 0 and kw of src[row_src[r, t], ow*sw +
    kw*dw - off_w, c // m] * w[t, kw, c], zero outside the row; src (rows, W, C_src), w (T, KW, C_dst), dst
    (R, OW, C_dst), row_src (R, T) increasing along t where >= 0, wpk = lanes_weights(w), m = C_dst // C_src,
    bias (C_dst,), window = window_supported(KW, sw, dw) (the tile then loads each source vector once); all
    C-contiguous; items r of chunks(sched, me): the rows of dst."""
    w_src, c_src = src.shape[1], src.shape[2]
    out_w, c_dst = dst.shape[1], dst.shape[2]
    n_taps, k_w = w.shape[0], w.shape[1]
    m = c_dst // c_src
    flat = src.reshape(-1)
    dst_flat = dst.reshape(-1)
    w_flat = w.reshape(-1)
    # Interior: whole tiles of LP columns whose every tap is inside the row, and the full LB-channel blocks
    # (m == 1), run through the register tile; the full blocks of the other columns through the one-pixel tile over
    # the pixel's taps in range; the channels left over (and every channel when m > 1) through the plain loops.
    c_full = (c_dst // LB) * LB if m == 1 else 0
    ow_lo, ow_end = _interior(out_w, w_src, k_w, off_w, sw, dw)
    ow_whole = ow_lo + (ow_end - ow_lo) // LP * LP  # the end of the whole tiles
    bases = np.empty(LP, dtype=np.uint64)
    out_bases = np.empty((2, LP), dtype=np.uint64)  # the tile's output pixels, in one output row or two
    offsets = np.empty(n_taps * k_w, dtype=np.uint64)
    row_offsets = np.empty(2 * n_taps, dtype=np.uint64)  # the window tile's source rows (offsets from the first)
    row_weights = np.empty((2 * n_taps, 2), dtype=np.int64)  # per source row, the weight row of each output row
    pixel_offsets = np.empty(n_taps * k_w, dtype=np.uint64)
    pixel_weights = np.empty(n_taps * k_w, dtype=np.uint64)
    for lo, hi in chunks(sched, me):
        row = lo
        while row < hi:
            # With the window tile, a row with any tap in range takes every column through it, in one pass over its
            # in-range taps (whatever their runs), the tiles at the row's ends skipping the source columns outside
            # the row; and two consecutive such rows share their passes: the source rows both read are loaded once.
            window_row = window and c_full > 0 and out_w >= LP and _runs(row_src, row) > 0
            pair = window_row and row + 1 < hi and _runs(row_src, row + 1) > 0
            for r in range(row, row + 1 + pair):  # the row, or each row of the pair but for the pair's tiles
                out_at = r * out_w * c_dst  # the row's first element in dst_flat
                runs = _runs(row_src, r)  # the runs of consecutive in-range taps
                # without the window tile over the whole row, the tiles cover the interior, one pass per run
                whole_row = window and c_full > 0 and out_w >= LP and runs > 0
                tiled = c_full > 0 and (ow_whole > ow_lo or whole_row)
                direct = tiled and (runs == 1 or whole_row)  # the tiles then write their part of dst once
                # A row written directly also tiles its last columns, with a tile that overlaps the one before it
                # (stores, so the columns computed twice get the same values twice).
                ow_lo_t, ow_hi = (0, out_w) if whole_row else (ow_lo, ow_end if direct else ow_whole)
                for ow in range(out_w if c_full < c_dst or not direct else 0):  # bias where a tile adds, plain loops
                    for c in range(0 if ow_lo_t <= ow < ow_hi and not direct else c_full, c_dst):
                        dst_flat[out_at + ow * c_dst + c] = bias[c]
                if c_full > 0 and (ow_lo_t > 0 or ow_hi < out_w):
                    for ow in range(out_w):
                        if ow_lo_t <= ow < ow_hi:
                            continue
                        n_s = 0  # the column's taps in range
                        for t in range(n_taps):
                            sr = row_src[r, t]
                            if sr < 0:
                                continue
                            for kw in range(k_w):
                                col = ow * sw + kw * dw - off_w
                                if 0 <= col < w_src:
                                    pixel_offsets[n_s] = np.uint64((sr * w_src + col) * c_src)
                                    pixel_weights[n_s] = np.uint64(t * k_w + kw)
                                    n_s += 1
                        micro_pixel_into(flat, pixel_offsets, pixel_weights, n_s, wpk, dst_flat, out_at + ow * c_dst,
                                         bias)
                # the channels outside the tiles: plain loops, only where there are any
                if c_full < c_dst:
                    for t in range(n_taps):
                        sr = row_src[r, t]
                        if sr < 0:
                            continue
                        for kw in range(k_w):
                            va, vb = _valid_range(out_w, kw * dw - off_w, sw, w_src)
                            w_at = (t * k_w + kw) * c_dst
                            src_at = (sr * w_src + kw * dw - off_w) * c_src  # + ow * sw * c_src for column ow
                            for ow in range(va, vb):
                                _madd_row(dst_flat, out_at + ow * c_dst, flat, src_at + ow * sw * c_src, w_flat, w_at,
                                          c_dst, m, c_full)
                if not tiled or whole_row:  # whole rows: below
                    continue
                t = 0
                while t < n_taps:  # each run of consecutive in-range taps is one register-tile pass
                    if row_src[r, t] < 0:
                        t += 1
                        continue
                    first = row_src[r, t]
                    end = t
                    while end < n_taps and row_src[r, end] >= 0:
                        row_offsets[end - t] = np.uint64((row_src[r, end] - first) * w_src * c_src)
                        for kw in range(k_w):
                            offsets[end * k_w + kw] = row_offsets[end - t] + np.uint64(kw * dw * c_src)
                        end += 1
                    for tile_start in range(ow_lo_t, ow_hi, LP):  # every block of LB channels in one call
                        ow0 = min(tile_start, ow_hi - LP)
                        for p in range(LP):
                            out_bases[0, p] = np.uint64(out_at + (ow0 + p) * c_dst)
                        for p in range(LP):
                            bases[p] = np.uint64((first * w_src + (ow0 + p) * sw - off_w) * c_src)
                        micro_lanes_into(flat, bases, offsets[t * k_w:end * k_w], wpk, t * k_w, 1, dst_flat,
                                         out_bases[0], bias, not direct)
                    t = end
            if window_row:  # the row's (or both rows') source rows in increasing order, each with the weight row of
                t0 = _next_tap(row_src, row, 0)  # the tap that reads it in either output row (-1 if none)
                t1 = _next_tap(row_src, row + 1, 0) if pair else n_taps
                first = min(row_src[row, t0], row_src[row + 1, t1]) if pair else row_src[row, t0]
                n_u = 0
                while t0 < n_taps or t1 < n_taps:
                    s0 = row_src[row, t0] if t0 < n_taps else -1
                    s1 = row_src[row + 1, t1] if t1 < n_taps else -1
                    s = min(s0, s1) if s0 >= 0 and s1 >= 0 else max(s0, s1)  # the next source row either reads
                    row_offsets[n_u] = np.uint64((s - first) * w_src * c_src)
                    row_weights[n_u, 0] = t0 * k_w if s0 == s else -1
                    row_weights[n_u, 1] = t1 * k_w if s1 == s else -1
                    if s0 == s:
                        t0 = _next_tap(row_src, row, t0 + 1)
                    if s1 == s:
                        t1 = _next_tap(row_src, row + 1, t1 + 1)
                    n_u += 1
                rows_u, weights_u, outs = row_offsets[:n_u], row_weights[:n_u, :1 + pair], out_bases[:1 + pair]
                for tile_start in range(0, out_w, LP):  # the last tile overlaps the one before (stored twice alike)
                    ow0 = min(tile_start, out_w - LP)
                    for q in range(1 + pair):
                        for p in range(LP):
                            out_bases[q, p] = np.uint64(((row + q) * out_w + ow0 + p) * c_dst)
                    micro_window_into(flat, (first * w_src + ow0 * sw - off_w) * c_src, rows_u, weights_u, c_src,
                                      wpk, dst_flat, outs, bias, k_w, sw, off_w - ow0 * sw,
                                      w_src + off_w - ow0 * sw)
            row += 1 + pair


@kernel(inline="always")
def _runs(row_src, row):
    """The runs of consecutive in-range taps (row_src[row, t] >= 0) of a row."""
    runs = 0
    for t in range(row_src.shape[1]):
        if row_src[row, t] >= 0 and (t == 0 or row_src[row, t - 1] < 0):
            runs += 1
    return runs


@kernel(inline="always")
def _next_tap(row_src, row, t):
    """The first in-range tap of a row from tap t on (row_src.shape[1] if none)."""
    while t < row_src.shape[1] and row_src[row, t] < 0:
        t += 1
    return t


@kernel()
def grad_input(gy, w, wpk, row_gy, dst, off_w, sw, dw, sched, me):
    """dst[r, i, ci] = sum of gy[row_gy[r, t], ow, ci*m + u] * w[t, kw, ci*m + u] over taps t with row_gy[r, t] >= 0,
    kw, ow with ow*sw + kw*dw = i + off_w, u < m; gy (R_gy, OW, C_out), w (T, KW, C_out), dst (R, W, C_dst),
    row_gy (R, T), wpk = lanes_weights(w); all C-contiguous; items r of chunk_items(sched, me): the rows of dst.
    Each pixel of dst is written once, from its list of taps: the full blocks of LB channels (m == 1) through the
    one-pixel tile, the other channels in plain loops, in the order of the taps (t, then kw)."""
    out_w, c_out = gy.shape[1], gy.shape[2]
    w_dst, c_dst = dst.shape[1], dst.shape[2]
    n_taps, k_w = w.shape[0], w.shape[1]
    m = c_out // c_dst
    c_full = (c_dst // LB) * LB if m == 1 else 0
    gy_flat, w_flat, dst_flat = gy.reshape(-1), w.reshape(-1), dst.reshape(-1)
    offsets = np.empty(n_taps * k_w, dtype=np.uint64)  # the pixel's taps: their grad_out pixel and weight row
    weights = np.empty(n_taps * k_w, dtype=np.uint64)
    zeros = np.zeros(c_full, dtype=dst.dtype)
    col_ow = np.full((w_dst, k_w), -1, dtype=np.int64)  # the output column that reaches column i through kw, or -1
    for i in range(w_dst):
        for kw in range(k_w):
            q = i + off_w - kw * dw
            if q >= 0 and q % sw == 0 and q // sw < out_w:
                col_ow[i, kw] = q // sw
    for row in chunk_items(sched, me):
        for i in range(w_dst):
            n_s = 0
            for t in range(n_taps):
                gr = row_gy[row, t]
                if gr < 0:
                    continue
                for kw in range(k_w):
                    ow = col_ow[i, kw]
                    if ow >= 0:
                        offsets[n_s] = np.uint64((gr * out_w + ow) * c_out)
                        weights[n_s] = np.uint64(t * k_w + kw)
                        n_s += 1
            at = (row * w_dst + i) * c_dst
            if c_full > 0:
                micro_pixel_into(gy_flat, offsets, weights, n_s, wpk, dst_flat, at, zeros)
            for c in range(c_full, c_dst):
                dst_flat[at + c] = 0
            for j in range(n_s):
                _madd_adjoint(dst_flat, at, gy_flat, offsets[j], w_flat, weights[j] * np.uint64(c_out), c_dst, m,
                              c_full)


@kernel(inline="always")
def _grad_weight_rows(src, gy, gy_blocks, row_src, partial, off_w, sw, dw, sched, me, cg):
    """partial[slot, t, kw, r, c] = sum over rows q of block slot (of partial.shape[0] equal blocks) with
    row_src[q, t] >= 0, and ow, of src[row_src[q, t], ow*sw + kw*dw - off_w, c // m] * gy[q, ow, c'] (zero outside
    the row), r < cg. cg = 1: depthwise, channel multiplier m = C_out // C_src, c' = c. cg = 2 or 4 (m = 1): a
    grouped convolution with cg channels per group in and out, rotated: lane c is input channel c % cg of its group,
    paired by rotation r with the group's output channel c' = c - c % cg + (c % cg + r) % cg. src (rows, W, C_src),
    gy (R, OW, C_out), row_src (R, T), partial (slots, T, KW, cg, C_out) zeroed, everything C-contiguous; gy_blocks =
    gy as rows of LB channels when cg = m = 1 and LB divides C_out, else empty (the first C_out // LB blocks of LB
    lanes then go through micro_lanes, or micro_grad_window where sw = dw = 1 and KW is one of GRAD_WINDOWS; with
    cg > 1 through micro_rotated; the rest one lane at a time); items: the slots of chunk_items(sched, me). Inlined
    into each kernel below with cg a constant there."""
    w_src, c_src = src.shape[1], src.shape[2]
    n_rows, out_w, c_out = gy.shape
    n_slots, n_taps, k_w = partial.shape[0], partial.shape[1], partial.shape[2]
    m = c_out // c_src
    flat = src.reshape(-1)
    n_blocks = c_out // LB if gy_blocks.shape[0] > 0 or cg > 1 else 0
    c_full = n_blocks * LB
    ow_lo, ow_hi = _interior(out_w, w_src, k_w, off_w, sw, dw)
    partial_flat, gy_flat = partial.reshape(-1), gy.reshape(-1)
    tap_size = cg * c_out  # partial[slot, t, kw] is the tap (t * k_w + kw) of the slot, cg * c_out elements long
    for slot in chunk_items(sched, me):
        slot_at = slot * n_taps * k_w * tap_size
        tile = np.empty((LP * cg, LB), dtype=partial.dtype)  # row p*cg + r: rotation r of tap p
        # With cg == 1 at unit stride and dilation along the row, each source row's k_w taps run through
        # micro_grad_window (_sliding_row). Its code sits under conditions 'cg == 1' of their own, which Numba prunes
        # where cg is another constant (measured: 0.65 s of grad_weight_groups' compile time otherwise).
        if cg == 1:
            sliding = c_full > 0 and sw == 1 and dw == 1 and (k_w == GRAD_WINDOWS[0] or k_w == GRAD_WINDOWS[1])
            window_tile = np.empty((n_taps * k_w if sliding else 0, LB), dtype=partial.dtype)  # row u*k_w + kw
            row_firsts = np.empty(n_taps, dtype=np.uint64)  # the sliding window's source rows
        bases = np.empty(LP, dtype=np.uint64)
        pix = np.empty(ow_hi - ow_lo, dtype=np.uint64)
        for i in range(ow_hi - ow_lo):
            pix[i] = np.uint64(((ow_lo + i) * sw - off_w) * c_src)
        tap_ids = np.empty(n_taps * k_w, dtype=np.int64)
        tap_bases = np.empty(n_taps * k_w, dtype=np.uint64)
        for row in range(slot * n_rows // n_slots, (slot + 1) * n_rows // n_slots):
            n_valid = 0
            for t in range(n_taps):
                sr = row_src[row, t]
                if sr < 0:
                    continue
                for kw in range(k_w):
                    va, vb = _valid_range(out_w, kw * dw - off_w, sw, w_src)
                    acc_at = slot_at + (t * k_w + kw) * tap_size
                    src_at = (sr * w_src + kw * dw - off_w) * c_src  # + ow * sw * c_src for column ow
                    for ow in range(va, vb):  # the lanes the tiles below do not take
                        c_lo = c_full if ow_lo <= ow < ow_hi else 0
                        if c_lo < c_out and cg == 1:
                            _madd_row(partial_flat, acc_at, flat, src_at + ow * sw * c_src, gy_flat,
                                      (row * out_w + ow) * c_out, c_out, m, c_lo)
                        elif c_lo < c_out:
                            _madd_rotated(partial_flat, acc_at, flat, src_at + ow * sw * c_src, gy_flat,
                                          (row * out_w + ow) * c_out, c_out, cg, c_lo)
                    tap_ids[n_valid] = t * k_w + kw
                    tap_bases[n_valid] = np.uint64((sr * w_src + kw * dw) * c_src)
                    n_valid += 1
            if c_full == 0 or ow_hi == ow_lo or n_valid == 0:
                continue
            if cg == 1:
                if sliding:
                    _sliding_row(flat, gy_flat, partial_flat, row_src, row, slot_at, tap_size, ow_lo, ow_hi, off_w,
                                 out_w, n_blocks, tap_ids, tap_bases, row_firsts, window_tile, w_src, c_src, k_w)
                    continue
            for cb in range(n_blocks):
                for t0 in range(0, n_valid, LP):
                    for p in range(LP):
                        bases[p] = tap_bases[min(t0 + p, n_valid - 1)] + np.uint64(cb * LB)
                    if cg == 1:
                        micro_lanes(flat, bases, pix, gy_blocks, (row * out_w + ow_lo) * n_blocks + cb, n_blocks,
                                    tile)
                    else:
                        micro_rotated(flat, bases, pix, gy_flat, (row * out_w + ow_lo) * c_out + cb * LB, c_out,
                                      tile.reshape(LP, cg, LB), cg)
                    for p in range(min(LP, n_valid - t0)):
                        for r in range(cg):
                            acc_at = slot_at + tap_ids[t0 + p] * tap_size + r * c_out + cb * LB
                            for b in range(LB):
                                partial_flat[acc_at + b] += tile[p * cg + r, b]


@kernel()
def _sliding_row(flat, gy_flat, partial_flat, row_src, row, slot_at, tap_size, ow_lo, ow_hi, off_w, out_w, n_blocks,
                 tap_ids, tap_bases, row_firsts, window_tile, w_src, c_src, k_w):
    """For the in-range taps t of `row` and kw < k_w: partial_flat[slot_at + (t*k_w + kw)*tap_size + c] += sum over
    the interior columns ow_lo <= ow < ow_hi of flat[(row_src[row, t]*w_src + ow + kw - off_w)*c_src + c] *
    gy_flat[(row*out_w + ow)*c_src + c] for c < n_blocks*LB: _grad_weight_rows' interior at unit stride and dilation
    (cg = m = 1), one micro_grad_window per block of LB channels; tap_ids, tap_bases and row_firsts scratch of at
    least row_src.shape[1] entries, window_tile (row_src.shape[1]*k_w, LB) scratch."""
    n_taps = row_src.shape[1]
    n_u = 0  # the source rows: their taps t in tap_ids, their first pixels in tap_bases
    for t in range(n_taps):
        if row_src[row, t] >= 0:
            tap_ids[n_u] = t
            tap_bases[n_u] = np.uint64((row_src[row, t] * w_src + ow_lo - off_w) * c_src)
            n_u += 1
    firsts = row_firsts[:n_u]  # a view made once per row, its values set per block
    for cb in range(n_blocks):
        for u in range(n_u):
            firsts[u] = tap_bases[u] + np.uint64(cb * LB)
        micro_grad_window(flat, firsts, c_src, gy_flat, (row * out_w + ow_lo) * c_src + cb * LB, c_src, ow_hi - ow_lo,
                          k_w, window_tile)
        for u in range(n_u):
            for kw in range(k_w):
                acc_at = slot_at + (tap_ids[u] * k_w + kw) * tap_size + cb * LB
                for b in range(LB):
                    partial_flat[acc_at + b] += window_tile[u * k_w + kw, b]


@kernel()
def grad_weight(src, gy, gy_blocks, row_src, partial, off_w, sw, dw, sched, me):
    """_grad_weight_rows with cg = 1 (depthwise, any channel multiplier): partial (slots, T, KW, 1, C_out)."""
    _grad_weight_rows(src, gy, gy_blocks, row_src, partial, off_w, sw, dw, sched, me, 1)


@kernel()
def grad_weight_groups(src, gy, row_src, partial, off_w, sw, dw, sched, me):
    """_grad_weight_rows with cg = partial.shape[3], 2 or 4 (a grouped convolution, rotated sums)."""
    if partial.shape[3] == 2:
        _grad_weight_rows(src, gy, np.empty((0, LB), dtype=gy.dtype), row_src, partial, off_w, sw, dw, sched, me, 2)
    else:
        _grad_weight_rows(src, gy, np.empty((0, LB), dtype=gy.dtype), row_src, partial, off_w, sw, dw, sched, me, 4)


def lanes_weights(w):
    """(T, KW, C) depthwise weights as (C // LB, T * KW, LB) blocks for micro_lanes."""
    n_taps, k_w, c = w.shape
    blocks = c // LB
    return np.ascontiguousarray(w[:, :, :blocks * LB].reshape(n_taps * k_w, blocks, LB).transpose(1, 0, 2))


def row_table(n_img, positions, sizes):
    """table[r, t] (int64, (n_img * prod(A_d), prod(K_d))): the row (n, positions[0][a_0, k_0], ...) of an
    array with outer spatial sizes `sizes`, for row r = (n, a_0, a_1, ...) and outer tap t = (k_0, k_1, ...)
    in C order; -1 where some position is outside [0, size). positions: one (A_d, K_d) int array per dim."""
    m = len(positions)
    index = np.arange(n_img).reshape((n_img,) + (1,) * (2 * m))
    valid = np.ones(index.shape, dtype=bool)
    for d, (pos, size) in enumerate(zip(positions, sizes)):
        shape = [1] * (1 + 2 * m)
        shape[1 + d], shape[1 + m + d] = pos.shape
        pos = pos.reshape(shape)
        valid = valid & (pos >= 0) & (pos < size)
        index = index * size + pos
    n_rows = n_img * math.prod(p.shape[0] for p in positions)
    n_taps = math.prod(p.shape[1] for p in positions)
    return np.ascontiguousarray(np.where(valid, index, -1).reshape(n_rows, n_taps))


def forward_positions(out_sizes, kernel, stride, dilation, offset):
    """Per dim, the source position o*s + k*d - offset read by output o through tap k: (O_d, K_d) arrays."""
    return [np.arange(o)[:, None] * s + np.arange(k)[None, :] * d - off
            for o, k, s, d, off in zip(out_sizes, kernel, stride, dilation, offset)]


def adjoint_positions(dst_sizes, kernel, stride, dilation, offset):
    """Per dim, the output o with o*s + k*d = i + offset that position i receives through tap k (-1 if none)."""
    positions = []
    for n, k, s, d, off in zip(dst_sizes, kernel, stride, dilation, offset):
        t = np.arange(n)[:, None] + off - np.arange(k)[None, :] * d
        positions.append(np.where((t >= 0) & (t % s == 0), t // s, -1))
    return positions
