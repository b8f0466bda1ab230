"""Bad input to the public convolution functions: the right exception, a message that names the
argument (and shows the values involved), and every array argument left exactly as it was.

Validation happens in Python before dispatch; the only kernels that run here are a few valid calls
next to the failing ones (float64, already compiled by test_conv.py).
"""
import re

import numpy as np
import pytest

import nbconv

F64 = np.float64


def ones(*shape, dtype=F64):
    return np.ones(shape, dtype=dtype)


def check_raises(exc, match, func, *args, **kwargs):
    """func(*args, **kwargs) raises exc matching `match`; no array argument (out included) changes."""
    arrays = [a for a in list(args) + list(kwargs.values()) if isinstance(a, np.ndarray)]
    saved = [(a, a.copy(), a.flags.writeable) for a in arrays]
    with pytest.raises(exc, match=match) as info:
        func(*args, **kwargs)
    for a, copy, writeable in saved:
        np.testing.assert_array_equal(a, copy)
        assert a.flags.writeable == writeable
    return info


# A valid call of each kind: (function, args, kwargs); every test below breaks one thing.
X1, W1 = ones(2, 7, 4), ones(3, 2, 6)             # conv1d, groups=2
X2, W2 = ones(2, 6, 5, 4), ones(3, 2, 2, 6)       # conv2d, groups=2
GY1, GY2 = ones(2, 5, 6), ones(2, 4, 4, 6)        # their outputs
WT2 = ones(3, 2, 3, 4)                            # conv_transpose2d of X2 (C_out = 3 * 2), groups=2


def test_the_valid_calls_are_valid():
    assert nbconv.conv1d(X1, W1, ones(6), groups=2).shape == GY1.shape
    assert nbconv.conv2d(X2, W2, ones(6), groups=2).shape == GY2.shape
    assert nbconv.conv2d_backward(GY2, X2, W2, groups=2).input.shape == X2.shape
    assert nbconv.conv1d_backward(GY1, X1, W1, groups=2).weight.shape == W1.shape
    assert nbconv.conv_transpose2d(X2, WT2, ones(6), groups=2).shape == (2, 8, 6, 6)


# ---------------------------------------------------------------------------------------------------
# array arguments
# ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("func, args, match", [
    (nbconv.conv2d, (ones(6, 5, 4), W2), r"x must be 4-D .*\(N, H, W, C\).*\(6, 5, 4\)"),
    (nbconv.conv2d, (ones(1, 2, 6, 5, 4), W2), r"x must be 4-D .*\(1, 2, 6, 5, 4\)"),
    (nbconv.conv2d, (X2, ones(3, 2, 6)), r"w must be 4-D .*\(KH, KW, C_in // groups, C_out\).*\(3, 2, 6\)"),
    (nbconv.conv1d, (X2, W1), r"x must be 3-D .*\(N, L, C\)"),
    (nbconv.conv1d, (X1, W2), r"w must be 3-D"),
    (nbconv.conv2d_backward, (ones(2, 4, 6), X2, W2), r"grad_out must be 4-D .*\(2, 4, 6\)"),
    (nbconv.conv1d_backward, (GY1, ones(7, 4), W1), r"x must be 3-D"),
    (nbconv.conv_transpose2d, (ones(6, 5, 4), WT2), r"x must be 4-D"),
    (nbconv.conv_transpose1d, (X1, WT2), r"w must be 3-D .*\(K, C_out // groups, C_in\)"),
])
def test_wrong_ndim(func, args, match):
    check_raises(ValueError, match, func, *args, groups=2)


@pytest.mark.parametrize("func, args, kwargs, match", [
    (nbconv.conv2d, (ones(2, 6, 5, 6), W2), dict(groups=2), r"x has 6 channels but w expects C_in // groups = 2"),
    (nbconv.conv2d, (X2, ones(3, 2, 3, 6)), dict(), r"x has 4 channels but w expects C_in // groups = 3 with groups=1"),
    (nbconv.conv1d, (X1, ones(3, 3, 6)), dict(), r"x has 4 channels but w expects C_in // groups = 3"),
    (nbconv.conv2d_backward, (GY2, X2, ones(3, 2, 4, 6)), dict(groups=2), r"x has 4 channels .*w.shape=\(3, 2, 4, 6\)"),
    (nbconv.conv_transpose2d, (X2, ones(3, 2, 3, 5)), dict(groups=2), r"x has 4 channels but w expects C_in = 5"),
])
def test_channel_mismatch(func, args, kwargs, match):
    check_raises(ValueError, match, func, *args, **kwargs)


@pytest.mark.parametrize("func, args, kwargs, match", [
    (nbconv.conv2d, (X2, ones(3, 2, 1, 6)), dict(groups=3), r"groups=3 does not divide the 4 channels of x"),
    (nbconv.conv2d, (X2, ones(3, 2, 2, 5)), dict(groups=2), r"groups=2 does not divide the 5 output channels of w"),
    (nbconv.conv1d, (X1, ones(3, 1, 6)), dict(groups=3), r"groups=3 does not divide the 4 channels of x"),
    (nbconv.conv_transpose2d, (X2, ones(3, 2, 3, 4)), dict(groups=3), r"groups=3 does not divide the 4 channels of x"),
])
def test_groups_not_dividing(func, args, kwargs, match):
    check_raises(ValueError, match, func, *args, **kwargs)


@pytest.mark.parametrize("name, value", [("stride", 0), ("stride", -1), ("stride", (1, 0)),
                                         ("dilation", 0), ("dilation", (-2, 1)), ("groups", 0), ("groups", -2)])
@pytest.mark.parametrize("func", ["conv2d", "conv2d_backward", "conv_transpose2d"])
def test_non_positive_parameters(name, value, func):
    args = {"conv2d": (X2, W2), "conv2d_backward": (GY2, X2, W2), "conv_transpose2d": (X2, WT2)}[func]
    kwargs = dict(groups=2)
    kwargs[name] = value
    check_raises(ValueError, rf"{name} must be >= 1, got {re.escape(repr(value))}", getattr(nbconv, func), *args,
                 **kwargs)


@pytest.mark.parametrize("name, value", [("stride", 1.0), ("stride", (1, 1.5)), ("dilation", "2"),
                                         ("dilation", None), ("groups", 2.0), ("groups", True), ("stride", True)])
def test_non_integer_parameters(name, value):
    kwargs = dict(groups=2)
    kwargs[name] = value
    check_raises(TypeError, rf"^{name} must ", nbconv.conv2d, X2, W2, **kwargs)


@pytest.mark.parametrize("name, value", [("stride", True), ("stride", (1, 1.0)), ("groups", 2.0),
                                         ("output_padding", (0, False)), ("dilation", np.int64(1))])
def test_remembered_transpose_parameters_still_reject_equal_non_integers(name, value):
    """The transposed convolution's validation is remembered for plain arguments (ints, strs, tuples): after a
    valid call with the equal ints, True, 1.0, 2.0 and False still raise; a NumPy int is accepted."""
    kwargs = dict(groups=2, stride=1, output_padding=0, dilation=1)
    want = nbconv.conv_transpose2d(X2, WT2, **kwargs)
    kwargs[name] = value
    if isinstance(value, np.integer):
        np.testing.assert_array_equal(nbconv.conv_transpose2d(X2, WT2, **kwargs), want)
    else:
        check_raises(TypeError, rf"^{name} must ", nbconv.conv_transpose2d, X2, WT2, **kwargs)


