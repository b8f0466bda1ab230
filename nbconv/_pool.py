"""CPU kernels for pooling and batch normalization on channels-last data.

Callers (nbconv.ops) validate arguments and pass C-contiguous arrays; batch normalization sees its
input flattened to (M, C) rows. Per-channel vectors are float64. Reductions use a fixed number of
partial-sum slots, so results do not depend on the number of threads. These kernels do about one
operation per element, so a small problem runs on one thread: handing work to threads costs tens
of microseconds on an idle machine and can cost tens of milliseconds when the cores are oversubscribed.

Pooling: one family of kernels serves 1, 2 and 3 spatial dims. Every call is viewed as 3-D, with unit
leading spatial axes (1-D (N, L, C) runs as (N, 1, 1, L, C), 2-D (N, H, W, C) as (N, 1, H, W, C)) and
a kernel, stride and padding of (1, 1, 0) on them, so each dtype compiles one specialization of each
kernel whatever the dimension count. ``kernel``, ``stride`` and ``pads`` reach the kernels as
3-tuples (depth, height, width); a window's loops run over its in-range taps only (clipped bounds,
in increasing order), so the work is bounded by the input and output sizes, not by kernel_size or
padding. Validation (nbconv.ops) guarantees padding <= kernel_size // 2 and kernel_size <= padded
input, so every window holds an in-range element.
"""
import math

import numpy as np

from ._jit import SLOTS, call, chunk_items, kernel

SEGMENT = 64  # output pixels along the last spatial axis per task (any value gives the same bits)


@kernel(inline="always")
def _task(task, segments, d_out, h_out):
    """(n, i, j, segment) of a pooling task: output row (n, i, j) and its segment of SEGMENT columns."""
    row = task // segments
    rest = row // h_out
    return rest // d_out, rest - (rest // d_out) * d_out, row - rest * h_out, task - row * segments


@kernel()
def _window(o, stride, pad, k, n):
    """(origin, lo, hi) of output position o's window along one axis: taps t in [lo, hi) are the ones
    whose input position origin + t lies in [0, n)."""
    origin = o * stride - pad
    return origin, max(0, -origin), min(k, n - origin)


@kernel()
def _max_pool(x, kernel, stride, pads, out, argmax, sched, me):
    """out[n, i, j, l, c] = max over the in-range x[n, i*s0 - p0 + a, j*s1 - p1 + b, l*s2 - p2 + e, c]
    (a < k0, b < k1, e < k2; the first maximum in (a, b, e) order wins, NaN propagates) and argmax
    its flat spatial index (d*H + h)*W + w; x, out, argmax C-contiguous (N, D, H, W, C); items task of
    chunk_items(sched, me): the (output row, segment of SEGMENT columns) pairs (see _tasks)."""
    _, d_in, h_in, w_in, channels = x.shape
    d_out, h_out, w_out = out.shape[1], out.shape[2], out.shape[3]
    segments = (w_out + SEGMENT - 1) // SEGMENT
    for task in chunk_items(sched, me):
        n, i, j, segment = _task(task, segments, d_out, h_out)
        d0, a_lo, a_hi = _window(i, stride[0], pads[0], kernel[0], d_in)
        h0, b_lo, b_hi = _window(j, stride[1], pads[1], kernel[1], h_in)
        for l in range(segment * SEGMENT, min(w_out, (segment + 1) * SEGMENT)):
            w0, e_lo, e_hi = _window(l, stride[2], pads[2], kernel[2], w_in)
            best = out[n, i, j, l]
            where = argmax[n, i, j, l]
            src = x[n, d0 + a_lo, h0 + b_lo, w0 + e_lo]  # the first in-range tap (comparing it again changes nothing)
            pos = ((d0 + a_lo) * h_in + h0 + b_lo) * w_in + w0 + e_lo
            for c in range(channels):
                best[c] = src[c]
                where[c] = pos
            for a in range(a_lo, a_hi):
                d = d0 + a
                for b in range(b_lo, b_hi):
                    h = h0 + b
                    row_base = (d * h_in + h) * w_in
                    for e in range(e_lo, e_hi):
                        src = x[n, d, h, w0 + e]
                        pos = row_base + w0 + e
                        for c in range(channels):
                            v = src[c]
                            if v > best[c] or (v != v and best[c] == best[c]):
                                best[c] = v
                                where[c] = pos


