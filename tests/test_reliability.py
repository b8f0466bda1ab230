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
from nbconv import _cpu

try:
    from . import reference as R
except ImportError:   # tests/ is not a package: pytest puts it on sys.path
    import reference as R

SPATIAL = {1: (7,), 2: (5, 6)}
FUNCS = {  # name -> (kind, nd, tape)
    "conv1d": ("fwd", 1, False), "conv2d": ("fwd", 2, False),
    "conv1d_backward": ("bwd", 1, False), "conv2d_backward": ("bwd", 2, False),
    "conv_transpose1d": ("tr", 1, False), "conv_transpose2d": ("tr", 2, False),
    "tape.conv1d": ("fwd", 1, True), "tape.conv2d": ("fwd", 2, True),
    "tape.conv_transpose1d": ("tr", 1, True), "tape.conv_transpose2d": ("tr", 2, True),
}


# ---------------------------------------------------------------------------------------------------
# the valid call every bad input is derived from
# ---------------------------------------------------------------------------------------------------

class Call:
    """A call of one public function: its arrays (x, w, bias, grad_out, out) and keyword parameters."""

    def __init__(self, name):
        self.name = name
        self.kind, self.nd, self.tape = FUNCS[name]
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


BATTERY_CASES = [pytest.param(func, mutation, id=f"{func}-{name}")
                 for func, (kind, nd, tape) in FUNCS.items()
                 for name, kinds, mutation in BATTERY if kind in kinds]


def snapshot(arrays):
    return {k: (v.copy(), v.strides, v.flags.writeable) for k, v in arrays.items() if isinstance(v, np.ndarray)}


@pytest.fixture
def no_kernels(monkeypatch):
    """Any CPU kernel entry point reached during the test fails it: errors come before any kernel."""
    def refuse(*args, **kwargs):
        raise AssertionError("a kernel ran before the argument error was raised")
    for entry in ("forward", "grad_input", "grad_weight", "grad_bias", "transpose"):
        monkeypatch.setattr(_cpu, entry, refuse)


@pytest.mark.parametrize("func", list(FUNCS))
def test_battery_base_call_is_valid(func):
    """The call every bad input is derived from succeeds (so each failure below is the mutation's)."""
    call = Call(func)
    result = call.invoke()
    if call.kind == "bwd":
        assert [g.shape for g in result] == [call.a("x").shape, call.a("w").shape, (6,)]
    else:
        data = result.data if call.tape else result
        assert data.shape == call.y_shape


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