@pytest.mark.parametrize("change, exc, match", [
    (dict(stride=True), TypeError, "^stride must "), (dict(groups=2.0), TypeError, "^groups must "),
    (dict(w=W2.astype(np.float32)), TypeError, "w has dtype float32 but x has dtype float64"),
    (dict(b=ones(4)), ValueError, r"bias must have shape \(6,\)"),
    (dict(x=X2.astype(">f8")), TypeError, "non-native byte order"),
    (dict(padding=(1, 1.0)), ValueError, "padding entries must be ints"),
])
def test_a_remembered_forward_still_rejects_what_differs(change, exc, match):
    """A forward on NumPy arrays remembers its validation for the arrays' shapes and dtypes and plain parameters:
    after a valid call, a call that differs in a non-int parameter equal to an int, a dtype, a bias or a byte order
    still raises, and the same valid call again gives the same result (the remembered path)."""
    args = dict(x=X2, w=W2, b=ones(6), stride=1, padding=(1, 1), groups=2)
    want = nbconv.conv2d(X2, W2, ones(6), stride=1, padding=(1, 1), groups=2)
    np.testing.assert_array_equal(nbconv.conv2d(X2, W2, ones(6), stride=1, padding=(1, 1), groups=2), want)
    args.update(change)
    x, w, b = args.pop("x"), args.pop("w"), args.pop("b")
    check_raises(exc, match, nbconv.conv2d, x, w, b, **args)


@pytest.mark.parametrize("padding", [-1, (1, -1), ((0, 1), (-1, 0)), ((2, -3),)[:1] * 2])
@pytest.mark.parametrize("func", ["conv2d", "conv2d_backward", "conv_transpose2d"])
def test_negative_padding(padding, func):
    args = {"conv2d": (X2, W2), "conv2d_backward": (GY2, X2, W2), "conv_transpose2d": (X2, WT2)}[func]
    check_raises(ValueError, r"padding must be non-negative, got " + re.escape(repr(padding)),
                 getattr(nbconv, func), *args, padding=padding, groups=2)


@pytest.mark.parametrize("x_shape, w_shape, kwargs, dim", [
    ((1, 4, 9, 2), (5, 1, 2, 3), dict(), 0),                             # kernel taller than the input
    ((1, 9, 4, 2), (1, 5, 2, 3), dict(padding=((0, 0), (0, 0))), 1),
    ((1, 6, 6, 2), (3, 3, 2, 3), dict(dilation=3), 0),                  # dilated extent 7 > 6
    ((1, 6, 6, 2), (3, 3, 2, 3), dict(dilation=(1, 4), padding=(0, 1)), 1),  # extent 9 > 6 + 2
    ((1, 2, 6, 2), (3, 3, 2, 3), dict(padding="valid"), 0),
])
def test_kernel_larger_than_padded_input(x_shape, w_shape, kwargs, dim):
    x, w = ones(*x_shape), ones(*w_shape)
    match = rf"kernel of size {w_shape[dim]} .* larger than the padded input size .* spatial dim {dim} .*w.shape="
    check_raises(ValueError, match, nbconv.conv2d, x, w, **kwargs)
    gy = ones(1, 1, 1, 3)
    check_raises(ValueError, match, nbconv.conv2d_backward, gy, x, w, **kwargs)


def test_kernel_larger_than_input_1d():
    check_raises(ValueError, r"kernel of size 4 .* padded input size 3", nbconv.conv1d, ones(1, 3, 1), ones(4, 1, 1))
    nbconv.conv1d(ones(1, 3, 1), ones(4, 1, 1), padding=((1, 0),))   # just fits once padded


@pytest.mark.parametrize("mode, padding, match", [
    ("reflect", 5, r"reflect padding \(5, 5\) must be smaller than the input size 5 in spatial dim 0"),
    ("reflect", ((0, 0), (0, 6)), r"reflect padding \(0, 6\) must be smaller than the input size 6 in spatial dim 1"),
    ("reflect", "same", r"reflect padding \(\d, \d\) must be smaller than the input size"),
    ("circular", 6, r"circular padding \(6, 6\) must not exceed the input size 5 in spatial dim 0"),
    ("circular", ((0, 0), (7, 0)), r"circular padding \(7, 0\) must not exceed the input size 6 in spatial dim 1"),
])
def test_padding_mode_too_wide(mode, padding, match):
    x, w = ones(1, 5, 6, 2), ones(3, 3, 2, 2)
    kwargs = dict(padding=padding, padding_mode=mode, dilation=5 if padding == "same" else 1)
    check_raises(ValueError, match, nbconv.conv2d, x, w, **kwargs)
    check_raises(ValueError, match, nbconv.conv2d_backward, ones(1, 1, 1, 2), x, w, **kwargs)


def test_replicate_padding_of_an_empty_input():
    check_raises(ValueError, r"replicate padding needs a non-empty input, got x.shape=\(1, 0, 1\)",
                 nbconv.conv1d, ones(1, 0, 1), ones(1, 1, 1), padding=1, padding_mode="replicate")
    check_raises(ValueError, r"reflect padding \(1, 1\) must be smaller than the input size 0",
                 nbconv.conv1d, ones(1, 0, 1), ones(1, 1, 1), padding=1, padding_mode="reflect")


def test_padding_mode_limits_are_inclusive_where_torch_allows():
    """reflect: pad <= n - 1 is fine; circular: pad <= n is fine (what PyTorch accepts)."""
    assert nbconv.conv1d(ones(1, 4, 1), ones(3, 1, 1), padding=3, padding_mode="reflect").shape == (1, 8, 1)
    assert nbconv.conv1d(ones(1, 4, 1), ones(3, 1, 1), padding=4, padding_mode="circular").shape == (1, 10, 1)
    assert nbconv.conv1d(ones(1, 2, 1), ones(3, 1, 1), padding=9, padding_mode="replicate").shape == (1, 18, 1)


@pytest.mark.parametrize("padding", ["full", "SAME", "", "causal"])
def test_unknown_padding_string(padding):
    check_raises(ValueError, r"padding must be 'same', 'valid'.*" + repr(padding), nbconv.conv2d, X2, W2, groups=2,
                 padding=padding)


@pytest.mark.parametrize("padding", [None, 1.5, np.array([1, 1]), {1: 2}])
def test_padding_of_the_wrong_type(padding):
    check_raises(TypeError, r"^padding must be an int, a tuple, 'same' or 'valid'", nbconv.conv2d, X2, W2,
                 groups=2, padding=padding)


def test_transposed_padding_same_is_rejected():
    check_raises(ValueError, r"padding for a transposed convolution must be 'valid', an int or a tuple, got 'same'",
                 nbconv.conv_transpose2d, X2, WT2, groups=2, padding="same")


