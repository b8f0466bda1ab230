"""Reliability of the public convolution API (issue 7): a bad-input battery, edge cases that must
work, concurrent calls from Python threads, and bitwise determinism.

The battery applies every class of bad input to every function it concerns (conv1d/conv2d, their
backward functions, conv_transpose1d/2d, and the tape's wrappers called with Tensors) and checks the
exception's type, that its message names the argument and quotes the values, that no kernel ran, and
that no input (nor `out`) was modified. Results of the edge cases are checked against the naive
reference in tests/reference.py.
"""
import os
import subprocess
import sys
import textwrap
import threading

import numba
import numpy as np
import pytest

import nbconv
from nbconv import _cpu, _pool
from nbconv._jit import chunk_items

try:
    from . import reference as R
except ImportError:   # tests/ is not a package: pytest puts it on sys.path
    import reference as R

SPATIAL = {1: (7,), 2: (5, 6)}
_BASE = {"conv1d": ("fwd", 1), "conv2d": ("fwd", 2), "conv1d_backward": ("bwd", 1), "conv2d_backward": ("bwd", 2),
         "conv_transpose1d": ("tr", 1), "conv_transpose2d": ("tr", 2)}
FUNCS = {  # name -> (kind, nd, path): arrays as given, as tape Tensors, or as CUDA device arrays
    **{name: (kind, nd, "host") for name, (kind, nd) in _BASE.items()},
    **{f"tape.{name}": (kind, nd, "tape") for name, (kind, nd) in _BASE.items() if kind != "bwd"},
    **{f"cuda.{name}": (kind, nd, "cuda") for name, (kind, nd) in _BASE.items()},
}
# bad inputs with no device-array form: memory relations and flags of host views, dtypes numba
# cannot put on a device (the device path's overlap and contiguity checks are in tests/test_cuda.py)
NOT_ON_DEVICE = {"out_overlapping_x", "out_is_bias_memory", "out_strided_view", "out_read_only", "x_object",
                 "x_float128", "x_longdouble"}


# ---------------------------------------------------------------------------------------------------
# the valid call every bad input is derived from
# ---------------------------------------------------------------------------------------------------

class Call:
    """A call of one public function: its arrays (x, w, bias, grad_out, out) and keyword parameters."""

    def __init__(self, name):
        self.name = name
        self.kind, self.nd, self.path = FUNCS[name]
        self.tape = self.path == "tape"
        nd, rng = self.nd, np.random.default_rng(7)
        sp = SPATIAL[nd]
        self.arrays = dict(x=rng.standard_normal((2, *sp, 4)), bias=rng.standard_normal(6))
        if self.kind == "tr":   # w is (*k, C_out // groups, C_in); output 2 * input per spatial dim
            self.arrays["w"] = rng.standard_normal((3,) * nd + (3, 4))
            self.kw = dict(stride=2, padding=1, output_padding=1, dilation=1, groups=2)
            self.y_shape = (2, *(2 * n for n in sp), 6)
        else:                   # "same"-sized output
            self.arrays["w"] = rng.standard_normal((3,) * nd + (2, 6))
            self.kw = dict(stride=1, padding=1, dilation=1, groups=2, padding_mode="zeros")
            self.y_shape = (2, *sp, 6)
        if self.kind == "bwd":
            del self.arrays["bias"]
            self.arrays["grad_out"] = rng.standard_normal(self.y_shape)
            self.kw["needs"] = ("input", "weight", "bias")

    def a(self, name):
        return self.arrays[name]

    def set(self, name, value):
        self.arrays[name] = value

    def invoke(self):
        base = self.name.split(".")[-1]
        arrays = dict(self.arrays)
        if self.tape:   # every array argument as a Tensor (those of float dtype require grad)
            for k in ("x", "w", "bias"):
                v = arrays.get(k)
                if isinstance(v, np.ndarray):
                    arrays[k] = nbconv.Tensor(v, requires_grad=v.dtype.kind == "f")
            self.tensors = [v for v in arrays.values() if isinstance(v, nbconv.Tensor)]
        if self.path == "cuda":
            from numba import cuda
            self.device_arrays = {k: cuda.to_device(v if v.flags.c_contiguous or v.flags.f_contiguous
                                                    else np.ascontiguousarray(v))
                                  for k, v in arrays.items() if isinstance(v, np.ndarray)}
            arrays.update(self.device_arrays)
        fn = getattr(nbconv, base)
        if self.kind == "bwd":
            return fn(arrays["grad_out"], arrays["x"], arrays["w"], **self.kw)
        return fn(arrays["x"], arrays["w"], arrays.get("bias"), out=arrays.get("out"), **self.kw)


def shape(call, name):
    return str(tuple(call.a(name).shape))


# ---------------------------------------------------------------------------------------------------
# the battery: mutation(call) -> (exception type, fragments the message must contain); `kinds` says
# which functions a mutation concerns (fwd: conv, bwd: conv backward, tr: transposed conv)
# ---------------------------------------------------------------------------------------------------

BATTERY = []


def bad(name, kinds="fwd bwd tr"):
    def register(fn):
        BATTERY.append((name, set(kinds.split()), fn))
        return fn
    return register


def set_kw(call, **kw):
    call.kw.update(kw)


# wrong ndim -----------------------------------------------------------------------------------------
@bad("x_missing_batch_axis")
def _(c):
    c.set("x", c.a("x")[0])
    return ValueError, ["x", f"{c.nd + 2}-D", shape(c, "x")]


@bad("x_extra_axis")
def _(c):
    c.set("x", c.a("x")[None])
    return ValueError, ["x", f"{c.nd + 2}-D", shape(c, "x")]


@bad("w_extra_axis")
def _(c):
    c.set("w", c.a("w")[..., None])
    return ValueError, ["w", f"{c.nd + 2}-D", shape(c, "w")]


@bad("grad_out_missing_axis", "bwd")
def _(c):
    c.set("grad_out", c.a("grad_out")[0])
    return ValueError, ["grad_out", f"{c.nd + 2}-D", shape(c, "grad_out")]


# channels and groups --------------------------------------------------------------------------------
@bad("channel_mismatch")
def _(c):
    c.set("x", np.concatenate([c.a("x"), c.a("x")[..., :2]], axis=-1))   # 6 channels
    return ValueError, ["x has 6 channels", shape(c, "w")]


@bad("groups_not_dividing_input_channels")
def _(c):
    set_kw(c, groups=3)
    return ValueError, ["groups=3", "4 channels of x"]


@bad("groups_not_dividing_output_channels", "fwd bwd")
def _(c):
    c.set("x", np.concatenate([c.a("x"), c.a("x")[..., :2]], axis=-1))   # 6 channels, 3 groups of 2
    c.set("w", c.a("w")[..., :4])                                          # 4 output channels
    if "bias" in c.arrays:
        c.set("bias", c.a("bias")[:4])
    set_kw(c, groups=3)
    return ValueError, ["groups=3", "4 output channels of w", shape(c, "w")]


@bad("groups_zero")
def _(c):
    set_kw(c, groups=0)
    return ValueError, ["groups", ">= 1", "0"]


@bad("groups_negative")
def _(c):
    set_kw(c, groups=-2)
    return ValueError, ["groups", "-2"]


@bad("groups_float")
def _(c):
    set_kw(c, groups=2.0)
    return TypeError, ["groups", "2.0"]


# stride, dilation, padding values -------------------------------------------------------------------
@bad("stride_zero")
def _(c):
    set_kw(c, stride=0)
    return ValueError, ["stride", ">= 1", "0"]


@bad("stride_negative_in_one_dim")
def _(c):
    set_kw(c, stride=(1,) * (c.nd - 1) + (-1,))
    return ValueError, ["stride", repr(c.kw["stride"])]


@bad("stride_float")
def _(c):
    set_kw(c, stride=1.5)
    return TypeError, ["stride", "1.5"]


@bad("stride_beyond_64_bit_indexing")
def _(c):
    set_kw(c, stride=2 ** 63)
    return ValueError, ["stride", "at most 2**62", str(2 ** 63)]


@bad("padding_beyond_64_bit_indexing")
def _(c):
    set_kw(c, padding=((0, 2 ** 64),) * c.nd)
    return ValueError, ["padding", "at most 2**62", str(2 ** 64)]


@bad("dilation_zero")
def _(c):
    set_kw(c, dilation=0)
    return ValueError, ["dilation", ">= 1", "0"]


@bad("dilation_negative")
def _(c):
    set_kw(c, dilation=(-3,) * c.nd)
    return ValueError, ["dilation", repr(c.kw["dilation"])]


@bad("padding_negative")
def _(c):
    set_kw(c, padding=-1)
    return ValueError, ["padding", "non-negative", "-1"]


@bad("padding_negative_in_a_pair")
def _(c):
    set_kw(c, padding=((0, -2),) + ((1, 1),) * (c.nd - 1))
    return ValueError, ["padding", "non-negative", repr(c.kw["padding"])]


@bad("padding_float")
def _(c):
    set_kw(c, padding=1.0)
    return TypeError, ["padding", "1.0"]


@bad("kernel_larger_than_padded_input", "fwd bwd")
def _(c):
    set_kw(c, padding=0, dilation=4)   # extent 9 > 5 (2-D) or 7 (1-D)
    n = c.a("x").shape[1]
    return ValueError, ["kernel of size 3", "dilation 4", "extent 9", f"padded input size {n}", shape(c, "x"),
                        shape(c, "w")]


@bad("undilated_kernel_larger_than_padded_input", "fwd bwd")
def _(c):
    n = c.a("x").shape[1]
    c.set("w", np.ones((n + 3,) * c.nd + (2, 6)))
    return ValueError, [f"kernel of size {n + 3}", f"padded input size {n + 2}", shape(c, "w")]


@bad("transpose_output_empty", "tr")
def _(c):
    set_kw(c, padding=20)
    return ValueError, ["output size", "padding=(20, 20)", shape(c, "x")]


@bad("reflect_padding_as_wide_as_input", "fwd bwd")
def _(c):
    n = c.a("x").shape[1]
    set_kw(c, padding=n, padding_mode="reflect")
    return ValueError, ["reflect padding", f"({n}, {n})", f"input size {n}", shape(c, "x")]


@bad("circular_padding_wider_than_input", "fwd bwd")
def _(c):
    n = c.a("x").shape[1]
    set_kw(c, padding=((0, n + 1),) + ((0, 0),) * (c.nd - 1), padding_mode="circular")
    return ValueError, ["circular padding", f"(0, {n + 1})", f"input size {n}", shape(c, "x")]


