"""CPU backend: channels-last 2-D convolutions on NumPy arrays (1-D callers pass H = 1).

Every function here receives validated arrays and a 2-D :class:`ConvParams`; x is (N, H, W, C_in),
w is (KH, KW, C_in // groups, C_out), results are new C-contiguous arrays unless `out` is given.

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
does useful work. gx is gxp with the padding folded back (cropped for "zeros"; for the other modes
the padded positions' gradients are added to the input positions they copied). The transposed
convolution is exactly gxp, cropped by its padding.

All three products run through one register-tiled inner product (`_micro.micro_tile`) that reads
its scalar operand through a table of offsets, so the reduction index (taps x channels) is flat and
no im2col matrix is ever formed. Two shapes take other routes: with fewer than B input channels per
group the gather would leave most lanes idle, so the input gradient computes each output pixel's
columns (taps x input channels) and scatter-adds them (`_scatter_conv`); depthwise convolutions (one
input channel per group) run in `_depthwise`, where each vector lane is its own channel.
"""
import numpy as np
from numba import prange

from . import _depthwise
from ._jit import SLOTS, call, kernel
from ._micro import B, P, micro_tile

_WEIGHT_GRAD_CHUNK = 256  # most output pixels per chunk of the weight gradient (operands stay in L1/L2)


@kernel(parallel=True)
def _gather_conv(src, offsets, wpk, bias_blocks, dst, a_h, a_w, o_h, o_w, q_h, q_w, d_h, d_w, jh_count, jw_count):
    """dst[n, q_h + jh*d_h, q_w + jw*d_w, g*Cgd + co] = bias_blocks[g, co // B, co % B] + sum_r
    src.flat[base(n, o_h + jh*a_h, o_w + jw*a_w) + g*Cgs + offsets[r]] * wpk[g, co // B, r, co % B]
    for jh < jh_count, jw < jw_count; src, wpk, bias_blocks (G, ceil(Cgd / B), B), dst C-contiguous;
    every offset stays inside src."""
    n_img, h_src, w_src, c_src = src.shape
    groups, n_blocks = wpk.shape[0], wpk.shape[1]
    cg_src = c_src // groups
    cg_dst = dst.shape[3] // groups
    flat = src.reshape(-1)
    # A tile is P consecutive output pixels of one image in row-major order, so it may span rows:
    # no tile is cut short at the end of a row.
    n_pix = jh_count * jw_count
    n_tiles = (n_pix + P - 1) // P
    for item in prange(n_img * n_tiles):
        n = item // n_tiles
        q0 = (item - n * n_tiles) * P
        tile = np.empty((P, B), dtype=dst.dtype)
        bases = np.empty(P, dtype=np.uint64)
        for g in range(groups):
            for p in range(P):
                jh, jw = divmod(min(q0 + p, n_pix - 1), jw_count)
                bases[p] = np.uint64(((n * h_src + o_h + jh * a_h) * w_src + o_w + jw * a_w) * c_src + g * cg_src)
            for nb in range(n_blocks):
                micro_tile(flat, bases, offsets, wpk[g, nb], tile)
                co0 = g * cg_dst + nb * B
                n_valid = min(B, cg_dst - nb * B)
                bias_block = bias_blocks[g, nb]
                for p in range(min(P, n_pix - q0)):
                    jh, jw = divmod(q0 + p, jw_count)
                    out = dst[n, q_h + jh * d_h, q_w + jw * d_w, co0:co0 + n_valid]
                    if n_valid == B:  # constant trip count: one vector add and store per register
                        for b in range(B):
                            out[b] = tile[p, b] + bias_block[b]
                    else:
                        for b in range(n_valid):
                            out[b] = tile[p, b] + bias_block[b]