@pytest.mark.parametrize("mode", ["Reflect", "constant", "wrap", "edge", None, ""])
@pytest.mark.parametrize("func", ["conv2d", "conv2d_backward"])
def test_unknown_padding_mode(mode, func):
    args = (X2, W2) if func == "conv2d" else (GY2, X2, W2)
    check_raises(ValueError, r"padding_mode must be one of \('zeros', 'reflect', 'replicate', 'circular'\), got "
                 + re.escape(repr(mode)), getattr(nbconv, func), *args, groups=2, padding_mode=mode)


@pytest.mark.parametrize("func, args, name, value, match", [
    ("conv2d", (X2, W2), "stride", (1, 1, 1), r"stride must be an int or 2 ints .*\(1, 1, 1\)"),
    ("conv2d", (X2, W2), "stride", (2,), r"stride must be an int or 2 ints"),
    ("conv2d", (X2, W2), "dilation", [1, 1, 1], r"dilation must be an int or 2 ints"),
    ("conv2d", (X2, W2), "padding", (1, 2, 3), r"padding must be an int, 2 ints, 2 \(before, after\) pairs"),
    ("conv2d", (X2, W2), "padding", ((1, 2),), r"padding must be an int, 2 ints, 2 \(before, after\) pairs"),
    ("conv2d", (X2, W2), "padding", ((1, 2, 3), (1, 1)), r"padding entries must be ints or \(before, after\) pairs"),
    ("conv2d", (X2, W2), "padding", ((1,), (1, 1)), r"padding entries must be ints or \(before, after\) pairs"),
    ("conv1d", (X1, W1), "padding", (1, 2), r"padding must be an int, 1 ints, 1 \(before, after\) pairs"),
    ("conv1d", (X1, W1), "stride", (1, 1), r"stride must be an int or 1 ints"),
    ("conv1d_backward", (GY1, X1, W1), "dilation", (1, 1), r"dilation must be an int or 1 ints"),
    ("conv_transpose2d", (X2, WT2), "output_padding", (0, 0, 0), r"output_padding must be an int or 2 ints"),
    ("conv_transpose2d", (X2, WT2), "stride", (1,), r"stride must be an int or 2 ints"),
])
def test_wrong_length_tuples(func, args, name, value, match):
    check_raises(ValueError, match, getattr(nbconv, func), *args, groups=2, **{name: value})


# ---------------------------------------------------------------------------------------------------
# dtypes and non-arrays
# ---------------------------------------------------------------------------------------------------

SUPPORTED = r"nbconv supports float32 or float64"


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.bool_, np.complex64, np.complex128, np.float16,
                                   np.longdouble, object])
@pytest.mark.parametrize("which", ["x", "w", "bias"])
def test_unsupported_dtypes(dtype, which):
    if np.dtype(dtype) == np.dtype(F64):   # longdouble is float64 on some platforms
        pytest.skip("longdouble is float64 here")
    arrays = dict(x=X2, w=W2, bias=ones(6))
    arrays[which] = arrays[which].astype(dtype)
    check_raises(TypeError, rf"{which} has dtype {np.dtype(dtype)}; {SUPPORTED}", nbconv.conv2d, arrays["x"],
                 arrays["w"], arrays["bias"], groups=2)


def test_non_native_byte_order_is_rejected():
    swapped = X2.astype(np.dtype(F64).newbyteorder())
    check_raises(TypeError, rf"x has dtype {re.escape(str(swapped.dtype))} \(non-native byte order\); {SUPPORTED} "
                 r"in native byte order: pass x.astype\(float64\)", nbconv.conv2d, swapped, W2, groups=2)
    swapped32 = W2.astype(np.dtype(np.float32).newbyteorder())
    check_raises(TypeError, r"w has dtype >f4 \(non-native byte order\)|w has dtype <f4 \(non-native byte order\)",
                 nbconv.conv2d, X2.astype(np.float32), swapped32, groups=2)


@pytest.mark.parametrize("dtype", [np.int64, np.float16, np.complex128])
def test_unsupported_dtypes_backward_and_transpose(dtype):
    name = np.dtype(dtype).name
    check_raises(TypeError, rf"grad_out has dtype {name}; {SUPPORTED}", nbconv.conv2d_backward,
                 GY2.astype(dtype), X2, W2, groups=2)
    check_raises(TypeError, rf"x has dtype {name}; {SUPPORTED}", nbconv.conv1d_backward, GY1, X1.astype(dtype), W1,
                 groups=2)
    check_raises(TypeError, rf"x has dtype {name}; {SUPPORTED}", nbconv.conv_transpose2d, X2.astype(dtype), WT2,
                 groups=2)
    check_raises(TypeError, rf"w has dtype {name}; {SUPPORTED}", nbconv.conv_transpose1d, X1,
                 ones(3, 2, 4).astype(dtype), groups=2)


F32 = np.float32


@pytest.mark.parametrize("func, args, match", [
    ("conv2d", (X2, W2.astype(F32)), r"w has dtype float32 but x has dtype float64; all arrays must share one dtype"),
    ("conv2d", (X2.astype(F32), W2), r"w has dtype float64 but x has dtype float32"),
    ("conv2d", (X2, W2, ones(6, dtype=F32)), r"bias has dtype float32 but x has dtype float64"),
    ("conv2d", (X2.astype(F32), W2.astype(F32), ones(6)), r"bias has dtype float64 but x has dtype float32"),
    ("conv2d_backward", (GY2.astype(F32), X2, W2), r"x has dtype float64 but grad_out has dtype float32"),
    ("conv2d_backward", (GY2, X2, W2.astype(F32)), r"w has dtype float32 but grad_out has dtype float64"),
    ("conv_transpose2d", (X2, WT2, ones(6, dtype=F32)), r"bias has dtype float32 but x has dtype float64"),
    ("conv1d", (X1, W1.astype(F32)), r"w has dtype float32 but x has dtype float64"),
])
def test_dtype_mismatch(func, args, match):
    check_raises(TypeError, match, getattr(nbconv, func), *args, groups=2)


@pytest.mark.parametrize("groups, cg", [(1, 4), (2, 2), (4, 1)])  # dense, 2 per group, depthwise
def test_dtype_mismatch_in_the_gradient_ops(recwarn, groups, cg):
    """nbconv.ops.conv_input_grad / conv_weight_grad take parsed parameters but still check the arrays' dtypes in
    Python: a clear TypeError, and no kernel compiles (which would also discard the Numba cache)."""
    from nbconv._shapes import conv_params
    x, w = ones(2, 6, 7, 4), ones(3, 3, cg, 4)
    params = conv_params(x.shape, w.shape, stride=1, padding=1, dilation=1, groups=groups, padding_mode="zeros")
    gy = ones(2, 6, 7, 4, dtype=F32)
    check_raises(TypeError, r"x has dtype float64 but grad_out has dtype float32; all arrays must share one dtype",
                 nbconv.ops.conv_weight_grad, gy, x, w.shape, params)
    check_raises(TypeError, r"w has dtype float64 but grad_out has dtype float32", nbconv.ops.conv_input_grad, gy, w,
                 x.shape, params)
    assert not [w for w in recwarn if "discarding its Numba cache" in str(w.message)]


