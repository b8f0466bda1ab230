"""Convolutions and their gradients on dask arrays (needs the ``dask`` extra: ``pip install "nbconv[dask]"``).

The same calls as :mod:`nbconv.conv`, on chunked arrays::

    import dask.array as da
    import nbconv.dask as nbd

    x = da.from_zarr("image.zarr")                      # (N, H, W, C), any chunks
    y = nbd.conv2d(x, w, bias, padding="same")          # lazy dask array
    gx, gw, gb = nbd.conv2d_backward(gy, x, w, padding="same")

- ``x`` (and ``grad_out``) are dask arrays of float32 or float64 blocks with any chunking of the batch
  and spatial axes; the channel axis is merged into one chunk. ``w`` and ``bias`` are NumPy arrays.
- Every task runs the in-memory kernels (``nbconv.conv``'s internal entry points) on one output
  block and the window of input it reads: its own chunk plus halos sliced from the neighbouring
  chunks (as thin as the kernel extent, dilation and padding need; a chunk smaller than the halo is
  simply read whole, several neighbours deep). Strided convolutions assign each output element to
  the input chunk that holds the centre of its window, so every element is computed once. Padding
  applies at the array's outer boundary only: zero padding is passed to the kernel, and the
  reflect / replicate / circular borders are gathered from the global array through nbconv's one
  definition of the padding modes (:mod:`nbconv._padding`). The :mod:`nbconv._dask_halo` docstring
  has the index arithmetic.
- Results equal the in-memory call up to floating-point summation order. The input gradient is a
  dask array chunked like ``x``; the weight and bias gradients are NumPy arrays (computed when
  ``*_backward`` is called), reduced from per-block partial sums (in float64) with a tree reduction
  in a fixed order: reproducible for a given chunking.
- Work runs on whatever scheduler is active (threads, processes, ``distributed.Client``); the task
  keys are named ``nbconv-conv2d-…``, ``nbconv-halo-…``, ``nbconv-conv2d-backward-…``, so they show as
  such in the dashboard and ``dask.diagnostics.ProgressBar`` works as usual.
- Arguments are validated when the function is called, before any work is scheduled, with the
  messages of the in-memory functions; ``out=`` is not supported (store the result with
  ``dask.array.store`` or ``Array.to_zarr``).
"""
from __future__ import annotations

import functools
import gc
import itertools
import math
from functools import partial
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import NDArray

try:
    import dask
    import dask.array as da
    from dask.base import tokenize
    from dask.delayed import Delayed
    from dask.highlevelgraph import HighLevelGraph
except ImportError as error:  # pragma: no cover - exercised only without the extra
    raise ImportError('nbconv.dask needs dask[array] and distributed: pip install "nbconv[dask]"') from error

from . import _dask_halo as halo
from . import _padding
from . import conv as _core
from ._shapes import ConvParams, check_dtypes, check_ndim, conv_output_shape, conv_params, transpose_params
from .conv import NEEDS, ConvGrads, IntOrTuple, Needs, Padding, PaddingMode, TransposePadding, parse_needs

__all__ = ["conv1d", "conv2d", "conv3d", "conv1d_backward", "conv2d_backward", "conv3d_backward",
           "conv_transpose1d", "conv_transpose2d", "conv_transpose3d", "ConvGrads"]

FAN_IN = 8  # partial weight/bias gradients summed per reduction task


# ---------------------------------------------------------------- tasks (run on the workers)

def _take(block, index):
    """A piece of a chunk (a halo, or a border element to be repeated): `index` is a tuple of slices. A
    copy, so that the chunk can be released while the piece waits for the task that reads it."""
    return block[index].copy()


def _assemble(pieces, grid, lengths, pads=None):
    """The window a task reads, from its pieces in C order over `grid` (pieces per axis, the channel axis
    included); lengths[axis][i] is the size of the i-th piece along axis (a piece of size 1 there is
    repeated to it: replicate borders). `pads` ((before, after) per spatial axis) adds zero padding."""
    pads = ((0, 0),) + tuple(pads or ((0, 0),) * (len(grid) - 2)) + ((0, 0),)
    shape = tuple(before + sum(ln) + after for ln, (before, after) in zip(lengths, pads))
    out = (np.zeros if any(before or after for before, after in pads) else np.empty)(shape, dtype=pieces[0].dtype)
    starts = [np.cumsum((before,) + ln[:-1]).tolist() for ln, (before, _) in zip(lengths, pads)]
    for piece, cell in zip(pieces, itertools.product(*(range(g) for g in grid))):
        out[tuple(slice(starts[axis][i], starts[axis][i] + lengths[axis][i]) for axis, i in enumerate(cell))] = piece
    return out