@kernel(parallel=True)
def _scatter_conv(gy, reduce_offsets, wpk, offsets, dst, sh, sw):
    """dst.flat[base(n, oh*sh, ow*sw) + g*Cgd + offsets[j]] += sum_co gy[n, oh, ow, g*Cgs + co]
    * wpk[g, j // B, co, j % B] for j < len(offsets), co < len(reduce_offsets) (= arange(Cgs));
    dst zeroed, all C-contiguous; one image per parallel iteration (no write races)."""
    n_img, oh_count, ow_count, c_src = gy.shape
    h_dst, w_dst, c_dst = dst.shape[1], dst.shape[2], dst.shape[3]
    groups, n_blocks = wpk.shape[0], wpk.shape[1]
    cg_src = c_src // groups
    cg_dst = c_dst // groups
    n_cols = offsets.shape[0]
    gy_flat = gy.reshape(-1)
    dst_flat = dst.reshape(-1)
    for n in prange(n_img):
        tile = np.empty((P, B), dtype=dst.dtype)
        bases = np.empty(P, dtype=np.uint64)
        for oh in range(oh_count):
            for ow0 in range(0, ow_count, P):
                for g in range(groups):
                    for p in range(P):
                        bases[p] = np.uint64(((n * oh_count + oh) * ow_count + min(ow0 + p, ow_count - 1)) * c_src
                                             + g * cg_src)
                    for nb in range(n_blocks):
                        micro_tile(gy_flat, bases, reduce_offsets, wpk[g, nb], tile)
                        for p in range(min(P, ow_count - ow0)):
                            base = ((n * h_dst + oh * sh) * w_dst + (ow0 + p) * sw) * c_dst + g * cg_dst
                            for b in range(min(B, n_cols - nb * B)):
                                dst_flat[base + offsets[nb * B + b]] += tile[p, b]


@kernel(parallel=True)
def _weight_grad(flat, rows, pix, gpk, partial, cg_src, chunk):
    """partial[t, g, nb, r, b] = sum over pixels s of chunks t, t+T, ... (chunk pixels each) of
    flat[rows[min(r, R-1)] + g*cg_src + pix[s]] * gpk[g, nb, s, b]; partial zeroed, rows padded to P."""
    n_slots, groups, n_blocks = partial.shape[0], partial.shape[1], partial.shape[2]
    n_rows = rows.shape[0]
    n_pix = pix.shape[0]
    n_chunks = (n_pix + chunk - 1) // chunk
    last = n_rows - 1
    for t in prange(n_slots):
        tile = np.empty((P, B), dtype=partial.dtype)
        bases = np.empty(P, dtype=np.uint64)
        for ck in range(t, n_chunks, n_slots):
            s0 = ck * chunk
            s1 = min(s0 + chunk, n_pix)
            pix_chunk = pix[s0:s1]
            for g in range(groups):
                for nb in range(n_blocks):  # this block of grad_out stays in L1 across the rows of w
                    gy_chunk = gpk[g, nb, s0:s1]
                    acc = partial[t, g, nb]
                    for r0 in range(0, n_rows, P):
                        for p in range(P):
                            bases[p] = rows[min(r0 + p, last)] + np.uint64(g * cg_src)
                        micro_tile(flat, bases, pix_chunk, gy_chunk, tile)
                        for p in range(P):
                            acc_row = acc[r0 + p]
                            for b in range(B):
                                acc_row[b] += tile[p, b]