@kernel()
def _max_pool_grad(gy, argmax, gx, sched, me):
    """gx[n, argmax[n, p, c], c] += gy[n, p, c] over the output pixels p in order; gy and argmax
    (N, P, C), gx zero-filled (N, S, C), all C-contiguous; items n of chunk_items(sched, me): the images."""
    pixels, channels = gy.shape[1], gy.shape[2]
    for n in chunk_items(sched, me):
        for p in range(pixels):
            for c in range(channels):
                gx[n, argmax[n, p, c], c] += gy[n, p, c]


@kernel()
def _avg_pool(x, kernel, stride, pads, scale, out, sched, me):
    """out[n, i, j, l, c] = scale * the sum of the in-range x[n, i*s0 - p0 + a, j*s1 - p1 + b,
    l*s2 - p2 + e, c] over a < k0, b < k1, e < k2 in that order (float64 accumulation; with
    scale = 1 / (k0*k1*k2) padding counts as zeros); x and out C-contiguous (N, D, H, W, C); items
    task of chunk_items(sched, me) as in _max_pool."""
    _, d_in, h_in, w_in, channels = x.shape
    d_out, h_out, w_out = out.shape[1], out.shape[2], out.shape[3]
    segments = (w_out + SEGMENT - 1) // SEGMENT
    for task in chunk_items(sched, me):
        n, i, j, segment = _task(task, segments, d_out, h_out)
        d0, a_lo, a_hi = _window(i, stride[0], pads[0], kernel[0], d_in)
        h0, b_lo, b_hi = _window(j, stride[1], pads[1], kernel[1], h_in)
        acc = np.empty(channels, dtype=np.float64)
        for l in range(segment * SEGMENT, min(w_out, (segment + 1) * SEGMENT)):
            w0, e_lo, e_hi = _window(l, stride[2], pads[2], kernel[2], w_in)
            acc[:] = 0.0
            for a in range(a_lo, a_hi):
                for b in range(b_lo, b_hi):
                    for e in range(e_lo, e_hi):
                        src = x[n, d0 + a, h0 + b, w0 + e]
                        for c in range(channels):
                            acc[c] += src[c]
            dst = out[n, i, j, l]
            for c in range(channels):
                dst[c] = acc[c] * scale


@kernel()
def _avg_pool_grad(gy, kernel, stride, pads, scale, gx, sched, me):
    """gx[n, i*s0 - p0 + a, j*s1 - p1 + b, l*s2 - p2 + e, c] += gy[n, i, j, l, c] * scale at the
    in-range positions, output pixels in order; gx zero-filled, both C-contiguous (N, D, H, W, C); items
    n of chunk_items(sched, me): the images."""
    d_out, h_out, w_out, channels = gy.shape[1], gy.shape[2], gy.shape[3], gy.shape[4]
    d_in, h_in, w_in = gx.shape[1], gx.shape[2], gx.shape[3]
    for n in chunk_items(sched, me):
        for i in range(d_out):
            d0, a_lo, a_hi = _window(i, stride[0], pads[0], kernel[0], d_in)
            for j in range(h_out):
                h0, b_lo, b_hi = _window(j, stride[1], pads[1], kernel[1], h_in)
                for l in range(w_out):
                    w0, e_lo, e_hi = _window(l, stride[2], pads[2], kernel[2], w_in)
                    src = gy[n, i, j, l]
                    for a in range(a_lo, a_hi):
                        for b in range(b_lo, b_hi):
                            for e in range(e_lo, e_hi):
                                dst = gx[n, d0 + a, h0 + b, w0 + e]
                                for c in range(channels):
                                    dst[c] += src[c] * scale


@kernel()
def _channel_sums(a, b, center_a, center_b, partial, sched, me):
    """partial[s, 0, c] = sum_r a[r, c] and partial[s, 1, c] = sum_r (a[r, c] - center_a[c]) *
    (b[r, c] - center_b[c]) over slot s's block of rows; a, b (M, C) C-contiguous, partial (SLOTS, 2, C);
    items s of chunk_items(sched, me): the slots."""
    rows, channels = a.shape
    slots = partial.shape[0]
    block = (rows + slots - 1) // slots
    for s in chunk_items(sched, me):
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


