"""Shape rules and argument validation for convolutions (pure Python, no kernels).

Everything user-facing is parsed here exactly once into a :class:`ConvParams`;
kernels and backends never re-parse user input.
"""
from __future__ import annotations

import numbers
from typing import NamedTuple

import numpy as np

from ._padding import MODES as PADDING_MODES

SUPPORTED_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
_DTYPE_NAMES = "float32 or float64"
MAX_PARAM = 2 ** 62  # stride, dilation and padding values: kernels index in 64 bits


class ConvParams(NamedTuple):
    """A convolution's parameters, one entry per spatial dim."""

    stride: tuple
    pads: tuple  # ((before, after), ...)
    dilation: tuple
    groups: int
    mode: str  # one of PADDING_MODES


def _is_int(v):
    return isinstance(v, (numbers.Integral, np.integer)) and not isinstance(v, (bool, np.bool_))


def spatial_tuple(value, nd, name, minimum=1):
    """`value` as a tuple of `nd` ints, each >= `minimum`; ValueError/TypeError naming `name`."""
    if _is_int(value):
        values = (int(value),) * nd
    elif isinstance(value, (tuple, list)):
        if len(value) != nd:
            raise ValueError(f"{name} must be an int or {nd} ints (one per spatial dim), got {value!r}")
        if not all(_is_int(v) for v in value):
            raise TypeError(f"{name} must contain ints, got {value!r}")
        values = tuple(int(v) for v in value)
    else:
        raise TypeError(f"{name} must be an int or a tuple of {nd} ints, got {value!r}")
    for v in values:
        if v < minimum:
            raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
        if v > MAX_PARAM:
            raise ValueError(f"{name} must be at most 2**62 (64-bit index arithmetic), got {value!r}")
    return values


def _explicit_pads(padding, nd):
    """Integer forms of `padding` as ((before, after), ...)."""
    if _is_int(padding):
        pads = ((int(padding), int(padding)),) * nd
    elif isinstance(padding, (tuple, list)):
        if len(padding) != nd:
            raise ValueError(
                f"padding must be an int, {nd} ints, {nd} (before, after) pairs, 'same' or 'valid', "
                f"got {padding!r}")
        pads = []
        for item in padding:
            if _is_int(item):
                pads.append((int(item), int(item)))
            elif isinstance(item, (tuple, list)) and len(item) == 2 and all(_is_int(v) for v in item):
                pads.append((int(item[0]), int(item[1])))
            else:
                raise ValueError(
                    f"padding entries must be ints or (before, after) pairs of ints, got {padding!r}")
        pads = tuple(pads)
    else:
        raise TypeError(
            f"padding must be an int, a tuple, 'same' or 'valid', got {type(padding).__name__} {padding!r}")
    for before, after in pads:
        if before < 0 or after < 0:
            raise ValueError(f"padding must be non-negative, got {padding!r}")
        if before > MAX_PARAM or after > MAX_PARAM:
            raise ValueError(f"padding must be at most 2**62 (64-bit index arithmetic), got {padding!r}")
    return pads


