"""Depthwise kernels (C_in // groups == 1, any channel multiplier m = C_out // C_in) on channels-last rows.

One output row per parallel iteration, the channel axis as the vector axis, border checks instead of
a padded copy for zero padding. Every kernel writes only what its iteration owns, in a fixed order,
so results are bitwise reproducible for any thread count.
"""
import numpy as np
from numba import prange

from ._jit import kernel
from ._micro import B, P, micro_lanes, micro_lanes_add


@kernel()
def _valid_range(count, start, step, size):
    """[lo, hi) of the indices i < count with 0 <= i * step + start < size (step >= 1)."""
    lo = max(0, -(start // step))
    hi = min(count, (size - 1 - start) // step + 1)
    return lo, max(lo, hi)


@kernel(inline="always")
def _madd_row(acc, a, b, m, c_lo):
    """acc[c] += a[c // m] * b[c] for c_lo <= c < len(acc) (c_lo is 0 unless m == 1)."""
    if m == 1:
        for c in range(c_lo, acc.shape[0]):
            acc[c] += a[c] * b[c]
    else:
        for ci in range(a.shape[0]):
            av = a[ci]
            for j in range(m):
                acc[ci * m + j] += av * b[ci * m + j]


@kernel(parallel=True)
def forward(src, w, wpk, taps, bias, dst, off_h, off_w, sh, sw, dh, dw):
    """dst[n, oh, ow, c] = bias[c] + sum_{kh, kw} src[n, oh*sh + kh*dh - off_h, ow*sw + kw*dw - off_w, c // m]
    * w[kh, kw, c], zero outside src; m = C_dst // C_src; wpk = lanes_weights(w), taps = lanes_taps(...);
    all C-contiguous; bias empty or (C_dst,)."""
    n_img, h_src, w_src, c_src = src.shape
    out_h, out_w, c_dst = dst.shape[1], dst.shape[2], dst.shape[3]
    k_h, k_w = w.shape[0], w.shape[1]
    m = c_dst // c_src
    flat = src.reshape(-1)
    dst_flat = dst.reshape(-1)
    # Interior: whole tiles of P columns whose every tap is inside src, and the full B-channel blocks
    # (m == 1), run through the register tile; the other columns and channels through the plain loops.
    c_full = (c_dst // B) * B if m == 1 else 0
    ow_lo = min(out_w, max(0, -((-off_w) // sw)))
    ow_hi = max(ow_lo, min(out_w, (w_src - 1 - (k_w - 1) * dw + off_w) // sw + 1))
    ow_hi = ow_lo + (ow_hi - ow_lo) // P * P
    for row in prange(n_img * out_h):
        n = row // out_h
        oh = row - n * out_h
        out_row = dst[n, oh]
        if bias.shape[0] > 0:
            for ow in range(out_w):
                out_row[ow] = bias
        else:
            out_row[:] = 0
        kh_lo, kh_hi = _valid_range(k_h, oh * sh - off_h, dh, h_src)
        for kh in range(kh_lo, kh_hi):
            src_row = src[n, oh * sh + kh * dh - off_h]
            for kw in range(k_w):
                lo, hi = _valid_range(out_w, kw * dw - off_w, sw, w_src)
                wv = w[kh, kw]
                for ow in range(lo, min(hi, ow_lo)):
                    _madd_row(out_row[ow], src_row[ow * sw + kw * dw - off_w], wv, m, 0)
                for ow in range(max(lo, ow_hi), hi):
                    _madd_row(out_row[ow], src_row[ow * sw + kw * dw - off_w], wv, m, 0)
                if c_full < c_dst:
                    for ow in range(max(lo, ow_lo), min(hi, ow_hi)):
                        _madd_row(out_row[ow], src_row[ow * sw + kw * dw - off_w], wv, m, c_full)
        if c_full == 0 or ow_hi == ow_lo or kh_hi == kh_lo:
            continue
        bases = np.empty(P, dtype=np.uint64)
        out_bases = np.empty(P, dtype=np.uint64)
        offsets = taps[kh_lo, kh_lo * k_w:kh_hi * k_w]
        row_base = (n * h_src + oh * sh + kh_lo * dh - off_h) * w_src
        for ow0 in range(ow_lo, ow_hi, P):
            for cb in range(c_full // B):
                for p in range(P):
                    bases[p] = np.uint64((row_base + (ow0 + p) * sw - off_w) * c_src + cb * B)
                    out_bases[p] = np.uint64((row * out_w + ow0 + p) * c_dst + cb * B)
                micro_lanes_add(flat, bases, offsets, wpk[cb, kh_lo * k_w:kh_hi * k_w], 0, 1, dst_flat, out_bases)


@kernel(parallel=True)
def grad_input(gy, w, dst, off_h, off_w, sh, sw, dh, dw):
    """dst[n, i, j, ci] = sum of gy[n, oh, ow, ci*m + t] * w[kh, kw, ci*m + t] over oh*sh + kh*dh = i + off_h,
    ow*sw + kw*dw = j + off_w, t < m; gy, w (KH, KW, C_out), dst C-contiguous."""
    n_img, out_h, out_w, c_out = gy.shape
    h_dst, w_dst, c_dst = dst.shape[1], dst.shape[2], dst.shape[3]
    k_h, k_w = w.shape[0], w.shape[1]
    m = c_out // c_dst
    for row in prange(n_img * h_dst):
        n = row // h_dst
        i = row - n * h_dst
        dst_row = dst[n, i]
        dst_row[:] = 0
        for kh in range(k_h):
            t = i + off_h - kh * dh
            if t < 0 or t % sh:
                continue
            oh = t // sh
            if oh >= out_h:
                continue
            for kw in range(k_w):
                lo, hi = _valid_range(out_w, kw * dw - off_w, sw, w_dst)
                wv = w[kh, kw]
                for ow in range(lo, hi):
                    acc = dst_row[ow * sw + kw * dw - off_w]
                    g = gy[n, oh, ow]
                    if m == 1:
                        for c in range(c_dst):
                            acc[c] += g[c] * wv[c]
                    else:
                        for ci in range(c_dst):
                            s = acc[ci]
                            for u in range(m):
                                s += g[ci * m + u] * wv[ci * m + u]
                            acc[ci] = s


@kernel(parallel=True)
def grad_weight(src, gy, gy_blocks, taps, partial, off_h, off_w, sh, sw, dh, dw):
    """partial[t, kh, kw, c] = sum over rows (n, oh) of block t (of partial.shape[0] equal blocks) and ow of
    src[n, oh*sh + kh*dh - off_h, ow*sw + kw*dw - off_w, c // m] * gy[n, oh, ow, c] (zero outside src);
    gy_blocks = gy as rows of B channels when m == 1 and B divides C_out (else empty), taps = lanes_taps(...);
    partial zeroed, everything C-contiguous."""
    n_img, h_src, w_src, c_src = src.shape
    out_h, out_w, c_out = gy.shape[1], gy.shape[2], gy.shape[3]
    n_slots, k_h, k_w = partial.shape[0], partial.shape[1], partial.shape[2]
    m = c_out // c_src
    n_rows = n_img * out_h
    flat = src.reshape(-1)
    n_blocks = c_out // B if gy_blocks.shape[0] > 0 else 0
    c_full = n_blocks * B
    ow_lo = min(out_w, max(0, -((-off_w) // sw)))
    ow_hi = max(ow_lo, min(out_w, (w_src - 1 - (k_w - 1) * dw + off_w) // sw + 1))
    for t in prange(n_slots):
        acc = partial[t]
        acc_taps = acc.reshape(k_h * k_w, c_out)
        tile = np.empty((P, B), dtype=partial.dtype)
        bases = np.empty(P, dtype=np.uint64)
        pix = np.empty(max(ow_hi - ow_lo, 1), dtype=np.uint64)
        for row in range(t * n_rows // n_slots, (t + 1) * n_rows // n_slots):
            n = row // out_h
            oh = row - n * out_h
            kh_lo, kh_hi = _valid_range(k_h, oh * sh - off_h, dh, h_src)
            gy_row = gy[n, oh]
            for kh in range(kh_lo, kh_hi):
                src_row = src[n, oh * sh + kh * dh - off_h]
                for kw in range(k_w):
                    lo, hi = _valid_range(out_w, kw * dw - off_w, sw, w_src)
                    acc_tap = acc[kh, kw]
                    for ow in range(lo, min(hi, ow_lo)):
                        _madd_row(acc_tap, src_row[ow * sw + kw * dw - off_w], gy_row[ow], m, 0)
                    for ow in range(max(lo, ow_hi), hi):
                        _madd_row(acc_tap, src_row[ow * sw + kw * dw - off_w], gy_row[ow], m, 0)
                    if c_full < c_out:
                        for ow in range(max(lo, ow_lo), min(hi, ow_hi)):
                            _madd_row(acc_tap, src_row[ow * sw + kw * dw - off_w], gy_row[ow], m, c_full)
            if c_full == 0 or ow_hi == ow_lo or kh_hi == kh_lo:
                continue
            row_base = (n * h_src + oh * sh + kh_lo * dh - off_h) * w_src
            for i in range(ow_hi - ow_lo):
                pix[i] = np.uint64((row_base + (ow_lo + i) * sw - off_w) * c_src)
            t_lo, t_hi = kh_lo * k_w, kh_hi * k_w
            for cb in range(n_blocks):
                for t0 in range(t_lo, t_hi, P):
                    for p in range(P):
                        bases[p] = taps[kh_lo, min(t0 + p, t_hi - 1)] + np.uint64(cb * B)
                    micro_lanes(flat, bases, pix[:ow_hi - ow_lo], gy_blocks, (row * out_w + ow_lo) * n_blocks + cb,
                                n_blocks, tile)
                    for p in range(min(P, t_hi - t0)):
                        acc_tap = acc_taps[t0 + p]
                        for b in range(B):
                            acc_tap[cb * B + b] += tile[p, b]


def lanes_weights(w):
    """(KH, KW, C) depthwise weights as (C // B, KH * KW, B) blocks for micro_lanes."""
    k_h, k_w, c = w.shape
    blocks = c // B
    return np.ascontiguousarray(w[:, :, :blocks * B].reshape(k_h * k_w, blocks, B).transpose(1, 0, 2))


def lanes_taps(k_h, k_w, dh, dw, w_src, c_src):
    """taps[k0, t]: flat offset of tap t = (kh, kw) (kh >= k0) relative to tap (k0, 0), for an input
    row width w_src and c_src channels (uint64, (KH, KH * KW))."""
    kh = np.arange(k_h).repeat(k_w)
    kw = np.tile(np.arange(k_w), k_h)
    rel = np.maximum(kh[None, :] - np.arange(k_h)[:, None], 0)
    return ((rel * dh * w_src + kw[None, :] * dw) * c_src).astype(np.uint64)