@kernel()
def _channel_affine(a, b, scale_a, scale_b, shift, out, sched, me):
    """out[r, c] = scale_a[c] * a[r, c] + scale_b[c] * b[r, c] + shift[c]; a, b, out (M, C) C-contiguous;
    items r of chunk_items(sched, me): the rows."""
    channels = a.shape[1]
    for r in chunk_items(sched, me):
        ar = a[r]
        br = b[r]
        dst = out[r]
        for c in range(channels):
            dst[c] = scale_a[c] * ar[c] + scale_b[c] * br[c] + shift[c]


def _three(values, fill):
    """A per-spatial-dim tuple (1 to 3 entries) widened to 3 with `fill` on the unit leading axes."""
    return (fill,) * (3 - len(values)) + tuple(int(v) for v in values)


def _as_5d(a):
    """C-contiguous a (N, *spatial, C) viewed as (N, D, H, W, C) with unit leading spatial axes."""
    return a.reshape(a.shape[0], *_three(a.shape[1:-1], 1), a.shape[-1])


def _tasks(out_shape):
    """The number of pooling tasks for an output of shape (N, *spatial, C): its rows times the segments of a row."""
    spatial = _three(out_shape[1:-1], 1)
    return out_shape[0] * spatial[0] * spatial[1] * -(-spatial[2] // SEGMENT)


def max_pool(x, kernel, stride, pads, out_spatial):
    """(out, argmax) of the max pooling of C-contiguous x (N, *spatial, C), 1 to 3 spatial dims;
    `kernel`, `stride`, `pads` and `out_spatial` have one entry per spatial dim; argmax holds the flat
    spatial index into x of each maximum."""
    shape = (x.shape[0], *out_spatial, x.shape[-1])
    out = np.empty(shape, x.dtype)
    argmax = np.empty(shape, np.int64)
    call(_max_pool, _as_5d(x), _three(kernel, 1), _three(stride, 1), _three(pads, 0), _as_5d(out), _as_5d(argmax),
         items=_tasks(shape), work=x.size)
    return out, argmax


def max_pool_grad(gy, argmax, x_shape, dtype):
    """Gradient of max_pool for the input, given C-contiguous gy and the forward's argmax."""
    n, c = x_shape[0], x_shape[-1]
    pixels = (n, math.prod(gy.shape[1:-1]), c)
    gx = np.zeros((n, math.prod(x_shape[1:-1]), c), dtype)
    call(_max_pool_grad, gy.reshape(pixels), argmax.reshape(pixels), gx, items=n, work=gx.size)
    return gx.reshape(x_shape)


def avg_pool(x, kernel, stride, pads, out_spatial):
    """Average pooling (padding counted as zeros) of C-contiguous x (N, *spatial, C), 1 to 3 spatial dims."""
    out = np.empty((x.shape[0], *out_spatial, x.shape[-1]), x.dtype)
    call(_avg_pool, _as_5d(x), _three(kernel, 1), _three(stride, 1), _three(pads, 0), 1.0 / math.prod(kernel),
         _as_5d(out), items=_tasks(out.shape), work=x.size)
    return out


def avg_pool_grad(gy, kernel, stride, pads, x_shape, dtype):
    """Gradient of avg_pool for the input, given C-contiguous gy."""
    gx = np.zeros(x_shape, dtype)
    call(_avg_pool_grad, _as_5d(gy), _three(kernel, 1), _three(stride, 1), _three(pads, 0), 1.0 / math.prod(kernel),
         _as_5d(gx), items=x_shape[0], work=gx.size)
    return gx


def channel_sums(a, b, center_a, center_b):
    """(sum_r a[r], sum_r (a[r] - center_a) * (b[r] - center_b)) per channel, in float64."""
    partial = np.empty((SLOTS, 2, a.shape[1]))
    call(_channel_sums, a, b, center_a, center_b, partial, items=SLOTS, work=a.size)
    totals = partial.sum(axis=0)
    return totals[0], totals[1]


def channel_affine(a, b, scale_a, scale_b, shift):
    """scale_a * a + scale_b * b + shift per channel, in a's dtype."""
    out = np.empty(a.shape, a.dtype)
    call(_channel_affine, a, b, scale_a, scale_b, shift, out, items=a.shape[0], work=a.size)
    return out
