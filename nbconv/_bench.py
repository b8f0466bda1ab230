"""`python -m nbconv bench`: nbconv's conv2d forward and backward against PyTorch and NumPy im2col.

One row per shape: nbconv's forward and backward (gradients w.r.t. input, weight and bias) time and
GFLOP/s, PyTorch's forward and backward time on channels_last tensors when torch is installed, the
ratio of the forward+backward times (nbconv / PyTorch, lower is better), and the classic NumPy
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
FIELDS = ("N", "H", "W", "C_in", "C_out", "K", "stride", "pad", "groups")
SEED = 20261122
MIN_SECONDS = 0.05
MAX_CALLS = 1000


def output_size(size, k, stride, pad):
    return (size + 2 * pad - k) // stride + 1


def parse_shape(text):
    """'N,H,W,C_in,C_out,K,stride,pad,groups' -> a tuple of 9 ints, checked for consistency."""
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {len(FIELDS)} integers {','.join(FIELDS)}, got {text!r}")
    if len(shape) != len(FIELDS):
        raise argparse.ArgumentTypeError(f"expected {len(FIELDS)} integers {','.join(FIELDS)}, got {text!r}")
    n, h, w, ci, co, k, stride, pad, groups = shape
    if min(n, h, w, ci, co, k, stride, groups) < 1 or pad < 0:
        raise argparse.ArgumentTypeError(f"sizes, stride and groups must be >= 1 and pad >= 0, got {text!r}")
    if ci % groups or co % groups:
        raise argparse.ArgumentTypeError(f"groups={groups} must divide C_in={ci} and C_out={co}")
    if output_size(h, k, stride, pad) < 1 or output_size(w, k, stride, pad) < 1:
        raise argparse.ArgumentTypeError(f"K={k} is larger than the padded input {h + 2 * pad}x{w + 2 * pad}")
    return shape


def parse_indices(text):
    """'0,3,5' -> [0, 3, 5], each an index into SHAPES."""
    try:
        indices = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated indices, got {text!r}")
    bad = [i for i in indices if not 0 <= i < len(SHAPES)]
    if bad:
        raise argparse.ArgumentTypeError(f"shape indices must be in 0..{len(SHAPES) - 1}, got {bad}")
    return indices


def add_arguments(parser):
    listing = "; ".join(f"{i}: {','.join(map(str, s))}" for i, s in enumerate(SHAPES))
    parser.epilog = f"Default shapes ({','.join(FIELDS)}): {listing}."
    parser.add_argument("--shapes", type=parse_indices, metavar="I,J,...",
                        help="indices of the default shapes to run (default: all, unless --shape is given)")
    parser.add_argument("--shape", type=parse_shape, action="append", default=[], metavar=",".join(FIELDS),
                        help="a custom shape (repeatable); runs after the --shapes ones")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--threads", type=int, metavar="T",
                        help="threads for numba, PyTorch and NumPy's BLAS (default: numba's, all cores)")
    parser.add_argument("--repeats", type=int, default=5, metavar="R",
                        help="timed calls per measurement (at least; short calls get more); the minimum "
                             "is reported (default: 5)")
    parser.add_argument("--rounds", type=int, default=1, metavar="N",
                        help="run the nbconv, im2col and PyTorch blocks N times over and report the minimum "
                             "over all rounds: on a shared machine one of them may meet a busy spell (default: 1)")
    parser.add_argument("--no-torch", action="store_true", help="skip PyTorch even when it is installed")
    parser.add_argument("--json", metavar="PATH", help="also write every sample and the settings to PATH")


def conv2d_flops(shape):
    """2 x multiply-adds of one forward; the backward w.r.t. input and weight costs twice this."""
    n, h, w, ci, co, k, stride, pad, groups = shape
    return 2.0 * n * output_size(h, k, stride, pad) * output_size(w, k, stride, pad) * co * k * k * (ci // groups)


def make_data(shape, dtype, seed=SEED):
    """Seeded x (N, H, W, C_in), w (K, K, C_in // groups, C_out), bias (C_out,) and grad_out."""
    n, h, w, ci, co, k, stride, pad, groups = shape
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, h, w, ci)).astype(dtype)
    weight = (rng.standard_normal((k, k, ci // groups, co)) * (k * k * ci // groups) ** -0.5).astype(dtype)
    bias = (rng.standard_normal(co) * 0.1).astype(dtype)
    gy = rng.standard_normal((n, output_size(h, k, stride, pad), output_size(w, k, stride, pad), co))
    return x, weight, bias, gy.astype(dtype)


def im2col_conv2d(x, w, bias=None, stride=1, pad=0, groups=1):
    """The classic NumPy convolution: zero-pad x (N, H, W, C_in), view every K x K window with
    `as_strided`, copy the windows of each group into a (pixels, K*K*C_in/groups) matrix and
    multiply it by that group's weights (K, K, C_in // groups, C_out) reshaped to a matrix."""
    n, h, wd, c = x.shape
    kh, kw, cg, co = w.shape
    cog = co // groups
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    ho, wo = output_size(h, kh, stride, pad), output_size(wd, kw, stride, pad)
    sn, sh, sw, sc = xp.strides
    windows = as_strided(xp, (n, ho, wo, kh, kw, c), (sn, sh * stride, sw * stride, sh, sw, sc), writeable=False)
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


def _nbconv_block(shapes, dtype, repeats):
    import nbconv

    results = []
    for shape in shapes:
        x, w, b, gy = make_data(shape, dtype)
        _, _, _, _, _, _, stride, pad, groups = shape
        opts = dict(stride=stride, padding=pad, groups=groups)
        forward = measure_ms(lambda: nbconv.conv2d(x, w, b, **opts), repeats)
        backward = measure_ms(lambda: nbconv.conv2d_backward(gy, x, w, needs=("input", "weight", "bias"),
                                                             **opts), repeats)
        results.append({"forward_ms": forward, "backward_ms": backward})
    return results


def _im2col_block(shapes, dtype, repeats):
    results = []
    for shape in shapes:
        x, w, b, _ = make_data(shape, dtype)
        _, _, _, _, _, _, stride, pad, groups = shape
        results.append({"forward_ms": measure_ms(lambda: im2col_conv2d(x, w, b, stride, pad, groups), repeats)})
    return results


def _torch_block(torch, shapes, dtype, repeats):
    """PyTorch on channels_last tensors: forward without a graph; backward = autograd of a graph built
    once (retain_graph), w.r.t. input, weight and bias, with the same grad_out as nbconv."""
    conv2d = torch.nn.functional.conv2d
    results = []
    for shape in shapes:
        x, w, b, gy = make_data(shape, dtype)
        _, _, _, _, _, _, stride, pad, groups = shape
        tx = torch.from_numpy(x).permute(0, 3, 1, 2).requires_grad_(True)
        tw = torch.from_numpy(w).permute(3, 2, 0, 1).contiguous(memory_format=torch.channels_last)
        tw.requires_grad_(True)
        tb = torch.from_numpy(b).requires_grad_(True)
        tgy = torch.from_numpy(gy).permute(0, 3, 1, 2)
        opts = dict(stride=stride, padding=pad, groups=groups)

        def forward():
            with torch.no_grad():
                conv2d(tx, tw, tb, **opts)

        ty = conv2d(tx, tw, tb, **opts)
        results.append({"forward_ms": measure_ms(forward, repeats),
                        "backward_ms": measure_ms(lambda: torch.autograd.grad(ty, (tx, tw, tb), tgy,
                                                                              retain_graph=True), repeats)})
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
        flops = conv2d_flops(shape)
        fwd, bwd = min(nb[i]["forward_ms"]), min(nb[i]["backward_ms"])
        i2c = min(im2col[i]["forward_ms"])
        row = {"shape": list(shape), "flops_forward": flops, "nbconv_forward_ms": fwd,
               "nbconv_forward_gflops": flops / fwd / 1e6, "nbconv_backward_ms": bwd,
               "nbconv_backward_gflops": 2 * flops / bwd / 1e6, "im2col_forward_ms": i2c,
               "im2col_over_nbconv_forward": i2c / fwd, "samples": {"nbconv": nb[i], "im2col": im2col[i]}}
        if torch_results is not None:
            tf, tb = min(torch_results[i]["forward_ms"]), min(torch_results[i]["backward_ms"])
            row.update(torch_forward_ms=tf, torch_backward_ms=tb, nbconv_over_torch=(fwd + bwd) / (tf + tb))
            row["samples"]["torch"] = torch_results[i]
        rows.append(row)
    return rows


def _fmt(value, digits):
    return "-" if value is None else f"{value:.{digits}f}"


def _table(rows, has_torch):
    head = ["shape (N,H,W,Cin,Cout,K,s,p,g)", "fwd ms", "fwd GFLOP/s", "bwd ms", "bwd GFLOP/s"]
    if has_torch:
        head += ["torch fwd ms", "torch bwd ms", "fwd+bwd nbconv/torch"]
    head += ["im2col fwd ms", "fwd speedup vs im2col"]
    lines = [head]
    for r in rows:
        line = [",".join(map(str, r["shape"])), _fmt(r["nbconv_forward_ms"], 3),
                _fmt(r["nbconv_forward_gflops"], 1), _fmt(r["nbconv_backward_ms"], 3),
                _fmt(r["nbconv_backward_gflops"], 1)]
        if has_torch:
            line += [_fmt(r["torch_forward_ms"], 3), _fmt(r["torch_backward_ms"], 3),
                     _fmt(r["nbconv_over_torch"], 2)]
        line += [_fmt(r["im2col_forward_ms"], 3), _fmt(r["im2col_over_nbconv_forward"], 2)]
        lines.append(line)
    ratio = _geomean([r["nbconv_over_torch"] for r in rows]) if has_torch else None
    speedup = _geomean([r["im2col_over_nbconv_forward"] for r in rows if r["shape"][8] == 1])
    geo = ["geomean", "", "", "", ""] + (["", "", _fmt(ratio, 2)] if has_torch else []) + ["", _fmt(speedup, 2)]
    lines.append(geo)
    widths = [max(len(line[j]) for line in lines) for j in range(len(head))]
    text = ["| " + " | ".join(c.rjust(wd) if j else c.ljust(wd) for j, (c, wd) in enumerate(zip(line, widths)))
            + " |" for line in lines]
    text.insert(1, "|" + "|".join("-" * (wd + 1) + ("-" if j == 0 else ":") for j, wd in enumerate(widths)) + "|")
    return "\n".join(text), {"nbconv_over_torch": ratio, "im2col_over_nbconv_forward_ungrouped": speedup}


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

    if args.repeats < 1 or args.rounds < 1:
        print(f"--repeats and --rounds must be >= 1, got {args.repeats} and {args.rounds}", file=sys.stderr)
        return 2
    threads = numba.config.NUMBA_NUM_THREADS if args.threads is None else args.threads
    if not 1 <= threads <= numba.config.NUMBA_NUM_THREADS:
        print(f"--threads must be in 1..{numba.config.NUMBA_NUM_THREADS} (numba's NUMBA_NUM_THREADS), "
              f"got {threads}", file=sys.stderr)
        return 2
    shapes = [SHAPES[i] for i in (args.shapes or [])] + args.shape
    if not shapes:
        shapes = list(SHAPES)
    dtype = np.dtype(args.dtype)
    torch = None
    if not args.no_torch:
        try:
            import torch
        except ImportError:
            print("PyTorch is not installed: its columns are left out.")

    saved_numba = numba.get_num_threads()
    saved_torch = torch.get_num_threads() if torch is not None else None
    try:
        numba.set_num_threads(threads)
        if torch is not None:
            torch.set_num_threads(threads)
        nb = im2col = torch_results = None
        for _ in range(args.rounds):
            nb = _extend(nb, _nbconv_block(shapes, dtype, args.repeats))
            with _blas_threads(threads):
                im2col = _extend(im2col, _im2col_block(shapes, dtype, args.repeats))
            if torch is not None:
                torch_results = _extend(torch_results, _torch_block(torch, shapes, dtype, args.repeats))
    finally:
        numba.set_num_threads(saved_numba)
        if torch is not None:
            torch.set_num_threads(saved_torch)

    rows = _rows(shapes, nb, im2col, torch_results)
    table, geomeans = _table(rows, torch is not None)
    config = {"dtype": args.dtype, "threads": threads, "repeats": args.repeats, "rounds": args.rounds,
              "cpu": _cpu_name(), "cpu_count": os.cpu_count(), "numpy": np.__version__, "numba": numba.__version__,
              "torch": torch.__version__ if torch is not None else None,
              "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}
    print(f"nbconv conv2d, {args.dtype}, {threads} thread(s), min over >= {args.repeats} calls x {args.rounds} "
          f"round(s), "
          f"{config['cpu']} ({config['cpu_count']} CPUs); numba {config['numba']}, NumPy {config['numpy']}"
          + (f", PyTorch {config['torch']} (channels_last)" if torch is not None else "")
          + (f"; load average {config['load_average'][0]:.2f}" if config["load_average"] else ""))
    print("bwd = gradients w.r.t. input, weight and bias; nbconv/torch < 1 means nbconv is faster; "
          "the im2col geomean is over groups == 1 shapes.")
    print(table)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"config": config, "rows": rows, "geomean": geomeans}, f, indent=1)
    return 0
