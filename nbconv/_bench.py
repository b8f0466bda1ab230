"""`python -m nbconv bench`: nbconv's conv2d and conv3d forward and backward against PyTorch and NumPy im2col.

One table per dimension count (`--dims`: 2-D, then 3-D), one row per shape: nbconv's forward and
backward (gradients w.r.t. input, weight and bias) time and GFLOP/s, PyTorch's forward and backward
time on channels_last (channels_last_3d) tensors when torch is installed, the ratio of the
forward+backward times (nbconv / PyTorch, lower is better), and, for 2-D only, the classic NumPy
im2col forward (`as_strided` windows + one matmul per group). A final row gives geometric means.

How it measures: everything runs in this one process, each function is called once before timing
(compilation or cache loading excluded), and each figure is the minimum time of one call over at
least `--repeats` calls (more for short calls, up to 50 ms of them: on a busy machine a parallel
call now and then waits a whole scheduler slice for one of its threads). The three
contenders run in blocks, all shapes of one before the next, because PyTorch's bundled OpenMP and
numba's threads disturb each other when their calls alternate; `--rounds N` runs the three blocks N
times over and keeps the minimum, so that a busy spell on a shared machine hits one round only.
"""
import argparse
import contextlib
import json
import math
import os
import platform
import sys
import time

import numpy as np
from numpy.lib.stride_tricks import as_strided

from . import _cli_progress
from ._cli_args import positive_int, thread_count

# (N, H, W, C_in, C_out, K, stride, pad, groups): the shapes of issue 3, the same as the first seven
# entries of benchmarks/common.py's CONV2D_SHAPES (a test keeps the two equal).
SHAPES = [
    (10, 32, 32, 8, 16, 3, 1, 0, 1),
    (64, 28, 28, 1, 32, 3, 1, 0, 1),
    (64, 26, 26, 32, 64, 3, 1, 0, 1),
    (8, 56, 56, 64, 64, 3, 1, 1, 1),
    (8, 28, 28, 128, 128, 3, 2, 1, 1),
    (32, 14, 14, 256, 256, 1, 1, 0, 1),
    (8, 56, 56, 64, 64, 3, 1, 1, 64),
]
# (N, D, H, W, C_in, C_out, K, stride, pad, groups), stride and pad an int or a (D, H, W) triple: the
# shapes of issue 10, the same as benchmarks/common.py's CONV3D_SHAPES (a test keeps the two equal).
SHAPES_3D = [
    (2, 16, 32, 32, 32, 32, 3, 1, 1, 1),          # 3-D U-Net encoder layer (Cicek et al. 2016)
    (4, 16, 28, 28, 64, 64, 3, (2, 1, 1), 1, 1),  # video layer, C3D-style 3x3x3 with a temporal stride
    (4, 16, 28, 28, 64, 64, 3, 1, 1, 64),         # depthwise 3x3x3 (X3D's channelwise convolution)
    (4, 8, 28, 28, 128, 128, 1, 1, 0, 1),         # 1x1x1 bottleneck projection (I3D / X3D)
]
DEFAULT_SHAPES = {2: SHAPES, 3: SHAPES_3D}
# The fields of a shape by number of spatial dimensions: 7 besides the spatial sizes.
FIELDS = {2: ("N", "H", "W", "C_in", "C_out", "K", "stride", "pad", "groups"),
          3: ("N", "D", "H", "W", "C_in", "C_out", "K", "stride", "pad", "groups")}
_SHORT_FIELDS = {"C_in": "Cin", "C_out": "Cout", "stride": "s", "pad": "p", "groups": "g"}  # table heads
SEED = 20261122
MIN_SECONDS = 0.05
MAX_CALLS = 1000


def output_size(size, k, stride, pad):
    return (size + 2 * pad - k) // stride + 1


def spatial_dims(shape):
    """The number of spatial sizes in a shape (N, *sizes, C_in, C_out, K, stride, pad, groups)."""
    return len(shape) - 7


def per_dim(value, dims):
    """An int, or a tuple/list of one per spatial dimension, as a tuple of `dims` ints."""
    return tuple(value) if isinstance(value, (tuple, list)) else (value,) * dims


