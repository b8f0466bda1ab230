"""A naive NumPy reference for channels-last convolutions, written for clarity, not speed.

Independent of nbconv (no imports from it): every quantity is computed from its definition.
Every function serves any number of spatial dims (1-D, 2-D and 3-D are what the tests use): loops run
over `itertools.product` of the kernel taps and per-dim index maps, never over named axes.

Layouts: x is (N, *spatial, C_in), w is (*kernel, C_in // groups, C_out), bias is (C_out,).
`pads` is always explicit: one (before, after) pair per spatial dim. All arithmetic runs in float64
and results are returned in float64 (compare them with tolerances).

The forward convolution, per spatial dim, reads padded position p = o * stride + k * dilation for
output position o and kernel tap k; `index_map` turns a padded position into the index of the input
element it holds (PyTorch's padding modes) or into `n` (one past the end), which addresses an extra
all-zero slot for "zeros" padding. So

    y[n, o, g*Cgo + co] = bias[g*Cgo + co] + sum_{k, ci} xz[n, map(o*s + k*d), g*Cgi + ci] * w[k, ci, g*Cgo + co]

where xz is x with one zero slot appended along every spatial axis. The gradients follow directly:
dL/dx scatters (adds) gy @ w^T back through the same map (padded positions that copy an input element
add to it; the zero slot is dropped), dL/dw correlates the gathered patches with gy, dL/dbias sums gy.
"""
import itertools

import numpy as np

MODES = ("zeros", "reflect", "replicate", "circular")


# ---------------------------------------------------------------------------------------------------
# padding
# ---------------------------------------------------------------------------------------------------

def source_index(p, n, before, mode):
    """Index into an axis of length n that padded position p (0 <= p < before + n + after) copies;
    n (the zero slot) for positions that "zeros" padding fills with 0."""
    t = p - before
    if 0 <= t < n:
        return t
    if mode == "zeros":
        return n
    if mode == "replicate":            # edge value repeated
        return 0 if t < 0 else n - 1
    if mode == "reflect":              # mirror without repeating the edge: ... 2 1 | 0 1 2 ... n-1 | n-2 ...
        return -t if t < 0 else 2 * (n - 1) - t
    if mode == "circular":             # periodic
        return t % n
    raise ValueError(mode)


def index_map(n, before, after, mode):
    """Array of source indices for every padded position of an axis of length n."""
    return np.array([source_index(p, n, before, mode) for p in range(before + n + after)], dtype=np.int64)


def with_zero_slot(x):
    """x (N, *spatial, C) with one zero element appended along every spatial axis."""
    pad = [(0, 0)] + [(0, 1)] * (x.ndim - 2) + [(0, 0)]
    return np.pad(np.asarray(x, dtype=np.float64), pad)


def pad(x, pads, mode):
    """x padded per `pads` in `mode` (float64)."""
    xz = with_zero_slot(x)
    maps = [index_map(n, b, a, mode) for n, (b, a) in zip(x.shape[1:-1], pads)]
    return xz[(slice(None),) + np.ix_(*maps) + (slice(None),)]


