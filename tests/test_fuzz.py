"""Property-based tests: hypothesis draws valid convolution configurations and nbconv must agree with
the naive reference (tests/reference.py) on the forward result, all three gradients, the transposed
convolution and the transposed convolution's tape gradients.

Every parameter kind is drawn: dims 1/2 (and 3, in tests of their own), per-dim stride and dilation,
padding as an int, per-dim ints, (before, after) pairs, "same" and "valid", the four padding modes
within their limits (reflect < size, circular <= size), dense/grouped/depthwise (with multipliers) channel layouts
including >= 32 input channels per group, an empty batch, float32/float64, and memory layouts
(C, Fortran, negative strides, strided views, read-only).

The example budget is fixed and the search derandomized, so CI runs the same examples every time:
FORWARD_EXAMPLES + TRANSPOSE_EXAMPLES examples on tiny shapes (the reference is the slow side), plus
FORWARD_EXAMPLES_3D + TRANSPOSE_EXAMPLES_3D 3-D examples with smaller kernels, strides, dilations,
paddings and sizes (a 3-D example costs the reference a cube of what a 1-D one does).
"""
import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, assume, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import nbconv  # noqa: E402

try:
    from . import reference as R
except ImportError:   # tests/ is not a package: pytest puts it on sys.path
    import reference as R

FORWARD_EXAMPLES = 600
TRANSPOSE_EXAMPLES = 400
FORWARD_EXAMPLES_3D = 80
TRANSPOSE_EXAMPLES_3D = 50
SMALL_3D = dict(nds=(3,), k_max=3, s_max=2, d_max=2, pad_max=2, extra=2)   # limits of the 3-D draws
TOL = {np.dtype(np.float32): 1e-4, np.dtype(np.float64): 1e-10}
LAYOUTS = ("C", "F", "negative", "step", "readonly")