def _one_piece(pieces, window):
    """True when the window is exactly its only piece (nothing to assemble)."""
    return len(pieces) == 1 and tuple(pieces[0].shape) == tuple(ln[0] for ln in window.lengths)


def _input(pieces, window, params):
    """(the array the kernel reads, its ConvParams): a window that is one whole piece goes to the kernel as
    it is, with the padding in params; any other is assembled into one array with its zero padding."""
    if _one_piece(pieces, window):
        return pieces[0], params
    x = _assemble(pieces, window.grid, window.lengths, params.pads)
    return x, params._replace(pads=((0, 0),) * len(params.pads))


class _Window(NamedTuple):
    """How a task builds the input it reads: `count` pieces over `grid`, of `lengths` (see _assemble)."""

    count: int
    grid: tuple
    lengths: tuple


class _ForwardSpec(NamedTuple):
    window: _Window  # None: the block reads zero padding only
    params: ConvParams
    shape: tuple
    dtype: str


def _forward_task(spec, pieces, w, bias):
    if spec.window is None or 0 in spec.shape:
        out = np.zeros(spec.shape, dtype=spec.dtype)
        if bias is not None:
            out += bias
        return out
    x, params = _input(pieces, spec.window, spec.params)
    return _core.forward(x, w, bias, params)


class _ScatterSub(NamedTuple):
    """One box of an input-gradient (or transposed-convolution) task: the gradient of the box, from the
    grad_out window, is added at `dest` (summed over `sum_axes` first: replicate borders)."""

    window: _Window
    x_shape: tuple
    params: ConvParams
    dest: tuple
    sum_axes: tuple
    whole: bool  # the box is the whole block, in order


class _ScatterSpec(NamedTuple):
    subs: tuple
    shape: tuple
    dtype: str
    transposed: bool


def _scatter_task(spec, pieces, w, bias):
    """The input gradient of one block of x (or one block of a transposed convolution's result)."""
    out = None
    start = 0
    for sub in spec.subs:
        mine = pieces[start:start + sub.window.count]
        start += sub.window.count
        gy = mine[0] if _one_piece(mine, sub.window) else _assemble(mine, sub.window.grid, sub.window.lengths)
        if spec.transposed:
            g = _core.transpose(gy, w, None, sub.params, (0,) * len(sub.params.stride), sub.x_shape)
        else:
            g = _core.input_grad(gy, w, sub.x_shape, sub.params)
        if sub.whole and out is None and len(spec.subs) == 1:
            out = np.asarray(g)
            continue
        if out is None:
            out = np.zeros(spec.shape, dtype=spec.dtype)
        if sub.sum_axes:
            g = g.sum(axis=sub.sum_axes, keepdims=True)
        out[sub.dest] += g
    if out is None:
        out = np.zeros(spec.shape, dtype=spec.dtype)
    if bias is not None:
        out += bias
    return out


class _PartialSpec(NamedTuple):
    window: _Window  # None: the block reads zero padding only (no weight gradient)
    params: ConvParams
    w_shape: tuple
    weight: bool
    bias: bool


def _partial_task(spec, gy, pieces):
    """(weight gradient, bias gradient) of one block of grad_out, in float64 (None where not needed)."""
    gw = gb = None
    if spec.weight:
        if spec.window is None or gy.size == 0:
            gw = np.zeros(spec.w_shape)
        else:
            x, params = _input(pieces, spec.window, spec.params)
            gw = np.asarray(_core.weight_grad(gy, x, spec.w_shape, params), dtype=np.float64)
    if spec.bias:
        gb = np.asarray(_core.bias_grad(gy), dtype=np.float64) if gy.size else np.zeros(gy.shape[-1])
    return gw, gb


def _sum_partials(parts):
    """Element-wise sum of (weight, bias) partials, in the order given."""
    gw, gb = parts[0]
    gw = None if gw is None else gw.copy()
    gb = None if gb is None else gb.copy()
    for pw, pb in parts[1:]:
        if gw is not None:
            gw += pw
        if gb is not None:
            gb += pb
    return gw, gb


def _finish(total, dtype):
    return tuple(None if g is None else g.astype(dtype) for g in total)


# ---------------------------------------------------------------- validation