def parse_padding(padding, in_spatial, k_spatial, stride, dilation):
    """Per-dim (before, after) pads for `padding`; "same" uses the TensorFlow/JAX split."""
    nd = len(in_spatial)
    if isinstance(padding, str):
        if padding == "valid":
            return ((0, 0),) * nd
        if padding == "same":
            pads = []
            for n, k, s, d in zip(in_spatial, k_spatial, stride, dilation):
                out = -(-n // s)
                total = max((out - 1) * s + d * (k - 1) + 1 - n, 0)
                pads.append((total // 2, total - total // 2))
            return tuple(pads)
        raise ValueError(f"padding must be 'same', 'valid', an int or a tuple, got {padding!r}")
    return _explicit_pads(padding, nd)


def check_dtypes(**arrays):
    """TypeError unless every non-None array is float32/float64 and all share one dtype; the dtype."""
    dtype = None
    first = None
    for name, a in arrays.items():
        if a is None:
            continue
        dt = np.dtype(a.dtype)
        if dt not in SUPPORTED_DTYPES:
            if not dt.isnative and dt.newbyteorder("=") in SUPPORTED_DTYPES:
                raise TypeError(f"{name} has dtype {dt} (non-native byte order); nbconv supports {_DTYPE_NAMES} "
                                f"in native byte order: pass {name}.astype({dt.newbyteorder('=').name})")
            raise TypeError(f"{name} has dtype {dt}; nbconv supports {_DTYPE_NAMES}")
        if dtype is None:
            dtype, first = dt, name
        elif dt != dtype:
            raise TypeError(f"{name} has dtype {dt} but {first} has dtype {dtype}; all arrays must share one dtype")
    return dtype


def check_ndim(a, ndim, name, layout):
    if a.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D {layout}, got shape {tuple(a.shape)}")


_PARAMS_MEMO = {}  # results of valid validations whose arguments are all plain (at most _PARAMS_MEMO_SIZE of them)
_PARAMS_MEMO_SIZE = 256


def plain(v):
    """Whether v is an int, a str or a tuple of plain values: equal such values (unlike True == 1, or 1 == 1.0) pass
    or fail validation alike."""
    t = type(v)
    return t is int or t is str or (t is tuple and all(map(plain, v)))


def remembered(key):
    """The validation result kept under `key` by `remember`, or None."""
    return _PARAMS_MEMO.get(key)


def remember(key, result):
    """Keep an immutable validation result under `key` (a tuple whose first item names the validation) and return
    it; the memo holds at most _PARAMS_MEMO_SIZE results."""
    if len(_PARAMS_MEMO) >= _PARAMS_MEMO_SIZE:
        _PARAMS_MEMO.clear()
    _PARAMS_MEMO[key] = result
    return result


def _remembered(validate, *args):
    """validate(*args), remembered for plain arguments (validate returns immutable values)."""
    if not plain(args):
        return validate(*args)
    key = (validate, *args)
    result = remembered(key)
    return remember(key, validate(*args)) if result is None else result


def conv_params(x_shape, w_shape, *, stride, padding, dilation, groups, padding_mode):
    """Validate a forward convolution of `x_shape` (N, *spatial, C_in) with `w_shape`
    (*kernel, C_in // groups, C_out) and return its ConvParams (remembered for plain arguments)."""
    return _remembered(_conv_params, x_shape, w_shape, stride, padding, dilation, groups, padding_mode)


def _conv_params(x_shape, w_shape, stride, padding, dilation, groups, padding_mode):
    nd = len(x_shape) - 2
    stride = spatial_tuple(stride, nd, "stride")
    dilation = spatial_tuple(dilation, nd, "dilation")
    groups = _check_groups(groups, x_shape[-1], w_shape, "x", "C_in")
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
    in_spatial = tuple(x_shape[1:-1])
    k_spatial = tuple(w_shape[:-2])
    pads = parse_padding(padding, in_spatial, k_spatial, stride, dilation)
    for i, (n, (before, after)) in enumerate(zip(in_spatial, pads)):
        if padding_mode == "reflect" and (before >= n or after >= n):
            raise ValueError(
                f"reflect padding {pads[i]} must be smaller than the input size {n} in spatial dim {i} "
                f"(x.shape={tuple(x_shape)})")
        if padding_mode == "circular" and (before > n or after > n):
            raise ValueError(
                f"circular padding {pads[i]} must not exceed the input size {n} in spatial dim {i} "
                f"(x.shape={tuple(x_shape)})")
        if padding_mode == "replicate" and n == 0 and before + after > 0:
            raise ValueError(f"replicate padding needs a non-empty input, got x.shape={tuple(x_shape)}")
    for i, (n, (before, after), k, d) in enumerate(zip(in_spatial, pads, k_spatial, dilation)):
        if n + before + after < d * (k - 1) + 1:
            raise ValueError(
                f"kernel of size {k} with dilation {d} (extent {d * (k - 1) + 1}) is larger than the "
                f"padded input size {n + before + after} in spatial dim {i} "
                f"(x.shape={tuple(x_shape)}, w.shape={tuple(w_shape)}, padding={pads[i]})")
    return ConvParams(stride, pads, dilation, groups, padding_mode)


def _check_groups(groups, channels, w_shape, x_name, c_name):
    if not _is_int(groups):
        raise TypeError(f"groups must be an int, got {groups!r}")
    groups = int(groups)
    if groups < 1:
        raise ValueError(f"groups must be >= 1, got {groups}")
    c_out = w_shape[-1]
    if channels % groups:
        raise ValueError(f"groups={groups} does not divide the {channels} channels of {x_name}")
    if c_out % groups:
        raise ValueError(f"groups={groups} does not divide the {c_out} output channels of w (w.shape={tuple(w_shape)})")
    if w_shape[-2] * groups != channels:
        raise ValueError(
            f"{x_name} has {channels} channels but w expects {c_name} // groups = {w_shape[-2]} with "
            f"groups={groups} (w.shape={tuple(w_shape)})")
    if channels == 0 or c_out == 0:
        raise ValueError(f"channel counts must be positive, got {x_name} channels {channels}, w.shape={tuple(w_shape)}")
    if any(k < 1 for k in w_shape[:-2]):
        raise ValueError(f"kernel sizes must be positive, got w.shape={tuple(w_shape)}")
    return groups


def conv_output_shape(x_shape, w_shape, params):
    """(N, *out_spatial, C_out) of a forward convolution."""
    spatial = []
    for n, (before, after), k, s, d in zip(x_shape[1:-1], params.pads, w_shape[:-2], params.stride, params.dilation):
        spatial.append((n + before + after - d * (k - 1) - 1) // s + 1)
    return (x_shape[0], *spatial, w_shape[-1])


def transpose_params(x_shape, w_shape, *, stride, padding, output_padding, dilation, groups):
    """Validate a transposed convolution of `x_shape` (N, *spatial, C_in) with `w_shape`
    (*kernel, C_out // groups, C_in); return (ConvParams, output_padding tuple, output shape) (remembered for plain
    arguments)."""
    return _remembered(_transpose_params, x_shape, w_shape, stride, padding, output_padding, dilation, groups)


def _transpose_params(x_shape, w_shape, stride, padding, output_padding, dilation, groups):
    nd = len(x_shape) - 2
    stride = spatial_tuple(stride, nd, "stride")
    dilation = spatial_tuple(dilation, nd, "dilation")
    output_padding = spatial_tuple(output_padding, nd, "output_padding", minimum=0)
    if not _is_int(groups):
        raise TypeError(f"groups must be an int, got {groups!r}")
    groups = int(groups)
    if groups < 1:
        raise ValueError(f"groups must be >= 1, got {groups}")
    c_in = x_shape[-1]
    if w_shape[-1] != c_in:
        raise ValueError(
            f"x has {c_in} channels but w expects C_in = {w_shape[-1]} in its last axis (w.shape={tuple(w_shape)})")
    if c_in % groups:
        raise ValueError(f"groups={groups} does not divide the {c_in} channels of x")
    if c_in == 0 or w_shape[-2] == 0:
        raise ValueError(f"channel counts must be positive, got x channels {c_in}, w.shape={tuple(w_shape)}")
    if any(k < 1 for k in w_shape[:-2]):
        raise ValueError(f"kernel sizes must be positive, got w.shape={tuple(w_shape)}")
    if isinstance(padding, str):
        if padding != "valid":
            raise ValueError(f"padding for a transposed convolution must be 'valid', an int or a tuple, got {padding!r}")
        padding = 0
    pads = _explicit_pads(padding, nd)
    spatial = []
    for i, (n, (before, after), k, s, d, op) in enumerate(
            zip(x_shape[1:-1], pads, w_shape[:-2], stride, dilation, output_padding)):
        if op >= max(s, d):
            raise ValueError(
                f"output_padding {output_padding} must be smaller than max(stride, dilation) = {max(s, d)} "
                f"in spatial dim {i}")
        size = (n - 1) * s - before - after + d * (k - 1) + op + 1
        if n < 1 or size < 1:
            raise ValueError(
                f"transposed convolution output size would be {size} in spatial dim {i} "
                f"(x.shape={tuple(x_shape)}, w.shape={tuple(w_shape)}, padding={pads[i]})")
        spatial.append(size)
    params = ConvParams(stride, pads, dilation, groups, "zeros")
    return params, output_padding, (x_shape[0], *spatial, w_shape[-2] * groups)