def unpack(shape):
    """(n, sizes, c_in, c_out, k, strides, pads, groups) of a shape, sizes, strides and pads as tuples."""
    dims = spatial_dims(shape)
    n, sizes, (ci, co, k, stride, pad, groups) = shape[0], tuple(shape[1:1 + dims]), shape[1 + dims:]
    return n, sizes, ci, co, k, per_dim(stride, dims), per_dim(pad, dims), groups


def output_sizes(shape):
    _, sizes, _, _, k, strides, pads, _ = unpack(shape)
    return tuple(output_size(size, k, stride, pad) for size, stride, pad in zip(sizes, strides, pads))


def conv_options(shape):
    """The stride, padding and groups arguments (for nbconv and PyTorch alike) of a shape."""
    stride, pad, groups = shape[-3:]
    return dict(stride=stride, padding=pad, groups=groups)


def format_shape(shape):
    """'4,16,28,28,64,64,3,2x1x1,1,1': the form `--shape` reads (per-dimension values joined by 'x')."""
    return ",".join("x".join(map(str, v)) if isinstance(v, (tuple, list)) else str(v) for v in shape)


def _fields_text():
    return " or ".join(f"{len(f)} fields {','.join(f)}" for f in FIELDS.values())


def parse_shape(text):
    """A 2-D 'N,H,W,C_in,C_out,K,stride,pad,groups' or 3-D 'N,D,H,W,C_in,C_out,K,stride,pad,groups' ->
    a tuple of ints, checked for consistency; stride and pad may be given per dimension (2x1x1)."""
    fields = text.split(",")
    dims = len(fields) - 7
    if dims not in FIELDS:
        raise argparse.ArgumentTypeError(f"expected {_fields_text()}, got {text!r}")
    try:
        shape = tuple(tuple(int(v) for v in f.split("x")) if "x" in f and i >= len(fields) - 3 else int(f)
                      for i, f in enumerate(fields))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers (stride and pad may be one per dimension, "
                                         f"like 2x1x1), got {text!r}")
    n, sizes, ci, co, k, strides, pads, groups = unpack(shape)
    if not isinstance(groups, int) or len(strides) != dims or len(pads) != dims:
        raise argparse.ArgumentTypeError(f"stride and pad take 1 or {dims} values and groups 1, got {text!r}")
    if min(n, *sizes, ci, co, k, *strides, groups) < 1 or min(pads) < 0:
        raise argparse.ArgumentTypeError(f"sizes, stride and groups must be >= 1 and pad >= 0, got {text!r}")
    if ci % groups or co % groups:
        raise argparse.ArgumentTypeError(f"groups={groups} must divide C_in={ci} and C_out={co}")
    if min(output_sizes(shape)) < 1:
        padded = "x".join(str(size + 2 * pad) for size, pad in zip(sizes, pads))
        raise argparse.ArgumentTypeError(f"K={k} is larger than the padded input {padded}")
    return shape


def _indices_into(shapes):
    """The argparse type of '0,3,5' -> [0, 3, 5], each an index into `shapes`."""
    def parse_indices(text):
        try:
            indices = [int(v) for v in text.split(",")]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated indices, got {text!r}")
        bad = [i for i in indices if not 0 <= i < len(shapes)]
        if bad:
            raise argparse.ArgumentTypeError(f"shape indices must be in 0..{len(shapes) - 1}, got {bad}")
        return indices
    return parse_indices


def parse_dims(text):
    """'2,3' -> (2, 3): which tables to run."""
    try:
        dims = sorted({int(v) for v in text.split(",")})
    except ValueError:
        dims = None
    if not dims or not set(dims) <= set(FIELDS):
        raise argparse.ArgumentTypeError(f"expected 2, 3 or 2,3, got {text!r}")
    return tuple(dims)