@pytest.mark.parametrize("func, args, which", [
    ("conv2d", (X2.tolist(), W2), "x"),
    ("conv2d", (X2, W2.tolist()), "w"),
    ("conv2d", (X2, W2, [1.0] * 6), "bias"),
    ("conv2d", (X2, W2, 1.0), "bias"),
    ("conv1d", (tuple(X1.tolist()), W1), "x"),
    ("conv2d_backward", (GY2.tolist(), X2, W2), "grad_out"),
    ("conv2d_backward", (GY2, X2.tolist(), W2), "x"),
    ("conv_transpose2d", (X2, WT2.tolist()), "w"),
    ("conv2d", (np.float64(1.0), W2), "x"),
])
def test_non_array_inputs(func, args, which):
    check_raises(TypeError, rf"^{which} must be a NumPy array or a CUDA device array, got \w+",
                 getattr(nbconv, func), *args, groups=2)


@pytest.mark.parametrize("func, args, bias, match", [
    ("conv2d", (X2, W2), ones(4), r"bias must have shape \(6,\) \(C_out\), got \(4,\)"),
    ("conv2d", (X2, W2), ones(1, 6), r"bias must have shape \(6,\) \(C_out\), got \(1, 6\)"),
    ("conv2d", (X2, W2), np.array(1.0), r"bias must have shape \(6,\) \(C_out\), got \(\)"),
    ("conv1d", (X1, W1), ones(7), r"bias must have shape \(6,\)"),
    ("conv_transpose2d", (X2, WT2), ones(3), r"bias must have shape \(6,\) \(C_out\), got \(3,\)"),
])
def test_wrong_bias_shape(func, args, bias, match):
    check_raises(ValueError, match, getattr(nbconv, func), *args, bias, groups=2)


# ---------------------------------------------------------------------------------------------------
# out=
# ---------------------------------------------------------------------------------------------------

def _bad_outs():
    shape = (2, 4, 4, 6)
    readonly = np.zeros(shape)
    readonly.setflags(write=False)
    return [
        ("shape", np.zeros((2, 4, 4, 5)), ValueError, r"out has shape \(2, 4, 4, 5\) but the result has shape \(2, 4, 4, 6\)"),
        ("shape 1-D", np.zeros(2 * 4 * 4 * 6), ValueError, r"out has shape \(192,\)"),
        ("dtype", np.zeros(shape, np.float32), TypeError, r"out has dtype float32 but x has dtype float64"),
        ("int dtype", np.zeros(shape, np.int64), TypeError, r"out has dtype int64; " + SUPPORTED),
        ("fortran", np.zeros(shape, order="F"), ValueError, r"out must be C-contiguous \(out.strides="),
        ("strided", np.zeros((2, 4, 4, 12))[..., ::2], ValueError, r"out must be C-contiguous"),
        ("negative", np.zeros(shape)[::-1], ValueError, r"out must be C-contiguous"),
        ("readonly", readonly, ValueError, r"out must be writeable"),
        ("list", np.zeros(shape).tolist(), TypeError, r"out must be a NumPy array"),
    ]


@pytest.mark.parametrize("label, out, exc, match", _bad_outs(), ids=[c[0] for c in _bad_outs()])
def test_bad_out(label, out, exc, match):
    if isinstance(out, np.ndarray) and out.flags.writeable:
        out[...] = 7.0           # sentinel: a failed call must not write to out
    check_raises(exc, match, nbconv.conv2d, X2, W2, groups=2, out=out)


def test_bad_out_transpose():
    check_raises(ValueError, r"out has shape \(2, 8, 6, 5\) but the result has shape \(2, 8, 6, 6\)",
                 nbconv.conv_transpose2d, X2, WT2, groups=2, out=np.zeros((2, 8, 6, 5)))
    check_raises(ValueError, r"out must be C-contiguous", nbconv.conv_transpose2d, X2, WT2, groups=2,
                 out=np.zeros((2, 8, 6, 6), order="F"))
    check_raises(TypeError, r"out has dtype float32", nbconv.conv_transpose1d, X1, ones(3, 3, 4), groups=2,
                 out=np.zeros((2, 9, 6), np.float32))


def test_out_overlapping_an_input():
    x = np.arange(2 * 5 * 5 * 4, dtype=F64).reshape(2, 5, 5, 4)
    w = np.eye(4).reshape(1, 1, 4, 4)
    check_raises(ValueError, r"out overlaps x", nbconv.conv2d, x, w, out=x)
    buf = np.zeros(2 * 5 * 5 * 4)
    out = buf.reshape(2, 5, 5, 4)
    check_raises(ValueError, r"out overlaps bias", nbconv.conv2d, x, w, buf[:4], out=out)
    check_raises(ValueError, r"out overlaps w", nbconv.conv2d, x, buf[:16].reshape(1, 1, 4, 4), out=out)
    xt = np.arange(1 * 3 * 4, dtype=F64).reshape(1, 3, 4)
    check_raises(ValueError, r"out overlaps x", nbconv.conv_transpose1d, xt, ones(1, 4, 4), out=xt)


# ---------------------------------------------------------------------------------------------------
# backward-specific
# ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("func, args, bad_shape, expected", [
    ("conv2d_backward", (X2, W2), (2, 4, 5, 6), (2, 4, 4, 6)),
    ("conv2d_backward", (X2, W2), (1, 4, 4, 6), (2, 4, 4, 6)),
    ("conv2d_backward", (X2, W2), (2, 4, 4, 3), (2, 4, 4, 6)),
    ("conv1d_backward", (X1, W1), (2, 7, 6), (2, 5, 6)),
])
def test_wrong_grad_out_shape(func, args, bad_shape, expected):
    match = (rf"grad_out has shape {re.escape(str(bad_shape))} but the convolution's output has shape "
             rf"{re.escape(str(expected))}")
    check_raises(ValueError, match, getattr(nbconv, func), ones(*bad_shape), *args, groups=2)


def test_wrong_grad_out_shape_with_stride_and_padding():
    check_raises(ValueError, r"grad_out has shape \(2, 4, 4, 6\) but the convolution's output has shape \(2, 3, 3, 6\)",
                 nbconv.conv2d_backward, GY2, X2, W2, groups=2, stride=2, padding=1)


@pytest.mark.parametrize("needs, exc, match", [
    (("input", "grad"), ValueError, r"needs may only contain \('input', 'weight', 'bias'\), got \('input', 'grad'\)"),
    ("inputs", ValueError, r"needs may only contain"),
    (("Input",), ValueError, r"needs may only contain"),
    ((None,), ValueError, r"needs may only contain"),
    (None, TypeError, r"needs must be a tuple of names from"),
    (5, TypeError, r"needs must be a tuple of names from .* got 5"),
])
def test_bad_needs(needs, exc, match):
    check_raises(exc, match, nbconv.conv2d_backward, GY2, X2, W2, groups=2, needs=needs)
    check_raises(exc, match, nbconv.conv1d_backward, GY1, X1, W1, groups=2, needs=needs)