FUZZ = settings(deadline=None, derandomize=True, database=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


def relayout(a, kind):
    """A fresh array equal to `a` in the memory layout `kind`."""
    if a is None or kind == "C":
        return None if a is None else a.copy()
    if kind == "F":
        return np.asfortranarray(a)
    if kind == "negative":
        flip = (slice(None, None, -1),) * a.ndim
        return np.array(a[flip])[flip]
    if kind == "step":
        buf = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
        buf[..., 1::2] = a
        return buf[..., 1::2]
    if kind == "readonly":
        a = a.copy()
        a.flags.writeable = False
        return a
    raise ValueError(kind)


def assert_close(got, expected, magnitude, dtype, what, contiguous=True):
    dtype = np.dtype(dtype)
    assert isinstance(got, np.ndarray) and got.dtype == dtype, (what, type(got), getattr(got, "dtype", None))
    assert got.shape == expected.shape, (what, got.shape, expected.shape)
    assert got.flags.c_contiguous or not contiguous, what
    err = np.abs(got.astype(np.float64) - expected)
    bad = err > TOL[dtype] * (magnitude + 1.0)
    assert not bad.any(), f"{what}: {bad.sum()} of {bad.size} off, worst {err.max():.3g} at {np.argmax(err)}"


def assert_unchanged(arrays, copies):
    for a, c in zip(arrays, copies):
        if a is not None:
            np.testing.assert_array_equal(a, c)


# ---------------------------------------------------------------------------------------------------
# strategies
# ---------------------------------------------------------------------------------------------------

@st.composite
def channels(draw):
    """(C_in, C_out, groups): dense, grouped, depthwise (with a multiplier) or many channels per group."""
    kind = draw(st.sampled_from(("dense", "grouped", "depthwise", "wide")))
    if kind == "dense":
        return draw(st.integers(1, 5)), draw(st.integers(1, 5)), 1
    if kind == "grouped":
        g = draw(st.integers(2, 3))
        return g * draw(st.integers(1, 3)), g * draw(st.integers(1, 3)), g
    if kind == "depthwise":
        g = draw(st.integers(2, 5))
        return g, g * draw(st.integers(1, 3)), g
    g = draw(st.integers(1, 2))   # >= 32 input channels per group: the phase-split input gradient (any tile)
    return g * draw(st.integers(32, 34)), g * draw(st.integers(1, 3)), g


def per_dim(draw, nd, values):
    """An int (same for every dim) or a tuple of one int per dim, as the API accepts both."""
    if draw(st.booleans()):
        return draw(values)
    return tuple(draw(values) for _ in range(nd))


@st.composite
def conv_configs(draw, nds=(1, 2), k_max=4, s_max=3, d_max=3, pad_max=3, extra=4):
    nd = draw(st.sampled_from(nds))
    c_in, c_out, groups = draw(channels())
    mode = draw(st.sampled_from(R.MODES))
    stride = per_dim(draw, nd, st.integers(1, s_max))
    dilation = per_dim(draw, nd, st.integers(1, d_max))
    strides, dilations = R._norm(stride, nd), R._norm(dilation, nd)
    kernel = tuple(draw(st.integers(1, k_max)) for _ in range(nd))
    kind = draw(st.sampled_from(("int", "per_dim", "pairs", "same", "valid")))
    if kind == "int":
        value = draw(st.integers(0, pad_max))
        padding, pads = value, ((value, value),) * nd
    elif kind == "per_dim":
        padding = tuple(draw(st.integers(0, pad_max)) for _ in range(nd))
        pads = tuple((p, p) for p in padding)
    elif kind == "pairs":
        pads = tuple((draw(st.integers(0, pad_max)), draw(st.integers(0, pad_max))) for _ in range(nd))
        padding = pads
    else:
        padding, pads = kind, None
    sizes = []
    for i in range(nd):
        extent = dilations[i] * (kernel[i] - 1) + 1
        if pads is None:
            low = extent if kind == "valid" else 1
        else:
            before, after = pads[i]
            low = max(1, extent - before - after)
            if mode == "reflect":
                low = max(low, before + 1, after + 1)
            elif mode == "circular":
                low = max(low, before, after)
        sizes.append(draw(st.integers(low, low + extra)))
    if kind == "same":
        pads = R.same_pads(sizes, kernel, strides, dilations)
        if mode == "reflect":
            assume(all(max(p) < n for p, n in zip(pads, sizes)))
        elif mode == "circular":
            assume(all(max(p) <= n for p, n in zip(pads, sizes)))
    elif kind == "valid":
        pads = ((0, 0),) * nd
    n = draw(st.sampled_from((0, 1, 2, 2, 3)))
    dtype = np.dtype(draw(st.sampled_from((np.float32, np.float64))))
    return dict(nd=nd, n=n, sizes=tuple(sizes), kernel=kernel, c_in=c_in, c_out=c_out, dtype=dtype,
                bias=draw(st.booleans()), layout=draw(st.sampled_from(LAYOUTS)), seed=draw(st.integers(0, 2 ** 32 - 1)),
                pads=pads, kw=dict(stride=stride, padding=padding, dilation=dilation, groups=groups,
                                   padding_mode=mode))


@st.composite
def transpose_configs(draw, nds=(1, 2), k_max=4, s_max=3, d_max=3, pad_max=3, extra=4):
    nd = draw(st.sampled_from(nds))
    c_in, c_out, groups = draw(channels())      # of the convolution whose adjoint this is
    stride = per_dim(draw, nd, st.integers(1, s_max))
    dilation = per_dim(draw, nd, st.integers(1, d_max))
    strides, dilations = R._norm(stride, nd), R._norm(dilation, nd)
    kernel = tuple(draw(st.integers(1, k_max)) for _ in range(nd))
    if draw(st.booleans()):
        output_padding = 0
    else:
        output_padding = tuple(draw(st.integers(0, max(s, d) - 1)) for s, d in zip(strides, dilations))
    ops = R._norm(output_padding, nd)
    sizes = tuple(draw(st.integers(1, 1 + extra)) for _ in range(nd))
    room = [(m - 1) * s + d * (k - 1) + op for m, s, d, k, op in zip(sizes, strides, dilations, kernel, ops)]
    kind = draw(st.sampled_from(("int", "per_dim", "pairs", "valid")))
    if kind == "valid":
        padding, pads = "valid", ((0, 0),) * nd
    elif kind == "pairs":
        pads = []
        for r in room:
            before = draw(st.integers(0, min(pad_max, r)))
            pads.append((before, draw(st.integers(0, min(pad_max, r - before)))))
        padding = pads = tuple(pads)
    else:
        limit = min(pad_max, min(r // 2 for r in room))
        if kind == "int":
            value = draw(st.integers(0, limit))
            padding, pads = value, ((value, value),) * nd
        else:
            padding = tuple(draw(st.integers(0, min(pad_max, r // 2))) for r in room)
            pads = tuple((p, p) for p in padding)
    n = draw(st.sampled_from((0, 1, 2, 3)))
    dtype = np.dtype(draw(st.sampled_from((np.float32, np.float64))))
    return dict(nd=nd, n=n, sizes=sizes, kernel=kernel, c_in=c_in, c_out=c_out, dtype=dtype, pads=pads,
                bias=draw(st.booleans()), layout=draw(st.sampled_from(LAYOUTS)), seed=draw(st.integers(0, 2 ** 32 - 1)),
                kw=dict(stride=stride, padding=padding, output_padding=output_padding, dilation=dilation,
                        groups=groups))


# ---------------------------------------------------------------------------------------------------
# properties
# ---------------------------------------------------------------------------------------------------

@settings(FUZZ, max_examples=FORWARD_EXAMPLES)
@given(conv_configs())
def test_conv_forward_and_gradients_match_reference(cfg):
    check_conv(cfg)


@settings(FUZZ, max_examples=FORWARD_EXAMPLES_3D)
@given(conv_configs(**SMALL_3D))
def test_conv3d_forward_and_gradients_match_reference(cfg):
    check_conv(cfg)


def check_conv(cfg):
    nd, kw, dtype, groups = cfg["nd"], cfg["kw"], cfg["dtype"], cfg["kw"]["groups"]
    rng = np.random.default_rng(cfg["seed"])
    x = rng.standard_normal((cfg["n"], *cfg["sizes"], cfg["c_in"])).astype(dtype)
    w = rng.standard_normal((*cfg["kernel"], cfg["c_in"] // groups, cfg["c_out"])).astype(dtype)
    b = rng.standard_normal(cfg["c_out"]).astype(dtype) if cfg["bias"] else None
    ref = dict(stride=kw["stride"], pads=cfg["pads"], dilation=kw["dilation"], groups=groups,
               mode=kw["padding_mode"])
    expected = R.conv_forward(x, w, b, **ref)
    magnitude = R.conv_forward(np.abs(x), np.abs(w), None if b is None else np.abs(b), **ref)
    gy = rng.standard_normal(expected.shape).astype(dtype)
    lx, lw, lb, lgy = (relayout(a, cfg["layout"]) for a in (x, w, b, gy))
    copies = [None if a is None else a.copy() for a in (lx, lw, lb, lgy)]

    y = getattr(nbconv, f"conv{nd}d")(lx, lw, lb, **kw)
    assert_close(y, expected, magnitude, dtype, "forward")
    grads = getattr(nbconv, f"conv{nd}d_backward")(lgy, lx, lw, **kw)
    want = R.conv_grads(gy, x, w, **ref)
    bound = R.conv_grads(np.abs(gy), np.abs(x), np.abs(w), **ref)
    for name, got, e, m in zip(grads._fields, grads, want, bound):
        assert_close(got, e, m, dtype, f"grad {name}")
    assert_unchanged((lx, lw, lb, lgy), copies)


@settings(FUZZ, max_examples=TRANSPOSE_EXAMPLES)
@given(transpose_configs())
def test_conv_transpose_and_its_tape_gradients_match_reference(cfg):
    check_transpose(cfg)


@settings(FUZZ, max_examples=TRANSPOSE_EXAMPLES_3D)
@given(transpose_configs(**SMALL_3D))
def test_conv_transpose3d_and_its_tape_gradients_match_reference(cfg):
    check_transpose(cfg)


def check_transpose(cfg):
    """y = conv_transpose(x, w) + b against the reference's scatter form; its tape gradients against the
    adjoint identities <g, conv_transpose(x, w)> = <conv(g, w), x> evaluated with the reference, and
    (independently) against the reference's own transposed-convolution gradients."""
    nd, kw, dtype, groups = cfg["nd"], cfg["kw"], cfg["dtype"], cfg["kw"]["groups"]
    rng = np.random.default_rng(cfg["seed"])
    x = rng.standard_normal((cfg["n"], *cfg["sizes"], cfg["c_out"])).astype(dtype)
    w = rng.standard_normal((*cfg["kernel"], cfg["c_in"] // groups, cfg["c_out"])).astype(dtype)
    b = rng.standard_normal(cfg["c_in"]).astype(dtype) if cfg["bias"] else None
    ref = dict(stride=kw["stride"], pads=cfg["pads"], output_padding=kw["output_padding"],
               dilation=kw["dilation"], groups=groups)
    expected = R.conv_transpose(x, w, b, **ref)
    magnitude = R.conv_transpose(np.abs(x), np.abs(w), None if b is None else np.abs(b), **ref)
    lx, lw, lb = (relayout(a, cfg["layout"]) for a in (x, w, b))
    copies = [None if a is None else a.copy() for a in (lx, lw, lb)]

    convt = getattr(nbconv, f"conv_transpose{nd}d")
    y = convt(lx, lw, lb, **kw)
    assert_close(y, expected, magnitude, dtype, "transpose")
    assert_unchanged((lx, lw, lb), copies)

    # tape gradients for the output gradient g
    g = rng.standard_normal(expected.shape).astype(dtype)
    tx, tw = nbconv.Tensor(lx, requires_grad=True), nbconv.Tensor(lw, requires_grad=True)
    tb = None if b is None else nbconv.Tensor(lb, requires_grad=True)
    convt(tx, tw, tb, **kw).backward(g)
    conv = dict(stride=kw["stride"], pads=cfg["pads"], dilation=kw["dilation"], groups=groups, mode="zeros")
    cx = R.conv_forward(g, w, None, **conv)               # conv(g, w): at least x's spatial size
    crop = (slice(None),) + tuple(slice(0, m) for m in x.shape[1:-1])
    assert_close(tx.grad, cx[crop], R.conv_forward(np.abs(g), np.abs(w), None, **conv)[crop], dtype, "tape grad x",
                 contiguous=False)
    x_in = np.zeros(cx.shape)                              # x, zero-extended to conv(g, w)'s shape
    x_in[crop] = x
    gw, gw_bound = R.conv_grads(x_in, g, w, **conv)[1], R.conv_grads(np.abs(x_in), np.abs(g), np.abs(w), **conv)[1]
    assert_close(tw.grad, gw, gw_bound, dtype, "tape grad w", contiguous=False)
    if tb is not None:
        axes = tuple(range(g.ndim - 1))
        assert_close(tb.grad, g.astype(np.float64).sum(axis=axes), np.abs(g.astype(np.float64)).sum(axis=axes),
                     dtype, "tape grad bias", contiguous=False)
    if nd == 3:   # the scatter-form gradients too (the 1-D/2-D examples stay as they were)
        gx, gw, _ = R.conv_transpose_grads(g, x, w, **ref)
        mx, mw, _ = R.conv_transpose_grads(np.abs(g), np.abs(x), np.abs(w), **ref)
        assert_close(tx.grad, gx, mx, dtype, "tape grad x (scatter form)", contiguous=False)
        assert_close(tw.grad, gw, mw, dtype, "tape grad w (scatter form)", contiguous=False)
    assert_unchanged((lx, lw, lb), copies)
