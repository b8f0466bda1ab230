"""Benchmark shapes and seeded data builders shared by the asv suites.

The named suite -- layers of real networks, the shapes `python -m nbconv bench` runs -- is defined once,
in nbconv/_bench_suite.py; SUITE_NAMES (the parameter of bench_conv's Suite* classes) and the issue-3
and issue-10 tuples below come from there.

APPEND ONLY: asv keys its stored results by parameter value, so changing or reordering an entry would
silently break the history of every benchmark that uses it. Add new shapes at the end of a list (new
suite records under new names).

Layouts are nbconv's: activations channels-last, weights (KH, KW, C_in // groups, C_out).
"""
import numpy as np

from nbconv import _bench_suite

DTYPE = np.float32
SEED = _bench_suite.SEED

# The named suite's record names: the parameter of the Suite* benchmarks.
SUITE_NAMES = [shape.name for shape in _bench_suite.SUITE]

# (N, H, W, C_in, C_out, K, stride, pad, groups): conv2d forward and backward. The first seven are the
# shapes of issue 3 (the last of them depthwise): _bench_suite.ISSUE3's 2-D records as tuples.
CONV2D_SHAPES = [shape.legacy_tuple() for shape in _bench_suite.ISSUE3 if shape.dims == 2]

# (N, H, W, C, C, K, stride, pad, groups) with groups == C: depthwise forward and backward.
# (CONV2D_SHAPES[6] is depthwise too and runs in the conv2d classes.)
DEPTHWISE_SHAPES = [
    (8, 112, 112, 32, 32, 3, 1, 1, 32),
    (16, 28, 28, 256, 256, 3, 2, 1, 256),
]

# (N, L, C_in, C_out, K, stride, pad, groups): conv1d forward and backward.
CONV1D_SHAPES = [
    (16, 1024, 64, 64, 5, 1, 2, 1),
]

# (N, H, W, C_in, C_out, K, stride, pad, groups): conv_transpose2d of x (N, H, W, C_in) with
# w (K, K, C_out // groups, C_in) into (N, H_out, W_out, C_out) (a 2x upsampling decoder layer).
TRANSPOSE2D_SHAPES = [
    (8, 28, 28, 64, 32, 4, 2, 1, 1),
]


def _normal(rng, shape, scale, dtype):
    return (rng.standard_normal(shape) * scale).astype(dtype)


def conv_output_size(size, k, stride, pad):
    return (size + 2 * pad - k) // stride + 1


def conv2d_data(shape, dtype=DTYPE, seed=SEED):
    """x (N, H, W, C_in), w (K, K, C_in // groups, C_out), bias (C_out,) and a grad_out for them."""
    n, h, w_, ci, co, k, s, p, g = shape
    rng = np.random.default_rng(seed)
    x = _normal(rng, (n, h, w_, ci), 1.0, dtype)
    w = _normal(rng, (k, k, ci // g, co), (k * k * ci // g) ** -0.5, dtype)
    b = _normal(rng, (co,), 0.1, dtype)
    gy = _normal(rng, (n, conv_output_size(h, k, s, p), conv_output_size(w_, k, s, p), co), 1.0, dtype)
    return x, w, b, gy


def conv1d_data(shape, dtype=DTYPE, seed=SEED):
    """x (N, L, C_in), w (K, C_in // groups, C_out), bias (C_out,) and a grad_out for them."""
    n, length, ci, co, k, s, p, g = shape
    rng = np.random.default_rng(seed)
    x = _normal(rng, (n, length, ci), 1.0, dtype)
    w = _normal(rng, (k, ci // g, co), (k * ci // g) ** -0.5, dtype)
    b = _normal(rng, (co,), 0.1, dtype)
    gy = _normal(rng, (n, conv_output_size(length, k, s, p), co), 1.0, dtype)
    return x, w, b, gy


def transpose2d_data(shape, dtype=DTYPE, seed=SEED):
    """x (N, H, W, C_in), w (K, K, C_out // groups, C_in), bias (C_out,) for conv_transpose2d."""
    n, h, w_, ci, co, k, s, p, g = shape
    rng = np.random.default_rng(seed)
    x = _normal(rng, (n, h, w_, ci), 1.0, dtype)
    w = _normal(rng, (k, k, co // g, ci), (k * k * ci // g) ** -0.5, dtype)
    b = _normal(rng, (co,), 0.1, dtype)
    return x, w, b


def conv2d_flops(shape):
    """Multiply-adds x 2 of one conv2d forward (the backward w.r.t. input and weight costs twice this)."""
    n, h, w_, ci, co, k, s, p, g = shape
    return 2.0 * n * conv_output_size(h, k, s, p) * conv_output_size(w_, k, s, p) * co * k * k * (ci // g)


def conv1d_flops(shape):
    n, length, ci, co, k, s, p, g = shape
    return 2.0 * n * conv_output_size(length, k, s, p) * co * k * (ci // g)


def transpose2d_flops(shape):
    """Each input pixel scatters K*K*(C_out // groups) multiply-adds per input channel."""
    n, h, w_, ci, co, k, s, p, g = shape
    return 2.0 * n * h * w_ * ci * k * k * (co // g)


# (N, D, H, W, C_in, C_out, K, stride, pad, groups), stride and pad an int or a (D, H, W) triple: conv3d
# forward and backward, the shapes of issue 10 (a 3-D U-Net encoder layer, a C3D-style video layer with a
# temporal stride, X3D's depthwise 3x3x3, an I3D/X3D 1x1x1 projection): _bench_suite.SHAPES_3D as tuples.
CONV3D_SHAPES = [shape.legacy_tuple() for shape in _bench_suite.SHAPES_3D]


def conv3d_output_sizes(shape):
    """(D_out, H_out, W_out) of a CONV3D_SHAPES entry (stride and pad an int or one per dimension)."""
    n, d, h, w_, ci, co, k, s, p, g = shape
    per_dim = [v if isinstance(v, tuple) else (v,) * 3 for v in (s, p)]
    return tuple(conv_output_size(size, k, st, pd) for size, st, pd in zip((d, h, w_), *per_dim))


def conv3d_data(shape, dtype=DTYPE, seed=SEED):
    """x (N, D, H, W, C_in), w (K, K, K, C_in // groups, C_out), bias (C_out,) and a grad_out for them."""
    n, d, h, w_, ci, co, k, s, p, g = shape
    rng = np.random.default_rng(seed)
    x = _normal(rng, (n, d, h, w_, ci), 1.0, dtype)
    w = _normal(rng, (k, k, k, ci // g, co), (k * k * k * ci // g) ** -0.5, dtype)
    b = _normal(rng, (co,), 0.1, dtype)
    gy = _normal(rng, (n, *conv3d_output_sizes(shape), co), 1.0, dtype)
    return x, w, b, gy


def conv3d_flops(shape):
    """Multiply-adds x 2 of one conv3d forward (the backward w.r.t. input and weight costs twice this)."""
    n, d, h, w_, ci, co, k, s, p, g = shape
    d_out, h_out, w_out = conv3d_output_sizes(shape)
    return 2.0 * n * d_out * h_out * w_out * co * k * k * k * (ci // g)
