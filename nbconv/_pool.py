"""CPU kernels for pooling and batch normalization on channels-last data.

Callers (nbconv.ops) validate arguments and pass C-contiguous arrays; pooling sees (N, H, W, C)
activations, batch normalization sees them flattened to (M, C) rows. Per-channel vectors are
float64. Reductions use a fixed number of partial-sum slots, so results do not depend on the
number of threads. These kernels do about one operation per element, so a small problem runs on one
thread: starting a parallel region costs tens of microseconds on an idle machine and can cost tens of
milliseconds when the cores are oversubscribed.
"""
import numpy as np
from numba import prange

from ._jit import SLOTS, call, kernel



@kernel(parallel=True)
def _max_pool(x, kh, kw, sh, sw, ph, pw, out, argmax):
    """out[n, i, j, c] = max over in-range x[n, i*sh - ph + a, j*sw - pw + b, c] (a < kh, b < kw; the
    first maximum wins, NaN propagates) and argmax its spatial index h*W + w; all C-contiguous, every
    window holds an in-range element."""
    n_img, h_in, w_in, channels = x.shape
    h_out, w_out = out.shape[1], out.shape[2]
    for row in prange(n_img * h_out):
        n = row // h_out
        i = row - n * h_out
        for j in range(w_out):
            best = out[n, i, j]
            where = argmax[n, i, j]
            first = True
            for a in range(kh):
                h = i * sh - ph + a
                if h < 0 or h >= h_in:
                    continue
                for b in range(kw):
                    w = j * sw - pw + b
                    if w < 0 or w >= w_in:
                        continue
                    src = x[n, h, w]
                    pos = h * w_in + w
                    if first:
                        for c in range(channels):
                            best[c] = src[c]
                            where[c] = pos
                        first = False
                    else:
                        for c in range(channels):
                            v = src[c]
                            if v > best[c] or (v != v and best[c] == best[c]):
                                best[c] = v
                                where[c] = pos


@kernel(parallel=True)
def _max_pool_grad(gy, argmax, gx):
    """gx[n, argmax[n, i, j, c], c] += gy[n, i, j, c]; gx is zero-filled (N, H*W, C), all C-contiguous."""
    n_img, h_out, w_out, channels = gy.shape
    for n in prange(n_img):
        for i in range(h_out):
            for j in range(w_out):
                for c in range(channels):
                    gx[n, argmax[n, i, j, c], c] += gy[n, i, j, c]


@kernel(parallel=True)
def _avg_pool(x, kh, kw, sh, sw, ph, pw, out):
    """out[n, i, j, c] = sum of in-range x[n, i*sh - ph + a, j*sw - pw + b, c] over a < kh, b < kw,
    divided by kh*kw (padding counts as zeros); x and out C-contiguous."""
    n_img, h_in, w_in, channels = x.shape
    h_out, w_out = out.shape[1], out.shape[2]
    scale = 1.0 / (kh * kw)
    for row in prange(n_img * h_out):
        n = row // h_out
        i = row - n * h_out
        acc = np.empty(channels, dtype=np.float64)
        for j in range(w_out):
            acc[:] = 0.0
            for a in range(kh):
                h = i * sh - ph + a
                if h < 0 or h >= h_in:
                    continue
                for b in range(kw):
                    w = j * sw - pw + b
                    if 0 <= w < w_in:
                        src = x[n, h, w]
                        for c in range(channels):
                            acc[c] += src[c]
            dst = out[n, i, j]
            for c in range(channels):
                dst[c] = acc[c] * scale


@kernel(parallel=True)
def _avg_pool_grad(gy, kh, kw, sh, sw, ph, pw, gx):
    """gx[n, i*sh - ph + a, j*sw - pw + b, c] += gy[n, i, j, c] / (kh*kw) at in-range positions;
    gx is zero-filled (N, H, W, C), all C-contiguous."""
    n_img, h_out, w_out, channels = gy.shape
    h_in, w_in = gx.shape[1], gx.shape[2]
    scale = 1.0 / (kh * kw)
    for n in prange(n_img):
        for i in range(h_out):
            for j in range(w_out):
                src = gy[n, i, j]
                for a in range(kh):
                    h = i * sh - ph + a
                    if h < 0 or h >= h_in:
                        continue
                    for b in range(kw):
                        w = j * sw - pw + b
                        if 0 <= w < w_in:
                            dst = gx[n, h, w]
                            for c in range(channels):
                                dst[c] += src[c] * scale


