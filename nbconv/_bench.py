"""`python -m nbconv bench`: nbconv's convolutions, forward and backward, against PyTorch and NumPy im2col
on named layers of real networks (nbconv/_bench_suite.py, the suite the asv benchmarks use too).

One table, one row per shape: nbconv's forward time, GFLOP/s and share of the BLAS roof, its
forward+backward time (backward = gradients w.r.t. input, weight and bias), PyTorch's forward and
forward+backward times when torch is installed (channels_last / channels_last_3d tensors; 1-D:
contiguous (N, C, L), its faster layout there), the ratios nbconv / PyTorch of both (lower is
better), and the forward time of the classic NumPy recipe (im2col: `as_strided` windows + matmul;
col2im for transposed convolutions). The roof is NumPy's matmul of two ROOF_SIZE^2 matrices in each
dtype the table holds, measured in the same run with the same thread count. A final row gives
geometric means of the two ratios.

How it measures: everything runs in this one process, each function is called once before timing
(compilation or cache loading excluded), and each figure is the minimum time of one call over at
least `--repeats` calls (more for short calls, up to 50 ms of them: on a busy machine a parallel
call now and then waits a whole scheduler slice for one of its threads). The contenders run in
blocks -- nbconv, then NumPy (roof and im2col), then PyTorch -- all shapes of one before the next,
because PyTorch's bundled OpenMP and numba's threads disturb each other when their calls alternate;
`--rounds N` runs the blocks N times over and keeps the minimum, so that a busy spell on a shared
machine hits one round only. Forward+backward is the sum of the two minima.
"""
import argparse
import contextlib
import fnmatch
import json
import math
import os
import platform
import sys
import time

import numpy as np
from numpy.lib.stride_tricks import as_strided

from . import _bench_suite as suite
from . import _cli_progress
from ._cli_args import positive_int, thread_count

MIN_SECONDS = 0.05
MAX_CALLS = 1000
ROOF_SIZE = 2048
IM2COL_MAX_BYTES = 1 << 30  # im2col's column matrix (col2im's too) above this: the cell stays empty


# ---------------------------------------------------------------- the NumPy recipes

def _pad_dims(value, dims):
    return tuple(value) if isinstance(value, (tuple, list)) else (value,) * dims