def _check_dask(a, name, fn):
    if not isinstance(a, da.Array):
        raise TypeError(f"{name} must be a dask array for nbconv.dask.{fn}, got {type(a).__module__}."
                        f"{type(a).__name__}: wrap it with dask.array.from_array({name}, chunks=...), or call "
                        f"nbconv.{fn} on in-memory arrays")
    meta = getattr(a, "_meta", None)
    if meta is not None and not isinstance(meta, np.ndarray):
        raise TypeError(f"{name} must be a dask array of NumPy blocks, got blocks of type "
                        f"{type(meta).__module__}.{type(meta).__name__}")


def _check_in_memory(a, name):
    if a is None:
        return
    if isinstance(a, da.Array):
        raise TypeError(f"{name} must be a NumPy array (nbconv.dask keeps weights and bias in memory), got a dask "
                        f"array of shape {a.shape}: pass {name}.compute()")
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a NumPy array, got {type(a).__module__}.{type(a).__name__}")


def _check_chunks(a, name):
    """ValueError for unknown (NaN) chunk sizes: halos and the channel merge need them."""
    if any(math.isnan(c) for chunks in a.chunks for c in chunks):
        raise ValueError(f"{name} has unknown chunk sizes ({name}.chunks={a.chunks}): its halos cannot be planned "
                         f"and its channel axis cannot be merged into one chunk; call {name}.compute_chunk_sizes() "
                         f"first")


def _check_out(out, fn):
    if out is not None:
        raise TypeError(f"nbconv.dask.{fn} does not take out= (dask arrays are immutable): write the result with "
                        f"dask.array.store(result, target) or result.to_zarr(...)")


def _one_channel_chunk(a):
    """`a` with its channel axis in one chunk."""
    return a if len(a.chunks[-1]) == 1 else a.rechunk({a.ndim - 1: -1})


# ---------------------------------------------------------------- graph building

class _Graph:
    """One layer of tasks: pieces of input chunks (halos) and the blocks computed from them."""

    def __init__(self, name):
        self.name = name
        self.halo = "nbconv-halo-" + name.split("-")[-1]
        self.dsk = {}
        self._pieces = {}

    def constant(self, value, label):
        if value is None:
            return None
        key = f"{label}-{tokenize(value)}"
        self.dsk[key] = value
        return key

    def window(self, arr, axis_pieces):
        """(piece keys, _Window) for per-axis piece lists [(chunk, start, length, step), ...] of dask array
        `arr`: a piece that is a whole chunk is the chunk's own key, any other a slicing task (one per
        distinct piece)."""
        per_axis = [[_axis_index(arr.chunks[axis], *p) for p in pieces] for axis, pieces in enumerate(axis_pieces)]
        keys = []
        for cell in itertools.product(*per_axis):
            source = (arr.name, *(c[0] for c in cell))
            if all(c[2] for c in cell):
                keys.append(source)
                continue
            memo = (source, tuple(c[3] for c in cell))
            key = self._pieces.get(memo)
            if key is None:
                key = self._pieces[memo] = (self.halo, len(self._pieces))
                self.dsk[key] = (partial(_take, index=tuple(c[1] for c in cell)), source)
            keys.append(key)
        grid = tuple(len(p) for p in axis_pieces)
        lengths = tuple(tuple(p[2] for p in pieces) for pieces in axis_pieces)
        return keys, _Window(len(keys), grid, lengths)


def _axis_index(chunks, chunk, start, length, step):
    """(chunk, slice, whole chunk?, hashable form) of a piece along one axis: step 1 or -1 cuts `length`
    elements from `start`; step 0 cuts the one element at `start` (repeated later)."""
    if step == 1:
        index = slice(start, start + length)
        whole = start == 0 and length == chunks[chunk]
    elif step == -1:
        index = slice(start, None if start - length < 0 else start - length, -1)
        whole = False
    else:
        index = slice(start, start + 1)
        whole = chunks[chunk] == 1
    return chunk, index, whole, (index.start, index.stop, index.step)


def _gc_paused(build):
    """Run a graph builder with the cyclic garbage collector paused: a graph is ~10**5 small tuples and no
    cycles, and collections triggered while it grows scan all of them again and again."""
    @functools.wraps(build)
    def wrapper(*args, **kwargs):
        enabled = gc.isenabled()
        gc.disable()
        try:
            return build(*args, **kwargs)
        finally:
            if enabled:
                gc.enable()
    return wrapper


def _meta(ndim, dtype):
    return np.empty((0,) * ndim, dtype=dtype)