@kernel(parallel=True)
def _column_sums(mat, partial):
    """partial[t, c] = sum of mat[r, c] over the rows r of block t (of partial.shape[0] equal blocks);
    mat C-contiguous, partial float64."""
    n_slots = partial.shape[0]
    n_rows = mat.shape[0]
    for t in prange(n_slots):
        acc = partial[t]
        for r in range(t * n_rows // n_slots, (t + 1) * n_rows // n_slots):
            row = mat[r]
            for c in range(row.shape[0]):
                acc[c] += row[c]


def _c(a):
    """`a` as a C-contiguous, writeable, aligned array (a copy only when needed): one kernel type per dtype."""
    flags = a.flags
    return a if flags.c_contiguous and flags.writeable and flags.aligned else np.array(a, order="C")


def _is_depthwise(w_shape, groups):
    return groups > 1 and w_shape[2] == 1


def _depthwise_source(x, params):
    """(src, off_h, off_w): zero padding is applied by the kernels' border checks, other modes by a copy."""
    if params.mode == "zeros":
        return _c(x), params.pads[0][0], params.pads[1][0]
    return _pad(x, params.pads, params.mode), 0, 0


def _depthwise_forward(src, w3, bias, dst, off_h, off_w, stride, dilation):
    """dst = depthwise correlation of src with w3 (KH, KW, C_out) + bias, src offset by (off_h, off_w)."""
    k_h, k_w = w3.shape[0], w3.shape[1]
    taps = _depthwise.lanes_taps(k_h, k_w, dilation[0], dilation[1], src.shape[2], src.shape[3])
    call(_depthwise.forward, src, w3, _depthwise.lanes_weights(w3), taps, bias, dst, off_h, off_w,
         *stride, *dilation, work=dst.size * k_h * k_w)
    return dst


def _depthwise_grad_input(gy, w, dst, off_h, off_w, stride, dilation):
    """Depthwise input gradient into dst, whose (0, 0) is position (off_h, off_w) of the padded input.
    At stride 1 without channel multiplier it is the forward kernel on gy with the kernel flipped."""
    k_h, k_w = w.shape[0], w.shape[1]
    (dh, dw) = dilation
    if stride == (1, 1) and gy.shape[3] == dst.shape[3]:
        return _depthwise_forward(_c(gy), _c(w[::-1, ::-1, 0]), np.empty(0, dtype=gy.dtype), dst,
                                  dh * (k_h - 1) - off_h, dw * (k_w - 1) - off_w, stride, dilation)
    call(_depthwise.grad_input, _c(gy), _c(w[:, :, 0]), dst, off_h, off_w, *stride, *dilation,
         work=gy.size * k_h * k_w)
    return dst


def _tap_offsets(kh, kw, dh, dw, width, channels, cg):
    """Flat offsets (uint64) of (tap, channel) = (i, j, c < cg) in a (H, width, channels) image,
    relative to the kernel window's first element: ((i*dh) * width + j*dw) * channels + c."""
    return ((np.arange(kh)[:, None, None] * (dh * width) + np.arange(kw)[None, :, None] * dw) * channels
            + np.arange(cg)[None, None, :]).astype(np.uint64).ravel()


def _pack(mat):
    """(G, R, Cg) -> (G, ceil(Cg / B), R, B), zero-filled past Cg: B-wide column blocks, rows contiguous."""
    groups, n_rows, cg = mat.shape
    n_blocks = -(-cg // B)
    buf = np.zeros((groups, n_rows, n_blocks * B), dtype=mat.dtype)
    buf[:, :, :cg] = mat
    return np.ascontiguousarray(buf.reshape(groups, n_rows, n_blocks, B).transpose(0, 2, 1, 3))


def _pad(x, pads, mode):
    """x padded per `pads` ((top, bottom), (left, right)) in `mode`, as a new C-contiguous array
    (x itself when it is already C-contiguous, writeable and unpadded)."""
    (top, bottom), (left, right) = pads
    if top == bottom == left == right == 0:
        return _c(x)
    if mode == "zeros":
        n, h, w, c = x.shape
        xp = np.zeros((n, h + top + bottom, w + left + right, c), dtype=x.dtype)
        xp[:, top:top + h, left:left + w] = x
        return xp
    np_mode = {"reflect": "reflect", "replicate": "edge", "circular": "wrap"}[mode]
    return _c(np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)), mode=np_mode))  # np.pad keeps F order