# ---------------------------------------------------------------------------------------------------
# transposed-specific
# ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, match", [
    (dict(output_padding=1), r"output_padding \(1, 1\) must be smaller than max\(stride, dilation\) = 1 in spatial dim 0"),
    (dict(output_padding=2, stride=2), r"output_padding \(2, 2\) must be smaller than max\(stride, dilation\) = 2"),
    (dict(output_padding=(0, 2), stride=(3, 2)), r"output_padding \(0, 2\) .* = 2 in spatial dim 1"),
    (dict(output_padding=(2, 0), dilation=(2, 3)), r"output_padding \(2, 0\) .* = 2 in spatial dim 0"),
])
def test_output_padding_too_large(kwargs, match):
    check_raises(ValueError, match, nbconv.conv_transpose2d, X2, WT2, groups=2, **kwargs)


def test_output_padding_limits():
    # the largest allowed output_padding per dim works: max(stride, dilation) - 1
    y = nbconv.conv_transpose2d(X2, WT2, groups=2, stride=(3, 1), dilation=(1, 2), output_padding=(2, 1))
    # (in - 1) * stride + dilation * (k - 1) + output_padding + 1 per dim
    assert y.shape == (2, (6 - 1) * 3 + 1 * (3 - 1) + 2 + 1, (5 - 1) * 1 + 2 * (2 - 1) + 1 + 1, 6)
    check_raises(ValueError, r"output_padding must be >= 0, got -1", nbconv.conv_transpose2d, X2, WT2, groups=2,
                 stride=2, output_padding=-1)
    check_raises(ValueError, r"output_padding must be an int or 1 ints", nbconv.conv_transpose1d, X1,
                 ones(3, 3, 4), groups=2, output_padding=(1, 1))


def test_transposed_output_would_be_empty():
    check_raises(ValueError, r"transposed convolution output size would be -2 in spatial dim 0 .*padding=\(5, 5\)",
                 nbconv.conv_transpose2d, X2, WT2, groups=2, padding=(5, 0))
    check_raises(ValueError, r"transposed convolution output size would be 0 in spatial dim 0",
                 nbconv.conv_transpose1d, ones(1, 1, 2), ones(1, 1, 2), padding=((1, 0),))


def test_transposed_takes_no_padding_mode():
    with pytest.raises(TypeError, match="padding_mode"):
        nbconv.conv_transpose2d(X2, WT2, groups=2, padding_mode="zeros")


# ---------------------------------------------------------------------------------------------------
# empty channels and kernels
# ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("x, w, match", [
    (ones(2, 5, 5, 0), ones(3, 3, 0, 6), r"channel counts must be positive, got x channels 0"),
    (X2, ones(3, 3, 4, 0), r"channel counts must be positive.*w.shape=\(3, 3, 4, 0\)"),
    (X2, ones(0, 3, 4, 6), r"kernel sizes must be positive, got w.shape=\(0, 3, 4, 6\)"),
    (X1, ones(0, 4, 6), r"kernel sizes must be positive"),
])
def test_empty_channels_or_kernel(x, w, match):
    func = nbconv.conv2d if x.ndim == 4 else nbconv.conv1d
    check_raises(ValueError, match, func, x, w)


def test_nothing_is_written_to_out_before_a_late_error():
    """A call that fails validation leaves a valid `out` as it was."""
    out = np.full(GY2.shape, 3.0)
    check_raises(ValueError, r"bias must have shape", nbconv.conv2d, X2, W2, ones(5), groups=2, out=out)
    assert (out == 3.0).all()


# ---------------------------------------------------------------------------------------------------
# 3-D: the same battery for conv3d, conv3d_backward and conv_transpose3d
# ---------------------------------------------------------------------------------------------------

X3, W3 = ones(2, 5, 4, 6, 4), ones(2, 3, 2, 2, 6)    # conv3d, groups=2
GY3 = ones(2, 4, 2, 5, 6)                            # its output
WT3 = ones(2, 2, 3, 3, 4)                            # conv_transpose3d of X3 (C_out = 3 * 2), groups=2
YT3 = (2, 6, 5, 8, 6)                                # its output shape
CALLS_3D = {"conv3d": (X3, W3), "conv3d_backward": (GY3, X3, W3), "conv_transpose3d": (X3, WT3)}


def test_the_valid_3d_calls_are_valid():
    assert nbconv.conv3d(X3, W3, ones(6), groups=2).shape == GY3.shape
    grads = nbconv.conv3d_backward(GY3, X3, W3, groups=2)
    assert (grads.input.shape, grads.weight.shape, grads.bias.shape) == (X3.shape, W3.shape, (6,))
    assert nbconv.conv_transpose3d(X3, WT3, ones(6), groups=2).shape == YT3


@pytest.mark.parametrize("func, args, match", [
    (nbconv.conv3d, (ones(2, 5, 4, 4), W3), r"x must be 5-D .*\(N, D, H, W, C\).*\(2, 5, 4, 4\)"),
    (nbconv.conv3d, (ones(1, 2, 5, 4, 6, 4), W3), r"x must be 5-D .*\(1, 2, 5, 4, 6, 4\)"),
    (nbconv.conv3d, (X3, ones(3, 2, 2, 6)), r"w must be 5-D .*\(KD, KH, KW, C_in // groups, C_out\).*\(3, 2, 2, 6\)"),
    (nbconv.conv3d, (X3, ones(1, 2, 3, 2, 2, 6)), r"w must be 5-D .*\(1, 2, 3, 2, 2, 6\)"),
    (nbconv.conv2d, (X3, W2), r"x must be 4-D .*\(2, 5, 4, 6, 4\)"),
    (nbconv.conv2d, (X2, W3), r"w must be 4-D .*\(2, 3, 2, 2, 6\)"),
    (nbconv.conv3d_backward, (ones(2, 4, 2, 6), X3, W3), r"grad_out must be 5-D .*\(2, 4, 2, 6\)"),
    (nbconv.conv3d_backward, (GY3, ones(2, 5, 4, 4), W3), r"x must be 5-D .*\(2, 5, 4, 4\)"),
    (nbconv.conv3d_backward, (GY3, X3, ones(2, 3, 2, 6)), r"w must be 5-D"),
    (nbconv.conv_transpose3d, (ones(2, 5, 4, 4), WT3), r"x must be 5-D .*\(N, D, H, W, C\)"),
    (nbconv.conv_transpose3d, (X3, ones(2, 3, 3, 4)), r"w must be 5-D .*\(KD, KH, KW, C_out // groups, C_in\)"),
])
def test_wrong_ndim_3d(func, args, match):
    check_raises(ValueError, match, func, *args, groups=2)


@pytest.mark.parametrize("func, args, kwargs, match", [
    (nbconv.conv3d, (ones(2, 5, 4, 6, 6), W3), dict(groups=2), r"x has 6 channels but w expects C_in // groups = 2"),
    (nbconv.conv3d, (X3, ones(2, 3, 2, 3, 6)), dict(),
     r"x has 4 channels but w expects C_in // groups = 3 with groups=1"),
    (nbconv.conv3d_backward, (GY3, X3, ones(2, 3, 2, 4, 6)), dict(groups=2),
     r"x has 4 channels .*w.shape=\(2, 3, 2, 4, 6\)"),
    (nbconv.conv_transpose3d, (X3, ones(2, 2, 3, 3, 5)), dict(groups=2), r"x has 4 channels but w expects C_in = 5"),
])
def test_channel_mismatch_3d(func, args, kwargs, match):
    check_raises(ValueError, match, func, *args, **kwargs)