def _axes(x_shape, w_kernel, params, m_shape):
    """halo.Axis per spatial dim: input sizes x_shape, outputs m_shape."""
    code = _padding.CODES[params.mode]
    return [halo.Axis(int(n), int(m), int(k), s, d, pb, pa, code)
            for n, m, k, s, d, (pb, pa) in zip(x_shape, m_shape, w_kernel, params.stride, params.dilation,
                                                params.pads)]


def _batch_pieces(ja, jb, offsets):
    return halo.split_runs(((ja, jb - ja, 1),), offsets) if jb > ja else []


def _source_plans(axes, x, out_chunks):
    """What each block of outputs reads from x: per axis, per output chunk (out_chunks: batch and spatial),
    the pieces of x [(chunk, start, length, step), ...] and the kernel's pads; None where the block reads
    zero padding only (or is empty)."""
    offsets = [halo.bounds(c) for c in x.chunks]
    plans = [[(_batch_pieces(b0, b1, offsets[0]), None) if b1 > b0 else None for b0, b1 in _ranges(out_chunks[0])]]
    for a, (ax, chunks) in enumerate(zip(axes, out_chunks[1:])):
        row = []
        for ja, jb in _ranges(chunks):
            source = halo.forward_source(ax, ja, jb)
            row.append((halo.split_runs(source.runs, offsets[1 + a]), source.pads) if source.runs else None)
        plans.append(row)
    return plans


def _block_source(plans, cell, channels):
    """(per-axis pieces incl. the channel axis, kernel pads) of the block at `cell`, or (None, None)."""
    chosen = [plans[axis][i] for axis, i in enumerate(cell)]
    if any(c is None for c in chosen):
        return None, None
    return [c[0] for c in chosen] + [[(0, 0, channels, 1)]], tuple(c[1] for c in chosen[1:])


def _ranges(chunks):
    b = halo.bounds(chunks)
    return list(zip(b, b[1:]))


@_gc_paused
def _forward_graph(nd, x, w, bias, params):
    """Lazy conv(x, w) + bias for a validated dask x (one channel chunk) and NumPy w, bias."""
    dtype = np.dtype(x.dtype)
    out_shape = conv_output_shape(tuple(x.shape), tuple(w.shape), params)
    axes = _axes(x.shape[1:-1], w.shape[:-2], params, out_shape[1:-1])
    out_chunks = (x.chunks[0], *(halo.forward_chunks(ax, c) for ax, c in zip(axes, x.chunks[1:-1])),
                  (out_shape[-1],))
    name = f"nbconv-conv{nd}d-" + tokenize("conv", x.name, w, bias, params)
    g = _Graph(name)
    w_key, b_key = g.constant(w, "nbconv-w"), g.constant(bias, "nbconv-bias")
    per_axis = [_ranges(c) for c in out_chunks[:-1]]
    plans = _source_plans(axes, x, out_chunks[:-1])
    for cell in itertools.product(*(range(len(r)) for r in per_axis)):
        axis_pieces, pads = _block_source(plans, cell, x.shape[-1])
        shape = tuple(per_axis[axis][i][1] - per_axis[axis][i][0] for axis, i in enumerate(cell)) + (out_shape[-1],)
        local = params._replace(pads=pads, mode="zeros")
        if axis_pieces is None:
            dsk_task = (partial(_forward_task, _ForwardSpec(None, local, shape, dtype.str)), [], w_key, b_key)
        else:
            keys, window = g.window(x, axis_pieces)
            dsk_task = (partial(_forward_task, _ForwardSpec(window, local, shape, dtype.str)), keys, w_key, b_key)
        g.dsk[(name, *cell, 0)] = dsk_task
    graph = HighLevelGraph.from_collections(name, g.dsk, dependencies=[x])
    return da.Array(graph, name, out_chunks, meta=_meta(x.ndim, dtype))


def _dest_index(sub):
    if sub.step == 1:
        return slice(sub.dest0, sub.dest0 + sub.length)
    if sub.step == -1:
        stop = sub.dest0 - sub.length
        return slice(sub.dest0, None if stop < 0 else stop, -1)
    return slice(sub.dest0, sub.dest0 + 1)