def _source_index(i, before, n, mode):
    """Index of the input element that padded position i copies (PyTorch's padding modes)."""
    t = i - before
    if mode == "reflect":
        return -t if t < 0 else 2 * (n - 1) - t
    if mode == "replicate":
        return min(max(t, 0), n - 1)
    return t % n


def _fold(gxp, shape, pads, mode):
    """Gradient w.r.t. the unpadded input from the gradient w.r.t. the padded one (gxp itself if unpadded)."""
    if not any(p for pair in pads for p in pair):
        return gxp
    g = gxp
    for axis, (before, after) in ((1, pads[0]), (2, pads[1])):
        n = shape[axis]
        inner = np.take(g, np.arange(before, before + n), axis=axis)
        if mode != "zeros":
            for i in list(range(before)) + list(range(before + n, before + n + after)):
                src = _source_index(i, before, n, mode)
                index = [slice(None)] * 4
                index[axis] = src
                inner[tuple(index)] += np.take(g, i, axis=axis)
        g = inner
    return np.ascontiguousarray(g)


def empty(shape, dtype):
    """A new result array."""
    return np.empty(shape, dtype=dtype)


def _bias_blocks(bias, blocks, dtype):
    """bias (or zeros) as (groups, blocks, B) blocks of each group's channels, zero-filled past them."""
    groups, n_blocks = blocks
    if bias is None:
        return np.zeros((groups, n_blocks, B), dtype=dtype)
    out = np.zeros((groups, n_blocks * B), dtype=dtype)
    out[:, :bias.shape[0] // groups] = bias.reshape(groups, -1)
    return out.reshape(groups, n_blocks, B)


def _bias_arg(bias, dtype):
    return np.empty(0, dtype=dtype) if bias is None else _c(bias)


def forward(x, w, bias, params, out):
    """out = conv(x, w) + bias."""
    kh, kw, cg_in, c_out = w.shape
    (sh, sw), (dh, dw) = params.stride, params.dilation
    if _is_depthwise(w.shape, params.groups):
        src, off_h, off_w = _depthwise_source(x, params)
        return _depthwise_forward(src, _c(w[:, :, 0]), _bias_arg(bias, x.dtype), out, off_h, off_w,
                                  params.stride, params.dilation)
    xp = _pad(x, params.pads, params.mode)
    n, hp, wp, c_in = xp.shape
    groups = params.groups
    offsets = _tap_offsets(kh, kw, dh, dw, wp, c_in, cg_in)
    wmat = w.reshape(kh * kw * cg_in, groups, c_out // groups).transpose(1, 0, 2)
    _, oh, ow, _ = out.shape
    if out.size:
        wpk = _pack(wmat)
        call(_gather_conv, xp, offsets, wpk, _bias_blocks(bias, wpk.shape[:2], x.dtype), out,
             sh, sw, 0, 0, 0, 0, 1, 1, oh, ow, work=out.size * offsets.size)
    return out


def _padded_input_grad(gy, w, padded_hw, window, stride, dilation, groups, dst=None):
    """Gradient w.r.t. a padded input of spatial size padded_hw, restricted to window = (top, left,
    height, width) of it (sub-pixel phases, no stride zeros), written into dst when given."""
    n, oh, ow, c_out = gy.shape
    kh, kw, cg_in, _ = w.shape
    cg_out = c_out // groups
    (sh, sw), (dh, dw) = stride, dilation
    hp, wp = padded_hw
    top, left, height, width = window
    shape = (n, height, width, cg_in * groups)
    if _is_depthwise(w.shape, groups):
        if dst is None:
            dst = np.empty(shape, dtype=gy.dtype)
        return _depthwise_grad_input(gy, w, dst, top, left, stride, dilation)
    if cg_in < B:
        # Few input channels per group would leave most lanes of the gather tile idle: compute the
        # columns (taps x input channels) for each output pixel and scatter-add them instead.
        gxp = np.zeros((n, hp, wp, cg_in * groups), dtype=gy.dtype)
        offsets = _tap_offsets(kh, kw, dh, dw, wp, cg_in * groups, cg_in).astype(np.int64)
        w_cols = w.reshape(kh * kw * cg_in, groups, cg_out).transpose(1, 2, 0)
        call(_scatter_conv, _c(gy), np.arange(cg_out, dtype=np.uint64), _pack(w_cols), offsets, gxp, sh, sw,
             work=gy.size * offsets.size)
        if dst is None:
            return _c(gxp[:, top:top + height, left:left + width])
        np.copyto(dst, gxp[:, top:top + height, left:left + width])
        return dst
    lo_h, lo_w = dh * (kh - 1) // sh, dw * (kw - 1) // sw
    len_h = lo_h + max(-(-hp // sh), oh)
    len_w = lo_w + max(-(-wp // sw), ow)
    if (lo_h, lo_w, len_h, len_w) == (0, 0, oh, ow):  # 1x1 kernels at stride 1: no border needed
        gyp = _c(gy)
    else:
        gyp = np.zeros((n, len_h, len_w, c_out), dtype=gy.dtype)
        gyp[:, lo_h:lo_h + oh, lo_w:lo_w + ow] = gy
    w5 = w.reshape(kh, kw, cg_in, groups, cg_out)
    phases = [(qh, qw) for qh in range(min(sh, hp)) for qw in range(min(sw, wp))]
    taps = {}
    for q, k_count, s, d in ((0, kh, sh, dh), (1, kw, sw, dw)):
        for phase in range(s):
            taps[q, phase] = [(k, (phase - k * d) // s) for k in range(k_count) if (phase - k * d) % s == 0]
    empty = any(not taps[0, qh] or not taps[1, qw] for qh, qw in phases)
    if dst is None:
        dst = (np.zeros if empty else np.empty)(shape, dtype=gy.dtype)
    elif empty:
        dst[...] = 0
    no_bias = _bias_blocks(None, (groups, -(-cg_in // B)), gy.dtype)
    for qh, qw in phases:
        taps_h, taps_w = taps[0, qh], taps[1, qw]
        # padded rows qh + sh * j inside the window: j in [j_lo, j_hi) (likewise columns)
        jh_lo, jw_lo = max(0, -((qh - top) // sh)), max(0, -((qw - left) // sw))
        jh_hi, jw_hi = (top + height - 1 - qh) // sh + 1, (left + width - 1 - qw) // sw + 1
        if not taps_h or not taps_w or n == 0 or jh_hi <= jh_lo or jw_hi <= jw_lo:
            continue
        eh = np.array([e + lo_h for _, e in taps_h])
        ew = np.array([e + lo_w for _, e in taps_w])
        offsets = ((eh[:, None, None] * len_w + ew[None, :, None]) * c_out
                   + np.arange(cg_out)[None, None, :]).astype(np.uint64).ravel()
        wsel = w5[[k for k, _ in taps_h]][:, [k for k, _ in taps_w]]  # (th, tw, cg_in, G, cg_out)
        wmat = wsel.transpose(3, 0, 1, 4, 2).reshape(groups, -1, cg_in)
        jh, jw = jh_hi - jh_lo, jw_hi - jw_lo
        call(_gather_conv, gyp, offsets, _pack(wmat), no_bias, dst, 1, 1, jh_lo, jw_lo,
             qh + sh * jh_lo - top, qw + sw * jw_lo - left, sh, sw, jh, jw,
             work=n * jh * jw * cg_in * groups * offsets.size)
    return dst


def grad_input(gy, w, x_shape, params):
    """dL/dx of y = conv(x, w) given gy = dL/dy."""
    (top, bottom), (left, right) = params.pads
    hp, wp = x_shape[1] + top + bottom, x_shape[2] + left + right
    if params.mode == "zeros":  # the gradient of the zero padding is dropped: compute only x's window
        return _padded_input_grad(gy, w, (hp, wp), (top, left, x_shape[1], x_shape[2]), params.stride,
                                  params.dilation, params.groups)
    gxp = _padded_input_grad(gy, w, (hp, wp), (0, 0, hp, wp), params.stride, params.dilation, params.groups)
    return _fold(gxp, x_shape, params.pads, params.mode)


def grad_weight(gy, x, w_shape, params):
    """dL/dw of y = conv(x, w) given gy = dL/dy (fixed-order reduction: bitwise reproducible)."""
    kh, kw, cg_in, c_out = w_shape
    groups = params.groups
    cg_out = c_out // groups
    n, oh, ow, _ = gy.shape
    if gy.size == 0:
        return np.zeros(w_shape, dtype=gy.dtype)
    if _is_depthwise(w_shape, groups):
        src, off_h, off_w = _depthwise_source(x, params)
        gy = _c(gy)
        lanes = c_out == groups and c_out % B == 0
        gy_blocks = gy.reshape(-1, B) if lanes else np.empty((0, B), dtype=gy.dtype)
        taps = _depthwise.lanes_taps(kh, kw, params.dilation[0], params.dilation[1], src.shape[2], src.shape[3])
        partial = np.zeros((SLOTS, kh, kw, c_out), dtype=gy.dtype)
        call(_depthwise.grad_weight, src, gy, gy_blocks, taps, partial, off_h, off_w, *params.stride,
             *params.dilation, work=gy.size * kh * kw)
        return partial.sum(axis=0).reshape(w_shape)
    xp = _pad(x, params.pads, params.mode)
    _, hp, wp, c_in = xp.shape
    (sh, sw), (dh, dw) = params.stride, params.dilation
    rows = _tap_offsets(kh, kw, dh, dw, wp, c_in, cg_in)
    pix = (((np.arange(n)[:, None, None] * hp + np.arange(oh)[None, :, None] * sh) * wp
            + np.arange(ow)[None, None, :] * sw) * c_in).astype(np.uint64).ravel()
    gpk = _pack(gy.reshape(-1, groups, cg_out).transpose(1, 0, 2))
    n_rows = rows.shape[0]
    # At least as many equal chunks as slots, so that the slots (and the threads) share the work evenly.
    chunk = min(_WEIGHT_GRAD_CHUNK, -(-pix.shape[0] // SLOTS))
    n_slots = min(SLOTS, -(-pix.shape[0] // chunk))
    partial = np.zeros((n_slots, groups, gpk.shape[1], -(-n_rows // P) * P, B), dtype=gy.dtype)
    call(_weight_grad, xp.reshape(-1), rows, pix, gpk, partial, cg_in, chunk, work=gy.size * n_rows)
    total = partial.sum(axis=0)[:, :, :n_rows]                 # (G, NB, R, B)
    total = total.transpose(0, 2, 1, 3).reshape(groups, n_rows, -1)[:, :, :cg_out]
    return np.ascontiguousarray(total.transpose(1, 0, 2)).reshape(w_shape)


def grad_bias(gy):
    """dL/dbias: gy summed over every axis but the last (accumulated in float64, fixed order)."""
    c_out = gy.shape[-1]
    partial = np.zeros((SLOTS, c_out))
    call(_column_sums, _c(gy).reshape(-1, c_out), partial, work=gy.size)
    return partial.sum(axis=0).astype(gy.dtype)


def transpose(x, w, bias, params, output_padding, out):
    """out = conv_transpose(x, w) + bias: the input gradient of a convolution whose output is x."""
    (top, bottom), (left, right) = params.pads
    _, oh, ow, _ = out.shape
    _padded_input_grad(x, w, (oh + top + bottom, ow + left + right), (top, left, oh, ow), params.stride,
                       params.dilation, params.groups, dst=out)
    if bias is not None:
        out += bias
    return out