def add_arguments(parser):
    parser.epilog = " ".join(
        f"Default {dims}-D shapes ({','.join(FIELDS[dims])}): "
        + "; ".join(f"{i}: {format_shape(s)}" for i, s in enumerate(shapes)) + "."
        for dims, shapes in DEFAULT_SHAPES.items())
    parser.add_argument("--dims", type=parse_dims, default=(2, 3), metavar="2,3",
                        help="the tables to run: conv2d (2), conv3d (3) or both (default: 2,3)")
    picked = "; by default every shape of --dims runs, unless some are picked with --shapes, --shapes3d or --shape"
    parser.add_argument("--shapes", type=_indices_into(SHAPES), metavar="I,J,...",
                        help=f"indices of the default 2-D shapes to run{picked}")
    parser.add_argument("--shapes3d", type=_indices_into(SHAPES_3D), metavar="I,J,...",
                        help="indices of the default 3-D shapes to run")
    parser.add_argument("--shape", type=parse_shape, action="append", default=[], metavar="N,[D,]H,W,...",
                        help=f"a custom shape (repeatable), {_fields_text()}; stride and pad may be one per "
                             "dimension, like 2x1x1; runs after the picked default shapes (2-D before 3-D)")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--threads", type=thread_count, metavar="T",
                        help="threads for numba, PyTorch and NumPy's BLAS, 1..NUMBA_NUM_THREADS "
                             "(default: numba's, all cores)")
    parser.add_argument("--repeats", type=positive_int, default=5, metavar="R",
                        help="timed calls per measurement (at least; short calls get more); the minimum "
                             "is reported (default: 5)")
    parser.add_argument("--rounds", type=positive_int, default=1, metavar="N",
                        help="run the nbconv, im2col and PyTorch blocks N times over and report the minimum "
                             "over all rounds: on a shared machine one of them may meet a busy spell (default: 1)")
    parser.add_argument("--no-torch", action="store_true", help="skip PyTorch even when it is installed")
    parser.add_argument("--json", metavar="PATH", help="also write every sample and the settings to PATH")
    parser.add_argument("--plot", metavar="FILE.png",
                        help="also save a bar chart of nbconv vs the references per shape (forward and backward "
                             "milliseconds, log scale) to FILE.png; needs matplotlib: pip install \"nbconv[plot]\"")
    _cli_progress.add_argument(parser)


def conv_flops(shape):
    """2 x multiply-adds of one forward; the backward w.r.t. input and weight costs twice this."""
    n, _, ci, co, k, _, _, groups = unpack(shape)
    return 2.0 * n * math.prod(output_sizes(shape)) * co * k ** spatial_dims(shape) * (ci // groups)


def make_data(shape, dtype, seed=SEED):
    """Seeded x (N, *sizes, C_in), w (K, ..., K, C_in // groups, C_out), bias (C_out,) and grad_out."""
    n, sizes, ci, co, k, _, _, groups = unpack(shape)
    taps = k ** len(sizes)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, *sizes, ci)).astype(dtype)
    weight = (rng.standard_normal((k,) * len(sizes) + (ci // groups, co)) * (taps * ci // groups) ** -0.5
              ).astype(dtype)
    bias = (rng.standard_normal(co) * 0.1).astype(dtype)
    gy = rng.standard_normal((n, *output_sizes(shape), co))
    return x, weight, bias, gy.astype(dtype)


def im2col_conv2d(x, w, bias=None, stride=1, pad=0, groups=1):
    """The classic NumPy convolution: zero-pad x (N, H, W, C_in), view every K x K window with
    `as_strided`, copy the windows of each group into a (pixels, K*K*C_in/groups) matrix and
    multiply it by that group's weights (K, K, C_in // groups, C_out) reshaped to a matrix.
    stride and pad: an int or an (H, W) pair."""
    n, h, wd, c = x.shape
    kh, kw, cg, co = w.shape
    cog = co // groups
    (sh, sw), (ph, pw) = per_dim(stride, 2), per_dim(pad, 2)
    xp = np.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)))
    ho, wo = output_size(h, kh, sh, ph), output_size(wd, kw, sw, pw)
    bn, bh, bw, bc = xp.strides
    windows = as_strided(xp, (n, ho, wo, kh, kw, c), (bn, bh * sh, bw * sw, bh, bw, bc), writeable=False)
    out = np.empty((n, ho, wo, co), dtype=np.result_type(x, w))
    for g in range(groups):
        cols = windows[..., g * cg:(g + 1) * cg].reshape(n * ho * wo, kh * kw * cg)
        out[..., g * cog:(g + 1) * cog] = (cols @ w[..., g * cog:(g + 1) * cog].reshape(kh * kw * cg, cog)
                                           ).reshape(n, ho, wo, cog)
    if bias is not None:
        out += bias
    return out