@_gc_paused
def _scatter_graph(name, gy, w, bias, params, axes, x_chunks, c_x, transposed):
    """Lazy input gradient (or transposed convolution) chunked as x_chunks, from the dask array gy (the
    convolution's output side, one channel chunk); axes describe the convolution from x to gy."""
    dtype = np.dtype(gy.dtype)
    g = _Graph(name)
    w_key, b_key = g.constant(w, "nbconv-w"), g.constant(bias, "nbconv-bias")
    chunks = (tuple(x_chunks[0]), *(tuple(c) for c in x_chunks[1:-1]), (c_x,))
    spatial_ranges = [_ranges(c) for c in chunks[1:-1]]
    # per axis, per chunk: the boxes (memoized: the block's boxes are their product)
    gy_offsets = [halo.bounds(c) for c in gy.chunks]
    subs = [[[(sub, halo.split_runs(((sub.ja, sub.jb - sub.ja, 1),), gy_offsets[1 + a]))
              for sub in halo.input_grad_subs(ax, b0, b1)] for b0, b1 in r]
            for a, (ax, r) in enumerate(zip(axes, spatial_ranges))]
    batch_ranges = _ranges(chunks[0])
    for cell in itertools.product(*(range(len(c)) for c in chunks[:-1])):
        b0, b1 = batch_ranges[cell[0]]
        shape = (b1 - b0, *(r[i][1] - r[i][0] for r, i in zip(spatial_ranges, cell[1:])), c_x)
        batch = _batch_pieces(b0, b1, gy_offsets[0])
        keys, block_subs = [], []
        if batch:
            for planned in itertools.product(*(subs[a][i] for a, i in enumerate(cell[1:]))):
                combo = [sub for sub, _ in planned]
                axis_pieces = [batch, *(pieces for _, pieces in planned), [(0, 0, gy.shape[-1], 1)]]
                sub_keys, window = g.window(gy, axis_pieces)
                keys.extend(sub_keys)
                local = params._replace(pads=tuple(s.pads for s in combo), mode="zeros")
                x_shape = (b1 - b0, *(s.length for s in combo), c_x)
                dest = (slice(None), *(_dest_index(s) for s in combo))
                sum_axes = tuple(1 + a for a, s in enumerate(combo) if s.step == 0 and s.length > 1)
                whole = all(s.step == 1 and s.dest0 == 0 and s.length == n for s, n in zip(combo, shape[1:-1]))
                block_subs.append(_ScatterSub(window, x_shape, local, dest, sum_axes, whole))
        spec = _ScatterSpec(tuple(block_subs), shape, dtype.str, transposed)
        g.dsk[(name, *cell, 0)] = (partial(_scatter_task, spec), keys, w_key, b_key)
    graph = HighLevelGraph.from_collections(name, g.dsk, dependencies=[gy])
    return da.Array(graph, name, chunks, meta=_meta(gy.ndim, dtype))


def _weight_bias_grads(nd, gy, x, w_shape, params, axes, weight, bias):
    """NumPy (weight gradient, bias gradient) (None where not asked), from per-block partials of gy reduced
    in a fixed tree order, computed on the active scheduler."""
    return dask.compute(_weight_bias_graph(nd, gy, x, w_shape, params, axes, weight, bias))[0]


