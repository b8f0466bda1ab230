"""`python -m nbconv compile [--dims 1,2,3] [--dtypes float32,float64] [--groups ...]`: compile nbconv's
CPU kernels into Numba's on-disk cache ahead of time (for Docker images, CI caches, shared machines).

Each step runs one group of kernels through the public functions on tiny inputs, so exactly the
specializations a real call needs are compiled (or loaded, when already cached). Kernels shared by
several dimension counts compile once; the later steps that use them only load them. The CUDA
kernels are not cached on disk by Numba, so there is nothing to compile ahead for them.

A cached kernel is reused by a later process with the same nbconv source files (Numba checks their
modification time and size), the same Numba version and the same CPU model: in a Docker image, run
this after installing nbconv, in the same image, on the kind of machine that will use it.
"""
import argparse
import sys
import time

import numpy as np

DIMS = (1, 2, 3)
DTYPES = ("float32", "float64")
GROUPS = ("forward", "backward", "depthwise", "transposed", "pooling", "batch_norm")
GROUP_HELP = {
    "forward": "convolution forward (dense and grouped)",
    "backward": "input, weight and bias gradients (few and many channels per group)",
    "depthwise": "depthwise forward and gradients",
    "transposed": "transposed convolution",
    "pooling": "max and average pooling, forward and gradients",
    "batch_norm": "batch normalization, forward and gradients (one step per dtype: it has no dims)",
}