def same_pads(in_spatial, k_spatial, stride, dilation):
    """TensorFlow/JAX "SAME": output ceil(n / s), total padding split with the extra element after."""
    pads = []
    for n, k, s, d in zip(in_spatial, k_spatial, stride, dilation):
        out = -(-n // s)
        total = max((out - 1) * s + d * (k - 1) + 1 - n, 0)
        pads.append((total // 2, total - total // 2))
    return tuple(pads)


def out_size(n, before, after, k, s, d):
    return (n + before + after - d * (k - 1) - 1) // s + 1


# ---------------------------------------------------------------------------------------------------
# forward convolution and its three gradients
# ---------------------------------------------------------------------------------------------------

def _geometry(x_shape, w_shape, stride, pads, dilation, mode):
    """Per spatial dim: the index map and the output size."""
    maps, outs = [], []
    for n, (b, a), k, s, d in zip(x_shape[1:-1], pads, w_shape[:-2], stride, dilation):
        maps.append(index_map(n, b, a, mode))
        outs.append(out_size(n, b, a, k, s, d))
    return maps, outs


def _tap_index(maps, outs, tap, stride, dilation):
    """Advanced index (over the spatial axes of a zero-slotted input) of the elements that kernel tap
    `tap` reads for every output position."""
    per_dim = [m[np.arange(o) * s + t * d] for m, o, t, s, d in zip(maps, outs, tap, stride, dilation)]
    return np.ix_(*per_dim)


def conv_forward(x, w, bias=None, stride=1, pads=0, dilation=1, groups=1, mode="zeros"):
    """y = conv(x, w) + bias (float64), by gathering every kernel tap through the index map."""
    nd = x.ndim - 2
    stride, dilation, pads = _norm(stride, nd), _norm(dilation, nd), _norm_pads(pads, nd)
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    c_in, c_out = x.shape[-1], w.shape[-1]
    cgi, cgo = c_in // groups, c_out // groups
    assert w.shape[-2] == cgi
    maps, outs = _geometry(x.shape, w.shape, stride, pads, dilation, mode)
    xz = with_zero_slot(x)
    y = np.zeros((x.shape[0], *outs, c_out))
    for tap in itertools.product(*[range(k) for k in w.shape[:-2]]):
        patch = xz[(slice(None),) + _tap_index(maps, outs, tap, stride, dilation)]  # (N, *outs, C_in)
        for g in range(groups):
            y[..., g * cgo:(g + 1) * cgo] += (patch[..., g * cgi:(g + 1) * cgi]
                                              @ w[tap][:, g * cgo:(g + 1) * cgo])
    if bias is not None:
        y += np.asarray(bias, np.float64)
    return y


def conv_grads(gy, x, w, stride=1, pads=0, dilation=1, groups=1, mode="zeros"):
    """(dL/dx, dL/dw, dL/dbias) of y = conv(x, w) + bias given gy = dL/dy (float64).

    dL/dx scatters gy through the forward's index map (np.add.at, so positions read several times,
    e.g. by overlapping taps or by reflect/replicate/circular copies, accumulate)."""
    nd = x.ndim - 2
    stride, dilation, pads = _norm(stride, nd), _norm(dilation, nd), _norm_pads(pads, nd)
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    gy = np.asarray(gy, np.float64)
    c_in, c_out = x.shape[-1], w.shape[-1]
    cgi, cgo = c_in // groups, c_out // groups
    maps, outs = _geometry(x.shape, w.shape, stride, pads, dilation, mode)
    assert gy.shape == (x.shape[0], *outs, c_out), (gy.shape, outs)
    xz = with_zero_slot(x)
    gxz = np.zeros_like(xz)
    gw = np.zeros_like(w)
    for tap in itertools.product(*[range(k) for k in w.shape[:-2]]):
        index = _tap_index(maps, outs, tap, stride, dilation)
        patch = xz[(slice(None),) + index]
        for g in range(groups):
            gy_g = gy[..., g * cgo:(g + 1) * cgo]
            w_g = w[tap][:, g * cgo:(g + 1) * cgo]                      # (cgi, cgo)
            np.add.at(gxz, (slice(None),) + index + (slice(g * cgi, (g + 1) * cgi),), gy_g @ w_g.T)
            x_g = patch[..., g * cgi:(g + 1) * cgi].reshape(-1, cgi)
            gw[tap][:, g * cgo:(g + 1) * cgo] += x_g.T @ gy_g.reshape(-1, cgo)
    gx = gxz[(slice(None),) + tuple(slice(0, n) for n in x.shape[1:-1])]   # drop the zero slot
    gb = gy.reshape(-1, c_out).sum(axis=0)
    return gx, gw, gb


# ---------------------------------------------------------------------------------------------------
# transposed convolution (scatter form)
# ---------------------------------------------------------------------------------------------------

def conv_transpose(x, w, bias=None, stride=1, pads=0, output_padding=0, dilation=1, groups=1):
    """Transposed convolution, x (N, *spatial, C_in), w (*kernel, C_out // groups, C_in) (float64).

    Every input position o and tap k sends x[o] @ w[k]^T to position o * stride + k * dilation of an
    uncropped result; the result is that buffer cropped by `pads` (before, after), with
    `output_padding` extra positions kept at the end of each dim (PyTorch's ConvTranspose)."""
    nd = x.ndim - 2
    stride, dilation = _norm(stride, nd), _norm(dilation, nd)
    pads, output_padding = _norm_pads(pads, nd), _norm(output_padding, nd)
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    c_in = x.shape[-1]
    cgi, cgo = c_in // groups, w.shape[-2]
    assert w.shape[-1] == c_in
    full = [(n - 1) * s + d * (k - 1) + op + 1
            for n, k, s, d, op in zip(x.shape[1:-1], w.shape[:-2], stride, dilation, output_padding)]
    buf = np.zeros((x.shape[0], *full, cgo * groups))
    for tap in itertools.product(*[range(k) for k in w.shape[:-2]]):
        index = tuple(slice(t * d, t * d + (n - 1) * s + 1, s)
                      for t, n, s, d in zip(tap, x.shape[1:-1], stride, dilation))
        for g in range(groups):
            contrib = x[..., g * cgi:(g + 1) * cgi] @ w[tap][:, g * cgi:(g + 1) * cgi].T
            buf[(slice(None),) + index + (slice(g * cgo, (g + 1) * cgo),)] += contrib
    crop = tuple(slice(b, f - a) for (b, a), f in zip(pads, full))
    y = buf[(slice(None),) + crop + (slice(None),)]
    if bias is not None:
        y = y + np.asarray(bias, np.float64)
    return y


def conv_transpose_grads(gy, x, w, stride=1, pads=0, output_padding=0, dilation=1, groups=1):
    """(dL/dx, dL/dw, dL/dbias) of y = conv_transpose(x, w) + bias given gy = dL/dy (float64).

    The scatter form read backwards: gy is put back into the uncropped buffer (zeros where the crop
    dropped positions), then every input position o and tap k reads buffer position o * stride +
    k * dilation: dL/dx[o] += gbuf[o*s + k*d] @ w[k], dL/dw[k] += gbuf[o*s + k*d]^T x[o]."""
    nd = x.ndim - 2
    stride, dilation = _norm(stride, nd), _norm(dilation, nd)
    pads, output_padding = _norm_pads(pads, nd), _norm(output_padding, nd)
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    gy = np.asarray(gy, np.float64)
    c_in = x.shape[-1]
    cgi, cgo = c_in // groups, w.shape[-2]
    assert w.shape[-1] == c_in
    full = [(n - 1) * s + d * (k - 1) + op + 1
            for n, k, s, d, op in zip(x.shape[1:-1], w.shape[:-2], stride, dilation, output_padding)]
    crop = tuple(slice(b, f - a) for (b, a), f in zip(pads, full))
    gbuf = np.zeros((x.shape[0], *full, cgo * groups))
    gbuf[(slice(None),) + crop + (slice(None),)] = gy
    gx = np.zeros_like(x)
    gw = np.zeros_like(w)
    for tap in itertools.product(*[range(k) for k in w.shape[:-2]]):
        index = tuple(slice(t * d, t * d + (n - 1) * s + 1, s)
                      for t, n, s, d in zip(tap, x.shape[1:-1], stride, dilation))
        for g in range(groups):
            g_slab = gbuf[(slice(None),) + index + (slice(g * cgo, (g + 1) * cgo),)]   # (N, *in, cgo)
            w_g = w[tap][:, g * cgi:(g + 1) * cgi]                                    # (cgo, cgi)
            gx[..., g * cgi:(g + 1) * cgi] += g_slab @ w_g
            gw[tap][:, g * cgi:(g + 1) * cgi] += (g_slab.reshape(-1, cgo).T
                                                  @ x[..., g * cgi:(g + 1) * cgi].reshape(-1, cgi))
    gb = gy.reshape(-1, gy.shape[-1]).sum(axis=0)
    return gx, gw, gb


def transpose_out_size(n, before, after, k, s, d, op):
    """PyTorch's ConvTranspose output size for one spatial dim."""
    return (n - 1) * s - before - after + d * (k - 1) + op + 1


# ---------------------------------------------------------------------------------------------------
# finite differences
# ---------------------------------------------------------------------------------------------------

def finite_difference(f, arrays, index, eps=1e-6):
    """Central-difference gradient of the scalar f(*arrays) w.r.t. arrays[index] (float64 arrays;
    `arrays` is not modified)."""
    arrays = [None if a is None else np.array(a, dtype=np.float64) for a in arrays]
    target = arrays[index]
    grad = np.zeros_like(target)
    for i in np.ndindex(target.shape):
        saved = target[i]
        target[i] = saved + eps
        plus = f(*arrays)
        target[i] = saved - eps
        minus = f(*arrays)
        target[i] = saved
        grad[i] = (plus - minus) / (2 * eps)
    return grad


def finite_difference_at(f, arrays, index, positions, eps=1e-6):
    """Central differences of the scalar f(*arrays) w.r.t. arrays[index] at the given element
    positions only (a list of index tuples): for 3-D problems, whose every element would cost two
    calls each. Returns a float64 array, one value per position; `arrays` is not modified."""
    arrays = [None if a is None else np.array(a, dtype=np.float64) for a in arrays]
    target = arrays[index]
    values = np.zeros(len(positions))
    for j, i in enumerate(positions):
        i = tuple(i)
        saved = target[i]
        target[i] = saved + eps
        plus = f(*arrays)
        target[i] = saved - eps
        minus = f(*arrays)
        target[i] = saved
        values[j] = (plus - minus) / (2 * eps)
    return values


# ---------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------

def _norm(v, nd):
    """An int or one int per spatial dim -> a tuple of nd ints."""
    if np.ndim(v) == 0:
        return (int(v),) * nd
    v = tuple(int(e) for e in v)
    assert len(v) == nd, (v, nd)
    return v


def _norm_pads(pads, nd):
    """An int, one int per dim, or one (before, after) pair per dim -> nd (before, after) pairs."""
    if np.ndim(pads) == 0:
        return ((int(pads), int(pads)),) * nd
    pads = tuple((int(p), int(p)) if np.ndim(p) == 0 else (int(p[0]), int(p[1])) for p in pads)
    assert len(pads) == nd, (pads, nd)
    return pads
