"""nbconv's CPU convolutions against two oracles: the naive reference (tests/reference.py) and
torch.nn.functional (F.pad for asymmetric padding and the non-zero padding modes).

The parameter grids are pairwise coverings (every pair of values of any two factors appears in some
case) built deterministically at collection time, plus small full products where interactions of
three factors matter (padding kind x padding mode x dims). Shapes are tiny: the cost of this file is
the JIT compilation of the kernels, not the arithmetic.

1-D and 2-D share the original grids; 3-D has grids of its own (same factors, plus a C_in = 1 and a
>= 32-channel group layout; the 1-D/2-D cases are unchanged by them) and joins the small full products
through the `nd` parameter (ids nd1/nd2/nd3, so `-k nd3` selects the 3-D cases; every 3-D-only test
has "3d" in its name).
"""
import itertools
import random
import warnings

import numpy as np
import pytest

import nbconv
from nbconv import _cpu
from nbconv._micro import B, WB
from nbconv._shapes import conv_params
try:
    from . import reference as R
except ImportError:   # tests/ is not a package: pytest puts it on sys.path
    import reference as R

torch = pytest.importorskip("torch")
F = torch.nn.functional

DTYPES = (np.float32, np.float64)
TOL = {np.dtype(np.float32): 1e-4, np.dtype(np.float64): 1e-10}
NDS = (1, 2, 3)