@pytest.mark.parametrize("func, args, kwargs, match", [
    (nbconv.conv3d, (X3, ones(2, 3, 2, 1, 6)), dict(groups=3), r"groups=3 does not divide the 4 channels of x"),
    (nbconv.conv3d, (X3, ones(2, 3, 2, 2, 5)), dict(groups=2), r"groups=2 does not divide the 5 output channels of w"),
    (nbconv.conv3d_backward, (ones(2, 4, 2, 5, 5), X3, ones(2, 3, 2, 2, 5)), dict(groups=2),
     r"groups=2 does not divide the 5 output channels of w"),
    (nbconv.conv_transpose3d, (X3, ones(2, 2, 3, 3, 4)), dict(groups=3),
     r"groups=3 does not divide the 4 channels of x"),
])
def test_groups_not_dividing_3d(func, args, kwargs, match):
    check_raises(ValueError, match, func, *args, **kwargs)


@pytest.mark.parametrize("name, value", [("stride", 0), ("stride", (1, 1, 0)), ("dilation", -1),
                                         ("dilation", (1, -2, 1)), ("groups", 0)])
@pytest.mark.parametrize("func", list(CALLS_3D))
def test_non_positive_parameters_3d(name, value, func):
    kwargs = dict(groups=2)
    kwargs[name] = value
    check_raises(ValueError, rf"{name} must be >= 1, got {re.escape(repr(value))}", getattr(nbconv, func),
                 *CALLS_3D[func], **kwargs)


@pytest.mark.parametrize("name, value", [("stride", 1.0), ("stride", (1, 1, 1.5)), ("dilation", "2"),
                                         ("groups", 2.0), ("dilation", (1, True, 1))])
@pytest.mark.parametrize("func", list(CALLS_3D))
def test_non_integer_parameters_3d(name, value, func):
    kwargs = dict(groups=2)
    kwargs[name] = value
    check_raises(TypeError, rf"^{name} must ", getattr(nbconv, func), *CALLS_3D[func], **kwargs)


@pytest.mark.parametrize("padding", [-1, (1, -1, 0), ((0, 1), (0, 0), (-1, 0))])
@pytest.mark.parametrize("func", list(CALLS_3D))
def test_negative_padding_3d(padding, func):
    check_raises(ValueError, r"padding must be non-negative, got " + re.escape(repr(padding)),
                 getattr(nbconv, func), *CALLS_3D[func], padding=padding, groups=2)


@pytest.mark.parametrize("func, name, value, match", [
    ("conv3d", "stride", (1, 1), r"stride must be an int or 3 ints .*\(1, 1\)"),
    ("conv3d", "stride", (1, 1, 1, 1), r"stride must be an int or 3 ints"),
    ("conv3d", "dilation", [1, 1], r"dilation must be an int or 3 ints"),
    ("conv3d", "padding", (1, 2), r"padding must be an int, 3 ints, 3 \(before, after\) pairs.*\(1, 2\)"),
    ("conv3d", "padding", (1, 2, 3, 4), r"padding must be an int, 3 ints, 3 \(before, after\) pairs"),
    ("conv3d", "padding", ((1, 2), (1, 2)), r"padding must be an int, 3 ints, 3 \(before, after\) pairs"),
    ("conv3d", "padding", ((1, 2, 3), (1, 1), (0, 0)), r"padding entries must be ints or \(before, after\) pairs"),
    ("conv3d", "padding", ((1,), (1, 1), (0, 0)), r"padding entries must be ints or \(before, after\) pairs"),
    ("conv3d_backward", "dilation", (1, 1), r"dilation must be an int or 3 ints"),
    ("conv3d_backward", "padding", ((0, 0),), r"padding must be an int, 3 ints, 3 \(before, after\) pairs"),
    ("conv_transpose3d", "output_padding", (0, 0), r"output_padding must be an int or 3 ints"),
    ("conv_transpose3d", "stride", (1, 1), r"stride must be an int or 3 ints"),
    ("conv_transpose3d", "padding", (1, 1), r"padding must be an int, 3 ints, 3 \(before, after\) pairs"),
])
def test_wrong_length_tuples_3d(func, name, value, match):
    check_raises(ValueError, match, getattr(nbconv, func), *CALLS_3D[func], groups=2, **{name: value})


@pytest.mark.parametrize("padding", ["full", "SAME", "causal"])
@pytest.mark.parametrize("func", ["conv3d", "conv3d_backward"])
def test_unknown_padding_string_3d(padding, func):
    check_raises(ValueError, r"padding must be 'same', 'valid'.*" + repr(padding), getattr(nbconv, func),
                 *CALLS_3D[func], groups=2, padding=padding)


@pytest.mark.parametrize("padding", [None, 1.5, np.array([1, 1, 1])])
def test_padding_of_the_wrong_type_3d(padding):
    check_raises(TypeError, r"^padding must be an int, a tuple, 'same' or 'valid'", nbconv.conv3d, X3, W3,
                 groups=2, padding=padding)


def test_transposed_3d_rejects_same_and_padding_mode():
    check_raises(ValueError, r"padding for a transposed convolution must be 'valid', an int or a tuple, got 'same'",
                 nbconv.conv_transpose3d, X3, WT3, groups=2, padding="same")
    with pytest.raises(TypeError, match="padding_mode"):
        nbconv.conv_transpose3d(X3, WT3, groups=2, padding_mode="zeros")


@pytest.mark.parametrize("mode", ["Reflect", "constant", "wrap", None])
@pytest.mark.parametrize("func", ["conv3d", "conv3d_backward"])
def test_unknown_padding_mode_3d(mode, func):
    check_raises(ValueError, r"padding_mode must be one of \('zeros', 'reflect', 'replicate', 'circular'\), got "
                 + re.escape(repr(mode)), getattr(nbconv, func), *CALLS_3D[func], groups=2, padding_mode=mode)


@pytest.mark.parametrize("mode, padding, match", [
    ("reflect", 4, r"reflect padding \(4, 4\) must be smaller than the input size 4 in spatial dim 0 "
                   r".*x.shape=\(1, 4, 5, 6, 2\)"),
    ("reflect", ((0, 0), (5, 0), (0, 0)),
     r"reflect padding \(5, 0\) must be smaller than the input size 5 in spatial dim 1"),
    ("reflect", ((0, 0), (0, 0), (1, 6)),
     r"reflect padding \(1, 6\) must be smaller than the input size 6 in spatial dim 2"),
    ("reflect", "same", r"reflect padding \(\d, \d\) must be smaller than the input size 4 in spatial dim 0"),
    ("circular", 5, r"circular padding \(5, 5\) must not exceed the input size 4 in spatial dim 0"),
    ("circular", ((0, 0), (0, 0), (0, 7)),
     r"circular padding \(0, 7\) must not exceed the input size 6 in spatial dim 2"),
])
def test_padding_mode_too_wide_3d(mode, padding, match):
    x, w = ones(1, 4, 5, 6, 2), ones(3, 3, 3, 2, 2)
    kwargs = dict(padding=padding, padding_mode=mode, dilation=(5, 1, 1) if padding == "same" else 1)
    check_raises(ValueError, match, nbconv.conv3d, x, w, **kwargs)
    check_raises(ValueError, match, nbconv.conv3d_backward, ones(1, 1, 1, 1, 2), x, w, **kwargs)