@_gc_paused
def _weight_bias_graph(nd, gy, x, w_shape, params, axes, weight, bias):
    """The Delayed (weight gradient, bias gradient) of _weight_bias_grads."""
    dtype = np.dtype(gy.dtype)
    name = f"nbconv-conv{nd}d-backward-weight-" + tokenize("weight", gy.name, x.name, w_shape, params, weight, bias)
    g = _Graph(name)
    partials = []
    plans = _source_plans(axes, x, gy.chunks[:-1]) if weight else None
    for cell in itertools.product(*(range(len(c)) for c in gy.chunks[:-1])):
        window, keys, pads = None, [], tuple((0, 0) for _ in axes)
        if weight:
            axis_pieces, source_pads = _block_source(plans, cell, x.shape[-1])
            if axis_pieces is not None:
                keys, window = g.window(x, axis_pieces)
                pads = source_pads
        spec = _PartialSpec(window, params._replace(pads=pads, mode="zeros"), tuple(w_shape), weight, bias)
        key = (name + "-partial", len(partials))
        g.dsk[key] = (partial(_partial_task, spec), (gy.name, *cell, 0), keys)
        partials.append(key)
    level, depth = partials, 0
    while len(level) > 1:
        depth += 1
        nxt = []
        for i in range(0, len(level), FAN_IN):
            key = (f"{name}-sum{depth}", i // FAN_IN)
            g.dsk[key] = (_sum_partials, level[i:i + FAN_IN])
            nxt.append(key)
        level = nxt
    g.dsk[name] = (partial(_finish, dtype=dtype), level[0])
    graph = HighLevelGraph.from_collections(name, g.dsk, dependencies=[gy, x])
    return Delayed(name, graph)


# ---------------------------------------------------------------- the three operations

def _forward(nd, x, w, bias, stride, padding, dilation, groups, padding_mode, out, fn):
    _check_dask(x, "x", fn)
    _check_in_memory(w, "w")
    _check_in_memory(bias, "bias")
    _check_out(out, fn)
    x_layout, w_layout = _core._layouts(nd)
    check_ndim(x, nd + 2, "x", x_layout)
    check_ndim(w, nd + 2, "w", w_layout)
    check_dtypes(x=x, w=w, bias=bias)
    _check_chunks(x, "x")
    params = conv_params(tuple(x.shape), tuple(w.shape), stride=stride, padding=padding, dilation=dilation,
                         groups=groups, padding_mode=padding_mode)
    _core._check_bias(bias, tuple(w.shape)[-1])
    return _forward_graph(nd, _one_channel_chunk(x), w, bias, params)


def _backward(nd, grad_out, x, w, stride, padding, dilation, groups, padding_mode, needs, fn):
    _check_dask(grad_out, "grad_out", fn)
    _check_dask(x, "x", fn)
    _check_in_memory(w, "w")
    needs = parse_needs(needs)
    x_layout, w_layout = _core._layouts(nd)
    check_ndim(x, nd + 2, "x", x_layout)
    check_ndim(w, nd + 2, "w", w_layout)
    check_ndim(grad_out, nd + 2, "grad_out", x_layout)
    check_dtypes(grad_out=grad_out, x=x, w=w)
    _check_chunks(grad_out, "grad_out")
    _check_chunks(x, "x")
    params = conv_params(tuple(x.shape), tuple(w.shape), stride=stride, padding=padding, dilation=dilation,
                         groups=groups, padding_mode=padding_mode)
    y_shape = conv_output_shape(tuple(x.shape), tuple(w.shape), params)
    if tuple(grad_out.shape) != y_shape:
        raise ValueError(f"grad_out has shape {tuple(grad_out.shape)} but the convolution's output has shape "
                         f"{y_shape} (x.shape={tuple(x.shape)}, w.shape={tuple(w.shape)})")
    gy = _one_channel_chunk(grad_out)
    axes = _axes(x.shape[1:-1], w.shape[:-2], params, y_shape[1:-1])
    gx = gw = gb = None
    if "input" in needs:
        name = f"nbconv-conv{nd}d-backward-input-" + tokenize("input", gy.name, w, x.chunks, params)
        gx = _scatter_graph(name, gy, w, None, params, axes, x.chunks, x.shape[-1], transposed=False)
        if gx.chunks != x.chunks:  # x's channel axis was in several chunks
            gx = gx.rechunk(x.chunks)
    if "weight" in needs or "bias" in needs:
        gw, gb = _weight_bias_grads(nd, gy, _one_channel_chunk(x), tuple(w.shape), params, axes,
                                    "weight" in needs, "bias" in needs)
    return ConvGrads(gx, gw, gb)


def _transpose(nd, x, w, bias, stride, padding, output_padding, dilation, groups, out, fn):
    _check_dask(x, "x", fn)
    _check_in_memory(w, "w")
    _check_in_memory(bias, "bias")
    _check_out(out, fn)
    x_layout, w_layout = _core._layouts(nd, transposed=True)
    check_ndim(x, nd + 2, "x", x_layout)
    check_ndim(w, nd + 2, "w", w_layout)
    check_dtypes(x=x, w=w, bias=bias)
    _check_chunks(x, "x")
    params, output_padding, shape = transpose_params(
        tuple(x.shape), tuple(w.shape), stride=stride, padding=padding, output_padding=output_padding,
        dilation=dilation, groups=groups)
    _core._check_bias(bias, shape[-1])
    x = _one_channel_chunk(x)
    # the transposed convolution is the input gradient of the convolution from its result to x
    axes = _axes(shape[1:-1], w.shape[:-2], params, x.shape[1:-1])
    chunks = (x.chunks[0], *(halo.transpose_chunks(ax, c) for ax, c in zip(axes, x.chunks[1:-1])), (shape[-1],))
    name = f"nbconv-conv_transpose{nd}d-" + tokenize("transpose", x.name, w, bias, params, output_padding)
    return _scatter_graph(name, x, w, bias, params, axes, chunks, shape[-1], transposed=True)


# ---------------------------------------------------------------- public functions

_SPATIAL = {1: "L", 2: "H, W", 3: "D, H, W"}
_KERNEL = {1: "K", 2: "KH, KW", 3: "KD, KH, KW"}
_OUT = {1: "L_out", 2: "H_out, W_out", 3: "D_out, H_out, W_out"}
_COMMON = """\
stride, padding, dilation, groups
    As in :func:`nbconv.conv{nd}d` (ints or one per spatial dim; padding also (before, after) pairs,
    "same" or "valid")."""
_X = """\
x : dask.array.Array
    (N, {spatial}, C_in) of float32 or float64 NumPy blocks, any chunks of the batch and spatial axes
    (the channel axis is merged into one chunk)."""


def _doc(kind, nd):
    """The docstring of nbconv.dask.<kind>{nd}d (numpydoc, one template per kind)."""
    spatial, kernel, out = _SPATIAL[nd], _KERNEL[nd], _OUT[nd]
    x_doc = _X.format(spatial=spatial)
    example_x = f"da.ones((1, {', '.join(['4'] * nd)}, 1), chunks=2)"
    example_w = f"np.ones(({', '.join(['3'] * nd)}, 1, 1))"
    if kind == "conv":
        return f"""nbconv.conv{nd}d on a dask array: lazy, chunk by chunk, with halos between chunks.

Parameters
----------
{x_doc}
w : numpy.ndarray
    ({kernel}, C_in // groups, C_out), the dtype of x.
bias : numpy.ndarray, optional
    (C_out,).
{_COMMON.format(nd=nd)}
padding_mode : {{"zeros", "reflect", "replicate", "circular"}}
    Applies at the array's outer boundary only; chunk boundaries exchange halos.
out : None
    Not supported (dask arrays are immutable): write the result with ``dask.array.store`` or
    ``Array.to_zarr``.

Returns
-------
dask.array.Array
    (N, {out}, C_out), equal to the in-memory call. Batch chunks are x's; along each spatial axis an
    output element goes with the input chunk that holds the centre of its window (a stride-1 "same"
    convolution keeps x's chunks); the channel axis is one chunk.

Examples
--------
>>> import dask.array as da, numpy as np, nbconv.dask as nbd
>>> y = nbd.conv{nd}d({example_x}, {example_w}, padding="same")
>>> y.chunks[1], float(y.sum().compute())
((2, 2), {float(10 ** nd)})
"""
    if kind == "backward":
        return f"""Gradients of nbconv.dask.conv{nd}d: the input gradient lazily, the weight and bias gradients now.

Parameters
----------
grad_out : dask.array.Array
    (N, {out}, C_out): dL/dy, any chunks (they need not match x's).
{x_doc}
w : numpy.ndarray
    ({kernel}, C_in // groups, C_out), the dtype of x.
{_COMMON.format(nd=nd)}
padding_mode : {{"zeros", "reflect", "replicate", "circular"}}
    As in the forward call.
needs : tuple of {{"input", "weight", "bias"}}
    The gradients to compute (a single name is accepted); the others are None.

Returns
-------
ConvGrads
    (input, weight, bias): ``input`` a lazy dask array chunked like x; ``weight`` and ``bias`` NumPy
    arrays, computed by this call on the active scheduler from per-block partial sums (float64) in a
    fixed tree order (reproducible for a given chunking).

Examples
--------
>>> import dask.array as da, numpy as np, nbconv.dask as nbd
>>> x = {example_x}
>>> gy = da.ones((1, {', '.join(['4'] * nd)}, 1), chunks=3)
>>> g = nbd.conv{nd}d_backward(gy, x, {example_w}, padding=1)
>>> g.input.chunks == x.chunks, g.weight.shape, float(g.bias[0])
(True, ({', '.join(['3'] * nd)}, 1, 1), {float(4 ** nd)})
"""
    return f"""nbconv.conv_transpose{nd}d on a dask array: the adjoint of nbconv.dask.conv{nd}d, chunk by chunk.

Parameters
----------
{x_doc}
w : numpy.ndarray
    ({kernel}, C_out // groups, C_in), the dtype of x.
bias : numpy.ndarray, optional
    (C_out,).
{_COMMON.format(nd=nd)}
output_padding : int or tuple of ints
    As in :func:`nbconv.conv_transpose{nd}d`: 0 <= output_padding < max(stride, dilation).
out : None
    Not supported (write the result with ``dask.array.store`` or ``Array.to_zarr``).

Returns
-------
dask.array.Array
    (N, {out}, C_out), out = (in - 1) * stride - pad_before - pad_after + dilation * (k - 1) +
    output_padding + 1 per spatial dim, equal to the in-memory call. Batch chunks are x's; along each
    spatial axis about stride times x's chunks.

Examples
--------
>>> import dask.array as da, numpy as np, nbconv.dask as nbd
>>> t = nbd.conv_transpose{nd}d({example_x}, np.ones(({', '.join(['2'] * nd)}, 1, 1)), stride=2)
>>> t.shape, float(t.sum().compute())
((1, {', '.join(['8'] * nd)}, 1), {float(8 ** nd)})
"""


def conv1d(x: da.Array, w: NDArray[Any], bias: NDArray[Any] | None = None, *, stride: IntOrTuple = 1,
           padding: Padding = 0, dilation: IntOrTuple = 1, groups: int = 1, padding_mode: PaddingMode = "zeros",
           out: None = None) -> da.Array:
    return _forward(1, x, w, bias, stride, padding, dilation, groups, padding_mode, out, "conv1d")


def conv2d(x: da.Array, w: NDArray[Any], bias: NDArray[Any] | None = None, *, stride: IntOrTuple = 1,
           padding: Padding = 0, dilation: IntOrTuple = 1, groups: int = 1, padding_mode: PaddingMode = "zeros",
           out: None = None) -> da.Array:
    return _forward(2, x, w, bias, stride, padding, dilation, groups, padding_mode, out, "conv2d")


def conv3d(x: da.Array, w: NDArray[Any], bias: NDArray[Any] | None = None, *, stride: IntOrTuple = 1,
           padding: Padding = 0, dilation: IntOrTuple = 1, groups: int = 1, padding_mode: PaddingMode = "zeros",
           out: None = None) -> da.Array:
    return _forward(3, x, w, bias, stride, padding, dilation, groups, padding_mode, out, "conv3d")


def conv1d_backward(grad_out: da.Array, x: da.Array, w: NDArray[Any], *, stride: IntOrTuple = 1, padding: Padding = 0,
                    dilation: IntOrTuple = 1, groups: int = 1, padding_mode: PaddingMode = "zeros",
                    needs: Needs = NEEDS) -> ConvGrads:
    return _backward(1, grad_out, x, w, stride, padding, dilation, groups, padding_mode, needs, "conv1d_backward")


def conv2d_backward(grad_out: da.Array, x: da.Array, w: NDArray[Any], *, stride: IntOrTuple = 1, padding: Padding = 0,
                    dilation: IntOrTuple = 1, groups: int = 1, padding_mode: PaddingMode = "zeros",
                    needs: Needs = NEEDS) -> ConvGrads:
    return _backward(2, grad_out, x, w, stride, padding, dilation, groups, padding_mode, needs, "conv2d_backward")


def conv3d_backward(grad_out: da.Array, x: da.Array, w: NDArray[Any], *, stride: IntOrTuple = 1, padding: Padding = 0,
                    dilation: IntOrTuple = 1, groups: int = 1, padding_mode: PaddingMode = "zeros",
                    needs: Needs = NEEDS) -> ConvGrads:
    return _backward(3, grad_out, x, w, stride, padding, dilation, groups, padding_mode, needs, "conv3d_backward")


def conv_transpose1d(x: da.Array, w: NDArray[Any], bias: NDArray[Any] | None = None, *, stride: IntOrTuple = 1,
                     padding: TransposePadding = 0, output_padding: IntOrTuple = 0, dilation: IntOrTuple = 1,
                     groups: int = 1, out: None = None) -> da.Array:
    return _transpose(1, x, w, bias, stride, padding, output_padding, dilation, groups, out, "conv_transpose1d")


def conv_transpose2d(x: da.Array, w: NDArray[Any], bias: NDArray[Any] | None = None, *, stride: IntOrTuple = 1,
                     padding: TransposePadding = 0, output_padding: IntOrTuple = 0, dilation: IntOrTuple = 1,
                     groups: int = 1, out: None = None) -> da.Array:
    return _transpose(2, x, w, bias, stride, padding, output_padding, dilation, groups, out, "conv_transpose2d")


def conv_transpose3d(x: da.Array, w: NDArray[Any], bias: NDArray[Any] | None = None, *, stride: IntOrTuple = 1,
                     padding: TransposePadding = 0, output_padding: IntOrTuple = 0, dilation: IntOrTuple = 1,
                     groups: int = 1, out: None = None) -> da.Array:
    return _transpose(3, x, w, bias, stride, padding, output_padding, dilation, groups, out, "conv_transpose3d")


for _nd in (1, 2, 3):
    globals()[f"conv{_nd}d"].__doc__ = _doc("conv", _nd)
    globals()[f"conv{_nd}d_backward"].__doc__ = _doc("backward", _nd)
    globals()[f"conv_transpose{_nd}d"].__doc__ = _doc("transpose", _nd)
del _nd