@pytest.fixture(scope="module", autouse=True)
def torch_on_one_thread():
    """The oracle's problems are tiny: torch's intra-op thread pool only adds synchronisation (on a
    busy 2-core machine a float64 conv3d of a few hundred elements took 30 ms on 2 threads, 0.04 ms
    on one). nbconv's own thread count is not touched."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def nd_id(nd):
    return f"nd{nd}"


def over_nd(nds=NDS):
    """@pytest.mark.parametrize("nd", nds) with ids nd1, nd2, nd3."""
    return pytest.mark.parametrize("nd", nds, ids=nd_id)


def with_nd_ids(cases):
    """Cases whose first entry is nd, as pytest.params with ids nd<nd>-<index>."""
    return [pytest.param(*case, id=f"nd{case[0]}-{i}") for i, case in enumerate(cases)]


# ---------------------------------------------------------------------------------------------------
# pairwise coverings
# ---------------------------------------------------------------------------------------------------

def pairwise(factors, seed=0, candidates=30):
    """A list of dicts (one value per factor) in which every pair of values of every two factors occurs.

    Greedy (AETG-style): each new case starts from an uncovered pair and fills the other factors with
    the values that cover the most uncovered pairs; deterministic for a given seed."""
    names = list(factors)
    rnd = random.Random(seed)
    uncovered = {((a, i), (b, j))
                 for ia, a in enumerate(names) for b in names[ia + 1:]
                 for i in range(len(factors[a])) for j in range(len(factors[b]))}

    def covered_by(case):
        return {((a, case[a]), (b, case[b])) for ia, a in enumerate(names) for b in names[ia + 1:]}

    cases = []
    while uncovered:
        seed_pair = min(uncovered)
        best, best_gain = None, -1
        for _ in range(candidates):
            case = {seed_pair[0][0]: seed_pair[0][1], seed_pair[1][0]: seed_pair[1][1]}
            rest = [n for n in names if n not in case]
            rnd.shuffle(rest)
            for n in rest:
                def gain(v):
                    trial = dict(case, **{n: v})
                    return sum(((a, trial[a]), (b, trial[b])) in uncovered
                               for ia, a in enumerate(names) for b in names[ia + 1:] if a in trial and b in trial)
                values = list(range(len(factors[n])))
                rnd.shuffle(values)
                case[n] = max(values, key=gain)
            g = len(covered_by(case) & uncovered)
            if g > best_gain:
                best, best_gain = case, g
        uncovered -= covered_by(best)
        cases.append(best)
    return [{n: factors[n][case[n]] for n in names} for case in cases]


def test_pairwise_covers_every_pair():
    factors = {"a": (1, 2, 3), "b": "xyzw", "c": (True, False), "d": tuple(range(5)), "e": (None,)}
    cases = pairwise(factors, seed=7)
    for (a, va), (b, vb) in itertools.combinations(factors.items(), 2):
        for pair in itertools.product(va, vb):
            assert any((c[a], c[b]) == pair for c in cases), (a, b, pair)
    assert len(cases) < 3 * 4 * 2 * 5           # far fewer than the full product
    for grid in (FORWARD_CASES, BACKWARD_CASES, TRANSPOSE_CASES, FORWARD_CASES_3D, BACKWARD_CASES_3D,
                 TRANSPOSE_CASES_3D):
        assert len({tuple(map(str, c.values())) for c in grid}) == len(grid)


def case_params(cases):
    return [pytest.param(c, id="-".join(f"{k}={getattr(v, '__name__', v)}" for k, v in c.items()))
            for c in cases]


# ---------------------------------------------------------------------------------------------------
# parameter kinds -> concrete arguments
# ---------------------------------------------------------------------------------------------------

# reflect padding up to 3 (2 in 3-D) stays below every input size; every dilated kernel fits "valid"
X_SPATIAL = {1: (8,), 2: (7, 8), 3: (4, 5, 6)}
K_SPATIAL = {1: (3,), 2: (3, 2), 3: (2, 3, 2)}
STRIDES = {"1": {1: 1, 2: 1, 3: 1}, "2": {1: 2, 2: 2, 3: 2}, "mixed": {1: (3,), 2: (2, 1), 3: (2, 1, 3)}}
DILATIONS = {"1": {1: 1, 2: 1, 3: 1}, "2": {1: 2, 2: 2, 3: 2}, "mixed": {1: (3,), 2: (1, 3), 3: (1, 2, 3)}}
PADDINGS = {  # nbconv's `padding` argument per dims
    "int0": {1: 0, 2: 0, 3: 0},
    "int": {1: 1, 2: 1, 3: 1},
    "per_dim": {1: (2,), 2: (1, 0), 3: (1, 0, 2)},
    "asym": {1: ((2, 1),), 2: ((1, 2), (2, 0)), 3: ((1, 2), (0, 1), (2, 0))},
    "valid": {1: "valid", 2: "valid", 3: "valid"},
    "same": {1: "same", 2: "same", 3: "same"},
}
GROUPS = {  # (C_in, C_out, groups)
    "g1": (3, 4, 1),
    "g2": (4, 6, 2),
    "depthwise": (3, 3, 3),
    "dw_mult": (3, 6, 3),
    "few": (6, 6, 2),         # 3 in and 3 out per group: computed as a depthwise convolution over the group
    "lanes4": (24, 24, 6),    # 4 in and 4 out per group, C a multiple of the vector length: groups side by side
}                             # (with 16-lane tiles, a full and a partial channel block)
GROUPS_3D = dict(GROUPS, **{
    "cin1": (1, 5, 1),        # a single input channel
    "wide": (33, 40, 1),      # >= 32 channels: register tiles (16 or 32 lanes), full and partial channel blocks
    "lanes2": (16, 16, 8),    # 2 in and 2 out per group, groups side by side in the vector lanes
})
LAYOUTS = ("C", "F", "negative", "slice", "readonly")


def explicit_pads(padding, in_spatial, k_spatial, stride, dilation):
    """((before, after), ...) for an nbconv `padding` argument (independently of nbconv)."""
    nd = len(in_spatial)
    stride, dilation = R._norm(stride, nd), R._norm(dilation, nd)
    if padding == "valid":
        return ((0, 0),) * nd
    if padding == "same":
        return R.same_pads(in_spatial, k_spatial, stride, dilation)
    return R._norm_pads(padding, nd)


def layout(a, kind):
    """An array equal to `a` with the memory layout `kind` (a fresh buffer each time)."""
    a = np.array(a)
    if kind == "C":
        return a
    if kind == "F":
        return np.asfortranarray(a)
    if kind == "negative":                 # negative strides on every axis
        flip = (slice(None, None, -1),) * a.ndim
        return np.ascontiguousarray(a[flip])[flip]
    if kind == "slice":                    # every other element of a larger buffer, offset by one
        buf = np.zeros(tuple(2 * n + 1 for n in a.shape), dtype=a.dtype)
        view = buf[(slice(1, None, 2),) * a.ndim]
        view[...] = a
        return view
    if kind == "readonly":
        a.setflags(write=False)
        return a
    raise ValueError(kind)


def check_layout(a, kind):
    """The layout helper did what it says (so the grid really exercises that layout)."""
    if kind == "F" and a.ndim > 1:
        assert a.flags.f_contiguous and not a.flags.c_contiguous
    if kind == "negative":
        assert all(s < 0 for s in a.strides)
    if kind == "slice":
        assert not a.flags.c_contiguous and not a.flags.f_contiguous
    if kind == "readonly":
        assert not a.flags.writeable


def randn(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


def snapshot(*arrays):
    return [None if a is None else (a.copy(), a.strides, a.flags.writeable) for a in arrays]


def assert_unchanged(arrays, saved):
    for a, s in zip(arrays, saved):
        if a is not None:
            np.testing.assert_array_equal(a, s[0])
            assert a.strides == s[1] and a.flags.writeable == s[2]


def assert_close(got, expected, magnitude, dtype, what=""):
    """|got - expected| <= tol * (magnitude + 1), magnitude being the reduction of absolute values."""
    dtype = np.dtype(dtype)
    assert got.dtype == dtype, (what, got.dtype, dtype)
    assert got.shape == expected.shape, (what, got.shape, expected.shape)
    tol = TOL[dtype]
    err = np.abs(got.astype(np.float64) - np.asarray(expected, np.float64))
    bound = tol * (np.asarray(magnitude, np.float64) + 1.0)
    bad = err > bound
    assert not bad.any(), (f"{what}: {bad.sum()} of {bad.size} elements off; worst error "
                           f"{err.max():.3g} at {np.unravel_index(err.argmax(), err.shape)} (tol {tol})")


# ---------------------------------------------------------------------------------------------------
# torch oracle (NCHW / OIHW) -- everything converted from and back to nbconv's layouts here
# ---------------------------------------------------------------------------------------------------

def t_act(a, requires_grad=False):
    return torch.tensor(np.moveaxis(np.asarray(a), -1, 1).copy(), requires_grad=requires_grad)


def n_act(t):
    return np.moveaxis(t.detach().numpy(), 1, -1)


def t_weight(w, requires_grad=False):
    """(*k, C_in // g, C_out) -> (C_out, C_in // g, *k); also (*k, C_out // g, C_in) -> (C_in, C_out // g, *k)."""
    nd = w.ndim - 2
    return torch.tensor(np.transpose(np.asarray(w), (nd + 1, nd) + tuple(range(nd))).copy(),
                        requires_grad=requires_grad)


def n_weight(t):
    a = t.detach().numpy()
    nd = a.ndim - 2
    return np.transpose(a, tuple(range(2, nd + 2)) + (1, 0))


def torch_conv(x, w, bias, *, stride, padding, dilation, groups, mode, gy=None):
    """torch's y (and, given gy, autograd's (gx, gw, gb)) in nbconv layouts."""
    nd = x.ndim - 2
    conv = (F.conv1d, F.conv2d, F.conv3d)[nd - 1]
    stride, dilation = R._norm(stride, nd), R._norm(dilation, nd)
    tx, tw = t_act(x, True), t_weight(w, True)
    tb = None if bias is None else torch.tensor(np.asarray(bias), requires_grad=True)
    pads = explicit_pads(padding, x.shape[1:-1], w.shape[:-2], stride, dilation)
    if mode == "zeros" and padding == "same" and all(s == 1 for s in stride):
        with warnings.catch_warnings():   # torch notes that even kernels need a padded copy
            warnings.simplefilter("ignore", UserWarning)
            ty = conv(tx, tw, tb, stride=stride, padding="same", dilation=dilation, groups=groups)
    elif mode == "zeros" and all(b == a for b, a in pads):
        ty = conv(tx, tw, tb, stride=stride, padding=tuple(b for b, _ in pads), dilation=dilation, groups=groups)
    else:
        flat = [p for pair in reversed(pads) for p in pair]   # F.pad: last dim first
        txp = F.pad(tx, flat, mode="constant" if mode == "zeros" else mode)
        ty = conv(txp, tw, tb, stride=stride, padding=0, dilation=dilation, groups=groups)
    if gy is None:
        return n_act(ty)
    ty.backward(t_act(gy))
    return (n_act(ty), n_act(tx.grad), n_weight(tw.grad), None if tb is None else tb.grad.numpy())


def torch_conv_transpose(x, w, bias, *, stride, padding, output_padding, dilation, groups):
    """torch's conv_transpose in nbconv layouts; asymmetric pads by cropping an unpadded result."""
    nd = x.ndim - 2
    convt = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[nd - 1]
    pads = R._norm_pads(0 if padding == "valid" else padding, nd)
    tb = None if bias is None else torch.tensor(np.asarray(bias))
    if all(b == a for b, a in pads):
        ty = convt(t_act(x), t_weight(w), tb, stride=stride, padding=tuple(b for b, _ in pads),
                   output_padding=output_padding, groups=groups, dilation=dilation)
        return n_act(ty)
    ty = n_act(convt(t_act(x), t_weight(w), tb, stride=stride, padding=0, output_padding=output_padding,
                     groups=groups, dilation=dilation))
    crop = tuple(slice(b, n - a) for (b, a), n in zip(pads, ty.shape[1:-1]))
    return ty[(slice(None),) + crop + (slice(None),)]


def fn(name, nd):
    return getattr(nbconv, f"{name}{nd}d")


# ---------------------------------------------------------------------------------------------------
# forward
# ---------------------------------------------------------------------------------------------------

FORWARD_CASES = pairwise({
    "nd": (1, 2),
    "stride": tuple(STRIDES),
    "padding": tuple(PADDINGS),
    "dilation": tuple(DILATIONS),
    "groups": tuple(GROUPS),
    "mode": R.MODES,
    "dtype": DTYPES,
    "bias": (True, False),
    "layout": LAYOUTS,
}, seed=1)

FORWARD_CASES_3D = pairwise({
    "nd": (3,),
    "stride": tuple(STRIDES),
    "padding": tuple(PADDINGS),
    "dilation": tuple(DILATIONS),
    "groups": tuple(GROUPS_3D),
    "mode": R.MODES,
    "dtype": DTYPES,
    "bias": (True, False),
    "layout": LAYOUTS,
}, seed=31)


def make_conv_case(rng, case, n=2):
    nd, dtype = case["nd"], case["dtype"]
    c_in, c_out, groups = GROUPS_3D[case["groups"]]
    x = randn(rng, (n, *X_SPATIAL[nd], c_in), dtype)
    w = randn(rng, (*K_SPATIAL[nd], c_in // groups, c_out), dtype)
    b = randn(rng, (c_out,), dtype) if case.get("bias", True) else None
    kwargs = dict(stride=STRIDES[case["stride"]][nd], padding=PADDINGS[case["padding"]][nd],
                  dilation=DILATIONS[case["dilation"]][nd], groups=groups, padding_mode=case["mode"])
    return x, w, b, kwargs


def reference_forward(x, w, b, kw):
    pads = explicit_pads(kw["padding"], x.shape[1:-1], w.shape[:-2], kw["stride"], kw["dilation"])
    args = dict(stride=kw["stride"], pads=pads, dilation=kw["dilation"], groups=kw["groups"],
                mode=kw["padding_mode"])
    expected = R.conv_forward(x, w, b, **args)
    magnitude = R.conv_forward(np.abs(x), np.abs(w), None if b is None else np.abs(b), **args)
    return expected, magnitude


def run_forward_case(rng, case):
    nd, dtype = case["nd"], np.dtype(case["dtype"])
    x, w, b, kw = make_conv_case(rng, case)
    lx, lw = layout(x, case["layout"]), layout(w, case["layout"])
    lb = None if b is None else layout(b, case["layout"])
    check_layout(lx, case["layout"])
    saved = snapshot(lx, lw, lb)
    y = fn("conv", nd)(lx, lw, lb, **kw)
    assert_unchanged((lx, lw, lb), saved)
    assert isinstance(y, np.ndarray) and y.flags.c_contiguous and y.flags.writeable
    expected, magnitude = reference_forward(x, w, b, kw)
    assert_close(y, expected, magnitude, dtype, "vs reference")
    t = torch_conv(x, w, b, stride=kw["stride"], padding=kw["padding"], dilation=kw["dilation"],
                   groups=kw["groups"], mode=kw["padding_mode"])
    assert_close(y, t, magnitude, dtype, "vs torch")


@pytest.mark.parametrize("case", case_params(FORWARD_CASES))
def test_forward_pairwise(rng, case):
    run_forward_case(rng, case)


@pytest.mark.parametrize("case", case_params(FORWARD_CASES_3D))
def test_forward_pairwise_3d(rng, case):
    run_forward_case(rng, case)


@over_nd()
@pytest.mark.parametrize("padding", tuple(PADDINGS))
@pytest.mark.parametrize("mode", R.MODES)
def test_forward_padding_kind_x_mode(rng, nd, padding, mode):
    """Every padding form with every padding mode (stride 2 so that "same" is not symmetric)."""
    run_forward_case(rng, dict(nd=nd, stride="2", padding=padding, dilation="1", groups="g2", mode=mode,
                               dtype=np.float64, bias=True, layout="C"))


@over_nd()
@pytest.mark.parametrize("stride", tuple(STRIDES))
@pytest.mark.parametrize("dilation", tuple(DILATIONS))
@pytest.mark.parametrize("groups", tuple(GROUPS))
def test_forward_stride_x_dilation_x_groups(rng, nd, stride, dilation, groups):
    run_forward_case(rng, dict(nd=nd, stride=stride, padding="asym", dilation=dilation, groups=groups,
                               mode="zeros", dtype=np.float32, bias=False, layout="C"))


SAME_SIZES = {1: (1, 2, 3, 4, 5, 6, 7, 9), 2: (1, 2, 3, 4, 5, 6, 7, 9), 3: (1, 2, 3, 4, 5, 6)}


@pytest.mark.parametrize("nd, size", [pytest.param(nd, size, id=f"nd{nd}-{size}")
                                      for nd in NDS for size in SAME_SIZES[nd]])
@pytest.mark.parametrize("stride", (1, 2, 3))
def test_same_padding_sizes(rng, nd, size, stride):
    """"same" gives ceil(n / stride) outputs for every input size (odd and even totals)."""
    x = randn(rng, (1,) + (size,) * nd + (2,), np.float64)
    w = randn(rng, (3,) * nd + (2, 3), np.float64)
    y = fn("conv", nd)(x, w, padding="same", stride=stride)
    assert y.shape[1:-1] == (-(-size // stride),) * nd
    expected, magnitude = reference_forward(x, w, None, dict(padding="same", stride=stride, dilation=1,
                                                             groups=1, padding_mode="zeros"))
    assert_close(y, expected, magnitude, np.float64)
    if stride == 1:   # exactly PyTorch's padding="same"
        assert_close(y, torch_conv(x, w, None, stride=1, padding="same", dilation=1, groups=1, mode="zeros"),
                     magnitude, np.float64)


@pytest.mark.parametrize("mode", R.MODES)
@pytest.mark.parametrize("groups", ("g1", "depthwise"))
@over_nd()
def test_fortran_order_with_padding_modes(rng, mode, groups, nd):
    """Fortran-ordered inputs with every padding mode (np.pad keeps Fortran order), forward and backward."""
    case = dict(nd=nd, stride="1", padding="asym", dilation="1", groups=groups, mode=mode, dtype=np.float64,
                layout="F")
    run_forward_case(rng, dict(case, bias=True))
    run_backward_case(rng, case)


EDGE_CASES = [  # (nd, x spatial, k spatial, kwargs): boundaries of the shape rules
    (2, (3, 3), (3, 3), dict()),                                   # output 1x1
    (2, (3, 4), (1, 1), dict(stride=2)),                           # 1x1 kernel, stride skipping rows
    (2, (5, 5), (2, 2), dict(stride=3)),                           # stride > kernel: unread inputs
    (2, (4, 4), (3, 3), dict(stride=5, padding=1)),                # stride > input
    (1, (9,), (2,), dict(dilation=4, stride=3)),                   # dilation > stride
    (2, (1, 6), (1, 3), dict(padding=((0, 0), (2, 2)), padding_mode="circular")),  # H = 1
    (1, (3,), (3,), dict(padding=3, padding_mode="circular")),     # circular pad == input size
    (1, (3,), (3,), dict(padding=2, padding_mode="reflect")),      # reflect pad == size - 1
    (1, (2,), (5,), dict(padding=(4,), padding_mode="replicate")),  # replicate wider than the input
    (2, (2, 2), (3, 3), dict(padding=((2, 0), (0, 2)), padding_mode="replicate")),
    (2, (6, 5), (2, 3), dict(padding="same", stride=(3, 2), dilation=(2, 1), padding_mode="reflect")),
    (1, (0,), (1,), dict(padding=1)),                              # empty input, padding makes room
    (3, (3, 3, 3), (3, 3, 3), dict()),                             # output 1x1x1
    (3, (4, 3, 5), (1, 1, 1), dict(stride=(2, 3, 2))),             # 1x1x1 kernel, strides skipping planes
    (3, (3, 4, 3), (2, 2, 2), dict(stride=5, padding=1)),          # stride > input
    (3, (5, 4, 6), (2, 2, 2), dict(stride=(3, 1, 4))),             # stride > kernel: unread inputs
    (3, (1, 4, 5), (1, 2, 3), dict(padding=((0, 0), (1, 1), (2, 2)), padding_mode="circular")),  # D = 1
    (3, (3, 2, 3), (2, 2, 2), dict(padding=(3, 2, 3), padding_mode="circular")),  # circular pad == size
    (3, (3, 3, 4), (3, 2, 3), dict(padding=2, padding_mode="reflect")),           # reflect pad == size - 1
    (3, (2, 3, 2), (3, 3, 3), dict(padding=((2, 0), (1, 1), (0, 2)), padding_mode="replicate")),
    (3, (5, 4, 6), (2, 3, 2), dict(padding="same", stride=(3, 2, 1), dilation=(2, 1, 3), padding_mode="reflect")),
    (3, (0, 2, 2), (1, 1, 1), dict(padding=1)),                    # empty input, padding makes room
]


@pytest.mark.parametrize("nd, xs, ks, kw", with_nd_ids(EDGE_CASES))
@pytest.mark.parametrize("n", (2, 0))
def test_forward_edge_shapes(rng, nd, xs, ks, kw, n):
    x = randn(rng, (n, *xs, 2), np.float64)
    w = randn(rng, (*ks, 2, 3), np.float64)
    b = randn(rng, (3,), np.float64)
    kw = dict(dict(stride=1, padding=0, dilation=1, groups=1, padding_mode="zeros"), **kw)
    y = fn("conv", nd)(x, w, b, **kw)
    expected, magnitude = reference_forward(x, w, b, kw)
    assert_close(y, expected, magnitude, np.float64, "vs reference")
    if xs[0] > 0:
        t = torch_conv(x, w, b, stride=kw["stride"], padding=kw["padding"], dilation=kw["dilation"],
                       groups=1, mode=kw["padding_mode"])
        assert_close(y, t, magnitude, np.float64, "vs torch")


@over_nd()
@pytest.mark.parametrize("dtype", DTYPES)
def test_forward_out(rng, nd, dtype):
    x, w, b, kw = make_conv_case(rng, dict(nd=nd, dtype=dtype, groups="g2", stride="2", padding="asym",
                                           dilation="1", mode="reflect"))
    expected, magnitude = reference_forward(x, w, b, kw)
    out = np.full(expected.shape, np.nan, dtype=dtype)
    result = fn("conv", nd)(x, w, b, out=out, **kw)
    assert result is out
    assert_close(out, expected, magnitude, dtype)
    again = fn("conv", nd)(x, w, b, **kw)
    np.testing.assert_array_equal(again, out)   # same kernels either way


@pytest.mark.parametrize("c", [1, 3, 6, 16, 100, 128, 200])
@pytest.mark.parametrize("rows", [1, 7, 131])
def test_bias_gradient_sums_every_row(rng, c, rows):
    """grad_out summed over N and space, for channel counts whose rows the kernel lays side by side (< 128) and
    larger ones, and row counts that leave rows over: the float64 sum of every element."""
    gy = randn(rng, (rows, 1, c), np.float64)
    np.testing.assert_allclose(nbconv.conv.bias_grad(gy), gy.sum(axis=(0, 1)), rtol=1e-12, atol=1e-12)
    g32 = gy.astype(np.float32)
    np.testing.assert_allclose(nbconv.conv.bias_grad(g32), g32.astype(np.float64).sum(axis=(0, 1)), rtol=1e-6,
                               atol=1e-6)


@pytest.mark.parametrize("k, stride, dilation", [(3, 1, 1), (3, 2, 1), (5, 1, 1), (5, 2, 1), (3, 1, 2), (7, 1, 1)])
def test_depthwise_tiles_against_reference(rng, k, stride, dilation):
    """Depthwise layers wide enough for the register tiles (channels >= LB, rows of >= LP output columns): the
    window tile for the (kernel width, stride) pairs it is compiled for, the general tile for the others (dilation,
    k = 7), the one-pixel tile at the edges; zero padding (edge columns, and in
    3-D border rows whose taps leave gaps), channels left over, float32 and float64: forward and the three
    gradients against the reference."""
    for nd, dtype, c in ((2, np.float32, 40), (3, np.float64, 16)):
        x = randn(rng, (2,) + (6,) * (nd - 1) + (29, c), dtype)
        w = randn(rng, (k,) * nd + (1, c), dtype)
        b = randn(rng, (c,), dtype)
        pad = dilation * (k - 1) // 2
        y = fn("conv", nd)(x, w, b, stride=stride, padding=pad, dilation=dilation, groups=c)
        ref = R.conv_forward(x.astype(np.float64), w.astype(np.float64), b.astype(np.float64), stride=stride,
                             pads=pad, dilation=dilation, groups=c)
        tol = 1e-4 if dtype == np.float32 else 1e-10
        np.testing.assert_allclose(y, ref, rtol=tol, atol=tol)
        gy = randn(rng, y.shape, dtype)
        grads = getattr(nbconv, f"conv{nd}d_backward")(gy, x, w, stride=stride, padding=pad, dilation=dilation, groups=c)
        ref_grads = R.conv_grads(gy.astype(np.float64), x.astype(np.float64), w.astype(np.float64), stride=stride,
                                 pads=pad, dilation=dilation, groups=c)
        for got, want in zip(grads, ref_grads):
            np.testing.assert_allclose(got, want, rtol=tol, atol=tol * 10)


@over_nd((2, 3))
def test_forward_bias_is_added_per_channel(rng, nd):
    x, w, b, kw = make_conv_case(rng, dict(nd=nd, dtype=np.float64, groups="dw_mult", stride="1",
                                           padding="int", dilation="1", mode="zeros"))
    with_bias = fn("conv", nd)(x, w, b, **kw)
    without = fn("conv", nd)(x, w, None, **kw)
    np.testing.assert_allclose(with_bias - without, np.broadcast_to(b, with_bias.shape), rtol=1e-12, atol=1e-12)


def test_forward_propagates_nan_and_inf(rng):
    x = randn(rng, (1, 5, 5, 2), np.float64)
    w = randn(rng, (3, 3, 2, 2), np.float64)
    x[0, 2, 2, 0] = np.nan
    x[0, 0, 4, 1] = np.inf
    y = nbconv.conv2d(x, w, padding=1)
    assert np.isnan(y[0, 1:4, 1:4]).all()
    assert not np.isnan(y[0, 4, 0]).any() and np.isfinite(y[0, 4, 0]).all()


def test_forward_propagates_nan_and_inf_3d(rng):
    x = randn(rng, (1, 5, 4, 5, 2), np.float64)
    w = randn(rng, (3, 3, 3, 2, 2), np.float64)
    x[0, 2, 2, 2, 0] = np.nan
    x[0, 0, 0, 4, 1] = np.inf
    y = nbconv.conv3d(x, w, padding=1)
    assert np.isnan(y[0, 1:4, 1:4, 1:4]).all()
    assert not np.isnan(y[0, 4, 3, 0]).any() and np.isfinite(y[0, 4, 3, 0]).all()
    assert not np.isfinite(y[0, 0:2, 0:2, 3:5]).any()      # inf * w: +-inf (or nan where signs meet)


# ---------------------------------------------------------------------------------------------------
# backward
# ---------------------------------------------------------------------------------------------------

BACKWARD_CASES = pairwise({
    "nd": (1, 2),
    "stride": tuple(STRIDES),
    "padding": tuple(PADDINGS),
    "dilation": tuple(DILATIONS),
    "groups": tuple(GROUPS),
    "mode": R.MODES,
    "dtype": DTYPES,
    "layout": LAYOUTS,
}, seed=2)

BACKWARD_CASES_3D = pairwise({
    "nd": (3,),
    "stride": tuple(STRIDES),
    "padding": tuple(PADDINGS),
    "dilation": tuple(DILATIONS),
    "groups": tuple(GROUPS_3D),
    "mode": R.MODES,
    "dtype": DTYPES,
    "layout": LAYOUTS,
}, seed=32)


def reference_grads(gy, x, w, kw):
    pads = explicit_pads(kw["padding"], x.shape[1:-1], w.shape[:-2], kw["stride"], kw["dilation"])
    args = dict(stride=kw["stride"], pads=pads, dilation=kw["dilation"], groups=kw["groups"],
                mode=kw["padding_mode"])
    return R.conv_grads(gy, x, w, **args), R.conv_grads(np.abs(gy), np.abs(x), np.abs(w), **args)


def run_backward_case(rng, case):
    nd, dtype = case["nd"], np.dtype(case["dtype"])
    x, w, b, kw = make_conv_case(rng, dict(case, bias=True))
    expected_y, _ = reference_forward(x, w, b, kw)
    gy = randn(rng, expected_y.shape, dtype)
    lx, lw, lgy = (layout(a, case["layout"]) for a in (x, w, gy))
    saved = snapshot(lx, lw, lgy)
    grads = getattr(nbconv, f"conv{nd}d_backward")(lgy, lx, lw, **kw)
    assert_unchanged((lx, lw, lgy), saved)
    assert grads._fields == ("input", "weight", "bias")
    (ex, ew, eb), (mx, mw, mb) = reference_grads(gy, x, w, kw)
    assert_close(grads.input, ex, mx, dtype, "grad input vs reference")
    assert_close(grads.weight, ew, mw, dtype, "grad weight vs reference")
    assert_close(grads.bias, eb, mb, dtype, "grad bias vs reference")
    _, tx, tw, tb = torch_conv(x, w, b, stride=kw["stride"], padding=kw["padding"], dilation=kw["dilation"],
                               groups=kw["groups"], mode=kw["padding_mode"], gy=gy)
    assert_close(grads.input, tx, mx, dtype, "grad input vs torch")
    assert_close(grads.weight, tw, mw, dtype, "grad weight vs torch")
    assert_close(grads.bias, tb, mb, dtype, "grad bias vs torch")


@pytest.mark.parametrize("case", case_params(BACKWARD_CASES))
def test_backward_pairwise(rng, case):
    run_backward_case(rng, case)


@pytest.mark.parametrize("case", case_params(BACKWARD_CASES_3D))
def test_backward_pairwise_3d(rng, case):
    run_backward_case(rng, case)


@over_nd()
@pytest.mark.parametrize("padding", tuple(PADDINGS))
@pytest.mark.parametrize("mode", R.MODES)
def test_backward_padding_kind_x_mode(rng, nd, padding, mode):
    """The input gradient folds padded positions back onto the inputs they copied: every form x mode."""
    run_backward_case(rng, dict(nd=nd, stride="2", padding=padding, dilation="1", groups="g2", mode=mode,
                                dtype=np.float64, layout="C"))


@over_nd()
@pytest.mark.parametrize("stride", tuple(STRIDES))
@pytest.mark.parametrize("dilation", tuple(DILATIONS))
@pytest.mark.parametrize("groups", tuple(GROUPS))
def test_backward_stride_x_dilation_x_groups(rng, nd, stride, dilation, groups):
    """Sub-pixel phases of the input gradient: every stride/dilation/groups combination."""
    run_backward_case(rng, dict(nd=nd, stride=stride, padding="asym", dilation=dilation, groups=groups,
                                mode="zeros", dtype=np.float32, layout="C"))


@pytest.mark.parametrize("nd, xs, ks, kw", with_nd_ids(EDGE_CASES))
@pytest.mark.parametrize("n", (2, 0))
def test_backward_edge_shapes(rng, nd, xs, ks, kw, n):
    x = randn(rng, (n, *xs, 2), np.float64)
    w = randn(rng, (*ks, 2, 3), np.float64)
    kw = dict(dict(stride=1, padding=0, dilation=1, groups=1, padding_mode="zeros"), **kw)
    expected_y, _ = reference_forward(x, w, None, kw)
    gy = randn(rng, expected_y.shape, np.float64)
    grads = getattr(nbconv, f"conv{nd}d_backward")(gy, x, w, **kw)
    (ex, ew, eb), (mx, mw, mb) = reference_grads(gy, x, w, kw)
    assert_close(grads.input, ex, mx, np.float64, "grad input")
    assert_close(grads.weight, ew, mw, np.float64, "grad weight")
    assert_close(grads.bias, eb, mb, np.float64, "grad bias")


NEEDS = [("input",), ("weight",), ("bias",), ("input", "bias"), ("weight", "input"), (), "weight",
         ["bias", "weight"]]


@pytest.mark.parametrize("needs", NEEDS, ids=repr)
@over_nd()
def test_backward_needs(rng, needs, nd):
    x, w, b, kw = make_conv_case(rng, dict(nd=nd, dtype=np.float32, groups="g2", stride="2",
                                           padding="same", dilation="1", mode="circular"))
    expected_y, _ = reference_forward(x, w, b, kw)
    gy = randn(rng, expected_y.shape, np.float32)
    grads = getattr(nbconv, f"conv{nd}d_backward")(gy, x, w, needs=needs, **kw)
    wanted = {needs} if isinstance(needs, str) else set(needs)
    (ex, ew, eb), (mx, mw, mb) = reference_grads(gy, x, w, kw)
    for name, e, m in (("input", ex, mx), ("weight", ew, mw), ("bias", eb, mb)):
        got = getattr(grads, name)
        if name in wanted:
            assert_close(got, e, m, np.float32, name)
        else:
            assert got is None, name


@over_nd((2, 3))
def test_backward_is_deterministic(rng, nd):
    x, w, b, kw = make_conv_case(rng, dict(nd=nd, dtype=np.float32, groups="g1", stride="1",
                                           padding="int", dilation="1", mode="zeros"), n=4)
    gy = randn(rng, fn("conv", nd)(x, w, **kw).shape, np.float32)
    first = getattr(nbconv, f"conv{nd}d_backward")(gy, x, w, **kw)
    second = getattr(nbconv, f"conv{nd}d_backward")(gy, x, w, **kw)
    for a, b_ in zip(first, second):
        assert a.tobytes() == b_.tobytes()


# finite differences (float64, small shapes): the gradients are those of nbconv's own forward

FD_CASES = [
    (1, dict(stride=2, padding=((2, 1),), dilation=1, groups=1, padding_mode="reflect")),
    (1, dict(stride=1, padding="same", dilation=2, groups=2, padding_mode="circular")),
    (2, dict(stride=1, padding=1, dilation=1, groups=1, padding_mode="zeros")),
    (2, dict(stride=(2, 1), padding=((1, 2), (2, 0)), dilation=(1, 2), groups=2, padding_mode="reflect")),
    (2, dict(stride=2, padding="same", dilation=1, groups=2, padding_mode="replicate")),
    (2, dict(stride=1, padding=(2, 1), dilation=2, groups=2, padding_mode="circular")),
]


@pytest.mark.parametrize("nd, kw", FD_CASES)
def test_backward_finite_differences(rng, nd, kw):
    x = randn(rng, (2,) + (5,) * nd + (2,), np.float64)
    w = randn(rng, (3,) * nd + (2 // kw["groups"], 4), np.float64)
    b = randn(rng, (4,), np.float64)
    conv = fn("conv", nd)
    gy = randn(rng, conv(x, w, b, **kw).shape, np.float64)

    def loss(x_, w_, b_):
        return float(np.sum(conv(x_, w_, b_, **kw) * gy))

    grads = getattr(nbconv, f"conv{nd}d_backward")(gy, x, w, **kw)
    for index, got in enumerate(grads):
        numeric = R.finite_difference(loss, [x, w, b], index)
        np.testing.assert_allclose(got, numeric, rtol=1e-6, atol=1e-7 * (1 + np.abs(numeric).max()),
                                   err_msg=grads._fields[index])


FD_CASES_3D = [  # x (1, 4, 3, 4, 2), w (2, 3, 2, 2 // groups, 4): every element perturbed (~300 calls)
    dict(stride=(2, 1, 1), padding=((1, 0), (0, 1), (1, 1)), dilation=(1, 1, 2), groups=2, padding_mode="reflect"),
    dict(stride=1, padding="same", dilation=1, groups=1, padding_mode="circular"),
    dict(stride=2, padding="same", dilation=(1, 1, 2), groups=2, padding_mode="replicate"),
    dict(stride=(1, 2, 1), padding=(1, 0, 2), dilation=(2, 1, 1), groups=1, padding_mode="zeros"),
]


@pytest.mark.parametrize("kw", FD_CASES_3D)
def test_backward_finite_differences_3d(rng, kw):
    x = randn(rng, (1, 4, 3, 4, 2), np.float64)
    w = randn(rng, (2, 3, 2, 2 // kw["groups"], 4), np.float64)
    b = randn(rng, (4,), np.float64)
    gy = randn(rng, nbconv.conv3d(x, w, b, **kw).shape, np.float64)

    def loss(x_, w_, b_):
        return float(np.sum(nbconv.conv3d(x_, w_, b_, **kw) * gy))

    grads = nbconv.conv3d_backward(gy, x, w, **kw)
    for index, got in enumerate(grads):
        numeric = R.finite_difference(loss, [x, w, b], index)
        np.testing.assert_allclose(got, numeric, rtol=1e-6, atol=1e-7 * (1 + np.abs(numeric).max()),
                                   err_msg=grads._fields[index])


# ---------------------------------------------------------------------------------------------------
# transposed convolution
# ---------------------------------------------------------------------------------------------------

T_X_SPATIAL = {1: (4,), 2: (4, 3), 3: (3, 4, 3)}
T_PADDINGS = {"int0": {1: 0, 2: 0, 3: 0}, "int": {1: 1, 2: 1, 3: 1}, "per_dim": {1: (2,), 2: (1, 0), 3: (1, 0, 1)},
              "asym": {1: ((2, 0),), 2: ((0, 1), (2, 1)), 3: ((0, 1), (2, 1), (1, 0))},
              "valid": {1: "valid", 2: "valid", 3: "valid"}}
T_GROUPS = {"g1": (3, 4, 1), "g2": (4, 6, 2), "depthwise": (3, 3, 3), "dw_mult": (3, 6, 3),  # (C_in, C_out, g)
            "lanes4": (32, 32, 8)}
T_GROUPS_3D = dict(T_GROUPS, cin1=(1, 4, 1), wide=(20, 17, 1), lanes2=(16, 16, 8))

TRANSPOSE_CASES = pairwise({
    "nd": (1, 2),
    "stride": tuple(STRIDES),
    "padding": tuple(T_PADDINGS),
    "output_padding": ("zero", "max"),
    "dilation": tuple(DILATIONS),
    "groups": tuple(T_GROUPS),
    "dtype": DTYPES,
    "bias": (True, False),
    "layout": LAYOUTS,
}, seed=3)

TRANSPOSE_CASES_3D = pairwise({
    "nd": (3,),
    "stride": tuple(STRIDES),
    "padding": tuple(T_PADDINGS),
    "output_padding": ("zero", "max"),
    "dilation": tuple(DILATIONS),
    "groups": tuple(T_GROUPS_3D),
    "dtype": DTYPES,
    "bias": (True, False),
    "layout": LAYOUTS,
}, seed=33)


def make_transpose_case(rng, case):
    nd, dtype = case["nd"], case["dtype"]
    c_in, c_out, groups = T_GROUPS_3D[case["groups"]]
    stride = R._norm(STRIDES[case["stride"]][nd], nd)
    dilation = R._norm(DILATIONS[case["dilation"]][nd], nd)
    if case["output_padding"] == "max":
        output_padding = tuple(max(s, d) - 1 for s, d in zip(stride, dilation))
    else:
        output_padding = 0
    x = randn(rng, (2,) + T_X_SPATIAL[nd] + (c_in,), dtype)
    w = randn(rng, K_SPATIAL[nd] + (c_out // groups, c_in), dtype)
    b = randn(rng, (c_out,), dtype) if case["bias"] else None
    kw = dict(stride=STRIDES[case["stride"]][nd], padding=T_PADDINGS[case["padding"]][nd],
              output_padding=output_padding, dilation=DILATIONS[case["dilation"]][nd], groups=groups)
    return x, w, b, kw


def reference_transpose(x, w, b, kw):
    args = dict(kw, pads=0 if kw["padding"] == "valid" else kw["padding"])
    del args["padding"]
    expected = R.conv_transpose(x, w, b, **args)
    magnitude = R.conv_transpose(np.abs(x), np.abs(w), None if b is None else np.abs(b), **args)
    return expected, magnitude


def run_transpose_case(rng, case):
    nd, dtype = case["nd"], np.dtype(case["dtype"])
    x, w, b, kw = make_transpose_case(rng, case)
    lx, lw = layout(x, case["layout"]), layout(w, case["layout"])
    lb = None if b is None else layout(b, case["layout"])
    saved = snapshot(lx, lw, lb)
    y = fn("conv_transpose", nd)(lx, lw, lb, **kw)
    assert_unchanged((lx, lw, lb), saved)
    assert y.flags.c_contiguous
    expected, magnitude = reference_transpose(x, w, b, kw)
    assert_close(y, expected, magnitude, dtype, "vs reference")
    assert_close(y, torch_conv_transpose(x, w, b, **kw), magnitude, dtype, "vs torch")


@pytest.mark.parametrize("case", case_params(TRANSPOSE_CASES))
def test_transpose_pairwise(rng, case):
    run_transpose_case(rng, case)


@pytest.mark.parametrize("case", case_params(TRANSPOSE_CASES_3D))
def test_transpose_pairwise_3d(rng, case):
    run_transpose_case(rng, case)


@over_nd()
@pytest.mark.parametrize("stride", tuple(STRIDES))
@pytest.mark.parametrize("dilation", tuple(DILATIONS))
@pytest.mark.parametrize("output_padding", ("zero", "max"))
def test_transpose_stride_x_dilation_x_output_padding(rng, nd, stride, dilation, output_padding):
    run_transpose_case(rng, dict(nd=nd, stride=stride, padding="asym", output_padding=output_padding,
                                 dilation=dilation, groups="g2", dtype=np.float64, bias=True, layout="C"))


@over_nd()
@pytest.mark.parametrize("dtype", DTYPES)
def test_transpose_out(rng, nd, dtype):
    x, w, b, kw = make_transpose_case(rng, dict(nd=nd, dtype=dtype, groups="g2", stride="2", padding="int",
                                                output_padding="max", dilation="1", bias=True))
    expected, magnitude = reference_transpose(x, w, b, kw)
    out = np.full(expected.shape, np.nan, dtype=dtype)
    assert fn("conv_transpose", nd)(x, w, b, out=out, **kw) is out
    assert_close(out, expected, magnitude, dtype)


ADJOINT_CASES = [
    (1, (9,), (3,), dict(stride=2, padding=((1, 2),), dilation=2, groups=1)),
    (2, (7, 8), (3, 2), dict(stride=(2, 3), padding=1, dilation=(1, 2), groups=2)),
    (2, (6, 5), (2, 3), dict(stride=3, padding=((2, 0), (0, 1)), dilation=1, groups=4)),
    (2, (5, 5), (3, 3), dict(stride=1, padding=0, dilation=2, groups=1)),
    (3, (5, 4, 6), (2, 3, 2), dict(stride=(2, 1, 3), padding=((1, 0), (0, 2), (1, 1)), dilation=(1, 2, 1), groups=2)),
    (3, (4, 4, 3), (3, 2, 2), dict(stride=2, padding=1, dilation=(2, 1, 1), groups=4)),
]


@pytest.mark.parametrize("nd, xs, ks, kw", with_nd_ids(ADJOINT_CASES))
def test_transpose_is_adjoint_of_conv(rng, nd, xs, ks, kw):
    """<conv(x, w), y> == <x, conv_transpose(y, w)> with the same weight tensor (zeros padding)."""
    groups = kw["groups"]
    x = randn(rng, (2, *xs, 4), np.float64)
    w = randn(rng, (*ks, 4 // groups, 8), np.float64)
    cx = fn("conv", nd)(x, w, **kw)
    y = randn(rng, cx.shape, np.float64)
    stride, dilation = R._norm(kw["stride"], nd), R._norm(kw["dilation"], nd)
    pads = R._norm_pads(kw["padding"], nd)
    # output_padding that makes conv_transpose return x's spatial shape (the floor's remainder)
    op = tuple(n + b + a - d * (k - 1) - 1 - (m - 1) * s
               for n, (b, a), k, s, d, m in zip(xs, pads, ks, stride, dilation, cx.shape[1:-1]))
    ty = fn("conv_transpose", nd)(y, w, stride=kw["stride"], padding=kw["padding"], dilation=kw["dilation"],
                                  groups=groups, output_padding=op)
    assert ty.shape == x.shape
    lhs, rhs = np.vdot(cx, y), np.vdot(x, ty)
    assert abs(lhs - rhs) <= 1e-11 * (np.abs(cx).sum() * np.abs(y).max() + 1)


@over_nd()
def test_reference_transpose_grads_match_torch(rng, nd):
    """The oracle itself: R.conv_transpose_grads (used by test_fuzz for the tape's gradients) against
    torch's autograd through conv_transpose, asymmetric pads cropped from an unpadded result."""
    stride, dilation, op = (2, 1, 3)[:nd], (1, 2, 1)[:nd], (1, 1, 2)[:nd]
    pads = ((1, 0), (0, 2), (2, 1))[:nd]
    x = randn(rng, (2,) + (3, 4, 2)[:nd] + (4,), np.float64)
    w = randn(rng, (2, 3, 2)[:nd] + (3, 4), np.float64)      # groups=2: C_out = 6
    tx, tw = t_act(x, True), t_weight(w, True)
    convt = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[nd - 1]
    ty = convt(tx, tw, None, stride=stride, output_padding=op, dilation=dilation, groups=2)
    ty = ty[(slice(None), slice(None)) + tuple(slice(b, n - a) for (b, a), n in zip(pads, ty.shape[2:]))]
    args = dict(stride=stride, pads=pads, output_padding=op, dilation=dilation, groups=2)
    np.testing.assert_allclose(n_act(ty), R.conv_transpose(x, w, None, **args), rtol=1e-12, atol=1e-12)
    gy = randn(rng, tuple(n_act(ty).shape), np.float64)
    ty.backward(t_act(gy))
    gx, gw, gb = R.conv_transpose_grads(gy, x, w, **args)
    np.testing.assert_allclose(gx, n_act(tx.grad), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(gw, n_weight(tw.grad), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(gb, gy.reshape(-1, 6).sum(axis=0), rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------------------------
# shapes past the kernels' blocking: > 16 output channels (several channel blocks and a partial one),
# rows wider than the 5-pixel tile, more output pixels than the weight gradient's chunks and slots
# ---------------------------------------------------------------------------------------------------

MEDIUM_CASES = [  # (nd, x shape, w shape, kwargs)
    (2, (2, 12, 23, 36), (3, 3, 36, 33), dict(padding=1)),
    (2, (1, 9, 11, 6), (3, 2, 3, 34), dict(groups=2, stride=(2, 1), padding="same", padding_mode="reflect")),
    (2, (2, 10, 13, 40), (3, 3, 1, 80), dict(groups=40, padding=((0, 2), (1, 1)), dilation=(1, 2))),
    (2, (2, 9, 14, 17), (2, 3, 1, 17), dict(groups=17, stride=2, padding_mode="circular", padding=1)),
    (2, (3, 30, 30, 3), (3, 3, 3, 5), dict(padding=1, padding_mode="replicate")),
    (1, (2, 300, 5), (5, 5, 18), dict(dilation=2, stride=3, padding="same")),
    # 3-D: > 32 input and > 16 output channels, a grouped 16+ channels-per-group layer, depthwise 17 with multiplier 2
    # and C_in = 1; rows (W) wider than a tile, so tiles span row and plane ends
    (3, (2, 4, 5, 11, 34), (3, 3, 3, 34, 33), dict(padding=1)),
    (3, (1, 5, 6, 7, 34), (2, 3, 3, 17, 18), dict(groups=2, stride=(1, 2, 2), padding="same", padding_mode="reflect")),
    (3, (2, 4, 6, 9, 17), (2, 3, 3, 1, 34), dict(groups=17, stride=2, padding=1, padding_mode="circular")),
    (3, (2, 5, 6, 8, 1), (3, 3, 3, 1, 18), dict(padding="same", dilation=(1, 2, 1), padding_mode="replicate")),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("nd, xs, ws, kw", with_nd_ids(MEDIUM_CASES))
def test_medium_shapes(rng, dtype, nd, xs, ws, kw):
    kw = dict(dict(stride=1, padding=0, dilation=1, groups=1, padding_mode="zeros"), **kw)
    x, w, b = randn(rng, xs, dtype), randn(rng, ws, dtype), randn(rng, ws[-1:], dtype)
    y = fn("conv", nd)(x, w, b, **kw)
    expected, magnitude = reference_forward(x, w, b, kw)
    assert_close(y, expected, magnitude, dtype, "forward vs reference")
    gy = randn(rng, y.shape, dtype)
    ty, tx, tw, tb = torch_conv(x, w, b, stride=kw["stride"], padding=kw["padding"], dilation=kw["dilation"],
                                groups=kw["groups"], mode=kw["padding_mode"], gy=gy)
    assert_close(y, ty, magnitude, dtype, "forward vs torch")
    grads = getattr(nbconv, f"conv{nd}d_backward")(gy, x, w, **kw)
    (ex, ew, eb), (mx, mw, mb) = reference_grads(gy, x, w, kw)
    for name, got, e, t, m in (("input", grads.input, ex, tx, mx), ("weight", grads.weight, ew, tw, mw),
                               ("bias", grads.bias, eb, tb, mb)):
        assert_close(got, e, m, dtype, f"grad {name} vs reference")
        assert_close(got, t, m, dtype, f"grad {name} vs torch")


@pytest.mark.parametrize("dtype", DTYPES)
def test_medium_transpose_3d(rng, dtype):
    x = randn(rng, (2, 4, 5, 7, 20), dtype)
    w = randn(rng, (3, 2, 3, 17, 20), dtype)
    b = randn(rng, (17,), dtype)
    kw = dict(stride=(1, 2, 2), padding=(1, 0, 1), output_padding=(0, 1, 1), dilation=1, groups=1)
    y = nbconv.conv_transpose3d(x, w, b, **kw)
    expected, magnitude = reference_transpose(x, w, b, kw)
    assert_close(y, expected, magnitude, dtype, "vs reference")
    assert_close(y, torch_conv_transpose(x, w, b, **kw), magnitude, dtype, "vs torch")


@pytest.mark.parametrize("dtype", DTYPES)
def test_medium_transpose(rng, dtype):
    x = randn(rng, (2, 9, 10, 20), dtype)
    w = randn(rng, (3, 3, 17, 20), dtype)
    b = randn(rng, (17,), dtype)
    kw = dict(stride=2, padding=(1, 0), output_padding=1, dilation=1, groups=1)
    y = nbconv.conv_transpose2d(x, w, b, **kw)
    expected, magnitude = reference_transpose(x, w, b, kw)
    assert_close(y, expected, magnitude, dtype, "vs reference")
    assert_close(y, torch_conv_transpose(x, w, b, **kw), magnitude, dtype, "vs torch")


# ---------------------------------------------------------------------------------------------------
# 3-D determinism: bitwise identical across calls and across numba thread counts (1 vs 2). Every call
# is above the kernels' serial threshold (2**18 multiply-adds, nbconv._jit.SERIAL_BELOW) so that 2
# threads really split it.
# ---------------------------------------------------------------------------------------------------

def workload_3d():
    """name -> zero-argument call returning a tuple of arrays (forward, the three gradients and the
    transposed convolution on dense, grouped and depthwise 3-D problems, float32 and float64)."""
    rng = np.random.default_rng(33)
    f32, f64 = np.float32, np.float64
    x = randn(rng, (2, 6, 8, 9, 16), f32)
    w = randn(rng, (3, 3, 3, 16, 20), f32)
    b = randn(rng, (20,), f32)
    dense = dict(padding=1)
    gy = randn(rng, (2, 6, 8, 9, 20), f32)
    xg = randn(rng, (2, 8, 12, 12, 12), f64)
    wg = randn(rng, (3, 2, 3, 4, 18), f64)         # 3 groups of 4 -> 6
    grouped = dict(stride=(1, 2, 2), padding="same", groups=3, padding_mode="reflect", dilation=(2, 1, 1))
    gyg = randn(rng, nbconv.conv3d(xg, wg, **grouped).shape, f64)
    xd = randn(rng, (2, 6, 8, 9, 16), f32)
    wd = randn(rng, (3, 3, 3, 1, 32), f32)         # depthwise, multiplier 2
    depthwise = dict(padding=((1, 1), (2, 0), (0, 2)), groups=16, padding_mode="circular")
    gyd = randn(rng, nbconv.conv3d(xd, wd, **depthwise).shape, f32)
    return {
        "forward": lambda: (nbconv.conv3d(x, w, b, **dense),),
        "backward": lambda: tuple(nbconv.conv3d_backward(gy, x, w, **dense)),
        "grouped_forward": lambda: (nbconv.conv3d(xg, wg, None, **grouped),),
        "grouped_backward": lambda: tuple(nbconv.conv3d_backward(gyg, xg, wg, **grouped)),
        "depthwise_forward": lambda: (nbconv.conv3d(xd, wd, None, **depthwise),),
        "depthwise_backward": lambda: tuple(nbconv.conv3d_backward(gyd, xd, wd, **depthwise)),
        "transpose": lambda: (nbconv.conv_transpose3d(x, np.ascontiguousarray(np.swapaxes(w, -1, -2)), None,
                                                      stride=2, padding=1, output_padding=1),),
        "depthwise_transpose": lambda: (nbconv.conv_transpose3d(xd, np.ascontiguousarray(wd[..., ::2]), None,
                                                                stride=(1, 2, 2), groups=16),),
    }


def run_workload(calls):
    out = {}
    for name, call in calls.items():
        out[name] = call()
        assert all(isinstance(a, np.ndarray) and a.size and np.isfinite(a).all() for a in out[name]), name
    return out


def assert_bitwise(got, want, what):
    assert got.keys() == want.keys()
    for name in want:
        assert len(got[name]) == len(want[name])
        for i, (g, e) in enumerate(zip(got[name], want[name])):
            assert g.dtype == e.dtype and g.shape == e.shape, (what, name, i)
            assert g.tobytes() == e.tobytes(), f"{what}: {name}[{i}] differs"


def test_3d_bitwise_identical_across_calls_and_thread_counts():
    numba = pytest.importorskip("numba")
    calls = workload_3d()
    saved = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        single = run_workload(calls)
        assert_bitwise(run_workload(calls), single, "second call, 1 thread")
        if numba.config.NUMBA_NUM_THREADS >= 2:
            numba.set_num_threads(2)
            assert_bitwise(run_workload(calls), single, "2 threads vs 1")
            assert_bitwise(run_workload(calls), single, "2 threads again vs 1")
    finally:
        numba.set_num_threads(saved)
    assert numba.get_num_threads() == saved


# ---------------------------------------------------------------------------------------------------
# random configurations (hypothesis, derandomized): sizes and parameters the grids do not pick
# ---------------------------------------------------------------------------------------------------

hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies


@st.composite
def conv_configs(draw, nds=(1, 2), max_size=8):
    nd = draw(st.sampled_from(nds))
    groups = draw(st.sampled_from((1, 1, 2, 3)))
    cg_in, cg_out = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    ks = tuple(draw(st.integers(1, 4)) for _ in range(nd))
    stride = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    dilation = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    mode = draw(st.sampled_from(R.MODES))
    xs = tuple(draw(st.integers(1, max_size)) for _ in range(nd))
    if draw(st.booleans()):
        padding = "same"
    else:
        padding = tuple((draw(st.integers(0, 3)), draw(st.integers(0, 3))) for _ in range(nd))
    pads = explicit_pads(padding, xs, ks, stride, dilation)
    for n, (b, a), k, d in zip(xs, pads, ks, dilation):
        hypothesis.assume(n + b + a >= d * (k - 1) + 1)
        if mode == "reflect":
            hypothesis.assume(max(b, a) < n)
        if mode == "circular":
            hypothesis.assume(max(b, a) <= n)
    return dict(nd=nd, n=draw(st.integers(1, 2)), xs=xs, ks=ks, c_in=groups * cg_in, c_out=groups * cg_out,
                kw=dict(stride=stride, padding=padding, dilation=dilation, groups=groups, padding_mode=mode),
                dtype=draw(st.sampled_from(DTYPES)), seed=draw(st.integers(0, 2 ** 31)))


@hypothesis.settings(max_examples=60, deadline=None, derandomize=True, database=None,
                     suppress_health_check=list(hypothesis.HealthCheck))
@hypothesis.given(conv_configs())
def test_random_configurations(cfg):
    check_random_configuration(cfg)


@hypothesis.settings(max_examples=15, deadline=None, derandomize=True, database=None,
                     suppress_health_check=list(hypothesis.HealthCheck))
@hypothesis.given(conv_configs(nds=(3,), max_size=5))
def test_random_configurations_3d(cfg):
    check_random_configuration(cfg)


def check_random_configuration(cfg):
    rng = np.random.default_rng(cfg["seed"])
    nd, dtype, kw = cfg["nd"], cfg["dtype"], cfg["kw"]
    x = randn(rng, (cfg["n"], *cfg["xs"], cfg["c_in"]), dtype)
    w = randn(rng, (*cfg["ks"], cfg["c_in"] // kw["groups"], cfg["c_out"]), dtype)
    b = randn(rng, (cfg["c_out"],), dtype)
    y = fn("conv", nd)(x, w, b, **kw)
    expected, magnitude = reference_forward(x, w, b, kw)
    assert_close(y, expected, magnitude, dtype, "forward")
    gy = randn(rng, y.shape, dtype)
    grads = getattr(nbconv, f"conv{nd}d_backward")(gy, x, w, **kw)
    (ex, ew, eb), (mx, mw, mb) = reference_grads(gy, x, w, kw)
    assert_close(grads.input, ex, mx, dtype, "grad input")
    assert_close(grads.weight, ew, mw, dtype, "grad weight")
    assert_close(grads.bias, eb, mb, dtype, "grad bias")
    if kw["padding"] != "same":
        # a transposed convolution of gy (C_out channels back to C_in) with the same geometry
        stride, dilation = kw["stride"], kw["dilation"]
        op = tuple(min(max(s, d) - 1, 1) for s, d in zip(stride, dilation))
        targs = dict(stride=stride, padding=kw["padding"], output_padding=op, dilation=dilation,
                     groups=kw["groups"])
        sizes = [(m - 1) * s - bb - a + d * (k - 1) + o + 1 for m, (bb, a), k, s, d, o in
                 zip(y.shape[1:-1], kw["padding"], cfg["ks"], stride, dilation, op)]
        if min(sizes) >= 1:
            wt = randn(rng, (*cfg["ks"], cfg["c_in"] // kw["groups"], cfg["c_out"]), dtype)
            bt = randn(rng, (cfg["c_in"],), dtype)
            t = fn("conv_transpose", nd)(gy, wt, bt, **targs)
            te, tm = reference_transpose(gy, wt, bt, targs)
            assert_close(t, te, tm, dtype, "transpose")


# ---------------------------------------------------------------------------------------------------
# pointwise (1x1) convolutions: matrix products over the pixels
# ---------------------------------------------------------------------------------------------------

POINTWISE_STRIDES = {"1": {1: 1, 2: 1, 3: 1}, "2": {1: 2, 2: 2, 3: 2}, "mixed": {1: (3,), 2: (2, 1), 3: (1, 3, 2)}}


@over_nd()
@pytest.mark.parametrize("stride", tuple(POINTWISE_STRIDES))
@pytest.mark.parametrize("layout_kind", ("C", "F", "slice"))
@pytest.mark.parametrize("dtype", DTYPES)
def test_pointwise_forward_and_backward(rng, nd, stride, layout_kind, dtype):
    """1x1 kernels with one group and no padding (one matrix product per pass) against both oracles,
    with 17 -> 20 channels and an odd spatial size, so strided pixels leave the last row unread."""
    kw = dict(stride=POINTWISE_STRIDES[stride][nd], padding=0, dilation=2, groups=1, padding_mode="zeros")
    x = randn(rng, (2, *X_SPATIAL[nd], 17), dtype)
    w = randn(rng, ((1,) * nd) + (17, 20), dtype)
    b = randn(rng, (20,), dtype)
    lx, lw = layout(x, layout_kind), layout(w, layout_kind)
    saved = snapshot(lx, lw)
    y = fn("conv", nd)(lx, lw, b, **kw)
    expected, magnitude = reference_forward(x, w, b, kw)
    assert_close(y, expected, magnitude, dtype, "forward vs reference")
    gy = randn(rng, y.shape, dtype)
    grads = getattr(nbconv, f"conv{nd}d_backward")(layout(gy, layout_kind), lx, lw, **kw)
    assert_unchanged((lx, lw), saved)
    (ex, ew, eb), (mx, mw, mb) = reference_grads(gy, x, w, kw)
    assert_close(grads.input, ex, mx, dtype, "grad input vs reference")
    assert_close(grads.weight, ew, mw, dtype, "grad weight vs reference")
    assert_close(grads.bias, eb, mb, dtype, "grad bias vs reference")
    ty, tx, tw, tb = torch_conv(x, w, b, stride=kw["stride"], padding=0, dilation=2, groups=1, mode="zeros", gy=gy)
    assert_close(y, ty, magnitude, dtype, "forward vs torch")
    assert_close(grads.input, tx, mx, dtype, "grad input vs torch")
    assert_close(grads.weight, tw, mw, dtype, "grad weight vs torch")


@over_nd()
@pytest.mark.parametrize("stride", tuple(POINTWISE_STRIDES))
@pytest.mark.parametrize("padding", ("int0", "int", "asym"))
@pytest.mark.parametrize("output_padding", ("zero", "max"))
def test_pointwise_transpose(rng, nd, stride, padding, output_padding):
    """Transposed 1x1 convolutions (the matrix product placed at every s-th position, cropped by the padding,
    zero in the output padding) against both oracles."""
    strides = R._norm(POINTWISE_STRIDES[stride][nd], nd)
    kw = dict(stride=strides, padding=T_PADDINGS[padding][nd], dilation=1, groups=1,
              output_padding=tuple(s - 1 for s in strides) if output_padding == "max" else 0)
    x = randn(rng, (2, *T_X_SPATIAL[nd], 18), np.float64)
    w = randn(rng, ((1,) * nd) + (3, 18), np.float64)
    b = randn(rng, (3,), np.float64)
    expected, magnitude = reference_transpose(x, w, b, kw)
    if min(expected.shape[1:-1]) < 1:  # the padding crops everything: a clear error, no empty result
        with pytest.raises(ValueError, match="output size would be"):
            fn("conv_transpose", nd)(x, w, b, **kw)
        return
    y = fn("conv_transpose", nd)(x, w, b, **kw)
    assert_close(y, expected, magnitude, np.float64, "vs reference")
    assert_close(y, torch_conv_transpose(x, w, b, **kw), magnitude, np.float64, "vs torch")


# ---------------------------------------------------------------------------------------------------
# one input channel, few output channels: the CPU backend's column-lanes forward (LeNet's first layer)
# ---------------------------------------------------------------------------------------------------

COLUMN_CASES = {  # x spatial, kernel, options: at least 5 output rows of at least 16 columns
    "lenet": ((9, 21), (5, 5), dict(padding=2)),
    "1d": ((37,), (3,), dict(padding=((2, 0),), dilation=2)),
    "3d_strided": ((4, 6, 19), (2, 3, 3), dict(stride=(2, 2, 1), padding=1)),
    "reflect": ((7, 17), (3, 2), dict(padding=(1, 3), padding_mode="reflect")),
    "valid": ((6, 20), (2, 3), dict(padding=0, dilation=(2, 1))),
}


@pytest.mark.parametrize("case", tuple(COLUMN_CASES))
@pytest.mark.parametrize("c_out", (1, 6, 15))
@pytest.mark.parametrize("dtype", DTYPES)
def test_column_lanes_forward(rng, case, c_out, dtype):
    """C_in = 1 with fewer output channels than a tile's lanes: vector lanes over output columns (`_column_conv`),
    against both oracles, with and without bias."""
    spatial, kernel, opts = COLUMN_CASES[case]
    nd = len(spatial)
    kw = dict(stride=1, padding=0, dilation=1, groups=1, padding_mode="zeros")
    kw.update(opts)
    x = randn(rng, (5, *spatial, 1), dtype)
    w = randn(rng, (*kernel, 1, c_out), dtype)
    b = randn(rng, (c_out,), dtype)
    y = fn("conv", nd)(x, w, b, **kw)
    params = conv_params(x.shape, w.shape, stride=kw["stride"], padding=kw["padding"], dilation=kw["dilation"],
                         groups=1, padding_mode=kw["padding_mode"])
    assert _cpu._column_lanes(w.shape, params, y.shape) == (c_out < _cpu.B), "the case must reach the kernel"
    expected, magnitude = reference_forward(x, w, b, kw)
    assert_close(y, expected, magnitude, dtype, "forward vs reference")
    ty = torch_conv(x, w, b, stride=kw["stride"], padding=kw["padding"], dilation=kw["dilation"], groups=1,
                    mode=kw["padding_mode"])
    assert_close(y, ty, magnitude, dtype, "forward vs torch")
    no_bias, _ = reference_forward(x, w, None, kw)
    assert_close(fn("conv", nd)(x, w, None, **kw), no_bias, magnitude, dtype, "no bias")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("x_shape, w_shape, opts", [
    ((2, 9, 9, 8), (3, 3, 8, 40), dict(padding=1)),                 # two blocks of output channels, one partial
    ((2, 9, 9, 8), (3, 3, 4, 40), dict(padding=1, groups=2)),       # groups: the bias in group-major order
    ((3, 17, 6), (3, 6, 70), dict(stride=2)),                       # 1-D, strided
    ((2, 5, 6, 7, 8), (3, 3, 3, 8, 33), dict(padding=1)),           # 3-D
    ((2, 6, 6, 64), (3, 3, 64, 64), dict(padding=1)),               # whole blocks
])
def test_backward_sums_the_bias_with_the_weight_gradient(x_shape, w_shape, opts, dtype):
    """needs weight and bias: the bias sums share the dense weight gradient's hand-off; the bias matches the float64
    sum of grad_out and is bitwise the one computed alone, and so is the weight gradient."""
    rng = np.random.default_rng(3)
    nd = len(x_shape) - 2
    x, w = randn(rng, x_shape, dtype), randn(rng, w_shape, dtype)
    backward = getattr(nbconv, f"conv{nd}d_backward")
    y = getattr(nbconv, f"conv{nd}d")(x, w, **opts)
    gy = randn(rng, y.shape, dtype)
    both = backward(gy, x, w, needs=("weight", "bias"), **opts)
    alone = backward(gy, x, w, needs=("weight",), **opts).weight
    expected = gy.astype(np.float64).sum(axis=tuple(range(nd + 1)))
    assert both.bias.dtype == dtype and both.bias.shape == (w_shape[-1],)
    np.testing.assert_allclose(both.bias, expected, rtol=1e-6 if dtype == np.float32 else 1e-13, atol=1e-5)
    assert np.array_equal(both.weight, alone)
    assert np.array_equal(both.bias, backward(gy, x, w, needs=("bias",), **opts).bias)


@pytest.mark.parametrize("x_shape, w_shape, groups", [
    ((2, 40, 30, 32), (3, 3, 1, 32), 32),           # depthwise: bias sums in the weight gradient's hand-off
    ((2, 7, 9, 24), (5, 5, 1, 24), 24),
    ((2, 33, 28, 13), (3, 3, 13, 13), 1),          # dense: few channels (rows folded side by side)
    ((2, 9, 9, 40), (1, 1, 40, 64), 1),            # dense, grad_out read in place by the weight gradient
])
def test_bias_gradient_bits_do_not_depend_on_the_route_or_threads(x_shape, w_shape, groups):
    """The bias gradient, computed beside the weight gradient or alone, on one thread or several, has the same bits
    (float64 sums of fixed blocks of rows) and matches the float64 sum of grad_out."""
    import numba
    rng = np.random.default_rng(4)
    x, w = randn(rng, x_shape, np.float32), randn(rng, w_shape, np.float32)
    gy = randn(rng, nbconv.conv2d(x, w, padding=1, groups=groups).shape, np.float32)
    saved = numba.get_num_threads()
    results = []
    try:
        for threads in sorted({1, numba.config.NUMBA_NUM_THREADS}):
            numba.set_num_threads(threads)
            results.append(nbconv.conv2d_backward(gy, x, w, padding=1, groups=groups).bias)
            results.append(nbconv.conv2d_backward(gy, x, w, padding=1, groups=groups, needs=("bias",)).bias)
    finally:
        numba.set_num_threads(saved)
    assert all(np.array_equal(results[0], bias) for bias in results[1:])
    np.testing.assert_allclose(results[0], gy.astype(np.float64).sum(axis=(0, 1, 2)), rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("x_shape, kernel, stride, pads", [
    ((3, 7, 12, 32), (3, 3), (1, 1), ((1, 1), (1, 1))),       # 7 rows per image: pairs start at odd rows in the batch
    ((2, 5, 9, 48), (5, 5), (2, 2), ((2, 2), (2, 2))),        # stride 2, 3 output rows per image
    ((2, 3, 5, 11, 40), (3, 3, 3), (1, 1, 1), ((1, 1),) * 3),  # 3-D: border rows of several runs are not paired
    ((3, 13, 17), (5,), (1,), ((2, 2),)),                      # 1-D: one row per image
])
def test_depthwise_row_pairs_give_the_bits_of_single_rows(x_shape, kernel, stride, pads):
    """Consecutive depthwise rows of one run of taps share the window tile's passes (a pair); which rows pair
    depends on where the threads' chunks and the batch start, and a paired row has the bits of a row computed alone:
    the batch, each image alone and one thread all agree bitwise, and match the reference."""
    import numba
    rng = np.random.default_rng(13)
    nd, c = len(kernel), x_shape[-1]
    x = randn(rng, x_shape, np.float32)
    w = randn(rng, (*kernel, 1, c), np.float32)
    b = randn(rng, (c,), np.float32)
    conv = fn("conv", nd)
    opts = dict(stride=stride, padding=pads, groups=c)
    whole = conv(x, w, b, **opts)
    alone = np.concatenate([conv(x[i:i + 1], w, b, **opts) for i in range(x.shape[0])])
    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        serial = conv(x, w, b, **opts)
    finally:
        numba.set_num_threads(threads)
    assert np.array_equal(whole, alone) and np.array_equal(whole, serial)
    expected = R.conv_forward(x.astype(np.float64), w.astype(np.float64), b.astype(np.float64), stride, pads, 1, c)
    np.testing.assert_allclose(whole, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("x_shape, kernel, stride, pads", [
    ((2, 4, 5, 32), (3, 3), (1, 1), ((1, 1), (1, 1))),     # one tile, both ends skipping a column
    ((2, 5, 9, 48), (5, 5), (1, 2), ((2, 2), (2, 2))),     # stride 2, the two end tiles overlapping
    ((1, 3, 14, 40), (1, 5), (1, 1), ((0, 0), (3, 2))),    # asymmetric: 3 columns skipped at the start; 8 odd lanes
    ((2, 3, 4, 7, 16), (3, 3, 3), (1, 1, 2), ((1, 1),) * 3),  # 3-D
])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_depthwise_rows_end_in_tiles_that_skip_outside_columns(x_shape, kernel, stride, pads, dtype):
    """Depthwise layers whose rows the window tile covers whole, the tiles at a row's ends skipping the source
    columns outside it (narrow rows, strides, asymmetric padding, leftover channels): the reference's values."""
    rng = np.random.default_rng(9)
    c = x_shape[-1]
    x, w, b = randn(rng, x_shape, dtype), randn(rng, (*kernel, 1, c), dtype), randn(rng, (c,), dtype)
    nd = len(kernel)
    y = getattr(nbconv, f"conv{nd}d")(x, w, b, stride=stride, padding=pads, groups=c)
    expected = R.conv_forward(x.astype(np.float64), w.astype(np.float64), b.astype(np.float64), stride, pads, 1, c)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(y, expected, rtol=tol, atol=tol)


@pytest.mark.parametrize("groups, cg_in", [(1, 4), (4, 1), (2, 2)])  # dense, depthwise, 2 channels per group
@pytest.mark.parametrize("x_shape", [(2, 0, 4), (2, 3, 0, 4)])
def test_an_empty_spatial_dim_with_padding_gives_the_bias(groups, cg_in, x_shape):
    """An input with an empty spatial dim, padded to a non-empty output, reads only zero padding on every route:
    the forward is the bias, the input gradient empty, the weight gradient zero, the bias gradient grad_out's sum."""
    nd = len(x_shape) - 2
    x = np.ones(x_shape, np.float32)
    w = np.ones((3,) * nd + (cg_in, 4), np.float32)
    b = np.arange(4, dtype=np.float32)
    y = getattr(nbconv, f"conv{nd}d")(x, w, b, padding=2, groups=groups)
    assert y.shape == (x_shape[0], *(n + 2 for n in x_shape[1:-1]), 4)
    assert np.array_equal(y, np.broadcast_to(b, y.shape))
    gy = np.ones(y.shape, np.float32)
    grads = getattr(nbconv, f"conv{nd}d_backward")(gy, x, w, padding=2, groups=groups)
    assert grads.input.shape == x_shape and not grads.weight.any()
    assert np.array_equal(grads.bias, np.full(4, gy[..., 0].size, np.float32))


def _split_configs():
    """Zero-padded convolutions (1-3 spatial dims, strides, dilations, asymmetric pads, groups, the lane-group
    layout) drawn with a fixed seed."""
    draw = random.Random(7)
    configs = []
    while len(configs) < 60:
        nd = draw.choice([1, 2, 3])
        k = [draw.randint(1, 4) for _ in range(nd)]
        s = [draw.randint(1, 3) for _ in range(nd)]
        d = [draw.randint(1, 2) for _ in range(nd)]
        sizes = [draw.randint(max(3, (kk - 1) * dd + 1), 11) for kk, dd in zip(k, d)]
        pads = [(draw.randint(0, 3), draw.randint(0, 3)) for _ in range(nd)]
        g, cg_in, cg_out = draw.choice([(1, 8, 40), (1, 40, 3), (2, 4, 16), (32, 4, 4), (1, 1, 33)])
        if any(p != (0, 0) for p in pads):
            configs.append((nd, sizes, k, s, d, pads, g, cg_in, cg_out))
    return configs


@pytest.mark.parametrize("nd, sizes, k, s, d, pads, g, cg_in, cg_out", _split_configs())
def test_forward_without_the_padded_copy_gives_the_same_bits(monkeypatch, nd, sizes, k, s, d, pads, g, cg_in, cg_out):
    """A zero-padded forward computed as an interior box read from x and border boxes read from small padded copies
    (forced here for small inputs) gives exactly the bits of the one padded copy, and matches the reference."""
    rng = np.random.default_rng(11)
    x = randn(rng, (2, *sizes, g * cg_in), np.float32)
    w = randn(rng, (*k, cg_in, g * cg_out), np.float32)
    b = randn(rng, (g * cg_out,), np.float32)
    conv = getattr(nbconv, f"conv{nd}d")
    opts = dict(stride=s, padding=pads, dilation=d, groups=g)
    monkeypatch.setattr(_cpu, "_SPLIT_BORDER_FROM", 1 << 62)
    whole = conv(x, w, b, **opts)
    monkeypatch.setattr(_cpu, "_SPLIT_BORDER_FROM", 0)
    monkeypatch.setattr(_cpu, "_SPLIT_BORDER_INTERIOR", 0.0)
    split = conv(x, w, b, **opts)
    assert np.array_equal(split, whole)
    expected = R.conv_forward(x.astype(np.float64), w.astype(np.float64), b.astype(np.float64), s, pads, d, g)
    np.testing.assert_allclose(split, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("nd, sizes, k, d, pads, g, cg_in, cg_out", [
    (1, (30,), (5,), (2,), ((4, 3),), 2, 33, 5),
    (2, (9, 11), (3, 3), (1, 2), ((1, 2), (2, 0)), 1, 40, 8),
    (3, (4, 5, 6), (3, 2, 3), (1, 1, 1), ((1, 1), (0, 1), (2, 1)), 1, 36, 4)])
def test_stride_one_input_gradient_is_the_forward_gather_over_grad_out(monkeypatch, nd, sizes, k, d, pads, g, cg_in,
                                                                     cg_out):
    """At stride 1 the input gradient (and the transposed convolution) of a layer with many input channels per group
    runs the forward's gather over grad_out, the kernel flipped and its channels swapped: with grad_out read in place
    but for its border (the box split, forced here) and from one padded copy, the same bits, matching the
    reference; the transposed convolution with its bias too."""
    rng = np.random.default_rng(12)
    x = randn(rng, (2, *sizes, g * cg_in), np.float32)
    w = randn(rng, (*k, cg_in, g * cg_out), np.float32)
    opts = dict(padding=pads, dilation=d, groups=g)
    gy = randn(rng, fn("conv", nd)(x, w, **opts).shape, np.float32)
    bt = randn(rng, (g * cg_in,), np.float32)
    calls = []
    gather = _cpu._gather_forward
    monkeypatch.setattr(_cpu, "_gather_forward", lambda *args: calls.append(args[3:5]) or gather(*args))
    results = []
    for split in (False, True):
        monkeypatch.setattr(_cpu, "_SPLIT_BORDER_FROM", 0 if split else 1 << 62)
        monkeypatch.setattr(_cpu, "_SPLIT_BORDER_INTERIOR", 0.0 if split else 0.9)
        gx = getattr(nbconv, f"conv{nd}d_backward")(gy, x, w, needs=("input",), **opts).input
        xt = getattr(nbconv, f"conv_transpose{nd}d")(gy, w, bt, **opts)  # the adjoint of conv(., w)
        results.append((gx, xt))
    assert len(calls) == 4 and all(p.stride == (1,) * nd for _, p in calls)  # the two routes, each on the gather
    assert all(np.array_equal(a, b) for a, b in zip(*results))
    f64 = [a.astype(np.float64) for a in (gy, x, w, bt)]
    want = R.conv_grads(f64[0], f64[1], f64[2], pads=pads, dilation=d, groups=g)[0]
    np.testing.assert_allclose(results[1][0], want, rtol=1e-4, atol=1e-4)
    want_t = R.conv_transpose(f64[0], f64[2], f64[3], pads=pads, dilation=d, groups=g)
    np.testing.assert_allclose(results[1][1], want_t, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("nd, sizes, k, s, d, pads, g, cg_in, cg_out", [
    (1, (40,), (3,), (1,), (2,), ((2, 2),), 1, 24, 2 * B + 5),
    (2, (9, 11), (3, 3), (2, 1), (1, 2), ((1, 2), (2, 0)), 2, 20, B + 3),
    (2, (12, 10), (1, 1), (1, 1), (1, 1), ((0, 0), (0, 0)), 1, 40, 3 * B),
    (3, (5, 6, 7), (3, 2, 3), (1, 2, 1), (1, 1, 1), ((1, 1), (0, 1), (2, 1)), 1, 36, 2 * B)])
def test_weights_first_item_order_gives_the_same_bits(monkeypatch, nd, sizes, k, s, d, pads, g, cg_in, cg_out):
    """The gather kernel's items taken weights part by weights part (chosen where the weights outgrow L2: forced
    here with a 64-byte L2, and one block per part) give exactly the bits of tile group by tile group, in the forward
    and the input gradient (the gather over grad_out at stride 1, its phases at stride 2), over several blocks of
    output channels (one partial), and match the reference."""
    rng = np.random.default_rng(13)
    x = randn(rng, (3, *sizes, g * cg_in), np.float32)
    w = randn(rng, (*k, cg_in, g * cg_out), np.float32)
    b = randn(rng, (g * cg_out,), np.float32)
    opts = dict(stride=s, padding=pads, dilation=d, groups=g)
    gy = randn(rng, fn("conv", nd)(x, w, **opts).shape, np.float32)
    monkeypatch.setattr(_cpu, "_PANEL_BYTES", 1)  # a part of the weights per block of output channels
    orders = []
    choose = _cpu._weights_outer
    monkeypatch.setattr(_cpu, "_weights_outer", lambda *args: orders.append(choose(*args)) or orders[-1])
    results = []
    for l2 in (1 << 40, 64):
        monkeypatch.setattr(_cpu, "_l2_bytes", lambda: l2)
        results.append((fn("conv", nd)(x, w, b, **opts),
                        getattr(nbconv, f"conv{nd}d_backward")(gy, x, w, needs=("input",), **opts).input))
    assert not any(orders[:len(orders) // 2]) and any(orders[len(orders) // 2:])
    assert all(np.array_equal(a, c) for a, c in zip(*results))
    f64 = [a.astype(np.float64) for a in (x, w, b, gy)]
    np.testing.assert_allclose(results[1][0], R.conv_forward(*f64[:3], s, pads, d, g), rtol=1e-4, atol=1e-4)
    want = R.conv_grads(f64[3], f64[0], f64[1], stride=s, pads=pads, dilation=d, groups=g)[0]
    np.testing.assert_allclose(results[1][1], want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("nd, k, g, cg_in, cg_out", [(1, (3,), 1, 24, 2 * B + 5), (2, (3, 2), 2, 20, B + 3),
                                                  (2, (1, 1), 3, 8, 7), (3, (2, 3, 2), 1, 36, 2 * B)])
def test_forward_weights_packed_by_the_threads_give_the_same_bits(monkeypatch, nd, k, g, cg_in, cg_out):
    """Large forward weights are packed by the threads (_pack_blocks, forced here for small ones) in the hand-off that
    pads x: the same packed weights as NumPy's copy (_pack), so the same bits, for groups and partial blocks of
    output channels; a non-contiguous w keeps NumPy's copy."""
    rng = np.random.default_rng(14)
    x = randn(rng, (2, *(7,) * nd, g * cg_in), np.float32)
    w = randn(rng, (*k, cg_in, g * cg_out), np.float32)
    b = randn(rng, (g * cg_out,), np.float32)
    conv = fn("conv", nd)
    kernels = []
    call_all = _cpu.call_all
    monkeypatch.setattr(_cpu, "call_all", lambda jobs, work: kernels.extend(j[0] for j in jobs) or call_all(jobs, work))
    want = conv(x, w, b, padding=1, groups=g)
    monkeypatch.setattr(_cpu, "_PARALLEL_PACK_BYTES", 0)
    assert _cpu._pack_blocks not in kernels
    assert np.array_equal(conv(x, w, b, padding=1, groups=g), want)
    assert _cpu._pack_blocks in kernels
    kernels.clear()
    w_strided = np.repeat(w, 2, axis=-2)[..., ::2, :]  # equal to w, not contiguous
    assert np.array_equal(conv(x, w_strided, b, padding=1, groups=g), want) and _cpu._pack_blocks not in kernels
    f64 = [a.astype(np.float64) for a in (x, w, b)]
    np.testing.assert_allclose(want, R.conv_forward(*f64, (1,) * nd, ((1, 1),) * nd, (1,) * nd, g), rtol=1e-4,
                               atol=1e-4)


def test_weight_gradient_chunks_split_the_pixels_evenly():
    """_weight_grad's chunks: never more than _WIDE_CHUNK_MOST pixels; narrow tiles' at most 128 pixels (16 or more
    input channels per group) or 256; the wide tile's longer only while their grad_out rows fit _WIDE_CHUNK_BYTES;
    as few chunks as that allows, m or m - 1 of them in every slot (the slots' work differs by a chunk in m at
    most), or one per slot for few pixels."""
    from nbconv._jit import SLOTS
    for n_pix in (7, 100, 1000, 6272, 12345, 25088, 50176, 10 ** 6):
        for cg_in, row_len, wide in ((64, 64, True), (8, 64, True), (64, 256, True), (64, 32, False), (3, 16, False)):
            chunk = _cpu._grad_weight_chunk(n_pix, cg_in, row_len, wide, 4)
            narrow = 128 if cg_in >= 16 else 256
            assert chunk <= _cpu._WIDE_CHUNK_MOST and (chunk <= narrow or wide and
                                                       chunk * row_len * 4 <= _cpu._WIDE_CHUNK_BYTES), chunk
            n_chunks = -(-n_pix // chunk)
            if n_chunks > SLOTS:
                m = -(-n_chunks // SLOTS)
                assert SLOTS * (m - 1) < n_chunks <= SLOTS * m
                bound = max(narrow, min(_cpu._WIDE_CHUNK_MOST, _cpu._WIDE_CHUNK_BYTES // (row_len * 4))) if wide \
                    else narrow
                assert -(-n_pix // (SLOTS * bound)) == m, (n_pix, cg_in, row_len, wide, chunk)  # no more chunks
            else:
                assert chunk == -(-n_pix // SLOTS)
    assert _cpu._grad_weight_chunk(25088, 64, 64, True, 4) == 784  # C3D's layer (AVX-512): 32 chunks, 4 per slot
    assert _cpu._grad_weight_chunk(25088, 64, 64, False, 4) == 126  # narrow: 200 chunks, 25 per slot


def test_weight_gradient_bits_do_not_depend_on_threads_with_many_chunks(monkeypatch):
    """The dense weight gradient (wide tile where the target has it, narrow otherwise) with chunks forced short, so
    that every slot sums many of them: bitwise equal on 1 and 2 threads, and the reference's."""
    import numba
    monkeypatch.setattr(_cpu, "_GRID_CACHE", {})  # plans made with these chunks stay out of the real cache
    monkeypatch.setattr(_cpu, "_WEIGHT_GRAD_CHUNKS", (3, 3))
    monkeypatch.setattr(_cpu, "_WIDE_CHUNK_MOST", 5)
    rng = np.random.default_rng(15)
    x = randn(rng, (2, 7, 9, 20), np.float32)
    w = randn(rng, (3, 2, 20, WB + 3), np.float32)
    kw = dict(stride=(1, 2), padding=1)
    gy = randn(rng, nbconv.conv2d(x, w, **kw).shape, np.float32)
    saved = numba.get_num_threads()
    results = []
    try:
        for threads in sorted({1, min(2, numba.config.NUMBA_NUM_THREADS)}):
            numba.set_num_threads(threads)
            results.append(nbconv.conv2d_backward(gy, x, w, needs=("weight", "bias"), **kw))
    finally:
        numba.set_num_threads(saved)
    assert all(np.array_equal(a.weight, results[0].weight) for a in results)
    f64 = [a.astype(np.float64) for a in (gy, x, w)]
    want = R.conv_grads(*f64, stride=(1, 2), pads=((1, 1), (1, 1)), dilation=(1, 1), groups=1)[1]
    np.testing.assert_allclose(results[0].weight, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("w_shape, groups, padding", [((1, 1, 16, 300), 1, 0), ((3, 3, 1, 16), 16, 1),
                                                      ((3, 3, 4, 16), 4, 1), ((3, 3, 2, 16), 8, 1)])
def test_weight_gradient_bits_do_not_depend_on_the_input_layout(w_shape, groups, padding):
    """The weight gradient's slots of partial sums follow from shapes and parameters only: an F-ordered x (copied
    before the kernels) gives the bits of a C-ordered one, dense, depthwise and with 2 or 4 channels per group. For
    these layers (a large weight on a small map) the copy once counted against the slots' memory budget and changed
    their number."""
    rng = np.random.default_rng(16)
    size = 7 if padding == 0 else 3
    x = randn(rng, (1, size, size, w_shape[-2] * groups), np.float32)
    w = randn(rng, w_shape, np.float32)
    gy = randn(rng, nbconv.conv2d(x, w, padding=padding, groups=groups).shape, np.float32)
    want = nbconv.conv2d_backward(gy, x, w, padding=padding, groups=groups, needs=("weight",)).weight
    got = nbconv.conv2d_backward(gy, np.asfortranarray(x), w, padding=padding, groups=groups, needs=("weight",))
    assert np.array_equal(got.weight, want)
    f64 = [a.astype(np.float64) for a in (gy, x, w)]
    np.testing.assert_allclose(want, R.conv_grads(*f64, stride=(1, 1), pads=((padding, padding),) * 2,
                                                  dilation=(1, 1), groups=groups)[1], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("split", [False, True])
def test_forwards_reuse_their_plan_with_new_data(monkeypatch, split):
    """The forward's plan (source boxes and index tables) is cached by shapes and parameters: calls with the same
    shapes and new arrays (a padded copy, or x itself and border copies), and with another thread count, each match
    the reference, and the results of one input are bitwise equal across thread counts."""
    import numba
    if split:  # force the interior box read from x and the border boxes, at these small sizes
        monkeypatch.setattr(_cpu, "_SPLIT_BORDER_FROM", 0)
        monkeypatch.setattr(_cpu, "_SPLIT_BORDER_INTERIOR", 0.0)
    saved = numba.get_num_threads()
    results = {}
    try:
        for threads in sorted({1, numba.config.NUMBA_NUM_THREADS}):
            numba.set_num_threads(threads)
            for seed in range(2):
                rng = np.random.default_rng(seed)
                x = randn(rng, (2, 9, 7, 40), np.float32)
                w = randn(rng, (3, 3, 40, 36), np.float32)
                b = randn(rng, (36,), np.float32)
                y = nbconv.conv2d(x, w, b, stride=(1, 2), padding=(2, 1), dilation=(2, 1))
                expected = R.conv_forward(x.astype(np.float64), w.astype(np.float64), b.astype(np.float64), (1, 2),
                                          ((2, 2), (1, 1)), (2, 1), 1)
                np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4)
                results.setdefault(seed, []).append(y)
    finally:
        numba.set_num_threads(saved)
    for ys in results.values():
        assert all(np.array_equal(ys[0], y) for y in ys[1:])


def test_transposed_convolutions_reuse_their_phase_plan_with_new_data():
    """The sub-pixel phase plan (index tables) is cached by shapes and parameters: calls with the same shapes and new
    arrays, and with another thread count, each match the reference (and each other's bits across threads)."""
    import numba
    rng = np.random.default_rng(5)
    saved = numba.get_num_threads()
    results = []
    try:
        for threads in sorted({1, numba.config.NUMBA_NUM_THREADS}):
            numba.set_num_threads(threads)
            for seed in range(2):
                x = randn(np.random.default_rng(seed), (2, 6, 5, 8), np.float32)
                w = randn(np.random.default_rng(seed + 10), (4, 4, 6, 8), np.float32)  # (*k, C_out, C_in)
                y = nbconv.conv_transpose2d(x, w, stride=2, padding=1)
                gy = randn(rng, y.shape, np.float32)
                # the transposed convolution is the input gradient of conv(y, w): check it through its adjoint
                np.testing.assert_allclose(np.sum(y * gy), np.sum(x * nbconv.conv2d(gy, w, stride=2, padding=1)),
                                           rtol=1e-4)
                results.append((threads, seed, y))
    finally:
        numba.set_num_threads(saved)
    for (_, seed, y), (_, seed_b, y_b) in zip(results, results[2:]):
        assert seed == seed_b and np.array_equal(y, y_b)


@pytest.mark.parametrize("nd, k, g, cg_in, cg_out", [(1, (3,), 1, 24, 3 * B + 5), (2, (3, 3), 2, 20, 2 * WB),
                                                  (2, (1, 1), 1, 40, 4 * B), (2, (1, 1), 2, 8, 2 * WB),
                                                  (3, (2, 3, 2), 1, 16, 3 * B), (2, (3, 3), 1, 12, B + 3),
                                                  (2, (1, 1), 3, 8, B + 3)])
def test_weight_gradient_bits_do_not_depend_on_its_parts(monkeypatch, nd, k, g, cg_in, cg_out):
    """The weight gradient's items cover a part of the blocks of output channels each (every block with enough
    slots and groups per thread, fewer blocks per part with more threads): 1, 3 and 64 threads' parts give the
    same bits, with grad_out read in place or packed (a partial block), for groups, with the dense tile and (from
    WB output channels per group) the wide one, and match the reference."""
    rng = np.random.default_rng(15)
    x = randn(rng, (2, *(6,) * nd, g * cg_in), np.float32)
    w = randn(rng, (*k, cg_in, g * cg_out), np.float32)
    backward = getattr(nbconv, f"conv{nd}d_backward")
    gy = randn(rng, fn("conv", nd)(x, w, padding=1, groups=g).shape, np.float32)
    parts = []
    kernel_call = _cpu.call_all
    monkeypatch.setattr(_cpu, "call_all", lambda jobs, work: parts.extend(
        j[1][4].shape[2] for j in jobs if j[0] is _cpu._weight_grad) or kernel_call(jobs, work))
    results = []
    for n_threads in (1, 3, 64):
        monkeypatch.setattr(_cpu, "threads", lambda: n_threads)
        results.append(backward(gy, x, w, padding=1, groups=g, needs=("weight", "bias")))
    assert parts[0] == 1 and parts[-1] > 1, parts
    assert all(np.array_equal(r.weight, results[0].weight) and np.array_equal(r.bias, results[0].bias)
               for r in results[1:])
    f64 = [a.astype(np.float64) for a in (gy, x, w)]
    want = R.conv_grads(*f64, stride=(1,) * nd, pads=((1, 1),) * nd, dilation=(1,) * nd, groups=g)
    np.testing.assert_allclose(results[0].weight, want[1], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(results[0].bias, want[2], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("nd, sizes, k, s, d, pads, g, cg_in, cg_out", [
    (1, (41,), (3,), (1,), (2,), ((2, 2),), 1, 12, WB + 5),
    (2, (9, 11), (3, 3), (1, 1), (1, 1), ((1, 1), (1, 1)), 2, WB, WB + 3),
    (2, (10, 9), (3, 2), (2, 1), (1, 1), ((1, 2), (0, 1)), 1, WB + 7, 2 * WB),
    (3, (4, 5, 6), (3, 3, 3), (1, 2, 1), (1, 1, 1), ((1, 1), (1, 1), (1, 1)), 1, WB, WB)])
def test_wide_tile_layers_match_the_reference(monkeypatch, nd, sizes, k, s, d, pads, g, cg_in, cg_out):
    """Layers of at least WB output channels per group run the gather kernel's wide tile (blocks of WB lanes, WP
    pixels per tile; the dense tile where WB == B): the forward (its weights packed by NumPy and by the threads) and
    the input gradient (at stride 1 a forward of grad_out, at stride 2 its phases, with WB input channels or more),
    with partial blocks of lanes and partial tiles, against the reference."""
    rng = np.random.default_rng(16)
    x = randn(rng, (3, *sizes, g * cg_in), np.float32)
    w = randn(rng, (*k, cg_in, g * cg_out), np.float32)
    b = randn(rng, (g * cg_out,), np.float32)
    opts = dict(stride=s, padding=pads, dilation=d, groups=g)
    lanes = []
    choose = _cpu._lanes
    monkeypatch.setattr(_cpu, "_lanes", lambda *args: lanes.append(choose(*args)) or lanes[-1])
    f64 = [a.astype(np.float64) for a in (x, w, b)]
    want = R.conv_forward(*f64, s, pads, d, g)
    for pack_bytes in (1 << 40, 0):  # NumPy's copy of the weights, the threads' pack
        monkeypatch.setattr(_cpu, "_PARALLEL_PACK_BYTES", pack_bytes)
        np.testing.assert_allclose(fn("conv", nd)(x, w, b, **opts), want, rtol=1e-4, atol=1e-4)
    gy = randn(rng, want.shape, np.float32)
    got = getattr(nbconv, f"conv{nd}d_backward")(gy, x, w, needs=("input",), **opts).input
    np.testing.assert_allclose(got, R.conv_grads(gy.astype(np.float64), *f64[:2], stride=s, pads=pads, dilation=d,
                                                 groups=g)[0], rtol=1e-4, atol=1e-4)
    assert lanes[:2] == [WB, WB] and (cg_in < WB or lanes[2] == WB), lanes


@pytest.mark.parametrize("nd, sizes, k, s, pads, op, g, cg_out, cg_in, jobs", [
    (2, (5, 6), 2, 2, 0, 0, 1, 64, 48, [4]),            # U-Net's up-convolution: four 1x1 phases, one job
    (2, (5, 6), 4, 2, 1, 0, 1, 40, 36, [4]),            # DCGAN's: 2x2 taps per phase, shifted source rows
    (2, (5, 6), 2, 2, 0, 0, 2, 33, 32, [4]),            # groups: phases x groups in the job's groups
    (3, (3, 4, 5), 2, 2, 0, 0, 1, 40, 36, [8]),
    (1, (7,), 6, 3, 2, 0, 1, 40, 40, [2, 1]),           # phases 0 and 1 alike, phase 2 shifted differently
    (2, (5, 6), 3, 2, 1, 1, 1, 40, 36, [1, 1, 1, 1]),  # 2 and 1 taps per phase: not merged
])
def test_transposed_phases_merged_into_one_job_match_the_reference(monkeypatch, nd, sizes, k, s, pads, op, g, cg_out,
                                                                     cg_in, jobs):
    """Sub-pixel phases whose source rows, taps and destination rows agree up to a shift run as one gather job (each
    phase's weights a group of it, with its own source and destination shifts): the transposed convolution and its
    bias against the reference and PyTorch, the input gradient of the strided convolution against the reference."""
    rng = np.random.default_rng(17)
    x = randn(rng, (2, *sizes, g * cg_in), np.float32)
    w = randn(rng, (*(k,) * nd, cg_out, g * cg_in), np.float32)  # (*k, C_out // groups, C_in)
    b = randn(rng, (g * cg_out,), np.float32)
    made = []
    merge = _cpu._merged_phases
    monkeypatch.setattr(_cpu, "_merged_phases", lambda *args: made.append(merge(*args)) or made[-1])
    monkeypatch.setattr(_cpu, "_GRID_CACHE", {})
    kw = dict(stride=s, padding=pads, output_padding=op, dilation=1, groups=g)
    y = fn("conv_transpose", nd)(x, w, b, **kw)
    assert [len(job.phase_taps) for job in made[0]] == jobs
    expected, magnitude = reference_transpose(x, w, b, kw)
    assert_close(y, expected, magnitude, np.float32, "vs reference")
    assert_close(y, torch_conv_transpose(x, w, b, **kw), magnitude, np.float32, "vs torch")
    gy = randn(rng, x.shape, np.float32)  # conv(y, w) has x's shape: its input gradient takes the same phases
    opts = dict(stride=s, padding=pads, dilation=1, groups=g)
    got = getattr(nbconv, f"conv{nd}d_backward")(gy, y, w, needs=("input",), **opts).input
    want = R.conv_grads(gy.astype(np.float64), y.astype(np.float64), w.astype(np.float64), stride=s, pads=pads,
                        dilation=1, groups=g)[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("k, pads, sizes", [
    ((3, 3, 3), 1, (4, 6, 23)),        # X3D-like: rows at h = 0 and h = H-1 read two runs of taps per frame
    ((3, 5, 3), (1, 3, 1), (3, 4, 17)),  # rows whose in-range kh taps are one in the middle: three runs
    ((3, 3, 5), (4, 2, 2), (2, 3, 19)),  # padding wider than the kernel: output rows with no tap in range (bias)
    ((2, 3, 3), (0, 1, 1), (3, 5, 16)),
])
def test_depthwise_3d_window_rows_with_several_runs_of_taps(k, pads, sizes):
    """3-D depthwise rows whose in-range taps form several runs (the border rows of each frame) take every column
    through the window tile in one pass over those taps, alone or paired with the next row: against the reference
    and PyTorch (float64 and float32), and bitwise alike with 1 and 2 threads (which pair different rows)."""
    import numba
    rng = np.random.default_rng(18)
    for dtype in (np.float64, np.float32):
        x = randn(rng, (3, *sizes, 32), dtype)
        w = randn(rng, (*k, 1, 32), dtype)
        b = randn(rng, (32,), dtype)
        kw = dict(stride=1, padding=pads, dilation=1, groups=32, padding_mode="zeros")
        saved = numba.get_num_threads()
        try:
            ys = []
            for threads in (1, 2):
                numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
                ys.append(nbconv.conv3d(x, w, b, **kw))
        finally:
            numba.set_num_threads(saved)
        assert np.array_equal(ys[0], ys[1])
        expected, magnitude = reference_forward(x, w, b, kw)
        assert_close(ys[0], expected, magnitude, dtype, "vs reference")
        assert_close(ys[0], torch_conv(x, w, b, stride=1, padding=pads, dilation=1, groups=32, mode="zeros"),
                     magnitude, dtype, "vs torch")