def measure_ms(fn, repeats):
    """fn() once (warm-up, compilation excluded), then the ms of each of at least `repeats` timed calls,
    calling on until they add up to MIN_SECONDS (at most MAX_CALLS): short calls get more samples."""
    fn()
    samples, total = [], 0.0
    while len(samples) < repeats or (total < MIN_SECONDS and len(samples) < MAX_CALLS):
        start = time.perf_counter()
        fn()
        elapsed = time.perf_counter() - start
        samples.append(elapsed * 1e3)
        total += elapsed
    return samples


class _Steps:
    """Progress of the measurements: `start(text)` before one (the bar's description), `done()` after it.
    Without a bar (not a terminal, --no-progress, no tqdm) both do nothing."""

    def __init__(self, bar=None, prefix=""):
        self.bar, self.prefix = bar, prefix

    def start(self, text):
        if self.bar is not None:
            self.bar.set_description(f"{self.prefix}{text}", refresh=True)

    def done(self):
        if self.bar is not None:
            self.bar.update()


def _nbconv_block(shapes, dtype, repeats, steps=_Steps()):
    import nbconv

    results = []
    for shape in shapes:
        steps.start(f"nbconv {format_shape(shape)}")
        x, w, b, gy = make_data(shape, dtype)
        dims, opts = spatial_dims(shape), conv_options(shape)
        conv, conv_backward = getattr(nbconv, f"conv{dims}d"), getattr(nbconv, f"conv{dims}d_backward")
        forward = measure_ms(lambda: conv(x, w, b, **opts), repeats)
        backward = measure_ms(lambda: conv_backward(gy, x, w, needs=("input", "weight", "bias"), **opts), repeats)
        results.append({"forward_ms": forward, "backward_ms": backward})
        steps.done()
    return results


def _im2col_block(shapes, dtype, repeats, steps=_Steps()):
    """im2col is 2-D only: other shapes get no samples ({})."""
    results = []
    for shape in shapes:
        if spatial_dims(shape) != 2:
            results.append({})
            continue
        steps.start(f"im2col {format_shape(shape)}")
        x, w, b, _ = make_data(shape, dtype)
        stride, pad, groups = shape[-3:]
        results.append({"forward_ms": measure_ms(lambda: im2col_conv2d(x, w, b, stride, pad, groups), repeats)})
        steps.done()
    return results


def _torch_activation(torch, a):
    """A channels-last array (N, *sizes, C) as PyTorch's (N, C, *sizes): a channels_last(_3d) view."""
    return torch.from_numpy(a).permute(0, a.ndim - 1, *range(1, a.ndim - 1))


def _torch_weight(torch, w):
    """nbconv's weight (*kernel, C_in // groups, C_out) as PyTorch's (C_out, C_in // groups, *kernel),
    laid out channels_last (channels_last_3d for 3-D), PyTorch's layout for channels-last convolutions."""
    dims = w.ndim - 2
    layout = {2: torch.channels_last, 3: torch.channels_last_3d}[dims]
    return torch.from_numpy(w).permute(dims + 1, dims, *range(dims)).contiguous(memory_format=layout)


def _torch_block(torch, shapes, dtype, repeats, steps=_Steps()):
    """PyTorch on channels_last tensors: forward without a graph; backward = autograd of a graph built
    once (retain_graph), w.r.t. input, weight and bias, with the same grad_out as nbconv."""
    results = []
    for shape in shapes:
        steps.start(f"PyTorch {format_shape(shape)}")
        x, w, b, gy = make_data(shape, dtype)
        conv, opts = getattr(torch.nn.functional, f"conv{spatial_dims(shape)}d"), conv_options(shape)
        tx = _torch_activation(torch, x).requires_grad_(True)
        tw = _torch_weight(torch, w).requires_grad_(True)
        tb = torch.from_numpy(b).requires_grad_(True)
        tgy = _torch_activation(torch, gy)

        def forward():
            with torch.no_grad():
                conv(tx, tw, tb, **opts)

        ty = conv(tx, tw, tb, **opts)
        results.append({"forward_ms": measure_ms(forward, repeats),
                        "backward_ms": measure_ms(lambda: torch.autograd.grad(ty, (tx, tw, tb), tgy,
                                                                              retain_graph=True), repeats)})
        steps.done()
    return results


def _blas_threads(threads):
    """A context limiting NumPy's BLAS to `threads` (needs threadpoolctl; without it BLAS keeps its own
    setting, e.g. OPENBLAS_NUM_THREADS)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(threads, user_api="blas")


def _extend(total, new):
    """Add one round's samples (per shape, {measurement: [ms, ...]}) to those of earlier rounds."""
    if total is None:
        return new
    for old_row, new_row in zip(total, new):
        for key, samples in new_row.items():
            old_row[key].extend(samples)
    return total