def test_padding_mode_limits_3d():
    """reflect: pad == size - 1 is accepted; circular: pad == size; replicate: any width (as PyTorch)."""
    x, w = ones(1, 3, 4, 2, 1), ones(1, 1, 1, 1, 1)
    assert nbconv.conv3d(x, w, padding=((2, 2), (3, 0), (0, 1)), padding_mode="reflect").shape == (1, 7, 7, 3, 1)
    assert nbconv.conv3d(x, w, padding=((3, 3), (0, 4), (2, 2)), padding_mode="circular").shape == (1, 9, 8, 6, 1)
    assert nbconv.conv3d(x, w, padding=9, padding_mode="replicate").shape == (1, 21, 22, 20, 1)
    check_raises(ValueError, r"replicate padding needs a non-empty input, got x.shape=\(1, 2, 0, 2, 1\)",
                 nbconv.conv3d, ones(1, 2, 0, 2, 1), ones(1, 1, 1, 1, 1), padding=1, padding_mode="replicate")


@pytest.mark.parametrize("x_shape, w_shape, kwargs, dim", [
    ((1, 4, 5, 6, 2), (5, 1, 1, 2, 3), dict(), 0),                        # kernel deeper than the input
    ((1, 4, 5, 6, 2), (1, 1, 7, 2, 3), dict(padding=((0, 0), (0, 0), (0, 0))), 2),
    ((1, 4, 5, 6, 2), (1, 3, 1, 2, 3), dict(dilation=(1, 3, 1)), 1),      # dilated extent 7 > 5
    ((1, 4, 5, 6, 2), (2, 2, 3, 2, 3), dict(dilation=(1, 1, 4), padding=(0, 0, 1)), 2),   # extent 9 > 6 + 2
    ((1, 4, 2, 6, 2), (1, 3, 1, 2, 3), dict(padding="valid"), 1),
])
def test_kernel_larger_than_padded_input_3d(x_shape, w_shape, kwargs, dim):
    x, w = ones(*x_shape), ones(*w_shape)
    match = rf"kernel of size {w_shape[dim]} .* larger than the padded input size .* spatial dim {dim} .*w.shape="
    check_raises(ValueError, match, nbconv.conv3d, x, w, **kwargs)
    check_raises(ValueError, match, nbconv.conv3d_backward, ones(1, 1, 1, 1, 3), x, w, **kwargs)


UNSUPPORTED_3D = [np.int32, np.int64, np.bool_, np.complex128, object]   # float16 is a storage type per the API


@pytest.mark.parametrize("dtype", UNSUPPORTED_3D)
@pytest.mark.parametrize("which", ["x", "w", "bias"])
def test_unsupported_dtypes_3d(dtype, which):
    arrays = dict(x=X3, w=W3, bias=ones(6))
    arrays[which] = arrays[which].astype(dtype)
    check_raises(TypeError, rf"{which} has dtype {np.dtype(dtype)}; ", nbconv.conv3d, arrays["x"], arrays["w"],
                 arrays["bias"], groups=2)


@pytest.mark.parametrize("dtype", [np.int64, np.complex128])
def test_unsupported_dtypes_backward_and_transpose_3d(dtype):
    name = np.dtype(dtype).name
    check_raises(TypeError, rf"grad_out has dtype {name}; ", nbconv.conv3d_backward, GY3.astype(dtype), X3, W3,
                 groups=2)
    check_raises(TypeError, rf"x has dtype {name}; ", nbconv.conv3d_backward, GY3, X3.astype(dtype), W3, groups=2)
    check_raises(TypeError, rf"w has dtype {name}; ", nbconv.conv3d_backward, GY3, X3, W3.astype(dtype), groups=2)
    check_raises(TypeError, rf"x has dtype {name}; ", nbconv.conv_transpose3d, X3.astype(dtype), WT3, groups=2)
    check_raises(TypeError, rf"w has dtype {name}; ", nbconv.conv_transpose3d, X3, WT3.astype(dtype), groups=2)


@pytest.mark.parametrize("func, args, match", [
    ("conv3d", (X3, W3.astype(F32)), r"w has dtype float32 but x has dtype float64; all arrays must share one dtype"),
    ("conv3d", (X3.astype(F32), W3), r"w has dtype float64 but x has dtype float32"),
    ("conv3d", (X3, W3, ones(6, dtype=F32)), r"bias has dtype float32 but x has dtype float64"),
    ("conv3d_backward", (GY3.astype(F32), X3, W3), r"x has dtype float64 but grad_out has dtype float32"),
    ("conv3d_backward", (GY3, X3, W3.astype(F32)), r"w has dtype float32 but grad_out has dtype float64"),
    ("conv_transpose3d", (X3, WT3.astype(F32)), r"w has dtype float32 but x has dtype float64"),
    ("conv_transpose3d", (X3, WT3, ones(6, dtype=F32)), r"bias has dtype float32 but x has dtype float64"),
])
def test_dtype_mismatch_3d(func, args, match):
    check_raises(TypeError, match, getattr(nbconv, func), *args, groups=2)


@pytest.mark.parametrize("func, args, which", [
    ("conv3d", (X3.tolist(), W3), "x"),
    ("conv3d", (X3, W3.tolist()), "w"),
    ("conv3d", (X3, W3, [1.0] * 6), "bias"),
    ("conv3d_backward", (GY3.tolist(), X3, W3), "grad_out"),
    ("conv_transpose3d", (X3, WT3.tolist()), "w"),
])
def test_non_array_inputs_3d(func, args, which):
    check_raises(TypeError, rf"^{which} must be a NumPy array or a CUDA device array, got \w+",
                 getattr(nbconv, func), *args, groups=2)


@pytest.mark.parametrize("func, args, bias, match", [
    ("conv3d", (X3, W3), ones(4), r"bias must have shape \(6,\) \(C_out\), got \(4,\)"),
    ("conv3d", (X3, W3), ones(1, 6), r"bias must have shape \(6,\) \(C_out\), got \(1, 6\)"),
    ("conv_transpose3d", (X3, WT3), ones(3), r"bias must have shape \(6,\) \(C_out\), got \(3,\)"),
])
def test_wrong_bias_shape_3d(func, args, bias, match):
    check_raises(ValueError, match, getattr(nbconv, func), *args, bias, groups=2)


def _bad_outs_3d():
    shape = GY3.shape
    readonly = np.zeros(shape)
    readonly.setflags(write=False)
    return [
        ("shape", np.zeros((2, 4, 2, 5, 5)), ValueError,
         r"out has shape \(2, 4, 2, 5, 5\) but the result has shape \(2, 4, 2, 5, 6\)"),
        ("shape 4-D", np.zeros((2, 8, 5, 6)), ValueError, r"out has shape \(2, 8, 5, 6\)"),
        ("dtype", np.zeros(shape, np.float32), TypeError, r"out has dtype float32 but x has dtype float64"),
        ("int dtype", np.zeros(shape, np.int64), TypeError, r"out has dtype int64; "),
        ("fortran", np.zeros(shape, order="F"), ValueError, r"out must be C-contiguous \(out.strides="),
        ("strided", np.zeros((2, 4, 2, 5, 12))[..., ::2], ValueError, r"out must be C-contiguous"),
        ("negative", np.zeros(shape)[:, ::-1], ValueError, r"out must be C-contiguous"),
        ("readonly", readonly, ValueError, r"out must be writeable"),
        ("list", np.zeros(shape).tolist(), TypeError, r"out must be a NumPy array"),
    ]