@kernel(parallel=True)
def _channel_sums(a, b, center_a, center_b, partial):
    """partial[s, 0, c] = sum_r a[r, c] and partial[s, 1, c] = sum_r (a[r, c] - center_a[c]) *
    (b[r, c] - center_b[c]) over slot s's block of rows; a, b (M, C) C-contiguous, partial (SLOTS, 2, C)."""
    rows, channels = a.shape
    slots = partial.shape[0]
    block = (rows + slots - 1) // slots
    for s in prange(slots):
        total = partial[s, 0]
        cross = partial[s, 1]
        total[:] = 0.0
        cross[:] = 0.0
        for r in range(s * block, min(rows, (s + 1) * block)):
            ar = a[r]
            br = b[r]
            for c in range(channels):
                total[c] += ar[c]
                cross[c] += (ar[c] - center_a[c]) * (br[c] - center_b[c])


@kernel(parallel=True)
def _channel_affine(a, b, scale_a, scale_b, shift, out):
    """out[r, c] = scale_a[c] * a[r, c] + scale_b[c] * b[r, c] + shift[c]; a, b, out (M, C) C-contiguous."""
    rows, channels = a.shape
    for r in prange(rows):
        ar = a[r]
        br = b[r]
        dst = out[r]
        for c in range(channels):
            dst[c] = scale_a[c] * ar[c] + scale_b[c] * br[c] + shift[c]


def max_pool(x, kernel_size, stride, pads, out_hw):
    """(out, argmax) of a 2-D max pooling of C-contiguous x (N, H, W, C)."""
    shape = (x.shape[0], *out_hw, x.shape[3])
    out = np.empty(shape, x.dtype)
    argmax = np.empty(shape, np.int64)
    call(_max_pool, x, *kernel_size, *stride, *pads, out, argmax, work=x.size)
    return out, argmax


def max_pool_grad(gy, argmax, x_shape, dtype):
    """Gradient of max_pool for the input, given C-contiguous gy and the forward's argmax."""
    n, h, w, c = x_shape
    gx = np.zeros((n, h * w, c), dtype)
    call(_max_pool_grad, gy, argmax, gx, work=gx.size)
    return gx.reshape(x_shape)


def avg_pool(x, kernel_size, stride, pads, out_hw):
    """2-D average pooling (padding counted as zeros) of C-contiguous x (N, H, W, C)."""
    out = np.empty((x.shape[0], *out_hw, x.shape[3]), x.dtype)
    call(_avg_pool, x, *kernel_size, *stride, *pads, out, work=x.size)
    return out


def avg_pool_grad(gy, kernel_size, stride, pads, x_shape, dtype):
    """Gradient of avg_pool for the input, given C-contiguous gy."""
    gx = np.zeros(x_shape, dtype)
    call(_avg_pool_grad, gy, *kernel_size, *stride, *pads, gx, work=gx.size)
    return gx


def channel_sums(a, b, center_a, center_b):
    """(sum_r a[r], sum_r (a[r] - center_a) * (b[r] - center_b)) per channel, in float64."""
    partial = np.empty((SLOTS, 2, a.shape[1]))
    call(_channel_sums, a, b, center_a, center_b, partial, work=a.size)
    totals = partial.sum(axis=0)
    return totals[0], totals[1]


def channel_affine(a, b, scale_a, scale_b, shift):
    """scale_a * a + scale_b * b + shift per channel, in a's dtype."""
    out = np.empty(a.shape, a.dtype)
    call(_channel_affine, a, b, scale_a, scale_b, shift, out, work=a.size)
    return out