def _rand(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


def _conv_inputs(rng, nd, dtype, c_in, c_out, groups=1, k=3):
    x = _rand(rng, (2,) + (5,) * nd + (c_in,), dtype)
    w = _rand(rng, (k,) * nd + (c_in // groups, c_out), dtype)
    return x, w, _rand(rng, (c_out,), dtype)


def _forward(nbconv, rng, nd, dtype):
    conv = getattr(nbconv, f"conv{nd}d")
    for c_in, c_out, groups in ((3, 4, 1), (32, 32, 1), (8, 8, 2)):
        x, w, b = _conv_inputs(rng, nd, dtype, c_in, c_out, groups)
        conv(x, w, b, padding=1, groups=groups)
        conv(x, w, stride=2, padding="same", groups=groups, padding_mode="reflect")
    x, w, b = _conv_inputs(rng, nd, dtype, 512, 512, k=1)  # weights large enough for the threads to pack them
    conv(x, w, b, padding=1)


def _backward(nbconv, rng, nd, dtype):
    conv, backward = getattr(nbconv, f"conv{nd}d"), getattr(nbconv, f"conv{nd}d_backward")
    # few input channels per group (scatter route), many (gather route) and 4 per group (groups side by side in the
    # lanes; the weight gradient over grad_out rotated within each group), stride 1 and 2
    for c_in, c_out, groups in ((3, 4, 1), (32, 32, 1), (64, 32, 2), (16, 16, 4)):
        x, w, _ = _conv_inputs(rng, nd, dtype, c_in, c_out, groups)
        for stride, padding, mode in ((1, 1, "zeros"), (2, 1, "reflect")):
            gy = np.ones_like(conv(x, w, stride=stride, padding=padding, groups=groups, padding_mode=mode))
            backward(gy, x, w, stride=stride, padding=padding, groups=groups, padding_mode=mode)


def _depthwise(nbconv, rng, nd, dtype):
    conv, backward = getattr(nbconv, f"conv{nd}d"), getattr(nbconv, f"conv{nd}d_backward")
    x, w, b = _conv_inputs(rng, nd, dtype, 16, 16, groups=16)
    for stride, padding, mode in ((1, 1, "zeros"), (2, 1, "reflect")):
        y = conv(x, w, b, stride=stride, padding=padding, groups=16, padding_mode=mode)
        backward(np.ones_like(y), x, w, stride=stride, padding=padding, groups=16, padding_mode=mode)


def _transposed(nbconv, rng, nd, dtype):
    transpose = getattr(nbconv, f"conv_transpose{nd}d")
    for c_in, c_out, groups in ((4, 3, 1), (32, 32, 1), (16, 16, 16)):
        x = _rand(rng, (2,) + (4,) * nd + (c_in,), dtype)
        w = _rand(rng, (3,) * nd + (c_out // groups, c_in), dtype)
        transpose(x, w, _rand(rng, (c_out,), dtype), stride=2, padding=1, output_padding=1, groups=groups)


def _pooling(nbconv, rng, nd, dtype):
    for name in (f"max_pool{nd}d", f"avg_pool{nd}d"):
        pool = getattr(nbconv, name, None)
        if pool is None:  # this version of nbconv has no such pooling
            continue
        x = nbconv.Tensor(_rand(rng, (2,) + (6,) * nd + (3,), dtype), requires_grad=True)
        pool(x, 2).sum().backward()
        pool(x, 3, stride=2, padding=1).sum().backward()


def _batch_norm(nbconv, rng, nd, dtype):
    c = 3
    x = nbconv.Tensor(_rand(rng, (4, 5, c), dtype), requires_grad=True)
    weight = nbconv.Tensor(np.ones(c, dtype), requires_grad=True)
    bias = nbconv.Tensor(np.zeros(c, dtype), requires_grad=True)
    mean, var = np.zeros(c, dtype), np.ones(c, dtype)
    nbconv.batch_norm(x, weight, bias, mean, var, training=True).sum().backward()
    nbconv.batch_norm(x, weight, bias, mean, var, training=False).sum().backward()


STEPS = {"forward": _forward, "backward": _backward, "depthwise": _depthwise, "transposed": _transposed,
         "pooling": _pooling, "batch_norm": _batch_norm}


def plan(dims, dtypes, groups):
    """[(label, group, nd, dtype)] in run order: per dtype, per dimension count, per group (batch_norm
    once per dtype, last)."""
    steps = []
    for dtype in dtypes:
        for nd in dims:
            for group in (g for g in GROUPS if g in groups and g != "batch_norm"):
                steps.append((f"{nd}-D {group} {dtype}", group, nd, dtype))
        if "batch_norm" in groups:
            steps.append((f"batch_norm {dtype}", "batch_norm", None, dtype))
    return steps


def _choices(allowed, kind, convert=str):
    def parse(text):
        values = []
        for part in (p.strip() for p in text.split(",") if p.strip()):
            try:
                value = convert(part)
            except ValueError:
                value = None
            if value not in allowed:
                raise argparse.ArgumentTypeError(
                    f"{part!r} is not a {kind}; choose from {','.join(map(str, allowed))}")
            if value not in values:
                values.append(value)
        if not values:
            raise argparse.ArgumentTypeError(f"give at least one {kind} from {','.join(map(str, allowed))}")
        return tuple(values)
    return parse


def add_arguments(parser):
    parser.add_argument("--dims", type=_choices(DIMS, "dimension count", int), default=DIMS, metavar="1,2,3",
                        help="spatial dimension counts to compile for (default: 1,2,3)")
    parser.add_argument("--dtypes", type=_choices(DTYPES, "dtype"), default=DTYPES, metavar="float32,float64",
                        help="dtypes to compile for (default: float32,float64)")
    parser.add_argument("--groups", type=_choices(GROUPS, "kernel group"), default=GROUPS,
                        metavar=",".join(GROUPS),
                        help="kernel groups to compile (default: all): "
                             + "; ".join(f"{g}: {h}" for g, h in GROUP_HELP.items()))
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (one line per step only)")


def _bar(total, enabled):
    """A tqdm progress bar on stderr when tqdm is installed, enabled, and stderr is a terminal."""
    if not enabled or not sys.stderr.isatty():
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, unit="step", leave=False, file=sys.stderr)


def run(args):
    import nbconv

    from . import _cli_cache

    steps = plan(args.dims, args.dtypes, args.groups)
    before = _cli_cache.summary()
    print(f"compiling nbconv's CPU kernels ({len(steps)} steps: dims {','.join(map(str, args.dims))}; "
          f"{','.join(args.dtypes)}; {','.join(g for g in GROUPS if g in args.groups)}) into:")
    for line in _cli_cache.describe(before):
        print(f"  {line}")
    bar = _bar(len(steps), not args.no_progress)
    write = bar.write if bar is not None else print
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    failed = []
    width = len(str(len(steps)))
    try:
        for i, (label, group, nd, dtype) in enumerate(steps, 1):
            if bar is not None:
                bar.set_description(label)
            step_start = time.perf_counter()
            try:
                STEPS[group](nbconv, rng, nd, np.dtype(dtype))
            except Exception as error:  # report it, go on with the other groups
                failed.append(label)
                write(f"[{i:{width}d}/{len(steps)}] {label:<28s} FAILED: {type(error).__name__}: {error}")
            else:
                write(f"[{i:{width}d}/{len(steps)}] {label:<28s} {time.perf_counter() - step_start:7.2f} s")
            sys.stdout.flush()
            if bar is not None:
                bar.update()
    finally:
        if bar is not None:
            bar.close()
    after = _cli_cache.summary()
    print(f"done in {time.perf_counter() - start:.1f} s; the cache now holds {after['files']} file(s), "
          f"{_cli_cache.human(after['bytes'])} ({after['files'] - before['files']:+d} file(s))")
    if failed:
        print(f"{len(failed)} step(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0