def _geomean(values):
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else None


def _rows(shapes, nb, im2col, torch_results):
    rows = []
    for i, shape in enumerate(shapes):
        flops = conv_flops(shape)
        fwd, bwd = min(nb[i]["forward_ms"]), min(nb[i]["backward_ms"])
        row = {"dims": spatial_dims(shape), "shape": list(shape), "flops_forward": flops,
               "nbconv_forward_ms": fwd, "nbconv_forward_gflops": flops / fwd / 1e6, "nbconv_backward_ms": bwd,
               "nbconv_backward_gflops": 2 * flops / bwd / 1e6, "samples": {"nbconv": nb[i]}}
        if im2col[i]:
            i2c = min(im2col[i]["forward_ms"])
            row.update(im2col_forward_ms=i2c, im2col_over_nbconv_forward=i2c / fwd)
            row["samples"]["im2col"] = im2col[i]
        if torch_results is not None:
            tf, tb = min(torch_results[i]["forward_ms"]), min(torch_results[i]["backward_ms"])
            row.update(torch_forward_ms=tf, torch_backward_ms=tb, nbconv_over_torch=(fwd + bwd) / (tf + tb))
            row["samples"]["torch"] = torch_results[i]
        rows.append(row)
    return rows


def _fmt(value, digits):
    return "-" if value is None else f"{value:.{digits}f}"


def _table(rows, has_torch):
    """The markdown table of rows of one dimension count (im2col columns when they have im2col figures)
    and its geometric means."""
    fields = FIELDS[rows[0]["dims"]]
    has_im2col = "im2col_forward_ms" in rows[0]
    head = [f"shape ({','.join(_SHORT_FIELDS.get(f, f) for f in fields)})", "fwd ms", "fwd GFLOP/s", "bwd ms",
            "bwd GFLOP/s"]
    if has_torch:
        head += ["torch fwd ms", "torch bwd ms", "fwd+bwd nbconv/torch"]
    if has_im2col:
        head += ["im2col fwd ms", "fwd speedup vs im2col"]
    lines = [head]
    for r in rows:
        line = [format_shape(r["shape"]), _fmt(r["nbconv_forward_ms"], 3),
                _fmt(r["nbconv_forward_gflops"], 1), _fmt(r["nbconv_backward_ms"], 3),
                _fmt(r["nbconv_backward_gflops"], 1)]
        if has_torch:
            line += [_fmt(r["torch_forward_ms"], 3), _fmt(r["torch_backward_ms"], 3),
                     _fmt(r["nbconv_over_torch"], 2)]
        if has_im2col:
            line += [_fmt(r["im2col_forward_ms"], 3), _fmt(r["im2col_over_nbconv_forward"], 2)]
        lines.append(line)
    geomeans = {}
    geo = ["geomean", "", "", "", ""]
    if has_torch:
        geomeans["nbconv_over_torch"] = _geomean([r["nbconv_over_torch"] for r in rows])
        geo += ["", "", _fmt(geomeans["nbconv_over_torch"], 2)]
    if has_im2col:
        speedup = _geomean([r["im2col_over_nbconv_forward"] for r in rows if r["shape"][-1] == 1])
        geomeans["im2col_over_nbconv_forward_ungrouped"] = speedup
        geo += ["", _fmt(speedup, 2)]
    lines.append(geo)
    widths = [max(len(line[j]) for line in lines) for j in range(len(head))]
    text = ["| " + " | ".join(c.rjust(wd) if j else c.ljust(wd) for j, (c, wd) in enumerate(zip(line, widths)))
            + " |" for line in lines]
    text.insert(1, "|" + "|".join("-" * (wd + 1) + ("-" if j == 0 else ":") for j, wd in enumerate(widths)) + "|")
    return "\n".join(text), geomeans