@bad("replicate_padding_of_empty_input", "fwd bwd")
def _(c):
    c.set("x", c.a("x")[:, :0])
    set_kw(c, padding=3, padding_mode="replicate")
    return ValueError, ["replicate padding", "non-empty", shape(c, "x")]


# unknown strings ------------------------------------------------------------------------------------
@bad("padding_unknown_string")
def _(c):
    set_kw(c, padding="full")
    return ValueError, ["padding", "'full'"]


@bad("padding_uppercase_same", "fwd bwd")
def _(c):
    set_kw(c, padding="SAME")
    return ValueError, ["padding", "'SAME'"]


@bad("padding_same_for_transpose", "tr")
def _(c):
    set_kw(c, padding="same")
    return ValueError, ["padding", "'same'"]


@bad("padding_mode_unknown", "fwd bwd")
def _(c):
    set_kw(c, padding_mode="mirror")
    return ValueError, ["padding_mode", "'mirror'", "'reflect'"]


@bad("padding_mode_not_a_string", "fwd bwd")
def _(c):
    set_kw(c, padding_mode=None)
    return ValueError, ["padding_mode", "None"]


# tuples of the wrong length ------------------------------------------------------------------------
@bad("stride_wrong_length")
def _(c):
    set_kw(c, stride=(1,) * (c.nd + 1))
    return ValueError, ["stride", f"{c.nd} ints", repr(c.kw["stride"])]


@bad("dilation_wrong_length")
def _(c):
    set_kw(c, dilation=(1,) * (c.nd + 1))
    return ValueError, ["dilation", f"{c.nd} ints", repr(c.kw["dilation"])]


@bad("padding_wrong_length")
def _(c):
    set_kw(c, padding=(1,) * (c.nd + 1))
    return ValueError, ["padding", f"{c.nd} ints", repr(c.kw["padding"])]


@bad("padding_pair_of_three")
def _(c):
    set_kw(c, padding=((1, 1, 1),) * c.nd)
    return ValueError, ["padding", "(before, after) pairs", repr(c.kw["padding"])]


@bad("output_padding_wrong_length", "tr")
def _(c):
    set_kw(c, output_padding=(0,) * (c.nd + 1))
    return ValueError, ["output_padding", f"{c.nd} ints", repr(c.kw["output_padding"])]


# dtypes ---------------------------------------------------------------------------------------------
@bad("x_float32_others_float64")
def _(c):
    c.set("x", c.a("x").astype(np.float32))
    return TypeError, ["x", "float32", "float64", "share one dtype"]


@bad("bias_float32_others_float64", "fwd tr")
def _(c):
    c.set("bias", c.a("bias").astype(np.float32))
    return TypeError, ["bias", "float32", "float64", "share one dtype"]


@bad("grad_out_float32_others_float64", "bwd")
def _(c):
    c.set("grad_out", c.a("grad_out").astype(np.float32))
    return TypeError, ["grad_out", "float32", "float64", "share one dtype"]


def _bad_dtype(arg, dtype, kinds):
    dtype = np.dtype(dtype)

    @bad(f"{arg}_{dtype.name}", kinds)
    def mutate(c):
        c.set(arg, c.a(arg).astype(dtype))
        return TypeError, [arg, f"dtype {dtype}", "float32 or float64"]


for _arg, _dtype, _kinds in (("x", np.int64, "fwd bwd tr"), ("x", np.int32, "fwd"), ("x", np.bool_, "fwd tr"),
                             ("x", np.complex128, "fwd bwd tr"), ("x", np.float16, "fwd bwd tr"),
                             ("w", np.int32, "fwd bwd tr"), ("w", np.float16, "fwd tr"),
                             ("w", np.complex64, "fwd"), ("bias", np.bool_, "fwd tr"),
                             ("bias", np.float16, "fwd"), ("grad_out", np.int64, "bwd"),
                             ("grad_out", np.float16, "bwd"), ("x", np.longdouble, "fwd"), ("x", object, "fwd")):
    _bad_dtype(_arg, _dtype, _kinds)


# non-arrays -----------------------------------------------------------------------------------------
def _non_array(arg, make, type_name, kinds):
    @bad(f"{arg}_as_{type_name}", kinds)
    def mutate(c):
        c.set(arg, make(c.a(arg)))
        return TypeError, [arg, "NumPy array", type_name]


for _arg, _make, _type_name, _kinds in (
        ("x", lambda a: a.tolist(), "list", "fwd bwd tr"),
        ("x", lambda a: None, "None", "fwd bwd tr"),
        ("x", lambda a: 1.0, "float", "fwd tr"),
        ("w", lambda a: tuple(a.tolist()), "tuple", "fwd bwd tr"),
        ("w", lambda a: None, "None", "fwd bwd tr"),
        ("bias", lambda a: a.tolist(), "list", "fwd tr"),
        ("grad_out", lambda a: a.tolist(), "list", "bwd"),
        ("grad_out", lambda a: None, "None", "bwd")):
    _non_array(_arg, _make, _type_name, _kinds)


@bad("out_as_list", "fwd tr")
def _(c):
    c.set("out", np.zeros(c.y_shape).tolist())
    return TypeError, ["out", "NumPy array", "list"]


# bias -----------------------------------------------------------------------------------------------
@bad("bias_too_short", "fwd tr")
def _(c):
    c.set("bias", c.a("bias")[:5])
    return ValueError, ["bias", "(6,)", "(5,)"]


@bad("bias_2d", "fwd tr")
def _(c):
    c.set("bias", c.a("bias")[None])
    return ValueError, ["bias", "(6,)", "(1, 6)"]


@bad("bias_0d", "fwd tr")
def _(c):
    c.set("bias", np.array(1.0))
    return ValueError, ["bias", "(6,)", "()"]


# out ------------------------------------------------------------------------------------------------
def _out(c, out):
    out[...] = -123.0   # a sentinel: `out` must not be written when the call is refused
    c.set("out", out)


@bad("out_wrong_shape", "fwd tr")
def _(c):
    wrong = c.y_shape[:-1] + (5,)
    _out(c, np.empty(wrong))
    return ValueError, ["out", str(wrong), str(c.y_shape)]


@bad("out_wrong_dtype", "fwd tr")
def _(c):
    _out(c, np.empty(c.y_shape, np.float32))
    return TypeError, ["out", "float32", "float64"]


@bad("out_int_dtype", "fwd tr")
def _(c):
    _out(c, np.empty(c.y_shape, np.int64))
    return TypeError, ["out", "int64", "float32 or float64"]


@bad("out_fortran_order", "fwd tr")
def _(c):
    _out(c, np.asfortranarray(np.empty(c.y_shape)))
    return ValueError, ["out", "C-contiguous", str(c.a("out").strides)]


@bad("out_strided_view", "fwd tr")
def _(c):
    _out(c, np.empty(c.y_shape[:-1] + (12,))[..., ::2])
    return ValueError, ["out", "C-contiguous", str(c.a("out").strides)]


@bad("out_read_only", "fwd tr")
def _(c):
    _out(c, np.empty(c.y_shape))
    c.a("out").flags.writeable = False
    return ValueError, ["out", "writeable"]


@bad("out_overlapping_x", "fwd tr")
def _(c):
    x = c.a("x")
    buf = np.zeros(x.size + int(np.prod(c.y_shape)) - 1)   # x's last element is out's first
    buf[:x.size] = x.ravel()
    c.set("x", buf[:x.size].reshape(x.shape))
    _out(c, buf[x.size - 1:].reshape(c.y_shape))
    buf[x.size - 1] = x.ravel()[-1]
    return ValueError, ["out overlaps x"]


@bad("out_is_bias_memory", "fwd tr")
def _(c):
    out = np.empty(c.y_shape)
    _out(c, out)
    c.set("bias", out.reshape(-1)[:6])   # bias is a view of out's first six elements
    return ValueError, ["out overlaps bias"]


# grad_out -------------------------------------------------------------------------------------------
def _bad_grad_out(name, change):
    @bad(name, "bwd")
    def mutate(c):
        good = c.a("grad_out").shape
        c.set("grad_out", np.zeros(change(good)))
        return ValueError, ["grad_out", shape(c, "grad_out"), str(tuple(good)), shape(c, "x"), shape(c, "w")]


_bad_grad_out("grad_out_spatial_too_small", lambda s: s[:-2] + (s[-2] - 1, s[-1]))
_bad_grad_out("grad_out_extra_channel", lambda s: s[:-1] + (s[-1] + 1,))
_bad_grad_out("grad_out_other_batch", lambda s: (s[0] + 1,) + s[1:])


@bad("needs_unknown_name", "bwd")
def _(c):
    set_kw(c, needs=("input", "grad"))
    return ValueError, ["needs", "'grad'"]


@bad("needs_not_iterable", "bwd")
def _(c):
    set_kw(c, needs=3)
    return TypeError, ["needs", "3"]


# output_padding -------------------------------------------------------------------------------------
@bad("output_padding_equal_to_stride", "tr")
def _(c):
    set_kw(c, output_padding=2)
    return ValueError, ["output_padding", "(2,", "max(stride, dilation) = 2"]


@bad("output_padding_too_large_in_one_dim", "tr")
def _(c):
    set_kw(c, stride=1, output_padding=(0,) * (c.nd - 1) + (1,))
    return ValueError, ["output_padding", repr(c.kw["output_padding"]), "max(stride, dilation) = 1"]


@bad("output_padding_negative", "tr")
def _(c):
    set_kw(c, output_padding=-1)
    return ValueError, ["output_padding", ">= 0", "-1"]


CUDA = bool(numba.config.ENABLE_CUDASIM) or nbconv.cuda_available()
no_cuda = pytest.mark.skipif(not CUDA, reason="no CUDA GPU and the CUDA simulator is off (NUMBA_ENABLE_CUDASIM=0)")
BATTERY_CASES = [pytest.param(func, mutation, id=f"{func}-{name}", marks=[no_cuda] if path == "cuda" else [])
                 for func, (kind, nd, path) in FUNCS.items()
                 for name, kinds, mutation in BATTERY
                 if kind in kinds and not (path == "cuda" and name in NOT_ON_DEVICE)]


def snapshot(arrays):
    return {k: (v.copy(), v.strides, v.flags.writeable) for k, v in arrays.items() if isinstance(v, np.ndarray)}