def im2col_conv(x, w, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """The classic NumPy convolution in 1-D, 2-D or 3-D: zero-pad x (N, *sizes, C_in), view every
    (dilated) window with `as_strided`, copy the windows into a (pixels, taps * C_in // groups) matrix
    and multiply it by the weights (*kernel, C_in // groups, C_out) reshaped to a matrix -- one matmul,
    or, with groups, one batched matmul over the groups. stride, padding, dilation: an int or one per
    spatial dimension."""
    dims = x.ndim - 2
    n, c = x.shape[0], x.shape[-1]
    kernel, (cg, co) = w.shape[:dims], w.shape[dims:]
    cog = co // groups
    stride, padding, dilation = (_pad_dims(v, dims) for v in (stride, padding, dilation))
    xp = np.pad(x, [(0, 0)] + [(p, p) for p in padding] + [(0, 0)])
    outs = tuple((s + 2 * p - d * (k - 1) - 1) // st + 1
                 for s, p, d, k, st in zip(x.shape[1:-1], padding, dilation, kernel, stride))
    bn, *bs, bc = xp.strides
    pixels, taps = n * math.prod(outs), math.prod(kernel)
    # windows (N, *outs, *kernel, groups, C_in // groups): a view, no copy yet
    windows = as_strided(xp, (n, *outs, *kernel, groups, cg),
                         (bn, *(b * st for b, st in zip(bs, stride)), *(b * d for b, d in zip(bs, dilation)),
                          bc * cg, bc), writeable=False)
    if groups == 1:
        out = windows.reshape(pixels, taps * cg) @ w.reshape(taps * cg, co)
    else:
        # (groups, pixels, taps * cg) @ (groups, taps * cg, cog), then back to (pixels, C_out)
        cols = np.moveaxis(windows, -2, 0).reshape(groups, pixels, taps * cg)
        wg = np.moveaxis(w.reshape(taps, cg, groups, cog), 2, 0).reshape(groups, taps * cg, cog)
        out = np.matmul(cols, wg).transpose(1, 0, 2).reshape(pixels, co)
    out = out.reshape(n, *outs, co)
    if bias is not None:
        out += bias
    return out


def im2col_conv_transpose(x, w, bias=None, stride=1, padding=0, output_padding=0, dilation=1, groups=1):
    """The classic NumPy transposed convolution ("col2im"): one matmul of x (N, *sizes, C_in) as a
    (pixels, C_in) matrix with the weights (*kernel, C_out // groups, C_in) as a (C_in, taps * C_out)
    matrix (batched over groups), then each kernel tap's columns added into a strided slice of the
    output, which is cropped by the padding at the end."""
    dims = x.ndim - 2
    n, sizes, ci = x.shape[0], x.shape[1:-1], x.shape[-1]
    kernel, (cog, _) = w.shape[:dims], w.shape[dims:]
    cig, co = ci // groups, cog * groups
    stride, padding, output_padding, dilation = (_pad_dims(v, dims)
                                                 for v in (stride, padding, output_padding, dilation))
    pixels, taps = n * math.prod(sizes), math.prod(kernel)
    if groups == 1:
        cols = x.reshape(pixels, ci) @ w.reshape(taps * co, ci).T
    else:
        xg = x.reshape(pixels, groups, cig).transpose(1, 0, 2)
        wg = np.moveaxis(w.reshape(taps, cog, groups, cig), (2, 3), (0, 1)).reshape(groups, cig, taps * cog)
        cols = np.matmul(xg, wg).reshape(groups, pixels, taps, cog).transpose(1, 2, 0, 3)
    cols = cols.reshape(n, *sizes, *kernel, co)
    outs = tuple((s - 1) * st - 2 * p + d * (k - 1) + 1 + op
                 for s, st, p, d, k, op in zip(sizes, stride, padding, dilation, kernel, output_padding))
    full = tuple(max((s - 1) * st + d * (k - 1) + 1, o + p)
                 for s, st, d, k, o, p in zip(sizes, stride, dilation, kernel, outs, padding))
    buf = np.zeros((n, *full, co), dtype=cols.dtype)
    for tap in np.ndindex(*kernel):
        where = tuple(slice(j * d, j * d + (s - 1) * st + 1, st) for j, d, s, st in zip(tap, dilation, sizes, stride))
        buf[(slice(None), *where)] += cols[(slice(None),) * (1 + dims) + tap]
    out = np.ascontiguousarray(buf[(slice(None), *(slice(p, p + o) for p, o in zip(padding, outs)))])
    if bias is not None:
        out += bias
    return out


def im2col_call(shape, data):
    """(forward, note): the NumPy recipe's forward for `shape` as a zero-argument callable, and a note for
    the table (None; or why forward is None: a column matrix above IM2COL_MAX_BYTES)."""
    x, w, b, _ = data
    opts = shape.options()
    if shape.transposed:
        cells = shape.n * math.prod(shape.sizes) * shape.taps * shape.c_out
        recipe = im2col_conv_transpose
    else:
        cells = shape.n * math.prod(shape.output_sizes) * shape.taps * shape.c_in
        recipe = im2col_conv
    size = cells * np.dtype(shape.dtype).itemsize
    if size > IM2COL_MAX_BYTES:
        return None, f"skipped: its column matrix would take {size / 2 ** 30:.1f} GiB"
    return (lambda: recipe(x, w, b, **opts)), None


# ---------------------------------------------------------------- the command line

def _suite_names(text):
    """The argparse type of --only: a name pattern (glob, or a plain substring), which must match some
    shape of the suites."""
    if not any(suite_match(text, s.name) for s in suite.SUITES["all"]):
        raise argparse.ArgumentTypeError(f"{text!r} matches no suite shape (python -m nbconv bench --list "
                                         "shows their names)")
    return text


def suite_match(pattern, name):
    """fnmatch's glob when the pattern has wildcards (*, ?, [), else a substring test."""
    if any(c in pattern for c in "*?["):
        return fnmatch.fnmatchcase(name, pattern)
    return pattern in name


def parse_shape(text):
    """The argparse type of --shape (see _bench_suite.parse)."""
    try:
        return suite.parse(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def parse_dims(text):
    """'2,3' -> (2, 3): the numbers of spatial dimensions to keep."""
    try:
        dims = sorted({int(v) for v in text.split(",")})
    except ValueError:
        dims = None
    if not dims or not set(dims) <= {1, 2, 3}:
        raise argparse.ArgumentTypeError(f"expected some of 1, 2 and 3, like 2,3, got {text!r}")
    return tuple(dims)


def add_arguments(parser):
    # (__main__'s one-line help predates the suite: the page of `bench --help` says it anew)
    parser.description = ("benchmark table of convolution layers from real networks (1-D, 2-D, 3-D, grouped, "
                          "depthwise, dilated, transposed; float32 and float64), forward and forward+backward: "
                          "nbconv vs PyTorch and NumPy im2col, beside NumPy's matmul roof")
    parser.epilog = ("The default suite: " + ", ".join(s.name for s in suite.SUITE)
                     + ". `--list` describes each shape.")
    parser.add_argument("--suite", choices=tuple(suite.SUITES),
                        help="which shapes: named (layers of real networks, the default), issue3 (the earlier "
                             "default: issue 3's anonymous 2-D shapes and the 3-D ones) or all")
    parser.add_argument("--only", type=_suite_names, action="append", metavar="PATTERN",
                        help="run the suite's shapes whose name matches PATTERN (repeatable): a glob such as "
                             "'resnet50.*' or '*.f64', or a plain substring such as dw")
    parser.add_argument("--dims", type=parse_dims, metavar="1,2,3",
                        help="keep only shapes of these numbers of spatial dimensions (default: all)")
    parser.add_argument("--shape", type=parse_shape, action="append", default=[], metavar="SPEC",
                        help="a custom shape (repeatable), after the picked suite shapes; alone, only the custom "
                             "shapes run. Positional N,H,W,C_in,C_out,K,stride,pad,groups (3-D: N,D,H,W,...; "
                             "1-D: N,L,...; K, stride and pad may be per dimension, like 2x1x1) or keywords "
                             "n=16,size=16x16,cin=128,cout=64,k=4,stride=2,pad=1,transposed (also dilation, "
                             "groups, output_padding, dtype, name)")
    parser.add_argument("--list", action="store_true", help="describe the picked shapes and exit")
    parser.add_argument("--tiny", action="store_true",
                        help="a smoke test of the harness: every picked shape scaled down to a few pixels and "
                             "channels (same kernel, stride, padding and dilation; grouped and depthwise stay so); "
                             "the figures mean nothing")
    parser.add_argument("--dtype", choices=suite.DTYPES,
                        help="run every shape in this dtype (default: each shape's own; the suite is float32 but "
                             "for its .f64 variants)")
    parser.add_argument("--threads", type=thread_count, metavar="T",
                        help="threads for numba, PyTorch and NumPy's BLAS, 1..NUMBA_NUM_THREADS "
                             "(default: numba's, all cores)")
    parser.add_argument("--repeats", type=positive_int, default=5, metavar="R",
                        help="timed calls per measurement (at least; short calls get more); the minimum "
                             "is reported (default: 5)")
    parser.add_argument("--rounds", type=positive_int, default=1, metavar="N",
                        help="run the nbconv, NumPy and PyTorch blocks N times over and report the minimum "
                             "over all rounds: on a shared machine one of them may meet a busy spell (default: 1)")
    parser.add_argument("--roof-size", type=positive_int, default=ROOF_SIZE, metavar="M",
                        help=f"the roof: NumPy's matmul of two MxM matrices per dtype (default: {ROOF_SIZE})")
    parser.add_argument("--no-torch", action="store_true", help="skip PyTorch even when it is installed")
    parser.add_argument("--json", metavar="PATH", help="also write every sample and the settings to PATH")
    parser.add_argument("--plot", metavar="FILE.png",
                        help="also save a bar chart of nbconv vs the references per shape (forward and backward "
                             "milliseconds, log scale) to FILE.png; needs matplotlib: pip install \"nbconv[plot]\"")
    _cli_progress.add_argument(parser)


def pick_shapes(args):
    """The shapes to run, or an error message: the suite (--suite, default named) filtered by --only and
    --dims unless only --shape is given, then the custom shapes; --dtype applied, then duplicates dropped
    (a note for each in args.same), then --tiny applied."""
    shapes = []
    if args.suite or args.only or not args.shape:
        name = args.suite or "named"
        shapes = suite.SUITES[name]
        if args.only:
            shapes = [s for s in shapes if any(suite_match(p, s.name) for p in args.only)]
            if not shapes:
                return f"--only {' '.join(args.only)} matches no shape of the {name!r} suite"
        if args.dims:
            shapes = [s for s in shapes if s.dims in args.dims]
            if not shapes:
                return f"--dims {','.join(map(str, args.dims))} leaves no shape of the {name!r} suite"
    left_out = sorted({s.dims for s in args.shape} - set(args.dims or (1, 2, 3)))
    if left_out:
        return (f"--dims {','.join(map(str, args.dims))} leaves out the custom "
                f"{' and '.join(f'{d}-D' for d in left_out)} shapes")
    picked, seen, args.same = [], {}, []
    for shape in shapes + list(args.shape):
        shape = shape.with_dtype(args.dtype)
        key = shape.to_dict()
        del key["name"], key["source"]
        key = json.dumps(key, sort_keys=True)
        if key in seen:
            args.same.append(f"{shape.name} is the same layer as {seen[key]}: measured once")
            continue
        seen[key] = shape.name
        picked.append(shape.tiny() if args.tiny else shape)
    return picked


def _print_list(shapes):
    width = max(len(s.name) for s in shapes)
    label_width = max(len(s.label) for s in shapes)
    for s in shapes:
        print(f"{s.name.ljust(width)}  {s.label.ljust(label_width)}  {s.source}".rstrip())
    print(f"{len(shapes)} shape(s); label: N x sizes x C_in -> C_out, k kernel, s stride, p padding, d dilation, "
          "g groups, T transposed (op output_padding), f64 float64")


# ---------------------------------------------------------------- measuring

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


def _nbconv_block(shapes, repeats, steps=_Steps()):
    results = []
    for shape in shapes:
        steps.start(f"nbconv {shape.name}")
        forward, backward = suite.nbconv_calls(shape, suite.make_data(shape))
        results.append({"forward_ms": measure_ms(forward, repeats), "backward_ms": measure_ms(backward, repeats)})
        steps.done()
    return results


def _roof_block(dtypes, size, repeats, steps=_Steps()):
    """{dtype: {"ms": [...]}}: NumPy's matmul of two seeded size x size matrices per dtype."""
    results = {}
    rng = np.random.default_rng(suite.SEED)
    for dtype in dtypes:
        steps.start(f"roof: NumPy matmul {size}^3 {dtype}")
        a, b = (rng.standard_normal((size, size)).astype(dtype) for _ in range(2))
        out = np.empty((size, size), dtype)
        results[dtype] = {"ms": measure_ms(lambda: np.matmul(a, b, out=out), repeats)}
        steps.done()
    return results


def _im2col_block(shapes, repeats, steps=_Steps()):
    """Shapes whose recipe is skipped get no samples ({})."""
    results = []
    for shape in shapes:
        forward, _ = im2col_call(shape, suite.make_data(shape))
        if forward is None:
            results.append({})
            continue
        steps.start(f"im2col {shape.name}")
        results.append({"forward_ms": measure_ms(forward, repeats)})
        steps.done()
    return results


def _torch_block(torch, shapes, repeats, steps=_Steps()):
    results = []
    for shape in shapes:
        steps.start(f"PyTorch {shape.name}")
        forward, backward = suite.torch_calls(torch, shape, suite.make_data(shape))
        results.append({"forward_ms": measure_ms(forward, repeats), "backward_ms": measure_ms(backward, repeats)})
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
    """Add one round's samples ({measurement: [ms, ...]} per shape, or per dtype) to those of earlier rounds."""
    if total is None:
        return new
    for old_row, new_row in (zip(total, new) if isinstance(total, list) else
                             ((total[k], new[k]) for k in total)):
        for key, samples in new_row.items():
            old_row[key].extend(samples)
    return total


def _geomean(values):
    values = [v for v in values if v is not None]
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else None


def _rows(shapes, nb, roof, im2col, torch_results):
    rows = []
    for i, shape in enumerate(shapes):
        flops = shape.flops
        fwd, bwd = min(nb[i]["forward_ms"]), min(nb[i]["backward_ms"])
        gflops = flops / fwd / 1e6
        row = {"name": shape.name, "label": shape.label, "dims": shape.dims, "dtype": shape.dtype,
               "transposed": shape.transposed, "groups": shape.groups, "shape": shape.to_dict(),
               "flops_forward": flops, "nbconv_forward_ms": fwd, "nbconv_forward_gflops": gflops,
               "roof_fraction": gflops / roof[shape.dtype], "nbconv_backward_ms": bwd,
               "nbconv_backward_gflops": 2 * flops / bwd / 1e6, "nbconv_fwd_bwd_ms": fwd + bwd,
               "samples": {"nbconv": nb[i]}}
        if im2col[i]:
            i2c = min(im2col[i]["forward_ms"])
            row.update(im2col_forward_ms=i2c, im2col_over_nbconv_forward=i2c / fwd)
            row["samples"]["im2col"] = im2col[i]
        else:
            row["im2col_note"] = im2col_call(shape, (None,) * 4)[1]
        if torch_results is not None:
            tf, tb = min(torch_results[i]["forward_ms"]), min(torch_results[i]["backward_ms"])
            row.update(torch_forward_ms=tf, torch_backward_ms=tb, torch_fwd_bwd_ms=tf + tb,
                       nbconv_over_torch_forward=fwd / tf, nbconv_over_torch=(fwd + bwd) / (tf + tb))
            row["samples"]["torch"] = torch_results[i]
        rows.append(row)
    return rows


def _fmt(value, digits):
    return "-" if value is None else f"{value:.{digits}f}"


HEAD = ["shape", "layer", "fwd ms", "fwd GFLOP/s", "% roof", "fwd+bwd ms"]
TORCH_HEAD = ["torch fwd ms", "torch fwd+bwd ms", "fwd nbconv/torch", "fwd+bwd nbconv/torch"]


def _table(rows, has_torch):
    """The markdown table of the rows and a geomean row (nbconv / PyTorch ratios)."""
    head = HEAD + (TORCH_HEAD if has_torch else []) + ["im2col fwd ms"]
    lines = [head]
    for r in rows:
        line = [r["name"], r["label"], _fmt(r["nbconv_forward_ms"], 3), _fmt(r["nbconv_forward_gflops"], 1),
                _fmt(100 * r["roof_fraction"], 0), _fmt(r["nbconv_fwd_bwd_ms"], 3)]
        if has_torch:
            line += [_fmt(r["torch_forward_ms"], 3), _fmt(r["torch_fwd_bwd_ms"], 3),
                     _fmt(r["nbconv_over_torch_forward"], 2), _fmt(r["nbconv_over_torch"], 2)]
        line.append(_fmt(r.get("im2col_forward_ms"), 3))
        lines.append(line)
    geomeans = {"im2col_over_nbconv_forward_dense": _geomean(
        [r.get("im2col_over_nbconv_forward") for r in rows if r["groups"] == 1])}
    if has_torch:
        geomeans["nbconv_over_torch_forward"] = _geomean([r["nbconv_over_torch_forward"] for r in rows])
        geomeans["nbconv_over_torch"] = _geomean([r["nbconv_over_torch"] for r in rows])
        lines.append(["geomean"] + [""] * (len(HEAD) - 1) + ["", "", _fmt(geomeans["nbconv_over_torch_forward"], 2),
                                                             _fmt(geomeans["nbconv_over_torch"], 2), ""])
    widths = [max(len(line[j]) for line in lines) for j in range(len(head))]
    left = 2  # name and layer columns: left-aligned
    text = ["| " + " | ".join(c.ljust(wd) if j < left else c.rjust(wd) for j, (c, wd) in enumerate(zip(line, widths)))
            + " |" for line in lines]
    text.insert(1, "|" + "|".join("-" * (wd + 1) + ("-" if j < left else ":") for j, wd in enumerate(widths)) + "|")
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
    shapes = pick_shapes(args)
    if isinstance(shapes, str):
        print(f"nbconv bench: {shapes}", file=sys.stderr)
        return 2
    for note in args.same:
        print(note)
    if args.list:
        _print_list(shapes)
        return 0
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
    dtypes = sorted({s.dtype for s in shapes})
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
        nb = roof = im2col = torch_results = None
        with_im2col = sum(im2col_call(s, (None,) * 4)[1] is None for s in shapes)
        per_round = len(shapes) * (2 if torch is not None else 1) + with_im2col + len(dtypes)
        bar = _cli_progress.bar(args.rounds * per_round, "bench", "step", enabled=not args.no_progress)
        for r in range(args.rounds):
            steps = _Steps(bar, f"round {r + 1}/{args.rounds}: " if args.rounds > 1 else "")
            nb = _extend(nb, _nbconv_block(shapes, args.repeats, steps))
            with _blas_threads(threads):
                roof = _extend(roof, _roof_block(dtypes, args.roof_size, args.repeats, steps))
                im2col = _extend(im2col, _im2col_block(shapes, args.repeats, steps))
            if torch is not None:
                torch_results = _extend(torch_results, _torch_block(torch, shapes, args.repeats, steps))
    finally:
        if bar is not None:
            bar.close()
        numba.set_num_threads(saved_numba)
        if torch is not None:
            torch.set_num_threads(saved_torch)

    roof_gflops = {d: 2.0 * args.roof_size ** 3 / min(roof[d]["ms"]) / 1e6 for d in dtypes}
    rows = _rows(shapes, nb, roof_gflops, im2col, torch_results)
    table, geomeans = _table(rows, torch is not None)
    config = {"dtype": args.dtype, "dtypes": dtypes, "threads": threads, "repeats": args.repeats,
              "rounds": args.rounds, "suite": args.suite or ("named" if args.only or not args.shape else None),
              "only": args.only, "tiny": args.tiny, "cpu": _cpu_name(), "cpu_count": os.cpu_count(),
              "numpy": np.__version__, "numba": numba.__version__,
              "torch": torch.__version__ if torch is not None else None,
              "dims": sorted({s.dims for s in shapes}),
              "roof": {d: {"size": args.roof_size, "gflops": roof_gflops[d], "ms": roof[d]["ms"]} for d in dtypes},
              "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}
    print(f"nbconv bench, {len(shapes)} shape(s), {', '.join(dtypes)}, {threads} thread(s), "
          f"min over >= {args.repeats} calls x {args.rounds} round(s), "
          f"{config['cpu']} ({config['cpu_count']} CPUs); numba {config['numba']}, NumPy {config['numpy']}"
          + (f", PyTorch {config['torch']} (channels_last; 1-D contiguous)" if torch is not None else "")
          + (f"; load average {config['load_average'][0]:.2f}" if config["load_average"] else ""))
    print("roof (NumPy matmul " + f"{args.roof_size}^3, same threads): "
          + ", ".join(f"{d} {roof_gflops[d]:.1f} GFLOP/s" for d in dtypes)
          + "; % roof = fwd GFLOP/s over the roof of the shape's dtype")
    print("fwd+bwd = forward + gradients w.r.t. input, weight and bias; nbconv/torch < 1 means nbconv is faster; "
          "im2col: as_strided windows + matmul (groups: batched matmul), transposed (T): matmul + col2im")
    print(table)
    notes = [f"{r['name']}: im2col {r['im2col_note']}" for r in rows if r.get("im2col_note")]
    if notes:
        print("\n".join(notes))
    data = {"config": config, "rows": rows, "geomean": geomeans}
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