@pytest.mark.parametrize("label, out, exc, match", _bad_outs_3d(), ids=[c[0] for c in _bad_outs_3d()])
def test_bad_out_3d(label, out, exc, match):
    if isinstance(out, np.ndarray) and out.flags.writeable:
        out[...] = 7.0           # sentinel: a failed call must not write to out
    check_raises(exc, match, nbconv.conv3d, X3, W3, groups=2, out=out)


def test_bad_out_transpose_3d():
    check_raises(ValueError, r"out has shape \(2, 6, 5, 8, 5\) but the result has shape \(2, 6, 5, 8, 6\)",
                 nbconv.conv_transpose3d, X3, WT3, groups=2, out=np.zeros((2, 6, 5, 8, 5)))
    check_raises(ValueError, r"out must be C-contiguous", nbconv.conv_transpose3d, X3, WT3, groups=2,
                 out=np.zeros(YT3, order="F"))
    check_raises(TypeError, r"out has dtype float32", nbconv.conv_transpose3d, X3, WT3, groups=2,
                 out=np.zeros(YT3, np.float32))


def test_out_overlapping_an_input_3d():
    x = np.arange(2 * 3 * 4 * 5 * 4, dtype=F64).reshape(2, 3, 4, 5, 4)
    w = np.eye(4).reshape(1, 1, 1, 4, 4)
    check_raises(ValueError, r"out overlaps x", nbconv.conv3d, x, w, out=x)
    buf = np.zeros(x.size)
    out = buf.reshape(x.shape)
    check_raises(ValueError, r"out overlaps bias", nbconv.conv3d, x, w, buf[:4], out=out)
    check_raises(ValueError, r"out overlaps w", nbconv.conv3d, x, buf[:16].reshape(1, 1, 1, 4, 4), out=out)
    check_raises(ValueError, r"out overlaps x", nbconv.conv_transpose3d, x, w, out=x)


@pytest.mark.parametrize("bad_shape, expected", [
    ((2, 4, 2, 6, 6), (2, 4, 2, 5, 6)),
    ((1, 4, 2, 5, 6), (2, 4, 2, 5, 6)),
    ((2, 4, 2, 5, 3), (2, 4, 2, 5, 6)),
    ((2, 2, 4, 5, 6), (2, 4, 2, 5, 6)),
])
def test_wrong_grad_out_shape_3d(bad_shape, expected):
    match = (rf"grad_out has shape {re.escape(str(bad_shape))} but the convolution's output has shape "
             rf"{re.escape(str(expected))}")
    check_raises(ValueError, match, nbconv.conv3d_backward, ones(*bad_shape), X3, W3, groups=2)
    check_raises(ValueError, r"grad_out has shape \(2, 4, 2, 5, 6\) but the convolution's output has shape "
                 r"\(2, 3, 2, 4, 6\)", nbconv.conv3d_backward, GY3, X3, W3, groups=2, stride=2, padding=1)


@pytest.mark.parametrize("needs, exc, match", [
    (("input", "grad"), ValueError, r"needs may only contain \('input', 'weight', 'bias'\), got \('input', 'grad'\)"),
    ("inputs", ValueError, r"needs may only contain"),
    ((None,), ValueError, r"needs may only contain"),
    (None, TypeError, r"needs must be a tuple of names from"),
    (5, TypeError, r"needs must be a tuple of names from .* got 5"),
])
def test_bad_needs_3d(needs, exc, match):
    check_raises(exc, match, nbconv.conv3d_backward, GY3, X3, W3, groups=2, needs=needs)


@pytest.mark.parametrize("kwargs, match", [
    (dict(output_padding=1), r"output_padding \(1, 1, 1\) must be smaller than max\(stride, dilation\) = 1 "
                             r"in spatial dim 0"),
    (dict(output_padding=2, stride=2), r"output_padding \(2, 2, 2\) must be smaller than max\(stride, dilation\) = 2"),
    (dict(output_padding=(0, 0, 2), stride=(3, 3, 2)), r"output_padding \(0, 0, 2\) .* = 2 in spatial dim 2"),
    (dict(output_padding=(0, 2, 0), dilation=(1, 2, 3)), r"output_padding \(0, 2, 0\) .* = 2 in spatial dim 1"),
])
def test_output_padding_too_large_3d(kwargs, match):
    check_raises(ValueError, match, nbconv.conv_transpose3d, X3, WT3, groups=2, **kwargs)


def test_output_padding_limits_3d():
    y = nbconv.conv_transpose3d(X3, WT3, groups=2, stride=(3, 1, 2), dilation=(1, 2, 1), output_padding=(2, 1, 1))
    # (in - 1) * stride + dilation * (k - 1) + output_padding + 1 per dim
    assert y.shape == (2, (5 - 1) * 3 + 1 * (2 - 1) + 2 + 1, (4 - 1) * 1 + 2 * (2 - 1) + 1 + 1,
                       (6 - 1) * 2 + 1 * (3 - 1) + 1 + 1, 6)
    check_raises(ValueError, r"output_padding must be >= 0, got -1", nbconv.conv_transpose3d, X3, WT3, groups=2,
                 stride=2, output_padding=-1)


def test_transposed_output_would_be_empty_3d():
    check_raises(ValueError, r"transposed convolution output size would be -2 in spatial dim 2 .*padding=\(5, 5\)",
                 nbconv.conv_transpose3d, X3, WT3, groups=2, padding=(0, 0, 5))
    check_raises(ValueError, r"transposed convolution output size would be 0 in spatial dim 1",
                 nbconv.conv_transpose3d, ones(1, 1, 1, 1, 2), ones(1, 1, 1, 1, 2), padding=((0, 0), (1, 0), (0, 0)))


@pytest.mark.parametrize("x, w, match", [
    (ones(2, 3, 5, 5, 0), ones(1, 3, 3, 0, 6), r"channel counts must be positive, got x channels 0"),
    (X3, ones(1, 3, 3, 4, 0), r"channel counts must be positive.*w.shape=\(1, 3, 3, 4, 0\)"),
    (X3, ones(1, 0, 3, 4, 6), r"kernel sizes must be positive, got w.shape=\(1, 0, 3, 4, 6\)"),
])
def test_empty_channels_or_kernel_3d(x, w, match):
    check_raises(ValueError, match, nbconv.conv3d, x, w)


def test_nothing_is_written_to_out_before_a_late_error_3d():
    out = np.full(GY3.shape, 3.0)
    check_raises(ValueError, r"bias must have shape", nbconv.conv3d, X3, W3, ones(5), groups=2, out=out)
    assert (out == 3.0).all()