@pytest.fixture
def no_kernels(monkeypatch):
    """Any kernel entry point (CPU or CUDA backend) reached during the test fails it: errors come
    before any kernel."""
    def refuse(*args, **kwargs):
        raise AssertionError("a kernel ran before the argument error was raised")
    backends = [_cpu]
    if CUDA:
        from nbconv import _cuda
        backends.append(_cuda)
    for backend in backends:
        for entry in ("forward", "grad_input", "grad_weight", "grad_bias", "transpose"):
            monkeypatch.setattr(backend, entry, refuse)


@pytest.mark.parametrize("func", [pytest.param(f, marks=[no_cuda] if path == "cuda" else [])
                                  for f, (_, _, path) in FUNCS.items()])
def test_battery_base_call_is_valid(func):
    """The call every bad input is derived from succeeds (so each failure below is the mutation's)."""
    call = Call(func)
    result = call.invoke()
    if call.kind == "bwd":
        assert [g.shape for g in result] == [call.a("x").shape, call.a("w").shape, (6,)]
    else:
        data = result.data if call.tape else result
        assert tuple(data.shape) == call.y_shape


@pytest.mark.parametrize("func, mutation", BATTERY_CASES)
def test_bad_input(func, mutation, no_kernels):
    call = Call(func)
    exc, fragments = mutation(call)
    saved = snapshot(call.arrays)
    with pytest.raises(exc) as info:
        call.invoke()
    message = str(info.value)
    assert type(info.value) is exc, f"{type(info.value).__name__}: {message}"
    missing = [f for f in fragments if f not in message]
    assert not missing, f"message {message!r} lacks {missing}"
    for name, (copy, strides, writeable) in saved.items():
        a = call.arrays[name]
        np.testing.assert_array_equal(a, copy, err_msg=f"{name} was modified")
        assert a.strides == strides and a.flags.writeable == writeable, name
    if call.tape:
        assert all(t.grad is None for t in call.tensors)
    if call.path == "cuda":
        for name, d in call.device_arrays.items():
            np.testing.assert_array_equal(d.copy_to_host(), saved[name][0], err_msg=f"device {name} was modified")


# ---------------------------------------------------------------------------------------------------
# edge cases that must work, against the naive reference
# ---------------------------------------------------------------------------------------------------

TOL = {np.dtype(np.float32): 1e-4, np.dtype(np.float64): 1e-10}


def explicit_pads(padding, x_shape, w_shape, stride, dilation):
    nd = len(x_shape) - 2
    stride, dilation = R._norm(stride, nd), R._norm(dilation, nd)
    if padding == "valid":
        return ((0, 0),) * nd
    if padding == "same":
        return R.same_pads(x_shape[1:-1], w_shape[:-2], stride, dilation)
    return R._norm_pads(padding, nd)


def ref_forward(x, w, b, stride=1, padding=0, dilation=1, groups=1, padding_mode="zeros"):
    """(expected, magnitude): the reference result and the same reduction over absolute values."""
    args = dict(stride=stride, pads=explicit_pads(padding, x.shape, w.shape, stride, dilation),
                dilation=dilation, groups=groups, mode=padding_mode)
    return (R.conv_forward(x, w, b, **args),
            R.conv_forward(np.abs(x), np.abs(w), None if b is None else np.abs(b), **args))


def ref_grads(gy, x, w, stride=1, padding=0, dilation=1, groups=1, padding_mode="zeros"):
    args = dict(stride=stride, pads=explicit_pads(padding, x.shape, w.shape, stride, dilation),
                dilation=dilation, groups=groups, mode=padding_mode)
    return R.conv_grads(gy, x, w, **args), R.conv_grads(np.abs(gy), np.abs(x), np.abs(w), **args)


def ref_transpose(x, w, b, stride=1, padding=0, output_padding=0, dilation=1, groups=1):
    args = dict(stride=stride, pads=0 if padding == "valid" else padding, output_padding=output_padding,
                dilation=dilation, groups=groups)
    return (R.conv_transpose(x, w, b, **args),
            R.conv_transpose(np.abs(x), np.abs(w), None if b is None else np.abs(b), **args))


def assert_close(got, expected, magnitude, dtype, what=""):
    """|got - expected| <= tol * (magnitude + 1), magnitude being the reduction of absolute values."""
    dtype = np.dtype(dtype)
    assert isinstance(got, np.ndarray) and got.dtype == dtype, (what, type(got), getattr(got, "dtype", None))
    assert got.shape == expected.shape, (what, got.shape, expected.shape)
    err = np.abs(got.astype(np.float64) - expected)
    bad_ = err > TOL[dtype] * (np.asarray(magnitude, np.float64) + 1.0)
    assert not bad_.any(), f"{what}: {bad_.sum()} of {bad_.size} off, worst {err.max():.3g}"


def randn(rng, shape, dtype=np.float64):
    return rng.standard_normal(shape).astype(dtype)


def fn(name, nd):
    return getattr(nbconv, f"{name}{nd}d")


def check_conv(rng, x, w, b, kw, dtype, gy=None, what=""):
    """Forward and all three gradients of fn(x, w, b, **kw) against the reference; returns (y, grads)."""
    nd = x.ndim - 2
    y = fn("conv", nd)(x, w, b, **kw)
    assert y.flags.c_contiguous
    expected, magnitude = ref_forward(x, w, b, **kw)
    assert_close(y, expected, magnitude, dtype, f"{what} forward")
    if gy is None:
        gy = randn(rng, y.shape, dtype)
    grads = getattr(nbconv, f"conv{nd}d_backward")(gy, x, w, **kw)
    (ex, ew, eb), (mx, mw, mb) = ref_grads(gy, x, w, **kw)
    assert_close(grads.input, ex, mx, dtype, f"{what} grad input")
    assert_close(grads.weight, ew, mw, dtype, f"{what} grad weight")
    assert_close(grads.bias, eb, mb, dtype, f"{what} grad bias")
    return y, grads


def check_transpose(x, w, b, kw, dtype, what=""):
    nd = x.ndim - 2
    y = fn("conv_transpose", nd)(x, w, b, **kw)
    assert y.flags.c_contiguous
    expected, magnitude = ref_transpose(x, w, b, **kw)
    assert_close(y, expected, magnitude, dtype, f"{what} transpose")
    return y


GROUPINGS = {  # (C_in, C_out, groups) of the convolution; the kernels take different paths for each
    "dense": (3, 4, 1),           # gather forward, scatter input gradient (few channels per group)
    "dense_wide": (36, 5, 1),     # input gradient by sub-pixel phases (>= B = 16 or 32 input channels per group)
    "grouped": (6, 9, 3),
    "depthwise": (4, 4, 4),
    "depthwise_x3": (4, 12, 4),   # channel multiplier 3
    "few_per_group": (6, 6, 2),   # 3 in and 3 out per group: run by the depthwise kernels
    "lane_groups": (16, 16, 4),   # 4 in and 4 out per group, 16 channels: the groups side by side in the lanes
}