def _cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run(args):
    import numba

    if args.repeats < 1 or args.rounds < 1:  # argparse's positive_int catches these on the command line
        print(f"--repeats and --rounds must be >= 1, got {args.repeats} and {args.rounds}", file=sys.stderr)
        return 2
    if args.plot is not None:  # before measuring: a missing extra costs no benchmark time
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print('nbconv bench: --plot needs matplotlib: pip install "nbconv[plot]"', file=sys.stderr)
            return 2
    threads = numba.config.NUMBA_NUM_THREADS if args.threads is None else args.threads
    if not 1 <= threads <= numba.config.NUMBA_NUM_THREADS:
        print(f"--threads must be in 1..{numba.config.NUMBA_NUM_THREADS} (numba's NUMBA_NUM_THREADS), "
              f"got {threads}", file=sys.stderr)
        return 2
    picked = [SHAPES[i] for i in args.shapes or []] + [SHAPES_3D[i] for i in args.shapes3d or []] + args.shape
    left_out = sorted({spatial_dims(s) for s in picked} - set(args.dims))
    if left_out:
        print(f"--dims {','.join(map(str, args.dims))} leaves out the picked "
              f"{' and '.join(f'{d}-D' for d in left_out)} shapes", file=sys.stderr)
        return 2
    # 2-D shapes first, then 3-D, each in the order given
    shapes = sorted(picked or [s for d in args.dims for s in DEFAULT_SHAPES[d]], key=spatial_dims)
    dims = sorted({spatial_dims(s) for s in shapes})
    dtype = np.dtype(args.dtype)
    torch = None
    if not args.no_torch:
        try:
            import torch
        except ImportError:
            print("PyTorch is not installed: its columns are left out.")

    saved_numba = numba.get_num_threads()
    saved_torch = torch.get_num_threads() if torch is not None else None
    bar = None
    try:
        numba.set_num_threads(threads)
        if torch is not None:
            torch.set_num_threads(threads)
        nb = im2col = torch_results = None
        per_round = len(shapes) * (2 if torch is not None else 1) + sum(spatial_dims(s) == 2 for s in shapes)
        bar = _cli_progress.bar(args.rounds * per_round, "bench", "shape", enabled=not args.no_progress)
        for r in range(args.rounds):
            steps = _Steps(bar, f"round {r + 1}/{args.rounds}: " if args.rounds > 1 else "")
            nb = _extend(nb, _nbconv_block(shapes, dtype, args.repeats, steps))
            with _blas_threads(threads):
                im2col = _extend(im2col, _im2col_block(shapes, dtype, args.repeats, steps))
            if torch is not None:
                torch_results = _extend(torch_results, _torch_block(torch, shapes, dtype, args.repeats, steps))
    finally:
        if bar is not None:
            bar.close()
        numba.set_num_threads(saved_numba)
        if torch is not None:
            torch.set_num_threads(saved_torch)

    rows = _rows(shapes, nb, im2col, torch_results)
    tables = {d: _table([r for r in rows if r["dims"] == d], torch is not None) for d in dims}
    config = {"dtype": args.dtype, "threads": threads, "repeats": args.repeats, "rounds": args.rounds,
              "cpu": _cpu_name(), "cpu_count": os.cpu_count(), "numpy": np.__version__, "numba": numba.__version__,
              "torch": torch.__version__ if torch is not None else None, "dims": dims,
              "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}
    print(f"nbconv {' and '.join(f'conv{d}d' for d in dims)}, {args.dtype}, {threads} thread(s), "
          f"min over >= {args.repeats} calls x {args.rounds} round(s), "
          f"{config['cpu']} ({config['cpu_count']} CPUs); numba {config['numba']}, NumPy {config['numpy']}"
          + (f", PyTorch {config['torch']} (channels_last)" if torch is not None else "")
          + (f"; load average {config['load_average'][0]:.2f}" if config["load_average"] else ""))
    print("bwd = gradients w.r.t. input, weight and bias; nbconv/torch < 1 means nbconv is faster"
          + ("; im2col is 2-D only, its geomean is over groups == 1 shapes." if 2 in dims else "."))
    print("\n\n".join(table for table, _ in tables.values()))
    data = {"config": config, "rows": rows, "geomean": {f"conv{d}d": geomeans for d, (_, geomeans) in tables.items()}}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(data, f, indent=1)
    if args.plot:
        from . import _cli_plot

        try:
            _cli_plot.bench_chart(data, args.plot)
        except (_cli_plot.PlotUnavailable, OSError) as error:
            print(f"nbconv bench: cannot save {args.plot}: {error}", file=sys.stderr)
            return 1
        print(f"saved the chart to {args.plot}")
    return 0