@pytest.mark.parametrize("grouping", list(GROUPINGS))
@pytest.mark.parametrize("mode", R.MODES)
@pytest.mark.parametrize("nd", (1, 2, 3))
def test_empty_batch(rng, nd, mode, grouping):
    """N = 0: correctly-shaped (empty) results, zero weight and bias gradients, out= accepted."""
    c_in, c_out, groups = GROUPINGS[grouping]
    x = randn(rng, (0,) + (5, 4, 3)[:nd] + (c_in,))
    w = randn(rng, (3,) * nd + (c_in // groups, c_out))
    b = randn(rng, (c_out,))
    kw = dict(stride=2, padding=1, groups=groups, padding_mode=mode)
    y, grads = check_conv(rng, x, w, b, kw, np.float64)
    assert y.shape == (0,) + (3, 2, 2)[:nd] + (c_out,)
    assert not grads.weight.any() and not grads.bias.any()
    out = np.empty(y.shape)
    assert fn("conv", nd)(x, w, b, out=out, **kw) is out
    # the transposed convolution with the same weight maps y's shape back to x's
    yt = check_transpose(y, w, None, dict(stride=2, padding=1, output_padding=0, groups=groups), np.float64)
    assert yt.shape == (0,) + (5, 3, 3)[:nd] + (c_in,)


@pytest.mark.parametrize("nd", (1, 2, 3))
def test_empty_batch_on_the_tape(nd):
    x = nbconv.Tensor(np.zeros((0,) + (4,) * nd + (2,)), requires_grad=True)
    w = nbconv.Tensor(np.ones((3,) * nd + (2, 3)), requires_grad=True)
    b = nbconv.Tensor(np.ones(3), requires_grad=True)
    y = fn("conv", nd)(x, w, b, padding=1)
    assert y.shape == (0,) + (4,) * nd + (3,)
    y.sum().backward()
    assert x.grad.shape == x.shape
    np.testing.assert_array_equal(w.grad, np.zeros(w.shape))
    np.testing.assert_array_equal(b.grad, np.zeros(3))


UNIT_CASES = [  # (nd, kernel spatial, kwargs) on a 1 (x 1) input
    (2, (1, 1), dict()),
    (2, (3, 3), dict(padding=1)),
    (2, (3, 3), dict(padding=1, padding_mode="replicate")),
    (2, (3, 3), dict(padding=1, padding_mode="circular")),
    (2, (2, 3), dict(padding="same", stride=2)),
    (2, (1, 1), dict(padding=((2, 0), (0, 1)), padding_mode="replicate", stride=(1, 2))),
    (1, (1,), dict()),
    (1, (3,), dict(padding=1, dilation=1, padding_mode="circular")),
    (1, (2,), dict(padding="same", dilation=3)),
    (3, (1, 1, 1), dict()),
    (3, (3, 3, 3), dict(padding=1, padding_mode="replicate")),
    (3, (2, 1, 3), dict(padding="same", stride=(2, 1, 2))),
]


@pytest.mark.parametrize("grouping", ("dense", "dense_wide", "depthwise_x3"))
@pytest.mark.parametrize("nd, ks, kw", UNIT_CASES)
def test_unit_spatial(rng, nd, ks, kw, grouping):
    c_in, c_out, groups = GROUPINGS[grouping]
    x = randn(rng, (3,) + (1,) * nd + (c_in,))
    w = randn(rng, ks + (c_in // groups, c_out))
    check_conv(rng, x, w, randn(rng, (c_out,)), dict(kw, groups=groups), np.float64)


@pytest.mark.parametrize("grouping", ("dense", "dense_wide", "depthwise"))
@pytest.mark.parametrize("nd", (1, 2, 3))
def test_unit_spatial_transpose(rng, nd, grouping):
    c_in, c_out, groups = GROUPINGS[grouping]   # transposed: x has c_out channels, the result c_in
    x = randn(rng, (3,) + (1,) * nd + (c_out,))
    w = randn(rng, (3,) * nd + (c_in // groups, c_out))
    y = check_transpose(x, w, randn(rng, (c_in,)), dict(stride=2, padding=1, output_padding=1, groups=groups),
                        np.float64)
    assert y.shape == (3,) + (2,) * nd + (c_in,)


FULL_KERNEL_CASES = [  # the (dilated) kernel exactly as large as the padded input: one output per dim
    (2, (4, 5), (5, 7), dict(padding=((1, 0), (0, 2)))),
    (2, (4, 5), (4, 5), dict(padding="valid", stride=3)),
    (2, (7, 3), (3, 2), dict(dilation=(3, 2), padding=((0, 0), (0, 0)))),
    (2, (5, 5), (7, 7), dict(padding=1, padding_mode="reflect")),
    (2, (3, 4), (7, 6), dict(padding=((3, 1), (0, 2)), padding_mode="circular")),
    (2, (2, 2), (6, 3), dict(padding=((2, 2), (0, 1)), padding_mode="replicate")),
    (1, (6,), (8,), dict(padding=((2, 0),), padding_mode="reflect")),
    (1, (5,), (3,), dict(dilation=2, padding=0)),
    (3, (3, 4, 2), (5, 4, 3), dict(padding=((1, 1), (0, 0), (0, 1)), padding_mode="reflect")),
    (3, (3, 2, 4), (3, 2, 3), dict(dilation=(2, 1, 2), padding=((1, 1), (0, 0), (1, 0)))),
]


@pytest.mark.parametrize("grouping", ("dense", "dense_wide", "depthwise"))
@pytest.mark.parametrize("nd, xs, ks, kw", FULL_KERNEL_CASES)
def test_kernel_as_large_as_padded_input(rng, nd, xs, ks, kw, grouping):
    c_in, c_out, groups = GROUPINGS[grouping]
    x = randn(rng, (2, *xs, c_in))
    w = randn(rng, ks + (c_in // groups, c_out))
    y, _ = check_conv(rng, x, w, randn(rng, (c_out,)), dict(kw, groups=groups), np.float64)
    assert y.shape == (2,) + (1,) * nd + (c_out,)


LARGE_CHANNELS = {  # (C_in, C_out, groups)
    "dense_300": (300, 20, 1),
    "dense_300_out": (7, 300, 1),
    "groups3_odd": (300, 303, 3),       # 100 in, 101 out per group
    "groups5_odd": (15, 35, 5),         # 3 in, 7 out per group
    "groups7_odd": (119, 21, 7),        # 17 in, 3 out per group
    "groups100": (300, 500, 100),       # 3 in, 5 out per group
    "depthwise_300": (300, 300, 300),
    "depthwise_301_x3": (301, 903, 301),
}


@pytest.mark.parametrize("dtype", (np.float32, np.float64))
@pytest.mark.parametrize("channels", list(LARGE_CHANNELS))
def test_large_channel_counts(rng, channels, dtype):
    c_in, c_out, groups = LARGE_CHANNELS[channels]
    x = randn(rng, (2, 5, 4, c_in), dtype)
    w = randn(rng, (3, 2, c_in // groups, c_out), dtype)
    b = randn(rng, (c_out,), dtype)
    kw = dict(stride=(2, 1), padding=((1, 1), (0, 1)), groups=groups, padding_mode="reflect")
    y, _ = check_conv(rng, x, w, b, kw, dtype, what=channels)
    # transposed with the same weight: x is y-shaped, the result x-shaped
    check_transpose(y, w, randn(rng, (c_in,), dtype), dict(stride=(2, 1), padding=((1, 1), (0, 1)), groups=groups),
                    dtype, what=channels)


def test_large_channel_counts_1d(rng):
    x = randn(rng, (2, 9, 301))
    w = randn(rng, (3, 43, 77))   # 7 groups of 43 in, 11 out
    check_conv(rng, x, w, randn(rng, (77,)), dict(stride=2, padding="same", groups=7, padding_mode="circular"),
               np.float64)


# ---------------------------------------------------------------------------------------------------
# NaN and Inf propagate exactly as in the reference (IEEE arithmetic on the zero-padded definition)
# ---------------------------------------------------------------------------------------------------

def assert_same_nonfinite(got, expected, magnitude, dtype, what):
    """The same NaN, +Inf and -Inf positions as the reference; the finite rest within tolerance."""
    for name, test in (("NaN", np.isnan), ("+Inf", np.isposinf), ("-Inf", np.isneginf)):
        g, e = test(got), test(expected)
        assert (g == e).all(), (f"{what}: {name} at {np.argwhere(g & ~e)[:4].tolist()} (not in the reference), "
                                f"missing at {np.argwhere(e & ~g)[:4].tolist()}; {g.sum()} vs {e.sum()}")
    finite = np.isfinite(expected)
    assert_close(np.where(finite, got, 0).astype(got.dtype), np.where(finite, expected, 0), magnitude, dtype, what)


def poison(a, value, where):
    """A copy of `a` with `value` at a border element and -`value` at an interior one."""
    a = a.copy()
    a[where[0]] = value
    a[where[1]] = -value
    return a


def _finite(a):
    return None if a is None else np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)


NONFINITE_XFAIL = {  # (grouping, mode, poisoned argument) -> reason; reported to the kernels' owner
    **{(g, "zeros", "w"): "depthwise forward with zeros padding skips the taps that read padding, so 0 * NaN/Inf "
                          "weights never happen (the reference and the dense path give NaN there)"
       for g in ("depthwise", "depthwise_x3", "few_per_group")},
    **{(g, "zeros", "grad_out"): "depthwise weight gradient with zeros padding skips padded taps: 0 * NaN/Inf "
                                 "grad_out never happens (the reference gives NaN there)"
       for g in ("depthwise", "depthwise_x3", "few_per_group")},
    **{(g, m, "w"): "input gradient by sub-pixel phases multiplies the zero border of grad_out by "
                    "NaN/Inf weights: NaN at input positions that no output reads through that tap"
       for g in ("dense_wide", "lane_groups") for m in ("zeros", "reflect")},
    ("lane_groups", "zeros", "grad_out"): "weight gradient of 2 or 4 channels per group (depthwise kernel) with "
                                          "zeros padding skips padded taps: 0 * NaN/Inf grad_out never happens",
}


def _nonfinite_params():
    params = []
    for grouping in GROUPINGS:
        for mode in ("zeros", "reflect"):
            for target in ("x", "w", "bias", "grad_out"):
                reason = NONFINITE_XFAIL.get((grouping, mode, target))
                marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
                params.append(pytest.param(grouping, mode, target, marks=marks,
                                           id=f"{grouping}-{mode}-{target}"))
    return params


@pytest.mark.parametrize("value", (np.nan, np.inf), ids=("nan", "inf"))
@pytest.mark.parametrize("grouping, mode, target", _nonfinite_params())
def test_nonfinite_propagation(rng, grouping, mode, target, value):
    c_in, c_out, groups = GROUPINGS[grouping]
    x = randn(rng, (2, 6, 7, c_in))
    w = randn(rng, (3, 3, c_in // groups, c_out))
    b = randn(rng, (c_out,))
    kw = dict(stride=2, padding=1, groups=groups, padding_mode=mode)
    gy = randn(rng, nbconv.conv2d(x, w, b, **kw).shape)
    if target == "x":
        x = poison(x, value, ((0, 0, 1, 0), (1, 3, 3, c_in - 1)))
    elif target == "w":
        w = poison(w, value, ((0, 0, 0, 0), (2, 1, 0, c_out - 1)))
    elif target == "bias":
        b = poison(b, value, ((0,), (c_out - 1,)))
    else:
        gy = poison(gy, value, ((0, 0, 0, 0), (1, 1, 2, c_out - 1)))
    with np.errstate(invalid="ignore", over="ignore"):
        if target != "grad_out":
            y = nbconv.conv2d(x, w, b, **kw)
            expected = ref_forward(x, w, b, **kw)[0]
            assert_same_nonfinite(y, expected, ref_forward(_finite(x), _finite(w), _finite(b), **kw)[1], np.float64,
                                  "forward")
        if target != "bias":
            grads = nbconv.conv2d_backward(gy, x, w, **kw)
            expected = ref_grads(gy, x, w, **kw)[0]
            magnitude = ref_grads(_finite(gy), _finite(x), _finite(w), **kw)[1]
            for name, got, e, m in zip(grads._fields, grads, expected, magnitude):
                assert_same_nonfinite(got, e, m, np.float64, f"grad {name}")


TRANSPOSE_NONFINITE_XFAIL = {
    (g, "w"): "the transposed convolution is the phase-split input gradient: NaN/Inf weights times the "
              "zero border of x give NaN at outputs that no input reaches through that tap"
    for g in ("dense_wide", "lane_groups")
}


def _transpose_nonfinite_params():
    params = []
    for grouping in GROUPINGS:
        for target in ("x", "w", "bias"):
            reason = TRANSPOSE_NONFINITE_XFAIL.get((grouping, target))
            marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
            params.append(pytest.param(grouping, target, marks=marks, id=f"{grouping}-{target}"))
    return params


@pytest.mark.parametrize("value", (np.nan, np.inf), ids=("nan", "inf"))
@pytest.mark.parametrize("grouping, target", _transpose_nonfinite_params())
def test_nonfinite_propagation_transpose(rng, grouping, target, value):
    c_in, c_out, groups = GROUPINGS[grouping]   # transposed: x has c_out channels, the result c_in
    x = randn(rng, (2, 3, 4, c_out))
    w = randn(rng, (3, 3, c_in // groups, c_out))
    b = randn(rng, (c_in,))
    if target == "x":
        x = poison(x, value, ((0, 0, 1, 0), (1, 2, 2, c_out - 1)))
    elif target == "w":
        w = poison(w, value, ((0, 0, 0, 0), (2, 1, 0, c_out - 1)))
    else:
        b = poison(b, value, ((0,), (c_in - 1,)))
    kw = dict(stride=2, padding=1, output_padding=1, groups=groups)
    with np.errstate(invalid="ignore", over="ignore"):
        y = nbconv.conv_transpose2d(x, w, b, **kw)
        expected = ref_transpose(x, w, b, **kw)[0]
        assert_same_nonfinite(y, expected, ref_transpose(_finite(x), _finite(w), _finite(b), **kw)[1], np.float64,
                              "transpose")


# ---------------------------------------------------------------------------------------------------
# any memory layout: the same bits as C-ordered inputs, inputs untouched
# ---------------------------------------------------------------------------------------------------

def relayout(a, kind):
    """An array equal to `a` in memory layout `kind` (fresh memory)."""
    if a is None:
        return None
    if kind == "fortran":
        return np.asfortranarray(a)
    if kind == "negative":               # negative strides on every axis
        return np.array(a[(slice(None, None, -1),) * a.ndim])[(slice(None, None, -1),) * a.ndim]
    if kind == "broadcast":              # zero stride on the first axis (read-only); `a` repeats along it
        assert (a == a[:1]).all()
        return np.broadcast_to(a[:1].copy(), a.shape)
    if kind == "readonly":
        a = a.copy()
        a.flags.writeable = False
        return a
    if kind == "channel_step":           # every other element of the last axis
        buf = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
        buf[..., ::2] = a
        return buf[..., ::2]
    if kind == "leading_step":           # every other element of the first axis
        buf = np.zeros((2 * a.shape[0],) + a.shape[1:], a.dtype)
        buf[::2] = a
        return buf[::2]
    if kind == "unaligned":              # C-contiguous but misaligned by one byte
        raw = np.zeros(a.nbytes + 1, np.uint8)
        u = np.ndarray(a.shape, a.dtype, buffer=raw, offset=1)
        u[...] = a
        assert not u.flags.aligned
        return u
    raise ValueError(kind)


LAYOUT_KINDS = ("fortran", "negative", "broadcast", "readonly", "channel_step", "leading_step", "unaligned")


def _layout_params():
    # unaligned arrays compile their own kernel specializations: once (dense path) is enough for CI time
    return [pytest.param(g, k, id=f"{g}-{k}") for g in ("grouped", "depthwise_x3") for k in LAYOUT_KINDS
            if not (k == "unaligned" and g != "grouped")]


@pytest.mark.parametrize("dtype", (np.float32, np.float64))
@pytest.mark.parametrize("grouping, kind", _layout_params())
def test_any_layout_gives_the_same_bits(rng, grouping, kind, dtype):
    c_in, c_out, groups = GROUPINGS[grouping]
    x = randn(rng, (2, 5, 6, c_in), dtype)
    w = randn(rng, (3, 2, c_in // groups, c_out), dtype)
    b = randn(rng, (c_out,), dtype)
    if kind == "broadcast":   # values that repeat along the first axis, so that it can have stride 0
        x[1:], w[1:], b[1:] = x[0], w[0], b[0]
    kw = dict(stride=(2, 1), padding=((1, 0), (2, 1)), groups=groups, padding_mode="circular")
    y, grads = check_conv(rng, x, w, b, kw, dtype)            # C order, against the reference
    gy = randn(rng, y.shape, dtype)
    if kind == "broadcast":
        gy[1:] = gy[0]
    grads = nbconv.conv2d_backward(gy, x, w, **kw)
    yt = nbconv.conv_transpose2d(y, w, b[:c_in] if c_in <= c_out else None, stride=(2, 1),
                                 padding=((1, 0), (2, 1)), groups=groups)
    lx, lw, lb, lgy, ly = (relayout(a, kind) for a in (x, w, b, gy, y))
    arrays = (lx, lw, lb, lgy, ly)
    saved = [a.copy() for a in arrays]
    np.testing.assert_array_equal(nbconv.conv2d(lx, lw, lb, **kw), y)
    for got, want in zip(nbconv.conv2d_backward(lgy, lx, lw, **kw), grads):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(
        nbconv.conv_transpose2d(ly, lw, lb[:c_in] if c_in <= c_out else None, stride=(2, 1),
                                padding=((1, 0), (2, 1)), groups=groups), yt)
    for a, s in zip(arrays, saved):
        np.testing.assert_array_equal(a, s)
    # the same for the default zeros padding (the depthwise kernels read x in place then)
    kw["padding_mode"] = "zeros"
    np.testing.assert_array_equal(nbconv.conv2d(lx, lw, lb, **kw), nbconv.conv2d(x, w, b, **kw))
    for got, want in zip(nbconv.conv2d_backward(lgy, lx, lw, **kw), nbconv.conv2d_backward(gy, x, w, **kw)):
        np.testing.assert_array_equal(got, want)


# ---------------------------------------------------------------------------------------------------
# threads and determinism
# ---------------------------------------------------------------------------------------------------

def workload():
    """name -> zero-argument call returning a tuple of arrays: forward, the three gradients and the
    transposed convolution on dense, grouped and depthwise (with multiplier) problems in 1-D, 2-D and 3-D, pooling and
    batch normalization, large enough that every kernel (and every fixed reduction slot) is split across threads."""
    rng = np.random.default_rng(11)
    f32, f64 = np.float32, np.float64
    x = randn(rng, (8, 32, 32, 16), f32)
    w = randn(rng, (3, 3, 16, 32), f32)
    b = randn(rng, (32,), f32)
    gy = randn(rng, (8, 32, 32, 32), f32)
    xg = randn(rng, (4, 40, 44, 12), f64)
    wg = randn(rng, (3, 3, 4, 9), f64)             # 3 groups of 4 -> 3
    gyg = randn(rng, (4, 20, 22, 9), f64)
    xd = randn(rng, (8, 32, 32, 16), f32)
    wd = randn(rng, (3, 3, 1, 32), f32)            # depthwise, multiplier 2
    gyd = randn(rng, (8, 32, 32, 32), f32)
    x1 = randn(rng, (8, 300, 8), f32)
    w1 = randn(rng, (5, 8, 6), f32)
    gy1 = randn(rng, (8, 148, 6), f32)
    x3 = randn(rng, (4, 8, 12, 12, 16), f32)
    w3 = randn(rng, (3, 3, 3, 16, 16), f32)
    gy3 = randn(rng, (4, 4, 12, 12, 16), f32)
    wd3 = randn(rng, (3, 3, 3, 1, 16), f32)         # depthwise 3-D
    gyd3 = randn(rng, (4, 8, 12, 12, 16), f32)
    xl = randn(rng, (16, 28, 28, 1), f32)
    wl = randn(rng, (5, 5, 1, 6), f32)             # one input channel, output columns in the lanes
    wp = randn(rng, (1, 1, 16, 32), f32)           # pointwise, on the gather kernel
    dense = dict(padding=1)
    grouped = dict(stride=2, padding="same", groups=3, padding_mode="reflect")
    depthwise = dict(padding=1, groups=16)
    conv1 = dict(stride=2, dilation=2, padding=((3, 1),), padding_mode="circular")
    conv3 = dict(stride=(2, 1, 1), padding=1, padding_mode="replicate")
    return {
        "forward": lambda: (nbconv.conv2d(x, w, b, **dense),),
        "wide_forward": lambda: (nbconv.conv2d(gy, np.ascontiguousarray(np.swapaxes(w, 2, 3)), b[:16], **dense),),
        "backward": lambda: tuple(nbconv.conv2d_backward(gy, x, w, **dense)),
        "grouped_forward": lambda: (nbconv.conv2d(xg, wg, None, **grouped),),
        "grouped_backward": lambda: tuple(nbconv.conv2d_backward(gyg, xg, wg, **grouped)),
        "depthwise_forward": lambda: (nbconv.conv2d(xd, wd, None, **depthwise),),
        "depthwise_backward": lambda: tuple(nbconv.conv2d_backward(gyd, xd, wd, **depthwise)),
        "transpose": lambda: (nbconv.conv_transpose2d(gy, w, None, stride=2, padding=1, output_padding=1),),
        "depthwise_transpose": lambda: (nbconv.conv_transpose2d(xd, np.ascontiguousarray(wd[:, :, :, ::2]),
                                                                None, stride=2, groups=16),),
        "conv1d_backward": lambda: ((nbconv.conv1d(x1, w1, **conv1),)
                                    + tuple(nbconv.conv1d_backward(gy1, x1, w1, **conv1))),
        "conv3d_backward": lambda: ((nbconv.conv3d(x3, w3, **conv3),)
                                    + tuple(nbconv.conv3d_backward(gy3, x3, w3, **conv3))),
        "depthwise3d_backward": lambda: ((nbconv.conv3d(x3, wd3, groups=16, padding=1),)
                                         + tuple(nbconv.conv3d_backward(gyd3, x3, wd3, groups=16, padding=1))),
        "pooling_and_batch_norm": lambda: _pool_norm_grads(gy, gyd),
        "one_input_channel_forward": lambda: (nbconv.conv2d(xl, wl, b[:6], padding=2),),
        "pointwise_backward": lambda: ((nbconv.conv2d(x, wp, b),) + tuple(nbconv.conv2d_backward(gy, x, wp))),
    }


def _pool_norm_grads(x, g):
    """max_pool2d, avg_pool2d and batch_norm (training) of x, and the gradients of their sum weighted by g."""
    from nbconv import Tensor
    xt = Tensor(x, requires_grad=True)
    weight = Tensor(np.linspace(0.5, 1.5, x.shape[-1]).astype(x.dtype), requires_grad=True)
    outs = [nbconv.max_pool2d(xt, 3, stride=1, padding=1), nbconv.avg_pool2d(xt, 3, stride=1, padding=1),
            nbconv.batch_norm(xt, weight, None)]
    total = None
    for k, y in enumerate(outs):
        term = (y * np.roll(g, k, axis=-1)).sum()
        total = term if total is None else total + term
    total.backward()
    return (*(y.data for y in outs), xt.grad, weight.grad)


def run_workload(calls):
    return {name: call() for name, call in calls.items()}


def assert_bitwise(got, want, what=""):
    assert got.keys() == want.keys()
    for name in want:
        assert len(got[name]) == len(want[name])
        for i, (g, e) in enumerate(zip(got[name], want[name])):
            assert g.dtype == e.dtype and g.shape == e.shape, (what, name, i)
            assert np.array_equal(g, e) and g.tobytes() == e.tobytes(), f"{what}: {name}[{i}] differs"


def hammer(calls, baseline, n_threads=8, rounds=3, timeout=300):
    """n_threads Python threads start together and each run every call `rounds` times (each thread in
    a different order, so that forward and backward kernels overlap); a list of problems (empty when
    every result is bitwise equal to `baseline`)."""
    names = list(calls)
    problems, lock = [], threading.Lock()
    barrier = threading.Barrier(n_threads)

    def worker(k):
        try:
            barrier.wait()
            for r in range(rounds):
                for i in range(len(names)):
                    name = names[(i + k + r) % len(names)]
                    result = calls[name]()
                    for j, (g, e) in enumerate(zip(result, baseline[name])):
                        if g.tobytes() != e.tobytes():
                            with lock:
                                problems.append(f"thread {k} round {r}: {name}[{j}] differs")
        except BaseException as e:   # noqa: BLE001 (reported, not swallowed)
            with lock:
                problems.append(f"thread {k}: {type(e).__name__}: {e}")

    threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    problems += [f"thread {k} still running after {timeout} s" for k, t in enumerate(threads) if t.is_alive()]
    return problems


def test_repeated_calls_are_bitwise_identical():
    calls = workload()
    first = run_workload(calls)
    for _ in range(2):
        assert_bitwise(run_workload(calls), first, "repeated call")


def test_thread_count_does_not_change_bits(monkeypatch):
    """numba.set_num_threads(1) vs 2 (and every count up to NUMBA_NUM_THREADS when more), and another number of
    chunks per thread: same bits. Every kernel of the workload that can share its items among threads must
    really be split at least once (small calls run on one thread)."""
    from nbconv import _jit
    most = numba.config.NUMBA_NUM_THREADS
    if most < 2:
        pytest.skip("numba has a single thread here (NUMBA_NUM_THREADS=1)")
    split = {}   # kernel name -> shared among threads at least once
    real_call, real_call_all, real_split = _jit.call, _jit.call_all, _jit._split_jobs

    def recording_call(dispatcher, *args, items=None, work=None):
        if items is not None:
            split.setdefault(dispatcher.__name__, False)
        return real_call(dispatcher, *args, items=items, work=work)

    def recording_call_all(jobs, work):
        for dispatcher, _, _ in jobs:
            split.setdefault(dispatcher.__name__, False)
        return real_call_all(jobs, work)

    def recording_split(jobs, n_threads):
        for dispatcher, _, _ in jobs:
            split[dispatcher.__name__] = True
        return real_split(jobs, n_threads)

    monkeypatch.setattr(_cpu, "call", recording_call)
    monkeypatch.setattr(_cpu, "call_all", recording_call_all)
    monkeypatch.setattr(_pool, "call", recording_call)
    monkeypatch.setattr(_jit, "_split_jobs", recording_split)
    calls = workload()
    saved = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        single = run_workload(calls)
        assert not any(split.values()), split
        for n in sorted({2, most, (most + 1) // 2} - {1}):
            numba.set_num_threads(n)
            assert_bitwise(run_workload(calls), single, f"{n} threads vs 1")
        monkeypatch.setattr(_jit, "CHUNKS_PER_THREAD", 3)
        assert_bitwise(run_workload(calls), single, "3 chunks per thread vs 1 thread")
    finally:
        numba.set_num_threads(saved)
    assert numba.get_num_threads() == saved
    assert len(split) >= 12 and all(split.values()), f"kernels never shared among threads: {split}"


@pytest.mark.parametrize("team_busy", [False, True], ids=["on_the_team", "team_busy"])
def test_a_call_keeps_no_array_alive_after_it_returns(rng, team_busy):
    """A call split among nbconv's workers, or done alone while another call holds the team (here: held), keeps no
    reference to its arrays once it returns (the team drops its task)."""
    import weakref
    from nbconv import _jit, _workers
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("numba has a single thread here (NUMBA_NUM_THREADS=1)")
    x = randn(rng, (4, 32, 32, 16), np.float32)
    w = randn(rng, (3, 3, 16, 32), np.float32)
    nbconv.conv2d(x, w, padding=1)  # compiled, and the team made
    held = _workers.team(_jit._compiled_polls) if team_busy else None
    assert held is not None or not team_busy
    try:
        y = nbconv.conv2d(x, w, padding=1)
        alive = weakref.ref(y)
        del y
        assert alive() is None, "the output is still referenced after the call returned"
    finally:
        if held is not None:
            _workers.release(held)


@pytest.mark.parametrize("items", [1, 2, 7, 40, 820, 10 ** 6])
@pytest.mark.parametrize("n_threads", [2, 3, 16])
def test_split_chunks_cover_the_items_once_largest_first(items, n_threads):
    """Guided chunks: contiguous, covering range(items) exactly once, never growing (but for the remainder at the
    end), none below the smallest share, and few of them."""
    from nbconv import _jit
    bounds = _jit._chunk_bounds(items, n_threads)
    sizes = np.diff(bounds)
    assert bounds[0] == 0 and bounds[-1] == items and (sizes > 0).all(), bounds
    assert (np.diff(sizes[:-1]) <= 0).all(), sizes
    smallest = max(1, items // (n_threads * _jit.CHUNKS_PER_THREAD))
    assert (sizes[:-1] >= smallest).all(), sizes
    assert len(sizes) <= n_threads * _jit.CHUNKS_PER_THREAD + 2 * n_threads * 8, sizes


def test_split_jobs_run_every_item_of_every_job_once():
    """Several jobs in one hand-off, each with a schedule of its own: each job sees exactly its own items, once."""
    from nbconv import _jit
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("numba has a single thread here (NUMBA_NUM_THREADS=1)")
    seen = {name: np.zeros(items, dtype=int) for name, items in (("a", 37), ("b", 1), ("c", 250), ("d", 5))}

    def job(name):
        def run(sched, me):
            for lo, hi in _jit.chunks(sched, me):
                seen[name][lo:hi] += 1
        return run

    _jit._split_jobs([(job(name), (), len(counts)) for name, counts in seen.items()], 2)
    assert all((counts == 1).all() for counts in seen.values()), seen


@numba.njit(nogil=True)
def _count_items(counts, sched, me):
    for item in chunk_items(sched, me):
        counts[item] += 1


def test_threads_claim_every_chunk_once_in_compiled_code():
    """Two threads claiming chunks of one schedule at the same time, without the GIL (atomic counters): every item
    counted exactly once, over many calls with many small chunks."""
    from nbconv import _jit
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("numba has a single thread here (NUMBA_NUM_THREADS=1)")
    for items in [1, 2, 3, 64, 1000] * 40:
        counts = np.zeros(items, dtype=np.int64)
        _jit._split(_count_items, (counts,), items, 2)
        assert (counts == 1).all(), (items, np.flatnonzero(counts != 1)[:10])


def _chunk_recorder(fail_when):
    """A stand-in kernel for _jit._split: records [lo, hi, thread name, state] of each chunk it claims from the
    schedule (state: False while it runs, then True, or "raised"); sleeps 20 ms per chunk so that the workers take
    some; raises RuntimeError in the chunks where fail_when(lo, thread name) holds."""
    import time
    from nbconv import _jit
    log = []

    def chunk(sched, me):
        for lo, hi in _jit.chunks(sched, me):
            entry = [lo, hi, threading.current_thread().name, False]
            log.append(entry)
            time.sleep(0.02)
            if fail_when(lo, entry[2]):
                entry[3] = "raised"
                raise RuntimeError(f"chunk {lo}")
            entry[3] = True

    return chunk, log


@pytest.mark.parametrize("who", ["caller", "worker"])
def test_a_failing_chunk_stops_the_split_and_is_raised_once_nothing_runs(who):
    """An exception in a chunk (in the calling thread or a worker) is raised by the call, after every chunk that
    started has finished and no other chunk starts: nothing writes into the call's arrays after it returns."""
    import time
    from nbconv import _jit
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("numba has a single thread here (NUMBA_NUM_THREADS=1)")
    on_worker = who == "worker"
    chunk, log = _chunk_recorder(lambda lo, name: name.startswith("nbconv") == on_worker)
    with pytest.raises(RuntimeError, match="chunk"):
        _jit._split(chunk, (), 64, 2)
    ran = len(log)
    assert all(entry[3] in (True, "raised") for entry in log), log  # every chunk that started has ended
    time.sleep(0.1)
    assert len(log) == ran < 8, log  # no chunk started after the call returned; the others were skipped
    assert any(entry[2].startswith("nbconv") for entry in log) or not on_worker, log


def test_each_thread_takes_its_own_chunk_first():
    """The first chunks, one per thread, are that thread's own: the caller runs the first, a worker the second (the
    same data on the same cores from call to call); every chunk still runs once."""
    from nbconv import _jit
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("numba has a single thread here (NUMBA_NUM_THREADS=1)")
    bounds = _jit._chunk_bounds(64, 2)
    assert _jit._static_chunks(64, 2) == 2 and bounds[2] == 2 * int(64 * _jit.STATIC_SHARE) // 2
    second = []
    for _ in range(3):
        chunk, log = _chunk_recorder(lambda lo, name: False)
        _jit._split(chunk, (), 64, 2)
        assert sorted((lo, hi) for lo, hi, *_ in log) == list(zip(bounds, bounds[1:]))
        owner = {(lo, hi): name for lo, hi, name, _ in log}
        assert owner[bounds[0], bounds[1]] == threading.current_thread().name, log
        second.append(owner[bounds[1], bounds[2]])
    # the caller takes the worker's chunk only if the worker has not started after its own chunk and the shared ones
    # (7 x 20 ms): not on every one of three calls
    assert any(name.startswith("nbconv") for name in second), second


def test_idle_workers_stop_polling():
    """Workers poll for the next task for SPIN_SECONDS (0.3 ms) after each one, then sleep: a process that stopped
    calling nbconv uses no CPU for it (measured: the process's CPU time over 0.3 s of idle), and the next call
    wakes them."""
    import time
    from nbconv import _jit, _workers
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("numba has a single thread here (NUMBA_NUM_THREADS=1)")
    chunk, log = _chunk_recorder(lambda lo, name: False)
    _jit._split(chunk, (), 64, 2)
    time.sleep(20 * _workers.SPIN_SECONDS)
    cpu = time.process_time()
    time.sleep(0.3)
    assert time.process_time() - cpu < 0.05
    chunk, log = _chunk_recorder(lambda lo, name: False)
    _jit._split(chunk, (), 64, 2)
    assert any(entry[2].startswith("nbconv") for entry in log), log


def test_a_caller_asleep_is_woken_by_the_worker_that_finishes():
    """A caller whose worker runs longer than the caller polls (here 30 ms) sleeps with its waiting flag set; the
    worker, finishing, sees the flag and wakes it (the notify comes from the worker's thread: without it the caller
    would sleep out its 50 ms timeout), and the flag is cleared once the call returns."""
    import time
    from nbconv import _jit, _workers
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("numba has a single thread here (NUMBA_NUM_THREADS=1)")

    def task(delay):
        def run(sched, me):
            for lo, hi in _jit.chunks(sched, me):
                pass
            if me:
                time.sleep(delay)
        return run

    _jit._split(task(0), (), 8, 2)  # the team exists
    team = _workers._team
    notified = []
    real = team.ready.notify_all
    team.ready.notify_all = lambda: notified.append(threading.current_thread().name) or real()
    try:
        _jit._split(task(0.03), (), 8, 2)
        assert any(name.startswith("nbconv-worker") for name in notified), notified
        assert team.waiting[0] == 0
    finally:
        del team.ready.notify_all


_INTERRUPTED = """
    import sys, threading, time
    import numpy as np
    from nbconv import _jit, _workers
    log = []
    def task(sched, me):  # a stand-in kernel: the worker's takes 0.2 s, then raises
        for lo, hi in _jit.chunks(sched, me):
            pass
        if me:
            time.sleep(0.2)
            log.append("worker done")
            raise RuntimeError("the worker's error")
    def quiet(sched, me):
        for lo, hi in _jit.chunks(sched, me):
            pass
    _jit._split(quiet, (), 8, 2)
    team = _workers._team
    time.sleep(0.05)  # the worker has stopped polling: asleep
    {inject}
    try:
        _jit._split(task, (), 8, 2)
        print("NO INTERRUPT")
    except KeyboardInterrupt:
        print("INTERRUPTED", log)
    _jit._split(quiet, (), 8, 2)  # the worker's error is not raised by a later call
    print("NEXT OK")
"""


@pytest.mark.parametrize("where", ["waiting", "publishing"])
def test_ctrl_c_in_a_split_call_returns_after_the_workers(where):
    """A KeyboardInterrupt while the caller waits for a worker, or between its publishing the task and waking a
    sleeping worker: the call raises it only once the worker has finished (it wrote nothing after the call
    returned), never hangs, and leaves nothing (the worker's error) for the next call."""
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("numba has a single thread here (NUMBA_NUM_THREADS=1)")
    inject = {
        "waiting": "real = team.poll_done\n"
                   "    def once(*a):\n"
                   "        team.poll_done = real\n"
                   "        real(*a)\n"
                   "        raise KeyboardInterrupt\n"
                   "    team.poll_done = once",
        "publishing": "def once():\n"
                      "        del team.ready.notify_all\n"
                      "        raise KeyboardInterrupt\n"
                      "    team.ready.notify_all = once",
    }[where]
    env = dict(os.environ, NUMBA_NUM_THREADS="2", PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(
        __file__))))
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(_INTERRUPTED.replace("{inject}", inject))],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "INTERRUPTED ['worker done']" in proc.stdout and "NEXT OK" in proc.stdout, (proc.stdout, proc.stderr)


def test_fewer_threads_than_workers_start_only_those_workers():
    """numba.set_num_threads(2) in a process of NUMBA_NUM_THREADS=4: a split call starts one worker, not three (the
    others neither wake nor spin)."""
    code = """
    import numba, numpy as np
    from nbconv import _jit, _workers
    numba.set_num_threads(2)
    def quiet(sched, me):
        for lo, hi in _jit.chunks(sched, me):
            pass
    for _ in range(20):
        _jit._split(quiet, (), 64, numba.get_num_threads())
    print("DONE", _workers._team.done.tolist())
    """
    env = dict(os.environ, NUMBA_NUM_THREADS="4", PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(
        __file__))))
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "DONE [0, 20, 0, 0]" in proc.stdout, proc.stdout


def test_workers_keep_helping_after_a_chunk_raised():
    """A worker whose chunk raised goes on serving later calls."""
    from nbconv import _jit
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("numba has a single thread here (NUMBA_NUM_THREADS=1)")
    chunk, log = _chunk_recorder(lambda lo, name: name.startswith("nbconv"))
    with pytest.raises(RuntimeError, match="chunk"):
        _jit._split(chunk, (), 64, 2)
    assert any(entry[3] == "raised" for entry in log), log
    chunk, log = _chunk_recorder(lambda lo, name: False)
    _jit._split(chunk, (), 64, 2)
    assert sorted((lo, hi) for lo, hi, *_ in log) == [(b, e) for b, e in zip(_jit._chunk_bounds(64, 2),
                                                                            _jit._chunk_bounds(64, 2)[1:])]
    assert any(entry[2].startswith("nbconv") for entry in log), log


def test_split_runs_everything_on_the_caller_during_interpreter_shutdown():
    """A non-daemon thread that calls nbconv after the main thread has finished (the interpreter is shutting down;
    nbconv's daemon workers still serve): the call completes with the right result."""
    code = """
    import threading, time
    import numpy as np, nbconv
    x = np.random.default_rng(0).standard_normal((8, 32, 32, 16)).astype(np.float32)
    w = np.ones((3, 3, 16, 32), np.float32)
    expected = nbconv.conv2d(x, w, padding=1)
    def late():
        time.sleep(0.5)  # the main thread has finished by now: the interpreter is shutting down
        print("LATE", np.array_equal(nbconv.conv2d(x, w, padding=1), expected), flush=True)
    threading.Thread(target=late).start()
    """
    env = dict(os.environ, NUMBA_NUM_THREADS="2", PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(
        __file__))))
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0 and "LATE True" in proc.stdout, (proc.stdout, proc.stderr[-2000:])


def test_eight_python_threads():
    """8 Python threads calling forward and backward at once (sharing nbconv's workers): no error, no abort,
    every result bitwise equal to a serial run."""
    calls = workload()
    baseline = run_workload(calls)
    assert not hammer(calls, baseline)
    assert_bitwise(run_workload(calls), baseline, "after the threads")


_SUBPROCESS = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    import numba
    import numpy as np
    import test_reliability as T
    numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)  # the program starts Numba's threads
    print("LAYER", numba.threading_layer())
    calls = T.workload()
    baseline = T.run_workload(calls)
    problems = T.hammer(calls, baseline)
    print("PROBLEMS", len(problems))
    print(*problems[:5], sep="\\n")
    np.savez({out!r}, **{{f"{{k}}-{{i}}": a for k, v in baseline.items() for i, a in enumerate(v)}})
""")


def test_eight_python_threads_workqueue_layer(tmp_path):
    """The same in a program that started Numba's workqueue layer (which aborts the process when two threads
    use it at once; nbconv's kernels do not use it); its results are also the bits of this process."""
    out = tmp_path / "results.npz"
    env = dict(os.environ, NUMBA_THREADING_LAYER="workqueue")
    tests = os.path.dirname(os.path.abspath(__file__))
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(tests), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-c", _SUBPROCESS.format(tests=tests, out=str(out))], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"exit code {proc.returncode}\n{proc.stdout}\n{proc.stderr[-3000:]}"
    assert "LAYER workqueue" in proc.stdout, proc.stdout
    assert "PROBLEMS 0" in proc.stdout, proc.stdout
    baseline = run_workload(workload())
    with np.load(out) as saved:
        other = {k: tuple(saved[f"{k}-{i}"] for i in range(len(v))) for k, v in baseline.items()}
    assert_bitwise(other, baseline, "under the workqueue layer vs this process")


# ---------------------------------------------------------------------------------------------------
# 64-bit index arithmetic: an input of more than 2**31 elements (about 45 GB of memory at peak)
# ---------------------------------------------------------------------------------------------------

def _window(x, n, i, j, k):
    """x[n, i-1 : i-1+k, j-1 : j-1+k, :] of x zero-padded by 1 (float64)."""
    h, w = x.shape[1:3]
    out = np.zeros((k, k, x.shape[3]))
    i0, j0 = i - 1, j - 1
    r0, r1, c0, c1 = max(i0, 0), min(i0 + k, h), max(j0, 0), min(j0 + k, w)
    out[r0 - i0:r1 - i0, c0 - j0:c1 - j0] = x[n, r0:r1, c0:c1]
    return out


@pytest.mark.slow
@pytest.mark.parametrize("groups", (1, 4), ids=("dense", "depthwise"))
def test_more_than_2_31_elements(groups):
    """Forward, input, weight and bias gradients on x of 2 * 16384 * 16400 * 4 > 2**31 float32 elements;
    outputs checked where flat indices exceed 2**31 (the last rows of the second image) and elsewhere.
    The output gradient is zero but at a few positions, so the gradients have exact small references."""
    n, h, w_, c = 2, 16384, 16400, 4
    assert n * h * w_ * c > 2 ** 31
    rng = np.random.default_rng(5)
    x = np.empty((n, h, w_, c), np.float32)
    rng.random(out=x.reshape(-1), dtype=np.float32)
    c_out = 2 if groups == 1 else 8
    w = randn(rng, (3, 3, c // groups, c_out), np.float32)
    b = randn(rng, (c_out,), np.float32)
    wd = w.astype(np.float64)
    dense_w = np.zeros((3, 3, c, c_out))            # the grouped weight as a dense one, for the checks
    cgo = c_out // groups
    for g in range(groups):
        dense_w[:, :, g * (c // groups):(g + 1) * (c // groups), g * cgo:(g + 1) * cgo] = \
            wd[:, :, :, g * cgo:(g + 1) * cgo]
    y = nbconv.conv2d(x, w, b, padding=1, groups=groups)
    assert y.shape == (n, h, w_, c_out)
    points = [(0, 0, 0), (0, h // 2, w_ - 1), (1, h - 1, w_ - 1), (1, h - 2, 17), (1, h - 31, w_ // 2), (1, 0, 3)]
    points += [(1, int(i), int(j)) for i, j in zip(rng.integers(h - 32, h, 8), rng.integers(0, w_, 8))]
    for p in points:
        expected = np.einsum("abc,abco->o", _window(x, *p, 3), dense_w) + b
        np.testing.assert_allclose(y[p], expected, rtol=1e-4, atol=1e-4, err_msg=str(p))
    del y
    gy = np.zeros((n, h, w_, c_out), np.float32)
    sparse = [(0, 0, 0), (1, h - 1, w_ - 1), (1, h - 5, 3), (1, h - 20, w_ // 3)]
    for p in sparse:
        gy[p] = randn(rng, (c_out,), np.float32)
    grads = nbconv.conv2d_backward(gy, x, w, padding=1, groups=groups)
    np.testing.assert_allclose(grads.bias, sum(gy[p].astype(np.float64) for p in sparse), rtol=1e-5, atol=1e-6)
    dense_gw = sum(np.einsum("abc,o->abco", _window(x, *p, 3), gy[p].astype(np.float64)) for p in sparse)
    expected_gw = np.stack([dense_gw[:, :, (o // cgo) * (c // groups):(o // cgo + 1) * (c // groups), o]
                            for o in range(c_out)], axis=-1)
    np.testing.assert_allclose(grads.weight, expected_gw, rtol=1e-4, atol=1e-5)
    gx = grads.input
    expected_gx = {}
    for (pn, pi, pj) in sparse:
        for kh in range(3):
            for kw in range(3):
                i, j = pi + kh - 1, pj + kw - 1
                if 0 <= i < h and 0 <= j < w_:
                    expected_gx[pn, i, j] = expected_gx.get((pn, i, j), 0) + dense_w[kh, kw] @ gy[pn, pi, pj]
    for p, e in expected_gx.items():
        np.testing.assert_allclose(gx[p], e, rtol=1e-4, atol=1e-5, err_msg=str(p))
    assert np.count_nonzero(gx) == sum(np.count_nonzero(e) for e in expected_gx.values())


@pytest.mark.slow
@pytest.mark.parametrize("groups", (1, 2), ids=("dense", "depthwise"))
def test_more_than_2_31_elements_strided(groups):
    """The memory-light variant (about 9 GB): x of 32768 * 32769 * 2 > 2**31 float32 elements read in
    place (no padding copy) with large strides, so the output is small and checked in full, forward,
    weight and bias gradients; its last rows are read from flat indices beyond 2**31."""
    h, w_, c = 32768, 32769, 2
    assert h * w_ * c > 2 ** 31
    rng = np.random.default_rng(6)
    x = np.empty((1, h, w_, c), np.float32)
    rng.random(out=x.reshape(-1), dtype=np.float32)
    c_out = 4
    w = randn(rng, (3, 3, c // groups, c_out), np.float32)
    b = randn(rng, (c_out,), np.float32)
    kw = dict(stride=(163, 4), dilation=2, groups=groups)
    y = nbconv.conv2d(x, w, b, **kw)
    oh, ow = (h - 5) // 163 + 1, (w_ - 5) // 4 + 1
    assert y.shape == (1, oh, ow, c_out) and (oh - 1) * 163 + 4 == h - 1
    cgi, cgo = c // groups, c_out // groups
    patches = {(kh, kw_): x[0, 2 * kh:2 * kh + 163 * (oh - 1) + 1:163, 2 * kw_:2 * kw_ + 4 * (ow - 1) + 1:4]
               .astype(np.float64) for kh in range(3) for kw_ in range(3)}
    expected = np.zeros((oh, ow, c_out)) + b
    for (kh, kw_), patch in patches.items():
        for g in range(groups):
            out_g, in_g = slice(g * cgo, (g + 1) * cgo), slice(g * cgi, (g + 1) * cgi)
            expected[..., out_g] += patch[..., in_g] @ w[kh, kw_, :, out_g]
    np.testing.assert_allclose(y[0], expected, rtol=1e-4, atol=1e-4)
    gy = randn(rng, y.shape, np.float32)
    grads = nbconv.conv2d_backward(gy, x, w, needs=("weight", "bias"), **kw)
    gy64 = gy[0].astype(np.float64).reshape(-1, c_out)
    expected_gw = np.zeros(w.shape)
    for (kh, kw_), patch in patches.items():
        p = patch.reshape(-1, c)
        for g in range(groups):
            out_g, in_g = slice(g * cgo, (g + 1) * cgo), slice(g * cgi, (g + 1) * cgi)
            expected_gw[kh, kw_, :, out_g] = p[:, in_g].T @ gy64[:, out_g]
    np.testing.assert_allclose(grads.weight, expected_gw, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(grads.bias, gy64.sum(axis=0), rtol=1e-4, atol=1e-3)
    if groups == 1:
        return   # the dense input gradient goes through a padded buffer and a fold: about 17 GB more
    # depthwise input gradient, written in place: x is not read, so a zero-stride stand-in keeps memory low
    del x, patches
    gx = nbconv.conv2d_backward(gy, np.broadcast_to(np.float32(0), (1, h, w_, c)), w, needs=("input",), **kw).input
    assert gx.shape == (1, h, w_, c)
    rows = sorted({i * 163 + 2 * kh for i in range(oh) for kh in range(3)})
    where = {r: k for k, r in enumerate(rows)}
    expected_gx = np.zeros((len(rows), w_, c))
    m = c_out // c   # depthwise: output channel o reads input channel o // m
    for i in range(oh):
        for kh in range(3):
            for kw_ in range(3):
                cols = np.arange(ow) * 4 + 2 * kw_
                contrib = gy[0, i].astype(np.float64) * w[kh, kw_, 0]          # (ow, c_out)
                expected_gx[where[i * 163 + 2 * kh], cols] += contrib.reshape(ow, c, m).sum(axis=-1)
    np.testing.assert_allclose(gx[0, rows], expected_gx, rtol=1e-4, atol=1e-4)
    assert np.count_nonzero(gx) == np.count_nonzero(expected_gx)


def test_tape_from_eight_threads():
    """Eight threads each record conv -> relu -> conv_transpose -> sum on the tape and backpropagate,
    half of them with an extra forward under no_grad (thread-local: it must not stop the others'
    recording): every gradient is bitwise the serial one."""
    rng = np.random.default_rng(3)
    x = randn(rng, (2, 9, 8, 6), np.float32)
    w = randn(rng, (3, 3, 3, 8), np.float32)      # 2 groups
    b = randn(rng, (8,), np.float32)
    wt = randn(rng, (2, 2, 5, 8), np.float32)     # transposed: 8 -> 5 channels

    def run(with_no_grad):
        tx, tw, tb, twt = (nbconv.Tensor(a, requires_grad=True) for a in (x, w, b, wt))
        if with_no_grad:
            with nbconv.no_grad():
                assert not nbconv.conv2d(tx, tw, tb, groups=2).requires_grad
        h = nbconv.relu(nbconv.conv2d(tx, tw, tb, padding=1, groups=2, padding_mode="reflect"))
        loss = (nbconv.conv_transpose2d(h, twt, stride=2) ** 2).sum()
        loss.backward()
        return tuple(t.grad for t in (tx, tw, tb, twt))

    serial = run(False)
    results, errors = [None] * 8, []
    barrier = threading.Barrier(8)

    def worker(k):
        try:
            barrier.wait()
            results[k] = [run(k % 2 == 1) for _ in range(3)]
        except BaseException as e:   # noqa: BLE001 (reported below)
            errors.append(f"thread {k}: {type(e).__name__}: {e}")

    threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors and not any(t.is_alive() for t in threads), errors
    for per_thread in results:
        for grads in per_thread:
            for g, e in zip(grads, serial):
                assert g.tobytes() == e.tobytes()


WORKSPACE_CASES = {  # (x shape, w shape, groups): lane padding of grad_out, a weight larger than the images
    "one_output_channel_per_group": ((16, 16, 16, 64), (3, 3, 2, 32), 32),
    "large_weight_small_map": ((1, 4, 4, 256), (3, 3, 256, 256), 1),
    "dense": ((8, 12, 12, 32), (3, 3, 32, 48), 1),
    "few_per_group": ((8, 12, 12, 32), (3, 3, 4, 32), 8),  # grad_out rotated within each group, x as it is
    "three_per_group": ((8, 12, 12, 24), (3, 3, 3, 24), 8),  # as depthwise over a spread copy of x
    "few_per_group_small_map": ((1, 4, 4, 256), (3, 3, 4, 256), 64),  # partial sums: fewer slots
    "depthwise_large_kernel_small_map": ((1, 4, 4, 64), (5, 5, 1, 256), 64),
}


@pytest.mark.parametrize("case", list(WORKSPACE_CASES))
def test_weight_gradient_workspace_is_bounded_by_the_operands(rng, case):
    """Memory allocated while computing the weight gradient (tracemalloc sees NumPy's allocations):
    at most twice the largest operand plus the result, whatever the channel grouping."""
    import tracemalloc
    xs, ws, groups = WORKSPACE_CASES[case]
    x, w = randn(rng, xs, np.float32), randn(rng, ws, np.float32)
    gy = randn(rng, nbconv.conv2d(x, w, padding=1, groups=groups).shape, np.float32)
    nbconv.conv2d_backward(gy, x, w, padding=1, groups=groups, needs=("weight",))  # compile outside the trace
    tracemalloc.start()
    try:
        nbconv.conv2d_backward(gy, x, w, padding=1, groups=groups, needs=("weight",))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    largest = max(x.nbytes, w.nbytes, gy.nbytes)
    assert peak <= 2 * largest + w.nbytes + (1 << 16), (peak, largest)


HUGE_PARAMETER_CALLS = {  # name -> (call, the sizes of every array involved, the result included)
    "conv2d_backward_stride_1e9": (
        lambda: nbconv.conv2d_backward(np.ones((1, 1, 1, 16)), np.ones((1, 4, 4, 16)), np.ones((3, 3, 16, 16)),
                                       stride=10 ** 9),
        16 + 256 + 2304 + 256 + 2304),
    "conv_transpose1d_stride_1e9": (
        lambda: nbconv.conv_transpose1d(np.ones((1, 1, 4)), np.ones((3, 16, 4)), stride=10 ** 9),
        4 + 192 + 48),
    "conv3d_backward_dilation_and_stride_1e9": (
        lambda: nbconv.conv3d_backward(np.ones((1, 1, 1, 1, 2)), np.ones((1, 3, 3, 3, 2)), np.ones((2, 2, 2, 2, 2)),
                                       stride=10 ** 9, dilation=(1, 1, 2), padding=((0, 0), (0, 0), (0, 10 ** 0))),
        2 + 54 + 32 + 54 + 32),
    "conv1d_backward_replicate_pad_1e6": (
        lambda: nbconv.conv1d_backward(np.ones((1, 2 * 10 ** 6 + 2, 1)), np.ones((1, 4, 1)), np.ones((3, 1, 1)),
                                       padding=10 ** 6, padding_mode="replicate"),
        3 * (2 * 10 ** 6 + 2) + 4),
}


@pytest.mark.parametrize("name", list(HUGE_PARAMETER_CALLS))
def test_work_follows_array_sizes_not_parameter_values(monkeypatch, name):
    """Huge strides, dilations and paddings: the kernels launched and the work they are given are bounded
    by the sizes of the arrays involved (counted through the kernel-call hook, not timed)."""
    call, sizes = HUGE_PARAMETER_CALLS[name]
    real_call = _cpu.call
    launched = []

    def counting_call(dispatcher, *args, items=None, work=None):
        launched.append(max(work or 0, items or 0))  # the items shared among threads follow the sizes too
        return real_call(dispatcher, *args, items=items, work=work)

    monkeypatch.setattr(_cpu, "call", counting_call)
    call()
    assert len(launched) <= 30, launched
    assert sum(launched) <= 100 * sizes, (launched, sizes)
